"""Whole panoptic systems (meta-architectures)."""
