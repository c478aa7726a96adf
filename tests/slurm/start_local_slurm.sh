#!/usr/bin/env bash
# A one-node SLURM on this machine, for the SLURM tests (root on a Debian-like system; containers are
# fine: no cgroups, no systemd). Installs slurm-wlm and munge when absent, writes /etc/slurm/slurm.conf
# for this host (its CPUs and memory as `slurmd -C` reports them), starts munged, slurmctld and slurmd,
# and waits until sinfo shows the node ready (idle). Running it again while the cluster is up does nothing.
# Usage: bash tests/slurm/start_local_slurm.sh    (stop: bash tests/slurm/stop_local_slurm.sh)
# State and logs: $SLURM_STATE_DIR (default /var/lib/iti-local-slurm). Exit 1 if SLURM did not come up.
set -euo pipefail
state=${SLURM_STATE_DIR:-/var/lib/iti-local-slurm}
conf=/etc/slurm/slurm.conf
mark="# written by tests/slurm/start_local_slurm.sh"
wait_s=${SLURM_START_TIMEOUT:-90}
fail() { echo "start_local_slurm: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (it installs packages and starts daemons): run it with sudo"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and there is no apt-get: install them"
  echo "installing slurm-wlm and munge"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
# Never replace a SLURM configuration this script did not write.
if [ -e "$conf" ] && ! grep -qxF "$mark" "$conf"; then
  fail "$conf exists and was not written by this script; use that SLURM, or move the file away first"
fi

host=$(hostname -s)
node_ready() { sinfo -h -n "$host" -o %T 2>/dev/null | grep -qxE 'idle|mixed|allocated'; }
if [ -e "$conf" ] && node_ready; then
  echo "local SLURM already up: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
  exit 0
fi

mkdir -p "$state/ctld" "$state/d" /etc/slurm
# munge authenticates every SLURM message; the package makes a key, make one if it did not.
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  touch "$state/munged-started-here"
fi
# The node line is what slurmd measures here (CPUs, sockets, cores, threads, RealMemory).
node=$(slurmd -C | head -n 1)
case "$node" in NodeName=*" CPUs="*" RealMemory="*) ;; *) fail "slurmd -C printed no node line: $node" ;; esac
node="NodeName=$host ${node#NodeName=* }"
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
tmp="$conf.$$.tmp"
cat >"$tmp" <<EOF
$mark
# A one-node test cluster: root daemons, no cgroups (containers), no accounting, loopback addresses
# (the host name need not resolve).
ClusterName=iti-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((memory / cpus))
ReturnToService=2
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mv "$tmp" "$conf"

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
pid_alive "$state/slurmctld.pid" || slurmctld || fail "slurmctld did not start; see $state/slurmctld.log"
pid_alive "$state/slurmd.pid" || slurmd || fail "slurmd did not start; see $state/slurmd.log"

waited=0
until node_ready; do
  if [ "$waited" -ge "$wait_s" ]; then
    echo "node state: $(sinfo -h -n "$host" -o '%T %E' 2>&1 | head -n 1)" >&2
    tail -n 5 "$state/slurmctld.log" "$state/slurmd.log" >&2 2>/dev/null || true
    fail "the node did not become idle within ${wait_s}s (logs above, in $state)"
  fi
  # A node left down by an earlier run of the cluster comes back on request.
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
  waited=$((waited + 1))
done
echo "local SLURM up: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
