"""Settings of the encoder spatial-structure measurement (the sweep's ``spatial`` stage)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from harness.config.base import Config


class SpatialConfig(Config):
    """How LDS / CDS / SRSS / RMSC are measured (defaults: the iREPA analysis code)."""

    images: int = Field(10_000, ge=1)  # evaluation images streamed through each encoder
    batch_size: int = Field(32, ge=1)  # images per encoder forward pass
    num_workers: int = Field(2, ge=0)  # DataLoader worker processes
    split: Literal["train", "val"] = "val"  # dataset split the images come from
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # encoder compute dtype
    grid: int | None = Field(None, ge=1)  # token grid side; null = the sweep's SiT token grid
    far_dist: int = Field(6, ge=1)  # LDS: "far" pairs have Manhattan distance >= this
    cds_max_dist: int = Field(8, ge=2)  # CDS: fit the correlogram at distances 1..this
    srss_pos_dist: int = Field(1, ge=1)  # SRSS: positives are fg tokens at 1 <= d <= this
    srss_neg_dist: int = Field(6, ge=1)  # SRSS: negatives are bg tokens at d >= this
    srss_min_fg_frac: float = Field(0.25, ge=0.0, le=1.0)  # image counts in SRSS only with
    #   >= this fraction of foreground tokens (paper: 64 of 256 at 16x16)
    srss_min_bg_frac: float = Field(0.25, ge=0.0, le=1.0)  # ... and of background tokens
    save_features: bool = True  # also write features.npz (pooled features for linear probes)

    @model_validator(mode="after")
    def _radii(self) -> SpatialConfig:
        if self.srss_neg_dist <= self.srss_pos_dist:
            raise ValueError(
                f"srss_neg_dist ({self.srss_neg_dist}) must be > srss_pos_dist "
                f"({self.srss_pos_dist})"
            )
        return self

    def metric_params(self, num_tokens: int) -> dict[str, int]:
        """Keyword arguments of ``harness.metrics.spatial.spatial_metrics`` for a grid of
        ``num_tokens`` tokens (the SRSS minimum counts scale with the grid)."""
        return {
            "far_dist": self.far_dist,
            "cds_max_dist": self.cds_max_dist,
            "srss_pos_dist": self.srss_pos_dist,
            "srss_neg_dist": self.srss_neg_dist,
            "srss_min_fg": math.ceil(self.srss_min_fg_frac * num_tokens),
            "srss_min_bg": math.ceil(self.srss_min_bg_frac * num_tokens),
        }
