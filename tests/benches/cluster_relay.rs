//! What passing a request between nodes adds: two real nodes joined through a
//! real etcd member on loopback, one gear (the frontend test app, node.js) on
//! node-a. GETs of `/` over one kept-alive connection, either straight to
//! node-a's frontend or to node-b's, which passes each to node-a's frontend;
//! the two paths alternate in rounds of 200 so that the machine's drift
//! touches both alike. Reported: the median, p90 and p99 of each path and the
//! difference of the medians (the target: at most 1 ms at p50).
//!
//! Run as root: `cargo build --release -p gearhost-cli -p gearhost-node
//! -p gearhost-sandbox && cargo bench -p gearhost-tests --bench cluster_relay`.
//! GEARHOST_BENCH_REQUESTS (default 4000 per path). Gear uids 330500-330599.
//! Results: docs/performance.md ("A request through another node").

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gearhost_tests::etcd::{EtcdCluster, start_nodes};
use gearhost_tests::{cartridge_dir, workspace_root};

/// One kept-alive client connection to a frontend, asking for `host`.
struct Client {
    stream: BufReader<TcpStream>,
    request: Vec<u8>,
}

impl Client {
    fn new(frontend: std::net::SocketAddr, host: &str) -> Client {
        let stream = TcpStream::connect(frontend).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Client {
            stream: BufReader::new(stream),
            request: format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
        }
    }

    /// One request and its whole answer (`Content-Length` framed): how long it took.
    fn get(&mut self) -> Duration {
        let start = Instant::now();
        self.stream
            .get_mut()
            .write_all(&self.request)
            .expect("request");
        let mut length = 0usize;
        let mut line = String::new();
        let mut status = None;
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("answer head");
            if status.is_none() {
                status = line.split_whitespace().nth(1).map(str::to_string);
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().expect("length");
            }
        }
        assert_eq!(status.as_deref(), Some("200"), "not answered");
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).expect("body");
        start.elapsed()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if !gearhost_tests::is_root() {
        eprintln!("cluster_relay: needs root (it runs two nodes)");
        std::process::exit(1);
    }
    let requests: usize = std::env::var("GEARHOST_BENCH_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4000);
    let etcd = EtcdCluster::start(1);
    let (_secrets, nodes) = start_nodes(&etcd, &["node-a", "node-b"], (330_500, 100), 10);
    let nodejs = cartridge_dir("nodejs-cartridge");
    for node in &nodes {
        node.ok(&[
            "cartridge",
            "install",
            nodejs.path().to_str().expect("utf-8"),
        ]);
    }
    let app = workspace_root().join("tests/apps/frontend-app");
    nodes[0].ok(&["create", "web", "--cartridge", "nodejs", "--node", "node-a"]);
    nodes[0].ok(&["deploy", "web", app.to_str().expect("utf-8")]);
    let host = "web-default.localhost";
    // node-b routes the gear once it has seen the placement
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes[1].http_get("web-default", "/").0 != 200 {
        assert!(Instant::now() < deadline, "node-b never routed the gear");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut direct = Client::new(nodes[0].frontend, host);
    let mut relayed = Client::new(nodes[1].frontend, host);
    // warm both paths (the app's JIT, the pools)
    for _ in 0..500 {
        direct.get();
        relayed.get();
    }
    let (mut a, mut b) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    while a.len() < requests {
        for _ in 0..200 {
            a.push(direct.get());
        }
        for _ in 0..200 {
            b.push(relayed.get());
        }
    }
    a.sort();
    b.sort();
    println!(
        "requests per path: {requests} (one kept-alive connection each, rounds of 200 alternating)"
    );
    for (name, d) in [("straight to node-a", &a), ("through node-b", &b)] {
        println!(
            "{name:>20}: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms",
            ms(percentile(d, 0.5)),
            ms(percentile(d, 0.9)),
            ms(percentile(d, 0.99))
        );
    }
    println!(
        "added by the second node at p50: {:.3} ms (target: at most 1 ms)",
        ms(percentile(&b, 0.5)) - ms(percentile(&a, 0.5))
    );
    nodes[0].ok(&["destroy", "web"]);
    drop(etcd);
}
