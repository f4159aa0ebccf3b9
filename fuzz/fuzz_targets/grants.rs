//! `--allow-outbound` patterns and `--allow-socket` grants: any text parses or is refused, and
//! a parsed pattern's policy decides any URL without panicking; what it allows by name it
//! allows again when asked twice (the matcher is a pure function).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_config::{OutboundPattern, OutboundPolicy, SocketGrant};

fuzz_target!(|input: (&str, &str, &str, u16)| {
    let (pattern, host, grant, port) = input;
    let _ = grant.parse::<SocketGrant>();
    let Ok(pattern) = pattern.parse::<OutboundPattern>() else {
        return;
    };
    let policy = OutboundPolicy::new(vec![pattern]);
    for scheme in ["http", "https"] {
        let first = policy.check_url(scheme, host, port).is_ok();
        assert_eq!(first, policy.check_url(scheme, host, port).is_ok());
        if let Ok(ip) = host.parse() {
            let _ = policy.check_ip(scheme, host, ip, port);
        }
    }
});
