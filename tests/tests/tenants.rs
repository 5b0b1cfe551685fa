//! End to end: a node many people share. Real Unix users the test makes
//! (`gh-alice`, `gh-bob`, and `gh-opal`, an operator through the operator
//! group who is not root) drive the real `gear` binary against a real node:
//! each user's gears are invisible to the other and every verb on them is
//! refused without naming them, team namespaces work for their members,
//! operators do what operators do, per-user limits hold, a gear's uid is
//! never a caller, and the audit log records who did what, refusals
//! included. Gear uids 73000-73199; test users 74001-74003.

use std::process::{Command, Output};

use gearhost_tests::{TestNode, cartridge_dir, json, privileged};

const ALICE: (&str, u32) = ("gh-alice", 74001);
const BOB: (&str, u32) = ("gh-bob", 74002);
const OPAL: (&str, u32) = ("gh-opal", 74003);
const OPERATORS: &str = "gh-operators";

/// The test's users and group, removed again when the test ends.
struct Users;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

impl Users {
    fn make() -> Users {
        Users::remove();
        let out = run("groupadd", &["--gid", "74000", OPERATORS]);
        assert!(out.status.success(), "groupadd: {out:?}");
        for (name, uid) in [ALICE, BOB, OPAL] {
            let uid = uid.to_string();
            let out = run(
                "useradd",
                &[
                    "--no-create-home",
                    "--uid",
                    &uid,
                    "--user-group",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ],
            );
            assert!(out.status.success(), "useradd {name}: {out:?}");
        }
        let out = run("usermod", &["--append", "--groups", OPERATORS, OPAL.0]);
        assert!(out.status.success(), "usermod: {out:?}");
        Users
    }

    fn remove() {
        for (name, _) in [ALICE, BOB, OPAL] {
            let _ = run("userdel", &[name]);
        }
        let _ = run("groupdel", &[OPERATORS]);
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        Users::remove();
    }
}

/// `gear ARGS` as `user`, with its groups, against `node`.
fn gear_as(node: &TestNode, user: (&str, u32), args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={}", user.1))
        .arg(format!("--regid={}", user.1))
        .arg("--init-groups")
        .arg(gearhost_tests::gear_bin())
        .args(args)
        .env("GEARHOST_SOCKET", &node.socket)
        .env_remove("GEARHOST_NAMESPACE")
        .env("HOME", "/")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setpriv gear")
}

fn ok_as(node: &TestNode, user: (&str, u32), args: &[&str]) -> String {
    let out = gear_as(node, user, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        user.0,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused_as(node: &TestNode, user: (&str, u32), args: &[&str]) -> String {
    let out = gear_as(node, user, args);
    assert!(!out.status.success(), "{} {args:?} was not refused", user.0);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A source directory `user` owns (a deploy reads it with the caller's rights).
fn source_of(user: (&str, u32), version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("source");
    std::fs::write(dir.path().join("VERSION"), version).expect("write");
    for p in [dir.path().to_path_buf(), dir.path().join("VERSION")] {
        std::os::unix::fs::chown(&p, Some(user.1), Some(user.1)).expect("chown");
    }
    dir
}

#[test]
fn tenants_see_and_touch_only_their_own_gears() {
    if !privileged("the test makes Unix users and the node creates gears") {
        return;
    }
    let _users = Users::make();
    let node = TestNode::start_shared(
        73000,
        &format!("operator-group = \"{OPERATORS}\""),
        "memory = \"256MiB\"\n[users]\nmax-gears = 2\n[users.per-user.gh-alice]\nmax-gears = 5\nmax-memory = \"600MiB\"\n",
    );
    let hello = cartridge_dir("hello-cartridge");
    let hello_path = hello.path().to_str().expect("utf-8");

    // cartridges are the operators'; gh-opal is one without being root
    let e = refused_as(&node, ALICE, &["cartridge", "install", hello_path]);
    assert!(
        e.contains("only operators install and remove cartridges"),
        "{e}"
    );
    ok_as(&node, OPAL, &["cartridge", "install", hello_path]);
    assert!(ok_as(&node, ALICE, &["cartridge", "list"]).contains("hello"));

    // alice's gear lives in her own namespace, named after her
    let me = json(&ok_as(&node, ALICE, &["whoami", "--json"]));
    assert_eq!(me["user"], ALICE.0);
    assert_eq!(me["operator"], false);
    let created = json(&ok_as(
        &node,
        ALICE,
        &["create", "web", "--cartridge", "hello", "--json"],
    ));
    assert_eq!(created["namespace"], ALICE.0);
    let src = source_of(ALICE, "alice\n");
    ok_as(
        &node,
        ALICE,
        &["deploy", "web", src.path().to_str().expect("utf-8")],
    );
    assert_eq!(node.http_get("web-gh-alice", "/").0, 200);

    // bob sees none of it, and every verb on it is refused without naming it
    let bobs = json(&ok_as(&node, BOB, &["list", "--json"]));
    assert_eq!(bobs.as_array().map(Vec::len), Some(0), "{bobs}");
    let ns = ALICE.0;
    for verb in [
        vec!["show", "web", "-N", ns],
        vec!["status", "web", "-N", ns],
        vec!["stop", "web", "-N", ns],
        vec!["start", "web", "-N", ns],
        vec!["restart", "web", "-N", ns],
        vec!["destroy", "web", "-N", ns],
        vec!["logs", "web", "-N", ns],
        vec!["env", "web", "-N", ns, "list"],
        vec!["env", "web", "-N", ns, "set", "A=1"],
        vec!["deployments", "web", "-N", ns],
        vec!["rollback", "web", "-N", ns],
        vec!["control", "web", "-N", ns, "status"],
        vec!["alias", "add", "web", "-N", ns, "bob.example.com"],
        vec!["idle", "web", "-N", ns],
        vec!["link", "web", "web", "-N", ns],
        vec!["exec", "web", "-N", ns, "--", "true"],
        vec!["create", "spy", "-N", ns, "--cartridge", "hello"],
        // a gear that does not exist gets the same answer as one that does
        vec!["show", "no-such-gear", "-N", ns],
    ] {
        let e = refused_as(&node, BOB, &verb);
        assert!(
            e.contains(&format!("gh-bob may not act in namespace {ns}"))
                && e.contains("your namespaces are gh-bob"),
            "{verb:?}: {e}"
        );
        assert!(
            !e.contains("web") && !e.contains("no-such-gear"),
            "{verb:?} names a gear: {e}"
        );
    }
    // nothing bob tried changed alice's gear
    let shown = json(&ok_as(&node, ALICE, &["show", "web", "--json"]));
    assert_eq!(shown["state"], "running");
    assert_eq!(node.http_get("web-gh-alice", "/").0, 200);

    // bob's own gears: a name alice uses is free in his namespace; his
    // limit is two gears
    ok_as(&node, BOB, &["create", "web", "--cartridge", "hello"]);
    ok_as(&node, BOB, &["create", "api", "--cartridge", "hello"]);
    let e = refused_as(&node, BOB, &["create", "third", "--cartridge", "hello"]);
    assert!(
        e.contains("owns 2 gear(s)") && e.contains("users.max-gears"),
        "{e}"
    );
    assert_eq!(
        json(&ok_as(&node, BOB, &["list", "--json"]))
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // a team: the operator makes it, both members act in it
    let e = refused_as(&node, ALICE, &["namespace", "create", "shop"]);
    assert!(e.contains("only operators"), "{e}");
    ok_as(
        &node,
        OPAL,
        &[
            "namespace",
            "create",
            "shop",
            "--member",
            ALICE.0,
            "--member",
            BOB.0,
        ],
    );
    ok_as(
        &node,
        ALICE,
        &["create", "front", "-N", "shop", "--cartridge", "hello"],
    );
    // alice's gears, wherever they live, count against her memory limit:
    // two of 256 MiB fit in 600 MiB, a third does not
    let e = refused_as(&node, ALICE, &["create", "more", "--cartridge", "hello"]);
    assert!(e.contains("users.max-memory") && e.contains("768"), "{e}");
    ok_as(&node, BOB, &["status", "front", "-N", "shop"]);
    ok_as(
        &node,
        BOB,
        &["env", "front", "-N", "shop", "set", "TEAM=shop"],
    );
    let listed = ok_as(&node, BOB, &["namespace", "list"]);
    assert!(
        listed.contains("shop") && listed.contains(ALICE.0),
        "{listed}"
    );
    // out of the team, out of its gears
    ok_as(&node, OPAL, &["namespace", "remove-member", "shop", BOB.0]);
    let e = refused_as(&node, BOB, &["status", "front", "-N", "shop"]);
    assert!(e.contains("may not act in namespace shop"), "{e}");
    // a team with gears is not deleted
    let e = refused_as(&node, OPAL, &["namespace", "delete", "shop"]);
    assert!(e.contains("destroy them first"), "{e}");

    // operators act everywhere and see everything
    let all = json(&ok_as(&node, OPAL, &["list", "--json"]));
    assert_eq!(all.as_array().map(Vec::len), Some(4), "{all}");
    ok_as(&node, OPAL, &["stop", "web", "-N", ALICE.0]);
    ok_as(&node, OPAL, &["start", "web", "-N", ALICE.0]);

    // a uid of the gears' range is never a caller
    let gear_uid = created["uid"].as_u64().expect("uid") as u32;
    let out = Command::new("setpriv")
        .args([format!("--reuid={gear_uid}"), format!("--regid={gear_uid}")])
        .arg("--clear-groups")
        .arg(gearhost_tests::gear_bin())
        .arg("list")
        .env("GEARHOST_SOCKET", &node.socket)
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to this node's gears"),
        "{out:?}"
    );

    // the audit log: who did what, refusals included; only operators read it
    let e = refused_as(&node, ALICE, &["audit"]);
    assert!(e.contains("only operators"), "{e}");
    let audit: Vec<serde_json::Value> = ok_as(&node, OPAL, &["audit", "-n", "500", "--json"])
        .lines()
        .map(json)
        .collect();
    let found = |user: &str, verb: &str, outcome: &str, namespace: &str| {
        audit.iter().any(|e| {
            e["user"] == user
                && e["verb"] == verb
                && e["outcome"] == outcome
                && e["namespace"] == namespace
        })
    };
    assert!(found(ALICE.0, "create", "ok", ALICE.0), "{audit:?}");
    assert!(found(ALICE.0, "deploy", "ok", ALICE.0), "{audit:?}");
    assert!(found(BOB.0, "destroy", "refused", ALICE.0), "{audit:?}");
    assert!(
        found(BOB.0, "create", "refused", BOB.0),
        "the limit: {audit:?}"
    );
    assert!(
        audit.iter().any(|e| e["user"] == OPAL.0
            && e["verb"] == "namespace-create"
            && e["outcome"] == "ok"),
        "{audit:?}"
    );
    assert!(
        !audit
            .iter()
            .any(|e| e["verb"] == "list" || e["verb"] == "show" && e["outcome"] == "ok"),
        "reads that change nothing are not recorded: {audit:?}"
    );
    assert!(
        audit
            .iter()
            .all(|e| e["uid"].is_u64() && e["time"].is_string())
    );

    for (gear, namespace) in [
        ("web", ALICE.0),
        ("web", BOB.0),
        ("api", BOB.0),
        ("front", "shop"),
    ] {
        node.ok(&["destroy", gear, "-N", namespace]);
    }
    ok_as(&node, OPAL, &["namespace", "delete", "shop"]);
}
