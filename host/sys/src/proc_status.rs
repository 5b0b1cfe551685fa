//! Reading `/proc/<pid>/status`: the credentials, capability sets and memory figures the
//! kernel reports for a process, as `Name:<tab>value` lines.
//!
//! Field names are given without the colon (`"Uid"`, `"CapEff"`, `"VmRSS"`).

use std::io;

/// One reading of a process's status file.
#[derive(Debug, Clone)]
pub struct Status {
    text: String,
}

/// The four ids of a `Uid:` or `Gid:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// The real id.
    pub real: u32,
    /// The effective id (the one permission checks use).
    pub effective: u32,
    /// The saved set-id.
    pub saved: u32,
    /// The file-system id.
    pub fs: u32,
}

impl Ids {
    /// Whether the four ids are one and the same (nothing left to switch back to).
    pub fn all_equal(&self) -> bool {
        self.real == self.effective && self.effective == self.saved && self.saved == self.fs
    }
}

impl Status {
    /// This process's status.
    pub fn own() -> io::Result<Status> {
        std::fs::read_to_string("/proc/self/status").map(Status::from_text)
    }

    /// The status of process `pid`.
    pub fn of(pid: u32) -> io::Result<Status> {
        std::fs::read_to_string(format!("/proc/{pid}/status")).map(Status::from_text)
    }

    /// A status file's text, read some other way.
    pub fn from_text(text: impl Into<String>) -> Status {
        Status { text: text.into() }
    }

    /// The value of field `name`, trimmed; `None` when the kernel does not report it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim())
        })
    }

    /// The ids of a `Uid` or `Gid` field.
    pub fn ids(&self, name: &str) -> Option<Ids> {
        let mut ids = self.field(name)?.split_whitespace().map(str::parse::<u32>);
        let mut next = || ids.next()?.ok();
        Some(Ids {
            real: next()?,
            effective: next()?,
            saved: next()?,
            fs: next()?,
        })
    }

    /// A capability set (`CapInh`, `CapPrm`, `CapEff`, `CapBnd`, `CapAmb`) as its bit mask.
    pub fn caps(&self, name: &str) -> Option<u64> {
        u64::from_str_radix(self.field(name)?, 16).ok()
    }

    /// A memory figure given in kB (`VmRSS`, `VmHWM` ...), in KiB.
    pub fn kib(&self, name: &str) -> Option<u64> {
        self.field(name)?.strip_suffix("kB")?.trim().parse().ok()
    }
}

/// The value of field `name` of this process's status, if it can be read.
pub fn field(name: &str) -> Option<String> {
    Status::own().ok()?.field(name).map(str::to_string)
}

/// This process's effective uid: the status file's `Uid` effective field, asked of the kernel
/// directly (reading and parsing the file costs a short command like `gear sandbox run` some
/// 20 µs on its start's path).
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// This process's effective gid, the same way.
pub fn effective_gid() -> u32 {
    nix::unistd::getegid().as_raw()
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    effective_uid() == 0
}

/// Whether this process has capability `bit` (e.g. 21 for `CAP_SYS_ADMIN`) in its effective set.
pub fn has_effective_cap(bit: u32) -> bool {
    Status::own()
        .ok()
        .and_then(|s| s.caps("CapEff"))
        .is_some_and(|caps| bit < 64 && caps & (1u64 << bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\n\
        Uid:\t1000\t1001\t1002\t1003\nGid:\t5000\t5000\t5000\t5000\nGroups:\t\n\
        VmRSS:\t    1792 kB\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n\
        NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn fields_are_found_by_their_whole_name() {
        let s = Status::from_text(SAMPLE);
        assert_eq!(s.field("Name"), Some("cat"));
        assert_eq!(s.field("Groups"), Some(""));
        // `Seccomp` is not mistaken for `Seccomp_filters`, nor the other way round
        assert_eq!(s.field("Seccomp"), Some("2"));
        assert_eq!(s.field("Seccomp_filters"), Some("1"));
        assert_eq!(s.field("Secc"), None);
        assert_eq!(s.field("CapAmb"), None);
    }

    #[test]
    fn ids_caps_and_sizes_are_typed() {
        let s = Status::from_text(SAMPLE);
        let uid = s.ids("Uid").expect("uid");
        assert_eq!(
            (uid.real, uid.effective, uid.saved, uid.fs),
            (1000, 1001, 1002, 1003)
        );
        assert!(!uid.all_equal());
        assert!(s.ids("Gid").expect("gid").all_equal());
        assert_eq!(s.ids("Groups"), None);
        assert_eq!(s.caps("CapInh"), Some(0));
        assert_eq!(s.caps("CapEff"), Some((1 << 41) - 1));
        assert_eq!(s.caps("Name"), None);
        assert_eq!(s.kib("VmRSS"), Some(1792));
        assert_eq!(s.kib("Name"), None);
    }

    #[test]
    fn this_process_is_read() {
        let s = Status::own().expect("own status");
        assert!(s.ids("Uid").is_some());
        assert!(s.kib("VmRSS").is_some_and(|k| k > 0));
        assert_eq!(Some(effective_uid()), s.ids("Uid").map(|i| i.effective));
        assert_eq!(Some(effective_gid()), s.ids("Gid").map(|i| i.effective));
        assert_eq!(
            Status::of(std::process::id())
                .expect("by pid")
                .field("Name"),
            s.field("Name")
        );
    }
}
