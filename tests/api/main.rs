//! coinpay's integration tests, one binary (one link step) made of a module per area.
//!
//! Black-box: each test starts the real `coinpay` binary with its WeChat Pay simulator, against
//! a database of its own (SQLite, and MariaDB when scripts/test.sh provides one), and talks HTTP
//! to it. A test that holds on both backends is written once and run as `name::sqlite` and
//! `name::mysql` (see `helpers::backend_test!`). `sandbox` and `wechat_interop` test the
//! simulator and the WeChat Pay layer through the library.

#[path = "../harness/mod.rs"]
mod harness;
mod helpers;

mod console;
mod deploy_backup;
mod foundation;
mod galera;
mod ha;
mod ops;
mod payments;
mod reconcile;
mod refunds;
mod resilience;
mod sandbox;
mod shop;
mod wechat_interop;
mod wechat_next;
