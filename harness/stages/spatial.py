"""``spatial``: an encoder's spatial-structure metrics (LDS, CDS, SRSS, RMSC).

One instance per encoder × dataset × metric settings × token grid, shared by every run of that
encoder and by every sweep (``harness.metrics.measure.measure_encoder`` does the work).
"""

from __future__ import annotations

from harness.stages import Stage, StageContext, StageOutcome, register, typed


def run(ctx: StageContext) -> StageOutcome:
    from harness.config.data import DataConfig
    from harness.config.encoders import EncoderSpec
    from harness.config.metrics import SpatialConfig
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
            "encoder_spec.notes",
            "encoder_spec.license",
            "spatial.batch_size",
            "spatial.num_workers",
        ),
        description="encoder spatial metrics: LDS, CDS, SRSS, RMSC",
    )
)
