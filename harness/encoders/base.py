"""The one encoder interface: uint8 images in, patch tokens on a known grid out.

A *source* (timm, open_clip, ...) builds a :class:`Backbone`: an ``nn.Module`` that maps the
preprocessed input (B, 3, h*p, w*p) to spatial tokens (B, h', w', D) plus the CLS token (B, D)
when the model has one. :class:`Encoder` wraps it with everything that must be identical for
every source: preprocessing from the catalogue entry, eval mode, no grad, dtype/autocast,
resizing the token map when a model's stride does not give the requested grid, flattening to
row-major order, and the pooled vector (the CLS token if the model has one, else the mean of
the patch tokens).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.config.encoders import EncoderSpec
from harness.errors import HarnessError
from harness.logs import event, get_logger

log = get_logger(__name__)


class EncoderError(HarnessError):
    """An encoder got input it cannot use, or produced output that contradicts its entry."""


@dataclass(frozen=True)
class BuildRequest:
    """What :func:`harness.encoders.create_encoder` asks a source to build."""

    grid: tuple[int, int]  # token grid (h, w) the caller needs
    input_size: tuple[int, int]  # (H, W) = grid * patch_size: what the backbone is fed
    device: torch.device
    random_weights: bool  # build the architecture with random init, no file access


@dataclass(frozen=True)
class EncoderOutput:
    """One forward pass: ``tokens`` (B, T, D) float32 in row-major grid order, ``pooled``
    (B, D) float32, ``grid`` (h, w) with h * w = T."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    grid: tuple[int, int]


class Backbone(nn.Module):
    """A built model behind the common interface; subclasses implement :meth:`forward`."""

    weights_id: str = "unknown"  # resolved weight identity (tag@revision:sha, or random-init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W) preprocessed float -> (tokens (B, h', w', D), cls (B, D) or None)."""
        raise NotImplementedError


class Encoder(nn.Module):
    """A vision encoder with its catalogue preprocessing; call it with uint8 images."""

    def __init__(
        self, spec: EncoderSpec, backbone: Backbone, request: BuildRequest, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.grid = request.grid
        self.input_size = request.input_size
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self._warned_resize = False

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters())

    @property
    def weights_id(self) -> str:
        return self.backbone.weights_id

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 (B, 3, h*p, w*p): resize (the entry's interpolation),
        scale to [0, 1], normalise with the entry's mean/std."""
        self._check_images(images)
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            mode = self.spec.interpolation
            smooth = mode in ("bilinear", "bicubic")
            x = F.interpolate(
                x,
                size=self.input_size,
                mode=mode,
                align_corners=False if smooth else None,
                antialias=self.spec.antialias if smooth else False,
            )
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        with torch.inference_mode():
            x = self.preprocess(images)
            with self._autocast():
                tokens, cls = self.backbone(x)  # (B, h', w', D), (B, D) | None
            tokens = tokens.float()
            if tuple(tokens.shape[1:3]) != self.grid:
                tokens = self._resize_tokens(tokens)
            b, h, w, d = tokens.shape
            if d != self.spec.embed_dim:
                raise EncoderError(
                    f"encoder {self.spec.name!r} produced tokens of width {d}, but its catalogue "
                    f"entry says embed_dim {self.spec.embed_dim}",
                    hint="fix embed_dim (or layer / source params) in encoders.yaml",
                )
            tokens = tokens.reshape(b, h * w, d)  # row-major
            pooled = cls.float() if cls is not None else tokens.mean(1)
        # clones outside inference mode are ordinary tensors: usable as (constant) targets in
        # a loss that autograd differentiates, unlike inference tensors
        return EncoderOutput(tokens=tokens.clone(), pooled=pooled.clone(), grid=(h, w))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _resize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bilinear resize of the (h', w') token map to the requested grid."""
        if not self._warned_resize:
            event(
                log,
                "encoder.token_grid_resized",
                encoder=self.spec.name,
                native=list(tokens.shape[1:3]),
                grid=list(self.grid),
            )
            self._warned_resize = True
        maps = tokens.permute(0, 3, 1, 2)  # (B, D, h', w')
        maps = F.interpolate(maps, size=self.grid, mode="bilinear", align_corners=False)
        return maps.permute(0, 2, 3, 1)

    def _check_images(self, images: torch.Tensor) -> None:
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or images.ndim != 4
            or images.shape[1] != 3
        ):
            got = (
                f"{images.dtype} {tuple(images.shape)}"
                if isinstance(images, torch.Tensor)
                else type(images).__name__
            )
            raise EncoderError(
                f"encoder {self.spec.name!r} expects uint8 images (B, 3, H, W), got {got}"
            )


def num_prefix_check(spec: EncoderSpec, found: int) -> None:
    """Raise when the model's prefix-token count contradicts the catalogue entry."""
    if found != spec.num_prefix_tokens:
        raise EncoderError(
            f"encoder {spec.name!r}: the model has {found} prefix token(s) (CLS/registers) but "
            f"the catalogue says num_prefix_tokens {spec.num_prefix_tokens}",
            hint="fix num_prefix_tokens in encoders.yaml",
        )


def seeded_init(seed: int = 0) -> contextlib.AbstractContextManager:
    """Random init that is reproducible and leaves the global RNG untouched."""

    @contextlib.contextmanager
    def scope():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    return scope()
