//! Replacing a serving app without dropping a request, for a deploy, a
//! rollback or a restart. When the cartridge allows it (`[deploy]
//! start-beside`, for stateless web apps) the new app starts beside the
//! serving one, on the other slot's ports; once it answers, the frontend
//! switches to it, the connections still open to the old app are waited for,
//! and only then is the old app stopped. Otherwise, or when the start beside
//! fails, the app restarts in place while the frontend holds the gear's
//! requests ([`Held`]), as it does while an idle gear wakes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gearhost_runtime::{Cartridge, HookCall};

use super::*;
use crate::frontend::WakeResult;
use crate::procs::Supervisor;
use crate::state::GearState;

/// How long a switch, a hold or an idling waits for the requests already on
/// their way to the app it is about to stop: the node's response timeout,
/// at most this.
const MOST_DRAIN: Duration = Duration::from_secs(30);

/// The gear's requests held in the frontend while its app restarts in
/// place: from [`Held::begin`] until this is dropped, new requests wait
/// (the way they wait for a wake-up) and are then passed to the restarted
/// app, or answered 503 with the reason when it did not start. Created idle
/// by an operation that may restart the gear, begun only when it does.
pub(crate) struct Held<'a> {
    node: &'a Node,
    gear: &'a Gear,
    began: AtomicBool,
    /// The hold's outcome, sent to the waiting requests at the end, when
    /// this hold installed the wait (a wake-up waiting for the gear's
    /// lock may have installed it first; its requests then wait for that).
    release: Mutex<Option<(tokio::sync::watch::Sender<WakeResult>, HoldWait)>>,
}

type HoldWait = tokio::sync::watch::Receiver<WakeResult>;

impl<'a> Held<'a> {
    /// Nothing is held yet.
    pub(crate) fn new(node: &'a Node, gear: &'a Gear) -> Held<'a> {
        Held {
            node,
            gear,
            began: AtomicBool::new(false),
            release: Mutex::new(None),
        }
    }

    /// Hold the gear's new requests, and wait (boundedly) for those already
    /// on their way to its app. Later calls do nothing.
    pub(crate) async fn begin(&self) {
        if self.began.swap(true, Ordering::SeqCst) {
            return;
        }
        let front = &self.gear.front;
        {
            let mut waking = lock(&front.waking);
            if waking.is_none() {
                let (tx, rx) = tokio::sync::watch::channel(None);
                *waking = Some(rx.clone());
                *lock(&self.release) = Some((tx, rx));
            }
        }
        front.closing.store(true, Ordering::SeqCst);
        self.node.drain_forwarding(self.gear).await;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.began.load(Ordering::SeqCst) {
            return;
        }
        let front = &self.gear.front;
        front.closing.store(false, Ordering::SeqCst);
        let Some((tx, rx)) = lock(&self.release).take() else {
            return;
        };
        let result = match self.gear.state() {
            GearState::Running => Ok(()),
            other => Err(match self.gear.record().failure {
                Some(why) => format!("it did not start again: {why}"),
                None => format!("it is {other} after its restart"),
            }),
        };
        {
            let mut waking = lock(&front.waking);
            if waking.as_ref().is_some_and(|w| w.same_channel(&rx)) {
                *waking = None;
            }
        }
        let _ = tx.send(Some(result));
    }
}

impl Node {
    /// Wait until no request is on its way to the gear's app (the caller
    /// set `closing`, so no new one starts), for at most the response
    /// timeout (30 s at most), or until the operation is cancelled.
    pub(crate) async fn drain_forwarding(&self, gear: &Gear) {
        let grace = self.config().response_timeout.min(MOST_DRAIN);
        let deadline = tokio::time::Instant::now() + grace;
        let cancel = gear.op.cancel();
        while gear.front.forwarding.load(Ordering::SeqCst) != 0
            && tokio::time::Instant::now() < deadline
            && !cancel.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Make deployment `id` the serving one of a gear that runs (a restart
    /// when it is the active one already): beside the serving app when the
    /// cartridge allows it, else in place with the requests `held`.
    pub(super) async fn replace(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        id: u32,
        held: &Held<'_>,
        progress: &Progress,
    ) -> ApiResult<()> {
        let r = g.record();
        let serving = r.state == GearState::Running && g.supervisor.any_running();
        if serving && cart.manifest().deploy.start_beside && self.http_port(&r).is_some() {
            match self.start_beside(g, cart, id, progress).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let why = format!(
                        "starting deployment {id} beside the serving app failed ({}); \
                         restarting in place instead",
                        e.message
                    );
                    g.hook_log.line("start[node]", &why);
                    let _ = progress.send(why);
                }
            }
        }
        held.begin().await;
        if g.supervisor.any_running() || g.record().state == GearState::Running {
            let _ = progress.send("stopping the serving app".into());
            self.stop_locked(g, cart).await?;
        }
        g.update(&self.config, |r| r.active = Some(id))?;
        let _ = progress.send(format!("starting deployment {id}"));
        self.start_locked(g, progress).await
    }

    /// Start deployment `id` on the slot the app does not serve from, wait
    /// until it answers there, switch the frontend to it, wait for the
    /// connections still open to the old app, then stop the old app. On
    /// failure the new app's processes are stopped and the old one serves
    /// on, untouched.
    async fn start_beside(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        id: u32,
        progress: &Progress,
    ) -> ApiResult<()> {
        let old = g.record().slot;
        let new = 1 - (old & 1);
        let begun = Instant::now();
        let _ = progress.send(format!("starting deployment {id} beside the serving app"));
        let aside = g.supervisor.set_aside();
        let started = match self.hook_in(g, cart, HookCall::Start, Some(id), new).await {
            Ok(_) => self.wait_ready(g, cart, new, progress).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            g.supervisor.stop_all(Duration::from_secs(2)).await;
            g.supervisor.forget_ended();
            g.supervisor.put_back(aside);
            return Err(e);
        }
        g.update(&self.config, |r| {
            r.active = Some(id);
            r.slot = new;
            r.state = GearState::Running;
            r.failure = None;
        })?;
        g.front.live.set(new);
        g.front.clear_pool_of(old);
        g.front.touch();
        let switched = begun.elapsed();
        let _ = progress.send(format!(
            "deployment {id} serves; letting the previous app finish its requests"
        ));
        // the connections the frontend still has open to the old app (a
        // `gear stop` or `gear destroy` cuts the wait short)
        let grace = self.config().response_timeout.min(MOST_DRAIN);
        let deadline = Instant::now() + grace;
        let cancel = g.op.cancel();
        while g.front.live.connections(old) != 0
            && Instant::now() < deadline
            && !cancel.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let open = g.front.live.connections(old);
        // the commands `gear exec` runs end with the app they were started
        // beside, as they do at a restart in place
        tokio::join!(
            Supervisor::stop_aside(aside, Duration::from_secs(10)),
            g.exec_runs.end_all("the gear's app was replaced")
        );
        g.hook_log.line(
            "start[node]",
            &format!(
                "deployment {id} started beside the previous app and took over after {} ms; \
                 the previous app was stopped{}",
                switched.as_millis(),
                if open == 0 {
                    String::new()
                } else {
                    format!(" with {open} connections still open after {grace:?}")
                }
            ),
        );
        Ok(())
    }
}
