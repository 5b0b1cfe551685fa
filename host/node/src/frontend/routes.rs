//! The route table: which gear answers to a host name. The node fills it
//! (each gear's `<gear>-<namespace>.<domain>` and its aliases, rebuilt after
//! any change to those); the request pipeline looks every request up in it,
//! by the authority the gear will see as its `Host`, never by an address.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use gearhost_http::request::host_name;

use crate::node::Gear;

/// Where a host name leads.
#[derive(Debug)]
pub struct Target<G = Gear> {
    /// The gear.
    pub gear: Arc<G>,
    /// `<gear>-<namespace>`, for pages and metrics.
    pub label: String,
    /// The private port of its first HTTP endpoint.
    pub port: u16,
    /// What HTTPS asks of requests for this name.
    pub https: TargetHttps,
}

/// A gear's HTTPS options, as they apply to one of its names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetHttps {
    /// Plain-HTTP requests are redirected to HTTPS on this port (only for a
    /// name the frontend has a certificate for).
    pub redirect_port: Option<u16>,
    /// Answers over TLS carry `Strict-Transport-Security` with this max-age.
    pub hsts: Option<u64>,
}

/// Host names (lower-case, without a port) and the gears they lead to.
#[derive(Debug)]
pub(super) struct RouteTable<G> {
    routes: RwLock<HashMap<String, Arc<Target<G>>>>,
}

impl<G> Default for RouteTable<G> {
    fn default() -> Self {
        RouteTable {
            routes: RwLock::new(HashMap::new()),
        }
    }
}

impl<G> RouteTable<G> {
    /// Replace the whole table.
    pub(super) fn set(&self, routes: HashMap<String, Arc<Target<G>>>) {
        *gearhost_sys::lock::write(&self.routes) = routes;
    }

    /// Which gear answers to `hostname` (lower-case, without port).
    pub(super) fn lookup(&self, hostname: &str) -> Option<Arc<Target<G>>> {
        gearhost_sys::lock::read(&self.routes)
            .get(hostname)
            .cloned()
    }

    /// Which gear answers to a request's `authority` (`host[:port]`, as the
    /// client wrote it); the host name, as looked up, when none does.
    pub(super) fn route(&self, authority: &[u8]) -> Result<Arc<Target<G>>, String> {
        let host = host_name(authority).unwrap_or_default();
        match self.lookup(&host) {
            Some(target) => Ok(target),
            None => Err(host.into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_routed_by_host_name_whatever_their_case_and_port() {
        let table = RouteTable::<&'static str>::default();
        let app = Arc::new(Target {
            https: TargetHttps::default(),
            gear: Arc::new("app"),
            label: "app-ns".into(),
            port: 8080,
        });
        let mut routes = HashMap::new();
        routes.insert("app-ns.example.test".to_string(), app.clone());
        routes.insert("www.example.org".to_string(), app);
        table.set(routes);
        for authority in [
            &b"app-ns.example.test"[..],
            b"APP-NS.Example.Test:8080",
            b"www.example.org:80",
        ] {
            let t = table.route(authority).expect("routed");
            assert_eq!((*t.gear, t.port), ("app", 8080));
        }
        assert_eq!(
            table.route(b"other-ns.example.test:80").err().as_deref(),
            Some("other-ns.example.test")
        );
        assert!(table.route(b"").is_err());
        // a new table replaces the old one whole
        table.set(HashMap::new());
        assert!(table.route(b"app-ns.example.test").is_err());
    }
}
