"""``harness validate FILE...``: check config files without side effects.

Prints one line per valid file and every problem of every invalid file (file:line: key: why);
exits 2 when any file is invalid.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import Command, add_overrides_argument
from harness.errors import HarnessError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="encoders.yaml, sweeps/*.yaml, run configs"
    )
    add_overrides_argument(parser, what="a value before validating")


def run(args: argparse.Namespace) -> int:
    from harness.config import detect_kind, load_config
    from harness.config.loader import load_yaml

    failed = 0
    for path in args.files:
        try:
            kind = detect_kind(load_yaml(path))
            load_config(path, args.overrides, kind=kind)
        except HarnessError as exc:
            failed += 1
            print(f"invalid: {exc}", file=sys.stderr)
            continue
        print(f"ok: {path} ({kind})")
    return 2 if failed else 0


COMMAND = Command(
    name="validate",
    help="check encoders.yaml / sweep / run config files without side effects",
    examples="""
        harness validate encoders.yaml sweeps/cpu-study.yaml
        harness validate sweeps/irepa-sitxl-100k.yaml --set train.steps=1000
    """,
    add_arguments=add_arguments,
    run=run,
    order=90,
)
