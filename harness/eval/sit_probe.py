"""Linear probe on a trained SiT's hidden states (REPA's "global information" of SiT features).

Each image is mapped to the model's input space (pixels in [-1, 1], or the VAE posterior mean
with the run's latent scaling), noised to time ``noise_t`` along the run's path with noise
seeded by the image index (``t = 0`` is the clean image, ``t = 1`` pure noise), and passed
through the EMA SiT with the *null* label, so the features cannot read the class from the label
embedding. The tokens after block ``block`` are mean-pooled and probed exactly like encoder
features (:func:`harness.eval.probe.cached_probe`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.config.eval import ProbeConfig
from harness.errors import StageError
from harness.io import file_hash
from harness.keys import KeyFields
from harness.logs import event, get_logger

log = get_logger(__name__)
_STEP = re.compile(r"step_(\d+)\.pt$")
NOISE_SEED = 0  # noise of image i: seeded with NOISE_SEED + i (same across splits' indices)
SIT_PROBE_VERSION = 1  # bump when the probe of SiT hidden states changes meaning
SIT_PROBE_KEY = KeyFields(  # the result directory of `harness probe --sit`
    "sit_probe",
    SIT_PROBE_VERSION,
    fields=("checkpoint_sha256", "block", "noise_t", "probe"),
    exclude=("probe.extract_batch_size",),
)


def run_sit_probe(
    ckpt_path: str | Path,
    cfg: ProbeConfig,
    *,
    block: int,
    noise_t: float = 0.0,
    step: int | None = None,
    device: str = "cpu",
    root: str | Path | None = None,
) -> dict[str, Any]:
    """Probe the hidden states after ``block`` of a training checkpoint's EMA SiT.

    Args:
        ckpt_path: a ``checkpoints/step_*.pt`` file.
        cfg: probe protocol (``pooling`` must be ``mean``: SiT has no CLS token).
        block: 1-based SiT block whose output is probed.
        noise_t: input noise level in [0, 1) (0 = clean image).
        step: the checkpoint's training step (default: from the file name).
        device: extraction and training device.
        root: results root for the feature cache.

    Returns:
        The ``probe`` payload for SiT features: run_id, step, block, noise_t, pooling, top1,
        top5, best_lr, grid, n_train, n_val, subset_per_class, features_key, ...

    Raises:
        StageError: block out of range, t outside [0, 1), CLS pooling, or a model trained
            without a null label. ArtifactError: unreadable checkpoint.
    """
    from harness.config.run import run_id
    from harness.eval.probe import cached_probe
    from harness.train.checkpoint import load_for_sampling

    started = time.time()
    ckpt_path = Path(ckpt_path)
    if cfg.pooling != "mean":
        raise StageError("SiT hidden states have no CLS token: use probe.pooling: mean")
    if not 0.0 <= noise_t < 1.0:
        raise StageError(f"noise_t must lie in [0, 1) (1 is pure noise), got {noise_t}")
    if step is None:
        match = _STEP.search(ckpt_path.name)
        if match is None:
            raise StageError(f"{ckpt_path}: cannot tell the training step from the name; pass step")
        step = int(match.group(1))
    model, run = load_for_sampling(ckpt_path, device)
    depth = run.model.arch.depth
    if not 1 <= block <= depth:
        raise StageError(f"block {block} is outside {run.model.name}'s blocks 1..{depth}")
    if model.y_embedder.table.num_embeddings <= model.null_class:
        raise StageError(
            f"{ckpt_path}: the model was trained without label dropout (model.class_dropout = 0), "
            "so it has no null label and its hidden states would expose the class label"
        )

    def make_pool_fn() -> tuple[Any, str]:
        return _sit_pool_fn(model, run, block, noise_t, device), run_id(run)

    identity = {"checkpoint_sha256": file_hash(ckpt_path, 64), "block": block, "noise_t": noise_t}
    result = cached_probe(identity, make_pool_fn, run.data, cfg, device=device, root=root)
    event(
        log,
        "probe.sit.done",
        run_id=run_id(run),
        block=block,
        top1=result["top1"],
        seconds=round(time.time() - started, 1),
    )
    return {"run_id": run_id(run), "step": step, "block": block, "noise_t": noise_t, **result}


def _sit_pool_fn(model: Any, run: Any, block: int, noise_t: float, device: str) -> Any:
    """(uint8 images, indices) -> mean-pooled hidden tokens after ``block``, (B, D)."""
    import torch

    from harness.train.data import pixels_to_model, sample_posterior
    from harness.train.flow import PATHS, interpolate

    path = PATHS.get(run.train.path)
    latent = run.model.space == "latent"
    if latent:
        from harness.train.latents import LatentScaling, encode_moments, load_vae

        vae = load_vae(run.train.vae, device, random_weights=run.random_weights)
        scaling = LatentScaling.from_config(run.train, run.model.in_channels).to(device)

    def pool(images: Any, indices: np.ndarray) -> Any:
        images = images.to(device)
        with torch.no_grad():
            if latent:
                moments = encode_moments(vae, images)  # (B, 2C, s, s)
                mean = moments[:, : moments.shape[1] // 2]
                x0 = sample_posterior(moments, torch.zeros_like(mean), scaling.scale, scaling.bias)
            else:
                x0 = pixels_to_model(images)  # (B, 3, H, W)
            noise = torch.stack(
                [
                    torch.randn(
                        x0.shape[1:], generator=torch.Generator().manual_seed(NOISE_SEED + int(i))
                    )
                    for i in indices
                ]
            ).to(x0)
            t = torch.full((len(x0),), noise_t, device=x0.device)
            x_t, _ = interpolate(path, x0, noise, t)
            labels = torch.full((len(x0),), model.null_class, dtype=torch.long, device=x0.device)
            _, hidden = model.forward_features(x_t, t, labels, depth=block)  # (B, T, D)
        return hidden.float().mean(dim=1)

    return pool
