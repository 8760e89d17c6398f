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


def _list(catalogue, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    specs = [catalogue.get(n) for n in catalogue.names(args.pattern)]
    if not specs:
        raise HarnessError(
            f"no catalogue entry matches {args.pattern!r}", hint="try `harness encoders list`"
        )
    table = Table(title=f"{args.catalogue}: {len(specs)} encoder(s)")
    for column in (
        "name",
        "family",
        "source",
        "model",
        "input",
        "grid",
        "dim",
        "prefix",
        "tokens",
        "iREPA27",
        "published",
        "licence",
    ):
        table.add_column(column, overflow="fold")
    for s in specs:
        model = s.model_id if s.pretrained is None else f"{s.model_id}.{s.pretrained}"
        if s.source in ("torch_hub", "checkpoint"):
            model = f"{s.hub_repo or s.checkpoint}:{s.model_id} -> {s.arch}"
        tokens = (
            f"{'last' if s.layer < 0 else f'block {s.layer}'}{', norm' if s.final_norm else ''}"
        )
        table.add_row(
            s.name,
            s.family,
            s.source,
            model + (" (random)" if s.random_by_design else ""),
            f"{s.resolution} {s.interpolation}",
            f"{s.native_grid}x{s.native_grid}",
            str(s.embed_dim),
            str(s.num_prefix_tokens),
            tokens,
            "yes" if s.irepa27 else "",
            s.published_name or "",
            s.license,
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


def _check(catalogue, args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from harness.config.data import DataConfig
    from harness.data import build_dataset
    from harness.encoders import MissingWeights, create_encoder
    from harness.metrics.measure import DTYPES

    specs = catalogue.select(args.names)
    data = DataConfig(resolution=max(16, 16 * args.grid), val_images=args.batch)
    images = build_dataset(data, "val").get_batch(list(range(args.batch)))["image"]
    table = Table(
        title=f"encoder check: grid {args.grid}x{args.grid}, batch {args.batch}, "
        f"{args.device}, {args.dtype}"
    )
    for column in ("name", "grid", "dim", "params", "images/s", "weights", "status"):
        table.add_column(column, overflow="fold")
    failed = 0
    missing: list[MissingWeights] = []
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
            table.add_row(spec.name, "", "", "", "", "", f"error: {exc}")
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    _report_missing(missing)
    return 2 if failed else 0


def _report_missing(missing: list, lead: str = "") -> None:
    """The missing weights of a whole command as one message (the cause said once)."""
    from harness.encoders.weights import missing_report

    if missing:
        print(f"error: {lead}{missing_report(missing)}", file=sys.stderr)


def _fetch(catalogue, args: argparse.Namespace) -> int:
    from harness.encoders import MissingWeights, fetch_weights

    if not args.all and not args.names:
        raise HarnessError("name the encoders to fetch, or pass --all")
    specs = catalogue.encoders if args.all else catalogue.select(args.names)
    failed = 0
    missing: list[MissingWeights] = []
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
