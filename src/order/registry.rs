//! The order actors: one per live order, kept by the shared [`Registry`](crate::registry).

use std::sync::Arc;
use std::time::Duration;

use super::actor::{OrderActor, OrderCore};
use crate::registry::Registry;

pub type OrderRegistry = Registry<OrderActor>;

/// The registry of order actors, each made with the shared core and the idle limits.
pub fn order_registry(
    core: Arc<OrderCore>,
    idle: Duration,
    terminal_linger: Duration,
) -> OrderRegistry {
    Registry::new(move |order_no, deregister| {
        OrderActor::new(
            order_no.to_string(),
            core.clone(),
            deregister,
            idle,
            terminal_linger,
        )
    })
}
