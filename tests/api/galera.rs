//! Two coinpay instances on a three-node MariaDB Galera cluster (scripts/galera.sh, started by
//! scripts/test.sh): duplicate deliveries through both instances while a node is killed and
//! rejoins, 64 concurrent copies of one notification, and the sweeper lease across the cluster.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::helpers::*;

/// The three node URLs, or None (the test skips) outside scripts/test.sh.
fn cluster() -> Option<Vec<String>> {
    match std::env::var("COINPAY_TEST_GALERA_URLS") {
        Ok(v) if !v.trim().is_empty() => Some(v.split_whitespace().map(String::from).collect()),
        _ if std::env::var("COINPAY_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("COINPAY_TEST_GALERA_URLS is not set: run the suite with scripts/test.sh")
        }
        _ => {
            eprintln!("SKIPPING: COINPAY_TEST_GALERA_URLS is not set (run scripts/test.sh)");
            None
        }
    }
}

fn galera(args: &[&str]) {
    let script = std::env::var("COINPAY_GALERA_SCRIPT")
        .unwrap_or_else(|_| format!("{}/scripts/galera.sh", env!("CARGO_MANIFEST_DIR")));
    let st = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("galera script");
    assert!(st.success(), "galera.sh {args:?} failed");
}

/// A fresh database on the cluster; (one URL per node, the multi-host URL in node order a,b,c).
async fn fresh_database(nodes: &[String], tag: &str) -> (Vec<String>, impl Fn(&[usize]) -> String) {
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
    let name = format!("coinpay_g{tag}_{}", std::process::id());
    let mut c = AsyncMysqlConnection::establish(&nodes[0])
        .await
        .expect("connect to node 1");
    c.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .await
    .expect("create database");
    let per_node: Vec<String> = nodes
        .iter()
        .map(|u| format!("{}/{name}", u.rsplit_once('/').expect("path").0))
        .collect();
    let hosts: Vec<String> = nodes
        .iter()
        .map(|u| {
            let after_at = u.rsplit_once('@').expect("userinfo").1;
            after_at.split('/').next().expect("host").to_string()
        })
        .collect();
    let prefix = nodes[0].rsplit_once('@').expect("userinfo").0.to_string();
    let multi = move |order: &[usize]| {
        let hs: Vec<&str> = order.iter().map(|&i| hosts[i].as_str()).collect();
        format!("{prefix}@{}/{name}", hs.join(","))
    };
    (per_node, multi)
}

async fn assert_node_invariants(node_url: &str) -> (i64, i64) {
    let url: coinpay::config::DbUrl = node_url.parse().expect("a node URL");
    let pool = DbPool::connect(&url, 2).await.expect("pool");
    let v = crate::harness::invariant_violations(&pool)
        .await
        .expect("invariant query");
    assert!(
        v.is_empty(),
        "ledger invariant violated on {node_url}: {v:#?}"
    );
    let rows = coinpay::store::orders::list(
        &pool,
        &coinpay::store::orders::OrderFilter::default(),
        0,
        10_000,
    )
    .await
    .expect("orders")
    .0;
    let paid = rows
        .iter()
        .filter(|o| o.status == coinpay::order::state::OrderStatus::Paid)
        .count() as i64;
    (rows.len() as i64, paid)
}

/// The id of the 6-yuan, 60-coin package. On Galera the seeded ids are not 1, 2, 3...: each
/// node hands out its own auto-increment offset (`wsrep_auto_increment_control`), so they
/// depend on the node the migration ran on.
async fn sixty_coins(app: &App) -> i64 {
    let r = app.get("/api/v1/client/coin/packages", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["price_fen"] == 600 && p["total_coins"] == 60)
        .and_then(|p| p["id"].as_i64())
        .unwrap_or_else(|| panic!("no 6-yuan package in {}", r.text()))
}

/// One test at a time takes nodes out of the cluster: two at once could leave it without a
/// primary component.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `sql` on node `url` as the test user.
async fn on_node(url: &str, sql: &str) {
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
    let mut c = AsyncMysqlConnection::establish(url)
        .await
        .expect("connect to the node");
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `wsrep_cluster_status` of node `url` (`Primary`, `non-Primary`).
async fn cluster_status(url: &str) -> String {
    use diesel::sql_types::Text;
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Status {
        #[diesel(sql_type = Text)]
        value: String,
    }
    let Ok(mut c) = AsyncMysqlConnection::establish(url).await else {
        return "down".into();
    };
    diesel::sql_query(
        "SELECT VARIABLE_VALUE AS value FROM information_schema.GLOBAL_STATUS \
         WHERE VARIABLE_NAME = 'WSREP_CLUSTER_STATUS'",
    )
    .get_result::<Status>(&mut c)
    .await
    .map(|s| s.value)
    .unwrap_or_else(|e| format!("? ({e})"))
}

/// Lets an isolated node rejoin should the test fail before it does so itself: left cut off, it
/// would leave the next test's cluster one node short of a primary component when it kills one.
struct Unisolate(String);

impl Drop for Unisolate {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let url = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(on_node(
                &url,
                "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'",
            ));
            galera(&["wait-synced", "3"]);
        })
        .join();
    }
}

/// A node cut off from the others (`gmcast.isolate`) drops out of the primary component but
/// stays up: it still answers `SELECT 1` and refuses every query on a table. The instance
/// whose first node it is must drop its connections to it and carry on on the others, with
/// every notification acknowledged; the node then rejoins and holds the same books.
#[actix_web::test]
async fn a_node_out_of_the_primary_component_gets_no_work() {
    let Some(nodes) = cluster() else { return };
    let _alone = CLUSTER.lock().await;
    let (per_node, multi) = fresh_database(&nodes, "iso").await;
    let db = TestDb::new(&Backend::Sqlite).await; // only for the builder's defaults
    let app = app(&db)
        .env("DATABASE_URL", &multi(&[2, 0, 1]))
        .env("DB_POOL_SIZE", "4")
        .spawn();
    let (token, _) = app.login("isolated-node-user").await;
    let package = sixty_coins(&app).await;
    let mut bodies = Vec::new();
    for k in 0..12 {
        let no = app.order_no(&token, package).await;
        bodies.push(notification(
            &no,
            &format!("4200000000000000000{k:09}"),
            600,
            |_| {},
        ));
    }
    // Warm: the pool's connections are all on node 3.
    for body in &bodies[..4] {
        assert_eq!(app.notify_raw(body, &[]).await.text(), SUCCESS);
    }

    on_node(
        &per_node[2],
        "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'",
    )
    .await;
    let _rejoin = Unisolate(per_node[2].clone());
    wait_until(
        "node 3 leaves the primary component",
        Duration::from_secs(60),
        || async { cluster_status(&per_node[2]).await == "non-Primary" },
    )
    .await;
    for body in &bodies[4..] {
        let r = app.notify_raw(body, &[]).await;
        assert_eq!(
            r.text(),
            SUCCESS,
            "acknowledged with node 3 out of the cluster; the service's warnings:\n{}",
            app.logs()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(app.balance(&token).await, 12 * 60);

    on_node(
        &per_node[2],
        "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'",
    )
    .await;
    galera(&["wait-synced", "3"]);
    for url in &per_node {
        assert_eq!(assert_node_invariants(url).await, (12, 12), "on {url}");
    }
}

async fn lease_held(app: &App) -> bool {
    sample(&app.metrics().await, "coinpay_sweeper_lease_held") == Some(1.0)
}

#[actix_web::test]
async fn two_instances_on_a_galera_cluster_lose_a_node_and_nothing_goes_wrong() {
    let Some(nodes) = cluster() else { return };
    let _alone = CLUSTER.lock().await;
    let (per_node, multi) = fresh_database(&nodes, "storm").await;
    let sim = standalone_sandbox("0.002");
    let (pa, pb) = (free_port(), free_port());
    let cfg = |b: AppBuilder, url: String, id: &str| {
        b.env("DATABASE_URL", &url)
            .env("INSTANCE_ID", id)
            .env("ORDER_SWEEP_CRON", "* * * * * *")
            .env("ORDER_SWEEP_LEASE_SECONDS", "5")
    };
    // Both start at once, on different nodes: their migrations race across the cluster.
    let db = TestDb::new(&Backend::Sqlite).await; // only for the builder's defaults
    let (ua, ub) = (multi(&[0, 1, 2]), multi(&[1, 2, 0]));
    let (ba, bb) = (
        cfg(app(&db).against(&sim, pa), ua, "inst-a"),
        cfg(app(&db).against(&sim, pb), ub, "inst-b"),
    );
    let ta = std::thread::spawn(move || ba.spawn());
    let tb = std::thread::spawn(move || bb.spawn());
    let mut a = ta.join().expect("instance a");
    let mut b = tb.join().expect("instance b");
    let package = sixty_coins(&a).await;

    // The storm: each notification delivered twice at once, once through each instance; node 2
    // (instance b's) killed -9 halfway and started again.
    let users = 4;
    let per_user = 10;
    let mut tokens = Vec::new();
    let mut bodies = Vec::new();
    for u in 0..users {
        let (token, _) = a.login(&format!("galera-user-{u}")).await;
        for k in 0..per_user {
            let via = if k % 2 == 0 { &a } else { &b };
            let no = via.create_order(&token, package).await["order_no"]
                .as_str()
                .expect("no")
                .to_string();
            bodies.push(notification(
                &no,
                &format!("42000000000000000{u:03}{k:08}"),
                600,
                |_| {},
            ));
        }
        tokens.push(token);
    }
    let mut acked = vec![false; bodies.len()];
    let half = bodies.len() / 2;
    for (i, body) in bodies.iter().enumerate() {
        if i == half {
            galera(&["kill", "2"]);
        }
        let (ra, rb) = futures_util::future::join(
            actix_rt::time::timeout(Duration::from_secs(20), a.notify_raw(body, &[])),
            actix_rt::time::timeout(Duration::from_secs(20), b.notify_raw(body, &[])),
        )
        .await;
        acked[i] = [ra, rb]
            .into_iter()
            .any(|r| r.is_ok_and(|r| r.text() == SUCCESS));
    }
    let during = acked.iter().filter(|x| **x).count();
    eprintln!("acknowledged during the storm: {during}/{}", bodies.len());
    let rejoin = std::thread::spawn(|| {
        galera(&["start-node", "2"]);
        galera(&["wait-synced", "2"]);
    });
    // WeChat redelivers what was not acknowledged; every paid order ends up credited once.
    for body in &bodies {
        wait_until(
            "redelivery acknowledged",
            Duration::from_secs(60),
            || async { b.notify_raw(body, &[]).await.text() == SUCCESS },
        )
        .await;
    }
    for t in &tokens {
        assert_eq!(a.balance(t).await, per_user * 60);
        assert_eq!(b.balance(t).await, per_user * 60);
    }

    // 64 concurrent copies of one notification through both instances: one credit.
    let (token, _) = a.login("galera-64").await;
    let no = a.create_order(&token, package).await["order_no"]
        .as_str()
        .expect("no")
        .to_string();
    let body = notification(&no, "4200000000000000000000064064", 600, |_| {});
    let replies = join_all((0..64).map(|k| {
        let target = if k % 2 == 0 { &a } else { &b };
        target.notify_raw(&body, &[])
    }))
    .await;
    let fails = replies.iter().filter(|r| r.text() != SUCCESS).count();
    assert_eq!(
        fails,
        0,
        "every copy is acknowledged (conflicts are retried); what the instances warned of:\n{}",
        warnings(&a, &b)
    );
    assert_eq!(a.balance(&token).await, 60);

    // The sweeper: one instance at a time across the cluster, handed over within the lease.
    // Node 2's state transfer can hold a lease renewal past a third of the lease; both
    // instances then stand down (safe: nobody sweeps) until one takes it again. So this part
    // starts once node 2 has rejoined and one instance holds the lease.
    rejoin.join().expect("node 2 rejoins");
    wait_until("one instance sweeps", Duration::from_secs(20), || async {
        lease_held(&a).await || lease_held(&b).await
    })
    .await;
    for _ in 0..4 {
        let (ha, hb) = (lease_held(&a).await, lease_held(&b).await);
        assert!(
            ha ^ hb,
            "exactly one sweeps: a={ha} b={hb}; what the instances warned of:\n{}",
            warnings(&a, &b)
        );
        actix_rt::time::sleep(Duration::from_millis(300)).await;
    }
    let (holder, other) = if lease_held(&a).await {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    holder.kill9();
    let t = Instant::now();
    wait_until("lease handed over", Duration::from_secs(15), || async {
        lease_held(other).await
    })
    .await;
    assert!(
        t.elapsed() <= Duration::from_secs(5 + 3),
        "handover took {:?}",
        t.elapsed()
    );

    // Every node agrees and holds the invariant (node 2 too, now that it has rejoined).
    let mut seen = Vec::new();
    for url in &per_node {
        seen.push(assert_node_invariants(url).await);
    }
    let total = users * per_user + 1;
    assert!(
        seen.iter().all(|s| *s == (total, total)),
        "per node (orders, paid): {seen:?}"
    );
    let m = other.metrics().await;
    for reason in ["deadlock", "wsrep_not_ready", "connection_lost"] {
        let series = format!("coinpay_db_retries_total{{reason=\"{reason}\"}}");
        assert!(sample(&m, &series).is_some(), "{series} exposed");
    }
    eprintln!(
        "retries: {:?}",
        m.lines()
            .filter(|l| l.starts_with("coinpay_db_retries_total"))
            .collect::<Vec<_>>()
    );
}

/// Ledger rows written at once on two nodes must not conflict unless they share a row: Galera
/// certifies a transaction by the keys of the rows it writes, and a unique key with a NULL column
/// (the ledger's `(kind, request_id)` of a recharge, before migration 2026-12-01-000003) gives every
/// row the same key. Forty notifications of forty users' orders, all at once, half through each
/// instance on its own node, one transaction each: every one is acknowledged at the first
/// delivery and (almost) none had to be retried. Without the migration this test fails: 19 of the
/// 40 were retried after a conflict.
#[actix_web::test]
async fn payments_of_different_users_on_two_nodes_do_not_conflict() {
    const PAYMENTS: usize = 200;
    let Some(nodes) = cluster() else { return };
    let _alone = CLUSTER.lock().await;
    let (per_node, multi) = fresh_database(&nodes, "keys").await;
    let sim = standalone_sandbox("0.002");
    let db = TestDb::new(&Backend::Sqlite).await; // only for the builder's defaults
    let a = app(&db)
        .against(&sim, free_port())
        .env("DATABASE_URL", &multi(&[0, 1, 2]))
        .env("INSTANCE_ID", "keys-a")
        // One transaction per payment: each conflict is one payment's (a batch would hide a
        // conflict of several behind one retry).
        .env("COINPAY_WRITE_BATCH", "1")
        .spawn();
    let b = app(&db)
        .against(&sim, free_port())
        .env("DATABASE_URL", &multi(&[1, 2, 0]))
        .env("INSTANCE_ID", "keys-b")
        .env("COINPAY_WRITE_BATCH", "1")
        .spawn();
    let package = sixty_coins(&a).await;
    let mut bodies = Vec::new();
    let mut tokens = Vec::new();
    for u in 0..PAYMENTS {
        let (token, _) = a.login(&format!("keys-user-{u}")).await;
        let no = a.create_order(&token, package).await["order_no"]
            .as_str()
            .expect("no")
            .to_string();
        bodies.push(notification(
            &no,
            &format!("42000000000000000777{u:08}"),
            600,
            |_| {},
        ));
        tokens.push(token);
    }
    let deadlocks =
        |m: &str| sample(m, "coinpay_db_retries_total{reason=\"deadlock\"}").unwrap_or(0.0);
    let before = deadlocks(&a.metrics().await) + deadlocks(&b.metrics().await);
    let replies = join_all(bodies.iter().enumerate().map(|(i, body)| {
        let via = if i % 2 == 0 { &a } else { &b };
        via.notify_raw(body, &[])
    }))
    .await;
    let acked = replies.iter().filter(|r| r.text() == SUCCESS).count();
    assert_eq!(acked, bodies.len(), "every payment acknowledged at once");
    let retried = deadlocks(&a.metrics().await) + deadlocks(&b.metrics().await) - before;
    eprintln!(
        "payments retried after a conflict: {retried} of {}",
        bodies.len()
    );
    assert!(
        retried <= 3.0,
        "{retried} of {PAYMENTS} payments of as many users were retried after a conflict"
    );
    for t in &tokens {
        assert_eq!(b.balance(t).await, 60);
    }
    for url in &per_node {
        assert_node_invariants(url).await;
    }
}

/// The WARN and ERROR lines of both instances' logs, for a failed assertion's message.
fn warnings(a: &App, b: &App) -> String {
    [("a", a), ("b", b)]
        .iter()
        .flat_map(|(name, app)| {
            app.logs()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(|l| format!("{name}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
