"""What the benchmark modules share: a scratch SELFHEAL_HOME and the printed rows."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

Row = tuple[str, float, float | None]  # metric, value, target (None: no target)


@contextlib.contextmanager
def scratch_home(prefix: str) -> Iterator[Path]:
    """A temporary folder with SELFHEAL_HOME set to its ``home`` for the block; afterwards the old value is
    back, pooled connections are closed and the folder is gone."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    old_home = os.environ.get("SELFHEAL_HOME")
    os.environ["SELFHEAL_HOME"] = str(tmp / "home")
    try:
        yield tmp
    finally:
        if old_home is None:
            os.environ.pop("SELFHEAL_HOME", None)
        else:
            os.environ["SELFHEAL_HOME"] = old_home
        from storage.engine import dispose_engines

        dispose_engines()
        shutil.rmtree(tmp, ignore_errors=True)


def print_rows(rows: list[Row], width: int = 40) -> None:
    for metric, value, target in rows:
        print(f"{metric:<{width}} {value:10.3f}" + ("" if target is None else f"   target ≤ {target}"))
