//! The internal API for our compute service: spend coins. Authorised by INTERNAL_API_TOKEN.

use actix_web::{HttpResponse, get, post, web};
use serde_json::{Value, json};

use super::AppState;
use super::auth::InternalCaller;
use crate::error::AppError;
use crate::money::Coins;
use crate::store::ledger::{self, LedgerKind, MoveOutcome, Movement};
use crate::store::users;

pub const MAX_REQUEST_ID: usize = 64;

/// Field readers that name the field in their 422.
pub fn int_field(body: &Value, name: &str) -> Result<i64, AppError> {
    match body.get(name) {
        None | Some(Value::Null) => Err(AppError::validation(name, "is required")),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| AppError::validation(name, "must be an integer")),
    }
}
pub fn str_field<'a>(body: &'a Value, name: &str, max: usize) -> Result<&'a str, AppError> {
    match body.get(name) {
        None | Some(Value::Null) => Err(AppError::validation(name, "is required")),
        Some(v) => {
            let s = v
                .as_str()
                .ok_or_else(|| AppError::validation(name, "must be a string"))?
                .trim();
            if s.is_empty() {
                Err(AppError::validation(name, "must not be empty"))
            } else if s.chars().count() > max {
                Err(AppError::validation(
                    name,
                    format!("must be at most {max} characters"),
                ))
            } else {
                Ok(s)
            }
        }
    }
}

/// The answer to a consume or an adjustment, the same for its replays.
pub fn movement_reply(
    outcome: MoveOutcome,
    requested: i64,
) -> Result<(HttpResponse, &'static str), AppError> {
    match outcome {
        MoveOutcome::Applied(row) => Ok((ledger_reply(&row, false), "ok")),
        MoveOutcome::Replayed(row) => Ok((ledger_reply(&row, true), "replayed")),
        MoveOutcome::RequestIdConflict(_) => Err(AppError::RequestIdConflict),
        MoveOutcome::Insufficient { balance } => Err(AppError::InsufficientBalance {
            balance: balance.0,
            requested,
        }),
        MoveOutcome::UnknownUser => Err(AppError::NotFound("user")),
    }
}

fn ledger_reply(row: &ledger::LedgerRow, replayed: bool) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "user_id": row.user_id,
        "balance": row.balance_after,
        "ledger_id": row.id,
        "delta": row.delta,
        "request_id": row.request_id,
        "replayed": replayed,
    }))
}

#[post("/api/v1/internal/coin/consume")]
pub async fn consume(
    _caller: InternalCaller,
    st: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, AppError> {
    let user_id = int_field(&body, "user_id")?;
    let amount = int_field(&body, "amount")?;
    if amount <= 0 {
        return Err(AppError::validation(
            "amount",
            "must be a positive number of coins",
        ));
    }
    let request_id = str_field(&body, "request_id", MAX_REQUEST_ID)?;
    let reason = str_field(&body, "reason", 255)?;
    let m = Movement {
        kind: LedgerKind::Consume,
        user_id,
        delta: Coins(-amount),
        request_id,
        reason,
    };
    let result = ledger::apply_movement(&st.db, &m).await;
    let outcome = match &result {
        Ok(MoveOutcome::Applied(_)) => "ok",
        Ok(MoveOutcome::Replayed(_)) => "replayed",
        Ok(MoveOutcome::RequestIdConflict(_)) => "request_id_conflict",
        Ok(MoveOutcome::Insufficient { .. }) => "insufficient_balance",
        Ok(MoveOutcome::UnknownUser) => "unknown_user",
        Err(_) => "storage_error",
    };
    st.metrics.consume(outcome);
    let (resp, _) = movement_reply(result?, amount)?;
    tracing::info!(user_id, amount, request_id, outcome, "consume");
    Ok(resp)
}

#[get("/api/v1/internal/users/{user_id}/balance")]
pub async fn user_balance(
    _caller: InternalCaller,
    st: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let user = users::get(&st.db, path.into_inner())
        .await?
        .ok_or(AppError::NotFound("user"))?;
    Ok(HttpResponse::Ok().json(json!({ "user_id": user.id, "balance": user.balance })))
}
