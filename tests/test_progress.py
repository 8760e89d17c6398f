"""Progress output: redraws on a terminal, one plain line per update when piped."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import harness.progress as hp
hp.PIPED_INTERVAL_S = 0.0
bar = hp.progress(total=3, desc="stages", unit="stage")
for name in ("a", "b", "c"):
    bar.set_postfix_str(f"last: train {name} done", refresh=False)
    bar.update(1)
bar.close()
hp.PIPED_INTERVAL_S = 30.0
quick = hp.progress(total=2, desc="quick")  # piped, done within the interval: no line at all
quick.update(2)
quick.close()
"""


def test_piped_progress_is_plain_lines_without_redraws():
    env = {**os.environ, "HARNESS_PROGRESS": "1"}  # CI turns bars off; this test is about them
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    err = proc.stderr
    assert "\r" not in err and "|" not in err  # no redraws, no bar graphics
    lines = err.splitlines()
    assert all(line.startswith("stages: ") for line in lines), lines
    assert lines[-1].startswith("stages: 3/3") and "last: train c done" in lines[-1]


def test_a_transient_bar_is_erased_on_a_terminal(monkeypatch):
    """On a terminal a bar stays when done, unless transient (its caller prints one line)."""
    import io

    import harness.progress as hp

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setenv("HARNESS_PROGRESS", "1")
    kept = hp.progress(total=2, desc="kept")
    kept.update(2)
    kept.close()
    assert screen.getvalue().endswith("\n")  # the finished bar stays on its own line
    shown = len(screen.getvalue())
    erased = hp.progress(total=2, desc="erased", transient=True)
    erased.update(2)
    erased.close()
    after = screen.getvalue()[shown:]
    assert "\n" not in after and after.endswith("\r")  # the line is blanked, the cursor back
    assert after.split("\r")[-2].strip() == ""
