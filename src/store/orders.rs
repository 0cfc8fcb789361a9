//! Recharge orders. Every status change is a compare-and-set on `version`, committed in the
//! same transaction as its effects, so several actors or instances can never both win.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::{compute_logs as l, recharge_orders as o, users as u};
use super::{DbPool, StoreError, now_ms};
use crate::order::state::{Decision, Effect, Move, OrderStatus};
use crate::{with_read, with_write};

#[derive(Queryable, Selectable, Serialize, Clone, Debug, PartialEq, Eq)]
#[diesel(table_name = o, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct OrderRow {
    pub id: i64,
    pub order_no: String,
    pub user_id: i64,
    pub package_id: i64,
    pub amount_fen: i64,
    pub coins: i64,
    pub bonus_coins: i64,
    pub status: String,
    pub version: i64,
    pub prepay_id: Option<String>,
    pub transaction_id: Option<String>,
    pub err_code: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub paid_at: Option<i64>,
    pub updated_at: i64,
}

impl OrderRow {
    pub fn status(&self) -> OrderStatus {
        // Only this module writes the column, always from OrderStatus::as_str.
        self.status.parse().unwrap_or(OrderStatus::Failed)
    }
    pub fn credit(&self) -> i64 {
        self.coins + self.bonus_coins
    }
}

pub struct NewOrder<'a> {
    pub order_no: &'a str,
    pub user_id: i64,
    pub package_id: i64,
    pub amount_fen: i64,
    pub coins: i64,
    pub bonus_coins: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

pub async fn insert(pool: &DbPool, n: &NewOrder<'_>) -> Result<(), StoreError> {
    with_write!(pool, conn => diesel::insert_into(o::table)
        .values((
            o::order_no.eq(n.order_no),
            o::user_id.eq(n.user_id),
            o::package_id.eq(n.package_id),
            o::amount_fen.eq(n.amount_fen),
            o::coins.eq(n.coins),
            o::bonus_coins.eq(n.bonus_coins),
            o::status.eq(OrderStatus::Created.as_str()),
            o::version.eq(0),
            o::created_at.eq(n.created_at),
            o::expires_at.eq(n.expires_at),
            o::updated_at.eq(n.created_at),
        ))
        .execute(conn)
        .await?);
    Ok(())
}

pub async fn get(pool: &DbPool, order_no: &str) -> Result<Option<OrderRow>, StoreError> {
    Ok(with_read!(pool, conn => o::table
        .filter(o::order_no.eq(order_no))
        .select(OrderRow::as_select())
        .first(conn)
        .await
        .optional()?))
}

pub async fn get_by_transaction(
    pool: &DbPool,
    transaction_id: &str,
) -> Result<Option<OrderRow>, StoreError> {
    Ok(with_read!(pool, conn => o::table
        .filter(o::transaction_id.eq(transaction_id))
        .select(OrderRow::as_select())
        .first(conn)
        .await
        .optional()?))
}

/// Filters for listing orders; every field is optional.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    pub user_id: Option<i64>,
    pub status: Option<OrderStatus>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
}

/// Newest first, one page, and the total that matches.
pub async fn list(
    pool: &DbPool,
    f: &OrderFilter,
    offset: i64,
    limit: i64,
) -> Result<(Vec<OrderRow>, i64), StoreError> {
    // A macro, not a closure: the boxed query's type differs per backend.
    macro_rules! query {
        () => {{
            let mut q = o::table.into_boxed();
            if let Some(uid) = f.user_id {
                q = q.filter(o::user_id.eq(uid));
            }
            if let Some(s) = f.status {
                q = q.filter(o::status.eq(s.as_str()));
            }
            if let Some(t) = f.created_from {
                q = q.filter(o::created_at.ge(t));
            }
            if let Some(t) = f.created_to {
                q = q.filter(o::created_at.lt(t));
            }
            q
        }};
    }
    Ok(with_read!(pool, conn => {
        let rows = query!()
            .order(o::id.desc())
            .offset(offset)
            .limit(limit)
            .select(OrderRow::as_select())
            .load(conn)
            .await?;
        let total: i64 = query!().count().get_result(conn).await?;
        (rows, total)
    }))
}

/// Unpaid orders past their expiry, oldest first.
pub async fn overdue(pool: &DbPool, now: i64, limit: i64) -> Result<Vec<String>, StoreError> {
    let open = [OrderStatus::Created.as_str(), OrderStatus::Pending.as_str()];
    Ok(with_read!(pool, conn => o::table
        .filter(o::status.eq_any(open))
        .filter(o::expires_at.le(now))
        .order(o::expires_at.asc())
        .limit(limit)
        .select(o::order_no)
        .load(conn)
        .await?))
}

/// (number of pending orders, created_at of the oldest).
pub async fn pending_stats(pool: &DbPool) -> Result<(i64, Option<i64>), StoreError> {
    Ok(with_read!(pool, conn => o::table
        .filter(o::status.eq(OrderStatus::Pending.as_str()))
        .select((diesel::dsl::count_star(), diesel::dsl::min(o::created_at)))
        .first(conn)
        .await?))
}

/// The statements of one transition, written once and instantiated twice: with `await` for
/// diesel-async (MySQL), without for sync diesel on SQLite's blocking writer thread. Evaluates
/// to false when the compare-and-set matched no row (then nothing was written).
macro_rules! transition_statements {
    ($c:ident, $row:expr, $next:expr, $credit_txn:expr, $now:expr $(, $aw:tt)?) => {{
        let (row, next, now): (&OrderRow, &OrderRow, i64) = ($row, $next, $now);
        let n = diesel::update(
            o::table
                .filter(o::order_no.eq(&row.order_no))
                .filter(o::version.eq(row.version)),
        )
        .set((
            o::status.eq(&next.status),
            o::version.eq(next.version),
            o::prepay_id.eq(&next.prepay_id),
            o::transaction_id.eq(&next.transaction_id),
            o::err_code.eq(&next.err_code),
            o::paid_at.eq(next.paid_at),
            o::updated_at.eq(now),
        ))
        .execute($c)
        $(.$aw)??;
        if n == 0 {
            false
        } else {
            if let Some(transaction_id) = $credit_txn {
                let credit = row.credit();
                diesel::update(u::table.find(row.user_id))
                    .set((u::balance.eq(u::balance + credit), u::updated_at.eq(now)))
                    .execute($c)
                    $(.$aw)??;
                let balance_after: i64 = u::table
                    .find(row.user_id)
                    .select(u::balance)
                    .first($c)
                    $(.$aw)??;
                diesel::insert_into(l::table)
                    .values((
                        l::user_id.eq(row.user_id),
                        l::kind.eq(crate::store::ledger::KIND_RECHARGE),
                        l::delta.eq(credit),
                        l::balance_after.eq(balance_after),
                        l::order_no.eq(&row.order_no),
                        l::transaction_id.eq(transaction_id),
                        l::amount_fen.eq(row.amount_fen),
                        l::reason.eq("recharge"),
                        l::created_at.eq(now),
                    ))
                    .execute($c)
                    $(.$aw)??;
            }
            true
        }
    }};
}

/// The row after a move, and the transaction id to credit (when the effect credits).
fn next_row(
    row: &OrderRow,
    to: OrderStatus,
    effect: &Effect,
    now: i64,
) -> (OrderRow, Option<String>) {
    let mut next = row.clone();
    next.status = to.as_str().to_string();
    next.version = row.version + 1;
    next.updated_at = now;
    let credit_txn = match effect {
        Effect::StorePrepay { prepay_id } => {
            next.prepay_id = Some(prepay_id.clone());
            None
        }
        Effect::StoreFailure { err_code } => {
            next.err_code = Some(err_code.clone());
            None
        }
        Effect::Expire => None,
        Effect::Credit { transaction_id } => {
            next.transaction_id = Some(transaction_id.clone());
            next.paid_at = Some(now);
            Some(transaction_id.clone())
        }
    };
    (next, credit_txn)
}

/// Compare-and-set from `row` (at its version) to `to`, with the effect in the same
/// transaction. `Err(Conflict)` when the row moved on meanwhile: reload and decide again.
pub async fn apply(
    pool: &DbPool,
    row: &OrderRow,
    to: OrderStatus,
    effect: &Effect,
) -> Result<OrderRow, StoreError> {
    let now = now_ms();
    let (next, credit_txn) = next_row(row, to, effect, now);
    let moved = match pool {
        DbPool::Sqlite { writer, .. } => {
            // The whole transaction in one job of the writer thread, in its turn.
            let (row, next) = (row.clone(), next.clone());
            writer
                .run(move |c| blocking::apply(c, &row, &next, credit_txn.as_deref(), now))
                .await??
        }
        DbPool::Mysql(p) => {
            // Retried on a Galera certification conflict or a lost node (see `retrying`).
            p.retrying(async || {
                let mut c = p.get().await?;
                mysql_apply(&mut c, row, &next, credit_txn.as_deref(), now).await
            })
            .await?
        }
    };
    if moved {
        Ok(next)
    } else {
        Err(StoreError::Conflict)
    }
}

async fn mysql_apply(
    c: &mut diesel_async::AsyncMysqlConnection,
    row: &OrderRow,
    next: &OrderRow,
    credit: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    c.transaction::<bool, StoreError, _>(async move |c| {
        Ok(transition_statements!(c, row, next, credit, now, await))
    })
    .await
}

/// What [`load_and_apply`] made of the decision taken on the row it loaded.
pub enum Decided {
    /// The decision moves nothing (it stays, refuses or asks WeChat first): nothing was
    /// written, and the decision comes back with the row it was taken on.
    Unwritten { row: OrderRow, decision: Decision },
    /// The move is committed: the status it was decided in, the move, and the row as it is now.
    Written {
        from: OrderStatus,
        step: Move,
        row: OrderRow,
    },
    /// The compare-and-set matched no row: the order moved on between the load and the write,
    /// so the decision no longer holds and must be taken again on a fresh row.
    Lost,
}

impl Decided {
    fn from_cas(moved: bool, before: &OrderRow, step: Move, next: OrderRow) -> Decided {
        if moved {
            Decided::Written {
                from: before.status(),
                step,
                row: next,
            }
        } else {
            Decided::Lost
        }
    }
}

/// Loads an order, decides on it with `decide`, and applies the decision when it is a move, as
/// one unit of work: on one connection checkout (MySQL), in one turn of the writer and one
/// blocking call (SQLite). An order met for the first time by a notification is thus read and
/// credited without a second checkout or thread hand-over. `Ok(None)`: no such order.
pub async fn load_and_apply<F>(
    pool: &DbPool,
    order_no: &str,
    decide: F,
) -> Result<Option<Decided>, StoreError>
where
    F: FnOnce(&OrderRow) -> Decision + Send + 'static,
{
    let now = now_ms();
    match pool {
        DbPool::Sqlite { writer, .. } => {
            let order_no = order_no.to_string();
            Ok(writer
                .run(move |c| blocking::load_and_apply(c, &order_no, decide, now))
                .await??)
        }
        DbPool::Mysql(p) => {
            // The load is the connection's check (see MysqlPool): on failure, once more on a
            // checked connection.
            let load = async |c: &mut super::MysqlConn<'_>| {
                o::table
                    .filter(o::order_no.eq(order_no))
                    .select(OrderRow::as_select())
                    .first(&mut **c)
                    .await
                    .optional()
            };
            let mut c = p.get_for_read().await?;
            let row = match load(&mut c).await {
                Ok(row) => row,
                Err(e) => {
                    tracing::info!(error = %e, "load failed on an unchecked connection; retrying on a checked one");
                    super::discard(c);
                    c = p.get().await?;
                    load(&mut c).await?
                }
            };
            let Some(row) = row else { return Ok(None) };
            Ok(Some(match decide(&row) {
                Decision::Move(step) => {
                    let (next, credit) = next_row(&row, step.to, &step.effect, now);
                    let moved = mysql_apply(&mut c, &row, &next, credit.as_deref(), now).await?;
                    Decided::from_cas(moved, &row, step, next)
                }
                decision => Decided::Unwritten { row, decision },
            }))
        }
    }
}

/// The SQLite instantiation, in a module of its own so that only sync diesel's `RunQueryDsl`
/// is in scope.
mod blocking {
    use diesel::prelude::*;
    use diesel::sqlite::SqliteConnection;

    use super::{Decided, Decision, OrderRow};
    use crate::store::schema::{compute_logs as l, recharge_orders as o, users as u};

    pub(super) fn load_and_apply(
        c: &mut SqliteConnection,
        order_no: &str,
        decide: impl FnOnce(&OrderRow) -> Decision,
        now: i64,
    ) -> QueryResult<Option<Decided>> {
        let Some(row) = o::table
            .filter(o::order_no.eq(order_no))
            .select(OrderRow::as_select())
            .first(c)
            .optional()?
        else {
            return Ok(None);
        };
        Ok(Some(match decide(&row) {
            Decision::Move(step) => {
                let (next, credit) = super::next_row(&row, step.to, &step.effect, now);
                let moved = apply(c, &row, &next, credit.as_deref(), now)?;
                Decided::from_cas(moved, &row, step, next)
            }
            decision => Decided::Unwritten { row, decision },
        }))
    }

    pub(super) fn apply(
        c: &mut SqliteConnection,
        row: &OrderRow,
        next: &OrderRow,
        credit_txn: Option<&str>,
        now: i64,
    ) -> QueryResult<bool> {
        c.transaction(|c| Ok(transition_statements!(c, row, next, credit_txn, now)))
    }
}
