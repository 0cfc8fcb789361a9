//! Backups and the hand-applied schema, black-box: the real binary's `backup`, `restore` and
//! `migrate --print-sql` against real databases.
//!
//! The main test backs a SQLite database up while a storm of payment notifications (each sent
//! several times, as WeChat retries) is being credited, restores the copy into a fresh
//! directory, and checks the copy: the ledger invariant holds and every payment acknowledged
//! before the backup started is in it, credited once.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::harness::Backend;
use crate::helpers::*;
use futures_util::StreamExt;

/// Orders in the storm, spread over `USERS` users; every notification is sent `COPIES` times.
const USERS: usize = 6;
const ORDERS_PER_USER: usize = 40;
const COPIES: usize = 3;
/// Notifications in flight at once.
const IN_FLIGHT: usize = 24;
/// Package 1: 600 fen for 60 coins.
const PRICE_FEN: i64 = 600;
const COINS: i64 = 60;

fn env_of(db_url: &str) -> HashMap<String, String> {
    HashMap::from([("DATABASE_URL".to_string(), db_url.to_string())])
}

/// `coinpay ARGS` with DATABASE_URL, on a blocking thread (the storm goes on meanwhile).
async fn coinpay(args: &[&str], db_url: &str) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env = env_of(db_url);
    actix_rt::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cmd(&args, &env)
    })
    .await
    .expect("coinpay command")
}

struct Order {
    no: String,
    user: usize,
}

#[actix_web::test]
async fn backup_during_a_notification_storm_restores_every_acknowledged_payment() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let app = app(&db).spawn();
    let mut tokens = Vec::new();
    let mut orders = Vec::new();
    for u in 0..USERS {
        let (token, _) = app.login(&format!("backup-storm-{u}")).await;
        for _ in 0..ORDERS_PER_USER {
            let o = app.create_order(&token, 1).await;
            orders.push(Order {
                no: o["order_no"].as_str().expect("order_no").to_string(),
                user: u,
            });
        }
        tokens.push(token);
    }
    let total = orders.len();

    // The storm: every notification COPIES times, interleaved, IN_FLIGHT at a time. Each
    // acknowledgement is stamped when its reply arrived (after the commit it confirms).
    let acked: Rc<RefCell<HashMap<usize, Instant>>> = Rc::default();
    let sends: Vec<(usize, Vec<u8>)> = (0..COPIES)
        .flat_map(|_| 0..total)
        .map(|i| {
            let txn = format!("42000000009{i:017}");
            (i, notification(&orders[i].no, &txn, PRICE_FEN, |_| {}))
        })
        .collect();
    let storm = {
        let (acked, base) = (acked.clone(), app.base.clone());
        actix_rt::spawn(async move {
            futures_util::stream::iter(sends)
                .map(|(i, body)| {
                    let base = base.clone();
                    async move {
                        let r = send(
                            client()
                                .post(format!("{base}/api/v1/client/coin/recharge/callback"))
                                .insert_header(("Content-Type", "text/xml")),
                            Some(body),
                        )
                        .await;
                        (i, r.status == 200 && r.text() == SUCCESS, Instant::now())
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .for_each(|(i, ok, at)| {
                    if ok {
                        acked.borrow_mut().entry(i).or_insert(at);
                    }
                    async {}
                })
                .await;
        })
    };

    // Back up once a third of the orders are acknowledged, while the storm goes on.
    wait_until(
        "a third of the storm acknowledged",
        Duration::from_secs(60),
        || {
            let n = acked.borrow().len();
            async move { n >= total / 3 }
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("coinpay.backup");
    let file_s = file.to_str().expect("utf-8 path").to_string();
    let started = Instant::now();
    let before_backup: HashSet<usize> = acked
        .borrow()
        .iter()
        .filter(|(_, at)| **at < started)
        .map(|(i, _)| *i)
        .collect();
    let (code, out, err) = coinpay(&["backup", "--to", &file_s], &db.url).await;
    let finished = Instant::now();
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    assert!(out.contains("integrity ok"), "{out}");
    let during = acked.borrow().len();
    storm.await.expect("storm task");
    let after_backup = acked.borrow().values().filter(|at| **at > finished).count();
    eprintln!(
        "backup took {:?}: {} of {total} orders acknowledged before it, {during} when it ended, \
         {after_backup} after it",
        finished - started,
        before_backup.len()
    );
    assert!(
        after_backup > 0,
        "the storm was over before the backup finished: it did not run under load"
    );

    // The live database got every payment, once.
    assert_eq!(acked.borrow().len(), total, "every order acknowledged");
    for token in &tokens {
        assert_eq!(app.balance(token).await, COINS * ORDERS_PER_USER as i64);
    }
    db.assert_invariants().await;
    drop(app);

    // Restore into a fresh directory, then look at it through a coinpay of its own.
    let fresh = TestDb::new(&Backend::Sqlite).await;
    let (code, out, err) = coinpay(&["restore", "--from", &file_s], &fresh.url).await;
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    assert!(out.contains("the ledger invariant holds"), "{out}");
    fresh.assert_invariants().await;
    let restored = crate::helpers::app(&fresh).spawn();
    let mut paid_per_user = [0_i64; USERS];
    for (i, o) in orders.iter().enumerate() {
        let v = restored.order(&tokens[o.user], &o.no).await;
        let paid = v["status"] == "paid";
        if before_backup.contains(&i) {
            assert!(
                paid,
                "order {} was acknowledged before the backup: {v}",
                o.no
            );
        }
        paid_per_user[o.user] += paid as i64;
    }
    for (u, token) in tokens.iter().enumerate() {
        assert_eq!(
            restored.balance(token).await,
            COINS * paid_per_user[u],
            "user {u}: the restored balance is the coins of the restored paid orders"
        );
    }
    let paid: i64 = paid_per_user.iter().sum();
    assert!(paid >= before_backup.len() as i64);
    assert!(
        paid < total as i64,
        "the backup holds all {total} payments: it was taken after the storm"
    );
}

#[actix_web::test]
async fn backup_and_restore_refuse_to_overwrite_and_to_restore_garbage() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();

    // No database yet: nothing to back up (and none is created by trying).
    let (code, _, err) = coinpay(&["backup", "--to", &path("none.backup")], &db.url).await;
    assert_ne!(code, 0);
    assert!(err.contains("no such database file"), "{err}");
    assert!(!Path::new(&path("none.backup")).exists());

    let app = app(&db).spawn();
    let (token, _) = app.login("backup-refusals").await;
    let o = app.create_order(&token, 1).await;
    let no = o["order_no"].as_str().expect("order_no");
    let r = app
        .notify_raw(
            &notification(no, "4200000000777000000000000001", PRICE_FEN, |_| {}),
            &[],
        )
        .await;
    assert_eq!(r.text(), SUCCESS);

    // An existing backup file is left alone.
    std::fs::write(path("taken"), b"keep me").expect("write");
    let (code, _, err) = coinpay(&["backup", "--to", &path("taken")], &db.url).await;
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(path("taken")).expect("read"), b"keep me");

    let (code, out, err) = coinpay(&["backup", "--to", &path("ok.backup")], &db.url).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 paid orders"), "{out}");

    // Restoring over a live database is refused, and the database is untouched.
    let (code, _, err) = coinpay(&["restore", "--from", &path("ok.backup")], &db.url).await;
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(app.balance(&token).await, COINS);

    // A file that is not a coinpay backup restores nothing.
    let fresh = TestDb::new(&Backend::Sqlite).await;
    let (code, _, err) = coinpay(&["restore", "--from", &path("taken")], &fresh.url).await;
    assert_ne!(code, 0);
    assert!(err.contains("not a usable coinpay backup"), "{err}");
    let fresh_file = fresh.url.strip_prefix("sqlite://").expect("sqlite url");
    assert!(!Path::new(fresh_file).exists(), "nothing restored");
}

/// The schema applied by hand from `migrate --print-sql`: coinpay then finds nothing pending
/// and serves the seeded packages.
async fn printed_sql_applied_by_hand_is_the_schema_coinpay_expects(backend: Backend) {
    let db = TestDb::new(&backend).await;
    let dialect = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Mysql(_) => "mysql",
    };
    let (code, sql, err) = run_cmd(&["migrate", "--print-sql", dialect], &HashMap::new());
    assert_eq!(code, 0, "{err}");
    apply_by_hand(&db.url, &sql).await;
    let (code, out, err) = run_cmd(&["migrate"], &env_of(&db.url));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "applied 0 migration(s)", "{backend:?}");
    let app = app(&db).spawn();
    let r = app.get("/api/v1/client/coin/packages", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["packages"].as_array().map(Vec::len),
        Some(5),
        "{backend:?}: {}",
        r.text()
    );
    db.assert_invariants().await;
}
backend_test!(printed_sql_applied_by_hand_is_the_schema_coinpay_expects);

/// What an operator's `mysql db < schema.sql` / `sqlite3 db < schema.sql` does.
async fn apply_by_hand(url: &str, sql: &str) {
    match url.strip_prefix("sqlite://") {
        Some(path) => {
            use diesel::Connection;
            use diesel::connection::SimpleConnection;
            let mut c = diesel::SqliteConnection::establish(path).expect("open sqlite");
            c.batch_execute(sql).expect("apply the printed SQL");
        }
        None => {
            use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
            let mut c = AsyncMysqlConnection::establish(url)
                .await
                .expect("connect mysql");
            c.batch_execute(sql).await.expect("apply the printed SQL");
        }
    }
}

/// MariaDB: `coinpay backup` runs mariadb-dump, `coinpay restore` loads the dump into an empty
/// database with the mariadb client (both come with scripts/services.sh's MariaDB).
#[actix_web::test]
async fn mysql_backup_and_restore_through_the_mariadb_clients() {
    let Some(Backend::Mysql(url)) = mysql() else {
        return;
    };
    let db = TestDb::new(&Backend::Mysql(url.clone())).await;
    let app = app(&db).spawn();
    let (token, _) = app.login("mysql-backup").await;
    let mut nos = Vec::new();
    for i in 0..5 {
        let o = app.create_order(&token, 1).await;
        let no = o["order_no"].as_str().expect("order_no").to_string();
        let txn = format!("42000000008{i:017}");
        let r = app
            .notify_raw(&notification(&no, &txn, PRICE_FEN, |_| {}), &[])
            .await;
        assert_eq!(r.text(), SUCCESS);
        nos.push(no);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("coinpay.sql");
    let file_s = file.to_str().expect("utf-8");

    let (code, line, err) = coinpay(&["backup", "--to", file_s, "--print-command"], &db.url).await;
    assert_eq!(code, 0, "{err}");
    assert!(line.contains("--single-transaction"), "{line}");
    assert!(
        !line.contains("coinpay_pw"),
        "the password is not printed: {line}"
    );

    let (code, out, err) = coinpay(&["backup", "--to", file_s], &db.url).await;
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    assert!(out.contains("6 tables"), "{out}");
    let dump = std::fs::read_to_string(&file).expect("dump");
    assert!(!dump.contains("coinpay_pw"));

    // Not over the live database...
    let (code, _, err) = coinpay(&["restore", "--from", file_s], &db.url).await;
    assert_ne!(code, 0);
    assert!(err.contains("already has coinpay's tables"), "{err}");
    // ...but into an empty one.
    let fresh = TestDb::new(&Backend::Mysql(url)).await;
    let (code, out, err) = coinpay(&["restore", "--from", file_s], &fresh.url).await;
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    assert!(out.contains("5 paid orders"), "{out}");
    fresh.assert_invariants().await;
    drop(app);
    let restored = crate::helpers::app(&fresh).spawn();
    assert_eq!(restored.balance(&token).await, 5 * COINS);
    for no in &nos {
        assert_eq!(restored.order(&token, no).await["status"], "paid");
    }
}
