//! Image gears against Podman (Debian's `podman`, with runc), side by side in one run, with the same
//! image from the same registry on loopback (Debian's `docker-registry`):
//!
//! - **start to first answer**: a stopped image gear, `gear start` until the frontend answers
//!   `GET /` with 200, against `podman run -d --network host` of the pulled image until the
//!   app answers on the host's loopback. The gear runs with every layer (its own namespaces
//!   and uid, cgroup, seccomp, Landlock; SELinux where enabled) and is reached through the
//!   frontend; the Podman container shares the host's network (Podman's fastest setup: no
//!   network namespace or port forwarding) and runs as root, as the image asks.
//! - **pull and unpack**: an image of two layers (busybox, and Python's standard library from
//!   the host, 1,501 entries here) pulled into a store that lacks it: `gear image pull` against
//!   `podman pull`.
//!
//! Rounds alternate between the two, the order swapping each round. Run as root:
//! `cargo build --release -p gearhost-cli -p gearhost-node -p gearhost-sandbox &&
//! scripts/build-cartridges && cargo bench -p gearhost-tests --bench images`.
//! Environment: `GEARHOST_BENCH_RUNS` (start rounds, default 40), `GEARHOST_BENCH_PULLS`
//! (pull rounds, default 5). Gear uids 86800-86899. Results: docs/performance.md.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::images::{
    GZIP_LAYER, TAR_LAYER, busybox_site_layer, gzip, layout, push, site_config, site_page_layer,
};
use gearhost_tests::registry::Registry;
use gearhost_tests::{TestNode, cartridge_dir, free_port};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `GET /` on `addr` with `host`: whether it answered 200.
fn answers(addr: &str, host: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Polls until `addr` answers, every 2 ms for at most 30 s.
fn until_answering(addr: &str, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers(addr, host) {
        assert!(Instant::now() < deadline, "{addr} ({host}) never answered");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Podman with runc: crun refuses this machine's hybrid cgroup layout (v1 controllers beside
/// a cgroup2 mount with controllers), runc takes it.
fn podman(args: &[&str]) -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]).args(args);
    c
}

fn summary(name: &str, ms: &mut [f64]) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let p95 = ms[(ms.len() * 95 / 100).min(ms.len() - 1)];
    println!(
        "{name:<34} median {median:>8.2} ms   p95 {p95:>8.2} ms   min {:>8.2} ms   ({} runs)",
        ms[0],
        ms.len()
    );
    (median, p95)
}

/// Python's standard library of this machine as one gzip layer under `usr/lib/python3/`.
fn stdlib_layer() -> Vec<u8> {
    let src = [
        "/usr/lib/python3.11",
        "/usr/lib/python3.12",
        "/usr/lib/python3.13",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_dir())
    .expect("python3's standard library");
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all("usr/lib/python3", src).expect("tar");
    gzip(&b.into_inner().expect("tar"))
}

fn main() {
    assert!(gearhost_tests::is_root(), "the image benchmark needs root");
    assert!(
        Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "podman is missing (scripts/setup installs it)"
    );
    let runs = env_or("GEARHOST_BENCH_RUNS", 40);
    let pulls = env_or("GEARHOST_BENCH_PULLS", 5);
    let registry = Registry::start();
    let port = free_port();
    let dir = tempfile::tempdir().expect("layout");
    layout(
        dir.path(),
        "1",
        site_config(port),
        &[
            (GZIP_LAYER, busybox_site_layer()),
            (TAR_LAYER, site_page_layer("1")),
        ],
    );
    let site = format!("{}/bench/site:1", registry.addr);
    push(dir.path(), "1", &site);
    let big_dir = tempfile::tempdir().expect("layout");
    // a configuration of its own: Podman names an image by its configuration's digest
    let mut big_config = site_config(port);
    big_config["Labels"] = serde_json::json!({"bench": "stdlib"});
    layout(
        big_dir.path(),
        "1",
        big_config,
        &[
            (GZIP_LAYER, busybox_site_layer()),
            (GZIP_LAYER, stdlib_layer()),
        ],
    );
    let big = format!("{}/bench/stdlib:1", registry.addr);
    push(big_dir.path(), "1", &big);

    let node = TestNode::start(86800, "");
    let cartridge = cartridge_dir("image-cartridge");
    node.ok(&["cartridge", "install", &cartridge.path().to_string_lossy()]);
    node.ok(&["create", "web", "--image", &site, "--insecure"]);
    let frontend = node.frontend.to_string();
    let host = format!("web-default.localhost:{}", node.frontend.port());
    until_answering(&frontend, &host);
    run(podman(&["pull", "--quiet", "--tls-verify=false", &site]).stdout(Stdio::null()));
    let local = format!("127.0.0.1:{port}");

    let gear_start = |node: &TestNode| -> f64 {
        node.ok(&["stop", "web"]);
        let t = Instant::now();
        node.ok(&["start", "web"]);
        until_answering(&frontend, &host);
        t.elapsed().as_secs_f64() * 1e3
    };
    let podman_start = || -> f64 {
        let t = Instant::now();
        run(podman(&[
            "run",
            "-d",
            "--rm",
            "--network",
            "host",
            // Podman's default limits (open files, processes) are above this machine's hard
            // limits, which root may not raise here: the gears' open-file limit instead
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
            "--name",
            "bench-site",
            &site,
        ])
        .stdout(Stdio::null()));
        until_answering(&local, "localhost");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        run(podman(&["rm", "-f", "-t", "0", "bench-site"]).stdout(Stdio::null()));
        ms
    };
    // one of each first, not counted
    gear_start(&node);
    podman_start();
    let (mut gear, mut pod) = (Vec::new(), Vec::new());
    for round in 0..runs {
        if round % 2 == 0 {
            gear.push(gear_start(&node));
            pod.push(podman_start());
        } else {
            pod.push(podman_start());
            gear.push(gear_start(&node));
        }
    }
    println!("start to first answer ({runs} rounds)");
    let (g, gp) = summary("gear start (image gear)", &mut gear);
    let (p, pp) = summary("podman run --network host", &mut pod);
    println!(
        "ratio gear/podman: median {:.2}, p95 {:.2} (target: at most 0.5)",
        g / p,
        gp / pp
    );

    let (mut gear_pull, mut pod_pull) = (Vec::new(), Vec::new());
    for round in 0..pulls {
        let gear_once = || {
            node.ok(&["image", "prune"]);
            let t = Instant::now();
            node.ok(&["image", "pull", &big, "--insecure"]);
            t.elapsed().as_secs_f64() * 1e3
        };
        let podman_once = || {
            let _ = podman(&["rmi", "-f", &big]).output();
            let t = Instant::now();
            run(podman(&["pull", "--quiet", "--tls-verify=false", &big]).stdout(Stdio::null()));
            t.elapsed().as_secs_f64() * 1e3
        };
        if round % 2 == 0 {
            gear_pull.push(gear_once());
            pod_pull.push(podman_once());
        } else {
            pod_pull.push(podman_once());
            gear_pull.push(gear_once());
        }
    }
    println!("pull and unpack of busybox + Python's standard library ({pulls} rounds)");
    let (g, _) = summary("gear image pull", &mut gear_pull);
    let (p, _) = summary("podman pull", &mut pod_pull);
    println!("ratio gear/podman: median {:.2}", g / p);
    let _ = podman(&["rmi", "-f", &big, &site]).output();
    node.ok(&["destroy", "web"]);
}
