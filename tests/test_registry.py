"""One registry per concept: lazy ``"module:object"`` entries, config validation without torch,
each vocabulary defined once, and dependencies that point one way (cli -> launch -> stages)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import harness
from harness.errors import RegistryError
from harness.registry import Registry

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(harness.__file__).parent


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (it prints one JSON line last); return that JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lazy_entry_is_imported_on_first_get_only() -> None:
    code = """
import json, sys
from harness.registry import Registry
reg = Registry("thing", lazy={"dec": "decimal:Decimal", "frac": "fractions:Fraction.from_float"})
before = ["decimal" in sys.modules, "fractions" in sys.modules]
listed = [reg.names(), "dec" in reg, len(reg), reg.is_loaded("dec")]
after_names = ["decimal" in sys.modules, "fractions" in sys.modules]
value = str(reg.get("dec")("1.5"))
print(json.dumps({"before": before, "listed": listed, "after_names": after_names,
                  "value": value, "after_get": ["decimal" in sys.modules,
                  "fractions" in sys.modules], "loaded": reg.is_loaded("dec")}))
"""
    got = _run(code)
    assert got["before"] == [False, False]
    assert got["listed"] == [["dec", "frac"], True, 2, False]
    assert got["after_names"] == [False, False]  # names / in / len import nothing
    assert got["value"] == "1.5" and got["loaded"]
    assert got["after_get"] == [True, False]  # only the entry asked for


def test_lazy_entry_is_cached_and_errors_are_helpful() -> None:
    reg: Registry[object] = Registry("thing", lazy={"json": "json", "dumps": "json:dumps"})
    assert reg.get("dumps") is reg.get("dumps") is json.dumps
    assert reg.get("json") is json  # no colon: the module itself
    with pytest.raises(RegistryError, match=r"unknown thing 'dump' \(did you mean 'dumps'\?\)"):
        reg.get("dump")
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("json", object())
    with pytest.raises(RegistryError, match="invalid lazy target"):
        reg.register_lazy("x", "json:")
    broken: Registry[object] = Registry("thing", lazy={"nope": "json:no_such_name"})
    with pytest.raises(RegistryError, match="no 'no_such_name'"):
        broken.get("nope")


def test_domain_registries_list_names_without_importing_torch() -> None:
    code = """
import json, sys
from harness.config.encoders import BUILTIN_ENCODERS, SOURCES
from harness.config.eval import EXTRACTORS
from harness.config.train import ALIGN_LOSSES, PROJECTORS
names = {r.kind: r.names() for r in (PROJECTORS, ALIGN_LOSSES, EXTRACTORS, SOURCES,
         BUILTIN_ENCODERS)}
print(json.dumps({"names": names, "torch": "torch" in sys.modules}))
"""
    got = _run(code)
    assert not got["torch"]
    assert got["names"]["projector"] == ["conv", "linear", "mlp"]
    assert got["names"]["alignment loss"] == ["cosine"]
    assert "inception-v3-compat" in got["names"]["feature extractor"]
    assert "builtin" in got["names"]["encoder source"]
    assert "hog" in got["names"]["builtin encoder"]


def test_every_lazy_domain_entry_resolves() -> None:
    from harness.config.encoders import BUILTIN_ENCODERS, SOURCES
    from harness.config.eval import DINOV2_EXTRACTORS, EXTRACTORS
    from harness.config.train import ALIGN_LOSSES, PROJECTORS
    from harness.eval.features import _DINOV2_HUB

    for registry in (PROJECTORS, ALIGN_LOSSES, EXTRACTORS, BUILTIN_ENCODERS):
        assert all(callable(obj) for _, obj in registry.items()), registry.kind
    for name, source in SOURCES.items():
        assert all(callable(getattr(source, f)) for f in ("build", "fetch", "locate")), name
    assert set(_DINOV2_HUB) == set(EXTRACTORS.names(DINOV2_EXTRACTORS))


def test_validating_the_example_configs_does_not_import_torch() -> None:
    files = [str(REPO / "encoders.yaml"), *sorted(str(p) for p in REPO.glob("sweeps/*.yaml"))]
    code = f"""
import contextlib, io, json, sys
from harness.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["validate", *{files!r}])
print(json.dumps({{"code": code, "heavy": [m for m in ("torch", "torchvision", "timm")
                  if m in sys.modules]}}))
"""
    got = _run(code)
    assert got == {"code": 0, "heavy": []}


def test_stage_kinds_and_registered_stages_agree() -> None:
    from harness.config.resources import STAGE_KINDS
    from harness.stages import STAGES

    assert sorted(STAGE_KINDS) == STAGES.names()


def _imports(path: Path) -> set[str]:
    text = path.read_text()
    return set(re.findall(r"^\s*(?:from|import) (harness\.\w+)", text, re.M))


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("stages", {"harness.launch", "harness.cli"}), ("launch", {"harness.cli"})],
)
def test_dependencies_point_one_way(layer: str, forbidden: set[str]) -> None:
    """cli -> launch -> stages -> domain packages: never the other way round."""
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(_imports(p) & forbidden)
        for p in (PACKAGE / layer).rglob("*.py")
        if _imports(p) & forbidden
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "pattern",
    [
        r'\("lds", "cds"',  # the spatial metrics: harness.metrics.SPATIAL_METRICS
        r'"latents", "fid_ref", "spatial", "probe", "train", "eval"',  # STAGE_KINDS
        r'"auto", "slurm", "local", "debug"',  # EXECUTOR_CHOICES
        r'"mlp": "harness',  # PROJECTORS
    ],
)
def test_each_vocabulary_is_written_once(pattern: str) -> None:
    skip: set[str] = set()
    hits = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if str(p.relative_to(PACKAGE)) not in skip and re.search(pattern, p.read_text())
    ]
    assert len(hits) == 1, hits
