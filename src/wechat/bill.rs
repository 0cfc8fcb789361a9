//! Trade bills (wechatpay-next.md §4): `pay/downloadbill`, its replies, and the text format.
//!
//! The body is gzip (with `tar_type=GZIP`), plain text, or — for every failure, even when gzip
//! was asked for — an unsigned XML reply whose `return_msg` says why (`No Bill Exist` is a normal
//! empty day, `Bill Creating` means later). The text is parsed **by header name**, never by
//! position: WeChat has shipped several layouts (27-column ALL, legacy 24-column…), and a layout
//! missing a column we need is refused as a whole rather than misread. Amounts are yuan strings
//! turned into integer fen by decimal-string arithmetic (no floating point anywhere); the fee
//! column has 5 decimals and is kept in millifen (1/1000 fen). No crate parses this format
//! (WxJava's own parser replaces commas and splits on backticks), hence the hand-written parser.

use std::io::Read as _;

use actix_web::web::Bytes;
use chrono::{DateTime, NaiveDate, Utc};

use super::client::{WechatClient, WechatError};
use super::{Params, parse_beijing_datetime, sign, xml};

/// Largest bill body read from the network (gzip or plain).
pub const MAX_BILL_BYTES: usize = 32 * 1024 * 1024;
/// Largest bill text after gunzip (a bound on what a hostile gzip can expand to).
pub const MAX_BILL_TEXT: usize = 256 * 1024 * 1024;

/// The 27 columns of the current `ALL` bill, in WeChat's order (§4.3).
pub const ALL_COLUMNS: [&str; 27] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
];

/// The 7 columns of the `ALL` summary (§4.3).
pub const SUMMARY_COLUMNS: [&str; 7] = [
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
];

/// Columns without which a row cannot be reconciled; any other column may be absent.
const REQUIRED_COLUMNS: [&str; 14] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "微信订单号",
    "商户订单号",
    "交易状态",
    "应结订单金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "退款状态",
    "手续费",
    "订单金额",
    "申请退款金额",
];

const REQUIRED_SUMMARY: [&str; 4] = ["总交易单数", "应结订单总金额", "退款总金额", "手续费总金额"];

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BillError {
    #[error("WeChat is still generating the bill (Bill Creating); try again later")]
    Creating,
    #[error("downloadbill refused: {return_msg}{}", error_code.as_deref().map(|c| format!(" (error_code {c})")).unwrap_or_default())]
    Refused {
        return_msg: String,
        error_code: Option<String>,
    },
    #[error(transparent)]
    Call(#[from] WechatError),
    #[error("bill is not valid gzip: {0}")]
    Gzip(String),
    #[error("bill text is larger than {MAX_BILL_TEXT} bytes")]
    TooLarge,
    #[error("bill is not UTF-8 text")]
    NotUtf8,
    #[error("unknown bill layout: {0}")]
    UnknownLayout(String),
    #[error("bill line {line}: {message}")]
    BadRow { line: usize, message: String },
    #[error("bill line {line}, column {column}: unparseable amount {value:?}")]
    BadAmount {
        line: usize,
        column: String,
        value: String,
    },
    #[error("bill summary {column} is {summary} but the rows add up to {rows}")]
    SummaryMismatch {
        column: &'static str,
        summary: i64,
        rows: i64,
    },
}

impl BillError {
    /// Metrics label.
    /// Every value [`Self::kind`] answers, for the metrics' pre-initialisation.
    pub const KINDS: [&'static str; 9] = [
        "creating",
        "refused",
        "call_failed",
        "bad_gzip",
        "too_large",
        "bad_row",
        "unknown_layout",
        "bad_amount",
        "summary_mismatch",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            BillError::Creating => "creating",
            BillError::Refused { .. } => "refused",
            BillError::Call(_) => "call_failed",
            BillError::Gzip(_) => "bad_gzip",
            BillError::TooLarge => "too_large",
            BillError::NotUtf8 | BillError::BadRow { .. } => "bad_row",
            BillError::UnknownLayout(_) => "unknown_layout",
            BillError::BadAmount { .. } => "bad_amount",
            BillError::SummaryMismatch { .. } => "summary_mismatch",
        }
    }

    /// Worth asking again later the same day (§4.4): not generated yet, WeChat's own timeouts
    /// and compression failures, transport failures. A file that arrived and does not parse is
    /// not: the day fails with the error in its report.
    pub fn is_retryable(&self) -> bool {
        match self {
            BillError::Creating => true,
            BillError::Refused { return_msg, .. } => {
                let m = return_msg.to_ascii_lowercase();
                m == "systemerror" || m == "system error" || m.contains("gzip error")
            }
            BillError::Call(e) => !e.is_final(),
            _ => false,
        }
    }
}

/// `bill_type=ALL` for one Beijing calendar day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BillRequest {
    pub bill_date: NaiveDate,
    /// `tar_type=GZIP` (the default; plain text otherwise).
    pub gzip: bool,
}

impl BillRequest {
    pub fn all(bill_date: NaiveDate) -> Self {
        BillRequest {
            bill_date,
            gzip: true,
        }
    }

    pub fn fields(&self) -> Params {
        let mut f = Params::new();
        f.insert(
            "bill_date".into(),
            self.bill_date.format("%Y%m%d").to_string(),
        );
        f.insert("bill_type".into(), "ALL".into());
        if self.gzip {
            f.insert("tar_type".into(), "GZIP".into());
        }
        f
    }
}

/// A bill as received, to be archived before it is parsed (WeChat keeps 3 months).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawBill {
    pub bytes: Bytes,
    pub gzip: bool,
}

impl RawBill {
    /// An archived body: gzip when it starts with the gzip magic, text otherwise.
    pub fn from_stored(bytes: Bytes) -> Self {
        let gzip = bytes.starts_with(&GZIP_MAGIC);
        RawBill { bytes, gzip }
    }

    pub fn text(&self) -> Result<String, BillError> {
        let bytes = if self.gzip {
            gunzip(&self.bytes)?
        } else {
            self.bytes.to_vec()
        };
        String::from_utf8(bytes).map_err(|_| BillError::NotUtf8)
    }

    pub fn parse(&self) -> Result<Bill, BillError> {
        parse_bill(&self.text()?)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BillDownload {
    /// `No Bill Exist`: no successful transaction that day.
    NoBill,
    Bill(RawBill),
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Gunzips (all members, CRC and length checked); a truncated or corrupt stream is an error.
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, BillError> {
    let mut out = Vec::new();
    let limit = u64::try_from(MAX_BILL_TEXT).unwrap_or(u64::MAX);
    flate2::read::MultiGzDecoder::new(bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| BillError::Gzip(e.to_string()))?;
    if out.len() > MAX_BILL_TEXT {
        return Err(BillError::TooLarge);
    }
    Ok(out)
}

/// A downloadbill reply: the gzip magic first (the XML error is plain even with GZIP), then an
/// XML reply (`<` after optional whitespace/BOM), else plain text — unless gzip was asked for.
pub fn decode_reply(body: Bytes, asked_gzip: bool) -> Result<BillDownload, BillError> {
    if body.starts_with(&GZIP_MAGIC) {
        return Ok(BillDownload::Bill(RawBill {
            bytes: body,
            gzip: true,
        }));
    }
    let text = std::str::from_utf8(&body).map_err(|_| {
        if asked_gzip {
            BillError::Gzip("neither gzip nor an XML reply".into())
        } else {
            BillError::NotUtf8
        }
    })?;
    let trimmed = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    if trimmed.starts_with('<') {
        let p = xml::decode(trimmed.as_bytes())
            .map_err(|e| WechatError::Protocol(format!("unparsable downloadbill reply: {e}")))?;
        let get = |k: &str| p.get(k).map(String::as_str).filter(|v| !v.is_empty());
        if get("return_code") == Some("SUCCESS") {
            return Err(WechatError::Protocol("downloadbill answered XML SUCCESS".into()).into());
        }
        let msg = get("return_msg").unwrap_or("");
        let code = get("error_code").or_else(|| get("err_code"));
        // The documentation says "NO Bill Exist", WeChat sends "No Bill Exist" (§4.4).
        if msg.eq_ignore_ascii_case("No Bill Exist") || code == Some("20002") {
            return Ok(BillDownload::NoBill);
        }
        if msg.eq_ignore_ascii_case("Bill Creating") {
            return Err(BillError::Creating);
        }
        return Err(BillError::Refused {
            return_msg: msg.to_owned(),
            error_code: code.map(str::to_owned),
        });
    }
    if asked_gzip {
        return Err(BillError::Gzip("neither gzip nor an XML reply".into()));
    }
    if trimmed.is_empty() {
        return Err(WechatError::Protocol("empty downloadbill reply".into()).into());
    }
    Ok(BillDownload::Bill(RawBill {
        bytes: body,
        gzip: false,
    }))
}

/// An amount string as an integer count of 10^-`scale` yuan: `-?digits(.digits)?`, decimals
/// beyond `scale` allowed only when they are zeros (so "0.010" is 1 fen and "0.015" an error).
pub fn parse_yuan(s: &str, scale: u32) -> Option<i64> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return None,
        None => (unsigned, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let width = usize::try_from(scale).ok()?;
    let (kept, rest) = frac.split_at(frac.len().min(width));
    if rest.bytes().any(|b| b != b'0') {
        return None;
    }
    let mut value: i64 = 0;
    for b in int.bytes().chain(kept.bytes()) {
        value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    for _ in kept.len()..width {
        value = value.checked_mul(10)?;
    }
    Some(if negative { -value } else { value })
}

/// Yuan with at most 2 significant decimals → fen.
pub fn yuan_to_fen(s: &str) -> Option<i64> {
    parse_yuan(s, 2)
}

/// The fee's 5-decimal yuan → millifen (1/1000 fen).
pub fn yuan_to_millifen(s: &str) -> Option<i64> {
    parse_yuan(s, 5)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BillTradeState {
    /// A payment row.
    Success,
    /// A refund row.
    Refund,
    /// A cancelled micropay (not used by JSAPI).
    Revoked,
    Other(String),
}

impl BillTradeState {
    pub fn parse(s: &str) -> Self {
        match s {
            "SUCCESS" => BillTradeState::Success,
            "REFUND" => BillTradeState::Refund,
            "REVOKED" => BillTradeState::Revoked,
            other => BillTradeState::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            BillTradeState::Success => "SUCCESS",
            BillTradeState::Refund => "REFUND",
            BillTradeState::Revoked => "REVOKED",
            BillTradeState::Other(s) => s,
        }
    }
}

/// The refund status column: a snapshot at generation time, never updated (§4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BillRefundStatus {
    Success,
    Processing,
    Other(String),
}

impl BillRefundStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "SUCCESS" => BillRefundStatus::Success,
            "PROCESSING" => BillRefundStatus::Processing,
            other => BillRefundStatus::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            BillRefundStatus::Success => "SUCCESS",
            BillRefundStatus::Processing => "PROCESSING",
            BillRefundStatus::Other(s) => s,
        }
    }
}

/// One data line. Amounts in fen except the fee (millifen); empty and `0` ids are `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillRow {
    /// 1-based line number in the bill text.
    pub line: usize,
    /// Payment time for payments, refund *submission* time for refunds.
    pub trade_time: DateTime<Utc>,
    pub appid: String,
    pub mch_id: String,
    pub sub_mch_id: Option<String>,
    pub device_info: Option<String>,
    pub transaction_id: String,
    pub out_trade_no: String,
    pub openid: Option<String>,
    pub trade_type: Option<String>,
    pub trade_state: BillTradeState,
    pub bank_type: Option<String>,
    pub fee_type: Option<String>,
    /// 应结订单金额: what was received net of non-recharge coupons (0 on refund rows).
    pub settlement_fen: i64,
    pub coupon_fen: Option<i64>,
    pub refund_id: Option<String>,
    pub out_refund_no: Option<String>,
    pub refund_fen: i64,
    pub recharge_coupon_refund_fen: Option<i64>,
    /// ORIGINAL / BALANCE.
    pub refund_type: Option<String>,
    pub refund_status: Option<BillRefundStatus>,
    pub body: Option<String>,
    pub attach: Option<String>,
    /// 手续费, negative on refund rows.
    pub fee_millifen: i64,
    pub fee_rate: Option<String>,
    /// 订单金额: the order amount (0 on refund rows).
    pub order_fen: i64,
    /// 申请退款金额: the refund asked for (0 on payment rows).
    pub applied_refund_fen: i64,
    pub fee_remark: Option<String>,
    /// Columns of other layouts (e.g. the REFUND bill's 退款申请时间), by name.
    pub extra: Vec<(String, String)>,
}

/// The summary line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillSummary {
    pub count: u64,
    pub settlement_fen: i64,
    pub refund_fen: i64,
    pub recharge_coupon_refund_fen: Option<i64>,
    pub fee_millifen: i64,
    pub order_fen: Option<i64>,
    pub applied_refund_fen: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bill {
    pub columns: Vec<String>,
    pub rows: Vec<BillRow>,
    pub summary: BillSummary,
}

impl Bill {
    pub fn payments(&self) -> impl Iterator<Item = &BillRow> {
        self.rows
            .iter()
            .filter(|r| r.trade_state == BillTradeState::Success)
    }

    pub fn refunds(&self) -> impl Iterator<Item = &BillRow> {
        self.rows
            .iter()
            .filter(|r| r.trade_state == BillTradeState::Refund)
    }
}

/// Column name → position, refusing duplicates and missing required columns.
fn index(names: &[String], required: &[&str], what: &str) -> Result<Vec<usize>, BillError> {
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(BillError::UnknownLayout(format!(
                "{what} has column {n} twice"
            )));
        }
    }
    let missing: Vec<&str> = required
        .iter()
        .filter(|r| !names.iter().any(|n| n == *r))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Err(BillError::UnknownLayout(format!(
            "{what} lacks {}",
            missing.join(", ")
        )));
    }
    Ok((0..names.len()).collect())
}

/// A data line: every value is prefixed by a backtick, so the separator is `` ,` `` and commas
/// inside a value survive.
fn values(line: &str, line_no: usize) -> Result<Vec<&str>, BillError> {
    let rest = line.strip_prefix('`').ok_or_else(|| BillError::BadRow {
        line: line_no,
        message: "data line does not start with a backtick".into(),
    })?;
    Ok(rest.split(",`").collect())
}

/// Named access to one line's values.
struct Line<'a> {
    names: &'a [String],
    values: Vec<&'a str>,
    line: usize,
}

impl<'a> Line<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        let i = self.names.iter().position(|n| n == name)?;
        self.values.get(i).copied()
    }

    fn text(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).map(str::to_owned)
    }

    fn id(&self, name: &str) -> Option<String> {
        self.text(name).filter(|v| v != "0")
    }

    fn required(&self, name: &str) -> Result<String, BillError> {
        self.text(name).ok_or_else(|| BillError::BadRow {
            line: self.line,
            message: format!("{name} is empty"),
        })
    }

    fn amount(&self, name: &str, parse: fn(&str) -> Option<i64>) -> Result<i64, BillError> {
        let v = self.get(name).unwrap_or("");
        parse(v).ok_or_else(|| BillError::BadAmount {
            line: self.line,
            column: name.to_owned(),
            value: v.to_owned(),
        })
    }

    fn optional_amount(
        &self,
        name: &str,
        parse: fn(&str) -> Option<i64>,
    ) -> Result<Option<i64>, BillError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(_) => self.amount(name, parse).map(Some),
        }
    }
}

fn row(line: &Line<'_>) -> Result<BillRow, BillError> {
    let time = line.required("交易时间")?;
    let trade_time = parse_beijing_datetime(&time).ok_or_else(|| BillError::BadRow {
        line: line.line,
        message: format!("交易时间 {time:?} is not yyyy-MM-dd HH:mm:ss"),
    })?;
    let known = |n: &str| ALL_COLUMNS.contains(&n);
    Ok(BillRow {
        line: line.line,
        trade_time,
        appid: line.required("公众账号ID")?,
        mch_id: line.required("商户号")?,
        sub_mch_id: line.id("特约商户号"),
        device_info: line.text("设备号"),
        transaction_id: line.required("微信订单号")?,
        out_trade_no: line.required("商户订单号")?,
        openid: line.text("用户标识"),
        trade_type: line.text("交易类型"),
        trade_state: BillTradeState::parse(&line.required("交易状态")?),
        bank_type: line.text("付款银行"),
        fee_type: line.text("货币种类"),
        settlement_fen: line.amount("应结订单金额", yuan_to_fen)?,
        coupon_fen: line.optional_amount("代金券金额", yuan_to_fen)?,
        refund_id: line.id("微信退款单号"),
        out_refund_no: line.id("商户退款单号"),
        refund_fen: line.amount("退款金额", yuan_to_fen)?,
        recharge_coupon_refund_fen: line.optional_amount("充值券退款金额", yuan_to_fen)?,
        refund_type: line.text("退款类型"),
        refund_status: line.text("退款状态").map(|s| BillRefundStatus::parse(&s)),
        body: line.text("商品名称"),
        attach: line.text("商户数据包"),
        fee_millifen: line.amount("手续费", yuan_to_millifen)?,
        fee_rate: line.text("费率"),
        order_fen: line.amount("订单金额", yuan_to_fen)?,
        applied_refund_fen: line.amount("申请退款金额", yuan_to_fen)?,
        fee_remark: line.text("费率备注"),
        extra: line
            .names
            .iter()
            .zip(&line.values)
            .filter(|(n, _)| !known(n))
            .map(|(n, v)| (n.clone(), (*v).to_owned()))
            .collect(),
    })
}

fn summary(line: &Line<'_>) -> Result<BillSummary, BillError> {
    let count = line.required("总交易单数")?;
    Ok(BillSummary {
        count: count.parse::<u64>().map_err(|_| BillError::BadAmount {
            line: line.line,
            column: "总交易单数".into(),
            value: count.clone(),
        })?,
        settlement_fen: line.amount("应结订单总金额", yuan_to_fen)?,
        refund_fen: line.amount("退款总金额", yuan_to_fen)?,
        recharge_coupon_refund_fen: line.optional_amount("充值券退款总金额", yuan_to_fen)?,
        fee_millifen: line.amount("手续费总金额", yuan_to_millifen)?,
        order_fen: line.optional_amount("订单总金额", yuan_to_fen)?,
        applied_refund_fen: line.optional_amount("申请退款总金额", yuan_to_fen)?,
    })
}

fn check_total(
    column: &'static str,
    summary: Option<i64>,
    rows: impl Iterator<Item = i64>,
) -> Result<(), BillError> {
    let Some(summary) = summary else {
        return Ok(());
    };
    let sum = rows.fold(0i64, i64::saturating_add);
    if sum != summary {
        return Err(BillError::SummaryMismatch {
            column,
            summary,
            rows: sum,
        });
    }
    Ok(())
}

/// §4.5: header = first line, summary header + summary = last two, data lines between; lines
/// end in `\n` or `\r\n`, blank lines are dropped. Every data line has as many values as the
/// header has names, and the summary's count and totals match the rows.
pub fn parse_bill(text: &str) -> Result<Bill, BillError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let [(_, header), data @ .., (_, sum_header), (sum_no, sum_line)] = lines.as_slice() else {
        return Err(BillError::UnknownLayout(
            "fewer than a header, a summary header and a summary line".into(),
        ));
    };
    if header.starts_with('`') || sum_header.starts_with('`') {
        return Err(BillError::UnknownLayout(
            "header lines must not start with a backtick".into(),
        ));
    }
    let columns: Vec<String> = header.split(',').map(str::to_owned).collect();
    index(&columns, &REQUIRED_COLUMNS, "the header")?;
    let sum_columns: Vec<String> = sum_header.split(',').map(str::to_owned).collect();
    index(&sum_columns, &REQUIRED_SUMMARY, "the summary header")?;

    let mut rows = Vec::with_capacity(data.len());
    for (no, l) in data {
        let vals = values(l, *no)?;
        if vals.len() != columns.len() {
            return Err(BillError::BadRow {
                line: *no,
                message: format!("{} values for {} columns", vals.len(), columns.len()),
            });
        }
        rows.push(row(&Line {
            names: &columns,
            values: vals,
            line: *no,
        })?);
    }
    let sum_vals = values(sum_line, *sum_no)?;
    if sum_vals.len() != sum_columns.len() {
        return Err(BillError::BadRow {
            line: *sum_no,
            message: format!(
                "summary has {} values for {} columns",
                sum_vals.len(),
                sum_columns.len()
            ),
        });
    }
    let summary = summary(&Line {
        names: &sum_columns,
        values: sum_vals,
        line: *sum_no,
    })?;
    let n = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    check_total(
        "总交易单数",
        Some(i64::try_from(summary.count).unwrap_or(i64::MAX)),
        std::iter::repeat_n(1, usize::try_from(n).unwrap_or(0)),
    )?;
    check_total(
        "应结订单总金额",
        Some(summary.settlement_fen),
        rows.iter().map(|r| r.settlement_fen),
    )?;
    check_total(
        "退款总金额",
        Some(summary.refund_fen),
        rows.iter().map(|r| r.refund_fen),
    )?;
    check_total(
        "订单总金额",
        summary.order_fen,
        rows.iter().map(|r| r.order_fen),
    )?;
    check_total(
        "申请退款总金额",
        summary.applied_refund_fen,
        rows.iter().map(|r| r.applied_refund_fen),
    )?;
    Ok(Bill {
        columns,
        rows,
        summary,
    })
}

impl WechatClient {
    /// `pay/downloadbill` (no certificate). Transport failures are retried up to
    /// `max_retries`; the reply is decoded but not parsed, so the caller can archive the raw
    /// bill first ([`RawBill::parse`]).
    pub async fn download_bill(&self, req: &BillRequest) -> Result<BillDownload, BillError> {
        let fields = self.signed_request(req.fields(), sign::nonce());
        let body = Bytes::from(xml::encode(&fields));
        let url = self.pay_url("/pay/downloadbill");
        let client = self.plain_http();
        let date = req.bill_date.to_string();
        let reply = self
            .calls
            .observed("downloadbill", async {
                self.calls
                    .retrying(
                        || {
                            self.calls
                                .send_via(&client, Some(body.clone()), &url, MAX_BILL_BYTES)
                        },
                        |attempt, e| {
                            tracing::warn!(api = "downloadbill", %date, attempt, error = %e, "retrying");
                        },
                    )
                    .await
            })
            .await?;
        decode_reply(reply, req.gzip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write as _;

    /// The bill_parse.py fixture of §4.5: WeChat's published ALL sample row plus one refund.
    const FIXTURE: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注
`2022-03-21 13:51:31,`wxfdc955f7104ad557,`180023671,`176531292,`,`420000612032130748613220688,`2021WERUN1647840687637,`oZWaCKXip5njeEiloC4oeOV1TTsk,`JSAPI,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`微信云托管支付测试,`,`0.00000,`0.90%,`0.01,`0.00,`
`2022-03-21 14:02:10,`wxfdc955f7104ad557,`180023671,`176531292,`,`420000612032130748613220688,`2021WERUN1647840687637,`oZWaCKXip5njeEiloC4oeOV1TTsk,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300000012022032100000000001,`RF2021WERUN1647840687637,`0.01,`0.00,`ORIGINAL,`SUCCESS,`微信云托管支付测试,`,`-0.00000,`0.90%,`0.00,`0.01,`
总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额
`2,`0.01,`0.01,`0.00,`0.00000,`0.01,`0.01
";

    fn gz(text: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(text).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn parses_the_documented_fixture() {
        let bill = parse_bill(FIXTURE).expect("parses");
        assert_eq!(bill.columns.len(), 27);
        assert_eq!(bill.columns, ALL_COLUMNS);
        assert_eq!(bill.rows.len(), 2);
        // bill_parse.out: "SUCCESS … settle_fen 1 refund_fen 0 out_refund_no 0 refund_status ''"
        let pay = &bill.rows[0];
        assert_eq!(pay.trade_state, BillTradeState::Success);
        assert_eq!(pay.out_trade_no, "2021WERUN1647840687637");
        assert_eq!(pay.transaction_id, "420000612032130748613220688");
        assert_eq!((pay.settlement_fen, pay.refund_fen), (1, 0));
        assert_eq!((pay.order_fen, pay.applied_refund_fen), (1, 0));
        assert_eq!(pay.out_refund_no, None);
        assert_eq!(pay.refund_id, None);
        assert_eq!(pay.refund_status, None);
        assert_eq!(pay.sub_mch_id.as_deref(), Some("176531292"));
        assert_eq!(pay.device_info, None);
        assert_eq!(pay.fee_millifen, 0);
        assert_eq!(pay.fee_rate.as_deref(), Some("0.90%"));
        assert_eq!(pay.body.as_deref(), Some("微信云托管支付测试"));
        assert_eq!(pay.line, 2);
        assert_eq!(
            pay.trade_time.to_rfc3339(),
            "2022-03-21T05:51:31+00:00",
            "Beijing time"
        );
        // "REFUND … settle_fen 0 refund_fen 1 out_refund_no RF2021WERUN1647840687637 SUCCESS"
        let refund = &bill.rows[1];
        assert_eq!(refund.trade_state, BillTradeState::Refund);
        assert_eq!((refund.settlement_fen, refund.refund_fen), (0, 1));
        assert_eq!(
            refund.out_refund_no.as_deref(),
            Some("RF2021WERUN1647840687637")
        );
        assert_eq!(
            refund.refund_id.as_deref(),
            Some("50300000012022032100000000001")
        );
        assert_eq!(refund.refund_status, Some(BillRefundStatus::Success));
        assert_eq!(refund.refund_type.as_deref(), Some("ORIGINAL"));
        assert_eq!(refund.applied_refund_fen, 1);
        assert!(refund.extra.is_empty());
        assert_eq!(
            bill.summary,
            BillSummary {
                count: 2,
                settlement_fen: 1,
                refund_fen: 1,
                recharge_coupon_refund_fen: Some(0),
                fee_millifen: 0,
                order_fen: Some(1),
                applied_refund_fen: Some(1),
            }
        );
        assert_eq!(bill.payments().count(), 1);
        assert_eq!(bill.refunds().count(), 1);
    }

    #[test]
    fn crlf_blank_lines_bom_and_reordered_columns() {
        let crlf = format!("\u{feff}{}\n\n", FIXTURE.replace('\n', "\r\n"));
        assert_eq!(parse_bill(&crlf), parse_bill(FIXTURE));
        // By name, not position: swap two columns in the header and in every row.
        let swap = |l: &str, sep: &str| {
            let mut v: Vec<&str> = l.split(sep).collect();
            v.swap(5, 6);
            v.join(sep)
        };
        let lines: Vec<&str> = FIXTURE.lines().collect();
        let swapped = [
            swap(lines[0], ","),
            format!("`{}", swap(&lines[1][1..], ",`")),
            format!("`{}", swap(&lines[2][1..], ",`")),
            lines[3].to_owned(),
            lines[4].to_owned(),
        ]
        .join("\n");
        let a = parse_bill(&swapped).expect("swapped");
        let b = parse_bill(FIXTURE).expect("fixture");
        assert_eq!(a.rows[0].transaction_id, b.rows[0].transaction_id);
        assert_eq!(a.rows[0].out_trade_no, b.rows[0].out_trade_no);
        // An extra column of another layout is kept by name.
        let extra = FIXTURE
            .replacen("费率备注\n", "费率备注,退款成功时间\n", 1)
            .replace("`0.01,`0.00,`\n", "`0.01,`0.00,`,`\n")
            .replace("`0.00,`0.01,`\n", "`0.00,`0.01,`,`2022-03-21 14:05:00\n");
        let e = parse_bill(&extra).expect("extra column");
        assert_eq!(
            e.rows[1].extra,
            vec![("退款成功时间".to_owned(), "2022-03-21 14:05:00".to_owned())]
        );
    }

    #[test]
    fn commas_inside_values_survive() {
        let text = FIXTURE.replace("微信云托管支付测试", "算力,套餐");
        let bill = parse_bill(&text).expect("parses");
        assert_eq!(bill.rows[0].body.as_deref(), Some("算力,套餐"));
    }

    #[test]
    fn unknown_layouts_are_refused() {
        // The legacy format's 总金额 instead of 订单金额/申请退款金额.
        let legacy = FIXTURE.replacen(",订单金额,申请退款金额,", ",总金额,企业红包金额,", 1);
        let e = parse_bill(&legacy).expect_err("legacy");
        assert!(
            matches!(e, BillError::UnknownLayout(ref m) if m.contains("订单金额")),
            "{e}"
        );
        assert_eq!(e.kind(), "unknown_layout");
        let dup = FIXTURE.replacen("设备号", "商户号", 1);
        assert!(matches!(parse_bill(&dup), Err(BillError::UnknownLayout(_))));
        let no_sum = FIXTURE.replacen("总交易单数", "交易单数", 1);
        assert!(matches!(
            parse_bill(&no_sum),
            Err(BillError::UnknownLayout(_))
        ));
        assert!(matches!(parse_bill(""), Err(BillError::UnknownLayout(_))));
        assert!(matches!(
            parse_bill("<xml><return_code>FAIL</return_code></xml>"),
            Err(BillError::UnknownLayout(_))
        ));
        // A row with a value too few or too many, a line without backticks.
        let short = FIXTURE.replacen("`0.90%,`0.01,`0.00,`\n", "`0.90%,`0.01,`0.00\n", 1);
        assert!(matches!(
            parse_bill(&short),
            Err(BillError::BadRow { line: 2, .. })
        ));
        let plain = FIXTURE.replacen("`2022-03-21 13:51:31,`", "2022-03-21 13:51:31,`", 1);
        assert!(matches!(
            parse_bill(&plain),
            Err(BillError::BadRow { line: 2, .. })
        ));
        let no_id = FIXTURE.replacen("`2021WERUN1647840687637,`", "`,`", 1);
        assert!(matches!(
            parse_bill(&no_id),
            Err(BillError::BadRow { line: 2, .. })
        ));
        let bad_time = FIXTURE.replacen("2022-03-21 13:51:31", "20220321135131", 1);
        assert!(matches!(
            parse_bill(&bad_time),
            Err(BillError::BadRow { .. })
        ));
    }

    #[test]
    fn bad_amounts_and_summary_mismatch() {
        for bad in [
            "0.015", "1,00", "", "abc", "1e2", "0.0.1", ".5", "5.", "--1",
        ] {
            let text = FIXTURE.replacen("`CNY,`0.01,", &format!("`CNY,`{bad},"), 1);
            let e = parse_bill(&text).expect_err(bad);
            assert!(
                matches!(e, BillError::BadAmount { line: 2, ref column, .. } if column == "应结订单金额")
                    || matches!(e, BillError::BadRow { line: 2, .. }),
                "{bad}: {e}"
            );
        }
        let text = FIXTURE.replacen("`CNY,`0.01,", "`CNY,`0.02,", 1);
        assert_eq!(
            parse_bill(&text),
            Err(BillError::SummaryMismatch {
                column: "应结订单总金额",
                summary: 1,
                rows: 2
            })
        );
        let count = FIXTURE.replacen("`2,`0.01", "`3,`0.01", 1);
        assert!(matches!(
            parse_bill(&count),
            Err(BillError::SummaryMismatch {
                column: "总交易单数",
                ..
            })
        ));
        let refund = FIXTURE.replacen("`2,`0.01,`0.01,", "`2,`0.01,`0.02,", 1);
        assert!(matches!(
            parse_bill(&refund),
            Err(BillError::SummaryMismatch {
                column: "退款总金额",
                ..
            })
        ));
    }

    #[test]
    fn yuan_arithmetic_is_exact() {
        assert_eq!(yuan_to_fen("0.01"), Some(1));
        assert_eq!(yuan_to_fen("0.10"), Some(10));
        assert_eq!(yuan_to_fen("0.1"), Some(10));
        assert_eq!(yuan_to_fen("12"), Some(1200));
        assert_eq!(yuan_to_fen("1234567.89"), Some(123_456_789));
        assert_eq!(yuan_to_fen("0.010"), Some(1));
        assert_eq!(yuan_to_fen("-0.02"), Some(-2));
        assert_eq!(yuan_to_fen("-0.00"), Some(0));
        assert_eq!(yuan_to_fen("0.015"), None);
        assert_eq!(yuan_to_fen("99999999999999999999"), None);
        assert_eq!(yuan_to_millifen("0.00600"), Some(600));
        assert_eq!(yuan_to_millifen("-0.02000"), Some(-2000));
        assert_eq!(yuan_to_millifen("0.000001"), None);
        // 0.1 + 0.2 in fen is 30, whatever a float would say.
        assert_eq!(
            yuan_to_fen("0.10")
                .zip(yuan_to_fen("0.20"))
                .map(|(a, b)| a + b),
            Some(30)
        );
    }

    #[test]
    fn replies_gzip_plain_and_xml() {
        let body = Bytes::from(gz(FIXTURE.as_bytes()));
        let BillDownload::Bill(raw) = decode_reply(body.clone(), true).expect("gzip") else {
            panic!("expected a bill");
        };
        assert!(raw.gzip);
        assert_eq!(raw.parse().expect("parses").rows.len(), 2);
        assert_eq!(RawBill::from_stored(body), raw);
        let BillDownload::Bill(plain) = decode_reply(Bytes::from(FIXTURE), false).expect("plain")
        else {
            panic!("expected a bill");
        };
        assert!(!plain.gzip);
        assert_eq!(plain.text().as_deref(), Ok(FIXTURE));
        assert_eq!(RawBill::from_stored(Bytes::from(FIXTURE)), plain);

        let xml = |msg: &str, code: &str| {
            Bytes::from(format!(
                "<xml><return_code>FAIL</return_code><return_msg><![CDATA[{msg}]]></return_msg>{code}</xml>"
            ))
        };
        for msg in ["No Bill Exist", "NO Bill Exist"] {
            assert_eq!(decode_reply(xml(msg, ""), true), Ok(BillDownload::NoBill));
        }
        assert_eq!(
            decode_reply(xml("x", "<error_code>20002</error_code>"), true),
            Ok(BillDownload::NoBill)
        );
        let creating = decode_reply(xml("Bill Creating", ""), true).expect_err("creating");
        assert_eq!(creating, BillError::Creating);
        assert!(creating.is_retryable());
        let sign = decode_reply(xml("SIGN ERROR", "<error_code>20001</error_code>"), true)
            .expect_err("sign");
        assert_eq!(
            sign,
            BillError::Refused {
                return_msg: "SIGN ERROR".into(),
                error_code: Some("20001".into())
            }
        );
        assert!(!sign.is_retryable());
        assert!(sign.to_string().contains("SIGN ERROR"));
        for msg in ["SYSTEMERROR", "system error", "CompressGZip Error"] {
            assert!(
                decode_reply(xml(msg, ""), true)
                    .expect_err(msg)
                    .is_retryable(),
                "{msg}"
            );
        }
        // Plain text when gzip was asked for, and garbage.
        assert!(matches!(
            decode_reply(Bytes::from(FIXTURE), true),
            Err(BillError::Gzip(_))
        ));
        assert!(matches!(
            decode_reply(Bytes::from_static(b"\xff\xfe"), true),
            Err(BillError::Gzip(_))
        ));
    }

    #[test]
    fn truncated_and_corrupt_gzip_fail() {
        let full = gz(FIXTURE.as_bytes());
        for cut in [full.len() - 1, full.len() - 8, full.len() / 2, 10] {
            let raw = RawBill {
                bytes: Bytes::copy_from_slice(&full[..cut]),
                gzip: true,
            };
            let e = raw.parse().expect_err("truncated");
            assert!(matches!(e, BillError::Gzip(_)), "cut {cut}: {e}");
            assert_eq!(e.kind(), "bad_gzip");
            assert!(!e.is_retryable());
        }
        let mut flipped = full.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let raw = RawBill {
            bytes: Bytes::from(flipped),
            gzip: true,
        };
        assert!(matches!(raw.parse(), Err(BillError::Gzip(_))));
    }

    #[test]
    fn request_fields_and_db1_vector() {
        let date = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date");
        let mut f = BillRequest::all(date).fields();
        f.insert("appid".into(), "wxd930ea5d5a258f4f".into());
        f.insert("mch_id".into(), "10000100".into());
        f.insert("nonce_str".into(), "ibuaiVcKdpRxkhJA".into());
        assert_eq!(
            sign::sign(&f, "192006250b4c09247ec02edce69f6a2d", sign::SignType::Md5),
            "7626C0FBD398898E5606907A6C0B38FE"
        );
        let plain = BillRequest {
            bill_date: date,
            gzip: false,
        };
        assert!(!plain.fields().contains_key("tar_type"));
    }
}
