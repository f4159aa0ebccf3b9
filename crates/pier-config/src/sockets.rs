//! `wasi:sockets` grants: which addresses a guest may connect to, listen on, or exchange
//! datagrams with. Denied by default.
//!
//! Two forms:
//! - wasmtime's switches, so existing harnesses drive pier unchanged: `-S inherit-network`
//!   (any address, TCP and UDP), `-S allow-ip-name-lookup`, `-S tcp`, `-S udp` (each also
//!   `=y`/`=n`; a later switch wins, so `-S inherit-network,udp=n` grants TCP only);
//! - fine-grained grants, `--allow-socket USE:HOST:PORT`: USE is `tcp-connect`, `tcp-listen`
//!   or `udp`; HOST a name, `*`, an IP address (`[::1]`) or a CIDR range (`10.0.0.0/8`); PORT a
//!   number, a range `9000-9100`, or `*`.
//!
//! Guests reach addresses, not names, so a grant naming a host is checked against the addresses
//! that name resolves to when the guest connects. As for outbound HTTP, a loopback, private or
//! link-local address is reachable only through a grant that names it (an address or range
//! containing it, or `localhost` for loopback), never through `*` or another name: a database
//! on a private network is granted by its address or range (`tcp-connect:10.0.0.0/8:5432`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

use crate::outbound::{canonical, is_special_purpose};

/// What a grant lets a guest do with a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketUse {
    /// Open TCP connections to the address.
    TcpConnect,
    /// Bind and listen on the (local) address, and accept connections there.
    TcpListen,
    /// Bind UDP sockets, and send datagrams to and receive them from the address.
    Udp,
}

impl SocketUse {
    /// How a grant names it.
    pub fn name(self) -> &'static str {
        match self {
            SocketUse::TcpConnect => "tcp-connect",
            SocketUse::TcpListen => "tcp-listen",
            SocketUse::Udp => "udp",
        }
    }
}

/// A `--allow-socket` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --allow-socket {input:?}: {reason} (expected USE:HOST:PORT, USE one of tcp-connect, \
     tcp-listen, udp; e.g. tcp-connect:db.example.com:5432, tcp-listen:127.0.0.1:9000-9100, \
     udp:10.0.0.0/8:53)"
)]
pub struct SocketGrantError {
    input: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Name(String),
    Net(IpNet),
}

/// One `--allow-socket` grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGrant {
    raw: String,
    /// What it allows.
    pub what: SocketUse,
    host: Host,
    ports: (u16, u16),
}

impl fmt::Display for SocketGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for SocketGrant {
    type Err = SocketGrantError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| SocketGrantError {
            input: input.to_string(),
            reason,
        };
        let (what, rest) = input.split_once(':').ok_or_else(|| err("missing USE:"))?;
        let what = match what {
            "tcp-connect" => SocketUse::TcpConnect,
            "tcp-listen" => SocketUse::TcpListen,
            "udp" => SocketUse::Udp,
            _ => return Err(err("USE must be tcp-connect, tcp-listen or udp")),
        };
        let (host, port) = if let Some(after) = rest.strip_prefix('[') {
            let (inside, tail) = after.split_once(']').ok_or_else(|| err("unclosed ["))?;
            let port = tail.strip_prefix(':').ok_or_else(|| err("missing :PORT"))?;
            (inside, port)
        } else {
            rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?
        };
        let host = match host.to_ascii_lowercase() {
            h if h.is_empty() => return Err(err("empty host")),
            h if h == "*" => Host::Any,
            h if h.contains('*') => {
                return Err(err("the host must be *, a name, an IP or a range"));
            }
            h if h.contains('/') => Host::Net(
                h.parse::<IpNet>()
                    .map_err(|_| err("bad CIDR range"))?
                    .trunc(),
            ),
            h => match h.parse::<IpAddr>() {
                Ok(ip) => Host::Net(IpNet::from(canonical(ip))),
                Err(_) if h.contains(':') => return Err(err("an IPv6 address needs [brackets]")),
                Err(_) => Host::Name(h),
            },
        };
        let ports = match port {
            "*" => (0, u16::MAX),
            p => {
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                let lo: u16 = lo.parse().map_err(|_| err("bad port"))?;
                let hi: u16 = hi.parse().map_err(|_| err("bad port"))?;
                if lo > hi {
                    return Err(err("bad port range"));
                }
                (lo, hi)
            }
        };
        Ok(SocketGrant {
            raw: input.to_string(),
            what,
            host,
            ports,
        })
    }
}

impl SocketGrant {
    /// The host name this grant names, if it names one (its addresses are looked up when used).
    pub fn host_name(&self) -> Option<&str> {
        match &self.host {
            Host::Name(name) => Some(name),
            _ => None,
        }
    }

    /// Whether the grant allows `what` with `addr`, given the addresses its host name resolves
    /// to (`resolved`, ignored for a grant without a name).
    fn allows(&self, what: SocketUse, addr: SocketAddr, resolved: &[IpAddr]) -> bool {
        let ip = canonical(addr.ip());
        if self.what != what || !(self.ports.0..=self.ports.1).contains(&addr.port()) {
            return false;
        }
        // A local address to bind or listen on is the operator's to choose: no special rule.
        let special = what != SocketUse::TcpListen && is_special_purpose(ip);
        match &self.host {
            Host::Net(net) => net.contains(&ip),
            Host::Any => !special,
            Host::Name(name) if name == "localhost" => ip.is_loopback(),
            Host::Name(_) => !special && resolved.iter().any(|r| canonical(*r) == ip),
        }
    }
}

/// One of wasmtime's `-S` switches for sockets. Its switches for what pier always provides
/// (`cli`, `http`, `p3`, `common`) are taken and ignored; any other is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketSwitch {
    /// `inherit-network`: every address, TCP and UDP.
    InheritNetwork(bool),
    /// `allow-ip-name-lookup`: `wasi:sockets/ip-name-lookup` for any name.
    AllowIpNameLookup(bool),
    /// `tcp`: TCP sockets at all.
    Tcp(bool),
    /// `udp`: UDP sockets at all.
    Udp(bool),
}

/// A `-S` value that pier does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid -S {0:?}: pier takes inherit-network, allow-ip-name-lookup, tcp and udp (each \
     optionally =y or =n; grant single addresses with --allow-socket), and cli, http, p3 and \
     common, which are always on"
)]
pub struct SwitchError(String);

impl SocketSwitch {
    /// Parses one `-S` value, which may hold several switches separated by commas.
    pub fn parse_list(input: &str) -> Result<Vec<SocketSwitch>, SwitchError> {
        const ALWAYS_ON: &[&str] = &["cli", "http", "p3", "common"];
        input
            .split(',')
            // Turning one of these on changes nothing; off is not possible, and refused below.
            .filter(|one| {
                ALWAYS_ON
                    .iter()
                    .all(|on| *one != *on && *one != format!("{on}=y"))
            })
            .map(|one| {
                let err = || SwitchError(one.to_string());
                let (name, value) = one.split_once('=').unwrap_or((one, "y"));
                let on = match value {
                    "y" | "yes" | "true" => true,
                    "n" | "no" | "false" => false,
                    _ => return Err(err()),
                };
                Ok(match name {
                    "inherit-network" => SocketSwitch::InheritNetwork(on),
                    "allow-ip-name-lookup" => SocketSwitch::AllowIpNameLookup(on),
                    "tcp" => SocketSwitch::Tcp(on),
                    "udp" => SocketSwitch::Udp(on),
                    _ => return Err(err()),
                })
            })
            .collect()
    }
}

/// What a guest may do with `wasi:sockets`. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketPolicy {
    /// Switches that override what the grants imply, in flag order.
    switches: Vec<SocketSwitch>,
    /// `--allow-socket` grants.
    grants: Vec<SocketGrant>,
}

/// A socket operation the policy refused, with the grant that would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketDenied {
    /// `tcp-connect to 203.0.113.5:5432`.
    pub what: String,
    /// `--allow-socket tcp-connect:203.0.113.5:5432`.
    pub grant: String,
}

impl fmt::Display for SocketDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} denied (grant it with {})", self.what, self.grant)
    }
}

impl SocketPolicy {
    /// A policy from `-S` switches and `--allow-socket` grants.
    pub fn new(switches: Vec<SocketSwitch>, grants: Vec<SocketGrant>) -> Self {
        SocketPolicy { switches, grants }
    }

    /// The last of the switches `pick` answers for (a later switch wins).
    fn switch(&self, pick: impl Fn(&SocketSwitch) -> Option<bool>) -> Option<bool> {
        self.switches.iter().rev().find_map(pick)
    }

    /// `-S inherit-network`: any address, TCP and UDP.
    fn inherit_network(&self) -> bool {
        self.switch(|s| match s {
            SocketSwitch::InheritNetwork(on) => Some(*on),
            _ => None,
        })
        .unwrap_or(false)
    }

    /// Whether the guest may make TCP sockets at all.
    pub fn tcp(&self) -> bool {
        let implied = self.inherit_network()
            || self
                .grants
                .iter()
                .any(|g| matches!(g.what, SocketUse::TcpConnect | SocketUse::TcpListen));
        self.switch(|s| match s {
            SocketSwitch::Tcp(on) => Some(*on),
            _ => None,
        })
        .unwrap_or(implied)
    }

    /// Whether the guest may make UDP sockets at all.
    pub fn udp(&self) -> bool {
        let implied =
            self.inherit_network() || self.grants.iter().any(|g| g.what == SocketUse::Udp);
        self.switch(|s| match s {
            SocketSwitch::Udp(on) => Some(*on),
            _ => None,
        })
        .unwrap_or(implied)
    }

    /// Whether the guest may look names up: `-S allow-ip-name-lookup`, or a grant that names a
    /// host (wasmtime's lookup is all or nothing; what the guest then reaches is still checked).
    pub fn ip_name_lookup(&self) -> bool {
        let implied = self.names().next().is_some();
        self.switch(|s| match s {
            SocketSwitch::AllowIpNameLookup(on) => Some(*on),
            _ => None,
        })
        .unwrap_or(implied)
    }

    /// Whether anything at all is granted.
    pub fn is_empty(&self) -> bool {
        !self.tcp() && !self.udp() && !self.ip_name_lookup()
    }

    /// The host names grants name, whose addresses a check needs (`localhost` needs none:
    /// it names the loopback addresses).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.grants
            .iter()
            .filter_map(SocketGrant::host_name)
            .filter(|name| *name != "localhost")
    }

    /// Checks binding a TCP (`tcp`) or UDP socket to the local `addr`. Binding to the
    /// unspecified address and port 0 (what a connect or send does implicitly, before the
    /// address it goes to is checked on its own) is allowed whenever the protocol has a grant;
    /// any other address needs a `tcp-listen` (TCP) or `udp` (UDP) grant naming it.
    pub fn check_bind(&self, tcp: bool, addr: SocketAddr) -> Result<(), SocketDenied> {
        let any_local = addr.ip().is_unspecified() && addr.port() == 0;
        let protocol = |g: &SocketGrant| {
            if tcp {
                g.what != SocketUse::Udp
            } else {
                g.what == SocketUse::Udp
            }
        };
        if any_local && (self.inherit_network() || self.grants.iter().any(protocol)) {
            return Ok(());
        }
        if tcp {
            return self.check(SocketUse::TcpListen, addr, |_| Vec::new());
        }
        // A `udp` grant names peers; binding a given local address and port (to serve on it)
        // needs one naming that address, not `*` or a name.
        let named = self.inherit_network()
            || self.grants.iter().any(|g| {
                g.what == SocketUse::Udp
                    && matches!(g.host, Host::Net(_))
                    && g.allows(SocketUse::Udp, addr, &[])
            });
        if named {
            Ok(())
        } else {
            Err(denial(SocketUse::Udp, addr))
        }
    }

    /// Checks `what` with `addr`: the remote address to connect or send to, or receive from,
    /// or the local one to listen on; `resolve` gives the addresses a granted host name has now.
    pub fn check(
        &self,
        what: SocketUse,
        addr: SocketAddr,
        resolve: impl Fn(&str) -> Vec<IpAddr>,
    ) -> Result<(), SocketDenied> {
        if self.inherit_network() {
            return Ok(());
        }
        let allowed = self.grants.iter().any(|g| {
            let resolved = g.host_name().map(&resolve).unwrap_or_default();
            g.allows(what, addr, &resolved)
        });
        if allowed {
            Ok(())
        } else {
            Err(denial(what, addr))
        }
    }
}

/// `what` with `addr` refused, with the grant that would allow it.
fn denial(what: SocketUse, addr: SocketAddr) -> SocketDenied {
    let ip = canonical(addr.ip());
    let host = if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let verb = match what {
        SocketUse::TcpConnect => "to",
        SocketUse::TcpListen => "on",
        SocketUse::Udp => "with",
    };
    SocketDenied {
        what: format!("{} {verb} {host}:{}", what.name(), addr.port()),
        grant: format!("--allow-socket {}:{host}:{}", what.name(), addr.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(grants: &[&str]) -> SocketPolicy {
        SocketPolicy::new(vec![], grants.iter().map(|g| g.parse().unwrap()).collect())
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn grants_parse_or_explain() {
        for ok in [
            "tcp-connect:db.example.com:5432",
            "tcp-listen:127.0.0.1:9000-9100",
            "udp:10.0.0.0/8:53",
            "tcp-connect:[::1]:80",
            "tcp-connect:*:443",
            "udp:[fd00::/8]:*",
        ] {
            assert!(ok.parse::<SocketGrant>().is_ok(), "{ok} should parse");
        }
        for (bad, why) in [
            ("db.internal:5432", "USE must be"),
            ("tcp:db:5432", "USE must be"),
            ("tcp-connect:db", "missing :PORT"),
            ("tcp-connect::80", "empty host"),
            ("tcp-connect:*.example.com:80", "the host must be"),
            ("tcp-connect:db:http", "bad port"),
            ("tcp-connect:db:9-1", "bad port range"),
            ("tcp-connect:10.0.0.0/40:1", "bad CIDR"),
        ] {
            let e = bad.parse::<SocketGrant>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let none = SocketPolicy::default();
        assert!(none.is_empty());
        assert!(!none.tcp() && !none.udp() && !none.ip_name_lookup());
        let denied = none
            .check(SocketUse::TcpConnect, addr("203.0.113.5:5432"), |_| vec![])
            .unwrap_err();
        assert_eq!(
            denied.to_string(),
            "tcp-connect to 203.0.113.5:5432 denied (grant it with --allow-socket \
             tcp-connect:203.0.113.5:5432)"
        );
    }

    #[test]
    fn each_use_is_checked_against_its_own_grants() {
        use SocketUse::*;
        let resolve = |name: &str| -> Vec<IpAddr> {
            match name {
                "db.example" => vec!["203.0.113.5".parse().unwrap()],
                "sneaky.example" => vec!["127.0.0.1".parse().unwrap()],
                _ => vec![],
            }
        };
        // (grants, use, address, allowed)
        let cases: &[(&[&str], SocketUse, &str, bool)] = &[
            (
                &["tcp-connect:203.0.113.5:5432"],
                TcpConnect,
                "203.0.113.5:5432",
                true,
            ),
            (
                &["tcp-connect:203.0.113.5:5432"],
                TcpConnect,
                "203.0.113.5:5433",
                false,
            ),
            (
                &["tcp-connect:203.0.113.5:5432"],
                TcpListen,
                "203.0.113.5:5432",
                false,
            ),
            (
                &["tcp-connect:203.0.113.5:5432"],
                Udp,
                "203.0.113.5:5432",
                false,
            ),
            // A name is checked on the addresses it resolves to.
            (
                &["tcp-connect:db.example:5432"],
                TcpConnect,
                "203.0.113.5:5432",
                true,
            ),
            (
                &["tcp-connect:db.example:5432"],
                TcpConnect,
                "203.0.113.6:5432",
                false,
            ),
            // ... and cannot smuggle a loopback or private address.
            (
                &["tcp-connect:sneaky.example:80"],
                TcpConnect,
                "127.0.0.1:80",
                false,
            ),
            (&["tcp-connect:*:80"], TcpConnect, "10.1.2.3:80", false),
            (
                &["tcp-connect:*:80"],
                TcpConnect,
                "[::ffff:127.0.0.1]:80",
                false,
            ),
            (&["tcp-connect:*:80"], TcpConnect, "198.51.100.1:80", true),
            // Unless the grant names it.
            (
                &["tcp-connect:localhost:80"],
                TcpConnect,
                "127.0.0.1:80",
                true,
            ),
            (&["tcp-connect:localhost:80"], TcpConnect, "[::1]:80", true),
            (
                &["tcp-connect:10.0.0.0/8:*"],
                TcpConnect,
                "10.1.2.3:22",
                true,
            ),
            (&["tcp-connect:[::1]:80"], TcpConnect, "[::1]:80", true),
            // Listening: the local address and port range.
            (
                &["tcp-listen:127.0.0.1:9000-9100"],
                TcpListen,
                "127.0.0.1:9050",
                true,
            ),
            (
                &["tcp-listen:127.0.0.1:9000-9100"],
                TcpListen,
                "127.0.0.1:9101",
                false,
            ),
            (
                &["tcp-listen:127.0.0.1:9000-9100"],
                TcpListen,
                "0.0.0.0:9050",
                false,
            ),
            // A grant to connect is none to listen, on any address.
            (&["tcp-connect:*:*"], TcpListen, "0.0.0.0:0", false),
            (&["udp:10.0.0.0/8:53"], Udp, "10.0.0.2:53", true),
            (&["udp:10.0.0.0/8:53"], Udp, "10.0.0.2:54", false),
        ];
        for (grants, what, address, allowed) in cases {
            let p = policy(grants);
            assert_eq!(
                p.check(*what, addr(address), resolve).is_ok(),
                *allowed,
                "{grants:?} {what:?} {address}"
            );
        }
    }

    #[test]
    fn a_udp_grant_names_peers_and_binding_a_local_address_needs_one_naming_it() {
        let peers = policy(&["udp:*:53", "udp:10.0.0.0/8:53"]);
        assert!(peers.check_bind(false, addr("0.0.0.0:0")).is_ok());
        assert!(peers.check_bind(false, addr("198.51.100.7:53")).is_err());
        assert!(
            peers.check_bind(false, addr("10.0.0.9:53")).is_ok(),
            "named by its range"
        );
        assert!(peers.check_bind(false, addr("0.0.0.0:53")).is_err());
        // `localhost` needs no lookup, so it does not open name lookup.
        assert!(!policy(&["tcp-connect:localhost:80"]).ip_name_lookup());
    }

    #[test]
    fn binding_to_any_address_needs_only_the_protocol() {
        let tcp = policy(&["tcp-connect:203.0.113.5:1"]);
        assert!(tcp.check_bind(true, addr("0.0.0.0:0")).is_ok());
        assert!(tcp.check_bind(true, addr("[::]:0")).is_ok());
        assert!(tcp.check_bind(false, addr("0.0.0.0:0")).is_err());
        assert!(tcp.check_bind(true, addr("0.0.0.0:8080")).is_err());
        assert!(tcp.check_bind(true, addr("127.0.0.1:0")).is_err());
        let udp = policy(&["udp:10.0.0.0/8:53"]);
        assert!(udp.check_bind(false, addr("0.0.0.0:0")).is_ok());
        assert!(udp.check_bind(true, addr("0.0.0.0:0")).is_err());
        let listen = policy(&["tcp-listen:127.0.0.1:9000-9100"]);
        assert!(listen.check_bind(true, addr("127.0.0.1:9000")).is_ok());
        assert!(listen.check_bind(true, addr("127.0.0.1:8999")).is_err());
        assert!(
            SocketPolicy::default()
                .check_bind(true, addr("0.0.0.0:0"))
                .is_err()
        );
    }

    #[test]
    fn switches_follow_wasmtime() {
        let p = |s: &str, grants: &[&str]| {
            SocketPolicy::new(
                SocketSwitch::parse_list(s).unwrap(),
                grants.iter().map(|g| g.parse().unwrap()).collect(),
            )
        };
        let inherit = p("inherit-network", &[]);
        assert!(inherit.tcp() && inherit.udp() && !inherit.ip_name_lookup());
        assert!(
            inherit
                .check(SocketUse::TcpConnect, addr("127.0.0.1:1"), |_| vec![])
                .is_ok()
        );
        let tcp_only = p("inherit-network,udp=n", &[]);
        assert!(tcp_only.tcp() && !tcp_only.udp());
        assert!(p("allow-ip-name-lookup", &[]).ip_name_lookup());
        assert!(!p("inherit-network=n", &[]).tcp());
        // Grants imply their protocol; a name implies lookup.
        let named = p("tcp=y", &["tcp-connect:db.example:1"]);
        assert!(named.tcp() && !named.udp() && named.ip_name_lookup());
        assert!(!p("allow-ip-name-lookup=n", &["tcp-connect:db.example:1"]).ip_name_lookup());
        assert_eq!(
            SocketSwitch::parse_list("cli,http,tcp").unwrap(),
            [SocketSwitch::Tcp(true)],
            "what pier always provides is taken and ignored"
        );
        for bad in ["inherit", "tcp=maybe", "keyvalue", "http=n", "cli=n"] {
            let e = SocketSwitch::parse_list(bad).unwrap_err().to_string();
            assert!(e.contains("pier takes inherit-network"), "{bad}: {e}");
            assert!(e.contains("always on"), "{bad}: {e}");
        }
    }
}
