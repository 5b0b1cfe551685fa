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
mod route;

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

/// A request head read from the build, and the bytes after it.
#[derive(Debug)]
struct Head {
    bytes: Vec<u8>,
    /// Where the head ends (after its empty line).
    len: usize,
}

#[derive(Debug)]
enum HeadError {
    TooLarge,
}

/// Read until the end of a request head (`None`: the build closed first).
async fn read_head(client: &mut TcpStream, max: usize) -> Result<Option<Head>, HeadError> {
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
struct Request {
    /// A name or an address (without brackets).
    host: String,
    port: u16,
    kind: Kind,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
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
    fn shown(&self) -> String {
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

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Headers that concern only the hop between the build and the proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

fn bad(message: impl Into<String>) -> Answer {
    Answer::new(400, message)
}

/// Parse a request head: `CONNECT host:port`, or a request whose target is
/// an absolute `http://` URL, rewritten for the server.
fn parse_request(head: &[u8]) -> Result<Request, Answer> {
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
fn parse_authority(text: &str, default_port: Option<u16>) -> Result<(String, u16), Answer> {
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
mod tests {
    use super::*;

    fn forward_head(r: Request) -> String {
        match r.kind {
            Kind::Forward { head } => String::from_utf8(head).expect("utf-8"),
            Kind::Connect => panic!("a tunnel"),
        }
    }

    #[test]
    fn requests_are_read_as_a_proxy_reads_them() {
        let r = parse_request(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
            .expect("connect");
        assert_eq!(
            (r.host.as_str(), r.port, &r.kind),
            ("pypi.org", 443, &Kind::Connect)
        );
        let r = parse_request(b"CONNECT [2a04:4e42::223]:443 HTTP/1.1\r\n\r\n").expect("v6");
        assert_eq!((r.host.as_str(), r.port), ("2a04:4e42::223", 443));
        assert_eq!(r.authority(), "[2a04:4e42::223]:443");

        let r = parse_request(
            b"GET http://example.org/simple/?q=1#frag HTTP/1.1\r\nHost: example.org\r\n\
              Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
              Accept: */*\r\n\r\n",
        )
        .expect("absolute form");
        assert_eq!((r.host.as_str(), r.port), ("example.org", 80));
        assert_eq!(
            forward_head(r),
            "GET /simple/?q=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let r =
            parse_request(b"POST HTTP://Mirror.Example:8080 HTTP/1.0\r\n\r\n").expect("no path");
        assert_eq!((r.host.as_str(), r.port), ("Mirror.Example", 8080));
        assert_eq!(
            forward_head(r),
            "POST / HTTP/1.0\r\nHost: Mirror.Example:8080\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn requests_a_proxy_cannot_serve_are_answered_400() {
        for (head, says) in [
            (
                &b"GET /etc/passwd HTTP/1.1\r\n\r\n"[..],
                "absolute http:// URL",
            ),
            (b"GET https://x.org/ HTTP/1.1\r\n\r\n", "CONNECT"),
            (b"CONNECT x.org HTTP/1.1\r\n\r\n", "port"),
            (b"CONNECT x.org:0 HTTP/1.1\r\n\r\n", "port"),
            (b"CONNECT x.org:65536 HTTP/1.1\r\n\r\n", "port"),
            (b"CONNECT x.org:+443 HTTP/1.1\r\n\r\n", "port"),
            (b"CONNECT [::1:443 HTTP/1.1\r\n\r\n", "host:port"),
            (b"CONNECT -x.org:443 HTTP/1.1\r\n\r\n", "host name"),
            (b"CONNECT a%2f.org:443 HTTP/1.1\r\n\r\n", "host name"),
            (b"GET http://user:pw@x.org/ HTTP/1.1\r\n\r\n", "passwords"),
            (b"GET http://:80/ HTTP/1.1\r\n\r\n", "host name"),
            (b"\x16\x03\x01\x02\x00\r\n\r\n", "not HTTP"),
        ] {
            let a = parse_request(head).expect_err(&String::from_utf8_lossy(head));
            assert_eq!(a.status, 400, "{}", a.message);
            assert!(
                a.message.contains(says),
                "{}: {}",
                String::from_utf8_lossy(head),
                a.message
            );
        }
    }

    fn log() -> (tempfile::TempDir, LogFile) {
        let dir = tempfile::tempdir().expect("dir");
        let log = LogFile::new(dir.path().join("hooks.log"), 1 << 20, 1);
        (dir, log)
    }

    /// The proxy on the host's loopback (what it serves does not depend on
    /// where it listens).
    async fn proxy(
        limits: Limits,
        connections: usize,
        log: LogFile,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let policy = EgressConfig {
            connections,
            ..EgressConfig::default()
        };
        let task = tokio::spawn(serve(listener, Arc::new(Shared::new(policy, log, limits))));
        (addr, task)
    }

    async fn ask(proxy: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(proxy).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .expect("an answer in time")
            .expect("read");
        out
    }

    #[tokio::test]
    async fn the_host_is_refused_with_a_reason_and_logged() {
        let (_dir, log) = log();
        let (addr, _task) = proxy(LIMITS, 4, log.clone()).await;
        // something to reach on the host's loopback
        let secret = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = secret.local_addr().expect("addr").port();
        for request in [
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
            format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost\r\n\r\n"),
            format!("CONNECT [::ffff:127.0.0.1]:{port} HTTP/1.1\r\n\r\n"),
            format!("CONNECT 0x7f.1:{port} HTTP/1.1\r\n\r\n"),
        ] {
            let got = ask(addr, request.as_bytes()).await;
            assert!(
                got.starts_with("HTTP/1.1 403 Forbidden\r\n"),
                "{request}: {got}"
            );
            assert!(
                got.contains("127.0.0.1 is the host's loopback"),
                "{request}: {got}"
            );
        }
        let text = std::fs::read_to_string(log.path()).expect("log");
        assert!(
            text.contains(&format!(
                "build[egress] refused CONNECT 127.0.0.1:{port}: 127.0.0.1 is the host's loopback"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn heads_are_bounded_in_size_and_time() {
        let (_dir, log) = log();
        let limits = Limits {
            head_time: Duration::from_millis(300),
            ..LIMITS
        };
        let (addr, _task) = proxy(limits, 4, log).await;
        let mut huge = b"CONNECT example.org:443 HTTP/1.1\r\n".to_vec();
        while huge.len() <= LIMITS.head_bytes {
            huge.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let got = ask(addr, &huge).await;
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
        // a head that never ends
        let started = Instant::now();
        let got = ask(addr, b"CONNECT example.org:443 HTTP/1.1\r\n").await;
        assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_build_has_a_capped_number_of_connections() {
        let (_dir, log) = log();
        let limits = Limits {
            head_time: Duration::from_millis(500),
            ..LIMITS
        };
        let (addr, task) = proxy(limits, 1, log).await;
        // the one connection a build may have, sending nothing
        let _hog = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // the next waits until the first is cut at its head deadline
        let started = Instant::now();
        let got = ask(addr, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 403 "), "{got}");
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        // stopping the proxy closes the listener
        task.abort();
        let _ = task.await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    /// Two ends of a loopback connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    #[tokio::test]
    async fn a_splice_passes_bytes_and_ends_when_idle() {
        let (_dir, log) = log();
        let limits = Limits {
            idle_time: Duration::from_millis(300),
            ..LIMITS
        };
        let sh = Arc::new(Shared::new(EgressConfig::default(), log, limits));
        let (mut build, client) = pair().await;
        let (upstream, mut server) = pair().await;
        let started = Instant::now();
        let spliced = tokio::spawn({
            let sh = sh.clone();
            async move { splice(client, upstream, &sh).await }
        });
        build.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong!").await.expect("write");
        let mut buf = [0u8; 5];
        build.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong!");
        // then nothing moves: both sides are cut after the idle time
        tokio::time::timeout(Duration::from_secs(5), spliced)
            .await
            .expect("the splice ended")
            .expect("join");
        assert!(started.elapsed() >= Duration::from_millis(300));
        let mut rest = Vec::new();
        assert_eq!(build.read_to_end(&mut rest).await.expect("closed"), 0);
        assert_eq!(sh.stats.sent.load(Ordering::Relaxed), 4);
        assert_eq!(sh.stats.received.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn a_build_net_has_its_own_namespace_and_closes() {
        if !gearhost_sandbox::testing::privileged("network namespaces") {
            return;
        }
        let (_dir, log) = log();
        let net = BuildNet::open(EgressConfig::default(), log.clone(), LIMITS, None)
            .await
            .expect("open");
        let port = net.port();
        let env = net.env();
        assert!(env.contains(&("https_proxy".into(), format!("http://127.0.0.1:{port}"))));
        let path = net.netns_path();
        // the proxy answers inside the namespace, and not on the host
        let inside = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                gearhost_sandbox::netns::connect(
                    &path,
                    ([127, 0, 0, 1], port).into(),
                    Duration::from_secs(2),
                )
            })
            .await
            .expect("join")
            .expect("connect inside")
        };
        inside.set_nonblocking(true).expect("nonblocking");
        let mut inside = TcpStream::from_std(inside).expect("tokio");
        inside
            .write_all(b"CONNECT 10.1.2.3:80 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut got = String::new();
        inside.read_to_string(&mut got).await.expect("read");
        assert!(
            got.contains("10.0.0.0/8") && got.contains("build.egress-allow"),
            "{got}"
        );
        // closing ends the listener and logs a summary
        net.close();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = tokio::task::spawn_blocking(move || {
            gearhost_sandbox::netns::connect(
                &path,
                ([127, 0, 0, 1], port).into(),
                Duration::from_secs(2),
            )
        })
        .await
        .expect("join");
        assert!(again.is_err(), "the listener outlived close");
        drop(net);
        let text = std::fs::read_to_string(log.path()).expect("log");
        assert!(
            text.contains("closed after") && text.contains("1 connections (1 refused"),
            "{text}"
        );
    }
}
