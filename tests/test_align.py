"""Alignment pieces: projectors, z-score, cosine loss, grids, method defaults, config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.cli import main as cli_main
from harness.config.loader import parse_yaml
from harness.config.run import RunConfig, run_from_doc, run_id
from harness.config.train import ALIGN_LOSSES, METHODS, PROJECTORS, AlignConfig
from harness.errors import ConfigError, StageError
from harness.models.projectors import build_projector
from harness.train.align import (
    Alignment,
    check_target,
    cosine_alignment,
    resize_tokens,
    zscore_tokens,
)


def test_conv_projector_is_translation_equivariant() -> None:
    torch.manual_seed(0)
    proj = build_projector("conv", 8, 5, hidden_dim=16, kernel_size=3, grid=(10, 10))
    x = torch.zeros(2, 8, 10, 10)
    x[:, :, 2:6, 3:7] = torch.randn(2, 8, 4, 4)  # content away from the zero-padded border
    shifted = torch.roll(x, shifts=(2, 1), dims=(2, 3))

    def apply(grid: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B, Z, h, w)
        out = proj(grid.flatten(2).transpose(1, 2))  # (B, T, Z)
        return out.transpose(1, 2).reshape(2, 5, 10, 10)

    torch.testing.assert_close(apply(shifted), torch.roll(apply(x), shifts=(2, 1), dims=(2, 3)))
    # kernel 3 mixes neighbours: a token's output depends on the token next to it
    poked = x.clone()
    poked[:, :, 4, 5] += 1.0
    assert not torch.allclose(apply(poked)[:, :, 4, 4], apply(x)[:, :, 4, 4])


def test_mlp_projector_is_per_token_with_repa_shape() -> None:
    proj = build_projector("mlp", 8, 6, hidden_dim=32, kernel_size=3, grid=(2, 2))
    linears = [m for m in proj.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 32), (32, 32), (32, 6)]
    x = torch.randn(1, 4, 8)
    torch.testing.assert_close(proj(x)[:, 1], proj(x[:, 1:2])[:, 0])  # no mixing across tokens


def test_zscore_gamma_one_gives_zero_mean_unit_std_per_image_channel() -> None:
    x = torch.randn(3, 64, 5) * torch.tensor([1.0, 5.0, 0.1, 2.0, 30.0]) + 7.0
    z = zscore_tokens(x.to(torch.bfloat16), gamma=1.0)
    assert z.dtype == torch.float32  # normalisation happens in fp32
    z = zscore_tokens(x, gamma=1.0)
    torch.testing.assert_close(z.mean(dim=1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=1), torch.ones(3, 5), atol=1e-4, rtol=0)


def test_zscore_gamma_keeps_part_of_the_spatial_mean() -> None:
    x = torch.randn(2, 16, 4) + 3.0
    z = zscore_tokens(x, gamma=0.6)
    expected = 0.4 * x.mean(1) / (x.std(1) + 1e-6)
    torch.testing.assert_close(z.mean(1), expected, atol=1e-5, rtol=1e-5)


def test_cosine_loss_bounds_and_scale_invariance() -> None:
    a = torch.randn(2, 6, 4)
    loss = ALIGN_LOSSES.get("cosine")
    torch.testing.assert_close(loss(a, 3 * a), torch.full((2,), -1.0))
    torch.testing.assert_close(loss(a, -a), torch.full((2,), 1.0))
    torch.testing.assert_close(cosine_alignment(a.half(), a), torch.ones(2), atol=1e-3, rtol=0)


def test_alignment_averages_over_targets() -> None:
    cfg = RunConfig(method="repa", encoders=["a", "b"], align=AlignConfig(projector="linear")).align
    align = Alignment(cfg, sit_dim=4, target_dims=[3, 5], grid=(2, 2))
    hidden = torch.randn(2, 4, 4)
    projected = align.project(hidden)
    assert [p.shape for p in projected] == [(2, 4, 3), (2, 4, 5)]
    targets = [projected[0].detach(), -projected[1].detach()]  # cos +1 and -1
    loss, cos = align.loss(projected, targets)
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(cos, torch.tensor(0.0), atol=1e-6, rtol=0)


def test_resize_tokens_keeps_constant_fields_and_identity() -> None:
    tokens = torch.randn(2, 16, 3)
    assert resize_tokens(tokens, (4, 4), (4, 4)) is tokens
    const = torch.ones(1, 9, 2) * torch.tensor([2.0, -1.0])
    torch.testing.assert_close(
        resize_tokens(const, (3, 3), (6, 6)), torch.ones(1, 36, 2) * torch.tensor([2.0, -1.0])
    )
    assert resize_tokens(torch.randn(1, 256, 2), (16, 16), (8, 8)).shape == (1, 64, 2)


def test_check_target_rejects_other_aspect_ratio() -> None:
    check_target("enc", (16, 16), 768, (8, 8))  # resizable
    with pytest.raises(StageError, match="cannot be resized"):
        check_target("enc", (16, 8), 768, (16, 16))
    with pytest.raises(StageError, match="invalid"):
        check_target("enc", (16, 16), 0, (16, 16))


def test_method_defaults_resolve_into_the_run_config() -> None:
    repa = RunConfig(method="repa", encoder="e").align
    assert (repa.projector, repa.proj_coeff, repa.zscore, repa.encoder_depth) == (
        "mlp",
        0.5,
        False,
        4,
    )
    irepa = RunConfig(method="irepa", encoder="e").align
    assert (irepa.projector, irepa.kernel_size, irepa.zscore, irepa.zscore_gamma) == (
        "conv",
        3,
        True,
        0.6,
    )
    assert irepa.proj_coeff == 0.5  # the paper's λ, not the released config's 1.0
    xl = RunConfig(method="irepa", encoder="e", model={"name": "SiT-XL/2"}, align={"lambda": 1.0})
    assert (xl.align.encoder_depth, xl.align.proj_coeff) == (8, 1.0)
    explicit = RunConfig(method="repa", encoder="e", align={"projector": "mlp", "proj_coeff": 0.5})
    assert run_id(explicit) == run_id(RunConfig(method="repa", encoder="e"))  # defaults recorded


def test_projector_registry_resolves_every_name_to_a_module() -> None:
    for name in PROJECTORS:  # the names config validation allows are the classes built
        assert issubclass(PROJECTORS.get(name), torch.nn.Module)
    for name in METHODS:
        assert METHODS.get(name).projector in PROJECTORS
        assert METHODS.get(name).loss in ALIGN_LOSSES


def test_unresolved_alignment_config_is_an_error_not_a_fallback() -> None:
    """An unset zscore_gamma once became γ = 0 (``or 0.0``) instead of iREPA's 0.6."""
    unresolved = AlignConfig(projector="conv", kernel_size=3, loss="cosine", zscore=True)
    with pytest.raises(ConfigError, match="zscore_gamma"):
        Alignment(unresolved, 8, [4], (2, 2))
    resolved = unresolved.resolved("irepa", 2)
    assert (resolved.zscore_gamma, resolved.proj_coeff) == (0.6, 0.5)
    alignment = Alignment(resolved, 8, [4], (2, 2))
    tokens = torch.randn(1, 4, 4) + 3.0
    torch.testing.assert_close(
        alignment.prepare_targets([tokens])[0], zscore_tokens(tokens, gamma=0.6)
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("method: repaa\nencoder: e\n", "unknown method 'repaa' (did you mean 'repa'?)"),
        (
            "method: irepa\nencoder: e\nalign: {projector: cnv}\n",
            "unknown projector 'cnv' (did you mean 'conv'?)",
        ),
        (
            "method: repa\nencoder: e\nalign: {encoder_depth: 12}\n",
            "run.yaml:3: align.encoder_depth: 12 is beyond SiT-B/2 (12 blocks)",
        ),
        ("method: repa\n", "run.yaml:1: method: method 'repa' aligns to an encoder"),
        ("method: none\nencoder: e\n", "uses no encoder"),
        ("method: irepa\nencoder: e\nalign: {kernel_size: 4}\n", "kernel_size must be odd"),
        (
            "method: repa\nencoder: e\nmodel: {name: SiT-B/8, space: pixel}\ndata: {resolution: 36}\n",
            "not divisible by the patch",
        ),
    ],
)
def test_bad_run_configs_fail_with_clear_messages(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        run_from_doc(parse_yaml(text, "run.yaml"))
    assert message in str(info.value)
    assert "run.yaml" in str(info.value)


def test_cli_train_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("method: irepa\nencoder: e\nalign:\n  projector: cnv\n")
    assert cli_main(["train", str(config), "--device", "cpu"]) == 2
    assert "unknown projector 'cnv'" in capsys.readouterr().err
    config.write_text("method: repa\nencoder: e\n")
    assert cli_main(["train", str(config), "--device", "cpu"]) == 2  # no --catalogue
    assert "--catalogue" in capsys.readouterr().err
