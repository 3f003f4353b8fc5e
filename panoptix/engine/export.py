"""Export a CIAE system whole to ONNX: normalisation, network, detection with NMS, and the merge up to
the segment map, in one graph.

The graph takes one (3, H, W) float RGB image in 0..1 at the size it was exported for (resize
before calling it) and returns:

    ids        (H, W) int32   segment id per pixel, 0 = VOID
    categories (Q,) int64     category id of segment q + 1 (stuff classes first, then detections)
    scores     (Q,) float32   1 for stuff, the detection score for things
    areas      (Q,) int64     pixels of segment q + 1 (0: absent, e.g. stuff under the area limit)

Q = stuff classes + detections, data-dependent (NMS keeps a variable number): ONNX carries it as a
dynamic dimension, and `segments_from_outputs` (numpy) turns the outputs into COCO
``segments_info``. ``torch.onnx.export(dynamo=True)`` (torch.export) is tried first; where it
fails (torchvision's NMS and data-dependent shapes), the TorchScript-based exporter is used, and
the result says which one wrote the file.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from panoptix.errors import PanoptixError
from panoptix.fusion.embedding import assign_segments
from panoptix.models.heads.fcos import LOCATION_FIELD
from panoptix.models.preprocess import inference_size
from panoptix.models.systems.ciae import CIAEPanoptic, image_embeddings, read_queries

OUTPUT_NAMES = ("ids", "categories", "scores", "areas")


class ExportError(PanoptixError, ValueError):
    """The model cannot be exported: a system without an exportable merge, or a size the model would resize."""

OPSET = 17


class CIAEGraph(nn.Module):
    """A `CIAEPanoptic` on one image of a fixed ``size``: (3, H, W) float 0..1 -> ``OUTPUT_NAMES``."""

    def __init__(self, model: CIAEPanoptic, size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.size = model.eval(), (int(size[0]), int(size[1]))
        pre = model.preprocess
        resized = inference_size(*self.size, pre.min_size_test, pre.max_size_test)
        if resized != self.size:
            raise ExportError(f"the model resizes a {self.size[0]}x{self.size[1]} image to {resized[0]}x{resized[1]} "
                              f"(model.preprocess.min_size_test={pre.min_size_test}); export at --size "
                              f"{resized[0]} {resized[1]} and resize images to it, or pass "
                              f"model.preprocess.min_size_test=0")
        self.register_buffer("stuff_categories", torch.as_tensor(model.stuff_categories, dtype=torch.int64))
        self.register_buffer("thing_categories", torch.as_tensor(model.thing_categories, dtype=torch.int64))
        self.stuff_min_area = model.stuff_area_limit(self.size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.model.preprocess([image])       # normalisation and padding, as in PyTorch
        out, raw, feats = self.model.network(batch.tensors)
        det = self.model.detect(out, feats, [self.size])[0]
        stride = batch.tensors.shape[-2] // raw.shape[-2]
        emb = image_embeddings(raw[0], self.size, self.size, stride)
        query = read_queries(emb, det.extra[LOCATION_FIELD], self.size)
        ids, areas = assign_segments(emb, self.model.stuff_queries(), query, det.boxes, self.stuff_min_area,
                                     self.model.box_filter)
        labels = self.model.instance_labels(det.labels, query)
        categories = torch.cat([self.stuff_categories, self.thing_categories[labels]])
        scores = torch.cat([torch.ones_like(self.stuff_categories, dtype=torch.float32), det.scores.float()])
        return ids, categories, scores, areas


def segments_from_outputs(ids: np.ndarray, categories: np.ndarray, scores: np.ndarray, areas: np.ndarray,
                          thing_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO-style ``segments_info`` of the exported graph's outputs (the numpy post-process)."""
    things = set(int(c) for c in thing_ids)
    return [{"id": q + 1, "category_id": int(categories[q]), "isthing": int(categories[q]) in things,
             "score": float(scores[q]), "area": int(areas[q])} for q in np.flatnonzero(np.asarray(areas) > 0)]


def export_onnx(model: CIAEPanoptic, path: str | Path, size: tuple[int, int], opset: int = OPSET) -> dict[str, Any]:
    """Write the whole model to ``path``; returns {"path", "exporter", "size", "seconds", "dynamo_error"}."""
    if not isinstance(model, CIAEPanoptic):
        raise ExportError(f"ONNX export covers the CIAE system (its merge is one matrix product); got "
                        f"{type(model).__name__}. The two-stage system's merge is not exportable yet.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = CIAEGraph(model.cpu(), size).eval()
    example = (torch.rand(3, *graph.size, generator=torch.Generator().manual_seed(0)),)
    start = time.perf_counter()
    dynamo_error = None
    exporter = "torch.export (dynamo)"
    try:
        # torch.export reports a failure by printing the whole graph: kept out of the user's terminal
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, example, dynamo=True, input_names=["image"],
                                        output_names=list(OUTPUT_NAMES), opset_version=max(opset, 18),
                                        verbose=False)
        program.save(str(path))
    except Exception as err:  # noqa: BLE001 - any dynamo failure falls back to the legacy exporter
        root = err.__cause__ or err  # torch.onnx wraps the torch.export error that says why
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(root)).strip().splitlines()
        dynamo_error = f"{type(root).__name__}: {first[0][:300] if first else ''}"
        exporter = "torchscript (legacy)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, example, str(path), dynamo=False, input_names=["image"],
                              output_names=list(OUTPUT_NAMES), opset_version=opset,
                              dynamic_axes={"categories": {0: "segments"}, "scores": {0: "segments"},
                                            "areas": {0: "segments"}})
    return {"path": str(path), "exporter": exporter, "size": list(graph.size),
            "seconds": round(time.perf_counter() - start, 2), "dynamo_error": dynamo_error}


def check_onnx(model: CIAEPanoptic, path: str | Path, image: torch.Tensor | None = None, repeat: int = 10,
               seed: int = 0) -> dict[str, Any]:
    """Run the graph with onnxruntime (CPU) and the PyTorch model on the same image; the share of
    pixels whose segment ids agree and the median ms/image of each. ``{"skipped": why}`` without
    onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed (pip install 'panoptix[export]')"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    if image is None:
        image = torch.rand(3, int(shape[1]), int(shape[2]), generator=torch.Generator().manual_seed(seed))
    feed = {"image": image.numpy().astype(np.float32)}
    model = model.cpu().eval()
    ours = model([image])[0].ids.numpy()
    theirs = session.run(None, feed)[0]

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(max(1, repeat)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 1000 * float(np.median(times))

    with torch.no_grad():
        torch_ms = median_ms(lambda: model([image]))
    ort_ms = median_ms(lambda: session.run(None, feed))
    return {"equal_fraction": float((ours == theirs).mean()), "equal": bool(np.array_equal(ours, theirs)),
            "onnxruntime_ms": ort_ms, "torch_ms": torch_ms, "repeat": repeat}


__all__ = ["ExportError", "CIAEGraph", "export_onnx", "check_onnx", "segments_from_outputs", "OUTPUT_NAMES"]
