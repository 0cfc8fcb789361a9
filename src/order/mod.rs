//! The order lifecycle: the pure state machine, the actor that runs it per order, the
//! registry of live actors, the sweeper that expires unpaid orders, and order numbers. Nothing
//! here knows HTTP: the service layer (`crate::service`) drives it.

pub mod actor;
pub mod number;
pub mod registry;
pub mod state;
pub mod sweeper;
