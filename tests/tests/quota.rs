//! Per-gear disk quotas end to end, on a real btrfs file system the test makes
//! (a loop-mounted image with quotas enabled): a gear that writes past its
//! quota gets "Disk quota exceeded" while the node, its records and the other
//! gears keep working; `gear show` reports the use; a gear cannot step out of
//! its quota with a subvolume of its own; destroy removes the gear's qgroup.
//! And a node configured with `gears.disk` on a file system that cannot
//! enforce it refuses to start unless told to run without quotas.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, gear_bin, json, privileged, workspace_root};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 512 MiB btrfs file system with quotas on, in a sparse image on a loop
/// device, mounted under a temporary directory; unmounted and detached on
/// drop, however the test ended.
struct BtrfsImage {
    dir: tempfile::TempDir,
    device: String,
}

impl BtrfsImage {
    fn make() -> BtrfsImage {
        let dir = tempfile::Builder::new()
            .prefix("gearhost-quota-")
            .tempdir()
            .expect("dir");
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(512 << 20))
            .expect("sparse image");
        let device = run("losetup", &["--find", "--show", path_str(&image)])
            .trim()
            .to_string();
        let fs = BtrfsImage { dir, device };
        run("mkfs.btrfs", &["-q", &fs.device]);
        std::fs::create_dir(fs.mount()).expect("mount point");
        run("mount", &[&fs.device, path_str(&fs.mount())]);
        run("btrfs", &["quota", "enable", path_str(&fs.mount())]);
        fs
    }

    fn mount(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// `btrfs qgroup show --raw -r` of the file system.
    fn qgroups(&self) -> String {
        run(
            "btrfs",
            &["qgroup", "show", "--raw", "-r", path_str(&self.mount())],
        )
    }
}

impl Drop for BtrfsImage {
    fn drop(&mut self) {
        let mount = self.mount();
        let mut unmounted = false;
        for _ in 0..50 {
            let status = Command::new("umount")
                .arg(&mount)
                .stderr(Stdio::null())
                .status();
            if status.is_ok_and(|s| s.success()) || !is_mounted(&mount) {
                unmounted = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path_str(path)))
}

/// Whether the machine has what the test needs besides root (btrfs-progs);
/// with GEARHOST_REQUIRE_PRIVILEGED=1 a missing tool fails the test.
fn btrfs_tools() -> bool {
    let found = ["mkfs.btrfs", "btrfs", "losetup"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        let required = std::env::var("GEARHOST_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "btrfs-progs and losetup are needed (scripts/setup installs them)"
        );
        eprintln!("skipped: needs btrfs-progs (scripts/setup installs it)");
    }
    found
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn disk_of(node: &TestNode, gear: &str) -> (u64, u64) {
    let shown = json(&node.ok(&["show", gear, "--json"]));
    let used = shown["disk"]["used"].as_u64();
    let limit = shown["disk"]["limit"].as_u64();
    match (used, limit) {
        (Some(u), Some(l)) => (u, l),
        _ => panic!("no disk use in {shown}"),
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn a_full_gear_hurts_only_itself() {
    if !privileged("loop devices, mounts, and the node's gears") || !btrfs_tools() {
        return;
    }
    let fs = BtrfsImage::make();
    let state = fs.mount().join("state");
    // declared after the file system: dropped (stopped) before it is unmounted
    let mut node = TestNode::start_in(&state, 71000, "disk = \"96MiB\"\nmax-disk = \"128MiB\"\n");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);

    // the ceiling holds, and what is refused leaves nothing behind
    let out = node.gear(&["create", "big", "--cartridge", "diy", "--disk", "1GiB"]);
    assert!(!out.status.success());
    let text = stderr_of(&out);
    assert!(
        text.contains(
            "--disk 1 GiB is more than this node allows a gear (128 MiB, gears.max-disk)"
        ),
        "{text}"
    );
    let out = node.gear(&["create", "big", "--cartridge", "diy", "--disk", "lots"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("not a size"),
        "{}",
        stderr_of(&out)
    );
    assert!(!node.ok(&["list"]).contains("big"));

    // the node's default, and a gear's own quota
    let g0 = json(&node.ok(&["create", "g0", "--cartridge", "diy", "--json"]));
    assert_eq!(disk_of(&node, "g0").1, 96 * MIB);
    let started = Instant::now();
    let g1 = json(&node.ok(&[
        "create",
        "g1",
        "--cartridge",
        "diy",
        "--disk",
        "64MiB",
        "--json",
    ]));
    eprintln!("create with a quota: {:?}", started.elapsed());
    node.ok(&["create", "g2", "--cartridge", "diy", "--disk", "64MiB"]);
    let (used, limit) = disk_of(&node, "g1");
    assert_eq!(limit, 64 * MIB);
    assert!(used < MIB, "a new gear uses next to nothing: {used}");
    let shown = node.ok(&["show", "g1"]);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("disk") && l.contains("of 64.0 MiB")),
        "{shown}"
    );

    // both gears run their app (the node writes their logs in their quota)
    let app = workspace_root().join("tests/apps/ops-diy");
    node.ok(&["deploy", "g1", path_str(&app)]);
    node.ok(&["deploy", "g2", path_str(&app)]);

    // g1 writes past its quota: the kernel stops it
    let out = node.gear(&[
        "exec",
        "g1",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/gear/app-root/data/fill",
        "bs=1M",
        "count=100",
    ]);
    assert!(!out.status.success(), "the write past the quota succeeded");
    let text = stderr_of(&out);
    assert!(text.contains("Disk quota exceeded"), "{text}");
    // and the last blocks, a page at a time
    let out = node.gear(&[
        "exec",
        "g1",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/gear/app-root/data/rest",
        "bs=4k",
        "count=1000",
    ]);
    assert!(
        !out.status.success(),
        "the gear had a MiB left: {}",
        stderr_of(&out)
    );
    node.ok(&["exec", "g1", "--", "sync"]);
    let (used, limit) = disk_of(&node, "g1");
    assert!(
        used > 60 * MIB && used <= limit,
        "gear show reports the gear full: {used} of {limit}"
    );
    let shown = node.ok(&["show", "g1"]);
    assert!(shown.contains("of 64.0 MiB (9"), "{shown}");

    // its app still serves (reading needs no space); the lines its server
    // logs for each request cannot go into its full app.log and are dropped
    for _ in 0..3 {
        let (code, body) = node.http_get("g1-default", "/");
        assert_eq!((code, body.as_str()), (200, "v1\n"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log().contains("cannot write a gear log") {
        assert!(
            Instant::now() < deadline,
            "the app's lines went into its full log: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // its own deploy fails cleanly, and says why
    let out = node.gear(&["deploy", "g1", path_str(&app)]);
    assert!(!out.status.success(), "a deploy into a full gear succeeded");
    let text = stderr_of(&out);
    assert!(text.contains("Disk quota exceeded"), "{text}");
    let deployments = json(&node.ok(&["deployments", "g1", "--json"]));
    assert_eq!(deployments["active"], 1, "{deployments}");

    // the node records what happens to the full gear (its record is outside
    // the quota), and everything else keeps working
    node.ok(&["env", "g1", "set", "FULL=1"]);
    node.ok(&["env", "g2", "set", "A=1"]);
    node.ok(&[
        "exec",
        "g2",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/gear/app-root/data/fill",
        "bs=1M",
        "count=10",
    ]);
    node.ok(&["deploy", "g2", path_str(&app)]);
    let deployments = json(&node.ok(&["deployments", "g2", "--json"]));
    assert_eq!(deployments["active"], 2, "{deployments}");
    assert!(node.ok(&["env", "g2", "list"]).contains('A'));
    // a restart of the full gear (its start script cannot write its marker,
    // the node may not get its output into app.log) is the gear's own
    // trouble: the node answers throughout and stays up
    let _ = node.gear(&["restart", "g1"]);
    node.ok(&["list"]);
    node.ok(&["show", "g2"]);

    // a gear cannot make a subvolume of its own, which would sit outside its quota
    let out = node.gear(&[
        "exec",
        "g2",
        "--",
        "btrfs",
        "subvolume",
        "create",
        "/gear/app-root/data/escape",
    ]);
    assert!(!out.status.success(), "a gear made a subvolume");
    let text = stderr_of(&out) + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Operation not permitted"), "{text}");

    // freeing space lets the gear write again
    node.ok(&["exec", "g1", "--", "rm", "/gear/app-root/data/fill"]);
    node.ok(&["exec", "g1", "--", "sync"]);
    node.ok(&[
        "exec",
        "g1",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/gear/app-root/data/small",
        "bs=1M",
        "count=8",
    ]);

    // destroy takes the subvolumes and the gear's qgroup with it
    let uid = g1["uid"].as_u64().expect("uid");
    assert!(
        fs.qgroups().contains(&format!("1/{uid} ")),
        "{}",
        fs.qgroups()
    );
    let id = g1["id"].as_str().expect("id");
    let started = Instant::now();
    node.ok(&["destroy", "g1"]);
    eprintln!("destroy with a quota: {:?}", started.elapsed());
    assert!(!state.join("gears").join(id).exists());
    let deadline = Instant::now() + Duration::from_secs(15);
    while fs.qgroups().contains(&format!("1/{uid} ")) {
        assert!(
            Instant::now() < deadline,
            "the gear's qgroup outlived it: {}\n{}\nnode log:\n{}",
            fs.qgroups(),
            run(
                "sh",
                &["-c", &format!("grep . /sys/fs/btrfs/*/qgroups/1_{uid}/*")]
            ),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let g0_uid = g0["uid"].as_u64().expect("uid");
    assert!(fs.qgroups().contains(&format!("1/{g0_uid} ")));

    // the check row sees quotas on this state directory
    let config = node.dir.path().join("node.toml");
    let out = Command::new(gear_bin())
        .args(["node", "check", "--config", path_str(&config)])
        .output()
        .expect("node check");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("disk-quota"))
        .unwrap_or_else(|| panic!("no disk-quota row: {text}"));
    assert!(
        row.contains("enforced") && row.contains("btrfs qgroups"),
        "{row}"
    );

    // a node that comes back finds its gears' quotas where they were
    node.kill9_and_restart();
    let (_, limit) = disk_of(&node, "g2");
    assert_eq!(limit, 64 * MIB);
    node.ok(&["create", "g3", "--cartridge", "diy"]);
    assert_eq!(disk_of(&node, "g3").1, 96 * MIB);
    drop(node);
}

#[test]
fn a_node_that_cannot_enforce_its_default_quota_refuses_to_start() {
    if !privileged("the node needs root") {
        return;
    }
    // the temporary directory's file system is not btrfs here
    let dir = tempfile::Builder::new()
        .prefix("gearhost-noquota-")
        .tempdir()
        .expect("dir");
    if gearhost_sandbox::quota::detect(dir.path()).enforced() {
        eprintln!("skipped: the temporary directory is on btrfs with quotas");
        return;
    }
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "schema = 1\nstate-dir = \"{}\"\nsocket = \"{}\"\nfrontend = \"127.0.0.1:0\"\n\
             [gears]\nuid-min = 71200\nuid-max = 71399\ncgroup-subtree = \"gearhost-test-71200\"\ndisk = \"1GiB\"\n",
            dir.path().join("state").display(),
            dir.path().join("node.sock").display()
        ),
    )
    .expect("config");
    let mut child = Command::new(gear_bin())
        .args(["node", "run", "--config", path_str(&config)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node started with gears.disk it cannot enforce");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut text)
        .expect("stderr");
    assert_eq!(status.code(), Some(4), "{text}");
    for part in [
        "gears.disk is set (1 GiB a gear)",
        "cannot enforce disk quotas",
        "docs/operator-guide.md",
        "gears.allow-no-quota = true",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert!(!dir.path().join("node.sock").exists());

    // the operator accepts running without quotas: gears get none, and a
    // quota asked for is refused rather than ignored
    let node = TestNode::start(71200, "disk = \"1GiB\"\nallow-no-quota = true\n");
    assert!(
        node.log().contains("allow-no-quota is true"),
        "{}",
        node.log()
    );
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", path_str(diy.path())]);
    let started = Instant::now();
    node.ok(&["create", "plain", "--cartridge", "diy"]);
    eprintln!("create without a quota: {:?}", started.elapsed());
    let shown = json(&node.ok(&["show", "plain", "--json"]));
    assert!(shown.get("disk").is_none(), "{shown}");
    assert!(node.ok(&["show", "plain"]).contains("no quota"));
    let out = node.gear(&["create", "asks", "--cartridge", "diy", "--disk", "64MiB"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("create the gear without --disk"),
        "{}",
        stderr_of(&out)
    );
    // the check row says the same
    let config = node.dir.path().join("node.toml");
    let out = Command::new(gear_bin())
        .args(["node", "check", "--config", path_str(&config)])
        .output()
        .expect("node check");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("disk-quota"))
        .unwrap_or_else(|| panic!("no disk-quota row: {text}"));
    assert!(row.contains("MISSING") && row.contains("btrfs"), "{row}");
}

/// An image gear's root: what its app writes outside `/gear` lands in the
/// deployment's upper layer, inside the gear's quota, while the image's
/// layers (in the node's store) count against no gear.
#[test]
fn an_image_gears_root_writes_count_in_its_quota() {
    if !privileged("loop devices, mounts, and the node's gears") || !btrfs_tools() {
        return;
    }
    use gearhost_tests::images::{
        GZIP_LAYER, TAR_LAYER, busybox_site_layer, layout, push, site_config, site_page_layer,
    };
    let registry = gearhost_tests::registry::Registry::start();
    let src = tempfile::tempdir().expect("layout");
    layout(
        src.path(),
        "1",
        site_config(80),
        &[
            (GZIP_LAYER, busybox_site_layer()),
            (TAR_LAYER, site_page_layer("1")),
        ],
    );
    let reference = format!("{}/apps/site:1", registry.addr);
    push(src.path(), "1", &reference);
    let fs = BtrfsImage::make();
    let state = fs.mount().join("state");
    let node = TestNode::start_in(&state, 71400, "max-disk = \"128MiB\"\n");
    let image = cartridge_dir("image-cartridge");
    node.ok(&["cartridge", "install", path_str(image.path())]);
    node.ok(&[
        "create",
        "web",
        "--image",
        &reference,
        "--insecure",
        "--disk",
        "32MiB",
    ]);
    assert_eq!(
        node.http_get("web-default", "/"),
        (200, "version 1\n".into())
    );
    let (used, limit) = disk_of(&node, "web");
    assert_eq!(limit, 32 * MIB);
    assert!(
        used < 2 * MIB,
        "the image's layers are not the gear's: {used}"
    );
    // the root group may write /srv; 48 MiB there do not fit
    let out = node.gear(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "head -c 50331648 /dev/zero > /srv/big",
    ]);
    // (busybox says only "I/O error" for the EDQUOT)
    assert!(!out.status.success(), "48 MiB fitted in a 32 MiB quota");
    let (used, _) = disk_of(&node, "web");
    assert!(
        used > 24 * MIB && used <= 33 * MIB,
        "the upper layer counts, up to the limit: {used}"
    );
    // the node and the gear's app keep working
    assert_eq!(
        node.http_get("web-default", "/"),
        (200, "version 1\n".into())
    );
    node.ok(&["exec", "web", "--", "rm", "/srv/big"]);
    node.ok(&["destroy", "web"]);
    drop(node);
}
