"""Scheduler resources per stage kind (SLURM through submitit; the local executor reads a few).

A sweep's ``resources:`` section holds a ``default`` block and optional per-stage blocks
(``latents``, ``fid_ref``, ``spatial``, ``probe``, ``train``, ``eval``). A per-stage block
overrides only the keys it sets; everything else comes from ``default``::

    resources:
      default: {partition: gpu, account: vision, time_min: 240, mem_gb: 64}
      train:   {gpus_per_node: 8, cpus_per_task: 8, time_min: 2880, max_requeues: 10}
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from harness.config.base import Config

# the stage kinds (harness.stages.STAGES), in execution order; each can carry a resource block
STAGE_KINDS = ("latents", "fid_ref", "spatial", "probe", "train", "eval")
MEASUREMENT_KINDS = ("spatial", "probe")  # the kinds that measure an encoder without training
ENCODER_KINDS = (*MEASUREMENT_KINDS, "train")  # the kinds whose config names an encoder spec
# where stage jobs run (harness.launch.executor): launch.executor and --executor; "auto" picks
# slurm when sbatch works, else local
ExecutorChoice = Literal["auto", "slurm", "local", "debug"]
EXECUTOR_CHOICES: tuple[str, ...] = get_args(ExecutorChoice)
EXECUTORS = tuple(name for name in EXECUTOR_CHOICES if name != "auto")  # what "auto" resolves to


class ResourceConfig(Config):
    """What one job of a stage asks the scheduler for."""

    partition: str | None = None  # SLURM partition (None = the cluster's default partition)
    account: str | None = None  # SLURM account to charge (None = the user's default)
    qos: str | None = None  # SLURM quality of service (None = default)
    nodes: int = Field(1, ge=1, le=1)  # nodes per job (multi-node training is not supported yet)
    gpus_per_node: int = Field(0, ge=0, le=16)  # GPUs per job (0 = CPU-only job)
    tasks_per_node: int | None = Field(None, ge=1)  # tasks per job (None = one per GPU, at least 1)
    cpus_per_task: int = Field(1, ge=1)  # CPU cores per task (data loading workers + 1)
    mem_gb: float | None = Field(None, gt=0)  # memory per job in GB (None = cluster default)
    time_min: int = Field(
        60, ge=1
    )  # wall-clock limit per job in minutes (then checkpoint + requeue)
    constraint: str | None = None  # SLURM --constraint (node features, e.g. "h100")
    additional: dict[str, str | int | bool] = Field(default_factory=dict)  # extra sbatch options
    setup: list[str] = Field(
        default_factory=list
    )  # shell lines run before the job (module load ...)
    array_parallelism: int = Field(64, ge=1)  # max tasks of one job array running at once
    max_requeues: int = Field(3, ge=0)  # requeues allowed after time-outs (preemptions: unbounded)
    signal_delay_s: int = Field(120, ge=10)  # USR2 arrives this long before the time limit

    @field_validator("additional")
    @classmethod
    def _no_managed_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        managed = {"dependency", "array", "output", "error", "job-name", "job_name", "hold"}
        clash = sorted(k for k in value if k.replace("_", "-") in managed or k in managed)
        if clash:
            raise ValueError(
                f"sbatch options {clash} are set by the sweep engine and cannot be overridden "
                "in 'additional'"
            )
        return value

    @model_validator(mode="after")
    def _tasks_match_gpus(self) -> ResourceConfig:
        tasks, gpus = self.tasks_per_node, self.gpus_per_node
        if tasks is not None and gpus > 1 and tasks != gpus:
            raise ValueError(
                f"tasks_per_node ({tasks}) must equal gpus_per_node ({gpus}): "
                "one task per GPU, each bound to its own GPU"
            )
        return self

    @property
    def num_tasks(self) -> int:
        """Tasks per job: one per GPU (torch.distributed ranks), or ``tasks_per_node``."""
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return max(1, self.gpus_per_node)


class Resources(Config):
    """``default`` plus per-stage overrides (only the keys an override sets replace defaults)."""

    default: ResourceConfig = Field(default_factory=ResourceConfig)  # every stage's base request
    latents: ResourceConfig | None = None  # latent cache (SD-VAE encode of the dataset)
    fid_ref: ResourceConfig | None = None  # reference statistics of the real images
    spatial: ResourceConfig | None = None  # encoder spatial metrics (LDS, CDS, SRSS, RMSC)
    probe: ResourceConfig | None = None  # encoder linear probe
    train: ResourceConfig | None = None  # SiT training (one task per GPU)
    eval: ResourceConfig | None = None  # sampling + FID at a training step

    def for_stage(self, stage: str) -> ResourceConfig:
        """The merged request of ``stage``: ``default`` updated with the keys its block sets."""
        override = getattr(self, stage, None) if stage in STAGE_KINDS else None
        if override is None:
            return self.default
        merged = self.default.model_dump()
        merged.update(override.model_dump(include=override.model_fields_set))
        return ResourceConfig.model_validate(merged)
