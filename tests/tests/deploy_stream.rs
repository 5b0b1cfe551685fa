//! End to end: `gear deploy` and `gear cartridge install` read the sources
//! with the caller's own rights and stream them to the node, which never
//! opens the caller's paths. A real user the test creates (a member of the
//! node's operator group, so the socket lets it in) cannot deploy a root
//! file it may not read, a FIFO, a device node or a cartridge directory it
//! cannot list; a symlink to /etc/shadow is deployed as a link that the gear
//! resolves in its own root; an ordinary app is deployed and served. A
//! client that writes hostile archives straight to the socket gets each
//! refused by name, and nothing of them is kept.

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
        // an operator (through the operator group) may act in root's
        // namespace, where the test's own checks as root look
        .env("GEARHOST_NAMESPACE", "default")
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
    let node = TestNode::start_shared(72000, &format!("operator-group = \"{GROUP}\""), "");
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

    // a device node (a copy of /dev/null's): refused by name
    let device_tree = app_tree();
    let status = Command::new("mknod")
        .arg(device_tree.path().join("null"))
        .args(["c", "1", "3"])
        .status()
        .expect("mknod");
    assert!(status.success());
    let out = as_user(&node, &["deploy", "app", path(&device_tree)]);
    assert!(!out.status.success(), "deployed a device node");
    let err = text(&out.stderr);
    assert!(
        err.contains("null") && err.contains("a device node"),
        "{err}"
    );
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
    node.ok(&["destroy", "app"]);
}

/// Send a deploy request for gear `app` straight to the node's socket, as a
/// hostile client would, with `archive` written on the passed pipe (none
/// passed when `None`); returns the answer frame.
fn raw_deploy(node: &TestNode, archive: Option<Vec<u8>>) -> serde_json::Value {
    use std::io::{BufRead, Write};
    use std::os::fd::AsFd;
    let stream = std::os::unix::net::UnixStream::connect(&node.socket).expect("connect");
    let line = b"{\"api\":1,\"op\":\"deploy\",\"gear\":{\"name\":\"app\",\"namespace\":\"default\"},\"source\":\"hostile\"}\n";
    let writer = match archive {
        Some(bytes) => {
            let (read, mut write) = std::io::pipe().expect("pipe");
            gearhost_sys::fdpass::send_with_fds(&stream, line, &[read.as_fd()]).expect("send");
            drop(read);
            // the node may stop reading at the refused entry: a broken pipe is expected then
            Some(std::thread::spawn(move || {
                let _ = write.write_all(&bytes);
            }))
        }
        None => {
            gearhost_sys::fdpass::send_with_fds(&stream, line, &[]).expect("send");
            None
        }
    };
    let mut answer = None;
    for frame in std::io::BufReader::new(&stream).lines() {
        let frame = json(&frame.expect("a frame"));
        if frame.get("event").is_none() {
            answer = Some(frame);
            break;
        }
    }
    if let Some(w) = writer {
        w.join().expect("writer");
    }
    answer.expect("an answer")
}

fn header(kind: tar::EntryType, name: &str, link: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    // straight into the fields: the tar crate's setters refuse `..`
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

fn refused(answer: &serde_json::Value, entry: &str, rule: &str) {
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(entry) && message.contains(rule),
        "expected a refusal of {entry} ({rule}), got {answer}"
    );
}

#[test]
fn the_node_refuses_a_hostile_archive_and_keeps_nothing_of_it() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(72200, "max-deploy-size = \"1MiB\"");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path(&diy)]);
    let created = json(&node.ok(&["create", "app", "--cartridge", "diy", "--json"]));
    let gear_root = node
        .state_dir()
        .join("gears")
        .join(created["id"].as_str().expect("id"));
    let outside = tempfile::tempdir().expect("a directory outside");
    let outside_path = outside.path().to_str().expect("utf-8");

    // a link to a directory outside, then a file through it
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &header(tar::EntryType::Symlink, "a", outside_path, 0),
        std::io::empty(),
    )
    .expect("link");
    b.append(
        &header(tar::EntryType::Regular, "a/planted", "", 5),
        &b"owned"[..],
    )
    .expect("file");
    let answer = raw_deploy(&node, Some(b.into_inner().expect("archive")));
    refused(&answer, "a/planted", "through a symlink");
    assert!(!outside.path().join("planted").exists());

    // `..` out of the deployment
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &header(tar::EntryType::Regular, "../escaped", "", 5),
        &b"owned"[..],
    )
    .expect("file");
    let answer = raw_deploy(&node, Some(b.into_inner().expect("archive")));
    refused(&answer, "../escaped", "`..`");
    assert!(!gear_root.join("deployments/escaped").exists());

    // a hard link to /etc/shadow and a device node
    for (kind, name, link, rule) in [
        (tar::EntryType::Link, "shadow", "/etc/shadow", "hard links"),
        (tar::EntryType::Char, "mem", "", "device nodes"),
    ] {
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header(kind, name, link, 0), std::io::empty())
            .expect("entry");
        let answer = raw_deploy(&node, Some(b.into_inner().expect("archive")));
        refused(&answer, name, rule);
    }

    // over the node's gears.max-deploy-size
    let mut b = tar::Builder::new(Vec::new());
    let big = vec![0u8; 1100 << 10];
    b.append(
        &header(tar::EntryType::Regular, "big", "", big.len() as u64),
        &big[..],
    )
    .expect("file");
    let answer = raw_deploy(&node, Some(b.into_inner().expect("archive")));
    refused(&answer, "big", "gears.max-deploy-size");

    // a stream that stops without the archive's end marker
    let mut b = tar::Builder::new(Vec::new());
    b.append(&header(tar::EntryType::Regular, "half", "", 2), &b"ok"[..])
        .expect("file");
    let mut bytes = b.into_inner().expect("archive");
    bytes.truncate(1024);
    let answer = raw_deploy(&node, Some(bytes));
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("end marker"), "{answer}");

    // no descriptor at all
    let answer = raw_deploy(&node, None);
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("exactly one descriptor"), "{answer}");

    // none of it left a deployment, a record or a file behind
    assert!(deployments(&node, "app").is_empty());
    let left: Vec<_> = std::fs::read_dir(gear_root.join("deployments"))
        .expect("deployments dir")
        .collect();
    assert!(left.is_empty(), "refused deploys left {left:?}");
    assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0);
    node.ok(&["destroy", "app"]);
}
