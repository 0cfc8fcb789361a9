//! High availability and hardening: request-head caps, /readyz against a frozen database, the
//! sweeper after a kill -9. (Galera itself is in `galera`.)

use std::io::{Read, Write};
use std::time::Duration;

use crate::helpers::*;

/// Sends a raw HTTP/1.1 request with `extra` header lines; returns the status code.
fn raw_status(addr: &str, extra: &[(String, String)]) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

fn many(n: usize, len: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("x-extra-{i}"), "v".repeat(len)))
        .collect()
}

#[actix_web::test]
async fn request_heads_over_the_caps_are_answered_431() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db).spawn();
    // Within the caps: served.
    assert_eq!(raw_status(&app.addr, &many(1, 8 * 1024)), 200);
    assert_eq!(raw_status(&app.addr, &many(60, 10)), 200);
    // One 100 kB header, and a block of 20 KiB spread over small headers: refused.
    assert_eq!(raw_status(&app.addr, &many(1, 100_000)), 431);
    assert_eq!(raw_status(&app.addr, &many(40, 512)), 431);
    // Too many headers, each tiny (under actix-http's own limit of 96, and over it).
    assert_eq!(raw_status(&app.addr, &many(70, 1)), 431);
    assert_eq!(raw_status(&app.addr, &many(120, 1)), 431);
    // The server is still fine afterwards.
    assert_eq!(raw_status(&app.addr, &[]), 200);
    let r = app.get("/metrics", None).await;
    assert_eq!(r.status, 200);
}

/// A MariaDB of this test's own (scripts/services.sh with a private SVC_DIR under this run's),
/// so that freezing it stops no other test. None outside scripts/test.sh (the test skips).
struct OwnMysql {
    script: String,
    dir: String,
    port: u16,
}

impl OwnMysql {
    fn start(name: &str) -> Option<OwnMysql> {
        // Required in CI like the test MariaDB (helpers::mysql panics there without one).
        mysql()?;
        let Ok(script) = std::env::var("COINPAY_SERVICES_SCRIPT") else {
            eprintln!("SKIPPING: COINPAY_SERVICES_SCRIPT is not set (run scripts/test.sh)");
            return None;
        };
        let base =
            std::env::var("SVC_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string());
        let m = OwnMysql {
            script,
            dir: format!("{base}/{name}-{}", std::process::id()),
            port: free_port(),
        };
        m.run("start-mysql");
        Some(m)
    }
    fn run(&self, cmd: &str) {
        let st = std::process::Command::new("bash")
            .arg(&self.script)
            .arg(cmd)
            .env("SVC_DIR", &self.dir)
            .env("MY_PORT", self.port.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("services script");
        assert!(st.success(), "{cmd} failed");
    }
    fn url(&self) -> String {
        format!("mysql://coinpay:coinpay_pw@127.0.0.1:{}/coinpay", self.port)
    }
    fn signal(&self, sig: &str) {
        let pid = std::fs::read_to_string(format!("{}/run/mysqld.pid", self.dir))
            .expect("mysqld pid file");
        let st = std::process::Command::new("kill")
            .args([sig, pid.trim()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig} {pid}");
    }
}

impl Drop for OwnMysql {
    fn drop(&mut self) {
        // A frozen server cannot shut down: thaw it first (harmless when it is running).
        let pid = std::fs::read_to_string(format!("{}/run/mysqld.pid", self.dir));
        if let Ok(pid) = pid {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", pid.trim()])
                .status();
        }
        let _ = std::process::Command::new("bash")
            .arg(&self.script)
            .arg("clean")
            .env("SVC_DIR", &self.dir)
            .env("MY_PORT", self.port.to_string())
            .stdout(std::process::Stdio::null())
            .status();
    }
}

#[actix_web::test]
async fn frozen_database_readyz_answers_503_within_a_second_and_nothing_is_acknowledged() {
    let Some(my) = OwnMysql::start("ha-frozen-mysql") else {
        return;
    };
    let db = TestDb::new(&Backend::Mysql(my.url())).await;
    let app = app(&db).spawn();
    let (token, _) = app.login("frozen-user").await;
    let mut orders = Vec::new();
    for i in 0..4 {
        let no = app.create_order(&token, 1).await["order_no"]
            .as_str()
            .expect("no")
            .to_string();
        orders.push((no, format!("42000000000000000000000{i:05}")));
    }
    assert_eq!(app.get("/readyz", None).await.status, 200);

    my.signal("-STOP");
    // Notifications while the database is frozen: each may wait or answer FAIL, never SUCCESS
    // (SUCCESS would mean a commit the frozen server cannot have made).
    let during = futures_util::future::join_all(orders.iter().map(|(no, txn)| {
        let body = notification(no, txn, 600, |_| {});
        let app = &app;
        async move {
            actix_rt::time::timeout(Duration::from_secs(4), app.notify_raw(&body, &[]))
                .await
                .ok()
        }
    }));
    let probe = async {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let r = app.get("/readyz", None).await;
            seen.push((t.elapsed(), r.status, r.text()));
        }
        seen
    };
    let (during, probes) = futures_util::future::join(during, probe).await;
    for (elapsed, status, text) in &probes {
        assert!(
            *elapsed < Duration::from_secs(1),
            "/readyz took {elapsed:?}"
        );
        assert_eq!(*status, 503, "{text}");
        assert!(
            text.contains("database") && text.contains("did not answer"),
            "{text}"
        );
    }
    for r in during.iter().flatten() {
        assert_ne!(
            r.text(),
            SUCCESS,
            "acknowledged while the database was frozen"
        );
    }

    my.signal("-CONT");
    // Every payment is credited once the database answers again (WeChat redelivers).
    for (no, txn) in &orders {
        let body = notification(no, txn, 600, |_| {});
        wait_until(
            "notification acknowledged",
            Duration::from_secs(30),
            || async { app.notify_raw(&body, &[]).await.text() == SUCCESS },
        )
        .await;
    }
    assert_eq!(app.balance(&token).await, 4 * 60);
    assert_eq!(app.get("/readyz", None).await.status, 200);
    db.assert_invariants().await;
}

async fn lease_held(app: &App) -> bool {
    sample(&app.metrics().await, "coinpay_sweeper_lease_held") == Some(1.0)
}

backend_test!(a_lost_lease_stops_sweeping_and_a_freed_one_is_taken_again);
/// The lease is renewed in the background (every third of ORDER_SWEEP_LEASE_SECONDS, here 2 s):
/// when another holder has it, the instance notices at its next renewal and stops sweeping; once
/// the lease is free again it takes it within a second and sweeps again.
async fn a_lost_lease_stops_sweeping_and_a_freed_one_is_taken_again(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let app = app(&db)
        .fast_sweeper()
        .env("ORDER_SWEEP_LEASE_SECONDS", "6")
        .spawn();
    wait_until("the instance takes the lease", WAIT, || async {
        lease_held(&app).await
    })
    .await;
    let (token, _) = app.login("lease-thief").await;

    // Another holder takes the lease behind the instance's back, for a long time.
    db.execute(
        "UPDATE leases SET holder = 'another-instance', until_ms = 99999999999999 WHERE name = 'sweeper'",
    )
    .await;
    let stolen = std::time::Instant::now();
    wait_until(
        "the instance notices the lost lease",
        Duration::from_secs(5),
        || async { !lease_held(&app).await },
    )
    .await;
    assert!(
        stolen.elapsed() < Duration::from_millis(2000 + 700),
        "noticed after {:?} (renewal every 2 s)",
        stolen.elapsed()
    );
    // Nobody sweeps for this instance now: an order stays pending well past its expiry.
    let no = app.order_no(&token, 1).await;
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.order(&token, &no).await["status"], "pending");
    let m = app.metrics().await;
    assert!(
        sample(&m, r#"coinpay_sweeper_runs_total{outcome="not_leader"}"#).unwrap_or(0.0) >= 2.0,
        "{m}"
    );

    // The other holder gives it back: taken again within a second, and the order expires.
    db.execute("UPDATE leases SET until_ms = 0 WHERE name = 'sweeper'")
        .await;
    let freed = std::time::Instant::now();
    wait_until(
        "the lease is taken again",
        Duration::from_secs(5),
        || async { lease_held(&app).await },
    )
    .await;
    assert!(
        freed.elapsed() < Duration::from_millis(1000 + 700),
        "taken again after {:?}",
        freed.elapsed()
    );
    wait_until("the overdue order expires", WAIT, || async {
        app.order(&token, &no).await["status"] == "expired"
    })
    .await;
    db.assert_invariants().await;
}

backend_test!(restarted_instance_sweeps_again_within_seconds);
/// kill -9 of the only instance, restarted on the same listener: it is the same lease holder,
/// so it sweeps again at once instead of waiting out its own lease (ORDER_SWEEP_LEASE_SECONDS).
async fn restarted_instance_sweeps_again_within_seconds(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let port = free_port();
    let spawn = || {
        app(&db)
            .fast_sweeper()
            .env("BIND_ADDR", &format!("127.0.0.1:{port}"))
            .spawn()
    };
    let mut first = spawn();
    wait_until("first instance sweeps", Duration::from_secs(15), || async {
        lease_held(&first).await
    })
    .await;
    first.kill9();
    let killed = std::time::Instant::now();
    let second = spawn();
    let (token, _) = second.login("restart-user").await;
    let no = second.create_order(&token, 1).await["order_no"]
        .as_str()
        .expect("no")
        .to_string();
    wait_until(
        "the restarted instance expires an order",
        Duration::from_secs(10),
        || async { second.order(&token, &no).await["status"] == "expired" },
    )
    .await;
    assert!(killed.elapsed() < Duration::from_secs(10));
    assert!(lease_held(&second).await);
    db.assert_invariants().await;
}
