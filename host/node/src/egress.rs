//! Build egress: the only way out for a build whose cartridge may use the
//! network (`permissions.build-network`).
//!
//! Such a build does not run in the host's network namespace, nor in the
//! gear's (the running app gains nothing while a build runs): the node makes
//! a network namespace for the hook call with only `lo`, and listens on
//! `127.0.0.1:<port>` inside it. That listener is an HTTP forward proxy
//! (`CONNECT host:port`, and plain HTTP requests in absolute form); the
//! build's environment names it in `http_proxy` and its relatives. Nothing
//! else leaves the namespace: a program that ignores the proxy finds no
//! route.
//!
//! For each request the node resolves the name itself, checks every address
//! against the policy ([`policy`]: the loopback, the host's own addresses,
//! private and other special ranges refused, the operator's lists) and asks
//! the kernel whether the address would stay on this host ([`route`]), then
//! connects from its own namespace to the address it checked (never resolving
//! again, so a name cannot change between the check and the connection),
//! checks the connected socket once more, and splices the two connections.
//! A refusal is answered `403` with one line naming the address, the rule
//! and the setting an operator would change, and written to the gear's hook
//! log.
//!
//! Everything that comes from the build is hostile: request heads are
//! bounded in size and time, a build has a capped number of connections
//! open at once (more wait in the listen queue), idle connections are cut,
//! accept errors are logged and retried, and the listener, every connection
//! and the namespace are gone when the hook call ends.

/// The egress policy: address blocks and the checks on them (it lives with
/// the configuration that declares it).
pub use gearhost_node_config::egress as policy;
mod request;
mod route;

use request::*;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearhost_runtime::HostError;
use gearhost_sandbox::SandboxSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::logs::LogFile;
pub use policy::{Cidr, CidrError, EgressConfig, EgressMode, Refusal};
use route::Route;

/// Where refusals and the summary go in the gear's hook log.
const LOG_SOURCE: &str = "build[egress]";

/// What the proxy allows a build's connection before cutting it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head.
    pub head_bytes: usize,
    /// Time for the whole request head to arrive.
    pub head_time: Duration,
    /// Time for a name to resolve.
    pub resolve_time: Duration,
    /// Time for one address to accept the connection.
    pub connect_time: Duration,
    /// A spliced connection with no byte either way for this long is cut.
    pub idle_time: Duration,
    /// Refusals and failures written to the hook log per build; the rest are
    /// counted in the summary.
    pub logged: u32,
}

/// The limits the node uses.
pub const LIMITS: Limits = Limits {
    head_bytes: 16 * 1024,
    head_time: Duration::from_secs(10),
    resolve_time: Duration::from_secs(10),
    connect_time: Duration::from_secs(10),
    idle_time: Duration::from_secs(120),
    logged: 50,
};

/// Addresses tried for one request (a name may resolve to many).
const MAX_TRIED: usize = 4;
/// Addresses looked at for one request.
const MAX_RESOLVED: usize = 16;

/// Variables that name the proxy in a build's environment (curl, git, pip,
/// npm, Python, Go, Node and most others read one of them).
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "npm_config_proxy",
    "npm_config_https_proxy",
    "PIP_PROXY",
];
/// What goes around the proxy (nothing is there but the proxy itself).
const NO_PROXY_VARS: &[&str] = &["no_proxy", "NO_PROXY"];
const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// The way out of one hook call, opened at its first `exec` that may use
/// the network and closed when the call ends ([`BuildEgress::close`]).
#[derive(Debug, Default)]
pub struct BuildEgress {
    net: tokio::sync::Mutex<Option<Arc<BuildNet>>>,
    closed: AtomicBool,
    payer: Option<Payer>,
}

/// The gear whose connections a build's proxy connections count as
/// ([`crate::conns`]), besides the build's own cap.
pub type Payer = (
    Arc<crate::conns::Admission>,
    Arc<crate::conns::GearConnections>,
);

impl BuildEgress {
    /// A build's way out whose connections count against `payer`.
    pub fn paid_by(payer: Payer) -> BuildEgress {
        BuildEgress {
            payer: Some(payer),
            ..BuildEgress::default()
        }
    }

    /// The call's network, opened on first use.
    pub async fn get(
        &self,
        policy: &EgressConfig,
        log: &LogFile,
    ) -> Result<Arc<BuildNet>, HostError> {
        let mut net = self.net.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(HostError::Failed(
                "the build has ended; its network is closed".into(),
            ));
        }
        if let Some(net) = &*net {
            return Ok(net.clone());
        }
        let opened = BuildNet::open(policy.clone(), log.clone(), LIMITS, self.payer.clone())
            .await
            .map_err(|e| {
                HostError::Failed(format!(
                    "cannot open the build's network (its namespace and egress proxy): {e}; \
                     set `build.egress = \"none\"` in the node configuration to run builds without network"
                ))
            })?;
        let opened = Arc::new(opened);
        *net = Some(opened.clone());
        Ok(opened)
    }

    /// Close the network (the listener and every connection through it) and
    /// log what went through. Later `get`s fail.
    pub async fn close(&self) {
        let mut net = self.net.lock().await;
        self.closed.store(true, Ordering::SeqCst);
        if let Some(net) = net.take() {
            net.close();
        }
    }
}

/// A build's network namespace and the egress proxy listening inside it.
/// Dropping it (or [`BuildNet::close`]) stops the proxy and cuts every
/// connection; the namespace goes with the last process in it.
#[derive(Debug)]
pub struct BuildNet {
    ns: OwnedFd,
    port: u16,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    shared: Arc<Shared>,
    opened: Instant,
}

impl BuildNet {
    /// Make the namespace, listen inside it and start serving.
    pub async fn open(
        policy: EgressConfig,
        log: LogFile,
        limits: Limits,
        payer: Option<Payer>,
    ) -> io::Result<BuildNet> {
        let (ns, listener) = tokio::task::spawn_blocking(|| -> io::Result<_> {
            let ns = gearhost_sandbox::netns::create_private()?;
            let listener = gearhost_sandbox::netns::listen(
                &fd_path(&ns),
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            )?;
            listener.set_nonblocking(true)?;
            Ok((ns, listener))
        })
        .await
        .map_err(io::Error::other)??;
        let port = listener.local_addr()?.port();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut shared = Shared::new(policy, log, limits);
        shared.payer = payer;
        let shared = Arc::new(shared);
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(BuildNet {
            ns,
            port,
            task: Mutex::new(Some(task)),
            shared,
            opened: Instant::now(),
        })
    }

    /// The namespace, by a path a sandbox spec can take: the node's own
    /// descriptor of it, valid while this value lives.
    pub fn netns_path(&self) -> PathBuf {
        fd_path(&self.ns)
    }

    /// The proxy's port on the namespace's `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The variables a build gets: the proxy's URL under every usual name.
    pub fn env(&self) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}", self.port);
        PROXY_VARS
            .iter()
            .map(|k| (k.to_string(), url.clone()))
            .chain(
                NO_PROXY_VARS
                    .iter()
                    .map(|k| (k.to_string(), NO_PROXY.to_string())),
            )
            .collect()
    }

    /// Put a process in this network: join the namespace, and name the
    /// proxy in its environment (over whatever the gear's env said).
    pub fn apply(&self, spec: &mut SandboxSpec) {
        spec.network = gearhost_sandbox::NetworkMode::Isolated;
        spec.netns = Some(self.netns_path());
        let ours = self.env();
        spec.env.retain(|(k, _)| !ours.iter().any(|(o, _)| o == k));
        spec.env.extend(ours);
    }

    /// Stop the proxy, cut its connections and log a summary (once).
    pub fn close(&self) {
        let task = gearhost_sys::lock::lock(&self.task).take();
        if let Some(task) = task {
            task.abort();
            let s = &self.shared.stats;
            self.shared.log.line(
                LOG_SOURCE,
                &format!(
                    "closed after {:.1} s: {} connections ({} refused, {} failed), {} bytes sent, {} bytes received",
                    self.opened.elapsed().as_secs_f64(),
                    s.accepted.load(Ordering::Relaxed),
                    s.refused.load(Ordering::Relaxed),
                    s.failed.load(Ordering::Relaxed),
                    s.sent.load(Ordering::Relaxed),
                    s.received.load(Ordering::Relaxed),
                ),
            );
        }
    }
}

impl Drop for BuildNet {
    fn drop(&mut self) {
        self.close();
    }
}

/// `/proc/self/fd/<n>`: a path that opens the file behind descriptor `n` of
/// this process.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// What the proxy's connections share.
#[derive(Debug)]
struct Shared {
    policy: EgressConfig,
    limits: Limits,
    log: LogFile,
    stats: Stats,
    /// Log lines left for refusals and failures.
    budget: AtomicU32,
    /// Whose connections these are, node-wide.
    payer: Option<Payer>,
}

#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Shared {
    fn new(policy: EgressConfig, log: LogFile, limits: Limits) -> Shared {
        Shared {
            policy,
            budget: AtomicU32::new(limits.logged),
            limits,
            log,
            stats: Stats::default(),
            payer: None,
        }
    }

    /// Log a refusal or failure while the budget lasts.
    fn note(&self, text: &str) {
        let left = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        match left {
            Ok(1) => {
                self.log.line(LOG_SOURCE, text);
                self.log.line(
                    LOG_SOURCE,
                    "further refusals and failures of this build are counted, not logged",
                );
            }
            Ok(_) => self.log.line(LOG_SOURCE, text),
            Err(_) => {}
        }
    }
}

/// Accept connections until the task is aborted, at most
/// `policy.connections` served at once; aborting it ends every connection
/// (they belong to its `JoinSet`).
async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(
        shared.policy.connections.max(1),
    ));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            // reap while waiting for a permit
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match listener.accept().await {
            Ok((client, _)) => {
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let slot = match &shared.payer {
                    Some((admission, gear)) => match admission.admit(gear) {
                        Ok(slot) => Some(slot),
                        Err((why, _)) => {
                            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                            shared.note(&format!("closed a connection to the proxy: {why}"));
                            continue;
                        }
                    },
                    None => None,
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    let _slot = slot;
                    handle(client, &shared).await;
                });
            }
            Err(e) => {
                // out of descriptors and the like: never fatal, never a spin
                tracing::warn!(error = %e, "the build egress proxy cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An answer the proxy gives instead of a connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    message: String,
}

impl Answer {
    fn new(status: u16, message: impl Into<String>) -> Answer {
        Answer {
            status,
            message: message.into(),
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            403 => "Forbidden",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            502 => "Bad Gateway",
            504 => "Gateway Timeout",
            _ => "Error",
        }
    }
}

/// Serve one connection from the build.
async fn handle(mut client: TcpStream, sh: &Shared) {
    let head = match tokio::time::timeout(
        sh.limits.head_time,
        read_head(&mut client, sh.limits.head_bytes),
    )
    .await
    {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(HeadError::TooLarge)) => {
            let a = Answer::new(
                431,
                format!(
                    "the request head is larger than {} bytes",
                    sh.limits.head_bytes
                ),
            );
            sh.stats.failed.fetch_add(1, Ordering::Relaxed);
            sh.note(&format!("refused a request: {}", a.message));
            return answer(&mut client, &a).await;
        }
        Err(_) => {
            sh.stats.failed.fetch_add(1, Ordering::Relaxed);
            return answer(
                &mut client,
                &Answer::new(408, "the request head did not arrive in time"),
            )
            .await;
        }
    };
    let request = match parse_request(&head.bytes[..head.len]) {
        Ok(r) => r,
        Err(a) => {
            sh.stats.failed.fetch_add(1, Ordering::Relaxed);
            sh.note(&format!("refused a request: {}", a.message));
            return answer(&mut client, &a).await;
        }
    };
    let mut upstream = match open_upstream(sh, &request.host, request.port).await {
        Ok(s) => s,
        Err(a) => {
            let counter = if a.status == 403 {
                &sh.stats.refused
            } else {
                &sh.stats.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            sh.note(&format!(
                "{} {}: {}",
                if a.status == 403 { "refused" } else { "failed" },
                request.shown(),
                a.message
            ));
            return answer(&mut client, &a).await;
        }
    };
    let first = match &request.kind {
        Kind::Connect => {
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            Vec::new()
        }
        Kind::Forward { head } => head.clone(),
    };
    // the head for the other side, then whatever the build sent after its head
    let mut out = first;
    out.extend_from_slice(&head.bytes[head.len..]);
    if !out.is_empty() {
        match tokio::time::timeout(sh.limits.idle_time, upstream.write_all(&out)).await {
            Ok(Ok(())) => {
                sh.stats.sent.fetch_add(out.len() as u64, Ordering::Relaxed);
            }
            _ => return,
        }
    }
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    splice(client, upstream, sh).await;
}

/// Write a short answer and close.
async fn answer(client: &mut TcpStream, a: &Answer) {
    let body = format!("gearhost build egress: {}\n", a.message);
    let text = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        a.status,
        a.reason(),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        client.write_all(text.as_bytes()).await?;
        client.shutdown().await
    })
    .await;
}

/// Resolve, check and connect: the connection to the first address that
/// the policy and the kernel's routes allow and that accepts.
async fn open_upstream(sh: &Shared, host: &str, port: u16) -> Result<TcpStream, Answer> {
    let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            match tokio::time::timeout(
                sh.limits.resolve_time,
                tokio::net::lookup_host((host, port)),
            )
            .await
            {
                Err(_) => {
                    return Err(Answer::new(
                        504,
                        format!(
                            "{host} did not resolve within {} s",
                            sh.limits.resolve_time.as_secs()
                        ),
                    ));
                }
                Ok(Err(e)) => return Err(Answer::new(502, format!("cannot resolve {host}: {e}"))),
                Ok(Ok(addrs)) => addrs.take(MAX_RESOLVED).collect(),
            }
        }
    };
    // the policy, address by address: mapped IPv6 addresses as IPv4
    let mut refusal: Option<Refusal> = None;
    let mut candidates: Vec<SocketAddr> = Vec::new();
    for addr in resolved {
        let ip = addr.ip().to_canonical();
        match sh.policy.check(ip) {
            Ok(()) => {
                let addr = if ip != addr.ip() {
                    SocketAddr::new(ip, port)
                } else {
                    addr
                };
                if !candidates.contains(&addr) {
                    candidates.push(addr);
                }
            }
            Err(r) => {
                refusal.get_or_insert(r);
            }
        }
    }
    // the kernel's routes: nothing that stays on this host
    let mut unroutable = None;
    if !candidates.is_empty() {
        let ips: Vec<IpAddr> = candidates.iter().map(SocketAddr::ip).collect();
        let routes = tokio::task::spawn_blocking(move || route::lookup(&ips))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        let routes = match routes {
            Ok(r) => r,
            Err(e) => {
                // fail closed
                return Err(Answer::new(
                    403,
                    format!(
                        "cannot tell whether {} is this host's own address (route lookup: {e})",
                        candidates[0].ip()
                    ),
                ));
            }
        };
        let mut kept = Vec::new();
        for (addr, route) in candidates.into_iter().zip(routes) {
            match route {
                Route::Away => kept.push(addr),
                Route::ThisHost => {
                    refusal.get_or_insert(Refusal::ThisHost { addr: addr.ip() });
                }
                Route::Nowhere => {
                    unroutable.get_or_insert(addr);
                }
            }
        }
        candidates = kept;
    }
    if candidates.is_empty() {
        return Err(match (refusal, unroutable) {
            (Some(r), _) => Answer::new(403, r.to_string()),
            (None, Some(addr)) => {
                Answer::new(502, format!("the node has no route to {}", addr.ip()))
            }
            (None, None) => Answer::new(502, format!("{host} has no address")),
        });
    }
    let mut last = String::new();
    for addr in candidates.into_iter().take(MAX_TRIED) {
        match tokio::time::timeout(sh.limits.connect_time, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if is_this_host(&stream) {
                    return Err(Answer::new(
                        403,
                        Refusal::ThisHost { addr: addr.ip() }.to_string(),
                    ));
                }
                return Ok(stream);
            }
            Ok(Err(e)) => last = format!("cannot connect to {addr}: {e}"),
            Err(_) => {
                last = format!(
                    "{addr} did not accept within {} s",
                    sh.limits.connect_time.as_secs()
                )
            }
        }
    }
    Err(Answer::new(502, last))
}

/// Whether a connection ended up on this host after all (an address that
/// became local between the route lookup and the connection, or a local
/// route with a loopback source): the kernel then uses the destination
/// itself, or a loopback address, as the source.
fn is_this_host(stream: &TcpStream) -> bool {
    match (stream.local_addr(), stream.peer_addr()) {
        (Ok(local), Ok(peer)) => {
            let (local, peer) = (local.ip().to_canonical(), peer.ip().to_canonical());
            local == peer || local.is_loopback() || peer.is_loopback()
        }
        _ => true,
    }
}

/// Pass bytes both ways until both sides are done, or nothing moved for
/// `idle_time`.
async fn splice(mut client: TcpStream, mut upstream: TcpStream, sh: &Shared) {
    let start = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    let both = async {
        tokio::join!(
            copy(&mut cr, &mut uw, &last, start, &sh.stats.sent),
            copy(&mut ur, &mut cw, &last, start, &sh.stats.received)
        )
    };
    let idle = async {
        loop {
            let due =
                start + Duration::from_millis(last.load(Ordering::Relaxed)) + sh.limits.idle_time;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    tokio::select! {
        _ = both => {}
        _ = idle => {}
    }
}

/// One direction of a splice; `last` is when bytes last moved (ms after
/// `start`).
async fn copy(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    last: &AtomicU64,
    start: tokio::time::Instant,
    counter: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests;
