//! Recharge orders. Every status change is a compare-and-set on `version`, committed in the
//! same transaction as its effects, so several actors or instances can never both win.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
use serde::Serialize;

use super::ledger::{self, LedgerKind};
use super::schema::recharge_orders as o;
use super::{DbPool, MysqlPool, Statement, StoreError, now_ms};
use crate::money::{Coins, Fen};
use crate::order::state::{Decision, Effect, Move, OrderStatus};
use crate::with_read;

#[derive(Queryable, Selectable, Serialize, Clone, Debug, PartialEq, Eq)]
#[diesel(table_name = o, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct OrderRow {
    pub id: i64,
    pub order_no: String,
    pub user_id: i64,
    pub package_id: i64,
    pub amount_fen: Fen,
    pub coins: Coins,
    pub bonus_coins: Coins,
    pub status: OrderStatus,
    pub version: i64,
    pub prepay_id: Option<String>,
    pub transaction_id: Option<String>,
    pub err_code: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub paid_at: Option<i64>,
    pub updated_at: i64,
    /// What refunds still holding money took of the order (see `store::refunds`).
    pub refunded_fen: i64,
    pub refunded_coins: i64,
}

impl OrderRow {
    /// The coins a payment of this order credits: the package's coins and its bonus.
    pub fn credit(&self) -> Coins {
        self.coins + self.bonus_coins
    }
}

pub struct NewOrder<'a> {
    pub order_no: &'a str,
    pub user_id: i64,
    pub package_id: i64,
    pub amount_fen: Fen,
    pub coins: Coins,
    pub bonus_coins: Coins,
    pub created_at: i64,
    pub expires_at: i64,
}

pub async fn insert(pool: &DbPool, n: &NewOrder<'_>) -> Result<(), StoreError> {
    super::execute(pool, insert_statement(n)).await?;
    Ok(())
}

fn insert_statement(n: &NewOrder<'_>) -> impl Statement + 'static {
    diesel::insert_into(o::table).values((
        o::order_no.eq(n.order_no.to_string()),
        o::user_id.eq(n.user_id),
        o::package_id.eq(n.package_id),
        o::amount_fen.eq(n.amount_fen),
        o::coins.eq(n.coins),
        o::bonus_coins.eq(n.bonus_coins),
        o::status.eq(OrderStatus::Created),
        o::version.eq(0),
        o::created_at.eq(n.created_at),
        o::expires_at.eq(n.expires_at),
        o::updated_at.eq(n.created_at),
    ))
}

/// An order to create: who buys which package, under which number, and when it expires.
#[derive(Debug)]
pub struct OrderRequest {
    pub order_no: String,
    pub user_id: i64,
    pub package_id: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What [`create`] came to: the order as stored, with its buyer's openid (unifiedorder needs
/// it), or why nothing was written.
#[derive(Debug)]
pub enum Creation {
    Created { row: Box<OrderRow>, openid: String },
    Refused(Refusal),
}

/// Why [`create`] wrote nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownPackage,
    PackageInactive,
    UnknownUser,
}

/// Whether an order may be made of `package` for `user`, and if so the row to insert: the
/// package's price and coins are copied into it, so later package edits never change it.
fn admit<'a>(
    req: &'a OrderRequest,
    package: Option<super::packages::Package>,
    user: Option<super::users::User>,
) -> Result<(NewOrder<'a>, String), Refusal> {
    let package = package.ok_or(Refusal::UnknownPackage)?;
    if !package.active {
        return Err(Refusal::PackageInactive);
    }
    let user = user.ok_or(Refusal::UnknownUser)?;
    let new = NewOrder {
        order_no: &req.order_no,
        user_id: req.user_id,
        package_id: req.package_id,
        amount_fen: package.price_fen,
        coins: package.coins,
        bonus_coins: package.bonus_coins,
        created_at: req.created_at,
        expires_at: req.expires_at,
    };
    Ok((new, user.openid))
}

/// Creates an order (status created) of the request's package for its user, reading the
/// package and the user and writing the row in one go, and returns the row as stored, which
/// the order's actor then starts from instead of loading it again. A number already taken is
/// the unique violation it is (the caller draws another).
///
/// On SQLite the whole of it is one job of the writer, on the writer's own connection: the two
/// look-ups, the insert and the row read back cost no hand-over to a blocking thread each, and
/// the order is committed with whatever else the writer's batch holds.
pub async fn create(pool: &DbPool, req: OrderRequest) -> Result<Creation, StoreError> {
    use super::packages::Package;
    use super::schema::{recharge_packages as packages, users};
    use super::users::User;
    match pool {
        DbPool::Sqlite { writer, .. } => {
            writer
                .run(move |c| {
                    let package = diesel::RunQueryDsl::get_result(
                        packages::table
                            .find(req.package_id)
                            .select(Package::as_select()),
                        c,
                    )
                    .optional()?;
                    let user = diesel::RunQueryDsl::get_result(
                        users::table.find(req.user_id).select(User::as_select()),
                        c,
                    )
                    .optional()?;
                    let (new, openid) = match admit(&req, package, user) {
                        Ok(admitted) => admitted,
                        Err(refused) => return Ok(Creation::Refused(refused)),
                    };
                    super::execute_blocking(insert_statement(&new), c)?;
                    let row = diesel::RunQueryDsl::get_result(
                        numbered(&req.order_no).select(OrderRow::as_select()),
                        c,
                    )?;
                    Ok(Creation::Created {
                        row: Box::new(row),
                        openid,
                    })
                })
                .await
        }
        // One connection for the four statements, where each took one (and its check) of its
        // own. Not retried: a lost insert is the client's to retry, as any single write.
        DbPool::Mysql(p) => {
            let mut c = p.get().await?;
            let package = packages::table
                .find(req.package_id)
                .select(Package::as_select())
                .get_result(&mut *c)
                .await
                .optional()?;
            let user = users::table
                .find(req.user_id)
                .select(User::as_select())
                .get_result(&mut *c)
                .await
                .optional()?;
            let (new, openid) = match admit(&req, package, user) {
                Ok(admitted) => admitted,
                Err(refused) => return Ok(Creation::Refused(refused)),
            };
            insert_statement(&new).execute(&mut *c).await?;
            let row = numbered(&req.order_no)
                .select(OrderRow::as_select())
                .get_result(&mut *c)
                .await?;
            Ok(Creation::Created {
                row: Box::new(row),
                openid,
            })
        }
    }
}

/// The order numbered `order_no`.
#[diesel::dsl::auto_type]
fn numbered<'a>(order_no: &'a str) -> _ {
    o::table.filter(o::order_no.eq(order_no))
}

pub async fn get(pool: &DbPool, order_no: &str) -> Result<Option<OrderRow>, StoreError> {
    Ok(
        with_read!(pool, conn => numbered(order_no).select(OrderRow::as_select()).get_result(conn).await.optional()?),
    )
}

pub async fn get_by_transaction(
    pool: &DbPool,
    transaction_id: &str,
) -> Result<Option<OrderRow>, StoreError> {
    Ok(with_read!(pool, conn => o::table
        .filter(o::transaction_id.eq(transaction_id))
        .select(OrderRow::as_select())
        .get_result(conn)
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
                q = q.filter(o::status.eq(s));
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
    let open = [OrderStatus::Created, OrderStatus::Pending];
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
        .filter(o::status.eq(OrderStatus::Pending))
        .select((diesel::dsl::count_star(), diesel::dsl::min(o::created_at)))
        .get_result(conn)
        .await?))
}

/// One move as it is written: the compare-and-set of the order from the version the move was
/// decided on to the row after it and, for a credit, the ledger's posting, in one transaction.
/// Its statements are written once; [`Self::write_blocking`] runs them with sync diesel on
/// SQLite's writer thread, [`Self::write`] with diesel-async on MySQL.
#[derive(Clone)]
pub(super) struct Transition {
    version: i64,
    next: OrderRow,
    credit: Option<ledger::Entry>,
}

impl Transition {
    fn new(row: &OrderRow, to: OrderStatus, effect: &Effect, now: i64) -> Transition {
        let mut next = row.clone();
        next.status = to;
        next.version = row.version + 1;
        next.updated_at = now;
        let mut credit = None;
        match effect {
            Effect::StorePrepay { prepay_id } => next.prepay_id = Some(prepay_id.clone()),
            Effect::StoreFailure { err_code } => next.err_code = Some(err_code.clone()),
            Effect::Expire => {}
            Effect::Credit {
                transaction_id,
                paid_at,
            } => {
                next.transaction_id = Some(transaction_id.clone());
                next.paid_at = Some(paid_at.unwrap_or(now));
                credit = Some(ledger::Entry {
                    user_id: row.user_id,
                    kind: LedgerKind::Recharge,
                    delta: row.credit(),
                    order_no: Some(row.order_no.clone()),
                    transaction_id: Some(transaction_id.clone()),
                    amount_fen: Some(row.amount_fen),
                    request_id: None,
                    reason: "recharge".to_string(),
                    created_at: now,
                });
            }
        }
        Transition {
            version: row.version,
            next,
            credit,
        }
    }

    /// The order as it is after the move, if it is still at the version the move was decided on.
    fn compare_and_set(&self) -> impl Statement + '_ {
        let n = &self.next;
        diesel::update(
            o::table
                .filter(o::order_no.eq(&n.order_no))
                .filter(o::version.eq(self.version)),
        )
        .set((
            o::status.eq(n.status),
            o::version.eq(n.version),
            o::prepay_id.eq(&n.prepay_id),
            o::transaction_id.eq(&n.transaction_id),
            o::err_code.eq(&n.err_code),
            o::paid_at.eq(n.paid_at),
            o::updated_at.eq(n.updated_at),
        ))
    }

    /// False when the compare-and-set matched no row: then nothing was written.
    fn write_blocking(&self, c: &mut SqliteConnection) -> QueryResult<bool> {
        c.transaction(|c| {
            let moved = super::execute_blocking(self.compare_and_set(), c)? > 0;
            if let (true, Some(credit)) = (moved, &self.credit) {
                ledger::post_blocking(c, credit)?.applied()?;
            }
            Ok(moved)
        })
    }

    /// As [`Self::write_blocking`], on MySQL.
    pub(super) async fn write(&self, c: &mut AsyncMysqlConnection) -> QueryResult<bool> {
        c.transaction(async |c| {
            let moved = self.compare_and_set().execute(c).await? > 0;
            if let (true, Some(credit)) = (moved, &self.credit) {
                ledger::post(c, credit).await?.applied()?;
            }
            Ok(moved)
        })
        .await
    }
}

/// A decision to take on an order's row as it is when the batch holding it runs (see
/// [`load_and_apply`]).
pub type Decide = std::sync::Arc<dyn Fn(&OrderRow) -> Decision + Send + Sync>;

/// One write of a batch that [`write_many`] writes together with the others.
pub(super) enum Item<'a> {
    /// A move decided on a row loaded before (its compare-and-set from that row's version).
    Move(&'a Transition),
    /// An order to load, decide on and, when the decision is a move, move.
    Decide(&'a str, &'a Decide),
}

/// What [`write_many`] made of an [`Item`].
// One per item of a batch, moved once to its job: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Written {
    /// An [`Item::Move`]: whether its compare-and-set matched.
    Moved(bool),
    /// An [`Item::Decide`]: as [`load_and_apply`] answers (`None`: no such order).
    Decided(Option<Decided>),
}

/// Writes several order transitions on MySQL inside the caller's transaction (a batch of group
/// commit), with a fixed number of statements whatever their number: the orders' rows are
/// locked and read in one, the credited users' balances in one, and then one `UPDATE` moves
/// every order that moves, one updates the balances and one inserts the ledger rows. Written one
/// by one, each transition takes six round trips and its load a seventh.
///
/// One result per item, in order: for a [`Item::Move`], whether its compare-and-set matched
/// (`false`: the order is at another version, or an earlier item of the same batch moved it;
/// nothing of it is written); for an [`Item::Decide`], the decision taken on the row as it is
/// now and what became of it ([`Decided::Lost`] when an earlier item of the batch moved the
/// order: it is decided again on the row as that left it, after the commit); an error when a
/// credit cannot apply (no such user; nothing of that item written). An error of the whole (a
/// unique or CHECK violation in one of the multi-row statements) is returned as such: the caller
/// rolls back to before this call and writes the items one by one, so that the one at fault
/// fails alone.
pub(super) async fn write_many(
    c: &mut AsyncMysqlConnection,
    items: &[Item<'_>],
) -> QueryResult<Vec<QueryResult<Written>>> {
    use std::collections::{HashMap, HashSet};
    // Locked in the order of their numbers, as every batch does, so that two batches that share
    // orders wait for each other instead of deadlocking.
    let mut numbers: Vec<&str> = items
        .iter()
        .map(|i| match i {
            Item::Move(t) => t.next.order_no.as_str(),
            Item::Decide(no, _) => no,
        })
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let rows: HashMap<String, OrderRow> = o::table
        .filter(o::order_no.eq_any(&numbers))
        .order(o::order_no.asc())
        .select(OrderRow::as_select())
        .for_update()
        .load::<OrderRow>(c)
        .await?
        .into_iter()
        .map(|r| (r.order_no.clone(), r))
        .collect();

    // Each item's plan, in order: what it answers if nothing goes wrong, and the transition it
    // writes (owned for a decision taken here).
    #[allow(clippy::large_enum_variant)]
    enum Step<'t> {
        Done(Written),
        Move(&'t Transition),
        Planned(Box<Planned>),
    }
    let mut claimed = HashSet::new();
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(items.len());
    for item in items {
        steps.push(match item {
            Item::Move(t) => {
                let no = t.next.order_no.as_str();
                let matches = rows.get(no).map(|r| r.version) == Some(t.version);
                if matches && claimed.insert(no.to_string()) {
                    Step::Move(t)
                } else {
                    Step::Done(Written::Moved(false))
                }
            }
            Item::Decide(no, decide) => match rows.get(*no) {
                None => Step::Done(Written::Decided(None)),
                Some(_) if claimed.contains(*no) => {
                    Step::Done(Written::Decided(Some(Decided::Lost)))
                }
                Some(row) => match Plan::new(row.clone(), decide(row)) {
                    Plan::Done(decided) => Step::Done(Written::Decided(Some(decided))),
                    Plan::Write(planned) => {
                        claimed.insert(no.to_string());
                        Step::Planned(Box::new(planned))
                    }
                },
            },
        });
    }
    fn transition<'s, 't: 's>(s: &'s Step<'t>) -> Option<&'s Transition> {
        match s {
            Step::Move(t) => Some(*t),
            Step::Planned(p) => Some(&p.t),
            Step::Done(_) => None,
        }
    }

    let mut user_ids: Vec<i64> = steps
        .iter()
        .filter_map(|s| transition(s)?.credit.as_ref().map(|e| e.user_id))
        .collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    let mut balances = if user_ids.is_empty() {
        HashMap::new()
    } else {
        ledger::lock_balances(c, &user_ids).await?
    };
    let mut refused = vec![false; steps.len()];
    let mut posted = Vec::new();
    for (k, s) in steps.iter().enumerate() {
        let Some(e) = transition(s).and_then(|t| t.credit.as_ref()) else {
            continue;
        };
        match balances.get_mut(&e.user_id) {
            Some(b) if b.0 + e.delta.0 >= 0 => {
                *b = *b + e.delta;
                posted.push((e, *b));
            }
            // As `Posted::applied` answers a credit that cannot apply.
            _ => refused[k] = true,
        }
    }

    let moving: Vec<&Transition> = steps
        .iter()
        .zip(&refused)
        .filter(|(_, r)| !**r)
        .filter_map(|(s, _)| transition(s))
        .collect();
    if !moving.is_empty() && move_many(c, &moving).await? != moving.len() {
        // Every row was locked above at the version it is moved from: anything else is a bug,
        // and the caller's transaction must not commit.
        return Err(diesel::result::Error::NotFound);
    }
    ledger::post_many(c, &posted).await?;
    Ok(steps
        .into_iter()
        .zip(refused)
        .map(|(s, refused)| match (s, refused) {
            (_, true) => Err(diesel::result::Error::NotFound),
            (Step::Done(w), _) => Ok(w),
            (Step::Move(_), _) => Ok(Written::Moved(true)),
            (Step::Planned(p), _) => Ok(Written::Decided(Some(p.written(true)))),
        })
        .collect())
}

/// The compare-and-set of [`Transition::compare_and_set`] for several orders in one `UPDATE`,
/// each column set by a `CASE` on the order's number. Returns how many rows it changed.
async fn move_many(c: &mut AsyncMysqlConnection, ts: &[&Transition]) -> QueryResult<usize> {
    use diesel::sql_types::{BigInt, Nullable, Text};
    const COLUMNS: [&str; 7] = [
        "status",
        "version",
        "prepay_id",
        "transaction_id",
        "err_code",
        "paid_at",
        "updated_at",
    ];
    let whens = "WHEN ? THEN ? ".repeat(ts.len());
    let sets: Vec<String> = COLUMNS
        .iter()
        .map(|col| format!("{col} = CASE order_no {whens}END"))
        .collect();
    // Still a compare-and-set on each row's version, though the rows are locked at it.
    let matching = vec!["(order_no = ? AND version = ?)"; ts.len()].join(" OR ");
    let sql = format!(
        "UPDATE recharge_orders SET {} WHERE {matching}",
        sets.join(", ")
    );
    let mut q = diesel::sql_query(sql).into_boxed::<diesel::mysql::Mysql>();
    // The binds in the order of the placeholders: column by column, order by order.
    macro_rules! column {
        ($ty:ty, $value:expr) => {
            for t in ts {
                let n = &t.next;
                q = q
                    .bind::<Text, _>(n.order_no.clone())
                    .bind::<$ty, _>($value(n));
            }
        };
    }
    column!(Text, |n: &OrderRow| n.status);
    column!(BigInt, |n: &OrderRow| n.version);
    column!(Nullable<Text>, |n: &OrderRow| n.prepay_id.clone());
    column!(Nullable<Text>, |n: &OrderRow| n.transaction_id.clone());
    column!(Nullable<Text>, |n: &OrderRow| n.err_code.clone());
    column!(Nullable<BigInt>, |n: &OrderRow| n.paid_at);
    column!(BigInt, |n: &OrderRow| n.updated_at);
    for t in ts {
        q = q
            .bind::<Text, _>(t.next.order_no.clone())
            .bind::<BigInt, _>(t.version);
    }
    q.execute(c).await
}

/// Compare-and-set from `row` (at its version) to `to`, with the effect in the same
/// transaction. `Err(Conflict)` when the row moved on meanwhile: reload and decide again.
pub async fn apply(
    pool: &DbPool,
    row: &OrderRow,
    to: OrderStatus,
    effect: &Effect,
) -> Result<OrderRow, StoreError> {
    let t = Transition::new(row, to, effect, now_ms());
    let (moved, t) = match pool {
        // The whole transaction in one job of the writer thread, in its turn.
        DbPool::Sqlite { writer, .. } => {
            writer
                .run(move |c| t.write_blocking(c).map(|moved| (moved, t)))
                .await?
        }
        DbPool::Mysql(p) => write_mysql(p, t).await?,
    };
    if moved {
        Ok(t.next)
    } else {
        Err(StoreError::Conflict)
    }
}

/// Writes `t` on MySQL as one unit (in a batch when group commit is on); whether its
/// compare-and-set matched, and `t` back.
async fn write_mysql(p: &MysqlPool, t: Transition) -> Result<(bool, Transition), StoreError> {
    let t = std::sync::Arc::new(t);
    let moved = p.write_move(t.clone()).await?;
    Ok((moved, std::sync::Arc::unwrap_or_clone(t)))
}

/// [`load_and_apply`] inside the caller's transaction on MySQL, the row locked while it is
/// decided on: a batch's decision written on its own (one in the batch, or after the batch's
/// items failed to write together).
pub(super) async fn decide_one(
    c: &mut AsyncMysqlConnection,
    order_no: &str,
    decide: &Decide,
) -> QueryResult<Option<Decided>> {
    let Some(row) = numbered(order_no)
        .select(OrderRow::as_select())
        .for_update()
        .get_result(c)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let decision = decide(&row);
    Ok(Some(match Plan::new(row, decision) {
        Plan::Write(planned) => {
            let moved = planned.t.write(c).await?;
            planned.written(moved)
        }
        Plan::Done(decided) => decided,
    }))
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

/// A move decided on a loaded row, ready to be written.
struct Planned {
    from: OrderStatus,
    step: Move,
    t: Transition,
}

/// A decision taken on a loaded row: a move to write, or what it already came to.
enum Plan {
    Write(Planned),
    Done(Decided),
}

impl Plan {
    fn new(row: OrderRow, decision: Decision) -> Plan {
        let Decision::Move(step) = decision else {
            return Plan::Done(Decided::Unwritten { row, decision });
        };
        let t = Transition::new(&row, step.to, &step.effect, now_ms());
        Plan::Write(Planned {
            from: row.status,
            step,
            t,
        })
    }
}

impl Planned {
    /// What became of the move, given whether its compare-and-set matched.
    fn written(self, moved: bool) -> Decided {
        if moved {
            Decided::Written {
                from: self.from,
                step: self.step,
                row: self.t.next,
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
    F: Fn(&OrderRow) -> Decision + Send + Sync + 'static,
{
    let decide: Decide = std::sync::Arc::new(decide);
    match pool {
        DbPool::Sqlite { writer, .. } => {
            let order_no = order_no.to_string();
            let unit = move |c: &mut SqliteConnection| -> QueryResult<Option<Decided>> {
                let Some(row) = diesel::RunQueryDsl::get_result(
                    numbered(&order_no).select(OrderRow::as_select()),
                    c,
                )
                .optional()?
                else {
                    return Ok(None);
                };
                let decision = decide(&row);
                Ok(Some(match Plan::new(row, decision) {
                    Plan::Write(planned) => {
                        let moved = planned.t.write_blocking(c)?;
                        planned.written(moved)
                    }
                    Plan::Done(decided) => decided,
                }))
            };
            writer.run(unit).await
        }
        DbPool::Mysql(p) => {
            // With group commit, the load, the decision and the move all happen in the batch,
            // on the row as it is when the batch locks it: no connection of its own, no round
            // trip of its own.
            if let Some(decided) = p.decide_in_batch(order_no, &decide).await {
                return decided;
            }
            // The load is the connection's check (see MysqlPool): on failure, once more on a
            // checked connection.
            let mut c = p.get_for_read().await?;
            let row = match numbered(order_no)
                .select(OrderRow::as_select())
                .get_result(&mut *c)
                .await
                .optional()
            {
                Ok(row) => row,
                Err(e) => {
                    tracing::info!(error = %e, "load failed on an unchecked connection; retrying on a checked one");
                    super::discard(c);
                    c = p.get().await?;
                    numbered(order_no)
                        .select(OrderRow::as_select())
                        .get_result(&mut *c)
                        .await
                        .optional()?
                }
            };
            let Some(row) = row else { return Ok(None) };
            let decision = decide(&row);
            Ok(Some(match Plan::new(row, decision) {
                Plan::Write(planned) => {
                    let moved = match planned.t.write(&mut c).await {
                        Ok(moved) => moved,
                        // A Galera certification conflict (or a lost node): reported as lost,
                        // so the caller reloads and decides again, and its write is retried
                        // (`MysqlPool::retrying`).
                        Err(e) => {
                            let e = StoreError::from(e);
                            let Some(reason) = super::galera::retry_reason(&e) else {
                                return Err(e);
                            };
                            super::galera::count_retry(reason);
                            super::discard(c);
                            false
                        }
                    };
                    planned.written(moved)
                }
                Plan::Done(decided) => decided,
            }))
        }
    }
}
