"""Progress bars (rate and ETA) for long work. On a terminal they redraw in place; piped (a
SLURM log, ``| tee``) each update is one plain line, at most every ``mininterval`` seconds, so
logs read top to bottom without carriage-return redraws or frozen ``0%|`` bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

PIPED_INTERVAL_S = 30.0  # seconds between two plain progress lines when stderr is not a TTY
PIPED_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class LineWriter:
    """A file for tqdm that turns each in-place redraw into one plain line on stderr."""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            sys.stderr.write(line + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    transient: bool = False,
) -> Iterator[T] | tqdm:
    """A tqdm bar with rate and ETA. ``HARNESS_PROGRESS=0`` disables bars; a ``transient`` bar
    is erased when it closes (its caller prints the one line that sums it up)."""
    disabled = os.environ.get("HARNESS_PROGRESS", "1") == "0"
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=disabled,
        file=None if interactive else LineWriter(),
        dynamic_ncols=interactive,
        bar_format=None if interactive else PIPED_FORMAT,
        mininterval=0.5 if interactive else PIPED_INTERVAL_S,
        delay=0.0 if interactive else PIPED_INTERVAL_S,  # piped: no line for work under 30 s
        leave=interactive and not transient,
    )
