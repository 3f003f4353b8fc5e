"""Dense CRF refinement of a merged panoptic result (the COCO 2019 entry, S. Liu et al. 2019: "Dense-CRF ... to
fix the imperfect edge of the instance with the stuff"; Krähenbühl and Koltun 2011).

Labels are the result's segments plus VOID. Unaries are -log of the panoptic probabilities when
the merge left its logits (the ``upsnet`` merge: softmax over its channels, summed per segment;
channels the merge sent to VOID, unknown included, count for VOID), otherwise of a label map
belief (``label_confidence`` on the merged label, the rest spread evenly). Pairwise terms are Potts
with a Gaussian kernel on position and a bilateral kernel on position and colour, mean-field
inference. Segment ids and categories never change: a segment only gains or loses pixels, and one
that loses all of them is dropped; areas are recounted. (Stuff area limits are not re-applied.)

Defaults are those of pydensecrf's documentation and DeepLab-style use: Gaussian sxy 3, compat 3;
bilateral sxy 80, srgb 13, compat 10; 5 iterations.

Backends:

- ``densecrf``: pydensecrf2 (the ``crf`` extra; compiles at install), the exact fully connected
  model with the permutohedral lattice (CPU, numpy).
- ``torch``: pure PyTorch mean-field with a windowed kernel, after ConvCRF (Teichmann and Cipolla
  2018): each pixel exchanges messages with the ``window`` x ``window`` pixels around it spaced
  ``dilation`` px apart (11 x 11 at 4 px: +-20 px), kernels normalised as pydensecrf normalises
  them. ConvCRF pools the image and Q instead of dilating; pooling mixes colours across the very
  edges the CRF is there to fix, and cost PQ in our ablation, so we keep full resolution. It runs
  wherever the model runs (GPU included), needs no compiler, and truncates the kernels to the
  window: the bilateral term's 80 px reach is cut to 20 px.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from panoptix.registry import REFINEMENTS
from panoptix.structures import PanopticResult, SegmentInfo


def segment_probabilities(result: PanopticResult, label_confidence: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (L,) int64 segment ids with 0 = VOID first, probabilities (L, H, W)) of a result."""
    ids = result.ids.long()
    labels = torch.cat([ids.new_zeros(1), torch.tensor([s.id for s in result.segments], dtype=torch.int64,
                                                       device=ids.device)])
    logits = result.extra.get("panoptic_logits")
    if logits is not None:
        channel_segment = result.extra["channel_segment"].to(ids.device)
        lut = torch.zeros(int(max(labels.max(), channel_segment.max())) + 1, dtype=torch.int64, device=ids.device)
        lut[labels] = torch.arange(len(labels), device=ids.device)
        slot = lut[channel_segment]  # label slot of each channel; channels sent to VOID give slot 0
        probs = logits.float().softmax(0)
        out = probs.new_zeros((len(labels), *probs.shape[1:]))
        return labels, out.index_add_(0, slot, probs)
    index = (ids[None] == labels[:, None, None]).float()
    other = (1.0 - label_confidence) / max(len(labels) - 1, 1)
    return labels, index * (label_confidence - other) + other


def _potts_densecrf(unary: torch.Tensor, image: torch.Tensor, iterations: int, gaussian_sxy: float,
                    gaussian_compat: float, bilateral_sxy: float, bilateral_srgb: float, bilateral_compat: float
                    ) -> torch.Tensor:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ImportError("the 'densecrf' CRF backend needs pydensecrf2: pip install 'panoptix[crf]' (it compiles "
                          "from source), or use backend: torch") from None
    n, h, w = unary.shape
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(n, -1).cpu().numpy(), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    rgb = np.ascontiguousarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb, compat=bilateral_compat)
    q = np.asarray(crf.inference(iterations), dtype=np.float32).reshape(n, h, w)
    return torch.from_numpy(q).to(unary.device)


def _offset_kernel(features: torch.Tensor, offsets: list[tuple[int, int]], pad: int) -> torch.Tensor:
    """(F, H, W) scaled features -> (O, H, W) Gaussian affinity of each pixel to its neighbour at
    each offset (0 outside the image), symmetrically normalised as pydensecrf's default
    ``NORMALIZE_SYMMETRIC``: k_ij / sqrt(d_i d_j), d_i = sum_j k_ij, the pixel itself included
    (the permutohedral filter includes it)."""
    _, h, w = features.shape
    padded = F.pad(features[None], (pad, pad, pad, pad))[0]
    valid = F.pad(features.new_ones((1, 1, h, w)), (pad, pad, pad, pad))[0, 0]
    kernel = torch.stack([torch.exp(-0.5 * ((padded[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w] - features) ** 2)
                                    .sum(0)) * valid[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
                          for dy, dx in offsets])
    scale = kernel.sum(0).rsqrt()
    scale_padded = F.pad(scale[None, None], (pad, pad, pad, pad))[0, 0]
    return kernel * scale * torch.stack([scale_padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
                                         for dy, dx in offsets])


def _potts_torch(unary: torch.Tensor, image: torch.Tensor, iterations: int, gaussian_sxy: float,
                 gaussian_compat: float, bilateral_sxy: float, bilateral_srgb: float, bilateral_compat: float,
                 window: int, dilation: int) -> torch.Tensor:
    n, h, w = unary.shape
    unary, image = unary.float(), image.float()
    r = window // 2
    offsets = [(dy * dilation, dx * dilation) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    pad = r * dilation
    ys = torch.arange(h, device=unary.device, dtype=torch.float32)
    xs = torch.arange(w, device=unary.device, dtype=torch.float32)
    pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))
    kernel = (gaussian_compat * _offset_kernel(pos / gaussian_sxy, offsets, pad)
              + bilateral_compat * _offset_kernel(torch.cat([pos / bilateral_sxy, image * 255.0 / bilateral_srgb]),
                                                  offsets, pad))
    q = (-unary).softmax(0)
    for _ in range(iterations):
        padded = F.pad(q[None], (pad, pad, pad, pad))[0]
        message = torch.zeros_like(q)
        for k, (dy, dx) in zip(kernel, offsets):
            message += k * padded[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w]
        q = (-unary + message).softmax(0)
    return q


@REFINEMENTS.register("crf")
def crf_refine(result: PanopticResult, image: torch.Tensor, backend: Literal["torch", "densecrf"] = "torch",
               iterations: int = 5, gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
               bilateral_sxy: float = 80.0, bilateral_srgb: float = 13.0, bilateral_compat: float = 10.0,
               label_confidence: float = 0.7, window: int = 11, dilation: int = 4) -> PanopticResult:
    """Dense CRF refinement of one merged result (module docstring).

    Args:
        result: a merged `PanopticResult` (ids (H, W)).
        image: (3, H, W) float RGB in 0..1 (uint8 is accepted too).
        backend: ``"torch"`` (ConvCRF, any device) or ``"densecrf"`` (pydensecrf2, exact, CPU).
        iterations: mean-field steps.
        gaussian_*, bilateral_*: kernel widths (pixels, 0..255 colour units) and Potts weights.
        label_confidence: belief in the merged label when the result carries no panoptic logits.
        window, dilation: the ``torch`` backend's neighbourhood: ``window`` x ``window`` neighbours
            ``dilation`` px apart.

    Returns:
        A new `PanopticResult` with the same segment ids and categories; ``extra["crf_seconds"]``
        is the wall time of the refinement.
    """
    start = time.perf_counter()
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    if tuple(image.shape[-2:]) != tuple(result.ids.shape):
        raise ValueError(f"image {tuple(image.shape)} does not match the result's {tuple(result.ids.shape)} map")
    labels, probs = segment_probabilities(result, label_confidence)
    unary = -torch.log(probs.clamp(min=1e-8))
    args = (iterations, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat)
    if backend == "torch":
        q = _potts_torch(unary, image.to(unary.device), *args, window=window, dilation=dilation)
    elif backend == "densecrf":
        q = _potts_densecrf(unary, image, *args)
    else:
        raise ValueError(f"CRF backend must be 'torch' or 'densecrf', got {backend!r}")
    slot = q.argmax(0)
    ids = labels[slot].to(torch.int32)
    areas = torch.bincount(slot.flatten(), minlength=len(labels))[1:].tolist()
    segments = [SegmentInfo(s.id, s.category_id, s.isthing, s.score, int(a))
                for s, a in zip(result.segments, areas) if a > 0]
    if ids.is_cuda:
        torch.cuda.synchronize(ids.device)
    extra = {k: v for k, v in result.extra.items() if k not in ("panoptic_logits", "channel_segment")}
    extra["crf_seconds"] = time.perf_counter() - start
    return PanopticResult(ids=ids, segments=segments, semantic_logits=result.semantic_logits,
                          instances=result.instances, extra=extra)


__all__ = ["crf_refine", "segment_probabilities"]
