//! End to end: three real nodes (`gear node run`, each with its own state
//! directory, API socket, frontend port and cgroup subtree) joined through a
//! real three-member etcd cluster (Debian's `etcd-server`) on loopback. Each
//! node lists the others with their state and load; fifty creates spread
//! over the three nodes at once never give one uid twice; a name taken on one
//! node is refused on another, naming where it lives, and is free again once
//! the gear is destroyed; one etcd member killed changes nothing; a node
//! killed shows as down once its lease runs out, and takes its lease back
//! when it comes back; a second node under a taken name is refused.
//! Gear uids 88400-88599 (one district shared by the three nodes).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gearhost_tests::etcd::{EtcdCluster, secret_file};
use gearhost_tests::{TestNode, cartridge_dir, json, privileged};

const UID_MIN: u32 = 88_400;
const UIDS: u32 = 200;
/// Lease time to live in these tests: a killed node counts as down after it.
const TTL_SECS: u64 = 6;

/// The `[cluster]` table of node `name`.
fn cluster_config(etcd: &EtcdCluster, name: &str, secret: &std::path::Path) -> String {
    gearhost_tests::etcd::member_config(etcd, name, secret, TTL_SECS)
}

/// `gear node list --json` through `node`, by name: (state, this, gears).
fn node_list(node: &TestNode) -> Vec<(String, String, bool, Option<u64>)> {
    let v = json(&node.ok(&["node", "list", "--json"]));
    v.as_array()
        .expect("a list")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().expect("name").to_string(),
                n["state"].as_str().expect("state").to_string(),
                n["this"].as_bool().expect("this"),
                n["load"]["gears"].as_u64(),
            )
        })
        .collect()
}

/// Waits until `node`'s list shows `name` in `state`.
fn wait_state(node: &TestNode, name: &str, state: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if node_list(node)
            .iter()
            .any(|(n, s, _, _)| n == name && s == state)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{name} not {state} within {within:?}: {:?}",
            node_list(node)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The uids of the gears node `name` holds, as `gear list` through `node` shows them.
fn uids_on(node: &TestNode, name: &str) -> Vec<u64> {
    json(&node.ok(&["list", "--json"]))
        .as_array()
        .expect("a list")
        .iter()
        .filter(|g| g["node"] == name)
        .map(|g| g["uid"].as_u64().expect("uid"))
        .collect()
}

#[test]
fn three_nodes_share_one_district_through_etcd() {
    if !privileged("runs three nodes and an etcd cluster") {
        return;
    }
    let mut etcd = EtcdCluster::start(3);
    let secrets = tempfile::tempdir().expect("dir");
    let secret = secret_file(secrets.path());
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes: Vec<TestNode> = names
        .iter()
        .map(|n| TestNode::start_member(UID_MIN, UIDS, n, &cluster_config(&etcd, n, &secret)))
        .collect();
    let hello = cartridge_dir("hello-cartridge");
    for node in &nodes {
        node.ok(&[
            "cartridge",
            "install",
            hello.path().to_str().expect("utf-8"),
        ]);
    }

    // every node sees the three, itself marked
    for (i, node) in nodes.iter().enumerate() {
        let list = node_list(node);
        assert_eq!(list.len(), 3, "{list:?}");
        for (name, state, this, _) in &list {
            assert_eq!(state, "up", "{list:?}");
            assert_eq!(*this, name == names[i], "{list:?}");
        }
    }

    // fifty creates at once, each asked of one node for another (`--node`):
    // forwarded creates, fifty different uids, each gear where it was asked
    std::thread::scope(|s| {
        for k in 0..50usize {
            let (entry, home) = (&nodes[(k + 1) % 3], names[k % 3]);
            s.spawn(move || {
                let name = format!("g{k}");
                entry.ok(&["create", &name, "--cartridge", "hello", "--node", home]);
            });
        }
    });
    // `gear list` through any one node lists every node's gears, each with its node
    let all: Vec<u64> = names.iter().flat_map(|n| uids_on(&nodes[1], n)).collect();
    assert_eq!(all.len(), 50, "{all:?}");
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 50, "a uid was given twice: {all:?}");
    assert!(
        distinct
            .iter()
            .all(|u| (u64::from(UID_MIN)..u64::from(UID_MIN + UIDS)).contains(u)),
        "{distinct:?}"
    );
    let held: Vec<usize> = names.iter().map(|n| uids_on(&nodes[0], n).len()).collect();
    assert_eq!(held, [17, 17, 16], "gears not where --node put them");
    // without --node the policy places: six creates through node-c even the nodes out
    for k in 0..6 {
        nodes[2].ok(&["create", &format!("p{k}"), "--cartridge", "hello"]);
    }
    let held: Vec<usize> = names.iter().map(|n| uids_on(&nodes[2], n).len()).collect();
    let (least, most) = (held.iter().min(), held.iter().max());
    assert!(
        held.iter().sum::<usize>() == 56 && most.zip(least).is_some_and(|(m, l)| m - l <= 1),
        "placement did not even the nodes out: {held:?}"
    );
    // the load the nodes publish counts their gears (published at their next beat)
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS * 2);
    loop {
        let counted: u64 = node_list(&nodes[0]).iter().filter_map(|n| n.3).sum();
        if counted == 56 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "published loads count {counted} gears, not 56"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // a member's metrics say how its lease stands
    let metrics = nodes[0].metrics();
    assert_eq!(
        metrics.get("gearhost_cluster_fenced"),
        Some(&0.0),
        "{metrics:?}"
    );
    assert!(
        metrics
            .get("gearhost_cluster_lease_confirmed_seconds")
            .is_some_and(|s| *s < TTL_SECS as f64),
        "{metrics:?}"
    );

    // any node answers for any gear: g1 lives on node-b (placed there),
    // and is deployed through node-a, configured through node-c, started
    // through node-c and seen running through node-a
    let src = tempfile::tempdir().expect("sources");
    std::fs::write(
        src.path().join("index.html"),
        "hello from a forwarded deploy\n",
    )
    .expect("write");
    nodes[0].ok(&["deploy", "g1", src.path().to_str().expect("utf-8")]);
    nodes[2].ok(&["env", "g1", "set", "GREETING=hi"]);
    let shown = json(&nodes[0].ok(&["show", "g1", "--json"]));
    assert!(
        shown["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|k| k == "GREETING"),
        "{shown}"
    );
    assert_eq!(
        shown["deployments"].as_array().map(Vec::len),
        Some(1),
        "{shown}"
    );
    nodes[2].ok(&["start", "g1"]);
    let status = json(&nodes[0].ok(&["status", "g1", "--json"]));
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(
        json(&nodes[1].ok(&["status", "g1", "--json"]))["uid"],
        status["uid"],
        "the owner and a forwarding node see one gear"
    );
    nodes[0].ok(&["stop", "g1"]);
    // a snapshot comes back through a node that does not hold the gear, and
    // a restore goes in through another
    let saved = tempfile::tempdir().expect("dir");
    let file = saved.path().join("g1.tar.gz");
    let file = file.to_str().expect("utf-8");
    nodes[0].ok(&["snapshot", "g1", file]);
    let size = std::fs::metadata(file).expect("the snapshot file").len();
    assert!(size > 100, "a snapshot of {size} bytes");
    nodes[2].ok(&["env", "g1", "set", "GREETING=changed"]);
    nodes[2].ok(&["restore", "g1", file]);
    let shown = json(&nodes[2].ok(&["show", "g1", "--json"]));
    assert_eq!(shown["uid"], status["uid"], "{shown}");
    let env = nodes[0].ok(&["env", "g1", "list"]);
    assert!(
        env.contains("GREETING=hi"),
        "the restore did not bring the env back: {env}"
    );
    // a command that hands the node open files cannot travel: said clearly
    let out = nodes[0].gear(&["exec", "g1", "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run it against node node-b"), "{err}");

    // a name is the cluster's: taken on node-a, refused on node-b with where it lives
    let out = nodes[1].gear(&["create", "g0", "--cartridge", "hello", "--node", "node-b"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("node-a"),
        "{err}"
    );
    // and free again once destroyed
    nodes[0].ok(&["destroy", "g0"]);
    nodes[1].ok(&["create", "g0", "--cartridge", "hello"]);

    // one etcd member killed: creates and lists go on, and no node is seen
    // leaving (the heartbeats find the other members before a lease runs out)
    etcd.kill(0);
    nodes[2].ok(&["create", "after-etcd-loss", "--cartridge", "hello"]);
    for _ in 0..(TTL_SECS * 2 * 5) {
        let list = node_list(&nodes[2]);
        assert!(
            list.len() == 3 && list.iter().all(|n| n.1 == "up"),
            "a node was seen leaving after one etcd member died: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // a node killed shows as down once its lease runs out; back, it is up again
    let mut c = nodes.pop().expect("node-c");
    c.stop_node("KILL");
    let took = wait_state(
        &nodes[0],
        "node-c",
        "down",
        Duration::from_secs(TTL_SECS * 4),
    );
    eprintln!("node-c counted down {took:?} after its death (lease {TTL_SECS} s)");
    c.start_again();
    wait_state(&nodes[0], "node-c", "up", Duration::from_secs(10));
    nodes.push(c);

    // a second node under a live node's name is refused, saying why
    let dup = tempfile::tempdir().expect("dir");
    let config = cluster_config(&etcd, "node-a", &secret);
    let out = std::process::Command::new(gearhost_tests::gear_bin())
        .args(["node", "run", "--config"])
        .arg(write_config(dup.path(), &config))
        .output()
        .expect("run a duplicate node");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another live node") && err.contains("node-a"),
        "{err}"
    );

    // a node restarted at once takes its own lease back: never counted down
    let before =
        json(&std::fs::read_to_string(nodes[1].state_dir().join("cluster-lease")).expect("lease"));
    nodes[1].kill9_and_restart();
    let after =
        json(&std::fs::read_to_string(nodes[1].state_dir().join("cluster-lease")).expect("lease"));
    assert_eq!(before, after, "the restarted node took a new lease");
    wait_state(&nodes[0], "node-b", "up", Duration::from_secs(5));

    for node in &nodes {
        for g in json(&node.ok(&["list", "--json"]))
            .as_array()
            .expect("list")
        {
            node.ok(&["destroy", g["name"].as_str().expect("name")]);
        }
    }
}

/// A node configuration of its own in `dir` (a duplicate node that must not start).
fn write_config(dir: &std::path::Path, cluster: &str) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!(
            "schema = 1\nstate-dir = \"{state}\"\nsocket = \"{sock}\"\nfrontend = \"127.0.0.1:0\"\n{cluster}\n[gears]\nuid-min = {UID_MIN}\nuid-max = {max}\ncgroup-subtree = \"gearhost-test-{UID_MIN}-dup\"\n",
            state = dir.join("state").display(),
            sock = dir.join("node.sock").display(),
            max = UID_MIN + UIDS - 1,
        ),
    )
    .expect("config");
    path
}

#[test]
fn a_node_without_etcd_does_not_start_and_says_why() {
    if !privileged("runs a node") {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let secret = secret_file(dir.path());
    let port = gearhost_tests::free_port();
    let cluster = format!(
        "[cluster]\netcd = [\"http://127.0.0.1:{port}\"]\nnode-name = \"lonely\"\nlisten = \"127.0.0.1:1\"\nsecret-file = \"{}\"\n",
        secret.display()
    );
    let out = std::process::Command::new(gearhost_tests::gear_bin())
        .args(["node", "run", "--config"])
        .arg(write_config(dir.path(), &cluster))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot join the cluster") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    // a secret others may read is refused too
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = std::process::Command::new(gearhost_tests::gear_bin())
        .args(["node", "run", "--config"])
        .arg(write_config(dir.path(), &cluster))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
}
