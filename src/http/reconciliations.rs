//! The reconciliation admin API (issue 13), ADMIN_API_TOKEN like the rest of `/api/v1/admin`:
//!
//! - `POST /api/v1/admin/reconciliations {"bill_date":"2026-11-30"}` — reconciles the Beijing
//!   day now (re-runs allowed; they replace the day's report) and answers the report.
//! - `GET /api/v1/admin/reconciliations?from=&to=` — the days in the range (both inclusive,
//!   `YYYY-MM-DD`; the last 31 days to today by default) with their status:
//!   `{"reconciliations": [{"bill_date","status","error","difference_count","attempts","updated_at"}]}`.
//! - `GET /api/v1/admin/reconciliations/{date}` — one day's report with its differences.
//!
//! Registered ahead of the admin API's scope, which 404s every path it does not know.

use actix_web::{HttpResponse, get, post, web};
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::AdminCaller;
use super::views::time;
use crate::error::AppError;
use crate::order::number::beijing_now;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(run).service(list).service(one);
}

/// The longest range one list answers.
const MAX_DAYS: i64 = 366;

fn date(field: &str, s: &str) -> Result<NaiveDate, AppError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| AppError::validation(field, "must be a date like 2026-11-30"))
}

#[post("/api/v1/admin/reconciliations")]
async fn run(
    _a: AdminCaller,
    st: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, AppError> {
    let bill_date = match body.get("bill_date").and_then(Value::as_str) {
        Some(s) => date("bill_date", s)?,
        None => return Err(AppError::validation("bill_date", "is required")),
    };
    st.metrics.admin_action("reconcile");
    tracing::info!(audit = true, action = "reconcile", target = %bill_date, reason = "", "admin action");
    let run = st.reconcile.run(bill_date).await?;
    Ok(HttpResponse::Ok().json(run.report))
}

#[derive(Deserialize)]
struct Range {
    from: Option<String>,
    to: Option<String>,
}

#[get("/api/v1/admin/reconciliations")]
async fn list(
    _a: AdminCaller,
    st: web::Data<AppState>,
    q: web::Query<Range>,
) -> Result<HttpResponse, AppError> {
    let to = match q.to.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => date("to", s)?,
        None => beijing_now().date_naive(),
    };
    let from = match q.from.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => date("from", s)?,
        None => to - chrono::Duration::days(30),
    };
    if from > to {
        return Err(AppError::validation("from", "must not be after to"));
    }
    if (to - from).num_days() >= MAX_DAYS {
        return Err(AppError::validation(
            "from",
            format!("the range is at most {MAX_DAYS} days"),
        ));
    }
    let days = st.reconcile.list(from, to).await?;
    let days: Vec<Value> = days
        .into_iter()
        .map(|d| {
            json!({
                "bill_date": d.bill_date.format("%Y-%m-%d").to_string(),
                "status": d.status,
                "error": d.error,
                "difference_count": d.difference_count,
                "attempts": d.attempts,
                "updated_at": time(d.updated_at),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "reconciliations": days })))
}

#[get("/api/v1/admin/reconciliations/{date}")]
async fn one(
    _a: AdminCaller,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let day = date("date", &path.into_inner())?;
    match st.reconcile.report(day).await? {
        Some(report) => Ok(HttpResponse::Ok().json(report)),
        None => Err(AppError::NotFound("reconciliation")),
    }
}
