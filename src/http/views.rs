//! JSON shapes of the API (times as RFC 3339 UTC strings, money in fen, coins as integers).

use serde::{Deserialize, Serialize};

use crate::money::{Coins, Fen};
use crate::order::state::OrderStatus;
use crate::store::ledger::{LedgerKind, LedgerRow};
use crate::store::orders::OrderRow;
use crate::store::packages::Package;

pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[derive(Serialize)]
pub struct PackageView {
    pub id: i64,
    pub name: String,
    pub coins: Coins,
    pub bonus_coins: Coins,
    pub total_coins: Coins,
    pub price_fen: Fen,
    pub sort_order: i32,
    pub active: bool,
}

impl From<&Package> for PackageView {
    fn from(p: &Package) -> Self {
        PackageView {
            id: p.id,
            name: p.name.clone(),
            coins: p.coins,
            bonus_coins: p.bonus_coins,
            total_coins: p.coins + p.bonus_coins,
            price_fen: p.price_fen,
            sort_order: p.sort_order,
            active: p.active,
        }
    }
}

#[derive(Serialize)]
pub struct OrderView {
    pub order_no: String,
    pub status: OrderStatus,
    pub package_id: i64,
    pub amount_fen: Fen,
    pub coins: Coins,
    pub bonus_coins: Coins,
    pub created_at: String,
    pub expires_at: String,
    pub paid_at: Option<String>,
    pub transaction_id: Option<String>,
    pub err_code: Option<String>,
}

impl From<&OrderRow> for OrderView {
    fn from(o: &OrderRow) -> Self {
        OrderView {
            order_no: o.order_no.clone(),
            status: o.status,
            package_id: o.package_id,
            amount_fen: o.amount_fen,
            coins: o.coins,
            bonus_coins: o.bonus_coins,
            created_at: time(o.created_at),
            expires_at: time(o.expires_at),
            paid_at: o.paid_at.map(time),
            transaction_id: o.transaction_id.clone(),
            err_code: o.err_code.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct LedgerView {
    pub id: i64,
    pub kind: LedgerKind,
    pub delta: Coins,
    pub balance_after: Coins,
    pub order_no: Option<String>,
    pub transaction_id: Option<String>,
    pub amount_fen: Option<Fen>,
    pub request_id: Option<String>,
    pub reason: Option<String>,
    pub created_at: String,
}

impl From<&LedgerRow> for LedgerView {
    fn from(l: &LedgerRow) -> Self {
        LedgerView {
            id: l.id,
            kind: l.kind,
            delta: l.delta,
            balance_after: l.balance_after,
            order_no: l.order_no.clone(),
            transaction_id: l.transaction_id.clone(),
            amount_fen: l.amount_fen,
            request_id: l.request_id.clone(),
            reason: l.reason.clone(),
            created_at: time(l.created_at),
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy)]
pub struct PageQuery {
    pub page: Option<i64>,
    pub page_size: Option<i64>,
}

impl PageQuery {
    /// (page, page_size, offset), clamped to sane bounds.
    pub fn resolve(&self) -> (i64, i64, i64) {
        let page = self.page.unwrap_or(1).max(1);
        let size = self.page_size.unwrap_or(20).clamp(1, 100);
        (page, size, (page - 1).saturating_mul(size))
    }
}
