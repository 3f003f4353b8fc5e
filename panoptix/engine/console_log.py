"""``log.txt`` in a run folder: the console output of a command, as a reader wants it in a file.

Progress bars redraw their line with carriage returns; the file keeps only each line's last drawing,
so a bar appears once, in its final state, and no control characters reach the file.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class _Tee:
    """A text stream that writes to ``stream`` and, line by line, to ``log``."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log, self._line = stream, log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self._line += text
        *done, self._line = self._line.split("\n")
        for line in done:
            self.log.write(line.rsplit("\r", 1)[-1].rstrip() + "\n")
        if done:  # a progress bar's redraws complete no line: no file I/O for them
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def close_line(self) -> None:
        if self._line.strip():
            self.log.write(self._line.rsplit("\r", 1)[-1].rstrip() + "\n")
        self._line = ""

    def __getattr__(self, name: str):  # isatty, encoding, fileno: the console's
        return getattr(self.stream, name)


@contextlib.contextmanager
def console_log(path: Path, enabled: bool = True) -> Iterator[None]:
    """Copy stdout and stderr to ``path`` (appended: a resumed run continues its log) while inside."""
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        out, err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
            out.close_line()
            err.close_line()
