"""The objectives the in-house encoders are trained with (one registry, :data:`OBJECTIVES`).

Each trains the same :class:`~harness.encoders.pretrain.TinyViT` on the dataset's train split,
so the encoders spread over the semantics x spatial-structure plane by objective alone:

* ``supervised``: cross-entropy on the class labels from the mean token (a linear head).
* ``mae``: masked autoencoding (He et al. 2022): ``mask_ratio`` of the patches are dropped, the
  encoder sees the rest (masked pixels are zeroed too, so the conv stem cannot peek across patch
  borders) and a small transformer decoder reconstructs the per-patch normalised pixels of the
  masked patches (MSE on masked patches only).
* ``simclr``: contrastive (Chen et al. 2020): two augmented views per image, a 2-layer MLP
  projection of the mean token, InfoNCE / NT-Xent at ``temperature`` over the 2B views.

Every objective reports, besides the training loss, the weighted-kNN accuracy of the pooled
vector on the val split (and of the same architecture at random init, for comparison); the
supervised one its train / val accuracy, MAE its val reconstruction loss next to the
predict-the-mean baseline, SimCLR its val InfoNCE next to chance (``log(2B - 1)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from timm.models.vision_transformer import Block
from torch import nn

from harness.encoders.builtin import patchify
from harness.encoders.pretrain import (
    FitStats,
    Recipe,
    TinyViT,
    augment,
    build_vit,
    embed_all,
    fit,
    knn_accuracy,
    sincos_embedding,
)
from harness.registry import Registry


@dataclass(frozen=True)
class TrainData:
    """Everything an objective trains and evaluates on (images already in memory)."""

    train_images: torch.Tensor  # (N, 3, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    val_images: torch.Tensor  # (M, 3, H, W) uint8
    val_labels: torch.Tensor  # (M,) int64
    num_classes: int
    patch: int  # pixels per token side
    mean: torch.Tensor  # (3,) normalisation of [0, 1] pixels (the catalogue entry's)
    std: torch.Tensor  # (3,)

    @property
    def native(self) -> tuple[int, int]:
        """Token grid of the training images."""
        h, w = self.train_images.shape[-2:]
        return (h // self.patch, w // self.patch)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] (B, 3, H, W) -> normalised with the entry's mean / std."""
        return (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)

    def unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float [0, 1]."""
        return images.float() / 255.0


@dataclass(frozen=True)
class Objective:
    """One training objective: its recipe type and its ``train`` function."""

    recipe: type[Recipe]
    train: Callable[[Recipe, TrainData], tuple[TinyViT, dict[str, Any]]]  # -> (model, stats)


OBJECTIVES: Registry[Objective] = Registry("inhouse objective")


def read_out(vit: TinyViT, data: TrainData, recipe: Recipe, stats: FitStats) -> dict[str, Any]:
    """Stats every objective reports: the fit's numbers and kNN accuracy (trained, random)."""

    def knn(model: TinyViT) -> float:
        def pool(x: torch.Tensor) -> torch.Tensor:
            return model.pooled(data.normalise(data.unit(x)))

        train = embed_all(pool, data.train_images)  # (N, D)
        val = embed_all(pool, data.val_images)  # (M, D)
        return knn_accuracy(train, data.train_labels, val, data.val_labels, data.num_classes)

    return {
        **stats.to_dict(),
        "knn_val_accuracy": knn(vit),
        "knn_val_accuracy_random_init": knn(build_vit(recipe, data.patch, data.native).eval()),
    }


# ---------------------------------------------------------------------------------------------
# supervised
# ---------------------------------------------------------------------------------------------
class SupervisedRecipe(Recipe):
    """Classifier recipe: cross-entropy on the labels from a linear head on the mean token."""

    label_smoothing: float = Field(0.0, ge=0, lt=1)  # cross-entropy label smoothing


def train_supervised(recipe: Recipe, data: TrainData) -> tuple[TinyViT, dict[str, Any]]:
    """Train a classifier; stats add train / val accuracy and val cross-entropy."""
    assert isinstance(recipe, SupervisedRecipe)
    generator = torch.Generator().manual_seed(recipe.seed)
    vit = build_vit(recipe, data.patch, data.native)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed + 1)
        head = nn.Linear(recipe.width, data.num_classes)
    model = nn.ModuleDict({"vit": vit, "head": head})

    def step_loss(idx: torch.Tensor) -> torch.Tensor:
        x = augment(data.unit(data.train_images[idx]), recipe, generator)  # (B, 3, H, W)
        logits = head(vit.pooled(data.normalise(x)))  # (B, classes)
        return F.cross_entropy(
            logits, data.train_labels[idx], label_smoothing=recipe.label_smoothing
        )

    stats = fit(
        model, step_loss, len(data.train_images), recipe, generator, desc="inhouse: supervised"
    )

    def logits(images: torch.Tensor) -> torch.Tensor:
        return head(vit.pooled(data.normalise(data.unit(images))))

    with torch.no_grad():
        train_logits = embed_all(logits, data.train_images)  # (N, classes)
        val_logits = embed_all(logits, data.val_images)  # (M, classes)
    return vit, {
        **read_out(vit, data, recipe, stats),
        "train_accuracy": float((train_logits.argmax(1) == data.train_labels).float().mean()),
        "val_accuracy": float((val_logits.argmax(1) == data.val_labels).float().mean()),
        "val_loss": float(F.cross_entropy(val_logits, data.val_labels)),
        "chance_accuracy": 1.0 / data.num_classes,
    }


# ---------------------------------------------------------------------------------------------
# mae
# ---------------------------------------------------------------------------------------------
class MAERecipe(Recipe):
    """Masked-autoencoder recipe."""

    mask_ratio: float = Field(0.75, gt=0, lt=1)  # fraction of patches masked per image
    decoder_width: int = Field(64, ge=8)  # decoder token width (divisible by 4 and heads)
    decoder_depth: int = Field(1, ge=1)  # decoder transformer blocks
    norm_pix_eps: float = Field(0.01, gt=0)  # targets (x - mean_p) / sqrt(var_p + eps), per patch
    epochs: int = Field(8, ge=1)  # the loss is flat after ~6 epochs

    @model_validator(mode="after")
    def _decoder_splits(self) -> MAERecipe:
        if self.decoder_width % self.heads or self.decoder_width % 4:
            raise ValueError(
                f"decoder_width {self.decoder_width} must be divisible by heads ({self.heads}) "
                "and by 4"
            )
        return self


class MAEDecoder(nn.Module):
    """Visible tokens + mask tokens -> per-patch pixels (B, N, 3 p^2)."""

    def __init__(self, recipe: MAERecipe, patch: int, native: tuple[int, int]) -> None:
        super().__init__()
        width = recipe.decoder_width
        self.native = native
        self.proj = nn.Linear(recipe.width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(
            *(
                Block(width, recipe.heads, mlp_ratio=recipe.mlp_ratio, qkv_bias=True)
                for _ in range(recipe.decoder_depth)
            )
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 3 * patch * patch)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, n: int) -> torch.Tensor:
        """visible (B, K, D) encoder tokens at positions ``keep`` (B, K) of ``n`` -> (B, n, 3p^2)."""
        b = keep.shape[0]
        x = self.proj(visible)  # (B, K, Dd)
        full = self.mask_token.expand(b, n, -1).clone()  # (B, n, Dd)
        full.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        full = full + sincos_embedding(self.native, x.shape[-1], self.native).to(x)
        return self.out(self.norm(self.blocks(full)))


def mae_targets(x: torch.Tensor, patch: int, eps: float) -> torch.Tensor:
    """Normalised images (B, 3, H, W) -> per-patch normalised pixels (B, N, 3 p^2)."""
    target = patchify(x, patch).flatten(1, 2)  # (B, N, 3 p^2)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


def mae_loss(
    vit: TinyViT,
    decoder: MAEDecoder,
    x: torch.Tensor,
    recipe: MAERecipe,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One masked reconstruction of normalised images ``x`` (B, 3, H, W).

    Returns:
        loss (scalar; MSE over masked patches), targets (B, N, 3p^2), masked (B, N) bool.
    """
    b = x.shape[0]
    h, w = x.shape[-2] // vit.patch, x.shape[-1] // vit.patch
    n = h * w
    keep_n = max(1, round(n * (1 - recipe.mask_ratio)))
    order = torch.rand(b, n, generator=generator).argsort(dim=1)  # random patch order
    keep = order[:, :keep_n].sort(dim=1).values  # (B, K)
    masked = torch.ones(b, n, dtype=torch.bool).scatter_(1, keep, False)  # (B, N)
    pixel_mask = masked.view(b, 1, h, 1, w, 1).expand(b, 1, h, vit.patch, w, vit.patch)
    x_in = x.masked_fill(pixel_mask.reshape(b, 1, h * vit.patch, w * vit.patch), 0.0)
    tokens = vit.embed(x_in).reshape(b, n, -1)  # (B, N, D)
    visible = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, K, D)
    pred = decoder(vit.encode(visible), keep, n)  # (B, N, 3p^2)
    target = mae_targets(x, vit.patch, recipe.norm_pix_eps)
    per_patch = (pred - target).square().mean(-1)  # (B, N)
    return per_patch[masked].mean(), target, masked


def train_mae(recipe: Recipe, data: TrainData) -> tuple[TinyViT, dict[str, Any]]:
    """Train a masked autoencoder; stats add the val reconstruction loss and its baseline."""
    assert isinstance(recipe, MAERecipe)
    generator = torch.Generator().manual_seed(recipe.seed)
    vit = build_vit(recipe, data.patch, data.native)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed + 1)
        decoder = MAEDecoder(recipe, data.patch, data.native)
    model = nn.ModuleDict({"vit": vit, "decoder": decoder})

    def step_loss(idx: torch.Tensor) -> torch.Tensor:
        x = augment(data.unit(data.train_images[idx]), recipe, generator)
        return mae_loss(vit, decoder, data.normalise(x), recipe, generator)[0]

    stats = fit(model, step_loss, len(data.train_images), recipe, generator, desc="inhouse: mae")
    return vit, {**read_out(vit, data, recipe, stats), **mae_val_losses(vit, decoder, data, recipe)}


@torch.no_grad()
def mae_val_losses(
    vit: TinyViT, decoder: MAEDecoder, data: TrainData, recipe: MAERecipe
) -> dict[str, float]:
    """Val reconstruction MSE (fixed masks) next to predicting the train split's mean target
    (the best constant per target dimension) and predicting zeros, on the same masked patches."""
    generator = torch.Generator().manual_seed(recipe.seed + 12345)
    norm = data.normalise
    train_targets = embed_all(
        lambda im: mae_targets(norm(data.unit(im)), data.patch, recipe.norm_pix_eps),
        data.train_images,
    )  # (N, P, 3p^2)
    mean_target = train_targets.mean(dim=(0, 1))  # (3p^2,)
    total = mean_sq = zero_sq = count = 0.0
    for start in range(0, len(data.val_images), 250):
        x = norm(data.unit(data.val_images[start : start + 250]))
        loss, target, masked = mae_loss(vit, decoder, x, recipe, generator)
        picked = target[masked]  # (masked patches, 3p^2)
        total += float(loss) * len(picked)
        mean_sq += float((picked - mean_target).square().mean(-1).sum())
        zero_sq += float(picked.square().mean(-1).sum())
        count += len(picked)
    return {
        "val_loss": total / count,
        "val_loss_mean_baseline": mean_sq / count,
        "val_loss_zero_baseline": zero_sq / count,
    }


# ---------------------------------------------------------------------------------------------
# simclr
# ---------------------------------------------------------------------------------------------
class SimCLRRecipe(Recipe):
    """Contrastive recipe; its augmentation defaults are SimCLR's, scaled to 32-px images."""

    temperature: float = Field(0.2, gt=0)  # InfoNCE temperature
    proj_dim: int = Field(64, ge=2)  # output of the 2-layer projection MLP
    crop_scale: float = Field(0.3, gt=0, le=1)
    color: float = Field(0.5, ge=0, le=1)
    grayscale: float = Field(0.2, ge=0, le=1)
    epochs: int = Field(4, ge=1)  # two views per image: twice the cost of an epoch
    batch_size: int = Field(64, ge=2)  # 2B - 1 = 127 candidates per InfoNCE row


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of paired projections (B, P), (B, P): each view's positive is its twin among
    the other 2B - 1 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, P)
    sims = z @ z.T / temperature  # (2B, 2B)
    sims.fill_diagonal_(float("-inf"))
    b = len(z1)
    twins = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(sims, twins)


def train_simclr(recipe: Recipe, data: TrainData) -> tuple[TinyViT, dict[str, Any]]:
    """Train contrastively; stats add the val InfoNCE and its chance level log(2B - 1)."""
    assert isinstance(recipe, SimCLRRecipe)
    generator = torch.Generator().manual_seed(recipe.seed)
    vit = build_vit(recipe, data.patch, data.native)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed + 1)
        proj = nn.Sequential(
            nn.Linear(recipe.width, recipe.width),
            nn.GELU(),
            nn.Linear(recipe.width, recipe.proj_dim),
        )
    model = nn.ModuleDict({"vit": vit, "proj": proj})

    def views_loss(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = data.unit(images)
        v1, v2 = (data.normalise(augment(x, recipe, gen)) for _ in range(2))
        z = proj(vit.pooled(torch.cat([v1, v2])))  # (2B, P): one pass for both views
        return info_nce(*z.chunk(2), recipe.temperature)

    stats = fit(
        model,
        lambda idx: views_loss(data.train_images[idx], generator),
        len(data.train_images),
        recipe,
        generator,
        desc="inhouse: simclr",
    )
    val_gen = torch.Generator().manual_seed(recipe.seed + 12345)
    batch = min(recipe.batch_size, len(data.val_images))
    with torch.no_grad():
        losses = [
            float(views_loss(data.val_images[i : i + batch], val_gen))
            for i in range(0, len(data.val_images) - batch + 1, batch)
        ]
    return vit, {
        **read_out(vit, data, recipe, stats),
        "val_loss": sum(losses) / len(losses),
        "chance_loss": math.log(2 * batch - 1),
    }


OBJECTIVES.register("supervised", Objective(SupervisedRecipe, train_supervised))
OBJECTIVES.register("mae", Objective(MAERecipe, train_mae))
OBJECTIVES.register("simclr", Objective(SimCLRRecipe, train_simclr))
