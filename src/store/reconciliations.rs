//! Reconciliation reports (`reconciliations`, `reconciliation_differences`), the archive of
//! raw bills (`reconciliation_bills`, gzip), and the reads of the books the matcher needs.
//!
//! A report replaces the day's previous one as a whole, in one transaction: its row and its
//! differences are never seen half-written.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};

use super::schema::{
    recharge_orders as o, reconciliation_bills as b, reconciliation_differences as d,
    reconciliations as r, refunds as rf,
};
use super::{DbPool, Statement, StoreError, now_ms};
use crate::order::state::OrderStatus;
use crate::reconcile::report::{
    Action, Difference, DifferenceKind, LocalTotals, ReconStatus, Report, WechatTotals,
};
use crate::refund::state::RefundStatus;
use crate::with_read;

/// A stored value the domain does not know (written by something else) is an error.
fn unknown(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Query(diesel::result::Error::DeserializationError(
        format!("{what}: {e}").into(),
    ))
}

fn date_key(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn parse_date(s: &str) -> Result<NaiveDate, StoreError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| unknown("bill_date", e))
}

#[derive(Queryable, Selectable, Clone, Debug)]
#[diesel(table_name = r, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
struct ReportRow {
    bill_date: String,
    status: String,
    error: Option<String>,
    wechat_count: i64,
    wechat_paid_fen: i64,
    wechat_refund_fen: i64,
    wechat_fee_fen: i64,
    local_count: i64,
    local_paid_fen: i64,
    local_refund_fen: i64,
    difference_count: i64,
    attempts: i64,
    updated_at: i64,
}

#[derive(Queryable, Selectable, Clone, Debug)]
#[diesel(table_name = d, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
struct DifferenceRow {
    kind: String,
    order_no: Option<String>,
    transaction_id: Option<String>,
    out_refund_no: Option<String>,
    wechat_fen: Option<i64>,
    local_fen: Option<i64>,
    action: String,
}

impl DifferenceRow {
    fn into_domain(self) -> Result<Difference, StoreError> {
        Ok(Difference {
            kind: self.kind.parse().map_err(|e| unknown("kind", e))?,
            order_no: self.order_no,
            transaction_id: self.transaction_id,
            out_refund_no: self.out_refund_no,
            wechat_fen: self.wechat_fen,
            local_fen: self.local_fen,
            action: self.action.parse().map_err(|e| unknown("action", e))?,
        })
    }
}

/// One day in the list: its status, how many differences are left open, when it last ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaySummary {
    pub bill_date: NaiveDate,
    pub status: ReconStatus,
    pub error: Option<String>,
    pub difference_count: i64,
    pub attempts: i64,
    pub updated_at: i64,
}

impl TryFrom<ReportRow> for DaySummary {
    type Error = StoreError;
    fn try_from(row: ReportRow) -> Result<Self, StoreError> {
        Ok(DaySummary {
            bill_date: parse_date(&row.bill_date)?,
            status: row.status.parse().map_err(|e| unknown("status", e))?,
            error: row.error,
            difference_count: row.difference_count,
            attempts: row.attempts,
            updated_at: row.updated_at,
        })
    }
}

/// The write of one report: the day's old report and differences go, the new ones come.
struct ReportWrite {
    date: String,
    report: Report,
    now: i64,
}

impl ReportWrite {
    fn delete_differences(&self) -> impl Statement + '_ {
        diesel::delete(d::table.filter(d::bill_date.eq(&self.date)))
    }

    /// The report row, created or replaced (counting the attempts, keeping the creation time).
    fn upsert(&self, previous: Option<(i64, i64)>) -> impl Statement + '_ {
        let rep = &self.report;
        let w = rep.wechat.unwrap_or_default();
        let l = rep.local.unwrap_or_default();
        let (attempts, created_at) = previous.unwrap_or((0, self.now));
        diesel::replace_into(r::table).values((
            r::bill_date.eq(&self.date),
            r::status.eq(rep.status.as_str()),
            r::error.eq(rep.error.as_deref()),
            r::wechat_count.eq(w.count),
            r::wechat_paid_fen.eq(w.paid_fen),
            r::wechat_refund_fen.eq(w.refund_fen),
            // In fen as reported (the raw bill keeps the exact 1/1000 fen).
            r::wechat_fee_fen.eq(w.fee_fen),
            r::local_count.eq(l.count),
            r::local_paid_fen.eq(l.paid_fen),
            r::local_refund_fen.eq(l.refund_fen),
            r::difference_count.eq(rep.open_differences() as i64),
            r::attempts.eq(attempts + 1),
            r::created_at.eq(created_at),
            r::updated_at.eq(self.now),
        ))
    }

    fn insert_difference<'a>(&'a self, x: &'a Difference) -> impl Statement + 'a {
        diesel::insert_into(d::table).values((
            d::bill_date.eq(&self.date),
            d::kind.eq(x.kind.as_str()),
            d::order_no.eq(x.order_no.as_deref()),
            d::transaction_id.eq(x.transaction_id.as_deref()),
            d::out_refund_no.eq(x.out_refund_no.as_deref()),
            d::wechat_fen.eq(x.wechat_fen),
            d::local_fen.eq(x.local_fen),
            d::action.eq(x.action.as_str()),
            d::created_at.eq(self.now),
        ))
    }

    fn write_blocking(&self, c: &mut SqliteConnection) -> QueryResult<()> {
        c.transaction(|c| {
            let previous = diesel::RunQueryDsl::first(previous(&self.date), c).optional()?;
            super::execute_blocking(self.delete_differences(), c)?;
            super::execute_blocking(self.upsert(previous), c)?;
            for x in &self.report.differences {
                super::execute_blocking(self.insert_difference(x), c)?;
            }
            Ok(())
        })
    }

    async fn write(&self, c: &mut AsyncMysqlConnection) -> QueryResult<()> {
        c.transaction(async |c| {
            let previous = previous(&self.date).first(c).await.optional()?;
            self.delete_differences().execute(c).await?;
            self.upsert(previous).execute(c).await?;
            for x in &self.report.differences {
                self.insert_difference(x).execute(c).await?;
            }
            Ok(())
        })
        .await
    }
}

/// (attempts, created_at) of the day's stored report.
#[diesel::dsl::auto_type]
fn previous<'a>(date: &'a String) -> _ {
    r::table.find(date).select((r::attempts, r::created_at))
}

/// Stores `report` as its day's report, replacing the previous one.
pub async fn save(pool: &DbPool, report: &Report) -> Result<(), StoreError> {
    let w = ReportWrite {
        date: date_key(report.bill_date),
        report: report.clone(),
        now: now_ms(),
    };
    match pool {
        DbPool::Sqlite { writer, .. } => writer.run(move |c| w.write_blocking(c)).await?,
        DbPool::Mysql(p) => {
            let mut c = p.get().await?;
            w.write(&mut c).await?
        }
    }
    Ok(())
}

/// The day's report, with its differences.
pub async fn get(pool: &DbPool, date: NaiveDate) -> Result<Option<Report>, StoreError> {
    let key = date_key(date);
    let found: Option<(ReportRow, Vec<DifferenceRow>)> = with_read!(pool, conn => {
        match r::table.find(&key).select(ReportRow::as_select()).get_result(conn).await.optional()? {
            None => None,
            Some(row) => {
                let diffs = d::table
                    .filter(d::bill_date.eq(&key))
                    .order(d::id.asc())
                    .select(DifferenceRow::as_select())
                    .load(conn)
                    .await?;
                Some((row, diffs))
            }
        }
    });
    let Some((row, diffs)) = found else {
        return Ok(None);
    };
    let status: ReconStatus = row.status.parse().map_err(|e| unknown("status", e))?;
    let read = status != ReconStatus::Error;
    Ok(Some(Report {
        bill_date: parse_date(&row.bill_date)?,
        status,
        error: row.error,
        wechat: read.then_some(WechatTotals {
            count: row.wechat_count,
            paid_fen: row.wechat_paid_fen,
            refund_fen: row.wechat_refund_fen,
            fee_fen: row.wechat_fee_fen,
        }),
        local: read.then_some(LocalTotals {
            count: row.local_count,
            paid_fen: row.local_paid_fen,
            refund_fen: row.local_refund_fen,
        }),
        differences: diffs
            .into_iter()
            .map(DifferenceRow::into_domain)
            .collect::<Result<_, _>>()?,
    }))
}

/// The days in `[from, to]` that have a report, oldest first.
pub async fn list(
    pool: &DbPool,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<DaySummary>, StoreError> {
    let (from, to) = (date_key(from), date_key(to));
    let rows: Vec<ReportRow> = with_read!(pool, conn => r::table
        .filter(r::bill_date.ge(&from))
        .filter(r::bill_date.le(&to))
        .order(r::bill_date.asc())
        .select(ReportRow::as_select())
        .load(conn)
        .await?);
    rows.into_iter().map(DaySummary::try_from).collect()
}

/// The latest bill date with a report, and the latest one that did not fail.
pub async fn latest(pool: &DbPool) -> Result<(Option<DaySummary>, Option<DaySummary>), StoreError> {
    let error = ReconStatus::Error.as_str();
    let (any, ok): (Option<ReportRow>, Option<ReportRow>) = with_read!(pool, conn => {
        let any = r::table
            .order(r::bill_date.desc())
            .select(ReportRow::as_select())
            .first(conn)
            .await
            .optional()?;
        let ok = r::table
            .filter(r::status.ne(error))
            .order(r::updated_at.desc())
            .select(ReportRow::as_select())
            .first(conn)
            .await
            .optional()?;
        (any, ok)
    });
    Ok((
        any.map(DaySummary::try_from).transpose()?,
        ok.map(DaySummary::try_from).transpose()?,
    ))
}

/// What the day's stored report says was done about each order's `missing_local`.
pub async fn fixes_of(
    pool: &DbPool,
    date: NaiveDate,
) -> Result<HashMap<String, Action>, StoreError> {
    let key = date_key(date);
    let rows: Vec<(Option<String>, String)> = with_read!(pool, conn => d::table
        .filter(d::bill_date.eq(&key))
        .filter(d::kind.eq(DifferenceKind::MissingLocal.as_str()))
        .select((d::order_no, d::action))
        .load(conn)
        .await?);
    let mut out = HashMap::new();
    for (no, action) in rows {
        let action: Action = action.parse().map_err(|e| unknown("action", e))?;
        if let Some(no) = no {
            out.insert(no, action);
        }
    }
    Ok(out)
}

/// Orders credited by the `missing_local` fix of any day but `except`.
pub async fn credited_by_reconciliation(
    pool: &DbPool,
    except: NaiveDate,
) -> Result<HashSet<String>, StoreError> {
    let key = date_key(except);
    let fixed = [Action::Credited.as_str(), Action::CreditedLate.as_str()];
    let rows: Vec<Option<String>> = with_read!(pool, conn => d::table
        .filter(d::bill_date.ne(&key))
        .filter(d::kind.eq(DifferenceKind::MissingLocal.as_str()))
        .filter(d::action.eq_any(fixed))
        .select(d::order_no)
        .load(conn)
        .await?);
    Ok(rows.into_iter().flatten().collect())
}

/// Keeps the day's raw bill (gzip), replacing an earlier download of the same day.
pub async fn archive_bill(pool: &DbPool, date: NaiveDate, gzip: Vec<u8>) -> Result<(), StoreError> {
    let put = diesel::replace_into(b::table).values((
        b::bill_date.eq(date_key(date)),
        b::gzip.eq(gzip),
        b::fetched_at.eq(now_ms()),
    ));
    super::execute(pool, put).await?;
    Ok(())
}

/// The day's archived raw bill (gzip), if it was downloaded.
pub async fn archived_bill(pool: &DbPool, date: NaiveDate) -> Result<Option<Vec<u8>>, StoreError> {
    let key = date_key(date);
    Ok(with_read!(pool, conn => b::table
        .find(&key)
        .select(b::gzip)
        .get_result(conn)
        .await
        .optional()?))
}

/// An order as reconciliation sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookOrder {
    pub order_no: String,
    pub status: OrderStatus,
    pub transaction_id: Option<String>,
    pub amount_fen: i64,
    pub paid_at: Option<i64>,
}

type BookOrderRow = (
    String,
    OrderStatus,
    Option<String>,
    crate::money::Fen,
    Option<i64>,
);

fn book_order(row: BookOrderRow) -> BookOrder {
    let (order_no, status, transaction_id, amount, paid_at) = row;
    BookOrder {
        order_no,
        status,
        transaction_id,
        amount_fen: amount.0,
        paid_at,
    }
}

/// The orders numbered `numbers` (those a bill names), in chunks of a bounded `IN` list.
pub async fn orders_numbered(
    pool: &DbPool,
    numbers: &[String],
) -> Result<Vec<BookOrder>, StoreError> {
    let mut out = Vec::with_capacity(numbers.len());
    for chunk in numbers.chunks(500) {
        let rows: Vec<BookOrderRow> = with_read!(pool, conn => o::table
            .filter(o::order_no.eq_any(chunk))
            .select((o::order_no, o::status, o::transaction_id, o::amount_fen, o::paid_at))
            .load(conn)
            .await?);
        out.extend(rows.into_iter().map(book_order));
    }
    Ok(out)
}

/// Orders paid in `[from_ms, to_ms)`.
pub async fn orders_paid_between(
    pool: &DbPool,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<BookOrder>, StoreError> {
    let rows: Vec<BookOrderRow> = with_read!(pool, conn => o::table
        .filter(o::status.eq(OrderStatus::Paid))
        .filter(o::paid_at.ge(from_ms))
        .filter(o::paid_at.lt(to_ms))
        .select((o::order_no, o::status, o::transaction_id, o::amount_fen, o::paid_at))
        .load(conn)
        .await?);
    Ok(rows.into_iter().map(book_order).collect())
}

/// A refund as reconciliation sees it (`refund_no` is the `out_refund_no` WeChat was sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookRefund {
    pub refund_no: String,
    pub order_no: String,
    pub status: RefundStatus,
    pub refund_fen: i64,
    pub succeeded_at: Option<i64>,
}

type BookRefundRow = (String, String, RefundStatus, crate::money::Fen, Option<i64>);

fn book_refund(row: BookRefundRow) -> BookRefund {
    let (refund_no, order_no, status, fen, succeeded_at) = row;
    BookRefund {
        refund_no,
        order_no,
        status,
        refund_fen: fen.0,
        succeeded_at,
    }
}

/// The refunds numbered `numbers` (the out_refund_no a bill names).
pub async fn refunds_numbered(
    pool: &DbPool,
    numbers: &[String],
) -> Result<Vec<BookRefund>, StoreError> {
    let mut out = Vec::with_capacity(numbers.len());
    for chunk in numbers.chunks(500) {
        let rows: Vec<BookRefundRow> = with_read!(pool, conn => rf::table
            .filter(rf::refund_no.eq_any(chunk))
            .select((rf::refund_no, rf::order_no, rf::status, rf::refund_fen, rf::succeeded_at))
            .load(conn)
            .await?);
        out.extend(rows.into_iter().map(book_refund));
    }
    Ok(out)
}

/// Refunds that succeeded in `[from_ms, to_ms)`.
pub async fn refunds_succeeded_between(
    pool: &DbPool,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<BookRefund>, StoreError> {
    let rows: Vec<BookRefundRow> = with_read!(pool, conn => rf::table
        .filter(rf::status.eq(RefundStatus::Succeeded))
        .filter(rf::succeeded_at.ge(from_ms))
        .filter(rf::succeeded_at.lt(to_ms))
        .select((rf::refund_no, rf::order_no, rf::status, rf::refund_fen, rf::succeeded_at))
        .load(conn)
        .await?);
    Ok(rows.into_iter().map(book_refund).collect())
}
