//! Read-only admin endpoints the operator console needs beside the admin API's own:
//!
//! - `GET /api/v1/admin/search?q=` — one box for an order_no, a transaction_id, a user id or
//!   an openid; answers every match (`{"matches": [{"kind": "order", "order_no"} | {"kind":
//!   "user", "user_id"}]}`), 404 when there is none.
//! - `GET /api/v1/admin/orders/{order_no}/ledger` — the ledger rows the order caused.
//! - `GET /api/v1/admin/users/{id}/ledger?page=&page_size=` — a user's ledger, paginated.
//! - `GET /api/v1/admin/users/{id}/orders?page=&page_size=` — a user's orders, paginated, 404
//!   for an unknown user (where `GET /api/v1/admin/orders?user_id=` answers an empty page).
//! - `GET /api/v1/admin/orders/{order_no}/refund-preview?refund_fen=` — the coins a refund of
//!   that amount would take back, before the operator confirms it (nothing is written).
//!
//! They are registered ahead of the admin API's scope, which would otherwise answer 404 for
//! every path under `/api/v1/admin` it does not know.

use actix_web::{HttpResponse, get, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::AdminCaller;
use super::views::{LedgerView, OrderView, PageQuery};
use crate::error::AppError;
use crate::order::state::OrderStatus;
use crate::refund::state::coins_to_take;
use crate::store::{ledger, orders, stats, users};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(search)
        .service(order_ledger)
        .service(user_ledger)
        .service(user_orders)
        .service(refund_preview);
}

/// Longest text searched for: ids are at most 64 characters, openids 128.
const MAX_QUERY: usize = 128;

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

#[get("/api/v1/admin/search")]
async fn search(
    _a: AdminCaller,
    st: web::Data<AppState>,
    q: web::Query<SearchQuery>,
) -> Result<HttpResponse, AppError> {
    let text = q.q.as_deref().unwrap_or("").trim();
    if text.is_empty() {
        return Err(AppError::validation("q", "is required"));
    }
    if text.chars().count() > MAX_QUERY {
        return Err(AppError::validation(
            "q",
            format!("must be at most {MAX_QUERY} characters"),
        ));
    }
    let mut matches: Vec<Value> = Vec::new();
    let order = |row: orders::OrderRow| json!({ "kind": "order", "order_no": row.order_no, "user_id": row.user_id, "status": row.status });
    if let Some(row) = orders::get(&st.db, text).await? {
        matches.push(order(row));
    }
    if let Some(row) = orders::get_by_transaction(&st.db, text).await? {
        matches.push(order(row));
    }
    let by_id = match text.parse::<i64>() {
        Ok(id) => users::get(&st.db, id).await?,
        Err(_) => None,
    };
    for u in by_id
        .into_iter()
        .chain(users::by_openid(&st.db, text).await?)
    {
        matches.push(json!({ "kind": "user", "user_id": u.id, "openid": u.openid }));
    }
    matches.dedup();
    if matches.is_empty() {
        return Err(AppError::NotFound("order or user"));
    }
    Ok(HttpResponse::Ok().json(json!({ "query": text, "matches": matches })))
}

#[get("/api/v1/admin/orders/{order_no}/ledger")]
async fn order_ledger(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let order_no = path.into_inner();
    orders::get(&st.db, &order_no)
        .await?
        .ok_or(AppError::NotFound("order"))?;
    let rows = stats::ledger_for_order(&st.db, &order_no).await?;
    let logs: Vec<LedgerView> = rows.iter().map(LedgerView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "order_no": order_no, "logs": logs })))
}

/// The user id of the path, once the user is known to exist, and the page asked for.
async fn known_user_page(
    st: &AppState,
    path: web::Path<i64>,
    q: &PageQuery,
) -> Result<(i64, (i64, i64, i64)), AppError> {
    let user_id = path.into_inner();
    users::get(&st.db, user_id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    Ok((user_id, q.resolve()))
}

#[get("/api/v1/admin/users/{id}/ledger")]
async fn user_ledger(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<i64>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    let (user_id, (page, size, offset)) = known_user_page(&st, path, &q).await?;
    let (rows, total) = ledger::list_for_user(&st.db, user_id, offset, size).await?;
    let logs: Vec<LedgerView> = rows.iter().map(LedgerView::from).collect();
    Ok(HttpResponse::Ok().json(json!({
        "user_id": user_id, "logs": logs, "page": page, "page_size": size, "total": total,
    })))
}

#[get("/api/v1/admin/users/{id}/orders")]
async fn user_orders(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<i64>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    let (user_id, (page, size, offset)) = known_user_page(&st, path, &q).await?;
    let filter = orders::OrderFilter {
        user_id: Some(user_id),
        ..Default::default()
    };
    let (rows, total) = orders::list(&st.db, &filter, offset, size).await?;
    let views: Vec<OrderView> = rows.iter().map(OrderView::from).collect();
    Ok(HttpResponse::Ok().json(json!({
        "user_id": user_id, "orders": views, "page": page, "page_size": size, "total": total,
    })))
}

#[derive(Deserialize)]
struct PreviewQuery {
    refund_fen: Option<String>,
}

#[get("/api/v1/admin/orders/{order_no}/refund-preview")]
async fn refund_preview(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<PreviewQuery>,
) -> Result<HttpResponse, AppError> {
    let refund_fen: i64 = q
        .refund_fen
        .as_deref()
        .ok_or_else(|| AppError::validation("refund_fen", "is required"))?
        .trim()
        .parse()
        .map_err(|_| AppError::validation("refund_fen", "must be an integer number of fen"))?;
    let row = orders::get(&st.db, &path)
        .await?
        .ok_or(AppError::NotFound("order"))?;
    if row.status != OrderStatus::Paid {
        return Err(AppError::validation(
            "refund_fen",
            "only a paid order can be refunded",
        ));
    }
    let before = stats::refunded_by_ledger(&st.db, &row.order_no).await?;
    let coins = coins_to_take(row.amount_fen.0, row.credit().0, before, refund_fen)
        .map_err(|e| AppError::validation("refund_fen", e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({
        "order_no": row.order_no,
        "refund_fen": refund_fen,
        "coins": coins,
        "refundable_fen": (row.amount_fen.0 - before.fen).max(0),
        "coins_left": (row.credit().0 - before.coins).max(0),
    })))
}
