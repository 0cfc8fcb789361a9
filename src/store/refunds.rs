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
use diesel::sqlite::SqliteConnection;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
use serde::Serialize;

use super::ledger::{self, Entry, LedgerKind, Posted};
use super::schema::{recharge_orders as o, refunds as r};
use super::{DbPool, Statement, StoreError, now_ms};
use crate::money::{Coins, Fen};
use crate::order::state::OrderStatus;
use crate::refund::state::{
    RefundAmountError, RefundEffect, RefundStatus, Refunded, coins_to_take,
};
use crate::wechat::refund::MAX_REFUNDS_PER_ORDER;
use crate::with_read;

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
    pub refund_fen: Fen,
    pub coins: Coins,
    pub status: RefundStatus,
    pub reason: String,
    pub request_id: String,
    pub wechat_refund_id: Option<String>,
    pub wechat_err_code: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub succeeded_at: Option<i64>,
    pub version: i64,
}

/// What a refund needs to know of its order.
#[derive(Queryable, Selectable, Clone, Debug)]
#[diesel(table_name = o, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct RefundableOrder {
    pub order_no: String,
    pub user_id: i64,
    pub amount_fen: Fen,
    pub coins: Coins,
    pub bonus_coins: Coins,
    pub status: OrderStatus,
    pub transaction_id: Option<String>,
    pub paid_at: Option<i64>,
    pub refunded_fen: Fen,
    pub refunded_coins: Coins,
}

impl RefundableOrder {
    /// What the refunds still holding money have taken of the order so far.
    pub fn refunded(&self) -> Refunded {
        Refunded {
            fen: self.refunded_fen.0,
            coins: self.refunded_coins.0,
        }
    }
}

pub async fn order(pool: &DbPool, order_no: &str) -> Result<Option<RefundableOrder>, StoreError> {
    Ok(with_read!(pool, conn => o::table
        .filter(o::order_no.eq(order_no))
        .select(RefundableOrder::as_select())
        .get_result(conn)
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
    NotPaid(OrderStatus),
    #[error(transparent)]
    Amount(#[from] RefundAmountError),
    #[error("the order already has {MAX_REFUNDS_PER_ORDER} refunds")]
    TooManyRefunds,
    #[error("the order was paid more than a year ago")]
    Overdue,
    #[error("balance {balance} is less than the {coins} coins to take back")]
    Insufficient { balance: Coins, coins: Coins },
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
    /// The order's refunded amounts moved since they were read: decide again.
    Moved,
    Query(diesel::result::Error),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Query(e)
    }
}

/// The refund numbered `refund_no`.
#[diesel::dsl::auto_type]
fn numbered<'a>(refund_no: &'a str) -> _ {
    r::table.filter(r::refund_no.eq(refund_no))
}

pub async fn get(pool: &DbPool, refund_no: &str) -> Result<Option<RefundRow>, StoreError> {
    Ok(with_read!(pool, conn => numbered(refund_no)
        .select(RefundRow::as_select())
        .get_result(conn)
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
        .get_result(conn)
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
        let now = now_ms();
        let plan = match Reservation::plan(n, &ord, now) {
            Ok(p) => p,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let written = match pool {
            DbPool::Sqlite { writer, .. } => {
                // The refusal travels inside the job's result: the job itself succeeds, and
                // the nested transaction (a savepoint in the writer's batch) has already
                // rolled back what the refused reservation wrote.
                writer
                    .run(move |c| Ok(c.transaction(|c| plan.write_blocking(c))))
                    .await?
            }
            DbPool::Mysql(p) => {
                let mut c = p.get().await?;
                c.transaction(async |c| plan.write(c).await).await
            }
        };
        match written {
            Ok(()) => {}
            Err(TxError::Refused(refusal)) => return Ok(Err(refusal)),
            // Another refund of the order moved its amounts first: decide again.
            Err(TxError::Moved) => continue,
            Err(TxError::Query(e)) => {
                let e = StoreError::Query(e);
                // A concurrent twin with the same request_id won: its row answers.
                if e.is_unique_violation() {
                    continue;
                }
                return Err(e);
            }
        }
        let row = get(pool, n.refund_no).await?.ok_or(StoreError::Conflict)?;
        return Ok(Ok(Reserved::Created(row)));
    }
    Err(StoreError::Conflict)
}

/// A reservation decided on the order as read: its statements are written once and run by
/// [`Self::write_blocking`] (SQLite's writer thread) or [`Self::write`] (MySQL), each inside
/// the caller's transaction.
struct Reservation {
    refund_no: String,
    order_no: String,
    user_id: i64,
    refund_fen: Fen,
    coins: Coins,
    reason: String,
    request_id: String,
    before: Refunded,
    take: Entry,
    now: i64,
}

impl Reservation {
    fn plan(n: &NewRefund<'_>, ord: &RefundableOrder, now: i64) -> Result<Self, ReserveRefusal> {
        if ord.status != OrderStatus::Paid {
            return Err(ReserveRefusal::NotPaid(ord.status));
        }
        if ord.paid_at.is_some_and(|t| now - t > REFUNDABLE_FOR_MS) {
            return Err(ReserveRefusal::Overdue);
        }
        let before = ord.refunded();
        let coins = Coins(coins_to_take(
            ord.amount_fen.0,
            (ord.coins + ord.bonus_coins).0,
            before,
            n.refund_fen,
        )?);
        Ok(Reservation {
            refund_no: n.refund_no.to_string(),
            order_no: n.order_no.to_string(),
            user_id: ord.user_id,
            refund_fen: Fen(n.refund_fen),
            coins,
            reason: n.reason.to_string(),
            request_id: n.request_id.to_string(),
            before,
            take: Entry {
                user_id: ord.user_id,
                kind: LedgerKind::Refund,
                delta: -coins,
                order_no: None,
                transaction_id: ord.transaction_id.clone(),
                amount_fen: Some(Fen(n.refund_fen)),
                request_id: Some(n.refund_no.to_string()),
                reason: n.reason.to_string(),
                created_at: now,
            },
            now,
        })
    }

    /// The order's refunded amounts, if they are still those the plan was decided on. Written
    /// first: the row lock orders concurrent refunds of one order.
    fn add_to_order(&self) -> impl Statement + '_ {
        diesel::update(
            o::table
                .filter(o::order_no.eq(&self.order_no))
                .filter(o::status.eq(OrderStatus::Paid))
                .filter(o::refunded_fen.eq(self.before.fen))
                .filter(o::refunded_coins.eq(self.before.coins)),
        )
        .set((
            o::refunded_fen.eq(o::refunded_fen + self.refund_fen.0),
            o::refunded_coins.eq(o::refunded_coins + self.coins.0),
        ))
    }

    #[diesel::dsl::auto_type(no_type_alias)]
    fn count_of_order<'a>(&'a self) -> _ {
        let order_no: &'a str = &self.order_no;
        r::table.filter(r::order_no.eq(order_no)).count()
    }

    fn insert_refund(&self) -> impl Statement + '_ {
        diesel::insert_into(r::table).values((
            r::refund_no.eq(&self.refund_no),
            r::order_no.eq(&self.order_no),
            r::user_id.eq(self.user_id),
            r::refund_fen.eq(self.refund_fen),
            r::coins.eq(self.coins),
            r::status.eq(RefundStatus::Processing),
            r::reason.eq(&self.reason),
            r::request_id.eq(&self.request_id),
            r::created_at.eq(self.now),
            r::updated_at.eq(self.now),
            r::version.eq(0),
        ))
    }

    /// Refused when the order already has as many refunds as WeChat allows.
    fn check_count(count: i64) -> Result<(), TxError> {
        if count >= MAX_REFUNDS_PER_ORDER as i64 {
            return Err(TxError::Refused(ReserveRefusal::TooManyRefunds));
        }
        Ok(())
    }

    /// Refused when the balance is below the coins to take back.
    fn check_posted(&self, posted: Posted) -> Result<(), TxError> {
        match posted {
            Posted::Applied(_) => Ok(()),
            Posted::Insufficient(balance) => Err(TxError::Refused(ReserveRefusal::Insufficient {
                balance,
                coins: self.coins,
            })),
            Posted::NoUser => Err(TxError::Query(diesel::result::Error::NotFound)),
        }
    }

    fn write_blocking(&self, c: &mut SqliteConnection) -> Result<(), TxError> {
        if super::execute_blocking(self.add_to_order(), c)? == 0 {
            return Err(TxError::Moved);
        }
        Self::check_count(diesel::RunQueryDsl::get_result(self.count_of_order(), c)?)?;
        self.check_posted(ledger::post_blocking(c, &self.take)?)?;
        super::execute_blocking(self.insert_refund(), c)?;
        Ok(())
    }

    async fn write(&self, c: &mut AsyncMysqlConnection) -> Result<(), TxError> {
        if self.add_to_order().execute(c).await? == 0 {
            return Err(TxError::Moved);
        }
        Self::check_count(self.count_of_order().get_result(c).await?)?;
        self.check_posted(ledger::post(c, &self.take).await?)?;
        self.insert_refund().execute(c).await?;
        Ok(())
    }
}

/// One move of a refund as it is written: the compare-and-set from the version it was decided
/// on to the row after it and, when the coins come back, the ledger's `refund_reversal` and the
/// order's refunded amounts, in one transaction.
struct RefundTransition {
    version: i64,
    next: RefundRow,
    reversal: Option<Entry>,
}

impl RefundTransition {
    fn new(row: &RefundRow, to: RefundStatus, effect: &RefundEffect, now: i64) -> Self {
        let mut next = row.clone();
        next.status = to;
        next.version = row.version + 1;
        next.updated_at = now;
        let mut reversal = None;
        match effect {
            RefundEffect::Succeed {
                refund_id,
                success_at,
            } => {
                next.wechat_refund_id = Some(refund_id.clone());
                next.succeeded_at = Some(success_at.unwrap_or(now));
            }
            RefundEffect::MarkAbnormal => {}
            RefundEffect::Reverse { err_code } => {
                next.wechat_err_code = err_code.clone();
                reversal = Some(Entry {
                    user_id: row.user_id,
                    kind: LedgerKind::RefundReversal,
                    delta: row.coins,
                    order_no: None,
                    transaction_id: None,
                    amount_fen: Some(row.refund_fen),
                    request_id: Some(row.refund_no.clone()),
                    reason: err_code
                        .clone()
                        .unwrap_or_else(|| "refund not made".to_string()),
                    created_at: now,
                });
            }
        }
        RefundTransition {
            version: row.version,
            next,
            reversal,
        }
    }

    fn compare_and_set(&self) -> impl Statement + '_ {
        let n = &self.next;
        diesel::update(
            r::table
                .filter(r::refund_no.eq(&n.refund_no))
                .filter(r::version.eq(self.version)),
        )
        .set((
            r::status.eq(n.status),
            r::version.eq(n.version),
            r::updated_at.eq(n.updated_at),
            r::wechat_refund_id.eq(&n.wechat_refund_id),
            r::wechat_err_code.eq(&n.wechat_err_code),
            r::succeeded_at.eq(n.succeeded_at),
        ))
    }

    /// The order's refunded amounts without this refund's (its money will never move).
    fn release_order(&self) -> impl Statement + '_ {
        let n = &self.next;
        diesel::update(o::table.filter(o::order_no.eq(&n.order_no))).set((
            o::refunded_fen.eq(o::refunded_fen - n.refund_fen.0),
            o::refunded_coins.eq(o::refunded_coins - n.coins.0),
        ))
    }

    fn write_blocking(&self, c: &mut SqliteConnection) -> QueryResult<bool> {
        c.transaction(|c| {
            let moved = super::execute_blocking(self.compare_and_set(), c)? > 0;
            if let (true, Some(back)) = (moved, &self.reversal) {
                ledger::post_blocking(c, back)?.applied()?;
                super::execute_blocking(self.release_order(), c)?;
            }
            Ok(moved)
        })
    }

    async fn write(&self, c: &mut AsyncMysqlConnection) -> QueryResult<bool> {
        c.transaction(async |c| {
            let moved = self.compare_and_set().execute(c).await? > 0;
            if let (true, Some(back)) = (moved, &self.reversal) {
                ledger::post(c, back).await?.applied()?;
                self.release_order().execute(c).await?;
            }
            Ok(moved)
        })
        .await
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
    let t = RefundTransition::new(row, to, effect, now_ms());
    let (moved, t) = match pool {
        DbPool::Sqlite { writer, .. } => {
            writer
                .run(move |c| t.write_blocking(c).map(|moved| (moved, t)))
                .await?
        }
        DbPool::Mysql(p) => {
            let mut c = p.get().await?;
            (t.write(&mut c).await?, t)
        }
    };
    if moved {
        Ok(t.next)
    } else {
        Err(StoreError::Conflict)
    }
}

/// Records that the refund was looked at (and WeChat's refund_id when it gave one), so that
/// the poller asks about it again only after another interval.
pub async fn touch(
    pool: &DbPool,
    refund_no: &str,
    wechat_refund_id: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_ms();
    let refund_no = refund_no.to_string();
    match wechat_refund_id {
        Some(id) => {
            let stmt = diesel::update(r::table.filter(r::refund_no.eq(refund_no))).set((
                r::updated_at.eq(now),
                r::wechat_refund_id.eq(id.to_string()),
            ));
            super::execute(pool, stmt).await?
        }
        None => {
            let stmt = diesel::update(r::table.filter(r::refund_no.eq(refund_no)))
                .set(r::updated_at.eq(now));
            super::execute(pool, stmt).await?
        }
    };
    Ok(())
}

/// Refunds still `processing` that nobody has looked at since `before`, oldest first.
pub async fn due(pool: &DbPool, before: i64, limit: i64) -> Result<Vec<RefundRow>, StoreError> {
    Ok(with_read!(pool, conn => r::table
        .filter(r::status.eq(RefundStatus::Processing))
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
        let q = || r::table.filter(r::status.eq(RefundStatus::Processing));
        let count: i64 = q().count().get_result(conn).await?;
        let oldest: Option<i64> = q()
            .select(diesel::dsl::min(r::created_at))
            .get_result(conn)
            .await?;
        (count, oldest)
    }))
}
