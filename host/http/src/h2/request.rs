//! An HTTP/2 request's header list, written as the HTTP/1.1 head the
//! frontend's pipeline reads ([`RequestWriter`]), and checked on the way as
//! RFC 9113 §8.2-8.3 asks: a list that could be read two ways, or that
//! would write a different head than it says, is malformed and never
//! written.
//!
//! The head is `METHOD PATH HTTP/1.1`, then `host` from `:authority` (or the
//! one `host` field when there is no authority), then the fields as they
//! came (lowercase, as HTTP/2 sends them), `cookie` fields joined into one
//! (§8.2.3), and `transfer-encoding: chunked` for a body of no declared
//! length. Every name is a lowercase token and every value free of control
//! characters and of white space at its ends, so each field is one line of
//! the head and the pipeline's parser reads back exactly the list the
//! client sent.

use std::ops::Range;

use crate::fields::parse_length;
use crate::head::RequestHead;

/// A head's field ranges: name and value of each line.
type Fields = Vec<(Range<usize>, Range<usize>)>;

/// Why a request's header list is malformed (the stream is reset with
/// PROTOCOL_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed HTTP/2 request: {0}")]
pub struct Malformed(pub &'static str);

/// What the head written for a request says of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The body's length as `content-length` declares it, `None` without
    /// one.
    pub length: Option<u64>,
    /// The head declares a chunked body: the client gave no length and did
    /// not end the stream with its headers. The body's DATA is to be
    /// passed as chunks.
    pub chunked: bool,
    /// The method is `HEAD` (the answer has no body).
    pub head: bool,
}

/// Writes one request's head as its fields are decoded: [`RequestWriter::field`]
/// for each, in order, then [`RequestWriter::finish`]. Its buffers are kept
/// from one request to the next ([`RequestWriter::clear`]).
#[derive(Debug, Default)]
pub struct RequestWriter {
    /// The pseudo fields' values, back to back.
    pseudo: Vec<u8>,
    method: Option<Range<usize>>,
    scheme: Option<Range<usize>>,
    path: Option<Range<usize>>,
    authority: Option<Range<usize>>,
    /// `host` fields: the value of the first, and how many came.
    host: Option<Range<usize>>,
    hosts: usize,
    /// Whether the request line is in the head (after the first regular
    /// field).
    line: bool,
    cookies: Vec<u8>,
    length: Option<u64>,
    malformed: Option<&'static str>,
    /// The written head as the pipeline's parser would read it: the
    /// writer knows where each part went, so nobody parses it again.
    parsed: RequestHead,
}

/// A token's bytes (RFC 9110 §5.6.2).
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field value HTTP/2 lets pass into an HTTP/1.1 head: no control
/// character but tab, no white space at either end.
fn clean_value(v: &[u8]) -> bool {
    let edge = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    !edge(v.first()) && !edge(v.last()) && v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A request target's or authority's bytes: visible ASCII, no space
/// (anything else is percent-encoded by a client).
fn visible(v: &[u8]) -> bool {
    v.iter().all(|&b| (0x21..0x7f).contains(&b))
}

impl RequestWriter {
    /// Makes the writer ready for another request's fields.
    pub fn clear(&mut self) {
        let pseudo = std::mem::take(&mut self.pseudo);
        let cookies = std::mem::take(&mut self.cookies);
        let mut fields = std::mem::take(&mut self.parsed.headers);
        fields.clear();
        *self = RequestWriter {
            pseudo,
            cookies,
            parsed: RequestHead {
                headers: fields,
                ..RequestHead::default()
            },
            ..RequestWriter::default()
        };
        self.pseudo.clear();
        self.cookies.clear();
    }

    /// The head [`RequestWriter::finish`] wrote, as
    /// [`crate::head::parse_request`] reads it back; `spare` (emptied) is
    /// where the writer notes the next request's fields.
    pub fn take_head(&mut self, spare: Vec<(Range<usize>, Range<usize>)>) -> RequestHead {
        let mut fresh = RequestHead {
            headers: spare,
            ..RequestHead::default()
        };
        fresh.headers.clear();
        std::mem::replace(&mut self.parsed, fresh)
    }

    /// Writes one field line, noting in `fields` where its name and value are.
    fn field_line(fields: &mut Fields, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        let v = out.len();
        out.extend_from_slice(value);
        fields.push((at..at + name.len(), v..out.len()));
        out.extend_from_slice(b"\r\n");
    }

    fn malformed(&mut self, why: &'static str) {
        self.malformed.get_or_insert(why);
    }

    /// Takes the next field of the list, writing into `out` (which holds
    /// nothing else of this request's).
    pub fn field(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        if self.malformed.is_some() {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            self.pseudo_field(pseudo, value);
            return;
        }
        if name.is_empty() || !name.iter().all(|&b| tchar(b) && !b.is_ascii_uppercase()) {
            return self.malformed("a field name that is not a lowercase token");
        }
        if !clean_value(value) {
            return self
                .malformed("a field value with a control character or white space at an end");
        }
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => return self.malformed("a connection-specific field"),
            b"te" if value != b"trailers" => return self.malformed("te other than trailers"),
            b"host" => {
                self.hosts += 1;
                if self.host.is_none() {
                    let at = self.pseudo.len();
                    self.pseudo.extend_from_slice(value);
                    self.host = Some(at..self.pseudo.len());
                }
                return;
            }
            // an empty crumb adds nothing, and joined it would leave the
            // line ending in white space
            b"cookie" if value.is_empty() => return,
            b"cookie" => {
                if !self.cookies.is_empty() {
                    self.cookies.extend_from_slice(b"; ");
                }
                self.cookies.extend_from_slice(value);
                return;
            }
            b"content-length" => match (parse_length(value), self.length) {
                (Some(n), None) => self.length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return self.malformed("a content-length that is not one number"),
            },
            _ => {}
        }
        if !self.line {
            // the request line goes first, once every pseudo field is in
            if self.write_line(out).is_err() {
                return;
            }
        }
        Self::field_line(&mut self.parsed.headers, name, value, out);
    }

    fn pseudo_field(&mut self, pseudo: &[u8], value: &[u8]) {
        if self.line {
            return self.malformed("a pseudo field after a regular field");
        }
        let at = self.pseudo.len();
        let slot = match pseudo {
            b"method" if !value.is_empty() && value.iter().all(|&b| tchar(b)) => &mut self.method,
            b"scheme" if !value.is_empty() && value.iter().all(|&b| tchar(b)) => &mut self.scheme,
            b"path" if !value.is_empty() && visible(value) => &mut self.path,
            b"authority" if !value.is_empty() && visible(value) => &mut self.authority,
            b"method" | b"scheme" | b"path" | b"authority" => {
                return self.malformed("a pseudo field of no valid value");
            }
            _ => return self.malformed("an unknown pseudo field"),
        };
        if slot.is_some() {
            return self.malformed("a pseudo field twice");
        }
        *slot = Some(at..at + value.len());
        self.pseudo.extend_from_slice(value);
    }

    /// Writes the request line and `host`.
    fn write_line(&mut self, out: &mut Vec<u8>) -> Result<(), ()> {
        self.line = true;
        let Some(method) = self.method.clone() else {
            self.malformed("no :method");
            return Err(());
        };
        let p = &self.pseudo;
        let connect = &p[method.clone()] == b"CONNECT";
        let target = if connect {
            if self.scheme.is_some() || self.path.is_some() {
                self.malformed("CONNECT with :scheme or :path");
                return Err(());
            }
            self.authority.clone()
        } else {
            if self.scheme.is_none() {
                self.malformed("no :scheme");
                return Err(());
            }
            self.path.clone()
        };
        let Some(target) = target else {
            self.malformed("no :path (or :authority for CONNECT)");
            return Err(());
        };
        let at = out.len();
        out.extend_from_slice(&p[method]);
        self.parsed.method = at..out.len();
        out.push(b' ');
        let at = out.len();
        out.extend_from_slice(&p[target]);
        self.parsed.target = at..out.len();
        self.parsed.minor = 1;
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(host) = self.authority.clone().or_else(|| self.host.clone()) {
            Self::field_line(&mut self.parsed.headers, b"host", &p[host], out);
        }
        Ok(())
    }

    /// Ends the head: `ends` says whether the client ended the stream with
    /// its headers (no body follows). The writer must be cleared before
    /// its next request.
    pub fn finish(&mut self, ends: bool, out: &mut Vec<u8>) -> Result<Request, Malformed> {
        if self.malformed.is_none() && !self.line {
            let _ = self.write_line(out);
        }
        if self.authority.is_none() && self.hosts > 1 {
            self.malformed("two host fields");
        }
        if let Some(why) = self.malformed {
            return Err(Malformed(why));
        }
        if !self.cookies.is_empty() {
            Self::field_line(&mut self.parsed.headers, b"cookie", &self.cookies, out);
        }
        let chunked = !ends && self.length.is_none();
        if chunked {
            Self::field_line(
                &mut self.parsed.headers,
                b"transfer-encoding",
                b"chunked",
                out,
            );
        }
        out.extend_from_slice(b"\r\n");
        self.parsed.len = out.len();
        let head = self
            .method
            .clone()
            .is_some_and(|m| &self.pseudo[m] == b"HEAD");
        Ok(Request {
            length: self.length,
            chunked,
            head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{RequestHead, parse_request};

    fn write(fields: &[(&str, &str)], ends: bool) -> Result<(String, Request), Malformed> {
        let mut w = RequestWriter::default();
        // a writer used before must write the same
        w.field(b":method", b"PUT", &mut Vec::new());
        w.clear();
        let mut out = Vec::new();
        for (n, v) in fields {
            w.field(n.as_bytes(), v.as_bytes(), &mut out);
        }
        let r = w.finish(ends, &mut out)?;
        // where the writer says the parts are is where the parser finds them
        let mut parsed = RequestHead::default();
        assert_eq!(parse_request(&out, &mut parsed), Ok(true));
        assert_eq!(w.take_head(Vec::new()), parsed);
        Ok((String::from_utf8(out).expect("text"), r))
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "app-ns.gears.test"),
        (":path", "/a/b?c=d"),
    ];

    #[test]
    fn a_request_without_body_becomes_a_plain_head_the_parser_reads_back() {
        let mut fields = GET.to_vec();
        fields.extend([
            ("user-agent", "t/1"),
            ("cookie", "a=1"),
            ("accept", "*/*"),
            ("cookie", "b=2"),
        ]);
        let (head, r) = write(&fields, true).expect("well formed");
        assert_eq!(
            head,
            "GET /a/b?c=d HTTP/1.1\r\nhost: app-ns.gears.test\r\nuser-agent: t/1\r\n\
             accept: */*\r\ncookie: a=1; b=2\r\n\r\n"
        );
        assert_eq!(
            r,
            Request {
                length: None,
                chunked: false,
                head: false
            }
        );
        let mut parsed = RequestHead::default();
        assert_eq!(parse_request(head.as_bytes(), &mut parsed), Ok(true));
        assert_eq!(parsed.headers.len(), 4);
    }

    #[test]
    fn a_body_of_no_declared_length_is_chunked_and_a_declared_one_is_not() {
        let mut fields = GET.to_vec();
        fields[0].1 = "POST";
        let (head, r) = write(&fields, false).expect("well formed");
        assert!(r.chunked && r.length.is_none());
        assert!(
            head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
        fields.push(("content-length", "5"));
        let (head, r) = write(&fields, false).expect("well formed");
        assert_eq!((r.chunked, r.length), (false, Some(5)));
        assert!(
            head.contains("content-length: 5\r\n") && !head.contains("transfer-encoding"),
            "{head}"
        );
        fields.push(("content-length", "5"));
        assert!(
            write(&fields, false).is_ok(),
            "the same length twice says one thing"
        );
        fields.push(("content-length", "6"));
        assert!(write(&fields, false).is_err());
    }

    #[test]
    fn host_comes_from_the_authority_or_else_the_one_host_field() {
        let mut fields = GET.to_vec();
        fields.extend([("host", "wrong.test"), ("te", "trailers")]);
        let (head, _) = write(&fields, true).expect("well formed");
        assert!(
            head.contains("host: app-ns.gears.test\r\n") && !head.contains("wrong"),
            "{head}"
        );
        assert!(head.contains("te: trailers\r\n"), "{head}");
        let no_authority = [GET[0], GET[1], GET[3], ("host", "h.test")];
        let (head, _) = write(&no_authority, true).expect("well formed");
        assert!(
            head.starts_with("GET /a/b?c=d HTTP/1.1\r\nhost: h.test\r\n"),
            "{head}"
        );
        let two = [
            GET[0],
            GET[1],
            GET[3],
            ("host", "h.test"),
            ("host", "i.test"),
        ];
        assert!(write(&two, true).is_err());
        assert!(write(&[], true).is_err(), "an empty list is malformed");
    }

    #[test]
    fn what_would_write_another_head_is_malformed() {
        let bad: &[&[(&str, &str)]] = &[
            &[("x", "1\r\nx-injected: 2")],
            &[("x", "a\0b")],
            &[("x", " padded")],
            &[("x", "padded\t")],
            &[("X-Upper", "1")],
            &[("bad name", "1")],
            &[("", "1")],
            &[("connection", "close")],
            &[("transfer-encoding", "chunked")],
            &[("upgrade", "websocket")],
            &[("te", "gzip")],
            &[("content-length", "-1")],
            &[(":status", "200")],
            &[(":protocol", "websocket")],
        ];
        for extra in bad {
            let mut fields = GET.to_vec();
            fields.extend_from_slice(extra);
            assert!(write(&fields, true).is_err(), "{extra:?} passed");
        }
        let mut late = GET[..3].to_vec();
        late.push(("accept", "*/*"));
        late.push(GET[3]);
        assert!(
            write(&late, true).is_err(),
            "a pseudo field after a regular one"
        );
        let mut twice = GET.to_vec();
        twice.push(GET[3]);
        assert!(write(&twice, true).is_err());
        for (i, field) in [
            (":path", "/a b"),
            (":path", ""),
            (":method", "G T"),
            (":authority", "a\rb"),
        ]
        .iter()
        .enumerate()
        {
            let mut fields = GET.to_vec();
            let at = fields
                .iter()
                .position(|f| f.0 == field.0)
                .expect("a pseudo field");
            fields[at] = *field;
            assert!(write(&fields, true).is_err(), "case {i}: {field:?} passed");
        }
        assert!(write(&GET[1..], true).is_err(), "no :method");
        assert!(
            write(&[GET[0], GET[2], GET[3]], true).is_err(),
            "no :scheme"
        );
        assert!(write(&GET[..3], true).is_err(), "no :path");
    }

    #[test]
    fn fuzz_findings_stay_fixed() {
        // `http2_request`: an empty `:authority` on a CONNECT wrote an empty
        // request target ("CONNECT  HTTP/1.1"), which no parser reads
        let fields = [(":method", "CONNECT"), (":authority", ""), ("h", "````")];
        assert!(write(&fields, true).is_err());
        let mut get = GET.to_vec();
        get[2].1 = "";
        assert!(
            write(&get, true).is_err(),
            "an empty authority names no host"
        );
        // `http2_request`: an empty cookie crumb after another was joined
        // as "a; ", a value ending in white space that the parser reads
        // without it (`write` holds the writer's ranges to the parser's)
        let mut fields = GET.to_vec();
        fields.extend([("cookie", "a"), ("x", ""), ("cookie", ""), ("y", "b")]);
        let (head, _) = write(&fields, true).expect("a head");
        assert!(head.contains("\r\ncookie: a\r\n"), "{head}");
        let mut fields = GET.to_vec();
        fields.extend([("cookie", ""), ("cookie", "")]);
        let (head, _) = write(&fields, true).expect("a head");
        assert!(!head.contains("cookie"), "{head}");
    }

    #[test]
    fn connect_names_its_authority_and_nothing_else() {
        let (head, _) = write(
            &[(":method", "CONNECT"), (":authority", "h.test:443")],
            true,
        )
        .expect("well formed");
        assert!(
            head.starts_with("CONNECT h.test:443 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            write(
                &[
                    (":method", "CONNECT"),
                    (":authority", "h.test:443"),
                    (":path", "/")
                ],
                true
            )
            .is_err()
        );
        let (_, r) = write(
            &[(":method", "HEAD"), (":scheme", "https"), (":path", "/")],
            true,
        )
        .expect("well formed");
        assert!(r.head);
    }
}
