//! Wiring: pools, actors, the HTTP servers, and graceful shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use secrecy::ExposeSecret;

use crate::config::{INCOMPLETE_PAY_WARNING, Settings, parse_cron};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::order::actor::OrderCore;
use crate::order::number::OrderNumbers;
use crate::order::registry::order_registry;
use crate::order::sweeper::{SweepConfig, Sweeper};
use crate::redis::{RedisError, redis_pool};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxTls, serve_tls};
use crate::service::orders::OrderService;
use crate::service::reconcile::ReconcileService;
use crate::service::reconcile_job::{ReconcileJob, ReconcileJobConfig};
use crate::service::refund_poller::RefundPoller;
use crate::service::refunds::RefundService;
use crate::store::{self, DbPool};
use crate::wechat::client::{CallObserver, LoginClient, WechatClient};
use crate::wechat::tls::PayTls;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("login tokens: {0}")]
    Jwt(#[from] http::auth::TokenError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Reconcile(#[from] crate::service::reconcile::ReconcileError),
}

pub struct Application {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    server: Server,
    metrics_server: Option<Server>,
    sweeper: Sweeper,
    reconcile_job: ReconcileJob,
    refund_poller: RefundPoller,
    shutdown_timeout: Duration,
}

fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr).map_err(|source| StartupError::Bind { addr, source })
}

/// `serve --sandbox`: the simulator's credentials where none are configured, WeChat's base
/// URLs pointing at our own /sandbox, notifications to our own callback from loopback.
fn apply_sandbox(settings: &mut Settings, addr: SocketAddr) -> SandboxConfig {
    let defaults = SandboxConfig::default_credentials();
    let w = &mut settings.wechat;
    let base = format!("http://{addr}/sandbox");
    w.app_id.get_or_insert(defaults.app_id);
    w.app_secret.get_or_insert(defaults.app_secret);
    w.mch_id.get_or_insert(defaults.mch_id);
    w.api_key.get_or_insert(defaults.api_key);
    w.notify_url
        .get_or_insert_with(|| format!("http://{addr}/api/v1/client/coin/recharge/callback"));
    if w.pay_api_base == crate::config::WECHAT_PAY_API_BASE_DEFAULT {
        w.pay_api_base = base.clone();
    }
    if w.api_base == crate::config::WECHAT_API_BASE_DEFAULT {
        w.api_base = base;
    }
    if !w.ip_whitelist_explicit {
        w.ip_whitelist = Some(vec![
            "127.0.0.0/8".parse().unwrap_or_else(|_| unreachable!()),
            "::1/128".parse().unwrap_or_else(|_| unreachable!()),
        ]);
    }
    sandbox_config_from(settings)
}

pub fn sandbox_config_from(settings: &Settings) -> SandboxConfig {
    let d = SandboxConfig::default_credentials();
    let w = &settings.wechat;
    SandboxConfig {
        app_id: w.app_id.clone().unwrap_or(d.app_id.clone()),
        app_secret: w.app_secret.clone().unwrap_or(d.app_secret.clone()),
        mch_id: w.mch_id.clone().unwrap_or(d.mch_id.clone()),
        api_key: w.api_key.clone().unwrap_or(d.api_key.clone()),
        sign_type: w.sign_type(),
        time_scale: settings.sandbox_time_scale,
        ..d
    }
}

/// The TLS settings of every WeChat Pay call: the configured client certificate and extra
/// root (a bad or half-configured pair stops start-up naming the variable), or, for
/// `serve --sandbox` without them, the simulator's own: it then also listens over TLS on a
/// free loopback port with a generated test CA and merchant certificate, and every pay call
/// goes there, so that refunds work with no configuration.
fn pay_tls(
    settings: &mut Settings,
    sandbox: Option<&Sandbox>,
) -> Result<Option<PayTls>, StartupError> {
    let w = &settings.wechat;
    let configured = w.cert_path.is_some() || w.key_path.is_some() || w.ca_path.is_some();
    if configured {
        let tls = PayTls::from_paths(
            w.cert_path.as_deref(),
            w.key_path.as_deref(),
            w.ca_path.as_deref(),
        )
        .map_err(|e| crate::config::ConfigError {
            var: e.variable(),
            problem: e.to_string(),
        })?;
        return Ok(Some(tls));
    }
    let Some(sb) = sandbox else {
        return Ok(None);
    };
    let material = SandboxTls::generate(&sb.config().mch_id).map_err(std::io::Error::other)?;
    let (server, addr) = serve_tls(SocketAddr::from(([127, 0, 0, 1], 0)), sb.clone(), &material)?;
    actix_rt::spawn(server);
    let identity = material
        .merchant_identity()
        .map_err(std::io::Error::other)?;
    let tls = PayTls::new(&[material.ca_der()], Some(&identity)).map_err(std::io::Error::other)?;
    if settings.wechat.pay_api_base.ends_with("/sandbox") {
        settings.wechat.pay_api_base = format!("https://{addr}");
    }
    tracing::info!(%addr, "sandbox: WeChat Pay over TLS with a generated test CA (refunds enabled)");
    Ok(Some(tls))
}

/// The sweeper lease's holder: stable for one host and listener, so that an instance restarted
/// after a crash (kill -9, OOM) is the holder it was and sweeps again at its next tick instead of
/// waiting out the lease it held. Two live instances never share it: on one host they cannot
/// listen on the same address, and on two hosts their names differ (set `INSTANCE_ID` where
/// hosts share a name, e.g. containers with a fixed hostname).
fn instance_holder(settings: &Settings, addr: SocketAddr) -> String {
    let host = settings.instance_id.clone().unwrap_or_else(host_name);
    format!("{host}@{addr}")
}

/// The kernel's host name; `HOSTNAME` (which a shell sets but often does not export) otherwise.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

impl Application {
    pub async fn build(mut settings: Settings, sandbox: bool) -> Result<Self, StartupError> {
        let listener = bind(settings.bind_addr)?;
        let addr = listener.local_addr()?;
        let sandbox_cfg = sandbox.then(|| apply_sandbox(&mut settings, addr));
        settings.check_against_wechat()?;

        let missing = settings.wechat.missing_pay();
        if !missing.is_empty() {
            tracing::warn!(missing = ?missing, "{INCOMPLETE_PAY_WARNING}");
        }
        if settings.wechat.ip_whitelist.is_none() {
            tracing::warn!(
                "WECHAT_PAY_IP_WHITELIST is empty: notifications are accepted from any address (the signature still guards them)"
            );
        }

        let applied = store::run_migrations(&settings.database_url).await?;
        tracing::info!(applied, "migrations checked");
        let db = DbPool::connect_with(
            &settings.database_url,
            settings.db_pool_size,
            settings.write_batch(),
        )
        .await?;
        let redis = match &settings.redis {
            Some(r) => Some(redis_pool(r.url().expose_secret())?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        metrics.redis_configured.set(redis.is_some() as i64);
        let observer: CallObserver = {
            let m = metrics.clone();
            Arc::new(move |api, outcome, elapsed| {
                m.wechat_call(api, outcome, elapsed.as_secs_f64())
            })
        };
        let sandbox_app = sandbox_cfg.map(Sandbox::new);
        let tls = pay_tls(&mut settings, sandbox_app.as_ref())?;
        // Each client exists only when its credentials are complete (config.rs decides).
        let pay = settings.wechat.pay_config().map(|c| {
            let client = WechatClient::new(c).with_observer(observer.clone());
            match &tls {
                Some(tls) => client.with_tls(tls.clone()),
                None => client,
            }
        });
        let refund_client = pay.as_ref().and_then(WechatClient::refunds);
        if refund_client.is_none() {
            tracing::warn!(
                "WECHAT_PAY_CERT_PATH/WECHAT_PAY_KEY_PATH are not set: refunds are disabled"
            );
        }
        let login = settings
            .wechat
            .login_config()
            .map(|c| LoginClient::new(c).with_observer(observer));
        let service_pay = pay.clone();
        let reconcile_pay = pay.clone();

        let settings = Arc::new(settings);

        let core = Arc::new(OrderCore {
            db: db.clone(),
            wechat: pay,
            metrics: metrics.clone(),
            settings: settings.clone(),
        });
        let registry = order_registry(
            core,
            Duration::from_secs(settings.actor_idle_secs),
            Duration::from_secs(settings.actor_linger_secs),
        );
        let numbers = OrderNumbers::new(
            redis.clone(),
            settings.instance_id.as_deref(),
            metrics.clone(),
        );
        if settings.jwt_secret.is_none() {
            tracing::warn!(
                "JWT_SECRET is not set: using a random secret; tokens end with this process and do not work across instances"
            );
        }
        let jwt =
            http::auth::JwtKeys::from_config(settings.jwt_secret.as_ref(), settings.jwt_ttl_secs)?;
        let reconcile = Arc::new(ReconcileService::new(
            db.clone(),
            reconcile_pay,
            registry.clone(),
            metrics.clone(),
        ));
        let refunds = Arc::new(RefundService::new(
            db.clone(),
            refund_client,
            settings.wechat.refund_notify_url(),
            settings.wechat.refund_poll_after_secs,
            metrics.clone(),
        ));
        let state = web::Data::new(AppState {
            refunds: refunds.clone(),
            settings: settings.clone(),
            db: db.clone(),
            redis,
            orders: OrderService::new(
                db.clone(),
                registry.clone(),
                numbers,
                service_pay,
                settings.order_expire_secs,
                metrics.clone(),
            ),
            reconcile: reconcile.clone(),
            login,
            metrics: metrics.clone(),
            jwt,
        });

        let holder = instance_holder(&settings, addr);
        let reconcile_cfg = ReconcileJobConfig {
            schedule: parse_cron("RECONCILE_CRON", &settings.reconcile_cron)?,
            retry: Duration::from_secs(settings.reconcile_retry_secs),
            holder: holder.clone(),
            lease: Duration::from_secs(settings.lease_secs as u64),
        };
        let reconcile_job =
            ReconcileJob::start(reconcile_cfg, reconcile, db.clone(), metrics.clone());
        let sweep_cfg = SweepConfig {
            schedule: parse_cron("ORDER_SWEEP_CRON", &settings.order_sweep_cron)?,
            holder,
            lease: Duration::from_secs(settings.lease_secs as u64),
            batch_size: settings.sweep_batch_size,
            concurrency: settings.sweep_concurrency,
        };
        let refund_poller = RefundPoller::start(sweep_cfg.clone(), db.clone(), refunds);
        let sweeper = Sweeper::start(sweep_cfg, registry, db, metrics);

        let metrics_here = settings.metrics_bind_addr.is_none();
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            let sandbox_app = sandbox_app.clone();
            App::new()
                .app_data(app_state.clone())
                .configure(http::extractor_config)
                .wrap_fn(http::limits::cap_headers)
                .wrap_fn(http::observe)
                .configure(|c| http::routes(c, metrics_here))
                .configure(|c| {
                    if let Some(sb) = &sandbox_app {
                        c.service(web::scope("/sandbox").configure(|c| sb.configure(c)));
                    }
                })
                .default_service(web::to(http::not_found))
        })
        .workers(settings.workers())
        .listen(listener)?
        .shutdown_timeout(settings.shutdown_timeout_secs)
        .disable_signals()
        .run();

        let (metrics_server, metrics_addr) = match settings.metrics_bind_addr {
            Some(maddr) => {
                let l = bind(maddr)?;
                let bound = l.local_addr()?;
                let st = state.clone();
                let srv = HttpServer::new(move || {
                    App::new()
                        .app_data(st.clone())
                        .service(http::ops::metrics)
                        .default_service(web::to(http::not_found))
                })
                .listen(l)?
                .workers(1)
                .disable_signals()
                .run();
                (Some(srv), Some(bound))
            }
            None => (None, None),
        };
        Ok(Application {
            addr,
            metrics_addr,
            server,
            metrics_server,
            sweeper,
            reconcile_job,
            refund_poller,
            shutdown_timeout: Duration::from_secs(settings.shutdown_timeout_secs),
        })
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully: no new connections, the
    /// sweeper stops after its current orders and gives its lease back, in-flight requests
    /// (notifications mid-transaction) finish, then the process exits.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let metrics_handle = self.metrics_server.as_ref().map(|s| s.handle());
        let sweeper = self.sweeper;
        let reconcile_job = self.reconcile_job;
        let refund_poller = self.refund_poller;
        let timeout = self.shutdown_timeout;
        actix_rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: finishing in-flight work");
            let stop_http = handle.stop(true);
            let stop_sweeper = async {
                // The poller first: the sweeper gives back the lease they share.
                if tokio::time::timeout(timeout, refund_poller.stop())
                    .await
                    .is_err()
                {
                    tracing::warn!("refund poller did not stop in time");
                }
                reconcile_job.stop().await;
                if tokio::time::timeout(timeout, sweeper.stop()).await.is_err() {
                    tracing::warn!("sweeper did not stop in time");
                }
            };
            futures_util::future::join(stop_http, stop_sweeper).await;
            if let Some(h) = metrics_handle {
                h.stop(true).await;
            }
        });
        let main = self.server;
        match self.metrics_server {
            Some(m) => {
                let (a, b) = futures_util::future::join(main, m).await;
                a.and(b)
            }
            None => main.await,
        }?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// `coinpay reconcile --date`: one day, reconciled in this process beside any running
/// instance. Its `missing_local` credits go through order actors of this process, which write
/// with the same compare-and-set as the service's, so that a payment is credited once whoever
/// gets there first.
pub async fn reconcile_once(
    settings: Settings,
    date: chrono::NaiveDate,
) -> Result<crate::service::reconcile::Run, StartupError> {
    settings.check_against_wechat()?;
    store::run_migrations(&settings.database_url).await?;
    let db = DbPool::connect(&settings.database_url, 2).await?;
    let metrics = Arc::new(Metrics::new());
    let pay = settings.wechat.pay_config().map(WechatClient::new);
    let settings = Arc::new(settings);
    let core = Arc::new(OrderCore {
        db: db.clone(),
        wechat: pay.clone(),
        metrics: metrics.clone(),
        settings: settings.clone(),
    });
    let registry = order_registry(
        core,
        Duration::from_secs(settings.actor_idle_secs),
        Duration::from_secs(settings.actor_linger_secs),
    );
    let service = ReconcileService::new(db, pay, registry, metrics);
    Ok(service.run(date).await?)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
