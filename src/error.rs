//! Typed errors, and the one place they become HTTP responses.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value, json};

use crate::order::actor::OrderError;
use crate::service::orders::CreateOrderError;
use crate::service::reconcile::ReconcileError;
use crate::service::refunds::RefundError;
use crate::store::StoreError;
use crate::store::refunds::ReserveRefusal;
use crate::wechat::client::WechatError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("package {0} is not on sale")]
    PackageInactive(i64),
    #[error("balance {balance} is less than {requested}")]
    InsufficientBalance { balance: i64, requested: i64 },
    #[error("request_id was already used for another user or amount")]
    RequestIdConflict,
    #[error("WeChat Pay is not configured on this server")]
    PaymentUnavailable,
    #[error("WeChat login is not configured on this server")]
    LoginUnavailable,
    #[error("WeChat refused the login code: {errmsg}")]
    LoginRejected { errcode: i64, errmsg: String },
    #[error("WeChat refused the order: {code}")]
    WechatRefused { code: String, message: String },
    #[error("WeChat is unreachable or failing: {0}")]
    WechatUnavailable(String),
    #[error("storage is unavailable")]
    Storage(#[from] StoreError),
    #[error("the order could not be processed, try again")]
    OrderBusy,
    #[error("internal error")]
    Internal(String),
    #[error("the order is {0}, not paid")]
    OrderNotPaid(String),
    #[error("the order already has the most refunds WeChat allows")]
    TooManyRefunds,
    #[error("the order was paid more than a year ago and cannot be refunded")]
    RefundOverdue,
    #[error("refunds are not configured on this server (no WeChat Pay client certificate)")]
    RefundsDisabled,
    /// The request head is over the caps of [`crate::http::limits`].
    #[error("request headers too large: {0}")]
    HeadersTooLarge(String),
}

impl AppError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        AppError::Validation {
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::Validation { .. } => "validation_failed",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::NotFound(_) => "not_found",
            AppError::PackageInactive(_) => "package_inactive",
            AppError::InsufficientBalance { .. } => "insufficient_balance",
            AppError::RequestIdConflict => "request_id_conflict",
            AppError::PaymentUnavailable => "payment_unavailable",
            AppError::LoginUnavailable => "login_unavailable",
            AppError::LoginRejected { .. } => "invalid_login_code",
            AppError::WechatRefused { .. } => "wechat_refused",
            AppError::WechatUnavailable(_) => "wechat_unavailable",
            AppError::Storage(_) => "storage_unavailable",
            AppError::OrderBusy => "order_busy",
            AppError::Internal(_) => "internal",
            AppError::OrderNotPaid(_) => "order_not_paid",
            AppError::TooManyRefunds => "too_many_refunds",
            AppError::RefundOverdue => "refund_overdue",
            AppError::RefundsDisabled => "refunds_disabled",
            AppError::HeadersTooLarge(_) => "headers_too_large",
        }
    }

    /// Fields added to the error object for the client.
    fn details(&self) -> Map<String, Value> {
        let mut m = Map::new();
        match self {
            AppError::Validation { field, .. } => {
                m.insert("field".into(), json!(field));
            }
            AppError::InsufficientBalance { balance, .. } => {
                m.insert("balance".into(), json!(balance));
            }
            AppError::LoginRejected { errcode, .. } => {
                m.insert("wechat_errcode".into(), json!(errcode));
            }
            AppError::WechatRefused { code, .. } => {
                m.insert("wechat_err_code".into(), json!(code));
            }
            _ => {}
        }
        m
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Validation { .. } | AppError::PackageInactive(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::InsufficientBalance { .. }
            | AppError::RequestIdConflict
            | AppError::OrderNotPaid(_)
            | AppError::TooManyRefunds
            | AppError::RefundOverdue => StatusCode::CONFLICT,
            AppError::RefundsDisabled => StatusCode::SERVICE_UNAVAILABLE,
            AppError::LoginRejected { .. } => StatusCode::BAD_REQUEST,
            AppError::WechatRefused { .. } => StatusCode::BAD_GATEWAY,
            AppError::PaymentUnavailable
            | AppError::LoginUnavailable
            | AppError::WechatUnavailable(_)
            | AppError::Storage(_)
            | AppError::OrderBusy => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            AppError::Storage(e) => tracing::error!(error = %e, "storage error"),
            AppError::Internal(e) => tracing::error!(error = %e, "internal error"),
            AppError::WechatUnavailable(e) => tracing::warn!(error = %e, "wechat unavailable"),
            _ => {}
        }
        let mut body = self.details();
        body.insert("code".into(), json!(self.code()));
        body.insert("message".into(), json!(self.to_string()));
        HttpResponse::build(self.status_code()).json(json!({ "error": body }))
    }
}

impl From<WechatError> for AppError {
    fn from(e: WechatError) -> Self {
        let is_final = e.is_final();
        match e {
            WechatError::Login { errcode, errmsg } if is_final => {
                AppError::LoginRejected { errcode, errmsg }
            }
            WechatError::Business { code, message } if is_final => {
                AppError::WechatRefused { code, message }
            }
            other => AppError::WechatUnavailable(other.to_string()),
        }
    }
}

impl From<OrderError> for AppError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::NotFound => AppError::NotFound("order"),
            OrderError::Storage(s) => AppError::Storage(s),
            OrderError::Wechat(w) => w.into(),
            OrderError::PaymentDisabled => AppError::PaymentUnavailable,
            OrderError::Panicked | OrderError::Mailbox(_) => AppError::OrderBusy,
        }
    }
}

impl From<CreateOrderError> for AppError {
    fn from(e: CreateOrderError) -> Self {
        match e {
            CreateOrderError::PaymentUnavailable => AppError::PaymentUnavailable,
            CreateOrderError::UnknownPackage => AppError::NotFound("package"),
            CreateOrderError::PackageInactive(id) => AppError::PackageInactive(id),
            CreateOrderError::UnknownUser => AppError::Unauthorized("unknown user"),
            CreateOrderError::NoFreeNumber => AppError::Internal("no free order number".into()),
            e @ CreateOrderError::NoPrepayId(_) => AppError::Internal(e.to_string()),
            CreateOrderError::Storage(s) => AppError::Storage(s),
            CreateOrderError::Order(o) => o.into(),
            CreateOrderError::Refused(w) => w.into(),
        }
    }
}

impl From<ReconcileError> for AppError {
    fn from(e: ReconcileError) -> Self {
        match e {
            ReconcileError::PaymentUnavailable => AppError::PaymentUnavailable,
            e @ ReconcileError::FutureDate(_) => AppError::validation("bill_date", e.to_string()),
            ReconcileError::Storage(s) => AppError::Storage(s),
        }
    }
}

impl From<RefundError> for AppError {
    fn from(e: RefundError) -> Self {
        match e {
            RefundError::Disabled => AppError::RefundsDisabled,
            RefundError::Invalid { field, message } => AppError::validation(field, message),
            RefundError::RequestIdConflict => AppError::RequestIdConflict,
            RefundError::NotFound => AppError::NotFound("refund"),
            RefundError::Storage(s) => AppError::Storage(s),
            // A panic or a closed mailbox: nothing was decided; the same request_id may retry.
            RefundError::Actor(_) => AppError::OrderBusy,
            RefundError::Refused(r) => match r {
                ReserveRefusal::OrderNotFound => AppError::NotFound("order"),
                ReserveRefusal::NotPaid(status) => AppError::OrderNotPaid(status.to_string()),
                ReserveRefusal::Amount(a) => AppError::validation("refund_fen", a.to_string()),
                ReserveRefusal::TooManyRefunds => AppError::TooManyRefunds,
                ReserveRefusal::Overdue => AppError::RefundOverdue,
                ReserveRefusal::Insufficient { balance, coins } => AppError::InsufficientBalance {
                    balance: balance.0,
                    requested: coins.0,
                },
            },
        }
    }
}

/// actix's own extractor errors (bad JSON, bad query, bad path) as our JSON 400s.
pub fn json_error_handler(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    AppError::BadRequest(format!("invalid JSON body: {err}")).into()
}
pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    AppError::BadRequest(format!("invalid query string: {err}")).into()
}
pub fn path_error_handler(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    AppError::BadRequest(format!("invalid path: {err}")).into()
}
