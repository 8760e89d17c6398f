"""``latents``: the SD-VAE latent cache of the training images (latent-space sweeps only),
encoded once per dataset × VAE and shared by every run (``harness.train.latents``; training
finds the complete cache under ``results/cache/latents/<key>`` by itself)."""

from __future__ import annotations

from typing import Any

from harness.config.data import DataConfig, resolved_data
from harness.config.run import RunConfig
from harness.stages import Stage, StageContext, StageOutcome, register, typed

SPLIT = "train"
BATCH_SIZE = 64


def instance(data: DataConfig, vae: str, random_weights: bool) -> dict[str, Any]:
    """The config of the latent cache's instance (planned by a sweep; ``harness train`` names
    it as the upstream of a latent-space run: the same dict, so the same key)."""
    return {"data": resolved_data(data).to_dict(), "vae": vae, "random_weights": random_weights}


def upstream_of(run: RunConfig) -> dict[str, Any] | None:
    """The config of the latents instance a run trains on (latent space with cached latents),
    else None: what the plan and ``harness train`` both name as the run's upstream."""
    if run.model.space != "latent" or run.train.latents == "online":
        return None
    return instance(run.data, run.train.vae, run.random_weights)


def run(ctx: StageContext) -> StageOutcome:
    from harness.config.data import DataConfig
    from harness.data import build_dataset
    from harness.train.latents import latent_cache, load_vae

    data = typed(DataConfig, ctx.config["data"])
    vae_id, random_vae = ctx.config["vae"], bool(ctx.config["random_weights"])
    dataset = build_dataset(data, SPLIT)
    cache, key = latent_cache(dataset, SPLIT, vae_id, random_vae, ctx.root)
    meta = {
        "dataset": dataset.fingerprint(),
        "split": SPLIT,
        "vae": vae_id,
        "random_vae": random_vae,
        "data": data.to_dict(),
    }
    encoded = 0
    if not cache.complete:
        vae = load_vae(vae_id, ctx.device, random_weights=random_vae)
        encoded = cache.prepare(dataset, vae, meta=meta, batch_size=BATCH_SIZE, device=ctx.device)
    return StageOutcome({**meta, "cache_key": key, "n_images": len(dataset), "encoded": encoded})


STAGE = register(
    Stage(
        name="latents",
        version=1,
        run=run,
        key_fields=("data", "vae", "random_weights"),
        description="SD-VAE latent cache of the training images",
    )
)
