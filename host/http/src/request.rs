//! The checks a request head passes before the frontend routes it, the host
//! name it is routed on, and the head the gear receives.
//!
//! The rule behind all of them: the gear must read the request exactly as
//! the frontend did. A request that could be read two ways (two `Host`
//! fields, a host in the target and another in `Host`, two framings, a
//! framing a peer might not know) is refused with 400 rather than resolved
//! by a preference the gear might not share, and the head the gear receives
//! is written by the frontend: one `Host`, the one the request was routed
//! on, and the framing the frontend follows, whatever `Connection` named.
//!
//! - The target is origin-form (`/path`), absolute-form with an `http` or
//!   `https` scheme, `*` for `OPTIONS`, or anything for `CONNECT` (which the
//!   frontend refuses after routing). Nothing else, and no fragment.
//! - An HTTP/1.1 request has exactly one `Host` field; an HTTP/1.0 one at
//!   most one. Its value is a host name, an IPv4 address or a bracketed IPv6
//!   address, with an optional port: no user information, no percent
//!   escapes, nothing a URL parser could read as a path.
//! - An absolute-form target is routed on its own authority (RFC 9112,
//!   3.2.2) and the gear's `Host` is that authority, not the field sent.
//! - A body is framed by one `Content-Length` made of digits, or by
//!   `Transfer-Encoding: chunked` alone in HTTP/1.1, never both.

use std::borrow::Cow;
use std::io::Write as _;
use std::ops::Range;

use crate::fields::{Facts, Framing, facts, request_field_stays};
use crate::head::RequestHead;

/// The form of a request's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/path?query`, passed on as it is.
    Origin,
    /// `http://authority/path?query`: the gear receives the part after the
    /// authority (`rest`, a range of the buffer), as a path.
    Absolute {
        /// Where `/path?query` lies in the buffer (may be empty or begin
        /// with `?`).
        rest: Range<usize>,
    },
    /// `*`, for `OPTIONS`.
    Asterisk,
    /// The target of a `CONNECT`, not looked at (the method is refused).
    Connect,
}

/// A request that may be routed: how it is framed and the authority it is
/// for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Its header fields.
    pub facts: Facts,
    /// Its target's form.
    pub target: Target,
    /// Its body's framing: `Length` (0 without a body) or `Chunked`.
    pub framing: Framing,
    /// The authority (`host[:port]`, a range of the buffer) the request is
    /// routed on: an absolute target's, else the `Host` field's. The gear
    /// receives it as `Host` and `X-Forwarded-Host`.
    pub authority: Range<usize>,
    /// The request asks to switch protocols (`Upgrade` and
    /// `Connection: upgrade`).
    pub upgrade: bool,
}

/// Why a request is refused before it is routed (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// No `Host` field (and in HTTP/1.0 no absolute target either).
    #[error("it names no host")]
    NoHost,
    /// More than one `Host` field.
    #[error("it has more than one Host header")]
    ManyHosts,
    /// A `Host` field, or the authority of an absolute target, that is not
    /// a host and an optional port.
    #[error("its host is not a host name or address with an optional port")]
    BadHost,
    /// A target of no form the frontend passes on.
    #[error("its target is neither a path starting with / nor an http:// or https:// URL")]
    BadTarget,
    /// A target with a fragment, which clients never send.
    #[error("its target carries a fragment (#)")]
    Fragment,
    /// A `Content-Length` that is not digits, or more than one.
    #[error("its Content-Length is not one number")]
    BadLength,
    /// A `Transfer-Encoding` other than `chunked` alone.
    #[error("its Transfer-Encoding is not chunked alone")]
    BadCoding,
    /// Both framings.
    #[error("it has both Content-Length and Transfer-Encoding")]
    LengthAndCoding,
    /// A transfer coding in HTTP/1.0, which has none.
    #[error("it is HTTP/1.0 and has a Transfer-Encoding")]
    CodingInOldHttp,
}

/// The host part of an authority (`host[:port]`), if it is one: a name or
/// IPv4 address (letters, digits, `-`, `.`, `_`) or an IPv6 address in
/// brackets, and a port of at most five digits (possibly empty).
fn authority_host(authority: &[u8]) -> Option<&[u8]> {
    let (host, port) = if authority.first() == Some(&b'[') {
        let end = authority.iter().position(|b| *b == b']')?;
        let inner = &authority[1..end];
        let ipv6 = inner.contains(&b':')
            && inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !ipv6 {
            return None;
        }
        authority.split_at(end + 1)
    } else {
        let end = authority
            .iter()
            .position(|b| *b == b':')
            .unwrap_or(authority.len());
        let host = &authority[..end];
        let name = host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !name {
            return None;
        }
        authority.split_at(end)
    };
    if let Some(digits) = port.strip_prefix(b":") {
        if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
    } else if !port.is_empty() {
        return None;
    }
    Some(host)
}

/// The host name an authority routes to: lower-case, without port or final
/// dot. `None` when the authority is not a host and an optional port.
pub fn host_name(authority: &[u8]) -> Option<Cow<'_, str>> {
    let host = authority_host(authority)?;
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    // only ASCII gets this far
    let name = std::str::from_utf8(host).ok()?;
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// The authority and the rest of an absolute-form target, as ranges of
/// `target` (the scheme is `http` or `https`, in any case).
fn absolute_parts(target: &[u8]) -> Option<(Range<usize>, Range<usize>)> {
    let scheme = [&b"http://"[..], b"https://"].into_iter().find(|s| {
        target
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    })?;
    let start = scheme.len();
    let end = target[start..]
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .map_or(target.len(), |i| start + i);
    Some((start..end, end..target.len()))
}

/// Checks a parsed request head (`head`, ranges of `data`): its target,
/// host and framing. What passes can be routed on [`Checked::authority`]
/// and written for the gear with [`write_request_head`].
pub fn check_request(data: &[u8], head: &RequestHead) -> Result<Checked, BadRequest> {
    let f = facts(data, &head.headers);
    let method = &data[head.method.clone()];
    let target_bytes = &data[head.target.clone()];
    let base = head.target.start;
    if target_bytes.contains(&b'#') {
        return Err(BadRequest::Fragment);
    }
    let mut routed_on = None;
    let target = if method == b"CONNECT" {
        Target::Connect
    } else if target_bytes.starts_with(b"/") {
        Target::Origin
    } else if target_bytes == b"*" && method == b"OPTIONS" {
        Target::Asterisk
    } else if let Some((authority, rest)) = absolute_parts(target_bytes) {
        routed_on = Some(base + authority.start..base + authority.end);
        Target::Absolute {
            rest: base + rest.start..base + rest.end,
        }
    } else {
        return Err(BadRequest::BadTarget);
    };

    if f.hosts > 1 {
        return Err(BadRequest::ManyHosts);
    }
    if let Some(h) = &f.host
        && host_name(&data[h.clone()]).is_none()
    {
        return Err(BadRequest::BadHost);
    }
    if head.minor == 1 && f.host.is_none() {
        return Err(BadRequest::NoHost);
    }
    let authority = match routed_on.or_else(|| f.host.clone()) {
        Some(a) => a,
        None => return Err(BadRequest::NoHost),
    };
    if host_name(&data[authority.clone()]).is_none() {
        return Err(BadRequest::BadHost);
    }

    if f.bad_length {
        return Err(BadRequest::BadLength);
    }
    let framing = if f.encodings > 0 {
        if f.content_length.is_some() {
            return Err(BadRequest::LengthAndCoding);
        }
        if head.minor == 0 {
            return Err(BadRequest::CodingInOldHttp);
        }
        if !f.chunked_alone {
            return Err(BadRequest::BadCoding);
        }
        Framing::Chunked
    } else {
        Framing::Length(f.content_length.unwrap_or(0))
    };
    let upgrade = f.upgrade && f.connection_upgrade;
    Ok(Checked {
        facts: f,
        target,
        framing,
        authority,
        upgrade,
    })
}

/// Writes the head a gear receives for a checked request into `out` (which
/// it clears): the method, the target in origin form, `HTTP/1.1`, one
/// `Host` (the authority the request was routed on), the client's fields
/// except the connection's own and those the frontend writes itself,
/// `X-Forwarded-For` (`forwarded_for`), `-Host` and `-Proto`, and the
/// framing the frontend follows.
pub fn write_request_head(
    data: &[u8],
    head: &RequestHead,
    checked: &Checked,
    forwarded_for: &str,
    out: &mut Vec<u8>,
) {
    write_request_head_as(data, head, checked, forwarded_for, false, out);
}

/// [`write_request_head`] for a request that came over TLS when `secure`
/// (`X-Forwarded-Proto: https`).
pub fn write_request_head_as(
    data: &[u8],
    head: &RequestHead,
    checked: &Checked,
    forwarded_for: &str,
    secure: bool,
    out: &mut Vec<u8>,
) {
    let authority = &data[checked.authority.clone()];
    out.clear();
    out.extend_from_slice(&data[head.method.clone()]);
    out.push(b' ');
    match &checked.target {
        Target::Absolute { rest } => {
            let rest = &data[rest.clone()];
            if !rest.starts_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(rest);
        }
        Target::Origin | Target::Asterisk | Target::Connect => {
            out.extend_from_slice(&data[head.target.clone()]);
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\n");
    for (n, v) in &head.headers {
        let name = &data[n.clone()];
        if request_field_stays(name, data, &checked.facts.connection, checked.upgrade) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&data[v.clone()]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    out.extend_from_slice(forwarded_for.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-host: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(if secure {
        b"\r\nx-forwarded-proto: https\r\n".as_slice()
    } else {
        b"\r\nx-forwarded-proto: http\r\n".as_slice()
    });
    match checked.framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) if checked.facts.content_length.is_some() => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        _ => {}
    }
    if checked.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::parse_request;

    fn check(text: &str) -> Result<Checked, BadRequest> {
        let mut head = RequestHead::default();
        assert_eq!(
            parse_request(text.as_bytes(), &mut head),
            Ok(true),
            "{text}"
        );
        check_request(text.as_bytes(), &head)
    }

    /// The head a gear receives, and the checked request.
    fn forwarded(text: &str) -> (String, Checked) {
        let mut head = RequestHead::default();
        assert_eq!(
            parse_request(text.as_bytes(), &mut head),
            Ok(true),
            "{text}"
        );
        let checked = check_request(text.as_bytes(), &head).expect(text);
        let mut out = Vec::new();
        write_request_head(text.as_bytes(), &head, &checked, "10.0.0.1", &mut out);
        (String::from_utf8(out).expect("ascii"), checked)
    }

    #[test]
    fn host_names_are_routed_on_lower_case_without_port() {
        let name = |a: &str| host_name(a.as_bytes()).map(Cow::into_owned);
        assert_eq!(
            name("Web-Default.Localhost:8000").as_deref(),
            Some("web-default.localhost")
        );
        assert_eq!(name("example.com.").as_deref(), Some("example.com"));
        assert_eq!(name("example.com:").as_deref(), Some("example.com"));
        assert_eq!(name("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(name("10.1.2.3").as_deref(), Some("10.1.2.3"));
        for bad in [
            "",
            ":80",
            ".",
            "user@web-default.localhost",
            "web-default.localhost\\@other",
            "a b",
            "a%2eb",
            "a:80:80",
            "a:8x",
            "a:123456",
            "[::1",
            "[v1.x]",
            "[::1]x",
            "[]",
            "a/b",
            "a?b",
            "é.example",
        ] {
            assert_eq!(name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_host_and_it_is_the_one_the_gear_sees() {
        for two in [
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\r\nhost: a\r\nHOST: b\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert_eq!(check(two).err(), Some(BadRequest::ManyHosts), "{two}");
        }
        assert_eq!(
            check("GET / HTTP/1.1\r\n\r\n").err(),
            Some(BadRequest::NoHost)
        );
        assert_eq!(
            check("GET http://a/ HTTP/1.1\r\n\r\n").err(),
            Some(BadRequest::NoHost),
            "HTTP/1.1 needs Host even with an absolute target"
        );
        assert_eq!(
            check("GET / HTTP/1.0\r\n\r\n").err(),
            Some(BadRequest::NoHost)
        );
        for bad in [
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
            "GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a\\@b/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://b/ HTTP/1.1\r\nHost: a b\r\n\r\n",
        ] {
            assert_eq!(check(bad).err(), Some(BadRequest::BadHost), "{bad}");
        }

        // an absolute target: routed on its authority, which the gear gets as Host
        let (gear, checked) =
            forwarded("GET HTTP://Web.example:81?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n");
        assert_eq!(
            gear,
            "GET /?x=1 HTTP/1.1\r\nhost: Web.example:81\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-forwarded-host: Web.example:81\r\nx-forwarded-proto: http\r\n\r\n"
        );
        assert_eq!(checked.target, Target::Absolute { rest: 25..29 });
        let (gear, _) = forwarded("GET https://a.example HTTP/1.0\r\n\r\n");
        assert!(
            gear.starts_with("GET / HTTP/1.1\r\nhost: a.example\r\n"),
            "{gear}"
        );
        // the client's Host is replaced, and naming it in Connection does not
        // take it (or the framing) away
        let (gear, _) = forwarded(
            "POST /p HTTP/1.1\r\nConnection: host, content-length\r\nHost: a.example\r\n\
             Content-Length: 0003\r\nX-Forwarded-Host: evil\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabc",
        );
        assert_eq!(
            gear,
            "POST /p HTTP/1.1\r\nhost: a.example\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-forwarded-host: a.example\r\nx-forwarded-proto: http\r\ncontent-length: 3\r\n\r\n"
        );
    }

    /// What the `http_request` fuzz target checks of a request that passes:
    /// the head written for the gear is one head, passes the same checks,
    /// names the same host once and frames the body the same way.
    fn gear_reads_it_the_same(data: &[u8]) {
        let mut head = RequestHead::default();
        let Ok(true) = parse_request(data, &mut head) else {
            return;
        };
        let Ok(checked) = check_request(data, &head) else {
            return;
        };
        let mut gear = Vec::new();
        write_request_head(data, &head, &checked, "192.0.2.1", &mut gear);
        let mut again = RequestHead::default();
        let limit = crate::head::MAX_HEADERS;
        assert_eq!(
            crate::head::parse_request_within(&gear, &mut again, limit),
            Ok(true)
        );
        assert_eq!(again.len, gear.len());
        let rechecked = check_request(&gear, &again).expect("the gear's head passes");
        assert_eq!(rechecked.facts.hosts, 1);
        assert_eq!(
            host_name(&gear[rechecked.authority.clone()]),
            host_name(&data[checked.authority.clone()])
        );
        assert_eq!(rechecked.framing, checked.framing);
    }

    #[test]
    fn fuzz_findings_stay_fixed() {
        // 128 fields (then the most a request had) and an upgrade: the
        // gear's head had more fields than the frontend itself accepts
        gear_reads_it_the_same(include_bytes!(
            "../testdata/fuzz-request-at-the-field-limit.http"
        ));
    }

    #[test]
    fn the_gears_head_stays_within_the_header_limit() {
        // found by the http_request fuzz target: a request at the limit grew
        // past it with the fields the frontend adds
        let mut text = "POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\
                        Transfer-Encoding: chunked\r\n"
            .to_string();
        for i in 4..crate::head::MAX_REQUEST_HEADERS {
            text.push_str(&format!("X-{i}: a\r\n"));
        }
        text.push_str("\r\n");
        let (gear, _) = forwarded(&text);
        let mut head = RequestHead::default();
        let limit = crate::head::MAX_HEADERS;
        assert_eq!(
            crate::head::parse_request_within(gear.as_bytes(), &mut head, limit),
            Ok(true),
            "{gear}"
        );
    }

    #[test]
    fn targets_have_one_of_the_known_forms() {
        for bad in [
            "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http:/a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(check(bad).err(), Some(BadRequest::BadTarget), "{bad}");
        }
        assert_eq!(
            check("GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n").err(),
            Some(BadRequest::Fragment)
        );
        assert_eq!(
            check("GET http://a#@b/ HTTP/1.1\r\nHost: a\r\n\r\n").err(),
            Some(BadRequest::Fragment)
        );
        let (gear, _) = forwarded("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(gear.starts_with("OPTIONS * HTTP/1.1\r\n"), "{gear}");
        assert_eq!(
            check("CONNECT b:443 HTTP/1.1\r\nHost: a\r\n\r\n").map(|c| c.target),
            Ok(Target::Connect)
        );
    }

    #[test]
    fn a_body_has_one_framing() {
        for (text, why) in [
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                BadRequest::BadLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                BadRequest::BadLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                BadRequest::BadLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                BadRequest::BadCoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                BadRequest::BadCoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                BadRequest::BadCoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                BadRequest::LengthAndCoding,
            ),
            (
                "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                BadRequest::CodingInOldHttp,
            ),
        ] {
            assert_eq!(check(text).err(), Some(why), "{text}");
        }
        let (gear, checked) = forwarded(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n",
        );
        assert_eq!(checked.framing, Framing::Chunked);
        assert!(
            gear.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{gear}"
        );
        assert_eq!(gear.matches("ransfer-encoding").count(), 1, "{gear}");
        let (gear, checked) = forwarded(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(checked.upgrade);
        assert!(
            gear.contains("Upgrade: websocket\r\n")
                && gear.ends_with("connection: upgrade\r\n\r\n"),
            "{gear}"
        );
    }
}
