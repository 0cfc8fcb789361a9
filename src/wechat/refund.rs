//! Refunds (wechatpay-next.md §1–2): `secapi/pay/refund` over mutual TLS and `pay/refundquery`.
//!
//! `out_refund_no` is the idempotency key: WeChat refunds once per number ("同一退款单号多次请求
//! 只退一笔"), so every retry after a timeout or a retryable err_code repeats the same number and
//! the same amounts ([`RefundDisposition`]). A SUCCESS answer means *accepted*, not refunded: the
//! outcome comes from the refund notification (`refund_notify.rs`) or from refundquery.
//!
//! [`RefundClient`] exists only where the merchant's client certificate is loaded (like the
//! other clients, it is built from complete credentials); refundquery needs no certificate and
//! is a [`WechatClient`] method.

use chrono::{DateTime, Utc};

use super::client::{WechatClient, WechatError};
use super::{Params, parse_beijing_datetime};

/// WeChat allows 64 characters; older documentation and SDKs say 32, so we keep to 32 (§1.2).
pub const MAX_OUT_REFUND_NO: usize = 32;
/// `refund_desc` is String(80) (characters, shown to the payer).
pub const MAX_REFUND_DESC_CHARS: usize = 80;
/// WeChat refuses the 51st refund of an order (§1.3).
pub const MAX_REFUNDS_PER_ORDER: usize = 50;

/// Why a [`RefundRequest`] cannot be built (nothing was sent).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum InvalidRefund {
    #[error("out_refund_no must be 1–32 characters of [A-Za-z0-9_-|*@]")]
    OutRefundNo,
    #[error("out_trade_no must be 1–32 characters of [A-Za-z0-9_-|*]")]
    OutTradeNo,
    #[error("total_fee must be a positive number of fen")]
    TotalFee,
    #[error("refund_fee must be between 1 and total_fee fen")]
    RefundFee,
    #[error("refund_desc is longer than 80 characters")]
    RefundDesc,
    #[error("notify_url must be an http(s) URL without a query string")]
    NotifyUrl,
}

fn valid_id(s: &str, extra: &[u8]) -> bool {
    (1..=MAX_OUT_REFUND_NO).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b) || extra.contains(&b))
}

/// One refund intent: the same value is re-sent on every retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    out_trade_no: String,
    transaction_id: Option<String>,
    out_refund_no: String,
    total_fee: i64,
    refund_fee: i64,
    refund_desc: Option<String>,
    notify_url: Option<String>,
}

impl RefundRequest {
    /// `total_fee` is the order's whole amount (not what is left to refund), `refund_fee` this
    /// refund's. `transaction_id`, when known, is sent too (WeChat then prefers it).
    pub fn new(
        out_trade_no: &str,
        out_refund_no: &str,
        total_fee: i64,
        refund_fee: i64,
    ) -> Result<Self, InvalidRefund> {
        if !valid_id(out_trade_no, b"") {
            return Err(InvalidRefund::OutTradeNo);
        }
        if !valid_id(out_refund_no, b"@") {
            return Err(InvalidRefund::OutRefundNo);
        }
        if total_fee < 1 {
            return Err(InvalidRefund::TotalFee);
        }
        if !(1..=total_fee).contains(&refund_fee) {
            return Err(InvalidRefund::RefundFee);
        }
        Ok(RefundRequest {
            out_trade_no: out_trade_no.to_owned(),
            transaction_id: None,
            out_refund_no: out_refund_no.to_owned(),
            total_fee,
            refund_fee,
            refund_desc: None,
            notify_url: None,
        })
    }

    pub fn transaction_id(mut self, transaction_id: &str) -> Self {
        self.transaction_id = Some(transaction_id.to_owned()).filter(|t| !t.is_empty());
        self
    }

    /// Shown to the payer in WeChat's refund message; empty means none.
    pub fn refund_desc(mut self, desc: &str) -> Result<Self, InvalidRefund> {
        if desc.chars().count() > MAX_REFUND_DESC_CHARS {
            return Err(InvalidRefund::RefundDesc);
        }
        self.refund_desc = Some(desc.to_owned()).filter(|d| !d.is_empty());
        Ok(self)
    }

    /// Where WeChat sends the refund result (overrides the merchant platform's setting).
    pub fn notify_url(mut self, url: &str) -> Result<Self, InvalidRefund> {
        let ok = url::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
        if !ok {
            return Err(InvalidRefund::NotifyUrl);
        }
        self.notify_url = Some(url.to_owned());
        Ok(self)
    }

    pub fn out_refund_no(&self) -> &str {
        &self.out_refund_no
    }

    pub fn out_trade_no(&self) -> &str {
        &self.out_trade_no
    }

    pub fn refund_fee(&self) -> i64 {
        self.refund_fee
    }

    pub fn total_fee(&self) -> i64 {
        self.total_fee
    }

    /// The business fields; the client adds appid, mch_id, nonce_str, sign_type and sign.
    pub fn fields(&self) -> Params {
        let mut f = Params::new();
        f.insert("out_trade_no".into(), self.out_trade_no.clone());
        if let Some(tx) = &self.transaction_id {
            f.insert("transaction_id".into(), tx.clone());
        }
        f.insert("out_refund_no".into(), self.out_refund_no.clone());
        f.insert("total_fee".into(), self.total_fee.to_string());
        f.insert("refund_fee".into(), self.refund_fee.to_string());
        f.insert("refund_fee_type".into(), "CNY".into());
        if let Some(d) = &self.refund_desc {
            f.insert("refund_desc".into(), d.clone());
        }
        if let Some(u) = &self.notify_url {
            f.insert("notify_url".into(), u.clone());
        }
        f
    }
}

/// A SUCCESS answer of `secapi/pay/refund`: WeChat has *accepted* the refund (§1.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundAccepted {
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub transaction_id: Option<String>,
    /// WeChat's refund number (about 29 digits).
    pub refund_id: String,
    pub refund_fee: i64,
    pub total_fee: i64,
    pub cash_refund_fee: Option<i64>,
    /// Every received field, `sign` included.
    pub raw: Params,
}

/// What to do after a failed refund call (§1.5), stricter than the SDKs on purpose: only a
/// signed, definite refusal is final; anything whose outcome is unknown is retried with the
/// same `out_refund_no` and the same amounts (then refundquery tells the truth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundDisposition {
    /// Same out_refund_no, same amounts, later: SYSTEMERROR, BIZERR_NEED_RETRY,
    /// FREQUENCY_LIMITED, INVALID_REQ_TOO_MUCH, timeouts, transport and protocol failures
    /// (an unreadable body, an HTTP 400 from a front end that wanted a certificate, a FAIL
    /// `return_code`), a bad response signature: the refund may have been accepted.
    Retry,
    /// WeChat refused the refund and moved no money: NOTENOUGH, TRADE_OVERDUE, ORDERNOTEXIST,
    /// USER_ACCOUNT_ABNORMAL, ERROR, PARAM_ERROR, SIGNERROR… NOTENOUGH is final here although §1.5 notes it could be re-sent once the merchant
    /// account is topped up: the coins go back and a new refund can be made then.
    Final,
}

/// err_codes after which the same request may succeed (§1.5).
const RETRY_CODES: [&str; 4] = [
    "SYSTEMERROR",
    "BIZERR_NEED_RETRY",
    "FREQUENCY_LIMITED",
    "INVALID_REQ_TOO_MUCH",
];

impl WechatError {
    /// §1.5 for refunds (see [`RefundDisposition`]).
    pub fn refund_disposition(&self) -> RefundDisposition {
        match self {
            WechatError::Transport(_)
            | WechatError::Timeout
            | WechatError::Protocol(_)
            | WechatError::BadSignature => RefundDisposition::Retry,
            WechatError::Business { code, .. } if RETRY_CODES.contains(&code.as_str()) => {
                RefundDisposition::Retry
            }
            WechatError::Business { .. } | WechatError::Login { .. } => RefundDisposition::Final,
        }
    }
}

/// `refund_status` of refundquery and of refund notifications (§2, §3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundStatus {
    Success,
    /// Closed: the refund failed and no money moved.
    RefundClose,
    Processing,
    /// Abnormal: the payer's card cannot take it; the money is back in the merchant account and
    /// someone has to settle it by hand.
    Change,
    Other(String),
}

impl RefundStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "SUCCESS" => RefundStatus::Success,
            "REFUNDCLOSE" => RefundStatus::RefundClose,
            "PROCESSING" => RefundStatus::Processing,
            "CHANGE" => RefundStatus::Change,
            other => RefundStatus::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RefundStatus::Success => "SUCCESS",
            RefundStatus::RefundClose => "REFUNDCLOSE",
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Change => "CHANGE",
            RefundStatus::Other(s) => s,
        }
    }

    /// WeChat will not change it any more.
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            RefundStatus::Success | RefundStatus::RefundClose | RefundStatus::Change
        )
    }
}

/// Which refunds refundquery asks about; WeChat's priority is the order of the variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundQueryKey {
    RefundId(String),
    /// One refund (the poller's query).
    OutRefundNo(String),
    /// All refunds of an order, 10 per page from `offset`.
    TransactionId {
        transaction_id: String,
        offset: u32,
    },
    OutTradeNo {
        out_trade_no: String,
        offset: u32,
    },
}

impl RefundQueryKey {
    fn fields(&self) -> Params {
        let mut f = Params::new();
        let (k, v, offset) = match self {
            RefundQueryKey::RefundId(v) => ("refund_id", v, None),
            RefundQueryKey::OutRefundNo(v) => ("out_refund_no", v, None),
            RefundQueryKey::TransactionId {
                transaction_id,
                offset,
            } => ("transaction_id", transaction_id, Some(*offset)),
            RefundQueryKey::OutTradeNo {
                out_trade_no,
                offset,
            } => ("out_trade_no", out_trade_no, Some(*offset)),
        };
        f.insert(k.into(), v.clone());
        if let Some(o) = offset.filter(|o| *o > 0) {
            f.insert("offset".into(), o.to_string());
        }
        f
    }

    fn log_key(&self) -> &str {
        match self {
            RefundQueryKey::RefundId(v) | RefundQueryKey::OutRefundNo(v) => v,
            RefundQueryKey::TransactionId { transaction_id, .. } => transaction_id,
            RefundQueryKey::OutTradeNo { out_trade_no, .. } => out_trade_no,
        }
    }
}

/// One `_$n` group of a refundquery answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRecord {
    pub out_refund_no: String,
    pub refund_id: String,
    pub refund_fee: i64,
    pub settlement_refund_fee: Option<i64>,
    pub status: RefundStatus,
    /// ORIGINAL / BALANCE / OTHER_BALANCE / OTHER_BANKCARD.
    pub refund_channel: Option<String>,
    pub refund_account: Option<String>,
    /// Where the money went (sic: WeChat spells it "accout").
    pub refund_recv_accout: Option<String>,
    pub success_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundQueryResult {
    pub out_trade_no: String,
    pub transaction_id: Option<String>,
    pub total_fee: Option<i64>,
    /// Refunds of the order in all pages (present when asked by order number).
    pub total_refund_count: Option<u32>,
    pub refunds: Vec<RefundRecord>,
    pub raw: Params,
}

impl RefundQueryResult {
    pub fn find(&self, out_refund_no: &str) -> Option<&RefundRecord> {
        self.refunds
            .iter()
            .find(|r| r.out_refund_no == out_refund_no)
    }
}

fn protocol(msg: String) -> WechatError {
    WechatError::Protocol(msg)
}

fn opt<'a>(p: &'a Params, k: &str) -> Option<&'a str> {
    p.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

fn required<'a>(p: &'a Params, k: &str) -> Result<&'a str, WechatError> {
    opt(p, k).ok_or_else(|| protocol(format!("{k} missing")))
}

/// Non-negative fen; WeChat sends amounts as decimal integers.
fn fen(p: &Params, k: &str) -> Result<Option<i64>, WechatError> {
    match opt(p, k) {
        None => Ok(None),
        Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| protocol(format!("{k} out of range"))),
        Some(_) => Err(protocol(format!("{k} is not an amount in fen"))),
    }
}

fn req_fen(p: &Params, k: &str) -> Result<i64, WechatError> {
    fen(p, k)?.ok_or_else(|| protocol(format!("{k} missing")))
}

/// The SUCCESS answer checked against what was asked (a signed answer about another refund or
/// another amount is a protocol error, hence retried, never taken as acceptance).
pub fn parse_refund_response(
    req: &RefundRequest,
    raw: Params,
) -> Result<RefundAccepted, WechatError> {
    let out_refund_no = opt(&raw, "out_refund_no").unwrap_or(&req.out_refund_no);
    if out_refund_no != req.out_refund_no {
        return Err(protocol("refund answered for another out_refund_no".into()));
    }
    let out_trade_no = opt(&raw, "out_trade_no").unwrap_or(&req.out_trade_no);
    if out_trade_no != req.out_trade_no {
        return Err(protocol("refund answered for another out_trade_no".into()));
    }
    let refund_fee = req_fen(&raw, "refund_fee")?;
    if refund_fee != req.refund_fee {
        return Err(protocol(format!(
            "refund_fee {refund_fee} differs from the requested {}",
            req.refund_fee
        )));
    }
    let total_fee = fen(&raw, "total_fee")?.unwrap_or(req.total_fee);
    if total_fee != req.total_fee {
        return Err(protocol(format!(
            "total_fee {total_fee} differs from the order's {}",
            req.total_fee
        )));
    }
    Ok(RefundAccepted {
        out_refund_no: req.out_refund_no.clone(),
        out_trade_no: req.out_trade_no.clone(),
        transaction_id: opt(&raw, "transaction_id").map(str::to_owned),
        refund_id: required(&raw, "refund_id")?.to_owned(),
        refund_fee,
        total_fee,
        cash_refund_fee: fen(&raw, "cash_refund_fee")?,
        raw,
    })
}

/// The indexed groups `out_refund_no_$n`, `refund_status_$n`… of a SUCCESS refundquery answer.
pub fn parse_refund_query(raw: Params) -> Result<RefundQueryResult, WechatError> {
    let count = required(&raw, "refund_count")?
        .parse::<usize>()
        .map_err(|_| protocol("refund_count is not a number".into()))?;
    // The body limit already bounds the groups; this bounds the loop before that.
    if count > MAX_REFUNDS_PER_ORDER {
        return Err(protocol(format!("refund_count {count} is above 50")));
    }
    let mut refunds = Vec::with_capacity(count);
    for n in 0..count {
        let k = |name: &str| format!("{name}_{n}");
        let success_time = match opt(&raw, &k("refund_success_time")) {
            None => None,
            Some(t) => Some(
                parse_beijing_datetime(t)
                    .ok_or_else(|| protocol(format!("refund_success_time_{n} unreadable")))?,
            ),
        };
        refunds.push(RefundRecord {
            out_refund_no: required(&raw, &k("out_refund_no"))?.to_owned(),
            refund_id: required(&raw, &k("refund_id"))?.to_owned(),
            refund_fee: req_fen(&raw, &k("refund_fee"))?,
            settlement_refund_fee: fen(&raw, &k("settlement_refund_fee"))?,
            status: RefundStatus::parse(required(&raw, &k("refund_status"))?),
            refund_channel: opt(&raw, &k("refund_channel")).map(str::to_owned),
            refund_account: opt(&raw, &k("refund_account")).map(str::to_owned),
            refund_recv_accout: opt(&raw, &k("refund_recv_accout")).map(str::to_owned),
            success_time,
        });
    }
    let total_refund_count = match opt(&raw, "total_refund_count") {
        None => None,
        Some(v) => Some(
            v.parse::<u32>()
                .map_err(|_| protocol("total_refund_count is not a number".into()))?,
        ),
    };
    Ok(RefundQueryResult {
        out_trade_no: required(&raw, "out_trade_no")?.to_owned(),
        transaction_id: opt(&raw, "transaction_id").map(str::to_owned),
        total_fee: fen(&raw, "total_fee")?,
        total_refund_count,
        refunds,
        raw,
    })
}

/// `secapi/pay/refund`: a [`WechatClient`] that carries the merchant's client certificate.
#[derive(Clone, Debug)]
pub struct RefundClient {
    pay: WechatClient,
}

impl WechatClient {
    /// The refund client, when [`WechatClient::with_tls`] gave a client certificate.
    pub fn refunds(&self) -> Option<RefundClient> {
        self.cert_http().map(|_| RefundClient { pay: self.clone() })
    }

    /// `pay/refundquery` (no certificate). REFUNDNOTEXIST comes back as a Business error.
    pub async fn refund_query(
        &self,
        key: &RefundQueryKey,
    ) -> Result<RefundQueryResult, WechatError> {
        self.calls
            .observed("refundquery", async {
                let raw = self
                    .pay_call_via(
                        &self.plain_http(),
                        "refundquery",
                        "/pay/refundquery",
                        key.log_key(),
                        key.fields(),
                    )
                    .await?;
                let result = parse_refund_query(raw)?;
                if let RefundQueryKey::OutRefundNo(no) = key
                    && result.find(no).is_none()
                {
                    return Err(protocol("refundquery answered about another refund".into()));
                }
                Ok(result)
            })
            .await
    }
}

impl RefundClient {
    /// The pay client it came from (same credentials, same TLS settings).
    pub fn pay(&self) -> &WechatClient {
        &self.pay
    }

    /// Signed once; SYSTEMERROR and transport failures are re-sent with the very same bytes
    /// up to `max_retries`; whatever still fails is returned for the caller to classify with
    /// [`WechatError::refund_disposition`].
    pub async fn refund(&self, req: &RefundRequest) -> Result<RefundAccepted, WechatError> {
        let pay = &self.pay;
        pay.calls
            .observed("refund", async {
                // Present by construction (`WechatClient::refunds`); TLS settings never change.
                let client = pay
                    .cert_http()
                    .ok_or_else(|| protocol("no client certificate".into()))?;
                let raw = pay
                    .pay_call_via(
                        &client,
                        "refund",
                        "/secapi/pay/refund",
                        &req.out_refund_no,
                        req.fields(),
                    )
                    .await?;
                parse_refund_response(req, raw)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::sign::{self, SignType};

    const K1: &str = "192006250b4c09247ec02edce69f6a2d";

    fn rs1() -> RefundRequest {
        RefundRequest::new("CR20240101000001", "RF20240101000001", 100, 40)
            .and_then(|r| r.refund_desc("未使用算力退款"))
            .and_then(|r| r.notify_url("https://pay.example.com/wxpay/refund-notify"))
            .expect("valid request")
    }

    fn envelope(mut f: Params) -> Params {
        f.insert("appid".into(), "wxd930ea5d5a258f4f".into());
        f.insert("mch_id".into(), "10000100".into());
        f.insert("nonce_str".into(), "ibuaiVcKdpRxkhJA".into());
        f
    }

    #[test]
    fn rs1_vector() {
        // RS1 (§1.2, refund_sign.out) has no refund_fee_type; ours adds CNY, so check both.
        let mut f = envelope(rs1().fields());
        assert_eq!(f.remove("refund_fee_type").as_deref(), Some("CNY"));
        f.insert("sign_type".into(), "MD5".into());
        assert_eq!(
            sign::string_to_sign(&f, K1),
            "appid=wxd930ea5d5a258f4f&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA&notify_url=https://pay.example.com/wxpay/refund-notify&out_refund_no=RF20240101000001&out_trade_no=CR20240101000001&refund_desc=未使用算力退款&refund_fee=40&sign_type=MD5&total_fee=100&key=192006250b4c09247ec02edce69f6a2d"
        );
        assert_eq!(
            sign::sign(&f, K1, SignType::Md5),
            "935B29A24F3B5F5419D67B2054C1924A"
        );
    }

    #[test]
    fn rq1_vector() {
        let f = envelope(RefundQueryKey::OutRefundNo("RF20240101000001".into()).fields());
        assert_eq!(
            sign::sign(&f, K1, SignType::Md5),
            "074DCA11377FCBE0D47986C5A5628748"
        );
        let by_order = RefundQueryKey::OutTradeNo {
            out_trade_no: "CR1".into(),
            offset: 10,
        }
        .fields();
        assert_eq!(by_order.get("offset").map(String::as_str), Some("10"));
        let first_page = RefundQueryKey::TransactionId {
            transaction_id: "42".into(),
            offset: 0,
        }
        .fields();
        assert!(!first_page.contains_key("offset"));
    }

    #[test]
    fn request_validation() {
        assert_eq!(
            RefundRequest::new("CR1", "RF1", 100, 0),
            Err(InvalidRefund::RefundFee)
        );
        assert_eq!(
            RefundRequest::new("CR1", "RF1", 100, 101),
            Err(InvalidRefund::RefundFee)
        );
        assert_eq!(
            RefundRequest::new("CR1", "RF1", 0, 0),
            Err(InvalidRefund::TotalFee)
        );
        assert_eq!(
            RefundRequest::new("CR1", "", 100, 1),
            Err(InvalidRefund::OutRefundNo)
        );
        assert_eq!(
            RefundRequest::new("CR1", &"R".repeat(33), 100, 1),
            Err(InvalidRefund::OutRefundNo)
        );
        assert_eq!(
            RefundRequest::new("CR 1", "RF1", 100, 1),
            Err(InvalidRefund::OutTradeNo)
        );
        assert!(RefundRequest::new("CR1", "RF_1-a|b*c@d", 100, 100).is_ok());
        let r = RefundRequest::new("CR1", "RF1", 100, 1).expect("valid");
        assert_eq!(
            r.clone().refund_desc(&"退".repeat(81)),
            Err(InvalidRefund::RefundDesc)
        );
        assert!(r.clone().refund_desc(&"退".repeat(80)).is_ok());
        assert_eq!(
            r.clone().notify_url("https://x.example/cb?a=1"),
            Err(InvalidRefund::NotifyUrl)
        );
        assert_eq!(
            r.clone().notify_url("ftp://x.example/cb"),
            Err(InvalidRefund::NotifyUrl)
        );
        let f = r.transaction_id("4200").fields();
        assert_eq!(f.get("transaction_id").map(String::as_str), Some("4200"));
        assert!(!f.contains_key("refund_desc") && !f.contains_key("notify_url"));
    }

    fn biz(code: &str) -> WechatError {
        WechatError::Business {
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn disposition_of_every_documented_code() {
        for code in [
            "SYSTEMERROR",
            "BIZERR_NEED_RETRY",
            "FREQUENCY_LIMITED",
            "INVALID_REQ_TOO_MUCH",
        ] {
            assert_eq!(
                biz(code).refund_disposition(),
                RefundDisposition::Retry,
                "{code}"
            );
        }
        for code in [
            "NOTENOUGH",
            "TRADE_OVERDUE",
            "USER_ACCOUNT_ABNORMAL",
            "ERROR",
            "ORDERNOTEXIST",
            "INVALID_TRANSACTIONID",
            "PARAM_ERROR",
            "APPID_NOT_EXIST",
            "MCHID_NOT_EXIST",
            "REQUIRE_POST_METHOD",
            "SIGNERROR",
            "XML_FORMAT_ERROR",
        ] {
            assert_eq!(
                biz(code).refund_disposition(),
                RefundDisposition::Final,
                "{code}"
            );
        }
        for e in [
            WechatError::Timeout,
            WechatError::Transport("reset".into()),
            WechatError::Protocol("HTTP 400".into()),
            WechatError::BadSignature,
        ] {
            assert_eq!(e.refund_disposition(), RefundDisposition::Retry, "{e}");
        }
    }

    fn accepted_raw() -> Params {
        [
            ("return_code", "SUCCESS"),
            ("result_code", "SUCCESS"),
            ("out_refund_no", "RF20240101000001"),
            ("out_trade_no", "CR20240101000001"),
            ("transaction_id", "4200000540202005267407409907"),
            ("refund_id", "50300000012024010112345678901"),
            ("refund_fee", "40"),
            ("total_fee", "100"),
            ("cash_refund_fee", "40"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn refund_response_checked_against_the_request() {
        let req = rs1();
        let ok = parse_refund_response(&req, accepted_raw()).expect("accepted");
        assert_eq!(ok.refund_id, "50300000012024010112345678901");
        assert_eq!(ok.refund_fee, 40);
        assert_eq!(ok.total_fee, 100);
        assert_eq!(ok.cash_refund_fee, Some(40));
        for (k, v) in [
            ("out_refund_no", "RF2"),
            ("out_trade_no", "CR2"),
            ("refund_fee", "41"),
            ("total_fee", "99"),
            ("refund_fee", "4x"),
            ("refund_fee", "-40"),
            ("refund_id", ""),
        ] {
            let mut raw = accepted_raw();
            raw.insert(k.into(), v.into());
            let e = parse_refund_response(&req, raw).expect_err(k);
            assert_eq!(e.refund_disposition(), RefundDisposition::Retry, "{k}={v}");
        }
    }

    fn query_raw() -> Params {
        [
            ("out_trade_no", "CR20240101000001"),
            ("transaction_id", "4200000540202005267407409907"),
            ("total_fee", "100"),
            ("refund_count", "2"),
            ("out_refund_no_0", "RF1"),
            ("refund_id_0", "503001"),
            ("refund_fee_0", "40"),
            ("refund_status_0", "SUCCESS"),
            ("refund_channel_0", "ORIGINAL"),
            ("refund_recv_accout_0", "支付用户零钱"),
            ("refund_success_time_0", "2024-01-01 12:05:00"),
            ("out_refund_no_1", "RF2"),
            ("refund_id_1", "503002"),
            ("refund_fee_1", "60"),
            ("refund_status_1", "PROCESSING"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn refund_query_indexed_fields() {
        let q = parse_refund_query(query_raw()).expect("parses");
        assert_eq!(q.refunds.len(), 2);
        let first = q.find("RF1").expect("RF1");
        assert_eq!(first.status, RefundStatus::Success);
        assert_eq!(first.refund_fee, 40);
        assert_eq!(
            first.success_time.map(|t| t.to_rfc3339()),
            Some("2024-01-01T04:05:00+00:00".into())
        );
        assert_eq!(first.refund_recv_accout.as_deref(), Some("支付用户零钱"));
        let second = q.find("RF2").expect("RF2");
        assert_eq!(second.status, RefundStatus::Processing);
        assert_eq!(second.success_time, None);
        assert!(q.find("RF3").is_none());

        for (k, v) in [
            ("refund_count", "3"),
            ("refund_count", "x"),
            ("refund_count", "51"),
            ("refund_fee_1", "6.0"),
            ("refund_status_0", ""),
            ("refund_success_time_0", "20240101120500"),
        ] {
            let mut raw = query_raw();
            raw.insert(k.into(), v.into());
            assert!(parse_refund_query(raw).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn refund_statuses() {
        for s in ["SUCCESS", "REFUNDCLOSE", "PROCESSING", "CHANGE", "FAIL"] {
            assert_eq!(RefundStatus::parse(s).as_str(), s);
        }
        assert!(RefundStatus::Change.is_settled());
        assert!(RefundStatus::RefundClose.is_settled());
        assert!(!RefundStatus::Processing.is_settled());
        assert!(!RefundStatus::parse("FAIL").is_settled());
    }
}
