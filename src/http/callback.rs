//! WeChat Pay's payment notification. The checks run in the order of wechatpay-v2.md §4.3:
//! the caller's address, the body's size (through actix's `PayloadConfig`, so that an oversized
//! body is never buffered), then the XML, signature and merchant (in `wechat::notify`). The
//! payment itself is applied by the order's actor in one transaction, and SUCCESS is answered
//! only after that transaction committed; a duplicate is SUCCESS and changes nothing.
//!
//! What the order's answer means for WeChat is one pure function, [`answer`], so that every
//! mapping from outcome to reply is unit-tested here, and the notification is counted in one
//! place, at the end of the handler.

use std::borrow::Cow;

use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, Resource, guard, web};
use tracing::Instrument;

use super::{AppState, ClientIp};
use crate::metrics::NotificationOutcome;
use crate::money::Fen;
use crate::order::actor::{OrderError, Outcome};
use crate::order::state::{OrderStatus, Rejection, Stay};
use crate::wechat::notify::{self, Notification};
use crate::wechat::xml;

pub const PATH: &str = "/api/v1/client/coin/recharge/callback";

/// The notification's route: POST only (other methods fall through to the JSON 404), with its
/// body capped at [`xml::MAX_BODY`]: a legitimate notification is a few KB.
pub fn resource() -> Resource {
    web::resource(PATH)
        .guard(guard::Post())
        .app_data(web::PayloadConfig::new(xml::MAX_BODY))
        .to(payment_notification)
}

/// What WeChat is told, and how the notification is counted.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    /// `None`: SUCCESS; `Some(msg)`: FAIL with `msg` as return_msg (WeChat retries).
    pub fail: Option<&'static str>,
    pub outcome: NotificationOutcome,
    /// The `coinpay_payment_anomalies` kind the notification revealed, if any.
    pub anomaly: Option<&'static str>,
}

impl Answer {
    fn success(outcome: NotificationOutcome) -> Answer {
        Answer {
            status: StatusCode::OK,
            fail: None,
            outcome,
            anomaly: None,
        }
    }

    fn fail(outcome: NotificationOutcome, msg: &'static str) -> Answer {
        Answer {
            status: StatusCode::OK,
            fail: Some(msg),
            outcome,
            anomaly: None,
        }
    }

    fn body(&self) -> Cow<'static, str> {
        match self.fail {
            None => Cow::Borrowed(xml::SUCCESS_REPLY),
            Some(msg) => Cow::Owned(xml::fail_reply(msg)),
        }
    }
}

/// The answer to a notification the order's actor has handled.
pub fn answer(result: &Result<Outcome, OrderError>) -> Answer {
    use NotificationOutcome as N;
    match result {
        Ok(Outcome::Moved {
            to: OrderStatus::Paid,
            late,
            ..
        }) => Answer::success(if *late { N::LatePayment } else { N::Ok }),
        Ok(Outcome::Stayed(Stay::Duplicate)) => Answer::success(N::Duplicate),
        Ok(Outcome::Refused(r @ Rejection::AmountMismatch { .. })) => Answer {
            anomaly: r.anomaly(),
            ..Answer::fail(N::AmountMismatch, "金额不一致")
        },
        // A second, different payment for a paid order: money to refund by hand, acknowledged
        // so that WeChat stops retrying.
        Ok(Outcome::Refused(r @ Rejection::DoublePayment { .. })) => Answer {
            anomaly: r.anomaly(),
            ..Answer::success(N::DoublePayment)
        },
        Ok(_) => Answer::fail(N::Rejected, "订单状态异常"),
        Err(OrderError::NotFound) => Answer::fail(N::UnknownOrder, "订单不存在"),
        // Never acknowledge what was not stored: FAIL makes WeChat retry.
        Err(_) => Answer::fail(N::StorageError, "系统繁忙"),
    }
}

/// The log line of an order's answer (the actor has logged the move or the refusal itself).
fn log_answer(result: &Result<Outcome, OrderError>, a: &Answer) {
    let reason = a.outcome.as_str();
    match result {
        Ok(Outcome::Stayed(Stay::Duplicate)) => {
            tracing::info!("duplicate notification; already credited")
        }
        Ok(Outcome::Refused(Rejection::AmountMismatch { expected, got })) => {
            tracing::warn!(
                reason,
                expected = expected.0,
                got = got.0,
                "notification refused"
            )
        }
        Ok(other) if a.outcome == NotificationOutcome::Rejected => {
            tracing::error!(outcome = ?other, "notification left the order unchanged")
        }
        Ok(_) => {}
        Err(OrderError::NotFound) => tracing::warn!(reason, "notification refused: no such order"),
        Err(e) => tracing::error!(reason, error = %e, "notification not stored"),
    }
}

async fn payment_notification(
    st: web::Data<AppState>,
    ClientIp(ip): ClientIp,
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    let a = match authenticate(&st, ip, body) {
        Err(refused) => refused,
        Ok(n) => {
            let span = tracing::info_span!("notify", order_no = %n.out_trade_no, transaction_id = %n.transaction_id);
            async {
                let result = if fault_requested(&st, &req) {
                    st.orders
                        .inject_panic(&n.out_trade_no)
                        .await
                        .map(|()| Outcome::Unchanged)
                } else {
                    st.orders
                        .notify(
                            &n.out_trade_no,
                            &n.transaction_id,
                            Fen(n.total_fee),
                            &n.time_end,
                        )
                        .await
                };
                let a = answer(&result);
                log_answer(&result, &a);
                a
            }
            .instrument(span)
            .await
        }
    };
    st.metrics.notification(a.outcome, a.anomaly);
    HttpResponse::build(a.status)
        .content_type("text/xml; charset=utf-8")
        .body(a.body())
}

/// Everything before the order: the caller's address, the body, the XML, the signature, the
/// merchant and the currency. A refusal is logged here with its reason.
fn authenticate(
    st: &AppState,
    ip: std::net::IpAddr,
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<Notification, Answer> {
    use NotificationOutcome as N;
    if let Some(allowed) = &st.settings.wechat.ip_whitelist
        && !allowed.iter().any(|net| net.contains(&ip))
    {
        tracing::warn!(client_ip = %ip, reason = "ip_denied", "notification refused: address not in WECHAT_PAY_IP_WHITELIST");
        return Err(Answer {
            status: StatusCode::FORBIDDEN,
            ..Answer::fail(N::IpDenied, "IP不在白名单")
        });
    }
    let Some(cfg) = st.orders.pay_credentials() else {
        tracing::warn!(
            reason = "not_configured",
            "notification refused: WeChat Pay is not configured"
        );
        return Err(Answer::fail(N::Malformed, "支付未配置"));
    };
    let body = body.map_err(|e| match e.as_error::<PayloadError>() {
        Some(PayloadError::Overflow) => {
            tracing::warn!(client_ip = %ip, reason = "too_large", "notification refused: body over the cap");
            Answer::fail(N::Malformed, "报文过大")
        }
        _ => {
            tracing::warn!(client_ip = %ip, reason = "read_error", error = %e, "notification refused: body unreadable");
            Answer::fail(N::Malformed, "报文读取失败")
        }
    })?;
    let n = notify::parse(&body, cfg).map_err(|e| {
        tracing::warn!(client_ip = %ip, reason = e.outcome().as_str(), error = %e, "notification refused");
        Answer::fail(e.outcome(), e.reply_msg())
    })?;
    // Our amounts are fen of CNY; any other currency cannot match an order.
    if n.fee_type != "CNY" {
        tracing::warn!(order_no = %n.out_trade_no, reason = "amount_mismatch", fee_type = %n.fee_type, "notification refused: not CNY");
        return Err(Answer::fail(N::AmountMismatch, "币种不一致"));
    }
    Ok(n)
}

/// Test-only: with COINPAY_FAULT_INJECTION=1, `X-Coinpay-Fault: panic` makes the order's actor
/// panic instead of handling the notification.
fn fault_requested(st: &AppState, req: &HttpRequest) -> bool {
    st.settings.fault_injection
        && req
            .headers()
            .get("x-coinpay-fault")
            .and_then(|v| v.to_str().ok())
            == Some("panic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use NotificationOutcome as N;

    fn paid(late: bool) -> Result<Outcome, OrderError> {
        Ok(Outcome::Moved {
            from: OrderStatus::Pending,
            to: OrderStatus::Paid,
            late,
        })
    }

    #[test]
    fn every_order_answer_maps_to_its_reply_and_label() {
        let mismatch = Ok(Outcome::Refused(Rejection::AmountMismatch {
            expected: Fen(600),
            got: Fen(601),
        }));
        let double = Ok(Outcome::Refused(Rejection::DoublePayment {
            existing: "T1".into(),
            other: "T2".into(),
        }));
        let invalid = Ok(Outcome::Refused(Rejection::InvalidTransition {
            from: OrderStatus::Paid,
            event: "PrepayObtained",
        }));
        // (the order's answer, the FAIL message or None for SUCCESS, the label, the anomaly)
        type Case = (
            Result<Outcome, OrderError>,
            Option<&'static str>,
            N,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (paid(false), None, N::Ok, None),
            (paid(true), None, N::LatePayment, None),
            (
                Ok(Outcome::Stayed(Stay::Duplicate)),
                None,
                N::Duplicate,
                None,
            ),
            (
                mismatch,
                Some("金额不一致"),
                N::AmountMismatch,
                Some("amount_mismatch"),
            ),
            (double, None, N::DoublePayment, Some("double_payment")),
            (invalid, Some("订单状态异常"), N::Rejected, None),
            (
                Ok(Outcome::Stayed(Stay::NoOp)),
                Some("订单状态异常"),
                N::Rejected,
                None,
            ),
            (
                Ok(Outcome::Unchanged),
                Some("订单状态异常"),
                N::Rejected,
                None,
            ),
            (
                Ok(Outcome::Moved {
                    from: OrderStatus::Pending,
                    to: OrderStatus::Expired,
                    late: false,
                }),
                Some("订单状态异常"),
                N::Rejected,
                None,
            ),
            (
                Err(OrderError::NotFound),
                Some("订单不存在"),
                N::UnknownOrder,
                None,
            ),
            (
                Err(OrderError::Panicked),
                Some("系统繁忙"),
                N::StorageError,
                None,
            ),
            (
                Err(OrderError::Storage(crate::store::StoreError::Conflict)),
                Some("系统繁忙"),
                N::StorageError,
                None,
            ),
        ];
        for (result, fail, outcome, anomaly) in cases {
            let a = answer(&result);
            assert_eq!(a.status, StatusCode::OK, "{result:?}");
            assert_eq!(
                (a.fail, a.outcome, a.anomaly),
                (fail, outcome, anomaly),
                "{result:?}"
            );
            let body = a.body();
            match fail {
                None => assert_eq!(body, xml::SUCCESS_REPLY),
                Some(msg) => {
                    assert!(body.contains("<return_code><![CDATA[FAIL]]></return_code>"));
                    assert!(body.contains(msg), "{body}");
                }
            }
        }
    }
}
