"""Which CPU-study scale makes the vanilla SiT learn fastest per CPU-second (issue #11).

Each candidate scale (data variety, SiT size, batch, lr, EMA) trains the baseline (method
``none``) on ONE core for a fixed budget of CPU-seconds. At a few budget marks its EMA model is
sampled with each candidate sampler and scored exactly as the study scores it: FD, precision and
recall on the substitute extractor, and sample class accuracy (the substitute classifier's
argmax equals the conditioning class), next to that classifier's accuracy on real val images
(the ceiling). Prints one table, writes every number to ``<results>/bench_cpu_scale.json`` and
a sample grid per candidate and mark to ``<results>/bench_cpu_scale/<candidate>/``.

    .venv/bin/python benchmarks/bench_cpu_scale.py                  # all candidates, 2 at a time
    .venv/bin/python benchmarks/bench_cpu_scale.py --only simple-t4 --budget 120 --jobs 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BUDGET_MARKS = (0.25, 0.5, 1.0)  # fractions of the CPU budget at which the EMA model is scored

SIMPLE = {"max_objects": 1, "home_palette_prob": 1.0, "backgrounds": "flat"}
BASE_DATA = {"resolution": 32, "num_classes": 10, "train_images": 2000, "val_images": 500}
# name -> (data overrides, model, train overrides)
CANDIDATES: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    # the study as it was: full variety, plain EMA (its first steps' weights linger)
    "today": ({}, "SiT-T/4", {"global_batch": 32, "lr": 5e-4, "ema_decay": 0.99}),
    "full-t4-warm": (
        {},
        "SiT-T/4",
        {"global_batch": 32, "lr": 1e-3, "ema_decay": 0.995, "ema_warmup": True},
    ),
    "simple-t4": (
        SIMPLE,
        "SiT-T/4",
        {"global_batch": 32, "lr": 1e-3, "ema_decay": 0.995, "ema_warmup": True},
    ),
    "simple-t4-lr2e-3": (
        SIMPLE,
        "SiT-T/4",
        {"global_batch": 32, "lr": 2e-3, "ema_decay": 0.995, "ema_warmup": True},
    ),
    "gradient-t4": (
        {**SIMPLE, "backgrounds": "gradient"},
        "SiT-T/4",
        {"global_batch": 32, "lr": 1e-3, "ema_decay": 0.995, "ema_warmup": True},
    ),
    "simple-xs4": (
        SIMPLE,
        "SiT-XS/4",
        {"global_batch": 32, "lr": 1e-3, "ema_decay": 0.995, "ema_warmup": True},
    ),
}
BIG = {**SIMPLE, "object_scale": 1.6}
CANDIDATES.update(
    {
        "big-t4": (
            BIG,
            "SiT-T/4",
            {"global_batch": 32, "lr": 2e-3, "ema_decay": 0.995, "ema_warmup": True},
        ),
        "big-xs4": (
            BIG,
            "SiT-XS/4",
            {"global_batch": 32, "lr": 1e-3, "ema_decay": 0.995, "ema_warmup": True},
        ),
        "big-gradient-t4": (
            {**BIG, "backgrounds": "gradient"},
            "SiT-T/4",
            {"global_batch": 32, "lr": 2e-3, "ema_decay": 0.995, "ema_warmup": True},
        ),
    }
)
SAMPLERS: dict[str, dict[str, Any]] = {
    "ode20": {"mode": "ode", "num_steps": 20},
    "sde40": {"mode": "sde", "num_steps": 40},
    # CFG 2 inside REPA's guidance interval (t <= 0.7): what the CPU study samples with
    "sde40-cfg2": {"mode": "sde", "num_steps": 40, "cfg_scale": 2.0, "guidance_high": 0.7},
}


def eval_config(sampler: dict[str, Any], num_samples: int) -> Any:
    from harness.config.eval import EvalConfig

    return EvalConfig.model_validate(
        {
            "num_samples": num_samples,
            "shard_size": num_samples,
            "sampler": {**sampler, "batch_size": 250},
            "extractor": "harness-cnn",
            "batch_size": 250,
            "metrics": {"fid": True, "isc": True, "kid": False, "prc": True, "isc_splits": 5},
            "reference": {"source": "dataset", "split": "train", "num_features": 2000},
            "substitute": {"epochs": 4, "input_size": 32},
        }
    )


def run_candidate(name: str, budget: float, num_samples: int, root: Path) -> list[dict[str, Any]]:
    """Train candidate ``name`` for ``budget`` CPU-seconds; score it at each budget mark."""
    import torch

    from harness.config.run import RunConfig
    from harness.data import build_dataset
    from harness.eval.driver import evaluate_checkpoint
    from harness.eval.reference import compute_reference
    from harness.train.checkpoint import checkpoint_path
    from harness.train.loop import train

    torch.set_num_threads(1)
    data_over, model, train_over = CANDIDATES[name]
    data = {**BASE_DATA, **data_over}
    out = root / "bench_cpu_scale" / name
    run = RunConfig.model_validate(
        {
            "data": data,
            "method": "none",
            "model": {"name": model, "space": "pixel"},
            "train": {
                "steps": 1_000_000,
                "precision": "fp32",
                "tf32": False,
                "num_workers": 0,
                "ckpt_every": 1_000_000,
                "log_every": 10,
                "sync_every": 10,
                **train_over,
            },
        }
    )
    dataset = build_dataset(run.data, "train")
    if not (out / "fid_ref" / "reference.json").is_file():  # data + extractor only: one per scale
        compute_reference(
            run.data, eval_config(SAMPLERS["ode20"], num_samples), out / "fid_ref", root=root
        )
    rows: list[dict[str, Any]] = []
    spent, step, per_step = 0.0, 0, None
    for mark in BUDGET_MARKS:
        while spent < mark * budget:  # one train() call per mark (each call resumes: overhead)
            left = mark * budget - spent
            target = step + (30 if per_step is None else max(10, round(left / per_step)))
            started = time.process_time()
            train(run, out / "train", device="cpu", stop_after=target, dataset=dataset)
            spent += time.process_time() - started
            step = target
            per_step = spent / step
        ckpt = checkpoint_path(out / "train", step)
        for sampler_name, sampler in SAMPLERS.items():
            started = time.process_time()
            payload = evaluate_checkpoint(
                ckpt,
                eval_config(sampler, num_samples),
                out / f"eval-{step}-{sampler_name}",
                reference_dir=out / "fid_ref",
                step=step,
            )
            metrics = payload["metrics"]
            rows.append(
                {
                    "candidate": name,
                    "data": data,
                    "model": model,
                    **{k: train_over[k] for k in ("global_batch", "lr", "ema_decay")},
                    "ema_warmup": bool(train_over.get("ema_warmup", False)),
                    "sampler": sampler_name,
                    "step": step,
                    "train_cpu_s": round(spent, 1),
                    "eval_cpu_s": round(time.process_time() - started, 1),
                    "fd": metrics.get("fid"),
                    "precision": metrics.get("precision"),
                    "recall": metrics.get("recall"),
                    "class_accuracy": metrics.get("class_accuracy"),
                    "class_accuracy_real": metrics.get("class_accuracy_real"),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            write_grid(out / f"eval-{step}-{sampler_name}", out / f"grid-{step}-{sampler_name}.png")
    return rows


def write_grid(eval_dir: Path, png: Path, per_class: int = 4) -> None:
    """The first ``per_class`` samples of every class, one column per class, as one PNG."""
    import numpy as np
    from PIL import Image

    shard = sorted((eval_dir / "samples").glob("*.npz"))[0]
    with np.load(shard) as f:
        images, labels = f["images"], f["labels"]
    classes = np.unique(labels)
    picks = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    tiles = images.transpose(0, 2, 3, 1)  # (N, H, W, 3)
    rows = [np.concatenate([tiles[p[r]] for p in picks], axis=1) for r in range(per_class)]
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), 0).save(png)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "candidate",
        "model",
        "batch",
        "lr",
        "sampler",
        "step",
        "cpu_s",
        "FD",
        "prec",
        "rec",
        "acc",
        "ceiling",
    )
    lines = ["  ".join(f"{h:>13}" if i == 0 else f"{h:>9}" for i, h in enumerate(head))]
    for r in rows:

        def num(v: Any, fmt: str) -> str:
            return format(v, fmt) if isinstance(v, float | int) else "-"

        cells = (
            r["candidate"],
            r["model"],
            r["global_batch"],
            r["lr"],
            r["sampler"],
            r["step"],
            num(r["train_cpu_s"], ".0f"),
            num(r["fd"], ".1f"),
            num(r["precision"], ".2f"),
            num(r["recall"], ".2f"),
            num(r["class_accuracy"], ".2f"),
            num(r["class_accuracy_real"], ".2f"),
        )
        lines.append(
            "  ".join(f"{c!s:>13}" if i == 0 else f"{c!s:>9}" for i, c in enumerate(cells))
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="candidates to run")
    parser.add_argument("--budget", type=float, default=240.0, help="CPU-seconds of training")
    parser.add_argument("--samples", type=int, default=500, help="samples per evaluation")
    parser.add_argument("--jobs", type=int, default=2, help="candidates trained at once")
    parser.add_argument("--results", type=Path, default=None, help="results root")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from harness.io import write_json
    from harness.paths import results_root

    root = args.results or results_root()
    if args.worker:
        rows = run_candidate(args.worker, args.budget, args.samples, root)
        write_json(root / "bench_cpu_scale" / args.worker / "rows.json", rows)
        return
    names = args.only or list(CANDIDATES)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_PROGRESS": "0"}
    pending, running = list(names), []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--budget",
                str(args.budget),
                "--samples",
                str(args.samples),
                "--results",
                str(root),
            ]
            running.append(subprocess.Popen(cmd, env=env))
        running[0].wait()
        failed = [p for p in running if p.poll() not in (None, 0)]
        if failed:
            raise SystemExit(f"a candidate failed: {failed[0].args}")
        running = [p for p in running if p.poll() is None]
    rows = []
    for name in names:
        rows += json.loads((root / "bench_cpu_scale" / name / "rows.json").read_text())
    write_json(root / "bench_cpu_scale.json", {"budget_cpu_s": args.budget, "rows": rows})
    print(format_table(rows))


if __name__ == "__main__":
    main()
