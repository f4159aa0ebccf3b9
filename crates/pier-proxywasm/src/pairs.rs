//! The header map wire format: little-endian u32 count, then (u32 key_len, u32 value_len) per
//! pair, then each key and value followed by a NUL. Repeated names stay repeated pairs.

/// Largest serialized map accepted from a guest (the reference host's cap).
pub const MAX_SERIALIZED: usize = 1 << 20;
/// Most pairs accepted from a guest.
pub const MAX_PAIRS: usize = 1024;

/// Serializes `pairs`.
pub fn serialize<'a>(
    pairs: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Vec<u8> {
    let size: usize = 4 + pairs
        .clone()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses a serialized map; `None` when malformed or over the caps.
pub fn deserialize(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.len() > MAX_SERIALIZED {
        return None;
    }
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    if count > MAX_PAIRS {
        return None;
    }
    let mut data = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (klen, vlen) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
        let key = bytes.get(data..data + klen)?.to_vec();
        data += klen;
        if *bytes.get(data)? != 0 {
            return None;
        }
        data += 1;
        let value = bytes.get(data..data + vlen)?.to_vec();
        data += vlen;
        if *bytes.get(data)? != 0 {
            return None;
        }
        data += 1;
        out.push((key, value));
    }
    (data == bytes.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_repeated_names() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/x"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
        ];
        let bytes = serialize(pairs.iter().copied());
        assert_eq!(&bytes[..4], &3u32.to_le_bytes());
        assert_eq!(&bytes[4..12], &[5, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&bytes[28..36], b":path\0/x");
        let back = deserialize(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2], (b"set-cookie".to_vec(), b"b=2".to_vec()));
    }

    #[test]
    fn malformed_maps_are_refused() {
        let good = serialize([(&b"a"[..], &b"b"[..])].into_iter());
        assert!(deserialize(&good).is_some());
        assert!(deserialize(&good[..good.len() - 1]).is_none(), "truncated");
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(deserialize(&no_nul).is_none(), "missing NUL");
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(deserialize(&trailing).is_none(), "trailing bytes");
        assert!(
            deserialize(&(2000u32).to_le_bytes()).is_none(),
            "too many pairs"
        );
        assert!(deserialize(&[1, 0]).is_none());
    }
}
