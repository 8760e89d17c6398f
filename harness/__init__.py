"""harness: the benchmarking harness for encoder studies in REPA / iREPA diffusion training.

Importing ``harness`` is cheap and side-effect free: no torch, no I/O.
"""

__version__ = "0.1.0"
