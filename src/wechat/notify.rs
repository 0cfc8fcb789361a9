//! Payment result notifications (§4): parse and authenticate; amount/order checks are the caller's.

use secrecy::ExposeSecret;

use super::Params;
use super::client::PayCredentials;
use super::sign::{self, SignType};
use super::xml::{self, XmlError};
use crate::metrics::NotificationOutcome;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub out_trade_no: String,
    pub transaction_id: String,
    pub total_fee: i64,
    pub fee_type: String,
    pub openid: String,
    pub time_end: String,
    /// The algorithm that verified the sign (notifies often omit `sign_type`).
    pub sign_type: SignType,
    /// Every received field, `sign` included.
    pub raw: Params,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum NotifyError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("return_code is not SUCCESS: {0}")]
    ReturnFail(String),
    #[error("bad or missing signature")]
    BadSignature,
    #[error("appid does not match the configuration")]
    AppIdMismatch,
    #[error("mch_id does not match the configuration")]
    MchIdMismatch,
    #[error("result_code is not SUCCESS: {0}")]
    ResultNotSuccess(String),
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("bad field {0}")]
    BadField(&'static str),
}

impl NotifyError {
    /// The notification's outcome label.
    pub fn outcome(&self) -> NotificationOutcome {
        match self {
            NotifyError::Xml(XmlError::TooLarge) => NotificationOutcome::TooLarge,
            NotifyError::Xml(XmlError::Doctype) => NotificationOutcome::Doctype,
            NotifyError::Xml(_) => NotificationOutcome::Malformed,
            NotifyError::ReturnFail(_) => NotificationOutcome::ReturnFail,
            NotifyError::BadSignature => NotificationOutcome::BadSignature,
            NotifyError::AppIdMismatch => NotificationOutcome::AppidMismatch,
            NotifyError::MchIdMismatch => NotificationOutcome::MchidMismatch,
            NotifyError::ResultNotSuccess(_) => NotificationOutcome::ResultFail,
            NotifyError::MissingField(_) => NotificationOutcome::MissingField,
            NotifyError::BadField(_) => NotificationOutcome::BadField,
        }
    }

    /// `return_msg` for [`xml::fail_reply`] (§4.4 examples).
    pub fn reply_msg(&self) -> &'static str {
        match self {
            NotifyError::BadSignature => "签名失败",
            NotifyError::AppIdMismatch | NotifyError::MchIdMismatch => "商户信息不匹配",
            NotifyError::ResultNotSuccess(_) | NotifyError::ReturnFail(_) => "支付结果非成功",
            NotifyError::Xml(_) | NotifyError::MissingField(_) | NotifyError::BadField(_) => {
                "参数格式校验错误"
            }
        }
    }
}

fn required<'a>(p: &'a Params, name: &'static str) -> Result<&'a str, NotifyError> {
    p.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or(NotifyError::MissingField(name))
}

/// §4.3 steps 1–6, in that order: size/DTD, parse, return_code, signature, appid/mch_id,
/// result_code; then the typed fields.
pub fn parse(body: &[u8], cfg: &PayCredentials) -> Result<Notification, NotifyError> {
    let raw = xml::decode(body)?;
    match raw.get("return_code").map(String::as_str) {
        Some("SUCCESS") => {}
        Some(_) => {
            return Err(NotifyError::ReturnFail(
                raw.get("return_msg").cloned().unwrap_or_default(),
            ));
        }
        None => return Err(NotifyError::MissingField("return_code")),
    }
    let sign_type = sign::verify(&raw, cfg.api_key.expose_secret(), cfg.sign_type)
        .map_err(|_| NotifyError::BadSignature)?;
    if raw.get("appid") != Some(&cfg.app_id) {
        return Err(NotifyError::AppIdMismatch);
    }
    if raw.get("mch_id") != Some(&cfg.mch_id) {
        return Err(NotifyError::MchIdMismatch);
    }
    if raw.get("result_code").map(String::as_str) != Some("SUCCESS") {
        let code = raw
            .get("err_code")
            .or_else(|| raw.get("result_code"))
            .cloned()
            .unwrap_or_default();
        return Err(NotifyError::ResultNotSuccess(code));
    }
    let total_fee = required(&raw, "total_fee")?
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or(NotifyError::BadField("total_fee"))?;
    Ok(Notification {
        out_trade_no: required(&raw, "out_trade_no")?.to_owned(),
        transaction_id: required(&raw, "transaction_id")?.to_owned(),
        total_fee,
        // fee_type defaults to CNY when absent (§2.1).
        fee_type: raw
            .get("fee_type")
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| "CNY".to_owned()),
        openid: required(&raw, "openid")?.to_owned(),
        time_end: required(&raw, "time_end")?.to_owned(),
        sign_type,
        raw,
    })
}

/// Signed notification XML (used by the sandbox and tests). With `include_sign_type` the
/// `sign_type` field is added before signing, as some real notifies do.
pub fn build_notification(
    fields: &Params,
    key: &str,
    t: SignType,
    include_sign_type: bool,
) -> String {
    let mut p = fields.clone();
    p.remove("sign");
    if include_sign_type {
        p.insert("sign_type".into(), t.as_str().into());
    }
    let s = sign::sign(&p, key, t);
    p.insert("sign".into(), s);
    xml::encode(&p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::sign::tests::v6;

    const K1: &str = "192006250b4c09247ec02edce69f6a2d";

    fn cfg(t: SignType) -> PayCredentials {
        PayCredentials {
            app_id: "wxd930ea5d5a258f4f".into(),
            mch_id: "10000100".into(),
            api_key: K1.into(),
            sign_type: t,
        }
    }

    #[test]
    fn parses_md5_v6() {
        let body = build_notification(&v6(), K1, SignType::Md5, false);
        assert!(body.contains("<sign><![CDATA[6D73FCC02440C35DF46E43DBE82C0FF4]]></sign>"));
        let n = parse(body.as_bytes(), &cfg(SignType::Md5)).expect("valid");
        assert_eq!(n.out_trade_no, "CR20240101000001");
        assert_eq!(n.transaction_id, "4200000540202005267407409907");
        assert_eq!(n.total_fee, 100);
        assert_eq!(n.fee_type, "CNY");
        assert_eq!(n.openid, "oUpF8uMEb4qRXf22hE3X68TekukE");
        assert_eq!(n.time_end, "20240101120000");
        assert_eq!(n.sign_type, SignType::Md5);
        assert_eq!(n.raw.get("attach").map(String::as_str), Some("算力充值"));
    }

    #[test]
    fn parses_hmac_with_and_without_sign_type() {
        for include in [false, true] {
            let body = build_notification(&v6(), K1, SignType::HmacSha256, include);
            // Configured MD5: the 64-hex length (or the field) still selects HMAC.
            let n = parse(body.as_bytes(), &cfg(SignType::Md5)).expect("valid");
            assert_eq!(n.sign_type, SignType::HmacSha256);
        }
    }

    #[test]
    fn bare_numbers_accepted() {
        let mut p = v6();
        p.insert("sign".into(), "6D73FCC02440C35DF46E43DBE82C0FF4".into());
        let body: String = std::iter::once("<xml>\n".to_owned())
            .chain(p.iter().map(|(k, v)| {
                if v.bytes().all(|b| b.is_ascii_digit()) {
                    format!("<{k}>{v}</{k}>\n")
                } else {
                    format!("<{k}><![CDATA[{v}]]></{k}>\n")
                }
            }))
            .chain(std::iter::once("</xml>".to_owned()))
            .collect();
        assert!(parse(body.as_bytes(), &cfg(SignType::Md5)).is_ok());
    }

    #[test]
    fn failure_kinds() {
        let c = cfg(SignType::Md5);
        let check = |body: &str, want: NotifyError| {
            assert_eq!(parse(body.as_bytes(), &c), Err(want));
        };
        // 1. DTD refused before anything else.
        let e = parse(b"<!DOCTYPE x><xml></xml>", &c).expect_err("doctype");
        assert_eq!(e, NotifyError::Xml(XmlError::Doctype));
        assert_eq!(e.outcome(), NotificationOutcome::Doctype);
        assert_eq!(e.reply_msg(), "参数格式校验错误");
        // 2. Malformed.
        let e = parse(b"not xml", &c).expect_err("malformed");
        assert_eq!(e.outcome(), NotificationOutcome::Malformed);
        // 3. return_code FAIL.
        check(
            "<xml><return_code>FAIL</return_code><return_msg>boom</return_msg></xml>",
            NotifyError::ReturnFail("boom".into()),
        );
        check(
            "<xml><a>1</a></xml>",
            NotifyError::MissingField("return_code"),
        );
        // 4. Missing and bad signature.
        let mut unsigned = v6();
        unsigned.remove("sign");
        check(&xml::encode(&unsigned), NotifyError::BadSignature);
        let mut tampered = v6();
        tampered.insert("sign".into(), "6D73FCC02440C35DF46E43DBE82C0FF4".into());
        tampered.insert("total_fee".into(), "1".into());
        check(&xml::encode(&tampered), NotifyError::BadSignature);
        let wrong_key = build_notification(&v6(), &"k".repeat(32), SignType::Md5, false);
        check(&wrong_key, NotifyError::BadSignature);
        assert_eq!(NotifyError::BadSignature.reply_msg(), "签名失败");
        // 5. appid / mch_id.
        let mut other_app = v6();
        other_app.insert("appid".into(), "wx0000000000000000".into());
        check(
            &build_notification(&other_app, K1, SignType::Md5, false),
            NotifyError::AppIdMismatch,
        );
        let mut other_mch = v6();
        other_mch.insert("mch_id".into(), "1".into());
        check(
            &build_notification(&other_mch, K1, SignType::Md5, false),
            NotifyError::MchIdMismatch,
        );
        // 6. result_code.
        let mut failed = v6();
        failed.insert("result_code".into(), "FAIL".into());
        failed.insert("err_code".into(), "NOTENOUGH".into());
        check(
            &build_notification(&failed, K1, SignType::Md5, false),
            NotifyError::ResultNotSuccess("NOTENOUGH".into()),
        );
        // Typed fields.
        let mut no_tx = v6();
        no_tx.remove("transaction_id");
        check(
            &build_notification(&no_tx, K1, SignType::Md5, false),
            NotifyError::MissingField("transaction_id"),
        );
        for bad in ["abc", "-5", "0", "1.5"] {
            let mut bad_fee = v6();
            bad_fee.insert("total_fee".into(), bad.into());
            check(
                &build_notification(&bad_fee, K1, SignType::Md5, false),
                NotifyError::BadField("total_fee"),
            );
        }
        // Oversized.
        let big = format!("<xml><a>{}</a></xml>", "x".repeat(xml::MAX_BODY));
        check(&big, NotifyError::Xml(XmlError::TooLarge));
    }
}
