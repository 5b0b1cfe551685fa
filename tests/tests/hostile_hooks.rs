//! End to end, through the real `gear` binary and node with the real python
//! cartridge: a gear that turns the files its cartridge's hooks open into
//! traps (a FIFO where a file should be, a program that never ends) gets its
//! own operations stopped at their budget or
//! by `gear stop`/`gear destroy` within seconds, while every other gear and
//! the node's API go on as if nothing happened.
//!
//! Every `gear` command here runs under a time limit, so a hang is a test
//! failure (with the command named), not a test that never ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, gear_bin, json, privileged, workspace_root};

/// Where the python cartridge's build keeps the requirements it installed
/// last, in the gear's home (the file the build hook opens).
const INSTALLED_REQUIREMENTS: &str = "/gear/app-root/runtime/venv/gearhost-requirements.txt";

fn gear_command(node: &TestNode, args: &[&str]) -> Command {
    let mut cmd = Command::new(gear_bin());
    cmd.args(args)
        .env("GEARHOST_SOCKET", &node.socket)
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Wait for `child` (a `gear` command) at most `limit`; a command still
/// running then is killed and fails the test.
fn finish(
    node: &TestNode,
    mut child: Child,
    what: &str,
    started: Instant,
    limit: Duration,
) -> (Output, Duration) {
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let elapsed = started.elapsed();
            return (child.wait_with_output().expect("output"), elapsed);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "`gear {what}` did not answer within {limit:?}\nstdout: {}\nstderr: {}\nnode log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                node.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `gear args` and wait at most `limit` for it: (output, how long it took).
fn gear_within(node: &TestNode, args: &[&str], limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let child = gear_command(node, args).spawn().expect("run gear");
    finish(node, child, &args.join(" "), started, limit)
}

/// [`gear_within`], insisting on success; returns stdout.
fn ok_within(node: &TestNode, args: &[&str], limit: Duration) -> String {
    let (out, _) = gear_within(node, args, limit);
    assert!(
        out.status.success(),
        "gear {args:?} failed:\nstdout: {}\nstderr: {}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `gear` command left running in the background.
struct Running {
    child: Child,
    what: String,
    started: Instant,
}

fn start_gear(node: &TestNode, args: &[&str]) -> Running {
    Running {
        child: gear_command(node, args).spawn().expect("run gear"),
        what: args.join(" "),
        started: Instant::now(),
    }
}

impl Running {
    fn finish(self, node: &TestNode, limit: Duration) -> (Output, Duration) {
        finish(node, self.child, &self.what, self.started, limit)
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn example(name: &str) -> PathBuf {
    workspace_root().join("examples").join(name)
}

/// python-hello with a requirements.txt (empty: pip has nothing to fetch), so
/// the build reads the requirements it installed last.
fn app_with_requirements() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("app");
    for entry in std::fs::read_dir(example("python-hello"))
        .expect("example")
        .flatten()
    {
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    std::fs::write(dir.path().join("requirements.txt"), "").expect("requirements");
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// How many hook calls of kind `hook` the gear's hooks log shows as started.
fn hooks_started(node: &TestNode, gear: &str, hook: &str) -> usize {
    let logs = ok_within(
        node,
        &["logs", gear, "--hooks", "-n", "2000"],
        Duration::from_secs(5),
    );
    logs.lines()
        .filter(|l| l.contains(&format!("{hook}[node] hook started")))
        .count()
}

/// Wait until the gear's hooks log shows more than `before` calls of `hook`,
/// then a moment more (for the hook to reach the trap).
fn wait_hook_started(node: &TestNode, gear: &str, hook: &str, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while hooks_started(node, gear, hook) <= before {
        assert!(
            Instant::now() < deadline,
            "the {hook} hook of {gear} did not start\nnode log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
}

fn install_python(node: &TestNode) -> tempfile::TempDir {
    let dir = cartridge_dir("python-cartridge");
    ok_within(
        node,
        &["cartridge", "install", path_str(dir.path())],
        Duration::from_secs(60),
    );
    dir
}

fn node_alive(node: &TestNode) {
    assert!(
        Path::new(&format!("/proc/{}", node.pid())).exists(),
        "the node is gone\nnode log:\n{}",
        node.log()
    );
    ok_within(node, &["list"], Duration::from_secs(2));
}

/// GET / from `label` until it answers 200, at most 20 s.
fn serves(node: &TestNode, label: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = node.http_get(label, "/");
        if code == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "{label} answered {code}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const PROMPT: Duration = Duration::from_secs(2);
const STUCK_STOP: Duration = Duration::from_secs(5);

#[test]
fn a_build_stuck_on_a_fifo_ends_at_its_budget_and_stop_and_destroy_cut_it_short() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start_with_uids(67000, 50, "start-timeout = \"20s\"");
    let python = install_python(&node);
    let app = app_with_requirements();
    ok_within(
        &node,
        &["create", "victim", "--cartridge", "python"],
        PROMPT,
    );
    ok_within(
        &node,
        &["deploy", "victim", path_str(app.path())],
        Duration::from_secs(180),
    );
    ok_within(
        &node,
        &["create", "bystander", "--cartridge", "python"],
        PROMPT,
    );
    ok_within(
        &node,
        &["deploy", "bystander", path_str(&example("python-hello"))],
        Duration::from_secs(180),
    );
    serves(&node, "victim-default");
    serves(&node, "bystander-default");
    let rss_before = gearhost_tests::rss_kib(node.pid());

    // a short build budget from here on (the first build made the virtualenv)
    let manifest = python.path().join("cartridge.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    assert!(text.contains("build-timeout = \"10m\""), "{text}");
    std::fs::write(
        &manifest,
        text.replace("build-timeout = \"10m\"", "build-timeout = \"4s\""),
    )
    .expect("manifest");
    ok_within(
        &node,
        &["cartridge", "install", path_str(python.path())],
        Duration::from_secs(60),
    );

    // the gear puts a FIFO where the build reads the requirements it installed
    ok_within(
        &node,
        &[
            "exec",
            "victim",
            "--",
            "sh",
            "-c",
            &format!("rm -f {INSTALLED_REQUIREMENTS} && mkfifo {INSTALLED_REQUIREMENTS}"),
        ],
        Duration::from_secs(10),
    );

    // 1. the build ends at its budget, and the deployment before keeps serving;
    // meanwhile another gear and the API answer at once
    let builds = hooks_started(&node, "victim", "build");
    let deploy = start_gear(&node, &["deploy", "victim", path_str(app.path())]);
    wait_hook_started(&node, "victim", "build", builds);
    let (_, took) = gear_within(&node, &["list"], PROMPT);
    println!("gear list while the build is stuck: {took:?}");
    let (_, took) = gear_within(&node, &["status", "bystander"], PROMPT);
    println!("gear status while the build is stuck: {took:?}");
    let (out, took) = gear_within(&node, &["restart", "bystander"], Duration::from_secs(15));
    assert!(out.status.success(), "{}", stderr_of(&out));
    println!("gear restart of another gear while the build is stuck: {took:?}");
    serves(&node, "bystander-default");
    let (out, took) = deploy.finish(&node, Duration::from_secs(4 + 6));
    println!("the stuck deploy failed after {took:?}");
    assert!(!out.status.success(), "the deploy succeeded");
    let message = stderr_of(&out);
    assert!(message.contains("ran past its 4s budget"), "{message}");
    assert!(message.contains("deployment 1 keeps serving"), "{message}");
    serves(&node, "victim-default");

    // 2. `gear stop` while the build is stuck: it returns within seconds, the
    // deploy fails saying why, the gear is stopped
    let builds = hooks_started(&node, "victim", "build");
    let deploy = start_gear(&node, &["deploy", "victim", path_str(app.path())]);
    wait_hook_started(&node, "victim", "build", builds);
    let (out, took) = gear_within(&node, &["stop", "victim"], STUCK_STOP);
    assert!(out.status.success(), "{}", stderr_of(&out));
    println!("gear stop of the stuck gear: {took:?}");
    let (out, _) = deploy.finish(&node, PROMPT);
    assert!(!out.status.success());
    let message = stderr_of(&out);
    assert!(message.contains("stopped before it finished"), "{message}");
    assert!(message.contains("gear stop"), "{message}");
    let status = json(&ok_within(&node, &["status", "victim", "--json"], PROMPT));
    assert_eq!(status["state"], "stopped", "{status}");
    assert_eq!(status["active_deployment"], 1, "{status}");

    // 3. `gear destroy` while the build is stuck (the gear running again first)
    ok_within(&node, &["start", "victim"], Duration::from_secs(30));
    let builds = hooks_started(&node, "victim", "build");
    let deploy = start_gear(&node, &["deploy", "victim", path_str(app.path())]);
    wait_hook_started(&node, "victim", "build", builds);
    let (out, took) = gear_within(&node, &["destroy", "victim"], STUCK_STOP);
    assert!(out.status.success(), "{}", stderr_of(&out));
    println!("gear destroy of the stuck gear: {took:?}");
    let (out, _) = deploy.finish(&node, PROMPT);
    assert!(!out.status.success());
    let list = ok_within(&node, &["list"], PROMPT);
    assert!(!list.contains("victim"), "{list}");

    // the other gear never noticed, and the node is fine
    serves(&node, "bystander-default");
    node_alive(&node);
    let rss_after = gearhost_tests::rss_kib(node.pid());
    println!("node RSS {rss_before} KiB before the attack, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the node grew from {rss_before} KiB to {rss_after} KiB"
    );
    ok_within(&node, &["destroy", "bystander"], Duration::from_secs(30));
}

#[test]
fn more_stuck_gears_than_node_threads_leave_the_api_answering() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start_with_uids(67050, 50, "");
    let _python = install_python(&node);
    // the control hook's `status` reads the virtualenv's pyvenv.cfg: each
    // gear makes it a FIFO (no deployment needed)
    let stuck: Vec<String> = (1..=5).map(|i| format!("stuck{i}")).collect();
    for name in &stuck {
        ok_within(&node, &["create", name, "--cartridge", "python"], PROMPT);
        ok_within(
            &node,
            &[
                "exec",
                name,
                "--",
                "sh",
                "-c",
                "mkdir -p /gear/app-root/runtime/venv && mkfifo /gear/app-root/runtime/venv/pyvenv.cfg",
            ],
            Duration::from_secs(10),
        );
    }
    let controls: Vec<Running> = stuck
        .iter()
        .map(|name| start_gear(&node, &["control", name, "status"]))
        .collect();
    for name in &stuck {
        wait_hook_started(&node, name, "control", 0);
    }
    // five hooks stuck in the kernel, more than the node's worker threads
    // (one per core): the API answers, other gears are made and used
    let (_, took) = gear_within(&node, &["list"], PROMPT);
    println!("gear list with {} gears stuck: {took:?}", stuck.len());
    ok_within(&node, &["status", "stuck1"], PROMPT);
    ok_within(&node, &["create", "fresh", "--cartridge", "python"], PROMPT);
    let out = ok_within(
        &node,
        &["exec", "fresh", "--", "echo", "hello"],
        Duration::from_secs(10),
    );
    assert_eq!(out.trim(), "hello");
    ok_within(&node, &["env", "fresh", "set", "A=1"], PROMPT);

    // each stuck gear is stopped (or destroyed) within seconds, cutting its hook short
    let (last, rest) = stuck.split_last().expect("gears");
    for name in rest {
        let (out, took) = gear_within(&node, &["stop", name], STUCK_STOP);
        assert!(out.status.success(), "{}", stderr_of(&out));
        println!("gear stop {name}: {took:?}");
    }
    let (out, took) = gear_within(&node, &["destroy", last], STUCK_STOP);
    assert!(out.status.success(), "{}", stderr_of(&out));
    println!("gear destroy {last}: {took:?}");
    for control in controls {
        let (out, _) = control.finish(&node, PROMPT);
        assert!(!out.status.success());
        assert!(
            stderr_of(&out).contains("stopped before it finished"),
            "{}",
            stderr_of(&out)
        );
    }
    node_alive(&node);
    for name in rest.iter().map(String::as_str).chain(["fresh"]) {
        ok_within(&node, &["destroy", name], Duration::from_secs(30));
    }
}

#[test]
fn a_program_a_cancelled_build_ran_is_killed_with_it() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start_with_uids(67100, 50, "start-timeout = \"20s\"");
    let _python = install_python(&node);
    ok_within(
        &node,
        &["create", "sleeper", "--cartridge", "python"],
        PROMPT,
    );
    let app = example("python-hello");
    ok_within(
        &node,
        &["deploy", "sleeper", path_str(&app)],
        Duration::from_secs(180),
    );
    let uid = json(&ok_within(&node, &["status", "sleeper", "--json"], PROMPT))["uid"]
        .as_u64()
        .expect("uid") as u32;
    // the build runs the virtualenv's python, which the gear replaces with a
    // program that never ends
    ok_within(
        &node,
        &[
            "exec",
            "sleeper",
            "--",
            "sh",
            "-c",
            "cd /gear/app-root/runtime/venv/bin && rm python && \
             printf '#!/bin/sh\\nexec sleep 1000\\n' > python && chmod +x python",
        ],
        Duration::from_secs(10),
    );
    let builds = hooks_started(&node, "sleeper", "build");
    let deploy = start_gear(&node, &["deploy", "sleeper", path_str(&app)]);
    wait_hook_started(&node, "sleeper", "build", builds);
    assert!(
        gearhost_tests::processes_of(uid)
            .iter()
            .any(|p| p.contains("sleep 1000")),
        "the build's program is not running: {:?}",
        gearhost_tests::processes_of(uid)
    );
    let (out, took) = gear_within(&node, &["stop", "sleeper"], STUCK_STOP);
    assert!(out.status.success(), "{}", stderr_of(&out));
    println!("gear stop while the build runs a program that never ends: {took:?}");
    let (out, _) = deploy.finish(&node, PROMPT);
    assert!(!out.status.success());
    // the program went with the hook (and the app with the stop)
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gearhost_tests::processes_of(uid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes of the gear outlived its stop: {:?}",
            gearhost_tests::processes_of(uid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node_alive(&node);
    ok_within(&node, &["destroy", "sleeper"], Duration::from_secs(30));
}
