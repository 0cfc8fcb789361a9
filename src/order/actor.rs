//! One actor per live order. It runs the pure state machine one event at a time (each message
//! is an atomic response, so the next one waits until the previous one's transaction is done),
//! asks WeChat what the rules ask for, and persists each move as a compare-and-set.
//!
//! Each intent is a message of its own with its own reply ([`Notify`] → [`Outcome`],
//! [`Prepare`] → [`Prepared`], [`Check`] → [`Settled`]), so a caller gets exactly what its
//! intent can produce and never a reply it must pick apart.
//!
//! Every event is decided once on the row it is decided on: an order usually meets its
//! notification with no actor alive, and then the store loads the row, takes the decision and
//! applies it in one unit of work; the decision comes back with the row, and the actor carries on
//! from it instead of deciding again. Only a row that changed underneath (a lost compare-and-set)
//! is decided afresh.
//!
//! Supervision: a panic while handling a message is caught; the caller gets
//! `OrderError::Panicked` and the actor restarts by dropping its state, reloading it from the
//! DB on the next message. An actor whose mailbox died is replaced by the registry, which the
//! actor tells that it stops through a callback (it never names the registry).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use tracing::Instrument;

use super::state::{
    Ask, Decision, Effect, Facts, Move, OrderEvent, OrderStatus, Rejection, Stay, Verdict,
    transition,
};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::money::Fen;
use crate::store::orders::{self, Decided, OrderRow};
use crate::store::{DbPool, StoreError};
use crate::wechat::client::{TradeState, UnifiedOrder, WechatClient, WechatError};

/// What every order actor shares.
pub struct OrderCore {
    pub db: DbPool,
    pub wechat: Option<WechatClient>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("order not found")]
    NotFound,
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error(transparent)]
    Wechat(#[from] WechatError),
    #[error("WeChat Pay is not configured")]
    PaymentDisabled,
    #[error("order actor panicked; restarted from the database")]
    Panicked,
    #[error("order actor unavailable: {0}")]
    Mailbox(#[from] MailboxError),
}

impl OrderError {
    /// Whether the row in memory may no longer be the one in the database: then the actor
    /// forgets it and reloads on the next message. A WeChat call that failed changed nothing.
    fn forgets_row(&self) -> bool {
        !matches!(self, OrderError::Wechat(_) | OrderError::PaymentDisabled)
    }
}

/// A verified payment notification.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Outcome, OrderError>")]
pub struct Notify {
    pub transaction_id: String,
    pub total_fee: Fen,
    /// WeChat's `time_end` (epoch ms), the order's `paid_at` when it is credited.
    pub paid_at: Option<i64>,
}

/// Calls unifiedorder and moves the order created → pending (or failed).
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Prepared, OrderError>")]
pub struct Prepare {
    pub openid: String,
    pub client_ip: String,
    /// The row as its creator just stored it, which an actor with no row of its own starts
    /// from instead of loading it (boxed: it is sent along once, and keeps the message small).
    /// A row that is stale by the time it is used costs nothing: every move is a
    /// compare-and-set on its version, and a miss reloads.
    pub created: Option<Box<OrderRow>>,
}

/// The sweeper's look at an overdue order (`may_expire`), or an operator's re-check, which asks
/// WeChat whatever the state and never expires an order that is not yet due.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<Settled, OrderError>")]
pub struct Check {
    pub may_expire: bool,
}

/// Test-only fault injection (COINPAY_FAULT_INJECTION=1): the actor panics while handling it, as
/// it would on a bug, so that tests can watch the restart. Without the setting it does nothing.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<(), OrderError>")]
pub struct InjectPanic;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Moved {
        from: OrderStatus,
        to: OrderStatus,
        late: bool,
    },
    Stayed(Stay),
    Refused(Rejection),
    /// A Check whose WeChat answers did not settle the order within the step limit.
    Unchanged,
}

/// Where an event left the order: the row as it is now and what happened.
#[derive(Clone, Debug)]
pub struct Settled {
    pub row: OrderRow,
    pub outcome: Outcome,
}

/// What a [`Prepare`] came to.
#[derive(Clone, Debug)]
pub enum Prepared {
    /// created → pending; the row holds the prepay_id.
    Pending(OrderRow),
    /// created → failed: WeChat refused the order for good; the row keeps its err_code.
    Refused { row: OrderRow, error: WechatError },
    /// The order had left `created` before (nothing was asked), or moved on meanwhile.
    Unchanged(OrderRow),
}

use crate::registry::Deregister;

pub struct OrderActor {
    order_no: String,
    core: Arc<OrderCore>,
    deregister: Option<Deregister>,
    /// `None` until loaded, and again after a panic (the restart) or a storage error.
    row: Option<OrderRow>,
    last_active: Instant,
    idle: Duration,
    terminal_linger: Duration,
}

impl OrderActor {
    pub fn new(
        order_no: String,
        core: Arc<OrderCore>,
        deregister: Deregister,
        idle: Duration,
        terminal_linger: Duration,
    ) -> Self {
        OrderActor {
            order_no,
            core,
            deregister: Some(deregister),
            row: None,
            last_active: Instant::now(),
            idle,
            terminal_linger,
        }
    }

    /// Runs `work` on the order (its row in memory, if any) as this actor's one message in
    /// flight. `work` returns the row to keep and the reply. A panic inside it is caught: the
    /// caller gets `Panicked` and the actor forgets its row, as a supervisor's restart would.
    fn supervise<R, W, Fut>(&mut self, work: W) -> AtomicResponse<Self, Result<R, OrderError>>
    where
        R: 'static,
        W: FnOnce(Arc<OrderCore>, String, Option<OrderRow>) -> Fut,
        Fut: Future<Output = Result<(Option<OrderRow>, R), OrderError>> + 'static,
    {
        self.last_active = Instant::now();
        let row = self.row.clone();
        let span = tracing::info_span!(
            "order",
            order_no = %self.order_no,
            user_id = row.as_ref().map(|r| r.user_id),
        );
        let work = work(self.core.clone(), self.order_no.clone(), row).instrument(span);
        let caught = AssertUnwindSafe(work).catch_unwind();
        AtomicResponse::new(Box::pin(caught.into_actor(self).map(
            |caught, act, _| {
                act.last_active = Instant::now();
                match caught {
                    Ok(Ok((row, reply))) => {
                        act.row = row;
                        Ok(reply)
                    }
                    Ok(Err(e)) => {
                        if e.forgets_row() {
                            act.row = None;
                        }
                        Err(e)
                    }
                    Err(_) => {
                        act.row = None;
                        act.core.metrics.actor_restarts.inc();
                        tracing::error!(order_no = %act.order_no, "order actor panicked; restarting from the database");
                        Err(OrderError::Panicked)
                    }
                }
            },
        )))
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let tick = self
            .terminal_linger
            .min(self.idle)
            .max(Duration::from_millis(100));
        ctx.run_interval(tick, |act, ctx| {
            let terminal = act.row.as_ref().is_some_and(|r| r.status.is_terminal());
            let limit = if terminal {
                act.terminal_linger
            } else {
                act.idle
            };
            if act.last_active.elapsed() >= limit {
                ctx.stop();
            }
        });
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        // Leave the registry first, so new messages go to a fresh actor.
        if let Some(deregister) = self.deregister.take() {
            deregister();
        }
        Running::Stop
    }
}

impl Handler<Notify> for OrderActor {
    type Result = AtomicResponse<Self, Result<Outcome, OrderError>>;

    fn handle(&mut self, msg: Notify, _: &mut Self::Context) -> Self::Result {
        self.supervise(async move |core, order_no, row| {
            let event = OrderEvent::PaymentConfirmed {
                transaction_id: msg.transaction_id,
                total_fee: msg.total_fee,
                paid_at: msg.paid_at,
            };
            let settled = match row {
                Some(row) => settle(&core, &order_no, row, event).await?,
                None => load_and_settle(&core, &order_no, event).await?,
            };
            Ok((Some(settled.row), settled.outcome))
        })
    }
}

impl Handler<Prepare> for OrderActor {
    type Result = AtomicResponse<Self, Result<Prepared, OrderError>>;

    fn handle(&mut self, msg: Prepare, _: &mut Self::Context) -> Self::Result {
        self.supervise(async move |core, order_no, row| {
            let row = loaded(&core, &order_no, row.or(msg.created.map(|b| *b))).await?;
            if row.status != OrderStatus::Created {
                return Ok((Some(row.clone()), Prepared::Unchanged(row)));
            }
            let (event, refusal) = match prepare(&core, &row, msg.openid, msg.client_ip).await? {
                Ok(prepay_id) => (OrderEvent::PrepayObtained { prepay_id }, None),
                Err(refusal) => {
                    let err_code = refusal.code();
                    (OrderEvent::PrepayFailed { err_code }, Some(refusal))
                }
            };
            let Settled { row, outcome } = settle(&core, &order_no, row, event).await?;
            let prepared = match (outcome, refusal) {
                (
                    Outcome::Moved {
                        to: OrderStatus::Pending,
                        ..
                    },
                    _,
                ) => Prepared::Pending(row.clone()),
                (
                    Outcome::Moved {
                        to: OrderStatus::Failed,
                        ..
                    },
                    Some(error),
                ) => Prepared::Refused {
                    row: row.clone(),
                    error,
                },
                _ => Prepared::Unchanged(row.clone()),
            };
            Ok((Some(row), prepared))
        })
    }
}

impl Handler<Check> for OrderActor {
    type Result = AtomicResponse<Self, Result<Settled, OrderError>>;

    fn handle(&mut self, msg: Check, _: &mut Self::Context) -> Self::Result {
        self.supervise(async move |core, order_no, row| {
            let row = loaded(&core, &order_no, row).await?;
            let event = if msg.may_expire {
                OrderEvent::Timeout
            } else {
                // An operator's re-check asks WeChat whatever the state.
                query(&core, &row, false).await?
            };
            let settled = settle(&core, &order_no, row, event).await?;
            // A notification's anomaly is counted with the notification; this one came from
            // WeChat's orderquery answer, and nobody else sees it.
            if let Outcome::Refused(r) = &settled.outcome
                && let Some(kind) = r.anomaly()
            {
                core.metrics.anomaly(kind);
            }
            Ok((Some(settled.row.clone()), settled))
        })
    }
}

impl Handler<InjectPanic> for OrderActor {
    type Result = AtomicResponse<Self, Result<(), OrderError>>;

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) -> Self::Result {
        self.supervise(async move |core, _, row| {
            if core.settings.fault_injection {
                panic!("injected fault");
            }
            Ok((row, ()))
        })
    }
}

const MAX_STEPS: usize = 8;

/// The row in memory, or the one in the database for an actor that has none.
async fn loaded(
    core: &OrderCore,
    order_no: &str,
    row: Option<OrderRow>,
) -> Result<OrderRow, OrderError> {
    match row {
        Some(row) => Ok(row),
        None => reload(core, order_no).await,
    }
}

async fn reload(core: &OrderCore, order_no: &str) -> Result<OrderRow, OrderError> {
    let row = orders::get(&core.db, order_no)
        .await?
        .ok_or(OrderError::NotFound)?;
    tracing::Span::current().record("user_id", row.user_id);
    Ok(row)
}

fn facts(row: &OrderRow) -> Facts<'_> {
    Facts {
        status: row.status,
        amount_fen: row.amount_fen,
        transaction_id: row.transaction_id.as_deref(),
    }
}

/// Decides `event` on `row` and runs the decision to its end.
async fn settle(
    core: &OrderCore,
    order_no: &str,
    row: OrderRow,
    event: OrderEvent,
) -> Result<Settled, OrderError> {
    let decision = transition(&facts(&row), &event);
    carry_out(core, order_no, row, decision, event).await
}

/// A notification for an order with no actor alive: the store loads the row, takes the
/// decision on it and, when it is a move, applies it in the same unit of work (one checkout,
/// one writer turn). The decision comes back with its row and is carried on from there.
async fn load_and_settle(
    core: &OrderCore,
    order_no: &str,
    event: OrderEvent,
) -> Result<Settled, OrderError> {
    let decide = {
        let event = event.clone();
        move |row: &OrderRow| transition(&facts(row), &event)
    };
    let decided = orders::load_and_apply(&core.db, order_no, decide)
        .await?
        .ok_or(OrderError::NotFound)?;
    match decided {
        Decided::Written { from, step, row } => {
            tracing::Span::current().record("user_id", row.user_id);
            Ok(moved(core, from, step, row))
        }
        Decided::Unwritten { row, decision } => {
            tracing::Span::current().record("user_id", row.user_id);
            carry_out(core, order_no, row, decision, event).await
        }
        // Moved on meanwhile: the decision no longer holds; take it again on a fresh row.
        Decided::Lost => {
            let row = reload(core, order_no).await?;
            settle(core, order_no, row, event).await
        }
    }
}

/// Runs `decision`, taken on `row` for `event`, to its end: a move is applied (and, when the row
/// changed underneath, the event is decided again on the fresh row); an ask calls WeChat, whose
/// answer is the next event.
async fn carry_out(
    core: &OrderCore,
    order_no: &str,
    mut row: OrderRow,
    mut decision: Decision,
    mut event: OrderEvent,
) -> Result<Settled, OrderError> {
    for _ in 0..MAX_STEPS {
        match decision {
            Decision::Move(step) => {
                match orders::apply(&core.db, &row, step.to, &step.effect).await {
                    Ok(next) => return Ok(moved(core, row.status, step, next)),
                    Err(StoreError::Conflict) => {
                        // Another instance moved first: reload and decide again.
                        tracing::info!("order changed concurrently; reloading");
                        row = reload(core, order_no).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Decision::Stay(stay) => {
                return Ok(Settled {
                    row,
                    outcome: Outcome::Stayed(stay),
                });
            }
            Decision::Refuse(rejection) => {
                log_refusal(&rejection);
                return Ok(Settled {
                    row,
                    outcome: Outcome::Refused(rejection),
                });
            }
            Decision::Ask(Ask::OrderQuery) => event = query(core, &row, true).await?,
            Decision::Ask(Ask::CloseOrder) => event = close(core, &row).await?,
        }
        decision = transition(&facts(&row), &event);
    }
    tracing::error!("order did not settle within {MAX_STEPS} steps");
    Ok(Settled {
        row,
        outcome: Outcome::Unchanged,
    })
}

/// A committed move: counted, logged, and reported with the row as it is now.
fn moved(core: &OrderCore, from: OrderStatus, step: Move, row: OrderRow) -> Settled {
    record_move(core, &row, &step);
    Settled {
        outcome: Outcome::Moved {
            from,
            to: step.to,
            late: step.late,
        },
        row,
    }
}

fn wechat(core: &OrderCore) -> Result<&WechatClient, OrderError> {
    core.wechat.as_ref().ok_or(OrderError::PaymentDisabled)
}

/// unifiedorder: Ok(Ok(prepay_id)), Ok(Err(final refusal)), or Err for what may pass.
async fn prepare(
    core: &OrderCore,
    row: &OrderRow,
    openid: String,
    client_ip: String,
) -> Result<Result<String, WechatError>, OrderError> {
    let client = wechat(core)?;
    let req = UnifiedOrder {
        out_trade_no: row.order_no.clone(),
        body: core.settings.wechat.order_body.clone(),
        total_fee: row.amount_fen.0,
        spbill_create_ip: client_ip,
        openid,
        time_start: ms_to_utc(row.created_at),
        time_expire: ms_to_utc(row.expires_at),
        attach: None,
    };
    match client.unified_order(&req).await {
        Ok(prepay_id) => Ok(Ok(prepay_id)),
        Err(e) if e.is_final() => {
            tracing::warn!(err_code = %e.code(), "unifiedorder refused");
            Ok(Err(e))
        }
        // Not final (timeouts, SYSTEMERROR after retries): the order stays created and the
        // sweeper expires it.
        Err(e) => Err(e.into()),
    }
}

fn ms_to_utc(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_else(chrono::Utc::now)
}

/// orderquery, reduced to a verdict.
async fn query(
    core: &OrderCore,
    row: &OrderRow,
    may_expire: bool,
) -> Result<OrderEvent, OrderError> {
    let q = wechat(core)?.order_query(&row.order_no).await;
    let verdict = match q {
        Ok(q) => match (&q.trade_state, q.transaction_id, q.total_fee) {
            (TradeState::Success | TradeState::Refund, Some(transaction_id), Some(total_fee)) => {
                Verdict::Paid {
                    transaction_id,
                    total_fee: Fen(total_fee),
                    paid_at: q
                        .time_end
                        .as_deref()
                        .and_then(crate::wechat::parse_beijing_compact_ms),
                }
            }
            (TradeState::UserPaying | TradeState::Accept, _, _) => Verdict::UserPaying,
            (
                TradeState::NotPay
                | TradeState::Closed
                | TradeState::Revoked
                | TradeState::PayError,
                _,
                _,
            ) => Verdict::NotPaid,
            (state, _, _) => {
                tracing::warn!(trade_state = ?state, "orderquery answer not understood; leaving the order");
                Verdict::UserPaying
            }
        },
        // Never created at WeChat (unifiedorder did not go through): nothing can be paid.
        Err(WechatError::Business { code, .. }) if code == "ORDERNOTEXIST" => Verdict::NotPaid,
        Err(e) => return Err(e.into()),
    };
    Ok(OrderEvent::Queried {
        verdict,
        may_expire,
    })
}

/// closeorder; ORDERPAID turns into a fresh query (and then a credit).
async fn close(core: &OrderCore, row: &OrderRow) -> Result<OrderEvent, OrderError> {
    match wechat(core)?.close_order(&row.order_no).await {
        Ok(()) => Ok(OrderEvent::Closed),
        Err(WechatError::Business { code, .. }) if code == "ORDERPAID" => {
            tracing::info!("closeorder says ORDERPAID; querying");
            query(core, row, true).await
        }
        Err(WechatError::Business { code, .. }) if code == "ORDERNOTEXIST" => {
            Ok(OrderEvent::Closed)
        }
        Err(e) => Err(e.into()),
    }
}

/// The order metrics and log line of a committed move. Whoever caused the move (a notification,
/// the sweeper, an operator) counts its own event; these count what happened to the order.
fn record_move(core: &OrderCore, row: &OrderRow, step: &Move) {
    let m = &core.metrics;
    match (step.to, &step.effect) {
        (OrderStatus::Paid, Effect::Credit { transaction_id, .. }) => {
            m.order_event("paid");
            m.coins_credited.inc_by(row.credit().0.max(0) as u64);
            m.fen_received.inc_by(row.amount_fen.0.max(0) as u64);
            if step.late {
                m.late_payments.inc();
                tracing::warn!(transaction_id = %transaction_id, user_id = row.user_id, "late payment credited");
            } else {
                tracing::info!(transaction_id = %transaction_id, user_id = row.user_id, coins = row.credit().0, "order paid and credited");
            }
        }
        (OrderStatus::Expired, _) => {
            m.order_event("expired");
            tracing::info!("order expired");
        }
        (OrderStatus::Failed, _) => {
            m.order_event("failed");
        }
        (OrderStatus::Pending, _) => tracing::info!("prepay obtained"),
        _ => {}
    }
}

fn log_refusal(r: &Rejection) {
    match r {
        Rejection::AmountMismatch { .. } => tracing::warn!(reason = %r, "payment refused"),
        Rejection::DoublePayment { .. } => {
            tracing::error!(reason = %r, "double payment: refund by hand")
        }
        Rejection::InvalidTransition { .. } => tracing::warn!(reason = %r, "event refused"),
    }
}
