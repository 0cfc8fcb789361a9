//! The coin ledger (`compute_logs`): every change of a balance is a row, and every balance
//! equals the sum of its rows. Deductions and adjustments are idempotent by request_id.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::{compute_logs as l, users as u};
use super::{DbPool, StoreError, now_ms};
use crate::{with_read, with_write};

pub const KIND_RECHARGE: &str = "recharge";
pub const KIND_CONSUME: &str = "consume";
pub const KIND_ADJUST: &str = "adjust";
/// Coins taken back when a refund is reserved (request_id = the refund_no, order_no NULL).
pub const KIND_REFUND: &str = "refund";
/// Coins given back when a reserved refund's money will never move (request_id = refund_no).
pub const KIND_REFUND_REVERSAL: &str = "refund_reversal";

#[derive(Queryable, Selectable, Serialize, Clone, Debug, PartialEq, Eq)]
#[diesel(table_name = l, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct LedgerRow {
    pub id: i64,
    pub user_id: i64,
    pub kind: String,
    pub delta: i64,
    pub balance_after: i64,
    pub order_no: Option<String>,
    pub transaction_id: Option<String>,
    pub amount_fen: Option<i64>,
    pub request_id: Option<String>,
    pub reason: Option<String>,
    pub created_at: i64,
}

/// A user's rows, newest first, one page, and the total.
pub async fn list_for_user(
    pool: &DbPool,
    user_id: i64,
    offset: i64,
    limit: i64,
) -> Result<(Vec<LedgerRow>, i64), StoreError> {
    Ok(with_read!(pool, conn => {
        let rows = l::table
            .filter(l::user_id.eq(user_id))
            .order(l::id.desc())
            .offset(offset)
            .limit(limit)
            .select(LedgerRow::as_select())
            .load(conn)
            .await?;
        let total: i64 = l::table
            .filter(l::user_id.eq(user_id))
            .count()
            .get_result(conn)
            .await?;
        (rows, total)
    }))
}

pub async fn by_request(
    pool: &DbPool,
    kind: &str,
    request_id: &str,
) -> Result<Option<LedgerRow>, StoreError> {
    Ok(with_read!(pool, conn => l::table
        .filter(l::kind.eq(kind))
        .filter(l::request_id.eq(request_id))
        .select(LedgerRow::as_select())
        .first(conn)
        .await
        .optional()?))
}

/// A balance change asked for by another service (consume) or an operator (adjust).
#[derive(Clone, Debug)]
pub struct Movement<'a> {
    pub kind: &'static str,
    pub user_id: i64,
    pub delta: i64,
    pub request_id: &'a str,
    pub reason: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    Applied(LedgerRow),
    /// The same request again: the first result, nothing changed.
    Replayed(LedgerRow),
    /// The request_id was used for another user or amount.
    RequestIdConflict(LedgerRow),
    Insufficient {
        balance: i64,
    },
    UnknownUser,
}

pub async fn apply_movement(pool: &DbPool, m: &Movement<'_>) -> Result<MoveOutcome, StoreError> {
    if let Some(first) = by_request(pool, m.kind, m.request_id).await? {
        return Ok(replay(first, m));
    }
    let now = now_ms();
    let result = with_write!(pool, conn => conn.transaction::<Option<MoveOutcome>, StoreError, _>(async move |conn| {
        // Write first: the guard keeps the balance at or above zero under any concurrency,
        // and on SQLite a write-first transaction waits for the lock instead of failing.
        let n = diesel::update(u::table.find(m.user_id).filter(u::balance.ge(-m.delta)))
            .set((u::balance.eq(u::balance + m.delta), u::updated_at.eq(now)))
            .execute(conn)
            .await?;
        if n == 0 {
            let balance: Option<i64> = u::table
                .find(m.user_id)
                .select(u::balance)
                .first(conn)
                .await
                .optional()?;
            return Ok(Some(match balance {
                Some(balance) => MoveOutcome::Insufficient { balance },
                None => MoveOutcome::UnknownUser,
            }));
        }
        let balance_after: i64 = u::table.find(m.user_id).select(u::balance).first(conn).await?;
        diesel::insert_into(l::table)
            .values((
                l::user_id.eq(m.user_id),
                l::kind.eq(m.kind),
                l::delta.eq(m.delta),
                l::balance_after.eq(balance_after),
                l::request_id.eq(m.request_id),
                l::reason.eq(m.reason),
                l::created_at.eq(now),
            ))
            .execute(conn)
            .await?;
        Ok(None)
    })
    .await);
    let applied = match result {
        Ok(Some(refused)) => return Ok(refused),
        Ok(None) => true,
        // A concurrent twin won the unique (kind, request_id): its row is the answer.
        Err(e) if e.is_unique_violation() => false,
        Err(e) => return Err(e),
    };
    let row = by_request(pool, m.kind, m.request_id)
        .await?
        .ok_or(StoreError::Conflict)?;
    Ok(if applied {
        MoveOutcome::Applied(row)
    } else {
        replay(row, m)
    })
}

fn replay(first: LedgerRow, m: &Movement<'_>) -> MoveOutcome {
    if first.user_id == m.user_id && first.delta == m.delta {
        MoveOutcome::Replayed(first)
    } else {
        MoveOutcome::RequestIdConflict(first)
    }
}

/// What must always hold; each string describes one violation. Used by tests and benchmarks.
pub async fn invariant_violations(pool: &DbPool) -> Result<Vec<String>, StoreError> {
    let (sums, balances, dup_credits) = with_read!(pool, conn => {
        let sums: Vec<(i64, Option<i64>)> = l::table
            .group_by(l::user_id)
            .select((l::user_id, diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::BigInt>>("CAST(SUM(delta) AS SIGNED)")))
            .load(conn)
            .await?;
        let balances: Vec<(i64, i64)> = u::table.select((u::id, u::balance)).load(conn).await?;
        let dups: Vec<(Option<String>, i64)> = l::table
            .filter(l::kind.eq(KIND_RECHARGE))
            .group_by(l::order_no)
            .having(diesel::dsl::count_star().gt(1))
            .select((l::order_no, diesel::dsl::count_star()))
            .load(conn)
            .await?;
        (sums, balances, dups)
    });
    let sums: std::collections::HashMap<i64, i64> =
        sums.into_iter().map(|(k, v)| (k, v.unwrap_or(0))).collect();
    let mut out = Vec::new();
    for (user, balance) in balances {
        let sum = sums.get(&user).copied().unwrap_or(0);
        if sum != balance {
            out.push(format!(
                "user {user}: balance {balance} != ledger sum {sum}"
            ));
        }
        if balance < 0 {
            out.push(format!("user {user}: negative balance {balance}"));
        }
    }
    for (order_no, n) in dup_credits {
        out.push(format!("order {order_no:?} credited {n} times"));
    }
    Ok(out)
}
