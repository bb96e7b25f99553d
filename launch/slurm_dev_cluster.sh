#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests and trying the Slurm launcher without a cluster.
#
#   bash launch/install_slurm.sh                          # once: Debian packages (root)
#   eval "$(bash launch/slurm_dev_cluster.sh start)"      # starts it; prints `export SLURM_CONF=...`
#   bash launch/slurm_dev_cluster.sh status               # exit 0 when up (prints sinfo)
#   bash launch/slurm_dev_cluster.sh stop                 # stops every daemon it started
#   bash launch/slurm_dev_cluster.sh clean                # stop, then delete its folder (jobs, accounting)
#
# Daemons: munged, mariadbd + slurmdbd (accounting, so `sacct` and submitit see jobs that Slurm killed),
# slurmctld, slurmd. One partition `debug` with the machine's CPUs and 90% of its memory, no GPUs.
# Everything (config, state, logs, sockets, pid files, database) lives in $MSPGT_SLURM_DIR.
# start and stop are idempotent; every wait is bounded. Only stdout line: the export line (for eval).
#
# Settings (environment):
#   MSPGT_SLURM_DIR=/tmp/mspgt-slurm   scratch folder
#   MSPGT_SLURM_CPUS=<nproc, at least 2>  CPUs the node advertises (may exceed the real count)
#   MSPGT_SLURM_ACCOUNTING=1           0: no slurmdbd/MariaDB (then sacct fails, see mspgt/cluster/watchdog.py)
#   MSPGT_SLURM_PORT=16817             slurmctld port; slurmd, slurmdbd and MariaDB use the next three
set -euo pipefail

DIR="${MSPGT_SLURM_DIR:-/tmp/mspgt-slurm}"
CLUSTER=mspgt-dev
PORT="${MSPGT_SLURM_PORT:-16817}"
ACCOUNTING="${MSPGT_SLURM_ACCOUNTING:-1}"
CONF="$DIR/etc/slurm.conf"
export SLURM_CONF="$CONF"
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "[slurm-dev] $*" >&2; }
die() { echo "[slurm-dev] error: $*" >&2; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s; fails after SECONDS.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      die "$what not ready after ${limit}s (logs: $DIR/log)"
    fi
    sleep 0.2
  done
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_daemon NAME PIDFILE: TERM, wait up to 10 s, then KILL.
stop_daemon() {
  local name=$1 pidfile=$2 pid i
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name ($pid) ignored TERM for 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
}

need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "$c not found: run \`bash launch/install_slurm.sh\` first"
  done
}

cluster_up() { timeout 10 sinfo -h -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; }

write_configs() {
  local cpus mem_mb user
  cpus="${MSPGT_SLURM_CPUS:-$(nproc)}"
  [ "$cpus" -ge 2 ] || cpus=2   # two one-CPU jobs at once (the tests' concurrent-cache case) even on one core
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 9 / 10 / 1024 ))
  user="$(id -un)"
  mkdir -p "$DIR"/{etc,log,run,state,spool,munge,mysql}
  chmod 755 "$DIR" "$DIR/munge"   # munged refuses a socket folder that is not 755
  {
    echo "# written by launch/slurm_dev_cluster.sh"
    echo "ClusterName=$CLUSTER"
    echo "SlurmctldHost=localhost"
    echo "SlurmctldPort=$PORT"
    echo "SlurmdPort=$((PORT + 1))"
    echo "SlurmUser=$user"
    echo "SlurmdUser=$user"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    # cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
    echo "AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10"
    echo "StateSaveLocation=$DIR/state"
    echo "SlurmdSpoolDir=$DIR/spool"
    echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
    echo "SlurmdPidFile=$DIR/run/slurmd.pid"
    echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
    echo "SlurmdLogFile=$DIR/log/slurmd.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core_Memory"
    echo "DefMemPerCPU=1024"
    # a job asking more than the partition has is refused at submission (else it pends forever)
    echo "EnforcePartLimits=ALL"
    echo "SlurmdParameters=config_overrides"
    echo "ReturnToService=2"
    echo "MpiDefault=none"
    echo "MailProg=/bin/true"
    # fast scheduling and a short SIGTERM->SIGKILL grace: tests of requeue stay short
    echo "SchedulerType=sched/backfill"
    echo "SchedulerParameters=sched_interval=2,bf_interval=2"
    echo "KillWait=5"
    if [ "$ACCOUNTING" = "1" ]; then
      echo "AccountingStorageType=accounting_storage/slurmdbd"
      echo "AccountingStorageHost=localhost"
      echo "AccountingStoragePort=$((PORT + 2))"
      echo "AccountingStoragePass=$DIR/munge/munge.socket"
    else
      echo "AccountingStorageType=accounting_storage/none"
    fi
    echo "NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$CONF"
  if [ "$ACCOUNTING" = "1" ]; then
    {
      echo "AuthType=auth/munge"
      echo "AuthInfo=socket=$DIR/munge/munge.socket"
      echo "DbdHost=localhost"
      echo "DbdPort=$((PORT + 2))"
      echo "SlurmUser=$user"
      echo "PidFile=$DIR/run/slurmdbd.pid"
      echo "LogFile=$DIR/log/slurmdbd.log"
      echo "StorageType=accounting_storage/mysql"
      echo "StorageHost=127.0.0.1"
      echo "StoragePort=$((PORT + 3))"
      echo "StorageUser=root"
      echo "StorageLoc=slurm_acct_db"
    } > "$DIR/etc/slurmdbd.conf"
    chmod 600 "$DIR/etc/slurmdbd.conf"
  fi
}

start_munge() {
  alive "$DIR/run/munged.pid" && return 0
  [ -f "$DIR/etc/munge.key" ] || mungekey --create --keyfile="$DIR/etc/munge.key" >/dev/null 2>&1
  chmod 600 "$DIR/etc/munge.key"
  munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/etc/munge.key" \
    --pid-file="$DIR/run/munged.pid" --seed-file="$DIR/run/munge.seed" --log-file="$DIR/log/munged.log" \
    --force
  wait_for 10 munged test -S "$DIR/munge/munge.socket"
  say "munged up"
}

start_accounting() {
  [ "$ACCOUNTING" = "1" ] || return 0
  if ! alive "$DIR/run/mariadbd.pid"; then
    if [ ! -d "$DIR/mysql/mysql" ]; then
      mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user="$(id -un)" \
        --auth-root-authentication-method=normal --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed (log: $DIR/log/mariadb-install.log)"
    fi
    setsid mariadbd --no-defaults --datadir="$DIR/mysql" --socket="$DIR/run/mysqld.sock" \
      --pid-file="$DIR/run/mariadbd.pid" --port=$((PORT + 3)) --bind-address=127.0.0.1 \
      --skip-grant-tables --user="$(id -un)" --innodb-buffer-pool-size=32M --skip-log-bin \
      --log-error="$DIR/log/mariadbd.log" </dev/null >/dev/null 2>&1 &
    wait_for 30 MariaDB test -S "$DIR/run/mysqld.sock"
    say "mariadbd up"
  fi
  if ! alive "$DIR/run/slurmdbd.pid"; then
    slurmdbd
    wait_for 30 slurmdbd timeout 5 sacctmgr -n list cluster
    say "slurmdbd up"
  fi
  if ! timeout 10 sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    timeout 10 sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

start_slurm() {
  if ! alive "$DIR/run/slurmctld.pid"; then
    slurmctld
    wait_for 30 slurmctld timeout 5 scontrol ping
    say "slurmctld up"
  fi
  if ! alive "$DIR/run/slurmd.pid"; then
    slurmd -N localhost
    say "slurmd up"
  fi
  wait_for 60 "the node (sinfo idle)" cluster_up
}

cmd_start() {
  need munged mungekey slurmctld slurmd sinfo scontrol
  [ "$ACCOUNTING" = "1" ] && need mariadbd mariadb-install-db slurmdbd sacctmgr
  if alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid" && cluster_up; then
    say "already running ($DIR)"
  else
    write_configs
    start_munge
    start_accounting
    start_slurm
    say "up: $(sinfo -h -o '%P %D %c CPUs %m MB %t')"
  fi
  echo "export SLURM_CONF=$CONF"
}

cmd_stop() {
  stop_daemon slurmd "$DIR/run/slurmd.pid"
  stop_daemon slurmctld "$DIR/run/slurmctld.pid"
  stop_daemon slurmdbd "$DIR/run/slurmdbd.pid"
  stop_daemon mariadbd "$DIR/run/mariadbd.pid"
  stop_daemon munged "$DIR/run/munged.pid"
}

cmd_status() {
  local name up=0
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if alive "$DIR/run/$name.pid"; then
      say "$name running (pid $(cat "$DIR/run/$name.pid"))"
    fi
  done
  if [ -f "$CONF" ] && cluster_up; then
    sinfo >&2
    echo "export SLURM_CONF=$CONF"
  else
    say "not running"
    up=1
  fi
  return $up
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  clean) cmd_stop; rm -rf "$DIR"; say "removed $DIR" ;;
  *) echo "usage: $0 start|stop|status|clean" >&2; exit 2 ;;
esac
