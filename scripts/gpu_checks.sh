#!/usr/bin/env bash
# The GPU checks of issues 17 and 20 as one prepared run, for a session lent the device machine
# (one H200 whose python3 has torch, Lightning, tensorboard, joblib and pytest, but not Hydra):
#   here:   scripts/gpu_checks.sh --fetch    # Hydra, OmegaConf, antlr4, the launchers and
#                                            # submitit (pure Python) into .site/, MNIST into
#                                            # data/MNIST/raw (both git-ignored, ~60 MB)
#   there:  device run: command "bash scripts/gpu_checks.sh", carry [".site", "data"],
#           timeout_s 560 (the steps below have their own limits and end well inside it)
# Steps (each writes what it saw to $OUT, so a step that fails or times out still reports):
#   1. the cuda cases of the device-invariance tests (tests/test_devices.py, test_rng.py,
#      test_numerics.py, test_distributed.py)
#   2. a default 10-epoch MNIST run on the GPU, eager; 3. the same with steps_per_call=8;
#   4. the same with compile.mode=reduce-overhead steps_per_call=8 (CUDA graphs);
#   5. aevb-eval of run 2's checkpoint (k = 100) on the GPU and on the CPU: test/nll equal?
#   6. jobs per GPU: a 4-job joblib sweep of 3-epoch runs against one such run alone.
# $OUT/summary.json holds the numbers (s/epoch, fit and wall seconds, test/nll, ratios).
# AEVB_GPU_CHECKS_DRY=1 runs the same steps on the CPU with tiny budgets (to test this script).
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --fetch ]]; then
  site=$(python3 -c "import hydra, os; print(os.path.dirname(os.path.dirname(hydra.__file__)))")
  rm -rf .site && mkdir -p .site data/MNIST/raw
  for pkg in hydra omegaconf antlr4 hydra_plugins submitit; do cp -r "$site/$pkg" .site/; done
  find .site -name __pycache__ -prune -exec rm -rf {} +
  cp -n "${AEVB_DATA:-../shared/data}"/MNIST/raw/*-ubyte data/MNIST/raw/
  du -sh .site data | cat
  exit 0
fi

OUT=${OUT:-$(mktemp -d /tmp/aevb-gpu-checks.XXXXXX)}
export PYTHONPATH=$PWD/.site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/aevb-gpu-work.XXXXXX)
exec > >(tee -a "$OUT/gpu_checks.log") 2>&1
if [[ ${AEVB_GPU_CHECKS_DRY:-0} == 1 ]]; then
  TRAINER=trainer=cpu EPOCHS=1 SHORT=1
  EXTRA="data.num_train=2000 data.val_size=500 eval.iw_samples=5 eval.iwae_ks=[1]"
  EVAL_ACCEL=cpu KSEL="cpu and not mps" EVAL_K=5
else
  TRAINER=trainer=gpu EPOCHS=10 SHORT=3 EXTRA="" EVAL_ACCEL=gpu KSEL="cuda" EVAL_K=100
fi
JOB="data.root=data data.download=false trainer.enable_progress_bar=false $EXTRA"

echo "== machine"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. device-invariance tests ($KSEL)"
timeout 170 $PY -m pytest -q -p no:cacheprovider -m "scenario or not scenario" -k "$KSEL" \
  tests/test_devices.py tests/test_rng.py tests/test_numerics.py tests/test_distributed.py \
  2>&1 | tee "$OUT/pytest_devices.log" | tail -15

train() {  # train NAME SECONDS OVERRIDES...: one run in $WORK/NAME, its metrics.json to $OUT
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" $PY -m aevb.train $TRAINER $JOB "$@" hydra.run.dir="$WORK/$name" \
    > "$WORK/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s"
  echo "$((SECONDS - start))" > "$OUT/seconds_$name.txt"
  tail -3 "$WORK/$name.log"
  cp "$WORK/$name/metrics.json" "$OUT/metrics_$name.json" 2>/dev/null
}
echo "== 2-4. default MNIST run, $EPOCHS epochs"
train eager 100 trainer.max_epochs=$EPOCHS
train k8 100 trainer.max_epochs=$EPOCHS steps_per_call=8
train graphs 200 trainer.max_epochs=$EPOCHS steps_per_call=8 compile.mode=reduce-overhead

echo "== 5. aevb-eval of the eager run, k = $EVAL_K, $EVAL_ACCEL and cpu"
for accel in $EVAL_ACCEL cpu; do
  timeout 120 $PY -m aevb.evaluate "$WORK/eager" eval.iw_samples=$EVAL_K "eval.iwae_ks=[1]" \
    accelerator=$accel 2>&1 | tail -2
  cp "$WORK/eager/eval.json" "$OUT/eval_$accel.json" 2>/dev/null
done

echo "== 6. jobs per GPU: one $SHORT-epoch run alone, then 4 at once (joblib)"
train alone 100 trainer.max_epochs=$SHORT seed=1
start=$SECONDS
timeout 200 $PY -m aevb.train -m hydra/launcher=joblib hydra.launcher.n_jobs=4 $TRAINER $JOB \
  trainer.max_epochs=$SHORT seed=1,2,3,4 hydra.sweep.dir="$WORK/sweep" > "$WORK/sweep.log" 2>&1
echo "sweep: exit $? in $((SECONDS - start)) s"
echo "$((SECONDS - start))" > "$OUT/seconds_sweep.txt"
cp "$WORK/sweep/summary.md" "$OUT/sweep_summary.md" 2>/dev/null

$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
summary = {}
for f in sorted(out.glob("metrics_*.json")):
    m = json.loads(f.read_text())
    epochs = m.get("epochs") or 1
    summary[f.stem.removeprefix("metrics_")] = {
        "s_per_epoch": round(m["fit_time_s"] / epochs, 3),
        **{k: m.get(k) for k in ("fit_time_s", "wall_time_s", "test/nll", "test/elbo", "device")},
    }
evals = {f.stem: json.loads(f.read_text()).get("test/nll") for f in out.glob("eval_*.json")}
summary["eval_test_nll"] = evals
if len(evals) == 2:
    a, b = evals.values()
    summary["eval_nll_gpu_minus_cpu"] = None if None in (a, b) else a - b
seconds = {f.stem.removeprefix("seconds_"): float(f.read_text()) for f in out.glob("seconds_*")}
summary["command_seconds"] = seconds
if seconds.get("alone") and "sweep" in seconds:  # whole commands: imports and test included
    summary["sweep_4_jobs_x_one_alone"] = round(seconds["sweep"] / seconds["alone"], 2)
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
rm -rf "$WORK"
