//! End to end: the frontend's HTTPS listener with real certificates (made
//! by openssl, signed by a CA of the test's own) and the real curl: the
//! operator's certificate serves every gear's name, an alias is served with
//! the certificate its owner attached, certificates that do not fit are
//! refused with the reason, the app learns the scheme from
//! X-Forwarded-Proto, and a renewed operator certificate is served without a
//! restart.

use std::path::{Path, PathBuf};
use std::process::Command;

use gearhost_tests::apps::tree;
use gearhost_tests::{TestNode, cartridge_dir, free_port, privileged, test_ca, test_cert};

/// `curl` of `https://HOST:PORT/PATH` trusting only the test's CA, HOST
/// resolved to loopback: (exit code, body).
fn curl(dir: &Path, host: &str, port: u16, path: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The serial number of the certificate served for `host`.
fn served_serial(dir: &Path, host: &str, port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {host} -CAfile ca.pem \
             </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .current_dir(dir)
        .output()
        .expect("s_client");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A websocket over TLS, in Python's ssl module: handshake through the
/// frontend, one masked text frame out, its echo back; prints the echo.
const WS_OVER_TLS: &str = r#"
import socket, ssl, sys, os, base64
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname=host)
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

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

#[test]
fn gears_are_served_over_https_with_the_certificate_for_their_name() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let pki = tempfile::tempdir().expect("pki");
    let dir = pki.path();
    test_ca(dir, "Gearhost test CA");
    test_cert(dir, "wildcard", &["*.gears.test"]);
    test_cert(dir, "alias", &["www.example.org"]);
    test_cert(dir, "other", &["other.example.org"]);
    let port = free_port();
    let node = TestNode::start_shared(
        86000,
        &format!(
            "domain = \"gears.test\"\n[https]\nlisten = \"127.0.0.1:{port}\"\ncertificate = \"{}\"\nkey = \"{}\"\n",
            dir.join("wildcard.pem").display(),
            dir.join("wildcard.key").display()
        ),
        "",
    );
    let _carts: Vec<_> = ["static-cartridge", "python-cartridge"]
        .iter()
        .map(|p| {
            let d = cartridge_dir(p);
            node.ok(&["cartridge", "install", path(d.path())]);
            d
        })
        .collect();

    // a gear's own name, with the operator's certificate
    node.ok(&["create", "web", "--cartridge", "static"]);
    let site = tree(&[("index.html", "over tls\n")]);
    node.ok(&["deploy", "web", path(site.path())]);
    let (code, body) = curl(dir, "web-default.gears.test", port, "/");
    assert_eq!(code, 0, "{body}\n{}", node.log());
    assert_eq!(body.trim(), "over tls");

    // a websocket over TLS: the upgrade passes through, frames echo
    let _nodejs = {
        let d = cartridge_dir("nodejs-cartridge");
        node.ok(&["cartridge", "install", path(d.path())]);
        d
    };
    node.ok(&["create", "ws", "--cartridge", "nodejs"]);
    let app = gearhost_tests::workspace_root().join("tests/apps/frontend-app");
    node.ok(&["deploy", "ws", path(&app)]);
    let out = Command::new("python3")
        .args([
            "-c",
            WS_OVER_TLS,
            "ws-default.gears.test",
            &port.to_string(),
        ])
        .arg(dir.join("ca.pem"))
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello over tls",
        "{out:?}"
    );

    // the app is told the scheme
    node.ok(&["create", "echo", "--cartridge", "python"]);
    let app = tree(&[(
        "app.py",
        "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
         class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        \
         body = (self.headers.get('X-Forwarded-Proto', '') + '\\n').encode()\n        \
         self.send_response(200)\n        \
         self.send_header('Content-Length', str(len(body)))\n        \
         self.end_headers()\n        self.wfile.write(body)\n\
         HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
    )]);
    node.ok(&["deploy", "echo", path(app.path())]);
    let (code, body) = curl(dir, "echo-default.gears.test", port, "/");
    assert_eq!((code, body.trim()), (0, "https"), "{body}");
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!(
            "echo-default.gears.test:{}:127.0.0.1",
            node.frontend.port()
        ))
        .arg(format!(
            "http://echo-default.gears.test:{}/",
            node.frontend.port()
        ))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout).trim(),
        "http",
        "plain HTTP says http: {plain:?}"
    );

    // an alias with a certificate of its own
    let out = node.ok(&[
        "alias",
        "add",
        "web",
        "www.example.org",
        "--cert",
        path(&dir.join("alias.pem")),
        "--key",
        path(&dir.join("alias.key")),
    ]);
    assert!(out.contains("now also answers to www.example.org"), "{out}");
    let (code, body) = curl(dir, "www.example.org", port, "/");
    assert_eq!((code, body.trim()), (0, "over tls"), "{body}");

    // certificates that do not fit are refused with the reason
    let refuse = |cert: &str, key: &str, says: &str| {
        let out = node.gear(&[
            "alias",
            "cert",
            "web",
            "www.example.org",
            "--cert",
            path(&dir.join(cert)),
            "--key",
            path(&dir.join(key)),
        ]);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    };
    refuse("other.pem", "other.key", "does not cover www.example.org");
    refuse("alias.pem", "other.key", "not the certificate's");
    refuse("alias.key", "alias.key", "no certificate");
    // and the attached one is still served
    let (code, _) = curl(dir, "www.example.org", port, "/");
    assert_eq!(code, 0);
    // a new alias whose certificate is refused is not kept
    let out = node.gear(&[
        "alias",
        "add",
        "web",
        "shop.example.org",
        "--cert",
        path(&dir.join("alias.pem")),
        "--key",
        path(&dir.join("alias.key")),
    ]);
    assert!(!out.status.success(), "{out:?}");
    let aliases = node.ok(&["alias", "list", "web"]);
    assert!(!aliases.contains("shop.example.org"), "{aliases}");

    // a name with no certificate gets no handshake
    let (code, body) = curl(dir, "other.example.org", port, "/");
    assert_ne!(code, 0, "{body}");
    // the key is the node's alone
    use std::os::unix::fs::PermissionsExt;
    let kept = node.state_dir().join("tls/www.example.org.pem");
    let mode = std::fs::metadata(&kept).expect("kept").permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");

    // the gear asks for HTTPS: plain HTTP is redirected (without waking an
    // idle gear, and for ACME's challenges not at all), TLS answers carry HSTS
    let out = node.ok(&["https", "web", "--redirect", "on", "--hsts", "1y"]);
    assert!(
        out.contains("redirect to HTTPS on") && out.contains("max-age=31557600"),
        "{out}"
    );
    node.ok(&["idle", "--stop", "web"]);
    let fport = node.frontend.port();
    let plain = |host: &str, path: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "--max-time",
                "20",
                "--resolve",
            ])
            .arg(format!("{host}:{fport}:127.0.0.1"))
            .arg(format!("http://{host}:{fport}{path}"))
            .output()
            .expect("curl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).to_ascii_lowercase(),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let head = plain("web-default.gears.test", "/a/b?c=d");
    assert!(head.starts_with("http/1.1 308"), "{head}\n{}", node.log());
    assert!(
        head.contains(&format!(
            "location: https://web-default.gears.test:{port}/a/b?c=d"
        )),
        "{head}"
    );
    assert!(
        !head.contains("strict-transport-security"),
        "no HSTS over plain HTTP: {head}"
    );
    let status = node.ok(&["status", "web"]);
    assert!(
        status.contains("idle"),
        "a redirect does not wake the gear: {status}"
    );
    let head = plain("www.example.org", "/");
    assert!(
        head.contains("location: https://www.example.org:"),
        "{head}"
    );
    let head = plain(
        "web-default.gears.test",
        "/.well-known/acme-challenge/token",
    );
    assert!(
        !head.starts_with("http/1.1 308"),
        "ACME's path stays plain: {head}"
    );
    let tls_head = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "20",
            "--cacert",
        ])
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("web-default.gears.test:{port}:127.0.0.1"))
        .arg(format!("https://web-default.gears.test:{port}/"))
        .output()
        .expect("curl");
    let tls_head = String::from_utf8_lossy(&tls_head.stdout).to_ascii_lowercase();
    assert!(
        tls_head.contains("strict-transport-security: max-age=31557600"),
        "{tls_head}"
    );
    let out = node.ok(&["https", "web", "--redirect", "off", "--hsts", "off"]);
    assert!(out.contains("redirect to HTTPS off, HSTS off"), "{out}");
    let head = plain("web-default.gears.test", "/");
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // removing the alias stops serving its certificate
    node.ok(&["alias", "remove", "web", "www.example.org"]);
    assert!(!kept.exists());
    let (code, _) = curl(dir, "www.example.org", port, "/");
    assert_ne!(code, 0);

    // a renewed operator certificate is served without a restart (SIGHUP
    // reads it at once; otherwise within half a minute)
    let before = served_serial(dir, "web-default.gears.test", port);
    test_cert(dir, "wildcard", &["*.gears.test"]);
    let _ = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let after = served_serial(dir, "web-default.gears.test", port);
        if !after.is_empty() && after != before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {before} after the renewal\n{}",
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, body) = curl(dir, "web-default.gears.test", port, "/");
    assert_eq!((code, body.trim()), (0, "over tls"));
    let _: PathBuf = kept;
}
