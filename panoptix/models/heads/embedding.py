"""CIAE's embedding branch (CIAE, Gao et al. 2021, section IV-A, Fig. 3).

P2-P5 are brought to 1/4 scale and summed as in Panoptic FPN's semantic branch (CoordConv on the
P5 tower), and a 1x1 convolution predicts P'. The box embeddings of every detector level are
upsampled to 1/4, summed, and a 1x1 convolution predicts P''. The pixel embedding map is
P = L2-norm(4x-upsampled (P' + P'')). The loss takes its means from the map *before* the L2 norm,
so the branch returns that map at 1/4 and the system upsamples and normalises it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.models.heads.semantic import aggregate_levels, fpn_towers
from panoptix.registry import EMBEDDING_HEADS, Configurable


@EMBEDDING_HEADS.register("ciae")
class EmbeddingBranch(Configurable, nn.Module):
    """P' (+ P'') at 1/4 scale.

    Args:
        in_channels: FPN width (from the system).
        box_embed_dim: channels of the detector's box embeddings (from the system; 0 when it has none).
        embed_dim: embedding dimension (32; Table X).
        channels: width of the aggregation towers (128, Panoptic FPN's).
        coord_conv: CoordConv in the P5 tower (Table VI).
        box_embedding: fuse the detector's box embeddings into P'' (Table VI).

    Forward: ``(feats {p2..p5}, box embeddings [(B, E_box, h_l, w_l)] or None)`` -> (B, embed_dim, H/4, W/4)
    raw embeddings (not normalised).
    """

    derived = ("in_channels", "box_embed_dim")

    def __init__(self, in_channels: int, box_embed_dim: int = 0, embed_dim: int = 32, channels: int = 128,
                 coord_conv: bool = True, box_embedding: bool = True) -> None:
        super().__init__()
        if box_embedding and not box_embed_dim:
            raise ValueError("embedding branch: box_embedding needs a detector with box embeddings (embed_dim > 0)")
        self.embed_dim, self.coord_conv, self.box_embedding = embed_dim, coord_conv, box_embedding
        self.towers = fpn_towers(in_channels, channels, coord_levels=("p5",) if coord_conv else ())
        self.pixel = nn.Conv2d(channels, embed_dim, kernel_size=1)
        self.box = nn.Conv2d(box_embed_dim, embed_dim, kernel_size=1) if box_embedding else None

    def forward(self, feats: Mapping[str, torch.Tensor], box_embeddings: Sequence[torch.Tensor] | None = None
                ) -> torch.Tensor:
        raw = self.pixel(aggregate_levels(self.towers, feats))
        if self.box is not None:
            if not box_embeddings:
                raise ValueError("embedding branch: box_embedding is on but the detector gave no box embeddings")
            size = raw.shape[-2:]
            fused = sum(F.interpolate(e, size=size, mode="bilinear", align_corners=False) for e in box_embeddings)
            raw = raw + self.box(fused)
        return raw


def embedding_map(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """P: (B, E, h, w) raw embeddings bilinearly resized to ``size`` and L2-normalised per pixel."""
    up = F.interpolate(raw.float(), size=size, mode="bilinear", align_corners=False)
    return F.normalize(up, dim=1)


__all__ = ["EmbeddingBranch", "embedding_map"]
