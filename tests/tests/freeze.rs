//! End to end: two-tier idling with real apps in real gears, frozen by the
//! real cgroup freezer. `gear idle` freezes a gear and a request thaws it
//! (the same processes before and after: nothing booted); `gear exec`, a
//! hook, a stop, `gear idle --stop` and `gear destroy` reach a frozen gear; a node
//! killed and started again keeps a frozen gear frozen and can wake it, and
//! one that stops its gears stops a frozen one too; the
//! idler freezes a gear first and stops it later; a node short of memory
//! stops its frozen gears.

use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, json, privileged, processes_of, workspace_root};

fn app_dir() -> String {
    let dir = workspace_root().join("tests/apps/frontend-app");
    dir.to_str().expect("utf-8").to_string()
}

fn install(node: &TestNode, package: &str) -> tempfile::TempDir {
    let dir = cartridge_dir(package);
    node.ok(&["cartridge", "install", dir.path().to_str().expect("utf-8")]);
    dir
}

fn state(node: &TestNode, gear: &str) -> String {
    json(&node.ok(&["status", gear, "--json"]))["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The pid of the gear's first running process.
fn app_pid(node: &TestNode, gear: &str) -> u64 {
    let v = json(&node.ok(&["status", gear, "--json"]));
    v["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find_map(|p| p["pid"].as_u64()))
        .unwrap_or_else(|| panic!("no running process: {v}"))
}

/// Whether the kernel has the gear's cgroup frozen.
fn frozen_in_kernel(node: &TestNode, gear: &str) -> bool {
    let id = json(&node.ok(&["show", gear, "--json"]))["id"]
        .as_str()
        .expect("id")
        .to_string();
    gearhost_sandbox::cgroup::gear_frozen(&node.subtree, &id)
}

fn metric(node: &TestNode, key: &str) -> f64 {
    node.metrics().get(key).copied().unwrap_or(0.0)
}

fn uid_of(node: &TestNode, gear: &str) -> u32 {
    json(&node.ok(&["show", gear, "--json"]))["uid"]
        .as_u64()
        .expect("uid") as u32
}

#[test]
fn gear_idle_freezes_and_whatever_reaches_the_gear_thaws_the_same_processes() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    // nothing automatic: every freeze here is asked for
    let mut node = TestNode::start_with_uids(
        88000,
        50,
        "idle-timeout = \"off\"\nfreeze-after = \"off\"\nfrozen-memory-floor = \"off\"",
    );
    let _nodejs = install(&node, "nodejs-cartridge");
    node.ok(&["create", "web", "--cartridge", "nodejs"]);
    node.ok(&["deploy", "web", &app_dir()]);
    let uid = uid_of(&node, "web");
    let pid = app_pid(&node, "web");
    assert_eq!(node.http_get("web-default", "/").1, "hello from web\n");

    // frozen: the processes are there, in a frozen cgroup, holding their memory
    let out = node.ok(&["idle", "web"]);
    assert!(out.contains("frozen"), "{out}");
    assert_eq!(state(&node, "web"), "frozen");
    assert!(frozen_in_kernel(&node, "web"));
    assert!(
        !processes_of(uid).is_empty(),
        "a frozen gear keeps its processes"
    );
    let memory = json(&node.ok(&["show", "web", "--json"]))["memory"]
        .as_u64()
        .unwrap_or(0);
    assert!(memory > 1 << 20, "a frozen node app holds {memory} bytes");
    eprintln!("figures: a frozen node.js gear holds {} KiB", memory / 1024);
    let shown = node.ok(&["show", "web"]);
    assert!(shown.contains("held while frozen"), "{shown}");
    let m = node.metrics();
    assert_eq!(m["gearhost_gears{state=\"frozen\"}"], 1.0);
    assert!(
        m["gearhost_frozen_memory_bytes"] >= memory as f64 / 2.0,
        "{m:?}"
    );
    let again = node.ok(&["idle", "web"]);
    assert!(again.contains("already frozen"), "{again}");

    // a request thaws it: served by the same process, nothing booted
    let started = Instant::now();
    assert_eq!(
        node.http_get("web-default", "/"),
        (200, "hello from web\n".to_string())
    );
    eprintln!(
        "figures: request to a frozen gear answered in {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(state(&node, "web"), "running");
    assert!(!frozen_in_kernel(&node, "web"));
    assert_eq!(app_pid(&node, "web"), pid, "thawed, not started again");
    assert_eq!(
        metric(&node, "gearhost_frontend_thaws_total{gear=\"web-default\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &node,
            "gearhost_frontend_wakeups_total{gear=\"web-default\"}"
        ),
        0.0,
        "no start"
    );
    let hooks = node.ok(&["logs", "web", "--hooks", "-n", "100"]);
    assert!(hooks.contains("asked by `gear idle`; frozen in"), "{hooks}");
    assert!(hooks.contains("a request came; thawed in"), "{hooks}");
    for line in hooks
        .lines()
        .filter(|l| l.contains("frozen in") || l.contains("thawed in"))
    {
        eprintln!("figures: {line}");
    }

    // `gear exec` into a frozen gear thaws it and runs
    node.ok(&["idle", "web"]);
    let out = node.gear(&["exec", "web", "--", "sh", "-c", "echo inside-$((40+2))"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inside-42");
    assert_eq!(state(&node, "web"), "running");
    assert_eq!(app_pid(&node, "web"), pid);

    // `gear unidle` thaws too
    node.ok(&["idle", "web"]);
    node.ok(&["unidle", "web"]);
    assert_eq!(state(&node, "web"), "running");
    assert!(!frozen_in_kernel(&node, "web"));
    assert_eq!(app_pid(&node, "web"), pid);

    // a node killed while the gear is frozen: the next node takes its
    // processes back frozen, and a request thaws them
    node.ok(&["idle", "web"]);
    node.kill9_and_restart();
    assert_eq!(state(&node, "web"), "frozen");
    assert!(
        frozen_in_kernel(&node, "web"),
        "still frozen after the restart"
    );
    assert_eq!(app_pid(&node, "web"), pid, "taken back, not started");
    assert_eq!(
        node.http_get("web-default", "/"),
        (200, "hello from web\n".to_string())
    );
    assert_eq!(state(&node, "web"), "running");
    assert_eq!(app_pid(&node, "web"), pid, "thawed after the restart");

    // a hook that signals and waits on the app (the nodejs cartridge's
    // `reload`: SIGTERM, wait, start again) runs on a frozen gear thawed first
    node.ok(&["idle", "web"]);
    let out = node.ok(&["control", "web", "reload"]);
    assert!(out.contains("restarted the app"), "{out}");
    assert_eq!(state(&node, "web"), "running");
    assert!(!frozen_in_kernel(&node, "web"));
    assert_ne!(app_pid(&node, "web"), pid, "reloaded");
    // the reloaded app listens a moment later (the hook does not wait for it)
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.http_get("web-default", "/").1 != "hello from web\n" {
        assert!(Instant::now() < deadline, "the reloaded app never answered");
        std::thread::sleep(Duration::from_millis(50));
    }

    // `gear idle --stop` stops a frozen gear: the next request starts it
    node.ok(&["idle", "web"]);
    let out = node.ok(&["idle", "--stop", "web"]);
    assert!(out.contains("idle"), "{out}");
    assert_eq!(state(&node, "web"), "idle");
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    assert_eq!(node.http_get("web-default", "/").1, "hello from web\n");
    let restarted = app_pid(&node, "web");
    assert_ne!(restarted, pid, "an idle gear is started again");

    // a frozen gear stops (its stop hook and signals reach it)
    node.ok(&["idle", "web"]);
    node.ok(&["stop", "web"]);
    assert_eq!(state(&node, "web"), "stopped");
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    assert!(!frozen_in_kernel(&node, "web"));
    node.ok(&["start", "web"]);

    // `gear start` and `gear restart` of a frozen gear
    node.ok(&["idle", "web"]);
    let out = node.ok(&["start", "web"]);
    assert!(out.contains("already running"), "{out}");
    node.ok(&["idle", "web"]);
    node.ok(&["restart", "web"]);
    assert_eq!(state(&node, "web"), "running");
    assert!(!frozen_in_kernel(&node, "web"));
    assert_eq!(node.http_get("web-default", "/").1, "hello from web\n");

    // a node that stops its gears stops a frozen one too (thawed to be
    // stopped); the next node finds none of its processes: it is idle, and a
    // request starts it
    node.ok(&["idle", "web"]);
    node.ok(&["node", "stop", "--gears"]);
    node.wait_stopped("gear node stop --gears");
    assert!(
        processes_of(uid).is_empty(),
        "{:?}\n{}",
        processes_of(uid),
        node.log()
    );
    node.start_again();
    // the node takes its gears back after it answers: the gear turns idle then
    node.wait_state("web", "idle", 10);
    assert_eq!(node.http_get("web-default", "/").1, "hello from web\n");
    assert_eq!(state(&node, "web"), "running");

    // and one is destroyed with nothing left
    node.ok(&["idle", "web"]);
    let id = json(&node.ok(&["show", "web", "--json"]))["id"]
        .as_str()
        .expect("id")
        .to_string();
    node.ok(&["destroy", "web"]);
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    let mounts = gearhost_sandbox::cgroup::detect().expect("cgroups");
    for root in gearhost_sandbox::cgroup::roots(&mounts) {
        let dir = root.join(&node.subtree).join(&id);
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[test]
fn the_idler_freezes_a_gear_first_and_stops_it_later() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start_with_uids(
        88050,
        50,
        "idle-timeout = \"8s\"\nfreeze-after = \"1s\"\nfrozen-memory-floor = \"off\"",
    );
    let _nodejs = install(&node, "nodejs-cartridge");
    node.ok(&["create", "web", "--cartridge", "nodejs"]);
    node.ok(&["deploy", "web", &app_dir()]);
    let uid = uid_of(&node, "web");
    let pid = app_pid(&node, "web");

    // frozen after a second or so without a request
    node.wait_state("web", "frozen", 10);
    assert!(frozen_in_kernel(&node, "web"));
    assert_eq!(app_pid(&node, "web"), pid);
    // a request thaws it (the same process) and counts as activity
    assert_eq!(node.http_get("web-default", "/").1, "hello from web\n");
    assert_eq!(app_pid(&node, "web"), pid);
    // frozen again, then stopped after 8 s without a request
    node.wait_state("web", "frozen", 10);
    node.wait_state("web", "idle", 20);
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    let hooks = node.ok(&["logs", "web", "--hooks", "-n", "200"]);
    assert!(hooks.contains("no request for 1s; frozen in"), "{hooks}");
    assert!(hooks.contains("idling the gear: no request for"), "{hooks}");
    // and a request starts it again
    assert_eq!(node.http_get("web-default", "/").1, "hello from web\n");
    assert_ne!(app_pid(&node, "web"), pid);
    node.ok(&["destroy", "web"]);
}

#[test]
fn a_node_short_of_memory_stops_its_frozen_gears() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    // a floor far above what this machine has: always short of memory
    let node = TestNode::start_with_uids(
        88100,
        50,
        "idle-timeout = \"off\"\nfreeze-after = \"off\"\nfrozen-memory-floor = \"1024GiB\"",
    );
    let _nodejs = install(&node, "nodejs-cartridge");
    for gear in ["web", "other"] {
        node.ok(&["create", gear, "--cartridge", "nodejs"]);
        node.ok(&["deploy", gear, &app_dir()]);
    }
    let uid = uid_of(&node, "web");
    node.ok(&["idle", "web"]);
    // the idler's next look (every 5 s) stops the frozen gear
    node.wait_state("web", "idle", 15);
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    let hooks = node.ok(&["logs", "web", "--hooks", "-n", "200"]);
    assert!(hooks.contains("frozen in"), "{hooks}");
    assert!(hooks.contains("below gears.frozen-memory-floor"), "{hooks}");
    assert_eq!(
        metric(&node, "gearhost_frozen_stopped_for_memory_total"),
        1.0
    );
    // running gears are left alone: only frozen ones are stopped
    assert_eq!(state(&node, "other"), "running");
    // the stopped gear wakes as an idle one
    assert_eq!(node.http_get("web-default", "/").1, "hello from web\n");
    for gear in ["web", "other"] {
        node.ok(&["destroy", gear]);
    }
}
