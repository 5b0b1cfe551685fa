//! Gears that other nodes of the cluster hold, as this node's frontend
//! routes them. The node follows every gear's placement and every node's
//! description in etcd ([`gearhost_cluster::Change`]) and routes each name of
//! a gear held elsewhere (`<gear>-<namespace>.<domain>` and its aliases) to
//! the frontend of the node that holds it, which routes the request again by
//! its host, wakes the gear if it is idle, and keeps its access log.
//!
//! The passed request carries one more field, [`gearhost_http::fields::RELAY`]:
//! the client's address and scheme, the time, and a MAC over them and the
//! request's authority under a key derived from the cluster's secret. The
//! holder's frontend believes the address only when the MAC is right and the
//! time is recent; any other copy of the field is ignored and never reaches a
//! gear. A request is passed on once at most: a holder that finds the gear
//! is not its own either (it is moving) answers 503 instead of passing it on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use gearhost_cluster::{Change, NodeAdvert, Placement};
use ring::hmac;

use crate::frontend::backend::Relayed;
use crate::frontend::{GearFront, Target, TargetHttps};
use crate::node::{Gear, Node, lock};

/// How far the time in a relay field may be from this node's clock, in
/// seconds, for the field to be believed.
const RELAY_WINDOW: u64 = 300;

/// What a host name leads to in this node's frontend.
#[derive(Debug)]
pub enum Routed {
    /// A gear this node holds.
    Local(Arc<Gear>),
    /// A gear another node holds: requests go to that node's frontend.
    Remote(Box<OtherNode>),
}

/// Another node of the cluster, as the frontend passes requests to it: one
/// for all of its gears, so that its pools of connections serve them all.
#[derive(Debug)]
pub struct OtherNode {
    /// Its name in the cluster.
    pub name: String,
    /// Where its frontend serves HTTP.
    pub addr: SocketAddr,
    /// The pools of connections to it and their counters.
    pub front: GearFront,
    key: Arc<RelayKey>,
}

impl OtherNode {
    /// Writes the relay field for a request `from` a client, for `authority`.
    pub(crate) fn relay_field(&self, from: &Relayed, authority: &[u8], out: &mut Vec<u8>) {
        self.key
            .write_field(from, authority, crate::state::now(), out);
    }
}

/// The key relay fields are signed with: derived from the cluster's secret
/// for this use alone.
pub(crate) struct RelayKey(hmac::Key);

impl std::fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayKey")
    }
}

impl RelayKey {
    pub(crate) fn new(secret: &[u8]) -> RelayKey {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            b"gearhost frontend relay v1",
        );
        RelayKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn message(time: u64, from: &Relayed, authority: &[u8]) -> Vec<u8> {
        let mut m = format!(
            "{time}\n{}\n{}\n{}\n",
            from.client,
            scheme(from.secure),
            from.hops
        )
        .into_bytes();
        m.extend(authority.iter().map(u8::to_ascii_lowercase));
        m
    }

    /// Writes `gearhost-relay: t=TIME;for=CLIENT;proto=SCHEME;hops=N;mac=HEX\r\n`.
    pub(crate) fn write_field(
        &self,
        from: &Relayed,
        authority: &[u8],
        time: u64,
        out: &mut Vec<u8>,
    ) {
        let tag = hmac::sign(&self.0, &Self::message(time, from, authority));
        out.extend_from_slice(gearhost_http::fields::RELAY.as_bytes());
        out.extend_from_slice(
            format!(
                ": t={time};for={};proto={};hops={};mac=",
                from.client,
                scheme(from.secure),
                from.hops
            )
            .as_bytes(),
        );
        out.extend_from_slice(gearhost_sys::hex::encode(tag.as_ref()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Who the request comes from, when `value` is a field this key signed
    /// for `authority` within [`RELAY_WINDOW`] of `now`.
    pub(crate) fn verify(&self, value: &[u8], authority: &[u8], now: u64) -> Option<Relayed> {
        let value = std::str::from_utf8(value).ok()?;
        let (mut time, mut client, mut proto, mut hops, mut mac) = (None, None, None, None, None);
        for part in value.split(';') {
            let (k, v) = part.trim().split_once('=')?;
            let slot = match k {
                "t" => &mut time,
                "for" => &mut client,
                "proto" => &mut proto,
                "hops" => &mut hops,
                "mac" => &mut mac,
                _ => return None,
            };
            if slot.replace(v).is_some() {
                return None;
            }
        }
        let time: u64 = time?.parse().ok()?;
        let client: IpAddr = client?.parse().ok()?;
        let secure = match proto? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let hops: u8 = hops?.parse().ok()?;
        if now.abs_diff(time) > RELAY_WINDOW {
            return None;
        }
        let mac = gearhost_sys::hex::decode(mac?)?;
        let from = Relayed {
            client: client.to_string(),
            secure,
            hops,
        };
        hmac::verify(&self.0, &Self::message(time, &from, authority), &mac).ok()?;
        Some(from)
    }
}

fn scheme(secure: bool) -> &'static str {
    if secure { "https" } else { "http" }
}

/// What the node knows of the gears other nodes hold and of those nodes.
#[derive(Debug, Default)]
pub(crate) struct RemoteView {
    /// Gears held by other nodes, by id.
    placements: HashMap<String, Placement>,
    /// Every node's description, by name.
    adverts: HashMap<String, NodeAdvert>,
    /// The frontend state of each other node requests went to, by name.
    nodes: HashMap<String, Arc<Routed>>,
}

/// Where a node's frontend is reached: its advertised address, with the host
/// of its cluster address when it listens on every address.
fn frontend_of(advert: &NodeAdvert) -> Option<SocketAddr> {
    let mut addr: SocketAddr = advert.frontend.as_deref()?.parse().ok()?;
    if addr.ip().is_unspecified() {
        let listen: SocketAddr = advert.listen.parse().ok()?;
        addr.set_ip(listen.ip());
    }
    Some(addr)
}

impl Node {
    /// Starts following the cluster's placements, so that the frontend
    /// routes every gear of the cluster (called once the node has joined).
    pub(crate) fn follow_cluster(self: &Arc<Self>) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let node = Arc::downgrade(self);
        cluster.spawn_follower(move |change| {
            if let Some(node) = node.upgrade() {
                node.apply_cluster_change(change);
            }
        });
    }

    /// Brings the frontend's routes to gears held elsewhere up to date with
    /// one change.
    pub(crate) fn apply_cluster_change(&self, change: Change) {
        let Some(me) = self.cluster().map(|c| c.node().to_string()) else {
            return;
        };
        let _changing = lock(&self.routes_changing);
        let mut view = lock(&self.remote);
        match change {
            Change::All { placements, nodes } => {
                let ids = placements.iter().map(|p| p.id.as_str()).collect();
                self.forget_replicas(&ids, None);
                view.adverts = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
                view.nodes.clear();
                let old = std::mem::take(&mut view.placements);
                view.placements = placements
                    .into_iter()
                    .filter(|p| p.node != me)
                    .map(|p| (p.id.clone(), p))
                    .collect();
                for p in old.values() {
                    if view
                        .placements
                        .get(&p.id)
                        .is_none_or(|n| n.label != p.label)
                    {
                        self.clear_remote(&p.label);
                    }
                }
                let all: Vec<Placement> = view.placements.values().cloned().collect();
                for p in &all {
                    self.route_remote(&mut view, p);
                }
            }
            Change::Placed(p) if p.node == me => {
                // a gear arriving here (a move) puts its own names in once it is in
                let arriving = lock(&self.gears).get(&p.id).is_some();
                if let Some(old) = view.placements.remove(&p.id)
                    && !arriving
                {
                    self.clear_remote(&old.label);
                }
            }
            Change::Placed(p) => {
                if let Some(old) = view.placements.insert(p.id.clone(), p.clone())
                    && old.label != p.label
                {
                    self.clear_remote(&old.label);
                }
                self.route_remote(&mut view, &p);
            }
            Change::Removed(id) => {
                self.forget_replicas(&Default::default(), Some(&id));
                if let Some(old) = view.placements.remove(&id) {
                    self.clear_remote(&old.label);
                }
            }
            Change::Node(advert) => {
                let name = advert.name.clone();
                view.nodes.remove(&name);
                view.adverts.insert(name.clone(), advert);
                let held: Vec<Placement> = view
                    .placements
                    .values()
                    .filter(|p| p.node == name)
                    .cloned()
                    .collect();
                for p in &held {
                    self.route_remote(&mut view, p);
                }
            }
        }
    }

    /// Whether a gear of this node answers to label `label` (one the cluster
    /// placed elsewhere while the node was away does not).
    fn holds_label(&self, label: &str) -> bool {
        let ids: Vec<String> = lock(&self.gears)
            .by_label(label)
            .iter()
            .map(|g| g.record().id)
            .collect();
        ids.iter().any(|id| self.placed_elsewhere(id).is_none())
    }

    /// The names of gear `p`, held by another node, lead to that node's frontend.
    fn route_remote(&self, view: &mut RemoteView, p: &Placement) {
        if self.holds_label(&p.label) {
            return;
        }
        let names = self.remote_names(view, p);
        self.frontend.set_gear_routes(&p.label, names);
    }

    /// The names of gear `p` (held by another node) with their target: none
    /// while that node's frontend address is not known.
    fn remote_names(&self, view: &mut RemoteView, p: &Placement) -> Vec<(String, Arc<Target>)> {
        let Some(node) = self.other_node(view, &p.node) else {
            return Vec::new();
        };
        let target = Arc::new(Target {
            gear: node,
            label: p.label.clone(),
            port: 0,
            https: TargetHttps::default(),
        });
        std::iter::once(format!("{}.{}", p.label, self.config().domain))
            .chain(p.aliases.iter().cloned())
            .map(|name| (name, target.clone()))
            .collect()
    }

    /// The names with label `label` lead nowhere, unless a gear of this node
    /// holds them.
    fn clear_remote(&self, label: &str) {
        if !self.holds_label(label) {
            self.frontend.set_gear_routes(label, Vec::new());
        }
    }

    /// The frontend state of node `name`, made on first use.
    fn other_node(&self, view: &mut RemoteView, name: &str) -> Option<Arc<Routed>> {
        if let Some(node) = view.nodes.get(name) {
            return Some(node.clone());
        }
        let addr = frontend_of(view.adverts.get(name)?)?;
        let key = self.relay_key.get()?.clone();
        let node = Arc::new(Routed::Remote(Box::new(OtherNode {
            name: name.to_string(),
            addr,
            front: GearFront::for_node(self.config().frontend_workers),
            key,
        })));
        view.nodes.insert(name.to_string(), node.clone());
        Some(node)
    }

    /// Every name of every gear held elsewhere, for a table built whole
    /// (names a gear of this node holds are left to it).
    pub(crate) fn remote_routes(&self) -> Vec<(String, Arc<Target>)> {
        let mut view = lock(&self.remote);
        let all: Vec<Placement> = view.placements.values().cloned().collect();
        all.iter()
            .filter(|p| !self.holds_label(&p.label))
            .flat_map(|p| self.remote_names(&mut view, p))
            .collect()
    }

    /// Whether a gear another node holds is on a node not in `alive` and not
    /// marked lost yet, as the followed placements say (this node's own
    /// gears are on a live node).
    pub(crate) fn any_stranded(&self, alive: &std::collections::HashSet<String>) -> bool {
        lock(&self.remote)
            .placements
            .values()
            .any(|p| !alive.contains(&p.node) && p.lost.is_none())
    }

    /// The other nodes requests were passed to, for their counters.
    pub(crate) fn other_nodes(&self) -> Vec<Arc<Routed>> {
        let view = lock(&self.remote);
        let mut nodes: Vec<(&String, &Arc<Routed>)> = view.nodes.iter().collect();
        nodes.sort_by(|a, b| a.0.cmp(b.0));
        nodes.into_iter().map(|(_, n)| n.clone()).collect()
    }

    /// The relay field's client and scheme, when the node is in a cluster and
    /// the field is signed for this request.
    pub(crate) fn relayed(&self, value: &[u8], authority: &[u8]) -> Option<Relayed> {
        self.relay_key
            .get()?
            .verify(value, authority, crate::state::now())
    }

    /// Sets the key relay fields are signed with (when joining the cluster).
    pub(crate) fn set_relay_key(&self, secret: &[u8]) {
        let _ = self.relay_key.set(Arc::new(RelayKey::new(secret)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_field_is_believed_only_as_signed() {
        let key = RelayKey::new(b"a cluster secret of at least thirty-two bytes");
        let from = Relayed {
            client: "192.0.2.7".into(),
            secure: true,
            hops: 1,
        };
        let mut out = Vec::new();
        key.write_field(&from, b"App-NS.example.test:8080", 1_000, &mut out);
        let line = String::from_utf8(out).expect("ascii");
        let value = line
            .strip_prefix("gearhost-relay: ")
            .and_then(|v| v.strip_suffix("\r\n"))
            .expect("one field line");
        let authority = b"app-ns.example.test:8080";
        assert_eq!(key.verify(value.as_bytes(), authority, 1_100), Some(from));
        // another authority, client, scheme or hop count, too old, another key
        assert_eq!(
            key.verify(value.as_bytes(), b"other.example.test", 1_100),
            None
        );
        let forged = value.replace("192.0.2.7", "192.0.2.8");
        assert_eq!(key.verify(forged.as_bytes(), authority, 1_100), None);
        let forged = value.replace("proto=https", "proto=http");
        assert_eq!(key.verify(forged.as_bytes(), authority, 1_100), None);
        let forged = value.replace("hops=1", "hops=0");
        assert_eq!(key.verify(forged.as_bytes(), authority, 1_100), None);
        assert_eq!(
            key.verify(value.as_bytes(), authority, 1_000 + RELAY_WINDOW + 1),
            None
        );
        let other = RelayKey::new(b"another secret of at least thirty-two bytes!");
        assert_eq!(other.verify(value.as_bytes(), authority, 1_100), None);
        // malformed: repeated, unknown or missing parts
        for bad in [
            format!("{value};t=1000"),
            format!("{value};x=1"),
            "t=1000;for=192.0.2.7;proto=https;hops=1".to_string(),
            "garbage".to_string(),
            String::new(),
        ] {
            assert_eq!(key.verify(bad.as_bytes(), authority, 1_100), None, "{bad}");
        }
    }

    #[test]
    fn a_frontend_on_every_address_is_reached_at_the_cluster_address() {
        let advert = |frontend: Option<&str>| NodeAdvert {
            name: "b".into(),
            listen: "10.0.0.2:7400".into(),
            frontend: frontend.map(str::to_string),
            version: "0".into(),
            joined: 0,
        };
        assert_eq!(
            frontend_of(&advert(Some("0.0.0.0:8080"))),
            Some("10.0.0.2:8080".parse().expect("address"))
        );
        assert_eq!(
            frontend_of(&advert(Some("10.0.0.9:80"))),
            Some("10.0.0.9:80".parse().expect("address"))
        );
        assert_eq!(frontend_of(&advert(None)), None);
    }
}
