# shellcheck shell=bash
# Shell helpers shared by scripts/test.sh, scripts/services.sh and scripts/bench.sh.
#
#   SAY_TAG=test.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sourcing it defines functions only: it sets no shell option, starts nothing and traps nothing.

# say MESSAGE...: a timestamped line on stderr, tagged with $SAY_TAG (else the script's name).
say() { printf '[%s %s] %s\n' "${SAY_TAG:-${0##*/}}" "$(date +%T)" "$*" >&2; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# alive PID: the process exists and is not a zombie. (In containers PID 1 is often not a real
# init and reaps orphaned daemons late, so `kill -0` alone keeps "seeing" exited servers.)
alive() {
  [[ ${1:-} =~ ^[0-9]+$ ]] || return 1
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }               # fields after "pid (comm) "
  [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# port_free PORT: 127.0.0.1:PORT can be bound now. random_port: a port that is free now.
port_free() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}
random_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# galera_base_port: a base port for scripts/galera.sh (GALERA_BASE_PORT) whose twelve ports
# (clients, replication, IST and SST of three nodes: BASE+{0,1,2}, +10x, +20x, +30x) are free
# now, below the ephemeral range so that no outgoing connection takes one meanwhile.
galera_base_port() {
  local base off ok _
  for _ in $(seq 20); do
    base=$(( 20000 + RANDOM % 8000 )) ok=1
    for off in 0 1 2 100 101 102 200 201 202 300 301 302; do
      port_free $((base + off)) || { ok=0; break; }
    done
    ((ok)) && { echo "$base"; return 0; }
  done
  echo 23306
}

# make_svc_dir PREFIX: sets SVC_DIR to a fresh $TMPDIR/PREFIX.XXXXXX for scripts/services.sh,
# marked as made by it, with this script's pid as its owner (a later run cleans up the
# directories whose owner is gone).
make_svc_dir() {
  SVC_DIR=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  echo $$ >"$SVC_DIR/owner.pid"
  touch "$SVC_DIR/.coinpay-svc"
}

# on_exit FUNCTION: run FUNCTION once when the script ends, however it ends (normal exit, an
# error under `set -e`, Ctrl-C, SIGTERM, SIGHUP), with the exit status as its argument. Signals
# are ignored while it runs (a second Ctrl-C must not interrupt a shutdown), `set -e` is off,
# and the script then exits with that status.
on_exit() {
  _LIB_ON_EXIT=$1
  trap _lib_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}
# shellcheck disable=SC2317  # (called through the trap)
_lib_exit() {
  local rc=$?
  trap - EXIT
  trap '' INT TERM HUP
  set +e
  "$_LIB_ON_EXIT" "$rc"
  exit "$rc"
}
