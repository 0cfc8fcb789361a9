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

use super::orders::{self, Decide, Decided, Transition, Written};
use super::{MysqlPool, StoreError};

/// How many batches may be in flight at once.
pub const BATCHERS: usize = 4;

/// Runs of a batch whose transaction was lost (a deadlock, a Galera certification conflict, a
/// lost node) before it gives up; each run after the first waits a jittered back-off.
pub const ATTEMPTS: usize = 6;

/// How long a batch goes on asking for a connection after one that did not come.
const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

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
    fn answer(self: Box<Self>, batch: Result<(), &Unwritten>);
    /// The order transition or decision this job writes, when it is one: those of a batch are
    /// written together by [`orders::write_many`].
    fn item(&self) -> Option<Together> {
        None
    }
    /// Takes the result [`orders::write_many`] wrote for [`Self::item`].
    fn settle(&mut self, _written: QueryResult<Written>) {}
}

/// What a job gives [`orders::write_many`] to write.
#[derive(Clone)]
enum Together {
    Move(Arc<Transition>),
    Decide(String, Decide),
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

    fn answer(self: Box<Self>, batch: Result<(), &Unwritten>) {
        let answer = match (batch, self.result) {
            (Ok(()), Some(r)) => r.map_err(StoreError::from),
            (Ok(()), None) => Err(StoreError::Commit("the write did not run".into())),
            (Err(why), _) => Err(why.error()),
        };
        let _ = self.reply.send(answer);
    }
}

/// An order write (a transition, or a decision to take in the batch): a [`Typed`] job that the
/// batch writes together with the others, its result taken out of what
/// [`orders::write_many`] wrote for it by `take`; on its own, its work runs as any job's.
struct Joint<R> {
    item: Together,
    take: fn(Written) -> QueryResult<R>,
    job: Typed<R>,
}

impl<R: Send + 'static> Job for Joint<R> {
    fn run<'c>(&'c mut self, c: &'c mut AsyncMysqlConnection) -> BoxFuture<'c, bool> {
        self.job.run(c)
    }

    fn answer(self: Box<Self>, batch: Result<(), &Unwritten>) {
        Box::new(self.job).answer(batch)
    }

    fn item(&self) -> Option<Together> {
        Some(self.item.clone())
    }

    fn settle(&mut self, written: QueryResult<Written>) {
        self.job.result = Some(written.and_then(self.take));
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
        let written = t.clone();
        let work: Work<bool> = Box::new(move |c| {
            let t = written.clone();
            Box::pin(async move { t.write(c).await })
        });
        let take = |w| match w {
            Written::Moved(moved) => Ok(moved),
            Written::Decided(_) => Err(diesel::result::Error::NotFound),
        };
        self.joint(Together::Move(t), take, work).await
    }

    /// Loads the order `order_no` in a batch, takes `decide` on its row and, when that is a
    /// move, writes it (with the batch's other transitions, in the same statements); the
    /// answer once committed, as `orders::load_and_apply` gives it.
    pub(super) async fn run_decide(
        &self,
        order_no: String,
        decide: Decide,
    ) -> Result<Option<Decided>, StoreError> {
        let (no, d) = (order_no.clone(), decide.clone());
        let work: Work<Option<Decided>> = Box::new(move |c| {
            let (no, d) = (no.clone(), d.clone());
            Box::pin(async move { orders::decide_one(c, &no, &d).await })
        });
        let take = |w| match w {
            Written::Decided(decided) => Ok(decided),
            Written::Moved(_) => Err(diesel::result::Error::NotFound),
        };
        self.joint(Together::Decide(order_no, decide), take, work)
            .await
    }

    /// Queues an order write (see [`Joint`]) and returns its answer once committed.
    async fn joint<R: Send + 'static>(
        &self,
        item: Together,
        take: fn(Written) -> QueryResult<R>,
        work: Work<R>,
    ) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Joint {
            item,
            take,
            job: Typed {
                work,
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
        let fate = fate.as_ref().map(|_| ());
        for job in batch {
            job.answer(fate);
        }
    }
}

/// Why a batch did not commit, in the end.
enum Unwritten {
    /// Its transaction was lost on every run (a deadlock, a certification conflict, a lost
    /// node): the writes are worth trying again, in another batch.
    Lost { reason: &'static str, why: String },
    /// It could not be written (no connection, a COMMIT refused for good).
    Failed(String),
}

impl Unwritten {
    fn error(&self) -> StoreError {
        match self {
            Unwritten::Lost { reason, why } => StoreError::Lost {
                reason,
                why: why.clone(),
            },
            Unwritten::Failed(why) => StoreError::Commit(why.clone()),
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
async fn run_batch(pool: &MysqlPool, batch: &mut [Box<dyn Job>]) -> Result<(), Unwritten> {
    let mut last = Unwritten::Failed("the batch did not run".into());
    let started = std::time::Instant::now();
    for attempt in 1..=ATTEMPTS {
        let mut c = match pool.get().await {
            Ok(c) => c,
            // Every connection tried was dead or on a node out of the primary component (each
            // was dropped): the next check-out opens fresh ones on a node that is synced. Not
            // past a few seconds, though: a database that does not answer at all is waited
            // for by each check-out, and its notifications are better answered FAIL.
            Err(e) if started.elapsed() < RETRY_WINDOW => {
                tracing::warn!(error = %e, attempt, jobs = batch.len(), "no connection for a MySQL batch; trying again");
                pool.note_retry(Some("connection_lost"));
                last = Unwritten::Failed(e.to_string());
                tokio::time::sleep(super::galera::backoff(attempt as u32)).await;
                continue;
            }
            Err(e) => return Err(Unwritten::Failed(e.to_string())),
        };
        match run_once(&mut c, batch).await {
            Ok(()) => return Ok(()),
            Err(Failed::Final(why)) => {
                tracing::error!(error = %why, jobs = batch.len(), "a MySQL batch failed to commit");
                super::discard(c);
                return Err(Unwritten::Failed(why));
            }
            Err(Failed::Lost(e)) => {
                tracing::warn!(error = %e, attempt, jobs = batch.len(), "a MySQL batch's transaction was lost; running it again");
                super::discard(c);
                let reason = super::galera::query_retry_reason(&e);
                pool.note_retry(reason);
                last = match reason {
                    Some(reason) => Unwritten::Lost {
                        reason,
                        why: e.to_string(),
                    },
                    None => Unwritten::Failed(format!("the transaction was lost: {e}")),
                };
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
    Tm::begin_transaction(c).await.map_err(|e| {
        // A node that left the primary component refuses even the BEGIN: run again elsewhere.
        if super::galera::query_retry_reason(&e).is_some() {
            Failed::Lost(e)
        } else {
            Failed::Final(format!("cannot begin a transaction: {e}"))
        }
    })?;
    let mut settled = vec![false; batch.len()];
    let together: Vec<(usize, Together)> = batch
        .iter()
        .enumerate()
        .filter_map(|(k, job)| job.item().map(|t| (k, t)))
        .collect();
    if together.len() > 1 {
        let items: Vec<orders::Item<'_>> = together
            .iter()
            .map(|(_, t)| match t {
                Together::Move(t) => orders::Item::Move(t),
                Together::Decide(no, d) => orders::Item::Decide(no, d),
            })
            .collect();
        Tm::begin_transaction(c).await.map_err(Failed::Lost)?;
        match orders::write_many(c, &items).await {
            Ok(written) => {
                Tm::commit_transaction(c).await.map_err(Failed::Lost)?;
                for ((k, _), w) in together.iter().zip(written) {
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
                tracing::warn!(error = %e, items = together.len(), "the batch's order writes did not go together; writing them one by one");
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
