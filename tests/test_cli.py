"""The ``harness`` command line: help with examples, version, exit codes, global options."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import harness
import harness.cli as cli
from harness.errors import DataError

COMMANDS = cli.discover_commands()


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m harness ARGS`` in a fresh process (what a user's shell runs)."""
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HARNESS_PROGRESS": "0", **(env or {})},
    )


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return int(info.value.code or 0)


def test_top_level_help_lists_commands_with_examples(capsys) -> None:
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    for command in COMMANDS:
        assert f"harness {command.name}" in out
    for option in ("--results", "--verbose", "--debug", "--version"):
        assert option in out


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_subcommand_help_shows_examples(command: cli.Command, capsys) -> None:
    assert _exit_code([command.name, "--help"]) == 0
    out = capsys.readouterr().out
    examples = out.split("examples:", 1)
    assert len(examples) == 2, f"'harness {command.name} --help' has no examples: section"
    assert f"harness {command.name}" in examples[1]
    assert "--results" in out  # global options are accepted after the command too


def test_version(capsys) -> None:
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"harness {harness.__version__}"


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    assert cli.main([]) == 2
    assert "examples:" in capsys.readouterr().out


def test_unknown_option_is_a_usage_error(capsys) -> None:
    assert _exit_code(["validate", "x.yaml", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_user_error_exits_2_with_one_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    proc = _run_cli("validate", str(missing))
    assert proc.returncode == 2
    assert f"{missing}: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout

    proc = _run_cli("data", "preview", "--out", str(tmp_path / "g.png"), "--set", "resolution=8")
    assert proc.returncode == 2
    assert "resolution" in proc.stderr and "greater than or equal to 16" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "g.png").exists()


# ---------------------------------------------------------------------------------------------
# Exit codes and global options, with a stand-in command
# ---------------------------------------------------------------------------------------------
def _probe_command(seen: dict, state: dict) -> cli.Command:
    def run(args: argparse.Namespace) -> int:
        seen["results"] = os.environ.get("HARNESS_RESULTS")
        seen["verbose"] = args.verbose
        if state["error"] is not None:
            raise state["error"]
        return 0

    return cli.Command(
        name="probe",
        help="test command",
        examples="harness probe",
        add_arguments=lambda parser: None,
        run=run,
    )


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """Make ``probe`` the only command; returns (what it saw, state: set "error" to raise)."""
    seen: dict = {}
    state: dict = {"error": None}
    monkeypatch.setattr(cli, "discover_commands", lambda: [_probe_command(seen, state)])
    monkeypatch.setenv("HARNESS_RESULTS", "unchanged")  # restored after the test
    return seen, state


@pytest.mark.parametrize(
    "argv",
    [
        ["--results", "/tmp/r1", "probe"],
        ["probe", "--results", "/tmp/r1"],
        ["-v", "probe", "--results=/tmp/r1"],
    ],
)
def test_global_results_option_before_or_after_the_command(probe, argv) -> None:
    seen, _ = probe
    assert cli.main(argv) == 0
    assert seen["results"] == "/tmp/r1"


def test_without_results_option_the_environment_wins(probe) -> None:
    seen, _ = probe
    assert cli.main(["probe", "-vv"]) == 0
    assert seen["results"] == "unchanged" and seen["verbose"] == 2


def test_harness_error_exit_2_without_traceback(probe, capsys) -> None:
    _, state = probe
    state["error"] = DataError("data.root '/x' is not a directory", hint="point it at ImageNet")
    assert cli.main(["probe"]) == 2
    err = capsys.readouterr().err
    assert err == "error: data.root '/x' is not a directory\nhint: point it at ImageNet\n"


def test_internal_error_exit_1_and_debug_shows_traceback(probe, capsys) -> None:
    _, state = probe
    state["error"] = ZeroDivisionError("division by zero")
    assert cli.main(["probe"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: division by zero" in err
    assert "--debug" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["probe", "--debug"])


def test_internal_error_in_a_real_process_exits_1(tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text(
        "import sys, harness.cli as cli\n"
        "def run(args): raise KeyError('boom')\n"
        "cmd = cli.Command(name='boom', help='h', examples='harness boom',"
        " add_arguments=lambda p: None, run=run)\n"
        "cli.discover_commands = lambda: [cmd]\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    plain = subprocess.run(
        [sys.executable, str(script), "boom"], capture_output=True, text=True, timeout=60
    )
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    debug = subprocess.run(
        [sys.executable, str(script), "boom", "--debug"], capture_output=True, text=True, timeout=60
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "KeyError" in debug.stderr


def test_data_preview_writes_grid_overlay_and_stats(tmp_path: Path) -> None:
    out = tmp_path / "preview" / "grid.png"
    proc = _run_cli(
        "data", "preview", "--out", str(out), "--n", "9", "--split", "val",
        "--set", "num_classes=3", "--set", "val_images=20",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "classes     3 " in proc.stdout
    stats = json.loads((tmp_path / "preview" / "grid.json").read_text())
    assert stats["n_images"] == 20 and stats["num_classes"] == 3 and stats["split"] == "val"
    assert stats["preview"]["n"] == 9 and stats["preview"]["labels"] == [0, 1, 2] * 3
    assert 0 < stats["preview"]["foreground_fraction"]["mean"] < 1
    grid, overlay = Image.open(out), Image.open(tmp_path / "preview" / "grid_masks.png")
    assert grid.size == overlay.size == (3 * 96, 3 * (96 + 12))  # 3x3 tiles of 32 px x3
    assert grid.tobytes() != overlay.tobytes()
