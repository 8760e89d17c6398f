"""``spatial``: an encoder's spatial-structure metrics (LDS, CDS, SRSS, RMSC).

One instance per encoder × dataset × metric settings × token grid, shared by every run of that
encoder and by every sweep (``harness.metrics.measure.measure_encoder`` does the work).
"""

from __future__ import annotations

from typing import Any

from harness.config.data import DataConfig
from harness.config.encoders import UNKEYED_SPEC_FIELDS, EncoderSpec
from harness.config.metrics import SpatialConfig
from harness.stages import Stage, StageContext, StageOutcome, encoder_measurement, register, typed


def instance(
    spec: EncoderSpec,
    data: DataConfig,
    spatial: SpatialConfig,
    grid: tuple[int, int],
    random_weights: bool,
) -> dict[str, Any]:
    """The config of one encoder's instance (planned by a sweep, or run by ``harness metrics``:
    the same dict, so the same key). ``grid`` is the token grid it is measured at."""
    return {**encoder_measurement(spec, data, grid, random_weights), "spatial": spatial.to_dict()}


def run(ctx: StageContext) -> StageOutcome:
    from harness.metrics.measure import measure_encoder

    payload = measure_encoder(
        typed(EncoderSpec, ctx.config["encoder_spec"]),
        typed(DataConfig, ctx.config["data"]),
        typed(SpatialConfig, ctx.config["spatial"]),
        ctx.out_dir,
        grid=tuple(ctx.config["grid"]),
        device=ctx.device,
        random_weights=bool(ctx.config["random_weights"]),
    )
    return StageOutcome(payload)


STAGE = register(
    Stage(
        name="spatial",
        version=1,
        run=run,
        key_fields=("encoder_spec", "data", "spatial", "grid", "random_weights"),
        key_exclude=(
            *(f"encoder_spec.{name}" for name in UNKEYED_SPEC_FIELDS),
            "spatial.grid",  # the plan's choice of grid, resolved into "grid"
            "spatial.batch_size",
            "spatial.num_workers",
        ),
        description="encoder spatial metrics: LDS, CDS, SRSS, RMSC",
    )
)
