"""Cascade Mask R-CNN (Cai & Vasconcelos 2018; the COCO 2019 entry's instance branch), built from torchvision's
RPN, RoIAlign, matcher, sampler, box coder and mask heads.

Reference behaviour (spec section 1, mmdet ``cascade_roi_head.py``):
- stages at IoU 0.5 / 0.6 / 0.7, box-coder weights (10,10,5,5) / (20,20,10,10) / (30,30,15,15)
  (1 / mmdet's target stds), stage loss weights 1 / 0.5 / 0.25 on the box and mask losses;
- each stage: its own 2-fc box head and a class-agnostic regressor; in training it samples 512
  RoIs (25% positives, ground truth added as proposals), then decodes its deltas on them without
  gradient, clips them, drops the RoIs that were ground truth (the next stage re-adds it), and the
  next stage re-matches and re-samples at its stronger IoU;
- inference: proposals run through every stage, refined after each; the class scores are the
  mean of the stages' softmax *probabilities* (d2 and the paper; mmdet averages logits), the boxes
  the last stage's; then score threshold, class-wise NMS and the top ``detections_per_img``;
- masks: a mask head on each stage in ``mask_stages`` (default all three, as mmdet), trained on that
  stage's positives with its stage weight; at test time the heads in ``mask_test_stages`` run on
  the final boxes and their sigmoid probabilities are averaged. The COCO 2019 entry's "middle stage as the
  instance segmentation flow" is ``mask_stages: [1]`` (one head on stage 2's IoU-0.6 positives,
  run on the final boxes; the spec's recommended reading).

Box losses follow our Mask R-CNN (torchvision's Fast R-CNN loss: smooth L1 with beta 1/9 over the
positives, divided by the sampled RoIs), so cascade and plain heads compare on equal terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from panoptix.models.heads.lsh import LocationSensitiveHeader
from panoptix.models.heads.rcnn import RoIAlignName, build_box_head, head_norm_layer, roi_pools
from panoptix.models.heads.rpn import RPN, float32_outputs
from panoptix.registry import ROI_HEADS, Configurable
from panoptix.structures import Instances

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_CODER_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


class FCHeader(nn.Module):
    """Mask R-CNN's RoI header with a class-agnostic regressor: (R, C, 7, 7) -> 2 fc -> class logits
    (R, K + 1) and deltas (R, 4) (detectron2's init: normal std 0.01 / 0.001, zero bias), and an
    optional separate mask head on (R, C, 14, 14) -> (R, K + 1, 28, 28)."""

    needs_mask_roi = False

    def __init__(self, in_channels: int, num_classes: int, box_head: nn.Module, fc_dim: int, mask_conv_dim: int,
                 mask_convs: int, norm: Callable[[int], nn.Module] | None, with_mask: bool) -> None:
        super().__init__()
        self.box_head = box_head
        self.cls_score = nn.Linear(fc_dim, num_classes)
        self.bbox_pred = nn.Linear(fc_dim, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.cls_score.register_forward_hook(float32_outputs)
        self.bbox_pred.register_forward_hook(float32_outputs)
        self.mask_head = MaskRCNNHeads(in_channels, [mask_conv_dim] * mask_convs, 1, norm_layer=norm) \
            if with_mask else None
        self.mask_predictor = MaskRCNNPredictor(mask_conv_dim, mask_conv_dim, num_classes) if with_mask else None

    def boxes(self, box_roi: torch.Tensor, mask_roi: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, None]:
        x = self.box_head(box_roi).flatten(1)
        return self.cls_score(x), self.bbox_pred(x), None

    def mask_logits(self, mask_roi: torch.Tensor | None = None, trunk: torch.Tensor | None = None
                    ) -> torch.Tensor:
        if self.mask_predictor is None:
            raise RuntimeError("this header has no mask head (its stage is not in mask_stages)")
        return self.mask_predictor(self.mask_head(mask_roi))


class CascadeStage(nn.Module):
    """One stage: its RoI header (``fc`` or ``lsh``) and its matcher, sampler and box coder."""

    def __init__(self, header: nn.Module, iou: float, coder_weights: Sequence[float], batch_size: int,
                 positive_fraction: float) -> None:
        super().__init__()
        self.header = header
        self.matcher = Matcher(iou, iou, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size, positive_fraction)
        self.coder = BoxCoder(tuple(float(w) for w in coder_weights))

    @property
    def with_mask(self) -> bool:
        return self.header.mask_predictor is not None


@ROI_HEADS.register("cascade_mask_rcnn")
class CascadeMaskRCNN(Configurable, nn.Module):
    """RPN + a cascade of box stages + mask heads on chosen stages.

    Args:
        in_channels, num_things: FPN width and thing classes (from the system).
        rpn: the region proposal network (`RPN`; the ``rpn:`` sub-section), as `MaskRCNNBranch`.
        stage_ious: IoU threshold of each stage (0.5, 0.6, 0.7).
        stage_loss_weights: weight of each stage's box and mask losses (1, 0.5, 0.25).
        stage_coder_weights: box-coder weights of each stage (1 / target stds).
        box_batch_size, box_positive_fraction: RoIs sampled per image and stage (512, 0.25).
        box_score_thresh, box_nms, detections_per_img: inference (0.05, 0.5, 100).
        box_fc_dim, box_convs, mask_conv_dim, mask_convs, head_norm, roi_align: as `MaskRCNNBranch`.
        mask_stages: stages (0-based) with a mask head ([0, 1, 2]; the COCO 2019 entry's middle stage: [1]).
        mask_test_stages: the heads averaged at test time (None: all of ``mask_stages``).
        header: ``"fc"`` (Mask R-CNN's: 2-fc box head, separate mask head) or ``"lsh"`` (AntVisionPS's
            Location Sensitive Header: regression and mask share a conv trunk of ``mask_convs``
            convs of ``mask_conv_dim``; classification stays on the fc branch), one per stage.

    Forward: as `MaskRCNNBranch` (training: ``([], losses)`` with ``loss_objectness``,
    ``loss_rpn_box_reg`` and per stage t ``loss_classifier_s{t}``, ``loss_box_reg_s{t}``,
    ``loss_mask_s{t}``, already weighted; inference: Instances with (N, 1, 28, 28) mask probabilities).
    """

    derived = ("in_channels", "num_things")
    components = {"rpn": (RPN, {})}

    def __init__(self, in_channels: int, num_things: int, rpn: RPN | None = None,
                 stage_ious: Sequence[float] = STAGE_IOUS, stage_loss_weights: Sequence[float] = STAGE_WEIGHTS,
                 stage_coder_weights: Sequence[Sequence[float]] = STAGE_CODER_WEIGHTS,
                 box_batch_size: int = 512, box_positive_fraction: float = 0.25, box_score_thresh: float = 0.05,
                 box_nms: float = 0.5, detections_per_img: int = 100, box_fc_dim: int = 1024, box_convs: int = 0,
                 mask_conv_dim: int = 256, mask_convs: int = 4, head_norm: str = "",
                 roi_align: RoIAlignName = "sparse",
                 mask_stages: Sequence[int] = (0, 1, 2), mask_test_stages: Sequence[int] | None = None,
                 header: Literal["fc", "lsh"] = "fc") -> None:
        super().__init__()
        n = len(stage_ious)
        if not (len(stage_loss_weights) == len(stage_coder_weights) == n) or n == 0:
            raise ValueError(f"cascade: {n} stage_ious need as many stage_loss_weights and stage_coder_weights; got "
                             f"{len(stage_loss_weights)} and {len(stage_coder_weights)}")
        if not mask_stages or any(not 0 <= s < n for s in mask_stages):
            raise ValueError(f"mask_stages must name stages among 0..{n - 1}, got {list(mask_stages)}")
        test_stages = list(mask_stages if mask_test_stages is None else mask_test_stages)
        if not test_stages or not set(test_stages) <= set(mask_stages):
            raise ValueError(f"mask_test_stages {test_stages} must be a non-empty subset of mask_stages "
                             f"{list(mask_stages)}")
        self.rpn = rpn if rpn is not None else RPN(in_channels)
        self.box_pool, self.mask_pool = roi_pools(roi_align)
        norm = head_norm_layer(head_norm)
        if header not in ("fc", "lsh"):
            raise ValueError(f"header must be 'fc' or 'lsh', got {header!r}")

        def make_header(with_mask: bool) -> nn.Module:
            body = build_box_head(in_channels, box_fc_dim, box_convs, norm)
            if header == "lsh":
                return LocationSensitiveHeader(in_channels, num_things + 1, body, box_fc_dim, mask_conv_dim, mask_convs,
                                               norm, with_mask)
            return FCHeader(in_channels, num_things + 1, body, box_fc_dim, mask_conv_dim, mask_convs, norm, with_mask)

        self.stages = nn.ModuleList(
            CascadeStage(make_header(t in mask_stages), iou, coder, box_batch_size, box_positive_fraction)
            for t, (iou, coder) in enumerate(zip(stage_ious, stage_coder_weights)))
        self.num_things = num_things
        self.stage_loss_weights = tuple(float(w) for w in stage_loss_weights)
        self.mask_stages, self.mask_test_stages = tuple(mask_stages), tuple(test_stages)
        self.score_thresh, self.nms_thresh, self.detections_per_img = box_score_thresh, box_nms, detections_per_img

    # ------------------------------------------------------------------ forward
    def forward(self, images: ImageList, features: Mapping[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]] | None = None, **extra: torch.Tensor
                ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """``extra``: what a subclass takes from the system (HTC's ``semantic_feature``)."""
        feats = dict(features)
        tv_targets = None
        if targets is not None:
            tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets]
        proposals, losses = self.rpn(images, feats, tv_targets)
        if self.training:
            if tv_targets is None:
                raise ValueError(f"{type(self).__name__} training needs targets")
            losses.update(self.stage_losses(feats, proposals, images.image_sizes, tv_targets, **extra))
            return [], losses
        return self.detect(feats, proposals, images.image_sizes, **extra), {}

    def stage_outputs(self, stage: CascadeStage, feats: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                      image_sizes: Sequence[tuple[int, int]]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Class logits (R, K + 1), deltas (R, 4) and the header's shared trunk (LSH; else None) of
        one stage on per-image RoIs."""
        mask_roi = self.mask_pool(feats, boxes, image_sizes) if stage.header.needs_mask_roi else None
        return stage.header.boxes(self.box_pool(feats, boxes, image_sizes), mask_roi)

    # ------------------------------------------------------------------ training
    def sample(self, stage: CascadeStage, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
               ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per image: sampled RoIs (ground truth added), their labels (0 = background), matched
        ground-truth index and whether each RoI is a ground-truth box."""
        boxes_out, labels_out, matched_out, is_gt_out = [], [], [], []
        labels_all, cands = [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            boxes = torch.cat([props, gt])
            is_gt = torch.cat([torch.zeros(len(props), dtype=torch.bool, device=props.device),
                               torch.ones(len(gt), dtype=torch.bool, device=props.device)])
            if len(gt):
                m = stage.matcher(box_iou(gt, boxes))
                matched = m.clamp(min=0)
                labels = t["labels"][matched]
                labels = torch.where(m == Matcher.BELOW_LOW_THRESHOLD, torch.zeros_like(labels), labels)
                labels = torch.where(m == Matcher.BETWEEN_THRESHOLDS, torch.full_like(labels, -1), labels)
            else:
                matched = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                labels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
            labels_all.append(labels)
            cands.append((boxes, matched, is_gt))
        pos, neg = stage.sampler(labels_all)
        for (boxes, matched, is_gt), labels, p, n in zip(cands, labels_all, pos, neg):
            keep = torch.where(p | n)[0]
            boxes_out.append(boxes[keep])
            labels_out.append(labels[keep])
            matched_out.append(matched[keep])
            is_gt_out.append(is_gt[keep])
        return boxes_out, labels_out, matched_out, is_gt_out

    def box_losses(self, t: int, logits: torch.Tensor, deltas: torch.Tensor, boxes: list[torch.Tensor],
                   labels: list[torch.Tensor], matched: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
                   ) -> dict[str, torch.Tensor]:
        """Stage t's weighted CE and smooth-L1 (beta 1/9, over the positives, / sampled RoIs)."""
        stage, weight = self.stages[t], self.stage_loss_weights[t]
        label = torch.cat(labels)
        pos = label > 0
        gt_boxes = torch.cat([tg["boxes"][m] for tg, m in zip(targets, matched)]).to(deltas.dtype)
        reg_target = stage.coder.encode_single(gt_boxes, torch.cat(boxes))
        box_loss = F.smooth_l1_loss(deltas[pos], reg_target[pos], beta=1 / 9, reduction="sum")
        return {f"loss_classifier_s{t}": weight * F.cross_entropy(logits, label),
                f"loss_box_reg_s{t}": weight * box_loss / max(label.numel(), 1)}

    def mask_loss(self, t: int, mask_logits: torch.Tensor, pos_boxes: list[torch.Tensor],
                  pos_matched: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Stage t's weighted mask BCE on its positive RoIs."""
        loss = maskrcnn_loss(mask_logits.float(), pos_boxes, [tg["masks"] for tg in targets],
                             [tg["labels"] for tg in targets], pos_matched)
        return {f"loss_mask_s{t}": self.stage_loss_weights[t] * loss}

    @staticmethod
    def refine(stage: CascadeStage, deltas: torch.Tensor, boxes: list[torch.Tensor], is_gt: list[torch.Tensor],
               image_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """The next stage's proposals: the sampled RoIs moved by their (detached) deltas, clipped,
        without the RoIs that were ground truth (the next sampler adds them again)."""
        refined = stage.coder.decode_single(deltas.detach(), torch.cat(boxes)).split([len(b) for b in boxes])
        return [clip_boxes_to_image(r, size)[~g] for r, size, g in zip(refined, image_sizes, is_gt)]

    @staticmethod
    def positives(boxes: list[torch.Tensor], labels: list[torch.Tensor], matched: list[torch.Tensor]
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [b[lab > 0] for b, lab in zip(boxes, labels)], [m[lab > 0] for m, lab in zip(matched, labels)]

    def stage_losses(self, feats: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                     image_sizes: Sequence[tuple[int, int]], targets: list[dict[str, torch.Tensor]]
                     ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        proposals = [p.detach() for p in proposals]
        for t, stage in enumerate(self.stages):
            boxes, labels, matched, is_gt = self.sample(stage, proposals, targets)
            logits, deltas, trunk = self.stage_outputs(stage, feats, boxes, image_sizes)
            losses.update(self.box_losses(t, logits, deltas, boxes, labels, matched, targets))
            if stage.with_mask:
                pos_boxes, pos_matched = self.positives(boxes, labels, matched)
                logits_m = (stage.header.mask_logits(trunk=trunk[torch.cat(labels) > 0]) if trunk is not None
                            else stage.header.mask_logits(self.mask_pool(feats, pos_boxes, image_sizes)))
                losses.update(self.mask_loss(t, logits_m, pos_boxes, pos_matched, targets))
            if t + 1 < len(self.stages):
                proposals = self.refine(stage, deltas, boxes, is_gt, image_sizes)
        return losses

    # ------------------------------------------------------------------ inference
    def run_stages(self, proposals: list[torch.Tensor], image_sizes: Sequence[tuple[int, int]],
                   outputs: Callable[[CascadeStage, list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
                   ) -> list[Instances]:
        """Inference through every stage: ``outputs(stage, boxes) -> (logits, deltas)``; boxes are
        refined after each stage, scores are the mean of the stages' probabilities; then
        `postprocess` (masks not yet added)."""
        counts = [len(p) for p in proposals]
        boxes = list(proposals)
        probs = []
        for stage in self.stages:
            logits, deltas = outputs(stage, boxes)
            probs.append(F.softmax(logits, -1))
            decoded = stage.coder.decode_single(deltas, torch.cat(boxes))
            boxes = [clip_boxes_to_image(b, size) for b, size in zip(decoded.split(counts), image_sizes)]
        scores = torch.stack(probs).mean(0).split(counts)
        return [self.postprocess(b, s, tuple(size)) for b, s, size in zip(boxes, scores, image_sizes)]

    def box_results(self, feats: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                    image_sizes: Sequence[tuple[int, int]]) -> list[Instances]:
        """Detections (no masks) of the whole cascade on given proposals."""
        return self.run_stages(proposals, image_sizes,
                               lambda stage, boxes: self.stage_outputs(stage, feats, boxes, image_sizes)[:2])

    @torch.no_grad()
    def detect_boxes(self, images: ImageList, features: Mapping[str, torch.Tensor], **extra: torch.Tensor
                     ) -> list[Instances]:
        """Detections without masks, from the RPN's proposals (test-time augmentation's box pass)."""
        feats = dict(features)
        proposals, _ = self.rpn(images, feats)
        return self.box_results(feats, proposals, images.image_sizes, **extra)

    @torch.no_grad()
    def detect(self, feats: dict[str, torch.Tensor], proposals: list[torch.Tensor],
               image_sizes: Sequence[tuple[int, int]]) -> list[Instances]:
        return self.add_masks(feats, self.box_results(feats, proposals, image_sizes), image_sizes)

    def postprocess(self, boxes: torch.Tensor, scores: torch.Tensor, size: tuple[int, int]) -> Instances:
        """(R, 4) class-agnostic boxes and (R, K + 1) probabilities -> thresholded, class-wise NMS."""
        k = self.num_things
        fg = scores[:, 1:]
        labels = torch.arange(k, device=boxes.device).expand_as(fg)
        box = boxes[:, None].expand(-1, k, -1)
        keep = fg > self.score_thresh
        box, fg, labels = box[keep], fg[keep], labels[keep]
        big = remove_small_boxes(box, 1e-2)
        box, fg, labels = box[big], fg[big], labels[big]
        keep = batched_nms(box, fg, labels, self.nms_thresh)[:self.detections_per_img]
        return Instances(box[keep], fg[keep], labels[keep], None, image_size=size)

    def mask_probs(self, feats: dict[str, torch.Tensor], boxes: list[torch.Tensor], labels: torch.Tensor,
                   image_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """(N, 1, 28, 28): the mean sigmoid of the test-stage heads for each box's class."""
        roi = self.mask_pool(feats, boxes, image_sizes)
        rows = torch.arange(len(labels), device=labels.device)
        probs = [self.stages[t].header.mask_logits(roi)[rows, labels + 1].float().sigmoid()
                 for t in self.mask_test_stages]
        return torch.stack(probs).mean(0)[:, None]

    def add_masks(self, feats: dict[str, torch.Tensor], results: list[Instances],
                  image_sizes: Sequence[tuple[int, int]]) -> list[Instances]:
        counts = [len(r) for r in results]
        if sum(counts) == 0:
            return [r.replace(masks=r.boxes.new_zeros((0, 1, 28, 28))) for r in results]
        masks = self.mask_probs(feats, [r.boxes for r in results], torch.cat([r.labels for r in results]),
                                image_sizes).split(counts)
        return [r.replace(masks=m) for r, m in zip(results, masks)]

    def mask_logits_for_boxes(self, images: ImageList, features: Mapping[str, torch.Tensor],
                              boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per image (N_i, 28, 28) mask logits of the labelled classes on given boxes, differentiable
        (UPSNet's head): the mean logit of the test-stage heads."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [features["p2"].new_zeros((0, 28, 28)) for _ in boxes]
        roi = self.mask_pool(dict(features), [b.float() for b in boxes], images.image_sizes)
        lab = torch.cat(labels) + 1
        rows = torch.arange(len(lab), device=lab.device)
        logits = torch.stack([self.stages[t].header.mask_logits(roi)[rows, lab].float() for t in self.mask_test_stages])
        return list(logits.mean(0).split(counts))


__all__ = ["CascadeMaskRCNN", "CascadeStage", "FCHeader"]
