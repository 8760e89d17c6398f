"""The eval stage: checkpoint -> N samples (resumable shards) -> metrics with their protocol.

::

    evaluate_checkpoint(ckpt, cfg, out_dir, reference_dir=..., step=100_000)
      1. load + check the reference statistics (missing / corrupt -> error before any sampling)
      2. resolve the extractors and check they are the reference's (name, weights hash, layer)
      3. load the EMA model (harness.train.checkpoint.load_for_sampling)
      4. generate this rank's missing shards under out_dir/samples (seed + i per sample)
      5. rank 0: features (fixed batch size, TF32 off) -> FID, IS, KID, PR, FD-DINOv2, class
         accuracy (substitute classifier vs the samples' labels; ceiling from the reference)
      6. return the payload (the caller writes result.json; nothing is written on error)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.eval import EvalConfig
from harness.config.model import ModelConfig
from harness.errors import ArtifactError, ConfigError, DataError, StageError
from harness.eval.features import ExtractorInfo
from harness.eval.generation import GenerateFn, SamplePlan
from harness.eval.reference import Reference
from harness.io import file_hash
from harness.logs import event, get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class SampleSource:
    """A model to sample from, as the driver sees it."""

    generate: GenerateFn  # (labels (B,) int64, seeds (B,) int64) -> uint8 (B, 3, H, W)
    num_classes: int  # labels are drawn from 0..num_classes-1
    run_id: str  # the training run
    identity: dict[str, Any] = field(default_factory=dict)  # content identity (checkpoint hash)
    vae: str | None = None  # decoder of a latent model (recorded)
    resolution: int | None = None  # side of the images it generates (None: unknown)


def source_from_checkpoint(
    ckpt_path: str | Path,
    cfg: EvalConfig,
    device: str = "cpu",
    *,
    expect_model: ModelConfig | None = None,
) -> SampleSource:
    """Load a training checkpoint's EMA model and wrap ``harness.train.sampling.sample_images``.

    Args:
        ckpt_path: a ``checkpoints/step_*.pt`` file.
        cfg: eval config (sampler, VAE decoder override).
        device: sampling device.
        expect_model: when given, the checkpoint must have been trained with this model config.

    Raises:
        ArtifactError: missing / corrupt checkpoint, or one of another model config.
    """
    from harness.config.run import run_id
    from harness.train.checkpoint import load_for_sampling
    from harness.train.sampling import sample_images

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise ArtifactError(f"checkpoint {ckpt_path}: no such file")
    model, run = load_for_sampling(ckpt_path, device, expect_model=expect_model)
    vae_name, vae = None, None
    if run.model.space == "latent":
        from harness.train.latents import load_vae

        vae_name = cfg.vae or run.train.vae
        vae = load_vae(vae_name, device, random_weights=run.random_weights)
        vae_name += "(random-weights)" if run.random_weights else ""

    def generate(labels: Any, seeds: Any) -> Any:
        return sample_images(model, run, labels, seeds, cfg.sampler, device, vae=vae)

    identity = {"checkpoint_sha256": file_hash(ckpt_path, 64), "run_id": run_id(run)}
    side = run.data.resolution
    return SampleSource(
        generate, int(run.model.num_classes or 0), run_id(run), identity, vae_name, side
    )


def evaluate_checkpoint(
    ckpt_path: str | Path,
    cfg: EvalConfig,
    out_dir: str | Path,
    *,
    reference_dir: str | Path,
    step: int,
    device: str = "cpu",
    source: SampleSource | None = None,
    expect_model: ModelConfig | None = None,
    num_samples_option: str = "eval.num_samples",
) -> dict[str, Any]:
    """Generate samples from a checkpoint and compute the generation metrics (``eval`` stage).

    Args:
        ckpt_path: training checkpoint (its EMA weights are sampled).
        cfg: the eval protocol.
        out_dir: stage directory; samples go to ``out_dir/samples`` (resumable).
        reference_dir: a ``fid_ref`` directory (``stats.npz`` + ``reference.json``).
        step: the training step of the checkpoint (recorded).
        device: sampling and extraction device.
        source: the model to sample (default: loaded from ``ckpt_path``); tests inject a
            small generator here.
        expect_model: the model config the checkpoint must have been trained with (a
            checkpoint of another model config is an error).
        num_samples_option: how errors name ``cfg.num_samples`` (``--num-samples`` on the CLI).

    Returns:
        The ``eval`` payload (docs/architecture.md) on rank 0; ``{}`` on other ranks.

    Raises:
        ArtifactError: missing / corrupt reference. DataError: sample and reference image
            sizes differ. ConfigError: too few samples (N <= feature dim), before sampling.
            StageError: extractor mismatch with the reference, malformed samples.
            HarnessError: bad checkpoint.
    """
    from harness.eval.features import build_extractor, iter_features, rebatch
    from harness.eval.fidelity import collect_generated, generation_metrics
    from harness.eval.generation import generate_samples, read_shards, sample_resolution
    from harness.eval.reference import load_reference

    started = time.time()
    out_dir = Path(out_dir)
    reference = load_reference(reference_dir)
    primary, dino = reference_extractors(reference, cfg)
    check_sample_count(cfg, reference, dino, option=num_samples_option)
    if source is None:
        source = source_from_checkpoint(ckpt_path, cfg, device, expect_model=expect_model)
    _check_resolution(reference, source.resolution, "the checkpoint's training data")
    plan = SamplePlan(
        cfg.num_samples, source.num_classes, cfg.seed, cfg.class_balanced, cfg.shard_size
    )
    rank, world = _rank_world()
    extractors = []  # built before sampling: unloadable weights fail fast
    if rank == 0:
        extractors.append(build_extractor(primary, _layers(primary, cfg), device))
        if dino is not None:
            extractors.append(build_extractor(dino, [dino.fid_layer], device))
    samples_dir = out_dir / "samples"
    sampler = {k: v for k, v in cfg.sampler.to_dict().items() if k != "batch_size"}  # no effect
    identity = {**source.identity, "sampler": sampler, "vae": source.vae}
    generate_samples(
        plan,
        source.generate,
        samples_dir,
        identity=identity,
        batch_size=cfg.sampler.batch_size,
        rank=rank,
        world_size=world,
    )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:
            return {}
    _check_resolution(reference, sample_resolution(samples_dir, plan)[0], "the generated samples")
    batches = rebatch(read_shards(samples_dir, plan), cfg.batch_size)
    generated = collect_generated(
        iter_features(
            extractors, batches, total=cfg.num_samples, device=device, desc="eval features"
        ),
        primary,
        dino,
        cfg,
        labels=plan.labels(0, plan.num_samples),
        num_classes=source.num_classes,
    )
    metrics, skipped, settings = generation_metrics(generated, reference, cfg, primary)
    protocol = _protocol(cfg, source, reference, primary, dino, settings)
    payload = {
        "run_id": source.run_id,
        "step": step,
        "metrics": metrics,
        "skipped": skipped,
        "protocol": protocol,
        "checkpoint": str(ckpt_path),
        "model_identity": source.identity,
        "samples": str(samples_dir),
    }
    event(
        log,
        "eval.done",
        run_id=source.run_id,
        step=step,
        seconds=round(time.time() - started, 1),
        **metrics,
    )
    return payload


def check_sample_count(
    cfg: EvalConfig, reference: Reference, dino: ExtractorInfo | None, *, option: str
) -> None:
    """Refuse, before sampling, a sample count that no Fréchet distance can use (N <= D).

    Raises:
        ConfigError: ``cfg.num_samples`` is at most the feature dimension of an enabled
            Fréchet distance; the message names ``option`` and the minimum.
    """
    dims = {}
    if cfg.metrics.fid:
        dims["FID"] = int(reference.fid.mu.shape[0])
    if cfg.metrics.fd_dinov2 and dino is not None and reference.dinov2 is not None:
        dims["FD-DINOv2"] = int(reference.dinov2.mu.shape[0])
    if not dims:
        return
    metric, dim = max(dims.items(), key=lambda item: item[1])
    if cfg.num_samples <= dim:
        raise ConfigError(
            f"{option} {cfg.num_samples}: too few samples for {metric}, whose features have "
            f"{dim} dimensions (the Fréchet distance needs more samples than dimensions); "
            f"the minimum is {dim + 1}",
            hint=f"{option} {dim + 1} or more (the papers use 50,000), or turn the metric off "
            "(eval.metrics.fid / eval.metrics.fd_dinov2)",
        )


def reference_extractors(
    reference: Reference, cfg: EvalConfig
) -> tuple[ExtractorInfo, ExtractorInfo | None]:
    """The extractors this eval uses, checked against those that made the reference.

    Raises:
        StageError: another extractor, layer or weights than the reference's.
    """
    from harness.eval.features import resolve_extractor
    from harness.eval.reference import dinov2_extractor
    from harness.eval.substitute import PREFIX, substitute_info

    meta = reference.meta
    recorded = str(meta.get("extractor"))
    hint = "recompute the reference with this eval config (harness fid-ref) or fix eval.extractor"
    if cfg.extractor == "harness-cnn":
        if not recorded.startswith(PREFIX):
            raise StageError(
                f"eval uses the substitute extractor, reference {reference.key} used {recorded}",
                hint=hint,
            )
        primary = substitute_info(
            Path(str(meta.get("extractor_weights_path"))), fid_layer=meta.get("feature_layer")
        )
    else:
        primary = resolve_extractor(
            cfg.extractor,
            weights_path=cfg.feature_extractor_weights_path,
            random_weights=cfg.random_weights_extractor,
            feature_layer=cfg.feature_layer,
        )
    if primary.name != recorded or primary.fid_layer != meta.get("feature_layer"):
        raise StageError(
            f"extractor mismatch: eval uses {primary.name} (layer {primary.fid_layer}), reference "
            f"{reference.key} was computed with {recorded} (layer {meta.get('feature_layer')})",
            hint=hint,
        )
    if primary.weights != meta.get("extractor_weights"):
        raise StageError(
            f"extractor weights differ: eval has {primary.name} weights {primary.weights}, the "
            f"reference was computed with {meta.get('extractor_weights')}",
            hint=hint,
        )
    dino = dinov2_extractor(cfg)
    if dino is not None and reference.dinov2 is None:
        dino = None  # the reference has no DINOv2 statistics: fd_dinov2 is skipped, with reason
    if dino is not None and dino.weights != meta.get("fd_dinov2_weights"):
        raise StageError(
            f"FD-DINOv2 weights differ: eval has {dino.weights}, reference {meta.get('fd_dinov2_weights')}",
            hint=hint,
        )
    return primary, dino


def _protocol(
    cfg: EvalConfig,
    source: SampleSource,
    reference: Reference,
    primary: ExtractorInfo,
    dino: ExtractorInfo | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Everything that decides the numbers (two FIDs compare only when this is identical)."""
    import torch_fidelity

    from harness.train.sampling import nfe

    sampler = cfg.sampler
    return {
        "num_samples": cfg.num_samples,
        "sampler": sampler.mode,
        "num_steps": sampler.num_steps,
        "nfe": nfe(sampler),  # network evaluations per sample (2 per guided step)
        "precision": sampler.precision,
        "to_uint8": sampler.to_uint8,
        "cfg_scale": sampler.cfg_scale,
        "guidance_low": sampler.guidance_low,
        "guidance_high": sampler.guidance_high,
        "last_step_size": sampler.last_step_size if sampler.mode == "sde" else None,
        "vae": source.vae,
        "seed": cfg.seed,
        "class_balanced": cfg.class_balanced,
        "reference_key": reference.key,
        "reference_n_images": reference.meta.get("n_images"),
        "extractor": primary.name,
        "extractor_weights": primary.weights,
        "extractor_substitute": primary.substitute or bool(dino and dino.substitute),
        "feature_layer": primary.fid_layer,
        "fd_dinov2_extractor": dino.name if dino else None,
        "batch_size": cfg.batch_size,
        "tf32": False,
        "torch_fidelity": torch_fidelity.__version__,
        **settings,
    }


def _layers(primary: ExtractorInfo, cfg: EvalConfig) -> list[str]:
    layers = [primary.fid_layer]
    if (cfg.metrics.isc or cfg.metrics.class_accuracy) and primary.isc_layer is not None:
        layers.append(primary.isc_layer)
    return layers


def _check_resolution(reference: Reference, side: int | None, what: str) -> None:
    expected = reference.meta.get("resolution")
    if side is not None and expected is not None and int(side) != int(expected):
        raise DataError(
            f"mismatched image sizes: {what}: {side} px, but reference {reference.key} "
            f"holds {expected} px images",
            hint="evaluate against a reference computed at the model's resolution",
        )


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
