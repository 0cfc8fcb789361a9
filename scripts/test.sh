#!/usr/bin/env bash
# THE one command that runs coinpay's whole test suite, on a dev machine or a fresh CI machine:
#
#   scripts/test.sh                      # everything
#   scripts/test.sh -- --nocapture       # extra arguments go to `cargo test --all-targets`
#   scripts/test.sh some_test_name       # ... e.g. a test name filter
#
# What it does:
#   1. installs MariaDB + Redis if missing (scripts/services.sh install: apt-get),
#   2. builds/reuses a Python venv in target/pyenv with wechatpy==1.8.18 + cryptography,
#   3. starts a private MariaDB and Redis in a fresh temp dir, on loopback, on free ports, and a
#      three-node Galera cluster (scripts/galera.sh; galera-4 and rsync installed through apt)
#      in the background: it boots while the rest is set up and the tests compile,
#   4. exports the COINPAY_TEST_* variables (below) and runs `cargo test --all-targets "$@"`,
#   5. always stops the servers and removes the temp dir on exit (success, failure, Ctrl-C),
#      and exits with cargo's status.
#
# Variables the tests see:
#   COINPAY_TEST_MYSQL_URL     mysql://coinpay:coinpay_pw@127.0.0.1:PORT/coinpay   (user has ALL ON *.*)
#   COINPAY_TEST_REDIS_HOST    127.0.0.1
#   COINPAY_TEST_REDIS_PORT    PORT
#   COINPAY_SERVICES_SCRIPT    abs path of scripts/services.sh; `"$COINPAY_SERVICES_SCRIPT" stop-redis`
#                              / `start-redis` stop and restart this run's Redis (same port). Tests run
#                              in parallel, so a test that stops Redis had better use a private one:
#                              SVC_DIR=$SVC_DIR/<name> REDIS_PORT=<free port> "$COINPAY_SERVICES_SCRIPT"
#                              start-redis | stop-redis | clean  (sub-dirs of $SVC_DIR are stopped at exit)
#   SVC_DIR                    this run's service dir (the services script needs it)
#   COINPAY_TEST_GALERA_URLS   three mysql:// URLs (one per node) of a three-node Galera cluster
#   COINPAY_TEST_GALERA_URL    one multi-host URL naming all three nodes
#   GALERA_DIR, COINPAY_GALERA_SCRIPT   the cluster's dir and scripts/galera.sh (kill N, start-node N)
#   COINPAY_TEST_PYTHON        python of the venv that has wechatpy + cryptography
#   COINPAY_REQUIRE_SERVICES=1 (CI) a test must fail, not skip, when one of the above is missing
#   MYSQL_URL, REDIS_URL       the same servers, for humans
# A variable is left unset when its service could not be provided (only possible outside CI).
#
# CI=true (or COINPAY_REQUIRE_SERVICES=1): failing to install/start MariaDB or Redis or to build the
# venv is a hard error. Otherwise it is a loud warning and the tests skip those parts.
#
# Knobs: MY_PORT / REDIS_PORT (else 13306 / 16379 when free, else random free ports),
#        COINPAY_TEST_CARGO (default cargo; e.g. COINPAY_TEST_CARGO=echo to test this script),
#        COINPAY_KEEP_SVC=1 (leave the servers running and the temp dir in place at exit).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SERVICES=$ROOT/scripts/services.sh
SAY_TAG=test.sh
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
CARGO_CMD=${COINPAY_TEST_CARGO:-cargo}
PYENV_DIR=$ROOT/target/pyenv
PY_REQS=(wechatpy==1.8.18 cryptography)
TMP_BASE=${TMPDIR:-/tmp}
T_START=$SECONDS

case ${CI:-} in [Tt]rue|1|[Yy]es) CI=true ;; esac
STRICT=0
if [[ ${CI:-} == true || ${COINPAY_REQUIRE_SERVICES:-} == 1 ]]; then STRICT=1; fi
if ((STRICT)); then export COINPAY_REQUIRE_SERVICES=1; fi
if [[ ${CI:-} == true ]]; then export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}; fi

warn_loud() {
  {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! WARNING: $*"
    echo "!!!          The tests that need it will be SKIPPED (CI=true makes this an error)."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
  } >&2
}
# A required piece is missing: fatal in strict mode, a loud warning otherwise.
missing() {
  if ((STRICT)); then
    say "FATAL: $* (CI=true / COINPAY_REQUIRE_SERVICES=1: services are required, not optional)"
    exit 1
  fi
  warn_loud "$*"
}

# ---------------------------------------------------------------------------------------------
# Cleanup: always stop this run's servers and remove its temp dir.
SVC_DIR=
CARGO_RC=
CARGO_STARTED=0
# shellcheck disable=SC2317  # (called through the trap)
cleanup() {
  local rc=$1
  if [[ -n ${GALERA_PID:-} ]] && alive "$GALERA_PID"; then kill -TERM "$GALERA_PID" 2>/dev/null; wait "$GALERA_PID" 2>/dev/null; fi
  if [[ -n ${GALERA_DIR:-} && -d $GALERA_DIR && ${COINPAY_KEEP_SVC:-} != 1 ]]; then
    GALERA_DIR=$GALERA_DIR bash "$ROOT/scripts/galera.sh" clean 2>&1 | sed 's/^/  /' >&2
  fi
  if [[ -n $SVC_DIR && -d $SVC_DIR ]]; then
    if [[ ${COINPAY_KEEP_SVC:-} == 1 ]]; then
      say "COINPAY_KEEP_SVC=1: leaving the servers running in $SVC_DIR (stop: SVC_DIR=$SVC_DIR $SERVICES clean)"
    else
      local pids=() f d
      for f in "$SVC_DIR"/run/*.pid "$SVC_DIR"/*/run/*.pid; do [[ -f $f ]] && pids+=("$(cat "$f")"); done
      # private servers that tests started in sub-dirs of $SVC_DIR, then this run's servers
      for d in "$SVC_DIR"/*/; do
        [[ -f $d/.coinpay-svc ]] && SVC_DIR=${d%/} bash "$SERVICES" stop 2>&1 | sed 's/^/  /' >&2
      done
      SVC_DIR=$SVC_DIR bash "$SERVICES" stop 2>&1 | sed 's/^/  /' >&2
      # keep the server logs of a failed run
      if [[ $rc != 0 && -d $SVC_DIR/log ]]; then
        rm -rf "$ROOT/target/test-svc-logs" && mkdir -p "$ROOT/target" \
          && cp -r "$SVC_DIR/log" "$ROOT/target/test-svc-logs" \
          && say "server logs kept in target/test-svc-logs/"
      fi
      rm -rf "$SVC_DIR"
      # The stopped servers are orphans that PID 1 may reap only a little later: wait (<= 5 s)
      # until they are gone, so that nothing, not even a zombie, outlives this script.
      local p deadline=$((SECONDS + 5))
      for p in "${pids[@]}"; do
        while [[ -e /proc/$p ]] && ((SECONDS < deadline)); do
          if alive "$p"; then say "pid $p still alive, SIGKILL"; kill -KILL "$p" 2>/dev/null; fi
          sleep 0.1
        done
      done
    fi
  fi
  if [[ -n $CARGO_RC ]]; then
    say "done in $((SECONDS - T_START)) s: cargo test exited with $CARGO_RC"
  elif ((CARGO_STARTED)); then
    say "INTERRUPTED (exit $rc) while cargo test was running"
  elif [[ $rc != 0 ]]; then
    say "FAILED (exit $rc) before cargo test ran"
  fi
}
on_exit cleanup

# Servers of earlier runs that were killed hard (kill -9 of this script): their owner is gone.
for d in "$TMP_BASE"/coinpay-test.*; do
  [[ -d $d && -f $d/owner.pid ]] || continue
  alive "$(cat "$d/owner.pid" 2>/dev/null)" && continue
  say "cleaning up leftovers of an earlier run in $d"
  SVC_DIR=$d bash "$SERVICES" clean >/dev/null 2>&1 || true
done
for d in "$TMP_BASE"/coinpay-galera.*; do
  [[ -d $d && -f $d/owner.pid ]] || continue
  alive "$(cat "$d/owner.pid" 2>/dev/null)" && continue
  say "cleaning up the Galera cluster of an earlier run in $d"
  GALERA_DIR=$d bash "$ROOT/scripts/galera.sh" clean >/dev/null 2>&1 || true
done

# ---------------------------------------------------------------------------------------------
# 1. MariaDB + Redis installed?
SERVICES_OK=1
t0=$(now_ms)
if ! bash "$SERVICES" install; then
  SERVICES_OK=0
  missing "could not install MariaDB/Redis (scripts/services.sh install failed)"
fi
say "install check: $(( $(now_ms) - t0 )) ms"

# The Galera cluster (three nodes, about 35 s) boots in the background while the rest is set up
# and the tests are compiled (step 5 waits for it), so that it adds next to nothing to the run.
# Ports: a base below the ephemeral range whose twelve ports are free (lib.sh galera_base_port).
GALERA_PID=
unset COINPAY_TEST_GALERA_URLS COINPAY_TEST_GALERA_URL COINPAY_GALERA_SCRIPT GALERA_DIR
if ((SERVICES_OK)) && bash "$ROOT/scripts/galera.sh" install; then
  # Its own dir, not under $SVC_DIR (mode 700): the nodes run as user mysql, which must reach it.
  GALERA_DIR=$(mktemp -d "$TMP_BASE/coinpay-galera.XXXXXX")
  chmod 755 "$GALERA_DIR"
  echo $$ >"$GALERA_DIR/owner.pid"
  GALERA_BASE_PORT=$(galera_base_port)
  export GALERA_DIR GALERA_BASE_PORT
  GALERA_T0=$(now_ms)
  bash "$ROOT/scripts/galera.sh" start >"$GALERA_DIR/env.sh" 2>"$GALERA_DIR/start.log" &
  GALERA_PID=$!
else
  missing "could not install Galera (scripts/galera.sh install failed)"
fi
# >>> browser for tests/console.rs (scripts/browser.sh: Debian's chromium + chromium-driver)
if bash "$ROOT/scripts/browser.sh" install; then eval "$(bash "$ROOT/scripts/browser.sh" env)"
else missing "could not install chromium/chromium-driver (scripts/browser.sh install failed)"; fi
# <<< browser

# ---------------------------------------------------------------------------------------------
# 2. Python venv with wechatpy (reused between runs; rebuilt when missing, broken or outdated).
venv_ok() {
  [[ -x $PYENV_DIR/bin/python && -f $PYENV_DIR/.coinpay-reqs ]] \
    && [[ $(cat "$PYENV_DIR/.coinpay-reqs") == "${PY_REQS[*]}" ]] \
    && "$PYENV_DIR/bin/python" -c 'import wechatpy, wechatpy.pay, wechatpy.crypto, cryptography' >/dev/null 2>&1
}
make_venv() {
  local py
  rm -rf "$PYENV_DIR"
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" -m venv "$PYENV_DIR" >"$ROOT/target/pyenv-install.log" 2>&1 && return 0
    rm -rf "$PYENV_DIR"
  done
  # Debian's python3 needs python3-venv (ensurepip) for `-m venv`.
  say "python3 -m venv failed; installing python3-venv"
  if ((EUID == 0)); then
    { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
           --no-install-recommends python3-venv; } >>"$ROOT/target/pyenv-install.log" 2>&1 \
      && /usr/bin/python3 -m venv "$PYENV_DIR" >>"$ROOT/target/pyenv-install.log" 2>&1 && return 0
  fi
  return 1
}
ensure_venv() {
  mkdir -p "$ROOT/target"
  (
    # two test.sh runs at once must not build the same venv together
    flock -w 900 9 || { say "timed out waiting for target/.pyenv.lock"; exit 1; }
    if venv_ok; then exit 0; fi
    say "creating Python venv in target/pyenv (${PY_REQS[*]})"
    local t0; t0=$(now_ms)
    make_venv || { tail -n 20 "$ROOT/target/pyenv-install.log" >&2; say "could not create a venv"; exit 1; }
    "$PYENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "${PY_REQS[@]}" \
      >>"$ROOT/target/pyenv-install.log" 2>&1 \
      || { tail -n 30 "$ROOT/target/pyenv-install.log" >&2; say "pip install failed"; exit 1; }
    echo "${PY_REQS[*]}" >"$PYENV_DIR/.coinpay-reqs"
    venv_ok || { say "venv built but wechatpy does not import"; exit 1; }
    say "venv ready in $(( $(now_ms) - t0 )) ms"
  ) 9>"$ROOT/target/.pyenv.lock"
}
PY_OK=1
t0=$(now_ms)
if ensure_venv; then
  export COINPAY_TEST_PYTHON=$PYENV_DIR/bin/python
else
  PY_OK=0
  unset COINPAY_TEST_PYTHON
  missing "could not build the Python venv with ${PY_REQS[*]} (log: target/pyenv-install.log)"
fi
say "venv check: $(( $(now_ms) - t0 )) ms"

# ---------------------------------------------------------------------------------------------
# 3. Start the servers in a fresh temp dir on free loopback ports.
pick_port() { # preferred
  if port_free "$1"; then echo "$1"; else random_port; fi
}

# start_svc NAME SUBCOMMAND PORTVAR: start one server; if its port was taken meanwhile (another
# run on this machine), retry on a random free port.
start_svc() {
  local name=$1 sub=$2 var=$3 _
  for _ in 1 2 3; do
    if env "$var=${!var}" SVC_DIR="$SVC_DIR" bash "$SERVICES" "$sub"; then return 0; fi
    port_free "${!var}" && break          # port is free: the failure was something else
    printf -v "$var" '%s' "$(random_port)"
    say "$name: port taken, retrying on ${!var}"
  done
  return 1
}

MYSQL_OK=0
REDIS_OK=0
if ((SERVICES_OK)); then
  make_svc_dir coinpay-test
  MY_PORT=${MY_PORT:-$(pick_port 13306)}
  REDIS_PORT=${REDIS_PORT:-$(pick_port 16379)}
  [[ $REDIS_PORT != "$MY_PORT" ]] || REDIS_PORT=$(random_port)
  t0=$(now_ms)
  if start_svc mariadb start-mysql MY_PORT; then MYSQL_OK=1
  else missing "MariaDB did not start (logs above; SVC_DIR=$SVC_DIR)"; fi
  say "mariadb start: $(( $(now_ms) - t0 )) ms"
  t0=$(now_ms)
  if start_svc redis start-redis REDIS_PORT; then REDIS_OK=1
  else missing "Redis did not start (logs above; SVC_DIR=$SVC_DIR)"; fi
  say "redis start: $(( $(now_ms) - t0 )) ms"
fi

# ---------------------------------------------------------------------------------------------
# 4. Environment for the tests.
unset COINPAY_TEST_MYSQL_URL COINPAY_TEST_REDIS_HOST COINPAY_TEST_REDIS_PORT MYSQL_URL REDIS_URL \
  COINPAY_SERVICES_SCRIPT
if ((MYSQL_OK || REDIS_OK)); then
  eval "$(SVC_DIR=$SVC_DIR MY_PORT=$MY_PORT REDIS_PORT=$REDIS_PORT bash "$SERVICES" env)"
  ((MYSQL_OK)) || unset COINPAY_TEST_MYSQL_URL MYSQL_URL
  ((REDIS_OK)) || unset COINPAY_TEST_REDIS_HOST COINPAY_TEST_REDIS_PORT REDIS_URL
fi

{
  echo "================================ coinpay tests ================================"
  echo " mariadb : $( ((MYSQL_OK)) && { mariadbd --version | sed 's/ for .*//;s/  */ /g'; echo " @ 127.0.0.1:$MY_PORT"; } | tr -d '\n' || echo 'NOT AVAILABLE - MariaDB tests skip')"
  echo " galera  : $( [[ -n $GALERA_PID ]] && echo "3 nodes @ 127.0.0.1:$GALERA_BASE_PORT-$((GALERA_BASE_PORT + 2)), booting (awaited before the tests run)" || echo 'NOT AVAILABLE - Galera tests skip')"
  echo " redis   : $( ((REDIS_OK)) && { redis-server --version | cut -d' ' -f1-3; echo " @ 127.0.0.1:$REDIS_PORT"; } | tr -d '\n' || echo 'NOT AVAILABLE - Redis tests skip')"
  if ((PY_OK)); then
    echo " python  : $("$COINPAY_TEST_PYTHON" --version 2>&1) ($COINPAY_TEST_PYTHON)"
    echo " wechatpy: $("$COINPAY_TEST_PYTHON" -c 'import importlib.metadata as m; print(m.version("wechatpy"), "/ cryptography", m.version("cryptography"))')"
  else
    echo " python  : NOT AVAILABLE - wechatpy cross-checks skip"
  fi
  echo " rust    : $(rustc --version 2>/dev/null || echo '?')"
  echo " mode    : $( ((STRICT)) && echo 'strict (CI): missing services fail the tests' || echo 'local: missing services are skipped')"
  echo " svc dir : ${SVC_DIR:-none}"
  echo " command : $CARGO_CMD test --all-targets $*"
  echo "==============================================================================="
} >&2

# ---------------------------------------------------------------------------------------------
# >>> deploy checks (scripts/check-deploy.sh: promtool on deploy/prometheus, dashboard JSON)
# A broken rule/config/dashboard always fails; promtool that cannot be installed (exit 2) is
# fatal under CI=true and a loud skip otherwise.
t0=$(now_ms)
set +e
bash "$ROOT/scripts/check-deploy.sh"
DEPLOY_RC=$?
set -e
case $DEPLOY_RC in
  0) ;;
  2) missing "a tool of scripts/check-deploy.sh (promtool, nginx, docker-compose, hadolint...) is not available: some deploy/ checks skipped" ;;
  *) say "FATAL: scripts/check-deploy.sh failed (exit $DEPLOY_RC)"; exit 1 ;;
esac
say "deploy checks: $(( $(now_ms) - t0 )) ms"
# <<< deploy checks

# ---------------------------------------------------------------------------------------------
# 4b. Compile the tests while the cluster boots (cargo's own arguments are those before `--`),
# then wait for it.
if [[ -n $GALERA_PID ]]; then
  BUILD_ARGS=()
  for a in "$@"; do [[ $a == -- ]] && break; BUILD_ARGS+=("$a"); done
  t0=$(now_ms)
  "$CARGO_CMD" test --all-targets --no-run "${BUILD_ARGS[@]}" || say "compiling the tests failed; cargo test reports it below"
  say "compile while the cluster boots: $(( $(now_ms) - t0 )) ms"
  if wait "$GALERA_PID"; then
    eval "$(cat "$GALERA_DIR/env.sh")"
    export COINPAY_GALERA_SCRIPT=$ROOT/scripts/galera.sh
    say "galera: 3 nodes Synced $(( $(now_ms) - GALERA_T0 )) ms after the start"
  else
    sed 's/^/  /' "$GALERA_DIR/start.log" >&2
    missing "the Galera cluster did not start (GALERA_DIR=$GALERA_DIR)"
  fi
  GALERA_PID=
fi

# ---------------------------------------------------------------------------------------------
# 5. Run the tests; the EXIT trap stops the servers.
set +e
CARGO_STARTED=1
"$CARGO_CMD" test --all-targets "$@"
CARGO_RC=$?
set -e
exit "$CARGO_RC"
