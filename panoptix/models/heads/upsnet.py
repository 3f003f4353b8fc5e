"""Training side of UPSNet's parameter-free panoptic head (Xiong et al. 2019; used by
the COCO 2019 entry and AntVisionPS).

The head has no weights: its loss trains the semantic and mask heads to produce logits that the
panoptic merge (`panoptix.fusion.upsnet`) can compare pixel by pixel. Following UPSNet's code:

- the instances are the ground-truth boxes and classes (crowd excluded) with the mask head's logits
  on those boxes; a random ``max(int(n * (1 - drop_fraction)), 1)`` of them are kept (UPSNet's
  ``panoptic_box_keep_fraction`` 0.7), so that the pixels of dropped instances teach the unknown
  channel;
- panoptic logits and labels live on the semantic head's 1/4 grid (UPSNet's ``seg_gt_4x``): stuff
  pixels -> their stuff channel, pixels of kept instance i -> channel S + i (matched by
  construction), pixels of dropped instances -> the unknown channel, crowd, VOID and padding ignored;
- pixelwise cross-entropy, weighted by ``loss_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from panoptix.data.meta import IGNORE_INDEX
from panoptix.fusion.upsnet import panoptic_logits
from panoptix.registry import UPSNET_HEADS, Configurable


def panoptic_target(semantic: torch.Tensor, index: torch.Tensor, num_instances: int, keep: torch.Tensor,
                    stuff_lut: torch.Tensor) -> torch.Tensor:
    """The UPSNet label map of one image (at the resolution of its inputs).

    Args:
        semantic: (H, W) int64 semantic target over all classes (IGNORE_INDEX = VOID/padding).
        index: (H, W) int64 index of the non-crowd ground-truth instance at each pixel, -1 for none
            (`panoptix.data.targets.instance_index_map`).
        num_instances: N, the number of those instances.
        keep: (N_k,) indices of the kept instances, in channel order.
        stuff_lut: (K,) int64: semantic class -> stuff channel (0..S-1), IGNORE_INDEX for things
            (so crowd pixels, thing pixels of no listed instance, are ignored).

    Returns:
        (H, W) int64: stuff channel, S + i for kept instance i, S + N_k (unknown) for dropped
        instances, IGNORE_INDEX elsewhere.
    """
    n_stuff = int((stuff_lut != IGNORE_INDEX).sum())
    valid = semantic != IGNORE_INDEX
    label = torch.where(valid, stuff_lut[semantic.clamp(0, len(stuff_lut) - 1)], IGNORE_INDEX)
    if num_instances:
        channel = torch.full((num_instances,), n_stuff + len(keep), dtype=torch.int64, device=semantic.device)
        channel[keep] = n_stuff + torch.arange(len(keep), device=semantic.device)
        label = torch.where(index >= 0, channel[index.clamp(min=0)], label)
    return label


@UPSNET_HEADS.register("upsnet")
class UPSNetPanopticHead(Configurable, nn.Module):
    """Loss of the parameter-free UPSNet panoptic head.

    Args:
        loss_weight: weight of the panoptic cross-entropy in the total.
        drop_fraction: share of ground-truth instances left out of each image's panoptic logits
            (UPSNet keeps 0.7 of them, at least one).
    """

    def __init__(self, loss_weight: float = 1.0, drop_fraction: float = 0.3) -> None:
        super().__init__()
        if not 0.0 <= drop_fraction < 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
        self.loss_weight, self.drop_fraction = loss_weight, drop_fraction

    def keep_indices(self, n: int, device: torch.device) -> torch.Tensor:
        """A random ``max(int(n * keep), 1)`` of ``n`` instances (none when n == 0), sorted."""
        if n == 0:
            return torch.zeros(0, dtype=torch.int64, device=device)
        k = max(int(n * (1.0 - self.drop_fraction)), 1)
        return torch.randperm(n)[:k].sort().values.to(device)

    def loss(self, semantic_logits: torch.Tensor, stuff_channels: torch.Tensor, thing_channels: torch.Tensor,
             boxes: list[torch.Tensor], labels: list[torch.Tensor], mask_logits: list[torch.Tensor],
             targets: list[torch.Tensor], keeps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Panoptic cross-entropy of a batch on the 1/4 grid.

        Args:
            semantic_logits: (B, K, h, w) semantic head output.
            stuff_channels, thing_channels: from `panoptix.fusion.upsnet.split_channels`.
            boxes: per image (N_i, 4) ground-truth boxes in 1/4-grid pixels.
            labels: per image (N_i,) contiguous thing indices.
            mask_logits: per image (N_i, h, w) mask logits pasted into the boxes on the grid.
            targets: per image (h, w) `panoptic_target` built with ``keeps``.
            keeps: per image the kept instance indices (`keep_indices`).
        """
        total = semantic_logits.new_zeros((), dtype=torch.float32)
        count = 0
        for sem, b, lab, m, target, keep in zip(semantic_logits, boxes, labels, mask_logits, targets, keeps):
            pan = panoptic_logits(sem.float(), stuff_channels, thing_channels, b[keep], lab[keep], m[keep])
            total = total + F.cross_entropy(pan[None], target[None], ignore_index=IGNORE_INDEX, reduction="sum")
            count += int((target != IGNORE_INDEX).sum())
        return {"loss_panoptic": self.loss_weight * total / max(count, 1)}


__all__ = ["UPSNetPanopticHead", "panoptic_target"]
