"""The ``harness`` command line.

Each module in this package that defines ``COMMAND`` (a :class:`Command`) is a subcommand;
modules are discovered, so adding a subcommand never edits this file. Subcommand modules import
heavy libraries (torch, ...) lazily inside ``run`` so that ``harness --help`` stays fast.

Exit codes: 0 ok, 2 user error (:class:`~harness.errors.HarnessError`), 1 internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from harness import __version__
from harness.errors import HarnessError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    order: int = 50


# ``harness --help``: a first session (every command's own examples are in its --help)
EXAMPLES = """
    harness validate encoders.yaml sweeps/cpu-study.yaml
    harness sweep encoders.yaml --sweep sweeps/cpu-study.yaml --dry-run
    harness sweep encoders.yaml --sweep sweeps/tiny.yaml --executor local
    harness status --sweep tiny
    harness report --sweep tiny
    harness query "SELECT encoder, method, step, fid FROM v_study ORDER BY fid"
"""


def add_overrides_argument(
    parser: argparse.ArgumentParser, example: str = "train.steps=1000", what: str = "a config value"
) -> None:
    """The shared ``--set KEY.PATH=VALUE`` option (repeatable; defaults < YAML < --set)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help=f"override {what}, e.g. --set {example} (repeatable)",
    )


def bounded(
    kind: Callable[[str], float] = int,
    *,
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
) -> Callable[[str], Any]:
    """An argparse ``type=`` for a number within bounds (``ge``/``gt``/``lt``, as in pydantic's
    ``Field``): out of range, argparse says ``argument --images: must be >= 1, got 0`` and
    exits 2, before anything runs."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        for ok, rule in (
            (ge is None or value >= ge, f">= {ge}"),
            (gt is None or value > gt, f"> {gt}"),
            (lt is None or value < lt, f"< {lt}"),
        ):
            if not ok:
                raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = kind.__name__  # type: ignore[attr-defined]
    return parse


POSITIVE_INT = bounded(int, ge=1)  # counts and sizes: images, samples, steps, batch, grid
NON_NEGATIVE_INT = bounded(int, ge=0)  # seeds, workers, checkpoint steps, "0 = all"
NON_NEGATIVE_FLOAT = bounded(float, ge=0)  # seconds


def add_trust_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: also load checkpoints that need pickle (see
    :mod:`harness.train.checkpoint`), for the commands that load training checkpoints."""
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="also load a checkpoint that needs pickle (checkpoint format 1 of earlier "
        "harness versions): unpickling runs code from the file, so only for files you trust",
    )


def discover_commands() -> list[Command]:
    commands = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        command = getattr(module, "COMMAND", None)
        if isinstance(command, Command):
            commands.append(command)
    return sorted(commands, key=lambda c: (c.order, c.name))


def build_parser() -> argparse.ArgumentParser:
    commands = discover_commands()
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark vision encoders as REPA / iREPA alignment targets for SiT "
        "diffusion training: sweep on SLURM, measure, store in DuckDB, report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        + textwrap.indent(textwrap.dedent(EXAMPLES).strip(), "  ")
        + "\n\nrun 'harness COMMAND --help' for a command's options and examples.",
    )
    _add_global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        child = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog="examples:\n" + textwrap.indent(textwrap.dedent(command.examples).strip(), "  "),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_global_options(child, suppress=True)
        command.add_arguments(child)
        child.set_defaults(_run=command.run)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global options work before or after the subcommand name."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--results",
        metavar="DIR",
        default=default,
        help="results root (default: $HARNESS_RESULTS or ./results)",
    )
    group.add_argument(
        "--group",
        metavar="NAME",
        default=default,
        help="lab group that gets (group-readable) every file and directory written "
        "(default: $HARNESS_GROUP; none)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="show log events (-v: info, -vv: debug; default: warnings only)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="show tracebacks for every error",
    )


@contextlib.contextmanager
def _command_environment(args: argparse.Namespace) -> Iterator[None]:
    """``--group`` and ``--trust-checkpoint`` as environment variables while the command runs
    (so the jobs it starts inherit them); the group is checked before anything is written."""
    from harness.io import ENV_GROUP, lab_group

    values = {}
    if getattr(args, "group", None) is not None:
        values[ENV_GROUP] = args.group
    if getattr(args, "trust_checkpoint", False):
        from harness.train.checkpoint import ENV_TRUST  # torch: only for checkpoint commands

        values[ENV_TRUST] = "1"
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        lab_group()  # an unknown group, or one the user is not in, is an error up front
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main(argv: Sequence[str] | None = None) -> int:
    from harness.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.results is not None:
        os.environ["HARNESS_RESULTS"] = args.results
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        with _command_environment(args):
            code = args._run(args)
        return int(code or 0)
    except HarnessError as exc:
        if args.debug:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "this is a bug in harness; rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 1
