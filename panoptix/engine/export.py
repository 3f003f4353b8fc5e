"""Export a system whole to ONNX: normalisation, network, detection with NMS, and the merge up to
the segment map, in one graph (the system's ``export_graph``: CIAE, the two-stage system with the
heuristic, ranking or UPSNet merge, and the scene parser's label map).

A panoptic graph takes one (3, H, W) float RGB image in 0..1 at the size it was exported for
(resize before calling it) and returns:

    ids        (H, W) int32   segment id per pixel, 0 = VOID
    categories (Q,) int64     category id of segment q + 1
    scores     (Q,) float32   1 for stuff, the detection score for things
    areas      (Q,) int64     pixels of segment q + 1 (0: absent, e.g. stuff under the area limit)

Q is CIAE's stuff classes + detections (data-dependent, a dynamic dimension), or the two-stage
graph's fixed detection cap + stuff channels. `segments_from_outputs` (numpy) turns the outputs into
COCO ``segments_info``. A scene parsing graph returns ``labels`` (H, W) int64, the class index per
pixel. The file's metadata holds the categories, the input, the normalisation and the version
(`panoptix.engine.onnx_metadata`). ``torch.onnx.export(dynamo=True)`` (torch.export) is tried
first; where it fails (torchvision's NMS and data-dependent shapes), the TorchScript-based exporter
is used, and the result says which one wrote the file.
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

from panoptix.data.meta import DatasetMeta
from panoptix.engine.onnx_metadata import describe, write_metadata
from panoptix.errors import ExportError
from panoptix.fusion.graph_merge import PANOPTIC_OUTPUTS

OPSET = 17


def segments_from_outputs(ids: np.ndarray | None, categories: np.ndarray, scores: np.ndarray, areas: np.ndarray,
                          things: Sequence[int] | dict[str, Any] | str | Path) -> list[dict[str, Any]]:
    """COCO-style ``segments_info`` of a panoptic graph's outputs (the numpy post-process), in plain
    Python values. ``things``: the ONNX file (its path), its metadata (`read_metadata`), or the thing
    category ids themselves. ``ids`` is not read (the areas are the graph's)."""
    from panoptix.engine.onnx_metadata import metadata_meta, read_metadata
    from panoptix.engine.onnx_system import segment_infos

    if isinstance(things, (str, Path)):
        things = read_metadata(things)
    thing_ids = metadata_meta(things).thing_ids if isinstance(things, dict) else things
    return [s.to_json() for s in segment_infos(categories, scores, areas, thing_ids)]


def export_onnx(model: nn.Module, path: str | Path, size: tuple[int, int], meta: DatasetMeta | None = None,
                opset: int = OPSET) -> dict[str, Any]:
    """Write the whole model to ``path``; returns {"path", "exporter", "size", "seconds", "dynamo_error"}.

    The system provides its graph (``export_graph(size)``: an ``nn.Module`` with a ``size`` and
    ``output_names``, taking one (3, H, W) image); a system without one is refused. The file's
    metadata describes ``meta``'s categories (default: the model's ``meta``).
    """
    export_graph = getattr(model, "export_graph", None)
    if export_graph is None:
        raise ExportError(f"{type(model).__name__} has no export_graph: ONNX export covers the CIAE, two-stage and "
                          f"scene parsing systems")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = export_graph(size).cpu().eval()
    names = list(graph.output_names)
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
                                        output_names=names, opset_version=max(opset, 18),
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
                              output_names=names, opset_version=opset,
                              dynamic_axes={n: {0: "segments"} for n in names if n in PANOPTIC_OUTPUTS[1:]})
    write_metadata(path, describe(model, graph, meta if meta is not None else model.meta))
    return {"path": str(path), "exporter": exporter, "size": list(graph.size),
            "seconds": round(time.perf_counter() - start, 2), "dynamo_error": dynamo_error}


def check_onnx(model: nn.Module, path: str | Path, image: torch.Tensor | None = None, repeat: int = 10,
               seed: int = 0, images: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """Run the graph with onnxruntime (CPU) and the PyTorch model on the same images (``images``, or
    ``image``, or a random one of the graph's size); the share of pixels whose segment ids agree over
    all of them, how many images agree wholly, the segments PyTorch found, and the median ms/image of
    each on the first. ``{"skipped": why}`` without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed (pip install 'panoptix[export]')"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    if images is None:
        images = [image if image is not None else
                  torch.rand(3, int(shape[1]), int(shape[2]), generator=torch.Generator().manual_seed(seed))]
    model = model.cpu().eval()
    equal, total, whole, segments = 0, 0, 0, 0
    for im in images:
        with torch.no_grad():
            result = model([im])[0]
        theirs = session.run(None, {"image": im.numpy().astype(np.float32)})[0]
        if session.get_outputs()[0].name == "labels":   # a label map: class k is segment k + 1
            theirs = theirs + 1
        same = result.ids.numpy() == theirs
        equal, total, whole = equal + int(same.sum()), total + same.size, whole + bool(same.all())
        segments += len(result.segments)
    feed = {"image": images[0].numpy().astype(np.float32)}
    with torch.no_grad():
        torch_ms = _median_ms(lambda: model([images[0]]), repeat)
    ort_ms = _median_ms(lambda: session.run(None, feed), repeat)
    return {"equal_fraction": equal / max(total, 1), "equal": whole == len(images), "images": len(images),
            "equal_images": whole, "segments": segments, "onnxruntime_ms": ort_ms, "torch_ms": torch_ms,
            "repeat": repeat}


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


__all__ = ["ExportError", "export_onnx", "check_onnx", "segments_from_outputs", "PANOPTIC_OUTPUTS"]
