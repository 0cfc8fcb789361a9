//! WeChat Pay's refund result notification (wechatpay-next.md §3.4): the caller's address
//! (WECHAT_PAY_IP_WHITELIST, as the pay callback), the body's size (actix's `PayloadConfig`),
//! then XML safety, return_code, appid/mch_id and the decryption of `req_info`
//! (`wechat::refund_notify::parse`; the notification has no signature: decrypting with the API
//! key is its authentication). The refund must be known and its order and amount must match;
//! the result is then decided and applied by the refund's actor, and SUCCESS is answered only
//! after that commit. A duplicate is SUCCESS and changes nothing; anything else is FAIL (WeChat
//! retries) and changes nothing.

use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, Resource, guard, web};
use tracing::Instrument;

use super::{AppState, ClientIp};
use crate::refund::state::{RefundDecision, RefundStay};
use crate::service::refunds::{RefundError, Settled, wechat_state};
use crate::wechat::refund_notify::{self, RefundNotification};
use crate::wechat::xml;

pub const PATH: &str = "/api/v1/client/coin/refund/callback";

pub fn resource() -> Resource {
    web::resource(PATH)
        .guard(guard::Post())
        .app_data(web::PayloadConfig::new(xml::MAX_BODY))
        .to(refund_notification)
}

/// (HTTP status, `None` for SUCCESS or the FAIL message, the metrics outcome).
type Answer = (StatusCode, Option<&'static str>, &'static str);

/// The answer to a result the service has handled: pure, unit-tested below.
pub fn answer(result: &Result<Settled, RefundError>) -> Answer {
    match result {
        Ok(Settled::Moved(_)) => (StatusCode::OK, None, "ok"),
        Ok(Settled::Unchanged(_, RefundDecision::Stay(RefundStay::Duplicate))) => {
            (StatusCode::OK, None, "duplicate")
        }
        // PROCESSING is not a result WeChat notifies; nothing to store, nothing lost.
        Ok(Settled::Unchanged(_, RefundDecision::Stay(_))) => (StatusCode::OK, None, "duplicate"),
        Ok(Settled::Unchanged(_, RefundDecision::Refuse(r))) => match r {
            crate::refund::state::RefundRejection::AmountMismatch { .. } => {
                (StatusCode::OK, Some("金额不一致"), "amount_mismatch")
            }
            crate::refund::state::RefundRejection::Contradiction { .. } => {
                (StatusCode::OK, Some("退款状态异常"), "rejected")
            }
        },
        Ok(Settled::Unchanged(_, RefundDecision::Move { .. })) => {
            (StatusCode::OK, Some("系统繁忙"), "storage_error")
        }
        Err(RefundError::NotFound) => (StatusCode::OK, Some("退款单不存在"), "unknown_refund"),
        Err(_) => (StatusCode::OK, Some("系统繁忙"), "storage_error"),
    }
}

async fn refund_notification(
    st: web::Data<AppState>,
    ClientIp(ip): ClientIp,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    let (status, fail, outcome) = match authenticate(&st, ip, body) {
        Err(refused) => refused,
        Ok(n) => {
            let span = tracing::info_span!("refund_notify", refund_no = %n.info.out_refund_no, order_no = %n.info.out_trade_no);
            async { settle(&st, &n).await }.instrument(span).await
        }
    };
    st.metrics.refund_notification(outcome);
    let body = match fail {
        None => xml::SUCCESS_REPLY.to_string(),
        Some(msg) => xml::fail_reply(msg),
    };
    HttpResponse::build(status)
        .content_type("text/xml; charset=utf-8")
        .body(body)
}

async fn settle(st: &AppState, n: &RefundNotification) -> Answer {
    let info = &n.info;
    let result = match st.refunds.get(&info.out_refund_no).await {
        Ok(row) if row.order_no != info.out_trade_no => {
            tracing::warn!(
                reason = "amount_mismatch",
                "refund notification for another order"
            );
            return (StatusCode::OK, Some("订单号不一致"), "amount_mismatch");
        }
        Ok(_) => match wechat_state(&info.refund_status, &info.refund_id, info.success_time) {
            None => {
                tracing::warn!(status = %info.refund_status.as_str(), "refund notification with an unknown refund_status");
                return (StatusCode::OK, Some("参数格式校验错误"), "bad_req_info");
            }
            Some(state) => {
                st.refunds
                    .notified(&info.out_refund_no, state, info.refund_fee)
                    .await
            }
        },
        Err(e) => Err(e),
    };
    let a = answer(&result);
    match &result {
        Err(RefundError::NotFound) => tracing::warn!(
            source = ?info.refund_request_source,
            "refund notification for an unknown refund (a refund made in the merchant portal?)"
        ),
        Err(e) => tracing::error!(error = %e, "refund notification not stored"),
        Ok(_) if a.1.is_some() => tracing::warn!(outcome = a.2, "refund notification refused"),
        Ok(_) => tracing::info!(outcome = a.2, "refund notification handled"),
    }
    a
}

/// Everything before the refund: address, body, XML, merchant, decryption.
fn authenticate(
    st: &AppState,
    ip: std::net::IpAddr,
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<RefundNotification, Answer> {
    if let Some(allowed) = &st.settings.wechat.ip_whitelist
        && !allowed.iter().any(|net| net.contains(&ip))
    {
        tracing::warn!(client_ip = %ip, reason = "ip_denied", "refund notification refused: address not in WECHAT_PAY_IP_WHITELIST");
        return Err((StatusCode::FORBIDDEN, Some("IP不在白名单"), "ip_denied"));
    }
    let Some(cfg) = st.refunds.credentials() else {
        return Err((StatusCode::OK, Some("支付未配置"), "malformed"));
    };
    let body = body.map_err(|e| match e.as_error::<PayloadError>() {
        Some(PayloadError::Overflow) => (StatusCode::OK, Some("报文过大"), "too_large"),
        _ => (StatusCode::OK, Some("报文读取失败"), "malformed"),
    })?;
    refund_notify::parse(&body, cfg).map_err(|e| {
        tracing::warn!(client_ip = %ip, reason = e.outcome(), error = %e, "refund notification refused");
        (StatusCode::OK, Some(e.reply_msg()), e.outcome())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refund::state::RefundRejection;
    use crate::store::refunds::RefundRow;

    fn row() -> RefundRow {
        RefundRow {
            id: 1,
            refund_no: "RF1".into(),
            order_no: "CR1".into(),
            user_id: 1,
            refund_fen: crate::money::Fen(100),
            coins: crate::money::Coins(10),
            status: crate::refund::state::RefundStatus::Succeeded,
            reason: "r".into(),
            request_id: "q".into(),
            wechat_refund_id: None,
            wechat_err_code: None,
            created_at: 0,
            updated_at: 0,
            succeeded_at: None,
            version: 1,
        }
    }

    #[test]
    fn only_a_committed_move_or_a_duplicate_is_success() {
        assert_eq!(answer(&Ok(Settled::Moved(row()))).1, None);
        let dup = Settled::Unchanged(row(), RefundDecision::Stay(RefundStay::Duplicate));
        assert_eq!(answer(&Ok(dup)), (StatusCode::OK, None, "duplicate"));
        let mismatch = Settled::Unchanged(
            row(),
            RefundDecision::Refuse(RefundRejection::AmountMismatch {
                expected: 100,
                got: 99,
            }),
        );
        assert_eq!(answer(&Ok(mismatch)).2, "amount_mismatch");
        assert!(answer(&Err(RefundError::NotFound)).1.is_some());
        assert!(
            answer(&Err(RefundError::Storage(
                crate::store::StoreError::Conflict
            )))
            .1
            .is_some()
        );
    }
}
