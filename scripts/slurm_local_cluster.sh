#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try hydra/launcher=slurm and scripts/slurm_multinode.sbatch
# without a real cluster (and for the tests marked `slurm`).
#
#   scripts/slurm_local_cluster.sh start [DIR]    # DIR: default /tmp/ddpm-slurm; prints the SLURM_CONF to export
#   scripts/slurm_local_cluster.sh status [DIR]   # the daemons, sinfo and squeue
#   scripts/slurm_local_cluster.sh stop [DIR]     # stops the daemons it started (by their recorded pids)
#
# Needs Debian/Ubuntu's packages slurmctld, slurmd, slurm-client and munge (it says which are missing and
# installs nothing). Run it as root (slurmd starts the jobs as their users). Everything lives under DIR:
# slurm.conf, a munge key and socket, state, spool, logs, pids. The node is this machine with its real
# CPU count and memory, no GPUs, one partition `debug` (the default), JobRequeue=1. No cgroups or systemd:
# processes are tracked through /proc (proctrack/linuxproc), which also works in containers. There is
# no accounting database (sacct answers nothing); submitit's job states come from squeue.
#
# Ports: SLURMCTLD_PORT (default 6817) and SLURMD_PORT (6818); set them to run a second cluster.
set -euo pipefail

cmd="${1:-}"
DIR="$(mkdir -p "${2:-/tmp/ddpm-slurm}" && cd "${2:-/tmp/ddpm-slurm}" && pwd)"
CONF="${DIR}/slurm.conf"
HOST="$(hostname -s)"
CTLD_PORT="${SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${SLURMD_PORT:-6818}"
export SLURM_CONF="${CONF}"

usage() {
  echo "usage: $0 start|stop|status [DIR]   (DIR: where the cluster's files go, default /tmp/ddpm-slurm)" >&2
  exit 2
}

missing_packages() {
  local pkg missing=()
  for pkg in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  echo "${missing[*]}"
}

alive() {  # alive NAME: the daemon whose pid DIR/NAME.pid holds is running
  local pid
  pid="$(cat "${DIR}/$1.pid" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

write_conf() {
  local cpus mem_mb
  cpus="$(nproc --all)"
  mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
  cat >"${CONF}" <<EOF
# written by scripts/slurm_local_cluster.sh: a one-node cluster under ${DIR}
ClusterName=ddpmlocal
SlurmctldHost=${HOST}
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${DIR}/munge/munge.socket
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
# no cgroups, no systemd: track job processes through /proc, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=30
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start() {
  local missing
  missing="$(missing_packages)"
  if [[ -n "$missing" ]]; then
    echo "error: missing packages: ${missing} (install them with: apt-get install -y ${missing})" >&2
    exit 1
  fi
  if [[ "$(id -u)" != 0 ]]; then
    echo "error: run this as root: slurmd starts each job as its user" >&2
    exit 1
  fi
  if alive slurmctld || alive slurmd || alive munged; then
    echo "a cluster is already running under ${DIR} ($0 status ${DIR}); export SLURM_CONF=${CONF}"
    exit 0
  fi
  local t0=$SECONDS
  mkdir -p "${DIR}"/{munge,state,spool,log}
  chmod 700 "${DIR}/munge"
  if [[ ! -s "${DIR}/munge/munge.key" ]]; then
    # munge's own key generator where it exists (munge >= 0.5.14), else 1 KiB of random bytes
    mungekey --create --keyfile="${DIR}/munge/munge.key" 2>/dev/null \
      || dd if=/dev/urandom of="${DIR}/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "${DIR}/munge/munge.key"
  fi
  write_conf
  # --force: munged refuses to run as root or with a socket outside /run/munge otherwise
  munged --force --key-file="${DIR}/munge/munge.key" --socket="${DIR}/munge/munge.socket" \
    --pid-file="${DIR}/munged.pid" --log-file="${DIR}/log/munged.log" --seed-file="${DIR}/munge/munged.seed"
  slurmctld -f "${CONF}"
  slurmd -f "${CONF}"
  # ready when the node is idle and the partition takes jobs
  local state=""
  for _ in $(seq 1 60); do
    state="$(sinfo -h -n "${HOST}" -o %t 2>/dev/null || true)"
    [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] && break
    sleep 0.5
  done
  if [[ "$state" != idle* && "$state" != mix* && "$state" != alloc* ]]; then
    echo "error: the node did not come up within 30 s (state '${state}'); logs in ${DIR}/log" >&2
    tail -n 5 "${DIR}"/log/*.log >&2 || true
    stop >/dev/null
    exit 1
  fi
  echo "one-node SLURM cluster up in $((SECONDS - t0)) s: node ${HOST} ($(nproc --all) CPUs), partition debug"
  echo "export SLURM_CONF=${CONF}"
}

stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    if alive "$name"; then
      pid="$(cat "${DIR}/${name}.pid")"
      kill "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      echo "stopped ${name} (pid ${pid})"
    fi
    rm -f "${DIR}/${name}.pid"
  done
}

status() {
  local name running=0
  for name in munged slurmctld slurmd; do
    if alive "$name"; then
      echo "${name}: running (pid $(cat "${DIR}/${name}.pid"))"
      running=$((running + 1))
    else
      echo "${name}: not running"
    fi
  done
  if ((running == 3)); then
    sinfo
    squeue
    echo "export SLURM_CONF=${CONF}"
  else
    exit 1
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
