"""Flow matching: interpolants, time sampling, targets, and the velocity -> score map.

Convention (REPA / iREPA code): ``t = 0`` is data, ``t = 1`` is noise,

    x_t = α_t x_0 + σ_t ε,        v_t = α'_t x_0 + σ'_t ε   (the network's target),

linear: α_t = 1 - t, σ_t = t; cosine: α_t = cos(πt/2), σ_t = sin(πt/2).
Everything here runs in fp32 (float64 where the sampler asks), independent of autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.config.train import INTERPOLANTS


@dataclass(frozen=True)
class Interpolant:
    """A path x_t = α_t x_0 + σ_t ε; subclasses define α, σ, their derivatives, and the inverse
    of the noise-to-signal ratio σ_t/α_t (used by log-normal time sampling)."""

    name: str

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def t_from_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """The t at which σ_t / α_t equals ``ratio`` (> 0)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LinearPath(Interpolant):
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, -1.0)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def t_from_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        return ratio / (1 + ratio)


@dataclass(frozen=True)
class CosinePath(Interpolant):
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(t * (math.pi / 2))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(t * (math.pi / 2))

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -(math.pi / 2) * torch.sin(t * (math.pi / 2))

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (math.pi / 2) * torch.cos(t * (math.pi / 2))

    def t_from_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        return torch.atan(ratio) * (2 / math.pi)


LINEAR = LinearPath("linear")
COSINE = CosinePath("cosine")
PATHS = INTERPOLANTS  # TrainConfig.path names: the one registry (harness.config.train)


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))  # (B, 1, ..., 1)


# ---------------------------------------------------------------------------------------------
# Time sampling
# ---------------------------------------------------------------------------------------------
def sample_time(
    kind: str,
    n: int,
    *,
    path: Interpolant,
    generator: torch.Generator,
    device: torch.device | str,
    mean: float = -1.2,
    std: float = 1.2,
) -> torch.Tensor:
    """Draw (n,) training times in [0, 1).

    ``uniform``: t ~ U[0, 1). ``lognormal`` (EDM, as in REPA's ``weighting=lognormal``): the
    noise-to-signal ratio σ_t/α_t = exp(N(mean, std²)), mapped to t through the path.
    """
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if kind == "lognormal":
        ratio = torch.exp(torch.randn(n, generator=generator, device=device) * std + mean)
        return path.t_from_ratio(ratio)
    raise ValueError(f"unknown time sampling {kind!r}; allowed: lognormal, uniform")


# ---------------------------------------------------------------------------------------------
# Targets and conversions
# ---------------------------------------------------------------------------------------------
def interpolate(
    path: Interpolant, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, v_t) for data x0 (B, ...), noise (B, ...) and times t (B,)."""
    tt = _expand(t, x0)
    x_t = path.alpha(tt) * x0 + path.sigma(tt) * noise
    v_t = path.d_alpha(tt) * x0 + path.d_sigma(tt) * noise
    return x_t, v_t


def velocity_to_score(
    path: Interpolant, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """∇ log p_t(x) from the velocity v(x, t) (exact for the true velocity of the path).

    With E[x_0|x] and E[ε|x] from the two linear equations x = α x̂_0 + σ ε̂ and
    v = α' x̂_0 + σ' ε̂: score = -ε̂ / σ = (α v - α' x) / (σ (α' σ - α σ')).
    """
    tt = _expand(t, x)
    alpha, sigma = path.alpha(tt), path.sigma(tt)
    d_alpha, d_sigma = path.d_alpha(tt), path.d_sigma(tt)
    return (alpha * v - d_alpha * x) / (sigma * (d_alpha * sigma - alpha * d_sigma))


def flow_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared velocity error (B,), computed in fp32."""
    return (prediction.float() - target.float()).square().flatten(1).mean(1)
