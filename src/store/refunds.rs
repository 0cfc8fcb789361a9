//! Refunds. A refund's row (`processing`), the coins taken off the balance with a `refund`
//! ledger row and the order's `refunded_fen`/`refunded_coins` are written in ONE transaction
//! ([`reserve`]) before WeChat is asked, so a crash at any later point leaves a refund that the
//! poller finds and settles, never money sent without its coins taken.
//!
//! Every later status change is a compare-and-set on `version` ([`apply`]), committed with its
//! effects (giving the coins back with a `refund_reversal` row), so two deciders can never both
//! win. Ledger rows of a refund carry the refund_no in `request_id`: the unique
//! `(kind, request_id)` then admits one `refund` and one `refund_reversal` row per refund, while
//! `(kind, order_no)` keeps meaning one recharge per order (refund rows leave `order_no` NULL).

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::ledger::{KIND_REFUND, KIND_REFUND_REVERSAL};
use super::schema::{compute_logs as l, recharge_orders as o, refunds as r, users as u};
use super::{DbPool, StoreError, now_ms};
use crate::order::state::OrderStatus;
use crate::refund::state::{
    RefundAmountError, RefundEffect, RefundStatus, Refunded, coins_to_take,
};
use crate::wechat::refund::MAX_REFUNDS_PER_ORDER;
use crate::{with_read, with_write};

/// WeChat refuses refunds of orders paid more than a year ago (`TRADE_OVERDUE`, §1.3).
pub const REFUNDABLE_FOR_MS: i64 = 365 * 24 * 3600 * 1000;
/// Attempts at the order's compare-and-set when concurrent refunds of one order collide.
const RESERVE_ATTEMPTS: usize = 8;

#[derive(Queryable, Selectable, Serialize, Clone, Debug, PartialEq, Eq)]
#[diesel(table_name = r, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct RefundRow {
    pub id: i64,
    pub refund_no: String,
    pub order_no: String,
    pub user_id: i64,
    pub refund_fen: i64,
    pub coins: i64,
    pub status: String,
    pub reason: String,
    pub request_id: String,
    pub wechat_refund_id: Option<String>,
    pub wechat_err_code: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub succeeded_at: Option<i64>,
    pub version: i64,
}

impl RefundRow {
    pub fn status(&self) -> RefundStatus {
        // Only this module writes the column, always from RefundStatus::as_str.
        self.status.parse().unwrap_or(RefundStatus::Abnormal)
    }
}

/// What a refund needs to know of its order.
#[derive(Queryable, Selectable, Clone, Debug)]
#[diesel(table_name = o, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct RefundableOrder {
    pub order_no: String,
    pub user_id: i64,
    pub amount_fen: i64,
    pub coins: i64,
    pub bonus_coins: i64,
    pub status: String,
    pub transaction_id: Option<String>,
    pub paid_at: Option<i64>,
    pub refunded_fen: i64,
    pub refunded_coins: i64,
}

pub async fn order(pool: &DbPool, order_no: &str) -> Result<Option<RefundableOrder>, StoreError> {
    Ok(with_read!(pool, conn => o::table
        .filter(o::order_no.eq(order_no))
        .select(RefundableOrder::as_select())
        .first(conn)
        .await
        .optional()?))
}

pub struct NewRefund<'a> {
    pub refund_no: &'a str,
    pub order_no: &'a str,
    pub refund_fen: i64,
    pub reason: &'a str,
    pub request_id: &'a str,
}

/// Why a refund was refused before anything was written (and before WeChat was called).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReserveRefusal {
    #[error("no such order")]
    OrderNotFound,
    #[error("order is {0}, not paid")]
    NotPaid(String),
    #[error(transparent)]
    Amount(#[from] RefundAmountError),
    #[error("the order already has {MAX_REFUNDS_PER_ORDER} refunds")]
    TooManyRefunds,
    #[error("the order was paid more than a year ago")]
    Overdue,
    #[error("balance {balance} is less than the {coins} coins to take back")]
    Insufficient { balance: i64, coins: i64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// The row is new and its coins are taken: WeChat is to be asked.
    Created(RefundRow),
    /// The request_id names an existing refund (the caller compares it with the request).
    Existing(RefundRow),
}

/// Inside the transaction: a refusal rolls it back like a database error does.
#[derive(Debug)]
enum TxError {
    Refused(ReserveRefusal),
    Store(StoreError),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Store(StoreError::Query(e))
    }
}

pub async fn get(pool: &DbPool, refund_no: &str) -> Result<Option<RefundRow>, StoreError> {
    Ok(with_read!(pool, conn => r::table
        .filter(r::refund_no.eq(refund_no))
        .select(RefundRow::as_select())
        .first(conn)
        .await
        .optional()?))
}

pub async fn by_request_id(
    pool: &DbPool,
    request_id: &str,
) -> Result<Option<RefundRow>, StoreError> {
    Ok(with_read!(pool, conn => r::table
        .filter(r::request_id.eq(request_id))
        .select(RefundRow::as_select())
        .first(conn)
        .await
        .optional()?))
}

/// An order's refunds, oldest first (at most [`MAX_REFUNDS_PER_ORDER`] plus the refused ones).
pub async fn list_for_order(pool: &DbPool, order_no: &str) -> Result<Vec<RefundRow>, StoreError> {
    Ok(with_read!(pool, conn => r::table
        .filter(r::order_no.eq(order_no))
        .order(r::id.asc())
        .select(RefundRow::as_select())
        .load(conn)
        .await?))
}

/// Checks the order and, in one transaction, creates the refund as `processing`, takes its
/// coins off the balance (never below zero) with a `refund` ledger row and adds it to the
/// order's refunded amounts. The order's compare-and-set on those amounts serialises
/// concurrent refunds of one order, so their sum can never pass the order's amount.
pub async fn reserve(
    pool: &DbPool,
    n: &NewRefund<'_>,
) -> Result<Result<Reserved, ReserveRefusal>, StoreError> {
    for _ in 0..RESERVE_ATTEMPTS {
        if let Some(existing) = by_request_id(pool, n.request_id).await? {
            return Ok(Ok(Reserved::Existing(existing)));
        }
        let Some(ord) = order(pool, n.order_no).await? else {
            return Ok(Err(ReserveRefusal::OrderNotFound));
        };
        if ord.status != OrderStatus::Paid.as_str() {
            return Ok(Err(ReserveRefusal::NotPaid(ord.status)));
        }
        let now = now_ms();
        if ord.paid_at.is_some_and(|t| now - t > REFUNDABLE_FOR_MS) {
            return Ok(Err(ReserveRefusal::Overdue));
        }
        let before = Refunded {
            fen: ord.refunded_fen,
            coins: ord.refunded_coins,
        };
        let coins = match coins_to_take(
            ord.amount_fen,
            ord.coins + ord.bonus_coins,
            before,
            n.refund_fen,
        ) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e.into())),
        };
        match insert_reserved(pool, n, &ord, coins, now).await {
            Ok(()) => {}
            Err(TxError::Refused(refusal)) => return Ok(Err(refusal)),
            // Another refund of the order moved its amounts first: decide again.
            Err(TxError::Store(StoreError::Conflict)) => continue,
            // A concurrent twin with the same request_id (or refund_no) won: its row answers.
            Err(TxError::Store(e)) if e.is_unique_violation() => continue,
            Err(TxError::Store(e)) => return Err(e),
        }
        let row = get(pool, n.refund_no).await?.ok_or(StoreError::Conflict)?;
        return Ok(Ok(Reserved::Created(row)));
    }
    Err(StoreError::Conflict)
}

async fn insert_reserved(
    pool: &DbPool,
    n: &NewRefund<'_>,
    ord: &RefundableOrder,
    coins: i64,
    now: i64,
) -> Result<(), TxError> {
    let run = async || -> Result<Result<(), TxError>, StoreError> {
        Ok(
            with_write!(pool, conn => conn.transaction::<(), TxError, _>(async move |conn| {
            // Write first (see ledger::apply_movement): the row lock orders concurrent refunds.
            let moved = diesel::update(
                o::table
                    .filter(o::order_no.eq(n.order_no))
                    .filter(o::status.eq(OrderStatus::Paid.as_str()))
                    .filter(o::refunded_fen.eq(ord.refunded_fen))
                    .filter(o::refunded_coins.eq(ord.refunded_coins)),
            )
            .set((
                o::refunded_fen.eq(o::refunded_fen + n.refund_fen),
                o::refunded_coins.eq(o::refunded_coins + coins),
            ))
            .execute(conn)
            .await?;
            if moved == 0 {
                return Err(TxError::Store(StoreError::Conflict));
            }
            let count: i64 = r::table
                .filter(r::order_no.eq(n.order_no))
                .count()
                .get_result(conn)
                .await?;
            if count >= MAX_REFUNDS_PER_ORDER as i64 {
                return Err(TxError::Refused(ReserveRefusal::TooManyRefunds));
            }
            let taken = diesel::update(u::table.find(ord.user_id).filter(u::balance.ge(coins)))
                .set((u::balance.eq(u::balance - coins), u::updated_at.eq(now)))
                .execute(conn)
                .await?;
            if taken == 0 {
                let balance: i64 = u::table.find(ord.user_id).select(u::balance).first(conn).await?;
                return Err(TxError::Refused(ReserveRefusal::Insufficient { balance, coins }));
            }
            diesel::insert_into(r::table)
                .values((
                    r::refund_no.eq(n.refund_no),
                    r::order_no.eq(n.order_no),
                    r::user_id.eq(ord.user_id),
                    r::refund_fen.eq(n.refund_fen),
                    r::coins.eq(coins),
                    r::status.eq(RefundStatus::Processing.as_str()),
                    r::reason.eq(n.reason),
                    r::request_id.eq(n.request_id),
                    r::created_at.eq(now),
                    r::updated_at.eq(now),
                    r::version.eq(0),
                ))
                .execute(conn)
                .await?;
            let balance_after: i64 = u::table.find(ord.user_id).select(u::balance).first(conn).await?;
            diesel::insert_into(l::table)
                .values((
                    l::user_id.eq(ord.user_id),
                    l::kind.eq(KIND_REFUND),
                    l::delta.eq(-coins),
                    l::balance_after.eq(balance_after),
                    l::transaction_id.eq(ord.transaction_id.as_deref()),
                    l::amount_fen.eq(n.refund_fen),
                    l::request_id.eq(n.refund_no),
                    l::reason.eq(n.reason),
                    l::created_at.eq(now),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
        .await),
        )
    };
    match run().await {
        Ok(inner) => inner,
        Err(e) => Err(TxError::Store(e)),
    }
}

/// Moves the refund from the state it was read in to `to`, with `effect`, in one transaction.
/// `Err(Conflict)` when the row moved on meanwhile: reload and decide again.
pub async fn apply(
    pool: &DbPool,
    row: &RefundRow,
    to: RefundStatus,
    effect: &RefundEffect,
) -> Result<RefundRow, StoreError> {
    let now = now_ms();
    with_write!(pool, conn => conn.transaction::<(), StoreError, _>(async move |conn| {
        let n = diesel::update(
            r::table
                .filter(r::refund_no.eq(&row.refund_no))
                .filter(r::version.eq(row.version)),
        )
        .set((
            r::status.eq(to.as_str()),
            r::version.eq(r::version + 1),
            r::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
        if n == 0 {
            return Err(StoreError::Conflict);
        }
        match effect {
            RefundEffect::Succeed { refund_id, success_at } => {
                diesel::update(r::table.filter(r::refund_no.eq(&row.refund_no)))
                    .set((
                        r::wechat_refund_id.eq(refund_id),
                        r::succeeded_at.eq(success_at.unwrap_or(now)),
                    ))
                    .execute(conn)
                    .await?;
            }
            RefundEffect::MarkAbnormal => {}
            RefundEffect::Reverse { err_code } => {
                diesel::update(r::table.filter(r::refund_no.eq(&row.refund_no)))
                    .set(r::wechat_err_code.eq(err_code.as_deref()))
                    .execute(conn)
                    .await?;
                diesel::update(u::table.find(row.user_id))
                    .set((u::balance.eq(u::balance + row.coins), u::updated_at.eq(now)))
                    .execute(conn)
                    .await?;
                diesel::update(o::table.filter(o::order_no.eq(&row.order_no)))
                    .set((
                        o::refunded_fen.eq(o::refunded_fen - row.refund_fen),
                        o::refunded_coins.eq(o::refunded_coins - row.coins),
                    ))
                    .execute(conn)
                    .await?;
                let balance_after: i64 =
                    u::table.find(row.user_id).select(u::balance).first(conn).await?;
                diesel::insert_into(l::table)
                    .values((
                        l::user_id.eq(row.user_id),
                        l::kind.eq(KIND_REFUND_REVERSAL),
                        l::delta.eq(row.coins),
                        l::balance_after.eq(balance_after),
                        l::amount_fen.eq(row.refund_fen),
                        l::request_id.eq(&row.refund_no),
                        l::reason.eq(err_code.as_deref().unwrap_or("refund not made")),
                        l::created_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    })
    .await)?;
    get(pool, &row.refund_no).await?.ok_or(StoreError::Conflict)
}

/// Records that the refund was looked at (and WeChat's refund_id when it gave one), so that
/// the poller asks about it again only after another interval.
pub async fn touch(
    pool: &DbPool,
    refund_no: &str,
    wechat_refund_id: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_ms();
    with_write!(pool, conn => {
        diesel::update(r::table.filter(r::refund_no.eq(refund_no)))
            .set(r::updated_at.eq(now))
            .execute(conn)
            .await?;
        if let Some(id) = wechat_refund_id {
            diesel::update(r::table.filter(r::refund_no.eq(refund_no)))
                .set(r::wechat_refund_id.eq(id))
                .execute(conn)
                .await?;
        }
    });
    Ok(())
}

/// Refunds still `processing` that nobody has looked at since `before`, oldest first.
pub async fn due(pool: &DbPool, before: i64, limit: i64) -> Result<Vec<RefundRow>, StoreError> {
    Ok(with_read!(pool, conn => r::table
        .filter(r::status.eq(RefundStatus::Processing.as_str()))
        .filter(r::updated_at.lt(before))
        .order(r::updated_at.asc())
        .limit(limit)
        .select(RefundRow::as_select())
        .load(conn)
        .await?))
}

/// (refunds processing, creation time of the oldest), for the metrics.
pub async fn processing_stats(pool: &DbPool) -> Result<(i64, Option<i64>), StoreError> {
    Ok(with_read!(pool, conn => {
        let q = || r::table.filter(r::status.eq(RefundStatus::Processing.as_str()));
        let count: i64 = q().count().get_result(conn).await?;
        let oldest: Option<i64> = q()
            .select(diesel::dsl::min(r::created_at))
            .first(conn)
            .await?;
        (count, oldest)
    }))
}
