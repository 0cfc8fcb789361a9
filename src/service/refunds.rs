//! Refunds as the application sees them: an operator's request (checked, then reserved in one
//! transaction by `store::refunds::reserve`, then sent to WeChat over mutual TLS), WeChat's
//! results (refund notifications and refundquery) and the poller that asks about refunds left
//! `processing`.
//!
//! Every event about a refund goes through [`RefundService::decide`]: the pure
//! `refund::state::transition` decides once on the row as read, and the store applies the
//! decision with a compare-and-set on the row's version; a concurrent decider that lost the
//! race reloads and decides again (then usually sees a duplicate). That gives the exactly-once
//! of the order actors without a mailbox: a refund has few events, all of them idempotent.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::money::Fen;
use crate::refund::state::{
    RefundDecision, RefundEffect, RefundEvent, RefundFacts, RefundStatus, Submission,
    WechatRefundState, transition,
};
use crate::store::refunds::{self, NewRefund, RefundRow, ReserveRefusal, Reserved};
use crate::store::{DbPool, StoreError, now_ms};
use crate::wechat::client::{PayCredentials, WechatError};
use crate::wechat::refund::{
    MAX_REFUND_DESC_CHARS, RefundClient, RefundDisposition, RefundQueryKey, RefundRequest,
    RefundStatus as Wx,
};

/// Longest `reason` and `request_id` kept (the columns' sizes).
pub const MAX_REASON_CHARS: usize = 255;
pub const MAX_REQUEST_ID: usize = 64;
/// Compare-and-set attempts before an event is given up (it is retried by its sender).
const DECIDE_ATTEMPTS: usize = 5;
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
}

/// An operator's refund request, as received.
pub struct RefundInput {
    pub refund_fen: i64,
    pub reason: String,
    pub request_id: String,
}

/// What became of a result (notification or refundquery) for a refund.
#[derive(Debug)]
pub enum Settled {
    Moved(RefundRow),
    Unchanged(RefundRow, RefundDecision),
}

pub struct RefundService {
    db: DbPool,
    /// The refund client; it exists only where the merchant's client certificate is loaded.
    pay: Option<RefundClient>,
    notify_url: Option<String>,
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
        RefundService {
            db,
            pay,
            notify_url,
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
        let row = self.submit(row).await?;
        Ok((row, true))
    }

    /// Sends the refund to WeChat (again, with the same out_refund_no and amounts) and applies
    /// the answer.
    pub async fn submit(&self, row: RefundRow) -> Result<RefundRow, RefundError> {
        let Some(pay) = &self.pay else {
            return Ok(row);
        };
        let Some(order) = refunds::order(&self.db, &row.order_no).await? else {
            return Ok(row);
        };
        let submission = match self.request(&row, &order) {
            Err(e) => Submission::Refused {
                err_code: format!("INVALID_REQUEST: {e}"),
            },
            Ok(req) => match pay.refund(&req).await {
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
        let refund_id = match &submission {
            Submission::Accepted { refund_id } => refund_id.clone(),
            _ => None,
        };
        if let Submission::Retry { reason } = &submission {
            self.metrics.refund_event("retry");
            tracing::warn!(refund_no = %row.refund_no, order_no = %row.order_no, reason, "refund call to retry with the same out_refund_no");
        }
        let settled = self
            .decide(&row.refund_no, &RefundEvent::Submitted(submission))
            .await?;
        let row = match settled {
            Settled::Moved(r) => r,
            Settled::Unchanged(r, _) => {
                refunds::touch(&self.db, &r.refund_no, refund_id.as_deref()).await?;
                r
            }
        };
        Ok(refunds::get(&self.db, &row.refund_no).await?.unwrap_or(row))
    }

    fn request(
        &self,
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
        if let Some(url) = &self.notify_url {
            req = req.notify_url(url)?;
        }
        Ok(req)
    }

    /// Decides `event` on the refund as stored and applies the decision; reloads and decides
    /// again when another decider moved the row first.
    pub async fn decide(
        &self,
        refund_no: &str,
        event: &RefundEvent,
    ) -> Result<Settled, RefundError> {
        for _ in 0..DECIDE_ATTEMPTS {
            let row = refunds::get(&self.db, refund_no)
                .await?
                .ok_or(RefundError::NotFound)?;
            let facts = RefundFacts {
                status: row.status,
                refund_fen: row.refund_fen.0,
            };
            let decision = transition(&facts, event);
            let RefundDecision::Move { to, effect } = &decision else {
                return Ok(Settled::Unchanged(row, decision));
            };
            match refunds::apply(&self.db, &row, *to, effect).await {
                Ok(moved) => {
                    self.record_move(&moved, *to, effect);
                    return Ok(Settled::Moved(moved));
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }

    fn record_move(&self, row: &RefundRow, to: RefundStatus, effect: &RefundEffect) {
        self.metrics.refund_event(to.as_str());
        if to == RefundStatus::Succeeded {
            self.metrics
                .refunded_fen
                .inc_by(row.refund_fen.0.max(0) as u64);
        }
        match effect {
            RefundEffect::MarkAbnormal => {
                tracing::error!(refund_no = %row.refund_no, order_no = %row.order_no, "refund abnormal (CHANGE): the money did not reach the payer; settle by hand")
            }
            RefundEffect::Reverse { err_code } => {
                tracing::warn!(refund_no = %row.refund_no, order_no = %row.order_no, status = %to, err_code = ?err_code, coins = row.coins.0, "refund not made; coins given back")
            }
            RefundEffect::Succeed { .. } => {
                tracing::info!(refund_no = %row.refund_no, order_no = %row.order_no, "refund succeeded")
            }
        }
    }

    pub async fn get(&self, refund_no: &str) -> Result<RefundRow, RefundError> {
        refunds::get(&self.db, refund_no)
            .await?
            .ok_or(RefundError::NotFound)
    }

    pub async fn list_for_order(&self, order_no: &str) -> Result<Vec<RefundRow>, RefundError> {
        Ok(refunds::list_for_order(&self.db, order_no).await?)
    }

    /// One poller run: every refund still processing past the interval is asked about with
    /// refundquery and settled by the answer; one WeChat has never heard of (the call was
    /// lost, or we crashed before making it) is sent again with the same out_refund_no.
    pub async fn poll(&self, cancel: &CancellationToken) -> Result<usize, StoreError> {
        let Some(pay) = &self.pay else {
            return Ok(0);
        };
        let due = refunds::due(&self.db, now_ms() - self.poll_after_ms, POLL_BATCH).await?;
        let n = due.len();
        for row in due {
            if cancel.is_cancelled() {
                break;
            }
            let key = RefundQueryKey::OutRefundNo(row.refund_no.clone());
            let result = match pay.pay().refund_query(&key).await {
                Ok(q) => match q.find(&row.refund_no).and_then(result_event) {
                    Some(ev) => self.decide(&row.refund_no, &ev).await.map(|_| ()),
                    None => Ok(()),
                },
                Err(WechatError::Business { code, .. }) if code == "REFUNDNOTEXIST" => {
                    tracing::warn!(refund_no = %row.refund_no, order_no = %row.order_no, "WeChat has no such refund: sending it again");
                    self.submit(row.clone()).await.map(|_| ())
                }
                Err(e) => {
                    tracing::warn!(refund_no = %row.refund_no, error = %e, "refundquery failed; asking again later");
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::warn!(refund_no = %row.refund_no, error = %e, "refund not settled by the poller");
            }
            // Whatever happened, the next question comes one interval later.
            refunds::touch(&self.db, &row.refund_no, None).await?;
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

/// WeChat's view of one refund as a state-machine event (`None` for a status we do not know).
pub fn result_event(rec: &crate::wechat::refund::RefundRecord) -> Option<RefundEvent> {
    wechat_state(&rec.status, &rec.refund_id, rec.success_time).map(|state| RefundEvent::Result {
        state,
        refund_fen: rec.refund_fee,
    })
}

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

/// `RF` + UTC time to the second + 16 random alphanumerics: 32 characters, within WeChat's
/// out_refund_no alphabet; generated once per refund intent and stored before any call.
pub fn new_refund_no() -> String {
    format!(
        "RF{}{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        &crate::wechat::sign::nonce()[..16]
    )
}
