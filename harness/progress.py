"""Progress bars (rate and ETA) for long work; quiet when stderr is not a terminal unless the
caller asks, so SLURM logs get a line every ``mininterval`` seconds instead of a redraw storm."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
) -> Iterator[T] | tqdm:
    """A tqdm bar with rate and ETA. ``HARNESS_PROGRESS=0`` disables bars."""
    disabled = os.environ.get("HARNESS_PROGRESS", "1") == "0"
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=disabled,
        dynamic_ncols=interactive,
        mininterval=0.5 if interactive else 30.0,
        leave=interactive,
    )
