//! The node API server: a unix socket every local user may use (or the
//! members of `users-group`); one request per connection, answered with event
//! lines and one result. Who calls is the socket's peer credentials; what
//! they may do is decided by [`crate::tenancy`] before anything is done, and
//! what they did goes to the audit log.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use crate::api::{ApiError, ErrorKind, Event, MAX_REQUEST, Op, Reply, Request, ops, reply};
use crate::logs;
use crate::node::{LogKind, Node, Progress};
use crate::tenancy::{self, Caller};

mod list;

/// Bind the node's socket: its directory is created, a stale socket left by
/// a dead node is replaced, a live node's is not. Without `group` the socket
/// is open to every local user (0666; the node decides what each may do),
/// with it to root and that group's members (0660).
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another node is already serving {}; stop it, or give this one its own socket and state directory",
                path.display()
            );
        }
        std::fs::remove_file(path).map_err(|e| {
            anyhow::anyhow!("cannot remove the stale socket {}: {e}", path.display())
        })?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let gid = match group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| anyhow::anyhow!("users group {name:?} does not exist; create it or remove users-group from the configuration"))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    std::os::unix::fs::chown(path, Some(0), gid)
        .map_err(|e| anyhow::anyhow!("cannot chown {}: {e}", path.display()))?;
    let mode = if gid.is_some() { 0o660 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow::anyhow!("cannot set the mode of {}: {e}", path.display()))?;
    Ok(listener)
}

/// Serve requests for as long as the node runs. An accept that fails (out
/// of descriptors, out of memory for the socket) is never fatal: the loop
/// backs off and tries again, so what gears do cannot end the node.
pub async fn serve(node: Arc<Node>, listener: UnixListener) -> anyhow::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "the node API cannot accept a connection now; trying again");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(node, stream).await {
                tracing::debug!(error = %e, "api connection ended with an error");
            }
        });
    }
}

async fn send(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    stream.write_all(&reply.encode()).await
}

/// Read the request line, with any descriptors sent alongside it.
async fn read_request(stream: UnixStream) -> std::io::Result<(UnixStream, Vec<u8>, Vec<OwnedFd>)> {
    let std_stream = stream.into_std()?;
    std_stream.set_nonblocking(false)?;
    std_stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (std_stream, line, fds) = tokio::task::spawn_blocking(move || {
        let mut line = Vec::new();
        let mut fds = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (n, mut got) = gearhost_sys::fdpass::recv_with_fds(&std_stream, &mut buf)?;
            fds.append(&mut got);
            if n == 0 {
                break;
            }
            line.extend_from_slice(&buf[..n]);
            if line.contains(&b'\n') || line.len() > MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>((std_stream, line, fds))
    })
    .await
    .map_err(std::io::Error::other)??;
    std_stream.set_read_timeout(None)?;
    std_stream.set_nonblocking(true)?;
    Ok((UnixStream::from_std(std_stream)?, line, fds))
}

async fn handle(node: Arc<Node>, stream: UnixStream) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (mut stream, line, fds) = read_request(stream).await?;
    let (request, as_user) = match crate::api::decode_request_as(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut stream, &Reply::Error(e)).await,
    };
    // a claim from the login account counts only from the node's own sshd
    // (a session, git, its hook), never from another process of that uid
    if as_user.is_some() && node.ssh.uid() == Some(cred.uid()) && !node.ssh.vouches_for(cred.pid())
    {
        let e = ApiError::new(
            ErrorKind::Denied,
            "a request acting for a user must come from a session of the node's ssh endpoint",
        );
        return send(&mut stream, &Reply::Error(e)).await;
    }
    let caller = match tenancy::identify_as(
        cred.uid(),
        cred.gid(),
        as_user.as_deref(),
        node.ssh.uid(),
        node.config(),
    ) {
        Ok(caller) => caller,
        Err(e) => return send(&mut stream, &Reply::Error(e)).await,
    };
    // a gear another node of the cluster holds (or is placed on) is served by that node
    match crate::peer::route(&node, &request).await {
        Ok(Some(owner)) => {
            return crate::peer::forward(&node, owner, &caller, &request, &line, fds, stream).await;
        }
        Ok(None) => {}
        Err(e) => return send(&mut stream, &Reply::Error(e)).await,
    }
    // in a cluster, `gear list` is every node's gears
    if matches!(request, Request::List(_)) && node.cluster().is_some() {
        let mut local = list::visible(&node, &caller);
        // a stale copy of a gear the cluster holds on another node is that node's to list
        local.retain(|g| node.placed_elsewhere(&g.gear.id).is_none());
        let mut notes = Vec::new();
        let all = crate::peer::list_cluster(&node, &caller, local, &mut notes).await;
        for note in notes {
            send(&mut stream, &Reply::Event(Event::Progress(note))).await?;
        }
        let line = list::encode(&all, 16 + all.len() * list::VIEW_BYTES);
        return stream.write_all(&line).await;
    }
    serve_request(node, caller, request, fds, stream).await
}

/// Serves a request another node forwarded, for the caller it vouches for
/// (never forwarded again: the gear is this node's, or it is nowhere).
pub(crate) async fn serve_line(
    node: Arc<Node>,
    caller: Caller,
    line: Vec<u8>,
    fds: Vec<OwnedFd>,
    mut stream: UnixStream,
) -> std::io::Result<()> {
    match crate::api::decode_request_as(&line) {
        Ok((request, _)) => serve_request(node, caller, request, fds, stream).await,
        Err(e) => send(&mut stream, &Reply::Error(e)).await,
    }
}

/// Authorizes, does and audits the request of an identified caller, and
/// answers it on `stream`.
async fn serve_request(
    node: Arc<Node>,
    caller: Caller,
    request: Request,
    fds: Vec<OwnedFd>,
    mut stream: UnixStream,
) -> std::io::Result<()> {
    // the request itself may carry secrets (env values): log only at debug
    tracing::debug!(uid = caller.uid, ?request, "request");
    let verb = request.name();
    let target = tenancy::gear_of(&request).cloned();
    let audit = |result: Result<(), &ApiError>| {
        node.audit.record(
            &caller,
            verb,
            target.as_ref().map(|g| g.namespace.as_str()),
            target.as_ref().map(|g| g.name.as_str()),
            result,
        );
    };
    if let Err(e) = tenancy::authorize(&caller, &node.namespaces, &request) {
        audit(Err(&e));
        return send(&mut stream, &Reply::Error(e)).await;
    }
    let changes = tenancy::changes_something(&request);
    let (tx, mut rx) = Progress::channel();
    if let Request::Logs(logs) = &request {
        let which = match (logs.hooks, logs.access) {
            (_, true) => LogKind::Access,
            (true, false) => LogKind::Hooks,
            (false, false) => LogKind::App,
        };
        return stream_logs(
            &node,
            &mut stream,
            &logs.gear,
            logs.lines,
            logs.follow,
            which,
        )
        .await;
    }
    if let Request::NodeEvents(op) = &request {
        return stream_events(&node, &caller, stream, op).await;
    }
    if let Request::List(_) = &request {
        // changes nothing (no audit); encoded straight from the views
        let _answering = Answering::new();
        let gears = list::visible(&node, &caller);
        let line = list::encode(&gears, 16 + gears.len() * list::VIEW_BYTES);
        return stream.write_all(&line).await;
    }
    if let Request::Exec(op) = request {
        // the command ends when its caller goes away
        let reply = answer::<ops::Exec>(exec(&node, op, fds, caller_gone(&stream)).await);
        match &reply {
            Reply::Error(e) if changes || e.kind == ErrorKind::Denied => audit(Err(e)),
            Reply::Error(_) => {}
            _ if changes => audit(Ok(())),
            _ => {}
        }
        return send(&mut stream, &reply).await;
    }
    let dropped = tx.dropped();
    let gone = tx.gone_flag();
    let progress = |text| Reply::Event(Event::Progress(text));
    // progress goes out on a task of its own: a caller that reads slowly, or
    // not at all, holds up its own connection, never the operation (which
    // drops what does not fit in the queue). The task also notes when the
    // caller goes away, which ends an operation only while it waits to start
    // (a deploy queued behind another), never one half-way
    let (read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        {
            let watch = async {
                peer_closed(&read).await;
                gone.cancel("the caller went away");
                std::future::pending::<()>().await
            };
            tokio::pin!(watch);
            let mut open = true;
            loop {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(event) if open => {
                            open = write.write_all(&progress(event).encode()).await.is_ok();
                        }
                        Some(_) => {}
                        None => break,
                    },
                    () = &mut watch => {}
                }
            }
        }
        read.reunite(write)
    });
    // counted until its answer is written: a restart waits for it
    let _answering = Answering::new();
    // the operation's end drops the last sender, which ends the writer
    let reply = dispatch(node.clone(), &caller, request, fds, tx).await;
    let mut stream = writer
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    let lost = dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
    if lost > 0 {
        let note = format!(
            "{lost} lines of output were not sent here, as they came faster than they were read; \
             the gear's hook log has them (`gear logs NAME --hooks`)"
        );
        let _ = send(&mut stream, &progress(note)).await;
    }
    match &reply {
        Reply::Error(e) if changes || e.kind == ErrorKind::Denied => audit(Err(e)),
        Reply::Error(_) => {}
        _ if changes => audit(Ok(())),
        _ => {}
    }
    send(&mut stream, &reply).await
}

/// Requests being served (not the followers: logs, events, exec), until
/// their answer is written.
static ANSWERING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One request counted in [`ANSWERING`] while it lives.
struct Answering;

impl Answering {
    fn new() -> Answering {
        ANSWERING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Answering
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        ANSWERING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits until every request being served has written its answer, or until
/// `deadline`; whether none is left.
pub async fn answered(deadline: tokio::time::Instant) -> bool {
    while ANSWERING.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    true
}

async fn stream_logs(
    node: &Node,
    stream: &mut UnixStream,
    gear: &crate::api::GearRef,
    lines: usize,
    follow: bool,
    which: LogKind,
) -> std::io::Result<()> {
    let path = match node.log_path(gear, which) {
        Ok(p) => p,
        Err(e) => return send(stream, &Reply::Error(e)).await,
    };
    let (last, mut offset) = logs::tail(&path, lines)?;
    for line in last {
        send(stream, &Reply::Event(Event::Line(line))).await?;
    }
    let end = Reply::answer::<ops::Logs>(&());
    if !follow {
        return send(stream, &end).await;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (new, next) = logs::read_from(&path, offset)?;
        offset = next;
        for line in new {
            send(stream, &Reply::Event(Event::Line(line))).await?;
        }
        if node.log_path(gear, which).is_err() {
            let gone = format!(
                "gear {} in namespace {} is gone (destroyed); no more lines will come",
                gear.name, gear.namespace
            );
            send(stream, &Reply::Event(Event::Progress(gone))).await?;
            return send(stream, &end).await;
        }
    }
}

/// `node-events`: the last events the caller may see, then (with `follow`)
/// each new one as it happens, until the caller goes away.
async fn stream_events(
    node: &Node,
    caller: &Caller,
    mut stream: UnixStream,
    op: &ops::NodeEvents,
) -> std::io::Result<()> {
    // a user sees the events of the namespaces it may act in, never the
    // names of another tenant's gears
    let keep = |e: &crate::api::reply::NodeEvent| {
        node.namespaces.may_act(caller, &e.namespace)
            && op
                .gear
                .as_ref()
                .is_none_or(|g| g.name == e.gear && g.namespace == e.namespace)
    };
    let (last, mut rx) = node.events.last_and_follow(op.lines, keep);
    let line = |e: &crate::api::reply::NodeEvent| {
        Reply::Event(Event::Line(serde_json::to_string(e).unwrap_or_default()))
    };
    for e in &last {
        send(&mut stream, &line(e)).await?;
    }
    let end = Reply::answer::<ops::NodeEvents>(&());
    if !op.follow {
        return send(&mut stream, &end).await;
    }
    let (read, mut write) = stream.into_split();
    let gone = peer_closed(&read);
    tokio::pin!(gone);
    loop {
        tokio::select! {
            () = &mut gone => return Ok(()),
            next = rx.recv() => match next {
                Ok(e) if keep(&e) => write.write_all(&line(&e).encode()).await?,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("{n} events came faster than they were sent here and were skipped");
                    write.write_all(&Reply::Event(Event::Progress(note)).encode()).await?;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return write.write_all(&end.encode()).await;
                }
            },
        }
    }
}

/// The answer line of operation `O`: its typed answer, or the error.
fn answer<O: Op>(result: Result<O::Reply, ApiError>) -> Reply {
    match result {
        Ok(answer) => Reply::answer::<O>(&answer),
        Err(e) => Reply::Error(e),
    }
}

async fn dispatch(
    node: Arc<Node>,
    caller: &Caller,
    request: Request,
    fds: Vec<OwnedFd>,
    progress: Progress,
) -> Reply {
    let p = &progress;
    match request {
        Request::Ping(_) => answer::<ops::Ping>(Ok(reply::NodeInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api: crate::api::API_VERSION,
            state_dir: node.config().state_dir.clone(),
            domain: node.config().domain.clone(),
            frontend: node.frontend_addr(),
            metrics: node.metrics_addr(),
        })),
        Request::CartridgeInstall(op) => {
            answer::<ops::CartridgeInstall>(match archive(fds, "cartridge install") {
                Ok(fd) => node.cartridge_install(&op.source, fd).await,
                Err(e) => Err(e),
            })
        }
        Request::CartridgePull(op) => answer::<ops::CartridgePull>(
            node.cartridge_pull(&op.reference, op.insecure, op.credentials)
                .await,
        ),
        Request::CartridgeList(_) => answer::<ops::CartridgeList>(Ok(node.cartridge_list())),
        Request::ImagePull(op) => answer::<ops::ImagePull>(
            node.image_pull(&op.reference, op.insecure, op.credentials)
                .await,
        ),
        Request::ImageList(_) => answer::<ops::ImageList>(Ok(node.image_list())),
        Request::ImagePrune(_) => answer::<ops::ImagePrune>(Ok(node.image_prune().await)),
        Request::CartridgeRemove(op) => {
            answer::<ops::CartridgeRemove>(node.cartridge_remove(&op.name))
        }
        Request::Create(op) => {
            // an operator's gear counts against nobody's limits
            let owner = (!caller.operator).then(|| node.owner(&caller.user));
            answer::<ops::Create>(
                node.create(&op.gear, &op.cartridge, op.disk, owner.as_ref())
                    .await,
            )
        }
        // answered by `handle` (see `list`), the same answer
        Request::List(_) => answer::<ops::List>(Ok(list::visible(&node, caller))),
        Request::Whoami(_) => answer::<ops::Whoami>(Ok(reply::CallerInfo {
            uid: caller.uid,
            user: caller.user.clone(),
            operator: caller.operator,
            namespaces: visible_namespaces(&node, caller),
        })),
        Request::NamespaceList(_) => {
            let counts = node.namespace_counts();
            answer::<ops::NamespaceList>(Ok(visible_namespaces(&node, caller)
                .iter()
                .map(|n| node.namespaces.info(n, counts.get(n).copied().unwrap_or(0)))
                .collect()))
        }
        Request::NamespaceCreate(op) if !node.keys.list(Some(&op.name)).is_empty() => {
            Reply::Error(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "{} is a user's name (it has ssh keys), and so that user's own namespace; \
                     give the team another name",
                    op.name
                ),
            ))
        }
        Request::NamespaceCreate(op) => answer::<ops::NamespaceCreate>(
            node.namespaces
                .create(caller, &op.name, &op.members)
                .map(|()| node.namespaces.info(&op.name, 0)),
        ),
        Request::NamespaceDelete(op) => {
            let gears = node.namespace_counts().get(&op.name).copied().unwrap_or(0);
            answer::<ops::NamespaceDelete>(
                node.namespaces
                    .delete(caller, &op.name, gears)
                    .map(|()| reply::NamespaceDeleted { deleted: op.name }),
            )
        }
        Request::NamespaceAddMember(op) => {
            let counts = node.namespace_counts();
            answer::<ops::NamespaceAddMember>(
                node.namespaces
                    .change_member(caller, &op.name, &op.user, true)
                    .map(|()| {
                        node.namespaces
                            .info(&op.name, counts.get(&op.name).copied().unwrap_or(0))
                    }),
            )
        }
        Request::NamespaceRemoveMember(op) => {
            let counts = node.namespace_counts();
            answer::<ops::NamespaceRemoveMember>(
                node.namespaces
                    .change_member(caller, &op.name, &op.user, false)
                    .map(|()| {
                        node.namespaces
                            .info(&op.name, counts.get(&op.name).copied().unwrap_or(0))
                    }),
            )
        }
        Request::Audit(op) => answer::<ops::Audit>(
            node.audit
                .last(op.lines)
                .map(|entries| reply::AuditLog { entries })
                .map_err(|e| {
                    ApiError::new(ErrorKind::Failed, format!("cannot read the audit log: {e}"))
                }),
        ),
        Request::Show(op) => answer::<ops::Show>(node.show(&op.gear)),
        Request::Destroy(op) => answer::<ops::Destroy>(node.destroy(&op.gear, p).await),
        Request::Deploy(op) => {
            let deployed = match archive(fds, "deploy") {
                Ok(fd) => node.deploy(&op.gear, &op.source, fd, p).await,
                Err(e) => Err(e),
            };
            // in a cluster, what a stateless gear runs is kept by another node too
            if deployed.is_ok() {
                node.replicate_soon(&op.gear);
            }
            answer::<ops::Deploy>(deployed)
        }
        Request::Snapshot(op) => answer::<ops::Snapshot>(node.snapshot(&op.gear, fds, p).await),
        Request::Move(op) => {
            answer::<ops::Move>(node.move_gear(&op.gear, &op.node, caller, p).await)
        }
        Request::Receive(op) => answer::<ops::Receive>(node.receive(op, fds, p).await),
        Request::Replicate(op) => answer::<ops::Replicate>(node.keep_replica(op, fds).await),
        Request::Recover(op) => answer::<ops::Recover>(node.recover(op, p).await),
        Request::Restore(op) => {
            let owner = (!caller.operator).then(|| node.owner(&caller.user));
            answer::<ops::Restore>(
                node.restore(&op.gear, &op.source, fds, owner.as_ref(), p)
                    .await,
            )
        }
        Request::DeployImage(op) => answer::<ops::DeployImage>(
            node.deploy_image(
                &op.gear,
                crate::node::ImageSource {
                    reference: op.reference,
                    insecure: op.insecure,
                    credentials: op.credentials,
                    port: op.port,
                },
                p,
            )
            .await,
        ),
        Request::Build(op) => answer::<ops::Build>(node.build(&op.gear, p).await),
        Request::Start(op) => answer::<ops::Start>(node.start(&op.gear, p).await),
        Request::Stop(op) => answer::<ops::Stop>(node.stop(&op.gear).await),
        Request::Restart(op) => answer::<ops::Restart>(node.restart(&op.gear, p).await),
        Request::Status(op) => {
            // right after a restart: what the resume takes back, not what it has not yet
            node.resumed(&op.gear).await;
            answer::<ops::Status>(node.status(&op.gear))
        }
        Request::Control(op) => {
            answer::<ops::Control>(node.control(&op.gear, &op.action, op.args).await)
        }
        Request::Deployments(op) => answer::<ops::Deployments>(node.deployments(&op.gear)),
        Request::Rollback(op) => {
            let done = node.rollback(&op.gear, op.id, p).await;
            if done.is_ok() {
                node.replicate_soon(&op.gear);
            }
            answer::<ops::Rollback>(done)
        }
        Request::EnvSet(op) => {
            let done = node.env_set(&op.gear, op.vars).await;
            if done.is_ok() {
                node.replicate_soon(&op.gear);
            }
            answer::<ops::EnvSet>(done)
        }
        Request::EnvUnset(op) => {
            let done = node.env_unset(&op.gear, op.keys).await;
            if done.is_ok() {
                node.replicate_soon(&op.gear);
            }
            answer::<ops::EnvUnset>(done)
        }
        Request::EnvList(op) => answer::<ops::EnvList>(node.env_list(&op.gear)),
        Request::Link(op) => answer::<ops::Link>(node.link(&op.gear, &op.to).await),
        Request::Unlink(op) => answer::<ops::Unlink>(node.unlink(&op.gear, &op.to).await),
        Request::AliasAdd(op) => {
            answer::<ops::AliasAdd>(node.alias_add(&op.gear, &op.hostname).await)
        }
        Request::AliasRemove(op) => {
            answer::<ops::AliasRemove>(node.alias_remove(&op.gear, &op.hostname).await)
        }
        Request::AliasList(op) => answer::<ops::AliasList>(node.alias_list(&op.gear)),
        Request::Idle(op) => answer::<ops::Idle>(node.idle(&op.gear, op.stop).await),
        Request::Unidle(op) => answer::<ops::Unidle>(node.unidle(&op.gear, p).await),
        Request::NodeStop(op) => {
            // the node stops once this answer is on its way
            let stopping = node.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                stopping.request_stop(if op.gears {
                    crate::node::Stop::Gears
                } else {
                    crate::node::Stop::Leave
                });
            });
            answer::<ops::NodeStop>(Ok(reply::NodeStopping {
                gears: op.gears,
                pid: std::process::id(),
            }))
        }
        Request::NodeRestart(_) => answer::<ops::NodeRestart>(match crate::restart::binary() {
            Ok(binary) => {
                let restarting = node.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    restarting.request_stop(crate::node::Stop::Restart);
                });
                Ok(reply::NodeRestarting {
                    pid: std::process::id(),
                    binary: binary.display().to_string(),
                })
            }
            Err(e) => Err(e),
        }),
        Request::NodeResume(_) => answer::<ops::NodeResume>(Ok(node.resume_outcome())),
        Request::NodeList(_) => answer::<ops::NodeList>(node.node_list().await),
        Request::Metrics(_) => answer::<ops::Metrics>(Ok(reply::MetricsText {
            text: crate::frontend::render_metrics(&node),
        })),
        Request::KeysAdd(op) => {
            let user = op.user.unwrap_or_else(|| caller.user.clone());
            let team = node.namespaces.team_names().contains(&user);
            answer::<ops::KeysAdd>(
                crate::tenancy::check_user_name(&user)
                    .and_then(|()| {
                        if team {
                            Err(ApiError::new(
                                ErrorKind::Conflict,
                                format!(
                                    "{user} is a team namespace, not a user: a key logs in as \
                                     one user; give each member a key of their own"
                                ),
                            ))
                        } else {
                            Ok(())
                        }
                    })
                    .and_then(|()| node.keys.add(&user, &op.key, crate::logs::timestamp())),
            )
        }
        Request::KeysList(op) => {
            let user = if op.all {
                None
            } else {
                Some(op.user.unwrap_or_else(|| caller.user.clone()))
            };
            answer::<ops::KeysList>(Ok(node.keys.list(user.as_deref())))
        }
        Request::KeysRemove(op) => {
            let user = op.user.unwrap_or_else(|| caller.user.clone());
            answer::<ops::KeysRemove>(node.keys.remove(&user, &op.fingerprint))
        }
        Request::KeysLookup(op) => answer::<ops::KeysLookup>(Ok(reply::KeyOwner {
            user: node.keys.owner(&op.kind, &op.key),
        })),
        Request::AliasAcme(op) => {
            answer::<ops::AliasAcme>(node.alias_acme(&op.gear, &op.hostname).await)
        }
        Request::HttpsSet(op) => {
            answer::<ops::HttpsSet>(node.https_set(&op.gear, op.redirect, op.hsts_max_age).await)
        }
        Request::AliasCert(op) => answer::<ops::AliasCert>(
            node.alias_cert(&op.gear, &op.hostname, &op.certificate, &op.key)
                .await,
        ),
        Request::GitAccess(op) => {
            answer::<ops::GitAccess>(node.git_access(&op.gear, op.write).await)
        }
        Request::Logs(_) | Request::NodeEvents(_) => Reply::Error(ApiError::new(
            ErrorKind::Invalid,
            "logs and events are streamed separately",
        )),
        Request::DeployCancel(op) => {
            answer::<ops::DeployCancel>(node.deploy_cancel(&op.gear, op.deployment))
        }
        // answered by `handle`, which watches the caller meanwhile
        Request::Exec(_) => Reply::Error(ApiError::new(
            ErrorKind::Invalid,
            "exec is answered separately",
        )),
    }
}

/// How many gears each namespace holds.
/// The namespaces `caller` may act in: a user's own and its teams; for an
/// operator every namespace that holds a gear or is a team, and its own.
fn visible_namespaces(node: &Node, caller: &Caller) -> Vec<String> {
    if !caller.operator {
        return node.namespaces.of_user(&caller.user);
    }
    let mut all: std::collections::BTreeSet<String> = node.namespace_counts().into_keys().collect();
    all.extend(node.namespaces.team_names());
    all.insert(caller.user.clone());
    all.into_iter().collect()
}

/// `deploy` and `cartridge install`: the one descriptor passed with the
/// request is the read end of the pipe the client writes its tar archive on.
fn archive(fds: Vec<OwnedFd>, what: &str) -> Result<OwnedFd, ApiError> {
    let mut fds = fds;
    match (fds.pop(), fds.is_empty()) {
        (Some(fd), true) => Ok(fd),
        _ => Err(ApiError::new(
            ErrorKind::Invalid,
            format!(
                "{what} needs exactly one descriptor passed with the request: the pipe the \
                 client writes the tar archive of the sources on (use a `gear` of this node's version)"
            ),
        )),
    }
}

/// Resolves once the caller has closed its end of the connection (it sends
/// nothing after its request: end of stream or an error means it is gone;
/// anything it does send is dropped).
async fn caller_gone(stream: &UnixStream) {
    let mut buf = [0u8; 256];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// [`caller_gone`] on the owned read half of a connection.
async fn peer_closed(read: &tokio::net::unix::OwnedReadHalf) {
    let mut buf = [0u8; 256];
    loop {
        if read.readable().await.is_err() {
            return;
        }
        match read.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// `exec`: the caller's stdio came as descriptors with the request.
async fn exec(
    node: &Node,
    op: ops::Exec,
    fds: Vec<OwnedFd>,
    gone: impl std::future::Future<Output = ()>,
) -> Result<reply::ExecEnd, ApiError> {
    let mut files: Vec<std::fs::File> = fds.into_iter().map(std::fs::File::from).collect();
    if !(3..=4).contains(&files.len()) {
        return Err(ApiError::new(
            ErrorKind::Invalid,
            "exec needs the caller's stdin, stdout and stderr passed with the request (and, on a terminal, a pipe that says when its window changes size)",
        ));
    }
    let resized = (files.len() == 4).then(|| files.remove(3));
    let stderr = files.remove(2);
    let stdout = files.remove(1);
    let stdin = files.remove(0);
    node.exec(&op.gear, op.argv, [stdin, stdout, stderr], resized, gone)
        .await
}
