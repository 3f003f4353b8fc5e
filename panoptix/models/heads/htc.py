"""Hybrid Task Cascade (Chen et al., CVPR 2019; AntVisionPS's LWL-HTC), on our cascade
(spec section 2, mmdet ``htc_roi_head.py`` / ``htc_mask_head.py``).

Differences from `CascadeMaskRCNN`:
- **interleaved execution** (training): each stage samples, runs its box head and loss, refines
  its RoIs with its own regressor, then *re-assigns and re-samples the refined boxes with its own
  IoU* and trains its mask head on their positives; the next stage starts from the refined boxes;
- **mask information flow**: every stage has a mask head (4 convs at 14x14, deconv, logits); stage
  t adds conv1x1+ReLU of stage t-1's conv-stack output (its "feature", before upsampling) to its
  RoI features. In training, heads 0..t-1 are re-run on stage t's RoIs for that feature (no
  logits); at test time the heads run in a chain on the final boxes and all stages' sigmoid masks
  are averaged;
- **semantic fusion**: the semantic head's stride-8 feature (`FusedSemanticHead`) is RoIAligned at
  14x14 and added to the mask RoI features, and average-pooled to 7x7 and added to the box RoI
  features (``semantic_fusion``). The system passes that feature as ``semantic_feature``.
Stage weights [1, 0.5, 0.25] multiply box and mask losses, as the cascade's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from panoptix.models.heads.cascade import CascadeMaskRCNN
from panoptix.models.layers import adaptive_pool
from panoptix.models.roi_align import roi_align_per_image
from panoptix.registry import ROI_HEADS
from panoptix.structures import Instances

SEMANTIC_STRIDE = 8


@ROI_HEADS.register("htc")
class HybridTaskCascade(CascadeMaskRCNN):
    """HTC: `CascadeMaskRCNN`'s arguments (every stage has a mask head; ``header`` is ``fc``), plus

    Args:
        interleaved: re-sample the refined boxes for each stage's mask head (True, HTC's).
        mask_info_flow: stage t's mask head sees stage t-1's mask feature (True).
        semantic_fusion: RoI features that get the semantic feature added: any of ``"bbox"``,
            ``"mask"`` (both, HTC's); empty for none (then no semantic feature is needed).

    Forward: as `CascadeMaskRCNN`, with ``semantic_feature`` (B, C, H/8, W/8) from the system.
    """

    uses_semantic_feature = True

    def __init__(self, in_channels: int, num_things: int, interleaved: bool = True, mask_info_flow: bool = True,
                 semantic_fusion: Sequence[str] = ("bbox", "mask"), **cascade: object) -> None:
        if cascade.get("header", "fc") != "fc":
            raise ValueError("htc: header must be 'fc' (the mask information flow needs separate mask heads)")
        stages = len(cascade.get("stage_ious", (0.5, 0.6, 0.7)))  # type: ignore[arg-type]
        cascade.setdefault("mask_stages", tuple(range(stages)))
        if list(cascade["mask_stages"]) != list(range(stages)):  # type: ignore[call-overload]
            raise ValueError(f"htc: every stage has a mask head (mask_stages {list(range(stages))}), "
                             f"got {list(cascade['mask_stages'])}")  # type: ignore[call-overload]
        super().__init__(in_channels, num_things, **cascade)  # type: ignore[arg-type]
        unknown = set(semantic_fusion) - {"bbox", "mask"}
        if unknown:
            raise ValueError(f"semantic_fusion may name 'bbox' and 'mask', got {sorted(unknown)}")
        self.interleaved, self.mask_info_flow = interleaved, mask_info_flow
        self.semantic_fusion = tuple(semantic_fusion)
        self.uses_semantic_feature = bool(self.semantic_fusion)
        mask_dim = self.stages[0].header.mask_predictor.conv5_mask.in_channels
        self.mask_residuals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(mask_dim, in_channels, 1), nn.ReLU(inplace=True)) if t > 0 and mask_info_flow
            else nn.Identity() for t in range(len(self.stages)))

    # ------------------------------------------------------------------ RoI features
    def semantic_roi(self, semantic: torch.Tensor | None, boxes: list[torch.Tensor]) -> torch.Tensor | None:
        """(R, C, 14, 14) RoIAlign of the stride-8 semantic feature, or None without fusion. It pools
        with the mask pooler's kernel (``roi_align``), so that on the CPU its backward is not
        torchvision's serial scatter (6x slower at the tiny recipe's 512 RoIs)."""
        if semantic is None or not self.semantic_fusion:
            return None
        return roi_align_per_image(semantic, boxes, (14, 14), 1.0 / SEMANTIC_STRIDE, 2,
                                   getattr(self.mask_pool, "pool_level", None))

    def rois(self, feats: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_sizes: Sequence[tuple[int, int]],
             semantic: torch.Tensor | None, kind: str) -> torch.Tensor:
        """Box (7x7) or mask (14x14) RoI features with the semantic feature added where fused."""
        pool = self.box_pool if kind == "bbox" else self.mask_pool
        x = pool(feats, boxes, image_sizes)
        sem = self.semantic_roi(semantic, boxes) if kind in self.semantic_fusion else None
        if sem is not None:
            x = x + (adaptive_pool(sem, (7, 7), "avg") if kind == "bbox" else sem)
        return x

    def mask_chain(self, roi: torch.Tensor, last: int, with_logits: str = "last") -> list[torch.Tensor]:
        """Mask heads 0..``last`` in a chain on the same RoI features; the logits (R, K + 1, 28, 28)
        of the last head (``"last"``) or of every head (``"all"``)."""
        feat: torch.Tensor | None = None
        logits = []
        for t in range(last + 1):
            header = self.stages[t].header
            x = roi if feat is None or not self.mask_info_flow else roi + self.mask_residuals[t](feat)
            feat = header.mask_head(x)
            if with_logits == "all" or t == last:
                logits.append(header.mask_predictor(feat))
        return logits

    # ------------------------------------------------------------------ forward
    def forward(self, images: ImageList, features: Mapping[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]] | None = None,
                semantic_feature: torch.Tensor | None = None
                ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        if self.semantic_fusion and semantic_feature is None:
            raise ValueError("htc with semantic_fusion needs the semantic head's feature (a semantic head with "
                             "forward_with_feature, e.g. htc_fused); or set semantic_fusion: []")
        return super().forward(images, features, targets, semantic_feature=semantic_feature)

    def stage_losses(self, feats: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                     image_sizes: Sequence[tuple[int, int]], targets: list[dict[str, torch.Tensor]],
                     semantic_feature: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        proposals = [p.detach() for p in proposals]
        for t, stage in enumerate(self.stages):
            boxes, labels, matched, is_gt = self.sample(stage, proposals, targets)
            logits, deltas, _ = stage.header.boxes(self.rois(feats, boxes, image_sizes, semantic_feature, "bbox"))
            losses.update(self.box_losses(t, logits, deltas, boxes, labels, matched, targets))
            proposals = self.refine(stage, deltas, boxes, is_gt, image_sizes)
            if self.interleaved:
                boxes, labels, matched, _ = self.sample(stage, proposals, targets)
            pos_boxes, pos_matched = self.positives(boxes, labels, matched)
            mask_logits = self.mask_chain(self.rois(feats, pos_boxes, image_sizes, semantic_feature, "mask"), t)[0]
            losses.update(self.mask_loss(t, mask_logits, pos_boxes, pos_matched, targets))
        return losses

    def box_results(self, feats: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                    image_sizes: Sequence[tuple[int, int]], semantic_feature: torch.Tensor | None = None
                    ) -> list[Instances]:
        return self.run_stages(proposals, image_sizes, lambda stage, boxes: stage.header.boxes(
            self.rois(feats, boxes, image_sizes, semantic_feature, "bbox"))[:2])

    @torch.no_grad()
    def detect(self, feats: dict[str, torch.Tensor], proposals: list[torch.Tensor],
               image_sizes: Sequence[tuple[int, int]], semantic_feature: torch.Tensor | None = None
               ) -> list[Instances]:
        results = self.box_results(feats, proposals, image_sizes, semantic_feature)
        n = [len(r) for r in results]
        if sum(n) == 0:
            return [r.replace(masks=r.boxes.new_zeros((0, 1, 28, 28))) for r in results]
        labels = torch.cat([r.labels for r in results]) + 1
        rows = torch.arange(len(labels), device=labels.device)
        roi = self.rois(feats, [r.boxes for r in results], image_sizes, semantic_feature, "mask")
        chain = self.mask_chain(roi, len(self.stages) - 1, "all")
        masks = torch.stack([chain[t][rows, labels].float().sigmoid() for t in self.mask_test_stages]).mean(0)
        return [r.replace(masks=m[:, None]) for r, m in zip(results, masks.split(n))]

    def mask_logits_for_boxes(self, images: ImageList, features: Mapping[str, torch.Tensor],
                              boxes: list[torch.Tensor], labels: list[torch.Tensor],
                              semantic_feature: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per image (N_i, 28, 28) logits of the labelled classes (the mean over the test stages of
        the chained heads), differentiable."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [features["p2"].new_zeros((0, 28, 28)) for _ in boxes]
        roi = self.rois(dict(features), [b.float() for b in boxes], images.image_sizes, semantic_feature, "mask")
        chain = self.mask_chain(roi, len(self.stages) - 1, "all")
        lab = torch.cat(labels) + 1
        rows = torch.arange(len(lab), device=lab.device)
        logits = torch.stack([chain[t][rows, lab].float() for t in self.mask_test_stages]).mean(0)
        return list(logits.split(counts))


__all__ = ["HybridTaskCascade"]
