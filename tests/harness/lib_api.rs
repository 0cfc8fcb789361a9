//! Everything the harness takes from the `coinpay` library, in one place: when the library's API
//! moves, this file is the one to follow it. (The tests of the library's own parts, such as the
//! WeChat client or the order numbers, name it where they test it.)

use coinpay::sandbox::SandboxConfig;
pub use coinpay::store::DbPool;
use secrecy::ExposeSecret;

/// The reply that acknowledges a notification, byte for byte.
pub const SUCCESS: &str = coinpay::wechat::xml::SUCCESS_REPLY;

fn parse(url: &str) -> Result<coinpay::config::DbUrl, String> {
    url.parse().map_err(|e| format!("DATABASE_URL {url}: {e}"))
}

pub(super) async fn migrate(url: &str) -> Result<(), String> {
    coinpay::store::run_migrations(&parse(url)?)
        .await
        .map(|_| ())
        .map_err(|e| format!("migrate {url}: {e}"))
}

/// The service's default bound on the writes committed together.
pub(super) const WRITE_BATCH: usize = coinpay::store::writer::DEFAULT_MAX_BATCH;

/// A pool that commits at most `write_batch` writes together (1: one transaction per write).
pub(super) async fn connect(url: &str, size: u32, write_batch: usize) -> Result<DbPool, String> {
    DbPool::connect_with(&parse(url)?, size, write_batch)
        .await
        .map_err(|e| format!("connect to {url}: {e}"))
}

/// The first node's URL of a (possibly multi-host, Galera) MariaDB URL: where databases are
/// created and dropped.
pub fn first_node(url: &str) -> Result<String, String> {
    coinpay::store::galera::Nodes::parse(url)
        .map(|n| n.first().to_string())
        .map_err(|e| e.to_string())
}

/// Broken rules of the books, one line each: a balance that is not the sum of its ledger, a
/// negative balance, an order credited twice.
pub async fn invariant_violations(pool: &DbPool) -> Result<Vec<String>, String> {
    coinpay::store::ledger::invariant_violations(pool)
        .await
        .map_err(|e| e.to_string())
}

/// The simulator's fixed credentials, which `serve --sandbox` uses as its WeChat settings.
pub fn sandbox_credentials() -> SandboxConfig {
    SandboxConfig::default_credentials()
}

/// A signed SUCCESS notification for `order_no` as the simulator's WeChat would send it, after
/// `tweak` has changed its fields (to forge, break or vary one).
pub fn notification(
    order_no: &str,
    transaction_id: &str,
    total_fee: i64,
    tweak: impl FnOnce(&mut coinpay::wechat::Params),
) -> Vec<u8> {
    let c = sandbox_credentials();
    let mut p = coinpay::sandbox::paid_notification_fields(&c, order_no, transaction_id, total_fee);
    tweak(&mut p);
    let key = c.api_key.expose_secret();
    coinpay::wechat::notify::build_notification(&p, key, c.sign_type, false).into_bytes()
}
