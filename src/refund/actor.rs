//! One actor per live refund. It runs the pure refund state machine (`refund::state`) one event
//! at a time — each message is an atomic response, so a refund notification arriving while the
//! refund's WeChat call is in flight waits for that call's answer to be committed — asks WeChat
//! what the intent needs, and persists each move as a compare-and-set (`store::refunds::apply`).
//!
//! Each intent is a message of its own with its own reply: [`Submit`] (send the refund, or send
//! it again with the same out_refund_no, and apply WeChat's answer) → the refund's row,
//! [`Notified`] (a verified refund notification) → [`Settled`], [`Poll`] (ask refundquery and
//! apply its answer) → [`Settled`].
//!
//! Every event is decided once, on the row as loaded; only a row that changed underneath (a
//! lost compare-and-set: another instance moved first) is decided afresh. The actor keeps no
//! row between messages: a refund has few events, and the database, not the actor, holds its
//! state, so a restart loses nothing.
//!
//! Supervision, as for the order actors: a panic while handling a message is caught, the
//! caller gets `RefundActorError::Panicked`, and the next message starts from the database;
//! an actor idle for a while stops and leaves the registry through its callback.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use tracing::Instrument;

use super::state::{
    RefundDecision, RefundEffect, RefundEvent, RefundFacts, RefundStatus, Submission,
    WechatRefundState, transition,
};
use crate::metrics::Metrics;
use crate::registry::{Deregister, Registry};
use crate::store::refunds::{self, RefundRow};
use crate::store::{DbPool, StoreError};
use crate::wechat::client::WechatError;
use crate::wechat::refund::{
    MAX_REFUND_DESC_CHARS, RefundClient, RefundDisposition, RefundQueryKey, RefundRecord,
    RefundRequest, RefundStatus as Wx,
};

/// What every refund actor shares.
pub struct RefundCore {
    pub db: DbPool,
    /// Exists only where the merchant's client certificate is loaded.
    pub wechat: Option<RefundClient>,
    /// Sent as `notify_url` in every refund request.
    pub notify_url: Option<String>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum RefundActorError {
    #[error("no such refund")]
    NotFound,
    #[error("refunds are not configured (no client certificate)")]
    Disabled,
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("refund actor panicked; restarted from the database")]
    Panicked,
    #[error("refund actor unavailable: {0}")]
    Mailbox(#[from] MailboxError),
}

/// Sends the refund to WeChat — the first time, or again with the same out_refund_no and the
/// same amounts — and applies the answer. Replies with the refund as it is afterwards.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<RefundRow, RefundActorError>")]
pub struct Submit;

/// A refund notification, authenticated and decrypted by the HTTP layer.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Settled, RefundActorError>")]
pub struct Notified {
    pub state: WechatRefundState,
    pub refund_fen: i64,
}

/// The poller's question: refundquery, and its answer applied. A refund WeChat has never heard
/// of (the call was lost, or the process died before making it) is submitted again.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<Settled, RefundActorError>")]
pub struct Poll;

/// What became of a result for a refund.
#[derive(Debug)]
pub enum Settled {
    /// The move is committed; the row as it is now.
    Moved(RefundRow),
    /// Nothing written: the row, and the decision that moved nothing (a duplicate, a refusal).
    Unchanged(RefundRow, RefundDecision),
}

impl Settled {
    pub fn row(&self) -> &RefundRow {
        match self {
            Settled::Moved(r) | Settled::Unchanged(r, _) => r,
        }
    }
}

pub type RefundRegistry = Registry<RefundActor>;

/// How long an actor with no message stays alive.
const IDLE: Duration = Duration::from_secs(30);
/// Compare-and-set attempts before an event is given up (it is retried by its sender).
const DECIDE_ATTEMPTS: usize = 5;

/// The registry of refund actors, each made with the shared core.
pub fn refund_registry(core: Arc<RefundCore>) -> RefundRegistry {
    Registry::new(move |refund_no, deregister| RefundActor {
        refund_no: refund_no.to_string(),
        core: core.clone(),
        deregister: Some(deregister),
        last_active: Instant::now(),
    })
}

pub struct RefundActor {
    refund_no: String,
    core: Arc<RefundCore>,
    deregister: Option<Deregister>,
    last_active: Instant,
}

impl RefundActor {
    /// Runs `work` as this actor's one message in flight; a panic inside it is caught and
    /// answered with `Panicked`, as a supervisor's restart would.
    fn supervise<R, W, Fut>(&mut self, work: W) -> AtomicResponse<Self, Result<R, RefundActorError>>
    where
        R: 'static,
        W: FnOnce(Arc<RefundCore>, String) -> Fut,
        Fut: Future<Output = Result<R, RefundActorError>> + 'static,
    {
        self.last_active = Instant::now();
        let span = tracing::info_span!(
            "refund",
            refund_no = %self.refund_no,
            order_no = tracing::field::Empty,
        );
        let work = work(self.core.clone(), self.refund_no.clone()).instrument(span);
        let caught = AssertUnwindSafe(work).catch_unwind();
        AtomicResponse::new(Box::pin(caught.into_actor(self).map(
            |caught, act, _| {
                act.last_active = Instant::now();
                caught.unwrap_or_else(|_| {
                    act.core.metrics.actor_restarts.inc();
                    tracing::error!(refund_no = %act.refund_no, "refund actor panicked; restarting from the database");
                    Err(RefundActorError::Panicked)
                })
            },
        )))
    }
}

impl Actor for RefundActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(IDLE / 3, |act, ctx| {
            if act.last_active.elapsed() >= IDLE {
                ctx.stop();
            }
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Some(deregister) = self.deregister.take() {
            deregister();
        }
        Running::Stop
    }
}

impl Handler<Submit> for RefundActor {
    type Result = AtomicResponse<Self, Result<RefundRow, RefundActorError>>;

    fn handle(&mut self, _: Submit, _: &mut Self::Context) -> Self::Result {
        self.supervise(async move |core, refund_no| {
            let row = load(&core, &refund_no).await?;
            submit(&core, row).await
        })
    }
}

impl Handler<Notified> for RefundActor {
    type Result = AtomicResponse<Self, Result<Settled, RefundActorError>>;

    fn handle(&mut self, msg: Notified, _: &mut Self::Context) -> Self::Result {
        self.supervise(async move |core, refund_no| {
            let row = load(&core, &refund_no).await?;
            let event = RefundEvent::Result {
                state: msg.state,
                refund_fen: msg.refund_fen,
            };
            settle(&core, row, &event).await
        })
    }
}

impl Handler<Poll> for RefundActor {
    type Result = AtomicResponse<Self, Result<Settled, RefundActorError>>;

    fn handle(&mut self, _: Poll, _: &mut Self::Context) -> Self::Result {
        self.supervise(async move |core, refund_no| {
            let row = load(&core, &refund_no).await?;
            let settled = poll(&core, row).await;
            // Whatever happened, the next question comes one interval later.
            refunds::touch(&core.db, &refund_no, None).await?;
            settled
        })
    }
}

async fn load(core: &RefundCore, refund_no: &str) -> Result<RefundRow, RefundActorError> {
    let row = refunds::get(&core.db, refund_no)
        .await?
        .ok_or(RefundActorError::NotFound)?;
    tracing::Span::current().record("order_no", row.order_no.as_str());
    Ok(row)
}

fn facts(row: &RefundRow) -> RefundFacts {
    RefundFacts {
        status: row.status,
        refund_fen: row.refund_fen.0,
    }
}

/// Decides `event` on `row` and applies the decision; when the row moved on meanwhile (a lost
/// compare-and-set), reloads it and decides again.
async fn settle(
    core: &RefundCore,
    mut row: RefundRow,
    event: &RefundEvent,
) -> Result<Settled, RefundActorError> {
    for _ in 0..DECIDE_ATTEMPTS {
        let decision = transition(&facts(&row), event);
        let RefundDecision::Move { to, effect } = &decision else {
            return Ok(Settled::Unchanged(row, decision));
        };
        match refunds::apply(&core.db, &row, *to, effect).await {
            Ok(moved) => {
                record_move(core, &moved, effect);
                return Ok(Settled::Moved(moved));
            }
            Err(StoreError::Conflict) => {
                tracing::info!("refund changed concurrently; reloading");
                row = load(core, &row.refund_no).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict.into())
}

/// `secapi/pay/refund` with the refund's one out_refund_no and its amounts, and the answer
/// applied. A refund no longer processing is not sent (a late or repeated Submit).
async fn submit(core: &RefundCore, row: RefundRow) -> Result<RefundRow, RefundActorError> {
    let client = core.wechat.as_ref().ok_or(RefundActorError::Disabled)?;
    if row.status != RefundStatus::Processing {
        return Ok(row);
    }
    let order = refunds::order(&core.db, &row.order_no)
        .await?
        .ok_or(RefundActorError::NotFound)?;
    let submission = match request(core, &row, &order) {
        Err(e) => Submission::Refused {
            err_code: format!("INVALID_REQUEST: {e}"),
        },
        Ok(req) => match client.refund(&req).await {
            Ok(accepted) => Submission::Accepted {
                refund_id: Some(accepted.refund_id),
            },
            Err(e) => match e.refund_disposition() {
                RefundDisposition::Retry => Submission::Retry {
                    reason: e.to_string(),
                },
                RefundDisposition::Final => Submission::Refused { err_code: e.code() },
            },
        },
    };
    if let Submission::Retry { reason } = &submission {
        core.metrics.refund_event("retry");
        tracing::warn!(reason, "refund call to retry with the same out_refund_no");
    }
    let refund_id = match &submission {
        Submission::Accepted { refund_id } => refund_id.clone(),
        _ => None,
    };
    match settle(core, row, &RefundEvent::Submitted(submission)).await? {
        Settled::Moved(row) => Ok(row),
        Settled::Unchanged(row, _) => {
            // Accepted or to retry: stays processing; the poller's clock starts again.
            refunds::touch(&core.db, &row.refund_no, refund_id.as_deref()).await?;
            Ok(refunds::get(&core.db, &row.refund_no).await?.unwrap_or(row))
        }
    }
}

fn request(
    core: &RefundCore,
    row: &RefundRow,
    order: &refunds::RefundableOrder,
) -> Result<RefundRequest, crate::wechat::refund::InvalidRefund> {
    let desc: String = row.reason.chars().take(MAX_REFUND_DESC_CHARS).collect();
    let mut req = RefundRequest::new(
        &row.order_no,
        &row.refund_no,
        order.amount_fen.0,
        row.refund_fen.0,
    )?
    .refund_desc(&desc)?;
    if let Some(t) = &order.transaction_id {
        req = req.transaction_id(t);
    }
    if let Some(url) = &core.notify_url {
        req = req.notify_url(url)?;
    }
    Ok(req)
}

/// refundquery for one refund, and its answer applied.
async fn poll(core: &RefundCore, row: RefundRow) -> Result<Settled, RefundActorError> {
    let client = core.wechat.as_ref().ok_or(RefundActorError::Disabled)?;
    if row.status != RefundStatus::Processing {
        return Ok(Settled::Unchanged(
            row,
            RefundDecision::Stay(super::state::RefundStay::NoOp),
        ));
    }
    let key = RefundQueryKey::OutRefundNo(row.refund_no.clone());
    match client.pay().refund_query(&key).await {
        Ok(q) => match q.find(&row.refund_no).and_then(result_event) {
            Some(event) => settle(core, row, &event).await,
            None => Ok(Settled::Unchanged(
                row,
                RefundDecision::Stay(super::state::RefundStay::Waiting),
            )),
        },
        Err(WechatError::Business { code, .. }) if code == "REFUNDNOTEXIST" => {
            tracing::warn!("WeChat has no such refund: sending it again");
            let row = submit(core, row).await?;
            Ok(Settled::Unchanged(
                row,
                RefundDecision::Stay(super::state::RefundStay::Waiting),
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "refundquery failed; asking again later");
            Ok(Settled::Unchanged(
                row,
                RefundDecision::Stay(super::state::RefundStay::RetryLater),
            ))
        }
    }
}

/// WeChat's view of one refund (refundquery) as a state-machine event (`None` for a status we
/// do not know).
fn result_event(rec: &RefundRecord) -> Option<RefundEvent> {
    wechat_state(&rec.status, &rec.refund_id, rec.success_time).map(|state| RefundEvent::Result {
        state,
        refund_fen: rec.refund_fee,
    })
}

/// A refund status as WeChat writes it (refundquery, notifications), as the state machine's.
pub fn wechat_state(
    status: &Wx,
    refund_id: &str,
    success_time: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<WechatRefundState> {
    Some(match status {
        Wx::Success => WechatRefundState::Success {
            refund_id: refund_id.to_string(),
            success_at: success_time.map(|t| t.timestamp_millis()),
        },
        Wx::RefundClose => WechatRefundState::Closed,
        Wx::Change => WechatRefundState::Change,
        Wx::Processing => WechatRefundState::Processing,
        Wx::Other(_) => return None,
    })
}

/// The refund metrics and log line of a committed move.
fn record_move(core: &RefundCore, row: &RefundRow, effect: &RefundEffect) {
    core.metrics.refund_event(row.status.as_str());
    match effect {
        RefundEffect::Succeed { .. } => {
            core.metrics
                .refunded_fen
                .inc_by(row.refund_fen.0.max(0) as u64);
            tracing::info!("refund succeeded");
        }
        RefundEffect::MarkAbnormal => {
            tracing::error!(
                "refund abnormal (CHANGE): the money did not reach the payer; settle by hand"
            )
        }
        RefundEffect::Reverse { err_code } => {
            tracing::warn!(status = %row.status, err_code = ?err_code, coins = row.coins.0, "refund not made; coins given back")
        }
    }
}
