//! HTTP/2 at the frontend: a TLS client that negotiates `h2` by ALPN is
//! served here, and each of its streams goes through the same request
//! pipeline as an HTTP/1.1 request: the stream's request is written as an
//! HTTP/1.1 head, which the pipeline takes as if read from a client
//! connection of its own ([`ClientStream::Http2`](super::tls::ClientStream::Http2));
//! it reads the body from the stream and writes the answer to it (`stream`:
//! no second task, no in-memory pipe). Every phase (frame, route, wake,
//! forward, relay), every limit and timeout, the access log, the counters
//! and the drain are therefore the pipeline's; only the framing is HTTP/2's.
//!
//! A hostile client is bounded: at most [`MAX_STREAMS`] streams at once,
//! header lists of [`MAX_HEADER_LIST`] bytes, flow-control windows of
//! [`STREAM_WINDOW`] and [`CONNECTION_WINDOW`], and a stream the client
//! resets drops its work at once. A connection whose client resets more
//! than [`RESET_BUDGET`] streams, and most of those it opens, is closed
//! with `ENHANCE_YOUR_CALM` (the "rapid reset" flood of CVE-2023-44487).
//!
//! Websockets stay on HTTP/1.1: extended CONNECT (RFC 8441) is not offered,
//! so a client that wants one opens an HTTP/1.1 connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{HeaderName, Request};
use tokio::io::{AsyncRead, AsyncWrite};

use super::backend::Backend;
use super::headers::MAX_HEAD;
use super::wire;

mod stream;
pub(crate) use stream::{H2Answer, H2Body, H2Stream};

/// Streams a client may have open at once on one connection.
pub(super) const MAX_STREAMS: u32 = 100;
/// Largest header list a client may send (the pipeline's head limit, with
/// room for HTTP/2's per-field overhead, so the pipeline answers 431).
pub(super) const MAX_HEADER_LIST: u32 = 2 * MAX_HEAD as u32;
/// A stream's receive window: request body bytes the client may send
/// before the gear has taken them.
pub(super) const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window.
pub(super) const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Answer bytes buffered per stream before the client makes room.
const SEND_BUFFER: usize = 256 * 1024;
/// Streams a client may reset before it counts as a flood (when it resets
/// most of what it opens).
pub(super) const RESET_BUDGET: usize = 200;
/// How often an idle connection looks whether the frontend drains.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// The HTTP/2 settings the frontend offers.
fn builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(256));
    b
}

/// A connection's streams, for the flood check.
#[derive(Debug, Default)]
struct Counts {
    opened: AtomicUsize,
    reset: AtomicUsize,
}

impl Counts {
    /// Whether the client resets streams as a flood does.
    fn flooding(&self) -> bool {
        let reset = self.reset.load(Ordering::Relaxed);
        reset > RESET_BUDGET && reset * 2 > self.opened.load(Ordering::Relaxed)
    }
}

/// Serves one HTTP/2 connection (after TLS and ALPN) to its end, counted as
/// one client connection; its streams are served concurrently in its task.
pub(super) async fn serve<B, T>(backend: Arc<B>, io: T, peer: SocketAddr)
where
    B: Backend,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let front = backend.frontend();
    front.connections.fetch_add(1, Ordering::Relaxed);
    front.connections_total.fetch_add(1, Ordering::Relaxed);
    connection(&backend, io, peer).await;
    backend
        .frontend()
        .connections
        .fetch_sub(1, Ordering::Relaxed);
}

async fn connection<B, T>(backend: &Arc<B>, io: T, peer: SocketAddr)
where
    B: Backend,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = backend.limits().header_timeout;
    // counted by a drain until the preface is in
    let fresh = super::drain::fresh();
    let mut conn = match tokio::time::timeout(header_timeout, builder().handshake(io)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "HTTP/2 preface failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "HTTP/2 preface timed out");
            return;
        }
    };
    drop(fresh);
    let counts = Arc::new(Counts::default());
    let client: Arc<str> = peer.ip().to_string().into();
    // the streams run in this task, beside the connection that carries
    // them: no task of their own to start, and no wake-up between tasks for
    // each frame
    let mut streams = FuturesUnordered::new();
    let mut closing = false;
    // an idle connection (no stream open) lasts as long as a kept-alive
    // HTTP/1.1 one waits for its next request
    let idle = tokio::time::sleep(header_timeout);
    tokio::pin!(idle);
    let mut poll = tokio::time::interval(DRAIN_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // the streams first: the answers they have ready go out together
            // at the connection's next flush, in as few TLS writes as can be
            biased;
            Some(()) = streams.next(), if !streams.is_empty() => {
                if counts.flooding() {
                    tracing::info!(%peer, "HTTP/2 client resets streams as a flood does: closing its connection");
                    conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                    closing = true;
                }
                if streams.is_empty() {
                    idle.as_mut().reset(tokio::time::Instant::now() + header_timeout);
                }
            }
            accepted = conn.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    counts.opened.fetch_add(1, Ordering::Relaxed);
                    streams.push(stream(backend.clone(), request, respond, client.clone(), counts.clone()));
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTP/2 connection failed");
                    break;
                }
                None => break,
            },
            () = idle.as_mut(), if streams.is_empty() && !closing => {
                conn.graceful_shutdown();
                closing = true;
            }
            _ = poll.tick(), if !closing => {
                // a draining node takes no further stream: GOAWAY, then the
                // streams open now are served
                if super::drain::draining() {
                    conn.graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
    // the connection is gone: what its streams still do ends with it
    drop(streams);
}

/// Serves one stream: its request as an HTTP/1.1 head for the pipeline,
/// which reads the body from the stream and writes its answer to it. A
/// reset by the client drops the pipeline's work for it.
async fn stream<B: Backend>(
    backend: Arc<B>,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    client: Arc<str>,
    counts: Arc<Counts>,
) {
    let (parts, body) = request.into_parts();
    let mut head = wire::take_buffer();
    let chunked = request_head(&parts, body.is_end_stream(), &mut head);
    let answer = H2Answer::new(respond, parts.method == http::Method::HEAD);
    let stream = H2Stream::new(body, chunked, answer.clone());
    let served = super::pipeline::serve_stream(&*backend, stream, head, client);
    tokio::select! {
        biased;
        () = served => answer.finish(),
        () = answer.reset() => {
            counts.reset.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Request fields that do not pass from HTTP/2 to HTTP/1.1 (the pseudo
/// fields become the request line and `Host`; HTTP/2 refuses the
/// connection-specific ones already).
fn passes(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host" | "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// Writes the HTTP/1.1 head of an HTTP/2 request into `out`: the request
/// line from `:method` and `:path`, `Host` from `:authority` (or the `Host`
/// field), the fields as they came (`Cookie` fields joined into one), and
/// `Transfer-Encoding: chunked` for a body of no declared length. Returns
/// whether the body is to be chunked.
fn request_head(parts: &http::request::Parts, ends: bool, out: &mut Vec<u8>) -> bool {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    if parts.method == http::Method::CONNECT {
        let authority = parts.uri.authority().map_or("", |a| a.as_str());
        out.extend_from_slice(authority.as_bytes());
    } else {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(if path.is_empty() { "/" } else { path }.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(http::header::HOST).map(|h| h.as_bytes()));
    if let Some(host) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    let mut cookies: Option<Vec<u8>> = None;
    for (name, value) in &parts.headers {
        if !passes(name) {
            continue;
        }
        if name == http::header::COOKIE {
            let joined = cookies.get_or_insert_with(Vec::new);
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(value.as_bytes());
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(cookies) = cookies {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(&cookies);
        out.extend_from_slice(b"\r\n");
    }
    let chunked = !ends && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(request: Request<()>, ends: bool) -> (String, bool) {
        let (parts, ()) = request.into_parts();
        let mut out = Vec::new();
        let chunked = request_head(&parts, ends, &mut out);
        (String::from_utf8(out).expect("text"), chunked)
    }

    #[test]
    fn a_request_without_body_becomes_a_plain_head() {
        let request = Request::get("https://app-ns.gears.test/a/b?c=d")
            .header("user-agent", "t/1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .expect("request");
        let (head, chunked) = head_of(request, true);
        assert!(!chunked);
        assert_eq!(
            head,
            "GET /a/b?c=d HTTP/1.1\r\nhost: app-ns.gears.test\r\nuser-agent: t/1\r\n\
             cookie: a=1; b=2\r\n\r\n"
        );
    }

    #[test]
    fn a_body_of_no_declared_length_is_chunked_and_a_declared_one_is_not() {
        let request = Request::post("https://h.test/up")
            .body(())
            .expect("request");
        let (head, chunked) = head_of(request, false);
        assert!(chunked);
        assert!(
            head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
        let request = Request::post("https://h.test/up")
            .header("content-length", "5")
            .body(())
            .expect("request");
        let (head, chunked) = head_of(request, false);
        assert!(!chunked);
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
    }

    #[test]
    fn host_comes_from_the_authority_and_connection_fields_do_not_pass() {
        let request = Request::get("https://right.test/")
            .header("host", "wrong.test")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (head, _) = head_of(request, true);
        assert!(head.contains("host: right.test\r\n"), "{head}");
        assert!(!head.contains("wrong.test"), "{head}");
        assert!(head.contains("te: trailers\r\n"), "{head}");
    }

    #[test]
    fn resets_count_as_a_flood_only_past_the_budget_and_most_streams() {
        let counts = Counts::default();
        counts.opened.store(10_000, Ordering::Relaxed);
        counts.reset.store(RESET_BUDGET + 1, Ordering::Relaxed);
        assert!(!counts.flooding(), "a few cancels among many answers");
        counts.opened.store(RESET_BUDGET + 10, Ordering::Relaxed);
        assert!(counts.flooding());
        counts.reset.store(RESET_BUDGET, Ordering::Relaxed);
        assert!(!counts.flooding(), "within the budget");
    }
}
