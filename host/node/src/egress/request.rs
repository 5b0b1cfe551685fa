//! What a build asks the egress proxy for: its request head, read with
//! bounds on size and time, and parsed into a `CONNECT` or an absolute-form
//! request with a checked authority. Anything else is an [`Answer`] (400,
//! 405, 431) that says what was wrong.

use super::*;

/// A request head read from the build, and the bytes after it.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) bytes: Vec<u8>,
    /// Where the head ends (after its empty line).
    pub(super) len: usize,
}

#[derive(Debug)]
pub(super) enum HeadError {
    TooLarge,
}

/// Read until the end of a request head (`None`: the build closed first).
pub(super) async fn read_head(
    client: &mut TcpStream,
    max: usize,
) -> Result<Option<Head>, HeadError> {
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        let from = bytes.len().saturating_sub(3);
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(at) = bytes[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let len = from + at + 4;
            if len > max {
                return Err(HeadError::TooLarge);
            }
            return Ok(Some(Head { bytes, len }));
        }
        if bytes.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// What a build asked for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Request {
    /// A name or an address (without brackets).
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) kind: Kind,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// `CONNECT host:port`: a tunnel.
    Connect,
    /// A plain HTTP request, with the head to send on (origin form,
    /// `Connection: close`).
    Forward {
        /// The rewritten head.
        head: Vec<u8>,
    },
}

impl Request {
    /// The request for the log: `CONNECT host:port` or `GET http://host:port/`
    /// (no path: it is the build's, and may be long).
    pub(super) fn shown(&self) -> String {
        match &self.kind {
            Kind::Connect => format!("CONNECT {}", self.authority()),
            Kind::Forward { head } => {
                let method = head.split(|b| *b == b' ').next().unwrap_or_default();
                format!(
                    "{} http://{}/",
                    String::from_utf8_lossy(method),
                    self.authority()
                )
            }
        }
    }

    pub(super) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Headers that concern only the hop between the build and the proxy.
pub(super) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

pub(super) fn bad(message: impl Into<String>) -> Answer {
    Answer::new(400, message)
}

/// Parse a request head: `CONNECT host:port`, or a request whose target is
/// an absolute `http://` URL, rewritten for the server.
pub(super) fn parse_request(head: &[u8]) -> Result<Request, Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("the request head is incomplete")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Answer::new(431, "more than 64 header fields"));
        }
        Err(e) => return Err(bad(format!("the request head is not HTTP/1.1 ({e})"))),
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(bad("the request head is incomplete"));
    };
    if method == "CONNECT" {
        let (host, port) = parse_authority(target, None)?;
        return Ok(Request {
            host,
            port,
            kind: Kind::Connect,
        });
    }
    let rest = match target.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &target[7..],
        _ if target.len() >= 8 && target[..8].eq_ignore_ascii_case("https://") => {
            return Err(bad(
                "an https:// URL must go through CONNECT (set https_proxy, not only http_proxy)",
            ));
        }
        _ => {
            return Err(bad(
                "this is the build's egress proxy: send CONNECT host:port, or a request for an absolute http:// URL",
            ));
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return Err(bad("user names and passwords in the URL are not passed on"));
    }
    let (host, port) = parse_authority(authority, Some(80))?;
    let path = rest[end..].split('#').next().unwrap_or("");
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    // the head for the server: origin form, no hop-by-hop fields (nor those
    // the build listed in Connection), one request per connection
    let listed: Vec<String> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| {
            String::from_utf8_lossy(h.value)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::with_capacity(head.len() + 32);
    out.extend_from_slice(format!("{method} {path} HTTP/1.{version}\r\n").as_bytes());
    let mut has_host = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&name.as_str()) || listed.contains(&name) {
            continue;
        }
        has_host |= name == "host";
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        out.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Request {
        host,
        port,
        kind: Kind::Forward { head: out },
    })
}

/// `host:port` or `[v6]:port` (the port may be left out where a default is
/// given). Names are checked to be DNS names.
pub(super) fn parse_authority(
    text: &str,
    default_port: Option<u16>,
) -> Result<(String, u16), Answer> {
    let shown = || {
        text.chars()
            .take(80)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect::<String>()
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(format!("{:?} is not host:port", shown())))?;
        let ip: std::net::Ipv6Addr = inside
            .parse()
            .map_err(|_| bad(format!("{:?} is not an IPv6 address", shown())))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad(format!("{:?} is not host:port", shown())))?,
            ),
        };
        (ip.to_string(), port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (text.to_string(), None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad(format!("{:?} has no usable port", shown()))),
            }
        }
        None if default_port.is_some() => default_port.unwrap_or(80),
        _ => {
            return Err(bad(format!(
                "{:?} is not host:port with a port from 1 to 65535",
                shown()
            )));
        }
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<IpAddr>().is_ok()
            || (host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                && !host.starts_with(['-', '.'])));
    if !name_ok {
        return Err(bad(format!("{:?} is not a host name", shown())));
    }
    Ok((host.trim_end_matches('.').to_string(), port))
}
