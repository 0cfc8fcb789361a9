//! Parameters for `wx.requestPayment` (§3): signed with the API key and the order's sign type.

use serde::{Deserialize, Serialize};

use super::Params;
use super::sign::{SignType, sign};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PayParams {
    /// Signed but not passed to wx.requestPayment; returned so the client can check it.
    #[serde(rename = "appId")]
    pub app_id: String,
    /// Seconds, not milliseconds.
    #[serde(rename = "timeStamp")]
    pub time_stamp: String,
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    /// Literally `prepay_id=<id>`.
    pub package: String,
    #[serde(rename = "signType")]
    pub sign_type: String,
    #[serde(rename = "paySign")]
    pub pay_sign: String,
}

/// `t` must be the sign type used for unifiedorder (§3).
pub fn build(
    app_id: &str,
    prepay_id: &str,
    key: &str,
    t: SignType,
    timestamp_secs: i64,
    nonce: &str,
) -> PayParams {
    let time_stamp = timestamp_secs.to_string();
    let package = format!("prepay_id={prepay_id}");
    let mut params = Params::new();
    params.insert("appId".into(), app_id.to_owned());
    params.insert("timeStamp".into(), time_stamp.clone());
    params.insert("nonceStr".into(), nonce.to_owned());
    params.insert("package".into(), package.clone());
    params.insert("signType".into(), t.as_str().to_owned());
    let pay_sign = sign(&params, key, t);
    PayParams {
        app_id: app_id.to_owned(),
        time_stamp,
        nonce_str: nonce.to_owned(),
        package,
        sign_type: t.as_str().to_owned(),
        pay_sign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K4: &str = "qazwsxedcrfvtgbyhnujmikolp111111";

    #[test]
    fn v4_official_md5() {
        let p = build(
            "wxd678efh567hg6787",
            "wx2017033010242291fcfe0db70013231072",
            K4,
            SignType::Md5,
            1490840662,
            "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
        );
        assert_eq!(p.pay_sign, "22D9B4E54AB1950F51E0649E8810ACD6");
        assert_eq!(p.package, "prepay_id=wx2017033010242291fcfe0db70013231072");
        assert_eq!(p.sign_type, "MD5");
        assert_eq!(p.time_stamp, "1490840662");
        let json = serde_json::to_value(&p).expect("serialises");
        for k in [
            "appId",
            "timeStamp",
            "nonceStr",
            "package",
            "signType",
            "paySign",
        ] {
            assert!(json.get(k).is_some(), "{k} missing");
        }
    }

    #[test]
    fn v5_hmac() {
        let p = build(
            "wxd678efh567hg6787",
            "wx2017033010242291fcfe0db70013231072",
            K4,
            SignType::HmacSha256,
            1490840662,
            "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
        );
        assert_eq!(
            p.pay_sign,
            "FB9D1EFB5C509131BBFF729F88A99CA2DE9B724D06D3B3262832A53083862BC0"
        );
        assert_eq!(p.sign_type, "HMAC-SHA256");
    }
}
