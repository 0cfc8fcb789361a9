//! Reconciling one Beijing day against WeChat's bill (issue 13): download the `ALL` bill
//! (gzip), keep it as received, parse it, load coinpay's books around the day, match
//! (`reconcile::matcher`), carry out the one safe fix and store the report, replacing the
//! day's previous one.
//!
//! The fix: a payment WeChat took for an order coinpay has unpaid (`missing_local`) is handed
//! to the order's actor as the [`Notify`] a payment notification would send, so it is decided
//! by the same state machine and written by the same compare-and-set (a late payment when the
//! order had expired, nothing when it was credited meanwhile). A re-run finds the order paid
//! and credits nothing; the report keeps saying what the first run did.
//!
//! A bill that cannot be fetched or read (a truncated gzip, an unknown layout, an amount that
//! does not parse, a refused request) fails the day: the report says why (status `error`),
//! nothing is credited, and the error is logged and counted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{NaiveDate, TimeZone};
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::money::Fen;
use crate::order::actor::{Notify, OrderError, Outcome};
use crate::order::number::{BEIJING, beijing_now};
use crate::order::registry::OrderRegistry;
use crate::order::state::{OrderStatus, Stay};
use crate::reconcile::matcher::{self, Books, LocalOrder, LocalRefund};
use crate::reconcile::report::{Action, Difference, DifferenceKind, ReconStatus, Report};
use crate::refund::state::RefundStatus;
use crate::store::reconciliations::{self as store, BookOrder, DaySummary};
use crate::store::{DbPool, StoreError};
use crate::wechat::bill::{Bill, BillDownload, BillError, BillRequest, BillRow, RawBill};
use crate::wechat::client::WechatClient;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("WeChat Pay is not configured")]
    PaymentUnavailable,
    #[error("bill_date {0} has not begun yet (Beijing time)")]
    FutureDate(NaiveDate),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// A day's run: its report, and whether a failure is worth another try later that day.
#[derive(Clone, Debug)]
pub struct Run {
    pub report: Report,
    pub retryable: bool,
}

pub struct ReconcileService {
    db: DbPool,
    wechat: Option<WechatClient>,
    registry: OrderRegistry,
    metrics: Arc<Metrics>,
}

/// `[start, end)` of a Beijing date in epoch milliseconds.
pub fn day_bounds(date: NaiveDate) -> (i64, i64) {
    let start = date
        .and_hms_opt(0, 0, 0)
        .and_then(|t| BEIJING.from_local_datetime(&t).single())
        .map_or(0, |t| t.timestamp_millis());
    (start, start + 86_400_000)
}

fn beijing_date_of(ms: i64) -> Option<NaiveDate> {
    BEIJING
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.date_naive())
}

impl ReconcileService {
    pub fn new(
        db: DbPool,
        wechat: Option<WechatClient>,
        registry: OrderRegistry,
        metrics: Arc<Metrics>,
    ) -> Self {
        ReconcileService {
            db,
            wechat,
            registry,
            metrics,
        }
    }

    pub async fn report(&self, date: NaiveDate) -> Result<Option<Report>, StoreError> {
        store::get(&self.db, date).await
    }

    pub async fn list(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DaySummary>, StoreError> {
        store::list(&self.db, from, to).await
    }

    /// Sets the reconciliation gauges from the database (at every scrape): every instance
    /// reports the same last day whichever of them ran it, and a restart does not look like a
    /// reconciliation that stopped happening.
    pub async fn refresh_metrics(&self) -> Result<(), StoreError> {
        let (last, last_ok) = store::latest(&self.db).await?;
        if let Some(ok) = last_ok {
            self.metrics
                .reconcile
                .last_success
                .set(ok.updated_at as f64 / 1000.0);
        }
        if let Some(day) = last
            && let Some(report) = store::get(&self.db, day.bill_date).await?
        {
            self.record_day(&report);
        }
        Ok(())
    }

    /// Reconciles `date` now (an operator's run, or the schedule's), replacing its report.
    pub async fn run(&self, date: NaiveDate) -> Result<Run, ReconcileError> {
        if date > beijing_now().date_naive() {
            return Err(ReconcileError::FutureDate(date));
        }
        let wechat = self
            .wechat
            .as_ref()
            .ok_or(ReconcileError::PaymentUnavailable)?;
        let span = tracing::info_span!("reconcile", bill_date = %date);
        self.run_with(wechat, date).instrument(span).await
    }

    async fn run_with(
        &self,
        wechat: &WechatClient,
        date: NaiveDate,
    ) -> Result<Run, ReconcileError> {
        let bill = match self.fetch(wechat, date).await? {
            Ok(bill) => bill,
            Err(e) => return self.failed(date, &e).await,
        };
        let books = self.books(date, bill.as_ref()).await?;
        let neighbours = self.neighbours(wechat, date, bill.as_ref(), &books).await?;
        let neighbour_rows: Vec<&BillRow> = neighbours.iter().flat_map(|b| b.rows.iter()).collect();
        let matched = matcher::reconcile(date, bill.as_ref(), &neighbour_rows, &books);
        let previous = store::fixes_of(&self.db, date).await?;
        let differences = self
            .fix(matched.differences, bill.as_ref(), &books, &previous)
            .await;
        let status = match (&bill, Report::status_of(&differences)) {
            (None, ReconStatus::Balanced) => ReconStatus::NoBill,
            (_, s) => s,
        };
        let report = Report {
            bill_date: date,
            status,
            error: None,
            wechat: Some(matched.wechat),
            local: Some(matched.local),
            differences,
        };
        store::save(&self.db, &report).await?;
        self.metrics.reconcile.run(status.as_str());
        if status == ReconStatus::Differences {
            tracing::warn!(status = %status, open = report.open_differences(), "reconciliation found differences");
        } else {
            tracing::info!(status = %status, differences = report.differences.len(), "reconciliation done");
        }
        Ok(Run {
            report,
            retryable: false,
        })
    }

    /// The day's bill: `Ok(Ok(None))` for `No Bill Exist`, `Ok(Err(_))` for a bill that could
    /// not be fetched or read. A bill that arrived is archived before it is parsed.
    async fn fetch(
        &self,
        wechat: &WechatClient,
        date: NaiveDate,
    ) -> Result<Result<Option<Bill>, BillError>, StoreError> {
        let raw = match wechat.download_bill(&BillRequest::all(date)).await {
            Ok(BillDownload::NoBill) => return Ok(Ok(None)),
            Ok(BillDownload::Bill(raw)) => raw,
            Err(e) => return Ok(Err(e)),
        };
        store::archive_bill(&self.db, date, gzipped(&raw)).await?;
        Ok(raw.parse().map(Some))
    }

    async fn failed(&self, date: NaiveDate, e: &BillError) -> Result<Run, ReconcileError> {
        tracing::error!(error = %e, kind = e.kind(), "reconciliation failed; nothing was changed");
        let report = Report {
            bill_date: date,
            status: ReconStatus::Error,
            error: Some(e.to_string()),
            wechat: None,
            local: None,
            differences: Vec::new(),
        };
        store::save(&self.db, &report).await?;
        self.metrics.reconcile.run(ReconStatus::Error.as_str());
        self.metrics.reconcile.error(e.kind());
        Ok(Run {
            report,
            retryable: e.is_retryable(),
        })
    }

    /// The books around `date`: every order and refund the bill names, every payment and
    /// refund of D-1, D and D+1 (with the orders of those refunds), and the orders earlier
    /// reconciliations credited.
    async fn books(&self, date: NaiveDate, bill: Option<&Bill>) -> Result<Books, StoreError> {
        let (start, _) = day_bounds(date);
        let window = (start - 86_400_000, start + 2 * 86_400_000);
        let mut refunds: HashMap<String, LocalRefund> = HashMap::new();
        let refund_nos: Vec<String> = distinct(
            bill.into_iter()
                .flat_map(|b| b.refunds())
                .filter_map(|r| r.out_refund_no.as_deref()),
        );
        let found = store::refunds_succeeded_between(&self.db, window.0, window.1)
            .await?
            .into_iter()
            .chain(store::refunds_numbered(&self.db, &refund_nos).await?);
        for r in found {
            let local = LocalRefund {
                succeeded_on: r.succeeded_at.and_then(beijing_date_of),
                out_refund_no: r.refund_no,
                order_no: r.order_no,
                status: r.status,
                refund_fen: r.refund_fen,
            };
            refunds.insert(local.out_refund_no.clone(), local);
        }

        let mut orders: HashMap<String, LocalOrder> = HashMap::new();
        let mut add = |o: BookOrder| {
            let local = LocalOrder {
                paid_on: o.paid_at.and_then(beijing_date_of),
                order_no: o.order_no,
                status: o.status,
                transaction_id: o.transaction_id,
                amount_fen: o.amount_fen,
            };
            orders.insert(local.order_no.clone(), local);
        };
        for o in store::orders_paid_between(&self.db, window.0, window.1).await? {
            add(o);
        }
        let named = distinct(
            bill.into_iter()
                .flat_map(|b| b.rows.iter().map(|r| r.out_trade_no.as_str()))
                .chain(refunds.values().map(|r| r.order_no.as_str())),
        );
        for o in store::orders_numbered(&self.db, &named).await? {
            add(o);
        }
        Ok(Books {
            orders,
            refunds,
            credited_by_reconciliation: store::credited_by_reconciliation(&self.db, date).await?,
        })
    }

    /// The bills of D-1 and D+1, when a payment or refund coinpay recorded on D is not in D's
    /// bill: from the archive, or (D-1 only, which WeChat has by now) downloaded and archived.
    /// A neighbour that cannot be had is left out (the record is then called missing).
    async fn neighbours(
        &self,
        wechat: &WechatClient,
        date: NaiveDate,
        bill: Option<&Bill>,
        books: &Books,
    ) -> Result<Vec<Bill>, StoreError> {
        let rows = || bill.into_iter().flat_map(|b| b.rows.iter());
        let unmatched = books.orders.values().any(|o| {
            o.status == OrderStatus::Paid
                && o.paid_on == Some(date)
                && !rows().any(|r| r.out_refund_no.is_none() && r.out_trade_no == o.order_no)
        }) || books.refunds.values().any(|r| {
            r.status == RefundStatus::Succeeded
                && r.succeeded_on == Some(date)
                && !rows().any(|b| b.out_refund_no.as_deref() == Some(r.out_refund_no.as_str()))
        });
        if !unmatched {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (day, download) in [(date.pred_opt(), true), (date.succ_opt(), false)] {
            let Some(day) = day else { continue };
            let raw = match store::archived_bill(&self.db, day).await? {
                Some(bytes) => Some(RawBill::from_stored(bytes.into())),
                None if download => match wechat.download_bill(&BillRequest::all(day)).await {
                    Ok(BillDownload::Bill(raw)) => {
                        store::archive_bill(&self.db, day, gzipped(&raw)).await?;
                        Some(raw)
                    }
                    Ok(BillDownload::NoBill) => None,
                    Err(e) => {
                        tracing::warn!(neighbour = %day, error = %e, "neighbouring bill unavailable");
                        None
                    }
                },
                None => None,
            };
            match raw.map(|r| r.parse()) {
                Some(Ok(b)) => out.push(b),
                Some(Err(e)) => {
                    tracing::warn!(neighbour = %day, error = %e, "neighbouring bill unreadable")
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// Carries out the `missing_local` credits, and keeps what an earlier run of the day did
    /// about orders that are paid by now.
    async fn fix(
        &self,
        differences: Vec<Difference>,
        bill: Option<&Bill>,
        books: &Books,
        previous: &HashMap<String, Action>,
    ) -> Vec<Difference> {
        let mut out = Vec::with_capacity(differences.len());
        for mut d in differences {
            if d.action == Action::Credit {
                // When WeChat took the money: the bill row's trade time, the order's paid_at.
                let paid_at = bill.and_then(|b| {
                    b.payments()
                        .find(|r| d.order_no.as_deref() == Some(r.out_trade_no.as_str()))
                        .map(|r| r.trade_time.timestamp_millis())
                });
                match self.credit(&d, paid_at).await {
                    Some(action) => d.action = action,
                    // Credited by its notification meanwhile: no longer a difference.
                    None => continue,
                }
            }
            out.push(d);
        }
        for row in bill
            .map(|b| b.payments().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let no = &row.out_trade_no;
            let Some(&action) = previous.get(no).filter(|a| a.is_fixed()) else {
                continue;
            };
            if out.iter().any(|d| d.order_no.as_ref() == Some(no)) {
                continue;
            }
            out.push(Difference {
                kind: DifferenceKind::MissingLocal,
                order_no: Some(no.clone()),
                transaction_id: Some(row.transaction_id.clone()),
                out_refund_no: None,
                wechat_fen: Some(row.order_fen),
                local_fen: books.orders.get(no).map(|o| o.amount_fen),
                action,
            });
        }
        out
    }

    /// Hands the payment to the order's actor as its notification would. `None` when the
    /// order turned out credited with this very transaction already.
    async fn credit(&self, d: &Difference, paid_at: Option<i64>) -> Option<Action> {
        let (Some(order_no), Some(transaction_id), Some(fen)) = (
            d.order_no.as_deref(),
            d.transaction_id.as_deref(),
            d.wechat_fen,
        ) else {
            return Some(Action::CreditFailed);
        };
        let notify = Notify {
            transaction_id: transaction_id.to_owned(),
            total_fee: Fen(fen),
            paid_at,
        };
        let span = tracing::info_span!("order", order_no = %order_no);
        let outcome: Result<Outcome, OrderError> =
            self.registry.send(order_no, notify).instrument(span).await;
        match outcome {
            Ok(Outcome::Moved { late, .. }) => {
                self.metrics.reconcile.credited.inc();
                tracing::warn!(%order_no, %transaction_id, late, "payment missing locally credited from WeChat's bill");
                Some(if late {
                    Action::CreditedLate
                } else {
                    Action::Credited
                })
            }
            Ok(Outcome::Stayed(Stay::Duplicate)) => None,
            Ok(other) => {
                tracing::warn!(%order_no, outcome = ?other, "order did not take the payment from WeChat's bill");
                Some(Action::CreditFailed)
            }
            Err(e) => {
                tracing::error!(%order_no, error = %e, "credit from WeChat's bill failed");
                Some(Action::CreditFailed)
            }
        }
    }

    fn record_day(&self, report: &Report) {
        let (start, _) = day_bounds(report.bill_date);
        let mut open: Vec<(&str, i64)> = Vec::new();
        for d in report.differences.iter().filter(|d| !d.action.is_fixed()) {
            open.push((d.kind.as_str(), 1));
        }
        let kinds: Vec<&str> = DifferenceKind::ALL.iter().map(|k| k.as_str()).collect();
        self.metrics
            .reconcile
            .day(start as f64 / 1000.0, report.status.as_str(), &open, &kinds);
    }
}

/// The distinct values of `items`, owned.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let set: HashSet<&str> = items.collect();
    set.into_iter().map(str::to_owned).collect()
}

/// The bill as it is archived: gzip as received, or the plain text gzipped here.
fn gzipped(raw: &RawBill) -> Vec<u8> {
    use std::io::Write as _;
    if raw.gzip {
        return raw.bytes.to_vec();
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(&raw.bytes);
    enc.finish().unwrap_or_default()
}
