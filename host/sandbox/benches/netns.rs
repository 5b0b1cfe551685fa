//! The cost of a gear's network namespace setting as the node holds more namespaces: the
//! write of `ip_unprivileged_port_start` through the node's `/proc` against the same write
//! through a procfs instance of its own (what `netns::create` does), with 0, 1,000 and N
//! namespaces held (`GEARHOST_BENCH_NAMESPACES`, default 10,000), each of which had the
//! setting written through `/proc` as a node's gears had before.
//!
//! `cargo bench -p gearhost-sandbox --bench netns` (as root). Results: docs/performance.md
//! ("Ten thousand gears").

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use gearhost_sandbox::netns::allow_low_ports_for_bench;
use nix::sched::{CloneFlags, unshare};

/// In a thread of its own: a new network namespace, `before` run in it, then the time `timed`
/// takes in it; the namespace is kept (its descriptor) when `keep`.
fn in_new_namespace(
    before: impl FnOnce() + Send + 'static,
    timed: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    keep: bool,
) -> (Duration, Option<OwnedFd>) {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("a network namespace (run as root)");
        before();
        let started = Instant::now();
        timed().expect("the setting written");
        let took = started.elapsed();
        let fd = keep
            .then(|| OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("ns")));
        (took, fd)
    })
    .join()
    .expect("thread")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("GEARHOST_BENCH_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut held: Vec<OwnedFd> = Vec::new();
    println!("| namespaces held | through /proc | through its own procfs |");
    println!("| --- | --- | --- |");
    for mark in [0, 1_000, n] {
        while held.len() < mark {
            let (_, fd) = in_new_namespace(|| {}, || allow_low_ports_for_bench(false), true);
            held.extend(fd);
        }
        let samples = 41;
        let node_proc: Vec<Duration> = (0..samples)
            .map(|_| in_new_namespace(|| {}, || allow_low_ports_for_bench(false), false).0)
            .collect();
        let own_proc: Vec<Duration> = (0..samples)
            .map(|_| in_new_namespace(|| {}, || allow_low_ports_for_bench(true), false).0)
            .collect();
        println!(
            "| {mark} | {:.3} ms | {:.3} ms |",
            median(node_proc).as_secs_f64() * 1e3,
            median(own_proc).as_secs_f64() * 1e3
        );
    }
}
