//! What a gear costs in memory, all in, as it sleeps (stopped), as it is frozen and as it runs:
//! N trivial gears (GEARHOST_BENCH_GEARS, default 200; a diy app whose `.gear/start` is one
//! small perl process listening on its port) on a real node driven by the real `gear`.
//!
//! Every byte is counted by a cgroup, so nothing else running on the machine blurs it: the node
//! is moved into a memory cgroup of its own when it starts (its heap, the kernel objects it
//! makes for gears — network namespaces, sockets, directories —, the page cache of the state it
//! writes, and the gear helpers it prepares before they join a gear), and each gear's processes
//! are in the gear's own cgroup. Per gear: the growth of the node's cgroup divided by N, and
//! the gears' cgroups summed and divided by N, at each stage.
//!
//! Run as root on cgroup v1 or v2: `cargo build --release -p gearhost-cli -p gearhost-node
//! -p gearhost-sandbox && cargo bench -p gearhost-tests --bench gear_memory`. Gear uids
//! 320000-320999. Results: docs/performance.md ("What a gear costs").

use std::path::{Path, PathBuf};

use gearhost_tests::{TestNode, cartridge_dir, json};

const START: &str = "#!/bin/sh\nexec perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalAddr => \"127.0.0.1:$ENV{PORT}\", Listen => 16, ReuseAddr => 1) or die \"listen: $!\"; while (my $c = $s->accept) { print $c \"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok\"; close $c }'\n";

/// A memory cgroup's directory, v1 or v2.
struct Memcg {
    dir: PathBuf,
    v2: bool,
}

/// What a memory cgroup holds, in bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// Everything charged.
    total: u64,
    /// Of it, page cache (file pages; reclaimable).
    cache: u64,
    /// Of it, kernel memory (slab, stacks, page tables, sockets).
    kernel: u64,
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, o: Usage) -> Usage {
        Usage {
            total: self.total.saturating_sub(o.total),
            cache: self.cache.saturating_sub(o.cache),
            kernel: self.kernel.saturating_sub(o.kernel),
        }
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            total: self.total + o.total,
            cache: self.cache + o.cache,
            kernel: self.kernel + o.kernel,
        }
    }
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn stat_field(dir: &Path, name: &str) -> u64 {
    std::fs::read_to_string(dir.join("memory.stat"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

impl Memcg {
    /// Where memory cgroups live here: the v1 memory hierarchy, or cgroup2.
    fn root() -> (PathBuf, bool) {
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        if v1.join("memory.usage_in_bytes").exists() {
            (v1, false)
        } else {
            (PathBuf::from("/sys/fs/cgroup"), true)
        }
    }

    fn at(dir: PathBuf, v2: bool) -> Memcg {
        Memcg { dir, v2 }
    }

    fn usage(&self) -> Usage {
        if self.v2 {
            Usage {
                total: read_u64(&self.dir.join("memory.current")),
                cache: stat_field(&self.dir, "file"),
                kernel: stat_field(&self.dir, "kernel"),
            }
        } else {
            Usage {
                total: read_u64(&self.dir.join("memory.usage_in_bytes")),
                cache: stat_field(&self.dir, "total_cache"),
                kernel: read_u64(&self.dir.join("memory.kmem.usage_in_bytes")),
            }
        }
    }
}

fn kib(b: u64) -> f64 {
    b as f64 / 1024.0
}

fn per_gear(label: &str, node: Usage, gears: Usage, n: usize) {
    let n = n.max(1) as u64;
    eprintln!(
        "{label}: node +{:.1} KiB (cache {:.1}, kernel {:.1}), gear cgroups {:.1} KiB (cache {:.1}, kernel {:.1}); all in {:.1} KiB per gear",
        kib(node.total / n),
        kib(node.cache / n),
        kib(node.kernel / n),
        kib(gears.total / n),
        kib(gears.cache / n),
        kib(gears.kernel / n),
        kib((node.total + gears.total) / n),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        gearhost_tests::is_root(),
        "the gear memory benchmark runs a real node: run it as root"
    );
    let n: usize = std::env::var("GEARHOST_BENCH_GEARS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let node = TestNode::start_with_uids(320_000, (n + 50) as u32, "");
    let (root, v2) = Memcg::root();
    // the node's own memory cgroup: what it allocates from here on is charged to it
    let own = root.join(format!("gearhost-bench-node-{}", std::process::id()));
    std::fs::create_dir_all(&own).expect("the node's memory cgroup");
    std::fs::write(own.join("cgroup.procs"), node.pid().to_string()).expect("move the node");
    let node_cg = Memcg::at(own.clone(), v2);
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", diy.path().to_str().expect("utf-8")]);
    let src = gearhost_tests::apps::tree(&[(".gear/start", START)]);
    let src_path = src.path().to_str().expect("utf-8").to_string();
    let base = node_cg.usage();

    let in_parallel = |f: &(dyn Fn(usize) + Sync)| {
        std::thread::scope(|s| {
            for k in 0..4 {
                s.spawn(move || {
                    for i in (k..n).step_by(4) {
                        f(i);
                    }
                });
            }
        });
    };
    let gear_cgroups = || {
        let ids: Vec<String> = json(&node.ok(&["list", "--json"]))
            .as_array()
            .expect("list")
            .iter()
            .map(|g| g["id"].as_str().expect("id").to_string())
            .collect();
        ids.iter()
            .map(|id| Memcg::at(root.join(&node.subtree).join(id), v2).usage())
            .fold(Usage::default(), |a, b| a + b)
    };

    in_parallel(&|i| drop(node.ok(&["create", &format!("g{i}"), "--cartridge", "diy"])));
    let created = node_cg.usage();
    per_gear("created, never started", created - base, gear_cgroups(), n);

    in_parallel(&|i| drop(node.ok(&["deploy", &format!("g{i}"), &src_path])));
    let running = node_cg.usage();
    let running_gears = gear_cgroups();
    per_gear("running", running - base, running_gears, n);

    in_parallel(&|i| drop(node.ok(&["idle", &format!("g{i}")])));
    let frozen = node_cg.usage();
    per_gear("frozen", frozen - base, gear_cgroups(), n);

    in_parallel(&|i| drop(node.ok(&["idle", "--stop", &format!("g{i}")])));
    let stopped = node_cg.usage();
    per_gear("stopped (idle)", stopped - base, gear_cgroups(), n);

    // gone again: the node's cgroup is removed once the node has left it
    in_parallel(&|i| drop(node.ok(&["destroy", &format!("g{i}")])));
    drop(node);
    let _ = std::fs::remove_dir(&own);
}
