//! End to end: HTTP/2 on the frontend's HTTPS listener, through the real
//! node and gears, with real clients (curl, h2load, Python's ssl module):
//! ALPN chooses h2, a streamed download of megabytes and uploads (of known
//! and of no declared length) arrive intact, the body limit answers 413,
//! an idle gear is woken by a stream, many streams share one connection,
//! the access log says `HTTP/2.0`, the app is told the scheme and the
//! client's address, HSTS comes over h2 too, a websocket still works over
//! TLS on HTTP/1.1, and the operator sees the certificate's expiry in
//! `gear node check` and `/metrics`.

use std::path::Path;
use std::process::Command;

use gearhost_tests::{TestNode, cartridge_dir, free_port, json, privileged, test_pki};

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// The test's HTTPS endpoint: the node's port, its CA, the host name.
struct Endpoint<'a> {
    dir: &'a Path,
    host: &'a str,
    port: u16,
}

impl Endpoint<'_> {
    /// `curl --http2` of `path` with `args` before the URL: (exit code,
    /// stdout, stderr).
    fn curl(&self, path: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--http2", "--max-time", "60", "--cacert"])
            .arg(self.dir.join("ca.pem"))
            .arg("--resolve")
            .arg(format!("{}:{}:127.0.0.1", self.host, self.port))
            .args(args)
            .arg(format!("https://{}:{}{path}", self.host, self.port))
            .output()
            .expect("curl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The frontend test app's download pattern: byte `i` is `i % 251`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn sha256(data: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("data");
    std::fs::write(&file, data).expect("write");
    let out = Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A websocket over TLS offering `alpn` (Python's ssl module): prints the
/// protocol chosen, then the echo of one text frame (when it is http/1.1).
const WS_OVER_TLS: &str = r#"
import socket, ssl, sys, os, base64
host, port, ca, alpn = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(alpn)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname=host)
print(s.selected_alpn_protocol())
if s.selected_alpn_protocol() != "http/1.1":
    sys.exit(0)
key = base64.b64encode(os.urandom(16)).decode()
crlf = "\r\n"
lines = ["GET /ws HTTP/1.1", "Host: " + host, "Upgrade: websocket", "Connection: Upgrade",
         "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13", "", ""]
s.sendall(crlf.join(lines).encode())
head = b""
while (crlf + crlf).encode() not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
msg = b"hello over tls"
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
h = s.recv(2)
n = h[1] & 0x7f
data = b""
while len(data) < n:
    data += s.recv(n - len(data))
print(data.decode())
"#;

#[test]
fn http2_is_negotiated_and_serves_like_http11() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let pki = tempfile::tempdir().expect("pki");
    let dir = pki.path();
    test_pki(dir, "wildcard", &["*.gears.test"]);
    let port = free_port();
    let node = TestNode::start_shared(
        87000,
        &format!(
            "domain = \"gears.test\"\n[http]\nmax-body = \"4MiB\"\n\
             [https]\nlisten = \"127.0.0.1:{port}\"\ncertificate = \"{}\"\nkey = \"{}\"\n",
            dir.join("wildcard.pem").display(),
            dir.join("wildcard.key").display()
        ),
        "idle-timeout = \"off\"\n",
    );
    let cartridge = cartridge_dir("nodejs-cartridge");
    node.ok(&["cartridge", "install", path(cartridge.path())]);
    node.ok(&["create", "app", "--cartridge", "nodejs"]);
    let app = gearhost_tests::workspace_root().join("tests/apps/frontend-app");
    node.ok(&["deploy", "app", path(&app)]);
    let ep = Endpoint {
        dir,
        host: "app-default.gears.test",
        port,
    };

    // ALPN chooses h2
    let (code, out, err) = ep.curl("/", &["-w", "\n%{http_version}"]);
    assert_eq!(code, 0, "{err}\n{}", node.log());
    assert_eq!(out, "hello from app\n\n2", "{err}");

    // a streamed download (no length: chunked from the app) of 8 MiB, intact
    let bytes = 8 * 1024 * 1024;
    let work = tempfile::tempdir().expect("work");
    let file = work.path().join("download");
    let (code, out, err) = ep.curl(
        &format!("/download?bytes={bytes}"),
        &["-o", path(&file), "-w", "%{http_version} %{http_code}"],
    );
    assert_eq!((code, out.as_str()), (0, "2 200"), "{err}");
    let got = std::fs::read(&file).expect("the download");
    assert_eq!(got.len(), bytes);
    assert_eq!(sha256(&got), sha256(&pattern(bytes)), "the body changed");

    // uploads: of a declared length, and streamed with none (curl -T from
    // stdin sends no content-length over h2)
    let up = pattern(3 * 1024 * 1024 + 17);
    let upfile = work.path().join("upload");
    std::fs::write(&upfile, &up).expect("upload file");
    let (code, out, err) = ep.curl(
        "/upload",
        &[
            "--data-binary",
            &format!("@{}", path(&upfile)),
            "-H",
            "content-type: application/octet-stream",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let answer = json(&out);
    assert_eq!(answer["bytes"], up.len());
    assert_eq!(answer["sha256"], sha256(&up));
    let streamed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat {file} | curl -sS --http2 --max-time 60 --cacert {ca} --resolve {host}:{port}:127.0.0.1 \
             -X POST -T - https://{host}:{port}/upload",
            file = path(&upfile),
            ca = path(&dir.join("ca.pem")),
            host = ep.host,
        ))
        .output()
        .expect("curl");
    let answer = json(&String::from_utf8_lossy(&streamed.stdout));
    assert_eq!(answer["bytes"], up.len(), "{streamed:?}");
    assert_eq!(answer["sha256"], sha256(&up));

    // over the body limit: 413, declared or streamed
    let big = work.path().join("big");
    std::fs::write(&big, pattern(5 * 1024 * 1024)).expect("big");
    let (code, out, err) = ep.curl(
        "/upload",
        &[
            "--data-binary",
            &format!("@{}", path(&big)),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "413"), "{err}");
    let streamed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat {file} | curl -sS --http2 --max-time 60 --cacert {ca} --resolve {host}:{port}:127.0.0.1 \
             -X POST -T - -o /dev/null -w '%{{http_code}}' https://{host}:{port}/upload",
            file = path(&big),
            ca = path(&dir.join("ca.pem")),
            host = ep.host,
        ))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&streamed.stdout),
        "413",
        "{streamed:?}"
    );

    // the app is told the scheme and the client's address
    let (code, out, err) = ep.curl("/headers", &[]);
    assert_eq!(code, 0, "{err}");
    let seen = json(&out);
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{out}");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1", "{out}");
    assert_eq!(seen["headers"]["host"], format!("{}:{port}", ep.host));

    // many streams on one connection
    let out = Command::new("h2load")
        .args(["-n", "200", "-c", "1", "-m", "20", "--connect-to"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("https://{}:{port}/", ep.host))
        .output()
        .expect("h2load");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("Application protocol: h2"),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed"),
        "{report}"
    );

    // the access log records the protocol
    let access = node.ok(&["logs", "app", "--access", "-n", "500"]);
    assert!(access.contains("\"GET / HTTP/2.0\" 200"), "{access}");
    assert!(access.contains("\"POST /upload HTTP/2.0\" 413"), "{access}");

    // HSTS over h2, as over HTTP/1.1
    node.ok(&["https", "app", "--hsts", "1y"]);
    let (code, out, err) = ep.curl("/", &["-o", "/dev/null", "-D", "-"]);
    assert_eq!(code, 0, "{err}");
    let head = out.to_ascii_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(
        head.contains("strict-transport-security: max-age=31557600"),
        "{head}"
    );

    // an idle gear is woken by a stream
    node.ok(&["idle", "--stop", "app"]);
    assert!(node.ok(&["status", "app"]).contains("idle"));
    let (code, out, err) = ep.curl("/", &["-w", "\n%{http_version}"]);
    assert_eq!((code, out.as_str()), (0, "hello from app\n\n2"), "{err}");
    assert!(!node.ok(&["status", "app"]).contains("idle"));

    // a websocket over TLS: a client that wants one offers http/1.1
    let ws = |alpn: &str| {
        let out = Command::new("python3")
            .args(["-c", WS_OVER_TLS, ep.host, &port.to_string()])
            .arg(dir.join("ca.pem"))
            .arg(alpn)
            .output()
            .expect("python3");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert_eq!(ws("http/1.1").trim(), "http/1.1\nhello over tls");
    assert_eq!(ws("h2,http/1.1").trim(), "h2", "h2 is preferred");

    // the operator sees the listener and the certificates' expiry
    let config = node.dir.path().join("node.toml");
    let check = node.gear(&["node", "check", "--config", path(&config)]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains(&format!(
            "https: listening on 127.0.0.1:{port}, 1 certificate(s) served; the first to expire: *.gears.test at "
        )),
        "{report}"
    );
    let metrics = node.metrics();
    let expiry = metrics
        .get("gearhost_certificate_expiry_seconds{host=\"*.gears.test\"}")
        .copied()
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    // the test CA's certificates last 30 days
    assert!(
        expiry > now + 29.0 * 86_400.0 && expiry < now + 31.0 * 86_400.0,
        "{expiry} {metrics:?}"
    );
}
