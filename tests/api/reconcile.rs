//! Daily reconciliation against WeChat's bill (issue 13), black-box: the real binary, its
//! simulator's `pay/downloadbill` (built from the simulator's own payments, with the fault
//! knobs of `/simulate/bills/faults`), the admin API and `coinpay reconcile`, on SQLite and
//! MariaDB.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{Duration as Days, NaiveDate};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::helpers::*;

const RECON: &str = "/api/v1/admin/reconciliations";

fn beijing_today() -> NaiveDate {
    chrono::Utc::now()
        .with_timezone(&coinpay::order::number::BEIJING)
        .date_naive()
}

fn yesterday() -> NaiveDate {
    beijing_today() - Days::days(1)
}

fn ymd(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn admin_app(db: &TestDb) -> AppBuilder {
    app(db).env("ADMIN_API_TOKEN", ADMIN_TOKEN)
}

async fn reconcile(app: &App, date: NaiveDate) -> Value {
    let r = app
        .post_json(RECON, Some(ADMIN_TOKEN), &json!({ "bill_date": ymd(date) }))
        .await;
    assert_eq!(r.status, 200, "reconcile {date}: {}", r.text());
    r.json()
}

async fn stored(app: &App, date: NaiveDate) -> Value {
    let r = app
        .get(&format!("{RECON}/{}", ymd(date)), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn bill_faults(app: &App, faults: Value) {
    let r = app
        .post_json("/sandbox/simulate/bills/faults", None, &faults)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A logged-in user with one order of package 2 (3000 fen, 330 coins), paid at the simulator
/// with `query` (e.g. "notify=false"): (token, order_no).
async fn paid_order(app: &App, code: &str, query: &str) -> (String, String) {
    let (token, _) = app.login(code).await;
    let no = app.order_no(&token, 2).await;
    let r = app.sandbox_pay(&no, query).await;
    assert_eq!(r.status, 200, "{}", r.text());
    (token, no)
}

fn kinds(report: &Value) -> Vec<(String, String)> {
    report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or("").to_string(),
                d["action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `coinpay reconcile --date` against the simulator of `app`, on `db`.
fn cli(app: &App, db: &TestDb, date: NaiveDate) -> (i32, String, String) {
    cli_with_key(app, db, date, sandbox_creds().api_key.expose_secret())
}

/// [`cli`] signing with `api_key` (another key than the simulator's: a signature error).
fn cli_with_key(app: &App, db: &TestDb, date: NaiveDate, api_key: &str) -> (i32, String, String) {
    let c = sandbox_creds();
    let base = app.url("/sandbox");
    let env = HashMap::from([
        ("DATABASE_URL".to_string(), db.url.clone()),
        ("JWT_SECRET".into(), JWT_SECRET.into()),
        ("WECHAT_APP_ID".into(), c.app_id.clone()),
        (
            "WECHAT_APP_SECRET".into(),
            c.app_secret.expose_secret().into(),
        ),
        ("WECHAT_PAY_MCH_ID".into(), c.mch_id.clone()),
        ("WECHAT_PAY_API_KEY".into(), api_key.into()),
        (
            "WECHAT_PAY_NOTIFY_URL".into(),
            app.url("/api/v1/client/coin/recharge/callback"),
        ),
        ("WECHAT_PAY_API_BASE".into(), base.clone()),
        ("WECHAT_API_BASE".into(), base),
        ("RUST_LOG".into(), "warn".into()),
    ]);
    run_cmd(&["reconcile", "--date", &ymd(date)], &env)
}

async fn ledger_total(app: &App, token: &str) -> i64 {
    app.get("/api/v1/client/coin/logs", Some(token))
        .await
        .json()["total"]
        .as_i64()
        .expect("total")
}

backend_test!(a_balanced_day);
async fn a_balanced_day(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = admin_app(&db).spawn();
    let (token, _) = paid_order(&app, "recon-balanced", "").await;
    let second = app.order_no(&token, 1).await;
    assert_eq!(app.sandbox_pay(&second, "").await.status, 200);
    wait_balance(&app, &token, 330 + 60).await;

    let today = beijing_today();
    let report = reconcile(&app, today).await;
    assert_eq!(report["bill_date"], ymd(today));
    assert_eq!(report["status"], "balanced", "{report}");
    assert_eq!(report["error"], Value::Null);
    // 0.60% of 36.00 yuan is 21.6 fen: 22 rounded.
    assert_eq!(
        report["wechat"],
        json!({"count": 2, "paid_fen": 3600, "refund_fen": 0, "fee_fen": 22})
    );
    assert_eq!(
        report["local"],
        json!({"count": 2, "paid_fen": 3600, "refund_fen": 0})
    );
    assert_eq!(report["differences"], json!([]));
    assert_eq!(stored(&app, today).await, report);

    let list = app
        .get(
            &format!("{RECON}?from={}&to={}", ymd(yesterday()), ymd(today)),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(list.status, 200, "{}", list.text());
    let days = list.json()["reconciliations"].clone();
    assert_eq!(days.as_array().map(Vec::len), Some(1), "{days}");
    assert_eq!(days[0]["bill_date"], ymd(today));
    assert_eq!(days[0]["status"], "balanced");
    assert_eq!(days[0]["difference_count"], 0);
    // Nothing reconciled yesterday: a report that does not exist is a 404.
    let none = app
        .get(&format!("{RECON}/{}", ymd(yesterday())), Some(ADMIN_TOKEN))
        .await;
    assert_eq!(none.status, 404, "{}", none.text());

    let m = app.metrics().await;
    assert_sample(
        &m,
        "coinpay_reconciliation_last_status{state=\"balanced\"}",
        1.0,
    );
    assert_sample(
        &m,
        "coinpay_reconciliation_runs_total{outcome=\"balanced\"}",
        1.0,
    );
    assert!(
        sample(&m, "coinpay_reconciliation_last_success_timestamp_seconds").unwrap_or(0.0) > 0.0
    );
    let overview = app
        .get("/api/v1/admin/overview", Some(ADMIN_TOKEN))
        .await
        .json();
    assert_eq!(overview["last_reconciliation"]["bill_date"], ymd(today));
    assert_eq!(overview["last_reconciliation"]["status"], "balanced");

    // Bad input changes nothing: no token, no date, a date that is not one, tomorrow.
    let r = app
        .post_json(RECON, None, &json!({ "bill_date": ymd(today) }))
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    for body in [
        json!({}),
        json!({ "bill_date": "2026-13-01" }),
        json!({ "bill_date": ymd(today + Days::days(1)) }),
    ] {
        let r = app.post_json(RECON, Some(ADMIN_TOKEN), &body).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], "bill_date");
    }
    let r = app
        .get(
            &format!("{RECON}?from={}&to={}", ymd(today), ymd(yesterday())),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    db.assert_invariants().await;
}

backend_test!(missing_notification_is_credited_once);
async fn missing_notification_is_credited_once(backend: Backend) {
    let db = TestDb::new(&backend).await;
    // The harness's sweeper never runs: only reconciliation can find this payment.
    let app = admin_app(&db).spawn();
    let (token, no) = paid_order(&app, "recon-missing", "notify=false").await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.balance(&token).await, 0);
    assert_eq!(app.order(&token, &no).await["status"], "pending");

    let today = beijing_today();
    let report = reconcile(&app, today).await;
    assert_eq!(
        kinds(&report),
        vec![("missing_local".to_string(), "credited".to_string())],
        "{report}"
    );
    let d = &report["differences"][0];
    assert_eq!(d["order_no"], no.as_str());
    assert!(d["transaction_id"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(d["out_refund_no"], Value::Null);
    assert_eq!(
        (d["wechat_fen"].clone(), d["local_fen"].clone()),
        (json!(3000), json!(3000))
    );
    // Fixed: the day balances.
    assert_eq!(report["status"], "balanced");
    assert_eq!(app.balance(&token).await, 330);
    let order = app.order(&token, &no).await;
    assert_eq!(order["status"], "paid");
    assert_eq!(order["transaction_id"], d["transaction_id"]);

    // Again, over HTTP and from the command line: nothing more is credited, and the report
    // still says what was done.
    let again = reconcile(&app, today).await;
    assert_eq!(again["differences"], report["differences"], "{again}");
    let (code, out, err) = cli(&app, &db, today);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    let printed: Value = serde_json::from_str(&out).expect("the report as JSON");
    assert_eq!(printed["differences"], report["differences"]);
    assert_eq!(printed["status"], "balanced");
    assert_eq!(app.balance(&token).await, 330);
    assert_eq!(ledger_total(&app, &token).await, 1);
    assert_sample(
        &app.metrics().await,
        "coinpay_reconciliation_credited_total",
        1.0,
    );
    // The notification that finally arrives is a duplicate.
    let r = app.sandbox_pay(&no, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.balance(&token).await, 330);
    assert_eq!(ledger_total(&app, &token).await, 1);
    db.assert_invariants().await;
}

backend_test!(unknown_order_changed_amount_and_dropped_row);
async fn unknown_order_changed_amount_and_dropped_row(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = admin_app(&db).spawn();
    let (token, changed) = paid_order(&app, "recon-faults", "").await;
    let dropped = app.order_no(&token, 1).await;
    assert_eq!(app.sandbox_pay(&dropped, "").await.status, 200);
    wait_balance(&app, &token, 390).await;
    bill_faults(
        &app,
        json!({
            "extra_payment": {"out_trade_no": "NOT-OURS-0001", "total_fee": 500},
            "change_amount": {"id": changed, "fen": 2999},
            "drop": [dropped],
        }),
    )
    .await;

    let today = beijing_today();
    let report = reconcile(&app, today).await;
    assert_eq!(report["status"], "differences", "{report}");
    let by_kind = |k: &str| {
        report["differences"]
            .as_array()
            .expect("differences")
            .iter()
            .find(|d| d["kind"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("no {k} in {report}"))
    };
    let unknown = by_kind("unknown_order");
    assert_eq!(unknown["order_no"], "NOT-OURS-0001");
    assert_eq!(
        (unknown["wechat_fen"].clone(), unknown["local_fen"].clone()),
        (json!(500), Value::Null)
    );
    assert_eq!(unknown["action"], "flagged");
    let amount = by_kind("amount_mismatch");
    assert_eq!(amount["order_no"], changed.as_str());
    assert_eq!(
        (amount["wechat_fen"].clone(), amount["local_fen"].clone()),
        (json!(2999), json!(3000))
    );
    assert_eq!(amount["action"], "flagged");
    let missing = by_kind("missing_remote");
    assert_eq!(missing["order_no"], dropped.as_str());
    assert_eq!(
        (missing["wechat_fen"].clone(), missing["local_fen"].clone()),
        (Value::Null, json!(600))
    );
    assert_eq!(missing["action"], "flagged");
    assert_eq!(report["differences"].as_array().map(Vec::len), Some(3));
    assert_eq!(report["wechat"]["count"], 2);
    assert_eq!(report["local"]["count"], 2);

    // Flagged, never reversed: balances are untouched.
    assert_eq!(app.balance(&token).await, 390);
    assert_eq!(ledger_total(&app, &token).await, 2);
    let (code, out, err) = cli(&app, &db, today);
    assert_eq!(code, 2, "differences remain: {out}\n{err}");
    assert!(err.contains("3 difference(s) remain"), "{err}");
    let m = app.metrics().await;
    assert_sample(
        &m,
        "coinpay_reconciliation_last_status{state=\"differences\"}",
        1.0,
    );
    assert_sample(
        &m,
        "coinpay_reconciliation_differences{kind=\"unknown_order\"}",
        1.0,
    );
    assert_sample(
        &m,
        "coinpay_reconciliation_differences{kind=\"missing_remote\"}",
        1.0,
    );
    assert_sample(
        &m,
        "coinpay_reconciliation_differences{kind=\"missing_local\"}",
        0.0,
    );
    let list = app.get(RECON, Some(ADMIN_TOKEN)).await.json();
    assert_eq!(list["reconciliations"][0]["difference_count"], 3, "{list}");
    db.assert_invariants().await;
}

backend_test!(refund_in_the_bill_missing_locally);
async fn refund_in_the_bill_missing_locally(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = admin_app(&db).spawn();
    let (token, no) = paid_order(&app, "recon-refund-stranger", "").await;
    wait_balance(&app, &token, 330).await;
    bill_faults(
        &app,
        json!({"extra_refund": {"out_trade_no": no, "out_refund_no": "RF-NOT-OURS", "refund_fee": 1000}}),
    )
    .await;
    let report = reconcile(&app, beijing_today()).await;
    assert_eq!(report["status"], "differences", "{report}");
    assert_eq!(
        kinds(&report),
        vec![("refund_missing_local".to_string(), "flagged".to_string())]
    );
    let d = &report["differences"][0];
    assert_eq!(d["out_refund_no"], "RF-NOT-OURS");
    assert_eq!(d["order_no"], no.as_str());
    assert_eq!(
        (d["wechat_fen"].clone(), d["local_fen"].clone()),
        (json!(1000), Value::Null)
    );
    assert_eq!(report["wechat"]["refund_fen"], 1000);
    assert_eq!(report["wechat"]["count"], 1);
    assert_eq!(app.balance(&token).await, 330);
    db.assert_invariants().await;
}

backend_test!(a_payment_just_before_midnight_matches_across_the_day_boundary);
async fn a_payment_just_before_midnight_matches_across_the_day_boundary(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = admin_app(&db).spawn();
    let yesterday = yesterday();
    // WeChat finished it at 23:59:59 yesterday; coinpay credits it now (today). The order's
    // `paid_at` is WeChat's `time_end`, so the payment belongs to yesterday on both sides.
    let time_end = format!("{}235959", yesterday.format("%Y%m%d"));
    let (token, no) = paid_order(&app, "recon-midnight", &format!("time_end={time_end}")).await;
    wait_balance(&app, &token, 330).await;
    let order = app
        .get(&format!("/api/v1/admin/orders/{no}"), Some(ADMIN_TOKEN))
        .await
        .json();
    let expected = chrono::NaiveDateTime::parse_from_str(&time_end, "%Y%m%d%H%M%S")
        .expect("time_end")
        .and_local_timezone(chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00"))
        .single()
        .expect("one instant")
        .with_timezone(&chrono::Utc);
    let paid_at = order["paid_at"].as_str().expect("paid_at");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(paid_at).expect("RFC 3339"),
        expected,
        "paid_at is WeChat's time_end: {order}"
    );

    // Today: WeChat has no bill, and coinpay has no payment of today either.
    let today = reconcile(&app, beijing_today()).await;
    assert_eq!(today["status"], "no_bill", "{today}");
    assert_eq!(today["differences"], json!([]));
    assert_eq!(today["local"]["count"], 0);
    assert_eq!(today["wechat"]["count"], 0);
    // Yesterday: the bill's row finds its order, credited the day after.
    let day = reconcile(&app, yesterday).await;
    assert_eq!(day["status"], "balanced", "{day}");
    assert_eq!(day["wechat"]["count"], 1);
    assert_eq!(day["local"]["count"], 1);
    assert_eq!(day["differences"], json!([]));
    // Once more with yesterday's bill now archived.
    let again = reconcile(&app, beijing_today()).await;
    assert_eq!(again["status"], "no_bill", "{again}");
    db.assert_invariants().await;
}

backend_test!(a_signature_error_reply_fails_the_day_and_changes_nothing);
async fn a_signature_error_reply_fails_the_day_and_changes_nothing(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = admin_app(&db).spawn();
    // A payment only the bill knows of: a run that went on after the refusal could credit it.
    let (token, no) = paid_order(&app, "recon-bad-sign", "notify=false").await;
    let today = beijing_today();
    let wrong_key = "k".repeat(32);
    let (code, out, err) = cli_with_key(&app, &db, today, &wrong_key);
    assert_eq!(code, 1, "a failed run exits 1: {out}\n{err}");
    let report = stored(&app, today).await;
    assert_eq!(report["status"], "error", "{report}");
    let error = report["error"].as_str().unwrap_or("");
    assert!(error.contains("SIGN ERROR"), "{error}");
    assert_eq!(report["differences"], json!([]));
    assert_eq!(app.order(&token, &no).await["status"], "pending");
    assert_eq!(app.balance(&token).await, 0);
    db.assert_invariants().await;
}

backend_test!(no_bill_exist_is_an_empty_day);
async fn no_bill_exist_is_an_empty_day(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = admin_app(&db).spawn();
    let report = reconcile(&app, yesterday()).await;
    assert_eq!(
        report,
        json!({
            "bill_date": ymd(yesterday()), "status": "no_bill", "error": null,
            "wechat": {"count": 0, "paid_fen": 0, "refund_fen": 0, "fee_fen": 0},
            "local": {"count": 0, "paid_fen": 0, "refund_fen": 0},
            "differences": [],
        })
    );
    let (code, out, err) = cli(&app, &db, yesterday());
    assert_eq!(code, 0, "{out}\n{err}");
    let m = app.metrics().await;
    assert_sample(
        &m,
        "coinpay_reconciliation_last_status{state=\"no_bill\"}",
        1.0,
    );
}

backend_test!(a_bad_bill_fails_the_day_and_changes_nothing);
async fn a_bad_bill_fails_the_day_and_changes_nothing(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = admin_app(&db).spawn();
    // A payment only the bill knows of: a bill that were misread could credit it.
    let (token, no) = paid_order(&app, "recon-bad-bill", "notify=false").await;
    let today = beijing_today();
    for (fault, kind, says) in [
        ("corrupt", "bad_gzip", "gzip"),
        ("unknown_layout", "unknown_layout", "unknown bill layout"),
        ("bad_amount", "bad_amount", "unparseable amount"),
    ] {
        bill_faults(&app, json!({ fault: true })).await;
        let report = reconcile(&app, today).await;
        assert_eq!(report["status"], "error", "{fault}: {report}");
        let error = report["error"].as_str().unwrap_or("");
        assert!(error.contains(says), "{fault}: {error}");
        assert_eq!(report["wechat"], Value::Null);
        assert_eq!(report["local"], Value::Null);
        assert_eq!(report["differences"], json!([]));
        assert_eq!(stored(&app, today).await["status"], "error");
        assert_eq!(app.balance(&token).await, 0, "{fault} credited nothing");
        assert_eq!(app.order(&token, &no).await["status"], "pending");
        let m = app.metrics().await;
        assert_sample(
            &m,
            &format!("coinpay_reconciliation_errors_total{{kind=\"{kind}\"}}"),
            1.0,
        );
        assert_sample(
            &m,
            "coinpay_reconciliation_last_status{state=\"error\"}",
            1.0,
        );
        let (code, _, err) = cli(&app, &db, today);
        assert_eq!(code, 1, "{fault}: {err}");
        assert!(err.contains("failed"), "{err}");
    }
    let logs = app.logs();
    assert!(
        logs.contains("reconciliation failed; nothing was changed"),
        "the failure is logged"
    );
    // The bill mended, the day reconciles and the payment is credited.
    let r = app
        .post_json("/sandbox/simulate/bills/faults", None, &json!({}))
        .await;
    assert_eq!(r.status, 200);
    let report = reconcile(&app, today).await;
    assert_eq!(report["status"], "balanced", "{report}");
    assert_eq!(app.balance(&token).await, 330);
    let list = app.get(RECON, Some(ADMIN_TOKEN)).await.json();
    assert!(
        list["reconciliations"][0]["attempts"].as_i64() >= Some(7),
        "{list}"
    );
    db.assert_invariants().await;
}

backend_test!(two_instances_one_reconciliation);
async fn two_instances_one_reconciliation(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let sim = standalone_sandbox("0.002");
    let (pa, pb) = (free_port(), free_port());
    let cfg = |b: AppBuilder| {
        b.env("ADMIN_API_TOKEN", ADMIN_TOKEN)
            .env("RECONCILE_CRON", "* * * * * *")
            .env("ORDER_SWEEP_LEASE_SECONDS", "30")
    };
    let a = cfg(app(&db).against(&sim, pa)).env("INSTANCE_ID", "aaaa");
    let (token, no) = {
        // The payment happens before either instance reconciles: an instance of its own,
        // with the schedule off, creates the order, and is gone before they start.
        let first = app(&db).against(&sim, free_port()).spawn();
        let (token, _) = first.login("recon-two").await;
        let no = first.order_no(&token, 2).await;
        let time_end = format!("{}120000", yesterday().format("%Y%m%d"));
        let r = sim
            .sim_pay("", &no, &format!("notify=false&time_end={time_end}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        (token, no)
    };
    let a = a.spawn();
    let b = cfg(app(&db).against(&sim, pb))
        .env("INSTANCE_ID", "bbbb")
        .spawn();
    wait_until("yesterday reconciled", WAIT, || async {
        a.get(&format!("{RECON}/{}", ymd(yesterday())), Some(ADMIN_TOKEN))
            .await
            .status
            == 200
    })
    .await;
    // A few more ticks: the day is done and nobody does it again.
    actix_rt::time::sleep(Duration::from_millis(2500)).await;
    let report = stored(&a, yesterday()).await;
    assert_eq!(
        kinds(&report),
        vec![("missing_local".to_string(), "credited".to_string())],
        "{report}"
    );
    assert_eq!(a.balance(&token).await, 330);
    assert_eq!(ledger_total(&a, &token).await, 1);
    // Credited today, paid (WeChat's time, the bill's trade time) yesterday at 12:00 Beijing.
    let paid_at = a.order(&token, &no).await["paid_at"].clone();
    let noon = yesterday()
        .and_hms_opt(4, 0, 0)
        .expect("04:00 UTC")
        .and_utc();
    assert_eq!(
        paid_at
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()),
        Some(noon.fixed_offset()),
        "{paid_at}"
    );
    let list = a.get(RECON, Some(ADMIN_TOKEN)).await.json();
    assert_eq!(list["reconciliations"][0]["attempts"], 1, "{list}");
    let runs = |m: &str, o: &str| {
        sample(
            m,
            &format!("coinpay_reconciliation_runs_total{{outcome=\"{o}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(
        runs(&ma, "balanced") + runs(&mb, "balanced"),
        1.0,
        "one run:\n{ma}\n{mb}"
    );
    assert!(
        runs(&ma, "not_leader") + runs(&mb, "not_leader") > 0.0,
        "the other instance saw the lease taken"
    );
    assert!(
        runs(&ma, "skipped") + runs(&mb, "skipped") > 0.0,
        "the day is not redone"
    );
    assert_eq!(a.order(&token, &no).await["status"], "paid");
    db.assert_invariants().await;
}

backend_test!(refunds_matched_missing_at_wechat_and_changed);
async fn refunds_matched_missing_at_wechat_and_changed(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = admin_app(&db).spawn();
    let (token, no) = paid_order(&app, "recon-refunds", "").await;
    wait_balance(&app, &token, 330).await;
    let r = app
        .post_json(
            &format!("/api/v1/admin/orders/{no}/refunds"),
            Some(ADMIN_TOKEN),
            &json!({"refund_fen": 1000, "reason": "reconciliation test", "request_id": "recon-r1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let refund_no = r.json()["refund_no"]
        .as_str()
        .expect("refund_no")
        .to_string();
    wait_until("the refund succeeded", WAIT, || async {
        app.get(
            &format!("/api/v1/admin/refunds/{refund_no}"),
            Some(ADMIN_TOKEN),
        )
        .await
        .json()["status"]
            == "succeeded"
    })
    .await;
    assert_eq!(app.balance(&token).await, 220);

    // Both sides have the payment and the refund.
    let today = beijing_today();
    let report = reconcile(&app, today).await;
    assert_eq!(report["status"], "balanced", "{report}");
    assert_eq!(report["wechat"]["refund_fen"], 1000);
    assert_eq!(report["local"]["refund_fen"], 1000);
    assert_eq!(report["wechat"]["count"], 1);
    assert_eq!(report["local"]["count"], 1);

    // WeChat's bill without the refund: it is missing there.
    bill_faults(&app, json!({ "drop": [refund_no] })).await;
    let report = reconcile(&app, today).await;
    assert_eq!(
        kinds(&report),
        vec![("refund_missing_remote".to_string(), "flagged".to_string())],
        "{report}"
    );
    let d = &report["differences"][0];
    assert_eq!(d["out_refund_no"], refund_no.as_str());
    assert_eq!(d["order_no"], no.as_str());
    assert!(
        d["transaction_id"].as_str().is_some_and(|t| !t.is_empty()),
        "{d}"
    );
    assert_eq!(
        (d["wechat_fen"].clone(), d["local_fen"].clone()),
        (Value::Null, json!(1000))
    );

    // Another amount in the bill.
    bill_faults(
        &app,
        json!({ "change_amount": {"id": refund_no, "fen": 900} }),
    )
    .await;
    let report = reconcile(&app, today).await;
    assert_eq!(
        kinds(&report),
        vec![("refund_amount_mismatch".to_string(), "flagged".to_string())],
        "{report}"
    );
    let d = &report["differences"][0];
    assert_eq!(
        (d["wechat_fen"].clone(), d["local_fen"].clone()),
        (json!(900), json!(1000))
    );
    // Flagged only: the refund and the balance are as they were.
    assert_eq!(app.balance(&token).await, 220);
    db.assert_invariants().await;
}
