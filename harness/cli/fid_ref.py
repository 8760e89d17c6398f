"""``harness fid-ref CONFIG``: compute (once) the reference statistics FID is measured against.

CONFIG is a sweep, a run config, or a file with ``data:`` / ``eval:`` sections (or a bare data
config). The statistics land in ``results/stages/fid_ref/<key>/`` (``stats.npz``,
``reference.json``, ``result.json``) and in the content-keyed cache every eval reuses.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cli import POSITIVE_INT, Command
from harness.cli.sections import add_common_options

if TYPE_CHECKING:
    from harness.config.data import DataConfig
    from harness.config.eval import EvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", metavar="CONFIG", help="sweep / run / data YAML (data: and eval: sections)"
    )
    parser.add_argument(
        "--npz",
        metavar="ADM.npz",
        help="use an ADM reference batch (mu, sigma) instead of the dataset",
    )
    parser.add_argument(
        "--split", choices=("train", "val"), help="dataset split (default: eval.reference.split)"
    )
    parser.add_argument(
        "--num-images",
        type=POSITIVE_INT,
        metavar="N",
        help="images for mu/sigma (default: whole split)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="artifact directory (default: results/stages/fid_ref/<key>)"
    )
    add_common_options(parser, "eval.extractor=harness-cnn")


def run(args: argparse.Namespace) -> int:
    from harness.cli.sections import load_sections
    from harness.config.data import DataConfig
    from harness.config.eval import EvalConfig

    overrides = list(args.overrides)
    if args.npz:
        overrides += ["eval.reference.source=npz", f"eval.reference.path={args.npz}"]
    if args.split:
        overrides.append(f"eval.reference.split={args.split}")
    if args.num_images is not None:
        overrides.append(f"eval.reference.num_images={args.num_images}")
    sections = load_sections(
        args.config, {"data": DataConfig, "eval": EvalConfig}, overrides, bare="data"
    )
    payload, out = compute_and_record(
        sections["data"], sections["eval"], out=args.out, device=args.device
    )
    print(
        f"reference {payload['reference_key']}: {payload['extractor']} on {payload['n_images'] or 'ADM'} images"
    )
    print(f"wrote {out / 'result.json'}")
    return 0


def compute_and_record(
    data: DataConfig, cfg: EvalConfig, *, out: str | None = None, device: str | None = None
) -> tuple[dict[str, Any], Path]:
    """Compute the reference for (data, cfg) and write its ``result.json``; returns (payload, dir).

    Shared by ``harness fid-ref`` and ``harness eval`` (which needs a reference first).
    """
    from harness.artifacts import is_done, read_result, write_result
    from harness.cli.sections import resolve_device
    from harness.eval.reference import compute_reference
    from harness.paths import results_root, stage_dir
    from harness.stages import STAGES, fid_ref

    started = time.time()
    config = fid_ref.instance(data, cfg)  # the sweep's fid_ref instance for these settings
    key = STAGES.get("fid_ref").key(config)
    directory = Path(out) if out else stage_dir(results_root(), "fid_ref", key)
    if is_done(directory):  # computed before, by this command or by a sweep
        return read_result(directory)["payload"], directory  # type: ignore[index]
    payload = compute_reference(data, cfg, directory, device=resolve_device(device))
    write_result(
        directory, stage="fid_ref", key=key, config=config, payload=payload, started_at=started
    )
    return payload, directory


COMMAND = Command(
    name="fid-ref",
    help="compute FID reference statistics once (dataset or ADM .npz)",
    examples="""
        harness fid-ref sweeps/cpu-study.yaml
        harness fid-ref sweeps/irepa-sitxl-100k.yaml --npz VIRTUAL_imagenet256_labeled.npz
        harness fid-ref data.yaml --set eval.extractor=harness-cnn --split val
    """,
    add_arguments=add_arguments,
    run=run,
    order=45,
)
