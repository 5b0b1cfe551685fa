//! The node: owns every gear and installed cartridge, runs hooks against real
//! gears, and carries out the lifecycle operations. Operations on one gear
//! are serialized by that gear's lock; different gears proceed in parallel.
//!
//! [`Node`] itself (state, configuration, routing, resume and shutdown) is
//! here; its operations are grouped by concern, each an `impl Node` of its
//! own: [`cartridges`], [`gears`] (create, show, destroy), [`deploy`]
//! (deployments and rollback), [`lifecycle`] (start, stop, control, exec),
//! [`variables`] (the environment) and [`hooks`] (the hook host). A gear
//! live is a [`Gear`] ([`gear`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gearhost_runtime::{Cartridge, Runtime, RuntimeConfig};

use crate::api::{ApiError, ErrorKind, GearRef};
use crate::config::NodeConfig;
use crate::frontend::{Frontend, Target};
use crate::links::Links;
use crate::state::{self, DeploymentState, Desired, GearPaths, GearRecord, GearState};

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// How long `gear destroy` lets the gear's stop hook run, and then its
/// processes finish after `SIGTERM`: the gear goes anyway, and a hostile one
/// must not hold its destroy up.
const DESTROY_STOP_HOOK: Duration = Duration::from_secs(2);
const DESTROY_GRACE: Duration = Duration::from_secs(2);
/// Longest time `gear status` waits for the node's resume to take a gear back.
pub const RESUME_WAIT: Duration = Duration::from_secs(5);

/// Opens a gear's resume gate when its resume ends, however it ends.
struct Resumed<'a>(&'a Gear);

impl Drop for Resumed<'_> {
    fn drop(&mut self) {
        self.0.resume_gate.open();
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Invalid, msg)
}
pub(crate) fn failed(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Failed, msg)
}
pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Failed, e.to_string())
}

/// How many progress lines wait for a slow caller before more are dropped.
pub const PROGRESS_QUEUE: usize = 4096;

/// Sends progress lines back to the caller, bounded: a caller that does not
/// read (or a hook that prints without end) makes the node drop lines, never
/// hold more than [`PROGRESS_QUEUE`] of them. How many were dropped is counted.
#[derive(Debug, Clone)]
pub struct Progress {
    tx: tokio::sync::mpsc::Sender<String>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Set when the caller has closed its connection.
    gone: gearhost_runtime::Cancel,
}

impl Progress {
    /// A sink and the receiving end the caller's connection drains.
    pub fn channel() -> (Progress, tokio::sync::mpsc::Receiver<String>) {
        let (tx, rx) = tokio::sync::mpsc::channel(PROGRESS_QUEUE);
        (
            Progress {
                tx,
                dropped: Arc::default(),
                gone: gearhost_runtime::Cancel::new(),
            },
            rx,
        )
    }

    /// A sink nobody reads (operations the node starts itself).
    pub fn discard() -> Progress {
        Progress::channel().0
    }

    /// Queue a line, saying whether it was: a full queue (or a caller gone)
    /// drops it.
    pub fn send(&self, line: String) -> bool {
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The flag the caller's connection sets when the caller goes away.
    pub fn gone_flag(&self) -> gearhost_runtime::Cancel {
        self.gone.clone()
    }

    /// Resolves once the caller has gone away (never for [`Progress::discard`]).
    pub async fn gone(&self) {
        self.gone.cancelled().await;
    }

    /// The count of lines dropped, which outlives the senders.
    pub fn dropped(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.dropped.clone()
    }
}

pub(crate) use gearhost_sys::lock::lock;

mod adopt;
mod cartridge_pull;
mod cartridges;
mod deploy;
mod failover;
mod gear;
mod gears;
mod hooks;
mod image_gears;
mod image_ops;
mod kept;
mod lifecycle;
mod moves;
mod replace;
mod restore;
mod routing;
mod snapshot;
mod table;
mod variables;

pub(crate) use moves::Arrival;

pub use gear::Gear;
pub use image_gears::ImageSource;
pub(crate) use replace::Held;

/// The node.
#[derive(Debug)]
pub struct Node {
    /// The node itself, for what outlives a call on it (a gear's door).
    me: std::sync::Weak<Node>,
    config: Arc<NodeConfig>,
    runtime: Runtime,
    cartridges: Mutex<BTreeMap<String, Cartridge>>,
    pub(crate) gears: Mutex<table::GearTable>,
    /// Held while gears are created and host names change: names stay unique.
    pub(crate) create: tokio::sync::Mutex<()>,
    /// Held while the frontend's routes are computed and set: a change to one gear's
    /// names and a rebuild of them all do not overtake each other.
    pub(crate) routes_changing: Mutex<()>,
    frontend_addr: Mutex<Option<std::net::SocketAddr>>,
    metrics_addr: Mutex<Option<std::net::SocketAddr>>,
    /// The runtime operations run on (the frontend's workers have their own).
    main: std::sync::OnceLock<tokio::runtime::Handle>,
    pub(crate) links: Links,
    /// The frontend's routing table and node-wide counters.
    pub(crate) frontend: Frontend,
    /// The bounds on connections gears open through the node.
    pub(crate) admission: Arc<crate::conns::Admission>,
    /// Per-gear disk quotas: what the file system enforces, the default and
    /// the ceiling.
    pub(crate) quotas: crate::quota::Quotas,
    /// Team namespaces and who belongs to them.
    pub(crate) namespaces: crate::tenancy::Namespaces,
    /// The audit trail of requests.
    pub(crate) audit: crate::audit::AuditLog,
    /// Users' ssh keys.
    pub(crate) keys: crate::keys::Keys,
    /// The ssh endpoint, when `[ssh]` turns it on.
    pub(crate) ssh: crate::ssh::SshEndpoint,
    /// The frontend's TLS certificates (the operator's and aliases').
    pub(crate) certs: Arc<crate::certs::Certs>,
    /// The ACME client, when `[acme]` names a server.
    pub(crate) acme: Option<Arc<crate::acme::Acme>>,
    /// What happened to gears: deploys, starts, crashes, wakes, failures.
    pub(crate) events: Arc<crate::events::EventLog>,
    /// Container images pulled for gears.
    pub(crate) images: crate::images::ImageStore,
    /// Held for reading by what pulls an image for a gear until the gear's record names it,
    /// and for writing by what removes images no gear names.
    pub(crate) images_gc: Arc<tokio::sync::RwLock<()>>,
    /// Set once `<state>/roots`, where image gears' roots are mounted, is a private mount.
    roots_private: std::sync::OnceLock<()>,
    /// What the last resume did (`gear node check`), also kept in `last-resume.json`.
    resume_outcome: Mutex<crate::api::reply::ResumeOutcome>,
    /// Frozen gears stopped because the machine ran short of memory.
    pub(crate) frozen_stopped_for_memory: std::sync::atomic::AtomicU64,
    /// Set by `gear node stop` and `gear node restart`.
    stop: tokio::sync::watch::Sender<Option<Stop>>,
    /// The cluster, once the node joined one (`[cluster]`).
    pub(crate) cluster: std::sync::OnceLock<Arc<gearhost_cluster::Cluster>>,
    /// The secret node-to-node traffic is authenticated with.
    pub(crate) cluster_secret: std::sync::OnceLock<Arc<[u8]>>,
    /// Gears the cluster placed on another node while this one was away, by
    /// id, with that node's name: their copies here are not started.
    pub(crate) elsewhere: Mutex<std::collections::HashMap<String, String>>,
    /// The gears other nodes hold and those nodes, as the frontend routes them.
    pub(crate) remote: Mutex<crate::remote::RemoteView>,
    /// The key the frontend signs and checks relay fields with (in a cluster).
    pub(crate) relay_key: std::sync::OnceLock<Arc<crate::remote::RelayKey>>,
    /// Set while the node is cut off from etcd: it serves none of its gears.
    pub(crate) fenced: std::sync::atomic::AtomicBool,
}

/// The port the active deployment of `r` names for its app (an image's), if any.
pub(crate) fn named_port(r: &GearRecord) -> Option<u16> {
    r.deployments
        .iter()
        .find(|d| Some(d.id) == r.active)
        .and_then(|d| d.port)
}

/// The file in the state directory where the node records what its last resume did.
pub const LAST_RESUME: &str = "last-resume.json";

/// How the node was asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stop; the gears' processes keep running for the next node.
    Leave,
    /// Stop, and stop every gear's processes too.
    Gears,
    /// Stop accepting, finish the requests in flight, and execute the node's binary again
    /// in this process, handing it the listening sockets (`gear node restart`).
    Restart,
}

impl Node {
    /// Open the node's state (creating the layout on first use) and load
    /// installed cartridges and gears. Gear directories without a record (a
    /// create interrupted before it was acknowledged) are removed.
    pub fn open(config: NodeConfig) -> anyhow::Result<Arc<Node>> {
        for dir in [
            config.state_dir.clone(),
            config.gears_dir(),
            config.cartridges_dir(),
            config.cache_dir(),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        set_mode(&config.state_dir, 0o711)?;
        set_mode(&config.gears_dir(), 0o711)?;
        // refuses to start with gears.disk set where it cannot be enforced
        let quotas = crate::quota::Quotas::open(&config)?;
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: config.cache_dir(),
            max_timeout: config.hook_timeout,
            max_build_timeout: config.build_timeout,
            max_memory: config.hook_memory,
            max_concurrent_hooks: 128,
        })?;
        let mut cartridges = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(config.cartridges_dir()) {
            for entry in entries.flatten() {
                let dir = entry.path();
                match runtime.load_dir(&dir) {
                    Ok(c) => {
                        cartridges.insert(c.manifest().name.clone(), c);
                    }
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "installed cartridge cannot be loaded")
                    }
                }
            }
        }
        // (a node that is not root makes no network namespace, and keeps its state's
        // bookkeeping only: unit tests)
        if gearhost_sys::proc_status::is_root() {
            gearhost_sandbox::netns::prepare_pins(&config.netns_dir()).map_err(|e| {
                anyhow::anyhow!(
                    "cannot prepare {} for the gears' network namespaces: {e}",
                    config.netns_dir().display()
                )
            })?;
            // its entries are the gears' ids, which `gears/` (0711) does not list to others
            set_mode(&config.netns_dir(), 0o700)?;
        }
        let (records, orphans) = state::load_gears(&config.gears_dir())?;
        for orphan in orphans {
            tracing::warn!(dir = %orphan.display(), "removing a gear directory whose create never completed");
            let paths = orphan
                .file_name()
                .map(|id| GearPaths::new(&config.gears_dir(), &id.to_string_lossy()));
            if let Some(paths) = paths {
                let _ = gearhost_sandbox::netns::remove(&paths.netns());
                let _ = gearhost_sandbox::netns::remove(&paths.old_netns());
            }
            let _ = state::remove_tree(&orphan);
        }
        let mut gears = table::GearTable::default();
        for record in records {
            let paths = GearPaths::new(&config.gears_dir(), &record.id);
            let netns = paths.netns();
            // a pin from a node before the pins directory moves there, its namespace kept
            // (the gear may be running)
            let old = paths.old_netns();
            if gearhost_sandbox::netns::exists(&old) && !gearhost_sandbox::netns::exists(&netns) {
                let _ = std::fs::remove_file(&netns);
                gearhost_sandbox::netns::move_pin(&old, &netns).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot move the network namespace of gear {} to {}: {e}",
                        record.name,
                        netns.display()
                    )
                })?;
            } else {
                let _ = gearhost_sandbox::netns::remove(&old);
            }
            // after a reboot the namespace binding is gone: make a new one
            if !gearhost_sandbox::netns::exists(&netns) {
                let _ = std::fs::remove_file(&netns);
                gearhost_sandbox::netns::create(&netns).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create the network namespace of gear {}: {e}",
                        record.name
                    )
                })?;
            }
            let gear = Gear::new(&config, record);
            // `status` waits for the resume to take the gear's processes back
            gear.resume_gate.close();
            gears.insert(gear.record().id, Arc::new(gear));
        }
        // gear starts copy the node's mounts without the state directory's (every pin)
        let hidden = config
            .state_dir
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", config.state_dir.display()))?;
        if let Err(e) = gearhost_sandbox::warm::hide_from_helpers(&[hidden]) {
            tracing::warn!(error = %e, "gear starts copy every mount of the node (one per gear), slower with many gears");
        }
        let admission = crate::conns::Admission::new(config.gear_max_connections);
        let namespaces = crate::tenancy::Namespaces::open(&config)?;
        let audit =
            crate::audit::AuditLog::open(&config.state_dir, config.log_max_bytes, config.log_keep)?;
        let keys = crate::keys::Keys::open(&config.state_dir)?;
        let acme = match &config.acme {
            Some(a) => Some(Arc::new(crate::acme::Acme::open(
                a.clone(),
                &config.state_dir,
            )?)),
            None => None,
        };
        let certs = Arc::new(crate::certs::Certs::open(
            &config.state_dir,
            &config.domain,
            config.https.as_ref().and_then(|h| h.certificate.as_ref()),
        )?);
        let events = Arc::new(crate::events::EventLog::open(
            &config.state_dir,
            config.log_max_bytes,
            config.log_keep,
        )?);
        let images = crate::images::ImageStore::new(&config.state_dir, crate::images::LAYER_LIMITS);
        images.remove_stale();
        let node = Arc::new_cyclic(|me| Node {
            me: me.clone(),
            images,
            config: Arc::new(config),
            runtime,
            cartridges: Mutex::new(cartridges),
            gears: Mutex::new(gears),
            create: tokio::sync::Mutex::new(()),
            routes_changing: Mutex::new(()),
            frontend_addr: Mutex::new(None),
            metrics_addr: Mutex::new(None),
            main: std::sync::OnceLock::new(),
            links: Links::default(),
            frontend: Frontend::default(),
            admission,
            quotas,
            namespaces,
            audit,
            keys,
            ssh: crate::ssh::SshEndpoint::default(),
            certs,
            acme,
            events,
            resume_outcome: Mutex::new(Default::default()),
            frozen_stopped_for_memory: Default::default(),
            images_gc: Arc::new(tokio::sync::RwLock::new(())),
            roots_private: std::sync::OnceLock::new(),
            stop: tokio::sync::watch::channel(None).0,
            cluster: std::sync::OnceLock::new(),
            cluster_secret: std::sync::OnceLock::new(),
            elsewhere: Mutex::default(),
            remote: Mutex::default(),
            relay_key: std::sync::OnceLock::new(),
            fenced: std::sync::atomic::AtomicBool::new(false),
        });
        node.rebuild_routes();
        Ok(node)
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Record where the frontend listens (the configured port may be 0).
    pub fn set_frontend_addr(&self, addr: std::net::SocketAddr) {
        *lock(&self.frontend_addr) = Some(addr);
    }

    /// Where the frontend listens, once it does.
    pub fn frontend_addr(&self) -> Option<std::net::SocketAddr> {
        *lock(&self.frontend_addr)
    }

    /// Ask the node to stop (`gear node stop`, `gear node restart`).
    pub fn request_stop(&self, how: Stop) {
        self.stop.send_replace(Some(how));
    }

    /// Waits until [`Node::request_stop`] is called; returns how the node ends.
    pub async fn stop_requested(&self) -> Stop {
        let mut rx = self.stop.subscribe();
        loop {
            if let Some(how) = *rx.borrow_and_update() {
                return how;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Record the runtime that operations on gears run on.
    pub fn set_main_runtime(&self, handle: tokio::runtime::Handle) {
        let _ = self.main.set(handle);
    }

    /// Run `task` on the node's main runtime (from a frontend worker too).
    pub(crate) fn spawn_main<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.main.get() {
            Some(handle) => handle.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// Record where the metrics endpoint listens.
    pub fn set_metrics_addr(&self, addr: std::net::SocketAddr) {
        *lock(&self.metrics_addr) = Some(addr);
    }

    /// Where the metrics endpoint listens, if it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        *lock(&self.metrics_addr)
    }

    /// The node, shared (none while it is dropped).
    pub(crate) fn arc(&self) -> Option<Arc<Node>> {
        self.me.upgrade()
    }

    /// Open the frontend's door inside every gear whose processes an earlier
    /// node may have left running (at node start, once the frontend listens,
    /// before they are taken back): such a gear reaches other gears again as
    /// soon as it can. The resume closes the doors of those it stops.
    pub async fn open_doors(self: &Arc<Self>) {
        for g in self.gears_snapshot() {
            if matches!(g.state(), GearState::Running | GearState::Frozen) {
                crate::frontend::open_door(self, &g).await;
            }
        }
    }

    /// How many gears each namespace holds, from the table's count (no gear is looked at).
    pub(crate) fn namespace_counts(&self) -> std::collections::BTreeMap<String, usize> {
        lock(&self.gears).namespace_counts()
    }

    /// Every gear, live.
    pub(crate) fn gears_snapshot(&self) -> Vec<Arc<Gear>> {
        lock(&self.gears).values().cloned().collect()
    }

    /// Take back the gears an earlier node left running, and start the other
    /// gears that should run (after a node restart everything a user left
    /// running runs again; what they stopped stays stopped).
    pub async fn resume(self: &Arc<Self>) {
        use crate::api::reply::NodeEventKind;
        let began = std::time::Instant::now();
        let adopted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gears: Vec<Arc<Gear>> = lock(&self.gears).values().cloned().collect();
        {
            let mut o = lock(&self.resume_outcome);
            *o = crate::api::reply::ResumeOutcome {
                started_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                pid: std::process::id(),
                gears: gears.len(),
                ..Default::default()
            };
        }
        let mut tasks = Vec::new();
        for gear in gears {
            let node = self.clone();
            let adopted = adopted.clone();
            tasks.push(tokio::spawn(async move {
                let _op = gear.op.lock().await;
                // however the resume of the gear ends, `status` stops waiting for it
                let _resumed = Resumed(&gear);
                // whatever was in flight when the node died is over now
                let record = gear.record();
                // written only when there is something to change: a thousand gears'
                // records synced for nothing would slow the resume down by seconds
                let pending = record
                    .deployments
                    .iter()
                    .any(|d| d.state == DeploymentState::Pending);
                let _ = pending.then(|| gear.update(&node.config, |r| {
                    for d in &mut r.deployments {
                        if d.state == DeploymentState::Pending {
                            d.state = DeploymentState::Failed;
                            d.error = Some("the node stopped during the build".into());
                        }
                    }
                }));
                let startable = record.active.is_some()
                    || node
                        .cartridge(&record.cartridge)
                        .is_ok_and(|c| !c.manifest().deploy.required);
                let elsewhere = node.placed_elsewhere(&record.id);
                let run = record.state != GearState::Idle
                    && record.desired == Desired::Running
                    && startable
                    && elsewhere.is_none();
                // processes an earlier node left running are taken back when the gear was
                // running (a build in flight never touched them; an app replaced halfway
                // does not match its records); anything else is stopped
                let refuse = if let Some(owner) = elsewhere {
                    Some(format!("the cluster placed the gear on node {owner}"))
                } else if !run {
                    Some("the gear is not to run".to_string())
                } else if !matches!(record.state, GearState::Running | GearState::Frozen) {
                    Some(format!(
                        "the gear was {} when the earlier node stopped",
                        record.state.as_str()
                    ))
                } else {
                    None
                };
                let adoption = node.adopt_gear(&gear, refuse).await;
                if !matches!(adoption, adopt::Adoption::Adopted(_)) {
                    // nothing of it runs now (until it is started below)
                    gear.front.close_door().await;
                }
                if !run {
                    if matches!(record.state, GearState::Running | GearState::Frozen | GearState::Starting | GearState::Building | GearState::Stopping) {
                        let _ = gear.update(&node.config, |r| r.state = GearState::Stopped);
                    }
                    lock(&node.resume_outcome).not_running += 1;
                    return;
                }
                let why = match adoption {
                    adopt::Adoption::Adopted(taken) => {
                        let list: Vec<String> = taken
                            .iter()
                            .map(|(name, pid)| format!("{name} (pid {pid})"))
                            .collect();
                        let frozen = node.settle_freezer(&gear).await;
                        let why = format!(
                            "kept {}; took back {}",
                            if frozen { "frozen" } else { "running" },
                            list.join(", ")
                        );
                        tracing::info!(gear = %record.name, "{why}");
                        node.event(&gear, NodeEventKind::Adopted, &why, None);
                        // as a fresh start: the idler counts from here
                        gear.front.touch();
                        crate::frontend::open_door(&node, &gear).await;
                        adopted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        lock(&node.resume_outcome)
                            .adopted
                            .push(format!("{}/{}", record.namespace, record.name));
                        return;
                    }
                    adopt::Adoption::Discarded(why) => {
                        let shown = format!("{why}; starting the gear again");
                        tracing::warn!(gear = %record.name, "processes of an earlier node not taken back: {shown}");
                        node.event(&gear, NodeEventKind::NotAdopted, &shown, None);
                        why
                    }
                    adopt::Adoption::Nothing => {
                        "no processes of an earlier node were recorded".to_string()
                    }
                };
                // a frozen gear whose processes are gone sleeps on as an idle
                // one: its next request starts it
                if record.state == GearState::Frozen {
                    let _ = gear.update(&node.config, |r| r.state = GearState::Idle);
                    tracing::info!(gear = %record.name, "was frozen, its processes were not taken back ({why}): idle now");
                    lock(&node.resume_outcome).not_running += 1;
                    return;
                }
                let started = node.start_locked(&gear, &Progress::discard()).await;
                if let Err(e) = &started {
                    tracing::warn!(gear = %record.name, error = %e, "could not restart gear after node restart");
                }
                lock(&node.resume_outcome)
                    .started
                    .push(crate::api::reply::ResumeStart {
                        gear: format!("{}/{}", record.namespace, record.name),
                        why,
                        error: started.err().map(|e| e.to_string()),
                    });
            }));
        }
        let total = tasks.len();
        for t in tasks {
            let _ = t.await;
        }
        tracing::info!(
            gears = total,
            adopted = adopted.load(std::sync::atomic::Ordering::Relaxed),
            ms = began.elapsed().as_millis() as u64,
            "gears resumed"
        );
        let outcome = {
            let mut o = lock(&self.resume_outcome);
            o.done = true;
            o.took_ms = began.elapsed().as_millis() as u64;
            o.adopted.sort();
            o.started.sort_by(|a, b| a.gear.cmp(&b.gear));
            o.clone()
        };
        let path = self.config.state_dir.join(LAST_RESUME);
        let written = serde_json::to_vec_pretty(&outcome)
            .map_err(|e| e.to_string())
            .and_then(|bytes| crate::state::write_atomic(&path, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record what the resume did");
        }
    }

    /// After taking back a gear's processes: keep a frozen gear frozen (its
    /// processes were left frozen), and make the record and the cgroup agree
    /// should the earlier node have stopped halfway through a freeze or a thaw
    /// (a running gear is thawed, a frozen one found thawed runs). Whether it
    /// is frozen now.
    async fn settle_freezer(&self, gear: &Arc<Gear>) -> bool {
        let subtree = self.config.cgroup_subtree.clone();
        let id = gear.record().id;
        let in_cgroup = {
            let (subtree, id) = (subtree.clone(), id.clone());
            tokio::task::spawn_blocking(move || {
                gearhost_sandbox::cgroup::gear_frozen(&subtree, &id)
            })
            .await
            .unwrap_or(false)
        };
        match (gear.state() == GearState::Frozen, in_cgroup) {
            (true, true) => {
                gear.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
                true
            }
            (true, false) => {
                let _ = gear.update(&self.config, |r| r.state = GearState::Running);
                false
            }
            (false, true) => {
                gear.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
                if let Err(e) = self.awake(gear, "the node started").await {
                    tracing::warn!(gear = %gear.record().name, error = %e, "cannot thaw a running gear left frozen");
                }
                false
            }
            (false, false) => false,
        }
    }

    /// Waits until the node's resume is done with `gear` (at most
    /// [`RESUME_WAIT`]), so that what is read about it next is what runs.
    pub async fn resumed(&self, gear: &GearRef) {
        if let Ok(g) = self.find(gear) {
            g.resume_gate.wait(RESUME_WAIT).await;
        }
    }

    /// What the last resume did with the gears of the node before (so far, while it runs).
    pub fn resume_outcome(&self) -> crate::api::reply::ResumeOutcome {
        lock(&self.resume_outcome).clone()
    }

    /// On the way out of the node (SIGTERM, SIGINT): end the `gear exec` commands, which
    /// live with their callers, and leave the gears' processes running for the next node
    /// to take back.
    pub async fn leave(&self) {
        let gears: Vec<Arc<Gear>> = lock(&self.gears).values().cloned().collect();
        for gear in gears {
            gear.exec_runs.end_all("the node is shutting down").await;
        }
    }

    /// Stop every gear's processes (node shutdown). Desired states are kept,
    /// so the gears start again with the node.
    pub async fn shutdown(&self) {
        let gears: Vec<Arc<Gear>> = lock(&self.gears).values().cloned().collect();
        for gear in gears {
            // signals reach frozen processes only once thawed (SIGKILL too, on
            // cgroup v1); the record stays `frozen`, and the next node, finding
            // none of its processes, makes the gear idle
            if gear.frozen.load(std::sync::atomic::Ordering::SeqCst)
                && let Err(e) = self.thaw_cgroup(&gear).await
            {
                tracing::warn!(gear = %gear.record().name, error = %e, "cannot thaw a frozen gear to stop it");
            }
            tokio::join!(
                gear.supervisor.stop_all(Duration::from_secs(5)),
                gear.exec_runs.end_all("the node is shutting down")
            );
        }
    }

    pub(crate) fn find(&self, gear: &GearRef) -> ApiResult<Arc<Gear>> {
        let found = lock(&self.gears)
            .by_name(&gear.namespace, &gear.name)
            .cloned();
        // the table's lock is released here: the hint below takes it again
        found.ok_or_else(|| {
            // only names of the same namespace, which the caller may act in
            let names: Vec<String> = self
                .gears_snapshot()
                .iter()
                .map(|g| g.record())
                .filter(|r| r.namespace == gear.namespace)
                .map(|r| r.name)
                .collect();
            let hint = match did_you_mean(&gear.name, &names) {
                Some(near) => format!("did you mean {near}?"),
                None => "see `gear list`".to_string(),
            };
            ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "no gear {} in namespace {}; {hint}",
                    gear.name, gear.namespace
                ),
            )
        })
    }
}

/// The name in `candidates` closest to `name`, if it is close enough to be
/// a slip (at most two edits, and fewer than half of the name's letters).
pub(crate) fn did_you_mean<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let a: Vec<char> = name.chars().collect();
    // edits (insert, delete, replace, swap of neighbours) from `name` to `b`
    let distance = |b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let replace = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[i - 1][j - 1] + replace)
                    .min(d[i - 1][j] + 1)
                    .min(d[i][j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[i - 2][j - 2] + 1);
                }
                d[i][j] = best;
            }
        }
        d[a.len()][b.len()]
    };
    candidates
        .iter()
        .map(|c| (distance(c), c))
        .filter(|(d, _)| *d > 0 && *d <= 2 && *d * 2 < a.len().max(2))
        .min()
        .map(|(_, c)| c.as_str())
}

/// The user a new gear belongs to, with the limits it counts against.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The user's name.
    pub user: String,
    /// Its limits (`[users]`).
    pub limit: crate::config::Limit,
}

impl Node {
    /// User `user` as the owner of a new gear, with the limits the node's
    /// configuration gives it.
    pub fn owner(&self, user: &str) -> Owner {
        Owner {
            user: user.to_string(),
            limit: self.config().user_limits.of(user),
        }
    }
}

/// Which of a gear's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// Its processes' output.
    App,
    /// Its hooks' log.
    Hooks,
    /// The frontend's access log of its requests.
    Access,
}

pub(super) fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow::anyhow!("cannot set the mode of {}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
