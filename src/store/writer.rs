//! SQLite's writer: a thread of its own, with a connection of its own, that runs every SQLite
//! write (order transitions, ledger movements, inserts, updates) in the order they are queued,
//! and commits what it finds queued together, as one transaction (group commit).
//!
//! Why a thread rather than a write connection in a pool: there, each write is a task on an
//! HTTP worker that waits for its turn, hands its statements to a blocking thread and, once they
//! are committed, must be polled again by its worker to pass the turn on; a worker busy parsing
//! other requests leaves the database idle meanwhile. Here the next job is already queued when
//! the previous one commits. The queue is first come, first served, so that no writer is
//! starved by later ones, and writes never meet SQLite's busy handler. The price is that a write
//! job is sync diesel and owns what it writes.
//!
//! Why batches: with `synchronous=FULL` every commit waits for an fsync of the WAL, and that
//! wait, not the statements, bounds the rate of one commit per write. The writer takes the job
//! it waits for and whatever else is queued by then, up to [`Writer::start`]'s `max_batch`
//! (nothing is waited for: a lone job is committed at once), and runs them in one transaction:
//!
//! - each job runs inside a savepoint of its own; a job that fails (a compare-and-set that the
//!   job turns into an error, a unique or CHECK violation) is rolled back to its savepoint alone
//!   and the others go on;
//! - every caller gets its answer only after the COMMIT: a job's result is kept until then, so
//!   that nobody acts on (or acknowledges) a write that is not on disk yet, and a reader that
//!   runs after the answer sees the write;
//! - a COMMIT that fails answers [`StoreError::Commit`] to every job of the batch (nothing of it
//!   was kept: a WeChat notification is answered FAIL and retried);
//! - when the transaction itself is lost halfway (a savepoint cannot be rolled back or released:
//!   SQLite rolled everything back on its own, as it does on a full disk), the jobs that ran get
//!   the error too, and those not run yet are run in the next batch.
//!
//! Jobs of one batch see each other's writes, in queue order, exactly as they would one
//! transaction after the other: the compare-and-set on an order's version and the ledger's
//! unique indexes keep guarding against a second credit within a batch as across batches.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::{Connection, QueryResult, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// How many jobs one transaction holds at most when `COINPAY_WRITE_BATCH` is not set, on
/// SQLite and on MySQL: 32 measured fastest of 1, 8, 32 and 128 on both (README, Group commit).
pub const DEFAULT_MAX_BATCH: usize = 32;

/// What a job leaves behind once it ran: whether it succeeded (else its savepoint is rolled
/// back), and how to answer its caller once the batch's fate is known (`Err`: the batch did not
/// commit).
struct Ran {
    ok: bool,
    answer: Answer,
}

/// Answers a job's caller, given whether its batch committed (`Err`: why not).
type Answer = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// A job's turn: run on the connection, or refused without running (no transaction could be
/// begun), answering the reason.
enum Turn<'a> {
    Run(&'a mut SqliteConnection),
    Refuse(&'a str),
}

type Job = Box<dyn FnOnce(Turn<'_>) -> Option<Ran> + Send>;

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
    counts: Arc<Counts>,
}

/// How many batches the writer ran and how many jobs they held, for the metrics: their ratio
/// is the mean batch size.
#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    jobs: AtomicU64,
}

fn open(path: &str) -> Result<SqliteConnection, StoreError> {
    let mut c =
        SqliteConnection::establish(path).map_err(|e| StoreError::Connection(e.to_string()))?;
    c.batch_execute(super::SQLITE_PRAGMAS)?;
    Ok(c)
}

/// What became of a batch: the jobs that did not run (they go first into the next batch), and
/// whether the connection must be replaced (a job panicked, or the transaction could not be
/// closed cleanly).
struct Fate {
    rest: VecDeque<Job>,
    reopen: bool,
}

impl Fate {
    fn done() -> Fate {
        Fate {
            rest: VecDeque::new(),
            reopen: false,
        }
    }
}

impl Writer {
    /// Opens the connection and starts the thread; it ends when the last `Writer` is dropped.
    /// One transaction holds at most `max_batch` jobs (1: one transaction per job).
    pub fn start(path: &str, max_batch: usize) -> Result<Writer, StoreError> {
        let mut conn = open(path)?;
        let path = path.to_string();
        let max_batch = max_batch.max(1);
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let mut waiting: VecDeque<Job> = VecDeque::new();
                loop {
                    if waiting.is_empty() {
                        match queue.blocking_recv() {
                            Some(job) => waiting.push_back(job),
                            None => break,
                        }
                    }
                    // What is queued now joins the batch; nothing is waited for.
                    while waiting.len() < max_batch {
                        match queue.try_recv() {
                            Ok(job) => waiting.push_back(job),
                            Err(_) => break,
                        }
                    }
                    let take = waiting.len().min(max_batch);
                    counted.batches.fetch_add(1, Ordering::Relaxed);
                    counted.jobs.fetch_add(take as u64, Ordering::Relaxed);
                    let fate = run_batch(&mut conn, waiting.drain(..take).collect());
                    for job in fate.rest.into_iter().rev() {
                        waiting.push_front(job);
                    }
                    if fate.reopen {
                        tracing::error!("SQLite writer: reopening the connection");
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
        Ok(Writer { jobs, counts })
    }

    /// Batches run so far (each one transaction, committed or not).
    pub fn batches(&self) -> u64 {
        self.counts.batches.load(Ordering::Relaxed)
    }

    /// Jobs run so far, in all batches.
    pub fn jobs(&self) -> u64 {
        self.counts.jobs.load(Ordering::Relaxed)
    }

    /// Runs `f` on the writer's connection, in its turn, inside the transaction of its batch
    /// (in a savepoint of its own), and returns what it returned once that transaction has
    /// committed. When `f` fails, what it wrote is rolled back and its error is the answer.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> QueryResult<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<R, StoreError>>();
        let stopped = || StoreError::Connection("the SQLite writer stopped".into());
        let job: Job = Box::new(move |turn| {
            let c = match turn {
                Turn::Run(c) => c,
                Turn::Refuse(why) => {
                    let _ = reply.send(Err(StoreError::Commit(why.to_string())));
                    return None;
                }
            };
            let result = f(c);
            Some(Ran {
                ok: result.is_ok(),
                answer: Box::new(move |batch: Result<(), &str>| {
                    let _ = reply.send(match batch {
                        Ok(()) => result.map_err(StoreError::from),
                        Err(why) => Err(StoreError::Commit(why.to_string())),
                    });
                }),
            })
        });
        self.jobs.send(job).map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| StoreError::Connection("the SQLite write failed (panicked)".into()))?
    }
}

/// Answers every job that ran with the batch's outcome.
fn answer_all(ran: Vec<Ran>, batch: Result<(), &str>) {
    for r in ran {
        (r.answer)(batch);
    }
}

/// Runs one batch in one transaction, each job in a savepoint when there are several (a lone
/// job's failure rolls the whole transaction back, which is its own), then commits and answers.
fn run_batch(c: &mut SqliteConnection, mut batch: VecDeque<Job>) -> Fate {
    let savepoints = batch.len() > 1;
    if let Err(e) = AnsiTransactionManager::begin_transaction(c) {
        // Nothing ran; the jobs are answered rather than retried for ever.
        tracing::error!(error = %e, "SQLite writer: cannot begin a transaction");
        let why = format!("cannot begin a transaction: {e}");
        for job in batch {
            job(Turn::Refuse(&why));
        }
        return Fate {
            rest: VecDeque::new(),
            reopen: true,
        };
    }
    let mut ran: Vec<Ran> = Vec::with_capacity(batch.len());
    while let Some(job) = batch.pop_front() {
        if savepoints && let Err(e) = AnsiTransactionManager::begin_transaction(c) {
            batch.push_front(job);
            return lost(c, ran, batch, &e);
        }
        let Ok(Some(r)) = std::panic::catch_unwind(AssertUnwindSafe(|| job(Turn::Run(c)))) else {
            // Its caller's reply is dropped with it (an error); the connection is replaced.
            tracing::error!("a SQLite write panicked");
            let _ = c.batch_execute("ROLLBACK");
            answer_all(ran, Err("a write of the same batch panicked"));
            return Fate {
                rest: batch,
                reopen: true,
            };
        };
        let ok = r.ok;
        ran.push(r);
        let closed = match (savepoints, ok) {
            (true, true) => AnsiTransactionManager::commit_transaction(c),
            (true, false) => AnsiTransactionManager::rollback_transaction(c),
            (false, _) => Ok(()),
        };
        if let Err(e) = closed {
            return lost(c, ran, batch, &e);
        }
        if !savepoints && !ok {
            // A lone job that failed: its transaction is rolled back, its error is its answer.
            return match AnsiTransactionManager::rollback_transaction(c) {
                Ok(()) => {
                    answer_all(ran, Ok(()));
                    Fate::done()
                }
                Err(e) => lost(c, ran, batch, &e),
            };
        }
    }
    match AnsiTransactionManager::commit_transaction(c) {
        Ok(()) => {
            answer_all(ran, Ok(()));
            Fate::done()
        }
        Err(e) => {
            // diesel has rolled back the transaction a failed COMMIT left open.
            tracing::error!(error = %e, jobs = ran.len(), "SQLite writer: a batch failed to commit");
            answer_all(ran, Err(&format!("the batch did not commit: {e}")));
            Fate {
                rest: VecDeque::new(),
                reopen: !outside_transaction(c),
            }
        }
    }
}

/// The transaction is gone (or unusable) halfway through a batch: what ran is answered with the
/// error, what did not run goes into the next batch, on a fresh connection.
fn lost(
    c: &mut SqliteConnection,
    ran: Vec<Ran>,
    rest: VecDeque<Job>,
    e: &diesel::result::Error,
) -> Fate {
    tracing::error!(error = %e, jobs = ran.len(), "SQLite writer: the batch's transaction was lost");
    // Whatever SQLite may still hold open; an error here means nothing was open.
    let _ = c.batch_execute("ROLLBACK");
    answer_all(ran, Err(&format!("the transaction was lost: {e}")));
    Fate { rest, reopen: true }
}

/// Whether diesel's bookkeeping has the connection outside any transaction, as it must be
/// between batches.
fn outside_transaction(c: &mut SqliteConnection) -> bool {
    AnsiTransactionManager::transaction_manager_status_mut(c)
        .transaction_depth()
        .is_ok_and(|d| d.is_none())
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
        let w =
            Writer::start(path.to_str().expect("utf-8 path"), DEFAULT_MAX_BATCH).expect("start");
        w.run(|c| c.batch_execute("CREATE TABLE t (x INTEGER)"))
            .await
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
        let n = w.run(count).await.expect("count");
        assert_eq!(n, 1, "the second job ran before the first had finished");
        slow.await.expect("join").expect("insert");

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
        let n = w.run(count).await.expect("count");
        assert_eq!(n, 1);
    }

    /// Queues `jobs` while a slow job holds the writer, so that they all land in the batch
    /// after it; returns their answers, in order.
    async fn in_one_batch(w: &Writer, jobs: Vec<&'static str>) -> Vec<Result<(), StoreError>> {
        let slow = tokio::spawn({
            let w = w.clone();
            async move {
                w.run(|_| {
                    std::thread::sleep(Duration::from_millis(150));
                    Ok(())
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut queued = Vec::new();
        for sql in jobs {
            let w = w.clone();
            queued.push(tokio::spawn(async move {
                w.run(move |c| c.batch_execute(sql)).await
            }));
            // Each one queued before the next is spawned: the batch keeps their order.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        slow.await.expect("join").expect("slow job");
        let mut answers = Vec::new();
        for q in queued {
            answers.push(q.await.expect("join"));
        }
        answers
    }

    async fn writer_with(schema: &'static str) -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let w =
            Writer::start(path.to_str().expect("utf-8 path"), DEFAULT_MAX_BATCH).expect("start");
        w.run(move |c| c.batch_execute(schema))
            .await
            .expect("schema");
        (dir, w)
    }

    fn values(c: &mut SqliteConnection) -> QueryResult<String> {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "(SELECT COALESCE(GROUP_CONCAT(x, ','), '') FROM (SELECT x FROM t ORDER BY x))",
        ))
        .get_result(c)
    }

    #[tokio::test]
    async fn a_failing_job_fails_alone_and_the_rest_of_its_batch_commits() {
        let (_dir, w) = writer_with("CREATE TABLE t (x INTEGER PRIMARY KEY CHECK (x > 0))").await;
        let before = w.batches();
        let answers = in_one_batch(
            &w,
            vec![
                "INSERT INTO t VALUES (1)",
                // A unique violation against the uncommitted row of the job before.
                "INSERT INTO t VALUES (1)",
                "INSERT INTO t VALUES (2)",
                // A CHECK violation, after a statement of its own that must be undone with it.
                "INSERT INTO t VALUES (3); INSERT INTO t VALUES (-3)",
                "INSERT INTO t VALUES (4)",
            ],
        )
        .await;
        assert_eq!(
            w.batches() - before,
            2,
            "the slow job, then the five queued behind it"
        );
        let failed: Vec<bool> = answers.iter().map(Result::is_err).collect();
        assert_eq!(failed, [false, true, false, true, false], "{answers:?}");
        assert!(
            matches!(&answers[1], Err(e) if e.is_unique_violation()),
            "{:?}",
            answers[1]
        );
        assert!(
            matches!(&answers[3], Err(StoreError::Query(_))),
            "{:?}",
            answers[3]
        );
        assert_eq!(w.run(values).await.expect("read"), "1,2,4");

        // A lone job that fails: its own error, nothing kept.
        let alone = w
            .run(|c| c.batch_execute("INSERT INTO t VALUES (5), (0)"))
            .await;
        assert!(matches!(alone, Err(StoreError::Query(_))), "{alone:?}");
        assert_eq!(w.run(values).await.expect("read"), "1,2,4");
    }

    #[tokio::test]
    async fn a_batch_that_fails_to_commit_answers_an_error_to_every_job_and_keeps_none() {
        // A deferred foreign key is only checked at COMMIT: a job that breaks it succeeds, and
        // the COMMIT of its batch fails.
        let (_dir, w) = writer_with(
            "CREATE TABLE t (x INTEGER PRIMARY KEY); CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .await;
        let answers = in_one_batch(
            &w,
            vec![
                "INSERT INTO t VALUES (1)",
                "INSERT INTO child VALUES (99)",
                "INSERT INTO t VALUES (2)",
                // Fails on its own: it gets an error either way.
                "INSERT INTO t VALUES (1)",
            ],
        )
        .await;
        for a in &answers {
            assert!(matches!(a, Err(StoreError::Commit(_))), "{answers:?}");
        }
        assert_eq!(w.run(values).await.expect("read"), "");

        // The writer goes on: the next batch commits.
        w.run(|c| c.batch_execute("INSERT INTO t VALUES (7)"))
            .await
            .expect("insert after the failed commit");
        assert_eq!(w.run(values).await.expect("read"), "7");
    }

    #[tokio::test]
    async fn an_answer_comes_only_after_the_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let path = path.to_str().expect("utf-8 path").to_string();
        let w = Writer::start(&path, DEFAULT_MAX_BATCH).expect("start");
        w.run(|c| c.batch_execute("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
            .await
            .expect("schema");
        // Several writers at once; each one, once answered, reads its row on another connection.
        let mut tasks = Vec::new();
        for x in 1..=40_i64 {
            let (w, path) = (w.clone(), path.clone());
            tasks.push(tokio::spawn(async move {
                w.run(move |c| diesel::sql_query(format!("INSERT INTO t VALUES ({x})")).execute(c))
                    .await
                    .expect("insert");
                let mut other = SqliteConnection::establish(&path).expect("reader");
                let n: i64 = diesel::select(diesel::dsl::sql::<BigInt>(&format!(
                    "(SELECT COUNT(*) FROM t WHERE x = {x})"
                )))
                .get_result(&mut other)
                .expect("read");
                assert_eq!(n, 1, "row {x} answered before it was committed");
            }));
        }
        for t in tasks {
            t.await.expect("a writer");
        }
    }
}
