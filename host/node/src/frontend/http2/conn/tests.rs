//! The connection's state fed frames as a client writes them (header
//! blocks of plain literals, which every HPACK decoder reads), and what it
//! owes the client read back frame by frame.

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::BytesMut;
use gearhost_http::h2::{self as wire2, ErrorCode, FrameHead, PREFACE, flag, kind, setting};

use super::{Conn, OUT_LIMIT, Opened};
use crate::frontend::http2::{MAX_STREAMS, STREAM_WINDOW};

/// A waker that counts its wakes.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn waker() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count::default());
    (count.clone(), Waker::from(count))
}

/// A header block of literal fields without indexing and without Huffman
/// coding (names and values under 127 bytes).
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0x00);
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    FrameHead {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    }
    .write(&mut f);
    f.extend_from_slice(payload);
    f
}

fn get(path: &str) -> Vec<u8> {
    block(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "app-ns.gears.test"),
        (":path", path),
    ])
}

fn post(length: Option<&str>) -> Vec<u8> {
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "h.test"),
        (":path", "/up"),
    ];
    if let Some(l) = length {
        fields.push(("content-length", l));
    }
    block(&fields)
}

/// A connection that took a client's preface and empty SETTINGS; what it
/// owes the client is cleared.
fn started() -> Conn {
    let mut conn = Conn::new();
    let mut buf = BytesMut::from(&PREFACE[..]);
    buf.extend_from_slice(&frame(kind::SETTINGS, 0, 0, &[]));
    let mut opened = Vec::new();
    conn.receive(&mut buf, &mut opened).expect("a preface");
    assert!(buf.is_empty() && opened.is_empty());
    let out = frames(&conn.out);
    assert_eq!(out[0].0.kind, kind::SETTINGS);
    assert_eq!(out[1].0.kind, kind::WINDOW_UPDATE);
    assert_eq!((out[2].0.kind, out[2].0.flags), (kind::SETTINGS, flag::ACK));
    conn.out.clear();
    conn
}

fn feed(conn: &mut Conn, bytes: &[u8]) -> (Result<(), ErrorCode>, Vec<Opened>) {
    let mut buf = BytesMut::from(bytes);
    let mut opened = Vec::new();
    let r = conn.receive(&mut buf, &mut opened);
    (r, opened)
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

/// The RST_STREAM frames in `out`: stream and code.
fn resets(out: &[u8]) -> Vec<(u32, ErrorCode)> {
    frames(out)
        .into_iter()
        .filter(|(h, _)| h.kind == kind::RST_STREAM)
        .map(|(h, p)| {
            (
                h.stream,
                ErrorCode(u32::from_be_bytes(p[..4].try_into().expect("a code"))),
            )
        })
        .collect()
}

#[test]
fn a_request_becomes_a_head_for_the_pipeline() {
    let mut conn = started();
    let (r, opened) = feed(
        &mut conn,
        &frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &get("/a?b"),
        ),
    );
    r.expect("a request");
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].id, 1);
    assert_eq!(
        String::from_utf8_lossy(&opened[0].head),
        "GET /a?b HTTP/1.1\r\nhost: app-ns.gears.test\r\n\r\n"
    );
    assert_eq!(conn.open(), 1);
    // a block in pieces reads the same
    let b = get("/c");
    let (first, rest) = b.split_at(10);
    let mut bytes = frame(kind::HEADERS, flag::END_STREAM, 3, first);
    bytes.extend(frame(kind::CONTINUATION, flag::END_HEADERS, 3, rest));
    let (r, opened) = feed(&mut conn, &bytes);
    r.expect("a request in pieces");
    assert!(String::from_utf8_lossy(&opened[0].head).starts_with("GET /c HTTP/1.1\r\n"));
}

#[test]
fn a_broken_preface_or_frame_ends_the_connection_with_its_error() {
    let mut conn = Conn::new();
    assert_eq!(
        feed(&mut conn, b"GET / HTTP/1.1\r\n\r\n").0,
        Err(ErrorCode::PROTOCOL_ERROR)
    );
    let mut conn = Conn::new();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(kind::PING, 0, 0, &[0; 8]));
    assert_eq!(
        feed(&mut conn, &bytes).0,
        Err(ErrorCode::PROTOCOL_ERROR),
        "SETTINGS comes first"
    );

    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (frame(kind::DATA, 0, 0, b"x"), ErrorCode::PROTOCOL_ERROR),
        (frame(kind::DATA, 0, 7, b"x"), ErrorCode::PROTOCOL_ERROR),
        (
            frame(kind::HEADERS, flag::END_HEADERS, 2, &get("/")),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            frame(kind::PING, 0, 0, &[0; 7]),
            ErrorCode::FRAME_SIZE_ERROR,
        ),
        (
            frame(kind::SETTINGS, 0, 0, &[0; 5]),
            ErrorCode::FRAME_SIZE_ERROR,
        ),
        (
            frame(kind::SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            ErrorCode::FLOW_CONTROL_ERROR,
        ),
        (
            frame(kind::SETTINGS, 0, 0, &[0, 5, 0, 0, 0, 1]),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 0, 0]),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            frame(kind::WINDOW_UPDATE, 0, 0, &[0x7f, 0xff, 0xff, 0xff]),
            ErrorCode::FLOW_CONTROL_ERROR,
        ),
        (
            frame(kind::CONTINUATION, flag::END_HEADERS, 1, b""),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            frame(kind::PUSH_PROMISE, 0, 1, &[0; 4]),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            frame(kind::RST_STREAM, 0, 9, &[0; 4]),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            frame(
                kind::HEADERS,
                flag::END_HEADERS,
                1,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f],
            ),
            ErrorCode::COMPRESSION_ERROR,
        ),
        // a frame larger than the frontend's SETTINGS_MAX_FRAME_SIZE
        (
            [
                &[0, 0x40, 1, kind::DATA, 0, 0, 0, 0, 1][..],
                &[0; 16_385][..],
            ]
            .concat(),
            ErrorCode::FRAME_SIZE_ERROR,
        ),
    ];
    for (i, (bytes, code)) in cases.into_iter().enumerate() {
        let mut conn = started();
        assert_eq!(feed(&mut conn, &bytes).0, Err(code), "case {i}");
    }
}

#[test]
fn a_header_block_may_not_be_interrupted_or_grow_without_end() {
    let mut conn = started();
    let mut bytes = frame(kind::HEADERS, 0, 1, &get("/")[..5]);
    bytes.extend(frame(kind::PING, 0, 0, &[0; 8]));
    assert_eq!(feed(&mut conn, &bytes).0, Err(ErrorCode::PROTOCOL_ERROR));
    let mut conn = started();
    let mut bytes = frame(kind::HEADERS, 0, 1, &get("/")[..5]);
    for _ in 0..20 {
        bytes.extend(frame(kind::CONTINUATION, 0, 1, &[0x40; 16_000]));
    }
    assert_eq!(feed(&mut conn, &bytes).0, Err(ErrorCode::ENHANCE_YOUR_CALM));
}

#[test]
fn malformed_requests_and_streams_past_the_limit_are_reset_and_not_served() {
    let mut conn = started();
    let upper = block(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/"),
        ("X-Up", "1"),
    ]);
    let (r, opened) = feed(
        &mut conn,
        &frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &upper,
        ),
    );
    r.expect("a stream error only");
    assert!(opened.is_empty());
    assert_eq!(resets(&conn.out), [(1, ErrorCode::PROTOCOL_ERROR)]);
    conn.out.clear();
    let mut bytes = Vec::new();
    for i in 0..=MAX_STREAMS {
        bytes.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            3 + 2 * i,
            &get("/"),
        ));
    }
    let (r, opened) = feed(&mut conn, &bytes);
    r.expect("streams");
    assert_eq!(opened.len(), MAX_STREAMS as usize);
    assert_eq!(
        resets(&conn.out),
        [(3 + 2 * MAX_STREAMS, ErrorCode::REFUSED_STREAM)]
    );
    // a stream that ended here (stream 1 was refused): what the client sent
    // on it before it knew is ignored, the connection goes on
    conn.out.clear();
    let (r, opened) = feed(
        &mut conn,
        &frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &get("/"),
        ),
    );
    r.expect("ignored");
    assert!(opened.is_empty() && conn.out.is_empty());
}

#[test]
fn trailers_end_a_body_and_a_second_head_resets_only_its_stream() {
    let (_, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut conn = started();
    let (r, opened) = feed(
        &mut conn,
        &[
            frame(kind::HEADERS, flag::END_HEADERS, 1, &post(None)),
            frame(kind::DATA, 0, 1, b"abc"),
            frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                1,
                &block(&[("x-sum", "1")]),
            ),
            frame(kind::HEADERS, flag::END_HEADERS, 3, &post(None)),
            frame(
                kind::HEADERS,
                flag::END_HEADERS,
                3,
                &block(&[("x-again", "1")]),
            ),
        ]
        .concat(),
    );
    r.expect("stream errors only");
    assert_eq!(opened.len(), 2);
    assert!(matches!(
        conn.read(1, &mut cx, 100, |_| {}),
        Poll::Ready(Ok(3))
    ));
    assert!(
        matches!(conn.read(1, &mut cx, 100, |_| {}), Poll::Ready(Ok(0))),
        "the trailers end the body"
    );
    assert_eq!(resets(&conn.out), [(3, ErrorCode::PROTOCOL_ERROR)]);
    assert!(conn.poll_reset(1, &mut cx).is_pending());
}

#[test]
fn a_body_is_read_within_its_windows_and_its_declared_length() {
    let (_, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut conn = started();
    let (r, _) = feed(
        &mut conn,
        &frame(kind::HEADERS, flag::END_HEADERS, 1, &post(Some("5"))),
    );
    r.expect("a request");
    assert!(
        conn.read(1, &mut cx, 100, |_| {}).is_pending(),
        "no body yet"
    );
    let (r, _) = feed(&mut conn, &frame(kind::DATA, flag::END_STREAM, 1, b"hello"));
    r.expect("a body");
    let mut got = Vec::new();
    assert!(matches!(
        conn.read(1, &mut cx, 3, |d| got.extend_from_slice(d)),
        Poll::Ready(Ok(3))
    ));
    assert!(matches!(
        conn.read(1, &mut cx, 100, |d| got.extend_from_slice(d)),
        Poll::Ready(Ok(2))
    ));
    assert!(
        matches!(conn.read(1, &mut cx, 100, |_| {}), Poll::Ready(Ok(0))),
        "the end"
    );
    assert_eq!(got, b"hello");

    // more than the length said: the stream is reset
    let (r, _) = feed(
        &mut conn,
        &frame(kind::HEADERS, flag::END_HEADERS, 3, &post(Some("2"))),
    );
    r.expect("a request");
    conn.out.clear();
    let (r, _) = feed(&mut conn, &frame(kind::DATA, 0, 3, b"abc"));
    r.expect("a stream error only");
    assert_eq!(resets(&conn.out), [(3, ErrorCode::PROTOCOL_ERROR)]);
    assert!(matches!(
        conn.read(3, &mut cx, 100, |_| {}),
        Poll::Ready(Err(_))
    ));

    // past the stream's window: reset; what it held goes back to the connection
    let (r, _) = feed(
        &mut conn,
        &frame(kind::HEADERS, flag::END_HEADERS, 5, &post(None)),
    );
    r.expect("a request");
    conn.out.clear();
    let mut bytes = Vec::new();
    let chunk = vec![b'x'; 16_384];
    for _ in 0..(STREAM_WINDOW as usize / chunk.len()) {
        bytes.extend(frame(kind::DATA, 0, 5, &chunk));
    }
    let (r, _) = feed(&mut conn, &bytes);
    r.expect("within the window");
    assert!(resets(&conn.out).is_empty());
    // half the window read: it opens again
    let mut n = 0;
    while n < STREAM_WINDOW as usize / 2 {
        let Poll::Ready(Ok(k)) = conn.read(5, &mut cx, 16_384, |_| {}) else {
            panic!("body bytes")
        };
        n += k;
    }
    let updates: Vec<_> = frames(&conn.out)
        .into_iter()
        .filter(|(h, _)| h.kind == kind::WINDOW_UPDATE)
        .collect();
    assert_eq!(updates.len(), 1);
    assert_eq!(
        (updates[0].0.stream, wire2::u31(&updates[0].1)),
        (5, Some(STREAM_WINDOW / 2))
    );
    conn.out.clear();
    let (r, _) = feed(
        &mut conn,
        &vec![frame(kind::DATA, 0, 5, &chunk); STREAM_WINDOW as usize / 2 / chunk.len() + 1]
            .concat(),
    );
    r.expect("a stream error only");
    assert_eq!(resets(&conn.out), [(5, ErrorCode::FLOW_CONTROL_ERROR)]);
}

#[test]
fn answer_data_waits_for_the_clients_window_and_goes_when_it_opens() {
    let (woken, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut conn = started();
    // the client allows 10 bytes per stream
    let (r, _) = feed(
        &mut conn,
        &[
            frame(
                kind::SETTINGS,
                0,
                0,
                &[0, setting::INITIAL_WINDOW_SIZE as u8, 0, 0, 0, 10],
            ),
            frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                1,
                &get("/"),
            ),
        ]
        .concat(),
    );
    r.expect("a request");
    conn.out.clear();
    let data = [b'a'; 25];
    assert!(matches!(
        conn.send(1, &mut cx, &data, true),
        Poll::Ready(Ok(10))
    ));
    assert!(conn.send(1, &mut cx, &data[10..], true).is_pending());
    let (r, _) = feed(
        &mut conn,
        &frame(kind::WINDOW_UPDATE, 0, 1, &[0, 0, 0, 100]),
    );
    r.expect("an update");
    assert_eq!(
        woken.0.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the writer is woken"
    );
    assert!(matches!(
        conn.send(1, &mut cx, &data[10..], true),
        Poll::Ready(Ok(15))
    ));
    let sent = frames(&conn.out);
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].0.len, sent[0].0.flags), (10, 0));
    assert_eq!((sent[1].0.len, sent[1].0.flags), (15, flag::END_STREAM));
    assert!(matches!(
        conn.slot(1).expect("open").answer,
        super::Answer::Over
    ));
    conn.close(1);
    assert_eq!(conn.open(), 0);
    assert!(
        resets(&conn.out).is_empty(),
        "a whole answer to a whole request ends without a reset"
    );
}

#[test]
fn a_reset_reaches_the_stream_and_an_unfinished_answer_is_reset_when_the_stream_ends() {
    let (woken, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut conn = started();
    let (r, _) = feed(
        &mut conn,
        &[
            frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                1,
                &get("/"),
            ),
            frame(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                3,
                &get("/"),
            ),
        ]
        .concat(),
    );
    r.expect("requests");
    assert!(conn.poll_reset(1, &mut cx).is_pending());
    let (r, _) = feed(&mut conn, &frame(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]));
    r.expect("a reset");
    assert_eq!(woken.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(conn.poll_reset(1, &mut cx).is_ready());
    assert_eq!(conn.resets, 1);
    conn.out.clear();
    conn.close(1);
    conn.close(3);
    assert_eq!(
        resets(&conn.out),
        [(3, ErrorCode::INTERNAL_ERROR)],
        "only the unfinished answer"
    );
}

#[test]
fn a_client_that_reads_nothing_is_read_no_further() {
    let mut conn = started();
    let ping = frame(kind::PING, 0, 0, b"12345678");
    let mut bytes = Vec::new();
    let n = OUT_LIMIT / 17 + 100;
    for _ in 0..n {
        bytes.extend_from_slice(&ping);
    }
    let mut buf = BytesMut::from(&bytes[..]);
    conn.receive(&mut buf, &mut Vec::new()).expect("pings");
    assert!(!buf.is_empty(), "frames were left unread");
    assert!(!conn.reading());
    assert!(conn.out.len() < OUT_LIMIT + 64);
    let acks = frames(&conn.out);
    assert!(
        acks.iter()
            .all(|(h, p)| h.kind == kind::PING && h.has(flag::ACK) && p == b"12345678")
    );
}
