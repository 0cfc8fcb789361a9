//! The mini-program's API. Handlers parse, call one service or send one message, and map.

use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use serde_json::json;

use super::auth::AuthUser;
use super::views::{LedgerView, OrderView, PackageView, PageQuery, time};
use super::{AppState, ClientIp};
use crate::error::AppError;
use crate::store::orders::OrderFilter;
use crate::store::{ledger, orders, packages, users};

#[derive(Deserialize)]
pub struct LoginBody {
    code: String,
}

#[post("/api/v1/client/auth/login")]
pub async fn login(
    st: web::Data<AppState>,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, AppError> {
    let code = body.code.trim();
    if code.is_empty() || code.len() > 256 {
        return Err(AppError::validation("code", "must be the wx.login code"));
    }
    let client = st.login.as_ref().ok_or(AppError::LoginUnavailable)?;
    let session = client.code_to_session(code).await?;
    let user = users::upsert_by_openid(&st.db, &session.openid, session.unionid.as_deref()).await?;
    let token = st.jwt.issue(user.id, chrono::Utc::now().timestamp())?;
    tracing::info!(user_id = user.id, "user logged in");
    Ok(HttpResponse::Ok().json(json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": st.jwt.ttl_secs,
        "user": { "id": user.id, "balance": user.balance },
    })))
}

#[get("/api/v1/client/coin/packages")]
pub async fn list_packages(st: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let list = packages::list_active(&st.db).await?;
    let views: Vec<PackageView> = list.iter().map(PackageView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "packages": views })))
}

#[derive(Deserialize)]
pub struct CreateOrderBody {
    package_id: i64,
}

#[post("/api/v1/client/coin/recharge/order")]
pub async fn create_order(
    st: web::Data<AppState>,
    user: AuthUser,
    ClientIp(client_ip): ClientIp,
    body: web::Json<CreateOrderBody>,
) -> Result<HttpResponse, AppError> {
    let created = st.orders.create(user.0, body.package_id, client_ip).await?;
    let mut view = serde_json::to_value(OrderView::from(&created.row))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    view["pay_params"] =
        serde_json::to_value(&created.pay_params).map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(view))
}

#[get("/api/v1/client/coin/recharge/order/{order_no}")]
pub async fn get_order(
    st: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let order_no = path.into_inner();
    // The DB row decides ownership; someone else's order looks like no order at all.
    let row = orders::get(&st.db, &order_no)
        .await?
        .filter(|o| o.user_id == user.0)
        .ok_or(AppError::NotFound("order"))?;
    Ok(HttpResponse::Ok().json(OrderView::from(&row)))
}

#[get("/api/v1/client/coin/recharge/orders")]
pub async fn list_orders(
    st: web::Data<AppState>,
    user: AuthUser,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    let (page, size, offset) = q.resolve();
    let filter = OrderFilter {
        user_id: Some(user.0),
        ..Default::default()
    };
    let (rows, total) = orders::list(&st.db, &filter, offset, size).await?;
    let views: Vec<OrderView> = rows.iter().map(OrderView::from).collect();
    Ok(HttpResponse::Ok().json(json!({
        "orders": views, "page": page, "page_size": size, "total": total,
    })))
}

#[get("/api/v1/client/coin/balance")]
pub async fn balance(st: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, AppError> {
    let u = users::get(&st.db, user.0)
        .await?
        .ok_or(AppError::Unauthorized("unknown user"))?;
    Ok(HttpResponse::Ok()
        .json(json!({ "user_id": u.id, "balance": u.balance, "updated_at": time(u.updated_at) })))
}

#[get("/api/v1/client/coin/logs")]
pub async fn logs(
    st: web::Data<AppState>,
    user: AuthUser,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    let (page, size, offset) = q.resolve();
    let (rows, total) = ledger::list_for_user(&st.db, user.0, offset, size).await?;
    let views: Vec<LedgerView> = rows.iter().map(LedgerView::from).collect();
    Ok(HttpResponse::Ok().json(json!({
        "logs": views, "page": page, "page_size": size, "total": total,
    })))
}
