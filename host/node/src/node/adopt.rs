//! Taking back, when the node starts, the gear processes an earlier node left running (they
//! are started detached from the node's life, see `procs::records`), and clearing away what
//! an earlier node left that nobody takes back.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;
use crate::procs::{self, records};

/// What became of a gear's recorded processes.
pub(super) enum Adoption {
    /// Nothing was recorded (the gear did not run, or an earlier node version ran it).
    Nothing,
    /// Every recorded process runs as recorded and is supervised again: their names and pids.
    Adopted(Vec<(String, u32)>),
    /// The records did not match what runs (the reason): what was left was stopped.
    Discarded(String),
}

impl Node {
    /// Takes back gear `g`'s recorded processes, all or none (its operation lock held): each
    /// must still be the recorded init (pid and start time), in its recorded cgroup leaf,
    /// running `gearhost-init`, and hand over its output pipes. `refuse` is a reason not to
    /// take anything back even so (the gear was starting or deploying when the earlier node
    /// stopped). Whatever is not taken back is killed with its cgroup, and so is every other
    /// process leaf of the gear an earlier node left.
    pub(super) async fn adopt_gear(&self, g: &Arc<Gear>, refuse: Option<String>) -> Adoption {
        let found = records::load(&g.paths.procs());
        let recorded = match &found {
            Ok(list) => list.clone(),
            Err(_) => Vec::new(),
        };
        let verdict = match (found, refuse) {
            (Err(e), _) => Err(e),
            (Ok(list), _) if list.is_empty() => Ok(None),
            (Ok(_), Some(why)) => Err(why),
            (Ok(list), None) => self.take_back(g, list).await.map(Some),
        };
        if !matches!(verdict, Ok(Some(_))) {
            // what is not taken back is killed: on cgroup v1 a frozen
            // process dies only once thawed
            let subtree = self.config.cgroup_subtree.clone();
            let id = g.record().id;
            let _ = tokio::task::spawn_blocking(move || {
                gearhost_sandbox::cgroup::thaw_gear(&subtree, &id)
            })
            .await;
        }
        match verdict {
            // processes an earlier node started and was killed before it recorded them
            // are not taken back either: said as such, not passed over
            Ok(None) => match self.clear_leaves(g, BTreeSet::new()).await {
                0 => Adoption::Nothing,
                killed => Adoption::Discarded(format!(
                    "{killed} process(es) an earlier node started were never recorded (it stopped while the gear started)"
                )),
            },
            Ok(Some(taken)) => {
                let keep = recorded.iter().map(|r| r.leaf.clone()).collect();
                self.clear_leaves(g, keep).await;
                Adoption::Adopted(taken)
            }
            Err(why) => {
                g.supervisor.clear_records();
                self.clear_leaves(g, BTreeSet::new()).await;
                Adoption::Discarded(why)
            }
        }
    }

    /// Checks every record, then (all matching) supervises each process again.
    async fn take_back(
        &self,
        g: &Arc<Gear>,
        list: Vec<records::ProcRecord>,
    ) -> Result<Vec<(String, u32)>, String> {
        let mut names = BTreeSet::new();
        for r in &list {
            if !names.insert(r.name.clone()) {
                return Err(format!(
                    "two runs of process {} were recorded (the node stopped while the app was replaced)",
                    r.name
                ));
            }
        }
        let sandbox = self.sandbox(g, g.record().active);
        let checked = {
            let sandbox = sandbox.clone();
            tokio::task::spawn_blocking(move || {
                list.into_iter()
                    .map(|r| procs::take_back(&sandbox, &r).map(|a| (r, a)))
                    .collect::<Result<Vec<_>, String>>()
            })
            .await
            .map_err(|e| format!("the check failed: {e}"))??
        };
        let events = {
            let r = g.record();
            crate::events::GearEvents::new(self.events.clone(), &r.namespace, &r.name)
        };
        Ok(checked
            .into_iter()
            .map(|(record, adopted)| {
                let name = record.name.clone();
                let pid = g.supervisor.adopt(
                    sandbox.clone(),
                    g.app_log.clone(),
                    record,
                    adopted,
                    events.clone(),
                );
                (name, pid)
            })
            .collect())
    }

    /// Kills and removes the gear's process leaves that an earlier node made (their start
    /// number is below this node's first), but for those in `keep`.
    /// Kills the processes of the gear's leaves an earlier node left that are not in `keep`;
    /// how many it killed.
    async fn clear_leaves(&self, g: &Gear, keep: BTreeSet<String>) -> usize {
        let subtree = self.config.cgroup_subtree.clone();
        let id = g.record().id;
        let base = procs::node_start_base();
        let cleared = tokio::task::spawn_blocking(move || {
            let mounts = gearhost_sandbox::cgroup::detect_kept().map_err(|e| e.to_string())?;
            let prefix = format!("{id}-");
            let mut cleared = Vec::new();
            for leaf in gearhost_sandbox::cgroup::group_members(&mounts, &subtree, &id) {
                let start = leaf
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.rsplit_once('-'))
                    .and_then(|(_, n)| n.parse::<u64>().ok());
                if keep.contains(&leaf) || start.is_none_or(|n| n >= base) {
                    continue;
                }
                let placement = gearhost_sandbox::cgroup::leaf_placement(&subtree, &id, &leaf);
                match gearhost_sandbox::adopt::discard(&placement) {
                    Ok(done) => cleared.push((leaf, done.killed)),
                    Err(e) => tracing::warn!(leaf = %leaf, error = %e, "cannot remove a process cgroup an earlier node left"),
                }
            }
            Ok::<_, String>(cleared)
        })
        .await;
        match cleared {
            Ok(Ok(cleared)) => {
                for (leaf, killed) in cleared.iter().filter(|(_, k)| *k > 0) {
                    tracing::info!(gear = %g.record().name, leaf = %leaf, killed, "stopped processes an earlier node left unrecorded");
                }
                cleared.iter().map(|(_, k)| *k).sum()
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot look for cgroups an earlier node left");
                0
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for cgroups an earlier node left");
                0
            }
        }
    }
}
