//! Running a gear: start (and wait until it is ready), stop, restart,
//! status, the control hook, `exec` into it, and its logs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gearhost_runtime::{Cartridge, ExitStatus, HookCall};

use super::*;
use crate::api::GearRef;
use crate::api::reply;
use crate::procs::{self, GEAR_PATH, GearSandbox};
use crate::state::{Desired, GearState};

impl Node {
    /// Start the gear. Starting a running gear changes nothing and says so.
    pub async fn start(&self, gear: &GearRef, progress: &Progress) -> ApiResult<reply::GearView> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let _watch = g.hook_log.watch(progress);
        // a frozen gear is running once thawed
        self.awake(&g, "asked by `gear start`").await?;
        let r = g.record();
        if r.state == GearState::Running
            && g.supervisor.any_running()
            && g.supervisor.failed().is_none()
        {
            return Ok(self.unchanged(
                &g,
                format!(
                    "gear {} is already running; nothing was changed (`gear restart {}` restarts it)",
                    r.name, r.name
                ),
            ));
        }
        self.start_locked(&g, progress).await?;
        Ok(self.gear_view(&g))
    }

    pub(crate) async fn start_locked(&self, g: &Arc<Gear>, progress: &Progress) -> ApiResult<()> {
        // no new processes beside frozen ones
        self.awake(g, "the gear is started").await?;
        let r = g.record();
        if self.fenced() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                "this node is cut off from the cluster (etcd): it starts no gear until it is back",
            ));
        }
        // never two live copies: one the cluster placed on another node stays stopped
        if let Some(owner) = self.placed_elsewhere(&r.id) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "the cluster holds gear {} on node {owner}; this node's copy is not started (`gear destroy` removes it here)",
                    r.name
                ),
            ));
        }
        let cart = self.cartridge(&r.cartridge)?;
        if r.active.is_none() && cart.manifest().deploy.required {
            return Err(invalid(format!(
                "gear {} has nothing deployed; run `gear deploy {} DIR` first",
                r.name, r.name
            )));
        }
        // nothing of the gear runs: the app starts on its declared ports
        g.update(&self.config, |r| {
            r.desired = Desired::Running;
            r.state = GearState::Starting;
            r.failure = None;
            r.slot = 0;
        })?;
        g.front.live.set(0);
        g.supervisor.forget_ended();
        // from its first process on, the gear reaches other gears by their names
        crate::frontend::open_door(self, g).await;
        let _ = progress.send("running the start hook".into());
        let started = match self.hook(g, &cart, HookCall::Start).await {
            Ok(_) => self.wait_ready(g, &cart, 0, progress).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(()) => {
                g.update(&self.config, |r| r.state = GearState::Running)?;
                // a fresh start counts as activity for the idler
                g.front.touch();
                Ok(())
            }
            Err(e) => {
                g.supervisor.stop_all(Duration::from_secs(2)).await;
                g.front.close_door().await;
                g.update(&self.config, |r| {
                    r.state = GearState::Failed;
                    r.failure = Some(e.message.clone());
                })?;
                Err(e)
            }
        }
    }

    /// After the start hook: wait until the app started in `slot` answers on
    /// its primary port there (the gear is not "running" before a request
    /// can be served), failing early when its processes die.
    pub(super) async fn wait_ready(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        slot: u8,
        progress: &Progress,
    ) -> ApiResult<()> {
        // a deployment that names its port (an image's) is waited for there
        let declared = cart.manifest().primary_endpoint().map(|e| e.port_in(slot));
        let Some(port) = named_port(&g.record()).or(declared) else {
            return Ok(());
        };
        let _ = progress.send(format!("waiting for the app to answer on port {port}"));
        let cancel = g.op.cancel();
        let netns = g.paths.netns();
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        // a wake-up from idle waits on this, and most apps answer within a few
        // hundred milliseconds: look every 4 ms for the first quarter second (a
        // look is one refused connect, well under 0.1 ms), so such an app is
        // seen at most 4 ms after it listens, then less and less often (many
        // gears start at once when the node starts)
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(4);
        loop {
            let ns = netns.clone();
            let answered = tokio::task::spawn_blocking(move || {
                gearhost_sandbox::netns::connect(
                    &ns,
                    ([127, 0, 0, 1], port).into(),
                    Duration::from_millis(500),
                )
                .is_ok()
            })
            .await
            .unwrap_or(false);
            if answered {
                return Ok(());
            }
            // a process that ended before the app answered (even one the
            // supervisor would restart) means the app crashes on start:
            // say so now rather than at the timeout
            if let Some(p) = g
                .supervisor
                .processes()
                .into_iter()
                .find(|p| p.restarts > 0 || (p.last_exit.is_some() && p.pid.is_none()))
            {
                let how = match p.last_exit {
                    Some(ExitStatus::Exited(code)) => format!("exited with code {code}"),
                    Some(ExitStatus::Signaled(sig)) => format!("was killed by signal {sig}"),
                    None => "ended".to_string(),
                };
                return Err(failed(format!(
                    "the app's process `{}` {how} before it answered on port {port}; \
                     its output is in `gear logs {}`",
                    p.name,
                    g.record().name
                )));
            }
            if !g.supervisor.any_running() {
                return Err(failed(format!(
                    "the app's processes ended before it answered on port {port}; see `gear logs {}`",
                    g.record().name
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(failed(format!(
                    "the app did not answer on port {port} within {}; check that it listens on 127.0.0.1:{port} or 0.0.0.0:{port} (see `gear logs {}`)",
                    humantime::format_duration(self.config.start_timeout),
                    g.record().name
                )));
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => {
                    return Err(failed(format!(
                        "the start was stopped before the app answered on port {port}: {}",
                        cancel.reason().unwrap_or_default()
                    )));
                }
            }
            if started.elapsed() >= Duration::from_millis(250) {
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }

    /// Stop the gear. Stopping a stopped gear changes nothing and says so.
    pub async fn stop(&self, gear: &GearRef) -> ApiResult<reply::GearView> {
        let g = self.find(gear)?;
        // an operation stuck on what the gear did gives way (its hooks are cancelled)
        let _op = g.op.preempt("`gear stop` was asked for").await;
        let r = g.record();
        // `gear exec` commands do not outlive a stop, even of a stopped gear
        g.exec_runs.end_all("`gear stop` was asked for").await;
        if matches!(r.state, GearState::Stopped | GearState::New) && !g.supervisor.any_running() {
            if r.desired != Desired::Stopped {
                g.update(&self.config, |r| r.desired = Desired::Stopped)?;
            }
            return Ok(self.unchanged(
                &g,
                format!("gear {} is already stopped; nothing was changed", r.name),
            ));
        }
        let cart = self.cartridge(&r.cartridge)?;
        g.update(&self.config, |r| r.desired = Desired::Stopped)?;
        self.stop_locked(&g, &cart).await?;
        Ok(self.gear_view(&g))
    }

    pub(super) async fn stop_locked(&self, g: &Arc<Gear>, cart: &Cartridge) -> ApiResult<()> {
        self.stop_into(g, cart, GearState::Stopped).await
    }

    /// Run the stop hook, stop whatever it left running, close the
    /// frontend's connections to the gear and leave it in `state`
    /// (`stopped`, or `idle` for the idler).
    pub(crate) async fn stop_into(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        state: GearState,
    ) -> ApiResult<()> {
        // the stop hook and the signals must reach the processes: a frozen
        // gear is thawed first (on cgroup v1 even SIGKILL waits for the thaw)
        self.awake(g, "the gear is stopped").await?;
        g.update(&self.config, |r| r.state = GearState::Stopping)?;
        let hook = self.hook(g, cart, HookCall::Stop).await;
        // whatever the hook left running is stopped by the node, and so
        // are the commands `gear exec` runs
        let why = match state {
            GearState::Idle => "the gear is idled",
            _ => "the gear is stopped",
        };
        tokio::join!(
            g.supervisor.stop_all(Duration::from_secs(10)),
            g.exec_runs.end_all(why)
        );
        // nothing of the gear runs: it holds no door in the node
        g.front.close_door().await;
        g.front.clear_pool();
        g.update(&self.config, |r| r.state = state)?;
        hook.map(|_| ())
    }

    /// Stop, then start: a running gear's app is replaced without dropping
    /// a request (see [`super::replace`]).
    pub async fn restart(&self, gear: &GearRef, progress: &Progress) -> ApiResult<reply::GearView> {
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let _watch = g.hook_log.watch(progress);
        // a frozen gear is thawed and then restarted as a running one
        self.awake(&g, "asked by `gear restart`").await?;
        let r = g.record();
        let cart = self.cartridge(&r.cartridge)?;
        let held = Held::new(self, &g);
        match r.active {
            Some(active) if r.state == GearState::Running => {
                self.replace(&g, &cart, active, &held, progress).await?;
            }
            _ => {
                if r.state == GearState::Running || g.supervisor.any_running() {
                    held.begin().await;
                }
                self.stop_locked(&g, &cart).await?;
                self.start_locked(&g, progress).await?;
            }
        }
        drop(held);
        Ok(self.gear_view(&g))
    }

    /// State and processes (a failed process marks the gear failed).
    pub fn status(&self, gear: &GearRef) -> ApiResult<reply::GearView> {
        let g = self.find(gear)?;
        if let Some(name) = g.supervisor.failed()
            && g.record().state == GearState::Running
        {
            let _ = g.update(&self.config, |r| {
                r.state = GearState::Failed;
                r.failure = Some(format!(
                    "process {name} kept crashing; see `gear logs {}`",
                    r.name
                ));
            });
        }
        Ok(self.gear_view(&g))
    }

    /// The cartridge's control hook.
    pub async fn control(
        &self,
        gear: &GearRef,
        action: &str,
        args: Vec<String>,
    ) -> ApiResult<reply::ControlOutput> {
        if action.is_empty() {
            return Err(invalid("the action is empty; try `status`"));
        }
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        let cart = self.cartridge(&g.record().cartridge)?;
        let out = self
            .hook(
                &g,
                &cart,
                HookCall::Control {
                    action: action.into(),
                    args,
                },
            )
            .await?;
        Ok(reply::ControlOutput {
            output: bounded_output(out),
        })
    }

    /// Paths of a gear's logs, for `gear logs`.
    pub fn log_path(&self, gear: &GearRef, which: LogKind) -> ApiResult<PathBuf> {
        let g = self.find(gear)?;
        Ok(match which {
            LogKind::App => g.app_log.path(),
            LogKind::Hooks => g.hook_log.path(),
            LogKind::Access => {
                // what the frontend buffered is on disk before it is read
                g.front.access.flush();
                g.front.access.path()
            }
        })
    }

    /// Run `argv` in the gear's sandbox attached to the caller's stdio, with the environment
    /// the app's processes get (its primary process's variables included); `resized` gets a
    /// byte whenever the caller's terminal changes size. The command ends when `gone` does
    /// (the caller went away) or the gear is stopped, idled or destroyed.
    pub async fn exec(
        &self,
        gear: &GearRef,
        argv: Vec<String>,
        fds: [std::fs::File; 3],
        resized: Option<std::fs::File>,
        gone: impl std::future::Future<Output = ()>,
    ) -> ApiResult<reply::ExecEnd> {
        if argv.is_empty() {
            return Err(invalid("give the command to run after `--`"));
        }
        let g = self.find(gear)?;
        // counted first: the idler freezes no gear a command runs in
        let run = g.exec_runs.enter();
        // a frozen gear (or one being frozen or stopped right now) is waited
        // for and thawed: the command would be frozen with it
        if g.frozen.load(Ordering::SeqCst)
            || g.front.closing.load(Ordering::SeqCst)
            || g.state() == GearState::Frozen
        {
            let _op = g.op.lock().await;
            self.awake(&g, "asked by `gear exec`").await?;
        }
        let sandbox = self.sandbox(&g, g.record().active);
        let leaf = gearhost_sandbox::cgroup::exec_leaf(
            &g.record().id,
            g.execs.fetch_add(1, Ordering::Relaxed),
        );
        let end = async {
            tokio::select! {
                () = gone => "its caller went away".to_string(),
                why = run.ended() => why,
            }
        };
        let status = procs::exec_attached(&sandbox, &leaf, argv, fds, resized, end).await;
        // a command counts as activity for the idler until it ends
        g.front.touch();
        let status = status.map_err(|e| failed(e.to_string()))?;
        Ok(match status {
            ExitStatus::Exited(c) => reply::ExecEnd::Exit(c),
            ExitStatus::Signaled(s) => reply::ExecEnd::Signal(s),
        })
    }

    pub(super) fn sandbox(&self, g: &Gear, repo: Option<u32>) -> GearSandbox {
        self.sandbox_in(g, repo, g.record().slot)
    }

    /// The sandbox of the app started in `slot`.
    pub(super) fn sandbox_in(&self, g: &Gear, repo: Option<u32>, slot: u8) -> GearSandbox {
        let r = g.record();
        let mut layers = self.layers_in(&r, slot);
        let image = repo.and_then(|id| Some((id, self.image_deployment_of(g, id)?)));
        let (root, http_port) = match &image {
            Some((id, image)) => {
                // what the image's programs are found by
                let path = super::image_gears::image_path(&image.env).unwrap_or(GEAR_PATH);
                layers.system.insert("PATH".into(), path.into());
                if let Some(port) = image.port {
                    layers.system.insert("GEAR_PORT".into(), port.to_string());
                }
                let root = match self.image_root(g, *id) {
                    Ok(root) => root,
                    Err(e) => {
                        tracing::warn!(gear = %r.label(), deployment = id, error = %e, "no root for the gear");
                        g.hook_log.line("node", &e);
                        // the start fails, saying it is not mounted
                        Some(self.root_mount_point(g, *id))
                    }
                };
                (root, image.port)
            }
            None => (None, None),
        };
        GearSandbox {
            id: r.id.clone(),
            name: r.name.clone(),
            uid: r.uid,
            home: g.paths.home(),
            netns: g.paths.netns(),
            repo: repo.map(|id| g.paths.deployment(id)),
            root,
            http_port,
            layers,
            config: self.config.clone(),
        }
    }
}

/// The `gear exec` commands running in a gear, so that stopping it ends them.
#[derive(Debug)]
pub(crate) struct ExecRuns {
    /// Bumped, with the reason, to end every command running.
    ends: tokio::sync::watch::Sender<(u64, String)>,
    /// How many run.
    running: tokio::sync::watch::Sender<usize>,
}

impl Default for ExecRuns {
    fn default() -> Self {
        ExecRuns {
            ends: tokio::sync::watch::channel((0, String::new())).0,
            running: tokio::sync::watch::channel(0).0,
        }
    }
}

/// One command of [`ExecRuns`], counted until it is dropped.
pub(crate) struct ExecRun<'a> {
    runs: &'a ExecRuns,
    ends: tokio::sync::watch::Receiver<(u64, String)>,
}

impl ExecRuns {
    /// A command starts.
    pub(crate) fn enter(&self) -> ExecRun<'_> {
        self.running.send_modify(|n| *n += 1);
        ExecRun {
            runs: self,
            ends: self.ends.subscribe(),
        }
    }

    /// How many commands run.
    pub(crate) fn running(&self) -> usize {
        *self.running.borrow()
    }

    /// End every command running for `why`, and wait until none is left
    /// (each has [`procs::EXEC_GRACE`] after `SIGTERM`, then is killed).
    pub(crate) async fn end_all(&self, why: &str) {
        if *self.running.borrow() == 0 {
            return;
        }
        self.ends.send_modify(|(n, reason)| {
            *n += 1;
            *reason = why.to_string();
        });
        let mut running = self.running.subscribe();
        let wait = running.wait_for(|n| *n == 0);
        // a command started after this call is not waited for long
        let _ = tokio::time::timeout(procs::EXEC_GRACE + Duration::from_secs(10), wait).await;
    }
}

impl ExecRun<'_> {
    /// Resolves, with the reason, once the gear's commands must end.
    pub(crate) async fn ended(&self) -> String {
        let mut ends = self.ends.clone();
        match ends.changed().await {
            Ok(()) => ends.borrow().1.clone(),
            // the gear is gone
            Err(_) => "the gear was destroyed".to_string(),
        }
    }
}

impl Drop for ExecRun<'_> {
    fn drop(&mut self) {
        self.runs.running.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The most of a control hook's output the node passes on.
pub(super) const MAX_CONTROL_OUTPUT: usize = 1 << 20;

/// A control hook's output, cut at [`MAX_CONTROL_OUTPUT`] bytes (on a
/// character boundary, the cut marked): what a hook says about a gear may
/// come from the gear's files.
pub(super) fn bounded_output(mut out: String) -> String {
    if out.len() > MAX_CONTROL_OUTPUT {
        let mut end = MAX_CONTROL_OUTPUT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        let dropped = out.len() - end;
        out.truncate(end);
        out.push_str(&format!("\n[output cut: {dropped} more bytes]\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_output_is_cut_on_a_character_boundary() {
        assert_eq!(bounded_output("short".into()), "short");
        let long = "é".repeat(MAX_CONTROL_OUTPUT);
        let cut = bounded_output(long.clone());
        assert!(cut.len() < MAX_CONTROL_OUTPUT + 64, "{}", cut.len());
        let kept = cut.split('\n').next().expect("text");
        assert!(long.starts_with(kept) && kept.len() == MAX_CONTROL_OUTPUT);
        assert!(cut.ends_with(&format!(
            "[output cut: {} more bytes]\n",
            long.len() - kept.len()
        )));
    }
}
