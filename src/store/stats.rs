//! Read-only figures for the operators (the admin overview and the console): what was paid in
//! a time range, the ledger rows one order caused, and how much of an order has been refunded
//! according to the ledger. Nothing here writes.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};
use diesel_async::RunQueryDsl;

use super::ledger::LedgerKind;
use super::ledger::LedgerRow;
use super::schema::{compute_logs as l, recharge_orders as o, refunds as r};
use super::{DbPool, StoreError};
use crate::order::state::OrderStatus;
use crate::refund::state::Refunded;
use crate::with_read;

/// The refund numbers of an order: its refunds' ledger rows carry them in `request_id` (they
/// leave `order_no` NULL, which stays unique per kind for the order's one recharge).
#[diesel::dsl::auto_type]
fn refund_nos_of<'a>(order_no: &'a str) -> _ {
    r::table
        .filter(r::order_no.eq(order_no))
        .select(r::refund_no.nullable())
}

/// Paid orders whose `paid_at` falls in `[from_ms, to_ms)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PaidTotals {
    pub orders: i64,
    pub fen: i64,
}

/// `SUM(amount_fen)` as a 64-bit integer on both backends (MySQL's SUM of a BIGINT is a DECIMAL).
const SUM_AMOUNT_FEN: &str = "CAST(SUM(amount_fen) AS SIGNED)";

pub async fn paid_between(
    pool: &DbPool,
    from_ms: i64,
    to_ms: i64,
) -> Result<PaidTotals, StoreError> {
    let (orders, fen): (i64, Option<i64>) = with_read!(pool, conn => o::table
        .filter(o::status.eq(OrderStatus::Paid.as_str()))
        .filter(o::paid_at.ge(from_ms))
        .filter(o::paid_at.lt(to_ms))
        .select((diesel::dsl::count_star(), diesel::dsl::sql::<Nullable<BigInt>>(SUM_AMOUNT_FEN)))
        .get_result(conn)
        .await?);
    Ok(PaidTotals {
        orders,
        fen: fen.unwrap_or(0),
    })
}

/// Every ledger row that names `order_no` (its recharge, and any refund rows), oldest first.
pub async fn ledger_for_order(pool: &DbPool, order_no: &str) -> Result<Vec<LedgerRow>, StoreError> {
    Ok(with_read!(pool, conn => l::table
        .filter(l::order_no.eq(order_no).or(l::request_id.eq_any(refund_nos_of(order_no))))
        .order(l::id.asc())
        .select(LedgerRow::as_select())
        .load(conn)
        .await?))
}

/// What the ledger says has been taken back for one order: coins (net of reversals) and fen
/// (the `amount_fen` of refund rows, net of reversals).
pub async fn refunded_by_ledger(pool: &DbPool, order_no: &str) -> Result<Refunded, StoreError> {
    let rows: Vec<(LedgerKind, i64, Option<i64>)> = with_read!(pool, conn => l::table
        .filter(l::request_id.eq_any(refund_nos_of(order_no)))
        .filter(l::kind.eq_any([LedgerKind::Refund, LedgerKind::RefundReversal]))
        .select((l::kind, l::delta, l::amount_fen))
        .load(conn)
        .await?);
    Ok(rows
        .into_iter()
        .fold(Refunded::default(), |acc, (kind, delta, fen)| {
            // A refund row takes coins (negative delta); its reversal gives them back.
            let fen = fen.unwrap_or(0);
            let fen = if kind == LedgerKind::Refund {
                fen
            } else {
                -fen
            };
            Refunded {
                coins: acc.coins - delta,
                fen: acc.fen + fen,
            }
        }))
}
