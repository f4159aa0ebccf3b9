//! Listening addresses as users write them: `127.0.0.1:8080`, `[::]:8080`, `localhost:8080`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Parses `--addr`-style `HOST:PORT`: an IP address (IPv6 in brackets) or a host name with a
/// port (0 picks a free one). `localhost` is the IPv4 loopback address; another name is the
/// first address it resolves to, IPv4 first.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let example = "e.g. 127.0.0.1:8080, [::]:8080 or localhost:8080";
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:PORT ({example})"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: the port {port:?} is not a number from 0 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?}: no host before the port ({example})"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: cannot resolve {host}: {e}"))?
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs
        .first()
        .copied()
        .ok_or_else(|| format!("{s:?}: {host} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_names_and_mistakes() {
        let ok = |s: &str| parse_listen_addr(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(ok("[::]:9000"), "[::]:9000");
        assert_eq!(ok("[::1]:0"), "[::1]:0");
        assert_eq!(ok("localhost:8080"), "127.0.0.1:8080");
        assert_eq!(ok("LOCALHOST:1"), "127.0.0.1:1");
        for (bad, says) in [
            ("8080", "expected HOST:PORT"),
            ("localhost:http", "is not a number"),
            ("localhost:70000", "is not a number"),
            (":8080", "no host before the port"),
            (
                "no-such-host.invalid:80",
                "cannot resolve no-such-host.invalid",
            ),
        ] {
            let e = parse_listen_addr(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
