//! SQLite's order writer: a thread of its own, with a connection of its own, that runs order
//! transitions one after the other as they are queued.
//!
//! Why not the write pool: there, each transition is a task on an HTTP worker that waits for the
//! write turn, hands its statements to a blocking thread and, once they are committed, must be
//! polled again by its worker to pass the turn on. A worker busy parsing other requests leaves
//! the database idle meanwhile. Here the next transition is already queued when the previous one
//! commits. It takes the same write turn as every other SQLite write, so writes stay serialised
//! and never meet SQLite's busy handler.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use tokio::sync::{Semaphore, mpsc, oneshot};

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
    pub fn start(path: &str, gate: Arc<Semaphore>) -> Result<Writer, StoreError> {
        let mut conn = open(path)?;
        let path = path.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| StoreError::Connection(e.to_string()))?;
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                rt.block_on(async move {
                    while let Some(job) = queue.recv().await {
                        let Ok(_turn) = gate.acquire().await else {
                            break;
                        };
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
                });
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
    async fn jobs_wait_for_the_write_turn_and_a_panic_fails_only_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let gate = Arc::new(Semaphore::new(1));
        let w = Writer::start(path.to_str().expect("utf-8 path"), gate.clone()).expect("start");
        w.run(|c| c.batch_execute("CREATE TABLE t (x INTEGER)"))
            .await
            .expect("run")
            .expect("create");

        // Another writer holds the turn: the job waits for it.
        let turn = gate.clone().acquire_owned().await.expect("permit");
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.run(|c| c.batch_execute("INSERT INTO t VALUES (1)")).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "ran without the write turn");
        drop(turn);
        waiting.await.expect("join").expect("run").expect("insert");

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
