//! Notification delivery with WeChat's retry schedule (§4.5), scaled by `time_scale`. Refund
//! notifications use the same schedule (wechatpay-next.md §3.1) with counters of their own.

use std::time::Duration;

use super::Sandbox;
use super::state::State;
use crate::wechat::client::http_client;
use crate::wechat::xml::{self, MAX_BODY};

/// Current schedule: 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h (24 h 4 min).
pub const RETRY_SCHEDULE_SECS: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
];

/// WeChat waits 5 s for a reply.
const REPLY_DEADLINE_SECS: f64 = 5.0;
/// Floor for the scaled deadline: 5 ms (at 0.001) would fail any real handler.
const MIN_REPLY_DEADLINE: Duration = Duration::from_secs(1);

/// What a chain of deliveries is about: its attempts, acknowledgement and drop faults are
/// counted there.
#[derive(Clone, Debug)]
pub(super) enum Subject {
    /// A payment notification for this out_trade_no.
    Order(String),
    /// A refund notification for this out_refund_no.
    Refund(String),
}

impl Subject {
    fn pending<'a>(&self, st: &'a mut State) -> &'a mut u64 {
        match self {
            Subject::Order(_) => &mut st.pending_chains,
            Subject::Refund(_) => &mut st.refunds.pending_chains,
        }
    }

    /// Counts an attempt; true when a drop fault swallows it.
    fn attempt(&self, st: &mut State) -> bool {
        match self {
            Subject::Order(no) => {
                st.attempts += 1;
                if let Some(o) = st.orders.get_mut(no) {
                    o.notify_attempts += 1;
                }
                take_one(&mut st.faults.drop_notifications)
            }
            Subject::Refund(no) => st.refunds.on_attempt(no),
        }
    }

    fn acknowledged(&self, st: &mut State) {
        match self {
            Subject::Order(no) => {
                st.acknowledged += 1;
                if let Some(o) = st.orders.get_mut(no) {
                    o.acknowledged = true;
                }
            }
            Subject::Refund(no) => st.refunds.on_acknowledged(no),
        }
    }
}

impl Subject {
    /// Log fields: `out_trade_no` for payments (tests read it), `out_refund_no` for refunds.
    fn order(&self) -> Option<&str> {
        match self {
            Subject::Order(no) => Some(no),
            Subject::Refund(_) => None,
        }
    }

    fn refund(&self) -> Option<&str> {
        match self {
            Subject::Refund(no) => Some(no),
            Subject::Order(_) => None,
        }
    }
}

/// Decrements a fault counter; true when it was set.
pub(super) fn take_one(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

/// Keeps the pending-chain counter right even when the task is dropped at server shutdown.
struct ChainGuard(Sandbox, Subject);

impl Drop for ChainGuard {
    fn drop(&mut self) {
        let mut st = self.0.state();
        let pending = self.1.pending(&mut st);
        *pending = pending.saturating_sub(1);
    }
}

pub(super) fn spawn_chain(
    sb: Sandbox,
    subject: Subject,
    url: String,
    xml: String,
    first_delay: Duration,
) {
    *subject.pending(&mut sb.state()) += 1;
    let guard = ChainGuard(sb.clone(), subject.clone());

    actix_rt::spawn(async move {
        let _guard = guard;
        let scale = sb.config().scale();
        if !first_delay.is_zero() {
            actix_rt::time::sleep(first_delay).await;
        }
        let deadline = Duration::from_secs_f64(REPLY_DEADLINE_SECS * scale).max(MIN_REPLY_DEADLINE);
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            if deliver_once(&sb, &subject, &url, &xml, deadline, attempt).await {
                return;
            }
            let Some(wait) = RETRY_SCHEDULE_SECS.get(attempt - 1) else {
                tracing::warn!(
                    out_trade_no = subject.order(),
                    out_refund_no = subject.refund(),
                    attempt,
                    "sandbox gave up notifying"
                );
                return;
            };
            actix_rt::time::sleep(Duration::from_secs_f64(*wait as f64 * scale)).await;
        }
    });
}

/// One delivery; true when the receiver answered 200 with `return_code` SUCCESS in time.
async fn deliver_once(
    sb: &Sandbox,
    subject: &Subject,
    url: &str,
    xml_body: &str,
    deadline: Duration,
    attempt: usize,
) -> bool {
    let dropped = subject.attempt(&mut sb.state());
    if dropped {
        tracing::info!(
            out_trade_no = subject.order(),
            out_refund_no = subject.refund(),
            attempt,
            "sandbox notification dropped (fault)"
        );
        return false;
    }
    let exchange = async {
        let mut resp = http_client()
            .post(url)
            .insert_header(("Content-Type", "text/xml"))
            .timeout(deadline)
            .send_body(xml_body.to_owned())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .body()
            .limit(MAX_BODY)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((status, body))
    };
    let acked = match tokio::time::timeout(deadline, exchange).await {
        Err(_) => {
            tracing::info!(
                out_trade_no = subject.order(),
                out_refund_no = subject.refund(),
                attempt,
                "sandbox notification: reply too slow"
            );
            false
        }
        Ok(Err(e)) => {
            tracing::info!(out_trade_no = subject.order(), out_refund_no = subject.refund(), attempt, error = %e, "sandbox notification: send failed");
            false
        }
        Ok(Ok((status, body))) => {
            let success = status == actix_web::http::StatusCode::OK
                && xml::decode(&body)
                    .is_ok_and(|p| p.get("return_code").map(String::as_str) == Some("SUCCESS"));
            tracing::info!(out_trade_no = subject.order(), out_refund_no = subject.refund(), attempt, %status, success, "sandbox notification delivered");
            success
        }
    };
    if acked {
        subject.acknowledged(&mut sb.state());
    }
    acked
}
