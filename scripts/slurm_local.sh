#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests (scripts/slurm_e2e.sh) and trying the
# SLURM launcher: munged, slurmctld and slurmd started directly as daemons (no systemd), with
# their config, keys, sockets, state and logs in one private directory.
#
#   scripts/slurm_local.sh start    # install (apt, as root) if missing, configure, start; idempotent
#   scripts/slurm_local.sh env      # print `export SLURM_CONF=...` for sbatch/squeue/scontrol
#   scripts/slurm_local.sh status   # sinfo of the running cluster
#   scripts/slurm_local.sh stop     # cancel its jobs, stop the daemons, delete the directory
#
# AEVB_SLURM_DIR (default /tmp/aevb-slurm) holds everything; AEVB_SLURM_PORT (default 16817)
# and the next port are slurmctld's and slurmd's. The node is this machine: its CPU count
# (at least 2, so a 2-task DDP job fits; more tasks than cores only share them) and memory.
# No cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), no accounting
# (sacct has no database: submitit says "Bypassing sacct error" and waits for its result
# files instead). Runs as root: jobs run as root too.
set -euo pipefail

DIR=${AEVB_SLURM_DIR:-/tmp/aevb-slurm}
PORT=${AEVB_SLURM_PORT:-16817}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)
export SLURM_CONF=$CONF

die() { echo "slurm_local.sh: error: $*" >&2; exit 1; }

install() {
  local missing=()
  for cmd in munged slurmctld slurmd sbatch; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ $(id -u) -eq 0 ]] || die "${missing[*]} not installed; as root: apt-get install slurmctld slurmd slurm-client munge"
  echo "slurm_local.sh: installing slurmctld slurmd slurm-client munge (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

running() {  # running <pid file>: the daemon named in it is alive
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
  local cpus mem
  cpus=$(nproc)
  (( cpus < 2 )) && cpus=2
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  cat >"$CONF" <<EOF
# written by scripts/slurm_local.sh
ClusterName=aevb-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10   # a requeued job waits cred_expire s (default 120)
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  install
  mkdir -p "$DIR/munge" "$DIR/state" "$DIR/spool"
  chmod 700 "$DIR" "$DIR/munge"
  if ! running "$DIR/munge/munged.pid"; then
    [[ -s $DIR/munge/munge.key ]] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; chmod 600 "$DIR/munge/munge.key"; }
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
      --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
      --seed-file="$DIR/munge/munged.seed"
  fi
  [[ -s $CONF ]] || write_conf
  running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  running "$DIR/slurmd.pid" || slurmd -f "$CONF" -N "$NODE"
  local state=""
  for _ in $(seq 60); do  # the node registers with the controller
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
    [[ $state == idle* || $state == mix* || $state == alloc* ]] && break
    [[ $state == drain* || $state == down* ]] && scontrol update nodename="$NODE" state=resume 2>/dev/null || true
    sleep 1
  done
  [[ $state == idle* || $state == mix* || $state == alloc* ]] ||
    die "node $NODE not up (state '${state:-none}'); see $DIR/slurmctld.log and $DIR/slurmd.log"
  echo "slurm_local.sh: cluster up: node $NODE ($(sinfo -h -o '%c CPUs, %m MB'), partition local; export SLURM_CONF=$CONF" >&2
}

stop() {
  if [[ -s $CONF ]] && running "$DIR/slurmctld.pid"; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 30); do  # jobs end (slurmstepd kills their processes) before the daemons
      [[ -z $(squeue -h -t running,completing -o %i 2>/dev/null) ]] && break
      sleep 1
    done
  fi
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if running "$pidfile"; then
      local pid
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$DIR"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  status) running "$DIR/slurmctld.pid" || die "not running (no slurmctld for $DIR)"; sinfo ;;
  *) die "unknown command '$1' (allowed: start, stop, env, status)" ;;
esac
