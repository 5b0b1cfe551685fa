//! The node under faults and load, end to end with the real `gear` binary:
//! SIGKILL in the middle of a deploy and of a start, 50 gears created and
//! deployed at once, and concurrent operations on one gear that must never
//! interleave.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::{
    TestNode, cartridge_dir, gear_bin, json, privileged, processes_of, workspace_root,
};

/// A copy of tests/apps/ops-diy whose page says `version`.
fn ops_app(version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(workspace_root().join("tests/apps/ops-diy/."))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(status.success());
    std::fs::write(dir.path().join("public/index.html"), format!("{version}\n")).expect("write");
    dir
}

/// The pid of the gear `app`'s process, as `gear status` shows it.
fn app_pid(node: &TestNode) -> u64 {
    json(&node.ok(&["status", "app", "--json"]))["processes"][0]["pid"]
        .as_u64()
        .expect("a running process")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `gear ARGS` against `node`, in the background.
fn spawn_gear(node: &TestNode, args: &[&str]) -> Child {
    Command::new(gear_bin())
        .args(args)
        .env("GEARHOST_SOCKET", &node.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gear")
}

/// The gear's `ops.log` on the host.
fn ops_log(node: &TestNode, id: &str) -> PathBuf {
    node.state_dir()
        .join("gears")
        .join(id)
        .join("home/app-root/data/ops.log")
}

fn ops(node: &TestNode, id: &str) -> Vec<String> {
    std::fs::read_to_string(ops_log(node, id))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Wait until `marker` has appeared `count` times in the gear's ops.log.
fn wait_for_marker(node: &TestNode, id: &str, marker: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ops(node, id).iter().filter(|l| *l == marker).count() < count {
        assert!(
            Instant::now() < deadline,
            "{marker} #{count} never came: {:?}\n{}",
            ops(node, id),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET / until it answers 200 with `body`, at most 30 s.
fn wait_for_page(node: &TestNode, label: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, got) = node.http_get(label, "/");
        if code == 200 && got == body {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{label} answered {code} {got:?}, expected {body:?}\nnode log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_killed_during_a_deploy_or_a_start_comes_back_consistent() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let mut node = TestNode::start(61400, "");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    let created = json(&node.ok(&["create", "app", "--cartridge", "diy", "--json"]));
    let id = created["id"].as_str().expect("id").to_string();
    let uid = created["uid"].as_u64().expect("uid") as u32;
    let v1 = ops_app("v1");
    node.ok(&["deploy", "app", path_str(v1.path())]);
    wait_for_page(&node, "app-default", "v1\n");

    // SIGKILL while deployment 2 builds
    node.ok(&["env", "app", "set", "BUILD_SLEEP=30"]);
    let serving = app_pid(&node);
    let v2 = ops_app("v2");
    let deploy = spawn_gear(&node, &["deploy", "app", path_str(v2.path())]);
    wait_for_marker(&node, &id, "B+", 2);
    node.kill9_and_restart();
    let out = deploy.wait_with_output().expect("deploy");
    assert!(
        !out.status.success(),
        "the interrupted deploy reported success"
    );
    // the build's processes died with the node
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_of(uid).iter().any(|p| p.contains("sleep 30")) {
        assert!(
            Instant::now() < deadline,
            "the build outlived its node: {:?}",
            processes_of(uid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // deployment 1 serves on: its app kept running and the new node took it back;
    // deployment 2 is recorded as interrupted
    wait_for_page(&node, "app-default", "v1\n");
    assert_eq!(
        // the frontend reaches an app that runs on before the node's resume has
        // taken it back; `gear status` waits for the resume, so it lists the app
        // at once (not "no process" for a gear that serves)
        app_pid(&node),
        serving,
        "the serving app was not kept"
    );
    let events = node.ok(&["node", "events", "--gear", "app"]);
    assert!(events.contains("default/app adopted"), "{events}");
    let deployments = json(&node.ok(&["deployments", "app", "--json"]));
    assert_eq!(deployments["active"], 1, "{deployments}");
    let second = &deployments["deployments"][1];
    assert_eq!(second["id"], 2, "{deployments}");
    assert_eq!(second["state"], "failed", "{deployments}");
    assert!(
        second["error"]
            .as_str()
            .is_some_and(|e| e.contains("node stopped")),
        "{deployments}"
    );
    // the acknowledged env change survived
    let env = node.ok(&["env", "app", "list"]);
    assert!(env.contains("BUILD_SLEEP=30"), "{env}");

    // SIGKILL while the gear starts
    node.ok(&["env", "app", "set", "BUILD_SLEEP=0", "START_SLEEP=3"]);
    let starts = ops(&node, &id).iter().filter(|l| *l == "S+").count();
    let restart = spawn_gear(&node, &["restart", "app"]);
    wait_for_marker(&node, &id, "S+", starts + 1);
    node.kill9_and_restart();
    let _ = restart.wait_with_output();
    // the gear should run; what the interrupted start left does not match its records
    // (two runs of the app, or a gear still starting), so the new node starts it again
    wait_for_page(&node, "app-default", "v1\n");
    let status = json(&node.ok(&["status", "app", "--json"]));
    assert_eq!(status["state"], "running", "{status}");
    let events = node.ok(&["node", "events", "--gear", "app"]);
    assert!(events.contains("default/app not-adopted"), "{events}");
    assert_eq!(
        processes_of(uid)
            .iter()
            .filter(|p| p.starts_with("gearhost-init"))
            .count(),
        1,
        "one run of the app, no strays: {:?}",
        processes_of(uid)
    );

    // and it takes new work as usual
    node.ok(&["env", "app", "set", "START_SLEEP=0"]);
    node.ok(&["deploy", "app", path_str(v2.path())]);
    wait_for_page(&node, "app-default", "v2\n");
    let deployments = json(&node.ok(&["deployments", "app", "--json"]));
    assert_eq!(deployments["active"], 3, "{deployments}");
    node.ok(&["destroy", "app"]);
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
}

#[test]
fn fifty_gears_are_created_and_deployed_at_once() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    const GEARS: usize = 50;
    let node = std::sync::Arc::new(TestNode::start(61600, ""));
    let first = cartridge_dir("my-first-cartridge");
    node.ok(&["cartridge", "install", path_str(first.path())]);
    let site = workspace_root().join("examples/hello-site");
    let expected = std::fs::read_to_string(site.join("index.html")).expect("page");
    let started = Instant::now();
    let workers: Vec<_> = (0..GEARS)
        .map(|i| {
            let node = node.clone();
            let site = site.clone();
            std::thread::spawn(move || {
                let name = format!("g{i}");
                node.ok(&["create", &name, "--cartridge", "my-first"]);
                node.ok(&["deploy", &name, path_str(&site)]);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a create or deploy failed");
    }
    let elapsed = started.elapsed();
    let list = json(&node.ok(&["list", "--json"]));
    let gears = list.as_array().expect("list");
    assert_eq!(gears.len(), GEARS, "{list}");
    let mut uids: Vec<u64> = gears
        .iter()
        .map(|g| g["uid"].as_u64().expect("uid"))
        .collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), GEARS, "every gear has its own uid");
    for i in 0..GEARS {
        let (code, body) = node.http_get(&format!("g{i}-default"), "/");
        assert_eq!(code, 200, "g{i}: {body}");
        assert_eq!(body, expected, "g{i}");
    }
    eprintln!("figures: {GEARS} concurrent creates + deploys in {elapsed:?}");

    let workers: Vec<_> = (0..GEARS)
        .map(|i| {
            let node = node.clone();
            std::thread::spawn(move || {
                node.ok(&["destroy", &format!("g{i}")]);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a destroy failed");
    }
    for uid in &uids {
        assert!(
            processes_of(*uid as u32).is_empty(),
            "uid {uid}: {:?}",
            processes_of(*uid as u32)
        );
    }
    let left = std::fs::read_dir(node.state_dir().join("gears"))
        .expect("gears dir")
        .count();
    assert_eq!(left, 0, "gear directories left behind");
}

#[test]
fn operations_on_one_gear_never_interleave() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = std::sync::Arc::new(TestNode::start(61800, ""));
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    let created = json(&node.ok(&["create", "app", "--cartridge", "diy", "--json"]));
    let id = created["id"].as_str().expect("id").to_string();
    node.ok(&["env", "app", "set", "BUILD_SLEEP=0.3", "START_SLEEP=0.2"]);
    let v1 = ops_app("v1");
    node.ok(&["deploy", "app", path_str(v1.path())]);

    // deploys, restarts, builds and env changes on the same gear, all at once
    let sources: Vec<tempfile::TempDir> = (2..=4).map(|v| ops_app(&format!("v{v}"))).collect();
    let mut workers = Vec::new();
    for src in &sources {
        let node = node.clone();
        let src = src.path().to_path_buf();
        workers.push(std::thread::spawn(move || {
            node.ok(&["deploy", "app", path_str(&src)]);
        }));
    }
    for args in [
        vec!["restart", "app"],
        vec!["restart", "app"],
        vec!["build", "app"],
        vec!["env", "app", "set", "EXTRA=1"],
    ] {
        let node = node.clone();
        workers.push(std::thread::spawn(move || {
            node.ok(&args);
        }));
    }
    for w in workers {
        w.join().expect("an operation failed");
    }

    // every build and every start ran whole, with nothing else in between
    let log = ops(&node, &id);
    let mut open: Option<&str> = None;
    for (i, line) in log.iter().enumerate() {
        match (open, line.as_str()) {
            (None, "B+") => open = Some("B-"),
            (None, "S+") => open = Some("S-"),
            (None, "T") => {}
            (Some(end), l) if l == end => open = None,
            (state, l) => panic!("{l} at line {i} while waiting for {state:?}: {log:?}"),
        }
    }
    assert_eq!(open, None, "{log:?}");
    let count = |m: &str| log.iter().filter(|l| *l == m).count();
    // 1 + 3 deploys and one explicit build; 1 + 3 deploys and 2 restarts
    assert_eq!(count("B+"), 5, "{log:?}");
    assert_eq!(count("S+"), 6, "{log:?}");
    let status = json(&node.ok(&["status", "app", "--json"]));
    assert_eq!(status["state"], "running", "{status}");
    node.ok(&["destroy", "app"]);
}

#[test]
fn exec_gives_the_command_a_terminal_when_the_caller_has_one() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(61200, "");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    node.ok(&["create", "app", "--cartridge", "diy"]);
    let probe = "if test -t 0 && test -t 1; then echo terminal; else echo pipes; fi";
    // through pipes: the command sees pipes
    let out = node.ok(&["exec", "app", "--", "sh", "-c", probe]);
    assert_eq!(out, "pipes\n");
    // under a terminal (script(1) gives gear one): the command sees a terminal
    let command = format!("{} exec app -- sh -c '{probe}'", path_str(&gear_bin()));
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("GEARHOST_SOCKET", &node.socket)
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("terminal"), "{text:?}");
    // the terminal is one of the gear's own, the command's controlling terminal (job control),
    // and the exit status still comes through
    let command = format!(
        "{} exec app -- sh -c 'tty; ps -o stat= -p $$; exit 3'",
        path_str(&gear_bin())
    );
    let (code, text) =
        gearhost_tests::on_terminal(&command, &[("GEARHOST_SOCKET", node.socket.as_os_str())]);
    assert_eq!(code, Some(3), "{text}");
    gearhost_tests::assert_on_own_terminal(&text);

    // the caller's window changes size: the gear's terminal follows
    let mut exec = Command::new(gear_bin());
    exec.args(["exec", "app", "--"])
        .env("GEARHOST_SOCKET", &node.socket);
    gearhost_tests::assert_terminal_follows_a_resize(exec);
}

#[test]
fn a_gears_memory_limit_bounds_all_its_processes_together() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(59800, "memory = \"96MiB\"");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    node.ok(&["create", "app", "--cartridge", "diy"]);
    let hold = |mib: u32| {
        format!("import time; b = b'x' * ({mib} << 20); print('holding {mib} MiB', flush=True)")
    };
    // alone, 40 MiB fits in the gear's 96 MiB
    let alone = node.gear(&["exec", "app", "--", "python3", "-c", &hold(40)]);
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );
    // an app that holds 70 MiB, then serves
    let app = tempfile::tempdir().expect("app");
    std::fs::create_dir(app.path().join(".gear")).expect("mkdir");
    let start = app.path().join(".gear/start");
    std::fs::write(
        &start,
        format!(
            "#!/bin/sh\nexec python3 -c \"{}; import http.server, os; \
             http.server.test(http.server.SimpleHTTPRequestHandler, port=int(os.environ['PORT']), bind='127.0.0.1')\"\n",
            hold(70)
        ),
    )
    .expect("write");
    Command::new("chmod")
        .args(["755"])
        .arg(&start)
        .status()
        .expect("chmod");
    node.ok(&["deploy", "app", path_str(app.path())]);
    let before = json(&node.ok(&["status", "app", "--json"]));
    let restarts = |status: &serde_json::Value| status["processes"][0]["restarts"].as_u64();
    // the same 40 MiB next to the app's 70 no longer fit: one of the two is
    // killed by the gear's limit, which a limit per process would not do
    let beside = node.gear(&["exec", "app", "--", "python3", "-c", &hold(40)]);
    std::thread::sleep(Duration::from_millis(500));
    let after = json(&node.ok(&["status", "app", "--json"]));
    let exec_killed = !beside.status.success();
    let app_killed =
        restarts(&after) > restarts(&before) || after["processes"][0]["state"] != "running";
    assert!(
        exec_killed || app_killed,
        "both processes kept their memory: exec {:?}, app {after}",
        beside.status
    );
}
