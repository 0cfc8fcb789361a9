//! Creating an order: the row first (status created), then unifiedorder through the order's
//! actor, then the signed parameters for wx.requestPayment.

use std::net::IpAddr;

use secrecy::ExposeSecret;

use super::actor::Command;
use crate::error::AppError;
use crate::http::AppState;
use crate::store::orders::{self, NewOrder, OrderRow};
use crate::store::{now_ms, packages, users};
use crate::wechat::pay_params::{self, PayParams};
use crate::wechat::sign;

pub struct CreatedOrder {
    pub row: OrderRow,
    pub pay_params: PayParams,
}

/// Attempts at a fresh order number when one collides (it would have to be a clash of the
/// local scheme or a Redis reset).
const NUMBER_ATTEMPTS: usize = 5;

pub async fn create(
    st: &AppState,
    user_id: i64,
    package_id: i64,
    client_ip: IpAddr,
) -> Result<CreatedOrder, AppError> {
    let core = st.registry.core();
    let wechat = core.wechat.as_ref().ok_or(AppError::PaymentUnavailable)?;
    let package = packages::get(&st.db, package_id)
        .await?
        .ok_or(AppError::NotFound("package"))?;
    if !package.active {
        return Err(AppError::PackageInactive(package_id));
    }
    let user = users::get(&st.db, user_id)
        .await?
        .ok_or(AppError::Unauthorized("unknown user"))?;

    let created_at = now_ms();
    let expires_at = created_at + st.settings.order_expire_secs * 1000;
    let mut order_no = None;
    for _ in 0..NUMBER_ATTEMPTS {
        let candidate = st.numbers.next().await;
        let new = NewOrder {
            order_no: &candidate,
            user_id,
            package_id,
            // Copied now: later package edits never change this order.
            amount_fen: package.price_fen,
            coins: package.coins,
            bonus_coins: package.bonus_coins,
            created_at,
            expires_at,
        };
        match orders::insert(&st.db, &new).await {
            Ok(()) => {
                order_no = Some(candidate);
                break;
            }
            Err(e) if e.is_unique_violation() => {
                tracing::warn!(order_no = %candidate, "order number collision; retrying");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let order_no = order_no.ok_or_else(|| AppError::Internal("no free order number".into()))?;
    st.metrics.order_event("created");
    tracing::info!(order_no = %order_no, user_id, package_id, amount_fen = package.price_fen, "order created");

    let cmd = Command::Prepare {
        openid: user.openid,
        client_ip: client_ip.to_string(),
    };
    let reply = st.registry.send(&order_no, cmd, false).await?;
    let prepay_id = reply
        .row
        .prepay_id
        .clone()
        .ok_or_else(|| AppError::Internal(format!("order {order_no} has no prepay_id")))?;
    let creds = wechat.credentials();
    let params = pay_params::build(
        &creds.app_id,
        &prepay_id,
        creds.api_key.expose_secret(),
        creds.sign_type,
        chrono::Utc::now().timestamp(),
        &sign::nonce(),
    );
    Ok(CreatedOrder {
        row: reply.row,
        pay_params: params,
    })
}
