"""Feature extractors for the generation metrics, built through torch-fidelity's registry.

Each extractor is a torch-fidelity ``FeatureExtractorBase`` (uint8 (B, 3, H, W) in, a tuple of
float32 feature tensors out) created by ``torch_fidelity.utils.create_feature_extractor``, so
the harness runs exactly torch-fidelity's preprocessing and networks. What the harness adds:

* offline weights: Inception from ``feature_extractor_weights_path`` or the torch.hub cache,
  DINOv2 from the torch.hub cache; a missing file is a :class:`~harness.errors.WeightsError`
  that says where to put it (never a download attempt);
* random-weights extractors for tests (same architecture, seeded init, no file access),
  recorded as ``<name>(random-weights)`` and ``substitute: true`` so they never pass for a real
  FID;
* the substitute CNN (``harness-cnn-<key>``, see :mod:`harness.eval.substitute`);
* a fixed batch size, ``torch.no_grad`` and TF32 off during extraction.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from harness.config.eval import EXTRACTORS
from harness.errors import StageError, WeightsError
from harness.io import file_hash
from harness.progress import progress

if TYPE_CHECKING:
    import torch
    from torch_fidelity import FeatureExtractorBase

RANDOM_WEIGHTS = "random-init"
RANDOM_SEED = 0  # seed of every random-weights extractor (same weights in every process)

# torch.hub checkpoint file names of torch-fidelity's DINOv2 entries (facebookresearch/dinov2)
_DINOV2_HUB = {
    "dinov2-vit-s-14": ("dinov2_vits14", "vit_small_patch14_dinov2"),
    "dinov2-vit-b-14": ("dinov2_vitb14", "vit_base_patch14_dinov2"),
    "dinov2-vit-l-14": ("dinov2_vitl14", "vit_large_patch14_dinov2"),
    "dinov2-vit-g-14": ("dinov2_vitg14", "vit_giant_patch14_dinov2"),
}
_DINOV2_REPO_DIR = "facebookresearch_dinov2_main"


@dataclass(frozen=True)
class ExtractorInfo:
    """Identity of a feature extractor, recorded with every number it produced."""

    name: str  # recorded name, e.g. "inception-v3-compat" or "inception-v3-compat(random-weights)"
    fidelity_name: str  # torch-fidelity registry name it is built from
    weights: str  # sha256 prefix of the weight file, or "random-init"
    weights_path: str | None  # file handed to torch-fidelity (None: torch.hub cache / random)
    substitute: bool  # True unless these are the real published weights
    fid_layer: str  # feature used for FID / KID / PR
    isc_layer: str | None  # logits used for IS (None: the extractor has no classifier)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_file(
        cls, name: str, path: Path, *, substitute: bool, fid_layer: str, isc_layer: str | None
    ) -> ExtractorInfo:
        """An extractor whose weights are the file ``path`` (hashed; registry name = ``name``)."""
        return cls(name, name, file_hash(path), str(path), substitute, fid_layer, isc_layer)


# ---------------------------------------------------------------------------------------------
# Resolution: name + options -> ExtractorInfo (checks weights before any work)
# ---------------------------------------------------------------------------------------------
def resolve_extractor(
    name: str,
    *,
    weights_path: str | None = None,
    random_weights: bool = False,
    feature_layer: str | None = None,
) -> ExtractorInfo:
    """Resolve an extractor name (``inception-v3-compat``, ``dinov2-vit-b-14``, ...) to its
    recorded identity, checking that its weights are available offline.

    Args:
        name: extractor name from :data:`harness.config.eval.EXTRACTORS` (not
            ``harness-cnn``: see :func:`harness.eval.substitute.substitute_info`).
        weights_path: Inception weights file (None: the torch.hub cache).
        random_weights: build the architecture with a seeded random init (tests only).
        feature_layer: FID layer override (None: the extractor's default).

    Raises:
        WeightsError: real weights requested but not found (the message says where to put them).
        RegistryError: unknown name.
    """
    info = EXTRACTORS.get(name)(name, weights_path, random_weights)
    return with_feature_layer(info, feature_layer)


def with_feature_layer(info: ExtractorInfo, feature_layer: str | None) -> ExtractorInfo:
    """Return ``info`` with its FID layer overridden (validated against the provided features)."""
    if feature_layer is None or feature_layer == info.fid_layer:
        return info
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    provided = FEATURE_EXTRACTORS_REGISTRY[info.fidelity_name].get_provided_features_list()
    if feature_layer not in provided:
        raise StageError(
            f"feature_layer {feature_layer!r} is not provided by extractor {info.name}",
            hint=f"allowed: {', '.join(provided)}",
        )
    return ExtractorInfo(**{**info.to_dict(), "fid_layer": feature_layer})


def resolve_inception(name: str, weights_path: str | None, random_weights: bool) -> ExtractorInfo:
    _register_random_extractors()
    if random_weights:
        return _random_info(name, "2048", "logits_unbiased")
    path = inception_weights_path(weights_path)
    return ExtractorInfo.from_file(
        name, path, substitute=False, fid_layer="2048", isc_layer="logits_unbiased"
    )


def resolve_dinov2(name: str, weights_path: str | None, random_weights: bool) -> ExtractorInfo:
    _register_random_extractors()
    if weights_path is not None:
        raise WeightsError(
            f"{name}: torch-fidelity loads DINOv2 only from the torch.hub cache, "
            "not from feature_extractor_weights_path"
        )
    if random_weights:
        return _random_info(name, "dinov2", None)
    checkpoint = dinov2_checkpoint_path(name)
    return ExtractorInfo(
        name=name,
        fidelity_name=name,
        weights=file_hash(checkpoint),
        weights_path=None,
        substitute=False,
        fid_layer="dinov2",
        isc_layer=None,
    )


def resolve_substitute(name: str, weights_path: str | None, random_weights: bool) -> ExtractorInfo:
    """``harness-cnn`` has no fixed weights: it is trained on the dataset by the fid_ref stage."""
    raise StageError(
        f"extractor {name!r} is trained on the dataset: its identity comes from "
        "harness.eval.substitute.substitute_info, not resolve_extractor"
    )


def _random_info(name: str, fid_layer: str, isc_layer: str | None) -> ExtractorInfo:
    """A random-weights variant: recorded as ``<name>(random-weights)``, always a substitute."""
    return ExtractorInfo(
        name=f"{name}(random-weights)",
        fidelity_name=f"harness-{name}-random",
        weights=RANDOM_WEIGHTS,
        weights_path=None,
        substitute=True,
        fid_layer=fid_layer,
        isc_layer=isc_layer,
    )


def inception_weights_path(configured: str | None) -> Path:
    """The Inception weight file: ``configured`` or torch-fidelity's torch.hub cache entry.

    Raises:
        WeightsError: the file is missing; the hint gives the URL and the destination.
    """
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    if configured is not None:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"feature_extractor_weights_path {configured}: no such file",
                hint=f"download {URL_INCEPTION_V3} on a machine with internet and point "
                "eval.feature_extractor_weights_path at it",
            )
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(URL_INCEPTION_V3).path).name
    if not path.is_file():
        raise WeightsError(
            f"Inception weights for FID are not in the torch.hub cache ({path})",
            hint=f"on a machine with internet run: curl -L --create-dirs -o {path} "
            f"{URL_INCEPTION_V3}  (TORCH_HOME={Path(torch.hub.get_dir()).parent} decides the "
            "cache), or set eval.feature_extractor_weights_path to a copy of that file",
        )
    return path


def dinov2_checkpoint_path(name: str) -> Path:
    """The DINOv2 checkpoint in the torch.hub cache (the hub repo code must be cached too).

    Raises:
        WeightsError: the repo or the checkpoint is missing; the hint says how to fill the cache.
    """
    import torch

    entry, _ = _DINOV2_HUB[name]
    hub = Path(torch.hub.get_dir())
    checkpoint = hub / "checkpoints" / f"{entry}_pretrain.pth"
    repo = hub / _DINOV2_REPO_DIR
    if not (repo / "hubconf.py").is_file() or not checkpoint.is_file():
        raise WeightsError(
            f"{name}: DINOv2 is not in the torch.hub cache (need {repo}/ and {checkpoint})",
            hint='on a machine with internet and the same TORCH_HOME run: python -c "import '
            f"torch; torch.hub.load('facebookresearch/dinov2', '{entry}')\", then copy "
            f"{hub} to the cluster; or set metrics.fd_dinov2: false",
        )
    return checkpoint


# ---------------------------------------------------------------------------------------------
# Random-weights variants (tests only): torch-fidelity classes, seeded init, no file access
# ---------------------------------------------------------------------------------------------
def _register_random_extractors() -> None:
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if "harness-inception-v3-compat-random" in FEATURE_EXTRACTORS_REGISTRY:
        return
    inception_cls, dinov2_cls = _random_extractor_classes()
    register_feature_extractor("harness-inception-v3-compat-random", inception_cls)
    for dino in _DINOV2_HUB:
        register_feature_extractor(f"harness-{dino}-random", dinov2_cls)


def _random_extractor_classes() -> tuple[type, type]:
    import torch
    from torch.nn.modules.module import _IncompatibleKeys
    from torch_fidelity import FeatureExtractorBase, FeatureExtractorDinoV2
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class InceptionV3RandomWeights(FeatureExtractorInceptionV3):
        """``inception-v3-compat`` with a seeded random init instead of the trained weights.

        torch-fidelity's constructor always loads a state dict; it is handed an empty one, and
        ``load_state_dict`` keeps the random init for exactly that empty dict.
        """

        def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
            kwargs.pop("feature_extractor_weights_path", None)
            empty = io.BytesIO()
            torch.save({}, empty)
            empty.seek(0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                super().__init__(
                    name, features_list, feature_extractor_weights_path=empty, **kwargs
                )

        def load_state_dict(
            self, state_dict: Any, strict: bool = True, assign: bool = False
        ) -> Any:
            if state_dict:
                return super().load_state_dict(state_dict, strict=strict, assign=assign)
            return _IncompatibleKeys([], [])

    class DinoV2RandomWeights(FeatureExtractorDinoV2):
        """torch-fidelity's DINOv2 extractor (same preprocessing and CLS output) around timm's
        architecture of the same DINOv2 size, seeded random init, built without the hub."""

        def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
            import timm

            FeatureExtractorBase.__init__(self, name, features_list)
            self.feature_extractor_internal_dtype = torch.float32
            dino = name.removeprefix("harness-").removesuffix("-random")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                self.model = timm.create_model(
                    _DINOV2_HUB[dino][1], pretrained=False, img_size=224, num_classes=0
                )
            self.requires_grad_(False)
            self.eval()

    return InceptionV3RandomWeights, DinoV2RandomWeights


# ---------------------------------------------------------------------------------------------
# Construction and extraction
# ---------------------------------------------------------------------------------------------
def build_extractor(
    info: ExtractorInfo, layers: Sequence[str], device: str | torch.device = "cpu"
) -> FeatureExtractorBase:
    """Create the torch-fidelity extractor for ``info`` providing ``layers``, on ``device``.

    Raises:
        WeightsError: the weight file cannot be loaded (corrupt, wrong format).
    """
    from torch_fidelity.utils import create_feature_extractor

    _register_random_extractors()
    try:
        extractor = create_feature_extractor(
            info.fidelity_name,
            list(dict.fromkeys(layers)),
            cuda=False,
            feature_extractor_weights_path=info.weights_path,
            verbose=False,
        )
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise WeightsError(
            f"{info.name}: cannot load weights {info.weights_path or '(torch.hub cache)'}: {exc}",
            hint="the file is corrupt or not a torch-fidelity checkpoint; fetch it again",
        ) from exc
    return extractor.to(device)


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Full-precision float32 matmuls and convolutions inside the block (restored after)."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.set_float32_matmul_precision(precision)


def rebatch(chunks: Iterable[Any], batch_size: int) -> Iterator[torch.Tensor]:
    """Re-cut a stream of uint8 image chunks ((n, 3, H, W) arrays) into fixed-size batches.

    The batch composition then depends only on the global image order, never on how the images
    were stored (shards, resumes), so features are bit-identical across resumes.
    """
    import torch

    pending: list[torch.Tensor] = []
    count = 0
    for chunk in chunks:
        tensor = torch.as_tensor(chunk)
        pending.append(tensor)
        count += tensor.shape[0]
        while count >= batch_size:
            joined = torch.cat(pending)
            yield joined[:batch_size]
            rest = joined[batch_size:]
            pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]
    if count:
        yield torch.cat(pending)


def iter_features(
    extractors: Sequence[FeatureExtractorBase],
    batches: Iterable[torch.Tensor],
    *,
    total: int,
    device: str | torch.device = "cpu",
    desc: str = "features",
) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Run every extractor on every batch (one pass over the images), TF32 off.

    Args:
        extractors: torch-fidelity extractors (from :func:`build_extractor`).
        batches: uint8 (B, 3, H, W) batches of a fixed size (see :func:`rebatch`).
        total: number of images, for the progress bar.
        device: where the batches go.
        desc: progress-bar label.

    Yields:
        Per batch, one ``{feature name: float32 (B, D) tensor on device}`` per extractor.
    """
    import torch

    bar = progress(total=total, desc=desc, unit="img")
    try:
        for batch in batches:
            if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
                raise StageError(
                    f"{desc}: images must be uint8 (B, 3, H, W), got {batch.dtype} {tuple(batch.shape)}"
                )
            batch = batch.to(device, non_blocking=True)
            with tf32_disabled(), torch.no_grad():
                out = [
                    {k: v.float() for k, v in ex.convert_features_tuple_to_dict(ex(batch)).items()}
                    for ex in extractors
                ]
            bar.update(batch.shape[0])
            yield out
    finally:
        bar.close()
