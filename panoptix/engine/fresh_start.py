"""What a run starting at iteration 0 finds in its output folder: it never overwrites a run unsaid.

`Trainer.train` resumes from the folder's newest checkpoint when ``engine.resume`` is true. When it
starts afresh instead, the folder is checked first:

- saved weights (``model_*.pth``) there are refused, with one line (``engine.resume=false`` into an
  earlier run's folder, or a folder whose only weights are a ``model_final.pth`` with nothing to
  resume from): starting again would overwrite them;
- the logs of an earlier run that was stopped before its first checkpoint are replaced, and a
  one-line note says so (there is nothing to resume, so starting again is the only way on).
"""

from __future__ import annotations

from pathlib import Path

from panoptix.engine.checkpoint import CheckpointError
from panoptix.engine.logger import LOGS, logged_rows


def fresh_start_note(output_dir: str | Path, resume: bool) -> str | None:
    """Check ``output_dir`` before a run starts there at iteration 0.

    Raises `CheckpointError` when it holds saved weights; returns a one-line note when it holds the
    logged rows of an earlier run that saved no checkpoint, else None.
    """
    folder = Path(output_dir)
    saved = sorted(p.name for p in folder.glob("model_*.pth"))
    if saved:
        shown = ", ".join(saved[-2:]) + (f" and {len(saved) - 2} more" if len(saved) > 2 else "")
        how = ("set engine.resume=true to continue it, or another engine.output_dir" if not resume
               else "none of them can be resumed from; set another engine.output_dir, or move them away")
        raise CheckpointError(f"{folder} holds an earlier run's weights ({shown}) that a fresh start would "
                              f"overwrite; {how}")
    rows = {name: logged_rows(folder / name) for name in LOGS}
    if not any(rows.values()):
        return None
    logged = " and ".join(f"{n} rows of {name}" for name, n in rows.items() if n)
    return (f"{folder} has no checkpoint to resume from, only an earlier run's logs ({logged}): the run starts "
            f"at iteration 0 and replaces them")
