//! One actor per live order. It runs the pure state machine, one event at a time (an atomic
//! response: the next message waits until the previous one's DB transaction is done), asks
//! WeChat what the rules ask for, and persists each move as a compare-and-set.
//!
//! Supervision: a panic while handling a message is caught; the caller gets
//! `OrderError::Panicked` and the actor restarts by dropping its state, reloading it from the
//! DB on the next message. An actor whose mailbox died is replaced by the registry.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use tracing::Instrument;

use super::registry::RegistryInner;
use super::state::{
    Ask, Decision, Effect, Facts, OrderEvent, OrderStatus, Rejection, Stay, Verdict, transition,
};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::orders::{self, Moved, OrderRow};
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

/// What the caller asks the order to do.
#[derive(Clone, Debug)]
pub enum Command {
    /// Call unifiedorder and move created → pending (or failed).
    Prepare {
        openid: String,
        client_ip: String,
    },
    /// A verified payment notification.
    Notify {
        transaction_id: String,
        total_fee: i64,
    },
    /// The sweeper (may_expire) or an operator's re-check (not yet due: never expires).
    Check {
        may_expire: bool,
    },
    Get,
}

#[derive(Message, Debug)]
#[rtype(result = "Result<OrderReply, OrderError>")]
pub struct Handle {
    pub cmd: Command,
    /// Test-only fault injection (COINPAY_FAULT_INJECTION=1): panic inside the handler.
    pub inject_panic: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Moved {
        from: OrderStatus,
        to: OrderStatus,
        late: bool,
    },
    Stayed(Stay),
    Refused(Rejection),
    /// Get, or a Check whose WeChat call failed (left for the next run).
    Unchanged,
}

#[derive(Clone, Debug)]
pub struct OrderReply {
    pub row: OrderRow,
    pub outcome: Outcome,
}

pub struct OrderActor {
    order_no: String,
    generation: u64,
    core: Arc<OrderCore>,
    registry: Weak<RegistryInner>,
    /// `None` until loaded, and again after a panic (the restart).
    row: Option<OrderRow>,
    last_active: Instant,
    idle: Duration,
    terminal_linger: Duration,
}

impl OrderActor {
    pub fn new(
        order_no: String,
        generation: u64,
        core: Arc<OrderCore>,
        registry: Weak<RegistryInner>,
        idle: Duration,
        terminal_linger: Duration,
    ) -> Self {
        OrderActor {
            order_no,
            generation,
            core,
            registry,
            row: None,
            last_active: Instant::now(),
            idle,
            terminal_linger,
        }
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
            let terminal = act.row.as_ref().is_some_and(|r| r.status().is_terminal());
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
        if let Some(reg) = self.registry.upgrade() {
            reg.remove(&self.order_no, self.generation);
        }
        Running::Stop
    }
}

impl Handler<Handle> for OrderActor {
    type Result = AtomicResponse<Self, Result<OrderReply, OrderError>>;

    fn handle(&mut self, msg: Handle, _: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let core = self.core.clone();
        let order_no = self.order_no.clone();
        let row = self.row.clone();
        let inject = msg.inject_panic && core.settings.fault_injection;
        let span = tracing::info_span!(
            "order",
            order_no = %order_no,
            user_id = row.as_ref().map(|r| r.user_id),
        );
        let work = async move {
            if inject {
                panic!("injected fault");
            }
            process(&core, &order_no, row, msg.cmd).await
        }
        .instrument(span);
        let fut = AssertUnwindSafe(work).catch_unwind();
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(
            |caught, act, _| {
                act.last_active = Instant::now();
                match caught {
                    Ok((row, result)) => {
                        act.row = row;
                        result
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

const MAX_STEPS: usize = 8;

/// Runs one command to its end. Returns the state to keep (None: reload next time) and the
/// reply.
async fn process(
    core: &OrderCore,
    order_no: &str,
    row: Option<OrderRow>,
    cmd: Command,
) -> (Option<OrderRow>, Result<OrderReply, OrderError>) {
    let mut row = match row {
        Some(r) => r,
        None => match load(core, order_no, &cmd).await {
            Ok(Loaded::Row(row)) => {
                tracing::Span::current().record("user_id", row.user_id);
                row
            }
            // Settled in the same unit of work as the load.
            Ok(Loaded::Settled(reply)) => {
                tracing::Span::current().record("user_id", reply.row.user_id);
                return (Some(reply.row.clone()), Ok(reply));
            }
            Err(e) => return (None, Err(e)),
        },
    };
    // The WeChat error that settled a failed prepay, handed back after the move is stored.
    let mut prepay_error: Option<WechatError> = None;
    let mut event = match cmd {
        Command::Get => {
            let reply = OrderReply {
                row: row.clone(),
                outcome: Outcome::Unchanged,
            };
            return (Some(row), Ok(reply));
        }
        Command::Prepare { openid, client_ip } => {
            if row.status() != OrderStatus::Created {
                return refuse_prepare(row);
            }
            match prepare(core, &row, openid, client_ip).await {
                Ok(Ok(prepay_id)) => OrderEvent::PrepayObtained { prepay_id },
                Ok(Err(refusal)) => {
                    let err_code = refusal.code();
                    prepay_error = Some(refusal);
                    OrderEvent::PrepayFailed { err_code }
                }
                Err(e) => return (Some(row), Err(e)),
            }
        }
        Command::Notify {
            transaction_id,
            total_fee,
        } => OrderEvent::PaymentConfirmed {
            transaction_id,
            total_fee,
        },
        Command::Check { may_expire } => {
            if may_expire {
                OrderEvent::Timeout
            } else {
                // An operator's re-check asks WeChat whatever the state.
                match query(core, &row, false).await {
                    Ok(ev) => ev,
                    Err(e) => return (Some(row), Err(e)),
                }
            }
        }
    };
    for _ in 0..MAX_STEPS {
        let decision = transition(&facts(&row), &event);
        match decision {
            Decision::Move { to, effect, late } => {
                let from = row.status();
                match orders::apply(&core.db, &row, to, &effect).await {
                    Ok(next) => {
                        record_move(core, &next, to, &effect, late);
                        let reply = OrderReply {
                            row: next.clone(),
                            outcome: Outcome::Moved { from, to, late },
                        };
                        let result = match prepay_error.take() {
                            Some(e) => Err(OrderError::Wechat(e)),
                            None => Ok(reply),
                        };
                        return (Some(next), result);
                    }
                    Err(StoreError::Conflict) => {
                        // Another instance moved first: reload and decide again.
                        tracing::info!("order changed concurrently; reloading");
                        match orders::get(&core.db, order_no).await {
                            Ok(Some(r)) => row = r,
                            Ok(None) => return (None, Err(OrderError::NotFound)),
                            Err(e) => return (None, Err(e.into())),
                        }
                    }
                    // The state in memory may be stale: reload next time.
                    Err(e) => return (None, Err(e.into())),
                }
            }
            Decision::Stay(stay) => {
                let reply = OrderReply {
                    row: row.clone(),
                    outcome: Outcome::Stayed(stay),
                };
                return (Some(row), Ok(reply));
            }
            Decision::Refuse(rejection) => {
                record_refusal(core, &rejection);
                let reply = OrderReply {
                    row: row.clone(),
                    outcome: Outcome::Refused(rejection),
                };
                return (Some(row), Ok(reply));
            }
            Decision::Ask(Ask::OrderQuery) => match query(core, &row, true).await {
                Ok(ev) => event = ev,
                Err(e) => return (Some(row), Err(e)),
            },
            Decision::Ask(Ask::CloseOrder) => match close(core, &row).await {
                Ok(ev) => event = ev,
                Err(e) => return (Some(row), Err(e)),
            },
        }
    }
    tracing::error!("order did not settle within {MAX_STEPS} steps");
    let reply = OrderReply {
        row: row.clone(),
        outcome: Outcome::Unchanged,
    };
    (Some(row), Ok(reply))
}

/// What [`load`] found: the row to decide on, or the order already settled by the command.
enum Loaded {
    Row(OrderRow),
    Settled(OrderReply),
}

fn facts(row: &OrderRow) -> Facts<'_> {
    Facts {
        status: row.status(),
        amount_fen: row.amount_fen,
        transaction_id: row.transaction_id.as_deref(),
    }
}

/// Loads the order for an actor that has none in memory. A payment notification is decided
/// and, when it moves the order, applied in the same unit of work as the load (one checkout,
/// one writer turn): an order usually meets its notification with no actor alive.
async fn load(core: &OrderCore, order_no: &str, cmd: &Command) -> Result<Loaded, OrderError> {
    let Command::Notify {
        transaction_id,
        total_fee,
    } = cmd
    else {
        return reload(core, order_no).await;
    };
    let event = OrderEvent::PaymentConfirmed {
        transaction_id: transaction_id.clone(),
        total_fee: *total_fee,
    };
    let plan = move |row: &OrderRow| {
        let decision = transition(&facts(row), &event);
        let step = match &decision {
            Decision::Move { to, effect, .. } => Some((*to, effect.clone())),
            _ => None,
        };
        (decision, step)
    };
    let loaded = orders::load_and_apply(&core.db, order_no, plan)
        .await?
        .ok_or(OrderError::NotFound)?;
    match (loaded.moved, loaded.decided) {
        (Moved::NotPlanned, _) => Ok(Loaded::Row(loaded.row)),
        (Moved::Made(next), Decision::Move { to, effect, late }) => {
            record_move(core, &next, to, &effect, late);
            let from = loaded.row.status();
            Ok(Loaded::Settled(OrderReply {
                row: *next,
                outcome: Outcome::Moved { from, to, late },
            }))
        }
        // Moved on meanwhile (or, impossibly, made without a Move): decide again on a fresh row.
        (Moved::Lost | Moved::Made(_), _) => reload(core, order_no).await,
    }
}

async fn reload(core: &OrderCore, order_no: &str) -> Result<Loaded, OrderError> {
    let row = orders::get(&core.db, order_no)
        .await?
        .ok_or(OrderError::NotFound)?;
    Ok(Loaded::Row(row))
}

fn refuse_prepare(row: OrderRow) -> (Option<OrderRow>, Result<OrderReply, OrderError>) {
    let from = row.status();
    let reply = OrderReply {
        row: row.clone(),
        outcome: Outcome::Refused(Rejection::InvalidTransition {
            from,
            event: "PrepayObtained",
        }),
    };
    (Some(row), Ok(reply))
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
        total_fee: row.amount_fen,
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
                    total_fee,
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

fn record_move(core: &OrderCore, row: &OrderRow, to: OrderStatus, effect: &Effect, late: bool) {
    let m = &core.metrics;
    match (to, effect) {
        (OrderStatus::Paid, Effect::Credit { transaction_id }) => {
            m.order_event("paid");
            m.coins_credited.inc_by(row.credit().max(0) as u64);
            m.fen_received.inc_by(row.amount_fen.max(0) as u64);
            if late {
                m.late_payments.inc();
                tracing::warn!(transaction_id = %transaction_id, user_id = row.user_id, "late payment credited");
            } else {
                tracing::info!(transaction_id = %transaction_id, user_id = row.user_id, coins = row.credit(), "order paid and credited");
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

fn record_refusal(core: &OrderCore, r: &Rejection) {
    match r {
        Rejection::AmountMismatch { .. } => {
            core.metrics.anomaly("amount_mismatch");
            tracing::warn!(reason = %r, "payment refused");
        }
        Rejection::DoublePayment { .. } => {
            core.metrics.anomaly("double_payment");
            tracing::error!(reason = %r, "double payment: refund by hand");
        }
        Rejection::InvalidTransition { .. } => tracing::warn!(reason = %r, "event refused"),
    }
}
