//! The operators' refund API: create a refund of an order, list an order's refunds, show one.
//! Handlers are thin: parse, call `RefundService`, map the answer (errors in `error.rs`).

use actix_web::{HttpResponse, get, post, web};
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::auth::AdminCaller;
use super::internal::{int_field, str_field};
use super::views::time;
use crate::error::AppError;
use crate::money::{Coins, Fen};
use crate::refund::state::RefundStatus;
use crate::service::refunds::{MAX_REASON_CHARS, MAX_REQUEST_ID, RefundInput};
use crate::store::refunds::RefundRow;

/// Registered inside the `/api/v1/admin` scope by `admin::routes`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create_refund)
        .service(list_refunds)
        .service(get_refund);
}

#[derive(Serialize)]
pub struct RefundView {
    pub refund_no: String,
    pub order_no: String,
    pub refund_fen: Fen,
    pub coins: Coins,
    pub status: RefundStatus,
    pub reason: String,
    pub request_id: String,
    pub wechat_refund_id: Option<String>,
    pub wechat_err_code: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub succeeded_at: Option<String>,
}

impl From<&RefundRow> for RefundView {
    fn from(r: &RefundRow) -> Self {
        RefundView {
            refund_no: r.refund_no.clone(),
            order_no: r.order_no.clone(),
            refund_fen: r.refund_fen,
            coins: r.coins,
            status: r.status,
            reason: r.reason.clone(),
            request_id: r.request_id.clone(),
            wechat_refund_id: r.wechat_refund_id.clone(),
            wechat_err_code: r.wechat_err_code.clone(),
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
            succeeded_at: r.succeeded_at.map(time),
        }
    }
}

#[post("/orders/{order_no}/refunds")]
async fn create_refund(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, AppError> {
    let input = RefundInput {
        refund_fen: int_field(&body, "refund_fen")?,
        reason: str_field(&body, "reason", MAX_REASON_CHARS)?.to_string(),
        request_id: str_field(&body, "request_id", MAX_REQUEST_ID)?.to_string(),
    };
    let (row, created) = st.refunds.create(&path, &input).await?;
    if created {
        st.metrics.admin_action("refund");
        tracing::info!(audit = true, action = "refund", target = %row.order_no, refund_no = %row.refund_no, reason = %row.reason, "admin action");
        Ok(HttpResponse::Created().json(RefundView::from(&row)))
    } else {
        Ok(HttpResponse::Ok().json(RefundView::from(&row)))
    }
}

#[get("/orders/{order_no}/refunds")]
async fn list_refunds(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let rows = st.refunds.list_for_order(&path).await?;
    let items: Vec<RefundView> = rows.iter().map(RefundView::from).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "refunds": items })))
}

#[get("/refunds/{refund_no}")]
async fn get_refund(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let row = st.refunds.get(&path).await?;
    Ok(HttpResponse::Ok().json(RefundView::from(&row)))
}
