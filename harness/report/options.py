"""Settings of one ``harness report`` invocation (typed, frozen; the CLI builds it)."""

from __future__ import annotations

from pydantic import Field

from harness.config.base import Config


class ReportOptions(Config):
    """What to report and how; every field has a documented default."""

    sweep: str | None = None  # restrict to one sweep (None: every sweep in the database)
    step: int | None = Field(default=None, ge=0)  # eval step to correlate (None: best-covered)
    against_published: bool = False  # encoder metrics measured here vs the papers' FIDs
    n_boot: int = Field(default=2000, ge=0)  # bootstrap resamples per interval (0: no CIs)
    seed: int = 0  # bootstrap seed (same seed, same intervals)
    level: float = Field(default=0.95, gt=0.0, lt=1.0)  # confidence level of the intervals
    influence_threshold: float = Field(default=0.1, gt=0.0)  # flag points moving r by more
    min_n: int = Field(default=5, ge=3)  # warn when a correlation rests on fewer points
    dpi: int = Field(default=110, ge=50, le=600)  # PNG resolution
    vector_format: str = Field(default="svg", pattern="^(svg|pdf)$")  # paper-ready copy
    min_published_matches: int = Field(default=3, ge=3)  # published tables need this many
