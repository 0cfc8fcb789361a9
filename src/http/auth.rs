//! Who is calling: mini-program users carry an HS256 JWT (`sub` = user id, `exp`); other
//! services and operators carry static bearer tokens, compared in constant time.
//!
//! Tokens are made and checked by `jsonwebtoken`, with the algorithm pinned to HS256 (a token
//! naming any other algorithm, `none` included, is refused before its signature is looked
//! at), `exp` and `sub` required, and no leeway: a token is expired from the second its `exp`
//! names, as it always was here.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::error::AppError;
use crate::wechat::sign::constant_time_eq;

/// The keys that sign and check login tokens, and how long a token lives.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
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
    /// An empty secret, or a token that could not be signed: a fault of ours, not the caller's.
    #[error("cannot sign tokens: {0}")]
    Signing(String),
}

impl From<TokenError> for AppError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => AppError::Unauthorized("token expired"),
            TokenError::Malformed | TokenError::BadSignature => {
                AppError::Unauthorized("invalid token")
            }
            TokenError::Signing(e) => AppError::Internal(e),
        }
    }
}

impl JwtKeys {
    /// Keys for an HMAC secret of any non-empty length.
    pub fn new(secret: &[u8], ttl_secs: i64) -> Result<Self, TokenError> {
        let signing = |e: jsonwebtoken::errors::Error| TokenError::Signing(e.to_string());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        // jsonwebtoken counts a token as expired when `exp - this < now`; 1 makes that
        // `exp <= now`, the rule tokens have always been checked by.
        validation.reject_tokens_expiring_in_less_than = 1;
        validation.validate_aud = false;
        Ok(JwtKeys {
            encoding: EncodingKey::from_secret(secret).map_err(signing)?,
            decoding: DecodingKey::from_secret(secret).map_err(signing)?,
            validation,
            ttl_secs,
        })
    }

    /// Keys for JWT_SECRET, or for a random per-process secret when it is unset.
    pub fn from_config(secret: Option<&SecretString>, ttl_secs: i64) -> Result<Self, TokenError> {
        match secret {
            Some(s) => Self::new(s.expose_secret().as_bytes(), ttl_secs),
            None => Self::new(crate::wechat::sign::nonce().as_bytes(), ttl_secs),
        }
    }

    pub fn issue(&self, user_id: i64, now_secs: i64) -> Result<String, TokenError> {
        let claims = Claims {
            sub: user_id.to_string(),
            exp: now_secs + self.ttl_secs,
            iat: now_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }

    /// The user id in a valid token that has not expired by the clock.
    pub fn verify(&self, token: &str) -> Result<i64, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            })?;
        data.claims.sub.parse().map_err(|_| TokenError::Malformed)
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
            let id = st.jwt.verify(token)?;
            tracing::Span::current().record("user_id", id);
            Ok(AuthUser(id))
        })())
    }
}

/// Checks a static bearer token. An unset token hides the API (404), never opens it.
pub fn check_static_token(
    req: &HttpRequest,
    configured: Option<&SecretString>,
) -> Result<(), AppError> {
    let Some(expected) = configured else {
        return Err(AppError::NotFound("route"));
    };
    match bearer(req) {
        Some(got) if constant_time_eq(got.as_bytes(), expected.expose_secret().as_bytes()) => {
            Ok(())
        }
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
            check_static_token(req, st.settings.internal_api_token.as_ref()).map(|_| InternalCaller)
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
            check_static_token(req, st.settings.admin_api_token.as_ref()).map(|_| AdminCaller)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn keys() -> JwtKeys {
        JwtKeys::new(SECRET, 3600).expect("keys")
    }

    #[test]
    fn issue_and_verify() {
        let k = keys();
        let t = k.issue(42, now()).expect("token");
        assert_eq!(k.verify(&t), Ok(42));
        let other = JwtKeys::new(b"another-secret-another-secret!!!", 3600).expect("keys");
        assert_eq!(other.verify(&t), Err(TokenError::BadSignature));
        assert_eq!(k.verify("a.b"), Err(TokenError::Malformed));
        assert_eq!(k.verify("abc.def"), Err(TokenError::Malformed));
        assert_eq!(k.verify(""), Err(TokenError::Malformed));
        assert!(JwtKeys::new(b"", 3600).is_err(), "an empty secret");
    }

    #[test]
    fn expired_from_the_second_exp_names() {
        let k = keys();
        let t = k.issue(42, now() - 3600).expect("token");
        assert_eq!(k.verify(&t), Err(TokenError::Expired));
        let t = k.issue(42, now() - 3601).expect("token");
        assert_eq!(k.verify(&t), Err(TokenError::Expired));
        let t = k.issue(42, now() - 3590).expect("token");
        assert_eq!(k.verify(&t), Ok(42));
        // Expiry is not an excuse for a bad signature.
        let forged = JwtKeys::new(b"another-secret-another-secret!!!", 3600)
            .expect("keys")
            .issue(42, now() - 7200)
            .expect("token");
        assert_eq!(k.verify(&forged), Err(TokenError::BadSignature));
    }

    /// Made by the hand-written signer this module had before jsonwebtoken (header
    /// `{"alg":"HS256","typ":"JWT"}`, `sub` 42, `exp` 2100-01-01): tokens handed out before an
    /// upgrade keep working after it.
    const EARLIER_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsImV4cCI6NDEwMjQ0NDgwMCwiaWF0Ijo0MTAyNDQxMjAwfQ.12tfgmhvCCcdFmQ4APCFkqYSfdTfrKCp0xg6dHu2uEE";

    #[test]
    fn tokens_of_the_earlier_signer_still_verify() {
        let k = JwtKeys::new(b"coinpay-golden-secret-0123456789", 3600).expect("keys");
        assert_eq!(k.verify(EARLIER_TOKEN), Ok(42));
        assert_eq!(keys().verify(EARLIER_TOKEN), Err(TokenError::BadSignature));
    }

    /// A token with our payload under another header, signed or not.
    fn with_header(token: &str, header: &str, sig: &str) -> String {
        let payload = token.split('.').nth(1).expect("payload");
        format!("{}.{payload}.{sig}", B64.encode(header))
    }

    #[test]
    fn the_algorithm_is_pinned() {
        let k = keys();
        let t = k.issue(42, now()).expect("token");
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
        ] {
            let sig = t.split('.').nth(2).expect("sig");
            for s in ["", sig] {
                let forged = with_header(&t, header, s);
                assert!(k.verify(&forged).is_err(), "{header} with sig {s:?}");
            }
        }
    }

    #[test]
    fn sub_must_be_a_user_id() {
        let k = keys();
        let claims = serde_json::json!({ "sub": "alice", "exp": now() + 60, "iat": now() });
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding)
            .expect("token");
        assert_eq!(k.verify(&t), Err(TokenError::Malformed));
        let no_exp = serde_json::json!({ "sub": "42" });
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &no_exp, &k.encoding)
            .expect("token");
        assert_eq!(k.verify(&t), Err(TokenError::Malformed), "exp is required");
    }

    #[test]
    fn token_errors_map_to_the_replies_they_always_had() {
        let msg = |e: TokenError| match AppError::from(e) {
            AppError::Unauthorized(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(msg(TokenError::Expired), "token expired");
        assert_eq!(msg(TokenError::BadSignature), "invalid token");
        assert_eq!(msg(TokenError::Malformed), "invalid token");
    }
}
