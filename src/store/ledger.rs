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

/// Why a balance changed: a payment credited, coins spent by our compute service, an
/// operator's adjustment, coins taken back for a refund, or given back when that refund's
/// money never moved. Stored as its snake_case name (see `store::columns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    Recharge,
    Consume,
    Adjust,
    /// Taken when a refund is reserved (request_id = the refund_no, order_no NULL).
    Refund,
    /// Given back when a reserved refund fails or closes (request_id = the refund_no).
    RefundReversal,
}

impl LedgerKind {
    pub const ALL: [LedgerKind; 5] = [
        LedgerKind::Recharge,
        LedgerKind::Consume,
        LedgerKind::Adjust,
        LedgerKind::Refund,
        LedgerKind::RefundReversal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Recharge => "recharge",
            LedgerKind::Consume => "consume",
            LedgerKind::Adjust => "adjust",
            LedgerKind::Refund => "refund",
            LedgerKind::RefundReversal => "refund_reversal",
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

/// The row of the movement `request_id` of `kind`.
#[diesel::dsl::auto_type]
fn requested<'a>(kind: LedgerKind, request_id: &'a str) -> _ {
    l::table
        .filter(l::kind.eq(kind))
        .filter(l::request_id.eq(request_id))
}

pub async fn by_request(
    pool: &DbPool,
    kind: LedgerKind,
    request_id: &str,
) -> Result<Option<LedgerRow>, StoreError> {
    Ok(with_read!(pool, conn => requested(kind, request_id)
        .select(LedgerRow::as_select())
        .get_result(conn)
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
    let balance = diesel::RunQueryDsl::get_result(balance_of(e.user_id), c).optional()?;
    let posted = Posted::from(moved, balance);
    if let Posted::Applied(after) = posted {
        super::execute_blocking(insert_row(e, after), c)?;
    }
    Ok(posted)
}

/// Posts `e` inside the caller's transaction, with diesel-async (MySQL).
pub async fn post(c: &mut AsyncMysqlConnection, e: &Entry) -> QueryResult<Posted> {
    let moved = move_balance(e).execute(c).await? > 0;
    let balance = balance_of(e.user_id).get_result(c).await.optional()?;
    let posted = Posted::from(moved, balance);
    if let Posted::Applied(after) = posted {
        insert_row(e, after).execute(c).await?;
    }
    Ok(posted)
}

/// The balances of `user_ids`, locked until the caller's transaction ends (MySQL, for a batch
/// of credits written together by [`post_many`]).
pub async fn lock_balances(
    c: &mut AsyncMysqlConnection,
    user_ids: &[i64],
) -> QueryResult<std::collections::HashMap<i64, Coins>> {
    let rows: Vec<(i64, Coins)> = u::table
        .filter(u::id.eq_any(user_ids))
        .select((u::id, u::balance))
        .for_update()
        .load(c)
        .await?;
    Ok(rows.into_iter().collect())
}

/// A ledger row as the multi-row insert of [`post_many`] takes it.
#[derive(Insertable)]
#[diesel(table_name = l)]
struct NewRow<'a> {
    user_id: i64,
    kind: LedgerKind,
    delta: Coins,
    balance_after: Coins,
    order_no: Option<&'a str>,
    transaction_id: Option<&'a str>,
    amount_fen: Option<Fen>,
    request_id: Option<&'a str>,
    reason: &'a str,
    created_at: i64,
}

/// Posts several entries inside the caller's transaction on MySQL, each with the balance after
/// it (worked out by the caller on balances it locked with [`lock_balances`]): one `UPDATE` of
/// every user's balance and one multi-row `INSERT` of the rows, whatever their number. Group
/// commit's batches use it to cut their round trips; a lone posting uses [`post`].
pub async fn post_many(
    c: &mut AsyncMysqlConnection,
    posted: &[(&Entry, Coins)],
) -> QueryResult<()> {
    use diesel::sql_types::BigInt;
    if posted.is_empty() {
        return Ok(());
    }
    // Per user, in first-seen order: the sum of the deltas and the time of the last entry.
    let mut users: Vec<(i64, i64, i64)> = Vec::new();
    for (e, _) in posted {
        match users.iter_mut().find(|(id, _, _)| *id == e.user_id) {
            Some(u) => {
                u.1 += e.delta.0;
                u.2 = u.2.max(e.created_at);
            }
            None => users.push((e.user_id, e.delta.0, e.created_at)),
        }
    }
    let whens = "WHEN ? THEN ? ".repeat(users.len());
    let ids = vec!["?"; users.len()].join(",");
    let sql = format!(
        "UPDATE users SET balance = balance + CASE id {whens}END, \
         updated_at = CASE id {whens}END WHERE id IN ({ids})"
    );
    let mut q = diesel::sql_query(sql).into_boxed::<diesel::mysql::Mysql>();
    for &(id, delta, _) in &users {
        q = q.bind::<BigInt, _>(id).bind::<BigInt, _>(delta);
    }
    for &(id, _, at) in &users {
        q = q.bind::<BigInt, _>(id).bind::<BigInt, _>(at);
    }
    for &(id, _, _) in &users {
        q = q.bind::<BigInt, _>(id);
    }
    let changed = q.execute(c).await?;
    if changed != users.len() {
        // Every user was locked and found by the caller: anything else is a bug, and the
        // caller's transaction must not commit.
        return Err(diesel::result::Error::NotFound);
    }
    let rows: Vec<NewRow<'_>> = posted
        .iter()
        .map(|(e, after)| NewRow {
            user_id: e.user_id,
            kind: e.kind,
            delta: e.delta,
            balance_after: *after,
            order_no: e.order_no.as_deref(),
            transaction_id: e.transaction_id.as_deref(),
            amount_fen: e.amount_fen,
            request_id: e.request_id.as_deref(),
            reason: &e.reason,
            created_at: e.created_at,
        })
        .collect();
    diesel::insert_into(l::table)
        .values(rows)
        .execute(c)
        .await?;
    Ok(())
}

/// Posts `e` in a transaction of its own: on SQLite in the writer's turn, on MySQL on a pooled
/// connection.
pub async fn post_alone(pool: &DbPool, e: Entry) -> Result<Posted, StoreError> {
    match pool {
        DbPool::Sqlite { writer, .. } => Ok(writer
            .run(move |c| c.transaction(|c| post_blocking(c, &e)))
            .await?),
        DbPool::Mysql(p) => {
            p.write(Box::new(move |c| {
                let e = e.clone();
                Box::pin(async move { c.transaction(async |c| post(c, &e).await).await })
            }))
            .await
        }
    }
}

pub async fn apply_movement(pool: &DbPool, m: &Movement<'_>) -> Result<MoveOutcome, StoreError> {
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
    if let DbPool::Sqlite { writer, .. } = pool {
        // The look-up, the posting and the read of its row in one turn of the writer (no
        // hand-over to a read connection before or after): the writer is the only one that
        // writes, so nothing can come between the look-up and the posting.
        return writer.run(move |c| movement_blocking(c, &entry)).await;
    }
    if let Some(first) = by_request(pool, m.kind, m.request_id).await? {
        return Ok(replay(first, m.user_id, m.delta));
    }
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
        replay(row, m.user_id, m.delta)
    })
}

/// [`apply_movement`] on SQLite's writer thread, inside the transaction of its batch.
fn movement_blocking(c: &mut SqliteConnection, e: &Entry) -> QueryResult<MoveOutcome> {
    let request_id = e.request_id.as_deref().unwrap_or_default();
    let first = |c: &mut SqliteConnection| {
        diesel::RunQueryDsl::get_result(
            requested(e.kind, request_id).select(LedgerRow::as_select()),
            c,
        )
        .optional()
    };
    if let Some(first) = first(c)? {
        return Ok(replay(first, e.user_id, e.delta));
    }
    Ok(match post_blocking(c, e)? {
        Posted::Applied(_) => {
            MoveOutcome::Applied(first(c)?.ok_or(diesel::result::Error::NotFound)?)
        }
        Posted::Insufficient(balance) => MoveOutcome::Insufficient { balance },
        Posted::NoUser => MoveOutcome::UnknownUser,
    })
}

fn replay(first: LedgerRow, user_id: i64, delta: Coins) -> MoveOutcome {
    if first.user_id == user_id && first.delta == delta {
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
