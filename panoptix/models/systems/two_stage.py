"""The two-stage panoptic system: backbone -> neck -> (instance head, semantic head) -> fusion.

This is Panoptic FPN (Kirillov et al., 2019) and the spine of the OANet, UPSNet and AntVision
variants. Loss: L = L_rpn + L_box + L_mask + lambda * L_seg (lambda is the semantic head's
``loss_weight``; 0.25 in OANet (Liu et al. 2019) Table 1). Every part is a registered component named in
the config; the fusion is a registered function.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from panoptix.data.meta import IGNORE_INDEX, DatasetMeta
from panoptix.data.targets import build_targets, instance_index_map, num_semantic_classes
from panoptix.fusion.heuristic import semantic_category_table
from panoptix.fusion.ranking import RANK_FIELD
from panoptix.fusion.upsnet import split_channels
from panoptix.models.heads.ranking import thing_label_map
from panoptix.models.heads.upsnet import panoptic_target
from panoptix.models.postprocess import detector_postprocess, paste_masks, resize_semantic_logits
from panoptix.models.preprocess import Preprocessor, check_targets, pad_maps
from panoptix.registry import (
    BACKBONES,
    FUSIONS,
    LOSS_WEIGHTINGS,
    NECKS,
    RANKING_HEADS,
    REFINEMENTS,
    ROI_HEADS,
    SEMANTIC_HEADS,
    SYSTEMS,
    UPSNET_HEADS,
    Configurable,
    build,
)
from panoptix.structures import PanopticResult, RawPanoptic


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
        upsnet_head: optional `UPSNetPanopticHead` (trains the logits the ``upsnet`` merge compares;
            needs ``semantic_variant: all``).
        ranking_head: optional `SpatialRankingHead` (OANet's ranking scores for the ``ranking`` merge).
        refine: optional refinement of the merged result (e.g. the ``crf`` Dense CRF).
        loss_weighting: optional learned weighting of the losses (``uncertainty``: Kendall et al.'s
            task uncertainties, AntVisionPS's LWL-HTC); without it the losses are summed as they are.

    Forward (torchvision detection contract): ``images`` list of (3, H_i, W_i) float in 0..1.
        Training (``targets`` from `target_builder` at each image's size): dict of losses
        ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``,
        ``loss_mask``, ``loss_seg`` (already weighted by lambda), and ``loss_panoptic`` /
        ``loss_srm`` with the UPSNet / ranking heads.
        Inference: one `PanopticResult` per image at its input size (`predict_raw` then `fuse`).
    """

    task = "panoptic"  # see panoptix.engine.tasks
    derived = ("meta",)
    components = {
        "preprocess": (Preprocessor, {}),
        "backbone": (BACKBONES, {"name": "timm"}),
        "neck": (NECKS, {"name": "fpn"}),
        "instance_head": (ROI_HEADS, {"name": "mask_rcnn"}),
        "semantic_head": (SEMANTIC_HEADS, {"name": "fpn"}),
        "fusion": (FUSIONS, {"name": "heuristic"}),
        "upsnet_head": (UPSNET_HEADS, None),
        "ranking_head": (RANKING_HEADS, None),
        "refine": (REFINEMENTS, None),
        "loss_weighting": (LOSS_WEIGHTINGS, None),
    }

    def __init__(self, backbone: nn.Module, neck: nn.Module, instance_head: nn.Module, semantic_head: nn.Module,
                 fusion: Callable[..., PanopticResult], meta: DatasetMeta, preprocess: Preprocessor | None = None,
                 semantic_variant: Literal["stuff_things", "all"] = "stuff_things",
                 keep_semantic_logits: bool = False, upsnet_head: nn.Module | None = None,
                 ranking_head: nn.Module | None = None, refine: Callable[..., PanopticResult] | None = None,
                 loss_weighting: nn.Module | None = None) -> None:
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
        fuses = getattr(instance_head, "uses_semantic_feature", False)
        if fuses and not getattr(semantic_head, "provides_feature", False):
            raise ValueError(f"{type(instance_head).__name__} fuses the semantic head's feature; "
                             f"{type(semantic_head).__name__} has none (use semantic_head.name: htc_fused, or the "
                             f"deformable head with semantic_feature: true)")
        self.thing_categories = list(meta.thing_ids)
        self.keep_semantic_logits = keep_semantic_logits
        self.min_instance_score = float(getattr(fusion, "keywords", {}).get("score_thresh", 0.0))
        self.upsnet_head, self.ranking_head, self.refine = upsnet_head, ranking_head, refine
        self.loss_weighting = loss_weighting
        if upsnet_head is not None:
            stuff_ch, thing_ch = split_channels(self.semantic_categories, meta.num_things)
            lut = torch.full((len(self.semantic_categories),), IGNORE_INDEX, dtype=torch.int64)
            lut[stuff_ch] = torch.arange(len(stuff_ch))
            self.register_buffer("stuff_channels", stuff_ch, persistent=False)
            self.register_buffer("thing_channels", thing_ch, persistent=False)
            self.register_buffer("stuff_lut", lut, persistent=False)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], meta: DatasetMeta, **context: Any) -> TwoStagePanoptic:
        backbone = build(BACKBONES, cfg["backbone"], "model.backbone", **context)
        neck = build(NECKS, cfg["neck"], "model.neck", in_channels=backbone.out_channels)
        instance = build(ROI_HEADS, cfg["instance_head"], "model.instance_head", in_channels=neck.out_channels,
                         num_things=meta.num_things)
        semantic = build(SEMANTIC_HEADS, cfg["semantic_head"], "model.semantic_head", in_channels=neck.out_channels,
                         num_classes=num_semantic_classes(meta, cfg["semantic_variant"]))
        return cls(backbone, neck, instance, semantic, build(FUSIONS, cfg["fusion"], "model.fusion"), meta,
                   preprocess=build(Preprocessor, cfg["preprocess"]), semantic_variant=cfg["semantic_variant"],
                   keep_semantic_logits=cfg["keep_semantic_logits"],
                   upsnet_head=build(UPSNET_HEADS, cfg["upsnet_head"], "model.upsnet_head",
                                     num_things=meta.num_things),
                   ranking_head=build(RANKING_HEADS, cfg["ranking_head"], "model.ranking_head",
                                      num_things=meta.num_things),
                   refine=build(REFINEMENTS, cfg["refine"], "model.refine"),
                   loss_weighting=build(LOSS_WEIGHTINGS, cfg["loss_weighting"], "model.loss_weighting"))

    def target_builder(self) -> Callable[..., dict[str, torch.Tensor]]:
        """``PanopticSample -> targets`` for this system (picklable, for data-loader workers)."""
        return functools.partial(build_targets, meta=self.meta, semantic=self.semantic_variant)

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor] | list[PanopticResult]:
        images = self.preprocess.inputs(images)
        batch = self.preprocess(images)
        feats = self.neck(self.backbone(batch.tensors))
        if self.training:
            check_targets(images, targets)
            sem_target = pad_maps([t["semantic"] for t in targets], tuple(batch.tensors.shape[-2:]))
            sem_logits, sem_losses, extra = self.semantic_outputs(feats, sem_target)
            _, losses = self.instance_head(batch, feats, targets, **extra)
            losses = {**losses, **sem_losses}
            if self.upsnet_head is not None or self.ranking_head is not None:
                losses.update(self.panoptic_head_losses(batch, feats, sem_logits, targets, extra))
            return losses if self.loss_weighting is None else self.loss_weighting(losses)
        return [self.fuse(raw) for raw in self.predict_raw(images, batch, feats)]

    def semantic_outputs(self, feats: dict[str, torch.Tensor], target: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Semantic logits, losses, and the keywords the instance head takes from the semantic head
        (HTC's ``semantic_feature``; none for other instance heads)."""
        if not getattr(self.instance_head, "uses_semantic_feature", False):
            return (*self.semantic_head(feats, target), {})
        logits, losses, feature = self.semantic_head.forward_with_feature(feats, target)
        return logits, losses, {"semantic_feature": feature}

    def panoptic_head_losses(self, batch: Any, feats: dict[str, torch.Tensor], sem_logits: torch.Tensor,
                             targets: list[dict[str, torch.Tensor]], extra: dict[str, torch.Tensor] | None = None
                             ) -> dict[str, torch.Tensor]:
        """``loss_panoptic`` (UPSNet) and ``loss_srm`` (ranking) on the semantic head's 1/4 grid.

        Both heads take the ground-truth boxes and classes with the mask head's logits on them.
        Label maps take each grid cell's centre pixel: the targets are sampled first, the instance
        index of each sample is found once for both heads, and the maps are padded to the grid.
        """
        grid = tuple(sem_logits.shape[-2:])
        stride = batch.tensors.shape[-2] // grid[0]
        boxes, labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
        logits = self.instance_head.mask_logits_for_boxes(batch, feats, boxes, labels, **(extra or {}))
        grid_boxes = [b / stride for b in boxes]
        pasted = [paste_masks(m, b, grid) for m, b in zip(logits, grid_boxes)]

        def sample(x: torch.Tensor) -> torch.Tensor:
            return x[..., stride // 2::stride, stride // 2::stride]

        semantic = [sample(t["semantic"]) for t in targets]
        index = [instance_index_map(sample(t["masks"]), tuple(s.shape)) for t, s in zip(targets, semantic)]
        losses: dict[str, torch.Tensor] = {}
        if self.ranking_head is not None:
            thing = pad_maps([thing_label_map(i, t["labels"]) for i, t in zip(index, targets)], grid)
            losses.update(self.ranking_head.loss([p.sigmoid() for p in pasted], labels, thing))
        if self.upsnet_head is not None:
            keeps = [self.upsnet_head.keep_indices(len(b), b.device) for b in boxes]
            target = pad_maps([panoptic_target(s, i, len(b), k, self.stuff_lut)
                               for s, i, b, k in zip(semantic, index, boxes, keeps)], grid)
            losses.update(self.upsnet_head.loss(sem_logits, self.stuff_channels, self.thing_channels, grid_boxes,
                                                labels, pasted, list(target), keeps))
        return losses

    @torch.no_grad()
    def predict_raw(self, images: list[torch.Tensor], batch: Any = None, feats: dict[str, torch.Tensor] | None = None
                    ) -> list[RawPanoptic]:
        """Instances (with ranking scores when there is a ranking head) and semantic logits of each
        image at its input size, before any merge: what `fuse` and ``panoptix ablate`` consume."""
        if self.training:
            raise RuntimeError("predict_raw runs in eval mode: call model.eval() first")
        if batch is None:
            images = self.preprocess.inputs(images)
            batch = self.preprocess(images)
            feats = self.neck(self.backbone(batch.tensors))
        sem_logits, _, extra = self.semantic_outputs(feats)
        instances, _ = self.instance_head(batch, feats, **extra)
        ranking_seconds = 0.0
        if self.ranking_head is not None:
            start = time.perf_counter()
            instances = [self.add_rank_scores(inst, tuple(sem_logits.shape[-2:]),
                                              batch.tensors.shape[-2] // sem_logits.shape[-2]) for inst in instances]
            if sem_logits.is_cuda:
                torch.cuda.synchronize(sem_logits.device)
            ranking_seconds = (time.perf_counter() - start) / max(len(images), 1)
        return [RawPanoptic(detector_postprocess(inst, tuple(im.shape[-2:]), self.min_instance_score),
                            resize_semantic_logits(logits, resized, tuple(im.shape[-2:])), im, ranking_seconds)
                for inst, logits, resized, im in zip(instances, sem_logits, batch.image_sizes, images)]

    def add_rank_scores(self, instances: Any, grid: tuple[int, int], stride: int) -> Any:
        """Instances (box-relative masks, resized-image boxes) above the merge's score threshold,
        with ``extra["rank_scores"]`` from the ranking head on the 1/``stride`` grid."""
        inst = instances[instances.scores >= self.min_instance_score]
        small = paste_masks(inst.masks, inst.boxes / stride, grid)
        inst = inst.replace()
        inst.extra[RANK_FIELD] = self.ranking_head.rank_scores(small, inst.labels)
        return inst

    def export_graph(self, size: tuple[int, int]) -> nn.Module:
        """The whole system for one (3, *size) image as one traceable module (`TwoStageGraph`), what
        ``panoptix export`` writes to ONNX."""
        from panoptix.models.systems.two_stage_graph import TwoStageGraph  # it builds on this module

        return TwoStageGraph(self, size)

    def fuse(self, raw: RawPanoptic, fusion: Callable[..., PanopticResult] | None = None,
             refine: Callable[..., PanopticResult] | None | Literal["default"] = "default") -> PanopticResult:
        """Merge one `RawPanoptic` with ``fusion`` (default: the system's) and ``refine`` (default:
        the system's; None for none)."""
        result = (fusion or self.fusion)(raw.instances, raw.semantic_logits, self.semantic_categories,
                                         self.thing_categories)
        refine = self.refine if refine == "default" else refine
        if refine is not None:
            result = refine(result, raw.image)
        if not self.keep_semantic_logits:
            result.semantic_logits = None
            result.extra.pop("panoptic_logits", None)
        return result
