//! The request pipeline: one client connection, and each request on it in
//! phases, each a function with a clear input and output:
//!
//! 1. **frame** ([`frame`]): the request head is read (within the header
//!    timeout and [`MAX_HEAD`]) and checked: one request, framed one way,
//!    naming one host. Out: a [`Framed`] request, or a 400.
//! 2. **route** ([`enter`]): the authority the gear will see as its `Host`
//!    leads to a [`Target`] (a gear here, or the node that holds it), or a
//!    404; a gear moving to another node is waited for and its name looked
//!    up again. The request is then counted as the gear's ([`admit`]): its
//!    access log line and the head for the gear are written from the
//!    client's bytes.
//! 3. **wake** ([`forward::wake`]): an idle gear is woken and the request
//!    waits for it; one being idled is waited out. Out: the request counted
//!    as being forwarded, or a 503.
//! 4. **forward** ([`forward::forward`]): the head and body go to the gear
//!    over a pooled or new connection while its answer's head is awaited.
//!    Out: the gear's connection with the answer's head read, or a
//!    413/502/504.
//! 5. **relay** ([`relay::relay`]): the answer's head is written anew for
//!    the client and its body passed on (or both sides spliced after an
//!    upgrade); the gear's connection goes back to its pool when it can
//!    carry another request.
//!
//! A phase that refuses returns a [`Refused`]: [`request`] counts it and
//! writes its page. The node is reached only through [`Backend`], so the
//! tests below drive this code over loopback sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::tls::ClientStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use gearhost_http::fields::facts;
use gearhost_http::head::MAX_HEADERS;
use gearhost_http::request::{BadRequest, Checked, check_request};

use super::backend::{Backend, BackendGear, MAX_HOPS, Relayed};
use super::headers::{self, MAX_HEAD, Method};
use super::pages::Refused;
use super::stall::{Bounded, SendStall};
use super::wire::{self, HeadError, ReadBuf, RequestHead, ResponseHead, Upstream};
use super::{Target, access};

mod forward;
mod relay;
#[cfg(test)]
mod tests;

/// Longest time spent reading a refused body to its end.
pub(super) const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Serve one client connection to its end, counted.
pub(super) async fn serve<B: Backend>(backend: &B, stream: ClientStream, peer: SocketAddr) {
    let front = backend.frontend();
    front.connections.fetch_add(1, Ordering::Relaxed);
    front.connections_total.fetch_add(1, Ordering::Relaxed);
    connection(backend, stream, peer).await;
    front.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Serve one HTTP/2 stream: `head` is its request written as an HTTP/1.1
/// head (by `super::http2`, into a buffer of the worker's spares) and
/// `parsed` where its parts are, as the writer placed them; the stream
/// gives the body and takes the answer, `client` is the connection's peer
/// address. Its connection is counted once, by `super::http2`.
pub(super) async fn serve_stream<B: Backend>(
    backend: &B,
    stream: super::http2::H2Stream,
    head: Vec<u8>,
    parsed: RequestHead,
    client: Arc<str>,
) {
    let parts = SPARE_PARTS.with_borrow_mut(Vec::pop).unwrap_or_default();
    let stall = SendStall::new(backend.limits().send_timeout);
    let mut c = Client::with(ClientStream::Http2(stream), client, parts, stall);
    c.buf.data = head;
    // the head is not parsed again: the writer's ranges are the parser's
    // (its unit tests and fuzz target hold it to that; debug builds check)
    debug_assert!(
        parsed.headers.len() > MAX_HEADERS || {
            let mut again = RequestHead::default();
            gearhost_http::head::parse_request_within(&c.buf.data, &mut again, MAX_HEADERS)
                .is_ok_and(|whole| whole && again == parsed)
        }
    );
    let fields = std::mem::replace(&mut c.head, parsed).headers;
    give_fields(fields);
    if let Err(e) = wire::handed_request_head(&c.buf.data, &c.head, MAX_HEAD) {
        refuse_unreadable(backend, &mut c, e).await;
    } else if let Next::Drain(left) = counted_request(backend, &mut c).await {
        drain(backend, &mut c, left).await;
    }
    // the head's buffer (from the worker's spares) goes back for the next
    // stream, as a connection's does between its requests, and so do the
    // client's other buffers
    c.buf.release();
    wire::give_buffer(std::mem::take(&mut c.body_out));
    let parts = c.into_parts();
    SPARE_PARTS.with_borrow_mut(|spare| {
        if spare.len() < SPARE_PARTS_MAX {
            spare.push(parts);
        }
    });
}

/// A client's buffers apart from its reading buffer: an HTTP/2 stream is a
/// client of its own, so each stream would otherwise allocate them anew.
struct Parts {
    request_fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    response_fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    to_gear: Vec<u8>,
    to_client: Vec<u8>,
}

impl Default for Parts {
    fn default() -> Parts {
        // room for a usual head's fields and a usual head at once
        const FIELDS: usize = 16;
        Parts {
            request_fields: Vec::with_capacity(FIELDS),
            response_fields: Vec::with_capacity(FIELDS),
            to_gear: Vec::with_capacity(1024),
            to_client: Vec::with_capacity(1024),
        }
    }
}

/// A head's field ranges.
type Fields = Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>;

thread_local! {
    /// Field lists for the HTTP/2 request writer, which hands its list
    /// with each stream's head and takes one of these for the next.
    static SPARE_FIELDS: std::cell::RefCell<Vec<Fields>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty field list, from this thread's spares.
pub(in crate::frontend) fn spare_fields() -> Fields {
    SPARE_FIELDS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(16))
}

/// Keeps a field list for [`spare_fields`] (a large one is let go).
fn give_fields(mut fields: Fields) {
    if fields.capacity() == 0 || fields.capacity() > 256 {
        return;
    }
    fields.clear();
    SPARE_FIELDS.with_borrow_mut(|spare| {
        if spare.len() < SPARE_PARTS_MAX {
            spare.push(fields);
        }
    });
}

/// Most spare [`Parts`] a thread keeps.
const SPARE_PARTS_MAX: usize = 256;
/// A buffer larger than this is not kept as a spare.
const SPARE_PARTS_LARGEST: usize = 64 * 1024;

thread_local! {
    /// The parts of HTTP/2 streams' clients that ended, for the next ones.
    static SPARE_PARTS: std::cell::RefCell<Vec<Parts>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Serves the request whose head is in `c.head`, counted as in flight
/// while it is served (see `drain`).
async fn counted_request<B: Backend>(backend: &B, c: &mut Client) -> Next {
    c.in_flight = Some(super::drain::request());
    let next = request(backend, c).await;
    c.in_flight = None;
    count_stall(backend, c);
    next
}

/// Counts a request cut off by the send deadline.
fn count_stall<B: Backend>(backend: &B, c: &mut Client) {
    if c.stall.take_fired() {
        let stalls = &backend.frontend().send_stalls;
        stalls.fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers a request head that could not be read, when it gets an answer
/// (a client that went away or never finished its head gets none).
async fn refuse_unreadable<B: Backend>(backend: &B, c: &mut Client, e: HeadError) {
    if let Some(refused) = unreadable(e) {
        backend.frontend().stats.refused(refused.why);
        let _ = c.out().write_all(&refused.page(false, true)).await;
        count_stall(backend, c);
    }
}

/// The refusal for a request head that could not be read, if it gets one
/// (a client that went away or never finished its head gets none).
fn unreadable(e: HeadError) -> Option<Refused> {
    match e {
        HeadError::Closed | HeadError::Io(_) | HeadError::Timeout => None,
        HeadError::Malformed(e) => Some(Refused::malformed_head(&e)),
        HeadError::TooLarge => Some(Refused::head_too_large(MAX_HEAD)),
    }
}

/// A client connection's state that lives from one request to the next.
struct Client {
    stream: ClientStream,
    sendfd: wire::SendFd,
    buf: ReadBuf,
    head: RequestHead,
    /// The peer's address, as `X-Forwarded-For` gives it.
    forwarded_for: Arc<str>,
    /// The head (and first body bytes) going to the gear.
    to_gear: Vec<u8>,
    /// The head (and first body bytes) going back to the client.
    to_client: Vec<u8>,
    /// Request body bytes on their way to the gear.
    body_out: Vec<u8>,
    response: ResponseHead,
    /// Counted as a request in flight (see `drain`).
    in_flight: Option<super::drain::Counted>,
    /// The deadline on writes to the client.
    stall: SendStall,
}

impl Client {
    fn new(stream: ClientStream, forwarded_for: Arc<str>, stall: SendStall) -> Client {
        Client::with(stream, forwarded_for, Parts::default(), stall)
    }

    fn with(
        stream: ClientStream,
        forwarded_for: Arc<str>,
        parts: Parts,
        stall: SendStall,
    ) -> Client {
        Client {
            stream,
            sendfd: wire::SendFd::default(),
            buf: ReadBuf::default(),
            head: RequestHead {
                headers: parts.request_fields,
                ..RequestHead::default()
            },
            forwarded_for,
            to_gear: parts.to_gear,
            to_client: parts.to_client,
            body_out: Vec::new(),
            response: ResponseHead {
                headers: parts.response_fields,
                ..ResponseHead::default()
            },
            in_flight: None,
            stall,
        }
    }

    /// The client's stream, its writes under the send deadline.
    fn out(&mut self) -> Bounded<'_, ClientStream> {
        Bounded::new(&mut self.stream, &mut self.stall)
    }

    /// The client's buffers, emptied, for another client (large ones are
    /// let go).
    fn into_parts(self) -> Parts {
        let keep = |mut v: Vec<u8>| {
            v.clear();
            if v.capacity() > SPARE_PARTS_LARGEST {
                Vec::with_capacity(1024)
            } else {
                v
            }
        };
        let mut request_fields = self.head.headers;
        let mut response_fields = self.response.headers;
        request_fields.clear();
        response_fields.clear();
        Parts {
            request_fields,
            response_fields,
            to_gear: keep(self.to_gear),
            to_client: keep(self.to_client),
        }
    }
}

/// What happens to a client connection after a request.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close it.
    Close,
    /// Close it after reading and dropping up to this many bytes.
    Drain(u64),
}

/// Polls `fut` once: its output if it is ready at once, else `None` (it can
/// be polled again later).
async fn poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
    let mut fut = fut;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Serves the requests of one client connection until it closes, fails,
/// sends no whole head within the header timeout, or a request ends it.
async fn connection<B: Backend>(backend: &B, mut stream: ClientStream, peer: SocketAddr) {
    if let Some(tcp) = stream.tcp() {
        let _ = tcp.set_nodelay(true);
    }
    let limits = backend.limits();
    let stall = SendStall::new(limits.send_timeout);
    let mut c = Client::new(stream, peer.ip().to_string().into(), stall);
    // counted by a drain until its first head is in
    let mut fresh = Some(super::drain::fresh());
    let header_timeout = limits.header_timeout;
    // one timer per connection, moved for each request
    let timer = tokio::time::sleep(header_timeout);
    tokio::pin!(timer);
    loop {
        // a connection waiting for its next request holds no buffer
        c.buf.release();
        wire::give_buffer(std::mem::take(&mut c.body_out));
        let read = {
            let (stream, buf, parsed) = (&mut c.stream, &mut c.buf, &mut c.head);
            let head = async move {
                if buf.data.is_empty() {
                    // take a buffer only once there is something to read
                    stream.readable().await.map_err(HeadError::Io)?;
                }
                wire::read_request_head(stream, buf, parsed, MAX_HEAD).await
            };
            tokio::pin!(head);
            // a head already buffered (pipelining) needs no timer
            match poll_once(head.as_mut()).await {
                Some(r) => r,
                None => {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + header_timeout);
                    tokio::select! {
                        r = head => r,
                        () = timer.as_mut() => Err(HeadError::Timeout),
                    }
                }
            }
        };
        drop(fresh.take());
        if let Err(e) = read {
            refuse_unreadable(backend, &mut c, e).await;
            return;
        }
        match counted_request(backend, &mut c).await {
            // a draining node takes no further request on the connection
            Next::KeepAlive if super::drain::draining() => return,
            Next::KeepAlive => {}
            Next::Close => return,
            Next::Drain(left) => {
                drain(backend, &mut c, left).await;
                return;
            }
        }
    }
}

/// After a refused body: reads (and drops) what the client still sends, so
/// that it reads the answer instead of a reset.
async fn drain<B: Backend>(backend: &B, c: &mut Client, left: u64) {
    let shut = c.out().shutdown().await;
    count_stall(backend, c);
    if shut.is_err() {
        return;
    }
    let stream = &mut c.stream;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut left = left.min(super::pages::DRAIN_BYTES);
        let mut sink = vec![0u8; 16 * 1024];
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n as u64),
            }
        }
    })
    .await;
}

/// Serves one request whose head is in `c.head`, phase by phase (see the
/// module's description).
async fn request<B: Backend>(backend: &B, c: &mut Client) -> Next {
    let start = Instant::now();
    let method = Method::of(&c.buf.data[c.head.method.clone()]);
    let framed = match frame(c, method) {
        Ok(framed) => framed,
        Err(refused) => {
            backend.frontend().stats.refused(refused.why);
            c.buf.consume(c.head.len);
            return answer(c, &refused, method.head, false).await;
        }
    };
    // an ACME server validating a name the node orders a certificate for
    if let Some(answer) = acme_answer(backend, c) {
        c.buf.consume(c.head.len);
        let keep = framed.keep && framed.unread.is_none();
        if c.out().write_all(&answer).await.is_err() || !keep {
            return Next::Close;
        }
        return Next::KeepAlive;
    }
    let authority = &c.buf.data[framed.checked.authority.clone()];
    let (target, entering) = match enter(backend, authority).await {
        Ok(entered) => entered,
        Err(refused) => {
            let refused = refused.pending(framed.unread);
            let stats = &backend.frontend().stats;
            stats.refused(refused.why);
            stats.response(refused.status, start.elapsed());
            c.buf.consume(c.head.len);
            return answer(c, &refused, method.head, framed.keep).await;
        }
    };
    // a request another node of the cluster passed on: the client is the one
    // it names, over the scheme it names, when the field is signed for it
    let relayed = framed
        .checked
        .facts
        .relay
        .clone()
        .and_then(|field| backend.relayed(&c.buf.data[field], authority));
    let secure = relayed.as_ref().map_or(c.stream.secure(), |r| r.secure);
    // a plain-HTTP request for a gear that asks for HTTPS goes there, but
    // for ACME's HTTP-01 challenges, which must stay plain
    let redirect = match target.https.redirect_port {
        Some(port) if !secure => https_location(c, &framed.checked, port),
        _ => None,
    };
    let mut ex = admit(c, framed, &target, start, relayed.as_ref(), secure);
    drop(entering);
    // passed between nodes a bounded number of times (see `MAX_HOPS`)
    if let Some(owner) = target.gear.owner()
        && relayed.is_some_and(|r| r.hops >= MAX_HOPS)
    {
        let refused = Refused::moving(&target.label, owner).pending(ex.framed.unread);
        return ex.refuse(c, refused).await;
    }
    if secure {
        ex.hsts = target.https.hsts;
    }
    if let Some(location) = redirect {
        let refused = Refused::redirect(location).pending(ex.framed.unread);
        return ex.refuse(c, refused).await;
    }
    if method.connect {
        let refused = Refused::not_a_proxy().pending(ex.framed.unread);
        return ex.refuse(c, refused).await;
    }
    let _forwarding = match forward::wake(backend, &target, ex.framed.unread).await {
        Ok(forwarding) => forwarding,
        Err(refused) => return ex.refuse(c, refused).await,
    };
    let answered = match forward::forward(backend, c, &target, &mut ex).await {
        Ok(answered) => answered,
        Err(forward::Halt::Refuse(refused)) => return ex.refuse(c, refused).await,
        Err(forward::Halt::Close) => return Next::Close,
    };
    relay::relay(c, &target, ex, answered).await
}

/// Longest time a request waits for its gear to move to another node.
const MOVE_WAIT: Duration = Duration::from_secs(60);

/// A request between its route and its admission, counted in its gear's
/// `entering` (see `GearFront::hold_for_move`).
struct Entering<G: BackendGear>(Arc<Target<G>>);

impl<G: BackendGear> Drop for Entering<G> {
    fn drop(&mut self) {
        self.0.gear.front().entering.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Phase 2, route: the gear (or the node that holds it) `authority` leads
/// to, counted as entering; a gear that is moving to another node is waited
/// for, and the name looked up again once it has moved. Out: the target, or
/// the refusal (unknown host, or a move that took too long).
async fn enter<B: Backend>(
    backend: &B,
    authority: &[u8],
) -> Result<(Arc<Target<B::Gear>>, Entering<B::Gear>), Refused> {
    let routes = &backend.frontend().routes;
    let mut target = routes
        .route(authority)
        .map_err(|host| Refused::unknown_host(&host, backend.domain()))?;
    let deadline = tokio::time::Instant::now() + MOVE_WAIT;
    loop {
        let front = target.gear.front();
        front.entering.fetch_add(1, Ordering::SeqCst);
        let entering = Entering(target.clone());
        let Some(mut moved) = front.moving() else {
            return Ok((target, entering));
        };
        drop(entering);
        let waited = tokio::time::timeout_at(deadline, moved.wait_for(|done| *done)).await;
        if waited.is_err() {
            return Err(Refused::moving(&target.label, "another node"));
        }
        target = routes
            .route(authority)
            .map_err(|host| Refused::unknown_host(&host, backend.domain()))?;
    }
}

/// The answer to an ACME HTTP-01 validation request
/// (`GET /.well-known/acme-challenge/<token>`) for a token the node is
/// answering: the key authorization as plain text.
fn acme_answer<B: Backend>(backend: &B, c: &Client) -> Option<Vec<u8>> {
    let target = &c.buf.data[c.head.target.clone()];
    let token = target.strip_prefix(b"/.well-known/acme-challenge/")?;
    if &c.buf.data[c.head.method.clone()] != b"GET" || token.is_empty() {
        return None;
    }
    let key = backend.acme_challenge(std::str::from_utf8(token).ok()?)?;
    Some(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncache-control: no-store\r\n\
             content-length: {}\r\n\r\n{key}",
            key.len()
        )
        .into_bytes(),
    )
}

/// Where a plain-HTTP request goes over HTTPS on `port`: the same host and
/// target; none for an ACME HTTP-01 challenge (`/.well-known/acme-challenge/`).
fn https_location(c: &Client, checked: &Checked, port: u16) -> Option<String> {
    let host = gearhost_http::request::host_name(&c.buf.data[checked.authority.clone()])?;
    let target = String::from_utf8_lossy(&c.buf.data[c.head.target.clone()]);
    // an absolute URL in the request line: keep its path and query
    let path = match target.find("://") {
        Some(at) => {
            let rest = &target[at + 3..];
            rest.find('/')
                .map_or("/", |slash| &rest[slash..])
                .to_string()
        }
        None => target.into_owned(),
    };
    if path.starts_with("/.well-known/acme-challenge/") {
        return None;
    }
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    Some(format!("https://{host}{port}{path}"))
}

/// A request that passed the frame phase.
#[derive(Debug)]
struct Framed {
    checked: Checked,
    method: Method,
    client_minor: u8,
    /// The client connection stays open after the answer (were nothing to
    /// end it).
    keep: bool,
    /// Body bytes to read and drop were the request refused before its body.
    unread: Option<u64>,
}

/// Phase 1, frame: the head in `c` as one request, framed one way, naming
/// one host; else the 400 that says why (with the body left to drain, when
/// its framing is known).
fn frame(c: &Client, method: Method) -> Result<Framed, Refused> {
    match check_request(&c.buf.data, &c.head) {
        Ok(checked) => Ok(Framed {
            keep: headers::client_keeps_alive(c.head.minor, &checked.facts),
            unread: headers::unread_body(checked.framing),
            checked,
            method,
            client_minor: c.head.minor,
        }),
        Err(why) => {
            let f = facts(&c.buf.data, &c.head.headers);
            let refused = if why == BadRequest::NoHost {
                Refused::no_host()
            } else {
                Refused::bad_request(&why.to_string())
            };
            Err(refused.pending(headers::unread_after_refusal(why, &f)))
        }
    }
}

/// A routed request, from its admission to its end.
struct Exchange<G: BackendGear> {
    framed: Framed,
    start: Instant,
    finish: Finish<G>,
    /// `Strict-Transport-Security` max-age for the answer (over TLS).
    hsts: Option<u64>,
}

/// Between route and wake: the request counts as the gear's (in flight,
/// activity); its access log line and the head for the gear are written
/// from the client's bytes, and then the head is done with.
///
/// `relayed` says who the client is when another node passed the request on
/// (else it is the connection's peer), and `secure` whether it came over
/// HTTPS.
fn admit<G: BackendGear>(
    c: &mut Client,
    framed: Framed,
    target: &Target<G>,
    start: Instant,
    relayed: Option<&Relayed>,
    secure: bool,
) -> Exchange<G> {
    let front = target.gear.front();
    front.active.fetch_add(1, Ordering::SeqCst);
    front.touch_at(start);
    let client = relayed.map_or(&*c.forwarded_for, |r| r.client.as_str());
    let mut line = String::with_capacity(160);
    let split = access::request_part(
        &mut line,
        client,
        &c.buf.data,
        &c.head,
        framed.checked.facts.user_agent.clone(),
        c.stream.http2(),
    );
    headers::write_request_head(
        &c.buf.data,
        &c.head,
        &framed.checked,
        client,
        secure,
        &mut c.to_gear,
    );
    if target.gear.owner().is_some() {
        // the line goes before the blank line that ends the head
        c.to_gear.truncate(c.to_gear.len() - 2);
        let authority = &c.buf.data[framed.checked.authority.clone()];
        let from = Relayed {
            client: client.to_string(),
            secure,
            hops: relayed.map_or(1, |r| r.hops.saturating_add(1)),
        };
        target.gear.relay_field(&from, authority, &mut c.to_gear);
        c.to_gear.extend_from_slice(b"\r\n");
    }
    c.buf.consume(c.head.len);
    Exchange {
        framed,
        start,
        hsts: None,
        finish: Finish {
            gear: target.gear.clone(),
            line,
            split,
            status: 0,
            start,
            bytes: 0,
            upstream: None,
            _in_flight: wire::InFlight::begin(),
        },
    }
}

impl<G: BackendGear> Exchange<G> {
    /// Answers the routed request with the frontend's own page, counted as
    /// the gear's.
    async fn refuse(&mut self, c: &mut Client, refused: Refused) -> Next {
        let stats = &self.finish.gear.front().stats;
        stats.refused(refused.why);
        stats.response(refused.status, self.start.elapsed());
        self.finish.status = refused.status.as_u16();
        let refused = Refused {
            hsts: self.hsts,
            ..refused
        };
        answer(c, &refused, self.framed.method.head, self.framed.keep).await
    }
}

/// Writes a page of the frontend's own to the client, and says what happens
/// to the connection: a body the request announced and nobody read is
/// drained before the connection closes.
async fn answer(c: &mut Client, refused: &Refused, head_only: bool, keep: bool) -> Next {
    let close = !keep || refused.pending.is_some();
    if c.out()
        .write_all(&refused.page(head_only, close))
        .await
        .is_err()
    {
        return Next::Close;
    }
    match refused.pending {
        Some(left) => Next::Drain(left),
        None if close => Next::Close,
        None => Next::KeepAlive,
    }
}

/// What is left to do when a response is finished: the access log line,
/// the gear's activity, and returning its connection to the pool.
struct Finish<G: BackendGear> {
    gear: Arc<G>,
    /// `<peer> "<method> <path> <version>"` followed by ` "<user agent>"`,
    /// which starts at `split`.
    line: String,
    split: usize,
    status: u16,
    start: Instant,
    bytes: u64,
    /// The connection the response came on, returned when it can carry
    /// another request.
    upstream: Option<Upstream>,
    /// Counts the request as this worker's until it is logged.
    _in_flight: wire::InFlight,
}

impl<G: BackendGear> Drop for Finish<G> {
    fn drop(&mut self) {
        let front = self.gear.front();
        let now = Instant::now();
        if let Some(upstream) = self.upstream.take() {
            front.put(upstream, now);
        }
        access::record(
            &front.access,
            &self.line,
            self.split,
            self.status,
            self.bytes,
            now.saturating_duration_since(self.start),
        );
        front.active.fetch_sub(1, Ordering::Relaxed);
        front.touch_at(now);
    }
}
