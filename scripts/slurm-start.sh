#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster on this host (no systemd needed), for the
# `slurm`-marked tests and for trying `scaling sweep --executor slurm` on one machine.
# Debian 12 / Ubuntu packages; must run as root. Idempotent: a running cluster is left as is.
#
#   SLURM_PREFIX=/tmp/mm1-slurm   conf, state, logs, pid files, env.sh
#   SLURM_ACCOUNTING=shim|db      shim (default): no slurmdbd; $PREFIX/bin/sacct answers from
#                                 squeue, which is all submitit asks of sacct (fast to start).
#                                 db: mariadb + slurmdbd, a real sacct (+193 MB, ~15 s).
#   SLURM_INSTALL=1               apt-get install missing packages (0: fail if missing)
#   SLURM_DB_PORT=13306           mariadb TCP port (127.0.0.1 only), db mode
#
# Afterwards:  source $SLURM_PREFIX/env.sh   (exports SLURM_CONF, and PATH for the shim)
# Every setting below that departs from Slurm's defaults is there for a measured reason; see
# the comments in slurm.conf.
set -euo pipefail

PREFIX=${SLURM_PREFIX:-/tmp/mm1-slurm}
ACCT=${SLURM_ACCOUNTING:-shim}
INSTALL=${SLURM_INSTALL:-1}
DB_PORT=${SLURM_DB_PORT:-13306}
CLUSTER=mm1
ETC=$PREFIX/etc RUN=$PREFIX/run LOG=$PREFIX/log STATE=$PREFIX/state
export SLURM_CONF=$ETC/slurm.conf

log() { echo "[slurm-start $(date +%T)] $*"; }
die() { log "error: $*"; exit 1; }
wait_for() {  # wait_for <seconds> <description> <command...>
  local t=$1 what=$2; shift 2
  for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "TIMEOUT waiting for $what"; tail -n 30 "$LOG"/*.log 2>/dev/null || true; exit 1
}
alive() {  # pid file names a live, non-zombie process (PID 1 here may reap late)
  [ -s "$1" ] || return 1
  local pid; pid=$(cat "$1")
  [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}
write_env() {
  {
    echo "export SLURM_CONF=$ETC/slurm.conf"
    if [ "$ACCT" = shim ]; then echo "export PATH=$PREFIX/bin:\$PATH"; fi
  } > "$PREFIX/env.sh.tmp"
  mv "$PREFIX/env.sh.tmp" "$PREFIX/env.sh"
}

case "$ACCT" in shim|db) ;; *) die "SLURM_ACCOUNTING must be shim or db, got '$ACCT'" ;; esac
[ "$(id -u)" = 0 ] || die "must run as root (munged and slurmd need it)"

# ---------------------------------------------------------------- already up?
if alive "$RUN/slurmctld.pid" && alive "$RUN/slurmd.pid" \
   && sinfo -h -N -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  write_env
  log "cluster already running (slurmctld pid $(cat "$RUN/slurmctld.pid")); source $PREFIX/env.sh"
  exit 0
fi

# ---------------------------------------------------------------- packages
pkgs="slurmctld slurmd slurm-client munge"
[ "$ACCT" = db ] && pkgs="$pkgs slurmdbd mariadb-server"
missing=$(for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
  [ "$INSTALL" = 1 ] || die "missing packages: $missing (set SLURM_INSTALL=1 to install them)"
  command -v apt-get >/dev/null || die "missing packages and no apt-get: $missing"
  log "installing: $missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/d" "$PREFIX/bin"

# ---------------------------------------------------------------- munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged          # daemonizes; pid in /run/munge/munged.pid
  wait_for 10 munged sh -c 'munge -n | unmunge'
fi
log "munged ok (pid $(cat /run/munge/munged.pid 2>/dev/null || echo '?'))"

# ---------------------------------------------------------------- slurm.conf
HOST=$(hostname -s)
HW=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')   # CPUs=.. Boards=.. ... RealMemory=..
if [ "$ACCT" = db ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none"
fi
# Why the non-defaults:
#  proctrack/linuxproc + task/none: no cgroups in a container without systemd.
#  cons_tres + CR_Core_Memory + DefMemPerCPU: a job that asks no memory would otherwise take
#    all of it and jobs would run one at a time.
#  sched_interval/bf_interval=1: back-to-back sbatch drops from ~3 s to under 1 s.
#  KillWait=2: a cancelled job would hold its CPU 30 s (submitit ignores SIGTERM).
#  AuthInfo=cred_expire=10: a requeued job would wait 120 s before it restarts.
#  MinJobAge=3600: finished jobs stay visible to squeue, which the sacct shim reads.
cat > "$ETC/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
KillWait=2
MinJobAge=3600
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
$ACCT_LINES
NodeName=$HOST NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# ---------------------------------------------------------------- accounting
if [ "$ACCT" = db ]; then
  DB=$STATE/mysql
  install -d -o mysql -g mysql "$RUN/mysqld" "$LOG/mysql"
  if [ ! -d "$DB/mysql" ]; then
    install -d -o mysql -g mysql "$DB"
    mariadb-install-db --user=mysql --datadir="$DB" --auth-root-authentication-method=socket \
      --skip-test-db >"$LOG/mariadb-install.log" 2>&1
  fi
  if ! alive "$RUN/mysqld/mysqld.pid"; then
    mariadbd --user=mysql --datadir="$DB" --socket="$RUN/mysqld/mysqld.sock" \
      --pid-file="$RUN/mysqld/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
      --log-error="$LOG/mysql/error.log" --innodb-buffer-pool-size=128M \
      --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  fi
  wait_for 30 mariadb mariadb-admin --socket="$RUN/mysqld/mysqld.sock" ping
  mariadb --socket="$RUN/mysqld/mysqld.sock" <<'EOF'
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
  log "mariadb ok (pid $(cat "$RUN/mysqld/mysqld.pid"))"
  cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"             # slurmdbd refuses a world-readable config
  alive "$RUN/slurmdbd.pid" || slurmdbd       # reads slurmdbd.conf next to $SLURM_CONF
  wait_for 60 slurmdbd sacctmgr -n show cluster
  sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  log "slurmdbd ok (pid $(cat "$RUN/slurmdbd.pid"))"
else
  # submitit only runs: sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]
  cat > "$PREFIX/bin/sacct" <<'EOF'
#!/usr/bin/env bash
# sacct stand-in without slurmdbd: answers from slurmctld's memory (finished jobs are kept
# MinJobAge seconds). Without any sacct, submitit waits forever on a job killed before it
# wrote its result.
ids=()
while [ $# -gt 0 ]; do
  case "$1" in -j|--jobs) ids+=("$2"); shift 2 ;; --jobs=*) ids+=("${1#*=}"); shift ;; *) shift ;; esac
done
echo "JobID|State|NodeList"
[ ${#ids[@]} -gt 0 ] || exit 0
IFS=,; squeue -h -t all -r -j "${ids[*]}" -o '%i|%T|%N' 2>/dev/null
exit 0
EOF
  chmod +x "$PREFIX/bin/sacct"
fi

# ---------------------------------------------------------------- slurmctld + slurmd
# A half-up cluster (one daemon died) is restarted whole: stop what is left by pid file.
for d in slurmd slurmctld; do
  if alive "$RUN/$d.pid"; then kill "$(cat "$RUN/$d.pid")"; sleep 1; fi
done
slurmctld       # daemonizes; pid file in $RUN
slurmd
wait_for 30 "node idle" sh -c "sinfo -h -N -o %T | grep -qx idle"
log "slurmctld pid $(cat "$RUN/slurmctld.pid"), slurmd pid $(cat "$RUN/slurmd.pid")"

write_env
srun -t 1 true                     # smoke test: a job really runs
sinfo
log "cluster ready; run: source $PREFIX/env.sh"
