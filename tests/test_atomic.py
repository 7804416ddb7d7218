"""aevb.atomic: whole files or none, an OSError naming the target, one-line advice."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from aevb.atomic import describe_os_error, write_bytes_atomic, write_json_atomic


def test_writes_replace_the_file_whole_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"
    write_json_atomic(target, {"b": 1, "a": [1.5]})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2} and target.read_text().endswith("\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "eval.json"
    write_bytes_atomic(target, b"old")

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": Unserialisable()})
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(OSError) as err:
        write_bytes_atomic(blocked / "x.json", b"new")  # its parent is a file
    assert err.value.filename == str(blocked / "x.json")
    assert target.read_bytes() == b"old"


def test_describe_os_error_is_one_line_with_advice() -> None:
    text = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/runs/m.json"))
    assert text == (
        "No space left on device: /runs/m.json; free space on that filesystem or write "
        "elsewhere (aevb-train: hydra.run.dir=...)"
    )
    assert describe_os_error(OSError(errno.EIO, "I/O error")).startswith("I/O error: a file;")
