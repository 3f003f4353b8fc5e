"""Multi-scale + flip test-time augmentation of a scene parsing system, with sliding windows for
large views (spec section 9, mmseg's semantics; AinnoSeg's seven multiples 0.5-2.0 of the base scale).

For each scale s and each flip: the image is resized to s times the system's test size, run whole,
or, when a crop size is set and the view is larger, in crop-sized windows at a stride of 2/3 of the
crop (HRNet's and mmseg's slide inference; overlapping window logits are averaged); the softmax is
un-flipped and brought back to the original size (bilinear) and the views are averaged. The argmax
of the average is the prediction. With one scale of 1, no flip and no window this is the system itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.models.preprocess import resize_image
from panoptix.structures import PanopticResult


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of ``crop`` covering ``length`` at ``stride``; the last one flush with the end."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop, stride))
    return starts + [length - crop]


class SemanticTTA(nn.Module):
    """A scene parsing system (``task == "semantic"``, with ``view_logits`` and ``result``) under TTA.

    Args:
        model: e.g. `panoptix.models.systems.semantic.SceneParser`.
        scales: multiples of the system's test size (AinnoSeg, Wu et al. 2020: 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2).
        flip: add the horizontal flip of every scale.
        crop_size: (h, w) sliding window for views larger than it; None runs every view whole.
        weights: optional weight per model when ``model`` is a sequence (a weighted ensemble).

    Forward: list of (3, H, W) images -> one `PanopticResult` per image (``extra["semantic"]`` the
    class map); `probabilities` gives the (K, H, W) averaged softmax (pseudo-labels read it).
    """

    task = "semantic"

    def __init__(self, model: nn.Module | Sequence[nn.Module], scales: Sequence[float] = (1.0,), flip: bool = False,
                 crop_size: Sequence[int] | None = None, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        for i, m in enumerate(models):
            if getattr(m, "task", None) != "semantic" or not hasattr(m, "view_logits"):
                raise ValueError(f"model {i} ({type(m).__name__}) is not a scene parsing system; semantic TTA runs "
                                 f"systems with task 'semantic' (panoptic systems: panoptix.engine.ensemble)")
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be positive multiples, got {tuple(scales)}")
        self.models = nn.ModuleList(models)
        self.weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(models) or min(self.weights) <= 0:
            raise ValueError(f"{len(models)} models need as many positive weights, got {self.weights}")
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.crop_size = None if crop_size is None else (int(crop_size[0]), int(crop_size[1]))

    @property
    def system(self) -> nn.Module:
        return self.models[0]

    def view_logits(self, model: nn.Module, view: torch.Tensor) -> torch.Tensor:
        """(3, h, w) view -> (K, h, w) logits, whole or by sliding windows."""
        h, w = view.shape[-2:]
        if self.crop_size is None or (h <= self.crop_size[0] and w <= self.crop_size[1]):
            return model.view_logits(view)
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        total = count = None
        for top in window_starts(h, ch, max(1, ch * 2 // 3)):
            for left in window_starts(w, cw, max(1, cw * 2 // 3)):
                logits = model.view_logits(view[:, top:top + ch, left:left + cw])
                if total is None:
                    total = logits.new_zeros((logits.shape[0], h, w))
                    count = logits.new_zeros((1, h, w))
                total[:, top:top + ch, left:left + cw] += logits
                count[:, top:top + ch, left:left + cw] += 1
        return total / count

    @torch.no_grad()
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) image -> (K, H, W) weighted mean softmax over models, scales and flips. In eval mode
        only: in training mode BatchNorm would normalise each view by its own statistics (and move its
        running ones), a silently different prediction."""
        if self.training:
            raise RuntimeError("SemanticTTA is for inference: call .eval()")
        h, w = image.shape[-2:]
        acc, total = None, 0.0
        for model, weight in zip(self.models, self.weights):
            th, tw = model.preprocess.test_size(h, w)
            for scale in self.scales:
                resized = resize_image(image, (max(1, round(th * scale)), max(1, round(tw * scale))))
                for flip in ((False, True) if self.flip else (False,)):
                    logits = self.view_logits(model, resized.flip(-1) if flip else resized)
                    prob = torch.softmax(logits.float(), dim=0)
                    prob = prob.flip(-1) if flip else prob
                    prob = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                    acc = weight * prob if acc is None else acc + weight * prob
                    total += weight
        return acc / total

    def forward(self, images: list[torch.Tensor]) -> list[PanopticResult]:
        images = self.system.preprocess.inputs(images)
        # the average softmax's log is a logit map with the same argmax (what `result` reads)
        return [self.system.result(self.probabilities(im).clamp_min(1e-12).log()) for im in images]


__all__ = ["SemanticTTA", "window_starts"]
