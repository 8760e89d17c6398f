"""Stages: the registered units of work a sweep is made of.

A :class:`Stage` declares its ``name``, ``version``, the slice of its config that determines its
result (``key_fields`` minus ``key_exclude``, dotted paths) and the upstream stages it ``needs``.
An instance's content key is :meth:`harness.keys.KeyFields.key` of (name, version, key slice,
upstream keys), so an instance is shared by every run, sweep and command that asks for the same
thing, and editing a setting re-plans exactly the instances whose key slice changed.

``run(ctx)`` is thin: it rebuilds typed configs from ``ctx.config`` and calls the domain code
(``harness.metrics``, ``harness.eval``, ``harness.train``), returning a :class:`StageOutcome`.
The runner (:class:`harness.launch.runner.StageJob`) writes ``state.json`` and ``result.json``.

This package imports without torch; stage modules import domain code inside ``run``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from harness.config.data import DataConfig, resolved_data
from harness.config.encoders import EncoderSpec
from harness.config.resources import STAGE_KINDS
from harness.errors import StageError
from harness.keys import KeyFields
from harness.paths import stage_dir
from harness.registry import Registry

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class StageOutcome:
    """What a stage's ``run`` returns."""

    payload: dict[str, Any]  # the result payload (docs/architecture.md, per stage)
    status: str = "done"  # done | diverged | failed | interrupted (saved, to be requeued)
    error: str | None = None  # diagnostic for diverged / failed


@dataclass
class StageContext:
    """Everything a stage's ``run`` gets inside its job."""

    root: Path  # results root (absolute)
    stage: str  # stage name
    key: str  # content key of this instance
    config: dict[str, Any]  # the instance's resolved config (spec.json "config")
    out_dir: Path  # the instance's artifact directory
    needs: dict[str, list[str]]  # upstream stage name -> keys
    device: str = "cpu"  # torch device for this task
    should_stop: Callable[[], bool] = field(default=lambda: False)  # preemption requested

    def upstream_dir(self, stage: str) -> Path:
        """The artifact directory of the single upstream instance of ``stage``."""
        keys = self.needs.get(stage, [])
        if len(keys) != 1:
            raise StageError(
                f"stage {self.stage} ({self.key}) expects one upstream '{stage}' stage, "
                f"found {len(keys)}"
            )
        return stage_dir(self.root, stage, keys[0])


@dataclass(frozen=True)
class Stage:
    """A registered kind of work."""

    name: str
    version: int  # bump when the stage's outputs change meaning: every key changes
    run: Callable[[StageContext], StageOutcome]
    key_fields: tuple[str, ...]  # dotted config paths that determine the result
    key_exclude: tuple[str, ...] = ()  # dotted paths inside those that do not (operational)
    needs: tuple[str, ...] = ()  # upstream stage names
    cooperative_stop: bool = False  # run() polls ctx.should_stop, saves, returns "interrupted"
    description: str = ""

    @property
    def key_fields_spec(self) -> KeyFields:
        """How this stage's instances are keyed (:mod:`harness.keys`)."""
        return KeyFields(self.name, self.version, self.key_fields, self.key_exclude)

    def key_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The slice of ``config`` that determines this stage's result."""
        return self.key_fields_spec.select(config)

    def key(self, config: Mapping[str, Any], upstream_keys: Iterable[str] = ()) -> str:
        """The content key: hash of name, version, key slice and upstream keys."""
        return self.key_fields_spec.key(config, upstream_keys)


STAGES: Registry[Stage] = Registry("stage")


def register(stage: Stage) -> Stage:
    """Register ``stage`` under its name, one of the stage kinds (``config.resources.STAGE_KINDS``)."""
    if stage.name not in STAGE_KINDS:
        raise StageError(
            f"stage {stage.name!r} is not a stage kind", hint=f"allowed: {', '.join(STAGE_KINDS)}"
        )
    STAGES.register(stage.name, stage)
    return stage


def encoder_measurement(
    spec: EncoderSpec, data: DataConfig, grid: tuple[int, int], random_weights: bool
) -> dict[str, Any]:
    """The config fields every encoder measurement (``spatial``, ``probe``) starts from."""
    return {
        "encoder": spec.name,
        "encoder_spec": spec.to_dict(),
        "data": resolved_data(data).to_dict(),
        "grid": list(grid),
        "random_weights": bool(random_weights),
    }


def typed(model: type[M], data: Any) -> M:
    """Rebuild a strict config from its JSON-dumped dict (JSON mode: lists become tuples)."""
    return model.model_validate_json(json.dumps(data))


# register the stages (each module is torch-free at import)
from harness.stages import eval, fid_ref, latents, probe, spatial, train  # noqa: E402

__all__ = [
    "STAGES",
    "Stage",
    "StageContext",
    "StageOutcome",
    "encoder_measurement",
    "eval",
    "fid_ref",
    "latents",
    "probe",
    "register",
    "spatial",
    "train",
    "typed",
]
