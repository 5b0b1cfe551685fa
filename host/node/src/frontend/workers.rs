//! Where client connections come from and which thread serves them: the
//! frontend's acceptor thread on the node's listener, its doors inside
//! gears, and its worker threads, each with a single-threaded runtime that
//! serves the connections it is handed to their end (nginx's worker model).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::{Frontend, gear, pipeline, wire};
use crate::node::{Gear, Node};
use gearhost_sys::lock::lock;

/// A connection accepted for a frontend worker, with its peer's address and,
/// for one a gear opened at its door, its place in the gear's connections.
pub(super) type Accepted = (
    std::net::TcpStream,
    SocketAddr,
    Option<crate::conns::Slot>,
    Tls,
);

/// Whether an accepted connection speaks TLS (it came to the `[https]` listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tls {
    /// Plain HTTP.
    No,
    /// TLS: the worker makes the handshake first.
    Yes,
}
/// A worker's queue of new connections.
pub(super) type WorkerQueue = tokio::sync::mpsc::UnboundedSender<Accepted>;

impl<G> Frontend<G> {
    /// Hands an accepted connection to the next frontend worker, in turn; a
    /// worker that is gone leaves the others the work. The connection comes
    /// back when there is no worker.
    fn dispatch(&self, connection: Accepted) -> Result<(), Accepted> {
        let mut workers = lock(&self.workers);
        let mut connection = connection;
        // counted until a worker takes it (see `drain`)
        super::drain::queued();
        while !workers.is_empty() {
            let i = self.next_worker.fetch_add(1, Ordering::Relaxed) % workers.len();
            match workers[i].send(connection) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    workers.remove(i);
                    connection = back.0;
                }
            }
        }
        super::drain::unqueued();
        Err(connection)
    }
}

/// Serve the frontend on `listener` with `http.workers` worker threads, each
/// with a single-threaded runtime of its own that serves the connections it
/// is given to the end, with its own connections to gears: a request never
/// changes threads (nginx's worker model). One acceptor thread hands
/// connections to the workers in turn, so they share the load evenly, and so
/// do the doors inside gears. Wake-ups and every other operation on gears
/// still run on the node's main runtime.
pub fn start_workers(node: &Arc<Node>, listener: std::net::TcpListener) -> std::io::Result<()> {
    listener.set_nonblocking(false)?;
    for i in 1..=node.config().frontend_workers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
        lock(&node.frontend.workers).push(tx);
        let node = node.clone();
        std::thread::Builder::new()
            .name(format!("gear-frontend-{i}"))
            .spawn(move || worker(&node, i, rx))?;
    }
    accept_thread(node, listener, Tls::No, "gear-frontend-accept")
}

/// Serve HTTPS on `listener` too, with the TLS configuration `tls`: its connections go
/// to the same workers, which make the handshake before serving them.
pub fn start_https(
    node: &Arc<Node>,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let _ = node.frontend.tls.set(tls);
    listener.set_nonblocking(false)?;
    accept_thread(node, listener, Tls::Yes, "gear-frontend-tls")
}

/// A thread that accepts connections on `listener` and hands them to the
/// workers in turn.
fn accept_thread(
    node: &Arc<Node>,
    listener: std::net::TcpListener,
    tls: Tls,
    name: &str,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(name.into()).spawn({
        let node = node.clone();
        move || {
            let _accepting = super::drain::acceptor();
            loop {
                // look now and then whether the frontend drains for a restart: the
                // connections not accepted then wait in the backlog for the next image
                if super::drain::draining() {
                    return;
                }
                let ready = {
                    use std::os::fd::AsFd;
                    let mut fds = [nix::poll::PollFd::new(
                        listener.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let wait = nix::poll::PollTimeout::try_from(
                        super::drain::ACCEPT_POLL.as_millis() as u32,
                    )
                    .unwrap_or(nix::poll::PollTimeout::NONE);
                    nix::poll::poll(&mut fds, wait).map_or(true, |n| n > 0)
                };
                if !ready || super::drain::draining() {
                    continue;
                }
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if node.frontend.dispatch((stream, peer, None, tls)).is_err() {
                            tracing::error!("every frontend worker is gone");
                            return;
                        }
                    }
                    Err(e) => {
                        // out of descriptors and the like: back off instead of spinning
                        tracing::warn!(error = %e, "frontend cannot accept a connection");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    })?;
    Ok(())
}

/// Frontend worker `i`: serves the connections `rx` hands it on a runtime
/// of its own, until the queue closes.
fn worker(node: &Arc<Node>, i: usize, mut rx: tokio::sync::mpsc::UnboundedReceiver<Accepted>) {
    gearhost_runtime::fsid::reset_thread();
    gear::set_worker(i);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .on_thread_start(gearhost_runtime::fsid::reset_thread)
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a frontend worker");
            return;
        }
    };
    runtime.block_on(async move {
        if node.config().frontend_batch_sends {
            match wire::start_batching() {
                Ok(batch) => lock(&node.frontend.batches).push(batch),
                Err(e) => tracing::warn!(
                    error = %e,
                    "frontend worker {i} sends one call per connection: this kernel does not allow io_uring here"
                ),
            }
        }
        while let Some((stream, peer, slot, tls)) = rx.recv().await {
            let held = super::drain::fresh();
            super::drain::unqueued();
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            match stream {
                Ok(stream) if tls == Tls::Yes => {
                    tokio::spawn(super::drain::holding(
                        held,
                        serve_tls(node.clone(), stream, peer),
                    ));
                }
                Ok(stream) => {
                    tokio::spawn(super::drain::holding(
                        held,
                        serve_connection(node.clone(), stream, peer, slot),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a frontend worker cannot take a connection")
                }
            }
        }
    });
}

/// Open the frontend's door inside a gear: a listener on
/// `127.0.0.1:<frontend port>` in the gear's network namespace that serves
/// exactly what the frontend serves, so code in a gear reaches other gears
/// (and itself) by their public names and nothing else: the node API is a
/// unix socket outside the gear's mount namespace, `/metrics` listens on the
/// host only, and every request is routed by name like any other.
///
/// A gear has a door while its processes may run: it is opened when the gear
/// starts (or its processes are taken back by a new node), kept while it is
/// frozen (thawed, it reaches other gears at once), and closed when it stops
/// ([`super::GearFront::close_door`]), so that gears that do not run hold no
/// descriptor or task in the node. Opening a door that is open does nothing.
/// Called under the gear's operation lock, as closing it is.
pub async fn open_door(node: &Node, gear: &Arc<Gear>) {
    let (Some(port), Some(shared)) = (node.frontend_addr().map(|a| a.port()), node.arc()) else {
        return;
    };
    if gear.front.has_door() {
        return;
    }
    let netns = gear.paths.netns();
    let listener = tokio::task::spawn_blocking(move || {
        let l = gearhost_sandbox::netns::listen(&netns, ([127, 0, 0, 1], port).into())?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .and_then(TcpListener::from_std);
    match listener {
        Ok(listener) => {
            let task = node.spawn_main(accept_loop(shared, listener, gear.clone()));
            if let Some(old) = lock(&gear.front.door).replace(task) {
                old.abort();
            }
        }
        Err(e) => {
            gear.hook_log.line(
                "frontend[node]",
                &format!(
                    "cannot listen on 127.0.0.1:{port} inside the gear, so it cannot reach gears by their public names: {e}"
                ),
            );
        }
    }
}

/// Accepts connections at a gear's door and hands them to the frontend's
/// workers, like the host's listener does (served here when there is none).
/// Each counts against the gear's connections (`crate::conns`); one over
/// the bounds is closed at once.
async fn accept_loop(node: Arc<Node>, listener: TcpListener, gear: Arc<Gear>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // out of descriptors and the like: back off instead of spinning
                tracing::warn!(error = %e, "frontend cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match node.admission.admit(&gear.conns) {
            Ok(slot) => slot,
            Err((why, first)) => {
                if first {
                    gear.hook_log.line(
                        "frontend[node]",
                        &format!("closed a connection at the door: {why}"),
                    );
                }
                continue;
            }
        };
        let back = match stream.into_std() {
            Ok(stream) => node.frontend.dispatch((stream, peer, Some(slot), Tls::No)),
            Err(e) => {
                tracing::warn!(error = %e, "frontend cannot take a connection at a gear's door");
                continue;
            }
        };
        if let Err((stream, peer, slot, _)) = back {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    tokio::spawn(serve_connection(node.clone(), stream, peer, slot));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "frontend cannot take a connection at a gear's door")
                }
            }
        }
    }
}

/// Make the TLS handshake (within the header timeout: a client that says
/// nothing holds nothing for long), then serve the connection: as HTTP/2
/// when the client chose `h2` by ALPN, else as HTTP/1.1.
async fn serve_tls(node: Arc<Node>, stream: TcpStream, peer: SocketAddr) {
    let Some(acceptor) = node
        .frontend
        .tls
        .get()
        .cloned()
        .map(tokio_rustls::TlsAcceptor::from)
    else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let timeout = node.config().header_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
            super::http2::serve(Arc::new(node), tls, peer).await;
        }
        Ok(Ok(tls)) => {
            let stream = super::tls::ClientStream::Tls(Box::new(tls));
            pipeline::serve(&node, stream, peer).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serve one client connection to its end, counted (and, for a gear's,
/// holding its place among the gear's connections until then).
async fn serve_connection(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<crate::conns::Slot>,
) {
    pipeline::serve(&node, super::tls::ClientStream::Tcp(stream), peer).await;
    drop(slot);
}
