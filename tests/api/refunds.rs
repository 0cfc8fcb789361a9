//! Refunds end to end (issue 12), black-box: the real binary with `serve --sandbox` (whose
//! simulator serves `secapi/pay/refund` over mutual TLS with a generated test CA), on SQLite and
//! MariaDB as separate tests. After every scenario the ledger invariant holds (every balance is
//! the sum of its ledger rows, none negative, no order credited twice).

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::*;

fn refund_app(db: &TestDb) -> AppBuilder {
    app(db)
        .env("INTERNAL_API_TOKEN", INTERNAL_TOKEN)
        .env("ADMIN_API_TOKEN", ADMIN_TOKEN)
}

/// A user who paid for package `package_id`; (token, user_id, order_no, amount_fen, coins).
async fn paid_order(app: &App, user: &str, package_id: i64) -> (String, i64, String, i64, i64) {
    let (token, user_id) = app.login(user).await;
    let before = app.balance(&token).await;
    let order = app.create_order(&token, package_id).await;
    let order_no = order["order_no"].as_str().expect("order_no").to_string();
    let r = app.sandbox_pay(&order_no, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = app.order(&token, &order_no).await;
    let amount = v["amount_fen"].as_i64().expect("amount");
    let coins = v["coins"].as_i64().expect("coins") + v["bonus_coins"].as_i64().expect("bonus");
    wait_until("the payment credited", WAIT, || async {
        app.balance(&token).await == before + coins
    })
    .await;
    (token, user_id, order_no, amount, coins)
}

async fn refund(app: &App, order_no: &str, body: &Value) -> Resp {
    app.post_json(
        &format!("/api/v1/admin/orders/{order_no}/refunds"),
        Some(ADMIN_TOKEN),
        body,
    )
    .await
}

/// Posts a refund that must be accepted (201) and answers its refund_no.
async fn accepted_refund(
    app: &App,
    order_no: &str,
    refund_fen: i64,
    reason: &str,
    request_id: &str,
) -> String {
    let body = json!({"refund_fen": refund_fen, "reason": reason, "request_id": request_id});
    let r = refund(app, order_no, &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["refund_no"].as_str().expect("no").to_string()
}

async fn refund_status(app: &App, refund_no: &str) -> Value {
    let r = app
        .get(
            &format!("/api/v1/admin/refunds/{refund_no}"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn wait_refund(app: &App, refund_no: &str, status: &str) -> Value {
    wait_until(&format!("refund {refund_no} {status}"), WAIT, || async {
        refund_status(app, refund_no).await["status"] == status
    })
    .await;
    refund_status(app, refund_no).await
}

/// Every refund call the simulator received.
async fn sim_refund_calls(app: &App) -> Vec<Value> {
    let r = app.get("/sandbox/simulate/refunds", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["received"].as_array().cloned().unwrap_or_default()
}

async fn sim_faults(app: &App, faults: Value) {
    let r = app
        .post_json("/sandbox/simulate/refunds/faults", None, &faults)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn full_and_partial_refunds_add_up_to_the_order(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = refund_app(&db).spawn();
    // Package 2: 3000 fen for 300 + 30 coins.
    let (token, _, order_no, amount, coins) = paid_order(&app, "refund-partial", 2).await;
    assert_eq!((amount, coins), (3000, 330));

    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 1000, "reason": "user request, ticket 12", "request_id": "t12-r1"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let first = r.json();
    for k in [
        "refund_no",
        "order_no",
        "refund_fen",
        "coins",
        "status",
        "reason",
        "request_id",
        "created_at",
    ] {
        assert!(!first[k].is_null(), "{k} missing in {first}");
    }
    // ceil(330 × 1000 / 3000) = 110.
    assert_eq!(first["coins"], 110, "{first}");
    assert_eq!(first["order_no"], order_no.as_str());
    let no1 = first["refund_no"].as_str().expect("refund_no").to_string();
    let settled = wait_refund(&app, &no1, "succeeded").await;
    assert!(settled["wechat_refund_id"].is_string(), "{settled}");
    assert_eq!(app.balance(&token).await, 220);

    // 1 fen: ceil(330 / 3000) = 1 coin.
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 1, "reason": "r2", "request_id": "t12-r2"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["coins"], 1);

    // More than what is left: refused, naming refund_fen, and nothing sent.
    let calls = sim_refund_calls(&app).await.len();
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 2000, "reason": "r", "request_id": "t12-over"}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["field"], "refund_fen");
    assert_eq!(sim_refund_calls(&app).await.len(), calls);

    // The rest: exactly the coins still un-refunded on the order.
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 1999, "reason": "rest", "request_id": "t12-r3"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let last = r.json();
    assert_eq!(last["coins"], 330 - 110 - 1, "{last}");
    let no3 = last["refund_no"].as_str().expect("refund_no").to_string();
    wait_refund(&app, &no3, "succeeded").await;
    assert_eq!(app.balance(&token).await, 0);

    let admin = app
        .get(
            &format!("/api/v1/admin/orders/{order_no}"),
            Some(ADMIN_TOKEN),
        )
        .await
        .json();
    assert_eq!(admin["refunded_fen"], 3000, "{admin}");
    assert_eq!(
        admin["refunds"].as_array().map(Vec::len),
        Some(3),
        "{admin}"
    );
    assert_eq!(app.order(&token, &order_no).await["refunded_fen"], 3000);
    let list = app
        .get(
            &format!("/api/v1/admin/orders/{order_no}/refunds"),
            Some(ADMIN_TOKEN),
        )
        .await
        .json();
    assert_eq!(list["refunds"].as_array().map(Vec::len), Some(3), "{list}");
    // Nothing left: 1 fen more is over the refundable rest.
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 1, "reason": "r", "request_id": "t12-r4"}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    db.assert_invariants().await;
}
backend_test!(full_and_partial_refunds_add_up_to_the_order);

async fn refusals_never_call_wechat(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = refund_app(&db).spawn();
    let (token, user_id, order_no, _, _) = paid_order(&app, "refund-refusals", 1).await;
    // An order that was never paid.
    let unpaid = app.create_order(&token, 1).await;
    let unpaid_no = unpaid["order_no"].as_str().expect("order_no");
    let r = refund(
        &app,
        unpaid_no,
        &json!({"refund_fen": 100, "reason": "r", "request_id": "x1"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "order_not_paid");

    for (body, field) in [
        (
            json!({"refund_fen": 0, "reason": "r", "request_id": "x2"}),
            "refund_fen",
        ),
        (
            json!({"refund_fen": -5, "reason": "r", "request_id": "x3"}),
            "refund_fen",
        ),
        (
            json!({"refund_fen": 601, "reason": "r", "request_id": "x4"}),
            "refund_fen",
        ),
        (json!({"refund_fen": 100, "request_id": "x5"}), "reason"),
        (
            json!({"refund_fen": 100, "reason": "  ", "request_id": "x6"}),
            "reason",
        ),
    ] {
        let r = refund(&app, &order_no, &body).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], field, "{body}");
    }

    // The user spent 55 of the 60 coins: a full refund would take 60.
    let r = app
        .post_json(
            "/api/v1/internal/coin/consume",
            Some(INTERNAL_TOKEN),
            &json!({"user_id": user_id, "amount": 55, "request_id": "spend-1", "reason": "job"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 600, "reason": "r", "request_id": "x7"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], "insufficient_balance", "{e}");
    assert_eq!(e["error"]["balance"], 5, "{e}");

    let r = refund(
        &app,
        "CRNOSUCHORDER00000001",
        &json!({"refund_fen": 1, "reason": "r", "request_id": "x8"}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    // None of these reached WeChat, and nothing changed.
    assert!(sim_refund_calls(&app).await.is_empty());
    assert_eq!(app.balance(&token).await, 5);
    let list = app
        .get(
            &format!("/api/v1/admin/orders/{order_no}/refunds"),
            Some(ADMIN_TOKEN),
        )
        .await
        .json();
    assert_eq!(list["refunds"].as_array().map(Vec::len), Some(0), "{list}");
    db.assert_invariants().await;
}
backend_test!(refusals_never_call_wechat);

async fn idempotent_request_id_under_32_concurrent_requests(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = refund_app(&db).spawn();
    let (token, _, order_no, _, _) = paid_order(&app, "refund-concurrent", 2).await;
    let body = json!({"refund_fen": 500, "reason": "dup", "request_id": "same-request"});
    let answers = join_all((0..32).map(|_| refund(&app, &order_no, &body))).await;
    let created = answers.iter().filter(|r| r.status == 201).count();
    let replayed = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        (created, replayed),
        (1, 31),
        "{:?}",
        answers
            .iter()
            .map(|r| (r.status, r.text()))
            .collect::<Vec<_>>()
    );
    let nos: std::collections::HashSet<String> = answers
        .iter()
        .map(|r| {
            r.json()["refund_no"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(nos.len(), 1, "{nos:?}");
    let r = app.get("/sandbox/simulate/refunds", None).await.json();
    assert_eq!(r["refunds"].as_array().map(Vec::len), Some(1), "{r}");
    // The same request_id for another amount is a conflict and changes nothing.
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 501, "reason": "dup", "request_id": "same-request"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "request_id_conflict");
    assert_eq!(app.balance(&token).await, 330 - 55);
    db.assert_invariants().await;
}
backend_test!(idempotent_request_id_under_32_concurrent_requests);

async fn systemerror_retry_final_refusal_close_and_change(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = refund_app(&db).spawn();
    let (token, _, order_no, _, _) = paid_order(&app, "refund-outcomes", 2).await;

    // SYSTEMERROR twice, then success: the same out_refund_no every time.
    sim_faults(&app, json!({"fail_code": "SYSTEMERROR", "fail_times": 2})).await;
    let no = accepted_refund(&app, &order_no, 300, "retry", "o1").await;
    wait_refund(&app, &no, "succeeded").await;
    let calls: Vec<Value> = sim_refund_calls(&app).await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    // …with the same amounts, and the first two refused, the last accepted.
    assert!(
        calls.iter().all(|c| c["out_refund_no"] == no.as_str()
            && c["refund_fee"] == "300"
            && c["total_fee"] == "3000"
            && c["client_cert"] == true),
        "{calls:?}"
    );
    let results: Vec<&str> = calls.iter().filter_map(|c| c["result"].as_str()).collect();
    assert_eq!(
        results,
        ["SYSTEMERROR", "SYSTEMERROR", "SUCCESS"],
        "{calls:?}"
    );
    assert_eq!(app.balance(&token).await, 330 - 33);

    // A final refusal: failed, with WeChat's err_code, coins back at once.
    sim_faults(&app, json!({"fail_code": "NOTENOUGH", "fail_times": 1})).await;
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 300, "reason": "final", "request_id": "o2"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["wechat_err_code"], "NOTENOUGH", "{v}");
    assert_eq!(app.balance(&token).await, 330 - 33);

    // REFUNDCLOSE: closed, coins back.
    sim_faults(&app, json!({"outcome": "REFUNDCLOSE"})).await;
    let no = accepted_refund(&app, &order_no, 300, "close", "o3").await;
    wait_refund(&app, &no, "closed").await;
    assert_eq!(app.balance(&token).await, 330 - 33);

    // CHANGE: abnormal, coins stay taken.
    sim_faults(&app, json!({"outcome": "CHANGE"})).await;
    let no = accepted_refund(&app, &order_no, 300, "change", "o4").await;
    wait_refund(&app, &no, "abnormal").await;
    assert_eq!(app.balance(&token).await, 330 - 33 - 33);
    let admin = app
        .get(
            &format!("/api/v1/admin/orders/{order_no}"),
            Some(ADMIN_TOKEN),
        )
        .await
        .json();
    // Failed and closed refunds free their amount again; abnormal holds it.
    assert_eq!(admin["refunded_fen"], 600, "{admin}");
    let m = app.metrics().await;
    assert_eq!(
        sample(&m, "coinpay_refunds_total{outcome=\"abnormal\"}"),
        Some(1.0),
        "{m}"
    );
    db.assert_invariants().await;
}
backend_test!(systemerror_retry_final_refusal_close_and_change);

/// The admin overview's count of refunds processing.
async fn processing(app: &App) -> Value {
    let r = app.get("/api/v1/admin/overview", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["refunds_processing"]["count"].clone()
}

/// POSTs a refund notification body to our refund callback.
async fn notify_refund(app: &App, body: Vec<u8>) -> Resp {
    let r = client()
        .post(app.url("/api/v1/client/coin/refund/callback"))
        .insert_header(("Content-Type", "text/xml"));
    send(r, Some(body)).await
}

/// The decrypted fields of a refund notification for `refund`, with `status` and `refund_fee`.
fn refund_info(refund: &Value, status: &str, refund_fee: i64) -> Vec<(&'static str, String)> {
    let s = |k: &str| refund[k].as_str().unwrap_or_default().to_string();
    vec![
        ("out_refund_no", s("refund_no")),
        ("out_trade_no", s("order_no")),
        ("transaction_id", "4200000000202612010000000001".into()),
        ("refund_id", "50300000012026120100000000001".into()),
        ("total_fee", "600".into()),
        ("refund_fee", refund_fee.to_string()),
        ("settlement_refund_fee", refund_fee.to_string()),
        ("refund_status", status.into()),
        ("success_time", "2026-12-01 12:05:00".into()),
        ("refund_recv_accout", "支付用户零钱".into()),
        ("refund_request_source", "API".into()),
    ]
}

async fn refund_notifications_forged_undecryptable_duplicate(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = refund_app(&db).spawn();
    // WeChat accepts the refunds but settles none by itself: the notifications below do.
    sim_faults(&app, json!({"outcome": "PROCESSING"})).await;
    let (token, _, order_no, amount, coins) = paid_order(&app, "refund-notify", 1).await;
    assert_eq!((amount, coins), (600, 60));
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 300, "reason": "notify", "request_id": "n-1"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rf = r.json();
    assert_eq!(rf["status"], "processing", "{rf}");
    let no = rf["refund_no"].as_str().expect("refund_no").to_string();
    assert_eq!(app.balance(&token).await, 30);
    assert_eq!(processing(&app).await, 1);
    let is_fail = |r: &Resp| r.status != 200 || r.text().contains("FAIL");

    // Encrypted with another key: undecryptable, FAIL, nothing changes.
    let forged = refund_notification(
        &refund_info(&rf, "REFUNDCLOSE", 300),
        Some("0123456789abcdef0123456789abcdef"),
    );
    assert!(is_fail(&notify_refund(&app, forged).await));
    // Garbage where req_info should be.
    let c = sandbox_creds();
    let garbage = format!(
        "<xml><return_code>SUCCESS</return_code><appid>{}</appid><mch_id>{}</mch_id><nonce_str>n</nonce_str><req_info>bm90IGVuY3J5cHRlZA==</req_info></xml>",
        c.app_id, c.mch_id
    );
    assert!(is_fail(&notify_refund(&app, garbage.into_bytes()).await));
    // Another amount than the refund's, and an unknown refund: FAIL.
    let other_amount = refund_notification(&refund_info(&rf, "SUCCESS", 299), None);
    assert!(is_fail(&notify_refund(&app, other_amount).await));
    let mut unknown = rf.clone();
    unknown["refund_no"] = json!("RF20261201000000NOSUCHREFUND0001");
    let unknown = refund_notification(&refund_info(&unknown, "SUCCESS", 300), None);
    assert!(is_fail(&notify_refund(&app, unknown).await));
    assert_eq!(refund_status(&app, &no).await["status"], "processing");
    assert_eq!(app.balance(&token).await, 30);

    // The real one: SUCCESS, byte for byte, once committed.
    let real = refund_notification(&refund_info(&rf, "SUCCESS", 300), None);
    let r = notify_refund(&app, real.clone()).await;
    assert_eq!((r.status, r.text()), (200, SUCCESS.to_string()));
    let settled = refund_status(&app, &no).await;
    assert_eq!(settled["status"], "succeeded", "{settled}");
    assert_eq!(processing(&app).await, 0);
    // A duplicate: SUCCESS again, nothing changes.
    let r = notify_refund(&app, real).await;
    assert_eq!((r.status, r.text()), (200, SUCCESS.to_string()));
    assert_eq!(refund_status(&app, &no).await, settled);
    // A contradicting REFUNDCLOSE after the success: FAIL, the coins stay taken.
    let close = refund_notification(&refund_info(&rf, "REFUNDCLOSE", 300), None);
    assert!(is_fail(&notify_refund(&app, close).await));
    assert_eq!(refund_status(&app, &no).await["status"], "succeeded");
    assert_eq!(app.balance(&token).await, 30);
    let m = app.metrics().await;
    assert!(
        sample(
            &m,
            "coinpay_refund_notifications_total{outcome=\"duplicate\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    db.assert_invariants().await;
}
backend_test!(refund_notifications_forged_undecryptable_duplicate);

async fn never_notified_refund_settled_by_refundquery(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = refund_app(&db)
        .env("ORDER_SWEEP_CRON", "* * * * * *")
        .env("REFUND_POLL_AFTER_SECS", "1")
        .spawn();
    sim_faults(&app, json!({"never_notify": true})).await;
    let (token, _, order_no, _, _) = paid_order(&app, "refund-poll", 1).await;
    let no = accepted_refund(&app, &order_no, 600, "poll", "p-1").await;
    let settled = wait_refund(&app, &no, "succeeded").await;
    assert!(settled["wechat_refund_id"].is_string(), "{settled}");
    let sim = app
        .get(&format!("/sandbox/simulate/refunds/{no}"), None)
        .await
        .json();
    assert_eq!(sim["notify_attempts"], 0, "{sim}");
    assert_eq!(app.balance(&token).await, 0);
    db.assert_invariants().await;
}
backend_test!(never_notified_refund_settled_by_refundquery);

async fn refund_racing_a_consume_never_both(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = refund_app(&db).spawn();
    for i in 0..4 {
        let (token, user_id, order_no, _, coins) =
            paid_order(&app, &format!("refund-race-{i}"), 1).await;
        let spend = json!({"user_id": user_id, "amount": coins, "request_id": format!("race-{i}"), "reason": "job"});
        let consume = app.post_json(
            "/api/v1/internal/coin/consume",
            Some(INTERNAL_TOKEN),
            &spend,
        );
        let body =
            json!({"refund_fen": 600, "reason": "race", "request_id": format!("race-r-{i}")});
        let refunded = refund(&app, &order_no, &body);
        let (c, r) = futures_util::join!(consume, refunded);
        let consumed = c.status == 200;
        let reserved = r.status == 201;
        assert!(
            consumed != reserved,
            "exactly one may win: consume {} {}, refund {} {}",
            c.status,
            c.text(),
            r.status,
            r.text()
        );
        if !reserved {
            assert_eq!(r.json()["error"]["code"], "insufficient_balance");
        }
        assert_eq!(app.balance(&token).await, 0);
    }
    db.assert_invariants().await;
}
backend_test!(refund_racing_a_consume_never_both);

async fn kill_nine_between_reservation_and_answer_settles_once(backend: Backend) {
    let db = TestDb::new(&backend).await;
    // WeChat outlives coinpay: a simulator of its own, with its TLS listener for refunds.
    let tls_dir = tempfile::tempdir().expect("tempdir");
    let tls_port = free_port();
    let sim = standalone_tls_sandbox(tls_port, tls_dir.path());
    let pem = |f: &str| tls_dir.path().join(f).display().to_string();
    wait_until("the simulator's certificates", WAIT, || async {
        tls_dir.path().join("apiclient_key.pem").exists()
    })
    .await;
    let base = format!("https://127.0.0.1:{tls_port}");
    let port = free_port();
    let with_tls = |b: AppBuilder| {
        // Pay calls over TLS (WECHAT_PAY_CA_PATH trusts the simulator's CA), login over HTTP.
        b.against_base(&base, port)
            .env("WECHAT_API_BASE", &sim.base)
            .env("WECHAT_PAY_CERT_PATH", &pem("apiclient_cert.pem"))
            .env("WECHAT_PAY_KEY_PATH", &pem("apiclient_key.pem"))
            .env("WECHAT_PAY_CA_PATH", &pem("ca.pem"))
            .env("REFUND_POLL_AFTER_SECS", "1")
            .env("INTERNAL_API_TOKEN", INTERNAL_TOKEN)
            .env("ADMIN_API_TOKEN", ADMIN_TOKEN)
    };
    let mut app1 = with_tls(app(&db)).spawn();
    let (token, _) = app1.login("refund-kill").await;
    let order_no = app1.order_no(&token, 1).await;
    let r = sim.sim_pay("", &order_no, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_balance(&app1, &token, 60).await;

    // WeChat is slow to answer: the refund is reserved, its call in flight, when coinpay dies.
    let r = sim
        .post_json(
            "/simulate/refunds/faults",
            None,
            &json!({"latency_ms": 3000}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = app1.url(&format!("/api/v1/admin/orders/{order_no}/refunds"));
    let body =
        serde_json::to_vec(&json!({"refund_fen": 600, "reason": "kill", "request_id": "kill-1"}))
            .expect("json");
    let in_flight = actix_rt::spawn(async move {
        let r = client()
            .post(url)
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")));
        r.send_body(body).await.map(|res| res.status().as_u16())
    });
    wait_until("the refund reserved", WAIT, || async {
        app1.balance(&token).await == 0
    })
    .await;
    app1.kill9();
    assert!(
        !matches!(in_flight.await, Ok(Ok(201 | 200))),
        "the POST cannot have been answered"
    );
    let path = format!("/api/v1/admin/orders/{order_no}/refunds");

    // Back up: the poller finds the refund processing and settles it by WeChat's answer.
    let r = sim
        .post_json("/simulate/refunds/faults", None, &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let app2 = with_tls(app(&db))
        .env("ORDER_SWEEP_CRON", "* * * * * *")
        .spawn();
    wait_until("the refund settled", WAIT, || async {
        app2.get(&path, Some(ADMIN_TOKEN)).await.json()["refunds"][0]["status"] == "succeeded"
    })
    .await;
    let items = app2.get(&path, Some(ADMIN_TOKEN)).await.json()["refunds"].clone();
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{items}");
    let no = items[0]["refund_no"].as_str().expect("refund_no");
    // One refund at WeChat, under the one out_refund_no, and the coins taken once.
    let at_wechat = sim.get("/simulate/refunds", None).await.json();
    let refunds = at_wechat["refunds"].as_array().cloned().unwrap_or_default();
    assert_eq!(refunds.len(), 1, "{at_wechat}");
    assert_eq!(refunds[0]["out_refund_no"], no, "{at_wechat}");
    assert_eq!(app2.balance(&token).await, 0);
    db.assert_invariants().await;
}
backend_test!(kill_nine_between_reservation_and_answer_settles_once);

async fn fifty_refunds_at_most_and_none_after_a_year(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = refund_app(&db).spawn();
    let (_, _, order_no, _, _) = paid_order(&app, "refund-limits", 1).await;
    for i in 0..50 {
        let body =
            json!({"refund_fen": 1, "reason": "one fen", "request_id": format!("fifty-{i}")});
        let r = refund(&app, &order_no, &body).await;
        assert_eq!(r.status, 201, "refund {i}: {}", r.text());
    }
    let calls = sim_refund_calls(&app).await.len();
    assert_eq!(calls, 50);
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 1, "reason": "one too many", "request_id": "fifty-50"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "too_many_refunds");

    // An order paid a year and a day ago.
    let (_, _, old, _, _) = paid_order(&app, "refund-overdue", 1).await;
    let year_ago = chrono::Utc::now().timestamp_millis() - 366 * 24 * 3600 * 1000;
    db.execute(&format!(
        "UPDATE recharge_orders SET paid_at = {year_ago} WHERE order_no = '{old}'"
    ))
    .await;
    let r = refund(
        &app,
        &old,
        &json!({"refund_fen": 600, "reason": "late", "request_id": "overdue-1"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "refund_overdue");
    // Neither refusal reached WeChat.
    assert_eq!(sim_refund_calls(&app).await.len(), calls);
    db.assert_invariants().await;
}
backend_test!(fifty_refunds_at_most_and_none_after_a_year);

async fn without_a_client_certificate_refunds_are_disabled(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let sim = standalone_sandbox("0.001");
    let port = free_port();
    let app = app(&db)
        .against(&sim, port)
        .env("ADMIN_API_TOKEN", ADMIN_TOKEN)
        .spawn();
    let (token, _) = app.login("refund-disabled").await;
    let order_no = app.order_no(&token, 1).await;
    assert_eq!(sim.sim_pay("", &order_no, "").await.status, 200);
    wait_balance(&app, &token, 60).await;
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 100, "reason": "r", "request_id": "disabled-1"}),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "refunds_disabled");
    let at_wechat = sim.get("/simulate/refunds", None).await.json();
    assert_eq!(
        at_wechat["received"].as_array().map(Vec::len),
        Some(0),
        "{at_wechat}"
    );
    assert_eq!(app.balance(&token).await, 60);
    db.assert_invariants().await;
}
backend_test!(without_a_client_certificate_refunds_are_disabled);
