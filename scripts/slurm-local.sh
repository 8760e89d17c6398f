#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for CI and local tests.
#
# usage: scripts/slurm-local.sh start [--install] [--force] [--timeout SEC]
#        scripts/slurm-local.sh status | stop | restart
#
#   start     write slurm.conf (from nproc and /proc/meminfo), start munged, slurmctld and slurmd
#             as daemons (no systemd needed), then wait until `sinfo` shows the node usable.
#             Idempotent: daemons that already run are left alone; a changed config restarts them.
#   --install install the Debian packages first if a daemon is missing (needs root and apt):
#             slurmctld slurmd slurm-client munge
#   --force   overwrite a slurm.conf that this script did not write
#   --timeout seconds to wait for the node (default 90)
#   status    print sinfo and squeue; exit 0 when the node is up, 1 otherwise
#   stop      stop slurmd, slurmctld and munged (by their pid files)
#
# Settings that work in a container without systemd or cgroups: proctrack/linuxproc, task/none,
# no accounting (so `sacct` is unavailable: use squeue / scontrol show job), select/cons_tres with
# CR_CPU_Memory so several small jobs share the node. JobRequeue=1 and a short credential lifetime
# make `scontrol requeue` restart a job within seconds.
#
# Environment overrides: SLURM_CONF (default /etc/slurm/slurm.conf), SLURM_LOCAL_CPUS (default
# nproc), SLURM_LOCAL_MEM_MB (default MemTotal minus 5% / at least 512 MB), SLURM_LOCAL_CLUSTER
# (default "harness").
set -euo pipefail

MARKER="# written by harness scripts/slurm-local.sh"
CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
MUNGE_KEY=/etc/munge/munge.key
HOST="$(hostname -s)"

say() { printf '[slurm-local] %s\n' "$*"; }
die() {
  printf '[slurm-local] error: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
pid_alive() { # pidfile expected-comm-prefix
  local pidfile=$1 comm=$2 pid
  [[ -r $pidfile ]] || return 1
  pid="$(tr -dc '0-9' <"$pidfile")"
  [[ -n $pid && -r /proc/$pid/comm ]] || return 1
  [[ "$(cat "/proc/$pid/comm")" == "$comm"* ]]
}

node_state() { # the node's state as sinfo prints it ("idle", "idle*" = not responding, ...)
  timeout 10 sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true
}

node_usable() { # registered (no "*" = not responding) and able to run jobs
  case "$(node_state)" in
  idle | mixed | allocated | completing) return 0 ;;
  *) return 1 ;;
  esac
}

dump_logs() {
  local f
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
    [[ -r $f ]] || continue
    printf '\n----- last lines of %s -----\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
}

need_daemons() {
  local missing=() cmd
  for cmd in munged slurmctld slurmd sinfo sbatch; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  ((${#missing[@]} == 0)) && return 0
  if ((INSTALL)); then
    [[ $(id -u) -eq 0 ]] || die "--install needs root (apt-get); missing: ${missing[*]}"
    say "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    return 0
  fi
  die "not installed: ${missing[*]}; rerun with --install (Debian/Ubuntu: apt-get install slurmctld slurmd slurm-client munge)"
}

mem_mb() {
  if [[ -n ${SLURM_LOCAL_MEM_MB:-} ]]; then
    echo "$SLURM_LOCAL_MEM_MB"
    return
  fi
  local total_kb margin
  total_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
  margin=$((total_kb / 1024 / 20))
  ((margin < 512)) && margin=512
  echo $((total_kb / 1024 - margin))
}

write_conf() { # prints "changed" when the file was (re)written
  local cpus mem tmp
  cpus="${SLURM_LOCAL_CPUS:-$(nproc)}"
  mem="$(mem_mb)"
  tmp="$(mktemp)"
  cat >"$tmp" <<EOF
$MARKER (regenerated on every start)
ClusterName=${SLURM_LOCAL_CLUSTER:-harness}
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
PropagateResourceLimits=NONE
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,sched_min_interval=0,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem / cpus))
StateSaveLocation=${CTLD_SPOOL}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
    return 0
  fi
  if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF" && ((!FORCE)); then
    rm -f "$tmp"
    die "$CONF exists and was not written by this script; not touching it (use --force to replace it)"
  fi
  mkdir -p "$(dirname "$CONF")"
  install -m 0644 "$tmp" "$CONF"
  rm -f "$tmp"
  echo changed
}

start_munge() {
  if pid_alive "$MUNGE_PID" munged && munge -n </dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  local user=root
  id munge >/dev/null 2>&1 && user=munge
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [[ ! -s $MUNGE_KEY ]]; then
    say "creating $MUNGE_KEY"
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile="$MUNGE_KEY" --force
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
  fi
  chown "$user:" /etc/munge "$MUNGE_KEY" /var/lib/munge /var/log/munge /run/munge
  chmod 0700 /etc/munge /var/log/munge
  chmod 0400 "$MUNGE_KEY"
  chmod 0755 /run/munge
  if [[ $user == root ]]; then
    munged --force
  else
    runuser -u munge -- munged
  fi
  local i
  for i in $(seq 50); do
    munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  dump_logs
  die "munged did not come up"
}

stop_pidfile() { # pidfile comm name
  local pidfile=$1 comm=$2 name=$3 pid i
  pid_alive "$pidfile" "$comm" || return 0
  pid="$(tr -dc '0-9' <"$pidfile")"
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
cmd_start() {
  local t0 changed i state
  t0=$(date +%s.%N)
  need_daemons
  mkdir -p "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
  changed="$(write_conf)"
  if [[ -n $changed ]]; then
    say "wrote $CONF (node $HOST, cpus ${SLURM_LOCAL_CPUS:-$(nproc)}, memory $(mem_mb) MB)"
    stop_pidfile "$SLURMD_PID" slurmd slurmd
    stop_pidfile "$CTLD_PID" slurmctld slurmctld
  fi
  start_munge
  if ! pid_alive "$CTLD_PID" slurmctld; then
    say "starting slurmctld"
    slurmctld -f "$CONF" || {
      dump_logs
      die "slurmctld failed to start"
    }
  fi
  if ! pid_alive "$SLURMD_PID" slurmd; then
    say "starting slurmd"
    slurmd -f "$CONF" -N "$HOST" || {
      dump_logs
      die "slurmd failed to start"
    }
  fi
  local deadline resumed=0
  deadline=$(($(date +%s) + TIMEOUT))
  while (($(date +%s) < deadline)); do
    if node_usable; then
      say "cluster up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
      sinfo -N -o '%N %P %T %c %m'
      return 0
    fi
    state="$(node_state)"
    if [[ $state == *drain* || $state == down ]] && ((!resumed)); then
      # a node left drained/down by an earlier run: it registered fine, so put it back
      scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 && resumed=1
    fi
    sleep 0.5
  done
  say "node state after ${TIMEOUT}s: '$(node_state)'"
  sinfo -N -l 2>&1 || true
  dump_logs
  die "the node did not become idle within ${TIMEOUT}s"
}

cmd_status() {
  command -v sinfo >/dev/null 2>&1 || {
    say "SLURM is not installed (no sinfo)"
    return 1
  }
  timeout 10 sinfo || true
  timeout 10 squeue || true
  if node_usable; then
    say "node $HOST is up ($(node_state))"
    return 0
  fi
  say "node $HOST is not usable (state '$(node_state)')"
  return 1
}

cmd_stop() {
  stop_pidfile "$SLURMD_PID" slurmd slurmd
  stop_pidfile "$CTLD_PID" slurmctld slurmctld
  stop_pidfile "$MUNGE_PID" munged munged
  say "stopped"
}

# ---------------------------------------------------------------------------------------------
COMMAND="${1:-}"
[[ $# -gt 0 ]] && shift
INSTALL=0
FORCE=0
TIMEOUT=90
while (($#)); do
  case "$1" in
  --install) INSTALL=1 ;;
  --force) FORCE=1 ;;
  --timeout)
    TIMEOUT="${2:?--timeout needs a number of seconds}"
    shift
    ;;
  *) die "unknown option '$1' (allowed: --install, --force, --timeout SEC)" ;;
  esac
  shift
done

case "$COMMAND" in
start) cmd_start ;;
status) cmd_status ;;
stop) cmd_stop ;;
restart)
  cmd_stop
  cmd_start
  ;;
*)
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  [[ $COMMAND == -h || $COMMAND == --help ]] && exit 0
  exit 2
  ;;
esac
