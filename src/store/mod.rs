//! Storage: one diesel schema, run on MySQL/MariaDB (mysql_async) or SQLite (bundled), chosen
//! by DATABASE_URL. The database is the source of truth for every order and every coin.
//!
//! Every statement is written once. A read runs through `with_read!`, which type-checks it for
//! each backend on an async connection. A write is built by a function that returns the
//! statement (a [`Statement`]: valid on both backends); [`execute`] runs a single one, and a
//! transaction of several runs them through two small executors, sync diesel on SQLite's writer
//! thread and diesel-async on MySQL (see `orders::Transition`, `ledger::post`).
//!
//! Writes that arrive together are committed together (group commit, `COINPAY_WRITE_BATCH`):
//! on SQLite every write goes through the writer thread, which commits what is queued as one
//! transaction ([`writer`]); on MySQL order transitions and ledger postings go through a
//! batching task in front of the pool ([`batch`]). On both, each write runs in a savepoint of its
//! own, and its caller gets its answer only after the commit.
//!
//! A look-up by a unique key, and an aggregate (one row by nature), is loaded with `get_result`,
//! not `first`: `first` adds a `LIMIT` whose value is a bound parameter, and SQLite (3.53) marks
//! a statement whose LIMIT is bound as one to prepare again at each new binding, so every such
//! look-up was parsed and planned anew (a fifth of the service's CPU in `create-order`). Without
//! the LIMIT the statement stays in diesel's cache, prepared once per connection. `first` stays
//! where the LIMIT is the point (the newest report, the previous day's).

pub mod batch;
pub mod columns;
pub mod galera;
pub mod leases;
pub mod ledger;
pub mod orders;
pub mod packages;
pub mod reconciliations;
pub mod refunds;
pub mod schema;
pub mod stats;
pub mod users;
pub mod writer;

#[cfg(test)]
mod tests;

use diesel::ConnectionError;
use diesel::connection::SimpleConnection;
use diesel::query_builder::{QueryFragment, QueryId};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::bb8::{Pool, RunError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use secrecy::ExposeSecret;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::config::DbUrl;

pub type SqliteConn = SyncConnectionWrapper<diesel::SqliteConnection>;

pub const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database connection: {0}")]
    Connection(String),
    #[error("database query: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migration: {0}")]
    Migration(String),
    /// A compare-and-set matched no row: another actor or instance moved first.
    #[error("concurrent update")]
    Conflict,
    /// The transaction that held this write (one of a batch committed together) did not
    /// commit: nothing of it was kept, and it may be tried again.
    #[error("not committed: {0}")]
    Commit(String),
    /// The transaction that held this write was lost on every run of its batch (a deadlock, a
    /// Galera certification conflict, a lost node; `reason` as in
    /// `coinpay_db_retries_total`): nothing of it was kept, and it is worth trying again.
    #[error("not committed, its transaction was lost ({reason}): {why}")]
    Lost { reason: &'static str, why: String },
}

impl StoreError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            StoreError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }
}

impl From<RunError> for StoreError {
    fn from(e: RunError) -> Self {
        StoreError::Connection(e.to_string())
    }
}

/// The pools. SQLite allows one writer at a time, so every write runs on one connection owned by
/// the writer thread ([`writer`]), one job after the other in arrival order: writes are
/// serialised in-process, never meet SQLite's busy handler, and no writer can be starved by
/// later ones. Reads go through a pool of their own (WAL lets them run beside the writer).
#[derive(Clone)]
pub enum DbPool {
    Mysql(MysqlPool),
    Sqlite {
        read: Pool<SqliteConn>,
        writer: writer::Writer,
    },
}

/// A write statement valid on both backends, so that it is written once: a function builds it,
/// and either executor runs it.
pub trait Statement:
    QueryFragment<diesel::mysql::Mysql> + QueryFragment<diesel::sqlite::Sqlite> + QueryId + Send
{
}

impl<T> Statement for T where
    T: QueryFragment<diesel::mysql::Mysql> + QueryFragment<diesel::sqlite::Sqlite> + QueryId + Send
{
}

/// Runs a write statement with sync diesel, on SQLite's writer thread.
pub fn execute_blocking(
    stmt: impl Statement,
    c: &mut diesel::SqliteConnection,
) -> diesel::QueryResult<usize> {
    diesel::query_dsl::methods::ExecuteDsl::<_, diesel::sqlite::Sqlite>::execute(stmt, c)
}

/// Runs one write statement on its own: on MySQL on a checked connection, on SQLite in the
/// writer's turn. Returns how many rows it changed.
pub async fn execute(pool: &DbPool, stmt: impl Statement + 'static) -> Result<usize, StoreError> {
    match pool {
        DbPool::Mysql(p) => {
            // Not retried here: the statement is consumed. A single statement that lost a
            // certification conflict is reported; its callers (leases, inserts) try again on
            // their own terms (the next sweep tick, the client's retry).
            let mut c = p.get().await?;
            Ok(diesel_async::RunQueryDsl::execute(stmt, &mut *c).await?)
        }
        DbPool::Sqlite { writer, .. } => writer.run(move |c| execute_blocking(stmt, c)).await,
    }
}

/// A MySQL connection from [`MysqlPool`], with the caller's turn.
pub struct MysqlConn<'a> {
    conn: diesel_async::pooled_connection::bb8::PooledConnection<'a, AsyncMysqlConnection>,
    /// The pool's [`MysqlPool::recheck_until`], set when this connection is discarded.
    recheck_until: &'a AtomicI64,
    // Dropped after `conn`: the connection is back in the pool before the next caller is let in.
    _turn: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for MysqlConn<'_> {
    type Target = AsyncMysqlConnection;
    fn deref(&self) -> &AsyncMysqlConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for MysqlConn<'_> {
    fn deref_mut(&mut self) -> &mut AsyncMysqlConnection {
        &mut self.conn
    }
}

/// MySQL's pool. Callers are let in first come, first served: bb8 alone hands a returned
/// connection to whoever asks next, ahead of callers already waiting, and under load one of
/// them could wait for seconds while later ones were served (seen in the benchmark).
///
/// A connection is checked (`SELECT 1`) before it is handed out, as bb8's `test_on_check_out`
/// would do — except for a caller whose first statement is itself a harmless read that it
/// repeats on a checked connection if it fails ([`Self::get_for_read`]): then that read is
/// the check, and the cold-notification path saves a round trip.
#[derive(Clone)]
pub struct MysqlPool {
    pool: Pool<AsyncMysqlConnection>,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
    /// Group commit of the writes that are whole units (see [`Self::write`]); `None` when
    /// every write is a transaction of its own (`COINPAY_WRITE_BATCH=1`).
    batcher: Option<batch::Batcher>,
    /// Checked connections tried before giving up: a node that died leaves every idle
    /// connection to it broken, and each is discarded in turn before a new one is made.
    attempts: usize,
    /// Until when (ms since the epoch) check-outs ask the node whether it is synced in the
    /// primary component instead of sending `SELECT 1`. A Galera node that has left the
    /// primary component still answers `SELECT 1` and refuses every query on a table
    /// ("WSREP has not yet prepared node"), so after such a refusal, or any discarded
    /// connection, the idle connections to it must be told apart from the good ones for a
    /// while; the rest of the time the cheap check does.
    recheck_until: std::sync::Arc<AtomicI64>,
}

/// How long check-outs ask for the node's state after a refusal or a discarded connection.
const RECHECK_MS: i64 = 5_000;

/// Checked connections tried before giving up (each failed one is discarded).
const CHECKOUT_ATTEMPTS: usize = 3;
const CHECKOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Retries of one piece of work after a conflict or a lost node (see [`MysqlPool::retrying`]).
const TX_RETRIES: u32 = 6;

impl MysqlPool {
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        match tokio::time::timeout(CHECKOUT_TIMEOUT, self.gate.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(StoreError::Connection(e.to_string())),
            Err(_) => Err(StoreError::Connection(
                "timed out waiting for a database connection".into(),
            )),
        }
    }

    /// A connection that has just answered `SELECT 1` (or, while [`Self::recheck_until`]
    /// lasts, said that its node is synced in the primary component).
    pub async fn get(&self) -> Result<MysqlConn<'_>, StoreError> {
        use diesel::IntoSql;
        use diesel_async::RunQueryDsl;
        let turn = self.turn().await?;
        let mut last = String::new();
        for _ in 0..self.attempts {
            let mut conn = self.pool.get().await?;
            let checked = if self.rechecking() {
                galera::check_synced(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
                    .get_result::<i32>(&mut *conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            match checked {
                Ok(()) => {
                    return Ok(MysqlConn {
                        conn,
                        recheck_until: &self.recheck_until,
                        _turn: turn,
                    });
                }
                Err(e) => {
                    mark_broken(&mut conn);
                    last = e;
                }
            }
        }
        Err(StoreError::Connection(format!(
            "no working connection after {} attempts: {last}",
            self.attempts
        )))
    }

    fn rechecking(&self) -> bool {
        now_ms() < self.recheck_until.load(Ordering::Relaxed)
    }

    /// A connection not checked yet: the caller's first statement must be a read that it
    /// runs again on [`Self::get`]'s connection when it fails (after [`discard`]ing this one).
    pub async fn get_for_read(&self) -> Result<MysqlConn<'_>, StoreError> {
        if self.rechecking() {
            return self.get().await;
        }
        let turn = self.turn().await?;
        let conn = self.pool.get().await?;
        Ok(MysqlConn {
            conn,
            recheck_until: &self.recheck_until,
            _turn: turn,
        })
    }

    /// Runs `work` (a transaction or a query on a connection it takes), again when it failed in
    /// a way that says "try again" rather than "this is wrong": a Galera certification
    /// conflict or an InnoDB deadlock (both 1213), a node that is not (or no longer) in the
    /// primary component, a connection lost mid-way. Bounded, with jittered back-off; each
    /// retry counted in `coinpay_db_retries_total{reason}`.
    ///
    /// Safe to repeat: a failed transaction was rolled back; one whose COMMIT was lost on the
    /// wire either did not commit, or did and its repetition finds the row moved on (every
    /// order transition is a compare-and-set on the row's version, every ledger row unique
    /// by request_id) and changes nothing.
    pub async fn retrying<T>(
        &self,
        mut work: impl AsyncFnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            match work().await {
                Err(e) => match self.retry_after(&e, &mut attempt) {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return Err(e),
                },
                r => return r,
            }
        }
    }

    /// Whether work that failed with `e` on try `attempt` is to be run again, and after what
    /// pause: counted in `coinpay_db_retries_total{reason}`, and after anything but a deadlock
    /// the next check-outs ask the node whether it is still synced.
    fn retry_after(&self, e: &StoreError, attempt: &mut u32) -> Option<std::time::Duration> {
        if *attempt >= TX_RETRIES {
            return None;
        }
        let reason = galera::retry_reason(e)?;
        *attempt += 1;
        self.note_retry(Some(reason));
        tracing::debug!(error = %e, reason, attempt = *attempt, "retrying the database work");
        Some(galera::backoff(*attempt))
    }

    /// Notes that work is run again because of `reason` (`None`: a lost transaction of no known
    /// kind): counted in `coinpay_db_retries_total`, and after anything but a deadlock the next
    /// check-outs ask the node whether it is still synced in the primary component, since its
    /// idle connections must not pass them.
    fn note_retry(&self, reason: Option<&'static str>) {
        if let Some(reason) = reason {
            galera::count_retry(reason);
        }
        if reason != Some("deadlock") {
            recheck(&self.recheck_until);
        }
    }

    /// Runs `work`, a unit on its own (one statement, or its statements in a transaction of
    /// its own), and returns its result once it is committed: with group commit on, in the
    /// transaction of a batch ([`batch`]); else on a checked connection of its own. Either
    /// way the work is run again when it failed in a way that says "try again" (a Galera
    /// certification conflict, a node that left the primary component: see [`Self::retrying`]);
    /// a batch that lost its transaction is first run again by its batcher.
    pub async fn write<R: Send + 'static>(&self, work: batch::Work<R>) -> Result<R, StoreError> {
        let work = std::sync::Arc::new(work);
        self.again(|| {
            let w = work.clone();
            let once: batch::Work<R> = Box::new(move |c| w(c));
            async move {
                match &self.batcher {
                    Some(b) => b.run(once).await,
                    None => {
                        let mut c = self.get().await?;
                        once(&mut c).await.map_err(StoreError::from)
                    }
                }
            }
        })
        .await
    }

    /// Writes the order transition `t` as [`Self::write`] does; with group commit on, together
    /// with the other transitions of its batch (`orders::write_many`). Whether its
    /// compare-and-set matched.
    async fn write_move(&self, t: std::sync::Arc<orders::Transition>) -> Result<bool, StoreError> {
        self.again(|| {
            let t = t.clone();
            async move {
                match &self.batcher {
                    Some(b) => b.run_move(t).await,
                    None => {
                        let mut c = self.get().await?;
                        t.write(&mut c).await.map_err(StoreError::from)
                    }
                }
            }
        })
        .await
    }

    /// `orders::load_and_apply` with group commit on: the load, the decision and the move in
    /// a batch ([`batch::Batcher::run_decide`]), run again as [`Self::write`] is. `None` when
    /// group commit is off.
    async fn decide_in_batch(
        &self,
        order_no: &str,
        decide: &orders::Decide,
    ) -> Option<Result<Option<orders::Decided>, StoreError>> {
        let b = self.batcher.as_ref()?;
        Some(
            self.again(|| b.run_decide(order_no.to_string(), decide.clone()))
                .await,
        )
    }

    /// [`Self::retrying`] for work that owns what it needs: not an async closure, which would
    /// borrow its captures across the await and make the future not `Send` for every lifetime,
    /// as a spawned task needs.
    async fn again<R, F, Fut>(&self, mut once: F) -> Result<R, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<R, StoreError>>,
    {
        let mut attempt = 0;
        loop {
            match once().await {
                Err(e) => match self.retry_after(&e, &mut attempt) {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return Err(e),
                },
                r => return r,
            }
        }
    }

    /// Whether writes are committed in batches.
    #[cfg(test)]
    pub fn batched(&self) -> bool {
        self.batcher.is_some()
    }

    fn state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }
}

/// Marks a connection broken, so that the pool drops it instead of taking it back.
fn mark_broken(conn: &mut AsyncMysqlConnection) {
    use diesel_async::TransactionManager;
    diesel_async::AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
}

/// Gives up a connection that failed: the pool drops it instead of taking it back, and the
/// next check-outs ask their nodes for their state for a while (see `MysqlPool::recheck_until`).
pub fn discard(mut c: MysqlConn<'_>) {
    recheck(c.recheck_until);
    mark_broken(&mut c);
}

fn recheck(until: &AtomicI64) {
    until.fetch_max(now_ms() + RECHECK_MS, Ordering::Relaxed);
}

/// Runs the read `$body` with `$conn` bound to a connection of either backend: the body is
/// written once and type-checked once per backend.
#[macro_export]
macro_rules! with_read {
    ($pool:expr, $conn:ident => $body:expr) => {{
        match $pool {
            $crate::store::DbPool::Mysql(p) => {
                p.retrying(async || {
                    let mut g = p.get().await?;
                    let $conn = &mut *g;
                    Ok::<_, $crate::store::StoreError>($body)
                })
                .await?
            }
            $crate::store::DbPool::Sqlite { read: p, .. } => {
                let mut g = p.get().await?;
                let $conn = &mut *g;
                $body
            }
        }
    }};
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// FULL: a notification is acknowledged only after its commit is on disk. The busy timeout
/// comes first, since switching to WAL may have to wait for another connection's lock.
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;";

fn sqlite_setup(
    path: &str,
) -> futures_util::future::BoxFuture<'_, diesel::ConnectionResult<SqliteConn>> {
    async move {
        let mut c = SqliteConn::establish(path).await?;
        // FULL: a notification is acknowledged only after its commit is on disk.
        c.batch_execute(SQLITE_PRAGMAS)
            .await
            .map_err(ConnectionError::CouldntSetupConfiguration)?;
        Ok(c)
    }
    .boxed()
}

impl DbPool {
    /// The pools, writes committed in batches of at most [`writer::DEFAULT_MAX_BATCH`].
    pub async fn connect(url: &DbUrl, size: u32) -> Result<Self, StoreError> {
        Self::connect_with(url, size, writer::DEFAULT_MAX_BATCH).await
    }

    /// The pools, with at most `write_batch` writes committed together (1: one transaction
    /// per write, as `db-baseline` measures).
    pub async fn connect_with(
        url: &DbUrl,
        size: u32,
        write_batch: usize,
    ) -> Result<Self, StoreError> {
        match url {
            DbUrl::Mysql(url) => Self::connect_mysql(url.expose_secret(), size, write_batch).await,
            DbUrl::Sqlite(path) => {
                Self::connect_sqlite(&path.to_string_lossy(), size, write_batch).await
            }
        }
    }

    async fn connect_mysql(url: &str, size: u32, write_batch: usize) -> Result<Self, StoreError> {
        let nodes = galera::Nodes::parse(url)?;
        let first = nodes.first().to_string();
        let mut cfg = ManagerConfig::<AsyncMysqlConnection>::default();
        // Every new connection goes to a node that is up and, on Galera, synced in the
        // primary component; the manager's own URL is only the first node's.
        cfg.custom_setup = Box::new(move |_| {
            let nodes = nodes.clone();
            async move { nodes.connect().await }.boxed()
        });
        let mgr = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new_with_config(first, cfg);
        // Checked by MysqlPool::get instead (see there).
        let pool = Pool::builder()
            .max_size(size)
            .connection_timeout(std::time::Duration::from_secs(5))
            .test_on_check_out(false)
            .build(mgr)
            .await
            .map_err(|e| StoreError::Connection(e.to_string()))?;
        let unbatched = MysqlPool {
            pool,
            gate: std::sync::Arc::new(tokio::sync::Semaphore::new(size as usize)),
            batcher: None,
            attempts: CHECKOUT_ATTEMPTS.max(size as usize + 1),
            recheck_until: std::sync::Arc::new(AtomicI64::new(0)),
        };
        // The batching tasks hold the pool without the batcher, so that they end with it.
        let batcher =
            (write_batch > 1).then(|| batch::Batcher::start(unbatched.clone(), write_batch));
        Ok(DbPool::Mysql(MysqlPool {
            batcher,
            ..unbatched
        }))
    }

    async fn connect_sqlite(path: &str, size: u32, write_batch: usize) -> Result<Self, StoreError> {
        ensure_parent_dir(path)?;
        let build = |n: u32| {
            let mut cfg = ManagerConfig::<SqliteConn>::default();
            cfg.custom_setup = Box::new(sqlite_setup);
            let mgr = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path, cfg);
            // No `SELECT 1` at every checkout: a local file connection does not go stale
            // the way a network one does, and the check would be one more blocking hand-over
            // per read.
            Pool::builder()
                .max_size(n)
                .connection_timeout(std::time::Duration::from_secs(10))
                .test_on_check_out(false)
                .build(mgr)
        };
        let read = build(size.max(1))
            .await
            .map_err(|e| StoreError::Connection(e.to_string()))?;
        Ok(DbPool::Sqlite {
            read,
            writer: writer::Writer::start(path, write_batch)?,
        })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            DbPool::Mysql(_) => "mysql",
            DbPool::Sqlite { .. } => "sqlite",
        }
    }

    /// A trivial query, for /readyz and check-config.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_read!(self, conn => conn.batch_execute("SELECT 1").await?);
        Ok(())
    }

    /// (connections, idle) of the pool that serves most traffic.
    pub fn pool_state(&self) -> (u32, u32) {
        match self {
            DbPool::Mysql(p) => p.state(),
            DbPool::Sqlite { read, .. } => {
                let s = read.state();
                (s.connections, s.idle_connections)
            }
        }
    }
}

fn ensure_parent_dir(path: &str) -> Result<(), StoreError> {
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Connection(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    Ok(())
}

/// Applies the embedded migrations of the URL's dialect; returns how many ran (0 on a second
/// run). Runs on a blocking thread: the migration harness blocks, and actix's runtime is
/// current-thread.
pub async fn run_migrations(url: &DbUrl) -> Result<usize, StoreError> {
    let url = url.clone();
    tokio::task::spawn_blocking(move || migrate_blocking(&url))
        .await
        .map_err(|e| StoreError::Migration(e.to_string()))?
}

/// Migration attempts on MySQL (see [`migrate_blocking`]).
const MIGRATION_RETRIES: u32 = 8;

/// A blocking connection for migrations: to the first node that answers, in the nodes' sorted
/// order rather than the URL's. Instances list the nodes in orders of their own (each starts
/// from another node), but `GET_LOCK` is local to one Galera node: taken on the same node by
/// every instance, it keeps them from applying a migration at once. (Two at once would run the
/// same DDL on two nodes; DDL is not transactional, and a migration that failed half-way leaves
/// tables that make it fail again forever.)
fn mysql_blocking_connection(
    url: &str,
) -> Result<AsyncConnectionWrapper<AsyncMysqlConnection>, StoreError> {
    use diesel::Connection;
    let mut last = String::new();
    let mut nodes = galera::Nodes::parse(url)?.urls().to_vec();
    nodes.sort();
    for node in &nodes {
        match <AsyncConnectionWrapper<AsyncMysqlConnection> as Connection>::establish(node) {
            Ok(c) => return Ok(c),
            Err(e) => last = e.to_string(),
        }
    }
    Err(StoreError::Connection(last))
}

fn migrate_blocking(url: &DbUrl) -> Result<usize, StoreError> {
    let mig = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(e.to_string());
    match url {
        // GET_LOCK keeps instances from racing on DDL (MySQL DDL is not transactional); on
        // Galera it is local to one node, so every instance takes it on the same node (see
        // `mysql_blocking_connection`). Should they still meet (that node was down for one of
        // them), the loser fails ("already exists"), reads the applied set again and carries
        // on from there.
        DbUrl::Mysql(url) => {
            let mut attempt = 0;
            loop {
                let mut c = mysql_blocking_connection(url.expose_secret())?;
                SimpleConnection::batch_execute(&mut c, "DO GET_LOCK('coinpay_migrations', 120)")?;
                let r = c.run_pending_migrations(MYSQL_MIGRATIONS).map(|v| v.len());
                let _ = SimpleConnection::batch_execute(
                    &mut c,
                    "DO RELEASE_LOCK('coinpay_migrations')",
                );
                match r {
                    Ok(n) => return Ok(n),
                    Err(e) if attempt < MIGRATION_RETRIES => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "migration failed (another instance may be applying it); reading the applied set again");
                        std::thread::sleep(galera::backoff(attempt + 4));
                    }
                    Err(e) => return Err(mig(e)),
                }
            }
        }
        DbUrl::Sqlite(path) => {
            use diesel::Connection;
            let path = path.to_string_lossy();
            ensure_parent_dir(&path)?;
            let mut c = <AsyncConnectionWrapper<SqliteConn> as Connection>::establish(&path)
                .map_err(|e| StoreError::Connection(e.to_string()))?;
            // The busy timeout first: switching to WAL takes a lock, and without the timeout
            // a connection still writing (a test's or another process's) fails it at once with
            // "database is locked".
            SimpleConnection::batch_execute(
                &mut c,
                "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL;",
            )?;
            c.run_pending_migrations(SQLITE_MIGRATIONS)
                .map(|v| v.len())
                .map_err(mig)
        }
    }
}

/// How many embedded migrations have not been applied yet (for check-config).
pub async fn pending_migrations(url: &DbUrl) -> Result<usize, StoreError> {
    let url = url.clone();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        let mig =
            |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(e.to_string());
        match &url {
            DbUrl::Mysql(url) => {
                let mut c = mysql_blocking_connection(url.expose_secret())?;
                c.pending_migrations(MYSQL_MIGRATIONS)
                    .map(|v| v.len())
                    .map_err(mig)
            }
            DbUrl::Sqlite(path) => {
                if !path.exists() {
                    use diesel::migration::MigrationSource;
                    return MigrationSource::<diesel::sqlite::Sqlite>::migrations(
                        &SQLITE_MIGRATIONS,
                    )
                    .map(|v| v.len())
                    .map_err(mig);
                }
                let mut c = <AsyncConnectionWrapper<SqliteConn> as Connection>::establish(
                    &path.to_string_lossy(),
                )
                .map_err(|e| StoreError::Connection(e.to_string()))?;
                c.pending_migrations(SQLITE_MIGRATIONS)
                    .map(|v| v.len())
                    .map_err(mig)
            }
        }
    })
    .await
    .map_err(|e| StoreError::Migration(e.to_string()))?
}
