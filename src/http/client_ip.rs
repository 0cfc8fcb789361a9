//! The real client address: X-Forwarded-For is believed only from TRUSTED_PROXIES peers, and
//! then the right-most address that is not one of our proxies wins (the left part is
//! whatever the client wrote).

use std::net::IpAddr;

use ipnet::IpNet;

pub fn resolve(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut nearest = peer;
    for hop in xff.rsplit(',').map(str::trim) {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => nearest = ip,
            Ok(ip) => return ip,
            // Garbage in the header: stop at the last hop we could vouch for.
            Err(_) => return nearest,
        }
    }
    nearest
}

/// Canonical form: an IPv4-mapped IPv6 peer counts as its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }
    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("1.2.3.4"), Some("101.226.103.1"), &t),
            ip("1.2.3.4")
        );
        assert_eq!(
            resolve(ip("1.2.3.4"), Some("101.226.103.1"), &[]),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn trusted_proxy_right_most_untrusted_hop_wins() {
        let t = nets(&["10.0.0.0/8"]);
        // The client prepended a spoofed address; the proxy appended the real one.
        assert_eq!(
            resolve(ip("10.0.0.2"), Some("101.226.103.1, 8.8.8.8, 10.0.0.9"), &t),
            ip("8.8.8.8")
        );
        assert_eq!(resolve(ip("10.0.0.2"), None, &t), ip("10.0.0.2"));
        assert_eq!(
            resolve(ip("10.0.0.2"), Some("junk, 10.0.0.7"), &t),
            ip("10.0.0.7")
        );
        assert_eq!(
            resolve(ip("10.0.0.2"), Some("10.0.0.3"), &t),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn mapped_v4() {
        assert_eq!(canonical(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
    }
}
