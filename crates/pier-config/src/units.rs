//! Human units on the command line: sizes (`128MiB`, `64k`) and durations (`30s`, `250ms`).

use std::time::Duration;

/// A size or duration flag value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {hint}")]
pub struct UnitError {
    what: &'static str,
    input: String,
    hint: &'static str,
}

/// Parses a byte size: a number with an optional unit `B`, `K`/`KiB`/`KB`, `M`/`MiB`/`MB`,
/// `G`/`GiB`/`GB` (all binary, case-insensitive).
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let err = || UnitError {
        what: "size",
        input: input.to_string(),
        hint: "expected a number of bytes with an optional unit: 512, 64KiB, 128MiB, 1GiB",
    };
    let (number, unit) = split_number(input).ok_or_else(err)?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(err()),
    };
    number.checked_mul(1 << shift).ok_or_else(err)
}

/// Parses a duration: a number with a unit `ms`, `s`, `m` or `h` (`0` alone means zero).
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let err = || UnitError {
        what: "duration",
        input: input.to_string(),
        hint: "expected a number with a unit: 250ms, 30s, 5m, 1h (or 0)",
    };
    let (number, unit) = split_number(input).ok_or_else(err)?;
    let millis = match unit {
        "" if number == 0 => 0,
        "ms" => number,
        "s" => number.checked_mul(1_000).ok_or_else(err)?,
        "m" => number.checked_mul(60_000).ok_or_else(err)?,
        "h" => number.checked_mul(3_600_000).ok_or_else(err)?,
        _ => return Err(err()),
    };
    Ok(Duration::from_millis(millis))
}

/// `"128MiB"` -> `(128, "MiB")`: leading decimal digits, then the rest.
fn split_number(input: &str) -> Option<(u64, &str)> {
    let s = input.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    Some((number.parse().ok()?, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("512", Some(512)),
            ("512B", Some(512)),
            ("64k", Some(64 << 10)),
            ("64KiB", Some(64 << 10)),
            ("128MiB", Some(128 << 20)),
            ("128M", Some(128 << 20)),
            ("1GiB", Some(1 << 30)),
            ("1 GiB", Some(1 << 30)),
            ("", None),
            ("MiB", None),
            ("-1", None),
            ("1.5MiB", None),
            ("10TiB", None),
            ("99999999999999999999G", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).ok(), *want, "{input:?}");
        }
        let msg = parse_size("lots").unwrap_err().to_string();
        assert!(msg.starts_with("invalid size \"lots\": expected"), "{msg}");
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("0", Some(Duration::ZERO)),
            ("250ms", Some(Duration::from_millis(250))),
            ("30s", Some(Duration::from_secs(30))),
            ("5m", Some(Duration::from_secs(300))),
            ("1h", Some(Duration::from_secs(3600))),
            ("30", None),
            ("s", None),
            ("1.5s", None),
            ("10d", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).ok(), *want, "{input:?}");
        }
    }
}
