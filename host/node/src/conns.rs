//! Admission of the connections gears open through the node: the frontend's
//! door inside each gear and the links between gears.
//!
//! Every such connection costs the node descriptors (the gear's side, the
//! other side, and a duplicate for batched sends), and a gear's own limits
//! (hundreds of processes with thousands of descriptors each) are far above
//! what any node can hold. So each gear may hold at most
//! `gears.max-connections` of them at once, and all gears together at most
//! what the node's open-file limit leaves after a reserve for its own work
//! (the API, state files, starting gears, the public frontend). A connection
//! over either bound is closed at once; what the gear sees is a connection
//! reset, and the gear's hook log says why (once per burst).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Descriptors one admitted connection may hold in the node.
const FDS_PER_CONNECTION: u64 = 3;

/// Descriptors kept for the node's own work whatever gears do: at least
/// this many, or an eighth of the limit when that is more.
const RESERVED_FDS: u64 = 512;

/// The node-wide bound, shared by every gear's counter.
#[derive(Debug)]
pub struct Admission {
    per_gear: usize,
    node_max: usize,
    total: AtomicUsize,
}

/// One gear's count of admitted connections.
#[derive(Debug, Default)]
pub struct GearConnections {
    open: AtomicUsize,
    /// Whether a refusal was logged since the count was last below the bound.
    refused_logged: AtomicBool,
}

/// An admitted connection: holding it counts it; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    gear: Arc<GearConnections>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The gear holds `gears.max-connections` already.
    GearFull(usize),
    /// All gears together hold what the node's descriptors allow.
    NodeFull(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::GearFull(n) => write!(
                f,
                "the gear holds {n} connections through the node already (gears.max-connections); \
                 close some, or ask the operator to raise the limit"
            ),
            Refused::NodeFull(n) => write!(
                f,
                "gears hold {n} connections through the node, all its open-file limit allows \
                 beside its reserve; the operator can raise LimitNOFILE"
            ),
        }
    }
}

impl Admission {
    /// Bounds from the configured per-gear limit and the node's current
    /// open-file limit.
    pub fn new(per_gear: usize) -> Arc<Admission> {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        Arc::new(Admission {
            per_gear,
            node_max: Self::node_max_for(soft),
            total: AtomicUsize::new(0),
        })
    }

    /// How many gear connections a node with `nofile` descriptors admits.
    fn node_max_for(nofile: u64) -> usize {
        let reserve = RESERVED_FDS.max(nofile / 8);
        usize::try_from(nofile.saturating_sub(reserve) / FDS_PER_CONNECTION).unwrap_or(usize::MAX)
    }

    /// Admits one more connection of `gear`, or says why not. A refusal the
    /// gear's log should hear about (the first of a burst) comes with `true`.
    pub fn admit(self: &Arc<Self>, gear: &Arc<GearConnections>) -> Result<Slot, (Refused, bool)> {
        let refuse = |why: Refused| {
            let first = !gear.refused_logged.swap(true, Ordering::Relaxed);
            Err((why, first))
        };
        if gear.open.fetch_add(1, Ordering::AcqRel) >= self.per_gear {
            gear.open.fetch_sub(1, Ordering::AcqRel);
            return refuse(Refused::GearFull(self.per_gear));
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.node_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            gear.open.fetch_sub(1, Ordering::AcqRel);
            return refuse(Refused::NodeFull(self.node_max));
        }
        Ok(Slot {
            admission: self.clone(),
            gear: gear.clone(),
        })
    }

    /// Connections admitted and still open, on the whole node.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl GearConnections {
    /// Connections of this gear admitted and still open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
        if self.gear.open.fetch_sub(1, Ordering::AcqRel) <= self.admission.per_gear / 2 {
            self.gear.refused_logged.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gear_gets_its_share_and_the_node_keeps_its_reserve() {
        let admission = Arc::new(Admission {
            per_gear: 3,
            node_max: 5,
            total: AtomicUsize::new(0),
        });
        let a = Arc::new(GearConnections::default());
        let b = Arc::new(GearConnections::default());
        let held_a: Vec<Slot> = (0..3).map(|_| admission.admit(&a).expect("a")).collect();
        // the fourth of one gear is refused, and only the first refusal is to be logged
        assert_eq!(
            admission.admit(&a).err(),
            Some((Refused::GearFull(3), true))
        );
        assert_eq!(
            admission.admit(&a).err(),
            Some((Refused::GearFull(3), false))
        );
        let held_b: Vec<Slot> = (0..2).map(|_| admission.admit(&b).expect("b")).collect();
        assert_eq!(
            admission.admit(&b).err(),
            Some((Refused::NodeFull(5), true))
        );
        assert_eq!((a.open(), b.open(), admission.open()), (3, 2, 5));
        drop(held_a);
        assert_eq!((a.open(), admission.open()), (0, 2));
        // below half of its share again: the next refusal is news
        let _again: Vec<Slot> = (0..3)
            .map(|_| admission.admit(&a).expect("a again"))
            .collect();
        assert_eq!(
            admission.admit(&a).err(),
            Some((Refused::GearFull(3), true))
        );
        drop(held_b);
        assert_eq!(b.open(), 0);
    }

    #[test]
    fn the_reserve_grows_with_the_limit() {
        assert_eq!(Admission::node_max_for(1024), (1024 - 512) / 3);
        assert_eq!(
            Admission::node_max_for(1 << 20),
            ((1 << 20) - (1 << 17)) / 3
        );
        assert_eq!(Admission::node_max_for(100), 0);
    }
}
