"""A synthetic but complete study on disk, for the store's tests and benchmark.

:func:`write_study` writes what a finished sweep leaves under a results root: the saved plan
(``plans/<sweep>/plan.json``), the submission log (``jobs.jsonl``) and one artifact per stage
instance (``fid_ref``, per-encoder ``spatial`` and ``probe``, per-run ``train`` with its
``train_log.jsonl``, per-run-and-step ``eval``), every one written through
:func:`harness.artifacts.write_result` with the payload formats of docs/architecture.md.
Numbers are drawn from a seeded generator and returned in a :class:`Manifest`, so a test can
compare what the database holds with what was written.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.artifacts import write_result
from harness.io import content_hash, write_json, write_text
from harness.paths import plan_dir, stage_dir

METRICS = ("lds", "cds", "srss", "rmsc")
DATA = {  # the generated dataset every synthetic stage uses (one data_key)
    "source": "generated",
    "resolution": 32,
    "num_classes": 4,
    "train_images": 64,
    "val_images": 32,
    "seed": 0,
}


@dataclass(frozen=True)
class SyntheticStudy:
    """The shape of a synthetic study: its sweep name and the grid of runs."""

    sweep: str = "synthetic"  # plans/<sweep>/
    n_encoders: int = 4  # encoders enc-00, enc-01, ...
    methods: tuple[str, ...] = ("repa", "irepa")  # alignment methods (+ one 'none' per model/seed)
    models: tuple[str, ...] = ("SiT-T/2",)  # model sizes
    seeds: tuple[int, ...] = (0,)  # training seeds
    eval_steps: tuple[int, ...] = (50, 100)  # evaluated checkpoint steps (last = steps_target)
    log_every: int = 10  # train_log.jsonl rows every this many steps
    per_image: int = 8  # rows of each per_image.csv
    seed: int = 0  # seed of the generated numbers
    write_threads: int = 8  # artifacts written in parallel

    @property
    def encoders(self) -> list[str]:
        return [f"enc-{i:02d}" for i in range(self.n_encoders)]

    @property
    def steps_target(self) -> int:
        return max(self.eval_steps)


@dataclass
class Manifest:
    """What :func:`write_study` wrote, for comparison with the database."""

    stages: dict[str, list[str]] = field(default_factory=dict)  # stage -> keys
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_id -> labels + train_key
    fid: dict[tuple[str, int], float] = field(default_factory=dict)  # (run_id, step) -> FID
    encoder_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # lds.., lp_top1
    train_log_rows: int = 0  # rows over all train logs
    per_image_rows: int = 0  # rows over all per-image tables
    protocol_key: str = ""  # content hash of the eval protocol

    @property
    def n_artifacts(self) -> int:
        return sum(len(keys) for keys in self.stages.values())


def encoder_spec(name: str, index: int) -> dict[str, Any]:
    """A catalogue entry as the plan's spatial / probe stage configs carry it."""
    return {
        "name": name,
        "family": "synthetic",
        "source": "builtin",
        "model_id": f"synthetic/{name}",
        "embed_dim": 64 * (index % 4 + 1),
        "patch_size": 16,
        "published_name": f"Synthetic-{index}",
        "irepa27": False,
    }


def protocol() -> dict[str, Any]:
    """The evaluation protocol of every synthetic eval."""
    return {
        "num_samples": 64,
        "sampler": "sde",
        "nfe": 25,
        "cfg_scale": 1.0,
        "guidance_low": 0.0,
        "guidance_high": 1.0,
        "vae": "synthetic-vae",
        "seed": 0,
        "reference_key": "ref-synthetic",
        "extractor": "inception-v3-compat",
        "extractor_weights": "synthetic",
        "extractor_substitute": True,
        "torch_fidelity": "0.4.0",
    }


def write_study(root: Path, study: SyntheticStudy | None = None) -> Manifest:
    """Write the plan, the submission log and every stage artifact of ``study`` under ``root``."""
    study = study or SyntheticStudy()
    rng = random.Random(study.seed)
    manifest = Manifest(protocol_key=content_hash(protocol()))
    planned: list[dict[str, Any]] = []
    jobs: list[tuple[str, str, dict[str, Any], dict[str, Any], list[dict[str, Any]] | None]] = []

    def add(
        stage: str,
        key: str,
        labels: dict[str, Any],
        config: dict[str, Any],
        payload: dict[str, Any],
        needs: list[str],
        extra: Any = None,
    ) -> None:
        manifest.stages.setdefault(stage, []).append(key)
        label = " ".join(str(v) for v in labels.values()) or stage
        planned.append(
            {
                "key": key,
                "stage": stage,
                "label": f"{stage} {label}",
                "needs": needs,
                "labels": labels,
                "est_gpu_hours": 0.01,
                "config": config,
            }
        )
        jobs.append((stage, key, config, payload, extra))

    ref_config = {"data": DATA, "eval": {"extractor": "inception-v3-compat"}}
    ref_key = content_hash({"stage": "fid_ref", **ref_config})
    add(
        "fid_ref",
        ref_key,
        {},
        ref_config,
        {
            "reference_key": "ref-synthetic",
            "extractor": "inception-v3-compat",
            "n_images": 32,
            "dataset": DATA,
        },
        [],
    )

    encoder_keys: dict[str, list[str]] = {}
    for index, name in enumerate(study.encoders):
        spec = encoder_spec(name, index)
        values = {m: round(rng.uniform(0.05, 0.9), 6) for m in METRICS}
        values["lp_top1"] = round(rng.uniform(20.0, 85.0), 4)
        manifest.encoder_metrics[name] = values
        common = {"encoder": name, "encoder_spec": spec, "data": DATA, "grid": [4, 4]}
        spatial_config = {**common, "spatial": {"far_dist": 6, "dmax": 8}}
        per_image = [
            [i, *(round(values[m] + rng.gauss(0, 0.01), 6) for m in METRICS)]
            for i in range(study.per_image)
        ]
        manifest.per_image_rows += len(per_image)
        spatial_key = content_hash({"stage": "spatial", **spatial_config})
        add(
            "spatial",
            spatial_key,
            {"encoder": name},
            spatial_config,
            {
                "encoder": name,
                "dataset": DATA,
                "n_images": study.per_image,
                "grid": [4, 4],
                "metrics": {
                    m: {"mean": values[m], "std": 0.01, "n": study.per_image} for m in METRICS
                },
                "params": {"far_dist": 6, "dmax": 8},
            },
            [],
            per_image,
        )
        probe_config = {**common, "probe": {"pooling": "mean"}}
        probe_key = content_hash({"stage": "probe", **probe_config})
        add(
            "probe",
            probe_key,
            {"encoder": name},
            probe_config,
            {
                "encoder": name,
                "pooling": "mean",
                "top1": values["lp_top1"],
                "top5": min(100.0, values["lp_top1"] + 10),
                "best_lr": 0.01,
                "grid": [
                    {"lr": 0.001, "holdout_top1": values["lp_top1"] - 1},
                    {"lr": 0.01, "holdout_top1": values["lp_top1"]},
                ],
                "n_train": 64,
                "n_val": 32,
                "subset_per_class": None,
                "features_key": content_hash(["features", name]),
            },
            [],
        )
        encoder_keys[name] = [spatial_key, probe_key]

    grid = [(None, "none")] + [(e, m) for e in study.encoders for m in study.methods]
    for model in study.models:
        for seed in study.seeds:
            for encoder, method in grid:
                _add_run(
                    study, rng, manifest, add, ref_key, encoder_keys, model, seed, encoder, method
                )

    plan = {
        "schema": 1,
        "sweep": study.sweep,
        "created_at": time.time(),
        "git_sha": None,
        "config": {"synthetic": True, "n_encoders": study.n_encoders},
        "stages": planned,
    }
    write_json(plan_dir(root, study.sweep) / "plan.json", plan)
    submitted_at = time.time()
    write_text(
        plan_dir(root, study.sweep) / "jobs.jsonl",
        "".join(
            f'{{"key": "{key}", "job_id": "{1000 + i}", "executor": "debug", '
            f'"submitted_at": {submitted_at}, "attempt": 0}}\n'
            for i, (_, key, _, _, _) in enumerate(jobs)
        ),
    )
    with ThreadPoolExecutor(study.write_threads) as pool:
        list(pool.map(lambda job: _write_artifact(root, *job), jobs))
    return manifest


def _add_run(
    study: SyntheticStudy,
    rng: random.Random,
    manifest: Manifest,
    add: Any,
    ref_key: str,
    encoder_keys: dict[str, list[str]],
    model: str,
    seed: int,
    encoder: str | None,
    method: str,
) -> None:
    run_id = content_hash({"encoder": encoder, "method": method, "model": model, "seed": seed})
    labels = {"encoder": encoder, "method": method, "model": model, "seed": seed, "run_id": run_id}
    run = {
        "data": DATA,
        "encoder": encoder,
        "method": method,
        "model": {"name": model},
        "seed": seed,
        "train": {"steps": study.steps_target},
    }
    spec = encoder_spec(encoder, study.encoders.index(encoder)) if encoder else None
    train_config = {"run": run, "run_id": run_id, "encoder_spec": spec}
    train_key = content_hash({"stage": "train", **train_config})
    log_rows = [
        {
            "step": step,
            "loss": round(1.0 / (1 + step / 50), 6),
            "flow_loss": 0.5,
            "proj_loss": 0.0 if method == "none" else -0.5,
            "align_cos": 0.5,
            "grad_norm": 1.0,
            "lr": 1e-4,
            "images_per_s": 100.0,
            "time": float(step),
        }
        for step in range(study.log_every, study.steps_target + 1, study.log_every)
    ]
    manifest.train_log_rows += len(log_rows)
    last = log_rows[-1] if log_rows else {}
    add(
        "train",
        train_key,
        labels,
        train_config,
        {
            "run_id": run_id,
            "encoder": encoder,
            "method": method,
            "model": model,
            "seed": seed,
            "steps_target": study.steps_target,
            "steps_done": study.steps_target,
            "final": {k: last.get(k) for k in ("loss", "flow_loss", "proj_loss", "align_cos")},
            "images_per_s": 100.0,
            "checkpoints": {},
            "diverged": None,
        },
        encoder_keys.get(encoder or "", []),
        log_rows,
    )
    manifest.runs[run_id] = {**labels, "train_key": train_key}
    base = 60.0 - (0.0 if encoder is None else 50.0 * manifest.encoder_metrics[encoder]["lds"])
    for step in study.eval_steps:
        fid = round(base * (1.0 + study.steps_target / step) / 2 + rng.gauss(0, 1.0), 4)
        manifest.fid[(run_id, step)] = fid
        eval_config = {"run_id": run_id, "step": step, "eval": protocol(), "model": {"name": model}}
        add(
            "eval",
            content_hash({"stage": "eval", **eval_config, "train": train_key}),
            {**labels, "step": step},
            eval_config,
            {
                "run_id": run_id,
                "step": step,
                "metrics": {
                    "fid": fid,
                    "isc_mean": 2.0,
                    "isc_std": 0.1,
                    "kid_mean": 0.01,
                    "kid_std": 0.001,
                    "precision": 0.5,
                    "recall": 0.4,
                },
                "protocol": protocol(),
            },
            [train_key, ref_key],
        )


def _write_artifact(
    root: Path, stage: str, key: str, config: dict[str, Any], payload: dict[str, Any], extra: Any
) -> None:
    out = stage_dir(root, stage, key)
    out.mkdir(parents=True, exist_ok=True)
    if stage == "train":
        write_text(out / "train_log.jsonl", "".join(_jsonl(row) for row in extra))
    elif stage == "spatial":
        header = "index," + ",".join(METRICS) + "\n"
        write_text(
            out / "per_image.csv",
            header + "".join(",".join(str(v) for v in row) + "\n" for row in extra),
        )
    write_result(
        out, stage=stage, key=key, config=config, payload=payload, started_at=time.time() - 1.0
    )


def _jsonl(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True) + "\n"
