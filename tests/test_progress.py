"""aevb.progress: one rate-limited line per test batch of a long evaluation."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from aevb import progress


def _run(monkeypatch: pytest.MonkeyPatch, times: list[float], every_s: float, total: list[int]):
    """Test start at times[0], one batch end at each later time; the lines printed."""
    clock = iter(times)
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = progress.EvalProgress(prog="aevb-eval", every_s=every_s, stream=out)
    trainer = SimpleNamespace(num_test_batches=total)
    bar.on_test_start(trainer, None)
    for _ in times[1:]:
        bar.on_test_batch_end(trainer, None, None, None, 0)
    return out.getvalue().splitlines(), bar


def test_a_line_says_batch_share_elapsed_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    lines, bar = _run(monkeypatch, [0.0, 10.0, 20.0], every_s=0, total=[4])
    assert lines == [
        "aevb-eval: test batch 1/4 (25%), 10 s elapsed, ~0.5 min left",  # 10 s/batch x 3 left
        "aevb-eval: test batch 2/4 (50%), 20 s elapsed, ~0.3 min left",
    ]
    assert bar.done == 2


def test_lines_come_at_most_once_every_every_s(monkeypatch: pytest.MonkeyPatch) -> None:
    lines, bar = _run(monkeypatch, [0.0, 3.0, 6.0, 11.0, 12.0, 25.0], every_s=10, total=[2, 3])
    assert [ln.split(",")[0] for ln in lines] == [
        "aevb-eval: test batch 3/5 (60%)",  # at 11 s
        "aevb-eval: test batch 5/5 (100%)",  # at 25 s, >= 10 s after the last line
    ]
    assert bar.done == 5


def test_an_unknown_total_prints_the_count_only(monkeypatch: pytest.MonkeyPatch) -> None:
    lines, _ = _run(monkeypatch, [0.0, 1.0], every_s=0, total=[])
    assert lines == ["aevb-eval: test batch 1/0"]
