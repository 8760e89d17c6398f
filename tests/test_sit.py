"""SiT: published parameter counts, adaLN-Zero init, attention, hidden-state tap, patch layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.config.model import SIT_ARCHS, ModelConfig, sit_arch
from harness.errors import RegistryError
from harness.models.sit import Attention, SiT, count_parameters, sincos_pos_embed_2d

# Published sizes (DiT/SiT papers, 256 px -> 32x32x4 latents, 1000 classes; projectors excluded).
PUBLISHED = {"SiT-S/2": 33.0e6, "SiT-B/2": 130e6, "SiT-L/2": 458e6, "SiT-XL/2": 675e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name: str) -> None:
    with torch.device("meta"):
        model = SiT(sit_arch(name), input_size=32, in_channels=4, num_classes=1000)
    assert abs(count_parameters(model) / PUBLISHED[name] - 1) < 0.01


def test_presets_cover_sizes_and_patches() -> None:
    for size in ("S", "B", "L", "XL", "T"):
        for patch in (2, 4, 8):
            arch = SIT_ARCHS[f"SiT-{size}/{patch}"]
            assert arch.patch == patch and arch.hidden % arch.heads == 0
    assert (SIT_ARCHS["SiT-XL/2"].depth, SIT_ARCHS["SiT-XL/2"].hidden) == (28, 1152)
    assert SIT_ARCHS["SiT-B/2"].align_depth == 4 and SIT_ARCHS["SiT-XL/2"].align_depth == 8
    with pytest.raises(RegistryError, match="did you mean 'SiT-XL/2'"):
        sit_arch("SiT-XL2")


def _tiny(**kwargs) -> SiT:
    torch.manual_seed(0)
    return SiT(sit_arch("SiT-T/2"), input_size=8, in_channels=3, num_classes=4, **kwargs)


def test_adaln_zero_init_outputs_zero_and_blocks_are_identity() -> None:
    model = _tiny()
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 4])
    out, hidden = model.forward_features(x, t, y, depth=2)
    assert out.shape == (2, 3, 8, 8) and torch.equal(out, torch.zeros_like(out))
    embedded = model.x_embedder(x).flatten(2).transpose(1, 2) + model.pos_embed
    torch.testing.assert_close(hidden, embedded)  # zero gates: every block is the identity


def test_hidden_tap_is_output_of_block_depth() -> None:
    model = _tiny()
    for p in model.parameters():  # leave the zero init so blocks do something
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(3, 3, 8, 8), torch.rand(3), torch.tensor([1, 2, 3])
    out, hidden = model.forward_features(x, t, y, depth=3)
    tokens = model.x_embedder(x).flatten(2).transpose(1, 2) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    for block in model.blocks[:3]:
        tokens = block(tokens, c)
    torch.testing.assert_close(hidden, tokens)
    torch.testing.assert_close(out, model(x, t, y))
    assert not torch.equal(out, torch.zeros_like(out))


def test_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    attn = Attention(16, heads=4)
    x = torch.randn(2, 5, 16)
    qkv = attn.qkv(x).reshape(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, Dh)
    weights = F.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(Dh) = 2
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected)


def test_unpatchify_inverts_patch_layout() -> None:
    model = _tiny()
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = 2  # (B, C, h, p, w, p) -> (B, h, w, p, p, C) -> (B, T, p*p*C)
    tokens = img.reshape(2, 3, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 3)
    torch.testing.assert_close(model.unpatchify(tokens), img)


def test_sincos_positions_separate_columns_and_rows() -> None:
    emb = sincos_pos_embed_2d(16, 4).reshape(4, 4, 16)  # (row, col, D)
    first, second = emb[..., :8], emb[..., 8:]
    assert torch.allclose(first, first[:1].expand_as(first))  # first half: column only
    assert torch.allclose(second, second[:, :1].expand_as(second))  # second half: row only
    assert torch.allclose(emb[0, 0, :4], torch.zeros(4))  # sin(0) at the origin


def test_null_class_only_with_label_dropout() -> None:
    assert _tiny().y_embedder.table.num_embeddings == 5
    assert _tiny(class_dropout=0.0).y_embedder.table.num_embeddings == 4


def test_learn_sigma_doubles_output_channels() -> None:
    cfg = ModelConfig(
        name="SiT-T/2", space="pixel", input_size=8, in_channels=3, num_classes=4, learn_sigma=True
    )
    model = SiT.from_config(cfg)
    assert model(torch.randn(1, 3, 8, 8), torch.rand(1), torch.tensor([0])).shape == (1, 6, 8, 8)
    with pytest.raises(ValueError, match="resolved"):
        SiT.from_config(ModelConfig(name="SiT-T/2"))


@pytest.mark.parametrize(("name", "side", "channels"), [("SiT-T/2", 8, 3), ("SiT-T/4", 16, 4)])
def test_analytic_flops_match_counted_flops(name: str, side: int, channels: int) -> None:
    from harness.train.bench import counted_flops, sit_forward_flops

    model = SiT(sit_arch(name), input_size=side, in_channels=channels, num_classes=4)
    x, t, y = torch.randn(1, channels, side, side), torch.rand(1), torch.tensor([1])
    counted = counted_flops(lambda: model(x, t, y))
    analytic = sit_forward_flops(sit_arch(name), side, channels, channels)
    assert abs(analytic / counted - 1) < 1e-6


def test_device_peak_lookup() -> None:
    from harness.train.bench import device_peak_flops

    assert device_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12
    assert device_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert device_peak_flops("NVIDIA H200", "fp32") == 494.7e12
    assert device_peak_flops("cpu", "bf16") is None
