//! A gear whose root is an image: an overlay of two layers made here (busybox in the lower one,
//! the image's own `/etc/passwd` in the upper one), mounted with `overlay::mount_overlay`, given
//! as `SandboxSpec::root`. Checked from inside: the image's files and none of the host's, the
//! gear's uid with a passwd entry beside the image's own, writes landing in the upper layer,
//! `/etc` identity files read-only, `/proc` masked, `/dev` minimal, setuid ignored; and two
//! processes of the gear see one file system.
//!
//! Needs root, like the isolation suite.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gearhost_sandbox::overlay::{OverlayRoot, is_overlay_mount, mount_overlay, unmount};
use gearhost_sandbox::{Sandbox, SandboxSpec, Stdio};

const INIT: &str = env!("CARGO_BIN_EXE_gearhost-init");
const BUSYBOX: &str = "/bin/busybox";

fn privileged(test: &str) -> bool {
    if gearhost_sys::proc_status::is_root() && Path::new(BUSYBOX).exists() {
        return true;
    }
    assert!(
        std::env::var("GEARHOST_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test} needs root and {BUSYBOX} (GEARHOST_REQUIRE_PRIVILEGED=1)"
    );
    eprintln!("skipping {test}: needs root and {BUSYBOX}");
    false
}

/// Layers, upper layer and mount point in one temporary directory; unmounted when dropped.
struct ImageRoot {
    dir: tempfile::TempDir,
    target: PathBuf,
}

impl ImageRoot {
    fn new() -> ImageRoot {
        let dir = tempfile::Builder::new()
            .prefix("gearhost-image-")
            .tempdir()
            .expect("tempdir");
        let p = |name: &str| dir.path().join(name);
        // the lower layer: busybox and its applets, a setuid copy, a /tmp and /srv
        let base = p("base");
        for d in ["bin", "etc", "tmp", "srv", "sbin"] {
            std::fs::create_dir_all(base.join(d)).expect("mkdir");
        }
        std::fs::copy(BUSYBOX, base.join("bin/busybox")).expect("copy busybox");
        for applet in [
            "sh", "cat", "id", "whoami", "ls", "grep", "wc", "echo", "test", "awk", "pwd",
        ] {
            std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).expect("applet");
        }
        // /srv is writable by the root group, as images that run as any user make it
        std::fs::set_permissions(base.join("srv"), std::fs::Permissions::from_mode(0o775))
            .expect("chmod");
        std::fs::set_permissions(base.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        // the top layer: the image's users, one of them with the gear's uid
        let top = p("top");
        std::fs::create_dir_all(top.join("etc")).expect("mkdir");
        std::fs::write(
            top.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/srv:/bin/sh\nclash:x:52100:52100::/:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(top.join("etc/group"), "root:x:0:\nweb:x:1000:\n").expect("group");
        for d in ["upper", "work", "root"] {
            std::fs::create_dir_all(p(d)).expect("mkdir");
        }
        let target = p("root");
        mount_overlay(
            &OverlayRoot {
                lower: vec![top, base],
                upper: p("upper"),
                work: p("work"),
                context: None,
            },
            &target,
        )
        .expect("mount the overlay");
        ImageRoot { dir, target }
    }
}

impl Drop for ImageRoot {
    fn drop(&mut self) {
        let _ = unmount(&self.target);
    }
}

fn run(image: &ImageRoot, home: &Path, script: &str) -> (i32, String) {
    let mut spec = SandboxSpec::new(
        "imagegear",
        52_100,
        52_100,
        home,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    );
    spec.root = Some(image.target.clone());
    spec.cgroup.subtree = format!("gearhost-test-{}-image", std::process::id());
    spec.init_path = Some(PathBuf::from(INIT));
    spec.env = vec![("PATH".into(), "/bin:/sbin".into())];
    spec.cwd = Some(PathBuf::from("/srv"));
    spec.stdio.stdout = Stdio::Piped;
    spec.stdio.stderr = Stdio::Piped;
    spec.limits.pids = Some(32);
    let subtree = spec.cgroup.subtree.clone();
    let mut gear = Sandbox::spawn(spec).expect("the image gear starts");
    let mut out = String::new();
    gear.take_stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let mut err = String::new();
    gear.take_stderr()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    let status = gear.wait().expect("wait");
    gear.teardown().expect("teardown");
    gearhost_sandbox::cgroup::remove_subtree(&subtree).expect("remove subtree");
    (status.code().unwrap_or(-1), format!("{out}{err}"))
}

#[test]
fn an_image_root_is_the_gears_writable_and_confined_root() {
    if !privileged("an_image_root_is_the_gears_writable_and_confined_root") {
        return;
    }
    let image = ImageRoot::new();
    assert!(is_overlay_mount(&image.target));
    let home = image.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    std::os::unix::fs::chown(&home, Some(52_100), Some(52_100)).expect("chown");

    let script = r#"
        echo "uid=$(id -u) user=$(whoami)"
        echo "web=$(grep -c '^web:' /etc/passwd) clash=$(grep -c '^clash:' /etc/passwd)"
        echo "cwd=$(pwd)"
        test -e /etc/debian_version && echo "host-etc-visible"
        test -e /usr/bin/python3 && echo "host-usr-visible"
        echo made > /srv/made && echo "root-writable"
        echo x >> /etc/passwd 2>/dev/null && echo "passwd-writable"
        echo "keys=$(cat /proc/keys | wc -c) proc1=$(cat /proc/1/comm)"
        echo "devs=$(ls /dev | wc -l)"
        echo "home=$(echo hi > /gear/file && cat /gear/file)"
        echo "groups=$(id -G)"
        awk '$5 == "/" { print "root-options=" $6 }' /proc/self/mountinfo
        echo x > /etc/made 2>/dev/null || echo "etc-not-group-writable"
    "#;
    let (code, out) = run(&image, &home, script);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("uid=52100 user=imagegear"), "{out}");
    // the image keeps its users; the entry that would have named the gear's uid is replaced
    assert!(out.contains("web=1 clash=0"), "{out}");
    assert!(out.contains("cwd=/srv"), "{out}");
    assert!(!out.contains("host-etc-visible"), "{out}");
    assert!(!out.contains("host-usr-visible"), "{out}");
    assert!(out.contains("root-writable"), "{out}");
    assert!(!out.contains("passwd-writable"), "{out}");
    assert!(out.contains("keys=0 proc1=gearhost-init"), "{out}");
    assert!(out.contains("home=hi"), "{out}");
    // the root group, the primary group of its own; nosuid and nodev on the root
    assert!(out.contains("groups=52100 0"), "{out}");
    let options = out
        .lines()
        .find_map(|l| l.strip_prefix("root-options="))
        .expect("root line");
    assert!(
        options.contains("nosuid") && options.contains("nodev") && options.starts_with("rw"),
        "{options}"
    );
    assert!(out.contains("etc-not-group-writable"), "{out}");
    let devs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("devs="))
        .and_then(|n| n.trim().parse().ok())
        .expect("devs line");
    assert!(devs < 20, "a minimal /dev: {out}");
    // the write landed in the upper layer, not in the image's layers
    let upper = image.dir.path().join("upper/srv/made");
    assert_eq!(std::fs::read_to_string(&upper).expect("upper"), "made\n");
    assert!(!image.dir.path().join("base/srv/made").exists());
    // the image's passwd is untouched below the gear's read-only copy
    assert!(
        !std::fs::read_to_string(image.dir.path().join("top/etc/passwd"))
            .expect("passwd")
            .contains("imagegear")
    );

    // a second process of the gear sees the first one's writes (one mount, one cache)
    let (code, out) = run(&image, &home, "cat /srv/made");
    assert_eq!((code, out.as_str()), (0, "made\n"));
}
