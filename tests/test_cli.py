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
REPO = Path(__file__).resolve().parents[1]


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
    listed, examples = out.split("examples:", 1)
    for command in COMMANDS:
        assert f"    {command.name} " in listed
    lines = [line.strip() for line in examples.strip().splitlines()[:-1] if line.strip()]
    assert len(lines) >= 3 and all(line.startswith("harness ") for line in lines)
    assert all(len(line.split()) > 2 for line in lines)  # real commands, not bare names
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


def test_every_numeric_option_has_a_range(capsys) -> None:
    """No option takes a bare int or float: each has bounds (harness.cli.bounded), so a value
    out of range is a usage error naming the flag, not an internal error later."""
    bare = []
    for command in COMMANDS:
        parsers = [cli.build_parser()._subparsers._group_actions[0].choices[command.name]]
        while parsers:
            parser = parsers.pop()
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    parsers += action.choices.values()
                elif action.type in (int, float):
                    bare.append(f"{command.name} {'/'.join(action.option_strings)}")
    assert not bare


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["metrics", "encoders.yaml", "--images", "0"], "argument --images: must be >= 1, got 0"),
        (["metrics", "encoders.yaml", "--images", "-3"], "argument --images: must be >= 1, got -3"),
        (["query", "SELECT 1", "--max-rows", "-1"], "argument --max-rows: must be >= 0, got -1"),
        (["eval", "RUN", "--num-samples", "0"], "argument --num-samples: must be >= 1, got 0"),
        (["probe", "--noise-t", "1"], "argument --noise-t: must be < 1, got 1"),
        (["rank", "e.yaml", "--encoders", "x", "--level", "0"], "argument --level: must be > 0"),
        (["sample", "CKPT", "--out", "x.png", "--n", "ten"], "argument --n: expected an integer"),
    ],
)
def test_out_of_range_option_is_a_usage_error_naming_the_flag(argv, message, capsys) -> None:
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err


def test_validate_cross_checks_sweep_encoders_with_the_catalogue(tmp_path, capsys) -> None:
    sweep = tmp_path / "study.yaml"
    sweep.write_text("name: study\nmodels: [SiT-T/4]\nencoders: [pixels, dinov9-vit-z]\n")
    assert cli.main(["validate", str(sweep)]) == 0  # without a catalogue: names unchecked
    capsys.readouterr()
    assert cli.main(["validate", str(REPO / "encoders.yaml"), str(sweep)]) == 2
    out, err = capsys.readouterr()
    assert "ok: " in out and "encoders.yaml (catalogue)" in out
    assert f"invalid: {sweep}:3: encoders[1]: 'dinov9-vit-z' is not in the catalogue" in err
    assert "(did you mean 'dinov2-vit-" in err and "allowed: all, irepa27" in err


def test_validate_set_applies_to_the_sweep_not_the_catalogue(capsys) -> None:
    files = [str(REPO / "encoders.yaml"), str(REPO / "sweeps" / "irepa-sitxl-100k.yaml")]
    steps = ["--set", "train.steps=1000"]
    assert cli.main(["validate", *files, *steps, "--set", "eval.at_steps=[1000]"]) == 0
    capsys.readouterr()
    assert cli.main(["validate", *files, *steps]) == 2
    err = capsys.readouterr().err
    assert "irepa-sitxl-100k.yaml:66: eval.at_steps: [100000] are outside 1..train.steps" in err
    assert "<top>" not in err and "encoders.yaml" not in err


def test_sweep_encoders_option_outside_the_sweep_is_a_user_error(capsys) -> None:
    argv = ["sweep", str(REPO / "encoders.yaml"), "--sweep", str(REPO / "sweeps/cpu-study.yaml")]
    assert cli.main([*argv, "--encoders", "dino*", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--encoders 'dino*': selects none of sweep cpu-study's encoders" in err
    line = next(
        i
        for i, text in enumerate((REPO / "sweeps/cpu-study.yaml").read_text().splitlines(), 1)
        if text.startswith("encoders:")
    )
    assert f"cpu-study.yaml:{line}: encoders); allowed: " in err  # the file:line of the list
    assert "noise-p4, pixels-p4, efficientnet-lite0, inhouse-sup" in err


def test_bench_checks_the_encoder_name_before_building(capsys) -> None:
    argv = ["bench", "train", "--model", "SiT-XL/2", "--encoder", "dinov2-b"]
    assert cli.main([*argv, "--catalogue", str(REPO / "encoders.yaml")]) == 2
    assert "unknown encoder 'dinov2-b' (did you mean 'dinov2-vit-b'?)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("device", "flags", "expected"),
    [
        ("cpu", [], ("fp32", 2)),  # a 2-core CPU: fp32, one worker per core
        ("cuda", [], ("bf16", 4)),
        ("cpu", ["--precision", "bf16", "--num-workers", "3"], ("bf16", 3)),  # given: kept
    ],
)
def test_bench_defaults_follow_the_device(
    monkeypatch: pytest.MonkeyPatch, device: str, flags: list[str], expected: tuple[str, int]
) -> None:
    import harness.train.bench as bench
    from harness.errors import HarnessError

    seen = {}

    def setup(**kwargs):
        seen.update(kwargs)
        raise HarnessError("stop before building")

    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(bench, "bench_setup", setup)
    assert cli.main(["bench", "train", "--device", device, *flags]) == 2
    assert (seen["precision"], seen["num_workers"]) == expected


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


def test_sample_grid_upscales_small_images_to_visible_tiles(tmp_path: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from harness.cli.sample import _save_grid

    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    _save_grid(images, tmp_path / "grid.png")
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 + 2 * (96 + 2), 2 + 2 * (96 + 2), 3)  # 2 x 2 tiles of 96 px
    first = grid[2 : 2 + 96, 2 : 2 + 96]  # the first tile, nearest-neighbour x3
    assert np.array_equal(first, images[0].permute(1, 2, 0).numpy().repeat(3, 0).repeat(3, 1))
