"""The CIAE one-stage panoptic system (CIAE, Gao et al. 2021): FCOS + category- and instance-aware pixel embeddings,
merged by one matrix product.

backbone -> FPN P2-P7 -> FCOS head on P3-P7 (classes, boxes, centre-ness, box embeddings)
                      -> embedding branch on P2-P5 (+ box embeddings) -> P (unit embeddings)
Loss (Eq. 15): L = L_centerness + L_class + L_reg + L_CIAE, with L_CIAE = L_CAE + 2 L_IAE (Eq. 12).
Inference (section IV-C): detections after NMS, a query per detection read from P where it was
detected, the stuff classes' memory embeddings as stuff queries, S = P V^T, argmax per pixel.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.data.meta import DatasetMeta
from panoptix.data.targets import build_targets, instance_index_map
from panoptix.fusion.area import stuff_area_limit
from panoptix.fusion.embedding import embedding_fusion
from panoptix.fusion.heuristic import semantic_category_table
from panoptix.losses.ciae import CIAELoss
from panoptix.models.heads.embedding import embedding_map
from panoptix.models.heads.fcos import LOCATION_FIELD
from panoptix.models.postprocess import resize_boxes
from panoptix.models.preprocess import Preprocessor, check_targets, pad_maps
from panoptix.registry import (
    BACKBONES,
    BOX_CLASSIFIERS,
    DENSE_DETECTORS,
    EMBEDDING_HEADS,
    NECKS,
    SYSTEMS,
    Configurable,
    build,
)
from panoptix.structures import Instances, PanopticResult

QUERY_FIELD = "query"


def stuff_rows(table: list[int]) -> list[int]:
    """Memory rows that are stuff classes, from `semantic_category_table` (-1 marks thing rows)."""
    return [i for i, c in enumerate(table) if c >= 0]


def instance_index(target: dict[str, torch.Tensor]) -> torch.Tensor:
    """(H, W) int64 instance of each pixel (-1 none): the target's ``instance_index``, or built from its masks."""
    if "instance_index" in target:
        return target["instance_index"]
    return instance_index_map(target["masks"], tuple(target["semantic"].shape))


def ciae_targets(sample: Any, meta: DatasetMeta, semantic: str) -> dict[str, torch.Tensor]:
    """`build_targets` plus ``instance_index`` (see `CIAEPanoptic.target_builder`)."""
    targets = build_targets(sample, meta, semantic)
    targets["instance_index"] = instance_index(targets)
    return targets


def image_embeddings(raw: torch.Tensor, resized: tuple[int, int], size: tuple[int, int], stride: int) -> torch.Tensor:
    """P of one image: its (E, H'/s, W'/s) raw embeddings of the padded batch cropped to the resized
    image, resized to ``size`` and L2-normalised: (E, *size)."""
    h, w = resized
    return embedding_map(raw[None, :, : -(-h // stride), : -(-w // stride)], size)[0]


def read_queries(embeddings: torch.Tensor, locations: torch.Tensor, resized: tuple[int, int]) -> torch.Tensor:
    """(N, E) query embeddings: P at the pixel of each detection's (x, y) location (resized-image
    coordinates, scaled to P's size)."""
    (h, w), (ho, wo) = resized, embeddings.shape[-2:]
    xo = (locations[:, 0] * (wo / w)).long().clamp(0, wo - 1)
    yo = (locations[:, 1] * (ho / h)).long().clamp(0, ho - 1)
    return embeddings[:, yo, xo].T


@dataclass
class RawEmbedding:
    """CIAE's output for one image before its merge.

    Attributes:
        instances: detections at the image size, with ``extra["query"]`` (N, E) unit query embeddings
            and ``extra["locations"]`` (N, 2) where they were detected (resized-image coordinates).
        embeddings: (E, H, W) unit pixel embeddings P at the image size.
        network_seconds: wall time of the network for this image (batch time / batch size).
    """

    instances: Instances
    embeddings: torch.Tensor
    network_seconds: float = 0.0


@SYSTEMS.register("ciae")
class CIAEPanoptic(Configurable, nn.Module):
    """One-stage panoptic segmentation from pixel embeddings.

    Args:
        backbone: returns C2..C5.
        neck: returns p2..p7 (an FPN with ``top_levels: p6p7``).
        detector: `panoptix.models.heads.fcos.FCOSHead` for ``meta.num_things`` classes.
        embedding: `panoptix.models.heads.embedding.EmbeddingBranch`.
        loss: `panoptix.losses.ciae.CIAELoss` (holds the memory embeddings).
        meta: the dataset's categories.
        preprocess: normalisation, test-time resize and padding.
        merge_things: learn one "thing" category in L_CAE (Table IV, the paper's default) instead of
            every thing class; instance categories come from the detector either way.
        stuff_min_area: stuff segments under this many pixels become VOID (4096, the paper's).
        stuff_min_area_fraction: when set, the limit is this fraction of the image area instead.
        box_filter: similarity to a detection set to 0 outside its box at inference (section IV-B).
        instance_category: where a thing segment's category comes from: ``"detector"`` (FCOS's
            classifier, the paper's choice), ``"embedding"`` (the thing memory embedding most similar
            to the detection's query; Table IV's "E" rows; needs ``merge_things: false``) or
            ``"classifier"`` (the ``classifier`` part relabels each detection from its box).
        classifier: optional `panoptix.models.heads.roi_classifier.RoIClassifier` (not in the paper:
            a 7x7 RoIAlign box classifier, optionally with a training-only mask head; needs
            ``instance_category: classifier`` and the reverse).
        total_iters: T of the memory momentum (Eq. 13); the solver's ``max_iter`` when built from a config.

    Training returns ``loss_fcos_cls``, ``loss_fcos_box``, ``loss_fcos_ctr``, ``loss_cae``, ``loss_iae``
    (and ``loss_roi_cls`` with a classifier, ``loss_roi_mask`` when it has a mask head);
    inference one `PanopticResult` per image at its input size (`predict_raw` then `fuse`).
    """

    task = "panoptic"  # see panoptix.engine.tasks
    derived = ("meta", "total_iters")
    components = {
        "preprocess": (Preprocessor, {}),
        "backbone": (BACKBONES, {"name": "timm"}),
        "neck": (NECKS, {"name": "fpn", "top_levels": "p6p7"}),
        "detector": (DENSE_DETECTORS, {"name": "fcos"}),
        "embedding": (EMBEDDING_HEADS, {"name": "ciae"}),
        "loss": (CIAELoss, {}),
        "classifier": (BOX_CLASSIFIERS, None),
    }

    def __init__(self, backbone: nn.Module, neck: nn.Module, detector: nn.Module, embedding: nn.Module,
                 loss: CIAELoss, meta: DatasetMeta, preprocess: Preprocessor | None = None,
                 merge_things: bool = True, stuff_min_area: int = 4096,
                 stuff_min_area_fraction: float | None = None, box_filter: bool = True,
                 instance_category: Literal["detector", "embedding", "classifier"] = "detector",
                 classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.preprocess = preprocess if preprocess is not None else Preprocessor()
        self.backbone, self.neck, self.detector, self.embedding, self.loss = backbone, neck, detector, embedding, loss
        self.meta, self.merge_things = meta, merge_things
        self.variant = "stuff_things" if merge_things else "all"
        table = semantic_category_table(meta, self.variant)
        self.stuff_rows = stuff_rows(table)
        self.stuff_categories = [table[i] for i in self.stuff_rows]
        self.thing_categories = list(meta.thing_ids)
        if detector.num_things != meta.num_things:
            raise ValueError(f"detector has {detector.num_things} classes; {meta.name} has {meta.num_things}")
        if loss.memory.shape[0] != len(table):
            raise ValueError(f"CIAE memory has {loss.memory.shape[0]} rows; {meta.name} needs {len(table)}")
        self.stuff_min_area, self.stuff_min_area_fraction = stuff_min_area, stuff_min_area_fraction
        self.box_filter = box_filter
        if instance_category == "embedding" and merge_things:
            raise ValueError("instance_category: embedding needs merge_things: false (the memory must hold every "
                             "thing class)")
        if (instance_category == "classifier") != (classifier is not None):
            raise ValueError("instance_category: classifier and a classifier part go together: set both "
                             "(model.classifier={name: roi_classifier}) or neither")
        self.instance_category, self.classifier = instance_category, classifier
        self.thing_rows = [meta.contiguous_id[c] for c in meta.thing_ids] if not merge_things else []

    @classmethod
    def from_config(cls, cfg: dict[str, Any], meta: DatasetMeta, total_iters: int | None = None,
                    **context: Any) -> CIAEPanoptic:
        backbone = build(BACKBONES, cfg["backbone"], "model.backbone", **context)
        neck = build(NECKS, cfg["neck"], "model.neck", in_channels=backbone.out_channels)
        detector = build(DENSE_DETECTORS, cfg["detector"], "model.detector", in_channels=neck.out_channels,
                         num_things=meta.num_things)
        embedding = build(EMBEDDING_HEADS, cfg["embedding"], "model.embedding", in_channels=neck.out_channels,
                          box_embed_dim=getattr(detector, "embed_dim", 0))
        table = semantic_category_table(meta, "stuff_things" if cfg["merge_things"] else "all")
        loss = build(CIAELoss, cfg["loss"], num_categories=len(table), embed_dim=embedding.embed_dim,
                     stuff_rows=stuff_rows(table),
                     **({"total_iters": total_iters} if total_iters else {}))
        classifier = build(BOX_CLASSIFIERS, cfg["classifier"], "model.classifier", in_channels=neck.out_channels,
                           num_things=meta.num_things)
        return cls(backbone, neck, detector, embedding, loss, meta, preprocess=build(Preprocessor, cfg["preprocess"]),
                   merge_things=cfg["merge_things"], stuff_min_area=cfg["stuff_min_area"],
                   stuff_min_area_fraction=cfg["stuff_min_area_fraction"], box_filter=cfg["box_filter"],
                   instance_category=cfg["instance_category"], classifier=classifier)

    def target_builder(self) -> Callable[..., dict[str, torch.Tensor]]:
        """``PanopticSample -> targets`` (picklable): the semantic map holds memory rows, and
        ``instance_index`` (H, W) the instance of each pixel (-1 none), built once in the data
        loader for both the detector's matching and the embedding loss."""
        return functools.partial(ciae_targets, meta=self.meta, semantic=self.variant)

    # ------------------------------------------------------------------ forward
    def network(self, tensors: torch.Tensor
                ) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor, dict[str, torch.Tensor]]:
        """Detector outputs, the (B, E, H/4, W/4) raw embeddings and the FPN features of a padded batch."""
        feats = self.neck(self.backbone(tensors))
        out = self.detector(feats)
        raw = self.embedding(feats, out["emb"] if self.embedding.box_embedding else None)
        return out, raw, feats

    def detect(self, out: dict[str, list[torch.Tensor]], feats: dict[str, torch.Tensor],
               image_sizes: list[tuple[int, int]]) -> list[Instances]:
        """The detector's detections, relabelled by the classifier when there is one."""
        detections = self.detector.detect(out, image_sizes)
        if self.classifier is None:
            return detections
        labels = self.classifier.relabel(feats, [d.boxes for d in detections], image_sizes)
        return [d.replace(labels=lab) for d, lab in zip(detections, labels)]

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor] | list[PanopticResult]:
        if not self.training:
            return [self.fuse(raw) for raw in self.predict_raw(images)]
        images = self.preprocess.inputs(images)
        check_targets(images, targets)
        batch = self.preprocess(images)
        padded = tuple(batch.tensors.shape[-2:])
        out, raw, feats = self.network(batch.tensors)
        losses = self.detector.losses(out, targets)
        if self.classifier is not None:
            losses.update(self.classifier.losses(feats, targets, batch.image_sizes))
        category = pad_maps([t["semantic"] for t in targets], padded)
        instance = pad_maps([instance_index(t) for t in targets], padded, fill=-1)
        full = F.interpolate(raw, size=padded, mode="bilinear", align_corners=False)
        losses.update(self.loss(full, category, instance, [t["boxes"] for t in targets],
                                [tuple(t["semantic"].shape) for t in targets]))
        return losses

    @torch.no_grad()
    def predict_raw(self, images: list[torch.Tensor]) -> list[RawEmbedding]:
        """Detections with their query embeddings and the unit embedding map of each image at its input size."""
        if self.training:
            raise RuntimeError("predict_raw runs in eval mode: call model.eval() first")
        start = time.perf_counter()
        images = self.preprocess.inputs(images)
        batch = self.preprocess(images)
        out, raw, feats = self.network(batch.tensors)
        detections = self.detect(out, feats, batch.image_sizes)
        stride = batch.tensors.shape[-2] // raw.shape[-2]
        results = []
        for det, r, resized, im in zip(detections, raw, batch.image_sizes, images):
            size = tuple(im.shape[-2:])
            emb = image_embeddings(r, resized, size, stride)
            inst = det.replace(boxes=resize_boxes(det.boxes, resized, size), image_size=size)
            inst.extra[QUERY_FIELD] = read_queries(emb, det.extra[LOCATION_FIELD], resized)
            results.append(RawEmbedding(inst, emb))
        if raw.is_cuda:
            torch.cuda.synchronize(raw.device)
        seconds = (time.perf_counter() - start) / max(len(images), 1)
        for r in results:
            r.network_seconds = seconds
        return results

    def stuff_queries(self) -> torch.Tensor:
        """(S, E) memory embeddings of the stuff classes, in ``stuff_categories`` order."""
        return self.loss.memory[self.loss.stuff_rows]

    def instance_labels(self, labels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(N,) thing classes of the detections: the most similar thing memory row's with
        ``instance_category: embedding``, else ``labels`` (the detector's, or the classifier's)."""
        if self.instance_category != "embedding":
            return labels
        rows = torch.as_tensor(self.thing_rows, device=queries.device)
        return (queries.float() @ self.loss.memory[rows].T).argmax(1)

    def stuff_area_limit(self, size: tuple[int, int]) -> float:
        """Pixels under which a stuff segment of an image of ``size`` becomes VOID."""
        return stuff_area_limit(size, self.stuff_min_area, self.stuff_min_area_fraction)

    def fuse(self, raw: RawEmbedding) -> PanopticResult:
        """The merge (Eq. 16) of one `RawEmbedding`; ``extra`` holds ``network_seconds`` and ``merge_seconds``."""
        start = time.perf_counter()
        inst, queries = raw.instances, raw.instances.extra[QUERY_FIELD]
        labels = self.instance_labels(inst.labels, queries)
        result = embedding_fusion(raw.embeddings, self.stuff_queries(), queries, inst.boxes, labels, inst.scores,
                                  self.stuff_categories, self.thing_categories,
                                  stuff_min_area=self.stuff_area_limit(tuple(raw.embeddings.shape[-2:])),
                                  box_filter=self.box_filter)
        result.instances = inst.replace(labels=labels)  # the segments' classes, also with instance_category: embedding
        # segments_of read the areas back to the host, so the merge has finished on any device
        result.extra.update(network_seconds=raw.network_seconds, merge_seconds=time.perf_counter() - start)
        return result

    def export_graph(self, size: tuple[int, int]) -> nn.Module:
        """The whole system for one (3, *size) image as one traceable module (`CIAEGraph`), what
        ``panoptix export`` writes to ONNX."""
        from panoptix.models.systems.ciae_graph import CIAEGraph  # it builds on this module

        return CIAEGraph(self, size)


__all__ = ["CIAEPanoptic", "RawEmbedding", "ciae_targets", "instance_index", "image_embeddings", "read_queries",
           "QUERY_FIELD"]
