"""The two-stage panoptic system: backbone -> neck -> (instance head, semantic head) -> fusion.

This is Panoptic FPN (Kirillov et al., 2019) and the spine of the OANet, UPSNet and AntVision
variants. Loss: L = L_rpn + L_box + L_mask + lambda * L_seg (lambda is the semantic head's
``loss_weight``; 0.25 in OANet, seed 004 Table 1). Every part is a registered component named in
the config; the fusion is a registered function.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal, Optional

import torch
from torch import nn

from panoptix.data.meta import DatasetMeta
from panoptix.data.targets import build_targets, num_semantic_classes
from panoptix.fusion.heuristic import semantic_category_table
from panoptix.models.postprocess import detector_postprocess, resize_semantic_logits
from panoptix.models.preprocess import Preprocessor, pad_maps
from panoptix.models.registry import (BACKBONES, FUSIONS, INSTANCE_HEADS, NECKS, SEMANTIC_HEADS, SYSTEMS,
                                      Configurable, build)
from panoptix.structures import PanopticResult


@SYSTEMS.register("two_stage")
class TwoStagePanoptic(Configurable, nn.Module):
    """Backbone + neck shared by an instance head and a semantic head, merged by a fusion function.

    Args:
        backbone: returns C2..C5 (e.g. `panoptix.models.backbones.TimmBackbone`).
        neck: returns p2..p6 (e.g. `panoptix.models.necks.FPN`).
        instance_head: ``(ImageList, feats, targets) -> (list[Instances], losses)`` for
            ``meta.num_things`` classes (e.g. `MaskRCNNBranch`).
        semantic_head: ``(feats, padded semantic target) -> (logits, losses)`` for the variant's
            classes (a `panoptix.models.heads.semantic.SemanticHead`).
        fusion: ``(Instances at image size, (K, H, W) logits, semantic categories, thing categories)
            -> PanopticResult`` (a registered fusion, e.g. ``heuristic``). Instances under its
            ``score_thresh`` are dropped before their masks are pasted.
        meta: the dataset's categories.
        preprocess: normalisation, test-time resize and padding.
        semantic_variant: ``"stuff_things"`` (Panoptic FPN) or ``"all"`` (OANet's object context).
        keep_semantic_logits: keep the full-size (K, H, W) logits in each result (for ablations and
            ensembles; off by default: K x H x W floats per image).

    Forward (torchvision detection contract): ``images`` list of (3, H_i, W_i) float in 0..1.
        Training (``targets`` from `target_builder` at each image's size): dict of losses
        ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``,
        ``loss_mask``, ``loss_seg`` (already weighted by lambda).
        Inference: one `PanopticResult` per image at its input size.
    """

    derived = ("meta",)
    components = {
        "preprocess": (Preprocessor, {}),
        "backbone": (BACKBONES, {"name": "timm"}),
        "neck": (NECKS, {"name": "fpn"}),
        "instance_head": (INSTANCE_HEADS, {"name": "mask_rcnn"}),
        "semantic_head": (SEMANTIC_HEADS, {"name": "fpn"}),
        "fusion": (FUSIONS, {"name": "heuristic"}),
    }

    def __init__(self, backbone: nn.Module, neck: nn.Module, instance_head: nn.Module, semantic_head: nn.Module,
                 fusion: Callable[..., PanopticResult], meta: DatasetMeta, preprocess: Optional[Preprocessor] = None,
                 semantic_variant: Literal["stuff_things", "all"] = "stuff_things",
                 keep_semantic_logits: bool = False) -> None:
        super().__init__()
        self.preprocess = preprocess if preprocess is not None else Preprocessor()
        self.backbone, self.neck = backbone, neck
        self.instance_head, self.semantic_head = instance_head, semantic_head
        self.fusion = fusion
        self.meta = meta
        self.semantic_variant = semantic_variant
        self.semantic_categories = semantic_category_table(meta, semantic_variant)
        if semantic_head.num_classes != len(self.semantic_categories):
            raise ValueError(f"semantic head has {semantic_head.num_classes} classes; variant {semantic_variant!r} "
                             f"of {meta.name} needs {len(self.semantic_categories)}")
        if instance_head.num_things != meta.num_things:
            raise ValueError(f"instance head has {instance_head.num_things} classes; {meta.name} has {meta.num_things}")
        self.thing_categories = list(meta.thing_ids)
        self.keep_semantic_logits = keep_semantic_logits
        self.min_instance_score = float(getattr(fusion, "keywords", {}).get("score_thresh", 0.0))

    @classmethod
    def from_config(cls, cfg: dict[str, Any], meta: DatasetMeta, **context: Any) -> "TwoStagePanoptic":
        backbone = build(BACKBONES, cfg["backbone"], **context)
        neck = build(NECKS, cfg["neck"], in_channels=backbone.out_channels)
        instance = build(INSTANCE_HEADS, cfg["instance_head"], in_channels=neck.out_channels,
                         num_things=meta.num_things)
        semantic = build(SEMANTIC_HEADS, cfg["semantic_head"], in_channels=neck.out_channels,
                         num_classes=num_semantic_classes(meta, cfg["semantic_variant"]))
        return cls(backbone, neck, instance, semantic, build(FUSIONS, cfg["fusion"]), meta,
                   preprocess=build(Preprocessor, cfg["preprocess"]), semantic_variant=cfg["semantic_variant"],
                   keep_semantic_logits=cfg["keep_semantic_logits"])

    def target_builder(self) -> Callable[..., dict[str, torch.Tensor]]:
        """``PanopticSample -> targets`` for this system (picklable, for data-loader workers)."""
        return functools.partial(build_targets, meta=self.meta, semantic=self.semantic_variant)

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[torch.Tensor], targets: Optional[list[dict[str, torch.Tensor]]] = None
                ) -> dict[str, torch.Tensor] | list[PanopticResult]:
        batch = self.preprocess(images)
        feats = self.neck(self.backbone(batch.tensors))
        if self.training:
            if targets is None or len(targets) != len(images):
                raise ValueError("training needs one target dict per image")
            for i, (im, t) in enumerate(zip(images, targets)):
                if tuple(t["semantic"].shape) != tuple(im.shape[-2:]):
                    raise ValueError(f"image {i}: semantic target {tuple(t['semantic'].shape)} does not match the "
                                     f"image size {tuple(im.shape[-2:])}")
            _, losses = self.instance_head(batch, feats, targets)
            sem_target = pad_maps([t["semantic"] for t in targets], tuple(batch.tensors.shape[-2:]))
            _, sem_losses = self.semantic_head(feats, sem_target)
            return {**losses, **sem_losses}
        instances, _ = self.instance_head(batch, feats)
        sem_logits, _ = self.semantic_head(feats)
        return [self.postprocess(inst, logits, resized, tuple(im.shape[-2:]))
                for inst, logits, resized, im in zip(instances, sem_logits, batch.image_sizes, images)]

    def postprocess(self, instances: Any, sem_logits: torch.Tensor, resized: tuple[int, int],
                    size: tuple[int, int]) -> PanopticResult:
        """Bring one image's instances and (K, h/4, w/4) semantic logits to its input size and fuse them."""
        inst = detector_postprocess(instances, size, self.min_instance_score)
        logits = resize_semantic_logits(sem_logits, resized, size)
        result = self.fusion(inst, logits, self.semantic_categories, self.thing_categories)
        if not self.keep_semantic_logits:
            result.semantic_logits = None
        return result
