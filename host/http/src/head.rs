//! Request and response heads parsed in place: every part is a range of the
//! buffer the head was read into, so nothing is copied or allocated per
//! header.

use std::ops::Range;

/// Most header fields in one head.
pub const MAX_HEADERS: usize = 128;
/// Most header fields in a request head from a client: the head a gear
/// receives has up to six fields the frontend adds (`Host`, the three
/// `X-Forwarded-*`, the framing, `Connection`), and stays within
/// [`MAX_HEADERS`], the limit the frontend holds the gear's answers to.
pub const MAX_REQUEST_HEADERS: usize = MAX_HEADERS - 8;

/// Why a head cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More header fields than allowed ([`MAX_REQUEST_HEADERS`] in a
    /// request, [`MAX_HEADERS`] in an answer).
    #[error("too many header fields")]
    TooManyHeaders,
    /// Not HTTP/1.x, or malformed.
    #[error("{0}")]
    Malformed(httparse::Error),
    /// A request line ended with a line feed alone, without the carriage
    /// return before it.
    #[error("a line of the request head ends without a carriage return")]
    BareLineFeed,
}

impl From<httparse::Error> for ParseError {
    fn from(e: httparse::Error) -> ParseError {
        match e {
            httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
            e => ParseError::Malformed(e),
        }
    }
}

/// A request head parsed in place: every field is a range of the buffer it
/// was parsed from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Range<usize>,
    /// The request target, as sent.
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header names and values, in order.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// Length of the head, including its final empty line.
    pub len: usize,
}

/// A response head parsed in place, like [`RequestHead`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The reason phrase (empty when there is none).
    pub reason: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header names and values, in order.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// Length of the head, including its final empty line.
    pub len: usize,
}

/// Where `part` (a slice of `buf`) lies in `buf`.
fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn header_ranges(
    data: &[u8],
    headers: &[httparse::Header<'_>],
    into: &mut Vec<(Range<usize>, Range<usize>)>,
) {
    into.clear();
    for h in headers {
        into.push((offset(data, h.name.as_bytes()), offset(data, h.value)));
    }
}

/// Whether `data` holds a line feed without a carriage return before it.
fn has_bare_line_feed(data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || data[i - 1] != b'\r'))
}

/// Parses the request head at the start of `data` into `head`: `Ok(true)`
/// once it is complete, `Ok(false)` while more bytes are needed.
///
/// Every line must end with CRLF: `httparse` also takes a line feed alone,
/// and a peer in front of the frontend that does not would read the same
/// bytes as other header fields, so such a head is refused.
pub fn parse_request(data: &[u8], head: &mut RequestHead) -> Result<bool, ParseError> {
    parse_request_within(data, head, MAX_REQUEST_HEADERS)
}

/// [`parse_request`] with at most `max_fields` header fields (up to
/// [`MAX_HEADERS`]): [`MAX_HEADERS`] reads a head as a gear receives it.
pub fn parse_request_within(
    data: &[u8],
    head: &mut RequestHead,
    max_fields: usize,
) -> Result<bool, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(data)? else {
        return Ok(false);
    };
    if has_bare_line_feed(&data[..len]) {
        return Err(ParseError::BareLineFeed);
    }
    if req.headers.len() > max_fields {
        return Err(ParseError::TooManyHeaders);
    }
    head.method = offset(data, req.method.unwrap_or_default().as_bytes());
    head.target = offset(data, req.path.unwrap_or_default().as_bytes());
    head.minor = req.version.unwrap_or(1);
    header_ranges(data, req.headers, &mut head.headers);
    head.len = len;
    Ok(true)
}

/// Parses the response head at the start of `data` into `head`, like
/// [`parse_request`]. A gear's head is never passed on as it came (the
/// frontend writes the client's head itself), so lines ended by a line feed
/// alone are read as `httparse` reads them.
pub fn parse_response(data: &[u8], head: &mut ResponseHead) -> Result<bool, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = resp.parse(data)? else {
        return Ok(false);
    };
    head.status = resp.code.unwrap_or(0);
    head.reason = match resp.reason {
        Some(r) if !r.is_empty() => offset(data, r.as_bytes()),
        _ => 0..0,
    };
    head.minor = resp.version.unwrap_or(1);
    header_ranges(data, resp.headers, &mut head.headers);
    head.len = len;
    Ok(true)
}

/// Writes an interim answer (a 1xx status other than 101) of a gear for the client
/// into `out` (which it clears): its status, reason and fields, without the
/// fields of the gear's connection, every line ended with CRLF whatever the
/// gear sent.
pub fn write_interim_head(data: &[u8], head: &ResponseHead, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let f = crate::fields::facts(data, &head.headers);
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} ", head.status);
    out.extend_from_slice(&data[head.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    for (n, v) in &head.headers {
        let name = &data[n.clone()];
        if crate::fields::response_field_passes(name, data, &f.connection, false) {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&data[v.clone()]);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &[u8]) -> Result<bool, ParseError> {
        parse_request(text, &mut RequestHead::default())
    }

    #[test]
    fn heads_are_ranges_of_the_buffer() {
        let data = b"GET /x?y HTTP/1.0\r\nHost: a\r\nX-A:  b \r\n\r\nbody";
        let mut head = RequestHead::default();
        assert_eq!(parse_request(data, &mut head), Ok(true));
        assert_eq!(&data[head.method.clone()], b"GET");
        assert_eq!(&data[head.target.clone()], b"/x?y");
        assert_eq!(head.minor, 0);
        assert_eq!(head.len, data.len() - 4);
        let (n, v) = head.headers[1].clone();
        assert_eq!((&data[n], &data[v]), (&b"X-A"[..], &b"b"[..]));
        assert_eq!(request(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(false));

        let data = b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n";
        let mut head = ResponseHead::default();
        assert_eq!(parse_response(data, &mut head), Ok(true));
        assert_eq!(head.status, 404);
        assert_eq!(&data[head.reason.clone()], b"Not Found");
    }

    #[test]
    fn interim_answers_are_written_anew() {
        let data =
            b"HTTP/1.1 103 Early Hints\nLink: </a.css>\nConnection: x\nX: 1\n\nHTTP/1.1 200 OK\r\n";
        let mut head = ResponseHead::default();
        assert_eq!(parse_response(data, &mut head), Ok(true));
        let mut out = Vec::new();
        write_interim_head(data, &head, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        );
    }

    #[test]
    fn request_lines_end_with_crlf_only() {
        for bare in [
            &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(request(bare), Err(ParseError::BareLineFeed), "{bare:?}");
        }
        // what httparse refuses by itself stays refused
        for bad in [
            &b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(request(bad), Err(ParseError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: a\r\n")).collect();
        assert_eq!(
            request(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(ParseError::TooManyHeaders)
        );
        // a request leaves room for the fields the frontend adds
        let many: String = (0..=MAX_REQUEST_HEADERS)
            .map(|i| format!("X-{i}: a\r\n"))
            .collect();
        assert_eq!(
            request(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(ParseError::TooManyHeaders)
        );
        let mut head = ResponseHead::default();
        let answer = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(parse_response(answer.as_bytes(), &mut head), Ok(true));
    }
}
