"""Training and alignment configuration, and the (torch-free) registries of alignment methods,
projectors and alignment losses.

A *method* is declarative: a :class:`MethodSpec` names the default projector, λ, target
normalisation and loss. The torch pieces it names live in ``harness.models.projectors``
(projectors) and ``harness.train.align`` (target normalisations, losses) and are registered here
lazily, so a variant such as another projector or loss is one class there plus one registry line
(and a ``MethodSpec``) here, never a branch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from harness.config.base import Config
from harness.config.model import check_name
from harness.errors import ConfigError
from harness.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.train.flow import Interpolant


# ---------------------------------------------------------------------------------------------
# Alignment methods, projectors, losses
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """Defaults of one alignment method (what ``align.*: null`` resolves to)."""

    uses_encoder: bool  # False: plain flow matching, no targets (method "none")
    projector: str = "mlp"  # projector (PROJECTORS)
    proj_coeff: float = 0.5  # λ, weight of the alignment loss
    zscore: bool = False  # spatially z-score the target tokens
    zscore_gamma: float = 0.6  # γ of the z-score (mean-subtraction strength)
    kernel_size: int = 3  # conv projector kernel
    loss: str = "cosine"  # alignment loss (ALIGN_LOSSES)
    description: str = ""


METHODS: Registry[MethodSpec] = Registry("alignment method")
METHODS.register("none", MethodSpec(uses_encoder=False, description="vanilla SiT, no alignment"))
METHODS.register(
    "repa",
    MethodSpec(
        uses_encoder=True,
        projector="mlp",
        proj_coeff=0.5,
        zscore=False,
        description="REPA: 3-layer SiLU MLP projector (width 2048), λ 0.5, negative cosine",
    ),
)
METHODS.register(
    "irepa",
    MethodSpec(
        uses_encoder=True,
        projector="conv",
        # The paper keeps REPA's λ = 0.5. The released LDM config (ldm/configs/irepa.yaml) sets
        # proj_coeff 1.0, and ldm/train.py defaults --proj-kwargs-kernel-size to 1 (a 1x1 conv
        # unless the flag is set): both are known pitfalls; the paper and README say kernel 3.
        proj_coeff=0.5,
        kernel_size=3,
        zscore=True,
        zscore_gamma=0.6,
        description="iREPA: 3x3 conv projector on the token grid + spatial z-score of targets",
    ),
)


# The torch pieces a method names, registered lazily ("module:object", imported on first get):
# config validation checks names against these same registries without importing torch.
# Every projector has the constructor cls(in_dim, out_dim, *, hidden_dim, kernel_size, grid).
PROJECTORS: Registry[type[nn.Module]] = Registry(
    "projector",
    lazy={
        "mlp": "harness.models.projectors:MLPProjector",  # 3-layer MLP, SiLU, width projector_dim
        "linear": "harness.models.projectors:LinearProjector",  # one linear layer per token
        "conv": "harness.models.projectors:ConvProjector",  # k x k conv over the token grid
    },
)
# name -> per-sample loss (B,) from (projected, target); lower is better
ALIGN_LOSSES: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry(
    "alignment loss", lazy={"cosine": "harness.train.align:negative_cosine"}
)
# TrainConfig.path -> the interpolant x_t = α_t x + σ_t ε of the flow-matching objective
INTERPOLANTS: Registry[Interpolant] = Registry(
    "interpolant path",
    lazy={"linear": "harness.train.flow:LINEAR", "cosine": "harness.train.flow:COSINE"},
)


class AlignConfig(Config):
    """Representation alignment. ``None`` = the method's default (see ``METHODS``); the run config
    records the resolved values."""

    encoder_depth: int | None = Field(None, ge=1)  # align the output of this block; None = preset
    projector: str | None = None  # projector kind: mlp | linear | conv; None = method default
    projector_dim: int = Field(2048, ge=1)  # hidden width of the MLP projector (REPA: 2048)
    kernel_size: int | None = Field(None, ge=1, le=15)  # conv projector kernel (odd)
    proj_coeff: float | None = Field(
        None, ge=0.0, validation_alias=AliasChoices("proj_coeff", "lambda")
    )  # λ: weight of the alignment loss ("lambda" also accepted)
    zscore: bool | None = None  # spatial z-score of the target tokens (iREPA)
    zscore_gamma: float | None = Field(None, ge=0.0, le=1.0)  # γ in x - γ·mean_T(x)
    loss: str | None = None  # alignment loss: cosine (negative cosine per token)

    @field_validator("projector")
    @classmethod
    def _known_projector(cls, value: str | None) -> str | None:
        return check_name(value, PROJECTORS, "projector")

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int | None) -> int | None:
        if value is not None and value % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-size padding), got {value}")
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str | None) -> str | None:
        return check_name(value, ALIGN_LOSSES, "alignment loss")

    def resolved(self, method: str, default_depth: int) -> AlignConfig:
        """A copy with every ``None`` replaced by the method's default (``encoder_depth``: the
        SiT preset's ``default_depth``)."""
        spec = METHODS.get(method)
        values = self.model_dump()
        for key in RESOLVED_FIELDS:
            if values[key] is None:
                values[key] = default_depth if key == "encoder_depth" else getattr(spec, key)
        return AlignConfig.model_validate(values)

    def check_resolved(self) -> AlignConfig:
        """``self`` if every method default is filled in (see :meth:`resolved`), else a
        ConfigError naming the unresolved fields: a missing value never falls back to 0."""
        missing = [key for key in RESOLVED_FIELDS if getattr(self, key) is None]
        if missing:
            raise ConfigError(
                f"alignment config is not resolved: {', '.join(missing)} unset",
                hint="build it through a RunConfig, or call AlignConfig.resolved(method, depth)",
            )
        return self


# the AlignConfig fields whose None means "the method's default" (resolved once, by a RunConfig)
RESOLVED_FIELDS = (
    "encoder_depth",
    "projector",
    "kernel_size",
    "proj_coeff",
    "zscore",
    "zscore_gamma",
    "loss",
)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
class TrainConfig(Config):
    """Optimisation, objective, precision, checkpointing and logging of one training run.
    Defaults are the REPA/iREPA protocol (``paper_facts.md`` §(b))."""

    steps: int = Field(400_000, ge=1)  # optimizer steps to train
    global_batch: int = Field(256, ge=1)  # images per step, summed over all GPUs
    micro_batch: int | None = Field(None, ge=1)  # per-GPU forward size (grad accumulation)
    lr: float = Field(1e-4, gt=0.0)  # AdamW learning rate (constant)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    weight_decay: float = Field(0.0, ge=0.0)  # AdamW weight decay
    grad_clip: float = Field(1.0, ge=0.0)  # max grad norm (0 = no clipping; norm still logged)
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0)  # EMA of weights, updated every step
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)) after n updates, so a
    #   short run's EMA forgets the untrained init (timm ModelEmaV3 warmup); off = the papers
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast dtype (fp16 adds a GradScaler)
    tf32: bool = True  # allow TF32 matmuls/convs on Ampere+ (fp32 paths)
    compile: bool = False  # torch.compile the SiT (and projectors)
    path: str = "linear"  # interpolant (INTERPOLANTS): x_t = α_t x + σ_t ε
    prediction: Literal["velocity"] = "velocity"  # the network predicts v = α'_t x + σ'_t ε
    time_sampling: Literal["uniform", "lognormal"] = "uniform"  # how t ~ p(t) is drawn
    time_mean: float = -1.2  # lognormal: mean of log σ (EDM P_mean)
    time_std: float = Field(1.2, gt=0.0)  # lognormal: std of log σ (EDM P_std)
    ckpt_every: int = Field(10_000, ge=1)  # checkpoint every K steps (and at the end)
    keep_last: int = Field(2, ge=1)  # keep the newest N checkpoints ...
    keep_steps: list[int] = Field(default_factory=list)  # ... plus these steps, never deleted
    log_every: int = Field(1, ge=1)  # one train_log.jsonl row every N steps
    sync_every: int = Field(100, ge=1)  # steps between host syncs (log flush, NaN check)
    num_workers: int = Field(8, ge=0)  # data-loader worker processes per GPU
    deterministic: bool = False  # deterministic kernels (slower; exact-resume tests)
    cache_targets: bool = False  # memoise each training image's encoder targets (float16) the
    #   first time it is drawn: exact for deterministic encoders since images are not augmented;
    #   for small datasets (the CPU study), costs N x T x D x 2 bytes of memory
    vae: str = "stabilityai/sd-vae-ft-mse"  # latent space: diffusers AutoencoderKL repo id
    latent_scale: float = Field(0.18215, gt=0.0)  # latent space: z = (z_vae - bias) * scale
    latent_stats: str | None = None  # per-channel normalisation (overrides latent_scale): a
    #   .npz/.json with `mean`, `std` (z = (z_vae - mean) / std) or `scale`, `bias`, one value per
    #   latent channel (the released iREPA LDM code; format: harness.train.latent_stats)
    latents: Literal["auto", "cache", "online"] = "auto"  # cache: require `harness prepare`

    @field_validator("path")
    @classmethod
    def _known_path(cls, value: str) -> str:
        return check_name(value, INTERPOLANTS, "interpolant path") or value

    @field_validator("betas")
    @classmethod
    def _two_betas(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"betas must be two numbers in [0, 1), got {value}")
        return value

    @field_validator("latent_stats")
    @classmethod
    def _stats_file_type(cls, value: str | None) -> str | None:
        if value is not None and not value.endswith((".npz", ".json")):
            raise ValueError(
                f"latent_stats must be a .npz or .json file (never a pickle), got {value!r}"
            )
        return value

    @field_validator("keep_steps")
    @classmethod
    def _positive_steps(cls, value: list[int]) -> list[int]:
        if any(step < 1 for step in value):
            raise ValueError(f"keep_steps must be positive step numbers, got {value}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _batches_divide(self) -> TrainConfig:
        if self.micro_batch is not None and self.micro_batch > self.global_batch:
            raise ValueError(
                f"micro_batch ({self.micro_batch}) is larger than global_batch ({self.global_batch})"
            )
        return self
