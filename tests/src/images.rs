//! Container images the tests make themselves: tar layers written entry by
//! entry (names as given, so hostile ones too), gzip, an OCI image layout with
//! an index of a `linux/amd64` and a `linux/arm64` image, and a push to a
//! registry with `skopeo`.

use std::path::Path;
use std::process::{Command, Stdio};

use tar::EntryType::{Directory, Regular, Symlink};

/// The OCI digest of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        gearhost_sys::hex::encode(&sha2::Sha256::digest(bytes))
    )
}

/// A tar stream of `entries` (name, type, mode, link target, body), names
/// written as they are.
pub fn tar_of(entries: &[(&str, tar::EntryType, u32, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, mode, link, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(body.len() as u64);
        h.set_mode(*mode);
        let field = &mut h.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        let l = &mut h.as_old_mut().linkname;
        l[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, *body).expect("append");
    }
    b.into_inner().expect("tar")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("gzip");
    writer.join().expect("writer").expect("write");
    out.stdout
}

/// An OCI image layout in `dir` tagged `tag`: an index of a linux/amd64
/// image with `layers` (media type, bytes) and the image configuration
/// `config` (the `config` object of the image's configuration), and a
/// linux/arm64 one.
pub fn layout(dir: &Path, tag: &str, config: serde_json::Value, layers: &[(&str, Vec<u8>)]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let put = |bytes: &[u8]| -> serde_json::Value {
        let d = digest(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).expect("blob");
        serde_json::json!({"digest": d, "size": bytes.len()})
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .expect("config");
    let mut config_desc = put(&config);
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(media, bytes)| {
            let mut d = put(bytes);
            d["mediaType"] = (*media).into();
            d
        })
        .collect();
    let manifest = |arch: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": layer_descs,
            "annotations": {"arch": arch}
        }))
        .expect("manifest")
    };
    let entry = |arch: &str| {
        let mut d = put(&manifest(arch));
        d["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
        d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        d
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm64"), entry("amd64")]
    }))
    .expect("index");
    let mut top = put(&index);
    top["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [top]}))
            .expect("json"),
    )
    .expect("index.json");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
}

pub fn push(dir: &Path, tag: &str, to: &str) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            // the blobs as made here: a plain tar layer stays one
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", dir.display()),
            &format!("docker://{to}"),
        ])
        .output()
        .expect("skopeo (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The media type of a gzip layer.
pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The media type of a plain tar layer.
pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// The base layer of a small web site image: busybox and the applets it uses, a root-group
/// writable `/srv` and a `/tmp`, the image's users, and a page that the
/// next layer replaces and one it whites out.
pub fn busybox_site_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox (busybox-static)");
    let applets: Vec<String> = [
        "sh", "httpd", "id", "cat", "echo", "ls", "grep", "tr", "head", "tail", "touch", "mkdir",
        "rm", "sleep", "wc", "chmod",
    ]
    .iter()
    .map(|a| format!("bin/{a}"))
    .collect();
    let mut entries: Vec<(&str, tar::EntryType, u32, &str, &[u8])> = vec![
        ("bin/", Directory, 0o755, "", b""),
        ("bin/busybox", Regular, 0o755, "", &busybox),
        ("etc/", Directory, 0o755, "", b""),
        (
            "etc/passwd",
            Regular,
            0o644,
            "",
            b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/www:/bin/sh\n",
        ),
        ("srv/", Directory, 0o775, "", b""),
        ("tmp/", Directory, 0o1777, "", b""),
        ("www/", Directory, 0o755, "", b""),
        ("www/index.html", Regular, 0o644, "", b"from the base layer\n"),
        ("www/secret.html", Regular, 0o644, "", b"whited out above\n"),
        ("www/cgi-bin/", Directory, 0o755, "", b""),
        (
            "www/cgi-bin/who",
            Regular,
            0o755,
            "",
            b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"uid=$(id -u) greeting=$GREETING path=$PATH\"\necho made > /srv/made && echo srv-writable\n",
        ),
    ];
    for name in &applets {
        entries.push((name, Symlink, 0o777, "busybox", b""));
    }
    gzip(&tar_of(&entries))
}

/// The top layer of the site's version `v`: its page, and the base layer's
/// `secret.html` whited out.
pub fn site_page_layer(v: &str) -> Vec<u8> {
    let page = format!("version {v}\n");
    tar_of(&[
        ("www/.wh.secret.html", Regular, 0o644, "", b""),
        ("www/index.html", Regular, 0o644, "", page.as_bytes()),
    ])
}

/// What the site image runs: busybox's httpd on `port`, as root would.
pub fn site_config(port: u16) -> serde_json::Value {
    serde_json::json!({
        "Entrypoint": ["/bin/httpd", "-f", "-p", port.to_string()],
        "Cmd": ["-h", "/www"],
        "Env": ["PATH=/bin", "GREETING=hello"],
        "WorkingDir": "/www",
        "ExposedPorts": {format!("{port}/tcp"): {}},
        "User": "root"
    })
}
