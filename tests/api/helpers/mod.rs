//! What the tests share: the services of this run ([`backends`]), the running binary and the
//! HTTP calls to it ([`app`]), a test database with the checks run on it, and waiting.
//!
//! The process and database machinery itself is the harness the benchmark uses too
//! (`tests/harness`); this module adds what only tests need.

mod app;
mod backends;
mod endpoint;

use std::time::{Duration, Instant};

pub use app::{App, AppBuilder, Resp, app, client, free_port, run_cmd, send, standalone_sandbox};
pub(crate) use backends::backend_test;
pub use backends::{mysql, redis};
pub use endpoint::post_endpoint;

pub use crate::harness::lib_api::sandbox_credentials as sandbox_creds;
pub use crate::harness::{
    ADMIN_TOKEN, Backend, DbPool, INTERNAL_TOKEN, JWT_SECRET, SUCCESS, notification, sample,
};

/// A database of its own for one test.
pub type TestDb = crate::harness::Db;

/// How long the usual waits of a test may take.
pub const WAIT: Duration = Duration::from_secs(20);

impl TestDb {
    pub async fn new(backend: &Backend) -> TestDb {
        TestDb::create(backend, "coinpay_t")
            .await
            .unwrap_or_else(|e| panic!("test database: {e}"))
    }

    /// A pool on the migrated database.
    pub async fn pool(&self) -> DbPool {
        self.migrate().await.expect("migrate");
        self.connect(4).await.expect("pool")
    }

    /// Every balance equals its ledger sum, none is negative, no order is credited twice.
    pub async fn assert_invariants(&self) {
        let pool = self.pool().await;
        let v = crate::harness::invariant_violations(&pool)
            .await
            .expect("invariant query");
        assert!(v.is_empty(), "ledger invariant violated: {v:#?}");
    }

    /// Runs `sql` (statements the backend's own dialect) on the database, outside the service:
    /// to plant a fault under it or look behind its back.
    pub async fn execute(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite => {
                use diesel::Connection;
                use diesel::connection::SimpleConnection;
                let path = self.url.strip_prefix("sqlite://").expect("a sqlite:// URL");
                let mut c =
                    diesel::SqliteConnection::establish(path).expect("open the SQLite file");
                // The service may be writing: wait for its lock rather than fail.
                c.batch_execute("PRAGMA busy_timeout = 10000")
                    .expect("busy_timeout");
                c.batch_execute(sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            Backend::Mysql(_) => {
                use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
                let mut c = AsyncMysqlConnection::establish(&self.url)
                    .await
                    .expect("connect to the test database");
                c.batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }
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

/// Waits (up to [`WAIT`]) until the user of `token` has `expected` coins.
pub async fn wait_balance(app: &App, token: &str, expected: i64) {
    wait_until(&format!("balance {expected}"), WAIT, || async {
        app.balance(token).await == expected
    })
    .await;
}

/// The fields of each JSON log line (`LOG_FORMAT=json`) whose message is `message`, in order.
pub fn log_events(logs: &str, message: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .map(|mut v| v["fields"].take())
        .collect()
}

/// `series` (exactly as exposed) has the value `expected` in the scrape `metrics`.
pub fn assert_sample(metrics: &str, series: &str, expected: f64) {
    assert_eq!(
        sample(metrics, series),
        Some(expected),
        "{series} in\n{metrics}"
    );
}

/// The number of live order actors, -1 when the gauge is missing.
pub fn live_actors(metrics: &str) -> f64 {
    sample(metrics, "coinpay_order_actors").unwrap_or(-1.0)
}
