//! What failover needs of etcd: one leader among the live nodes (the node
//! whose lease holds the `leader` key; when its lease expires the key goes
//! with it and the next node to try takes it), and which nodes are alive.

use std::collections::HashSet;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::{Cluster, ClusterError};

impl Cluster {
    /// Whether this node leads failover: it holds the leader key, or takes it
    /// now that no live node does (the key lives under the holder's lease).
    pub async fn lead(&self) -> Result<bool, ClusterError> {
        let key = self.keys.leader();
        let lease = self.health().lease;
        let me = self.node.as_bytes().to_vec();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                me.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let done = self.txn("take the lead", txn).await?;
        if done.succeeded() {
            return Ok(true);
        }
        Ok(done.op_responses().iter().any(|r| match r {
            TxnOpResponse::Get(found) => found
                .kvs()
                .first()
                .is_some_and(|kv| kv.value() == me.as_slice() && kv.lease() == lease),
            _ => false,
        }))
    }

    /// Whether node `name` holds a live lease now.
    pub async fn node_is_alive(&self, name: &str) -> Result<bool, ClusterError> {
        let found = self
            .get(
                "read a node's liveness",
                self.keys.node_alive(name),
                Some(GetOptions::new().with_keys_only()),
            )
            .await?;
        Ok(!found.kvs().is_empty())
    }

    /// The nodes that hold a live lease now.
    pub async fn alive(&self) -> Result<HashSet<String>, ClusterError> {
        let prefix = self.keys.nodes_alive();
        let found = self
            .get(
                "list the live nodes",
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        Ok(found
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }
}
