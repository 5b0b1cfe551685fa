//! End to end: replacing a serving app drops no request. Under a bounded
//! load loop through the real frontend, a redeploy, a restart and a
//! rollback of each web cartridge's app answer every request; the apps of
//! cartridges with `[deploy] start-beside` (python, nodejs) start beside
//! the serving one, the others restart in place while the frontend holds
//! their requests. A database restarted in place holds the connections its
//! linked app opens meanwhile. The latencies printed here are the figures
//! in docs/performance.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearhost_tests::apps::{releases, tree};
use gearhost_tests::{TestNode, cartridge_dir, privileged};

/// What the load loop saw.
#[derive(Debug, Default)]
struct Seen {
    answered: usize,
    failures: Vec<String>,
    latencies: Vec<Duration>,
}

impl Seen {
    fn longest(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        l.get(((l.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// One GET of `/` on `conn` (a new connection when `None`), kept open when
/// `keep` (the frontend's pool to the gear is used then): status and body.
fn get(
    frontend: SocketAddr,
    host: &str,
    conn: &mut Option<BufReader<TcpStream>>,
    keep: bool,
) -> Result<(u16, String), String> {
    if conn.is_none() {
        let s = TcpStream::connect(frontend).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        *conn = Some(BufReader::new(s));
    }
    let reader = conn.as_mut().expect("connected");
    let close = if keep { "" } else { "Connection: close\r\n" };
    // one write: a request in pieces would wait on the peer's delayed ACK
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n{close}\r\n");
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("status: {e}"))?;
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {line:?}"))?;
    let mut length = None;
    let mut closes = !keep;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).map_err(|e| format!("head: {e}"))?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse::<usize>().ok(),
            "connection" if v.trim().eq_ignore_ascii_case("close") => closes = true,
            _ => {}
        }
    }
    let mut body = vec![0; length.ok_or("no content-length")?];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    if closes {
        *conn = None;
    }
    Ok((code, String::from_utf8_lossy(&body).trim().to_string()))
}

/// Requests `host` from `clients` threads (half of them on kept-alive
/// connections) until `stop`, or for two minutes at most; each answer must
/// be a 200 with one of `bodies`.
fn load(
    frontend: SocketAddr,
    host: String,
    bodies: Vec<String>,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let deadline = Instant::now() + Duration::from_secs(120);
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                let (seen, stop, host, bodies) =
                    (seen.clone(), stop.clone(), host.clone(), bodies.clone());
                std::thread::spawn(move || {
                    let keep = i % 2 == 1;
                    let mut conn = None;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        let began = Instant::now();
                        let got = get(frontend, &host, &mut conn, keep);
                        let took = began.elapsed();
                        let mut s = seen.lock().expect("lock");
                        s.latencies.push(took);
                        match got {
                            Ok((200, body)) if bodies.contains(&body) => s.answered += 1,
                            Ok((code, body)) => s.failures.push(format!("{code} {body:?}")),
                            Err(e) => {
                                conn = None;
                                s.failures.push(e);
                            }
                        }
                        drop(s);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client");
        }
        Arc::try_unwrap(seen)
            .expect("clients done")
            .into_inner()
            .expect("lock")
    })
}

/// Run `op` while the gear is under load: what the load saw.
fn under_load(node: &TestNode, gear: &str, bodies: &[&str], op: impl FnOnce()) -> Seen {
    let stop = Arc::new(AtomicBool::new(false));
    let host = format!("{gear}-default.localhost:{}", node.frontend.port());
    let loader = load(
        node.frontend,
        host,
        bodies.iter().map(|b| b.to_string()).collect(),
        4,
        stop.clone(),
    );
    // the load is flowing before the operation starts
    std::thread::sleep(Duration::from_millis(300));
    op();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    loader.join().expect("load")
}

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().expect("utf-8")
}

/// GET / until it answers `want`.
fn serves(node: &TestNode, gear: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = node.http_get(&format!("{gear}-default"), "/");
        if code == 200 && body.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{gear} answered {code} {body:?}, not {want:?}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redeploys_restarts_and_rollbacks_drop_no_request_for_each_web_cartridge() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(80000, "");
    let _carts: Vec<_> = [
        "static-cartridge",
        "diy-cartridge",
        "python-cartridge",
        "nodejs-cartridge",
    ]
    .iter()
    .map(|p| {
        let dir = cartridge_dir(p);
        node.ok(&["cartridge", "install", path(&dir)]);
        dir
    })
    .collect();
    let mut report = Vec::new();
    for cartridge in ["static", "diy", "python", "nodejs"] {
        let gear = format!("{cartridge}-zd");
        node.ok(&["create", &gear, "--cartridge", cartridge]);
        let [(one, first), (two, second)] = releases(cartridge);
        node.ok(&["deploy", &gear, path(&one)]);
        serves(&node, &gear, first);
        let both = [first, second];
        let ops: [(&str, Vec<&str>, &str); 3] = [
            ("deploy", vec!["deploy", &gear, path(&two)], second),
            ("restart", vec!["restart", &gear], second),
            ("rollback", vec!["rollback", &gear, "1"], first),
        ];
        for (what, args, then) in ops {
            let mut took = Duration::ZERO;
            let seen = under_load(&node, &gear, &both, || {
                let began = Instant::now();
                node.ok(&args);
                took = began.elapsed();
            });
            assert!(
                seen.failures.is_empty(),
                "{cartridge} {what}: {} of {} requests failed: {:?}\nhooks:\n{}",
                seen.failures.len(),
                seen.failures.len() + seen.answered,
                &seen.failures[..seen.failures.len().min(10)],
                node.ok(&["logs", &gear, "--hooks"])
            );
            assert!(
                seen.answered > 20,
                "{cartridge} {what}: too little load: {seen:?}"
            );
            serves(&node, &gear, then);
            report.push(format!(
                "{cartridge:>7} {what:<8} `gear {what}` {took:>9.1?}; {} requests, none failed; \
                 p50 {:.1?}, p99 {:.1?}, longest {:.1?}",
                seen.answered,
                seen.percentile(0.5),
                seen.percentile(0.99),
                seen.longest()
            ));
        }
        let hooks = node.ok(&["logs", &gear, "--hooks"]);
        let beside = hooks.contains("started beside the previous app");
        assert_eq!(
            beside,
            matches!(cartridge, "python" | "nodejs"),
            "{cartridge}: a start beside only for cartridges that allow it\n{hooks}"
        );
        // no app of an earlier start is left over: exactly one of the two
        // slots' ports answers inside the gear
        let listening = node.ok(&["exec", &gear, "--", "python3", "-c", LISTENING]);
        assert_eq!(
            listening.split_whitespace().count(),
            1,
            "{cartridge}: {listening}"
        );
    }
    for line in &report {
        println!("{line}");
    }
}

/// Which of the app's two slots' ports (8080, 18080) accept a connection
/// inside the gear, one per line.
const LISTENING: &str = "import socket\nfor p in (8080, 18080):\n    try:\n        socket.create_connection(('127.0.0.1', p), timeout=2).close()\n        print(p)\n    except OSError:\n        pass\n";

/// A PostgreSQL startup probe through a link: connect to the database's
/// port on the app's loopback, send an SSLRequest, read the one-byte answer.
/// Run in the app's gear by `gear exec`, as many times as it can for
/// `seconds`; prints `ok N failed M ended E first-failure`, where `ended`
/// counts connections the server closed without a word (one that reached
/// the old server just before it stopped).
const PROBE: &str = r#"
import socket, struct, sys, time
end = time.time() + float(sys.argv[1])
ok = ended = failed = 0
first = ""
while time.time() < end:
    try:
        s = socket.create_connection(("127.0.0.1", 5432), timeout=30)
        s.sendall(struct.pack("!ii", 8, 80877103))
        b = s.recv(1)
        s.close()
        if b in (b"S", b"N"):
            ok += 1
        elif b == b"":
            ended += 1
        else:
            failed += 1
            first = first or "answer %r" % b
    except Exception as e:
        failed += 1
        first = first or repr(e)
    time.sleep(0.01)
print("ok", ok, "failed", failed, "ended", ended, first)
"#;

#[test]
fn a_database_restarted_in_place_holds_its_linked_connections() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(80500, "");
    let _carts: Vec<_> = ["postgresql-cartridge", "diy-cartridge"]
        .iter()
        .map(|p| {
            let dir = cartridge_dir(p);
            node.ok(&["cartridge", "install", path(&dir)]);
            dir
        })
        .collect();
    node.ok(&["create", "db", "--cartridge", "postgresql"]);
    node.ok(&["start", "db"]);
    node.ok(&["create", "app", "--cartridge", "diy"]);
    let app = tree(&[
        (
            ".gear/start",
            "#!/bin/sh\nexec python3 -m http.server --bind 127.0.0.1 \"$PORT\"\n",
        ),
        ("probe.py", PROBE),
    ]);
    node.ok(&["deploy", "app", path(&app)]);
    node.ok(&["link", "app", "db"]);
    // the link answers before the restart
    let before = node.ok(&[
        "exec",
        "app",
        "--",
        "python3",
        "/gear/app-root/repo/probe.py",
        "0.5",
    ]);
    assert!(before.contains("failed 0"), "{before}");
    let (probe, took) = std::thread::scope(|s| {
        let probe = s.spawn(|| {
            node.ok(&[
                "exec",
                "app",
                "--",
                "python3",
                "/gear/app-root/repo/probe.py",
                "6",
            ])
        });
        // the probe is connecting before the database restarts
        std::thread::sleep(Duration::from_millis(1500));
        let began = Instant::now();
        node.ok(&["restart", "db"]);
        let took = began.elapsed();
        (probe.join().expect("probe"), took)
    });
    let words: Vec<&str> = probe.split_whitespace().collect();
    // no connection was refused or broken by the restart; at most one that
    // had reached the old server an instant before it stopped ended with it
    assert_eq!(words.get(2..4), Some(&["failed", "0"][..]), "{probe}");
    let ended: usize = words[5].parse().expect("count");
    assert!(ended <= 1, "{probe}");
    let ok: usize = words[1].parse().expect("count");
    assert!(ok > 50, "{probe}");
    println!("postgresql restart in place: `gear restart db` {took:.1?}; linked probe: {probe}");
}
