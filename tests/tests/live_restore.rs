//! End to end: gears outlive the node. A diy gear keeps running, with the same pid, through a
//! SIGKILL and a SIGTERM of the node; the next node takes it back (`adopted` in the event log),
//! the lines the app wrote while no node ran reach `gear logs`, and supervision restarts the
//! app when it dies after the adoption. A gear whose recorded process is gone when the node
//! starts is started again (`not-adopted`). `gear node stop` leaves the gears running and
//! `gear node stop --gears` stops them (only operators may: see the node's
//! `tenancy` tests). A connection from one gear to another through a link stays open, and
//! answers in order, through a SIGKILL, a SIGTERM and `gear node restart` (the node's keeper
//! splices it). Gear uids 81000-81999.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, json, privileged, processes_of};

/// Serves `public/` and writes `tick N` to stdout every 100 ms, from a loop beside the server.
const START: &str = r#"#!/bin/sh
set -eu
cd "$(dirname "$0")/.."
( i=0; while :; do i=$((i + 1)); echo "tick $i"; sleep 0.1; done ) &
exec python3 -m http.server --bind 127.0.0.1 --directory public "$PORT"
"#;

fn app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("source");
    let gear = dir.path().join(".gear");
    std::fs::create_dir_all(&gear).expect("mkdir .gear");
    std::fs::create_dir_all(dir.path().join("public")).expect("mkdir public");
    let start = gear.join("start");
    std::fs::write(&start, START).expect("write start");
    std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(dir.path().join("public/index.html"), "alive\n").expect("page");
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A node with the diy cartridge and gear `app` deployed and answering.
fn node_with_app(uid_min: u32) -> (TestNode, u32) {
    let node = TestNode::start(uid_min, "");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    node.ok(&["create", "app", "--cartridge", "diy"]);
    let uid = json(&node.ok(&["show", "app", "--json"]))["uid"]
        .as_u64()
        .expect("uid") as u32;
    let src = app();
    node.ok(&["deploy", "app", path_str(src.path())]);
    wait_for_page(&node);
    (node, uid)
}

/// GET / until it answers 200 with the page, at most 30 s.
fn wait_for_page(node: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, got) = node.http_get("app-default", "/");
        if code == 200 && got == "alive\n" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "app answered {code} {got:?}\nnode log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The app's process as `gear status` shows it: (pid, state, restarts).
fn process(node: &TestNode) -> (Option<u64>, String, u64) {
    let status = json(&node.ok(&["status", "app", "--json"]));
    let p = &status["processes"][0];
    (
        p["pid"].as_u64(),
        p["state"].as_str().unwrap_or("").to_string(),
        p["restarts"].as_u64().unwrap_or(0),
    )
}

/// The gear's pid once `gear status` shows it running, at most 30 s.
fn running_pid(node: &TestNode) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = json(&node.ok(&["status", "app", "--json"]));
        if status["state"] == "running"
            && let (Some(pid), state, _) = process(node)
            && state == "running"
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the gear does not run: {status}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The tick numbers in the gear's app log.
fn ticks(node: &TestNode) -> Vec<u64> {
    node.ok(&["logs", "app", "-n", "100000"])
        .lines()
        .filter_map(|l| l.split("tick ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Waits until the log holds a tick above `above`; returns the highest.
fn tick_after(node: &TestNode, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let top = ticks(node).into_iter().max().unwrap_or(0);
        if top > above {
            return top;
        }
        assert!(
            Instant::now() < deadline,
            "no tick above {above} in the log\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every tick from 1 to the highest is in the log, once: nothing was lost or doubled.
fn assert_ticks_complete(node: &TestNode) {
    let mut seen = ticks(node);
    seen.sort_unstable();
    let top = *seen.last().expect("ticks in the log");
    let expected: Vec<u64> = (1..=top).collect();
    assert_eq!(seen, expected, "ticks lost or doubled in the log");
}

/// The gear's lasting processes (the ticker's short `sleep`s left out).
fn lasting(uid: u32) -> Vec<String> {
    let read = || {
        let mut found: Vec<String> = processes_of(uid)
            .into_iter()
            .filter(|p| !p.starts_with("sleep:"))
            .collect();
        found.sort();
        found
    };
    // the ticking subshell forks for each `sleep`: between the fork and the
    // exec its child is a second `start` shell; of three readings the
    // shortest has no such passing copy
    (0..3)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(30));
            }
            read()
        })
        .min_by_key(Vec::len)
        .unwrap_or_default()
}

fn events(node: &TestNode) -> String {
    node.ok(&["node", "events", "--gear", "app"])
}

fn signal(pid: u64, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn a_gear_keeps_its_pid_and_its_output_through_node_restarts() {
    if !privileged("the node creates gears") {
        return;
    }
    let (mut node, uid) = node_with_app(81000);
    let pid = running_pid(&node);
    let before = lasting(uid);
    let mut top = tick_after(&node, 0);

    for (how, stop) in [("SIGKILL", "KILL"), ("SIGTERM", "TERM"), ("SIGINT", "INT")] {
        node.stop_node(stop);
        // the app runs on, and writes on, while no node runs
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(lasting(uid), before, "after {how} of the node");
        node.start_again();
        assert_eq!(running_pid(&node), pid, "the same process after {how}");
        // how long the adoption took, for the record
        if let Some(line) = node.log().lines().rfind(|l| l.contains("gears resumed")) {
            eprintln!("after {how}: {line}");
        }
        wait_for_page(&node);
        // about 15 ticks were written while the node was down: they all reach the log
        top = tick_after(&node, top + 15);
        assert_ticks_complete(&node);
        assert_eq!(lasting(uid), before, "no second copy after {how}");
    }
    let all = events(&node);
    assert_eq!(
        all.matches("default/app adopted").count(),
        3,
        "one adoption per node start: {all}"
    );
    assert!(all.contains(&format!("app (pid {pid})")), "{all}");
    assert!(!all.contains("not-adopted"), "{all}");

    // a crash after the adoption: supervision starts the app again
    signal(pid, "KILL");
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        if let (Some(next), state, restarts) = process(&node)
            && next != pid
            && state == "running"
        {
            assert_eq!(restarts, 1);
            break next;
        }
        assert!(
            Instant::now() < deadline,
            "the app was not restarted: {:?}\n{}",
            process(&node),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    wait_for_page(&node);
    let all = events(&node);
    assert!(all.contains("default/app crashed"), "{all}");
    assert!(all.contains("default/app restarted"), "{all}");
    // the restarted process is recorded in turn and taken back by the next node
    node.kill9_and_restart();
    assert_eq!(running_pid(&node), next);
    wait_for_page(&node);
    assert_eq!(
        process(&node).2,
        1,
        "the restarts so far are kept across nodes"
    );

    // stopping the gear stops its processes and forgets their records
    node.ok(&["stop", "app"]);
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    let procs_file = node.state_dir().join("gears");
    let left: Vec<_> = std::fs::read_dir(&procs_file)
        .expect("gears dir")
        .flatten()
        .filter(|g| g.path().join("procs.json").exists())
        .collect();
    assert!(left.is_empty(), "records of stopped processes: {left:?}");
    node.term_and_restart();
    assert_eq!(
        json(&node.ok(&["status", "app", "--json"]))["state"],
        "stopped"
    );
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    node.ok(&["destroy", "app"]);
}

#[test]
fn a_gear_whose_process_died_while_no_node_ran_is_started_again() {
    if !privileged("the node creates gears") {
        return;
    }
    let (mut node, uid) = node_with_app(81200);
    let pid = running_pid(&node);
    node.stop_node("TERM");
    signal(pid, "KILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of(uid).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", processes_of(uid));
        std::thread::sleep(Duration::from_millis(50));
    }
    node.start_again();
    let next = running_pid(&node);
    assert_ne!(next, pid);
    wait_for_page(&node);
    let all = events(&node);
    assert!(all.contains("default/app not-adopted"), "{all}");
    assert!(all.contains(&format!("pid {pid} is gone")), "{all}");
    assert!(all.contains("default/app started"), "{all}");
    assert_eq!(
        lasting(uid).len(),
        3,
        "one init, the server and the ticker: {:?}",
        lasting(uid)
    );
    node.ok(&["destroy", "app"]);
}

#[test]
fn gear_node_stop_keeps_the_gears_and_with_gears_stops_them() {
    if !privileged("the node creates gears") {
        return;
    }
    let (mut node, uid) = node_with_app(81400);
    let pid = running_pid(&node);

    let said = node.ok(&["node", "stop"]);
    assert!(said.contains("keep running"), "{said}");
    node.wait_stopped("gear node stop");
    assert_eq!(lasting(uid).len(), 3, "{:?}", lasting(uid));
    node.start_again();
    assert_eq!(running_pid(&node), pid);
    wait_for_page(&node);
    // an adopted app is replaced like any other
    node.ok(&["restart", "app"]);
    let restarted = running_pid(&node);
    assert_ne!(restarted, pid);
    wait_for_page(&node);
    assert_eq!(lasting(uid).len(), 3, "{:?}", lasting(uid));

    let said = node.ok(&["node", "stop", "--gears"]);
    assert!(said.contains("with it"), "{said}");
    // the command returns once the node and the gears' processes are gone
    assert!(lasting(uid).is_empty(), "{:?}", lasting(uid));
    node.wait_stopped("gear node stop --gears");
    // the gear should still run: the next node starts it
    node.start_again();
    let next = running_pid(&node);
    assert_ne!(next, restarted);
    wait_for_page(&node);
    let all = events(&node);
    assert!(!all.contains("not-adopted"), "{all}");
    node.ok(&["destroy", "app"]);
}

/// The linked service: answers each line it reads with the same line.
const ECHO_START: &str = r#"#!/bin/sh
set -eu
exec python3 -u -c '
import os, socketserver
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
'
"#;

/// The linking app: one connection to the service on its linked port, a line every 50 ms,
/// each answer checked; it says when it connects and when the connection breaks. A web
/// server beside it answers the deploy's check.
const CLIENT_START: &str = r#"#!/bin/sh
set -eu
mkdir -p /tmp/www
python3 -m http.server --bind 127.0.0.1 --directory /tmp/www "$PORT" >/dev/null 2>&1 &
exec python3 -u -c '
import socket, time
while True:
    try:
        s = socket.create_connection(("127.0.0.1", 9090), timeout=2)
    except OSError as e:
        print("refused", e)
        time.sleep(0.2)
        continue
    print("connected")
    f = s.makefile("rwb")
    n = 0
    try:
        while True:
            n += 1
            f.write(b"ping %d\n" % n)
            f.flush()
            got = f.readline()
            if got != b"ping %d\n" % n:
                raise OSError("answer %r" % got)
            print("pong", n)
            time.sleep(0.05)
    except OSError as e:
        print("broken", e)
        s.close()
'
"#;

fn script_app(start: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("source");
    std::fs::create_dir_all(dir.path().join(".gear")).expect("mkdir .gear");
    let path = dir.path().join(".gear/start");
    std::fs::write(&path, start).expect("write start");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// The `pong N` lines in the client's log, and how often it connected and broke.
fn client_log(node: &TestNode) -> (Vec<u64>, usize, Vec<String>) {
    let log = node.ok(&["logs", "cli", "-n", "100000"]);
    let pongs = log
        .lines()
        .filter_map(|l| l.split("pong ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let connected = log.lines().filter(|l| l.ends_with("connected")).count();
    let broken = log
        .lines()
        .filter(|l| l.contains("broken") || l.contains("refused"))
        .map(str::to_string)
        .collect();
    (pongs, connected, broken)
}

/// Waits until the client has 20 more answers than `after`.
fn pongs_past(node: &TestNode, after: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (pongs, _, broken) = client_log(node);
        let top = pongs.iter().copied().max().unwrap_or(0);
        if top >= after + 20 {
            return top;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the client is stuck at {top} ({broken:?})\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_connection_through_a_link_stays_open_through_node_restarts() {
    if !privileged("the node creates gears") {
        return;
    }
    let mut node = TestNode::start(81600, "");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    // the service: diy's hooks under another name, on port 9090
    let svc_cartridge = cartridge_dir("diy-cartridge");
    let manifest = svc_cartridge.path().join("cartridge.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let text = text
        .replace("name = \"diy\"", "name = \"echo\"")
        .replace("private-port = 8080", "private-port = 9090");
    std::fs::write(&manifest, text).expect("manifest");
    node.ok(&["cartridge", "install", path_str(svc_cartridge.path())]);
    node.ok(&["create", "svc", "--cartridge", "echo"]);
    let echo = script_app(ECHO_START);
    node.ok(&["deploy", "svc", path_str(echo.path())]);
    node.ok(&["create", "cli", "--cartridge", "diy"]);
    // the link's port, 9090, on the client's own loopback
    node.ok(&["link", "cli", "svc"]);
    let client = script_app(CLIENT_START);
    node.ok(&["deploy", "cli", path_str(client.path())]);
    let mut top = pongs_past(&node, 0, "before any restart");

    node.kill9_and_restart();
    top = pongs_past(&node, top, "after SIGKILL");
    node.stop_node("TERM");
    std::thread::sleep(Duration::from_millis(500));
    node.start_again();
    top = pongs_past(&node, top, "after SIGTERM");
    let said = node.ok(&["node", "restart"]);
    assert!(said.contains("taken back"), "{said}");
    pongs_past(&node, top, "after gear node restart");

    // one connection all along, every answer in order
    let (pongs, connected, broken) = client_log(&node);
    assert_eq!(connected, 1, "the client connected again: {broken:?}");
    assert!(broken.is_empty(), "{broken:?}");
    assert!(
        pongs.windows(2).all(|w| w[1] == w[0] + 1),
        "answers missing or out of order"
    );
    let metrics = node.ok(&["node", "check"]);
    assert!(metrics.contains("taken back"), "{metrics}");
}

#[test]
fn gear_node_restart_waits_for_a_deploy_in_flight() {
    if !privileged("the node creates gears") {
        return;
    }
    let (node, _) = node_with_app(81800);
    // a deploy whose build takes two seconds
    let slow = app();
    let build = slow.path().join(".gear/build");
    std::fs::write(&build, "#!/bin/sh\nsleep 2\necho built\n").expect("build");
    std::fs::set_permissions(&build, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut deploy = Command::new(gearhost_tests::gear_bin());
    deploy.args(["--socket", path_str(node.socket())]).args([
        "deploy",
        "app",
        path_str(slow.path()),
    ]);
    let deploying = std::thread::spawn(move || deploy.output());
    std::thread::sleep(Duration::from_millis(700));
    let began = Instant::now();
    let said = node.ok(&["node", "restart"]);
    assert!(said.contains("taken back"), "{said}");
    let out = deploying
        .join()
        .expect("deploy thread")
        .expect("gear deploy");
    assert!(
        out.status.success(),
        "the deploy in flight failed across the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        began.elapsed() >= Duration::from_millis(1000),
        "the restart did not wait for the build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = json(&node.ok(&["show", "app", "--json"]));
    assert_eq!(shown["active_deployment"], 2, "{shown}");
    wait_for_page(&node);
}
