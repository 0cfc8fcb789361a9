//! HTTP: routes, shared state, request ids and metrics middleware.

pub mod admin;
pub mod admin_lookup;
pub mod admin_overview;
pub mod auth;
pub mod callback;
pub mod client;
pub mod client_ip;
pub mod console;
pub mod internal;
pub mod limits;
pub mod ops;
pub mod reconciliations;
pub mod refund_callback;
pub mod refunds;
pub mod views;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::{HttpRequest, HttpResponse, web};
use ipnet::IpNet;
use tracing::Instrument;

use crate::config::Settings;
use crate::error::AppError;
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
use crate::redis::RedisPool;
use crate::service::orders::OrderService;
use crate::service::reconcile::ReconcileService;
use crate::service::refunds::RefundService;
use crate::store::DbPool;
use crate::wechat::client::LoginClient;

/// What every handler borrows: the configuration, the services and the pools they read from.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DbPool,
    pub redis: Option<RedisPool>,
    /// Creating orders and handing events to their actors.
    pub orders: OrderService,
    /// Daily reconciliation against WeChat's bill.
    pub reconcile: Arc<ReconcileService>,
    /// Refunds: operators' requests, WeChat's results, the poller.
    pub refunds: Arc<RefundService>,
    /// jscode2session: needs WECHAT_APP_ID and WECHAT_APP_SECRET only.
    pub login: Option<LoginClient>,
    pub metrics: Arc<Metrics>,
    pub jwt: auth::JwtKeys,
}

/// The caller's address, as an extractor: X-Forwarded-For is believed only from the proxies in
/// TRUSTED_PROXIES.
pub struct ClientIp(pub IpAddr);

impl actix_web::FromRequest for ClientIp {
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let trusted = req
            .app_data::<web::Data<AppState>>()
            .map(|st| st.settings.trusted_proxies.as_slice())
            .unwrap_or_default();
        std::future::ready(Ok(ClientIp(peer_ip(req, trusted))))
    }
}

fn peer_ip(req: &HttpRequest, trusted: &[IpNet]) -> IpAddr {
    let peer = req
        .peer_addr()
        .map(|a| client_ip::canonical(a.ip()))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    client_ip::resolve(peer, xff, trusted)
}

/// Every route of the public listener.
pub fn routes(cfg: &mut web::ServiceConfig, metrics_here: bool) {
    // Routes are matched in this order (and matched again for the metrics' route label):
    // WeChat's notification, the busiest, first, ahead of the patterns with path parameters.
    cfg.service(callback::resource())
        .service(refund_callback::resource())
        .service(client::login)
        .service(client::list_packages)
        .service(client::create_order)
        .service(client::get_order)
        .service(client::list_orders)
        .service(client::balance)
        .service(client::logs)
        .service(internal::consume)
        .service(internal::user_balance)
        .service(ops::healthz)
        .service(ops::readyz)
        // The console's admin endpoints ahead of the admin API's scope (which 404s the rest).
        .configure(admin_overview::routes)
        .configure(admin_lookup::routes)
        .configure(reconciliations::routes)
        .configure(admin::routes)
        .configure(console::routes);
    if metrics_here {
        cfg.service(ops::metrics);
    }
}

pub async fn not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::NotFound("route"))
}

/// Extractor configuration: malformed input is a JSON 400.
pub fn extractor_config(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(crate::error::json_error_handler),
    )
    .app_data(web::QueryConfig::default().error_handler(crate::error::query_error_handler))
    .app_data(web::PathConfig::default().error_handler(crate::error::path_error_handler));
}

/// Request id, a span per request, and the request metrics.
pub fn observe<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + use<S, B>
where
    S: Service<
            actix_web::dev::ServiceRequest,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
        >,
{
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_string)
        .unwrap_or_else(|| crate::wechat::sign::nonce()[..16].to_string());
    let method = req.method().to_string();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    // user_id is filled in by the AuthUser extractor once the token is checked.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        path = %req.path(),
        user_id = tracing::field::Empty
    );
    let fut = srv.call(req);
    async move {
        let res = fut.await;
        let (status, route) = match &res {
            Ok(r) => (
                r.status().as_u16(),
                r.request()
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".to_string()),
            ),
            Err(e) => (
                e.as_response_error().status_code().as_u16(),
                "unmatched".to_string(),
            ),
        };
        if let Some(m) = metrics {
            m.http_requests
                .get_or_create(&HttpLabels {
                    route: route.clone(),
                    method: method.clone(),
                    status: status.to_string(),
                })
                .inc();
            m.http_duration
                .get_or_create(&RouteLabels { route, method })
                .observe(started.elapsed().as_secs_f64());
        }
        tracing::debug!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request done"
        );
        res.map(|mut r| {
            if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&request_id) {
                r.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static("x-request-id"),
                    v,
                );
            }
            r
        })
    }
    .instrument(span)
}
