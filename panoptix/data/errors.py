"""The one error type the data layer raises for malformed datasets and predictions."""

from panoptix.errors import PanoptixError


class PanopticFormatError(PanoptixError, ValueError):
    """A dataset or prediction file is malformed; the message names the file and the segment."""
