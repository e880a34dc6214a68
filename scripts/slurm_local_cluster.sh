#!/usr/bin/env bash
# A SLURM cluster on this machine, to try hydra/launcher=slurm and scripts/slurm_multinode.sbatch without a
# real cluster (and for the tests marked `slurm`): one node, or several nodes on this one host to try
# multi-node DDP on a laptop.
#
#   scripts/slurm_local_cluster.sh start [DIR] [--nodes N] [--cpus-per-node C]
#       # DIR: default /tmp/ddpm-slurm; N: default 1; prints the SLURM_CONF to export
#   scripts/slurm_local_cluster.sh status [DIR]   # the daemons, the nodes (sinfo -N), sinfo and squeue
#   scripts/slurm_local_cluster.sh stop [DIR]     # stops the daemons it started (by their recorded pids)
#
# Needs Debian/Ubuntu's packages slurmctld, slurmd, slurm-client and munge (it says which are missing and
# installs nothing). Run it as root (slurmd starts the jobs as their users). Everything lives under DIR:
# slurm.conf, a munge key and socket, state, spool, logs, pids. One node (the default) is this machine
# with its real CPU count and memory, no GPUs; one partition `debug` (the default) over all nodes,
# JobRequeue=1. No cgroups or systemd: processes are tracked through /proc (proctrack/linuxproc), which also
# works in containers. There is no accounting database (sacct answers nothing); submitit's job states come
# from squeue.
#
# --nodes N (N >= 2): N slurmd daemons on this host (slurmd -N n1 ... nN), each a node with its own port
# (SLURMD_PORT, SLURMD_PORT+1, ...), spool, log and pid file, the CPUs and memory split evenly between them.
# --cpus-per-node C gives each node C CPUs instead (at most this machine's): the nodes then share the CPUs,
# e.g. on a 2-CPU machine two nodes of 2 CPUs, so that a job of 2 tasks on one node still fits.
# A multi-node job's processes find each other by the first node's name (Lightning's main address), so the
# names must resolve: start adds `127.0.0.1 n1` etc. to /etc/hosts for the names that do not resolve yet,
# says so, and stop removes exactly the lines it added. NODE_PREFIX (default n) changes the names.
#
# Ports: SLURMCTLD_PORT (default 6817) and SLURMD_PORT (6818; N nodes take N ports from it); set them to run
# a second cluster.
set -euo pipefail

usage() {
  echo "usage: $0 start [DIR] [--nodes N] [--cpus-per-node C] | stop [DIR] | status [DIR]   (DIR: where the" \
    "cluster's files go, default /tmp/ddpm-slurm; N: nodes on this host, default 1; C: default the CPUs / N)" >&2
  exit 2
}

cmd="${1:-}"
shift || true
dir_arg=""
NODES=1
CPUS_PER_NODE=""
while (($#)); do
  case "$1" in
    --nodes | --nodes=* | --cpus-per-node | --cpus-per-node=*)
      opt="${1%%=*}"
      if [[ "$1" == *=* ]]; then value="${1#*=}"; else value="${2:-}"; shift || true; fi
      if [[ "$cmd" != start ]]; then
        echo "error: ${opt} is an option of start only (stop and status read the nodes from DIR)" >&2
        exit 2
      fi
      if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: ${opt} ${value:-(missing)}: must be a whole number >= 1" >&2
        exit 2
      fi
      if [[ "$opt" == --nodes ]]; then NODES="$value"; else CPUS_PER_NODE="$value"; fi
      ;;
    -*) usage ;;
    *)
      [[ -z "$dir_arg" ]] || usage
      dir_arg="$1"
      ;;
  esac
  shift
done
DIR="$(mkdir -p "${dir_arg:-/tmp/ddpm-slurm}" && cd "${dir_arg:-/tmp/ddpm-slurm}" && pwd)"
CONF="${DIR}/slurm.conf"
HOST="$(hostname -s)"
CTLD_PORT="${SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${SLURMD_PORT:-6818}"
NODE_PREFIX="${NODE_PREFIX:-n}"
HOSTS_FILE=/etc/hosts
# the /etc/hosts lines start added, one a line, for stop to remove (and nothing else)
HOSTS_ADDED="${DIR}/hosts_added"
export SLURM_CONF="${CONF}"

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

# the slurmd daemons' names under DIR: slurmd (one node) or slurmd-n1, slurmd-n2, ... (several)
slurmd_names() {
  local pidfile
  for pidfile in "${DIR}"/slurmd.pid "${DIR}"/slurmd-*.pid; do
    [[ -e "$pidfile" ]] && basename "$pidfile" .pid
  done
  return 0
}

node_names() {  # n1 .. nN
  local i
  for ((i = 1; i <= NODES; i++)); do echo "${NODE_PREFIX}${i}"; done
}

# Each node name must resolve, to this machine: the ranks of a multi-node job meet at the first node's
# address. Names that do not resolve are added to /etc/hosts (rewritten in place: in a container it may be
# a bind mount, which a rename would not update) and recorded for stop.
add_host_names() {
  local name addr added=()
  for name in $(node_names); do
    addr="$(getent hosts "$name" | awk '{print $1; exit}')" || true
    if [[ -z "$addr" ]]; then
      added+=("$name")
    elif [[ "$addr" != 127.* && "$addr" != ::1 ]]; then
      echo "error: the node name ${name} resolves to ${addr}, not to this machine; choose other names with" \
        "NODE_PREFIX (e.g. NODE_PREFIX=ddpmnode)" >&2
      exit 1
    fi
  done
  : >"${HOSTS_ADDED}"
  if ((${#added[@]})); then
    for name in "${added[@]}"; do
      echo "127.0.0.1 ${name}  # scripts/slurm_local_cluster.sh ${DIR}" >>"${HOSTS_ADDED}"
    done
    # a file whose last line has no newline would run it into the first added name
    [[ ! -s "${HOSTS_FILE}" || -z "$(tail -c 1 "${HOSTS_FILE}")" ]] || echo >>"${HOSTS_FILE}"
    cat "${HOSTS_ADDED}" >>"${HOSTS_FILE}"
    echo "added to ${HOSTS_FILE}, so that the node names resolve (stop removes them):" \
      "$(printf '127.0.0.1 %s, ' "${added[@]}" | sed 's/, $//')"
  fi
}

remove_host_names() {
  [[ -s "${HOSTS_ADDED}" ]] || { rm -f "${HOSTS_ADDED}"; return 0; }
  local kept
  kept="$(mktemp)"
  # every line but those start added, compared whole
  grep -vxF -f "${HOSTS_ADDED}" "${HOSTS_FILE}" >"${kept}" || true
  cat "${kept}" >"${HOSTS_FILE}"
  rm -f "${kept}"
  echo "removed from ${HOSTS_FILE}: $(sed 's/ *#.*//' "${HOSTS_ADDED}" | paste -sd, - | sed 's/,/, /g')"
  rm -f "${HOSTS_ADDED}"
}

write_conf() {
  local cpus mem_mb
  cpus="$(nproc --all)"
  mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
  if ((NODES > 1)); then
    write_multinode_conf "$cpus" "$mem_mb"
    return
  fi
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

# The same cluster with NODES nodes n1..nN on this host: one slurmd each (its Port, and %n, the node's
# name, in its pid file, spool and log), the CPUs and memory split between them, one partition over all.
write_multinode_conf() {
  local cpus="$1" mem_mb="$2" name i=0 nodes
  nodes="$(node_names | paste -sd, -)"
  {
    cat <<EOF
# written by scripts/slurm_local_cluster.sh: a ${NODES}-node cluster on this host under ${DIR}
ClusterName=ddpmlocal
SlurmctldHost=${HOST}
SlurmctldPort=${CTLD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${DIR}/munge/munge.socket
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool/%n
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd-%n.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd-%n.log
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
EOF
    for name in $(node_names); do
      echo "NodeName=${name} NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i)) CPUs=${CPUS_PER_NODE:-$((cpus / NODES))}" \
        "RealMemory=$((mem_mb / NODES)) State=UNKNOWN"
      i=$((i + 1))
    done
    echo "PartitionName=debug Nodes=${nodes} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
  } >"${CONF}"
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
  local name
  for name in slurmctld munged $(slurmd_names); do
    if alive "$name"; then
      echo "a cluster is already running under ${DIR} ($0 status ${DIR}); export SLURM_CONF=${CONF}"
      exit 0
    fi
  done
  if [[ -n "$CPUS_PER_NODE" ]] && ((NODES == 1)); then
    echo "error: --cpus-per-node is for --nodes 2 or more (one node has this machine's $(nproc --all) CPUs)" >&2
    exit 2
  fi
  if ((NODES > $(nproc --all))); then
    echo "error: --nodes ${NODES}: this machine has $(nproc --all) CPUs, and each node needs one;" \
      "use --nodes 1 to $(nproc --all)" >&2
    exit 2
  fi
  if ((${CPUS_PER_NODE:-1} > $(nproc --all))); then
    echo "error: --cpus-per-node ${CPUS_PER_NODE}: slurmd refuses a node with more CPUs than this machine's" \
      "$(nproc --all); use 1 to $(nproc --all)" >&2
    exit 2
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
  if ((NODES > 1)); then
    start_nodes "$t0"
    return
  fi
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

start_nodes() {  # start_nodes T0: slurmctld and one slurmd per node, then wait until every node is up
  local t0="$1" name up=0 states=""
  add_host_names
  slurmctld -f "${CONF}"
  for name in $(node_names); do
    mkdir -p "${DIR}/spool/${name}"
    slurmd -f "${CONF}" -N "${name}"
  done
  for _ in $(seq 1 60); do
    states="$(sinfo -h -N -p debug -o "%N %t" 2>/dev/null || true)"
    up="$(awk '$2 ~ /^(idle|mix|alloc)/' <<<"$states" | wc -l)"
    ((up == NODES)) && break
    sleep 0.5
  done
  if ((up != NODES)); then
    echo "error: ${up} of ${NODES} nodes came up within 30 s (states: $(tr '\n' ' ' <<<"$states")); logs in" \
      "${DIR}/log" >&2
    tail -n 5 "${DIR}"/log/*.log >&2 || true
    stop >/dev/null
    exit 1
  fi
  echo "${NODES}-node SLURM cluster up in $((SECONDS - t0)) s on this host: nodes $(node_names | paste -sd' ' -)" \
    "(${CPUS_PER_NODE:-$(($(nproc --all) / NODES))} CPU(s) each), partition debug"
  echo "export SLURM_CONF=${CONF}"
}

stop() {
  local name pid
  for name in $(slurmd_names) slurmctld munged; do
    if alive "$name"; then
      pid="$(cat "${DIR}/${name}.pid")"
      kill "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      echo "stopped ${name} (pid ${pid})"
    fi
    rm -f "${DIR}/${name}.pid"
  done
  remove_host_names
}

status() {
  local name running=0 expected=0 daemons
  daemons="$(slurmd_names)"
  # before the first start (or after a stop): the one node's slurmd, reported as not running
  [[ -n "$daemons" ]] || daemons=slurmd
  for name in munged slurmctld $daemons; do
    expected=$((expected + 1))
    if alive "$name"; then
      echo "${name}: running (pid $(cat "${DIR}/${name}.pid"))"
      running=$((running + 1))
    else
      echo "${name}: not running"
    fi
  done
  if ((running == expected)); then
    sinfo -N -o "%N %P %c %m %T"
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
