//! Black-box test support: spawns the real `coinpay` binary on port 0 (with its WeChat Pay
//! simulator), against a fresh SQLite file or a fresh database on the MariaDB that
//! scripts/test.sh starts, and talks HTTP to it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coinpay::sandbox::SandboxConfig;
use coinpay::store::DbPool;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef-XYZ";
pub const INTERNAL_TOKEN: &str = "internal-token-0123456789abcdefghijklmnop";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdefghijklmnopqrs";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Mysql(String),
}

fn required() -> bool {
    std::env::var("COINPAY_REQUIRE_SERVICES").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true")
}

/// SQLite always; MariaDB when scripts/test.sh started one (required in CI).
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    match std::env::var("COINPAY_TEST_MYSQL_URL") {
        Ok(url) if !url.is_empty() => v.push(Backend::Mysql(url)),
        _ if required() => {
            panic!("COINPAY_TEST_MYSQL_URL is not set: run the suite with scripts/test.sh")
        }
        _ => eprintln!(
            "SKIPPING the MariaDB variant: COINPAY_TEST_MYSQL_URL is not set (run scripts/test.sh)"
        ),
    }
    v
}

pub fn mysql_only() -> Option<String> {
    backends().into_iter().find_map(|b| match b {
        Backend::Mysql(u) => Some(u),
        Backend::Sqlite => None,
    })
}

/// (host, port) of the test Redis, when there is one (required in CI).
pub fn redis() -> Option<(String, u16)> {
    let host = std::env::var("COINPAY_TEST_REDIS_HOST").ok();
    let port = std::env::var("COINPAY_TEST_REDIS_PORT")
        .ok()
        .and_then(|p| p.parse().ok());
    match (host, port) {
        (Some(h), Some(p)) => Some((h, p)),
        _ if required() => {
            panic!("COINPAY_TEST_REDIS_HOST/PORT are not set: run the suite with scripts/test.sh")
        }
        _ => {
            eprintln!("SKIPPING the Redis part: COINPAY_TEST_REDIS_HOST is not set");
            None
        }
    }
}

fn rand_suffix() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..10)
        .map(|_| (b'a' + r.random_range(0..26)) as char)
        .collect()
}

/// A database of its own for one test.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: &Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}/coinpay.db", dir.path().display()),
            Backend::Mysql(base) => {
                use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
                let name = format!("coinpay_t_{}", rand_suffix());
                let mut c = AsyncMysqlConnection::establish(base)
                    .await
                    .expect("connect to the test MariaDB");
                c.batch_execute(&format!(
                    "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                ))
                .await
                .expect("create test database");
                let (prefix, _) = base.rsplit_once('/').expect("db url has a path");
                format!("{prefix}/{name}")
            }
        };
        TestDb {
            url,
            backend: backend.clone(),
            _dir: dir,
        }
    }

    pub fn db_url(&self) -> coinpay::config::DbUrl {
        self.url.parse().expect("DATABASE_URL")
    }

    pub async fn pool(&self) -> DbPool {
        coinpay::store::run_migrations(&self.db_url())
            .await
            .expect("migrate");
        DbPool::connect(&self.db_url(), 4).await.expect("pool")
    }

    /// Every balance equals its ledger sum, none is negative, no order is credited twice.
    pub async fn assert_invariants(&self) {
        let pool = self.pool().await;
        let v = coinpay::store::ledger::invariant_violations(&pool)
            .await
            .expect("invariant query");
        assert!(v.is_empty(), "ledger invariant violated: {v:#?}");
    }
}

pub fn sandbox_creds() -> SandboxConfig {
    SandboxConfig::default_credentials()
}

/// A running coinpay process.
pub struct App {
    pub base: String,
    pub addr: String,
    child: Child,
    pub logs: Arc<Mutex<String>>,
    pub env: HashMap<String, String>,
    _cwd: tempfile::TempDir,
}

pub struct AppBuilder {
    env: HashMap<String, String>,
    args: Vec<String>,
}

pub fn app(db: &TestDb) -> AppBuilder {
    let mut env = HashMap::new();
    env.insert("DATABASE_URL".into(), db.url.clone());
    env.insert("BIND_ADDR".into(), "127.0.0.1:0".into());
    env.insert("JWT_SECRET".into(), JWT_SECRET.into());
    env.insert("WECHAT_SANDBOX_TIME_SCALE".into(), "0.001".into());
    env.insert("RUST_LOG".into(), "info".into());
    // Never sweep by surprise; tests that want the sweeper set it.
    env.insert("ORDER_SWEEP_CRON".into(), "0 0 0 1 1 * 2099".into());
    AppBuilder {
        env,
        args: vec!["serve".into(), "--sandbox".into()],
    }
}

impl AppBuilder {
    /// Orders expire after a second and the sweeper runs every second.
    pub fn fast_sweeper(self) -> Self {
        self.env("ORDER_EXPIRE_SECONDS", "1")
            .env("ORDER_SWEEP_CRON", "* * * * * *")
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }
    pub fn unset(mut self, k: &str) -> Self {
        self.env.remove(k);
        self
    }
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn spawn(self) -> App {
        spawn(self.env, &self.args)
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_coinpay")
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run_cmd(args: &[&str], env: &HashMap<String, String>) -> (i32, String, String) {
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .current_dir(cwd.path())
        .output()
        .expect("run coinpay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn spawn(env: HashMap<String, String>, args: &[String]) -> App {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coinpay");
    let logs = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("stderr");
    let l = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var("COINPAY_TEST_ECHO").is_ok() {
                eprintln!("[coinpay] {line}");
            }
            let mut g = l.lock().unwrap_or_else(|p| p.into_inner());
            g.push_str(&line);
            g.push('\n');
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let l = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line
                .strip_prefix("coinpay listening on http://")
                .or_else(|| line.strip_prefix("coinpay sandbox listening on http://"))
            {
                let _ = tx.send(rest.to_string());
            }
            let mut g = l.lock().unwrap_or_else(|p| p.into_inner());
            g.push_str(&line);
            g.push('\n');
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let logs = logs.lock().map(|g| g.clone()).unwrap_or_default();
            panic!("coinpay did not start:\n{logs}");
        }
    };
    App {
        base: format!("http://{addr}"),
        addr,
        child,
        logs,
        env,
        _cwd: cwd,
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(req: awc::ClientRequest, body: Option<Vec<u8>>) -> Resp {
    let fut = match body {
        Some(b) => req.send_body(b),
        None => req.send(),
    };
    let mut res = fut.await.expect("HTTP request");
    let body = res.body().limit(16 * 1024 * 1024).await.expect("body");
    Resp {
        status: res.status().as_u16(),
        body: body.to_vec(),
    }
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let mut r = client().get(self.url(path));
        if let Some(t) = token {
            r = r.insert_header(("Authorization", format!("Bearer {t}")));
        }
        send(r, None).await
    }
    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        let mut r = client()
            .post(self.url(path))
            .insert_header(("Content-Type", "application/json"));
        if let Some(t) = token {
            r = r.insert_header(("Authorization", format!("Bearer {t}")));
        }
        send(r, Some(serde_json::to_vec(body).expect("json"))).await
    }
    /// Logs in with a simulator code; returns (token, user id).
    pub async fn login(&self, code: &str) -> (String, i64) {
        let r = self
            .post_json("/api/v1/client/auth/login", None, &json!({ "code": code }))
            .await;
        assert_eq!(r.status, 200, "login: {}", r.text());
        let v = r.json();
        (
            v["token"].as_str().expect("token").to_string(),
            v["user"]["id"].as_i64().expect("user id"),
        )
    }
    pub async fn create_order(&self, token: &str, package_id: i64) -> Value {
        let r = self
            .post_json(
                "/api/v1/client/coin/recharge/order",
                Some(token),
                &json!({ "package_id": package_id }),
            )
            .await;
        assert_eq!(r.status, 200, "create order: {}", r.text());
        r.json()
    }
    /// Pays at the simulator (which then notifies us), with a query string like "duplicates=3".
    pub async fn sandbox_pay(&self, order_no: &str, query: &str) -> Resp {
        let url = self.url(&format!("/sandbox/simulate/pay/{order_no}?{query}"));
        send(client().post(url), None).await
    }
    pub async fn balance(&self, token: &str) -> i64 {
        let r = self.get("/api/v1/client/coin/balance", Some(token)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["balance"].as_i64().expect("balance")
    }
    pub async fn order(&self, token: &str, order_no: &str) -> Value {
        let r = self
            .get(
                &format!("/api/v1/client/coin/recharge/order/{order_no}"),
                Some(token),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
    /// POSTs a raw notification body to our callback.
    pub async fn notify_raw(&self, body: &[u8], headers: &[(&str, &str)]) -> Resp {
        let mut r = client()
            .post(self.url("/api/v1/client/coin/recharge/callback"))
            .insert_header(("Content-Type", "text/xml"));
        for (k, v) in headers {
            r = r.insert_header((*k, *v));
        }
        send(r, Some(body.to_vec())).await
    }
    /// What the process printed so far. Its output is read by other threads: a line written
    /// just before may still be on its way, so this lets them catch up first.
    pub fn logs(&self) -> String {
        std::thread::sleep(Duration::from_millis(100));
        self.logs.lock().map(|g| g.clone()).unwrap_or_default()
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// SIGTERM, then the exit status (None if it did not exit within `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < within {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics", None).await;
        assert_eq!(r.status, 200);
        r.text()
    }
}

/// A signed notification for `order_no` as the simulator's WeChat would send it.
pub fn notification(
    order_no: &str,
    txn: &str,
    total_fee: i64,
    tweak: impl FnOnce(&mut coinpay::wechat::Params),
) -> Vec<u8> {
    let c = sandbox_creds();
    let mut p = coinpay::sandbox::paid_notification_fields(&c, order_no, txn, total_fee);
    tweak(&mut p);
    coinpay::wechat::notify::build_notification(&p, c.api_key.expose_secret(), c.sign_type, false)
        .into_bytes()
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f().await {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub const SUCCESS: &str = coinpay::wechat::xml::SUCCESS_REPLY;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A simulator in its own process (it outlives coinpay restarts), on a random port.
pub fn standalone_sandbox(time_scale: &str) -> App {
    let mut env = HashMap::new();
    env.insert(
        "WECHAT_SANDBOX_TIME_SCALE".to_string(),
        time_scale.to_string(),
    );
    env.insert("RUST_LOG".to_string(), "info".to_string());
    spawn(
        env,
        &[
            "sandbox".to_string(),
            "--bind".to_string(),
            "127.0.0.1:0".to_string(),
        ],
    )
}

impl AppBuilder {
    /// Plain `serve` on a fixed port against a standalone simulator, so that the simulator's
    /// notifications find the service again after a restart.
    pub fn against(self, sandbox: &App, port: u16) -> Self {
        self.against_base(&sandbox.base, port)
    }

    /// Plain `serve` on `port`, using the simulator at `base` as WeChat.
    pub fn against_base(self, base: &str, port: u16) -> Self {
        let c = sandbox_creds();
        self.args(&["serve"])
            .env("BIND_ADDR", &format!("127.0.0.1:{port}"))
            .env("WECHAT_APP_ID", &c.app_id)
            .env("WECHAT_APP_SECRET", c.app_secret.expose_secret())
            .env("WECHAT_PAY_MCH_ID", &c.mch_id)
            .env("WECHAT_PAY_API_KEY", c.api_key.expose_secret())
            .env(
                "WECHAT_PAY_NOTIFY_URL",
                &format!("http://127.0.0.1:{port}/api/v1/client/coin/recharge/callback"),
            )
            .env("WECHAT_PAY_API_BASE", base)
            .env("WECHAT_API_BASE", base)
            .env("WECHAT_PAY_IP_WHITELIST", "127.0.0.0/8")
    }
}

impl App {
    /// The simulator's view of an order (standalone simulator: paths at the root).
    pub async fn sim_order(&self, prefix: &str, order_no: &str) -> serde_json::Value {
        let r = self
            .get(&format!("{prefix}/simulate/orders/{order_no}"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
    pub async fn sim_pay(&self, prefix: &str, order_no: &str, query: &str) -> Resp {
        let url = self.url(&format!("{prefix}/simulate/pay/{order_no}?{query}"));
        send(client().post(url), None).await
    }
}

/// The value of one sample (`name` with its labels, exactly as exposed), if present.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let v = rest.strip_prefix(' ')?;
        v.split_whitespace().next()?.parse().ok()
    })
}
