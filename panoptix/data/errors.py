"""The one error type the data layer raises for malformed datasets and predictions (defined at
ground level, in `panoptix.errors`, so that modules below the data layer can raise it too)."""

from panoptix.errors import PanopticFormatError

__all__ = ["PanopticFormatError"]
