//! What the node records of each supervised process it starts, so that a later node can take
//! the process back: `gears/<id>/procs.json` in the state directory, rewritten atomically
//! whenever a process starts, is restarted or ends for good (removed when none is left).
//!
//! A record names the process's init by pid and start time (a pid alone could be reused), its
//! cgroup leaf, and what supervision needs to go on: the command, the restart policy and the
//! restarts so far. While a crashed process waits to be restarted its old record stays, so a
//! node that dies meanwhile leaves a record whose pid is gone, and the next node starts the
//! gear again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gearhost_runtime::{CommandSpec, RestartPolicy};
use gearhost_sys::lock::lock;
use serde::{Deserialize, Serialize};

/// One supervised process as the node that started it left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProcRecord {
    /// The process's name in the gear (`spawn`'s name).
    pub name: String,
    /// Host pid of its init (pid 1 of its pid namespace).
    pub pid: u32,
    /// The init's start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Its cgroup leaf inside the gear's group.
    pub leaf: String,
    /// The deployment it runs (bound at the gear's repo path), if any.
    #[serde(default)]
    pub repo: Option<PathBuf>,
    /// The command, as the cartridge gave it.
    pub cmd: CommandSpec,
    /// Its restart policy.
    pub restart: RestartPolicy,
    /// How often supervision restarted it so far.
    pub restarts: u32,
}

/// The file's layout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcsFile {
    version: u32,
    processes: Vec<ProcRecord>,
}

const VERSION: u32 = 1;

/// The records of one gear's supervised processes, by cgroup leaf, kept in memory and on
/// disk. Without a path (a supervisor of processes set aside) nothing is written.
#[derive(Debug, Default)]
pub struct ProcRecords {
    path: Option<PathBuf>,
    map: Mutex<BTreeMap<String, ProcRecord>>,
}

impl ProcRecords {
    /// Records kept in `path`.
    pub fn at(path: PathBuf) -> Self {
        ProcRecords {
            path: Some(path),
            map: Mutex::default(),
        }
    }

    /// Adds or replaces the record of `record.leaf`.
    pub fn put(&self, record: ProcRecord) {
        let mut map = lock(&self.map);
        map.insert(record.leaf.clone(), record);
        self.save(&map);
    }

    /// Holds `record` as read from the file (a process taken back): the file already says
    /// so, and every record of the gear is taken back or none, so it is not written again
    /// (a thousand gears taken back would otherwise sync a thousand files for nothing).
    pub fn put_loaded(&self, record: ProcRecord) {
        lock(&self.map).insert(record.leaf.clone(), record);
    }

    /// Replaces the record of leaf `old` with `record` in one write.
    pub fn replace(&self, old: &str, record: ProcRecord) {
        let mut map = lock(&self.map);
        map.remove(old);
        map.insert(record.leaf.clone(), record);
        self.save(&map);
    }

    /// Removes the record of leaf `leaf`.
    pub fn remove(&self, leaf: &str) {
        let mut map = lock(&self.map);
        if map.remove(leaf).is_some() {
            self.save(&map);
        }
    }

    /// Forgets every record (the processes they name are gone).
    pub fn clear(&self) {
        let mut map = lock(&self.map);
        map.clear();
        self.save(&map);
    }

    fn save(&self, map: &BTreeMap<String, ProcRecord>) {
        let Some(path) = &self.path else {
            return;
        };
        let result = if map.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        } else {
            let file = ProcsFile {
                version: VERSION,
                processes: map.values().cloned().collect(),
            };
            serde_json::to_vec_pretty(&file)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    crate::state::write_atomic(path, &bytes).map_err(|e| e.to_string())
                })
        };
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the gear's processes; a node restart will start them again");
        }
    }
}

/// The records in `path` (none when there is no file).
pub fn load(path: &Path) -> Result<Vec<ProcRecord>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let file: ProcsFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a process record: {e}", path.display()))?;
    if file.version != VERSION {
        return Err(format!(
            "{} has version {}, this node reads version {VERSION}",
            path.display(),
            file.version
        ));
    }
    Ok(file.processes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, leaf: &str, pid: u32) -> ProcRecord {
        ProcRecord {
            name: name.into(),
            pid,
            start_time: 1234,
            leaf: leaf.into(),
            repo: Some(PathBuf::from("/state/gears/g1/deployments/2")),
            cmd: CommandSpec {
                program: "/gear/app-root/repo/.gear/start".into(),
                args: vec!["--port".into(), "8080".into()],
                env: vec![("PORT".into(), "8080".into())],
                cwd: None,
                stdin: None,
                timeout: None,
            },
            restart: RestartPolicy::OnFailure,
            restarts: 0,
        }
    }

    #[test]
    fn records_follow_starts_restarts_and_ends_and_go_when_none_is_left() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("procs.json");
        let records = ProcRecords::at(path.clone());
        assert_eq!(load(&path).expect("no file"), vec![]);

        records.put(record("web", "g1-web-100", 10));
        records.put(record("worker", "g1-worker-101", 11));
        let mut restarted = record("web", "g1-web-102", 12);
        restarted.restarts = 1;
        records.replace("g1-web-100", restarted.clone());
        let loaded = load(&path).expect("load");
        assert_eq!(loaded.len(), 2);
        assert!(loaded.contains(&restarted));
        assert!(loaded.iter().all(|r| r.leaf != "g1-web-100"));

        records.remove("g1-worker-101");
        assert_eq!(load(&path).expect("load"), vec![restarted]);
        records.clear();
        assert!(!path.exists(), "no file once nothing runs");
        // removing what is not there writes nothing
        records.remove("g1-web-102");
        assert!(!path.exists());
    }

    #[test]
    fn a_file_of_another_version_or_shape_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("procs.json");
        std::fs::write(&path, br#"{"version":2,"processes":[]}"#).expect("write");
        let e = load(&path).expect_err("version 2");
        assert!(e.contains("version 2"), "{e}");
        std::fs::write(&path, b"{not json").expect("write");
        let e = load(&path).expect_err("garbage");
        assert!(e.contains("procs.json"), "{e}");
    }
}
