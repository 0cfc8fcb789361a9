//! How many coins a refund takes back (issue 12), as a pure function so that the console's
//! preview and the refund itself can agree: all of the order's coins (coins + bonus) for a
//! full refund, `ceil(total_coins × refund_fen / amount_fen)` for a partial one, and never
//! more than the coins still un-refunded on the order. Partial refunds that add up to the
//! whole amount therefore take back exactly the order's coins: every earlier partial took at
//! least its share, so the last one's share is capped to what is left.

/// The coins a refund of `refund_fen` takes back, and what is left to refund after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub refund_fen: i64,
    pub coins: i64,
    /// Fen that could still be refunded before this refund.
    pub refundable_fen: i64,
    /// Coins still un-refunded before this refund.
    pub coins_left: i64,
}

/// The order as far as a refund is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refundable {
    pub amount_fen: i64,
    pub total_coins: i64,
    pub refunded_fen: i64,
    pub refunded_coins: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("must be a positive amount in fen")]
    NotPositive,
    #[error("at most {refundable_fen} fen is left to refund")]
    OverRefundable { refundable_fen: i64 },
}

pub fn quote(order: Refundable, refund_fen: i64) -> Result<Quote, QuoteError> {
    let refundable_fen = (order.amount_fen - order.refunded_fen).max(0);
    let coins_left = (order.total_coins - order.refunded_coins).max(0);
    if refund_fen <= 0 {
        return Err(QuoteError::NotPositive);
    }
    if refund_fen > refundable_fen {
        return Err(QuoteError::OverRefundable { refundable_fen });
    }
    // i128: total_coins × refund_fen can exceed i64 for absurd but storable values. Both
    // factors are non-negative here, so (a + b - 1) / b is the ceiling.
    let (a, b) = (
        i128::from(order.total_coins.max(0)) * i128::from(refund_fen),
        i128::from(order.amount_fen.max(1)),
    );
    let share = (a + b - 1) / b;
    let coins = i64::try_from(share.min(i128::from(coins_left))).unwrap_or(coins_left);
    Ok(Quote {
        refund_fen,
        coins,
        refundable_fen,
        coins_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(refunded_fen: i64, refunded_coins: i64) -> Refundable {
        // 30 yuan for 300 + 30 coins.
        Refundable {
            amount_fen: 3000,
            total_coins: 330,
            refunded_fen,
            refunded_coins,
        }
    }

    #[test]
    fn a_full_refund_takes_every_coin() {
        assert_eq!(quote(order(0, 0), 3000).map(|q| q.coins), Ok(330));
    }

    #[test]
    fn a_partial_refund_rounds_up() {
        // 330 × 1000 / 3000 = 110 exactly; 330 × 1 / 3000 = 0.11 → 1.
        assert_eq!(quote(order(0, 0), 1000).map(|q| q.coins), Ok(110));
        assert_eq!(quote(order(0, 0), 1).map(|q| q.coins), Ok(1));
    }

    #[test]
    fn partials_that_add_up_to_the_whole_take_exactly_the_order_s_coins() {
        for step in [1, 7, 299, 1000, 1499, 2999] {
            let (mut fen, mut coins) = (0, 0);
            while fen < 3000 {
                let q = quote(order(fen, coins), step.min(3000 - fen)).expect("quote");
                fen += q.refund_fen;
                coins += q.coins;
            }
            assert_eq!(coins, 330, "steps of {step} fen");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(quote(order(0, 0), 0), Err(QuoteError::NotPositive));
        assert_eq!(quote(order(0, 0), -5), Err(QuoteError::NotPositive));
        assert_eq!(
            quote(order(2000, 220), 1001),
            Err(QuoteError::OverRefundable {
                refundable_fen: 1000
            })
        );
    }
}
