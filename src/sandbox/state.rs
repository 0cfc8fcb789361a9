//! In-memory simulated WeChat state.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::wechat::Params;
use crate::wechat::sign::SignType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SimTradeState {
    NotPay,
    /// The user has opened the payment and not finished it (`?userpaying=true`).
    UserPaying,
    Success,
    Closed,
}

impl SimTradeState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SimTradeState::NotPay => "NOTPAY",
            SimTradeState::UserPaying => "USERPAYING",
            SimTradeState::Success => "SUCCESS",
            SimTradeState::Closed => "CLOSED",
        }
    }

    pub(super) fn desc(self) -> &'static str {
        match self {
            SimTradeState::NotPay => "订单未支付",
            SimTradeState::UserPaying => "用户支付中",
            SimTradeState::Success => "支付成功",
            SimTradeState::Closed => "订单已关闭",
        }
    }
}

pub(super) struct SimOrder {
    /// Request fields minus nonce_str/sign/sign_type: re-entry must repeat them exactly.
    pub business: Params,
    pub appid: String,
    pub out_trade_no: String,
    pub prepay_id: String,
    pub total_fee: i64,
    pub openid: String,
    pub attach: Option<String>,
    pub notify_url: String,
    pub notify_sign_type: SignType,
    pub trade_state: SimTradeState,
    pub transaction_id: Option<String>,
    pub time_end: Option<String>,
    pub notify_attempts: u64,
    pub acknowledged: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Faults {
    /// The next N pay/* calls answer SYSTEMERROR.
    #[serde(default)]
    pub systemerror: u32,
    /// Added to every API reply.
    #[serde(default)]
    pub latency_ms: u64,
    /// The next K notification deliveries are not sent (counted as failed attempts).
    #[serde(default)]
    pub drop_notifications: u32,
}

#[derive(Default)]
pub(super) struct State {
    pub orders: HashMap<String, SimOrder>,
    /// transaction_id → out_trade_no
    pub by_transaction: HashMap<String, String>,
    pub faults: Faults,
    pub attempts: u64,
    pub acknowledged: u64,
    pub pending_chains: u64,
    /// Refunds, their faults and notification counters (`refund.rs`).
    pub refunds: super::refund::RefundBook,
    pub bill_faults: super::bill::BillFaults,
}
