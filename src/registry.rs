//! One actor per key (an order number, a refund number), started on demand, and replaced when
//! its mailbox has closed (stopped or died). The order actors and the refund actors are both
//! kept here: what differs between them is only how an actor is made, which the owner passes
//! in as a function.
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

use actix::dev::ToEnvelope;
use actix::prelude::*;

const SHARDS: usize = 32;

/// Called once by an actor when it stops, so that new messages go to a fresh actor.
pub type Deregister = Box<dyn FnOnce() + Send>;

/// Makes the actor of a key, given the callback it must call when it stops.
type Spawn<A> = dyn Fn(&str, Deregister) -> A + Send + Sync;

/// key → (generation, address); the generation tells a stale actor's removal apart.
type Shard<A> = Mutex<HashMap<String, (u64, Addr<A>)>>;

struct Inner<A: Actor> {
    shards: Vec<Shard<A>>,
    hasher: std::collections::hash_map::RandomState,
    generation: AtomicU64,
    spawn: Box<Spawn<A>>,
}

impl<A: Actor> Inner<A> {
    fn shard(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Called by an actor that stops; removes it only if it is still the registered one.
    fn remove(&self, key: &str, generation: u64) {
        let mut shard = lock(&self.shards[self.shard(key)]);
        if shard.get(key).is_some_and(|(g, _)| *g == generation) {
            shard.remove(key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent: take it anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Registry<A: Actor> {
    inner: Arc<Inner<A>>,
}

impl<A: Actor> Clone for Registry<A> {
    fn clone(&self) -> Self {
        Registry {
            inner: self.inner.clone(),
        }
    }
}

impl<A> Registry<A>
where
    A: Actor<Context = Context<A>>,
{
    pub fn new(spawn: impl Fn(&str, Deregister) -> A + Send + Sync + 'static) -> Self {
        Registry {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: Default::default(),
                generation: AtomicU64::new(1),
                spawn: Box::new(spawn),
            }),
        }
    }

    fn addr(&self, key: &str) -> Addr<A> {
        let inner = &self.inner;
        let mut shard = lock(&inner.shards[inner.shard(key)]);
        if let Some((_, addr)) = shard.get(key)
            && addr.connected()
        {
            return addr.clone();
        }
        let generation = inner.generation.fetch_add(1, Ordering::Relaxed);
        let deregister = {
            let (registry, key) = (Arc::downgrade(inner), key.to_string());
            Box::new(move || {
                if let Some(registry) = registry.upgrade() {
                    registry.remove(&key, generation);
                }
            })
        };
        let addr = (inner.spawn)(key, deregister).start();
        shard.insert(key.to_string(), (generation, addr.clone()));
        addr
    }

    /// Sends a message to the key's actor. A message that reached a stopping actor was
    /// dropped unprocessed, so it is safe to resend it to a fresh one.
    pub async fn send<M, R, E>(&self, key: &str, msg: M) -> Result<R, E>
    where
        M: Message<Result = Result<R, E>> + Clone + Send + 'static,
        R: Send + 'static,
        E: From<MailboxError> + Send + 'static,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let mut last = None;
        for _ in 0..3 {
            match self.addr(key).send(msg.clone()).await {
                Ok(reply) => return reply,
                Err(MailboxError::Closed) => last = Some(MailboxError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.unwrap_or(MailboxError::Closed).into())
    }

    /// How many actors are alive.
    pub fn live(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).len()).sum()
    }
}
