//! Caps on the request head, next to the body caps (64 KiB for JSON and for WeChat's XML).
//!
//! actix-http on its own accepts a request head of up to 128 KiB and 96 headers, so one request
//! could make every worker hold that much per connection before any handler had a say. These
//! caps are checked before routing, for every route: a head over them is answered `431 Request
//! Header Fields Too Large` and reaches no handler. (More than 96 headers never get this far:
//! actix-http itself answers those 431.)

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use futures_util::future::{Either, Ready, ready};

use crate::error::AppError;

/// Bytes of the header block: each header counted as `name: value\r\n`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Header lines in one request (a repeated name counts once per line).
pub const MAX_HEADERS: usize = 64;

/// `Err` when the headers exceed [`MAX_HEADERS`] or [`MAX_HEADER_BYTES`].
pub fn check_headers(headers: &HeaderMap) -> Result<(), AppError> {
    let count = headers.len();
    if count > MAX_HEADERS {
        return Err(AppError::HeadersTooLarge(format!(
            "{count} headers, at most {MAX_HEADERS} are accepted"
        )));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(AppError::HeadersTooLarge(format!(
            "{bytes} bytes of headers, at most {MAX_HEADER_BYTES} are accepted"
        )));
    }
    Ok(())
}

/// Middleware (`wrap_fn`): refuses a request whose head is over the caps.
pub fn cap_headers<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> Either<S::Future, Ready<Result<ServiceResponse<B>, actix_web::Error>>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    match check_headers(req.headers()) {
        Ok(()) => Either::Left(srv.call(req)),
        Err(e) => Either::Right(ready(Err(e.into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(n: usize, value_len: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        for i in 0..n {
            h.append(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).expect("name"),
                HeaderValue::from_str(&"v".repeat(value_len)).expect("value"),
            );
        }
        h
    }

    #[test]
    fn counts_and_sizes_are_capped() {
        assert!(check_headers(&headers(MAX_HEADERS, 10)).is_ok());
        assert!(check_headers(&headers(MAX_HEADERS + 1, 1)).is_err());
        assert!(check_headers(&headers(1, MAX_HEADER_BYTES - 100)).is_ok());
        assert!(check_headers(&headers(1, MAX_HEADER_BYTES)).is_err());
        assert!(check_headers(&headers(2, MAX_HEADER_BYTES / 2)).is_err());
    }
}
