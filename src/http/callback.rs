//! WeChat Pay's payment notification. Checks in the order of wechatpay-v2.md §4.3; the
//! payment itself is applied by the order's actor in one transaction, and SUCCESS is
//! answered only after that transaction committed. A duplicate is SUCCESS and changes nothing.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, post, web};
use futures_util::StreamExt;
use tracing::Instrument;

use super::{AppState, peer_ip};
use crate::order::actor::{Command, OrderError, Outcome};
use crate::order::state::{OrderStatus, Rejection, Stay};
use crate::wechat::{notify, xml};

fn reply(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/xml; charset=utf-8")
        .body(body)
}

fn fail(st: &AppState, outcome: &str, msg: &str) -> HttpResponse {
    st.metrics.notification(outcome);
    reply(StatusCode::OK, xml::fail_reply(msg))
}

#[post("/api/v1/client/coin/recharge/callback")]
pub async fn payment_notification(
    st: web::Data<AppState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> HttpResponse {
    let ip = peer_ip(&req, &st.settings.trusted_proxies);
    if let Some(allowed) = &st.settings.wechat.ip_whitelist
        && !allowed.iter().any(|net| net.contains(&ip))
    {
        tracing::warn!(client_ip = %ip, reason = "ip_denied", "notification refused: address not in WECHAT_PAY_IP_WHITELIST");
        st.metrics.notification("ip_denied");
        return reply(StatusCode::FORBIDDEN, xml::fail_reply("IP不在白名单"));
    }
    let Some(cfg) = st
        .registry
        .core()
        .wechat
        .as_ref()
        .map(|c| c.credentials().clone())
    else {
        tracing::warn!(
            reason = "not_configured",
            "notification refused: WeChat Pay is not configured"
        );
        return fail(&st, "malformed", "支付未配置");
    };

    // Read at most MAX_BODY + 1 bytes: a legitimate notification is a few KB.
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(c) => {
                body.extend_from_slice(&c);
                if body.len() > xml::MAX_BODY {
                    tracing::warn!(client_ip = %ip, reason = "too_large", "notification refused: body over the cap");
                    return fail(&st, "malformed", "报文过大");
                }
            }
            Err(e) => {
                tracing::warn!(client_ip = %ip, reason = "read_error", error = %e, "notification refused: body unreadable");
                return fail(&st, "malformed", "报文读取失败");
            }
        }
    }

    let n = match notify::parse(&body, &cfg) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(client_ip = %ip, reason = e.outcome(), error = %e, "notification refused");
            return fail(&st, e.outcome(), e.reply_msg());
        }
    };
    // Our amounts are fen of CNY; any other currency cannot match an order.
    if n.fee_type != "CNY" {
        tracing::warn!(order_no = %n.out_trade_no, reason = "amount_mismatch", fee_type = %n.fee_type, "notification refused: not CNY");
        return fail(&st, "amount_mismatch", "币种不一致");
    }
    let inject_panic = st.settings.fault_injection
        && req
            .headers()
            .get("x-coinpay-fault")
            .and_then(|v| v.to_str().ok())
            == Some("panic");
    let span = tracing::info_span!("notify", order_no = %n.out_trade_no, transaction_id = %n.transaction_id);
    async move {
        let cmd = Command::Notify {
            transaction_id: n.transaction_id.clone(),
            total_fee: n.total_fee,
        };
        match st.registry.send(&n.out_trade_no, cmd, inject_panic).await {
            Ok(r) => match r.outcome {
                Outcome::Moved {
                    to: OrderStatus::Paid,
                    late,
                    ..
                } => {
                    st.metrics
                        .notification(if late { "late_payment" } else { "ok" });
                    reply(StatusCode::OK, xml::SUCCESS_REPLY.to_string())
                }
                Outcome::Stayed(Stay::Duplicate) => {
                    tracing::info!("duplicate notification; already credited");
                    st.metrics.notification("duplicate");
                    reply(StatusCode::OK, xml::SUCCESS_REPLY.to_string())
                }
                Outcome::Refused(Rejection::AmountMismatch { expected, got }) => {
                    tracing::warn!(
                        reason = "amount_mismatch",
                        expected,
                        got,
                        "notification refused"
                    );
                    fail(&st, "amount_mismatch", "金额不一致")
                }
                // A second, different payment for a paid order: money to refund by hand,
                // acknowledged so WeChat stops retrying; logged and counted by the actor.
                Outcome::Refused(Rejection::DoublePayment { .. }) => {
                    st.metrics.notification("double_payment");
                    reply(StatusCode::OK, xml::SUCCESS_REPLY.to_string())
                }
                other => {
                    tracing::error!(outcome = ?other, "notification left the order unchanged");
                    fail(&st, "rejected", "订单状态异常")
                }
            },
            Err(OrderError::NotFound) => {
                tracing::warn!(
                    reason = "unknown_order",
                    "notification refused: no such order"
                );
                fail(&st, "unknown_order", "订单不存在")
            }
            Err(e) => {
                // Never acknowledge what was not stored: FAIL makes WeChat retry.
                tracing::error!(reason = "storage_error", error = %e, "notification not stored");
                fail(&st, "storage_error", "系统繁忙")
            }
        }
    }
    .instrument(span)
    .await
}
