"""How image grids for people to look at are sized (``harness data preview``, ``harness sample``).

Small images are upscaled by a whole factor, nearest neighbour (no blur, every pixel visible),
so that each tile is at least :data:`TILE_MIN` pixels wide.
"""

from __future__ import annotations

import math

TILE_MIN = 96  # pixels a tile is at least (32-px images: x3)


def zoom(size: int) -> int:
    """The whole upscaling factor that makes a ``size``-pixel image at least ``TILE_MIN`` wide."""
    return max(1, math.ceil(TILE_MIN / size))
