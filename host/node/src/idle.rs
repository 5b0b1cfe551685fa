//! Idling, in two tiers. A gear that gets no request through the frontend
//! for `gears.freeze-after` (or that `gear idle` names) is frozen with the
//! cgroup freezer and marked `frozen`: its processes keep their memory and
//! connections, and the next request thaws them, which takes a few
//! milliseconds. One that gets none for `gears.idle-timeout` (or that `gear
//! idle --stop` names) is stopped and marked `idle`; the next request to it
//! starts it again and is then served. When the machine runs short of
//! memory (`gears.frozen-memory-floor`), frozen gears are stopped first,
//! the largest first.
//!
//! A sleeping gear still wants to run (`desired` stays `running`): only its
//! processes are frozen or gone. The state is in its record, so it stays
//! frozen or idle across node restarts (a frozen gear's processes are taken
//! back frozen) and a request wakes it after one too. However many requests
//! arrive while it wakes, it is woken once: the first starts a wake-up task
//! and every request waits for that task's result (a client that gives up
//! does not cancel the wake-up). Gears whose cartridge speaks no HTTP (a
//! database) and gears other gears are linked to are never put to sleep:
//! nothing through the frontend would wake them.
//!
//! Whatever must reach a frozen gear's processes thaws them first
//! ([`Node::awake`]): its hooks, a stop, a restart, a deploy, `gear exec`, a
//! link to it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::api::reply::NodeEventKind;
use crate::api::{ApiError, ErrorKind, GearRef, reply};
use crate::node::{ApiResult, Gear, Node, Progress, failed, invalid};
use crate::state::{Desired, GearState};
use gearhost_sys::lock::lock;

/// How long the freezer gets to freeze every process of a gear; a gear that
/// does not freeze in time (a process stuck in the kernel) is stopped instead.
const FREEZE_DEADLINE: Duration = Duration::from_secs(2);

/// How often the idler looks when nothing configured asks for more often.
const IDLER_PERIOD: Duration = Duration::from_secs(5);

impl Node {
    /// Wake a sleeping gear for a request: thaw a frozen one, start an idle
    /// one (once, however many requests wait), and wait until it answers.
    /// The error says why it did not wake.
    pub async fn wake(self: &Arc<Self>, gear: &Arc<Gear>) -> Result<(), String> {
        if self.fenced() {
            return Err(
                "this node is cut off from the cluster (etcd) and serves none of its gears until it is back"
                    .into(),
            );
        }
        let mut rx = {
            let mut waking = lock(&gear.front.waking);
            match waking.as_ref() {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    *waking = Some(rx.clone());
                    let node = self.clone();
                    let gear = gear.clone();
                    // on the main runtime: hooks do not run on frontend workers
                    self.spawn_main(async move {
                        let result = node.wake_now(&gear).await;
                        // later requests see the gear's new state, not this wake-up
                        *lock(&gear.front.waking) = None;
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(Ok(())),
            Err(_) => Err("the wake-up was interrupted".to_string()),
        }
    }

    /// The wake-up task: under the gear's lock, thaw it if it is frozen or
    /// start it if it is idle.
    async fn wake_now(&self, gear: &Arc<Gear>) -> Result<(), String> {
        let _op = gear.op.lock().await;
        match gear.state() {
            GearState::Running => return Ok(()),
            GearState::Frozen => {
                return self
                    .thaw_locked(gear, "a request came")
                    .await
                    .map_err(|e| e.message);
            }
            GearState::Idle => {}
            other => {
                return Err(format!("it is {} now", other.as_str()));
            }
        }
        let started = Instant::now();
        gear.hook_log.line(
            "wake[node]",
            "a request came for the idle gear: starting it",
        );
        let result = self.start_locked(gear, &Progress::discard()).await;
        let stats = &gear.front.stats;
        stats
            .wake_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                stats.wakeups.fetch_add(1, Ordering::Relaxed);
                let took = format!("awake after {} ms", started.elapsed().as_millis());
                gear.hook_log.line("wake[node]", &took);
                self.event(gear, NodeEventKind::Woke, &took, None);
                Ok(())
            }
            Err(e) => {
                stats.wake_failures.fetch_add(1, Ordering::Relaxed);
                gear.hook_log
                    .line("wake[node]", &format!("did not wake: {}", e.message));
                self.event(gear, NodeEventKind::WakeFailed, &e.message, None);
                Err(e.message)
            }
        }
    }

    /// Why the idler must leave this gear alone, if it must.
    fn not_idleable(&self, gear: &Gear) -> Option<String> {
        let r = gear.record();
        if self.http_port(&r).is_none() {
            return Some(format!(
                "gear {} has no HTTP endpoint, so no request could wake it; stop it with `gear stop` instead",
                r.name
            ));
        }
        let users = self.linked_from(&r.id);
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
            return Some(format!(
                "gear {} is linked from {}, whose connections would not wake it; unlink them or stop it with `gear stop`",
                r.name,
                names.join(", ")
            ));
        }
        None
    }

    /// Stop a running (or frozen) gear and mark it idle (its lock held).
    /// Requests that arrive meanwhile wait, and wake it again afterwards.
    async fn idle_locked(&self, gear: &Arc<Gear>, why: &str) -> ApiResult<()> {
        let cart = self.cartridge(&gear.record().cartridge)?;
        gear.hook_log
            .line("idle[node]", &format!("idling the gear: {why}"));
        gear.front.closing.store(true, Ordering::SeqCst);
        // requests already on their way to the app finish first (new ones
        // wait for the wake-up after the idling); a stuck one is cut after
        // the response timeout, at most 30 s (or until a `gear stop` or `gear
        // destroy` comes for the gear)
        self.drain_forwarding(gear).await;
        // a frozen gear is thawed on the way (`stop_into`): its stop hook and
        // signals must reach its processes
        let result = self.stop_into(gear, &cart, GearState::Idle).await;
        gear.front.closing.store(false, Ordering::SeqCst);
        if result.is_ok() {
            self.event(gear, NodeEventKind::Idled, why, None);
        }
        result
    }

    /// Freeze a running gear and mark it frozen (its lock held, `closing`
    /// announced by the caller and no request in flight). A gear that cannot
    /// be frozen is left running: the error says why.
    async fn freeze_locked(&self, gear: &Arc<Gear>, why: &str) -> ApiResult<()> {
        let subtree = self.config().cgroup_subtree.clone();
        let id = gear.record().id;
        let began = Instant::now();
        let frozen = tokio::task::spawn_blocking(move || {
            gearhost_sandbox::cgroup::freeze_gear(&subtree, &id, FREEZE_DEADLINE)
        })
        .await
        .map_err(|e| failed(format!("the freeze failed: {e}")))?;
        if let Err(e) = frozen {
            gear.hook_log
                .line("freeze[node]", &format!("could not freeze the gear: {e}"));
            return Err(failed(format!("could not freeze the gear: {e}")));
        }
        gear.frozen.store(true, Ordering::SeqCst);
        if let Err(e) = gear.update(self.config(), |r| r.state = GearState::Frozen) {
            // the record says running: it must not sleep unnoticed
            let _ = self.thaw_cgroup(gear).await;
            return Err(e);
        }
        let took = format!("{why}; frozen in {} ms", began.elapsed().as_millis());
        gear.hook_log.line("freeze[node]", &took);
        self.event(gear, NodeEventKind::Froze, &took, None);
        Ok(())
    }

    /// Thaw the gear's cgroup (whatever its state says) and forget that it was frozen.
    pub(crate) async fn thaw_cgroup(&self, gear: &Gear) -> ApiResult<()> {
        let subtree = self.config().cgroup_subtree.clone();
        let id = gear.record().id;
        tokio::task::spawn_blocking(move || gearhost_sandbox::cgroup::thaw_gear(&subtree, &id))
            .await
            .map_err(|e| failed(format!("the thaw failed: {e}")))?
            .map_err(|e| failed(format!("could not thaw the gear: {e}")))?;
        gear.frozen.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Thaw a frozen gear and mark it running again (its lock held).
    async fn thaw_locked(&self, gear: &Arc<Gear>, why: &str) -> ApiResult<()> {
        let began = Instant::now();
        let stats = &gear.front.stats;
        if let Err(e) = self.thaw_cgroup(gear).await {
            stats.wake_failures.fetch_add(1, Ordering::Relaxed);
            self.event(gear, NodeEventKind::WakeFailed, &e.message, None);
            return Err(e);
        }
        if gear.state() == GearState::Frozen {
            gear.update(self.config(), |r| r.state = GearState::Running)?;
        }
        // a thaw counts as activity for the idler
        gear.front.touch();
        let took = began.elapsed();
        stats.thaws.fetch_add(1, Ordering::Relaxed);
        stats
            .thaw_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let said = format!("{why}; thawed in {} µs", took.as_micros());
        gear.hook_log.line("wake[node]", &said);
        self.event(gear, NodeEventKind::Thawed, &said, None);
        Ok(())
    }

    /// Thaw the gear if it is frozen, before something reaches its
    /// processes (a hook, a stop, a restart, a deploy, `gear exec`, a link).
    /// Its lock is held, so no freeze is on its way.
    pub(crate) async fn awake(&self, gear: &Arc<Gear>, why: &str) -> ApiResult<()> {
        if !gear.frozen.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.thaw_locked(gear, why).await
    }

    /// `gear idle NAME`: freeze a running gear now (its next request thaws
    /// it); with `stop` (`gear idle --stop NAME`), stop a running or frozen
    /// gear now and mark it idle (its next request starts it again). A gear
    /// that cannot be frozen is stopped instead, and the answer says why.
    pub async fn idle(&self, gear: &GearRef, stop: bool) -> ApiResult<reply::GearView> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        if let Some(why) = self.not_idleable(&g) {
            return Err(ApiError::new(ErrorKind::Conflict, why));
        }
        match (g.state(), stop) {
            (GearState::Idle, _) => {
                return Ok(self.unchanged(
                    &g,
                    format!("gear {} is already idle; nothing was changed", gear.name),
                ));
            }
            (GearState::Frozen, false) => {
                return Ok(self.unchanged(
                    &g,
                    format!(
                        "gear {} is already frozen; nothing was changed (`gear idle --stop {}` stops it)",
                        gear.name, gear.name
                    ),
                ));
            }
            (GearState::Running | GearState::Frozen, true) => {
                self.idle_locked(&g, "asked by `gear idle --stop`").await?;
            }
            (GearState::Running, false) => {
                g.front.closing.store(true, Ordering::SeqCst);
                // requests on their way finish first, as for a stop; the
                // commands `gear exec` runs end, as they would (frozen, their
                // callers would wait on them for nothing)
                self.drain_forwarding(&g).await;
                g.exec_runs.end_all("the gear is frozen").await;
                let frozen = self.freeze_locked(&g, "asked by `gear idle`").await;
                g.front.closing.store(false, Ordering::SeqCst);
                if let Err(e) = frozen {
                    self.idle_locked(&g, "asked by `gear idle`; it could not be frozen")
                        .await?;
                    return Ok(reply::GearView {
                        note: Some(format!("{}; it was stopped instead", e.message)),
                        ..self.gear_view(&g)
                    });
                }
            }
            (other, _) => {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "gear {} is {}, not running; only a running gear can be idled",
                        gear.name, other
                    ),
                ));
            }
        }
        Ok(self.gear_view(&g))
    }

    /// `gear unidle NAME`: start an idle gear, or thaw a frozen one, now,
    /// without waiting for a request.
    pub async fn unidle(&self, gear: &GearRef, progress: &Progress) -> ApiResult<reply::GearView> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let _watch = g.hook_log.watch(progress);
        match g.state() {
            GearState::Running => {
                return Ok(self.unchanged(
                    &g,
                    format!("gear {} is already running; nothing was changed", gear.name),
                ));
            }
            GearState::Frozen => self.thaw_locked(&g, "asked by `gear unidle`").await?,
            GearState::Idle => self.start_locked(&g, progress).await?,
            other => {
                return Err(invalid(format!(
                    "gear {} is {}, not idle; start it with `gear start {}`",
                    gear.name, other, gear.name
                )));
            }
        }
        Ok(self.gear_view(&g))
    }

    /// The idler: every so often, freeze the running gears that got no
    /// request for `gears.freeze-after`, stop the running or frozen ones that
    /// got none for `gears.idle-timeout` (none in flight either way), and
    /// stop frozen gears while the machine's available memory is below
    /// `gears.frozen-memory-floor`. Runs until the node stops.
    pub async fn idler(self: Arc<Self>) {
        let stop_after = self.config().idle_timeout;
        let freeze_after = self.config().freeze_after;
        let period = [stop_after, freeze_after]
            .into_iter()
            .flatten()
            .min()
            .map_or(IDLER_PERIOD, |t| {
                (t / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
            })
            .min(IDLER_PERIOD);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let relieving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            tick.tick().await;
            self.relieve_memory(&relieving);
            for g in self.gears_snapshot() {
                let Some(step) = self.due(&g) else {
                    continue;
                };
                let node = self.clone();
                tokio::spawn(async move {
                    // a busy gear (an operation in progress) is left for the next round
                    let Ok(_op) = g.op.try_lock() else { return };
                    if node.due(&g) != Some(step) {
                        return;
                    }
                    // the handshake with requests and commands (see
                    // `GearFront::closing`): announce, then look once more
                    // for one in flight
                    g.front.closing.store(true, Ordering::SeqCst);
                    if g.front.active.load(Ordering::SeqCst) != 0 || g.exec_runs.running() != 0 {
                        g.front.closing.store(false, Ordering::SeqCst);
                        return;
                    }
                    let why = format!(
                        "no request for {}",
                        humantime::format_duration(Duration::from_secs(
                            g.front.idle_for().as_secs()
                        ))
                    );
                    let done = match step {
                        Sleep::Freeze => {
                            let done = node.freeze_locked(&g, &why).await;
                            g.front.closing.store(false, Ordering::SeqCst);
                            if done.is_err() {
                                // not frozen: stopped instead, as without freezing
                                node.idle_locked(&g, &format!("{why}; it could not be frozen"))
                                    .await
                            } else {
                                done
                            }
                        }
                        Sleep::Stop => node.idle_locked(&g, &why).await,
                    };
                    if let Err(e) = done {
                        tracing::warn!(gear = %g.record().name, error = %e, "could not put a gear to sleep");
                    }
                });
            }
        }
    }

    /// What the idler is to do with the gear now, if anything. The cheap
    /// looks come first: most gears are left alone on most rounds.
    fn due(&self, g: &Gear) -> Option<Sleep> {
        let state = g.state();
        if !matches!(state, GearState::Running | GearState::Frozen)
            || g.front.active.load(Ordering::Relaxed) != 0
            // a command someone runs with `gear exec` is activity too
            || g.exec_runs.running() != 0
        {
            return None;
        }
        let idle = g.front.idle_for();
        let config = self.config();
        let step = if config.idle_timeout.is_some_and(|t| idle >= t) {
            Sleep::Stop
        } else if state == GearState::Running && config.freeze_after.is_some_and(|t| idle >= t) {
            Sleep::Freeze
        } else {
            return None;
        };
        (g.record().desired == Desired::Running && self.not_idleable(g).is_none()).then_some(step)
    }

    /// Under memory pressure (available memory below the floor), stop frozen
    /// gears, the largest first, until there is enough again. One pass at a
    /// time: a pass still stopping gears when the next tick comes is left to
    /// finish.
    fn relieve_memory(self: &Arc<Self>, relieving: &Arc<std::sync::atomic::AtomicBool>) {
        let Some(floor) = self.config().frozen_memory_floor else {
            return;
        };
        let frozen: Vec<Arc<Gear>> = self
            .gears_snapshot()
            .into_iter()
            .filter(|g| g.state() == GearState::Frozen)
            .collect();
        if frozen.is_empty() || relieving.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = self.clone();
        let relieving = relieving.clone();
        tokio::spawn(async move {
            node.stop_frozen_for_memory(floor, frozen).await;
            relieving.store(false, Ordering::SeqCst);
        });
    }

    async fn stop_frozen_for_memory(&self, floor: u64, frozen: Vec<Arc<Gear>>) {
        let available = || tokio::task::spawn_blocking(gearhost_sandbox::cgroup::memory_available);
        let Ok(Some(now)) = available().await else {
            return;
        };
        if now >= floor {
            return;
        }
        let subtree = self.config().cgroup_subtree.clone();
        let mut by_size = {
            let subtree = subtree.clone();
            tokio::task::spawn_blocking(move || {
                frozen
                    .into_iter()
                    .map(|g| {
                        let held = gearhost_sandbox::cgroup::gear_memory(&subtree, &g.record().id)
                            .unwrap_or(0);
                        (held, g)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default()
        };
        by_size.sort_by_key(|(held, _)| std::cmp::Reverse(*held));
        let mut available_now = now;
        for (held, g) in by_size {
            if available_now >= floor {
                break;
            }
            let _op = g.op.lock().await;
            if g.state() != GearState::Frozen {
                continue;
            }
            let why = format!(
                "the machine has {} of memory available, below gears.frozen-memory-floor ({}); the gear held {} frozen",
                gearhost_runtime::manifest::format_size(available_now),
                gearhost_runtime::manifest::format_size(floor),
                gearhost_runtime::manifest::format_size(held)
            );
            tracing::info!(gear = %g.record().name, "{why}: stopping it");
            match self.idle_locked(&g, &why).await {
                Ok(()) => {
                    self.frozen_stopped_for_memory
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(gear = %g.record().name, error = %e, "could not stop a frozen gear under memory pressure");
                }
            }
            match available().await {
                Ok(Some(n)) => available_now = n,
                _ => return,
            }
        }
    }

    /// The memory frozen gears hold, in bytes, and how many there are.
    pub fn frozen_memory(&self) -> (u64, usize) {
        let subtree = &self.config().cgroup_subtree;
        self.gears_snapshot()
            .iter()
            .filter(|g| g.state() == GearState::Frozen)
            .fold((0, 0), |(bytes, n), g| {
                let held = gearhost_sandbox::cgroup::gear_memory(subtree, &g.record().id);
                (bytes + held.unwrap_or(0), n + 1)
            })
    }
}

/// What the idler does with a gear that got no request for long enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sleep {
    /// Freeze it (`gears.freeze-after`).
    Freeze,
    /// Stop it (`gears.idle-timeout`).
    Stop,
}
