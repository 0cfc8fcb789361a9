//! HTTP clients for WeChat: [`WechatClient`] for unifiedorder / orderquery / closeorder
//! (§2, §5, §6) and [`LoginClient`] for jscode2session (§7).
//!
//! They are two types because a deployment may have one set of credentials without the
//! other (login works with an app id and secret alone), and each client is built only from
//! complete credentials: a missing key is settled once, by `config`, instead of being
//! re-checked on every call.
//!
//! Refunds (`refund.rs`) and bills (`bill.rs`) add their calls in `impl WechatClient` blocks of
//! their own; TLS settings (client certificate, extra root) come from `tls.rs`.
//!
//! The returned futures are `!Send` (awc): run them on an actix/tokio local runtime, as actix
//! handlers and actors do.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use chrono::{DateTime, FixedOffset, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::Params;
use super::sign::{self, SignType};
use super::tls::PayTls;
use super::xml::{self, MAX_BODY};

/// The merchant account that signs every pay call and notification (§1). Whole or absent:
/// `config` builds one only when all of it is set.
#[derive(Clone, Debug)]
pub struct PayCredentials {
    pub app_id: String,
    pub mch_id: String,
    /// The API v2 key (API密钥): signs requests, verifies replies and notifications.
    pub api_key: SecretString,
    pub sign_type: SignType,
}

/// The mini-program's identity for jscode2session (§7).
#[derive(Clone, Debug)]
pub struct LoginCredentials {
    pub app_id: String,
    pub app_secret: SecretString,
}

/// What [`WechatClient`] needs.
#[derive(Clone, Debug)]
pub struct WechatConfig {
    pub credentials: PayCredentials,
    /// e.g. `https://api.mch.weixin.qq.com` (no trailing path).
    pub pay_api_base: String,
    pub notify_url: String,
    /// Per attempt, covering connect, send and reading the body.
    pub timeout: Duration,
    /// Extra attempts after the first for retryable failures.
    pub max_retries: u32,
}

/// What [`LoginClient`] needs.
#[derive(Clone, Debug)]
pub struct LoginConfig {
    pub credentials: LoginCredentials,
    /// e.g. `https://api.weixin.qq.com`.
    pub api_base: String,
    /// Per attempt, covering connect, send and reading the body.
    pub timeout: Duration,
    /// Extra attempts after the first for retryable failures.
    pub max_retries: u32,
}

/// `(api, outcome, latency)`: api is unifiedorder|orderquery|closeorder|jscode2session|refund|
/// refundquery|downloadbill, outcome is ok|business_error|bad_signature|transport_error|timeout|protocol_error. Called once per
/// public call (after retries), with the total latency.
pub type CallObserver = Arc<dyn Fn(&'static str, &'static str, Duration) + Send + Sync>;

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum WechatError {
    #[error("transport error: {0}")]
    Transport(String),
    #[error("request timed out")]
    Timeout,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("response signature invalid")]
    BadSignature,
    #[error("WeChat Pay error {code}: {message}")]
    Business { code: String, message: String },
    #[error("WeChat login error {errcode}: {errmsg}")]
    Login { errcode: i64, errmsg: String },
}

impl WechatError {
    /// False when the same request may succeed later (SYSTEMERROR, network, busy login API).
    pub fn is_final(&self) -> bool {
        match self {
            WechatError::Transport(_) | WechatError::Timeout => false,
            WechatError::Business { code, .. } => code != "SYSTEMERROR",
            WechatError::Login { errcode, .. } => !matches!(errcode, -1 | 45011),
            WechatError::Protocol(_) | WechatError::BadSignature => true,
        }
    }

    /// Code to show clients: WeChat's err_code / errcode, or our own for local failures.
    pub fn code(&self) -> String {
        match self {
            WechatError::Transport(_) => "TRANSPORT_ERROR".into(),
            WechatError::Timeout => "TIMEOUT".into(),
            WechatError::Protocol(_) => "PROTOCOL_ERROR".into(),
            WechatError::BadSignature => "BAD_SIGNATURE".into(),
            WechatError::Business { code, .. } => code.clone(),
            WechatError::Login { errcode, .. } => errcode.to_string(),
        }
    }

    /// Metrics label passed to the [`CallObserver`].
    pub fn outcome(&self) -> &'static str {
        match self {
            WechatError::Business { .. } | WechatError::Login { .. } => "business_error",
            WechatError::BadSignature => "bad_signature",
            WechatError::Transport(_) => "transport_error",
            WechatError::Timeout => "timeout",
            WechatError::Protocol(_) => "protocol_error",
        }
    }

    /// Retried inside the client with identical parameters. A login rate limit (45011) is
    /// not final but retrying at once would only hit the limit again.
    fn retryable(&self) -> bool {
        match self {
            WechatError::Login { errcode, .. } => *errcode == -1,
            other => !other.is_final(),
        }
    }
}

pub struct UnifiedOrder {
    pub out_trade_no: String,
    pub body: String,
    pub total_fee: i64,
    pub spbill_create_ip: String,
    pub openid: String,
    pub time_start: DateTime<Utc>,
    pub time_expire: DateTime<Utc>,
    pub attach: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TradeState {
    Success,
    Refund,
    NotPay,
    Closed,
    Revoked,
    UserPaying,
    PayError,
    Accept,
    Other(String),
}

impl TradeState {
    pub fn parse(s: &str) -> Self {
        match s {
            "SUCCESS" => TradeState::Success,
            "REFUND" => TradeState::Refund,
            "NOTPAY" => TradeState::NotPay,
            "CLOSED" => TradeState::Closed,
            "REVOKED" => TradeState::Revoked,
            "USERPAYING" => TradeState::UserPaying,
            "PAYERROR" => TradeState::PayError,
            "ACCEPT" => TradeState::Accept,
            other => TradeState::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            TradeState::Success => "SUCCESS",
            TradeState::Refund => "REFUND",
            TradeState::NotPay => "NOTPAY",
            TradeState::Closed => "CLOSED",
            TradeState::Revoked => "REVOKED",
            TradeState::UserPaying => "USERPAYING",
            TradeState::PayError => "PAYERROR",
            TradeState::Accept => "ACCEPT",
            TradeState::Other(s) => s,
        }
    }

    /// Money was received (§5: REFUND means a paid order being refunded).
    pub fn is_paid(&self) -> bool {
        matches!(self, TradeState::Success | TradeState::Refund)
    }
}

#[derive(Clone, Debug)]
pub struct OrderQuery {
    pub trade_state: TradeState,
    pub transaction_id: Option<String>,
    pub total_fee: Option<i64>,
    pub time_end: Option<String>,
    pub raw: Params,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub openid: String,
    pub unionid: Option<String>,
}

/// `yyyyMMddHHmmss` in Beijing time (UTC+8), as every v2 time field (§2.2).
pub fn format_beijing(t: DateTime<Utc>) -> String {
    let cst = FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| Utc.fix());
    t.with_timezone(&cst).format("%Y%m%d%H%M%S").to_string()
}

use chrono::Offset as _;

thread_local! {
    // awc::Client is !Send: one per thread, built on first use. Timeouts are per request.
    static HTTP: awc::Client = awc::Client::builder().disable_timeout().finish();
}

/// The thread's shared awc client (also used by the sandbox's notifier).
pub(crate) fn http_client() -> awc::Client {
    HTTP.with(Clone::clone)
}

/// awc's rustls feature has no crypto provider of its own.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

fn backoff(attempt: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(5))
        .min(BACKOFF_MAX)
}

/// What both clients share: the per-call limits, the metrics hook, and the HTTP exchange
/// with its retries.
#[derive(Clone)]
pub(super) struct Calls {
    timeout: Duration,
    max_retries: u32,
    observer: Option<CallObserver>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls")
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Calls {
    fn new(timeout: Duration, max_retries: u32) -> Self {
        install_crypto_provider();
        Calls {
            timeout,
            max_retries,
            observer: None,
        }
    }

    /// Logs the outcome of one public call and reports it to the observer.
    pub(super) async fn observed<T>(
        &self,
        api: &'static str,
        fut: impl Future<Output = Result<T, WechatError>>,
    ) -> Result<T, WechatError> {
        let start = Instant::now();
        let r = fut.await;
        let elapsed = start.elapsed();
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        match &r {
            Ok(_) => tracing::debug!(api, ?elapsed, "wechat call ok"),
            // Business answers are normal flow (ORDERPAID, ORDERNOTEXIST…); the rest is not.
            Err(e @ (WechatError::Business { .. } | WechatError::Login { .. })) => {
                tracing::info!(api, outcome, ?elapsed, error = %e, "wechat call refused")
            }
            Err(e) => tracing::warn!(api, outcome, ?elapsed, error = %e, "wechat call failed"),
        }
        if let Some(o) = &self.observer {
            o(api, outcome, elapsed);
        }
        r
    }

    /// Runs `attempt` again, after a back-off, while it fails retryably and attempts are
    /// left; `on_retry` logs each repeat.
    pub(super) async fn retrying<T, Fut>(
        &self,
        mut attempt: impl FnMut() -> Fut,
        on_retry: impl Fn(u32, &WechatError),
    ) -> Result<T, WechatError>
    where
        Fut: Future<Output = Result<T, WechatError>>,
    {
        let mut retries = 0u32;
        loop {
            match attempt().await {
                Err(e) if e.retryable() && retries < self.max_retries => {
                    retries += 1;
                    on_retry(retries, &e);
                    actix_rt::time::sleep(backoff(retries)).await;
                }
                other => return other,
            }
        }
    }

    /// POST (with body) or GET; the whole exchange is bounded by `timeout`.
    async fn send(&self, body: Option<Bytes>, url: &str) -> Result<Bytes, WechatError> {
        self.send_via(&http_client(), body, url, MAX_BODY).await
    }

    /// [`Self::send`] through `client`, reading at most `limit` bytes of body.
    pub(super) async fn send_via(
        &self,
        client: &awc::Client,
        body: Option<Bytes>,
        url: &str,
        limit: usize,
    ) -> Result<Bytes, WechatError> {
        let timeout = self.timeout;
        let exchange = async {
            let req = match body {
                Some(_) => client
                    .post(url)
                    .insert_header(("Content-Type", "text/xml; charset=utf-8")),
                None => client.get(url),
            }
            .timeout(timeout);
            let sent = match body {
                Some(b) => req.send_body(b).await,
                None => req.send().await,
            };
            let mut resp = sent.map_err(|e| match e {
                awc::error::SendRequestError::Timeout => WechatError::Timeout,
                other => WechatError::Transport(other.to_string()),
            })?;
            let status = resp.status();
            let bytes = resp.body().limit(limit).await.map_err(|e| match e {
                awc::error::PayloadError::Overflow => {
                    WechatError::Protocol("response body too large".into())
                }
                other => WechatError::Transport(other.to_string()),
            })?;
            if status.is_server_error() {
                return Err(WechatError::Transport(format!("HTTP {status}")));
            }
            if !status.is_success() {
                return Err(WechatError::Protocol(format!("HTTP {status}")));
            }
            Ok(bytes)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| WechatError::Timeout)?
    }
}

/// The pay API, signed with the merchant's key.
#[derive(Clone, Debug)]
pub struct WechatClient {
    cfg: Arc<WechatConfig>,
    pub(super) calls: Calls,
    /// None: the thread's default client (webpki roots, no client certificate).
    tls: Option<PayTls>,
}

impl WechatClient {
    pub fn new(cfg: WechatConfig) -> Self {
        WechatClient {
            calls: Calls::new(cfg.timeout, cfg.max_retries),
            cfg: Arc::new(cfg),
            tls: None,
        }
    }

    /// Every pay call goes through `tls` (its extra root); refunds need its client certificate.
    pub fn with_tls(mut self, tls: PayTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The awc client for `pay/*`: [`PayTls`]'s when set (extra root), else the default.
    pub(super) fn plain_http(&self) -> awc::Client {
        match &self.tls {
            Some(tls) => tls.plain_client(),
            None => http_client(),
        }
    }

    /// The awc client for `secapi/*`, with the merchant's certificate; None without.
    pub(super) fn cert_http(&self) -> Option<awc::Client> {
        self.tls.as_ref().and_then(PayTls::cert_client)
    }

    pub fn with_observer(mut self, o: CallObserver) -> Self {
        self.calls.observer = Some(o);
        self
    }

    pub fn config(&self) -> &WechatConfig {
        &self.cfg
    }

    /// The merchant account this client signs with (notifications are checked against it).
    pub fn credentials(&self) -> &PayCredentials {
        &self.cfg.credentials
    }

    /// Returns the prepay_id. Re-calling with identical parameters is WeChat's intended
    /// recovery after SYSTEMERROR or a timeout (§2.4).
    pub async fn unified_order(&self, req: &UnifiedOrder) -> Result<String, WechatError> {
        self.calls
            .observed("unifiedorder", async {
                let mut f = Params::new();
                f.insert("body".into(), req.body.clone());
                f.insert("out_trade_no".into(), req.out_trade_no.clone());
                f.insert("total_fee".into(), req.total_fee.to_string());
                f.insert("spbill_create_ip".into(), req.spbill_create_ip.clone());
                f.insert("notify_url".into(), self.cfg.notify_url.clone());
                f.insert("trade_type".into(), "JSAPI".into());
                f.insert("openid".into(), req.openid.clone());
                f.insert("time_start".into(), format_beijing(req.time_start));
                f.insert("time_expire".into(), format_beijing(req.time_expire));
                if let Some(a) = req.attach.as_ref().filter(|a| !a.is_empty()) {
                    f.insert("attach".into(), a.clone());
                }
                let resp = self
                    .pay_call("unifiedorder", "/pay/unifiedorder", &req.out_trade_no, f)
                    .await?;
                resp.get("prepay_id")
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| WechatError::Protocol("prepay_id missing".into()))
            })
            .await
    }

    pub async fn order_query(&self, out_trade_no: &str) -> Result<OrderQuery, WechatError> {
        self.calls
            .observed("orderquery", async {
                let mut f = Params::new();
                f.insert("out_trade_no".into(), out_trade_no.to_owned());
                let raw = self
                    .pay_call("orderquery", "/pay/orderquery", out_trade_no, f)
                    .await?;
                if let Some(no) = raw.get("out_trade_no").filter(|v| !v.is_empty())
                    && no != out_trade_no
                {
                    return Err(WechatError::Protocol(
                        "orderquery answered another order".into(),
                    ));
                }
                let trade_state = raw
                    .get("trade_state")
                    .filter(|v| !v.is_empty())
                    .map(|s| TradeState::parse(s))
                    .ok_or_else(|| WechatError::Protocol("trade_state missing".into()))?;
                let total_fee =
                    match raw.get("total_fee").filter(|v| !v.is_empty()) {
                        Some(v) => Some(v.parse::<i64>().map_err(|_| {
                            WechatError::Protocol("total_fee not an integer".into())
                        })?),
                        None => None,
                    };
                let opt = |k: &str| raw.get(k).filter(|v| !v.is_empty()).cloned();
                Ok(OrderQuery {
                    trade_state,
                    transaction_id: opt("transaction_id"),
                    total_fee,
                    time_end: opt("time_end"),
                    raw: raw.clone(),
                })
            })
            .await
    }

    /// ORDERCLOSED counts as success (idempotent); ORDERPAID is returned as Business.
    pub async fn close_order(&self, out_trade_no: &str) -> Result<(), WechatError> {
        self.calls
            .observed("closeorder", async {
                let mut f = Params::new();
                f.insert("out_trade_no".into(), out_trade_no.to_owned());
                match self
                    .pay_call("closeorder", "/pay/closeorder", out_trade_no, f)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(WechatError::Business { code, .. }) if code == "ORDERCLOSED" => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// Signs once and resends the very same bytes on every retry (same nonce_str, §2.4).
    async fn pay_call(
        &self,
        api: &'static str,
        path: &str,
        out_trade_no: &str,
        fields: Params,
    ) -> Result<Params, WechatError> {
        self.pay_call_via(&self.plain_http(), api, path, out_trade_no, fields)
            .await
    }

    /// The request envelope of every pay API: appid, mch_id, nonce_str, sign_type (HMAC only:
    /// absent means MD5 to WeChat, §1.2) and sign over all of it.
    pub(super) fn signed_request(&self, mut fields: Params, nonce: String) -> Params {
        let c = &self.cfg.credentials;
        fields.insert("appid".into(), c.app_id.clone());
        fields.insert("mch_id".into(), c.mch_id.clone());
        fields.insert("nonce_str".into(), nonce);
        if c.sign_type == SignType::HmacSha256 {
            fields.insert("sign_type".into(), c.sign_type.as_str().into());
        }
        let s = sign::sign(&fields, c.api_key.expose_secret(), c.sign_type);
        fields.insert("sign".into(), s);
        fields
    }

    /// `pay_api_base` + `path`.
    pub(super) fn pay_url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.pay_api_base.trim_end_matches('/'), path)
    }

    /// [`Self::pay_call`] through `client` (`secapi/*` needs the one with the certificate).
    pub(super) async fn pay_call_via(
        &self,
        client: &awc::Client,
        api: &'static str,
        path: &str,
        key: &str,
        fields: Params,
    ) -> Result<Params, WechatError> {
        let fields = self.signed_request(fields, sign::nonce());
        let body = Bytes::from(xml::encode(&fields));
        let url = self.pay_url(path);
        self.calls
            .retrying(
                || async {
                    let resp = self
                        .calls
                        .send_via(client, Some(body.clone()), &url, MAX_BODY)
                        .await?;
                    self.check_pay_response(&resp)
                },
                |attempt, e| {
                    tracing::warn!(api, key, attempt, error = %e, "retrying with identical parameters");
                },
            )
            .await
    }

    /// §2.3: return_code, then (only on SUCCESS) signature, our appid/mch_id, result_code.
    fn check_pay_response(&self, body: &[u8]) -> Result<Params, WechatError> {
        let c = &self.cfg.credentials;
        let p = xml::decode(body)
            .map_err(|e| WechatError::Protocol(format!("unparsable response: {e}")))?;
        let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
        if get("return_code") != "SUCCESS" {
            // FAIL replies are unsigned; some carry an err_code worth surfacing.
            let msg = get("return_msg").to_owned();
            return match get("err_code") {
                "" => Err(WechatError::Protocol(format!("return_code FAIL: {msg}"))),
                code => Err(WechatError::Business {
                    code: code.to_owned(),
                    message: match get("err_code_des") {
                        "" => msg,
                        des => des.to_owned(),
                    },
                }),
            };
        }
        sign::verify(&p, c.api_key.expose_secret(), c.sign_type).map_err(|e| {
            tracing::warn!(error = %e, "response signature rejected");
            WechatError::BadSignature
        })?;
        if get("appid") != c.app_id || get("mch_id") != c.mch_id {
            return Err(WechatError::Protocol(
                "response appid/mch_id differ from ours".into(),
            ));
        }
        if get("result_code") != "SUCCESS" {
            let code = match get("err_code") {
                "" => "FAIL",
                code => code,
            };
            return Err(WechatError::Business {
                code: code.to_owned(),
                message: get("err_code_des").to_owned(),
            });
        }
        Ok(p)
    }
}

/// jscode2session, with the mini-program's app secret.
#[derive(Clone, Debug)]
pub struct LoginClient {
    cfg: Arc<LoginConfig>,
    calls: Calls,
}

impl LoginClient {
    pub fn new(cfg: LoginConfig) -> Self {
        LoginClient {
            calls: Calls::new(cfg.timeout, cfg.max_retries),
            cfg: Arc::new(cfg),
        }
    }

    pub fn with_observer(mut self, o: CallObserver) -> Self {
        self.calls.observer = Some(o);
        self
    }

    /// `GET {api_base}/sns/jscode2session`; session_key is deliberately not returned.
    pub async fn code_to_session(&self, js_code: &str) -> Result<Session, WechatError> {
        self.calls
            .observed("jscode2session", async {
                let c = &self.cfg.credentials;
                let base = format!(
                    "{}/sns/jscode2session",
                    self.cfg.api_base.trim_end_matches('/')
                );
                let url = url::Url::parse_with_params(
                    &base,
                    [
                        ("appid", c.app_id.as_str()),
                        ("secret", c.app_secret.expose_secret()),
                        ("js_code", js_code),
                        ("grant_type", "authorization_code"),
                    ],
                )
                .map_err(|e| WechatError::Protocol(format!("bad api_base: {e}")))?;
                self.calls
                    .retrying(
                        || async { parse_session(&self.calls.send(None, url.as_str()).await?) },
                        |attempt, e| {
                            tracing::warn!(api = "jscode2session", attempt, error = %e, "retrying");
                        },
                    )
                    .await
            })
            .await
    }
}

fn parse_session(body: &[u8]) -> Result<Session, WechatError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| WechatError::Protocol(format!("unparsable jscode2session reply: {e}")))?;
    let errcode = v
        .get("errcode")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    if errcode != 0 {
        return Err(WechatError::Login {
            errcode,
            errmsg: v
                .get("errmsg")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_owned(),
        });
    }
    let openid = v
        .get("openid")
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| WechatError::Protocol("openid missing".into()))?;
    Ok(Session {
        openid: openid.to_owned(),
        unionid: v
            .get("unionid")
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn biz(code: &str) -> WechatError {
        WechatError::Business {
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn finality_of_every_documented_code() {
        // §2.4, §5, §6: only SYSTEMERROR is worth repeating.
        for code in [
            "ORDERPAID",
            "ORDERCLOSED",
            "OUT_TRADE_NO_USED",
            "INVALID_REQUEST",
            "SIGNERROR",
            "LACK_PARAMS",
            "XML_FORMAT_ERROR",
            "REQUIRE_POST_METHOD",
            "POST_DATA_EMPTY",
            "NOT_UTF8",
            "APPID_NOT_EXIST",
            "MCHID_NOT_EXIST",
            "APPID_MCHID_NOT_MATCH",
            "NOAUTH",
            "NOTENOUGH",
            "ORDERNOTEXIST",
        ] {
            assert!(biz(code).is_final(), "{code}");
            assert_eq!(biz(code).code(), code);
            assert_eq!(biz(code).outcome(), "business_error");
        }
        assert!(!biz("SYSTEMERROR").is_final());
        assert!(!WechatError::Transport("x".into()).is_final());
        assert!(!WechatError::Timeout.is_final());
        assert!(WechatError::BadSignature.is_final());
        assert!(WechatError::Protocol("x".into()).is_final());
        let login = |errcode| WechatError::Login {
            errcode,
            errmsg: String::new(),
        };
        for c in [-1, 45011] {
            assert!(!login(c).is_final(), "{c}");
        }
        for c in [40029, 40226, 40163, 40125, 40013] {
            assert!(login(c).is_final(), "{c}");
            assert_eq!(login(c).code(), c.to_string());
        }
        assert!(login(-1).retryable());
        assert!(!login(45011).retryable());
    }

    #[test]
    fn beijing_time() {
        let t = Utc.with_ymd_and_hms(2024, 1, 1, 20, 30, 5).single();
        let t = t.expect("valid date");
        assert_eq!(format_beijing(t), "20240102043005");
    }

    #[test]
    fn trade_states() {
        for s in [
            "SUCCESS",
            "REFUND",
            "NOTPAY",
            "CLOSED",
            "REVOKED",
            "USERPAYING",
            "PAYERROR",
            "ACCEPT",
            "WHATEVER",
        ] {
            assert_eq!(TradeState::parse(s).as_str(), s);
        }
        assert_eq!(TradeState::parse("X"), TradeState::Other("X".into()));
    }

    #[test]
    fn config_debug_redacts_secrets() {
        let pay = WechatClient::new(WechatConfig {
            credentials: PayCredentials {
                app_id: "wx1".into(),
                mch_id: "1".into(),
                api_key: "apikey1234".into(),
                sign_type: SignType::Md5,
            },
            pay_api_base: String::new(),
            notify_url: String::new(),
            timeout: Duration::from_secs(1),
            max_retries: 0,
        });
        let login = LoginClient::new(LoginConfig {
            credentials: LoginCredentials {
                app_id: "wx1".into(),
                app_secret: "topsecret".into(),
            },
            api_base: String::new(),
            timeout: Duration::from_secs(1),
            max_retries: 0,
        });
        let s = format!("{pay:?} {login:?}");
        assert!(!s.contains("topsecret") && !s.contains("apikey1234"), "{s}");
        assert!(s.contains("wx1"), "{s}");
    }

    #[test]
    fn session_parsing() {
        assert_eq!(
            parse_session(br#"{"openid":"o1","session_key":"k"}"#),
            Ok(Session {
                openid: "o1".into(),
                unionid: None
            })
        );
        assert_eq!(
            parse_session(br#"{"errcode":40029,"errmsg":"invalid code"}"#),
            Err(WechatError::Login {
                errcode: 40029,
                errmsg: "invalid code".into()
            })
        );
        assert!(matches!(
            parse_session(b"<html>"),
            Err(WechatError::Protocol(_))
        ));
    }

    #[test]
    fn client_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<WechatClient>();
        check::<LoginClient>();
        check::<crate::sandbox::Sandbox>();
    }

    #[test]
    fn backoff_is_short() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }
}
