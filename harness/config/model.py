"""SiT architecture presets and the model section of a run config.

The presets are plain data (no torch), so configs validate model names, depths and token grids
without importing torch. ``harness.models.sit`` builds the networks from them.

=========  ======  ======  =====  ===========  ==============
preset     layers  hidden  heads  align depth  params (/2)
=========  ======  ======  =====  ===========  ==============
SiT-S/p    12      384     6      8            ~33M
SiT-B/p    12      768     12     4            ~130M
SiT-L/p    24      1024    16     8            ~458M
SiT-XL/p   28      1152    16     8            ~675M
SiT-T/p    4       64      4      2            tiny CPU-test preset (not a published size)
SiT-XS/p   6       128     4      2            extra-small CPU-study preset (not published)
=========  ======  ======  =====  ===========  ==============

``p`` ∈ {2, 4, 8} is the patch size. "align depth" is the default ``align.encoder_depth``:
REPA aligns the output of block 8 for L/XL and of block 4 for SiT-B (REPA App. G; its Table 6
says 8 for B, an internal inconsistency, see ``paper_facts.md`` §(b)).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from harness.config.base import Config
from harness.errors import RegistryError, did_you_mean, format_allowed


@dataclass(frozen=True)
class SiTArch:
    """The shape of one SiT preset."""

    depth: int  # number of transformer blocks
    hidden: int  # token width D
    heads: int  # attention heads (hidden % heads == 0)
    patch: int  # patch side p: a (C, S, S) input gives (S/p)^2 tokens
    align_depth: int  # default alignment depth (the hidden state after this block is aligned)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * hidden


# A plain mapping, not a harness Registry: Registry names may not contain "/", and the
# published preset names do ("SiT-XL/2"). Lookups go through sit_arch() for the same errors.
SIT_ARCHS: dict[str, SiTArch] = {}

# name -> (depth, hidden, heads, default alignment depth)
_SIZES = {
    "S": (12, 384, 6, 8),
    "B": (12, 768, 12, 4),
    "L": (24, 1024, 16, 8),
    "XL": (28, 1152, 16, 8),
    "T": (4, 64, 4, 2),  # tiny: CPU tests and smoke runs only
    "XS": (6, 128, 4, 2),  # extra small: CPU studies (bench_cpu_scale.py)
}
for _size, (_depth, _hidden, _heads, _align) in _SIZES.items():
    for _patch in (2, 4, 8):
        SIT_ARCHS[f"SiT-{_size}/{_patch}"] = SiTArch(_depth, _hidden, _heads, _patch, _align)


def check_name(value: str | None, allowed: Collection[str], what: str) -> str | None:
    """Field-validator helper: ``value`` if it is one of ``allowed`` (or None), else a
    ValueError reading "unknown <what> 'x' (did you mean 'y'?); allowed: ..."."""
    if value is not None and value not in allowed:
        raise ValueError(
            f"unknown {what} {value!r}{did_you_mean(value, allowed)}; "
            f"allowed: {format_allowed(allowed)}"
        )
    return value


def sit_arch(name: str) -> SiTArch:
    """The preset called ``name`` (e.g. ``"SiT-XL/2"``); raises RegistryError with suggestions."""
    try:
        return SIT_ARCHS[name]
    except KeyError:
        raise RegistryError(
            f"unknown SiT model {name!r}{did_you_mean(name, SIT_ARCHS)}",
            hint=f"allowed: {format_allowed(SIT_ARCHS)}",
        ) from None


def token_grid(name: str, input_size: int) -> tuple[int, int]:
    """The token grid (h, w) of SiT preset ``name`` on a (input_size, input_size) input: the
    one definition of a run's grid (the planner, the store's ``runs.grid``)."""
    side = input_size // sit_arch(name).patch
    return (side, side)


class ModelConfig(Config):
    """The SiT network of a run. ``None`` fields are resolved from the data config (and recorded
    resolved in the run config): ``input_size`` = image side (pixel) or image side / 8 (latent),
    ``in_channels`` = 3 (pixel) or 4 (latent), ``num_classes`` = the dataset's classes."""

    name: str = "SiT-B/2"  # preset: SiT-{S,B,L,XL}/{2,4,8}, or SiT-T/{2,4,8} for CPU tests
    space: Literal["latent", "pixel"] = "latent"  # SD-VAE latents (paper) or raw pixels
    input_size: int | None = Field(None, ge=1)  # spatial side of the SiT input; None = from data
    in_channels: int | None = Field(None, ge=1)  # input channels; None = 4 latent / 3 pixel
    num_classes: int | None = Field(None, ge=1)  # class labels; None = from the dataset
    class_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # label dropout for CFG (both papers: 0.1)
    learn_sigma: bool = False  # also predict a variance channel block (SiT/REPA: False)

    @field_validator("name")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return check_name(value, SIT_ARCHS, "SiT model") or value

    @property
    def arch(self) -> SiTArch:
        return sit_arch(self.name)

    @property
    def grid(self) -> tuple[int, int]:
        """The SiT token grid (h, w); needs a resolved ``input_size``."""
        if self.input_size is None:
            raise ValueError("model.input_size is not resolved yet")
        return token_grid(self.name, self.input_size)

    @property
    def out_channels(self) -> int:
        channels = self.in_channels or 0
        return 2 * channels if self.learn_sigma else channels
