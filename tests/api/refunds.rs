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
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3), "{list}");
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
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
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
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 300, "reason": "retry", "request_id": "o1"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let no = r.json()["refund_no"].as_str().expect("no").to_string();
    wait_refund(&app, &no, "succeeded").await;
    let calls: Vec<Value> = sim_refund_calls(&app).await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls.iter().all(|c| c["out_refund_no"] == no.as_str()),
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
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 300, "reason": "close", "request_id": "o3"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let no = r.json()["refund_no"].as_str().expect("no").to_string();
    wait_refund(&app, &no, "closed").await;
    assert_eq!(app.balance(&token).await, 330 - 33);

    // CHANGE: abnormal, coins stay taken.
    sim_faults(&app, json!({"outcome": "CHANGE"})).await;
    let r = refund(
        &app,
        &order_no,
        &json!({"refund_fen": 300, "reason": "change", "request_id": "o4"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let no = r.json()["refund_no"].as_str().expect("no").to_string();
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
