//! End to end: `gear snapshot` and `gear restore` on one node, for every
//! cartridge — the real `gear` binary, a real node, the real cartridges. A
//! gear is deployed, given data and a variable, snapshotted, destroyed and
//! brought back from the file under its name: its app answers, its data,
//! variable, uid and MCS level are back. A PostgreSQL gear keeps the rows
//! written into its running server. Hostile archives (`..`, a symlink out,
//! an oversized member, another format version) are refused, and leave the
//! gear as it was. Gear uids 88600-88799.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, apps, images::gzip, json, privileged};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// GET `/` until it answers 200, at most 30 s.
fn page(node: &TestNode, label: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = node.http_get(label, "/");
        if code == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET / from {label} answered {code}: {body}\nnode log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `sh -c script` prints inside `gear`.
fn in_gear(node: &TestNode, gear: &str, script: &str) -> String {
    node.ok(&["exec", gear, "--", "sh", "-c", script])
}

/// (uid, MCS level) of `gear`.
fn identity(node: &TestNode, gear: &str) -> (u64, String) {
    let shown = json(&node.ok(&["show", gear, "--json"]));
    let summary = if shown["gear"].is_object() {
        &shown["gear"]
    } else {
        &shown
    };
    (
        summary["uid"].as_u64().expect("uid"),
        summary["mcs-level"]
            .as_str()
            .or(summary["mcs_level"].as_str())
            .expect("mcs level")
            .to_string(),
    )
}

fn effective_env(node: &TestNode, gear: &str) -> serde_json::Value {
    json(&node.ok(&["env", gear, "list", "--json"]))["effective"].clone()
}

/// Snapshot `gear` into `dir`, checking what the command says; the file.
fn snapshot(node: &TestNode, gear: &str, dir: &Path) -> PathBuf {
    snapshot_saying(node, gear, dir).0
}

/// [`snapshot`], with what the command said on standard error.
fn snapshot_saying(node: &TestNode, gear: &str, dir: &Path) -> (PathBuf, String) {
    let file = dir.join(format!("{gear}.tar.gz"));
    let out = node.gear(&["snapshot", gear, file.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        node.log()
    );
    let said = text(&out.stdout);
    assert!(
        said.starts_with(&format!("wrote {}", file.display())),
        "{said}"
    );
    let size = std::fs::metadata(&file).expect("the archive").len();
    assert!(size > 0);
    // a gzip-compressed tar whose first entry describes the gear
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&file)
        .output()
        .expect("tar");
    assert!(listing.status.success(), "{}", text(&listing.stderr));
    let listing = text(&listing.stdout);
    assert_eq!(listing.lines().next(), Some("snapshot.json"), "{listing}");
    assert!(listing.contains("home/app-root/data/"), "{listing}");
    (file, text(&out.stderr))
}

/// A web gear of `cartridge`: two releases deployed, data and a variable
/// set, snapshotted, destroyed, restored from the file and started.
fn round_trip(node: &TestNode, cartridge: &str, gear: &str, dir: &Path) {
    let [(one, _), (two, page_two)] = apps::releases(cartridge);
    node.ok(&["create", gear, "--cartridge", cartridge]);
    node.ok(&["deploy", gear, one.path().to_str().expect("utf-8")]);
    node.ok(&["deploy", gear, two.path().to_str().expect("utf-8")]);
    let label = format!("{gear}-default");
    assert_eq!(page(node, &label).trim(), page_two);
    in_gear(
        node,
        gear,
        &format!(
            "set -e; cd /gear/app-root/data; mkdir -p notes/deep; echo kept-{gear} > notes/deep/a.txt; \
             ln -s notes/deep/a.txt link; printf 'x%.0s' $(seq 1 3000) > big.txt"
        ),
    );
    node.ok(&["env", gear, "set", &format!("GREETING=hello-{gear}")]);
    let before = identity(node, gear);
    let file = snapshot(node, gear, dir);

    node.ok(&["destroy", gear, "--yes"]);
    let said = node.ok(&["restore", gear, file.to_str().expect("utf-8")]);
    assert!(said.starts_with(&format!("created gear {gear} ")), "{said}");
    assert!(said.contains("kept"), "{said}");
    assert_eq!(identity(node, gear), before, "uid and MCS level kept");
    let deployments = json(&node.ok(&["deployments", gear, "--json"]));
    assert_eq!(deployments["active"], 2, "{deployments}");
    assert_eq!(
        deployments["deployments"].as_array().map(Vec::len),
        Some(2),
        "{deployments}"
    );
    node.ok(&["start", gear]);
    assert_eq!(page(node, &label).trim(), page_two);
    assert_eq!(
        in_gear(
            node,
            gear,
            "cat /gear/app-root/data/link; wc -c < /gear/app-root/data/big.txt; \
             readlink /gear/app-root/data/link; echo \"$GREETING\""
        ),
        format!("kept-{gear}\n3000\nnotes/deep/a.txt\nhello-{gear}\n")
    );
    assert_eq!(
        effective_env(node, gear)["GREETING"],
        format!("hello-{gear}")
    );
    // the kept earlier deployment came along: a rollback serves it
    node.ok(&["rollback", gear]);
    assert_ne!(page(node, &label).trim(), page_two);
}

#[test]
fn every_cartridge_comes_back_from_its_snapshot() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start_with_uids(88600, 100, "");
    let _carts = node.install_cartridges(&[
        "python-cartridge",
        "nodejs-cartridge",
        "static-cartridge",
        "diy-cartridge",
        "postgresql-cartridge",
    ]);
    let files = tempfile::tempdir().expect("files");
    let began = Instant::now();
    for (cartridge, gear) in [
        ("static", "site"),
        ("python", "py"),
        ("nodejs", "nd"),
        ("diy", "handmade"),
    ] {
        let at = Instant::now();
        round_trip(&node, cartridge, gear, files.path());
        eprintln!("{cartridge}: round trip in {:?}", at.elapsed());
    }

    // a running gear restored in place: its data goes back to the snapshot's,
    // and it runs again on the deployment the snapshot had active
    let file = files.path().join("py.tar.gz");
    std::fs::remove_file(&file).expect("remove");
    let file = snapshot(&node, "py", files.path());
    in_gear(
        &node,
        "py",
        "echo changed > /gear/app-root/data/notes/deep/a.txt; touch /gear/app-root/data/new",
    );
    node.ok(&["env", "py", "set", "GREETING=changed"]);
    let said = node.ok(&["restore", "py", file.to_str().expect("utf-8")]);
    assert!(said.starts_with("restored gear py "), "{said}");
    let status = json(&node.ok(&["status", "py", "--json"]));
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(
        in_gear(
            &node,
            "py",
            "cat /gear/app-root/data/notes/deep/a.txt; ls /gear/app-root/data; ls -a /gear/app-root"
        ),
        "kept-py\nbig.txt\nlink\nnotes\n.\n..\ndata\nlogs\nrepo\nruntime\n",
        "nothing staged is left beside the data"
    );
    assert_eq!(effective_env(&node, "py")["GREETING"], "hello-py");
    page(&node, "py-default");
    eprintln!("web cartridges: {:?}", began.elapsed());

    // PostgreSQL: rows written into the running server come back
    let at = Instant::now();
    node.ok(&["create", "db", "--cartridge", "postgresql"]);
    node.ok(&["start", "db"]);
    let psql = |sql: &str| {
        in_gear(
            &node,
            "db",
            &format!("exec psql -X -At -v ON_ERROR_STOP=1 -c \"{sql}\""),
        )
    };
    psql("create table notes (id int primary key, body text)");
    psql("insert into notes select g, 'row ' || g from generate_series(1, 500) g");
    let password = effective_env(&node, "db")["PGPASSWORD"].clone();
    let before = identity(&node, "db");
    let (file, said) = snapshot_saying(&node, "db", files.path());
    assert!(
        said.contains("pre-snapshot: dumped every database"),
        "{said}"
    );
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&file)
        .output()
        .expect("tar");
    assert!(
        text(&listing.stdout).contains("home/app-root/data/postgresql-snapshot.sql"),
        "the archive holds the dump"
    );
    assert!(
        !in_gear(&node, "db", "ls /gear/app-root/data").contains("postgresql-snapshot.sql"),
        "post-snapshot removed the dump"
    );
    // more rows after the snapshot are not in it
    psql("insert into notes values (501, 'after')");
    node.ok(&["destroy", "db", "--yes"]);
    let out = node.gear(&["restore", "db", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("kept"), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("post-restore: loaded the snapshot's dump"),
        "the dump was loaded: {}",
        text(&out.stderr)
    );
    assert_eq!(identity(&node, "db"), before);
    node.ok(&["start", "db"]);
    assert_eq!(
        psql(
            "select count(*) || ' ' || max(id) || ' ' || (select body from notes where id = 7) from notes"
        ),
        "500 500 row 7\n"
    );
    assert_eq!(effective_env(&node, "db")["PGPASSWORD"], password);
    assert!(
        !in_gear(&node, "db", "ls /gear/app-root/data").contains("postgresql-snapshot.sql"),
        "post-restore removed the dump"
    );
    // a stopped server is carried as its files, and comes back too
    node.ok(&["stop", "db"]);
    std::fs::remove_file(&file).expect("remove");
    let file = snapshot(&node, "db", files.path());
    node.ok(&["destroy", "db", "--yes"]);
    node.ok(&["restore", "db", file.to_str().expect("utf-8")]);
    node.ok(&["start", "db"]);
    assert_eq!(psql("select count(*) from notes"), "500\n");
    eprintln!("postgresql: {:?}", at.elapsed());
}

/// The raw tar entry `name` (written as it is, `..` and all).
fn entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str, body: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    let field = &mut h.as_old_mut().name;
    field[..name.len()].copy_from_slice(name.as_bytes());
    let l = &mut h.as_old_mut().linkname;
    l[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    b.append(&h, body).expect("append");
}

/// An archive that starts with `meta` as `snapshot.json`, then what `rest`
/// adds; gzip-compressed unless `raw_tail` is given, which is appended to
/// the tar stream as it is before compression.
fn forged(
    meta: &[u8],
    rest: impl FnOnce(&mut tar::Builder<Vec<u8>>),
    raw_tail: Option<Vec<u8>>,
) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "snapshot.json", tar::EntryType::Regular, "", meta);
    rest(&mut b);
    let mut bytes = match raw_tail {
        Some(_) => b.get_ref().clone(),
        None => b.into_inner().expect("tar"),
    };
    if let Some(tail) = raw_tail {
        bytes.extend_from_slice(&tail);
    }
    gzip(&bytes)
}

#[test]
fn hostile_archives_are_refused_and_change_nothing() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start_with_uids(88700, 50, "");
    let _carts = node.install_cartridges(&["static-cartridge"]);
    let files = tempfile::tempdir().expect("files");
    let [(site, page_one), _] = apps::releases("static");
    node.ok(&["create", "site", "--cartridge", "static"]);
    node.ok(&["deploy", "site", site.path().to_str().expect("utf-8")]);
    in_gear(&node, "site", "echo original > /gear/app-root/data/state");
    let good = snapshot(&node, "site", files.path());
    // what a restore the node did not finish would have left: the next one clears it
    in_gear(&node, "site", "mkdir -p /gear/app-root/.restore-left/x");
    let meta = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&good)
        .arg("snapshot.json")
        .output()
        .expect("tar")
        .stdout;
    let outside = tempfile::tempdir().expect("outside");
    let target = outside.path().to_str().expect("utf-8").to_string();
    let mut future: serde_json::Value = serde_json::from_slice(&meta).expect("json");
    future["format"] = 99.into();
    let future = serde_json::to_vec(&future).expect("json");
    // a header that claims a terabyte, with a few bytes after it
    let mut huge = tar::Header::new_gnu();
    huge.set_entry_type(tar::EntryType::Regular);
    huge.set_size(1 << 40);
    huge.set_mode(0o644);
    huge.set_path("home/app-root/data/huge").expect("path");
    huge.set_cksum();
    let mut huge_tail = huge.as_bytes().to_vec();
    huge_tail.extend_from_slice(&[7; 8192]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            forged(
                &meta,
                |b| {
                    entry(
                        b,
                        "home/app-root/data/../../../escaped",
                        tar::EntryType::Regular,
                        "",
                        b"x",
                    );
                },
                None,
            ),
            "may not contain `..`",
        ),
        (
            "symlink-out",
            forged(
                &meta,
                |b| {
                    entry(
                        b,
                        "home/app-root/data/out",
                        tar::EntryType::Symlink,
                        &target,
                        b"",
                    );
                    entry(
                        b,
                        "home/app-root/data/out/planted",
                        tar::EntryType::Regular,
                        "",
                        b"x",
                    );
                },
                None,
            ),
            "through a symlink",
        ),
        (
            "oversized",
            forged(&meta, |_| {}, Some(huge_tail)),
            "more than a restore takes",
        ),
        (
            "future-format",
            forged(&future, |_| {}, None),
            "is of format 99",
        ),
        (
            "stray-entry",
            forged(
                &meta,
                |b| entry(b, "etc/passwd", tar::EntryType::Regular, "", b"x"),
                None,
            ),
            "a snapshot holds only",
        ),
        (
            "no-description",
            gzip(&gearhost_tests::images::tar_of(&[(
                "home/app-root/data/x",
                tar::EntryType::Regular,
                0o644,
                "",
                b"x",
            )])),
            "starts with snapshot.json",
        ),
    ];
    let state = node.state_dir();
    for (what, bytes, says) in cases {
        let file = files.path().join(format!("{what}.tar.gz"));
        std::fs::write(&file, bytes).expect("write");
        for gear in ["site", "fresh"] {
            let out = node.gear(&["restore", gear, file.to_str().expect("utf-8")]);
            assert!(!out.status.success(), "{what} into {gear} was taken");
            let err = text(&out.stderr);
            assert!(err.contains(says), "{what} into {gear}: {err}");
            assert!(err.contains("nothing was restored"), "{what}: {err}");
        }
        // nothing changed: no new gear, the old one serves its data
        assert!(!node.gear(&["show", "fresh"]).status.success(), "{what}");
        assert_eq!(page(&node, "site-default").trim(), page_one, "{what}");
        assert_eq!(
            in_gear(
                &node,
                "site",
                "cat /gear/app-root/data/state; ls -a /gear/app-root/data"
            ),
            "original\n.\n..\nstate\n",
            "{what}"
        );
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("list").count(),
            0,
            "{what}: written outside"
        );
    }
    // no staging directory is left in the gear's directory
    let gears: Vec<PathBuf> = std::fs::read_dir(state.join("gears"))
        .expect("gears")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(gears.len(), 1, "{gears:?}");
    let deployments: Vec<String> = std::fs::read_dir(gears[0].join("deployments"))
        .expect("deployments")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(deployments, ["1"], "staging left behind");
    let app_root: Vec<String> = std::fs::read_dir(gears[0].join("home/app-root"))
        .expect("app-root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(app_root.is_empty(), "staging left behind: {app_root:?}");
    // and the good archive still restores
    node.ok(&["restore", "site", good.to_str().expect("utf-8")]);
    assert_eq!(page(&node, "site-default").trim(), page_one);
}

#[test]
fn a_restore_that_fails_after_the_swap_puts_the_gear_back() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start_with_uids(88775, 25, "");
    let _carts = node.install_cartridges(&["diy-cartridge"]);
    let files = tempfile::tempdir().expect("files");
    // a build that fails while the data holds `refuse-build`
    let app = |page: &str| {
        apps::tree(&[
            (
                ".gear/build",
                &format!(
                    "#!/bin/sh\nset -eu\ntest ! -e /gear/app-root/data/refuse-build\n\
                     mkdir -p /gear/app-root/runtime/www\n\
                     printf '%s\\n' '{page}' > /gear/app-root/runtime/www/index.html\n"
                ),
            ),
            (
                ".gear/start",
                "#!/bin/sh\nexec python3 -m http.server --bind 127.0.0.1 \
                 --directory /gear/app-root/runtime/www \"$PORT\"\n",
            ),
        ])
    };
    let first = app("first");
    node.ok(&["create", "app", "--cartridge", "diy"]);
    node.ok(&["deploy", "app", first.path().to_str().expect("utf-8")]);
    in_gear(&node, "app", "touch /gear/app-root/data/refuse-build");
    let file = snapshot(&node, "app", files.path());
    // the gear moves on: another deployment, other data, another variable
    in_gear(
        &node,
        "app",
        "rm /gear/app-root/data/refuse-build; echo now > /gear/app-root/data/current",
    );
    let second = app("second");
    node.ok(&["deploy", "app", second.path().to_str().expect("utf-8")]);
    node.ok(&["env", "app", "set", "STAGE=after"]);
    assert_eq!(page(&node, "app-default"), "second\n");

    let out = node.gear(&["restore", "app", file.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("building the restored deployment 1 failed, the gear is as it was"),
        "{err}"
    );
    // as it was: running the second deployment, with its data and variable
    let status = json(&node.ok(&["status", "app", "--json"]));
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(page(&node, "app-default"), "second\n");
    assert_eq!(
        in_gear(&node, "app", "ls -a /gear/app-root/data; echo \"$STAGE\""),
        ".\n..\ncurrent\nafter\n"
    );
    let deployments = json(&node.ok(&["deployments", "app", "--json"]));
    assert_eq!(deployments["active"], 2, "{deployments}");
    assert!(
        !in_gear(&node, "app", "ls -a /gear/app-root").contains(".restore"),
        "nothing staged is left"
    );
}

#[test]
fn an_image_gear_comes_back_while_its_image_is_in_the_store() {
    use gearhost_tests::images::{
        GZIP_LAYER, TAR_LAYER, busybox_site_layer, layout, push, site_config, site_page_layer,
    };
    if !privileged("the node mounts overlays and runs gears") {
        return;
    }
    let registry = gearhost_tests::registry::Registry::start();
    let made = tempfile::tempdir().expect("layout");
    layout(
        made.path(),
        "1.0",
        site_config(80),
        &[
            (GZIP_LAYER, busybox_site_layer()),
            (TAR_LAYER, site_page_layer("1")),
        ],
    );
    let reference = format!("{}/apps/site:1.0", registry.addr);
    push(made.path(), "1.0", &reference);
    let node = TestNode::start_with_uids(88750, 25, "");
    let _carts = node.install_cartridges(&["image-cartridge"]);
    let files = tempfile::tempdir().expect("files");
    node.ok(&["create", "web", "--image", &reference, "--insecure"]);
    assert_eq!(page(&node, "web-default"), "version 1\n");
    in_gear(&node, "web", "echo image-data > /gear/app-root/data/kept");
    node.ok(&["env", "web", "set", "GREETING=from-the-image-gear"]);
    let before = identity(&node, "web");
    let file = snapshot(&node, "web", files.path());
    node.ok(&["destroy", "web", "--yes"]);

    // without its image in the store, the restore says what to do
    node.ok(&["image", "prune"]);
    let out = node.gear(&["restore", "web", file.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("which is not in this node's image store") && err.contains("gear image pull"),
        "{err}"
    );
    assert!(!node.gear(&["show", "web"]).status.success());

    // with it, the gear comes back under its uid, with its data and env
    node.ok(&["image", "pull", &reference, "--insecure"]);
    let said = node.ok(&["restore", "web", file.to_str().expect("utf-8")]);
    assert!(said.contains("kept"), "{said}");
    assert_eq!(identity(&node, "web"), before);
    node.ok(&["start", "web"]);
    assert_eq!(page(&node, "web-default"), "version 1\n");
    assert_eq!(
        in_gear(
            &node,
            "web",
            "cat /gear/app-root/data/kept; echo \"$GREETING\""
        ),
        "image-data\nfrom-the-image-gear\n"
    );
}
