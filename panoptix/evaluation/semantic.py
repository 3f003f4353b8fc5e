"""Semantic segmentation metrics from one confusion matrix: IoU per class, mIoU, pixel accuracy,
mean class accuracy and the ADE20K challenge score (pixel accuracy + mIoU) / 2 (AinnoSeg, Wu et al. 2020).

Two conventions for averaging IoU, named in every result (``miou_over``):

- ``"all"``: the mean over every class of the category list, a class absent from ground truth and
  prediction counting 0. The ADE20K benchmark's (its devkit and mit-semseg's
  ``intersectionAndUnion``: IoU = I / (U + 1e-10) per class, then the mean over all 150). The
  default of ``panoptix evaluate`` when a category list is given.
- ``"present"``: the mean over the classes that occur (union > 0); absent classes have IoU NaN
  and are left out, as mmsegmentation and detectron2 do. The default without a category list, and
  of the in-training evaluator.

On a full validation set, where every class occurs, the two agree; on a subset they differ widely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panoptix.data.meta import IGNORE_INDEX, DatasetMeta
from panoptix.data.sample import PanopticSample
from panoptix.data.targets import build_semantic_target
from panoptix.structures import PanopticResult


def confusion_matrix(pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(K, K) int64 confusion matrix, rows = ground truth, columns = prediction, by one bincount.

    Pixels whose ground truth is ``ignore_index`` are skipped; any other ground-truth or predicted
    value outside 0..K-1 is an error.
    """
    pred = torch.as_tensor(pred).reshape(-1).long()
    gt = torch.as_tensor(gt).reshape(-1).long().to(pred.device)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.numel()} pixels, ground truth {gt.numel()}")
    keep = gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    if gt.numel() and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"ground-truth labels must lie in 0..{num_classes - 1} or be {ignore_index}")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted labels must lie in 0..{num_classes - 1}")
    return torch.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


MIOU_CONVENTIONS = ("all", "present")


def miou_convention(results: dict[str, Any]) -> str:
    """The averaging of a result's mIoU in words (module docstring)."""
    k = len(results.get("per_class_iou", {}))
    if results.get("miou_over") == "all":
        return f"mean over all {k} classes, absent ones counting 0 (ADE20K benchmark)"
    present = sum(v == v for v in results.get("per_class_iou", {}).values())
    return f"mean over the {present} of {k} classes present"


def semantic_percent_row(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a scene parsing result in percent: mIoU, pixel accuracy, the ADE score."""
    return {"mIoU": 100 * results["mIoU"], "pixel_acc": 100 * results["pixel_accuracy"],
            "ADE": 100 * results["ade_score"]}


def format_semantic_table(results: dict[str, Any], per_class: bool = True) -> str:
    """Pixel accuracy, mIoU (its convention named), mean accuracy and the ADE score (percentages),
    then IoU per class."""
    lines = [f"pixel acc {100 * results['pixel_accuracy']:5.1f}   mIoU {100 * results['mIoU']:5.1f}   "
             f"mean acc {100 * results['mean_accuracy']:5.1f}   ADE score {100 * results['ade_score']:5.1f}",
             f"mIoU: {miou_convention(results)}"]
    if per_class:
        width = max((len(n) for n in results["per_class_iou"]), default=5)
        lines += [f"  {name:{width}s}  IoU {100 * v:5.1f}" for name, v in results["per_class_iou"].items()
                  if v == v]  # NaN: the class is absent from ground truth and prediction
    return "\n".join(lines)


def metrics_from_confusion(conf: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None,
                           unlabelled: torch.Tensor | np.ndarray | None = None,
                           miou_over: str = "present") -> dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy, mean accuracy and ADE score of a confusion matrix.

    ``unlabelled`` (K,): pixels of each ground-truth class that the prediction left unlabelled (a
    label PNG's 0); they count against their class and against pixel accuracy. ``miou_over``:
    ``"all"`` or ``"present"`` classes (module docstring); per-class IoU stays NaN for an absent class.
    """
    if miou_over not in MIOU_CONVENTIONS:
        raise ValueError(f"miou_over must be one of {', '.join(MIOU_CONVENTIONS)}, got {miou_over!r}")
    conf = torch.as_tensor(conf).double().cpu()
    missed = torch.zeros(conf.shape[0], dtype=torch.float64) if unlabelled is None else \
        torch.as_tensor(unlabelled).double().cpu()
    tp = conf.diag()
    gt_total, pred_total = conf.sum(1) + missed, conf.sum(0)
    union = gt_total + pred_total - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    acc = torch.where(gt_total > 0, tp / gt_total.clamp(min=1), torch.full_like(tp, math.nan))
    total = gt_total.sum()
    pixel_acc = float(tp.sum() / total) if total > 0 else math.nan
    if miou_over == "all":
        miou = float(iou.nan_to_num(0.0).mean()) if len(iou) else math.nan
    else:
        miou = float(iou.nanmean()) if (union > 0).any() else math.nan
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    return {"mIoU": miou, "pixel_accuracy": pixel_acc,
            "mean_accuracy": float(acc.nanmean()) if (gt_total > 0).any() else math.nan,
            "ade_score": (pixel_acc + miou) / 2, "miou_over": miou_over,
            "per_class_iou": {n: float(v) for n, v in zip(names, iou.tolist())}}


class SemanticEvaluator:
    """Accumulates a confusion matrix over images (on the predictions' device)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 class_names: Sequence[str] | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names
        self.conf: torch.Tensor | None = None
        self.meta: DatasetMeta | None = None

    def update(self, pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> None:
        c = confusion_matrix(pred, gt, self.num_classes, self.ignore_index)
        self.conf = c if self.conf is None else self.conf + c.to(self.conf.device)

    def all_reduce(self) -> SemanticEvaluator:
        import torch.distributed as dist

        if self.conf is None:
            self.conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.conf)
        return self

    def compute(self) -> dict[str, Any]:
        conf = self.conf if self.conf is not None else torch.zeros(self.num_classes, self.num_classes)
        return metrics_from_confusion(conf, self.class_names)

    # The panoptic evaluator's interface, so that one evaluation loop serves both kinds of system.
    @classmethod
    def for_meta(cls, meta: DatasetMeta) -> SemanticEvaluator:
        """Every category of ``meta`` a class, in contiguous order, named by its category name."""
        evaluator = cls(meta.num_classes, class_names=[meta.by_id[c].name for c in meta.category_ids])
        evaluator.meta = meta
        return evaluator

    def add(self, gt: PanopticSample, pred: PanopticResult) -> None:
        """One image: the ground truth's semantic map (every category; VOID ignored) against the
        prediction's ``extra["semantic"]`` (H, W) contiguous class map."""
        if "semantic" not in pred.extra:
            raise ValueError("a semantic evaluation needs results with extra['semantic'] (a scene parsing system)")
        if self.meta is None:
            raise ValueError("SemanticEvaluator.add needs the dataset's categories: build it with for_meta(meta)")
        target = build_semantic_target(gt, self.meta)["semantic"]
        if tuple(pred.extra["semantic"].shape) != tuple(target.shape):
            raise ValueError(f"image {gt.image_id!r}: prediction {tuple(pred.extra['semantic'].shape)} and ground "
                             f"truth {tuple(target.shape)} differ in size")
        self.update(pred.extra["semantic"].cpu(), target)

    def summary(self) -> dict[str, Any]:
        return self.compute()


def evaluate_label_folders(gt_dir: str | Path, pred_dir: str | Path, meta: DatasetMeta | None = None,
                           progress: bool = False, miou_over: str | None = None) -> dict[str, Any]:
    """Pixel accuracy, mIoU and the ADE score of a folder of predicted label PNGs against a folder of
    ground-truth label PNGs, matched by file name (pixel value = category id, 0 = unlabelled).

    Ground-truth 0 is ignored; a predicted 0 is a miss. Classes are ``meta``'s categories when given,
    else the ids 1..max seen (ADE20K's 150 classes when its labels are complete); a value outside
    them is an error naming the file. ``miou_over`` (module docstring) defaults to ``"all"`` (the
    ADE20K benchmark's) when ``meta`` is given and ``"present"`` otherwise.
    """
    from tqdm import tqdm

    from panoptix.data.errors import PanopticFormatError
    from panoptix.data.formats import read_label_png

    gt_files = sorted(Path(gt_dir).glob("*.png"))
    if not gt_files:
        raise PanopticFormatError(f"{gt_dir}: no label PNGs")
    missing = [f.name for f in gt_files if not (Path(pred_dir) / f.name).is_file()]
    if missing:
        raise PanopticFormatError(f"{pred_dir}: no prediction for {len(missing)} ground-truth file(s), e.g. "
                                  f"{', '.join(missing[:3])}")
    pairs = [(read_label_png(f), read_label_png(Path(pred_dir) / f.name), f.name)
             for f in tqdm(gt_files, desc="read labels", unit="png", disable=not progress)]
    largest = max(int(max(g.max(initial=0), p.max(initial=0))) for g, p, _ in pairs)
    if meta is not None:
        ids = list(meta.category_ids)
        names = [meta.by_id[c].name for c in ids]
    else:
        ids = list(range(1, max(largest, 1) + 1))
        names = [str(i) for i in ids]
    k = len(ids)
    lut = np.full(max(max(ids), largest) + 1, -1, dtype=np.int64)
    lut[np.asarray(ids)] = np.arange(k)
    lut[0] = k  # unlabelled: one more column of the count matrix
    conf = torch.zeros((k + 1) ** 2, dtype=torch.int64)
    for gt, pred, name in pairs:
        if gt.shape != pred.shape:
            raise PanopticFormatError(f"{name}: prediction is {pred.shape[1]}x{pred.shape[0]}, ground truth "
                                      f"{gt.shape[1]}x{gt.shape[0]} (WxH)")
        g, p = lut[gt.reshape(-1)], lut[pred.reshape(-1)]
        if (g < 0).any() or (p < 0).any():
            bad = sorted(set(gt[lut[gt] < 0].tolist()) | set(pred[lut[pred] < 0].tolist()))
            raise PanopticFormatError(f"{name}: label values {bad[:10]} are not categories")
        keep = g < k
        conf += torch.bincount(torch.from_numpy(g[keep] * (k + 1) + p[keep]), minlength=(k + 1) ** 2)
    conf = conf.view(k + 1, k + 1)
    miou_over = miou_over or ("all" if meta is not None else "present")
    results = metrics_from_confusion(conf[:k, :k], names, unlabelled=conf[:k, k], miou_over=miou_over)
    return {**results, "num_images": len(pairs), "num_classes": k}
