"""aevb.learning_curve: the log-spaced grid of sample counts the curve is evaluated at."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from aevb import signals
from aevb.learning_curve import LearningCurve, log_grid
from aevb.marginal_curve import MarginalCurve


def test_log_grid_is_rounded_unique_and_ends_at_stop() -> None:
    assert log_grid(1, 10, 10) == [1, 2, 3, 4, 5, 6, 8, 10]  # 10^(k/10), duplicates dropped
    assert log_grid(1e3, 1e4, 1) == [1000, 10000]
    with pytest.raises(ValueError, match="need 1 <= start <= stop"):
        log_grid(10, 1, 2)


def test_next_after_is_the_next_grid_point_strictly_above() -> None:
    curve = LearningCurve(start=100, points_per_decade=2)
    for k in range(8):  # the grid 100 * 10^(k/2)
        point, after = 100 * 10 ** (k / 2), 100 * 10 ** ((k + 1) / 2)
        assert curve.next_after(int(point)) == pytest.approx(point if point % 1 else after)
        assert curve.next_after(int(point) + 1) == pytest.approx(after)
    assert curve.next_after(0) == pytest.approx(100)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points_per_decade": 0}, "points_per_decade must be an integer >= 1, got 0"),
        ({"start": 0.5}, "start must be >= 1 training sample, got 0.5"),
        ({"num_test": -1}, "num_test must be null or an integer > 0, got -1"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LearningCurve(**kwargs)


@pytest.mark.parametrize("stopping", [None, signal.SIGTERM], ids=["finished", "signal"])
def test_end_of_training_point_is_skipped_when_a_signal_stops_the_fit(stopping) -> None:
    """A fit ending at its budget gets a last curve point; one stopped by SIGINT/SIGTERM does
    not (the resumed run continues from last.ckpt, whose curve state lacks it), so the stop
    takes seconds instead of a whole evaluation (minutes for Fig. 3's Appendix D estimate)."""
    model = SimpleNamespace(samples_seen=1234, samples_seen_host=1234)
    for curve in (LearningCurve(start=100), MarginalCurve(every_samples=1000)):
        evaluated = []
        curve.evaluate = lambda trainer, module, seen=evaluated: seen.append(module)
        signals.set_stopping(stopping)
        try:
            curve.on_train_end(SimpleNamespace(), model)
        finally:
            signals.set_stopping(None)
        assert evaluated == ([] if stopping else [model]), type(curve).__name__
