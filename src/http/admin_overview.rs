//! `GET /api/v1/admin/overview`: the figures on the console's first screen, from the database
//! and this instance's metrics. Today is the Beijing calendar day (the shop's day).
//!
//! Notification outcomes "of the last hour" come from the `coinpay_notifications_total`
//! counters, which only ever grow: the handler keeps a sample of them at most once a minute
//! and answers the growth since the newest sample that is at least an hour old. Until the
//! first such sample exists it answers the counts since this instance started (`since` is
//! then null). The counters are per instance, and so is this window.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use actix_web::{HttpResponse, get, web};
use chrono::{Duration, TimeZone};
use serde_json::json;

use super::AppState;
use super::auth::AdminCaller;
use super::views::time;
use crate::error::AppError;
use crate::order::number::BEIJING;
use crate::store::{now_ms, orders, stats};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(overview);
}

#[get("/api/v1/admin/overview")]
async fn overview(_a: AdminCaller, st: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let now = now_ms();
    let (day, from, to) = beijing_day(now);
    let paid = stats::paid_between(&st.db, from, to).await?;
    let (pending, oldest) = orders::pending_stats(&st.db).await?;
    let counts = notification_counts(&st.metrics.encode());
    let (since, outcomes) = NOTIFICATIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .observe(now, counts);
    Ok(HttpResponse::Ok().json(json!({
        "generated_at": time(now),
        "today": { "date": day, "paid_orders": paid.orders, "paid_fen": paid.fen },
        "pending": {
            "count": pending,
            "oldest_created_at": oldest.map(time),
            "oldest_age_seconds": oldest.map(|t| (now - t).max(0) / 1000),
        },
        // Filled in by the refund and reconciliation backends (issues 12 and 13); null means
        // this server has none.
        "refunds_processing": null,
        "last_reconciliation": null,
        "notifications": {
            "since": since.map(time),
            "outcomes": outcomes,
        },
    })))
}

/// The Beijing date of `now_ms` and its bounds in epoch milliseconds, `[from, to)`.
fn beijing_day(now_ms: i64) -> (String, i64, i64) {
    let local = BEIJING
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_else(|| {
            // Out of chrono's range only for absurd clocks: fall back to the epoch's day.
            BEIJING
                .timestamp_millis_opt(0)
                .single()
                .unwrap_or_else(|| unreachable!())
        });
    let date = local.date_naive();
    let start = date
        .and_hms_opt(0, 0, 0)
        .and_then(|t| BEIJING.from_local_datetime(&t).single())
        .map(|t| t.timestamp_millis())
        .unwrap_or(now_ms);
    let end = start + Duration::days(1).num_milliseconds();
    (date.format("%Y-%m-%d").to_string(), start, end)
}

/// `outcome → count` of the notification counters in an OpenMetrics exposition.
fn notification_counts(exposition: &str) -> BTreeMap<String, u64> {
    const PREFIX: &str = "coinpay_notifications_total{outcome=\"";
    exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(PREFIX)?;
            let (outcome, value) = rest.split_once("\"} ")?;
            let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((outcome.to_string(), value as u64))
        })
        .collect()
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

static NOTIFICATIONS: Mutex<Window> = Mutex::new(Window {
    samples: VecDeque::new(),
    evicted: false,
});

/// Samples of growing counters, at most one a minute, enough to answer "since an hour ago".
struct Window {
    samples: VecDeque<(i64, BTreeMap<String, u64>)>,
    /// Whether samples were dropped: until then the counts since start are the best answer.
    evicted: bool,
}

impl Window {
    /// Records `now`'s counts and answers (start of the window, growth since then); a `None`
    /// start means "since this instance started".
    fn observe(
        &mut self,
        now: i64,
        counts: BTreeMap<String, u64>,
    ) -> (Option<i64>, BTreeMap<String, u64>) {
        // Keep the newest sample that is an hour old or older: it is the window's start.
        while self.samples.len() >= 2 && self.samples[1].0 <= now - HOUR_MS {
            self.samples.pop_front();
            self.evicted = true;
        }
        let (since, growth) = match self.samples.front() {
            Some((t, base)) if self.evicted || *t <= now - HOUR_MS => {
                let growth = counts
                    .iter()
                    .map(|(k, v)| (k.clone(), v.saturating_sub(*base.get(k).unwrap_or(&0))))
                    .collect();
                (Some(*t), growth)
            }
            _ => (None, counts.clone()),
        };
        if self
            .samples
            .back()
            .is_none_or(|(t, _)| *t <= now - MINUTE_MS)
        {
            self.samples.push_back((now, counts));
        }
        (since, growth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ok: u64) -> BTreeMap<String, u64> {
        BTreeMap::from([("ok".to_string(), ok)])
    }

    #[test]
    fn the_window_answers_since_start_then_since_an_hour_ago() {
        let mut w = Window {
            samples: VecDeque::new(),
            evicted: false,
        };
        let t0 = 1_000_000_000;
        assert_eq!(w.observe(t0, counts(5)), (None, counts(5)));
        assert_eq!(w.observe(t0 + 30 * MINUTE_MS, counts(8)), (None, counts(8)));
        // An hour after the first sample, it is the window's start.
        assert_eq!(w.observe(t0 + HOUR_MS, counts(9)), (Some(t0), counts(4)));
        // Later still, the 30-minute sample takes over.
        assert_eq!(
            w.observe(t0 + 90 * MINUTE_MS, counts(20)),
            (Some(t0 + 30 * MINUTE_MS), counts(12))
        );
        assert!(w.samples.len() <= 3);
    }

    #[test]
    fn counts_are_read_from_the_exposition() {
        let text = "# TYPE coinpay_notifications counter\n\
                    coinpay_notifications_total{outcome=\"ok\"} 3\n\
                    coinpay_notifications_total{outcome=\"bad_signature\"} 0\n\
                    coinpay_orders_total{event=\"paid\"} 3\n";
        let c = notification_counts(text);
        assert_eq!(c.get("ok"), Some(&3));
        assert_eq!(c.get("bad_signature"), Some(&0));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn the_beijing_day_starts_at_16_utc() {
        // 2026-12-01T15:59:59Z is 23:59:59 in Beijing; a second later it is the 2nd.
        let before = 1_796_140_799_000;
        let (d, from, to) = beijing_day(before);
        assert_eq!(d, "2026-12-01");
        assert_eq!(to, before + 1000);
        assert_eq!(to - from, 86_400_000);
        assert_eq!(beijing_day(before + 1000).0, "2026-12-02");
    }
}
