//! coinpay: sells compute-credit ("算力") packages to WeChat mini-program users through
//! WeChat Pay API v2 (JSAPI), credits the coins exactly once and keeps a ledger of every coin.

pub mod checklist;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod money;
pub mod order;
pub mod redis;
pub mod sandbox;
pub mod service;
pub mod startup;
pub mod store;
pub mod wechat;
