//! The matcher, pure: one day's bill rows against coinpay's books → the differences, each with
//! its kind, the ids, both amounts and the action it calls for, and both sides' totals.
//!
//! Two passes, as roncoo-pay does (wechatpay-next.md §4.6):
//! - the bill side: every row of day D is looked up in the books by `out_trade_no` (payments)
//!   or `out_refund_no` (refunds), whatever day coinpay recorded it on;
//! - the books side: every payment coinpay credited on D (by `paid_at`, Beijing) and every refund
//!   that succeeded on D is looked for in D's bill, then in the neighbouring days' bills (a payment
//!   WeChat finished at 23:59:59 is credited by coinpay after midnight; a refund submitted on
//!   one day succeeds on the next), and only then called missing.
//!
//! `missing_local` is the one difference with an automatic fix (a credit through the order's
//! actor, exactly as a notification would do it); the matcher only says so ([`Action::Credit`]),
//! the service does it.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;

use super::report::{
    Action, Difference, DifferenceKind, LocalTotals, WechatTotals, millifen_to_fen,
};
use crate::order::state::OrderStatus;
use crate::refund::state::RefundStatus;
use crate::wechat::bill::{Bill, BillRefundStatus, BillRow};

/// One of coinpay's orders, as the matcher needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalOrder {
    pub order_no: String,
    pub status: OrderStatus,
    pub transaction_id: Option<String>,
    pub amount_fen: i64,
    /// The Beijing date of `paid_at`, when paid.
    pub paid_on: Option<NaiveDate>,
}

/// One of coinpay's refunds, as the matcher needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRefund {
    pub out_refund_no: String,
    pub order_no: String,
    pub status: RefundStatus,
    pub refund_fen: i64,
    /// The Beijing date of the success time, when succeeded.
    pub succeeded_on: Option<NaiveDate>,
}

/// coinpay's books around a bill date: every order and refund a bill row names, every payment
/// and refund of D-1, D and D+1, and the orders an earlier reconciliation credited.
#[derive(Clone, Debug, Default)]
pub struct Books {
    pub orders: HashMap<String, LocalOrder>,
    pub refunds: HashMap<String, LocalRefund>,
    /// Orders credited by the `missing_local` fix of an earlier day. The fix gives them the bill
    /// row's trade time as `paid_at`; orders fixed before it did carry the fix's own time, while
    /// their bill row is that earlier day's.
    pub credited_by_reconciliation: HashSet<String>,
}

/// What the matcher found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    pub wechat: WechatTotals,
    pub local: LocalTotals,
    pub differences: Vec<Difference>,
}

/// Matches day `date`'s `bill` (None: `No Bill Exist`) against `books`; `neighbours` are the
/// rows of the bills of D-1 and D+1 that are at hand.
pub fn reconcile(
    date: NaiveDate,
    bill: Option<&Bill>,
    neighbours: &[&BillRow],
    books: &Books,
) -> Matched {
    let mut differences = Vec::new();
    let rows: &[BillRow] = bill.map(|b| b.rows.as_slice()).unwrap_or_default();
    let payments: Vec<&BillRow> = bill.map(|b| b.payments().collect()).unwrap_or_default();
    let refunds: Vec<&BillRow> = bill.map(|b| b.refunds().collect()).unwrap_or_default();

    for row in &payments {
        if let Some(d) = payment_row(row, books) {
            differences.push(d);
        }
    }
    for row in &refunds {
        if let Some(d) = refund_row(row, books) {
            differences.push(d);
        }
    }

    let in_bill = |no: &str, refund: bool| {
        rows.iter()
            .chain(neighbours.iter().copied())
            .any(|r| match (&r.out_refund_no, refund) {
                (Some(rn), true) => rn == no,
                (None, false) => r.out_trade_no == no,
                _ => false,
            })
    };

    let mut local = LocalTotals::default();
    let mut paid: Vec<&LocalOrder> = books
        .orders
        .values()
        .filter(|o| o.status == OrderStatus::Paid && o.paid_on == Some(date))
        .collect();
    paid.sort_by(|a, b| a.order_no.cmp(&b.order_no));
    for o in paid {
        local.count += 1;
        local.paid_fen += o.amount_fen;
        if !in_bill(&o.order_no, false) && !books.credited_by_reconciliation.contains(&o.order_no) {
            differences.push(Difference {
                kind: DifferenceKind::MissingRemote,
                order_no: Some(o.order_no.clone()),
                transaction_id: o.transaction_id.clone(),
                out_refund_no: None,
                wechat_fen: None,
                local_fen: Some(o.amount_fen),
                action: Action::Flagged,
            });
        }
    }
    let mut succeeded: Vec<&LocalRefund> = books
        .refunds
        .values()
        .filter(|r| r.status == RefundStatus::Succeeded && r.succeeded_on == Some(date))
        .collect();
    succeeded.sort_by(|a, b| a.out_refund_no.cmp(&b.out_refund_no));
    for r in succeeded {
        local.refund_fen += r.refund_fen;
        if !in_bill(&r.out_refund_no, true) {
            differences.push(Difference {
                kind: DifferenceKind::RefundMissingRemote,
                order_no: Some(r.order_no.clone()),
                transaction_id: books
                    .orders
                    .get(&r.order_no)
                    .and_then(|o| o.transaction_id.clone()),
                out_refund_no: Some(r.out_refund_no.clone()),
                wechat_fen: None,
                local_fen: Some(r.refund_fen),
                action: Action::Flagged,
            });
        }
    }

    let wechat = WechatTotals {
        count: payments.len() as i64,
        paid_fen: payments.iter().map(|r| r.order_fen).sum(),
        refund_fen: refunds.iter().map(|r| r.refund_fen).sum(),
        fee_fen: millifen_to_fen(bill.map_or(0, |b| b.summary.fee_millifen)),
    };
    Matched {
        wechat,
        local,
        differences,
    }
}

fn payment_row(row: &BillRow, books: &Books) -> Option<Difference> {
    let diff = |kind, local: Option<&LocalOrder>, action| Difference {
        kind,
        order_no: Some(row.out_trade_no.clone()),
        transaction_id: Some(row.transaction_id.clone()),
        out_refund_no: None,
        wechat_fen: Some(row.order_fen),
        local_fen: local.map(|o| o.amount_fen),
        action,
    };
    let Some(o) = books.orders.get(&row.out_trade_no) else {
        return Some(diff(DifferenceKind::UnknownOrder, None, Action::Flagged));
    };
    if o.amount_fen != row.order_fen {
        return Some(diff(
            DifferenceKind::AmountMismatch,
            Some(o),
            Action::Flagged,
        ));
    }
    if o.status != OrderStatus::Paid {
        return Some(diff(DifferenceKind::MissingLocal, Some(o), Action::Credit));
    }
    if o.transaction_id.as_deref() != Some(row.transaction_id.as_str()) {
        // Paid by another transaction: a second payment of one order, refunded by hand.
        return Some(diff(
            DifferenceKind::StatusMismatch,
            Some(o),
            Action::Flagged,
        ));
    }
    None
}

fn refund_row(row: &BillRow, books: &Books) -> Option<Difference> {
    let out_refund_no = row.out_refund_no.clone().unwrap_or_default();
    let diff = |kind, local: Option<&LocalRefund>| Difference {
        kind,
        order_no: Some(row.out_trade_no.clone()),
        transaction_id: Some(row.transaction_id.clone()),
        out_refund_no: Some(out_refund_no.clone()),
        wechat_fen: Some(row.refund_fen),
        local_fen: local.map(|r| r.refund_fen),
        action: Action::Flagged,
    };
    let Some(r) = books.refunds.get(&out_refund_no) else {
        return Some(diff(DifferenceKind::RefundMissingLocal, None));
    };
    if r.refund_fen != row.refund_fen {
        return Some(diff(DifferenceKind::RefundAmountMismatch, Some(r)));
    }
    // The bill's refund status is a snapshot (PROCESSING may have succeeded since); only a
    // refund coinpay settled as "the money never moved" contradicts a row WeChat lists.
    let bill_moved = !matches!(row.refund_status, Some(BillRefundStatus::Other(_)));
    let local_unmoved = matches!(r.status, RefundStatus::Closed | RefundStatus::Failed);
    if (bill_moved && local_unmoved) || r.order_no != row.out_trade_no {
        return Some(diff(DifferenceKind::StatusMismatch, Some(r)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::bill::{BillSummary, BillTradeState};
    use chrono::TimeZone;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap_or_default()
    }

    fn row(no: &str, tx: &str, fen: i64, refund: Option<(&str, i64)>) -> BillRow {
        BillRow {
            line: 2,
            trade_time: chrono::Utc
                .with_ymd_and_hms(2026, 11, 30, 4, 0, 0)
                .single()
                .unwrap_or_default(),
            appid: "wx".into(),
            mch_id: "1".into(),
            sub_mch_id: None,
            device_info: None,
            transaction_id: tx.into(),
            out_trade_no: no.into(),
            openid: None,
            trade_type: Some("JSAPI".into()),
            trade_state: if refund.is_some() {
                BillTradeState::Refund
            } else {
                BillTradeState::Success
            },
            bank_type: None,
            fee_type: None,
            settlement_fen: if refund.is_some() { 0 } else { fen },
            coupon_fen: None,
            refund_id: refund.map(|_| "503".into()),
            out_refund_no: refund.map(|(n, _)| n.into()),
            refund_fen: refund.map_or(0, |(_, f)| f),
            recharge_coupon_refund_fen: None,
            refund_type: refund.map(|_| "ORIGINAL".into()),
            refund_status: refund.map(|_| BillRefundStatus::Success),
            body: None,
            attach: None,
            fee_millifen: if refund.is_some() { 0 } else { fen * 6 },
            fee_rate: None,
            order_fen: if refund.is_some() { 0 } else { fen },
            applied_refund_fen: refund.map_or(0, |(_, f)| f),
            fee_remark: None,
            extra: vec![],
        }
    }

    fn bill(rows: Vec<BillRow>) -> Bill {
        let fee = rows.iter().map(|r| r.fee_millifen).sum();
        Bill {
            columns: vec![],
            summary: BillSummary {
                count: rows.len() as u64,
                settlement_fen: rows.iter().map(|r| r.settlement_fen).sum(),
                refund_fen: rows.iter().map(|r| r.refund_fen).sum(),
                recharge_coupon_refund_fen: None,
                fee_millifen: fee,
                order_fen: None,
                applied_refund_fen: None,
            },
            rows,
        }
    }

    fn order(
        no: &str,
        status: OrderStatus,
        tx: Option<&str>,
        fen: i64,
        on: Option<u32>,
    ) -> LocalOrder {
        LocalOrder {
            order_no: no.into(),
            status,
            transaction_id: tx.map(Into::into),
            amount_fen: fen,
            paid_on: on.map(day),
        }
    }

    fn books(orders: Vec<LocalOrder>, refunds: Vec<LocalRefund>) -> Books {
        Books {
            orders: orders
                .into_iter()
                .map(|o| (o.order_no.clone(), o))
                .collect(),
            refunds: refunds
                .into_iter()
                .map(|r| (r.out_refund_no.clone(), r))
                .collect(),
            credited_by_reconciliation: HashSet::new(),
        }
    }

    fn kinds(m: &Matched) -> Vec<(DifferenceKind, Action)> {
        m.differences.iter().map(|d| (d.kind, d.action)).collect()
    }

    #[test]
    fn a_balanced_day_with_totals() {
        let b = bill(vec![row("A", "t1", 1999, None), row("B", "t2", 600, None)]);
        let bk = books(
            vec![
                order("A", OrderStatus::Paid, Some("t1"), 1999, Some(30)),
                order("B", OrderStatus::Paid, Some("t2"), 600, Some(30)),
            ],
            vec![],
        );
        let m = reconcile(day(30), Some(&b), &[], &bk);
        assert!(m.differences.is_empty(), "{:?}", m.differences);
        assert_eq!(
            m.wechat,
            WechatTotals {
                count: 2,
                paid_fen: 2599,
                refund_fen: 0,
                fee_fen: 16
            }
        );
        assert_eq!(
            m.local,
            LocalTotals {
                count: 2,
                paid_fen: 2599,
                refund_fen: 0
            }
        );
    }

    #[test]
    fn every_payment_kind() {
        let b = bill(vec![
            row("UNPAID", "t1", 100, None),
            row("EXPIRED", "t2", 100, None),
            row("STRANGER", "t3", 100, None),
            row("CHANGED", "t4", 150, None),
            row("TWICE", "t5", 100, None),
        ]);
        let bk = books(
            vec![
                order("UNPAID", OrderStatus::Pending, None, 100, None),
                order("EXPIRED", OrderStatus::Expired, None, 100, None),
                order("CHANGED", OrderStatus::Paid, Some("t4"), 100, Some(30)),
                order("TWICE", OrderStatus::Paid, Some("other"), 100, Some(30)),
                order("GONE", OrderStatus::Paid, Some("t9"), 300, Some(30)),
                // Paid on another day: not this day's business.
                order("OTHERDAY", OrderStatus::Paid, Some("t8"), 300, Some(28)),
            ],
            vec![],
        );
        let m = reconcile(day(30), Some(&b), &[], &bk);
        use DifferenceKind::*;
        assert_eq!(
            kinds(&m),
            vec![
                (MissingLocal, Action::Credit),
                (MissingLocal, Action::Credit),
                (UnknownOrder, Action::Flagged),
                (AmountMismatch, Action::Flagged),
                (StatusMismatch, Action::Flagged),
                (MissingRemote, Action::Flagged),
            ]
        );
        let changed = &m.differences[3];
        assert_eq!(
            (changed.wechat_fen, changed.local_fen),
            (Some(150), Some(100))
        );
        let gone = &m.differences[5];
        assert_eq!(gone.order_no.as_deref(), Some("GONE"));
        assert_eq!((gone.wechat_fen, gone.local_fen), (None, Some(300)));
        assert_eq!(gone.transaction_id.as_deref(), Some("t9"));
        assert_eq!(m.local.count, 3);
    }

    #[test]
    fn an_unpaid_order_with_another_amount_is_not_credited() {
        let b = bill(vec![row("A", "t1", 150, None)]);
        let bk = books(
            vec![order("A", OrderStatus::Pending, None, 100, None)],
            vec![],
        );
        let m = reconcile(day(30), Some(&b), &[], &bk);
        assert_eq!(
            kinds(&m),
            vec![(DifferenceKind::AmountMismatch, Action::Flagged)]
        );
    }

    #[test]
    fn midnight_payments_match_across_the_day_boundary() {
        // WeChat finished it at 23:59:59 on the 29th; coinpay credited it on the 30th.
        let yesterday = row("LATE", "t1", 100, None);
        let bk = books(
            vec![order("LATE", OrderStatus::Paid, Some("t1"), 100, Some(30))],
            vec![],
        );
        let m = reconcile(day(30), None, &[&yesterday], &bk);
        assert!(m.differences.is_empty(), "{:?}", m.differences);
        // Without the neighbour's bill it is missing at WeChat.
        let m = reconcile(day(30), None, &[], &bk);
        assert_eq!(
            kinds(&m),
            vec![(DifferenceKind::MissingRemote, Action::Flagged)]
        );
        // And the 29th's bill finds its order whatever day coinpay credited it.
        let b = bill(vec![row("LATE", "t1", 100, None)]);
        let m = reconcile(day(29), Some(&b), &[], &bk);
        assert!(m.differences.is_empty(), "{:?}", m.differences);
        assert_eq!((m.wechat.count, m.local.count), (1, 0));
    }

    #[test]
    fn an_earlier_fix_is_not_missing_remote_on_its_credit_day() {
        let mut bk = books(
            vec![order("FIXED", OrderStatus::Paid, Some("t1"), 100, Some(30))],
            vec![],
        );
        bk.credited_by_reconciliation.insert("FIXED".into());
        let m = reconcile(day(30), None, &[], &bk);
        assert!(m.differences.is_empty());
        assert_eq!(m.local.count, 1);
    }

    fn refund(
        no: &str,
        order: &str,
        status: RefundStatus,
        fen: i64,
        on: Option<u32>,
    ) -> LocalRefund {
        LocalRefund {
            out_refund_no: no.into(),
            order_no: order.into(),
            status,
            refund_fen: fen,
            succeeded_on: on.map(day),
        }
    }

    #[test]
    fn every_refund_kind() {
        let b = bill(vec![
            row("A", "t1", 0, Some(("R-OK", 100))),
            row("A", "t1", 0, Some(("R-STRANGER", 100))),
            row("A", "t1", 0, Some(("R-CHANGED", 70))),
            row("A", "t1", 0, Some(("R-CLOSED", 100))),
            row("A", "t1", 0, Some(("R-PROCESSING", 100))),
        ]);
        let bk = books(
            vec![order("A", OrderStatus::Paid, Some("t1"), 1000, Some(28))],
            vec![
                refund("R-OK", "A", RefundStatus::Succeeded, 100, Some(30)),
                refund("R-CHANGED", "A", RefundStatus::Succeeded, 50, Some(30)),
                refund("R-CLOSED", "A", RefundStatus::Closed, 100, None),
                refund("R-PROCESSING", "A", RefundStatus::Processing, 100, None),
                refund("R-GONE", "A", RefundStatus::Succeeded, 30, Some(30)),
                // Submitted yesterday, in yesterday's bill, succeeded today.
                refund("R-YESTERDAY", "A", RefundStatus::Succeeded, 20, Some(30)),
            ],
        );
        let yesterday = row("A", "t1", 0, Some(("R-YESTERDAY", 20)));
        let m = reconcile(day(30), Some(&b), &[&yesterday], &bk);
        use DifferenceKind::*;
        let got: Vec<(DifferenceKind, Option<&str>)> = m
            .differences
            .iter()
            .map(|d| (d.kind, d.out_refund_no.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (RefundMissingLocal, Some("R-STRANGER")),
                (RefundAmountMismatch, Some("R-CHANGED")),
                (StatusMismatch, Some("R-CLOSED")),
                (RefundMissingRemote, Some("R-GONE")),
            ]
        );
        assert_eq!(m.wechat.refund_fen, 470);
        assert_eq!(m.local.refund_fen, 200);
        assert_eq!(m.wechat.count, 0);
        let gone = &m.differences[3];
        assert_eq!(gone.transaction_id.as_deref(), Some("t1"));
        assert_eq!((gone.wechat_fen, gone.local_fen), (None, Some(30)));
    }
}
