//! The front door: an HTTP/1.1 reverse proxy that routes
//! `http://<gear>-<namespace>.<domain>:<port>/` (and a gear's aliases) to the
//! app listening on its private port inside the gear's own network
//! namespace, through sockets the node opens inside that namespace (no veth,
//! no NAT).
//!
//! Every request is routed on its own (a kept-alive client connection may
//! carry requests for several gears), gets `X-Forwarded-For`, `-Host` and
//! `-Proto`, is bounded in head time, body size and response time, and is
//! written to the gear's access log and the node's metrics. The frontend
//! runs on worker threads of its own (`http.workers`), each serving its
//! client connections to the end and keeping its own pool of connections to
//! each gear for reuse. Websocket (and any other) upgrades are passed
//! through: both sides are upgraded, then bytes are spliced. A request for
//! an idle gear wakes it (see [`crate::idle`]) and is served once it answers.
//! The same proxy listens inside every gear (its door), and the operator's
//! `/metrics` on an address of its own.
//!
//! The pieces:
//!
//! - `routes`: the route table (host name to gear) and its lookup;
//! - `workers`: the acceptor thread, the worker threads and the doors
//!   inside gears;
//! - `pipeline`: one client connection and each request on it, in phases:
//!   frame → route → wake → forward → relay;
//! - `backend`: the seam between the pipeline and the node (routes, limits,
//!   waking a gear, connecting to it), so the pipeline runs in unit tests
//!   without root or namespaces;
//! - `headers`: header policy (limits, hop-by-hop fields, forwarding
//!   fields, keep-alive, answer framing);
//! - `wire`: the HTTP/1.1 I/O (heads, bodies, batched sends);
//! - `tls`, `http2`: client connections over TLS, and HTTP/2 (negotiated
//!   by ALPN), whose streams each go through the pipeline as a client of
//!   their own (the request as an HTTP/1.1 head, the answer sent as
//!   HTTP/2);
//! - `gear`: the frontend's state of one gear (pools, activity, wake-up);
//! - `metrics`, `access`, `pages`: counters and `/metrics`, access logs,
//!   the frontend's own answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

mod access;
pub(crate) mod backend;
pub mod drain;
mod gear;
mod headers;
mod http2;
mod metrics;
mod pages;
mod pipeline;
mod routes;
pub(crate) mod stall;
pub(crate) mod tls;
mod wire;
mod workers;

pub use access::{AccessLog, flush_access_logs};
pub(crate) use gear::WakeResult;
pub use gear::{GearFront, LiveSlot, MoveHold, SlotLease, now_ms};
pub use metrics::{Refusal, Stats, render_metrics, serve_metrics};
pub use routes::{Target, TargetHttps};
pub use workers::{open_door, start_https, start_workers};

use crate::remote::Routed;

/// The node-wide frontend state: the routing table and counters for
/// requests that reached no gear.
#[derive(Debug)]
pub struct Frontend<G = Routed> {
    routes: routes::RouteTable<G>,
    /// Requests no gear got.
    pub stats: Stats,
    /// Client connections open now.
    pub connections: AtomicUsize,
    /// Client connections accepted.
    pub connections_total: AtomicU64,
    /// Requests cut off because their client took nothing of what was sent
    /// to it for `http.send-timeout`.
    pub send_stalls: AtomicU64,
    /// The send batches of the workers that have one (`http.batch-sends`).
    pub batches: Mutex<Vec<Arc<gearhost_sys::sendbatch::SendBatch>>>,
    /// The workers' queues of new connections, and which worker is next.
    workers: Mutex<Vec<workers::WorkerQueue>>,
    next_worker: AtomicUsize,
    /// The TLS side of the `[https]` listener, once it listens.
    pub(crate) tls: std::sync::OnceLock<Arc<rustls::ServerConfig>>,
}

impl<G> Default for Frontend<G> {
    fn default() -> Self {
        Frontend {
            routes: routes::RouteTable::default(),
            stats: Stats::default(),
            connections: AtomicUsize::new(0),
            connections_total: AtomicU64::new(0),
            send_stalls: AtomicU64::new(0),
            batches: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
            next_worker: AtomicUsize::new(0),
            tls: std::sync::OnceLock::new(),
        }
    }
}

impl<G> Frontend<G> {
    /// Replace the routing table.
    pub fn set_routes(&self, routes: HashMap<String, Arc<Target<G>>>) {
        self.routes.set(routes);
    }

    /// Replace the names of the gear labelled `label` (see [`routes::RouteTable::set_gear`]).
    pub fn set_gear_routes(&self, label: &str, names: Vec<(String, Arc<Target<G>>)>) {
        self.routes.set_gear(label, names);
    }

    /// Which gear answers to `hostname` (lower-case, without port).
    pub fn lookup(&self, hostname: &str) -> Option<Arc<Target<G>>> {
        self.routes.lookup(hostname)
    }
}
