//! A tenant who wants to hurt the node: each test rents a gear on a real
//! node, through the real `gear` binary, and attacks the node, the host or
//! the other gears with what a gear controls (its output, its connections,
//! its names, its lifecycle), then checks the attack was contained: the node
//! keeps running and answering, its memory and the host's mount table stay
//! as they were, and nothing of another gear waits.
//!
//! The other classes have their own files: hook budgets against a gear's
//! files (`hostile_hooks.rs`), build egress (`hostile_egress.rs`), the HTTP
//! wire (`frontend.rs`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use gearhost_tests::{ON_SHARED_PROPAGATION, TestNode, cartridge_dir, json, privileged, rss_kib};

/// A diy app: `.gear/start` runs `hostile` (shell) in the background, then
/// serves the deployment on the gear's port, so the gear counts as running.
fn diy_app(hostile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("app dir");
    let gear = dir.path().join(".gear");
    std::fs::create_dir(&gear).expect(".gear");
    let start = gear.join("start");
    std::fs::write(
        &start,
        format!(
            "#!/bin/sh\nset -u\ncd \"$(dirname \"$0\")/..\"\n{hostile}\n\
             exec python3 -m http.server --bind 127.0.0.1 \"$PORT\"\n"
        ),
    )
    .expect("start script");
    std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn install_diy(node: &TestNode) -> tempfile::TempDir {
    let dir = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path(dir.path())]);
    dir
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pid of the gear's process `app`.
fn app_pid(node: &TestNode, gear: &str) -> u64 {
    let v = json(&node.ok(&["status", gear, "--json"]));
    v["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "app"))
        .and_then(|p| p["pid"].as_u64())
        .unwrap_or_else(|| panic!("no running app process: {v}"))
}

/// Waits until `check` holds, at most `secs` seconds.
fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn restarts_leave_the_mount_table_of_a_shared_host_as_it_was() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start_wrapped(68000, "", ON_SHARED_PROPAGATION);
    let root = std::fs::read_to_string(format!("/proc/{}/mountinfo", node.pid()))
        .expect("mountinfo")
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .map(str::to_string)
        .expect("the root mount");
    assert!(
        root.contains(" shared:"),
        "the node's / is not shared: {root}"
    );
    let _diy = install_diy(&node);
    // the node's mount table; other tests' nodes come and go in /tmp, and
    // deleting their directories detaches the copies this namespace got of
    // their mounts, so those are left out
    let ours = node.dir.path().to_str().expect("utf-8").to_string();
    let table = || -> Vec<String> {
        let text =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", node.pid())).expect("mountinfo");
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|p| p.starts_with(&ours) || !p.contains("/gearhost-node-"))
            .map(str::to_string)
            .collect();
        points.sort();
        points
    };
    let before = table();
    node.ok(&["create", "web", "--cartridge", "diy"]);
    let app = diy_app("");
    node.ok(&["deploy", "web", path(app.path())]);
    let running = table();
    // the gear's network namespace is bound in the state directory: one
    // mount, made at create and gone at destroy
    assert_eq!(running.len(), before.len() + 1, "{running:#?}");
    for i in 1..=50 {
        node.ok(&["restart", "web"]);
        let now = table();
        assert!(
            now == running,
            "restart {i} changed the host's mount table: {} mounts, {} before:\n{now:#?}",
            now.len(),
            running.len()
        );
    }
    node.ok(&["destroy", "web"]);
    assert_eq!(table(), before, "mounts after destroy");
}

#[test]
fn output_without_newlines_does_not_grow_the_node() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(68200, "");
    let _diy = install_diy(&node);
    node.ok(&["create", "flood", "--cartridge", "diy"]);
    node.ok(&["create", "calm", "--cartridge", "diy"]);
    let calm = diy_app("");
    node.ok(&["deploy", "calm", path(calm.path())]);
    let idle = rss_kib(node.pid());
    // one line that never ends, on both streams, as fast as the gear can
    let flood = diy_app("tr '\\0' x < /dev/zero & tr '\\0' y < /dev/zero >&2 &");
    node.ok(&["deploy", "flood", path(flood.path())]);
    let mut peak = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        peak = peak.max(rss_kib(node.pid()));
        // another gear is served meanwhile
        let (code, _) = node.http_get("calm-default", "/");
        assert_eq!(code, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("figures: node RSS {idle} KiB idle, at most {peak} KiB during the flood");
    assert!(
        peak <= idle + 64 * 1024,
        "the node grew from {idle} KiB to {peak} KiB while a gear wrote without newlines"
    );
    let stopping = Instant::now();
    node.ok(&["stop", "flood"]);
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        stopping.elapsed()
    );
    let after = rss_kib(node.pid());
    assert!(
        after <= idle + 64 * 1024,
        "{idle} KiB -> {after} KiB after stop"
    );
    // the cut line is written when the stream ends, as the gear stops
    wait_for(10, "the cut line", || {
        node.ok(&["logs", "flood", "-n", "20"])
            .contains("more bytes]")
    });
    let logs = node.ok(&["logs", "flood", "-n", "20"]);
    assert!(
        logs.lines().all(|l| l.len() < 17 * 1024),
        "a log line over the bound"
    );
}

#[test]
fn public_names_lead_to_one_gear_only() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(68400, "");
    let _diy = install_diy(&node);
    node.ok(&["create", "a-b", "--cartridge", "diy", "-N", "c"]);
    // `a` in `b-c` would be a-b-c.localhost too
    let out = node.gear(&["create", "a", "--cartridge", "diy", "-N", "b-c"]);
    assert!(!out.status.success(), "the colliding create succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    // the gear that has the name is in another namespace: it is not named
    assert!(
        err.contains("a-b-c.localhost")
            && err.contains("a gear of another namespace")
            && !err.contains("a-b in"),
        "{err}"
    );
    // nothing of the refused gear was left behind
    let list = json(&node.ok(&["list", "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    // a name whose host name would not be a valid DNS label
    let long = "a".repeat(32);
    let out = node.gear(&["create", &long, "--cartridge", "diy", "-N", &long]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 63 characters"), "{err}");
    // names that differ stay apart
    node.ok(&["create", "a", "--cartridge", "diy", "-N", "c"]);
}

#[test]
fn lifecycle_verbs_on_a_gear_already_there_change_nothing() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(68600, "");
    let _diy = install_diy(&node);
    node.ok(&["create", "web", "--cartridge", "diy"]);
    let app = diy_app("");
    node.ok(&["deploy", "web", path(app.path())]);
    let pid = app_pid(&node, "web");

    let out = node.ok(&["start", "web"]);
    assert!(out.contains("already running"), "{out}");
    assert_eq!(app_pid(&node, "web"), pid, "start restarted the app");
    assert_eq!(node.http_get("web-default", "/").0, 200);
    let again = node.ok(&["unidle", "web"]);
    assert!(again.contains("already running"), "{again}");
    assert_eq!(app_pid(&node, "web"), pid);

    node.ok(&["idle", "web"]);
    let out = node.ok(&["idle", "web"]);
    assert!(out.contains("already frozen"), "{out}");
    node.ok(&["unidle", "web"]);
    assert_eq!(app_pid(&node, "web"), pid, "a thaw keeps the app");
    node.ok(&["idle", "--stop", "web"]);
    let out = node.ok(&["idle", "--stop", "web"]);
    assert!(out.contains("already idle"), "{out}");
    node.ok(&["unidle", "web"]);

    node.ok(&["stop", "web"]);
    let out = node.ok(&["stop", "web"]);
    assert!(out.contains("already stopped"), "{out}");
    let v = json(&node.ok(&["status", "web", "--json"]));
    assert_eq!(v["state"], "stopped", "{v}");
    node.ok(&["start", "web"]);
    assert_eq!(node.http_get("web-default", "/").0, 200);
}

#[test]
fn gear_output_cannot_drive_the_operators_terminal() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(68800, "");
    let _diy = install_diy(&node);
    node.ok(&["create", "web", "--cartridge", "diy"]);
    // the user's locale reaches the app (it used to be overridden)
    node.ok(&["env", "web", "set", "LANG=de_DE.UTF-8"]);
    let app = diy_app(
        "printf 'title \\033]0;owned\\007 clear \\033[2J bell \\007 cr \\r done\\n'\n\
         echo \"locale=$LANG\"",
    );
    node.ok(&["deploy", "web", path(app.path())]);
    wait_for(10, "the app's output", || {
        node.ok(&["logs", "web"]).contains("locale=")
    });
    let out = node.gear(&["logs", "web"]);
    assert!(out.status.success());
    assert!(
        !out.stdout
            .iter()
            .any(|b| *b < 0x20 && *b != b'\n' && *b != b'\t'),
        "control bytes reached the terminal: {:?}",
        stdout_of(&out)
    );
    let text = stdout_of(&out);
    assert!(
        text.contains("title \\u{1b}]0;owned\\u{7} clear \\u{1b}[2J"),
        "{text}"
    );
    assert!(text.contains("locale=de_DE.UTF-8"), "{text}");
}

#[test]
fn a_reader_that_goes_away_ends_gear_quietly() {
    // `gear node config | head -0`: the pipe is closed before gear writes
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(gearhost_tests::gear_bin())
        .args(["node", "config"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run gear");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}

/// A python program for a gear: opens `count` connections to the
/// frontend's door inside the gear, holds them, then writes how many the
/// node kept open and how many it closed to `file`.
fn connector(port: u16, count: usize, file: &str) -> String {
    let program = r#"
import os, socket, time
held = []
for _ in range(COUNT):
    try:
        held.append(socket.create_connection(("127.0.0.1", PORT), timeout=5))
    except OSError:
        pass
time.sleep(2)
kept, closed = 0, 0
for s in held:
    s.setblocking(False)
    try:
        data = s.recv(1)
        closed += data == b""
        kept += data != b""
    except BlockingIOError:
        kept += 1
    except OSError:
        closed += 1
with open("FILE.tmp", "w") as f:
    f.write(f"open={kept} closed={closed}\n")
os.rename("FILE.tmp", "FILE")
time.sleep(3600)
"#;
    let program = program
        .replace("COUNT", &count.to_string())
        .replace("PORT", &port.to_string())
        .replace("FILE", file);
    format!("python3 - <<'EOF' &\n{program}\nEOF")
}

fn counts(node: &TestNode, gear: &str, file: &str) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let out = node.gear(&["exec", gear, "--", "cat", file]);
        let text = stdout_of(&out);
        if out.status.success() && text.starts_with("open=") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no counts in {file}: {out:?}\ngear logs:\n{}\nhook logs:\n{}",
            node.ok(&["logs", gear]),
            node.ok(&["logs", gear, "--hooks"])
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let num = |key: &str| -> usize {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {text}"))
    };
    (num("open="), num("closed="))
}

#[test]
fn a_gear_holds_at_most_its_share_of_connections() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(69000, "max-connections = 40");
    let _diy = install_diy(&node);
    node.ok(&["create", "greedy", "--cartridge", "diy"]);
    node.ok(&["create", "calm", "--cartridge", "diy"]);
    node.ok(&["deploy", "calm", path(diy_app("").path())]);
    let port = node.frontend.port();
    let app = diy_app(&connector(port, 100, "/gear/app-root/data/counts"));
    node.ok(&["deploy", "greedy", path(app.path())]);
    let (open, closed) = counts(&node, "greedy", "/gear/app-root/data/counts");
    assert_eq!((open, closed), (40, 60), "connections kept and closed");
    let hooks = node.ok(&["logs", "greedy", "--hooks"]);
    assert!(hooks.contains("gears.max-connections"), "{hooks}");
    // the other gear, and the greedy one's own door once it lets go, still work
    assert_eq!(node.http_get("calm-default", "/").0, 200);
    let request = format!(
        "import http.client as h; c = h.HTTPConnection('127.0.0.1', {port}, timeout=10); \
         c.request('GET', '/', headers={{'Host': 'greedy-default.localhost'}}); \
         print(c.getresponse().status)"
    );
    let out = node.gear(&["exec", "calm", "--", "python3", "-c", &request]);
    assert_eq!(stdout_of(&out).trim(), "200", "{out:?}");
}

#[test]
fn a_gear_cannot_take_the_nodes_descriptors() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    // a node under a service manager's small limit
    let mut node = TestNode::start_wrapped(69200, "", &["prlimit", "--nofile=1024:1024", "--"]);
    let _diy = install_diy(&node);
    node.ok(&["create", "greedy", "--cartridge", "diy"]);
    node.ok(&["create", "calm", "--cartridge", "diy"]);
    node.ok(&["deploy", "calm", path(diy_app("").path())]);
    let port = node.frontend.port();
    // three processes, 600 connections each: far more than the node can hold
    let script = (0..3)
        .map(|i| connector(port, 600, &format!("/gear/app-root/data/counts{i}")))
        .collect::<Vec<_>>()
        .join("\n");
    node.ok(&["deploy", "greedy", path(diy_app(&script).path())]);
    let mut kept = 0;
    for i in 0..3 {
        let (open, closed) = counts(&node, "greedy", &format!("/gear/app-root/data/counts{i}"));
        assert_eq!(open + closed, 600);
        kept += open;
    }
    // (1024 - 512 reserved) / 3 descriptors per connection
    assert_eq!(kept, 170, "connections the node kept for the gear");
    assert!(node.is_running(), "the node exited:\n{}", node.log());
    // the API and the frontend still answer, for everyone
    let list = json(&node.ok(&["list", "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert_eq!(node.http_get("calm-default", "/").0, 200);
    node.ok(&["restart", "calm"]);
    assert_eq!(node.http_get("calm-default", "/").0, 200);
    // and the gear gets its connections back once it lets go
    node.ok(&["stop", "greedy"]);
    node.ok(&["start", "greedy"]);
    assert!(node.is_running());
}

#[test]
fn a_deep_tree_in_a_gear_does_not_end_the_node() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let mut node = TestNode::start(69400, "");
    let _diy = install_diy(&node);
    node.ok(&["create", "deep", "--cartridge", "diy"]);
    node.ok(&["create", "calm", "--cartridge", "diy"]);
    node.ok(&["deploy", "calm", path(diy_app("").path())]);
    node.ok(&["deploy", "deep", path(diy_app("").path())]);
    // 25,000 directories, one inside the other: a recursive removal by the
    // node overflows a 2 MiB thread stack from about 20,000
    let made = node.ok(&[
        "exec",
        "deep",
        "--",
        "python3",
        "-c",
        "import os\nos.chdir('/gear/app-root/data')\nfor _ in range(25000):\n    os.mkdir('d')\n    os.chdir('d')\nprint('made')",
    ]);
    assert_eq!(made.trim(), "made");
    node.ok(&["destroy", "deep"]);
    assert!(node.is_running(), "the node ended:\n{}", node.log());
    let list = json(&node.ok(&["list", "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(node.http_get("calm-default", "/").0, 200);
}
