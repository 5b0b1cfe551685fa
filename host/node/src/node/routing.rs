//! Where the frontend finds gears: each gear's port for HTTP, its public name
//! (`<gear>-<namespace>.<domain>`, unique on the node) and URL, and the
//! routing table built from them, whole or one gear at a time.

use std::sync::Arc;

use super::*;
use crate::remote::Routed;

impl Node {
    /// The port the frontend sends a gear's requests to: the one its active
    /// deployment names (an image's), else the first endpoint of its
    /// cartridge that speaks HTTP (a database's port never gets HTTP).
    pub(crate) fn http_port(&self, r: &GearRecord) -> Option<u16> {
        let cart = self.cartridge(&r.cartridge).ok()?;
        let declared = cart.manifest().http_endpoint()?.private_port;
        Some(named_port(r).unwrap_or(declared))
    }

    /// The host name a gear answers to: `<gear>-<namespace>.<domain>`.
    pub(crate) fn public_name(&self, r: &GearRecord) -> String {
        format!("{}.{}", r.label(), self.config.domain)
    }

    /// A new gear's public name must be a valid host name and lead to it
    /// alone: `a-b` in namespace `c` and `a` in namespace `b-c` would both be
    /// `a-b-c.<domain>`, so the second create is refused, naming the first.
    /// Aliases cannot take such names (see [`crate::alias`]). Called under
    /// the node's lock for names.
    pub(super) fn check_public_name_free(&self, gear: &GearRef) -> ApiResult<()> {
        let label = state::public_label(&gear.name, &gear.namespace);
        if label.len() > 63 {
            return Err(invalid(format!(
                "gear {} in namespace {} would be reachable as {label}.{}, but a host name's label \
                 holds at most 63 characters; use a shorter gear name",
                gear.name, gear.namespace, self.config.domain
            )));
        }
        // the gear holding the name is the oldest of those with the label (see `routes_of`)
        let taken = lock(&self.gears)
            .by_label(&label)
            .into_iter()
            .map(|g| {
                let r = lock(&g.record);
                (r.created, r.id.clone(), r.name.clone(), r.namespace.clone())
            })
            .min();
        match taken {
            Some((_, _, name, namespace)) => Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "gear {} in namespace {} would be reachable as {label}.{}, which already leads \
                     to {}; choose another gear name",
                    gear.name,
                    gear.namespace,
                    self.config.domain,
                    crate::tenancy::other_gear(&gear.namespace, &name, &namespace)
                ),
            )),
            None => Ok(()),
        }
    }

    /// Build the frontend's routing table again from the gears, their
    /// aliases and the installed cartridges: when the node starts, and after a
    /// change that touches every gear's names (a cartridge installed or
    /// removed, the operator's certificate). A change to one gear updates its
    /// names alone ([`Node::update_routes`]).
    pub(crate) fn rebuild_routes(&self) {
        let _changing = lock(&self.routes_changing);
        self.rebuild_routes_locked();
    }

    /// [`Node::rebuild_routes`], `routes_changing` held.
    fn rebuild_routes_locked(&self) {
        let mut routes = std::collections::HashMap::new();
        // oldest first: should two gears made before names were checked share
        // a name, the older one keeps it, whatever the order of the map
        let mut gears: Vec<(Arc<Gear>, GearRecord)> = self
            .gears_snapshot()
            .into_iter()
            .map(|g| {
                let r = g.record();
                (g, r)
            })
            .collect();
        gears.sort_by(|(_, a), (_, b)| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        for (g, r) in gears {
            // a copy the cluster placed elsewhere leaves its names to the gear there
            if self.placed_elsewhere(&r.id).is_some() {
                continue;
            }
            for (name, target) in self.routes_of(&g, &r) {
                routes.entry(name).or_insert(target);
            }
        }
        // then the gears other nodes of the cluster hold
        for (name, target) in self.remote_routes() {
            routes.entry(name).or_insert(target);
        }
        self.frontend.set_routes(routes);
    }

    /// After a change to gear `g`'s names or where they lead (it was created, destroyed or
    /// deployed, its aliases, their certificates or its HTTPS options changed): its names
    /// alone are replaced in the frontend's table, whatever the count of other gears (a
    /// gear no longer in the node's table has none). Should another gear share its label
    /// (gears made before labels were checked), the whole table is built again instead, so
    /// that the older of the two keeps the name.
    pub(crate) fn update_routes(&self, g: &Arc<Gear>) {
        let _changing = lock(&self.routes_changing);
        let r = g.record();
        if self.placed_elsewhere(&r.id).is_some() {
            return;
        }
        let label = r.label();
        let (present, shared) = {
            let gears = lock(&self.gears);
            let present = gears.get(&r.id).is_some_and(|found| Arc::ptr_eq(found, g));
            let shared = gears
                .by_label(&label)
                .iter()
                .any(|other| !Arc::ptr_eq(other, g));
            (present, shared)
        };
        if shared {
            return self.rebuild_routes_locked();
        }
        let names = if present {
            self.routes_of(g, &r)
        } else {
            Vec::new()
        };
        self.frontend.set_gear_routes(&label, names);
    }

    /// The names gear `g` (record `r`) answers to, its own first, each with where it leads;
    /// none when its cartridge has no HTTP endpoint.
    fn routes_of(&self, g: &Arc<Gear>, r: &GearRecord) -> Vec<(String, Arc<Target>)> {
        let Some(port) = self.http_port(r) else {
            return Vec::new();
        };
        let own = self.public_name(r);
        let https_port = self.https_port();
        std::iter::once(own.clone())
            .chain(r.aliases.iter().cloned())
            .map(|name| {
                // a name is redirected to HTTPS only when it has a certificate
                let certified = if name == own {
                    self.certs.has_operator()
                } else {
                    self.certs.alias(&name).is_some()
                };
                let https = crate::frontend::TargetHttps {
                    redirect_port: https_port.filter(|_| r.https.redirect && certified),
                    hsts: r.https.hsts_max_age,
                };
                let target = Arc::new(Target {
                    gear: Arc::new(Routed::Local(g.clone())),
                    label: r.label(),
                    port,
                    https,
                });
                (name, target)
            })
            .collect()
    }

    /// The port the frontend's HTTPS listener takes, when it has one.
    pub(crate) fn https_port(&self) -> Option<u16> {
        let listen = &self.config.https.as_ref()?.listen;
        listen
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.port())
    }

    /// Where the frontend serves a gear: none when its cartridge has no
    /// HTTP endpoint (the frontend would answer 404 for it).
    pub(super) fn url(&self, r: &GearRecord) -> Option<String> {
        self.http_port(r)?;
        Some(self.public_url(r))
    }

    pub(super) fn public_url(&self, r: &GearRecord) -> String {
        self.url_parts().url(&r.name, &r.namespace)
    }

    /// What every gear's URL shares: the domain, and the frontend's port.
    pub(super) fn url_parts(&self) -> UrlParts {
        UrlParts {
            domain: self.config.domain.clone(),
            port: self.frontend_addr().map(|a| a.port()),
            node: self.cluster().map(|c| c.node().to_string()),
        }
    }
}

/// What gears' views share (their URLs' parts, the cluster node holding
/// them), read once for many of them.
pub(super) struct UrlParts {
    domain: String,
    /// The frontend's port, once it listens.
    port: Option<u16>,
    /// The node's name in its cluster (none: a standalone node).
    pub(super) node: Option<String>,
}

impl UrlParts {
    /// `http://<name>-<namespace>.<domain>[:<port>]/` (no port when it is 80 or unknown).
    pub(super) fn url(&self, name: &str, namespace: &str) -> String {
        use std::fmt::Write;
        let mut url = String::with_capacity(16 + name.len() + namespace.len() + self.domain.len());
        let label = state::public_label(name, namespace);
        let _ = write!(url, "http://{label}.{}", self.domain);
        if let Some(port) = self.port.filter(|p| *p != 80) {
            let _ = write!(url, ":{port}");
        }
        url.push('/');
        url
    }
}
