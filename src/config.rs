//! Settings from the environment (and `.env`, loaded by `main`). Variable names follow the
//! seed's configuration guide; they are a contract with existing deployments.
//!
//! Values are parsed once, here, into the types the rest of the service works with: the
//! database URL becomes a [`DbUrl`] (its scheme is looked at nowhere else), the WeChat
//! credentials become a [`WechatConfig`] or [`LoginConfig`] only when every part of them is
//! set (so no client ever holds an empty key), and every key, token and password is a
//! [`SecretString`], whose `Debug` prints `[REDACTED]`: `{:?}` of the settings cannot leak one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::wechat::client::{LoginConfig, LoginCredentials, PayCredentials, WechatConfig};
use crate::wechat::sign::SignType;

/// Logged exactly like this when the WeChat Pay settings are incomplete (the seed's §5.1).
pub const INCOMPLETE_PAY_WARNING: &str = "微信支付配置不完整，支付功能可能不可用";

/// The seed's default allow-list (stale) united with WeChat's current callback ranges
/// (wechatpay-v2.md §8), so that neither old nor new deployments silently drop notifications.
pub const SEED_IP_WHITELIST: &str = "182.254.48.0/24,140.207.54.0/24,101.226.103.0/24";
pub const CURRENT_WECHAT_CALLBACK_RANGES: &[&str] = &[
    "101.226.103.0/25",
    "140.207.54.0/25",
    "121.51.58.128/25",
    "183.3.234.0/25",
    "58.251.80.0/25",
    "121.51.30.128/25",
    "203.205.219.128/25",
];

pub const WECHAT_PAY_API_BASE_DEFAULT: &str = "https://api.mch.weixin.qq.com";
pub const WECHAT_API_BASE_DEFAULT: &str = "https://api.weixin.qq.com";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/coinpay.db";
/// WeChat refuses closeorder within 5 minutes of creation.
pub const MIN_EXPIRE_SECONDS_REAL_WECHAT: i64 = 300;

#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

fn bad(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

/// DATABASE_URL, parsed: which backend, and where.
#[derive(Clone, Debug)]
pub enum DbUrl {
    /// `sqlite://PATH`: a file (created with its directory when missing).
    Sqlite(PathBuf),
    /// `mysql://user:password@host:port/db`, kept whole for the driver; secret because of the
    /// password in it.
    Mysql(SecretString),
}

impl FromStr for DbUrl {
    type Err = ConfigError;

    fn from_str(url: &str) -> Result<Self, ConfigError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            Ok(DbUrl::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("mysql://") {
            Ok(DbUrl::Mysql(SecretString::from(url)))
        } else {
            Err(bad(
                "DATABASE_URL",
                "must start with sqlite:// (a file path) or mysql://",
            ))
        }
    }
}

impl DbUrl {
    /// The backend's name, as `check-config` and the metrics show it.
    pub fn backend(&self) -> &'static str {
        match self {
            DbUrl::Sqlite(_) => "sqlite",
            DbUrl::Mysql(_) => "mysql",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub host: String,
    pub port: u16,
    pub password: Option<SecretString>,
    pub db: i64,
}

impl RedisSettings {
    /// The connection URL; secret, since it carries the password.
    pub fn url(&self) -> SecretString {
        let auth = match &self.password {
            Some(p) => format!(":{}@", url_escape(p.expose_secret())),
            None => String::new(),
        };
        SecretString::from(format!(
            "redis://{auth}{}:{}/{}",
            self.host, self.port, self.db
        ))
    }
}

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The WeChat settings as configured; any of them may be missing (then payment is off).
/// [`WechatSettings::pay_config`] and [`WechatSettings::login_config`] turn them into what
/// the clients need, or into nothing when a part is missing.
#[derive(Clone, Debug, Default)]
pub struct WechatSettings {
    pub app_id: Option<String>,
    pub app_secret: Option<SecretString>,
    pub mch_id: Option<String>,
    pub api_key: Option<SecretString>,
    pub notify_url: Option<String>,
    pub sign_type: Option<SignType>,
    pub pay_api_base: String,
    pub api_base: String,
    /// `None`: the allow-list is switched off (an explicitly empty WECHAT_PAY_IP_WHITELIST).
    pub ip_whitelist: Option<Vec<IpNet>>,
    pub ip_whitelist_explicit: bool,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub order_body: String,
    /// WECHAT_PAY_REFUND_NOTIFY_URL; `None`: derived from the pay notify URL.
    pub refund_notify_url: Option<String>,
    /// WECHAT_PAY_CERT_PATH / WECHAT_PAY_KEY_PATH (refunds; both or neither) and
    /// WECHAT_PAY_CA_PATH (an extra trusted root for every WeChat Pay call).
    pub cert_path: Option<std::path::PathBuf>,
    pub key_path: Option<std::path::PathBuf>,
    pub ca_path: Option<std::path::PathBuf>,
    /// REFUND_POLL_AFTER_SECS: a refund still processing this long is asked about (refundquery).
    pub refund_poll_after_secs: u64,
}

impl WechatSettings {
    pub fn sign_type(&self) -> SignType {
        self.sign_type.unwrap_or(SignType::Md5)
    }
    /// Names of the pay settings that are missing.
    pub fn missing_pay(&self) -> Vec<&'static str> {
        [
            ("WECHAT_APP_ID", self.app_id.is_some()),
            ("WECHAT_PAY_MCH_ID", self.mch_id.is_some()),
            ("WECHAT_PAY_API_KEY", self.api_key.is_some()),
            ("WECHAT_PAY_NOTIFY_URL", self.notify_url.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| (!set).then_some(name))
        .collect()
    }

    pub fn pay_complete(&self) -> bool {
        self.pay_config().is_some()
    }

    /// Where WeChat sends refund results: WECHAT_PAY_REFUND_NOTIFY_URL, else the pay notify URL
    /// with `recharge/callback` replaced by `refund/callback`.
    pub fn refund_notify_url(&self) -> Option<String> {
        self.refund_notify_url.clone().or_else(|| {
            self.notify_url
                .as_ref()
                .map(|u| u.replace("recharge/callback", "refund/callback"))
        })
    }

    pub fn login_complete(&self) -> bool {
        self.login_config().is_some()
    }

    /// The pay client's configuration, when all four pay settings are set (the variables
    /// [`Self::missing_pay`] names); otherwise payment is off.
    pub fn pay_config(&self) -> Option<WechatConfig> {
        let (Some(app_id), Some(mch_id), Some(api_key), Some(notify_url)) =
            (&self.app_id, &self.mch_id, &self.api_key, &self.notify_url)
        else {
            return None;
        };
        Some(WechatConfig {
            credentials: PayCredentials {
                app_id: app_id.clone(),
                mch_id: mch_id.clone(),
                api_key: api_key.clone(),
                sign_type: self.sign_type(),
            },
            pay_api_base: self.pay_api_base.clone(),
            notify_url: notify_url.clone(),
            timeout: self.timeout(),
            max_retries: self.max_retries,
        })
    }

    /// The login client's configuration: WECHAT_APP_ID and WECHAT_APP_SECRET are enough.
    pub fn login_config(&self) -> Option<LoginConfig> {
        let (Some(app_id), Some(app_secret)) = (&self.app_id, &self.app_secret) else {
            return None;
        };
        Some(LoginConfig {
            credentials: LoginCredentials {
                app_id: app_id.clone(),
                app_secret: app_secret.clone(),
            },
            api_base: self.api_base.clone(),
            timeout: self.timeout(),
            max_retries: self.max_retries,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn is_real_wechat(&self) -> bool {
        is_wechat_host(&self.pay_api_base)
    }
}

fn is_wechat_host(base: &str) -> bool {
    url::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.ends_with("weixin.qq.com")))
        .unwrap_or(true)
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: DbUrl,
    pub db_pool_size: u32,
    /// At most this many writes are committed together, in one transaction
    /// (`COINPAY_WRITE_BATCH`; 1: one transaction per write); unset, [`Self::write_batch`]
    /// chooses per backend. See `store::writer` and `store::batch`.
    pub write_batch_setting: Option<usize>,
    pub bind_addr: SocketAddr,
    pub metrics_bind_addr: Option<SocketAddr>,
    /// `None` when JWT_SECRET is unset: a random per-process secret is used (tokens then do
    /// not survive a restart nor work across instances; `check-config` flags it).
    pub jwt_secret: Option<SecretString>,
    pub jwt_ttl_secs: i64,
    pub wechat: WechatSettings,
    pub redis: Option<RedisSettings>,
    pub order_expire_secs: i64,
    pub order_sweep_cron: String,
    pub sweep_batch_size: usize,
    pub sweep_concurrency: usize,
    pub lease_secs: i64,
    /// When the previous Beijing day is reconciled against WeChat's bill: a cron expression
    /// evaluated in Beijing time (WeChat's bills follow the Beijing day).
    pub reconcile_cron: String,
    /// After a failed or not-yet-available bill, how long until the next try (same day only).
    pub reconcile_retry_secs: u64,
    pub trusted_proxies: Vec<IpNet>,
    pub internal_api_token: Option<SecretString>,
    pub admin_api_token: Option<SecretString>,
    pub log_format: LogFormat,
    pub instance_id: Option<String>,
    pub sandbox_time_scale: f64,
    pub shutdown_timeout_secs: u64,
    /// An order actor stops after this long without messages...
    pub actor_idle_secs: u64,
    /// ...or this long after its order reached a terminal state.
    pub actor_linger_secs: u64,
    pub fault_injection: bool,
    /// HTTP worker threads; see [`Settings::workers`] for the default.
    pub http_workers: Option<usize>,
}

/// Where settings come from: the process environment in production, a map in unit tests.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

pub struct Env;
impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Source for std::collections::HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// A set, non-blank value.
fn opt(src: &dyn Source, name: &str) -> Option<String> {
    src.get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A set, non-blank value that must never reach a log.
fn secret(src: &dyn Source, name: &str) -> Option<SecretString> {
    opt(src, name).map(SecretString::from)
}

fn parse_or<T: FromStr>(src: &dyn Source, name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match opt(src, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| bad(name, format!("cannot parse {v:?}: {e}"))),
    }
}

pub fn parse_cidrs(var: &'static str, v: &str) -> Result<Vec<IpNet>, ConfigError> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            // A bare address means a single host.
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| bad(var, format!("{s:?} is not a CIDR (like 101.226.103.0/25)")))
        })
        .collect()
}

pub fn default_ip_whitelist() -> Vec<IpNet> {
    let mut v: Vec<IpNet> = SEED_IP_WHITELIST
        .split(',')
        .chain(CURRENT_WECHAT_CALLBACK_RANGES.iter().copied())
        .filter_map(|s| s.parse().ok())
        .collect();
    v.sort();
    v.dedup();
    v
}

pub fn parse_cron(var: &'static str, expr: &str) -> Result<cron::Schedule, ConfigError> {
    cron::Schedule::from_str(expr).map_err(|e| {
        bad(
            var,
            format!("{expr:?} is not a cron expression with a seconds field first (like \"0 * * * * *\"): {e}"),
        )
    })
}

impl Settings {
    /// Group commit's batch size: `COINPAY_WRITE_BATCH` when set, else
    /// [`crate::store::writer::DEFAULT_MAX_BATCH`] on both backends: the size that measured
    /// fastest in the README's batch-size sweep (1, 8, 32, 128) on SQLite and on MariaDB.
    pub fn write_batch(&self) -> usize {
        self.write_batch_setting
            .unwrap_or(crate::store::writer::DEFAULT_MAX_BATCH)
    }

    /// HTTP worker threads: HTTP_WORKERS, else half the cores (at least one). A request mostly
    /// waits on the database, which often shares the machine: on 2 cores with MariaDB, one
    /// worker took 2.7 context switches per paid notification against 12 for two (idle workers
    /// sleep and wake on every round trip) and credited 25% more per second.
    pub fn workers(&self) -> usize {
        self.http_workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env)
    }

    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let database_url: DbUrl = opt(src, "DATABASE_URL")
            .as_deref()
            .unwrap_or(DEFAULT_DATABASE_URL)
            .parse()?;
        let wechat = Self::wechat_from(src)?;

        let order_expire_secs: i64 = parse_or(src, "ORDER_EXPIRE_SECONDS", 1800)?;
        if order_expire_secs <= 0 {
            return Err(bad("ORDER_EXPIRE_SECONDS", "must be positive"));
        }
        let order_sweep_cron =
            opt(src, "ORDER_SWEEP_CRON").unwrap_or_else(|| "0 * * * * *".to_string());
        parse_cron("ORDER_SWEEP_CRON", &order_sweep_cron)?;
        // WeChat starts generating D's bill at 09:00 on D+1 and advises fetching after 10:00.
        let reconcile_cron =
            opt(src, "RECONCILE_CRON").unwrap_or_else(|| "0 30 10 * * *".to_string());
        parse_cron("RECONCILE_CRON", &reconcile_cron)?;

        let redis = match opt(src, "REDIS_HOST") {
            None => None,
            Some(host) => Some(RedisSettings {
                host,
                port: parse_or(src, "REDIS_PORT", 6379)?,
                password: secret(src, "REDIS_PASSWORD"),
                db: parse_or(src, "REDIS_DB", 0)?,
            }),
        };

        let log_format = match opt(src, "LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(
                    "LOG_FORMAT",
                    format!("{other:?} is not one of text, json"),
                ));
            }
        };
        let jwt_secret = secret(src, "JWT_SECRET");
        if let Some(s) = &jwt_secret
            && s.expose_secret().len() < 16
        {
            return Err(bad("JWT_SECRET", "must be at least 16 characters"));
        }
        let sandbox_time_scale: f64 = parse_or(src, "WECHAT_SANDBOX_TIME_SCALE", 1.0)?;
        if !(sandbox_time_scale > 0.0 && sandbox_time_scale.is_finite()) {
            return Err(bad(
                "WECHAT_SANDBOX_TIME_SCALE",
                "must be a positive number",
            ));
        }
        let s = Settings {
            db_pool_size: parse_or(src, "DB_POOL_SIZE", 10)?,
            write_batch_setting: opt(src, "COINPAY_WRITE_BATCH")
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| bad("COINPAY_WRITE_BATCH", "must be a positive number"))
                })
                .transpose()?,
            bind_addr: parse_or(src, "BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 8000)))?,
            metrics_bind_addr: opt(src, "METRICS_BIND_ADDR")
                .map(|v| {
                    v.parse()
                        .map_err(|e| bad("METRICS_BIND_ADDR", format!("{v:?}: {e}")))
                })
                .transpose()?,
            jwt_secret,
            jwt_ttl_secs: parse_or(src, "JWT_TTL_SECONDS", 7 * 24 * 3600)?,
            wechat,
            redis,
            order_expire_secs,
            order_sweep_cron,
            sweep_batch_size: parse_or(src, "ORDER_SWEEP_BATCH", 200)?,
            sweep_concurrency: parse_or(src, "ORDER_SWEEP_CONCURRENCY", 8)?,
            lease_secs: parse_or(src, "ORDER_SWEEP_LEASE_SECONDS", 15)?,
            reconcile_cron,
            reconcile_retry_secs: parse_or(src, "RECONCILE_RETRY_SECONDS", 1800)?,
            trusted_proxies: match opt(src, "TRUSTED_PROXIES") {
                None => Vec::new(),
                Some(v) => parse_cidrs("TRUSTED_PROXIES", &v)?,
            },
            internal_api_token: secret(src, "INTERNAL_API_TOKEN"),
            admin_api_token: secret(src, "ADMIN_API_TOKEN"),
            log_format,
            instance_id: opt(src, "INSTANCE_ID"),
            sandbox_time_scale,
            shutdown_timeout_secs: parse_or(src, "SHUTDOWN_TIMEOUT_SECONDS", 20)?,
            actor_idle_secs: parse_or(src, "ORDER_ACTOR_IDLE_SECONDS", 60)?,
            actor_linger_secs: parse_or(src, "ORDER_ACTOR_LINGER_SECONDS", 30)?,
            http_workers: opt(src, "HTTP_WORKERS")
                .map(|v| match v.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(bad(
                        "HTTP_WORKERS",
                        format!("{v:?} is not a positive number"),
                    )),
                })
                .transpose()?,
            fault_injection: opt(src, "COINPAY_FAULT_INJECTION").as_deref() == Some("1"),
            database_url,
        };
        if s.db_pool_size == 0 {
            return Err(bad("DB_POOL_SIZE", "must be at least 1"));
        }
        if s.write_batch_setting == Some(0) {
            return Err(bad("COINPAY_WRITE_BATCH", "must be at least 1"));
        }
        if s.sweep_batch_size == 0 {
            return Err(bad("ORDER_SWEEP_BATCH", "must be at least 1"));
        }
        if s.sweep_concurrency == 0 {
            return Err(bad("ORDER_SWEEP_CONCURRENCY", "must be at least 1"));
        }
        if s.actor_idle_secs == 0 {
            return Err(bad("ORDER_ACTOR_IDLE_SECONDS", "must be at least 1"));
        }
        if s.actor_linger_secs == 0 {
            return Err(bad("ORDER_ACTOR_LINGER_SECONDS", "must be at least 1"));
        }
        if s.reconcile_retry_secs == 0 {
            return Err(bad("RECONCILE_RETRY_SECONDS", "must be at least 1"));
        }
        if s.lease_secs < 5 {
            return Err(bad("ORDER_SWEEP_LEASE_SECONDS", "must be at least 5"));
        }
        Ok(s)
    }

    /// Rules that depend on where WeChat is; run again once `serve --sandbox` has pointed the
    /// base URLs at the simulator.
    pub fn check_against_wechat(&self) -> Result<(), ConfigError> {
        if self.order_expire_secs < MIN_EXPIRE_SECONDS_REAL_WECHAT && self.wechat.is_real_wechat() {
            return Err(bad(
                "ORDER_EXPIRE_SECONDS",
                "must be at least 300 against WeChat: closeorder is refused within 5 minutes of creation",
            ));
        }
        Ok(())
    }

    fn wechat_from(src: &dyn Source) -> Result<WechatSettings, ConfigError> {
        let pay_api_base = opt(src, "WECHAT_PAY_API_BASE")
            .unwrap_or_else(|| WECHAT_PAY_API_BASE_DEFAULT.into())
            .trim_end_matches('/')
            .to_string();
        let api_base = opt(src, "WECHAT_API_BASE")
            .unwrap_or_else(|| WECHAT_API_BASE_DEFAULT.into())
            .trim_end_matches('/')
            .to_string();
        for (var, v) in [
            ("WECHAT_PAY_API_BASE", &pay_api_base),
            ("WECHAT_API_BASE", &api_base),
        ] {
            match url::Url::parse(v) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => return Err(bad(var, format!("{v:?} is not an http(s) URL"))),
            }
        }
        let real = is_wechat_host(&pay_api_base);

        let api_key = secret(src, "WECHAT_PAY_API_KEY");
        if let Some(k) = &api_key {
            let chars = k.expose_secret().chars().count();
            if chars != 32 {
                return Err(bad(
                    "WECHAT_PAY_API_KEY",
                    format!(
                        "must be the 32-character API v2 key (API密钥), got {chars} characters"
                    ),
                ));
            }
        }
        let notify_url = opt(src, "WECHAT_PAY_NOTIFY_URL");
        if let Some(u) = &notify_url {
            let parsed = url::Url::parse(u)
                .map_err(|e| bad("WECHAT_PAY_NOTIFY_URL", format!("{u:?} is not a URL: {e}")))?;
            // WeChat requires HTTPS; plain http is only for a non-WeChat (sandbox) base URL.
            let plain_http_ok = parsed.scheme() == "http" && !real;
            if parsed.scheme() != "https" && !plain_http_ok {
                return Err(bad(
                    "WECHAT_PAY_NOTIFY_URL",
                    format!("{u:?} must be an https:// URL reachable from the internet"),
                ));
            }
            if parsed.query().is_some() {
                return Err(bad(
                    "WECHAT_PAY_NOTIFY_URL",
                    "must not carry a query string (WeChat drops it)",
                ));
            }
        }
        let sign_type = match opt(src, "WECHAT_PAY_SIGN_TYPE") {
            None => None,
            Some(v) => Some(v.parse::<SignType>().map_err(|_| {
                bad(
                    "WECHAT_PAY_SIGN_TYPE",
                    format!("{v:?} is not one of MD5, HMAC-SHA256"),
                )
            })?),
        };
        let (ip_whitelist, ip_whitelist_explicit) = match src.get("WECHAT_PAY_IP_WHITELIST") {
            None => (Some(default_ip_whitelist()), false),
            Some(v) if v.trim().is_empty() => (None, true),
            Some(v) => (Some(parse_cidrs("WECHAT_PAY_IP_WHITELIST", &v)?), true),
        };
        Ok(WechatSettings {
            app_id: opt(src, "WECHAT_APP_ID"),
            app_secret: secret(src, "WECHAT_APP_SECRET"),
            mch_id: opt(src, "WECHAT_PAY_MCH_ID"),
            api_key,
            notify_url,
            sign_type,
            pay_api_base,
            api_base,
            ip_whitelist,
            ip_whitelist_explicit,
            timeout_ms: parse_or(src, "WECHAT_TIMEOUT_MS", 10_000)?,
            max_retries: parse_or(src, "WECHAT_MAX_RETRIES", 2)?,
            order_body: opt(src, "WECHAT_PAY_BODY").unwrap_or_else(|| "算力充值".into()),
            refund_notify_url: match opt(src, "WECHAT_PAY_REFUND_NOTIFY_URL") {
                Some(u) => match url::Url::parse(&u) {
                    Ok(p) if matches!(p.scheme(), "http" | "https") && p.query().is_none() => {
                        Some(u)
                    }
                    _ => {
                        return Err(bad(
                            "WECHAT_PAY_REFUND_NOTIFY_URL",
                            format!("{u:?} must be an http(s) URL without a query string"),
                        ));
                    }
                },
                None => None,
            },
            cert_path: opt(src, "WECHAT_PAY_CERT_PATH").map(Into::into),
            key_path: opt(src, "WECHAT_PAY_KEY_PATH").map(Into::into),
            ca_path: opt(src, "WECHAT_PAY_CA_PATH").map(Into::into),
            refund_poll_after_secs: parse_or(src, "REFUND_POLL_AFTER_SECS", 60)?,
        })
    }

    /// Current WeChat callback ranges the configured allow-list does not cover.
    pub fn whitelist_missing_current_ranges(&self) -> Vec<&'static str> {
        let Some(list) = &self.wechat.ip_whitelist else {
            return Vec::new();
        };
        CURRENT_WECHAT_CALLBACK_RANGES
            .iter()
            .copied()
            .filter(|r| {
                r.parse::<IpNet>()
                    .map(|net| !list.iter().any(|l| l.contains(&net)))
                    .unwrap_or(false)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn src(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_start_without_anything() {
        let s = Settings::from_source(&src(&[])).expect("defaults");
        assert!(
            matches!(&s.database_url, DbUrl::Sqlite(p) if p.as_path() == std::path::Path::new("data/coinpay.db")),
            "{:?}",
            s.database_url
        );
        assert_eq!(s.order_expire_secs, 1800);
        assert!(!s.wechat.pay_complete());
        assert_eq!(s.wechat.sign_type(), SignType::Md5);
        assert!(s.whitelist_missing_current_ranges().is_empty());
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases = [
            ("WECHAT_PAY_API_KEY", "short"),
            ("WECHAT_PAY_NOTIFY_URL", "http://example.com/cb"),
            ("WECHAT_PAY_IP_WHITELIST", "10.0.0.0/33"),
            ("TRUSTED_PROXIES", "nonsense"),
            ("ORDER_SWEEP_CRON", "*/15 * * * *"),
            ("RECONCILE_CRON", "30 10 * * *"),
            ("RECONCILE_RETRY_SECONDS", "0"),
            ("WECHAT_PAY_SIGN_TYPE", "SHA1"),
            ("LOG_FORMAT", "xml"),
            ("BIND_ADDR", "localhost"),
            ("DATABASE_URL", "postgres://x"),
            ("HTTP_WORKERS", "0"),
            ("ORDER_SWEEP_CONCURRENCY", "0"),
            ("ORDER_SWEEP_BATCH", "0"),
            ("ORDER_ACTOR_LINGER_SECONDS", "0"),
        ];
        for (var, value) in cases {
            let err = Settings::from_source(&src(&[(var, value)])).expect_err(var);
            assert_eq!(err.var, var, "{err}");
        }
    }

    #[test]
    fn group_commit_is_on_for_both_backends_unless_set() {
        let sqlite = Settings::from_source(&src(&[])).expect("defaults");
        assert_eq!(
            sqlite.write_batch(),
            crate::store::writer::DEFAULT_MAX_BATCH
        );
        let mysql = [("DATABASE_URL", "mysql://u:p@127.0.0.1/db")];
        let s = Settings::from_source(&src(&mysql)).expect("mysql");
        assert_eq!(s.write_batch(), crate::store::writer::DEFAULT_MAX_BATCH);
        let set = [mysql[0], ("COINPAY_WRITE_BATCH", "8")];
        assert_eq!(
            Settings::from_source(&src(&set))
                .expect("set")
                .write_batch(),
            8
        );
        for bad in ["0", "-1", "many"] {
            let e =
                Settings::from_source(&src(&[("COINPAY_WRITE_BATCH", bad)])).expect_err("refused");
            assert_eq!(e.var, "COINPAY_WRITE_BATCH", "{bad}");
        }
    }

    #[test]
    fn short_expiry_refused_against_real_wechat() {
        let s = Settings::from_source(&src(&[("ORDER_EXPIRE_SECONDS", "60")])).expect("parses");
        let err = s.check_against_wechat().expect_err("60 s against WeChat");
        assert_eq!(err.var, "ORDER_EXPIRE_SECONDS");
    }

    #[test]
    fn short_expiry_and_http_notify_only_against_a_sandbox() {
        let s = Settings::from_source(&src(&[
            ("WECHAT_PAY_API_BASE", "http://127.0.0.1:9/sandbox"),
            ("ORDER_EXPIRE_SECONDS", "2"),
            ("WECHAT_PAY_NOTIFY_URL", "http://127.0.0.1:9/cb"),
        ]))
        .expect("sandbox settings");
        assert_eq!(s.order_expire_secs, 2);
        assert!(s.check_against_wechat().is_ok());
    }

    #[test]
    fn empty_whitelist_turns_the_check_off_and_stale_list_is_flagged() {
        let s = Settings::from_source(&src(&[("WECHAT_PAY_IP_WHITELIST", "")])).expect("ok");
        assert!(s.wechat.ip_whitelist.is_none());
        let s = Settings::from_source(&src(&[("WECHAT_PAY_IP_WHITELIST", SEED_IP_WHITELIST)]))
            .expect("ok");
        let missing = s.whitelist_missing_current_ranges();
        assert!(missing.contains(&"183.3.234.0/25"), "{missing:?}");
        assert!(!missing.contains(&"101.226.103.0/25"));
    }

    #[test]
    fn redis_url_escapes_password() {
        let r = RedisSettings {
            host: "127.0.0.1".into(),
            port: 6379,
            password: Some("p@ss/word".into()),
            db: 2,
        };
        assert_eq!(
            r.url().expose_secret(),
            "redis://:p%40ss%2Fword@127.0.0.1:6379/2"
        );
    }

    #[test]
    fn database_url_scheme_is_parsed_once() {
        let s = Settings::from_source(&src(&[("DATABASE_URL", "sqlite:///var/lib/c.db")]))
            .expect("sqlite");
        assert!(
            matches!(&s.database_url, DbUrl::Sqlite(p) if p.as_path() == std::path::Path::new("/var/lib/c.db"))
        );
        assert_eq!(s.database_url.backend(), "sqlite");
        let url = "mysql://u:pw@127.0.0.1:3306/coinpay";
        let s = Settings::from_source(&src(&[("DATABASE_URL", url)])).expect("mysql");
        match &s.database_url {
            DbUrl::Mysql(u) => assert_eq!(u.expose_secret(), url, "kept whole for the driver"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.database_url.backend(), "mysql");
        for refused in ["postgres://x", "sqlite:/x", "data/coinpay.db"] {
            let err = refused.parse::<DbUrl>().expect_err(refused);
            assert_eq!(err.var, "DATABASE_URL");
        }
    }

    const KEY: &str = "0123456789abcdef0123456789ABCDEF";

    #[test]
    fn pay_and_login_configs_exist_only_when_complete() {
        let pay = [
            ("WECHAT_APP_ID", "wx1"),
            ("WECHAT_PAY_MCH_ID", "1900000109"),
            ("WECHAT_PAY_API_KEY", KEY),
            ("WECHAT_PAY_NOTIFY_URL", "https://pay.example.com/cb"),
        ];
        let s = Settings::from_source(&src(&pay)).expect("pay settings");
        let cfg = s.wechat.pay_config().expect("complete");
        assert_eq!(cfg.credentials.app_id, "wx1");
        assert_eq!(cfg.credentials.api_key.expose_secret(), KEY);
        assert_eq!(cfg.notify_url, "https://pay.example.com/cb");
        assert!(s.wechat.missing_pay().is_empty());
        assert!(s.wechat.login_config().is_none(), "no WECHAT_APP_SECRET");
        for left_out in 0..pay.len() {
            let mut partial = pay.to_vec();
            let (name, _) = partial.remove(left_out);
            let s = Settings::from_source(&src(&partial)).expect("partial");
            assert!(s.wechat.pay_config().is_none(), "without {name}");
            assert_eq!(s.wechat.missing_pay(), vec![name]);
        }

        let s = Settings::from_source(&src(&[
            ("WECHAT_APP_ID", "wx1"),
            ("WECHAT_APP_SECRET", "app-secret"),
        ]))
        .expect("login settings");
        let login = s.wechat.login_config().expect("login");
        assert_eq!(login.credentials.app_secret.expose_secret(), "app-secret");
        assert_eq!(login.api_base, WECHAT_API_BASE_DEFAULT);
        assert!(s.wechat.pay_config().is_none());
    }

    #[test]
    fn debug_prints_no_secret() {
        let secrets = [
            ("WECHAT_APP_SECRET", "app-secret-9f8e7d6c5b4a"),
            ("WECHAT_PAY_API_KEY", KEY),
            ("JWT_SECRET", "jwt-secret-0a1b2c3d4e5f"),
            ("INTERNAL_API_TOKEN", "internal-token-5f4e3d2c1b0a"),
            ("ADMIN_API_TOKEN", "admin-token-a0b1c2d3e4f5"),
            ("REDIS_PASSWORD", "redis-password-77aa88bb"),
        ];
        let db_password = "db-password-1234abcd";
        let db_url = format!("mysql://coinpay:{db_password}@127.0.0.1:3306/coinpay");
        let mut vars = secrets.to_vec();
        vars.extend([
            ("DATABASE_URL", db_url.as_str()),
            ("REDIS_HOST", "127.0.0.1"),
            ("WECHAT_APP_ID", "wx1"),
            ("WECHAT_PAY_MCH_ID", "1900000109"),
            ("WECHAT_PAY_NOTIFY_URL", "https://pay.example.com/cb"),
        ]);
        let s = Settings::from_source(&src(&vars)).expect("settings");
        let pay = s.wechat.pay_config().expect("pay");
        let login = s.wechat.login_config().expect("login");
        let redis = s.redis.as_ref().expect("redis");
        let printed = [
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{pay:?}"),
            format!("{login:?}"),
            format!("{:?}", redis.url()),
        ];
        for text in &printed {
            for (var, value) in secrets.iter().chain([&("DATABASE_URL", db_password)]) {
                assert!(!text.contains(value), "{var} printed by {{:?}}: {text}");
            }
        }
        // The rest is still there to debug with.
        assert!(printed[0].contains("1900000109") && printed[0].contains("127.0.0.1"));
    }
}
