//! Money and coins as types of their own. Both are integers — fen, the smallest unit of CNY,
//! and whole coins — but they are not interchangeable: a package's price in fen buys its coins,
//! and a function that takes one cannot be handed the other by mistake. Both serialise as plain
//! JSON numbers, so the API's bytes are those of the bare integers. How they are stored is the
//! store's business (`store::columns`).

use std::fmt;
use std::ops::{Add, Neg};

use serde::Serialize;

/// An amount of money in fen (1 yuan = 100 fen), as WeChat Pay counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Fen(pub i64);

/// A number of compute coins: a balance, a credit or a deduction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Coins(pub i64);

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Coins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Add for Coins {
    type Output = Coins;
    fn add(self, other: Coins) -> Coins {
        Coins(self.0 + other.0)
    }
}

impl Neg for Coins {
    type Output = Coins;
    fn neg(self) -> Coins {
        Coins(-self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialise_as_bare_numbers() {
        let v = serde_json::json!({ "fen": Fen(600), "coins": Coins(-5) });
        assert_eq!(v.to_string(), r#"{"coins":-5,"fen":600}"#);
        assert_eq!(Coins(60) + Coins(10), Coins(70));
        assert_eq!(-Coins(3), Coins(-3));
    }
}
