//! The frontend's counters ([`Stats`], one per gear and one for requests no
//! gear got) and the node's metrics in the Prometheus text format, served on
//! the operator's own address.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use gearhost_http::fields::facts;

use super::Frontend;
use super::headers::MAX_HEAD;
use super::pages::page;
use super::wire::{self, ReadBuf, RequestHead};
use crate::node::Node;
use gearhost_sys::lock::lock;

/// Upper bounds of the request-latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Why the frontend answered a request itself instead of a gear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No gear answers to the host name (404).
    UnknownHost,
    /// The request names no host, or uses a method the frontend does not
    /// forward (400, 405).
    BadRequest,
    /// The gear is stopped, failed or starting (503).
    NotRunning,
    /// The gear was idle and could not be woken (503).
    WakeFailed,
    /// The gear did not accept a connection or broke it (502).
    BadGateway,
    /// The gear did not answer in time (504).
    Timeout,
    /// The request body is larger than the node allows (413).
    TooLarge,
    /// A plain-HTTP request for a gear that asks for HTTPS (308).
    Redirected,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::UnknownHost,
        Refusal::BadRequest,
        Refusal::NotRunning,
        Refusal::WakeFailed,
        Refusal::BadGateway,
        Refusal::Timeout,
        Refusal::TooLarge,
        Refusal::Redirected,
    ];

    fn name(self) -> &'static str {
        match self {
            Refusal::UnknownHost => "unknown_host",
            Refusal::BadRequest => "bad_request",
            Refusal::NotRunning => "not_running",
            Refusal::WakeFailed => "wake_failed",
            Refusal::BadGateway => "bad_gateway",
            Refusal::Timeout => "timeout",
            Refusal::TooLarge => "too_large",
            Refusal::Redirected => "redirected",
        }
    }
}

/// Request counters of one gear (or of the node, for requests no gear got).
#[derive(Debug, Default)]
pub struct Stats {
    /// Responses by status class: 1xx .. 5xx.
    status: [AtomicU64; 5],
    /// Answers the frontend gave itself, by [`Refusal`].
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Latency histogram (time to the response head), cumulative per bucket
    /// when rendered; stored per bucket, the last one is `+Inf`.
    latency: [AtomicU64; 13],
    /// Sum of latencies, microseconds.
    latency_us: AtomicU64,
    /// Wake-ups by a request that succeeded.
    pub(crate) wakeups: AtomicU64,
    /// Wake-ups that failed.
    pub(crate) wake_failures: AtomicU64,
    /// Time spent waking, microseconds.
    pub(crate) wake_us: AtomicU64,
    /// Thaws of the frozen gear (by a request or by whatever had to reach it).
    pub(crate) thaws: AtomicU64,
    /// Time spent thawing, microseconds.
    pub(crate) thaw_us: AtomicU64,
    /// Connections opened to the gear.
    pub(super) upstream_connections: AtomicU64,
    /// Upgraded connections (websockets) passed through.
    pub(super) upgrades: AtomicU64,
}

impl Stats {
    /// Count a response (the gear's or the frontend's own) sent `latency`
    /// after its request arrived.
    pub(super) fn response(&self, status: StatusCode, latency: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.status[class].fetch_add(1, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Count an answer the frontend gave itself.
    pub(super) fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Responses counted in status class `class` (1 to 5).
    #[cfg(test)]
    pub(super) fn responses(&self, class: usize) -> u64 {
        self.status[class - 1].load(Ordering::Relaxed)
    }

    /// Refusals counted as `why`.
    #[cfg(test)]
    pub(super) fn refusals(&self, why: Refusal) -> u64 {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].load(Ordering::Relaxed)
    }
}

fn counter(out: &mut String, name: &str, help: &str, kind: &str) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric of one value, no labels: its `HELP` and `TYPE` lines (see
/// [`counter`]) and the value.
fn single(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    use std::fmt::Write;
    counter(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

/// The node's metrics in the Prometheus text format.
pub fn render_metrics(node: &Node) -> String {
    use std::fmt::Write;
    let gears = node.gears_snapshot();
    let mut all: Vec<(String, &Stats)> = vec![(String::new(), &node.frontend.stats)];
    for g in &gears {
        let r = g.record();
        all.push((r.label(), &g.front.stats));
    }
    let mut out = String::with_capacity(4096);
    render_frontend(&mut out, &all, &node.frontend);
    render_relayed(&mut out, &node.other_nodes());
    let expiries = node.certs.expiries();
    if !expiries.is_empty() {
        counter(
            &mut out,
            "gearhost_certificate_expiry_seconds",
            "When the certificate served for a host name expires (seconds since the epoch; host=\"*.<domain>\": the operator's).",
            "gauge",
        );
        for (host, not_after) in expiries {
            let _ = writeln!(
                out,
                "gearhost_certificate_expiry_seconds{{host=\"{host}\"}} {not_after}"
            );
        }
    }
    counter(&mut out, "gearhost_gears", "Gears by state.", "gauge");
    let mut states: std::collections::BTreeMap<String, usize> = Default::default();
    for g in &gears {
        let state = serde_json::to_value(g.state())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *states.entry(state).or_default() += 1;
    }
    for (state, n) in states {
        let _ = writeln!(out, "gearhost_gears{{state=\"{state}\"}} {n}");
    }
    let doors = gears.iter().filter(|g| g.front.has_door()).count();
    single(
        &mut out,
        "gearhost_frontend_doors",
        "Gears the frontend listens inside (their door: open while a gear runs or is frozen).",
        "gauge",
        doors,
    );
    let (frozen_bytes, _) = node.frozen_memory();
    single(
        &mut out,
        "gearhost_frozen_memory_bytes",
        "Memory the frozen gears hold (their cgroups' memory use), in bytes.",
        "gauge",
        frozen_bytes,
    );
    single(
        &mut out,
        "gearhost_frozen_stopped_for_memory_total",
        "Frozen gears stopped because the machine's available memory fell below gears.frozen-memory-floor.",
        "counter",
        node.frozen_stopped_for_memory.load(Ordering::Relaxed),
    );
    if let Some(cluster) = node.cluster() {
        let health = cluster.health();
        single(
            &mut out,
            "gearhost_cluster_lease_confirmed_seconds",
            "Seconds since etcd last confirmed this node's lease (a cluster member).",
            "gauge",
            format_args!("{:.3}", health.since_confirmed.as_secs_f64()),
        );
        single(
            &mut out,
            "gearhost_cluster_fenced",
            "1 while this node has not heard from etcd for two thirds of its lease's time to live.",
            "gauge",
            u8::from(health.fenced),
        );
        single(
            &mut out,
            "gearhost_cluster_rejoins_total",
            "Times this node's lease expired and it joined the cluster again.",
            "counter",
            health.rejoins,
        );
    }
    if let Ok(init) = gearhost_sandbox::find_init(None) {
        let (waiting, failed) = gearhost_sandbox::warm_status(&init);
        single(
            &mut out,
            "gearhost_warm_helpers",
            "Gear helpers prepared and waiting for a start (gears.warm-helpers).",
            "gauge",
            waiting,
        );
        single(
            &mut out,
            "gearhost_warm_helpers_failing",
            "1 when preparing a helper failed and starts go on without one (the node's log says why).",
            "gauge",
            u8::from(failed.is_some()),
        );
    }
    out
}

/// Requests passed to the frontends of the nodes that hold their gears, by
/// node and status class (in a cluster; nothing before the first).
fn render_relayed(out: &mut String, others: &[Arc<crate::remote::Routed>]) {
    use std::fmt::Write;
    if others.is_empty() {
        return;
    }
    counter(
        out,
        "gearhost_cluster_relayed_requests_total",
        "Requests passed to the frontend of the node that holds their gear, by node and status class.",
        "counter",
    );
    for other in others {
        let crate::remote::Routed::Remote(node) = &**other else {
            continue;
        };
        for (i, n) in node.front.stats.status.iter().enumerate() {
            let _ = writeln!(
                out,
                "gearhost_cluster_relayed_requests_total{{node=\"{}\",status=\"{}xx\"}} {}",
                node.name,
                i + 1,
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// The frontend's own metrics: `all` holds the node-wide counters (labelled
/// `""`) first, then each gear's by its label.
pub(super) fn render_frontend<G>(out: &mut String, all: &[(String, &Stats)], front: &Frontend<G>) {
    use std::fmt::Write;
    counter(
        out,
        "gearhost_frontend_requests_total",
        "Requests answered through the frontend, by gear and status class (gear=\"\": no gear).",
        "counter",
    );
    for (label, s) in all {
        for (i, n) in s.status.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 || !label.is_empty() {
                let _ = writeln!(
                    out,
                    "gearhost_frontend_requests_total{{gear=\"{label}\",status=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
    }
    counter(
        out,
        "gearhost_frontend_errors_total",
        "Requests the frontend answered itself, by gear and reason.",
        "counter",
    );
    for (label, s) in all {
        for (i, why) in Refusal::ALL.iter().enumerate() {
            let n = s.refused[i].load(Ordering::Relaxed);
            if n > 0 || !label.is_empty() {
                let _ = writeln!(
                    out,
                    "gearhost_frontend_errors_total{{gear=\"{label}\",reason=\"{}\"}} {n}",
                    why.name()
                );
            }
        }
    }
    counter(
        out,
        "gearhost_frontend_request_duration_seconds",
        "Time from a request's arrival to its response head, by gear.",
        "histogram",
    );
    for (label, s) in all.iter().skip(1) {
        let mut cumulative = 0;
        for (i, n) in s.latency.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "gearhost_frontend_request_duration_seconds_bucket{{gear=\"{label}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "gearhost_frontend_request_duration_seconds_sum{{gear=\"{label}\"}} {}\n\
             gearhost_frontend_request_duration_seconds_count{{gear=\"{label}\"}} {cumulative}",
            s.latency_us.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
    for (name, help, get) in [
        (
            "gearhost_frontend_wakeups_total",
            "Idle gears started again by a request.",
            (|s: &Stats| s.wakeups.load(Ordering::Relaxed) as f64) as fn(&Stats) -> f64,
        ),
        (
            "gearhost_frontend_wake_failures_total",
            "Idle gears that did not start again when a request came.",
            |s: &Stats| s.wake_failures.load(Ordering::Relaxed) as f64,
        ),
        (
            "gearhost_frontend_wake_seconds_total",
            "Time spent waking idle gears.",
            |s: &Stats| s.wake_us.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "gearhost_frontend_thaws_total",
            "Frozen gears thawed (by a request, or by whatever had to reach their processes).",
            |s: &Stats| s.thaws.load(Ordering::Relaxed) as f64,
        ),
        (
            "gearhost_frontend_thaw_seconds_total",
            "Time spent thawing frozen gears.",
            |s: &Stats| s.thaw_us.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "gearhost_frontend_upstream_connections_total",
            "Connections the frontend opened to gears.",
            |s: &Stats| s.upstream_connections.load(Ordering::Relaxed) as f64,
        ),
        (
            "gearhost_frontend_upgrades_total",
            "Upgraded connections (websockets) passed through to gears.",
            |s: &Stats| s.upgrades.load(Ordering::Relaxed) as f64,
        ),
    ] {
        counter(out, name, help, "counter");
        for (label, s) in all.iter().skip(1) {
            let _ = writeln!(out, "{name}{{gear=\"{label}\"}} {}", get(s));
        }
    }
    single(
        out,
        "gearhost_frontend_connections",
        "Client connections open now.",
        "gauge",
        front.connections.load(Ordering::Relaxed),
    );
    single(
        out,
        "gearhost_frontend_connections_total",
        "Client connections accepted.",
        "counter",
        front.connections_total.load(Ordering::Relaxed),
    );
    single(
        out,
        "gearhost_frontend_send_stalls_total",
        "Requests cut off because their client took nothing sent to it for http.send-timeout.",
        "counter",
        front.send_stalls.load(Ordering::Relaxed),
    );
    let (mut flushes, mut sent, mut working) = (0, 0, 0);
    for batch in lock(&front.batches).iter() {
        let stats = batch.stats();
        flushes += stats.flushes;
        sent += stats.sends;
        working += usize::from(stats.working);
    }
    single(
        out,
        "gearhost_frontend_batching_workers",
        "Frontend workers passing their sends to the kernel in batches (http.batch-sends).",
        "gauge",
        working,
    );
    single(
        out,
        "gearhost_frontend_send_batches_total",
        "Batches of sends passed to the kernel, one call each.",
        "counter",
        flushes,
    );
    single(
        out,
        "gearhost_frontend_batched_sends_total",
        "Sends passed to the kernel in batches.",
        "counter",
        sent,
    );
}

/// Serve `GET /metrics` on the operator's metrics address until it fails.
pub async fn serve_metrics(node: Arc<Node>, listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(metrics_connection(node.clone(), stream));
    }
}

/// Answers `GET /metrics` (and `HEAD`) on one connection, kept alive.
async fn metrics_connection(node: Arc<Node>, mut stream: TcpStream) {
    let mut buf = ReadBuf::default();
    let mut head = RequestHead::default();
    loop {
        let read = wire::with_deadline(
            Duration::from_secs(30),
            wire::read_request_head(&mut stream, &mut buf, &mut head, MAX_HEAD),
        )
        .await;
        if read.is_err() {
            return;
        }
        let (method, path) = {
            let data = &buf.data;
            let target = &data[head.target.clone()];
            let path = target.split(|b| *b == b'?').next().unwrap_or_default();
            (data[head.method.clone()].to_vec(), path == b"/metrics")
        };
        let f = facts(&buf.data, &head.headers);
        buf.consume(head.len);
        let is_head = method == b"HEAD";
        let has_body = f.chunked || f.content_length.is_some_and(|n| n > 0);
        let close = f.close || head.minor == 0 || has_body;
        let bytes = if path && (method == b"GET" || is_head) {
            let body = render_metrics(&node);
            let mut out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n",
                body.len(),
                if close { "connection: close\r\n" } else { "" }
            );
            if !is_head {
                out.push_str(&body);
            }
            out.into_bytes()
        } else {
            page(
                StatusCode::NOT_FOUND,
                "Not found",
                "The node's metrics are at <code>/metrics</code>.",
                is_head,
                close,
            )
        };
        if stream.write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_its_bucket() {
        let s = Stats::default();
        s.response(StatusCode::OK, Duration::from_micros(300));
        s.response(StatusCode::BAD_GATEWAY, Duration::from_secs(60));
        assert_eq!(s.latency[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.latency[12].load(Ordering::Relaxed), 1);
        assert_eq!(s.status[1].load(Ordering::Relaxed), 1);
        assert_eq!(s.status[4].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rendered_counters_name_gear_class_and_reason() {
        let node = Stats::default();
        let gear = Stats::default();
        node.refused(Refusal::UnknownHost);
        node.response(StatusCode::NOT_FOUND, Duration::from_millis(2));
        gear.response(StatusCode::OK, Duration::from_millis(3));
        gear.response(StatusCode::OK, Duration::from_millis(700));
        gear.refused(Refusal::Timeout);
        gear.upgrades.fetch_add(1, Ordering::Relaxed);
        let front = Frontend::<()>::default();
        let mut out = String::new();
        render_frontend(
            &mut out,
            &[(String::new(), &node), ("app-ns".to_string(), &gear)],
            &front,
        );
        let has = |line: &str| out.lines().any(|l| l == line);
        assert!(has(
            r#"gearhost_frontend_requests_total{gear="",status="4xx"} 1"#
        ));
        // the node-wide row shows only what happened; a gear's shows zeros
        assert!(!out.contains(r#"gear="",status="2xx""#));
        assert!(has(
            r#"gearhost_frontend_requests_total{gear="app-ns",status="2xx"} 2"#
        ));
        assert!(has(
            r#"gearhost_frontend_requests_total{gear="app-ns",status="5xx"} 0"#
        ));
        assert!(has(
            r#"gearhost_frontend_errors_total{gear="",reason="unknown_host"} 1"#
        ));
        assert!(has(
            r#"gearhost_frontend_errors_total{gear="app-ns",reason="timeout"} 1"#
        ));
        assert!(has(
            r#"gearhost_frontend_request_duration_seconds_bucket{gear="app-ns",le="0.005"} 1"#
        ));
        assert!(has(
            r#"gearhost_frontend_request_duration_seconds_bucket{gear="app-ns",le="1"} 2"#
        ));
        assert!(has(
            r#"gearhost_frontend_request_duration_seconds_count{gear="app-ns"} 2"#
        ));
        assert!(has(r#"gearhost_frontend_upgrades_total{gear="app-ns"} 1"#));
        assert!(has("gearhost_frontend_connections 0"));
        assert!(out.contains("# TYPE gearhost_frontend_request_duration_seconds histogram"));
    }
}
