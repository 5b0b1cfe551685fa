//! Adoption benchmark: how long a new node takes to take back the processes of many idle-sized
//! running gears an earlier node left (each a diy app whose `.gear/start` listens and
//! sleeps: one `gearhost-init` and one small perl process). One run against a real node driven by the
//! real `gear`: N gears (GEARHOST_BENCH_GEARS, default 1000) are deployed and running, the
//! node is stopped with SIGTERM and started again, and the new node's own log line `gears
//! resumed` gives the time from the start of its resume to every gear taken back (the
//! checks of each init, the pipes taken with `pidfd_getfd`, supervision resumed). Then the
//! same after SIGKILL, and after `gear node restart`.
//!
//! Run as root: `cargo build -p gearhost-cli -p gearhost-node -p gearhost-sandbox &&
//! cargo bench -p gearhost-tests --bench adopt`. Gear uids 84000-85999. Results:
//! docs/performance.md.

use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, json};

/// Listens on the app's port (a node checks that a started app answers) and waits: a
/// listening socket without `accept`, the smallest app that counts as answering.
const START: &str = "#!/bin/sh\nexec perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalAddr => \"127.0.0.1:$ENV{PORT}\", Listen => 16, ReuseAddr => 1) or die \"listen: $!\"; sleep 1e9'\n";

/// Waits until the node's last resume began after `asked` (unix ms) and finished; returns
/// (how long it took in ms, how many gears it took back), as `gear node check` shows them.
fn wait_resumed(node: &TestNode, asked: u64) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = node.gear(&["node", "check", "--json"]);
        let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let r = &check["resume"];
        if r["done"] == true && r["started_ms"].as_u64().is_some_and(|t| t >= asked) {
            let adopted = r["adopted"].as_array().map_or(0, Vec::len);
            if let Some(started) = r["started"].as_array().filter(|s| !s.is_empty()) {
                eprintln!(
                    "{} gears started again, the first: {}",
                    started.len(),
                    started[0]
                );
            }
            return (r["took_ms"].as_u64().unwrap_or(0), adopted);
        }
        assert!(
            Instant::now() < deadline,
            "the resume did not finish: {check}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        gearhost_tests::is_root(),
        "the adoption benchmark runs a real node: run it as root"
    );
    let gears: usize = std::env::var("GEARHOST_BENCH_GEARS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut node = TestNode::start_with_uids(84000, 2000, "");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", diy.path().to_str().expect("utf-8")]);
    let src = gearhost_tests::apps::tree(&[(".gear/start", START)]);
    let src_path = src.path().to_str().expect("utf-8").to_string();

    let t = Instant::now();
    let threads = 4;
    std::thread::scope(|s| {
        for k in 0..threads {
            let node = &node;
            let src_path = &src_path;
            s.spawn(move || {
                for i in (k..gears).step_by(threads) {
                    let name = format!("a{i}");
                    node.ok(&["create", &name, "--cartridge", "diy"]);
                    node.ok(&["deploy", &name, src_path]);
                }
            });
        }
    });
    let setup = t.elapsed();
    let list = json(&node.ok(&["list", "--json"]));
    let running = list
        .as_array()
        .map_or(0, |a| a.iter().filter(|g| g["state"] == "running").count());
    assert_eq!(running, gears, "every gear runs before the node stops");
    eprintln!(
        "{gears} gears created, deployed and running in {:.1} s",
        setup.as_secs_f64()
    );

    let mut results = Vec::new();
    for how in ["SIGTERM", "SIGKILL", "gear node restart"] {
        let asked = unix_ms();
        let wall = Instant::now();
        match how {
            "SIGTERM" => {
                node.stop_node("TERM");
                node.start_again();
            }
            "SIGKILL" => {
                node.stop_node("KILL");
                node.start_again();
            }
            _ => {
                node.ok(&["node", "restart"]);
            }
        }
        let (ms, adopted) = wait_resumed(&node, asked);
        let wall = wall.elapsed();
        assert_eq!(adopted, gears, "every gear taken back after {how}");
        eprintln!(
            "after {how}: {adopted} gears taken back in {ms} ms (stop to resumed: {:.0} ms)",
            wall.as_secs_f64() * 1000.0
        );
        results.push((how, ms, wall));
    }

    println!("\n| how the node restarted | gears taken back | resume | stop to resumed |");
    println!("|---|---|---|---|");
    for (how, ms, wall) in &results {
        println!(
            "| {how} | {gears} | {ms} ms | {:.0} ms |",
            wall.as_secs_f64() * 1000.0
        );
    }
    let t = Instant::now();
    node.ok(&["node", "stop", "--gears"]);
    eprintln!("stopped every gear in {:.1} s", t.elapsed().as_secs_f64());
    node.start_again();
    for i in 0..gears {
        node.ok(&["destroy", &format!("a{i}")]);
    }
}
