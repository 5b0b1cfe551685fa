//! Links between gears: `gear link APP DB` is the one way an app gear gets to
//! a service gear (a database) of the same namespace.
//!
//! The service keeps its own gear: its own uid, MCS label, cgroup limits and
//! lifecycle. A link adds two things to APP and nothing to DB:
//!
//! - a **proxy**: the node listens on `127.0.0.1:<port>` inside APP's network
//!   namespace, where `<port>` is DB's primary endpoint, and forwards each
//!   connection it accepts to the same port on DB's loopback, through a
//!   socket it opens inside DB's network namespace. No routes, veths or
//!   shared namespaces: a gear without a link has no path to DB at all;
//! - an **environment layer** ("linked"): the values of the variables DB's
//!   cartridge publishes (`[publish] env` in its manifest), read from DB's
//!   environment whenever APP's environment is computed, so every start of
//!   APP (and every `gear exec`) sees DB's current values.
//!
//! Links are stored in APP's record and the proxies are opened again when
//! the node starts. A gear others are linked to cannot be destroyed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{ApiError, ErrorKind, GearRef, reply};
use crate::node::{ApiResult, Gear, Node, internal, invalid};
use crate::state::{self, GearRecord, Link};
use gearhost_sys::lock::lock;

/// How long the proxy waits for the linked gear to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection waits for a linked gear the node is restarting
/// (a database restarting in place is not refused, its clients wait).
const MOST_HOLD: Duration = Duration::from_secs(30);

/// Something went wrong with a link's proxy.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Something inside the gear already listens on the port.
    #[error(
        "something inside gear {gear} already listens on port {port}; stop it (or move it to another port) and link again"
    )]
    PortTaken {
        /// The gear.
        gear: String,
        /// The port.
        port: u16,
    },
    /// The listener could not be made.
    #[error("cannot listen on 127.0.0.1:{port} inside gear {gear}: {source}")]
    Listen {
        /// The gear.
        gear: String,
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One link's proxy: a listener task and its connections. Dropping it closes
/// the listener and cuts every connection made through it.
#[derive(Debug)]
struct Proxy {
    /// Dropped with the proxy, which ends every connection task.
    _stop: watch::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// How the keeper knows the link, when the node has one.
    kept: Option<Kept>,
}

/// A link as the keeper knows it: its listener (a copy of which the keeper
/// holds, so connections wait while no node runs) and its connections' tag.
#[derive(Debug)]
struct Kept {
    listener: String,
    tag: String,
    socket: std::os::fd::OwnedFd,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The node's open link proxies, by (linking gear id, linked gear id).
#[derive(Debug, Default)]
pub struct Links {
    proxies: Mutex<BTreeMap<(String, String), Proxy>>,
}

impl Links {
    /// Records an open proxy; the keeper keeps a copy of its listener.
    fn insert(&self, from: &str, to: &str, proxy: Proxy) {
        if let (Some(kept), Some(keeper)) = (&proxy.kept, crate::keeper::get()) {
            use std::os::fd::AsFd;
            keeper.store(&kept.listener, kept.socket.as_fd());
        }
        lock(&self.proxies).insert((from.to_string(), to.to_string()), proxy);
    }

    /// Close the proxy of the link from `from` to `to`, if open.
    fn close(&self, from: &str, to: &str) {
        let proxy = lock(&self.proxies).remove(&(from.to_string(), to.to_string()));
        if let Some(p) = proxy {
            p.unkeep();
        }
    }

    /// Close every proxy of links made by gear `from` (it is being destroyed).
    pub fn close_from(&self, from: &str) {
        let closed: Vec<Proxy> = {
            let mut proxies = lock(&self.proxies);
            let keys: Vec<_> = proxies.keys().filter(|(f, _)| f == from).cloned().collect();
            keys.iter().filter_map(|k| proxies.remove(k)).collect()
        };
        for p in closed {
            p.unkeep();
        }
    }
}

impl Proxy {
    /// The link is removed: the keeper closes its listener and cuts its
    /// connections (the node's own end with the proxy).
    fn unkeep(self) {
        if let (Some(kept), Some(keeper)) = (&self.kept, crate::keeper::get()) {
            keeper.forget(&kept.listener);
            keeper.cut(&kept.tag);
        }
    }
}

/// The gear a proxy's connections count against (the one it listens in:
/// see [`crate::conns`]), and where a refusal is logged.
#[derive(Debug)]
pub(crate) struct Payer {
    pub admission: Arc<crate::conns::Admission>,
    pub gear: Arc<crate::conns::GearConnections>,
    pub log: Option<crate::logs::LogFile>,
}

impl Payer {
    fn of(node: &Node, gear: &Gear) -> Payer {
        Payer {
            admission: node.admission.clone(),
            gear: gear.conns.clone(),
            log: Some(gear.hook_log.clone()),
        }
    }
}

/// Listen on `127.0.0.1:port` inside `from_netns` and forward every
/// connection to `127.0.0.1:port` inside `to_netns`, each counted against
/// `payer`'s connections. With `to`, the gear inside `to_netns`: while the
/// node restarts it, connections wait for it instead of being refused, and
/// they reach its app on the slot it serves from. With `ids` (the two
/// gears' ids) and a keeper, the listener is the one the keeper kept for the
/// link if it has one, and connections are handed to the keeper once made.
#[allow(clippy::too_many_arguments)]
async fn open_proxy(
    from_name: &str,
    from_netns: PathBuf,
    to_name: &str,
    to_netns: PathBuf,
    port: u16,
    payer: Payer,
    to: Option<Weak<Gear>>,
    ids: Option<(&str, &str)>,
) -> Result<Proxy, LinkError> {
    let listen_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            LinkError::PortTaken {
                gear: from_name.to_string(),
                port,
            }
        } else {
            LinkError::Listen {
                gear: from_name.to_string(),
                port,
                source,
            }
        }
    };
    let keeper = ids.and(crate::keeper::get());
    let name = ids.map(|(from, to)| crate::keeper::link_listener(from, to, port));
    let tag = ids.map(|(from, to)| crate::keeper::link_tag(from, to));
    // the listener the keeper held for the link while no node ran
    let kept = keeper.zip(name.as_deref()).and_then(|(k, name)| {
        k.take(name, |fd| {
            crate::listeners::listens_at(fd, Some(([127, 0, 0, 1], port).into()))
        })
    });
    let listener = match kept {
        Some(fd) => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map_err(listen_err)?;
            l
        }
        None => tokio::task::spawn_blocking(move || {
            let l = gearhost_sandbox::netns::listen(&from_netns, ([127, 0, 0, 1], port).into())?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })
        .await
        .map_err(|e| listen_err(std::io::Error::other(e)))?
        .map_err(listen_err)?,
    };
    let kept = match (name, &tag) {
        (Some(listener_name), Some(tag)) if keeper.is_some() => Some(Kept {
            listener: listener_name,
            tag: tag.clone(),
            socket: std::os::fd::OwnedFd::from(listener.try_clone().map_err(listen_err)?),
        }),
        _ => None,
    };
    let listener = tokio::net::TcpListener::from_std(listener).map_err(listen_err)?;
    let (stop, stopped) = watch::channel(());
    let label = format!("{from_name}->{to_name}:{port}");
    let task = tokio::spawn(accept_loop(
        listener,
        to_netns,
        port,
        stopped,
        label,
        payer,
        to,
        tag.filter(|_| keeper.is_some()),
    ));
    Ok(Proxy {
        _stop: stop,
        task,
        kept,
    })
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: tokio::net::TcpListener,
    to_netns: PathBuf,
    port: u16,
    stopped: watch::Receiver<()>,
    label: String,
    payer: Payer,
    to: Option<Weak<Gear>>,
    tag: Option<String>,
) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let slot = match payer.admission.admit(&payer.gear) {
                    Ok(slot) => slot,
                    Err((why, first)) => {
                        if first && let Some(log) = &payer.log {
                            log.line(
                                "link[node]",
                                &format!("closed a connection to {label}: {why}"),
                            );
                        }
                        continue;
                    }
                };
                let to_netns = to_netns.clone();
                let mut stopped = stopped.clone();
                let label = label.clone();
                let to = to.clone();
                let tag = tag.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        r = forward(client, to_netns, port, to, slot, tag) => {
                            if let Err(e) = r {
                                tracing::debug!(link = %label, error = %e, "linked connection ended");
                            }
                        }
                        // the link was removed: cut the connection
                        _ = stopped.changed() => {}
                    }
                });
            }
            Err(e) => {
                // out of descriptors and the like: back off instead of spinning
                tracing::warn!(link = %label, error = %e, "cannot accept a linked connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connects `client` to the linked gear and splices them: in the keeper when
/// there is a `tag` for it there (`slot` is then freed when the keeper
/// reports the end), else here.
async fn forward(
    mut client: tokio::net::TcpStream,
    to_netns: PathBuf,
    port: u16,
    to: Option<Weak<Gear>>,
    slot: crate::conns::Slot,
    tag: Option<String>,
) -> std::io::Result<()> {
    let began = std::time::Instant::now();
    // a gear the node is about to restart is not connected to: the
    // connection would end with the old server a moment later
    while let Some(gear) = to.as_ref().and_then(Weak::upgrade) {
        if !restarting(&gear) || began.elapsed() >= MOST_HOLD {
            break;
        }
        drop(gear);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let upstream = loop {
        let gear = to.as_ref().and_then(Weak::upgrade);
        let port = gear.as_ref().map_or(port, |g| {
            gearhost_runtime::manifest::slot_port(port, g.front.live.get())
        });
        let netns = to_netns.clone();
        let connected = tokio::task::spawn_blocking(move || {
            gearhost_sandbox::netns::connect(&netns, ([127, 0, 0, 1], port).into(), CONNECT_TIMEOUT)
        })
        .await
        .map_err(std::io::Error::other)?;
        match connected {
            Ok(stream) => break stream,
            Err(e) => {
                if !gear.is_some_and(|g| restarting(&g)) || began.elapsed() >= MOST_HOLD {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    upstream.set_nonblocking(true)?;
    let mut upstream = tokio::net::TcpStream::from_std(upstream)?;
    // small request/response protocols (SQL) must not wait for Nagle
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let mut slot = Some(slot);
    if let (Some(tag), Some(keeper)) = (tag, crate::keeper::get()) {
        use std::os::fd::AsFd;
        let held = slot.take();
        let ended: crate::keeper::OnClose = Box::new(move || drop(held));
        match keeper.splice(tag, client.as_fd(), upstream.as_fd(), &[], &[], None, ended) {
            Ok(()) => return Ok(()),
            Err(ended) => ended(),
        }
    }
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    drop(slot);
    Ok(())
}

/// Whether the node is bringing `gear` back: it is starting or stopping, or
/// its requests are held (a restart, an idling, a wake-up).
fn restarting(gear: &Gear) -> bool {
    use crate::state::GearState;
    matches!(gear.state(), GearState::Starting | GearState::Stopping)
        || gear.front.closing.load(std::sync::atomic::Ordering::SeqCst)
        || lock(&gear.front.waking).is_some()
}

/// A gear linked to another one, for views and messages.
#[derive(Debug, Clone)]
pub struct LinkedGear {
    /// The gear's id.
    pub id: String,
    /// The gear's name.
    pub name: String,
}

/// Lock the operations of two gears, always in the same order (by id), so
/// two requests locking the same pair never deadlock.
async fn lock_both<'a>(
    a: &'a Gear,
    a_id: &str,
    b: &'a Gear,
    b_id: &str,
) -> (crate::oplock::OpGuard<'a>, crate::oplock::OpGuard<'a>) {
    if a_id < b_id {
        let ga = a.op.lock().await;
        let gb = b.op.lock().await;
        (ga, gb)
    } else {
        let gb = b.op.lock().await;
        let ga = a.op.lock().await;
        (ga, gb)
    }
}

impl Node {
    /// The linked layer of `r`'s environment: for each gear `r` is linked
    /// to, the variables its cartridge publishes, with that gear's current
    /// values (user over cartridge). Variables the linked gear has not set
    /// (yet) are left out.
    pub(crate) fn linked_env(&self, r: &GearRecord) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for link in &r.links {
            let Some(target) = lock(&self.gears).get(&link.gear).cloned() else {
                continue;
            };
            let t = target.record();
            let Ok(cart) = self.cartridge(&t.cartridge) else {
                continue;
            };
            for key in &cart.manifest().publish.env {
                if let Some(value) = t.user_env.get(key).or_else(|| t.cartridge_env.get(key)) {
                    env.insert(key.clone(), value.clone());
                }
            }
        }
        env
    }

    /// The gears linked to gear `id`, by name.
    pub(crate) fn linked_from(&self, id: &str) -> Vec<LinkedGear> {
        // from the table's index: asked before every idling, it must not look at every gear
        let mut from: Vec<LinkedGear> = lock(&self.gears)
            .linked_to(id)
            .into_iter()
            .map(|g| {
                let r = g.record();
                LinkedGear {
                    id: r.id,
                    name: r.name,
                }
            })
            .collect();
        from.sort_by(|a, b| a.name.cmp(&b.name));
        from
    }

    /// The links of `r`, for `gear show`.
    pub(crate) fn links_view(&self, r: &GearRecord) -> Vec<reply::LinkInfo> {
        let gears = lock(&self.gears).clone();
        r.links
            .iter()
            .map(|l| {
                let target = gears.get(&l.gear).map(|g| g.record());
                let env = target
                    .as_ref()
                    .and_then(|t| self.cartridge(&t.cartridge).ok())
                    .map(|c| c.manifest().publish.env.clone())
                    .unwrap_or_default();
                reply::LinkInfo {
                    gear: target.map_or_else(|| l.gear.clone(), |t| t.name),
                    port: l.port,
                    env,
                    created: l.created,
                }
            })
            .collect()
    }

    /// Open the proxies of every stored link (at node start: the previous
    /// node's listeners died with it). A link whose proxy cannot be opened
    /// is kept and reported in the gear's hook log; `gear unlink` and
    /// `gear link` again repair it.
    pub async fn restore_links(&self) {
        let gears: Vec<Arc<Gear>> = lock(&self.gears).values().cloned().collect();
        for g in &gears {
            let r = g.record();
            for link in &r.links {
                let Some(target) = lock(&self.gears).get(&link.gear).cloned() else {
                    tracing::warn!(gear = %r.name, link = %link.gear, "a link names a gear that no longer exists");
                    continue;
                };
                let t = target.record();
                match open_proxy(
                    &r.name,
                    g.paths.netns(),
                    &t.name,
                    target.paths.netns(),
                    link.port,
                    Payer::of(self, g),
                    Some(Arc::downgrade(&target)),
                    Some((&r.id, &t.id)),
                )
                .await
                {
                    Ok(proxy) => self.links.insert(&r.id, &t.id, proxy),
                    Err(e) => {
                        tracing::warn!(gear = %r.name, to = %t.name, error = %e, "cannot reopen a link");
                        g.hook_log.line(
                            "link[node]",
                            &format!("cannot reopen the link to {}: {e}", t.name),
                        );
                    }
                }
            }
        }
    }

    /// `gear link GEAR TO`: make `to`'s primary endpoint reachable on
    /// `gear`'s loopback and give `gear` what `to` publishes.
    pub async fn link(&self, gear: &GearRef, to: &GearRef) -> ApiResult<reply::Linked> {
        if gear.namespace != to.namespace {
            return Err(invalid(format!(
                "gears {} and {} are in different namespaces; only gears of one namespace can be linked",
                gear, to
            )));
        }
        if gear.name == to.name {
            return Err(invalid(format!(
                "gear {} cannot be linked to itself; name the gear it should reach, e.g. `gear link {} DB`",
                gear.name, gear.name
            )));
        }
        let app = self.find(gear)?;
        let db = self.find(to)?;
        let (app_id, db_id) = (app.record().id, db.record().id);
        let _ops = lock_both(&app, &app_id, &db, &db_id).await;
        // either may have been destroyed while we waited for its lock
        let app = self.find(gear)?;
        let db = self.find(to)?;
        // the gear linked to is reached through the link from now on: a
        // frozen one is thawed (and is not put to sleep again while linked)
        self.awake(&db, "it is linked to").await?;
        let (a, d) = (app.record(), db.record());
        let db_cart = self.cartridge(&d.cartridge)?;
        let db_manifest = db_cart.manifest();
        let endpoint = db_manifest.primary_endpoint().ok_or_else(|| {
            invalid(format!(
                "gear {}'s cartridge {} declares no endpoint, so there is nothing to link to",
                d.name, d.cartridge
            ))
        })?;
        let port = endpoint.private_port;
        if let Some(link) = a.links.iter().find(|l| l.gear == d.id) {
            return Ok(reply::Linked {
                note: Some(format!(
                    "gear {} is already linked to {}; nothing was changed",
                    a.name, d.name
                )),
                gear: a.name,
                to: d.name,
                port: link.port,
                env: db_manifest.publish.env.clone(),
                unchanged: true,
            });
        }
        let app_cart = self.cartridge(&a.cartridge)?;
        if let Some(own) = app_cart
            .manifest()
            .endpoints
            .iter()
            .find(|e| e.private_port == port)
        {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} listens on port {port} itself (its endpoint {}), which {}'s endpoint {} also uses; a link would hide one from the other",
                    a.name, own.name, d.name, endpoint.name
                ),
            ));
        }
        let published = &db_manifest.publish.env;
        for other in &a.links {
            let Some(o) = lock(&self.gears).get(&other.gear).map(|g| g.record()) else {
                continue;
            };
            if other.port == port {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "gear {} already reaches {} on port {port}; unlink it first (`gear unlink {} {}`)",
                        a.name, o.name, a.name, o.name
                    ),
                ));
            }
            let theirs = self
                .cartridge(&o.cartridge)
                .map(|c| c.manifest().publish.env.clone())
                .unwrap_or_default();
            if let Some(key) = published.iter().find(|k| theirs.contains(k)) {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "{} and {} both publish {key} to gear {}; unlink {} first",
                        d.name, o.name, a.name, o.name
                    ),
                ));
            }
        }
        let proxy = open_proxy(
            &a.name,
            app.paths.netns(),
            &d.name,
            db.paths.netns(),
            port,
            Payer::of(self, &app),
            Some(Arc::downgrade(&db)),
            Some((&a.id, &d.id)),
        )
        .await
        .map_err(|e| match e {
            LinkError::PortTaken { .. } => ApiError::new(ErrorKind::Conflict, e.to_string()),
            LinkError::Listen { .. } => internal(e),
        })?;
        // persisted last: a failure here leaves nothing behind (the proxy is dropped)
        app.update(self.config(), |r| {
            r.links.push(Link {
                gear: d.id.clone(),
                port,
                created: state::now(),
            });
        })?;
        lock(&self.gears).link(&a.id, &d.id);
        self.links.insert(&a.id, &d.id, proxy);
        app.hook_log.line(
            "link[node]",
            &format!("linked to {} on 127.0.0.1:{port}", d.name),
        );
        let running = app.record().state == crate::state::GearState::Running;
        Ok(reply::Linked {
            note: running.then(|| {
                format!(
                    "restart {} for its running processes to see the new variables",
                    a.name
                )
            }),
            gear: a.name,
            to: d.name,
            port,
            env: published.clone(),
            unchanged: false,
        })
    }

    /// `gear unlink GEAR TO`: close the proxy (cutting open connections) and
    /// drop the linked variables.
    pub async fn unlink(&self, gear: &GearRef, to: &GearRef) -> ApiResult<reply::Unlinked> {
        let app = self.find(gear)?;
        let _op = app.op.lock().await;
        let app = self.find(gear)?;
        let a = app.record();
        let target = self.find(to)?.record();
        let Some(link) = a.links.iter().find(|l| l.gear == target.id).cloned() else {
            return Ok(reply::Unlinked {
                note: Some(format!(
                    "gear {} is not linked to {}; nothing was changed",
                    a.name, to.name
                )),
                gear: a.name,
                to: to.name.clone(),
                unchanged: true,
            });
        };
        app.update(self.config(), |r| r.links.retain(|l| l.gear != link.gear))?;
        lock(&self.gears).unlink(&a.id, &link.gear);
        self.links.close(&a.id, &link.gear);
        app.hook_log
            .line("link[node]", &format!("unlinked from {}", to.name));
        let running = app.record().state == crate::state::GearState::Running;
        Ok(reply::Unlinked {
            note: running.then(|| {
                format!(
                    "restart {} for its running processes to lose the linked variables",
                    a.name
                )
            }),
            gear: a.name,
            to: to.name.clone(),
            unchanged: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn root() -> bool {
        gearhost_sandbox::testing::privileged("network namespaces")
    }

    fn payer() -> Payer {
        Payer {
            admission: crate::conns::Admission::new(16),
            gear: Arc::default(),
            log: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proxy_joins_two_namespaces_until_it_is_dropped() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().expect("dir");
        let (app, db) = (dir.path().join("app"), dir.path().join("db"));
        gearhost_sandbox::netns::create(&app).expect("app namespace");
        gearhost_sandbox::netns::create(&db).expect("db namespace");
        // an echo server on the db gear's loopback
        let server =
            gearhost_sandbox::netns::listen(&db, ([127, 0, 0, 1], 0).into()).expect("listen");
        let port = server.local_addr().expect("addr").port();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().expect("accept");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).expect("read");
            s.write_all(&buf[..n]).expect("write");
            // hold the connection open: only the proxy going away ends it
            let _ = s.read(&mut buf);
        });
        // nothing on the app's loopback yet
        let app_ns = app.clone();
        let connect = move || {
            gearhost_sandbox::netns::connect(
                &app_ns,
                ([127, 0, 0, 1], port).into(),
                Duration::from_secs(2),
            )
        };
        assert!(connect().is_err());

        let proxy = open_proxy(
            "app",
            app.clone(),
            "db",
            db.clone(),
            port,
            payer(),
            None,
            None,
        )
        .await
        .expect("proxy");
        // the port is now taken in the app's namespace
        let again = open_proxy(
            "app",
            app.clone(),
            "db",
            db.clone(),
            port,
            payer(),
            None,
            None,
        )
        .await;
        assert!(
            matches!(again, Err(LinkError::PortTaken { .. })),
            "{again:?}"
        );
        let c = connect.clone();
        let mut client = tokio::task::spawn_blocking(move || c().expect("connect"))
            .await
            .expect("join");
        let mut client = tokio::task::spawn_blocking(move || {
            client.write_all(b"ping").expect("write");
            let mut buf = [0u8; 4];
            client.read_exact(&mut buf).expect("echo");
            assert_eq!(&buf, b"ping");
            client
        })
        .await
        .expect("join");

        drop(proxy);
        // the open connection is cut, and the port is closed
        let ended = tokio::task::spawn_blocking(move || {
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 4];
            client.read(&mut buf)
        })
        .await
        .expect("join");
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
        echo.join().expect("echo server");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while connect().is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the listener outlived its proxy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gearhost_sandbox::netns::remove(&app).expect("remove");
        gearhost_sandbox::netns::remove(&db).expect("remove");
    }
}
