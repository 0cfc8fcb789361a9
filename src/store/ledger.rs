//! The coin ledger (`compute_logs`): every change of a balance is a row, and every balance
//! equals the sum of its rows. Deductions and adjustments are idempotent by request_id.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::{compute_logs as l, users as u};
use super::{DbPool, Statement, StoreError, now_ms};
use crate::money::{Coins, Fen};
use crate::with_read;

/// Why a balance changed: a payment credited, coins spent by our compute service, or an
/// operator's adjustment. Stored as its lowercase name (see `store::columns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    Recharge,
    Consume,
    Adjust,
}

impl LedgerKind {
    pub const ALL: [LedgerKind; 3] = [
        LedgerKind::Recharge,
        LedgerKind::Consume,
        LedgerKind::Adjust,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Recharge => "recharge",
            LedgerKind::Consume => "consume",
            LedgerKind::Adjust => "adjust",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown ledger kind {0:?}")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for LedgerKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LedgerKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

#[derive(Queryable, Selectable, Serialize, Clone, Debug, PartialEq, Eq)]
#[diesel(table_name = l, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct LedgerRow {
    pub id: i64,
    pub user_id: i64,
    pub kind: LedgerKind,
    pub delta: Coins,
    pub balance_after: Coins,
    pub order_no: Option<String>,
    pub transaction_id: Option<String>,
    pub amount_fen: Option<Fen>,
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
    kind: LedgerKind,
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
    pub kind: LedgerKind,
    pub user_id: i64,
    pub delta: Coins,
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
        balance: Coins,
    },
    UnknownUser,
}

/// One ledger row to write, and the balance change it records. This module is the only writer
/// of `compute_logs`: a payment's credit (posted by `store::orders` inside the order's
/// transition) and a movement both come through [`post_blocking`] or [`post`].
#[derive(Clone, Debug)]
pub struct Entry {
    pub user_id: i64,
    pub kind: LedgerKind,
    pub delta: Coins,
    pub order_no: Option<String>,
    pub transaction_id: Option<String>,
    pub amount_fen: Option<Fen>,
    pub request_id: Option<String>,
    pub reason: String,
    pub created_at: i64,
}

/// What posting an [`Entry`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// The balance moved and the row is written; the balance after it.
    Applied(Coins),
    /// Nothing written: the balance would go below zero.
    Insufficient(Coins),
    /// Nothing written: no such user.
    NoUser,
}

impl Posted {
    /// What the balance change (`moved`) and the balance read after it (`None`: no such user)
    /// come to.
    fn from(moved: bool, balance: Option<Coins>) -> Posted {
        match (moved, balance) {
            (true, Some(after)) => Posted::Applied(after),
            (false, Some(balance)) => Posted::Insufficient(balance),
            (_, None) => Posted::NoUser,
        }
    }

    /// The balance after a posting that must apply (a payment's credit): anything else is an
    /// error, which rolls the caller's transaction back.
    pub fn applied(self) -> QueryResult<Coins> {
        match self {
            Posted::Applied(balance) => Ok(balance),
            Posted::Insufficient(_) | Posted::NoUser => Err(diesel::result::Error::NotFound),
        }
    }
}

/// The balance change, guarded so that the balance never goes below zero under any
/// concurrency; the write comes first, so that on SQLite the transaction takes the write lock
/// at once.
fn move_balance(e: &Entry) -> impl Statement + '_ {
    diesel::update(u::table.find(e.user_id).filter(u::balance.ge(-e.delta))).set((
        u::balance.eq(u::balance + e.delta),
        u::updated_at.eq(e.created_at),
    ))
}

#[diesel::dsl::auto_type]
fn balance_of(user_id: i64) -> _ {
    u::table.find(user_id).select(u::balance)
}

fn insert_row(e: &Entry, balance_after: Coins) -> impl Statement + '_ {
    diesel::insert_into(l::table).values((
        l::user_id.eq(e.user_id),
        l::kind.eq(e.kind),
        l::delta.eq(e.delta),
        l::balance_after.eq(balance_after),
        l::order_no.eq(e.order_no.as_deref()),
        l::transaction_id.eq(e.transaction_id.as_deref()),
        l::amount_fen.eq(e.amount_fen),
        l::request_id.eq(e.request_id.as_deref()),
        l::reason.eq(&e.reason),
        l::created_at.eq(e.created_at),
    ))
}

/// Posts `e` inside the caller's transaction, with sync diesel (SQLite's writer thread).
pub fn post_blocking(c: &mut SqliteConnection, e: &Entry) -> QueryResult<Posted> {
    let moved = super::execute_blocking(move_balance(e), c)? > 0;
    let balance = diesel::RunQueryDsl::first(balance_of(e.user_id), c).optional()?;
    let posted = Posted::from(moved, balance);
    if let Posted::Applied(after) = posted {
        super::execute_blocking(insert_row(e, after), c)?;
    }
    Ok(posted)
}

/// Posts `e` inside the caller's transaction, with diesel-async (MySQL).
pub async fn post(c: &mut AsyncMysqlConnection, e: &Entry) -> QueryResult<Posted> {
    let moved = move_balance(e).execute(c).await? > 0;
    let balance = balance_of(e.user_id).first(c).await.optional()?;
    let posted = Posted::from(moved, balance);
    if let Posted::Applied(after) = posted {
        insert_row(e, after).execute(c).await?;
    }
    Ok(posted)
}

/// Posts `e` in a transaction of its own: on SQLite in the writer's turn, on MySQL on a pooled
/// connection.
pub async fn post_alone(pool: &DbPool, e: Entry) -> Result<Posted, StoreError> {
    match pool {
        DbPool::Sqlite { writer, .. } => Ok(writer
            .run(move |c| c.transaction(|c| post_blocking(c, &e)))
            .await??),
        // Retried on a Galera certification conflict or a lost node (see `retrying`).
        DbPool::Mysql(p) => {
            p.retrying(async || {
                let mut c = p.get().await?;
                Ok(c.transaction(async |c| post(c, &e).await).await?)
            })
            .await
        }
    }
}

pub async fn apply_movement(pool: &DbPool, m: &Movement<'_>) -> Result<MoveOutcome, StoreError> {
    if let Some(first) = by_request(pool, m.kind, m.request_id).await? {
        return Ok(replay(first, m));
    }
    let entry = Entry {
        user_id: m.user_id,
        kind: m.kind,
        delta: m.delta,
        order_no: None,
        transaction_id: None,
        amount_fen: None,
        request_id: Some(m.request_id.to_string()),
        reason: m.reason.to_string(),
        created_at: now_ms(),
    };
    let applied = match post_alone(pool, entry).await {
        Ok(Posted::Applied(_)) => true,
        Ok(Posted::Insufficient(balance)) => return Ok(MoveOutcome::Insufficient { balance }),
        Ok(Posted::NoUser) => return Ok(MoveOutcome::UnknownUser),
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
            .filter(l::kind.eq(LedgerKind::Recharge))
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
