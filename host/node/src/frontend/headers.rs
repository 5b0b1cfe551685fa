//! Header policy: what the frontend accepts in a request head, what of it
//! reaches the gear, and what of the gear's answer reaches the client.
//!
//! - Limits: request heads of [`MAX_HEAD`] bytes (and
//!   `gearhost_http::head::MAX_REQUEST_HEADERS` fields), answer heads of four
//!   times that.
//! - Towards the gear (`gearhost_http::request::write_request_head`): the
//!   head is written anew in origin form with one `Host`, hop-by-hop fields
//!   (`Connection`, those it names, `Keep-Alive`, `TE`, `Trailer`,
//!   `Proxy-*`, `Upgrade` unless upgrading) dropped, any `Forwarded` and
//!   `X-Forwarded-*` the client sent dropped and the frontend's own
//!   `X-Forwarded-For`, `-Host` and `-Proto` set.
//! - Towards the client ([`write_response_head`]): the answer's head is
//!   written anew as HTTP/1.1 with hop-by-hop fields dropped
//!   (`gearhost_http::fields::response_field_passes`), its framing stated by
//!   the frontend, and `connection: close` when the client connection ends
//!   with it.

use http::StatusCode;

use gearhost_http::Framing;
use gearhost_http::fields::{Facts, response_field_passes};
use gearhost_http::head::ResponseHead;
use gearhost_http::request::{BadRequest, Checked};

use super::pages::DRAIN_BYTES;

/// Largest request head (request line and headers) accepted.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Largest answer head read from a gear.
pub(super) const MAX_ANSWER_HEAD: usize = MAX_HEAD * 4;

/// What a request's method means to the frontend.
#[derive(Debug, Clone, Copy)]
pub(super) struct Method {
    /// `HEAD`: the answer has no body.
    pub head: bool,
    /// `CONNECT`: refused, the frontend opens no tunnels.
    pub connect: bool,
    /// Safe to send again on a fresh connection when a pooled one turns out
    /// closed.
    pub idempotent: bool,
}

impl Method {
    pub(super) fn of(method: &[u8]) -> Method {
        const IDEMPOTENT: [&[u8]; 6] = [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"];
        Method {
            head: method == b"HEAD",
            connect: method == b"CONNECT",
            idempotent: IDEMPOTENT.contains(&method),
        }
    }
}

/// Whether the client connection stays open after this request:
/// HTTP/1.1 unless `close`, HTTP/1.0 only when asked.
pub(super) fn client_keeps_alive(minor: u8, f: &Facts) -> bool {
    if minor == 0 {
        f.keep_alive && !f.close
    } else {
        !f.close
    }
}

/// What a request still has to send after its head, were it refused before
/// its body (at most this many bytes are read and dropped).
pub(super) fn unread_body(framing: Framing) -> Option<u64> {
    match framing {
        Framing::Length(0) | Framing::Empty => None,
        Framing::Length(n) => Some(n),
        Framing::Chunked | Framing::Close => Some(DRAIN_BYTES),
    }
}

/// What a refused request still has to send: a body whose framing is known
/// is read and dropped so that the client reads the answer; one framed two
/// ways is not.
pub(super) fn unread_after_refusal(why: BadRequest, f: &Facts) -> Option<u64> {
    let framing_known = !matches!(
        why,
        BadRequest::BadLength
            | BadRequest::BadCoding
            | BadRequest::LengthAndCoding
            | BadRequest::CodingInOldHttp
    );
    match f.content_length {
        _ if !framing_known => None,
        Some(n) if n > 0 => Some(n),
        _ if f.encodings > 0 => Some(DRAIN_BYTES),
        _ => None,
    }
}

/// How the gear's answer to a request is framed.
pub(super) fn answer_framing(status: u16, head_request: bool, rf: &Facts) -> Framing {
    if status == 101 || head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if rf.chunked {
        Framing::Chunked
    } else if rf.other_coding {
        Framing::Close
    } else if let Some(n) = rf.content_length {
        Framing::Length(n)
    } else {
        Framing::Close
    }
}

/// How the client gets an answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct AnswerShape {
    /// The answer's framing.
    pub framing: Framing,
    /// The client is HTTP/1.0 and the answer chunked: it is sent unchunked,
    /// delimited by the close.
    pub decode: bool,
    /// The client connection stays open after the answer.
    pub keep: bool,
    /// The request was `HEAD`.
    pub head_request: bool,
    /// The client's HTTP/1.x minor version.
    pub client_minor: u8,
    /// `Strict-Transport-Security` max-age to add (over TLS, for a gear
    /// that asks for it, unless the gear sent one).
    pub hsts: Option<u64>,
}

/// The fields of the gear's answer head (in `data`, parsed into `head`, its
/// fields' facts `rf`) that the client gets, in order, to `field(name,
/// value)`: the gear's own that pass, then the framing the frontend states,
/// then HSTS (unless the gear sent its own). Both the HTTP/1.1 head
/// ([`write_response_head`]) and an HTTP/2 stream's response are made of
/// these.
pub(super) fn answer_fields(
    data: &[u8],
    head: &ResponseHead,
    rf: &Facts,
    shape: AnswerShape,
    mut field: impl FnMut(&[u8], &[u8]),
) {
    let status = head.status;
    let mut hsts = shape.hsts;
    for (n, v) in &head.headers {
        let name = &data[n.clone()];
        if !response_field_passes(name, data, &rf.connection, status == 101) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"strict-transport-security") {
            // the gear's own policy stands
            hsts = None;
        }
        field(name, &data[v.clone()]);
    }
    let mut digits = itoa::Buffer::new();
    match shape.framing {
        Framing::Chunked if !shape.decode => field(b"transfer-encoding", b"chunked"),
        Framing::Length(n) => field(b"content-length", digits.format(n).as_bytes()),
        Framing::Empty if shape.head_request || status == 304 => {
            if let Some(n) = rf.content_length {
                field(b"content-length", digits.format(n).as_bytes());
            }
        }
        _ => {}
    }
    if let Some(age) = hsts {
        const PREFIX: &[u8] = b"max-age=";
        let age = digits.format(age).as_bytes();
        let mut value = [0u8; PREFIX.len() + 20];
        value[..PREFIX.len()].copy_from_slice(PREFIX);
        value[PREFIX.len()..PREFIX.len() + age.len()].copy_from_slice(age);
        field(
            b"strict-transport-security",
            &value[..PREFIX.len() + age.len()],
        );
    }
}

/// The gear's answer head (in `data`, parsed into `head`, its fields' facts
/// `rf`) as an HTTP/1.1 client gets it, into `out`.
pub(super) fn write_response_head(
    data: &[u8],
    head: &ResponseHead,
    rf: &Facts,
    shape: AnswerShape,
    out: &mut Vec<u8>,
) {
    let status = head.status;
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b' ');
    if head.reason.is_empty() {
        out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
    } else {
        out.extend_from_slice(&data[head.reason.clone()]);
    }
    out.extend_from_slice(b"\r\n");
    answer_fields(data, head, rf, shape, |name, value| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    });
    if status != 101 {
        if !shape.keep {
            out.extend_from_slice(b"connection: close\r\n");
        } else if shape.client_minor == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The request head for the gear, from the client's (see the module's
/// description): `forwarded_for` is the client's address.
pub(super) fn write_request_head(
    data: &[u8],
    head: &gearhost_http::head::RequestHead,
    checked: &Checked,
    forwarded_for: &str,
    secure: bool,
    out: &mut Vec<u8>,
) {
    gearhost_http::request::write_request_head_as(data, head, checked, forwarded_for, secure, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearhost_http::fields::facts;
    use gearhost_http::head::{RequestHead, parse_request, parse_response};
    use gearhost_http::request::check_request;

    /// The head the gear gets for a request, from `peer`.
    fn to_gear(text: &str, peer: &str) -> String {
        let mut head = RequestHead::default();
        assert_eq!(parse_request(text.as_bytes(), &mut head), Ok(true));
        let checked = check_request(text.as_bytes(), &head).expect("a valid request");
        let mut out = Vec::new();
        write_request_head(text.as_bytes(), &head, &checked, peer, false, &mut out);
        String::from_utf8(out).expect("test value")
    }

    #[test]
    fn hop_by_hop_and_forged_forwarding_fields_stay_behind() {
        let gear = to_gear(
            "GET http://App-NS.example:8080/x?y HTTP/1.1\r\nHost: ignored\r\n\
             Connection: close, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\n\
             Proxy-Authorization: p\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\n\
             Accept: */*\r\n\r\n",
            "192.0.2.1",
        );
        // the origin form, the absolute target's authority as the one Host,
        // the end-to-end fields, then the frontend's own forwarding fields
        assert_eq!(
            gear,
            "GET /x?y HTTP/1.1\r\nhost: App-NS.example:8080\r\nAccept: */*\r\n\
             x-forwarded-for: 192.0.2.1\r\nx-forwarded-host: App-NS.example:8080\r\n\
             x-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn answer_heads_are_rewritten_with_their_framing_and_keep_alive() {
        let text = b"HTTP/1.1 200 Fine\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 3\r\n\
                     Transfer-Encoding: chunked\r\nX-App: a\r\n\r\n";
        let mut head = ResponseHead::default();
        assert_eq!(parse_response(text, &mut head), Ok(true));
        let rf = facts(text, &head.headers);
        let framing = answer_framing(head.status, false, &rf);
        assert_eq!(framing, Framing::Chunked);
        let mut out = Vec::new();
        let shape = AnswerShape {
            framing,
            decode: false,
            keep: true,
            head_request: false,
            client_minor: 1,
            hsts: None,
        };
        write_response_head(text, &head, &rf, shape, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 Fine\r\nX-App: a\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // an HTTP/1.0 client gets it unchunked, to the close
        let shape = AnswerShape {
            decode: true,
            keep: false,
            client_minor: 0,
            ..shape
        };
        write_response_head(text, &head, &rf, shape, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 Fine\r\nX-App: a\r\nconnection: close\r\n\r\n"
        );
        // no framing and no length: the answer ends with the connection
        let text = b"HTTP/1.0 204\r\n\r\n";
        assert_eq!(parse_response(text, &mut head), Ok(true));
        let rf = facts(text, &head.headers);
        assert_eq!(answer_framing(204, false, &rf), Framing::Empty);
        assert_eq!(answer_framing(200, false, &rf), Framing::Close);
        assert_eq!(answer_framing(200, true, &rf), Framing::Empty);
    }

    #[test]
    fn keep_alive_and_methods_follow_the_version() {
        let f = |text: &str| {
            let mut head = RequestHead::default();
            assert_eq!(parse_request(text.as_bytes(), &mut head), Ok(true));
            (head.minor, facts(text.as_bytes(), &head.headers))
        };
        let (m, x) = f("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(client_keeps_alive(m, &x));
        let (m, x) = f("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(!client_keeps_alive(m, &x));
        let (m, x) = f("GET / HTTP/1.0\r\nHost: a\r\n\r\n");
        assert!(!client_keeps_alive(m, &x));
        let (m, x) = f("GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n");
        assert!(client_keeps_alive(m, &x));
        assert!(Method::of(b"PUT").idempotent && !Method::of(b"POST").idempotent);
        assert!(Method::of(b"HEAD").head && Method::of(b"CONNECT").connect);
        assert_eq!(unread_body(Framing::Length(0)), None);
        assert_eq!(unread_body(Framing::Length(9)), Some(9));
        assert_eq!(unread_body(Framing::Chunked), Some(DRAIN_BYTES));
    }
}
