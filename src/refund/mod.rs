//! Refunds: the pure state machine that decides what becomes of a refund and how many coins it
//! takes back. The actor that runs it and the store that persists it sit beside the order's.

pub mod state;
