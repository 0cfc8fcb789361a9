//! How the domain's types are stored: an order's status and a ledger row's kind as their text,
//! fen and coins as BIGINT. The domain modules (`order::state`, `money`, `store::ledger`) know
//! nothing of SQL; the mapping lives here, once for both backends. Reading a value the domain
//! does not know (a status or kind written by something else) is an error, never a default.

use diesel::backend::Backend;
use diesel::deserialize::FromSqlRow;
use diesel::deserialize::{self, FromSql};
use diesel::expression::AsExpression;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{BigInt, Text};

use super::ledger::LedgerKind;
use crate::money::{Coins, Fen};
use crate::order::state::OrderStatus;

// `foreign_derive`: diesel's derives, generated for the wrapped type (defined elsewhere); the
// wrappers themselves are never built.
#[derive(AsExpression, FromSqlRow)]
#[diesel(foreign_derive, sql_type = Text)]
#[allow(dead_code)]
struct OrderStatusColumn(OrderStatus);

#[derive(AsExpression, FromSqlRow)]
#[diesel(foreign_derive, sql_type = Text)]
#[allow(dead_code)]
struct LedgerKindColumn(LedgerKind);

#[derive(AsExpression, FromSqlRow)]
#[diesel(foreign_derive, sql_type = BigInt)]
#[allow(dead_code)]
struct FenColumn(Fen);

#[derive(AsExpression, FromSqlRow)]
#[diesel(foreign_derive, sql_type = BigInt)]
#[allow(dead_code)]
struct CoinsColumn(Coins);

/// A text column holding `as_str()`, read back through `FromStr`.
macro_rules! text_column {
    ($t:ty) => {
        impl<DB: Backend> ToSql<Text, DB> for $t
        where
            str: ToSql<Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                self.as_str().to_sql(out)
            }
        }

        impl<DB: Backend> FromSql<Text, DB> for $t
        where
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                Ok(String::from_sql(bytes)?.parse()?)
            }
        }
    };
}

/// A BIGINT column holding the newtype's integer.
macro_rules! bigint_column {
    ($t:ident) => {
        impl<DB: Backend> ToSql<BigInt, DB> for $t
        where
            i64: ToSql<BigInt, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                self.0.to_sql(out)
            }
        }

        impl<DB: Backend> FromSql<BigInt, DB> for $t
        where
            i64: FromSql<BigInt, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                i64::from_sql(bytes).map($t)
            }
        }
    };
}

text_column!(OrderStatus);
text_column!(LedgerKind);
bigint_column!(Fen);
bigint_column!(Coins);
