//! The answers about the cluster a node belongs to.

use serde::{Deserialize, Serialize};

/// A node, as `gear node list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Its name in the cluster (a standalone node: its host name).
    pub name: String,
    /// `up` (it holds a live lease), `down` (its lease expired), or
    /// `standalone` (a node without `[cluster]`, listing itself).
    pub state: String,
    /// Whether this is the node that answered.
    pub this: bool,
    /// Where other nodes reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Where its frontend serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    /// Its release.
    pub version: String,
    /// Its load, as last published (none when it is down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<NodeLoad>,
}

/// A node's load and capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Gears it holds.
    pub gears: u64,
    /// Gears running or frozen on it.
    pub running: u64,
    /// The machine's memory, in bytes.
    pub memory_total: u64,
    /// Memory available on the machine, in bytes.
    pub memory_available: u64,
}
