//! Group commit on MySQL/MariaDB: order transitions that arrive together are written in one
//! transaction, on one connection, and committed once.
//!
//! With `innodb_flush_log_at_trx_commit=1` every commit waits for a flush of InnoDB's log, and
//! the service's rate of payments is bounded by the database's rate of durable commits. A
//! [`Batcher`] sits in front of the pool: a few tasks ([`BATCHERS`]), each taking what is queued
//! when it is free (at most `max_batch` writes, nothing waited for), running it on one pooled
//! connection and committing it once. Several batches can be in flight, so a batch's commit
//! overlaps the next batch's statements.
//!
//! As for SQLite's writer (`store::writer`):
//! - each write runs in a savepoint of its own; one that fails (a unique violation, a CHECK, a
//!   refused credit) is rolled back alone, and the others commit;
//! - every caller gets its answer after the COMMIT, and a COMMIT that fails answers
//!   [`StoreError::Commit`] to every write of the batch (a notification is answered FAIL and
//!   WeChat retries; nothing of it was kept);
//! - when the transaction is lost halfway (InnoDB rolls a whole transaction back when it breaks
//!   a deadlock, and the next savepoint statement fails), the batch is run again from the start
//!   on a fresh connection, up to [`ATTEMPTS`] times: a write is a function that can be run
//!   again, and nothing of the lost run was kept.
//!
//! Only writes that are whole units (an order's compare-and-set with its credit, a ledger
//! posting) come through here; a write that must see its own commit before it goes on (the
//! insert of a new order, which may collide on its number) runs directly on the pool.

use std::sync::Arc;

use diesel::QueryResult;
use diesel_async::{AnsiTransactionManager, AsyncMysqlConnection, TransactionManager};
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::orders::{self, Transition};
use super::{MysqlPool, StoreError};

/// How many batches may be in flight at once.
pub const BATCHERS: usize = 4;

/// Runs of a batch whose transaction was lost (a deadlock, a Galera certification conflict, a
/// lost node) before it gives up; each run after the first waits a jittered back-off.
pub const ATTEMPTS: usize = 6;

/// A write of a batch: run on the batch's connection (inside its savepoint), maybe more than once
/// when the batch's transaction is lost and run again.
pub type Work<R> = Box<
    dyn for<'c> Fn(&'c mut AsyncMysqlConnection) -> BoxFuture<'c, QueryResult<R>> + Send + Sync,
>;

/// A queued write, whatever its result type.
trait Job: Send {
    /// Runs the write; false when it failed (then its savepoint is rolled back).
    fn run<'c>(&'c mut self, c: &'c mut AsyncMysqlConnection) -> BoxFuture<'c, bool>;
    /// Answers the caller: the write's result when its batch committed, else why not.
    fn answer(self: Box<Self>, batch: Result<(), &str>);
    /// The order transition this job writes, when it is one: the transitions of a batch are
    /// written together by [`orders::write_many`].
    fn transition(&self) -> Option<Arc<Transition>> {
        None
    }
    /// Takes the result [`orders::write_many`] wrote for [`Self::transition`].
    fn settle(&mut self, _written: QueryResult<bool>) {}
}

struct Typed<R> {
    work: Work<R>,
    result: Option<QueryResult<R>>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<R: Send + 'static> Job for Typed<R> {
    fn run<'c>(&'c mut self, c: &'c mut AsyncMysqlConnection) -> BoxFuture<'c, bool> {
        Box::pin(async move {
            let r = (self.work)(c).await;
            let ok = r.is_ok();
            self.result = Some(r);
            ok
        })
    }

    fn answer(self: Box<Self>, batch: Result<(), &str>) {
        let answer = match (batch, self.result) {
            (Ok(()), Some(r)) => r.map_err(StoreError::from),
            (Ok(()), None) => Err(StoreError::Commit("the write did not run".into())),
            (Err(why), _) => Err(StoreError::Commit(why.to_string())),
        };
        let _ = self.reply.send(answer);
    }
}

/// An order transition: a [`Typed`] job that the batch may write together with the others.
struct Moving {
    t: Arc<Transition>,
    job: Typed<bool>,
}

impl Job for Moving {
    fn run<'c>(&'c mut self, c: &'c mut AsyncMysqlConnection) -> BoxFuture<'c, bool> {
        self.job.run(c)
    }

    fn answer(self: Box<Self>, batch: Result<(), &str>) {
        Box::new(self.job).answer(batch)
    }

    fn transition(&self) -> Option<Arc<Transition>> {
        Some(self.t.clone())
    }

    fn settle(&mut self, written: QueryResult<bool>) {
        self.job.result = Some(written);
    }
}

type Queue = Arc<Mutex<mpsc::UnboundedReceiver<Box<dyn Job>>>>;

#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::UnboundedSender<Box<dyn Job>>,
}

impl Batcher {
    /// Starts the batching tasks on `pool` (a pool without a batcher of its own); they end
    /// when the last `Batcher` is dropped.
    pub fn start(pool: MysqlPool, max_batch: usize) -> Batcher {
        let (jobs, queue) = mpsc::unbounded_channel::<Box<dyn Job>>();
        let queue: Queue = Arc::new(Mutex::new(queue));
        for _ in 0..BATCHERS {
            tokio::spawn(serve(pool.clone(), queue.clone(), max_batch.max(1)));
        }
        Batcher { jobs }
    }

    /// Runs `work` in the transaction of a batch and returns its result once that has
    /// committed.
    pub async fn run<R: Send + 'static>(&self, work: Work<R>) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Typed {
            work,
            result: None,
            reply,
        });
        self.queue(job, answer).await
    }

    /// Writes the order transition `t` in a batch (with the batch's other transitions, in
    /// the same statements) and returns whether its compare-and-set matched, once committed.
    pub(super) async fn run_move(&self, t: Arc<Transition>) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let written = t.clone();
        let job = Box::new(Moving {
            t,
            job: Typed {
                work: Box::new(move |c| {
                    let t = written.clone();
                    Box::pin(async move { t.write(c).await })
                }),
                result: None,
                reply,
            },
        });
        self.queue(job, answer).await
    }

    async fn queue<R>(
        &self,
        job: Box<dyn Job>,
        answer: oneshot::Receiver<Result<R, StoreError>>,
    ) -> Result<R, StoreError> {
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Connection("the MySQL batcher stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Connection("the MySQL batch was dropped".into()))?
    }
}

/// One batching task: takes what is queued, runs it, again.
async fn serve(pool: MysqlPool, queue: Queue, max_batch: usize) {
    loop {
        let mut batch = {
            let mut q = queue.lock().await;
            let Some(first) = q.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match q.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let fate = run_batch(&pool, &mut batch).await;
        let fate = fate.as_ref().copied().map_err(String::as_str);
        for job in batch {
            job.answer(fate);
        }
    }
}

/// Why a run of a batch did not commit.
enum Failed {
    /// The transaction is gone: the batch may be run again from the start.
    Lost(diesel::result::Error),
    /// The COMMIT (or the BEGIN) failed: every job is answered with it.
    Final(String),
}

/// Runs the batch until it commits or fails for good; `Ok` when every job's own result is its
/// answer.
async fn run_batch(pool: &MysqlPool, batch: &mut [Box<dyn Job>]) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let mut c = pool.get().await.map_err(|e| e.to_string())?;
        match run_once(&mut c, batch).await {
            Ok(()) => return Ok(()),
            Err(Failed::Final(why)) => {
                tracing::error!(error = %why, jobs = batch.len(), "a MySQL batch failed to commit");
                super::discard(c);
                return Err(why);
            }
            Err(Failed::Lost(e)) => {
                tracing::warn!(error = %e, attempt, jobs = batch.len(), "a MySQL batch's transaction was lost; running it again");
                super::discard(c);
                pool.note_retry(super::galera::query_retry_reason(&e));
                last = format!("the transaction was lost: {e}");
                tokio::time::sleep(super::galera::backoff(attempt as u32)).await;
            }
        }
    }
    Err(last)
}

/// One run of the batch in one transaction: its order transitions together (when there are
/// several) in a savepoint, then every other job in a savepoint of its own (when there are
/// several).
async fn run_once(c: &mut AsyncMysqlConnection, batch: &mut [Box<dyn Job>]) -> Result<(), Failed> {
    type Tm = AnsiTransactionManager;
    let savepoints = batch.len() > 1;
    Tm::begin_transaction(c)
        .await
        .map_err(|e| Failed::Final(format!("cannot begin a transaction: {e}")))?;
    let mut settled = vec![false; batch.len()];
    let moves: Vec<(usize, Arc<Transition>)> = batch
        .iter()
        .enumerate()
        .filter_map(|(k, job)| job.transition().map(|t| (k, t)))
        .collect();
    if moves.len() > 1 {
        let ts: Vec<&Transition> = moves.iter().map(|(_, t)| &**t).collect();
        Tm::begin_transaction(c).await.map_err(Failed::Lost)?;
        match orders::write_many(c, &ts).await {
            Ok(written) => {
                Tm::commit_transaction(c).await.map_err(Failed::Lost)?;
                for ((k, _), w) in moves.iter().zip(written) {
                    batch[*k].settle(w);
                    settled[*k] = true;
                }
            }
            Err(e) if super::galera::query_retry_reason(&e).is_some() => {
                return Err(Failed::Lost(e));
            }
            // One of them is at fault (a unique or CHECK violation): they are written one by
            // one below, each in its savepoint, so that it fails alone.
            Err(e) => {
                tracing::warn!(error = %e, moves = moves.len(), "the batch's transitions did not write together; writing them one by one");
                Tm::rollback_transaction(c).await.map_err(Failed::Lost)?;
            }
        }
    }
    for (job, _) in batch.iter_mut().zip(&settled).filter(|(_, s)| !**s) {
        if savepoints {
            Tm::begin_transaction(c).await.map_err(Failed::Lost)?;
        }
        let ok = job.run(c).await;
        match (savepoints, ok) {
            (true, true) => Tm::commit_transaction(c).await.map_err(Failed::Lost)?,
            (true, false) => Tm::rollback_transaction(c).await.map_err(Failed::Lost)?,
            (false, true) => {}
            // A lone job that failed: its transaction is rolled back, its error is its answer.
            (false, false) => return Tm::rollback_transaction(c).await.map_err(Failed::Lost),
        }
    }
    Tm::commit_transaction(c).await.map_err(|e| {
        // A Galera certification conflict is reported by the COMMIT (as a deadlock), and the
        // node rolled the whole transaction back: the batch runs again. So does one whose
        // connection was lost at the COMMIT, which may have committed: every write is a
        // compare-and-set or unique, so running it again changes nothing twice.
        if super::galera::query_retry_reason(&e).is_some() {
            Failed::Lost(e)
        } else {
            Failed::Final(format!("the batch did not commit: {e}"))
        }
    })
}
