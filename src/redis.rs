//! The Redis connection pool and its health check. Redis is optional: it makes order numbers
//! unique across instances (see `order::number`), and /readyz, /metrics and `check-config` ask
//! whether a configured Redis answers. The pool lives here, beside neither of its users, so that
//! the HTTP layer and the checklist do not reach into the order module for it.

use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use bb8_redis::bb8::{Pool, RunError};
use bb8_redis::redis;

pub type RedisPool = Pool<RedisConnectionManager>;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Pool(#[from] RunError<redis::RedisError>),
    #[error("unexpected PING answer {0:?}")]
    UnexpectedPong(String),
}

/// Builds a pool that connects lazily, so that the service starts while Redis is down; a
/// connection attempt gives up after half a second, so that an outage costs one short wait.
pub fn redis_pool(url: &str) -> Result<RedisPool, RedisError> {
    let mgr = RedisConnectionManager::new(url)?;
    Ok(Pool::builder()
        .max_size(8)
        .connection_timeout(Duration::from_millis(500))
        .build_unchecked(mgr))
}

/// Whether Redis answers PING, for /readyz, the metrics and `check-config`.
pub async fn redis_ping(pool: &RedisPool) -> Result<(), RedisError> {
    let mut conn = pool.get().await?;
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(RedisError::UnexpectedPong(pong))
    }
}
