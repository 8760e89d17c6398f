"""Domain errors.

A :class:`HarnessError` is a *user* error: bad input, a missing file, a missing weight.
The CLI prints it as one clear screen without a traceback and exits with code 2.
Anything else that escapes is an internal error (exit code 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HarnessError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``hint`` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(HarnessError):
    """A configuration file or override is malformed."""


class RegistryError(HarnessError):
    """A name is not registered (or registered twice)."""


class DataError(HarnessError):
    """A dataset is missing, empty or malformed."""


class WeightsError(HarnessError):
    """Model weights are missing from the offline caches."""


class MissingInputs(HarnessError):
    """Several inputs are missing at once: one message lists each with how to provide it."""

    def __init__(
        self, headline: str, problems: list[HarnessError], more: str | None = None
    ) -> None:
        lines = [headline + ":"]
        for problem in problems:
            lines.append(f"  - {problem.message}")
            if problem.hint:
                lines.append(f"    fix: {problem.hint}")
        lines += [f"  {line}" for line in (more or "").splitlines()]  # a pre-formatted block
        super().__init__("\n".join(lines))
        self.problems = problems


class StageError(HarnessError):
    """A stage could not run with the inputs it was given."""


class ArtifactError(HarnessError):
    """An artifact on disk is missing, truncated or corrupt."""


class StoreError(HarnessError):
    """The results database could not be read or written."""


class SubmitError(HarnessError):
    """The scheduler rejected a submission."""


def did_you_mean(value: object, allowed: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest allowed name, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_allowed(allowed: Iterable[str], limit: int = 30) -> str:
    names = sorted({str(a) for a in allowed})
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
