//! The hook host: runs a cartridge hook against a real gear, and the
//! [`GearHost`] the hook talks to (exec and spawn in the gear's sandbox,
//! its supervisor, its environment, its build network).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gearhost_runtime::{
    Cartridge, CommandSpec, EndpointInfo, ExecOutput, ExitStatus, GearHost, GearInfo, HookCall,
    HookKind, HostError, LogLevel, LogSource, Preopen, ProcessInfo, RequestContext, RestartPolicy,
    Signal,
};

use super::*;
use crate::api::reply::NodeEventKind;
use crate::config::NodeConfig;
use crate::env::{self};
use crate::procs::{self, GEAR_HOME, GearSandbox};

impl Node {
    /// Record an event of gear `g` in the node's event log.
    pub(crate) fn event(
        &self,
        g: &Gear,
        kind: NodeEventKind,
        reason: &str,
        deployment: Option<u32>,
    ) {
        let r = lock(&g.record);
        let (namespace, name) = (r.namespace.clone(), r.name.clone());
        drop(r);
        self.events
            .record(&namespace, &name, kind, reason, deployment);
    }

    pub(super) async fn hook(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        call: HookCall,
    ) -> ApiResult<String> {
        let active = g.record().active;
        self.hook_with_repo(g, cart, call, active).await
    }

    pub(super) async fn hook_with_repo(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        call: HookCall,
        repo: Option<u32>,
    ) -> ApiResult<String> {
        let slot = g.record().slot;
        self.hook_in(g, cart, call, repo, slot).await
    }

    /// Run a hook for the app in `slot`: the endpoints it is told of, and
    /// `GEAR_PORT`, are that slot's ports.
    pub(super) async fn hook_in(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        call: HookCall,
        repo: Option<u32>,
        slot: u8,
    ) -> ApiResult<String> {
        // a hook may signal, wait on or talk to the gear's processes
        self.awake(g, &format!("its {} hook runs", call.kind()))
            .await?;
        let host = Arc::new(NodeHost {
            gear: g.clone(),
            slot,
            sandbox: self.sandbox_in(g, repo, slot),
            cartridge: cart.manifest().clone(),
            config: self.config.clone(),
            linked: self.linked_env(&g.record()),
            egress: crate::egress::BuildEgress::paid_by((self.admission.clone(), g.conns.clone())),
            spawned: std::sync::atomic::AtomicBool::new(false),
            events: {
                let r = g.record();
                crate::events::GearEvents::new(self.events.clone(), &r.namespace, &r.name)
            },
        });
        let kind = call.kind();
        g.hook_log.line(&format!("{kind}[node]"), "hook started");
        // the operation holding the gear's lock: a `gear stop` or `gear destroy`
        // that preempts it cancels the hook, and so does cancelling the
        // deploy in progress
        let op = g.op.cancel();
        let deploying = lock(&g.deploying).as_ref().map(|(_, c)| c.clone());
        // a flag of this call's own, set by either: cancelling the deploy
        // ends its hooks, not the operation (which goes on to restore the
        // deployment serving before)
        let (cancel, relay) = match deploying {
            None => (op, None),
            Some(deploy) => {
                let cancel = gearhost_runtime::Cancel::new();
                let both = cancel.clone();
                let relay = tokio::spawn(async move {
                    let why = tokio::select! {
                        () = op.cancelled() => op.reason(),
                        () = deploy.cancelled() => deploy.reason(),
                    };
                    both.cancel(why.unwrap_or_default());
                });
                (cancel, Some(relay))
            }
        };
        let outcome = cart.call_cancellable(host.clone(), call, &cancel).await;
        if let Some(relay) = relay {
            relay.abort();
        }
        // a build's network ends with its hook
        host.egress.close().await;
        // how long, and how much of it the hook machinery and the hook's own
        // code took, as opposed to the programs it ran
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let timing = format!(
            "{:.1} ms (hook {:.2} ms, programs and processes {:.1} ms)",
            ms(outcome.elapsed),
            ms(outcome.elapsed.saturating_sub(outcome.host_calls)),
            ms(outcome.host_calls)
        );
        match outcome.result {
            Ok(out) => {
                g.hook_log.line(
                    &format!("{kind}[node]"),
                    &format!("hook succeeded in {timing}"),
                );
                match kind {
                    HookKind::Start => {
                        self.event(g, NodeEventKind::Started, "the start hook succeeded", repo)
                    }
                    HookKind::Stop => {
                        self.event(g, NodeEventKind::Stopped, "the stop hook succeeded", repo)
                    }
                    _ => {}
                }
                Ok(out)
            }
            Err(e) => {
                g.hook_log.line(
                    &format!("{kind}[node]"),
                    &format!("hook failed after {timing}: {e}"),
                );
                self.event(
                    g,
                    NodeEventKind::HookFailed,
                    &format!("{kind} hook: {e}"),
                    repo,
                );
                Err(failed(e.to_string()))
            }
        }
    }
}

/// The `GearHost` the node gives hooks: requests go to the gear's sandbox and
/// supervisor; env changes persist in the gear's record.
#[derive(Debug)]
struct NodeHost {
    gear: Arc<Gear>,
    /// The slot the call's app runs in (see `frontend::LiveSlot`).
    slot: u8,
    sandbox: GearSandbox,
    cartridge: gearhost_runtime::Manifest,
    config: Arc<NodeConfig>,
    /// What linked gears publish, as of the start of the call.
    linked: BTreeMap<String, String>,
    /// The build's network, opened by its first `exec` that may use it.
    egress: crate::egress::BuildEgress,
    /// Whether the call has started a process: the first one is the app's
    /// primary process, whose variables `gear exec` gets.
    spawned: std::sync::atomic::AtomicBool,
    /// Where the supervisor records crashes and restarts of the processes
    /// the call starts.
    events: crate::events::GearEvents,
}

impl GearHost for NodeHost {
    fn gear(&self) -> GearInfo {
        let r = self.gear.record();
        GearInfo {
            id: r.id,
            name: r.name,
            namespace: r.namespace,
            cartridge: r.cartridge,
            home: GEAR_HOME.into(),
            endpoints: self
                .cartridge
                .endpoints
                .iter()
                .map(|e| EndpointInfo {
                    // a deployment that names its port (an image's) serves HTTP there
                    private_port: match self.sandbox.http_port {
                        Some(port) if Some(e) == self.cartridge.http_endpoint() => port,
                        _ => e.port_in(self.slot),
                    },
                    ..EndpointInfo::from(e)
                })
                .collect(),
        }
    }

    fn preopens(&self) -> Vec<Preopen> {
        let mut preopens = vec![Preopen {
            host: self.sandbox.home.clone(),
            guest: GEAR_HOME.into(),
            writable: true,
        }];
        if let Some(repo) = &self.sandbox.repo {
            preopens.push(Preopen {
                host: repo.clone(),
                guest: procs::GEAR_REPO.into(),
                writable: true,
            });
        }
        preopens
    }

    fn log(&self, hook: HookKind, source: LogSource, level: LogLevel, message: &str) {
        let source = match source {
            LogSource::Hook => level.as_str(),
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
        };
        self.gear
            .hook_log
            .line(&format!("{hook}[{source}]"), message);
    }

    fn env_get(&self, key: &str) -> Option<String> {
        self.env_list()
            .into_iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    fn env_list(&self) -> Vec<(String, String)> {
        let r = self.gear.record();
        let mut env: BTreeMap<String, String> = r.cartridge_env.clone();
        env.extend(self.linked.clone());
        env.extend(r.user_env.clone());
        env.extend(self.sandbox.layers.system.clone());
        env.into_iter().collect()
    }

    fn env_set(&self, key: &str, value: &str) -> Result<(), HostError> {
        if env::is_system_key(key) {
            return Err(HostError::PermissionDenied(format!(
                "{key} is set by the node and cannot be changed by a cartridge"
            )));
        }
        env::check_room(
            &self.gear.record().cartridge_env,
            [(key, value)],
            "the cartridge's variables",
        )
        .map_err(HostError::Invalid)?;
        self.gear
            .update(&self.config, |r| {
                r.cartridge_env.insert(key.into(), value.into());
            })
            .map(drop)
            .map_err(|e| HostError::Failed(e.message))
    }

    fn env_unset(&self, key: &str) -> Result<(), HostError> {
        self.gear
            .update(&self.config, |r| {
                r.cartridge_env.remove(key);
            })
            .map(drop)
            .map_err(|e| HostError::Failed(e.message))
    }

    fn exec(
        &self,
        ctx: RequestContext,
        cmd: CommandSpec,
    ) -> gearhost_runtime::host::BoxFuture<'_, Result<ExecOutput, HostError>> {
        Box::pin(async move {
            // a build that may use the network gets its own namespace and
            // the egress proxy, never the host's network
            let network = ctx.network
                && self.config.build_network
                && self.config.build_egress.mode == crate::egress::EgressMode::Proxy;
            let timeout = if ctx.hook == HookKind::Build {
                self.config.build_timeout
            } else {
                self.config.hook_timeout
            };
            let leaf = gearhost_sandbox::cgroup::exec_leaf(
                &self.sandbox.id,
                self.gear.execs.fetch_add(1, Ordering::Relaxed),
            );
            let net = if network {
                Some(
                    self.egress
                        .get(&self.config.build_egress, &self.gear.hook_log)
                        .await?,
                )
            } else {
                None
            };
            // what the program prints reaches the hook log (and a caller
            // watching it) line by line, as it prints it
            let program: String = cmd
                .program
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .take(32)
                .collect();
            let log = &self.gear.hook_log;
            let hook = ctx.hook;
            let on_line = move |stream: &str, line: &str| {
                log.line(&format!("{hook}[{program}:{stream}]"), line);
            };
            procs::exec(&self.sandbox, &leaf, cmd, net.as_deref(), timeout, &on_line).await
        })
    }

    fn spawn(
        &self,
        _ctx: RequestContext,
        name: &str,
        cmd: CommandSpec,
        restart: RestartPolicy,
    ) -> gearhost_runtime::host::BoxFuture<'_, Result<u32, HostError>> {
        let name = name.to_string();
        Box::pin(async move {
            let process: BTreeMap<String, String> = cmd
                .env
                .iter()
                .filter(|(k, _)| !env::is_system_key(k))
                .cloned()
                .collect();
            let pid = self
                .gear
                .supervisor
                .spawn(
                    self.sandbox.clone(),
                    self.gear.app_log.clone(),
                    &name,
                    cmd,
                    restart,
                    self.events.clone(),
                )
                .await?;
            // the first process a call starts is the app's primary one: its
            // variables are the process layer `gear exec` and `env list` see
            // (kept within a layer's bounds: the record is rewritten at every change)
            if !self.spawned.swap(true, Ordering::SeqCst)
                && self.gear.record().process_env != process
            {
                let vars = process.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                match env::check_room(&BTreeMap::new(), vars, "the process's variables") {
                    Ok(()) => {
                        self.gear
                            .update(&self.config, |r| r.process_env = process)
                            .map_err(|e| HostError::Failed(e.message))?;
                    }
                    Err(e) => self
                        .gear
                        .hook_log
                        .line("spawn[node]", &format!("not kept for `gear exec`: {e}")),
                }
            }
            Ok(pid)
        })
    }

    fn signal(
        &self,
        name: &str,
        signal: Signal,
    ) -> gearhost_runtime::host::BoxFuture<'_, Result<(), HostError>> {
        let r = self.gear.supervisor.signal(name, signal);
        Box::pin(async move { r })
    }

    fn wait(
        &self,
        name: &str,
        timeout: Duration,
    ) -> gearhost_runtime::host::BoxFuture<'_, Result<Option<ExitStatus>, HostError>> {
        let name = name.to_string();
        Box::pin(async move { self.gear.supervisor.wait(&name, timeout).await })
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        self.gear.supervisor.processes()
    }

    fn file_owner(&self) -> Option<gearhost_runtime::fsid::FileOwner> {
        // what a hook writes in the gear belongs to the gear, and it may
        // touch only what the gear's user may
        Some(gearhost_runtime::fsid::FileOwner {
            uid: self.sandbox.uid,
            gid: self.sandbox.uid,
        })
    }
}
