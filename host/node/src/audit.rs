//! The node's audit trail: one JSON line per request that changes something
//! and per request refused for who sent it, in `<state>/audit/audit.log`
//! (rotated like gear logs, readable by root only). Operators read it with
//! `gear audit`.

use std::path::Path;

use crate::api::reply::{AuditEntry, AuditOutcome};
use crate::api::{ApiError, ErrorKind};
use crate::logs::{self, LogFile};
use crate::tenancy::Caller;

/// Most entries one `gear audit` returns.
pub const MAX_READ: usize = 10_000;

/// The audit log.
#[derive(Debug)]
pub struct AuditLog {
    log: LogFile,
}

impl AuditLog {
    /// The log under `state_dir`, rotated at `max_bytes`, `keep` old files kept.
    pub fn open(state_dir: &Path, max_bytes: u64, keep: usize) -> anyhow::Result<AuditLog> {
        let dir = state_dir.join("audit");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("cannot set the mode of {}: {e}", dir.display()))?;
        Ok(AuditLog {
            log: LogFile::new(dir.join("audit.log"), max_bytes, keep),
        })
    }

    /// Records what came of a request.
    pub fn record(
        &self,
        caller: &Caller,
        verb: &str,
        namespace: Option<&str>,
        gear: Option<&str>,
        result: Result<(), &ApiError>,
    ) {
        let (outcome, message) = match result {
            Ok(()) => (AuditOutcome::Ok, None),
            Err(e) => (
                match e.kind {
                    ErrorKind::Failed => AuditOutcome::Failed,
                    _ => AuditOutcome::Refused,
                },
                Some(logs::printable(&e.message, 4096).into_owned()),
            ),
        };
        let entry = AuditEntry {
            time: logs::timestamp(),
            uid: caller.uid,
            user: caller.user.clone(),
            namespace: namespace.map(str::to_owned),
            gear: gear.map(str::to_owned),
            verb: verb.to_string(),
            outcome,
            message,
        };
        match serde_json::to_vec(&entry) {
            Ok(mut line) => {
                line.push(b'\n');
                self.log.write_lines(&line);
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode an audit entry"),
        }
    }

    /// The last `n` entries, oldest first (lines that are not entries, as a
    /// damaged file could hold, are skipped).
    pub fn last(&self, n: usize) -> std::io::Result<Vec<AuditEntry>> {
        let path = self.log.path();
        let (lines, _) = match logs::tail(&path, n.min(MAX_READ)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_json_lines_read_back_in_order() {
        let dir = tempfile::tempdir().expect("state");
        let log = AuditLog::open(dir.path(), 1 << 20, 2).expect("open");
        let ada = Caller {
            uid: 1001,
            user: "ada".into(),
            operator: false,
            ssh: crate::tenancy::SshRole::Local,
        };
        log.record(&ada, "create", Some("ada"), Some("web"), Ok(()));
        let refused = ApiError::new(ErrorKind::Denied, "ada may not act in namespace bob\x1b[2J");
        log.record(&ada, "destroy", Some("bob"), Some("db"), Err(&refused));
        let entries = log.last(10).expect("read");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].verb, "create");
        assert_eq!(entries[0].outcome, AuditOutcome::Ok);
        assert_eq!(entries[1].outcome, AuditOutcome::Refused);
        assert_eq!(entries[1].gear.as_deref(), Some("db"));
        let message = entries[1].message.as_deref().expect("message");
        assert!(
            !message.contains('\x1b'),
            "control characters escaped: {message:?}"
        );
        assert_eq!(log.last(1).expect("read").len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("audit"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
