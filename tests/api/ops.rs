//! Operations, black-box: the metrics that deploy/ (alerts, dashboard) relies on are exported,
//! /metrics on its own listener, JSON logs that carry ids and no secrets, graceful SIGTERM.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::*;
use coinpay::order::state::OrderStatus;
use futures_util::future::join_all;
use secrecy::ExposeSecret;
use serde_json::Value;

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/coinpay-dashboard.json"
);

/// Login, order (package 1: 600 fen, 60 coins), pay at the simulator, wait for the credit.
/// Returns (token, user id, order_no, transaction_id).
async fn one_payment(app: &App, code: &str) -> (String, i64, String, String) {
    let (token, user_id) = app.login(code).await;
    let order = app.create_order(&token, 1).await;
    let no = order["order_no"].as_str().expect("order_no").to_string();
    let r = app.sandbox_pay(&no, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let txn = r.json()["transaction_id"]
        .as_str()
        .expect("transaction_id")
        .to_string();
    wait_balance(app, &token, 60).await;
    (token, user_id, no, txn)
}

// ---------------------------------------------------------------------------------------------
// Scrape and rule parsing.

/// What one OpenMetrics scrape holds.
struct Scrape {
    /// `# TYPE` families: name -> type.
    types: HashMap<String, String>,
    /// Sample name -> the label names seen on its samples.
    samples: HashMap<String, BTreeSet<String>>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut types = HashMap::new();
    let mut samples: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.insert(n.to_string(), t.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = line[..end].to_string();
            let labels = samples.entry(name).or_default();
            if line[end..].starts_with('{')
                && let Some(close) = line.find('}')
            {
                for (label, _) in matchers(&line[end + 1..close]) {
                    labels.insert(label);
                }
            }
        }
    }
    Scrape { types, samples }
}

/// `name="v", other=~"w"` -> [(name, v), (other, w)] (label names of a selector or a sample).
fn matchers(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\n']);
        let Some(op) = rest.find(['=', '!']) else {
            break;
        };
        let name = rest[..op].trim().to_string();
        let Some(q) = rest[op..].find('"') else { break };
        let after = &rest[op + q + 1..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        out.push((name, after[..end].to_string()));
        rest = &after[end + 1..];
    }
    out
}

/// The `expr:` of every rule in a Prometheus rule file, read as text (inline or block scalar).
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        i += 1;
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = String::new();
            while i < lines.len() {
                let l = lines[i];
                let ind = l.len() - l.trim_start().len();
                if !l.trim().is_empty() && ind <= indent {
                    break;
                }
                block.push_str(l.trim());
                block.push('\n');
                i += 1;
            }
            out.push(block);
        } else {
            out.push(rest.trim_matches(['"', '\'']).to_string());
        }
    }
    out
}

/// Every `expr` string anywhere in the dashboard JSON.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|c| dashboard_exprs(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| dashboard_exprs(c, out)),
        _ => {}
    }
}

/// (metric name, label names of its selector) for each `coinpay_*` identifier of a PromQL expr.
fn referenced(expr: &str) -> Vec<(String, Vec<String>)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut i = 0;
    let bytes: Vec<char> = expr.chars().collect();
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let tok: String = bytes[start..i].iter().collect();
        if !tok.starts_with("coinpay_") {
            continue;
        }
        let mut labels = Vec::new();
        if bytes.get(i) == Some(&'{') {
            let close = bytes[i..].iter().position(|&c| c == '}').map(|p| p + i);
            if let Some(close) = close {
                let body: String = bytes[i + 1..close].iter().collect();
                labels = matchers(&body).into_iter().map(|(n, _)| n).collect();
                i = close + 1;
            }
        }
        out.push((tok, labels));
    }
    out
}

/// Target labels that Prometheus adds, and the ones the sample config adds.
const TARGET_LABELS: [&str; 3] = ["job", "instance", "env"];

/// Err(why) when `name` (as written in PromQL) selects nothing that coinpay exports.
fn check_name(s: &Scrape, name: &str, labels: &[String]) -> Result<(), String> {
    // The family this name belongs to and the sample name to check labels on.
    let family = if let Some(base) = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suf| name.strip_suffix(suf))
        .filter(|b| s.types.get(*b).map(String::as_str) == Some("histogram"))
    {
        base.to_string()
    } else if let Some(base) = name
        .strip_suffix("_total")
        .filter(|b| s.types.get(*b).map(String::as_str) == Some("counter"))
    {
        base.to_string()
    } else {
        match s.types.get(name).map(String::as_str) {
            Some("counter") => {
                return Err(format!("{name}: a counter is selected as {name}_total"));
            }
            Some("histogram") => {
                return Err(format!("{name}: a histogram has only _bucket/_sum/_count"));
            }
            Some(_) => name.to_string(),
            None if s.samples.contains_key(name) => name.to_string(),
            None => return Err(format!("{name}: not exported (no sample, no # TYPE)")),
        }
    };
    // When the scrape has samples of this name, the selector's labels must be theirs.
    if let Some(seen) = s.samples.get(name) {
        for l in labels {
            if !TARGET_LABELS.contains(&l.as_str()) && l != "le" && !seen.contains(l) {
                return Err(format!(
                    "{name}{{{l}=…}}: family {family} has no label {l} (has {seen:?})"
                ));
            }
        }
    }
    Ok(())
}

/// Every `coinpay_*` name (with its selector's label names) of the alert rules and the dashboard.
fn deploy_references() -> Vec<(&'static str, String, String, Vec<String>)> {
    let rules = std::fs::read_to_string(ALERTS).expect("read alerts.yml");
    let rule_exprs = yaml_exprs(&rules);
    assert!(
        rule_exprs.len() >= 15,
        "expected the alert rules' exprs, found {}: {rule_exprs:?}",
        rule_exprs.len()
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_i64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut dash_exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut dash_exprs);
    assert!(dash_exprs.len() >= 20, "dashboard exprs: {dash_exprs:?}");
    let mut out = Vec::new();
    for (source, exprs) in [("alerts.yml", rule_exprs), ("dashboard", dash_exprs)] {
        for e in exprs {
            for (name, labels) in referenced(&e) {
                out.push((source, e.trim().to_string(), name, labels));
            }
        }
    }
    out
}

/// The references that do not resolve against `scrape`, one line each.
fn unresolved(scrape: &Scrape, refs: &[(&str, String, String, Vec<String>)]) -> Vec<String> {
    let mut errors = BTreeSet::new();
    for (source, expr, name, labels) in refs {
        if let Err(why) = check_name(scrape, name, labels) {
            errors.insert(format!("{source}: {why}\n    in: {expr}"));
        }
    }
    errors.into_iter().collect()
}

fn last_sweep(scrape: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix("coinpay_sweeper_last_success_timestamp_seconds "))
        .and_then(|v| v.parse().ok())
}

#[actix_web::test]
async fn every_metric_in_rules_and_dashboard_is_exported() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let mut builder = app(&db)
        .env("ORDER_SWEEP_CRON", "* * * * * *")
        .env("INTERNAL_API_TOKEN", INTERNAL_TOKEN)
        .env("ADMIN_API_TOKEN", ADMIN_TOKEN);
    let redis = redis();
    if let Some((host, port)) = &redis {
        builder = builder
            .env("REDIS_HOST", host)
            .env("REDIS_PORT", &port.to_string());
    }
    let app = builder.spawn();
    let (token, user_id, _, _) = one_payment(&app, "ops-metrics-user").await;

    // The rest of a normal day, so that every label family has a series (prometheus-client
    // exports a family only once it has one): a refused payment, a consume, an admin
    // adjustment, a sweep.
    let second = app.create_order(&token, 1).await;
    let no = second["order_no"].as_str().expect("order_no");
    let body = notification(no, "4200000000000000000000000777", 1, |_| {});
    assert_ne!(
        app.notify_raw(&body, &[]).await.text(),
        SUCCESS,
        "amount mismatch"
    );
    let consume = serde_json::json!({
        "user_id": user_id, "amount": 5, "request_id": "ops-consume-1", "reason": "ops test"
    });
    let r = app
        .post_json(
            "/api/v1/internal/coin/consume",
            Some(INTERNAL_TOKEN),
            &consume,
        )
        .await;
    assert_eq!(r.status, 200, "consume: {}", r.text());
    let adjust = serde_json::json!({
        "user_id": user_id, "delta": 5, "request_id": "ops-adjust-1", "reason": "ops test"
    });
    let r = app
        .post_json("/api/v1/admin/balance/adjust", Some(ADMIN_TOKEN), &adjust)
        .await;
    assert_eq!(r.status, 200, "adjust: {}", r.text());
    wait_until("a completed sweep", WAIT, || async {
        last_sweep(&app.metrics().await).is_some_and(|t| t > 0.0)
    })
    .await;

    let text = app.metrics().await;
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text: {text}"
    );
    for sample in [
        "coinpay_orders_total{event=\"created\"} 2",
        "coinpay_orders_total{event=\"paid\"} 1",
        "coinpay_notifications_total{outcome=\"ok\"} 1",
        "coinpay_notifications_total{outcome=\"amount_mismatch\"} 1",
        "coinpay_payment_anomalies_total{kind=\"amount_mismatch\"} 1",
        "coinpay_coins_credited_total 60",
        "coinpay_fen_received_total 600",
        "coinpay_pending_orders 1",
        "coinpay_sweeper_lease_held 1",
        "coinpay_db_up 1",
    ] {
        assert!(text.contains(sample), "{sample} in\n{text}");
    }
    let redis_up = if redis.is_some() {
        "coinpay_redis_up 1"
    } else {
        "coinpay_redis_up 0"
    };
    assert!(text.contains(redis_up), "{redis_up} in\n{text}");
    let scrape = parse_scrape(&text);
    let stamp = last_sweep(&text).expect("last success sample");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - stamp).abs() < 60.0,
        "last sweep at {stamp}, now {now}"
    );

    let refs = deploy_references();
    let errors = unresolved(&scrape, &refs);
    assert!(
        errors.is_empty(),
        "metrics referenced by deploy/ but not exported:\n{}\n\nscrape:\n{text}",
        errors.join("\n")
    );
    // Everything the issue lists is watched somewhere.
    let names: BTreeSet<&str> = refs.iter().map(|r| r.2.as_str()).collect();
    for must in [
        "coinpay_http_requests_total",
        "coinpay_http_request_duration_seconds_bucket",
        "coinpay_notifications_total",
        "coinpay_orders_total",
        "coinpay_pending_orders",
        "coinpay_oldest_pending_order_age_seconds",
        "coinpay_coins_credited_total",
        "coinpay_fen_received_total",
        "coinpay_wechat_api_calls_total",
        "coinpay_wechat_api_duration_seconds_bucket",
        "coinpay_sweeper_runs_total",
        "coinpay_sweeper_lease_held",
        "coinpay_sweeper_last_success_timestamp_seconds",
        "coinpay_db_up",
        "coinpay_redis_up",
        "coinpay_db_pool_connections",
        "coinpay_order_actors",
        "coinpay_payment_anomalies_total",
        "coinpay_late_payments_total",
    ] {
        assert!(names.contains(must), "{must} is in no rule or panel");
    }
    // The tokenizer itself: it does find histogram parts and label selectors.
    assert_eq!(
        referenced(r#"rate(coinpay_x_bucket{job=~"$job", le!=""}[5m]) / coinpay_y"#),
        vec![
            (
                "coinpay_x_bucket".to_string(),
                vec!["job".into(), "le".into()]
            ),
            ("coinpay_y".to_string(), vec![])
        ]
    );
}

/// A rule such as `increase(coinpay_payment_anomalies_total[1h]) > 0` cannot see the first
/// anomaly when its series only appears at 1, and dashboards show "No data" instead of 0.
/// Needs the label sets to be created up front in `Metrics::new` (see the ops report).
#[actix_web::test]

async fn label_families_are_exported_before_their_first_event() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db).spawn();
    // The first scrape's own request is counted by the second one.
    let _ = app.metrics().await;
    let text = app.metrics().await;
    let scrape = parse_scrape(&text);
    let errors = unresolved(&scrape, &deploy_references());
    assert!(
        errors.is_empty(),
        "not exported by a fresh instance:\n{}\n\nscrape:\n{text}",
        errors.join("\n")
    );
    for sample in [
        "coinpay_payment_anomalies_total{kind=\"amount_mismatch\"} 0",
        "coinpay_payment_anomalies_total{kind=\"double_payment\"} 0",
        "coinpay_notifications_total{outcome=\"bad_signature\"} 0",
        "coinpay_notifications_total{outcome=\"storage_error\"} 0",
        "coinpay_orders_total{event=\"paid\"} 0",
        "coinpay_sweeper_runs_total{outcome=\"error\"} 0",
    ] {
        assert!(text.contains(sample), "{sample} in\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn metrics_on_a_separate_listener() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db).env("METRICS_BIND_ADDR", "127.0.0.1:0").spawn();
    let mut maddr = None;
    let t = Instant::now();
    while maddr.is_none() && t.elapsed() < WAIT {
        maddr = app.logs().lines().find_map(|l| {
            l.strip_prefix("coinpay metrics on http://")
                .and_then(|r| r.strip_suffix("/metrics"))
                .map(str::to_string)
        });
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let maddr = maddr.unwrap_or_else(|| panic!("no metrics line on stdout:\n{}", app.logs()));
    assert_ne!(maddr, app.addr, "a listener of its own");
    assert!(!maddr.ends_with(":0"), "the bound port is printed: {maddr}");

    // Some traffic on the main listener, counted on the metrics listener.
    assert_eq!(app.get("/healthz", None).await.status, 200);
    let r = app.get("/metrics", None).await;
    assert_eq!(r.status, 404, "no /metrics on the public listener");
    assert_eq!(r.json()["error"]["code"], "not_found", "{}", r.text());

    let r = send(client().get(format!("http://{maddr}/metrics")), None).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.contains("# TYPE coinpay_http_requests counter"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"coinpay_http_requests_total{route="/healthz",method="GET",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    // The metrics listener serves nothing else.
    let r = send(client().get(format!("http://{maddr}/healthz")), None).await;
    assert_eq!(r.status, 404);
}

// ---------------------------------------------------------------------------------------------

/// Does `key` occur (with a non-empty value) in the event's fields, its span or its span list?
fn carries<'a>(line: &'a Value, key: &str) -> Option<&'a Value> {
    let non_empty = |v: &&Value| !v.is_null() && v.as_str() != Some("");
    let mut places = vec![&line["fields"], &line["span"]];
    if let Some(spans) = line["spans"].as_array() {
        places.extend(spans.iter());
    }
    places
        .into_iter()
        .filter_map(|p| p.get(key))
        .find(non_empty)
        // tracing-subscriber flattens the event's fields when asked to; accept that too.
        .or_else(|| line.get(key).filter(non_empty))
}

/// The sandbox's session_key for a code (its jscode2session): WeChat's secret for this user.
fn sandbox_session_key(code: &str) -> String {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(
        sandbox_creds().app_secret.expose_secret().as_bytes(),
    )
    .expect("hmac key");
    m.update(format!("session_key:{code}").as_bytes());
    let key = m.finalize().into_bytes();
    base64::engine::general_purpose::STANDARD.encode(&key[..16])
}

#[actix_web::test]
async fn json_logs_carry_ids_and_no_secrets() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info,coinpay=debug")
        .env("INTERNAL_API_TOKEN", INTERNAL_TOKEN)
        .env("ADMIN_API_TOKEN", ADMIN_TOKEN)
        .spawn();
    let code = "ops-json-logs";
    let (token, user_id, order_no, txn) = one_payment(&app, code).await;

    // One authorised internal call, with our own request id.
    let rid = "ops-req-7f3a9c";
    let r = send(
        client()
            .get(app.url(&format!("/api/v1/internal/users/{user_id}/balance")))
            .insert_header(("Authorization", format!("Bearer {INTERNAL_TOKEN}")))
            .insert_header(("X-Request-Id", rid)),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["balance"], 60);
    // An admin call that is refused still must not log the token it got.
    let r = send(
        client()
            .get(app.url("/api/v1/admin/orders"))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}x"))),
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // The logs of the last requests are written after their responses.
    actix_rt::time::sleep(Duration::from_millis(300)).await;

    let logs = app.logs();
    let mut json_lines = Vec::new();
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        json_lines.push(v);
    }
    assert!(json_lines.len() >= 5, "JSON log lines:\n{logs}");
    // Non-JSON lines are only the machine-readable stdout lines.
    for line in logs.lines().filter(|l| !l.starts_with('{')) {
        assert!(
            line.starts_with("coinpay "),
            "not a JSON log line: {line}\n{logs}"
        );
    }

    let with = |key: &str, want: Option<&str>| {
        json_lines
            .iter()
            .any(|l| carries(l, key).is_some_and(|v| want.is_none_or(|w| v.as_str() == Some(w))))
    };
    assert!(
        with("order_no", Some(&order_no)),
        "order_no {order_no}:\n{logs}"
    );
    assert!(
        with("transaction_id", Some(&txn)),
        "transaction_id {txn}:\n{logs}"
    );
    assert!(with("request_id", None), "a request_id:\n{logs}");
    assert!(
        with("request_id", Some(rid)),
        "our X-Request-Id {rid}:\n{logs}"
    );

    let creds = sandbox_creds();
    let signature = token.rsplit('.').next().unwrap_or_default().to_string();
    let session_key = sandbox_session_key(code);
    for (what, secret) in [
        ("WECHAT_PAY_API_KEY", creds.api_key.expose_secret()),
        ("WECHAT_APP_SECRET", creds.app_secret.expose_secret()),
        ("JWT_SECRET", JWT_SECRET),
        ("the login token", token.as_str()),
        ("the login token's signature", signature.as_str()),
        ("INTERNAL_API_TOKEN", INTERNAL_TOKEN),
        ("ADMIN_API_TOKEN", ADMIN_TOKEN),
        ("the session_key", session_key.as_str()),
    ] {
        assert!(secret.len() >= 16, "{what} is a real secret");
        assert!(
            !logs.contains(secret),
            "{what} appears in the logs:\n{logs}"
        );
    }
    assert!(
        !logs.contains("Bearer "),
        "an Authorization header was logged"
    );
}

// ---------------------------------------------------------------------------------------------

/// A simulator payment that tolerates the server going away: Some(status) or None.
async fn try_pay(base: String, order_no: String) -> Option<u16> {
    let url = format!("{base}/sandbox/simulate/pay/{order_no}?duplicates=2");
    match client().post(url).send().await {
        Ok(mut r) => {
            let _ = r.body().await;
            Some(r.status().as_u16())
        }
        Err(_) => None,
    }
}

/// Order numbers whose notification the (stopped) simulator saw acknowledged with SUCCESS.
fn acknowledged(logs: &str) -> HashSet<String> {
    log_events(logs, "sandbox notification delivered")
        .into_iter()
        .filter(|f| f["success"] == true)
        .filter_map(|f| f["out_trade_no"].as_str().map(str::to_string))
        .collect()
}

/// Every paid order has a transaction id and exactly one recharge ledger row of its credit;
/// every recharge row belongs to a paid order; the orders in `must_be_paid` are paid.
async fn check_orders_against_ledger(db: &TestDb, user_id: i64, must_be_paid: &HashSet<String>) {
    use coinpay::store::{ledger, orders};
    db.assert_invariants().await;
    let pool = db.pool().await;
    let filter = orders::OrderFilter {
        user_id: Some(user_id),
        ..Default::default()
    };
    let (rows, _) = orders::list(&pool, &filter, 0, 1000)
        .await
        .expect("list orders");
    let (ledger_rows, _) = ledger::list_for_user(&pool, user_id, 0, 1000)
        .await
        .expect("ledger");
    let recharges: Vec<_> = ledger_rows
        .iter()
        .filter(|r| r.kind == ledger::LedgerKind::Recharge)
        .collect();
    let by_no: HashMap<&str, &orders::OrderRow> =
        rows.iter().map(|r| (r.order_no.as_str(), r)).collect();
    for o in &rows {
        let credits: Vec<_> = recharges
            .iter()
            .filter(|r| r.order_no.as_deref() == Some(o.order_no.as_str()))
            .collect();
        if o.status == OrderStatus::Paid {
            assert!(
                o.transaction_id.is_some(),
                "paid without a transaction: {o:?}"
            );
            assert_eq!(
                credits.len(),
                1,
                "paid order credited once: {o:?} {credits:?}"
            );
            assert_eq!(credits[0].delta, o.credit(), "{o:?}");
            assert_eq!(credits[0].transaction_id, o.transaction_id, "{o:?}");
        } else {
            assert!(credits.is_empty(), "credited but {}: {o:?}", o.status);
        }
    }
    for r in &recharges {
        let no = r.order_no.as_deref().unwrap_or_default();
        assert!(
            by_no.get(no).is_some_and(|o| o.status == OrderStatus::Paid),
            "recharge row for an order that is not paid: {r:?}"
        );
    }
    for no in must_be_paid {
        let o = by_no
            .get(no.as_str())
            .unwrap_or_else(|| panic!("acknowledged order {no} does not exist"));
        assert_eq!(
            o.status,
            OrderStatus::Paid,
            "SUCCESS was answered for {no}: {o:?}"
        );
    }
}

fn accepts(addr: &str) -> bool {
    addr.parse()
        .ok()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
}

backend_test!(sigterm_is_graceful);
async fn sigterm_is_graceful(backend: Backend) {
    const ORDERS: usize = 6;
    const BOUND: Duration = Duration::from_secs(25);
    let db = TestDb::new(&backend).await;
    let sweeping = |db: &TestDb| {
        app(db)
            .env("ORDER_SWEEP_CRON", "* * * * * *")
            .env("ORDER_EXPIRE_SECONDS", "1")
            .env("LOG_FORMAT", "json")
    };
    let mut a = sweeping(&db).spawn();
    let (token, user_id) = a.login("ops-sigterm").await;
    let mut nos = Vec::new();
    for _ in 0..ORDERS {
        nos.push(a.order_no(&token, 1).await);
    }
    // A batch of concurrent payments (3 notification chains each), and SIGTERM while they
    // are under way.
    let pays = actix_rt::spawn(join_all(
        nos.iter()
            .map(|no| try_pay(a.base.clone(), no.clone()))
            .collect::<Vec<_>>(),
    ));
    actix_rt::time::sleep(Duration::from_millis(4)).await;
    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // It stops accepting connections, then exits 0 within the bound.
    while accepts(&a.addr) && signalled.elapsed() < BOUND {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !accepts(&a.addr),
        "{backend:?}: still accepting connections {:?} after SIGTERM",
        signalled.elapsed()
    );
    let refused_after = signalled.elapsed();
    let status = a
        .terminate(BOUND.saturating_sub(signalled.elapsed()))
        .unwrap_or_else(|| panic!("{backend:?}: no exit within {BOUND:?}:\n{}", a.logs()));
    assert!(
        status.success(),
        "{backend:?}: exit {status:?}\n{}",
        a.logs()
    );
    let logs = a.logs();
    assert!(logs.contains("shutdown requested"), "{logs}");
    let exited_after = signalled.elapsed();
    let replies = pays.await.expect("payments task");
    let acked = acknowledged(&logs);
    eprintln!(
        "{backend:?}: pay replies {replies:?}; {} of {ORDERS} orders acknowledged; \
         refusing connections {refused_after:?} and exited {exited_after:?} after SIGTERM",
        acked.len(),
    );
    check_orders_against_ledger(&db, user_id, &acked).await;
    drop(a);

    // Restart on the same database: the lease was given back (ORDER_SWEEP_LEASE_SECONDS otherwise), the books
    // still balance, and it stops cleanly again.
    let mut b = sweeping(&db).spawn();
    wait_until(
        "the restarted instance takes the sweeper lease",
        WAIT,
        || async {
            b.metrics()
                .await
                .lines()
                .any(|l| l == "coinpay_sweeper_lease_held 1")
        },
    )
    .await;
    let (token_b, same_user) = b.login("ops-sigterm").await;
    assert_eq!(same_user, user_id);
    let paid: i64 = {
        let pool = db.pool().await;
        let filter = coinpay::store::orders::OrderFilter {
            user_id: Some(user_id),
            ..Default::default()
        };
        let (rows, _) = coinpay::store::orders::list(&pool, &filter, 0, 1000)
            .await
            .expect("orders");
        rows.iter()
            .filter(|o| o.status == OrderStatus::Paid)
            .map(|o| o.credit().0)
            .sum()
    };
    assert_eq!(b.balance(&token_b).await, paid);
    let st = b.terminate(BOUND).expect("second instance exits");
    assert!(st.success(), "{st:?}\n{}", b.logs());
    check_orders_against_ledger(&db, user_id, &acked).await;
}
