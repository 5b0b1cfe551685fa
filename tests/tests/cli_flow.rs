//! End to end: the everyday details of the `gear` command through the real
//! binary and node — `deploy` from the current directory with `.gearignore`
//! and without `.git`, `list -N` sorted, names that are slips get a
//! suggestion, `env set` and `env unset` say what they did, `logs -f` says
//! when its gear goes away, and `destroy --yes`. Gear uids 77000-77199.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, json, privileged};

fn gear_in(node: &TestNode, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(gearhost_tests::gear_bin())
        .args(args)
        .current_dir(dir)
        .env("GEARHOST_SOCKET", &node.socket)
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(Stdio::null())
        .output()
        .expect("run gear")
}

#[test]
fn the_everyday_commands_do_what_people_expect() {
    if !privileged("the node creates gears") {
        return;
    }
    let node = TestNode::start(77000, "");
    let hello = cartridge_dir("hello-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        hello.path().to_str().expect("utf-8"),
    ]);

    // deploy without a directory sends the current one, leaving out .git and
    // what .gearignore names
    let src = tempfile::tempdir().expect("source");
    let root = src.path();
    std::fs::write(root.join("VERSION"), "one\n").expect("write");
    std::fs::create_dir_all(root.join(".git/objects")).expect("git");
    std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").expect("write");
    std::fs::create_dir_all(root.join("build")).expect("build");
    std::fs::write(root.join("build/out.bin"), "x").expect("write");
    std::fs::write(root.join("notes.tmp"), "x").expect("write");
    std::fs::write(root.join(".gearignore"), "# local only\n/build/\n*.tmp\n").expect("write");
    node.ok(&["create", "web", "--cartridge", "hello"]);
    let out = gear_in(&node, root, &["deploy", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = node.ok(&["exec", "web", "--", "ls", "-A", "/gear/app-root/repo"]);
    let names: Vec<&str> = listed.lines().collect();
    assert!(
        names.contains(&"VERSION") && names.contains(&".gearignore"),
        "{listed}"
    );
    for left_out in [".git", "build", "notes.tmp"] {
        assert!(!names.contains(&left_out), "{left_out} was sent: {listed}");
    }

    // list: filtered by namespace, sorted, aligned
    node.ok(&["create", "api", "--cartridge", "hello"]);
    node.ok(&["create", "zeta", "--cartridge", "hello", "-N", "other"]);
    let table = node.ok(&["list", "-N", "default"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[1].starts_with("api ") && rows[2].starts_with("web "),
        "{table}"
    );
    let col = |line: &str| line.find("default").expect("namespace column");
    assert_eq!(col(rows[1]), col(rows[2]), "aligned: {table}");
    assert_eq!(col(rows[1]), rows[0].find("NAMESPACE").expect("header"));
    let all = json(&node.ok(&["list", "--json"]));
    assert_eq!(all.as_array().map(Vec::len), Some(3));

    // a slip gets a suggestion
    let out = node.gear(&["status", "wbe"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did you mean web?"),
        "{out:?}"
    );
    let out = node.gear(&["create", "x", "--cartridge", "helo"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did you mean hello?"),
        "{out:?}"
    );

    // env set and unset say what they did, and what there was not
    let set = node.ok(&["env", "web", "set", "GREETING=hi", "DEBUG=1"]);
    assert!(set.contains("web: set GREETING, DEBUG"), "{set}");
    let out = node.gear(&["env", "web", "unset", "DEBUG", "NEVER_SET"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("web: unset DEBUG"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NEVER_SET was not set on web"),
        "{out:?}"
    );

    // logs -f says when its gear goes away, and ends
    let follower = Command::new(gearhost_tests::gear_bin())
        .args(["logs", "-f", "api", "--hooks"])
        .env("GEARHOST_SOCKET", &node.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gear logs -f");
    std::thread::sleep(Duration::from_millis(500));
    // without a terminal destroy asks nothing; --yes says so for scripts
    node.ok(&["destroy", "api", "--yes"]);
    let started = Instant::now();
    let out = follower.wait_with_output().expect("logs ended");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gear api in namespace default is gone"),
        "{out:?}"
    );

    node.ok(&["destroy", "web"]);
    node.ok(&["destroy", "zeta", "-N", "other"]);
}
