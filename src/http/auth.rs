//! Who is calling: mini-program users carry an HS256 JWT (`sub` = user id, `exp`); other
//! services and operators carry static bearer tokens, compared in constant time.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::error::AppError;
use crate::wechat::sign::constant_time_eq;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

#[derive(Clone)]
pub struct JwtKeys {
    secret: Vec<u8>,
    pub ttl_secs: i64,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    iat: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_secs: i64) -> Self {
        JwtKeys {
            secret: secret.to_vec(),
            ttl_secs,
        }
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        // HMAC takes a key of any length.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    pub fn issue(&self, user_id: i64, now_secs: i64) -> String {
        let claims = Claims {
            sub: user_id.to_string(),
            exp: now_secs + self.ttl_secs,
            iat: now_secs,
        };
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
        let sig = B64.encode(self.mac(signing_input.as_bytes()));
        format!("{signing_input}.{sig}")
    }

    /// The user id in a valid, unexpired token.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<i64, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let expected = self.mac(format!("{h}.{p}").as_bytes());
        if !constant_time_eq(&sig, &expected) {
            return Err(TokenError::BadSignature);
        }
        // Only our own header is accepted (no "alg": "none", no algorithm switch).
        let header = B64.decode(h).map_err(|_| TokenError::Malformed)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        claims.sub.parse().map_err(|_| TokenError::Malformed)
    }
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, AppError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| AppError::Internal("app state missing".into()))
}

/// A logged-in mini-program user.
pub struct AuthUser(pub i64);

impl FromRequest for AuthUser {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready((|| {
            let st = state(req)?;
            let token = bearer(req).ok_or(AppError::Unauthorized("missing bearer token"))?;
            let now = chrono::Utc::now().timestamp();
            st.jwt
                .verify(token, now)
                .map(|id| {
                    tracing::Span::current().record("user_id", id);
                    AuthUser(id)
                })
                .map_err(|e| match e {
                    TokenError::Expired => AppError::Unauthorized("token expired"),
                    _ => AppError::Unauthorized("invalid token"),
                })
        })())
    }
}

/// Checks a static bearer token. An unset token hides the API (404), never opens it.
pub fn check_static_token(req: &HttpRequest, configured: Option<&str>) -> Result<(), AppError> {
    let Some(expected) = configured else {
        return Err(AppError::NotFound("route"));
    };
    match bearer(req) {
        Some(got) if constant_time_eq(got.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(AppError::Unauthorized("invalid token")),
        None => Err(AppError::Unauthorized("missing bearer token")),
    }
}

/// Another service of ours (INTERNAL_API_TOKEN).
pub struct InternalCaller;
impl FromRequest for InternalCaller {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(state(req).and_then(|st| {
            check_static_token(req, st.settings.internal_api_token.as_deref())
                .map(|_| InternalCaller)
        }))
    }
}

/// An operator (ADMIN_API_TOKEN).
pub struct AdminCaller;
impl FromRequest for AdminCaller {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(state(req).and_then(|st| {
            check_static_token(req, st.settings.admin_api_token.as_deref()).map(|_| AdminCaller)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_verify() {
        let k = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 3600);
        let t = k.issue(42, 1_000);
        assert_eq!(k.verify(&t, 1_001), Ok(42));
        assert_eq!(k.verify(&t, 4_600), Err(TokenError::Expired));
        let other = JwtKeys::new(b"another-secret-another-secret!!!", 3600);
        assert_eq!(other.verify(&t, 1_001), Err(TokenError::BadSignature));
        assert_eq!(k.verify("a.b", 1), Err(TokenError::Malformed));
        // A forged "alg: none" token with our payload is refused.
        let mut parts: Vec<&str> = t.split('.').collect();
        let none = B64.encode(r#"{"alg":"none"}"#);
        parts[0] = &none;
        parts[2] = "";
        assert!(k.verify(&parts.join("."), 1_001).is_err());
    }
}
