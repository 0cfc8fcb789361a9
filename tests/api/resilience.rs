//! The sweeper, order numbers with and without Redis, restarts and several instances.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;
use coinpay::metrics::Metrics;
use coinpay::order::number::OrderNumbers;
use coinpay::redis::redis_pool;
use coinpay::store::orders::{self, OrderFilter};
use futures_util::future::join_all;

const WAIT: Duration = Duration::from_secs(30);

async fn all_orders(db: &TestDb) -> Vec<orders::OrderRow> {
    let pool = db.pool().await;
    orders::list(&pool, &OrderFilter::default(), 0, 10_000)
        .await
        .expect("orders")
        .0
}

backend_test!(sweeper_expires_unpaid_orders_and_recovers_paid_ones);
async fn sweeper_expires_unpaid_orders_and_recovers_paid_ones(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db).fast_sweeper().spawn();
    let (token, _) = app.login("sweep-user").await;
    let unpaid = app.order_no(&token, 1).await;
    let silent = app.order_no(&token, 2).await;
    // Paid at WeChat, but the notification never comes: only orderquery can find it.
    let r = app.sandbox_pay(&silent, "notify=false").await;
    assert_eq!(r.status, 200, "{}", r.text());

    wait_until("sweeper settles both orders", WAIT, || async {
        app.order(&token, &unpaid).await["status"] == "expired"
            && app.order(&token, &silent).await["status"] == "paid"
    })
    .await;
    assert_eq!(app.balance(&token).await, 330);
    let sim = app.sim_order("/sandbox", &unpaid).await;
    assert_eq!(
        sim["trade_state"], "CLOSED",
        "expired orders are closed at WeChat: {sim}"
    );
    let logs = app.logs();
    assert!(logs.contains("sweep finished"), "{logs}");
    assert!(
        logs.contains("recovered_paid=1"),
        "the run reports what it recovered"
    );
    let m = app.metrics().await;
    assert_sample(&m, "coinpay_sweeper_lease_held", 1.0);
    assert_sample(&m, "coinpay_orders_total{event=\"expired\"}", 1.0);
    db.assert_invariants().await;
}

/// A trigger that makes every recharge ledger row fail to insert: a genuine storage error
/// inside a notification's transaction, in the backend's own dialect.
fn refuse_recharge_rows(backend: &Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "CREATE TRIGGER coinpay_test_fault BEFORE INSERT ON compute_logs \
             WHEN NEW.kind = 'recharge' \
             BEGIN SELECT RAISE(ABORT, 'injected storage fault'); END"
        }
        Backend::Mysql(_) => {
            "CREATE TRIGGER coinpay_test_fault BEFORE INSERT ON compute_logs FOR EACH ROW \
             IF NEW.kind = 'recharge' THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected storage fault'; END IF"
        }
    }
}

const FAIL_REPLY: &str = "<return_code><![CDATA[FAIL]]></return_code>";

backend_test!(a_notification_whose_transaction_fails_is_refused_then_credited_once_on_the_retry);
/// A notification is acknowledged only after its transaction commits: when the database refuses
/// the credit, the answer is FAIL and nothing changes, on a live actor and on one that loads its
/// order after a restart. Once the fault is gone, WeChat's retries credit each order once.
async fn a_notification_whose_transaction_fails_is_refused_then_credited_once_on_the_retry(
    backend: Backend,
) {
    let db = TestDb::new(&backend).await;
    let first = app(&db).spawn();
    let (token, _) = first.login("storage-fault").await;
    let mut nos = Vec::new();
    for _ in 0..2 {
        nos.push(first.order_no(&token, 1).await);
    }
    let bodies: Vec<Vec<u8>> = nos
        .iter()
        .enumerate()
        .map(|(i, no)| {
            notification(
                no,
                &format!("42000000000000000000000066{i:02}"),
                600,
                |_| {},
            )
        })
        .collect();
    db.execute(refuse_recharge_rows(&backend)).await;

    // The first order's actor is alive (it has just made the order).
    let r = first.notify_raw(&bodies[0], &[]).await;
    assert!(
        r.text().contains(FAIL_REPLY),
        "{}: {}",
        backend.name(),
        r.text()
    );
    let m = first.metrics().await;
    assert_sample(
        &m,
        "coinpay_notifications_total{outcome=\"storage_error\"}",
        1.0,
    );
    drop(first);

    // After a restart no actor is alive: the second order's is started and loads it.
    let app = app(&db).spawn();
    let r = app.notify_raw(&bodies[1], &[]).await;
    assert!(
        r.text().contains(FAIL_REPLY),
        "{}: {}",
        backend.name(),
        r.text()
    );
    assert_eq!(
        app.balance(&token).await,
        0,
        "a refused credit changes no balance"
    );
    for no in &nos {
        let o = app.order(&token, no).await;
        assert_eq!(o["status"], "pending", "{o}");
        assert!(o["transaction_id"].is_null(), "{o}");
    }
    let logs = app
        .get("/api/v1/client/coin/logs", Some(&token))
        .await
        .json();
    assert_eq!(logs["total"], 0, "{logs}");
    db.assert_invariants().await;

    // The fault is repaired; WeChat retries (twice each): one credit per order.
    db.execute("DROP TRIGGER coinpay_test_fault").await;
    for body in bodies.iter().chain(bodies.iter()) {
        assert_eq!(app.notify_raw(body, &[]).await.text(), SUCCESS);
    }
    assert_eq!(app.balance(&token).await, 2 * 60);
    for no in &nos {
        assert_eq!(app.order(&token, no).await["status"], "paid");
    }
    let logs = app
        .get("/api/v1/client/coin/logs", Some(&token))
        .await
        .json();
    assert_eq!(logs["total"], 2, "{logs}");
    let m = app.metrics().await;
    for (series, n) in [
        (
            "coinpay_notifications_total{outcome=\"storage_error\"}",
            1.0,
        ),
        ("coinpay_notifications_total{outcome=\"ok\"}", 2.0),
        ("coinpay_notifications_total{outcome=\"duplicate\"}", 2.0),
    ] {
        assert_sample(&m, series, n);
    }
    db.assert_invariants().await;
}

/// The (api, out_trade_no) of every pay API call the simulator received, from its JSON log.
fn sim_calls(logs: &str) -> Vec<(String, String)> {
    log_events(logs, "sandbox pay call")
        .iter()
        .map(|f| {
            let field = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (field("api"), field("out_trade_no"))
        })
        .collect()
}

backend_test!(the_sweeper_leaves_an_order_being_paid_pending_and_never_closes_it);
/// While the user is paying, orderquery answers USERPAYING: the sweeper leaves the order pending
/// and does not close it (that would break the payment under way). An unpaid order swept beside
/// it is closed, which shows that a closeorder would be seen.
async fn the_sweeper_leaves_an_order_being_paid_pending_and_never_closes_it(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db).fast_sweeper().env("LOG_FORMAT", "json").spawn();
    let (token, _) = app.login("user-paying").await;
    let paying = app.order_no(&token, 1).await;
    let unpaid = app.order_no(&token, 1).await;
    let r = app.sandbox_pay(&paying, "userpaying=true").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["trade_state"], "USERPAYING");

    wait_until("the unpaid order expired", WAIT, || async {
        app.order(&token, &unpaid).await["status"] == "expired"
    })
    .await;
    // Two more complete sweeps, each of which finds the order being paid overdue.
    let runs = || async {
        let m = app.metrics().await;
        sample(&m, "coinpay_sweeper_runs_total{outcome=\"ok\"}").unwrap_or(0.0)
    };
    let runs_then = runs().await;
    wait_until("two more sweeps", WAIT, || async {
        runs().await >= runs_then + 2.0
    })
    .await;
    assert_eq!(app.order(&token, &paying).await["status"], "pending");
    assert_eq!(
        app.sim_order("/sandbox", &paying).await["trade_state"],
        "USERPAYING"
    );
    let m = app.metrics().await;
    let left = sample(&m, "coinpay_sweeper_orders_total{outcome=\"left_pending\"}");
    assert!(
        left.is_some_and(|n| n >= 2.0),
        "left pending: {left:?}\n{m}"
    );
    let calls = sim_calls(&app.logs());
    let called = |api: &str, no: &str| calls.iter().any(|(a, n)| a == api && n == no);
    assert!(called("orderquery", &paying), "asked about it: {calls:?}");
    assert!(
        called("closeorder", &unpaid),
        "closed the unpaid one: {calls:?}"
    );
    assert!(
        !called("closeorder", &paying),
        "closeorder sent for an order being paid: {calls:?}"
    );

    // The user finishes paying: it is credited once.
    assert_eq!(app.sandbox_pay(&paying, "").await.status, 200);
    wait_balance(&app, &token, 60).await;
    assert_eq!(app.order(&token, &paying).await["status"], "paid");
    db.assert_invariants().await;
}

async fn numbers_from_four_tasks(
    n: &OrderNumbers,
    each: usize,
    stop_after: Option<(usize, Box<dyn FnOnce() + Send>)>,
) -> Vec<String> {
    let mut stop = stop_after;
    let mut all = Vec::with_capacity(each * 4);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let n = n.clone();
            tokio::spawn(async move {
                let mut v = Vec::with_capacity(each);
                for _ in 0..each {
                    v.push(n.next().await);
                }
                v
            })
        })
        .collect();
    if let Some((after_ms, f)) = stop.take() {
        tokio::time::sleep(Duration::from_millis(after_ms as u64)).await;
        f();
    }
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all
}

fn assert_unique_and_valid(v: &[String]) {
    let set: HashSet<&String> = v.iter().collect();
    assert_eq!(set.len(), v.len(), "duplicate order numbers");
    for no in v {
        assert!(
            (6..=32).contains(&no.len())
                && no
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{no} is not a valid out_trade_no"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_order_numbers_without_redis() {
    let n = OrderNumbers::new(None, None, Arc::new(Metrics::new()));
    let v = numbers_from_four_tasks(&n, 2_500, None).await;
    assert_eq!(v.len(), 10_000);
    assert_unique_and_valid(&v);
}

/// A Redis of this test's own, so stopping it disturbs no other test.
struct OwnRedis {
    script: String,
    dir: String,
    port: u16,
}
impl OwnRedis {
    fn start() -> Option<OwnRedis> {
        redis()?;
        let script = std::env::var("COINPAY_SERVICES_SCRIPT").ok()?;
        let base =
            std::env::var("SVC_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string());
        let r = OwnRedis {
            script,
            dir: format!("{base}/numbers-redis-{}", std::process::id()),
            port: free_port(),
        };
        r.run("start-redis");
        Some(r)
    }
    fn run(&self, cmd: &str) {
        let st = std::process::Command::new("bash")
            .arg(&self.script)
            .arg(cmd)
            .env("SVC_DIR", &self.dir)
            .env("REDIS_PORT", self.port.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("services script");
        assert!(st.success(), "{cmd} failed");
    }
}
impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.run("clean");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_order_numbers_with_redis_and_redis_dying_midway() {
    let Some(own) = OwnRedis::start() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}/0", own.port);
    let metrics = Arc::new(Metrics::new());
    let n = OrderNumbers::new(
        Some(redis_pool(&url).expect("pool")),
        Some("tst1"),
        metrics.clone(),
    );
    let v = numbers_from_four_tasks(&n, 2_500, None).await;
    assert_unique_and_valid(&v);
    assert!(v.iter().all(|no| !no.contains('X')), "all from Redis INCR");
    // Sorted by time: Redis numbers are stamp + day counter.
    let mut sorted = v.clone();
    sorted.sort();
    assert_eq!(
        sorted.first().map(|s| &s[..10]),
        v.first().map(|s| &s[..10])
    );

    // Now Redis goes away while numbers are being made.
    let stopper = {
        let script = own.script.clone();
        let dir = own.dir.clone();
        let port = own.port;
        Box::new(move || {
            let _ = std::process::Command::new("bash")
                .arg(&script)
                .arg("stop-redis")
                .env("SVC_DIR", &dir)
                .env("REDIS_PORT", port.to_string())
                .stdout(std::process::Stdio::null())
                .status();
        }) as Box<dyn FnOnce() + Send>
    };
    let w = numbers_from_four_tasks(&n, 2_500, Some((30, stopper))).await;
    let mut both = v.clone();
    both.extend(w.iter().cloned());
    assert_unique_and_valid(&both);
    assert!(
        w.iter().any(|no| no.contains("Xtst1")),
        "fell back to the local scheme"
    );
    let fallbacks =
        sample(&metrics.encode(), "coinpay_order_number_fallbacks_total").unwrap_or(0.0);
    assert!(fallbacks >= 1.0, "fallbacks counted: {fallbacks}");
}

backend_test!(kill_minus_nine_loses_no_payment);
async fn kill_minus_nine_loses_no_payment(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let sim = standalone_sandbox("0.002");
    let port = free_port();
    // Orders are overdue at once, so the restarted sweeper asks WeChat about the silent ones.
    let mut app1 = app(&db)
        .against(&sim, port)
        .env("ORDER_EXPIRE_SECONDS", "1")
        .spawn();
    let (token, _) = app1.login("restart-user").await;
    let mut nos = Vec::new();
    for _ in 0..12 {
        nos.push(app1.order_no(&token, 1).await);
    }
    // Pay everything at "WeChat": most notify (with duplicates), some never notify.
    let pays = join_all(nos.iter().enumerate().map(|(i, no)| {
        let q = if i % 4 == 0 {
            "notify=false"
        } else {
            "duplicates=2"
        };
        sim.sim_pay("", no, q)
    }))
    .await;
    assert!(pays.iter().all(|r| r.status == 200));
    app1.kill9();

    // Back up, with the sweeper on, on the same port; WeChat's retries find it again.
    let app2 = app(&db).against(&sim, port).fast_sweeper().spawn();
    wait_until("every paid order credited", WAIT, || async {
        app2.balance(&token).await == 12 * 60
    })
    .await;
    let rows = all_orders(&db).await;
    assert!(
        rows.iter()
            .all(|o| o.status == coinpay::order::state::OrderStatus::Paid),
        "{rows:?}"
    );
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app2.balance(&token).await, 720);
    db.assert_invariants().await;
}

async fn lease_held(app: &App) -> bool {
    sample(&app.metrics().await, "coinpay_sweeper_lease_held") == Some(1.0)
}

#[actix_web::test]
async fn two_instances_sweep_one_at_a_time_and_hand_over() {
    let Some(backend) = mysql() else { return };
    let db = TestDb::new(&backend).await;
    let sim = standalone_sandbox("0.002");
    let (pa, pb) = (free_port(), free_port());
    let cfg = |b: AppBuilder| {
        b.env("ORDER_EXPIRE_SECONDS", "1")
            .env("ORDER_SWEEP_CRON", "* * * * * *")
            .env("ORDER_SWEEP_LEASE_SECONDS", "5")
    };
    let mut a = cfg(app(&db).against(&sim, pa))
        .env("INSTANCE_ID", "aaaa")
        .spawn();
    let mut b = cfg(app(&db).against(&sim, pb))
        .env("INSTANCE_ID", "bbbb")
        .spawn();
    let (token, _) = a.login("lease-user").await;
    let mut unpaid = Vec::new();
    let mut silent = Vec::new();
    for i in 0..8 {
        let no = a.order_no(&token, 1).await;
        if i % 2 == 0 {
            sim.sim_pay("", &no, "notify=false").await;
            silent.push(no);
        } else {
            unpaid.push(no);
        }
    }
    // Exactly one of them holds the lease, sample after sample.
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..5 {
        let (ha, hb) = (lease_held(&a).await, lease_held(&b).await);
        assert!(ha ^ hb, "exactly one sweeps: a={ha} b={hb}");
        actix_rt::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until("orders settled", WAIT, || async {
        a.balance(&token).await == 4 * 60
    })
    .await;

    // Kill the sweeping one: the other takes over within one lease period.
    let a_was_holder = lease_held(&a).await;
    let (holder, other) = if a_was_holder {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    holder.kill9();
    let t = Instant::now();
    // More overdue orders for the survivor to handle.
    let late_no = other.order_no(&token, 1).await;
    sim.sim_pay("", &late_no, "notify=false").await;
    wait_until("lease handed over", Duration::from_secs(10), || async {
        lease_held(other).await
    })
    .await;
    assert!(
        t.elapsed() <= Duration::from_secs(5 + 2),
        "handover took {:?}",
        t.elapsed()
    );
    wait_until("survivor recovers the new payment", WAIT, || async {
        other.balance(&token).await == 5 * 60
    })
    .await;

    // Nothing expired that WeChat considers paid; nothing paid that WeChat does not.
    for o in all_orders(&db).await {
        let s = sim.sim_order("", &o.order_no).await;
        match o.status.as_str() {
            "expired" => assert_ne!(
                s["trade_state"], "SUCCESS",
                "{} expired but paid",
                o.order_no
            ),
            "paid" => assert_eq!(s["trade_state"], "SUCCESS"),
            other => panic!("order {} left {other}", o.order_no),
        }
    }
    db.assert_invariants().await;
}

/// Kills every connection the service holds to the database (as MariaDB does on a restart or
/// `wait_timeout`), from a connection of the same user.
async fn kill_service_connections(db: &TestDb) -> usize {
    use diesel::sql_types::BigInt;
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let mut c = AsyncMysqlConnection::establish(&db.url)
        .await
        .expect("connect");
    let ids: Vec<Id> = diesel::sql_query(
        "SELECT CAST(id AS SIGNED) AS id FROM information_schema.processlist \
         WHERE db = DATABASE() AND id <> CONNECTION_ID()",
    )
    .load(&mut c)
    .await
    .expect("processlist");
    for Id { id } in &ids {
        // A connection may be gone already.
        let _ = c.batch_execute(&format!("KILL CONNECTION {id}")).await;
    }
    ids.len()
}

/// Connections killed under the service (a database restart) cost no request: each checkout
/// finds a dead connection by its check — `SELECT 1`, or the first read of a notification for
/// an order without a live actor — and moves on to a fresh one.
#[actix_web::test]
async fn killed_database_connections_cost_no_request() {
    let Some(backend) = mysql() else { return };
    let db = TestDb::new(&backend).await;
    let app = app(&db)
        .env("ORDER_ACTOR_IDLE_SECONDS", "1")
        .env("ORDER_ACTOR_LINGER_SECONDS", "1")
        .env("DB_POOL_SIZE", "4")
        .spawn();
    let (token, _) = app.login("killed-connections").await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(app.order_no(&token, 1).await);
    }
    wait_until("actors stop", WAIT, || async {
        live_actors(&app.metrics().await) == 0.0
    })
    .await;

    for (i, no) in orders.iter().enumerate() {
        assert!(
            kill_service_connections(&db).await > 0,
            "the service holds connections"
        );
        let body = notification(
            no,
            &format!("42000000000000000000000090{i:02}"),
            600,
            |_| {},
        );
        assert_eq!(
            app.notify_raw(&body, &[]).await.text(),
            SUCCESS,
            "notification {i}"
        );
        assert!(kill_service_connections(&db).await > 0);
        assert_eq!(app.balance(&token).await, 60 * (i as i64 + 1));
    }
    db.assert_invariants().await;
}

/// MySQL connections go to callers in the order they asked: one that keeps asking again right
/// after giving its connection back does not starve one already waiting (bb8 alone let it).
#[actix_web::test]
async fn mysql_connections_are_handed_out_in_arrival_order() {
    use std::cell::Cell;

    use coinpay::store::DbPool;
    use diesel_async::SimpleAsyncConnection;
    let Some(backend) = mysql() else { return };
    let db = TestDb::new(&backend).await;
    let pool = db.connect(1).await.expect("pool");
    let DbPool::Mysql(p) = &pool else {
        panic!("a MySQL URL gives a MySQL pool")
    };
    drop(p.get().await.expect("first connection"));

    let rounds = Cell::new(0usize);
    let greedy = async {
        for _ in 0..200 {
            let mut c = p.get().await.expect("greedy get");
            c.batch_execute("DO 1").await.expect("query");
            drop(c);
            rounds.set(rounds.get() + 1);
        }
    };
    let waiting = async {
        let _c = p.get().await.expect("waiting get");
        rounds.get()
    };
    let ((), served_after) = futures_util::future::join(greedy, waiting).await;
    assert!(
        served_after <= 2,
        "the waiting caller was served only after {served_after} rounds of a later one"
    );
}
