"""A copy of the code taken at submit time, so that queued jobs run the code as it was submitted.

Like submitit's ``RsyncSnapshot`` (which needs rsync and runs only git-tracked files), but:
the ``harness`` package files as they are in the working tree (tracked *and* untracked, minus
git-ignored files) are copied to ``results/jobs/snapshots/<tree hash>/``; an unchanged tree
reuses its snapshot. Jobs start there (``--chdir``) with ``PYTHONPATH`` pointing at it and
``HARNESS_GIT_SHA`` set to the commit (``<sha>-dirty-<tree hash>`` when the tree has local
changes), which every result's provenance records.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import harness
from harness.io import content_hash, file_hash, make_dirs, make_temp_dir
from harness.logs import event, get_logger
from harness.paths import jobs_dir

log = get_logger(__name__)

PACKAGE = "harness"
_COMPLETE = ".complete"


@dataclass(frozen=True)
class Snapshot:
    """A code snapshot: where it is and which code it holds."""

    path: Path  # directory holding the ``harness`` package copy
    git_sha: str | None  # commit (with a -dirty-<hash> suffix for local changes), None outside git
    tree_hash: str  # content hash of the copied files

    def env(self) -> dict[str, str]:
        """Environment of jobs that run this snapshot."""
        env = {"PYTHONPATH": str(self.path)}
        if self.git_sha:
            env["HARNESS_GIT_SHA"] = self.git_sha
        return env


def source_tree() -> Path:
    """The directory that holds the ``harness`` package being run."""
    return Path(harness.__file__).resolve().parent.parent


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode("utf-8", "replace") if out.returncode == 0 else None


def package_files(tree: Path) -> list[str]:
    """Relative paths of the package's files: git's view (tracked + untracked, not ignored) when
    the tree is a git work tree, else every file under the package directory."""
    listing = _git(["ls-files", "-z", "--cached", "--others", "--exclude-standard", PACKAGE], tree)
    if listing is not None:
        names = [n for n in listing.split("\0") if n]
    else:
        names = [str(p.relative_to(tree)) for p in (tree / PACKAGE).rglob("*") if p.is_file()]
    return sorted(n for n in names if "__pycache__" not in n and (tree / n).is_file())


def take_snapshot(root: Path) -> Snapshot:
    """Copy the package into ``results/jobs/snapshots/<tree hash>`` (reused when unchanged)."""
    tree = source_tree()
    names = package_files(tree)
    tree_hash = content_hash([(name, file_hash(tree / name)) for name in names])
    dest = jobs_dir(root).absolute() / "snapshots" / tree_hash
    if not (dest / _COMPLETE).exists():
        staging = make_temp_dir(dest.parent, f".{tree_hash}.")  # umask modes, unlike mkdtemp
        for name in names:
            target = staging / name
            make_dirs(target.parent)
            shutil.copy2(tree / name, target)
        (staging / _COMPLETE).write_text(f"{len(names)} files\n", encoding="utf-8")
        try:
            os.rename(staging, dest)
        except OSError:  # another submission made the same snapshot first
            shutil.rmtree(staging, ignore_errors=True)
            if not (dest / _COMPLETE).exists():
                raise
        event(log, "snapshot.created", path=str(dest), files=len(names))
    sha = (_git(["rev-parse", "HEAD"], tree) or "").strip() or None
    dirty = bool((_git(["status", "--porcelain", "--", PACKAGE], tree) or "").strip())
    if sha and dirty:
        sha = f"{sha}-dirty-{tree_hash[:8]}"
    return Snapshot(path=dest, git_sha=sha, tree_hash=tree_hash)
