//! Idling: a gear that gets no request through the frontend for
//! `gears.idle-timeout` (or that `gear idle` names) is stopped and marked
//! `idle`; the next request to it starts it again and is then served.
//!
//! An idle gear still wants to run (`desired` stays `running`): only its
//! processes are gone. The state is in its record, so it stays idle across
//! node restarts and a request wakes it after one too. However many requests
//! arrive while it wakes, it is started once: the first starts a wake-up
//! task and every request waits for that task's result (a client that gives
//! up does not cancel the wake-up). Gears whose cartridge speaks no HTTP (a
//! database) and gears other gears are linked to are never idled by the
//! idler: nothing through the frontend would wake them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::api::reply::NodeEventKind;
use crate::api::{ApiError, ErrorKind, GearRef, reply};
use crate::node::{ApiResult, Gear, Node, Progress, invalid};
use crate::state::{Desired, GearState};
use gearhost_sys::lock::lock;

impl Node {
    /// Wake an idle gear for a request: start it (once, however many
    /// requests wait) and wait until it answers. The error says why it did
    /// not start.
    pub async fn wake(self: &Arc<Self>, gear: &Arc<Gear>) -> Result<(), String> {
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

    /// The wake-up task: under the gear's lock, start it if it is still idle.
    async fn wake_now(&self, gear: &Arc<Gear>) -> Result<(), String> {
        let _op = gear.op.lock().await;
        match gear.state() {
            GearState::Running => return Ok(()),
            GearState::Idle => {}
            other => {
                return Err(format!(
                    "it is {} now",
                    serde_json::to_value(other)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ));
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

    /// Stop a running gear and mark it idle (its lock held). Requests that
    /// arrive meanwhile wait, and wake it again afterwards.
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
        let result = self.stop_into(gear, &cart, GearState::Idle).await;
        gear.front.closing.store(false, Ordering::SeqCst);
        if result.is_ok() {
            self.event(gear, NodeEventKind::Idled, why, None);
        }
        result
    }

    /// `gear idle NAME`: stop a running gear now and mark it idle; its next
    /// request starts it again.
    pub async fn idle(&self, gear: &GearRef) -> ApiResult<reply::GearView> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        if let Some(why) = self.not_idleable(&g) {
            return Err(ApiError::new(ErrorKind::Conflict, why));
        }
        match g.state() {
            GearState::Idle => {
                return Ok(self.unchanged(
                    &g,
                    format!("gear {} is already idle; nothing was changed", gear.name),
                ));
            }
            GearState::Running => self.idle_locked(&g, "asked by `gear idle`").await?,
            other => {
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

    /// `gear unidle NAME`: start an idle gear now, without waiting for a request.
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

    /// The idler: every so often, idle the running gears that got no
    /// request for `gears.idle-timeout` and have none in flight. Runs until
    /// the node stops; does nothing when idling is off.
    pub async fn idler(self: Arc<Self>) {
        let Some(timeout) = self.config().idle_timeout else {
            return;
        };
        let period = (timeout / 10).clamp(Duration::from_millis(250), Duration::from_secs(30));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for g in self.gears_snapshot() {
                if !self.due(&g, timeout) {
                    continue;
                }
                let node = self.clone();
                tokio::spawn(async move {
                    // a busy gear (an operation in progress) is left for the next round
                    let Ok(_op) = g.op.try_lock() else { return };
                    if !node.due(&g, timeout) {
                        return;
                    }
                    // the handshake with requests (see `GearFront::closing`):
                    // announce, then look once more for one in flight
                    g.front.closing.store(true, Ordering::SeqCst);
                    if g.front.active.load(Ordering::SeqCst) != 0 {
                        g.front.closing.store(false, Ordering::SeqCst);
                        return;
                    }
                    let why = format!(
                        "no request for {}",
                        humantime::format_duration(Duration::from_secs(
                            g.front.idle_for().as_secs()
                        ))
                    );
                    if let Err(e) = node.idle_locked(&g, &why).await {
                        tracing::warn!(gear = %g.record().name, error = %e, "could not idle a gear");
                    }
                });
            }
        }
    }

    fn due(&self, g: &Gear, timeout: Duration) -> bool {
        g.state() == GearState::Running
            && g.record().desired == Desired::Running
            && g.front.active.load(Ordering::Relaxed) == 0
            && g.front.idle_for() >= timeout
            // a command someone runs with `gear exec` is activity too
            && g.exec_runs.running() == 0
            && self.not_idleable(g).is_none()
    }
}
