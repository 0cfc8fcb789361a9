//! A running `coinpay` (service or standalone simulator) and the HTTP calls tests make to it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::TestDb;
use crate::harness::process::Logs;
use crate::harness::{self, BIN, Process};

/// A running coinpay process.
pub struct App {
    pub base: String,
    pub addr: String,
    process: Process,
    logs: Logs,
    _cwd: tempfile::TempDir,
}

/// The command line and environment of an [`App`] before it starts.
pub struct AppBuilder {
    env: HashMap<String, String>,
    args: Vec<String>,
}

/// `coinpay serve --sandbox` on `db`, with the simulator's notifications a thousand times faster
/// than WeChat's schedule.
pub fn app(db: &TestDb) -> AppBuilder {
    let (args, env) = harness::service_command(db);
    AppBuilder {
        env: env.into_iter().collect(),
        args,
    }
    .env("WECHAT_SANDBOX_TIME_SCALE", "0.001")
    .env("RUST_LOG", "info")
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
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn spawn(self) -> App {
        spawn(self.env, &self.args)
    }

    /// Plain `serve` on a fixed port against a standalone simulator, so that the simulator's
    /// notifications find the service again after a restart.
    pub fn against(self, sandbox: &App, port: u16) -> Self {
        self.against_base(&sandbox.base, port)
    }

    /// Plain `serve` on `port`, using the simulator at `base` as WeChat.
    pub fn against_base(self, base: &str, port: u16) -> Self {
        let c = harness::lib_api::sandbox_credentials();
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

/// A simulator in its own process (it outlives coinpay restarts), on a random port.
pub fn standalone_sandbox(time_scale: &str) -> App {
    let env = HashMap::from([
        (
            "WECHAT_SANDBOX_TIME_SCALE".to_string(),
            time_scale.to_string(),
        ),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]);
    spawn(
        env,
        &["sandbox".into(), "--bind".into(), "127.0.0.1:0".into()],
    )
}

fn spawn(env: HashMap<String, String>, args: &[String]) -> App {
    let cwd = tempfile::tempdir().expect("tempdir");
    let (process, logs) = Process::spawn(Path::new(BIN), args, &env, cwd.path(), None)
        .unwrap_or_else(|e| panic!("coinpay did not start: {e}"));
    App {
        base: format!("http://{}", process.addr),
        addr: process.addr.clone(),
        process,
        logs,
        _cwd: cwd,
    }
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run_cmd(args: &[&str], env: &HashMap<String, String>) -> (i32, String, String) {
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// A reply, read to the end.
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
    /// Creates an order of `package_id` and returns its number.
    pub async fn order_no(&self, token: &str, package_id: i64) -> String {
        self.create_order(token, package_id).await["order_no"]
            .as_str()
            .expect("order_no")
            .to_string()
    }
    /// Pays at the simulator (which then notifies us), with a query string like "duplicates=3".
    pub async fn sandbox_pay(&self, order_no: &str, query: &str) -> Resp {
        self.sim_pay("/sandbox", order_no, query).await
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
        self.process.pid()
    }
    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        self.process.kill();
    }
    /// SIGTERM, then the exit status (None if it did not exit within `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        self.process.terminate(within)
    }
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics", None).await;
        assert_eq!(r.status, 200);
        r.text()
    }

    /// The simulator's view of an order (`prefix` "/sandbox" inside a service, "" standalone).
    pub async fn sim_order(&self, prefix: &str, order_no: &str) -> Value {
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
