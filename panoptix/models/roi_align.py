"""RoIAlign as matrix products: the same numbers as ``torchvision.ops.roi_align`` (to float rounding),
with a backward that is more matrix products instead of torchvision's serial scatter on the CPU.
Two forms: separable dense weights (`roi_align_matmul`) and one sparse matrix (`roi_align_sparse`).

Why it is exact: RoIAlign averages bilinear samples taken on a (grid_h x grid_w) product grid in
each output bin, and a bilinear sample is a product of a weight along y and a weight along x
(torchvision also zeroes a sample when y or x alone falls outside the map, again a product).
So for one RoI on a (C, H, W) map, ``out[c] = Wy @ F[c] @ Wx^T`` with ``Wy`` (out_h, H) and
``Wx`` (out_w, W) holding each bin's summed sample weights divided by the grid size.

The dense form's cost per RoI grows with the whole feature map (out_h x H x C x W), so it pays
only on small images (the tiny CPU recipe: 128 px, P2 is 32x32). The sparse form stores only the
(2 S)^2 taps of each output cell, so its cost grows with the RoIs alone, as the kernel's does; it
is the CPU default of the RoI heads (`SparseMultiScaleRoIAlign`, torchvision's kernel on a GPU).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def _axis_samples(start: Tensor, end: Tensor, size: int, bins: int, sampling_ratio: int,
                  aligned: bool) -> tuple[Tensor, Tensor]:
    """Per-RoI bilinear taps along one axis, torchvision's sampling rule.

    Args:
        start, end: (K,) RoI extent on this axis in feature-map pixels (already scaled).
        size: feature-map length on this axis; bins: output length.
        sampling_ratio: samples per bin; <= 0 chooses ``ceil(roi_length / bins)`` per RoI.

    Returns:
        ``(index, weight)``, both (K, bins, 2 * S) with S the most samples of any bin: the two
        pixels each sample reads (low, then high) and their weights, divided by the bin's sample
        count; samples outside the map or beyond a RoI's own count have weight 0.
    """
    offset = 0.5 if aligned else 0.0
    start, end = start - offset, end - offset
    length = end - start
    if not aligned:
        length = length.clamp(min=1.0)
    bin_len = length / bins
    if sampling_ratio > 0:
        grid = torch.full_like(bin_len, float(sampling_ratio))
        most = sampling_ratio
    else:
        grid = torch.ceil(bin_len).clamp(min=1.0)
        most = int(grid.max().item()) if grid.numel() else 1
    k = start.shape[0]
    i = torch.arange(bins, device=start.device, dtype=start.dtype).view(1, bins, 1)
    s = torch.arange(most, device=start.device, dtype=start.dtype).view(1, 1, most)
    pos = start.view(k, 1, 1) + i * bin_len.view(k, 1, 1) + (s + 0.5) * (bin_len / grid).view(k, 1, 1)
    valid = (pos >= -1.0) & (pos <= size) & (s < grid.view(k, 1, 1))
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low.to(pos.dtype))
    scale = valid.to(pos.dtype) / grid.view(k, 1, 1)
    return torch.cat([low, high], 2), torch.cat([(1.0 - frac) * scale, frac * scale], 2)


def _axis_weights(start: Tensor, end: Tensor, size: int, bins: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """`_axis_samples` as dense (K, bins, size) weights: row ``(k, i)`` sums the bilinear weights of
    bin ``i``'s samples divided by their count."""
    index, weight = _axis_samples(start, end, size, bins, sampling_ratio, aligned)
    weights = weight.new_zeros(start.shape[0], bins, size)
    return weights.scatter_add_(2, index, weight)


def roi_align_matmul(features: Tensor, boxes: Tensor, batch_index: Tensor, output_size: tuple[int, int],
                     spatial_scale: float, sampling_ratio: int = 2, aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` computed with matrix products.

    Args:
        features: (B, C, H, W) feature map.
        boxes: (K, 4) x1, y1, x2, y2 in image pixels; batch_index: (K,) image of each box.
        output_size: (out_h, out_w); spatial_scale: feature pixels per image pixel.

    Returns:
        (K, C, out_h, out_w) pooled features in ``features``' dtype.
    """
    b, c, h, w = features.shape
    out_h, out_w = output_size
    k = boxes.shape[0]
    out = features.new_zeros(k, c, out_h, out_w)
    if k == 0:
        return out
    geom = boxes.to(torch.promote_types(features.dtype, torch.float32)) * spatial_scale
    wy = _axis_weights(geom[:, 1], geom[:, 3], h, out_h, sampling_ratio, aligned).to(features.dtype)
    wx = _axis_weights(geom[:, 0], geom[:, 2], w, out_w, sampling_ratio, aligned).to(features.dtype)
    for image in range(b):  # a handful of images per batch
        idx = torch.nonzero(batch_index == image).flatten()
        n = idx.numel()
        if n == 0:
            continue
        rows = wy[idx].reshape(n * out_h, h) @ features[image].transpose(0, 1).reshape(h, c * w)  # (n*oh, C*W)
        pooled = rows.reshape(n, out_h * c, w) @ wx[idx].transpose(1, 2)                          # (n, oh*C, ow)
        out[idx] = pooled.reshape(n, out_h, c, out_w).transpose(1, 2)
    return out


def roi_align_sparse(features: Tensor, boxes: Tensor, batch_index: Tensor, output_size: tuple[int, int],
                     spatial_scale: float, sampling_ratio: int = 2, aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` as one sparse-dense matrix product, for the CPU.

    Each output cell is a weighted sum of at most (2 S)^2 feature pixels (S samples per bin side,
    two bilinear taps each), the products of `_axis_samples`' y and x taps. Those weights form a
    sparse (K * out_h * out_w, B * H * W) CSR matrix; it multiplies the channels-last features
    (B * H * W, C). The backward is the transposed product, parallel and cache-friendly, where
    torchvision's CPU kernel scatters serially (bench/roi_align.py: 0.29x of its time forward and
    backward at COCO size). On other devices, and for the adaptive sampling ratio (<= 0, whose
    bins may hold many samples), it calls torchvision's kernel.

    Args / returns: as `roi_align_matmul`; computed in float32 at least (float64 stays float64).
    """
    if features.device.type != "cpu" or sampling_ratio <= 0:
        rois = torch.cat([batch_index.to(boxes.dtype).view(-1, 1), boxes], 1).to(features.dtype)
        return roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    b, c, h, w = features.shape
    out_h, out_w = output_size
    k = boxes.shape[0]
    if k == 0:
        return features.new_zeros(0, c, out_h, out_w)
    dtype = torch.promote_types(features.dtype, torch.float32)
    geom = boxes.to(dtype) * spatial_scale
    yi, yw = _axis_samples(geom[:, 1], geom[:, 3], h, out_h, sampling_ratio, aligned)   # (K, oh, m)
    xi, xw = _axis_samples(geom[:, 0], geom[:, 2], w, out_w, sampling_ratio, aligned)   # (K, ow, n)
    m, n = yi.shape[2], xi.shape[2]
    cols = (batch_index.long().view(k, 1, 1, 1, 1) * (h * w) + yi.view(k, out_h, 1, m, 1) * w
            + xi.view(k, 1, out_w, 1, n)).reshape(-1)
    values = (yw.view(k, out_h, 1, m, 1) * xw.view(k, 1, out_w, 1, n)).reshape(-1)
    rows = k * out_h * out_w
    crow = torch.arange(0, rows * m * n + 1, m * n, dtype=cols.dtype)
    with warnings.catch_warnings():   # "sparse CSR support is in beta": the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        taps = torch.sparse_csr_tensor(crow, cols, values, size=(rows, b * h * w))
    pixels = features.permute(0, 2, 3, 1).reshape(b * h * w, c).to(dtype)
    pooled = (taps @ pixels).view(k, out_h, out_w, c).permute(0, 3, 1, 2)
    return pooled.to(features.dtype)


def roi_align_per_image(features: Tensor, boxes: list[Tensor], output_size: tuple[int, int], spatial_scale: float,
                        sampling_ratio: int = 2, kernel: Callable[..., Tensor] | None = None) -> Tensor:
    """RoIAlign of one (B, C, H, W) map over per-image box lists ((N_i, 4) xyxy in image pixels) with
    ``kernel`` (`roi_align_matmul` or `roi_align_sparse`; None: torchvision's) -> (sum N_i, C, *output_size).
    A pooler's kernel is its ``pool_level`` (`MatmulMultiScaleRoIAlign`, `SparseMultiScaleRoIAlign`), so a
    single-map RoIAlign beside an FPN pooler computes as the pooler does."""
    boxes = [b.to(features.dtype) for b in boxes]
    if kernel is None:
        return roi_align(features, boxes, output_size, spatial_scale, sampling_ratio)
    rois = _convert_to_roi_format(boxes)  # (K, 5): image index, x1, y1, x2, y2
    return kernel(features, rois[:, 1:], rois[:, 0].long(), output_size, spatial_scale, sampling_ratio)


class MatmulMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's `MultiScaleRoIAlign` (same level mapping and scales) pooling with
    `roi_align_matmul`. Forward: (features dict, boxes per image (N_i, 4), image sizes) ->
    (sum N_i, C, out_h, out_w)."""

    pool_level = staticmethod(roi_align_matmul)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)  # (K, 5): image index, x1, y1, x2, y2
        all_boxes, batch_index = rois[:, 1:], rois[:, 0].long()
        levels = self.map_levels(boxes) if len(feats) > 1 else torch.zeros_like(batch_index)
        out = feats[0].new_zeros(all_boxes.shape[0], feats[0].shape[1], *self.output_size)
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.nonzero(levels == level).flatten()
            if idx.numel():
                out[idx] = self.pool_level(feat, all_boxes[idx], batch_index[idx], self.output_size, scale,
                                           self.sampling_ratio).to(out.dtype)
        return out


class SparseMultiScaleRoIAlign(MatmulMultiScaleRoIAlign):
    """torchvision's `MultiScaleRoIAlign` pooling with `roi_align_sparse` (its kernel off the CPU)."""

    pool_level = staticmethod(roi_align_sparse)


__all__ = ["roi_align_matmul", "roi_align_sparse", "roi_align_per_image", "MatmulMultiScaleRoIAlign",
           "SparseMultiScaleRoIAlign"]
