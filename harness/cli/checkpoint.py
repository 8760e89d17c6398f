"""``harness checkpoint convert PATH...``: rewrite older training checkpoints without pickle.

Checkpoints of harness before checkpoint format 2 held numpy and python RNG state objects, so
they load only with full unpickling, which runs code from the file. ``convert`` unpickles each
given file once (so only for files you wrote) and rewrites it in place, atomically, in format 2,
which loads with ``torch.load(weights_only=True)``. A directory stands for every
``checkpoints/step_*.pt`` of that training run. Files already in format 2 are left alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import Command
from harness.errors import ArtifactError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    convert = actions.add_parser(
        "convert",
        help="rewrite older checkpoints in the pickle-free format (unpickles them once)",
        description="Rewrite checkpoints of earlier harness versions in format 2, which loads "
        "without pickle. Unpickling runs code from the file: convert only files you wrote.",
    )
    convert.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="step_*.pt files or run directories"
    )


def checkpoint_files(paths: list[Path]) -> list[Path]:
    """The checkpoint files named by ``paths`` (a directory: its run's ``step_*.pt``)."""
    from harness.train.checkpoint import list_checkpoints

    files = []
    for path in paths:
        if path.is_dir():
            found = [p for _, p in list_checkpoints(path)]
            if not found:
                raise ArtifactError(f"{path}: no checkpoints/step_*.pt in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ArtifactError(f"{path}: no such file or directory")
    return files


def run(args: argparse.Namespace) -> int:
    from harness.train.checkpoint import convert_checkpoint

    for path in checkpoint_files(args.paths):
        done = convert_checkpoint(path)
        print(f"{'converted' if done else 'already format 2'}: {path}")
    return 0


COMMAND = Command(
    name="checkpoint",
    help="convert training checkpoints of earlier versions to the pickle-free format",
    examples="""
        harness checkpoint convert results/stages/train/<run>/checkpoints/step_0100000.pt
        harness checkpoint convert results/stages/train/<run>   # every checkpoint of the run
    """,
    add_arguments=add_arguments,
    run=run,
    order=48,
)
