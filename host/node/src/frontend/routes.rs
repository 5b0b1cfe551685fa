//! The route table: which gear answers to a host name. The node fills it
//! (each gear's `<gear>-<namespace>.<domain>` and its aliases): whole when it
//! starts and when cartridges or the operator's certificate change, one
//! gear's names at a time when that gear changes; the request pipeline looks
//! every request up in it, by the authority the gear will see as its `Host`,
//! never by an address.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use gearhost_http::request::host_name;

use crate::remote::Routed;

/// Where a host name leads.
#[derive(Debug)]
pub struct Target<G = Routed> {
    /// The gear (or the node that holds it).
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
    routes: RwLock<Routes<G>>,
}

/// The names, and which names each gear holds (by its label), so that one gear's names are
/// changed without looking at any other gear's.
#[derive(Debug)]
struct Routes<G> {
    names: HashMap<String, Arc<Target<G>>>,
    held: HashMap<String, Vec<String>>,
}

impl<G> Routes<G> {
    fn new(names: HashMap<String, Arc<Target<G>>>) -> Routes<G> {
        let mut held: HashMap<String, Vec<String>> = HashMap::new();
        for (name, target) in &names {
            held.entry(target.label.clone())
                .or_default()
                .push(name.clone());
        }
        Routes { names, held }
    }
}

impl<G> Default for RouteTable<G> {
    fn default() -> Self {
        RouteTable {
            routes: RwLock::new(Routes::new(HashMap::new())),
        }
    }
}

impl<G> RouteTable<G> {
    /// Replace the whole table.
    pub(super) fn set(&self, routes: HashMap<String, Arc<Target<G>>>) {
        *gearhost_sys::lock::write(&self.routes) = Routes::new(routes);
    }

    /// Replace the names of the gear labelled `label` with `names` (its own name and its
    /// aliases, each with its target; none for a gear that is gone or has no HTTP endpoint).
    /// A name that leads to another gear keeps leading there: the first holder keeps a name.
    /// Names the gear no longer has lead nowhere.
    pub(super) fn set_gear(&self, label: &str, names: Vec<(String, Arc<Target<G>>)>) {
        let mut routes = gearhost_sys::lock::write(&self.routes);
        for name in routes.held.remove(label).unwrap_or_default() {
            if routes.names.get(&name).is_some_and(|t| t.label == label) {
                routes.names.remove(&name);
            }
        }
        let mut held = Vec::new();
        for (name, target) in names {
            if routes.names.get(&name).is_some_and(|t| t.label != label) || held.contains(&name) {
                continue;
            }
            routes.names.insert(name.clone(), target);
            held.push(name);
        }
        if !held.is_empty() {
            routes.held.insert(label.to_string(), held);
        }
    }

    /// Which gear answers to `hostname` (lower-case, without port).
    pub(super) fn lookup(&self, hostname: &str) -> Option<Arc<Target<G>>> {
        gearhost_sys::lock::read(&self.routes)
            .names
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

    fn target(gear: &'static str, label: &str, port: u16) -> Arc<Target<&'static str>> {
        Arc::new(Target {
            https: TargetHttps::default(),
            gear: Arc::new(gear),
            label: label.into(),
            port,
        })
    }

    fn leads_to(table: &RouteTable<&'static str>, name: &str) -> Option<(&'static str, u16)> {
        table.lookup(name).map(|t| (*t.gear, t.port))
    }

    #[test]
    fn one_gears_names_are_added_renamed_and_removed_alone() {
        let table = RouteTable::<&'static str>::default();
        let a = target("a", "a-ns", 8080);
        let b = target("b", "b-ns", 8081);
        table.set_gear(
            "a-ns",
            vec![
                ("a-ns.test".into(), a.clone()),
                ("www.a.org".into(), a.clone()),
            ],
        );
        table.set_gear("b-ns", vec![("b-ns.test".into(), b.clone())]);
        assert_eq!(leads_to(&table, "a-ns.test"), Some(("a", 8080)));
        assert_eq!(leads_to(&table, "www.a.org"), Some(("a", 8080)));
        assert_eq!(leads_to(&table, "b-ns.test"), Some(("b", 8081)));
        // an alias replaced by another, and a new port (a deploy): the old alias leads nowhere
        let a2 = target("a", "a-ns", 9090);
        table.set_gear(
            "a-ns",
            vec![
                ("a-ns.test".into(), a2.clone()),
                ("shop.a.org".into(), a2.clone()),
            ],
        );
        assert_eq!(leads_to(&table, "a-ns.test"), Some(("a", 9090)));
        assert_eq!(leads_to(&table, "shop.a.org"), Some(("a", 9090)));
        assert_eq!(leads_to(&table, "www.a.org"), None);
        assert_eq!(leads_to(&table, "b-ns.test"), Some(("b", 8081)));
        // the gear goes: its names lead nowhere, the other gear's still lead to it
        table.set_gear("a-ns", Vec::new());
        assert_eq!(leads_to(&table, "a-ns.test"), None);
        assert_eq!(leads_to(&table, "shop.a.org"), None);
        assert_eq!(leads_to(&table, "b-ns.test"), Some(("b", 8081)));
        // and coming back, it holds its names again
        table.set_gear("a-ns", vec![("a-ns.test".into(), a)]);
        assert_eq!(leads_to(&table, "a-ns.test"), Some(("a", 8080)));
    }

    #[test]
    fn a_name_another_gear_holds_is_left_to_it() {
        let table = RouteTable::<&'static str>::default();
        let old = target("old", "x-ns", 8080);
        let mut routes = HashMap::new();
        routes.insert("x-ns.test".to_string(), old.clone());
        routes.insert("shared.org".to_string(), old);
        // the full table knows which names each gear holds, as the per-gear update does
        table.set(routes);
        let new = target("new", "y-ns", 8081);
        table.set_gear(
            "y-ns",
            vec![
                ("y-ns.test".into(), new.clone()),
                ("shared.org".into(), new.clone()),
            ],
        );
        assert_eq!(leads_to(&table, "shared.org"), Some(("old", 8080)));
        assert_eq!(leads_to(&table, "y-ns.test"), Some(("new", 8081)));
        // the newer gear giving up the name it never got leaves it where it was
        table.set_gear("y-ns", vec![("y-ns.test".into(), new)]);
        assert_eq!(leads_to(&table, "shared.org"), Some(("old", 8080)));
        // the holder's own update keeps its names
        let old = target("old", "x-ns", 8090);
        table.set_gear(
            "x-ns",
            vec![
                ("x-ns.test".into(), old.clone()),
                ("shared.org".into(), old),
            ],
        );
        assert_eq!(leads_to(&table, "shared.org"), Some(("old", 8090)));
        assert_eq!(leads_to(&table, "x-ns.test"), Some(("old", 8090)));
        assert_eq!(leads_to(&table, "y-ns.test"), Some(("new", 8081)));
    }
}
