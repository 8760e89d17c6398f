"""``harness sample CKPT``: generate images from a training checkpoint's EMA weights.

Examples::

    harness sample results/stages/train/<run>/checkpoints/step_0100000.pt --n 64 --out grid.png
    harness sample CKPT --n 1000 --out samples.npz --sampler.mode ode --sampler.num_steps 50
    harness sample CKPT --n 16 --out cfg.png --sampler.cfg_scale 1.8 --sampler.guidance_high 0.7

Sample i uses seed ``--seed + i`` and label ``i mod num_classes`` (or ``--label``), so a sample
does not depend on the batch size or on how the work is split. ``.npz`` holds ``arr_0``
(N, H, W, 3) uint8 (the ADM evaluator layout), ``labels`` and ``seeds``; a ``.png`` is a grid.
The exact settings go to ``<out>.json`` next to the output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import NON_NEGATIVE_INT, POSITIVE_INT, Command, add_trust_checkpoint_argument
from harness.cli.train import add_device_argument
from harness.config.sampler import SamplerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a checkpoints/step_*.pt file")
    parser.add_argument("--n", type=POSITIVE_INT, default=64, help="number of images (default 64)")
    parser.add_argument("--out", required=True, metavar="FILE", help="grid .png or samples .npz")
    parser.add_argument(
        "--seed", type=NON_NEGATIVE_INT, default=0, help="seed of sample 0 (default 0)"
    )
    parser.add_argument(
        "--label",
        type=NON_NEGATIVE_INT,
        metavar="K",
        help="class of every sample (default: i mod classes)",
    )
    add_device_argument(parser)
    add_trust_checkpoint_argument(parser)
    parser.add_argument(
        "--vae",
        metavar="NAME",
        help="decoder for latent runs (default: the run's train.vae; REPA decodes with "
        "stabilityai/sd-vae-ft-ema)",
    )
    group = parser.add_argument_group("sampler (harness.config.sampler.SamplerConfig)")
    for name, field in SamplerConfig.model_fields.items():
        group.add_argument(
            f"--sampler.{name}",
            dest=f"sampler_{name}",
            metavar="V",
            help=f"default {field.default!r}",
        )


def _sampler_config(args: argparse.Namespace) -> SamplerConfig:
    from harness.config.loader import parse_yaml, validate

    doc = parse_yaml("{}", "--sampler")
    overrides = [
        f"{name}={getattr(args, f'sampler_{name}')}"
        for name in SamplerConfig.model_fields
        if getattr(args, f"sampler_{name}") is not None
    ]
    return validate(SamplerConfig, doc, overrides)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from harness.errors import ConfigError
    from harness.io import atomic_write, write_json
    from harness.train.checkpoint import load_for_sampling
    from harness.train.sampling import sample_images

    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise ConfigError(f"--out {out}: must end in .png (grid) or .npz (samples)")
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: give at least one sample")
    sampler = _sampler_config(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, run_cfg = load_for_sampling(args.checkpoint, device)
    classes = run_cfg.model.num_classes or 1
    if args.label is not None and not 0 <= args.label < classes:
        raise ConfigError(f"--label {args.label}: the model has classes 0..{classes - 1}")
    index = torch.arange(args.n, dtype=torch.int64)
    labels = torch.full_like(index, args.label) if args.label is not None else index % classes
    seeds = args.seed + index
    vae = None
    if run_cfg.model.space == "latent":
        from harness.train.latents import load_vae

        vae_name = args.vae or run_cfg.train.vae
        vae = load_vae(vae_name, device, random_weights=run_cfg.random_weights)
    images = sample_images(model, run_cfg, labels, seeds, sampler, device, vae=vae)  # (N,3,H,W)
    if out.suffix == ".npz":
        with atomic_write(out) as handle:
            np.savez(
                handle,
                arr_0=images.permute(0, 2, 3, 1).numpy(),
                labels=labels.numpy(),
                seeds=seeds.numpy(),
            )
    else:
        _save_grid(images, out)
    write_json(
        out.with_name(out.name + ".json"),
        {
            "checkpoint": str(Path(args.checkpoint).resolve()),
            "run": run_cfg.to_dict(),
            "sampler": sampler.to_dict(),
            "n": args.n,
            "seed_start": args.seed,
            "label": args.label,
            "device": str(device),
            "vae": None if vae is None else (args.vae or run_cfg.train.vae),
        },
    )
    print(f"wrote {args.n} samples to {out} (settings: {out.name}.json)")
    return 0


def _save_grid(images, path: Path) -> None:
    """A grid of ``images`` (N, 3, H, W) uint8, each upscaled (nearest) to a visible tile."""
    import math

    from PIL import Image
    from torchvision.utils import make_grid

    from harness.cli.tiles import zoom
    from harness.io import atomic_write

    factor = zoom(max(images.shape[-2:]))
    images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    grid = make_grid(images, nrow=max(1, round(math.sqrt(len(images)))), padding=2)  # (3, H, W)
    with atomic_write(path) as handle:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(handle, format="PNG")


COMMAND = Command(
    name="sample",
    help="generate images (png grid or npz) from a training checkpoint's EMA model",
    examples="""
        harness sample CKPT --n 64 --out grid.png
        harness sample CKPT --n 1000 --out samples.npz --sampler.mode ode --sampler.num_steps 50
    """,
    add_arguments=add_arguments,
    run=run,
    order=35,
)
