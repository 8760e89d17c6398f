"""``harness encoders list|check|fetch``: browse the catalogue, smoke-test encoders, fill caches.

* ``list [PATTERN]``: the catalogue as a table (glob on names).
* ``check NAME... [--random-weights]``: build each encoder, run it on generated images, print
  grid, dim, parameters and images/s (exit 2 if any failed).
* ``fetch NAME...|--all``: download weights into the HF / torch.hub / open_clip caches (needs
  internet: run on a login node with the jobs' HF_HOME / TORCH_HOME).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from harness.cli import POSITIVE_INT, Command
from harness.errors import HarnessError

DEFAULT_CATALOGUE = "encoders.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="show the catalogue as a table")
    listing.add_argument("pattern", nargs="?", default="*", help="glob on names (default: all)")
    check = actions.add_parser("check", help="build encoders and run them on generated images")
    check.add_argument("names", nargs="+", metavar="NAME", help="entry names or globs")
    check.add_argument("--random-weights", action="store_true", help="random init, no weights")
    check.add_argument("--grid", type=POSITIVE_INT, default=16, help="token grid side (default 16)")
    check.add_argument(
        "--batch", type=POSITIVE_INT, default=4, help="images per forward (default 4)"
    )
    check.add_argument("--repeats", type=POSITIVE_INT, default=2, help="timed forwards (default 2)")
    check.add_argument("--device", default="cpu", help="torch device (default cpu)")
    check.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="compute dtype",
    )
    fetch = actions.add_parser("fetch", help="download weights into the offline caches")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="entry names or globs")
    fetch.add_argument("--all", action="store_true", help="every entry of the catalogue")
    for sub in (listing, check, fetch):
        sub.add_argument(
            "--catalogue",
            default=DEFAULT_CATALOGUE,
            metavar="FILE",
            help=f"catalogue file (default {DEFAULT_CATALOGUE})",
        )


def run(args: argparse.Namespace) -> int:
    from harness.config.encoders import load_catalogue

    catalogue = load_catalogue(args.catalogue)
    return {"list": _list, "check": _check, "fetch": _fetch}[args.action](catalogue, args)


TABLE_WIDTH = 120  # columns the tables fit (narrower when the terminal is)


def _console() -> Any:
    import shutil

    from rich.console import Console

    return Console(width=min(TABLE_WIDTH, shutil.get_terminal_size((TABLE_WIDTH, 24)).columns))


def _table(title: str, columns: tuple[str, ...], fold: str) -> Any:
    """A borderless table; only the ``fold`` column wraps (into the room the others leave)."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
        title_justify="left",
    )
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column != fold)
    return table


def _model(spec: Any) -> str:
    """What the entry builds, short: the timm / HF id, or the architecture of a checkpoint."""
    if spec.source in ("torch_hub", "checkpoint"):
        model = spec.arch
    else:
        model = spec.model_id if spec.pretrained is None else f"{spec.model_id}.{spec.pretrained}"
    return model + (" (random)" if spec.random_by_design else "")


def _list(catalogue, args: argparse.Namespace) -> int:
    specs = [catalogue.get(n) for n in catalogue.names(args.pattern)]
    if not specs:
        raise HarnessError(
            f"no catalogue entry matches {args.pattern!r}", hint="try `harness encoders list`"
        )
    columns = ("name", "source", "model", "px", "grid", "dim", "27", "published")
    table = _table(f"{args.catalogue}: {len(specs)} encoder(s)", columns, fold="model")
    for s in specs:
        table.add_row(
            s.name,
            s.source,
            _model(s),
            str(s.resolution),
            str(s.native_grid),
            str(s.embed_dim),
            "yes" if s.irepa27 else "",
            s.published_name or "",
        )
    console = _console()
    console.print(table)
    console.print(
        "px: input resolution; grid: native token grid side; 27: one of iREPA's 27 encoders; "
        "published: its name in the papers. Family, weights, licence, layer and preprocessing "
        f"of each entry: {args.catalogue}."
    )
    return 0


def _offline_missing(specs: list, random_weights: bool) -> tuple[list, list]:
    """Offline, the entries whose weights are certainly not cached, found without importing
    torch or a model library (an offline check answers in seconds): (missing, the rest)."""
    from harness.encoders import MissingWeights
    from harness.encoders.network import offline_reason
    from harness.encoders.weights import locate_cached

    if random_weights or offline_reason() is None:
        return [], specs
    missing, rest = [], []
    for spec in specs:
        try:
            locate_cached(spec)
        except MissingWeights as exc:
            missing.append(exc)
            continue
        rest.append(spec)
    return missing, rest


def _check(catalogue, args: argparse.Namespace) -> int:
    specs = catalogue.select(args.names)
    missing, specs = _offline_missing(specs, args.random_weights)
    title = (
        f"encoder check: grid {args.grid}x{args.grid}, batch {args.batch}, "
        f"{args.device}, {args.dtype}"
    )
    columns = ("name", "grid", "dim", "params", "images/s", "weights", "status")
    table = _table(title, columns, fold="weights")
    for exc in missing:
        table.add_row(exc.encoder, "", "", "", "", "", "no weights (see below)")
    if not specs:  # nothing to build: said without importing torch
        _console().print(table)
        _report_missing(missing)
        return 2
    import torch

    from harness.config.data import DataConfig
    from harness.data import build_dataset
    from harness.encoders import MissingWeights, create_encoder
    from harness.metrics.measure import DTYPES

    data = DataConfig(resolution=max(16, 16 * args.grid), val_images=args.batch)
    images = build_dataset(data, "val").get_batch(list(range(args.batch)))["image"]
    failed = len(missing)
    notes: list[str] = []  # errors, below the table (numbered in the status column)
    for spec in specs:
        try:
            enc = create_encoder(
                spec,
                grid=args.grid,
                device=args.device,
                dtype=DTYPES[args.dtype],
                random_weights=args.random_weights,
            )
            enc(images)  # warm-up
            start = time.perf_counter()
            for _ in range(args.repeats):
                out = enc(images)
            if enc.device.type == "cuda":
                torch.cuda.synchronize()
            rate = args.batch * args.repeats / (time.perf_counter() - start)
            ok = bool(torch.isfinite(out.tokens).all())
            table.add_row(
                spec.name,
                f"{out.grid[0]}x{out.grid[1]}",
                str(out.tokens.shape[-1]),
                f"{enc.num_params / 1e6:.1f}M",
                f"{rate:.1f}",
                enc.weights_id,
                "ok" if ok else "NON-FINITE",
            )
            failed += not ok
        except MissingWeights as exc:
            failed += 1
            missing.append(exc)
            table.add_row(spec.name, "", "", "", "", "", "no weights (see below)")
        except HarnessError as exc:
            failed += 1
            notes.append(f"[{len(notes) + 1}] {spec.name}: {exc}")
            table.add_row(spec.name, "", "", "", "", "", f"error [{len(notes)}]")
    console = _console()
    console.print(table)
    for note in notes:
        print(_wrapped(note, console.width))
    _report_missing(missing)
    return 2 if failed else 0


def _report_missing(missing: list, lead: str = "") -> None:
    """The missing weights of a whole command as one message (the cause said once)."""
    from harness.encoders.weights import missing_report

    if missing:
        print(f"error: {lead}{missing_report(missing)}", file=sys.stderr)


def _wrapped(note: str, width: int) -> str:
    """A numbered note wrapped to ``width``, continuation lines indented under its text."""
    import textwrap

    return "\n".join(
        textwrap.fill(line, width, subsequent_indent="    ", break_on_hyphens=False)
        for line in note.splitlines()
    )


def _fetch(catalogue, args: argparse.Namespace) -> int:
    from harness.encoders import MissingWeights, fetch_weights

    if not args.all and not args.names:
        raise HarnessError("name the encoders to fetch, or pass --all")
    specs = catalogue.encoders if args.all else catalogue.select(args.names)
    missing, specs = _offline_missing(specs, random_weights=False)
    failed = len(missing)
    for spec in specs:
        try:
            print(f"{spec.name}: {fetch_weights(spec)}", flush=True)
        except MissingWeights as exc:  # no network here: said once, below
            failed += 1
            missing.append(exc)
        except HarnessError as exc:
            failed += 1
            print(f"{spec.name}: FAILED: {exc}", flush=True)
    needs = "`harness encoders fetch` downloads, so it needs the network; "
    _report_missing(missing, needs if missing and missing[0].reason else "")
    return 2 if failed else 0


COMMAND = Command(
    name="encoders",
    help="list the encoder catalogue, check encoders, fetch their weights",
    examples="""
        harness encoders list 'dinov2*'
        harness encoders check dinov2-vit-b pixels hog --random-weights --grid 8
        harness encoders fetch dinov2-vit-b clip-vit-L      # on a login node (internet)
        harness encoders fetch --all
    """,
    add_arguments=add_arguments,
    run=run,
    order=30,
)
