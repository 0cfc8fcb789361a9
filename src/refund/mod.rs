//! Refunds: the pure state machine that decides what becomes of a refund and how many coins it
//! takes back (`state`), and the actor that runs it, one per live refund (`actor`). Nothing here
//! knows HTTP: the service layer (`crate::service::refunds`) drives it.

pub mod actor;
pub mod state;
