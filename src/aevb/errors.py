"""The errors a user sees, and the rule that keeps their text on one line.

A leaf: it imports nothing of aevb, so every module may raise these. Each error's str() is one
line naming the key, file or step and what to do; entry points print it after `error:` and
exit non-zero (2; 3 for `Diverged`). `signals.Interrupted` is a stop, not an error, and stays
with the signal handling.
"""

from __future__ import annotations

from typing import Any


def one_line(text: object, limit: int | None = 300, first_line: bool = False) -> str:
    """`text` (an exception or a string) with every run of whitespace, newlines included, made
    one space, cut to `limit` characters ("..." marks a cut; None: no cut). `first_line`: keep
    only the first line (Hydra/OmegaConf append the full key and object type on the next)."""
    text = str(text)
    if first_line:
        text = (text.splitlines() or [""])[0]
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(ValueError):
    """A config value outside what is allowed: `KEY must be ALLOWED, got VALUE`."""

    def __init__(self, key: str, allowed: str, got: Any) -> None:
        super().__init__(f"{key} must be {allowed}, got {got!r}")
        self.key = key
        self._init_args = (key, allowed, got)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: joblib/submitit send it back
        return type(self), self._init_args


class DataError(RuntimeError):
    """Dataset files missing or unreadable; the message says what to do."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; names the file and what to do."""


class RunDirError(RuntimeError):
    """A run or sweep dir this launch may not use."""


class Diverged(RuntimeError):
    """A non-finite loss term or gradient, naming the step and the term."""

    def __init__(self, step: int, epoch: int, term: str) -> None:
        super().__init__(
            f"training diverged at step {step} (epoch {epoch}): {term} is not finite; "
            "lower optim.lr or set trainer.gradient_clip_val"
        )
        self.step, self.epoch, self.term = step, epoch, term

    def __reduce__(self) -> tuple[object, ...]:  # picklable: joblib/submitit send it back
        return type(self), (self.step, self.epoch, self.term)


class FiguresError(RuntimeError):
    """aevb-figures: nothing to draw, or unreadable runs."""


class SummaryError(RuntimeError):
    """aevb-summarize: the directory is not a sweep dir."""


class StepSizeError(RuntimeError):
    """A bad step-size search argument or an unusable probe."""
