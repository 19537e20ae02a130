#!/usr/bin/env bash
# Stop the daemons .ci/slurm/start.sh started, by the PIDs it recorded (never by name), and
# fail if one survives. Leaves $SLURM_STATE (logs) in place for inspection;
# removes the /etc/slurm/slurm.conf symlink start.sh made.
set -euo pipefail
STATE=${SLURM_STATE:-/tmp/drdo-slurm}
PIDS=$STATE/pids
[ -f "$PIDS" ] || { echo "stop.sh: no $PIDS, nothing to stop"; exit 0; }

# jobs first: their slurmstepd processes would outlive slurmd
if [ -f "$STATE/etc/slurm.conf" ] && command -v squeue >/dev/null; then
  export SLURM_CONF=$STATE/etc/slurm.conf
  if jobs=$(squeue -h -o %i 2>/dev/null) && [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(squeue -h -t R,CG -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

# reverse start order: slurmd, slurmctld, then munged (the others authenticate through it)
mapfile -t entries < <(tac "$PIDS")
for entry in "${entries[@]}"; do
  read -r name pid <<<"$entry"
  # a recycled PID would belong to another program: only signal our daemon
  if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "stop.sh: $name ($pid) ignored SIGTERM for 10 s, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
done
left=0
for entry in "${entries[@]}"; do
  read -r name pid <<<"$entry"
  if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
    echo "stop.sh: $name ($pid) is still running" >&2
    left=1
  fi
done
[ "$left" = 0 ] || exit 1
rm -f "$PIDS"
# the clients' default path, if start.sh made it point here
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$STATE/etc/slurm.conf" ]; then
  rm -f /etc/slurm/slurm.conf
fi
echo "stop.sh: stopped munged, slurmctld, slurmd"
