//! coinpay: sells compute-credit ("算力") packages to WeChat mini-program users through
//! WeChat Pay API v2 (JSAPI), credits the coins exactly once and keeps a ledger of every coin.

pub mod backup;
pub mod checklist;
pub mod config;
pub mod error;
pub mod healthcheck;
pub mod http;
pub mod metrics;
pub mod money;
pub mod order;
pub mod redis;
pub mod refund;
pub mod sandbox;
pub mod schema_sql;
pub mod service;
pub mod startup;
pub mod store;
pub mod wechat;
