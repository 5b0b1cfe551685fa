//! The node's image store against a real registry (Debian's
//! `docker-registry` on loopback): an image made here as an OCI layout (an
//! index with a `linux/amd64` and a `linux/arm64` image, a gzip layer and a
//! plain tar layer with whiteouts) is pushed with `skopeo`, then pulled by
//! `gearhost_node::images::ImageStore`: the amd64 image is chosen, its config
//! read, its layers verified and unpacked as overlay lower directories
//! (whiteouts, an opaque directory, a hard link, setuid dropped), shared on
//! a second pull, and collected when no image keeps them. A layer that would
//! write outside its directory is refused and leaves nothing behind. The
//! same through the real `gear` and node: `gear image pull|list|prune`.
//! Gear uids 87800-87899.

use std::path::Path;

use gearhost_node::images::ImageStore;
use gearhost_node::layer::LayerLimits;
use gearhost_tests::privileged;

use gearhost_tests::images::{GZIP_LAYER, TAR_LAYER, digest, gzip, layout, push, tar_of};
use gearhost_tests::registry::Registry;

/// What the images of these tests say to run.
fn config() -> serde_json::Value {
    serde_json::json!({
        "Entrypoint": ["/bin/hello"],
        "Cmd": ["--port", "8080"],
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hi"],
        "WorkingDir": "/srv",
        "ExposedPorts": {"8080/tcp": {}},
        "User": "1000"
    })
}

const LIMITS: LayerLimits = LayerLimits {
    max_bytes: 64 << 20,
    max_entries: 10_000,
};

#[test]
fn an_image_is_pulled_verified_unpacked_shared_and_collected() {
    if !privileged("whiteouts are device nodes and opaque directories trusted xattrs") {
        return;
    }
    use tar::EntryType::{Directory, Link, Regular};
    let registry = Registry::start();
    let base = gzip(&tar_of(&[
        ("bin/", Directory, 0o755, "", b""),
        ("bin/hello", Regular, 0o4755, "", b"#!/bin/sh\necho hello\n"),
        ("bin/hi", Link, 0o755, "bin/hello", b""),
        ("etc/motd", Regular, 0o644, "", b"welcome\n"),
        ("var/cache/old", Regular, 0o644, "", b"stale\n"),
    ]));
    let top = tar_of(&[
        ("etc/.wh.motd", Regular, 0o644, "", b""),
        ("var/cache/.wh..wh..opq", Regular, 0o644, "", b""),
        ("var/cache/new", Regular, 0o644, "", b"fresh\n"),
    ]);
    let src = tempfile::tempdir().expect("layout");
    layout(
        src.path(),
        "1.0",
        config(),
        &[(GZIP_LAYER, base.clone()), (TAR_LAYER, top.clone())],
    );
    let reference = format!("{}/apps/hello:1.0", registry.addr);
    push(src.path(), "1.0", &reference);

    let state = tempfile::tempdir().expect("state");
    let store = ImageStore::new(state.path(), LIMITS);
    let target = gearhost_oci::Target::new(&reference, true, None).expect("target");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (image, pulled) = rt.block_on(store.pull(&target)).expect("pulled");
    assert_eq!((pulled.fetched, pulled.shared), (2, 0), "{pulled:?}");
    assert!(image.index.is_some(), "chosen from the index");
    assert_eq!(image.config.entrypoint, ["/bin/hello"]);
    assert_eq!(image.config.cmd, ["--port", "8080"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(image.config.exposed_ports, ["8080/tcp"]);
    assert_eq!(image.config.user.as_deref(), Some("1000"));
    assert!(image.config.env.contains(&"GREETING=hi".to_string()));
    assert_eq!(image.layers, [digest(&base), digest(&top)]);

    // overlay lower directories, top first
    let lower = store.lower_dirs(&image).expect("lower dirs");
    assert_eq!(lower.len(), 2);
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let (upper_layer, base_layer) = (&lower[0], &lower[1]);
    let hello = std::fs::metadata(base_layer.join("bin/hello")).expect("hello");
    assert_eq!(hello.permissions().mode() & 0o7777, 0o755, "setuid dropped");
    assert_eq!(
        std::fs::metadata(base_layer.join("bin/hi"))
            .expect("hi")
            .ino(),
        hello.ino()
    );
    let motd = std::fs::symlink_metadata(upper_layer.join("etc/motd")).expect("whiteout");
    assert!(motd.file_type().is_char_device() && motd.rdev() == 0);
    let mut flag = [0u8; 1];
    let n = rustix::fs::getxattr(
        upper_layer.join("var/cache"),
        "trusted.overlay.opaque",
        &mut flag,
    )
    .expect("opaque");
    assert_eq!(&flag[..n], b"y");

    // a second pull shares the layers; collecting with nothing kept removes all
    let (again, pulled) = rt.block_on(store.pull(&target)).expect("pulled again");
    assert_eq!(again, image);
    assert_eq!((pulled.fetched, pulled.shared), (0, 2));
    assert_eq!(store.images(), std::slice::from_ref(&image));
    assert_eq!(store.collect(std::slice::from_ref(&image.digest)), (0, 0));
    assert_eq!(store.collect(&[]), (1, 2));
    assert!(store.images().is_empty());

    // a layer that would write outside its directory: refused, nothing left
    let evil = tempfile::tempdir().expect("layout");
    layout(
        evil.path(),
        "evil",
        config(),
        &[(
            TAR_LAYER,
            tar_of(&[("../../escape", Regular, 0o644, "", b"x")]),
        )],
    );
    let evil_ref = format!("{}/apps/evil:evil", registry.addr);
    push(evil.path(), "evil", &evil_ref);
    let evil_target = gearhost_oci::Target::new(&evil_ref, true, None).expect("target");
    let e = rt.block_on(store.pull(&evil_target)).expect_err("refused");
    assert!(e.contains("`..`"), "{e}");
    let left: Vec<String> = std::fs::read_dir(state.path().join("images"))
        .expect("store")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        std::fs::read_dir(state.path().join("images/layers"))
            .expect("layers")
            .count(),
        0
    );
    assert!(!state.path().join("escape").exists() && !Path::new("/tmp/escape").exists());
    // a layer of a media type that is not a file system
    let odd = tempfile::tempdir().expect("layout");
    layout(
        odd.path(),
        "odd",
        config(),
        &[("application/vnd.oci.image.layer.v1.tar+zstd", vec![1, 2, 3])],
    );
    let odd_ref = format!("{}/apps/odd:odd", registry.addr);
    push(odd.path(), "odd", &odd_ref);
    let e = rt
        .block_on(store.pull(&gearhost_oci::Target::new(&odd_ref, true, None).expect("target")))
        .expect_err("refused");
    assert!(e.contains("zstd"), "{e}");
}

#[test]
fn operators_pull_list_and_prune_images_through_gear() {
    if !privileged("the node runs as root") {
        return;
    }
    use tar::EntryType::Regular;
    let registry = Registry::start();
    let src = tempfile::tempdir().expect("layout");
    let layer = gzip(&tar_of(&[(
        "bin/hello",
        Regular,
        0o755,
        "",
        b"#!/bin/sh\necho hello\n",
    )]));
    layout(src.path(), "2.0", config(), &[(GZIP_LAYER, layer)]);
    let reference = format!("{}/apps/hello:2.0", registry.addr);
    push(src.path(), "2.0", &reference);
    let node = gearhost_tests::TestNode::start(87800, "");
    let said = node.ok(&["image", "pull", &reference, "--insecure"]);
    assert!(
        said.contains("1 layers, 1 fetched, 0 already here"),
        "{said}"
    );
    let again =
        gearhost_tests::json(&node.ok(&["image", "pull", &reference, "--insecure", "--json"]));
    assert_eq!(
        (again["fetched"].as_u64(), again["shared"].as_u64()),
        (Some(0), Some(1)),
        "{again}"
    );
    let list = gearhost_tests::json(&node.ok(&["image", "list", "--json"]));
    assert_eq!(list[0]["reference"], reference.as_str(), "{list}");
    assert_eq!(
        list[0]["command"],
        serde_json::json!(["/bin/hello", "--port", "8080"])
    );
    assert_eq!(list[0]["ports"], serde_json::json!(["8080/tcp"]));
    let text = node.ok(&["image", "list"]);
    assert!(
        text.contains(&reference) && text.contains("digest sha256:"),
        "{text}"
    );
    let pruned = node.ok(&["image", "prune"]);
    assert!(pruned.contains("removed 1 images and 1 layers"), "{pruned}");
    assert_eq!(
        gearhost_tests::json(&node.ok(&["image", "list", "--json"])),
        serde_json::json!([])
    );
    // a registry that is not there: a clear error, nothing kept
    let out = node.gear(&["image", "pull", "127.0.0.1:1/apps/none:1", "--insecure"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("cannot pull") && e.contains("nothing of it was kept"),
        "{e}"
    );
}
