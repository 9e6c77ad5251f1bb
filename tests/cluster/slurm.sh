#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, every file under one state folder (Debian 12, slurm-wlm 22.05).
#   tests/cluster/slurm.sh up DIR     install slurm-wlm and munge if missing, start munged, slurmctld, slurmd;
#                                     returns once the node is idle. Clients then need SLURM_CONF=DIR/slurm.conf.
#   tests/cluster/slurm.sh down DIR   stop exactly the daemons started in DIR (their pid files), nothing else.
# Needs root (the daemons run as root; munged as the munge user). munged listens on its own socket in DIR, so a
# munged or SLURM already on the machine is left alone (the SLURM ports, 6817/6818 by default, must be free:
# PGT_SLURMCTLD_PORT/PGT_SLURMD_PORT change them).
set -euo pipefail

#   tests/cluster/slurm.sh install    only install the packages (.ci/run does, before the tests)

usage() { echo "usage: $0 up|down DIR, or $0 install" >&2; exit 2; }
[ "${1:-}" = install ] || [ $# -eq 2 ] || usage
action=$1
dir=${2:-}

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" -eq 0 ] || { echo "slurm.sh: slurm-wlm is not installed and this is not root" >&2; exit 3; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
    || { echo "slurm.sh: apt-get could not install slurm-wlm and munge" >&2; exit 3; }
}

write_conf() {  # $1: this host's name. Settings: /work/shared/reference/cluster-and-docker-notes.md
  local host=$1 cpus mem
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc alone obeys OMP_NUM_THREADS: a test that set it to 1 made a 1-CPU node
  mem=$(free -m | awk '/^Mem:/ {print $2}')
  cat >"$dir/slurm.conf" <<CONF
ClusterName=pgttest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${PGT_SLURMCTLD_PORT:-6817}
SlurmdPort=${PGT_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it may start again (default 120 s)
AuthInfo=cred_expire=10,socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd-%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# CR_Core, not CR_Core_Memory: without --mem a job would claim the node's whole memory
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munged() {
  install -d -m 0755 -o munge -g munge "$dir/munge"
  runuser -u munge -- /usr/sbin/munged --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
  munge -n --socket="$dir/munge/munge.socket" | unmunge --socket="$dir/munge/munge.socket" >/dev/null
}

wait_idle() {  # $1: node name; up to 30 s
  local i
  for i in $(seq 60); do
    [ "$(sinfo -h -N -n "$1" -o %t 2>/dev/null)" = "idle" ] && return 0
    sleep 0.5
  done
  echo "slurm.sh: node $1 not idle after 30 s; see $dir/log/" >&2
  sinfo -N >&2 || true
  exit 1
}

port_free() {  # $1: TCP port; nothing accepts a connection on it
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_running() {  # $1: pid file, $2: name; a daemon that exits at once (a taken port, a bad config) stops here
  local i
  for i in $(seq 20); do
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && return 0
    sleep 0.25
  done
  echo "slurm.sh: $2 did not start; see $dir/log/" >&2
  exit 1
}

cancel_jobs() {  # this cluster's jobs only (SLURM_CONF names it); up to 30 s for them to end
  local i
  squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || return 0
  for i in $(seq 60); do
    [ -z "$(squeue -h -o %A 2>/dev/null)" ] && return 0
    sleep 0.5
  done
}

up() {
  install_packages
  local p
  for p in "${PGT_SLURMCTLD_PORT:-6817}" "${PGT_SLURMD_PORT:-6818}"; do
    port_free "$p" || { echo "slurm.sh: TCP port $p is taken (another SLURM?); set PGT_SLURMCTLD_PORT and PGT_SLURMD_PORT" >&2; exit 2; }
  done
  [ ! -e "$dir/run/slurmctld.pid" ] || { echo "slurm.sh: $dir already holds a cluster (run/slurmctld.pid)" >&2; exit 2; }
  mkdir -p "$dir"/{state,spool,run,log}
  chmod 0755 "$dir"  # munged (the munge user) must reach its socket folder below it
  local host
  host=$(hostname -s)
  write_conf "$host"
  export SLURM_CONF=$dir/slurm.conf
  start_munged
  /usr/sbin/slurmctld
  check_running "$dir/run/slurmctld.pid" slurmctld
  /usr/sbin/slurmd
  check_running "$dir/run/slurmd.pid" slurmd
  wait_idle "$host"
  echo "SLURM_CONF=$SLURM_CONF"
}

stop_pidfile() {  # $1: pid file; SIGTERM, then up to 20 s for the process to end
  local pid i
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 40); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  echo "slurm.sh: pid $pid ($1) did not stop on SIGTERM; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  [ -f "$dir/slurm.conf" ] || { echo "slurm.sh: no cluster in $dir (no slurm.conf)" >&2; exit 2; }
  export SLURM_CONF=$dir/slurm.conf
  [ -s "$dir/run/slurmctld.pid" ] && cancel_jobs
  stop_pidfile "$dir/run/slurmd.pid"
  stop_pidfile "$dir/run/slurmctld.pid"
  stop_pidfile "$dir/munge/munged.pid"
}

case $action in
  install) install_packages ;;
  up) up ;;
  down) down ;;
  *) usage ;;
esac
