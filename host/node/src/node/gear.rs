//! One gear, live: its record (saved on every change), its state readable
//! without a lock, its logs, supervisor, frontend side and operation lock.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::config::NodeConfig;
use crate::frontend::GearFront;
use crate::logs::LogFile;
use crate::procs::Supervisor;
use crate::state::{self, GearPaths, GearRecord, GearState};

/// One gear, live.
#[derive(Debug)]
pub struct Gear {
    pub(super) record: Mutex<GearRecord>,
    pub(crate) op: crate::oplock::OpLock,
    pub(crate) paths: GearPaths,
    pub(super) supervisor: Supervisor,
    pub(super) app_log: LogFile,
    pub(crate) hook_log: LogFile,
    pub(super) execs: AtomicU32,
    /// The `gear exec` commands running, ended when the gear stops.
    pub(crate) exec_runs: super::lifecycle::ExecRuns,
    /// The record's state, readable without the record's lock (the frontend
    /// reads it on every request).
    pub(super) state: AtomicU8,
    /// Whether the gear's cgroup was frozen by the node and not thawed since
    /// (its state is `frozen`, or was until an operation began thawing it).
    pub(crate) frozen: AtomicBool,
    /// The frontend's side of the gear: connection pool, counters, access
    /// log, activity, wake-up.
    pub(crate) front: GearFront,
    /// Connections the gear holds through the node (doors, links).
    pub(crate) conns: Arc<crate::conns::GearConnections>,
    /// The deploy in progress, if one is: its deployment and the flag that
    /// cancels it (`gear deploy --cancel`).
    pub(crate) deploying: Mutex<Option<(u32, gearhost_runtime::Cancel)>>,
    /// Closed from the gear's load until the node's resume has taken its
    /// processes back (or started it again): what `status` says before
    /// then would not be what runs.
    pub(crate) resume_gate: ResumeGate,
}

/// Whether a gear the node found on disk has been resumed yet, and a way to
/// wait for it.
#[derive(Debug, Default)]
pub(crate) struct ResumeGate {
    pending: AtomicBool,
    opened: tokio::sync::Notify,
}

impl ResumeGate {
    /// The gear waits for the node's resume.
    pub(crate) fn close(&self) {
        self.pending.store(true, Ordering::SeqCst);
    }

    /// The resume is done with the gear.
    pub(crate) fn open(&self) {
        self.pending.store(false, Ordering::SeqCst);
        self.opened.notify_waiters();
    }

    /// Waits (at most `limit`) until the gear has been resumed; at once for
    /// a gear that needs no resume.
    pub(crate) async fn wait(&self, limit: std::time::Duration) {
        let opened = self.opened.notified();
        tokio::pin!(opened);
        // registered before the flag is read, so an `open` in between wakes it
        opened.as_mut().enable();
        if !self.pending.load(Ordering::SeqCst) {
            return;
        }
        let _ = tokio::time::timeout(limit, opened).await;
    }
}

const STATES: [GearState; 9] = [
    GearState::New,
    GearState::Building,
    GearState::Starting,
    GearState::Running,
    GearState::Stopping,
    GearState::Stopped,
    GearState::Failed,
    GearState::Idle,
    GearState::Frozen,
];

fn state_index(state: GearState) -> u8 {
    STATES.iter().position(|s| *s == state).unwrap_or(0) as u8
}

impl Gear {
    pub(super) fn new(config: &NodeConfig, record: GearRecord) -> Gear {
        let paths = GearPaths::new(&config.gears_dir(), &record.id);
        let front = GearFront::new(
            &paths.logs(),
            config.log_max_bytes,
            config.log_keep,
            config.frontend_workers,
        );
        front.live.set(record.slot);
        Gear {
            app_log: LogFile::new(
                paths.logs().join("app.log"),
                config.log_max_bytes,
                config.log_keep,
            ),
            hook_log: LogFile::new(
                paths.logs().join("hooks.log"),
                config.log_max_bytes,
                config.log_keep,
            ),
            front,
            state: AtomicU8::new(state_index(record.state)),
            frozen: AtomicBool::new(false),
            record: Mutex::new(record),
            op: crate::oplock::OpLock::default(),
            supervisor: Supervisor::recording(paths.procs()),
            paths,
            execs: AtomicU32::new(0),
            exec_runs: Default::default(),
            conns: Arc::default(),
            deploying: Mutex::new(None),
            resume_gate: ResumeGate::default(),
        }
    }

    /// The gear's last known state.
    pub fn state(&self) -> GearState {
        STATES[usize::from(self.state.load(Ordering::Relaxed)) % STATES.len()]
    }

    /// A copy of the record.
    pub fn record(&self) -> GearRecord {
        lock(&self.record).clone()
    }

    pub(crate) fn update(
        &self,
        config: &NodeConfig,
        f: impl FnOnce(&mut GearRecord),
    ) -> ApiResult<GearRecord> {
        let mut record = lock(&self.record);
        let mut next = record.clone();
        f(&mut next);
        state::save_gear(&config.gears_dir(), &next).map_err(internal)?;
        self.state.store(state_index(next.state), Ordering::Relaxed);
        *record = next.clone();
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::ResumeGate;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_resume_gate_holds_until_opened_or_the_limit() {
        let gate = Arc::new(ResumeGate::default());
        // a gear that needs no resume: no wait
        let t = Instant::now();
        gate.wait(Duration::from_secs(5)).await;
        assert!(t.elapsed() < Duration::from_secs(1));
        // closed: the wait ends when the resume opens it
        gate.close();
        let opener = {
            let gate = gate.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                gate.open();
            })
        };
        let t = Instant::now();
        gate.wait(Duration::from_secs(5)).await;
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        opener.await.expect("opener");
        // a resume that never ends holds a reader no longer than the limit
        gate.close();
        let t = Instant::now();
        gate.wait(Duration::from_millis(300)).await;
        assert!(t.elapsed() >= Duration::from_millis(250));
    }
}
