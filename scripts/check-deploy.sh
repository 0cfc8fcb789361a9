#!/usr/bin/env bash
# Checks the operations files in deploy/:
#   1. promtool check rules   deploy/prometheus/alerts.yml
#   2. promtool check config  deploy/prometheus/prometheus.yml   (also loads the rule file)
#   3. promtool test rules    a few unit tests of the alerts (written below, run from a temp dir)
#   4. deploy/grafana/coinpay-dashboard.json parses (python3 -m json.tool), and every PromQL
#      `expr` in it parses (promtool check rules on a generated rule file)
# promtool comes from Debian's `prometheus` package; when it is missing and we are root it is
# installed with apt-get (update first).
#
# Exit status: 0 all good; 1 a check failed; 2 promtool missing and could not be installed
# (scripts/test.sh treats 2 as fatal under CI=true and as a loud skip otherwise).
# COINPAY_CHECK_DEPLOY_NO_INSTALL=1: never run apt-get.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RULES=deploy/prometheus/alerts.yml
CONFIG=deploy/prometheus/prometheus.yml
DASHBOARD=deploy/grafana/coinpay-dashboard.json

say() { printf '[check-deploy %s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# The dashboard is JSON (no promtool needed for this part).
py=$(command -v python3 || command -v /usr/bin/python3 || true)
if [[ -z $py ]]; then
  say "FAIL: python3 not found (needed to validate $DASHBOARD)"
  exit 1
fi
if ! "$py" -m json.tool "$DASHBOARD" >/dev/null; then
  say "FAIL: $DASHBOARD is not valid JSON"
  exit 1
fi
say "ok: $DASHBOARD is valid JSON"

# ---------------------------------------------------------------------------------------------
# promtool
if ! command -v promtool >/dev/null 2>&1; then
  if [[ ${COINPAY_CHECK_DEPLOY_NO_INSTALL:-} != 1 && $EUID == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "promtool not found: installing Debian's prometheus package"
    log=$(mktemp)
    if { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
           --no-install-recommends prometheus \
         || { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq \
              && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
                   --no-install-recommends prometheus; }; } >"$log" 2>&1; then
      rm -f "$log"
    else
      tail -n 20 "$log" >&2
      rm -f "$log"
    fi
  fi
fi
if ! command -v promtool >/dev/null 2>&1; then
  say "promtool is not available (Debian package: prometheus)"
  exit 2
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

promtool check rules "$RULES"
promtool check config "$CONFIG"

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
say "all deploy checks passed"
