//! `GET /sns/jscode2session` (§7), JSON like the real API.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::Sha256;

use super::Sandbox;

fn err(errcode: i64, errmsg: &str) -> serde_json::Value {
    json!({ "errcode": errcode, "errmsg": errmsg })
}

fn valid_code(code: &str) -> bool {
    (1..=128).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !code.starts_with("invalid")
}

fn mac(secret: &str, msg: &str) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut m) => {
            m.update(msg.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Stable per (appid, code): the same code always maps to the same user, 28 chars like WeChat's.
pub(super) fn openid_for(secret: &str, appid: &str, code: &str) -> String {
    let digest = URL_SAFE_NO_PAD.encode(mac(secret, &format!("openid:{appid}:{code}")));
    format!("o{}", digest.get(..27).unwrap_or(&digest))
}

pub(super) async fn jscode2session(
    sb: web::Data<Sandbox>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let cfg = sb.config();
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let body = if get("appid").is_empty() {
        err(41002, "appid missing")
    } else if get("secret").is_empty() {
        err(41004, "appsecret missing")
    } else if get("js_code").is_empty() {
        err(41008, "missing code")
    } else if get("grant_type") != "authorization_code" {
        err(40002, "invalid grant_type")
    } else if get("appid") != cfg.app_id {
        err(40013, "invalid appid")
    } else if get("secret") != cfg.app_secret.expose_secret() {
        err(40125, "invalid appsecret")
    } else if !valid_code(get("js_code")) {
        err(40029, "invalid code")
    } else {
        let code = get("js_code");
        let secret = cfg.app_secret.expose_secret();
        let openid = openid_for(secret, &cfg.app_id, code);
        let key = mac(secret, &format!("session_key:{code}"));
        let session_key = STANDARD.encode(key.get(..16).unwrap_or(&key));
        json!({ "openid": openid, "session_key": session_key })
    };
    let errcode = body
        .get("errcode")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    tracing::info!(api = "jscode2session", errcode, "sandbox login call");
    let latency = sb.state().faults.latency_ms;
    if latency > 0 {
        actix_rt::time::sleep(Duration::from_millis(latency)).await;
    }
    HttpResponse::Ok().json(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_openids() {
        assert!(valid_code("081abcDEF-_x"));
        assert!(!valid_code("invalid-123"));
        assert!(!valid_code("has space"));
        assert!(!valid_code(&"a".repeat(129)));
        let a = openid_for("s", "wx1", "code1");
        assert_eq!(a.len(), 28);
        assert!(a.starts_with('o'));
        assert_eq!(a, openid_for("s", "wx1", "code1"));
        assert_ne!(a, openid_for("s", "wx1", "code2"));
    }
}
