"""Training batches: a resumable, rank-aware index stream, seeded per-step noise, and the map
from raw uint8 images (or cached VAE moments) to the SiT input x_0.

Determinism contract (what exact resume and DDP-size independence rest on):

* the data order is one infinite stream of indices: epoch ``e`` is a permutation drawn from
  ``(seed, e)``; step ``k`` consumes stream positions ``[k G, (k+1) G)`` (``G`` = global batch),
  rank ``r`` takes the ``r``-th of ``world`` equal slices, split further into micro-batches;
* every random number of step ``k`` (times, noise, label dropout, VAE posterior noise) is drawn
  for the whole global batch from a generator seeded by ``(seed, k)``, then sliced the same way.

So the data position is a function of the step alone, and one process with a global batch of
``G`` computes exactly the samples that ``world`` processes compute together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import get_args

import torch
from torch.utils.data import Sampler

from harness.config.sampler import OFFICIAL_TO_UINT8, ToUint8
from harness.train.flow import Interpolant, sample_time


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(device: torch.device | str, *parts: object) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*parts))
    return generator


# ---------------------------------------------------------------------------------------------
# Index stream
# ---------------------------------------------------------------------------------------------
class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches of dataset indices for steps ``start_step .. steps-1``.

    Args:
        n_items: dataset size N.
        global_batch: samples per step over all ranks (G).
        rank, world_size: this process and the number of processes (G % world == 0).
        micro_batch: samples per forward pass on this rank (divides G / world).
        seed: run seed (epoch permutations derive from it).
        start_step: first step to produce (the resume position).
        steps: one past the last step.
    """

    def __init__(
        self,
        n_items: int,
        *,
        global_batch: int,
        rank: int,
        world_size: int,
        micro_batch: int,
        seed: int,
        start_step: int,
        steps: int,
    ) -> None:
        if n_items < 1:
            raise ValueError("the training set is empty")
        self.n_items = n_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.micro_batch = micro_batch
        self.seed = seed
        self.start_step = start_step
        self.steps = steps
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            gen = seeded_generator("cpu", self.seed, "data-order", epoch)
            self._perms[epoch] = torch.randperm(self.n_items, generator=gen)
        return self._perms[epoch]

    def global_indices(self, step: int) -> torch.Tensor:
        """The G dataset indices of ``step`` (all ranks), (G,) int64."""
        positions = torch.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs, offsets = positions // self.n_items, positions % self.n_items
        out = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._perm(epoch)[offsets[mask]]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.rank * self.local_batch
        for step in range(self.start_step, self.steps):
            local = self.global_indices(step)[lo : lo + self.local_batch]
            for start in range(0, self.local_batch, self.micro_batch):
                yield local[start : start + self.micro_batch].tolist()

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0) * (self.local_batch // self.micro_batch)


# ---------------------------------------------------------------------------------------------
# Per-step randomness
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepNoise:
    """The random numbers of one step for this rank's samples (L = local batch)."""

    t: torch.Tensor  # (L,) training times
    noise: torch.Tensor  # (L, C, S, S) ε
    drop: torch.Tensor  # (L,) bool: replace the label by the null class
    posterior: torch.Tensor | None  # (L, C, S, S) VAE posterior noise (latent space) or None

    def slice(self, start: int, stop: int) -> StepNoise:
        post = None if self.posterior is None else self.posterior[start:stop]
        return StepNoise(self.t[start:stop], self.noise[start:stop], self.drop[start:stop], post)


def draw_step_noise(
    *,
    seed: int,
    step: int,
    global_batch: int,
    rank: int,
    world_size: int,
    shape: tuple[int, int, int],
    latent: bool,
    class_dropout: float,
    path: Interpolant,
    time_sampling: str,
    time_mean: float,
    time_std: float,
    device: torch.device,
) -> StepNoise:
    """Draw step ``step``'s noise for the whole global batch and return this rank's slice."""
    gen = seeded_generator(device, seed, "step-noise", step)
    g = global_batch
    t = sample_time(
        time_sampling, g, path=path, generator=gen, device=device, mean=time_mean, std=time_std
    )  # (G,)
    noise = torch.randn((g, *shape), generator=gen, device=device)  # (G, C, S, S)
    drop = torch.rand(g, generator=gen, device=device) < class_dropout  # (G,)
    posterior = torch.randn((g, *shape), generator=gen, device=device) if latent else None
    local = g // world_size
    return StepNoise(t, noise, drop, posterior).slice(rank * local, (rank + 1) * local)


# ---------------------------------------------------------------------------------------------
# Model inputs
# ---------------------------------------------------------------------------------------------
def pixels_to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def model_to_pixels(x: torch.Tensor, to_uint8: ToUint8 = OFFICIAL_TO_UINT8) -> torch.Tensor:
    """Generated images (B, 3, H, W) in [-1, 1] -> uint8 (B, 3, H, W).

    ``truncate`` (default) is the official REPA / iREPA ``generate.py``:
    ``torch.clamp(255 * (x + 1) / 2, 0, 255).to(torch.uint8)``; ``round`` rounds to the
    nearest level before clamping. Only model outputs go through this; real images are uint8.
    """
    if to_uint8 == "truncate":
        return torch.clamp(255.0 * ((x.float() + 1.0) / 2.0), 0, 255).to(torch.uint8)
    if to_uint8 == "round":
        return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"to_uint8 must be one of {get_args(ToUint8)}, got {to_uint8!r}")


def sample_posterior(
    moments: torch.Tensor, eps: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """z = ((mean + std ε) - bias) * scale from VAE moments (B, 2C, s, s) (REPA's
    ``sample_posterior``); scale and bias are (C,) per-channel."""
    mean, std = moments.float().chunk(2, dim=1)  # (B, C, s, s) each
    z = mean + std * eps
    return (z - bias.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
