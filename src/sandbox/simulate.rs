//! `/simulate/*`: drive the simulated WeChat from tests (pay, faults, inspection).

use actix_web::{HttpResponse, web};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::Sandbox;
use super::notifier::{self, Subject};
use super::pay::{new_transaction_id, paid_fields, parse_time};
use super::state::{Faults, SimTradeState};
use crate::wechat::Params;
use crate::wechat::client::format_beijing;
use crate::wechat::notify::build_notification;
use crate::wechat::sign;

#[derive(Deserialize)]
pub(super) struct PayQuery {
    #[serde(default)]
    duplicates: u32,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default = "yes")]
    notify: bool,
    /// The user opens the payment and has not finished it: orderquery answers USERPAYING and
    /// nothing is notified until a later pay without this flag completes the payment.
    #[serde(default)]
    userpaying: bool,
    /// WeChat's `time_end` (`yyyyMMddHHmmss`, Beijing) instead of now: a payment just before
    /// midnight, or on the day a bill is asked for.
    time_end: Option<String>,
}

fn yes() -> bool {
    true
}

/// Upper bound on concurrent copies, so a typo cannot start thousands of delivery chains.
const MAX_DUPLICATES: u32 = 20;

pub(super) async fn pay(
    sb: web::Data<Sandbox>,
    path: web::Path<String>,
    q: web::Query<PayQuery>,
) -> HttpResponse {
    let out_trade_no = path.into_inner();
    let cfg = sb.config().clone();
    if let Some(t) = q.time_end.as_deref()
        && parse_time(t).is_none()
    {
        return HttpResponse::BadRequest()
            .json(json!({ "error": "time_end must be yyyyMMddHHmmss", "time_end": t }));
    }
    let delivery = {
        let mut st = sb.state();
        let Some(order) = st.orders.get_mut(&out_trade_no) else {
            return HttpResponse::Conflict()
                .json(json!({ "error": "ORDERNOTEXIST", "out_trade_no": out_trade_no }));
        };
        if order.trade_state == SimTradeState::Closed {
            return HttpResponse::Conflict()
                .json(json!({ "error": "ORDERCLOSED", "out_trade_no": out_trade_no }));
        }
        if q.userpaying {
            return match order.trade_state {
                SimTradeState::NotPay | SimTradeState::UserPaying => {
                    order.trade_state = SimTradeState::UserPaying;
                    tracing::info!(%out_trade_no, "sandbox payment started (USERPAYING)");
                    HttpResponse::Ok().json(json!({
                        "out_trade_no": out_trade_no,
                        "trade_state": order.trade_state.as_str(),
                        "notification_chains": 0,
                    }))
                }
                // Paid already (a closed order was refused above).
                _ => HttpResponse::Conflict()
                    .json(json!({ "error": "ORDERPAID", "out_trade_no": out_trade_no })),
            };
        }
        let newly_paid = matches!(
            order.trade_state,
            SimTradeState::NotPay | SimTradeState::UserPaying
        );
        if newly_paid {
            order.trade_state = SimTradeState::Success;
            order.transaction_id = Some(new_transaction_id());
            order.time_end = Some(
                q.time_end
                    .clone()
                    .unwrap_or_else(|| format_beijing(chrono::Utc::now())),
            );
        }
        let tx = order.transaction_id.clone().unwrap_or_default();
        let mut fields: Params = paid_fields(order);
        fields.insert("appid".into(), order.appid.clone());
        fields.insert("mch_id".into(), cfg.mch_id.clone());
        fields.insert("result_code".into(), "SUCCESS".into());
        fields.insert("return_code".into(), "SUCCESS".into());
        let notify = (
            order.notify_url.clone(),
            order.notify_sign_type,
            fields,
            tx.clone(),
        );
        if newly_paid {
            st.by_transaction.insert(tx, out_trade_no.clone());
        }
        notify
    };
    let (url, sign_type, fields, transaction_id) = delivery;
    tracing::info!(%out_trade_no, %transaction_id, notify = q.notify, duplicates = q.duplicates, "sandbox payment");
    let chains = if q.notify {
        1 + q.duplicates.min(MAX_DUPLICATES)
    } else {
        0
    };
    for _ in 0..chains {
        // Each copy gets its own nonce, like notifications from different WeChat servers.
        let mut f = fields.clone();
        f.insert("nonce_str".into(), sign::nonce());
        let xml = build_notification(
            &f,
            cfg.api_key.expose_secret(),
            sign_type,
            cfg.notify_sign_type_field,
        );
        notifier::spawn_chain(
            sb.get_ref().clone(),
            Subject::Order(out_trade_no.clone()),
            url.clone(),
            xml,
            std::time::Duration::from_millis(q.delay_ms),
        );
    }
    HttpResponse::Ok().json(json!({
        "transaction_id": transaction_id,
        "out_trade_no": out_trade_no,
        "notification_chains": chains,
    }))
}

#[derive(Deserialize)]
pub(super) struct FaultsPatch {
    systemerror: Option<u32>,
    latency_ms: Option<u64>,
    drop_notifications: Option<u32>,
}

pub(super) async fn set_faults(
    sb: web::Data<Sandbox>,
    patch: web::Json<FaultsPatch>,
) -> HttpResponse {
    let faults = {
        let mut st = sb.state();
        if let Some(n) = patch.systemerror {
            st.faults.systemerror = n;
        }
        if let Some(n) = patch.latency_ms {
            st.faults.latency_ms = n;
        }
        if let Some(n) = patch.drop_notifications {
            st.faults.drop_notifications = n;
        }
        st.faults
    };
    tracing::info!(?faults, "sandbox faults set");
    HttpResponse::Ok().json(faults)
}

pub(super) async fn clear_faults(sb: web::Data<Sandbox>) -> HttpResponse {
    sb.state().faults = Faults::default();
    tracing::info!("sandbox faults cleared");
    HttpResponse::Ok().json(Faults::default())
}

pub(super) async fn order(sb: web::Data<Sandbox>, path: web::Path<String>) -> HttpResponse {
    let st = sb.state();
    match st.orders.get(path.as_str()) {
        None => HttpResponse::NotFound().json(json!({ "error": "ORDERNOTEXIST" })),
        Some(o) => HttpResponse::Ok().json(json!({
            "out_trade_no": o.out_trade_no,
            "trade_state": o.trade_state.as_str(),
            "transaction_id": o.transaction_id,
            "total_fee": o.total_fee,
            "openid": o.openid,
            "attach": o.attach,
            "prepay_id": o.prepay_id,
            "notify_url": o.notify_url,
            "notify_sign_type": o.notify_sign_type.as_str(),
            "time_end": o.time_end,
            "notify_attempts": o.notify_attempts,
            "acknowledged": o.acknowledged,
        })),
    }
}

pub(super) async fn notifications(sb: web::Data<Sandbox>) -> HttpResponse {
    let st = sb.state();
    HttpResponse::Ok().json(json!({
        "attempts": st.attempts,
        "acknowledged": st.acknowledged,
        "pending_chains": st.pending_chains,
    }))
}
