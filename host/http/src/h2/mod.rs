//! HTTP/2 (RFC 9113) as the frontend's server side speaks it, as pure
//! functions over byte buffers: frame heads read and written, the payloads
//! of the control frames, and ([`request`]) a request's decoded header list
//! written as the HTTP/1.1 head the rest of the frontend reads. Header
//! compression is [`crate::hpack`]'s; the connection's state (streams,
//! windows, settings) is the node's.
//!
//! Every frame comes from a client on the internet: a reader here returns
//! the [`ErrorCode`] the connection (or stream) is to be ended with rather
//! than a value it cannot stand behind.

pub mod request;

/// What a client sends before its first frame.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of a frame's head.
pub const FRAME_HEAD: usize = 9;
/// The frame size every peer accepts, and the least it may announce.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
/// The largest frame size a peer may announce.
pub const MAX_MAX_FRAME: u32 = (1 << 24) - 1;
/// A flow-control window before any setting or update.
pub const DEFAULT_WINDOW: u32 = 65_535;
/// The largest a flow-control window may grow.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// DATA, HEADERS: the sender's last frame on the stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, CONTINUATION: the header block ends in this frame.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS: the payload is padded.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: the payload begins with a priority.
    pub const PRIORITY: u8 = 0x20;
}

/// Settings identifiers (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes of RST_STREAM and GOAWAY (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xb);
}

/// A frame's head: its payload's length, type, flags and stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// The stream (the reserved bit cleared, as a receiver must).
    pub stream: u32,
}

impl FrameHead {
    /// Reads a frame head.
    pub fn parse(b: &[u8; FRAME_HEAD]) -> FrameHead {
        FrameHead {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    /// Appends the head to `out` (`len` must fit in 24 bits).
    pub fn write(&self, out: &mut Vec<u8>) {
        debug_assert!(self.len <= MAX_MAX_FRAME);
        let len = self.len.to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], self.kind, self.flags]);
        out.extend_from_slice(&(self.stream & MAX_WINDOW).to_be_bytes());
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// The content of a DATA frame's payload: the padding taken off.
pub fn data_payload(head: &FrameHead, payload: &[u8]) -> Result<std::ops::Range<usize>, ErrorCode> {
    unpad(head, payload, 0)
}

/// The header block fragment of a HEADERS frame's payload: the padding and
/// the priority (which the frontend does not act on) taken off.
pub fn headers_payload(
    head: &FrameHead,
    payload: &[u8],
) -> Result<std::ops::Range<usize>, ErrorCode> {
    let priority = if head.has(flag::PRIORITY) { 5 } else { 0 };
    unpad(head, payload, priority)
}

/// The part of a padded payload after `skip` leading bytes and before the
/// padding.
fn unpad(
    head: &FrameHead,
    payload: &[u8],
    skip: usize,
) -> Result<std::ops::Range<usize>, ErrorCode> {
    let (start, pad) = if head.has(flag::PADDED) {
        match payload.first() {
            Some(&pad) => (1, usize::from(pad)),
            None => return Err(ErrorCode::FRAME_SIZE_ERROR),
        }
    } else {
        (0, 0)
    };
    let start = start + skip;
    match payload.len().checked_sub(pad) {
        Some(end) if end >= start => Ok(start..end),
        // padding as long as the payload or longer
        _ => Err(ErrorCode::PROTOCOL_ERROR),
    }
}

/// The entries of a SETTINGS frame's payload, in order; `None` when the
/// payload is not whole entries (a FRAME_SIZE_ERROR).
pub fn settings(payload: &[u8]) -> Option<impl Iterator<Item = (u16, u32)> + '_> {
    payload.len().is_multiple_of(6).then(|| {
        payload.chunks_exact(6).map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
    })
}

/// A 31-bit value (WINDOW_UPDATE's increment, GOAWAY's last stream), the
/// reserved bit cleared; `None` when `payload` is shorter than 4 bytes.
pub fn u31(payload: &[u8]) -> Option<u32> {
    let b: [u8; 4] = payload.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b) & MAX_WINDOW)
}

/// Appends a SETTINGS frame with `entries`.
pub fn write_settings(entries: &[(u16, u32)], out: &mut Vec<u8>) {
    let len = u32::try_from(entries.len() * 6).unwrap_or(0);
    FrameHead {
        len,
        kind: kind::SETTINGS,
        flags: 0,
        stream: 0,
    }
    .write(out);
    for (id, value) in entries {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends the acknowledgement of the peer's SETTINGS.
pub fn write_settings_ack(out: &mut Vec<u8>) {
    FrameHead {
        len: 0,
        kind: kind::SETTINGS,
        flags: flag::ACK,
        stream: 0,
    }
    .write(out);
}

/// Appends the answer to a PING carrying `data`.
pub fn write_ping_ack(data: &[u8; 8], out: &mut Vec<u8>) {
    FrameHead {
        len: 8,
        kind: kind::PING,
        flags: flag::ACK,
        stream: 0,
    }
    .write(out);
    out.extend_from_slice(data);
}

/// Appends a GOAWAY: streams above `last` were not and will not be served.
pub fn write_goaway(last: u32, code: ErrorCode, out: &mut Vec<u8>) {
    FrameHead {
        len: 8,
        kind: kind::GOAWAY,
        flags: 0,
        stream: 0,
    }
    .write(out);
    out.extend_from_slice(&(last & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&code.0.to_be_bytes());
}

/// Appends a RST_STREAM for `stream`.
pub fn write_rst(stream: u32, code: ErrorCode, out: &mut Vec<u8>) {
    FrameHead {
        len: 4,
        kind: kind::RST_STREAM,
        flags: 0,
        stream,
    }
    .write(out);
    out.extend_from_slice(&code.0.to_be_bytes());
}

/// Appends a WINDOW_UPDATE opening `stream`'s window (0: the connection's)
/// by `increment` (1 to 2³¹-1).
pub fn write_window_update(stream: u32, increment: u32, out: &mut Vec<u8>) {
    debug_assert!(increment > 0 && increment <= MAX_WINDOW);
    FrameHead {
        len: 4,
        kind: kind::WINDOW_UPDATE,
        flags: 0,
        stream,
    }
    .write(out);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// Appends a DATA frame's head for `len` bytes of payload (which the caller
/// appends next).
pub fn write_data_head(stream: u32, len: u32, end: bool, out: &mut Vec<u8>) {
    let flags = if end { flag::END_STREAM } else { 0 };
    FrameHead {
        len,
        kind: kind::DATA,
        flags,
        stream,
    }
    .write(out);
}

/// Turns the header block that follows `start` in `out` into frames in
/// place: a HEADERS frame, then CONTINUATION frames for what does not fit in
/// `max_frame` bytes. The block must have been written after `start +
/// FRAME_HEAD` bytes of room (see [`begin_headers`]).
pub fn end_headers(out: &mut Vec<u8>, start: usize, stream: u32, end_stream: bool, max_frame: u32) {
    let max = max_frame as usize;
    let block_len = out.len() - start - FRAME_HEAD;
    let end_flag = if end_stream { flag::END_STREAM } else { 0 };
    if block_len <= max {
        let mut head = Vec::with_capacity(FRAME_HEAD);
        FrameHead {
            len: block_len as u32,
            kind: kind::HEADERS,
            flags: end_flag | flag::END_HEADERS,
            stream,
        }
        .write(&mut head);
        out[start..start + FRAME_HEAD].copy_from_slice(&head);
        return;
    }
    // rare: a head larger than a frame, split (the block is moved out once)
    let block = out.split_off(start + FRAME_HEAD);
    out.truncate(start);
    for (i, piece) in block.chunks(max).enumerate() {
        let last = (i + 1) * max >= block.len();
        let (kind, mut flags) = if i == 0 {
            (kind::HEADERS, end_flag)
        } else {
            (kind::CONTINUATION, 0)
        };
        if last {
            flags |= flag::END_HEADERS;
        }
        FrameHead {
            len: piece.len() as u32,
            kind,
            flags,
            stream,
        }
        .write(out);
        out.extend_from_slice(piece);
    }
}

/// Makes room for a HEADERS frame's head in `out`; returns where it begins
/// (for [`end_headers`], after the block has been appended).
pub fn begin_headers(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEAD]);
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_head_reads_back_as_written_and_the_reserved_bit_is_dropped() {
        let head = FrameHead {
            len: 0x01_02_03,
            kind: kind::HEADERS,
            flags: 0x25,
            stream: 7,
        };
        let mut out = Vec::new();
        head.write(&mut out);
        assert_eq!(out, [1, 2, 3, 1, 0x25, 0, 0, 0, 7]);
        let b: [u8; 9] = out.try_into().expect("nine bytes");
        assert_eq!(FrameHead::parse(&b), head);
        let reserved = [0, 0, 0, 0, 0, 0x80, 0, 0, 3];
        assert_eq!(FrameHead::parse(&reserved).stream, 3);
    }

    #[test]
    fn padding_and_priority_are_taken_off_and_overlong_padding_is_refused() {
        let padded = FrameHead {
            len: 0,
            kind: kind::DATA,
            flags: flag::PADDED,
            stream: 1,
        };
        assert_eq!(data_payload(&padded, b"\x02abc\0\0"), Ok(1..4));
        assert_eq!(data_payload(&padded, b"\x05abc\0\0"), Ok(1..1));
        assert_eq!(
            data_payload(&padded, b"\x06abc\0\0"),
            Err(ErrorCode::PROTOCOL_ERROR)
        );
        assert_eq!(data_payload(&padded, b""), Err(ErrorCode::FRAME_SIZE_ERROR));
        let both = FrameHead {
            flags: flag::PADDED | flag::PRIORITY,
            kind: kind::HEADERS,
            ..padded
        };
        assert_eq!(headers_payload(&both, b"\x01\0\0\0\x03\x10blk\0"), Ok(6..9));
        assert_eq!(
            headers_payload(&both, b"\x01\0\0\0"),
            Err(ErrorCode::PROTOCOL_ERROR)
        );
        let plain = FrameHead { flags: 0, ..both };
        assert_eq!(headers_payload(&plain, b"blk"), Ok(0..3));
    }

    #[test]
    fn settings_are_whole_entries() {
        let mut out = Vec::new();
        write_settings(
            &[
                (setting::MAX_CONCURRENT_STREAMS, 100),
                (setting::INITIAL_WINDOW_SIZE, 1 << 20),
            ],
            &mut out,
        );
        let head = FrameHead::parse(out[..9].try_into().expect("a head"));
        assert_eq!((head.len, head.kind, head.stream), (12, kind::SETTINGS, 0));
        let entries: Vec<_> = settings(&out[9..]).expect("whole entries").collect();
        assert_eq!(entries, [(3, 100), (4, 1 << 20)]);
        assert!(settings(&out[9..20]).is_none());
    }

    fn frames(mut b: &[u8]) -> Vec<(FrameHead, Vec<u8>)> {
        let mut all = Vec::new();
        while !b.is_empty() {
            let head = FrameHead::parse(b[..9].try_into().expect("a head"));
            let end = 9 + head.len as usize;
            all.push((head, b[9..end].to_vec()));
            b = &b[end..];
        }
        all
    }

    #[test]
    fn a_header_block_larger_than_a_frame_continues_in_continuation_frames() {
        let mut out = b"before".to_vec();
        let start = begin_headers(&mut out);
        out.extend_from_slice(&[7; 40]);
        end_headers(&mut out, start, 5, true, 16);
        assert_eq!(&out[..6], b"before");
        let f = frames(&out[6..]);
        assert_eq!(f.len(), 3);
        assert_eq!(
            (f[0].0.kind, f[0].0.flags, f[0].0.len),
            (kind::HEADERS, flag::END_STREAM, 16)
        );
        assert_eq!(
            (f[1].0.kind, f[1].0.flags, f[1].0.len),
            (kind::CONTINUATION, 0, 16)
        );
        assert_eq!(
            (f[2].0.kind, f[2].0.flags, f[2].0.len),
            (kind::CONTINUATION, flag::END_HEADERS, 8)
        );
        assert!(f.iter().all(|(h, _)| h.stream == 5));
        let mut small = Vec::new();
        let start = begin_headers(&mut small);
        small.extend_from_slice(b"abc");
        end_headers(&mut small, start, 1, false, 16);
        let f = frames(&small);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].0.flags, f[0].1.as_slice()),
            (flag::END_HEADERS, &b"abc"[..])
        );
    }

    #[test]
    fn control_frames_have_their_fixed_shapes() {
        let mut out = Vec::new();
        write_rst(3, ErrorCode::CANCEL, &mut out);
        write_window_update(0, 1000, &mut out);
        write_goaway(9, ErrorCode::ENHANCE_YOUR_CALM, &mut out);
        write_ping_ack(b"12345678", &mut out);
        write_settings_ack(&mut out);
        let f = frames(&out);
        assert_eq!(
            (f[0].0.kind, f[0].0.stream, f[0].1.as_slice()),
            (kind::RST_STREAM, 3, &[0, 0, 0, 8][..])
        );
        assert_eq!(u31(&f[1].1), Some(1000));
        assert_eq!((u31(&f[2].1), &f[2].1[4..]), (Some(9), &[0, 0, 0, 0xb][..]));
        assert_eq!(
            (f[3].0.flags, f[3].1.as_slice()),
            (flag::ACK, &b"12345678"[..])
        );
        assert_eq!(
            (f[4].0.kind, f[4].0.flags, f[4].0.len),
            (kind::SETTINGS, flag::ACK, 0)
        );
        assert_eq!(u31(b"\xff\xff\xff\xff"), Some(MAX_WINDOW));
        assert_eq!(u31(b"\0\0"), None);
    }
}
