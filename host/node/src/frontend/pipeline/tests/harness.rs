//! The test harness of the request pipeline: a backend that routes one
//! gear (`app-ns`, also `www.example.org`) to an app on a loopback port and
//! scripts its wake-ups, a frontend listener serving through the pipeline,
//! scripted apps, and raw HTTP/1.1 reading for both clients and apps.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::super::serve;
use crate::frontend::backend::{Backend, BackendGear, Limits};
use crate::frontend::{Frontend, GearFront, Target};
use crate::state::GearState;

// -- the backend ----------------------------------------------------------

/// A gear: its frontend state and a lifecycle state the test sets.
#[derive(Debug)]
pub(super) struct TestGear {
    pub(super) front: GearFront,
    pub(super) state: Mutex<GearState>,
}

impl BackendGear for TestGear {
    fn front(&self) -> &GearFront {
        &self.front
    }

    fn state(&self) -> GearState {
        *self.state.lock().expect("state")
    }
}

pub(super) type WakeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
pub(super) type WakeFn = Box<dyn Fn(Arc<TestGear>) -> WakeFuture + Send + Sync>;

/// The node as the pipeline sees it: one gear, `app-ns`, reached as
/// `app-ns.gears.test` and by its alias `www.example.org`.
pub(super) struct TestNode {
    pub(super) frontend: Frontend<TestGear>,
    pub(super) limits: Limits,
    pub(super) wake: WakeFn,
    pub(super) wakes: AtomicUsize,
    pub(super) connects: AtomicUsize,
}

impl Backend for TestNode {
    type Gear = TestGear;

    fn frontend(&self) -> &Frontend<TestGear> {
        &self.frontend
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn domain(&self) -> &str {
        "gears.test"
    }

    fn wake(&self, gear: &Arc<TestGear>) -> impl Future<Output = Result<(), String>> + Send {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        (self.wake)(gear.clone())
    }

    async fn connect(&self, _target: &Target<TestGear>, port: u16) -> Result<TcpStream, String> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("nothing answers on port {port} ({e})"))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// A wake-up that must not happen.
pub(super) fn no_wake() -> WakeFn {
    Box::new(|_| Box::pin(async { Err("no wake-up expected".to_string()) }))
}

/// A wake-up that takes `delay`, then leaves the gear running.
pub(super) fn wakes_after(delay: Duration) -> WakeFn {
    Box::new(move |gear| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            *gear.state.lock().expect("state") = GearState::Running;
            Ok(())
        })
    })
}

/// A wake-up that gives up after `delay`, the gear still idle.
pub(super) fn wake_times_out(delay: Duration) -> WakeFn {
    Box::new(move |_| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Err(format!(
                "it did not answer within {}",
                humantime::format_duration(delay)
            ))
        })
    })
}

pub(super) fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(5),
        max_body: 1 << 20,
    }
}

/// A frontend on loopback in front of one gear whose app listens on
/// `app_port`.
pub(super) struct World {
    pub(super) node: Arc<TestNode>,
    pub(super) gear: Arc<TestGear>,
    pub(super) addr: SocketAddr,
    _logs: tempfile::TempDir,
}

impl World {
    pub(super) async fn new(
        app_port: u16,
        state: GearState,
        wake: WakeFn,
        limits: Limits,
    ) -> World {
        let logs = tempfile::tempdir().expect("a directory for logs");
        let gear = Arc::new(TestGear {
            front: GearFront::new(logs.path(), 1 << 20, 1, 1),
            state: Mutex::new(state),
        });
        let target = Arc::new(Target {
            https: crate::frontend::TargetHttps::default(),
            gear: gear.clone(),
            label: "app-ns".to_string(),
            port: app_port,
        });
        let node = Arc::new(TestNode {
            frontend: Frontend::default(),
            limits,
            wake,
            wakes: AtomicUsize::new(0),
            connects: AtomicUsize::new(0),
        });
        let mut routes = std::collections::HashMap::new();
        routes.insert("app-ns.gears.test".to_string(), target.clone());
        routes.insert("www.example.org".to_string(), target);
        node.frontend.set_routes(routes);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let serving = node.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let node = serving.clone();
                let stream = crate::frontend::tls::ClientStream::Tcp(stream);
                tokio::spawn(async move { serve(&*node, stream, peer).await });
            }
        });
        World {
            node,
            gear,
            addr,
            _logs: logs,
        }
    }

    /// A running gear in front of `app`.
    pub(super) async fn running(app: &App) -> World {
        World::new(app.port, GearState::Running, no_wake(), limits()).await
    }

    pub(super) async fn client(&self) -> Conn {
        Conn::new(TcpStream::connect(self.addr).await.expect("connect"))
    }

    /// Waits until no request of the gear is in flight (its access log line
    /// is written when its answer is through, just after the client has it).
    pub(super) async fn settle(&self) {
        let end = Instant::now() + Duration::from_secs(5);
        while self.gear.front.active.load(Ordering::SeqCst) != 0 {
            assert!(Instant::now() < end, "requests still in flight");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The gear's access log, flushed.
    pub(super) async fn access_log(&self) -> Vec<String> {
        self.settle().await;
        self.gear.front.access.flush();
        std::fs::read_to_string(self.gear.front.access.path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

// -- raw HTTP on both sides ------------------------------------------------

/// Bounds every wait of a test.
pub(super) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// One end of a connection, reading HTTP/1.1 messages by hand.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
}

/// A message read: its head (without the blank line) and its body
/// (decoded when `decode`, else as it came).
#[derive(Debug, Clone)]
pub(super) struct Message {
    pub(super) head: String,
    pub(super) body: Vec<u8>,
}

impl Message {
    pub(super) fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The value of field `name`, if the head has one.
    pub(super) fn field(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads more; false at the end of the stream.
    pub(super) async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next head, or `None` when the stream ends first.
    pub(super) async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return Some(head);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    pub(super) async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "the stream ended within a body");
        }
        self.buf.drain(..n).collect()
    }

    pub(super) async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return self.buf.drain(..end + 2).collect();
            }
            assert!(self.fill().await, "the stream ended within a chunk");
        }
    }

    /// A chunked body (without trailers): decoded, or as it came.
    pub(super) async fn chunked(&mut self, decode: bool) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await;
            let size = std::str::from_utf8(&line[..line.len() - 2])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .expect("a chunk size");
            if !decode {
                out.extend_from_slice(&line);
            }
            let data = self.exact(size + 2).await;
            if decode {
                out.extend_from_slice(&data[..size]);
            } else {
                out.extend_from_slice(&data);
            }
            if size == 0 {
                return out;
            }
        }
    }

    pub(super) async fn until_close(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// The next request, its body as it came.
    pub(super) async fn request(&mut self) -> Option<Message> {
        let head = self.head().await?;
        let mut m = Message {
            head,
            body: Vec::new(),
        };
        if m.field("transfer-encoding").is_some() {
            m.body = self.chunked(false).await;
        } else if let Some(n) = m.field("content-length") {
            m.body = self.exact(n.parse().expect("a length")).await;
        }
        Some(m)
    }

    /// The next response (to a `HEAD` request when `head_request`), its
    /// body decoded.
    pub(super) async fn response(&mut self, head_request: bool) -> Message {
        let head = within("a response head", self.head())
            .await
            .expect("a response, not the end of the connection");
        let mut m = Message {
            head,
            body: Vec::new(),
        };
        let status = m.status();
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return m;
        }
        m.body = if m.field("transfer-encoding").is_some() {
            within("a chunked body", self.chunked(true)).await
        } else if let Some(n) = m.field("content-length") {
            within("a body", self.exact(n.parse().expect("a length"))).await
        } else {
            within("a body to the close", self.until_close()).await
        };
        m
    }

    /// Whether the peer closes the connection (with nothing more to read).
    pub(super) async fn closed(&mut self) -> bool {
        !within("the close", self.fill()).await && self.buf.is_empty()
    }
}

/// What a test app does with a request.
pub(super) enum Reply {
    /// Answer with these bytes, and keep the connection.
    Send(Vec<u8>),
    /// Close the connection without answering.
    Close,
    /// Answer with these bytes, then close the connection.
    Last(Vec<u8>),
    /// Never answer.
    Hang,
    /// Answer with these bytes (a 101), then echo what comes.
    Upgrade(Vec<u8>),
}

/// An app on a loopback port, answering by a script and keeping what it read.
pub(super) struct App {
    pub(super) port: u16,
    pub(super) seen: Arc<Mutex<Vec<Message>>>,
    pub(super) accepted: Arc<AtomicUsize>,
}

impl App {
    pub(super) async fn start(script: impl Fn(&Message) -> Reply + Send + Sync + 'static) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        App::serve(listener, script)
    }

    pub(super) fn serve(
        listener: TcpListener,
        script: impl Fn(&Message) -> Reply + Send + Sync + 'static,
    ) -> App {
        let port = listener.local_addr().expect("address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let (s, a) = (seen.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (seen, script) = (s.clone(), script.clone());
                tokio::spawn(async move {
                    let mut conn = Conn::new(stream);
                    while let Some(request) = conn.request().await {
                        let reply = script(&request);
                        seen.lock().expect("seen").push(request);
                        match reply {
                            Reply::Send(bytes) => conn.send(&bytes).await,
                            Reply::Close => return,
                            Reply::Last(bytes) => {
                                conn.send(&bytes).await;
                                return;
                            }
                            Reply::Hang => std::future::pending::<()>().await,
                            Reply::Upgrade(bytes) => {
                                conn.send(&bytes).await;
                                let (mut r, mut w) = conn.stream.split();
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        App {
            port,
            seen,
            accepted,
        }
    }

    /// An app answering every request `200` with `body`.
    pub(super) async fn ok(body: &'static str) -> App {
        App::start(move |_| Reply::Send(ok(body))).await
    }

    pub(super) fn seen(&self) -> Vec<Message> {
        self.seen.lock().expect("seen").clone()
    }
}

pub(super) fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A port on which nothing listens.
pub(super) async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("address").port()
}

pub(super) fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test/1\r\n\r\n").into_bytes()
}
