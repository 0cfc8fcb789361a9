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
use crate::order::registry::OrderRegistry;
use crate::order::sweeper::{SweepConfig, Sweeper};
use crate::redis::{RedisError, redis_pool};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::service::orders::OrderService;
use crate::store::{self, DbPool};
use crate::wechat::client::{CallObserver, LoginClient, WechatClient};

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
}

pub struct Application {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    server: Server,
    metrics_server: Option<Server>,
    sweeper: Sweeper,
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
        let db = DbPool::connect(&settings.database_url, settings.db_pool_size).await?;
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
        // Each client exists only when its credentials are complete (config.rs decides).
        let pay = settings
            .wechat
            .pay_config()
            .map(|c| WechatClient::new(c).with_observer(observer.clone()));
        let login = settings
            .wechat
            .login_config()
            .map(|c| LoginClient::new(c).with_observer(observer));
        let service_pay = pay.clone();

        let settings = Arc::new(settings);

        let core = Arc::new(OrderCore {
            db: db.clone(),
            wechat: pay,
            metrics: metrics.clone(),
            settings: settings.clone(),
        });
        let registry = OrderRegistry::new(
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
        let state = web::Data::new(AppState {
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
            login,
            metrics: metrics.clone(),
            jwt,
        });

        let sweep_cfg = SweepConfig {
            schedule: parse_cron("ORDER_SWEEP_CRON", &settings.order_sweep_cron)?,
            holder: instance_holder(&settings, addr),
            lease: Duration::from_secs(settings.lease_secs as u64),
            batch_size: settings.sweep_batch_size,
            concurrency: settings.sweep_concurrency,
        };
        let sweeper = Sweeper::start(sweep_cfg, registry, db, metrics);

        let metrics_here = settings.metrics_bind_addr.is_none();
        let sandbox_app = sandbox_cfg.map(Sandbox::new);
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
        let timeout = self.shutdown_timeout;
        actix_rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: finishing in-flight work");
            let stop_http = handle.stop(true);
            let stop_sweeper = async {
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
