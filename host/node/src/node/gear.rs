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
