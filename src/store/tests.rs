//! Store-level tests of the two guards that keep a payment from being credited twice, whatever
//! the actors do: the compare-and-set on an order's version, and the unique `(kind, order_no)`
//! ledger index. Each runs on SQLite and on the MariaDB of scripts/test.sh
//! (COINPAY_TEST_MYSQL_URL) as two tests; without that URL the MariaDB one is skipped, unless
//! CI=true or COINPAY_REQUIRE_SERVICES=1, where it fails.

use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};

use super::ledger::{self, Entry, LedgerKind, Posted};
use super::orders::{self, NewOrder, OrderRow};
use super::{DbPool, StoreError, now_ms, users};
use crate::config::DbUrl;
use crate::money::{Coins, Fen};
use crate::order::state::{Effect, OrderStatus};

/// A fresh, migrated database and its pool.
struct TestStore {
    pool: DbPool,
    _dir: Option<tempfile::TempDir>,
}

fn services_required() -> bool {
    std::env::var("COINPAY_REQUIRE_SERVICES").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true")
}

impl TestStore {
    async fn open(url: &str, dir: Option<tempfile::TempDir>) -> TestStore {
        let url: DbUrl = url.parse().expect("a database URL");
        super::run_migrations(&url).await.expect("migrate");
        let pool = DbPool::connect(&url, 4).await.expect("pool");
        TestStore { pool, _dir: dir }
    }

    async fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/coinpay.db", dir.path().display());
        TestStore::open(&url, Some(dir)).await
    }

    /// A database of its own on the test MariaDB; `None` (skipped) when there is none.
    async fn mysql() -> Option<TestStore> {
        let base = match std::env::var("COINPAY_TEST_MYSQL_URL") {
            Ok(url) if !url.is_empty() => url,
            _ if services_required() => {
                panic!("COINPAY_TEST_MYSQL_URL is not set: run the suite with scripts/test.sh")
            }
            _ => {
                eprintln!("SKIPPING the MariaDB variant: COINPAY_TEST_MYSQL_URL is not set");
                return None;
            }
        };
        let name = format!("coinpay_s_{:016x}", rand::random::<u64>());
        let mut c = AsyncMysqlConnection::establish(&base)
            .await
            .expect("connect to the test MariaDB");
        c.batch_execute(&format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .await
        .expect("create the test database");
        let (prefix, _) = base.rsplit_once('/').expect("the URL names a database");
        Some(TestStore::open(&format!("{prefix}/{name}"), None).await)
    }

    /// A user and an order of package 1 (600 fen, 60 coins), moved to pending.
    async fn pending_order(&self, order_no: &str) -> OrderRow {
        let user = users::upsert_by_openid(&self.pool, &format!("openid-{order_no}"), None)
            .await
            .expect("user");
        self.pending_order_of(order_no, user.id).await
    }

    /// An order of package 1 for the user `user_id`, moved to pending.
    async fn pending_order_of(&self, order_no: &str, user_id: i64) -> OrderRow {
        let now = now_ms();
        let new = NewOrder {
            order_no,
            user_id,
            package_id: 1,
            amount_fen: Fen(600),
            coins: Coins(60),
            bonus_coins: Coins(0),
            created_at: now,
            expires_at: now + 60_000,
        };
        orders::insert(&self.pool, &new).await.expect("insert");
        let created = orders::get(&self.pool, order_no)
            .await
            .expect("get")
            .expect("the order");
        let prepay = Effect::StorePrepay {
            prepay_id: "wx-prepay".into(),
        };
        orders::apply(&self.pool, &created, OrderStatus::Pending, &prepay)
            .await
            .expect("pending")
    }

    async fn balance(&self, user_id: i64) -> Coins {
        users::get(&self.pool, user_id)
            .await
            .expect("get user")
            .expect("the user")
            .balance
    }
}

/// Runs one test body as two tests, one per backend.
macro_rules! on_both_backends {
    ($body:ident, $sqlite:ident, $mysql:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            $body(TestStore::sqlite().await).await;
        }

        #[tokio::test]
        async fn $mysql() {
            if let Some(store) = TestStore::mysql().await {
                $body(store).await;
            }
        }
    };
}

fn recharge(row: &OrderRow, transaction_id: &str) -> Entry {
    Entry {
        user_id: row.user_id,
        kind: LedgerKind::Recharge,
        delta: row.credit(),
        order_no: Some(row.order_no.clone()),
        transaction_id: Some(transaction_id.into()),
        amount_fen: Some(row.amount_fen),
        request_id: None,
        reason: "recharge".into(),
        created_at: now_ms(),
    }
}

/// The unique `(kind, order_no)` index exists: a second recharge row for one order is refused
/// by the database, and the balance keeps the first credit only.
async fn second_recharge_row_is_a_unique_violation(s: TestStore) {
    let row = s.pending_order("CPSTOREUNIQUE0001").await;
    let first = ledger::post_alone(&s.pool, recharge(&row, "T1"))
        .await
        .expect("first recharge");
    assert_eq!(first, Posted::Applied(Coins(60)));
    let second = ledger::post_alone(&s.pool, recharge(&row, "T2")).await;
    assert!(
        matches!(&second, Err(e) if e.is_unique_violation()),
        "a second recharge row for the order: {second:?}"
    );
    assert_eq!(s.balance(row.user_id).await, Coins(60));
    let violations = ledger::invariant_violations(&s.pool).await.expect("check");
    assert!(violations.is_empty(), "{violations:?}");
}

on_both_backends!(
    second_recharge_row_is_a_unique_violation,
    second_recharge_row_is_a_unique_violation_sqlite,
    second_recharge_row_is_a_unique_violation_mysql
);

/// `orders::create` reads the package and the user and writes the row in one go: the row it
/// returns is the one stored, with the package's price and coins copied in; an unknown package,
/// a package off sale or an unknown user writes nothing; a number already taken is a unique
/// violation (the service draws another on it).
async fn create_copies_the_package_and_refuses_without_writing(s: TestStore) {
    use super::orders::{Creation, OrderRequest, Refusal};
    use super::packages::{self, PackageFields};
    let user = users::upsert_by_openid(&s.pool, "openid-create", None)
        .await
        .expect("user");
    let request = |order_no: &str, user_id: i64, package_id: i64| OrderRequest {
        order_no: order_no.into(),
        user_id,
        package_id,
        created_at: now_ms(),
        expires_at: now_ms() + 60_000,
    };
    let refused = |c: Result<Creation, StoreError>| match c {
        Ok(Creation::Refused(r)) => r,
        other => panic!("expected a refusal: {other:?}"),
    };
    let off_sale = packages::create(
        &s.pool,
        &PackageFields {
            name: "off sale".into(),
            coins: Coins(5),
            bonus_coins: Coins(0),
            price_fen: Fen(50),
            sort_order: 9,
            active: false,
        },
    )
    .await
    .expect("package");
    let cases = [
        (
            request("CPCREATE000000001", user.id, 987_654),
            Refusal::UnknownPackage,
        ),
        (
            request("CPCREATE000000002", user.id, off_sale.id),
            Refusal::PackageInactive,
        ),
        (
            request("CPCREATE000000003", 987_654, 1),
            Refusal::UnknownUser,
        ),
    ];
    for (req, why) in cases {
        let no = req.order_no.clone();
        assert_eq!(refused(orders::create(&s.pool, req).await), why);
        assert_eq!(orders::get(&s.pool, &no).await.expect("get"), None);
    }

    let Ok(Creation::Created { row, openid }) =
        orders::create(&s.pool, request("CPCREATE000000004", user.id, 1)).await
    else {
        panic!("package 1 for a known user is created");
    };
    assert_eq!(openid, "openid-create");
    assert_eq!(
        (row.status, row.amount_fen, row.coins, row.version),
        (OrderStatus::Created, Fen(600), Coins(60), 0)
    );
    let stored = orders::get(&s.pool, "CPCREATE000000004")
        .await
        .expect("get");
    assert_eq!(stored.as_ref(), Some(&*row));

    let again = orders::create(&s.pool, request("CPCREATE000000004", user.id, 1)).await;
    assert!(
        matches!(&again, Err(e) if e.is_unique_violation()),
        "a taken number: {again:?}"
    );
}

on_both_backends!(
    create_copies_the_package_and_refuses_without_writing,
    create_copies_the_package_and_refuses_without_writing_sqlite,
    create_copies_the_package_and_refuses_without_writing_mysql
);

/// The compare-and-set: the same loaded row applied twice moves the order once; the second
/// apply is a conflict and credits nothing.
async fn the_same_row_applied_twice_credits_once(s: TestStore) {
    let row = s.pending_order("CPSTORECAS0000001").await;
    let credit = |txn: &str| Effect::Credit {
        transaction_id: txn.into(),
        paid_at: None,
    };
    let paid = orders::apply(&s.pool, &row, OrderStatus::Paid, &credit("T1"))
        .await
        .expect("first apply");
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(paid.version, row.version + 1);
    let again = orders::apply(&s.pool, &row, OrderStatus::Paid, &credit("T2")).await;
    assert!(
        matches!(again, Err(StoreError::Conflict)),
        "a stale row must lose: {again:?}"
    );
    let now = orders::get(&s.pool, &row.order_no)
        .await
        .expect("get")
        .expect("the order");
    assert_eq!(now.transaction_id.as_deref(), Some("T1"));
    assert_eq!(s.balance(row.user_id).await, Coins(60));
    let (rows, total) = ledger::list_for_user(&s.pool, row.user_id, 0, 10)
        .await
        .expect("ledger");
    assert_eq!(total, 1, "{rows:?}");
}

on_both_backends!(
    the_same_row_applied_twice_credits_once,
    the_same_row_applied_twice_credits_once_sqlite,
    the_same_row_applied_twice_credits_once_mysql
);

/// A status the domain does not know is a read error, never taken for another status.
async fn an_unknown_status_is_an_error(s: TestStore) {
    let row = s.pending_order("CPSTORESTATUS0001").await;
    let corrupt = diesel::sql_query(format!(
        "UPDATE recharge_orders SET status = 'refunding' WHERE order_no = '{}'",
        row.order_no
    ));
    super::execute(&s.pool, corrupt).await.expect("update");
    let read = orders::get(&s.pool, &row.order_no).await;
    assert!(
        matches!(
            read,
            Err(StoreError::Query(
                diesel::result::Error::DeserializationError(_)
            ))
        ),
        "{read:?}"
    );
}

on_both_backends!(
    an_unknown_status_is_an_error,
    an_unknown_status_is_an_error_sqlite,
    an_unknown_status_is_an_error_mysql
);

/// A write through MySQL's group commit that runs `sql`.
fn sql_work(sql: String) -> super::batch::Work<()> {
    use diesel_async::RunQueryDsl;
    Box::new(move |c| {
        let sql = sql.clone();
        Box::pin(async move { diesel::sql_query(sql).execute(c).await.map(|_| ()) })
    })
}

/// Occupies every batching task with a slow write, so that what is queued meanwhile lands in
/// one batch, in order; await the handles after queueing.
async fn occupy_batchers(
    p: &super::MysqlPool,
) -> Vec<tokio::task::JoinHandle<Result<(), StoreError>>> {
    let mut slow = Vec::new();
    for _ in 0..super::batch::BATCHERS {
        let p = p.clone();
        slow.push(tokio::spawn(async move {
            p.write(sql_work("DO SLEEP(0.4)".into())).await
        }));
        // Taken by one task before the next is queued: each task holds one.
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    slow
}

/// Runs `works` in one batch (see [`occupy_batchers`]) and returns their answers.
async fn in_one_mysql_batch(
    p: &super::MysqlPool,
    works: Vec<super::batch::Work<()>>,
) -> Vec<Result<(), StoreError>> {
    let slow = occupy_batchers(p).await;
    let mut queued = Vec::new();
    for w in works {
        let p = p.clone();
        queued.push(tokio::spawn(async move { p.write(w).await }));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for s in slow {
        s.await.expect("join").expect("slow write");
    }
    let mut answers = Vec::new();
    for q in queued {
        answers.push(q.await.expect("join"));
    }
    answers
}

/// Credits `(row, transaction_id)` in one batch and returns each answer.
async fn credited_in_one_mysql_batch(
    s: &TestStore,
    credits: &[(&OrderRow, &str)],
) -> Vec<Result<OrderRow, StoreError>> {
    let DbPool::Mysql(p) = &s.pool else {
        panic!("a MySQL pool")
    };
    let slow = occupy_batchers(p).await;
    let mut queued = Vec::new();
    for (row, transaction_id) in credits {
        let pool = s.pool.clone();
        let row = (*row).clone();
        let effect = Effect::Credit {
            transaction_id: transaction_id.to_string(),
            paid_at: None,
        };
        queued.push(tokio::spawn(async move {
            orders::apply(&pool, &row, OrderStatus::Paid, &effect).await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for s in slow {
        s.await.expect("join").expect("slow write");
    }
    let mut answers = Vec::new();
    for q in queued {
        answers.push(q.await.expect("join"));
    }
    answers
}

/// MySQL's group commit writes a batch's order transitions together, in a fixed number of
/// statements: each order moves once (a second move of the same order in the batch loses its
/// compare-and-set), the balance of a user credited twice in the batch takes both and each
/// ledger row carries the balance after it. When one transition breaks a multi-row statement
/// (a transaction_id that another order holds), they are written one by one and it fails alone.
#[tokio::test]
async fn mysql_group_commit_writes_a_batch_of_transitions_together() {
    let Some(s) = TestStore::mysql().await else {
        return;
    };
    let a = s.pending_order("CPSTOREMANY0001").await;
    let b = s.pending_order_of("CPSTOREMANY0002", a.user_id).await;
    let c = s.pending_order("CPSTOREMANY0003").await;
    let answers =
        credited_in_one_mysql_batch(&s, &[(&a, "TM1"), (&b, "TM2"), (&a, "TM1"), (&c, "TM3")])
            .await;
    assert!(
        answers[0]
            .as_ref()
            .is_ok_and(|r| r.status == OrderStatus::Paid),
        "{answers:?}"
    );
    assert!(answers[1].is_ok(), "{answers:?}");
    assert!(
        matches!(answers[2], Err(StoreError::Conflict)),
        "{answers:?}"
    );
    assert!(answers[3].is_ok(), "{answers:?}");
    assert_eq!(s.balance(a.user_id).await, Coins(120));
    assert_eq!(s.balance(c.user_id).await, Coins(60));
    let (rows, _) = ledger::list_for_user(&s.pool, a.user_id, 0, 10)
        .await
        .expect("ledger");
    let afters: Vec<(Option<String>, Coins)> = rows
        .iter()
        .rev()
        .map(|r| (r.order_no.clone(), r.balance_after))
        .collect();
    assert_eq!(
        afters,
        [
            (Some(a.order_no.clone()), Coins(60)),
            (Some(b.order_no.clone()), Coins(120))
        ]
    );
    for no in [&a.order_no, &b.order_no, &c.order_no] {
        let row = orders::get(&s.pool, no).await.expect("get").expect("order");
        assert_eq!((row.status, row.version), (OrderStatus::Paid, 2), "{no}");
    }

    // TM1 is order a's: d's credit breaks the multi-row UPDATE, and fails alone.
    let d = s.pending_order("CPSTOREMANY0004").await;
    let e = s.pending_order("CPSTOREMANY0005").await;
    let answers = credited_in_one_mysql_batch(&s, &[(&d, "TM1"), (&e, "TM5")]).await;
    assert!(
        answers[0].as_ref().is_err_and(|e| e.is_unique_violation()),
        "{answers:?}"
    );
    assert!(answers[1].is_ok(), "{answers:?}");
    assert_eq!(s.balance(d.user_id).await, Coins(0));
    assert_eq!(s.balance(e.user_id).await, Coins(60));
    assert!(
        ledger::invariant_violations(&s.pool)
            .await
            .expect("check")
            .is_empty()
    );
}

/// MySQL's group commit loads, decides on and moves orders met by `load_and_apply` in the batch
/// itself: two decisions on one order in one batch credit it once (the second is `Lost`, to be
/// decided again on the row the first left), a decision that moves nothing writes nothing, and
/// an unknown order is `None`.
#[tokio::test]
async fn mysql_group_commit_decides_in_the_batch() {
    use crate::order::state::{Decision, Move};
    let Some(s) = TestStore::mysql().await else {
        return;
    };
    let DbPool::Mysql(p) = &s.pool else {
        panic!("a MySQL pool")
    };
    let a = s.pending_order("CPSTOREDECIDE001").await;
    let b = s.pending_order("CPSTOREDECIDE002").await;
    let pay = |tx: &'static str| {
        move |row: &OrderRow| {
            if row.status == OrderStatus::Pending {
                Decision::Move(Move {
                    to: OrderStatus::Paid,
                    effect: Effect::Credit {
                        transaction_id: tx.to_string(),
                        paid_at: None,
                    },
                    late: false,
                })
            } else {
                Decision::Stay(crate::order::state::Stay::Duplicate)
            }
        }
    };
    let slow = occupy_batchers(p).await;
    let mut queued = Vec::new();
    for (no, tx) in [
        (a.order_no.clone(), "TD1"),
        (a.order_no.clone(), "TD1"),
        (b.order_no.clone(), "TD2"),
        ("CPSTOREDECIDE404".to_string(), "TD4"),
    ] {
        let pool = s.pool.clone();
        let decide = pay(tx);
        queued.push(tokio::spawn(async move {
            orders::load_and_apply(&pool, &no, decide).await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for s in slow {
        s.await.expect("join").expect("slow write");
    }
    let mut answers = Vec::new();
    for q in queued {
        answers.push(q.await.expect("join").expect("decided"));
    }
    assert!(matches!(answers[0], Some(orders::Decided::Written { .. })));
    assert!(matches!(answers[1], Some(orders::Decided::Lost)));
    assert!(matches!(answers[2], Some(orders::Decided::Written { .. })));
    assert!(answers[3].is_none());
    assert_eq!(s.balance(a.user_id).await, Coins(60));
    assert_eq!(s.balance(b.user_id).await, Coins(60));
    // Decided again, now in a batch of its own: it stays, and nothing is written.
    let again = orders::load_and_apply(&s.pool, &a.order_no, pay("TD1"))
        .await
        .expect("decided");
    assert!(matches!(again, Some(orders::Decided::Unwritten { .. })));
    assert_eq!(s.balance(a.user_id).await, Coins(60));
    assert!(
        ledger::invariant_violations(&s.pool)
            .await
            .expect("check")
            .is_empty()
    );
}

async fn mysql_values(p: &super::MysqlPool) -> Vec<i32> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct X {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        x: i32,
    }
    let mut c = p.get().await.expect("connection");
    let rows: Vec<X> = diesel::sql_query("SELECT x FROM bt ORDER BY x")
        .load(&mut *c)
        .await
        .expect("read");
    rows.into_iter().map(|r| r.x).collect()
}

/// MySQL's group commit: a write that fails in a batch (a unique or CHECK violation) is rolled
/// back alone and the others commit; a batch whose transaction is lost on every run (its
/// connection killed under it) keeps none of its writes, and each is tried again on its own
/// (`StoreError::Lost` is retried): the one that kills its connection fails in the end, and each
/// other is kept exactly when it was answered Ok.
#[tokio::test]
async fn mysql_group_commit_fails_a_bad_write_alone_and_a_lost_batch_whole() {
    let Some(s) = TestStore::mysql().await else {
        return;
    };
    let DbPool::Mysql(p) = &s.pool else {
        panic!("a MySQL pool")
    };
    assert!(p.batched(), "group commit is on by default");
    p.get()
        .await
        .expect("connection")
        .batch_execute("CREATE TABLE bt (x INT PRIMARY KEY, CHECK (x > 0))")
        .await
        .expect("table");

    let works = [
        "INSERT INTO bt VALUES (1)",
        "INSERT INTO bt VALUES (1)",
        "INSERT INTO bt VALUES (2)",
        "INSERT INTO bt VALUES (3), (-3)",
        "INSERT INTO bt VALUES (4)",
    ]
    .map(|q| sql_work(q.into()));
    let answers = in_one_mysql_batch(p, works.into()).await;
    let failed: Vec<bool> = answers.iter().map(Result::is_err).collect();
    assert_eq!(failed, [false, true, false, true, false], "{answers:?}");
    assert!(answers[1].as_ref().is_err_and(|e| e.is_unique_violation()));
    assert_eq!(mysql_values(p).await, [1, 2, 4]);

    // A write that kills its own connection: the batch's transaction is gone each time.
    let url = std::env::var("COINPAY_TEST_MYSQL_URL").expect("the test MariaDB");
    let killer: super::batch::Work<()> = Box::new(move |c| {
        let url = url.clone();
        Box::pin(async move {
            use diesel::IntoSql;
            use diesel_async::RunQueryDsl;
            let id: i64 = diesel::select(
                diesel::dsl::sql::<diesel::sql_types::BigInt>("CONNECTION_ID()")
                    .into_sql::<diesel::sql_types::BigInt>(),
            )
            .get_result(c)
            .await?;
            let mut other = AsyncMysqlConnection::establish(&url)
                .await
                .expect("a second connection");
            other.batch_execute(&format!("KILL CONNECTION {id}")).await
        })
    });
    let answers = in_one_mysql_batch(
        p,
        vec![
            sql_work("INSERT INTO bt VALUES (10)".into()),
            killer,
            sql_work("INSERT INTO bt VALUES (11)".into()),
        ],
    )
    .await;
    assert!(
        matches!(answers[1], Err(StoreError::Lost { .. })),
        "{answers:?}"
    );
    let mut kept = vec![1, 2, 4];
    for (x, a) in [(10, &answers[0]), (11, &answers[2])] {
        match a {
            Ok(()) => kept.push(x),
            Err(e) => assert!(matches!(e, StoreError::Lost { .. }), "{answers:?}"),
        }
    }
    assert_eq!(mysql_values(p).await, kept, "{answers:?}");
    // The pool goes on with fresh connections.
    p.write(sql_work("INSERT INTO bt VALUES (12)".into()))
        .await
        .expect("a write after the lost batch");
    kept.push(12);
    assert_eq!(mysql_values(p).await, kept);
}
