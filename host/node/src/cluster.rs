//! The node as a member of a cluster (`[cluster]`): it joins through etcd
//! before it serves, claims the uids, names and public labels of the gears it
//! holds, keeps its lease alive with a heartbeat that publishes its load, and
//! claims every new gear's uid and names cluster-wide. A node without the
//! section never touches any of this.

use std::sync::Arc;

use gearhost_cluster::{Cluster, ClusterError, JoinOptions, Load, NodeAdvert, Placement};

use crate::api::{ApiError, ErrorKind, GearRef, reply};
use crate::node::{Node, lock};
use crate::state::{GearRecord, GearState};

/// The file in the state directory that keeps the lease the node holds, so
/// that a restarted node takes it back instead of leaving and joining again.
const LEASE_FILE: &str = "cluster-lease";

/// What the cluster records for gear `r` held by node `node`.
pub(crate) fn placement(r: &GearRecord, node: &str) -> Placement {
    Placement {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        label: r.label(),
        uid: r.uid,
        node: node.to_string(),
        cartridge: r.cartridge.clone(),
        aliases: r.aliases.clone(),
        replica: None,
        lost: None,
    }
}

/// A cluster error as the API reports it.
pub(crate) fn api_error(e: ClusterError) -> ApiError {
    let kind = match e {
        ClusterError::Conflict(_) | ClusterError::Full { .. } | ClusterError::NameTaken(_) => {
            ErrorKind::Conflict
        }
        _ => ErrorKind::Failed,
    };
    ApiError::new(kind, e.to_string())
}

/// The cluster's shared secret: at least 32 bytes, in a file no one but its
/// owner may read or change (node-to-node traffic is authenticated with it).
pub(crate) fn read_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the cluster secret {}: {e}; create it with at least 32 random bytes, the same on every node (head -c 48 /dev/urandom | base64 > FILE; chmod 600 FILE)",
            path.display()
        )
    })?;
    if meta.mode() & 0o077 != 0 {
        anyhow::bail!(
            "the cluster secret {} may be read or changed by other users (mode {:o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    let secret = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read the cluster secret {}: {e}", path.display()))?;
    let secret = secret.trim_ascii().to_vec();
    if secret.len() < 32 {
        anyhow::bail!(
            "the cluster secret {} holds {} bytes; it needs at least 32 random bytes (head -c 48 /dev/urandom | base64 > FILE)",
            path.display(),
            secret.len()
        );
    }
    Ok(secret)
}

/// The machine's host name (a standalone node's name in `gear node list`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The machine's memory and what is available, in bytes (0 when unknown).
fn memory() -> (u64, u64) {
    let (total, available) = gearhost_sandbox::cgroup::memory_total_and_available();
    (total.unwrap_or(0), available.unwrap_or(0))
}

impl Node {
    /// Joins the cluster when `[cluster]` is set: takes the node's lease,
    /// claims every gear the node holds (a gear the cluster has placed on
    /// another node meanwhile is not claimed back: it is kept stopped and
    /// reported), and starts the heartbeat. A node that cannot join does not
    /// start: it cannot know which of its gears are still its own.
    pub async fn join_cluster(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(config) = self.config().cluster.clone() else {
            return Ok(());
        };
        let secret = read_secret(&config.secret_file)?;
        let advert = NodeAdvert {
            name: config.node_name.clone(),
            listen: config.listen.to_string(),
            frontend: self.frontend_addr().map(|a| a.to_string()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            joined: crate::state::now(),
        };
        let options = JoinOptions {
            endpoints: config.etcd.clone(),
            prefix: config.prefix.clone(),
            lease_ttl: config.lease_ttl,
            lease_file: Some(self.config().state_dir.join(LEASE_FILE)),
        };
        let cluster = Cluster::join(&options, &advert)
            .await
            .map_err(|e| anyhow::anyhow!("cannot join the cluster: {e}"))?;
        let lease = cluster.health().lease;
        // every placement in one read: a node that comes back with thousands
        // of gears writes only those whose record differs from its own
        let placed: std::collections::HashMap<String, Placement> = cluster
            .placements()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the gears' placements: {e}"))?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        for g in self.gears_snapshot() {
            let r = g.record();
            let own = placement(&r, &config.node_name);
            match placed.get(&r.id) {
                Some(p) if p.node != config.node_name => {
                    tracing::error!(
                        gear = %r.name,
                        namespace = %r.namespace,
                        owner = %p.node,
                        "the cluster placed this gear on another node while this one was away; this copy is not started"
                    );
                    lock(&self.elsewhere).insert(r.id.clone(), p.node.clone());
                    continue;
                }
                // claimed as it is (the claims are written with the placement, in one transaction)
                Some(p) if p.held() == own && p.lost.is_none() => continue,
                _ => {}
            }
            let holder = placed.get(&r.id).map(|p| p.node.as_str());
            if let Err(e) = cluster.claim_existing(&own, holder).await {
                // placed elsewhere since the read (a failover): not this node's to run
                match cluster.placement(&r.id).await {
                    Ok(Some(p)) if p.node != config.node_name => {
                        lock(&self.elsewhere).insert(r.id.clone(), p.node.clone());
                    }
                    _ => anyhow::bail!("cannot claim gear {} in the cluster: {e}", r.name),
                }
            }
        }
        let node = Arc::downgrade(self);
        cluster.spawn_heartbeat(advert, move || {
            let Some(node) = node.upgrade() else {
                return Load::default();
            };
            let (memory_total, memory_available) = memory();
            let gears = node.gears_snapshot();
            let running = gears
                .iter()
                .filter(|g| {
                    matches!(
                        g.state(),
                        GearState::Running | GearState::Frozen | GearState::Starting
                    )
                })
                .count();
            Load {
                gears: gears.len() as u64,
                running: running as u64,
                memory_total,
                memory_available,
            }
        });
        tracing::info!(node = %config.node_name, lease, "joined the cluster");
        let _ = self.cluster.set(cluster);
        self.set_relay_key(&secret);
        let _ = self.cluster_secret.set(secret.into());
        // every node's frontend routes every gear of the cluster
        self.follow_cluster();
        // one node leads failover; every node fences itself when cut off
        self.spawn_failover();
        Ok(())
    }

    /// The cluster's shared secret, when the node is in one.
    pub(crate) fn cluster_secret(&self) -> Option<Arc<[u8]>> {
        self.cluster_secret.get().cloned()
    }

    /// The cluster, when the node is in one.
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// The node the cluster placed gear `id` on, when that is not this one
    /// (this node's copy is stale: it is not started).
    pub(crate) fn placed_elsewhere(&self, id: &str) -> Option<String> {
        lock(&self.elsewhere).get(id).cloned()
    }

    /// Claims a uid, the name and the public label of a new gear in the
    /// cluster (`r.uid` is ignored); returns the uid.
    pub(crate) async fn claim_new_gear(
        &self,
        cluster: &Cluster,
        id: &str,
        gear: &GearRef,
        cartridge: &str,
    ) -> Result<u32, ApiError> {
        let claim = Placement {
            id: id.to_string(),
            namespace: gear.namespace.clone(),
            name: gear.name.clone(),
            label: crate::state::public_label(&gear.name, &gear.namespace),
            uid: 0,
            node: cluster.node().to_string(),
            cartridge: cartridge.to_string(),
            aliases: Vec::new(),
            replica: None,
            lost: None,
        };
        cluster
            .claim_new(&claim, self.config().uid_min, self.config().uid_max)
            .await
            .map_err(api_error)
    }

    /// Gives back a destroyed (or never finished) gear's claims, unless the
    /// cluster holds the gear on another node (they are that node's).
    pub(crate) async fn release_gear(&self, r: &GearRecord) {
        if self.placed_elsewhere(&r.id).is_some() {
            return;
        }
        if let Some(cluster) = self.cluster()
            && let Err(e) = cluster.release(&placement(r, cluster.node())).await
        {
            tracing::warn!(gear = %r.name, error = %e, "could not release the gear's claims in the cluster; its uid and names stay taken until released by hand");
        }
    }

    /// `gear node list`: the cluster's nodes, or this node alone.
    pub async fn node_list(&self) -> Result<Vec<reply::ClusterNode>, ApiError> {
        let Some(cluster) = self.cluster() else {
            let gears = self.gears_snapshot();
            let (memory_total, memory_available) = memory();
            return Ok(vec![reply::ClusterNode {
                name: host_name(),
                state: "standalone".into(),
                this: true,
                listen: None,
                frontend: self.frontend_addr().map(|a| a.to_string()),
                version: env!("CARGO_PKG_VERSION").to_string(),
                load: Some(reply::NodeLoad {
                    gears: gears.len() as u64,
                    running: gears
                        .iter()
                        .filter(|g| matches!(g.state(), GearState::Running | GearState::Frozen))
                        .count() as u64,
                    memory_total,
                    memory_available,
                }),
            }]);
        };
        let members = cluster.members().await.map_err(api_error)?;
        Ok(members
            .into_iter()
            .map(|m| reply::ClusterNode {
                this: m.advert.name == cluster.node(),
                state: if m.is_up() { "up" } else { "down" }.into(),
                name: m.advert.name,
                listen: Some(m.advert.listen),
                frontend: m.advert.frontend,
                version: m.advert.version,
                load: m.load.map(|l| reply::NodeLoad {
                    gears: l.gears,
                    running: l.running,
                    memory_total: l.memory_total,
                    memory_available: l.memory_available,
                }),
            })
            .collect())
    }
}
