"""The shared machinery of the in-house encoders: one small ViT, augmentations, the training
loop and a kNN read-out. The objectives themselves live in
:mod:`harness.encoders.pretrain_objectives`; the cached source in :mod:`harness.encoders.inhouse`.

The backbone (:class:`TinyViT`) is the same for every objective, so encoders differ only in what
they were trained to do: a convolutional stem of ``log2(patch)`` stride-2 3x3 convolutions
(early convolutions make small ViTs learn in a few CPU-epochs; Xiao et al. 2021), fixed 2-D
sin-cos position embeddings, pre-norm transformer blocks (timm's ``Block``) and a final
LayerNorm. Tokens = the final norm of the last block; the pooled vector = their mean (no CLS).

Position embeddings are a function of continuous coordinates normalised to the native grid
(the grid of the training images), so a model fed another input size sees its embeddings
interpolated, not extrapolated.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from timm.models.vision_transformer import Block
from torch import nn

from harness.config.base import Config
from harness.encoders.base import EncoderError, seeded_init
from harness.progress import progress

KNN_K = 20  # neighbours of the kNN read-out (DINO protocol: cosine, exp(sim / T) weighted votes)
KNN_TEMPERATURE = 0.07


class Recipe(Config):
    """What every objective shares: architecture, optimisation, augmentation, seed.

    Objectives subclass it (adding their own fields and overriding defaults); a key that the
    objective does not know is an error.
    """

    width: int = Field(64, ge=8)  # token width D (= the catalogue entry's embed_dim)
    depth: int = Field(2, ge=1)  # transformer blocks
    heads: int = Field(2, ge=1)  # attention heads (width must be divisible by it)
    mlp_ratio: float = Field(2.0, gt=0)  # hidden width of the block MLPs / width
    epochs: int = Field(10, ge=1)  # passes over the train split
    batch_size: int = Field(32, ge=2)  # images per step
    lr: float = Field(1.5e-3, gt=0)  # AdamW peak learning rate (linear warm-up, cosine decay)
    weight_decay: float = Field(0.05, ge=0)  # AdamW weight decay
    warmup: float = Field(0.05, ge=0, lt=1)  # warm-up length, fraction of all steps
    seed: int = Field(0, ge=0)  # init, shuffling, augmentation and masking seed
    flip: bool = True  # random horizontal flips
    crop_scale: float = Field(1.0, gt=0, le=1)  # min area of random resized crops (1 = none)
    color: float = Field(0.0, ge=0, le=1)  # colour jitter strength (SimCLR's s; 0 = none)
    grayscale: float = Field(0.0, ge=0, le=1)  # probability of a grey-scale image

    @model_validator(mode="after")
    def _width_splits(self) -> Recipe:
        if self.width % self.heads or self.width % 4:
            raise ValueError(
                f"width {self.width} must be divisible by heads ({self.heads}) and by 4 "
                "(2-D sin-cos position embeddings)"
            )
        return self


# ---------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------
def sincos_embedding(grid: tuple[int, int], width: int, native: tuple[int, int]) -> torch.Tensor:
    """2-D sin-cos position embeddings (h*w, width), row-major, of token centres expressed in
    native-grid units (a 16x16 grid on an 8x8-trained model samples between the 8x8 positions)."""
    h, w = grid
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) * native[0] / h - 0.5
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) * native[1] / w - 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    angles = [coord.reshape(-1, 1) * omega for coord in (yy, xx)]  # 2 x (h*w, width/4)
    parts = [fn(a) for a in angles for fn in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).float()  # (h*w, width)


class TinyViT(nn.Module):
    """Conv-stem ViT with patch size ``patch`` (a power of two) on a ``native`` token grid."""

    def __init__(self, recipe: Recipe, patch: int, native: tuple[int, int]) -> None:
        super().__init__()
        stages = round(math.log2(patch)) if patch > 1 else 0
        if patch < 2 or 2**stages != patch:
            raise EncoderError(f"inhouse ViT: patch size {patch} must be a power of two >= 2")
        self.patch, self.native, self.width = patch, native, recipe.width
        widths = [3] + [max(recipe.width >> (stages - 1 - i), 8) for i in range(stages - 1)]
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1), nn.GroupNorm(1, c_out), nn.GELU()]
        layers.append(nn.Conv2d(widths[-1], recipe.width, 3, 2, 1))
        self.stem = nn.Sequential(*layers)
        self.blocks = nn.ModuleList(
            Block(recipe.width, recipe.heads, mlp_ratio=recipe.mlp_ratio, qkv_bias=True)
            for _ in range(recipe.depth)
        )
        self.norm = nn.LayerNorm(recipe.width)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> tokens with position embeddings (B, H/p, W/p, D)."""
        tokens = self.stem(x).permute(0, 2, 3, 1)  # (B, h, w, D)
        h, w = tokens.shape[1:3]
        pos = sincos_embedding((h, w), self.width, self.native).to(tokens)
        return tokens + pos.view(1, h, w, -1)

    def encode(
        self, tokens: torch.Tensor, layer: int = -1, final_norm: bool = True
    ) -> torch.Tensor:
        """(B, N, D) -> (B, N, D): blocks ``0..layer`` (-1 = all), then the final norm."""
        last = len(self.blocks) - 1 if layer == -1 else layer
        for block in self.blocks[: last + 1]:
            tokens = block(tokens)
        return self.norm(tokens) if final_norm else tokens

    def forward(self, x: torch.Tensor, layer: int = -1, final_norm: bool = True) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> tokens (B, H/p, W/p, D)."""
        tokens = self.embed(x)
        b, h, w, d = tokens.shape
        return self.encode(tokens.reshape(b, h * w, d), layer, final_norm).reshape(b, h, w, d)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D): the mean token (what the encoder's ``pooled`` is)."""
        return self(x).mean(dim=(1, 2))


def build_vit(recipe: Recipe, patch: int, native: tuple[int, int]) -> TinyViT:
    """The backbone with its seeded random init (the global RNG is left untouched)."""
    with seeded_init(recipe.seed):
        return TinyViT(recipe, patch, native)


# ---------------------------------------------------------------------------------------------
# Augmentation (batched, on [0, 1] images, every draw from one generator)
# ---------------------------------------------------------------------------------------------
def augment(x: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop + flip (one resampling), colour jitter, grey-scale: (B, 3, H, W)."""
    b = x.shape[0]
    if recipe.crop_scale < 1:
        x = _resized_crop(x, recipe, generator)
    elif recipe.flip:
        flips = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
    if recipe.color > 0:
        x = _color_jitter(x, recipe.color, generator)
    if recipe.grayscale > 0:
        gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        pick = torch.rand(b, generator=generator) < recipe.grayscale
        x = torch.where(pick.view(-1, 1, 1, 1), gray.expand_as(x), x)
    return x


def _resized_crop(x: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """Crops of area U[crop_scale, 1] and aspect ratio in [3/4, 4/3], resized back, maybe
    flipped; bilinear, as one affine resampling."""
    b = x.shape[0]
    area = recipe.crop_scale + (1 - recipe.crop_scale) * torch.rand(b, generator=generator)
    log_ratio = (torch.rand(b, generator=generator) * 2 - 1) * math.log(4 / 3)
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1)  # crop width / image width
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1)
    tx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sx)  # centre, [-1, 1] units
    ty = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sy)
    sign = torch.ones(b)
    if recipe.flip:
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * sign, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """SimCLR's jitter at strength s: brightness, contrast, saturation U[1-0.8s, 1+0.8s], hue
    rotated by U[-0.2s, 0.2s] turns about the grey axis; clamped to [0, 1]."""
    b = x.shape[0]

    def factor() -> torch.Tensor:
        return (1 + 0.8 * strength * (torch.rand(b, generator=generator) * 2 - 1)).view(-1, 1, 1)

    x = x * factor().unsqueeze(1)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor().unsqueeze(1) + mean  # contrast
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * factor().unsqueeze(1) + gray  # saturation
    angle = (torch.rand(b, generator=generator) * 2 - 1) * 0.2 * strength * 2 * math.pi
    axis = torch.full((3,), 1 / math.sqrt(3))  # the grey axis, unit length
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    rot = cos * torch.eye(3) + (1 - cos) * torch.outer(axis, axis) + sin * cross  # (B, 3, 3)
    x = torch.einsum("bij,bjhw->bihw", rot.to(x), x)  # Rodrigues rotation of each pixel
    return x.clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------
@dataclass
class FitStats:
    """What a training run measured."""

    epoch_losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    steps: int = 0
    cpu_s: float = 0.0  # time.process_time of the loop (all threads of this process)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return {
            "train_loss": self.epoch_losses[-1],  # last epoch, augmented, train mode
            "first_epoch_loss": self.epoch_losses[0],
            "epoch_losses": self.epoch_losses,
            "steps": self.steps,
            "train_cpu_s": round(self.cpu_s, 3),
            "train_wall_s": round(self.wall_s, 3),
            "torch_threads": torch.get_num_threads(),
        }


def fit(
    model: nn.Module,
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    n_images: int,
    recipe: Recipe,
    generator: torch.Generator,
    *,
    desc: str,
) -> FitStats:
    """AdamW with linear warm-up and cosine decay over ``recipe.epochs`` shuffled epochs.

    Args:
        model: every trainable module (backbone + the objective's heads).
        step_loss: ``indices (B,) -> scalar loss`` of one batch of the train split.
        n_images: size of the train split.
        recipe: epochs, batch size, lr, weight decay, warm-up.
        generator: the run's random stream (shuffling here; augmentation in ``step_loss``).
        desc: progress-bar label.
    """
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # biases, norms
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay}],
        lr=recipe.lr,
        weight_decay=0.0,
    )
    total = recipe.epochs * math.ceil(n_images / recipe.batch_size)
    warm = max(1, round(recipe.warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    stats = FitStats()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model.train()
    bar = progress(range(recipe.epochs), desc=desc, unit="epoch")
    for _ in bar:
        order = torch.randperm(n_images, generator=generator)
        total_loss = 0.0
        for idx in _batches(order, recipe.batch_size):
            loss = step_loss(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            stats.steps += 1
            total_loss += float(loss.detach()) * len(idx)
        stats.epoch_losses.append(total_loss / n_images)
        bar.set_postfix(loss=f"{stats.epoch_losses[-1]:.4f}")
    model.eval()
    stats.cpu_s, stats.wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    return stats


def _batches(order: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``order``; a last batch of one image joins the previous one
    (batch statistics such as InfoNCE need two)."""
    starts = list(range(0, len(order), size))
    if len(starts) > 1 and len(order) - starts[-1] < 2:
        starts.pop()
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(order)
        yield order[start:end]


# ---------------------------------------------------------------------------------------------
# Read-out
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def embed_all(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 250
) -> torch.Tensor:
    """``fn`` over ``x`` (N, ...) in chunks, concatenated (no grad)."""
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
) -> float:
    """Weighted kNN accuracy on cosine similarity (k = 20, weights exp(sim / 0.07)).

    Args:
        train_feats: (N, D) bank; train_labels: (N,) int64.
        val_feats: (M, D) queries; val_labels: (M,) int64.
    """
    bank = F.normalize(train_feats.float(), dim=1)
    query = F.normalize(val_feats.float(), dim=1)
    sims, idx = (query @ bank.T).topk(min(KNN_K, len(bank)), dim=1)  # (M, k)
    votes = torch.zeros(len(query), num_classes)
    votes.scatter_add_(1, train_labels[idx], (sims / KNN_TEMPERATURE).exp())
    return float((votes.argmax(1) == val_labels).float().mean())
