//! The data the scenarios work on, made through the library before the clock starts (users,
//! pending orders, notification requests), and what is asked of the database afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use coinpay::order::state::{Effect, OrderStatus};
use coinpay::store::orders::{self, NewOrder, OrderFilter, OrderRow};
use coinpay::store::{DbPool, packages, users};

use crate::harness::{Backend, Db};
use crate::http1::request;
use crate::{Res, err};

const CALLBACK: &str = "/api/v1/client/coin/recharge/callback";

impl Db {
    /// Drops a MariaDB database at the end of a run (SQLite's file goes with its directory).
    pub async fn drop_database(&self) {
        if let Backend::Mysql(server) = &self.backend {
            use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
            let Some((_, name)) = self.url.rsplit_once('/') else {
                return;
            };
            let Ok(first) = crate::harness::lib_api::first_node(server) else {
                return;
            };
            if let Ok(mut c) = AsyncMysqlConnection::establish(&first).await {
                let _ = c.batch_execute(&format!("DROP DATABASE {name}")).await;
            }
        }
    }
}

/// `n` users with openids of their own (not the bench-user-<i> logins of create-order).
pub async fn make_users(pool: &DbPool, n: usize, tag: &str) -> Res<Vec<i64>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let u = users::upsert_by_openid(pool, &format!("o-bench-{tag}-{i:06}"), None).await?;
        ids.push(u.id);
    }
    Ok(ids)
}

/// `n` pending orders (package 1) spread over `users`, created `conc` at a time.
pub async fn pending_orders(
    pool: &DbPool,
    users: &[i64],
    n: usize,
    tag: &str,
) -> Res<Vec<OrderRow>> {
    let pkg = packages::get(pool, 1).await?.ok_or("package 1 missing")?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    let users = Arc::new(users.to_vec());
    for _ in 0..8 {
        let (next, users, pool, tag, pkg) = (
            next.clone(),
            users.clone(),
            pool.clone(),
            tag.to_string(),
            pkg.clone(),
        );
        handles.push(actix_rt::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let order_no = format!("{tag}{i:010}");
                let now = coinpay::store::now_ms();
                let new = NewOrder {
                    order_no: &order_no,
                    user_id: users[i % users.len()],
                    package_id: pkg.id,
                    amount_fen: pkg.price_fen,
                    coins: pkg.coins,
                    bonus_coins: pkg.bonus_coins,
                    created_at: now,
                    expires_at: now + 86_400_000,
                };
                orders::insert(&pool, &new).await?;
                let row = orders::get(&pool, &order_no)
                    .await?
                    .ok_or(coinpay::store::StoreError::Conflict)?;
                let row = orders::apply(
                    &pool,
                    &row,
                    OrderStatus::Pending,
                    &Effect::StorePrepay {
                        prepay_id: format!("wx_bench_{order_no}"),
                    },
                )
                .await?;
                out.push((i, row));
            }
            Ok::<_, coinpay::store::StoreError>(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for h in handles {
        all.extend(h.await.map_err(|e| err(e.to_string()))??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// The HTTP request of a signed SUCCESS notification that pays `order`.
pub fn notification(order: &OrderRow, txn: &str) -> Vec<u8> {
    let body = crate::harness::notification(&order.order_no, txn, order.amount_fen.0, |_| {});
    request("POST", CALLBACK, "text/xml", None, &body)
}

pub async fn count_status(pool: &DbPool, status: OrderStatus) -> Res<i64> {
    let f = OrderFilter {
        status: Some(status),
        ..Default::default()
    };
    Ok(orders::list(pool, &f, 0, 1).await?.1)
}
