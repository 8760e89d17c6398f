"""``probe``: an encoder's linear-probe accuracy on mean-pooled patch tokens.

One instance per encoder × dataset × probe settings × token grid, shared by every run of that
encoder and by every sweep (``harness.eval.probe.run_probe`` does the work).
"""

from __future__ import annotations

from typing import Any

from harness.config.data import DataConfig
from harness.config.encoders import UNKEYED_SPEC_FIELDS, EncoderSpec
from harness.config.eval import ProbeConfig
from harness.stages import Stage, StageContext, StageOutcome, encoder_measurement, register, typed


def instance(
    spec: EncoderSpec,
    data: DataConfig,
    probe: ProbeConfig,
    grid: tuple[int, int],
    random_weights: bool,
) -> dict[str, Any]:
    """The config of one encoder's instance (planned by a sweep, or run by ``harness probe``:
    the same dict, so the same key)."""
    return {**encoder_measurement(spec, data, grid, random_weights), "probe": probe.to_dict()}


def run(ctx: StageContext) -> StageOutcome:
    from harness.eval.probe import run_probe

    payload = run_probe(
        typed(EncoderSpec, ctx.config["encoder_spec"]),
        typed(DataConfig, ctx.config["data"]),
        typed(ProbeConfig, ctx.config["probe"]),
        grid=tuple(ctx.config["grid"]),
        device=ctx.device,
        random_weights=bool(ctx.config["random_weights"]),
        root=ctx.root,
    )
    return StageOutcome(payload)


STAGE = register(
    Stage(
        name="probe",
        version=1,
        run=run,
        key_fields=("encoder_spec", "data", "probe", "grid", "random_weights"),
        key_exclude=(
            *(f"encoder_spec.{name}" for name in UNKEYED_SPEC_FIELDS),
            "probe.extract_batch_size",
        ),
        description="encoder linear probe (top-1 / top-5)",
    )
)
