"""The encoder zoo: every catalogue entry builds offline and runs; preprocessing, token
extraction and the real weight-loading paths (checkpoint files, torch.hub, the HF cache) behave.

What is built where (CPU, 2 cores, seconds per test):

* ``test_every_entry_builds_offline_and_runs``: every entry, random weights, real architecture
  (width, heads, prefix tokens, norms, position embeddings) but depth reduced to one block (one
  block per stage for SAM2's Hiera) through ``params`` overrides made only here. Entries whose
  full model has >= 1B parameters are marked ``slow`` (they still run; one block of a 4096-wide
  ViT costs seconds).
* ``test_full_architecture_on_meta_device``: every entry's full-size model built on the meta
  device (no memory, no compute) and run on a meta tensor: grid, width, CLS, parameter count.
* ``test_full_depth_small_entries`` (slow): a few small entries at full depth, real numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.config.encoders import BUILTIN_ENCODERS, EncoderSpec, load_catalogue
from harness.encoders import SOURCES, BuildRequest, EncoderError, create_encoder
from harness.errors import ConfigError, WeightsError

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = load_catalogue(ROOT / "encoders.yaml")
# full-size parameter counts above this are "giant" (marked slow in the per-entry test)
GIANT = {
    "dinov2-vit-g",
    "dinov3-vit-7b16",
    "webssl-vit-dino1b_full2b_224",
    "webssl-vit-dino2b_full2b_224",
    "webssl-vit-dino3b_full2b_224",
    "pe-vit-g",
    "langpe-vit-g",
    "spatialpe-vit-g",
    "siglip2-giant-opt-p16-256",
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_OFFLINE", "1")  # any download attempt becomes a WeightsError
    torch.set_num_threads(1)


def images(batch: int = 2, size: int = 256, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)


def shallow(spec: EncoderSpec) -> EncoderSpec:
    """The same entry with one block (tests only): params overrides per source."""
    params = dict(spec.params)
    if spec.source == "timm" and spec.model_id.startswith("sam2_hiera"):
        params.update(stages=(1, 1, 1, 1), global_att_blocks=())
    elif spec.source == "timm":
        params["depth"] = 1
    elif spec.source in ("torch_hub", "checkpoint") and "cnn" not in spec.tags:
        params["arch_kwargs"] = {**params.get("arch_kwargs", {}), "depth": 1}  # CNNs: no depth
    elif spec.source == "transformers":
        params["config"] = {**params["config"], "num_hidden_layers": 1}
    elif spec.source == "open_clip":
        params.update(vision_cfg={"layers": 1}, text_cfg={"layers": 1})
    return spec.model_copy(update={"params": params})


def entry_params(name: str) -> pytest.param:
    marks = [pytest.mark.slow] if name in GIANT else []
    return pytest.param(name, marks=marks, id=name)


# ---------------------------------------------------------------------------------------------
# the catalogue
# ---------------------------------------------------------------------------------------------
def test_catalogue_has_the_study_encoders_and_controls() -> None:
    irepa = [s for s in CATALOGUE.encoders if s.irepa27]
    assert len(irepa) == 27
    assert {s.published_name for s in CATALOGUE.encoders if "repa" in s.tags} >= {
        "MAE-L",
        "DINO-B",
        "MoCov3-L",
        "I-JEPA-H",
        "CLIP-L",
        "DINOv2-B",
        "DINOv2-L",
        "DINOv2-g",
    }
    families = {s.family for s in CATALOGUE.encoders}
    assert {"SigLIP", "SigLIP2", "SAM2", "control"} <= families
    assert {s.model_id for s in CATALOGUE.encoders if s.source == "builtin"} == set(
        BUILTIN_ENCODERS
    )
    assert all(callable(BUILTIN_ENCODERS.get(name)) for name in BUILTIN_ENCODERS)
    for spec in CATALOGUE.encoders:  # every entry gives a 16x16 grid for 256-px images ...
        if spec.resolution == 32:  # ... but the CPU study's own controls: 8x8 at 32 px
            assert spec.resolution // spec.patch_size == 8 and spec.family == "control", spec.name
        else:
            assert spec.resolution // spec.patch_size == 16, spec.name


def test_timm_entries_name_the_hf_repo_timm_loads_from() -> None:
    """``hf_repo`` (what the offline checks look up without timm) is timm's own location of the
    pretrained weights, for every pretrained timm entry whose weights are on the HF hub."""
    import timm

    from harness.encoders.timm_source import timm_name

    checked = 0
    for spec in CATALOGUE.encoders:
        if spec.source != "timm" or spec.pretrained is None:
            continue
        cfg = timm.models.get_pretrained_cfg(timm_name(spec))
        expected = cfg.hf_hub_id if cfg.hf_hub_id and not cfg.hf_hub_filename else None
        assert spec.hf_repo == expected, spec.name
        checked += expected is not None
    assert checked >= 25


def test_timm_entries_declare_timms_own_preprocessing_constants() -> None:
    import timm

    for spec in CATALOGUE.encoders:
        if spec.source != "timm" or spec.pretrained is None:
            continue
        cfg = timm.models.get_pretrained_cfg(f"{spec.model_id}.{spec.pretrained}")
        assert cfg is not None, spec.name
        assert spec.mean == pytest.approx(list(cfg.mean), abs=1e-6), spec.name
        assert spec.std == pytest.approx(list(cfg.std), abs=1e-6), spec.name


def test_catalogue_errors_name_file_and_line(tmp_path: Path) -> None:
    text = (ROOT / "encoders.yaml").read_text()
    dup = tmp_path / "dup.yaml"
    dup.write_text(
        text + "\n  - name: pixels\n    family: x\n    source: builtin\n"
        "    model_id: pixels\n    resolution: 256\n    mean: [0, 0, 0]\n"
        "    std: [1, 1, 1]\n    patch_size: 16\n    embed_dim: 768\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"dup\.yaml:\d+: .*duplicate encoder name 'pixels' "
        r"\(first defined at .*dup\.yaml:\d+\)",
    ):
        load_catalogue(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent("""\
        encoders:
          - name: a
            family: x
            source: builtin
            model_id: pixel
            resolution: 250
            mean: [0.5, 0.5]
            std: [1, 1, 1]
            patch_size: 16
            embed_dim: 768
        """)
    )
    with pytest.raises(ConfigError) as info:
        load_catalogue(bad)
    message = str(info.value)
    assert "bad.yaml:7: encoders[0].mean: needs 3 values" in message
    with pytest.raises(ConfigError, match=r"not divisible by patch_size|did you mean 'pixels'"):
        load_catalogue(bad, ["encoders.0.mean=[0, 0, 0]"])


def test_catalogue_lookup_suggests_names() -> None:
    from harness.errors import RegistryError

    with pytest.raises(RegistryError, match="did you mean 'dinov2-vit-b'"):
        CATALOGUE.get("dinov2-vit-bb")
    assert CATALOGUE.names("sam2*") == ["sam2-hiera-s", "sam2-hiera-b+", "sam2-hiera-l"]


# ---------------------------------------------------------------------------------------------
# every entry
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [entry_params(n) for n in CATALOGUE.names()])
def test_every_entry_builds_offline_and_runs(name: str) -> None:
    spec = shallow(CATALOGUE.get(name))
    enc = create_encoder(spec, grid=(16, 16), random_weights=True)
    out = enc(images(2))
    assert out.grid == (16, 16) and enc.grid == (16, 16)
    assert out.tokens.shape == (2, 256, spec.embed_dim) and out.tokens.dtype == torch.float32
    assert out.pooled.shape == (2, spec.embed_dim) and enc.embed_dim == spec.embed_dim
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert enc.weights_id.startswith(("random-init", "builtin"))
    assert out.tokens.std() > 0  # not a constant (e.g. all-zero) output


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in CATALOGUE.names()
        if CATALOGUE.get(n).source != "open_clip" and CATALOGUE.get(n).model_id != "noise"
    ],
)
def test_full_architecture_on_meta_device(name: str) -> None:
    """Full-size model (incl. the multi-billion ones) on the meta device: shapes only."""
    spec = CATALOGUE.get(name)
    size = (16 * spec.patch_size, 16 * spec.patch_size)
    request = BuildRequest(
        grid=(16, 16), input_size=size, device=torch.device("meta"), random_weights=True
    )
    with torch.device("meta"):
        backbone = SOURCES.get(spec.source).build(spec, request)
        tokens, cls = backbone(torch.empty(2, 3, *size))
    assert tuple(tokens.shape) == (2, 16, 16, spec.embed_dim)
    assert (cls is not None) == (spec.num_prefix_tokens > 0)  # every prefixed model has a CLS
    if cls is not None:
        assert tuple(cls.shape) == (2, spec.embed_dim)
    count = sum(p.numel() for p in backbone.parameters())
    expected = {
        "dinov3-vit-7b16": 6.7e9,
        "pe-vit-g": 1.88e9,
        "dinov2-vit-g": 1.1e9,
        "webssl-vit-dino1b_full2b_224": 1.1e9,
        "webssl-vit-dino3b_full2b_224": 2.9e9,
        "sam2-hiera-s": 34e6,
        "dinov2-vit-b": 86e6,
    }
    if name in expected:
        assert count == pytest.approx(expected[name], rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["dinov2-vit-b", "pe-vit-b", "cradio-vit-b", "sam2-hiera-s", "clip-vit-L"]
)
def test_full_depth_small_entries(name: str) -> None:
    spec = CATALOGUE.get(name)
    out = create_encoder(spec, random_weights=True)(images(1))
    assert out.tokens.shape == (1, 256, spec.embed_dim) and torch.isfinite(out.tokens).all()


@pytest.mark.parametrize(
    "name",
    [
        "dinov2-vit-b",
        "pe-vit-b",
        "clip-vit-L",
        "webssl-vit-dino300m_full2b_224",
        "sam2-hiera-s",
        "mocov3-vit-b",
        "pixels",
        "hog",
        "random-cnn",
    ],
)
def test_other_grids_interpolate_position_embeddings(name: str) -> None:
    spec = shallow(CATALOGUE.get(name))
    enc = create_encoder(spec, grid=(8, 8), random_weights=True)
    out = enc(images(2, size=64))  # 64-px images: upsized to 8 * patch
    assert out.grid == (8, 8) and out.tokens.shape == (2, 64, spec.embed_dim)
    assert torch.isfinite(out.tokens).all()
    rect = create_encoder(spec, grid=(4, 6), random_weights=True)(images(1, size=96))
    assert rect.grid == (4, 6) and rect.tokens.shape == (1, 24, spec.embed_dim)


# ---------------------------------------------------------------------------------------------
# preprocessing: a golden test per source
# ---------------------------------------------------------------------------------------------
GOLDEN = [
    "dinov2-vit-b",
    "clip-vit-L",
    "webssl-vit-dino300m_full2b_224",
    "dinov2-vit-b-hub",
    "mocov3-vit-b",
    "pixels",
]


@pytest.mark.parametrize("name", GOLDEN, ids=lambda n: CATALOGUE.get(n).source)
def test_preprocessing_comes_from_the_entry(name: str) -> None:
    """The backbone sees exactly (resize(img) / 255 - mean) / std with the entry's values."""
    spec = shallow(CATALOGUE.get(name)).model_copy(
        update={"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 0.125], "interpolation": "bilinear"}
    )
    enc = create_encoder(spec, grid=(4, 4), random_weights=True)
    seen: list[torch.Tensor] = []
    enc.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    side = 4 * spec.patch_size
    img = images(1, size=2 * side, seed=3)  # twice the input size
    enc(img)
    x = img.float() / 255
    expected = F.avg_pool2d(x, 2)  # bilinear downsizing by exactly 2 = mean of 2x2 blocks
    expected = (expected - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 0.125]
    ).view(1, 3, 1, 1)
    assert seen[0].shape == (1, 3, side, side)
    assert torch.allclose(seen[0], expected, atol=1e-5)
    # nearest interpolation upsizing by 2 repeats pixels; same-size input is not resized
    near = enc.spec.model_copy(update={"interpolation": "nearest"})
    enc.spec = near
    small = images(1, size=side // 2, seed=4)
    enc(small)
    repeated = small.float().repeat_interleave(2, -1).repeat_interleave(2, -2) / 255
    assert torch.allclose(seen[1] * enc.std + enc.mean, repeated, atol=1e-6)


def test_constant_image_normalises_per_channel_for_every_catalogue_entry() -> None:
    color = torch.tensor([10, 128, 250], dtype=torch.uint8)
    img = color.view(1, 3, 1, 1).expand(1, 3, 256, 256).contiguous()
    for spec in CATALOGUE.encoders:
        from harness.encoders.base import Encoder

        side = spec.resolution // spec.patch_size  # 16, or 8 for the CPU study's own controls
        request = BuildRequest((side, side), (spec.resolution,) * 2, torch.device("cpu"), True)
        enc = Encoder(spec, None, request, torch.float32)  # preprocessing only: no model
        x = enc.preprocess(img)
        want = (color.float() / 255 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
        assert x.shape == (1, 3, spec.resolution, spec.resolution), spec.name
        assert torch.allclose(x[0, :, 7, 9], want, atol=1e-5), spec.name


def test_bad_images_and_contradicting_entries_are_clear_errors() -> None:
    enc = create_encoder(CATALOGUE.get("pixels"), grid=(4, 4))
    with pytest.raises(
        EncoderError, match=r"'pixels' expects uint8 images \(B, 3, H, W\), got torch.float32"
    ):
        enc(torch.rand(1, 3, 64, 64))
    wrong_dim = CATALOGUE.get("hog").model_copy(update={"embed_dim": 99})
    with pytest.raises(EncoderError, match="width 36, but its catalogue entry says embed_dim 99"):
        create_encoder(wrong_dim, grid=(2, 2))(images(1, size=32))
    wrong_prefix = shallow(CATALOGUE.get("dinov3-vit-b16")).model_copy(
        update={"num_prefix_tokens": 1}
    )
    with pytest.raises(EncoderError, match="has 5 prefix token"):
        create_encoder(wrong_prefix, random_weights=True)


def test_token_map_is_resized_when_the_stride_does_not_give_the_grid() -> None:
    spec = CATALOGUE.get("vit-s-random").model_copy(
        update={"params": {"depth": 1, "patch_size": 8}}
    )
    enc = create_encoder(spec, grid=(4, 4))  # input 64 px, model stride 8: native 8x8
    img = images(1, size=64)
    out = enc(img)
    native, _ = enc.backbone(enc.preprocess(img))  # (1, 8, 8, 384)
    want = F.interpolate(
        native.permute(0, 3, 1, 2), size=(4, 4), mode="bilinear", align_corners=False
    )
    assert out.grid == (4, 4)
    assert torch.allclose(out.tokens, want.permute(0, 2, 3, 1).reshape(1, 16, 384), atol=1e-6)


def test_pooled_is_cls_when_present_else_token_mean() -> None:
    vit = create_encoder(shallow(CATALOGUE.get("vit-s-random")), grid=(4, 4))
    img = images(2, size=64)
    out = vit(img)
    tokens = vit.backbone.model.forward_intermediates(
        vit.preprocess(img),
        indices=1,
        norm=True,
        return_prefix_tokens=True,
        intermediates_only=True,
        output_fmt="NLC",
    )[-1]
    assert torch.allclose(out.pooled, tokens[1][:, 0], atol=1e-6)
    assert torch.allclose(out.tokens, tokens[0], atol=1e-6)
    hog = create_encoder(CATALOGUE.get("hog"), grid=(4, 4))
    out = hog(img)
    assert torch.allclose(out.pooled, out.tokens.mean(1))


def test_outputs_are_ordinary_tensors_usable_as_training_targets() -> None:
    enc = create_encoder(shallow(CATALOGUE.get("vit-s-random")), grid=(4, 4))
    out = enc(images(2, size=64))
    assert not out.tokens.is_inference() and not out.tokens.requires_grad
    weight = torch.ones(384, requires_grad=True)
    torch.nn.functional.cosine_similarity(out.tokens * weight, out.tokens, dim=-1).sum().backward()
    assert weight.grad is not None


def test_bf16_autocast_runs_and_returns_float32() -> None:
    enc = create_encoder(shallow(CATALOGUE.get("vit-s-random")), grid=(4, 4), dtype=torch.bfloat16)
    out = enc(images(1, size=64))
    assert out.tokens.dtype == torch.float32 and torch.isfinite(out.tokens).all()


# ---------------------------------------------------------------------------------------------
# controls
# ---------------------------------------------------------------------------------------------
def shapes_image(n: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    """Coloured discs on a coloured background: flat regions and edges, like objects."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    img = torch.zeros(n, 3, size, size)
    for i in range(n):
        img[i] = torch.rand(3, 1, 1, generator=gen)
        for _ in range(6):
            cy, cx, r = (
                torch.rand(3, generator=gen) * torch.tensor([size, size, size / 4])
            ).tolist()
            img[i][:, (ys - cy) ** 2 + (xs - cx) ** 2 <= (r + 4) ** 2] = torch.rand(
                3, 1, generator=gen
            )
    return (img * 255).round().to(torch.uint8)


def test_controls_span_a_range_of_spatial_structure() -> None:
    from harness.metrics.spatial import spatial_metrics

    img = shapes_image(4)
    lds = {}
    for name in ("noise", "hog", "random-cnn", "pixels", "pixels-blur"):
        out = create_encoder(CATALOGUE.get(name), grid=(8, 8))(img)
        lds[name] = spatial_metrics(out.tokens, out.grid)["lds"].mean().item()
    # measured: noise 0.000, hog 0.035, random-cnn 0.16, pixels 0.33, pixels-blur 0.42
    assert abs(lds["noise"]) < 0.01
    assert 0.02 < lds["hog"] < lds["random-cnn"] < lds["pixels"] < lds["pixels-blur"]


def test_noise_is_a_pure_function_of_the_image() -> None:
    enc = create_encoder(CATALOGUE.get("noise"), grid=(4, 4))
    a, b = images(2, size=64, seed=1), images(2, size=64, seed=2)
    first, again, other = enc(a).tokens, enc(a).tokens, enc(b).tokens
    assert torch.equal(first, again) and not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])


def test_hog_matches_a_hand_computed_histogram() -> None:
    # a vertical step edge: horizontal gradient only -> orientation 0, split between the
    # first and last bins (centres at +-10 degrees), votes = gradient magnitude
    spec = CATALOGUE.get("hog").model_copy(
        update={"params": {"bins": 9, "cells": 1}, "embed_dim": 9}
    )
    img = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    img[..., 8:] = 255
    out = create_encoder(spec, grid=(1, 1))(img)
    hist = out.tokens[0, 0]
    # gradient at columns 7 and 8 (centred difference of a 0 -> 1 step): 1 each, 16 rows each
    assert hist[1:8].abs().max() < 1e-6
    assert hist[0].item() == pytest.approx(hist[8].item(), rel=1e-5)
    assert hist.norm().item() == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# real weights: checkpoint files, torch.hub, the HF cache, and clear errors when missing
# ---------------------------------------------------------------------------------------------
def _tiny_vit(seed: int) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch16_224", depth=2, img_size=64, num_classes=0).eval()


def _reference_tokens(model: torch.nn.Module, img: torch.Tensor, spec: EncoderSpec) -> torch.Tensor:
    x = (img.float() / 255 - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(
        spec.std
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.forward_features(x)[:, 1:]  # final norm, CLS dropped


def _tiny_vit_spec(**fields) -> EncoderSpec:
    """A ViT-S/16 (2 blocks) entry at 64 px whose weights come from a file or a hub."""
    base = {
        "family": "test",
        "arch": "vit_small_patch16_224",
        "resolution": 64,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "patch_size": 16,
        "num_prefix_tokens": 1,
        "embed_dim": 384,
    }
    return EncoderSpec(**{**base, **fields})


def _checkpoint_spec(path: Path, **params) -> EncoderSpec:
    return _tiny_vit_spec(
        name="moco-like",
        source="checkpoint",
        model_id="moco",
        checkpoint=str(path),
        params={
            "arch_kwargs": {"depth": 2},
            "select_prefix": "module.base_encoder.",
            "drop": ["^head\\."],
            **params,
        },
    )


def test_checkpoint_source_loads_a_moco_style_file(tmp_path: Path) -> None:
    model, other = _tiny_vit(1), _tiny_vit(2)
    state = {f"module.base_encoder.{k}": v for k, v in model.state_dict().items()}
    state |= {f"module.momentum_encoder.{k}": v for k, v in other.state_dict().items()}
    state["module.base_encoder.head.0.weight"] = torch.zeros(4, 384)  # projector: dropped
    path = tmp_path / "mocov3_tiny.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1.0), "epoch": 3}, path)

    with pytest.raises(WeightsError, match="weights_only: false"):
        create_encoder(_checkpoint_spec(path), grid=(4, 4))
    spec = _checkpoint_spec(path, weights_only=False)
    enc = create_encoder(spec, grid=(4, 4))
    img = images(2, size=64)
    assert torch.allclose(enc(img).tokens, _reference_tokens(model, img, spec), atol=1e-5)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert enc.weights_id == f"file:mocov3_tiny.pth:{digest}"
    # position embeddings of the file (4x4) are resampled for another grid
    assert create_encoder(spec, grid=(6, 6))(images(1, size=96)).grid == (6, 6)


def test_checkpoint_mismatch_and_missing_file_are_weights_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, path)
    with pytest.raises(WeightsError, match="do not fit timm 'vit_small_patch16_224'"):
        create_encoder(_checkpoint_spec(path, select_prefix=None), grid=(4, 4))
    spec = _checkpoint_spec(tmp_path / "nope.pth")
    with pytest.raises(WeightsError) as info:
        create_encoder(spec, grid=(4, 4))
    assert f"checkpoint file nope.pth is not in {tmp_path}" in str(info.value)
    assert "--random-weights" in str(info.value)
    assert create_encoder(spec, grid=(4, 4), random_weights=True).weights_id == "random-init:seed0"


def test_torch_hub_source_loads_a_local_hubconf(tmp_path: Path) -> None:
    hub = tmp_path / "hubrepo"
    hub.mkdir()
    (hub / "hubconf.py").write_text(
        textwrap.dedent("""\
        dependencies = ["torch", "timm"]

        def tiny_vit(pretrained=True):
            import timm, torch
            torch.manual_seed(7)
            return timm.create_model("vit_small_patch16_224", depth=2, img_size=64, num_classes=0)
        """)
    )
    spec = _tiny_vit_spec(
        name="hub-vit",
        source="torch_hub",
        hub_repo=str(hub),
        model_id="tiny_vit",
        params={"arch_kwargs": {"depth": 2}},
    )
    enc = create_encoder(spec, grid=(4, 4))
    img = images(1, size=64)
    reference = torch.hub.load(str(hub), "tiny_vit", source="local", trust_repo=True).eval()
    assert torch.allclose(enc(img).tokens, _reference_tokens(reference, img, spec), atol=1e-5)
    assert enc.weights_id.startswith("torch_hub:")
    github = spec.model_copy(update={"hub_repo": "facebookresearch/not-cached", "revision": "abc"})
    with pytest.raises(WeightsError, match=r"HARNESS_OFFLINE=1 is set; .* repository .* is not in"):
        create_encoder(github, grid=(4, 4))


@pytest.mark.parametrize(
    "name", ["dinov2-vit-b", "clip-vit-L", "webssl-vit-dino300m_full2b_224", "jepa-vit-h"]
)
def test_missing_weights_offline_say_how_to_fetch(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = shallow(CATALOGUE.get(name))
    with pytest.raises(WeightsError) as info:
        create_encoder(spec, grid=(4, 4))
    assert f"harness encoders fetch {name}" in str(info.value)


# Two ways to be offline, each in a fresh process: the environment says so, or there is no
# network (an endpoint whose name does not resolve: RFC 6761 reserves .invalid).
OFFLINE_MODES = {
    "HF_HUB_OFFLINE": {"HF_HUB_OFFLINE": "1"},
    "no-network": {"HF_ENDPOINT": "https://hub.invalid"},
}
_PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def offline_env(tmp_path: Path, mode: str, **extra: str) -> dict[str, str]:
    """The environment of a fresh process that is offline in ``mode``, with empty caches."""
    env = {k: v for k, v in os.environ.items() if k not in (*_PROXIES, "HARNESS_OFFLINE")}
    env.pop("HF_HUB_OFFLINE", None)
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        TORCH_HOME=str(tmp_path / "torch"),
        HARNESS_RESULTS=str(tmp_path / "results"),
        OMP_NUM_THREADS="1",
        **OFFLINE_MODES[mode],
    )
    env.update(extra)
    return env


@pytest.mark.parametrize("mode", sorted(OFFLINE_MODES))
@pytest.mark.parametrize("action", ["check", "fetch"])
def test_cli_offline_fails_fast_with_one_message(action: str, mode: str, tmp_path: Path) -> None:
    """Offline, with empty caches: exit 2 at once (no retries), saying why, where it looked and
    how to fill the cache; ``fetch`` sends the user to a machine with internet."""
    env = offline_env(tmp_path, mode)
    script = (
        "import sys; from harness.cli import main; "
        f"rc = main(['encoders', {action!r}, 'dinov2-vit-b']); "
        "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    # decided from the catalogue's hf_repo and the cache alone: no torch, no timm, no retries
    # (huggingface_hub's sleep 1+2+4+8+8 s per file)
    assert "no torch" in out.stdout, text
    assert elapsed < 5.0, (elapsed, text)
    assert "Retry" not in text and "Name or service not known' thrown" not in text, text
    why = "HF_HUB_OFFLINE=1 is set" if mode == "HF_HUB_OFFLINE" else "no network: cannot reach"
    assert out.stderr.count(why) == 1, text  # said once
    assert str(tmp_path / "hf" / "hub") in out.stderr, text  # the cache it looked in
    assert "timm/vit_base_patch14_dinov2.lvd142m" in out.stderr, text  # what is missing
    assert "on a machine with internet" in out.stderr, text
    assert "`harness encoders fetch dinov2-vit-b`" in out.stderr, text
    if action == "fetch":
        assert "needs the network" in out.stderr, text


@pytest.mark.parametrize("mode", sorted(OFFLINE_MODES))
def test_timm_weights_load_offline_from_the_hf_cache(mode: str, tmp_path: Path) -> None:
    """A real HF-hub cache layout (blob named by its sha256, snapshot symlink, refs/main),
    read by a fresh process that is offline, like a compute node."""
    from safetensors.torch import save_file

    model = _tiny_vit(5)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--timm--vit_small_patch16_224.augreg_in21k_ft_in1k"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "snapshots" / commit).mkdir(parents=True)
    tmp_file = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(tmp_file))
    digest = hashlib.sha256(tmp_file.read_bytes()).hexdigest()
    tmp_file.rename(repo / "blobs" / digest)
    (repo / "snapshots" / commit / "model.safetensors").symlink_to(repo / "blobs" / digest)
    (repo / "refs" / "main").write_text(commit)
    img = images(1, size=64)
    spec = CATALOGUE.get("vit-s-random").model_copy(
        update={
            "pretrained": "augreg_in21k_ft_in1k",
            "params": {"depth": 2},
            "resolution": 64,
            "patch_size": 16,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        }
    )
    torch.save(
        {"spec": spec.to_dict(), "img": img, "ref": _reference_tokens(model, img, spec)},
        tmp_path / "case.pt",
    )
    script = textwrap.dedent(f"""\
        import torch
        from harness.config.encoders import EncoderSpec
        from harness.encoders import create_encoder
        case = torch.load({str(tmp_path / "case.pt")!r})
        enc = create_encoder(EncoderSpec(**case["spec"]), grid=(4, 4))
        diff = (enc(case["img"]).tokens - case["ref"]).abs().max().item()
        print(enc.weights_id, diff)
        """)
    env = offline_env(tmp_path, mode, HF_HUB_CACHE=str(tmp_path / "hub"))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    weights_id, diff = out.stdout.split()
    assert (
        weights_id == f"timm:vit_small_patch16_224.augreg_in21k_ft_in1k@{commit[:12]}:{digest[:16]}"
    )
    assert float(diff) < 1e-5 and not math.isnan(float(diff))


def test_fetch_refuses_when_offline() -> None:
    from harness.encoders import fetch_weights

    with pytest.raises(
        WeightsError, match="downloads are disabled here: HARNESS_OFFLINE=1"
    ) as info:
        fetch_weights(CATALOGUE.get("dinov2-vit-b"))
    assert "on a machine with internet" in info.value.hint
