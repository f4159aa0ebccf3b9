//! The stored form of a URL's responses, for a store outside the process (Redis): one value
//! holds every variant's head (JSON: the RFC 9111 policy is serde) and the bodies that fit in
//! it; a larger body goes in chunks of its own, [`CHUNK`] bytes each, named from the value's key.
//!
//! A value: `pier-cache 1\n`, the heads' length (4 bytes, big-endian), the heads, then the
//! inline bodies one after the other.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_cache_semantics::CachePolicy;
use serde::{Deserialize, Serialize};

use crate::entry::{Entry, Windows};
use crate::memory::Variants;

/// The largest body kept inside the value, and the size of each chunk of a larger one.
pub const CHUNK: usize = 512 << 10;

const MAGIC: &[u8] = b"pier-cache 1\n";

/// One variant's head as stored.
#[derive(Serialize, Deserialize)]
struct Head {
    policy: CachePolicy,
    status: u16,
    #[serde(with = "http_serde::header_map")]
    headers: HeaderMap,
    stale_at: SystemTime,
    windows: Windows,
    /// The request's values of the names its `Vary` lists (none: the request had none).
    vary: Vec<(String, Vec<Vec<u8>>)>,
    vary_any: bool,
    body: Body,
}

/// Where a variant's body is.
#[derive(Serialize, Deserialize)]
enum Body {
    /// In the value, after the heads: this many bytes.
    Inline(usize),
    /// In `chunks` keys of its own, named by [`chunk_key`] with `id`; `len` bytes in all.
    Chunked {
        id: String,
        len: usize,
        chunks: usize,
    },
}

/// A URL's variants encoded: the value, and the chunks to store beside it (key, bytes).
pub struct Encoded {
    /// The value stored under the URL's key.
    pub value: Vec<u8>,
    /// The large bodies' chunks, each under its own key.
    pub chunks: Vec<(String, Bytes)>,
}

/// The key of chunk `n` of body `id` stored for `key` (a URL's key has no space in it).
pub fn chunk_key(key: &str, id: &str, n: usize) -> String {
    format!("{key} {id} {n}")
}

/// `variants` stored under `key`; a body larger than [`CHUNK`] gets a fresh id from `new_id`.
/// An error when a head cannot be written (a field value JSON cannot hold as text).
pub fn encode(
    key: &str,
    variants: &Variants,
    mut new_id: impl FnMut() -> String,
) -> Result<Encoded, String> {
    let mut heads = Vec::with_capacity(variants.len());
    let mut inline = Vec::new();
    let mut chunks = Vec::new();
    for entry in variants {
        let body = if entry.body.len() <= CHUNK {
            inline.push(entry.body.clone());
            Body::Inline(entry.body.len())
        } else {
            let id = new_id();
            let mut n = 0;
            for at in (0..entry.body.len()).step_by(CHUNK) {
                let end = (at + CHUNK).min(entry.body.len());
                chunks.push((chunk_key(key, &id, n), entry.body.slice(at..end)));
                n += 1;
            }
            Body::Chunked {
                id,
                len: entry.body.len(),
                chunks: n,
            }
        };
        heads.push(Head {
            policy: entry.policy.clone(),
            status: entry.status.as_u16(),
            headers: entry.headers.clone(),
            stale_at: entry.stale_at,
            windows: entry.windows,
            vary: entry
                .vary
                .iter()
                .map(|(name, values)| {
                    let values = values.iter().map(|v| v.as_bytes().to_vec()).collect();
                    (name.as_str().to_string(), values)
                })
                .collect(),
            vary_any: entry.vary_any,
            body,
        });
    }
    let heads = serde_json::to_vec(&heads).map_err(|e| e.to_string())?;
    let length = u32::try_from(heads.len()).map_err(|_| "heads too large".to_string())?;
    let inline_len: usize = inline.iter().map(Bytes::len).sum();
    let mut value = Vec::with_capacity(MAGIC.len() + 4 + heads.len() + inline_len);
    value.extend_from_slice(MAGIC);
    value.extend_from_slice(&length.to_be_bytes());
    value.extend_from_slice(&heads);
    for body in inline {
        value.extend_from_slice(&body);
    }
    Ok(Encoded { value, chunks })
}

/// A value read back: the variants whose bodies it holds, and for each chunked one the keys of
/// its chunks, to be read and given to [`Decoded::finish`].
pub struct Decoded {
    heads: Vec<(Head, Option<Bytes>)>,
}

impl Decoded {
    /// The chunk keys of the bodies not in the value, in order, for `key`.
    pub fn chunk_keys(&self, key: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for (head, _) in &self.heads {
            if let Body::Chunked { id, chunks, .. } = &head.body {
                keys.extend((0..*chunks).map(|n| chunk_key(key, id, n)));
            }
        }
        keys
    }

    /// The variants, the chunks read for [`chunk_keys`](Self::chunk_keys) given in their order;
    /// `None` when a chunk is missing (expired or evicted) or the wrong size: then nothing is
    /// used.
    pub fn finish(self, chunks: Vec<Option<Vec<u8>>>) -> Option<Variants> {
        let mut chunks = chunks.into_iter();
        let mut variants = Vec::with_capacity(self.heads.len());
        for (head, inline) in self.heads {
            let body = match (&head.body, inline) {
                (_, Some(body)) => body,
                (Body::Chunked { len, chunks: n, .. }, None) => {
                    let mut body = Vec::with_capacity(*len);
                    for _ in 0..*n {
                        body.extend_from_slice(&chunks.next()??);
                    }
                    if body.len() != *len {
                        return None;
                    }
                    Bytes::from(body)
                }
                (Body::Inline(_), None) => return None,
            };
            let vary = head
                .vary
                .into_iter()
                .map(|(name, values)| {
                    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                    let values = values
                        .into_iter()
                        .map(|v| HeaderValue::from_bytes(&v).ok())
                        .collect::<Option<Vec<_>>>()?;
                    Some((name, values))
                })
                .collect::<Option<Vec<_>>>()?;
            variants.push(Arc::new(Entry {
                policy: head.policy,
                status: StatusCode::from_u16(head.status).ok()?,
                headers: head.headers,
                body,
                stale_at: head.stale_at,
                windows: head.windows,
                vary,
                vary_any: head.vary_any,
                hit_head: Default::default(),
            }));
        }
        Some(variants)
    }
}

/// Reads a value back; `None` if it is not one (another writer's key, an older format).
pub fn decode(value: &[u8]) -> Option<Decoded> {
    let rest = value.strip_prefix(MAGIC)?;
    let (length, rest) = rest.split_first_chunk::<4>()?;
    let length = u32::from_be_bytes(*length) as usize;
    if rest.len() < length {
        return None;
    }
    let (heads, mut bodies) = rest.split_at(length);
    let heads: Vec<Head> = serde_json::from_slice(heads).ok()?;
    let mut out = Vec::with_capacity(heads.len());
    for head in heads {
        let inline = match head.body {
            Body::Inline(len) => {
                if bodies.len() < len {
                    return None;
                }
                let (body, rest) = bodies.split_at(len);
                bodies = rest;
                Some(Bytes::copy_from_slice(body))
            }
            Body::Chunked { .. } => None,
        };
        out.push((head, inline));
    }
    Some(Decoded { heads: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: Bytes, vary: &str, accept: Option<&str>) -> Arc<Entry> {
        let request: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let response = [
            ("cache-control", "max-age=60, stale-if-error=30"),
            ("vary", vary),
            ("set-me", "one"),
            ("set-me", "two"),
        ];
        crate::entry::sample(&request, &response, body)
    }

    #[test]
    fn variants_come_back_as_they_went_in_small_bodies_inline_large_ones_in_chunks() {
        let large = Bytes::from((0..CHUNK * 2 + 10).map(|i| i as u8).collect::<Vec<_>>());
        let variants = vec![
            entry(Bytes::from_static(b"small"), "accept", Some("text/html")),
            entry(large.clone(), "accept", None),
            entry(Bytes::new(), "*", None),
        ];
        let encoded = encode("k", &variants, || "id1".to_string()).unwrap();
        assert_eq!(encoded.chunks.len(), 3);
        assert_eq!(encoded.chunks[2].0, "k id1 2");
        let decoded = decode(&encoded.value).unwrap();
        let keys = decoded.chunk_keys("k");
        assert_eq!(keys, ["k id1 0", "k id1 1", "k id1 2"]);
        let chunks: Vec<_> = encoded
            .chunks
            .iter()
            .map(|(_, b)| Some(b.to_vec()))
            .collect();
        let back = decoded.finish(chunks).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in variants.iter().zip(&back) {
            assert_eq!(a.body, b.body);
            assert_eq!(a.headers, b.headers);
            assert_eq!(a.status, b.status);
            assert_eq!(a.stale_at, b.stale_at);
            assert_eq!(a.windows, b.windows);
            assert_eq!(a.vary, b.vary);
            assert_eq!(a.vary_any, b.vary_any);
            assert_eq!(
                a.policy.time_to_live(a.stale_at),
                b.policy.time_to_live(a.stale_at)
            );
        }
        // The repeated field stays repeated.
        assert_eq!(back[0].headers.get_all("set-me").iter().count(), 2);
    }

    #[test]
    fn a_missing_chunk_or_a_foreign_value_is_nothing() {
        let large = Bytes::from(vec![7u8; CHUNK + 1]);
        let encoded = encode("k", &vec![entry(large, "accept", None)], || "x".into()).unwrap();
        let decoded = decode(&encoded.value).unwrap();
        assert!(decoded.finish(vec![Some(vec![7; CHUNK]), None]).is_none());
        assert!(decode(b"something else").is_none());
        assert!(decode(&encoded.value[..20]).is_none());
    }
}
