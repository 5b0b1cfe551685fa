//! The answers to `snapshot` and `restore`.

use serde::{Deserialize, Serialize};

use super::GearSummary;

/// The answer to `snapshot`, once the whole archive is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshotted {
    /// The gear (`name-namespace`).
    pub gear: String,
    /// Bytes of the compressed archive written on the pipe.
    pub bytes: u64,
    /// Entries in the archive (files, directories, symlinks).
    pub entries: u64,
    /// The deployments it holds, oldest first.
    pub deployments: Vec<u32>,
    /// What the cartridge's `pre-snapshot` action said, if it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cartridge: Option<String>,
    /// What was left out and why (a FIFO or socket in the data, a file that
    /// went away while it was read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// The answer to `move`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Moved {
    /// The gear as it is now, on its new node.
    pub gear: GearSummary,
    /// The node it left.
    pub from: String,
    /// The node it runs on now.
    pub to: String,
    /// Bytes of the archive that travelled (compressed).
    pub bytes: u64,
    /// Milliseconds from the move's start to the gear answering on its new
    /// node (requests were held meanwhile).
    pub millis: u64,
    /// What the new node said of the arrival (see `restore`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The answer to `replicate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Replicated {
    /// The gear (`name-namespace`).
    pub gear: String,
    /// Bytes of the archive kept.
    pub bytes: u64,
}

/// The answer to `restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Restored {
    /// The gear as it is now.
    pub gear: GearSummary,
    /// Whether the restore created it (else it replaced what it held).
    pub created: bool,
    /// Whether it runs under the uid (and MCS level) the archive names; a
    /// new gear gets another one when that uid is taken on this node.
    pub uid_kept: bool,
    /// The uid the archive names.
    pub archived_uid: u32,
    /// Entries unpacked from the archive.
    pub entries: u64,
    /// Bytes of file content unpacked.
    pub bytes: u64,
    /// What the restore could not carry over, and why (an alias another gear
    /// holds, a cartridge of another version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}
