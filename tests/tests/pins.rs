//! End to end: where a node keeps its gears' network namespaces. Each is bound below
//! `<state>/netns`, a private mount of its own, so the mounts of ten thousand gears stay out
//! of the way of everything else; the node's gear helpers start from a mount namespace without
//! any mount of the state directory; a node finding namespaces bound where nodes before this
//! layout kept them (`gears/<id>/netns`) moves them, a running gear keeping its namespace and
//! its app.
//!
//! Gear uids 89100-89199.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use gearhost_sandbox::testing::{helpers_of, mountinfo_below};
use gearhost_tests::{TestNode, apps, cartridge_dir, json, privileged};

/// A diy app that serves its repository (with `hello.txt`) on its port.
const START: &str = "#!/bin/sh\nset -u\ncd \"$(dirname \"$0\")/..\"\n\
                     exec python3 -m http.server --bind 127.0.0.1 \"$PORT\"\n";

fn gear_id(node: &TestNode, gear: &str) -> String {
    json(&node.ok(&["status", gear, "--json"]))["id"]
        .as_str()
        .expect("id")
        .to_string()
}

#[test]
fn pins_live_in_a_private_mount_apart_and_old_ones_are_moved_there() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let mut node = TestNode::start(89100, "idle-timeout = \"off\"\nfreeze-after = \"off\"");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", diy.path().to_str().expect("utf-8")]);
    let app = apps::tree(&[(".gear/start", START), ("hello.txt", "hello\n")]);
    node.ok(&["create", "web", "--cartridge", "diy"]);
    node.ok(&["create", "quiet", "--cartridge", "diy"]);
    node.ok(&["deploy", "web", app.path().to_str().expect("utf-8")]);
    assert_eq!(node.http_get("web-default", "/hello.txt").1, "hello\n");

    let state = node.state_dir().canonicalize().expect("state dir");
    let pins = state.join("netns");
    let (web, quiet) = (gear_id(&node, "web"), gear_id(&node, "quiet"));
    for id in [&web, &quiet] {
        assert!(
            gearhost_sandbox::netns::exists(&pins.join(id)),
            "gear {id} has its namespace bound in {}",
            pins.display()
        );
        assert!(!state.join("gears").join(id).join("netns").exists());
    }
    // only the node may list them (their names are the gears' ids)
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&pins)
        .expect("netns/")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "netns/ is the node's alone");
    // the node's view: netns/ is a mount of its own, private (no `shared:` tag), with the pins
    let seen = mountinfo_below(node.pid(), &pins).expect("the node's mount table");
    let own = seen
        .iter()
        .find(|l| l.split(' ').nth(4) == Some(pins.to_str().expect("utf-8")))
        .unwrap_or_else(|| panic!("netns/ is a mount: {seen:?}"));
    let optional: Vec<&str> = own
        .split(" - ")
        .next()
        .expect("fields")
        .split(' ')
        .skip(6)
        .collect();
    assert!(
        !optional.iter().any(|f| f.starts_with("shared:")),
        "netns/ does not propagate: {own}"
    );
    assert_eq!(seen.len(), 3, "netns/ and its two pins: {seen:?}");
    // the node's waiting helpers hold no mount of the state directory
    let deadline = Instant::now() + Duration::from_secs(10);
    let helpers = loop {
        let h = helpers_of(node.pid());
        if !h.is_empty() || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!helpers.is_empty(), "the node keeps a warm helper");
    for h in helpers {
        let held = mountinfo_below(h, &state).expect("the helper's mount table");
        assert!(
            held.is_empty(),
            "helper {h} holds mounts of the state directory: {held:?}"
        );
    }

    // a node before this layout bound them in the gear's directory: put them back there with
    // the gears running, and start a node on that state
    let web_ns = std::fs::metadata(pins.join(&web)).expect("pin").ino();
    node.ok(&["node", "stop"]);
    node.wait_stopped("gear node stop");
    for id in [&web, &quiet] {
        gearhost_sandbox::netns::move_pin(
            &pins.join(id),
            &state.join("gears").join(id).join("netns"),
        )
        .expect("pin moved back");
    }
    node.start_again();
    node.wait_state("web", "running", 30);
    for id in [&web, &quiet] {
        assert!(gearhost_sandbox::netns::exists(&pins.join(id)));
        assert!(!state.join("gears").join(id).join("netns").exists());
    }
    assert_eq!(
        std::fs::metadata(pins.join(&web)).expect("pin").ino(),
        web_ns,
        "the running gear keeps its network namespace"
    );
    assert_eq!(node.http_get("web-default", "/hello.txt").1, "hello\n");
    let events = node.ok(&["node", "events", "--gear", "web", "-n", "5"]);
    assert!(
        events.contains("adopted"),
        "taken back, not restarted: {events}"
    );

    // destroyed, a gear's pin goes with it
    node.ok(&["destroy", "quiet", "--yes"]);
    assert!(!pins.join(&quiet).exists());
    node.ok(&["node", "stop", "--gears"]);
    node.wait_stopped("gear node stop --gears");
}
