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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from panoptix.errors import ExportError
from panoptix.models.systems.ciae_graph import OUTPUT_NAMES, CIAEGraph

OPSET = 17


def segments_from_outputs(ids: np.ndarray, categories: np.ndarray, scores: np.ndarray, areas: np.ndarray,
                          thing_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO-style ``segments_info`` of the exported graph's outputs (the numpy post-process)."""
    things = set(int(c) for c in thing_ids)
    return [{"id": q + 1, "category_id": int(categories[q]), "isthing": int(categories[q]) in things,
             "score": float(scores[q]), "area": int(areas[q])} for q in np.flatnonzero(np.asarray(areas) > 0)]


def export_onnx(model: nn.Module, path: str | Path, size: tuple[int, int], opset: int = OPSET) -> dict[str, Any]:
    """Write the whole model to ``path``; returns {"path", "exporter", "size", "seconds", "dynamo_error"}.

    The system provides its graph (``export_graph(size)``: an ``nn.Module`` with a ``size``, taking
    one (3, H, W) image and returning ``OUTPUT_NAMES``); a system without one is refused.
    """
    export_graph = getattr(model, "export_graph", None)
    if export_graph is None:
        raise ExportError(f"ONNX export covers the CIAE system (its merge is one matrix product); "
                          f"{type(model).__name__} has no export_graph. The two-stage system's merge is not "
                          f"exportable yet.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = export_graph(size).cpu().eval()
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


def check_onnx(model: nn.Module, path: str | Path, image: torch.Tensor | None = None, repeat: int = 10,
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
