"""A synthetic but complete study on disk, for the store's and the report's tests and benchmarks.

A test fixture (not part of the package): :func:`write_study` writes what a finished sweep leaves
under a results root, and every file, key and id comes from the real code:

* the catalogue (``load_catalogue`` on a written ``encoders.yaml`` of cheap builtin encoders
  ``enc-00``, ``enc-01``, ...) and the sweep (``load_sweep`` on a written sweep YAML);
* the plan: :func:`harness.plan.build_plan`, saved by :func:`harness.plan.save_plan` (stage keys
  from ``Stage.key``, run ids from :func:`harness.config.run.run_id`);
* the submission log (``jobs.jsonl``) through the submitter's own writer;
* one artifact per finished stage instance, ``result.json`` through
  :func:`harness.artifacts.write_result` with the config the plan gives it, a failed training
  run's ``state.json`` through the stage runner's failure record; ``train_log.jsonl`` through the
  trainer's :class:`harness.train.steplog.StepLog`, ``per_image.csv`` through
  :func:`harness.metrics.measure.per_image_csv`; the eval protocol through the eval driver's
  ``_protocol`` and ``generation_metrics``; the fid_ref ``reference_key`` as the reference
  computes it.

Only the payload *numbers* are synthetic (``tests/test_store_real.py`` checks that the payload
keys are those of a real sweep). :func:`harness.store.ingest.ingest` then loads it like any real
study::

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
* ``protocols`` gives the evaluations of selected runs other protocol values.

Every number written is returned in a :class:`Manifest`, so a test can compare what the
database holds with what was written.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from harness.artifacts import write_result
from harness.config.data import DataConfig
from harness.config.encoders import Catalogue, load_catalogue
from harness.config.eval import EvalConfig, ProbeConfig
from harness.config.metrics import SpatialConfig
from harness.config.run import RunConfig
from harness.config.sweep import SweepConfig, load_sweep
from harness.encoders.weights import weights_provenance
from harness.io import content_hash
from harness.paths import stage_dir
from harness.plan import Plan, PlannedStage, build_plan, save_plan
from harness.stages import typed
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
# the generated dataset every synthetic stage uses (one data_key): 64-px images, SD-VAE latents
# of side 8, so every SiT-*/2 has a GRID x GRID token grid
DATA_FIELDS = {
    "source": "generated",
    "resolution": 8 * 2 * GRID,
    "num_classes": 4,
    "train_images": 64,
    "val_images": 32,
    "seed": 0,
}
DATA: dict[str, Any] = DataConfig(**DATA_FIELDS).to_dict()  # as the plan's configs carry it
# the evaluation settings of the sweep (sampler 'sde' x 25 steps, no guidance: nfe 25)
EVAL_FIELDS = {"num_samples": 64, "seed": 0, "sampler": {"mode": "sde", "num_steps": 25}}
PATCH = 2  # the patch of every SiT a synthetic study trains (SiT-*/2)

# ---------------------------------------------------------------------------------------------
# the catalogue: cheap builtin encoders of differing spatial structure
# ---------------------------------------------------------------------------------------------
ENTRY = (
    "  - {{name: {name}, family: control, source: builtin, model_id: {model}, resolution: 64, "
    "interpolation: bicubic, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25], patch_size: 16, "
    "embed_dim: {dim}, license: none{params}}}\n"
)
BUILTINS = [  # (model_id, embed_dim, params)
    ("pixels", 768, ""),
    ("noise", 768, ", params: {dim: 768}"),
    ("hog", 36, ", params: {bins: 9, cells: 2}"),
    ("pixels-blur", 768, ", params: {sigma: 8.0}"),
    ("random-cnn", 64, ", params: {dim: 64}"),
    ("pixels-blur", 768, ", params: {sigma: 2.0}"),
]


def encoder_name(index: int) -> str:
    return f"enc-{index:02d}"


def catalogue_text(n: int, published_names: Mapping[str, str | None] | None = None) -> str:
    """An ``encoders.yaml`` of ``n`` cheap builtin encoders ``enc-00``, ``enc-01``, ...;
    ``published_names`` gives some of them a ``published_name``."""
    text = "encoders:\n"
    for i in range(n):
        model, dim, params = BUILTINS[i % len(BUILTINS)]
        name = encoder_name(i)
        published = (published_names or {}).get(name)
        if published is not None:
            params += f", published_name: {published!r}"
        text += ENTRY.format(name=name, model=model, dim=dim, params=params)
    return text


def write_catalogue(path: Path, n: int) -> Path:
    """A catalogue file of ``n`` cheap builtin encoders named enc-00, enc-01, ... (the synthetic
    study's names), so their FIDs can come from a synthetic sweep and their metrics be measured."""
    path.write_text(catalogue_text(n))
    return path


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
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
    models: tuple[str, ...] = ("SiT-T/2",)  # model sizes (SiT-*/2; none: encoder stages only)
    seeds: tuple[int, ...] = (0,)  # training seeds
    eval_steps: tuple[int, ...] = (50, 100)  # evaluated checkpoint steps (last = steps_target)
    log_every: int = 10  # train_log.jsonl rows every this many steps
    per_image: int = 8  # rows of each per_image.csv (the spatial stage's image count)
    seed: int = 0  # seed of the generated numbers
    write_threads: int = 8  # artifacts written in parallel
    fid: FidModel = field(default_factory=FidModel)  # how FIDs are generated
    # encoder -> metric values (lds, cds, srss, rmsc, lp_top1) used instead of drawn ones
    encoder_values: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # encoder -> metrics not measured (all four spatial ones: spatial stage not run; lp_top1:
    # probe stage not run; some spatial ones: no finite per-image value of those)
    unmeasured: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # encoder -> published_name (None: the papers do not have it); default Synthetic-<index>
    published_names: Mapping[str, str | None] = field(default_factory=dict)
    random_weights: tuple[str, ...] = ()  # encoders measured with random weights (recorded)
    sweep_random_weights: bool = False  # the sweep's `random_weights` (every run and encoder)
    eval_metrics: tuple[str, ...] = EVAL_METRICS  # metrics every evaluation reports
    # (runs, protocol values): the selected runs' evaluations record these values of their
    # protocol (applied in order; only fields the real protocol has)
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
        if other := [m for m in self.models if not m.endswith(f"/{PATCH}")]:
            raise ValueError(f"models {other}: a synthetic study trains SiT-*/{PATCH} only")

    @property
    def encoders(self) -> list[str]:
        return [encoder_name(i) for i in range(self.n_encoders)]

    @property
    def steps_target(self) -> int:
        return max(self.eval_steps)

    def published_name(self, encoder: str) -> str | None:
        """The encoder's ``published_name`` (default ``Synthetic-<index>``)."""
        default = f"Synthetic-{self.encoders.index(encoder)}"
        return self.published_names.get(encoder, default)

    def catalogue_text(self) -> str:
        return catalogue_text(self.n_encoders, {e: self.published_name(e) for e in self.encoders})

    def sweep_text(self) -> str:
        """The sweep file of the study (JSON is YAML)."""
        import json

        doc = {
            "name": self.sweep,
            "description": "synthetic study (tests/synthetic_study.py)",
            "data": DATA_FIELDS,
            "encoders": self.encoders,
            "methods": list(self.methods),
            "models": list(self.models) or [f"SiT-T/{PATCH}"],  # none: dropped from the plan
            "seeds": list(self.seeds),
            "model": {"space": "latent"},
            "random_weights": self.sweep_random_weights,
            "train": {
                "steps": self.steps_target,
                "log_every": self.log_every,
                "latents": "online",
            },
            "eval": {**EVAL_FIELDS, "at_steps": list(self.eval_steps)},
            "spatial": {"images": self.per_image},
        }
        return json.dumps(doc, indent=1)

    def protocol_values(self, labels: Mapping[str, Any]) -> dict[str, Any]:
        """The protocol values the selected runs' evaluations record instead of the real ones."""
        values: dict[str, Any] = {}
        for runs, overrides in self.protocols:
            if runs.matches(labels):
                values.update(overrides)
        return values


@dataclass
class Manifest:
    """What :func:`write_study` wrote, for comparison with the database."""

    stages: dict[str, list[str]] = field(default_factory=dict)  # stage -> planned keys
    unwritten: set[str] = field(default_factory=set)  # planned keys without result.json
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_id -> labels + train_key
    fid: dict[tuple[str, int], float | None] = field(default_factory=dict)  # (run_id, step) -> FID
    # (run_id, step) -> protocol_key (content hash of the eval's protocol)
    protocol_keys: dict[tuple[str, int], str] = field(default_factory=dict)
    # encoder -> lds, cds, srss, rmsc, lp_top1 as the database should show them (None: unmeasured)
    encoder_metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    train_log_rows: int = 0  # rows over all train logs
    per_image_rows: int = 0  # rows over all per-image tables
    plan: Plan | None = None  # the plan (build_plan) the study was written from

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


def load_study(study: SyntheticStudy) -> tuple[Catalogue, SweepConfig]:
    """The study's catalogue and sweep, written as files and read by the real loaders."""
    with tempfile.TemporaryDirectory(prefix="synthetic-study-") as tmp:
        catalogue_file, sweep_file = Path(tmp) / "encoders.yaml", Path(tmp) / f"{study.sweep}.yaml"
        catalogue_file.write_text(study.catalogue_text(), encoding="utf-8")
        sweep_file.write_text(study.sweep_text(), encoding="utf-8")
        catalogue = load_catalogue(catalogue_file)
        return catalogue, load_sweep(sweep_file, catalogue=catalogue)


def protocol(
    eval_config: Mapping[str, Any] | None = None,
    *,
    reference_key: str = "synthetic-reference",
    vae: str | None = None,
) -> dict[str, Any]:
    """The protocol the eval driver records for ``eval_config`` (a plan's eval stage
    ``config["eval"]``; default: the synthetic sweep's), built by the driver's own functions
    around a synthetic reference and extractor."""
    from harness.eval.driver import SampleSource, _protocol
    from harness.eval.fidelity import generation_metrics
    from harness.eval.reference import Reference

    cfg = typed(EvalConfig, eval_config or EvalConfig(**EVAL_FIELDS).to_dict())
    if vae is None:
        vae = RunConfig().train.vae
    primary = _extractor(cfg.extractor)
    reference = Reference(meta={"reference_key": reference_key, "n_images": 32}, fid=None)
    nothing = SimpleNamespace(fid=None, logits=None, features=None, dinov2=None, labels=None)
    _, _, settings = generation_metrics(nothing, reference, cfg, primary)
    source = SampleSource(generate=None, num_classes=DATA["num_classes"], run_id="", vae=vae)
    return _protocol(cfg, source, reference, primary, None, settings)


@cache
def _extractor(name: str) -> Any:
    """A synthetic identity of the extractor ``name`` (as the eval records it)."""
    from harness.eval.features import ExtractorInfo

    return ExtractorInfo(
        name=name,
        fidelity_name=name,
        weights="synthetic",
        weights_path=None,
        substitute=True,
        fid_layer="2048",
        isc_layer="logits_unbiased",
    )


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
    builder = _Builder(study, root)
    builder.build()
    builder.write()
    return builder.manifest


@dataclass
class _Artifact:
    """What one planned stage instance left on disk (when it ran)."""

    planned: PlannedStage
    payload: dict[str, Any] | None  # None: no result.json (not run yet, or failed)
    submitted: bool = True  # listed in jobs.jsonl
    failure: str | None = None  # the error of a failed stage (state.json, no result.json)
    log_rows: list[tuple[int, list[float]]] = field(default_factory=list)  # train: StepLog rows
    per_image: dict[str, np.ndarray] | None = None  # spatial: per_image.csv table


class _Builder:
    """Builds the artifacts of every planned stage instance of a study, then writes them."""

    def __init__(self, study: SyntheticStudy, root: Path) -> None:
        self.study, self.root = study, root
        self.rng = random.Random(study.seed)
        self.manifest = Manifest()
        self.artifacts: list[_Artifact] = []
        self.values: dict[str, dict[str, float]] = {}  # encoder -> true metric values
        self.reference_key = ""  # of the fid_ref every eval needs
        self.fingerprints: dict[str, str] = {}  # split -> dataset fingerprint

    def build(self) -> None:
        from harness.data import build_dataset

        catalogue, sweep = load_study(self.study)
        plan = build_plan(catalogue, sweep)
        if not self.study.models:  # encoder measurements only: no train / eval stage
            kept = [s for s in plan.stages if s.stage not in ("train", "eval")]
            plan = Plan(sweep=plan.sweep, stages=kept, encoders=plan.encoders, notes=plan.notes)
        self.manifest.plan = plan
        data = DataConfig(**DATA_FIELDS)
        self.fingerprints = {s: build_dataset(data, s).fingerprint() for s in ("train", "val")}
        for name in self.study.encoders:
            self._draw(name)
        for planned in plan.stages:
            self.manifest.stages.setdefault(planned.stage, []).append(planned.key)
            artifact = getattr(self, f"_{planned.stage}")(planned)
            if artifact.payload is None:
                self.manifest.unwritten.add(planned.key)
            self.artifacts.append(artifact)

    # ------------------------------------------------------------------------- stage payloads
    def _fid_ref(self, planned: PlannedStage) -> _Artifact:
        import torch_fidelity

        from harness.eval.reference import REFERENCE_KEY, REFERENCE_VERSION

        cfg = typed(EvalConfig, planned.config["eval"])
        primary = _extractor(cfg.extractor)
        n = min(cfg.reference.num_images or DATA["train_images"], DATA["train_images"])
        meta: dict[str, Any] = {
            "version": REFERENCE_VERSION,
            "source": cfg.reference.source,
            "dataset": {
                "source": "generated",
                "split": cfg.reference.split,
                "fingerprint": self.fingerprints[cfg.reference.split],
                "resolution": DATA["resolution"],
                "preprocessing": "generated",
            },
            "n_images": n,
            "n_features": min(cfg.reference.num_features, n),
            "resolution": DATA["resolution"],
            "extractor": primary.name,
            "extractor_weights": primary.weights,
            "extractor_substitute": primary.substitute,
            "feature_layer": primary.fid_layer,
            "fd_dinov2_extractor": None,
            "fd_dinov2_weights": None,
            "batch_size": cfg.batch_size,
            "torch_fidelity": torch_fidelity.__version__,
        }
        meta["reference_key"] = REFERENCE_KEY.key(meta)
        meta.update({"class_accuracy_real": None, "class_accuracy_set": None})
        meta["available"] = {"fid": True, "kid": True, "prc": True, "fd_dinov2": False}
        self.reference_key = meta["reference_key"]
        return _Artifact(planned, meta)

    def _draw(self, name: str) -> None:
        study, rng = self.study, self.rng
        drawn = {m: round(rng.uniform(0.05, 0.9), 6) for m in METRICS}
        drawn["lp_top1"] = round(rng.uniform(20.0, 85.0), 4)
        values = {**drawn, **study.encoder_values.get(name, {})}
        unmeasured = set(study.unmeasured.get(name, ()))
        self.values[name] = values  # FID depends on them even when unmeasured
        self.manifest.encoder_metrics[name] = {
            m: None if m in unmeasured else values[m] for m in ENCODER_METRICS
        }

    def _spatial(self, planned: PlannedStage) -> _Artifact:
        from harness.metrics.measure import summarize

        name, config = planned.config["encoder"], planned.config
        values, unmeasured = self.values[name], set(self.study.unmeasured.get(name, ()))
        measured = [m for m in METRICS if m not in unmeasured]
        if not measured:  # the spatial stage has not run
            return _Artifact(planned, None)
        cfg = typed(SpatialConfig, config["spatial"])
        n = cfg.images
        table: dict[str, np.ndarray] = {"index": np.arange(n)}
        for m in METRICS:
            noise = [self.rng.gauss(0, 0.01) for _ in range(n)]
            table[m] = (
                np.round(values[m] + np.asarray(noise), 6)
                if m in measured
                else np.full(n, math.nan)
            )
        self.manifest.per_image_rows += n
        summary = {m: summarize(table[m]) for m in METRICS}
        for m in measured:  # the mean is the encoder's value (its per-image values scatter)
            summary[m]["mean"] = values[m]
        grid = list(config["grid"])
        random_weights = name in self.study.random_weights or config["random_weights"]
        spec = config["encoder_spec"]
        weights_id = "random-init" if random_weights else f"builtin:{spec['model_id']}"
        payload = {
            "encoder": name,
            "dataset": self.fingerprints[cfg.split],
            "split": cfg.split,
            "n_images": n,
            "grid": grid,
            "metrics": summary,
            "params": cfg.metric_params(grid[0] * grid[1]),
            "weights_id": weights_id,
            "random_weights": random_weights,
            **weights_provenance(weights_id, random_weights),
            "has_masks": True,
            "embed_dim": spec["embed_dim"],
            "num_params": 0,
            "dtype": cfg.dtype,
            "images_per_s": 100.0,
            "files": {"per_image": "per_image.csv", "features": None},
        }
        return _Artifact(planned, payload, per_image=table)

    def _probe(self, planned: PlannedStage) -> _Artifact:
        name, config = planned.config["encoder"], planned.config
        if "lp_top1" in self.study.unmeasured.get(name, ()):  # the probe stage has not run
            return _Artifact(planned, None)
        cfg = typed(ProbeConfig, config["probe"])
        top1 = self.values[name]["lp_top1"]
        random_weights = name in self.study.random_weights or config["random_weights"]
        weights_id = "random-init" if random_weights else f"synthetic:{name}:{content_hash(name)}"
        classes = DATA["num_classes"]
        payload = {
            "encoder": name,
            "top1": top1,
            "top5": min(100.0, top1 + 10),
            "best_lr": float(cfg.lrs[-1]),
            "grid": [
                {"lr": float(lr), "holdout_top1": top1 - (len(cfg.lrs) - 1 - i)}
                for i, lr in enumerate(cfg.lrs)
            ],
            "n_train": DATA["train_images"],
            "n_holdout": 0,
            "n_val": DATA["val_images"],
            "subset_per_class": cfg.subset_per_class,
            "num_classes": classes,
            "chance": 1.0 / classes,
            "pooling": cfg.pooling,
            "features_key": content_hash(["features", name, config["grid"]]),
            "feature_dim": config["encoder_spec"]["embed_dim"],
            "weights_id": weights_id,
            "dataset": dict(self.fingerprints),
            "protocol": {k: v for k, v in cfg.to_dict().items() if k != "extract_batch_size"},
            "token_grid": list(config["grid"]),
            "random_weights": random_weights,
            **weights_provenance(weights_id, random_weights),
        }
        return _Artifact(planned, payload)

    def _train(self, planned: PlannedStage) -> _Artifact:
        study, labels = self.study, planned.labels
        run = typed(RunConfig, planned.config["run"])
        target = run.train.steps
        failed_at = next((s for runs, s in study.failed if runs.matches(labels)), None)
        reached = target if failed_at is None else failed_at
        aligned = run.method != "none"
        rows = [
            (step, _log_values(step, target, aligned=aligned))
            for step in range(run.train.log_every, reached + 1, run.train.log_every)
        ]
        self.manifest.train_log_rows += len(rows)
        self.manifest.runs[labels["run_id"]] = {
            "encoder": labels.get("encoder"),
            **{k: labels[k] for k in ("method", "model", "seed", "run_id")},
            "train_key": planned.key,
        }
        if failed_at is not None:
            failure = f"synthetic failure after step {failed_at}"
            return _Artifact(planned, None, failure=failure, log_rows=rows)
        payload = {
            "run_id": labels["run_id"],
            "encoder": "+".join(run.targets) if run.targets else None,
            "method": run.method,
            "model": run.model.name,
            "seed": run.seed,
            "steps_target": target,
            "steps_done": reached,
            "final": {},  # filled from the written log (StepLog.last_finite)
            "images_per_s": None,  # StepLog.images_per_s()
            "checkpoints": {
                str(s): f"checkpoints/step_{s:07d}.pt" for s in sorted(run.train.keep_steps)
            },
            "diverged": None,
        }
        return _Artifact(planned, payload, log_rows=rows)

    def _eval(self, planned: PlannedStage) -> _Artifact:
        study, labels = self.study, planned.labels
        run_id, step = labels["run_id"], labels["step"]
        run = self.manifest.runs[run_id]
        failed = any(runs.matches(labels) for runs, _ in study.failed)
        skipped = any(runs.matches(labels) and s == step for runs, s in study.skip_evals)
        value = self.values[run["encoder"]][study.fid.metric] if run["encoder"] else None
        final = study.fid.final(run["model"], run["method"], value)
        fid = round(study.fid.at(final, step, study.steps_target, self.rng), 4)
        if failed or skipped:  # waiting, or never submitted (its training failed)
            return _Artifact(planned, None, submitted=not failed)
        fields = self._protocol(planned)
        unknown = set(study.protocol_values(labels)) - set(fields)
        if unknown:
            raise ValueError(f"protocols: {sorted(unknown)} are not fields of the eval protocol")
        fields.update(study.protocol_values(labels))
        metrics = {"fid": fid, **EVAL_VALUES}
        out = stage_dir(self.root, "eval", planned.key)
        payload = {
            "run_id": run_id,
            "step": step,
            "metrics": {k: v for k, v in metrics.items() if k in study.eval_metrics},
            "skipped": {},
            "protocol": fields,
            "checkpoint": str(
                stage_dir(self.root, "train", run["train_key"]) / f"checkpoints/step_{step:07d}.pt"
            ),
            "model_identity": {
                "checkpoint_sha256": content_hash([run["train_key"], step], 64),
                "run_id": run_id,
            },
            "samples": str(out / "samples"),
        }
        self.manifest.fid[(run_id, step)] = fid if "fid" in study.eval_metrics else None
        self.manifest.protocol_keys[(run_id, step)] = content_hash(fields)
        return _Artifact(planned, payload)

    def _protocol(self, planned: PlannedStage) -> dict[str, Any]:
        model = planned.config["model"]
        vae = self.study_vae if model["space"] == "latent" else None
        return dict(_cached_protocol(planned.config["eval"], self.reference_key, vae))

    @property
    def study_vae(self) -> str:
        return self.manifest.plan.sweep.train.vae  # type: ignore[union-attr]

    # ------------------------------------------------------------------------- files
    def write(self) -> None:
        assert self.manifest.plan is not None
        save_plan(self.manifest.plan, self.root)
        _record_submissions(
            self.root, self.manifest.plan, [a.planned for a in self.artifacts if a.submitted]
        )
        written = [a for a in self.artifacts if a.payload is not None or a.failure is not None]
        with ThreadPoolExecutor(self.study.write_threads) as pool:
            list(pool.map(self._write_artifact, written))

    def _write_artifact(self, artifact: _Artifact) -> None:
        planned = artifact.planned
        out = stage_dir(self.root, planned.stage, planned.key)
        out.mkdir(parents=True, exist_ok=True)
        started = time.time() - 1.0
        if planned.stage == "train":
            log = _write_train_log(out, planned, artifact.log_rows)
            if artifact.payload is not None:
                last = log.last_finite or {}
                artifact.payload["final"] = {
                    k: last.get(k) for k in ("loss", "flow_loss", "proj_loss", "align_cos")
                }
                artifact.payload["images_per_s"] = log.images_per_s()
        elif planned.stage == "spatial":
            from harness.io import write_text
            from harness.metrics.measure import PER_IMAGE, per_image_csv

            assert artifact.per_image is not None
            write_text(out / PER_IMAGE, per_image_csv(artifact.per_image))
        if artifact.failure is not None:
            _record_failure(out, started, artifact.failure)
            return
        assert artifact.payload is not None
        write_result(
            out,
            stage=planned.stage,
            key=planned.key,
            config=planned.config,
            payload=artifact.payload,
            started_at=started,
        )


_PROTOCOLS: dict[str, dict[str, Any]] = {}  # content hash of the arguments -> protocol


def _cached_protocol(eval_config: dict[str, Any], reference_key: str, vae: str | None) -> dict:
    """:func:`protocol`, once per distinct eval config (a study has one)."""
    key = content_hash([eval_config, reference_key, vae])
    if key not in _PROTOCOLS:
        _PROTOCOLS[key] = protocol(eval_config, reference_key=reference_key, vae=vae)
    return _PROTOCOLS[key]


def _log_values(step: int, target: int, *, aligned: bool) -> list[float]:
    """One step's ``StepLog`` metrics (loss, flow_loss, proj_loss, align_cos, grad_norm): losses
    fall and the alignment rises over training."""
    decay = math.exp(-3.0 * step / target)
    return [
        round(0.5 + decay, 6),
        round(0.5 + 0.8 * decay, 6),
        round(-(0.8 - 0.5 * decay), 6) if aligned else 0.0,
        round(0.8 - 0.5 * decay, 6) if aligned else 0.0,
        round(1.0 + decay, 6),
    ]


def _write_train_log(out: Path, planned: PlannedStage, rows: list[tuple[int, list[float]]]) -> Any:
    """Write ``train_log.jsonl`` through the trainer's :class:`StepLog` (one sync window)."""
    import torch

    from harness.train.distributed import DistEnv
    from harness.train.steplog import StepLog

    run = typed(RunConfig, planned.config["run"])
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)
    log = StepLog(
        out, env, run.train, run_id=planned.labels["run_id"], aligned=run.method != "none"
    )
    pending = [
        (step, torch.tensor(values, dtype=torch.float64), float(step)) for step, values in rows
    ]
    seconds = len(rows) * run.train.global_batch / 100.0  # 100 images/s
    if log.flush(pending, seconds, run.train.lr) is not None:
        raise AssertionError("synthetic train log diverged")
    return log


def _record_failure(out: Path, started: float, error: str) -> None:
    """``state.json`` = failed, as the stage runner records a stage that raised."""
    from harness.launch.runner import _record_failure as record

    try:
        raise RuntimeError(error)
    except RuntimeError as exc:
        record(out, "1000", started, exc)


def _record_submissions(root: Path, plan: Plan, stages: list[PlannedStage]) -> None:
    """``jobs.jsonl``: one debug-executor submission per stage, by the submitter's own writer."""
    from harness.launch.executor import JobHandle
    from harness.launch.jobs import StageStatus
    from harness.launch.submit import Decision, SubmitReport, _Batch

    decisions = {
        s.key: Decision(s, StageStatus(key=s.key, stage=s.stage, state="planned"), "submit")
        for s in stages
    }
    report = SubmitReport(executor="debug", decisions=decisions)
    batch = _Batch(plan, root, stages, decisions, launcher=None, report=report)  # type: ignore[arg-type]
    batch._record(
        stages, [JobHandle(job_id=str(1000 + i), executor="debug") for i in range(len(stages))]
    )
