//! Liveness, readiness and metrics for operators.

use std::time::Duration;

use actix_web::{HttpResponse, get, web};
use serde_json::json;

use super::AppState;
use crate::redis::redis_ping;
use crate::store::orders;

#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Each readiness check gets this long: a database or Redis that hangs (a frozen server, a
/// half-open connection) must not hang the probe, which load balancers time out at about 1 s.
const CHECK_TIMEOUT: Duration = Duration::from_millis(700);

/// What one check found, as /readyz reports it.
async fn check<E: std::fmt::Display>(
    what: &str,
    probe: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("down: {e}")),
        Err(_) => Err(format!(
            "timeout: {what} did not answer within {} ms",
            CHECK_TIMEOUT.as_millis()
        )),
    }
}

/// 503 naming what did not answer when the database (or a configured Redis) is down or does
/// not answer within [`CHECK_TIMEOUT`]; the checks run at once, so the probe answers within it.
#[get("/readyz")]
pub async fn readyz(st: web::Data<AppState>) -> HttpResponse {
    let db = check("the database", st.db.ping());
    let redis = async {
        match &st.redis {
            Some(pool) => Some(check("Redis", redis_ping(pool)).await),
            None => None,
        }
    };
    let (db, redis) = futures_util::future::join(db, redis).await;
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    st.metrics.db_up.set(db.is_ok() as i64);
    ready &= db.is_ok();
    checks.insert(
        "database".into(),
        json!(db.err().unwrap_or_else(|| "ok".into())),
    );
    if let Some(r) = redis {
        st.metrics.redis_up.set(r.is_ok() as i64);
        ready &= r.is_ok();
        checks.insert(
            "redis".into(),
            json!(r.err().unwrap_or_else(|| "ok".into())),
        );
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
    // Bounded like /readyz: a frozen database must not hang the scrape.
    let stats = tokio::time::timeout(CHECK_TIMEOUT, orders::pending_stats(&st.db))
        .await
        .unwrap_or_else(|_| {
            Err(crate::store::StoreError::Connection(
                "no answer within the readiness timeout".into(),
            ))
        });
    match stats {
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
        Some(pool) => check("Redis", redis_ping(pool)).await.is_ok(),
        None => false,
    };
    m.redis_up.set(redis_up as i64);
    m.live_actors.set(st.orders.live_actors() as i64);
    if let Err(e) = st.reconcile.refresh_metrics().await {
        tracing::warn!(error = %e, "metrics: could not read the last reconciliation");
    }
}
