"""The scene parsing system of AinnoSeg (Wu et al. 2020): HRNet -> (non-local) -> (DANet) -> OCR or HRNet's
plain head; every category is a class, and the result is a semantic map.

Wiring (spec, open question 7): the backbone's four branch outputs (HRNet-W48: 48/96/192/384 channels
at strides 4-32) are upsampled bilinearly to stride 4 and concatenated (720 channels); an optional
embedded-Gaussian non-local block refines them; the optional ``context`` head (DANet) turns them into a
512-channel feature and its own logits; the ``decoder`` (OCR, or HRNet's ``fcn`` head) reads that
feature (or the concatenation without a context head) and gives the final logits. Every head's
outputs carry their own loss weights (AinnoSeg, Wu et al. 2020: DA 0.1, OCR soft regions 0.3, final 1.0).

Loss names: ``loss_decoder`` (final logits), ``loss_decoder_aux`` (OCR's soft regions),
``loss_context`` (DANet's fused logits), ``loss_context_pam`` / ``loss_context_cam``: cross-entropy
at the input resolution, VOID (255) ignored, each multiplied by its weight.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from panoptix.data.meta import DatasetMeta
from panoptix.data.targets import build_semantic_target
from panoptix.models.bfp import NonLocal2d
from panoptix.models.heads.semantic import semantic_loss, upsample_concat
from panoptix.models.postprocess import resize_semantic_logits
from panoptix.models.preprocess import Preprocessor, check_targets, pad_maps
from panoptix.registry import BACKBONES, CONTEXT_HEADS, DECODE_HEADS, SYSTEMS, Configurable, build
from panoptix.structures import PanopticResult, SegmentInfo


def semantic_result(labels: torch.Tensor, categories: list[int], meta: DatasetMeta,
                    logits: torch.Tensor | None = None) -> PanopticResult:
    """(H, W) contiguous class map -> a `PanopticResult` with one segment per class present (segment
    id = class index + 1) and the map itself in ``extra["semantic"]``; ``logits`` (K, H, W) kept when given."""
    present, areas = torch.unique(labels, return_counts=True)
    segments = [SegmentInfo(int(k) + 1, categories[int(k)], meta.isthing(categories[int(k)]), 1.0, int(a))
                for k, a in zip(present.tolist(), areas.tolist())]
    return PanopticResult((labels + 1).to(torch.int32), segments, semantic_logits=logits,
                          extra={"semantic": labels})


@SYSTEMS.register("semantic")
class SceneParser(Configurable, nn.Module):
    """Backbone branches concatenated at stride 4 -> optional non-local -> optional context head ->
    decoder head -> per-pixel class.

    Args:
        backbone: returns c2..c5 (HRNet's four branches: ``backbone: {name: timm, arch: hrnet_w48}``).
        decoder: a context head (``ocr`` or ``fcn``) whose ``logits`` are the prediction.
        meta: the dataset's categories; every category is a class (contiguous order).
        context: optional context head between the features and the decoder (``danet``).
        non_local: an embedded-Gaussian non-local block (reduction 2, zero-initialised output) on the
            concatenated features (the one AinnoSeg (Wu et al. 2020) mentions).
        preprocess: normalisation, test-time resize and padding.
        keep_semantic_logits: keep the (K, H, W) logits in each result (TTA, pseudo-labels).

    Forward (torchvision detection contract): training with ``targets`` (``semantic`` (H_i, W_i)
    int64) returns the weighted losses; inference returns one `PanopticResult` per image with
    ``extra["semantic"]`` the (H_i, W_i) int64 class map.
    """

    task = "semantic"
    derived = ("meta",)
    components = {
        "preprocess": (Preprocessor, {}),
        "backbone": (BACKBONES, {"name": "timm", "arch": "hrnet_w48"}),
        "context": (CONTEXT_HEADS, None),
        "decoder": (DECODE_HEADS, {"name": "ocr"}),
    }

    def __init__(self, backbone: nn.Module, decoder: nn.Module, meta: DatasetMeta, context: nn.Module | None = None,
                 non_local: bool = False, preprocess: Preprocessor | None = None,
                 keep_semantic_logits: bool = False) -> None:
        super().__init__()
        self.preprocess = preprocess if preprocess is not None else Preprocessor()
        self.backbone, self.context, self.decoder = backbone, context, decoder
        self.meta = meta
        self.num_classes = meta.num_classes
        self.categories = list(meta.category_ids)
        self.non_local = NonLocal2d(sum(backbone.out_channels), reduction=2) if non_local else None
        self.keep_semantic_logits = keep_semantic_logits

    @classmethod
    def from_config(cls, cfg: dict[str, Any], meta: DatasetMeta, **context: Any) -> SceneParser:
        backbone = build(BACKBONES, cfg["backbone"], "model.backbone", **context)
        channels = sum(backbone.out_channels)
        context_head = build(CONTEXT_HEADS, cfg["context"], "model.context", in_channels=channels,
                             num_classes=meta.num_classes)
        if context_head is not None:
            channels = context_head.out_channels
        decoder = build(DECODE_HEADS, cfg["decoder"], "model.decoder", in_channels=channels,
                        num_classes=meta.num_classes)
        return cls(backbone, decoder, meta, context=context_head, non_local=cfg["non_local"],
                   preprocess=build(Preprocessor, cfg["preprocess"]),
                   keep_semantic_logits=cfg["keep_semantic_logits"])

    def target_builder(self) -> Callable[..., dict[str, torch.Tensor]]:
        """``PanopticSample -> {"semantic": (H, W)}`` (picklable, for data-loader workers)."""
        return functools.partial(build_semantic_target, meta=self.meta)

    def head_outputs(self, tensors: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """(B, 3, H, W) padded batch -> {"context": outputs, "decoder": outputs}, each a dict of
        (B, K, H/4, W/4) logits (and the head's ``feature``)."""
        branches = list(self.backbone(tensors).values())
        x = upsample_concat(branches, tuple(branches[0].shape[-2:]))
        if self.non_local is not None:
            x = self.non_local(x)
        outputs = {}
        if self.context is not None:
            outputs["context"] = self.context(x)
            x = outputs["context"]["feature"]
        outputs["decoder"] = self.decoder(x)
        return outputs

    def logits(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Final (K, H_i, W_i) float32 logits of each image at its input size (test resize inside)."""
        images = self.preprocess.inputs(images)
        return self.batch_logits(self.preprocess(images), [tuple(im.shape[-2:]) for im in images])

    def view_logits(self, view: torch.Tensor) -> torch.Tensor:
        """(3, h, w) image run as it is (no test resize) -> (K, h, w) float32 logits (what TTA's views use)."""
        return self.batch_logits(self.preprocess.batch([view]), [tuple(view.shape[-2:])])[0]

    def batch_logits(self, batch: Any, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Final logits of a padded `ImageList`, each image's brought to its size in ``sizes``."""
        final = self.head_outputs(batch.tensors)["decoder"]["logits"]
        stride = batch.tensors.shape[-2] // final.shape[-2]
        return [resize_semantic_logits(lg, crop, size, stride=stride)
                for lg, crop, size in zip(final, batch.image_sizes, sizes)]

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor] | list[PanopticResult]:
        if not self.training:
            return [self.result(lg) for lg in self.logits(images)]
        images = self.preprocess.inputs(images)
        check_targets(images, targets)
        batch = self.preprocess(images)
        target = pad_maps([t["semantic"] for t in targets], tuple(batch.tensors.shape[-2:]))
        losses = {}
        for slot, outputs in self.head_outputs(batch.tensors).items():
            head = getattr(self, slot)
            for name, weight in head.loss_weights.items():
                key = f"loss_{slot}" if name == "logits" else f"loss_{slot}_{name.removesuffix('_logits')}"
                losses[key] = semantic_loss(outputs[name], target, weight)
        return losses

    def export_graph(self, size: tuple[int, int]) -> nn.Module:
        """The whole system for one (3, *size) image as one traceable module (`SemanticGraph`: the
        label map), what ``panoptix export`` writes to ONNX."""
        from panoptix.models.systems.semantic_graph import SemanticGraph  # it builds on this module

        return SemanticGraph(self, size)

    def result(self, logits: torch.Tensor) -> PanopticResult:
        """(K, H, W) logits of one image -> its `PanopticResult` (argmax class per pixel)."""
        return semantic_result(logits.argmax(0), self.categories, self.meta,
                               logits if self.keep_semantic_logits else None)


__all__ = ["SceneParser", "semantic_result"]
