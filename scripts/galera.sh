#!/usr/bin/env bash
# A throw-away three-node MariaDB Galera cluster on loopback, for coinpay's high-availability tests
# and the Galera benchmark. No systemd: three `mariadbd` processes with `wsrep_on=ON`, the galera-4
# provider, rsync state transfers, all data, sockets and logs under $GALERA_DIR.
#
#   scripts/galera.sh install          apt-get install mariadb-server, galera-4, rsync and iproute2 if missing
#   scripts/galera.sh start            bootstrap node 1 (--wsrep-new-cluster), join nodes 2 and 3, wait
#                                      until all three are Synced in one primary component, create the
#                                      database and the app user; prints `export ...` lines
#   scripts/galera.sh env              print the `export ...` lines again
#   scripts/galera.sh status           each node's wsrep_local_state_comment and cluster size
#   scripts/galera.sh kill N           SIGKILL node N (1..3), as a crashed server
#   scripts/galera.sh start-node N     start node N again: it rejoins the running cluster (IST or SST)
#   scripts/galera.sh wait-synced N    wait until node N is Synced and the cluster has 3 members
#   scripts/galera.sh stop             stop every node; clean   stop and remove $GALERA_DIR
#
# Exported by start/env: COINPAY_TEST_GALERA_URLS (three mysql:// URLs, space separated, one per
# node), COINPAY_TEST_GALERA_URL (one multi-host URL naming all three), GALERA_DIR.
#
# Settings: GALERA_DIR (default ${TMPDIR:-/tmp}/coinpay-galera-$UID), GALERA_BASE_PORT (default
# 23306: node N listens for clients on BASE+N-1, for Galera replication on BASE+100+N-1, for IST on
# BASE+200+N-1 and for SST on BASE+300+N-1; recorded in $GALERA_DIR/base_port by `start`, so that
# later commands on the same dir use the cluster's ports without it), READY_TIMEOUT (seconds,
# default 120).
# Durable settings: innodb_flush_log_at_trx_commit=1, as a payment service runs.
set -euo pipefail
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=/usr/sbin:/sbin:$PATH ;; esac

GALERA_DIR=${GALERA_DIR:-${TMPDIR:-/tmp}/coinpay-galera-$UID}
GALERA_DIR=${GALERA_DIR%/}
if [[ -z ${GALERA_BASE_PORT:-} && -f $GALERA_DIR/base_port ]]; then
  GALERA_BASE_PORT=$(<"$GALERA_DIR/base_port")
fi
BASE=${GALERA_BASE_PORT:-23306}
READY_TIMEOUT=${READY_TIMEOUT:-120}
DB_NAME=${DB_NAME:-coinpay}
DB_USER=${DB_USER:-coinpay}
DB_PASS=${DB_PASS:-coinpay_pw}
NODES=(1 2 3)

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # alive
log() { printf '[galera %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

client_port() { echo $((BASE + $1 - 1)); }
gcomm_port() { echo $((BASE + 100 + $1 - 1)); }
ist_port() { echo $((BASE + 200 + $1 - 1)); }
sst_port() { echo $((BASE + 300 + $1 - 1)); }
node_dir() { echo "$GALERA_DIR/node$1"; }
sock() { echo "$(node_dir "$1")/mysqld.sock"; }
pidfile() { echo "$(node_dir "$1")/mysqld.pid"; }

provider() {
  local p
  for p in /usr/lib/galera/libgalera_smm.so /usr/lib/libgalera_smm.so /usr/lib/x86_64-linux-gnu/galera/libgalera_smm.so; do
    [[ -f $p ]] && { echo "$p"; return; }
  done
  die "no galera provider library found (scripts/galera.sh install)"
}

node_pid() { local p; p=$(cat "$(pidfile "$1")" 2>/dev/null || true); [[ $p =~ ^[0-9]+$ ]] && echo "$p"; }

sql() { # node, sql...
  local n=$1; shift
  mariadb --no-defaults --protocol=socket --socket="$(sock "$n")" -uroot -N -B -e "$*"
}
wsrep() { sql "$1" "SHOW GLOBAL STATUS LIKE '$2'" 2>/dev/null | awk '{print $2}'; }

write_cnf() {
  local n=$1 d
  d=$(node_dir "$n")
  mkdir -p "$d"
  local addrs="gcomm://127.0.0.1:$(gcomm_port 1),127.0.0.1:$(gcomm_port 2),127.0.0.1:$(gcomm_port 3)"
  cat >"$d/my.cnf" <<EOF
[mariadbd]
user=mysql
datadir=$d/data
socket=$(sock "$n")
pid-file=$(pidfile "$n")
port=$(client_port "$n")
bind-address=127.0.0.1
log-error=$d/error.log
skip-name-resolve
innodb_buffer_pool_size=128M
innodb_log_file_size=64M
innodb_flush_log_at_trx_commit=1
max_connections=500
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider=$(provider)
wsrep_cluster_name=coinpay_test
wsrep_cluster_address=$addrs
wsrep_node_name=node$n
wsrep_node_address=127.0.0.1:$(gcomm_port "$n")
wsrep_provider_options="base_host=127.0.0.1;base_port=$(gcomm_port "$n");ist.recv_addr=127.0.0.1:$(ist_port "$n");gcache.size=64M;cert.log_conflicts=yes"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:$(sst_port "$n")
wsrep_slave_threads=2
# What a conflict was on, in error.log: a certification failure or a brute-force abort
# (reported to the client as a deadlock) names the tables and keys.
wsrep_log_conflicts=ON
innodb_print_all_deadlocks=ON
EOF
}

start_node() { # n [--wsrep-new-cluster]
  local n=$1 extra=${2:-} d
  d=$(node_dir "$n")
  local pid
  pid=$(node_pid "$n" || true)
  if [[ -n $pid ]] && alive "$pid"; then log "node $n already running (pid $pid)"; return; fi
  write_cnf "$n"
  # rsync's SST daemon cannot run as root without dropping to `nobody`: the nodes run as mysql.
  id mysql >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin mysql
  chown -R mysql:mysql "$d"
  if [[ ! -d $d/data/mysql ]]; then
    # Once in a while (seen once in dozens of boots, cause not found in its log) it fails on a
    # fresh datadir; trying again on a clean one costs a second.
    local try
    for try in 1 2 3; do
      mariadb-install-db --defaults-file="$d/my.cnf" --user=mysql --auth-root-authentication-method=socket >"$d/install.log" 2>&1 && break
      if ((try == 3)); then
        grep -iE "error|warn" "$d/install.log" | head -10 >&2
        tail -20 "$d/install.log" >&2
        die "mariadb-install-db failed for node $n"
      fi
      log "mariadb-install-db failed for node $n (try $try): $(grep -iE 'error' "$d/install.log" | head -1); trying again on a clean datadir"
      rm -rf "$d/data"
      sleep 1
    done
  fi
  rm -f "$(sock "$n")"
  # shellcheck disable=SC2086
  setsid mariadbd --defaults-file="$d/my.cnf" $extra >>"$d/stdout.log" 2>&1 </dev/null &
  echo $! >"$d/launcher.pid"
  log "node $n started (clients on $(client_port "$n"))"
}

wait_synced() {
  local n=$1 deadline=$((SECONDS + READY_TIMEOUT))
  until [[ $(wsrep "$n" wsrep_local_state_comment) == Synced && $(wsrep "$n" wsrep_cluster_size) == "${2:-3}" ]]; do
    if ((SECONDS > deadline)); then
      tail -30 "$(node_dir "$n")/error.log" >&2 || true
      die "node $n not Synced after ${READY_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "node $n Synced (cluster size ${2:-3})"
}

urls() {
  local out=() n
  for n in "${NODES[@]}"; do out+=("mysql://$DB_USER:$DB_PASS@127.0.0.1:$(client_port "$n")/$DB_NAME"); done
  echo "${out[*]}"
}
env_lines() {
  echo "export GALERA_DIR='$GALERA_DIR'"
  echo "export COINPAY_TEST_GALERA_URLS='$(urls)'"
  echo "export COINPAY_TEST_GALERA_URL='mysql://$DB_USER:$DB_PASS@127.0.0.1:$(client_port 1),127.0.0.1:$(client_port 2),127.0.0.1:$(client_port 3)/$DB_NAME'"
}

stop_all() {
  local n pid
  for n in 3 2 1; do
    pid=$(node_pid "$n" || true)
    [[ -n $pid ]] && alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
  done
  local deadline=$((SECONDS + 60))
  for n in 3 2 1; do
    pid=$(node_pid "$n" || true)
    while [[ -n $pid ]] && alive "$pid"; do
      if ((SECONDS > deadline)); then kill -KILL "$pid" 2>/dev/null || true; fi
      sleep 0.1
    done
  done
  log "stopped"
}

cmd=${1:-}
case $cmd in
  install)
    # rsync state transfers need rsync, and `ss` (iproute2) for the SST script to watch its port.
    if ! command -v mariadbd >/dev/null || [[ -z $(provider 2>/dev/null) ]] \
      || ! command -v rsync >/dev/null || ! command -v ss >/dev/null; then
      ((EUID == 0)) || die "install needs root (apt-get)"
      export DEBIAN_FRONTEND=noninteractive
      apt-get -o DPkg::Lock::Timeout=300 update -qq
      apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        mariadb-server mariadb-client galera-4 rsync iproute2 >/dev/null
    fi
    log "installed: $(mariadbd --version 2>/dev/null | head -1); provider $(provider)"
    ;;
  start)
    mkdir -p "$GALERA_DIR"
    echo "$BASE" >"$GALERA_DIR/base_port"
    start_node 1 --wsrep-new-cluster
    wait_synced 1 1
    start_node 2
    wait_synced 2 2
    start_node 3
    wait_synced 3 3
    sql 1 "CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
           CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASS';
           CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
           GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'%';
           GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost';"
    env_lines
    ;;
  env) env_lines ;;
  status)
    for n in "${NODES[@]}"; do
      echo "node $n: $(wsrep "$n" wsrep_local_state_comment || echo down) size=$(wsrep "$n" wsrep_cluster_size || echo -)"
    done
    ;;
  kill)
    n=${2:?node}
    pid=$(node_pid "$n") || die "node $n has no pid"
    kill -KILL "$pid"
    while alive "$pid"; do sleep 0.05; done
    log "node $n killed (pid $pid)"
    ;;
  start-node) start_node "${2:?node}" ;;
  wait-synced) wait_synced "${2:?node}" "${3:-3}" ;;
  stop) stop_all ;;
  clean) stop_all; rm -rf "$GALERA_DIR" ;;
  *) sed -n '2,24p' "$0" >&2; exit 2 ;;
esac
