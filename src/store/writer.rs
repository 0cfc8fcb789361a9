//! SQLite's writer: a thread of its own, with a connection of its own, that runs every SQLite
//! write (order transitions, ledger movements, inserts, updates) one after the other as they are
//! queued, each as one job: a transaction of several statements is one hand-over, not one per
//! statement.
//!
//! Why a thread rather than a write connection in a pool: there, each write is a task on an
//! HTTP worker that waits for its turn, hands its statements to a blocking thread and, once they
//! are committed, must be polled again by its worker to pass the turn on; a worker busy parsing
//! other requests leaves the database idle meanwhile. Here the next job is already queued when
//! the previous one commits. The queue is first come, first served, so that no writer is
//! starved by later ones, and writes never meet SQLite's busy handler. The price is that a write
//! job is sync diesel and owns what it writes.

use std::panic::AssertUnwindSafe;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

type Job = Box<dyn FnOnce(&mut SqliteConnection) + Send>;

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
}

fn open(path: &str) -> Result<SqliteConnection, StoreError> {
    let mut c =
        SqliteConnection::establish(path).map_err(|e| StoreError::Connection(e.to_string()))?;
    c.batch_execute(super::SQLITE_PRAGMAS)?;
    Ok(c)
}

impl Writer {
    /// Opens the connection and starts the thread; it ends when the last `Writer` is dropped.
    pub fn start(path: &str) -> Result<Writer, StoreError> {
        let mut conn = open(path)?;
        let path = path.to_string();
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                while let Some(job) = queue.blocking_recv() {
                    // A panicking job drops its reply (its caller gets an error); the
                    // connection, maybe left inside a transaction, is replaced.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
                        tracing::error!("a SQLite write panicked; reopening the connection");
                        match open(&path) {
                            Ok(c) => conn = c,
                            Err(e) => {
                                tracing::error!(error = %e, "SQLite writer stopped");
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Connection(e.to_string()))?;
        Ok(Writer { jobs })
    }

    /// Runs `f` on the writer's connection, in its turn, and returns what it returned.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> R + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Connection("the SQLite writer stopped".into());
        self.jobs
            .send(Box::new(move |c| {
                let _ = reply.send(f(c));
            }))
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| StoreError::Connection("the SQLite write failed (panicked)".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use diesel::prelude::*;
    use diesel::sql_types::BigInt;

    use super::*;

    fn count(c: &mut SqliteConnection) -> QueryResult<i64> {
        diesel::select(diesel::dsl::sql::<BigInt>("(SELECT COUNT(*) FROM t)")).get_result(c)
    }

    #[tokio::test]
    async fn jobs_run_in_arrival_order_and_a_panic_fails_only_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let w = Writer::start(path.to_str().expect("utf-8 path")).expect("start");
        w.run(|c| c.batch_execute("CREATE TABLE t (x INTEGER)"))
            .await
            .expect("run")
            .expect("create");

        // A slow job holds the connection: the next one, queued meanwhile, runs after it.
        let slow = tokio::spawn({
            let w = w.clone();
            async move {
                w.run(|c| {
                    std::thread::sleep(Duration::from_millis(100));
                    c.batch_execute("INSERT INTO t VALUES (1)")
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = w.run(count).await.expect("run").expect("count");
        assert_eq!(n, 1, "the second job ran before the first had finished");
        slow.await.expect("join").expect("run").expect("insert");

        // A panic inside a transaction: that caller gets an error, nothing of it is kept.
        let r = w
            .run(|c| {
                c.transaction::<(), diesel::result::Error, _>(|c| {
                    c.batch_execute("INSERT INTO t VALUES (2)")?;
                    panic!("injected")
                })
            })
            .await;
        assert!(r.is_err());
        let n = w.run(count).await.expect("run").expect("count");
        assert_eq!(n, 1);
    }
}
