"""panoptix: a PyTorch toolkit for panoptic segmentation."""

__version__ = "0.1.0"
