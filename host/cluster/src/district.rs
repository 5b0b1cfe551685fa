//! The district: gear uids (and with them MCS levels, which are derived from
//! the uid), gear names, public host labels and aliases are claimed
//! cluster-wide in one etcd transaction per change, so no two gears anywhere
//! ever share one. A gear keeps its claims for its whole life, on whichever
//! node it runs.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

use crate::{Cluster, ClusterError};

/// A gear as the cluster records it: who it is and which node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The gear's id.
    pub id: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its public host label, `<gear>-<namespace>`.
    pub label: String,
    /// Its uid (its MCS level follows from it).
    pub uid: u32,
    /// The node that holds it.
    pub node: String,
    /// Its cartridge.
    pub cartridge: String,
    /// The host names it answers to besides its own (`gear alias`): every
    /// node's frontend routes them to the node that holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The node that keeps a copy of its active deployment and environment,
    /// to bring it back from should its node die (stateless gears).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Why the gear is lost: its node died and it could not be brought back
    /// elsewhere (it held data); restored from a snapshot, it lives again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

impl Placement {
    /// The placement without what failover adds (its replica, its loss):
    /// what the node that holds the gear knows of it.
    pub fn held(&self) -> Placement {
        Placement {
            replica: None,
            lost: None,
            ..self.clone()
        }
    }
}

/// How many times a claim is tried again after losing a uid to a
/// concurrent claim before giving up.
const CLAIM_TRIES: usize = 64;

impl Cluster {
    /// Claims the lowest free uid in `min..=max`, the gear's name and its
    /// public label for `gear` (whose `uid` is ignored), and records its
    /// placement, in one transaction. Returns the uid. A name or label held
    /// by another gear is a conflict that names the holder; a uid taken by
    /// a concurrent claim is retried with the next free one.
    pub async fn claim_new(
        &self,
        gear: &Placement,
        min: u32,
        max: u32,
    ) -> Result<u32, ClusterError> {
        let mut skip = std::collections::BTreeSet::new();
        for _ in 0..CLAIM_TRIES {
            let uid = self.lowest_free_uid(min, max, &skip).await?;
            let placed = Placement {
                uid,
                ..gear.clone()
            };
            match self.claim(&placed, None).await? {
                Claimed::Done => return Ok(uid),
                // a concurrent claim of the same uid is by far the likeliest change
                Claimed::UidTaken | Claimed::Changed => {
                    skip.insert(uid);
                }
            }
        }
        Err(ClusterError::Busy)
    }

    /// Claims what `gear` already has (a gear the node held before it
    /// joined, or restored from a snapshot with its uid): succeeds when the
    /// claims are free or already this gear's, and, with `holder`, when the
    /// gear's placement still names that node (a move or a failover takes a
    /// gear over from the node it was on; the node itself, coming back, takes
    /// back only what is still its own). Nothing changed between the read and
    /// the write, or nothing is written.
    pub async fn claim_existing(
        &self,
        gear: &Placement,
        holder: Option<&str>,
    ) -> Result<(), ClusterError> {
        self.claim_with_tries(gear, holder.map(|node| (node, false)))
            .await
    }

    /// [`Cluster::claim_existing`] of a gear from node `dead`, taken over because that node is
    /// gone (a failover, a lost gear restored): only while `dead` has no live lease, compared
    /// in the same transaction, so a node that came back in the meantime keeps its gear.
    pub async fn claim_from_dead(&self, gear: &Placement, dead: &str) -> Result<(), ClusterError> {
        self.claim_with_tries(gear, Some((dead, true))).await
    }

    async fn claim_with_tries(
        &self,
        gear: &Placement,
        holder: Option<(&str, bool)>,
    ) -> Result<(), ClusterError> {
        for _ in 0..CLAIM_TRIES {
            match self.claim(gear, holder).await? {
                Claimed::Done => return Ok(()),
                // read again: what changed shows then
                Claimed::Changed => continue,
                Claimed::UidTaken => break,
            }
        }
        Err(ClusterError::Conflict(format!(
            "uid {} of gear {} (namespace {}) belongs to another gear in the cluster; the two nodes were given overlapping uid ranges before they joined: move one gear away (snapshot and restore it under a new name) or destroy it",
            gear.uid, gear.name, gear.namespace
        )))
    }

    /// One try of a claim; `holder`: the node the placement must still name, and whether that
    /// node must also be gone.
    async fn claim(
        &self,
        gear: &Placement,
        holder: Option<(&str, bool)>,
    ) -> Result<Claimed, ClusterError> {
        let k = &self.keys;
        let record_key = k.gear(&gear.id);
        let uid = k.uid(gear.uid);
        let name = k.name(&gear.namespace, &gear.name);
        // the uid, the name, the label and every alias: all free or already this gear's
        let claims: Vec<(Claim, String)> = [
            (Claim::Uid, uid),
            (Claim::Name, name),
            (Claim::Label, k.label(&gear.label)),
        ]
        .into_iter()
        .chain(gear.aliases.iter().map(|a| (Claim::Host, k.host(a))))
        .collect();
        let id = gear.id.as_bytes().to_vec();
        let record = serde_json::to_vec(gear).unwrap_or_default();
        let Some(mut compares) = self.read_claims(gear, &claims).await? else {
            return Ok(Claimed::UidTaken);
        };
        // the placement as it is: unchanged until the write, and, with a
        // holder, still that node's
        let found = self
            .get("read a gear's placement", record_key.clone(), None)
            .await?;
        let current = found.kvs().first();
        if let Some((dead, true)) = holder {
            let alive = self.keys.node_alive(dead);
            if self.node_is_alive(dead).await? {
                return Err(ClusterError::Conflict(format!(
                    "node {dead} is back and keeps gear {} (namespace {})",
                    gear.name, gear.namespace
                )));
            }
            compares.push(Compare::version(alive.as_str(), CompareOp::Equal, 0));
        }
        if let Some((holder, _)) = holder {
            let placed =
                current.and_then(|kv| serde_json::from_slice::<Placement>(kv.value()).ok());
            match placed {
                Some(p) if p.node == holder => {}
                Some(p) => {
                    return Err(ClusterError::Conflict(format!(
                        "gear {} (namespace {}) is on node {} now, not on {holder}",
                        gear.name, gear.namespace, p.node
                    )));
                }
                None => {
                    return Err(ClusterError::Conflict(format!(
                        "gear {} (namespace {}) is no longer in the cluster",
                        gear.name, gear.namespace
                    )));
                }
            }
        }
        compares.push(Compare::mod_revision(
            record_key.as_str(),
            CompareOp::Equal,
            current.map_or(0, |kv| kv.mod_revision()),
        ));
        let txn = Txn::new().when(compares).and_then(
            claims
                .iter()
                .map(|(_, key)| TxnOp::put(key.as_str(), id.clone(), None))
                .chain([TxnOp::put(record_key.as_str(), record, None)])
                .collect::<Vec<_>>(),
        );
        let done = self.txn("claim the gear's uid and names", txn).await?;
        if done.succeeded() {
            Ok(Claimed::Done)
        } else {
            // a claim changed between the read and the write: the caller
            // reads again (a name taken meanwhile shows at the next read)
            Ok(Claimed::Changed)
        }
    }

    /// Reads `claims` at one revision: the comparisons that make a
    /// transaction take them only if none changed since; `None` when the uid
    /// belongs to another gear, an error naming the holder when a name does.
    async fn read_claims(
        &self,
        gear: &Placement,
        claims: &[(Claim, String)],
    ) -> Result<Option<Vec<Compare>>, ClusterError> {
        let id = gear.id.as_bytes();
        let read = Txn::new().and_then(
            claims
                .iter()
                .map(|(_, key)| TxnOp::get(key.as_str(), None))
                .collect::<Vec<_>>(),
        );
        let read = self.txn("read the gear's claims", read).await?;
        let mut compares = Vec::new();
        for ((what, key), response) in claims.iter().zip(read.op_responses()) {
            let TxnOpResponse::Get(found) = response else {
                return Err(ClusterError::Timeout("an answer to a read of the claims"));
            };
            let kv = found.kvs().first();
            if let Some(kv) = kv
                && kv.value() != id
            {
                if *what == Claim::Uid {
                    return Ok(None);
                }
                let holder = String::from_utf8_lossy(kv.value()).into_owned();
                return Err(self.taken(*what, key, gear, &holder).await);
            }
            // free or ours when read: taken only if it has not changed since
            let revision = kv.map_or(0, |kv| kv.mod_revision());
            compares.push(Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            ));
        }
        Ok(Some(compares))
    }

    /// Gives gear `gear` (its placement as it is now, held by this node) the
    /// alias `added` and records its aliases, or takes `removed` from it. An
    /// alias another gear holds anywhere in the cluster is a conflict that
    /// names the holder.
    pub async fn set_aliases(
        &self,
        gear: &Placement,
        added: Option<&str>,
        removed: Option<&str>,
    ) -> Result<(), ClusterError> {
        let k = &self.keys;
        let id = gear.id.as_bytes().to_vec();
        let record = serde_json::to_vec(gear).unwrap_or_default();
        for _ in 0..CLAIM_TRIES {
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            if let Some(host) = added {
                let claims = [(Claim::Host, k.host(host))];
                let Some(read) = self.read_claims(gear, &claims).await? else {
                    continue;
                };
                compares.extend(read);
                ops.push(TxnOp::put(k.host(host), id.clone(), None));
            }
            if let Some(host) = removed {
                ops.push(release_if_held(&k.host(host), &id));
            }
            ops.push(TxnOp::put(k.gear(&gear.id), record.clone(), None));
            let txn = Txn::new().when(compares).and_then(ops);
            if self
                .txn("record the gear's aliases", txn)
                .await?
                .succeeded()
            {
                return Ok(());
            }
        }
        Err(ClusterError::Busy)
    }

    /// The conflict for a name, label or alias (`key`) held by gear `holder`.
    async fn taken(&self, what: Claim, key: &str, gear: &Placement, holder: &str) -> ClusterError {
        let place = match self.placement(holder).await {
            Ok(Some(p)) => format!(
                "gear {} (namespace {}) on node {}",
                p.name, p.namespace, p.node
            ),
            _ => format!("gear {holder}"),
        };
        ClusterError::Conflict(match what {
            Claim::Name => format!(
                "gear {} already exists in namespace {} ({place}); choose another name",
                gear.name, gear.namespace
            ),
            Claim::Label => format!(
                "the public name {} already leads to {place}; choose another gear name",
                gear.label
            ),
            Claim::Host | Claim::Uid => format!(
                "{} already leads to {place}; remove it there first",
                key.rsplit('/').next().unwrap_or(key)
            ),
        })
    }

    /// Rewrites gear `gear`'s placement record as it is given, if the record
    /// still names node `holder` and has not changed since it was read (its
    /// replica recorded, its loss): whether it was written.
    pub async fn update_placement(
        &self,
        gear: &Placement,
        holder: &str,
    ) -> Result<bool, ClusterError> {
        self.update_placement_when(gear, holder, None).await
    }

    /// [`Cluster::update_placement`] of a gear whose node `dead` is gone (its loss recorded):
    /// written only while that node has no live lease, compared in the same transaction, so a
    /// node that came back meanwhile never finds its running gear marked lost.
    pub async fn update_placement_of_dead(
        &self,
        gear: &Placement,
        dead: &str,
    ) -> Result<bool, ClusterError> {
        let alive = self.keys.node_alive(dead);
        let gone = Compare::version(alive.as_str(), CompareOp::Equal, 0);
        self.update_placement_when(gear, dead, Some(gone)).await
    }

    async fn update_placement_when(
        &self,
        gear: &Placement,
        holder: &str,
        also: Option<Compare>,
    ) -> Result<bool, ClusterError> {
        let key = self.keys.gear(&gear.id);
        let found = self
            .get("read a gear's placement", key.clone(), None)
            .await?;
        let Some(kv) = found.kvs().first() else {
            return Ok(false);
        };
        match serde_json::from_slice::<Placement>(kv.value()) {
            Ok(p) if p.node == holder => {}
            _ => return Ok(false),
        }
        let unchanged = Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision());
        let txn = Txn::new()
            .when(std::iter::once(unchanged).chain(also).collect::<Vec<_>>())
            .and_then([TxnOp::put(
                key.as_str(),
                serde_json::to_vec(gear).unwrap_or_default(),
                None,
            )]);
        Ok(self
            .txn("update a gear's placement", txn)
            .await?
            .succeeded())
    }

    /// Releases `gear`'s claims and placement (after it was destroyed):
    /// only claims that are still this gear's are removed.
    pub async fn release(&self, gear: &Placement) -> Result<(), ClusterError> {
        let k = &self.keys;
        let id = gear.id.as_bytes().to_vec();
        // one transaction: each claim goes if it is still this gear's (a
        // nested transaction each), and the placement with them
        let txn = Txn::new().and_then(
            [
                k.uid(gear.uid),
                k.name(&gear.namespace, &gear.name),
                k.label(&gear.label),
            ]
            .into_iter()
            .chain(gear.aliases.iter().map(|a| k.host(a)))
            .map(|key| release_if_held(&key, &id))
            .chain([TxnOp::delete(k.gear(&gear.id), None)])
            .collect::<Vec<_>>(),
        );
        self.txn("release the gear's claims", txn).await?;
        Ok(())
    }

    /// The placement of gear `id`, if the cluster has one.
    pub async fn placement(&self, id: &str) -> Result<Option<Placement>, ClusterError> {
        let found = self
            .get("read a gear's placement", self.keys.gear(id), None)
            .await?;
        Ok(found
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    /// The placement of gear `name` in `namespace`, wherever it lives.
    pub async fn placement_by_name(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Placement>, ClusterError> {
        let found = self
            .get("read a gear's name", self.keys.name(namespace, name), None)
            .await?;
        let Some(id) = found.kvs().first().and_then(|kv| kv.value_str().ok()) else {
            return Ok(None);
        };
        self.placement(id).await
    }

    /// Every gear's placement.
    pub async fn placements(&self) -> Result<Vec<Placement>, ClusterError> {
        let found = self
            .get(
                "list the gears' placements",
                self.keys.gears(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        Ok(found
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// The lowest uid in `min..=max` that no gear claims and that is not in
    /// `skip` (uids just lost to concurrent claims).
    async fn lowest_free_uid(
        &self,
        min: u32,
        max: u32,
        skip: &std::collections::BTreeSet<u32>,
    ) -> Result<u32, ClusterError> {
        let found = self
            .get(
                "list the claimed uids",
                self.keys.uid(min),
                Some(
                    GetOptions::new()
                        .with_range(self.keys.uid(max.saturating_add(1)))
                        .with_keys_only(),
                ),
            )
            .await?;
        let mut used: Vec<u32> = found
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok().and_then(|key| self.keys.uid_of(key)))
            .collect();
        used.extend(skip.iter().copied());
        used.sort_unstable();
        used.dedup();
        first_gap(&used, min, max).ok_or(ClusterError::Full { min, max })
    }
}

/// The lowest number in `min..=max` missing from `used` (sorted, unique).
fn first_gap(used: &[u32], min: u32, max: u32) -> Option<u32> {
    let mut want = min;
    for &u in used.iter().filter(|&&u| u >= min) {
        if u > want {
            break;
        }
        if u == want {
            want = want.checked_add(1)?;
        }
    }
    (want <= max).then_some(want)
}

/// The outcome of one claim transaction.
enum Claimed {
    Done,
    /// The uid belongs to another gear.
    UidTaken,
    /// A claim or the placement changed between the read and the write.
    Changed,
}

/// What a claim key claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Uid,
    Name,
    Label,
    Host,
}

/// A nested transaction that deletes claim `key` if gear `id` still holds it.
fn release_if_held(key: &str, id: &[u8]) -> TxnOp {
    TxnOp::txn(
        Txn::new()
            .when([Compare::value(key, CompareOp::Equal, id.to_vec())])
            .and_then([TxnOp::delete(key, None)]),
    )
}

#[cfg(test)]
mod tests {
    use super::first_gap;

    #[test]
    fn the_first_gap_is_the_lowest_free_uid() {
        assert_eq!(first_gap(&[], 10, 20), Some(10));
        assert_eq!(first_gap(&[10, 11, 13], 10, 20), Some(12));
        assert_eq!(first_gap(&[5, 10, 11], 10, 20), Some(12));
        assert_eq!(first_gap(&[11, 12], 10, 20), Some(10));
        assert_eq!(first_gap(&[10, 11], 10, 11), None);
        assert_eq!(
            first_gap(&[u32::MAX - 1, u32::MAX], u32::MAX - 1, u32::MAX),
            None
        );
    }
}
