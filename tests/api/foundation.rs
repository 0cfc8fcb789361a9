//! Foundation, black-box: the real binary on SQLite and on MariaDB.

use std::collections::HashMap;

use crate::helpers::*;

backend_test!(packages_are_listed_active_in_sort_order);
async fn packages_are_listed_active_in_sort_order(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db).spawn();
    let r = app.get("/api/v1/client/coin/packages", None).await;
    assert_eq!(r.status, 200, "{backend:?}: {}", r.text());
    let v = r.json();
    let list = v["packages"].as_array().expect("packages");
    assert_eq!(list.len(), 5, "{backend:?}: {v}");
    let mut last = i64::MIN;
    for p in list {
        for f in ["id", "name", "coins", "bonus_coins", "price_fen"] {
            assert!(!p[f].is_null(), "{backend:?}: field {f} missing in {p}");
        }
        assert!(p["price_fen"].as_i64().expect("fen") > 0);
        let order = p["sort_order"].as_i64().expect("sort");
        assert!(order >= last, "not in sort order: {v}");
        last = order;
    }
    assert_eq!(list[0]["price_fen"], 600);
    assert_eq!(list[0]["coins"], 60);
    db.assert_invariants().await;
}

backend_test!(migrations_are_idempotent);
async fn migrations_are_idempotent(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let env = HashMap::from([("DATABASE_URL".to_string(), db.url.clone())]);
    let (code, out, err) = run_cmd(&["migrate"], &env);
    assert_eq!(code, 0, "{backend:?}: {out}{err}");
    assert!(out.contains("applied 5 migration(s)"), "{out}");
    let (code, out, err) = run_cmd(&["migrate"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("applied 0 migration(s)"),
        "second run must be a no-op: {out}"
    );
    // And the server starting on the migrated database applies nothing either.
    let app = app(&db).spawn();
    // stderr is read by another thread: give it a moment.
    wait_until(
        "the start-up migration log line",
        std::time::Duration::from_secs(5),
        || async { app.logs().contains("migrations checked") },
    )
    .await;
    assert!(
        app.logs().contains("migrations checked applied=0"),
        "{}",
        app.logs()
    );
    assert_eq!(app.get("/healthz", None).await.status, 200);
}

#[actix_web::test]
async fn readyz_reports_a_stopped_redis_and_a_working_one() {
    let db = TestDb::new(&Backend::Sqlite).await;
    // Nothing listens on port 1: a Redis that is down.
    let app1 = app(&db)
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", "1")
        .spawn();
    let r = app1.get("/readyz", None).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["checks"]["database"], "ok", "{v}");
    assert!(
        v["checks"]["redis"]
            .as_str()
            .unwrap_or("")
            .starts_with("down"),
        "{v}"
    );
    // Payment still works without Redis: numbers fall back to the local scheme.
    let (token, _) = app1.login("redis-down-user").await;
    let order = app1.create_order(&token, 1).await;
    assert!(
        order["order_no"].as_str().unwrap_or("").contains('X'),
        "{order}"
    );
    drop(app1);

    if let Some((host, port)) = redis() {
        let app2 = app(&db)
            .env("REDIS_HOST", &host)
            .env("REDIS_PORT", &port.to_string())
            .spawn();
        let r = app2.get("/readyz", None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["checks"]["redis"], "ok");
    }
}

#[actix_web::test]
async fn a_bad_setting_is_refused_by_name() {
    let cases = [
        ("WECHAT_PAY_API_KEY", "too-short"),
        (
            "WECHAT_PAY_NOTIFY_URL",
            "http://pay.example.com/api/v1/client/coin/recharge/callback",
        ),
        ("WECHAT_PAY_IP_WHITELIST", "101.226.103.0/99"),
        ("ORDER_SWEEP_CRON", "*/5 * * * *"),
        ("WECHAT_PAY_SIGN_TYPE", "SHA1"),
        ("ORDER_EXPIRE_SECONDS", "60"),
        ("TRUSTED_PROXIES", "not-a-cidr"),
    ];
    for (var, value) in cases {
        let env = HashMap::from([
            ("DATABASE_URL".to_string(), "sqlite://unused.db".to_string()),
            (var.to_string(), value.to_string()),
        ]);
        let (code, out, err) = run_cmd(&["serve"], &env);
        assert_ne!(code, 0, "{var}={value} must stop start-up: {out}{err}");
        assert!(err.contains(var), "the error must name {var}: {err}");
    }
}

#[actix_web::test]
async fn incomplete_pay_settings_warn_exactly_and_still_serve() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db).args(&["serve"]).spawn();
    let r = app.get("/api/v1/client/coin/packages", None).await;
    assert_eq!(r.status, 200);
    assert!(
        app.logs()
            .contains("微信支付配置不完整，支付功能可能不可用"),
        "{}",
        app.logs()
    );
    // Payment itself answers a clear error.
    let r = app
        .post_json(
            "/api/v1/client/auth/login",
            None,
            &serde_json::json!({"code": "x"}),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "login_unavailable");
}

#[actix_web::test]
async fn errors_are_json_unknown_route_and_malformed_body() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db).spawn();
    let r = app.get("/no/such/route", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = send(
        client()
            .post(app.url("/api/v1/client/auth/login"))
            .insert_header(("Content-Type", "application/json")),
        Some(b"{not json".to_vec()),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "bad_request");
    assert!(v["error"]["message"].as_str().is_some());
    assert_eq!(app.get("/healthz", None).await.json()["status"], "ok");
}

#[actix_web::test]
async fn check_config_empty_and_complete() {
    // Empty: required items fail, and the output walks the seed's checklist.
    let dir = tempfile::tempdir().expect("tmp");
    let empty = HashMap::from([(
        "DATABASE_URL".to_string(),
        format!("sqlite://{}/c.db", dir.path().display()),
    )]);
    let (code, out, _) = run_cmd(&["check-config"], &empty);
    assert_eq!(code, 1, "{out}");
    for item in [
        "✗ 数据库迁移脚本已执行",
        "✗ WECHAT_PAY_MCH_ID 已配置",
        "✗ WECHAT_PAY_API_KEY 已配置（32位字符串）",
        "✗ WECHAT_PAY_NOTIFY_URL 已配置（HTTPS地址）",
        "– WECHAT_PAY_IP_WHITELIST 已配置（可选）",
        "– 微信支付商户平台回调URL已配置（可选）",
        "– Redis已配置（可选）",
        "✗ 后端服务已重启并加载新配置",
        "✗ 测试接口调用正常",
    ] {
        assert!(out.contains(item), "missing {item:?} in:\n{out}");
    }

    // Complete: migrated DB, every WeChat setting, Redis when we have one.
    let db = TestDb::new(&Backend::Sqlite).await;
    let _ = db.pool().await;
    let mut env = HashMap::from([
        ("DATABASE_URL".to_string(), db.url.clone()),
        (
            "WECHAT_APP_ID".to_string(),
            "wxd930ea5d5a258f4f".to_string(),
        ),
        ("WECHAT_APP_SECRET".to_string(), "secret".to_string()),
        ("WECHAT_PAY_MCH_ID".to_string(), "10000100".to_string()),
        (
            "WECHAT_PAY_API_KEY".to_string(),
            "192006250b4c09247ec02edce69f6a2d".to_string(),
        ),
        (
            "WECHAT_PAY_NOTIFY_URL".to_string(),
            "https://pay.example.com/api/v1/client/coin/recharge/callback".to_string(),
        ),
        ("JWT_SECRET".to_string(), JWT_SECRET.to_string()),
        ("ADMIN_API_TOKEN".to_string(), "short".to_string()),
    ]);
    if let Some((h, p)) = redis() {
        env.insert("REDIS_HOST".into(), h);
        env.insert("REDIS_PORT".into(), p.to_string());
    }
    let (code, out, err) = run_cmd(&["check-config"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("✓ 数据库迁移脚本已执行"), "{out}");
    assert!(out.contains("✓ 测试接口调用正常"), "{out}");
    assert!(out.contains("all required items hold"), "{out}");
    assert!(
        out.contains("✗ ADMIN_API_TOKEN 已配置（可选） — WARNING"),
        "{out}"
    );
    assert!(
        !out.contains("192006250b4c09247ec02edce69f6a2d"),
        "the key must not be printed"
    );
    if redis().is_some() {
        assert!(out.contains("✓ Redis已配置"), "{out}");
    }
}

#[actix_web::test]
async fn cli_help_for_each_subcommand() {
    for sub in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["check-config", "--help"],
        vec!["sandbox", "--help"],
    ] {
        let (code, out, err) = run_cmd(&sub, &HashMap::new());
        assert_eq!(code, 0, "{sub:?}: {err}");
        assert!(out.contains("Usage"), "{out}");
    }
}
