"""A synthetic results database with the report's read contract, for tests, benchmarks and demos.

The generating model is explicit, so a test knows the right answer: every encoder gets a
random LDS, CDS/SRSS/RMSC that follow LDS, and a linear-probe accuracy independent of all of
them; FID at the last step is ``fid_intercept + fid_slope · LDS + noise`` (plus a per-method and
per-model offset), approached from above over training steps. ::

    tables = synthetic_tables(n_encoders=12, methods=("repa", "irepa"), seed=0)
    write_database(tmp_path / "harness.duckdb", tables)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.schema import READ_CONTRACT, columns

MODEL_OFFSETS = {"SiT-B/2": 20.0, "SiT-L/2": 8.0, "SiT-XL/2": 4.0}  # FID offset per model size
METHOD_OFFSETS = {"none": 12.0, "repa": 0.0, "irepa": -3.0}  # FID offset per alignment method


def synthetic_tables(
    *,
    n_encoders: int = 12,
    methods: Sequence[str] = ("repa", "irepa"),
    models: Sequence[str] = ("SiT-B/2",),
    seeds: Sequence[int] = (0,),
    eval_steps: Sequence[int] = (25_000, 50_000, 100_000),
    log_points: int = 20,
    fid_intercept: float = 30.0,
    fid_slope: float = -40.0,
    fid_noise: float = 0.5,
    with_baseline: bool = True,
    sweep: str = "synthetic",
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Build every table of :data:`~harness.report.schema.READ_CONTRACT` from a known model.

    Args:
        n_encoders: encoders ``enc-00``, ``enc-01``, ... (published names ``Enc-00``, ...).
        methods: alignment methods trained per encoder; models: SiT sizes; seeds: run seeds.
        eval_steps: evaluation steps of every run (FID decays towards its final value).
        log_points: rows of ``train_log`` per run.
        fid_intercept, fid_slope, fid_noise: final FID = intercept + slope·LDS + N(0, noise²).
        with_baseline: also add a ``none`` run per model and seed.
        sweep: the sweep name; seed: RNG seed of the whole database.

    Returns:
        ``{table name: DataFrame}`` with exactly the contract's columns.
    """
    rng = np.random.default_rng(seed)
    names = [f"enc-{i:02d}" for i in range(n_encoders)]
    lds = rng.uniform(0.05, 0.45, n_encoders)
    encoder_metrics = pd.DataFrame(
        {
            "encoder": names,
            "lds": lds,
            "cds": 0.12 * lds + rng.normal(0, 0.002, n_encoders),
            "srss": 0.9 * lds + rng.normal(0, 0.01, n_encoders),
            "rmsc": 0.3 + 1.2 * lds + rng.normal(0, 0.02, n_encoders),
            "lp_top1": rng.uniform(40.0, 85.0, n_encoders),  # independent of everything
            "lp_top5": rng.uniform(70.0, 97.0, n_encoders),
        }
    )
    protocol = {
        "num_samples": 10_000,
        "sampler": "sde-euler",
        "nfe": 250,
        "cfg_scale": 1.0,
        "guidance_low": 0.0,
        "guidance_high": 1.0,
        "vae": "sd-vae-ft-ema",
        "reference_key": "ref-synthetic",
        "extractor": "inception-v3-compat",
        "extractor_substitute": False,
        "protocol_key": "proto-synthetic",
    }
    jobs = [(enc, m, model, s) for enc in names for m in methods for model in models for s in seeds]
    if with_baseline:
        jobs += [(None, "none", model, s) for model in models for s in seeds]
    final_noise = {(e, m, model): rng.normal(0, fid_noise) for e, m, model, _ in jobs}
    by_name = encoder_metrics.set_index("encoder")
    study, runs, logs = [], [], []
    last = max(eval_steps)
    for enc, method, model, run_seed in jobs:
        run_id = f"{sweep}-{enc or 'none'}-{method}-{_slug(model)}-s{run_seed}"
        spatial = by_name.loc[enc] if enc is not None else None
        base = MODEL_OFFSETS.get(model, 10.0) + METHOD_OFFSETS.get(method, 0.0)
        structure = fid_slope * float(spatial["lds"]) if spatial is not None else 0.0
        final = fid_intercept + base + structure + final_noise[(enc, method, model)]
        final += rng.normal(0, fid_noise * 0.2)  # seed-to-seed spread
        for step in eval_steps:
            row = {
                "sweep": sweep,
                "run_id": run_id,
                "encoder": enc,
                "method": method,
                "model": model,
                "seed": run_seed,
                "step": step,
                "train_status": "done",
                "fid": final * (1.0 + 2.0 * (1.0 - step / last)),
                "isc": 50.0 - final,
                "kid": final / 1000.0,
                "precision": 0.6,
                "recall": 0.5,
                "fd_dinov2": 10.0 * final,
                **protocol,
                "published_name": f"Enc-{enc[4:]}" if enc else None,
            }
            for key in ("lp_top1", "lp_top5", "lds", "cds", "srss", "rmsc"):
                row[key] = float(spatial[key]) if spatial is not None else None
            study.append(row)
        runs.append(
            {
                "run_id": run_id,
                "sweep": sweep,
                "encoder": enc,
                "method": method,
                "model": model,
                "seed": run_seed,
                "steps_target": last,
                "steps_done": last,
                "status": "done",
                "config": json.dumps({"method": method, "model": model}),
            }
        )
        for i, step in enumerate(np.linspace(last / log_points, last, log_points).astype(int)):
            decay = np.exp(-3.0 * (i + 1) / log_points)
            logs.append(
                {
                    "run_id": run_id,
                    "step": int(step),
                    "loss": 0.5 + decay + final / 100.0,
                    "flow_loss": 0.5 + decay,
                    "proj_loss": -(0.8 - 0.5 * decay) if method != "none" else None,
                    "align_cos": (0.8 - 0.5 * decay) if method != "none" else None,
                    "grad_norm": 1.0 + decay,
                    "lr": 1e-4,
                    "images_per_s": 800.0,
                    "time": float(i),
                }
            )
    spatial_rows = encoder_metrics.assign(dataset="synthetic-val", grid="16x16", n_images=256)
    probes = encoder_metrics.rename(columns={"lp_top1": "top1", "lp_top5": "top5"})
    tables = {
        "v_study": pd.DataFrame(study),
        "train_log": pd.DataFrame(logs),
        "runs": pd.DataFrame(runs),
        "stages": pd.DataFrame(
            [
                {
                    "key": f"k{i:04d}",
                    "stage": "train",
                    "label": r["run_id"],
                    "state": "done",
                    "job_id": str(1000 + i),
                    "error": None,
                }
                for i, r in enumerate(runs)
            ]
        ),
        "published": _published_rows(encoder_metrics, fid_intercept, fid_slope, fid_noise, rng),
        "spatial_metrics": spatial_rows,
        "probes": probes.assign(pooling="mean"),
        "encoders": pd.DataFrame(
            {
                "name": names,
                "family": ["synthetic"] * n_encoders,
                "published_name": [f"Enc-{n[4:]}" for n in names],
            }
        ),
    }
    return {name: conform(name, frame) for name, frame in tables.items()}


def _published_rows(
    metrics: pd.DataFrame, intercept: float, slope: float, noise: float, rng: np.random.Generator
) -> pd.DataFrame:
    """A 'paper' table of gFIDs for the synthetic encoders (SiT-B/2, REPA, 400K, no CFG)."""
    rows = [
        {
            "paper": "Synthetic et al.",
            "encoder": f"Enc-{enc[4:]}",
            "model": "SiT-B/2",
            "method": "repa",
            "train_steps": "400000",
            "cfg": "1.0",
            "metric": "gFID",
            "value": intercept + 20.0 + slope * lds + rng.normal(0, noise),
            "source_note": "synthetic table",
        }
        for enc, lds in zip(metrics["encoder"], metrics["lds"])
    ]
    rows.append({**rows[0], "encoder": "none", "method": "none", "value": intercept + 32.0})
    return pd.DataFrame(rows)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def conform(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Reorder ``frame`` to the contract's columns for table ``name`` (missing ones are NULL)."""
    out = frame.reindex(columns=columns(name))
    return out.astype(object).where(out.notna(), None)


def write_database(path: str | os.PathLike[str], tables: dict[str, pd.DataFrame]) -> Path:
    """Create a DuckDB file holding ``tables`` as plain tables with the contract's types.

    Tables of the contract missing from ``tables`` are created empty.
    """
    import duckdb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        for name, spec in READ_CONTRACT.items():
            ddl = ", ".join(f'"{column}" {kind}' for column, kind in spec)
            con.execute(f'CREATE OR REPLACE TABLE "{name}" ({ddl})')
            frame = tables.get(name)
            if frame is not None and len(frame):
                con.register("frame_in", conform(name, frame))
                con.execute(f'INSERT INTO "{name}" SELECT * FROM frame_in')
                con.unregister("frame_in")
        _stamp_schema_version(con)
    finally:
        con.close()
    return path


def _stamp_schema_version(con: object) -> None:
    """Mark the file as being at the store's current schema version (when the store exists),
    so that :func:`harness.store.db.open_readonly` accepts it."""
    try:
        from harness.store.db import migrations
    except ImportError:
        return
    con.execute(
        "CREATE OR REPLACE TABLE schema_version (version INTEGER, name VARCHAR, sha256 VARCHAR)"
    )  # type: ignore[attr-defined]
    for m in migrations():
        con.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [m.version, m.name, m.sha256])  # type: ignore[attr-defined]
