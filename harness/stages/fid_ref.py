"""``fid_ref``: reference statistics of the real images, computed once per dataset × extractor
× reference settings (``harness.eval.reference.compute_reference``) and shared by every eval."""

from __future__ import annotations

from typing import Any

from harness.config.data import DataConfig, resolved_data
from harness.config.eval import EvalConfig
from harness.stages import Stage, StageContext, StageOutcome, register, typed

# eval settings that concern the generated samples, not the reference statistics
SAMPLE_SIDE_FIELDS = (
    "at_steps",
    "num_samples",
    "sampler",
    "vae",
    "seed",
    "class_balanced",
    "shard_size",
)


def instance(data: DataConfig, eval_cfg: EvalConfig) -> dict[str, Any]:
    """The config of the instance for ``data`` x ``eval_cfg`` (planned by a sweep, or run by
    ``harness fid-ref`` / ``harness eval``: the same dict, so the same key)."""
    return {"data": resolved_data(data).to_dict(), "eval": eval_cfg.to_dict()}


def run(ctx: StageContext) -> StageOutcome:
    from harness.eval.reference import compute_reference

    payload = compute_reference(
        typed(DataConfig, ctx.config["data"]),
        typed(EvalConfig, ctx.config["eval"]),
        ctx.out_dir,
        device=ctx.device,
        root=ctx.root,
    )
    return StageOutcome(payload)


STAGE = register(
    Stage(
        name="fid_ref",
        version=1,
        run=run,
        key_fields=("data", "eval"),
        key_exclude=tuple(f"eval.{name}" for name in SAMPLE_SIDE_FIELDS),
        description="reference statistics (mu, sigma, features) of the real images",
    )
)
