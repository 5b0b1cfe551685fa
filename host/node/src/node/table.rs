//! The node's table of live gears: by id, and by (namespace, name) so that a request that
//! names a gear finds it in constant time, however many gears the node has. A gear's name and
//! namespace never change; the table is changed only by [`GearTable::insert`] and
//! [`GearTable::remove`], which keep both maps in step (reads go through `Deref` to the map by
//! id).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::Gear;

/// Live gears, by id and by name.
#[derive(Debug, Clone, Default)]
pub struct GearTable {
    by_id: BTreeMap<String, Arc<Gear>>,
    by_name: HashMap<(String, String), String>,
}

impl GearTable {
    /// Adds `gear` (a gear of that id is replaced).
    pub fn insert(&mut self, id: String, gear: Arc<Gear>) {
        self.remove(&id);
        let r = gear.record();
        self.by_name.insert((r.namespace, r.name), id.clone());
        self.by_id.insert(id, gear);
    }

    /// Removes the gear of `id`.
    pub fn remove(&mut self, id: &str) -> Option<Arc<Gear>> {
        let gear = self.by_id.remove(id)?;
        let r = gear.record();
        let key = (r.namespace, r.name);
        if self.by_name.get(&key).is_some_and(|found| found == id) {
            self.by_name.remove(&key);
        }
        Some(gear)
    }

    /// The gear `name` of `namespace`.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Gear>> {
        let id = self
            .by_name
            .get(&(namespace.to_string(), name.to_string()))?;
        self.by_id.get(id)
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
