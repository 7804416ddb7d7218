#!/usr/bin/env bash
# The reduced-budget reproduction of the paper's Figures 2, 4 and 5 (docs/reproduction.md):
# every Fig. 2 point (MNIST Nz in {3,5,10,20,200}, Frey Face Nz in {2,5,10,20}, AEVB and
# wake-sleep) plus MNIST Nz = 2 (Fig. 4/5) at BUDGET training samples, as single runs under
# OUT, JOBS at a time with one thread each (longest first), then the figures into docs/figures.
# Each run dir is self-contained; aevb-figures combines whatever runs exist. Re-running the
# script skips completed runs (in OUT or already copied to docs/reproduction/runs) and resumes
# interrupted ones from their last.ckpt (resume=auto), so the reproduction can be done piecemeal.
#   scripts/reproduce_paper.sh [DATA_ROOT] [BUDGET] [OUT] [JOBS]
set -euo pipefail
root=${1:-../shared/data}
budget=${2:-10000000}
out=${3:-outputs/reproduction}
jobs=${4:-2}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # 2 jobs x 1 thread beat 1 job x 2 threads by 1.5x
mkdir -p "$out/logs"
{
    for alg in aevb wake_sleep; do echo "mnist 200 $alg"; done
    for nz in 20 10 5 3; do for alg in aevb wake_sleep; do echo "mnist $nz $alg"; done; done
    for nz in 20 10 5 2; do for alg in aevb wake_sleep; do echo "frey $nz $alg"; done; done
    echo "mnist 2 aevb"   # Fig. 4 / Fig. 5 only: last, so the Fig. 2 runs finish first
} | xargs -P "$jobs" -L 1 sh -c '
    name=$0_nz$1_$2
    for m in '"$out"'/$name/metrics.json docs/reproduction/runs/$name/metrics.json; do
        if python3 -c "import json, sys; m = json.load(open(sys.argv[1])); sys.exit(m[\"status\"] \
                != \"completed\" or m[\"samples_seen\"] < int(sys.argv[2]))" $m '"$budget"' 2>/dev/null
        then echo "skip $name (completed in $m)"; exit 0; fi
    done
    aevb-train +experiment=paper_fig2_$0 model.latent_dim=$1 model.algorithm=$2 \
        data.root='"$root"' budget_samples='"$budget"' trainer.enable_progress_bar=false resume=auto \
        hydra.run.dir='"$out"'/$name >> '"$out"'/logs/$name.log 2>&1 \
        && echo "done $name" || echo "FAILED $name (see '"$out"'/logs/$name.log)"'
# Committable copies of each run's curve, config and metrics (a few kB): Fig. 2 and the summary
# redraw from them on a machine without the run dirs (Fig. 4 and 5 need the checkpoints).
for run in "$out"/*/; do
    [ -f "$run/learning_curve.json" ] || continue
    dest=docs/reproduction/runs/$(basename "$run")
    mkdir -p "$dest/.hydra"
    cp "$run/.hydra/config.yaml" "$dest/.hydra/"
    cp "$run/learning_curve.json" "$dest/"
    if [ -f "$run/metrics.json" ]; then cp "$run/metrics.json" "$dest/"; fi
done
aevb-figures "$out" docs/reproduction/runs --out docs/figures
