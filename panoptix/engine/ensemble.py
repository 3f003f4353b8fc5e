"""Panoptic test-time augmentation and weighted model ensembles for two-stage systems (AntVisionPS's
ensemble; spec section 9's panoptic design). One mechanism serves both: a *view* is one model on
one scale of the image, optionally flipped, and

1. **semantic**: every view's softmax is un-flipped, brought back to the original size (bilinear)
   and averaged with the view's model weight (mmseg's semantics);
2. **instances**: every view runs the box branch only; its boxes are mapped back (divided by the
   scale; a flip maps x to W - x), all views' boxes are pooled and one class-wise NMS at the first
   model's test NMS threshold keeps at most its ``detections_per_img`` (d2's
   ``GeneralizedRCNNWithTTA``); optional box voting replaces each kept box by the score-weighted
   mean of same-class pooled boxes with IoU >= 0.5 and scores it with their mean;
3. **masks**: the kept boxes are mapped into every view, each view's mask head re-predicts them,
   the 28x28 probabilities of flipped views are flipped back, and the weighted mean is pasted once;
4. the system's own merge runs **once** on the merged outputs (never per view).

The model weights scale each view's semantic and mask contributions (AntVisionPS, Hong et al. 2019: 0.4/1.2/1.1/1.3 for
four UPSNet models); box scores enter the NMS unweighted, as in d2's TTA. Scales are multiples of
each model's own test size. With one model, one scale of 1 and no flip this is the model itself,
up to the box pass being re-run for the masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import batched_nms, box_iou

from panoptix.errors import PanoptixError
from panoptix.fusion.average import average_semantic, reads_logits
from panoptix.fusion.needs import single_model
from panoptix.models.postprocess import detector_postprocess, resize_semantic_logits
from panoptix.models.preprocess import resize_image
from panoptix.structures import Instances, PanopticResult, RawPanoptic


class EnsembleError(PanoptixError, ValueError):
    """Models that cannot be combined, or a test-time augmentation that cannot be applied."""


@dataclass(frozen=True)
class TTASettings:
    """Views of each image: ``scales`` (multiples of the model's test size) x (with a flip or not)."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    box_voting: bool = False

    @classmethod
    def parse(cls, text: str, box_voting: bool = False) -> TTASettings:
        """``"scales=0.75,1,1.25 flip"`` -> TTASettings((0.75, 1.0, 1.25), True)."""
        scales, flip = (1.0,), False
        for token in text.replace(";", " ").split():
            if token == "flip":
                flip = True
            elif token.startswith("scales="):
                try:
                    scales = tuple(float(v) for v in token[len("scales="):].split(",") if v)
                except ValueError:
                    raise EnsembleError(f"--tta: cannot read scales from {token!r}; e.g. scales=0.75,1,1.25") from None
                if not scales or min(scales) <= 0:
                    raise EnsembleError(f"--tta: scales must be positive numbers, got {token!r}")
            else:
                raise EnsembleError(f"--tta: unknown item {token!r}; expected scales=A,B,... and/or flip")
        return cls(scales, flip, box_voting)


def parse_ensemble(text: str) -> list[tuple[str, float]]:
    """``"a.pth:0.4,b.pth:1.2"`` -> [("a.pth", 0.4), ("b.pth", 1.2)] (weight 1 when omitted)."""
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        path, sep, weight = item.strip().rpartition(":")
        if not sep or not _is_float(weight):
            path, weight = item.strip(), "1"
        if float(weight) <= 0:
            raise EnsembleError(f"--ensemble: weight of {path!r} must be positive, got {weight}")
        out.append((path, float(weight)))
    if not out:
        raise EnsembleError("--ensemble: name at least one checkpoint, e.g. a.pth:0.4,b.pth:1.2")
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """(N, 4) xyxy mirrored in an image of ``width``: x -> width - x."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def vote_boxes(kept: torch.Tensor, kept_labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
               labels: torch.Tensor, iou: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Box voting: each kept box becomes the score-weighted mean of the pooled boxes of its class
    with IoU >= ``iou`` (itself included), scored with their mean score. Returns (K, 4), (K,)."""
    overlap = (box_iou(kept, boxes) >= iou) & (kept_labels[:, None] == labels[None, :])
    w = overlap.to(scores.dtype) * scores[None, :]
    voted = (w @ boxes) / w.sum(1, keepdim=True).clamp(min=1e-12)
    mean_score = w.sum(1) / overlap.sum(1).clamp(min=1)
    return voted, mean_score


class PanopticEnsemble(nn.Module):
    """Weighted ensemble of two-stage systems with test-time augmentation, behind the systems'
    inference contract: ``forward(images)`` -> one `PanopticResult` per image.

    Args:
        models: two-stage systems of the same dataset (their categories and semantic variant must
            match); the first one's merge, NMS threshold and detection count are used.
        weights: one positive weight per model (default 1 each).
        tta: the views (`TTASettings`).
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 tta: TTASettings = TTASettings()) -> None:
        super().__init__()
        if not models:
            raise EnsembleError("an ensemble needs at least one model")
        weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(models) or min(weights) <= 0:
            raise EnsembleError(f"{len(models)} models need as many positive weights, got {weights}")
        first = models[0]
        for i, m in enumerate(models):
            if not hasattr(m, "instance_head") or not hasattr(m.instance_head, "detect_boxes"):
                raise EnsembleError(f"model {i} ({type(m).__name__}) is not a two-stage system with a box pass; "
                                    f"TTA and ensembles combine two-stage systems")
            if m.meta.to_json() != first.meta.to_json() or m.semantic_categories != first.semantic_categories:
                raise EnsembleError(f"model {i} was trained on other categories or another semantic variant than "
                                    f"model 0; an ensemble needs the same ones")
        if single_model(first.fusion):
            merge = getattr(getattr(first.fusion, "func", first.fusion), "__name__", "")
            raise EnsembleError(f"the {merge} merge needs one model's scores per instance (the ranking merges); an "
                                f"ensemble or TTA merges with heuristic or upsnet (override model.fusion.name)")
        self.models = nn.ModuleList(models)
        self.average_logits = reads_logits(first.fusion)
        self.weights = weights
        self.tta = tta
        self.nms_thresh = float(first.instance_head.nms_thresh)
        self.detections = int(first.instance_head.detections_per_img)

    @property
    def system(self) -> nn.Module:
        return self.models[0]

    # What a two-level fusion asks of an end (an ensemble is one of AntVisionPS's ends): the first
    # model's categories, semantic table, merge and fuse.
    @property
    def meta(self) -> Any:
        return self.system.meta

    @property
    def semantic_categories(self) -> list[int]:
        return self.system.semantic_categories

    @property
    def fusion(self) -> Any:
        return self.system.fusion

    def fuse(self, raw: RawPanoptic, fusion: Any = None, refine: Any = None) -> PanopticResult:
        return self.system.fuse(raw, fusion=fusion, refine=refine)

    # ------------------------------------------------------------------ views
    def views(self, image: torch.Tensor) -> list[dict[str, Any]]:
        """Every (model, scale, flip) view of one image with its features and box-pass outputs."""
        h, w = image.shape[-2:]
        out = []
        for model, weight in zip(self.models, self.weights):
            th, tw = model.preprocess.test_size(h, w)
            for scale in self.tta.scales:
                size = (max(1, round(th * scale)), max(1, round(tw * scale)))
                resized = resize_image(image, size)
                for flip in ((False, True) if self.tta.flip else (False,)):
                    view = resized.flip(-1) if flip else resized
                    batch = model.preprocess.batch([view])
                    feats = model.neck(model.backbone(batch.tensors))
                    sem_logits, _, extra = model.semantic_outputs(feats)
                    dets = model.instance_head.detect_boxes(batch, feats, **extra)[0]
                    out.append(dict(model=model, weight=weight, size=size, flip=flip, batch=batch, feats=feats,
                                    extra=extra, sem_logits=sem_logits[0], dets=dets))
        return out

    def semantic_map(self, views: list[dict[str, Any]], size: tuple[int, int]) -> torch.Tensor:
        """(K, H, W) the views' semantic outputs at the original size, un-flipped, averaged with their
        model weights for the merge (`panoptix.fusion.average`: log of the mean softmax, or the mean
        logits for UPSNet's merge)."""
        maps = []
        for v in views:
            stride = v["batch"].tensors.shape[-2] // v["sem_logits"].shape[-2]
            logits = resize_semantic_logits(v["sem_logits"], v["size"], size, stride)
            maps.append(logits.flip(-1) if v["flip"] else logits)
        return average_semantic(maps, [v["weight"] for v in views], logits=self.average_logits)

    def merged_boxes(self, views: list[dict[str, Any]], size: tuple[int, int]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pooled boxes of every view at the original size, class-wise NMS, optional voting."""
        h, w = size
        boxes, scores, labels = [], [], []
        for v in views:
            d, (vh, vw) = v["dets"], v["size"]
            b = flip_boxes(d.boxes, vw) if v["flip"] else d.boxes
            boxes.append(b * torch.tensor([w / vw, h / vh, w / vw, h / vh], device=b.device))
            scores.append(d.scores)
            labels.append(d.labels)
        boxes, scores, labels = torch.cat(boxes).float(), torch.cat(scores).float(), torch.cat(labels)
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections]
        kept, kept_scores, kept_labels = boxes[keep], scores[keep], labels[keep]
        if self.tta.box_voting and len(keep):
            kept, kept_scores = vote_boxes(kept, kept_labels, boxes, scores, labels)
        return kept, kept_scores, kept_labels

    def mask_probabilities(self, views: list[dict[str, Any]], boxes: torch.Tensor, labels: torch.Tensor,
                           size: tuple[int, int]) -> torch.Tensor:
        """(N, 1, 28, 28) weighted mean over views of the re-predicted mask probabilities."""
        h, w = size
        total, acc = 0.0, None
        for v in views:
            vh, vw = v["size"]
            b = boxes * torch.tensor([vw / w, vh / h, vw / w, vh / h], device=boxes.device)
            if v["flip"]:
                b = flip_boxes(b, vw)
            logits = v["model"].instance_head.mask_logits_for_boxes(v["batch"], v["feats"], [b], [labels],
                                                                    **v["extra"])[0]
            probs = logits.float().sigmoid()
            if v["flip"]:
                probs = probs.flip(-1)
            acc = probs * v["weight"] if acc is None else acc + probs * v["weight"]
            total += v["weight"]
        return (acc / total)[:, None]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_raw(self, images: list[torch.Tensor]) -> list[RawPanoptic]:
        system = self.system
        images = system.preprocess.inputs(images)
        out = []
        for image in images:
            size = tuple(image.shape[-2:])
            views = self.views(image)
            semantic = self.semantic_map(views, size)
            boxes, scores, labels = self.merged_boxes(views, size)
            if len(boxes):
                masks = self.mask_probabilities(views, boxes, labels, size)
            else:
                masks = boxes.new_zeros((0, 1, 28, 28))
            inst = Instances(boxes, scores, labels, masks, image_size=size)
            inst = detector_postprocess(inst, size, system.min_instance_score)
            out.append(RawPanoptic(inst, semantic, image))
        return out

    def forward(self, images: list[torch.Tensor]) -> list[PanopticResult]:
        if self.training:
            raise RuntimeError("PanopticEnsemble is for inference: call .eval()")
        return [self.system.fuse(raw) for raw in self.predict_raw(images)]


def tta_model(models: Sequence[nn.Module], weights: Sequence[float], settings: TTASettings,
                    crop_size: Sequence[int] | None = None) -> nn.Module:
    """The models under TTA / as a weighted ensemble, as their task wraps them (`Task.tta`: a
    `PanopticEnsemble` for panoptic systems, a `SemanticTTA` for scene parsing)."""
    from panoptix.engine.tasks import task_of

    return task_of(models[0]).tta(models, weights, settings, crop_size=crop_size)


__all__ = ["PanopticEnsemble", "TTASettings", "parse_ensemble", "vote_boxes", "flip_boxes", "EnsembleError",
           "tta_model"]

