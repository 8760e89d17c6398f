"""SD-VAE latents: the autoencoder (diffusers ``AutoencoderKL``), latent scaling, and the latent
cache that ``harness prepare`` fills once per (dataset, VAE).

Latent convention (REPA): the cache stores the VAE posterior moments (mean, std), 8 x 32 x 32 for
a 256-px image; training samples z = mean + std·ε with ε from the step's seeded generator and
feeds ``(z - bias) * scale`` to the SiT (scale 0.18215, bias 0, or per-channel statistics).
Samples are decoded with ``vae.decode(z / scale + bias)``.

Cache layout (``results/cache/latents/<key>/``, key = hash of dataset fingerprint, split, VAE)::

    moments.npy     (N, 2C, s, s) float16, written in index order (a memory map)
    progress.json   {"done": n}   rows [0, n) are final (atomic; resume continues from n)
    meta.json       written last: dataset, vae, shape, n -> the cache is complete
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config.sampler import OFFICIAL_TO_UINT8, ToUint8
from harness.config.train import TrainConfig
from harness.errors import ArtifactError, WeightsError
from harness.io import make_dirs, share, write_json
from harness.keys import KeyFields
from harness.logs import event, get_logger
from harness.progress import progress
from harness.train.data import model_to_pixels, pixels_to_model
from harness.train.latent_stats import read_latent_stats

log = get_logger(__name__)

# config.json of stabilityai/sd-vae-ft-mse (and -ema): builds the architecture offline; weights
# come from the HF cache, or stay random (tests, random_weights runs).
SD_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
CACHE_FORMAT = 1


def load_vae(
    name: str,
    device: torch.device | str = "cpu",
    *,
    random_weights: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The frozen SD-VAE ``name`` (a diffusers repo id or local folder), in eval mode.

    Args:
        name: e.g. ``"stabilityai/sd-vae-ft-mse"``.
        device: where to put it.
        random_weights: build the SD-VAE architecture with seeded random weights (no download).
        dtype: parameter dtype.

    Raises:
        WeightsError: the weights are not in the local Hugging Face cache.
    """
    from diffusers import AutoencoderKL

    if random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vae = AutoencoderKL.from_config(SD_VAE_CONFIG)
    else:
        try:
            vae = AutoencoderKL.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise WeightsError(
                f"VAE {name!r} could not be loaded: {exc}",
                hint="download it on a machine with internet (huggingface-cli download "
                f"{name}) into the shared HF cache, or set random_weights for tests",
            ) from exc
    vae = vae.to(device) if dtype == torch.float32 else vae.to(device=device, dtype=dtype)
    return vae.eval().requires_grad_(False)


@dataclass(frozen=True)
class LatentScaling:
    """Per-channel affine map between VAE latents and SiT inputs: z_sit = (z - bias) * scale."""

    scale: torch.Tensor  # (C,)
    bias: torch.Tensor  # (C,)

    @classmethod
    def from_config(cls, cfg: TrainConfig, channels: int = 4) -> LatentScaling:
        """Scalar ``latent_scale`` (bias 0), or per-channel ``scale``/``bias`` from the
        ``latent_stats`` file (iREPA release / REPA-E style; format: ``harness.train.latent_stats``).

        Raises:
            DataError: the stats file is missing, malformed or has the wrong channel count.
        """
        if cfg.latent_stats is None:
            return cls(torch.full((channels,), cfg.latent_scale), torch.zeros(channels))
        scale, bias = read_latent_stats(cfg.latent_stats, channels)  # float64 (C,)
        return cls(
            torch.as_tensor(scale, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)
        )

    def to(self, device: torch.device | str) -> LatentScaling:
        return LatentScaling(self.scale.to(device), self.bias.to(device))

    def decode_input(self, z: torch.Tensor) -> torch.Tensor:
        """SiT latents (B, C, s, s) -> VAE latents."""
        return z / self.scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


@torch.no_grad()
def encode_moments(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> posterior moments (B, 2C, H/8, W/8) = cat(mean, std), fp32."""
    dtype = next(vae.parameters()).dtype
    dist = vae.encode(pixels_to_model(images).to(dtype)).latent_dist
    return torch.cat([dist.mean, dist.std], dim=1).float()


@torch.no_grad()
def decode_latents(
    vae: torch.nn.Module,
    z: torch.Tensor,
    scaling: LatentScaling,
    to_uint8: ToUint8 = OFFICIAL_TO_UINT8,
) -> torch.Tensor:
    """SiT latents (B, C, s, s) -> uint8 images (B, 3, 8s, 8s) (``model_to_pixels``)."""
    dtype = next(vae.parameters()).dtype
    vae_z = scaling.to(z.device).decode_input(z.float()).to(dtype)
    return model_to_pixels(vae.decode(vae_z).sample, to_uint8)


# ---------------------------------------------------------------------------------------------
# Latent cache
# ---------------------------------------------------------------------------------------------
LATENT_CACHE_KEY = KeyFields(
    "latent-cache", CACHE_FORMAT, fields=("dataset", "split", "vae", "random_vae")
)


def latent_cache(
    dataset: Any, split: str, vae: str, random_vae: bool, root: Path
) -> tuple[LatentCache, str]:
    """The latent cache of ``dataset`` (one split) under results ``root``: (cache, key). The one
    place its key is made, shared by the ``latents`` stage, ``harness prepare`` and training."""
    from harness.paths import cache_dir

    key = LATENT_CACHE_KEY.key(
        {"dataset": dataset.fingerprint(), "split": split, "vae": vae, "random_vae": random_vae}
    )
    return LatentCache(cache_dir(root, "latents") / key), key


class LatentCache:
    """One dataset split encoded by one VAE (see the module docstring for the layout)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    @property
    def complete(self) -> bool:
        return (self.dir / "meta.json").exists()

    def done(self) -> int:
        path = self.dir / "progress.json"
        if not path.exists():
            return 0
        try:
            return int(json.loads(path.read_text())["done"])
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path}: unreadable latent-cache progress: {exc}") from exc

    def moments(self) -> np.ndarray:
        """The (N, 2C, s, s) float16 moments as a read-only memory map (complete caches only)."""
        if not self.complete:
            raise ArtifactError(
                f"latent cache {self.dir} is incomplete",
                hint="run `harness prepare RUN.yaml` (it resumes where it stopped)",
            )
        return np.load(self.dir / "moments.npy", mmap_mode="r")

    def prepare(
        self,
        dataset: Any,
        vae: torch.nn.Module,
        *,
        meta: dict[str, Any],
        batch_size: int = 64,
        device: torch.device | str = "cpu",
    ) -> int:
        """Encode every image of ``dataset`` (resuming after the last finished batch).

        Returns:
            The number of images encoded by this call.
        """
        n = len(dataset)
        if self.complete:
            return 0
        make_dirs(self.dir)
        first = dataset.get_batch([0])["image"]  # (1, 3, H, W)
        shape = tuple(encode_moments(vae, first.to(device)).shape[1:])  # (2C, s, s)
        path = self.dir / "moments.npy"
        start = self.done()
        if start == 0 or not path.exists():
            start = 0
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, *shape))
            share(path)
        else:
            array = np.load(path, mmap_mode="r+")
            if array.shape != (n, *shape):
                raise ArtifactError(f"{path}: shape {array.shape} != expected {(n, *shape)}")
        bar = progress(total=n, initial=start, desc="encode latents", unit="img")
        for lo in range(start, n, batch_size):
            hi = min(lo + batch_size, n)
            images = dataset.get_batch(np.arange(lo, hi))["image"].to(device)
            array[lo:hi] = encode_moments(vae, images).cpu().numpy().astype(np.float16)
            array.flush()
            write_json(self.dir / "progress.json", {"done": hi})
            bar.update(hi - lo)
        bar.close()
        del array
        write_json(self.dir / "meta.json", {**meta, "n": n, "shape": list(shape)})
        event(log, "latents.prepared", dir=str(self.dir), n=n, encoded=n - start)
        return n - start


class LatentDataset(torch.utils.data.Dataset):
    """A dataset whose items also carry the cached VAE moments (``"moments"``)."""

    def __init__(self, base: Any, moments: np.ndarray) -> None:
        if len(base) != len(moments):
            raise ArtifactError(f"latent cache has {len(moments)} rows for {len(base)} images")
        self.base = base
        self.moments = moments

    def __len__(self) -> int:
        return len(self.base)

    @property
    def resolution(self) -> int:
        return self.base.resolution

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    def fingerprint(self) -> str:
        return self.base.fingerprint()

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        batch = self.base.get_batch(indices)
        moments = torch.from_numpy(np.ascontiguousarray(self.moments[np.asarray(indices)]))
        return [
            {**{k: v[i] for k, v in batch.items()}, "moments": moments[i]}
            for i in range(len(indices))
        ]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]
