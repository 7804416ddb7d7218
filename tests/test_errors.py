"""aevb.errors: one-line error text, picklable errors (joblib/submitit send them back)."""

from __future__ import annotations

import pickle

import pytest

from aevb.errors import ConfigError, Diverged, one_line


def test_one_line_collapses_whitespace_and_cuts_at_the_limit() -> None:
    assert one_line(ValueError("a\n  b\tc ")) == "a b c"
    assert one_line("x" * 10, limit=10) == "x" * 10
    assert one_line("x" * 11, limit=10) == "x" * 7 + "..."
    assert one_line("y " * 500, limit=None) == ("y " * 500).strip()


def test_one_line_can_keep_only_the_first_line() -> None:
    err = ValueError("Missing key x\n    full_key: data.x\n    object_type=dict")
    assert one_line(err, first_line=True) == "Missing key x"
    assert one_line("", first_line=True) == ""


@pytest.mark.parametrize(
    "err", [ConfigError("optim.lr", "a finite number > 0", -1.0), Diverged(7, 1, "kl")]
)
def test_errors_survive_pickling_with_their_message(err: Exception) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert "\n" not in str(err)


def test_config_error_names_the_key_and_what_is_allowed() -> None:
    err = ConfigError("data.name", "one of ['mnist']", "svhn")
    assert str(err) == "data.name must be one of ['mnist'], got 'svhn'" and err.key == "data.name"
    assert isinstance(err, ValueError)
