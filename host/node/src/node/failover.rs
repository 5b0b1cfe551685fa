//! Failover and fencing in a cluster.
//!
//! - **Replicas.** After a deploy, a rollback or a change of environment of a
//!   stateless gear (its cartridge starts a new app beside the serving one,
//!   `[deploy] start-beside`: two copies of the app may run at once), the
//!   node that holds it sends its archive (the `gear snapshot` format) to
//!   another live node, which keeps it in `state-dir/replicas/`; the
//!   placement records that node.
//! - **Failover.** One node leads (it holds the `leader` key under its lease).
//!   Every third of the lease time it looks for placements on nodes whose
//!   lease is gone: a gear with a live replica is brought back on the
//!   replica's node, from the replica, under its id, uid and names (the
//!   placement taken in one transaction that requires it to still name the
//!   dead node); any other gear (one that held data) is marked lost, until
//!   `gear restore NAME FILE` brings it back from a snapshot on any node, or
//!   its node comes back.
//! - **Fencing.** A node that has not heard from etcd for two thirds of its
//!   lease time stops serving its gears: it stops the running ones (they
//!   wake on a request once it is back) and refuses to wake or start any,
//!   before its lease can expire and the leader bring them back elsewhere.
//!   Back, it takes back only the gears whose placement still names it.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;
use crate::api::{ApiError, ErrorKind, GearRef};
use crate::api::{ops, reply};
use crate::state::{GearRecord, GearState};
use crate::tenancy::{Caller, SshRole};

/// How often a node looks at its own health (fencing).
const FENCE_POLL: Duration = Duration::from_millis(200);

/// How long a fenced node waits for a gear's freeze.
const FREEZE_WITHIN: Duration = Duration::from_millis(500);

/// What a replica's archive is of, kept beside it.
#[derive(Debug, Serialize, Deserialize)]
struct ReplicaMeta {
    name: String,
    namespace: String,
    owner: Option<String>,
    kept: u64,
}

/// Who a node is when it asks another for its half of failover.
fn node_caller(node: &str) -> Caller {
    Caller {
        uid: 0,
        user: format!("node {node}"),
        operator: true,
        ssh: SshRole::Local,
    }
}

/// A gear id as the node makes them (hex), checked before it names a file.
fn check_id(id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(format!("{id:?} is not a gear id")));
    }
    Ok(())
}

impl Node {
    /// Whether the node is fenced: cut off from etcd, it serves none of its gears.
    pub(crate) fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    fn replicas_dir(&self) -> PathBuf {
        self.config.state_dir.join("replicas")
    }

    /// Drops the replicas this node keeps of gears that are not in `placed`
    /// (destroyed), or, with `gone`, of that gear alone.
    pub(crate) fn forget_replicas(
        &self,
        placed: &std::collections::HashSet<&str>,
        gone: Option<&str>,
    ) {
        let Ok(entries) = std::fs::read_dir(self.replicas_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(id) = name
                .strip_suffix(".tar.gz")
                .or_else(|| name.strip_suffix(".json"))
            else {
                continue;
            };
            let drop = match gone {
                Some(gone) => id == gone,
                None => !placed.contains(id),
            };
            if drop {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Whether a failed node's gear may simply run again elsewhere: its
    /// cartridge runs two copies of its app at once (`start-beside`), so it
    /// keeps nothing that a second copy would tear.
    fn stateless(&self, r: &GearRecord) -> bool {
        self.cartridge(&r.cartridge)
            .is_ok_and(|c| c.manifest().deploy.start_beside)
    }

    /// After a change to what a stateless gear runs (a deploy, a rollback,
    /// its environment): its replica is sent again, in the background.
    pub(crate) fn replicate_soon(self: &Arc<Self>, gear: &GearRef) {
        if self.cluster().is_none() {
            return;
        }
        let Ok(g) = self.find(gear) else {
            return;
        };
        if !self.stateless(&g.record()) || g.record().active.is_none() {
            return;
        }
        let node = self.clone();
        self.spawn_main(async move {
            if let Err(e) = node.replicate(&g).await {
                tracing::warn!(gear = %g.record().label(), error = %e, "the gear's replica was not sent; it is not brought back elsewhere should this node die");
            }
        });
    }

    async fn replicate(self: &Arc<Self>, g: &Arc<Gear>) -> Result<(), String> {
        let cluster = self.cluster().cloned().ok_or("not in a cluster")?;
        let me = cluster.node().to_string();
        let r = g.record();
        let placed = cluster
            .placement(&r.id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the gear has no placement")?;
        if placed.node != me {
            return Ok(());
        }
        // the same node as before while it lives, else the policy's pick
        let alive = cluster.alive().await.map_err(|e| e.to_string())?;
        let target = match placed
            .replica
            .clone()
            .filter(|n| alive.contains(n) && *n != me)
        {
            Some(n) => n,
            None => cluster
                .choose_node_except(&[&me])
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no other node is up")?,
        };
        let member = cluster
            .member(&target)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the replica's node is gone")?;
        let owner = crate::peer::Owner::of(member);
        let request = crate::api::Request::Replicate(ops::Replicate {
            gear: GearRef {
                name: r.name.clone(),
                namespace: r.namespace.clone(),
            },
            id: r.id.clone(),
            owner: r.owner.clone(),
        });
        let (read, write) = std::io::pipe().map_err(|e| e.to_string())?;
        let archive = tokio::fs::File::from_std(std::fs::File::from(OwnedFd::from(read)));
        let quiet = Progress::discard();
        let caller = node_caller(&me);
        let op = g.op.lock().await;
        let (written, asked) = tokio::join!(
            self.snapshot_locked(g, OwnedFd::from(write), &quiet),
            crate::peer::ask_as_node(
                self,
                &owner,
                &caller,
                &request,
                Some(Box::new(archive)),
                &quiet
            )
        );
        drop(op);
        written.map_err(|e| e.message)?;
        asked.map_err(|e| e.message)?;
        let replicated = gearhost_cluster::Placement {
            replica: Some(target.clone()),
            ..crate::cluster::placement(&g.record(), &me)
        };
        match cluster.update_placement(&replicated, &me).await {
            Ok(true) => {
                tracing::info!(gear = %r.label(), replica = %target, "the gear's replica is kept by another node");
                Ok(())
            }
            Ok(false) => Err("its placement changed meanwhile".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `replicate`, on the node that keeps the replica: the archive written
    /// beside what it is of, replacing the one kept before.
    pub async fn keep_replica(
        &self,
        op: ops::Replicate,
        fds: Vec<OwnedFd>,
    ) -> ApiResult<reply::Replicated> {
        check_id(&op.id)?;
        let input = super::snapshot::one_fd(fds, "replicate", "the archive")?;
        let dir = self.replicas_dir();
        let meta = ReplicaMeta {
            name: op.gear.name.clone(),
            namespace: op.gear.namespace.clone(),
            owner: op.owner.clone(),
            kept: crate::state::now(),
        };
        let id = op.id.clone();
        let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            let tmp = dir.join(format!(".{id}.tmp"));
            let mut file = std::fs::File::create(&tmp)?;
            let mut input = std::fs::File::from(input);
            let bytes = std::io::copy(&mut input, &mut file)?;
            file.sync_all()?;
            std::fs::rename(&tmp, dir.join(format!("{id}.tar.gz")))?;
            let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
            std::fs::write(dir.join(format!("{id}.json")), json)?;
            Ok(bytes)
        })
        .await
        .map_err(internal)?
        .map_err(|e| internal(format!("cannot keep the replica: {e}")))?;
        Ok(reply::Replicated {
            gear: crate::state::public_label(&op.gear.name, &op.gear.namespace),
            bytes,
        })
    }

    /// `recover`, on the node that keeps a dead node's gear's replica: the
    /// gear brought back from it here, its placement taken, started.
    pub async fn recover(
        self: &Arc<Self>,
        op: ops::Recover,
        progress: &Progress,
    ) -> ApiResult<reply::Restored> {
        let cluster = self
            .cluster()
            .cloned()
            .ok_or_else(|| invalid("this node is not in a cluster".to_string()))?;
        check_id(&op.id)?;
        let dir = self.replicas_dir();
        let archive = dir.join(format!("{}.tar.gz", op.id));
        let meta: ReplicaMeta = std::fs::read(dir.join(format!("{}.json", op.id)))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!("this node keeps no replica of gear {}", op.gear.name),
                )
            })?;
        let file = std::fs::File::open(&archive).map_err(|e| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("the replica of gear {} cannot be read: {e}", op.gear.name),
            )
        })?;
        let owner = meta.owner.as_deref().map(|user| self.owner(user));
        let arrival = Arrival {
            id: op.id.clone(),
            from: op.from.clone(),
            from_dead: true,
            uid: None,
        };
        let source = format!("the replica kept for node {}", op.from);
        let restored = self
            .arrive(
                &cluster,
                &op.gear,
                (&source, vec![OwnedFd::from(file)]),
                owner.as_ref(),
                &arrival,
                (true, true),
                progress,
            )
            .await?;
        // it is this node's now: its replica goes to another node
        let _ = std::fs::remove_file(&archive);
        let _ = std::fs::remove_file(dir.join(format!("{}.json", op.id)));
        self.replicate_soon(&op.gear);
        Ok(restored)
    }

    /// The placement of `gear` when the cluster marked it lost (its node died
    /// with it) and this node does not hold it.
    pub(crate) async fn lost_placement(
        &self,
        gear: &GearRef,
    ) -> Option<gearhost_cluster::Placement> {
        let cluster = self.cluster()?;
        if self.find(gear).is_ok() {
            return None;
        }
        let p = cluster
            .placement_by_name(&gear.namespace, &gear.name)
            .await
            .ok()??;
        p.lost.is_some().then_some(p)
    }

    /// `gear restore` of a gear lost with its node: it comes back here from
    /// the archive, under its id and uid, and this node takes its placement.
    pub(crate) async fn restore_lost(
        self: &Arc<Self>,
        lost: &gearhost_cluster::Placement,
        gear: &GearRef,
        archive: (&str, Vec<OwnedFd>),
        owner: Option<&Owner>,
        progress: &Progress,
    ) -> ApiResult<reply::Restored> {
        let cluster = self
            .cluster()
            .cloned()
            .ok_or_else(|| invalid("this node is not in a cluster".to_string()))?;
        let arrival = Arrival {
            id: lost.id.clone(),
            from: lost.node.clone(),
            from_dead: true,
            uid: Some(lost.uid),
        };
        let mut restored = self
            .arrive(
                &cluster,
                gear,
                archive,
                owner,
                &arrival,
                (false, false),
                progress,
            )
            .await?;
        restored.notes.push(format!(
            "gear {} was lost with node {}; it lives on this node now (start it with `gear start {}`)",
            gear.name, lost.node, gear.name
        ));
        Ok(restored)
    }

    /// Starts the failover leader's rounds and the fence watch (once the
    /// node has joined its cluster).
    pub(crate) fn spawn_failover(self: &Arc<Self>) {
        let Some(cluster) = self.cluster().cloned() else {
            return;
        };
        let node = Arc::downgrade(self);
        let round = (cluster.lease_ttl() / 3).max(Duration::from_millis(500));
        self.spawn_main(async move {
            let mut fence = tokio::time::interval(FENCE_POLL);
            let mut lead = tokio::time::interval(round);
            let mut rejoins = cluster.health().rejoins;
            let recovering = Arc::new(Mutex::new(std::collections::HashSet::new()));
            loop {
                tokio::select! {
                    _ = fence.tick() => {
                        let Some(node) = node.upgrade() else { return };
                        node.watch_fence(&mut rejoins).await;
                    }
                    _ = lead.tick() => {
                        let Some(node) = node.upgrade() else { return };
                        if let Err(e) = node.failover_round(&recovering).await {
                            tracing::warn!(error = %e, "failover round");
                        }
                    }
                }
            }
        });
    }

    /// Fences the node when it is cut off from etcd, and lifts the fence
    /// when it is back, after taking back only what is still its own.
    async fn watch_fence(self: &Arc<Self>, rejoins: &mut u64) {
        let Some(cluster) = self.cluster().cloned() else {
            return;
        };
        let health = cluster.health();
        if health.fenced && !self.fenced() {
            self.fenced.store(true, Ordering::SeqCst);
            tracing::error!(
                since = ?health.since_confirmed,
                "cut off from etcd for two thirds of the lease time: fenced; the node's gears are stopped and none is woken until etcd is back"
            );
            // requests are refused from now on; the running gears are frozen at
            // once (nothing of them runs), then stopped
            let running: Vec<Arc<Gear>> = self
                .gears_snapshot()
                .into_iter()
                .filter(|g| {
                    matches!(
                        g.state(),
                        GearState::Running | GearState::Frozen | GearState::Starting
                    )
                })
                .collect();
            let freezes = running.iter().map(|g| {
                let (subtree, id) = (self.config.cgroup_subtree.clone(), g.record().id);
                let g = g.clone();
                tokio::task::spawn_blocking(move || {
                    match gearhost_sandbox::cgroup::freeze_gear(&subtree, &id, FREEZE_WITHIN) {
                        // the stop below thaws it for its stop hook and signals
                        Ok(()) => g.frozen.store(true, Ordering::SeqCst),
                        Err(e) => tracing::warn!(gear = %id, error = %e, "a fenced node's gear could not be frozen"),
                    }
                })
            });
            futures_util::future::join_all(freezes).await;
            let stops = running.into_iter();
            let stops = stops.map(|g| async move {
                let _op = g.op.preempt("the node is cut off from the cluster").await;
                if let Ok(cart) = self.cartridge(&g.record().cartridge)
                    && let Err(e) = self.stop_into(&g, &cart, GearState::Idle).await
                {
                    tracing::warn!(gear = %g.record().label(), error = %e, "a fenced node's gear did not stop cleanly");
                }
            });
            futures_util::future::join_all(stops).await;
        } else if !health.fenced && self.fenced() {
            if health.rejoins != *rejoins {
                // the lease expired meanwhile: the leader may have placed gears elsewhere
                *rejoins = health.rejoins;
                match cluster.placements().await {
                    Ok(placed) => {
                        let placed: std::collections::HashMap<String, gearhost_cluster::Placement> =
                            placed.into_iter().map(|p| (p.id.clone(), p)).collect();
                        for g in self.gears_snapshot() {
                            let r = g.record();
                            match placed.get(&r.id) {
                                Some(p) if p.node != cluster.node() => {
                                    tracing::warn!(gear = %r.label(), owner = %p.node, "placed on another node while this one was cut off; this copy is not started");
                                    lock(&self.elsewhere).insert(r.id.clone(), p.node.clone());
                                }
                                Some(p) if p.lost.is_some() => {
                                    let _ =
                                        cluster.update_placement(&p.held(), cluster.node()).await;
                                }
                                _ => {}
                            }
                        }
                        self.rebuild_routes();
                    }
                    // still fenced: looked at again at the next poll
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the placements after a rejoin");
                        *rejoins = u64::MAX;
                        return;
                    }
                }
            }
            self.fenced.store(false, Ordering::SeqCst);
            tracing::info!("etcd is back: the fence is lifted");
        }
    }

    /// One round of the failover leader (nothing when another node leads).
    async fn failover_round(
        self: &Arc<Self>,
        recovering: &Arc<Mutex<std::collections::HashSet<String>>>,
    ) -> Result<(), gearhost_cluster::ClusterError> {
        let Some(cluster) = self.cluster().cloned() else {
            return Ok(());
        };
        if self.fenced() || !cluster.lead().await? {
            return Ok(());
        }
        tracing::debug!("leading failover: a round");
        let alive = cluster.alive().await?;
        // every placement is read (authoritatively) only when the followed view
        // shows a gear on a node that is gone: not every round, whatever the count
        if !self.any_stranded(&alive) {
            return Ok(());
        }
        for p in cluster.placements().await? {
            if alive.contains(&p.node) || p.lost.is_some() {
                continue;
            }
            match p.replica.clone().filter(|r| alive.contains(r)) {
                Some(replica) => {
                    if !lock(recovering).insert(p.id.clone()) {
                        continue;
                    }
                    let node = self.clone();
                    let cluster = cluster.clone();
                    let recovering = recovering.clone();
                    self.spawn_main(async move {
                        let id = p.id.clone();
                        if let Err(e) = node.recover_on(&cluster, &p, &replica).await {
                            tracing::warn!(gear = %p.label, node = %replica, error = %e.message, "could not bring the gear back on its replica's node; trying again at the next round");
                        }
                        lock(&recovering).remove(&id);
                    });
                }
                None => {
                    let why = format!(
                        "node {} died with it, and no other node kept a copy it could run again (it holds data); `gear restore {} FILE` brings it back from a snapshot",
                        p.node, p.name
                    );
                    let lost = gearhost_cluster::Placement {
                        lost: Some(why),
                        ..p.clone()
                    };
                    if cluster.update_placement_of_dead(&lost, &p.node).await? {
                        tracing::error!(gear = %p.label, node = %p.node, "the gear is lost with its node");
                    }
                }
            }
        }
        Ok(())
    }

    /// Asks node `replica` to bring back gear `p` of a dead node.
    async fn recover_on(
        self: &Arc<Self>,
        cluster: &gearhost_cluster::Cluster,
        p: &gearhost_cluster::Placement,
        replica: &str,
    ) -> ApiResult<()> {
        let member = cluster
            .member(replica)
            .await
            .map_err(crate::cluster::api_error)?
            .ok_or_else(|| invalid(format!("no node {replica}")))?;
        let owner = crate::peer::Owner::of(member);
        let request = crate::api::Request::Recover(ops::Recover {
            gear: GearRef {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
            },
            id: p.id.clone(),
            from: p.node.clone(),
        });
        tracing::warn!(gear = %p.label, dead = %p.node, on = %replica, "bringing a dead node's gear back from its replica");
        let caller = node_caller(cluster.node());
        crate::peer::ask_as_node(self, &owner, &caller, &request, None, &Progress::discard())
            .await
            .map(drop)
    }
}
