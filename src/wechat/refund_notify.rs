//! Refund result notifications (wechatpay-next.md §3): unsigned outer XML, encrypted `req_info`.
//!
//! A refund notification carries **no `sign`**. Its authenticity is that `req_info` decrypts
//! (AES-256-ECB under the 32 ASCII characters of `md5hex(API key)`, strict PKCS#7 over 16-byte
//! blocks) into well-formed XML, that appid/mch_id are ours, and — the caller's part — that the
//! `out_refund_no` is known and its amounts match. The cipher and the mode are RustCrypto's `aes`
//! and `ecb`; only the key derivation and the framing are written here.

use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use ecb::cipher::block_padding::Pkcs7;
use ecb::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit};
use md5::{Digest, Md5};

use secrecy::ExposeSecret as _;

use super::client::PayCredentials;
use super::refund::RefundStatus;
use super::xml::{self, XmlError};
use super::{Params, parse_beijing_datetime, upper_hex};

const BLOCK: usize = 16;

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ReqInfoError {
    #[error("req_info is not base64")]
    Base64,
    #[error("req_info is not a whole number of 16-byte blocks")]
    Length,
    #[error("req_info does not decrypt (bad PKCS#7 padding: wrong key or tampered)")]
    Padding,
}

/// The AES-256 key: lowercase hex of md5(API key), used as 32 ASCII bytes (§3.2 step 2).
fn aes_key(api_key: &str) -> [u8; 32] {
    let hex = upper_hex(Md5::digest(api_key.as_bytes()).as_slice()).to_ascii_lowercase();
    let mut key = [0u8; 32];
    key.copy_from_slice(hex.as_bytes());
    key
}

fn cipher_key(api_key: &str) -> aes::cipher::Key<Aes256> {
    aes_key(api_key).into()
}

/// base64 → AES-256-ECB → strict PKCS#7 (every padding byte checked, as Java's PKCS5Padding).
pub fn decrypt_req_info(req_info: &str, api_key: &str) -> Result<Vec<u8>, ReqInfoError> {
    let mut buf = STANDARD
        .decode(req_info.trim())
        .map_err(|_| ReqInfoError::Base64)?;
    if buf.is_empty() || buf.len() % BLOCK != 0 {
        return Err(ReqInfoError::Length);
    }
    let plain = ecb::Decryptor::<Aes256>::new(&cipher_key(api_key))
        .decrypt_padded::<Pkcs7>(&mut buf)
        .map_err(|_| ReqInfoError::Padding)?;
    Ok(plain.to_vec())
}

/// The inverse (the simulator's side, and tests): always pads to 16 bytes, unlike wechatpy's
/// encrypt, which pads to 32 and is refused by a strict decoder (§3.2).
pub fn encrypt_req_info(plaintext: &[u8], api_key: &str) -> String {
    let len = plaintext.len();
    let mut buf = vec![0u8; (len / BLOCK + 1) * BLOCK];
    buf[..len].copy_from_slice(plaintext);
    match ecb::Encryptor::<Aes256>::new(&cipher_key(api_key)).encrypt_padded::<Pkcs7>(&mut buf, len)
    {
        Ok(ct) => STANDARD.encode(ct),
        // The buffer always has room for a full padding block.
        Err(_) => unreachable!("buffer sized for PKCS#7"),
    }
}

/// The decrypted `<root>` of §3.3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundNotifyInfo {
    pub out_refund_no: String,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub refund_id: String,
    pub total_fee: i64,
    pub refund_fee: i64,
    pub settlement_total_fee: Option<i64>,
    pub settlement_refund_fee: Option<i64>,
    /// SUCCESS, REFUNDCLOSE or CHANGE.
    pub refund_status: RefundStatus,
    /// Only on SUCCESS.
    pub success_time: Option<DateTime<Utc>>,
    pub refund_recv_accout: Option<String>,
    pub refund_account: Option<String>,
    /// `API`, or `VENDOR_PLATFORM` for a refund made by staff in the merchant portal.
    pub refund_request_source: Option<String>,
    /// Every decrypted field.
    pub raw: Params,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundNotification {
    pub nonce_str: String,
    pub info: RefundNotifyInfo,
    /// The outer fields (`req_info` still encrypted).
    pub raw: Params,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RefundNotifyError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("return_code is not SUCCESS: {0}")]
    ReturnFail(String),
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("appid does not match the configuration")]
    AppIdMismatch,
    #[error("mch_id does not match the configuration")]
    MchIdMismatch,
    #[error(transparent)]
    Decrypt(#[from] ReqInfoError),
    #[error("decrypted req_info is not a flat <root> document: {0}")]
    Inner(XmlError),
    #[error("missing field {0} in req_info")]
    MissingInner(&'static str),
    #[error("bad field {0} in req_info")]
    BadInner(&'static str),
}

impl RefundNotifyError {
    /// Metrics label.
    pub fn outcome(&self) -> &'static str {
        match self {
            RefundNotifyError::Xml(XmlError::TooLarge) => "too_large",
            RefundNotifyError::Xml(XmlError::Doctype) => "doctype",
            RefundNotifyError::Xml(_) => "malformed",
            RefundNotifyError::ReturnFail(_) => "return_fail",
            RefundNotifyError::MissingField(_) => "missing_field",
            RefundNotifyError::AppIdMismatch => "appid_mismatch",
            RefundNotifyError::MchIdMismatch => "mchid_mismatch",
            RefundNotifyError::Decrypt(_) => "undecryptable",
            RefundNotifyError::Inner(_)
            | RefundNotifyError::MissingInner(_)
            | RefundNotifyError::BadInner(_) => "bad_req_info",
        }
    }

    /// `return_msg` for [`xml::fail_reply`].
    pub fn reply_msg(&self) -> &'static str {
        match self {
            RefundNotifyError::AppIdMismatch | RefundNotifyError::MchIdMismatch => "商户信息不匹配",
            RefundNotifyError::Decrypt(_) => "解密失败",
            RefundNotifyError::ReturnFail(_) => "通知非成功",
            _ => "参数格式校验错误",
        }
    }
}

fn opt<'a>(p: &'a Params, k: &str) -> Option<&'a str> {
    p.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

fn inner_fen(p: &Params, k: &'static str) -> Result<Option<i64>, RefundNotifyError> {
    match opt(p, k) {
        None => Ok(None),
        Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| RefundNotifyError::BadInner(k)),
        Some(_) => Err(RefundNotifyError::BadInner(k)),
    }
}

/// The typed fields of a decrypted `<root>` document.
pub fn parse_req_info(plaintext: &[u8]) -> Result<RefundNotifyInfo, RefundNotifyError> {
    let raw = xml::decode_root(plaintext, "root").map_err(RefundNotifyError::Inner)?;
    let text = |k: &'static str| {
        opt(&raw, k)
            .map(str::to_owned)
            .ok_or(RefundNotifyError::MissingInner(k))
    };
    let amount = |k: &'static str| {
        inner_fen(&raw, k)?
            .filter(|v| *v > 0)
            .ok_or(RefundNotifyError::BadInner(k))
    };
    let success_time = match opt(&raw, "success_time") {
        None => None,
        Some(t) => {
            Some(parse_beijing_datetime(t).ok_or(RefundNotifyError::BadInner("success_time"))?)
        }
    };
    Ok(RefundNotifyInfo {
        out_refund_no: text("out_refund_no")?,
        out_trade_no: text("out_trade_no")?,
        transaction_id: text("transaction_id")?,
        refund_id: text("refund_id")?,
        total_fee: amount("total_fee")?,
        refund_fee: amount("refund_fee")?,
        settlement_total_fee: inner_fen(&raw, "settlement_total_fee")?,
        settlement_refund_fee: inner_fen(&raw, "settlement_refund_fee")?,
        refund_status: RefundStatus::parse(&text("refund_status")?),
        success_time,
        refund_recv_accout: opt(&raw, "refund_recv_accout").map(str::to_owned),
        refund_account: opt(&raw, "refund_account").map(str::to_owned),
        refund_request_source: opt(&raw, "refund_request_source").map(str::to_owned),
        raw,
    })
}

/// §3.4 in order: size/DTD and parse (`xml::decode`), return_code, appid/mch_id, decryption,
/// the inner document. Whether the refund is known and its amounts match is the caller's.
pub fn parse(body: &[u8], cfg: &PayCredentials) -> Result<RefundNotification, RefundNotifyError> {
    let raw = xml::decode(body)?;
    match opt(&raw, "return_code") {
        Some("SUCCESS") => {}
        Some(_) => {
            return Err(RefundNotifyError::ReturnFail(
                raw.get("return_msg").cloned().unwrap_or_default(),
            ));
        }
        None => return Err(RefundNotifyError::MissingField("return_code")),
    }
    if raw.get("appid") != Some(&cfg.app_id) {
        return Err(RefundNotifyError::AppIdMismatch);
    }
    if raw.get("mch_id") != Some(&cfg.mch_id) {
        return Err(RefundNotifyError::MchIdMismatch);
    }
    let req_info = opt(&raw, "req_info").ok_or(RefundNotifyError::MissingField("req_info"))?;
    let plain = decrypt_req_info(req_info, cfg.api_key.expose_secret())?;
    let info = parse_req_info(&plain)?;
    Ok(RefundNotification {
        nonce_str: raw.get("nonce_str").cloned().unwrap_or_default(),
        info,
        raw,
    })
}

/// A refund notification as WeChat sends it (the simulator's and tests' side): `info` becomes
/// `<root><k><![CDATA[v]]></k>…</root>` in key order, encrypted into `req_info`.
pub fn build_notification(
    app_id: &str,
    mch_id: &str,
    api_key: &str,
    nonce_str: &str,
    info: &Params,
) -> String {
    let plain = xml::encode_root(info, "root");
    let mut outer = Params::new();
    outer.insert("return_code".into(), "SUCCESS".into());
    outer.insert("appid".into(), app_id.to_owned());
    outer.insert("mch_id".into(), mch_id.to_owned());
    outer.insert("nonce_str".into(), nonce_str.to_owned());
    outer.insert(
        "req_info".into(),
        encrypt_req_info(plain.as_bytes(), api_key),
    );
    xml::encode(&outer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::sign::SignType;
    use sha2::Sha256;

    const K1: &str = "192006250b4c09247ec02edce69f6a2d";

    /// RN1 of §3.5 (reqinfo_short.out).
    const RN1_PLAIN: &str = "<root><out_refund_no><![CDATA[RF20240101000001]]></out_refund_no><refund_fee><![CDATA[100]]></refund_fee><refund_status><![CDATA[SUCCESS]]></refund_status></root>";
    const RN1: &str = "WBzGpzQuNpcFxIlFjUUD9FS4tLqEQ5H8bdh90ek2njNWClTGijS6p4YMkhthxnuXxyIJDKwsKMcMuxrZm5SNhy/kRT0eHFPl0iQIyUZMeL9xw+ztl6JNOZVrat3SpZL89Q0UdqoGuvqYiX3UrJVBVjuCI3MZDjx8We69j5I74FqrF5CIiRo4Ew3X1R7DY9l717tmNl8PYOHEDn3vxW6Z4N6KuTmHpRk0Xne1tDsP2L0=";
    /// RN2 of §3.5 (reqinfo_vector.out), 1048 base64 characters.
    const RN2: &str = "WBzGpzQuNpcFxIlFjUUD9FS4tLqEQ5H8bdh90ek2njNWClTGijS6p4YMkhthxnuXxyIJDKwsKMcMuxrZm5SNh/oJNlm+UsOmQERpH5oyCFtKseB/tfiyF9/BUggkE4PmF/4kjRg41CKPYIssILfRVzP2Qh4AaKH8SHU3a3DJ1tMrDEZ4L7lGI/2h+wZ68f75rudVhA+oplfx3BslIoTdOS3fSB1ldn/jHy0XiLA629H6kXJKsFwZoaRpqid/PXhkz3zAaeXG3Xeq0qMOe6+RCZTroexBnf4OsoRjiB7ZfJVy0THDVMGt+EM9zwgL3mwqG8w/ftSDkiAH+6/vLpQdLdRe8XdM4gUuJfPCBmM8wDhSwtiN1gEAySyD/iYjEJnbn/XXAuWaRnv7yaPDv4TaLpq0Vu7bSrcCVhKZDLMnDm+2oW8tPfYI8FWQ9/NTdpVxNhFU4iWPHPMsDNjzAuhMCna/Y6QyXF7dggzRj4C2IgK8rxVwMAoQeEaEfcQ9SqQ8yLe8CoAcEKc0FkPx4UvxbG1s947tvhXuuYso2F/n0X5tA5RnbxYvQaXxNWFt/Tj2QpvBaLCeIIuxBGNHBB4+QzHtC6NMVu1faooYQ0QzIRNWgrZobi8lJSnFiVrd2/MLi7khj1Q2cG7SEUHUiLVhw0sDy18VpiUHTzhs9z/Dhehj/oIgoEDXCa63fSdN0064jFwej6fy6JgkrluLrSzRX6fbnY6b1+pbwNpAEviWwH/IkrNtx5prQV5GK3b1LSAFZhlHfFc5C1v86WhGZM+NhXtRcmAzEPk3JQ4pWScAYINvQUQdIEKfEFYzfg8svnHRs/EmuDVkUMduhlrdRrRYe0dhtUpy6RERADNXaqx3kpf2uZt1cbOXwu9ohZJzyAwt4Smph/s8i1ZMWvEzpYS/b5BdoJBn2y5LZe6ffWjDn4N9KLJF3hiy3zqMSJQl1xYxAs2pOPwoHgDJzQ2avkVLPGgZBAcpCdjo3TB+xaFg5wWLvhkFn5R7jh1vUjLseAQTCjrf3Kn9/lEXCJ9qDzGFJQ==";

    fn rn2_fields() -> Params {
        [
            ("out_refund_no", "RF20240101000001"),
            ("out_trade_no", "CR20240101000001"),
            ("refund_account", "REFUND_SOURCE_UNSETTLED_FUNDS"),
            ("refund_fee", "100"),
            ("refund_id", "50300000012024010112345678901"),
            ("refund_recv_accout", "支付用户零钱"),
            ("refund_request_source", "API"),
            ("refund_status", "SUCCESS"),
            ("settlement_refund_fee", "100"),
            ("settlement_total_fee", "100"),
            ("success_time", "2024-01-01 12:05:00"),
            ("total_fee", "100"),
            ("transaction_id", "4200000540202005267407409907"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn cfg() -> PayCredentials {
        PayCredentials {
            app_id: "wxd930ea5d5a258f4f".into(),
            mch_id: "10000100".into(),
            api_key: K1.into(),
            sign_type: SignType::Md5,
        }
    }

    fn outer(req_info: &str) -> String {
        format!(
            "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wxd930ea5d5a258f4f]]></appid><mch_id><![CDATA[10000100]]></mch_id><nonce_str><![CDATA[0b9f35f484df17a732e537c37708d1d0]]></nonce_str><req_info><![CDATA[{req_info}]]></req_info></xml>"
        )
    }

    #[test]
    fn key_is_md5_hex_ascii() {
        assert_eq!(&aes_key(K1), b"d96eb16afdd491fa1e705096edbc2205");
    }

    #[test]
    fn rn1_vector() {
        assert_eq!(
            decrypt_req_info(RN1, K1).as_deref(),
            Ok(RN1_PLAIN.as_bytes())
        );
        assert_eq!(encrypt_req_info(RN1_PLAIN.as_bytes(), K1), RN1);
        // 162 bytes → 176 (pad byte 0x0e).
        assert_eq!(STANDARD.decode(RN1).map(|b| b.len()), Ok(176));
    }

    #[test]
    fn rn2_vector_byte_for_byte() {
        let plain = xml::encode_root(&rn2_fields(), "root");
        assert_eq!(plain.len(), 783);
        let req_info = encrypt_req_info(plain.as_bytes(), K1);
        assert_eq!(req_info, RN2);
        assert_eq!(req_info.len(), 1048);
        assert_eq!(
            upper_hex(Sha256::digest(req_info.as_bytes()).as_slice()).to_ascii_lowercase(),
            "fa7c09a91f9ecfe0703f4cd3129efed01c580956d0bbcc6530482db0bab3672c"
        );
        // RN1 and RN2 share their first 4 blocks (ECB).
        assert_eq!(RN1[..85], RN2[..85]);
    }

    #[test]
    fn parses_rn2_notification() {
        let n = parse(outer(RN2).as_bytes(), &cfg()).expect("valid");
        let i = &n.info;
        assert_eq!(n.nonce_str, "0b9f35f484df17a732e537c37708d1d0");
        assert_eq!(i.out_refund_no, "RF20240101000001");
        assert_eq!(i.out_trade_no, "CR20240101000001");
        assert_eq!(i.transaction_id, "4200000540202005267407409907");
        assert_eq!(i.refund_id, "50300000012024010112345678901");
        assert_eq!((i.total_fee, i.refund_fee), (100, 100));
        assert_eq!(i.settlement_total_fee, Some(100));
        assert_eq!(i.settlement_refund_fee, Some(100));
        assert_eq!(i.refund_status, RefundStatus::Success);
        assert_eq!(
            i.success_time.map(|t| t.to_rfc3339()),
            Some("2024-01-01T04:05:00+00:00".into())
        );
        assert_eq!(i.refund_recv_accout.as_deref(), Some("支付用户零钱"));
        assert_eq!(
            i.refund_account.as_deref(),
            Some("REFUND_SOURCE_UNSETTLED_FUNDS")
        );
        assert_eq!(i.refund_request_source.as_deref(), Some("API"));
        assert_eq!(i.raw.len(), 13);
        // The builder produces the same document.
        let built = build_notification(
            "wxd930ea5d5a258f4f",
            "10000100",
            K1,
            "0b9f35f484df17a732e537c37708d1d0",
            &rn2_fields(),
        );
        assert_eq!(parse(built.as_bytes(), &cfg()), Ok(n));
    }

    #[test]
    fn tampered_garbage_and_bad_padding() {
        let c = cfg();
        // One flipped ciphertext bit in the last block breaks the padding.
        let mut ct = STANDARD.decode(RN2).expect("base64");
        let last = ct.len() - 1;
        ct[last] ^= 0x01;
        let e = parse(outer(&STANDARD.encode(&ct)).as_bytes(), &c).expect_err("tampered");
        assert_eq!(e, RefundNotifyError::Decrypt(ReqInfoError::Padding));
        assert_eq!(e.outcome(), "undecryptable");
        // A flipped bit in an earlier block decrypts to garbage that is not the XML.
        let mut ct = STANDARD.decode(RN2).expect("base64");
        ct[20] ^= 0x01;
        let e = parse(outer(&STANDARD.encode(&ct)).as_bytes(), &c).expect_err("tampered");
        assert_eq!(e.outcome(), "bad_req_info", "{e}");
        // Wrong key.
        let e = decrypt_req_info(RN2, "wrongkeywrongkeywrongkeywrongkey").expect_err("key");
        assert_eq!(e, ReqInfoError::Padding);
        // Not base64, not whole blocks, empty.
        assert_eq!(
            decrypt_req_info("not base64!", K1),
            Err(ReqInfoError::Base64)
        );
        assert_eq!(
            decrypt_req_info(&STANDARD.encode([0u8; 17]), K1),
            Err(ReqInfoError::Length)
        );
        assert_eq!(decrypt_req_info("", K1), Err(ReqInfoError::Length));
        // wechatpy's own encrypt pads to 32 bytes (pad byte 17): strict PKCS#7-16 refuses it.
        let plain = RN1_PLAIN.as_bytes();
        let mut padded = plain.to_vec();
        let pad = 32 - plain.len() % 32;
        padded.extend(std::iter::repeat_n(pad as u8, pad));
        let mut buf = padded.clone();
        let ct = ecb::Encryptor::<Aes256>::new(&cipher_key(K1))
            .encrypt_padded::<ecb::cipher::block_padding::NoPadding>(&mut buf, padded.len())
            .expect("aligned")
            .to_vec();
        assert_eq!(
            decrypt_req_info(&STANDARD.encode(ct), K1),
            Err(ReqInfoError::Padding)
        );
        // Valid padding, but the plaintext is not our XML.
        let junk = encrypt_req_info(b"<xml><a>1</a></xml>", K1);
        assert!(matches!(
            parse(outer(&junk).as_bytes(), &c),
            Err(RefundNotifyError::Inner(XmlError::NotXmlRoot))
        ));
        let dtd = encrypt_req_info(b"<!DOCTYPE x><root></root>", K1);
        assert!(matches!(
            parse(outer(&dtd).as_bytes(), &c),
            Err(RefundNotifyError::Inner(XmlError::Doctype))
        ));
    }

    #[test]
    fn outer_checks_come_first() {
        let c = cfg();
        assert_eq!(
            parse(
                b"<xml><return_code>FAIL</return_code><return_msg>x</return_msg></xml>",
                &c
            ),
            Err(RefundNotifyError::ReturnFail("x".into()))
        );
        assert_eq!(
            parse(b"<xml><appid>a</appid></xml>", &c),
            Err(RefundNotifyError::MissingField("return_code"))
        );
        let other_app = outer(RN2).replace("wxd930ea5d5a258f4f", "wx0000000000000000");
        assert_eq!(
            parse(other_app.as_bytes(), &c),
            Err(RefundNotifyError::AppIdMismatch)
        );
        let other_mch = outer(RN2).replace("10000100", "1");
        assert_eq!(
            parse(other_mch.as_bytes(), &c),
            Err(RefundNotifyError::MchIdMismatch)
        );
        let no_info = outer("");
        assert_eq!(
            parse(no_info.as_bytes(), &c),
            Err(RefundNotifyError::MissingField("req_info"))
        );
        assert_eq!(
            parse(b"<!DOCTYPE x><xml></xml>", &c),
            Err(RefundNotifyError::Xml(XmlError::Doctype))
        );
    }

    #[test]
    fn inner_fields_typed() {
        // RN1 decrypts but lacks the order fields: refused, not half-read.
        let e = parse(outer(RN1).as_bytes(), &cfg()).expect_err("short");
        assert_eq!(e, RefundNotifyError::MissingInner("out_trade_no"));
        for (k, v) in [
            ("refund_fee", "1.00"),
            ("refund_fee", "0"),
            ("total_fee", "-1"),
            ("settlement_refund_fee", "x"),
            ("success_time", "20240101120500"),
        ] {
            let mut f = rn2_fields();
            f.insert(k.into(), v.into());
            let plain = xml::encode_root(&f, "root");
            assert!(
                matches!(
                    parse_req_info(plain.as_bytes()),
                    Err(RefundNotifyError::BadInner(_))
                ),
                "{k}={v}"
            );
        }
        let mut change = rn2_fields();
        change.insert("refund_status".into(), "CHANGE".into());
        change.remove("success_time");
        let i = parse_req_info(xml::encode_root(&change, "root").as_bytes()).expect("change");
        assert_eq!(i.refund_status, RefundStatus::Change);
        assert_eq!(i.success_time, None);
    }
}
