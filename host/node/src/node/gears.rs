//! Gears as things that exist: create (uid, MCS level, directories — with a
//! disk quota, `home`, `deployments` and `logs` as btrfs subvolumes in the
//! gear's qgroup — network namespace, record last), list, show (with the disk
//! use), and destroy (nothing left behind, subvolumes and qgroup included),
//! with the views the API answers with.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use gearhost_runtime::{ExitStatus, HookCall, ProcessInfo};

use super::*;
use crate::api::reply;
use crate::api::{ApiError, ErrorKind, GearRef};
use crate::state::{self, Desired, GearPaths, GearRecord, GearState, RECORD_VERSION};

impl Node {
    /// Create a gear, with a disk quota of `disk` bytes (none: the node's
    /// default, `gears.disk`), owned by `owner` (the creating user, whose
    /// limits it counts against) when given.
    pub async fn create(
        self: &Arc<Self>,
        gear: &GearRef,
        cartridge: &str,
        disk: Option<u64>,
        owner: Option<&Owner>,
    ) -> ApiResult<reply::GearSummary> {
        self.create_with_uid(gear, cartridge, disk, owner, None, None)
            .await
    }

    /// [`Node::create`], taking uid `prefer` when it is in the node's range
    /// and free (a restore keeps the uid, and so the MCS level, of the gear
    /// it brings back). In a cluster the uid is claimed cluster-wide instead,
    /// but for a gear `arriving` from another node (a move): it keeps its id
    /// and uid (`prefer`), claims nothing, and counts as placed on the node
    /// it comes from until the move takes its placement.
    pub(crate) async fn create_with_uid(
        self: &Arc<Self>,
        gear: &GearRef,
        cartridge: &str,
        disk: Option<u64>,
        owner: Option<&Owner>,
        prefer: Option<u32>,
        arriving: Option<&Arrival>,
    ) -> ApiResult<reply::GearSummary> {
        check_gear_ref(gear)?;
        let cart = self.cartridge(cartridge)?;
        let disk = self.quotas.for_new_gear(disk)?;
        let _guard = self.create.lock().await;
        // looked up by the index (`find` would look for a near name to suggest)
        if lock(&self.gears)
            .by_name(&gear.namespace, &gear.name)
            .is_some()
        {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} already exists in namespace {}",
                    gear.name, gear.namespace
                ),
            ));
        }
        self.check_public_name_free(gear)?;
        if let Some(owner) = owner {
            self.check_user_limits(owner)?;
        }
        let id = arriving.map_or_else(new_id, |a| a.id.clone());
        // in a cluster the uid (and with it the MCS level), the name and the
        // public label are claimed cluster-wide, in one etcd transaction
        let uid = match (self.cluster(), arriving, prefer) {
            // a moved gear's claims are its own already; the move takes its placement last
            (Some(_), Some(a), Some(uid)) => {
                if lock(&self.gears).uid_taken(uid) {
                    return Err(ApiError::new(
                        ErrorKind::Conflict,
                        format!(
                            "uid {uid} of the gear arriving from node {} is held by a gear of this node",
                            a.from
                        ),
                    ));
                }
                lock(&self.elsewhere).insert(id.clone(), a.from.clone());
                uid
            }
            (Some(cluster), _, _) => {
                self.claim_new_gear(cluster, &id, gear, &cart.manifest().name)
                    .await?
            }
            // the uid asked for if it is free, else the lowest free uid (the create
            // lock is held: nobody else takes it meanwhile)
            (None, _, _) => {
                let mut table = lock(&self.gears);
                let range = self.config.uid_min..=self.config.uid_max;
                prefer
                    .filter(|u| range.contains(u) && !table.uid_taken(*u))
                    .or_else(|| table.free_uid(self.config.uid_min, self.config.uid_max))
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorKind::Conflict,
                            "the node's uid range is full; destroy unused gears, or widen the range (gears.uid-min, gears.uid-max in the node configuration)",
                        )
                    })?
            }
        };
        let mcs = gearhost_sandbox::selinux::mcs_level_for_uid(uid).map_err(internal)?;
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
            process_env: BTreeMap::new(),
            deployments: Vec::new(),
            active: None,
            next_deployment: 1,
            links: Vec::new(),
            aliases: Vec::new(),
            disk,
            owner: owner.map(|o| o.user.clone()),
            slot: 0,
            https: state::GearHttps::default(),
        };
        let quotas = &self.quotas;
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&paths.root)?;
            set_mode(&paths.root, 0o711).map_err(std::io::Error::other)?;
            if let Some(limit) = disk {
                // what the gear writes, and what the node writes for it, in its qgroup
                quotas.make_gear(&paths.root, uid, limit)?;
            }
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
        let undo = || {
            let _ = gearhost_sandbox::netns::remove(&paths.netns());
            if disk.is_some() {
                quotas.remove_gear(&paths.root, uid);
            }
            let _ = state::remove_tree(&paths.root);
        };
        let forget_arrival = || {
            if arriving.is_some() {
                lock(&self.elsewhere).remove(&record.id);
            }
        };
        if let Err(e) = made {
            undo();
            self.release_gear(&record).await;
            forget_arrival();
            return Err(internal(format!(
                "cannot create the gear's directories: {e}"
            )));
        }
        // the record is written last: it is what makes the gear exist
        if let Err(e) = state::save_gear(&self.config.gears_dir(), &record) {
            undo();
            self.release_gear(&record).await;
            forget_arrival();
            return Err(internal(e));
        }
        let summary = self.gear_summary(&record);
        let g = Arc::new(Gear::new(&self.config, record));
        lock(&self.gears).insert(id, g.clone());
        self.update_routes(&g);
        Ok(summary)
    }

    /// Refuses a create that would take `owner` over its limits (checked
    /// under the node's create lock, so two creates cannot both pass).
    fn check_user_limits(&self, owner: &Owner) -> ApiResult<()> {
        let owned = lock(&self.gears).owned_by(&owner.user);
        let after = owned as u64 + 1;
        if let Some(max) = owner.limit.max_gears
            && after > u64::from(max)
        {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "{} owns {owned} gear(s), the most this node allows {} ({max}); destroy one, or ask an operator to raise users.max-gears",
                    owner.user, owner.user
                ),
            ));
        }
        if let Some(max) = owner.limit.max_memory
            && after * self.config.gear_memory > max
        {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "another gear would give {}'s gears {} of memory together (each gets {}), more than the {} this node allows them; destroy one, or ask an operator to raise users.max-memory",
                    owner.user,
                    gearhost_runtime::manifest::format_size(after * self.config.gear_memory),
                    gearhost_runtime::manifest::format_size(self.config.gear_memory),
                    gearhost_runtime::manifest::format_size(max)
                ),
            ));
        }
        Ok(())
    }

    /// All gears. What every view needs of the cartridges and the frontend is read once,
    /// and each gear's record is read in place, not copied: ten thousand gears are listed
    /// in a few milliseconds.
    pub fn list(&self) -> Vec<reply::GearView> {
        let cartridges: HashMap<String, CartridgeFacts> = lock(&self.cartridges)
            .iter()
            .map(|(name, c)| (name.clone(), CartridgeFacts::of(c)))
            .collect();
        let urls = self.url_parts();
        let gears = self.gears_snapshot();
        gears
            .iter()
            .map(|g| {
                let processes = g.supervisor.processes();
                let r = lock(&g.record);
                let summary = summary_of(&r, cartridges.get(&r.cartridge), &urls);
                view_of(summary, processes, r.failure.clone())
            })
            .collect()
    }

    /// One gear.
    pub fn show(&self, gear: &GearRef) -> ApiResult<reply::GearDetail> {
        let g = self.find(gear)?;
        let view = self.gear_view(&g);
        let r = g.record();
        Ok(reply::GearDetail {
            view,
            env: self.layers(&r).effective().into_keys().collect(),
            home: g.paths.home(),
            links: self.links_view(&r),
            linked_from: self
                .linked_from(&r.id)
                .into_iter()
                .map(|l| l.name)
                .collect(),
            disk: self.disk_usage(&g.paths, &r),
            memory: self.memory_held(&g),
            deployments: r.deployments,
            aliases: r.aliases,
        })
    }

    /// The memory the gear's processes hold, as its cgroup counts it, while
    /// any run (or are frozen).
    fn memory_held(&self, g: &Gear) -> Option<u64> {
        if !g.supervisor.any_running() && g.state() != GearState::Frozen {
            return None;
        }
        gearhost_sandbox::cgroup::gear_memory(&self.config.cgroup_subtree, &g.record().id)
    }

    /// A gear's disk use against its quota, when it has one. A use that cannot
    /// be read is logged and left out: `show` still answers.
    fn disk_usage(&self, paths: &GearPaths, r: &GearRecord) -> Option<reply::DiskUsage> {
        let limit = r.disk?;
        match self.quotas.usage(&paths.root, r.uid) {
            Ok(u) => Some(reply::DiskUsage {
                used: u.used,
                limit: u.limit.unwrap_or(limit),
            }),
            Err(e) => {
                tracing::warn!(gear = %r.label(), error = %e, "cannot read the gear's disk use");
                None
            }
        }
    }

    pub(super) fn gear_summary(&self, r: &GearRecord) -> reply::GearSummary {
        let facts = self
            .cartridge(&r.cartridge)
            .ok()
            .map(|c| CartridgeFacts::of(&c));
        summary_of(r, facts.as_ref(), &self.url_parts())
    }

    pub(crate) fn gear_view(&self, g: &Gear) -> reply::GearView {
        let processes = g.supervisor.processes();
        let r = lock(&g.record);
        let summary = self.gear_summary(&r);
        view_of(summary, processes, r.failure.clone())
    }

    /// The view of a gear an operation left as it was: `unchanged` set, and
    /// `note` saying why.
    pub(crate) fn unchanged(&self, g: &Gear, note: String) -> reply::GearView {
        reply::GearView {
            unchanged: true,
            note: Some(note),
            ..self.gear_view(g)
        }
    }

    /// Destroy a gear: stop everything, remove its cgroups and files, free its uid.
    pub async fn destroy(
        &self,
        gear: &GearRef,
        progress: &Progress,
    ) -> ApiResult<reply::Destroyed> {
        let g = self.find(gear)?;
        // an operation stuck on what the gear did gives way (its hooks are cancelled)
        let _op = g.op.preempt("`gear destroy` was asked for").await;
        self.destroy_locked(&g, progress).await
    }

    /// [`Node::destroy`] of gear `g`, its lock held. A gear the cluster holds
    /// on another node (this one's copy is stale, or it just moved there)
    /// keeps its claims: they are that node's.
    pub(crate) async fn destroy_locked(
        &self,
        g: &Arc<Gear>,
        progress: &Progress,
    ) -> ApiResult<reply::Destroyed> {
        let r = g.record();
        let gear = &GearRef {
            name: r.name.clone(),
            namespace: r.namespace.clone(),
        };
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
        // its stop hook and the signals must reach its processes
        if let Err(e) = self.awake(g, "the gear is destroyed").await {
            tracing::warn!(gear = %r.name, error = %e, "could not thaw a frozen gear being destroyed");
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
                let _ = self.hook(g, &cart, HookCall::Stop).await;
                timer.abort();
            }
        }
        tokio::join!(
            g.supervisor.stop_all(DESTROY_GRACE),
            g.exec_runs.end_all("the gear is destroyed")
        );
        // its own links go with it, and the frontend's door
        self.links.close_from(&r.id);
        g.front.close_door().await;
        // and the node's open log files in its directories
        g.app_log.close();
        g.hook_log.close();
        g.front.access.close();
        // an image gear's roots
        self.remove_image_roots(g);
        // leftovers from any exec that was cut short
        let paths = g.paths.clone();
        let subtree = self.config.cgroup_subtree.clone();
        let id = r.id.clone();
        let quota = r.disk.map(|_| (self.quotas.clone(), r.uid));
        let repo = crate::ssh::repo_path(&self.config, &r.id);
        tokio::task::spawn_blocking(move || {
            remove_gear_cgroups(&subtree, &id);
            // its git repository, if it was ever pushed to
            let _ = state::remove_tree(&repo);
            gearhost_sandbox::netns::remove(&paths.netns())?;
            // its subvolumes go whole (no walk over what the gear wrote), then its qgroup
            if let Some((quotas, uid)) = quota {
                quotas.remove_gear(&paths.root, uid);
            }
            state::remove_tree(&paths.root)
        })
        .await
        .map_err(internal)?
        .map_err(|e| internal(format!("cannot remove the gear's files: {e}")))?;
        lock(&self.gears).remove(&r.id);
        self.update_routes(g);
        self.release_gear(&r).await;
        lock(&self.elsewhere).remove(&r.id);
        if r.deployments.iter().any(|d| d.image.is_some()) {
            self.collect_images_soon();
        }
        Ok(reply::Destroyed {
            destroyed: r.label(),
            uid_released: r.uid,
        })
    }
}

/// What a gear's view takes from its cartridge.
pub(super) struct CartridgeFacts {
    /// The private port of its first HTTP endpoint, if it has one.
    http_port: Option<u16>,
    /// Whether it takes deployments.
    accepts: bool,
}

impl CartridgeFacts {
    pub(super) fn of(c: &gearhost_runtime::Cartridge) -> CartridgeFacts {
        CartridgeFacts {
            http_port: c.manifest().http_endpoint().map(|e| e.private_port),
            accepts: c.manifest().deploy.accepts,
        }
    }
}

/// A gear's summary, from its record and what its cartridge says (none: not installed).
/// Its URL is where the frontend serves it ([`Node::url`]).
fn summary_of(
    r: &GearRecord,
    cartridge: Option<&CartridgeFacts>,
    urls: &super::routing::UrlParts,
) -> reply::GearSummary {
    reply::GearSummary {
        id: r.id.clone(),
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        cartridge: r.cartridge.clone(),
        uid: r.uid,
        mcs_level: r.mcs_level.clone(),
        state: r.state,
        desired: r.desired,
        active_deployment: r.active,
        url: cartridge
            .and_then(|c| c.http_port)
            .map(|_| urls.url(&r.name, &r.namespace)),
        takes_deployments: cartridge.is_none_or(|c| c.accepts),
        node: urls.node.clone(),
    }
}

fn view_of(
    gear: reply::GearSummary,
    processes: Vec<ProcessInfo>,
    failure: Option<String>,
) -> reply::GearView {
    reply::GearView {
        gear,
        processes: processes.into_iter().map(process_view).collect(),
        failure,
        unchanged: false,
        note: None,
    }
}

/// A supervised process as the API shows it.
pub(super) fn process_view(p: ProcessInfo) -> reply::Process {
    use gearhost_runtime::ProcessState as S;
    reply::Process {
        name: p.name,
        pid: p.pid,
        state: match p.state {
            S::Starting => reply::ProcessState::Starting,
            S::Running => reply::ProcessState::Running,
            S::Backoff => reply::ProcessState::Backoff,
            S::Stopped => reply::ProcessState::Stopped,
            S::Exited => reply::ProcessState::Exited,
            S::Failed => reply::ProcessState::Failed,
        },
        restarts: p.restarts,
        last_exit: p.last_exit.map(|e| match e {
            ExitStatus::Exited(c) => reply::ExitStatus::Exited(c),
            ExitStatus::Signaled(s) => reply::ExitStatus::Signaled(s),
        }),
    }
}

pub(super) fn check_gear_ref(gear: &GearRef) -> ApiResult<()> {
    for (what, value) in [("gear name", &gear.name), ("namespace", &gear.namespace)] {
        gearhost_runtime::manifest::check_name(value, 32).map_err(|problem| {
            invalid(format!(
                "invalid {what} {value:?}: {problem}; use 1-32 lower-case letters, digits and single dashes, starting with a letter"
            ))
        })?;
    }
    Ok(())
}

pub(super) fn new_id() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    gearhost_sys::hex::encode(&bytes)
}

/// Hand a tree the node just created to the gear's uid (never following symlinks).
pub(super) fn chown_tree(path: &Path, uid: u32) -> std::io::Result<()> {
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
pub(super) fn remove_gear_cgroups(subtree: &str, id: &str) {
    if let Err(e) = gearhost_sandbox::cgroup::remove_gear(subtree, id) {
        tracing::warn!(gear = %id, error = %e, "the gear's cgroups could not all be removed");
    }
}
