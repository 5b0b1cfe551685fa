//! The node API server: a unix socket only root (and the operator group) may
//! use; one request per connection, answered with event lines and one result.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use crate::api::{ApiError, ErrorKind, Event, MAX_REQUEST, Op, Reply, Request, ops, reply};
use crate::logs;
use crate::node::{LogKind, Node};

/// Bind the node's socket: its directory is created, a stale socket left by
/// a dead node is replaced, a live node's is not.
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
                .ok_or_else(|| anyhow::anyhow!("operator group {name:?} does not exist; create it or remove operator-group from the configuration"))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    std::os::unix::fs::chown(path, Some(0), gid)
        .map_err(|e| anyhow::anyhow!("cannot chown {}: {e}", path.display()))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow::anyhow!("cannot set the mode of {}: {e}", path.display()))?;
    Ok(listener)
}

/// Serve requests for as long as the node runs. An accept that fails (out
/// of descriptors, out of memory for the socket) is never fatal: the loop
/// backs off and tries again, so what gears do cannot end the node.
pub async fn serve(node: Arc<Node>, listener: UnixListener) -> anyhow::Result<()> {
    let group = node.config().operator_group.clone();
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
        let group = group.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(node, stream, group.as_deref()).await {
                tracing::debug!(error = %e, "api connection ended with an error");
            }
        });
    }
}

fn permitted(uid: u32, gid: u32, group: Option<&str>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(group) = group else { return false };
    let Ok(Some(g)) = nix::unistd::Group::from_name(group) else {
        return false;
    };
    if g.gid.as_raw() == gid {
        return true;
    }
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => g.mem.contains(&user.name),
        _ => false,
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

async fn handle(node: Arc<Node>, stream: UnixStream, group: Option<&str>) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (mut stream, line, fds) = read_request(stream).await?;
    if !permitted(cred.uid(), cred.gid(), group) {
        let hint = match group {
            Some(g) => format!("run gear as root or as a member of the {g} group"),
            None => "run gear as root (sudo), or have the operator set operator-group in the node's configuration".into(),
        };
        return send(
            &mut stream,
            &Reply::Error(ApiError::new(
                ErrorKind::Denied,
                format!("uid {} may not use this node; {hint}", cred.uid()),
            )),
        )
        .await;
    }
    let request: Request = match crate::api::decode_request(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut stream, &Reply::Error(e)).await,
    };
    // the request itself may carry secrets (env values): log only at debug
    tracing::debug!(uid = cred.uid(), ?request, "request");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
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
    let work = dispatch(node, request, fds, tx);
    tokio::pin!(work);
    let progress = |text| Reply::Event(Event::Progress(text));
    let reply = loop {
        tokio::select! {
            reply = &mut work => break reply,
            Some(event) = rx.recv() => {
                // the caller going away does not cancel an operation half-way
                let _ = send(&mut stream, &progress(event)).await;
            }
        }
    };
    while let Ok(event) = rx.try_recv() {
        let _ = send(&mut stream, &progress(event)).await;
    }
    send(&mut stream, &reply).await
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
            return send(stream, &end).await;
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
    request: Request,
    fds: Vec<OwnedFd>,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
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
            answer::<ops::CartridgeInstall>(node.cartridge_install(&op.dir))
        }
        Request::CartridgeList(_) => answer::<ops::CartridgeList>(Ok(node.cartridge_list())),
        Request::CartridgeRemove(op) => {
            answer::<ops::CartridgeRemove>(node.cartridge_remove(&op.name))
        }
        Request::Create(op) => {
            answer::<ops::Create>(node.create(&op.gear, &op.cartridge, op.disk).await)
        }
        Request::List(_) => answer::<ops::List>(Ok(node.list())),
        Request::Show(op) => answer::<ops::Show>(node.show(&op.gear)),
        Request::Destroy(op) => answer::<ops::Destroy>(node.destroy(&op.gear, p).await),
        Request::Deploy(op) => answer::<ops::Deploy>(node.deploy(&op.gear, &op.source, p).await),
        Request::Build(op) => answer::<ops::Build>(node.build(&op.gear).await),
        Request::Start(op) => answer::<ops::Start>(node.start(&op.gear, p).await),
        Request::Stop(op) => answer::<ops::Stop>(node.stop(&op.gear).await),
        Request::Restart(op) => answer::<ops::Restart>(node.restart(&op.gear, p).await),
        Request::Status(op) => answer::<ops::Status>(node.status(&op.gear)),
        Request::Control(op) => {
            answer::<ops::Control>(node.control(&op.gear, &op.action, op.args).await)
        }
        Request::Deployments(op) => answer::<ops::Deployments>(node.deployments(&op.gear)),
        Request::Rollback(op) => answer::<ops::Rollback>(node.rollback(&op.gear, op.id, p).await),
        Request::EnvSet(op) => answer::<ops::EnvSet>(node.env_set(&op.gear, op.vars).await),
        Request::EnvUnset(op) => answer::<ops::EnvUnset>(node.env_unset(&op.gear, op.keys).await),
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
        Request::Idle(op) => answer::<ops::Idle>(node.idle(&op.gear).await),
        Request::Unidle(op) => answer::<ops::Unidle>(node.unidle(&op.gear, p).await),
        Request::Metrics(_) => answer::<ops::Metrics>(Ok(reply::MetricsText {
            text: crate::frontend::render_metrics(&node),
        })),
        Request::Logs(_) => Reply::Error(ApiError::new(
            ErrorKind::Invalid,
            "logs are streamed separately",
        )),
        Request::Exec(op) => answer::<ops::Exec>(exec(&node, op, fds).await),
    }
}

/// `exec`: the caller's stdio came as descriptors with the request.
async fn exec(node: &Node, op: ops::Exec, fds: Vec<OwnedFd>) -> Result<reply::ExecEnd, ApiError> {
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
    node.exec(&op.gear, op.argv, [stdin, stdout, stderr], resized)
        .await
}
