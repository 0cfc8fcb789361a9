//! `secapi/pay/refund`, `pay/refundquery`, refund notifications, and `/simulate/refunds*`.
//!
//! As at WeChat: a refund call needs the merchant's client certificate (else HTTP 400 "No
//! required SSL certificate was sent"); one `out_refund_no` is one refund, re-sending it with the
//! same amounts answers the same refund and the same number with other amounts is refused;
//! refunds of an order add up to at most its amount, at most 50 of them, within a year of the
//! payment. An accepted refund is PROCESSING and then settles (SUCCESS by default) and is
//! notified with an encrypted `req_info` on the pay notifier's retry schedule, at the request's
//! `notify_url` (a refund without one is not notified: WeChat would fall back to the merchant
//! platform's setting, which the simulator does not have).
//!
//! Tests drive it through `/simulate/refunds*`: faults (err_codes, once or N times, before or
//! after the refund is recorded; settle as REFUNDCLOSE/CHANGE or never; no notification), a
//! refund made "in the merchant portal", manual settlement, and the record of every call received.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::NaiveDateTime;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Sandbox;
use super::notifier::{self, Subject, take_one};
use super::pay::{Reply, Verified, lack, nonempty, parse_time, random_digits, xml_response};
use super::state::{SimTradeState, State};
use super::tls::ClientCertPresented;
use crate::wechat::Params;
use crate::wechat::refund::MAX_REFUNDS_PER_ORDER;
use crate::wechat::refund_notify::build_notification;
use crate::wechat::{sign, xml};

/// What nginx in front of `api.mch.weixin.qq.com` answers without a client certificate.
pub(super) const NO_CLIENT_CERT: &str = "<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>No required SSL certificate was sent</center>\r\n</body>\r\n</html>\r\n";

/// Calls kept in the record of received refund requests (oldest dropped first).
const MAX_RECEIVED: usize = 10_000;

/// A refund may be asked for up to a year after the payment (§1.3).
const REFUNDABLE_DAYS: i64 = 365;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimRefundStatus {
    #[serde(rename = "PROCESSING")]
    Processing,
    #[serde(rename = "SUCCESS")]
    Success,
    #[serde(rename = "REFUNDCLOSE")]
    RefundClose,
    #[serde(rename = "CHANGE")]
    Change,
}

impl SimRefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SimRefundStatus::Processing => "PROCESSING",
            SimRefundStatus::Success => "SUCCESS",
            SimRefundStatus::RefundClose => "REFUNDCLOSE",
            SimRefundStatus::Change => "CHANGE",
        }
    }
}

pub(super) struct SimRefund {
    /// Creation order (refundquery lists an order's refunds in it).
    pub seq: u64,
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub refund_id: String,
    pub appid: String,
    pub total_fee: i64,
    pub refund_fee: i64,
    pub refund_desc: Option<String>,
    pub notify_url: Option<String>,
    pub status: SimRefundStatus,
    /// Beijing time; the bill's 交易时间 of a refund row.
    pub submitted_at: NaiveDateTime,
    pub success_time: Option<NaiveDateTime>,
    /// `API`, or `VENDOR_PLATFORM` for a refund made through `/simulate/refunds`.
    pub source: &'static str,
    /// Refund calls that carried this out_refund_no with the same amounts.
    pub requests: u32,
    pub notify_attempts: u64,
    pub acknowledged: bool,
}

/// One `secapi/pay/refund` call as received.
#[derive(Clone, Debug, Serialize)]
pub(super) struct ReceivedRefund {
    pub out_refund_no: Option<String>,
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub total_fee: Option<String>,
    pub refund_fee: Option<String>,
    pub nonce_str: Option<String>,
    pub notify_url: Option<String>,
    pub client_cert: bool,
    /// SUCCESS, an err_code, or NO_CLIENT_CERT.
    pub result: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefundFaults {
    /// The next `fail_times` refund calls answer result_code FAIL with this err_code.
    pub fail_code: Option<String>,
    pub fail_times: u32,
    /// The failure comes after the refund was recorded (WeChat did it, the answer says
    /// otherwise): a re-send of the same out_refund_no then finds it.
    pub fail_after_accept: bool,
    /// Added to every refund reply (past the client's timeout: an unknown outcome).
    pub latency_ms: u64,
    /// How accepted refunds end: SUCCESS (default), REFUNDCLOSE, CHANGE, or PROCESSING (they
    /// stay processing until `/simulate/refunds/{no}/settle`).
    pub outcome: Option<SimRefundStatus>,
    /// Time from acceptance to settlement (0: at once).
    pub settle_after_ms: u64,
    /// Settle without notifying (refundquery still tells).
    pub never_notify: bool,
    /// The next K refund notification deliveries are not sent (failed attempts).
    pub drop_notifications: u32,
    /// The next N refundquery calls answer SYSTEMERROR.
    pub query_systemerror: u32,
}

#[derive(Default)]
pub(super) struct RefundBook {
    pub refunds: BTreeMap<String, SimRefund>,
    next_seq: u64,
    pub received: Vec<ReceivedRefund>,
    pub faults: RefundFaults,
    pub attempts: u64,
    pub acknowledged: u64,
    pub pending_chains: u64,
}

impl RefundBook {
    /// A notification attempt; true when a drop fault swallows it.
    pub(super) fn on_attempt(&mut self, out_refund_no: &str) -> bool {
        self.attempts += 1;
        if let Some(r) = self.refunds.get_mut(out_refund_no) {
            r.notify_attempts += 1;
        }
        take_one(&mut self.faults.drop_notifications)
    }

    pub(super) fn on_acknowledged(&mut self, out_refund_no: &str) {
        self.acknowledged += 1;
        if let Some(r) = self.refunds.get_mut(out_refund_no) {
            r.acknowledged = true;
        }
    }

    fn record(&mut self, r: ReceivedRefund) {
        if self.received.len() >= MAX_RECEIVED {
            self.received.remove(0);
        }
        self.received.push(r);
    }

    /// Refunds of one order, oldest first.
    pub(super) fn of_order(&self, out_trade_no: &str) -> Vec<&SimRefund> {
        let mut v: Vec<&SimRefund> = self
            .refunds
            .values()
            .filter(|r| r.out_trade_no == out_trade_no)
            .collect();
        v.sort_by_key(|r| r.seq);
        v
    }
}

/// err_codes a fault may inject, with WeChat's descriptions (§1.5).
const FAULT_CODES: [(&str, &str); 11] = [
    ("SYSTEMERROR", "系统超时"),
    (
        "BIZERR_NEED_RETRY",
        "退款业务流程错误，需要商户触发重试来解决",
    ),
    ("FREQUENCY_LIMITED", "频率限制"),
    ("INVALID_REQ_TOO_MUCH", "无效请求过多"),
    ("NOTENOUGH", "基本账户余额不足，请充值后重新发起"),
    ("TRADE_OVERDUE", "订单已经超过退款期限"),
    ("USER_ACCOUNT_ABNORMAL", "退款请求失败，用户帐号注销"),
    ("ERROR", "业务错误"),
    ("ORDERNOTEXIST", "订单不存在"),
    ("INVALID_TRANSACTIONID", "无效transaction_id"),
    ("PARAM_ERROR", "参数错误"),
];

fn fault_code(code: &str) -> Option<(&'static str, &'static str)> {
    FAULT_CODES.iter().copied().find(|(c, _)| *c == code)
}

fn biz(code: &'static str, des: &str) -> Reply {
    Reply::BizFail {
        code,
        des: des.to_owned(),
    }
}

/// Beijing wall-clock time, as WeChat writes it.
pub(super) fn beijing_now() -> NaiveDateTime {
    (chrono::Utc::now() + chrono::Duration::hours(8)).naive_utc()
}

/// A refund to make, from the API or from the "merchant portal".
struct Intent {
    transaction_id: Option<String>,
    out_trade_no: Option<String>,
    out_refund_no: String,
    /// The order's amount as the caller states it (the portal does not).
    total_fee: Option<i64>,
    refund_fee: i64,
    refund_desc: Option<String>,
    notify_url: Option<String>,
    source: &'static str,
}

/// How an accepted refund settles.
enum Settle {
    Now(SimRefundStatus),
    After(Duration, SimRefundStatus),
    Never,
}

fn settle_plan(faults: &RefundFaults) -> Settle {
    match faults.outcome.unwrap_or(SimRefundStatus::Success) {
        SimRefundStatus::Processing => Settle::Never,
        s if faults.settle_after_ms == 0 => Settle::Now(s),
        s => Settle::After(Duration::from_millis(faults.settle_after_ms), s),
    }
}

fn positive_fen(s: &str) -> Option<i64> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<i64>().ok().filter(|v| *v > 0)
    } else {
        None
    }
}

fn valid_out_refund_no(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
}

/// Finds the order, checks the rules, and records a new refund — or recognises a re-send.
/// Returns the out_refund_no and whether the refund is new.
fn create_or_repeat(st: &mut State, intent: Intent) -> Result<(String, bool), Reply> {
    // transaction_id wins when both are given (§1.2).
    let key = match (&intent.transaction_id, &intent.out_trade_no) {
        (Some(tx), _) => st.by_transaction.get(tx).cloned(),
        (None, Some(no)) => Some(no.clone()),
        (None, None) => return Err(biz("PARAM_ERROR", &lack("out_trade_no"))),
    };
    let order = key
        .and_then(|k| st.orders.get(&k))
        .filter(|o| o.trade_state == SimTradeState::Success)
        .ok_or_else(|| biz("ORDERNOTEXIST", "订单不存在或未支付"))?;
    let paid_at = order.time_end.as_deref().and_then(parse_time);
    if paid_at.is_some_and(|t| beijing_now() - t > chrono::Duration::days(REFUNDABLE_DAYS)) {
        return Err(biz("TRADE_OVERDUE", "订单已经超过退款期限"));
    }
    let total_fee = intent.total_fee.unwrap_or(order.total_fee);
    if total_fee != order.total_fee {
        return Err(biz("PARAM_ERROR", "total_fee与订单金额不一致"));
    }
    let out_trade_no = order.out_trade_no.clone();
    let transaction_id = order.transaction_id.clone().unwrap_or_default();
    let appid = order.appid.clone();

    let book = &mut st.refunds;
    if let Some(existing) = book.refunds.get_mut(&intent.out_refund_no) {
        // "同一退款单号多次请求只退一笔"; other amounts are refused (§1.3 rule 6).
        if existing.out_trade_no == out_trade_no
            && existing.refund_fee == intent.refund_fee
            && existing.total_fee == total_fee
        {
            existing.requests += 1;
            return Ok((intent.out_refund_no, false));
        }
        return Err(biz(
            "INVALID_REQUEST",
            "订单金额或退款金额与之前请求不一致，请核实后再试",
        ));
    }
    let refunds = book.of_order(&out_trade_no);
    if refunds.len() >= MAX_REFUNDS_PER_ORDER {
        return Err(biz("ERROR", "该订单退款次数已达上限（50次）"));
    }
    let refunded: i64 = refunds
        .iter()
        .filter(|r| r.status != SimRefundStatus::RefundClose)
        .map(|r| r.refund_fee)
        .sum();
    if refunded + intent.refund_fee > total_fee {
        return Err(biz("ERROR", "累计退款金额大于支付金额"));
    }
    book.next_seq += 1;
    let refund = SimRefund {
        seq: book.next_seq,
        out_refund_no: intent.out_refund_no.clone(),
        out_trade_no,
        transaction_id,
        refund_id: format!("503{}", random_digits(26)),
        appid,
        total_fee,
        refund_fee: intent.refund_fee,
        refund_desc: intent.refund_desc,
        notify_url: intent.notify_url,
        status: SimRefundStatus::Processing,
        submitted_at: beijing_now(),
        success_time: None,
        source: intent.source,
        requests: 1,
        notify_attempts: 0,
        acknowledged: false,
    };
    book.refunds.insert(intent.out_refund_no.clone(), refund);
    Ok((intent.out_refund_no, true))
}

/// The fields of an accepted refund (§1.4).
fn accepted_fields(r: &SimRefund) -> Params {
    let mut f = Params::new();
    let fee = r.refund_fee.to_string();
    let total = r.total_fee.to_string();
    for (k, v) in [
        ("transaction_id", r.transaction_id.as_str()),
        ("out_trade_no", &r.out_trade_no),
        ("out_refund_no", &r.out_refund_no),
        ("refund_id", &r.refund_id),
        ("refund_fee", &fee),
        ("settlement_refund_fee", &fee),
        ("total_fee", &total),
        ("settlement_total_fee", &total),
        ("fee_type", "CNY"),
        ("cash_fee", &total),
        ("cash_refund_fee", &fee),
        ("coupon_refund_fee", "0"),
        ("coupon_refund_count", "0"),
    ] {
        f.insert(k.to_owned(), v.to_owned());
    }
    f
}

fn bj(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The decrypted `<root>` of the notification (§3.3).
fn notification_info(r: &SimRefund) -> Params {
    let mut f = Params::new();
    let fee = r.refund_fee.to_string();
    let total = r.total_fee.to_string();
    for (k, v) in [
        ("out_refund_no", r.out_refund_no.as_str()),
        ("out_trade_no", &r.out_trade_no),
        ("transaction_id", &r.transaction_id),
        ("refund_id", &r.refund_id),
        ("refund_fee", &fee),
        ("settlement_refund_fee", &fee),
        ("total_fee", &total),
        ("settlement_total_fee", &total),
        ("refund_status", r.status.as_str()),
        ("refund_recv_accout", "支付用户零钱"),
        ("refund_account", "REFUND_SOURCE_UNSETTLED_FUNDS"),
        ("refund_request_source", r.source),
    ] {
        f.insert(k.to_owned(), v.to_owned());
    }
    if let Some(t) = r.success_time {
        f.insert("success_time".into(), bj(t));
    }
    f
}

impl Sandbox {
    /// Settles a PROCESSING refund and notifies its notify_url (unless told not to, or none).
    fn settle_refund(
        &self,
        out_refund_no: &str,
        status: SimRefundStatus,
        notify: bool,
    ) -> Result<(), &'static str> {
        let cfg = self.config();
        let delivery = {
            let mut st = self.state();
            let never = st.refunds.faults.never_notify;
            let r = st
                .refunds
                .refunds
                .get_mut(out_refund_no)
                .ok_or("REFUNDNOTEXIST")?;
            if r.status != SimRefundStatus::Processing {
                return Err("not PROCESSING");
            }
            r.status = status;
            if status == SimRefundStatus::Success {
                r.success_time = Some(beijing_now());
            }
            match (&r.notify_url, notify && !never) {
                (Some(url), true) => Some((
                    url.clone(),
                    build_notification(
                        &r.appid,
                        &cfg.mch_id,
                        cfg.api_key.expose_secret(),
                        &sign::nonce(),
                        &notification_info(r),
                    ),
                )),
                _ => None,
            }
        };
        tracing::info!(%out_refund_no, status = status.as_str(), notified = delivery.is_some(), "sandbox refund settled");
        if let Some((url, body)) = delivery {
            notifier::spawn_chain(
                self.clone(),
                Subject::Refund(out_refund_no.to_owned()),
                url,
                body,
                Duration::ZERO,
            );
        }
        Ok(())
    }

    fn apply_settle(&self, out_refund_no: String, plan: Settle) {
        match plan {
            Settle::Never => {}
            Settle::Now(s) => {
                let _ = self.settle_refund(&out_refund_no, s, true);
            }
            Settle::After(delay, s) => {
                let sb = self.clone();
                actix_rt::spawn(async move {
                    actix_rt::time::sleep(delay).await;
                    let _ = sb.settle_refund(&out_refund_no, s, true);
                });
            }
        }
    }

    /// A verified refund call: faults, validation, the refund itself.
    fn process_refund(&self, v: &Verified) -> (Reply, Option<(String, Settle)>) {
        if let Err(reply) = self.check_appid(v) {
            return (reply, None);
        }
        let p = &v.params;
        let mut st = self.state();
        let fail = {
            let f = &mut st.refunds.faults;
            match f.fail_code.as_deref().and_then(fault_code) {
                Some(code) if take_one(&mut f.fail_times) => Some((code, f.fail_after_accept)),
                _ => None,
            }
        };
        if let Some(((code, des), false)) = fail {
            return (biz(code, des), None);
        }
        for f in ["out_refund_no", "total_fee", "refund_fee"] {
            if nonempty(p, f).is_none() {
                return (biz("PARAM_ERROR", &lack(f)), None);
            }
        }
        let get = |k: &str| nonempty(p, k).unwrap_or("");
        if !valid_out_refund_no(get("out_refund_no")) {
            return (biz("PARAM_ERROR", "out_refund_no参数错误"), None);
        }
        let (Some(total_fee), Some(refund_fee)) = (
            positive_fen(get("total_fee")),
            positive_fen(get("refund_fee")),
        ) else {
            return (biz("PARAM_ERROR", "total_fee或refund_fee参数错误"), None);
        };
        if let Some(u) = nonempty(p, "notify_url") {
            let ok = url::Url::parse(u)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
            if !ok {
                return (biz("PARAM_ERROR", "notify_url参数错误"), None);
            }
        }
        let intent = Intent {
            transaction_id: nonempty(p, "transaction_id").map(str::to_owned),
            out_trade_no: nonempty(p, "out_trade_no").map(str::to_owned),
            out_refund_no: get("out_refund_no").to_owned(),
            total_fee: Some(total_fee),
            refund_fee,
            refund_desc: nonempty(p, "refund_desc").map(str::to_owned),
            notify_url: nonempty(p, "notify_url").map(str::to_owned),
            source: "API",
        };
        let (no, new) = match create_or_repeat(&mut st, intent) {
            Ok(x) => x,
            Err(reply) => return (reply, None),
        };
        let plan = new.then(|| (no.clone(), settle_plan(&st.refunds.faults)));
        let reply = match fail {
            Some(((code, des), true)) => biz(code, des),
            _ => match st.refunds.refunds.get(&no) {
                Some(r) => Reply::Ok(accepted_fields(r)),
                None => biz("SYSTEMERROR", "系统超时"),
            },
        };
        (reply, plan)
    }

    fn refund_query_reply(&self, v: &Verified) -> Reply {
        if let Err(reply) = self.check_appid(v) {
            return reply;
        }
        let p = &v.params;
        let mut st = self.state();
        if take_one(&mut st.refunds.faults.query_systemerror) {
            return biz("SYSTEMERROR", "系统超时");
        }
        let none = || biz("REFUNDNOTEXIST", "退款订单查询失败");
        let offset = match nonempty(p, "offset") {
            None => 0,
            Some(o) => match o.parse::<usize>() {
                Ok(o) => o,
                Err(_) => return biz("PARAM_ERROR", "offset参数错误"),
            },
        };
        let book = &st.refunds;
        // refund_id > out_refund_no > transaction_id > out_trade_no (§2).
        let (refunds, by_order) = if let Some(id) = nonempty(p, "refund_id") {
            let r: Vec<&SimRefund> = book
                .refunds
                .values()
                .filter(|r| r.refund_id == id)
                .collect();
            (r, false)
        } else if let Some(no) = nonempty(p, "out_refund_no") {
            (book.refunds.get(no).into_iter().collect(), false)
        } else {
            let order = match (nonempty(p, "transaction_id"), nonempty(p, "out_trade_no")) {
                (Some(tx), _) => st.by_transaction.get(tx).cloned(),
                (None, Some(no)) => Some(no.to_owned()),
                (None, None) => return biz("PARAM_ERROR", &lack("out_refund_no")),
            };
            let Some(order) = order else {
                return none();
            };
            (book.of_order(&order), true)
        };
        let Some(first) = refunds.first() else {
            return none();
        };
        if by_order && offset >= refunds.len() && offset > 0 {
            return biz("PARAM_ERROR", "offset超过退款笔数");
        }
        let page: Vec<&&SimRefund> = refunds.iter().skip(offset).take(10).collect();
        let mut f = Params::new();
        let total = first.total_fee.to_string();
        f.insert("out_trade_no".into(), first.out_trade_no.clone());
        f.insert("transaction_id".into(), first.transaction_id.clone());
        f.insert("total_fee".into(), total.clone());
        f.insert("cash_fee".into(), total);
        f.insert("fee_type".into(), "CNY".into());
        f.insert("refund_count".into(), page.len().to_string());
        if by_order {
            f.insert("total_refund_count".into(), refunds.len().to_string());
        }
        for (n, r) in page.iter().enumerate() {
            let fee = r.refund_fee.to_string();
            let mut put = |k: &str, v: &str| {
                f.insert(format!("{k}_{n}"), v.to_owned());
            };
            put("out_refund_no", &r.out_refund_no);
            put("refund_id", &r.refund_id);
            put("refund_channel", "ORIGINAL");
            put("refund_fee", &fee);
            put("settlement_refund_fee", &fee);
            put("refund_status", r.status.as_str());
            put("refund_account", "REFUND_SOURCE_UNSETTLED_FUNDS");
            put("refund_recv_accout", "支付用户零钱");
            if let Some(t) = r.success_time {
                put("refund_success_time", &bj(t));
            }
        }
        Reply::Ok(f)
    }
}

/// `POST /secapi/pay/refund`.
pub(super) async fn refund(
    req: HttpRequest,
    sb: web::Data<Sandbox>,
    body: web::Bytes,
) -> HttpResponse {
    let client_cert = req.conn_data::<ClientCertPresented>().is_some();
    let latency = sb.state().refunds.faults.latency_ms;
    let received = xml::decode(&body).unwrap_or_default();
    let field = |k: &str| nonempty(&received, k).map(str::to_owned);
    let mut record = ReceivedRefund {
        out_refund_no: field("out_refund_no"),
        out_trade_no: field("out_trade_no"),
        transaction_id: field("transaction_id"),
        total_fee: field("total_fee"),
        refund_fee: field("refund_fee"),
        nonce_str: field("nonce_str"),
        notify_url: field("notify_url"),
        client_cert,
        result: "NO_CLIENT_CERT".into(),
    };
    if !client_cert {
        tracing::info!(out_refund_no = ?record.out_refund_no, "sandbox refund refused: no client certificate");
        sb.state().refunds.record(record);
        return HttpResponse::BadRequest()
            .content_type("text/html")
            .body(NO_CLIENT_CERT);
    }
    let (reply, verified, plan) = match sb.check_request(&body) {
        Err(reply) => (reply, None, None),
        Ok(v) => {
            let (reply, plan) = sb.process_refund(&v);
            (reply, Some(v), plan)
        }
    };
    record.result = match &reply {
        Reply::CommFail { code, .. } | Reply::BizFail { code, .. } => (*code).to_owned(),
        Reply::Ok(_) => "SUCCESS".into(),
    };
    tracing::info!(out_refund_no = ?record.out_refund_no, result = %record.result, "sandbox refund call");
    sb.state().refunds.record(record);
    let out = sb.render(reply, verified.as_ref());
    if let Some((no, plan)) = plan {
        sb.apply_settle(no, plan);
    }
    if latency > 0 {
        actix_rt::time::sleep(Duration::from_millis(latency)).await;
    }
    xml_response(out)
}

/// `POST /pay/refundquery` (no certificate needed).
pub(super) async fn refund_query(sb: web::Data<Sandbox>, body: web::Bytes) -> HttpResponse {
    let (reply, verified) = match sb.check_request(&body) {
        Err(reply) => (reply, None),
        Ok(v) => (sb.refund_query_reply(&v), Some(v)),
    };
    xml_response(sb.render(reply, verified.as_ref()))
}

fn view(r: &SimRefund) -> Value {
    json!({
        "out_refund_no": r.out_refund_no,
        "out_trade_no": r.out_trade_no,
        "transaction_id": r.transaction_id,
        "refund_id": r.refund_id,
        "total_fee": r.total_fee,
        "refund_fee": r.refund_fee,
        "refund_desc": r.refund_desc,
        "notify_url": r.notify_url,
        "status": r.status.as_str(),
        "submitted_at": bj(r.submitted_at),
        "success_time": r.success_time.map(bj),
        "source": r.source,
        "requests": r.requests,
        "notify_attempts": r.notify_attempts,
        "acknowledged": r.acknowledged,
    })
}

/// `GET /simulate/refunds`: every refund, every call received, notification counters, faults.
pub(super) async fn list(sb: web::Data<Sandbox>) -> HttpResponse {
    let st = sb.state();
    let b = &st.refunds;
    let mut refunds: Vec<&SimRefund> = b.refunds.values().collect();
    refunds.sort_by_key(|r| r.seq);
    HttpResponse::Ok().json(json!({
        "refunds": refunds.into_iter().map(view).collect::<Vec<_>>(),
        "received": b.received,
        "attempts": b.attempts,
        "acknowledged": b.acknowledged,
        "pending_chains": b.pending_chains,
        "faults": b.faults,
    }))
}

/// `GET /simulate/refunds/{out_refund_no}`: one refund and the calls that named it.
pub(super) async fn one(sb: web::Data<Sandbox>, path: web::Path<String>) -> HttpResponse {
    let st = sb.state();
    let b = &st.refunds;
    let Some(r) = b.refunds.get(path.as_str()) else {
        return HttpResponse::NotFound().json(json!({ "error": "REFUNDNOTEXIST" }));
    };
    let mut v = view(r);
    v["received"] = json!(
        b.received
            .iter()
            .filter(|c| c.out_refund_no.as_deref() == Some(path.as_str()))
            .collect::<Vec<_>>()
    );
    HttpResponse::Ok().json(v)
}

#[derive(Deserialize)]
pub(super) struct PortalRefund {
    out_trade_no: String,
    refund_fee: i64,
    out_refund_no: Option<String>,
    notify_url: Option<String>,
}

/// `POST /simulate/refunds`: a refund made by staff in the merchant portal, which coinpay never
/// asked for (refund_request_source VENDOR_PLATFORM); it settles like the others.
pub(super) async fn portal_refund(
    sb: web::Data<Sandbox>,
    body: web::Json<PortalRefund>,
) -> HttpResponse {
    let body = body.into_inner();
    let no = body
        .out_refund_no
        .unwrap_or_else(|| format!("PORTAL{}", random_digits(20)));
    if !valid_out_refund_no(&no) || body.refund_fee < 1 {
        return HttpResponse::BadRequest()
            .json(json!({ "error": "out_refund_no or refund_fee invalid" }));
    }
    let intent = Intent {
        transaction_id: None,
        out_trade_no: Some(body.out_trade_no),
        out_refund_no: no,
        total_fee: None,
        refund_fee: body.refund_fee,
        refund_desc: None,
        notify_url: body.notify_url,
        source: "VENDOR_PLATFORM",
    };
    let created = {
        let mut st = sb.state();
        create_or_repeat(&mut st, intent).map(|(no, new)| {
            let plan = new.then(|| settle_plan(&st.refunds.faults));
            (no, plan)
        })
    };
    match created {
        Err(Reply::BizFail { code, des } | Reply::CommFail { code, msg: des }) => {
            HttpResponse::Conflict().json(json!({ "error": code, "message": des }))
        }
        Err(Reply::Ok(_)) => HttpResponse::InternalServerError().finish(),
        Ok((no, plan)) => {
            if let Some(plan) = plan {
                sb.apply_settle(no.clone(), plan);
            }
            let st = sb.state();
            match st.refunds.refunds.get(&no) {
                Some(r) => HttpResponse::Ok().json(view(r)),
                None => HttpResponse::InternalServerError().finish(),
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct SettleBody {
    status: SimRefundStatus,
    #[serde(default = "yes")]
    notify: bool,
}

fn yes() -> bool {
    true
}

/// `POST /simulate/refunds/{out_refund_no}/settle` `{"status":"SUCCESS|REFUNDCLOSE|CHANGE",
/// "notify":true}`: ends a PROCESSING refund by hand.
pub(super) async fn settle(
    sb: web::Data<Sandbox>,
    path: web::Path<String>,
    body: web::Json<SettleBody>,
) -> HttpResponse {
    if body.status == SimRefundStatus::Processing {
        return HttpResponse::BadRequest().json(json!({ "error": "status must be final" }));
    }
    match sb.settle_refund(&path, body.status, body.notify) {
        Ok(()) => {
            let st = sb.state();
            match st.refunds.refunds.get(path.as_str()) {
                Some(r) => HttpResponse::Ok().json(view(r)),
                None => HttpResponse::NotFound().finish(),
            }
        }
        Err("REFUNDNOTEXIST") => {
            HttpResponse::NotFound().json(json!({ "error": "REFUNDNOTEXIST" }))
        }
        Err(e) => HttpResponse::Conflict().json(json!({ "error": e })),
    }
}

#[derive(Deserialize)]
pub(super) struct FaultsPatch {
    fail_code: Option<String>,
    fail_times: Option<u32>,
    fail_after_accept: Option<bool>,
    latency_ms: Option<u64>,
    outcome: Option<SimRefundStatus>,
    settle_after_ms: Option<u64>,
    never_notify: Option<bool>,
    drop_notifications: Option<u32>,
    query_systemerror: Option<u32>,
}

/// `POST /simulate/refunds/faults`: sets the fields given (`"fail_code": ""` clears it).
pub(super) async fn set_faults(
    sb: web::Data<Sandbox>,
    patch: web::Json<FaultsPatch>,
) -> HttpResponse {
    let patch = patch.into_inner();
    if let Some(code) = patch.fail_code.as_deref()
        && !code.is_empty()
        && fault_code(code).is_none()
    {
        let known: Vec<&str> = FAULT_CODES.iter().map(|(c, _)| *c).collect();
        return HttpResponse::BadRequest()
            .json(json!({ "error": "unknown fail_code", "known": known }));
    }
    let faults = {
        let mut st = sb.state();
        let f = &mut st.refunds.faults;
        if let Some(c) = patch.fail_code {
            f.fail_code = Some(c).filter(|c| !c.is_empty());
            // A code alone means "once".
            if patch.fail_times.is_none() {
                f.fail_times = u32::from(f.fail_code.is_some());
            }
        }
        if let Some(n) = patch.fail_times {
            f.fail_times = n;
        }
        if let Some(b) = patch.fail_after_accept {
            f.fail_after_accept = b;
        }
        if let Some(n) = patch.latency_ms {
            f.latency_ms = n;
        }
        if let Some(o) = patch.outcome {
            f.outcome = Some(o);
        }
        if let Some(n) = patch.settle_after_ms {
            f.settle_after_ms = n;
        }
        if let Some(b) = patch.never_notify {
            f.never_notify = b;
        }
        if let Some(n) = patch.drop_notifications {
            f.drop_notifications = n;
        }
        if let Some(n) = patch.query_systemerror {
            f.query_systemerror = n;
        }
        f.clone()
    };
    tracing::info!(?faults, "sandbox refund faults set");
    HttpResponse::Ok().json(faults)
}

pub(super) async fn clear_faults(sb: web::Data<Sandbox>) -> HttpResponse {
    sb.state().refunds.faults = RefundFaults::default();
    HttpResponse::Ok().json(RefundFaults::default())
}
