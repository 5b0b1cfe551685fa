//! End to end: the real `gear` binary against a real node on this machine,
//! with real cartridges built from the SDK, apps answering through the
//! frontend from inside their gears.

use gearhost_tests::{TestNode, cartridge_dir, json, privileged, processes_of};

fn cgroup_leaves(subtree: &str, id: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mounts = gearhost_sandbox::cgroup::detect().expect("cgroup mounts");
    for root in gearhost_sandbox::cgroup::roots(&mounts) {
        let dir = root.join(subtree);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(id) {
                found.push(format!("{}", e.path().display()));
            }
        }
    }
    found
}

/// OpenShift's mapping, counted out: uid n is the n-th pair (a, b), a < b,
/// of categories c0..c1023 in lexicographic order.
fn nth_pair(uid: u32) -> String {
    let mut n = 0;
    for a in 0..1024 {
        for b in (a + 1)..1024 {
            n += 1;
            if n == uid {
                return format!("s0:c{a},c{b}");
            }
        }
    }
    unreachable!("uid beyond the categories")
}

#[test]
fn a_gear_lives_its_whole_life_through_the_real_cli() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(64000, "");
    let hello = cartridge_dir("hello-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        hello.path().to_str().expect("utf-8"),
    ]);
    let list = json(&node.ok(&["cartridge", "list", "--json"]));
    assert_eq!(list[0]["name"], "hello");

    let created = json(&node.ok(&["create", "web", "--cartridge", "hello", "--json"]));
    let uid = created["uid"].as_u64().expect("uid") as u32;
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(uid, 64000);
    assert_eq!(created["mcs_level"], nth_pair(uid));

    let v1 = tempfile::tempdir().expect("src");
    std::fs::write(v1.path().join("VERSION"), "one\n").expect("write");
    node.ok(&["deploy", "web", v1.path().to_str().expect("utf-8")]);
    // the app answers through the frontend, from inside its gear
    let (code, body) = node.http_get("web-default", "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Hello, visitor, from gear web!"), "{body}");
    let (code, _) = node.http_get("nothing-here", "/");
    assert_eq!(code, 404);

    // exec runs inside the gear, as its uid, with our pipes attached
    let out = node.gear(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "id -u; hostname; cat /gear/app-root/repo/VERSION; exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{uid}\nweb\none\n")
    );
    // the command's status is passed on, signals as a shell reports them;
    // gear's own failures are 125, so they never pass for the command's
    let killed = node.gear(&["exec", "web", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(killed.status.code(), Some(128 + 15));
    for own in [
        vec!["exec", "no-such-gear", "--", "true"],
        vec!["exec", "web", "--no-such-flag"],
        vec![
            "exec",
            "web",
            "--socket",
            "/nonexistent/node.sock",
            "--",
            "true",
        ],
    ] {
        let out = node.gear(&own);
        assert_eq!(out.status.code(), Some(125), "{own:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{own:?} says why");
    }
    // every other command keeps the documented codes
    assert_eq!(node.gear(&["show", "no-such-gear"]).status.code(), Some(3));

    // stop: the frontend says so; start: it answers again
    node.ok(&["stop", "web"]);
    assert_eq!(node.http_get("web-default", "/").0, 503);
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    node.ok(&["start", "web"]);
    assert_eq!(node.http_get("web-default", "/").0, 200);

    // a second deployment, then a rollback to the first
    let v2 = tempfile::tempdir().expect("src");
    std::fs::write(v2.path().join("VERSION"), "two\n").expect("write");
    node.ok(&["deploy", "web", v2.path().to_str().expect("utf-8")]);
    let deployments = json(&node.ok(&["deployments", "web", "--json"]));
    assert_eq!(deployments["active"], 2);
    assert_eq!(
        deployments["deployments"].as_array().expect("list").len(),
        2
    );
    let version = node.gear(&["exec", "web", "--", "cat", "/gear/app-root/repo/VERSION"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout), "two\n");
    node.ok(&["rollback", "web"]);
    let version = node.gear(&["exec", "web", "--", "cat", "/gear/app-root/repo/VERSION"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout), "one\n");
    assert_eq!(node.http_get("web-default", "/").0, 200);

    // env layers: user variables reach processes, system ones cannot be overridden
    node.ok(&["env", "web", "set", "GREETING=hi there"]);
    let refused = node.gear(&["env", "web", "set", "GEAR_HOME=/tmp"]);
    assert_eq!(refused.status.code(), Some(3));
    let env = json(&node.ok(&["env", "web", "list", "--json"]));
    assert_eq!(env["effective"]["GREETING"], "hi there");
    assert_eq!(env["effective"]["GEAR_HOME"], "/gear");
    let seen = node.gear(&["exec", "web", "--", "sh", "-c", "echo $GREETING:$GEAR_NAME"]);
    assert_eq!(String::from_utf8_lossy(&seen.stdout), "hi there:web\n");

    // logs: the app's output and the hooks' log
    let logs = node.ok(&["logs", "web", "-n", "50"]);
    assert!(logs.contains("Serving HTTP"), "{logs}");
    let hooks = node.ok(&["logs", "web", "--hooks"]);
    assert!(
        hooks.contains("build: wrote /gear/app-root/runtime/index.html"),
        "{hooks}"
    );
    let control = node.ok(&["control", "web", "greet", "tester"]);
    assert_eq!(control.trim(), "Hello, tester, from gear web!");

    // destroy leaves nothing behind: processes, cgroups, files, the uid
    node.ok(&["destroy", "web"]);
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    assert!(
        cgroup_leaves(&node.subtree, &id).is_empty(),
        "{:?}",
        cgroup_leaves(&node.subtree, &id)
    );
    assert!(!node.state_dir().join("gears").join(&id).exists());
    let list = json(&node.ok(&["list", "--json"]));
    assert_eq!(list.as_array().expect("list").len(), 0);
    let again = json(&node.ok(&["create", "web", "--cartridge", "hello", "--json"]));
    assert_eq!(again["uid"], 64000, "the uid was released");
    node.ok(&["destroy", "web"]);
    // a cartridge in use cannot be removed; an unused one can
    node.ok(&["cartridge", "remove", "hello"]);
}

#[test]
fn bad_input_gets_clear_errors_and_creates_nothing() {
    if !privileged("the node runs as root") {
        return;
    }
    let node = TestNode::start(64200, "");
    let hello = cartridge_dir("hello-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        hello.path().to_str().expect("utf-8"),
    ]);
    for bad in ["../etc", "UPPER", "a_b", "x-", ""] {
        let out = node.gear(&["create", bad, "--cartridge", "hello"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{bad:?} accepted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = node.gear(&["create", "app", "--cartridge", "cobol"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gear cartridge install"));
    let gears = std::fs::read_dir(node.state_dir().join("gears"))
        .expect("gears")
        .count();
    assert_eq!(gears, 0, "nothing half created");

    node.ok(&["create", "app", "--cartridge", "hello"]);
    let out = node.gear(&["create", "app", "--cartridge", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = node.gear(&["deploy", "app", "/nonexistent/source"]);
    assert_eq!(out.status.code(), Some(3));
    let file = tempfile::NamedTempFile::new().expect("file");
    let out = node.gear(&["deploy", "app", file.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
    let out = node.gear(&["start", "app"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing deployed"));
    let out = node.gear(&["status", "ghost"]);
    assert_eq!(out.status.code(), Some(3));
    let out = node.gear(&["cartridge", "remove", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("used by app-default"));

    // a malformed request is refused with a reason
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&node.socket).expect("socket");
    s.write_all(b"{\"api\":1,\"op\":\"format-disk\"}\n")
        .expect("write");
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .expect("read");
    assert!(
        line.contains("\"invalid\"") && line.contains("malformed request"),
        "{line}"
    );
    // a client of another API version is told which side to upgrade, in
    // the frame every version reads
    for (request, advice) in [
        (&b"{\"op\":\"ping\"}\n"[..], "sent no API version"),
        (b"{\"api\":99,\"op\":\"ping\"}\n", "upgrade the node"),
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&node.socket).expect("socket");
        s.write_all(request).expect("write");
        let mut line = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut line)
            .expect("read");
        assert!(
            line.starts_with("{\"error\":{\"kind\":\"invalid\"") && line.contains(advice),
            "{line}"
        );
    }

    // any local user may call the node, and sees only its own namespace:
    // root's gear (app, in namespace default) is not in nobody's list
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(gearhost_tests::gear_bin())
        .args(["list", "--json"])
        .env("GEARHOST_SOCKET", &node.socket)
        .output()
        .expect("setpriv");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout)),
        serde_json::json!([])
    );

    // no node at all: say how to start one
    let out = std::process::Command::new(gearhost_tests::gear_bin())
        .arg("list")
        .env("GEARHOST_SOCKET", "/nonexistent/node.sock")
        .output()
        .expect("gear");
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gear node run"));
    node.ok(&["destroy", "app"]);
}

#[test]
fn a_crashing_process_is_restarted_then_marked_failed() {
    if !privileged("the node runs as root") {
        return;
    }
    let node = TestNode::start(64400, "crash-limit = 3\ncrash-window = \"60s\"");
    let full = cartridge_dir("guest-full");
    node.ok(&["cartridge", "install", full.path().to_str().expect("utf-8")]);
    node.ok(&["create", "crashy", "--cartridge", "full"]);
    node.ok(&[
        "control",
        "crashy",
        "spawn",
        "--restart=on-failure",
        "boom",
        "sh",
        "-c",
        "echo going down; exit 3",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = json(&node.ok(&["status", "crashy", "--json"]));
        let boom = status["processes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "boom").cloned())
            .expect("process boom");
        if boom["state"] == "failed" {
            assert_eq!(boom["restarts"], 2, "{boom}");
            assert_eq!(boom["last_exit"]["exited"], 3, "{boom}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never marked failed: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let logs = node.ok(&["logs", "crashy"]);
    assert_eq!(logs.matches("going down").count(), 3, "{logs}");
    assert!(logs.contains("giving up"), "{logs}");
    node.ok(&["destroy", "crashy"]);
}

#[test]
fn concurrent_creates_on_different_gears_all_succeed() {
    if !privileged("the node runs as root") {
        return;
    }
    let node = std::sync::Arc::new(TestNode::start(64600, ""));
    let hello = cartridge_dir("hello-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        hello.path().to_str().expect("utf-8"),
    ]);
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let node = node.clone();
            std::thread::spawn(move || {
                json(&node.ok(&["create", &format!("g{i}"), "--cartridge", "hello", "--json"]))
                        ["uid"]
                        .as_u64()
            })
        })
        .collect();
    let mut uids: Vec<u64> = handles
        .into_iter()
        .map(|h| h.join().expect("thread").expect("uid"))
        .collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), 12, "every gear got its own uid");
    for i in 0..12 {
        node.ok(&["destroy", &format!("g{i}")]);
    }
}

#[test]
fn after_a_sigkill_of_the_node_running_gears_are_kept_and_stopped_ones_stay_stopped() {
    if !privileged("the node runs as root") {
        return;
    }
    let mut node = TestNode::start(64800, "");
    let hello = cartridge_dir("hello-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        hello.path().to_str().expect("utf-8"),
    ]);
    let src = tempfile::tempdir().expect("src");
    for name in ["up", "down"] {
        node.ok(&["create", name, "--cartridge", "hello"]);
        node.ok(&["deploy", name, src.path().to_str().expect("utf-8")]);
    }
    node.ok(&["stop", "down"]);
    node.ok(&["env", "up", "set", "KEPT=yes"]);
    let up_uid = json(&node.ok(&["show", "up", "--json"]))["uid"]
        .as_u64()
        .expect("uid") as u32;

    let up_pid = json(&node.ok(&["status", "up", "--json"]))["processes"][0]["pid"].as_u64();
    assert!(up_pid.is_some());
    node.kill9_and_restart();

    // the gear that should run kept running, and the new node took it back
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = json(&node.ok(&["status", "up", "--json"]));
        if status["state"] == "running" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "up never came back: {status}\n{}",
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(node.http_get("up-default", "/").0, 200);
    assert_eq!(
        json(&node.ok(&["status", "up", "--json"]))["processes"][0]["pid"].as_u64(),
        up_pid,
        "the same process serves"
    );
    assert_eq!(
        processes_of(up_uid).len(),
        2,
        "one init and one server, no strays: {:?}",
        processes_of(up_uid)
    );
    // what the user stopped stays stopped; acknowledged changes are kept
    assert_eq!(
        json(&node.ok(&["status", "down", "--json"]))["state"],
        "stopped"
    );
    assert_eq!(node.http_get("down-default", "/").0, 503);
    let env = json(&node.ok(&["env", "up", "list", "--json"]));
    assert_eq!(env["effective"]["KEPT"], "yes");
    assert_eq!(
        json(&node.ok(&["deployments", "up", "--json"]))["active"],
        1
    );
    for name in ["up", "down"] {
        node.ok(&["destroy", name]);
    }
}
