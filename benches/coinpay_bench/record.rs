//! What a run leaves: a row of figures per scenario, the memory readings, and the failures,
//! with the checks made right after each scenario (the ledger invariant, the count of paid
//! orders) that turn a fast but wrong run into a failed one.

use coinpay::order::state::OrderStatus;

use crate::harness::{DbPool, invariant_violations};
use crate::setup::count_status;
use crate::stats::Stats;

pub struct Row {
    pub backend: &'static str,
    pub scenario: &'static str,
    pub conc: usize,
    pub stats: Stats,
    pub failed: bool,
}

#[derive(Default)]
pub struct Memory {
    pub idle_kb: u64,
    pub live_kb: u64,
    pub live_actors: f64,
    pub cold_before_kb: u64,
    pub cold_after_kb: u64,
    pub cold_actors: f64,
}

#[derive(Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub memory: Memory,
    pub failures: Vec<String>,
    /// Failures not tied to one scenario (setup, service start, errors in the service's log).
    pub other_failures: usize,
}

/// One backend's record, and the pool its checks use.
pub struct Ctx {
    pub backend: &'static str,
    pub check_pool: DbPool,
    pub out: Outcome,
}

impl Ctx {
    /// Records a scenario and checks the ledger invariant right after it.
    pub async fn record(&mut self, scenario: &'static str, conc: usize, stats: Stats) {
        let line = format!(
            "  {:<7} {:<16} c={:<3} ok {:>6}/{:<6} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  errors {}",
            self.backend,
            scenario,
            conc,
            stats.ok,
            stats.requested,
            stats.rate(),
            stats.pct(0.50),
            stats.pct(0.99),
            stats.max(),
            stats.failed()
        );
        eprintln!("{line}");
        self.out.rows.push(Row {
            backend: self.backend,
            scenario,
            conc,
            stats: Stats::default(),
            failed: false,
        });
        if stats.failed() > 0 {
            self.fail(format!(
                "{} {scenario}: {} errors, {} unsent; e.g. {:?}",
                self.backend, stats.errors, stats.unsent, stats.samples
            ));
        }
        match invariant_violations(&self.check_pool).await {
            Ok(v) if v.is_empty() => {}
            Ok(v) => self.fail(format!(
                "{} after {scenario}: ledger invariant violated ({} violations), e.g. {:?}",
                self.backend,
                v.len(),
                &v[..v.len().min(5)]
            )),
            Err(e) => self.fail(format!(
                "{} after {scenario}: invariant query failed: {e}",
                self.backend
            )),
        }
        if let Some(r) = self.out.rows.last_mut() {
            r.stats = stats;
        }
    }

    /// A failure of the scenario recorded last (or of the backend, before any).
    pub fn fail(&mut self, msg: String) {
        eprintln!("  FAILED: {msg}");
        match self.out.rows.last_mut() {
            Some(r) => r.failed = true,
            None => self.out.other_failures += 1,
        }
        self.out.failures.push(msg);
    }

    /// Counts a warm-up's credits (it is not reported); any error in it fails the run.
    pub fn warmed(&mut self, before: &str, s: Stats) -> i64 {
        if s.failed() > 0 {
            let msg = format!(
                "{} warm-up before {before}: {} errors, {} unsent {:?}",
                self.backend, s.errors, s.unsent, s.samples
            );
            eprintln!("  FAILED: {msg}");
            self.out.other_failures += 1;
            self.out.failures.push(msg);
        }
        s.ok as i64
    }

    pub async fn expect_paid(&mut self, after: &str, expected: i64) {
        match count_status(&self.check_pool, OrderStatus::Paid).await {
            Ok(n) if n == expected => {}
            Ok(n) => self.fail(format!(
                "{} after {after}: {n} paid orders, expected {expected} (one per acknowledged first notification)",
                self.backend
            )),
            Err(e) => self.fail(format!("{} after {after}: {e}", self.backend)),
        }
    }
}
