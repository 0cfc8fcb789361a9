//! The operator console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by scripts/browser.sh), driven over WebDriver with fantoccini, against the real
//! binary on SQLite with its simulator. Screenshots of every screen, at 1280×800 and 380 px
//! wide, are written to target/console-screenshots/.
//!
//! `refund_and_reconciliation_screens` needs the refund and reconciliation backends (issues 12
//! and 13), which are not on this branch: it is `#[ignore]`d with that reason until they land.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::Backend;
use crate::helpers::*;
use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

/// A chromedriver process on a free loopback port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
    /// Every session's fresh `--user-data-dir` lives in here.
    profiles: tempfile::TempDir,
    chromium: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_string());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install the browser with `bash scripts/browser.sh install` \
         (scripts/test.sh does), or set {var}"
    );
    path
}

async fn driver() -> Driver {
    let chromium = tool("COINPAY_TEST_CHROMIUM", "/usr/bin/chromium");
    let chromedriver = tool("COINPAY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let d = Driver {
        child,
        port,
        profiles: tempfile::tempdir().expect("tempdir"),
        chromium,
    };
    wait_until("chromedriver", WAIT, || async {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/status"))
            .send()
            .await;
        r.is_ok_and(|r| r.status().is_success())
    })
    .await;
    d
}

/// A browser session: headless, as root, with nothing that phones home, and a fresh profile.
/// `screen`: a phone's screen of that many CSS pixels (device emulation).
async fn browser(d: &Driver, screen: Option<(u32, u32)>) -> Client {
    let profile = tempfile::Builder::new()
        .prefix("profile")
        .tempdir_in(d.profiles.path())
        .expect("profile dir")
        .keep();
    let mut options = json!({
            "binary": d.chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,800", "--lang=zh-CN",
                format!("--user-data-dir={}", profile.display()),
            ],
    });
    if let Some((width, height)) = screen {
        options["mobileEmulation"] =
            json!({ "deviceMetrics": { "width": width, "height": height, "pixelRatio": 1.0 } });
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".to_string(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("WebDriver session")
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Makes the page's viewport `w`×`h` pixels (the window around it is a little larger).
async fn viewport(c: &Client, w: u32, h: u32) {
    c.set_window_size(w, h).await.expect("resize");
    let v = js(
        c,
        "[window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]",
    )
    .await;
    let extra = |i: usize| u32::try_from(v[i].as_i64().unwrap_or(0)).unwrap_or(0);
    c.set_window_size(w + extra(0), h + extra(1))
        .await
        .expect("resize");
    let inner = js(c, "[window.innerWidth, window.innerHeight]").await;
    assert_eq!(inner, json!([w, h]), "viewport");
}

/// A screenshot of the whole page, top to bottom, `w` pixels wide; the viewport is `w`×800
/// again afterwards.
async fn shot_full(c: &Client, name: &str, w: u32) {
    js(c, "window.scrollTo(0, 0)").await;
    let height = js(c, "document.documentElement.scrollHeight").await;
    let height = u32::try_from(height.as_i64().unwrap_or(800)).unwrap_or(800);
    viewport(c, w, height.max(800)).await;
    shot(c, name).await;
    viewport(c, w, 800).await;
}

/// Runs `return <expr>` in the page.
async fn js(c: &Client, expr: &str) -> Value {
    c.execute(&format!("return {expr};"), vec![])
        .await
        .unwrap_or_else(|e| panic!("script {expr}: {e}"))
}

/// The text of the element with this id ("" when there is none).
async fn text(c: &Client, id: &str) -> String {
    js(
        c,
        &format!("document.getElementById({id:?})?.textContent ?? ''"),
    )
    .await
    .as_str()
    .unwrap_or("")
    .to_string()
}

/// Waits until the element with this id contains `needle`.
async fn wait_text(c: &Client, id: &str, needle: &str) {
    let t = Instant::now();
    loop {
        let got = text(c, id).await;
        if got.contains(needle) {
            return;
        }
        if t.elapsed() > WAIT {
            let body = text_of_page(c).await;
            panic!("#{id} never contained {needle:?}; it says {got:?}; the page says:\n{body}");
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of_page(c: &Client) -> String {
    js(c, "document.body.innerText")
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn by_id(c: &Client, id: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
}

async fn type_into(c: &Client, id: &str, value: &str) {
    let el = by_id(c, id).await;
    el.clear().await.expect("clear");
    el.send_keys(value).await.expect("type");
}

/// Sets an input's value as a script would (a date input takes typing in the locale's order).
async fn set_value(c: &Client, id: &str, value: &str) {
    by_id(c, id).await;
    js(
        c,
        &format!("(document.getElementById({id:?}).value = {value:?}, true)"),
    )
    .await;
}

async fn click(c: &Client, id: &str) {
    by_id(c, id).await.click().await.expect("click");
}

/// Two clicks as fast as a mouse makes them.
async fn double_click(c: &Client, id: &str) {
    let el = by_id(c, id).await;
    let mouse = MouseActions::new("mouse".to_string())
        .then(PointerAction::MoveToElement {
            element: el,
            duration: None,
            x: 0.0,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    c.perform_actions(mouse).await.expect("double click");
    c.release_actions().await.expect("release");
}

/// Confirms the console's confirmation dialog (which must be open).
async fn confirm(c: &Client) {
    wait_js(c, "document.getElementById('confirm').open").await;
    click(c, "confirm-ok").await;
    wait_js(c, "!document.getElementById('confirm').open").await;
}

async fn wait_js(c: &Client, expr: &str) {
    let t = Instant::now();
    while js(c, expr).await != json!(true) {
        assert!(t.elapsed() < WAIT, "never true: {expr}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn go(c: &Client, app: &App, hash: &str) {
    c.goto(&app.url(&format!("/admin/{hash}")))
        .await
        .expect("navigate");
}

/// No JavaScript dialog (alert, confirm, prompt) is open.
async fn assert_no_js_dialog(c: &Client) {
    if let Ok(t) = c.get_alert_text().await {
        panic!("a JavaScript dialog opened: {t:?}");
    }
}

/// The page fits the window's width (wide tables scroll inside their own box).
async fn assert_fits(c: &Client, what: &str) {
    let v = js(
        c,
        "[document.documentElement.scrollWidth, window.innerWidth]",
    )
    .await;
    assert!(
        v[0].as_i64() <= v[1].as_i64(),
        "{what}: the page is wider than the window: {v}"
    );
}

async fn sign_in(c: &Client, app: &App) {
    go(c, app, "").await;
    type_into(c, "token", ADMIN_TOKEN).await;
    click(c, "signin-submit").await;
    wait_text(c, "tile-paid-orders", "Paid orders today").await;
}

fn console_app(db: &TestDb) -> App {
    app(db).env("ADMIN_API_TOKEN", ADMIN_TOKEN).spawn()
}

async fn admin_get(app: &App, path: &str) -> Value {
    let r = app.get(path, Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

#[actix_web::test]
async fn the_console_is_served_only_with_an_admin_token_and_with_strict_headers() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let closed = app(&db).spawn();
    for path in ["/admin", "/admin/", "/admin/app.js"] {
        let r = closed.get(path, None).await;
        assert_eq!(r.status, 404, "{path} without ADMIN_API_TOKEN");
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
    drop(closed);

    let app = console_app(&db);
    let mut res = awc::Client::builder()
        .disable_redirects()
        .finish()
        .get(app.url("/admin"))
        .send()
        .await
        .expect("GET /admin");
    assert_eq!(res.status().as_u16(), 308);
    assert_eq!(
        res.headers().get("location").map(|v| v.as_bytes()),
        Some(&b"/admin/"[..])
    );
    let _ = res.body().await;
    for (path, ctype) in [
        ("/admin/", "text/html; charset=utf-8"),
        ("/admin/app.js", "text/javascript; charset=utf-8"),
        ("/admin/style.css", "text/css; charset=utf-8"),
    ] {
        let mut res = client().get(app.url(path)).send().await.expect("GET");
        assert_eq!(res.status().as_u16(), 200, "{path}");
        let h = |k: &str| {
            res.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(h("content-type"), ctype, "{path}");
        let csp = h("content-security-policy");
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h("x-frame-options"), "DENY");
        assert_eq!(h("referrer-policy"), "no-referrer");
        assert_eq!(h("x-content-type-options"), "nosniff");
        assert_eq!(h("cache-control"), "no-cache");
        let etag = h("etag");
        assert!(etag.starts_with('"'), "{path}: ETag {etag:?}");
        let _ = res.body().await;
        // The browser's copy is current: 304, no body.
        let mut again = client()
            .get(app.url(path))
            .insert_header(("If-None-Match", etag.as_str()))
            .send()
            .await
            .expect("GET");
        assert_eq!(again.status().as_u16(), 304, "{path}");
        assert!(again.body().await.expect("body").is_empty());
    }
    assert_eq!(app.get("/admin/nope.js", None).await.status, 404);
    assert_eq!(app.get("/admin/..%2fCargo.toml", None).await.status, 404);
}

/// The admin endpoints the console added, over HTTP on every backend.
async fn the_console_s_admin_endpoints(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = console_app(&db);
    let (token, uid) = app.login("console-api-user").await;
    let no = app.create_order(&token, 2).await["order_no"]
        .as_str()
        .expect("order_no")
        .to_string();
    app.create_order(&token, 1).await;
    assert_eq!(app.sandbox_pay(&no, "").await.status, 200);
    wait_until("the payment", WAIT, || async {
        app.balance(&token).await == 330
    })
    .await;

    let o = admin_get(&app, "/api/v1/admin/overview").await;
    assert_eq!(o["today"]["paid_orders"], 1, "{o}");
    assert_eq!(o["today"]["paid_fen"], 3000, "{o}");
    assert_eq!(o["pending"]["count"], 1, "{o}");
    assert!(o["pending"]["oldest_age_seconds"].as_i64().is_some(), "{o}");
    assert_eq!(o["notifications"]["outcomes"]["ok"], 1, "{o}");
    assert_eq!(o["notifications"]["since"], Value::Null, "since start: {o}");
    assert_eq!(app.get("/api/v1/admin/overview", None).await.status, 401);

    let txn = admin_get(&app, &format!("/api/v1/admin/orders/{no}")).await["transaction_id"]
        .as_str()
        .expect("transaction_id")
        .to_string();
    let openid = admin_get(&app, &format!("/api/v1/admin/users/{uid}")).await["user"]["openid"]
        .as_str()
        .expect("openid")
        .to_string();
    for (q, kind) in [
        (&no, "order"),
        (&txn, "order"),
        (&uid.to_string(), "user"),
        (&openid, "user"),
    ] {
        let r = admin_get(&app, &format!("/api/v1/admin/search?q={q}")).await;
        assert_eq!(r["matches"].as_array().map(Vec::len), Some(1), "{q}: {r}");
        assert_eq!(r["matches"][0]["kind"], kind, "{q}: {r}");
    }
    let r = app
        .get("/api/v1/admin/search?q=nobody", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .get("/api/v1/admin/search?q=%20", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (422, json!("q"))
    );

    let l = admin_get(&app, &format!("/api/v1/admin/orders/{no}/ledger")).await;
    assert_eq!(l["logs"].as_array().map(Vec::len), Some(1), "{l}");
    assert_eq!(l["logs"][0]["delta"], 330);
    let r = app
        .get("/api/v1/admin/orders/CPNOPE/ledger", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(r.status, 404);

    let p = admin_get(
        &app,
        &format!("/api/v1/admin/users/{uid}/orders?page=2&page_size=1"),
    )
    .await;
    assert_eq!(
        (p["total"].clone(), p["page"].clone()),
        (json!(2), json!(2)),
        "{p}"
    );
    assert_eq!(
        p["orders"][0]["order_no"],
        no.as_str(),
        "oldest on page 2: {p}"
    );
    let p = admin_get(
        &app,
        &format!("/api/v1/admin/users/{uid}/ledger?page=1&page_size=5"),
    )
    .await;
    assert_eq!(p["total"], 1, "{p}");

    // 10 of 30 yuan for 330 coins: 110 coins; the whole: 330; more than paid: 422.
    let preview = async |fen: &str| {
        let path = format!("/api/v1/admin/orders/{no}/refund-preview?refund_fen={fen}");
        app.get(&path, Some(ADMIN_TOKEN)).await
    };
    let r = preview("1000").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["coins"], 110);
    assert_eq!(preview("3000").await.json()["coins"], 330);
    for bad in ["3001", "0", "abc"] {
        let r = preview(bad).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], "refund_fen");
    }
    db.assert_invariants().await;
}
backend_test!(the_console_s_admin_endpoints);

#[actix_web::test]
async fn an_operator_works_through_every_screen_in_a_real_browser() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = console_app(&db);

    // A paid order, and one paid at WeChat whose notification never came.
    let (token, uid) = app.login("console-user").await;
    let paid = app.create_order(&token, 1).await["order_no"]
        .as_str()
        .expect("order_no")
        .to_string();
    assert_eq!(app.sandbox_pay(&paid, "").await.status, 200);
    wait_until("the payment", WAIT, || async {
        app.balance(&token).await == 60
    })
    .await;
    let txn = admin_get(&app, &format!("/api/v1/admin/orders/{paid}")).await["transaction_id"]
        .as_str()
        .expect("transaction_id")
        .to_string();
    let silent = app.create_order(&token, 1).await["order_no"]
        .as_str()
        .expect("order_no")
        .to_string();
    assert_eq!(app.sandbox_pay(&silent, "notify=false").await.status, 200);

    let d = driver().await;
    let c = browser(&d, None).await;
    viewport(&c, 1280, 800).await;

    // Sign in: a wrong token says so; the right one opens the overview.
    go(&c, &app, "").await;
    by_id(&c, "token").await;
    assert_eq!(
        js(&c, "document.querySelector('label[for=token]').textContent").await,
        json!("管理令牌 Admin token")
    );
    assert_eq!(
        js(&c, "document.getElementById('token').type").await,
        json!("password")
    );
    shot(&c, "signin-1280").await;
    type_into(&c, "token", "not-the-admin-token-0123456789abcdef").await;
    click(&c, "signin-submit").await;
    wait_text(&c, "signin-error", "Wrong token").await;
    assert_eq!(js(&c, "sessionStorage.length").await, json!(0));
    type_into(&c, "token", ADMIN_TOKEN).await;
    click(&c, "signin-submit").await;
    wait_text(&c, "tile-paid-orders", "Paid orders today").await;
    assert_eq!(
        js(
            &c,
            "document.querySelector('#tile-paid-orders .tile-value').textContent"
        )
        .await,
        json!("1")
    );
    wait_text(&c, "tile-paid-fen", "¥6.00 (600 分 fen)").await;
    wait_text(&c, "tile-pending", "1").await;
    wait_text(&c, "notifications", "credited").await;
    assert_eq!(
        js(&c, "sessionStorage.getItem('coinpay.adminToken')").await,
        json!(ADMIN_TOKEN)
    );
    assert_eq!(
        js(&c, "localStorage.length").await,
        json!(0),
        "token only in the tab"
    );
    shot(&c, "overview-1280").await;

    // Find a paid order by its order_no, then by its transaction_id.
    go(&c, &app, "#/find").await;
    shot(&c, "find-1280").await;
    type_into(&c, "find-q", &paid).await;
    click(&c, "find-submit").await;
    wait_text(&c, "order-status", "paid").await;
    assert_eq!(text(&c, "order-transaction").await, txn);
    wait_text(&c, "order-ledger-table", "recharge").await;
    wait_text(&c, "order-ledger-table", "+60").await;
    go(&c, &app, "#/find").await;
    type_into(&c, "find-q", &txn).await;
    click(&c, "find-submit").await;
    wait_text(&c, "order-transaction", &txn).await;
    assert!(text(&c, "order").await.contains(&paid));
    wait_text(&c, "order-ledger-table", "+60").await;
    shot(&c, "order-1280").await;
    shot_full(&c, "order-full-1280", 1280).await;
    // The refund form asks the server what a refund would take back: 2.50 of 6.00 yuan for
    // 60 coins is 25 coins. (Cancelled here: refunds need the backend of issue 12.)
    type_into(&c, "refund-amount", "2.50").await;
    type_into(&c, "refund-reason", "preview only").await;
    click(&c, "refund-submit").await;
    wait_js(&c, "document.getElementById('confirm').open").await;
    wait_text(&c, "refund-preview-coins", "25").await;
    click(&c, "confirm-cancel").await;
    wait_js(&c, "!document.getElementById('confirm').open").await;
    type_into(&c, "refund-amount", "6.01").await;
    click(&c, "refund-submit").await;
    wait_text(&c, "refund-amount-error", "600 fen left to refund").await;
    type_into(&c, "refund-amount", "1.234").await;
    click(&c, "refund-submit").await;
    wait_text(&c, "refund-amount-error", "at most two decimals").await;
    type_into(&c, "refund-amount", "").await;

    // Re-check a paid-but-unnotified order: it becomes paid and is credited once.
    go(&c, &app, &format!("#/order/{silent}")).await;
    wait_text(&c, "order-status", "pending").await;
    click(&c, "recheck").await;
    confirm(&c).await;
    wait_text(&c, "order-notice", "Re-checked").await;
    wait_text(&c, "order-status", "paid").await;
    assert_eq!(app.balance(&token).await, 120);

    // Adjust a balance with double clicks on both buttons: one ledger row.
    go(&c, &app, &format!("#/user/{uid}")).await;
    wait_text(&c, "user-balance", "120").await;
    type_into(&c, "adjust-delta", "25").await;
    type_into(&c, "adjust-reason", "console test grant").await;
    double_click(&c, "adjust-submit").await;
    wait_js(&c, "document.getElementById('confirm').open").await;
    double_click(&c, "confirm-ok").await;
    wait_text(&c, "user-notice", "Adjusted").await;
    wait_text(&c, "user-balance", "145").await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.balance(&token).await, 145);
    let ledger = admin_get(
        &app,
        &format!("/api/v1/admin/users/{uid}/ledger?page_size=100"),
    )
    .await;
    let adjusts = ledger["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter(|l| l["kind"] == "adjust")
        .count();
    assert_eq!(adjusts, 1, "one adjustment row: {ledger}");
    assert_eq!(
        ledger["total"], 3,
        "two recharges and one adjustment: {ledger}"
    );
    wait_text(&c, "user-ledger-table", "console test grant").await;
    wait_text(&c, "user-orders-table", &silent).await;
    assert_eq!(
        sample(
            &app.metrics().await,
            "coinpay_admin_actions_total{kind=\"balance_adjust\"}"
        ),
        Some(1.0)
    );
    shot(&c, "user-1280").await;

    // Packages: a validation error of the API next to its field; a package whose name is
    // markup shows as text; the price typed in yuan arrives in exact fen; deactivating it
    // takes it off the mini-program's list.
    go(&c, &app, "#/packages").await;
    wait_text(&c, "packages-table", "体验包").await;
    let xss = "<img src=x onerror=alert(1)>";
    type_into(&c, "pkg-name", xss).await;
    type_into(&c, "pkg-price", "19.99").await;
    wait_text(&c, "pkg-price-fen", "1999 分").await;
    type_into(&c, "pkg-coins", "-5").await;
    click(&c, "pkg-submit").await;
    confirm(&c).await;
    wait_text(&c, "pkg-coins-error", "must not be negative").await;
    type_into(&c, "pkg-coins", "200").await;
    type_into(&c, "pkg-bonus", "20").await;
    click(&c, "pkg-submit").await;
    confirm(&c).await;
    wait_text(&c, "packages-notice", "Created").await;
    wait_text(&c, "packages-table", xss).await;
    let listed = app.get("/api/v1/client/coin/packages", None).await.json();
    let ours = listed["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == xss)
        .cloned()
        .unwrap_or_else(|| panic!("the new package is on sale: {listed}"));
    assert_eq!(ours["price_fen"], 1999, "19.99 yuan is 1999 fen exactly");
    assert_eq!(ours["total_coins"], 220);
    let id = ours["id"].as_i64().expect("id");
    assert_eq!(
        js(&c, &format!("document.querySelector('[data-edit=\"{id}\"]').closest('tr').querySelector('.package-name').textContent")).await,
        json!(xss)
    );
    assert_eq!(
        js(&c, "document.querySelectorAll('img').length").await,
        json!(0)
    );
    assert_no_js_dialog(&c).await;
    wait_text(&c, "packages-table", "¥19.99 (1999 分 fen)").await;
    shot(&c, "packages-1280").await;
    click(&c, &format!("toggle-{id}")).await;
    confirm(&c).await;
    wait_text(&c, "packages-notice", "Deactivated").await;
    let listed = app.get("/api/v1/client/coin/packages", None).await.json();
    assert!(
        !listed["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .any(|p| p["id"] == id),
        "deactivated: off the mini-program's list: {listed}"
    );
    wait_text(&c, "packages-table", "inactive").await;
    assert_no_js_dialog(&c).await;

    // Reconciliation: its backend (issue 13) is not on this server; the screen says so.
    go(&c, &app, "#/recon").await;
    wait_text(&c, "recon-error", "not available").await;
    shot(&c, "recon-1280").await;

    // The overview refreshes by itself: the re-checked payment shows without a reload.
    go(&c, &app, "").await;
    wait_text(&c, "tile-paid-fen", "¥12.00").await;

    // No token in any URL the browser asked for, and sign-out forgets it.
    let urls = js(
        &c,
        "performance.getEntriesByType('resource').map(e => e.name).concat([location.href])",
    )
    .await;
    assert!(
        !urls.to_string().contains(ADMIN_TOKEN),
        "token in a URL: {urls}"
    );
    assert!(
        !app.logs().contains(ADMIN_TOKEN),
        "the token is never logged"
    );
    click(&c, "signout").await;
    wait_text(&c, "signin-error", "Signed out").await;
    assert_eq!(js(&c, "sessionStorage.length").await, json!(0));
    go(&c, &app, &format!("#/user/{uid}")).await;
    by_id(&c, "token").await;

    c.close().await.expect("close the browser");

    // A phone's width (a session of its own: a desktop window is at least 500 px wide):
    // everything fits, wide tables scroll in their own box.
    let phone = browser(&d, Some((380, 800))).await;
    sign_in(&phone, &app).await;
    assert_eq!(js(&phone, "window.innerWidth").await, json!(380));
    for (hash, name, ready) in [
        ("", "overview", "tile-paid-orders"),
        ("#/find", "find", "find-q"),
        (&format!("#/order/{paid}") as &str, "order", "order-status"),
        (&format!("#/user/{uid}"), "user", "user-balance"),
        ("#/packages", "packages", "packages-table"),
        ("#/recon", "recon", "recon-error"),
    ] {
        go(&phone, &app, hash).await;
        by_id(&phone, ready).await;
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        assert_fits(&phone, name).await;
        shot(&phone, &format!("{name}-380")).await;
    }
    phone.close().await.expect("close the browser");

    db.assert_invariants().await;
}

/// Needs the refund backend (issue 12: POST/GET /api/v1/admin/orders/{no}/refunds,
/// `refunded_fen` on the admin order) and the reconciliation backend (issue 13:
/// /api/v1/admin/reconciliations). Enable once both are merged.
#[actix_web::test]
#[ignore = "needs the refund (issue 12) and reconciliation (issue 13) backends"]
async fn refund_and_reconciliation_screens() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = console_app(&db);
    let (token, _) = app.login("console-refund-user").await;
    let no = app.create_order(&token, 2).await["order_no"]
        .as_str()
        .expect("order_no")
        .to_string();
    assert_eq!(app.sandbox_pay(&no, "").await.status, 200);
    wait_until("the payment", WAIT, || async {
        app.balance(&token).await == 330
    })
    .await;

    let d = driver().await;
    let c = browser(&d, None).await;
    sign_in(&c, &app).await;

    // Refund 10.00 of 30.00 yuan: 110 of 330 coins, shown before confirming; a double click
    // on the confirmation is one refund.
    go(&c, &app, &format!("#/order/{no}")).await;
    wait_text(&c, "order-refunded", "¥0.00").await;
    type_into(&c, "refund-amount", "10").await;
    type_into(&c, "refund-reason", "console refund test").await;
    click(&c, "refund-submit").await;
    wait_text(&c, "refund-preview-coins", "110").await;
    double_click(&c, "confirm-ok").await;
    wait_text(&c, "order-notice", "Refund").await;
    wait_text(&c, "order-refunded", "¥10.00 (1000 分 fen)").await;
    wait_text(&c, "order-refunds-table", "console refund test").await;
    wait_text(&c, "order-ledger-table", "-110").await;
    assert_eq!(app.balance(&token).await, 220);
    let refunds = admin_get(&app, &format!("/api/v1/admin/orders/{no}/refunds")).await;
    assert_eq!(
        refunds["refunds"].as_array().map(Vec::len),
        Some(1),
        "one refund for a double click: {refunds}"
    );
    shot(&c, "order-refund-1280").await;

    // Reconcile today's bill date: the report lists the day with its totals; run again.
    let today = chrono::Utc::now()
        .with_timezone(&coinpay::order::number::BEIJING)
        .format("%Y-%m-%d")
        .to_string();
    go(&c, &app, "#/recon").await;
    set_value(&c, "recon-run-date", &today).await;
    click(&c, "recon-run").await;
    confirm(&c).await;
    wait_text(&c, "recon-status", "balanced").await;
    wait_text(&c, "recon-wechat", "1 笔").await;
    click(&c, "recon-again").await;
    confirm(&c).await;
    wait_text(&c, "recon-local", "1 笔").await;
    shot(&c, "recon-day-1280").await;
    go(&c, &app, "#/recon").await;
    wait_text(&c, "recon-table", &today).await;

    c.close().await.expect("close the browser");
    db.assert_invariants().await;
}
