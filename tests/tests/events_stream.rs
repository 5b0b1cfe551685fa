//! End to end: build output reaches `gear deploy` and `gear logs --hooks -f`
//! while the build runs; a deploy is cancelled (`gear deploy --cancel`, Ctrl-C
//! twice) with the previous deployment serving on, and a deploy behind it says
//! it waits; the node's event log records crashes and restarts, follows them
//! with `-f`, and shows users only their own gears. Gear uids 79000-79599;
//! test users 74221-74222.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, gear_bin, json, privileged};

/// The build of a source made with `hold` prints a line, then waits until the
/// test creates `go` in the gear's data directory, then prints another.
const BUILD: &str = r#"#!/bin/sh
set -eu
echo "build-first-line"
if [ -e .gear/hold ]; then
    i=0
    while [ ! -e "$GEAR_DATA_DIR/go" ] && [ "$i" -lt 1200 ]; do
        sleep 0.1
        i=$((i + 1))
    done
fi
echo "build-second-line"
"#;

const START: &str = r#"#!/bin/sh
set -eu
cd "$(dirname "$0")/.."
exec python3 -m http.server --bind 127.0.0.1 --directory public "$PORT"
"#;

/// A diy app whose page says `version`; its build waits for `go` if `hold`.
fn app(version: &str, hold: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("source");
    let gear = dir.path().join(".gear");
    std::fs::create_dir_all(&gear).expect("mkdir .gear");
    std::fs::create_dir_all(dir.path().join("public")).expect("mkdir public");
    for (name, text) in [("build", BUILD), ("start", START)] {
        let path = gear.join(name);
        std::fs::write(&path, text).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    if hold {
        std::fs::write(gear.join("hold"), "").expect("hold");
    }
    std::fs::write(dir.path().join("public/index.html"), format!("{version}\n")).expect("page");
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `gear ARGS` against `node` in the background, its output piped.
fn spawn_gear(node: &TestNode, args: &[&str]) -> Child {
    Command::new(gear_bin())
        .args(args)
        .env("GEARHOST_SOCKET", &node.socket)
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gear")
}

/// The lines of a pipe as they arrive, read on a thread of their own.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(pipe: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Wait (at most `within`) for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?} came; saw {:#?}", self.seen),
            }
        }
    }

    /// Everything that came until the pipe closed.
    fn rest(mut self) -> Vec<String> {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(60)) {
            self.seen.push(line);
        }
        self.seen
    }
}

/// The gear's data directory on the host.
fn data_dir(node: &TestNode, id: &str) -> PathBuf {
    node.state_dir()
        .join("gears")
        .join(id)
        .join("home/app-root/data")
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

/// Send `signal` (`INT`, `KILL`) to process `pid`, one the test started or
/// the gear's own server.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A node with the diy cartridge and gear `app` (its id returned).
fn node_with_app(uid_min: u32) -> (TestNode, String) {
    let node = TestNode::start(uid_min, "");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    let created = json(&node.ok(&["create", "app", "--cartridge", "diy", "--json"]));
    let id = created["id"].as_str().expect("id").to_string();
    (node, id)
}

#[test]
fn build_output_reaches_deploy_and_the_hook_log_while_the_build_runs() {
    if !privileged("the node creates gears") {
        return;
    }
    let (node, id) = node_with_app(79000);
    let v1 = app("v1", false);
    node.ok(&["deploy", "app", path_str(v1.path())]);
    wait_for_page(&node, "app-default", "v1\n");

    let mut follow = spawn_gear(&node, &["logs", "app", "--hooks", "-f", "-n", "0"]);
    let mut hooks = Lines::of(follow.stdout.take().expect("stdout"));
    // the follower is reading before the build starts
    std::thread::sleep(Duration::from_millis(500));
    let v2 = app("v2", true);
    let mut deploy = spawn_gear(&node, &["deploy", "app", path_str(v2.path())]);
    let mut progress = Lines::of(deploy.stderr.take().expect("stderr"));

    // the build is held after its first line: both see that line now
    let first = progress.wait_for("build-first-line", Duration::from_secs(60));
    assert!(first.contains("build[build:stdout]"), "{first}");
    hooks.wait_for("build-first-line", Duration::from_secs(10));
    assert!(
        !progress
            .seen
            .iter()
            .any(|l| l.contains("build-second-line")),
        "the second line came before the build was let go"
    );
    std::fs::write(data_dir(&node, &id).join("go"), "").expect("go");
    progress.wait_for("build-second-line", Duration::from_secs(60));
    hooks.wait_for("build-second-line", Duration::from_secs(10));
    let status = deploy.wait().expect("deploy");
    assert!(
        status.success(),
        "the deploy failed: {:#?}",
        progress.rest()
    );
    wait_for_page(&node, "app-default", "v2\n");
    // each line is in the hook log once: the cartridge does not repeat it
    let _ = follow.kill();
    let _ = follow.wait();
    let all = node.ok(&["logs", "app", "--hooks", "-n", "1000"]);
    assert_eq!(all.matches("build-second-line").count(), 2, "{all}");
    // `gear build` and `gear restart` show their hooks' output too
    let out = node.gear(&["build", "app"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("build[build:stdout] build-first-line"),
        "{said}"
    );
    let out = node.gear(&["restart", "app"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("start[node] hook started"), "{said}");
}

#[test]
fn a_cancelled_deploy_leaves_the_previous_deployment_serving() {
    if !privileged("the node creates gears") {
        return;
    }
    let (node, id) = node_with_app(79200);
    let v1 = app("v1", false);
    node.ok(&["deploy", "app", path_str(v1.path())]);
    wait_for_page(&node, "app-default", "v1\n");

    // deployment 2 holds in its build; deployment 3 comes behind it
    let held = app("v2", true);
    let mut first = spawn_gear(&node, &["deploy", "app", path_str(held.path())]);
    let mut first_err = Lines::of(first.stderr.take().expect("stderr"));
    first_err.wait_for("build-first-line", Duration::from_secs(60));
    let v3 = app("v3", false);
    let mut second = spawn_gear(&node, &["deploy", "app", path_str(v3.path())]);
    let mut second_err = Lines::of(second.stderr.take().expect("stderr"));
    let waiting = second_err.wait_for("waiting for", Duration::from_secs(30));
    assert!(
        waiting.contains("deploy of deployment 2") && waiting.contains("--cancel"),
        "{waiting}"
    );

    let cancelled = node.ok(&["deploy", "app", "--cancel"]);
    assert!(cancelled.contains("deployment 2"), "{cancelled}");
    let status = first.wait().expect("deploy");
    let said = first_err.rest().join("\n");
    assert!(!status.success(), "a cancelled deploy succeeded: {said}");
    assert!(said.contains("cancelled"), "{said}");
    // deployment 2's build ended at the cancel (deployment 1's, run again
    // to restore what it made, prints both lines)
    let (held_build, _) = said
        .split_once("rebuilding deployment 1")
        .expect("deployment 1 is built again");
    assert!(
        !held_build.contains("build-second-line"),
        "the build ran on after the cancel: {said}"
    );
    // the deploy behind it goes ahead
    let status = second.wait().expect("deploy");
    assert!(status.success(), "{:#?}", second_err.rest());
    wait_for_page(&node, "app-default", "v3\n");
    let deployments = json(&node.ok(&["deployments", "app", "--json"]));
    let two = deployments["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .find(|d| d["id"] == 2)
        .expect("deployment 2 is kept")
        .clone();
    assert_eq!(two["state"], "failed", "{two}");
    assert_eq!(two["error"], "cancelled", "{two}");

    // Ctrl-C once says the deploy goes on; twice cancels it, and v3 serves on
    let held = app("v4", true);
    let mut deploy = spawn_gear(&node, &["deploy", "app", path_str(held.path())]);
    let mut err = Lines::of(deploy.stderr.take().expect("stderr"));
    err.wait_for("build-first-line", Duration::from_secs(60));
    let pid = deploy.id();
    signal(pid, "INT");
    let note = err.wait_for("interrupted", Duration::from_secs(10));
    assert!(note.contains("goes on on the node"), "{note}");
    err.wait_for("--cancel", Duration::from_secs(10));
    assert!(
        deploy.try_wait().expect("wait").is_none(),
        "one Ctrl-C ended the command"
    );
    signal(pid, "INT");
    let status = deploy.wait().expect("deploy");
    let said = err.rest().join("\n");
    assert!(!status.success(), "{said}");
    assert!(said.contains("cancelled"), "{said}");
    wait_for_page(&node, "app-default", "v3\n");
    assert!(
        !data_dir(&node, &id).join("go").exists(),
        "nothing let a build go"
    );
    let events = node.ok(&["node", "events", "--gear", "app", "--json"]);
    let cancels = events
        .lines()
        .map(json)
        .filter(|e| e["kind"] == "deploy-cancelled")
        .count();
    assert_eq!(cancels, 2, "{events}");

    // a rollback rebuilds deployment 1 before it serves, in view, and is an event
    let out = node.gear(&["rollback", "app", "1"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("build[build:stdout] build-second-line"),
        "{said}"
    );
    wait_for_page(&node, "app-default", "v1\n");
    let events = node.ok(&["node", "events", "--gear", "default/app", "-n", "1"]);
    assert!(
        events.contains("default/app rolled-back (deployment 1)"),
        "{events}"
    );

    // Ctrl-C twice on a deploy still waiting behind another leaves it, and
    // the node drops it: the one in progress is not the one cancelled
    let held = app("v5", true);
    let mut first = spawn_gear(&node, &["deploy", "app", path_str(held.path())]);
    let mut first_err = Lines::of(first.stderr.take().expect("stderr"));
    first_err.wait_for("build-first-line", Duration::from_secs(60));
    let v6 = app("v6", false);
    let mut queued = spawn_gear(&node, &["deploy", "app", path_str(v6.path())]);
    let mut queued_err = Lines::of(queued.stderr.take().expect("stderr"));
    queued_err.wait_for("waiting for", Duration::from_secs(30));
    signal(queued.id(), "INT");
    queued_err.wait_for("interrupted", Duration::from_secs(10));
    signal(queued.id(), "INT");
    let status = queued.wait().expect("deploy");
    let said = queued_err.rest().join("\n");
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("had not started"), "{said}");
    std::fs::write(data_dir(&node, &id).join("go"), "").expect("go");
    let status = first.wait().expect("deploy");
    assert!(status.success(), "{:#?}", first_err.rest());
    wait_for_page(&node, "app-default", "v5\n");
    let deployed = |node: &TestNode| {
        json(&node.ok(&["deployments", "app", "--json"]))["deployments"]
            .as_array()
            .expect("deployments")
            .iter()
            .map(|d| d["source"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    std::thread::sleep(Duration::from_secs(1));
    let sources = deployed(&node);
    assert!(
        !sources.iter().any(|s| s.contains(path_str(v6.path()))),
        "the abandoned deploy ran: {sources:?}"
    );
    wait_for_page(&node, "app-default", "v5\n");
}

#[test]
fn a_crash_is_an_event_that_followers_see() {
    if !privileged("the node creates gears") {
        return;
    }
    let (node, _id) = node_with_app(79400);
    let v1 = app("v1", false);
    node.ok(&["deploy", "app", path_str(v1.path())]);
    wait_for_page(&node, "app-default", "v1\n");
    let mut follow = spawn_gear(&node, &["node", "events", "-f", "-n", "0", "--json"]);
    let mut events = Lines::of(follow.stdout.take().expect("stdout"));
    std::thread::sleep(Duration::from_millis(500));

    // the app's server dies by SIGKILL: a crash, then a supervised restart
    let status = json(&node.ok(&["status", "app", "--json"]));
    let pid = status["processes"][0]["pid"].as_u64().expect("pid") as u32;
    signal(pid, "KILL");
    let crash = json(&events.wait_for("\"crashed\"", Duration::from_secs(30)));
    assert_eq!(crash["namespace"], "default");
    assert_eq!(crash["gear"], "app");
    let reason = crash["reason"].as_str().expect("reason");
    assert_eq!(
        reason,
        format!("process app (pid {pid}) was killed by signal 9"),
        "{crash}"
    );
    events.wait_for("\"restarted\"", Duration::from_secs(30));
    wait_for_page(&node, "app-default", "v1\n");

    // idling and waking are events too, seen by the same follower
    node.ok(&["idle", "app"]);
    events.wait_for("\"froze\"", Duration::from_secs(30));
    wait_for_page(&node, "app-default", "v1\n");
    events.wait_for("\"thawed\"", Duration::from_secs(30));
    node.ok(&["idle", "--stop", "app"]);
    events.wait_for("\"idled\"", Duration::from_secs(30));
    wait_for_page(&node, "app-default", "v1\n");
    let woke = json(&events.wait_for("\"woke\"", Duration::from_secs(30)));
    assert_eq!(woke["gear"], "app");
    let _ = follow.kill();
    let _ = follow.wait();

    // without -f: the deploy's events, the crash and the restart, for people
    let all = node.ok(&["node", "events", "--gear", "app"]);
    for kind in [
        "deploy-started",
        "deploy-done",
        "started",
        "crashed",
        "restarted",
    ] {
        assert!(
            all.contains(&format!("default/app {kind}")),
            "{kind}: {all}"
        );
    }
    // and in the node's own log, one line each
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("default/app") && l.contains("crashed") && l.contains("signal 9")),
        "{log}"
    );
    // and in the event file under the state directory
    let file =
        std::fs::read_to_string(node.state_dir().join("events/events.jsonl")).expect("events file");
    assert!(file.lines().any(|l| json(l)["kind"] == "crashed"), "{file}");
}

const ADA: (&str, u32) = ("gh-ev-ada", 74221);
const BEA: (&str, u32) = ("gh-ev-bea", 74222);

/// The test's users, removed when it ends.
struct Users;

impl Users {
    fn make() -> Users {
        Users::remove();
        for (name, uid) in [ADA, BEA] {
            let uid = uid.to_string();
            let out = Command::new("useradd")
                .args(["--no-create-home", "--uid", &uid, "--user-group"])
                .args(["--shell", "/usr/sbin/nologin", name])
                .output()
                .expect("useradd");
            assert!(out.status.success(), "useradd {name}: {out:?}");
        }
        Users
    }

    fn remove() {
        for (name, _) in [ADA, BEA] {
            let _ = Command::new("userdel").arg(name).output();
        }
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        Users::remove();
    }
}

fn gear_as(node: &TestNode, user: (&str, u32), args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={}", user.1))
        .arg(format!("--regid={}", user.1))
        .arg("--init-groups")
        .arg(gear_bin())
        .args(args)
        .env("GEARHOST_SOCKET", &node.socket)
        .env_remove("GEARHOST_NAMESPACE")
        .env("HOME", "/")
        .stdin(Stdio::null())
        .output()
        .expect("setpriv gear")
}

#[test]
fn a_user_sees_only_the_events_of_its_own_gears() {
    if !privileged("the test makes Unix users and the node creates gears") {
        return;
    }
    let _users = Users::make();
    let node = TestNode::start_shared(79500, "", "");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    // an operator makes one gear in each user's namespace and starts them
    for (user, gear) in [(ADA, "adasecret"), (BEA, "beaapp")] {
        node.ok(&["create", gear, "-N", user.0, "--cartridge", "diy"]);
        let src = app(gear, false);
        node.ok(&["deploy", gear, "-N", user.0, path_str(src.path())]);
    }
    let out = gear_as(&node, BEA, &["node", "events", "-n", "1000", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .map(json)
            .any(|e| e["gear"] == "beaapp" && e["kind"] == "deploy-done"),
        "{text}"
    );
    assert!(!text.contains("adasecret"), "bea saw ada's gear: {text}");
    // naming the other tenant's gear is refused, without its events
    let out = gear_as(
        &node,
        BEA,
        &["node", "events", "--gear", &format!("{}/adasecret", ADA.0)],
    );
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("deploy"));
    // an operator sees both
    let all = node.ok(&["node", "events", "-n", "1000"]);
    assert!(all.contains("gh-ev-ada/adasecret deploy-done"), "{all}");
    assert!(all.contains("gh-ev-bea/beaapp deploy-done"), "{all}");
}

#[test]
fn endless_build_output_is_dropped_not_buffered() {
    if !privileged("the node creates gears") {
        return;
    }
    let (node, _id) = node_with_app(79600);
    // a build that prints 12 MiB of short lines
    let src = app("v1", false);
    std::fs::write(
        src.path().join(".gear/build"),
        "#!/bin/sh\nyes 'a line of build output' | head -c 12582912\necho build-done\n",
    )
    .expect("build script");
    // a client that reads nothing until the deploy is over: its pipe fills,
    // and the node must drop what it cannot send rather than keep it
    let deploy = spawn_gear(&node, &["deploy", "app", path_str(src.path())]);
    wait_for_page(&node, "app-default", "v1\n");
    let out = deploy.wait_with_output().expect("deploy");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("lines of output were not sent here"),
        "no drop was reported: {} bytes\n{}",
        said.len(),
        &said[said.len().saturating_sub(2000)..]
    );
    // the program's output is kept up to its cap, and the cut is said
    let hooks = node.ok(&["logs", "app", "--hooks", "-n", "20"]);
    assert!(hooks.contains("the rest is dropped"), "{hooks}");
    let kept = node.ok(&["logs", "app", "--hooks", "-n", "1000000"]);
    let lines = kept.matches("a line of build output").count();
    assert!(
        lines < (4 << 20) / 24 + 10,
        "{lines} lines kept, more than the 4 MiB cap"
    );
}
