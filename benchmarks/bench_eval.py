"""Evaluation benchmarks: linear-probe grid training, feature-extractor throughput, and the
sampling-time estimate of an eval.

Targets (issue #5, one H100): the probe trains the whole lr grid on cached 1.28M x 768 features
(1000 classes, 90 epochs, batch 16,384) in <= 5 min; Inception features >= 2,000 images/s;
50K samples of SiT-XL/2 with the 250-step SDE <= 1.5 h. On CUDA the probe runs the full
configuration; on CPU a scaled-down one, extrapolated by FLOPs. Extractors use random-init
weights (identical compute to the real ones; no download). Prints a table and writes every
number to a JSON file.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_eval.py
    .venv/bin/python benchmarks/bench_eval.py --mfu 0.4 --out results/bench/bench_eval.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PAPER_PROBE = {
    "n": 1_281_167,
    "dim": 768,
    "classes": 1000,
    "epochs": 90,
    "batch": 16_384,
    "heads": 5,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_flops(n: int, dim: int, classes: int, heads: int, epochs: int) -> float:
    """FLOPs of training the head grid: forward + backward ~ 3 x 2 x N x D x C per head-epoch."""
    return 6.0 * n * dim * classes * heads * epochs


def bench_probe(
    device: torch.device, n: int, dim: int, classes: int, epochs: int, batch: int, heads: int
) -> dict[str, Any]:
    """Train the lr grid once on synthetic float16 'cached features' already on the device."""
    from harness.config.eval import ProbeConfig
    from harness.eval.probe import train_heads

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = torch.randn(n, dim, generator=gen)  # (N, D) with a weak class signal
    x[torch.arange(n), y % dim] += 1.0
    x = x.half()
    x, y = x.to(device), y.to(device)
    cfg = ProbeConfig(
        lrs=[10.0 ** (-4 + i / 2) for i in range(heads)], epochs=epochs, batch_size=batch
    )
    _sync(device)
    start = time.perf_counter()
    heads_out = train_heads(x, y, classes, cfg, generator_seed=0)
    _sync(device)
    seconds = time.perf_counter() - start
    flops = probe_flops(n, dim, classes, heads, epochs)
    acc = heads_out.accuracy(x[:20_000], y[:20_000], k=1)
    return {
        "n": n,
        "dim": dim,
        "classes": classes,
        "heads": heads,
        "epochs": epochs,
        "batch": batch,
        "seconds": seconds,
        "rows_per_s": n * epochs / seconds,
        "tflops": flops / seconds / 1e12,
        "paper_config_pflop": probe_flops(
            **{k: PAPER_PROBE[k] for k in ("n", "dim", "classes", "heads", "epochs")}
        )
        / 1e15,
        "paper_config_estimate_s": probe_flops(
            **{k: PAPER_PROBE[k] for k in ("n", "dim", "classes", "heads", "epochs")}
        )
        / (flops / seconds),
        "train_top1_best": float(acc.max()),
    }


def bench_extractor(
    name: str,
    layers: list[str],
    side: int,
    batch: int,
    batches: int,
    device: torch.device,
    substitute: bool = False,
) -> dict[str, Any]:
    """Images/s of one torch-fidelity extractor (random init) on uint8 (batch, 3, side, side)."""
    from harness.eval.features import build_extractor, iter_features, rebatch, resolve_extractor

    if substitute:
        from harness.config.eval import SubstituteConfig
        from harness.eval.substitute import save_checkpoint, substitute_info, train_substitute

        images = torch.randint(0, 256, (64, 3, side, side), dtype=torch.uint8).numpy()
        ckpt = train_substitute(
            images, (torch.arange(64) % 10).numpy(), 10, SubstituteConfig(epochs=1)
        )
        path = ROOT / "results" / "bench" / "bench.pt"  # registered as harness-cnn-bench
        save_checkpoint(ckpt, path)
        info = substitute_info(path)
    else:
        info = resolve_extractor(name, random_weights=True)
    extractor = build_extractor(info, layers, device)
    data = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
    list(iter_features([extractor], [data], total=batch, device=device))  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in iter_features(
        [extractor], rebatch([data] * batches, batch), total=batch * batches, device=device
    ):
        pass
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "extractor": info.name,
        "layers": layers,
        "side": side,
        "batch": batch,
        "images_per_s": batch * batches / seconds,
    }


def estimate_sampling_hours(
    num_samples: int,
    nfe: int,
    forward_flops: float,
    achieved_flops_per_s: float,
    *,
    cfg_scale: float = 1.0,
    decode_flops: float = 0.0,
) -> float:
    """Hours to generate ``num_samples``: NFE forward passes each (x2 under CFG, which batches
    the conditional and unconditional halves), plus one VAE decode per sample, at a sustained
    ``achieved_flops_per_s`` (device peak x MFU, e.g. from ``harness bench train``)."""
    per_sample = nfe * forward_flops * (2 if cfg_scale > 1.0 else 1) + decode_flops
    return num_samples * per_sample / achieved_flops_per_s / 3600.0


def bench_sampling(device: torch.device, mfu: float) -> dict[str, Any]:
    """SiT-XL/2 50K x 250-step estimate from analytic FLOPs and a measured small-SiT forward."""
    from harness.config.model import ModelConfig
    from harness.models.sit import SiT
    from harness.train.bench import counted_flops, device_peak_flops, sit_forward_flops
    from harness.train.latents import SD_VAE_CONFIG

    xl = ModelConfig(
        name="SiT-XL/2", space="latent", input_size=32, in_channels=4, num_classes=1000
    )
    xl_flops = sit_forward_flops(xl.arch, 32, 4, 4)
    # measured: a SiT-B/2 (pixel latents 32x32x4) forward on this device
    small_cfg = ModelConfig(
        name="SiT-B/2", space="latent", input_size=32, in_channels=4, num_classes=1000
    )
    small = SiT.from_config(small_cfg).to(device).eval()
    batch = 64 if device.type == "cuda" else 2
    x, t, y = (
        torch.randn(batch, 4, 32, 32, device=device),
        torch.rand(batch, device=device),
        torch.zeros(batch, dtype=torch.long, device=device),
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), autocast:
        small(x, t, y)
        _sync(device)
        start = time.perf_counter()
        reps = 10 if device.type == "cuda" else 2
        for _ in range(reps):
            small(x, t, y)
        _sync(device)
    seconds = (time.perf_counter() - start) / reps
    small_flops = sit_forward_flops(small_cfg.arch, 32, 4, 4)
    achieved = small_flops * batch / seconds
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(SD_VAE_CONFIG).eval()
    decode = counted_flops(lambda: vae.decode(torch.randn(1, 4, 32, 32)))
    peak = (
        device_peak_flops(torch.cuda.get_device_name(device), "bf16")
        if device.type == "cuda"
        else None
    )
    h100 = device_peak_flops("H100", "bf16")
    assert h100 is not None
    return {
        "sit_xl2_forward_gflops": xl_flops / 1e9,
        "vae_decode_gflops": decode / 1e9,
        "measured_sit_b2_tflops_here": achieved / 1e12,
        "measured_mfu_here": None if peak is None else achieved / peak,
        "estimate_h100_hours": estimate_sampling_hours(
            50_000, 250, xl_flops, h100 * mfu, decode_flops=decode
        ),
        "estimate_h100_hours_cfg": estimate_sampling_hours(
            50_000, 250, xl_flops, h100 * mfu, cfg_scale=1.8, decode_flops=decode
        ),
        "estimate_here_hours": estimate_sampling_hours(
            50_000, 250, xl_flops, achieved, decode_flops=decode
        ),
        "assumed_h100_mfu": mfu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "bench_eval.json")
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="assumed SiT bf16 MFU on the H100 for the estimate"
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        probe = bench_probe(
            device,
            **{k: PAPER_PROBE[k] for k in ("n", "dim", "classes", "epochs", "batch", "heads")},
        )
    else:
        probe = bench_probe(device, n=20_000, dim=256, classes=100, epochs=2, batch=4096, heads=5)
    extractors = [
        bench_extractor(
            "inception-v3-compat",
            ["2048", "logits_unbiased"],
            256,
            64 if cuda else 8,
            20 if cuda else 2,
            device,
        ),
        bench_extractor(
            "dinov2-vit-b-14", ["dinov2"], 256, 64 if cuda else 8, 20 if cuda else 2, device
        ),
        bench_extractor(
            "harness-cnn", ["feat", "logits"], 32, 256, 20 if cuda else 4, device, substitute=True
        ),
    ]
    sampling = bench_sampling(device, args.mfu)
    device_name = (
        torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"device: {device_name}")
    print(
        f"probe grid   {probe['n']:>9,} x {probe['dim']} -> {probe['classes']} classes, {probe['heads']} heads, "
        f"{probe['epochs']} epochs: {probe['seconds']:.2f} s ({probe['rows_per_s']:,.0f} rows/s, {probe['tflops']:.3f} TFLOP/s)"
    )
    print(
        f"             paper config (1.28M x 768, 1000 classes, 90 epochs, 5 heads): "
        f"{probe['paper_config_pflop']:.2f} PFLOP -> {probe['paper_config_estimate_s']:,.0f} s "
        "at this rate (target <= 300 s on one H100)"
    )
    for row in extractors:
        print(
            f"extractor    {row['extractor']:<40} {row['side']}px batch {row['batch']:>3}: {row['images_per_s']:,.1f} img/s"
        )
    print(
        f"sampling     SiT-XL/2 forward {sampling['sit_xl2_forward_gflops']:.1f} GFLOP, SD-VAE decode {sampling['vae_decode_gflops']:.0f} GFLOP"
    )
    print(
        f"             50K x 250-step SDE on one H100 at MFU {args.mfu}: {sampling['estimate_h100_hours']:.2f} h "
        f"(CFG: {sampling['estimate_h100_hours_cfg']:.2f} h; target <= 1.5 h); here: {sampling['estimate_here_hours']:,.0f} h"
    )
    from harness.io import write_json

    write_json(
        args.out,
        {"device": device_name, "probe": probe, "extractors": extractors, "sampling": sampling},
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
