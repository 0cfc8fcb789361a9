//! The order lifecycle, black-box over HTTP with the simulator, on SQLite and MariaDB.

use std::time::Duration;

use crate::helpers::*;
use futures_util::future::join_all;
use serde_json::json;

backend_test!(happy_path_login_order_pay_credit);
async fn happy_path_login_order_pay_credit(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db).spawn();
    let (token, user_id) = app.login("happy-user").await;
    // Same code, same openid, same user.
    assert_eq!(app.login("happy-user").await.1, user_id);
    assert_eq!(app.balance(&token).await, 0);

    let order = app.create_order(&token, 2).await;
    assert_eq!(order["status"], "pending", "{order}");
    assert_eq!(order["amount_fen"], 3000);
    assert_eq!(order["coins"], 300);
    assert_eq!(order["bonus_coins"], 30);
    assert!(order["expires_at"].as_str().is_some());
    let pp = &order["pay_params"];
    for k in [
        "appId",
        "timeStamp",
        "nonceStr",
        "package",
        "signType",
        "paySign",
    ] {
        assert!(pp[k].as_str().is_some_and(|v| !v.is_empty()), "{k} in {pp}");
    }
    assert!(
        pp["package"]
            .as_str()
            .unwrap_or("")
            .starts_with("prepay_id=")
    );
    assert_eq!(pp["timeStamp"].as_str().map(str::len), Some(10));
    let no = order["order_no"].as_str().expect("order_no").to_string();

    let r = app.sandbox_pay(&no, "duplicates=3").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_balance(&app, &token, 330).await;
    let o = app.order(&token, &no).await;
    assert_eq!(o["status"], "paid");
    assert!(o["transaction_id"].as_str().is_some());

    // Duplicates keep arriving; nothing more is credited.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.balance(&token).await, 330);
    let logs = app
        .get("/api/v1/client/coin/logs", Some(&token))
        .await
        .json();
    assert_eq!(logs["total"], 1, "{logs}");
    assert_eq!(logs["logs"][0]["delta"], 330);
    assert_eq!(logs["logs"][0]["balance_after"], 330);
    assert_eq!(logs["logs"][0]["order_no"], no.as_str());

    // A second order; the list is newest first and paginated.
    let second = app.create_order(&token, 1).await;
    let list = app
        .get(
            "/api/v1/client/coin/recharge/orders?page=1&page_size=1",
            Some(&token),
        )
        .await
        .json();
    assert_eq!(list["total"], 2);
    assert_eq!(list["orders"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["orders"][0]["order_no"], second["order_no"]);
    let page2 = app
        .get(
            "/api/v1/client/coin/recharge/orders?page=2&page_size=1",
            Some(&token),
        )
        .await
        .json();
    assert_eq!(page2["orders"][0]["order_no"], no.as_str());

    let metrics = app.metrics().await;
    assert_sample(&metrics, "coinpay_notifications_total{outcome=\"ok\"}", 1.0);
    assert_sample(&metrics, "coinpay_coins_credited_total", 330.0);
    db.assert_invariants().await;
}

backend_test!(sixty_four_concurrent_copies_of_one_notification_credit_once);
async fn sixty_four_concurrent_copies_of_one_notification_credit_once(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db).spawn();
    let (token, _) = app.login("dup-user").await;
    let order = app.create_order(&token, 1).await;
    let no = order["order_no"].as_str().expect("no");
    let body = notification(no, "4200000000000000000000000001", 600, |_| {});
    let replies = join_all((0..64).map(|_| app.notify_raw(&body, &[]))).await;
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), SUCCESS, "every copy is acknowledged");
    }
    assert_eq!(app.balance(&token).await, 60);
    let m = app.metrics().await;
    assert_sample(
        &m,
        "coinpay_notifications_total{outcome=\"duplicate\"}",
        63.0,
    );
    db.assert_invariants().await;
}

backend_test!(twenty_orders_paid_concurrently_each_credited_once);
async fn twenty_orders_paid_concurrently_each_credited_once(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db).spawn();
    let (token, _) = app.login("many-orders").await;
    let mut nos = Vec::new();
    for _ in 0..20 {
        nos.push(app.order_no(&token, 1).await);
    }
    let replies = join_all(nos.iter().map(|no| app.sandbox_pay(no, "duplicates=1"))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    wait_balance(&app, &token, 20 * 60).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.balance(&token).await, 1200);
    db.assert_invariants().await;
}

#[actix_web::test]
async fn two_processes_on_one_mariadb_credit_each_order_once() {
    let Some(backend) = mysql() else { return };
    let db = TestDb::new(&backend).await;
    let a = app(&db).env("INSTANCE_ID", "inst").spawn();
    let b = app(&db).env("INSTANCE_ID", "inst").spawn();
    let (token, _) = a.login("two-proc").await;
    let mut bodies = Vec::new();
    for i in 0..10 {
        let o = a.create_order(&token, 1).await;
        let no = o["order_no"].as_str().expect("no").to_string();
        bodies.push(notification(
            &no,
            &format!("42000000000000000000000010{i:02}"),
            600,
            |_| {},
        ));
    }
    let mut sends = Vec::new();
    for body in &bodies {
        for k in 0..8 {
            let target = if k % 2 == 0 { &a } else { &b };
            sends.push(target.notify_raw(body, &[]));
        }
    }
    let replies = join_all(sends).await;
    for r in &replies {
        assert_eq!(r.text(), SUCCESS);
    }
    assert_eq!(a.balance(&token).await, 600);
    assert_eq!(b.balance(&token).await, 600);
    db.assert_invariants().await;
}

backend_test!(forged_and_broken_notifications_change_nothing);
async fn forged_and_broken_notifications_change_nothing(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db).spawn();
    let (token, _) = app.login("forgery-target").await;
    let order = app.create_order(&token, 1).await;
    let no = order["order_no"].as_str().expect("no").to_string();
    let txn = "4200000000000000000000000777";
    let good = notification(&no, txn, 600, |_| {});
    let good_text = String::from_utf8(good.clone()).expect("utf8");

    let tampered = good_text.replace("<total_fee><![CDATA[600]]>", "<total_fee><![CDATA[6]]>");
    assert_ne!(tampered, good_text);
    let wrong_key = {
        let c = sandbox_creds();
        let mut p = coinpay::wechat::xml::decode(&good).expect("decode");
        p.remove("sign");
        coinpay::wechat::notify::build_notification(
            &p,
            "0123456789abcdef0123456789abcdef",
            c.sign_type,
            false,
        )
    };
    let wrong_amount = notification(&no, txn, 1, |_| {});
    let foreign_appid = notification(&no, txn, 600, |p| {
        p.insert("appid".into(), "wx0000000000000000".into());
    });
    let foreign_mch = notification(&no, txn, 600, |p| {
        p.insert("mch_id".into(), "1234567890".into());
    });
    let unsigned = good_text
        .split("<sign>")
        .next()
        .map(|head| format!("{head}</xml>"))
        .expect("head");
    let doctype = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>{}",
        good_text
    );
    let truncated = good_text[..good_text.len() / 2].to_string();
    let oversized = good_text.replace(
        "<xml>",
        &format!("<xml><pad>{}</pad>", "a".repeat(70 * 1024)),
    );
    let result_fail = notification(&no, txn, 600, |p| {
        p.insert("result_code".into(), "FAIL".into());
    });
    let unknown_order = notification("CP00000000000000NOPE", txn, 600, |_| {});
    let other_currency = notification(&no, txn, 600, |p| {
        p.insert("fee_type".into(), "USD".into());
    });

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("tampered", tampered.into_bytes()),
        ("wrong key", wrong_key.into_bytes()),
        ("wrong amount", wrong_amount),
        ("foreign appid", foreign_appid),
        ("foreign mch_id", foreign_mch),
        ("unsigned", unsigned.into_bytes()),
        ("doctype", doctype.into_bytes()),
        ("truncated", truncated.into_bytes()),
        ("oversized", oversized.into_bytes()),
        ("result FAIL", result_fail),
        ("unknown order", unknown_order),
        ("other currency", other_currency),
        ("empty", Vec::new()),
    ];
    for (name, body) in cases {
        let r = app.notify_raw(&body, &[]).await;
        let text = r.text();
        assert!(
            text.contains("<return_code><![CDATA[FAIL]]></return_code>"),
            "{name}: {text}"
        );
        assert_eq!(app.balance(&token).await, 0, "{name} changed the balance");
        assert_eq!(app.order(&token, &no).await["status"], "pending", "{name}");
    }
    let logs = app.logs();
    for reason in [
        "bad_signature",
        "amount_mismatch",
        "appid_mismatch",
        "malformed",
        "unknown_order",
    ] {
        assert!(logs.contains(reason), "refusal reason {reason} not logged");
    }
    // The genuine one still goes through afterwards.
    assert_eq!(app.notify_raw(&good, &[]).await.text(), SUCCESS);
    assert_eq!(app.balance(&token).await, 60);
    db.assert_invariants().await;
}

#[actix_web::test]
async fn allow_list_uses_the_real_address_and_ignores_spoofed_forwarding() {
    let db = TestDb::new(&Backend::Sqlite).await;
    // Loopback is not WeChat: only the official ranges are allowed, no proxy is trusted.
    let app = app(&db)
        .env(
            "WECHAT_PAY_IP_WHITELIST",
            "101.226.103.0/25,140.207.54.0/25",
        )
        .spawn();
    let (token, _) = app.login("ip-user").await;
    let order = app.create_order(&token, 1).await;
    let no = order["order_no"].as_str().expect("no");
    let body = notification(no, "4200000000000000000000000888", 600, |_| {});
    let r = app.notify_raw(&body, &[]).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("FAIL"));
    let r = app
        .notify_raw(&body, &[("X-Forwarded-For", "101.226.103.10")])
        .await;
    assert_eq!(
        r.status, 403,
        "a spoofed X-Forwarded-For from an untrusted peer is ignored"
    );
    assert_eq!(app.balance(&token).await, 0);
    assert_eq!(
        sample(
            &app.metrics().await,
            "coinpay_notifications_total{outcome=\"ip_denied\"}"
        ),
        Some(2.0)
    );
    drop(app);

    // Behind a trusted proxy (loopback), the forwarded address decides.
    let app = crate::helpers::app(&db)
        .env("WECHAT_PAY_IP_WHITELIST", "101.226.103.0/25")
        .env("TRUSTED_PROXIES", "127.0.0.0/8")
        .spawn();
    let r = app
        .notify_raw(&body, &[("X-Forwarded-For", "8.8.8.8, 101.226.103.10")])
        .await;
    assert_eq!(r.text(), SUCCESS);
    let r = app
        .notify_raw(&body, &[("X-Forwarded-For", "101.226.103.10, 8.8.8.8")])
        .await;
    assert_eq!(r.status, 403, "right-most untrusted hop wins");
    assert_eq!(app.balance(&token).await, 60);
    db.assert_invariants().await;
}

backend_test!(someone_elses_order_is_404_and_auth_failures_are_401);
async fn someone_elses_order_is_404_and_auth_failures_are_401(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db).spawn();
    let (alice, _) = app.login("alice").await;
    let (bob, bob_id) = app.login("bob").await;
    let order = app.create_order(&alice, 1).await;
    let no = order["order_no"].as_str().expect("no");
    let path = format!("/api/v1/client/coin/recharge/order/{no}");
    let r = app.get(&path, Some(&bob)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    assert_eq!(app.get(&path, Some(&alice)).await.status, 200);

    let forged = coinpay::http::auth::JwtKeys::new(b"not-the-server-secret-0123456789", 3600)
        .and_then(|k| k.issue(bob_id, chrono::Utc::now().timestamp()))
        .expect("forged token");
    let expired = coinpay::http::auth::JwtKeys::new(JWT_SECRET.as_bytes(), 60)
        .and_then(|k| k.issue(bob_id, chrono::Utc::now().timestamp() - 3600))
        .expect("expired token");
    for p in [
        "/api/v1/client/coin/balance",
        "/api/v1/client/coin/logs",
        "/api/v1/client/coin/recharge/orders",
        path.as_str(),
    ] {
        for (what, tok) in [
            ("missing", None),
            ("forged", Some(forged.as_str())),
            ("expired", Some(expired.as_str())),
            ("garbage", Some("abc.def")),
        ] {
            let r = app.get(p, tok).await;
            assert_eq!(r.status, 401, "{p} with {what} token: {}", r.text());
            assert_eq!(r.json()["error"]["code"], "unauthorized");
        }
    }
    let r = app
        .post_json(
            "/api/v1/client/coin/recharge/order",
            Some(&forged),
            &json!({"package_id": 1}),
        )
        .await;
    assert_eq!(r.status, 401);
    db.assert_invariants().await;
}

#[actix_web::test]
async fn login_errors_and_package_errors() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db).spawn();
    let r = app
        .post_json(
            "/api/v1/client/auth/login",
            None,
            &json!({"code": "invalid-code"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["wechat_errcode"], 40029);
    let r = app
        .post_json("/api/v1/client/auth/login", None, &json!({}))
        .await;
    assert_eq!(r.status, 400);

    let (token, _) = app.login("pkg-user").await;
    let r = app
        .post_json(
            "/api/v1/client/coin/recharge/order",
            Some(&token),
            &json!({"package_id": 999}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    drop(app);

    // WeChat unreachable.
    let app = crate::helpers::app(&db)
        .env("WECHAT_API_BASE", "http://127.0.0.1:1")
        .env("WECHAT_TIMEOUT_MS", "500")
        .spawn();
    let r = app
        .post_json(
            "/api/v1/client/auth/login",
            None,
            &json!({"code": "some-code"}),
        )
        .await;
    assert!(
        r.status == 502 || r.status == 503,
        "{} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.json()["error"]["code"], "wechat_unavailable");
    db.assert_invariants().await;
}

#[actix_web::test]
async fn a_refused_unifiedorder_leaves_the_order_failed() {
    let db = TestDb::new(&Backend::Sqlite).await;
    // The "WeChat" here knows another merchant id: it refuses our orders with MCHID_NOT_EXIST.
    let wechat = app(&db).env("WECHAT_PAY_MCH_ID", "1900000999").spawn();
    let sandbox = format!("{}/sandbox", wechat.base);
    let app = crate::helpers::app(&db)
        .against_base(&sandbox, free_port())
        .spawn();
    let (token, _) = app.login("refused").await;
    let r = app
        .post_json(
            "/api/v1/client/coin/recharge/order",
            Some(&token),
            &json!({"package_id": 1}),
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "wechat_refused");
    assert_eq!(v["error"]["wechat_err_code"], "MCHID_NOT_EXIST");
    let list = app
        .get("/api/v1/client/coin/recharge/orders", Some(&token))
        .await
        .json();
    assert_eq!(list["orders"][0]["status"], "failed", "{list}");
    assert_eq!(list["orders"][0]["err_code"], "MCHID_NOT_EXIST");
    db.assert_invariants().await;
}

#[actix_web::test]
async fn a_panicking_actor_restarts_from_the_database() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db).env("COINPAY_FAULT_INJECTION", "1").spawn();
    let (token, _) = app.login("panic-user").await;
    let order = app.create_order(&token, 1).await;
    let no = order["order_no"].as_str().expect("no");
    let body = notification(no, "4200000000000000000000000999", 600, |_| {});
    let r = app.notify_raw(&body, &[("X-Coinpay-Fault", "panic")]).await;
    assert!(
        r.text().contains("FAIL"),
        "a panic is an error, not a hang: {}",
        r.text()
    );
    assert_eq!(app.balance(&token).await, 0);
    // WeChat retries: the restarted actor reloads from the DB and credits once.
    assert_eq!(app.notify_raw(&body, &[]).await.text(), SUCCESS);
    assert_eq!(app.notify_raw(&body, &[]).await.text(), SUCCESS);
    assert_eq!(app.balance(&token).await, 60);
    assert_eq!(
        sample(&app.metrics().await, "coinpay_order_actor_restarts_total"),
        Some(1.0)
    );
    // Without COINPAY_FAULT_INJECTION the header does nothing.
    drop(app);
    db.assert_invariants().await;
}

backend_test!(an_expired_order_paid_late_is_credited);
async fn an_expired_order_paid_late_is_credited(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db).fast_sweeper().spawn();
    let (token, _) = app.login("late-payer").await;
    let order = app.create_order(&token, 1).await;
    let no = order["order_no"].as_str().expect("no").to_string();
    wait_until("order expired", WAIT, || async {
        app.order(&token, &no).await["status"] == "expired"
    })
    .await;
    let body = notification(&no, "4200000000000000000000001234", 600, |_| {});
    assert_eq!(app.notify_raw(&body, &[]).await.text(), SUCCESS);
    assert_eq!(app.balance(&token).await, 60);
    assert_eq!(app.order(&token, &no).await["status"], "paid");
    let m = app.metrics().await;
    assert_sample(
        &m,
        "coinpay_notifications_total{outcome=\"late_payment\"}",
        1.0,
    );
    db.assert_invariants().await;
}

#[actix_web::test]
async fn settled_order_actors_stop_and_come_back_from_the_database() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db)
        .env("ORDER_ACTOR_LINGER_SECONDS", "1")
        .env("ORDER_ACTOR_IDLE_SECONDS", "1")
        .spawn();
    let (token, _) = app.login("actor-life").await;
    let no = app.order_no(&token, 1).await;
    let body = notification(&no, "4200000000000000000000007777", 600, |_| {});
    assert_eq!(app.notify_raw(&body, &[]).await.text(), SUCCESS);
    assert!(
        live_actors(&app.metrics().await) >= 1.0,
        "the paid order's actor is alive"
    );
    wait_until("terminal actors stop", Duration::from_secs(10), || async {
        live_actors(&app.metrics().await) == 0.0
    })
    .await;
    // A late duplicate starts a fresh actor that loads the paid order: nothing more credited.
    assert_eq!(app.notify_raw(&body, &[]).await.text(), SUCCESS);
    assert_eq!(app.balance(&token).await, 60);
    let m = app.metrics().await;
    assert_sample(
        &m,
        "coinpay_notifications_total{outcome=\"duplicate\"}",
        1.0,
    );
    db.assert_invariants().await;
}

backend_test!(notifications_for_orders_without_a_live_actor_follow_every_rule);
/// An order usually meets its notification with no actor alive (it idled out after the user
/// opened the payment sheet): the actor loads, decides and applies in one unit of work. Every
/// rule still holds there: a wrong amount changes nothing, the payment is credited once, a
/// repeat is a duplicate, a second payment is a counted anomaly.
async fn notifications_for_orders_without_a_live_actor_follow_every_rule(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db)
        .env("ORDER_ACTOR_LINGER_SECONDS", "1")
        .env("ORDER_ACTOR_IDLE_SECONDS", "1")
        .spawn();
    let (token, _) = app.login("cold-actor").await;
    let no = app.order_no(&token, 1).await;
    let all_stopped = || async { live_actors(&app.metrics().await) == 0.0 };

    wait_until("actors stop", WAIT, all_stopped).await;
    let wrong = notification(&no, "4200000000000000000000008881", 601, |_| {});
    assert!(app.notify_raw(&wrong, &[]).await.text().contains("FAIL"));
    assert_eq!(app.order(&token, &no).await["status"], "pending");

    wait_until("actors stop", WAIT, all_stopped).await;
    let paid = notification(&no, "4200000000000000000000008882", 600, |_| {});
    assert_eq!(app.notify_raw(&paid, &[]).await.text(), SUCCESS);
    assert_eq!(app.balance(&token).await, 60);

    wait_until("actors stop", WAIT, all_stopped).await;
    assert_eq!(app.notify_raw(&paid, &[]).await.text(), SUCCESS);
    wait_until("actors stop", WAIT, all_stopped).await;
    let other = notification(&no, "4200000000000000000000008883", 600, |_| {});
    assert_eq!(app.notify_raw(&other, &[]).await.text(), SUCCESS);

    assert_eq!(app.balance(&token).await, 60);
    let order = app.order(&token, &no).await;
    assert_eq!(order["status"], "paid");
    assert_eq!(order["transaction_id"], "4200000000000000000000008882");
    let m = app.metrics().await;
    for (series, n) in [
        ("coinpay_notifications_total{outcome=\"ok\"}", 1.0),
        ("coinpay_notifications_total{outcome=\"duplicate\"}", 1.0),
        (
            "coinpay_notifications_total{outcome=\"double_payment\"}",
            1.0,
        ),
        (
            "coinpay_notifications_total{outcome=\"amount_mismatch\"}",
            1.0,
        ),
        (
            "coinpay_payment_anomalies_total{kind=\"double_payment\"}",
            1.0,
        ),
    ] {
        assert_sample(&m, series, n);
    }
    db.assert_invariants().await;
}
