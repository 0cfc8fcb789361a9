//! The services: what the application does, below the HTTP layer and above the order actors and
//! the store. A handler parses its request, calls one service (or one store query) and maps the
//! answer; the services never see a request or a response, so that the same operation can be
//! driven by a handler, a test or a future console alike.
//!
//! Layers, each depending only on those below it:
//! `http` → `service` → `order::{registry, actor, sweeper}` → `order::state` (pure), `store`,
//! `wechat`.

pub mod orders;
pub mod reconcile;
pub mod reconcile_job;
pub mod refund_poller;
pub mod refunds;
