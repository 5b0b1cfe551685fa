//! End to end: the frontend's door inside a gear (its listener on the frontend's port in the
//! gear's network namespace) is there while the gear runs and only then. A running gear
//! reaches another by its public name through it; a gear created and never started, or
//! stopped, holds none (nothing listens there, and the node's count of doors says so); a
//! frozen gear keeps its door, so once thawed it reaches other gears at once; a gear
//! started again, and one taken back by a restarted node, has its door again.
//!
//! Gear uids 88250-88349.

use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, apps, cartridge_dir, privileged};

/// A diy app that serves its repository (with `hello.txt`) on its port.
const START: &str = "#!/bin/sh\nset -u\ncd \"$(dirname \"$0\")/..\"\n\
                     exec python3 -m http.server --bind 127.0.0.1 \"$PORT\"\n";

/// Runs `python3 -c program` inside `gear`: (exit code, stdout, stderr).
fn inside(node: &TestNode, gear: &str, program: &str) -> (Option<i32>, String, String) {
    let out = node.gear(&["exec", gear, "--", "python3", "-c", program]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A python program that asks the door for `path` of `host`, printing the status and body,
/// or `refused` when nothing listens there.
fn ask(port: u16, host: &str, path: &str) -> String {
    format!(
        "import http.client as h\n\
         try:\n\
         \x20   c = h.HTTPConnection('127.0.0.1', {port}, timeout=10)\n\
         \x20   c.request('GET', '{path}', headers={{'Host': '{host}'}})\n\
         \x20   r = c.getresponse()\n\
         \x20   print(r.status, r.read().decode().strip())\n\
         except ConnectionRefusedError:\n\
         \x20   print('refused')\n"
    )
}

/// The node's count of open doors.
fn doors(node: &TestNode) -> f64 {
    node.metrics()
        .get("gearhost_frontend_doors")
        .copied()
        .unwrap_or(-1.0)
}

/// Waits until the node counts `want` doors (the resume after a restart runs on its own).
fn wait_doors(node: &TestNode, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = doors(node);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node counts {now} doors, not {want}:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_gear_has_its_door_while_it_runs_and_only_then() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let mut node = TestNode::start(
        88250,
        "idle-timeout = \"off\"\nfreeze-after = \"off\"\nfrozen-memory-floor = \"off\"",
    );
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", diy.path().to_str().expect("utf-8")]);
    let app = apps::tree(&[(".gear/start", START), ("hello.txt", "hello from b\n")]);
    let app = app.path().to_str().expect("utf-8");
    for gear in ["a", "b", "idle"] {
        node.ok(&["create", gear, "--cartridge", "diy"]);
    }
    // created, nothing runs: no door anywhere
    assert_eq!(doors(&node), 0.0);
    node.ok(&["deploy", "a", app]);
    node.ok(&["deploy", "b", app]);
    assert_eq!(doors(&node), 2.0, "two gears run");
    let port = node.frontend.port();
    let to_b = ask(port, "b-default.localhost", "/hello.txt");

    // a running gear reaches another by its public name through its door
    let (code, out, err) = inside(&node, "a", &to_b);
    assert_eq!((code, out.as_str()), (Some(0), "200 hello from b"), "{err}");
    // the gear never started has nothing listening on the frontend's port
    let (code, out, err) = inside(&node, "idle", &to_b);
    assert_eq!((code, out.as_str()), (Some(0), "refused"), "{err}");

    // frozen, a keeps its door: thawed (by the exec), it reaches b at once
    let out = node.ok(&["idle", "a"]);
    assert!(out.contains("frozen"), "{out}");
    assert_eq!(doors(&node), 2.0, "a frozen gear keeps its door");
    let (code, out, err) = inside(&node, "a", &to_b);
    assert_eq!((code, out.as_str()), (Some(0), "200 hello from b"), "{err}");

    // stopped, a holds no door: the node lets go of it, nothing listens inside a
    node.ok(&["stop", "a"]);
    assert_eq!(doors(&node), 1.0, "a stopped gear holds no door");
    let (code, out, err) = inside(&node, "a", &to_b);
    assert_eq!((code, out.as_str()), (Some(0), "refused"), "{err}");
    // b still reaches a's name (the frontend answers for a stopped gear)
    let (code, out, err) = inside(&node, "b", &ask(port, "a-default.localhost", "/"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("503"), "{out}");

    // started again, a has its door again on the same port
    node.ok(&["start", "a"]);
    assert_eq!(doors(&node), 2.0);
    let (code, out, err) = inside(&node, "a", &to_b);
    assert_eq!((code, out.as_str()), (Some(0), "200 hello from b"), "{err}");

    // a node restarted with a running and b stopped: a's door only, and it works
    node.ok(&["stop", "b"]);
    assert_eq!(doors(&node), 1.0);
    node.term_and_restart();
    wait_doors(&node, 1.0);
    let port = node.frontend.port();
    let (code, out, err) = inside(&node, "a", &ask(port, "a-default.localhost", "/hello.txt"));
    assert_eq!((code, out.as_str()), (Some(0), "200 hello from b"), "{err}");
    let (code, out, err) = inside(&node, "b", &ask(port, "a-default.localhost", "/hello.txt"));
    assert_eq!((code, out.as_str()), (Some(0), "refused"), "{err}");

    // destroyed, a's door goes with it
    node.ok(&["destroy", "a"]);
    assert_eq!(doors(&node), 0.0);
}
