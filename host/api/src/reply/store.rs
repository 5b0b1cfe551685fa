//! The answers about the node's stores: cartridges and container images.

use serde::{Deserialize, Serialize};

/// A network endpoint a cartridge declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Endpoint {
    /// Endpoint name, unique within the cartridge (e.g. `http`).
    pub name: String,
    /// Port the app listens on inside the gear's network namespace.
    pub private_port: u16,
    /// Protocols spoken on the port.
    pub protocols: Vec<String>,
}

/// An installed cartridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartridgeSummary {
    /// Its name.
    pub name: String,
    /// Its semver version.
    pub version: String,
    /// The name people read.
    pub display_name: String,
    /// What it runs.
    pub description: String,
    /// The endpoints its gears serve.
    pub endpoints: Vec<Endpoint>,
    /// The actions of its `control` hook, as its manifest lists them (empty
    /// when it lists none, and from nodes that predate the field).
    #[serde(default)]
    pub actions: Vec<String>,
    /// The version of the hook contract its component implements.
    pub contract: String,
    /// SHA-256 of its component.
    pub sha256: String,
    /// Where it was installed from when that was an OCI registry (none for
    /// a directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<CartridgeOrigin>,
}

/// The registry artifact a cartridge was installed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartridgeOrigin {
    /// The reference as given (`registry/namespace/name:version` or `@sha256:...`).
    pub reference: String,
    /// The digest of the artifact's image manifest: installing
    /// `registry/namespace/name@<digest>` installs exactly this again.
    pub digest: String,
}

/// A container image in the node's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// The reference it was pulled as.
    pub reference: String,
    /// The digest of its `linux/amd64` image manifest.
    pub digest: String,
    /// How many layers it has.
    pub layers: usize,
    /// What it runs: its entrypoint and command, joined.
    pub command: Vec<String>,
    /// The ports it exposes (`8080/tcp`).
    pub ports: Vec<String>,
    /// Layers fetched by this pull (0 in a list).
    #[serde(default)]
    pub fetched: usize,
    /// Layers the store already had (0 in a list).
    #[serde(default)]
    pub shared: usize,
}

/// The answer to `image-prune`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesPruned {
    /// Images removed.
    pub images: usize,
    /// Layers removed.
    pub layers: usize,
}

/// The answer to `cartridge-remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartridgeRemoved {
    /// The cartridge removed.
    pub removed: String,
}
