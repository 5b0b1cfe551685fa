//! The frontend's own answers: every refusal a request can meet (its status,
//! the reason the metrics count it under, and the words of its page), and
//! the small HTML page that carries it to the client.

use http::StatusCode;

use super::metrics::Refusal;
use super::wire::CopyError;
use crate::state::GearState;

/// Most bytes a refused body is read for (and dropped) before the
/// connection closes, when its length is not known.
pub(super) const DRAIN_BYTES: u64 = 64 << 20;

/// An answer the frontend gives itself instead of a gear's: decided by a
/// phase of the request pipeline, counted and written by the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    /// What the metrics count it as.
    pub why: Refusal,
    pub status: StatusCode,
    pub title: &'static str,
    /// The page's text, HTML (anything from a client or a gear escaped).
    pub html: String,
    /// Body bytes the client announced and nobody read: read and dropped
    /// (up to this many) before the connection closes.
    pub pending: Option<u64>,
    /// Where a redirect sends the client.
    pub location: Option<String>,
    /// `Strict-Transport-Security` max-age, on an answer over TLS for a gear
    /// that asks for it.
    pub hsts: Option<u64>,
}

impl Refused {
    fn new(why: Refusal, status: StatusCode, title: &'static str, html: String) -> Refused {
        Refused {
            why,
            status,
            title,
            html,
            pending: None,
            location: None,
            hsts: None,
        }
    }

    /// The same answer, with `pending` body bytes left to drain.
    pub fn pending(mut self, pending: Option<u64>) -> Refused {
        self.pending = pending;
        self
    }

    /// A request without a host name.
    pub fn no_host() -> Refused {
        Refused::new(
            Refusal::BadRequest,
            StatusCode::BAD_REQUEST,
            "No host name",
            "The request names no host. Gears are reached by name, e.g. \
             <code>http://&lt;gear&gt;-&lt;namespace&gt;.DOMAIN/</code>."
                .into(),
        )
    }

    /// A request that could be read more than one way, or not at all.
    pub fn bad_request(why: &str) -> Refused {
        Refused::new(
            Refusal::BadRequest,
            StatusCode::BAD_REQUEST,
            "Bad request",
            format!(
                "The request cannot be passed on: {}. Send one request per message, \
                 framed one way, with one <code>Host</code> naming the gear.",
                escape(why)
            ),
        )
    }

    /// A host name no gear answers to.
    pub fn unknown_host(host: &str, domain: &str) -> Refused {
        Refused::new(
            Refusal::UnknownHost,
            StatusCode::NOT_FOUND,
            "No such gear",
            format!(
                "No gear answers to <code>{}</code> on this node. Gears are reached at \
                 <code>&lt;gear&gt;-&lt;namespace&gt;.{}</code> or at an alias their owner \
                 added with <code>gear alias add</code>.",
                escape(host),
                escape(domain)
            ),
        )
    }

    /// `CONNECT`: the frontend is no forward proxy.
    pub fn not_a_proxy() -> Refused {
        Refused::new(
            Refusal::BadRequest,
            StatusCode::METHOD_NOT_ALLOWED,
            "Not a forward proxy",
            "The frontend routes requests to gears by name; it does not open tunnels.".into(),
        )
    }

    /// A gear that is not running and is not woken by requests.
    pub fn not_running(label: &str, state: GearState) -> Refused {
        Refused::new(
            Refusal::NotRunning,
            StatusCode::SERVICE_UNAVAILABLE,
            "Gear not running",
            format!(
                "Gear <code>{}</code> {}.",
                escape(label),
                not_running(state)
            ),
        )
    }

    /// A gear of a node cut off from its cluster, which serves none until it
    /// is back (another node may be running the gear by now).
    pub fn fenced(label: &str) -> Refused {
        Refused::new(
            Refusal::NotRunning,
            StatusCode::SERVICE_UNAVAILABLE,
            "Node cut off",
            format!(
                "Gear <code>{}</code> is not served by this node while it is cut off from its cluster; \
                 try again in a moment.",
                escape(label)
            ),
        )
    }

    /// An idle gear that did not start again for the request.
    pub fn wake_failed(label: &str, error: &str) -> Refused {
        Refused::new(
            Refusal::WakeFailed,
            StatusCode::SERVICE_UNAVAILABLE,
            "Gear could not be woken",
            format!(
                "Gear <code>{}</code> was idle and did not start again: {}. \
                 Its owner can see why with <code>gear logs</code> and start it with \
                 <code>gear start</code>.",
                escape(label),
                escape(error)
            ),
        )
    }

    /// A gear idled while the request waited to be passed on, that did not
    /// start again.
    pub fn idled_not_woken(label: &str, error: &str) -> Refused {
        Refused::new(
            Refusal::WakeFailed,
            StatusCode::SERVICE_UNAVAILABLE,
            "Gear could not be woken",
            format!(
                "Gear <code>{}</code> was idled and did not start again: {}.",
                escape(label),
                escape(error)
            ),
        )
    }

    /// A body over the node's limit.
    pub fn too_large(limit: u64) -> Refused {
        Refused::new(
            Refusal::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            format!("This node accepts request bodies of at most {limit} bytes."),
        )
    }

    /// A chunked request body that breaks its framing.
    pub fn bad_chunks(e: &CopyError) -> Refused {
        let why = match e {
            CopyError::Framing(why) => escape(why),
            _ => "it ended early".into(),
        };
        Refused::new(
            Refusal::BadRequest,
            StatusCode::BAD_REQUEST,
            "Bad request",
            format!("The request's chunked body is malformed: {why}."),
        )
    }

    /// No connection to the gear.
    pub fn not_answering(label: &str, error: &str) -> Refused {
        Refused::new(
            Refusal::BadGateway,
            StatusCode::BAD_GATEWAY,
            "Gear not answering",
            format!(
                "Gear <code>{}</code> does not accept connections: {}.",
                escape(label),
                escape(error)
            ),
        )
    }

    /// A request another node passed on for a gear this node does not hold
    /// either: the two nodes' views of the cluster differ for a moment (the
    /// gear is moving); the request is not passed on a second time.
    pub fn moving(label: &str, owner: &str) -> Refused {
        Refused::new(
            Refusal::NotRunning,
            StatusCode::SERVICE_UNAVAILABLE,
            "Gear moving",
            format!(
                "Gear <code>{}</code> is moving between nodes (now held by {}); try again in a moment.",
                escape(label),
                escape(owner)
            ),
        )
    }

    /// The gear's connection failed while the request was written.
    pub fn broke(label: &str, error: &str) -> Refused {
        Refused::new(
            Refusal::BadGateway,
            StatusCode::BAD_GATEWAY,
            "Gear answered badly",
            format!(
                "Gear <code>{}</code> broke the connection: {}.",
                escape(label),
                escape(error)
            ),
        )
    }

    /// No answer head within the response timeout.
    pub fn too_slow(label: &str, timeout: std::time::Duration) -> Refused {
        Refused::new(
            Refusal::Timeout,
            StatusCode::GATEWAY_TIMEOUT,
            "Gear too slow",
            format!(
                "Gear <code>{}</code> did not answer within {}.",
                escape(label),
                humantime::format_duration(timeout)
            ),
        )
    }

    /// An answer that is not HTTP, or none before the connection closed.
    pub fn bad_answer(label: &str, why: &str) -> Refused {
        Refused::new(
            Refusal::BadGateway,
            StatusCode::BAD_GATEWAY,
            "Gear answered badly",
            format!(
                "Gear <code>{}</code> broke the connection or sent something that \
                 is not HTTP: {}.",
                escape(label),
                escape(why)
            ),
        )
    }

    /// `101 Switching Protocols` to a request that asked for no upgrade.
    pub fn switched_unasked(label: &str) -> Refused {
        Refused::new(
            Refusal::BadGateway,
            StatusCode::BAD_GATEWAY,
            "Gear answered badly",
            format!(
                "Gear <code>{}</code> switched protocols unasked.",
                escape(label)
            ),
        )
    }

    /// An answer whose length cannot be told.
    pub fn bad_length(label: &str) -> Refused {
        Refused::new(
            Refusal::BadGateway,
            StatusCode::BAD_GATEWAY,
            "Gear answered badly",
            format!(
                "Gear <code>{}</code> sent an answer with a broken Content-Length.",
                escape(label)
            ),
        )
    }

    /// A request head the frontend cannot read.
    pub fn malformed_head(why: &str) -> Refused {
        Refused::new(
            Refusal::BadRequest,
            StatusCode::BAD_REQUEST,
            "Bad request",
            format!(
                "The request is not HTTP/1.1 the frontend can read: {}.",
                escape(why)
            ),
        )
    }

    /// A request head over the limits.
    pub fn head_too_large(max_head: usize) -> Refused {
        Refused::new(
            Refusal::BadRequest,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request head too large",
            format!(
                "The frontend reads request heads of at most {max_head} bytes and {} headers.",
                gearhost_http::head::MAX_REQUEST_HEADERS
            ),
        )
    }

    /// The whole response: the page, for a `HEAD` request without its body.
    pub fn page(&self, head_only: bool, close: bool) -> Vec<u8> {
        let mut extra = String::new();
        if let Some(location) = &self.location {
            extra.push_str(&format!("location: {location}\r\n"));
        }
        if let Some(age) = self.hsts {
            extra.push_str(&format!("strict-transport-security: max-age={age}\r\n"));
        }
        page_with(
            self.status,
            self.title,
            &self.html,
            &extra,
            head_only,
            close,
        )
    }

    /// A plain-HTTP request for a gear that asks for HTTPS: 308 to the same
    /// URL over HTTPS (308 keeps the method and body, unlike 301).
    pub fn redirect(location: String) -> Refused {
        let html = format!(
            "This gear is served over HTTPS: <a href=\"{0}\">{0}</a>.",
            escape(&location)
        );
        let mut r = Refused::new(
            Refusal::Redirected,
            StatusCode::PERMANENT_REDIRECT,
            "Moved to HTTPS",
            html,
        );
        r.location = Some(location);
        r
    }
}

/// Text made safe inside HTML.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A whole response of the frontend's own: a small HTML page saying why.
pub(super) fn page(
    status: StatusCode,
    title: &str,
    html: &str,
    head_only: bool,
    close: bool,
) -> Vec<u8> {
    page_with(status, title, html, "", head_only, close)
}

/// [`page`] with `extra` header lines (each ending in CRLF).
fn page_with(
    status: StatusCode,
    title: &str,
    html: &str,
    extra: &str,
    head_only: bool,
    close: bool,
) -> Vec<u8> {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{} {title}</title></head>\n\
         <body><h1>{title}</h1><p>{html}</p><hr><p>gearhost</p></body></html>\n",
        status.as_u16()
    );
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        out.push_str("retry-after: 5\r\n");
    }
    out.push_str(extra);
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    out.into_bytes()
}

/// What the not-running page says about a gear in `state`.
fn not_running(state: GearState) -> &'static str {
    match state {
        GearState::Starting | GearState::Building => "is starting; try again in a moment",
        GearState::Stopping => "is stopping",
        GearState::Failed => {
            "has failed; its owner can see why with <code>gear status</code> and <code>gear logs</code>"
        }
        GearState::New => "has nothing deployed yet; deploy with <code>gear deploy</code>",
        _ => "is stopped; start it with <code>gear start</code>",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_a_whole_response_and_head_leaves_its_body_out() {
        let r = Refused::unknown_host("<b>x</b>.example", "example");
        let full = String::from_utf8(r.page(false, false)).expect("test value");
        let (head, body) = full.split_once("\r\n\r\n").expect("test value");
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(!head.contains("connection: close"));
        // what the client named is escaped, never markup
        assert!(body.contains("&lt;b&gt;x&lt;/b&gt;.example"), "{body}");
        assert!(!body.contains("<b>x"));
        let head_only = String::from_utf8(r.page(true, true)).expect("test value");
        assert!(
            head_only.ends_with("connection: close\r\n\r\n"),
            "{head_only}"
        );
        assert!(head_only.contains(&format!("content-length: {}", body.len())));
    }

    #[test]
    fn unavailable_pages_ask_to_retry() {
        let page = String::from_utf8(
            Refused::not_running("app-ns", GearState::Stopped).page(false, false),
        )
        .expect("test value");
        assert!(page.starts_with("HTTP/1.1 503 "));
        assert!(page.contains("retry-after: 5\r\n"));
        assert!(page.contains("start it with <code>gear start</code>"));
        let other =
            String::from_utf8(Refused::too_large(10).page(false, false)).expect("test value");
        assert!(!other.contains("retry-after"));
        assert!(other.starts_with("HTTP/1.1 413 "));
    }
}
