//! Where a new gear goes: the placement policy. Among the nodes that hold a
//! live lease, the one with the fewest gears for its free memory — the
//! fewest `(gears + 1)` per MiB of available memory — so that an empty node fills first
//! and a node short of memory gets fewer gears; ties go to the name that
//! sorts first. Gear counts come from the placement records (always
//! current), memory from the load each node publishes with its heartbeat.

use std::collections::HashMap;

use etcd_client::GetOptions;

use crate::{Cluster, ClusterError, Placement};

/// A candidate node: its name, available memory in bytes, gears placed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub name: String,
    /// Its available memory, in bytes.
    pub memory_available: u64,
    /// Gears placed on it.
    pub gears: u64,
}

/// The candidate the policy picks.
pub fn pick(candidates: &[Candidate]) -> Option<&Candidate> {
    // (gears + 1) / MiB available, compared without division: a/b < c/d  <=>  a*d < c*b
    let mib = |c: &Candidate| (c.memory_available >> 20).max(1);
    candidates.iter().min_by(|a, b| {
        let left = u128::from(a.gears + 1) * u128::from(mib(b));
        let right = u128::from(b.gears + 1) * u128::from(mib(a));
        left.cmp(&right).then_with(|| a.name.cmp(&b.name))
    })
}

impl Cluster {
    /// The node a new gear should be placed on (this node's name when no
    /// other node is up).
    pub async fn choose_node(&self) -> Result<String, ClusterError> {
        Ok(self
            .choose_node_except(&[])
            .await?
            .unwrap_or_else(|| self.node().to_string()))
    }

    /// The live node the policy picks among those not in `except`, if any.
    pub async fn choose_node_except(
        &self,
        except: &[&str],
    ) -> Result<Option<String>, ClusterError> {
        let members = self.members().await?;
        let placed = self
            .get(
                "count the gears on each node",
                self.keys().gears(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for kv in placed.kvs() {
            if let Ok(p) = serde_json::from_slice::<Placement>(kv.value()) {
                *counts.entry(p.node).or_default() += 1;
            }
        }
        let candidates: Vec<Candidate> = members
            .iter()
            .filter(|m| !except.contains(&m.advert.name.as_str()))
            .filter_map(|m| {
                let load = m.load?;
                Some(Candidate {
                    gears: counts.get(&m.advert.name).copied().unwrap_or(0),
                    memory_available: load.memory_available,
                    name: m.advert.name.clone(),
                })
            })
            .collect();
        Ok(pick(&candidates).map(|c| c.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, gib: u64, gears: u64) -> Candidate {
        Candidate {
            name: name.into(),
            memory_available: gib << 30,
            gears,
        }
    }

    #[test]
    fn the_emptiest_node_for_its_memory_is_picked() {
        // equal memory: fewest gears, ties by name
        let c = [node("b", 8, 1), node("a", 8, 1), node("c", 8, 0)];
        assert_eq!(pick(&c).map(|c| c.name.as_str()), Some("c"));
        let c = [node("b", 8, 2), node("a", 8, 2)];
        assert_eq!(pick(&c).map(|c| c.name.as_str()), Some("a"));
        // twice the memory takes twice the gears before it loses
        let c = [node("big", 16, 4), node("small", 8, 1)];
        assert_eq!(pick(&c).map(|c| c.name.as_str()), Some("small"));
        let c = [node("big", 16, 2), node("small", 8, 1)];
        assert_eq!(pick(&c).map(|c| c.name.as_str()), Some("big"));
        // a node with no memory free is last
        let c = [node("full", 0, 0), node("free", 4, 10)];
        assert_eq!(pick(&c).map(|c| c.name.as_str()), Some("free"));
        assert_eq!(pick(&[]), None);
    }
}
