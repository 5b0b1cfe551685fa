//! Gearhost nodes as one cluster. Everything the nodes must agree on lives in
//! etcd and nowhere else: membership (a lease per node, kept alive by a
//! heartbeat that publishes the node's load), the district (gear uids, MCS
//! levels, names and public labels, claimed in transactions so that none is
//! ever given twice), and where each gear is placed. No consensus or
//! membership protocol of our own: etcd's leases, revisions and transactions
//! are the whole of it.
//!
//! The key layout is in [`keys`]; it is the contract between nodes (and
//! between a node and anything else that reads the cluster, such as a
//! Kubernetes operator: see docs/ARCHITECTURE.md).

pub mod keys;

mod district;
mod failover;
mod members;
pub mod placement;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use district::Placement;
pub use members::{Health, Load, Member, NodeAdvert};
pub use watch::Change;

/// Something the cluster could not do, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No etcd endpoint answered.
    #[error(
        "cannot reach etcd at {endpoints}: {source}; check that the etcd members run and that cluster.etcd lists their client URLs"
    )]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// Why.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd answered with an error.
    #[error("etcd could not {what}: {source}")]
    Etcd {
        /// What the node was doing.
        what: &'static str,
        /// etcd's error.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd did not answer in time.
    #[error(
        "etcd did not send {0} in time; check the etcd members' health (etcdctl endpoint health)"
    )]
    Timeout(&'static str),
    /// Another live node has this node's name.
    #[error(
        "another live node of the cluster is named {0}; give this node another cluster.node-name, or stop the other one"
    )]
    NameTaken(String),
    /// A gear's name, label or uid belongs to another gear.
    #[error("{0}")]
    Conflict(String),
    /// Every uid of the range is claimed.
    #[error(
        "every gear uid from {min} to {max} is taken in the cluster; destroy unused gears, or widen gears.uid-min and gears.uid-max on every node"
    )]
    Full {
        /// Lowest uid.
        min: u32,
        /// Highest uid.
        max: u32,
    },
    /// Claims kept being lost to concurrent ones.
    #[error("too many concurrent creates took the uids this one chose; try again")]
    Busy,
}

pub(crate) fn etcd_err(what: &'static str) -> impl Fn(etcd_client::Error) -> ClusterError {
    move |source| ClusterError::Etcd { what, source }
}

/// How long an operation is tried again while etcd elects a leader or a
/// member is unreachable (an election takes about one election timeout).
const RETRY_FOR: Duration = Duration::from_secs(6);

/// Whether etcd's error is one that goes away by itself: no leader or a new
/// one, a member that went away mid-request, a request that timed out.
fn transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Aborted
            ) || s.message().contains("leader")
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// The endpoints (`http://HOST:PORT`) that accept a connection now, in the
/// order given.
async fn answering(endpoints: &[String]) -> Vec<String> {
    let probes = endpoints.iter().map(|e| async move {
        let address = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e)
            .to_string();
        let up = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(address),
        )
        .await
        .is_ok_and(|c| c.is_ok());
        up.then(|| e.clone())
    });
    let mut up = Vec::new();
    for probe in probes {
        up.extend(probe.await);
    }
    up
}

/// How a node joins.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// The key prefix.
    pub prefix: String,
    /// How long the node's lease lives without a heartbeat.
    pub lease_ttl: Duration,
    /// The file that keeps the node's lease id across restarts: read for
    /// the lease to take back, written whenever the node takes a lease.
    pub lease_file: Option<std::path::PathBuf>,
}

/// This node's handle on the cluster.
pub struct Cluster {
    client: etcd_client::Client,
    keys: keys::Keys,
    node: String,
    ttl: Duration,
    health: Mutex<members::HealthState>,
    lease_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("keys", &self.keys)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to etcd and joins: the node takes its lease (or takes back
    /// `previous_lease`) and publishes its description. Call
    /// [`Cluster::spawn_heartbeat`] next.
    pub async fn join(
        options: &JoinOptions,
        advert: &NodeAdvert,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let connect = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        // the client spreads requests over its endpoints and keeps trying one
        // that refuses connections: a member that is down when the node starts
        // is left out (the others hold the cluster's whole state)
        let endpoints = answering(&options.endpoints).await;
        let endpoints = if endpoints.is_empty() {
            options.endpoints.clone()
        } else {
            endpoints
        };
        let client = etcd_client::Client::connect(&endpoints, Some(connect))
            .await
            .map_err(|source| ClusterError::Unreachable {
                endpoints: options.endpoints.join(", "),
                source,
            })?;
        let mut cluster = Cluster {
            client,
            keys: keys::Keys::new(&options.prefix),
            node: advert.name.clone(),
            ttl: options.lease_ttl,
            health: members::HealthState::new(0),
            lease_file: options.lease_file.clone(),
        };
        let previous = options
            .lease_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.trim().parse().ok());
        let lease = cluster
            .take_lease(advert, previous)
            .await
            .map_err(|e| match e {
                ClusterError::Etcd { source, .. } => ClusterError::Unreachable {
                    endpoints: options.endpoints.join(", "),
                    source,
                },
                other => other,
            })?;
        cluster.health = members::HealthState::new(lease);
        cluster.keep_lease_file(lease);
        cluster.put_advert(advert).await?;
        Ok(Arc::new(cluster))
    }

    /// Writes `lease` to the lease file (atomically), for the next run.
    pub(crate) fn keep_lease_file(&self, lease: i64) {
        let Some(file) = &self.lease_file else {
            return;
        };
        let tmp = file.with_extension("tmp");
        let written =
            std::fs::write(&tmp, format!("{lease}\n")).and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "cannot keep the node's lease id; a restart will join with a new lease");
        }
    }

    /// Runs `op` against etcd, again while the failure is a passing one (a
    /// leader election after a member died, a member that went away): one
    /// etcd member of three killed changes nothing for the nodes. Every
    /// operation given here is safe to repeat (reads, and writes guarded by
    /// revisions or that put the same value again).
    pub(crate) async fn etcd<T, F, Fut>(
        &self,
        what: &'static str,
        mut op: F,
    ) -> Result<T, ClusterError>
    where
        F: FnMut(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = std::time::Instant::now() + RETRY_FOR;
        let mut wait = Duration::from_millis(50);
        loop {
            match op(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && std::time::Instant::now() < deadline => {
                    tracing::debug!(what, error = %e, "etcd: trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                Err(source) => return Err(ClusterError::Etcd { what, source }),
            }
        }
    }

    /// A read, tried again while etcd recovers.
    pub(crate) async fn get(
        &self,
        what: &'static str,
        key: String,
        options: Option<etcd_client::GetOptions>,
    ) -> Result<etcd_client::GetResponse, ClusterError> {
        self.etcd(what, |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    /// A transaction, tried again while etcd recovers (transactions given
    /// here compare revisions or values, so a repeat of one that was applied
    /// fails its comparison or writes the same again).
    pub(crate) async fn txn(
        &self,
        what: &'static str,
        txn: etcd_client::Txn,
    ) -> Result<etcd_client::TxnResponse, ClusterError> {
        self.etcd(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// A put, tried again while etcd recovers.
    pub(crate) async fn put(
        &self,
        what: &'static str,
        key: String,
        value: Vec<u8>,
        options: Option<etcd_client::PutOptions>,
    ) -> Result<(), ClusterError> {
        self.etcd(what, |mut c| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.put(key, value, options).await }
        })
        .await
        .map(|_| ())
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The key layout.
    pub fn keys(&self) -> &keys::Keys {
        &self.keys
    }

    /// How long a node's lease lives without a heartbeat.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }
}
