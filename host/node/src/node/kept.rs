//! The connections an earlier node handed to the keeper, counted again by
//! the node that takes over: a websocket keeps its gear awake (the idler
//! sees it as a request in flight) and a linked connection counts against
//! its gear's connection bound, until the keeper reports its end.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use gearhost_sys::lock::lock;

use super::Node;
use crate::keeper::Keeper;

impl Node {
    /// Counts the keeper's pairs against their gears.
    pub fn count_kept(&self, keeper: &Keeper) {
        let gears = lock(&self.gears).clone();
        let (mut websockets, mut linked) = (0usize, 0usize);
        for pair in keeper.live_pairs() {
            if let Some(id) = pair.tag.strip_prefix("ws:") {
                let Some(gear) = gears.get(id).cloned() else {
                    continue;
                };
                gear.front.active.fetch_add(1, Ordering::Relaxed);
                keeper.when_closed(
                    pair.id,
                    Box::new(move || {
                        gear.front.active.fetch_sub(1, Ordering::Relaxed);
                        gear.front.touch();
                    }),
                );
                websockets += 1;
            } else if let Some(rest) = pair.tag.strip_prefix("link:") {
                let from = rest.split(':').next().unwrap_or_default();
                let Some(gear) = gears.get(from) else {
                    continue;
                };
                // over the bound (it was lowered meanwhile): left uncounted
                if let Ok(slot) = self.admission.admit(&Arc::clone(&gear.conns)) {
                    keeper.when_closed(pair.id, Box::new(move || drop(slot)));
                }
                linked += 1;
            }
        }
        tracing::info!(
            keeper = keeper.pid(),
            websockets,
            linked,
            "connections kept through the restart"
        );
    }
}
