//! The order state machine, pure: no I/O, no clock. Every rule of the state table lives in
//! [`transition`]; the actor runs it, the store persists what it decides.
//!
//! | from            | event                                  | decision                                  |
//! |-----------------|----------------------------------------|-------------------------------------------|
//! | created         | PrepayObtained                         | → pending, store prepay_id                |
//! | created         | PrepayFailed                           | → failed, keep WeChat's err_code          |
//! | pending         | PaymentConfirmed, fee == amount        | → paid, credit coins + bonus              |
//! | any unpaid      | PaymentConfirmed, fee != amount        | refused: amount mismatch (answer FAIL)    |
//! | paid            | PaymentConfirmed, same transaction     | duplicate (answer SUCCESS)                |
//! | paid            | PaymentConfirmed, other transaction    | refused: double payment (logged, counted) |
//! | expired         | PaymentConfirmed, fee == amount        | → paid, credited: a late payment          |
//! | created/failed  | PaymentConfirmed, fee == amount        | → paid, credited: money taken is credited |
//! | pending         | Timeout                                | ask WeChat (orderquery)                   |
//! | created         | Timeout                                | → expired                                 |
//! | paid/expired/failed | Timeout                            | no-op                                     |
//! | unpaid          | Queried(paid)                          | as PaymentConfirmed                       |
//! | paid            | Queried(paid)                          | as PaymentConfirmed (duplicate / double)  |
//! | pending         | Queried(USERPAYING)                    | stays pending, next sweep                 |
//! | pending         | Queried(NOTPAY/CLOSED), may expire     | ask WeChat to close (closeorder)          |
//! | pending         | Queried(NOTPAY/CLOSED), not yet due    | stays pending                             |
//! | pending         | Closed (closeorder ok / ORDERCLOSED)   | → expired                                 |
//! | other           | Queried(not paid) / Closed             | no-op                                     |
//! | not created     | PrepayObtained / PrepayFailed          | refused: invalid transition               |

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::money::Fen;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Created,
    Pending,
    Paid,
    Expired,
    Failed,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Created,
        OrderStatus::Pending,
        OrderStatus::Paid,
        OrderStatus::Expired,
        OrderStatus::Failed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Expired => "expired",
            OrderStatus::Failed => "failed",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Paid | OrderStatus::Expired | OrderStatus::Failed
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// What WeChat's orderquery said, reduced to what decides a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Paid {
        transaction_id: String,
        total_fee: Fen,
        /// WeChat's `time_end`, epoch ms, when it gave one.
        paid_at: Option<i64>,
    },
    UserPaying,
    /// NOTPAY, CLOSED, REVOKED, PAYERROR: no money was taken.
    NotPaid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderEvent {
    PrepayObtained {
        prepay_id: String,
    },
    PrepayFailed {
        err_code: String,
    },
    PaymentConfirmed {
        transaction_id: String,
        total_fee: Fen,
        /// WeChat's `time_end` (when the user paid), epoch ms, when it gave one.
        paid_at: Option<i64>,
    },
    /// The sweeper found the order past its expiry.
    Timeout,
    /// orderquery's answer. `may_expire` is false for an operator's re-check of an order that
    /// is not yet due: it may settle a payment but never expires early.
    Queried {
        verdict: Verdict,
        may_expire: bool,
    },
    /// closeorder succeeded, or WeChat said ORDERCLOSED.
    Closed,
}

/// What the order knows about itself that the rules look at.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub status: OrderStatus,
    pub amount_fen: Fen,
    pub transaction_id: Option<&'a str>,
}

/// What a move writes besides the status (persisted atomically with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    StorePrepay {
        prepay_id: String,
    },
    StoreFailure {
        err_code: String,
    },
    Expire,
    /// Credit coins + bonus to the user and write the ledger row.
    Credit {
        transaction_id: String,
        /// When WeChat took the money (its `time_end`); the time of the credit when unknown.
        /// Reconciliation files a payment under the Beijing date of this.
        paid_at: Option<i64>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    OrderQuery,
    CloseOrder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stay {
    /// The same payment again.
    Duplicate,
    /// The payer is still entering their password.
    UserPaying,
    /// Not paid, and not due to expire yet.
    NotDue,
    /// Nothing to do in this state.
    NoOp,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("notified total_fee {got} differs from the order amount {expected}")]
    AmountMismatch { expected: Fen, got: Fen },
    #[error("paid twice: order holds transaction {existing}, notified {other}")]
    DoublePayment { existing: String, other: String },
    #[error("{event} is not allowed in state {from}")]
    InvalidTransition {
        from: OrderStatus,
        event: &'static str,
    },
}

impl Rejection {
    /// The `coinpay_payment_anomalies` kind of a refusal that leaves money WeChat took
    /// uncredited (a human must look at it); `None` for a refused event that took no money.
    pub fn anomaly(&self) -> Option<&'static str> {
        match self {
            Rejection::AmountMismatch { .. } => Some("amount_mismatch"),
            Rejection::DoublePayment { .. } => Some("double_payment"),
            Rejection::InvalidTransition { .. } => None,
        }
    }
}

/// A change of state, with what it writes besides the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub to: OrderStatus,
    pub effect: Effect,
    /// A payment credited after the order had expired (or never reached pending).
    pub late: bool,
}

/// What the rules say to do with one event. A `Move` is its own type so that whatever carries a
/// committed move (the store's answer, the actor's outcome) can say which move it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Move(Move),
    Ask(Ask),
    Stay(Stay),
    Refuse(Rejection),
}

impl OrderEvent {
    pub fn name(&self) -> &'static str {
        match self {
            OrderEvent::PrepayObtained { .. } => "PrepayObtained",
            OrderEvent::PrepayFailed { .. } => "PrepayFailed",
            OrderEvent::PaymentConfirmed { .. } => "PaymentConfirmed",
            OrderEvent::Timeout => "Timeout",
            OrderEvent::Queried { .. } => "Queried",
            OrderEvent::Closed => "Closed",
        }
    }
}

/// The state table.
pub fn transition(f: &Facts<'_>, ev: &OrderEvent) -> Decision {
    use OrderStatus::*;
    match (f.status, ev) {
        (Created, OrderEvent::PrepayObtained { prepay_id }) => Decision::Move(Move {
            to: Pending,
            effect: Effect::StorePrepay {
                prepay_id: prepay_id.clone(),
            },
            late: false,
        }),
        (Created, OrderEvent::PrepayFailed { err_code }) => Decision::Move(Move {
            to: Failed,
            effect: Effect::StoreFailure {
                err_code: err_code.clone(),
            },
            late: false,
        }),
        (from, OrderEvent::PrepayObtained { .. } | OrderEvent::PrepayFailed { .. }) => {
            Decision::Refuse(Rejection::InvalidTransition {
                from,
                event: ev.name(),
            })
        }

        (
            _,
            OrderEvent::PaymentConfirmed {
                transaction_id,
                total_fee,
                paid_at,
            }
            | OrderEvent::Queried {
                verdict:
                    Verdict::Paid {
                        transaction_id,
                        total_fee,
                        paid_at,
                    },
                ..
            },
        ) => payment(f, transaction_id, *total_fee, *paid_at),

        (Pending, OrderEvent::Timeout) => Decision::Ask(Ask::OrderQuery),
        (Created, OrderEvent::Timeout) => Decision::Move(Move {
            to: Expired,
            effect: Effect::Expire,
            late: false,
        }),
        (Paid | Expired | Failed, OrderEvent::Timeout) => Decision::Stay(Stay::NoOp),

        (
            Pending,
            OrderEvent::Queried {
                verdict: Verdict::UserPaying,
                ..
            },
        ) => Decision::Stay(Stay::UserPaying),
        (
            Pending,
            OrderEvent::Queried {
                verdict: Verdict::NotPaid,
                may_expire,
            },
        ) => {
            if *may_expire {
                Decision::Ask(Ask::CloseOrder)
            } else {
                Decision::Stay(Stay::NotDue)
            }
        }
        (Pending, OrderEvent::Closed) => Decision::Move(Move {
            to: Expired,
            effect: Effect::Expire,
            late: false,
        }),
        (_, OrderEvent::Queried { .. } | OrderEvent::Closed) => Decision::Stay(Stay::NoOp),
    }
}

/// Money taken is always credited, once; a payment that does not match is never credited.
fn payment(f: &Facts<'_>, transaction_id: &str, total_fee: Fen, paid_at: Option<i64>) -> Decision {
    if f.status == OrderStatus::Paid {
        return match f.transaction_id {
            Some(existing) if existing == transaction_id => Decision::Stay(Stay::Duplicate),
            existing => Decision::Refuse(Rejection::DoublePayment {
                existing: existing.unwrap_or_default().to_string(),
                other: transaction_id.to_string(),
            }),
        };
    }
    if total_fee != f.amount_fen {
        return Decision::Refuse(Rejection::AmountMismatch {
            expected: f.amount_fen,
            got: total_fee,
        });
    }
    Decision::Move(Move {
        to: OrderStatus::Paid,
        effect: Effect::Credit {
            transaction_id: transaction_id.to_string(),
            paid_at,
        },
        late: f.status != OrderStatus::Pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    const AMOUNT: Fen = Fen(600);
    /// WeChat's `time_end` in the events; the credit carries it on.
    const PAID_AT: Option<i64> = Some(1_764_560_000_000);

    fn facts(status: OrderStatus) -> Facts<'static> {
        Facts {
            status,
            amount_fen: AMOUNT,
            transaction_id: (status == Paid).then_some("T1"),
        }
    }

    fn paid_event(txn: &str, fee: Fen) -> OrderEvent {
        OrderEvent::PaymentConfirmed {
            transaction_id: txn.into(),
            total_fee: fee,
            paid_at: PAID_AT,
        }
    }
    fn queried(verdict: Verdict, may_expire: bool) -> OrderEvent {
        OrderEvent::Queried {
            verdict,
            may_expire,
        }
    }
    fn credit(txn: &str, late: bool) -> Decision {
        Decision::Move(Move {
            to: Paid,
            effect: Effect::Credit {
                transaction_id: txn.into(),
                paid_at: PAID_AT,
            },
            late,
        })
    }
    fn invalid(from: OrderStatus, event: &'static str) -> Decision {
        Decision::Refuse(Rejection::InvalidTransition { from, event })
    }
    fn mismatch(got: Fen) -> Decision {
        Decision::Refuse(Rejection::AmountMismatch {
            expected: AMOUNT,
            got,
        })
    }
    const EXPIRE: Decision = Decision::Move(Move {
        to: Expired,
        effect: Effect::Expire,
        late: false,
    });

    /// Every event kind, with the variants that matter to the rules.
    fn events() -> Vec<OrderEvent> {
        vec![
            OrderEvent::PrepayObtained {
                prepay_id: "wx1".into(),
            },
            OrderEvent::PrepayFailed {
                err_code: "NOAUTH".into(),
            },
            paid_event("T1", AMOUNT),
            paid_event("T2", AMOUNT),
            paid_event("T1", Fen(AMOUNT.0 + 1)),
            OrderEvent::Timeout,
            queried(
                Verdict::Paid {
                    transaction_id: "T1".into(),
                    total_fee: AMOUNT,
                    paid_at: PAID_AT,
                },
                true,
            ),
            queried(Verdict::UserPaying, true),
            queried(Verdict::NotPaid, true),
            queried(Verdict::NotPaid, false),
            OrderEvent::Closed,
        ]
    }

    /// The whole table, one expected decision per (state, event) pair, refusals included.
    fn expected(status: OrderStatus, i: usize) -> Decision {
        let prepay = Decision::Move(Move {
            to: Pending,
            effect: Effect::StorePrepay {
                prepay_id: "wx1".into(),
            },
            late: false,
        });
        let failed = Decision::Move(Move {
            to: Failed,
            effect: Effect::StoreFailure {
                err_code: "NOAUTH".into(),
            },
            late: false,
        });
        let late = status != Pending;
        let double = Decision::Refuse(Rejection::DoublePayment {
            existing: "T1".into(),
            other: "T2".into(),
        });
        match (status, i) {
            (Created, 0) => prepay,
            (Created, 1) => failed,
            (s, 0) => invalid(s, "PrepayObtained"),
            (s, 1) => invalid(s, "PrepayFailed"),
            (Paid, 2) | (Paid, 6) => Decision::Stay(Stay::Duplicate),
            (Paid, 3) => double,
            (Paid, 4) => Decision::Stay(Stay::Duplicate),
            (_, 2) | (_, 6) => credit("T1", late),
            (_, 3) => credit("T2", late),
            (_, 4) => mismatch(Fen(AMOUNT.0 + 1)),
            (Pending, 5) => Decision::Ask(Ask::OrderQuery),
            (Created, 5) => EXPIRE,
            (_, 5) => Decision::Stay(Stay::NoOp),
            (Pending, 7) => Decision::Stay(Stay::UserPaying),
            (Pending, 8) => Decision::Ask(Ask::CloseOrder),
            (Pending, 9) => Decision::Stay(Stay::NotDue),
            (Pending, 10) => EXPIRE,
            (_, 7..=10) => Decision::Stay(Stay::NoOp),
            _ => unreachable!("event index {i}"),
        }
    }

    #[test]
    fn every_state_and_event_pair() {
        let evs = events();
        for status in OrderStatus::ALL {
            for (i, ev) in evs.iter().enumerate() {
                let got = transition(&facts(status), ev);
                assert_eq!(got, expected(status, i), "{status} × {ev:?}");
            }
        }
    }

    #[test]
    fn pending_payment_credits_once_then_duplicates() {
        let d = transition(&facts(Pending), &paid_event("T9", AMOUNT));
        assert_eq!(d, credit("T9", false));
        let after = Facts {
            status: Paid,
            amount_fen: AMOUNT,
            transaction_id: Some("T9"),
        };
        assert_eq!(
            transition(&after, &paid_event("T9", AMOUNT)),
            Decision::Stay(Stay::Duplicate)
        );
    }

    #[test]
    fn late_payment_on_expired_order_is_credited_and_marked_late() {
        assert_eq!(
            transition(&facts(Expired), &paid_event("T5", AMOUNT)),
            credit("T5", true)
        );
        assert_eq!(
            transition(&facts(Expired), &paid_event("T5", Fen(1))),
            mismatch(Fen(1))
        );
    }

    #[test]
    fn status_round_trips_and_terminality() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>().ok(), Some(s));
        }
        assert!("PAID".parse::<OrderStatus>().is_err());
        assert!(Paid.is_terminal() && Expired.is_terminal() && Failed.is_terminal());
        assert!(!Created.is_terminal() && !Pending.is_terminal());
    }
}
