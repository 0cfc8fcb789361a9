//! The refund state machine, pure: no I/O, no clock. Every rule of the refund table lives in
//! [`transition`]; the refund actor runs it, the store persists what it decides, and the coins
//! a refund takes back are computed by [`coins_to_take`], also here, so that the admin API, the
//! console's preview and the store all agree on one number.
//!
//! A refund's coins are reserved (taken off the balance, with a `refund` ledger row) in the
//! same transaction that creates the refund as `processing`, before WeChat is asked. Every
//! later rule either keeps them taken (the money went, or may still go, back to the payer) or
//! gives them back with a `refund_reversal` row (the money will never move).
//!
//! | from       | event                                         | decision                                   |
//! |------------|-----------------------------------------------|--------------------------------------------|
//! | processing | Submitted: WeChat accepted the request        | stays processing (wait for the result)     |
//! | processing | Submitted: retryable (timeout, SYSTEMERROR, …) | stays processing, retried with the same no |
//! | processing | Submitted: final refusal (err_code)           | → failed, coins given back                 |
//! | processing | Result SUCCESS, amount matches                | → succeeded, store refund_id, success time |
//! | processing | Result REFUNDCLOSE                            | → closed, coins given back                 |
//! | processing | Result CHANGE                                 | → abnormal, coins stay taken, alert        |
//! | processing | Result PROCESSING                             | stays processing                           |
//! | any        | Result with another amount                    | refused: amount mismatch (answer FAIL)     |
//! | succeeded  | Result SUCCESS                                | duplicate (answer SUCCESS)                 |
//! | closed     | Result REFUNDCLOSE                            | duplicate                                  |
//! | abnormal   | Result CHANGE                                 | duplicate                                  |
//! | abnormal   | Result SUCCESS                                | → succeeded (settled after all)            |
//! | abnormal   | Result REFUNDCLOSE                            | → closed, coins given back                 |
//! | failed     | Result SUCCESS / CHANGE / REFUNDCLOSE         | refused: contradicts a final refusal       |
//! | succeeded  | Result REFUNDCLOSE / CHANGE                   | refused: contradicts a success             |
//! | closed     | Result SUCCESS / CHANGE                       | refused: contradicts a close               |
//! | any        | Result PROCESSING, not processing             | no-op                                      |
//! | not processing | Submitted (any)                           | no-op (a late answer to a settled refund)  |

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefundStatus {
    Processing,
    Succeeded,
    Closed,
    Failed,
    Abnormal,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 5] = [
        RefundStatus::Processing,
        RefundStatus::Succeeded,
        RefundStatus::Closed,
        RefundStatus::Failed,
        RefundStatus::Abnormal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Processing => "processing",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Closed => "closed",
            RefundStatus::Failed => "failed",
            RefundStatus::Abnormal => "abnormal",
        }
    }

    /// Whether the refund's coins are back on the user's balance.
    pub fn coins_returned(self) -> bool {
        matches!(self, RefundStatus::Closed | RefundStatus::Failed)
    }

    /// Whether the refund still counts against what is left to refund of its order: only a
    /// refund whose money will never move frees its amount again.
    pub fn holds_amount(self) -> bool {
        !self.coins_returned()
    }

    /// No rule moves a refund out of these states by itself (abnormal waits for an operator or a
    /// later result, so it is not settled).
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            RefundStatus::Succeeded | RefundStatus::Closed | RefundStatus::Failed
        )
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown refund status {0:?}")]
pub struct UnknownRefundStatus(pub String);

impl FromStr for RefundStatus {
    type Err = UnknownRefundStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RefundStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownRefundStatus(s.to_string()))
    }
}

/// What WeChat said about a refund's money (refundquery's `refund_status_$n`, or the decrypted
/// `refund_status` of a refund notification).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WechatRefundState {
    Success {
        refund_id: String,
        /// `success_time` as epoch milliseconds, when WeChat gave one.
        success_at: Option<i64>,
    },
    /// REFUNDCLOSE: the refund was closed and no money moved.
    Closed,
    /// CHANGE: the money could not reach the payer (a cancelled card, a frozen account).
    Change,
    Processing,
}

/// How WeChat answered `secapi/pay/refund` (or what became of the call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submission {
    /// return_code and result_code SUCCESS: WeChat took the request; the result comes later.
    Accepted { refund_id: Option<String> },
    /// A timeout, SYSTEMERROR, BIZERR_NEED_RETRY, FREQUENCY_LIMITED…: ask again later with the
    /// same out_refund_no and the same amounts.
    Retry { reason: String },
    /// A final refusal (NOTENOUGH, REFUND_FEE_INVALID, …): no money will move.
    Refused { err_code: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundEvent {
    Submitted(Submission),
    /// A result, from a refund notification or from refundquery, for `refund_fen`.
    Result {
        state: WechatRefundState,
        refund_fen: i64,
    },
}

/// What the refund knows about itself that the rules look at.
#[derive(Clone, Copy, Debug)]
pub struct RefundFacts {
    pub status: RefundStatus,
    pub refund_fen: i64,
}

/// What a move writes besides the status, in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundEffect {
    /// Give the reserved coins back with a `refund_reversal` ledger row; keep WeChat's err_code.
    Reverse { err_code: Option<String> },
    /// Store WeChat's refund_id and the success time; the coins stay taken.
    Succeed {
        refund_id: String,
        success_at: Option<i64>,
    },
    /// The coins stay taken; an operator settles it by hand (alert).
    MarkAbnormal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundStay {
    /// WeChat has the request (or will have it on the retry): wait for the result.
    Waiting,
    /// The call did not go through; ask again later with the same out_refund_no.
    RetryLater,
    /// The same result again.
    Duplicate,
    /// Nothing to do in this state.
    NoOp,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefundRejection {
    #[error("refund result for {got} fen differs from the refund's {expected} fen")]
    AmountMismatch { expected: i64, got: i64 },
    #[error("WeChat reports {reported} for a refund that is {status}")]
    Contradiction {
        status: RefundStatus,
        reported: &'static str,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundDecision {
    Move {
        to: RefundStatus,
        effect: RefundEffect,
    },
    Stay(RefundStay),
    Refuse(RefundRejection),
}

impl WechatRefundState {
    pub fn name(&self) -> &'static str {
        match self {
            WechatRefundState::Success { .. } => "SUCCESS",
            WechatRefundState::Closed => "REFUNDCLOSE",
            WechatRefundState::Change => "CHANGE",
            WechatRefundState::Processing => "PROCESSING",
        }
    }
}

/// The refund state table.
pub fn transition(f: &RefundFacts, ev: &RefundEvent) -> RefundDecision {
    use RefundStatus::*;
    match ev {
        RefundEvent::Submitted(s) => match (f.status, s) {
            (Processing, Submission::Accepted { .. }) => RefundDecision::Stay(RefundStay::Waiting),
            (Processing, Submission::Retry { .. }) => RefundDecision::Stay(RefundStay::RetryLater),
            (Processing, Submission::Refused { err_code }) => RefundDecision::Move {
                to: Failed,
                effect: RefundEffect::Reverse {
                    err_code: Some(err_code.clone()),
                },
            },
            (_, _) => RefundDecision::Stay(RefundStay::NoOp),
        },
        RefundEvent::Result { state, refund_fen } => {
            if *state == WechatRefundState::Processing {
                return RefundDecision::Stay(if f.status == Processing {
                    RefundStay::Waiting
                } else {
                    RefundStay::NoOp
                });
            }
            if *refund_fen != f.refund_fen {
                return RefundDecision::Refuse(RefundRejection::AmountMismatch {
                    expected: f.refund_fen,
                    got: *refund_fen,
                });
            }
            result(f.status, state)
        }
    }
}

fn result(status: RefundStatus, state: &WechatRefundState) -> RefundDecision {
    use RefundStatus::*;
    let contradiction = || {
        RefundDecision::Refuse(RefundRejection::Contradiction {
            status,
            reported: state.name(),
        })
    };
    match (status, state) {
        (
            Processing | Abnormal,
            WechatRefundState::Success {
                refund_id,
                success_at,
            },
        ) => RefundDecision::Move {
            to: Succeeded,
            effect: RefundEffect::Succeed {
                refund_id: refund_id.clone(),
                success_at: *success_at,
            },
        },
        (Processing | Abnormal, WechatRefundState::Closed) => RefundDecision::Move {
            to: Closed,
            effect: RefundEffect::Reverse {
                err_code: Some("REFUNDCLOSE".into()),
            },
        },
        (Processing, WechatRefundState::Change) => RefundDecision::Move {
            to: Abnormal,
            effect: RefundEffect::MarkAbnormal,
        },
        (Succeeded, WechatRefundState::Success { .. })
        | (Closed, WechatRefundState::Closed)
        | (Abnormal, WechatRefundState::Change) => RefundDecision::Stay(RefundStay::Duplicate),
        (_, WechatRefundState::Processing) => RefundDecision::Stay(RefundStay::NoOp),
        (Failed | Succeeded | Closed, _) => contradiction(),
    }
}

/// Why a refund amount cannot be taken from an order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefundAmountError {
    #[error("refund_fen must be at least 1 fen")]
    NotPositive,
    #[error("refund_fen {requested} exceeds the {refundable} fen left to refund")]
    OverRefundable { requested: i64, refundable: i64 },
}

/// What an order has given back so far (refunds that still hold their amount).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refunded {
    pub fen: i64,
    pub coins: i64,
}

/// The coins a refund of `refund_fen` takes back from an order of `amount_fen` that credited
/// `total_coins` (coins + bonus), given what earlier refunds already took.
///
/// A refund of everything that is left takes every coin that is left, so partial refunds that
/// add up to the whole take back exactly the order's coins. A partial refund takes
/// `ceil(total_coins × refund_fen / amount_fen)`, never more than the coins still un-refunded.
/// The arithmetic is in i128 so that no product of two i64 values can overflow.
pub fn coins_to_take(
    amount_fen: i64,
    total_coins: i64,
    before: Refunded,
    refund_fen: i64,
) -> Result<i64, RefundAmountError> {
    if refund_fen <= 0 {
        return Err(RefundAmountError::NotPositive);
    }
    let refundable = (amount_fen - before.fen).max(0);
    if refund_fen > refundable {
        return Err(RefundAmountError::OverRefundable {
            requested: refund_fen,
            refundable,
        });
    }
    let left = (total_coins - before.coins).max(0);
    if refund_fen == refundable {
        return Ok(left);
    }
    let num = i128::from(total_coins) * i128::from(refund_fen);
    let den = i128::from(amount_fen.max(1));
    let ceil = (num + den - 1) / den;
    Ok(i64::try_from(ceil).unwrap_or(i64::MAX).min(left))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RefundStatus::*;

    const FEN: i64 = 300;

    fn facts(status: RefundStatus) -> RefundFacts {
        RefundFacts {
            status,
            refund_fen: FEN,
        }
    }
    fn result_ev(state: WechatRefundState) -> RefundEvent {
        RefundEvent::Result {
            state,
            refund_fen: FEN,
        }
    }
    fn success() -> WechatRefundState {
        WechatRefundState::Success {
            refund_id: "R1".into(),
            success_at: Some(1_000),
        }
    }
    fn submitted(s: Submission) -> RefundEvent {
        RefundEvent::Submitted(s)
    }
    fn accepted() -> Submission {
        Submission::Accepted {
            refund_id: Some("R1".into()),
        }
    }
    fn retry() -> Submission {
        Submission::Retry {
            reason: "SYSTEMERROR".into(),
        }
    }
    fn refused() -> Submission {
        Submission::Refused {
            err_code: "NOTENOUGH".into(),
        }
    }
    fn moves(to: RefundStatus, effect: RefundEffect) -> RefundDecision {
        RefundDecision::Move { to, effect }
    }
    fn stays(s: RefundStay) -> RefundDecision {
        RefundDecision::Stay(s)
    }
    fn contradiction(status: RefundStatus, reported: &'static str) -> RefundDecision {
        RefundDecision::Refuse(RefundRejection::Contradiction { status, reported })
    }
    fn reverse(code: &str) -> RefundEffect {
        RefundEffect::Reverse {
            err_code: Some(code.into()),
        }
    }
    fn succeed() -> RefundEffect {
        RefundEffect::Succeed {
            refund_id: "R1".into(),
            success_at: Some(1_000),
        }
    }

    /// Every (state, event) pair, with its expected decision: the table in the module doc.
    #[test]
    fn every_state_and_event() {
        use WechatRefundState::{Change, Closed as WClosed, Processing as WProcessing};
        let cases: Vec<(RefundStatus, RefundEvent, RefundDecision)> = vec![
            (
                Processing,
                submitted(accepted()),
                stays(RefundStay::Waiting),
            ),
            (
                Processing,
                submitted(retry()),
                stays(RefundStay::RetryLater),
            ),
            (
                Processing,
                submitted(refused()),
                moves(Failed, reverse("NOTENOUGH")),
            ),
            (
                Processing,
                result_ev(success()),
                moves(Succeeded, succeed()),
            ),
            (
                Processing,
                result_ev(WClosed),
                moves(Closed, reverse("REFUNDCLOSE")),
            ),
            (
                Processing,
                result_ev(Change),
                moves(Abnormal, RefundEffect::MarkAbnormal),
            ),
            (
                Processing,
                result_ev(WProcessing),
                stays(RefundStay::Waiting),
            ),
            (Succeeded, submitted(accepted()), stays(RefundStay::NoOp)),
            (Succeeded, submitted(retry()), stays(RefundStay::NoOp)),
            (Succeeded, submitted(refused()), stays(RefundStay::NoOp)),
            (
                Succeeded,
                result_ev(success()),
                stays(RefundStay::Duplicate),
            ),
            (
                Succeeded,
                result_ev(WClosed),
                contradiction(Succeeded, "REFUNDCLOSE"),
            ),
            (
                Succeeded,
                result_ev(Change),
                contradiction(Succeeded, "CHANGE"),
            ),
            (Succeeded, result_ev(WProcessing), stays(RefundStay::NoOp)),
            (Closed, submitted(accepted()), stays(RefundStay::NoOp)),
            (Closed, submitted(retry()), stays(RefundStay::NoOp)),
            (Closed, submitted(refused()), stays(RefundStay::NoOp)),
            (
                Closed,
                result_ev(success()),
                contradiction(Closed, "SUCCESS"),
            ),
            (Closed, result_ev(WClosed), stays(RefundStay::Duplicate)),
            (Closed, result_ev(Change), contradiction(Closed, "CHANGE")),
            (Closed, result_ev(WProcessing), stays(RefundStay::NoOp)),
            (Failed, submitted(accepted()), stays(RefundStay::NoOp)),
            (Failed, submitted(retry()), stays(RefundStay::NoOp)),
            (Failed, submitted(refused()), stays(RefundStay::NoOp)),
            (
                Failed,
                result_ev(success()),
                contradiction(Failed, "SUCCESS"),
            ),
            (
                Failed,
                result_ev(WClosed),
                contradiction(Failed, "REFUNDCLOSE"),
            ),
            (Failed, result_ev(Change), contradiction(Failed, "CHANGE")),
            (Failed, result_ev(WProcessing), stays(RefundStay::NoOp)),
            (Abnormal, submitted(accepted()), stays(RefundStay::NoOp)),
            (Abnormal, submitted(retry()), stays(RefundStay::NoOp)),
            (Abnormal, submitted(refused()), stays(RefundStay::NoOp)),
            (Abnormal, result_ev(success()), moves(Succeeded, succeed())),
            (
                Abnormal,
                result_ev(WClosed),
                moves(Closed, reverse("REFUNDCLOSE")),
            ),
            (Abnormal, result_ev(Change), stays(RefundStay::Duplicate)),
            (Abnormal, result_ev(WProcessing), stays(RefundStay::NoOp)),
        ];
        // 5 states × (3 submissions + 4 results).
        assert_eq!(cases.len(), 35);
        for (status, ev, want) in cases {
            assert_eq!(transition(&facts(status), &ev), want, "{status} × {ev:?}");
        }
    }

    #[test]
    fn a_result_for_another_amount_is_refused_in_every_state() {
        for status in RefundStatus::ALL {
            for state in [
                success(),
                WechatRefundState::Closed,
                WechatRefundState::Change,
            ] {
                let ev = RefundEvent::Result {
                    state,
                    refund_fen: FEN + 1,
                };
                assert_eq!(
                    transition(&facts(status), &ev),
                    RefundDecision::Refuse(RefundRejection::AmountMismatch {
                        expected: FEN,
                        got: FEN + 1
                    }),
                    "{status}"
                );
            }
        }
    }

    #[test]
    fn only_a_move_that_gives_coins_back_reverses() {
        for status in RefundStatus::ALL {
            assert_eq!(
                status.coins_returned(),
                matches!(status, Closed | Failed),
                "{status}"
            );
            assert_eq!(status.as_str().parse::<RefundStatus>().ok(), Some(status));
        }
        assert!("refunded".parse::<RefundStatus>().is_err());
    }

    #[test]
    fn coins_for_full_and_partial_refunds() {
        let none = Refunded::default();
        // A full refund takes everything.
        assert_eq!(coins_to_take(600, 110, none, 600), Ok(110));
        // A partial one rounds up.
        assert_eq!(coins_to_take(600, 110, none, 300), Ok(55));
        assert_eq!(coins_to_take(600, 110, none, 1), Ok(1));
        assert_eq!(coins_to_take(600, 110, none, 7), Ok(2));
        // Partials that add up to the whole take exactly the order's coins.
        let mut before = Refunded::default();
        for fen in [1, 7, 200, 392] {
            let coins = coins_to_take(600, 110, before, fen).expect("refundable");
            before.fen += fen;
            before.coins += coins;
        }
        assert_eq!(
            before,
            Refunded {
                fen: 600,
                coins: 110
            }
        );
        // Never more than the coins still un-refunded.
        let most = Refunded {
            fen: 10,
            coins: 109,
        };
        assert_eq!(coins_to_take(600, 110, most, 300), Ok(1));
    }

    #[test]
    fn amounts_outside_the_refundable_rest_are_refused() {
        let before = Refunded {
            fen: 500,
            coins: 92,
        };
        assert_eq!(
            coins_to_take(600, 110, before, 0),
            Err(RefundAmountError::NotPositive)
        );
        assert_eq!(
            coins_to_take(600, 110, before, -5),
            Err(RefundAmountError::NotPositive)
        );
        assert_eq!(
            coins_to_take(600, 110, before, 101),
            Err(RefundAmountError::OverRefundable {
                requested: 101,
                refundable: 100
            })
        );
        assert_eq!(coins_to_take(600, 110, before, 100), Ok(18));
        // Huge values cannot overflow.
        assert_eq!(
            coins_to_take(i64::MAX, i64::MAX, Refunded::default(), i64::MAX - 1),
            Ok(i64::MAX - 1)
        );
    }
}
