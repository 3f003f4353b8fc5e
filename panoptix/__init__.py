"""panoptix: a PyTorch toolkit for panoptic segmentation.

``panoptix.load(weights_or_run_dir)`` gives a trained model as a function of images
(`panoptix.engine.image_predictor`); everything else is reached through its modules.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(weights: Any, device: str = "auto", **kwargs: Any) -> Any:
    """A trained model as ``predictor(image) -> Prediction`` (see `panoptix.engine.image_predictor.load`)."""
    from panoptix.engine.image_predictor import load as load_predictor

    return load_predictor(weights, device=device, **kwargs)


__all__ = ["__version__", "load"]
