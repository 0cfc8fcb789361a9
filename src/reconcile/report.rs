//! A day's reconciliation report and its parts, as stored and as answered:
//! `{"bill_date","status","error","wechat":{…},"local":{…},"differences":[…]}` (issue 13).
//! Fields that do not apply are null: the totals of a day whose bill could not be read, the
//! `out_refund_no` of a payment's difference.

use std::fmt;
use std::str::FromStr;

use chrono::NaiveDate;
use serde::Serialize;

/// How a day came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconStatus {
    /// Every row matched (differences fixed automatically may be listed).
    Balanced,
    /// At least one difference is left for a human.
    Differences,
    /// `No Bill Exist`, and coinpay has no payment or refund of that day either.
    NoBill,
    /// The bill could not be fetched or read; nothing was changed.
    Error,
}

impl ReconStatus {
    pub const ALL: [ReconStatus; 4] = [
        ReconStatus::Balanced,
        ReconStatus::Differences,
        ReconStatus::NoBill,
        ReconStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReconStatus::Balanced => "balanced",
            ReconStatus::Differences => "differences",
            ReconStatus::NoBill => "no_bill",
            ReconStatus::Error => "error",
        }
    }

    /// The day is done: the scheduled job does not redo it (only an operator does).
    pub fn is_settled(self) -> bool {
        self != ReconStatus::Error
    }
}

impl fmt::Display for ReconStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown reconciliation value {0:?}")]
pub struct UnknownValue(pub String);

impl FromStr for ReconStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReconStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue(s.to_owned()))
    }
}

/// What kind of difference a bill row or a local record is (roncoo-pay's classification,
/// wechatpay-next.md §4.6, in coinpay's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// WeChat took the money; coinpay has the order unpaid, expired or failed.
    MissingLocal,
    /// WeChat has a payment for an out_trade_no coinpay never issued.
    UnknownOrder,
    /// coinpay credited a payment WeChat's bill does not have.
    MissingRemote,
    /// Both have the payment, with different amounts.
    AmountMismatch,
    /// WeChat has a refund coinpay does not know.
    RefundMissingLocal,
    /// coinpay has a successful refund WeChat's bill does not have.
    RefundMissingRemote,
    /// Both have the refund, with different amounts.
    RefundAmountMismatch,
    /// Both have the record, in states that contradict each other (another transaction_id for
    /// a paid order, a refund WeChat made that coinpay closed or saw fail).
    StatusMismatch,
}

impl DifferenceKind {
    pub const ALL: [DifferenceKind; 8] = [
        DifferenceKind::MissingLocal,
        DifferenceKind::UnknownOrder,
        DifferenceKind::MissingRemote,
        DifferenceKind::AmountMismatch,
        DifferenceKind::RefundMissingLocal,
        DifferenceKind::RefundMissingRemote,
        DifferenceKind::RefundAmountMismatch,
        DifferenceKind::StatusMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::MissingLocal => "missing_local",
            DifferenceKind::UnknownOrder => "unknown_order",
            DifferenceKind::MissingRemote => "missing_remote",
            DifferenceKind::AmountMismatch => "amount_mismatch",
            DifferenceKind::RefundMissingLocal => "refund_missing_local",
            DifferenceKind::RefundMissingRemote => "refund_missing_remote",
            DifferenceKind::RefundAmountMismatch => "refund_amount_mismatch",
            DifferenceKind::StatusMismatch => "status_mismatch",
        }
    }
}

impl FromStr for DifferenceKind {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DifferenceKind::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue(s.to_owned()))
    }
}

/// What was done about a difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Left for a human (the only action for every kind but `missing_local`).
    Flagged,
    /// `missing_local`, to be credited through the order's actor (never stored as such).
    Credit,
    /// `missing_local`, credited through the order's actor now or by an earlier run of the day.
    Credited,
    /// `missing_local`, credited through the order's actor after the order had expired.
    CreditedLate,
    /// `missing_local` that the order's actor did not credit (it refused, or failed): flagged.
    CreditFailed,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Flagged,
        Action::Credit,
        Action::Credited,
        Action::CreditedLate,
        Action::CreditFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Flagged => "flagged",
            Action::Credit => "credit",
            Action::Credited => "credited",
            Action::CreditedLate => "credited_late",
            Action::CreditFailed => "credit_failed",
        }
    }

    /// The difference was fixed: it does not keep the day from balancing.
    pub fn is_fixed(self) -> bool {
        matches!(self, Action::Credited | Action::CreditedLate)
    }
}

impl FromStr for Action {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue(s.to_owned()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub kind: DifferenceKind,
    pub order_no: Option<String>,
    pub transaction_id: Option<String>,
    pub out_refund_no: Option<String>,
    pub wechat_fen: Option<i64>,
    pub local_fen: Option<i64>,
    pub action: Action,
}

/// WeChat's side of a day: payments (count, 订单金额), refunds (退款金额), fees (手续费, in
/// fen rounded half away from zero; the bill keeps them in 1/1000 fen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WechatTotals {
    pub count: i64,
    pub paid_fen: i64,
    pub refund_fen: i64,
    pub fee_fen: i64,
}

/// coinpay's side of a day: payments credited (by `paid_at`) and refunds succeeded (by their
/// success time) on that Beijing date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LocalTotals {
    pub count: i64,
    pub paid_fen: i64,
    pub refund_fen: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    #[serde(serialize_with = "iso_date")]
    pub bill_date: NaiveDate,
    pub status: ReconStatus,
    pub error: Option<String>,
    pub wechat: Option<WechatTotals>,
    pub local: Option<LocalTotals>,
    pub differences: Vec<Difference>,
}

fn iso_date<S: serde::Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&d.format("%Y-%m-%d"))
}

impl Report {
    /// The status a day with these differences has (`no_bill` is decided by the caller).
    pub fn status_of(differences: &[Difference]) -> ReconStatus {
        if differences.iter().all(|d| d.action.is_fixed()) {
            ReconStatus::Balanced
        } else {
            ReconStatus::Differences
        }
    }

    /// Differences still waiting for a human.
    pub fn open_differences(&self) -> usize {
        self.differences
            .iter()
            .filter(|d| !d.action.is_fixed())
            .count()
    }
}

/// 1/1000 fen → fen, rounded half away from zero.
pub fn millifen_to_fen(m: i64) -> i64 {
    let q = m / 1000;
    let r = m % 1000;
    if r >= 500 {
        q + 1
    } else if r <= -500 {
        q - 1
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in DifferenceKind::ALL {
            assert_eq!(k.as_str().parse::<DifferenceKind>().ok(), Some(k));
        }
        for s in ReconStatus::ALL {
            assert_eq!(s.as_str().parse::<ReconStatus>().ok(), Some(s));
        }
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().ok(), Some(a));
        }
        assert!("nonsense".parse::<Action>().is_err());
    }

    #[test]
    fn fees_round_half_away_from_zero() {
        assert_eq!(millifen_to_fen(11_994), 12);
        assert_eq!(millifen_to_fen(11_499), 11);
        assert_eq!(millifen_to_fen(500), 1);
        assert_eq!(millifen_to_fen(-6_000), -6);
        assert_eq!(millifen_to_fen(-1_500), -2);
        assert_eq!(millifen_to_fen(0), 0);
    }

    #[test]
    fn report_json_has_the_documented_shape() {
        let r = Report {
            bill_date: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap_or_default(),
            status: ReconStatus::Differences,
            error: None,
            wechat: Some(WechatTotals {
                count: 1,
                paid_fen: 100,
                refund_fen: 0,
                fee_fen: 1,
            }),
            local: Some(LocalTotals::default()),
            differences: vec![Difference {
                kind: DifferenceKind::MissingLocal,
                order_no: Some("R1".into()),
                transaction_id: Some("42".into()),
                out_refund_no: None,
                wechat_fen: Some(100),
                local_fen: Some(100),
                action: Action::Credited,
            }],
        };
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({
                "bill_date": "2026-11-30", "status": "differences", "error": null,
                "wechat": {"count": 1, "paid_fen": 100, "refund_fen": 0, "fee_fen": 1},
                "local": {"count": 0, "paid_fen": 0, "refund_fen": 0},
                "differences": [{"kind": "missing_local", "order_no": "R1", "transaction_id": "42",
                    "out_refund_no": null, "wechat_fen": 100, "local_fen": 100, "action": "credited"}]
            })
        );
        assert_eq!(Report::status_of(&r.differences), ReconStatus::Balanced);
    }
}
