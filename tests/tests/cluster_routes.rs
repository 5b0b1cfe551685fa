//! End to end: every node's frontend routes every gear of the cluster. Three
//! real nodes joined through a real three-member etcd cluster; a gear placed
//! by the policy answers through all three frontends, by its own name and by
//! an alias added through a node that does not hold it; the client's address
//! reaches the app through the relay (a client bound to another loopback
//! address is seen as itself, not as the node that passed the request on),
//! and a forged relay field is ignored and never reaches the app; an alias
//! another node's gear holds is refused; a stopped gear is woken by a request
//! through another node; a destroyed gear's names lead nowhere on every node.
//! Gear uids 88800-88899.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gearhost_tests::etcd::{EtcdCluster, start_nodes};
use gearhost_tests::{TestNode, cartridge_dir, json, privileged, workspace_root};

const UID_MIN: u32 = 88_800;
const UIDS: u32 = 100;
const TTL_SECS: u64 = 6;

/// curl `path` of `host` through `node`'s frontend, from `from` (a loopback
/// address), with `extra` arguments.
fn curl(node: &TestNode, host: &str, path: &str, from: &str, extra: &[&str]) -> Output {
    let port = node.frontend.port();
    Command::new("curl")
        .args(["-sS", "--max-time", "30", "--interface", from, "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(extra)
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .arg(format!("http://{host}:{port}{path}"))
        .output()
        .expect("run curl")
}

/// (status, body) of a GET of `path` from `host` through `node`.
fn get(node: &TestNode, host: &str, path: &str) -> (u16, String) {
    split(&curl(node, host, path, "127.0.0.1", &[]))
}

fn split(out: &Output) -> (u16, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Waits until a GET of `host` through `node` answers `want` (routes follow
/// etcd's watch, a moment behind the change).
fn answers(node: &TestNode, host: &str, want: (u16, &str), within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = get(node, host, "/");
        if got.0 == want.0 && got.1.contains(want.1) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{host} through {} answered {got:?}, not {want:?}",
            node.frontend
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_frontend_routes_every_gear_of_the_cluster() {
    if !privileged("runs three nodes and an etcd cluster") {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let names = ["node-a", "node-b", "node-c"];
    let (_secrets, nodes) = start_nodes(&etcd, &names, (UID_MIN, UIDS), TTL_SECS);
    let nodejs = cartridge_dir("nodejs-cartridge");
    for node in &nodes {
        node.ok(&[
            "cartridge",
            "install",
            nodejs.path().to_str().expect("utf-8"),
        ]);
    }
    let app = workspace_root().join("tests/apps/frontend-app");
    let app = app.to_str().expect("utf-8");

    // created through node-a, placed by the policy; then answers through all three
    nodes[0].ok(&["create", "web", "--cartridge", "nodejs"]);
    nodes[0].ok(&["deploy", "web", app]);
    let listed = json(&nodes[1].ok(&["list", "--json"]));
    let owner = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|g| g["name"] == "web")
        .and_then(|g| g["node"].as_str())
        .expect("web's node")
        .to_string();
    let owner_at = names.iter().position(|n| *n == owner).expect("a node");
    let other_at = (owner_at + 1) % 3;
    for node in &nodes {
        let took = answers(
            node,
            "web-default.localhost",
            (200, "hello from web"),
            Duration::from_secs(10),
        );
        eprintln!("web answered through {} after {took:?}", node.frontend);
    }

    // through a node that does not hold it: the client's own address reaches
    // the app, the scheme is the client's, and forged fields go nowhere
    let out = curl(
        &nodes[other_at],
        "web-default.localhost",
        "/headers",
        "127.0.0.7",
        &[
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "Gearhost-Relay: t=1;for=6.6.6.6;proto=https;mac=00",
        ],
    );
    let (code, body) = split(&out);
    assert_eq!(code, 200, "{body}");
    let seen = json(&body);
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.7", "{seen}");
    assert_eq!(h["x-forwarded-proto"], "http", "{seen}");
    assert!(h.get("gearhost-relay").is_none(), "{seen}");
    // straight to the holder, a forged field changes nothing either
    let out = curl(
        &nodes[owner_at],
        "web-default.localhost",
        "/headers",
        "127.0.0.9",
        &["-H", "Gearhost-Relay: t=1;for=6.6.6.6;proto=https;mac=00"],
    );
    let seen = json(&split(&out).1);
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.9", "{seen}");
    assert!(seen["headers"].get("gearhost-relay").is_none(), "{seen}");
    // the node that passed requests on counts them by the node it passed them to
    let relayed = nodes[other_at]
        .metrics()
        .get(&format!(
            "gearhost_cluster_relayed_requests_total{{node=\"{owner}\",status=\"2xx\"}}"
        ))
        .copied()
        .unwrap_or(0.0);
    assert!(relayed >= 2.0, "{relayed} requests counted as relayed");

    // an alias added through a node that does not hold the gear answers everywhere
    nodes[other_at].ok(&["alias", "add", "web", "www.example.test"]);
    for node in &nodes {
        answers(
            node,
            "www.example.test",
            (200, "hello from web"),
            Duration::from_secs(10),
        );
    }
    // and is the cluster's: a gear on another node cannot take it
    let elsewhere = names[other_at];
    nodes[owner_at].ok(&[
        "create",
        "shop",
        "--cartridge",
        "nodejs",
        "--node",
        elsewhere,
    ]);
    let out = nodes[owner_at].gear(&["alias", "add", "shop", "www.example.test"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("www.example.test") && err.contains("web") && err.contains(&owner),
        "{err}"
    );
    // given up, it leads nowhere, on every node
    nodes[0].ok(&["alias", "remove", "web", "www.example.test"]);
    for node in &nodes {
        answers(node, "www.example.test", (404, ""), Duration::from_secs(10));
    }

    // a stopped gear is woken by a request through another node
    nodes[other_at].ok(&["idle", "--stop", "web"]);
    let state = json(&nodes[owner_at].ok(&["status", "web", "--json"]));
    assert_eq!(state["state"], "idle", "{state}");
    assert_eq!(
        get(&nodes[other_at], "web-default.localhost", "/"),
        (200, "hello from web\n".into())
    );
    let state = json(&nodes[owner_at].ok(&["status", "web", "--json"]));
    assert_eq!(state["state"], "running", "{state}");

    // destroyed: its name leads nowhere on any node
    nodes[other_at].ok(&["destroy", "web"]);
    for node in &nodes {
        answers(
            node,
            "web-default.localhost",
            (404, ""),
            Duration::from_secs(10),
        );
    }
    nodes[0].ok(&["destroy", "shop"]);
}
