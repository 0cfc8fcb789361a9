//! The scenarios, as a table, and one backend's run through them.
//!
//! A run makes its data first (users, pending orders), measures the scenarios that need no
//! service (db-baseline), starts the service, and measures the others in the table's order;
//! after each, the ledger invariant and, where the scenario pays orders, the count of paid orders
//! are checked. The notification scenarios share one set of orders: notify-paid pays them and the
//! duplicate scenarios send the same notifications again, so notify-paid runs whenever one of
//! them is selected.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coinpay::store::orders::OrderRow;
use coinpay::store::users;
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Backend, Db, INTERNAL_TOKEN, SUCCESS, rand_suffix};
use crate::http1::{Reply, call_once, json_request};
use crate::opts::{Load, Opts};
use crate::record::{Ctx, Outcome};
use crate::service::{self, Service};
use crate::setup::{make_users, notification, pending_orders};
use crate::stats::{Check, Stats, run_db};
use crate::{Res, err};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The paid-notification transaction (order compare-and-set, balance update, ledger row)
    /// straight on a `DbPool` of the service's size: no HTTP, no actors. The limit the service
    /// is measured against.
    DbBaseline,
    /// One signed SUCCESS notification per pending order, over keep-alive HTTP/1.1.
    NotifyPaid,
    /// The same notifications again, with the orders' actors alive.
    NotifyDupLive,
    /// The same notifications again after a restart: every actor loads its order.
    NotifyDupCold,
    /// Logged-in users creating orders (unifiedorder at the simulator included).
    CreateOrder,
    /// The internal API spending one coin per request.
    Consume,
}

/// What a scenario does to the count of paid orders, checked after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Paid {
    /// Each success pays one order.
    Adds,
    /// Duplicates: nothing more is paid.
    Same,
    /// Not about payments.
    NotChecked,
}

pub struct Scenario {
    pub name: &'static str,
    /// `--<name>-concurrency`, `--<name>-count`.
    pub conc_flag: &'static str,
    pub count_flag: &'static str,
    /// Default request counts of the full benchmark and of the smoke run.
    pub full_count: usize,
    pub smoke_count: usize,
    kind: Kind,
    paid: Paid,
    /// Runs against the service (else before it starts).
    with_service: bool,
}

macro_rules! scenario {
    ($name:literal, $kind:ident, $paid:ident, with_service: $svc:literal, full: $full:literal, smoke: $smoke:literal) => {
        Scenario {
            name: $name,
            conc_flag: concat!($name, "-concurrency"),
            count_flag: concat!($name, "-count"),
            full_count: $full,
            smoke_count: $smoke,
            kind: Kind::$kind,
            paid: Paid::$paid,
            with_service: $svc,
        }
    };
}

/// Every scenario, in the order they run.
#[rustfmt::skip]
pub const SCENARIOS: [Scenario; 6] = [
    scenario!("db-baseline", DbBaseline, Adds, with_service: false, full: 10_000, smoke: 300),
    scenario!("notify-paid", NotifyPaid, Adds, with_service: true, full: 10_000, smoke: 300),
    scenario!("notify-dup-live", NotifyDupLive, Same, with_service: true, full: 60_000, smoke: 300),
    scenario!("notify-dup-cold", NotifyDupCold, Same, with_service: true, full: 10_000, smoke: 300),
    scenario!("create-order", CreateOrder, NotChecked, with_service: true, full: 3_000, smoke: 200),
    scenario!("consume", Consume, NotChecked, with_service: true, full: 10_000, smoke: 300),
];

/// The scenarios' names, for `--only`.
pub const SCENARIO_NAMES: [&str; 6] = {
    let mut names = [""; 6];
    let mut i = 0;
    while i < SCENARIOS.len() {
        names[i] = SCENARIOS[i].name;
        i += 1;
    }
    names
};

/// How long a freshly started service is left alone before it is measured.
const SETTLE: Duration = Duration::from_millis(1500);

fn is_success(r: &Reply) -> bool {
    r.status == 200 && r.body == SUCCESS.as_bytes()
}

/// Every selected scenario on one backend, on a database of its own that is dropped after.
pub async fn run_backend(o: &Opts, backend: &Backend) -> Res<Outcome> {
    let db = Db::create(backend, "coinpay_b").await?;
    let r = run_on(o, &db).await;
    db.drop_database().await;
    r
}

/// Orders to pay: some for an unmeasured warm-up, then the measured ones.
#[derive(Default)]
struct Orders {
    warm: Vec<OrderRow>,
    measured: Vec<OrderRow>,
}

/// One backend's run.
struct Run<'a> {
    o: &'a Opts,
    db: &'a Db,
    /// The service's working directory and log.
    work: tempfile::TempDir,
    /// Makes this run's order numbers, openids and request ids its own.
    tag: String,
    users: Vec<i64>,
    baseline: Orders,
    notify: Orders,
    /// The notifications that pay `notify.measured`, sent again by the duplicate scenarios.
    notify_reqs: Arc<Vec<Vec<u8>>>,
    /// The running instances (`--instances`; none before the service starts). Every load is
    /// spread over them; memory figures are the first one's.
    svcs: Vec<Service>,
    started: Instant,
    /// Orders paid so far (warm-ups included).
    paid: i64,
    cx: Ctx,
}

async fn run_on(o: &Opts, db: &Db) -> Res<Outcome> {
    let mut run = Run::setup(o, db).await?;
    for s in SCENARIOS.iter().filter(|s| !s.with_service) {
        run.one(s).await?;
    }
    run.cx.out.memory.idle_kb = run.start_service().await?;
    for s in SCENARIOS.iter().filter(|s| s.with_service) {
        run.one(s).await?;
    }
    Ok(run.finish())
}

impl<'a> Run<'a> {
    /// Whether `s` runs: selected, or needed by a selected one.
    fn runs(&self, s: &Scenario) -> bool {
        let dup = self.o.wants("notify-dup-live") || self.o.wants("notify-dup-cold");
        self.o.wants(s.name) || (s.kind == Kind::NotifyPaid && dup)
    }

    /// The users and the pending orders of the selected scenarios.
    async fn setup(o: &'a Opts, db: &'a Db) -> Res<Run<'a>> {
        let backend = db.backend.name();
        let t0 = Instant::now();
        db.migrate().await?;
        let setup_pool = db.connect(8).await?;
        let check_pool = db.connect(2).await?;
        let tag = rand_suffix()[..4].to_uppercase();
        let mut run = Run {
            o,
            db,
            work: tempfile::Builder::new()
                .prefix("coinpay-bench.")
                .tempdir()?,
            users: make_users(&setup_pool, o.users, &tag).await?,
            tag,
            baseline: Orders::default(),
            notify: Orders::default(),
            notify_reqs: Arc::default(),
            svcs: Vec::new(),
            started: t0,
            paid: 0,
            cx: Ctx {
                backend,
                check_pool,
                out: Outcome::default(),
            },
        };
        let wants = |kind: Kind| SCENARIOS.iter().any(|s| s.kind == kind && run.runs(s));
        let (base, notify) = (wants(Kind::DbBaseline), wants(Kind::NotifyPaid));
        let count = |yes: bool, name: &str| if yes { o.load(name).count } else { 0 };
        let warm = |yes: bool| if yes { o.warmup } else { 0 };
        let tag = &run.tag;
        let users = &run.users;
        let notify_rows = count(notify, "notify-paid");
        let base_rows = count(base, "db-baseline") * o.baseline_connections.len();
        run.notify.measured =
            pending_orders(&setup_pool, users, notify_rows, &format!("BN{tag}")).await?;
        run.baseline.measured =
            pending_orders(&setup_pool, users, base_rows, &format!("BD{tag}")).await?;
        run.baseline.warm =
            pending_orders(&setup_pool, users, warm(base), &format!("BW{tag}")).await?;
        run.notify.warm =
            pending_orders(&setup_pool, users, warm(notify), &format!("NW{tag}")).await?;
        drop(setup_pool);
        run.notify_reqs = Arc::new(
            run.notify
                .measured
                .iter()
                .enumerate()
                .map(|(i, r)| notification(r, &format!("42000{tag}{i:014}")))
                .collect(),
        );
        eprintln!(
            "[{backend}] setup: {} users, {} + {} pending orders (+ {} for warm-ups) in {:.1} s",
            o.users,
            run.notify.measured.len(),
            run.baseline.measured.len(),
            run.baseline.warm.len() + run.notify.warm.len(),
            t0.elapsed().as_secs_f64()
        );
        Ok(run)
    }

    fn log(&self) -> std::path::PathBuf {
        self.work.path().join("coinpay.log")
    }

    /// Starts the service's instances and lets them settle; returns the first one's resident
    /// memory then.
    async fn start_service(&mut self) -> Res<u64> {
        for k in 0..self.o.instances {
            let svc = Service::start(self.o, self.db, k, self.work.path(), &self.log())?;
            self.svcs.push(svc);
        }
        tokio::time::sleep(SETTLE).await;
        Ok(self.svc()?.rss_kb())
    }

    fn stop_service(&mut self) {
        for svc in self.svcs.drain(..) {
            svc.stop();
        }
    }

    fn svc(&self) -> Res<&Service> {
        running(&self.svcs)
    }

    /// Runs one scenario if it is selected, records it and checks the books after it.
    async fn one(&mut self, s: &Scenario) -> Res<()> {
        if !self.runs(s) {
            return Ok(());
        }
        let l = self.o.load(s.name);
        if s.kind == Kind::DbBaseline {
            for conc in self.o.baseline_connections.clone() {
                let stats = self.db_baseline(Load { conc, ..l }).await?;
                self.paid += stats.ok as i64;
                self.cx.record(s.name, conc, stats).await;
                self.cx.expect_paid(s.name, self.paid).await;
            }
            return Ok(());
        }
        let stats = match s.kind {
            Kind::DbBaseline => unreachable!("measured above"),
            Kind::NotifyPaid => self.notify_paid(l).await?,
            Kind::NotifyDupLive => {
                let reqs = self.notify_reqs.clone();
                let success: Check = Arc::new(is_success);
                self.svc()?;
                service::load(&self.svcs, self.o, l.conc, reqs, l.count, success).await
            }
            Kind::NotifyDupCold => self.notify_dup_cold(l).await?,
            Kind::CreateOrder => self.create_order(l).await?,
            Kind::Consume => self.consume(l).await?,
        };
        if s.paid == Paid::Adds {
            self.paid += stats.ok as i64;
        }
        self.cx.record(s.name, l.conc, stats).await;
        if s.paid != Paid::NotChecked {
            self.cx.expect_paid(s.name, self.paid).await;
        }
        Ok(())
    }

    /// Straight on a pool of `l.conc` connections of the service's type, before the service
    /// runs, `l.conc` tasks, one transaction per credit (no group commit): the limit of one
    /// commit per payment. Takes the next `l.count` of the baseline's orders (and the warm-up's
    /// orders, the first time).
    async fn db_baseline(&mut self, l: Load) -> Res<Stats> {
        let pool = self.db.connect_batched(l.conc as u32, 1).await?;
        let tag = format!("{}C{}", self.tag, l.conc);
        let tag = &tag;
        let warm = std::mem::take(&mut self.baseline.warm);
        let w = run_db(
            &pool,
            l.conc,
            Arc::new(warm),
            &format!("BU{tag}"),
            self.o.deadline(),
        )
        .await;
        self.paid += self.cx.warmed("db-baseline", w);
        let take = l.count.min(self.baseline.measured.len());
        let rows: Vec<OrderRow> = self.baseline.measured.drain(..take).collect();
        Ok(run_db(
            &pool,
            l.conc,
            Arc::new(rows),
            &format!("BT{tag}"),
            self.o.deadline(),
        )
        .await)
    }

    async fn notify_paid(&mut self, l: Load) -> Res<Stats> {
        let tag = &self.tag;
        let warm_reqs: Vec<Vec<u8>> = self
            .notify
            .warm
            .iter()
            .enumerate()
            .map(|(i, r)| notification(r, &format!("42009{tag}{i:014}")))
            .collect();
        let n_warm = warm_reqs.len();
        let success: Check = Arc::new(is_success);
        let svcs = &self.svcs;
        let svc = running(svcs)?;
        let warm = Arc::new(warm_reqs);
        let w = service::http(svcs, self.o, l.conc, warm, n_warm, success.clone()).await;
        self.paid += self.cx.warmed("notify-paid", w);
        let reqs = self.notify_reqs.clone();
        let n = reqs.len();
        let s = service::load(svcs, self.o, l.conc, reqs, n, success).await;
        let (rss, actors) = (svc.rss_kb(), svc.metric("coinpay_order_actors").await);
        let m = &mut self.cx.out.memory;
        (m.live_kb, m.live_actors) = (rss, actors.unwrap_or(0.0));
        Ok(s)
    }

    /// A restart first: every actor is gone, and each notification starts one that loads its
    /// order.
    async fn notify_dup_cold(&mut self, l: Load) -> Res<Stats> {
        self.stop_service();
        self.cx.out.memory.cold_before_kb = self.start_service().await?;
        let svc = self.svc()?;
        let reqs = self.notify_reqs.clone();
        let n = l.count.min(reqs.len());
        let success: Check = Arc::new(is_success);
        let s = service::load(&self.svcs, self.o, l.conc, reqs, n, success).await;
        let (rss, actors) = (svc.rss_kb(), svc.metric("coinpay_order_actors").await);
        let m = &mut self.cx.out.memory;
        (m.cold_after_kb, m.cold_actors) = (rss, actors.unwrap_or(0.0));
        Ok(s)
    }

    /// Logged-in users (created through the simulator's jscode2session) creating orders.
    async fn create_order(&mut self, l: Load) -> Res<Stats> {
        let svc = self.svc()?;
        let n_users = l.count.min(200);
        let mut reqs = Vec::with_capacity(n_users);
        for i in 0..n_users {
            let login = json!({ "code": format!("bench-user-{i}") });
            let r = call_once(
                &svc.addr,
                &json_request("/api/v1/client/auth/login", None, &login),
            )
            .await?;
            let v = expect_ok("login", &r)?;
            let token = v["token"].as_str().ok_or("no token")?.to_string();
            reqs.push(json_request(
                "/api/v1/client/coin/recharge/order",
                Some(&token),
                &json!({ "package_id": 1 }),
            ));
        }
        let check: Check = Arc::new(|r: &Reply| {
            r.status == 200
                && serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| {
                    v["status"] == "pending" && v["pay_params"]["package"].is_string()
                })
        });
        Ok(service::load(&self.svcs, self.o, l.conc, Arc::new(reqs), l.count, check).await)
    }

    /// Every user needs balance for their share: topped up through the admin API if not.
    async fn consume(&mut self, l: Load) -> Res<Stats> {
        let svc = self.svc()?;
        let (tag, user_ids) = (&self.tag, &self.users);
        let per_user = l.count.div_ceil(user_ids.len()) as i64;
        let balances: HashMap<i64, i64> = users::balances(&self.cx.check_pool)
            .await?
            .into_iter()
            .map(|(id, balance)| (id, balance.0))
            .collect();
        for (k, uid) in user_ids.iter().enumerate() {
            let have = balances.get(uid).copied().unwrap_or(0);
            if have < per_user {
                let body = json!({
                    "user_id": uid, "delta": per_user - have,
                    "request_id": format!("bench-topup-{tag}-{k}"), "reason": "bench top-up",
                });
                let r = call_once(
                    &svc.addr,
                    &json_request("/api/v1/admin/balance/adjust", Some(ADMIN_TOKEN), &body),
                )
                .await?;
                expect_ok("top-up", &r)?;
            }
        }
        let reqs: Vec<Vec<u8>> = (0..l.count)
            .map(|i| {
                let body = json!({
                    "user_id": user_ids[i % user_ids.len()], "amount": 1,
                    "request_id": format!("bench-{tag}-{i:09}"), "reason": "bench",
                });
                json_request("/api/v1/internal/coin/consume", Some(INTERNAL_TOKEN), &body)
            })
            .collect();
        let check: Check = Arc::new(|r: &Reply| {
            r.status == 200
                && serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["replayed"] == false)
        });
        Ok(service::load(&self.svcs, self.o, l.conc, Arc::new(reqs), l.count, check).await)
    }

    /// Stops the service; an ERROR line in its log fails the run (the log is kept).
    fn finish(mut self) -> Outcome {
        let backend = self.cx.backend;
        self.stop_service();
        let log = self.log();
        let errors_in_log = std::fs::read_to_string(&log)
            .map(|s| s.lines().filter(|l| l.contains(" ERROR ")).count())
            .unwrap_or(0);
        if errors_in_log > 0 {
            let log_copy =
                std::env::temp_dir().join(format!("coinpay-bench-{backend}-{}.log", self.tag));
            let _ = std::fs::copy(&log, &log_copy);
            self.cx.out.other_failures += 1;
            self.cx.out.failures.push(format!(
                "{backend}: the service logged {errors_in_log} ERROR lines (log kept in {})",
                log_copy.display()
            ));
        }
        eprintln!(
            "[{backend}] done in {:.1} s",
            self.started.elapsed().as_secs_f64()
        );
        self.cx.out
    }
}

fn running(svcs: &[Service]) -> Res<&Service> {
    svcs.first()
        .ok_or_else(|| err("the service is not running"))
}

/// The JSON body of a 200 reply to a setup request, or the error it is.
fn expect_ok(what: &str, r: &Reply) -> Res<Value> {
    if r.status != 200 {
        return Err(err(format!(
            "{what}: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )));
    }
    Ok(serde_json::from_slice(&r.body)?)
}
