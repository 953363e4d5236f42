#!/usr/bin/env bash
# Stop the cluster started by scripts/slurm-start.sh, by pid file (never by process name).
#   slurm-stop.sh          stop daemons, keep conf, state and logs
#   slurm-stop.sh --wipe   also delete $SLURM_PREFIX
set -uo pipefail
PREFIX=${SLURM_PREFIX:-/tmp/mm1-slurm}
RUN=$PREFIX/run
export SLURM_CONF=$PREFIX/etc/slurm.conf

alive() {  # running and not a zombie (PID 1 may not reap in containers)
  [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}
stop_pidfile() {  # stop_pidfile <name> <pidfile>
  local name=$1 f=$2 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if alive "$pid"; then
    kill "$pid"
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
    alive "$pid" && { echo "$name ($pid) ignored SIGTERM, sending SIGKILL"; kill -9 "$pid"; }
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$f"
}

if [ -s "$RUN/slurmctld.pid" ] && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  [ -n "${jobs// }" ] && { scancel $jobs; sleep 3; }   # let slurmd reap job steps
fi
stop_pidfile slurmd    "$RUN/slurmd.pid"
stop_pidfile slurmctld "$RUN/slurmctld.pid"
stop_pidfile slurmdbd  "$RUN/slurmdbd.pid"
stop_pidfile mariadbd  "$RUN/mysqld/mysqld.pid"
# munged is the host's; slurm-start.sh starts it when it is not running, so stop it too.
stop_pidfile munged    /run/munge/munged.pid
rm -f "$PREFIX/env.sh"

if [ "${1:-}" = --wipe ]; then rm -rf "$PREFIX"; echo "wiped $PREFIX"; fi
