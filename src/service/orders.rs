//! Orders as the application sees them: creating one (the row first, status created, then
//! unifiedorder through the order's actor, then the signed parameters for wx.requestPayment),
//! and handing notifications and operators' re-checks to the order's actor.
//!
//! [`OrderService`] is built once at startup and shared by every handler through `AppState`. It
//! holds the WeChat Pay client, whose configuration sits behind an `Arc`: the notification
//! handler borrows the configuration from here instead of copying it for every request.

use std::net::IpAddr;
use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::metrics::Metrics;
use crate::money::Fen;
use crate::order::actor::{
    Check, InjectPanic, Notify, OrderError, Outcome, Prepare, Prepared, Settled,
};
use crate::order::number::OrderNumbers;
use crate::order::registry::OrderRegistry;
use crate::store::orders::{self, Creation, OrderRequest, OrderRow, Refusal};
use crate::store::{DbPool, StoreError, now_ms};
use crate::wechat::client::{PayCredentials, WechatClient, WechatError};
use crate::wechat::pay_params::{self, PayParams};
use crate::wechat::sign;

/// Attempts at a fresh order number when one collides (it would have to be a clash of the
/// local scheme or a Redis reset).
const NUMBER_ATTEMPTS: usize = 5;

/// Why an order could not be created. Each maps to one HTTP error in `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum CreateOrderError {
    #[error("WeChat Pay is not configured")]
    PaymentUnavailable,
    #[error("no such package")]
    UnknownPackage,
    #[error("package {0} is not on sale")]
    PackageInactive(i64),
    #[error("unknown user")]
    UnknownUser,
    #[error("no free order number after {NUMBER_ATTEMPTS} attempts")]
    NoFreeNumber,
    #[error("order {0} has no prepay_id")]
    NoPrepayId(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error(transparent)]
    Order(#[from] OrderError),
    /// unifiedorder refused the order for good; the order is stored as failed.
    #[error(transparent)]
    Refused(#[from] WechatError),
}

pub struct CreatedOrder {
    pub row: OrderRow,
    pub pay_params: PayParams,
}

pub struct OrderService {
    db: DbPool,
    registry: OrderRegistry,
    numbers: OrderNumbers,
    /// unifiedorder and the paySign; `None` when WeChat Pay is not fully configured.
    pay: Option<WechatClient>,
    expire_ms: i64,
    metrics: Arc<Metrics>,
}

impl OrderService {
    pub fn new(
        db: DbPool,
        registry: OrderRegistry,
        numbers: OrderNumbers,
        pay: Option<WechatClient>,
        expire_secs: i64,
        metrics: Arc<Metrics>,
    ) -> Self {
        OrderService {
            db,
            registry,
            numbers,
            pay,
            expire_ms: expire_secs * 1000,
            metrics,
        }
    }

    /// The merchant credentials a notification is authenticated against, when configured.
    pub fn pay_credentials(&self) -> Option<&PayCredentials> {
        self.pay.as_ref().map(WechatClient::credentials)
    }

    /// How many order actors are alive, for the metrics.
    pub fn live_actors(&self) -> usize {
        self.registry.live()
    }

    pub async fn create(
        &self,
        user_id: i64,
        package_id: i64,
        client_ip: IpAddr,
    ) -> Result<CreatedOrder, CreateOrderError> {
        let pay = self
            .pay
            .as_ref()
            .ok_or(CreateOrderError::PaymentUnavailable)?;
        let created_at = now_ms();
        let mut created = None;
        for _ in 0..NUMBER_ATTEMPTS {
            let request = OrderRequest {
                order_no: self.numbers.next().await,
                user_id,
                package_id,
                created_at,
                expires_at: created_at + self.expire_ms,
            };
            let order_no = request.order_no.clone();
            match orders::create(&self.db, request).await {
                Ok(Creation::Created { row, openid }) => {
                    created = Some((row, openid));
                    break;
                }
                Ok(Creation::Refused(refusal)) => {
                    return Err(match refusal {
                        Refusal::UnknownPackage => CreateOrderError::UnknownPackage,
                        Refusal::PackageInactive => CreateOrderError::PackageInactive(package_id),
                        Refusal::UnknownUser => CreateOrderError::UnknownUser,
                    });
                }
                Err(e) if e.is_unique_violation() => {
                    tracing::warn!(order_no = %order_no, "order number collision; retrying");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (row, openid) = created.ok_or(CreateOrderError::NoFreeNumber)?;
        let order_no = row.order_no.clone();
        self.metrics.order_event("created");
        tracing::info!(order_no = %order_no, user_id, package_id, amount_fen = row.amount_fen.0, "order created");

        let prepare = Prepare {
            openid,
            client_ip: client_ip.to_string(),
            created: Some(row),
        };
        let row = match self.registry.send(&order_no, prepare).await? {
            Prepared::Refused { error, .. } => return Err(error.into()),
            Prepared::Pending(row) | Prepared::Unchanged(row) => row,
        };
        let prepay_id = row
            .prepay_id
            .as_deref()
            .ok_or_else(|| CreateOrderError::NoPrepayId(order_no.clone()))?;
        let creds = pay.credentials();
        let pay_params = pay_params::build(
            &creds.app_id,
            prepay_id,
            creds.api_key.expose_secret(),
            creds.sign_type,
            chrono::Utc::now().timestamp(),
            &sign::nonce(),
        );
        Ok(CreatedOrder { row, pay_params })
    }

    /// Hands a verified payment notification to the order's actor. `time_end` is WeChat's
    /// (`yyyyMMddHHmmss`, Beijing): the order's `paid_at` when it is credited, or the time of
    /// the credit when it does not parse.
    pub async fn notify(
        &self,
        order_no: &str,
        transaction_id: &str,
        total_fee: Fen,
        time_end: &str,
    ) -> Result<Outcome, OrderError> {
        let notify = Notify {
            transaction_id: transaction_id.to_string(),
            total_fee,
            paid_at: crate::wechat::parse_beijing_compact_ms(time_end),
        };
        self.registry.send(order_no, notify).await
    }

    /// Test-only (COINPAY_FAULT_INJECTION=1): makes the order's actor panic.
    pub async fn inject_panic(&self, order_no: &str) -> Result<(), OrderError> {
        self.registry.send(order_no, InjectPanic).await
    }

    /// Asks WeChat now and applies the answer through the order's actor, as the sweeper would,
    /// but an order that is not yet due is never expired.
    pub async fn recheck(&self, order_no: &str) -> Result<Settled, OrderError> {
        let row = orders::get(&self.db, order_no)
            .await?
            .ok_or(OrderError::NotFound)?;
        let due = now_ms() >= row.expires_at;
        self.registry
            .send(order_no, Check { may_expire: due })
            .await
    }
}
