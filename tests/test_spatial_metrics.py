"""Spatial metrics against a direct dense T×T implementation of their definitions, known
answers, and bad-input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.metrics import MetricError
from harness.metrics.spatial import spatial_metrics


def dense_spatial_metrics(
    features: torch.Tensor,
    grid: tuple[int, int],
    masks: torch.Tensor | None = None,
    *,
    far_dist: int = 6,
    cds_max_dist: int = 8,
    srss_pos_dist: int = 1,
    srss_neg_dist: int = 6,
    srss_min_fg: int = 0,
    srss_min_bg: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """The definitions, literally: a T×T cosine matrix and Manhattan-distance masks per batch.

    Mirrors the published analysis code (iREPA ``metrics/spatial_metrics.py``). Also the
    "dense reference" of ``benchmarks/bench_spatial.py`` (there in float32).
    """
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dist = (ys[:, None] - ys[None]).abs() + (xs[:, None] - xs[None]).abs()  # (T, T)
    x = torch.nn.functional.normalize(features.to(dtype), dim=-1, eps=1e-8)
    cos = x @ x.transpose(1, 2)  # (B, T, T)
    near, far = dist == 1, dist >= far_dist
    far_mean = (cos * far).sum((1, 2)) / far.sum().clamp(min=1)
    out = {"lds": (cos * near).sum((1, 2)) / near.sum() - far_mean}
    ds, gs = [], []
    for d in range(1, cds_max_dist + 1):
        ring = dist == d
        if ring.any():
            ds.append(d)
            gs.append((cos * ring).sum((1, 2)) / ring.sum())
    if len(ds) >= 2:
        g = torch.stack(gs, 1)
        centred = torch.tensor(ds, dtype=g.dtype) - sum(ds) / len(ds)
        out["cds"] = -((g - g.mean(1, keepdim=True)) @ centred) / (centred @ centred)
    else:
        out["cds"] = torch.zeros(features.shape[0], dtype=dtype)
    out["rmsc"] = (x - x.mean(1, keepdim=True)).square().sum(-1).mean(1).sqrt()
    if masks is not None:
        pos_ring = (dist >= 1) & (dist <= srss_pos_dist)
        neg_ring = dist >= srss_neg_dist
        values = []
        for b in range(features.shape[0]):
            fg = masks[b]
            bg = ~fg
            pos = fg[:, None] & fg[None, :] & pos_ring
            neg = fg[:, None] & bg[None, :] & neg_ring
            n_pos, n_neg = pos.sum(1), neg.sum(1)
            anchor = (cos[b] * pos).sum(1) / n_pos.clamp(min=1) - (cos[b] * neg).sum(
                1
            ) / n_neg.clamp(min=1)
            valid = fg & (n_pos > 0) & (n_neg > 0)
            ok = fg.sum() >= max(srss_min_fg, 1) and bg.sum() >= max(srss_min_bg, 1)
            values.append(
                anchor[valid].mean() if ok and valid.any() else torch.tensor(math.nan, dtype=dtype)
            )
        out["srss"] = torch.stack(values)
    return out


def smooth_field(
    batch: int, h: int, w: int, dim: int, seed: int = 0, scale: float = 4.0
) -> torch.Tensor:
    """Tokens that vary slowly across the grid: random low-frequency sinusoids per channel."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    freq = torch.rand(batch, 1, 1, dim, 2, generator=gen) / scale
    phase = torch.rand(batch, 1, 1, dim, generator=gen) * 2 * math.pi
    field = torch.sin(
        freq[..., 0] * ys[None, :, :, None] + freq[..., 1] * xs[None, :, :, None] + phase
    )
    return (field + 0.3).reshape(batch, h * w, dim)


def random_masks(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Blob-shaped foreground masks, plus an all-fg and an all-bg image at the end."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    cy, cx = torch.rand(batch, 1, 1, generator=gen) * h, torch.rand(batch, 1, 1, generator=gen) * w
    radius = 1 + torch.rand(batch, 1, 1, generator=gen) * max(h, w) / 2
    masks = ((ys - cy).square() + (xs - cx).square()) <= radius.square()
    masks = masks.reshape(batch, h * w)
    if batch >= 3:
        masks[-1] = True
        masks[-2] = False
    return masks


def assert_matches(ours: dict, ref: dict, atol: float = 1e-5) -> None:
    assert set(ours) == set(ref)
    for key in ref:
        a, b = ours[key].double(), ref[key].double()
        assert torch.equal(torch.isnan(a), torch.isnan(b)), key
        ok = ~torch.isnan(b)
        assert torch.allclose(a[ok], b[ok], atol=atol, rtol=0), (key, (a - b).abs().nanmax())


GRIDS = [(4, 4), (5, 7), (8, 8), (9, 6), (16, 16), (3, 20), (32, 32)]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_matches_dense_on_random_and_structured_inputs(grid: tuple[int, int]) -> None:
    h, w = grid
    dim = 24
    torch.manual_seed(h * 100 + w)
    feats = torch.cat([torch.randn(3, h * w, dim), smooth_field(3, h, w, dim, seed=h)])
    feats[1] = feats[1] + 2.0  # shared component: high cosines everywhere
    masks = random_masks(6, h, w, seed=w)
    ours = spatial_metrics(feats, (h, w), masks)
    ref = dense_spatial_metrics(feats, (h, w), masks)
    assert_matches(ours, ref)


def test_matches_dense_with_wide_features_and_float32_reference() -> None:
    feats = smooth_field(4, 16, 16, 768, seed=3) + 0.1 * torch.randn(4, 256, 768)
    masks = random_masks(4, 16, 16, seed=1)
    ours = spatial_metrics(feats, (16, 16), masks)
    assert_matches(ours, dense_spatial_metrics(feats, (16, 16), masks))
    assert_matches(
        ours, dense_spatial_metrics(feats, (16, 16), masks, dtype=torch.float32), atol=1e-5
    )


@pytest.mark.parametrize(
    "params",
    [
        {"far_dist": 3, "cds_max_dist": 4},
        {"srss_pos_dist": 2, "srss_neg_dist": 4},
        {"far_dist": 9, "cds_max_dist": 12, "srss_pos_dist": 3, "srss_neg_dist": 9},
        {"srss_min_fg": 20, "srss_min_bg": 20},
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()),
)
def test_every_radius_is_a_parameter(params: dict) -> None:
    feats = torch.cat([torch.randn(2, 100, 16), smooth_field(2, 10, 10, 16)])
    masks = random_masks(4, 10, 10, seed=5)
    assert_matches(
        spatial_metrics(feats, (10, 10), masks, **params),
        dense_spatial_metrics(feats, (10, 10), masks, **params),
    )


def test_chunking_does_not_change_values() -> None:
    feats = smooth_field(7, 8, 8, 32) + 0.2 * torch.randn(7, 64, 32)
    masks = random_masks(7, 8, 8)
    whole = spatial_metrics(feats, 8, masks)
    chunked = spatial_metrics(feats, 8, masks, chunk_bytes=1)  # one image per chunk
    for key in whole:
        assert torch.allclose(whole[key], chunked[key], atol=1e-9, equal_nan=True)


def test_empty_foreground_or_background_gives_nan_srss() -> None:
    feats = torch.randn(3, 64, 8)
    masks = torch.zeros(3, 64, dtype=torch.bool)
    masks[1] = True
    masks[2, :20] = True
    srss = spatial_metrics(feats, None, masks)["srss"]
    assert torch.isnan(srss[0]) and torch.isnan(srss[1]) and not torch.isnan(srss[2])
    assert "srss" not in spatial_metrics(feats)


@pytest.mark.parametrize("kind", ["speckle", "stripes", "tall-blobs"])
def test_srss_matches_dense_on_masks_with_long_boundaries(kind: str) -> None:
    # many anchors next to background, and grids tall enough to be cut into bands of rows
    h, w = (40, 12) if kind == "tall-blobs" else (32, 32)
    gen = torch.Generator().manual_seed(len(kind))
    feats = smooth_field(3, h, w, 16, seed=2) + 0.3 * torch.randn(3, h * w, 16, generator=gen)
    if kind == "speckle":
        masks = torch.rand(3, h * w, generator=gen) < torch.tensor([[0.2], [0.5], [0.8]])
    elif kind == "stripes":
        rows = torch.arange(h)[:, None].expand(h, w).reshape(-1)
        masks = torch.stack([(rows // period) % 2 == 0 for period in (1, 3, 7)])
    else:
        masks = random_masks(3, h, w, seed=4)
    for params in ({}, {"srss_pos_dist": 2, "srss_neg_dist": 9}):
        assert_matches(
            spatial_metrics(feats, (h, w), masks, **params),
            dense_spatial_metrics(feats, (h, w), masks, **params),
        )


def test_srss_keeps_float32_accuracy_when_background_is_small() -> None:
    # nearly parallel tokens and a few background tokens: "all background minus near" must
    # not lose digits to cancellation (no anchor is far from most of the background)
    h = w = 32
    gen = torch.Generator().manual_seed(0)
    feats = smooth_field(4, h, w, 768, seed=1, scale=16.0) + 3.0
    feats = feats + 0.05 * torch.randn(feats.shape, generator=gen)
    masks = torch.ones(4, h, w, dtype=torch.bool)
    masks[0, 0, :3] = False
    masks[1, :4, :4] = False
    masks[2, 28:, 28:] = False
    masks[3, :, :2] = False
    masks = masks.reshape(4, h * w)
    ours = spatial_metrics(feats, (h, w), masks)["srss"]
    ref = dense_spatial_metrics(feats, (h, w), masks)["srss"]
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0), (ours - ref).abs().max()


def test_srss_of_known_two_region_images() -> None:
    # fg tokens all a, bg tokens all b: positives have cos 1, negatives cos(a, b)
    h, w = 12, 12
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8])  # cos(a, b) = 0.6
    fg = torch.zeros(h, w, dtype=torch.bool)
    fg[:, :4] = True  # every fg token has bg at distance >= 6 (columns 9..11)
    feats = torch.where(fg[..., None], a, b).reshape(1, h * w, 2).repeat(3, 1, 1)
    feats = feats * (0.5 + 5 * torch.rand(3, h * w, 1))  # norms do not matter
    feats[2] = torch.where(fg[..., None], a, a).reshape(h * w, 2)  # bg like fg: SRSS 0
    masks = fg.reshape(1, h * w).repeat(3, 1)
    srss = spatial_metrics(feats, (h, w), masks)["srss"]
    assert srss[:2].tolist() == pytest.approx([0.4, 0.4], abs=1e-6)
    assert srss[2].item() == pytest.approx(0.0, abs=1e-6)


def test_srss_is_nan_for_every_image_without_valid_anchors() -> None:
    feats = torch.randn(4, 64, 8)
    masks = torch.zeros(4, 64, dtype=torch.bool)
    masks[1] = True  # no background
    masks[2, 27] = True  # one fg token: no positive
    masks[3, :8] = True  # no background at d >= 15 (the largest distance on 8x8 is 14)
    out = spatial_metrics(feats, (8, 8), masks, srss_neg_dist=15)
    assert_matches(out, dense_spatial_metrics(feats, (8, 8), masks, srss_neg_dist=15))
    assert torch.isnan(out["srss"]).all()
    assert torch.isnan(spatial_metrics(feats[:1], (8, 8), masks[:1])["srss"]).all()  # no fg at all


def test_constant_tokens_have_zero_rmsc() -> None:
    token = torch.randn(1, 1, 64)
    feats = token.expand(2, 256, 64) * torch.tensor([1.0, 3.0])[:, None, None]
    out = spatial_metrics(feats)
    assert torch.allclose(out["rmsc"], torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(out["lds"], torch.zeros(2, dtype=torch.float64), atol=1e-6)


def test_iid_tokens_have_no_spatial_structure_and_smooth_fields_do() -> None:
    iid = spatial_metrics(torch.randn(16, 256, 256))
    assert iid["lds"].abs().max() < 0.01
    assert iid["cds"].abs().max() < 0.002
    assert torch.allclose(iid["rmsc"], torch.ones(16, dtype=torch.float64), atol=0.01)
    smooth = spatial_metrics(smooth_field(8, 16, 16, 256))
    assert (smooth["lds"] > 0.1).all()
    assert (smooth["cds"] > 0.01).all()


def test_lds_of_a_known_two_region_image() -> None:
    # left half token a, right half token b (orthogonal): cos = 1 inside a half, 0 across.
    h, w = 4, 8
    feats = torch.zeros(1, h, w, 2)
    feats[..., : w // 2, 0] = 1.0
    feats[..., w // 2 :, 1] = 1.0
    out = spatial_metrics(feats.reshape(1, h * w, 2), (h, w))
    # 4-neighbour pairs: 3*8 vertical + 4*7 horizontal = 52, of which 4 cross the border.
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    dist = np.abs(ys[:, None] - ys[None]) + np.abs(xs[:, None] - xs[None])
    same = (xs[:, None] < w // 2) == (xs[None] < w // 2)
    far = dist >= 6
    expected = 48 / 52 - (same & far).sum() / far.sum()
    assert out["lds"].item() == pytest.approx(expected, abs=1e-6)
    assert out["rmsc"].item() == pytest.approx(math.sqrt(0.5), abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": torch.randn(2, 50, 8)}, "not a square"),
        ({"features": torch.randn(2, 64, 8), "grid": (4, 8)}, "does not match"),
        (
            {"features": torch.randn(2, 64, 8), "masks": torch.ones(2, 63, dtype=torch.bool)},
            "masks",
        ),
        ({"features": torch.randn(64, 8)}, r"\(B, T, D\)"),
        ({"features": torch.randn(2, 64, 8), "far_dst": 3}, "did you mean 'far_dist'"),
        ({"features": torch.randn(2, 64, 8), "srss_neg_dist": 1}, "srss_neg_dist"),
    ],
    ids=["non-square", "grid-mismatch", "mask-shape", "2d", "unknown-param", "bad-radius"],
)
def test_bad_input_errors_name_the_encoder_and_shape(kwargs: dict, message: str) -> None:
    with pytest.raises(MetricError, match=message) as info:
        spatial_metrics(name="dinov2-vit-b", **kwargs)
    text = str(info.value)
    if "param" not in message and "srss" not in message and "did you" not in message:
        assert "dinov2-vit-b" in text


def test_non_finite_features_are_reported_with_image_index() -> None:
    feats = torch.randn(3, 16, 4)
    feats[2, 5, 1] = math.inf
    with pytest.raises(MetricError, match=r"dinov2-vit-b.*\(3, 16, 4\).*batch index 2"):
        spatial_metrics(feats, name="dinov2-vit-b")
