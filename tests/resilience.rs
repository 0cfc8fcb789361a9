//! The sweeper, order numbers with and without Redis, restarts and several instances.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coinpay::metrics::Metrics;
use coinpay::order::number::OrderNumbers;
use coinpay::redis::redis_pool;
use coinpay::store::orders::{self, OrderFilter};
use common::*;
use futures_util::future::join_all;

const WAIT: Duration = Duration::from_secs(30);

async fn all_orders(db: &TestDb) -> Vec<orders::OrderRow> {
    let pool = db.pool().await;
    orders::list(&pool, &OrderFilter::default(), 0, 10_000)
        .await
        .expect("orders")
        .0
}

#[actix_web::test]
async fn sweeper_expires_unpaid_orders_and_recovers_paid_ones() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let app = app(&db).fast_sweeper().spawn();
        let (token, _) = app.login("sweep-user").await;
        let unpaid = app.create_order(&token, 1).await["order_no"]
            .as_str()
            .expect("no")
            .to_string();
        let silent = app.create_order(&token, 2).await["order_no"]
            .as_str()
            .expect("no")
            .to_string();
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
        assert_eq!(sample(&m, "coinpay_sweeper_lease_held"), Some(1.0), "{m}");
        assert_eq!(
            sample(&m, "coinpay_orders_total{event=\"expired\"}"),
            Some(1.0),
            "{m}"
        );
        db.assert_invariants().await;
    }
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

#[actix_web::test]
async fn kill_minus_nine_loses_no_payment() {
    for backend in backends() {
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
            nos.push(
                app1.create_order(&token, 1).await["order_no"]
                    .as_str()
                    .expect("no")
                    .to_string(),
            );
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
}

async fn lease_held(app: &App) -> bool {
    sample(&app.metrics().await, "coinpay_sweeper_lease_held") == Some(1.0)
}

#[actix_web::test]
async fn two_instances_sweep_one_at_a_time_and_hand_over() {
    let Some(url) = mysql_only() else { return };
    let db = TestDb::new(&Backend::Mysql(url)).await;
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
        let no = a.create_order(&token, 1).await["order_no"]
            .as_str()
            .expect("no")
            .to_string();
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
    let late_no = other.create_order(&token, 1).await["order_no"]
        .as_str()
        .expect("no")
        .to_string();
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
    let Some(url) = mysql_only() else { return };
    let db = TestDb::new(&Backend::Mysql(url)).await;
    let app = app(&db)
        .env("ORDER_ACTOR_IDLE_SECONDS", "1")
        .env("ORDER_ACTOR_LINGER_SECONDS", "1")
        .env("DB_POOL_SIZE", "4")
        .spawn();
    let (token, _) = app.login("killed-connections").await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let o = app.create_order(&token, 1).await;
        orders.push(o["order_no"].as_str().expect("no").to_string());
    }
    let live = |m: String| sample(&m, "coinpay_order_actors").unwrap_or(-1.0);
    wait_until("actors stop", WAIT, || async {
        live(app.metrics().await) == 0.0
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
    let Some(url) = mysql_only() else { return };
    let db = TestDb::new(&Backend::Mysql(url)).await;
    let pool = DbPool::connect(&db.url, 1).await.expect("pool");
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
