"""scripts/reproduce_paper.sh: the campaign's queue (Fig. 2, then Fig. 3, then the reference
recipes), its skips, its per-run steps_per_call and its committable copies, with a recording
stand-in for aevb-train (the real runs take hours; each recipe is tested in test_experiments
and test_reference_recipes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "reproduce_paper.sh"

#: writes what a finished run leaves: config (steps_per_call), its curve, metrics.json
FAKE_TRAIN = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
for a in "$@"; do
    case $a in
        hydra.run.dir=*) dir=${a#hydra.run.dir=} ;;
        budget_samples=*) budget=${a#budget_samples=} ;;
        +experiment=*) recipe=${a#+experiment=} ;;
        steps_per_call=*) k=${a#steps_per_call=} ;;
    esac
done
mkdir -p "$dir/.hydra"
echo "steps_per_call: $k" > "$dir/.hydra/config.yaml"
case $recipe in
    paper_fig2_*) echo '{"points": [{"samples": 1}]}' > "$dir/learning_curve.json" ;;
    paper_fig3) echo '{"points": [{"samples": 1}]}' > "$dir/marginal_curve.json" ;;
esac
echo "{\"status\": \"completed\", \"samples_seen\": ${budget:-7}}" > "$dir/metrics.json"
"""


def _campaign(
    tmp_path: Path, *args: str, queue: str | None = None, runs: str | None = None
) -> list[dict[str, str]]:
    """Run the script once (one job at a time: the queue's order); the launches it made."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("aevb-train", FAKE_TRAIN), ("aevb-figures", "#!/bin/sh\n")):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "launches.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_LOG": str(log)}  # fmt: skip
    env.pop("AEVB_QUEUE", None)
    env.pop("AEVB_RUNS", None)
    env.pop("STEPS_PER_CALL", None)
    env.pop("AEVB_STEPS_PER_CALL", None)
    if queue is not None:
        env["AEVB_QUEUE"] = queue
    if runs is not None:
        env["AEVB_RUNS"] = runs
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    launches = []
    for line in log.read_text().splitlines() if log.exists() else []:
        launch = dict(a.split("=", 1) for a in line.split())
        launch["name"] = Path(launch["hydra.run.dir"]).name
        launches.append(launch)
    return launches


def test_the_queue_runs_fig2_then_fig3_then_the_references(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # an interrupted run that started with steps_per_call=1 resumes with it
    (out / "frey_nz20_wake_sleep" / ".hydra").mkdir(parents=True)
    (out / "frey_nz20_wake_sleep" / ".hydra" / "config.yaml").write_text("steps_per_call: 1\n")
    # a committed copy completed at this budget is skipped; one completed at a smaller budget
    # (the 10^7 runs before the 10^8 campaign) runs again
    for name, samples in (("frey_nz10_aevb", 1000), ("frey_nz5_aevb", 999)):
        copy = tmp_path / "docs" / "reproduction" / "runs" / name
        copy.mkdir(parents=True)
        (copy / "metrics.json").write_text(
            json.dumps({"status": "completed", "samples_seen": samples})
        )
    launches = _campaign(tmp_path, "DATA", "1000", str(out), "1")
    names = [run["name"] for run in launches]
    fig2 = [f"frey_nz{nz}_{a}" for nz in (20, 10, 5, 2) for a in ("aevb", "wake_sleep")]
    fig2 += [f"mnist_nz{nz}_{a}" for nz in (200, 20, 10, 5, 3) for a in ("aevb", "wake_sleep")]
    fig2 = [n for n in fig2 if n != "frey_nz10_aevb"] + ["mnist_nz2_aevb"]
    fig3 = [f"fig3_n{n}_{a}" for a in ("mcem", "wake_sleep", "aevb") for n in (50000, 1000)]
    assert names == [*fig2, *fig3, "reference_rezende2015_dynamic", "reference_iwae_vae"]
    by_name = {run["name"]: run for run in launches}
    assert by_name["mnist_nz200_wake_sleep"]["+experiment"] == "paper_fig2_mnist"
    assert by_name["mnist_nz200_wake_sleep"]["model.latent_dim"] == "200"
    assert by_name["frey_nz2_aevb"]["budget_samples"] == "1000"
    assert by_name["fig3_n1000_mcem"]["budget_samples"] == "600"  # 6*10^7 where Fig. 2 has 10^8
    assert by_name["fig3_n1000_mcem"]["data.num_train"] == "1000"
    assert by_name["fig3_n1000_mcem"]["+experiment"] == "paper_fig3"
    assert "budget_samples" not in by_name["reference_iwae_vae"]  # the recipe's own epochs
    assert by_name["reference_rezende2015_dynamic"]["data.binarize"] == "dynamic"
    assert by_name["reference_rezende2015_dynamic"]["+experiment"] == "reference_rezende2015"
    spc = {name: run["steps_per_call"] for name, run in by_name.items()}
    assert spc["frey_nz20_wake_sleep"] == "1"
    ones = {n for n in names if n.startswith("fig3")}  # groups refused
    assert len(ones) == 6 and {spc[n] for n in ones} == {"1"}
    assert {spc[n] for n in names if n not in ones and n != "frey_nz20_wake_sleep"} == {"8"}
    assert all(run["resume"] == "auto" and run["data.root"] == "DATA" for run in launches)

    # committable copies: curves to docs/reproduction/runs, references to docs/reference/runs
    docs = tmp_path / "docs"
    assert (docs / "reproduction" / "runs" / "fig3_n1000_mcem" / "marginal_curve.json").is_file()
    assert (docs / "reproduction" / "runs" / "mnist_nz3_aevb" / "learning_curve.json").is_file()
    assert (docs / "reference" / "runs" / "iwae_vae" / "metrics.json").is_file()
    assert not (docs / "reproduction" / "runs" / "reference_iwae_vae").exists()

    # everything completed: a second launch starts nothing
    assert _campaign(tmp_path, "DATA", "1000", str(out), "2") == []


def test_aevb_queue_selects_part_of_the_campaign(tmp_path: Path) -> None:
    launches = _campaign(tmp_path, "DATA", "1000", str(tmp_path / "out"), "1", queue="fig3")
    assert [run["name"] for run in launches][:2] == ["fig3_n50000_mcem", "fig3_n1000_mcem"]
    assert len(launches) == 6


def test_aevb_runs_keeps_only_the_named_runs_in_queue_order(tmp_path: Path) -> None:
    runs = "fig3_n1000_aevb frey_nz2_aevb fig3_n1000_wake_sleep"
    launches = _campaign(tmp_path, "DATA", "1000", str(tmp_path / "out"), "1", runs=runs)
    names = [run["name"] for run in launches]
    assert names == ["frey_nz2_aevb", "fig3_n1000_wake_sleep", "fig3_n1000_aevb"]
