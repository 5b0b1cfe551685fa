//! The node: owns every gear and installed cartridge, runs hooks against real
//! gears, and carries out the lifecycle operations. Operations on one gear
//! are serialized by that gear's lock; different gears proceed in parallel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gearhost_runtime::{
    Cartridge, CommandSpec, EndpointInfo, ExecOutput, ExitStatus, GearHost, GearInfo, HookCall,
    HookKind, HostError, LogLevel, LogSource, Preopen, ProcessInfo, RequestContext, RestartPolicy,
    Runtime, RuntimeConfig, Signal,
};
use gearhost_sys::lock::lock;
use serde_json::json;

use crate::api::{ApiError, ErrorKind, GearRef};
use crate::config::NodeConfig;
use crate::env::{self, Layers};
use crate::frontend::{Frontend, GearFront, Target};
use crate::links::Links;
use crate::logs::LogFile;
use crate::procs::{self, GEAR_HOME, GearSandbox, Supervisor};
use crate::state::{
    self, Deployment, DeploymentState, Desired, GearPaths, GearRecord, GearState, RECORD_VERSION,
};

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// How long `gear destroy` lets the gear's stop hook run, and then its
/// processes finish after `SIGTERM`: the gear goes anyway, and a hostile one
/// must not hold its destroy up.
const DESTROY_STOP_HOOK: Duration = Duration::from_secs(2);
const DESTROY_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Invalid, msg)
}
pub(crate) fn failed(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Failed, msg)
}
pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Failed, e.to_string())
}

/// Sends progress lines back to the caller.
pub type Progress = tokio::sync::mpsc::UnboundedSender<String>;

/// One gear, live.
#[derive(Debug)]
pub struct Gear {
    record: Mutex<GearRecord>,
    pub(crate) op: crate::oplock::OpLock,
    pub(crate) paths: GearPaths,
    supervisor: Supervisor,
    app_log: LogFile,
    pub(crate) hook_log: LogFile,
    execs: AtomicU32,
    /// The record's state, readable without the record's lock (the frontend
    /// reads it on every request).
    state: AtomicU8,
    /// The frontend's side of the gear: connection pool, counters, access
    /// log, activity, wake-up.
    pub(crate) front: GearFront,
    /// Connections the gear holds through the node (doors, links).
    pub(crate) conns: Arc<crate::conns::GearConnections>,
}

const STATES: [GearState; 8] = [
    GearState::New,
    GearState::Building,
    GearState::Starting,
    GearState::Running,
    GearState::Stopping,
    GearState::Stopped,
    GearState::Failed,
    GearState::Idle,
];

fn state_index(state: GearState) -> u8 {
    STATES.iter().position(|s| *s == state).unwrap_or(0) as u8
}

impl Gear {
    fn new(config: &NodeConfig, record: GearRecord) -> Gear {
        let paths = GearPaths::new(&config.gears_dir(), &record.id);
        Gear {
            app_log: LogFile::new(
                paths.logs().join("app.log"),
                config.log_max_bytes,
                config.log_keep,
            ),
            hook_log: LogFile::new(
                paths.logs().join("hooks.log"),
                config.log_max_bytes,
                config.log_keep,
            ),
            front: GearFront::new(
                &paths.logs(),
                config.log_max_bytes,
                config.log_keep,
                config.frontend_workers,
            ),
            state: AtomicU8::new(state_index(record.state)),
            record: Mutex::new(record),
            op: crate::oplock::OpLock::default(),
            paths,
            supervisor: Supervisor::default(),
            execs: AtomicU32::new(0),
            conns: Arc::default(),
        }
    }

    /// The gear's last known state.
    pub fn state(&self) -> GearState {
        STATES[usize::from(self.state.load(Ordering::Relaxed)) % STATES.len()]
    }

    /// A copy of the record.
    pub fn record(&self) -> GearRecord {
        lock(&self.record).clone()
    }

    pub(crate) fn update(
        &self,
        config: &NodeConfig,
        f: impl FnOnce(&mut GearRecord),
    ) -> ApiResult<GearRecord> {
        let mut record = lock(&self.record);
        let mut next = record.clone();
        f(&mut next);
        state::save_gear(&config.gears_dir(), &next).map_err(internal)?;
        self.state.store(state_index(next.state), Ordering::Relaxed);
        *record = next.clone();
        Ok(next)
    }
}

/// The node.
#[derive(Debug)]
pub struct Node {
    config: Arc<NodeConfig>,
    runtime: Runtime,
    cartridges: Mutex<BTreeMap<String, Cartridge>>,
    pub(crate) gears: Mutex<BTreeMap<String, Arc<Gear>>>,
    /// Held while gears are created and host names change: names stay unique.
    pub(crate) create: tokio::sync::Mutex<()>,
    frontend_addr: Mutex<Option<std::net::SocketAddr>>,
    metrics_addr: Mutex<Option<std::net::SocketAddr>>,
    /// The runtime operations run on (the frontend's workers have their own).
    main: std::sync::OnceLock<tokio::runtime::Handle>,
    pub(crate) links: Links,
    /// The frontend's routing table and node-wide counters.
    pub(crate) frontend: Frontend,
    /// The bounds on connections gears open through the node.
    pub(crate) admission: Arc<crate::conns::Admission>,
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
        let (records, orphans) = state::load_gears(&config.gears_dir())?;
        for orphan in orphans {
            tracing::warn!(dir = %orphan.display(), "removing a gear directory whose create never completed");
            let _ = gearhost_sandbox::netns::remove(&orphan.join("netns"));
            let _ = state::remove_tree(&orphan);
        }
        let mut gears = BTreeMap::new();
        for record in records {
            // after a reboot the namespace binding is gone: make a new one
            let netns = GearPaths::new(&config.gears_dir(), &record.id).netns();
            if !gearhost_sandbox::netns::exists(&netns) {
                let _ = std::fs::remove_file(&netns);
                gearhost_sandbox::netns::create(&netns).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create the network namespace of gear {}: {e}",
                        record.name
                    )
                })?;
            }
            gears.insert(record.id.clone(), Arc::new(Gear::new(&config, record)));
        }
        let admission = crate::conns::Admission::new(config.gear_max_connections);
        let node = Arc::new(Node {
            config: Arc::new(config),
            runtime,
            cartridges: Mutex::new(cartridges),
            gears: Mutex::new(gears),
            create: tokio::sync::Mutex::new(()),
            frontend_addr: Mutex::new(None),
            metrics_addr: Mutex::new(None),
            main: std::sync::OnceLock::new(),
            links: Links::default(),
            frontend: Frontend::default(),
            admission,
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

    /// Open the frontend's door inside every gear (at node start, once the
    /// frontend listens).
    pub async fn open_doors(self: &Arc<Self>) {
        for g in self.gears_snapshot() {
            crate::frontend::open_door(self, &g).await;
        }
    }

    /// Every gear, live.
    pub(crate) fn gears_snapshot(&self) -> Vec<Arc<Gear>> {
        lock(&self.gears).values().cloned().collect()
    }

    /// The port the frontend sends a gear's requests to: the first endpoint
    /// of its cartridge that speaks HTTP (a database's port never gets HTTP).
    pub(crate) fn http_port(&self, cartridge: &str) -> Option<u16> {
        self.cartridge(cartridge)
            .ok()?
            .manifest()
            .endpoints
            .iter()
            .find(|e| {
                e.protocols
                    .iter()
                    .any(|p| matches!(p.as_str(), "http" | "websocket"))
            })
            .map(|e| e.private_port)
    }

    /// The host name a gear answers to: `<gear>-<namespace>.<domain>`.
    pub(crate) fn public_name(&self, r: &GearRecord) -> String {
        format!("{}.{}", r.label(), self.config.domain)
    }

    /// A new gear's public name must be a valid host name and lead to it
    /// alone: `a-b` in namespace `c` and `a` in namespace `b-c` would both be
    /// `a-b-c.<domain>`, so the second create is refused, naming the first.
    /// Aliases cannot take such names (see [`crate::alias`]). Called under
    /// the node's lock for names.
    fn check_public_name_free(&self, gear: &GearRef) -> ApiResult<()> {
        let label = state::public_label(&gear.name, &gear.namespace);
        if label.len() > 63 {
            return Err(invalid(format!(
                "gear {} in namespace {} would be reachable as {label}.{}, but a host name's label \
                 holds at most 63 characters; use a shorter gear name",
                gear.name, gear.namespace, self.config.domain
            )));
        }
        let taken = self
            .gears_snapshot()
            .into_iter()
            .map(|g| g.record())
            .find(|o| o.label() == label);
        match taken {
            Some(other) => Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} in namespace {} would be reachable as {label}.{}, which already leads \
                     to gear {} in namespace {}; choose another gear name",
                    gear.name, gear.namespace, self.config.domain, other.name, other.namespace
                ),
            )),
            None => Ok(()),
        }
    }

    /// Build the frontend's routing table again from the gears, their
    /// aliases and the installed cartridges (after any change to those).
    pub(crate) fn rebuild_routes(&self) {
        let mut routes = std::collections::HashMap::new();
        // oldest first: should two gears made before names were checked share
        // a name, the older one keeps it, whatever the order of the map
        let mut gears: Vec<(Arc<Gear>, GearRecord)> = self
            .gears_snapshot()
            .into_iter()
            .map(|g| {
                let r = g.record();
                (g, r)
            })
            .collect();
        gears.sort_by(|(_, a), (_, b)| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        for (g, r) in gears {
            let Some(port) = self.http_port(&r.cartridge) else {
                continue;
            };
            let target = Arc::new(Target {
                gear: g.clone(),
                label: r.label(),
                port,
            });
            for name in std::iter::once(self.public_name(&r)).chain(r.aliases.iter().cloned()) {
                routes.entry(name).or_insert_with(|| target.clone());
            }
        }
        self.frontend.set_routes(routes);
    }

    fn url(&self, r: &GearRecord) -> String {
        let port = self.frontend_addr().map_or(String::new(), |a| {
            if a.port() == 80 {
                String::new()
            } else {
                format!(":{}", a.port())
            }
        });
        format!("http://{}{port}/", self.public_name(r))
    }

    /// Start the gears that should run (after a node restart everything a
    /// user left running runs again; what they stopped stays stopped).
    pub async fn resume(self: &Arc<Self>) {
        let gears: Vec<Arc<Gear>> = lock(&self.gears).values().cloned().collect();
        let mut tasks = Vec::new();
        for gear in gears {
            let node = self.clone();
            tasks.push(tokio::spawn(async move {
                let _op = gear.op.lock().await;
                // whatever was in flight when the node died is over now
                let record = gear.record();
                let _ = gear.update(&node.config, |r| {
                    for d in &mut r.deployments {
                        if d.state == DeploymentState::Pending {
                            d.state = DeploymentState::Failed;
                            d.error = Some("the node stopped during the build".into());
                        }
                    }
                });
                let startable = record.active.is_some()
                    || node
                        .cartridge(&record.cartridge)
                        .is_ok_and(|c| !c.manifest().deploy.required);
                if record.state == GearState::Idle {
                    // an idle gear stays asleep until a request wakes it
                } else if record.desired == Desired::Running && startable {
                    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                    if let Err(e) = node.start_locked(&gear, &tx).await {
                        tracing::warn!(gear = %record.name, error = %e, "could not restart gear after node restart");
                    }
                } else if matches!(record.state, GearState::Running | GearState::Starting | GearState::Building | GearState::Stopping) {
                    let _ = gear.update(&node.config, |r| r.state = GearState::Stopped);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Stop every gear's processes (node shutdown). Desired states are kept,
    /// so the gears start again with the node.
    pub async fn shutdown(&self) {
        let gears: Vec<Arc<Gear>> = lock(&self.gears).values().cloned().collect();
        for gear in gears {
            gear.supervisor.stop_all(Duration::from_secs(5)).await;
        }
    }

    // -- cartridges ---------------------------------------------------------

    /// Install the cartridge in `dir`: validate, precompile, copy into the store.
    pub fn cartridge_install(&self, dir: &Path) -> ApiResult<serde_json::Value> {
        let loaded = self
            .runtime
            .load_dir(dir)
            .map_err(|e| invalid(e.to_string()))?;
        let name = loaded.manifest().name.clone();
        let dest = self.config.cartridges_dir().join(&name);
        let staging = self
            .config
            .cartridges_dir()
            .join(format!(".{name}.installing"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(internal)?;
        let copy = (|| -> std::io::Result<()> {
            std::fs::copy(
                dir.join(gearhost_runtime::manifest::MANIFEST_FILE),
                staging.join(gearhost_runtime::manifest::MANIFEST_FILE),
            )?;
            let hooks = &loaded.manifest().hooks;
            if let Some(parent) = hooks.parent() {
                std::fs::create_dir_all(staging.join(parent))?;
            }
            std::fs::copy(loaded.manifest().hooks_path(dir), staging.join(hooks))?;
            let old = self.config.cartridges_dir().join(format!(".{name}.old"));
            let _ = std::fs::remove_dir_all(&old);
            if dest.exists() {
                std::fs::rename(&dest, &old)?;
            }
            std::fs::rename(&staging, &dest)?;
            let _ = std::fs::remove_dir_all(&old);
            std::fs::File::open(self.config.cartridges_dir())?.sync_all()
        })();
        if let Err(e) = copy {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(internal(format!("cannot install cartridge {name}: {e}")));
        }
        let installed = self
            .runtime
            .load_dir(&dest)
            .map_err(|e| invalid(e.to_string()))?;
        let summary = cartridge_summary(&installed);
        lock(&self.cartridges).insert(name, installed);
        self.rebuild_routes();
        Ok(summary)
    }

    /// Installed cartridges.
    pub fn cartridge_list(&self) -> serde_json::Value {
        json!(
            lock(&self.cartridges)
                .values()
                .map(cartridge_summary)
                .collect::<Vec<_>>()
        )
    }

    /// Remove a cartridge no gear uses.
    pub fn cartridge_remove(&self, name: &str) -> ApiResult<serde_json::Value> {
        let users: Vec<String> = lock(&self.gears)
            .values()
            .map(|g| g.record())
            .filter(|r| r.cartridge == name)
            .map(|r| r.label())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "cartridge {name} is used by {}; destroy those gears first",
                    users.join(", ")
                ),
            ));
        }
        if lock(&self.cartridges).remove(name).is_none() {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no cartridge named {name} is installed; see `gear cartridge list`"),
            ));
        }
        let _ = std::fs::remove_dir_all(self.config.cartridges_dir().join(name));
        self.rebuild_routes();
        Ok(json!({ "removed": name }))
    }

    pub(crate) fn cartridge(&self, name: &str) -> ApiResult<Cartridge> {
        lock(&self.cartridges).get(name).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("no cartridge named {name} is installed; install it with `gear cartridge install DIR`"),
            )
        })
    }

    // -- gears --------------------------------------------------------------

    pub(crate) fn find(&self, gear: &GearRef) -> ApiResult<Arc<Gear>> {
        lock(&self.gears)
            .values()
            .find(|g| {
                let r = lock(&g.record);
                r.name == gear.name && r.namespace == gear.namespace
            })
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!(
                        "no gear {} in namespace {}; see `gear list`",
                        gear.name, gear.namespace
                    ),
                )
            })
    }

    /// Create a gear.
    pub async fn create(
        self: &Arc<Self>,
        gear: &GearRef,
        cartridge: &str,
    ) -> ApiResult<serde_json::Value> {
        check_gear_ref(gear)?;
        let cart = self.cartridge(cartridge)?;
        let _guard = self.create.lock().await;
        if self.find(gear).is_ok() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} already exists in namespace {}",
                    gear.name, gear.namespace
                ),
            ));
        }
        self.check_public_name_free(gear)?;
        let used: Vec<u32> = lock(&self.gears)
            .values()
            .map(|g| lock(&g.record).uid)
            .collect();
        let uid = (self.config.uid_min..=self.config.uid_max)
            .find(|u| !used.contains(u))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Conflict,
                    "the node's uid range is full; destroy unused gears or widen gears.uid-range",
                )
            })?;
        let mcs = gearhost_sandbox::selinux::mcs_level_for_uid(uid).map_err(internal)?;
        let id = new_id();
        let paths = GearPaths::new(&self.config.gears_dir(), &id);
        let record = GearRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            name: gear.name.clone(),
            namespace: gear.namespace.clone(),
            cartridge: cart.manifest().name.clone(),
            uid,
            mcs_level: mcs.to_string(),
            created: state::now(),
            desired: Desired::Stopped,
            state: GearState::New,
            failure: None,
            cartridge_env: BTreeMap::new(),
            user_env: BTreeMap::new(),
            deployments: Vec::new(),
            active: None,
            next_deployment: 1,
            links: Vec::new(),
            aliases: Vec::new(),
        };
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&paths.root)?;
            set_mode(&paths.root, 0o711).map_err(std::io::Error::other)?;
            for sub in [
                "app-root/repo",
                "app-root/data",
                "app-root/runtime",
                "app-root/logs",
            ] {
                std::fs::create_dir_all(paths.home().join(sub))?;
            }
            std::fs::create_dir_all(paths.root.join("deployments"))?;
            std::fs::create_dir_all(paths.logs())?;
            set_mode(&paths.logs(), 0o700).map_err(std::io::Error::other)?;
            chown_tree(&paths.home(), uid)?;
            set_mode(&paths.home(), 0o700).map_err(std::io::Error::other)?;
            gearhost_sandbox::netns::create(&paths.netns())?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = gearhost_sandbox::netns::remove(&paths.netns());
            let _ = state::remove_tree(&paths.root);
            return Err(internal(format!(
                "cannot create the gear's directories: {e}"
            )));
        }
        // the record is written last: it is what makes the gear exist
        if let Err(e) = state::save_gear(&self.config.gears_dir(), &record) {
            let _ = gearhost_sandbox::netns::remove(&paths.netns());
            let _ = state::remove_tree(&paths.root);
            return Err(internal(e));
        }
        let summary = self.gear_summary(&record);
        let g = Arc::new(Gear::new(&self.config, record));
        lock(&self.gears).insert(id, g.clone());
        self.rebuild_routes();
        crate::frontend::open_door(self, &g).await;
        Ok(summary)
    }

    /// All gears.
    pub fn list(&self) -> serde_json::Value {
        let gears: Vec<Arc<Gear>> = lock(&self.gears).values().cloned().collect();
        json!(gears.iter().map(|g| self.gear_view(g)).collect::<Vec<_>>())
    }

    /// One gear.
    pub fn show(&self, gear: &GearRef) -> ApiResult<serde_json::Value> {
        let g = self.find(gear)?;
        let mut view = self.gear_view(&g);
        let r = g.record();
        view["deployments"] = json!(r.deployments);
        view["env"] = json!(self.layers(&r).effective().keys().collect::<Vec<_>>());
        view["home"] = json!(g.paths.home());
        view["links"] = self.links_view(&r);
        view["aliases"] = json!(r.aliases);
        view["linked_from"] = json!(
            self.linked_from(&r.id)
                .iter()
                .map(|l| l.name.clone())
                .collect::<Vec<_>>()
        );
        Ok(view)
    }

    fn gear_summary(&self, r: &GearRecord) -> serde_json::Value {
        json!({
            "id": r.id,
            "name": r.name,
            "namespace": r.namespace,
            "cartridge": r.cartridge,
            "uid": r.uid,
            "mcs_level": r.mcs_level,
            "state": r.state,
            "desired": r.desired,
            "active_deployment": r.active,
            "url": self.url(r),
        })
    }

    fn gear_view(&self, g: &Gear) -> serde_json::Value {
        let r = g.record();
        let mut v = self.gear_summary(&r);
        v["processes"] = json!(g.supervisor.processes());
        v["failure"] = json!(r.failure);
        v
    }

    /// Destroy a gear: stop everything, remove its cgroups and files, free its uid.
    pub async fn destroy(
        &self,
        gear: &GearRef,
        progress: &Progress,
    ) -> ApiResult<serde_json::Value> {
        let g = self.find(gear)?;
        // an operation stuck on what the gear did gives way (its hooks are cancelled)
        let _op = g.op.preempt("`gear destroy` was asked for").await;
        let r = g.record();
        // a gear others are linked to holds their data: refuse rather than
        // break them (links to it are made under its lock, so this holds)
        let users = self.linked_from(&r.id);
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} is linked from {}; unlink first (`gear unlink {} {}`), then destroy it",
                    r.name,
                    names.join(", "),
                    names[0],
                    r.name
                ),
            ));
        }
        let deploy_required = self
            .cartridge(&r.cartridge)
            .map_or(true, |c| c.manifest().deploy.required);
        if r.state != GearState::New && (r.active.is_some() || !deploy_required) {
            let _ = progress.send(format!("stopping {}", gear.name));
            if let Ok(cart) = self.cartridge(&r.cartridge) {
                // the gear goes anyway: its stop hook gets a few seconds, not its budget
                let cancel = g.op.cancel();
                let timer = tokio::spawn(async move {
                    tokio::time::sleep(DESTROY_STOP_HOOK).await;
                    cancel.cancel(format!(
                        "`gear destroy` gives the stop hook {}",
                        humantime::format_duration(DESTROY_STOP_HOOK)
                    ));
                });
                let _ = self.hook(&g, &cart, HookCall::Stop).await;
                timer.abort();
            }
        }
        g.supervisor.stop_all(DESTROY_GRACE).await;
        // its own links go with it, and the frontend's door
        self.links.close_from(&r.id);
        g.front.close_door();
        // leftovers from any exec that was cut short
        let paths = g.paths.clone();
        let subtree = self.config.cgroup_subtree.clone();
        let id = r.id.clone();
        tokio::task::spawn_blocking(move || {
            remove_gear_cgroups(&subtree, &id);
            gearhost_sandbox::netns::remove(&paths.netns())?;
            state::remove_tree(&paths.root)
        })
        .await
        .map_err(internal)?
        .map_err(|e| internal(format!("cannot remove the gear's files: {e}")))?;
        lock(&self.gears).remove(&r.id);
        self.rebuild_routes();
        Ok(json!({ "destroyed": r.label(), "uid_released": r.uid }))
    }

    // -- lifecycle ----------------------------------------------------------

    /// Deploy `source`: a new deployment, built, activated, and the gear restarted.
    pub async fn deploy(
        &self,
        gear: &GearRef,
        source: &Path,
        progress: &Progress,
    ) -> ApiResult<serde_json::Value> {
        let meta = std::fs::metadata(source).map_err(|e| {
            invalid(format!(
                "cannot read the source directory {}: {e}; give a directory the node can read",
                source.display()
            ))
        })?;
        if !meta.is_dir() {
            return Err(invalid(format!(
                "{} is not a directory; deploy a directory of sources",
                source.display()
            )));
        }
        std::fs::read_dir(source)
            .map_err(|e| invalid(format!("cannot list {}: {e}", source.display())))?;
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let cart = self.cartridge(&g.record().cartridge)?;
        let id = g.record().next_deployment;
        let dest = g.paths.deployment(id);
        let _ = progress.send(format!("copying {} into deployment {id}", source.display()));
        let uid = g.record().uid;
        let (src, dst) = (source.to_path_buf(), dest.clone());
        let copied = tokio::task::spawn_blocking(move || {
            copy_tree(&src, &dst).and_then(|()| chown_tree(&dst, uid))
        })
        .await
        .map_err(internal)?;
        if let Err(e) = copied {
            let _ = state::remove_tree(&dest);
            return Err(invalid(format!("cannot copy {}: {e}", source.display())));
        }
        g.update(&self.config, |r| {
            r.next_deployment = id + 1;
            r.deployments.push(Deployment {
                id,
                created: state::now(),
                source: source.display().to_string(),
                state: DeploymentState::Pending,
                error: None,
            });
        })?;
        let _ = progress.send(format!("building deployment {id}"));
        let previous = g.record().active;
        let was_running = g.record().desired == Desired::Running;
        let build = self
            .hook_with_repo(&g, &cart, HookCall::Build, Some(id))
            .await;
        if let Err(e) = build {
            g.update(&self.config, |r| {
                if let Some(d) = r.deployments.iter_mut().find(|d| d.id == id) {
                    d.state = DeploymentState::Failed;
                    d.error = Some(e.message.clone());
                }
            })?;
            let keep =
                previous.map_or(String::new(), |p| format!("; deployment {p} keeps serving"));
            return Err(failed(format!(
                "build of deployment {id} failed: {}{keep}; see `gear logs {} --hooks`",
                e.message, gear.name
            )));
        }
        g.update(&self.config, |r| {
            if let Some(d) = r.deployments.iter_mut().find(|d| d.id == id) {
                d.state = DeploymentState::Ready;
            }
        })?;
        if let Err(e) = self
            .activate(&g, &cart, id, was_running || previous.is_none(), progress)
            .await
        {
            return Err(self
                .roll_back_failed_start(&g, id, previous.filter(|_| was_running), e, progress)
                .await);
        }
        self.prune(&g);
        let r = g.record();
        Ok(json!({ "deployment": id, "state": r.state, "url": self.gear_summary(&r)["url"] }))
    }

    /// Deployment `id` was built but did not start: mark it failed and, when
    /// `previous` was serving before, activate and start it again. Returns
    /// the error to report.
    async fn roll_back_failed_start(
        &self,
        g: &Arc<Gear>,
        id: u32,
        previous: Option<u32>,
        error: ApiError,
        progress: &Progress,
    ) -> ApiError {
        let name = g.record().name;
        let _ = g.update(&self.config, |r| {
            if let Some(d) = r.deployments.iter_mut().find(|d| d.id == id) {
                d.state = DeploymentState::Failed;
                d.error = Some(error.message.clone());
            }
        });
        let Some(previous) = previous else {
            return failed(format!("deployment {id} did not start: {}", error.message));
        };
        let _ = progress.send(format!(
            "deployment {id} did not start; going back to deployment {previous}"
        ));
        if let Err(e) = g.update(&self.config, |r| r.active = Some(previous)) {
            return failed(format!(
                "deployment {id} did not start: {}; going back to deployment {previous} failed: {}",
                error.message, e.message
            ));
        }
        match self.start_locked(g, progress).await {
            Ok(()) => failed(format!(
                "deployment {id} did not start: {}; deployment {previous} is serving again \
                 (see `gear logs {name}`)",
                error.message
            )),
            Err(e) => failed(format!(
                "deployment {id} did not start: {}; deployment {previous} did not start \
                 again either: {}",
                error.message, e.message
            )),
        }
    }

    async fn activate(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        id: u32,
        start: bool,
        progress: &Progress,
    ) -> ApiResult<()> {
        if g.supervisor.any_running() || g.record().state == GearState::Running {
            let _ = progress.send("stopping the running deployment".into());
            self.stop_locked(g, cart).await?;
        }
        g.update(&self.config, |r| r.active = Some(id))?;
        if start {
            let _ = progress.send(format!("starting deployment {id}"));
            self.start_locked(g, progress).await?;
        }
        Ok(())
    }

    fn prune(&self, g: &Gear) {
        let keep = self.config.keep_deployments;
        let r = g.record();
        if r.deployments.len() <= keep {
            return;
        }
        let excess = r.deployments.len() - keep;
        let drop: Vec<u32> = r
            .deployments
            .iter()
            .filter(|d| Some(d.id) != r.active)
            .take(excess)
            .map(|d| d.id)
            .collect();
        if g.update(&self.config, |r| {
            r.deployments.retain(|d| !drop.contains(&d.id))
        })
        .is_ok()
        {
            for id in drop {
                let _ = state::remove_tree(&g.paths.deployment(id));
            }
        }
    }

    /// Run the build hook on the active deployment.
    pub async fn build(&self, gear: &GearRef) -> ApiResult<serde_json::Value> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let r = g.record();
        let active = r.active.ok_or_else(|| {
            invalid(format!(
                "gear {} has nothing deployed; run `gear deploy {} DIR`",
                r.name, r.name
            ))
        })?;
        let cart = self.cartridge(&r.cartridge)?;
        self.hook_with_repo(&g, &cart, HookCall::Build, Some(active))
            .await?;
        Ok(json!({ "built": active }))
    }

    /// Start the gear. Starting a running gear changes nothing and says so.
    pub async fn start(&self, gear: &GearRef, progress: &Progress) -> ApiResult<serde_json::Value> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let r = g.record();
        if r.state == GearState::Running
            && g.supervisor.any_running()
            && g.supervisor.failed().is_none()
        {
            return Ok(self.unchanged(
                &g,
                format!(
                    "gear {} is already running; nothing was changed (`gear restart {}` restarts it)",
                    r.name, r.name
                ),
            ));
        }
        self.start_locked(&g, progress).await?;
        Ok(self.gear_view(&g))
    }

    /// The view of a gear an operation left as it was: `unchanged` set, and
    /// `note` saying why.
    pub(crate) fn unchanged(&self, g: &Gear, note: String) -> serde_json::Value {
        let mut view = self.gear_view(g);
        view["unchanged"] = json!(true);
        view["note"] = json!(note);
        view
    }

    pub(crate) async fn start_locked(&self, g: &Arc<Gear>, progress: &Progress) -> ApiResult<()> {
        let r = g.record();
        let cart = self.cartridge(&r.cartridge)?;
        if r.active.is_none() && cart.manifest().deploy.required {
            return Err(invalid(format!(
                "gear {} has nothing deployed; run `gear deploy {} DIR` first",
                r.name, r.name
            )));
        }
        g.update(&self.config, |r| {
            r.desired = Desired::Running;
            r.state = GearState::Starting;
            r.failure = None;
        })?;
        g.supervisor.forget_ended();
        let _ = progress.send("running the start hook".into());
        let started = match self.hook(g, &cart, HookCall::Start).await {
            Ok(_) => self.wait_ready(g, &cart, progress).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(()) => {
                g.update(&self.config, |r| r.state = GearState::Running)?;
                // a fresh start counts as activity for the idler
                g.front.touch();
                Ok(())
            }
            Err(e) => {
                g.supervisor.stop_all(Duration::from_secs(2)).await;
                g.update(&self.config, |r| {
                    r.state = GearState::Failed;
                    r.failure = Some(e.message.clone());
                })?;
                Err(e)
            }
        }
    }

    /// After the start hook: wait until the app answers on its primary port
    /// (the gear is not "running" before a request can be served), failing
    /// early when its processes die.
    async fn wait_ready(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        progress: &Progress,
    ) -> ApiResult<()> {
        let Some(port) = cart.manifest().primary_endpoint().map(|e| e.private_port) else {
            return Ok(());
        };
        let _ = progress.send(format!("waiting for the app to answer on port {port}"));
        let cancel = g.op.cancel();
        let netns = g.paths.netns();
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        // a wake-up from idle waits on this, and most apps answer within a few
        // hundred milliseconds: look every 4 ms for the first quarter second (a
        // look is one refused connect, well under 0.1 ms), so such an app is
        // seen at most 4 ms after it listens, then less and less often (many
        // gears start at once when the node starts)
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(4);
        loop {
            let ns = netns.clone();
            let answered = tokio::task::spawn_blocking(move || {
                gearhost_sandbox::netns::connect(
                    &ns,
                    ([127, 0, 0, 1], port).into(),
                    Duration::from_millis(500),
                )
                .is_ok()
            })
            .await
            .unwrap_or(false);
            if answered {
                return Ok(());
            }
            // a process that ended before the app answered (even one the
            // supervisor would restart) means the app crashes on start:
            // say so now rather than at the timeout
            if let Some(p) = g
                .supervisor
                .processes()
                .into_iter()
                .find(|p| p.restarts > 0 || (p.last_exit.is_some() && p.pid.is_none()))
            {
                let how = match p.last_exit {
                    Some(ExitStatus::Exited(code)) => format!("exited with code {code}"),
                    Some(ExitStatus::Signaled(sig)) => format!("was killed by signal {sig}"),
                    None => "ended".to_string(),
                };
                return Err(failed(format!(
                    "the app's process `{}` {how} before it answered on port {port}; \
                     its output is in `gear logs {}`",
                    p.name,
                    g.record().name
                )));
            }
            if !g.supervisor.any_running() {
                return Err(failed(format!(
                    "the app's processes ended before it answered on port {port}; see `gear logs {}`",
                    g.record().name
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(failed(format!(
                    "the app did not answer on port {port} within {}; check that it listens on 127.0.0.1:{port} or 0.0.0.0:{port} (see `gear logs {}`)",
                    humantime::format_duration(self.config.start_timeout),
                    g.record().name
                )));
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => {
                    return Err(failed(format!(
                        "the start was stopped before the app answered on port {port}: {}",
                        cancel.reason().unwrap_or_default()
                    )));
                }
            }
            if started.elapsed() >= Duration::from_millis(250) {
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }

    /// Stop the gear. Stopping a stopped gear changes nothing and says so.
    pub async fn stop(&self, gear: &GearRef) -> ApiResult<serde_json::Value> {
        let g = self.find(gear)?;
        // an operation stuck on what the gear did gives way (its hooks are cancelled)
        let _op = g.op.preempt("`gear stop` was asked for").await;
        let r = g.record();
        if matches!(r.state, GearState::Stopped | GearState::New) && !g.supervisor.any_running() {
            if r.desired != Desired::Stopped {
                g.update(&self.config, |r| r.desired = Desired::Stopped)?;
            }
            return Ok(self.unchanged(
                &g,
                format!("gear {} is already stopped; nothing was changed", r.name),
            ));
        }
        let cart = self.cartridge(&r.cartridge)?;
        g.update(&self.config, |r| r.desired = Desired::Stopped)?;
        self.stop_locked(&g, &cart).await?;
        Ok(self.gear_view(&g))
    }

    async fn stop_locked(&self, g: &Arc<Gear>, cart: &Cartridge) -> ApiResult<()> {
        self.stop_into(g, cart, GearState::Stopped).await
    }

    /// Run the stop hook, stop whatever it left running, close the
    /// frontend's connections to the gear and leave it in `state`
    /// (`stopped`, or `idle` for the idler).
    pub(crate) async fn stop_into(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        state: GearState,
    ) -> ApiResult<()> {
        g.update(&self.config, |r| r.state = GearState::Stopping)?;
        let hook = self.hook(g, cart, HookCall::Stop).await;
        // whatever the hook left running is stopped by the node
        g.supervisor.stop_all(Duration::from_secs(10)).await;
        g.front.clear_pool();
        g.update(&self.config, |r| r.state = state)?;
        hook.map(|_| ())
    }

    /// Stop, then start.
    pub async fn restart(
        &self,
        gear: &GearRef,
        progress: &Progress,
    ) -> ApiResult<serde_json::Value> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let cart = self.cartridge(&g.record().cartridge)?;
        self.stop_locked(&g, &cart).await?;
        self.start_locked(&g, progress).await?;
        Ok(self.gear_view(&g))
    }

    /// State and processes (a failed process marks the gear failed).
    pub fn status(&self, gear: &GearRef) -> ApiResult<serde_json::Value> {
        let g = self.find(gear)?;
        if let Some(name) = g.supervisor.failed()
            && g.record().state == GearState::Running
        {
            let _ = g.update(&self.config, |r| {
                r.state = GearState::Failed;
                r.failure = Some(format!(
                    "process {name} kept crashing; see `gear logs {}`",
                    r.name
                ));
            });
        }
        Ok(self.gear_view(&g))
    }

    /// The cartridge's control hook.
    pub async fn control(
        &self,
        gear: &GearRef,
        action: &str,
        args: Vec<String>,
    ) -> ApiResult<serde_json::Value> {
        if action.is_empty() {
            return Err(invalid("the action is empty; try `status`"));
        }
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let cart = self.cartridge(&g.record().cartridge)?;
        let out = self
            .hook(
                &g,
                &cart,
                HookCall::Control {
                    action: action.into(),
                    args,
                },
            )
            .await?;
        Ok(json!({ "output": bounded_output(out) }))
    }

    /// Deployment history.
    pub fn deployments(&self, gear: &GearRef) -> ApiResult<serde_json::Value> {
        let r = self.find(gear)?.record();
        Ok(json!({ "active": r.active, "deployments": r.deployments }))
    }

    /// Activate an earlier deployment and restart onto it.
    pub async fn rollback(
        &self,
        gear: &GearRef,
        id: Option<u32>,
        progress: &Progress,
    ) -> ApiResult<serde_json::Value> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let r = g.record();
        let active = r
            .active
            .ok_or_else(|| invalid("nothing is deployed, so there is nothing to roll back to"))?;
        let target = match id {
            Some(id) => r.deployments.iter().find(|d| d.id == id).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!("no deployment {id}; see `gear deployments {}`", r.name),
                )
            })?,
            None => r
                .deployments
                .iter()
                .rev()
                .find(|d| d.id < active && d.state == DeploymentState::Ready)
                .ok_or_else(|| {
                    invalid("there is no earlier successful deployment to roll back to")
                })?,
        };
        if target.state != DeploymentState::Ready {
            return Err(invalid(format!(
                "deployment {} did not build successfully; pick another",
                target.id
            )));
        }
        let target = target.id;
        let cart = self.cartridge(&r.cartridge)?;
        let start = r.desired == Desired::Running;
        self.activate(&g, &cart, target, start, progress).await?;
        Ok(json!({ "active": target }))
    }

    fn layers(&self, r: &GearRecord) -> Layers {
        let port = self
            .cartridge(&r.cartridge)
            .ok()
            .and_then(|c| c.manifest().primary_endpoint().map(|e| e.private_port));
        Layers {
            system: env::system_layer(r, port, &self.config.domain),
            cartridge: r.cartridge_env.clone(),
            linked: self.linked_env(r),
            user: r.user_env.clone(),
        }
    }

    /// Set user variables.
    pub async fn env_set(
        &self,
        gear: &GearRef,
        vars: Vec<(String, String)>,
    ) -> ApiResult<serde_json::Value> {
        for (k, v) in &vars {
            env::check_user_key(k).map_err(invalid)?;
            if v.len() > 64 * 1024 || v.contains('\0') {
                return Err(invalid(format!(
                    "the value of {k} is longer than 64 KiB or contains a NUL byte"
                )));
            }
        }
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        env::check_room(
            &g.record().user_env,
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "the gear's environment",
        )
        .map_err(invalid)?;
        g.update(&self.config, |r| {
            for (k, v) in vars {
                r.user_env.insert(k, v);
            }
        })?;
        Ok(json!({ "note": "restart the gear for running processes to see the change" }))
    }

    /// Remove user variables.
    pub async fn env_unset(
        &self,
        gear: &GearRef,
        keys: Vec<String>,
    ) -> ApiResult<serde_json::Value> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        g.update(&self.config, |r| {
            for k in &keys {
                r.user_env.remove(k);
            }
        })?;
        Ok(json!({ "unset": keys }))
    }

    /// The environment by layer.
    pub fn env_list(&self, gear: &GearRef) -> ApiResult<serde_json::Value> {
        let r = self.find(gear)?.record();
        let layers = self.layers(&r);
        Ok(json!({ "layers": layers, "effective": layers.effective() }))
    }

    /// Paths of a gear's logs, for `gear logs`.
    pub fn log_path(&self, gear: &GearRef, which: LogKind) -> ApiResult<PathBuf> {
        let g = self.find(gear)?;
        Ok(match which {
            LogKind::App => g.app_log.path(),
            LogKind::Hooks => g.hook_log.path(),
            LogKind::Access => {
                // what the frontend buffered is on disk before it is read
                g.front.access.flush();
                g.front.access.path()
            }
        })
    }

    /// Run `argv` in the gear's sandbox attached to the caller's stdio; `resized` gets a byte
    /// whenever the caller's terminal changes size.
    pub async fn exec(
        &self,
        gear: &GearRef,
        argv: Vec<String>,
        fds: [std::fs::File; 3],
        resized: Option<std::fs::File>,
    ) -> ApiResult<serde_json::Value> {
        if argv.is_empty() {
            return Err(invalid("give the command to run after `--`"));
        }
        let g = self.find(gear)?;
        let sandbox = self.sandbox(&g, g.record().active);
        let leaf = gearhost_sandbox::cgroup::exec_leaf(
            &g.record().id,
            g.execs.fetch_add(1, Ordering::Relaxed),
        );
        let status = procs::exec_attached(&sandbox, &leaf, argv, fds, resized)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(match status {
            ExitStatus::Exited(c) => json!({ "exit": c }),
            ExitStatus::Signaled(s) => json!({ "signal": s }),
        })
    }

    fn sandbox(&self, g: &Gear, repo: Option<u32>) -> GearSandbox {
        let r = g.record();
        GearSandbox {
            id: r.id.clone(),
            name: r.name.clone(),
            uid: r.uid,
            home: g.paths.home(),
            netns: g.paths.netns(),
            repo: repo.map(|id| g.paths.deployment(id)),
            env: self.layers(&r).effective().into_iter().collect(),
            config: self.config.clone(),
        }
    }

    // -- hooks --------------------------------------------------------------

    async fn hook(&self, g: &Arc<Gear>, cart: &Cartridge, call: HookCall) -> ApiResult<String> {
        let active = g.record().active;
        self.hook_with_repo(g, cart, call, active).await
    }

    async fn hook_with_repo(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        call: HookCall,
        repo: Option<u32>,
    ) -> ApiResult<String> {
        let host = Arc::new(NodeHost {
            gear: g.clone(),
            sandbox: self.sandbox(g, repo),
            cartridge: cart.manifest().clone(),
            config: self.config.clone(),
            linked: self.linked_env(&g.record()),
            egress: crate::egress::BuildEgress::paid_by((self.admission.clone(), g.conns.clone())),
        });
        let kind = call.kind();
        g.hook_log.line(&format!("{kind}[node]"), "hook started");
        // the operation holding the gear's lock: a `gear stop` or `gear destroy`
        // that preempts it cancels the hook
        let cancel = g.op.cancel();
        let outcome = cart.call_cancellable(host.clone(), call, &cancel).await;
        // a build's network ends with its hook
        host.egress.close().await;
        // how long, and how much of it the hook machinery and the hook's own
        // code took, as opposed to the programs it ran
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let timing = format!(
            "{:.1} ms (hook {:.2} ms, programs and processes {:.1} ms)",
            ms(outcome.elapsed),
            ms(outcome.elapsed.saturating_sub(outcome.host_calls)),
            ms(outcome.host_calls)
        );
        match outcome.result {
            Ok(out) => {
                g.hook_log.line(
                    &format!("{kind}[node]"),
                    &format!("hook succeeded in {timing}"),
                );
                Ok(out)
            }
            Err(e) => {
                g.hook_log.line(
                    &format!("{kind}[node]"),
                    &format!("hook failed after {timing}: {e}"),
                );
                Err(failed(e.to_string()))
            }
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

/// The `GearHost` the node gives hooks: requests go to the gear's sandbox and
/// supervisor; env changes persist in the gear's record.
#[derive(Debug)]
struct NodeHost {
    gear: Arc<Gear>,
    sandbox: GearSandbox,
    cartridge: gearhost_runtime::Manifest,
    config: Arc<NodeConfig>,
    /// What linked gears publish, as of the start of the call.
    linked: BTreeMap<String, String>,
    /// The build's network, opened by its first `exec` that may use it.
    egress: crate::egress::BuildEgress,
}

impl GearHost for NodeHost {
    fn gear(&self) -> GearInfo {
        let r = self.gear.record();
        GearInfo {
            id: r.id,
            name: r.name,
            namespace: r.namespace,
            cartridge: r.cartridge,
            home: GEAR_HOME.into(),
            endpoints: self
                .cartridge
                .endpoints
                .iter()
                .map(EndpointInfo::from)
                .collect(),
        }
    }

    fn preopens(&self) -> Vec<Preopen> {
        let mut preopens = vec![Preopen {
            host: self.sandbox.home.clone(),
            guest: GEAR_HOME.into(),
            writable: true,
        }];
        if let Some(repo) = &self.sandbox.repo {
            preopens.push(Preopen {
                host: repo.clone(),
                guest: procs::GEAR_REPO.into(),
                writable: true,
            });
        }
        preopens
    }

    fn log(&self, hook: HookKind, source: LogSource, level: LogLevel, message: &str) {
        let source = match source {
            LogSource::Hook => level.as_str(),
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
        };
        self.gear
            .hook_log
            .line(&format!("{hook}[{source}]"), message);
    }

    fn env_get(&self, key: &str) -> Option<String> {
        self.env_list()
            .into_iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    fn env_list(&self) -> Vec<(String, String)> {
        let r = self.gear.record();
        let mut env: BTreeMap<String, String> = r.cartridge_env.clone();
        env.extend(self.linked.clone());
        env.extend(r.user_env.clone());
        env.extend(
            self.sandbox
                .env
                .iter()
                .filter(|(k, _)| env::is_system_key(k))
                .cloned(),
        );
        env.into_iter().collect()
    }

    fn env_set(&self, key: &str, value: &str) -> Result<(), HostError> {
        if env::is_system_key(key) {
            return Err(HostError::PermissionDenied(format!(
                "{key} is set by the node and cannot be changed by a cartridge"
            )));
        }
        env::check_room(
            &self.gear.record().cartridge_env,
            [(key, value)],
            "the cartridge's variables",
        )
        .map_err(HostError::Invalid)?;
        self.gear
            .update(&self.config, |r| {
                r.cartridge_env.insert(key.into(), value.into());
            })
            .map(drop)
            .map_err(|e| HostError::Failed(e.message))
    }

    fn env_unset(&self, key: &str) -> Result<(), HostError> {
        self.gear
            .update(&self.config, |r| {
                r.cartridge_env.remove(key);
            })
            .map(drop)
            .map_err(|e| HostError::Failed(e.message))
    }

    fn exec(
        &self,
        ctx: RequestContext,
        cmd: CommandSpec,
    ) -> gearhost_runtime::host::BoxFuture<'_, Result<ExecOutput, HostError>> {
        Box::pin(async move {
            // a build that may use the network gets its own namespace and
            // the egress proxy, never the host's network
            let network = ctx.network
                && self.config.build_network
                && self.config.build_egress.mode == crate::egress::EgressMode::Proxy;
            let timeout = if ctx.hook == HookKind::Build {
                self.config.build_timeout
            } else {
                self.config.hook_timeout
            };
            let leaf = gearhost_sandbox::cgroup::exec_leaf(
                &self.sandbox.id,
                self.gear.execs.fetch_add(1, Ordering::Relaxed),
            );
            let net = if network {
                Some(
                    self.egress
                        .get(&self.config.build_egress, &self.gear.hook_log)
                        .await?,
                )
            } else {
                None
            };
            procs::exec(&self.sandbox, &leaf, cmd, net.as_deref(), timeout).await
        })
    }

    fn spawn(
        &self,
        _ctx: RequestContext,
        name: &str,
        cmd: CommandSpec,
        restart: RestartPolicy,
    ) -> gearhost_runtime::host::BoxFuture<'_, Result<u32, HostError>> {
        let name = name.to_string();
        Box::pin(async move {
            self.gear
                .supervisor
                .spawn(
                    self.sandbox.clone(),
                    self.gear.app_log.clone(),
                    &name,
                    cmd,
                    restart,
                )
                .await
        })
    }

    fn signal(
        &self,
        name: &str,
        signal: Signal,
    ) -> gearhost_runtime::host::BoxFuture<'_, Result<(), HostError>> {
        let r = self.gear.supervisor.signal(name, signal);
        Box::pin(async move { r })
    }

    fn wait(
        &self,
        name: &str,
        timeout: Duration,
    ) -> gearhost_runtime::host::BoxFuture<'_, Result<Option<ExitStatus>, HostError>> {
        let name = name.to_string();
        Box::pin(async move { self.gear.supervisor.wait(&name, timeout).await })
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        self.gear.supervisor.processes()
    }

    fn file_owner(&self) -> Option<gearhost_runtime::fsid::FileOwner> {
        // what a hook writes in the gear belongs to the gear, and it may
        // touch only what the gear's user may
        Some(gearhost_runtime::fsid::FileOwner {
            uid: self.sandbox.uid,
            gid: self.sandbox.uid,
        })
    }
}

fn cartridge_summary(c: &Cartridge) -> serde_json::Value {
    let m = c.manifest();
    json!({
        "name": m.name,
        "version": m.version.to_string(),
        "display_name": m.display_name,
        "description": m.description,
        "endpoints": m.endpoints,
        "contract": c.info().contract_version,
        "sha256": c.info().content_hash,
    })
}

fn check_gear_ref(gear: &GearRef) -> ApiResult<()> {
    for (what, value) in [("gear name", &gear.name), ("namespace", &gear.namespace)] {
        gearhost_runtime::manifest::check_name(value, 32).map_err(|problem| {
            invalid(format!(
                "invalid {what} {value:?}: {problem}; use 1-32 lower-case letters, digits and single dashes, starting with a letter"
            ))
        })?;
    }
    Ok(())
}

fn new_id() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    gearhost_sys::hex::encode(&bytes)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow::anyhow!("cannot set the mode of {}: {e}", path.display()))
}

/// Copy a source tree without following symlinks (they are copied as links).
/// The most of a control hook's output the node passes on.
const MAX_CONTROL_OUTPUT: usize = 1 << 20;

/// A control hook's output, cut at [`MAX_CONTROL_OUTPUT`] bytes (on a
/// character boundary, the cut marked): what a hook says about a gear may
/// come from the gear's files.
fn bounded_output(mut out: String) -> String {
    if out.len() > MAX_CONTROL_OUTPUT {
        let mut end = MAX_CONTROL_OUTPUT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        let dropped = out.len() - end;
        out.truncate(end);
        out.push_str(&format!("\n[output cut: {dropped} more bytes]\n"));
    }
    out
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    copy_tree_below(src, dst, 0)
}

/// How deep a deployed source may nest directories (the copy recurses).
const MAX_SOURCE_DEPTH: usize = 128;

fn copy_tree_below(src: &Path, dst: &Path, depth: usize) -> std::io::Result<()> {
    if depth > MAX_SOURCE_DEPTH {
        return Err(std::io::Error::other(format!(
            "{} is nested more than {MAX_SOURCE_DEPTH} directories deep; deploy a shallower tree",
            src.display()
        )));
    }
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ty.is_dir() {
            copy_tree_below(&entry.path(), &to, depth + 1)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// Hand a tree the node just created to the gear's uid (never following symlinks).
fn chown_tree(path: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

/// Remove every cgroup of gear `id`: its group under the node's subtree with
/// every process start's cgroup in it, and leaves a node of an earlier
/// version made directly under the subtree (`<id>-...`).
fn remove_gear_cgroups(subtree: &str, id: &str) {
    if let Err(e) = gearhost_sandbox::cgroup::remove_gear(subtree, id) {
        tracing::warn!(gear = %id, error = %e, "the gear's cgroups could not all be removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_output_is_cut_on_a_character_boundary() {
        assert_eq!(bounded_output("short".into()), "short");
        let long = "é".repeat(MAX_CONTROL_OUTPUT);
        let cut = bounded_output(long.clone());
        assert!(cut.len() < MAX_CONTROL_OUTPUT + 64, "{}", cut.len());
        let kept = cut.split('\n').next().expect("text");
        assert!(long.starts_with(kept) && kept.len() == MAX_CONTROL_OUTPUT);
        assert!(cut.ends_with(&format!(
            "[output cut: {} more bytes]\n",
            long.len() - kept.len()
        )));
    }
}
