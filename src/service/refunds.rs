//! Refunds as the application sees them: an operator's request (checked, then reserved in one
//! transaction by `store::refunds::reserve`, then handed to the refund's actor, which sends it
//! to WeChat over mutual TLS), WeChat's results (refund notifications, handed to the actor) and
//! the poller's questions about refunds left `processing` (also the actor's).
//!
//! Every event about a refund is decided by its actor (`refund::actor`), once, by the pure
//! `refund::state::transition`, and applied by the store with a compare-and-set.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::money::Fen;
use crate::refund::actor::{
    Notified, Poll, RefundActorError, RefundCore, RefundRegistry, Submit, refund_registry,
};
pub use crate::refund::actor::{Settled, wechat_state};
use crate::refund::state::WechatRefundState;
use crate::store::refunds::{self, NewRefund, RefundRow, ReserveRefusal, Reserved};
use crate::store::{DbPool, StoreError, now_ms};
use crate::wechat::client::PayCredentials;
use crate::wechat::refund::RefundClient;

/// Longest `reason` and `request_id` kept (the columns' sizes).
pub const MAX_REASON_CHARS: usize = 255;
pub const MAX_REQUEST_ID: usize = 64;
/// Refunds asked about per poller run.
const POLL_BATCH: i64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("refunds are not configured (no client certificate)")]
    Disabled,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("request_id was already used for another order or amount")]
    RequestIdConflict,
    #[error(transparent)]
    Refused(#[from] ReserveRefusal),
    #[error("no such refund")]
    NotFound,
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error(transparent)]
    Actor(RefundActorError),
}

impl From<RefundActorError> for RefundError {
    fn from(e: RefundActorError) -> Self {
        match e {
            RefundActorError::NotFound => RefundError::NotFound,
            RefundActorError::Disabled => RefundError::Disabled,
            RefundActorError::Storage(e) => RefundError::Storage(e),
            e => RefundError::Actor(e),
        }
    }
}

/// An operator's refund request, as received.
pub struct RefundInput {
    pub refund_fen: i64,
    pub reason: String,
    pub request_id: String,
}

pub struct RefundService {
    db: DbPool,
    registry: RefundRegistry,
    /// The refund client; it exists only where the merchant's client certificate is loaded.
    pay: Option<RefundClient>,
    poll_after_ms: i64,
    metrics: Arc<Metrics>,
}

impl RefundService {
    pub fn new(
        db: DbPool,
        pay: Option<RefundClient>,
        notify_url: Option<String>,
        poll_after_secs: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let registry = refund_registry(Arc::new(RefundCore {
            db: db.clone(),
            wechat: pay.clone(),
            notify_url,
            metrics: metrics.clone(),
        }));
        RefundService {
            db,
            registry,
            pay,
            poll_after_ms: i64::try_from(poll_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.pay.is_some()
    }

    /// The credentials refund notifications are authenticated against.
    pub fn credentials(&self) -> Option<&PayCredentials> {
        self.pay.as_ref().map(|p| p.pay().credentials())
    }

    /// Creates (or, for a known request_id, answers again) a refund of `order_no`. `true` when
    /// this call created it.
    pub async fn create(
        &self,
        order_no: &str,
        input: &RefundInput,
    ) -> Result<(RefundRow, bool), RefundError> {
        let reason = input.reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
            return Err(RefundError::Invalid {
                field: "reason",
                message: format!("must be 1–{MAX_REASON_CHARS} characters"),
            });
        }
        let rid = input.request_id.trim();
        if rid.is_empty() || rid.len() > MAX_REQUEST_ID {
            return Err(RefundError::Invalid {
                field: "request_id",
                message: format!("must be 1–{MAX_REQUEST_ID} characters"),
            });
        }
        if input.refund_fen < 1 {
            return Err(RefundError::Invalid {
                field: "refund_fen",
                message: "must be at least 1 fen".into(),
            });
        }
        if let Some(existing) = refunds::by_request_id(&self.db, rid).await? {
            return replay(existing, order_no, input.refund_fen);
        }
        if !self.enabled() {
            return Err(RefundError::Disabled);
        }
        let refund_no = new_refund_no();
        let new = NewRefund {
            refund_no: &refund_no,
            order_no,
            refund_fen: input.refund_fen,
            reason,
            request_id: rid,
        };
        let row = match refunds::reserve(&self.db, &new).await? {
            Ok(Reserved::Created(row)) => row,
            Ok(Reserved::Existing(row)) => return replay(row, order_no, input.refund_fen),
            Err(ReserveRefusal::Amount(e)) => {
                return Err(RefundError::Invalid {
                    field: "refund_fen",
                    message: e.to_string(),
                });
            }
            Err(refusal) => return Err(refusal.into()),
        };
        self.metrics.refund_event("created");
        tracing::info!(order_no, refund_no = %row.refund_no, refund_fen = row.refund_fen.0, coins = row.coins.0, "refund reserved");
        // The caller always gets the refund_no: a refund whose call could not be made or
        // answered is still processing, and the poller takes it from there.
        let row = match self.registry.send(&row.refund_no, Submit).await {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(refund_no = %row.refund_no, order_no, error = %e, "refund reserved but not sent; the poller sends it");
                refunds::get(&self.db, &row.refund_no).await?.unwrap_or(row)
            }
        };
        Ok((row, true))
    }

    /// A verified refund notification for `refund_no`, decided and applied by its actor.
    pub async fn notified(
        &self,
        refund_no: &str,
        state: WechatRefundState,
        refund_fen: i64,
    ) -> Result<Settled, RefundError> {
        Ok(self
            .registry
            .send(refund_no, Notified { state, refund_fen })
            .await?)
    }

    pub async fn get(&self, refund_no: &str) -> Result<RefundRow, RefundError> {
        refunds::get(&self.db, refund_no)
            .await?
            .ok_or(RefundError::NotFound)
    }

    pub async fn list_for_order(&self, order_no: &str) -> Result<Vec<RefundRow>, RefundError> {
        Ok(refunds::list_for_order(&self.db, order_no).await?)
    }

    /// One poller run: every refund still processing past the interval is asked about by its
    /// actor (refundquery, or the refund sent again when WeChat never heard of it). Stops
    /// between refunds once `cancel` is cancelled.
    pub async fn poll(&self, cancel: &CancellationToken) -> Result<usize, StoreError> {
        if self.pay.is_none() {
            return Ok(0);
        }
        let due = refunds::due(&self.db, now_ms() - self.poll_after_ms, POLL_BATCH).await?;
        let n = due.len();
        for row in due {
            if cancel.is_cancelled() {
                break;
            }
            if let Err(e) = self.registry.send(&row.refund_no, Poll).await {
                tracing::warn!(refund_no = %row.refund_no, order_no = %row.order_no, error = %e, "refund not settled by the poller");
            }
        }
        Ok(n)
    }
}

/// The same request_id again: the first refund, or a conflict when it was for something else.
fn replay(
    existing: RefundRow,
    order_no: &str,
    refund_fen: i64,
) -> Result<(RefundRow, bool), RefundError> {
    if existing.order_no == order_no && existing.refund_fen == Fen(refund_fen) {
        Ok((existing, false))
    } else {
        Err(RefundError::RequestIdConflict)
    }
}

/// `RF` + UTC time to the second + 16 random alphanumerics: 32 characters, within WeChat's
/// out_refund_no alphabet; generated once per refund intent and stored before any call.
pub fn new_refund_no() -> String {
    format!(
        "RF{}{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        &crate::wechat::sign::nonce()[..16]
    )
}
