//! Following the cluster as it changes: where every gear is placed and which
//! nodes there are, for the frontends that route every gear's names. A
//! follower reads the whole picture once, at one revision, then watches
//! from the next revision on, so that no change falls between the read and
//! the watch; after any break (etcd restarted, a member lost, history
//! compacted) it reads the whole picture again.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};

use crate::{Cluster, ClusterError, NodeAdvert, Placement};

/// A change the follower reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The whole picture, replacing what was known: every gear's placement
    /// and every node's description (first, and after a break).
    All {
        /// Every placement.
        placements: Vec<Placement>,
        /// Every node that ever joined.
        nodes: Vec<NodeAdvert>,
    },
    /// A gear was placed, or its placement changed (moved, aliases).
    Placed(Placement),
    /// A gear is gone (its id).
    Removed(String),
    /// A node's description changed (it joined or came back with other addresses).
    Node(NodeAdvert),
}

/// How long the follower waits before reading again after a break.
const AGAIN_AFTER: Duration = Duration::from_secs(1);

impl Cluster {
    /// Follows placements and node descriptions for as long as the cluster
    /// handle lives: `apply` gets [`Change::All`] first and after every
    /// break, and each change in between, in etcd's order.
    pub fn spawn_follower(
        self: &Arc<Self>,
        mut apply: impl FnMut(Change) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let cluster = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(c) = cluster.upgrade() else {
                    return;
                };
                let ended = c.follow(&mut apply).await;
                drop(c);
                if let Err(e) = ended {
                    tracing::warn!(error = %e, "following the cluster's placements broke off; reading them again");
                }
                tokio::time::sleep(AGAIN_AFTER).await;
            }
        })
    }

    /// One read of the whole picture and the watch after it, until the
    /// watch ends.
    async fn follow(&self, apply: &mut impl FnMut(Change)) -> Result<(), ClusterError> {
        let keys = &self.keys;
        let gears = self
            .get(
                "list the gears' placements",
                keys.gears(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        // the nodes at the same revision as the gears, so that one watch
        // from the next revision misses nothing of either
        let revision = gears.header().map_or(0, |h| h.revision());
        let nodes = self
            .get(
                "list the nodes",
                keys.node_infos(),
                Some(GetOptions::new().with_prefix().with_revision(revision)),
            )
            .await?;
        apply(Change::All {
            placements: gears
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect(),
            nodes: nodes
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect(),
        });
        let from = revision + 1;
        let mut client = self.client.clone();
        let mut stream = client
            .watch(
                keys.gears(),
                Some(WatchOptions::new().with_prefix().with_start_revision(from)),
            )
            .await
            .map_err(crate::etcd_err("watch the gears' placements"))?;
        stream
            .watch(
                keys.node_infos(),
                Some(WatchOptions::new().with_prefix().with_start_revision(from)),
            )
            .await
            .map_err(crate::etcd_err("watch the nodes"))?;
        while let Some(answer) = stream
            .message()
            .await
            .map_err(crate::etcd_err("watch the gears' placements"))?
        {
            if answer.canceled() || answer.compact_revision() != 0 {
                return Err(ClusterError::Timeout(
                    "the changes since the last read (the watch was cancelled or compacted)",
                ));
            }
            for event in answer.events() {
                let Some(kv) = event.kv() else {
                    continue;
                };
                let Ok(key) = kv.key_str() else {
                    continue;
                };
                let change = match (event.event_type(), keys.gear_of(key), keys.node_of(key)) {
                    (EventType::Put, Some(_), _) => {
                        serde_json::from_slice(kv.value()).ok().map(Change::Placed)
                    }
                    (EventType::Delete, Some(id), _) => Some(Change::Removed(id.to_string())),
                    (EventType::Put, None, Some(_)) => {
                        serde_json::from_slice(kv.value()).ok().map(Change::Node)
                    }
                    _ => None,
                };
                if let Some(change) = change {
                    apply(change);
                }
            }
        }
        Ok(())
    }
}
