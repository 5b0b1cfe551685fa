//! End to end: what a deployment is, through the real `gear` and node —
//! rolling back restores what the earlier release served, failed
//! deployments take no rollback slot, and a service gear (PostgreSQL) is
//! neither shown with a URL nor accepts deployments.

use std::path::Path;
use std::time::{Duration, Instant};

use gearhost_tests::apps::{releases, tree};
use gearhost_tests::{TestNode, json, privileged, workspace_root};

fn path(dir: &Path) -> &str {
    dir.to_str().expect("utf-8")
}

/// GET / from `gear` until it answers `want` (the app may still be
/// starting), or fail with what it answered.
fn serves(node: &TestNode, gear: &str, want: &str, when: &str) {
    let label = format!("{gear}-default");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = node.http_get(&label, "/");
        if code == 200 && body.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: {gear} answered {code} {body:?}, not {want:?}\nnode log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rollback_serves_the_earlier_release_again_for_each_web_cartridge() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(76000, "");
    let cartridges = ["static", "diy", "python", "nodejs"];
    let _carts = node.install_cartridges(&[
        "static-cartridge",
        "diy-cartridge",
        "python-cartridge",
        "nodejs-cartridge",
    ]);
    for cartridge in cartridges {
        let gear = format!("{cartridge}-app");
        node.ok(&["create", &gear, "--cartridge", cartridge]);
        let [(one, first), (two, second)] = releases(cartridge);
        node.ok(&["deploy", &gear, path(one.path())]);
        serves(&node, &gear, first, "after the first deploy");
        node.ok(&["deploy", &gear, path(two.path())]);
        serves(&node, &gear, second, "after the second deploy");
        let started = Instant::now();
        let out = node.ok(&["rollback", &gear, "1"]);
        let took = started.elapsed();
        assert!(out.contains('1'), "{out}");
        serves(&node, &gear, first, "after `gear rollback 1`");
        println!("{cartridge}: `gear rollback` (rebuild, stop, start) took {took:.2?}");
        if cartridge == "nodejs" {
            let hooks = node.ok(&["logs", &gear, "--hooks"]);
            assert!(hooks.contains("npm skipped"), "{hooks}");
        }
        // and forward again, by number
        node.ok(&["rollback", &gear, "2"]);
        serves(&node, &gear, second, "after `gear rollback 2`");
    }

    // the case: the example site, then an empty directory, then back
    node.ok(&["create", "site", "--cartridge", "static"]);
    let example = workspace_root().join("examples/static-site");
    node.ok(&["deploy", "site", path(&example)]);
    let (code, page) = node.http_get("site-default", "/");
    assert_eq!(code, 200, "{page}");
    let empty = tree(&[]);
    node.ok(&["deploy", "site", path(empty.path())]);
    let (code, _) = node.http_get("site-default", "/");
    assert_ne!(code, 200, "an empty deployment serves no page");
    node.ok(&["rollback", "site", "1"]);
    assert_eq!(node.http_get("site-default", "/"), (200, page));
    let status = node.ok(&["control", "site", "status"]);
    assert!(status.contains("public"), "{status}");
}

#[test]
fn failed_deployments_take_no_rollback_slot() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(76200, "keep-deployments = 2");
    let _carts = node.install_cartridges(&["diy-cartridge"]);
    node.ok(&["create", "app", "--cartridge", "diy"]);
    let good = |page: &str| {
        tree(&[
            ("public/index.html", &format!("{page}\n")),
            (
                ".gear/start",
                "#!/bin/sh\nexec python3 -m http.server --bind 127.0.0.1 --directory public \"$PORT\"\n",
            ),
        ])
    };
    let bad = tree(&[
        (
            ".gear/build",
            "#!/bin/sh\necho 'no such compiler' >&2\nexit 1\n",
        ),
        (".gear/start", "#!/bin/sh\nexit 1\n"),
    ]);
    let (one, two) = (good("one"), good("two"));
    node.ok(&["deploy", "app", path(one.path())]);
    node.ok(&["deploy", "app", path(two.path())]);
    for _ in 0..4 {
        let out = node.gear(&["deploy", "app", path(bad.path())]);
        assert!(!out.status.success(), "a failing build is refused");
    }
    serves(&node, "app", "two", "after four failed builds");
    let three = good("three");
    node.ok(&["deploy", "app", path(three.path())]);
    let list = json(&node.ok(&["deployments", "app", "--json"]));
    let by_state = |state: &str| -> Vec<u64> {
        list["deployments"]
            .as_array()
            .expect("a list")
            .iter()
            .filter(|d| d["state"] == state)
            .map(|d| d["id"].as_u64().expect("id"))
            .collect()
    };
    // keep-deployments = 2 good ones; the newest three failures apart
    assert_eq!(by_state("ready"), [2, 7], "{list}");
    assert_eq!(by_state("failed"), [4, 5, 6], "{list}");
    node.ok(&["rollback", "app"]);
    serves(&node, "app", "two", "after rolling back past four failures");
}

#[test]
fn a_database_gear_has_no_url_and_takes_no_deployment() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(76400, "");
    let _carts = node.install_cartridges(&["postgresql-cartridge", "static-cartridge"]);
    let created = node.ok(&["create", "db", "--cartridge", "postgresql"]);
    assert!(
        created.contains("gear start db") && !created.contains("gear deploy"),
        "{created}"
    );
    let web = node.ok(&["create", "web", "--cartridge", "static"]);
    assert!(web.contains("gear deploy web"), "{web}");
    node.ok(&["start", "db"]);
    let before = json(&node.ok(&["status", "db", "--json"]));

    let shown = json(&node.ok(&["show", "db", "--json"]));
    assert!(shown["gear"]["url"].is_null(), "{shown}");
    let listed = json(&node.ok(&["list", "--json"]));
    let row = |name: &str| {
        listed
            .as_array()
            .expect("a list")
            .iter()
            .find(|g| g["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {listed}"))
    };
    assert!(row("db")["url"].is_null(), "{listed}");
    assert!(row("web")["url"].is_string(), "{listed}");
    let table = node.ok(&["list"]);
    let db_line = table
        .lines()
        .find(|l| l.starts_with("db "))
        .expect("db row");
    assert!(
        db_line.trim_end().ends_with(" -") && !db_line.contains("http"),
        "{table}"
    );

    let example = workspace_root().join("examples/static-site");
    let out = node.gear(&["deploy", "db", path(&example)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "deploy to a database was accepted");
    assert!(
        err.contains("takes no deployments") && err.contains("gear link APP db"),
        "{err}"
    );
    // nothing was deployed, and PostgreSQL was not restarted
    let list = json(&node.ok(&["deployments", "db", "--json"]));
    assert_eq!(list["deployments"], serde_json::json!([]), "{list}");
    let after = json(&node.ok(&["status", "db", "--json"]));
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(
        before["processes"], after["processes"],
        "same postgres pids"
    );
}

#[test]
fn a_failed_build_leaves_the_serving_release_whole_for_its_next_start() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(76600, "");
    let _carts = node.install_cartridges(&["diy-cartridge"]);
    node.ok(&["create", "app", "--cartridge", "diy"]);
    // the build writes the page outside the deployment, the second one
    // before it fails
    let release = |page: &str, fail: bool| {
        tree(&[
            (
                ".gear/build",
                &format!(
                    "#!/bin/sh\nset -eu\nmkdir -p /gear/app-root/runtime/www\n\
                     printf '%s\\n' '{page}' > /gear/app-root/runtime/www/index.html\n{}",
                    if fail {
                        "echo 'tests failed' >&2\nexit 1\n"
                    } else {
                        ""
                    }
                ),
            ),
            (
                ".gear/start",
                "#!/bin/sh\nexec python3 -m http.server --bind 127.0.0.1 \
                 --directory /gear/app-root/runtime/www \"$PORT\"\n",
            ),
        ])
    };
    let (one, two) = (release("one", false), release("two", true));
    node.ok(&["deploy", "app", path(one.path())]);
    serves(&node, "app", "one", "after the first deploy");
    let out = node.gear(&["deploy", "app", path(two.path())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("deployment 1 keeps serving"),
        "{err}"
    );
    node.ok(&["restart", "app"]);
    serves(
        &node,
        "app",
        "one",
        "after a restart that followed a failed build",
    );
}
