#!/usr/bin/env python
"""TensorBoard's HParams table as a user sees it: the visible column headers, read in a browser.

    python scripts/tensorboard_hparams.py <logdir> [--screenshot hparams.png] [--expect COL ...]

Starts `tensorboard --logdir <logdir>` on a free port and opens `#hparams` in headless Chromium,
driven by chromedriver through the W3C WebDriver protocol (plain HTTP, no Python client
needed); prints the table's visible column headers as one JSON list (after `Trial ID` and
`Show Metrics`), optionally saves a screenshot. With `--expect`, exits 1 unless the headers
are exactly those. Needs `chromium` and `chromedriver` on PATH (Debian: `apt-get install
chromium chromium-driver`); exits 2 with one line when they are missing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,900",
]
#: the headers of the table view's vaadin-grid (inside the dashboard's shadow roots)
HEADERS_JS = """
function find(root, tag) {
  const hit = root.querySelector(tag);
  if (hit) return hit;
  for (const e of root.querySelectorAll('*')) {
    if (e.shadowRoot) { const r = find(e.shadowRoot, tag); if (r) return r; }
  }
  return null;
}
const grid = find(document, 'tf-hparams-table-view vaadin-grid') || find(document, 'vaadin-grid');
if (!grid) return null;
return [...grid.shadowRoot.querySelectorAll('thead tr th')]
  .filter(th => !th.hidden && th.offsetWidth > 0)
  .map(th => {
    const slot = th.querySelector('slot');
    const cell = slot && grid.querySelector(`vaadin-grid-cell-content[slot="${slot.name}"]`);
    return cell ? cell.innerText.trim() : '';
  });
"""
FIXED = ("Trial ID", "Show Metrics")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: Any = None, timeout: float = 60) -> Any:
    """A JSON request; WebDriver's answers are unwrapped from their "value"."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.loads(response.read() or b"null")
    return payload["value"] if isinstance(payload, dict) and "value" in payload else payload


def wait_for(probe: Any, timeout: float, what: str) -> Any:
    """Call `probe()` until it returns something truthy (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            if result := probe():
                return result
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


@contextlib.contextmanager
def process(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def hparams_headers(logdir: Path, screenshot: Path | None = None, timeout: float = 90) -> list[str]:
    """The visible HParams column headers of TensorBoard on `logdir`, as rendered by Chromium."""
    tb_port, driver_port = free_port(), free_port()
    tensorboard = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    tensorboard += ["--host", "127.0.0.1", "--port", str(tb_port), "--load_fast", "false"]
    tb_url, driver = f"http://127.0.0.1:{tb_port}", f"http://127.0.0.1:{driver_port}"
    with (
        process(tensorboard),
        process(["chromedriver", f"--port={driver_port}"]),
        tempfile.TemporaryDirectory(prefix="aevb-chromium-") as profile,
    ):
        experiment = f"{tb_url}/data/plugin/hparams/experiment"
        wait_for(
            lambda: http("POST", experiment, {"experimentName": ""}).get("hparamInfos"),
            timeout,
            f"tensorboard --logdir {logdir}: HParams data",
        )
        wait_for(lambda: http("GET", f"{driver}/status")["ready"], timeout, "chromedriver")
        options = {"args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
        if binary := shutil.which("chromium"):
            options["binary"] = binary
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        session = f"{driver}/session/" + http("POST", f"{driver}/session", caps)["sessionId"]
        try:
            http("POST", f"{session}/url", {"url": f"{tb_url}/#hparams"})
            last: list[str] = []

            def settled() -> list[str] | None:  # the same non-empty headers twice in a row
                nonlocal last
                now = http("POST", f"{session}/execute/sync", {"script": HEADERS_JS, "args": []})
                done = bool(now) and len(now) > len(FIXED) and now == last
                last = now or []
                return now if done else None

            headers = wait_for(settled, timeout, "the HParams table in Chromium")
            if screenshot is not None:
                png = http("GET", f"{session}/screenshot")
                screenshot.write_bytes(base64.b64decode(png))
        finally:
            with contextlib.suppress(OSError, urllib.error.URLError):
                http("DELETE", session)
    return [h for h in headers if h not in FIXED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None, help="save a PNG of the tab")
    parser.add_argument("--expect", nargs="+", default=None, help="the exact visible columns")
    parser.add_argument("--timeout", type=float, default=90, help="seconds per wait")
    args = parser.parse_args(argv)
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    if missing:
        print(f"tensorboard_hparams: error: {' and '.join(missing)} not on PATH", file=sys.stderr)
        return 2
    if not args.logdir.is_dir():
        print(f"tensorboard_hparams: error: {args.logdir} is not a directory", file=sys.stderr)
        return 2
    try:
        headers = hparams_headers(args.logdir, args.screenshot, args.timeout)
    except TimeoutError as err:
        print(f"tensorboard_hparams: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(headers))
    if args.expect is not None and headers != args.expect:
        print(f"tensorboard_hparams: expected {args.expect}, saw {headers}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
