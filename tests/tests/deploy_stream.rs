//! End to end: `gear deploy` and `gear cartridge install` read the sources
//! with the caller's own rights and stream them to the node, which never
//! opens the caller's paths. A real user the test creates (a member of the
//! node's operator group, so the socket lets it in) cannot deploy a root
//! file it may not read, a FIFO or a cartridge directory it cannot list; a
//! symlink to /etc/shadow is deployed as a link that the gear resolves in
//! its own root; an ordinary app is deployed and served.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, gear_bin, json, privileged, workspace_root};

const USER: &str = "gh-stream-1";
const GROUP: &str = "gh-stream-ops";
const UID: u32 = 74101;

/// The test user and the operator group it belongs to, removed on drop
/// (left over from a failed run, they are taken as they are).
struct TestUser;

impl TestUser {
    fn create() -> TestUser {
        let gid = UID.to_string();
        let status = Command::new("groupadd")
            .args(["-g", &gid, GROUP])
            .status()
            .expect("groupadd");
        // 9: the group exists already
        assert!(matches!(status.code(), Some(0 | 9)), "groupadd: {status}");
        let status = Command::new("useradd")
            .args(["-u", &gid, "-g", GROUP, "-N", "-M", "-d", "/nonexistent"])
            .args(["-s", "/bin/sh", USER])
            .status()
            .expect("useradd");
        assert!(matches!(status.code(), Some(0 | 9)), "useradd: {status}");
        TestUser
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(USER).status();
        let _ = Command::new("groupdel").arg(GROUP).status();
    }
}

/// Run `gear` as the test user against `node`.
fn as_user(node: &TestNode, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--init-groups",
        ])
        .arg(gear_bin())
        .args(args)
        .env("GEARHOST_SOCKET", &node.socket)
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run gear as the test user")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn user_ok(node: &TestNode, args: &[&str]) -> String {
    let out = as_user(node, args);
    assert!(
        out.status.success(),
        "gear {args:?} as {USER} failed ({}):\nstdout: {}\nstderr: {}\nnode log:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        node.log()
    );
    text(&out.stdout)
}

/// A copy of the diy example app, owned by the test user.
fn app_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("source dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!(
            "{}/.",
            workspace_root().join("examples/diy-shell").display()
        ))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(status.success());
    let status = Command::new("chown")
        .args(["-R", &format!("{UID}:{UID}")])
        .arg(dir.path())
        .status()
        .expect("chown");
    assert!(status.success());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().expect("utf-8 path")
}

fn deployments(node: &TestNode, gear: &str) -> Vec<serde_json::Value> {
    json(&node.ok(&["deployments", gear, "--json"]))["deployments"]
        .as_array()
        .expect("a list")
        .clone()
}

fn get_ok(node: &TestNode, label: &str, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = node.http_get(label, url);
        if code == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} from {label} answered {code}: {body}\nnode log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_user_deploys_only_what_it_can_read_itself() {
    if !privileged("the test creates a user, and the node namespaces, cgroups and uids") {
        return;
    }
    let _user = TestUser::create();
    let node = TestNode::start_with_top_level(72000, &format!("operator-group = \"{GROUP}\""), "");
    // the socket's directory is the test's own (0700): let the user reach it
    std::fs::set_permissions(node.dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod");

    // a cartridge directory the user cannot read is refused, and nothing installed
    let diy = cartridge_dir("diy-cartridge");
    std::fs::set_permissions(diy.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = as_user(&node, &["cartridge", "install", path(&diy)]);
    assert!(
        !out.status.success(),
        "installed an unreadable cartridge: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(path(&diy)) && err.contains("permission denied"),
        "{err}"
    );
    assert!(!node.ok(&["cartridge", "list"]).contains("diy"));
    // root reads it
    node.ok(&["cartridge", "install", path(&diy)]);

    let created = json(&user_ok(
        &node,
        &["create", "app", "--cartridge", "diy", "--json"],
    ));
    let uid = u32::try_from(created["uid"].as_u64().expect("uid")).expect("a uid");
    let gear_root = node
        .state_dir()
        .join("gears")
        .join(created["id"].as_str().expect("id"));

    // (a) a root file of mode 0600 in the user's tree: refused, named, nothing deployed
    let secret_tree = app_tree();
    let secret = secret_tree.path().join("secret.txt");
    std::fs::write(&secret, "root only\n").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = as_user(&node, &["deploy", "app", path(&secret_tree)]);
    assert!(
        !out.status.success(),
        "deployed a file the user cannot read"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("secret.txt") && err.contains("permission denied"),
        "{err}"
    );
    assert!(deployments(&node, "app").is_empty());
    let left: Vec<_> = std::fs::read_dir(gear_root.join("deployments"))
        .expect("deployments dir")
        .collect();
    assert!(left.is_empty(), "a refused deploy left {left:?}");

    // (c) a FIFO: refused by name
    let fifo_tree = app_tree();
    let fifo = fifo_tree.path().join("pipe");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let out = as_user(&node, &["deploy", "app", path(&fifo_tree)]);
    assert!(!out.status.success(), "deployed a FIFO");
    let err = text(&out.stderr);
    assert!(err.contains("pipe") && err.contains("a FIFO"), "{err}");
    assert!(deployments(&node, "app").is_empty());

    // (b) + (d): the app with a symlink to /etc/shadow is deployed and served,
    // the link kept as a link that does not reach the host's shadow file
    let tree = app_tree();
    std::os::unix::fs::symlink("/etc/shadow", tree.path().join("shadow")).expect("link");
    std::os::unix::fs::lchown(tree.path().join("shadow"), Some(UID), Some(UID)).expect("lchown");
    user_ok(&node, &["deploy", "app", path(&tree)]);
    assert!(get_ok(&node, "app-default", "/").contains("do-it-yourself gear"));
    let listed = deployments(&node, "app");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["source"], path(&tree));
    let deployed = gear_root.join("deployments/1");
    let link = std::fs::symlink_metadata(deployed.join("shadow")).expect("deployed link");
    assert!(link.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(deployed.join("shadow")).expect("target"),
        Path::new("/etc/shadow")
    );
    for entry in ["shadow", ".gear/start", "public", "."] {
        let meta = std::fs::symlink_metadata(deployed.join(entry)).expect("deployed entry");
        assert_eq!(meta.uid(), uid, "{entry} belongs to the gear's user");
    }
    let inside = user_ok(
        &node,
        &[
            "exec",
            "app",
            "--",
            "readlink",
            "/gear/app-root/repo/shadow",
        ],
    );
    assert_eq!(
        inside.trim(),
        "/etc/shadow",
        "the gear sees the link itself"
    );
    let host_shadow = std::fs::read_to_string("/etc/shadow").expect("the host's shadow");
    let out = as_user(
        &node,
        &["exec", "app", "--", "cat", "/gear/app-root/repo/shadow"],
    );
    let seen = text(&out.stdout);
    // the gear's root has no shadow file of its own: the link dangles there
    assert!(!out.status.success(), "cat printed {seen}");
    for line in host_shadow.lines().filter(|l| l.contains(':')) {
        assert!(
            !seen.contains(line),
            "the gear read the host's shadow file through the deployed link:\n{seen}"
        );
    }

    // as root, what root can read deploys as before, the 0600 file included
    node.ok(&["deploy", "app", path(&secret_tree)]);
    assert_eq!(
        std::fs::read_to_string(gear_root.join("deployments/2/secret.txt")).expect("deployed"),
        "root only\n"
    );
    assert!(get_ok(&node, "app-default", "/").contains("do-it-yourself gear"));
}
