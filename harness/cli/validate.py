"""``harness validate FILE...``: check config files without side effects.

Prints one line per valid file and every problem of every invalid file (file:line: key: why);
exits 2 when any file is invalid. Given one catalogue too, every sweep's encoders are checked
against it. ``--set`` applies to the sweep and run files, as in ``harness sweep`` and
``harness train``; a catalogue is checked as written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harness.cli import Command, add_overrides_argument
from harness.errors import HarnessError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="encoders.yaml, sweeps/*.yaml, run configs"
    )
    add_overrides_argument(parser, what="a sweep or run value before validating")


def run(args: argparse.Namespace) -> int:
    from harness.config import config_from_doc, detect_kind
    from harness.config.loader import load_yaml
    from harness.config.sweep import check_encoders

    kinds: dict[str, str] = {}
    problems: dict[str, str] = {}
    sweeps: list[tuple[str, Any, Any]] = []  # path, doc, config
    catalogues: list[Any] = []
    for path in args.files:
        try:
            doc = load_yaml(path)
            kind = kinds[path] = detect_kind(doc)
            config = config_from_doc(doc, [] if kind == "catalogue" else args.overrides, kind)
        except HarnessError as exc:
            problems[path] = str(exc)
            continue
        if kind == "catalogue":
            catalogues.append(config)
        elif kind == "sweep":
            sweeps.append((path, doc, config))
    if len(catalogues) == 1:
        for path, doc, config in sweeps:
            try:
                check_encoders(config, doc, catalogues[0])
            except HarnessError as exc:
                problems[path] = str(exc)
    for path in args.files:
        if path in problems:
            print(f"invalid: {problems[path]}", file=sys.stderr)
        else:
            print(f"ok: {path} ({kinds[path]})")
    return 2 if problems else 0


COMMAND = Command(
    name="validate",
    help="check encoders.yaml / sweep / run config files without side effects",
    examples="""
        harness validate encoders.yaml sweeps/cpu-study.yaml
        harness validate sweeps/irepa-sitxl-100k.yaml --set train.steps=1000 --set eval.at_steps=[1000]
    """,
    add_arguments=add_arguments,
    run=run,
    order=90,
)
