//! The harness that the integration tests (`tests/api`) and the benchmark (`benches/coinpay_bench`)
//! share: a fresh database on SQLite or on the test MariaDB, the real `coinpay` binary started on
//! port 0 and found by the address it prints, and the reading of one metric sample.
//!
//! Both include this directory as a module (`#[path = …] mod harness;`) rather than depending on
//! a helper crate, so that a test and the benchmark cannot drift apart and no workspace is needed.
//! Everything here is used by both sides; what only one of them needs lives on that side (each
//! adds its own `impl` blocks to [`Db`] and wraps [`Process`]), which keeps the module free of
//! dead code in either build.

mod db;
pub mod lib_api;
pub mod process;

pub use db::Db;
pub use lib_api::{DbPool, SUCCESS, invariant_violations, notification};
pub use process::Process;

/// The `JWT_SECRET` of every service started here.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef-XYZ";
/// The `INTERNAL_API_TOKEN` of services that open the internal API.
pub const INTERNAL_TOKEN: &str = "internal-token-0123456789abcdefghijklmnop";
/// The `ADMIN_API_TOKEN` of services that open the admin API.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdefghijklmnopqrs";

/// The binary under test, as cargo built it for this target.
pub const BIN: &str = env!("CARGO_BIN_EXE_coinpay");

/// The database a test or a benchmark run works on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// The URL of a MariaDB server (its path names a database that exists); each [`Db`] creates
    /// a database of its own on that server.
    Mysql(String),
}

impl Backend {
    /// The backend's name in reports and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Mysql(_) => "mysql",
        }
    }
}

/// Ten random lowercase letters: names of databases and tags of generated data.
pub fn rand_suffix() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..10)
        .map(|_| (b'a' + r.random_range(0..26)) as char)
        .collect()
}

/// The arguments and environment of `coinpay serve --sandbox` on `db`: a free loopback port,
/// the built-in simulator as WeChat, the harness's secret, and a sweeper that never runs unless
/// the caller sets `ORDER_SWEEP_CRON` (a sweep at a moment of its own choosing would disturb
/// what a test or a measurement expects).
pub fn service_command(db: &Db) -> (Vec<String>, Vec<(String, String)>) {
    let args = vec!["serve".to_string(), "--sandbox".to_string()];
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("BIND_ADDR", "127.0.0.1:0"),
        ("JWT_SECRET", JWT_SECRET),
        ("ORDER_SWEEP_CRON", "0 0 0 1 1 * 2099"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    (args, env)
}

/// The value of one sample (`name` with its labels, exactly as exposed), if present.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let v = rest.strip_prefix(' ')?;
        v.split_whitespace().next()?.parse().ok()
    })
}
