//! End to end: cartridges through an OCI registry. A real registry (Debian's
//! `docker-registry`) runs on loopback: every cartridge is pushed with `gear
//! cartridge push`, its stored manifest has the CNCF Wasm media types, and
//! each installs by tag on one node and by digest on a fresh one, with the
//! same component and the origin recorded; an example app is deployed with a
//! cartridge installed that way; `skopeo` (an ordinary OCI client) copies an
//! artifact out and back in, and the copy installs. Bad artifacts are served
//! by a small registry of the test's own that answers whatever it is told
//! (a wrong digest, an oversized manifest, a truncated layer, sizes that lie),
//! plus a config whose exports are not the contract pushed to the real
//! registry: each is refused with a clear message, and nothing is left
//! installed or staged. A `wkg`-style artifact (one component layer, the
//! manifest in a custom section) installs. A registry that wants a user is
//! pushed to and pulled from with the credentials of a named file and of
//! `$DOCKER_CONFIG/config.json`, and refused without. Gear uids 87500-87799.

use std::path::Path;
use std::process::{Child, Command};

use gearhost_tests::{TestNode, cartridge_dir, free_port, json, privileged, workspace_root};

/// A `docker-registry` on loopback, storing in a directory of its own.
use gearhost_tests::registry::Registry;

/// A registry of the test's own (python3): it serves `manifests/<ref>` and
/// `blobs/<digest>` from its directory, for any repository, as they are.
struct FakeRegistry {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
}

const FAKE_REGISTRY: &str = r#"
import http.server, os, sys
root = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def answer(self, body_too):
        parts = self.path.split("/")
        if self.path in ("/v2/", "/v2"):
            path, kind = None, "application/json"
        elif len(parts) >= 4 and parts[-2] == "manifests":
            path, kind = os.path.join(root, "manifests", parts[-1]), "application/vnd.oci.image.manifest.v1+json"
        elif len(parts) >= 4 and parts[-2] == "blobs":
            path, kind = os.path.join(root, "blobs", parts[-1]), "application/octet-stream"
        else:
            self.send_response(404); self.end_headers(); return
        body = b"{}" if path is None else None
        if path is not None:
            if not os.path.exists(path):
                self.send_response(404); self.end_headers(); return
            body = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body_too:
            self.wfile.write(body)
    def do_GET(self):
        self.answer(True)
    def do_HEAD(self):
        self.answer(False)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()
"#;

impl FakeRegistry {
    fn start() -> FakeRegistry {
        let dir = tempfile::tempdir().expect("fake registry dir");
        std::fs::create_dir_all(dir.path().join("manifests")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("blobs")).expect("mkdir");
        let script = dir.path().join("registry.py");
        std::fs::write(&script, FAKE_REGISTRY).expect("script");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .arg(port.to_string())
            .spawn()
            .expect("python3");
        gearhost_tests::registry::wait_for_registry(&addr);
        FakeRegistry { child, dir, addr }
    }

    /// Serves `bytes` as blob `digest` (not necessarily the bytes' own digest).
    fn blob(&self, digest: &str, bytes: &[u8]) {
        std::fs::write(self.dir.path().join("blobs").join(digest), bytes).expect("blob");
    }

    /// Serves `bytes` as the manifest of reference `tag_or_digest`.
    fn manifest(&self, tag_or_digest: &str, bytes: &[u8]) {
        std::fs::write(self.dir.path().join("manifests").join(tag_or_digest), bytes)
            .expect("manifest");
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The version in a cartridge directory's manifest.
fn version_of(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("cartridge.toml")).expect("manifest");
    text.lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("a version")
}

/// `gear` as root against `node`, expected to fail: its stderr.
fn refused(node: &TestNode, args: &[&str]) -> String {
    let out = node.gear(args);
    assert!(
        !out.status.success(),
        "gear {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Nothing but `names` is installed, and nothing is staged.
fn installed_only(node: &TestNode, names: &[&str]) {
    let list = json(&node.ok(&["cartridge", "list", "--json"]));
    let mut got: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    got.sort_unstable();
    assert_eq!(got, names, "installed cartridges");
    let store = node.state_dir().join("cartridges");
    let staged: Vec<String> = std::fs::read_dir(&store)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(staged.is_empty(), "left in the store: {staged:?}");
}

const CARTRIDGES: [&str; 5] = ["diy", "nodejs", "postgresql", "python", "static"];

#[test]
fn every_cartridge_goes_through_a_registry_and_installs_by_tag_and_by_digest() {
    if !privileged("the node creates gears") {
        return;
    }
    let registry = Registry::start();
    let first = TestNode::start(87500, "");
    let mut pushed = Vec::new();
    for name in CARTRIDGES {
        let dir = cartridge_dir(&format!("{name}-cartridge"));
        let version = version_of(dir.path());
        let reference = format!("{}/carts/{name}:{version}", registry.addr);
        let out = first.ok(&[
            "cartridge",
            "push",
            path_str(dir.path()),
            &reference,
            "--insecure",
            "--json",
        ]);
        let digest = json(&out)["digest"].as_str().expect("digest").to_string();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest}"
        );
        // what the registry holds: the CNCF Wasm artifact layout
        let stored = Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &format!(
                    "http://{}/v2/carts/{name}/manifests/{version}",
                    registry.addr
                ),
            ])
            .output()
            .expect("curl");
        let manifest = json(&String::from_utf8_lossy(&stored.stdout));
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.wasm.config.v0+json"
        );
        assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
        assert_eq!(
            manifest["layers"][1]["mediaType"],
            "application/vnd.gearhost.cartridge.manifest.v1+toml"
        );
        assert_eq!(
            gearhost_oci::digest_of(&stored.stdout),
            digest,
            "push printed the stored manifest's digest"
        );
        let said = first.ok(&[
            "cartridge",
            "install",
            &format!("oci://{reference}"),
            "--insecure",
        ]);
        assert!(said.contains(&digest), "{said}");
        pushed.push((name, reference, digest, dir));
    }
    let list = json(&first.ok(&["cartridge", "list", "--json"]));
    let by_name = |list: &serde_json::Value, name: &str| -> serde_json::Value {
        list.as_array()
            .expect("list")
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not installed: {list}"))
    };
    for (name, _, digest, _) in &pushed {
        assert_eq!(by_name(&list, name)["origin"]["digest"], digest.as_str());
    }
    let text = first.ok(&["cartridge", "list"]);
    assert!(
        text.contains(&pushed[0].1) && text.contains(&pushed[0].2),
        "{text}"
    );

    // a fresh node installs each by digest: the same component, reproducibly
    let second = TestNode::start(87600, "");
    for (name, _, digest, _) in &pushed {
        let pinned = format!("{}/carts/{name}@{digest}", registry.addr);
        second.ok(&["cartridge", "install", &pinned, "--insecure"]);
    }
    let again = json(&second.ok(&["cartridge", "list", "--json"]));
    for (name, _, digest, _) in &pushed {
        let (a, b) = (by_name(&list, name), by_name(&again, name));
        assert_eq!(a["sha256"], b["sha256"], "{name}: the same component");
        assert_eq!(b["origin"]["digest"], digest.as_str());
    }

    // an app deployed with a cartridge installed from the registry
    second.ok(&["create", "site", "--cartridge", "static"]);
    let site = workspace_root().join("examples/static-site");
    second.ok(&["deploy", "site", path_str(&site)]);
    let (code, body) = second.http_get("site-default", "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("A static site"), "{body}");

    // an ordinary OCI client reads what gear pushed, and what it writes back installs
    let (_, diy_reference, _, diy_dir) = &pushed[0];
    let copy = tempfile::tempdir().expect("copy");
    let out_dir = copy.path().join("diy");
    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo")
            .args(args)
            .output()
            .expect("skopeo (scripts/setup installs it)");
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{diy_reference}"),
        &format!("dir:{}", out_dir.display()),
    ]);
    let wasm = std::fs::read(diy_dir.path().join("hooks.wasm")).expect("component");
    let wasm_blob = out_dir.join(
        gearhost_oci::digest_of(&wasm)
            .strip_prefix("sha256:")
            .expect("sha256"),
    );
    assert_eq!(std::fs::read(&wasm_blob).expect("the component blob"), wasm);
    let mirrored = format!(
        "{}/mirror/diy:{}",
        registry.addr,
        version_of(diy_dir.path())
    );
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("dir:{}", out_dir.display()),
        &format!("docker://{mirrored}"),
    ]);
    second.ok(&[
        "cartridge",
        "install",
        &format!("oci://{mirrored}"),
        "--insecure",
    ]);
    assert_eq!(
        by_name(&json(&second.ok(&["cartridge", "list", "--json"])), "diy")["origin"]["reference"],
        mirrored.as_str()
    );
}

/// A component's bytes, the config that says it exports the contract, and
/// the image manifest over them, as a fake registry serves them.
struct Artifact {
    manifest: Vec<u8>,
    blobs: Vec<(String, Vec<u8>)>,
}

fn descriptor(media: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media,
        "digest": gearhost_oci::digest_of(bytes),
        "size": bytes.len(),
    })
}

/// An artifact of the component `wasm` with the contract's exports, and
/// `toml` as a manifest layer when given.
fn artifact(wasm: &[u8], toml: Option<&[u8]>) -> Artifact {
    let config = serde_json::to_vec(&serde_json::json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [gearhost_oci::digest_of(wasm)],
        "component": {"exports": ["gearhost:cartridge/hooks@0.1.0"], "imports": []},
    }))
    .expect("config");
    let mut layers = vec![descriptor("application/wasm", wasm)];
    let mut blobs = vec![
        (gearhost_oci::digest_of(&config), config.clone()),
        (gearhost_oci::digest_of(wasm), wasm.to_vec()),
    ];
    if let Some(toml) = toml {
        layers.push(descriptor(
            "application/vnd.gearhost.cartridge.manifest.v1+toml",
            toml,
        ));
        blobs.push((gearhost_oci::digest_of(toml), toml.to_vec()));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.wasm.config.v0+json", &config),
        "layers": layers,
    }))
    .expect("manifest");
    Artifact { manifest, blobs }
}

impl FakeRegistry {
    fn serve(&self, tag: &str, a: &Artifact) {
        self.manifest(tag, &a.manifest);
        for (digest, bytes) in &a.blobs {
            self.blob(digest, bytes);
        }
    }
}

#[test]
fn bad_artifacts_are_refused_and_leave_nothing_behind() {
    if !privileged("the node creates gears") {
        return;
    }
    let node = TestNode::start(87700, "");
    let diy = cartridge_dir("diy-cartridge");
    let wasm = std::fs::read(diy.path().join("hooks.wasm")).expect("component");
    let toml = std::fs::read(diy.path().join("cartridge.toml")).expect("manifest");
    let version = version_of(diy.path());
    let fake = FakeRegistry::start();
    let at = |repo_ref: &str| format!("oci://{}/carts/{repo_ref}", fake.addr);

    // the tag must be the manifest's version; plain HTTP only on loopback
    let registry = Registry::start();
    let e = refused(
        &node,
        &[
            "cartridge",
            "push",
            path_str(diy.path()),
            &format!("{}/carts/diy:9.9.9", registry.addr),
            "--insecure",
        ],
    );
    assert!(
        e.contains(&format!("is not the cartridge's version {version}")),
        "{e}"
    );
    let e = refused(
        &node,
        &[
            "cartridge",
            "install",
            "oci://registry.example:5000/carts/diy:0.1.0",
            "--insecure",
        ],
    );
    assert!(e.contains("only for a registry on loopback"), "{e}");
    let e = refused(&node, &["cartridge", "install", "oci://diy:0.1.0"]);
    assert!(e.contains("names no registry"), "{e}");

    // a config whose exports are not the contract, pushed to the real registry
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let target = gearhost_oci::Target::new(
        &format!("{}/carts/handler:1.0.0", registry.addr),
        true,
        None,
    )
    .expect("target");
    let publication = gearhost_oci::Publication {
        manifest: toml.clone(),
        wasm: wasm.clone(),
        component: gearhost_oci::Component {
            exports: vec!["wasi:http/incoming-handler@0.2.0".into()],
            imports: vec![],
            target: None,
        },
    };
    runtime
        .block_on(gearhost_oci::push(&target, &publication))
        .expect("push");
    let e = refused(
        &node,
        &[
            "cartridge",
            "install",
            &format!("oci://{}/carts/handler:1.0.0", registry.addr),
            "--insecure",
        ],
    );
    assert!(
        e.contains("not gearhost:cartridge/hooks") && e.contains("not a cartridge"),
        "{e}"
    );
    installed_only(&node, &[]);

    // a registry that answers a digest with another manifest
    let good = artifact(&wasm, Some(&toml));
    let asked = format!("sha256:{}", "0".repeat(64));
    fake.serve(&asked, &good);
    let e = refused(
        &node,
        &[
            "cartridge",
            "install",
            &at(&format!("diy@{asked}")),
            "--insecure",
        ],
    );
    assert!(e.contains("not the") && e.contains("asked for"), "{e}");
    installed_only(&node, &[]);

    // an oversized manifest
    let mut huge = good.manifest.clone();
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(b",\"annotations\":{\"x\":\"");
    huge.extend(std::iter::repeat_n(b'a', 5 << 20));
    huge.extend_from_slice(b"\"}}");
    fake.manifest("huge", &huge);
    let e = refused(
        &node,
        &["cartridge", "install", &at("diy:huge"), "--insecure"],
    );
    assert!(e.contains("more than the"), "{e}");
    installed_only(&node, &[]);

    // a truncated component layer (the manifest gives its whole size and digest)
    let cut = artifact(&wasm, Some(&toml));
    fake.serve("truncated", &cut);
    fake.blob(&gearhost_oci::digest_of(&wasm), &wasm[..wasm.len() / 2]);
    let e = refused(
        &node,
        &["cartridge", "install", &at("diy:truncated"), "--insecure"],
    );
    assert!(e.contains("component layer"), "{e}");
    installed_only(&node, &[]);
    fake.blob(&gearhost_oci::digest_of(&wasm), &wasm);

    // sizes that lie: the manifest gives the component fewer bytes than it has
    let mut lying: serde_json::Value = serde_json::from_slice(&good.manifest).expect("manifest");
    lying["layers"][0]["size"] = serde_json::json!(wasm.len() - 100);
    fake.manifest("lying", &serde_json::to_vec(&lying).expect("json"));
    let e = refused(
        &node,
        &["cartridge", "install", &at("diy:lying"), "--insecure"],
    );
    assert!(
        e.contains("more than the") && e.contains("component layer"),
        "{e}"
    );
    // ... or more
    lying["layers"][0]["size"] = serde_json::json!(wasm.len() + 100);
    fake.manifest("lying", &serde_json::to_vec(&lying).expect("json"));
    let e = refused(
        &node,
        &["cartridge", "install", &at("diy:lying"), "--insecure"],
    );
    assert!(e.contains("component layer"), "{e}");
    installed_only(&node, &[]);

    // an artifact that is not a Wasm artifact at all
    let mut image: serde_json::Value = serde_json::from_slice(&good.manifest).expect("manifest");
    image["config"]["mediaType"] = serde_json::json!("application/vnd.oci.image.config.v1+json");
    fake.manifest("image", &serde_json::to_vec(&image).expect("json"));
    let e = refused(
        &node,
        &["cartridge", "install", &at("diy:image"), "--insecure"],
    );
    assert!(e.contains("is it a cartridge?"), "{e}");
    // a Wasm artifact with no cartridge.toml anywhere
    fake.serve("bare", &artifact(&wasm, None));
    let e = refused(
        &node,
        &["cartridge", "install", &at("diy:bare"), "--insecure"],
    );
    assert!(e.contains("carries no cartridge.toml"), "{e}");
    installed_only(&node, &[]);

    // a wkg-style artifact: one component layer, the manifest in a custom section
    let embedded = gearhost_oci::with_custom_section(&wasm, gearhost_oci::MANIFEST_SECTION, &toml);
    let wkg = artifact(&embedded, None);
    fake.serve("wkg", &wkg);
    let said = node.ok(&["cartridge", "install", &at("diy:wkg"), "--insecure"]);
    assert!(said.contains("installed diy"), "{said}");
    installed_only(&node, &["diy"]);
}

#[test]
fn credentials_come_from_the_docker_config_or_a_named_file() {
    if !privileged("the node creates gears") {
        return;
    }
    // a registry that wants a user: bcrypt as htpasswd writes it
    let dir = tempfile::tempdir().expect("dir");
    let hashed = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        ])
        .output()
        .expect("python3");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ops:{}", String::from_utf8_lossy(&hashed.stdout)),
    )
    .expect("htpasswd");
    let registry = Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: gearhost-test\n    path: {}\n",
        htpasswd.display()
    ));
    // the Docker config `docker login` would write: auths.<registry>.auth = base64(user:password)
    let docker = dir.path().join("docker");
    std::fs::create_dir_all(&docker).expect("mkdir");
    let config = docker.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"b3BzOnMzY3JldA=="}}}}}}"#,
            registry.addr
        ),
    )
    .expect("config");
    let node = TestNode::start(87750, "");
    let diy = cartridge_dir("diy-cartridge");
    let reference = format!("{}/carts/diy:{}", registry.addr, version_of(diy.path()));
    let e = refused(
        &node,
        &[
            "cartridge",
            "push",
            path_str(diy.path()),
            &reference,
            "--insecure",
        ],
    );
    assert!(
        e.contains("401") || e.contains("authentication required"),
        "{e}"
    );
    node.ok(&[
        "cartridge",
        "push",
        path_str(diy.path()),
        &reference,
        "--insecure",
        "--auth-file",
        path_str(&config),
    ]);
    let e = refused(
        &node,
        &[
            "cartridge",
            "install",
            &format!("oci://{reference}"),
            "--insecure",
        ],
    );
    assert!(
        e.contains("Not authorized") && e.contains("nothing was installed"),
        "{e}"
    );
    installed_only(&node, &[]);
    // the usual place: $DOCKER_CONFIG/config.json
    let out = Command::new(gearhost_tests::gear_bin())
        .args(["--socket", path_str(node.socket())])
        .args([
            "cartridge",
            "install",
            &format!("oci://{reference}"),
            "--insecure",
        ])
        .env("DOCKER_CONFIG", &docker)
        .output()
        .expect("gear");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    installed_only(&node, &["diy"]);
}
