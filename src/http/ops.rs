//! Liveness, readiness and metrics for operators.

use actix_web::{HttpResponse, get, web};
use serde_json::json;

use super::AppState;
use crate::redis::redis_ping;
use crate::store::orders;

#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// 503 with the reason when the database (or a configured Redis) does not answer.
#[get("/readyz")]
pub async fn readyz(st: web::Data<AppState>) -> HttpResponse {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    match st.db.ping().await {
        Ok(()) => {
            checks.insert("database".into(), json!("ok"));
            st.metrics.db_up.set(1);
        }
        Err(e) => {
            ready = false;
            st.metrics.db_up.set(0);
            checks.insert("database".into(), json!(format!("down: {e}")));
        }
    }
    if let Some(pool) = &st.redis {
        match redis_ping(pool).await {
            Ok(()) => {
                st.metrics.redis_up.set(1);
                checks.insert("redis".into(), json!("ok"));
            }
            Err(e) => {
                ready = false;
                st.metrics.redis_up.set(0);
                checks.insert("redis".into(), json!(format!("down: {e}")));
            }
        }
    }
    let body = json!({ "status": if ready { "ready" } else { "unavailable" }, "checks": checks });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[get("/metrics")]
pub async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    refresh_gauges(&st).await;
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(st.metrics.encode())
}

/// Gauges read at scrape time.
pub async fn refresh_gauges(st: &AppState) {
    let m = &st.metrics;
    match orders::pending_stats(&st.db).await {
        Ok((count, oldest)) => {
            m.db_up.set(1);
            m.pending_orders.set(count);
            let age = oldest
                .map(|t| ((crate::store::now_ms() - t).max(0) as f64) / 1000.0)
                .unwrap_or(0.0);
            m.oldest_pending_age.set(age);
        }
        Err(e) => {
            m.db_up.set(0);
            tracing::warn!(error = %e, "metrics: database unavailable");
        }
    }
    if let Ok((count, oldest)) = crate::store::refunds::processing_stats(&st.db).await {
        m.refunds_processing.set(count);
        m.oldest_processing_refund_age.set(
            oldest
                .map(|t| ((crate::store::now_ms() - t).max(0) as f64) / 1000.0)
                .unwrap_or(0.0),
        );
    }
    let (conns, idle) = st.db.pool_state();
    for (state, v) in [("idle", idle), ("active", conns.saturating_sub(idle))] {
        m.db_connections
            .get_or_create(&crate::metrics::StateLabels {
                state: state.to_string(),
            })
            .set(v as i64);
    }
    let redis_up = match &st.redis {
        Some(pool) => redis_ping(pool).await.is_ok(),
        None => false,
    };
    m.redis_up.set(redis_up as i64);
    m.live_actors.set(st.orders.live_actors() as i64);
    if let Err(e) = st.reconcile.refresh_metrics().await {
        tracing::warn!(error = %e, "metrics: could not read the last reconciliation");
    }
}
