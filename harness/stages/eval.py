"""``eval``: sample a training run's checkpoint at one step and compute FID & co against the
shared reference statistics (``harness.eval.driver.evaluate_checkpoint``). Checkpointable: on
preemption the job is requeued and resumes from the sample shards already on disk."""

from __future__ import annotations

from typing import Any

from harness.config.eval import EvalConfig
from harness.config.run import RunConfig, run_id
from harness.stages import Stage, StageContext, StageOutcome, register, typed


def instance(run: RunConfig, step: int, eval_cfg: EvalConfig) -> dict[str, Any]:
    """The config of one checkpoint's evaluation (planned by a sweep, or run by ``harness
    eval``: the same dict, so the same key); it also needs the ``train`` and ``fid_ref`` keys."""
    settings = {k: v for k, v in eval_cfg.to_dict().items() if k != "at_steps"}
    return {"run_id": run_id(run), "step": step, "eval": settings, "model": run.model.to_dict()}


def run(ctx: StageContext) -> StageOutcome:
    from harness.config.model import ModelConfig
    from harness.eval.driver import evaluate_checkpoint
    from harness.train.checkpoint import checkpoint_path

    step = int(ctx.config["step"])
    payload = evaluate_checkpoint(
        checkpoint_path(ctx.upstream_dir("train"), step),
        typed(EvalConfig, ctx.config["eval"]),
        ctx.out_dir,
        reference_dir=ctx.upstream_dir("fid_ref"),
        step=step,
        device=ctx.device,
        expect_model=typed(ModelConfig, ctx.config["model"]),
    )
    return StageOutcome(payload)


STAGE = register(
    Stage(
        name="eval",
        version=1,
        run=run,
        key_fields=("eval", "step"),
        key_exclude=("eval.at_steps", "eval.shard_size"),
        needs=("train", "fid_ref"),
        description="samples + FID/IS/KID/PR of one checkpoint",
    )
)
