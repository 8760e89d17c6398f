"""A synthetic but complete study on disk, for the store's and the report's tests and benchmarks.

:func:`write_study` writes what a finished sweep leaves under a results root: the saved plan
(``plans/<sweep>/plan.json``), the submission log (``jobs.jsonl``) and one artifact per stage
instance (``fid_ref``, per-encoder ``spatial`` and ``probe``, per-run ``train`` with its
``train_log.jsonl``, per-run-and-step ``eval``), every one written through
:func:`harness.artifacts.write_result` with the payload formats of docs/architecture.md.
:func:`harness.store.ingest.ingest` then loads it like any real study. ::

    manifest = write_study(root, SyntheticStudy(n_encoders=12, fid=FidModel(slope=-40.0)))
    ingest(root)

The generating model is explicit, so a test knows the right answer:

* every encoder's LDS, CDS, SRSS, RMSC and linear-probe top-1 are drawn independently
  (uniform), unless ``encoder_values`` fixes some of them;
* a run's FID follows :class:`FidModel`: linear in one encoder metric (LDS by default) plus
  per-model / per-method offsets and Gaussian noise, approached from above over training steps;
  every other metric, the linear probe included, plays no part in it;
* ``unmeasured``, ``eval_metrics``, ``skip_evals`` and ``failed`` leave values out the way real
  sweeps do (a metric not measured, an evaluation not run yet, a training run that failed);
* ``protocols`` gives the evaluations of selected runs other protocol fields.

Every number written is returned in a :class:`Manifest`, so a test can compare what the
database holds with what was written.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.artifacts import write_result
from harness.config.model import sit_arch
from harness.io import content_hash, write_json, write_text
from harness.paths import plan_dir, stage_dir
from harness.store.published import PUBLISHED_CSV, read_published

METRICS = ("lds", "cds", "srss", "rmsc")  # spatial metrics (the spatial stage)
ENCODER_METRICS = (*METRICS, "lp_top1")  # + linear-probe top-1 (the probe stage)
EVAL_VALUES = {  # what every synthetic evaluation reports besides its FID
    "isc_mean": 2.0,
    "isc_std": 0.1,
    "kid_mean": 0.01,
    "kid_std": 0.001,
    "precision": 0.5,
    "recall": 0.4,
}
EVAL_METRICS = ("fid", *EVAL_VALUES)  # the metrics keys of an eval payload
GRID = 4  # side of the token grid of every run and every encoder measurement
DATA = {  # the generated dataset every synthetic stage uses (one data_key)
    "source": "generated",
    "resolution": 32,
    "num_classes": 4,
    "train_images": 64,
    "val_images": 32,
    "seed": 0,
}


@dataclass(frozen=True)
class Runs:
    """Selects training runs by their labels; a field left None matches every run."""

    encoder: str | None = None  # encoder name (baseline runs have none: use method="none")
    method: str | None = None  # none | repa | irepa
    model: str | None = None  # SiT size
    seed: int | None = None  # training seed

    def matches(self, labels: Mapping[str, Any]) -> bool:
        return all(v is None or labels.get(k) == v for k, v in asdict(self).items())


@dataclass(frozen=True)
class FidModel:
    """How a run's FID is generated.

    ``FID(run, step) = (intercept + model_offsets[model] + method_offsets[method]
    + slope · encoder[metric]) · (1 + decay · (steps_target / step - 1)) + N(0, noise²)``;
    baseline (``none``) runs have no encoder term. Offsets default to 0.
    """

    metric: str = "lds"  # the encoder metric FID depends on
    intercept: float = 60.0  # FID of a metric value of 0 at the last step
    slope: float = -50.0  # FID change per unit of the metric
    noise: float = 1.0  # standard deviation of the Gaussian noise, per evaluation
    decay: float = 0.5  # how much higher FID is early in training
    model_offsets: Mapping[str, float] = field(default_factory=dict)  # model -> FID offset
    method_offsets: Mapping[str, float] = field(default_factory=dict)  # method -> FID offset

    def final(self, model: str, method: str, value: float | None) -> float:
        """The noise-free FID at the last step (``value``: the encoder's metric, None: none)."""
        base = self.intercept + self.model_offsets.get(model, 0.0)
        return base + self.method_offsets.get(method, 0.0) + self.slope * (value or 0.0)

    def at(self, final: float, step: int, steps_target: int, rng: random.Random) -> float:
        """The FID at ``step`` of a run whose noise-free final FID is ``final``."""
        return final * (1.0 + self.decay * (steps_target / step - 1.0)) + rng.gauss(0, self.noise)


@dataclass(frozen=True)
class SyntheticStudy:
    """The shape of a synthetic study: its sweep name, the grid of runs and what is missing."""

    sweep: str = "synthetic"  # plans/<sweep>/
    n_encoders: int = 4  # encoders enc-00, enc-01, ...
    methods: tuple[str, ...] = ("repa", "irepa")  # alignment methods (+ one 'none' per model/seed)
    models: tuple[str, ...] = ("SiT-T/2",)  # model sizes (none: encoder measurements only)
    seeds: tuple[int, ...] = (0,)  # training seeds
    eval_steps: tuple[int, ...] = (50, 100)  # evaluated checkpoint steps (last = steps_target)
    log_every: int = 10  # train_log.jsonl rows every this many steps
    per_image: int = 8  # rows of each per_image.csv
    seed: int = 0  # seed of the generated numbers
    write_threads: int = 8  # artifacts written in parallel
    fid: FidModel = field(default_factory=FidModel)  # how FIDs are generated
    # encoder -> metric values (lds, cds, srss, rmsc, lp_top1) used instead of drawn ones
    encoder_values: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # encoder -> metrics not measured (all four spatial ones: no spatial stage; lp_top1: no probe)
    unmeasured: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # encoder -> published_name (None: the papers do not have it); default Synthetic-<index>
    published_names: Mapping[str, str | None] = field(default_factory=dict)
    random_weights: tuple[str, ...] = ()  # encoders measured with random weights (recorded)
    eval_metrics: tuple[str, ...] = EVAL_METRICS  # metrics every evaluation reports
    # (runs, protocol fields): the selected runs' evaluations use these fields (applied in order)
    protocols: tuple[tuple[Runs, Mapping[str, Any]], ...] = ()
    skip_evals: tuple[tuple[Runs, int], ...] = ()  # (runs, step): evaluation planned, not run
    failed: tuple[tuple[Runs, int], ...] = ()  # (runs, step): training failed after step; no evals

    def __post_init__(self) -> None:
        """Refuse knobs that name an unknown encoder or metric (a typo would go unnoticed)."""
        encoders = set(self.encoders)
        for knob in ("encoder_values", "unmeasured", "published_names", "random_weights"):
            if unknown := set(getattr(self, knob)) - encoders:
                raise ValueError(f"{knob}: unknown encoder(s) {sorted(unknown)}")
        named = [*self.unmeasured.values(), *self.encoder_values.values(), [self.fid.metric]]
        if unknown := {m for metrics in named for m in metrics} - set(ENCODER_METRICS):
            raise ValueError(f"unknown encoder metric(s) {sorted(unknown)}: {ENCODER_METRICS}")
        if unknown := set(self.eval_metrics) - set(EVAL_METRICS):
            raise ValueError(f"eval_metrics: unknown {sorted(unknown)}; allowed: {EVAL_METRICS}")

    @property
    def encoders(self) -> list[str]:
        return [f"enc-{i:02d}" for i in range(self.n_encoders)]

    @property
    def steps_target(self) -> int:
        return max(self.eval_steps)

    def published_name(self, encoder: str) -> str | None:
        """The encoder's ``published_name`` (default ``Synthetic-<index>``)."""
        default = f"Synthetic-{self.encoders.index(encoder)}"
        return self.published_names.get(encoder, default)

    def protocol(self, labels: Mapping[str, Any]) -> dict[str, Any]:
        """The evaluation protocol of the run with ``labels``."""
        fields = protocol()
        for runs, overrides in self.protocols:
            if runs.matches(labels):
                fields.update(overrides)
        return fields


@dataclass
class Manifest:
    """What :func:`write_study` wrote, for comparison with the database."""

    stages: dict[str, list[str]] = field(default_factory=dict)  # stage -> planned keys
    unwritten: set[str] = field(default_factory=set)  # planned keys without an artifact
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_id -> labels + train_key
    fid: dict[tuple[str, int], float | None] = field(default_factory=dict)  # (run_id, step) -> FID
    # (run_id, step) -> protocol_key (content hash of the eval's protocol)
    protocol_keys: dict[tuple[str, int], str] = field(default_factory=dict)
    # encoder -> lds, cds, srss, rmsc, lp_top1 as the database should show them (None: unmeasured)
    encoder_metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    train_log_rows: int = 0  # rows over all train logs
    per_image_rows: int = 0  # rows over all per-image tables

    @property
    def n_artifacts(self) -> int:
        """Stage instances planned (each a row of the ``stages`` table)."""
        return sum(len(keys) for keys in self.stages.values())

    @property
    def protocol_key(self) -> str:
        """The protocol key of every evaluation (ValueError when they differ)."""
        keys = set(self.protocol_keys.values())
        if len(keys) != 1:
            raise ValueError(f"the evaluations have {len(keys)} protocol keys, not one")
        return keys.pop()

    def run_ids(self, runs: Runs) -> list[str]:
        """The ids of the runs ``runs`` selects, sorted."""
        return sorted(rid for rid, labels in self.runs.items() if runs.matches(labels))


def encoder_spec(name: str, index: int, published_name: str | None) -> dict[str, Any]:
    """A catalogue entry as the plan's spatial / probe / train stage configs carry it."""
    return {
        "name": name,
        "family": "synthetic",
        "source": "builtin",
        "model_id": f"synthetic/{name}",
        "embed_dim": 64 * (index % 4 + 1),
        "patch_size": 16,
        "published_name": published_name,
        "irepa27": False,
    }


def protocol() -> dict[str, Any]:
    """The default evaluation protocol of every synthetic eval."""
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


def published_fids(paper: str, model: str, method: str, train_steps: int) -> dict[str, float]:
    """``{published encoder name: gFID}`` of one table of the shipped published results (no CFG),
    to name synthetic encoders after real ones; a value the paper repeats is averaged."""
    values: dict[str, list[float]] = {}
    for row in read_published(PUBLISHED_CSV.read_bytes()):
        if (row["paper"], row["model"], row["method"], row["train_iters"], row["cfg"]) == (
            paper,
            model,
            method,
            train_steps,
            1.0,
        ) and row["metric"] == "gFID":
            values.setdefault(row["encoder"], []).append(row["value"])
    return {name: sum(v) / len(v) for name, v in sorted(values.items())}


def write_study(root: Path, study: SyntheticStudy | None = None) -> Manifest:
    """Write the plan, the submission log and every stage artifact of ``study`` under ``root``."""
    study = study or SyntheticStudy()
    builder = _Builder(study)
    builder.build()
    builder.write(root)
    return builder.manifest


@dataclass
class _Stage:
    """One planned stage instance and, when it ran, its artifact."""

    stage: str
    key: str
    labels: dict[str, Any]
    config: dict[str, Any]
    needs: list[str]
    payload: dict[str, Any] | None  # None: planned only (no artifact)
    submitted: bool = True  # listed in jobs.jsonl
    status: str = "done"  # result.json status
    error: str | None = None  # result.json error
    extra: Any = None  # train_log rows (train) or per-image rows (spatial)


class _Builder:
    """Builds the stage instances of a study, then writes them."""

    def __init__(self, study: SyntheticStudy) -> None:
        self.study = study
        self.rng = random.Random(study.seed)
        self.manifest = Manifest()
        self.planned: list[_Stage] = []
        self.encoder_keys: dict[str, list[str]] = {}  # encoder -> its spatial / probe keys
        self.values: dict[str, dict[str, float]] = {}  # encoder -> true metric values
        self.ref_key = ""  # the fid_ref stage every eval needs

    def add(self, item: _Stage) -> None:
        self.manifest.stages.setdefault(item.stage, []).append(item.key)
        if item.payload is None:
            self.manifest.unwritten.add(item.key)
        self.planned.append(item)

    def build(self) -> None:
        self.ref_key = self._fid_ref()
        for name in self.study.encoders:
            self._encoder(name)
        grid = [(None, "none")] + [(e, m) for e in self.study.encoders for m in self.study.methods]
        for model in self.study.models:
            for seed in self.study.seeds:
                for encoder, method in grid:
                    self._run(model, seed, encoder, method)

    # ------------------------------------------------------------------------- stage instances
    def _fid_ref(self) -> str:
        config = {"data": DATA, "eval": {"extractor": "inception-v3-compat"}}
        key = content_hash({"stage": "fid_ref", **config})
        payload = {
            "reference_key": "ref-synthetic",
            "extractor": "inception-v3-compat",
            "n_images": 32,
            "dataset": DATA,
        }
        self.add(_Stage("fid_ref", key, {}, config, [], payload))
        return key

    def _spec(self, name: str) -> dict[str, Any]:
        study = self.study
        return encoder_spec(name, study.encoders.index(name), study.published_name(name))

    def _encoder(self, name: str) -> None:
        study, rng = self.study, self.rng
        drawn = {m: round(rng.uniform(0.05, 0.9), 6) for m in METRICS}
        drawn["lp_top1"] = round(rng.uniform(20.0, 85.0), 4)
        values = {**drawn, **study.encoder_values.get(name, {})}
        unmeasured = set(study.unmeasured.get(name, ()))
        self.values[name] = values  # FID depends on them even when unmeasured
        self.manifest.encoder_metrics[name] = {
            m: None if m in unmeasured else values[m] for m in ENCODER_METRICS
        }
        common = {
            "encoder": name,
            "encoder_spec": self._spec(name),
            "data": DATA,
            "grid": [GRID, GRID],
        }
        keys = []
        # as the spatial / probe stages record it (absent: the generator's default payloads)
        random = {"random_weights": True} if name in study.random_weights else {}
        measured = [m for m in METRICS if m not in unmeasured]
        if measured:
            config = {**common, "spatial": {"far_dist": 6, "dmax": 8}}
            per_image = [
                [
                    i,
                    *(
                        round(values[m] + rng.gauss(0, 0.01), 6) if m in measured else ""
                        for m in METRICS
                    ),
                ]
                for i in range(study.per_image)
            ]
            self.manifest.per_image_rows += len(per_image)
            key = content_hash({"stage": "spatial", **config})
            payload = {
                "encoder": name,
                "dataset": DATA,
                "n_images": study.per_image,
                "grid": [GRID, GRID],
                "metrics": {
                    m: {"mean": values[m], "std": 0.01, "n": study.per_image} for m in measured
                },
                "params": {"far_dist": 6, "dmax": 8},
                **random,
            }
            self.add(
                _Stage("spatial", key, {"encoder": name}, config, [], payload, extra=per_image)
            )
            keys.append(key)
        if "lp_top1" not in unmeasured:
            config = {**common, "probe": {"pooling": "mean"}}
            key = content_hash({"stage": "probe", **config})
            top1 = values["lp_top1"]
            payload = {
                "encoder": name,
                "pooling": "mean",
                "top1": top1,
                "top5": min(100.0, top1 + 10),
                "best_lr": 0.01,
                "grid": [
                    {"lr": 0.001, "holdout_top1": top1 - 1},
                    {"lr": 0.01, "holdout_top1": top1},
                ],
                "n_train": 64,
                "n_val": 32,
                "subset_per_class": None,
                "features_key": content_hash(["features", name]),
                **random,
            }
            self.add(_Stage("probe", key, {"encoder": name}, config, [], payload))
            keys.append(key)
        self.encoder_keys[name] = keys

    def _run(self, model: str, seed: int, encoder: str | None, method: str) -> None:
        study, rng = self.study, self.rng
        target = study.steps_target
        run_id = content_hash({"encoder": encoder, "method": method, "model": model, "seed": seed})
        labels = {
            "encoder": encoder,
            "method": method,
            "model": model,
            "seed": seed,
            "run_id": run_id,
        }
        failed_at = next((s for runs, s in study.failed if runs.matches(labels)), None)
        reached = target if failed_at is None else failed_at
        run = {
            "data": DATA,
            "encoder": encoder,
            "method": method,
            # the input side that gives the measured 4x4 token grid (runs.grid)
            "model": {"name": model, "input_size": GRID * sit_arch(model).patch},
            "seed": seed,
            "train": {"steps": target},
        }
        config = {
            "run": run,
            "run_id": run_id,
            "encoder_spec": self._spec(encoder) if encoder else None,
        }
        train_key = content_hash({"stage": "train", **config})
        log_rows = [
            _log_row(step, target, aligned=method != "none")
            for step in range(study.log_every, reached + 1, study.log_every)
        ]
        self.manifest.train_log_rows += len(log_rows)
        last = log_rows[-1] if log_rows else {}
        payload = {
            "run_id": run_id,
            "encoder": encoder,
            "method": method,
            "model": model,
            "seed": seed,
            "steps_target": target,
            "steps_done": reached,
            "final": {k: last.get(k) for k in ("loss", "flow_loss", "proj_loss", "align_cos")},
            "images_per_s": 100.0,
            "checkpoints": {},
            "diverged": None,
        }
        self.add(
            _Stage(
                "train",
                train_key,
                labels,
                config,
                self.encoder_keys.get(encoder or "", []),
                payload,
                status="done" if failed_at is None else "failed",
                error=None if failed_at is None else f"synthetic failure after step {failed_at}",
                extra=log_rows,
            )
        )
        self.manifest.runs[run_id] = {**labels, "train_key": train_key}
        value = self.values[encoder][study.fid.metric] if encoder else None
        final = study.fid.final(model, method, value)
        fields = study.protocol(labels)
        for step in study.eval_steps:
            config = {"run_id": run_id, "step": step, "eval": fields, "model": {"name": model}}
            key = content_hash({"stage": "eval", **config, "train": train_key})
            skipped = any(runs.matches(labels) and s == step for runs, s in study.skip_evals)
            stage = _Stage(
                "eval", key, {**labels, "step": step}, config, [train_key, self.ref_key], None
            )
            fid = round(study.fid.at(final, step, target, rng), 4)
            if failed_at is not None or skipped:
                stage.submitted = failed_at is None  # waiting, or never submitted (train failed)
                self.add(stage)
                continue
            metrics = {"fid": fid, **EVAL_VALUES}
            stage.payload = {
                "run_id": run_id,
                "step": step,
                "metrics": {k: v for k, v in metrics.items() if k in study.eval_metrics},
                "protocol": fields,
            }
            self.manifest.fid[(run_id, step)] = fid if "fid" in study.eval_metrics else None
            self.manifest.protocol_keys[(run_id, step)] = content_hash(fields)
            self.add(stage)

    # ------------------------------------------------------------------------- files
    def write(self, root: Path) -> None:
        study = self.study
        plan = {
            "schema": 1,
            "sweep": study.sweep,
            "created_at": time.time(),
            "git_sha": None,
            "config": {"synthetic": True, "n_encoders": study.n_encoders},
            "stages": [
                {
                    "key": s.key,
                    "stage": s.stage,
                    "label": f"{s.stage} {' '.join(str(v) for v in s.labels.values())}".strip(),
                    "needs": s.needs,
                    "labels": s.labels,
                    "est_gpu_hours": 0.01,
                    "config": s.config,
                }
                for s in self.planned
            ],
        }
        write_json(plan_dir(root, study.sweep) / "plan.json", plan)
        submitted_at = time.time()
        jobs = [s for s in self.planned if s.submitted]
        write_text(
            plan_dir(root, study.sweep) / "jobs.jsonl",
            "".join(
                _jsonl(
                    {
                        "key": s.key,
                        "job_id": str(1000 + i),
                        "executor": "debug",
                        "submitted_at": submitted_at,
                        "attempt": 0,
                    }
                )
                for i, s in enumerate(jobs)
            ),
        )
        written = [s for s in self.planned if s.payload is not None]
        with ThreadPoolExecutor(study.write_threads) as pool:
            list(pool.map(lambda s: _write_artifact(root, s), written))


def _log_row(step: int, target: int, *, aligned: bool) -> dict[str, Any]:
    """One train_log.jsonl row: losses fall and the alignment rises over training."""
    decay = math.exp(-3.0 * step / target)
    return {
        "step": step,
        "loss": round(0.5 + decay, 6),
        "flow_loss": round(0.5 + 0.8 * decay, 6),
        "proj_loss": round(-(0.8 - 0.5 * decay), 6) if aligned else 0.0,
        "align_cos": round(0.8 - 0.5 * decay, 6) if aligned else None,
        "grad_norm": round(1.0 + decay, 6),
        "lr": 1e-4,
        "images_per_s": 100.0,
        "time": float(step),
    }


def _write_artifact(root: Path, item: _Stage) -> None:
    out = stage_dir(root, item.stage, item.key)
    out.mkdir(parents=True, exist_ok=True)
    if item.stage == "train":
        write_text(out / "train_log.jsonl", "".join(_jsonl(row) for row in item.extra))
    elif item.stage == "spatial":
        header = "index," + ",".join(METRICS) + "\n"
        write_text(
            out / "per_image.csv",
            header + "".join(",".join(str(v) for v in row) + "\n" for row in item.extra),
        )
    assert item.payload is not None
    write_result(
        out,
        stage=item.stage,
        key=item.key,
        config=item.config,
        payload=item.payload,
        status=item.status,
        error=item.error,
        started_at=time.time() - 1.0,
    )


def _jsonl(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True) + "\n"
