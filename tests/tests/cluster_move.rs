//! End to end: `gear move` between three real nodes joined through a real
//! three-member etcd cluster. A web app keeps answering while it moves —
//! every request sent through the node it leaves and through a third node
//! during the move gets its answer —, keeps its uid, MCS level and name,
//! leaves nothing on the old node and answers through every node after. A
//! PostgreSQL gear's rows and credentials are all there after its move. A
//! move the target node cannot take (the cartridge is not installed there)
//! leaves the gear where it was. Gear uids 88900-88999.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gearhost_tests::etcd::{EtcdCluster, start_nodes};
use gearhost_tests::{TestNode, cartridge_dir, json, privileged, workspace_root};

const UID_MIN: u32 = 88_900;
const UIDS: u32 = 100;
const TTL_SECS: u64 = 6;

/// (node, uid, MCS level, id) of `gear`, as `gear show` through `via` says.
fn whereabouts(via: &TestNode, gear: &str) -> (String, u64, String, String) {
    let shown = json(&via.ok(&["show", gear, "--json"]));
    let g = if shown["gear"].is_object() {
        &shown["gear"]
    } else {
        &shown
    };
    let node = via
        .node_of(gear)
        .unwrap_or_else(|| panic!("{gear} has no node in the cluster's list"));
    (
        node,
        g["uid"].as_u64().expect("uid"),
        g["mcs_level"].as_str().expect("level").to_string(),
        g["id"].as_str().expect("id").to_string(),
    )
}

/// GETs `/` of `label` through `node` until `stop`: (answers, failures as
/// (status, body), slowest answer).
fn keep_asking(
    node: &TestNode,
    label: &str,
    stop: &AtomicBool,
) -> (usize, Vec<(u16, String)>, Duration) {
    let (mut answered, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        let (code, body) = node.http_get(label, "/");
        slowest = slowest.max(at.elapsed());
        if code == 200 && body.contains("hello from") {
            answered += 1;
        } else {
            failed.push((code, body));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (answered, failed, slowest)
}

#[test]
fn gears_move_between_nodes_and_keep_answering() {
    if !privileged("runs three nodes and an etcd cluster") {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let names = ["node-a", "node-b", "node-c"];
    let (_secrets, nodes) = start_nodes(&etcd, &names, (UID_MIN, UIDS), TTL_SECS);
    let carts = ["nodejs-cartridge", "postgresql-cartridge"].map(cartridge_dir);
    for node in &nodes {
        for cart in &carts {
            node.ok(&["cartridge", "install", cart.path().to_str().expect("utf-8")]);
        }
    }
    let app = workspace_root().join("tests/apps/frontend-app");
    nodes[0].ok(&["create", "web", "--cartridge", "nodejs", "--node", "node-a"]);
    nodes[0].ok(&["deploy", "web", app.to_str().expect("utf-8")]);
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.http_get("web-default", "/").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "web never answered through {}",
                node.frontend
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let before = whereabouts(&nodes[1], "web");
    assert_eq!(before.0, "node-a");

    // moved through node-c while requests keep coming through node-a (the
    // node it leaves) and node-c: none fails
    let stop = Arc::new(AtomicBool::new(false));
    let (asked_a, asked_c, said) = std::thread::scope(|s| {
        let a = s.spawn(|| keep_asking(&nodes[0], "web-default", &stop));
        let c = s.spawn(|| keep_asking(&nodes[2], "web-default", &stop));
        std::thread::sleep(Duration::from_millis(300));
        let at = Instant::now();
        let said = nodes[2].ok(&["move", "web", "node-b"]);
        eprintln!("web moved in {:?}: {said}", at.elapsed());
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        (a.join().expect("asker"), c.join().expect("asker"), said)
    });
    assert!(said.contains("moved web from node-a to node-b"), "{said}");
    for (through, (answered, failed, slowest)) in [("node-a", asked_a), ("node-c", asked_c)] {
        eprintln!("through {through}: {answered} answers, slowest {slowest:?}");
        assert!(
            failed.is_empty(),
            "requests through {through} failed during the move: {failed:?}"
        );
        assert!(answered > 10, "only {answered} requests through {through}");
    }
    let after = whereabouts(&nodes[0], "web");
    assert_eq!(after.0, "node-b", "{after:?}");
    assert_eq!(
        (&after.1, &after.2, &after.3),
        (&before.1, &before.2, &before.3),
        "the uid, level and id travel with the gear"
    );
    // nothing of it is left on node-a; it runs on node-b and answers everywhere
    let left = nodes[0].state_dir().join("gears").join(&before.3);
    assert!(!left.exists(), "{} is still there", left.display());
    let status = json(&nodes[0].ok(&["status", "web", "--json"]));
    assert_eq!(status["state"], "running", "{status}");
    for node in &nodes {
        assert_eq!(node.http_get("web-default", "/").0, 200);
    }
    // and back again
    nodes[1].ok(&["move", "web", "node-a"]);
    assert_eq!(whereabouts(&nodes[2], "web").0, "node-a");
    for node in &nodes {
        assert_eq!(node.http_get("web-default", "/").0, 200);
    }

    // PostgreSQL: the rows and the credentials arrive with it
    nodes[0].ok(&[
        "create",
        "db",
        "--cartridge",
        "postgresql",
        "--node",
        "node-a",
    ]);
    nodes[0].ok(&["start", "db"]);
    nodes[0].psql("db", "create table notes (id int primary key, body text)");
    nodes[0].psql(
        "db",
        "insert into notes select g, md5(g::text) from generate_series(1, 5000) g",
    );
    let password =
        json(&nodes[0].ok(&["env", "db", "list", "--json"]))["effective"]["PGPASSWORD"].clone();
    let at = Instant::now();
    nodes[1].ok(&["move", "db", "node-c"]);
    eprintln!("db moved in {:?}", at.elapsed());
    assert_eq!(whereabouts(&nodes[0], "db").0, "node-c");
    assert_eq!(nodes[2].psql("db", "select count(*) from notes"), "5000\n");
    assert_eq!(
        nodes[2].psql("db", "select body from notes where id = 77"),
        format!("{}\n", md5_of("77"))
    );
    assert_eq!(
        json(&nodes[1].ok(&["env", "db", "list", "--json"]))["effective"]["PGPASSWORD"],
        password
    );

    // a node that cannot take the gear leaves it where it was, running
    let static_cart = cartridge_dir("static-cartridge");
    nodes[0].ok(&[
        "cartridge",
        "install",
        static_cart.path().to_str().expect("utf-8"),
    ]);
    nodes[0].ok(&[
        "create",
        "site",
        "--cartridge",
        "static",
        "--node",
        "node-a",
    ]);
    let out = nodes[0].gear(&["move", "site", "node-b"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was not moved") && err.contains("static"),
        "{err}"
    );
    assert_eq!(whereabouts(&nodes[1], "site").0, "node-a");
    // and a move to where it is, or to no node, says so
    let out = nodes[0].gear(&["move", "web", "node-a"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already"));
    let out = nodes[0].gear(&["move", "web", "node-z"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node node-z"));

    for gear in ["web", "db", "site"] {
        nodes[1].ok(&["destroy", gear]);
    }
}

/// The MD5 of `text`, as PostgreSQL's `md5()` gives it (hex).
fn md5_of(text: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{text}' | md5sum")])
        .output()
        .expect("md5sum");
    let hex = String::from_utf8_lossy(&out.stdout);
    hex.split_whitespace().next().unwrap_or("").to_string()
}
