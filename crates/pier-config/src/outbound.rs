//! Outbound network policy: which URLs a guest may reach. Deny by default.
//!
//! Patterns follow Spin's `allowed_outbound_hosts` so users can move over unchanged:
//! `scheme://host[:port]` where scheme is `http`, `https` or `*`; host is a name, `*`,
//! `*.example.com`, an IP address (`[::1]` for IPv6) or a CIDR range (`10.0.0.0/8`,
//! `[fd00::/8]`); port is a number, a range `8000..8010`, or `*` (omitted: the scheme's default).
//!
//! On top of the patterns, loopback, private and link-local addresses are reachable only through
//! a pattern that names them (an IP or range containing the address, or `localhost` for
//! loopback), and that is checked on the address a name resolves to as well as on the name,
//! so a public name resolving to 127.0.0.1 or 169.254.169.254 is refused (DNS rebinding, SSRF).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// A pattern that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --allow-outbound {input:?}: {reason} (expected scheme://host[:port], e.g. https://*.example.com, http://10.0.0.0/8:8000..8010)"
)]
pub struct PatternError {
    input: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemeMatch {
    Any,
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Name(String),
    /// `*.example.com`: any subdomain, not the bare domain.
    Subdomain(String),
    Net(IpNet),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortMatch {
    Any,
    /// The scheme's default port (80, 443; both for `*`).
    Default,
    Range(u16, u16),
}

/// One `--allow-outbound` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPattern {
    raw: String,
    scheme: SchemeMatch,
    host: HostMatch,
    port: PortMatch,
}

impl fmt::Display for OutboundPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for OutboundPattern {
    type Err = PatternError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| PatternError {
            input: input.to_string(),
            reason,
        };
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| err("missing scheme://"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "*" => SchemeMatch::Any,
            s @ ("http" | "https") => SchemeMatch::Exact(s.to_string()),
            _ => return Err(err("the scheme must be http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        // Split host and port, minding IPv6 brackets.
        let (host, port) = if let Some(after) = rest.strip_prefix('[') {
            let (inside, tail) = after.split_once(']').ok_or_else(|| err("unclosed ["))?;
            let port = match tail {
                "" => None,
                t => Some(
                    t.strip_prefix(':')
                        .ok_or_else(|| err("expected :port after ]"))?,
                ),
            };
            (inside.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if host.contains('/') && !host.contains('.') && !host.contains(':') {
            return Err(err("bad CIDR range"));
        }
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(err("bad wildcard host"));
            }
            HostMatch::Subdomain(domain.to_string())
        } else if host.contains('*') {
            return Err(err("a wildcard host must be * or *.domain"));
        } else if host.contains('/') {
            HostMatch::Net(
                host.parse::<IpNet>()
                    .map_err(|_| err("bad CIDR range"))?
                    .trunc(),
            )
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            // As addresses are checked: `[64:ff9b::a00:5]` is 10.0.0.5.
            HostMatch::Net(IpNet::from(canonical(ip)))
        } else {
            HostMatch::Name(host)
        };
        let port = match port {
            None => PortMatch::Default,
            Some("*") => PortMatch::Any,
            Some(p) => match p.split_once("..") {
                Some((lo, hi)) => {
                    let lo: u16 = lo.parse().map_err(|_| err("bad port range"))?;
                    let hi: u16 = hi.parse().map_err(|_| err("bad port range"))?;
                    if lo > hi {
                        return Err(err("bad port range"));
                    }
                    PortMatch::Range(lo, hi)
                }
                None => {
                    let n: u16 = p.parse().map_err(|_| err("bad port"))?;
                    PortMatch::Range(n, n)
                }
            },
        };
        Ok(OutboundPattern {
            raw: input.to_string(),
            scheme,
            host,
            port,
        })
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

impl OutboundPattern {
    fn scheme_and_port_match(&self, scheme: &str, port: u16) -> bool {
        let scheme_ok = match &self.scheme {
            SchemeMatch::Any => true,
            SchemeMatch::Exact(s) => s == scheme,
        };
        let port_ok = match self.port {
            PortMatch::Any => true,
            PortMatch::Default => port == default_port(scheme),
            PortMatch::Range(lo, hi) => (lo..=hi).contains(&port),
        };
        scheme_ok && port_ok
    }

    /// Whether a request to `scheme://host:port` is allowed by name (`host` lower-case, IPv6
    /// without brackets).
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if !self.scheme_and_port_match(scheme, port) {
            return false;
        }
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Name(name) => name == host,
            HostMatch::Subdomain(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host[..host.len() - domain.len()].ends_with('.')
            }
            HostMatch::Net(net) => host
                .parse::<IpAddr>()
                .is_ok_and(|ip| net.contains(&canonical(ip))),
        }
    }

    /// Whether this pattern names `ip` explicitly (an address or range containing it, or
    /// `localhost` for a loopback address), which a special-purpose address needs.
    fn names_ip(&self, scheme: &str, ip: IpAddr, port: u16) -> bool {
        self.scheme_and_port_match(scheme, port)
            && match &self.host {
                HostMatch::Net(net) => net.contains(&ip),
                HostMatch::Name(name) => name == "localhost" && ip.is_loopback(),
                HostMatch::Any | HostMatch::Subdomain(_) => false,
            }
    }
}

/// An IPv6 address that carries an IPv4 one and reaches it is checked as that IPv4 address:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64's well-known prefix
/// (`64:ff9b::a.b.c.d`, RFC 6052, which a NAT64 gateway turns into a.b.c.d) and 6to4
/// (`2002:AABB:CCDD::`, RFC 3056, a relay delivers to A.B.C.D). `64:ff9b::127.0.0.1` is loopback,
/// `64:ff9b::169.254.169.254` the metadata service.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = |hi: u16, lo: u16| {
        IpAddr::V4(std::net::Ipv4Addr::from(
            (u32::from(hi) << 16) | u32::from(lo),
        ))
    };
    match s {
        // IPv4-compatible, but not :: and ::1.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => embedded(hi, lo),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => embedded(hi, lo),
        [0x2002, hi, lo, ..] => embedded(hi, lo),
        _ => ip,
    }
}

/// Loopback, private, link-local and other addresses that must never be reached by accident.
pub fn is_special_purpose(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
                || (s[0], s[1], s[2]) == (0x64, 0xff9b, 1) // 64:ff9b:1::/48, local-use NAT64
                || (s[0], s[1]) == (0x2001, 0) // 2001::/32, Teredo (an IPv4 address, obfuscated)
        }
    }
}

/// Why an outbound request is refused, with the pattern that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No pattern matches the URL.
    #[error("{url} is not allowed (grant it with --allow-outbound {suggestion})")]
    NotAllowed { url: String, suggestion: String },
    /// The name is allowed, but it resolved to a special-purpose address no pattern names.
    #[error(
        "{url} resolves to {ip}, a loopback/private/link-local address (grant it with --allow-outbound {suggestion})"
    )]
    SpecialAddress {
        url: String,
        ip: IpAddr,
        suggestion: String,
    },
}

/// The outbound patterns granted to an app. Empty: nothing is reachable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    patterns: Vec<OutboundPattern>,
    /// For destinations the operator configured (`--upstream`): every address is allowed.
    unrestricted: bool,
}

impl OutboundPolicy {
    /// A policy allowing `patterns`.
    pub fn new(patterns: Vec<OutboundPattern>) -> Self {
        OutboundPolicy {
            patterns,
            unrestricted: false,
        }
    }

    /// A policy allowing everything: only for destinations the operator chose, never guests'.
    pub fn unrestricted() -> Self {
        OutboundPolicy {
            patterns: Vec::new(),
            unrestricted: true,
        }
    }

    /// Whether anything at all is allowed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Checks a request's URL by name; returns the pattern that allows it.
    pub fn check_url(
        &self,
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Result<&OutboundPattern, Denied> {
        if self.unrestricted {
            static ANY: std::sync::OnceLock<OutboundPattern> = std::sync::OnceLock::new();
            return Ok(ANY.get_or_init(|| "*://*:*".parse().expect("valid pattern")));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if let Some(pattern) = self
            .patterns
            .iter()
            .find(|p| p.matches(scheme, &host, port))
        {
            // An IP literal is an address already: it must pass the address check too.
            if let Ok(ip) = host.parse::<IpAddr>() {
                self.check_ip(scheme, &host, ip, port)?;
            }
            return Ok(pattern);
        }
        Err(Denied::NotAllowed {
            url: url(scheme, &host, port),
            suggestion: suggestion(scheme, &host, port),
        })
    }

    /// Checks an address `host` resolved to, just before connecting.
    pub fn check_ip(&self, scheme: &str, host: &str, ip: IpAddr, port: u16) -> Result<(), Denied> {
        let ip = canonical(ip);
        if self.unrestricted
            || !is_special_purpose(ip)
            || self.patterns.iter().any(|p| p.names_ip(scheme, ip, port))
        {
            return Ok(());
        }
        let literal = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        Err(Denied::SpecialAddress {
            url: url(scheme, host, port),
            ip,
            suggestion: format!("{scheme}://{literal}:{port}"),
        })
    }
}

fn url(scheme: &str, host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("{scheme}://{host}:{port}")
}

fn suggestion(scheme: &str, host: &str, port: u16) -> String {
    url(scheme, host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(patterns.iter().map(|p| p.parse().unwrap()).collect())
    }

    #[test]
    fn patterns_parse_or_explain() {
        for ok in [
            "http://example.com",
            "https://example.com:8443",
            "*://example.com:*",
            "https://*.example.com",
            "http://*:8000..8010",
            "http://10.0.0.0/8:*",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://[fd00::/8]:*",
            "*://*:*",
            "http://localhost:3000/",
        ] {
            assert!(ok.parse::<OutboundPattern>().is_ok(), "{ok} should parse");
        }
        for (bad, why) in [
            ("example.com", "missing scheme"),
            ("ftp://example.com", "scheme must be"),
            ("http://", "empty host"),
            ("http://ex*mple.com", "wildcard host"),
            ("http://*.", "bad wildcard"),
            ("http://example.com:http", "bad port"),
            ("http://example.com:9..1", "bad port range"),
            ("http://10.0.0.0/33", "bad CIDR"),
            ("http://[::1", "unclosed"),
        ] {
            let e = bad.parse::<OutboundPattern>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn url_matching() {
        // (patterns, scheme, host, port, allowed)
        let cases: &[(&[&str], &str, &str, u16, bool)] = &[
            (&[], "https", "example.com", 443, false),
            (&["https://example.com"], "https", "example.com", 443, true),
            (
                &["https://example.com"],
                "https",
                "example.com",
                8443,
                false,
            ),
            (&["https://example.com"], "http", "example.com", 80, false),
            (&["https://example.com"], "https", "EXAMPLE.com", 443, true),
            (
                &["https://example.com"],
                "https",
                "api.example.com",
                443,
                false,
            ),
            (&["*://example.com"], "http", "example.com", 80, true),
            (&["*://example.com"], "https", "example.com", 443, true),
            (&["*://example.com"], "https", "example.com", 80, false),
            (
                &["https://*.example.com"],
                "https",
                "api.example.com",
                443,
                true,
            ),
            (
                &["https://*.example.com"],
                "https",
                "a.b.example.com",
                443,
                true,
            ),
            (
                &["https://*.example.com"],
                "https",
                "example.com",
                443,
                false,
            ),
            (
                &["https://*.example.com"],
                "https",
                "badexample.com",
                443,
                false,
            ),
            (&["http://example.com:*"], "http", "example.com", 1234, true),
            (
                &["http://example.com:8000..8010"],
                "http",
                "example.com",
                8000,
                true,
            ),
            (
                &["http://example.com:8000..8010"],
                "http",
                "example.com",
                8010,
                true,
            ),
            (
                &["http://example.com:8000..8010"],
                "http",
                "example.com",
                8011,
                false,
            ),
            (&["http://*:*"], "http", "anything.test", 9, true),
            (&["http://10.0.0.0/8:*"], "http", "10.1.2.3", 80, true),
            (&["http://10.0.0.0/8:*"], "http", "11.1.2.3", 80, false),
            (&["http://10.0.0.0/8:*"], "http", "ten.example", 80, false),
            (&["http://[::1]:8080"], "http", "::1", 8080, true),
            (&["http://[::1]:8080"], "http", "[::1]", 8080, true),
            (&["http://[fd00::/8]:*"], "http", "fd12::1", 80, true),
            (&["http://[fd00::/8]:*"], "http", "fe80::1", 80, false),
            // Special-purpose addresses need a pattern naming them, not a wildcard.
            (&["http://*:*"], "http", "127.0.0.1", 80, false),
            (&["http://*:*"], "http", "169.254.169.254", 80, false),
            (&["http://*:*"], "http", "::ffff:127.0.0.1", 80, false),
            (&["http://127.0.0.1:*"], "http", "127.0.0.1", 80, true),
            (&["http://127.0.0.0/8:*"], "http", "127.0.0.2", 80, true),
        ];
        for (patterns, scheme, host, port, allowed) in cases {
            let got = policy(patterns).check_url(scheme, host, *port).is_ok();
            assert_eq!(got, *allowed, "{patterns:?} {scheme}://{host}:{port}");
        }
    }

    #[test]
    fn resolved_addresses_are_checked_too() {
        let public = policy(&["https://*.example.com", "http://api.test:*"]);
        // A public name resolving to loopback or metadata addresses is refused.
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "10.0.0.5",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            // IPv6 carrying those: IPv4-compatible, NAT64, local-use NAT64, 6to4, Teredo.
            "::127.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::5",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            let e = public
                .check_ip("https", "a.example.com", ip.parse().unwrap(), 443)
                .unwrap_err();
            assert!(matches!(e, Denied::SpecialAddress { .. }), "{ip}");
        }
        // A pattern naming a NAT64 address names the IPv4 address it reaches, as checks see it.
        let nat64 = policy(&["http://[64:ff9b::a00:5]:80"]);
        for ip in ["64:ff9b::a00:5", "10.0.0.5"] {
            assert!(
                nat64.check_ip("http", ip, ip.parse().unwrap(), 80).is_ok(),
                "{ip}"
            );
            assert!(nat64.check_url("http", ip, 80).is_ok(), "{ip}");
        }
        // Public addresses, also through NAT64 and 6to4.
        for ip in ["93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1"] {
            assert!(
                public
                    .check_ip("https", "a.example.com", ip.parse().unwrap(), 443)
                    .is_ok(),
                "{ip}"
            );
        }
        assert!(
            public
                .check_ip(
                    "https",
                    "a.example.com",
                    "2606:2800::1".parse().unwrap(),
                    443
                )
                .is_ok()
        );

        // Loopback allowed by address or by `localhost`, only on the named ports.
        let local = policy(&["http://127.0.0.1:8080", "http://localhost:9000"]);
        assert!(
            local
                .check_ip("http", "svc", "127.0.0.1".parse().unwrap(), 8080)
                .is_ok()
        );
        assert!(
            local
                .check_ip("http", "svc", "127.0.0.1".parse().unwrap(), 8081)
                .is_err()
        );
        assert!(
            local
                .check_ip("http", "localhost", "::1".parse().unwrap(), 9000)
                .is_ok()
        );
    }

    #[test]
    fn denials_say_how_to_allow() {
        let e = policy(&[])
            .check_url("https", "api.example.com", 443)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "https://api.example.com:443 is not allowed (grant it with --allow-outbound https://api.example.com:443)"
        );
        let e = policy(&["http://*:*"])
            .check_url("http", "::1", 80)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow-outbound http://[::1]:80"), "{e}");
    }
}
