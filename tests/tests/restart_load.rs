//! End to end: a bounded load generator runs against two gears (a Python web app and a
//! Python websocket app) while the node is restarted five times: `gear node restart`, a
//! replaced binary then `gear node restart`, SIGTERM, SIGKILL and `gear node restart`
//! again. The apps keep their pids through all of it; no request fails during a graceful
//! restart or a SIGTERM (the listening sockets are handed over or held by the node's
//! keeper, so connections wait in the backlog), and after the SIGKILL only requests whose
//! connection was open at that moment may fail; the longest request latency of each is
//! printed (docs/performance.md); one websocket stays open through all five (the keeper
//! splices it) and keeps receiving frames; the lines the app wrote while no node ran reach
//! `gear logs -f`; an app that crashes after the last adoption is restarted by
//! supervision. Gear uids 82000-82499. A second test starts a node on sockets
//! systemd-socket-activate passes (`LISTEN_FDS`), as the socket unit does; a
//! third checks that a websocket the keeper splices keeps its gear from
//! idling after the node that counted it was killed, until it closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearhost_tests::{
    TestNode, cartridge_dir, copy_executable, free_port, gear_bin, json, privileged, workspace_root,
};

/// The Python app: `python3 -m http.server`, with `tick N` on stdout every 100 ms.
const PY_START: &str = r#"#!/bin/sh
set -eu
cd "$(dirname "$0")/.."
( i=0; while :; do i=$((i + 1)); echo "tick $i"; sleep 0.1; done ) &
exec python3 -m http.server --bind 127.0.0.1 --directory public "$PORT"
"#;

/// The websocket app (tests/apps/restart-ws/server.py).
const WS_START: &str = r#"#!/bin/sh
set -eu
cd "$(dirname "$0")/.."
exec python3 -u server.py
"#;

fn app(start: &str, files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("source");
    std::fs::create_dir_all(dir.path().join(".gear")).expect("mkdir .gear");
    let path = dir.path().join(".gear/start");
    std::fs::write(&path, start).expect("start");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (name, bytes) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("file");
    }
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One request of the load generator.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    latency: Duration,
    error: Option<String>,
    gear: &'static str,
}

/// GET / from `label` on a new connection: Ok when the answer is a 200 with `want`.
fn get_once(addr: SocketAddr, label: &str, want: &str) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {label}.localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") && text.ends_with(want) {
        Ok(())
    } else {
        Err(format!("answer: {:?}", text.lines().next().unwrap_or("")))
    }
}

/// The load generator: one thread per gear, a request every 10 ms on a new connection,
/// until `stop` (or 10 minutes).
fn load(
    addr: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    [
        ("py", "py-default", "alive\n"),
        ("ws", "ws-default", "ws-app\n"),
    ]
    .into_iter()
    .map(|(gear, label, want)| {
        let stop = stop.clone();
        let samples = samples.clone();
        let addr = addr.clone();
        std::thread::spawn(move || {
            let began = Instant::now();
            while !stop.load(Ordering::Relaxed) && began.elapsed() < Duration::from_secs(600) {
                let at = Instant::now();
                let to = *addr.lock().expect("addr");
                let error = get_once(to, label, want).err();
                let latency = at.elapsed();
                samples.lock().expect("samples").push(Sample {
                    at,
                    latency,
                    error,
                    gear,
                });
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    })
    .collect()
}

/// What a websocket saw: when it opened, when it closed, the last number it got.
#[derive(Debug, Clone)]
struct WsRun {
    opened: Instant,
    closed: Option<Instant>,
    frames: u64,
}

/// Holds a websocket to the ws app open through the frontend, reading its frames (one every
/// 100 ms); when it closes, opens a new one, until `stop`.
fn websocket(
    addr: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
    runs: Arc<Mutex<Vec<WsRun>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let to = *addr.lock().expect("addr");
            let Ok(stream) = TcpStream::connect(to) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut w = stream.try_clone().expect("clone");
            let mut r = BufReader::new(stream);
            let _ = write!(
                w,
                "GET /ws HTTP/1.1\r\nHost: ws-default.localhost\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            );
            let mut status = String::new();
            if r.read_line(&mut status).is_err() || !status.starts_with("HTTP/1.1 101") {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            let i = {
                let mut runs = runs.lock().expect("runs");
                runs.push(WsRun {
                    opened: Instant::now(),
                    closed: None,
                    frames: 0,
                });
                runs.len() - 1
            };
            loop {
                let mut head = [0u8; 2];
                match r.read_exact(&mut head) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // a frame every 100 ms: half a second without one is a stall
                        runs.lock().expect("runs")[i].closed = Some(Instant::now());
                        break;
                    }
                    Err(_) => {
                        runs.lock().expect("runs")[i].closed = Some(Instant::now());
                        break;
                    }
                }
                let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
                if r.read_exact(&mut payload).is_err() {
                    runs.lock().expect("runs")[i].closed = Some(Instant::now());
                    break;
                }
                runs.lock().expect("runs")[i].frames += 1;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
    })
}

/// The pid of the first process of `gear` once it runs, at most 30 s.
fn app_pid(node: &TestNode, gear: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = json(&node.ok(&["status", gear, "--json"]));
        let p = &status["processes"][0];
        if status["state"] == "running"
            && p["state"] == "running"
            && let Some(pid) = p["pid"].as_u64()
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{gear}: {status}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The highest `tick N` in the py app's log.
fn top_tick(node: &TestNode) -> u64 {
    node.ok(&["logs", "py", "-n", "100000"])
        .lines()
        .filter_map(|l| l.split("tick ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// `gear logs py -f` shows every tick from `from` to `to` (written while no node ran).
fn follow_shows(node: &TestNode, from: u64, to: u64) {
    let mut child = std::process::Command::new(gear_bin())
        .args(["--socket", path_str(node.socket())])
        .args(["logs", "py", "-f", "-n", "100000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gear logs -f");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(from..=to).all(|t| seen.contains(&t)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(n) = line
                    .split("tick ")
                    .nth(1)
                    .and_then(|n| n.trim().parse::<u64>().ok())
                {
                    seen.insert(n);
                }
            }
            Err(_) => {
                let _ = child.kill();
                let missing: Vec<u64> = (from..=to).filter(|t| !seen.contains(t)).collect();
                panic!("gear logs -f did not show ticks {missing:?}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// How the node is restarted in one phase.
#[derive(Debug, Clone, Copy, PartialEq)]
enum How {
    Restart,
    ReplaceAndRestart,
    Term,
    Kill,
}

#[test]
fn the_apps_keep_running_and_no_request_fails_through_five_node_restarts() {
    if !privileged("the node creates gears") {
        return;
    }
    // the node runs from a copy of its binary, which the test replaces for an upgrade
    let bin_dir = tempfile::tempdir().expect("bin dir");
    let node_bin = bin_dir.path().join("gearhost-node");
    copy_executable(&gear_bin().with_file_name("gearhost-node"), &node_bin);
    copy_executable(
        &gear_bin().with_file_name("gearhost-init"),
        &bin_dir.path().join("gearhost-init"),
    );
    let env = format!("GEARHOST_NODE_BIN={}", node_bin.display());
    let mut node = TestNode::start_wrapped(82000, "", &["env", &env]);
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    let py = app(PY_START, &[("public/index.html", b"alive\n".to_vec())]);
    let ws_server =
        std::fs::read(workspace_root().join("tests/apps/restart-ws/server.py")).expect("ws app");
    let ws = app(WS_START, &[("server.py", ws_server)]);
    for (gear, src) in [("py", &py), ("ws", &ws)] {
        node.ok(&["create", gear, "--cartridge", "diy"]);
        node.ok(&["deploy", gear, path_str(src.path())]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_once(node.frontend, "py-default", "alive\n").is_err()
        || get_once(node.frontend, "ws-default", "ws-app\n").is_err()
    {
        assert!(
            Instant::now() < deadline,
            "apps do not answer\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids = (app_pid(&node, "py"), app_pid(&node, "ws"));
    // the node's own pid (`gear node run` may run under a wrapper that does not execute it)
    let node_pid_now = |node: &TestNode| -> u32 {
        let check = node.ok(&["node", "check"]);
        check
            .split("resume (node pid ")
            .nth(1)
            .and_then(|r| r.split([',', ')']).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no node pid in {check}"))
    };
    let mut node_pid = node_pid_now(&node);

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let runs = Arc::new(Mutex::new(Vec::new()));
    // a node started anew listens on a new port (the test's configuration asks for any)
    let addr = Arc::new(Mutex::new(node.frontend));
    let mut threads = load(addr.clone(), stop.clone(), samples.clone());
    threads.push(websocket(addr.clone(), stop.clone(), runs.clone()));
    std::thread::sleep(Duration::from_secs(1));

    let phases = [
        How::Restart,
        How::ReplaceAndRestart,
        How::Term,
        How::Kill,
        How::Restart,
    ];
    // (how, from, to): the window of each restart
    let mut windows = Vec::new();
    // when the node was killed: requests begun before may fail with its connections
    let mut killed = None;
    for how in phases {
        let began = Instant::now();
        match how {
            How::Restart => {
                let said = node.ok(&["node", "restart"]);
                assert!(said.contains("taken back"), "{said}");
                assert!(
                    said.contains(&format!("pid {node_pid})")),
                    "the node keeps its pid {node_pid}: {said}"
                );
            }
            How::ReplaceAndRestart => {
                // an upgrade: the new binary is renamed over the one the node runs
                let next = bin_dir.path().join("gearhost-node.next");
                copy_executable(&node_bin, &next);
                std::fs::rename(&next, &node_bin).expect("replace");
                let exe = format!("/proc/{node_pid}/exe");
                let link = std::fs::read_link(&exe).expect("exe");
                assert!(link.to_string_lossy().ends_with("(deleted)"), "{link:?}");
                let said = node.ok(&["node", "restart"]);
                assert!(said.contains("2 of 2 gears taken back"), "{said}");
                use std::os::unix::fs::MetadataExt;
                let running = std::fs::metadata(&exe).expect("exe").ino();
                let on_disk = std::fs::metadata(&node_bin).expect("bin").ino();
                assert_eq!(running, on_disk, "the node runs the replaced binary");
            }
            How::Term | How::Kill => {
                let before = top_tick(&node);
                let frontend = node.frontend;
                node.stop_node(if how == How::Term { "TERM" } else { "KILL" });
                if how == How::Kill {
                    killed = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(1500));
                node.start_again();
                // the keeper held the frontend's socket: the same address
                assert_eq!(node.frontend, frontend, "the frontend keeps its address");
                let check = node.ok(&["node", "check"]);
                assert!(check.contains("2 of 2 gears taken back"), "{check}");
                node_pid = node_pid_now(&node);
                // ~15 ticks were written while no node ran
                follow_shows(&node, before + 1, before + 12);
            }
        }
        // the apps answer again
        let deadline = Instant::now() + Duration::from_secs(30);
        while get_once(node.frontend, "py-default", "alive\n").is_err() {
            assert!(Instant::now() < deadline, "{how:?}: py does not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1000));
        windows.push((how, began, Instant::now()));
        assert_eq!(
            (app_pid(&node, "py"), app_pid(&node, "ws")),
            pids,
            "the same app processes after {how:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load thread");
    }

    let samples = samples.lock().expect("samples").clone();
    let total = samples.len();
    assert!(total > 500, "the load generator made {total} requests");
    for (how, from, to) in &windows {
        // a request in flight when the restart began belongs to it
        let inside: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at + s.latency >= *from && s.at <= *to)
            .collect();
        let failed: Vec<&&Sample> = inside.iter().filter(|s| s.error.is_some()).collect();
        let longest = inside.iter().map(|s| s.latency).max().unwrap_or_default();
        eprintln!(
            "{how:?}: {} requests, {} failed, longest latency {:.1} ms",
            inside.len(),
            failed.len(),
            longest.as_secs_f64() * 1000.0
        );
        // after SIGKILL, only connections the dead node had accepted may fail
        let late: Vec<&&&Sample> = failed
            .iter()
            .filter(|s| *how != How::Kill || killed.is_none_or(|k| s.at >= k))
            .collect();
        assert!(
            late.is_empty(),
            "requests failed during {how:?}: {:?}",
            late.iter().take(5).collect::<Vec<_>>()
        );
    }
    let outside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.error.is_some())
        .filter(|s| {
            !windows
                .iter()
                .any(|(_, from, to)| s.at + s.latency >= *from && s.at <= *to)
        })
        .collect();
    assert!(
        outside.is_empty(),
        "requests failed outside the restarts: {outside:?}"
    );
    for gear in ["py", "ws"] {
        assert!(samples.iter().any(|s| s.gear == gear && s.error.is_none()));
    }

    // one websocket, open through every restart, receiving all along (a frame every 100 ms)
    let runs = runs.lock().expect("runs").clone();
    eprintln!(
        "websockets: {} opened, frames per websocket {:?}",
        runs.len(),
        runs.iter().map(|r| r.frames).collect::<Vec<_>>()
    );
    assert_eq!(runs.len(), 1, "the websocket was opened again: {runs:?}");
    assert!(runs[0].closed.is_none(), "the websocket closed: {runs:?}");
    let open_for = windows.last().expect("phases").2 - runs[0].opened;
    assert!(
        runs[0].frames as f64 >= open_for.as_secs_f64() * 10.0 * 0.8,
        "the websocket stalled: {} frames in {open_for:?}",
        runs[0].frames
    );

    // a crash after the adoption: supervision starts the app again
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pids.0.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = json(&node.ok(&["status", "py", "--json"]));
        let p = &st["processes"][0];
        if p["state"] == "running" && p["pid"].as_u64().is_some_and(|p| p != pids.0) {
            assert_eq!(p["restarts"].as_u64(), Some(1), "{st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "py was not restarted: {st}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_once(node.frontend, "py-default", "alive\n").is_err() {
        assert!(
            Instant::now() < deadline,
            "py does not answer after its restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.ok(&["destroy", "py"]);
    node.ok(&["destroy", "ws"]);
}

#[test]
fn a_node_serves_on_the_sockets_systemd_passes_and_hands_them_on() {
    if !privileged("the node runs as root") {
        return;
    }
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("GEARHOST_REQUIRE_PRIVILEGED").is_none(),
            "systemd-socket-activate is needed (systemd's tools)"
        );
        eprintln!("skipped: no systemd-socket-activate");
        return;
    }
    let (front, metrics) = (free_port(), free_port());
    let front_addr: SocketAddr = ([127, 0, 0, 1], front).into();
    // systemd-socket-activate listens, and executes the node (through `gear node run`) at
    // the first connection, with the sockets as descriptors 3 and 4
    let knock = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(front_addr).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let l1 = format!("127.0.0.1:{front}");
    let l2 = format!("127.0.0.1:{metrics}");
    let mut node = TestNode::start_wrapped(
        82200,
        "",
        &[
            "systemd-socket-activate",
            "-l",
            &l1,
            "-l",
            &l2,
            "--fdname=frontend:metrics",
        ],
    );
    knock.join().expect("knock");
    // the node took the passed sockets instead of binding the configured 127.0.0.1:0
    assert_eq!(node.frontend.port(), front, "{}", node.log());
    assert_eq!(node.metrics.port(), metrics);
    let (code, _) = node.http_get("nothing-default", "/");
    assert_eq!(code, 404, "the frontend answers on the passed socket");
    // `gear node restart` hands them on to the new image
    let said = node.ok(&["node", "restart"]);
    assert!(said.contains("restarting"), "{said}");
    assert_eq!(
        node.frontend.port(),
        front,
        "the same socket after the restart"
    );
    // the same port answers: the socket systemd passed, handed on
    let (code, _) = node.http_get("nothing-default", "/");
    assert_eq!(code, 404);
    assert!(!node.metrics().is_empty(), "metrics on the passed socket");
    node.stop_node("TERM");
}

/// Opens a websocket to the ws app through `addr`; returns the stream once the 101 is read.
fn open_websocket(addr: SocketAddr) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: ws-default.localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("upgrade");
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).expect("status");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("head");
        if h.trim().is_empty() {
            return r;
        }
    }
}

/// Reads one frame's payload.
fn frame(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).expect("frame head");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    r.read_exact(&mut payload).expect("frame payload");
    payload
}

#[test]
fn a_kept_websocket_keeps_its_gear_awake_across_a_node_kill_until_it_closes() {
    if !privileged("the node creates gears") {
        return;
    }
    let mut node = TestNode::start(82400, "idle-timeout = \"2s\"");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    let ws_server =
        std::fs::read(workspace_root().join("tests/apps/restart-ws/server.py")).expect("ws app");
    let ws = app(WS_START, &[("server.py", ws_server)]);
    node.ok(&["create", "ws", "--cartridge", "diy"]);
    node.ok(&["deploy", "ws", path_str(ws.path())]);
    let mut socket = open_websocket(node.frontend);
    frame(&mut socket);
    // the node that counted it dies; the next one counts the keeper's pair again
    node.kill9_and_restart();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        frame(&mut socket);
    }
    let state = json(&node.ok(&["show", "ws", "--json"]))["state"].clone();
    assert_eq!(state, "running", "idled with a websocket open");
    // closed: the keeper reports it, and the gear idles after its timeout
    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(20);
    while json(&node.ok(&["show", "ws", "--json"]))["state"] != "idle" {
        assert!(
            Instant::now() < deadline,
            "not idled after its websocket closed\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
