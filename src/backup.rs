//! `coinpay backup --to FILE` and `coinpay restore --from FILE`: the tables the seed's §6.3
//! asks to back up (`recharge_packages`, the ledger `compute_logs`), and with them every other
//! coinpay table, since a ledger without its users and orders cannot be checked.
//!
//! - SQLite: `VACUUM INTO` on a connection of its own. It reads one snapshot (a read
//!   transaction, which WAL mode lets run beside the service's writers), so the copy is
//!   consistent while the service keeps crediting. Copying the `.db` file with `cp` is not:
//!   the latest commits live in the `-wal` file until a checkpoint.
//! - MySQL/MariaDB: `mariadb-dump` (or `mysqldump`) with `--single-transaction` (one InnoDB
//!   snapshot, no locks) of coinpay's tables. coinpay speaks MySQL's protocol itself and has no
//!   dump of its own: writing one would duplicate a tool every MySQL host has. When neither
//!   client is installed, the command is printed for the operator to run where one is.
//!
//! A backup is written next to its target under a `.partial` name, synced, then renamed: a
//! crash never leaves a half-written file under the final name. `restore` only fills an empty
//! target (a missing SQLite file, a MySQL database without coinpay's tables) and checks the
//! ledger invariant on what it restored.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use diesel::connection::SimpleConnection;
use diesel::{Connection, ExpressionMethods, QueryDsl, SqliteConnection};

use secrecy::{ExposeSecret, SecretString};

use crate::config::DbUrl;
use crate::store::{self, DbPool, StoreError};

/// coinpay's tables, diesel's bookkeeping included (a restored copy then knows its schema).
pub const TABLES: &[&str] = &[
    "__diesel_schema_migrations",
    "users",
    "recharge_packages",
    "recharge_orders",
    "compute_logs",
    "leases",
];

/// The last line `mysqldump` writes when it finished (with its default `--comments`).
const DUMP_COMPLETED: &str = "-- Dump completed";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} already exists: refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{0}: no such database file")]
    NoDatabase(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: the path is not valid UTF-8")]
    NotUtf8(PathBuf),
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: diesel::ConnectionError,
    },
    #[error("SQLite: {0}")]
    Sqlite(#[from] diesel::result::Error),
    #[error("{path} is not a usable coinpay backup: {problem}")]
    BadBackup { path: PathBuf, problem: String },
    #[error("DATABASE_URL: {0}")]
    Url(String),
    #[error("neither {0} nor {1} is installed here; run this where one is:\n{2}")]
    NoTool(&'static str, &'static str, String),
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("--print-command is for MySQL: on SQLite, coinpay backup makes the copy itself")]
    PrintOnlyMysql,
    #[error("the target database already has coinpay's tables: restore into an empty one")]
    NotEmpty,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the backup task failed: {0}")]
    Task(String),
    #[error("the restored database breaks the ledger invariant:\n  {}", .0.join("\n  "))]
    Invariant(Vec<String>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `backup` wrote.
pub enum Backup {
    Written {
        path: PathBuf,
        summary: String,
    },
    /// `--print-command` (or no dump client here): the command to run.
    Command(String),
}

/// Backs up DATABASE_URL's database to `to`; `print_only` (MySQL) prints the dump command.
pub async fn backup(
    database_url: &DbUrl,
    to: &Path,
    print_only: bool,
) -> Result<Backup, BackupError> {
    if to.exists() {
        return Err(BackupError::Exists(to.to_path_buf()));
    }
    match database_url {
        DbUrl::Sqlite(_) if print_only => Err(BackupError::PrintOnlyMysql),
        DbUrl::Sqlite(path) => {
            let (db, to) = (path.clone(), to.to_path_buf());
            blocking(move || sqlite_backup(&db, &to)).await
        }
        DbUrl::Mysql(url) => {
            let target = MysqlTarget::parse(url.expose_secret())?;
            if print_only {
                return Ok(Backup::Command(target.dump_command_line(to)));
            }
            let to = to.to_path_buf();
            blocking(move || target.dump(&to)).await
        }
    }
}

/// Restores `from` into DATABASE_URL's (empty) database, then checks the ledger invariant.
pub async fn restore(database_url: &DbUrl, from: &Path) -> Result<String, BackupError> {
    if !from.is_file() {
        return Err(BackupError::NoDatabase(from.to_path_buf()));
    }
    let from = from.to_path_buf();
    match database_url {
        DbUrl::Sqlite(path) => {
            let db = path.clone();
            blocking(move || sqlite_restore(&from, &db)).await?;
        }
        DbUrl::Mysql(url) => {
            let target = MysqlTarget::parse(url.expose_secret())?;
            if mysql_has_coinpay_tables(url.expose_secret()).await? {
                return Err(BackupError::NotEmpty);
            }
            blocking(move || target.load(&from)).await?;
        }
    }
    let pending = store::pending_migrations(database_url).await?;
    let pool = DbPool::connect(database_url, 1).await?;
    let violations = store::ledger::invariant_violations(&pool).await?;
    if !violations.is_empty() {
        return Err(BackupError::Invariant(violations));
    }
    let summary = summary(&pool).await?;
    Ok(format!(
        "restored {summary}; the ledger invariant holds; {pending} migration(s) pending (coinpay serve applies them)"
    ))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Task(e.to_string()))?
}

/// "N users, N paid orders, N ledger rows, N coins in balances".
async fn summary(pool: &DbPool) -> Result<String, StoreError> {
    use crate::store::schema::{compute_logs as l, recharge_orders as o, users as u};
    use diesel_async::RunQueryDsl;
    let paid = crate::order::state::OrderStatus::Paid.as_str();
    let (users, orders, rows, coins) = crate::with_read!(pool, conn => {
        let users: i64 = u::table.count().get_result(conn).await?;
        let orders: i64 = o::table.filter(o::status.eq(paid)).count().get_result(conn).await?;
        let rows: i64 = l::table.count().get_result(conn).await?;
        let coins: Vec<i64> = u::table.select(u::balance).load(conn).await?;
        (users, orders, rows, coins.iter().sum::<i64>())
    });
    Ok(format!(
        "{users} users, {orders} paid orders, {rows} ledger rows, {coins} coins in balances"
    ))
}

// ---------------------------------------------------------------------------------------------
// SQLite

fn partial_path(to: &Path) -> PathBuf {
    let mut s = to.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn open(path: &Path) -> Result<SqliteConnection, BackupError> {
    let p = path
        .to_str()
        .ok_or_else(|| BackupError::NotUtf8(path.to_path_buf()))?;
    let mut c = SqliteConnection::establish(p).map_err(|source| BackupError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    c.batch_execute("PRAGMA busy_timeout = 5000;")?;
    Ok(c)
}

fn sqlite_backup(db: &Path, to: &Path) -> Result<Backup, BackupError> {
    use diesel::RunQueryDsl;
    // Opening a missing file would create an empty database and "back it up".
    if !db.is_file() {
        return Err(BackupError::NoDatabase(db.to_path_buf()));
    }
    let partial = partial_path(to);
    let partial_str = partial
        .to_str()
        .ok_or_else(|| BackupError::NotUtf8(partial.clone()))?;
    // A leftover of a backup that crashed: VACUUM INTO refuses a non-empty target.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&partial)(e)),
    }
    {
        let mut c = open(db)?;
        // The file name is bound, not spliced into the SQL.
        diesel::sql_query("VACUUM INTO ?")
            .bind::<diesel::sql_types::Text, _>(partial_str)
            .execute(&mut c)?;
    }
    let summary = match sqlite_check(&partial) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    sync_and_rename(&partial, to)?;
    Ok(Backup::Written {
        path: to.to_path_buf(),
        summary,
    })
}

#[derive(diesel::QueryableByName)]
struct IntegrityCheck {
    #[diesel(sql_type = diesel::sql_types::Text)]
    integrity_check: String,
}

/// The copy is a sound SQLite file with coinpay's schema; returns its counts.
fn sqlite_check(path: &Path) -> Result<String, BackupError> {
    use crate::store::schema::{compute_logs as l, recharge_orders as o, users as u};
    use diesel::RunQueryDsl;
    let bad = |problem: String| BackupError::BadBackup {
        path: path.to_path_buf(),
        problem,
    };
    let mut c = open(path)?;
    let check: Vec<IntegrityCheck> = diesel::sql_query("PRAGMA integrity_check")
        .load(&mut c)
        .map_err(|e| bad(e.to_string()))?;
    let problems: Vec<String> = check
        .into_iter()
        .map(|r| r.integrity_check)
        .filter(|r| r != "ok")
        .collect();
    if !problems.is_empty() {
        return Err(bad(format!("integrity check: {}", problems.join("; "))));
    }
    let paid = crate::order::state::OrderStatus::Paid.as_str();
    let counts = (|| -> Result<(i64, i64, i64, i64), diesel::result::Error> {
        let migrations = diesel::sql_query("SELECT COUNT(*) AS n FROM __diesel_schema_migrations")
            .get_result::<Count>(&mut c)?
            .n;
        let users = u::table.count().get_result(&mut c)?;
        let orders = o::table
            .filter(o::status.eq(paid))
            .count()
            .get_result(&mut c)?;
        let rows = l::table.count().get_result(&mut c)?;
        Ok((migrations, users, orders, rows))
    })();
    let (migrations, users, orders, rows) =
        counts.map_err(|e| bad(format!("not coinpay's schema: {e}")))?;
    Ok(format!(
        "{users} users, {orders} paid orders, {rows} ledger rows, {migrations} migration(s) applied; integrity ok"
    ))
}

fn sqlite_restore(from: &Path, db: &Path) -> Result<(), BackupError> {
    sqlite_check(from)?;
    // An existing database (or its write-ahead log) is live data: never replace it.
    for p in [db.to_path_buf(), sidecar(db, "-wal"), sidecar(db, "-shm")] {
        if p.exists() {
            return Err(BackupError::Exists(p));
        }
    }
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let partial = partial_path(db);
    std::fs::copy(from, &partial).map_err(io(&partial))?;
    sync_and_rename(&partial, db)
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// fsync the file, rename it into place, fsync the directory: durable under its final name.
fn sync_and_rename(partial: &Path, to: &Path) -> Result<(), BackupError> {
    std::fs::File::open(partial)
        .and_then(|f| f.sync_all())
        .map_err(io(partial))?;
    std::fs::rename(partial, to).map_err(io(to))?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MySQL / MariaDB

/// Where DATABASE_URL points, in the terms of the `mysql` command-line clients.
struct MysqlTarget {
    host: String,
    port: u16,
    user: String,
    /// Handed to the clients in MYSQL_PWD, never on their command line (visible in `ps`).
    password: Option<SecretString>,
    database: String,
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl MysqlTarget {
    fn parse(database_url: &str) -> Result<Self, BackupError> {
        let u = url::Url::parse(database_url).map_err(|e| BackupError::Url(e.to_string()))?;
        let database = u.path().trim_start_matches('/').to_string();
        if database.is_empty() || database.contains('/') {
            return Err(BackupError::Url(
                "a mysql:// URL must name its database (mysql://user:pw@host:3306/coinpay)".into(),
            ));
        }
        Ok(MysqlTarget {
            host: u.host_str().unwrap_or("localhost").to_string(),
            port: u.port().unwrap_or(3306),
            user: decode(u.username()),
            password: u.password().map(|p| SecretString::from(decode(p))),
            database: decode(&database),
        })
    }

    fn connection_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("--host={}", self.host),
            format!("--port={}", self.port),
            "--protocol=TCP".to_string(),
            "--default-character-set=utf8mb4".to_string(),
        ];
        if !self.user.is_empty() {
            v.push(format!("--user={}", self.user));
        }
        v
    }

    /// One InnoDB snapshot of coinpay's tables, without locking them.
    fn dump_args(&self) -> Vec<String> {
        let mut v = self.connection_args();
        v.extend(
            ["--single-transaction", "--quick", "--skip-lock-tables"]
                .iter()
                .map(|s| s.to_string()),
        );
        v.push(self.database.clone());
        v.extend(TABLES.iter().map(|s| s.to_string()));
        v
    }

    fn dump_command_line(&self, to: &Path) -> String {
        let mut words = vec!["mysqldump".to_string()];
        words.extend(self.dump_args());
        if self.password.is_some() {
            // Prompts for the password instead of showing it.
            words.insert(1, "-p".to_string());
        }
        let line =
            shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| words.join(" "));
        let file = to.to_string_lossy();
        let file = shlex::try_quote(&file).map_or_else(|_| file.to_string(), |q| q.into_owned());
        format!("{line} > {file}")
    }

    /// Runs the first of `tools` that is installed, with `input` on its stdin.
    fn run(
        &self,
        tools: [&'static str; 2],
        args: &[String],
        input: Option<&Path>,
    ) -> Result<(), BackupError> {
        for tool in tools {
            let stdin = match input {
                Some(p) => Stdio::from(std::fs::File::open(p).map_err(io(p))?),
                None => Stdio::null(),
            };
            let mut cmd = Command::new(tool);
            cmd.args(args)
                .stdin(stdin)
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            match &self.password {
                Some(p) => cmd.env("MYSQL_PWD", p.expose_secret()),
                None => cmd.env_remove("MYSQL_PWD"),
            };
            let out = match cmd.output() {
                Ok(out) => out,
                // Not installed under this name: try the other one.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(Path::new(tool))(e)),
            };
            if !out.status.success() {
                return Err(BackupError::Tool {
                    tool,
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            return Ok(());
        }
        Err(BackupError::NoTool(tools[0], tools[1], String::new()))
    }

    /// The dump, written under a `.partial` name and renamed once the client says it finished.
    fn dump(&self, to: &Path) -> Result<Backup, BackupError> {
        let partial = partial_path(to);
        let mut args = self.dump_args();
        args.insert(0, format!("--result-file={}", partial.display()));
        let ran = self.run(["mariadb-dump", "mysqldump"], &args, None);
        match ran {
            Ok(()) => {}
            Err(BackupError::NoTool(a, b, _)) => {
                return Err(BackupError::NoTool(a, b, self.dump_command_line(to)));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        }
        let text = std::fs::read_to_string(&partial).map_err(io(&partial))?;
        let tail = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        if !tail.starts_with(DUMP_COMPLETED) {
            let _ = std::fs::remove_file(&partial);
            return Err(BackupError::BadBackup {
                path: to.to_path_buf(),
                problem: format!("the dump does not end with {DUMP_COMPLETED:?}"),
            });
        }
        let tables = text.matches("CREATE TABLE ").count();
        let rows = text.matches("INSERT INTO ").count();
        sync_and_rename(&partial, to)?;
        Ok(Backup::Written {
            path: to.to_path_buf(),
            summary: format!(
                "{tables} tables, {rows} INSERT statements, {} bytes (mysqldump --single-transaction)",
                text.len()
            ),
        })
    }

    /// Loads a dump with the `mysql` client.
    fn load(&self, from: &Path) -> Result<(), BackupError> {
        let mut args = self.connection_args();
        args.push(self.database.clone());
        match self.run(["mariadb", "mysql"], &args, Some(from)) {
            Err(BackupError::NoTool(a, b, _)) => {
                let mut words = vec!["mysql".to_string(), "-p".to_string()];
                words.extend(args);
                let line = shlex::try_join(words.iter().map(String::as_str))
                    .unwrap_or_else(|_| words.join(" "));
                Err(BackupError::NoTool(
                    a,
                    b,
                    format!("{line} < {}", from.display()),
                ))
            }
            other => other,
        }
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Whether the database already holds one of coinpay's tables.
async fn mysql_has_coinpay_tables(database_url: &str) -> Result<bool, BackupError> {
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
    let mut c = AsyncMysqlConnection::establish(database_url)
        .await
        .map_err(|e| StoreError::Connection(e.to_string()))?;
    let names = TABLES
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let found: Count = diesel::sql_query(format!(
        "SELECT COUNT(*) AS n FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name IN ({names})"
    ))
    .get_result(&mut c)
    .await
    .map_err(StoreError::from)?;
    Ok(found.n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_url_becomes_client_arguments_without_the_password() {
        let t = MysqlTarget::parse("mysql://coin%40pay:p%40ss%20w@db.internal:3307/coinpay")
            .expect("url");
        assert_eq!(t.user, "coin@pay");
        assert_eq!(
            t.password.as_ref().map(|p| p.expose_secret()),
            Some("p@ss w")
        );
        let line = t.dump_command_line(Path::new("/backups/coinpay 1.sql"));
        assert!(
            line.starts_with("mysqldump -p '--host=db.internal' '--port=3307'"),
            "{line}"
        );
        assert!(line.contains("--single-transaction"), "{line}");
        assert!(line.contains(" coinpay __diesel_schema_migrations users recharge_packages recharge_orders compute_logs leases > '/backups/coinpay 1.sql'"), "{line}");
        assert!(!line.contains("p@ss"), "{line}");
        assert!(MysqlTarget::parse("mysql://u:p@h/").is_err());
    }
}
