//! Frame checks in front of the HTTP/2 layer, for the rules of RFC 9113 it enforces with another
//! error code than the RFC's: a frame of the wrong size for its type (PING, PRIORITY, RST_STREAM,
//! WINDOW_UPDATE, SETTINGS and its ACK) must end the connection with FRAME_SIZE_ERROR, and a
//! SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 with FLOW_CONTROL_ERROR (sections 4.2, 6.3-6.9);
//! and DATA or HEADERS on a stream the client has ended (END_STREAM) must be STREAM_CLOSED
//! (section 5.1), where the layer ends the whole connection with PROTOCOL_ERROR.
//!
//! The guard reads the client's bytes before hyper does. A frame breaking one of these rules is
//! replaced by one the HTTP/2 layer itself rejects with the required code (a frame head longer
//! than any allowed frame; two WINDOW_UPDATEs that overflow the connection window), and what the
//! client sends after it is dropped. So the GOAWAY still comes from the layer that owns the
//! connection: at a frame boundary, naming the last stream it processed. A frame on an ended
//! stream gets a RST_STREAM from the client put in front of it, after which the layer answers the
//! frame with the stream error STREAM_CLOSED, and the connection goes on.

use std::collections::BTreeSet;

/// The client's connection preface: passed through as it is.
const PREFACE_LEN: usize = 24;
const HEAD_LEN: usize = 9;
/// The largest SETTINGS payload the guard reads whole to check (a client has 6 settings to send;
/// a longer frame is the HTTP/2 layer's to refuse as over its frame size).
const MAX_SETTINGS: usize = 16_384;

/// Ended streams remembered (the oldest are forgotten first).
const MAX_TRACKED: usize = 1024;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const CANCEL: u32 = 0x8;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// Why a frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// FRAME_SIZE_ERROR.
    FrameSize,
    /// FLOW_CONTROL_ERROR.
    FlowControl,
}

/// The guard of one HTTP/2 connection.
#[derive(Debug)]
pub struct H2Guard {
    /// Preface bytes still to pass.
    preface_left: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    /// The head (and, for SETTINGS, the payload) of the next frame, while incomplete.
    partial: Vec<u8>,
    /// Set once a frame was refused: nothing more reaches hyper.
    refused: Option<Refused>,
    /// The highest stream the client opened.
    highest: u32,
    /// Streams the client opened and has not ended.
    open: BTreeSet<u32>,
    /// Streams the client ended with END_STREAM.
    ended: BTreeSet<u32>,
}

impl H2Guard {
    /// A guard for a connection of which `already` bytes have gone to hyper unchecked (the
    /// beginning of the preface).
    pub fn new(already: usize) -> H2Guard {
        H2Guard {
            preface_left: PREFACE_LEN.saturating_sub(already),
            skip: 0,
            partial: Vec::new(),
            refused: None,
            highest: 0,
            open: BTreeSet::new(),
            ended: BTreeSet::new(),
        }
    }

    /// Why the connection was refused, once it was.
    #[cfg(test)]
    pub fn refused(&self) -> Option<Refused> {
        self.refused
    }

    /// Takes bytes the client sent; appends to `out` what hyper may read now (a frame head is
    /// held back until it is whole).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() && self.refused.is_none() {
            let pass = if self.preface_left > 0 {
                &mut self.preface_left
            } else if self.skip > 0 {
                &mut self.skip
            } else {
                // At a frame: gather its head (and a SETTINGS payload).
                let want = match self.head() {
                    Some((len, SETTINGS, flags)) if flags & ACK == 0 && len <= MAX_SETTINGS => {
                        HEAD_LEN + len
                    }
                    _ => HEAD_LEN,
                };
                let n = (want - self.partial.len()).min(input.len());
                self.partial.extend_from_slice(&input[..n]);
                input = &input[n..];
                let whole = match self.head() {
                    Some((len, SETTINGS, flags)) if flags & ACK == 0 && len <= MAX_SETTINGS => {
                        self.partial.len() == HEAD_LEN + len
                    }
                    Some(_) => true,
                    None => false,
                };
                if !whole {
                    continue;
                }
                let (len, kind, flags) = self.head().expect("whole");
                if let Some(refused) = check(kind, flags, len, &self.partial[HEAD_LEN..]) {
                    self.refuse(refused, out);
                    return;
                }
                let stream = u32::from_be_bytes([
                    self.partial[5] & 0x7f,
                    self.partial[6],
                    self.partial[7],
                    self.partial[8],
                ]);
                if self.after_end(kind, flags, stream) {
                    // The client's own reset first: the layer then answers this frame with
                    // STREAM_CLOSED.
                    out.extend_from_slice(&[0, 0, 4, RST_STREAM, 0]);
                    out.extend_from_slice(&stream.to_be_bytes());
                    out.extend_from_slice(&CANCEL.to_be_bytes());
                }
                self.skip = len - (self.partial.len() - HEAD_LEN);
                out.append(&mut self.partial);
                continue;
            };
            let n = (*pass).min(input.len());
            *pass -= n;
            out.extend_from_slice(&input[..n]);
            input = &input[n..];
        }
    }

    /// Follows the client's streams; true for DATA or HEADERS on a stream it has ended.
    fn after_end(&mut self, kind: u8, flags: u8, stream: u32) -> bool {
        if stream == 0 {
            return false;
        }
        match kind {
            DATA | HEADERS if self.ended.contains(&stream) => return true,
            HEADERS if stream > self.highest => {
                self.highest = stream;
                self.open.insert(stream);
            }
            RST_STREAM => {
                self.open.remove(&stream);
                return false;
            }
            _ => {}
        }
        if matches!(kind, DATA | HEADERS) && flags & END_STREAM != 0 && self.open.remove(&stream) {
            self.ended.insert(stream);
        }
        for set in [&mut self.open, &mut self.ended] {
            if set.len() > MAX_TRACKED {
                set.pop_first();
            }
        }
        false
    }

    /// (payload length, type, flags) of the frame being gathered, once its head is whole.
    fn head(&self) -> Option<(usize, u8, u8)> {
        let h = self.partial.get(..HEAD_LEN)?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        Some((len, h[3], h[4]))
    }

    /// Hands hyper, instead of the refused frame, one it rejects with the same code.
    fn refuse(&mut self, refused: Refused, out: &mut Vec<u8>) {
        self.refused = Some(refused);
        self.partial.clear();
        match refused {
            // A DATA frame head declaring the largest length there is: over any frame size the
            // server allows.
            Refused::FrameSize => out.extend_from_slice(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]),
            // Two increments of 2^31-1 overflow the connection window whatever it was.
            Refused::FlowControl => {
                for _ in 0..2 {
                    out.extend_from_slice(&[0, 0, 4, WINDOW_UPDATE, 0, 0, 0, 0, 0]);
                    out.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
                }
            }
        }
    }
}

/// What RFC 9113 says of a frame of `kind` with `flags` and a payload of `len` bytes (of which
/// `payload` was read: all of a SETTINGS frame's).
fn check(kind: u8, flags: u8, len: usize, payload: &[u8]) -> Option<Refused> {
    let size_ok = match kind {
        PRIORITY => len == 5,
        RST_STREAM | WINDOW_UPDATE => len == 4,
        PING => len == 8,
        SETTINGS if flags & ACK != 0 => len == 0,
        SETTINGS => len.is_multiple_of(6),
        _ => true,
    };
    if !size_ok {
        return Some(Refused::FrameSize);
    }
    if kind == SETTINGS && flags & ACK == 0 {
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            if id == SETTINGS_INITIAL_WINDOW_SIZE && value > 0x7fff_ffff {
                return Some(Refused::FlowControl);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `bytes` in pieces of `chunk`.
    fn through(bytes: &[u8], chunk: usize) -> (Vec<u8>, Option<Refused>) {
        let mut guard = H2Guard::new(0);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            guard.feed(piece, &mut out);
        }
        (out, guard.refused())
    }

    #[test]
    fn good_frames_pass_unchanged_however_they_arrive() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(
            SETTINGS,
            0,
            0,
            &[0, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0, 100],
        ));
        stream.extend(frame(SETTINGS, ACK, 0, &[]));
        stream.extend(frame(HEADERS, 0x4, 1, b"header block"));
        stream.extend(frame(0x0, 0x1, 1, &[7u8; 40_000]));
        stream.extend(frame(PING, 0, 0, b"12345678"));
        stream.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
        stream.extend(frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]));
        for chunk in [1, 7, 9, 100, 16_384, 1 << 20] {
            let (out, refused) = through(&stream, chunk);
            assert!(out == stream && refused.is_none(), "changed, by {chunk}");
        }
        // A frame head cut short is held back, not passed in part.
        let (out, _) = through(&stream[..24 + 5], 1 << 20);
        assert_eq!(out.len(), 24);
    }

    #[test]
    fn a_frame_on_an_ended_stream_follows_a_reset() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(HEADERS, 0x4, 1, b"post"));
        stream.extend(frame(DATA, END_STREAM, 1, b"body"));
        stream.extend(frame(HEADERS, 0x4 | END_STREAM, 3, b"get"));
        let before = stream.len();
        let late = frame(DATA, 0, 1, b"late");
        stream.extend(&late);
        stream.extend(frame(DATA, 0, 3, b"late too"));
        let (out, refused) = through(&stream, 3);
        assert_eq!(refused, None, "the connection goes on");
        assert_eq!(out[..before], stream[..before]);
        let mut want = frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes());
        want.extend(&late);
        want.extend(frame(RST_STREAM, 0, 3, &CANCEL.to_be_bytes()));
        want.extend(frame(DATA, 0, 3, b"late too"));
        assert_eq!(out[before..], want[..]);
    }

    #[test]
    fn bad_sizes_and_windows_become_what_the_layer_refuses_rightly() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for (bad, refused) in [
            (frame(PING, 0, 0, &[0; 7]), Refused::FrameSize),
            (frame(PRIORITY, 0, 1, &[0; 4]), Refused::FrameSize),
            (frame(RST_STREAM, 0, 1, &[0; 5]), Refused::FrameSize),
            (frame(WINDOW_UPDATE, 0, 0, &[0; 3]), Refused::FrameSize),
            (frame(SETTINGS, 0, 0, &[0; 5]), Refused::FrameSize),
            (frame(SETTINGS, ACK, 0, &[0; 6]), Refused::FrameSize),
            (
                frame(SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
                Refused::FlowControl,
            ),
        ] {
            let mut stream = preface.clone();
            stream.extend(frame(SETTINGS, 0, 0, &[]));
            let good = stream.len();
            stream.extend(&bad);
            stream.extend(frame(PING, 0, 0, b"dropped!"));
            for chunk in [1, 5, 1 << 20] {
                let (out, got) = through(&stream, chunk);
                assert_eq!(got, Some(refused), "{bad:?} by {chunk}");
                assert_eq!(out[..good], stream[..good], "what came before passed");
                let replaced = &out[good..];
                match refused {
                    Refused::FrameSize => assert_eq!(&replaced[..3], &[0xff; 3]),
                    Refused::FlowControl => {
                        assert_eq!(replaced.len(), 26);
                        assert_eq!(replaced[3], WINDOW_UPDATE);
                    }
                }
            }
        }
    }
}
