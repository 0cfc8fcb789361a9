#!/usr/bin/env bash
# coinpay's benchmarks, one command:
#
#   scripts/bench.sh              # SQLite and MariaDB
#   scripts/bench.sh sqlite       # one backend
#   scripts/bench.sh mysql -- --concurrency 8 --notify-paid-count 20000   # options after --
#   scripts/bench.sh galera       # a three-node Galera cluster (scripts/galera.sh), two instances
#                                 # on two nodes: db-baseline and notify-paid (3000 by default)
#
# Builds in release mode (cargo bench), starts a private MariaDB (only when measuring it) and
# Redis on free loopback ports in a fresh temp dir (scripts/services.sh, like scripts/test.sh),
# runs benches/coinpay_bench/ with --bench (it starts `target/release/coinpay serve --sandbox`
# itself on 127.0.0.1:0, restarts it once, stops it), stops the servers and prints one table.
# The report is also written to target/bench-report.md. Exit status: the benchmark's (non-zero on
# an error reply or a ledger invariant violation).
# Options of the benchmark: scripts/bench.sh sqlite -- --help
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SERVICES=$ROOT/scripts/services.sh
SAY_TAG=bench.sh
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

BACKEND=both
case ${1:-} in
  sqlite|mysql|both|galera) BACKEND=$1; shift ;;
  ""|--) ;;
  *) echo "usage: $0 [sqlite|mysql|both|galera] [-- benchmark options]" >&2; exit 2 ;;
esac
[[ ${1:-} == -- ]] && shift
EXTRA=("$@")

SVC_DIR=
GALERA_DIR=
# shellcheck disable=SC2317  # (called through the trap)
cleanup() {
  if [[ -n $GALERA_DIR && -d $GALERA_DIR ]]; then
    # The nodes' error logs (conflicts are logged there) outlive the cluster.
    local keep=${TMPDIR:-/tmp}/coinpay-bench-galera-logs
    mkdir -p "$keep"
    for log in "$GALERA_DIR"/node*/error.log; do
      [[ -f $log ]] && cp "$log" "$keep/$(basename "$(dirname "$log")").error.log"
    done
    say "the Galera nodes' error logs are kept in $keep" >&2
    GALERA_DIR=$GALERA_DIR bash "$ROOT/scripts/galera.sh" clean 2>&1 | sed 's/^/  /' >&2
  fi
  if [[ -n $SVC_DIR && -d $SVC_DIR ]]; then
    SVC_DIR=$SVC_DIR bash "$SERVICES" clean 2>&1 | sed 's/^/  /' >&2
  fi
}
on_exit cleanup

say "building (release): cargo bench --bench coinpay_bench --no-run"
cargo bench --bench coinpay_bench --no-run

bash "$SERVICES" install
make_svc_dir coinpay-bench
export SVC_DIR
REDIS_PORT=$(random_port)
MY_PORT=$(random_port)
[[ $MY_PORT != "$REDIS_PORT" ]] || MY_PORT=$(random_port)
export REDIS_PORT MY_PORT
unset COINPAY_TEST_MYSQL_URL COINPAY_TEST_REDIS_HOST COINPAY_TEST_REDIS_PORT COINPAY_BENCH_MYSQL_URL

bash "$SERVICES" start-redis
export COINPAY_BENCH_REDIS_HOST=127.0.0.1 COINPAY_BENCH_REDIS_PORT=$REDIS_PORT
BENCH_ARGS=(--backend "$BACKEND")
if [[ $BACKEND == galera ]]; then
  # The cluster in a dir of its own (the nodes run as user mysql, which must reach it); the
  # service's URL names the three nodes, and the second instance starts from node 2.
  bash "$ROOT/scripts/galera.sh" install
  GALERA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/coinpay-galera.XXXXXX")
  chmod 755 "$GALERA_DIR"
  echo $$ >"$GALERA_DIR/owner.pid"
  GALERA_BASE_PORT=$(galera_base_port)
  export GALERA_DIR GALERA_BASE_PORT
  eval "$(bash "$ROOT/scripts/galera.sh" start)"
  export COINPAY_BENCH_MYSQL_URL=$COINPAY_TEST_GALERA_URL
  BENCH_ARGS=(--backend mysql --instances 2 --only db-baseline,notify-paid
              --db-baseline-count 3000 --notify-paid-count 3000)
elif [[ $BACKEND != sqlite ]]; then
  # Durable: InnoDB's log flushed at every commit, as a payment service runs it.
  MARIADB_DURABLE=1 bash "$SERVICES" start-mysql
  export COINPAY_BENCH_MYSQL_URL="mysql://coinpay:coinpay_pw@127.0.0.1:$MY_PORT/coinpay"
fi

# The durability settings the bench's MariaDB runs with, as the server reports them.
mariadb_settings() {
  mariadb --no-defaults --protocol=socket --socket="$SVC_DIR/run/mysqld.sock" -uroot -N -e \
    "SELECT CONCAT('innodb-flush-log-at-trx-commit=', @@innodb_flush_log_at_trx_commit,
                   ', sync-binlog=', @@sync_binlog, ', log-bin=', @@log_bin,
                   ', buffer pool ', @@innodb_buffer_pool_size DIV 1048576, 'M')" 2>/dev/null \
    || echo "settings unknown"
}

{
  echo "machine: $(nproc) cores, $(free -h | awk '/^Mem:/{print $2}') memory, $(uname -sr)"
  echo "disk:    $(df -h /work 2>/dev/null | awk 'NR==2{print $1" "$2" ("$5" used)"}')"
  case $BACKEND in
    sqlite) ;;
    galera) echo "mariadb: $(mariadbd --version | sed 's/ for .*//;s/  */ /g'), three-node Galera cluster on loopback (scripts/galera.sh: galera-4, rsync SST, innodb-flush-log-at-trx-commit=1), two coinpay instances on nodes 1 and 2" ;;
    *) echo "mariadb: $(mariadbd --version | sed 's/ for .*//;s/  */ /g') (scripts/services.sh: $(mariadb_settings))" ;;
  esac
  echo "redis:   $(redis-server --version | cut -d' ' -f3)"
  echo "command: scripts/bench.sh $BACKEND${EXTRA[*]:+ -- ${EXTRA[*]}}"
  echo
} | tee target/bench-report.md >&2

set +e
cargo bench --bench coinpay_bench -- "${BENCH_ARGS[@]}" "${EXTRA[@]}" | tee -a target/bench-report.md
RC=${PIPESTATUS[0]}
set -e
say "report written to target/bench-report.md"
exit "$RC"
