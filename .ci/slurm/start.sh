#!/usr/bin/env bash
# A real single-node SLURM on this machine, for CI (tests/test_slurm.py) and local trials.
# Installs Debian's slurm-wlm and munge if missing, writes a localhost slurm.conf (no accounting,
# no cgroups, two fake GPUs so `--gpus=2` schedules without any), starts munged, slurmctld and
# slurmd as root and waits until the node is idle. Everything it writes lives under $SLURM_STATE
# (default /tmp/drdo-slurm); the daemons' PIDs go to $SLURM_STATE/pids for stop.sh.
# Clients find it through /etc/slurm/slurm.conf, a symlink to $SLURM_STATE/etc/slurm.conf (the
# jobstep executor drops SLURM_* variables, SLURM_CONF included, before its srun inside a job,
# so the default path must work); start.sh refuses to replace a real /etc/slurm/slurm.conf.
# Idempotent: a second call with the daemons up only waits for the node.
set -euo pipefail
STATE=${SLURM_STATE:-/tmp/drdo-slurm}
HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "start.sh: must run as root (it installs packages and runs slurmd)" >&2; exit 1; }
t0=$SECONDS

# ------------------------------------------------------------------ packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
fi
t_install=$((SECONDS - t0))

HOST=$(hostname -s)
CONF=$STATE/etc/slurm.conf
export SLURM_CONF=$CONF
if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$CONF" ]; then
  echo "start.sh: /etc/slurm/slurm.conf exists and is not ours: this machine has a SLURM already" >&2
  exit 1
fi

node_state() { sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -1 || true; }

alive() {  # alive NAME: the recorded daemon NAME still runs
  local pid
  pid=$(awk -v n="$1" '$1 == n {print $2}' "$STATE/pids" 2>/dev/null)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

if [ -f "$STATE/pids" ] && alive munged && alive slurmctld && alive slurmd; then
  echo "start.sh: daemons already running (pids in $STATE/pids)"
else
  [ -f "$STATE/pids" ] && bash "$HERE/stop.sh"
  mkdir -p "$STATE"/{etc,munge,ctld,spool,log,run,gpu}
  chmod 700 "$STATE/munge"
  : > "$STATE/gpu/nvidia0"
  : > "$STATE/gpu/nvidia1"

  # ---------------------------------------------------------------- config
  CPUS=$(nproc)
  # 90% of physical memory: what the scheduler may hand out (nothing enforces it: no cgroups)
  MEM=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  cat > "$CONF" <<EOF
# Written by .ci/slurm/start.sh: one localhost node, no accounting, two fake GPUs.
ClusterName=drdo-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ReturnToService=2
# squeue must still see finished jobs when Snakemake polls (its 'squeue' status command)
MinJobAge=600
# trust this file over what slurmd measures (a container may report other totals)
SlurmdParameters=config_overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$STATE/etc/gres.conf" <<EOF
# Two empty files stand in for /dev/nvidia0,1: --gpus=2 schedules, no GPU is touched.
AutoDetect=off
NodeName=$HOST Name=gpu File=$STATE/gpu/nvidia[0-1]
EOF
  echo "export SLURM_CONF=$CONF" > "$STATE/env"
  mkdir -p /etc/slurm
  ln -sfn "$CONF" /etc/slurm/slurm.conf

  # ---------------------------------------------------------------- daemons
  if [ ! -s "$STATE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge/munge.key"
  fi
  : > "$STATE/pids"
  # a failed start leaves no daemon behind (the logs stay in $STATE/log)
  trap 'rc=$?; [ "$rc" = 0 ] || bash "$HERE/stop.sh" >&2 || true' EXIT
  start() {  # start NAME CMD...: in the foreground mode of the daemon, detached, PID recorded
    local name=$1; shift
    setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
    echo "$name $!" >> "$STATE/pids"
  }
  start munged munged --foreground --force --key-file "$STATE/munge/munge.key" \
    --socket "$STATE/munge/munge.socket" --pid-file "$STATE/run/munged.pid" \
    --log-file "$STATE/log/munged.log" --seed-file "$STATE/munge/munge.seed"
  for _ in $(seq 100); do [ -S "$STATE/munge/munge.socket" ] && break; sleep 0.1; done
  [ -S "$STATE/munge/munge.socket" ] || { echo "start.sh: munged did not start:" >&2; cat "$STATE/log/munged."* >&2; exit 1; }
  start slurmctld slurmctld -D -c -f "$CONF"
  start slurmd slurmd -D -f "$CONF" -N "$HOST"
fi

# ------------------------------------------------------------------ wait for the node
state=
for _ in $(seq 120); do
  state=$(node_state)
  [ "$state" = idle ] && break
  for d in munged slurmctld slurmd; do
    alive "$d" || { echo "start.sh: $d exited; its log:" >&2; tail -n 30 "$STATE/log/$d.log" "$STATE/log/$d.out" >&2 || true; exit 1; }
  done
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "start.sh: node $HOST is '${state:-unknown}', not idle, after 60 s" >&2
  sinfo -N -l >&2 || true
  tail -n 30 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  exit 1
fi
echo "start.sh: SLURM up (node $HOST idle) in $((SECONDS - t0)) s (packages ${t_install} s); state in $STATE"
