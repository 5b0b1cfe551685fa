//! The Gearhost node: the one long-running process that owns all gear state.
//! It serves the node API on a unix socket ([`server`]), runs cartridge hooks
//! against real gears ([`node`]), supervises gear processes ([`procs`]),
//! captures their logs ([`logs`]), proxies links between gears ([`links`])
//! and the network of builds ([`egress`]),
//! routes HTTP to gears ([`frontend`], with [`alias`]es), idles and wakes
//! them ([`idle`]), keeps state on disk atomically ([`state`]) and gives gears
//! their disk quotas ([`quota`]).

#![forbid(unsafe_code)]

pub mod acme;
pub mod alias;
pub mod audit;
pub mod certs;
pub mod cluster;
pub mod conns;
pub mod egress;
pub mod env;
pub mod events;
pub mod frontend;
pub mod idle;
pub mod images;
pub mod keeper;
pub mod keys;
pub mod layer;
pub mod links;
pub mod listeners;
pub mod logs;
pub mod node;
mod oplock;
pub mod peer;
pub mod procs;
pub mod quota;
pub mod remote;
pub mod restart;
pub mod server;
pub mod ssh;
pub mod state;
pub mod tenancy;
pub mod unpack;

/// The node API's messages, shared with every client (`gearhost-api`).
pub use gearhost_api as api;
/// The node's configuration file (`gearhost-node-config`).
pub use gearhost_node_config as config;

pub use config::NodeConfig;
pub use node::Node;

/// Lifts the node's soft limit on open files to its hard limit: each client
/// connection through the frontend holds its socket, the duplicate its
/// batched sends use, and a connection to the gear, and a service manager's
/// default soft limit (1024) would cap a node at a few hundred clients. Gears
/// get their own limit (`Rlimits::nofile`), not this one.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the node's open file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the node's open file limit"),
    }
}

/// Run the node until SIGTERM or SIGINT: open the state, take back the gear
/// processes an earlier node left running and start the other gears that
/// should run, serve the API, until SIGTERM, SIGINT or `gear node stop`. On
/// the way out the gears' processes keep running (only `gear exec` commands
/// end); the next node takes them back. `gear node stop --gears` stops them.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    run_with(config, gearhost_sys::listenfds::Inherited::none()).await
}

/// [`run`] with listening sockets given by socket activation or by the node this process
/// replaced (`gear node restart`): named `frontend`, `https`, `metrics` and `api`, each
/// used instead of binding its address; `gear node restart` hands them on again.
pub async fn run_with(
    config: NodeConfig,
    mut inherited: gearhost_sys::listenfds::Inherited,
) -> anyhow::Result<()> {
    use gearhost_sys::listenfds::Source;
    raise_open_file_limit();
    let socket = config.socket.clone();
    // one node per state directory: the keeper and the listeners it holds are that node's
    let _lock = lock_state_dir(&config.state_dir)?;
    // the state first: a node that cannot run leaves no socket and starts no keeper
    let node = Node::open(config)?;
    let config = node.config();
    let keeper = match keeper::start(&config.state_dir, &config.cgroup_subtree) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(error = %e, "no keeper: websockets, linked connections and listening sockets end with this node process");
            None
        }
    };
    let opened = listeners::open(config, &mut inherited, keeper.as_deref());
    if opened.is_err()
        && let Some(k) = &keeper
    {
        k.release();
    }
    let listeners::Listeners {
        api: listener,
        keep_socket_file,
        frontend,
        https,
        metrics,
        handover,
    } = opened?;
    // a node that fails before it serves leaves the keeper holding nothing
    let starting = Starting(keeper.clone());
    let frontend_addr = frontend.local_addr()?;
    node.set_frontend_addr(frontend_addr);
    node.set_main_runtime(tokio::runtime::Handle::current());
    // a cluster member knows which of its gears are still its own only once it has joined
    node.join_cluster().await?;
    if let (Some(cluster), Some(secret)) = (&node.config().cluster, node.cluster_secret()) {
        let peers = tokio::net::TcpListener::bind(cluster.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen for the other nodes on {} (cluster.listen): {e}",
                    cluster.listen
                )
            })?;
        tokio::spawn(peer::serve(node.clone(), peers, secret));
    }
    let metrics = match metrics {
        Some(l) => {
            l.set_nonblocking(true)?;
            Some(tokio::net::TcpListener::from_std(l)?)
        }
        None => None,
    };
    if let Some(m) = &metrics {
        node.set_metrics_addr(m.local_addr()?);
    }
    match inherited.source() {
        Source::None => {}
        Source::Activation => {
            tracing::info!("listening on sockets the service manager passed")
        }
        Source::Handover => {
            tracing::info!("listening on the sockets of the node before the restart")
        }
    }
    let unused = inherited.left();
    if !unused.is_empty() {
        tracing::warn!(names = ?unused, "sockets were passed that this node's configuration does not use (expected: frontend, https, metrics, api)");
    }
    if node.config().warm_helpers > 0 {
        match gearhost_sandbox::find_init(None) {
            Ok(init) => {
                gearhost_sandbox::keep_warm(&init, node.config().warm_helpers);
                // say once why, if the first helper cannot be prepared
                let count = node.config().warm_helpers;
                tokio::task::spawn_blocking(move || {
                    if !gearhost_sandbox::wait_warm(&init, std::time::Duration::from_secs(30)) {
                        let (_, why) = gearhost_sandbox::warm_status(&init);
                        tracing::warn!(
                            helpers = count,
                            reason = why.as_deref().unwrap_or("not ready within 30 s"),
                            "gear helpers are not prepared ahead; starts prepare their own"
                        );
                    }
                });
            }
            Err(e) => tracing::warn!("no warm gear helpers: {e}"),
        }
    }
    tracing::info!(socket = %socket.display(), state = %node.config().state_dir.display(), "node ready");
    eprintln!(
        "gear node: serving {} (state in {})",
        socket.display(),
        node.config().state_dir.display()
    );
    // links first, so gears that start find the gears they are linked to
    node.restore_links().await;
    if let Some(k) = &keeper {
        node.count_kept(k);
        let unused = k.forget_untaken();
        if !unused.is_empty() {
            tracing::info!(names = ?unused, "the keeper held sockets this node's configuration no longer uses; closed");
        }
    }
    node.open_doors().await;
    let resume = {
        let node = node.clone();
        tokio::spawn(async move { node.resume().await })
    };
    frontend::start_workers(&node, frontend)?;
    if let Some(listener) = https {
        let tls = certs::server_config(node.certs.clone())?;
        frontend::start_https(&node, listener, tls)?;
        // the operator's certificate files are read again when they change:
        // looked at every RELOAD_EVERY, and at once on SIGHUP (`systemctl reload`)
        let certs = node.certs.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(certs::RELOAD_EVERY) => {}
                    _ = hup.recv() => {}
                }
                let c = certs.clone();
                let _ = tokio::task::spawn_blocking(move || c.reload_operator()).await;
            }
        });
    }
    let idler = tokio::spawn(node.clone().idler());
    let ssh = tokio::spawn(node.clone().run_ssh());
    let acme = tokio::spawn(node.clone().run_acme());
    let flusher = tokio::spawn(frontend::flush_access_logs(node.clone()));
    let metrics = {
        let node = node.clone();
        async move {
            match metrics {
                Some(listener) => frontend::serve_metrics(node, listener).await,
                None => std::future::pending().await,
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stop = node::Stop::Leave;
    // a signal is a service manager's restart as often as a stop: the keeper
    // keeps the listening sockets; `gear node stop` gives them up
    let mut asked = false;
    starting.served();
    let result = tokio::select! {
        r = server::serve(node.clone(), listener) => r,
        r = metrics => r,
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        how = node.stop_requested() => {
            stop = how;
            asked = true;
            Ok(())
        }
    };
    // whatever stops the node (but SIGKILL), requests in flight finish; no new
    // connection is accepted from here: they wait in the backlogs, which the
    // keeper (or a socket unit, or the re-executed image) keeps open
    {
        let drained = frontend::drain::drain(RESTART_DRAIN).await;
        if drained.in_flight > 0 || drained.fresh > 0 {
            tracing::warn!(
                in_flight = drained.in_flight,
                waiting = drained.fresh,
                "stopping with requests not finished"
            );
        }
        tracing::info!(
            took_ms = drained.took.as_millis() as u64,
            "frontend drained"
        );
    }
    if stop == node::Stop::Restart {
        // a deploy or start in flight finishes before the image is replaced
        let busy = restart::finish_operations(&node, restart::OPERATIONS_WAIT).await;
        if !busy.is_empty() {
            tracing::warn!(gears = ?busy, "restarting with gear operations still running: the new image finishes or rolls them back");
        }
    }
    resume.abort();
    idler.abort();
    // sshd is ended now: it would outlive the node (or its re-executed
    // image) and hold the port; sessions end as their connections close
    ssh.abort();
    node.ssh.stop();
    acme.abort();
    flusher.abort();
    for g in node.gears_snapshot() {
        g.front.access.flush();
    }
    if stop == node::Stop::Gears {
        // `gear node stop --gears`: desired states are kept, the next node starts them
        eprintln!("gear node: stopping gear processes");
        node.shutdown().await;
        // nothing of this node runs any more: the cluster need not wait for its lease
        if let Some(cluster) = node.cluster() {
            cluster.leave().await;
        }
        // nothing is left for a keeper to keep
        if let Some(k) = &keeper {
            k.quit();
        }
    } else {
        // the gears' processes run on, detached from the node; the next node takes them back
        eprintln!("gear node: stopping; gear processes keep running for the next node");
        node.leave().await;
    }
    if stop == node::Stop::Restart {
        eprintln!("gear node: restarting; gear processes keep running");
        // only returns if the binary cannot be executed
        return Err(handover.exec());
    }
    // `gear node stop`: connections are refused until a node runs again
    if asked && let Some(k) = &keeper {
        k.release();
    }
    // a socket the keeper holds stays where clients find it
    if !keep_socket_file && (asked || keeper.is_none()) {
        let _ = std::fs::remove_file(&socket);
    }
    result
}

/// Until the node serves: if it fails first, the keeper closes the sockets
/// it was given, so clients are refused rather than left waiting.
struct Starting(Option<std::sync::Arc<keeper::Keeper>>);

impl Starting {
    fn served(mut self) {
        self.0 = None;
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(k) = &self.0 {
            k.release();
        }
    }
}

/// Locks the state directory for this node process (released when it ends
/// or executes its binary again): a second node on the same state directory
/// is refused before it touches the keeper or the listeners.
fn lock_state_dir(dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the state directory {}: {e}", dir.display()))?;
    let path = dir.join("node.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another node is already running on the state directory {} ({e}); stop it, or give this one its own state directory",
            dir.display()
        )
    })
}

/// How long `gear node restart` waits for the requests in flight.
pub const RESTART_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the node waits, once it has stopped, for work still running on
/// its runtime's blocking threads (a hook's thread stuck in the kernel
/// where no signal reaches is left behind after that).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The tokio runtime the node runs on. Every thread it starts takes the
/// process's own file-system identity first: hooks run their file operations
/// as their gear's user, and a thread started from inside a hook's poll would
/// otherwise keep that identity (see `gearhost_runtime::fsid`). Hooks run on
/// its blocking threads, never on its workers (see
/// `gearhost_runtime::Cartridge::call_cancellable`), so a hook stuck in the
/// kernel holds no worker and the node's API keeps answering.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gear-node")
        .on_thread_start(gearhost_runtime::fsid::reset_thread)
        .build()
}
