"""``source: checkpoint``: a local weights file loaded into the equivalent timm architecture.

Entry fields: ``checkpoint`` (the file; relative paths resolve against ``$HARNESS_WEIGHTS``),
``url`` (where ``harness encoders fetch`` downloads it from), ``arch`` (timm architecture,
e.g. ``vit_base_patch16_224`` for MoCo v3 ViT-B/16) and ``params``:

* ``arch_kwargs``: extra ``timm.create_model`` kwargs for ``arch`` (e.g. ``depth``);
* ``state_dict_key``: the entry of the checkpoint dict that holds the weights (default: the
  first of ``state_dict``, ``model``, ``teacher``, ``target_encoder``, ``encoder`` present);
* ``select_prefix``: keep only keys with this prefix and strip it (MoCo v3:
  ``module.base_encoder.``);
* ``strip_prefixes``: prefixes removed from every key (default ``module.``, ``backbone.``);
* ``rename``: ``[[regex, replacement], ...]`` applied to keys in order;
* ``drop``: regexes of keys to discard (heads, decoders, projection MLPs);
* ``weights_only``: ``torch.load(weights_only=...)`` (default true; set false only for a
  trusted file that pickles extra objects such as argparse namespaces).

Remapped weights then go through timm's own ``checkpoint_filter_fn`` of the architecture (which
converts DINOv2/DINOv3/PE originals and resamples position embeddings) and are loaded strictly.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.config.encoders import EncoderSpec
from harness.encoders.base import Backbone, BuildRequest, seeded_init
from harness.encoders.timm_source import TimmBackbone, create_kwargs
from harness.encoders.weights import checkpoint_path, local_file, url_file, weights_digest
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


def load_into(model: nn.Module, state: dict[str, torch.Tensor], spec: EncoderSpec) -> None:
    """timm's checkpoint filter of the architecture, then a strict load with a clear error."""
    import importlib

    module = importlib.import_module(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
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


def build(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    model = build_arch(spec, request)
    if request.random_weights:
        return TimmBackbone(model, spec, "random-init:seed0")
    path = local_file(spec.checkpoint, spec.name, spec.url)
    load_into(model, remap_state_dict(read_state_dict(path, spec), spec.params), spec)
    return TimmBackbone(model, spec, f"file:{path.name}:{weights_digest(path)}")


def fetch(spec: EncoderSpec) -> str:
    """Download ``url`` to ``checkpoint`` when the entry has a url."""
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
