"""OANet's Spatial Ranking Module (OANet, Liu et al. 2019, section 3.2, Eqs. 2-3, Tables 3 and 5).

The binary masks of an image's instances are scattered into a (T, h, w) tensor, one channel per
thing class, at 1/4 of the padded input (the semantic head's grid); a large-kernel convolution
turns it into a ranking score map, a softmax over the thing classes per pixel. An instance's
ranking score is the mean score of its class inside its mask (Eq. 3), and the ``ranking`` merge
pastes instances in that order.

Training (Eq. 2): pixelwise cross-entropy against the non-overlapping panoptic labels, only where
two or more instance masks overlap ("we set the non-conflicting pixels ignored", section 4.2), and
only where the label is a thing class.

Which instances during training: the seed feeds ground truth in training ("since we do not have
the ground truth now, the outputs of instance branch will be passed", section 4.2) but its COCO
instance masks overlap; panoptic annotations never do, so scattering them gives no conflicting
pixel and no loss. We feed the mask head's own predictions on the ground-truth boxes (with the
ground-truth classes), binarised and detached: they overlap where detected masks overlap at test
time, and the matching to the panoptic labels stays exact. (UPSNet likewise runs its mask head on
ground-truth boxes for its panoptic head.)

Kernel (Table 5): ``"1x7+7x1"`` is the large-kernel block of Peng et al. 2017 that the seed cites
([34]): a 1xk then kx1 branch plus a kx1 then 1xk branch, summed, no nonlinearity; ``"1x1"`` and
``"3x3"`` are single convolutions.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.data.meta import IGNORE_INDEX
from panoptix.registry import RANKING_HEADS, Configurable


def scatter_masks(masks: torch.Tensor, labels: torch.Tensor, num_things: int) -> torch.Tensor:
    """(N, h, w) bool masks of classes ``labels`` (N,) -> (T, h, w) float, 1 where any instance of
    the class covers the pixel."""
    onehot = F.one_hot(labels, num_things).to(torch.float32)  # (N, T)
    return (torch.einsum("nt,nhw->thw", onehot, masks.float()) > 0).float()


def thing_label_map(index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(H, W) instance index per pixel (-1 = none, `panoptix.data.targets.instance_index_map`) and
    the (N,) classes -> (H, W) int64 class per pixel, IGNORE_INDEX where no instance is."""
    if len(labels) == 0:
        return torch.full_like(index, IGNORE_INDEX)
    return torch.where(index >= 0, labels[index.clamp(min=0)], IGNORE_INDEX)


def conflict_labels(masks: torch.Tensor, thing_labels: torch.Tensor) -> torch.Tensor:
    """The SRM target: ``thing_labels`` (h, w) where two or more of the (N, h, w) masks overlap,
    IGNORE_INDEX elsewhere."""
    conflict = masks.sum(0) >= 2
    return torch.where(conflict, thing_labels, torch.full_like(thing_labels, IGNORE_INDEX))


@RANKING_HEADS.register("spatial_ranking")
class SpatialRankingHead(Configurable, nn.Module):
    """The Spatial Ranking Module.

    Args:
        num_things: thing classes (in and out channels).
        kernel: ``"1x7+7x1"`` (the seed's choice, Table 5), ``"3x3"`` or ``"1x1"``.
        kernel_size: k of the large kernel (7 in the seed).
        loss_weight: weight of L_srm in the total (the seed gives none: 1).
        mask_thresh: the binarisation of instance mask probabilities.

    Forward: (B, T, h, w) scattered masks -> (B, T, h, w) ranking logits (softmax over T gives S).
    """

    derived = ("num_things",)

    def __init__(self, num_things: int, kernel: Literal["1x7+7x1", "3x3", "1x1"] = "1x7+7x1",
                 kernel_size: int = 7, loss_weight: float = 1.0, mask_thresh: float = 0.5) -> None:
        super().__init__()
        t, k = num_things, kernel_size
        if kernel == "1x7+7x1":
            row = dict(kernel_size=(1, k), padding=(0, k // 2))
            col = dict(kernel_size=(k, 1), padding=(k // 2, 0))
            self.branches = nn.ModuleList([nn.Sequential(nn.Conv2d(t, t, **row), nn.Conv2d(t, t, **col)),
                                           nn.Sequential(nn.Conv2d(t, t, **col), nn.Conv2d(t, t, **row))])
        elif kernel in ("3x3", "1x1"):
            size = int(kernel[0])
            self.branches = nn.ModuleList([nn.Conv2d(t, t, size, padding=size // 2)])
        else:
            raise ValueError(f"kernel must be '1x7+7x1', '3x3' or '1x1', got {kernel!r}")
        self.num_things, self.loss_weight, self.mask_thresh = num_things, loss_weight, mask_thresh

    def forward(self, scattered: torch.Tensor) -> torch.Tensor:
        return sum(branch(scattered) for branch in self.branches)

    def loss(self, masks: list[torch.Tensor], labels: list[torch.Tensor], thing_labels: torch.Tensor
             ) -> dict[str, torch.Tensor]:
        """L_srm of a batch.

        Args:
            masks: per image (N_i, h, w) mask probabilities on the 1/4 grid (detached here).
            labels: per image (N_i,) contiguous thing indices.
            thing_labels: (B, h, w) int64 thing index of each pixel's panoptic segment, IGNORE_INDEX
                for stuff, crowd, VOID and padding.
        """
        binary = [m.detach() > self.mask_thresh for m in masks]
        scattered = torch.stack([scatter_masks(m, lab, self.num_things) for m, lab in zip(binary, labels)])
        target = torch.stack([conflict_labels(m, t) for m, t in zip(binary, thing_labels)])
        logits = self(scattered)
        if (target == IGNORE_INDEX).all():
            return {"loss_srm": logits.sum() * 0.0}
        return {"loss_srm": self.loss_weight * F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)}

    @torch.no_grad()
    def rank_scores(self, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 3 for one image: (N, h, w) mask probabilities on the 1/4 grid, (N,) labels -> (N,)
        mean ranking score of each instance's class inside its binary mask (inside its soft mask
        when the binary one is empty, as for objects under ~2 cells)."""
        if len(masks) == 0:
            return masks.new_zeros(0)
        binary = masks > self.mask_thresh
        scores = self(scatter_masks(binary, labels, self.num_things)[None])[0].float().softmax(0)  # (T, h, w)
        per_inst = scores[labels]  # (N, h, w)
        weight = torch.where(binary.flatten(1).any(1)[:, None, None], binary.float(), masks.float())
        return (per_inst * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1e-6)


__all__ = ["SpatialRankingHead", "scatter_masks", "conflict_labels", "thing_label_map"]
