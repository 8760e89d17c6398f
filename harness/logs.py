"""Structured logging.

Humans get one readable line per event on stderr; machines get the same events as JSON lines
in a file (``log_file``), with every keyword field preserved::

    log = get_logger(__name__)
    event(log, "train.step", step=100, loss=0.41, images_per_s=812.0)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

_FIELDS = "harness_fields"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        payload.update(getattr(record, _FIELDS, {}))
        return json.dumps(payload, default=str, sort_keys=False)


class _HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, _FIELDS, {})
        tail = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"[{stamp}] {level}{record.getMessage()}" + (f"  {tail}" if tail else "")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (it may be replaced after setup, e.g.
    by output capture in tests or a job wrapper), never to a stale, closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


# verbosity -> the lowest level the console shows: a CLI command prints its own outcome and
# shows events only with -v (warnings always); a job's stderr log shows every info event
CONSOLE_LEVELS = {0: logging.WARNING, 1: logging.INFO}


def setup_logging(verbosity: int = 0, log_file: str | Path | None = None) -> None:
    """Configure the ``harness`` logger once per process (CLI entry: ``-v`` count; job entry:
    1). Console: warnings at 0, info events at 1, debug from 2; the JSON file gets all."""
    root = logging.getLogger("harness")
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    console = _StderrHandler()
    console.setLevel(CONSOLE_LEVELS.get(verbosity, logging.DEBUG))
    console.setFormatter(_HumanFormatter())
    root.addHandler(console)
    if log_file is not None:
        add_json_log(log_file)


def add_json_log(log_file: str | Path) -> logging.Handler:
    """Also write every ``harness`` event as a JSON line to ``log_file``."""
    from harness.io import make_dirs, share

    make_dirs(Path(log_file).parent)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    share(log_file)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(_JsonFormatter())
    logging.getLogger("harness").addHandler(handler)
    return handler


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("harness") else f"harness.{name}")


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a named event with structured fields."""
    logger.log(level, name, extra={_FIELDS: fields})
