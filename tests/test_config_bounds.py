"""Config parsing is bounded: a YAML alias bomb, too many aliases or a file over 1 MiB is a user
error (exit 2, naming the file and the reason) within a second, not a minute of CPU."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import loader
from harness.config.loader import load_yaml, parse_override, parse_yaml
from harness.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ...: width**levels nodes once expanded."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['x'] * width)}]"]
    for prev, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_fails_fast_in_harness_validate(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "harness", "validate", str(bomb)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "HARNESS_PROGRESS": "0"},
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 2, out.stderr
    assert f"{bomb}:" in out.stderr and "alias bomb" in out.stderr
    assert f"more than {loader.MAX_NODES:,} nodes" in out.stderr
    assert elapsed < 5, f"harness validate took {elapsed:.1f} s"  # generous: < 1 s on a laptop


def test_alias_bomb_names_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert main(["validate", str(bomb)]) == 2
    err = capsys.readouterr().err
    # the first top-level key whose expansion crosses the limit, with its line
    found = re.search(rf"{re.escape(str(bomb))}:(\d): ([a-i]): the YAML expands to more than", err)
    assert found, err
    assert int(found[1]) == ord(found[2]) - ord("a") + 1 and found[2] != "a"


def test_too_many_aliases_are_refused() -> None:
    n = loader.MAX_ALIASES + 1
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * n) + "]\n"
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "many.yaml")
    assert info.value.message.startswith("many.yaml:2: more than 1,000 YAML aliases")


def test_file_over_one_mebibyte_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# padding\n" * (loader.MAX_FILE_BYTES // 10 + 1))
    assert big.stat().st_size > 1 << 20
    assert main(["validate", str(big)]) == 2
    err = capsys.readouterr().err
    assert f"{big}: {big.stat().st_size:,} bytes; config files are limited to 1,048,576" in err
    with pytest.raises(ConfigError, match="config files are limited"):
        parse_yaml("x: " + "y" * loader.MAX_FILE_BYTES, "text")


def test_alias_bomb_in_a_set_value_is_refused() -> None:
    levels = ["&a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in itertools.pairwise("abcdefghi"):
        levels.append(f"&{name} [{', '.join([f'*{prev}'] * 10)}]")
    with pytest.raises(ConfigError, match="alias bomb"):
        parse_override(f"train.x=[{', '.join(levels)}]")


def test_configs_with_a_few_aliases_and_merge_keys_still_load(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "base: &base {lr: 0.001, betas: [0.9, 0.999]}\n"
        "train:\n"
        "  <<: *base\n"
        "  steps: 10\n"
        "again: *base\n"
        "seeds: &seeds [0, 1]\n"
        "more: [*seeds, *seeds]\n"
    )
    doc = load_yaml(path)
    assert doc.data["train"] == {"lr": 0.001, "betas": [0.9, 0.999], "steps": 10}
    assert doc.data["again"] == {"lr": 0.001, "betas": [0.9, 0.999]}
    assert doc.data["more"] == [[0, 1], [0, 1]]
    doc.data["more"][0].append(2)  # each use of an alias is its own copy
    assert doc.data["more"][1] == [0, 1] and doc.where(("train", "steps")) == f"{path}:4"
    assert parse_override("seeds=[1, 2]") == (("seeds",), [1, 2])
    for shipped in [REPO / "encoders.yaml", *sorted((REPO / "sweeps").glob("*.yaml"))]:
        load_yaml(shipped)  # the shipped configs stay well inside the limits
