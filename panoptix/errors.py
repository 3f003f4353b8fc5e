"""`PanoptixError`: the base of every error that is the user's input, not a bug in panoptix.

The CLI prints such an error as one line (``panoptix CMD: error: ...``) and exits 2; anything
else is a bug and keeps its traceback. This module imports nothing, so that the CLI can catch
these errors without importing torch.
"""


class PanoptixError(Exception):
    """Bad input (a file, a config, a checkpoint); the message says what and where."""


class ExportError(PanoptixError, ValueError):
    """The model cannot be exported: a system without an exportable graph, or a size the model would resize."""


class PanopticFormatError(PanoptixError, ValueError):
    """A dataset or prediction file is malformed; the message names the file and the segment.

    Defined here, at ground level, so that `panoptix.jsonio` can raise it without importing the
    data layer; `panoptix.data` exports it."""
