//! WeChat Pay API v2 (JSAPI, XML) and mini-program login: protocol only, no storage.
//!
//! Facts follow `wechatpay-v2.md`: signatures over every received field, Beijing-time
//! timestamps, integer fen, byte-exact notify replies. Refunds, refund notifications, bills and
//! the mutual-TLS client follow `wechatpay-next.md`.

pub mod bill;
pub mod client;
pub mod notify;
pub mod pay_params;
pub mod refund;
pub mod refund_notify;
pub mod sign;
pub mod tls;
pub mod xml;

/// All children of a `<xml>` document, unknown ones kept (signatures cover them all).
pub type Params = std::collections::BTreeMap<String, String>;

pub use client::{
    CallObserver, LoginClient, LoginConfig, LoginCredentials, OrderQuery, PayCredentials, Session,
    TradeState, UnifiedOrder, WechatClient, WechatConfig, WechatError,
};
pub use notify::{Notification, NotifyError};
pub use pay_params::PayParams;
pub use sign::{SignError, SignType, UnknownSignType};
pub use xml::XmlError;

/// Beijing time (UTC+8) in WeChat's `yyyy-MM-dd HH:mm:ss` (refund success times, bill rows).
pub fn parse_beijing_datetime(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok()?;
    let cst = chrono::FixedOffset::east_opt(8 * 3600)?;
    naive
        .and_local_timezone(cst)
        .single()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Beijing time (UTC+8) in WeChat's `yyyyMMddHHmmss` (`time_end` of notifications and
/// orderquery), as epoch milliseconds.
pub fn parse_beijing_compact_ms(s: &str) -> Option<i64> {
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()?;
    let cst = chrono::FixedOffset::east_opt(8 * 3600)?;
    naive
        .and_local_timezone(cst)
        .single()
        .map(|t| t.timestamp_millis())
}

/// Uppercase hex, since digest 0.11 outputs implement no `UpperHex`.
pub(crate) fn upper_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}
