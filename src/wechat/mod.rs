//! WeChat Pay API v2 (JSAPI, XML) and mini-program login: protocol only, no storage.
//!
//! Facts follow `wechatpay-v2.md`: signatures over every received field, Beijing-time
//! timestamps, integer fen, byte-exact notify replies.

pub mod client;
pub mod notify;
pub mod pay_params;
pub mod sign;
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
