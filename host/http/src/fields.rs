//! What a head's header fields say about the message's framing and its
//! connection, and which fields belong to the connection (hop-by-hop) rather
//! than to the message.

use std::ops::Range;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// The header fields of a head that the frontend acts on, taken out of the
/// buffer once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The last `Host` field's value.
    pub host: Option<Range<usize>>,
    /// How many `Host` fields there are.
    pub hosts: usize,
    /// The `Content-Length`, when there is one well-formed field.
    pub content_length: Option<u64>,
    /// A `Content-Length` that is not a number, or more than one field.
    pub bad_length: bool,
    /// The last transfer coding is `chunked`.
    pub chunked: bool,
    /// The last transfer coding is another one.
    pub other_coding: bool,
    /// The `Transfer-Encoding` value is `chunked` alone, in one field: the
    /// only coding a request may use.
    pub chunked_alone: bool,
    /// How many `Transfer-Encoding` fields there are.
    pub encodings: usize,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Connection: upgrade`.
    pub connection_upgrade: bool,
    /// An `Upgrade` field.
    pub upgrade: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The `User-Agent`, for the access log.
    pub user_agent: Option<Range<usize>>,
    /// `Connection` values, for the fields they name.
    pub connection: Vec<Range<usize>>,
    /// The value of the [`RELAY`] field another node of the cluster sets on a
    /// request it passes on (`None` when there are several).
    pub relay: Option<Range<usize>>,
    /// How many [`RELAY`] fields there are.
    pub relays: usize,
}

/// The field a node's frontend adds to a request it passes to the frontend
/// of the node that holds the gear: the client's address and scheme, signed
/// with the cluster's secret. Never passed to a gear.
pub const RELAY: &str = "gearhost-relay";

/// Whether `list` (a comma-separated field value) names `token`.
pub fn has_token(list: &[u8], token: &str) -> bool {
    list.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A `Content-Length` value: one or more digits and nothing else (no sign,
/// no list, no spaces inside), that fits in 64 bits.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Reads the fields of a head whose headers are `headers` (ranges of `data`).
pub fn facts(data: &[u8], headers: &[(Range<usize>, Range<usize>)]) -> Facts {
    let mut f = Facts::default();
    for (n, v) in headers {
        let name = &data[n.clone()];
        let value = &data[v.clone()];
        let is = |want: &str| name.eq_ignore_ascii_case(want.as_bytes());
        match name.len() {
            4 if is("host") => {
                f.hosts += 1;
                f.host = Some(v.clone());
            }
            14 if is("content-length") => match parse_length(value) {
                Some(n) if f.content_length.is_none() && !f.bad_length => {
                    f.content_length = Some(n);
                }
                _ => {
                    f.bad_length = true;
                    f.content_length = None;
                }
            },
            17 if is("transfer-encoding") => {
                f.encodings += 1;
                let last = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(<[u8]>::trim_ascii)
                    .unwrap_or_default();
                f.chunked_alone =
                    f.encodings == 1 && value.trim_ascii().eq_ignore_ascii_case(b"chunked");
                if last.eq_ignore_ascii_case(b"chunked") {
                    f.chunked = true;
                    f.other_coding = false;
                } else {
                    f.chunked = false;
                    f.other_coding = true;
                }
            }
            10 if is("connection") => {
                f.close |= has_token(value, "close");
                f.keep_alive |= has_token(value, "keep-alive");
                f.connection_upgrade |= has_token(value, "upgrade");
                f.connection.push(v.clone());
            }
            7 if is("upgrade") => f.upgrade = true,
            6 if is("expect") => f.expect_continue = value.eq_ignore_ascii_case(b"100-continue"),
            10 if is("user-agent") => f.user_agent = Some(v.clone()),
            14 if is(RELAY) => {
                f.relays += 1;
                f.relay = (f.relays == 1).then(|| v.clone());
            }
            _ => {}
        }
    }
    f
}

/// Fields that describe one connection, in either direction (besides
/// `Connection` and `Upgrade`, which each direction treats its own way).
pub const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Whether `name` is one of `names` (ASCII case ignored).
pub fn is_one_of(name: &[u8], names: &[&str]) -> bool {
    names
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Whether one of the `Connection` values at `connection` (ranges of
/// `data`) names the field `name`, making it the connection's own.
pub fn named_in(name: &[u8], data: &[u8], connection: &[Range<usize>]) -> bool {
    connection.iter().any(|r| {
        data[r.clone()]
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
    })
}

/// Whether `name` is `field` once `_` is read as `-` (ASCII case ignored),
/// as CGI-style servers (WSGI, PHP) read field names: `X_Forwarded_For`
/// reaches their apps as `X-Forwarded-For` does.
fn same_with_underscores(name: &[u8], field: &str) -> bool {
    name.len() == field.len()
        && name.iter().zip(field.bytes()).all(|(a, b)| {
            let a = if *a == b'_' { b'-' } else { *a };
            a.eq_ignore_ascii_case(&b)
        })
}

/// Whether a request field stays behind when the request is passed to a
/// gear: hop-by-hop, named in `Connection`, or one the frontend writes
/// itself (`Host`, the framing, `X-Forwarded-*`), also when spelt with
/// underscores for the apps that cannot tell them apart.
pub fn request_field_stays(
    name: &[u8],
    data: &[u8],
    connection: &[Range<usize>],
    keep_upgrade: bool,
) -> bool {
    const OWN: [&str; 9] = [
        RELAY,
        "connection",
        "host",
        "content-length",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "expect",
    ];
    if is_one_of(name, &HOP_BY_HOP) || is_one_of(name, &OWN) {
        return true;
    }
    if name.contains(&b'_')
        && (OWN
            .iter()
            .chain(&HOP_BY_HOP)
            .any(|f| same_with_underscores(name, f))
            || same_with_underscores(name, "upgrade"))
    {
        return true;
    }
    if name.eq_ignore_ascii_case(b"upgrade") {
        return !keep_upgrade;
    }
    named_in(name, data, connection)
}

/// Whether a response field of a gear's answer reaches the client: not the
/// gear's connection's own, and not the framing, which the frontend writes.
pub fn response_field_passes(
    name: &[u8],
    data: &[u8],
    connection: &[Range<usize>],
    upgrade: bool,
) -> bool {
    if is_one_of(name, &HOP_BY_HOP) || name.eq_ignore_ascii_case(b"content-length") {
        return false;
    }
    if name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"upgrade") {
        return upgrade;
    }
    !named_in(name, data, connection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{RequestHead, parse_request};

    fn head(text: &str) -> Facts {
        let mut head = RequestHead::default();
        assert_eq!(
            parse_request(text.as_bytes(), &mut head),
            Ok(true),
            "{text}"
        );
        facts(text.as_bytes(), &head.headers)
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"0012"), Some(12));
        assert_eq!(
            parse_length(b"18446744073709551615"),
            None,
            "20 digits are refused even when they fit"
        );
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b"+5"[..],
            b"-5",
            b"5 5",
            b"5,5",
            b"",
            b"0x5",
            b" 5",
            b"5\t",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn framing_fields_are_read_strictly() {
        let f =
            head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert!(f.bad_length);
        // the same length twice is one length too many
        let f =
            head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert!(f.bad_length && f.content_length.is_none());
        // a bad length is not made good by a later one
        let f = head("POST / HTTP/1.1\r\nContent-Length: +5\r\nContent-Length: 5\r\n\r\n");
        assert!(f.bad_length && f.content_length.is_none());
        let f = head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(f.other_coding && !f.chunked_alone);
        let f = head(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(f.chunked && f.close && f.connection_upgrade && f.upgrade);
        assert!(!f.chunked_alone);
        for twice in [
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked,\r\n",
        ] {
            let f = head(&format!("POST / HTTP/1.1\r\n{twice}\r\n"));
            assert!(!f.chunked_alone, "{twice}");
        }
        let f = head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert!(f.chunked_alone && f.chunked);
        let f = head("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n");
        assert_eq!(f.hosts, 2);
    }

    #[test]
    fn connection_fields_stay_behind() {
        let data = b"keep-alive, x-secret";
        let listed = vec![Range {
            start: 0,
            end: data.len(),
        }];
        for own in [
            "Connection",
            "keep-alive",
            "x-secret",
            "Transfer-Encoding",
            "TE",
            "x-forwarded-for",
            "expect",
            "Host",
            "content-length",
            "Gearhost-Relay",
        ] {
            assert!(
                request_field_stays(own.as_bytes(), data, &listed, false),
                "{own}"
            );
        }
        assert!(!request_field_stays(b"accept", data, &listed, false));
        // what a CGI-style server reads as one of the frontend's own fields
        for spelt in [
            "X_Forwarded_For",
            "x_forwarded-host",
            "X-Forwarded_Proto",
            "Content_Length",
            "transfer_encoding",
            "Proxy_Authorization",
            "gearhost_relay",
        ] {
            assert!(
                request_field_stays(spelt.as_bytes(), data, &listed, true),
                "{spelt}"
            );
        }
        assert!(!request_field_stays(b"x_request_id", data, &listed, false));
        assert!(request_field_stays(b"upgrade", data, &listed, false));
        assert!(!request_field_stays(b"upgrade", data, &listed, true));
        // answers keep Connection and Upgrade only when switching protocols
        assert!(!response_field_passes(b"connection", data, &listed, false));
        assert!(response_field_passes(b"upgrade", data, &listed, true));
        assert!(!response_field_passes(b"x-secret", data, &listed, false));
        assert!(response_field_passes(b"content-type", data, &listed, false));
    }

    #[test]
    fn a_relay_field_is_found_once_and_refused_twice() {
        let one = head("GET / HTTP/1.1\r\nHost: a\r\nGearhost-Relay: t=1\r\n\r\n");
        assert_eq!((one.relays, one.relay.is_some()), (1, true));
        let two =
            head("GET / HTTP/1.1\r\nHost: a\r\ngearhost-relay: t=1\r\nGEARHOST-RELAY: t=2\r\n\r\n");
        assert_eq!((two.relays, two.relay), (2, None));
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\r\n\r\n").relays, 0);
    }

    #[test]
    fn tokens_are_found_in_lists() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(!has_token(b"keep-alive", "close"));
        assert!(has_token(b"close", "close"));
    }
}
