//! MariaDB Galera cluster support: several nodes named by one `DATABASE_URL`, connections only
//! to a node that is synced in the primary component, and the errors that mean "try again".
//!
//! A multi-host URL (`mysql://u:p@h1:3306,h2:3306,h3:3306/db?opts`) is split here into one URL
//! per node, because mysql_async (like the `url` crate) knows one host per URL. No crate offers
//! Galera-aware node selection for mysql_async; what it takes is small: try the nodes in order,
//! starting from the one that worked last, and on a Galera node accept only `wsrep_ready = ON`
//! and `wsrep_local_state = 4` (Synced): a node that is joining, donating or cut off from the
//! primary component refuses queries or serves stale reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use diesel::ConnectionError;
use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::StoreError;

/// How long one node gets to accept a connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The nodes of one `DATABASE_URL`, and the one new connections go to first.
#[derive(Clone, Debug)]
pub struct Nodes {
    urls: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
}

impl Nodes {
    /// One URL per host of `url` (a single-host URL gives one node).
    pub fn parse(url: &str) -> Result<Nodes, StoreError> {
        let bad = |why: &str| StoreError::Connection(format!("DATABASE_URL: {why}"));
        let rest = url
            .strip_prefix("mysql://")
            .ok_or_else(|| bad("not a mysql:// URL"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let urls: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .map(|h| {
                if h.is_empty() {
                    Err(bad("an empty host in the host list"))
                } else {
                    Ok(format!("mysql://{userinfo}{h}{path}"))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Nodes {
            urls: Arc::new(urls),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    pub fn first(&self) -> &str {
        &self.urls[0]
    }

    /// A connection to the first usable node, starting from the one that worked last.
    pub async fn connect(&self) -> diesel::ConnectionResult<AsyncMysqlConnection> {
        let n = self.urls.len();
        let start = AtomicUsize::load(&self.current, Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            match try_node(&self.urls[i]).await {
                Ok(c) => {
                    if i != start {
                        tracing::warn!(node = i + 1, "database: moved to another node");
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(c);
                }
                Err(e) => {
                    if n > 1 {
                        tracing::warn!(node = i + 1, error = %e, "database node unusable; trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ConnectionError::BadConnection("no database node".into())))
    }
}

#[derive(QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    value: String,
}

/// A row of `SHOW GLOBAL VARIABLES`.
#[derive(QueryableByName)]
struct Variable {
    #[diesel(sql_type = Text, column_name = Value)]
    value: String,
}

async fn try_node(url: &str) -> diesel::ConnectionResult<AsyncMysqlConnection> {
    let mut c = tokio::time::timeout(CONNECT_TIMEOUT, AsyncMysqlConnection::establish(url))
        .await
        .map_err(|_| ConnectionError::BadConnection("connect timed out".into()))??;
    check_synced(&mut c).await?;
    Ok(c)
}

/// Ok when the node of `c` can take work: a server without Galera (no `wsrep_on` on MySQL,
/// `OFF` on MariaDB), or a Galera node that is ready and Synced (`wsrep_ready = ON`,
/// `wsrep_local_state = 4`); a node that is joining, donating or outside the primary component
/// is refused.
pub async fn check_synced(c: &mut AsyncMysqlConnection) -> diesel::ConnectionResult<()> {
    // No row on MySQL. An error is an error: the connection may be dead, and must not pass.
    let on = diesel::sql_query("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
        .load::<Variable>(c)
        .await
        .map_err(|e| ConnectionError::BadConnection(format!("wsrep_on: {e}")))?
        .iter()
        .any(|v| v.value == "1" || v.value.eq_ignore_ascii_case("ON"));
    if !on {
        return Ok(());
    }
    let rows = diesel::sql_query(
        "SELECT VARIABLE_NAME AS name, VARIABLE_VALUE AS value FROM information_schema.GLOBAL_STATUS \
         WHERE VARIABLE_NAME IN ('WSREP_READY', 'WSREP_LOCAL_STATE')",
    )
    .load::<StatusRow>(c)
    .await
    .map_err(|e| ConnectionError::BadConnection(format!("wsrep status: {e}")))?;
    let get = |n: &str| {
        rows.iter()
            .find(|r| r.name.eq_ignore_ascii_case(n))
            .map(|r| r.value.as_str())
    };
    match (get("WSREP_READY"), get("WSREP_LOCAL_STATE")) {
        (Some(ready), Some("4")) if ready.eq_ignore_ascii_case("ON") => Ok(()),
        (ready, state) => Err(ConnectionError::BadConnection(format!(
            "Galera node not synced in the primary component (wsrep_ready={}, wsrep_local_state={})",
            ready.unwrap_or("?"),
            state.unwrap_or("?")
        ))),
    }
}

/// Why a piece of database work may be run again, or None when its error is final.
pub fn retry_reason(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::Query(q) => query_retry_reason(q),
        StoreError::Lost { reason, .. } => Some(reason),
        _ => None,
    }
}

/// [`retry_reason`] of a query's error.
pub fn query_retry_reason(q: &diesel::result::Error) -> Option<&'static str> {
    let msg = q.to_string();
    if msg.contains("Deadlock found") {
        // InnoDB deadlock, and Galera's certification failure, which reports itself as one.
        Some("deadlock")
    } else if msg.contains("SAVEPOINT") && msg.contains("does not exist") {
        // The same, seen one step later: InnoDB rolls the whole transaction back to break a
        // deadlock, so the savepoint a write ran in is gone, and diesel reports the failed
        // ROLLBACK TO SAVEPOINT in place of the deadlock. coinpay never releases a savepoint
        // it then returns to, so a missing one means nothing else.
        Some("deadlock")
    } else if msg.contains("WSREP has not yet prepared node") {
        Some("wsrep_not_ready")
    } else if is_connection_loss(&msg) {
        Some("connection_lost")
    } else {
        None
    }
}

fn is_connection_loss(msg: &str) -> bool {
    const SIGNS: [&str; 8] = [
        "server is closed",
        "Connection reset",
        "Broken pipe",
        "Connection refused",
        "connection closed",
        "Connection closed",
        "Unexpected EOF",
        "Input/output error",
    ];
    SIGNS.iter().any(|s| msg.contains(s))
}

/// Jittered exponential back-off for retry `attempt` (1-based): about 5 ms, 10 ms, 20 ms ...
pub fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let base = 5u64 << attempt.min(10);
    Duration::from_millis(rand::rng().random_range(base / 2..=base))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub reason: String,
}

/// Every reason [`retry_reason`] gives, exposed at 0 from the start so that a dashboard or an
/// alert sees the series before the first retry.
const REASONS: [&str; 3] = ["deadlock", "wsrep_not_ready", "connection_lost"];

static RETRIES: LazyLock<Family<RetryLabels, Counter>> = LazyLock::new(|| {
    let f = Family::<RetryLabels, Counter>::default();
    for r in REASONS {
        let _ = f.get_or_create(&RetryLabels {
            reason: r.to_string(),
        });
    }
    f
});

/// `coinpay_db_retries_total{reason}`: the store has no handle on the app's metrics, so the
/// counter lives here and the metrics registry exposes it (see `Metrics::new`).
pub fn retries() -> &'static Family<RetryLabels, Counter> {
    &RETRIES
}

pub fn count_retry(reason: &'static str) {
    RETRIES
        .get_or_create(&RetryLabels {
            reason: reason.to_string(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_urls_become_one_url_per_node() {
        let n = Nodes::parse("mysql://u:p@h1:3306,h2:3307, h3:3308/db?ssl-mode=disabled")
            .expect("parse");
        assert_eq!(
            n.urls(),
            [
                "mysql://u:p@h1:3306/db?ssl-mode=disabled",
                "mysql://u:p@h2:3307/db?ssl-mode=disabled",
                "mysql://u:p@h3:3308/db?ssl-mode=disabled",
            ]
        );
        let one = Nodes::parse("mysql://u:p@h1:3306/db").expect("parse");
        assert_eq!(one.urls(), ["mysql://u:p@h1:3306/db"]);
        assert!(Nodes::parse("mysql://u:p@h1,,h2/db").is_err());
    }

    #[test]
    fn conflicts_and_lost_nodes_are_retried_other_errors_not() {
        use diesel::result::{DatabaseErrorKind, Error};
        let db = |m: &str| {
            StoreError::Query(Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(m.to_string()),
            ))
        };
        assert_eq!(
            retry_reason(&db(
                "Deadlock found when trying to get lock; try restarting transaction"
            )),
            Some("deadlock")
        );
        assert_eq!(
            retry_reason(&db("SAVEPOINT diesel_savepoint_1 does not exist")),
            Some("deadlock")
        );
        assert_eq!(
            retry_reason(&db("WSREP has not yet prepared node for application use")),
            Some("wsrep_not_ready")
        );
        assert_eq!(retry_reason(&db("Duplicate entry 'x' for key 'y'")), None);
        assert_eq!(retry_reason(&StoreError::Conflict), None);
        assert!(backoff(1) <= Duration::from_millis(10));
    }
}
