#!/usr/bin/env bash
# The reproduction campaign, in the order docs/reproduction.md gives it, as single runs under
# OUT, JOBS at a time with one thread each at low priority:
#   fig2       every Fig. 2 point (MNIST Nz in {3,5,10,20,200}, Frey Face Nz in {2,5,10,20},
#              AEVB and wake-sleep) plus MNIST Nz = 2 (Figs. 4/5) at BUDGET training samples
#              (default: the paper's 10^8), each with the step size aevb-step-size chose for its
#              (data, algorithm, Nz) (conf/experiment/paper/step_size_*.yaml); Frey Face first,
#              then MNIST longest first;
#   fig3       the six Fig. 3 runs (N_train in {1000, 50000} x AEVB, wake-sleep, MCEM) at
#              0.6 x BUDGET (the paper's 6*10^7), longest first;
#   reference  docs/reference-results.md: recipe 1 on dynamically binarised MNIST, then recipe 2
#              (the IWAE paper's VAE), each at its recipe's own budget;
# AEVB_QUEUE picks a subset (default "fig2 fig3 reference"); AEVB_RUNS="NAME ..." keeps only the
# named runs of it, in queue order (e.g. the ones that finish within one session on a machine
# that may not survive it). New runs take steps_per_call=
# $STEPS_PER_CALL (default 8; Fig. 3 refuses groups: 1). Then the committable copies and the
# figures (the `sync` step below).
# Each run dir is self-contained; aevb-figures combines whatever runs exist. Re-running the
# script skips completed runs (in OUT or already copied to docs/reproduction/runs) and resumes
# interrupted ones from their last.ckpt (resume=auto), so the reproduction can be done piecemeal,
# across sessions.
# Run dirs and checkpoints stay out of git. Where OUT does not survive between sessions (a
# scratch disk, a new machine), `--park` copies each unfinished run's resume state (last.ckpt,
# best.ckpt, learning curve, config; about 6 MB per Frey run) to $AEVB_PARK_DIR, storage that
# does survive, and a launch with AEVB_PARK_DIR set restores parked runs missing from OUT before
# resuming them. TensorBoard event files are not parked.
#   [AEVB_QUEUE="fig2 fig3 reference"] [AEVB_RUNS="NAME ..."] scripts/reproduce_paper.sh [DATA_ROOT] [BUDGET] [OUT] [JOBS]
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
queue=${AEVB_QUEUE:-fig2 fig3 reference}   # which runs, in this order (a subset for a test)
only=${AEVB_RUNS:-}                         # if set, only these run names
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # 2 jobs x 1 thread beat 1 job x 2 threads by 1.5x

sync() {
    # Committable copies of each run's curve, config and metrics (a few kB): Figs. 2 and 3 and
    # the summary redraw from them on a machine without the run dirs (Figs. 4 and 5 need
    # checkpoints). Fig. 2/3 runs go to docs/reproduction/runs/NAME, reference runs to
    # docs/reference/runs/NAME-without-reference_ (docs/reference-results.md).
    for run in "$out"/*/; do
        name=$(basename "$run")
        [ -f "$run/.hydra/config.yaml" ] || continue
        curve=
        for f in learning_curve.json marginal_curve.json; do [ -f "$run/$f" ] && curve=$f; done
        case $name in
            reference_*) dest=docs/reference/runs/${name#reference_} ;;
            *) [ -n "$curve" ] || continue; dest=docs/reproduction/runs/$name ;;
        esac
        # a restarted run keeps the longer committed curve until it passes it
        if [ -n "$curve" ] && [ -f "$dest/$curve" ] && python3 -c "import json, sys
last = lambda f: max((p['samples'] for p in json.load(open(f))['points']), default=0)
sys.exit(last(sys.argv[1]) <= last(sys.argv[2]))" "$dest/$curve" "$run/$curve"
        then echo "kept the longer committed curve of $name"; continue; fi
        mkdir -p "$dest/.hydra"
        cp "$run/.hydra/config.yaml" "$dest/.hydra/"
        if [ -n "$curve" ]; then cp "$run/$curve" "$dest/"; fi
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
        for f in learning_curve.json marginal_curve.json metrics.json; do
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
fig3_budget=$((budget * 3 / 5))   # Fig. 3's x axis ends at 6*10^7 where Fig. 2's ends at 10^8
{
    # One line per run: NAME RECIPE BUDGET OVERRIDES... (BUDGET "-": the recipe's own, by epochs).
    if [[ " $queue " == *" fig2 "* ]]; then
        # Frey Face first (10^8 samples are 10^6 steps of about 13 ms: 3-4 h per run on an idle core),
        # then MNIST longest first (20-25 ms per step: 6-7 h per run).
        for nz in 20 10 5 2; do for alg in aevb wake_sleep; do
            echo "frey_nz${nz}_$alg paper_fig2_frey $budget model.latent_dim=$nz model.algorithm=$alg"
        done; done
        for nz in 200 20 10 5 3; do for alg in aevb wake_sleep; do
            echo "mnist_nz${nz}_$alg paper_fig2_mnist $budget model.latent_dim=$nz model.algorithm=$alg"
        done; done
        # Fig. 4 / Fig. 5 only: last, so the Fig. 2 runs finish first
        echo "mnist_nz2_aevb paper_fig2_mnist $budget model.latent_dim=2 model.algorithm=aevb"
    fi
    if [[ " $queue " == *" fig3 "* ]]; then
        # longest first: MCEM (7-8 CPU h per run), wake-sleep, AEVB (1-1.5 h); docs/reproduction.md
        for alg in mcem wake_sleep aevb; do for n in 50000 1000; do
            echo "fig3_n${n}_$alg paper_fig3 $fig3_budget data.num_train=$n model.algorithm=$alg"
        done; done
    fi
    if [[ " $queue " == *" reference "* ]]; then
        # docs/reference-results.md: recipe 1 on dynamically binarised MNIST (a measured cause of
        # its gap to pythae's number, about 2-4 CPU h), then recipe 2 (10^7 steps of batch 20)
        echo "reference_rezende2015_dynamic reference_rezende2015 - data.binarize=dynamic"
        echo "reference_iwae_vae reference_iwae_vae -"
    fi
} | while read -r name rest; do
    if [ -z "$only" ] || [[ " $only " == *" $name "* ]]; then echo "$name $rest"; fi
done | xargs -P "$jobs" -L 1 sh -c '
    name=$0 recipe=$1 want=$2; shift 2
    [ "$want" = "-" ] && want=0 || set -- "$@" budget_samples=$want
    for m in '"$out"'/$name docs/reproduction/runs/$name docs/reference/runs/${name#reference_}; do
        m=$m/metrics.json; [ -f $m ] || continue
        if python3 -c "import json, sys; m = json.load(open(sys.argv[1])); sys.exit(m[\"status\"] \
                != \"completed\" or m[\"samples_seen\"] < int(sys.argv[2]))" $m $want 2>/dev/null
        then echo "skip $name (completed in $m)"; exit 0; fi
    done
    # runs take steps_per_call optimisation steps per Lightning step (the same numbers,
    # faster); Fig. 3 refuses groups (validation every 10^4 minibatches, across epochs; MCEM):
    # 1 (aevb.step_groups.check_steps_per_call); a run resumes with the value it started with
    # (absent from older configs: 1)
    k=${STEPS_PER_CALL:-${AEVB_STEPS_PER_CALL:-8}}
    case $recipe in paper_fig3) k=1 ;; esac
    cfg='"$out"'/$name/.hydra/config.yaml
    if [ -f "$cfg" ]; then k=$(sed -n "s/^steps_per_call: *//p" "$cfg"); k=${k:-1}; fi
    nice -n 19 aevb-train +experiment=$recipe "$@" data.root='"$root"' \
        trainer.enable_progress_bar=false resume=auto steps_per_call=$k \
        hydra.run.dir='"$out"'/$name >> '"$out"'/logs/$name.log 2>&1 \
        && echo "done $name" || echo "FAILED $name (see '"$out"'/logs/$name.log)"'
sync
