"""Sweep → plan: the DAG of stage instances, each with a content key and a GPU-hour estimate.

``build_plan(catalogue, sweep)`` is a pure function (same inputs, same keys, on any machine):

* shared preparation: ``latents`` (latent-space sweeps) and ``fid_ref`` (per dataset ×
  extractor × reference settings);
* per encoder: ``spatial`` and ``probe`` (per encoder × dataset × settings × token grid),
  shared by every run of the encoder and across sweeps;
* per run (encoder × method × SiT × seed; the ``none`` baseline has no encoder): ``train``;
* per run and scheduled step: ``eval`` (needs its ``train`` and the ``fid_ref``).

The saved ``results/plans/<sweep>/plan.json`` (format below, read by ``harness ingest``) is
written atomically when a sweep is submitted::

    {"schema": 1, "sweep": name, "created_at": float, "git_sha": str | null,
     "config": {resolved sweep},
     "stages": [{"key", "stage", "label", "needs": [keys],
                 "labels": {"encoder", "method", "model", "seed", "run_id", "step"} (as apply),
                 "est_gpu_hours", "config": {...; spatial/probe carry "encoder_spec"}}]}
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.artifacts import git_sha
from harness.config.data import resolved_data
from harness.config.model import SiTArch
from harness.config.resources import STAGE_KINDS
from harness.config.run import RunConfig, run_id
from harness.config.sweep import SweepConfig, no_match, selected
from harness.config.train import AlignConfig
from harness.errors import ConfigError, RegistryError, did_you_mean
from harness.io import write_json
from harness.paths import plan_dir
from harness.stages import STAGES, fid_ref, latents, probe, spatial, train
from harness.stages import eval as evaluation

PLAN_SCHEMA = 1
PLAN_FILE = "plan.json"
CPU_STUDY_HINT = (
    "no ImageNet here? run the CPU study: harness sweep encoders.yaml --sweep sweeps/cpu-study.yaml"
)


# ---------------------------------------------------------------------------------------------
# Cost model (documented constants; estimates are H100 GPU-hours)
# ---------------------------------------------------------------------------------------------
# Achieved bf16 throughput of SiT training on one H100, calibrated on REPA's report of 5.4 it/s
# at batch 256 on 8x H100 for SiT-XL/2 (= 172.8 img/s/GPU x 3 x 236.8 GFLOP per forward).
H100_EFFECTIVE_FLOPS = 122.8e12
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward ≈ 3 forwards
VAE_DECODE_FLOPS = 620e9  # SD-VAE decoder, one 256 px image (approximate)
ENCODER_IMAGES_PER_S = 1000.0  # encoder feature extraction (ViT-B/L at 224-256 px)
EXTRACTOR_IMAGES_PER_S = 2000.0  # Inception-v3 / substitute CNN features
VAE_ENCODE_IMAGES_PER_S = 800.0  # SD-VAE encoder at 256 px
PROBE_HEAD_OVERHEAD = 0.1  # probe head training on cached features: +10% of extraction


def sit_forward_flops(arch: SiTArch, tokens: int) -> float:
    """FLOPs of one SiT forward pass on one image: per block ``24·T·D²`` (qkv, projection and
    the 4x MLP) plus ``4·T²·D`` (attention scores and mixing)."""
    d = arch.hidden
    per_block = 2 * (4 + 2 * arch.mlp_ratio) * tokens * d * d + 4 * tokens * tokens * d
    return arch.depth * per_block


def estimate_gpu_hours(stage: str, config: dict[str, Any]) -> float:
    """A simple cost model of one stage instance, in H100 GPU-hours."""
    seconds = 0.0
    if stage == "train":
        run = config["run"]
        arch, tokens = _arch_tokens(run["model"])
        flops = TRAIN_FLOPS_PER_FORWARD * sit_forward_flops(arch, tokens)
        seconds = (
            run["train"]["steps"] * run["train"]["global_batch"] * flops / H100_EFFECTIVE_FLOPS
        )
    elif stage == "eval":
        arch, tokens = _arch_tokens(config["model"])
        sampler = config["eval"]["sampler"]
        guided = sampler["cfg_scale"] > 1.0 and sampler["guidance_high"] > sampler["guidance_low"]
        per_image = sampler["num_steps"] * (2 if guided else 1) * sit_forward_flops(arch, tokens)
        if config["model"]["space"] == "latent":
            per_image += VAE_DECODE_FLOPS
        n = config["eval"]["num_samples"]
        seconds = n * per_image / H100_EFFECTIVE_FLOPS + n / EXTRACTOR_IMAGES_PER_S
    elif stage in ("spatial", "probe"):
        data = config["data"]
        if stage == "spatial":
            images = config["spatial"].get("images") or data["val_images"]
        else:
            images = data["train_images"] + data["val_images"]
        seconds = images / ENCODER_IMAGES_PER_S * (1 + PROBE_HEAD_OVERHEAD * (stage == "probe"))
    elif stage == "fid_ref":
        reference = config["eval"]["reference"]
        if reference["source"] == "dataset":
            data = config["data"]
            split_size = (
                data["train_images"] if reference["split"] == "train" else data["val_images"]
            )
            seconds = (reference.get("num_images") or split_size) / EXTRACTOR_IMAGES_PER_S
    elif stage == "latents":
        seconds = config["data"]["train_images"] / VAE_ENCODE_IMAGES_PER_S
    return round(seconds / 3600.0, 4)


def _arch_tokens(model: dict[str, Any]) -> tuple[SiTArch, int]:
    from harness.config.model import sit_arch

    arch = sit_arch(model["name"])
    side = model["input_size"] // arch.patch
    return arch, side * side


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedStage:
    """One stage instance of the plan."""

    key: str
    stage: str
    label: str
    needs: tuple[str, ...]  # upstream keys
    labels: dict[str, Any]
    config: dict[str, Any]
    est_gpu_hours: float

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "stage": self.stage,
            "label": self.label,
            "needs": list(self.needs),
            "labels": self.labels,
            "est_gpu_hours": self.est_gpu_hours,
            "config": self.config,
        }


@dataclass
class Plan:
    """The stage instances of a sweep, in dependency order."""

    sweep: SweepConfig
    stages: list[PlannedStage]
    encoders: list[str]
    notes: list[str] = field(default_factory=list)

    def by_key(self) -> dict[str, PlannedStage]:
        return {s.key: s for s in self.stages}

    def counts(self) -> Counter[str]:
        return Counter(s.stage for s in self.stages)

    @property
    def total_gpu_hours(self) -> float:
        return round(sum(s.est_gpu_hours for s in self.stages), 2)

    def to_json(self, *, created_at: float | None = None, sha: str | None = None) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "sweep": self.sweep.name,
            "created_at": time.time() if created_at is None else created_at,
            "git_sha": sha if sha is not None else git_sha(),
            "config": self.sweep.to_dict(),
            "stages": [s.to_json() for s in self.stages],
        }


def build_plan(catalogue: Any, sweep: SweepConfig) -> Plan:
    """Expand ``sweep`` over ``catalogue`` (a ``harness.config.encoders.Catalogue``).

    Raises:
        RegistryError: an unknown encoder (with suggestions).
        ConfigError: a run the sweep describes is inconsistent (e.g. alignment depth).
    """
    encoders = resolve_encoders(catalogue, sweep.encoder_selectors)
    data = resolved_data(sweep.data)
    builder = _Builder()
    notes = []
    if sweep.baseline_added:
        notes.append("method 'none' (vanilla SiT) is added as the baseline of every model size")

    outside = [e for e in sweep.noise_floor.encoders if e not in encoders]
    if outside:
        raise ConfigError(
            f"sweep {sweep.name}: noise_floor.encoders {outside} are not among the sweep's "
            f"encoders{did_you_mean(outside[0], encoders)}",
            hint=f"allowed: {', '.join(encoders)}",
        )
    runs = [
        _run_config(sweep, data.to_dict(), encoder, method, model, seed)
        for model in sweep.models
        for method, encoder, seed in sweep.run_grid(encoders)
    ]
    grids = sorted({run.model.grid for run in runs})
    spatial_grid = getattr(sweep.spatial, "grid", None)

    fid_ref_key = builder.add(
        "fid_ref", f"fid_ref {sweep.eval.extractor}", fid_ref.instance(data, sweep.eval)
    )
    for name in encoders:
        spec = catalogue.get(name)
        for grid in [_grid(spatial_grid)] if spatial_grid else grids:
            suffix = f" @{grid[0]}x{grid[1]}" if len(grids) > 1 else ""
            builder.add(
                "spatial",
                f"spatial {name}{suffix}",
                spatial.instance(spec, data, sweep.spatial, grid, sweep.random_weights),
                labels={"encoder": name},
            )
            builder.add(
                "probe",
                f"probe {name}{suffix}",
                probe.instance(spec, data, sweep.probe, grid, sweep.random_weights),
                labels={"encoder": name},
            )
    for run in runs:
        rid = run_id(run)
        labels: dict[str, Any] = {
            **({"encoder": run.encoder} if run.encoder else {}),
            "method": run.method,
            "model": run.model.name,
            "seed": run.seed,
            "run_id": rid,
        }
        specs = [catalogue.get(run.encoder)] if run.encoder else []
        slug = "/".join(filter(None, (run.encoder, run.method, run.model.name, f"s{run.seed}")))
        train_key = builder.add(
            "train",
            f"train {slug}",
            train.instance(run, specs),
            labels=labels,
            needs=[builder.add("latents", f"latents {run.train.vae}", upstream)]
            if (upstream := latents.upstream_of(run))
            else [],
        )
        for step in sweep.eval_steps:
            builder.add(
                "eval",
                f"eval {slug} @{step}",
                evaluation.instance(run, step, sweep.eval),
                labels={**labels, "step": step},
                needs=[train_key, fid_ref_key],
            )
    return Plan(sweep=sweep, stages=builder.ordered(), encoders=encoders, notes=notes)


class _Builder:
    """Collects stage instances, deduplicated by content key."""

    def __init__(self) -> None:
        self.stages: dict[str, PlannedStage] = {}

    def add(
        self,
        stage: str,
        label: str,
        config: dict[str, Any],
        *,
        labels: dict[str, Any] | None = None,
        needs: Sequence[str] = (),
    ) -> str:
        definition = STAGES.get(stage)
        key = definition.key(config, needs)
        if key not in self.stages:
            self.stages[key] = PlannedStage(
                key=key,
                stage=stage,
                label=label,
                needs=tuple(needs),
                labels=labels or {},
                config=config,
                est_gpu_hours=estimate_gpu_hours(stage, config),
            )
        return key

    def ordered(self) -> list[PlannedStage]:
        rank = {name: i for i, name in enumerate(STAGE_KINDS)}
        return sorted(self.stages.values(), key=lambda s: rank.get(s.stage, len(rank)))


def _run_config(
    sweep: SweepConfig,
    data: dict[str, Any],
    encoder: str | None,
    method: str,
    model: str,
    seed: int,
) -> RunConfig:
    train = sweep.train.to_dict()
    train["keep_steps"] = sorted(set(train["keep_steps"]) | set(sweep.eval_steps))
    if train["latent_stats"]:  # jobs run in the code snapshot: no paths relative to here
        train["latent_stats"] = str(Path(train["latent_stats"]).expanduser().absolute())
    doc = {
        "data": data,
        "encoder": encoder,
        "method": method,
        "model": {**sweep.model.to_dict(), "name": model},
        "align": sweep.align.get(method, AlignConfig()).to_dict(),
        "train": train,
        "random_weights": sweep.random_weights,
        "seed": seed,
    }
    try:
        return RunConfig.model_validate_json(json.dumps(doc))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'run'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        raise ConfigError(
            f"sweep {sweep.name}: the run {encoder or 'none'} / {method} / {model} / seed {seed} "
            f"is invalid: {problems}",
            hint="fix the model / align / train sections of the sweep file",
        ) from None


def _grid(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def resolve_encoders(catalogue: Any, selectors: Iterable[str]) -> list[str]:
    """Catalogue names selected by ``all``, ``irepa27``, names or globs (in order, no repeats).

    Raises:
        RegistryError: a selector that picks no entry (with a suggestion and the allowed values).
    """
    chosen: list[str] = []
    for selector in selectors:
        matches = selected(catalogue, selector)
        if not matches:
            raise RegistryError(
                f"encoder selector {no_match(catalogue, selector)}",
                hint="see `harness encoders list`",
            )
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def save_plan(plan: Plan, root: Path) -> Path:
    """Write ``results/plans/<sweep>/plan.json`` atomically; returns its path."""
    path = plan_dir(root, plan.sweep.name) / PLAN_FILE
    write_json(path, plan.to_json())
    return path


def load_saved_plan(root: Path, name: str) -> dict[str, Any]:
    """A sweep's saved ``plan.json`` (as JSON)."""
    path = plan_dir(root, name) / PLAN_FILE
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = saved_plans(root)
        raise ConfigError(
            f"no saved plan for sweep {name!r} under {root}{did_you_mean(name, known)}",
            hint=f"sweeps with a plan: {', '.join(known) or 'none (run harness sweep first)'}",
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable plan: {exc}") from exc
    if plan.get("schema") != PLAN_SCHEMA:
        raise ConfigError(f"{path}: plan schema {plan.get('schema')} != {PLAN_SCHEMA}")
    return plan


def saved_plans(root: Path) -> list[str]:
    """Names of the sweeps that have a saved plan under ``root``."""
    plans = root / "plans"
    return sorted(p.parent.name for p in plans.glob(f"*/{PLAN_FILE}")) if plans.is_dir() else []
