//! An HTTP/2 connection's state, as the frontend serves it: frames read
//! from the client ([`Conn::receive`]), the streams they open, their
//! flow-control windows and settings, and the frames going back
//! ([`Conn::out`]). No I/O and no runtime here: the connection's task
//! (`super::serve`) reads into a buffer, lets this state take what arrived,
//! runs the streams it opens, and writes `out`; the streams reach their
//! side of the state through [`super::H2Body`] and [`super::H2Answer`], in
//! the same task, under the connection's lock.
//!
//! What a client sends is bounded: every frame's size (our
//! `SETTINGS_MAX_FRAME_SIZE` is the default 16 KiB), a header block's size
//! across CONTINUATION frames, the streams open at once, the body bytes
//! buffered (the windows: what a stream has not read is never opened
//! again), and the frames the connection owes the client (`out` is not
//! read into while it holds more than [`OUT_LIMIT`], so a client that
//! sends PINGs or SETTINGS and reads nothing stalls itself). A client that
//! breaks the protocol gets GOAWAY with the error and the connection ends.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use gearhost_http::h2::request::{Request, RequestWriter};
use gearhost_http::h2::{
    self as wire2, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, ErrorCode, FRAME_HEAD, FrameHead, MAX_WINDOW,
    flag, kind, setting,
};
use gearhost_http::head::RequestHead;
use gearhost_http::hpack;

use super::{CONNECTION_WINDOW, MAX_HEADER_LIST, MAX_STREAMS, STREAM_WINDOW};

/// Frames owed to the client past which no more of its frames are read
/// and no more answer data is taken from the streams.
pub(super) const OUT_LIMIT: usize = 256 * 1024;
/// The most header block bytes a request may send (HEADERS and its
/// CONTINUATION frames together) before the connection is closed.
const MAX_BLOCK: usize = 2 * MAX_HEADER_LIST as usize;

/// Stream ids are chosen by the client and used as they are: no hashing.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // odd ids: spread them over the table's low bits
        self.0 = u64::from(n >> 1);
    }
}

/// Where a stream's answer stands.
#[derive(Debug)]
pub(super) enum Answer {
    /// No final head sent yet; a head the pipeline writes as HTTP/1.1
    /// collects in `written` until it is whole.
    Head { written: Vec<u8> },
    /// The head is out; `left` is what a stated length still expects,
    /// `None` when the pipeline ends the body.
    Body { left: Option<u64> },
    /// `END_STREAM` sent, or the stream reset.
    Over,
}

/// One open stream.
#[derive(Debug)]
pub(super) struct Slot {
    /// Body bytes received and not yet read by the pipeline.
    recv: BytesMut,
    /// The client ended its side (`END_STREAM`).
    recv_end: bool,
    /// What the client may still send on the stream.
    recv_window: i64,
    /// Bytes read by the pipeline not yet given back by WINDOW_UPDATE.
    recv_unacked: u32,
    /// What the declared `content-length` still expects.
    recv_left: Option<u64>,
    reader: Option<Waker>,
    /// What the stream may still send.
    send_window: i64,
    writer: Option<Waker>,
    /// Reset, by the client or by the frontend.
    pub(super) reset: bool,
    watcher: Option<Waker>,
    pub(super) answer: Answer,
}

impl Slot {
    fn wake(&mut self) {
        for w in [self.reader.take(), self.writer.take(), self.watcher.take()]
            .into_iter()
            .flatten()
        {
            w.wake();
        }
    }
}

/// Keeps `cx`'s waker in `slot` (not cloned again when it is the one kept
/// already: a stream's future polls its reset watch at every wake).
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// A stream the client opened, for the connection's task to serve.
#[derive(Debug)]
pub(super) struct Opened {
    pub(super) id: u32,
    /// Its request, written as an HTTP/1.1 head.
    pub(super) head: Vec<u8>,
    /// That head's parts, as the writer placed them.
    pub(super) parsed: RequestHead,
    pub(super) request: Request,
}

/// A header block arriving in pieces.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// An HTTP/2 connection's state (see the module's description).
pub(super) struct Conn {
    /// Frames for the client, in order.
    pub(super) out: Vec<u8>,
    streams: HashMap<u32, Slot, BuildHasherDefault<IdHasher>>,
    decoder: hpack::Decoder,
    pub(super) encoder: hpack::Encoder,
    writer: RequestWriter,
    block: Option<Block>,
    /// The client's preface and first SETTINGS arrived.
    started: bool,
    /// The highest stream id the client used.
    last_id: u32,
    /// What all streams together may still send.
    send_window: i64,
    /// What the client may still send on all streams together.
    recv_window: i64,
    recv_unacked: u32,
    /// A new stream's send window (the client's `INITIAL_WINDOW_SIZE`).
    peer_window: u32,
    pub(super) peer_max_frame: u32,
    /// Streams opened by the client, and those it reset or opened past
    /// the limit (for the flood check).
    pub(super) opened: usize,
    pub(super) resets: usize,
    /// GOAWAY sent: no further stream is served.
    pub(super) going_away: bool,
    /// The client sent GOAWAY.
    pub(super) peer_gone: bool,
    /// Streams waiting for `out` to drain or for the connection's window.
    waiting: Vec<Waker>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("streams", &self.streams.len())
            .field("last_id", &self.last_id)
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

fn broken(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, why)
}

impl Conn {
    /// A connection whose settings are in `out`, for the client to read
    /// after its preface.
    pub(super) fn new() -> Conn {
        let mut out = Vec::with_capacity(16 * 1024);
        wire2::write_settings(
            &[
                (setting::MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (setting::MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            ],
            &mut out,
        );
        wire2::write_window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW, &mut out);
        Conn {
            out,
            streams: HashMap::default(),
            decoder: hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE),
            encoder: hpack::Encoder::new(),
            writer: RequestWriter::default(),
            block: None,
            started: false,
            last_id: 0,
            send_window: i64::from(DEFAULT_WINDOW),
            recv_window: i64::from(CONNECTION_WINDOW),
            recv_unacked: 0,
            peer_window: DEFAULT_WINDOW,
            peer_max_frame: DEFAULT_MAX_FRAME,
            opened: 0,
            resets: 0,
            going_away: false,
            peer_gone: false,
            waiting: Vec::new(),
        }
    }

    /// Whether the client's preface is in.
    pub(super) fn started(&self) -> bool {
        self.started
    }

    /// Streams open.
    pub(super) fn open(&self) -> usize {
        self.streams.len()
    }

    /// Whether more of the client's frames may be read now.
    pub(super) fn reading(&self) -> bool {
        self.out.len() < OUT_LIMIT
    }

    /// `out` was written: streams waiting for room go on.
    pub(super) fn drained(&mut self) {
        for w in self.waiting.drain(..) {
            w.wake();
        }
    }

    /// Ends the connection for `code`: GOAWAY naming the last stream seen.
    pub(super) fn fail(&mut self, code: ErrorCode) {
        if !self.going_away || code != ErrorCode::NO_ERROR {
            wire2::write_goaway(self.last_id, code, &mut self.out);
        }
        self.going_away = true;
    }

    /// Takes the whole frames at the start of `buf` (advancing it past
    /// them); streams they open are added to `opened`. An error is the
    /// connection's, to [`Conn::fail`] with.
    pub(super) fn receive(
        &mut self,
        buf: &mut BytesMut,
        opened: &mut Vec<Opened>,
    ) -> Result<(), ErrorCode> {
        if !self.started {
            if buf.len() < wire2::PREFACE.len() + FRAME_HEAD {
                return if wire2::PREFACE.starts_with(&buf[..buf.len().min(24)]) {
                    Ok(())
                } else {
                    Err(ErrorCode::PROTOCOL_ERROR)
                };
            }
            if buf[..24] != wire2::PREFACE[..] || buf[24 + 3] != kind::SETTINGS {
                return Err(ErrorCode::PROTOCOL_ERROR);
            }
            buf.advance(24);
            self.started = true;
        }
        while buf.len() >= FRAME_HEAD && self.reading() {
            let head = FrameHead::parse(buf[..FRAME_HEAD].try_into().unwrap_or(&[0; 9]));
            if head.len > DEFAULT_MAX_FRAME {
                return Err(ErrorCode::FRAME_SIZE_ERROR);
            }
            let end = FRAME_HEAD + head.len as usize;
            if buf.len() < end {
                break;
            }
            let payload = &buf[FRAME_HEAD..end];
            let result = self.frame(&head, payload, opened);
            buf.advance(end);
            result?;
        }
        Ok(())
    }

    fn frame(
        &mut self,
        head: &FrameHead,
        payload: &[u8],
        opened: &mut Vec<Opened>,
    ) -> Result<(), ErrorCode> {
        if let Some(block) = &mut self.block {
            // a header block in pieces: nothing may come between them
            if head.kind != kind::CONTINUATION || head.stream != block.stream {
                return Err(ErrorCode::PROTOCOL_ERROR);
            }
            if block.bytes.len() + payload.len() > MAX_BLOCK {
                return Err(ErrorCode::ENHANCE_YOUR_CALM);
            }
            block.bytes.extend_from_slice(payload);
            if head.has(flag::END_HEADERS) {
                let block = self.block.take().unwrap_or_else(|| unreachable!());
                return self.header_block(block.stream, &block.bytes, block.end_stream, opened);
            }
            return Ok(());
        }
        match head.kind {
            kind::DATA => self.data(head, payload),
            kind::HEADERS => {
                if head.stream.is_multiple_of(2) {
                    return Err(ErrorCode::PROTOCOL_ERROR);
                }
                let fragment = &payload[wire2::headers_payload(head, payload)?];
                let end_stream = head.has(flag::END_STREAM);
                if head.has(flag::END_HEADERS) {
                    return self.header_block(head.stream, fragment, end_stream, opened);
                }
                self.block = Some(Block {
                    stream: head.stream,
                    end_stream,
                    bytes: fragment.to_vec(),
                });
                Ok(())
            }
            kind::PRIORITY => match (head.stream, head.len) {
                (0, _) => Err(ErrorCode::PROTOCOL_ERROR),
                (_, 5) => Ok(()),
                _ => Err(ErrorCode::FRAME_SIZE_ERROR),
            },
            kind::RST_STREAM => {
                if head.stream == 0 || head.stream > self.last_id {
                    return Err(ErrorCode::PROTOCOL_ERROR);
                }
                if head.len != 4 {
                    return Err(ErrorCode::FRAME_SIZE_ERROR);
                }
                if let Some(slot) = self.streams.get_mut(&head.stream)
                    && !slot.reset
                {
                    slot.reset = true;
                    slot.wake();
                    self.resets += 1;
                }
                Ok(())
            }
            kind::SETTINGS => self.settings(head, payload),
            kind::PING => {
                if head.stream != 0 {
                    return Err(ErrorCode::PROTOCOL_ERROR);
                }
                let data: &[u8; 8] = payload
                    .try_into()
                    .map_err(|_| ErrorCode::FRAME_SIZE_ERROR)?;
                if !head.has(flag::ACK) {
                    wire2::write_ping_ack(data, &mut self.out);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(ErrorCode::PROTOCOL_ERROR);
                }
                self.peer_gone = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.window_update(head, payload),
            // a client never pushes, and CONTINUATION comes only after HEADERS
            kind::PUSH_PROMISE | kind::CONTINUATION => Err(ErrorCode::PROTOCOL_ERROR),
            // unknown frame types are ignored (RFC 9113 §5.5)
            _ => Ok(()),
        }
    }

    fn settings(&mut self, head: &FrameHead, payload: &[u8]) -> Result<(), ErrorCode> {
        if head.stream != 0 {
            return Err(ErrorCode::PROTOCOL_ERROR);
        }
        if head.has(flag::ACK) {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(ErrorCode::FRAME_SIZE_ERROR)
            };
        }
        let entries = wire2::settings(payload).ok_or(ErrorCode::FRAME_SIZE_ERROR)?;
        for (id, value) in entries {
            match id {
                setting::HEADER_TABLE_SIZE => self.encoder.set_max_table_size(value as usize),
                setting::ENABLE_PUSH if value > 1 => return Err(ErrorCode::PROTOCOL_ERROR),
                setting::INITIAL_WINDOW_SIZE => {
                    if value > MAX_WINDOW {
                        return Err(ErrorCode::FLOW_CONTROL_ERROR);
                    }
                    let delta = i64::from(value) - i64::from(self.peer_window);
                    self.peer_window = value;
                    for slot in self.streams.values_mut() {
                        slot.send_window += delta;
                        if slot.send_window > i64::from(MAX_WINDOW) {
                            return Err(ErrorCode::FLOW_CONTROL_ERROR);
                        }
                        if delta > 0
                            && let Some(w) = slot.writer.take()
                        {
                            w.wake();
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(DEFAULT_MAX_FRAME..=wire2::MAX_MAX_FRAME).contains(&value) {
                        return Err(ErrorCode::PROTOCOL_ERROR);
                    }
                    self.peer_max_frame = value;
                }
                _ => {}
            }
        }
        wire2::write_settings_ack(&mut self.out);
        Ok(())
    }

    fn window_update(&mut self, head: &FrameHead, payload: &[u8]) -> Result<(), ErrorCode> {
        if head.len != 4 {
            return Err(ErrorCode::FRAME_SIZE_ERROR);
        }
        let increment = i64::from(wire2::u31(payload).unwrap_or(0));
        if head.stream == 0 {
            if increment == 0 {
                return Err(ErrorCode::PROTOCOL_ERROR);
            }
            self.send_window += increment;
            if self.send_window > i64::from(MAX_WINDOW) {
                return Err(ErrorCode::FLOW_CONTROL_ERROR);
            }
            self.drained();
            return Ok(());
        }
        if head.stream > self.last_id {
            return Err(ErrorCode::PROTOCOL_ERROR);
        }
        let Some(slot) = self.streams.get_mut(&head.stream) else {
            // a stream that ended: updates in flight are expected
            return Ok(());
        };
        slot.send_window += increment;
        if increment == 0 || slot.send_window > i64::from(MAX_WINDOW) {
            let code = if increment == 0 {
                ErrorCode::PROTOCOL_ERROR
            } else {
                ErrorCode::FLOW_CONTROL_ERROR
            };
            self.reset_stream(head.stream, code);
        } else if let Some(w) = slot.writer.take() {
            w.wake();
        }
        Ok(())
    }

    fn data(&mut self, head: &FrameHead, payload: &[u8]) -> Result<(), ErrorCode> {
        if head.stream == 0 || head.stream > self.last_id {
            return Err(ErrorCode::PROTOCOL_ERROR);
        }
        let size = i64::from(head.len);
        self.recv_window -= size;
        if self.recv_window < 0 {
            return Err(ErrorCode::FLOW_CONTROL_ERROR);
        }
        let range = wire2::data_payload(head, payload)?;
        let data = &payload[range];
        // padding is taken at once; what a stream cannot take is too
        let mut taken = head.len as usize - data.len();
        let id = head.stream;
        let mut stream_error = None;
        match self.streams.get_mut(&id) {
            Some(slot) if !slot.reset && !slot.recv_end => {
                slot.recv_window -= size;
                let over_length = match &mut slot.recv_left {
                    Some(left) => match left.checked_sub(data.len() as u64) {
                        Some(l) => {
                            *left = l;
                            false
                        }
                        None => true,
                    },
                    None => false,
                };
                if slot.recv_window < 0 {
                    stream_error = Some(ErrorCode::FLOW_CONTROL_ERROR);
                } else if over_length
                    || (head.has(flag::END_STREAM) && slot.recv_left.is_some_and(|l| l > 0))
                {
                    // more or less body than `content-length` said
                    stream_error = Some(ErrorCode::PROTOCOL_ERROR);
                } else {
                    slot.recv.extend_from_slice(data);
                    slot.recv_unacked += (head.len as usize - data.len()) as u32;
                    if head.has(flag::END_STREAM) {
                        slot.recv_end = true;
                    }
                    if let Some(w) = slot.reader.take() {
                        w.wake();
                    }
                }
                if stream_error.is_some() {
                    taken = head.len as usize;
                }
            }
            Some(slot) if slot.recv_end && !slot.reset => {
                stream_error = Some(ErrorCode::STREAM_CLOSED);
                taken = head.len as usize;
            }
            // a stream that ended or was reset: frames in flight are expected
            _ => taken = head.len as usize,
        }
        if let Some(code) = stream_error {
            self.reset_stream(id, code);
        }
        self.release_connection(taken);
        Ok(())
    }

    /// Gives `n` bytes of the connection's window back once enough are
    /// together.
    fn release_connection(&mut self, n: usize) {
        self.recv_unacked += n as u32;
        if self.recv_unacked >= CONNECTION_WINDOW / 2 {
            wire2::write_window_update(0, self.recv_unacked, &mut self.out);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    fn header_block(
        &mut self,
        id: u32,
        block: &[u8],
        end_stream: bool,
        opened: &mut Vec<Opened>,
    ) -> Result<(), ErrorCode> {
        if id <= self.last_id {
            // trailers of an open stream, or a stream already closed
            let _ = self
                .decoder
                .decode(block, MAX_HEADER_LIST as usize, |_, _| {})
                .map_err(|_| ErrorCode::COMPRESSION_ERROR)?;
            let malformed = match self.streams.get_mut(&id) {
                Some(slot) if !slot.reset && !slot.recv_end && end_stream => {
                    // trailers are not passed on: the body ends (short of
                    // a declared length, it is malformed)
                    slot.recv_end = true;
                    if let Some(w) = slot.reader.take() {
                        w.wake();
                    }
                    slot.recv_left.is_some_and(|l| l > 0)
                }
                // a second head that does not end the stream, or one after
                // the end: that stream is reset, the others go on
                Some(slot) => !slot.reset,
                // a stream that ended or was reset here: frames the client
                // sent before it knew are ignored (RFC 9113 §5.1), once
                // decoded to keep the table in step
                None => false,
            };
            if malformed {
                self.reset_stream(id, ErrorCode::PROTOCOL_ERROR);
            }
            return Ok(());
        }
        self.last_id = id;
        let mut head = crate::frontend::wire::take_buffer();
        self.writer.clear();
        let writer = &mut self.writer;
        let decoded = self
            .decoder
            .decode(block, MAX_HEADER_LIST as usize, |name, value| {
                writer.field(name, value, &mut head)
            })
            .map_err(|_| ErrorCode::COMPRESSION_ERROR)?;
        if self.going_away {
            // after GOAWAY no stream is served (the client may retry it)
            crate::frontend::wire::give_buffer(head);
            return Ok(());
        }
        self.opened += 1;
        if self.streams.len() >= MAX_STREAMS as usize {
            // past the limit it was told: a client that keeps doing so
            // (opening streams and dropping them at once, as a flood does)
            // is counted as resetting them
            self.resets += 1;
            crate::frontend::wire::give_buffer(head);
            wire2::write_rst(id, ErrorCode::REFUSED_STREAM, &mut self.out);
            return Ok(());
        }
        if decoded.oversized {
            crate::frontend::wire::give_buffer(head);
            self.refuse_too_large(id, end_stream);
            return Ok(());
        }
        let request = match self.writer.finish(end_stream, &mut head) {
            Ok(request) => request,
            Err(e) => {
                tracing::debug!(stream = id, error = %e, "HTTP/2 request refused");
                crate::frontend::wire::give_buffer(head);
                wire2::write_rst(id, ErrorCode::PROTOCOL_ERROR, &mut self.out);
                return Ok(());
            }
        };
        self.streams.insert(
            id,
            Slot {
                recv: BytesMut::new(),
                recv_end: end_stream,
                recv_window: i64::from(STREAM_WINDOW),
                recv_unacked: 0,
                recv_left: request.length,
                reader: None,
                send_window: i64::from(self.peer_window),
                writer: None,
                reset: false,
                watcher: None,
                answer: Answer::Head {
                    written: Vec::new(),
                },
            },
        );
        if end_stream && request.length.is_some_and(|l| l > 0) {
            // a length declared and no body sent
            self.reset_stream(id, ErrorCode::PROTOCOL_ERROR);
        }
        let parsed = self
            .writer
            .take_head(crate::frontend::pipeline::spare_fields());
        opened.push(Opened {
            id,
            head,
            parsed,
            request,
        });
        Ok(())
    }

    /// A header list over the limit: 431, and the stream ends.
    fn refuse_too_large(&mut self, id: u32, end_stream: bool) {
        let start = wire2::begin_headers(&mut self.out);
        self.encoder.status(431, &mut self.out);
        self.encoder.field(b"content-length", b"0", &mut self.out);
        wire2::end_headers(&mut self.out, start, id, true, self.peer_max_frame);
        if !end_stream {
            wire2::write_rst(id, ErrorCode::NO_ERROR, &mut self.out);
        }
    }

    /// Resets an open stream from this side.
    pub(super) fn reset_stream(&mut self, id: u32, code: ErrorCode) {
        if let Some(slot) = self.streams.get_mut(&id)
            && !slot.reset
        {
            slot.reset = true;
            slot.answer = Answer::Over;
            slot.wake();
            wire2::write_rst(id, code, &mut self.out);
        }
    }

    /// The stream's future is done with it: it is forgotten, its unread
    /// body given back to the connection's window. A stream whose client
    /// is still sending its body when the answer is whole is told to stop
    /// (RST_STREAM with NO_ERROR, RFC 9113 §8.1).
    pub(super) fn close(&mut self, id: u32) {
        let Some(slot) = self.streams.remove(&id) else {
            return;
        };
        if !slot.reset {
            match slot.answer {
                Answer::Over if !slot.recv_end => {
                    wire2::write_rst(id, ErrorCode::NO_ERROR, &mut self.out)
                }
                Answer::Over => {}
                _ => wire2::write_rst(id, ErrorCode::INTERNAL_ERROR, &mut self.out),
            }
        }
        // what the pipeline never read is the connection's again
        self.release_connection(slot.recv.len());
    }

    pub(super) fn slot(&mut self, id: u32) -> io::Result<&mut Slot> {
        match self.streams.get_mut(&id) {
            Some(slot) if !slot.reset => Ok(slot),
            _ => Err(broken("the client reset the stream")),
        }
    }

    /// Waits for the stream to be reset (by the client, or by the frontend
    /// for its client's error).
    pub(super) fn poll_reset(&mut self, id: u32, cx: &mut Context<'_>) -> Poll<()> {
        match self.streams.get_mut(&id) {
            Some(slot) if !slot.reset => {
                register(&mut slot.watcher, cx);
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Reads up to `max` body bytes of stream `id` into `sink`; `Ok(0)`
    /// when the body has ended.
    pub(super) fn read(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        max: usize,
        sink: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<usize>> {
        let slot = self.slot(id)?;
        if slot.recv.is_empty() {
            if slot.recv_end {
                return Poll::Ready(Ok(0));
            }
            register(&mut slot.reader, cx);
            return Poll::Pending;
        }
        let n = slot.recv.len().min(max);
        sink(&slot.recv[..n]);
        slot.recv.advance(n);
        slot.recv_unacked += n as u32;
        let update = (!slot.recv_end && slot.recv_unacked >= STREAM_WINDOW / 2)
            .then(|| std::mem::take(&mut slot.recv_unacked));
        if let Some(increment) = update {
            slot.recv_window += i64::from(increment);
            wire2::write_window_update(id, increment, &mut self.out);
        }
        self.release_connection(n);
        Poll::Ready(Ok(n))
    }

    /// Sends up to `data.len()` answer body bytes of stream `id` as far as
    /// the windows and the room in `out` let them, ending the stream with
    /// the last when `end` says so; returns how many went.
    pub(super) fn send(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        data: &[u8],
        end: bool,
    ) -> Poll<io::Result<usize>> {
        if self.out.len() >= OUT_LIMIT || self.send_window <= 0 {
            self.waiting.push(cx.waker().clone());
            return Poll::Pending;
        }
        let max_frame = self.peer_max_frame as usize;
        let conn_window = self.send_window;
        let slot = self.slot(id)?;
        if slot.send_window <= 0 {
            register(&mut slot.writer, cx);
            return Poll::Pending;
        }
        let n = data
            .len()
            .min(usize::try_from(slot.send_window.min(conn_window)).unwrap_or(0))
            .min(max_frame);
        let last = end && n == data.len();
        slot.send_window -= n as i64;
        if last {
            slot.answer = Answer::Over;
        }
        self.send_window -= n as i64;
        wire2::write_data_head(id, n as u32, last, &mut self.out);
        self.out.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    /// Ends stream `id`'s answer with an empty DATA frame.
    pub(super) fn end(&mut self, id: u32) {
        if let Ok(slot) = self.slot(id) {
            slot.answer = Answer::Over;
            wire2::write_data_head(id, 0, true, &mut self.out);
        }
    }
}

#[cfg(test)]
mod tests;
