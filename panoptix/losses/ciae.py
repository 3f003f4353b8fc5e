"""CIAE loss and memory embeddings (CIAE, Gao et al. 2021, section III, Eqs. 1-14).

Per pixel i with L2-normalised embedding p_i and a set of query embeddings M (one row per
category, or per segment), d = 1 - p_i . m (Eq. 2). With d_pos the distance to the pixel's own
query and d_neg^k the distance to query k, *0 for its own query* (Eq. 6):

    l'^{ik} = max(d_pos - d_neg^k + margin, 0)                              (Eq. 7)
    l^{ik}  = -log(1 - l'^{ik} / (2 + margin))                              (Eq. 8)
    L_emb   = 1/N sum_i sum_{k in top-K of l^{i.}} w_i l^{ik}                (Eq. 9)

Because d_neg is 0 for the pixel's own query, its term is max(d_pos + margin, 0): the pull towards
the positive rides in the same sum as the pushes away from the negatives.

Reading of Eq. 9 (ambiguous: "only the pixels with top-K highest losses are selected", K = 5):
tau_K is taken *per pixel* over its |M| terms, so each pixel sums its K largest terms (all of them
when |M| <= K) and the sum is divided by the number of labelled pixels N. A global top-5 of pixels
would train on 5 pixels of a batch; a per-pixel top-K is the hard-negative mining the paper
describes and keeps L_emb on the scale of one pixel's loss.

L_CAE uses the category memory M_{t-1} as queries (Eq. 14: "both M_c and the stuff query
embeddings in M_s are replaced with M_{t-1}"); L_IAE uses the stuff rows of the memory plus each
image's instance means (Eq. 4, from the embedding map before the L2 norm, gradients flowing), with
the similarity to an instance set to 0 for pixels outside its ground-truth box enlarged by
``filter_box_scale`` (section IV-B). Thing pixels weigh ``thing_weight`` (5) in L_IAE and
L = L_CAE + alpha L_IAE (alpha = 2, Eq. 12). After the loss, the memory rows of the categories
present in the batch move towards their batch means M_c (Eq. 3) with momentum
lambda_t = 1 - 1e-4 (1 - t/T)^3 (Eq. 13) and are re-normalised (Eq. 14); under DDP the sums are
all-reduced first so every rank holds the same memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from panoptix.data.meta import IGNORE_INDEX
from panoptix.registry import Configurable


def triplet_embedding_loss(p: torch.Tensor, queries: torch.Tensor, target: torch.Tensor, margin: float = 0.15,
                           top_k: int = 5, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel sum of the K largest l^{ik} (Eqs. 5-9, before the 1/N).

    Args:
        p: (N, E) L2-normalised pixel embeddings.
        queries: (Q, E) L2-normalised query embeddings.
        target: (N,) int64 index of each pixel's own query.
        margin: the triplet margin (0.15).
        top_k: terms kept per pixel (5).
        keep: optional (N, Q) bool; False sets the similarity to 0 (the box filter).

    Returns:
        (N,) float losses.
    """
    sim = p.float() @ queries.float().T
    if keep is not None:
        sim = torch.where(keep, sim, torch.zeros_like(sim))
    d = 1.0 - sim
    d_pos = d.gather(1, target[:, None])
    d_neg = d.scatter(1, target[:, None], 0.0)                               # Eq. 6
    hinge = F.relu(d_pos - d_neg + margin)                                    # Eq. 7
    terms = -torch.log((1.0 - hinge / (2.0 + margin)).clamp(min=1e-6))       # Eq. 8
    return terms.topk(min(top_k, terms.shape[1]), dim=1).values.sum(1)        # Eq. 9, per pixel


def segment_means(raw: torch.Tensor, index: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of (N, E) raw embeddings per index in 0..count-1 ((count, E)) and pixels per index ((count,))."""
    sums = raw.new_zeros((count, raw.shape[1])).index_add_(0, index, raw)
    pixels = torch.bincount(index, minlength=count)[:count]
    return sums, pixels


def expand_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, 4) xyxy boxes scaled by ``scale`` about their centres."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * scale / 2
    return torch.cat([centre - half, centre + half], dim=1)


def inside_boxes(xy: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, Q) bool: pixel centre (x + 0.5, y + 0.5) of each of (N, 2) integer xy inside each (Q, 4) box."""
    x, y = xy[:, 0:1].float() + 0.5, xy[:, 1:2].float() + 0.5
    return (x >= boxes[None, :, 0]) & (x <= boxes[None, :, 2]) & (y >= boxes[None, :, 1]) & (y <= boxes[None, :, 3])


def memory_momentum(step: int | torch.Tensor, total: int, base: float = 1e-4) -> float | torch.Tensor:
    """lambda_t = 1 - base (1 - t/T)^3 (Eq. 13); t is clamped to T. A tensor step gives a tensor
    (the training step reads it without a host sync)."""
    total = max(total, 1)
    t = step.clamp(0, total) if isinstance(step, torch.Tensor) else min(max(step, 0), total)
    return 1.0 - base * (1.0 - t / total) ** 3


class CIAELoss(Configurable, nn.Module):
    """L_CAE + alpha L_IAE with the category memory embeddings.

    Args:
        num_categories: rows of the memory: stuff classes + 1 (thing classes merged, Table IV) or
            every category (from the system).
        stuff_rows: memory row of each stuff class, in the order of the IAE stuff queries (from the system).
        embed_dim: embedding dimension (from the system).
        total_iters: T of Eq. 13 (from the system: the solver's ``max_iter``).
        margin: triplet margin (0.15, Table IX).
        top_k: K of Eq. 9 (5).
        iae_weight: alpha of Eq. 12 (2).
        thing_weight: weight of thing pixels in L_IAE (5).
        filter_box_scale: enlargement of the ground-truth boxes for the remote-instance filter (1.5,
            Table VIII); None turns the filter off ("All").
        box_stuff_weight: weight in L_IAE of stuff pixels inside a ground-truth thing box (None: 1, as
            every stuff pixel in the paper). Not in the CIAE paper: those are the pixels next to and inside
            an instance (a ring's hole) that the merge gives to it.
        momentum: a fixed lambda instead of Eq. 13's schedule (Table VII's ablation); None for Eq. 13.
        momentum_base: the 1e-4 of Eq. 13.
        loss_weight: a factor on L_CIAE in the system's total (1 in Eq. 15).

    Buffers (in checkpoints, restored exactly on resume): ``memory`` (C, E) unit rows, ``step`` (the t
    of Eq. 13, one per training forward).
    """

    derived = ("num_categories", "stuff_rows", "embed_dim", "total_iters")

    def __init__(self, num_categories: int, stuff_rows: Sequence[int], embed_dim: int, total_iters: int = 90000,
                 margin: float = 0.15, top_k: int = 5, iae_weight: float = 2.0, thing_weight: float = 5.0,
                 filter_box_scale: float | None = 1.5, box_stuff_weight: float | None = None,
                 momentum: float | None = None, momentum_base: float = 1e-4, loss_weight: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= (momentum if momentum is not None else 0.0) <= 1.0:
            raise ValueError(f"CIAE loss: momentum must be in 0..1, got {momentum}")
        self.margin, self.top_k, self.iae_weight, self.thing_weight = margin, top_k, iae_weight, thing_weight
        self.filter_box_scale, self.momentum, self.momentum_base = filter_box_scale, momentum, momentum_base
        self.total_iters, self.loss_weight, self.box_stuff_weight = int(total_iters), loss_weight, box_stuff_weight
        self.register_buffer("memory", F.normalize(torch.randn(num_categories, embed_dim), dim=1))   # M_0
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        lut = torch.full((num_categories,), -1, dtype=torch.int64)
        lut[torch.as_tensor(list(stuff_rows), dtype=torch.int64)] = torch.arange(len(stuff_rows))
        self.register_buffer("stuff_rows", torch.as_tensor(list(stuff_rows), dtype=torch.int64), persistent=False)
        self.register_buffer("stuff_slot", lut, persistent=False)

    def current_momentum(self) -> float:
        if self.momentum is not None:
            return float(self.momentum)
        return memory_momentum(int(self.step), self.total_iters, self.momentum_base)

    def forward(self, raw: torch.Tensor, category: torch.Tensor, instance: torch.Tensor,
                boxes: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]] | None = None
                ) -> dict[str, torch.Tensor]:
        """Losses of a batch; updates the memory when training.

        Args:
            raw: (B, E, H, W) embeddings before the L2 norm, at the targets' size.
            category: (B, H, W) int64 memory row of each pixel, 255 = ignored.
            instance: (B, H, W) int64 instance index of each pixel within its image, -1 = none.
            boxes: per image (N_b, 4) xyxy ground-truth boxes of its instances.
            sizes: per image (h, w) inside the padding (default: the whole map); padding is skipped.

        Returns:
            ``loss_cae`` (L_CAE) and ``loss_iae`` (alpha L_IAE), both times ``loss_weight``.
        """
        b, e = raw.shape[:2]
        sizes = sizes or [tuple(raw.shape[-2:])] * b
        memory = self.memory.clone()                                        # M_{t-1}
        n_rows, n_stuff = len(memory), len(self.stuff_rows)
        stuff_queries = memory[self.stuff_rows]
        cae = iae = raw.new_zeros((), dtype=torch.float32)
        n_cae = n_iae = torch.zeros((), dtype=torch.int64, device=raw.device)
        sums = raw.new_zeros((n_rows + 1, e), dtype=torch.float32)          # row n_rows: ignored pixels
        counts = torch.zeros(n_rows + 1, dtype=torch.int64, device=raw.device)
        # Masks, not boolean indexing: the step needs no host sync; each image is cropped to its size.
        # unbind, not raw[i]: each select's backward would zero-fill a whole (B, E, H, W) gradient.
        # contiguous: the per-pixel norm and the products then run over rows, 2-3x faster on a CPU.
        for i, (image_raw, (h, w)) in enumerate(zip(raw.unbind(0), sizes)):
            r = image_raw[:, :h, :w].float().flatten(1).T.contiguous()        # (h*w, E)
            p = F.normalize(r, dim=1)
            cat, inst = category[i, :h, :w].reshape(-1), instance[i, :h, :w].reshape(-1)
            valid = cat != IGNORE_INDEX
            rows = torch.where(valid, cat, n_rows)
            cae = cae + (triplet_embedding_loss(p, memory, rows.clamp(max=n_rows - 1), self.margin, self.top_k)
                         * valid).sum()
            n_cae = n_cae + valid.sum()
            s, n = segment_means(r.detach(), rows, n_rows + 1)
            sums, counts = sums + s, counts + n
            # IAE: stuff pixels -> their stuff row's slot; instance pixels -> S + instance; others ignored.
            n_inst = len(boxes[i])
            target = torch.where(inst >= 0, n_stuff + inst, self.stuff_slot[rows.clamp(max=n_rows - 1)])
            use = valid & (target >= 0)
            if not n_stuff + n_inst:
                continue
            inst_sums, _ = segment_means(r, torch.where(inst >= 0, inst, n_inst), n_inst + 1)
            queries = torch.cat([stuff_queries, F.normalize(inst_sums[:n_inst], dim=1)])
            keep, stuff_weight = None, 1.0
            if n_inst:
                pix = torch.arange(h * w, device=raw.device)
                xy = torch.stack([pix % w, pix // w], 1)
                if self.filter_box_scale is not None:
                    near = inside_boxes(xy, expand_boxes(boxes[i].float(), self.filter_box_scale))
                    keep = torch.cat([torch.ones((h * w, n_stuff), dtype=torch.bool, device=raw.device), near], 1)
                if self.box_stuff_weight is not None:
                    stuff_weight = torch.where(inside_boxes(xy, boxes[i].float()).any(1), self.box_stuff_weight, 1.0)
            weight = torch.where(inst >= 0, self.thing_weight, stuff_weight) * use
            iae = iae + (weight * triplet_embedding_loss(p, queries, target.clamp(min=0), self.margin, self.top_k,
                                                         keep)).sum()
            n_iae = n_iae + use.sum()
        if self.training:
            self.update_memory(sums[:n_rows], counts[:n_rows])
        scale = self.loss_weight
        return {"loss_cae": scale * cae / n_cae.clamp(min=1),
                "loss_iae": scale * self.iae_weight * iae / n_iae.clamp(min=1)}

    @torch.no_grad()
    def update_memory(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Eq. 14 for the categories present in the batch (on every rank), then t += 1."""
        if torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
            torch_dist.all_reduce(sums)
            torch_dist.all_reduce(counts)
        present = counts > 0
        lam = self.momentum if self.momentum is not None else \
            memory_momentum(self.step.double(), self.total_iters, self.momentum_base)
        batch_means = F.normalize(sums, dim=1)                               # M_c (Eq. 3)
        moved = F.normalize(lam * self.memory + (1.0 - lam) * batch_means, dim=1)
        self.memory.copy_(torch.where(present[:, None], moved, self.memory))
        self.step += 1


__all__ = ["CIAELoss", "triplet_embedding_loss", "segment_means", "expand_boxes", "inside_boxes",
           "memory_momentum"]
