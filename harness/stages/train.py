"""``train``: one SiT training run (``harness.train.loop.train``).

Keyed by the run's identity (the resolved run config minus operational settings such as
checkpoint cadence and kept steps, ``harness.config.run.OPERATIONAL_TRAIN_FIELDS``) and the full
spec of its target encoder, so editing ``train.steps`` re-plans training but editing the eval
schedule does not. Preemption is cooperative: the loop polls ``ctx.should_stop`` at step
boundaries, saves a checkpoint and returns ``interrupted``; the requeued job resumes from it.
"""

from __future__ import annotations

from harness.config.run import OPERATIONAL_TRAIN_FIELDS
from harness.stages import Stage, StageContext, StageOutcome, register, typed


def run(ctx: StageContext) -> StageOutcome:
    from harness.config.encoders import Catalogue, EncoderSpec
    from harness.config.run import RunConfig
    from harness.train.loop import train

    spec = ctx.config.get("encoder_spec")
    catalogue = Catalogue(encoders=[typed(EncoderSpec, spec)]) if spec else None
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
        key_fields=("run", "encoder_spec"),
        key_exclude=(
            *(f"run.train.{name}" for name in OPERATIONAL_TRAIN_FIELDS),
            "encoder_spec.notes",
            "encoder_spec.license",
        ),
        cooperative_stop=True,
        description="SiT training (REPA / iREPA / none), resumable from its checkpoints",
    )
)
