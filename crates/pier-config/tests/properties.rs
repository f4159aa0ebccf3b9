//! Property tests of what pier parses from its users: sizes and durations, `--allow-outbound`
//! patterns (the matcher against a model of what each pattern means), and manifests (any text
//! is a manifest or an error, never a panic). `PROPTEST_CASES=100000` runs them longer.

use std::net::Ipv4Addr;
use std::time::Duration;

use pier_config::{OutboundPattern, parse_duration, parse_manifest, parse_size};
use proptest::prelude::*;

proptest! {
    /// A number with a unit is that many bytes, or an error when it does not fit.
    #[test]
    fn sizes_are_their_number_times_their_unit(
        n in 0u64..(1 << 40),
        (unit, shift) in prop::sample::select(vec![
            ("", 0u32), ("B", 0), ("b", 0), ("k", 10), ("KiB", 10), ("KB", 10), ("M", 20),
            ("MiB", 20), ("mb", 20), ("G", 30), ("GiB", 30), ("gb", 30),
        ]),
    ) {
        let parsed = parse_size(&format!("{n}{unit}"));
        match n.checked_mul(1 << shift) {
            Some(bytes) => prop_assert_eq!(parsed, Ok(bytes)),
            None => prop_assert!(parsed.is_err()),
        }
    }

    /// A number with a unit is that long; a bare number other than 0 is refused.
    #[test]
    fn durations_are_their_number_times_their_unit(
        n in 0u64..(1 << 50),
        (unit, millis) in prop::sample::select(vec![
            ("ms", 1u64), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("", 0),
        ]),
    ) {
        let parsed = parse_duration(&format!("{n}{unit}"));
        if unit.is_empty() {
            prop_assert_eq!(parsed.is_ok(), n == 0);
        } else {
            match n.checked_mul(millis) {
                Some(ms) => prop_assert_eq!(parsed, Ok(Duration::from_millis(ms))),
                None => prop_assert!(parsed.is_err()),
            }
        }
    }

    /// Any text is a size, a duration, a pattern and a manifest, or an error: never a panic.
    #[test]
    fn any_text_parses_or_is_refused(text in "\\PC{0,64}") {
        let _ = parse_size(&text);
        let _ = parse_duration(&text);
        let _ = text.parse::<OutboundPattern>();
        let _ = parse_manifest(&text, std::path::Path::new("/nonexistent/pier.toml"));
    }

    /// Manifest-shaped text (tables, routes, keys in any order, values of any kind) is a
    /// manifest or an error with its place, never a panic.
    #[test]
    fn manifest_shaped_text_parses_or_is_refused(
        lines in prop::collection::vec(prop::sample::select(vec![
            "manifest_version = 1", "manifest_version = 2", "[[route]]", "path = \"/...\"",
            "path = \"/a/.../b\"", "path = \"\"", "component = \"c\"", "upstream = \"http://x\"",
            "files = \"public/\"", "cache = \"p\"", "filters = [\"f\"]", "middleware = [\"m\"]",
            "[component.c]", "source = \"c.wasm\"", "[cache.p]", "size = \"1MiB\"",
            "type = \"redis\"", "url = \"redis://x\"", "max_entry = \"0\"", "[filter.f]",
            "[variables]", "v = { default = \"x\" }", "env = { A = \"{{ v }}\" }",
            "dirs = { \"/d\" = \"./d:ro\" }", "limits = { memory = \"1KiB\" }",
            "[key_value_store.s]", "instance_reuse = 0", "host = \"h\"", "x = [1, {a = 2}]",
        ]), 0..16),
    ) {
        let text = lines.join("\n");
        let _ = parse_manifest(&text, std::path::Path::new("/nonexistent/pier.toml"));
    }

    /// The outbound matcher agrees with a model of each pattern's meaning: the scheme (or any),
    /// the host (a name, any subdomain of a domain but not the domain, an IPv4 range, or any),
    /// the port (the request scheme's default when none is given, a number, a range, or any).
    #[test]
    fn outbound_patterns_match_what_they_say(
        scheme in prop::sample::select(vec!["http", "https", "*"]),
        host in prop::sample::select(vec![
            "example.com", "*.example.com", "*", "10.0.0.0/8", "10.1.2.3", "192.168.0.0/16",
        ]),
        port in prop::sample::select(vec![None, Some("80"), Some("8080"), Some("8000..8100"), Some("*")]),
        req_scheme in prop::sample::select(vec!["http", "https"]),
        req_host in prop::sample::select(vec![
            "example.com", "a.example.com", "b.a.example.com", "xexample.com", "example.org",
            "10.1.2.3", "10.200.0.1", "192.168.3.4", "11.0.0.1",
        ]),
        req_port in prop::sample::select(vec![80u16, 443, 8080, 8050, 9000]),
    ) {
        let text = match port {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        let pattern: OutboundPattern = text.parse().unwrap();
        let scheme_ok = scheme == "*" || scheme == req_scheme;
        let port_ok = match port {
            None => req_port == if req_scheme == "https" { 443 } else { 80 },
            Some("*") => true,
            Some("8000..8100") => (8000..=8100).contains(&req_port),
            Some(n) => n.parse::<u16>().unwrap() == req_port,
        };
        let host_ok = match host {
            "*" => true,
            _ if host.starts_with("*.") => {
                let domain = &host[2..];
                req_host.len() > domain.len() + 1 && req_host.ends_with(&format!(".{domain}"))
            }
            _ if host.contains('/') => {
                let (net, bits) = host.split_once('/').unwrap();
                let (net, bits): (Ipv4Addr, u32) = (net.parse().unwrap(), bits.parse().unwrap());
                req_host.parse::<Ipv4Addr>().is_ok_and(|ip| {
                    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                    u32::from(ip) & mask == u32::from(net) & mask
                })
            }
            _ => host == req_host,
        };
        prop_assert_eq!(
            pattern.matches(req_scheme, req_host, req_port),
            scheme_ok && port_ok && host_ok,
            "{} against {}://{}:{}", text, req_scheme, req_host, req_port
        );
    }
}
