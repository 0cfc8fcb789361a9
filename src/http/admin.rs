//! The operators' API, authorised by ADMIN_API_TOKEN. Every write is logged at info with its
//! action, target and reason (the audit trail) and counted in /metrics.

use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::AdminCaller;
use super::internal::{MAX_REQUEST_ID, int_field, movement_reply, str_field};
use super::views::{LedgerView, OrderView, PackageView, PageQuery};
use crate::error::AppError;
use crate::money::{Coins, Fen};
use crate::order::actor::Outcome;
use crate::store::ledger::{self, LedgerKind, Movement};
use crate::store::orders::{self, OrderFilter};
use crate::store::packages::{self, Package, PackageFields};
use crate::store::users::{self, User};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/admin")
            .service(list_packages)
            .service(create_package)
            .service(
                web::resource("/packages/{id}")
                    .route(web::put().to(update_package))
                    .route(web::patch().to(update_package)),
            )
            .service(get_order)
            .service(list_orders)
            .service(recheck_order)
            .service(get_user)
            .service(find_user)
            .service(adjust_balance),
    );
}

fn audit(st: &AppState, action: &str, target: &str, reason: &str) {
    st.metrics.admin_action(action);
    tracing::info!(audit = true, action, target, reason, "admin action");
}

#[get("/packages")]
async fn list_packages(_a: AdminCaller, st: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let all = packages::list_all(&st.db).await?;
    let views: Vec<PackageView> = all.iter().map(PackageView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "packages": views })))
}

/// Reads package fields from `body`, taking missing ones from `base` (an update), and checks them.
fn package_fields(body: &Value, base: Option<&Package>) -> Result<PackageFields, AppError> {
    let int = |name: &str, current: Option<i64>| -> Result<i64, AppError> {
        match (body.get(name), current) {
            (None | Some(Value::Null), Some(c)) => Ok(c),
            _ => int_field(body, name),
        }
    };
    let name = match (body.get("name"), base) {
        (None | Some(Value::Null), Some(p)) => p.name.clone(),
        _ => str_field(body, "name", 64)?.to_string(),
    };
    let coins = int("coins", base.map(|p| p.coins.0))?;
    let bonus_coins = match (body.get("bonus_coins"), base) {
        (None | Some(Value::Null), None) => 0,
        _ => int("bonus_coins", base.map(|p| p.bonus_coins.0))?,
    };
    let price_fen = int("price_fen", base.map(|p| p.price_fen.0))?;
    let sort_order = match (body.get("sort_order"), base) {
        (None | Some(Value::Null), None) => 0,
        _ => int("sort_order", base.map(|p| p.sort_order as i64))?,
    };
    let active = match body.get("active") {
        None | Some(Value::Null) => base.map(|p| p.active).unwrap_or(true),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| AppError::validation("active", "must be true or false"))?,
    };
    if coins < 0 {
        return Err(AppError::validation("coins", "must not be negative"));
    }
    if bonus_coins < 0 {
        return Err(AppError::validation("bonus_coins", "must not be negative"));
    }
    if coins + bonus_coins <= 0 {
        return Err(AppError::validation(
            "coins",
            "the package must give some coins",
        ));
    }
    if price_fen <= 0 {
        return Err(AppError::validation(
            "price_fen",
            "must be a positive amount in fen",
        ));
    }
    let sort_order = i32::try_from(sort_order)
        .map_err(|_| AppError::validation("sort_order", "out of range"))?;
    Ok(PackageFields {
        name,
        coins: Coins(coins),
        bonus_coins: Coins(bonus_coins),
        price_fen: Fen(price_fen),
        sort_order,
        active,
    })
}

fn reason(body: &Value) -> String {
    body.get("reason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

#[post("/packages")]
async fn create_package(
    _a: AdminCaller,
    st: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, AppError> {
    let f = package_fields(&body, None)?;
    let p = packages::create(&st.db, &f).await?;
    audit(
        &st,
        "package_create",
        &format!("package:{}", p.id),
        &reason(&body),
    );
    Ok(HttpResponse::Created().json(PackageView::from(&p)))
}

/// PUT or PATCH: the fields given change, the others stay. Orders keep what they were created with.
async fn update_package(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<i64>,
    body: web::Json<Value>,
) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let current = packages::get(&st.db, id)
        .await?
        .ok_or(AppError::NotFound("package"))?;
    let f = package_fields(&body, Some(&current))?;
    let p = packages::update(&st.db, id, &f)
        .await?
        .ok_or(AppError::NotFound("package"))?;
    audit(
        &st,
        "package_update",
        &format!("package:{id}"),
        &reason(&body),
    );
    Ok(HttpResponse::Ok().json(PackageView::from(&p)))
}

#[get("/orders/{order_no}")]
async fn get_order(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let row = orders::get(&st.db, &path)
        .await?
        .ok_or(AppError::NotFound("order"))?;
    Ok(HttpResponse::Ok().json(admin_order(&row)))
}

fn admin_order(row: &orders::OrderRow) -> Value {
    let mut v = serde_json::to_value(OrderView::from(row)).unwrap_or(Value::Null);
    v["user_id"] = json!(row.user_id);
    v["prepay_id"] = json!(row.prepay_id);
    v["version"] = json!(row.version);
    v
}

#[derive(Deserialize)]
struct OrderListQuery {
    transaction_id: Option<String>,
    user_id: Option<i64>,
    status: Option<String>,
    /// Creation time range, RFC 3339 or epoch milliseconds; `to` is exclusive.
    from: Option<String>,
    to: Option<String>,
    // Not `#[serde(flatten)] PageQuery`: a flattened struct reaches serde_urlencoded's values as
    // strings, so `?page=1` was refused as "expected i64".
    page: Option<i64>,
    page_size: Option<i64>,
}

fn parse_time(field: &str, v: &str) -> Result<i64, AppError> {
    v.parse::<i64>()
        .ok()
        .or_else(|| {
            chrono::DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.timestamp_millis())
        })
        .ok_or_else(|| AppError::validation(field, "must be RFC 3339 or epoch milliseconds"))
}

#[get("/orders")]
async fn list_orders(
    _a: AdminCaller,
    st: web::Data<AppState>,
    q: web::Query<OrderListQuery>,
) -> Result<HttpResponse, AppError> {
    if let Some(txn) = &q.transaction_id {
        let row = orders::get_by_transaction(&st.db, txn)
            .await?
            .ok_or(AppError::NotFound("order"))?;
        return Ok(HttpResponse::Ok().json(json!({ "orders": [admin_order(&row)], "total": 1 })));
    }
    let filter = OrderFilter {
        user_id: q.user_id,
        status: q
            .status
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|_| AppError::validation("status", "unknown status"))
            })
            .transpose()?,
        created_from: q
            .from
            .as_deref()
            .map(|v| parse_time("from", v))
            .transpose()?,
        created_to: q.to.as_deref().map(|v| parse_time("to", v)).transpose()?,
    };
    let (page, size, offset) = PageQuery {
        page: q.page,
        page_size: q.page_size,
    }
    .resolve();
    let (rows, total) = orders::list(&st.db, &filter, offset, size).await?;
    let views: Vec<Value> = rows.iter().map(admin_order).collect();
    Ok(HttpResponse::Ok().json(json!({
        "orders": views, "page": page, "page_size": size, "total": total,
    })))
}

/// Asks WeChat now and applies the answer through the order's actor, as the sweeper would,
/// but an order that is not yet due is never expired.
#[post("/orders/{order_no}/recheck")]
async fn recheck_order(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let order_no = path.into_inner();
    let reply = st.orders.recheck(&order_no).await?;
    let outcome = match &reply.outcome {
        Outcome::Moved { to, late, .. } => json!({ "moved_to": to, "late": late }),
        Outcome::Stayed(s) => json!({ "stayed": format!("{s:?}") }),
        Outcome::Refused(r) => json!({ "refused": r.to_string() }),
        Outcome::Unchanged => json!("unchanged"),
    };
    audit(
        &st,
        "order_recheck",
        &format!("order:{order_no}"),
        "operator re-check",
    );
    Ok(HttpResponse::Ok().json(json!({ "order": admin_order(&reply.row), "outcome": outcome })))
}

async fn user_view(st: &AppState, u: User) -> Result<HttpResponse, AppError> {
    let (rows, total) = ledger::list_for_user(&st.db, u.id, 0, 20).await?;
    let logs: Vec<LedgerView> = rows.iter().map(LedgerView::from).collect();
    Ok(HttpResponse::Ok().json(json!({
        "user": { "id": u.id, "openid": u.openid, "unionid": u.unionid, "balance": u.balance,
                  "created_at": super::views::time(u.created_at) },
        "recent_logs": logs,
        "total_logs": total,
    })))
}

#[get("/users/{id}")]
async fn get_user(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let u = users::get(&st.db, path.into_inner())
        .await?
        .ok_or(AppError::NotFound("user"))?;
    user_view(&st, u).await
}

#[derive(Deserialize)]
struct UserQuery {
    openid: String,
}

#[get("/users")]
async fn find_user(
    _a: AdminCaller,
    st: web::Data<AppState>,
    q: web::Query<UserQuery>,
) -> Result<HttpResponse, AppError> {
    let u = users::by_openid(&st.db, &q.openid)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    user_view(&st, u).await
}

#[post("/balance/adjust")]
async fn adjust_balance(
    _a: AdminCaller,
    st: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, AppError> {
    let user_id = int_field(&body, "user_id")?;
    let delta = int_field(&body, "delta")?;
    if delta == 0 {
        return Err(AppError::validation("delta", "must not be zero"));
    }
    let request_id = str_field(&body, "request_id", MAX_REQUEST_ID)?;
    let reason = str_field(&body, "reason", 255)?;
    let m = Movement {
        kind: LedgerKind::Adjust,
        user_id,
        delta: Coins(delta),
        request_id,
        reason,
    };
    let outcome = ledger::apply_movement(&st.db, &m).await?;
    let (resp, what) = movement_reply(outcome, -delta)?;
    if what == "ok" {
        tracing::info!(audit = true, action = "balance_adjust", target = %format!("user:{user_id}"), delta, request_id, reason, "admin action");
        st.metrics.admin_action("balance_adjust");
    }
    Ok(resp)
}
