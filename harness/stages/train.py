"""``train``: one SiT training run (``harness.train.loop.train``).

Keyed by the run's identity (the resolved run config minus operational settings such as
checkpoint cadence and kept steps, ``harness.config.run.OPERATIONAL_TRAIN_FIELDS``) and the full
spec of its target encoder, so editing ``train.steps`` re-plans training but editing the eval
schedule does not. Preemption is cooperative: the loop polls ``ctx.should_stop`` at step
boundaries, saves a checkpoint and returns ``interrupted``; the requeued job resumes from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config.encoders import UNKEYED_SPEC_FIELDS, EncoderSpec
from harness.config.run import OPERATIONAL_TRAIN_FIELDS, RunConfig, run_id
from harness.io import file_hash
from harness.stages import Stage, StageContext, StageOutcome, register, typed


def instance(run: RunConfig, specs: Sequence[EncoderSpec] = ()) -> dict[str, Any]:
    """The config of one run's instance (planned by a sweep, or run by ``harness train``: the
    same dict, so the same key); ``specs`` are the catalogue entries of its target encoders
    (one in a sweep; ``harness train`` also takes several)."""
    config: dict[str, Any] = {
        "run": run.to_dict(),
        "run_id": run_id(run),
        "encoder_spec": specs[0].to_dict() if len(specs) == 1 else None,
    }
    if len(specs) > 1:
        config["encoder_specs"] = [spec.to_dict() for spec in specs]
    if run.train.latent_stats:  # keyed by the file's content too, not only its path
        path = Path(run.train.latent_stats)  # not there yet: the pre-submit check names it
        config["latent_stats_sha256"] = file_hash(path, 64) if path.is_file() else None
    return config


def run(ctx: StageContext) -> StageOutcome:
    from harness.config.encoders import Catalogue
    from harness.train.loop import train

    specs = ctx.config.get("encoder_specs") or [ctx.config.get("encoder_spec")]
    catalogue = (
        Catalogue(encoders=[typed(EncoderSpec, s) for s in specs if s]) if specs[0] else None
    )
    outcome = train(
        typed(RunConfig, ctx.config["run"]),
        ctx.out_dir,
        catalogue=catalogue,
        device=ctx.device,
        should_stop=ctx.should_stop,
    )
    return StageOutcome(outcome["payload"], status=outcome["status"], error=outcome["error"])


STAGE = register(
    Stage(
        name="train",
        version=1,
        run=run,
        key_fields=("run", "encoder_spec", "encoder_specs", "latent_stats_sha256"),
        key_exclude=(
            *(f"run.train.{name}" for name in OPERATIONAL_TRAIN_FIELDS),
            *(f"encoder_spec.{name}" for name in UNKEYED_SPEC_FIELDS),
        ),
        cooperative_stop=True,
        description="SiT training (REPA / iREPA / none), resumable from its checkpoints",
    )
)
