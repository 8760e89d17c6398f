"""``source: builtin``: control encoders that need no download.

They span a real range of spatial structure on a CPU-only study:

* ``pixels``: the raw (normalised) pixels of each patch, D = 3·p² (channel-major).
* ``pixels-blur``: the same after a Gaussian blur of ``params.sigma`` pixels (default p/2): a
  smooth field, stronger neighbour similarity than ``pixels``.
* ``noise``: i.i.d. N(0, 1) tokens of width ``params.dim`` (default 768), seeded by the image's
  bytes, so an image always gets the same tokens and there is no spatial structure at all.
* ``hog``: histograms of oriented gradients (Dalal & Triggs): unsigned orientation in
  ``params.bins`` bins (default 9) with linear vote interpolation, ``params.cells`` × ``cells``
  cells per patch (default 2), L2-Hys normalised per patch; D = cells² · bins.
* ``random-cnn``: a randomly initialised (seed 0) stride-2 conv stack down to stride p,
  width ``params.dim`` (default 256); p must be a power of two.

None has a CLS token; the pooled vector is the mean of the patch tokens.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.config.encoders import BUILTIN_ENCODERS, EncoderSpec
from harness.encoders.base import Backbone, BuildRequest, EncoderError, seeded_init


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p, W/p, C·p·p), channel-major within a patch."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, h // p, w // p, c * p * p)


class Pixels(Backbone):
    def __init__(self, patch: int, sigma: float = 0.0) -> None:
        super().__init__()
        self.patch = patch
        self.sigma = sigma
        self.weights_id = "builtin:pixels" if sigma == 0 else f"builtin:pixels-blur(sigma={sigma})"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if self.sigma > 0:
            x = gaussian_blur(x, self.sigma)
        return patchify(x, self.patch), None


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of (B, C, H, W); radius 3 sigma."""
    radius = max(1, math.ceil(3 * sigma))
    r = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (r / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    radius_h, radius_w = min(radius, x.shape[-2] - 1), min(radius, x.shape[-1] - 1)
    x = F.pad(x, (radius_w, radius_w, radius_h, radius_h), mode="reflect")
    k_w = kernel[radius - radius_w : radius + radius_w + 1]
    k_h = kernel[radius - radius_h : radius + radius_h + 1]
    x = F.conv2d(x, k_w.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k_h.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class Noise(Backbone):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.dim = dim
        self.weights_id = f"builtin:noise(dim={dim})"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        b, _, h, w = x.shape
        out = torch.empty(b, h // self.patch, w // self.patch, self.dim)
        for i in range(b):
            digest = hashlib.blake2b(x[i].float().cpu().numpy().tobytes(), digest_size=8)
            gen = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
            out[i] = torch.randn(out.shape[1:], generator=gen)
        return out.to(x.device), None


class Hog(Backbone):
    def __init__(self, patch: int, bins: int, cells: int) -> None:
        super().__init__()
        if patch % cells:
            raise EncoderError(f"hog: patch size {patch} is not divisible by cells {cells}")
        self.patch, self.bins, self.cells = patch, bins, cells
        self.weights_id = f"builtin:hog(bins={bins},cells={cells})"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        gray = x.mean(1, keepdim=True)  # (B, 1, H, W)
        padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
        gx = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]  # centred [-1, 0, 1]
        gy = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
        magnitude = torch.sqrt(gx.square() + gy.square())  # (B, 1, H, W)
        angle = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned, [0, pi)
        position = angle / (math.pi / self.bins) - 0.5  # bin centres at (k + 0.5) * width
        lower = torch.floor(position)
        frac = position - lower
        bins = torch.arange(self.bins, device=x.device).view(1, -1, 1, 1)
        low_bin = torch.remainder(lower, self.bins)
        high_bin = torch.remainder(lower + 1, self.bins)
        votes = magnitude * ((bins == low_bin) * (1 - frac) + (bins == high_bin) * frac)
        cell = self.patch // self.cells
        hist = F.avg_pool2d(votes, cell) * (cell * cell)  # (B, bins, H/cell, W/cell) sums
        b, _, hc, wc = hist.shape
        hist = hist.reshape(
            b, self.bins, hc // self.cells, self.cells, wc // self.cells, self.cells
        )
        feats = hist.permute(0, 2, 4, 3, 5, 1).reshape(b, hc // self.cells, wc // self.cells, -1)
        feats = feats / torch.sqrt(feats.square().sum(-1, keepdim=True) + 1e-6)  # L2-Hys
        feats = feats.clamp(max=0.2)
        feats = feats / torch.sqrt(feats.square().sum(-1, keepdim=True) + 1e-6)
        return feats, None


class RandomCNN(Backbone):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        stages = round(math.log2(patch))
        if 2**stages != patch:
            raise EncoderError(f"random-cnn: patch size {patch} is not a power of two")
        widths = [3] + [min(dim, 32 * 2**i) for i in range(stages - 1)] + [dim]
        layers: list[nn.Module] = []
        with seeded_init():
            for i in range(stages):
                layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
                if i < stages - 1:
                    layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.weights_id = f"random-init:seed0 (random-cnn dim={dim})"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x).permute(0, 2, 3, 1), None


# the entries of harness.config.encoders.BUILTIN_ENCODERS (model_id -> build_<model_id>)
def build_pixels(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    return Pixels(spec.patch_size)


def build_pixels_blur(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    return Pixels(spec.patch_size, float(spec.params.get("sigma", spec.patch_size / 2)))


def build_noise(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    return Noise(spec.patch_size, int(spec.params.get("dim", 768)))


def build_hog(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    return Hog(spec.patch_size, int(spec.params.get("bins", 9)), int(spec.params.get("cells", 2)))


def build_random_cnn(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    return RandomCNN(spec.patch_size, int(spec.params.get("dim", 256)))


def build(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    return BUILTIN_ENCODERS.get(spec.model_id)(spec, request)


def fetch(spec: EncoderSpec) -> str:
    return "builtin (nothing to fetch)"


def locate(spec: EncoderSpec) -> str:
    return "builtin (no weights)"
