//! A WeChat Pay v2 + jscode2session simulator served by our own binary (tests, benchmarks, demo).
//!
//! Routes are relative: mount with `web::scope("/sandbox").configure(|c| sb.configure(c))`, or
//! at "/" for `coinpay sandbox --bind`. Payments happen through `POST /simulate/pay/{no}`, which
//! delivers signed notifications on WeChat's retry schedule (§4.5) scaled by `time_scale`.
//!
//! Refunds (`secapi/pay/refund`, which needs a client certificate and so the TLS listener of
//! `tls.rs`), `pay/refundquery`, refund notifications and `pay/downloadbill` follow
//! wechatpay-next.md; tests drive them through `/simulate/refunds*` and `/simulate/bills/faults`.

mod bill;
mod login;
mod notifier;
mod pay;
mod refund;
mod simulate;
mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::{App, HttpServer, web};
use secrecy::SecretString;

use crate::wechat::Params;
use crate::wechat::sign::SignType;
use crate::wechat::xml::MAX_BODY;

pub use bill::{BillFaults, ChangedAmount, ExtraPayment, ExtraRefund};
pub use notifier::RETRY_SCHEDULE_SECS;
pub use refund::{RefundFaults, SimRefundStatus};
pub use state::Faults;
use state::State;
pub use tls::{SandboxTls, SandboxTlsError, SandboxTlsFiles, serve_tls};

/// The simulated merchant and mini-program. Its secrets are `SecretString`s like the service's
/// own: `serve --sandbox` copies configured credentials into it.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub app_id: String,
    pub app_secret: SecretString,
    pub mch_id: String,
    pub api_key: SecretString,
    /// Notifications use this unless the order's unifiedorder carried an explicit
    /// `sign_type` (then that one, as WeChat does).
    pub sign_type: SignType,
    /// 1.0 = WeChat's real retry schedule; 0.001 compresses 24 h into ~86 s.
    pub time_scale: f64,
    /// Add a `sign_type` field to notifications (real ones usually omit it, §9.2).
    pub notify_sign_type_field: bool,
}

impl SandboxConfig {
    /// Fixed, obviously fake credentials shared by tests and the demo.
    pub fn default_credentials() -> Self {
        SandboxConfig {
            app_id: "wx5a9d1c0e7b3f2468".into(),
            app_secret: "5b1f0c9e8d7a6b5c4d3e2f1a0b9c8d7e".into(),
            mch_id: "1900000109".into(),
            api_key: "SandboxApiKey0123456789abcdefXYZ".into(),
            sign_type: SignType::Md5,
            time_scale: 1.0,
            notify_sign_type_field: false,
        }
    }

    fn scale(&self) -> f64 {
        if self.time_scale.is_finite() && self.time_scale >= 0.0 {
            self.time_scale
        } else {
            1.0
        }
    }
}

/// The fields of a SUCCESS payment notification as this simulator's WeChat sends them, unsigned
/// (sign with `wechat::notify::build_notification`). For tests and the benchmark, which post
/// notifications for orders the simulator never saw.
pub fn paid_notification_fields(
    cfg: &SandboxConfig,
    out_trade_no: &str,
    transaction_id: &str,
    total_fee: i64,
) -> Params {
    let fee = total_fee.to_string();
    [
        ("appid", cfg.app_id.as_str()),
        ("mch_id", cfg.mch_id.as_str()),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
        ("openid", "oSandboxOpenid00000000000000"),
        ("is_subscribe", "N"),
        ("trade_type", "JSAPI"),
        ("bank_type", "OTHERS"),
        ("fee_type", "CNY"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("time_end", "20261126120000"),
        ("out_trade_no", out_trade_no),
        ("transaction_id", transaction_id),
        ("total_fee", fee.as_str()),
        ("cash_fee", fee.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SandboxConfig,
    state: Mutex<State>,
}

impl Sandbox {
    pub fn new(cfg: SandboxConfig) -> Self {
        crate::wechat::client::install_crypto_provider();
        Sandbox {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.cfg
    }

    /// The state stays usable after a panic elsewhere: it is test data, not money.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        let data = web::Data::new(self.clone());
        let payload = web::PayloadConfig::new(MAX_BODY);
        let pay_route = |path: &str, api: pay::Api| {
            web::resource(path.to_owned())
                .app_data(data.clone())
                .app_data(payload.clone())
                .app_data(web::Data::new(api))
                .route(web::post().to(pay::handle))
        };
        let xml_route = |path: &str| {
            web::resource(path.to_owned())
                .app_data(data.clone())
                .app_data(payload.clone())
        };
        let json_route = |path: &str| {
            web::resource(path.to_owned())
                .app_data(data.clone())
                .app_data(web::JsonConfig::default().limit(4096))
        };
        cfg.service(xml_route("/secapi/pay/refund").route(web::post().to(refund::refund)))
            .service(xml_route("/pay/refundquery").route(web::post().to(refund::refund_query)))
            .service(xml_route("/pay/downloadbill").route(web::post().to(bill::download)))
            // Before `/simulate/refunds/{no}`, which would otherwise match "faults".
            .service(
                json_route("/simulate/refunds/faults")
                    .route(web::post().to(refund::set_faults))
                    .route(web::delete().to(refund::clear_faults)),
            )
            .service(
                json_route("/simulate/refunds")
                    .route(web::get().to(refund::list))
                    .route(web::post().to(refund::portal_refund)),
            )
            .service(
                json_route("/simulate/refunds/{out_refund_no}").route(web::get().to(refund::one)),
            )
            .service(
                json_route("/simulate/refunds/{out_refund_no}/settle")
                    .route(web::post().to(refund::settle)),
            )
            .service(
                json_route("/simulate/bills/faults")
                    .route(web::post().to(bill::set_faults))
                    .route(web::delete().to(bill::clear_faults)),
            );
        cfg.service(pay_route("/pay/unifiedorder", pay::Api::UnifiedOrder))
            .service(pay_route("/pay/orderquery", pay::Api::OrderQuery))
            .service(pay_route("/pay/closeorder", pay::Api::CloseOrder))
            .service(
                web::resource("/sns/jscode2session")
                    .app_data(data.clone())
                    .route(web::get().to(login::jscode2session)),
            )
            .service(
                web::resource("/simulate/pay/{out_trade_no}")
                    .app_data(data.clone())
                    .route(web::post().to(simulate::pay)),
            )
            .service(
                web::resource("/simulate/faults")
                    .app_data(data.clone())
                    .app_data(web::JsonConfig::default().limit(4096))
                    .route(web::post().to(simulate::set_faults))
                    .route(web::delete().to(simulate::clear_faults)),
            )
            .service(
                web::resource("/simulate/orders/{out_trade_no}")
                    .app_data(data.clone())
                    .route(web::get().to(simulate::order)),
            )
            .service(
                web::resource("/simulate/notifications")
                    .app_data(data.clone())
                    .route(web::get().to(simulate::notifications)),
            );
    }
}

/// Binds the simulator at "/" without starting it: returns the server (spawn or await it)
/// and the bound addresses (port 0 gets a free port). Signals are left to the caller.
pub fn serve(
    bind: SocketAddr,
    sandbox: Sandbox,
) -> std::io::Result<(actix_web::dev::Server, Vec<SocketAddr>)> {
    let server = HttpServer::new(move || {
        let sb = sandbox.clone();
        App::new().configure(move |c| sb.configure(c))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(bind)?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}

/// Where `coinpay sandbox --tls-bind ADDR --tls-dir DIR` serves TLS and writes its PEM files.
#[derive(Clone, Debug)]
pub struct StandaloneTls {
    pub bind: SocketAddr,
    pub dir: std::path::PathBuf,
}

/// `coinpay sandbox --bind ADDR`: the simulator alone, until Ctrl-C. With `tls`, the same
/// simulator also listens over TLS (refunds need it) and writes `ca.pem`, `apiclient_cert.pem`
/// and `apiclient_key.pem` into its directory.
pub async fn run_standalone_with_tls(
    bind: SocketAddr,
    cfg: SandboxConfig,
    tls: Option<StandaloneTls>,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return run_standalone(bind, cfg).await;
    };
    let material = SandboxTls::generate(&cfg.mch_id).map_err(std::io::Error::other)?;
    let files = material.write_files(&tls.dir)?;
    let sandbox = Sandbox::new(cfg);
    let (tls_server, tls_addr) = serve_tls(tls.bind, sandbox.clone(), &material)?;
    let plain = HttpServer::new(move || {
        let sb = sandbox.clone();
        App::new().configure(move |c| sb.configure(c))
    })
    .bind(bind)?;
    for addr in plain.addrs() {
        tracing::info!(%addr, "WeChat Pay sandbox listening");
        println!("coinpay sandbox listening on http://{addr}");
    }
    tracing::info!(addr = %tls_addr, dir = %tls.dir.display(), "WeChat Pay sandbox listening over TLS");
    println!("coinpay sandbox listening on https://{tls_addr}");
    println!(
        "coinpay sandbox TLS files: WECHAT_PAY_CA_PATH={} WECHAT_PAY_CERT_PATH={} WECHAT_PAY_KEY_PATH={}",
        files.ca_path.display(),
        files.cert_path.display(),
        files.key_path.display()
    );
    // The plain server keeps actix's signal handling; when it stops, the TLS one follows.
    let tls_handle = tls_server.handle();
    actix_rt::spawn(tls_server);
    let r = plain.run().await;
    tls_handle.stop(true).await;
    r
}

/// `coinpay sandbox --bind ADDR`: the simulator alone, until Ctrl-C.
pub async fn run_standalone(bind: SocketAddr, cfg: SandboxConfig) -> std::io::Result<()> {
    let sandbox = Sandbox::new(cfg);
    let server = HttpServer::new(move || {
        let sb = sandbox.clone();
        App::new().configure(move |c| sb.configure(c))
    })
    .bind(bind)?;
    for addr in server.addrs() {
        tracing::info!(%addr, "WeChat Pay sandbox listening");
        // Machine-readable, like `serve`: scripts and tests read the bound port here.
        println!("coinpay sandbox listening on http://{addr}");
    }
    server.run().await
}
