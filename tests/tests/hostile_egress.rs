//! Hostile gears, build egress: a diy app's `.gear/build` (gear-controlled
//! code, run by the real node through the real `gear` binary) tries to reach
//! what a build must not: a server on the host's loopback, the node's
//! frontend, a private address the operator did not allow, an address of the
//! host's own interfaces or of a local route, an abstract unix socket of the
//! host, and anything at all without the proxy. It reaches only the server
//! the node configuration allows.
//!
//! The test makes its own network namespace joined to the host by a veth
//! pair; the server there answers on two addresses, one in the block the
//! node's `build.egress-allow` lists and one outside it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use gearhost_tests::{TestNode, cartridge_dir, privileged, workspace_root};

/// Runs `ip` with `args`, failing the test when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the host by a veth pair, removed on drop
/// (also when the test fails half-way):
/// host `<a>.1/30` <-> namespace `<a>.2/30`, plus `<b>.2/32` in the
/// namespace, routed from the host through the pair.
struct TestNet {
    ns: String,
    host_if: String,
    /// The host's end (an address of the host's own interfaces).
    host_addr: Ipv4Addr,
    /// The namespace's address in the allowed /30.
    allowed: Ipv4Addr,
    /// The namespace's second address, private and not allowed.
    private: Ipv4Addr,
    /// The /30 the node's configuration allows.
    allowed_block: String,
    /// A /24 the host accepts as its own through a `local` route, without
    /// any interface address in it (the node's configuration allows it too).
    local_block: String,
    /// An address in `local_block`.
    local_addr: Ipv4Addr,
}

impl TestNet {
    /// `tag` (a digit) tells the tests of one process apart.
    fn new(tag: u8) -> TestNet {
        let pid = std::process::id() % 1_000_000;
        let n = ((pid % 100) * 2 + u32::from(tag) % 2 + 20) as u8;
        let net = TestNet {
            ns: format!("ghegress-{pid}-{tag}"),
            host_if: format!("ghe{pid}{tag}h"),
            host_addr: Ipv4Addr::new(10, 213, n, 1),
            allowed: Ipv4Addr::new(10, 213, n, 2),
            private: Ipv4Addr::new(10, 214, n, 2),
            allowed_block: format!("10.213.{n}.0/30"),
            local_block: format!("10.215.{n}.0/24"),
            local_addr: Ipv4Addr::new(10, 215, n, 5),
        };
        // anything a killed earlier run left behind
        let _ = Command::new("ip").args(["netns", "del", &net.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &net.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["route", "del", "local", &net.local_block, "dev", "lo"])
            .output();
        let peer = format!("ghe{pid}{tag}n");
        ip(&["netns", "add", &net.ns]);
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &net.ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", net.host_addr),
            "dev",
            &net.host_if,
        ]);
        ip(&["link", "set", &net.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &net.ns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{}/30", net.allowed), "dev", &peer]);
        inside(&["addr", "add", &format!("{}/32", net.private), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        ip(&[
            "route",
            "add",
            &format!("{}/32", net.private),
            "dev",
            &net.host_if,
        ]);
        ip(&["route", "add", "local", &net.local_block, "dev", "lo"]);
        net
    }

    /// The namespace's bound file.
    fn path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.ns)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["route", "del", "local", &self.local_block, "dev", "lo"])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A tiny HTTP server on a thread: every request gets `body`; it counts the
/// connections it accepted and stops on drop.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn serve(listener: TcpListener, body: String) -> Server {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let (hits, stop) = (hits.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    hits.fetch_add(1, Ordering::Relaxed);
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            }
        });
        Server { addr, hits, stop }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// GET `http://addr/path` straight from the test (the host's namespace).
fn get_directly(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A diy app whose `.gear/build` is `build` (the `.gear/start` of the
/// diy-shell example).
fn app_with_build(build: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("app dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(workspace_root().join("examples/diy-shell/."))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(status.success());
    let script = dir.path().join(".gear/build");
    std::fs::write(&script, build).expect("write build");
    let status = Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .expect("chmod");
    assert!(status.success());
    dir
}

/// The shell function the build scripts use: one line per probe,
/// `probe NAME rc=N out=...` (curl's output on one line, cut at 400 bytes).
const PROBE: &str = r#"probe() {
    name=$1; shift
    out=$(curl -sS -m 8 "$@" 2>&1)
    rc=$?
    echo "probe $name rc=$rc out=$(printf '%s' "$out" | tr '\n\r' '  ' | head -c 400)"
}
"#;

/// The line of probe `name` in the hook log.
fn probe<'a>(log: &'a str, name: &str) -> &'a str {
    let tag = format!("probe {name} rc=");
    log.lines()
        .find(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("no probe {name} in the hook log:\n{log}"))
}

fn rc(line: &str) -> i32 {
    line.split("rc=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rc in {line}"))
}

#[test]
fn a_build_reaches_an_allowed_server_and_nothing_of_the_host() {
    if !privileged("the test makes network namespaces and veth pairs; the node needs root") {
        return;
    }
    let net = TestNet::new(0);
    let token = format!("egress-allowed-{}", std::process::id());
    // the allowed server, in the test's namespace, on both of its addresses
    let remote = Server::serve(
        gearhost_sandbox::netns::listen(&net.path(), "0.0.0.0:0".parse().expect("addr"))
            .expect("listen in the test namespace"),
        token.clone(),
    );
    let port = remote.addr.port();
    // what must stay out of reach: a server on the host's loopback, and one
    // on an address of the host's own interfaces (inside the allowed /30)
    let loopback = Server::serve(
        TcpListener::bind("127.0.0.1:0").expect("bind loopback"),
        "loopback-secret".into(),
    );
    let host_side = Server::serve(
        TcpListener::bind((net.host_addr, 0)).expect("bind the host's veth address"),
        "host-address-secret".into(),
    );
    // and one on an address the host takes through a local route only
    let anyip = Server::serve(
        TcpListener::bind((net.local_addr, 0)).expect("bind an address of the local route"),
        "local-route-secret".into(),
    );
    // from the host all of them answer: a refusal below is the policy's, not
    // a missing route
    for (addr, expect) in [
        (SocketAddr::from((net.allowed, port)), token.as_str()),
        (SocketAddr::from((net.private, port)), token.as_str()),
        (loopback.addr, "loopback-secret"),
        (host_side.addr, "host-address-secret"),
        (anyip.addr, "local-route-secret"),
    ] {
        let got = get_directly(addr, "/");
        assert!(got.contains(expect), "{addr}: {got}");
    }
    // an abstract unix socket of the host's network namespace (the kind
    // display servers and container runtimes listen on)
    let abstract_name = format!("gearhost-egress-test-{}", std::process::id());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .expect("abstract name");
        std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract socket")
    };
    abstract_listener
        .set_nonblocking(true)
        .expect("nonblocking");
    let (remote_before, loopback_before, host_before, anyip_before) = (
        remote.hits(),
        loopback.hits(),
        host_side.hits(),
        anyip.hits(),
    );

    let node = TestNode::start(
        66000,
        &format!(
            "\n[build]\negress-allow = [\"{}\", \"{}\"]\n",
            net.allowed_block, net.local_block
        ),
    );
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", diy.path().to_str().expect("utf-8")]);
    node.ok(&["create", "app", "--cartridge", "diy"]);
    let frontend = node.frontend.port();
    let build = format!(
        "#!/bin/sh\n{PROBE}\
         echo \"proxy: $http_proxy\"\n\
         probe allowed http://{allowed}:{port}/allowed.txt\n\
         probe allowed-tunnel -p http://{allowed}:{port}/allowed.txt\n\
         probe loopback --noproxy '' http://127.0.0.1:{lo}/\n\
         probe loopback-tunnel --noproxy '' -p http://127.0.0.1:{lo}/\n\
         probe localhost --noproxy '' http://localhost:{lo}/\n\
         probe frontend --noproxy '' http://127.0.0.1:{frontend}/\n\
         probe private http://{private}:{port}/allowed.txt\n\
         probe host-address http://{host}:{host_port}/\n\
         probe local-route http://{anyip}:{anyip_port}/\n\
         probe direct --noproxy '*' http://{allowed}:{port}/allowed.txt\n\
         probe direct-loopback --noproxy '*' http://127.0.0.1:{lo}/\n\
         echo \"probe socket rc=0 out=$(python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)' {allowed} {port} 2>&1 | tail -n 1)\"\n\
         echo \"probe abstract rc=0 out=$(python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(chr(0)+sys.argv[1]); print(\"connected\")' {abstract_name} 2>&1 | tail -n 1)\"\n\
         exit 0\n",
        allowed = net.allowed,
        private = net.private,
        host = net.host_addr,
        host_port = host_side.addr.port(),
        anyip = net.local_addr,
        anyip_port = anyip.addr.port(),
        lo = loopback.addr.port(),
    );
    let app = app_with_build(&build);
    node.ok(&["deploy", "app", app.path().to_str().expect("utf-8")]);
    let log = node.ok(&["logs", "app", "--hooks", "-n", "500"]);

    // the allowed server, through the proxy, both ways a client uses it
    assert!(log.contains("proxy: http://127.0.0.1:"), "{log}");
    for name in ["allowed", "allowed-tunnel"] {
        let line = probe(&log, name);
        assert!(rc(line) == 0 && line.contains(&token), "{line}");
    }
    assert!(remote.hits() >= remote_before + 2);

    // the host's loopback, by address, through a tunnel and by name
    for name in ["loopback", "localhost"] {
        let line = probe(&log, name);
        assert!(
            line.contains("gearhost build egress: 127.0.0.1 is the host's loopback"),
            "{line}"
        );
    }
    let line = probe(&log, "loopback-tunnel");
    assert!(rc(line) != 0 && line.contains("403"), "{line}");
    // the node's frontend (on the host's loopback)
    let line = probe(&log, "frontend");
    assert!(
        line.contains("gearhost build egress: 127.0.0.1 is the host's loopback"),
        "{line}"
    );
    // a private address the configuration does not allow, although it routes
    let line = probe(&log, "private");
    assert!(
        line.contains(&format!("{} is in 10.0.0.0/8", net.private))
            && line.contains("build.egress-allow")
            && !line.contains(&token),
        "{line}"
    );
    // an address of the host's own interfaces, inside the allowed block
    let line = probe(&log, "host-address");
    assert!(
        line.contains(&format!(
            "{} is an address of this host, which builds never reach",
            net.host_addr
        )),
        "{line}"
    );
    // an address the host accepts through a local route, with no interface
    // holding it: the kernel's route says it is the host's
    let line = probe(&log, "local-route");
    assert!(
        line.contains(&format!(
            "{} is an address of this host, which builds never reach",
            net.local_addr
        )),
        "{line}"
    );
    // a build that ignores the proxy finds no route at all
    for name in ["direct", "direct-loopback"] {
        let line = probe(&log, name);
        assert!(
            rc(line) != 0 && !line.contains(&token) && !line.contains("secret"),
            "{line}"
        );
    }
    // curl says only "Couldn't connect"; a plain socket says why
    let line = probe(&log, "direct");
    assert_eq!(rc(line), 7, "{line}");
    let line = probe(&log, "socket");
    assert!(line.contains("Network is unreachable"), "{line}");
    // the host's abstract unix sockets are not in the build's namespace: the
    // name does not exist there (refused), where the host's namespace gave
    // Landlock's scoping as the only layer (EPERM)
    let line = probe(&log, "abstract");
    assert!(
        line.contains("ConnectionRefusedError") && !line.contains("out=connected"),
        "{line}"
    );
    assert!(
        abstract_listener.accept().is_err(),
        "the build connected to the host's abstract socket"
    );
    // no secret reached the build, and the servers never saw a connection
    assert!(!log.contains("loopback-secret"), "{log}");
    assert!(!log.contains("host-address-secret"), "{log}");
    assert!(!log.contains("local-route-secret"), "{log}");
    assert_eq!(
        anyip.hits(),
        anyip_before,
        "the local-route server was reached"
    );
    assert_eq!(
        loopback.hits(),
        loopback_before,
        "the loopback server was reached"
    );
    assert_eq!(
        host_side.hits(),
        host_before,
        "the host-address server was reached"
    );
    // refusals and the summary are in the gear's hook log
    assert!(
        log.contains(&format!(
            "build[egress] refused CONNECT 127.0.0.1:{}",
            loopback.addr.port()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "build[egress] refused GET http://{}:{port}/: {} is in 10.0.0.0/8",
            net.private, net.private
        )),
        "{log}"
    );
    assert!(log.contains("build[egress] closed after"), "{log}");

    // the running app never had the build's network: the deploy started it
    // in its own namespace, where only its loopback is
    let out = node.gear(&[
        "exec",
        "app",
        "--",
        "curl",
        "-sS",
        "-m",
        "5",
        &format!("http://{}:{port}/allowed.txt", net.allowed),
    ]);
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn with_egress_none_a_build_has_no_way_out() {
    if !privileged("the test makes network namespaces and veth pairs; the node needs root") {
        return;
    }
    let net = TestNet::new(1);
    let remote = Server::serve(
        gearhost_sandbox::netns::listen(&net.path(), "0.0.0.0:0".parse().expect("addr"))
            .expect("listen in the test namespace"),
        "reached".into(),
    );
    let port = remote.addr.port();
    let node = TestNode::start(
        66200,
        &format!(
            "\n[build]\negress = \"none\"\negress-allow = [\"{}\"]\n",
            net.allowed_block
        ),
    );
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", diy.path().to_str().expect("utf-8")]);
    node.ok(&["create", "app", "--cartridge", "diy"]);
    let build = format!(
        "#!/bin/sh\n{PROBE}\
         echo \"proxy: [${{http_proxy:-}}]\"\n\
         probe plain http://{allowed}:{port}/\n\
         exit 0\n",
        allowed = net.allowed,
    );
    let app = app_with_build(&build);
    node.ok(&["deploy", "app", app.path().to_str().expect("utf-8")]);
    let log = node.ok(&["logs", "app", "--hooks", "-n", "200"]);
    assert!(log.contains("proxy: []"), "{log}");
    let line = probe(&log, "plain");
    assert!(rc(line) != 0 && !line.contains("reached"), "{line}");
    assert_eq!(remote.hits(), 0);
    assert!(!log.contains("build[egress]"), "{log}");
}
