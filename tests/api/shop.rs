//! Spending coins (internal consume API) and running the shop (admin API), black-box on
//! SQLite and MariaDB. The ledger invariant is checked at the end of every test.

use std::time::Duration;

use crate::helpers::*;
use futures_util::future::join_all;
use serde_json::{Value, json};

fn shop(db: &TestDb) -> AppBuilder {
    app(db)
        .env("INTERNAL_API_TOKEN", INTERNAL_TOKEN)
        .env("ADMIN_API_TOKEN", ADMIN_TOKEN)
}

async fn adjust(app: &App, user_id: i64, delta: i64, request_id: &str) -> Resp {
    app.post_json(
        "/api/v1/admin/balance/adjust",
        Some(ADMIN_TOKEN),
        &json!({"user_id": user_id, "delta": delta, "request_id": request_id, "reason": "test grant"}),
    )
    .await
}

async fn consume(app: &App, user_id: i64, amount: i64, request_id: &str) -> Resp {
    app.post_json(
        "/api/v1/internal/coin/consume",
        Some(INTERNAL_TOKEN),
        &json!({"user_id": user_id, "amount": amount, "request_id": request_id, "reason": "job 1"}),
    )
    .await
}

async fn ledger(app: &App, token: &str) -> Value {
    app.get("/api/v1/client/coin/logs?page_size=100", Some(token))
        .await
        .json()
}

backend_test!(two_hundred_concurrent_consumes_against_fifty_coins);
async fn two_hundred_concurrent_consumes_against_fifty_coins(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = shop(&db).spawn();
    let (token, uid) = app.login("spender").await;
    assert_eq!(adjust(&app, uid, 50, "grant-1").await.status, 200);
    let replies = join_all((0..200).map(|i| {
        let app = &app;
        async move { consume(app, uid, 1, &format!("job-{i}")).await }
    }))
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Resp> = replies.iter().filter(|r| r.status == 409).collect();
    assert_eq!(ok, 50, "{backend:?}");
    assert_eq!(refused.len(), 150, "{backend:?}");
    for r in &refused {
        let v = r.json();
        assert_eq!(v["error"]["code"], "insufficient_balance");
        assert!(v["error"]["balance"].as_i64().is_some());
    }
    assert_eq!(app.balance(&token).await, 0);
    let l = ledger(&app, &token).await;
    let consumes = l["logs"]
        .as_array()
        .map(|a| a.iter().filter(|r| r["kind"] == "consume").count())
        .unwrap_or(0);
    assert_eq!(consumes, 50);
    // balance_after runs down to zero without a gap.
    let mut afters: Vec<i64> = l["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == "consume")
        .filter_map(|r| r["balance_after"].as_i64())
        .collect();
    afters.sort();
    assert_eq!(afters, (0..50).collect::<Vec<_>>());
    db.assert_invariants().await;
}

backend_test!(consume_is_idempotent_by_request_id);
async fn consume_is_idempotent_by_request_id(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = shop(&db).spawn();
    let (token, uid) = app.login("repeat").await;
    adjust(&app, uid, 100, "grant-r").await;
    let replies = join_all((0..50).map(|_| consume(&app, uid, 7, "same-request"))).await;
    let mut ids = std::collections::HashSet::new();
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["balance"], 93, "every repeat answers the first result");
        ids.insert(v["ledger_id"].as_i64().expect("ledger id"));
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.balance(&token).await, 93);
    // Same request_id, other amount or user: 409 and nothing changes.
    let r = consume(&app, uid, 8, "same-request").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"]["code"], "request_id_conflict");
    let (_, other) = app.login("someone-else").await;
    assert_eq!(consume(&app, other, 7, "same-request").await.status, 409);
    assert_eq!(app.balance(&token).await, 93);
    db.assert_invariants().await;
}

#[actix_web::test]
async fn consume_validation_and_unknown_user() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = shop(&db).spawn();
    let (token, uid) = app.login("validate").await;
    adjust(&app, uid, 10, "grant-v").await;
    let long = "x".repeat(65);
    let cases = [
        (
            json!({"user_id": uid, "amount": 0, "request_id": "a", "reason": "r"}),
            422,
            "amount",
        ),
        (
            json!({"user_id": uid, "amount": -5, "request_id": "a", "reason": "r"}),
            422,
            "amount",
        ),
        (
            json!({"user_id": uid, "request_id": "a", "reason": "r"}),
            422,
            "amount",
        ),
        (
            json!({"amount": 1, "request_id": "a", "reason": "r"}),
            422,
            "user_id",
        ),
        (
            json!({"user_id": uid, "amount": 1, "reason": "r"}),
            422,
            "request_id",
        ),
        (
            json!({"user_id": uid, "amount": 1, "request_id": "a"}),
            422,
            "reason",
        ),
        (
            json!({"user_id": uid, "amount": 1, "request_id": long, "reason": "r"}),
            422,
            "request_id",
        ),
        (
            json!({"user_id": uid, "amount": "1", "request_id": "a", "reason": "r"}),
            422,
            "amount",
        ),
    ];
    for (body, status, field) in cases {
        let r = app
            .post_json("/api/v1/internal/coin/consume", Some(INTERNAL_TOKEN), &body)
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], field, "{body}");
    }
    let r = consume(&app, 999_999, 1, "ghost").await;
    assert_eq!(r.status, 404);
    let r = consume(&app, uid, 11, "too-much").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"]["balance"], 10);
    assert_eq!(app.balance(&token).await, 10);
    let r = app
        .get(
            &format!("/api/v1/internal/users/{uid}/balance"),
            Some(INTERNAL_TOKEN),
        )
        .await;
    assert_eq!(r.json()["balance"], 10);
    db.assert_invariants().await;
}

backend_test!(consume_racing_a_payment_loses_neither);
async fn consume_racing_a_payment_loses_neither(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = shop(&db).spawn();
    let (token, uid) = app.login("racer").await;
    adjust(&app, uid, 30, "grant-race").await;
    let order = app.create_order(&token, 1).await;
    let no = order["order_no"].as_str().expect("no").to_string();
    let body = notification(&no, "4200000000000000000000005555", 600, |_| {});
    let pay = async {
        let r = app.notify_raw(&body, &[]).await;
        assert_eq!(r.text(), SUCCESS);
    };
    let spend = join_all((0..30).map(|i| {
        let app = &app;
        async move { consume(app, uid, 1, &format!("race-{i}")).await.status }
    }));
    let ((), statuses) = futures_util::future::join(pay, spend).await;
    let ok = statuses.iter().filter(|s| **s == 200).count() as i64;
    assert_eq!(ok, 30, "30 coins were there before the payment");
    assert_eq!(app.balance(&token).await, 30 + 60 - ok);
    db.assert_invariants().await;
}

backend_test!(admin_packages_orders_users_and_adjustments);
async fn admin_packages_orders_users_and_adjustments(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = shop(&db).spawn();
    let (token, uid) = app.login("shopper").await;
    let order = app.create_order(&token, 1).await;
    let no = order["order_no"].as_str().expect("no").to_string();

    // Packages: create, invalid values named, update; existing orders keep their terms.
    let r = app
        .post_json(
            "/api/v1/admin/packages",
            Some(ADMIN_TOKEN),
            &json!({"name": "活动包", "coins": 100, "bonus_coins": 50, "price_fen": 990, "sort_order": 5, "reason": "promo"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let new_id = r.json()["id"].as_i64().expect("id");
    for (body, field) in [
        (
            json!({"name": "x", "coins": 1, "price_fen": 0}),
            "price_fen",
        ),
        (json!({"name": "x", "coins": -1, "price_fen": 100}), "coins"),
        (json!({"name": "", "coins": 1, "price_fen": 100}), "name"),
        (
            json!({"name": "x", "coins": 1, "bonus_coins": -2, "price_fen": 100}),
            "bonus_coins",
        ),
    ] {
        let r = app
            .post_json("/api/v1/admin/packages", Some(ADMIN_TOKEN), &body)
            .await;
        assert_eq!(r.status, 422, "{body}");
        assert_eq!(r.json()["error"]["field"], field);
    }
    let put = |id: i64, body: Value| {
        let app = &app;
        async move {
            send(
                client()
                    .put(app.url(&format!("/api/v1/admin/packages/{id}")))
                    .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
                    .insert_header(("Content-Type", "application/json")),
                Some(serde_json::to_vec(&body).expect("json")),
            )
            .await
        }
    };
    let r = put(
        1,
        json!({"price_fen": 999, "coins": 99, "reason": "price change"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["price_fen"], 999);
    assert_eq!(r.json()["name"], "体验包", "unnamed fields stay");
    let o = app.order(&token, &no).await;
    assert_eq!(
        o["amount_fen"], 600,
        "the order keeps the amount it was created with"
    );
    assert_eq!(o["coins"], 60);
    assert_eq!(put(1, json!({"price_fen": -1})).await.status, 422);
    assert_eq!(put(424_242, json!({"price_fen": 1})).await.status, 404);
    // Deactivated: hidden from clients, refused for new orders, still listed for admins.
    assert_eq!(
        put(new_id, json!({"active": false, "reason": "promo over"}))
            .await
            .status,
        200
    );
    let public = app.get("/api/v1/client/coin/packages", None).await.json();
    assert!(
        public["packages"]
            .as_array()
            .expect("list")
            .iter()
            .all(|p| p["id"] != new_id)
    );
    let all = app
        .get("/api/v1/admin/packages", Some(ADMIN_TOKEN))
        .await
        .json();
    assert!(
        all["packages"]
            .as_array()
            .expect("list")
            .iter()
            .any(|p| p["id"] == new_id && p["active"] == false)
    );
    let r = app
        .post_json(
            "/api/v1/client/coin/recharge/order",
            Some(&token),
            &json!({"package_id": new_id}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["code"], "package_inactive");
    let r = app
        .post_json(
            "/api/v1/client/coin/recharge/order",
            Some(&token),
            &json!({"package_id": 987_654}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    // Neither refusal wrote an order: the user still has the one made above.
    let mine = app
        .get("/api/v1/client/coin/recharge/orders", Some(&token))
        .await
        .json();
    assert_eq!(mine["total"], 1, "{mine}");

    // Pay the order; an operator finds it by number, by transaction and in lists.
    app.sandbox_pay(&no, "").await;
    wait_until("paid", Duration::from_secs(20), || async {
        app.balance(&token).await == 60
    })
    .await;
    let by_no = app
        .get(&format!("/api/v1/admin/orders/{no}"), Some(ADMIN_TOKEN))
        .await
        .json();
    assert_eq!(by_no["status"], "paid");
    assert_eq!(by_no["user_id"], uid);
    let txn = by_no["transaction_id"].as_str().expect("txn").to_string();
    let by_txn = app
        .get(
            &format!("/api/v1/admin/orders?transaction_id={txn}"),
            Some(ADMIN_TOKEN),
        )
        .await
        .json();
    assert_eq!(by_txn["orders"][0]["order_no"], no.as_str());
    let now_ms = chrono::Utc::now().timestamp_millis();
    let listed = app
        .get(
            &format!(
                "/api/v1/admin/orders?user_id={uid}&status=paid&from={}&to={}",
                now_ms - 600_000,
                now_ms + 60_000
            ),
            Some(ADMIN_TOKEN),
        )
        .await
        .json();
    assert_eq!(listed["total"], 1, "{listed}");
    let none = app
        .get(
            &format!("/api/v1/admin/orders?user_id={uid}&status=expired"),
            Some(ADMIN_TOKEN),
        )
        .await
        .json();
    assert_eq!(none["total"], 0);
    // Page parameters are numbers in the query string (they were once refused as strings).
    let paged = app
        .get(
            &format!("/api/v1/admin/orders?user_id={uid}&page=1&page_size=1"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(paged.status, 200, "{}", paged.text());
    let paged = paged.json();
    assert_eq!(
        (&paged["page"], &paged["page_size"]),
        (&1.into(), &1.into())
    );
    assert_eq!(paged["orders"].as_array().map(Vec::len), Some(1), "{paged}");
    assert_eq!(
        app.get("/api/v1/admin/orders?status=bogus", Some(ADMIN_TOKEN))
            .await
            .status,
        422
    );

    // Users by id and openid, with balance and recent ledger rows.
    let u = app
        .get(&format!("/api/v1/admin/users/{uid}"), Some(ADMIN_TOKEN))
        .await
        .json();
    assert_eq!(u["user"]["balance"], 60);
    assert_eq!(u["recent_logs"][0]["kind"], "recharge");
    let openid = u["user"]["openid"].as_str().expect("openid").to_string();
    let u2 = app
        .get(
            &format!("/api/v1/admin/users?openid={openid}"),
            Some(ADMIN_TOKEN),
        )
        .await
        .json();
    assert_eq!(u2["user"]["id"], uid);

    // Adjustments: idempotent, never below zero, reason required.
    let r = adjust(&app, uid, -10, "fix-1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["balance"], 50);
    assert_eq!(
        adjust(&app, uid, -10, "fix-1").await.json()["replayed"],
        true
    );
    assert_eq!(adjust(&app, uid, -11, "fix-1").await.status, 409);
    let r = adjust(&app, uid, -51, "fix-2").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"]["code"], "insufficient_balance");
    let r = app
        .post_json(
            "/api/v1/admin/balance/adjust",
            Some(ADMIN_TOKEN),
            &json!({"user_id": uid, "delta": 5, "request_id": "fix-3"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["field"], "reason");
    assert_eq!(app.balance(&token).await, 50);
    let logs = app.logs();
    let audit = |action: &str, reason: &str| {
        logs.lines()
            .any(|l| l.contains("admin action") && l.contains(action) && l.contains(reason))
    };
    assert!(
        audit("balance_adjust", "test grant"),
        "audit trail of adjustments: {logs}"
    );
    assert!(
        audit("package_update", "price change"),
        "audit trail of package edits"
    );
    assert!(
        audit("package_create", "promo"),
        "audit trail of package creation"
    );
    assert!(
        logs.contains("package_update"),
        "audit trail names the action"
    );
    assert!(
        !logs.contains(ADMIN_TOKEN) && !logs.contains(INTERNAL_TOKEN),
        "tokens never logged"
    );
    let m = app.metrics().await;
    assert_sample(
        &m,
        "coinpay_admin_actions_total{kind=\"balance_adjust\"}",
        1.0,
    );
    db.assert_invariants().await;
}

backend_test!(recheck_settles_a_paid_but_unnotified_order_without_expiring_early);
async fn recheck_settles_a_paid_but_unnotified_order_without_expiring_early(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = shop(&db).spawn();
    let (token, _) = app.login("ticket").await;
    let paid = app.order_no(&token, 1).await;
    let unpaid = app.order_no(&token, 1).await;
    assert_eq!(app.sandbox_pay(&paid, "notify=false").await.status, 200);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.balance(&token).await, 0, "no notification came");

    let r = app
        .post_json(
            &format!("/api/v1/admin/orders/{paid}/recheck"),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["order"]["status"], "paid");
    assert_eq!(app.balance(&token).await, 60);
    // Again: nothing more.
    app.post_json(
        &format!("/api/v1/admin/orders/{paid}/recheck"),
        Some(ADMIN_TOKEN),
        &json!({}),
    )
    .await;
    assert_eq!(app.balance(&token).await, 60);

    // An unpaid order that is not yet due stays pending.
    let r = app
        .post_json(
            &format!("/api/v1/admin/orders/{unpaid}/recheck"),
            Some(ADMIN_TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["order"]["status"], "pending");
    assert_eq!(
        app.sim_order("/sandbox", &unpaid).await["trade_state"],
        "NOTPAY"
    );
    db.assert_invariants().await;
}

#[actix_web::test]
async fn every_auth_failure() {
    let db = TestDb::new(&Backend::Sqlite).await;
    // Tokens unset: the APIs do not exist.
    let closed = app(&db).spawn();
    let r = closed
        .post_json(
            "/api/v1/internal/coin/consume",
            Some("anything"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(closed.get("/api/v1/admin/packages", None).await.status, 404);
    assert_eq!(
        closed
            .get("/api/v1/admin/packages", Some(ADMIN_TOKEN))
            .await
            .status,
        404
    );
    drop(closed);

    let app = shop(&db).spawn();
    for (path, good) in [
        ("/api/v1/internal/users/1/balance", INTERNAL_TOKEN),
        ("/api/v1/admin/packages", ADMIN_TOKEN),
        ("/api/v1/admin/users/1", ADMIN_TOKEN),
    ] {
        assert_eq!(
            app.get(path, None).await.status,
            401,
            "{path} without token"
        );
        assert_eq!(
            app.get(path, Some("wrong-token")).await.status,
            401,
            "{path} wrong token"
        );
        let swapped = if good == ADMIN_TOKEN {
            INTERNAL_TOKEN
        } else {
            ADMIN_TOKEN
        };
        assert_eq!(
            app.get(path, Some(swapped)).await.status,
            401,
            "{path} other API's token"
        );
        let r = app.get(path, Some(good)).await;
        assert_ne!(r.status, 401, "{path}: {}", r.text());
    }
    let r = app
        .post_json(
            "/api/v1/internal/coin/consume",
            None,
            &json!({"user_id": 1, "amount": 1, "request_id": "a", "reason": "r"}),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let r = app
        .post_json("/api/v1/admin/balance/adjust", Some("nope"), &json!({}))
        .await;
    assert_eq!(r.status, 401);
    // A user's login token opens neither.
    let (user_token, _) = app.login("sneaky").await;
    assert_eq!(
        app.get("/api/v1/admin/packages", Some(&user_token))
            .await
            .status,
        401
    );
    db.assert_invariants().await;
}
