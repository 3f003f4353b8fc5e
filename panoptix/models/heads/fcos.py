"""FCOS detector head (Tian et al. 2019) as CIAE's proposal head (CIAE, Gao et al. 2021, section IV-A).

Two towers of four conv3x3-GN-ReLU layers shared across P3-P7; the classification tower predicts
the box classes, the regression tower the box distances (l, t, r, b), the centre-ness and the
*box embeddings* (``embed_dim`` channels, not supervised: the embedding branch consumes them).

Departure from FCOS, as the seed says: a location is a positive only when it falls inside a
ground-truth *mask* (FCOS: inside the box), within its level's size range. Panoptic masks do not
overlap, so a location has at most one candidate and FCOS's smallest-area rule is not needed.
Losses: sigmoid focal loss (classes, normalised by the positives), IoU loss ``-ln IoU`` (UnitBox,
the seed's [49]) and centre-ness BCE, both averaged over the positives. Inference follows
torchvision's FCOS: score = sqrt(class prob x centre-ness), the top candidates of each level,
class-wise NMS, and every detection keeps the location it came from (CIAE reads its query
embedding there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms, sigmoid_focal_loss

from panoptix.data.targets import instance_index_map
from panoptix.models.layers import group_norm
from panoptix.registry import DENSE_DETECTORS, Configurable
from panoptix.structures import Instances

INF = 1e8
LOCATION_FIELD = "locations"


def level_locations(size: tuple[int, int], stride: int, device: torch.device) -> torch.Tensor:
    """(h*w, 2) float (x, y) image coordinates of a level's locations: ``stride // 2 + k * stride``."""
    h, w = size
    ys = torch.arange(h, device=device, dtype=torch.float32) * stride + stride // 2
    xs = torch.arange(w, device=device, dtype=torch.float32) * stride + stride // 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """UnitBox's ``-ln IoU`` of (P, 4) (l, t, r, b) distances from the same locations; (P,) losses."""
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    w = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 2], target[:, 2])
    h = torch.minimum(pred[:, 1], target[:, 1]) + torch.minimum(pred[:, 3], target[:, 3])
    inter = w.clamp(min=0) * h.clamp(min=0)
    iou = inter / (pred_area + target_area - inter).clamp(min=eps)
    return -torch.log(iou.clamp(min=eps))


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """FCOS centre-ness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of (P, 4) distances; (P,)."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(1).values / lr.max(1).values.clamp(min=1e-6)) * \
        (tb.min(1).values / tb.max(1).values.clamp(min=1e-6))
    return ratio.clamp(min=0).sqrt()


class Scale(nn.Module):
    """A learnable scalar (FCOS's per-level regression scale)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _tower(in_channels: int, num_convs: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1), group_norm(in_channels, groups),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


@DENSE_DETECTORS.register("fcos")
class FCOSHead(Configurable, nn.Module):
    """FCOS on ``levels`` with CIAE's mask-based positives and box embeddings.

    Args:
        in_channels, num_things: FPN width and number of thing classes (from the system).
        levels, strides: pyramid levels and their strides (P3-P7: 8..128).
        size_bounds: FCOS's regression ranges between levels: a positive on level i has its largest
            distance in (bounds[i-1], bounds[i]] (64, 128, 256, 512 in the paper).
        num_convs: conv layers per tower (4).
        norm_groups: GroupNorm groups in the towers (32, FCOS's: 8 channels a group at width 256).
        embed_dim: box-embedding channels (32, the seed's embedding dimension); 0 for none.
        prior_prob: initial class probability (0.01, RetinaNet's initialisation).
        focal_alpha, focal_gamma: focal loss (0.25, 2).
        score_thresh: minimum sqrt(class prob x centre-ness) of a detection (torchvision's 0.2).
        topk_candidates: candidates kept per level before NMS (1000).
        nms_thresh: NMS IoU (0.6).
        class_agnostic_nms: NMS across classes (FCOS's is class-wise). For a panoptic merge a
            cross-class duplicate is pure harm: each pixel can belong to one object only, and two
            queries on one object split its pixels.
        detections_per_img: detections kept after NMS (100).

    ``forward(feats)`` -> dict of per-level lists: ``cls`` (B, K, h, w), ``reg`` (B, 4, h, w) distances
    in pixels, ``ctr`` (B, 1, h, w) logits, ``emb`` (B, embed_dim, h, w).
    """

    derived = ("in_channels", "num_things")

    def __init__(self, in_channels: int, num_things: int, levels: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
                 strides: Sequence[int] = (8, 16, 32, 64, 128), size_bounds: Sequence[float] = (64, 128, 256, 512),
                 num_convs: int = 4, norm_groups: int = 32, embed_dim: int = 32, prior_prob: float = 0.01,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, score_thresh: float = 0.2,
                 topk_candidates: int = 1000,
                 nms_thresh: float = 0.6, class_agnostic_nms: bool = False,
                 detections_per_img: int = 100) -> None:
        super().__init__()
        if len(levels) != len(strides) or len(size_bounds) != len(levels) - 1:
            raise ValueError(f"FCOS: {len(levels)} levels need as many strides and {len(levels) - 1} size bounds; "
                             f"got {len(strides)} strides and {len(size_bounds)} bounds")
        self.num_things, self.levels, self.strides = num_things, tuple(levels), tuple(int(s) for s in strides)
        self.size_ranges = list(zip([-1.0, *map(float, size_bounds)], [*map(float, size_bounds), INF]))
        self.embed_dim = embed_dim
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img
        self.class_agnostic_nms = class_agnostic_nms
        self.cls_tower = _tower(in_channels, num_convs, norm_groups)
        self.reg_tower = _tower(in_channels, num_convs, norm_groups)
        self.cls_logits = nn.Conv2d(in_channels, num_things, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.box_embedding = nn.Conv2d(in_channels, embed_dim, 3, padding=1) if embed_dim else None
        self.scales = nn.ModuleList(Scale() for _ in self.levels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    # ------------------------------------------------------------------ network
    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list[torch.Tensor]] = {"cls": [], "reg": [], "ctr": [], "emb": []}
        for level, stride, scale in zip(self.levels, self.strides, self.scales):
            x = feats[level]
            c, r = self.cls_tower(x), self.reg_tower(x)
            out["cls"].append(self.cls_logits(c))
            out["reg"].append(F.relu(scale(self.bbox_pred(r))) * stride)  # FCOS's normalised regression targets
            out["ctr"].append(self.centerness(r))
            if self.box_embedding is not None:
                out["emb"].append(self.box_embedding(r))
        return out

    def locations(self, outputs: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
        return [level_locations(tuple(c.shape[-2:]), s, c.device) for c, s in zip(outputs["cls"], self.strides)]

    @staticmethod
    def flatten(maps: list[torch.Tensor]) -> torch.Tensor:
        """Per-level (B, C, h, w) -> (B, sum h*w, C) in level order."""
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)

    # ------------------------------------------------------------------ training
    def match(self, locations: list[torch.Tensor], target: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Targets of one image: (L,) class (``num_things`` = background, -1 = ignored, a crowd
        region), (L, 4) distances to the matched box, (L,) matched instance (-1 none). Uses the
        target's ``instance_index`` (H, W) map when it has one."""
        h, w = target["semantic"].shape[-2:]
        pts = torch.cat(locations)
        counts = [len(p) for p in locations]
        lo = torch.cat([torch.full((n,), r[0], device=pts.device) for n, r in zip(counts, self.size_ranges)])
        hi = torch.cat([torch.full((n,), r[1], device=pts.device) for n, r in zip(counts, self.size_ranges)])
        xi, yi = pts[:, 0].long(), pts[:, 1].long()
        inside = (xi < w) & (yi < h)
        xi, yi = xi.clamp(max=w - 1), yi.clamp(max=h - 1)
        index_map = target.get("instance_index")
        if index_map is None:
            index_map = instance_index_map(target["masks"], (h, w))
        index = index_map[yi, xi]
        index = torch.where(inside, index, torch.full_like(index, -1))
        boxes = target["boxes"]
        cls = torch.full((len(pts),), self.num_things, dtype=torch.int64, device=pts.device)
        ltrb = torch.zeros((len(pts), 4), device=pts.device)
        if len(boxes):
            b = boxes[index.clamp(min=0)]
            ltrb = torch.stack([pts[:, 0] - b[:, 0], pts[:, 1] - b[:, 1], b[:, 2] - pts[:, 0], b[:, 3] - pts[:, 1]], 1)
            reach = ltrb.max(1).values
            index = torch.where((index >= 0) & (reach > lo) & (reach <= hi), index, torch.full_like(index, -1))
            cls = torch.where(index >= 0, target["labels"][index.clamp(min=0)], cls)
        crowd = target.get("crowd_masks")
        if crowd is not None and len(crowd):
            in_crowd = (crowd.amax(0)[yi, xi] > 0) & inside & (index < 0)
            cls = torch.where(in_crowd, torch.full_like(cls, -1), cls)
        return cls, ltrb, index

    def losses(self, outputs: dict[str, list[torch.Tensor]], targets: list[dict[str, torch.Tensor]]
               ) -> dict[str, torch.Tensor]:
        """``loss_fcos_cls`` (focal), ``loss_fcos_box`` (IoU) and ``loss_fcos_ctr`` (BCE).

        Every term is computed on all locations and masked, so the step needs no host sync."""
        locations = self.locations(outputs)
        matched = [self.match(locations, t) for t in targets]
        cls_t = torch.stack([m[0] for m in matched])                       # (B, L)
        ltrb_t = torch.stack([m[1] for m in matched])                      # (B, L, 4)
        cls_p = self.flatten(outputs["cls"]).float()
        reg_p = self.flatten(outputs["reg"]).float()
        ctr_p = self.flatten(outputs["ctr"]).float()[..., 0]
        valid = cls_t >= 0
        pos = (valid & (cls_t < self.num_things)).float()
        num_pos = pos.sum().clamp(min=1.0)
        onehot = F.one_hot(cls_t.clamp(min=0), self.num_things + 1)[..., :self.num_things].to(cls_p.dtype)
        focal = sigmoid_focal_loss(cls_p, onehot, self.focal_alpha, self.focal_gamma, reduction="none")
        loss_cls = (focal.sum(-1) * valid).sum() / num_pos
        ltrb_t = ltrb_t * pos[..., None]  # negatives get zero targets: finite (-ln 1e-6) terms, weighted 0
        loss_box = (iou_loss(reg_p.flatten(0, 1), ltrb_t.flatten(0, 1)) * pos.flatten()).sum() / num_pos
        bce = F.binary_cross_entropy_with_logits(ctr_p, centerness_target(ltrb_t.flatten(0, 1)).view_as(ctr_p),
                                                 reduction="none")
        loss_ctr = (bce * pos).sum() / num_pos
        return {"loss_fcos_cls": loss_cls, "loss_fcos_box": loss_box, "loss_fcos_ctr": loss_ctr}

    # ------------------------------------------------------------------ inference
    def detect(self, outputs: dict[str, list[torch.Tensor]], image_sizes: Sequence[tuple[int, int]]
               ) -> list[Instances]:
        """Detections of each image (resized-image coordinates) with ``extra["locations"]`` (N, 2)
        (x, y) of the location each came from; no masks."""
        locations = self.locations(outputs)
        results = []
        for i, (h, w) in enumerate(image_sizes):
            boxes_all, scores_all, labels_all, where_all = [], [], [], []
            for cls, reg, ctr, pts in zip(outputs["cls"], outputs["reg"], outputs["ctr"], locations):
                prob = torch.sqrt(cls[i].float().sigmoid() * ctr[i].float().sigmoid()).flatten(1).T.reshape(-1)
                k = min(self.topk_candidates, prob.numel())
                scores, idx = prob.topk(k)
                loc, label = idx // self.num_things, idx % self.num_things
                d = reg[i].float().flatten(1).T[loc]
                p = pts[loc]
                box = torch.stack([p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], 1)
                box = torch.stack([box[:, 0].clamp(0, w), box[:, 1].clamp(0, h), box[:, 2].clamp(0, w),
                                   box[:, 3].clamp(0, h)], 1)
                boxes_all.append(box)
                scores_all.append(scores)
                labels_all.append(label)
                where_all.append(p)
            boxes, scores = torch.cat(boxes_all), torch.cat(scores_all)
            labels, where = torch.cat(labels_all), torch.cat(where_all)
            keep = scores >= self.score_thresh
            boxes, scores, labels, where = boxes[keep], scores[keep], labels[keep], where[keep]
            # torchvision's batched_nms trick without its size test (a data-dependent branch that
            # torch.export cannot trace): classes are moved apart by more than the image size.
            groups = torch.zeros_like(labels) if self.class_agnostic_nms else labels
            shifted = boxes + (groups.to(boxes.dtype) * float(max(h, w) + 1))[:, None]
            keep = nms(shifted, scores, self.nms_thresh)[:self.detections_per_img]
            results.append(Instances(boxes[keep], scores[keep], labels[keep], None, image_size=(h, w),
                                     extra={LOCATION_FIELD: where[keep]}))
        return results


__all__ = ["FCOSHead", "iou_loss", "centerness_target", "level_locations", "LOCATION_FIELD"]
