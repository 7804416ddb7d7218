#!/usr/bin/env bash
# The reproduction of the paper's Figures 2, 4 and 5 (docs/reproduction.md): every Fig. 2 point
# (MNIST Nz in {3,5,10,20,200}, Frey Face Nz in {2,5,10,20}, AEVB and wake-sleep) plus MNIST
# Nz = 2 (Figs. 4/5) at BUDGET training samples (default: the paper's 10^8), each with the step
# size aevb-step-size chose for its (data, algorithm, Nz) (conf/experiment/paper/step_size_*.yaml),
# as single runs under OUT, JOBS at a time with one thread each at low priority (Frey Face first,
# then MNIST longest first; new runs with steps_per_call=$STEPS_PER_CALL, default 8);
# then the committable copies and the figures (the `sync` step below).
# Each run dir is self-contained; aevb-figures combines whatever runs exist. Re-running the
# script skips completed runs (in OUT or already copied to docs/reproduction/runs) and resumes
# interrupted ones from their last.ckpt (resume=auto), so the reproduction can be done piecemeal,
# across sessions.
# Run dirs and checkpoints stay out of git. Where OUT does not survive between sessions (a
# scratch disk, a new machine), `--park` copies each unfinished run's resume state (last.ckpt,
# best.ckpt, learning curve, config; about 6 MB per Frey run) to $AEVB_PARK_DIR, storage that
# does survive, and a launch with AEVB_PARK_DIR set restores parked runs missing from OUT before
# resuming them. TensorBoard event files are not parked.
#   scripts/reproduce_paper.sh [DATA_ROOT] [BUDGET] [OUT] [JOBS]
#   scripts/reproduce_paper.sh --sync [OUT]     copies + figures of the runs so far (partial too)
#   AEVB_PARK_DIR=DIR scripts/reproduce_paper.sh --park [OUT]   --sync, then park unfinished runs
set -euo pipefail
sync_only=false park=false
if [ "${1:-}" = "--sync" ] || [ "${1:-}" = "--park" ]; then
    sync_only=true; [ "$1" = "--park" ] && park=true; shift; out=${1:-outputs/reproduction}
fi
parked=${AEVB_PARK_DIR:-}
if $park && [ -z "$parked" ]; then
    echo "reproduce_paper.sh: --park needs AEVB_PARK_DIR (a directory outside the repository)" >&2
    exit 2
fi
root=${1:-../shared/data}
budget=${2:-100000000}
out=${out:-${3:-outputs/reproduction}}
jobs=${4:-2}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # 2 jobs x 1 thread beat 1 job x 2 threads by 1.5x

sync() {
    # Committable copies of each run's curve, config and metrics (a few kB): Fig. 2 and the
    # summary redraw from them on a machine without the run dirs (Figs. 4 and 5 need checkpoints).
    for run in "$out"/*/; do
        [ -f "$run/learning_curve.json" ] || continue
        dest=docs/reproduction/runs/$(basename "$run")
        # a restarted run keeps the longer committed curve until it passes it
        if [ -f "$dest/learning_curve.json" ] && python3 -c "import json, sys
last = lambda f: max((p['samples'] for p in json.load(open(f))['points']), default=0)
sys.exit(last(sys.argv[1]) <= last(sys.argv[2]))" "$dest/learning_curve.json" "$run/learning_curve.json"
        then echo "kept the longer committed curve of $(basename "$run")"; continue; fi
        mkdir -p "$dest/.hydra"
        cp "$run/.hydra/config.yaml" "$dest/.hydra/"
        cp "$run/learning_curve.json" "$dest/"
        if [ -f "$run/metrics.json" ]; then cp "$run/metrics.json" "$dest/"; else rm -f "$dest/metrics.json"; fi
    done
    aevb-figures "$out" docs/reproduction/runs --out docs/figures
}
park() {
    # The resume state of every run without a completed metrics.json; a completed run's parked
    # state is dropped (its curve and metrics are in docs/reproduction/runs).
    mkdir -p "$parked"
    for run in "$out"/*/; do
        name=$(basename "$run")
        [ -f "$run/checkpoints/last.ckpt" ] || continue
        if grep -q '"status": "completed"' "$run/metrics.json" 2>/dev/null; then
            rm -rf "${parked:?}/$name"; continue
        fi
        rm -rf "${parked:?}/$name"; mkdir -p "$parked/$name/checkpoints" "$parked/$name/.hydra"
        cp "$run"/checkpoints/{last,best}.ckpt "$parked/$name/checkpoints/" 2>/dev/null || true
        cp "$run"/.hydra/*.yaml "$parked/$name/.hydra/"
        for f in learning_curve.json metrics.json; do
            if [ -f "$run/$f" ]; then cp "$run/$f" "$parked/$name/"; fi
        done
        echo "parked $name ($(du -sh "$parked/$name" | cut -f1))"
    done
}
restore() {
    [ -n "$parked" ] || return 0
    for state in "$parked"/*/; do
        [ -d "$state" ] || continue
        name=$(basename "$state")
        if [ -e "$out/$name" ]; then continue; fi
        mkdir -p "$out/$name"; cp -r "$state". "$out/$name/"
        echo "restored $name from $parked"
    done
}
if $sync_only; then sync; if $park; then park; fi; exit 0; fi

mkdir -p "$out/logs"
restore
{
    # Frey Face first (about 2 h per run on one core, so a 3-hour session banks finished runs),
    # then MNIST longest first (3-4 h per run).
    for nz in 20 10 5 2; do for alg in aevb wake_sleep; do echo "frey $nz $alg"; done; done
    for alg in aevb wake_sleep; do echo "mnist 200 $alg"; done
    for nz in 20 10 5 3; do for alg in aevb wake_sleep; do echo "mnist $nz $alg"; done; done
    echo "mnist 2 aevb"   # Fig. 4 / Fig. 5 only: last, so the Fig. 2 runs finish first
} | xargs -P "$jobs" -L 1 sh -c '
    name=$0_nz$1_$2
    for m in '"$out"'/$name/metrics.json docs/reproduction/runs/$name/metrics.json; do
        if python3 -c "import json, sys; m = json.load(open(sys.argv[1])); sys.exit(m[\"status\"] \
                != \"completed\" or m[\"samples_seen\"] < int(sys.argv[2]))" $m '"$budget"' 2>/dev/null
        then echo "skip $name (completed in $m)"; exit 0; fi
    done
    # runs take steps_per_call optimisation steps per Lightning step (the same numbers,
    # faster); a run resumes with the value it started with (absent from older configs: 1)
    k=${STEPS_PER_CALL:-${AEVB_STEPS_PER_CALL:-8}}
    cfg='"$out"'/$name/.hydra/config.yaml
    if [ -f "$cfg" ]; then k=$(sed -n "s/^steps_per_call: *//p" "$cfg"); k=${k:-1}; fi
    nice -n 19 aevb-train +experiment=paper_fig2_$0 model.latent_dim=$1 model.algorithm=$2 \
        data.root='"$root"' budget_samples='"$budget"' trainer.enable_progress_bar=false resume=auto \
        steps_per_call=$k \
        hydra.run.dir='"$out"'/$name >> '"$out"'/logs/$name.log 2>&1 \
        && echo "done $name" || echo "FAILED $name (see '"$out"'/logs/$name.log)"'
sync
