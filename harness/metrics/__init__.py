"""Encoder measurements: spatial-structure metrics (LDS, CDS, SRSS, RMSC), CKNNA, and the
driver that streams a dataset through an encoder (``measure.measure_encoder``).

``harness.metrics.spatial`` and ``harness.metrics.cknna`` import torch; this package file does
not, so ``MetricError`` is cheap to import.
"""

from __future__ import annotations

from harness.errors import HarnessError

# the spatial-structure metrics, in the column order of per_image.csv and the report (the one list)
SPATIAL_METRICS = ("lds", "cds", "srss", "rmsc")


class MetricError(HarnessError):
    """A metric was given inputs it cannot use (shape, grid, masks, non-finite values)."""


__all__ = ["SPATIAL_METRICS", "MetricError"]
