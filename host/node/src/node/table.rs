//! The node's table of live gears: by id, and indexed so that what a request or a create
//! asks of the table takes the same time however many gears the node has: a gear by
//! (namespace, name), the gears answering to a public label, how many gears a user owns
//! and how many a namespace holds, the lowest uid no gear holds, and the gears linked to a
//! gear. A gear's name, namespace, uid and owner never change; the table is changed only by
//! [`GearTable::insert`] and [`GearTable::remove`], which keep every index in step, and its
//! links only by [`GearTable::link`] and [`GearTable::unlink`], called with each change of a
//! record's links (reads go through `Deref` to the map by id).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{Gear, lock};
use crate::state;

/// Live gears, by id, with their indexes.
#[derive(Debug, Clone, Default)]
pub struct GearTable {
    by_id: BTreeMap<String, Arc<Gear>>,
    by_name: HashMap<(String, String), String>,
    /// `<name>-<namespace>` to the ids of the gears with that label (more than one only for
    /// gears made before labels were checked).
    by_label: HashMap<String, Vec<String>>,
    /// Gears each user owns.
    owned: HashMap<String, usize>,
    /// Gears in each namespace.
    in_namespace: BTreeMap<String, usize>,
    uids: UidPool,
    /// The ids of the gears linked to a gear, by its id.
    linked_to: HashMap<String, BTreeSet<String>>,
}

/// The uids gears hold (with how many hold each: more than one only for records edited by
/// hand), and where the lowest free one may be.
#[derive(Debug, Clone, Default)]
pub struct UidPool {
    used: BTreeMap<u32, usize>,
    /// No uid from the range's start up to (not including) this one is free: the search
    /// starts here. Lowered when a uid is freed.
    hint: u32,
}

impl UidPool {
    /// Marks `uid` used.
    pub fn take(&mut self, uid: u32) {
        *self.used.entry(uid).or_default() += 1;
    }

    /// Lets go of `uid` once: it is free when nothing else holds it.
    pub fn free(&mut self, uid: u32) {
        let Some(holders) = self.used.get_mut(&uid) else {
            return;
        };
        *holders -= 1;
        if *holders == 0 {
            self.used.remove(&uid);
            self.hint = self.hint.min(uid);
        }
    }

    /// The lowest uid in `min..=max` that is not used, if any. Amortized constant time: the
    /// search starts where the last one ended (or at the lowest uid freed since), and the
    /// used uids it walks over are not walked again until one below them is freed. The range
    /// is the node's configuration, the same for every call.
    pub fn lowest_free(&mut self, min: u32, max: u32) -> Option<u32> {
        let mut candidate = self.hint.max(min);
        for &used in self.used.range(candidate..).map(|(uid, _)| uid) {
            if used != candidate {
                break;
            }
            candidate = candidate.checked_add(1)?;
        }
        self.hint = candidate;
        (candidate <= max).then_some(candidate)
    }
}

impl GearTable {
    /// Adds `gear` (a gear of that id is replaced).
    pub fn insert(&mut self, id: String, gear: Arc<Gear>) {
        self.remove(&id);
        {
            let r = lock(&gear.record);
            self.by_name
                .insert((r.namespace.clone(), r.name.clone()), id.clone());
            self.by_label
                .entry(state::public_label(&r.name, &r.namespace))
                .or_default()
                .push(id.clone());
            *self.in_namespace.entry(r.namespace.clone()).or_default() += 1;
            if let Some(owner) = &r.owner {
                *self.owned.entry(owner.clone()).or_default() += 1;
            }
            self.uids.take(r.uid);
            for l in &r.links {
                self.linked_to
                    .entry(l.gear.clone())
                    .or_default()
                    .insert(id.clone());
            }
        }
        self.by_id.insert(id, gear);
    }

    /// Removes the gear of `id`.
    pub fn remove(&mut self, id: &str) -> Option<Arc<Gear>> {
        let gear = self.by_id.remove(id)?;
        let r = lock(&gear.record);
        let key = (r.namespace.clone(), r.name.clone());
        if self.by_name.get(&key).is_some_and(|found| found == id) {
            self.by_name.remove(&key);
        }
        let label = state::public_label(&r.name, &r.namespace);
        if let Some(ids) = self.by_label.get_mut(&label) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_label.remove(&label);
            }
        }
        if let Some(count) = self.in_namespace.get_mut(&r.namespace) {
            *count -= 1;
            if *count == 0 {
                self.in_namespace.remove(&r.namespace);
            }
        }
        if let Some(owner) = &r.owner
            && let Some(count) = self.owned.get_mut(owner)
        {
            *count -= 1;
            if *count == 0 {
                self.owned.remove(owner);
            }
        }
        self.uids.free(r.uid);
        for l in &r.links {
            self.unlink(id, &l.gear);
        }
        drop(r);
        Some(gear)
    }

    /// Notes that gear `from` is now linked to gear `to` (its record says so).
    pub fn link(&mut self, from: &str, to: &str) {
        self.linked_to
            .entry(to.to_string())
            .or_default()
            .insert(from.to_string());
    }

    /// Notes that gear `from` is no longer linked to gear `to`.
    pub fn unlink(&mut self, from: &str, to: &str) {
        if let Some(from_ids) = self.linked_to.get_mut(to) {
            from_ids.remove(from);
            if from_ids.is_empty() {
                self.linked_to.remove(to);
            }
        }
    }

    /// The gears linked to gear `id`.
    pub fn linked_to(&self, id: &str) -> Vec<&Arc<Gear>> {
        self.linked_to
            .get(id)
            .map(|ids| ids.iter().filter_map(|i| self.by_id.get(i)).collect())
            .unwrap_or_default()
    }

    /// The gear `name` of `namespace`.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Gear>> {
        let id = self
            .by_name
            .get(&(namespace.to_string(), name.to_string()))?;
        self.by_id.get(id)
    }

    /// The gears whose public label is `label` (`<name>-<namespace>`): one, or none; more
    /// only for gears made before labels were checked.
    pub fn by_label(&self, label: &str) -> Vec<&Arc<Gear>> {
        self.by_label
            .get(label)
            .map(|ids| ids.iter().filter_map(|id| self.by_id.get(id)).collect())
            .unwrap_or_default()
    }

    /// How many gears `user` owns.
    pub fn owned_by(&self, user: &str) -> usize {
        self.owned.get(user).copied().unwrap_or(0)
    }

    /// How many gears each namespace holds (namespaces without gears are not listed).
    pub fn namespace_counts(&self) -> BTreeMap<String, usize> {
        self.in_namespace.clone()
    }

    /// The lowest uid in `min..=max` no gear holds, if any.
    pub fn free_uid(&mut self, min: u32, max: u32) -> Option<u32> {
        self.uids.lowest_free(min, max)
    }

    /// Whether a gear holds `uid`.
    pub fn uid_taken(&self, uid: u32) -> bool {
        self.uids.used.contains_key(&uid)
    }
}

impl std::ops::Deref for GearTable {
    type Target = BTreeMap<String, Arc<Gear>>;

    fn deref(&self) -> &Self::Target {
        &self.by_id
    }
}

impl FromIterator<(String, Arc<Gear>)> for GearTable {
    fn from_iter<I: IntoIterator<Item = (String, Arc<Gear>)>>(iter: I) -> Self {
        let mut table = GearTable::default();
        for (id, gear) in iter {
            table.insert(id, gear);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_uid_fills_gaps_first_and_stays_in_the_range() {
        let mut pool = UidPool::default();
        for uid in [100, 101, 103] {
            pool.take(uid);
        }
        // below the range nothing counts, inside it the first gap does
        assert_eq!(pool.lowest_free(100, 110), Some(102));
        pool.take(102);
        assert_eq!(pool.lowest_free(100, 110), Some(104));
        pool.take(104);
        // a uid freed below the last one found is found again
        pool.free(101);
        assert_eq!(pool.lowest_free(100, 110), Some(101));
        pool.take(101);
        assert_eq!(pool.lowest_free(100, 110), Some(105));
        // uids outside the range (a range changed since) are left alone
        let mut pool = UidPool::default();
        pool.take(5);
        pool.take(50);
        assert_eq!(pool.lowest_free(50, 52), Some(51));
        // freeing a uid never used changes nothing
        pool.free(7);
        assert_eq!(pool.lowest_free(50, 52), Some(51));
        // a uid two records hold is free only once both let go
        pool.take(51);
        pool.take(51);
        pool.free(51);
        assert_eq!(pool.lowest_free(50, 52), Some(52));
        pool.free(51);
        assert_eq!(pool.lowest_free(50, 52), Some(51));
    }

    #[test]
    fn a_full_range_has_no_free_uid_until_one_is_freed() {
        let mut pool = UidPool::default();
        for uid in 10..=12 {
            assert_eq!(pool.lowest_free(10, 12), Some(uid));
            pool.take(uid);
        }
        assert_eq!(pool.lowest_free(10, 12), None);
        assert_eq!(pool.lowest_free(10, 12), None);
        pool.free(11);
        assert_eq!(pool.lowest_free(10, 12), Some(11));
        pool.take(11);
        assert_eq!(pool.lowest_free(10, 12), None);
        // the very top of the uid space
        let mut pool = UidPool::default();
        pool.take(u32::MAX);
        assert_eq!(pool.lowest_free(u32::MAX, u32::MAX), None);
        pool.free(u32::MAX);
        assert_eq!(pool.lowest_free(u32::MAX, u32::MAX), Some(u32::MAX));
    }

    #[test]
    fn finding_a_uid_walks_over_each_used_uid_once() {
        let mut pool = UidPool::default();
        // ten thousand creates: each found uid is taken, the next search starts there
        for expected in 1000..11_000 {
            assert_eq!(pool.lowest_free(1000, 20_000), Some(expected));
            pool.take(expected);
        }
        assert_eq!(pool.hint, 10_999);
        pool.free(5000);
        assert_eq!(pool.lowest_free(1000, 20_000), Some(5000));
        pool.take(5000);
        assert_eq!(pool.lowest_free(1000, 20_000), Some(11_000));
    }
}
