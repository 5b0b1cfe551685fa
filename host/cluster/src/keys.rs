//! Where the cluster keeps what it agrees on: every key under the configured
//! prefix, one function per kind of key. Numbers in keys are zero-padded so
//! that etcd's byte order is their numeric order.

/// The keys of one cluster (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys under `prefix` (`/gearhost`: no trailing `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// A node's description (name, addresses, version), kept after the node
    /// is gone so that `gear node list` can show it as down.
    pub fn node_info(&self, node: &str) -> String {
        format!("{}/nodes/info/{node}", self.prefix)
    }

    /// Every node's description.
    pub fn node_infos(&self) -> String {
        format!("{}/nodes/info/", self.prefix)
    }

    /// A node's liveness and load, attached to its lease: gone when the
    /// node's lease expires.
    pub fn node_alive(&self, node: &str) -> String {
        format!("{}/nodes/alive/{node}", self.prefix)
    }

    /// Every live node.
    pub fn nodes_alive(&self) -> String {
        format!("{}/nodes/alive/", self.prefix)
    }

    /// The claim on gear uid `uid` (its value is the gear's id).
    pub fn uid(&self, uid: u32) -> String {
        format!("{}/district/uids/{uid:010}", self.prefix)
    }

    /// Every uid claim.
    pub fn uids(&self) -> String {
        format!("{}/district/uids/", self.prefix)
    }

    /// The uid a [`Keys::uid`] key names.
    pub fn uid_of(&self, key: &str) -> Option<u32> {
        key.strip_prefix(&self.uids())?.parse().ok()
    }

    /// The claim on gear name `name` in `namespace` (value: the gear's id).
    pub fn name(&self, namespace: &str, name: &str) -> String {
        format!("{}/names/{namespace}/{name}", self.prefix)
    }

    /// The claim on a public host label `<gear>-<namespace>` (value: the gear's id).
    pub fn label(&self, label: &str) -> String {
        format!("{}/labels/{label}", self.prefix)
    }

    /// The claim on host name `host`, a gear's alias (value: the gear's id).
    pub fn host(&self, host: &str) -> String {
        format!("{}/hosts/{host}", self.prefix)
    }

    /// The failover leader's key (value: its node name), under its lease.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// A gear's placement record.
    pub fn gear(&self, id: &str) -> String {
        format!("{}/gears/{id}", self.prefix)
    }

    /// Every gear's placement record.
    pub fn gears(&self) -> String {
        format!("{}/gears/", self.prefix)
    }

    /// The gear id a [`Keys::gear`] key names.
    pub fn gear_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.gears().as_str())
            .filter(|id| !id.is_empty())
    }

    /// The node name a [`Keys::node_info`] key names.
    pub fn node_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.node_infos().as_str())
            .filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_keys_sort_as_numbers_and_read_back() {
        let k = Keys::new("/gearhost/");
        assert_eq!(k.uid(70_000), "/gearhost/district/uids/0000070000");
        assert!(k.uid(9) < k.uid(10));
        assert!(k.uid(99_999) < k.uid(100_000));
        assert_eq!(k.uid_of(&k.uid(123_456)), Some(123_456));
        assert_eq!(k.uid_of("/other/district/uids/1"), None);
        assert!(k.node_alive("a").starts_with(&k.nodes_alive()));
        assert!(k.gear("x").starts_with(&k.gears()));
        assert_eq!(k.gear_of(&k.gear("g1")), Some("g1"));
        assert_eq!(k.gear_of(&k.gears()), None);
        assert_eq!(k.node_of(&k.node_info("node-a")), Some("node-a"));
        assert_eq!(k.node_of(&k.node_alive("node-a")), None);
    }
}
