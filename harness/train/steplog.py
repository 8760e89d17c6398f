"""The per-step training log ``train_log.jsonl``: buffered metric rows averaged over ranks, the
non-finite guard, and throughput windows.

The loop hands over the metrics of several steps at once (one host sync per window); each row
is ``step, loss, flow_loss, proj_loss, align_cos, grad_norm, lr, images_per_s, time``. Rows are
written by rank 0 only; non-finite values are written as null and end the run as diverged.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from harness.config.train import TrainConfig
from harness.io import append_jsonl, read_jsonl, write_text
from harness.logs import event, get_logger
from harness.train import checkpoint as ckpt
from harness.train.distributed import DistEnv, all_mean

log = get_logger(__name__)

LOG_FILE = "train_log.jsonl"
METRICS = ("loss", "flow_loss", "proj_loss", "align_cos", "grad_norm")


class StepLog:
    """Rows of one run's ``train_log.jsonl`` plus the last finite row and throughput windows."""

    def __init__(
        self, out_dir: Path, env: DistEnv, cfg: TrainConfig, *, run_id: str, aligned: bool
    ) -> None:
        self.out_dir, self.path, self.env, self.cfg = out_dir, out_dir / LOG_FILE, env, cfg
        self.id, self.aligned = run_id, aligned
        self.last_finite: dict[str, Any] | None = None
        self.windows: list[tuple[int, float]] = []  # (images, seconds) per sync window

    def truncate(self, step: int) -> None:
        """Drop rows after ``step`` (the resumed checkpoint; 0 = start afresh)."""
        if not self.env.is_main or not self.path.exists():
            return
        rows = [r for r in read_jsonl(self.path) if r["step"] <= step]
        write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        self.last_finite = rows[-1] if rows else None

    def flush(
        self, pending: list[tuple[int, torch.Tensor, float]], seconds: float, lr: float
    ) -> dict | None:
        """Sync the buffered metrics; write log rows; return a divergence report or None."""
        if not pending:
            return None
        values = all_mean(torch.stack([m for _, m, _ in pending]), self.env).cpu().tolist()
        rate = len(pending) * self.cfg.global_batch / max(seconds, 1e-9)
        self.windows.append((len(pending) * self.cfg.global_batch, seconds))
        for (step, _, elapsed), row_values in zip(pending, values, strict=True):
            row = {
                "step": step,
                **dict(zip(METRICS, row_values)),
                "lr": lr,
                "images_per_s": rate,
                "time": round(elapsed, 3),
            }
            if not self.aligned:
                row["align_cos"] = None
            bad = _non_finite(row, fp16=self.cfg.precision == "fp16")
            if self.env.is_main and (step % self.cfg.log_every == 0 or bad):
                append_jsonl(self.path, _finite_or_none(row))
            if bad:
                return self._diverged(step, row, bad)
            self.last_finite = row
        last = self.last_finite or {}
        if self.env.is_main:
            event(
                log,
                "train.progress",
                run_id=self.id,
                step=last.get("step"),
                loss=last.get("loss"),
                proj_loss=last.get("proj_loss"),
                grad_norm=last.get("grad_norm"),
                images_per_s=round(rate, 1),
            )
        return None

    def _diverged(self, step: int, row: dict[str, Any], bad: list[str]) -> dict[str, Any]:
        resume_from = ckpt.latest_checkpoint(self.out_dir)
        report = {
            "step": step,
            "non_finite": {k: str(row[k]) for k in bad},
            "last_finite": self.last_finite,
            "resume_from": str(resume_from) if resume_from else None,
            "resume_step": int(resume_from.stem.split("_")[1]) if resume_from else None,
        }
        event(log, "train.diverged", level=logging.ERROR, run_id=self.id, **report)
        return report

    def images_per_s(self) -> float | None:
        windows = self.windows[1:] or self.windows  # the first window includes warm-up
        images, seconds = sum(w[0] for w in windows), sum(w[1] for w in windows)
        return images / seconds if seconds > 0 else None


def _non_finite(row: dict[str, Any], *, fp16: bool) -> list[str]:
    """Keys whose value is non-finite (with fp16 the scaler skips inf-grad steps itself)."""
    keys = ("loss", "flow_loss", "proj_loss") + (() if fp16 else ("grad_norm",))
    return [k for k in keys if row[k] is not None and not math.isfinite(row[k])]


def _finite_or_none(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }
