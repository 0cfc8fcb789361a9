//! Notification delivery with WeChat's retry schedule (§4.5), scaled by `time_scale`.

use std::time::Duration;

use super::Sandbox;
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

/// Keeps `pending_chains` right even when the task is dropped at server shutdown.
struct ChainGuard(Sandbox);

impl Drop for ChainGuard {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.pending_chains = st.pending_chains.saturating_sub(1);
    }
}

pub(super) fn spawn_chain(
    sb: Sandbox,
    out_trade_no: String,
    url: String,
    xml: String,
    first_delay: Duration,
) {
    sb.state().pending_chains += 1;
    let guard = ChainGuard(sb.clone());
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
            if deliver_once(&sb, &out_trade_no, &url, &xml, deadline, attempt).await {
                return;
            }
            let Some(wait) = RETRY_SCHEDULE_SECS.get(attempt - 1) else {
                tracing::warn!(%out_trade_no, attempt, "sandbox gave up notifying");
                return;
            };
            actix_rt::time::sleep(Duration::from_secs_f64(*wait as f64 * scale)).await;
        }
    });
}

/// One delivery; true when the receiver answered 200 with `return_code` SUCCESS in time.
async fn deliver_once(
    sb: &Sandbox,
    out_trade_no: &str,
    url: &str,
    xml_body: &str,
    deadline: Duration,
    attempt: usize,
) -> bool {
    let dropped = {
        let mut st = sb.state();
        st.attempts += 1;
        if let Some(o) = st.orders.get_mut(out_trade_no) {
            o.notify_attempts += 1;
        }
        if st.faults.drop_notifications > 0 {
            st.faults.drop_notifications -= 1;
            true
        } else {
            false
        }
    };
    if dropped {
        tracing::info!(%out_trade_no, attempt, "sandbox notification dropped (fault)");
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
            tracing::info!(%out_trade_no, attempt, "sandbox notification: reply too slow");
            false
        }
        Ok(Err(e)) => {
            tracing::info!(%out_trade_no, attempt, error = %e, "sandbox notification: send failed");
            false
        }
        Ok(Ok((status, body))) => {
            let success = status == actix_web::http::StatusCode::OK
                && xml::decode(&body)
                    .is_ok_and(|p| p.get("return_code").map(String::as_str) == Some("SUCCESS"));
            tracing::info!(%out_trade_no, attempt, %status, success, "sandbox notification delivered");
            success
        }
    };
    if acked {
        let mut st = sb.state();
        st.acknowledged += 1;
        if let Some(o) = st.orders.get_mut(out_trade_no) {
            o.acknowledged = true;
        }
    }
    acked
}
