//! The node's event log: what happened to gears (deploys, starts, stops,
//! crashes and supervised restarts, idles and wakes, rollbacks, hook
//! failures), each event with its time, gear, kind and reason. Every event
//! goes three ways: one line of the node's own log (`tracing`), a bounded
//! ring in memory that `gear node events` reads and follows, and one JSON
//! line of `<state>/events/events.jsonl` (rotated like gear logs, readable
//! by root only), from which the ring is filled again when the node starts.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;

use crate::api::reply::{NodeEvent, NodeEventKind};
use crate::logs::{self, LogFile};

/// How many events the ring keeps (and a new node reads back from the file).
pub const RING: usize = 1000;

/// How many events a follower may fall behind before it misses some.
const FOLLOW_QUEUE: usize = 256;

/// Most bytes of an event's reason.
const MAX_REASON: usize = 2048;

/// The event log.
#[derive(Debug)]
pub struct EventLog {
    ring: Mutex<Ring>,
    file: LogFile,
    tx: tokio::sync::broadcast::Sender<NodeEvent>,
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<NodeEvent>,
    next: u64,
}

impl EventLog {
    /// The log under `state_dir`, rotated at `max_bytes` with `keep` old
    /// files; the ring starts with the last events of the file.
    pub fn open(state_dir: &Path, max_bytes: u64, keep: usize) -> anyhow::Result<EventLog> {
        let dir = state_dir.join("events");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("cannot set the mode of {}: {e}", dir.display()))?;
        let path = dir.join("events.jsonl");
        let mut ring = Ring::default();
        if let Ok((lines, _)) = logs::tail(&path, RING) {
            // a line cut by a crash, or of another version, is skipped
            ring.events = lines
                .iter()
                .filter_map(|l| serde_json::from_str::<NodeEvent>(l).ok())
                .collect();
            ring.next = ring.events.back().map_or(0, |e| e.seq + 1);
        }
        let (tx, _) = tokio::sync::broadcast::channel(FOLLOW_QUEUE);
        Ok(EventLog {
            ring: Mutex::new(ring),
            file: LogFile::new(path, max_bytes, keep),
            tx,
        })
    }

    /// Record that `kind` happened to gear `name` of `namespace`, and why.
    pub fn record(
        &self,
        namespace: &str,
        name: &str,
        kind: NodeEventKind,
        reason: &str,
        deployment: Option<u32>,
    ) {
        let reason = logs::printable(reason, MAX_REASON).into_owned();
        tracing::info!(
            gear = %format_args!("{namespace}/{name}"),
            kind = kind.as_str(),
            deployment,
            reason = %reason,
            "event"
        );
        let mut ring = gearhost_sys::lock::lock(&self.ring);
        let event = NodeEvent {
            seq: ring.next,
            time: logs::timestamp(),
            namespace: namespace.to_owned(),
            gear: name.to_owned(),
            kind,
            reason,
            deployment,
        };
        ring.next += 1;
        if let Ok(mut line) = serde_json::to_vec(&event) {
            line.push(b'\n');
            self.file.write_lines(&line);
        }
        if ring.events.len() >= RING {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // sent under the ring's lock: a follower sees events in order
        let _ = self.tx.send(event);
    }

    /// The last `n` events `keep` lets through, oldest first, and a
    /// subscription to those that come after them.
    pub fn last_and_follow(
        &self,
        n: usize,
        keep: impl Fn(&NodeEvent) -> bool,
    ) -> (Vec<NodeEvent>, tokio::sync::broadcast::Receiver<NodeEvent>) {
        let ring = gearhost_sys::lock::lock(&self.ring);
        let rx = self.tx.subscribe();
        let mut last: Vec<NodeEvent> = ring
            .events
            .iter()
            .rev()
            .filter(|e| keep(e))
            .take(n)
            .cloned()
            .collect();
        last.reverse();
        (last, rx)
    }
}

/// The event log as one gear's processes see it: what the supervisor
/// records of their crashes and restarts.
#[derive(Debug, Clone)]
pub struct GearEvents {
    log: std::sync::Arc<EventLog>,
    namespace: String,
    gear: String,
}

impl GearEvents {
    /// Events of gear `gear` in `namespace`.
    pub fn new(log: std::sync::Arc<EventLog>, namespace: &str, gear: &str) -> GearEvents {
        GearEvents {
            log,
            namespace: namespace.to_owned(),
            gear: gear.to_owned(),
        }
    }

    /// Record `kind`, saying why.
    pub fn record(&self, kind: NodeEventKind, reason: &str) {
        self.log
            .record(&self.namespace, &self.gear, kind, reason, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_kept_bounded_and_read_back_by_a_new_node() {
        let dir = tempfile::tempdir().expect("state");
        let log = EventLog::open(dir.path(), 1 << 20, 2).expect("open");
        for i in 0..(RING + 5) {
            log.record(
                "ada",
                "web",
                NodeEventKind::Crashed,
                &format!("exit {i}"),
                None,
            );
        }
        let (all, _) = log.last_and_follow(usize::MAX, |_| true);
        assert_eq!(all.len(), RING);
        assert_eq!(all[0].reason, "exit 5");
        assert_eq!(all.last().map(|e| e.seq), Some(RING as u64 + 4));
        let (two, _) = log.last_and_follow(2, |e| e.reason.ends_with('9'));
        assert_eq!(
            two.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
            ["exit 989", "exit 999"]
        );
        drop(log);
        let again = EventLog::open(dir.path(), 1 << 20, 2).expect("reopen");
        again.record("ada", "web", NodeEventKind::Started, "started", Some(3));
        let (all, _) = again.last_and_follow(usize::MAX, |_| true);
        assert_eq!(all.len(), RING);
        let last = all.last().expect("an event");
        assert_eq!(last.seq, RING as u64 + 5, "numbers go on after a restart");
        assert_eq!(last.deployment, Some(3));
    }

    #[test]
    fn a_follower_gets_what_comes_after_it_subscribed() {
        let dir = tempfile::tempdir().expect("state");
        let log = EventLog::open(dir.path(), 1 << 20, 2).expect("open");
        log.record("ada", "web", NodeEventKind::Idled, "no requests", None);
        let (before, mut rx) = log.last_and_follow(10, |_| true);
        assert_eq!(before.len(), 1);
        log.record("ada", "web", NodeEventKind::Woke, "a request came", None);
        let next = rx.try_recv().expect("the new event");
        assert_eq!(next.kind, NodeEventKind::Woke);
        assert!(rx.try_recv().is_err(), "nothing seen twice");
    }
}
