"""Command-line latency (issue 20, goal 2): how long each console script takes to answer
`--help`, a refused command line and `aevb-train --cfg job`, target <= 1 s.

Each command runs as a fresh subprocess, exactly as its console script does (the target named in
the tree's pyproject.toml [project.scripts]), `--repeats` times; the table shows the median wall
time and the median CPU time (user + sys) of the child, and whether torch was imported. Pass
`--tree` several times to compare checkouts in one run (e.g. before and after a change); the load
average is printed, since wall time on a busy machine exceeds CPU time.

    python benchmarks/cli_latency.py
    python benchmarks/cli_latency.py --tree /path/to/old/checkout --tree . --repeats 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: name -> (console script, arguments, expected exit status)
COMMANDS = {
    "train --help": ("aevb-train", ["--help"], 0),
    "train model.latent_dim=0": ("aevb-train", ["model.latent_dim=0"], 2),
    "train model.latnt_dim=3": ("aevb-train", ["model.latnt_dim=3"], 2),
    "train --cfg job": ("aevb-train", ["--cfg", "job"], 0),
    "eval --help": ("aevb-eval", ["--help"], 0),
    "eval /no/such/run": ("aevb-eval", ["/no/such/run"], 2),
    "eval . eval.iw_samples=-1": ("aevb-eval", [".", "eval.iw_samples=-1"], 2),
    "figures --help": ("aevb-figures", ["--help"], 0),
    "figures /no/such/dir": ("aevb-figures", ["/no/such/dir"], 2),
    "figures --axes wide .": ("aevb-figures", ["--axes", "wide", "."], 2),
    "summarize --help": ("aevb-summarize", ["--help"], 0),
    "step-size --help": ("aevb-step-size", ["--help"], 0),
}

#: runs a console-script target `module:function` as its generated script does, then reports
#: whether torch was loaded (on stderr, after the command's own output)
_RUNNER = """
import importlib, sys
module, _, function = sys.argv[1].partition(":")
sys.argv = [sys.argv[2], *sys.argv[3:]]
try:
    code = getattr(importlib.import_module(module), function)()
except SystemExit as stop:
    code = stop.code
sys.stderr.write("\\ntorch-loaded=%d\\n" % ("torch" in sys.modules))
sys.exit(code)
"""


def scripts(tree: Path) -> dict[str, str]:
    """[project.scripts] of the checkout at `tree`: console script -> `module:function`."""
    with open(tree / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def run_once(
    tree: Path, target: str, script: str, args: list[str]
) -> tuple[float, float, int, bool]:
    """(wall s, child CPU s, exit status, torch imported) of one run."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}:{tree}", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, target, script, *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode, "torch-loaded=1" in proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="checkout(s) to time")
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (median)")
    parser.add_argument("--only", nargs="*", choices=list(COMMANDS), help="a subset of commands")
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [REPO])]
    names = args.only or list(COMMANDS)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
          f"on {os.cpu_count()} cores; {args.repeats} runs each, median")  # fmt: skip
    rows = []
    for name in names:
        script, cmd_args, expected = COMMANDS[name]
        for tree in trees:
            target = scripts(tree)[script]
            runs = [run_once(tree, target, script, cmd_args) for _ in range(args.repeats)]
            codes = {r[2] for r in runs}
            status = ",".join(map(str, sorted(codes))) + ("" if codes == {expected} else "!")
            rows.append(
                {
                    "command": name,
                    "tree": str(tree) if len(trees) > 1 else target,
                    "wall s": statistics.median(r[0] for r in runs),
                    "cpu s": statistics.median(r[1] for r in runs),
                    "exit": status,
                    "torch": "yes" if any(r[3] for r in runs) else "no",
                }
            )
    print_table(rows, ["command", "tree", "wall s", "cpu s", "exit", "torch"])
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    wrong = [r["command"] for r in rows if r["exit"].endswith("!")]
    if wrong:
        sys.exit(f"unexpected exit status: {', '.join(wrong)}")


if __name__ == "__main__":
    main()
