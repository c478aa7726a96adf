#!/usr/bin/env bash
# Stops what tests/slurm/start_local_slurm.sh started: slurmd, slurmctld (by their pid files) and munged
# when that script started it. Jobs still running are killed with the daemons. The configuration and
# the state folder stay (the next start reuses them).
set -euo pipefail
state=${SLURM_STATE_DIR:-/var/lib/iti-local-slurm}

stop_pid_file() {  # stop_pid_file NAME FILE: TERM the process the file names, wait for it (bounded)
  local pid
  [ -s "$2" ] || return 0
  pid=$(cat "$2")
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid"
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || { echo "stopped $1 ($pid)"; return 0; }; sleep 1; done
  echo "stop_local_slurm: $1 ($pid) still runs after 30 s" >&2
  return 1
}

stop_pid_file slurmd "$state/slurmd.pid"
stop_pid_file slurmctld "$state/slurmctld.pid"
if [ -e "$state/munged-started-here" ]; then
  stop_pid_file munged /run/munge/munged.pid
  rm -f "$state/munged-started-here"
fi
