"""Sampler settings: part of every evaluation's recorded protocol."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from harness.config.base import Config

# How generated samples in [-1, 1] become uint8 pixels (harness.train.data.model_to_pixels):
# ``truncate`` is the official REPA / iREPA generate.py, clamp(255 (x + 1) / 2, 0, 255) cast to
# uint8; ``round`` rounds to the nearest level first.
ToUint8 = Literal["truncate", "round"]
OFFICIAL_TO_UINT8: ToUint8 = "truncate"  # the default everywhere


class SamplerConfig(Config):
    """How images are generated from a trained SiT (defaults: the papers' 250-step SDE, no CFG)."""

    mode: Literal["sde", "ode"] = "sde"  # Euler–Maruyama SDE or Euler ODE
    num_steps: int = Field(250, ge=1, le=10_000)  # integration steps (NFE: 2 per guided step)
    cfg_scale: float = Field(1.0, ge=1.0)  # classifier-free guidance scale (1.0 = off)
    guidance_low: float = Field(0.0, ge=0.0, le=1.0)  # CFG applied only for t in [low, high]
    guidance_high: float = Field(1.0, ge=0.0, le=1.0)
    last_step_size: float = Field(0.04, gt=0.0, lt=1.0)  # SDE: the final step ends at t = this
    batch_size: int = Field(64, ge=1)  # images per forward pass
    precision: Literal["fp32", "bf16"] = "fp32"  # network forward dtype (state stays float64)
    to_uint8: ToUint8 = (
        OFFICIAL_TO_UINT8  # samples -> uint8 pixels (official generate.py: truncate)
    )

    @model_validator(mode="after")
    def _interval_ordered(self) -> SamplerConfig:
        if self.guidance_low > self.guidance_high:
            raise ValueError(
                f"@guidance_low: guidance_low ({self.guidance_low}) must be <= guidance_high ({self.guidance_high})"
            )
        return self
