"""The parameter-free panoptic head of UPSNet (Xiong et al. 2019), used by the COCO 2019 entry
(S. Liu et al. 2019) and AntVisionPS (Hong et al. 2019).

Panoptic logits of one image, (S + N + 1, H, W):

- channels 0..S-1: the semantic head's stuff logits;
- channel S + i, instance i: its class's thing logits of the semantic head inside its box plus its
  mask logits pasted into the box; both terms are 0 outside the box (UPSNet's ``SegTerm`` and
  ``MaskTerm``: zero padding, so an instance can reach past its box only where every other channel
  is negative);
- the last channel, "unknown": the per-pixel max over the thing-class semantic logits minus the
  max over the instances' semantic terms (UPSNet's code subtracts the max of ``seg_inst_logits``,
  the semantic term alone, not of the full instance logits; we follow the code). Where thing-like
  pixels are explained by no instance it wins, and the merge leaves them VOID. With no instance
  the max over instances is taken as 0, the value every instance term has outside its box.

The semantic head must cover all classes (``semantic_variant: all``): the thing channels, in
channel order, are the thing classes in contiguous order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from panoptix.fusion.area import stuff_area_limit
from panoptix.fusion.box_mask import box_mask
from panoptix.fusion.graph_merge import channel_segments, inverse_sigmoid, remove_duplicate_rows, upsnet_graph_merge
from panoptix.fusion.needs import declare
from panoptix.registry import FUSIONS
from panoptix.structures import Instances, PanopticResult, SegmentInfo

# Pasted probabilities are turned back into logits clamped at this magnitude (sigmoid(16) = 1 - 1e-7).
_MAX_MASK_LOGIT = 16.0


def split_channels(semantic_categories: Sequence[int], num_things: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(stuff channel indices (S,), thing channel indices (T,)) of a semantic table (-1 = thing).

    Raises ValueError when the table does not have one channel per thing class (the semantic head
    is not on all classes).
    """
    table = list(semantic_categories)
    things = [k for k, c in enumerate(table) if c < 0]
    if len(things) != num_things:
        raise ValueError(f"the UPSNet head needs the semantic head on all classes (semantic_variant: all): "
                         f"{len(things)} thing channel(s) for {num_things} thing classes")
    stuff = [k for k, c in enumerate(table) if c >= 0]
    return torch.tensor(stuff, dtype=torch.int64), torch.tensor(things, dtype=torch.int64)


def panoptic_logits(semantic_logits: torch.Tensor, stuff_channels: torch.Tensor, thing_channels: torch.Tensor,
                    boxes: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """UPSNet's panoptic logits of one image (module docstring).

    Args:
        semantic_logits: (K, H, W) semantic head logits (all classes).
        stuff_channels, thing_channels: from `split_channels`.
        boxes: (N, 4) xyxy in pixels of (H, W).
        labels: (N,) contiguous thing indices.
        mask_logits: (N, H, W) mask logits pasted into the boxes (values outside a box are ignored).

    Returns:
        (S + N + 1, H, W): stuff, instances, unknown. Differentiable in the logits.
    """
    h, w = semantic_logits.shape[-2:]
    inside = box_mask(boxes, (h, w))
    sem_term = torch.where(inside, semantic_logits[thing_channels[labels]], semantic_logits.new_zeros(()))
    mask_term = torch.where(inside, mask_logits.to(semantic_logits.dtype), semantic_logits.new_zeros(()))
    thing_max = semantic_logits[thing_channels].amax(0)
    inst_max = sem_term.amax(0) if len(boxes) else torch.zeros_like(thing_max)
    return torch.cat([semantic_logits[stuff_channels], sem_term + mask_term, (thing_max - inst_max)[None]])


def remove_duplicates(masks: torch.Tensor, labels: torch.Tensor, iou_thresh: float,
                      class_agnostic: bool = False) -> torch.Tensor:
    """Greedy mask-IoU suppression: (N, H, W) bool masks, highest score first -> (N,) bool keep.
    Instance i goes when its mask IoU with a kept, higher-ranked instance of its class (of any
    class when ``class_agnostic``) exceeds ``iou_thresh`` (`remove_duplicate_rows` over all rows)."""
    keep = torch.ones(masks.shape[0], dtype=torch.bool, device=masks.device)
    return remove_duplicate_rows(masks, labels, keep, iou_thresh, class_agnostic)


def mask_logits_of(instances: Instances) -> torch.Tensor:
    """(N, H, W) mask logits of pasted instances (probabilities are inverted, clamped at +-16)."""
    masks = instances.masks[:, 0] if instances.masks.dim() == 4 else instances.masks
    return masks.float() if instances.mask_logits else inverse_sigmoid(masks, _MAX_MASK_LOGIT)


@FUSIONS.register("upsnet")
@declare(head=("upsnet_head", "upsnet"), reads_logits=True, graph=upsnet_graph_merge)
def upsnet_fusion(instances: Instances | None, semantic_logits: torch.Tensor,
                  semantic_categories: Sequence[int], thing_categories: Sequence[int],
                  score_thresh: float = 0.5, duplicate_iou: float = 0.5, class_agnostic: bool = True,
                  stuff_min_area: int = 4096, stuff_min_area_fraction: float | None = None,
                  mask_thresh: float = 0.5) -> PanopticResult:
    """Merge one image with UPSNet's panoptic logits: argmax over stuff, instance and unknown channels.

    Instances under ``score_thresh`` are dropped, then duplicates of a class (binary-mask IoU above
    ``duplicate_iou``, masks at ``mask_thresh``) keep only the higher-scored one; with
    ``class_agnostic`` (the default) duplicates of any class go. UPSNet's code runs a
    class-agnostic NMS at 0.5 before its panoptic head: cross-class duplicates (a square detected
    again as a disc) would otherwise split one object into fragments that are all false positives
    (issue 10's ablation: PQ_th 30.6 same-class only, 36.5 class-agnostic). Each remaining
    instance's segment is where its channel wins (instances that win nowhere are dropped); stuff
    classes winning fewer pixels than the area limit (``stuff_min_area`` px, or
    ``stuff_min_area_fraction`` of the image) and the unknown channel become VOID.

    Args:
        instances: N instances at the image size with pasted ``masks`` (probabilities, or logits
            when ``instances.mask_logits``) and ``boxes``.
        semantic_logits: (K, H, W) logits of the semantic head on all classes, at the image size.
        semantic_categories: category id per channel, -1 for thing channels.
        thing_categories: category id of each contiguous thing index.

    Returns:
        `PanopticResult`; ``extra["panoptic_logits"]`` (C, H, W) and ``extra["channel_segment"]``
        (C,) int64 (segment id per channel, 0 = VOID) feed a CRF refinement.
    """
    h, w = semantic_logits.shape[-2:]
    stuff_ch, thing_ch = (c.to(semantic_logits.device) for c in split_channels(semantic_categories,
                                                                             len(thing_categories)))
    boxes, labels, scores, logits = _unique_instances(instances, semantic_logits, score_thresh, duplicate_iou,
                                                      class_agnostic, mask_thresh)
    pan = panoptic_logits(semantic_logits.float(), stuff_ch, thing_ch, boxes, labels, logits)
    winner = pan.argmax(0)
    counts = torch.bincount(winner.flatten(), minlength=pan.shape[0])
    n_stuff, n_inst = len(stuff_ch), len(boxes)
    channel_segment = channel_segments(counts, n_stuff, n_inst,
                                       stuff_area_limit((h, w), stuff_min_area, stuff_min_area_fraction))
    inst_kept, stuff_kept = channel_segment[n_stuff:n_stuff + n_inst] > 0, channel_segment[:n_stuff] > 0
    n_things = int(inst_kept.sum())
    stuff_table = torch.as_tensor(list(semantic_categories), device=semantic_logits.device)[stuff_ch]
    segments = [SegmentInfo(i + 1, int(thing_categories[int(c)]), True, float(s), int(a))
                for i, (c, s, a) in enumerate(zip(labels[inst_kept].tolist(), scores[inst_kept].tolist(),
                                                  counts[n_stuff:n_stuff + n_inst][inst_kept].tolist()))]
    stuff_areas = counts[:n_stuff][stuff_kept].tolist()
    segments += [SegmentInfo(n_things + i + 1, int(c), False, 1.0, int(a))
                 for i, (c, a) in enumerate(zip(stuff_table[stuff_kept].tolist(), stuff_areas))]
    return PanopticResult(ids=channel_segment[winner].to(torch.int32), segments=segments,
                          semantic_logits=semantic_logits, instances=instances,
                          extra={"panoptic_logits": pan, "channel_segment": channel_segment})


def _unique_instances(instances: Instances | None, semantic_logits: torch.Tensor, score_thresh: float,
                      duplicate_iou: float, class_agnostic: bool, mask_thresh: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes (N, 4), labels (N,), scores (N,), mask logits (N, H, W)) of the instances at or above
    ``score_thresh``, highest score first, duplicates removed (`remove_duplicates`)."""
    h, w = semantic_logits.shape[-2:]
    if instances is None or not len(instances):
        return (semantic_logits.new_zeros((0, 4)), torch.zeros(0, dtype=torch.int64, device=semantic_logits.device),
                semantic_logits.new_zeros(0), semantic_logits.new_zeros((0, h, w)))
    inst = instances[instances.scores >= score_thresh]
    inst = inst[inst.scores.argsort(descending=True)]
    logits = mask_logits_of(inst) if len(inst) else semantic_logits.new_zeros((0, h, w))
    if logits.shape[-2:] != (h, w):
        raise ValueError(f"instance masks are {tuple(logits.shape[-2:])}, semantic logits {(h, w)}")
    thresh = 0.0 if inst.mask_logits else float(torch.logit(torch.tensor(mask_thresh)))
    unique = remove_duplicates(logits > thresh, inst.labels, duplicate_iou, class_agnostic)
    inst = inst[unique]
    return inst.boxes, inst.labels, inst.scores, logits[unique]


__all__ = ["upsnet_fusion", "panoptic_logits", "split_channels", "box_mask", "remove_duplicates", "mask_logits_of"]
