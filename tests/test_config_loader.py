"""harness.config.loader: YAML -> typed frozen configs, with errors naming file, line, key path,
the bad value and the allowed values. Table-driven over a local model, DataConfig and
SamplerConfig (the catalogue and sweep schemas add their rows in their own tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, ValidationError

from harness.config.base import Config
from harness.config.data import DataConfig
from harness.config.loader import load_yaml, parse_override, validate
from harness.config.sampler import SamplerConfig
from harness.errors import ConfigError


class Inner(Config):
    """A nested section."""

    lr: float = Field(1e-3, gt=0)  # learning rate
    steps: int = Field(10, ge=1, le=1000)  # optimiser steps
    mode: Literal["sde", "ode"] = "sde"  # sampler kind


class Model(Config):
    """A small local config exercising nesting, lists and enums."""

    name: str = "x"  # run name
    train: Inner = Inner()  # nested section
    methods: list[Literal["repa", "irepa", "none"]] = Field(
        default_factory=lambda: ["repa"]
    )  # aligners


@dataclass(frozen=True)
class Case:
    id: str
    text: str  # the YAML file
    fragments: tuple[str, ...]  # must all appear in the error; "{f}" is the file path
    model: type[Config] = Model
    overrides: tuple[str, ...] = field(default=())


ERROR_CASES = [
    Case(
        "unknown key",
        "nmae: x\n",
        (
            "{f}:1:",
            "nmae",
            "unknown key",
            "did you mean 'name'",
            "allowed keys: methods, name, train",
        ),
    ),
    Case(
        "unknown nested key",
        "name: a\ntrain:\n  lrr: 0.1\n",
        ("{f}:3:", "train.lrr", "did you mean 'lr'", "allowed keys: lr, mode, steps"),
    ),
    Case("wrong type", "train:\n  steps: many\n", ("{f}:2:", "train.steps", "integer", "'many'")),
    Case("float for int", "train:\n  steps: 1.5\n", ("{f}:2:", "train.steps", "integer", "1.5")),
    Case("bool for int", "train:\n  steps: true\n", ("{f}:2:", "train.steps", "integer", "True")),
    Case("mapping for str", "name:\n  first: a\n", ("{f}:1:", "name", "string", "{'first': 'a'}")),
    Case("scalar for section", "train: 5\n", ("{f}:1:", "train", "5")),
    Case(
        "bad enum",
        "train:\n  mode: sdee\n",
        (
            "{f}:2:",
            "train.mode",
            "'sdee' is not allowed",
            "did you mean 'sde'",
            "allowed: ode, sde",
        ),
    ),
    Case(
        "bad enum in a list",
        "methods:\n  - repa\n  - irepa2\n",
        ("{f}:3:", "methods[1]", "'irepa2'", "did you mean 'irepa'", "allowed: irepa, none, repa"),
    ),
    Case(
        "below range",
        "train:\n  steps: 0\n",
        ("{f}:2:", "train.steps", ">= 1|greater than or equal to 1", "0"),
    ),
    Case(
        "above range",
        "train:\n  steps: 5000\n",
        ("{f}:2:", "train.steps", "less than or equal to 1000", "5000"),
    ),
    Case(
        "not positive", "train:\n  lr: -1e-4\n", ("{f}:2:", "train.lr", "greater than 0", "-0.0001")
    ),
    Case(
        "unclosed list",
        "train: [1, 2\n",
        ("{f}:1:8:", "YAML syntax error", "[ list is never closed", "the file ends first"),
    ),
    Case(
        "unclosed quote",
        'name: a\ndescription: "runs\ntrain:\n  steps: 2\n',
        ("{f}:2:14:", "YAML syntax error", "quoted string is never closed"),
    ),
    Case("bad indentation", "train:\n  steps: 1\n steps: 2\n", ("{f}:3:2:", "YAML syntax error")),
    Case("tab indentation", "train:\n\tsteps: 1\n", ("{f}:2:1:", "YAML syntax error")),
    Case("empty file", "", ("{f}:1:", "file is empty")),
    Case("whitespace only", "\n   \n", ("{f}:1:", "file is empty")),
    Case("comments only", "# nothing\n# here\n", ("{f}:1:", "no YAML document")),
    Case("top-level list", "- a\n- b\n", ("{f}:1:", "top level must be a mapping", "list")),
    Case("top-level scalar", "hello\n", ("{f}:1:", "top level must be a mapping", "str")),
    Case("duplicate key", "name: a\nname: b\n", ("{f}:2:", "name", "duplicate key")),
    Case(
        "duplicate nested key",
        "train:\n  lr: 1\n  lr: 2\n",
        ("{f}:3:", "train.lr", "duplicate key"),
    ),
    Case("non-string key", "1: a\n", ("{f}:1:", "1", "unknown key")),
    Case(
        "--set wrong type",
        "train:\n  steps: 5\n",
        ("--set train.steps=abc: train.steps:", "integer", "'abc'"),
        overrides=("train.steps=abc",),
    ),
    Case(
        "--set unknown key",
        "train:\n  steps: 5\n",
        (
            "--set train.stepz=1: train.stepz:",
            "did you mean 'steps'",
            "allowed keys: lr, mode, steps",
        ),
        overrides=("train.stepz=1",),
    ),
    Case(
        "--set unknown section",
        "# a comment\n\nname: a\ntrain:\n  steps: 5\n",
        ("--set nonexistent.key=1: nonexistent: unknown key", "allowed keys: methods, name, train"),
        overrides=("nonexistent.key=1",),
    ),
    Case(
        "--set without =",
        "name: a\n",
        ("--set 'train.steps'", "KEY.PATH=VALUE"),
        overrides=("train.steps",),
    ),
    Case(
        "--set empty key",
        "name: a\n",
        ("--set 'train..lr=1'", "empty key"),
        overrides=("train..lr=1",),
    ),
    Case(
        "data: resolution range",
        "resolution: 8\n",
        ("{f}:1:", "resolution", "greater than or equal to 16", "8"),
        model=DataConfig,
    ),
    Case(
        "data: bad source",
        "seed: 1\nsource: imagenet\n",
        ("{f}:2:", "source", "unknown data source 'imagenet'", "allowed: folder, generated"),
        model=DataConfig,
    ),
    Case(
        "data: folder without root",
        "source: folder\n",
        ("{f}:1:", "needs 'root'"),
        model=DataConfig,
    ),
    Case(
        "data: misspelt key",
        "num_class: 10\n",
        ("{f}:1:", "num_class", "did you mean 'num_classes'"),
        model=DataConfig,
    ),
    Case(
        "sampler: bad mode",
        "mode: heun\n",
        ("{f}:1:", "mode", "'heun' is not allowed", "allowed: ode, sde"),
        model=SamplerConfig,
    ),
    Case(
        "sampler: cfg below 1",
        "cfg_scale: 1e-4\n",
        ("{f}:1:", "cfg_scale", "greater than or equal to 1", "0.0001"),
        model=SamplerConfig,
    ),
    Case(
        "sampler: interval order",
        "guidance_low: 0.8\nguidance_high: 0.2\n",
        ("{f}:1:", "guidance_low (0.8) must be <= guidance_high (0.2)"),
        model=SamplerConfig,
    ),
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_error_names_file_line_key_value_and_allowed(case: Case, tmp_path: Path) -> None:
    path = _write(tmp_path, case.text)
    with pytest.raises(ConfigError) as info:
        validate(case.model, load_yaml(path), case.overrides)
    message = str(info.value)
    for fragment in case.fragments:
        options = fragment.replace("{f}", str(path)).split("|")
        assert any(option in message for option in options), f"{fragment!r} not in:\n{message}"
    assert "Traceback" not in message and "pydantic" not in message.lower()


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "nmae: x\ntrain:\n  steps: 0\n  mode: fast\n")
    with pytest.raises(ConfigError) as info:
        validate(Model, load_yaml(path))
    lines = str(info.value).splitlines()
    assert sorted(line.split(": ", 2)[:2] for line in lines) == [
        [f"{path}:1", "nmae"],
        [f"{path}:3", "train.steps"],
        [f"{path}:4", "train.mode"],
    ]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope.yaml'}: no such file"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_yaml(tmp_path)


def test_precedence_defaults_yaml_set(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  steps: 5\n  mode: ode\nmethods: [repa, irepa]\n")
    cfg = validate(Model, load_yaml(path), ["train.steps=7", "train.lr=3e-4", "methods.1=none"])
    assert cfg.train.steps == 7  # --set beats YAML
    assert cfg.train.mode == "ode"  # YAML beats the default
    assert cfg.name == "x"  # the default
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # --set adds a key
    assert cfg.methods == ["repa", "none"]  # --set into a list element


@pytest.mark.parametrize("text", ["1e-4", "1E-4", "+1e-4", "1.0e-4", "0.0001"])
def test_scientific_notation_is_a_float(text: str, tmp_path: Path) -> None:
    cfg = validate(Model, load_yaml(_write(tmp_path, f"train:\n  lr: {text}\n")))
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert parse_override(f"train.lr={text}") == (("train", "lr"), pytest.approx(1e-4))


def test_configs_are_frozen_and_strict() -> None:
    cfg = DataConfig()
    with pytest.raises(ValidationError):
        cfg.resolution = 64  # type: ignore[misc]
    with pytest.raises(ValidationError):
        DataConfig(resolution="64")  # type: ignore[arg-type]  # strict: no str -> int coercion
    assert SamplerConfig().to_dict()["num_steps"] == 250


def test_model_validator_error_points_at_its_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "mode: sde\nguidance_low: 0.8\nguidance_high: 0.2\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: guidance_low"):
        validate(SamplerConfig, load_yaml(path))


# ---------------------------------------------------------------------------------------------
# `harness validate` on malformed files: exit 2, file:line, never a traceback
# ---------------------------------------------------------------------------------------------
BAD_FILES = {
    "empty.yaml": ("", ":1: file is empty"),
    "comments.yaml": ("# only a comment\n", ":1: file holds no YAML document"),
    "syntax.yaml": ("data: [1, 2\n", ":1:7: YAML syntax error"),
    "list.yaml": ("- encoders\n", ":1: top level must be a mapping"),
    "duplicate.yaml": ("name: a\nname: b\n", ":2: name: duplicate key"),
    "tabs.yaml": ("data:\n\tseed: 1\n", ":2:1: YAML syntax error"),
}


def test_validate_cli_rejects_malformed_files(tmp_path: Path) -> None:
    paths = []
    for name, (text, _) in BAD_FILES.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    paths.append(str(tmp_path / "missing.yaml"))
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "validate", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HARNESS_PROGRESS": "0"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    for name, (_, expected) in BAD_FILES.items():
        assert f"{tmp_path / name}{expected}" in proc.stderr
    assert f"{tmp_path / 'missing.yaml'}: no such file" in proc.stderr
    assert proc.stdout == ""  # nothing was valid


def test_a_sweep_file_given_to_train_is_named_as_one(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main
    from harness.config.run import EXAMPLE_RUN, RunConfig, load_run

    repo = Path(__file__).resolve().parents[1]
    sweep = repo / "sweeps" / "cpu-study.yaml"
    assert main(["train", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "this is a sweep file" in err
    assert f"use `harness sweep encoders.yaml --sweep {sweep}`" in err
    assert "unknown key" not in err and EXAMPLE_RUN in err
    assert isinstance(load_run(repo / EXAMPLE_RUN), RunConfig)  # the example is a valid run


def test_one_sweep_key_in_a_run_config_is_an_unknown_key(tmp_path: Path) -> None:
    from harness.config.run import load_run

    run = tmp_path / "run.yaml"
    run.write_text("method: none\nseeds: [0]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"run.yaml:2: seeds: unknown key \(did you mean 'seed'"):
        load_run(run)
