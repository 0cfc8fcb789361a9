//! A database of its own for one test or one benchmark run.

use super::{Backend, DbPool, lib_api, rand_suffix};

/// A fresh SQLite file in a temporary directory, or a fresh database `<prefix>_<random>` on the
/// MariaDB server of [`Backend::Mysql`]. The SQLite file goes with the value; a MariaDB database
/// stays on the (throw-away) server unless its owner drops it.
pub struct Db {
    pub url: String,
    pub backend: Backend,
    _dir: tempfile::TempDir,
}

impl Db {
    /// Creates the database (empty: see [`Db::migrate`]). `prefix` names whose it is on a shared
    /// MariaDB server (`coinpay_t` for tests, `coinpay_b` for the benchmark). The server URL may
    /// name several (Galera) nodes: the database is created on the first and replicated.
    pub async fn create(backend: &Backend, prefix: &str) -> Result<Db, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}."))
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}/coinpay.db", dir.path().display()),
            Backend::Mysql(base) => {
                use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
                let name = format!("{prefix}_{}", rand_suffix());
                let mut c = AsyncMysqlConnection::establish(&lib_api::first_node(base)?)
                    .await
                    .map_err(|e| format!("connect to the MariaDB at {base}: {e}"))?;
                c.batch_execute(&format!(
                    "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                ))
                .await
                .map_err(|e| format!("create database {name}: {e}"))?;
                let (server, _) = base.rsplit_once('/').ok_or("the MariaDB URL has no path")?;
                format!("{server}/{name}")
            }
        };
        Ok(Db {
            url,
            backend: backend.clone(),
            _dir: dir,
        })
    }

    /// Applies the migrations (a no-op when they are applied already).
    pub async fn migrate(&self) -> Result<(), String> {
        lib_api::migrate(&self.url).await
    }

    /// A pool of `size` connections, as the service builds it.
    pub async fn connect(&self, size: u32) -> Result<DbPool, String> {
        self.connect_batched(size, lib_api::WRITE_BATCH).await
    }

    /// A pool of `size` connections that commits at most `write_batch` writes together (1: each
    /// write a transaction of its own, no group commit, as `db-baseline` measures).
    pub async fn connect_batched(&self, size: u32, write_batch: usize) -> Result<DbPool, String> {
        lib_api::connect(&self.url, size, write_batch).await
    }
}
