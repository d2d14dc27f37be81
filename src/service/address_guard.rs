//! Which addresses the server's own HTTP clients may connect to. Federation,
//! URL previews and push gateways reach public addresses only, and the
//! ranges the operator allows for each: a literal host is checked before
//! connecting, a name after DNS resolution (the guard is the clients'
//! resolver), and a redirect's target again. A refusal travels through
//! reqwest's errors as [`Refused`], so it is told apart from a network
//! failure.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

use crate::config::IpRange;

/// An address the guard refused, carried through reqwest's errors.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Public addresses and the operator's `allowed` ranges; as a DNS resolver,
/// it drops the addresses a name resolves to that it does not allow.
#[derive(Clone)]
pub struct AddressGuard {
    allowed: Arc<[IpRange]>,
}

impl AddressGuard {
    pub fn new(allowed: Vec<IpRange>) -> Self {
        Self {
            allowed: allowed.into(),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed.iter().any(|range| range.contains(ip))
    }

    /// Scheme and, for a literal address, the address (a literal never
    /// reaches the DNS resolver).
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err("only http and https URLs are fetched".to_owned());
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err("the URL has no host".to_owned()),
        };
        if self.allows(ip) {
            Ok(())
        } else {
            Err(format!("{ip} is not a public address"))
        }
    }

    /// Of the addresses `host` resolved to, those to connect to: every one
    /// when `trusted` (an operator's override), else the allowed ones;
    /// refused when none is left.
    pub fn usable(
        &self,
        host: &str,
        found: Vec<SocketAddr>,
        trusted: bool,
    ) -> Result<Addrs, Box<dyn std::error::Error + Send + Sync>> {
        let usable: Vec<SocketAddr> = found
            .into_iter()
            .filter(|addr| trusted || self.allows(addr.ip()))
            .collect();
        if usable.is_empty() {
            return Err(Box::new(Refused(format!(
                "{host} does not resolve to a public address"
            ))));
        }
        Ok(Box::new(usable.into_iter()))
    }
}

impl Resolve for AddressGuard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
            guard.usable(host, found, false)
        })
    }
}

/// Whether `ip` is on the public internet: not loopback, private,
/// link-local, shared, documentation, benchmarking, multicast, reserved or
/// unspecified (IPv4-mapped and NAT64 IPv6 judged by their IPv4 address).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(a == 0
                || a == 10
                || a == 127
                || (a == 100 && (64..128).contains(&b))
                || (a == 169 && b == 254)
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168)
                || (a == 192 && b == 0 && (c == 0 || c == 2))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113)
                || a >= 224)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return is_public(IpAddr::V4([o[12], o[13], o[14], o[15]].into()));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xff00) == 0xff00 // multicast
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard
                || s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, deprecated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_non_public_addresses() {
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "172.32.0.1", "100.128.0.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_before_connecting() {
        let guard = AddressGuard::new(Vec::new());
        let check = |u: &str| guard.check_url(&Url::parse(u).unwrap());
        assert!(check("http://127.0.0.1:8080/").is_err());
        assert!(check("http://[::1]/").is_err());
        assert!(check("http://2130706433/").is_err(), "decimal 127.0.0.1");
        assert!(check("file:///etc/passwd").is_err());
        assert!(check("https://example.org/").is_ok());
        let allowed = AddressGuard::new(vec![IpRange::try_from("127.0.0.0/8".to_owned()).unwrap()]);
        assert!(allowed.check_url(&Url::parse("http://127.0.0.1/").unwrap()).is_ok());
    }
}
