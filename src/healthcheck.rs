//! `coinpay healthcheck`: exits 0 when the service answers `GET /healthz` with 200.
//!
//! The container image has no shell tools (no curl, no wget): its `HEALTHCHECK` runs the
//! binary itself, which already carries an HTTP client (awc). Talking to the listener from
//! inside the container checks what an orchestrator cares about, the process serving HTTP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long the check waits for an answer before it counts as unhealthy.
pub const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("GET {url}: {problem}")]
    Unreachable { url: String, problem: String },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
}

/// The /healthz URL of a listener bound to `bind`: a wildcard address is reached on loopback.
pub fn url_for(bind: SocketAddr) -> String {
    let ip = match bind.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, bind.port()))
}

pub async fn check(url: &str) -> Result<(), HealthError> {
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let res = client
        .get(url)
        .send()
        .await
        .map_err(|e| HealthError::Unreachable {
            url: url.to_string(),
            problem: e.to_string(),
        })?;
    match res.status().as_u16() {
        200 => Ok(()),
        status => Err(HealthError::Status {
            url: url.to_string(),
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_checked_on_loopback() {
        let u = |s: &str| url_for(s.parse().expect("addr"));
        assert_eq!(u("0.0.0.0:8000"), "http://127.0.0.1:8000/healthz");
        assert_eq!(u("[::]:8000"), "http://[::1]:8000/healthz");
        assert_eq!(u("10.1.2.3:9"), "http://10.1.2.3:9/healthz");
    }
}
