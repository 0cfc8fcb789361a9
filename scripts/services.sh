#!/usr/bin/env bash
# Throw-away MariaDB + Redis for coinpay's tests and local development: no systemd, loopback only,
# all data, sockets, pid files and logs under $SVC_DIR. Runs as root on Debian 12
# (mariadb-server 10.11, redis-server 7.0).
#
#   scripts/services.sh install       apt-get install the servers if missing (runs apt-get update first)
#   scripts/services.sh start         init the datadir if needed, start both, wait until ready,
#                                     create the database and the app user; prints the `env` lines
#   scripts/services.sh status        ping both (exit 1 if either is down)
#   scripts/services.sh env           print `export ...` lines (see below)
#   scripts/services.sh stop          clean shutdown (falls back to SIGTERM, then SIGKILL)
#   scripts/services.sh clean         stop + remove $SVC_DIR
#   scripts/services.sh start-mysql | stop-mysql | start-redis | stop-redis     one server only
#   scripts/services.sh galera CMD... a three-node Galera cluster: the same as scripts/galera.sh CMD
#                                     (start, stop, kill N, start-node N, env, clean ...; see there)
#
#   eval "$(scripts/services.sh start)"     # MYSQL_URL, REDIS_URL, COINPAY_TEST_* in this shell
#
# Settings (environment):
#   SVC_DIR      default ${TMPDIR:-/tmp}/coinpay-svc-$UID   (a fixed path, so `stop` finds what `start` started)
#   MY_PORT      default 13306        REDIS_PORT  default 16379
#   DB_NAME      default coinpay      DB_USER     default coinpay      DB_PASS default coinpay_pw
#   READY_TIMEOUT  seconds to wait for a server to answer (default 60)
#   MARIADB_EXTRA_ARGS  extra mariadbd arguments (word-split on purpose)
#   MARIADB_DURABLE     1: flush InnoDB's log at every commit (innodb-flush-log-at-trx-commit=1,
#                       and sync-binlog=1 should binary logging be turned on), what a payment
#                       service runs and what the benchmark measures (scripts/bench.sh sets it);
#                       else (tests) =2: an acknowledged commit can be lost on an OS crash
# `start` records the ports and credentials in $SVC_DIR/svc.conf; later commands given the same
# SVC_DIR (status, env, stop, start-redis, ...) take them from there unless set in the environment.
#
# The app user gets ALL PRIVILEGES ON *.*: this server is for tests only, and the tests create one
# database per test (coinpay_t_<random>). Nothing is written outside $SVC_DIR.
set -euo pipefail

# mariadbd lives in /usr/sbin, which a non-login environment may not have on PATH.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=/usr/sbin:/sbin:$PATH ;; esac

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
SAY_TAG=svc
# shellcheck source=scripts/lib.sh
source "$(dirname "$SELF")/lib.sh"

SVC_DIR=${SVC_DIR:-${TMPDIR:-/tmp}/coinpay-svc-$UID}
[[ $SVC_DIR == /* ]] || SVC_DIR=$PWD/$SVC_DIR
SVC_DIR=${SVC_DIR%/}
CONF=$SVC_DIR/svc.conf
MARKER=$SVC_DIR/.coinpay-svc

# Settings: environment > $SVC_DIR/svc.conf (written by start) > defaults.
CONF_KEYS=(MY_PORT REDIS_PORT DB_NAME DB_USER DB_PASS)
if [[ -f $CONF ]]; then
  while IFS='=' read -r k v; do
    for key in "${CONF_KEYS[@]}"; do
      if [[ $k == "$key" && -z ${!key:-} ]]; then printf -v "$key" '%s' "$v"; fi
    done
  done <"$CONF"
fi
MY_PORT=${MY_PORT:-13306}
REDIS_PORT=${REDIS_PORT:-16379}
DB_NAME=${DB_NAME:-coinpay}
DB_USER=${DB_USER:-coinpay}
DB_PASS=${DB_PASS:-coinpay_pw}
READY_TIMEOUT=${READY_TIMEOUT:-60}
MARIADB_EXTRA_ARGS=${MARIADB_EXTRA_ARGS:-}
if [[ ${MARIADB_DURABLE:-} == 1 ]]; then
  MY_FLUSH_ARGS="--innodb-flush-log-at-trx-commit=1 --sync-binlog=1"
else
  MY_FLUSH_ARGS="--innodb-flush-log-at-trx-commit=2"
fi

MY_DATA=$SVC_DIR/mysql
RUN=$SVC_DIR/run
MY_SOCK=$RUN/mysqld.sock
MY_PID=$RUN/mysqld.pid
RD_SOCK=$RUN/redis.sock
RD_PID=$RUN/redis.pid
LOG=$SVC_DIR/log

die() { say "ERROR: $*"; exit 1; }

for p in "$MY_PORT" "$REDIS_PORT"; do
  [[ $p =~ ^[0-9]+$ ]] && ((p > 0 && p < 65536)) || die "bad port '$p' (MY_PORT=$MY_PORT REDIS_PORT=$REDIS_PORT)"
done
[[ $DB_NAME =~ ^[A-Za-z0-9_]+$ && $DB_USER =~ ^[A-Za-z0-9_]+$ ]] || die "DB_NAME/DB_USER must be [A-Za-z0-9_]+"
[[ $DB_PASS != *"'"* && $DB_PASS != *"\\"* && $DB_PASS != *@* && $DB_PASS != *:* && $DB_PASS != */* ]] \
  || die "DB_PASS must not contain ' \\ @ : /"

# alive AND really the server we expect (a pid file may be stale and its pid reused by now).
alive_as() { alive "$1" && [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]]; }
read_pid() { local p; p=$(cat "$1" 2>/dev/null || true); if [[ $p =~ ^[0-9]+$ ]]; then echo "$p"; fi; }

# Wait until "$@" succeeds or READY_TIMEOUT seconds pass.
# Optional WATCH_PID: give up early if that process has already exited (bad config, port in use...).
wait_for() {
  local what=$1; shift
  local t0; t0=$(now_ms)
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { say "$what: not ready after ${READY_TIMEOUT}s"; return 1; }
    if [[ -n ${WATCH_PID:-} ]] && ! alive "$WATCH_PID"; then say "$what: process $WATCH_PID exited"; return 1; fi
    sleep 0.05
  done
  say "$what ready after $(( $(now_ms) - t0 )) ms"
}

my_admin() { mariadb-admin --no-defaults --protocol=socket --socket="$MY_SOCK" -uroot "$@"; }
# Root client over the private unix socket (root@localhost uses unix_socket auth after install-db).
# shellcheck disable=SC2120
my_root() { mariadb --no-defaults --protocol=socket --socket="$MY_SOCK" -uroot "$@"; }
my_up() { [[ -S $MY_SOCK ]] && my_admin ping >/dev/null 2>&1; }
rd_cli() { redis-cli -s "$RD_SOCK" "$@"; }
rd_up() { [[ -S $RD_SOCK && $(rd_cli ping 2>/dev/null) == PONG ]]; }
# Our own unix socket first (only our server can answer there), then the TCP port; `timeout`
# because redis-cli waits forever on a port held by something that is not redis.
rd_up_tcp() { rd_up && [[ $(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

tail_log() { # file [lines]
  [[ -s $1 ]] || return 0
  echo "----- last ${2:-30} lines of $1 -----" >&2
  tail -n "${2:-30}" "$1" >&2
  echo "-----" >&2
}

prepare_dir() {
  if [[ -e $SVC_DIR && ! -f $MARKER ]] && [[ -n $(ls -A "$SVC_DIR" 2>/dev/null) ]]; then
    die "$SVC_DIR exists, is not empty and was not made by this script; refusing to use it"
  fi
  mkdir -p "$SVC_DIR" "$RUN" "$LOG"
  touch "$MARKER"
  if ((${#MY_SOCK} > 100)); then die "SVC_DIR path too long for a unix socket: $MY_SOCK"; fi
}

save_conf() {
  local tmp=$CONF.tmp.$$ key
  for key in "${CONF_KEYS[@]}"; do printf '%s=%s\n' "$key" "${!key}"; done >"$tmp"
  mv -f "$tmp" "$CONF"
}

# Packages needed, one per command we run.
POLICY=/usr/sbin/policy-rc.d POLICY_ADDED=0
REQUIRED_CMDS=(mariadbd mariadb-install-db mariadb mariadb-admin redis-server redis-cli)
do_install() {
  local missing=() c
  for c in "${REQUIRED_CMDS[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  if ((${#missing[@]} == 0)); then
    say "already installed: $(mariadbd --version | sed 's/ for .*//;s/  */ /g'); $(redis-server --version | cut -d' ' -f1-3)"
    return 0
  fi
  say "missing: ${missing[*]}; installing mariadb-server mariadb-client redis-server redis-tools"
  ((EUID == 0)) || die "install needs root (apt-get)"
  # Without systemd, a package's postinst may try to start its service through invoke-rc.d
  # (MariaDB on port 3306...). A policy-rc.d that answers 101 forbids that; add one for the
  # duration of the install unless the machine already has one.
  if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY" && chmod 755 "$POLICY" && POLICY_ADDED=1
    trap 'if ((POLICY_ADDED)); then rm -f "$POLICY"; fi' EXIT
  fi
  local t0; t0=$(now_ms)
  # A fresh machine has no package lists: apt-get install fails without an update first.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq \
    || die "apt-get update failed"
  say "apt-get update took $(( $(now_ms) - t0 )) ms"
  t0=$(now_ms)
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
    mariadb-server mariadb-client redis-server redis-tools >"${TMPDIR:-/tmp}/coinpay-apt-install.$$.log" 2>&1 \
    || { tail_log "${TMPDIR:-/tmp}/coinpay-apt-install.$$.log" 40; die "apt-get install failed"; }
  rm -f "${TMPDIR:-/tmp}/coinpay-apt-install.$$.log"
  say "apt-get install took $(( $(now_ms) - t0 )) ms"
  if ((POLICY_ADDED)); then rm -f "$POLICY"; POLICY_ADDED=0; fi
  for c in "${REQUIRED_CMDS[@]}"; do command -v "$c" >/dev/null 2>&1 || die "still missing after install: $c"; done
  say "installed: $(mariadbd --version | sed 's/ for .*//;s/  */ /g'); $(redis-server --version | cut -d' ' -f1-3)"
}

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found; run: $SELF install"; }

start_mariadb() {
  need mariadbd; need mariadb-install-db; need mariadb; need mariadb-admin
  prepare_dir
  local pid; pid=$(read_pid "$MY_PID")
  if alive_as "$pid" mariadbd || my_up; then
    say "mariadb already running (pid ${pid:-?}, socket $MY_SOCK)"
  else
    if [[ ! -d $MY_DATA/mysql ]]; then
      say "initialising datadir $MY_DATA"
      rm -rf "$MY_DATA"
      local t0; t0=$(now_ms)
      # --no-defaults: ignore /etc/mysql/*.cnf (Debian's socket/pid paths under /run/mysqld)
      mariadb-install-db --no-defaults --user=root --datadir="$MY_DATA" \
        --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
        >"$LOG/install-db.log" 2>&1 || { tail_log "$LOG/install-db.log" 20; die "mariadb-install-db failed"; }
      say "mariadb-install-db took $(( $(now_ms) - t0 )) ms"
    fi
    rm -f "$MY_PID"   # stale after a crash / kill -9 (a stale socket file is replaced by mariadbd itself)
    say "starting mariadbd on 127.0.0.1:$MY_PORT (log $LOG/mariadbd.err)"
    # setsid + redirects: fully detached, does not hold the caller's stdout open.
    # shellcheck disable=SC2086
    setsid mariadbd --no-defaults --user=root --datadir="$MY_DATA" \
      --socket="$MY_SOCK" --pid-file="$MY_PID" --port="$MY_PORT" \
      --bind-address=127.0.0.1 --skip-name-resolve --log-error="$LOG/mariadbd.err" \
      --innodb-buffer-pool-size=64M $MY_FLUSH_ARGS --max-connections=500 \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
      $MARIADB_EXTRA_ARGS \
      </dev/null >>"$LOG/mariadbd.out" 2>&1 &
    local child=$!
    WATCH_PID=$child wait_for "mariadb" my_admin ping \
      || { tail_log "$LOG/mariadbd.out" 10; tail_log "$LOG/mariadbd.err" 30; kill -KILL "$child" 2>/dev/null || true
           die "mariadb did not become ready on port $MY_PORT (see $LOG/mariadbd.err)"; }
    # the pid file is written slightly after the socket opens on some versions
    wait_for "mariadb pid file" test -s "$MY_PID" || true
  fi
  my_root <<SQL || die "creating database/user failed"
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE OR REPLACE USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE OR REPLACE USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
  # TCP check with the app user, exactly like the app will connect
  mariadb --no-defaults --connect-timeout=10 --protocol=tcp -h127.0.0.1 -P"$MY_PORT" -u"$DB_USER" -p"$DB_PASS" "$DB_NAME" \
    -e 'SELECT 1' >/dev/null || die "app user cannot connect over TCP to 127.0.0.1:$MY_PORT"
  save_conf
  say "mariadb: 127.0.0.1:$MY_PORT db '$DB_NAME' user '$DB_USER' ok"
}

start_redis() {
  need redis-server; need redis-cli
  prepare_dir
  local pid; pid=$(read_pid "$RD_PID")
  if alive_as "$pid" redis-server || rd_up; then
    say "redis already running (pid ${pid:-?}, socket $RD_SOCK)"
    save_conf
    return 0
  fi
  mkdir -p "$SVC_DIR/redis"
  rm -f "$RD_PID"
  say "starting redis on 127.0.0.1:$REDIS_PORT (log $LOG/redis.log)"
  # --save '' + --appendonly no: pure in-memory. Not --daemonize: started like mariadbd (setsid,
  # detached, in the background) so that $! is the server and a failed start is noticed at once;
  # redis writes --pidfile all the same. The unix socket ties status/stop to this SVC_DIR
  # (never to whatever listens on a port).
  setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
    --unixsocket "$RD_SOCK" --unixsocketperm 700 \
    --save '' --appendonly no --dir "$SVC_DIR/redis" \
    --daemonize no --pidfile "$RD_PID" --logfile "$LOG/redis.log" \
    </dev/null >>"$LOG/redis.out" 2>&1 &
  local child=$!
  WATCH_PID=$child wait_for "redis" rd_up_tcp \
    || { tail_log "$LOG/redis.out" 10; tail_log "$LOG/redis.log" 20; kill -KILL "$child" 2>/dev/null || true
         die "redis did not become ready on port $REDIS_PORT (see $LOG/redis.log)"; }
  wait_for "redis pid file" test -s "$RD_PID" || true
  save_conf
}

# Graceful stop: read the pid FIRST (servers delete their own pid file on exit),
# ask politely, wait for the process to disappear, escalate to SIGTERM/SIGKILL.
stop_one() { # name comm pidfile up-check graceful-cmd...
  local name=$1 comm=$2 pf=$3 upcheck=$4; shift 4
  local pid; pid=$(read_pid "$pf")
  alive_as "$pid" "$comm" || pid=
  if [[ -z $pid ]] && ! $upcheck; then
    say "$name: not running"; rm -f "$pf"; return 0
  fi
  local t0; t0=$(now_ms)
  "$@" >/dev/null 2>&1 || { [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null; } || true
  if [[ -n $pid ]]; then
    for _ in $(seq 1 300); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then say "$name: SIGTERM $pid"; kill -TERM "$pid" 2>/dev/null || true; sleep 3; fi
    if alive "$pid"; then say "$name: SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    alive "$pid" && die "$name: pid $pid still alive"
  else
    # running but its pid file is gone: wait until it stops answering
    for _ in $(seq 1 300); do $upcheck || break; sleep 0.1; done
    $upcheck && die "$name: still answering after shutdown"
  fi
  rm -f "$pf"
  say "$name stopped (pid ${pid:-?}) in $(( $(now_ms) - t0 )) ms"
}

do_stop_mariadb() {
  command -v mariadb-admin >/dev/null 2>&1 || { local pid; pid=$(read_pid "$MY_PID")
    alive_as "$pid" mariadbd && kill -TERM "$pid"; }
  # SIGTERM is mariadbd's normal clean shutdown and, unlike `mariadb-admin shutdown` (which polls
  # once a second), lets us notice the exit at once; without a pid, ask over the socket.
  local pid; pid=$(read_pid "$MY_PID")
  if alive_as "$pid" mariadbd; then
    stop_one mariadb mariadbd "$MY_PID" my_up kill -TERM "$pid"
  else
    stop_one mariadb mariadbd "$MY_PID" my_up my_admin shutdown
  fi
}
do_stop_redis() {
  stop_one redis redis-server "$RD_PID" rd_up rd_cli shutdown nosave
}
do_stop() {
  [[ -d $SVC_DIR ]] || { say "$SVC_DIR does not exist: nothing to stop"; return 0; }
  local rc=0
  do_stop_mariadb || rc=1
  do_stop_redis || rc=1
  return $rc
}

do_status() {
  local rc=0 pid
  pid=$(read_pid "$MY_PID")
  if my_up; then echo "mariadb: up (pid ${pid:-?}, 127.0.0.1:$MY_PORT, socket $MY_SOCK)"
  else echo "mariadb: down"; rc=1; fi
  pid=$(read_pid "$RD_PID")
  if rd_up; then echo "redis: up (pid ${pid:-?}, 127.0.0.1:$REDIS_PORT, socket $RD_SOCK)"
  else echo "redis: down"; rc=1; fi
  return $rc
}

do_env() {
  local my_url="mysql://$DB_USER:$DB_PASS@127.0.0.1:$MY_PORT/$DB_NAME"
  printf 'export %s=%q\n' \
    SVC_DIR "$SVC_DIR" \
    COINPAY_SERVICES_SCRIPT "$SELF" \
    COINPAY_TEST_MYSQL_URL "$my_url" \
    COINPAY_TEST_REDIS_HOST 127.0.0.1 \
    COINPAY_TEST_REDIS_PORT "$REDIS_PORT" \
    MYSQL_URL "$my_url" \
    REDIS_URL "redis://127.0.0.1:$REDIS_PORT/"
}

do_clean() {
  do_stop
  if [[ -d $SVC_DIR ]]; then
    if [[ ! -f $MARKER && -n $(ls -A "$SVC_DIR") ]]; then
      die "$SVC_DIR was not made by this script; not removing it"
    fi
    rm -rf "$SVC_DIR"
    say "removed $SVC_DIR"
  fi
}

case ${1:-} in
  galera)      shift; exec bash "$(dirname "$SELF")/galera.sh" "$@" ;;
  install)     do_install ;;
  start)       start_mariadb; start_redis; do_env ;;
  start-mysql) start_mariadb ;;
  start-redis) start_redis ;;
  stop)        do_stop ;;
  stop-mysql)  do_stop_mariadb ;;
  stop-redis)  do_stop_redis ;;
  status)      do_status ;;
  env)         do_env ;;
  clean)       do_clean ;;
  *) echo "usage: $0 install|start|stop|status|env|clean|start-mysql|stop-mysql|start-redis|stop-redis" >&2
     exit 2 ;;
esac
