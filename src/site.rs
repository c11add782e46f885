//! The names a client may call this server by — a `Host` header, an `allowed_hosts` entry — and
//! browser origins, parsed strictly into one canonical form, so that deciding whether a request
//! names this server is comparing values, never strings.
//!
//! Strict means: a name is ASCII letters, digits, `-`, `_` and dots, compared without case and
//! without one trailing dot (`localhost.` is the same DNS name as `localhost`); an IPv4 address
//! is dotted decimal only (`127.1`, `2130706433`, `0x7f.0.0.1` are refused, as browsers never
//! send them: they normalise such hosts before sending); an IPv6 address is in brackets, in any
//! spelling of the same address (`[::1]`, `[0:0:0:0:0:0:0:1]`), without a zone; no user info,
//! no path, no spaces.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SiteError(String);

fn invalid<T>(what: &str, value: &str, why: &str) -> Result<T, SiteError> {
    // Client-supplied values are shown escaped and cut, never raw.
    let shown: String = value.chars().take(64).collect();
    Err(SiteError(format!("{what} {shown:?} is invalid: {why}")))
}

/// A host: a DNS name (lower case, without a trailing dot) or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// A name or address that can only mean this machine: `localhost`, `127.0.0.0/8`, `::1`,
    /// and `127.0.0.0/8` written as an IPv4-mapped IPv6 address.
    pub fn is_loopback(&self) -> bool {
        match self {
            Host::Name(name) => name == "localhost",
            Host::Ip(IpAddr::V4(ip)) => ip.is_loopback(),
            Host::Ip(IpAddr::V6(ip)) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        }
    }

    /// A host without a port, as in an `allowed_hosts` entry.
    pub fn parse(value: &str) -> Result<Host, SiteError> {
        if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            return match inner.parse::<Ipv6Addr>() {
                Ok(ip) => Ok(Host::Ip(IpAddr::V6(ip))),
                Err(_) => invalid("host", value, "not an IPv6 address"),
            };
        }
        let name = value.strip_suffix('.').unwrap_or(value);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return invalid(
                "host",
                value,
                "use a DNS name, a dotted IPv4 address or a bracketed IPv6 address",
            );
        }
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        // A browser reads `127.1`, `2130706433` or `0x7f.1` as an IPv4 address; we refuse
        // rather than guess.
        let last = name.rsplit('.').next().unwrap_or(name);
        if last.bytes().all(|b| b.is_ascii_digit()) || last.to_ascii_lowercase().starts_with("0x") {
            return invalid(
                "host",
                value,
                "write an IPv4 address as four decimal numbers",
            );
        }
        Ok(Host::Name(name.to_ascii_lowercase()))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// `host[:port]`, as in a `Host` header or the authority of a request URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: Host,
    pub port: Option<u16>,
}

impl FromStr for Authority {
    type Err = SiteError;

    fn from_str(value: &str) -> Result<Authority, SiteError> {
        // The port follows the last colon, unless that colon is inside an IPv6 literal.
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (value, None),
        };
        let port = match port {
            None => None,
            Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                match p.parse::<u16>() {
                    Ok(port) => Some(port),
                    Err(_) => return invalid("authority", value, "the port is out of range"),
                }
            }
            Some(_) => return invalid("authority", value, "the port must be a number"),
        };
        if host.contains(':') && !host.starts_with('[') {
            return invalid("authority", value, "an IPv6 address must be in brackets");
        }
        Ok(Authority {
            host: Host::parse(host)?,
            port,
        })
    }
}

/// A browser origin: `scheme://host[:port]`. The default port of `http` and `https` is made
/// explicit, so `https://a.example` equals `https://a.example:443`. Opaque origins (`null`, sent
/// by sandboxed frames, `file:` pages and redirects) cannot be parsed: no list may allow them,
/// since any page can make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: Host,
    pub port: Option<u16>,
}

impl Origin {
    /// An origin of a page served over HTTP (`http` or `https`).
    pub fn is_web(&self) -> bool {
        matches!(self.scheme.as_str(), "http" | "https")
    }
}

impl FromStr for Origin {
    type Err = SiteError;

    fn from_str(value: &str) -> Result<Origin, SiteError> {
        let Some((scheme, rest)) = value.split_once("://") else {
            return invalid("origin", value, "expected scheme://host[:port]");
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return invalid("origin", value, "the scheme is not valid");
        }
        let scheme = scheme.to_ascii_lowercase();
        // An allow-list entry may be written with a trailing slash; nothing else may follow.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return invalid(
                "origin",
                value,
                "an origin has no user, path, query or fragment",
            );
        }
        let Authority { host, port } = authority.parse()?;
        let default = match scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        };
        Ok(Origin {
            port: port.or(default),
            scheme,
            host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> Option<Host> {
        value.parse::<Authority>().ok().map(|a| a.host)
    }

    #[test]
    fn loopback_in_every_spelling_a_browser_or_client_sends() {
        for value in [
            "localhost",
            "LOCALHOST:3001",
            "localhost.",
            "localhost.:80",
            "127.0.0.1",
            "127.0.0.1:3001",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:3001",
            "[0:0:0:0:0:0:0:1]:3001",
            "[::ffff:127.0.0.1]:3001",
        ] {
            assert!(host(value).is_some_and(|h| h.is_loopback()), "{value}");
        }
    }

    #[test]
    fn look_alikes_are_not_loopback() {
        for value in [
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "localhost.localdomain",
            "notlocalhost",
            "[::2]",
            "[::ffff:10.0.0.1]",
            "128.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!host(value).unwrap().is_loopback(), "{value}");
        }
    }

    #[test]
    fn anything_ambiguous_is_refused() {
        for value in [
            "",
            ":3001",
            "localhost..",
            "..",
            "2130706433",
            "0x7f000001",
            "0x7f.0.0.1",
            "127.1",
            "0177.0.0.1",
            "127.000.000.001",
            "::1",
            "[::1",
            "[fe80::1%25eth0]",
            "localhost:",
            "localhost:99999",
            "localhost:3001:3001",
            "localhost:+1",
            "user@localhost",
            "localhost@attacker.example",
            "local host",
            "localhost/x",
            "localhost\\x",
            "loc%61lhost",
        ] {
            assert!(value.parse::<Authority>().is_err(), "{value:?} parsed");
        }
    }

    #[test]
    fn origins_are_compared_as_values() {
        let a: Origin = "HTTPS://Dashboard.Example".parse().unwrap();
        let b: Origin = "https://dashboard.example:443/".parse().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, "http://dashboard.example".parse().unwrap());
        for bad in [
            "null",
            "",
            "dashboard.example",
            "https://",
            "https://a.example/path",
            "https://user@a.example",
            "*",
        ] {
            assert!(bad.parse::<Origin>().is_err(), "{bad:?} parsed");
        }
    }
}
