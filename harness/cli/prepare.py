"""``harness prepare CONFIG``: encode a run's training images once into the SD-VAE latent cache.

Examples::

    harness prepare run.yaml
    harness prepare run.yaml --device cuda --batch-size 128
    harness prepare run.yaml --split val

The cache lives under ``results/cache/latents/<key>``, keyed by the dataset fingerprint, split and
VAE, so every run on the same data shares it. An interrupted prepare continues where it stopped.
Training uses the cache automatically (``train.latents: auto``); raw images stay available for
the encoder targets.
"""

from __future__ import annotations

import argparse

from harness.cli import POSITIVE_INT, Command
from harness.cli.train import add_device_argument, add_run_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_config_arguments(parser)
    parser.add_argument(
        "--split", choices=("train", "val"), default="train", help="split to encode"
    )
    parser.add_argument(
        "--batch-size", type=POSITIVE_INT, default=64, help="images per VAE forward (64)"
    )
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from harness.config.run import load_run
    from harness.data import build_dataset
    from harness.errors import ConfigError
    from harness.paths import results_root
    from harness.train.latents import latent_cache, load_vae

    cfg = load_run(args.config, args.overrides)
    if cfg.model.space != "latent":
        raise ConfigError(f"{args.config}: model.space is {cfg.model.space!r}; nothing to encode")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dataset = build_dataset(cfg.data, args.split)
    cache, _ = latent_cache(dataset, args.split, cfg.train.vae, cfg.random_weights, results_root())
    if cache.complete:
        print(f"latent cache complete: {cache.dir}")
        return 0
    vae = load_vae(cfg.train.vae, device, random_weights=cfg.random_weights)
    meta = {
        "dataset": dataset.fingerprint(),
        "split": args.split,
        "vae": cfg.train.vae,
        "random_vae": cfg.random_weights,
        "data": cfg.data.to_dict(),
    }
    encoded = cache.prepare(dataset, vae, meta=meta, batch_size=args.batch_size, device=device)
    print(f"encoded {encoded} images ({len(dataset)} total) -> {cache.dir}")
    return 0


COMMAND = Command(
    name="prepare",
    help="encode a dataset once into the SD-VAE latent cache (resumable)",
    examples="""
        harness prepare run.yaml
        harness prepare run.yaml --device cuda --batch-size 128
    """,
    add_arguments=add_arguments,
    run=run,
    order=25,
)
