"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A crash mid-write leaves the previous file intact, never a half-written one. The file gets the
permissions a plain `open(path, "w")` would give it (0o666 less the umask), not mkstemp's 0o600,
so collaborators who can read the run dir can read its results.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path. An OSError names `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _naming(err, path) from err
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise
    return path


def _naming(err: OSError, path: Path) -> OSError:
    """`err` naming the target `path` (not the temp file, or nothing)."""
    return OSError(err.errno, err.strerror or str(err), str(path)) if err.errno else err


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


#: what to do about a failed read or write, by errno
_ELSEWHERE = "write elsewhere (aevb-train: hydra.run.dir=...)"
_ADVICE = {
    errno.ENOSPC: f"free space on that filesystem or {_ELSEWHERE}",
    errno.EDQUOT: f"free space within your quota or {_ELSEWHERE}",
    errno.EROFS: f"the filesystem is read-only: {_ELSEWHERE}",
    errno.EACCES: f"no permission: fix the permissions or {_ELSEWHERE}",
    errno.EPERM: f"no permission: fix the permissions or {_ELSEWHERE}",
    errno.ENOENT: "the file or directory does not exist: check the path",
}


def describe_os_error(err: OSError) -> str:
    """One line for a failed file operation: what failed, on which path, and what to do."""
    path = err.filename if err.filename is not None else "a file"
    what = err.strerror or str(err)
    advice = _ADVICE.get(err.errno, "check the path and the filesystem")
    return f"{what}: {path}; {advice}"
