//! `pay/downloadbill` built from the simulator's own payments and refunds, and its faults.
//!
//! The bill of a Beijing date D holds a SUCCESS row for each payment whose `time_end` falls on D
//! and a REFUND row for each refund *submitted* on D that is not closed (WeChat's 交易时间 of a
//! refund row is its submission time), in the 27-column ALL layout with the 7-field summary
//! (wechatpay-next.md §4.3). A day without rows is `No Bill Exist`. Fees are 0.60%, kept exact
//! in millifen. Faults (`POST /simulate/bills/faults`, replaced as a whole; `DELETE` clears):
//! an extra payment or refund coinpay never made, a changed amount, dropped rows — all with a
//! summary that still adds up — and a corrupt (truncated) file, an unknown layout, a row with an
//! unparseable amount, or `Bill Creating`.

use std::io::Write as _;

use actix_web::{HttpResponse, web};
use chrono::{NaiveDate, NaiveDateTime};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use super::Sandbox;
use super::pay::{Reply, nonempty, parse_time, random_digits};
use super::refund::SimRefundStatus;
use super::state::{SimTradeState, State};
use crate::wechat::Params;
use crate::wechat::bill::{ALL_COLUMNS, SUMMARY_COLUMNS};
use crate::wechat::xml;

/// 0.60% of an amount in fen, in millifen (exact: 6 millifen per fen).
const FEE_MILLIFEN_PER_FEN: i64 = 6;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtraPayment {
    pub out_trade_no: String,
    pub total_fee: i64,
    /// `yyyy-MM-dd HH:mm:ss` Beijing; its date is the only bill it appears in. Absent: every
    /// bill asked for, at 12:00:00 of its date.
    pub time: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtraRefund {
    pub out_trade_no: String,
    pub out_refund_no: String,
    pub refund_fee: i64,
    /// As for [`ExtraPayment::time`].
    pub time: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangedAmount {
    /// An out_trade_no (its payment row) or an out_refund_no (its refund row).
    pub id: String,
    /// The amount the bill shows instead, in fen.
    pub fen: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct BillFaults {
    pub extra_payment: Option<ExtraPayment>,
    pub extra_refund: Option<ExtraRefund>,
    pub change_amount: Option<ChangedAmount>,
    /// Rows left out: payment rows by out_trade_no, refund rows by out_refund_no.
    pub drop: Vec<String>,
    /// The gzip (or the text) is cut short.
    pub corrupt: bool,
    /// The legacy header (总金额… instead of 订单金额/申请退款金额).
    pub unknown_layout: bool,
    /// The first row's 应结订单金额 is not a two-decimal amount.
    pub bad_amount: bool,
    /// Answer `Bill Creating`.
    pub creating: bool,
}

/// One bill line before formatting.
struct Row {
    time: NaiveDateTime,
    appid: String,
    transaction_id: String,
    out_trade_no: String,
    openid: String,
    refund: Option<RefundCols>,
    /// The order amount of a payment row.
    total_fee: i64,
    body: String,
    attach: String,
}

struct RefundCols {
    refund_id: String,
    out_refund_no: String,
    refund_fee: i64,
    status: &'static str,
}

impl Row {
    fn id(&self) -> &str {
        match &self.refund {
            Some(r) => &r.out_refund_no,
            None => &self.out_trade_no,
        }
    }
}

fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let a = fen.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

fn yuan5(millifen: i64) -> String {
    let sign = if millifen < 0 { "-" } else { "" };
    let a = millifen.unsigned_abs();
    format!("{sign}{}.{:05}", a / 100_000, a % 100_000)
}

/// Values never contain the 2-character separator or a line break.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '`' | '\n' | '\r'))
        .collect()
}

fn on_date(time: Option<&str>, date: NaiveDate) -> Option<NaiveDateTime> {
    match time {
        None => date.and_hms_opt(12, 0, 0),
        Some(t) => NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")
            .ok()
            .filter(|t| t.date() == date),
    }
}

fn rows_for(st: &State, mch_appid: &str, date: NaiveDate) -> Vec<Row> {
    let mut rows = Vec::new();
    for o in st.orders.values() {
        if o.trade_state != SimTradeState::Success {
            continue;
        }
        let Some(t) = o.time_end.as_deref().and_then(parse_time) else {
            continue;
        };
        if t.date() != date {
            continue;
        }
        rows.push(Row {
            time: t,
            appid: o.appid.clone(),
            transaction_id: o.transaction_id.clone().unwrap_or_default(),
            out_trade_no: o.out_trade_no.clone(),
            openid: o.openid.clone(),
            refund: None,
            total_fee: o.total_fee,
            body: o.business.get("body").cloned().unwrap_or_default(),
            attach: o.attach.clone().unwrap_or_default(),
        });
    }
    for r in st.refunds.refunds.values() {
        if r.submitted_at.date() != date || r.status == SimRefundStatus::RefundClose {
            continue;
        }
        let order = st.orders.get(&r.out_trade_no);
        rows.push(Row {
            time: r.submitted_at,
            appid: r.appid.clone(),
            transaction_id: r.transaction_id.clone(),
            out_trade_no: r.out_trade_no.clone(),
            openid: order.map(|o| o.openid.clone()).unwrap_or_default(),
            refund: Some(RefundCols {
                refund_id: r.refund_id.clone(),
                out_refund_no: r.out_refund_no.clone(),
                refund_fee: r.refund_fee,
                // A snapshot: SUCCESS, or PROCESSING if not settled yet (CHANGE shows as such).
                status: r.status.as_str(),
            }),
            total_fee: 0,
            body: order
                .and_then(|o| o.business.get("body").cloned())
                .unwrap_or_default(),
            attach: String::new(),
        });
    }
    let f = &st.bill_faults;
    if let Some(x) = &f.extra_payment
        && let Some(time) = on_date(x.time.as_deref(), date)
    {
        rows.push(Row {
            time,
            appid: mch_appid.to_owned(),
            transaction_id: format!("4200{}", random_digits(24)),
            out_trade_no: x.out_trade_no.clone(),
            openid: "oSandboxStranger000000000000".into(),
            refund: None,
            total_fee: x.total_fee,
            body: "商户平台交易".into(),
            attach: String::new(),
        });
    }
    if let Some(x) = &f.extra_refund
        && let Some(time) = on_date(x.time.as_deref(), date)
    {
        let tx = st
            .orders
            .get(&x.out_trade_no)
            .and_then(|o| o.transaction_id.clone())
            .unwrap_or_else(|| format!("4200{}", random_digits(24)));
        rows.push(Row {
            time,
            appid: mch_appid.to_owned(),
            transaction_id: tx,
            out_trade_no: x.out_trade_no.clone(),
            openid: String::new(),
            refund: Some(RefundCols {
                refund_id: format!("503{}", random_digits(26)),
                out_refund_no: x.out_refund_no.clone(),
                refund_fee: x.refund_fee,
                status: "SUCCESS",
            }),
            total_fee: 0,
            body: String::new(),
            attach: String::new(),
        });
    }
    rows.retain(|r| !f.drop.iter().any(|d| d == r.id()));
    if let Some(c) = &f.change_amount {
        for r in rows.iter_mut().filter(|r| r.id() == c.id) {
            match &mut r.refund {
                Some(rc) => rc.refund_fee = c.fen,
                None => r.total_fee = c.fen,
            }
        }
    }
    rows.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id().cmp(b.id())));
    rows
}

/// The bill text: header, backtick-prefixed rows, summary header and summary line.
fn render(rows: &[Row], mch_id: &str, faults: &BillFaults) -> String {
    let mut header = ALL_COLUMNS.join(",");
    if faults.unknown_layout {
        header = header.replace(",订单金额,申请退款金额,", ",总金额,企业红包金额,");
    }
    let mut out = header;
    out.push_str("\r\n");
    let (mut settle, mut refunded, mut fees, mut applied) = (0i64, 0i64, 0i64, 0i64);
    for (i, r) in rows.iter().enumerate() {
        let (refund_id, out_refund_no, refund_fee, refund_type, status) = match &r.refund {
            Some(rc) => (
                rc.refund_id.as_str(),
                rc.out_refund_no.as_str(),
                rc.refund_fee,
                "ORIGINAL",
                rc.status,
            ),
            None => ("0", "0", 0, "", ""),
        };
        let fee = (r.total_fee - refund_fee) * FEE_MILLIFEN_PER_FEN;
        settle += r.total_fee;
        refunded += refund_fee;
        fees += fee;
        applied += refund_fee;
        let settle_col = if faults.bad_amount && i == 0 {
            "0.015".to_owned()
        } else {
            yuan(r.total_fee)
        };
        let state = if r.refund.is_some() {
            "REFUND"
        } else {
            "SUCCESS"
        };
        let values = [
            r.time.format("%Y-%m-%d %H:%M:%S").to_string(),
            clean(&r.appid),
            mch_id.to_owned(),
            "0".into(),
            String::new(),
            r.transaction_id.clone(),
            r.out_trade_no.clone(),
            r.openid.clone(),
            "JSAPI".into(),
            state.into(),
            "OTHERS".into(),
            "CNY".into(),
            settle_col,
            "0.00".into(),
            refund_id.into(),
            out_refund_no.into(),
            yuan(refund_fee),
            "0.00".into(),
            refund_type.into(),
            status.into(),
            clean(&r.body),
            clean(&r.attach),
            yuan5(fee),
            "0.60%".into(),
            yuan(r.total_fee),
            yuan(refund_fee),
            String::new(),
        ];
        for v in values {
            out.push('`');
            out.push_str(&v);
            out.push(',');
        }
        out.pop();
        out.push_str("\r\n");
    }
    out.push_str(&SUMMARY_COLUMNS.join(","));
    out.push_str("\r\n");
    let sums = [
        rows.len().to_string(),
        yuan(settle),
        yuan(refunded),
        "0.00".into(),
        yuan5(fees),
        yuan(settle),
        yuan(applied),
    ];
    out.push('`');
    out.push_str(&sums.join(",`"));
    out.push_str("\r\n");
    out
}

fn gzip(text: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    let _ = e.write_all(text);
    e.finish().unwrap_or_default()
}

/// The unsigned failure reply of §4.4 (`error_code`, not `err_code`).
fn fail(msg: &str, error_code: Option<&str>) -> HttpResponse {
    let mut p = Params::new();
    p.insert("return_code".into(), "FAIL".into());
    p.insert("return_msg".into(), msg.to_owned());
    if let Some(c) = error_code {
        p.insert("error_code".into(), c.to_owned());
    }
    HttpResponse::Ok()
        .content_type("text/xml; charset=utf-8")
        .body(xml::encode(&p))
}

/// `POST /pay/downloadbill`.
pub(super) async fn download(sb: web::Data<Sandbox>, body: web::Bytes) -> HttpResponse {
    let v = match sb.check_request(&body) {
        Ok(v) => v,
        Err(Reply::CommFail {
            code: "SIGNERROR", ..
        }) => return fail("SIGN ERROR", None),
        Err(Reply::CommFail { msg, .. } | Reply::BizFail { des: msg, .. }) => {
            return fail(&msg, None);
        }
        Err(Reply::Ok(_)) => return fail("system error", None),
    };
    if let Err(Reply::BizFail { des, .. } | Reply::CommFail { msg: des, .. }) = sb.check_appid(&v) {
        return fail(&des, None);
    }
    let p = &v.params;
    let Some(date) = nonempty(p, "bill_date")
        .filter(|d| d.len() == 8)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
    else {
        return fail("invalid bill_date", None);
    };
    if nonempty(p, "bill_type").unwrap_or("ALL") != "ALL" {
        return fail("invalid bill_type", None);
    }
    let gz = match nonempty(p, "tar_type") {
        None => false,
        Some("GZIP") => true,
        Some(_) => return fail("invalid tar_type: Only GZIP supported", None),
    };
    let cfg = sb.config();
    let (text, faults) = {
        let st = sb.state();
        let faults = st.bill_faults.clone();
        if faults.creating {
            return fail("Bill Creating", None);
        }
        let rows = rows_for(&st, &cfg.app_id, date);
        if rows.is_empty() {
            tracing::info!(%date, "sandbox bill: No Bill Exist");
            return fail("No Bill Exist", Some("20002"));
        }
        tracing::info!(%date, rows = rows.len(), gzip = gz, "sandbox bill");
        (render(&rows, &cfg.mch_id, &faults), faults)
    };
    let mut bytes = if gz {
        gzip(text.as_bytes())
    } else {
        text.into_bytes()
    };
    if faults.corrupt {
        // Cut inside the last data line (text) or before the gzip trailer.
        let keep = bytes.len().saturating_sub(if gz { 12 } else { 40 });
        bytes.truncate(keep);
    }
    let ctype = if gz {
        "application/x-gzip"
    } else {
        "text/plain; charset=utf-8"
    };
    HttpResponse::Ok().content_type(ctype).body(bytes)
}

/// `POST /simulate/bills/faults`: replaces the bill faults (absent fields are off).
pub(super) async fn set_faults(
    sb: web::Data<Sandbox>,
    faults: web::Json<BillFaults>,
) -> HttpResponse {
    let faults = faults.into_inner();
    tracing::info!(?faults, "sandbox bill faults set");
    sb.state().bill_faults = faults.clone();
    HttpResponse::Ok().json(faults)
}

pub(super) async fn clear_faults(sb: web::Data<Sandbox>) -> HttpResponse {
    sb.state().bill_faults = BillFaults::default();
    HttpResponse::Ok().json(BillFaults::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_format_exactly() {
        assert_eq!(yuan(1), "0.01");
        assert_eq!(yuan(12_345), "123.45");
        assert_eq!(yuan(-2), "-0.02");
        assert_eq!(yuan5(600), "0.00600");
        assert_eq!(yuan5(-2000), "-0.02000");
        assert_eq!(yuan5(123_456_789), "1234.56789");
        assert_eq!(clean("a`b\nc"), "abc");
    }
}
