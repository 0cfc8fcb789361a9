//! Order numbers (WeChat's out_trade_no: at most 32 of [A-Za-z0-9_-]).
//!
//! `CP` + Beijing time `yyyyMMddHHmmss` + a suffix, so numbers sort by time:
//! - with Redis: `INCR` on a per-day key (expiring after two days) → 8 digits: `CP20261126093000` + `00000042`;
//! - without Redis, or while it fails: `X` + this process's 4-character instance tag + a
//!   5-digit per-process counter. The unique index on order_no turns the improbable collision
//!   into a retry by the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{FixedOffset, Utc};

use crate::metrics::Metrics;
use crate::redis::{RedisError, RedisPool};

/// Two days: a day's key outlives the day in every time zone.
const KEY_TTL_SECS: i64 = 172_800;
/// After a Redis failure, numbers are made locally for this long before Redis is tried again,
/// so an outage costs one timeout, not one per order.
const REDIS_RETRY_AFTER_MS: i64 = 5_000;

#[derive(Clone)]
pub struct OrderNumbers {
    redis: Option<RedisPool>,
    instance: String,
    counter: Arc<AtomicU64>,
    /// Epoch ms before which Redis is not asked (it failed recently).
    redis_down_until: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
}

/// UTC+8, checked at compile time.
pub const BEIJING: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
    Some(o) => o,
    None => panic!("UTC+8 is a valid offset"),
};

pub fn beijing_now() -> chrono::DateTime<FixedOffset> {
    Utc::now().with_timezone(&BEIJING)
}

impl OrderNumbers {
    pub fn new(redis: Option<RedisPool>, instance: Option<&str>, metrics: Arc<Metrics>) -> Self {
        let instance = instance
            .map(|s| {
                s.chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(4)
                    .collect::<String>()
            })
            .filter(|s| s.len() == 4)
            .unwrap_or_else(random_tag);
        OrderNumbers {
            redis,
            instance,
            counter: Arc::new(AtomicU64::new(rand::random::<u64>() % 100_000)),
            redis_down_until: Arc::new(AtomicI64::new(0)),
            metrics,
        }
    }

    pub async fn next(&self) -> String {
        let now = beijing_now();
        let stamp = now.format("%Y%m%d%H%M%S").to_string();
        if let Some(pool) = &self.redis {
            let now_ms = now.timestamp_millis();
            if now_ms >= self.redis_down_until.load(Ordering::Relaxed) {
                match incr_day(pool, &now.format("%Y%m%d").to_string()).await {
                    Ok(seq) => return format!("CP{stamp}{:08}", seq % 100_000_000),
                    Err(e) => {
                        self.redis_down_until
                            .store(now_ms + REDIS_RETRY_AFTER_MS, Ordering::Relaxed);
                        tracing::warn!(error = %e, "Redis unavailable for order numbers; using the local scheme");
                    }
                }
            }
            self.metrics.order_numbers_fallback.inc();
        }
        self.local(&stamp)
    }

    fn local(&self, stamp: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) % 100_000;
        format!("CP{stamp}X{}{n:05}", self.instance)
    }
}

async fn incr_day(pool: &RedisPool, day: &str) -> Result<i64, RedisError> {
    let mut conn = pool.get().await?;
    let key = format!("coinpay:order_seq:{day}");
    let (seq,): (i64,) = bb8_redis::redis::pipe()
        .atomic()
        .incr(&key, 1)
        .expire(&key, KEY_TTL_SECS)
        .ignore()
        .query_async(&mut *conn)
        .await?;
    Ok(seq)
}

fn random_tag() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..4)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_numbers_are_valid_unique_and_sorted() {
        let n = OrderNumbers::new(None, Some("ab12"), Arc::new(Metrics::new()));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let no = n.next().await;
            assert!(no.len() <= 32 && no.len() >= 6, "{no}");
            assert!(
                no.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            );
            assert!(no.contains("Xab12"), "{no}");
            assert!(seen.insert(no));
        }
    }
}
