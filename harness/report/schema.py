"""The slice of the results database that ``harness report`` reads (its read contract).

``harness.store`` owns the database; this module only names the tables/views and columns the
report depends on, with their DuckDB types, so that reading fails loudly (not silently) when the
schema drifts, and so that a test can check it against the store's schema.
"""

from __future__ import annotations

# name -> ((column, duckdb type), ...)
READ_CONTRACT: dict[str, tuple[tuple[str, str], ...]] = {
    "v_study": (
        ("sweep", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("encoder", "VARCHAR"),  # NULL for method 'none'
        ("method", "VARCHAR"),
        ("model", "VARCHAR"),
        ("seed", "BIGINT"),
        ("step", "BIGINT"),
        ("train_status", "VARCHAR"),
        ("fid", "DOUBLE"),
        ("isc", "DOUBLE"),
        ("kid", "DOUBLE"),
        ("precision", "DOUBLE"),
        ("recall", "DOUBLE"),
        ("fd_dinov2", "DOUBLE"),
        ("num_samples", "BIGINT"),
        ("sampler", "VARCHAR"),
        ("nfe", "BIGINT"),
        ("cfg_scale", "DOUBLE"),
        ("guidance_low", "DOUBLE"),
        ("guidance_high", "DOUBLE"),
        ("vae", "VARCHAR"),
        ("reference_key", "VARCHAR"),
        ("extractor", "VARCHAR"),
        ("extractor_substitute", "BOOLEAN"),
        ("protocol_key", "VARCHAR"),
        ("lp_top1", "DOUBLE"),
        ("lp_top5", "DOUBLE"),
        ("lds", "DOUBLE"),
        ("cds", "DOUBLE"),
        ("srss", "DOUBLE"),
        ("rmsc", "DOUBLE"),
        ("published_name", "VARCHAR"),
        ("random_weights", "BOOLEAN"),  # the run's encoders / VAE were random-init
    ),
    "train_log": (
        ("run_id", "VARCHAR"),
        ("step", "BIGINT"),
        ("loss", "DOUBLE"),
        ("flow_loss", "DOUBLE"),
        ("proj_loss", "DOUBLE"),
        ("align_cos", "DOUBLE"),
        ("grad_norm", "DOUBLE"),
        ("lr", "DOUBLE"),
        ("images_per_s", "DOUBLE"),
        ("time", "DOUBLE"),
    ),
    "runs": (
        ("run_id", "VARCHAR"),
        ("sweep", "VARCHAR"),
        ("encoder", "VARCHAR"),
        ("method", "VARCHAR"),
        ("model", "VARCHAR"),
        ("seed", "BIGINT"),
        ("steps_target", "BIGINT"),
        ("steps_done", "BIGINT"),
        ("status", "VARCHAR"),
        ("config", "VARCHAR"),
    ),
    "stages": (
        ("key", "VARCHAR"),
        ("stage", "VARCHAR"),
        ("label", "VARCHAR"),
        ("state", "VARCHAR"),
        ("job_id", "VARCHAR"),
        ("error", "VARCHAR"),
        ("path", "VARCHAR"),  # artifact directory relative to the results root
    ),
    "evaluations": (  # only to find each evaluation's artifact (its samples/)
        ("run_id", "VARCHAR"),
        ("step", "BIGINT"),
        ("protocol_key", "VARCHAR"),
        ("stage_key", "VARCHAR"),
    ),
    "published": (
        ("paper", "VARCHAR"),
        ("encoder", "VARCHAR"),
        ("model", "VARCHAR"),
        ("method", "VARCHAR"),
        ("train_steps", "VARCHAR"),  # numbers or 'NA' as printed in the papers' tables
        ("cfg", "VARCHAR"),
        ("metric", "VARCHAR"),
        ("value", "DOUBLE"),
        ("source_note", "VARCHAR"),
    ),
    "spatial_metrics": (
        ("encoder", "VARCHAR"),
        ("dataset", "VARCHAR"),
        ("grid", "VARCHAR"),
        ("n_images", "BIGINT"),
        ("lds", "DOUBLE"),
        ("cds", "DOUBLE"),
        ("srss", "DOUBLE"),
        ("rmsc", "DOUBLE"),
        ("random_weights", "BOOLEAN"),  # measured on a random-init encoder
    ),
    "probes": (
        ("encoder", "VARCHAR"),
        ("pooling", "VARCHAR"),
        ("top1", "DOUBLE"),
        ("top5", "DOUBLE"),
        ("random_weights", "BOOLEAN"),
    ),
    "encoders": (
        ("name", "VARCHAR"),
        ("family", "VARCHAR"),
        ("published_name", "VARCHAR"),
    ),
}

# Columns read when present and NaN when absent (databases ingested before the migration that
# added them): name -> ((column, duckdb type), ...). 003_class_accuracy adds these to v_study.
OPTIONAL_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "v_study": (
        ("class_accuracy", "DOUBLE"),  # fraction of samples classified as their conditioning class
        ("class_accuracy_real", "DOUBLE"),  # the same classifier on real val images (ceiling)
    ),
}


def columns(name: str) -> list[str]:
    """The column names the report reads from table/view ``name``."""
    return [column for column, _ in READ_CONTRACT[name]]


def optional_columns(name: str) -> list[str]:
    """The columns of ``name`` the report reads when present (NaN otherwise)."""
    return [column for column, _ in OPTIONAL_COLUMNS.get(name, ())]
