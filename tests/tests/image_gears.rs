//! Image gears through the real `gear` and node, against a real registry on
//! loopback (Debian's `docker-registry`), with images made here: busybox's
//! `httpd` in a gzip layer, and a plain tar layer on top with a whiteout.
//!
//! - `gear create web --image REF` (an httpd on port 80, as images have it)
//!   answers through the frontend with the top layer's page, the whited-out file gone, its CGI run as the gear's uid
//!   (the image asks for root) with the image's environment;
//! - `gear exec` runs in the image's root, with a passwd entry for the uid;
//! - a second gear of the image shares its layers on disk;
//! - `gear deploy web REF2` rolls to another tag, `gear rollback` back; the
//!   gear is frozen, then stopped, and a request wakes it from both;
//! - a wrong digest, an image without a command and a hostile layer are
//!   refused, leaving no gear, no deployment and nothing outside the store;
//! - destroying the gears unmounts their roots, and the images go with them.
//!
//! Gear uids 87900-87999.

use std::path::Path;
use std::time::{Duration, Instant};

use gearhost_tests::images::{
    GZIP_LAYER, TAR_LAYER, busybox_site_layer, layout, push, site_config, site_page_layer, tar_of,
};
use gearhost_tests::registry::Registry;
use gearhost_tests::{TestNode, cartridge_dir, json, privileged};
use tar::EntryType::Regular;

/// Makes and pushes image `repo:tag` with `layers`; returns its reference.
fn image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    config: serde_json::Value,
    layers: &[(&str, Vec<u8>)],
) -> String {
    let dir = tempfile::tempdir().expect("layout");
    layout(dir.path(), tag, config, layers);
    let reference = format!("{}/{repo}:{tag}", registry.addr);
    push(dir.path(), tag, &reference);
    reference
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Overlays mounted below `dir`, as the node's mount table lists them.
fn overlays_below(dir: &Path) -> usize {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = dir.to_string_lossy().into_owned();
    table
        .lines()
        .filter(|l| l.contains(" - overlay ") && l.contains(&dir))
        .count()
}

#[test]
fn images_run_as_gears_deploy_roll_back_idle_and_go() {
    if !privileged("the node mounts overlays and runs gears") {
        return;
    }
    let registry = Registry::start();
    let base = busybox_site_layer();
    let v1 = image(
        &registry,
        "apps/site",
        "1.0",
        site_config(80),
        &[
            (GZIP_LAYER, base.clone()),
            (TAR_LAYER, site_page_layer("1")),
        ],
    );
    let v2 = image(
        &registry,
        "apps/site",
        "2.0",
        site_config(80),
        &[
            (GZIP_LAYER, base.clone()),
            (TAR_LAYER, site_page_layer("2")),
        ],
    );
    let node = TestNode::start(87900, "");
    let cartridge = cartridge_dir("image-cartridge");
    node.ok(&["cartridge", "install", &cartridge.path().to_string_lossy()]);
    let state = node.state_dir();

    // a gear of the image, answering through the frontend
    let made = node.ok(&["create", "web", "--image", &v1, "--insecure"]);
    assert!(made.contains("created gear web running"), "{made}");
    let shown = json(&node.ok(&["show", "web", "--json"]));
    let uid = shown["uid"].as_u64().expect("uid");
    assert_eq!(
        node.http_get("web-default", "/"),
        (200, "version 1\n".into())
    );
    // the top layer's whiteout hides the base layer's file
    assert_eq!(node.http_get("web-default", "/secret.html").0, 404);
    // the image asks for root; its CGI runs as the gear's uid, with the
    // image's environment and PATH, and may write the root-group's /srv
    let (code, who) = node.http_get("web-default", "/cgi-bin/who");
    assert_eq!(code, 200, "{who}");
    assert!(
        who.contains(&format!("uid={uid} greeting=hello path=/bin")),
        "{who}"
    );
    assert!(who.contains("srv-writable"), "{who}");
    // the write is in the deployment's upper layer, not in a shared layer
    let layers = state.join("images/layers");
    for layer in std::fs::read_dir(&layers).expect("layers").flatten() {
        assert!(!layer.path().join("srv/made").exists());
    }
    // `gear exec` runs in the image's root, the uid named in its passwd
    let out = node.ok(&["exec", "web", "--", "cat", "/etc/passwd"]);
    assert!(out.contains("www:x:33:33"), "{out}");
    assert!(out.contains(&format!(":x:{uid}:{uid}:")), "{out}");
    assert!(
        !node
            .ok(&["exec", "web", "--", "ls", "/"])
            .contains("debian")
    );
    let status = node.ok(&["control", "web", "status"]);
    assert!(
        status.contains(&v1) && status.contains("/bin/httpd -f -p 80 -h /www"),
        "{status}"
    );

    // a second gear of the image shares its layers on disk
    node.ok(&["create", "web2", "--image", &v1, "--insecure"]);
    assert_eq!(
        node.http_get("web2-default", "/"),
        (200, "version 1\n".into())
    );
    let stored = std::fs::read_dir(&layers).expect("layers").count();
    assert_eq!(stored, 2, "two gears, one copy of each layer");
    let images = json(&node.ok(&["image", "list", "--json"]));
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");

    // another tag as a new deployment (the base layer shared), then back
    let deployed = node.ok(&["deploy", "web", &v2, "--insecure"]);
    assert!(deployed.contains("deployment"), "{deployed}");
    assert_eq!(
        node.http_get("web-default", "/"),
        (200, "version 2\n".into())
    );
    assert_eq!(std::fs::read_dir(&layers).expect("layers").count(), 3);
    let list = json(&node.ok(&["deployments", "web", "--json"]));
    let deployments = list["deployments"].as_array().expect("deployments");
    assert_eq!(deployments.len(), 2, "{list}");
    assert!(
        deployments.iter().all(|d| d["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("sha256:"))),
        "{list}"
    );
    assert_eq!(deployments[1]["port"], 80, "{list}");
    node.ok(&["rollback", "web"]);
    assert_eq!(
        node.http_get("web-default", "/"),
        (200, "version 1\n".into())
    );

    // frozen, then stopped: a request wakes it from either
    let state_of = || json(&node.ok(&["show", "web", "--json"]))["state"].clone();
    for (idle, state) in [
        (&["idle", "web"][..], "frozen"),
        (&["idle", "--stop", "web"], "idle"),
    ] {
        node.ok(idle);
        assert_eq!(state_of(), state);
        assert_eq!(
            node.http_get("web-default", "/"),
            (200, "version 1\n".into())
        );
        assert_eq!(state_of(), "running");
    }

    // refused: a wrong digest, an image without a command, a hostile layer
    let wrong = format!("{}/apps/site@sha256:{}", registry.addr, "0".repeat(64));
    let out = node.gear(&["deploy", "web", &wrong, "--insecure"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("cannot pull") && e.contains("nothing was deployed"),
        "{e}"
    );
    let after = json(&node.ok(&["deployments", "web", "--json"]));
    assert_eq!(
        after["deployments"].as_array().map(Vec::len),
        Some(2),
        "{after}"
    );
    let idle_image = image(
        &registry,
        "apps/quiet",
        "1",
        serde_json::json!({"Env": ["PATH=/bin"]}),
        &[(GZIP_LAYER, base.clone())],
    );
    let out = node.gear(&["create", "quiet", "--image", &idle_image, "--insecure"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("says nothing to run"), "{e}");
    let evil = image(
        &registry,
        "apps/evil",
        "1",
        site_config(80),
        &[(
            TAR_LAYER,
            tar_of(&[("../../../escape", Regular, 0o644, "", b"x")]),
        )],
    );
    let out = node.gear(&["create", "evil", "--image", &evil, "--insecure"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("refused"), "{e}");
    assert!(!state.join("escape").exists() && !Path::new("/escape").exists());
    let gears = json(&node.ok(&["list", "--json"]));
    let names: Vec<&str> = gears
        .as_array()
        .expect("gears")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["web", "web2"], "refused creates leave no gear");

    // destroyed: roots unmounted, and the images no gear runs collected
    assert!(overlays_below(&state.join("roots")) >= 2);
    node.ok(&["destroy", "web2"]);
    node.ok(&["destroy", "web"]);
    assert_eq!(overlays_below(&state.join("roots")), 0);
    node.ok(&["image", "prune"]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_dir(&layers).map(|d| d.count()).unwrap_or(0) == 0
        }),
        "layers left"
    );
}
