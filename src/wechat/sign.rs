//! v2 signatures (§1): MD5 or HMAC-SHA256 over `k=v&…&key=API_KEY`, uppercase hex.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{Params, upper_hex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignType {
    Md5,
    HmacSha256,
}

impl SignType {
    pub fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }
}

impl std::fmt::Display for SignType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown sign type {0:?} (expected MD5 or HMAC-SHA256)")]
pub struct UnknownSignType(pub String);

impl std::str::FromStr for SignType {
    type Err = UnknownSignType;

    /// Exact spelling only: WeChat never sends other casings, and a lenient parse
    /// would hide configuration typos.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "MD5" => Ok(SignType::Md5),
            "HMAC-SHA256" => Ok(SignType::HmacSha256),
            other => Err(UnknownSignType(other.to_owned())),
        }
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    #[error("sign field missing or empty")]
    Missing,
    #[error(transparent)]
    UnknownSignType(#[from] UnknownSignType),
    #[error("signature mismatch")]
    Mismatch,
}

/// `stringSignTemp` of §1.1: sorted by byte order (BTreeMap), `sign` and `""` skipped, raw values.
pub fn string_to_sign(params: &Params, key: &str) -> String {
    let mut s = String::new();
    for (k, v) in params {
        if k == "sign" || v.is_empty() {
            continue;
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('&');
    }
    s.push_str("key=");
    s.push_str(key);
    s
}

/// Uppercase hex signature (32 chars for MD5, 64 for HMAC-SHA256).
pub fn sign(params: &Params, key: &str, t: SignType) -> String {
    let data = string_to_sign(params, key);
    match t {
        SignType::Md5 => upper_hex(Md5::digest(data.as_bytes()).as_slice()),
        SignType::HmacSha256 => {
            // HMAC accepts keys of any length, so this cannot fail.
            match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
                Ok(mut mac) => {
                    mac.update(data.as_bytes());
                    upper_hex(mac.finalize().into_bytes().as_slice())
                }
                Err(_) => String::new(),
            }
        }
    }
}

/// §1.3: the algorithm is the message's `sign_type` when present; otherwise the sign's
/// length decides (notifies and queries often omit `sign_type`), else the configured one.
/// Returns the algorithm that verified.
pub fn verify(params: &Params, key: &str, configured: SignType) -> Result<SignType, SignError> {
    let received = params
        .get("sign")
        .filter(|s| !s.is_empty())
        .ok_or(SignError::Missing)?;
    let t = match params.get("sign_type").filter(|s| !s.is_empty()) {
        Some(st) => st.parse::<SignType>()?,
        None => match received.len() {
            32 => SignType::Md5,
            64 => SignType::HmacSha256,
            _ => configured,
        },
    };
    let expected = sign(params, key, t);
    let received = received.to_ascii_uppercase();
    if constant_time_eq(expected.as_bytes(), received.as_bytes()) {
        Ok(t)
    } else {
        Err(SignError::Mismatch)
    }
}

/// Compares without an early exit on the first differing byte (length is not secret), through
/// `subtle`, whose comparison the optimiser cannot turn back into an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// 32 random characters from `[A-Za-z0-9]` (nonce_str / nonceStr are limited to 32).
pub fn nonce() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const K1: &str = "192006250b4c09247ec02edce69f6a2d";

    fn p(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn v1() -> Params {
        p(&[
            ("appid", "wxd930ea5d5a258f4f"),
            ("mch_id", "10000100"),
            ("device_info", "1000"),
            ("body", "test"),
            ("nonce_str", "ibuaiVcKdpRxkhJA"),
        ])
    }

    /// A notification with Chinese text, coupons and an unknown extra field; kept as data
    /// because the wechatpy interop tests (tests/api/wechat_interop.rs) check it too.
    pub(crate) fn v6() -> Params {
        serde_json::from_str(include_str!("../../tests/interop/notify_v6.json"))
            .expect("the V6 vector is JSON")
    }

    #[test]
    fn v1_doc_example() {
        let params = v1();
        assert_eq!(
            string_to_sign(&params, K1),
            "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d"
        );
        assert_eq!(
            sign(&params, K1, SignType::Md5),
            "9A0A8659F005D6984697E2CA0A9CF3B7"
        );
        assert_eq!(
            sign(&params, K1, SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
    }

    #[test]
    fn v2_empty_skipped_sign_type_included() {
        let mut params = v1();
        params.insert("sign_type".into(), "MD5".into());
        params.insert("attach".into(), String::new());
        assert!(string_to_sign(&params, K1).ends_with(
            "&nonce_str=ibuaiVcKdpRxkhJA&sign_type=MD5&key=192006250b4c09247ec02edce69f6a2d"
        ));
        assert!(!string_to_sign(&params, K1).contains("attach"));
        assert_eq!(
            sign(&params, K1, SignType::Md5),
            "6B4978B16793D0C2604CD59C47425A27"
        );
    }

    #[test]
    fn v3_hmac_with_sign_type() {
        let mut params = v1();
        params.insert("sign_type".into(), "HMAC-SHA256".into());
        assert_eq!(
            sign(&params, K1, SignType::HmacSha256),
            "2C9DF1156522C0B2B03B4DBF3BCA5CACB602CBD5CA0F9E112458CF3E9855303B"
        );
        params.insert("sign".into(), sign(&params, K1, SignType::HmacSha256));
        assert_eq!(verify(&params, K1, SignType::Md5), Ok(SignType::HmacSha256));
    }

    #[test]
    fn v4_v5_pay_sign_strings() {
        let k4 = "qazwsxedcrfvtgbyhnujmikolp111111";
        let mut params = p(&[
            ("appId", "wxd678efh567hg6787"),
            ("timeStamp", "1490840662"),
            ("nonceStr", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
            ("package", "prepay_id=wx2017033010242291fcfe0db70013231072"),
            ("signType", "MD5"),
        ]);
        assert_eq!(
            string_to_sign(&params, k4),
            "appId=wxd678efh567hg6787&nonceStr=5K8264ILTKCH16CQ2502SI8ZNMTM67VS&package=prepay_id=wx2017033010242291fcfe0db70013231072&signType=MD5&timeStamp=1490840662&key=qazwsxedcrfvtgbyhnujmikolp111111"
        );
        assert_eq!(
            sign(&params, k4, SignType::Md5),
            "22D9B4E54AB1950F51E0649E8810ACD6"
        );
        params.insert("signType".into(), "HMAC-SHA256".into());
        assert_eq!(
            sign(&params, k4, SignType::HmacSha256),
            "FB9D1EFB5C509131BBFF729F88A99CA2DE9B724D06D3B3262832A53083862BC0"
        );
    }

    #[test]
    fn v6_coupons_and_utf8() {
        let params = v6();
        assert!(string_to_sign(&params, K1).contains(
            "coupon_count=1&coupon_fee=10&coupon_fee_0=10&coupon_id_0=10000&coupon_type_0=CASH"
        ));
        assert_eq!(
            sign(&params, K1, SignType::Md5),
            "6D73FCC02440C35DF46E43DBE82C0FF4"
        );
        assert_eq!(
            sign(&params, K1, SignType::HmacSha256),
            "75007FA1A7AD61FABBA386C3AAEF169764760233DDE5A0A8CF347F696959FA0C"
        );
    }

    #[test]
    fn v6_dropped_field_fails() {
        let mut signed = v6();
        signed.insert("sign".into(), "6D73FCC02440C35DF46E43DBE82C0FF4".into());
        assert_eq!(verify(&signed, K1, SignType::Md5), Ok(SignType::Md5));
        // A fixed-schema parser that loses coupon_type_0 computes another sign.
        let mut dropped = v6();
        dropped.remove("coupon_type_0");
        assert_eq!(
            sign(&dropped, K1, SignType::Md5),
            "8D918B70383739B3501F2CB6726D121E"
        );
        signed.remove("coupon_type_0");
        assert_eq!(verify(&signed, K1, SignType::Md5), Err(SignError::Mismatch));
    }

    #[test]
    fn verify_rules() {
        let mut params = v6();
        // Missing sign.
        assert_eq!(verify(&params, K1, SignType::Md5), Err(SignError::Missing));
        params.insert("sign".into(), String::new());
        assert_eq!(verify(&params, K1, SignType::Md5), Err(SignError::Missing));

        // No sign_type + 64-hex sign ⇒ HMAC even when MD5 is configured.
        params.insert("sign".into(), sign(&params, K1, SignType::HmacSha256));
        assert_eq!(verify(&params, K1, SignType::Md5), Ok(SignType::HmacSha256));

        // Unknown extra field is covered by the signature.
        let mut extra = params.clone();
        extra.insert("coupon_id_1".into(), "20000".into());
        assert_eq!(
            verify(&extra, K1, SignType::HmacSha256),
            Err(SignError::Mismatch)
        );
        extra.insert("sign".into(), sign(&extra, K1, SignType::HmacSha256));
        assert!(verify(&extra, K1, SignType::HmacSha256).is_ok());

        // Tampered amount.
        let mut tampered = params.clone();
        tampered.insert("total_fee".into(), "1".into());
        assert_eq!(
            verify(&tampered, K1, SignType::HmacSha256),
            Err(SignError::Mismatch)
        );

        // Wrong key.
        assert_eq!(
            verify(&params, "x".repeat(32).as_str(), SignType::HmacSha256),
            Err(SignError::Mismatch)
        );

        // sign_type field wins over the length rule, and must be known.
        let mut st = v6();
        st.insert("sign_type".into(), "MD5".into());
        st.insert("sign".into(), sign(&st, K1, SignType::HmacSha256));
        assert_eq!(
            verify(&st, K1, SignType::HmacSha256),
            Err(SignError::Mismatch)
        );
        st.insert("sign_type".into(), "SHA1".into());
        assert!(matches!(
            verify(&st, K1, SignType::Md5),
            Err(SignError::UnknownSignType(_))
        ));
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"ABC", b"ABC"));
        assert!(!constant_time_eq(b"ABC", b"ABD"));
        assert!(!constant_time_eq(b"ABC", b"AB"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn sign_type_parse() {
        assert_eq!("MD5".parse::<SignType>(), Ok(SignType::Md5));
        assert_eq!("HMAC-SHA256".parse::<SignType>(), Ok(SignType::HmacSha256));
        assert!("md5".parse::<SignType>().is_err());
        assert_eq!(SignType::HmacSha256.as_str(), "HMAC-SHA256");
    }

    #[test]
    fn nonce_shape() {
        let n = nonce();
        assert_eq!(n.len(), 32);
        assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(n, nonce());
    }
}
