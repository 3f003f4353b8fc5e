"""The two-stage panoptic system: backbone -> FPN -> (Mask R-CNN branch, semantic branch) -> fusion.

This is Panoptic FPN (Kirillov et al., 2019) and the spine of the OANet, UPSNet and AntVision
variants. Loss: L = L_rpn + L_box + L_mask + lambda * L_seg (lambda = 0.25 in OANet, seed 004).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes

from panoptix.data.meta import IGNORE_INDEX, DatasetMeta
from panoptix.fusion.heuristic import heuristic_fusion, semantic_category_table
from panoptix.models.heads.rcnn import MaskRCNNBranch
from panoptix.models.heads.semantic import SemanticHead, resize_semantic_logits, semantic_loss
from panoptix.structures import Instances, PanopticResult

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TwoStagePanoptic(nn.Module):
    """Backbone + FPN shared by a Mask R-CNN branch and a semantic branch, merged by the heuristic.

    Args:
        backbone: returns C2..C5 (`panoptix.models.backbones.TimmBackbone`).
        neck: returns p2..p6 (`panoptix.models.necks.FPN`).
        instance_head: `MaskRCNNBranch` for ``meta.num_things`` classes.
        semantic_head: `SemanticHead` for the variant's class count.
        meta: the dataset's categories.
        semantic_variant: ``"stuff_things"`` (Panoptic FPN) or ``"all"`` (OANet's object context).
        seg_loss_weight: lambda of the semantic loss.
        pixel_mean, pixel_std: normalisation of 0..1 RGB input.
        min_size_test, max_size_test: inference resize (short side, cap on the long side); 0 keeps
            the input size.
        size_divisibility: the padded batch is a multiple of this.
        score_thresh, overlap_thresh, stuff_min_area: heuristic fusion settings.

    Forward (torchvision detection contract): ``images`` list of (3, H_i, W_i) float in 0..1.
        Training (``targets`` from `panoptix.data.targets.build_targets` at each image's size):
        dict of losses ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``,
        ``loss_box_reg``, ``loss_mask``, ``loss_seg`` (already weighted by lambda).
        Inference: one `PanopticResult` per image at its input size.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, instance_head: MaskRCNNBranch,
                 semantic_head: SemanticHead, meta: DatasetMeta, semantic_variant: str = "stuff_things",
                 seg_loss_weight: float = 0.25, pixel_mean: Sequence[float] = IMAGENET_MEAN,
                 pixel_std: Sequence[float] = IMAGENET_STD, min_size_test: int = 800, max_size_test: int = 1333,
                 size_divisibility: int = 32, score_thresh: float = 0.5, overlap_thresh: float = 0.5,
                 stuff_min_area: float = 0.0038) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck
        self.instance_head, self.semantic_head = instance_head, semantic_head
        self.meta = meta
        self.semantic_variant = semantic_variant
        self.semantic_categories = semantic_category_table(meta, semantic_variant)
        if semantic_head.num_classes != len(self.semantic_categories):
            raise ValueError(f"semantic head has {semantic_head.num_classes} classes; variant {semantic_variant!r} "
                             f"of {meta.name} needs {len(self.semantic_categories)}")
        if instance_head.num_things != meta.num_things:
            raise ValueError(f"instance head has {instance_head.num_things} classes; {meta.name} has {meta.num_things}")
        self.thing_categories = list(meta.thing_ids)
        self.seg_loss_weight = seg_loss_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.min_size_test, self.max_size_test = min_size_test, max_size_test
        self.size_divisibility = size_divisibility
        self.fusion = dict(score_thresh=score_thresh, overlap_thresh=overlap_thresh, stuff_min_area=stuff_min_area)

    # ------------------------------------------------------------------ input
    def _check(self, images: Sequence[torch.Tensor]) -> None:
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("images must be a non-empty list of (3, H, W) float tensors in 0..1")
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3 or not im.is_floating_point():
                raise ValueError(f"image {i}: expected a (3, H, W) float tensor in 0..1, got "
                                 f"{tuple(im.shape)} {im.dtype}")

    def _test_size(self, h: int, w: int) -> tuple[int, int]:
        if not self.min_size_test:
            return h, w
        scale = min(self.min_size_test / min(h, w), self.max_size_test / max(h, w))
        return max(1, round(h * scale)), max(1, round(w * scale))

    def preprocess(self, images: Sequence[torch.Tensor]) -> ImageList:
        """Normalise (and at inference resize) the images and pad them into one batch.

        Returns an `ImageList` with tensors (B, 3, H_pad, W_pad) and the per-image (h, w) inside it.
        """
        sizes = []
        normed = []
        for im in images:
            if not self.training:
                size = self._test_size(*im.shape[-2:])
                if size != tuple(im.shape[-2:]):
                    im = F.interpolate(im[None], size=size, mode="bilinear", align_corners=False)[0]
            sizes.append(tuple(im.shape[-2:]))
            normed.append((im - self.pixel_mean) / self.pixel_std)
        d = self.size_divisibility
        hp = -(-max(s[0] for s in sizes) // d) * d
        wp = -(-max(s[1] for s in sizes) // d) * d
        batch = normed[0].new_zeros((len(normed), 3, hp, wp))
        for b, im in zip(batch, normed):
            b[:, : im.shape[1], : im.shape[2]].copy_(im)
        return ImageList(batch, sizes)

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[torch.Tensor], targets: Optional[list[dict[str, torch.Tensor]]] = None
                ) -> dict[str, torch.Tensor] | list[PanopticResult]:
        self._check(images)
        if self.training:
            if targets is None or len(targets) != len(images):
                raise ValueError("training needs one target dict per image")
            for i, (im, t) in enumerate(zip(images, targets)):
                if tuple(t["semantic"].shape) != tuple(im.shape[-2:]):
                    raise ValueError(f"image {i}: semantic target {tuple(t['semantic'].shape)} does not match the "
                                     f"image size {tuple(im.shape[-2:])}")
        batch = self.preprocess(images)
        feats = self.neck(self.backbone(batch.tensors))
        sem_logits = self.semantic_head(feats)
        if self.training:
            _, losses = self.instance_head(batch, feats, targets)
            sem_target = torch.full(batch.tensors.shape[:1] + batch.tensors.shape[2:], IGNORE_INDEX,
                                    dtype=torch.int64, device=batch.tensors.device)
            for b, t in zip(sem_target, targets):
                b[: t["semantic"].shape[0], : t["semantic"].shape[1]] = t["semantic"]
            losses["loss_seg"] = semantic_loss(sem_logits, sem_target, self.seg_loss_weight)
            return losses
        instances, _ = self.instance_head(batch, feats)
        return [self.postprocess(inst, logits, resized, tuple(im.shape[-2:]))
                for inst, logits, resized, im in zip(instances, sem_logits, batch.image_sizes, images)]

    def postprocess(self, inst: Instances, sem_logits: torch.Tensor, resized: tuple[int, int],
                    size: tuple[int, int]) -> PanopticResult:
        """Bring one image's instances and semantic logits to its input size and fuse them."""
        boxes = resize_boxes(inst.boxes, resized, size)
        masks = paste_masks_in_image(inst.masks, boxes, size)[:, 0] if len(inst) else inst.masks.new_zeros((0, *size))
        inst = Instances(boxes, inst.scores, inst.labels, masks.float())
        logits = resize_semantic_logits(sem_logits.float(), resized, size)
        return heuristic_fusion(inst, logits, self.semantic_categories, self.thing_categories, **self.fusion)
