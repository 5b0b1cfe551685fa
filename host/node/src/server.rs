//! The node API server: a unix socket only root (and the operator group) may
//! use; one request per connection, answered with event lines and one result.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use crate::api::{ApiError, ErrorKind, MAX_REQUEST, Reply, Request};
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
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
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
    if let Request::Logs {
        gear,
        lines,
        follow,
        hooks,
        access,
    } = &request
    {
        let which = match (*hooks, *access) {
            (_, true) => LogKind::Access,
            (true, false) => LogKind::Hooks,
            (false, false) => LogKind::App,
        };
        return stream_logs(&node, &mut stream, gear, *lines, *follow, which).await;
    }
    let work = dispatch(node, request, fds, tx);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            Some(event) = rx.recv() => {
                // the caller going away does not cancel an operation half-way
                let _ = send(&mut stream, &Reply::Event(event)).await;
            }
        }
    };
    while let Ok(event) = rx.try_recv() {
        let _ = send(&mut stream, &Reply::Event(event)).await;
    }
    let reply = match result {
        Ok(v) => Reply::Ok(v),
        Err(e) => Reply::Error(e),
    };
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
        send(stream, &Reply::Event(line)).await?;
    }
    if !follow {
        return send(stream, &Reply::Ok(serde_json::Value::Null)).await;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (new, next) = logs::read_from(&path, offset)?;
        offset = next;
        for line in new {
            send(stream, &Reply::Event(line)).await?;
        }
        if node.log_path(gear, which).is_err() {
            return send(stream, &Reply::Ok(serde_json::Value::Null)).await;
        }
    }
}

async fn dispatch(
    node: Arc<Node>,
    request: Request,
    fds: Vec<OwnedFd>,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<serde_json::Value, ApiError> {
    let p = &progress;
    match request {
        Request::Ping => Ok(serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "state_dir": node.config().state_dir,
            "domain": node.config().domain,
            "frontend": node.frontend_addr(),
            "metrics": node.metrics_addr(),
        })),
        Request::CartridgeInstall { dir } => node.cartridge_install(&dir),
        Request::CartridgeList => Ok(node.cartridge_list()),
        Request::CartridgeRemove { name } => node.cartridge_remove(&name),
        Request::Create { gear, cartridge } => node.create(&gear, &cartridge).await,
        Request::List => Ok(node.list()),
        Request::Show { gear } => node.show(&gear),
        Request::Destroy { gear } => node.destroy(&gear, p).await,
        Request::Deploy { gear, source } => node.deploy(&gear, &source, p).await,
        Request::Build { gear } => node.build(&gear).await,
        Request::Start { gear } => node.start(&gear, p).await,
        Request::Stop { gear } => node.stop(&gear).await,
        Request::Restart { gear } => node.restart(&gear, p).await,
        Request::Status { gear } => node.status(&gear),
        Request::Control { gear, action, args } => node.control(&gear, &action, args).await,
        Request::Deployments { gear } => node.deployments(&gear),
        Request::Rollback { gear, id } => node.rollback(&gear, id, p).await,
        Request::EnvSet { gear, vars } => node.env_set(&gear, vars).await,
        Request::EnvUnset { gear, keys } => node.env_unset(&gear, keys).await,
        Request::EnvList { gear } => node.env_list(&gear),
        Request::Link { gear, to } => node.link(&gear, &to).await,
        Request::Unlink { gear, to } => node.unlink(&gear, &to).await,
        Request::AliasAdd { gear, hostname } => node.alias_add(&gear, &hostname).await,
        Request::AliasRemove { gear, hostname } => node.alias_remove(&gear, &hostname).await,
        Request::AliasList { gear } => node.alias_list(&gear),
        Request::Idle { gear } => node.idle(&gear).await,
        Request::Unidle { gear } => node.unidle(&gear, p).await,
        Request::Metrics => Ok(serde_json::json!({
            "text": crate::frontend::render_metrics(&node),
        })),
        Request::Logs { .. } => Err(ApiError::new(
            ErrorKind::Invalid,
            "logs are streamed separately",
        )),
        Request::Exec { gear, argv } => {
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
            node.exec(&gear, argv, [stdin, stdout, stderr], resized)
                .await
        }
    }
}
