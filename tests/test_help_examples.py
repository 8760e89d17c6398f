"""Every example runs: each line under ``examples:`` of ``harness --help`` and of every
command's ``--help``, and each example of the README's command table.

The examples run in-process (``harness.cli.main``), offline (``HF_HUB_OFFLINE=1``), in a
scratch directory that links ``encoders.yaml``, ``sweeps/`` and ``analysis/`` and whose
``results/`` is the results root. The tiny sweep runs there first (debug executor): its
training run, checkpoint and reference statistics fill the placeholders (``RUN_DIR``,
``CKPT``, ``results/stages/train/<key>``, ...). SLURM is reported unavailable, so ``auto``
means the local executor.

:data:`CASES` lists every example, with how it is made small (flags appended: argparse keeps
the last value; text replaced), or the exit code it demonstrates. An example that is added to
a help text or to the README without an entry here fails :func:`test_every_example_has_a_case`.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import harness.cli as cli

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- extraction
def _normal(line: str) -> str:
    """One example as shown, less a trailing ``# comment`` and repeated spaces."""
    return re.sub(r"\s+", " ", re.sub(r"\s+#\s.*$", "", line)).strip()


def _lines(block: str) -> list[str]:
    """Example commands of an ``examples:`` block (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", textwrap.dedent(block).strip())
    return [_normal(line) for line in joined.splitlines() if line.strip()]


def _readme_examples() -> list[str]:
    """The example column of the README's command table (| command | what it does | example |)."""
    text = (REPO / "README.md").read_text()
    table = text.split("| command | what it does | example |", 1)[1].split("\n\n", 1)[0]
    return [_normal(row) for row in re.findall(r"\| `(harness [^`]+)` \|$", table, re.M)]


def extracted() -> dict[str, str]:
    """Example → where it was found (first place), in order."""
    found: dict[str, str] = {}
    for line in _lines(cli.EXAMPLES):
        found.setdefault(line, "harness --help")
    for command in cli.discover_commands():
        for line in _lines(command.examples):
            found.setdefault(line, f"harness {command.name} --help")
    for line in _readme_examples():
        found.setdefault(line, "README.md")
    return found


# ----------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    append: tuple[str, ...] = ()  # small-size flags (the last value of a flag wins)
    replace: dict[str, str] = field(default_factory=dict)  # text replaced before splitting
    rc: int = 0  # 2: the example demonstrates a user error
    expect: str = ""  # ... whose message says this
    why: str = ""


AS_WRITTEN = Case()
# the tiny sweep's evaluation (its substitute extractor: Inception weights are not here)
TINY_EVAL = (
    "--config",
    "sweeps/tiny.yaml",
    "--num-samples",
    "32",
    "--set",
    "eval.sampler.num_steps=2",
)
NO_INCEPTION = "Inception weights are fetched once on a login node; offline the error says where"
OFFLINE = Case(rc=2, why="fetching weights needs the internet: offline it is a clear user error")
BENCH_SMALL = ("--batch", "2", "--steps", "1", "--warmup", "0", "--resolution", "56", "--space")
BENCH_SMALL += ("pixel", "--device", "cpu", "--precision", "fp32", "--num-workers", "0")
PAPER_DRY_RUN = Case(append=("--dry-run",), why="a paper sweep: its plan only")

CASES: dict[str, Case] = {
    # harness --help
    "harness validate encoders.yaml sweeps/cpu-study.yaml": AS_WRITTEN,
    "harness sweep encoders.yaml --sweep sweeps/cpu-study.yaml --dry-run": AS_WRITTEN,
    "harness sweep encoders.yaml --sweep sweeps/tiny.yaml --executor local": Case(
        why="the fixture ran the tiny sweep: nothing is left to run"
    ),
    "harness status --sweep tiny": AS_WRITTEN,
    "harness report --sweep tiny": AS_WRITTEN,
    'harness query "SELECT encoder, method, step, fid FROM v_study ORDER BY fid"': AS_WRITTEN,
    # sweep
    "harness sweep encoders.yaml --dry-run": AS_WRITTEN,
    "harness sweep encoders.yaml --sweep sweeps/irepa-sitxl-100k.yaml --encoders 'dinov2-*'": (
        PAPER_DRY_RUN
    ),
    "harness sweep encoders.yaml --sweep sweeps/tiny.yaml --retry-failed --wait": AS_WRITTEN,
    # data
    "harness data preview --out grid.png": AS_WRITTEN,
    "harness data preview --out val.png --split val --n 100 --set resolution=64": AS_WRITTEN,
    "harness data preview --out inet.png --set source=folder --set root=/data/imagenet": Case(
        replace={"/data/imagenet": "imagenet"}, why="a 4-image ImageFolder stands in"
    ),
    "harness data preview --out grid.png --config sweeps/cpu-study.yaml": AS_WRITTEN,
    # prepare (run.yaml: a latent-space run with a random-init VAE)
    "harness prepare run.yaml": AS_WRITTEN,
    "harness prepare run.yaml --device cuda --batch-size 128": Case(append=("--device", "cpu")),
    # encoders
    "harness encoders list 'dinov2*'": AS_WRITTEN,
    "harness encoders check dinov2-vit-b pixels hog --random-weights --grid 8": AS_WRITTEN,
    "harness encoders fetch dinov2-vit-b clip-vit-L": OFFLINE,
    "harness encoders fetch --all": OFFLINE,
    # status, cancel
    "harness status": AS_WRITTEN,
    "harness status --sweep tiny --watch": Case(why="every stage is over: one screen"),
    "harness cancel --sweep tiny": AS_WRITTEN,
    "harness cancel --sweep tiny --stage eval": AS_WRITTEN,
    # train
    "harness train sweeps/examples/run-tiny.yaml --catalogue encoders.yaml --device cpu": (
        AS_WRITTEN
    ),
    "harness train run.yaml --catalogue encoders.yaml": AS_WRITTEN,
    "harness train run.yaml --set train.steps=1000 --out /tmp/run1 --device cpu": Case(
        replace={"train.steps=1000": "train.steps=3", "/tmp/run1": "run1"}
    ),
    "torchrun --nproc-per-node 8 -m harness train run.yaml --catalogue encoders.yaml": Case(
        replace={"torchrun --nproc-per-node 8 -m harness": "harness"},
        why="the command torchrun starts on each rank, in one process",
    ),
    # metrics
    "harness metrics encoders.yaml --encoders pixels,noise,hog --images 500 --random-weights": (
        Case(append=("--images", "16", "--data-resolution", "32"))
    ),
    "harness metrics encoders.yaml --encoders pixels-p4,hog --sweep sweeps/cpu-study-full.yaml": (
        AS_WRITTEN
    ),
    "harness metrics encoders.yaml --encoders 'dinov2*' --data-resolution 256 --device cuda "
    "--dtype bfloat16": Case(
        replace={"'dinov2*'": "dinov2-vit-b"},
        append=("--device", "cpu", "--random-weights", "--images", "4", "--data-resolution", "56"),
        why="one DINOv2 with random weights on the CPU (the family's giants take minutes)",
    ),
    # sample
    "harness sample CKPT --n 64 --out grid.png": Case(append=("--n", "4")),
    "harness sample CKPT --n 1000 --out samples.npz --sampler.mode ode --sampler.num_steps 50": (
        Case(append=("--n", "4", "--sampler.num_steps", "2"))
    ),
    # rank
    "harness rank encoders.yaml --encoders pixels,hog --sweep sweeps/tiny.yaml --paper iREPA "
    "--model SiT-XL/2 --method irepa --step 100000 --cfg 1 --dry-run": AS_WRITTEN,
    "harness rank encoders.yaml --encoders 'siglip2-*' --against published --paper iREPA "
    "--model SiT-XL/2 --method irepa --step 100000 --cfg 1 "
    "--sweep sweeps/irepa-sitxl-100k.yaml --dry-run": AS_WRITTEN,
    "harness rank encoders.yaml --encoders all --against cpu-study-full --method repa": Case(
        replace={"cpu-study-full": "tiny"},
        rc=2,
        expect="a fit needs at least 5",
        why="the tiny sweep has FIDs of 2 encoders (cpu-study-full: 13); the fit refuses",
    ),
    # fid-ref
    "harness fid-ref sweeps/cpu-study.yaml": Case(
        append=("--num-images", "200", "--set", "eval.substitute.epochs=1")
    ),
    "harness fid-ref sweeps/irepa-sitxl-100k.yaml --npz VIRTUAL_imagenet256_labeled.npz": Case(
        rc=2, expect="Inception weights", why=NO_INCEPTION
    ),
    "harness fid-ref data.yaml --set eval.extractor=harness-cnn --split val": AS_WRITTEN,
    # eval (on the tiny sweep's training run, with its reference)
    "harness eval results/stages/train/<key> --num-samples 10000": Case(append=TINY_EVAL),
    "harness eval run/checkpoints/step_0100000.pt --config sweeps/irepa-sitxl-100k.yaml": Case(
        append=TINY_EVAL, why="the tiny sweep's evaluation replaces the paper's (Inception)"
    ),
    "harness eval RUN_DIR --step 400000 --reference results/stages/fid_ref/<key>": Case(
        replace={"400000": "4"}, append=TINY_EVAL
    ),
    "harness eval RUN_DIR --set eval.sampler.num_steps=50 --set eval.sampler.cfg_scale=1.8": (
        Case(append=TINY_EVAL)
    ),
    # probe
    "harness probe encoders.yaml --encoders dinov2-vit-b,pe-vit-g "
    "--sweep sweeps/irepa-sitxl-100k.yaml": Case(
        replace={"dinov2-vit-b,pe-vit-g": "pixels", "irepa-sitxl-100k": "tiny"},
        why="ImageNet and the weights are not here: a control encoder on the tiny sweep's data",
    ),
    "harness probe encoders.yaml --encoders pixels,noise,hog --random-weights "
    "--set probe.epochs=30": Case(
        append=("--sweep", "sweeps/tiny.yaml", "--set", "probe.epochs=2")
    ),
    "harness probe encoders.yaml --set probe.pooling=cls --set probe.subset_per_class=50": Case(
        append=("--encoders", "pixels", "--random-weights", "--sweep", "sweeps/tiny.yaml"),
        why="all 55 encoders: one",
    ),
    "harness probe --sit results/stages/train/<key> --block 8 --noise-t 0.25": Case(
        replace={"--block 8": "--block 2"}, append=("--sweep", "sweeps/tiny.yaml")
    ),
    "harness probe encoders.yaml --encoders pixels,hog --random-weights": Case(
        append=("--sweep", "sweeps/tiny.yaml")
    ),
    # checkpoint
    "harness checkpoint convert results/stages/train/<run>/checkpoints/step_0100000.pt": (
        AS_WRITTEN
    ),
    "harness checkpoint convert results/stages/train/<run>": AS_WRITTEN,
    # ingest
    "harness ingest": AS_WRITTEN,
    "harness ingest --rebuild": AS_WRITTEN,
    "harness ingest --wait 600 --json": AS_WRITTEN,
    # bench
    "harness bench train --model SiT-XL/2 --encoder dinov2-vit-b --catalogue encoders.yaml "
    "--batch 256": Case(
        replace={"SiT-XL/2": "SiT-T/2"},
        append=BENCH_SMALL,
        why="SiT-XL/2 at batch 256 is a GPU benchmark",
    ),
    "harness bench train --model SiT-T/2 --encoder toy --space pixel --resolution 32 "
    "--device cpu": Case(append=("--batch", "2", "--steps", "1", "--warmup", "0")),
    "harness bench train --model SiT-XL/2 --encoder dinov2-vit-b --catalogue encoders.yaml": Case(
        replace={"SiT-XL/2": "SiT-T/2"},
        append=BENCH_SMALL,
        why="SiT-XL/2 is a GPU benchmark",
    ),
    # query
    'harness query "SELECT encoder, method, step, fid, lds FROM v_study ORDER BY fid"': AS_WRITTEN,
    "harness query \"SELECT * FROM v_correlations WHERE metric = 'lds'\" --format csv": AS_WRITTEN,
    "harness query --file analysis/correlations_per_size.sql --format json -o corr.json": (
        AS_WRITTEN
    ),
    'harness query "SHOW TABLES"': AS_WRITTEN,
    'harness query "SELECT encoder, method, fid, lds FROM v_study"': AS_WRITTEN,
    # report
    "harness report": AS_WRITTEN,
    "harness report --sweep cpu-study --step 2000 --out /tmp/report": Case(
        replace={"cpu-study --step 2000": "tiny --step 4", "/tmp/report": "report-tiny"}
    ),
    "harness report --against-published": Case(
        rc=2,
        expect="no measured encoder has a published_name",
        why="the tiny sweep's controls (pixels, noise) have no published counterpart",
    ),
    # validate
    "harness validate sweeps/irepa-sitxl-100k.yaml --set train.steps=1000 "
    "--set eval.at_steps=[1000]": AS_WRITTEN,
    "harness validate encoders.yaml sweeps/*.yaml": AS_WRITTEN,
    # README-only
    "harness sweep encoders.yaml --sweep sweeps/irepa-sitxl-100k.yaml --dry-run": AS_WRITTEN,
    "harness status --sweep cpu-study --watch": Case(
        replace={"cpu-study": "tiny"}, why="the tiny sweep is the one planned here"
    ),
    "harness cancel --sweep cpu-study": Case(
        replace={"cpu-study": "tiny"}, why="the tiny sweep is the one planned here"
    ),
    "harness encoders check hog vit-s-random --random-weights --grid 8": AS_WRITTEN,
    "harness prepare run.yaml --device cuda": Case(append=("--device", "cpu")),
}

EXAMPLES = extracted()


# ----------------------------------------------------------------------------- the workspace
@dataclass
class Workspace:
    root: Path
    placeholders: dict[str, str]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    """A scratch working directory with the tiny sweep run, and the stand-ins the examples
    name (run.yaml, data.yaml, an ImageFolder, an ADM npz)."""
    root = tmp_path_factory.mktemp("examples")
    for name in ("encoders.yaml", "sweeps", "analysis"):
        (root / name).symlink_to(REPO / name)
    with offline_here(root):
        argv = ["sweep", "encoders.yaml", "--sweep", "sweeps/tiny.yaml", "--executor", "debug"]
        assert cli.main(argv) == 0
        _write_stand_ins(root)
    return Workspace(root, _placeholders(root))


@contextlib.contextmanager
def offline_here(root: Path) -> Iterator[None]:
    """Work in ``root`` (results under ``root/results``), offline, on a machine without SLURM
    (neither sbatch nor squeue answers; no progress bars)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HARNESS_RESULTS", str(root / "results"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HARNESS_PROGRESS", "0")
        mp.setattr("harness.launch.executor.slurm_available", lambda: False)
        mp.setattr("harness.launch.jobs._squeue", lambda: None)
        yield


def _write_stand_ins(root: Path) -> None:
    tiny = yaml.safe_load((REPO / "sweeps" / "tiny.yaml").read_text())
    (root / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "method": "none",
                "random_weights": True,
                "data": {"resolution": 32, "num_classes": 4, "train_images": 8},
                "model": {"name": "SiT-T/2", "space": "latent"},
                "train": {"steps": 2, "global_batch": 4, "precision": "fp32", "tf32": False}
                | {"latents": "online", "ckpt_every": 2, "num_workers": 0},
            }
        )
    )
    (root / "data.yaml").write_text(yaml.safe_dump({"data": tiny["data"], "eval": tiny["eval"]}))
    for i in range(4):
        folder = root / "imagenet" / "train" / f"n0000000{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (60 * i, 90, 30)).save(folder / f"{i}.png")
    np.savez(root / "VIRTUAL_imagenet256_labeled.npz", mu=np.zeros(2048), sigma=np.eye(2048))


def _placeholders(root: Path) -> dict[str, str]:
    train = root / "results" / "stages" / "train"
    run = next(d for d in sorted(train.iterdir()) if (d / "checkpoints").is_dir())
    ckpt = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    fid_ref = next((root / "results" / "stages" / "fid_ref").iterdir())
    return {
        "results/stages/train/<run>/checkpoints/step_0100000.pt": str(ckpt),
        "run/checkpoints/step_0100000.pt": str(ckpt),
        "results/stages/train/<run>": str(run),
        "results/stages/train/<key>": str(run),
        "results/stages/fid_ref/<key>": str(fid_ref),
        "RUN_DIR": str(run),
        "CKPT": str(ckpt),
    }


def argv_of(example: str, case: Case, placeholders: dict[str, str]) -> list[str]:
    text = example
    for old, new in {**case.replace, **placeholders}.items():
        text = text.replace(old, new)
    words = shlex.split(text)
    assert words[0] == "harness", f"not a harness command: {text}"
    expanded = []
    for word in words[1:]:  # the shell's globbing, for unquoted patterns (sweeps/*.yaml)
        quoted = f"'{word}" in example or f'"{word}' in example
        matches = sorted(str(p) for p in Path().glob(word)) if "*" in word and not quoted else []
        expanded += matches or [word]
    return [*expanded, *case.append]


# ----------------------------------------------------------------------------- the tests
def test_every_example_has_a_case() -> None:
    missing = [f"{where}: {ex}" for ex, where in EXAMPLES.items() if ex not in CASES]
    stale = [ex for ex in CASES if ex not in EXAMPLES]
    assert not missing, "examples without an entry in CASES:\n" + "\n".join(missing)
    assert not stale, "CASES entries no help text or README shows:\n" + "\n".join(stale)


def test_examples_are_found_in_every_help_and_the_readme() -> None:
    sources = set(EXAMPLES.values())
    assert "harness --help" in sources and "README.md" in sources
    assert {f"harness {c.name} --help" for c in cli.discover_commands()} <= sources


@pytest.mark.parametrize("example", list(EXAMPLES), ids=range(len(EXAMPLES)))
def test_example_runs(example: str, workspace: Workspace, capsys) -> None:
    case = CASES.get(example)
    assert case is not None, f"{EXAMPLES[example]}: no entry in CASES for {example!r}"
    argv = argv_of(example, case, workspace.placeholders)
    with offline_here(workspace.root):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse
            rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert rc == case.rc, f"harness {shlex.join(argv)}\n--- stdout\n{out}\n--- stderr\n{err}"
    assert "internal error" not in err and "Traceback" not in out + err
    assert case.expect in out + err
