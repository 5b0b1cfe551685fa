//! Who and where the gear is: [`gear()`] and the [`Gear`] it returns.

use std::path::PathBuf;

use crate::__private::bindings::gearhost::cartridge::{host, types as wit};

/// The gear a hook runs for, as the host describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gear {
    /// Node-unique, immutable id.
    pub id: String,
    /// Gear name, unique within its namespace.
    pub name: String,
    /// Owner namespace.
    pub namespace: String,
    /// Name of the cartridge running this hook.
    pub cartridge: String,
    /// The gear's home as seen by the hook and by the gear's processes.
    pub home: PathBuf,
    /// The gear's endpoints, as declared in the cartridge's manifest.
    pub endpoints: Vec<Endpoint>,
}

/// A network endpoint of the gear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Endpoint name from the manifest, e.g. `http`.
    pub name: String,
    /// Port the app listens on inside the gear's own network namespace.
    pub private_port: u16,
    /// Protocols spoken on it, e.g. `http`, `websocket`, `tcp`.
    pub protocols: Vec<String>,
}

impl Gear {
    /// The endpoint called `name`, if the manifest declares one.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The private port of the endpoint called `name`.
    ///
    /// ```
    /// # use gearhost_sdk::{Endpoint, Gear};
    /// # let gear = Gear {
    /// #     id: "g1".into(), name: "blog".into(), namespace: "ann".into(),
    /// #     cartridge: "python".into(), home: "/gear".into(),
    /// #     endpoints: vec![Endpoint { name: "http".into(), private_port: 8080, protocols: vec!["http".into()] }],
    /// # };
    /// assert_eq!(gear.port("http"), Some(8080));
    /// assert_eq!(gear.port("db"), None);
    /// ```
    pub fn port(&self, name: &str) -> Option<u16> {
        self.endpoint(name).map(|e| e.private_port)
    }

    /// `<home>/app-root`, the root of the application's directories.
    pub fn app_root(&self) -> PathBuf {
        self.home.join("app-root")
    }

    /// `<home>/app-root/repo`: the deployed source; the default working
    /// directory of commands.
    pub fn repo_dir(&self) -> PathBuf {
        self.app_root().join("repo")
    }

    /// `<home>/app-root/data`: data that survives deployments.
    pub fn data_dir(&self) -> PathBuf {
        self.app_root().join("data")
    }

    /// `<home>/app-root/runtime`: what `build` produces and `start` runs.
    pub fn runtime_dir(&self) -> PathBuf {
        self.app_root().join("runtime")
    }

    /// `<home>/app-root/logs`: the gear's logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.app_root().join("logs")
    }
}

/// Asks the host who and where the gear is.
///
/// ```no_run
/// let gear = gearhost_sdk::gear();
/// println!("{} in {} listens on {:?}", gear.name, gear.namespace, gear.port("http"));
/// ```
pub fn gear() -> Gear {
    host::gear().into()
}

impl From<wit::GearInfo> for Gear {
    fn from(g: wit::GearInfo) -> Self {
        Self {
            id: g.id,
            name: g.name,
            namespace: g.namespace,
            cartridge: g.cartridge,
            home: PathBuf::from(g.home),
            endpoints: g.endpoints.into_iter().map(Endpoint::from).collect(),
        }
    }
}

impl From<wit::Endpoint> for Endpoint {
    fn from(e: wit::Endpoint) -> Self {
        Self {
            name: e.name,
            private_port: e.private_port,
            protocols: e.protocols,
        }
    }
}
