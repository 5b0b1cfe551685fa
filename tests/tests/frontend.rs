//! End to end: the node's HTTP frontend in front of real apps in real gears,
//! driven by real clients (curl, a hand-written websocket client, raw
//! keep-alive connections) and the real `gear` binary: routing by name and
//! alias, the frontend's own 404/413/502/503/504 pages, forwarding headers,
//! websockets, large streamed bodies, keep-alive, idling and waking (also
//! across a node restart), what a gear can reach through the frontend, the
//! access log and the metrics, and requests that could be read two ways
//! (smuggling and host confusion), written byte by byte on raw sockets.
//!
//! Long on purpose: the scenarios share the raw-socket clients and node
//! set-up written here, and each more test binary costs a link; the
//! pipeline's own unit tests, which need no node, are in
//! `host/node/src/frontend/pipeline/`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, privileged, workspace_root};

fn app_dir() -> String {
    let dir = workspace_root().join("tests/apps/frontend-app");
    dir.to_str().expect("utf-8").to_string()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// curl through the node's frontend, with `label` (`<gear>-<namespace>`)
/// or a full host name resolved to it.
fn curl(node: &TestNode, host: &str, args: &[&str]) -> Output {
    let host = if host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.localhost")
    };
    let port = node.frontend.port();
    Command::new("curl")
        .args(["-sS", "--max-time", "60", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(args)
        .output()
        .expect("run curl")
}

fn url(node: &TestNode, host: &str, path: &str) -> String {
    let host = if host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.localhost")
    };
    format!("http://{host}:{}{path}", node.frontend.port())
}

/// Status code and body of a GET through the frontend.
fn get(node: &TestNode, host: &str, path: &str) -> (u16, String) {
    let out = curl(
        node,
        host,
        &["-o", "-", "-w", "\n%{http_code}", &url(node, host, path)],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn install(node: &TestNode, package: &str) -> tempfile::TempDir {
    let dir = cartridge_dir(package);
    node.ok(&["cartridge", "install", dir.path().to_str().expect("utf-8")]);
    dir
}

fn metric(node: &TestNode, key: &str) -> f64 {
    node.metrics().get(key).copied().unwrap_or(0.0)
}

fn state(node: &TestNode, gear: &str) -> String {
    json(&node.ok(&["status", gear, "--json"]))["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// One response read from a kept-alive connection (content-length or chunked).
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(n) = find("content-length") {
        body.resize(n.parse().expect("length"), 0);
        r.read_exact(&mut body).expect("body");
    } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).expect("chunk");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    (code, headers, body)
}

/// A client connection to the frontend at `addr` with a 20 s read timeout:
/// its writing side and a buffered reader.
fn kept_connection(addr: std::net::SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let w = stream.try_clone().expect("clone");
    (w, BufReader::new(stream))
}

/// A minimal RFC 6455 client: the handshake, then masked frames out and
/// unmasked frames in.
struct WebSocket {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl WebSocket {
    fn connect(node: &TestNode, host: &str, path: &str) -> WebSocket {
        let (mut w, mut reader) = kept_connection(node.frontend);
        write!(
            w,
            "GET {path} HTTP/1.1\r\nHost: {host}.localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("handshake");
        let mut status = String::new();
        reader.read_line(&mut status).expect("status");
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        let mut accept = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).expect("header");
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("sec-websocket-accept")
            {
                accept = Some(v.trim().to_string());
            }
        }
        // RFC 6455's own example key and answer
        assert_eq!(accept.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        WebSocket { reader, stream: w }
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            frame.push(0x80 | n as u8);
        } else if n < 65536 {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).expect("send frame");
    }

    fn receive(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        self.reader.read_exact(&mut head).expect("frame head");
        let mut n = u64::from(head[1] & 0x7f);
        if n == 126 {
            let mut b = [0u8; 2];
            self.reader.read_exact(&mut b).expect("length");
            n = u64::from(u16::from_be_bytes(b));
        } else if n == 127 {
            let mut b = [0u8; 8];
            self.reader.read_exact(&mut b).expect("length");
            n = u64::from_be_bytes(b);
        }
        assert_eq!(head[1] & 0x80, 0, "a server's frames are not masked");
        let mut payload = vec![0; n as usize];
        self.reader.read_exact(&mut payload).expect("payload");
        (head[0] & 0x0f, payload)
    }
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn the_frontend_routes_streams_upgrades_and_refuses_clearly() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(
        60000,
        // three workers: connections spread over them, each with its own pools
        "idle-timeout = \"off\"\n[http]\nmax-body = \"32MiB\"\nresponse-timeout = \"2s\"\nheader-timeout = \"2s\"\nworkers = 3",
    );
    let _nodejs = install(&node, "nodejs-cartridge");
    for gear in ["web", "other"] {
        node.ok(&["create", gear, "--cartridge", "nodejs"]);
        node.ok(&["deploy", gear, &app_dir()]);
    }

    // routing by name; forwarding headers set by the frontend, not the client
    assert_eq!(
        get(&node, "web-default", "/"),
        (200, "hello from web\n".into())
    );
    assert_eq!(get(&node, "other-default", "/").1, "hello from other\n");
    let out = curl(
        &node,
        "web-default",
        &[
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Forwarded-Proto: https",
            &url(&node, "web-default", "/headers?x=1"),
        ],
    );
    let seen = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(seen["url"], "/headers?x=1");
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(h["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(
        h["x-forwarded-host"],
        format!("web-default.localhost:{}", node.frontend.port())
    );
    // the host name is case-insensitive; a port in it never picks the gear's port
    assert_eq!(
        get(&node, "WEB-default.LOCALHOST", "/").1,
        "hello from web\n"
    );

    // unknown hosts get a clear 404 page, tunnels a 405
    let (code, body) = get(&node, "nothing-here", "/");
    assert_eq!(code, 404);
    assert!(
        body.contains("No gear answers to <code>nothing-here.localhost</code>"),
        "{body}"
    );
    let out = curl(
        &node,
        "web-default",
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "CONNECT",
            &url(&node, "web-default", "/"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "405");

    // aliases
    node.ok(&["alias", "add", "web", "www.example.com"]);
    assert_eq!(get(&node, "www.example.com", "/").1, "hello from web\n");
    let list = json(&node.ok(&["alias", "list", "web", "--json"]));
    assert_eq!(list["aliases"], serde_json::json!(["www.example.com"]));
    let taken = node.gear(&["alias", "add", "other", "WWW.example.com"]);
    assert_eq!(taken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already leads to gear web"));
    for bad in ["not a name", "other-default.localhost", "10.1.2.3"] {
        let out = node.gear(&["alias", "add", "web", bad]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    node.ok(&["alias", "add", "other", "api.example.com"]);
    assert_eq!(get(&node, "api.example.com", "/").1, "hello from other\n");
    node.ok(&["alias", "remove", "web", "www.example.com"]);
    assert_eq!(get(&node, "www.example.com", "/").0, 404);
    assert_eq!(
        json(&node.ok(&["show", "other", "--json"]))["aliases"],
        serde_json::json!(["api.example.com"])
    );

    // keep-alive: one client connection, requests for two gears, each routed
    // on its own; the connections to the gear are reused
    let before_clients = metric(&node, "gearhost_frontend_connections_total");
    let before_upstream = metric(
        &node,
        "gearhost_frontend_upstream_connections_total{gear=\"web-default\"}",
    );
    let (mut w, mut r) = kept_connection(node.frontend);
    for i in 0..20 {
        let gear = if i % 5 == 4 { "other" } else { "web" };
        write!(
            w,
            "GET / HTTP/1.1\r\nHost: {gear}-default.localhost\r\n\r\n"
        )
        .expect("request");
        let (code, _, body) = read_response(&mut r);
        assert_eq!(code, 200);
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("hello from {gear}\n")
        );
    }
    drop((w, r));
    let m = node.metrics();
    assert_eq!(
        m["gearhost_frontend_connections_total"] - before_clients,
        1.0
    );
    let opened =
        m["gearhost_frontend_upstream_connections_total{gear=\"web-default\"}"] - before_upstream;
    assert!(
        opened <= 1.0,
        "16 sequential requests opened {opened} connections to the gear"
    );

    // many kept-alive clients at once, their requests in flight together (and
    // their sends batched together): each gets the answers to its own requests
    let clients: Vec<_> = (0..24)
        .map(|n| {
            let addr = node.frontend;
            std::thread::spawn(move || {
                let (mut w, mut r) = kept_connection(addr);
                for i in 0..25 {
                    let gear = if (n + i) % 3 == 0 { "other" } else { "web" };
                    write!(
                        w,
                        "GET /headers?who={n}-{i} HTTP/1.1\r\nHost: {gear}-default.localhost\r\n\r\n"
                    )
                    .expect("request");
                    let (code, _, body) = read_response(&mut r);
                    assert_eq!(code, 200);
                    let seen = json(&String::from_utf8_lossy(&body));
                    assert_eq!(seen["url"], format!("/headers?who={n}-{i}"));
                    assert_eq!(seen["headers"]["host"], format!("{gear}-default.localhost"));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client got another's answer");
    }

    // a large upload, streamed (chunked) and with a length, arrives whole
    let dir = tempfile::tempdir().expect("dir");
    let big = dir.path().join("big.bin");
    let status = Command::new("head")
        .args(["-c", "30000000", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).expect("file"))
        .status()
        .expect("head");
    assert!(status.success());
    let want = sha256_hex(&big);
    let path = big.to_str().expect("utf-8");
    for extra in [
        &["-H", "Transfer-Encoding: chunked", "-T", path, "-X", "POST"][..],
        &["--data-binary", &format!("@{path}")][..],
    ] {
        let mut args = extra.to_vec();
        let u = url(&node, "web-default", "/upload");
        args.push(&u);
        let out = curl(&node, "web-default", &args);
        let got = json(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(got["bytes"], 30_000_000, "{got}");
        assert_eq!(got["sha256"], want.as_str());
    }
    // ... and one over the node's limit is refused, with or without a length
    let status = Command::new("head")
        .args(["-c", "40000000", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).expect("file"))
        .status()
        .expect("head");
    assert!(status.success());
    for extra in [
        &["-H", "Transfer-Encoding: chunked", "-T", path, "-X", "POST"][..],
        &["--data-binary", &format!("@{path}")][..],
    ] {
        let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        let u = url(&node, "web-default", "/upload");
        args.push(&u);
        let out = curl(&node, "web-default", &args);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "413",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // a large streamed download (no length) arrives whole and in order
    let down = dir.path().join("down.bin");
    let out = curl(
        &node,
        "web-default",
        &[
            "-o",
            down.to_str().expect("utf-8"),
            &url(&node, "web-default", "/download?bytes=200000000"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&down).expect("downloaded");
    assert_eq!(bytes.len(), 200_000_000);
    assert!(
        bytes
            .iter()
            .enumerate()
            .step_by(4099)
            .all(|(i, b)| *b as usize == i % (251 * 256) % 251)
    );

    // websockets: the upgrade passes through and frames echo both ways
    let mut ws = WebSocket::connect(&node, "web-default", "/ws");
    ws.send(1, b"hello gear");
    assert_eq!(ws.receive(), (1, b"hello gear".to_vec()));
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(2, &large);
    assert_eq!(ws.receive(), (2, large));
    ws.send(8, b"");
    assert_eq!(ws.receive().0, 8);
    assert!(
        metric(
            &node,
            "gearhost_frontend_upgrades_total{gear=\"web-default\"}"
        ) >= 1.0
    );

    // on the wire: pipelined requests for two gears answered in order, HEAD
    // keeps the connection usable, an absolute target is routed by its host
    let port = node.frontend.port();
    let mut wire = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    wire.write_all(
        b"GET / HTTP/1.1\r\nHost: web-default.localhost\r\n\r\n\
          GET /headers HTTP/1.1\r\nHost: other-default.localhost\r\n\r\n\
          HEAD /pid HTTP/1.1\r\nHost: web-default.localhost\r\n\r\n",
    )
    .expect("write");
    let mut reader = BufReader::new(wire.try_clone().expect("clone"));
    let (code, _, body) = read_response(&mut reader);
    assert_eq!((code, body.as_slice()), (200, &b"hello from web\n"[..]));
    let (code, _, body) = read_response(&mut reader);
    assert_eq!(code, 200);
    assert_eq!(json(&String::from_utf8_lossy(&body))["url"], "/headers");
    // HEAD: a head and no body, and the connection goes on (the next answer
    // below would not parse otherwise)
    let mut line = String::new();
    reader.read_line(&mut line).expect("status");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).expect("header");
        if h.trim().is_empty() {
            break;
        }
    }
    wire.write_all(
        b"GET http://web-default.localhost/headers?abs=1 HTTP/1.1\r\nHost: elsewhere\r\n\r\n",
    )
    .expect("write");
    let (code, _, body) = read_response(&mut reader);
    assert_eq!(code, 200);
    let seen = json(&String::from_utf8_lossy(&body));
    assert_eq!(seen["url"], "/headers?abs=1");
    // the app sees the host the request was routed on (RFC 9112, 3.2.2)
    assert_eq!(seen["headers"]["host"], "web-default.localhost");
    assert_eq!(seen["headers"]["x-forwarded-host"], "web-default.localhost");

    // a kept connection to the app that the app closes as the next request
    // arrives is replaced, and the request is answered, not refused
    wire.write_all(b"GET /arm HTTP/1.1\r\nHost: web-default.localhost\r\n\r\n")
        .expect("write");
    let (code, _, body) = read_response(&mut reader);
    assert_eq!((code, body.as_slice()), (200, &b"armed\n"[..]));
    wire.write_all(b"GET / HTTP/1.1\r\nHost: web-default.localhost\r\n\r\n")
        .expect("write");
    let (code, _, body) = read_response(&mut reader);
    assert_eq!(
        (code, String::from_utf8_lossy(&body).into_owned()),
        (200, "hello from web\n".to_string())
    );

    // an HTTP/1.0 client gets a chunked answer as plain bytes, ended by the close
    let mut old = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    old.write_all(b"GET /download?bytes=100000 HTTP/1.0\r\nHost: web-default.localhost\r\n\r\n")
        .expect("write");
    let mut all = Vec::new();
    old.read_to_end(&mut all).expect("read to the close");
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let body = &all[split + 4..];
    assert_eq!(body.len(), 100_000);
    assert!(body.iter().enumerate().all(|(i, b)| *b as usize == i % 251));

    // a client that starts a head and never ends it is let go after the
    // header timeout, and so is a kept-alive connection with no next request
    for partial in [
        &b"GET / HTTP/1.1\r\nHost: web-default.localhost\r\n"[..],
        &b""[..],
    ] {
        let mut slow_client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        slow_client.write_all(partial).expect("write");
        let began = Instant::now();
        let mut rest = Vec::new();
        slow_client
            .read_to_end(&mut rest)
            .expect("closed by the frontend");
        let waited = began.elapsed();
        assert!(
            waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
            "closed after {waited:?}"
        );
    }

    // a request that could be read two ways is refused, not passed on
    let mut smuggle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    smuggle
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nContent-Length: 4\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        )
        .expect("write");
    let mut answer = Vec::new();
    smuggle.read_to_end(&mut answer).expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("both Content-Length and Transfer-Encoding"),
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");

    // 502 when the app breaks the connection, 504 when it is too slow,
    // 503 when the gear is stopped
    let (code, body) = get(&node, "web-default", "/hangup");
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("Gear <code>web-default</code> broke the connection"),
        "{body}"
    );
    let (code, body) = get(&node, "web-default", "/slow?ms=4000");
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("did not answer within 2s"), "{body}");
    assert_eq!(get(&node, "web-default", "/slow?ms=10").0, 200);
    node.ok(&["stop", "other"]);
    let (code, body) = get(&node, "other-default", "/");
    assert_eq!(code, 503);
    assert!(
        body.contains("is stopped; start it with <code>gear start</code>"),
        "{body}"
    );
    let out = curl(
        &node,
        "other-default",
        &[
            "-D",
            "-",
            "-o",
            "/dev/null",
            &url(&node, "other-default", "/"),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .to_ascii_lowercase()
            .contains("retry-after: 5")
    );

    // the access log has every request; the metrics count them
    let access = node.ok(&["logs", "web", "--access", "-n", "500"]);
    assert!(
        access.contains("\"GET /headers?x=1 HTTP/1.1\" 200"),
        "{access}"
    );
    assert!(access.contains("\"GET /hangup HTTP/1.1\" 502"), "{access}");
    assert!(access.contains("\"POST /upload HTTP/1.1\" 200"), "{access}");
    // the node keeps a gear helper prepared (gears.warm-helpers = 1)
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metrics()["gearhost_warm_helpers"] != 1.0 {
        assert!(Instant::now() < deadline, "no warm helper after 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = node.metrics();
    assert_eq!(m["gearhost_warm_helpers_failing"], 0.0);
    assert!(m["gearhost_frontend_requests_total{gear=\"web-default\",status=\"2xx\"}"] >= 20.0);
    assert!(
        m["gearhost_frontend_errors_total{gear=\"web-default\",reason=\"bad_gateway\"}"] >= 1.0
    );
    assert!(m["gearhost_frontend_errors_total{gear=\"web-default\",reason=\"timeout\"}"] >= 1.0);
    assert!(m["gearhost_frontend_errors_total{gear=\"web-default\",reason=\"too_large\"}"] >= 2.0);
    assert!(m["gearhost_frontend_errors_total{gear=\"\",reason=\"unknown_host\"}"] >= 2.0);
    assert!(m["gearhost_frontend_request_duration_seconds_count{gear=\"web-default\"}"] >= 20.0);
    // where this kernel allows io_uring, each of the three workers passed its
    // sends to the kernel in batches (everything above went through them)
    if gearhost_tests::io_uring_allowed() {
        assert_eq!(m["gearhost_frontend_batching_workers"], 3.0);
        let sends = m["gearhost_frontend_batched_sends_total"];
        let batches = m["gearhost_frontend_send_batches_total"];
        assert!(sends >= 40.0, "{sends} batched sends");
        // the 24 clients at once put more than one send in some batches
        assert!(
            batches >= 1.0 && batches < sends,
            "{batches} batches of {sends} sends"
        );
    } else {
        assert_eq!(m["gearhost_frontend_batching_workers"], 0.0);
    }
    // the same text through the node API
    let text = node.ok(&["node", "metrics"]);
    assert!(
        text.contains("# TYPE gearhost_frontend_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("gearhost_gears{state=\"stopped\"} 1"),
        "{text}"
    );
    for gear in ["web", "other"] {
        node.ok(&["destroy", gear]);
    }
    assert_eq!(
        get(&node, "api.example.com", "/").0,
        404,
        "aliases go with their gear"
    );
}

#[test]
fn an_idle_gear_is_woken_once_by_its_requests_even_after_a_node_restart() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    // two workers: the requests waiting for one wake-up come from both; they
    // send one call per connection (the other tests batch their sends)
    let node = TestNode::start(
        60200,
        "idle-timeout = \"3s\"\n[http]\nworkers = 2\nbatch-sends = false",
    );
    assert_eq!(node.metrics()["gearhost_frontend_batching_workers"], 0.0);
    let _nodejs = install(&node, "nodejs-cartridge");
    let _diy = install(&node, "diy-cartridge");
    node.ok(&["create", "web", "--cartridge", "nodejs"]);
    node.ok(&["deploy", "web", &app_dir()]);
    let uid = json(&node.ok(&["show", "web", "--json"]))["uid"]
        .as_u64()
        .expect("uid");

    // idled by hand: its processes are gone, a request wakes it and is served
    node.ok(&["idle", "--stop", "web"]);
    assert_eq!(state(&node, "web"), "idle");
    assert!(
        json(&node.ok(&["status", "web", "--json"]))["processes"]
            .as_array()
            .is_none_or(|p| p.iter().all(|p| p["pid"].is_null()))
    );
    let (code, body) = get(&node, "web-default", "/");
    assert_eq!((code, body.as_str()), (200, "hello from web\n"));
    assert_eq!(state(&node, "web"), "running");

    // idled by hand while a request is with the app: it is answered first
    let slow = std::thread::scope(|s| {
        let slow = s.spawn(|| get(&node, "web-default", "/slow?ms=1500"));
        std::thread::sleep(Duration::from_millis(400));
        node.ok(&["idle", "--stop", "web"]);
        slow.join().expect("slow request")
    });
    assert_eq!(slow, (200, "slow\n".to_string()));
    assert_eq!(state(&node, "web"), "idle");
    let (code, body) = get(&node, "web-default", "/");
    assert_eq!((code, body.as_str()), (200, "hello from web\n"));

    // idled by the idler after 3 s without a request
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&node, "web") != "idle" {
        assert!(
            Instant::now() < deadline,
            "never idled:\n{}",
            node.ok(&["logs", "web", "--hooks"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        node.ok(&["logs", "web", "--hooks"])
            .contains("idling the gear: no request for")
    );

    // 20 concurrent requests during one wake-up: all served, one start
    let starts = |node: &TestNode| {
        node.ok(&["logs", "web", "--hooks", "-n", "10000"])
            .matches("start[node] hook started")
            .count()
    };
    let starts_before = starts(&node);
    let wakeups_before = metric(
        &node,
        "gearhost_frontend_wakeups_total{gear=\"web-default\"}",
    );
    let node = std::sync::Arc::new(node);
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let node = node.clone();
            std::thread::spawn(move || get(&node, "web-default", "/"))
        })
        .collect();
    for h in handles {
        assert_eq!(
            h.join().expect("thread"),
            (200, "hello from web\n".to_string())
        );
    }
    assert_eq!(starts(&node) - starts_before, 1, "started once");
    assert_eq!(
        metric(
            &node,
            "gearhost_frontend_wakeups_total{gear=\"web-default\"}"
        ) - wakeups_before,
        1.0
    );
    let mut node = std::sync::Arc::try_unwrap(node).expect("one owner");

    // idle across a node restart: it stays idle, and a request still wakes it
    node.ok(&["idle", "--stop", "web"]);
    node.kill9_and_restart();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(state(&node, "web"), "idle");
    let running = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("status")).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())
                })
            })
        })
        .count();
    assert_eq!(running, 0, "an idle gear runs nothing after a node restart");
    assert_eq!(get(&node, "web-default", "/").1, "hello from web\n");
    assert_eq!(state(&node, "web"), "running");

    // unidle starts it without a request; idling what cannot be woken is refused
    node.ok(&["idle", "--stop", "web"]);
    node.ok(&["unidle", "web"]);
    assert_eq!(state(&node, "web"), "running");
    node.ok(&["stop", "web"]);
    let out = node.gear(&["idle", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only a running gear can be idled"));

    // a request that comes while the gear is being idled waits, and wakes it
    // after (its stop script takes a second, so the request surely comes
    // in the middle)
    let slow_stop = tempfile::tempdir().expect("dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", app_dir()))
        .arg(slow_stop.path())
        .status()
        .expect("cp");
    assert!(status.success());
    let stop = slow_stop.path().join(".gear/stop");
    std::fs::write(&stop, "#!/bin/sh\nsleep 1\n").expect("stop script");
    let status = Command::new("chmod")
        .arg("+x")
        .arg(&stop)
        .status()
        .expect("chmod");
    assert!(status.success());
    node.ok(&["create", "flaky", "--cartridge", "diy"]);
    node.ok(&["deploy", "flaky", slow_stop.path().to_str().expect("utf-8")]);
    assert_eq!(get(&node, "flaky-default", "/").1, "hello from flaky\n");
    let node = std::sync::Arc::new(node);
    let idler = {
        let node = node.clone();
        std::thread::spawn(move || node.ok(&["idle", "--stop", "flaky"]))
    };
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(state(&node, "flaky"), "stopping");
    assert_eq!(
        get(&node, "flaky-default", "/"),
        (200, "hello from flaky\n".to_string())
    );
    idler.join().expect("gear idle");
    assert_eq!(state(&node, "flaky"), "running");
    let hooks = node.ok(&["logs", "flaky", "--hooks", "-n", "200"]);
    assert!(
        hooks.contains("idling the gear: asked by `gear idle --stop`"),
        "{hooks}"
    );
    assert!(
        hooks.contains("a request came for the idle gear"),
        "{hooks}"
    );
    let node = std::sync::Arc::try_unwrap(node).expect("one owner");

    // a gear that fails to wake answers 503 and says why
    node.ok(&["idle", "--stop", "flaky"]);
    let out = node.gear(&[
        "exec",
        "flaky",
        "--",
        "sh",
        "-c",
        "touch \"$GEAR_DATA_DIR/broken\"",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, body) = get(&node, "flaky-default", "/");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("was idle and did not start again"), "{body}");
    assert!(
        metric(
            &node,
            "gearhost_frontend_wake_failures_total{gear=\"flaky-default\"}"
        ) >= 1.0
    );
    for gear in ["web", "flaky"] {
        node.ok(&["destroy", gear]);
    }
}

#[test]
fn a_gear_reaches_other_gears_through_the_frontend_only_by_their_public_names() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    // one frontend worker: the two requests below, made at once, meet on it
    let node = TestNode::start(60400, "idle-timeout = \"off\"\n[http]\nworkers = 1");
    let _nodejs = install(&node, "nodejs-cartridge");
    for gear in ["a", "b"] {
        node.ok(&["create", gear, "--cartridge", "nodejs"]);
        node.ok(&["deploy", gear, &app_dir()]);
    }
    let port = node.frontend.port();
    let inside = |script: &str| {
        let out = node.gear(&["exec", "a", "--", "sh", "-c", script]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // by its public name, gear b answers, from inside gear a too
    let (code, out, err) = inside(&format!(
        "curl -sS --resolve b-default.localhost:{port}:127.0.0.1 http://b-default.localhost:{port}/"
    ));
    assert_eq!((code, out.as_str()), (Some(0), "hello from b\n"), "{err}");
    // the door hands its connections to the frontend's workers like the
    // host's listener: a request served beside another one (a slow answer
    // held open meanwhile: a second to arrive, two more to spare) sends its
    // request and its answer in the worker's batch (a request served alone
    // sends at once)
    if gearhost_tests::io_uring_allowed() {
        let batched = || node.metrics()["gearhost_frontend_batched_sends_total"];
        let before = batched();
        let (code, out, err) = inside(&format!(
            "curl -sS --resolve b-default.localhost:{port}:127.0.0.1 \
             'http://b-default.localhost:{port}/slow?ms=3000' > /tmp/slow & sleep 1; \
             curl -sS --resolve b-default.localhost:{port}:127.0.0.1 http://b-default.localhost:{port}/; \
             wait; cat /tmp/slow"
        ));
        assert_eq!(
            (code, out.as_str()),
            (Some(0), "hello from b\nslow\n"),
            "{err}"
        );
        assert!(
            batched() >= before + 2.0,
            "{} batched sends",
            batched() - before
        );
    }
    // a port in the name never selects another port of the gear
    let (_, out, _) = inside(&format!(
        "curl -sS -H 'Host: b-default.localhost:5432' http://127.0.0.1:{port}/pid"
    ));
    assert!(out.trim().parse::<u32>().is_ok(), "{out}");
    // addresses and ports are not names: no open proxy, no tunnels
    for request in [
        format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' -H 'Host: 127.0.0.1:8080' http://127.0.0.1:{port}/"
        ),
        format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' -x http://127.0.0.1:{port} http://127.0.0.1:8080/"
        ),
        format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' -x http://127.0.0.1:{port} http://localhost:8080/"
        ),
    ] {
        let (_, out, err) = inside(&request);
        assert_eq!(out, "404", "{request}: {err}");
    }
    let (_, out, _) = inside(&format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' -X CONNECT -H 'Host: b-default.localhost' http://127.0.0.1:{port}/"
    ));
    assert_eq!(out, "405");
    // the metrics endpoint and the node API are out of reach
    let (code, _, _) = inside(&format!(
        "curl -sS --max-time 5 http://127.0.0.1:{}/metrics",
        node.metrics.port()
    ));
    assert_ne!(code, Some(0), "a gear reached the metrics endpoint");
    let (_, out, _) = inside(&format!(
        "curl -sS -H 'Host: b-default.localhost' http://127.0.0.1:{port}/metrics"
    ));
    assert_eq!(
        out, "not here\n",
        "/metrics on a gear's name is the gear's own path"
    );
    let (_, out, _) = inside(&format!(
        "test -e {} && echo visible || echo absent",
        node.socket.display()
    ));
    assert_eq!(out, "absent\n");
    // requests from inside gears are logged and counted like any other
    let access = node.ok(&["logs", "b", "--access"]);
    assert!(
        access.contains("127.0.0.1 \"GET / HTTP/1.1\" 200"),
        "{access}"
    );
    for gear in ["a", "b"] {
        node.ok(&["destroy", gear]);
    }
}

/// Writes `request` on a new connection to the frontend and reads until the
/// frontend closes it (or 5 s pass: what came until then).
fn exchange(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Writes `request` on a new connection and reads one answer.
fn one_answer(port: u16, request: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let (mut w, mut r) = kept_connection(([127, 0, 0, 1], port).into());
    w.write_all(request).expect("write");
    read_response(&mut r)
}

#[test]
fn requests_reach_a_gear_as_the_frontend_read_them_or_not_at_all() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(65000, "idle-timeout = \"off\"");
    let _nodejs = install(&node, "nodejs-cartridge");
    for gear in ["web", "other"] {
        node.ok(&["create", gear, "--cartridge", "nodejs"]);
        node.ok(&["deploy", gear, &app_dir()]);
    }
    let port = node.frontend.port();

    // refused by the frontend itself (its own page says why), never passed
    // on, and nothing behind them answered
    let refused: &[(&[u8], &str)] = &[
        // two Host fields: routed on one, the app would read the other
        (
            b"GET /headers HTTP/1.1\r\nHost: other-default.localhost\r\nHost: web-default.localhost\r\n\r\n",
            "more than one Host header",
        ),
        (
            b"GET /headers HTTP/1.1\r\nHost: web-default.localhost\r\nhost: web-default.localhost\r\n\r\n",
            "more than one Host header",
        ),
        // a host that URL parsers read differently
        (
            b"GET /headers HTTP/1.1\r\nHost: other-default.localhost@web-default.localhost\r\n\r\n",
            "its host is not a host name",
        ),
        (
            b"GET http://other-default.localhost\\@web-default.localhost/headers HTTP/1.1\r\nHost: other-default.localhost\r\n\r\n",
            "its host is not a host name",
        ),
        // targets the app would read as naming another host, or nothing
        (
            b"GET ftp://other-default.localhost/headers HTTP/1.1\r\nHost: web-default.localhost\r\n\r\n",
            "its target is neither a path",
        ),
        (
            b"GET /headers#x HTTP/1.1\r\nHost: web-default.localhost\r\n\r\n",
            "carries a fragment",
        ),
        // a head whose lines end with a line feed alone
        (
            b"GET / HTTP/1.1\nHost: web-default.localhost\n\n",
            "ends without a carriage return",
        ),
        // lengths and codings a peer could read another way
        (
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nContent-Length: +3\r\n\r\nabc",
            "Content-Length is not one number",
        ),
        (
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "Content-Length is not one number",
        ),
        (
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "Transfer-Encoding is not chunked alone",
        ),
        (
            b"POST /upload HTTP/1.0\r\nHost: web-default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.0 and has a Transfer-Encoding",
        ),
        // chunked framing: a bare line feed ends the trailers for some
        // readers and not for others, and what follows is a second request
        (
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\nGET /headers HTTP/1.1\r\nHost: other-default.localhost\r\n\r\n",
            "chunked body is malformed",
        ),
        (
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\nX-Sum: 1\nGET /headers HTTP/1.1\r\n\r\n",
            "chunked body is malformed",
        ),
        (
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\nabc\r\n0\r\n\r\n",
            "chunked body is malformed",
        ),
        (
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
              3 5\r\nabc\r\n0\r\n\r\n",
            "chunked body is malformed",
        ),
        (
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;x\0y\r\nabc\r\n0\r\n\r\n",
            "chunked body is malformed",
        ),
        (
            b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\nX-Sum: 1\r\n folded\r\n\r\n",
            "chunked body is malformed",
        ),
    ];
    let mut wrong = Vec::new();
    for (request, why) in refused {
        let answer = exchange(port, request);
        if !(answer.starts_with("HTTP/1.1 400")
            && answer.contains(why)
            && answer.lines().filter(|l| l.starts_with("HTTP/1.")).count() == 1)
        {
            wrong.push(format!(
                "{:?}\n  got: {:?}",
                String::from_utf8_lossy(request),
                answer.chars().take(600).collect::<String>()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} requests were not refused by the frontend:\n{}",
        wrong.len(),
        refused.len(),
        wrong.join("\n")
    );

    // passed on: the app sees the host the request was routed on, once
    let (code, _, body) = one_answer(
        port,
        b"GET http://web-default.localhost/headers?abs=1 HTTP/1.1\r\nHost: other-default.localhost\r\n\r\n",
    );
    assert_eq!(code, 200);
    let seen = json(&String::from_utf8_lossy(&body));
    assert_eq!(seen["url"], "/headers?abs=1");
    assert_eq!(seen["headers"]["host"], "web-default.localhost", "{seen}");
    assert_eq!(
        seen["headers"]["x-forwarded-host"], "web-default.localhost",
        "{seen}"
    );
    // an absolute target with a query and no path gets the path /
    let (code, _, body) = one_answer(
        port,
        b"GET HTTP://web-default.localhost?q=1 HTTP/1.1\r\nHost: web-default.localhost\r\n\r\n",
    );
    assert_eq!((code, body.as_slice()), (200, &b"hello from web\n"[..]));
    // naming Host or Content-Length in Connection takes neither away from
    // the app: a body the app did not know of would be read as a second
    // request (with its own Host and X-Forwarded-For)
    let (code, _, body) = one_answer(
        port,
        b"GET /headers HTTP/1.1\r\nHost: web-default.localhost\r\nConnection: host\r\n\r\n",
    );
    assert_eq!(code, 200);
    let seen = json(&String::from_utf8_lossy(&body));
    assert_eq!(seen["headers"]["host"], "web-default.localhost", "{seen}");
    // the frontend's own fields spelt with underscores, which CGI-style
    // servers (gunicorn before 22, PHP) hand their apps as the real ones,
    // stay behind; other underscored fields pass
    let (code, _, body) = one_answer(
        port,
        b"GET /headers HTTP/1.1\r\nHost: web-default.localhost\r\nX_Forwarded_For: 6.6.6.6\r\n\
          X_Forwarded_Host: other-default.localhost\r\nX_Request_Id: 7\r\n\r\n",
    );
    assert_eq!(code, 200);
    let seen = json(&String::from_utf8_lossy(&body));
    let headers = &seen["headers"];
    assert!(headers.get("x_forwarded_for").is_none(), "{seen}");
    assert!(headers.get("x_forwarded_host").is_none(), "{seen}");
    assert_eq!(headers["x_request_id"], "7", "{seen}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{seen}");
    let smuggled = b"GET /headers HTTP/1.1\r\nHost: other-default.localhost\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nConnection: content-length\r\n\
         Content-Length: {}\r\n\r\n",
        smuggled.len()
    )
    .into_bytes();
    request.extend_from_slice(smuggled);
    let (code, _, body) = one_answer(port, &request);
    assert_eq!(code, 200);
    let got = json(&String::from_utf8_lossy(&body));
    assert_eq!(got["bytes"], smuggled.len(), "{got}");
    // strict framing still takes what clients send: extensions, trailers
    let (code, _, body) = one_answer(
        port,
        b"POST /upload HTTP/1.1\r\nHost: web-default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;name=\"a b\"\r\nabc\r\n0000000000000002\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
    );
    assert_eq!(code, 200);
    assert_eq!(json(&String::from_utf8_lossy(&body))["bytes"], 5);

    // the refusals are counted as bad requests
    assert!(
        metric(
            &node,
            "gearhost_frontend_errors_total{gear=\"\",reason=\"bad_request\"}"
        ) >= 10.0
    );
    for gear in ["web", "other"] {
        node.ok(&["destroy", gear]);
    }
}
