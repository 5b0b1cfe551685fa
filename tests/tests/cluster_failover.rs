//! End to end: failover and fencing with three real nodes and a real
//! three-member etcd cluster (lease time 6 s). A stateless web app's
//! deployment is kept by another node; when the node that runs it dies (the
//! node, its keeper and its gears' processes killed, as with its machine),
//! the app answers from another node within the stated time (30 s at most;
//! measured and printed). A PostgreSQL gear on the dead node is lost, and
//! `gear restore` through another node brings it back with its rows. A node
//! cut off from etcd (its only link to etcd is a relay the test cuts) stops
//! serving its gear before its lease runs out; the gear answers from another
//! node meanwhile; once the link is mended the cut-off node does not start
//! its copy again and passes requests to the node that holds the gear now.
//! Gear uids 89000-89099.

use std::path::Path;
use std::time::{Duration, Instant};

use gearhost_tests::etcd::{EtcdCluster, EtcdLink, member_config, member_config_via, secret_file};
use gearhost_tests::{TestNode, cartridge_dir, json, privileged, workspace_root};

const UID_MIN: u32 = 89_000;
const UIDS: u32 = 100;
const TTL_SECS: u64 = 6;

/// Waits until gear `id`'s placement names the node that keeps its replica,
/// and that node has it: the node's name.
fn wait_replica(etcd: &EtcdCluster, nodes: &[(&str, &TestNode)], id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let placed = etcd.get(&format!("gears/{id}")).map(|v| json(&v));
        if let Some(replica) = placed.as_ref().and_then(|p| p["replica"].as_str())
            && let Some((_, node)) = nodes.iter().find(|(name, _)| *name == replica)
            && node
                .state_dir()
                .join("replicas")
                .join(format!("{id}.tar.gz"))
                .is_file()
        {
            return replica.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no node keeps a replica of {id}: {placed:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `label` answers through `node`: how long it took.
fn wait_answer(node: &TestNode, label: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if node.http_get(label, "/").0 == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{label} did not answer through {} within {within:?}; the node's log ends with:\n{}",
            node.frontend,
            gearhost_tests::tail_of(&node.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn id_of(via: &TestNode, gear: &str) -> String {
    json(&via.ok(&["show", gear, "--json"]))["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// The state a node's own record of gear `id` says, read from its state directory.
fn recorded_state(node: &TestNode, id: &str) -> String {
    let path = node.state_dir().join("gears").join(id).join("gear.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", Path::new(&path).display()));
    json(&text)["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn gears_of_a_dead_or_cut_off_node_come_back_elsewhere_once() {
    if !privileged("runs three nodes and an etcd cluster") {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let secrets = tempfile::tempdir().expect("dir");
    let secret = secret_file(secrets.path());
    // node-c reaches etcd only through a link the test can cut
    let link = EtcdLink::to_member(&etcd, 2);
    let configs = [
        member_config(&etcd, "node-a", &secret, TTL_SECS),
        member_config(&etcd, "node-b", &secret, TTL_SECS),
        member_config_via(&link.endpoints_toml(), "node-c", &secret, TTL_SECS),
    ];
    let mut nodes: Vec<TestNode> = ["node-a", "node-b", "node-c"]
        .iter()
        .zip(&configs)
        .map(|(n, c)| TestNode::start_member(UID_MIN, UIDS, n, c))
        .collect();
    let carts = ["nodejs-cartridge", "postgresql-cartridge"].map(cartridge_dir);
    for node in &nodes {
        for cart in &carts {
            node.ok(&["cartridge", "install", cart.path().to_str().expect("utf-8")]);
        }
    }
    let app = workspace_root().join("tests/apps/frontend-app");
    let app = app.to_str().expect("utf-8");

    // a stateless app on node-a: another node keeps its deployment
    nodes[0].ok(&["create", "web", "--cartridge", "nodejs", "--node", "node-a"]);
    nodes[0].ok(&["deploy", "web", app]);
    let web = id_of(&nodes[0], "web");
    let kept = wait_replica(&etcd, &[("node-b", &nodes[1]), ("node-c", &nodes[2])], &web);
    eprintln!("web's replica is kept by {kept}");
    // a database on node-a, with a snapshot taken
    nodes[0].ok(&[
        "create",
        "db",
        "--cartridge",
        "postgresql",
        "--node",
        "node-a",
    ]);
    nodes[0].ok(&["start", "db"]);
    nodes[0].psql("db", "create table notes (id int primary key)");
    nodes[0].psql("db", "insert into notes select generate_series(1, 300)");
    let saved = tempfile::tempdir().expect("dir");
    let file = saved.path().join("db.tar.gz");
    let file = file.to_str().expect("utf-8");
    nodes[0].ok(&["snapshot", "db", file]);

    // node-a dies: web answers from another node within the stated time
    let died = Instant::now();
    nodes[0].kill_machine();
    let gone = Instant::now() + Duration::from_secs(30);
    while etcd.get("nodes/alive/node-a").is_some() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("node-a's lease ran out {:?} after it died", died.elapsed());
    let took = wait_answer(&nodes[1], "web-default", Duration::from_secs(30));
    eprintln!(
        "failover: web answered through node-b {:?} after node-a died (lease {TTL_SECS} s)",
        died.elapsed()
    );
    assert!(took <= Duration::from_secs(30));
    let holder = nodes[1].node_of("web").expect("web is listed");
    assert_ne!(holder, "node-a");
    assert_eq!(nodes[2].http_get("web-default", "/").0, 200);
    // the database is lost with its node, and says so, until a snapshot brings it back
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = nodes[2].gear(&["status", "db"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if err.contains("gear lost") {
            assert!(err.contains("node node-a died with it"), "{err}");
            assert!(err.contains("gear restore db FILE"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "db is not reported lost: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    loop {
        let out = nodes[2].gear(&["restore", "db", file]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "db was not restored: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    nodes[1].ok(&["start", "db"]);
    let db_node = nodes[1].node_of("db").expect("db is listed");
    let db_at = if db_node == "node-b" { 1 } else { 2 };
    assert_eq!(
        nodes[db_at].psql("db", "select count(*) from notes"),
        "300\n"
    );

    // node-c cut off from etcd: it stops its gear before its lease runs out,
    // and the gear answers from node-b
    nodes[2].ok(&["create", "api", "--cartridge", "nodejs", "--node", "node-c"]);
    nodes[2].ok(&["deploy", "api", app]);
    let api = id_of(&nodes[2], "api");
    wait_replica(&etcd, &[("node-b", &nodes[1])], &api);
    let cut = Instant::now();
    link.cut();
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS);
    while recorded_state(&nodes[2], &api) == "running" {
        assert!(
            Instant::now() < deadline,
            "node-c still runs api {:?} after it was cut off",
            cut.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "fencing: node-c stopped api {:?} after it was cut off",
        cut.elapsed()
    );
    let took = wait_answer(&nodes[1], "api-default", Duration::from_secs(30));
    eprintln!("failover: api answered through node-b {took:?} after node-c was cut off");
    // while cut off, node-c serves and wakes none of its gears, and says why
    let (code, body) = nodes[2].http_get("api-default", "/");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cut off from its cluster"), "{body}");
    assert_ne!(recorded_state(&nodes[2], &api), "running");
    // back: node-c passes requests to node-b and never starts its copy
    link.mend();
    wait_answer(&nodes[2], "api-default", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(recorded_state(&nodes[2], &api), "running");
    assert_eq!(nodes[2].node_of("api").as_deref(), Some("node-b"));

    for gear in ["web", "db", "api"] {
        nodes[1].ok(&["destroy", gear]);
    }
    nodes.remove(0);
}
