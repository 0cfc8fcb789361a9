//! Hands out one OrderActor per order number, started on demand, and replaces an actor whose
//! mailbox has closed (stopped or died).
//!
//! An actor starts on the thread that first needs it (the HTTP worker handling the
//! notification, or the sweeper's) rather than on a pool of its own: a separate arbiter would
//! add a thread hop to every message on the hot path, which cost measurably more service CPU per
//! paid notification (see the README's Performance section).
//!
//! The registry knows the actor; the actor does not know the registry. Each actor is handed a
//! callback that takes it out of the map when it stops, so that there is no import cycle and no
//! actor can reach into the registry's internals.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;

use super::actor::{OrderActor, OrderCore, OrderError};

const SHARDS: usize = 32;

/// order_no → (generation, address); the generation tells a stale actor's removal apart.
type Shard = Mutex<HashMap<String, (u64, Addr<OrderActor>)>>;

struct RegistryInner {
    shards: Vec<Shard>,
    hasher: std::collections::hash_map::RandomState,
    generation: AtomicU64,
    core: Arc<OrderCore>,
    idle: Duration,
    terminal_linger: Duration,
}

impl RegistryInner {
    fn shard(&self, order_no: &str) -> usize {
        (self.hasher.hash_one(order_no) as usize) % SHARDS
    }

    /// Called by an actor that stops; removes it only if it is still the registered one.
    fn remove(&self, order_no: &str, generation: u64) {
        let mut shard = lock(&self.shards[self.shard(order_no)]);
        if shard.get(order_no).is_some_and(|(g, _)| *g == generation) {
            shard.remove(order_no);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent: take it anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
pub struct OrderRegistry {
    inner: Arc<RegistryInner>,
}

impl OrderRegistry {
    pub fn new(core: Arc<OrderCore>, idle: Duration, terminal_linger: Duration) -> Self {
        OrderRegistry {
            inner: Arc::new(RegistryInner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: Default::default(),
                generation: AtomicU64::new(1),
                core,
                idle,
                terminal_linger,
            }),
        }
    }

    fn addr(&self, order_no: &str) -> Addr<OrderActor> {
        let inner = &self.inner;
        let idx = inner.shard(order_no);
        let mut shard = lock(&inner.shards[idx]);
        if let Some((_, addr)) = shard.get(order_no)
            && addr.connected()
        {
            return addr.clone();
        }
        let generation = inner.generation.fetch_add(1, Ordering::Relaxed);
        let deregister = {
            let (registry, order_no) = (Arc::downgrade(inner), order_no.to_string());
            Box::new(move || {
                if let Some(registry) = registry.upgrade() {
                    registry.remove(&order_no, generation);
                }
            })
        };
        let actor = OrderActor::new(
            order_no.to_string(),
            inner.core.clone(),
            deregister,
            inner.idle,
            inner.terminal_linger,
        );
        let addr = actor.start();
        shard.insert(order_no.to_string(), (generation, addr.clone()));
        addr
    }

    /// Sends a message to the order's actor. A message that reached a stopping actor was
    /// dropped unprocessed, so it is safe to resend it to a fresh one.
    pub async fn send<M, R>(&self, order_no: &str, msg: M) -> Result<R, OrderError>
    where
        M: Message<Result = Result<R, OrderError>> + Clone + Send + 'static,
        R: Send + 'static,
        OrderActor: Handler<M>,
    {
        let mut last = None;
        for _ in 0..3 {
            match self.addr(order_no).send(msg.clone()).await {
                Ok(reply) => return reply,
                Err(MailboxError::Closed) => last = Some(MailboxError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.unwrap_or(MailboxError::Closed).into())
    }

    pub fn live(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).len()).sum()
    }
}
