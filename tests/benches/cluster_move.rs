//! What cluster operations cost: two real nodes joined through a real etcd
//! member on loopback.
//!
//! - **Moves**: a small web app (the frontend test app, node.js) moved back
//!   and forth GEARHOST_BENCH_MOVES times (default 6), and a PostgreSQL gear
//!   holding GEARHOST_BENCH_PG_MB MiB of rows (default 100) moved there and
//!   back; each move timed from the command to its answer (the gear runs on
//!   the other node then), with the bytes that travelled.
//! - **etcd writes per operation**: the cluster's revision (raised by one by
//!   every write transaction) before and after each kind of operation, and
//!   the keys written meanwhile as etcd's history has them; the nodes' own
//!   liveness beats are left out.
//!
//! Run as root: `cargo build --release -p gearhost-cli -p gearhost-node
//! -p gearhost-sandbox && cargo bench -p gearhost-tests --bench cluster_move`.
//! Gear uids 330600-330699. Results: docs/performance.md ("Moves, and what a
//! cluster writes").

use std::time::Instant;

use gearhost_tests::etcd::{EtcdCluster, start_nodes};
use gearhost_tests::{TestNode, cartridge_dir, json, workspace_root};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Moves `gear` to `to` through `via`: (seconds, bytes).
fn timed_move(via: &TestNode, gear: &str, to: &str) -> (f64, u64) {
    let at = Instant::now();
    let moved = json(&via.ok(&["move", gear, to, "--json"]));
    (
        at.elapsed().as_secs_f64(),
        moved["bytes"].as_u64().unwrap_or(0),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What `op` wrote to etcd: (write transactions, keys written), the nodes'
/// own liveness beats (each a transaction of one key) left out.
fn writes(etcd: &EtcdCluster, op: impl FnOnce()) -> (i64, usize) {
    let before = etcd.revision();
    op();
    // the history read first, the revision right after it: every write the
    // revision counts is in the history
    let changes = etcd.changes_since(before);
    let after = etcd.revision();
    let beats = changes
        .iter()
        .filter(|(_, key)| key.starts_with("nodes/alive/"))
        .count();
    let keys = changes.len() - beats;
    (after - before - beats as i64, keys)
}

/// Waits until `gear`'s placement names the node that keeps its replica.
fn wait_replicated(etcd: &EtcdCluster, via: &TestNode, gear: &str) {
    let id = json(&via.ok(&["show", gear, "--json"]))["id"]
        .as_str()
        .expect("id")
        .to_string();
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !etcd
        .get(&format!("gears/{id}"))
        .is_some_and(|p| json(&p)["replica"].is_string())
    {
        assert!(Instant::now() < deadline, "{gear} got no replica");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn main() {
    if !gearhost_tests::is_root() {
        eprintln!("cluster_move: needs root (it runs two nodes)");
        std::process::exit(1);
    }
    let moves = env_or("GEARHOST_BENCH_MOVES", 6).max(2);
    let pg_mb = env_or("GEARHOST_BENCH_PG_MB", 100);
    let etcd = EtcdCluster::start(1);
    let (_secrets, nodes) = start_nodes(&etcd, &["node-a", "node-b"], (330_600, 100), 10);
    let carts = ["nodejs-cartridge", "postgresql-cartridge"].map(cartridge_dir);
    for node in &nodes {
        for cart in &carts {
            node.ok(&["cartridge", "install", cart.path().to_str().expect("utf-8")]);
        }
    }
    let app = workspace_root().join("tests/apps/frontend-app");
    let app = app.to_str().expect("utf-8");

    // etcd writes of the everyday operations
    let create = writes(&etcd, || {
        nodes[0].ok(&["create", "web", "--cartridge", "nodejs", "--node", "node-a"]);
    });
    let deploy = writes(&etcd, || {
        nodes[0].ok(&["deploy", "web", app]);
        wait_replicated(&etcd, &nodes[0], "web");
    });
    let alias = writes(&etcd, || {
        nodes[0].ok(&["alias", "add", "web", "www.example.test"]);
    });
    let stop_start = writes(&etcd, || {
        nodes[0].ok(&["stop", "web"]);
        nodes[0].ok(&["start", "web"]);
    });

    // the small app, back and forth
    let mut small = Vec::new();
    let mut small_bytes = 0;
    let mut move_writes = Vec::new();
    for i in 0..moves {
        let (to, via) = if i % 2 == 0 {
            ("node-b", &nodes[0])
        } else {
            ("node-a", &nodes[1])
        };
        let mut took = (0.0, 0);
        move_writes.push(writes(&etcd, || {
            took = timed_move(via, "web", to);
            wait_replicated(&etcd, via, "web");
        }));
        small.push(took.0);
        small_bytes = took.1;
    }
    let destroy = writes(&etcd, || {
        nodes[0].ok(&["destroy", "web"]);
    });

    // PostgreSQL with its data
    nodes[0].ok(&[
        "create",
        "db",
        "--cartridge",
        "postgresql",
        "--node",
        "node-a",
    ]);
    nodes[0].ok(&["start", "db"]);
    nodes[0].psql("db", "create table filler (id int primary key, body text)");
    let rows = pg_mb * 1024 * 1024 / 1100;
    for chunk in 0..rows.div_ceil(20_000) {
        let (from, to) = (chunk * 20_000 + 1, ((chunk + 1) * 20_000).min(rows));
        nodes[0].psql("db",
            &format!(
                "insert into filler select g, repeat(md5(g::text), 32) from generate_series({from}, {to}) g"
            ),
        );
    }
    let size: u64 = nodes[0]
        .psql("db", "select pg_database_size(current_database())")
        .trim()
        .parse()
        .expect("a size");
    let there = timed_move(&nodes[0], "db", "node-b");
    let back = timed_move(&nodes[1], "db", "node-a");
    assert_eq!(
        nodes[0].psql("db", "select count(*) from filler").trim(),
        rows.to_string()
    );
    nodes[0].ok(&["destroy", "db"]);

    println!("moves of a small web app (node.js, {small_bytes} bytes of archive), {moves} moves:");
    println!(
        "  median {:.3} s, fastest {:.3} s, slowest {:.3} s",
        median(small.clone()),
        small.iter().copied().fold(f64::INFINITY, f64::min),
        small.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "PostgreSQL gear with {:.1} MiB in its database ({rows} rows):",
        size as f64 / 1048576.0
    );
    println!(
        "  to node-b {:.3} s ({} bytes of archive), back {:.3} s ({} bytes)",
        there.0, there.1, back.0, back.1
    );
    println!("etcd writes (write transactions, keys written; the nodes' liveness beats left out):");
    for (what, (txns, keys)) in [
        ("create", create),
        ("deploy (with its replica recorded)", deploy),
        ("alias add", alias),
        ("stop + start", stop_start),
        ("destroy", destroy),
    ] {
        println!("  {what}: {txns} transactions, {keys} keys");
    }
    println!("  move, each with its new replica recorded (transactions, keys): {move_writes:?}");
}
