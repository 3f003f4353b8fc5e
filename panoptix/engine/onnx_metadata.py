"""What an exported ONNX file says about itself (its ``metadata_props``): the categories (id, name,
isthing, colour), the task, the input (name, shape, layout, range), the normalisation the graph
applies, the outputs and the panoptix version, so that the file runs with no checkpoint or config
beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from panoptix.data.meta import DatasetMeta
from panoptix.errors import ExportError

PREFIX = "panoptix."
KEYS = ("version", "task", "system", "categories", "input", "normalisation", "outputs")


def describe(model: Any, graph: Any, meta: DatasetMeta) -> dict[str, Any]:
    """The metadata of ``graph`` (exported from ``model``, categories ``meta``) as plain values."""
    from panoptix import __version__

    pre = model.preprocess
    h, w = graph.size
    return {
        "version": __version__,
        "task": getattr(model, "task", "panoptic"),
        "system": type(model).__name__,
        "categories": [c.to_json() for c in meta.categories],
        "input": {"name": "image", "shape": [3, h, w], "layout": "CHW", "dtype": "float32", "colour": "RGB",
                  "range": [0.0, 1.0], "note": "resize images to this size before running the graph"},
        "normalisation": {"mean": [float(v) for v in pre.pixel_mean.flatten()],
                          "std": [float(v) for v in pre.pixel_std.flatten()], "applied": "inside the graph"},
        "outputs": list(graph.output_names),
    }


def write_metadata(path: str | Path, values: dict[str, Any]) -> None:
    """Add ``values`` (JSON-encoded, keys prefixed ``panoptix.``) to the ONNX file at ``path``, and
    refuse a graph that does not read its input (a tracer that lost it would give one answer for
    every image)."""
    import onnx

    proto = onnx.load(str(path))
    if not [i for i in proto.graph.input if i.name == "image"]:
        raise ExportError(f"{path}: the exported graph does not read its image input (the tracer lost it); "
                          f"this is a bug, please report it with the model's config")
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = PREFIX + key, json.dumps(value)
    onnx.save(proto, str(path))


def read_metadata(session_or_path: Any) -> dict[str, Any]:
    """The panoptix metadata of an ONNX file (a path or an onnxruntime session); `ExportError` when
    the file has none (not written by ``panoptix export``)."""
    if isinstance(session_or_path, (str, Path)):
        import onnx

        props = {p.key: p.value for p in onnx.load(str(session_or_path), load_external_data=False).metadata_props}
    else:
        props = dict(session_or_path.get_modelmeta().custom_metadata_map)
    values = {k[len(PREFIX):]: json.loads(v) for k, v in props.items() if k.startswith(PREFIX)}
    missing = [k for k in KEYS if k not in values]
    if missing:
        raise ExportError(f"{session_or_path}: no panoptix metadata ({', '.join(missing)} missing); export the model "
                          f"with panoptix export")
    return values


def metadata_meta(values: dict[str, Any]) -> DatasetMeta:
    """The `DatasetMeta` of a file's categories."""
    return DatasetMeta.from_categories(values["categories"], name="exported model")


__all__ = ["describe", "write_metadata", "read_metadata", "metadata_meta", "KEYS"]
