//! Membership: a node joins by taking a lease and putting its liveness key
//! under it, keeps the lease alive with a heartbeat that also publishes its
//! load, and counts as gone when the lease expires. A node's description is
//! kept without a lease, so a node that is gone is listed as down, not
//! forgotten.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::{Cluster, ClusterError, etcd_err};

/// What a node tells the cluster about itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAdvert {
    /// Its name in the cluster (`cluster.node-name`).
    pub name: String,
    /// Where other nodes reach it (`cluster.listen`).
    pub listen: String,
    /// Where its frontend serves HTTP, once it does.
    pub frontend: Option<String>,
    /// Its release.
    pub version: String,
    /// When it joined, in seconds since the Unix epoch.
    pub joined: u64,
}

/// A node's load and capacity, published with its heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Gears the node holds.
    pub gears: u64,
    /// Gears running (or frozen) on it.
    pub running: u64,
    /// The machine's memory, in bytes.
    pub memory_total: u64,
    /// Memory available on the machine (`MemAvailable`), in bytes.
    pub memory_available: u64,
}

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// What it said about itself.
    pub advert: NodeAdvert,
    /// Its last published load; none when its lease is gone (the node is down).
    pub load: Option<Load>,
}

impl Member {
    /// Whether the node holds a live lease.
    pub fn is_up(&self) -> bool {
        self.load.is_some()
    }
}

/// How the node's own membership stands, as its heartbeat last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The lease the node holds.
    pub lease: i64,
    /// Time since etcd last confirmed the lease.
    pub since_confirmed: Duration,
    /// The node has not heard from etcd for two thirds of the lease's time
    /// to live: the cluster may soon count it gone and place its gears
    /// elsewhere, so it must stop acting as their owner.
    pub fenced: bool,
    /// How many times the lease had expired and the node joined again.
    pub rejoins: u64,
}

#[derive(Debug)]
pub(crate) struct HealthState {
    lease: i64,
    confirmed: Instant,
    rejoins: u64,
}

impl HealthState {
    pub(crate) fn new(lease: i64) -> Mutex<HealthState> {
        Mutex::new(HealthState {
            lease,
            confirmed: Instant::now(),
            rejoins: 0,
        })
    }
}

fn lock(m: &Mutex<HealthState>) -> std::sync::MutexGuard<'_, HealthState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cluster {
    /// Takes a lease and the node's liveness key. `previous` is the lease an
    /// earlier run of this node held (kept in its state directory): a node
    /// restarted before that lease expired takes it back, so the cluster
    /// never sees it leave. Another live node of the same name is refused,
    /// once its lease has had a chance to run out.
    pub(crate) async fn take_lease(
        &self,
        advert: &NodeAdvert,
        previous: Option<i64>,
    ) -> Result<i64, ClusterError> {
        let mut client = self.client.clone();
        let alive = self.keys.node_alive(&advert.name);
        let started = Instant::now();
        loop {
            let found = self
                .get("read the node's liveness key", alive.clone(), None)
                .await?;
            let held = found.kvs().first().map(|kv| kv.lease());
            if let (Some(held), Some(previous)) = (held, previous)
                && held == previous
            {
                // our own lease from before the restart: take it back if it lives
                let (mut keeper, mut stream) = client
                    .lease_keep_alive(previous)
                    .await
                    .map_err(etcd_err("keep the node's lease alive"))?;
                keeper
                    .keep_alive()
                    .await
                    .map_err(etcd_err("keep the node's lease alive"))?;
                if let Ok(Some(reply)) = stream.message().await
                    && reply.ttl() > 0
                {
                    return Ok(previous);
                }
            }
            let ttl = self.ttl.as_secs().max(1) as i64;
            let lease = self
                .etcd("grant the node a lease", |mut c| async move {
                    c.lease_grant(ttl, None).await
                })
                .await?
                .id();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    alive.as_str(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    alive.as_str(),
                    serde_json::to_vec(&Load::default()).unwrap_or_default(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if self
                .txn("put the node's liveness key", txn)
                .await?
                .succeeded()
            {
                return Ok(lease);
            }
            let _ = client.lease_revoke(lease).await;
            if started.elapsed() > self.ttl + Duration::from_secs(2) {
                return Err(ClusterError::NameTaken(advert.name.clone()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Publishes the node's description (kept without a lease).
    pub(crate) async fn put_advert(&self, advert: &NodeAdvert) -> Result<(), ClusterError> {
        let json = serde_json::to_vec(advert).unwrap_or_default();
        self.put(
            "publish the node's description",
            self.keys.node_info(&advert.name),
            json,
            None,
        )
        .await
    }

    /// Publishes the node's load under its lease.
    pub async fn publish(&self, load: &Load) -> Result<(), ClusterError> {
        let lease = self.health().lease;
        let json = serde_json::to_vec(load).unwrap_or_default();
        self.put(
            "publish the node's load",
            self.keys.node_alive(&self.node),
            json,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
    }

    /// Every node the cluster has known, live or not, by name.
    pub async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        let infos = self
            .get(
                "list the nodes",
                self.keys.node_infos(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let alive = self
            .get(
                "list the live nodes",
                self.keys.nodes_alive(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut loads = std::collections::HashMap::new();
        for kv in alive.kvs() {
            let name = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&self.keys.nodes_alive()));
            if let (Some(name), Ok(load)) = (name, serde_json::from_slice::<Load>(kv.value())) {
                loads.insert(name.to_string(), load);
            }
        }
        let mut members = Vec::new();
        for kv in infos.kvs() {
            let Ok(advert) = serde_json::from_slice::<NodeAdvert>(kv.value()) else {
                tracing::warn!(key = ?kv.key_str(), "a node description in etcd is not valid; left out");
                continue;
            };
            let load = loads.get(&advert.name).copied();
            members.push(Member { advert, load });
        }
        members.sort_by(|a, b| a.advert.name.cmp(&b.advert.name));
        Ok(members)
    }

    /// The node named `name`, if the cluster has known it.
    pub async fn member(&self, name: &str) -> Result<Option<Member>, ClusterError> {
        let info = self
            .get("read a node's description", self.keys.node_info(name), None)
            .await?;
        let Some(advert) = info
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<NodeAdvert>(kv.value()).ok())
        else {
            return Ok(None);
        };
        let alive = self
            .get("read a node's liveness", self.keys.node_alive(name), None)
            .await?;
        let load = alive
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<Load>(kv.value()).ok());
        Ok(Some(Member { advert, load }))
    }

    /// How the node's membership stands now.
    pub fn health(&self) -> Health {
        let s = lock(&self.health);
        let since_confirmed = s.confirmed.elapsed();
        Health {
            lease: s.lease,
            since_confirmed,
            fenced: since_confirmed > self.ttl * 2 / 3,
            rejoins: s.rejoins,
        }
    }

    /// Keeps the node's lease alive until the returned task is aborted:
    /// a keep-alive every third of the lease's time to live, its load
    /// published when it changed (`load` is asked at every beat). A lease
    /// that expired anyway (the node was cut off for longer than its time
    /// to live) is replaced by a new one: the node joins again.
    pub fn spawn_heartbeat(
        self: &Arc<Self>,
        advert: NodeAdvert,
        load: impl Fn() -> Load + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let period = (cluster.ttl / 3).max(Duration::from_millis(500));
            let mut published: Option<Load> = None;
            let mut keeper = None;
            loop {
                let lease = cluster.health().lease;
                // after a failed beat (a member went away, a leader is being
                // elected) the next comes soon, not a third of the lease later
                let mut wait = period;
                match cluster.beat(lease, &mut keeper).await {
                    Ok(true) => lock(&cluster.health).confirmed = Instant::now(),
                    Ok(false) => {
                        tracing::warn!(
                            node = %advert.name,
                            "the node's lease expired (cut off from etcd for longer than its time to live); joining again"
                        );
                        keeper = None;
                        published = None;
                        if let Ok(lease) = cluster.take_lease(&advert, None).await {
                            cluster.keep_lease_file(lease);
                            let mut s = lock(&cluster.health);
                            s.lease = lease;
                            s.confirmed = Instant::now();
                            s.rejoins += 1;
                        }
                    }
                    Err(e) => {
                        keeper = None;
                        wait = wait.min(Duration::from_millis(250));
                        tracing::warn!(node = %advert.name, "heartbeat: {e}");
                    }
                }
                let now = load();
                if published != Some(now) && cluster.publish(&now).await.is_ok() {
                    published = Some(now);
                }
                tokio::time::sleep(wait).await;
            }
        })
    }

    /// One keep-alive of `lease`: whether etcd still holds it.
    async fn beat(
        &self,
        lease: i64,
        keeper: &mut Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    ) -> Result<bool, ClusterError> {
        // etcd says a lease it no longer has is not found: it expired
        let expired = |e: &etcd_client::Error| match e {
            etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::NotFound,
            etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
            _ => false,
        };
        if keeper.as_ref().is_none_or(|(k, _)| k.id() != lease) {
            // (opening the stream sends a first keep-alive: a lease gone is said here)
            match self.client.clone().lease_keep_alive(lease).await {
                Ok(opened) => *keeper = Some(opened),
                Err(e) if expired(&e) => return Ok(false),
                Err(e) => return Err(etcd_err("keep the node's lease alive")(e)),
            }
        }
        let Some((k, stream)) = keeper.as_mut() else {
            return Ok(false);
        };
        match k.keep_alive().await {
            Err(e) if expired(&e) => return Ok(false),
            other => other.map_err(etcd_err("keep the node's lease alive"))?,
        }
        let reply = match tokio::time::timeout(self.ttl / 3, stream.message())
            .await
            .map_err(|_| ClusterError::Timeout("a keep-alive answer"))?
        {
            Err(e) if expired(&e) => return Ok(false),
            other => other.map_err(etcd_err("keep the node's lease alive"))?,
        };
        Ok(reply.is_some_and(|r| r.ttl() > 0))
    }

    /// Leaves the cluster at once (a clean stop): the lease is revoked, so
    /// the node shows as down without waiting for it to expire.
    pub async fn leave(&self) {
        let lease = self.health().lease;
        let _ = self.client.clone().lease_revoke(lease).await;
    }
}
