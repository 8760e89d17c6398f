"""A sweep: which encoders, methods, SiT sizes and seeds to run, with every setting of every stage.

``harness sweep encoders.yaml --sweep sweeps/x.yaml`` expands the sweep over the catalogue into a
plan of stage instances (:mod:`harness.plan`). Example (``sweeps/tiny.yaml`` is a complete one)::

    name: my-study
    data: {source: folder, root: data/imagenet, resolution: 256}
    encoders: irepa27                 # or a list of catalogue names / selectors / glob patterns
    methods: [repa, irepa]            # the baseline `none` is always added
    models: [SiT-B/2, SiT-XL/2]
    seeds: [0]
    align: {irepa: {zscore_gamma: 0.7}}
    train: {steps: 100000}
    eval: {at_steps: [100000]}
    resources:
      default: {partition: gpu, gpus_per_node: 1, time_min: 240}
      train: {gpus_per_node: 8, cpus_per_task: 8, time_min: 2880}

Encoder selectors: ``all`` (every catalogue entry), ``irepa27`` (entries flagged ``irepa27``),
a catalogue name, or a glob (``dinov2-*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from harness.config.base import Config
from harness.config.data import DataConfig
from harness.config.eval import EvalConfig, ProbeConfig
from harness.config.loader import YamlDoc, dotted, load_yaml, validate
from harness.config.metrics import SpatialConfig
from harness.config.model import SIT_ARCHS, ModelConfig, check_name
from harness.config.resources import ExecutorChoice, Resources
from harness.config.train import METHODS, AlignConfig, TrainConfig
from harness.errors import ConfigError, did_you_mean, format_allowed

ENCODER_SELECTORS = ("all", "irepa27")
BASELINE_METHOD = "none"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class LaunchConfig(Config):
    """How stages are submitted and followed."""

    executor: ExecutorChoice = "auto"  # auto: slurm if sbatch works, else local
    local_parallelism: int = Field(1, ge=1)  # local executor: stage jobs running at once
    submit_interval_s: float = Field(0.05, ge=0.0)  # minimum seconds between two sbatch calls
    poll_min_s: float = Field(2.0, gt=0.0)  # shortest interval between two squeue calls
    poll_max_s: float = Field(60.0, gt=0.0)  # longest interval (backoff while nothing changes)
    snapshot: bool = True  # run queued jobs on a copy of the code taken at submit time
    job_name: str = Field("harness", pattern=NAME_PATTERN)  # SLURM job-name prefix


class NoiseFloorConfig(Config):
    """Repeats of a few runs over extra seeds, so the report can tell a difference between two
    runs from seed-to-seed noise. The baseline (method ``none``) is always repeated."""

    seeds: list[int] = Field(default_factory=list)  # extra seeds (the sweep's own seeds too)
    encoders: list[str] = Field(default_factory=list)  # aligned runs repeated (sweep encoders)
    methods: list[str] = Field(default_factory=list)  # their methods ([] = the sweep's methods)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(s < 0 for s in value):
            raise ValueError(f"seeds must be distinct non-negative integers, got {value}")
        return value

    @field_validator("methods")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            check_name(name, METHODS, "method")
        return value


class SweepConfig(Config):
    """One study: the encoders × methods × SiT sizes × seeds grid and every stage's settings."""

    name: str = Field("default", pattern=NAME_PATTERN)  # plan folder: results/plans/<name>/
    description: str = ""  # free text, shown by `harness sweep --dry-run`
    data: DataConfig = Field(default_factory=DataConfig)  # training / measurement images
    encoders: list[str] | str = "all"  # catalogue names, selectors (all, irepa27) or globs
    methods: list[str] = Field(default_factory=lambda: ["repa", "irepa"])  # + `none` baseline
    models: list[str] = Field(default_factory=lambda: ["SiT-B/2"])  # SiT presets to train
    model: ModelConfig = Field(default_factory=ModelConfig)  # shared model settings (name ignored)
    seeds: list[int] = Field(default_factory=lambda: [0])  # one run per seed
    noise_floor: NoiseFloorConfig = Field(default_factory=NoiseFloorConfig)  # seed repeats
    align: dict[str, AlignConfig] = Field(default_factory=dict)  # per-method alignment overrides
    train: TrainConfig = Field(default_factory=TrainConfig)  # every training run
    eval: EvalConfig = Field(default_factory=EvalConfig)  # generation metrics at eval.at_steps
    probe: ProbeConfig = Field(default_factory=ProbeConfig)  # encoder linear probe
    spatial: SpatialConfig = Field(default_factory=SpatialConfig)  # encoder spatial metrics
    resources: Resources = Field(default_factory=Resources)  # scheduler requests per stage
    launch: LaunchConfig = Field(default_factory=LaunchConfig)  # executor, throttling, polling
    random_weights: bool = False  # random-init encoders (tests / CPU plumbing only; recorded)

    @field_validator("encoders")
    @classmethod
    def _encoders_given(cls, value: list[str] | str) -> list[str] | str:
        names = [value] if isinstance(value, str) else value
        if not names or any(not n.strip() for n in names):
            raise ValueError(
                "no encoders selected: give catalogue names, a glob, or one of "
                f"{', '.join(ENCODER_SELECTORS)}"
            )
        return value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        for name in value:
            check_name(name, METHODS, "method")
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate methods in {value}")
        return value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("models: give at least one SiT preset, e.g. [SiT-B/2]")
        for name in value:
            check_name(name, SIT_ARCHS, "SiT model")
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate models in {value}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {value}")
        return value

    @field_validator("align")
    @classmethod
    def _align_methods(cls, value: dict[str, AlignConfig]) -> dict[str, AlignConfig]:
        for name in value:
            if name not in METHODS or name == BASELINE_METHOD:
                allowed = [m for m in METHODS if m != BASELINE_METHOD]
                raise ValueError(
                    f"align.{name}: not an alignment method{did_you_mean(name, allowed)}; "
                    f"allowed: {format_allowed(allowed)}"
                )
        return value

    @model_validator(mode="after")
    def _eval_steps_within_training(self) -> SweepConfig:
        late = [s for s in self.eval.at_steps if not 1 <= s <= self.train.steps]
        if late:
            raise ValueError(
                f"@eval.at_steps: {late} are outside 1..train.steps ({self.train.steps}); "
                "evaluate at steps the training reaches"
            )
        return self

    # -- derived --------------------------------------------------------------------------------
    @property
    def all_methods(self) -> list[str]:
        """The methods that are run: ``methods`` plus the ``none`` baseline (always added)."""
        return [BASELINE_METHOD, *(m for m in self.methods if m != BASELINE_METHOD)]

    @property
    def baseline_added(self) -> bool:
        return BASELINE_METHOD not in self.methods

    def run_grid(self, encoders: Sequence[str]) -> list[tuple[str, str | None, int]]:
        """``(method, encoder, seed)`` of every run of one SiT size: the full grid over
        ``seeds``, plus the noise-floor repeats (the baseline and ``noise_floor.encoders`` ×
        ``noise_floor.methods``) over ``noise_floor.seeds``; no run twice."""
        runs: list[tuple[str, str | None, int]] = []
        for method in self.all_methods:
            targets = [None] if not METHODS.get(method).uses_encoder else list(encoders)
            runs += [(method, encoder, seed) for encoder in targets for seed in self.seeds]
        floor = self.noise_floor
        repeated = [(BASELINE_METHOD, None)] + [
            (method, encoder)
            for method in floor.methods or self.methods
            if method != BASELINE_METHOD
            for encoder in floor.encoders
        ]
        runs += [(m, e, seed) for m, e in repeated for seed in floor.seeds]
        return list(dict.fromkeys(runs))

    @property
    def eval_steps(self) -> list[int]:
        """Training steps evaluated (``eval.at_steps``; empty = the final step)."""
        return sorted(set(self.eval.at_steps)) or [self.train.steps]

    @property
    def encoder_selectors(self) -> list[str]:
        return [self.encoders] if isinstance(self.encoders, str) else list(self.encoders)


# ---------------------------------------------------------------------------------------------
# Encoder selectors against the catalogue
# ---------------------------------------------------------------------------------------------
def selected(catalogue: Any, selector: str) -> list[str]:
    """The catalogue names one selector picks (``all``, ``irepa27``, a name or a glob), in
    catalogue order; [] when it picks none."""
    if selector == "all":
        return list(catalogue.names())
    if selector == "irepa27":
        return [spec.name for spec in catalogue.encoders if spec.irepa27]
    if any(ch in selector for ch in "*?["):
        return list(catalogue.names(selector))
    return [selector] if selector in catalogue.names() else []


def no_match(catalogue: Any, selector: str) -> str:
    """Why ``selector`` picks no catalogue entry, with a suggestion and the allowed values."""
    names = list(catalogue.names())
    what = "matches no entry of" if any(ch in selector for ch in "*?[") else "is not in"
    return (
        f"{selector!r} {what} the catalogue{did_you_mean(selector, names)}; allowed: "
        f"{', '.join(ENCODER_SELECTORS)}, a glob, or a name: {format_allowed(names, limit=100)}"
    )


def check_encoders(sweep: SweepConfig, doc: YamlDoc, catalogue: Any) -> None:
    """Every encoder selector of the sweep file picks a catalogue entry; else one ConfigError
    with ``file:line: encoders[i]: ...`` per selector that picks none."""
    listed = isinstance(sweep.encoders, list)
    problems = []
    for i, selector in enumerate(sweep.encoder_selectors):
        if not selected(catalogue, selector):
            key = ("encoders", i) if listed else ("encoders",)
            problems.append(f"{doc.where(key)}: {dotted(key)}: {no_match(catalogue, selector)}")
    if problems:
        raise ConfigError("\n".join(problems), hint="see `harness encoders list`")


def only_encoders(
    sweep: SweepConfig, catalogue: Any, patterns: Sequence[str], where: str | None = None
) -> SweepConfig:
    """``sweep`` restricted to the encoders that ``patterns`` (``--encoders``) pick from its own
    ``encoders:`` list (from the catalogue when the sweep file has none); the noise-floor
    repeats keep only the chosen encoders. A pattern that picks none is a ConfigError naming
    the sweep's encoders (and ``where``: the file:line of its ``encoders:`` list)."""
    from harness.plan import resolve_encoders

    own = "encoders" in sweep.model_fields_set
    pool = resolve_encoders(catalogue, sweep.encoder_selectors if own else ["all"])
    chosen: list[str] = []
    for pattern in patterns:
        picked = selected(catalogue, pattern)
        matches = [name for name in pool if name in picked]
        if not matches:
            if not own:
                raise ConfigError(f"--encoders: {no_match(catalogue, pattern)}")
            raise ConfigError(
                f"--encoders {pattern!r}: selects none of sweep {sweep.name}'s encoders"
                f"{f' ({where}: encoders)' if where else ''}"
                f"{did_you_mean(pattern, pool)}; allowed: {', '.join(pool)}",
                hint="--encoders picks from the sweep's own encoders: list; "
                "to run other encoders, edit that list (or --set encoders=[...])",
            )
        chosen.extend(m for m in matches if m not in chosen)
    floor = sweep.noise_floor.model_copy(
        update={"encoders": [e for e in sweep.noise_floor.encoders if e in chosen]}
    )
    return sweep.model_copy(update={"encoders": chosen, "noise_floor": floor})


def sweep_from_doc(
    doc: YamlDoc, overrides: Sequence[str] = (), catalogue: Any = None
) -> SweepConfig:
    """Validate a parsed sweep YAML (plus ``--set`` overrides), and its encoders against
    ``catalogue`` when given; ``name`` defaults to the file stem (``sweeps/tiny.yaml`` →
    ``tiny``)."""
    if isinstance(doc.data, dict) and "name" not in doc.data and doc.path.endswith(".yaml"):
        doc.data["name"] = Path(doc.path).stem
    sweep = validate(SweepConfig, doc, overrides)
    if catalogue is not None:
        check_encoders(sweep, doc, catalogue)
    return sweep


def load_sweep(
    path: str | Path, overrides: Sequence[str] = (), catalogue: Any = None
) -> SweepConfig:
    """Load and validate a sweep file (its encoders against ``catalogue`` when given); raises
    ConfigError with file:line on problems."""
    return sweep_from_doc(load_yaml(path), overrides, catalogue)
