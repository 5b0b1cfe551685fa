//! Unit tests of the build egress proxy: request heads, authorities, the policy applied to
//! what a build asks for, and whole exchanges over loopback.

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
    let r = parse_request(b"POST HTTP://Mirror.Example:8080 HTTP/1.0\r\n\r\n").expect("no path");
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
