"""Training and alignment configuration, and the (torch-free) registries of alignment methods
and projector kinds.

A *method* is declarative: a :class:`MethodSpec` names the default projector, λ, target
normalisation and loss. The torch pieces it names live in ``harness.models.projectors``
(projectors) and ``harness.train.align`` (target normalisations, losses), so a variant such as
another projector or loss is one registry entry there plus one ``MethodSpec`` here, never a branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from harness.config.base import Config
from harness.config.model import check_name
from harness.registry import Registry


# ---------------------------------------------------------------------------------------------
# Alignment methods and projector kinds
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """Defaults of one alignment method (what ``align.*: null`` resolves to)."""

    uses_encoder: bool  # False: plain flow matching, no targets (method "none")
    projector: str = "mlp"  # projector kind (PROJECTOR_KINDS)
    proj_coeff: float = 0.5  # λ, weight of the alignment loss
    zscore: bool = False  # spatially z-score the target tokens
    zscore_gamma: float = 0.6  # γ of the z-score (mean-subtraction strength)
    kernel_size: int = 3  # conv projector kernel
    loss: str = "cosine"  # alignment loss (harness.train.align.ALIGN_LOSSES)
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


@dataclass(frozen=True)
class ProjectorKind:
    """What a projector needs from the config (its torch module is in harness.models.projectors)."""

    spatial: bool  # operates on the token grid (needs h*w == T), e.g. a conv
    description: str


PROJECTOR_KINDS: Registry[ProjectorKind] = Registry("projector")
PROJECTOR_KINDS.register("mlp", ProjectorKind(False, "3-layer MLP, SiLU, width projector_dim"))
PROJECTOR_KINDS.register("linear", ProjectorKind(False, "one linear layer per token"))
PROJECTOR_KINDS.register(
    "conv", ProjectorKind(True, "k x k conv over the token grid (padding k//2)")
)

ALIGN_LOSS_NAMES = ("cosine",)  # implemented in harness.train.align.ALIGN_LOSSES


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
        return check_name(value, PROJECTOR_KINDS, "projector")

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int | None) -> int | None:
        if value is not None and value % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-size padding), got {value}")
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str | None) -> str | None:
        return check_name(value, ALIGN_LOSS_NAMES, "alignment loss")

    def resolved(self, method: str, default_depth: int) -> AlignConfig:
        """A copy with every ``None`` replaced by the method's default."""
        spec = METHODS.get(method)
        defaults = {
            "encoder_depth": default_depth,
            "projector": spec.projector,
            "kernel_size": spec.kernel_size,
            "proj_coeff": spec.proj_coeff,
            "zscore": spec.zscore,
            "zscore_gamma": spec.zscore_gamma,
            "loss": spec.loss,
        }
        values = self.model_dump()
        for key, default in defaults.items():
            if values[key] is None:
                values[key] = default
        return AlignConfig.model_validate(values)


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
    path: Literal["linear", "cosine"] = "linear"  # interpolant: x_t = α_t x + σ_t ε
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
