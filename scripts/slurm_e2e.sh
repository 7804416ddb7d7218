#!/usr/bin/env bash
# Sweeps end to end on a live single-node SLURM cluster: starts one (scripts/slurm_local.sh,
# installing slurmctld/slurmd/munge with apt when run as root and missing), runs the four
# scenarios of scripts/slurm_e2e.py on tiny synthetic data (job array + summary, scontrol
# requeue + resume, time limit + submitit requeue, 2-task DDP), then stops the cluster and
# deletes everything it wrote. A few minutes; exits non-zero when a scenario fails, 77 when no
# cluster could start here.
#   scripts/slurm_e2e.sh [scenario ...]   # KEEP=1 keeps the work dir (sweeps, logs) for a look
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aevb-slurm-e2e.XXXXXX")
export AEVB_SLURM_DIR=$WORK/cluster
# slurmctld and slurmd ports: two free ones in a row (another cluster may use the defaults)
AEVB_SLURM_PORT=$(python - <<'PY'
import random, socket
for _ in range(200):
    port = random.randrange(20000, 30000, 2)
    try:
        for p in (port, port + 1):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(port)
    break
PY
)
export AEVB_SLURM_PORT
cleanup() {
  local rc=$?
  scripts/slurm_local.sh stop || true
  # kept for a look on request or after a failure (its sweeps and job logs say what went wrong)
  if [[ ${KEEP:-0} == 1 || $rc -ne 0 ]]; then echo "slurm_e2e.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# exit 77 (the automake/CTest "skipped" code) when no cluster can start on this machine (not
# root and SLURM missing, no apt access, daemons refused): callers tell that apart from a failure
if ! scripts/slurm_local.sh start; then
  echo "slurm_e2e.sh: skipped: no SLURM cluster could start here (see the error above)" >&2
  exit 77
fi
export SLURM_CONF=$AEVB_SLURM_DIR/slurm.conf
timeout "${AEVB_SLURM_E2E_TIMEOUT:-1500}" python scripts/slurm_e2e.py "$WORK" "$@"
