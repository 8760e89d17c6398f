"""SiT: a DiT-style transformer over patches with adaLN-Zero conditioning (Ma et al. 2024).

Architecture as in the SiT / REPA / iREPA code bases (same parameter counts): conv patch
embedding + fixed 2D sin-cos positions, sinusoidal timestep MLP, class embedding with one extra
"null" class for classifier-free guidance, ``depth`` blocks of (adaLN-modulated attention, MLP),
and an adaLN-modulated linear head. Differences, none of which changes the math:

* attention goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels);
* every LayerNorm and the timestep embedding run in fp32 (a known fp16/bf16 NaN source);
* label dropout is done by the caller (``harness.train.loop``) from the step's seeded generator,
  so the network itself is a deterministic function (exact resume, DDP-size independence).

Shapes: x (B, C, S, S), t (B,), y (B,) int64 -> (B, C_out, S, S); tokens are (B, T, D) with
T = (S / patch)^2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.config.model import ModelConfig, SiTArch


def _layer_norm_fp32(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Affine-free LayerNorm computed in fp32 (returns fp32)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # (B, T, D)


# ---------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    """Scalar t -> sinusoidal features (fp32) -> 2-layer SiLU MLP."""

    def __init__(self, hidden: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )

    @staticmethod
    def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )  # (half,)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoidal(t, self.frequency_dim))  # (B, D)


class LabelEmbedder(nn.Module):
    """Class label -> vector; index ``num_classes`` is the null (unconditional) class."""

    def __init__(self, num_classes: int, hidden: int, with_null: bool) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + int(with_null), hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)  # (B, D)


def sincos_pos_embed_2d(dim: int, side: int) -> torch.Tensor:
    """Fixed 2D sin-cos positions (MAE/DiT layout: first half encodes rows, second columns)."""
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be divisible by 4 for 2D sin-cos positions")
    coords = torch.arange(side, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # (side, side) each

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10_000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
        out = pos.reshape(-1)[:, None] * omega[None]  # (T, dim/4)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (T, dim/2)

    # DiT passes grid[0] (= the w coordinate, from meshgrid(w, h)) as the first half.
    return torch.cat([one_axis(grid_w), one_axis(grid_h)], dim=1).float()  # (T, dim)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, Dh) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, -1)
        x = x + gate_a.unsqueeze(1) * self.attn(_modulate(_layer_norm_fp32(x), shift_a, scale_a))
        x = x + gate_m.unsqueeze(1) * self.mlp(_modulate(_layer_norm_fp32(x), shift_m, scale_m))
        return x  # (B, T, D)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(_modulate(_layer_norm_fp32(x), shift, scale))  # (B, T, p*p*C)


# ---------------------------------------------------------------------------------------------
# SiT
# ---------------------------------------------------------------------------------------------
class SiT(nn.Module):
    """Scalable interpolant transformer (velocity prediction).

    Args:
        arch: the size preset (depth, width, heads, patch).
        input_size: spatial side S of the input (latent or pixel).
        in_channels: input channels C.
        num_classes: number of class labels (the null class ``num_classes`` is added when
            ``class_dropout > 0``).
        class_dropout: only decides whether the null class exists (dropout is the caller's).
        learn_sigma: output 2C channels (the first C are the velocity).
    """

    def __init__(
        self,
        arch: SiTArch,
        *,
        input_size: int,
        in_channels: int,
        num_classes: int,
        class_dropout: float = 0.1,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        if input_size % arch.patch:
            raise ValueError(f"input size {input_size} is not divisible by patch {arch.patch}")
        self.arch = arch
        self.patch = arch.patch
        self.in_channels = in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.num_classes = num_classes
        self.grid = (input_size // arch.patch, input_size // arch.patch)
        self.hidden = arch.hidden
        self.x_embedder = nn.Conv2d(in_channels, arch.hidden, arch.patch, stride=arch.patch)
        self.t_embedder = TimestepEmbedder(arch.hidden)
        self.y_embedder = LabelEmbedder(num_classes, arch.hidden, with_null=class_dropout > 0)
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(arch.hidden, self.grid[0])[None], persistent=False
        )  # (1, T, D)
        self.blocks = nn.ModuleList(
            SiTBlock(arch.hidden, arch.heads, arch.mlp_ratio) for _ in range(arch.depth)
        )
        self.final_layer = FinalLayer(arch.hidden, arch.patch, self.out_channels)
        self.initialize_weights()

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SiT:
        """Build from a resolved :class:`ModelConfig`."""
        if cfg.input_size is None or cfg.in_channels is None or cfg.num_classes is None:
            raise ValueError("ModelConfig must be resolved (use it through a RunConfig)")
        return cls(
            cfg.arch,
            input_size=cfg.input_size,
            in_channels=cfg.in_channels,
            num_classes=cfg.num_classes,
            class_dropout=cfg.class_dropout,
            learn_sigma=cfg.learn_sigma,
        )

    @property
    def null_class(self) -> int:
        """Label index of the unconditional class (CFG)."""
        return self.num_classes

    def initialize_weights(self) -> None:
        """SiT/DiT init: xavier linears, zeroed adaLN modulations and output layer."""

        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        weight = self.x_embedder.weight  # patch embedding initialised like a linear layer
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        b, p, c = x.shape[0], self.patch, self.out_channels
        h, w = self.grid
        x = x.reshape(b, h, w, p, p, c)  # (B, h, w, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, h * p, w * p)  # (B, C, S, S)

    def forward_features(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, depth: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Velocity and (when ``depth`` is given) the hidden tokens after block ``depth``.

        Args:
            x: (B, C, S, S) noisy input x_t.
            t: (B,) times in [0, 1] (1 = pure noise).
            y: (B,) int64 labels; ``null_class`` for unconditional.
            depth: 1-based block index whose output is returned, or None.

        Returns:
            ((B, C_out, S, S) prediction, (B, T, D) hidden tokens or None).
        """
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        hidden = None
        for index, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, c)  # (B, T, D)
            if index == depth:
                hidden = tokens
        out = self.unpatchify(self.final_layer(tokens, c))  # (B, C_out, S, S)
        return out, hidden

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The velocity prediction (B, C_out, S, S)."""
        return self.forward_features(x, t, y)[0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
