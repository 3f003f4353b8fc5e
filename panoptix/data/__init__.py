"""Data layer: categories, samples, dataset formats, training targets, synthetic data."""

from panoptix.data.errors import PanopticFormatError
from panoptix.data.meta import Category, DatasetMeta
from panoptix.data.sample import PanopticSample, Segment

__all__ = ["Category", "DatasetMeta", "PanopticFormatError", "PanopticSample", "Segment"]
