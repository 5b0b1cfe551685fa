//! Node-to-node requests: any node of a cluster answers for any gear. A
//! request that names a gear another node holds is forwarded to that node
//! over an authenticated connection ([`wire`]) and its answer — progress
//! lines, log lines, the result — relayed back as it comes; a deploy's
//! archive travels with it. The node that holds the gear decides and does
//! everything (authorization, the work, the audit record) exactly as for a
//! local caller: the forwarding node only vouches for who the caller is, and
//! only a node holding the cluster's secret can vouch.

pub mod wire;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::api::{ApiError, ErrorKind, Reply, Request};
use crate::node::Node;
use crate::tenancy::{Caller, SshRole};
use wire::Kind;

/// How long a peer has to complete its handshake.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// How long connecting to a peer may take.
const CONNECT: Duration = Duration::from_secs(3);
/// The largest `gear list` answer taken from another node (a list of ten
/// thousand gears is a few MiB).
const MAX_LIST_ANSWER: usize = 64 << 20;

/// A forwarded request: who calls (as the forwarding node established it)
/// and the request line as the caller sent it.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    uid: u32,
    user: String,
    operator: bool,
    /// The request line.
    line: String,
    /// A deploy's (or a restore's) archive follows as data frames.
    archive: bool,
    /// The request writes a file for the caller (a snapshot): it comes back
    /// as output frames.
    #[serde(default)]
    output: bool,
    /// The node asks for its half of an operation between nodes (a move),
    /// for the caller it names.
    #[serde(default)]
    node: bool,
}

/// Where a gear's node is reached.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The node's name.
    pub name: String,
    /// Its `cluster.listen` address.
    pub listen: String,
    /// Whether it holds a live lease.
    pub up: bool,
    /// Why the gear is lost, when its node died with it (see failover).
    pub lost: Option<String>,
}

impl Owner {
    /// Cluster member `m` as where a request goes.
    pub fn of(m: gearhost_cluster::Member) -> Owner {
        Owner {
            up: m.is_up(),
            name: m.advert.name,
            listen: m.advert.listen,
            lost: None,
        }
    }
}

/// The other node of the cluster that serves `request`: for a create, the
/// node it asks for (`--node`) or the one the placement policy picks; for a
/// request that names a gear, the node holding it. `None`: this node serves
/// it (it is not in a cluster, holds the gear, or the gear is nowhere).
pub async fn route(node: &Node, request: &Request) -> Result<Option<Owner>, ApiError> {
    let invalid = |m: String| ApiError::new(ErrorKind::Invalid, m);
    let Some(cluster) = node.cluster() else {
        if let Request::Create(op) = request
            && op.node.is_some()
        {
            return Err(invalid(
                "this node is not in a cluster, so there is no other node to place the gear on; leave out --node".into(),
            ));
        }
        return Ok(None);
    };
    // the halves of moves and failover a node asks of this one are this node's to serve
    if matches!(
        request,
        Request::Receive(_) | Request::Replicate(_) | Request::Recover(_)
    ) {
        return Ok(None);
    }
    if let Request::Create(op) = request {
        let chosen = match &op.node {
            Some(name) => name.clone(),
            None => cluster
                .choose_node()
                .await
                .map_err(crate::cluster::api_error)?,
        };
        if chosen == cluster.node() {
            return Ok(None);
        }
        let member = cluster
            .member(&chosen)
            .await
            .map_err(crate::cluster::api_error)?
            .ok_or_else(|| {
                invalid(format!(
                    "the cluster has no node {chosen}; see `gear node list`"
                ))
            })?;
        return Ok(Some(Owner::of(member)));
    }
    Ok(owner_of(node, cluster, request).await)
}

/// The node holding the gear `request` names, when that is another node.
async fn owner_of(
    node: &Node,
    cluster: &gearhost_cluster::Cluster,
    request: &Request,
) -> Option<Owner> {
    let gear = crate::tenancy::gear_of(request)?;
    if node.find(gear).is_ok() {
        return None;
    }
    let placed = cluster
        .placement_by_name(&gear.namespace, &gear.name)
        .await
        .ok()??;
    if placed.node == cluster.node() {
        return None;
    }
    // a gear lost with its node is restored on whichever node is asked
    if placed.lost.is_some() && matches!(request, Request::Restore(_)) {
        return None;
    }
    let member = cluster.member(&placed.node).await.ok()??;
    Some(Owner {
        lost: placed.lost,
        ..Owner::of(member)
    })
}

async fn reply_error(stream: &mut UnixStream, e: ApiError) -> std::io::Result<()> {
    stream.write_all(&Reply::Error(e).encode()).await
}

/// Forwards the request `line` of `caller` (with its descriptors) to
/// `owner`, relaying the answer to the caller's `stream`.
pub async fn forward(
    node: &Node,
    owner: Owner,
    caller: &Caller,
    request: &Request,
    line: &[u8],
    fds: Vec<OwnedFd>,
    mut stream: UnixStream,
) -> std::io::Result<()> {
    let unreachable = |why: String| {
        ApiError::new(
            ErrorKind::Failed,
            format!(
                "the gear lives on node {} ({}), which {why}; try again when it is back, or ask an operator (gear node list)",
                owner.name, owner.listen
            ),
        )
    };
    if let Some(why) = &owner.lost {
        let e = ApiError::new(ErrorKind::Failed, format!("gear lost: {why}"));
        return reply_error(&mut stream, e).await;
    }
    if !owner.up {
        let e = unreachable("is down (its lease expired)".into());
        return reply_error(&mut stream, e).await;
    }
    // one descriptor travels as a stream: an archive in, a snapshot out
    let archive = matches!(request, Request::Deploy(_) | Request::Restore(_)) && fds.len() == 1;
    let output = matches!(request, Request::Snapshot(_)) && fds.len() == 1;
    if !fds.is_empty() && !archive && !output {
        let e = ApiError::new(
            ErrorKind::Invalid,
            format!(
                "this command passes the node open files (a terminal, standard input), which cannot travel between nodes; run it against node {}, which holds the gear",
                owner.name
            ),
        );
        return reply_error(&mut stream, e).await;
    }
    let (mut tcp_r, mut tcp_w, mut inn, mut out) =
        match connect(node, &owner, caller, line, (archive, output)).await {
            Ok(c) => c,
            Err(e) => {
                let e = unreachable(format!("could not be reached: {e}"));
                return reply_error(&mut stream, e).await;
            }
        };
    let (mut client_r, mut client_w) = stream.into_split();
    let (fds, mut written) = if output {
        let file = fds.into_iter().next().map(std::fs::File::from);
        (Vec::new(), file.map(tokio::fs::File::from_std))
    } else {
        (fds, None)
    };
    // the archive goes first; then the connection stays open until the
    // caller goes away (which the other node sees as its caller going away)
    let sender = tokio::spawn(async move {
        if let Some(fd) = fds.into_iter().next() {
            let mut pipe = tokio::fs::File::from_std(std::fs::File::from(fd));
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = pipe.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                out.send(&mut tcp_w, Kind::Data, &buf[..n]).await?;
            }
            out.send(&mut tcp_w, Kind::End, &[]).await?;
        }
        let mut sink = [0u8; 256];
        while client_r.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        drop(tcp_w);
        Ok::<_, std::io::Error>(())
    });
    loop {
        match inn.receive(&mut tcp_r).await {
            Ok((Kind::Data, bytes)) => {
                if client_w.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            // a file written for the caller: into its pipe (a caller that
            // stopped reading it gets no more, the answer still comes)
            Ok((Kind::Output, bytes)) => {
                if let Some(file) = written.as_mut()
                    && file.write_all(&bytes).await.is_err()
                {
                    written = None;
                }
            }
            Ok((Kind::OutputEnd, _)) => {
                if let Some(mut file) = written.take() {
                    let _ = file.flush().await;
                }
            }
            _ => break,
        }
    }
    sender.abort();
    Ok(())
}

/// An archive a node sends with its request.
pub type Archive = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// This node's own request to `owner` (its half of an operation between
/// nodes, for `caller`), with the archive read from `archive`, if any, as its
/// one stream; the other node's progress lines go to `progress`. Returns the
/// answer and the archive's size in bytes.
pub async fn ask_as_node(
    node: &Node,
    owner: &Owner,
    caller: &Caller,
    request: &Request,
    archive: Option<Archive>,
    progress: &crate::node::Progress,
) -> Result<(serde_json::Value, u64), ApiError> {
    let failed = |why: String| {
        ApiError::new(
            ErrorKind::Failed,
            format!("node {} ({}) {why}", owner.name, owner.listen),
        )
    };
    let line = crate::api::encode_request(request);
    let (mut tcp_r, mut tcp_w, mut inn, mut out) =
        connect_as(node, owner, caller, &line, (archive.is_some(), false, true))
            .await
            .map_err(|e| failed(format!("could not be reached: {e}")))?;
    // the archive goes as it is read; the connection stays open after it
    // until the answer is in (a closed connection is a caller gone away)
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        let Some(mut archive) = archive else {
            return Ok((sent, tcp_w));
        };
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = archive.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            sent += n as u64;
            out.send(&mut tcp_w, Kind::Data, &buf[..n]).await?;
        }
        out.send(&mut tcp_w, Kind::End, &[]).await?;
        Ok::<_, std::io::Error>((sent, tcp_w))
    });
    let mut text: Vec<u8> = Vec::new();
    let mut answer = None;
    while answer.is_none() {
        let bytes = match inn.receive(&mut tcp_r).await {
            Ok((Kind::Data, bytes)) => bytes,
            Ok(_) => break,
            Err(e) => {
                sender.abort();
                return Err(failed(format!("broke the connection: {e}")));
            }
        };
        text.extend_from_slice(&bytes);
        while let Some(end) = text.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = text.drain(..=end).collect();
            match Reply::decode(&String::from_utf8_lossy(&line)) {
                Ok(Reply::Event(crate::api::Event::Progress(said))) => {
                    let _ = progress.send(format!("{}: {said}", owner.name));
                }
                Ok(Reply::Event(_)) => {}
                Ok(Reply::Ok(value)) => answer = Some(Ok(value)),
                Ok(Reply::Error(e)) => answer = Some(Err(e)),
                Err(e) => answer = Some(Err(failed(format!("sent an unreadable answer: {e}")))),
            }
        }
    }
    let value = match answer {
        Some(Ok(value)) => value,
        Some(Err(e)) => {
            sender.abort();
            return Err(e);
        }
        None => {
            sender.abort();
            return Err(failed("closed the connection without an answer".into()));
        }
    };
    // it answered once the whole archive was in
    match sender.await {
        Ok(Ok((sent, _))) => Ok((value, sent)),
        Ok(Err(e)) => Err(failed(format!("did not take the whole archive: {e}"))),
        Err(e) => Err(failed(format!("did not take the whole archive: {e}"))),
    }
}

/// A connection to another node: its two halves and the sealers of the two
/// directions (what this node reads, what it writes).
type Connected = (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
    wire::Sealer,
    wire::Sealer,
);

/// Opens an authenticated connection to `owner` and sends `caller`'s
/// request `line` (`streams`: an archive follows as data; a file comes back
/// as output).
async fn connect(
    node: &Node,
    owner: &Owner,
    caller: &Caller,
    line: &[u8],
    (archive, output): (bool, bool),
) -> std::io::Result<Connected> {
    connect_as(node, owner, caller, line, (archive, output, false)).await
}

/// [`connect`], saying whether the node itself asks (`as_node`: its half of
/// an operation between nodes).
async fn connect_as(
    node: &Node,
    owner: &Owner,
    caller: &Caller,
    line: &[u8],
    (archive, output, as_node): (bool, bool, bool),
) -> std::io::Result<Connected> {
    let (Some(cluster), Some(secret)) = (node.cluster(), node.cluster_secret()) else {
        return Err(std::io::Error::other("this node is not in a cluster"));
    };
    let mut tcp = tokio::time::timeout(CONNECT, TcpStream::connect(&owner.listen))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    let _ = tcp.set_nodelay(true);
    let wire::Session { mut out, inn, .. } =
        tokio::time::timeout(HANDSHAKE, wire::connect(&mut tcp, &secret, cluster.node()))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no handshake in time")
            })??;
    let envelope = Envelope {
        uid: caller.uid,
        user: caller.user.clone(),
        operator: caller.operator,
        line: String::from_utf8_lossy(line.split(|b| *b == b'\n').next().unwrap_or(line))
            .into_owned(),
        archive,
        output,
        node: as_node,
    };
    let (tcp_r, mut tcp_w) = tcp.into_split();
    out.send(
        &mut tcp_w,
        Kind::Envelope,
        &serde_json::to_vec(&envelope).unwrap_or_default(),
    )
    .await?;
    Ok((tcp_r, tcp_w, inn, out))
}

/// `gear list` in a cluster: the caller's gears on this node (`local`) and
/// on every other live node, each marked with its node. A node that is down
/// or does not answer is named in a progress line; its gears are left out.
pub async fn list_cluster(
    node: &Node,
    caller: &Caller,
    local: Vec<crate::api::reply::GearView>,
    progress: &mut Vec<String>,
) -> Vec<crate::api::reply::GearView> {
    let Some(cluster) = node.cluster() else {
        return local;
    };
    let members = match cluster.members().await {
        Ok(m) => m,
        Err(e) => {
            progress.push(format!("only this node's gears: {e}"));
            return local;
        }
    };
    let line = crate::api::encode_request(&Request::List(crate::api::ops::List {}));
    let asks = members
        .into_iter()
        .filter(|m| m.advert.name != cluster.node())
        .map(|m| {
            let owner = Owner::of(m);
            let line = line.clone();
            async move {
                if !owner.up {
                    return Err(format!(
                        "node {} is down; its gears are not listed",
                        owner.name
                    ));
                }
                let asked = async {
                    let (mut r, _w, mut inn, _out) =
                        connect(node, &owner, caller, &line, (false, false)).await?;
                    let mut text = Vec::new();
                    while let (Kind::Data, bytes) = inn.receive(&mut r).await? {
                        if text.len() + bytes.len() > MAX_LIST_ANSWER {
                            return Err(std::io::Error::other(format!(
                                "its list is larger than {} MiB",
                                MAX_LIST_ANSWER >> 20
                            )));
                        }
                        text.extend_from_slice(&bytes);
                    }
                    Ok::<_, std::io::Error>(text)
                };
                let text = tokio::time::timeout(Duration::from_secs(10), asked)
                    .await
                    .map_err(|_| format!("node {} did not answer in time", owner.name))?
                    .map_err(|e| format!("node {} did not answer: {e}", owner.name))?;
                let last = String::from_utf8_lossy(&text)
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
                    .unwrap_or_default();
                match Reply::decode(&last) {
                    Ok(Reply::Ok(value)) => {
                        crate::api::decode_answer::<crate::api::ops::List>(value)
                            .map_err(|e| format!("node {}: {}", owner.name, e.message))
                    }
                    Ok(Reply::Error(e)) => Err(format!("node {}: {}", owner.name, e.message)),
                    _ => Err(format!("node {} sent no answer", owner.name)),
                }
            }
        });
    let mut all = local;
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(views) => all.extend(views),
            Err(note) => progress.push(note),
        }
    }
    all
}

/// Serves other nodes' forwarded requests on `listener` for as long as the
/// node runs.
pub async fn serve(node: Arc<Node>, listener: TcpListener, secret: Arc<[u8]>) {
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the cluster listener cannot accept a connection now; trying again");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let node = node.clone();
        let secret = secret.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_peer(node, tcp, &secret).await {
                tracing::warn!(%from, error = %e, "a node-to-node connection failed");
            }
        });
    }
}

async fn serve_peer(node: Arc<Node>, mut tcp: TcpStream, secret: &[u8]) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let session = tokio::time::timeout(HANDSHAKE, wire::accept(&mut tcp, secret))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no handshake in time"))??;
    let wire::Session {
        mut out,
        mut inn,
        peer,
    } = session;
    let (kind, payload) = inn.receive(&mut tcp).await?;
    if kind != Kind::Envelope {
        return Err(std::io::Error::other("a peer sent data before its request"));
    }
    let envelope: Envelope = serde_json::from_slice(&payload).map_err(std::io::Error::other)?;
    let caller = Caller {
        uid: envelope.uid,
        user: envelope.user,
        operator: envelope.operator,
        ssh: if envelope.node {
            SshRole::Node
        } else {
            SshRole::Local
        },
    };
    tracing::debug!(%peer, user = %caller.user, "a request forwarded by another node");
    let (mine, theirs) = UnixStream::pair()?;
    let mut fds = Vec::new();
    let archive = if envelope.archive {
        let (read, write) = std::io::pipe()?;
        fds.push(OwnedFd::from(read));
        Some(tokio::fs::File::from_std(std::fs::File::from(
            OwnedFd::from(write),
        )))
    } else {
        None
    };
    // a file the request writes for the caller, read here and sent back
    let mut written = if envelope.output {
        let (read, write) = std::io::pipe()?;
        fds.push(OwnedFd::from(write));
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        tokio::task::spawn_blocking(move || {
            let mut read = read;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                match std::io::Read::read(&mut read, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Some(rx)
    } else {
        None
    };
    let (tcp_r, mut tcp_w) = tcp.into_split();
    let (mut theirs_r, theirs_w) = theirs.into_split();
    // what the other node sends: the archive, then nothing until its caller goes away
    let receiver = tokio::spawn(async move {
        let mut tcp_r = tcp_r;
        if let Some(mut pipe) = archive {
            while let (Kind::Data, bytes) = inn.receive(&mut tcp_r).await? {
                pipe.write_all(&bytes).await?;
            }
            pipe.flush().await?;
            drop(pipe);
        }
        let mut sink = [0u8; 256];
        while tcp_r.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        drop(theirs_w);
        Ok::<_, std::io::Error>(())
    });
    let line = envelope.line.into_bytes();
    let served = tokio::spawn(crate::server::serve_line(node, caller, line, fds, mine));
    let mut buf = vec![0u8; 64 << 10];
    let mut answered = false;
    while !answered || written.is_some() {
        tokio::select! {
            n = theirs_r.read(&mut buf), if !answered => {
                match n? {
                    0 => answered = true,
                    n => out.send(&mut tcp_w, Kind::Data, &buf[..n]).await?,
                }
            }
            chunk = async { written.as_mut()?.recv().await }, if written.is_some() => {
                match chunk {
                    Some(bytes) => out.send(&mut tcp_w, Kind::Output, &bytes).await?,
                    None => {
                        out.send(&mut tcp_w, Kind::OutputEnd, &[]).await?;
                        written = None;
                    }
                }
            }
        }
    }
    out.send(&mut tcp_w, Kind::End, &[]).await?;
    receiver.abort();
    let _ = served.await;
    Ok(())
}
