//! The seccomp filter: default allow, `EPERM` for what a gear never needs, `ENOSYS` for clone3
//! (its flags live in memory a filter cannot read, so libc falls back to clone, whose flags it
//! can) and for system call numbers outside the native table. Nothing is killed silently.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// Namespace flags a gear may not create with clone.
const CLONE_NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// `personality(2)` values a gear may set: the default, the two compatibility flags programs
/// use, and the query value.
const ALLOWED_PERSONAS: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `TIOCSTI` and `TIOCLINUX`.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

/// The btrfs ioctls that make a subvolume or a snapshot (`BTRFS_IOC_SNAP_CREATE`,
/// `BTRFS_IOC_SUBVOL_CREATE` and their `_V2`s): any user may make one in a directory it can
/// write, and a subvolume a gear made would sit outside the qgroup that holds its disk quota.
const BTRFS_SUBVOLUME_IOCTLS: [u64; 4] = [0x5000_9401, 0x5000_940e, 0x5000_9417, 0x5000_9418];

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// First x32 system call number: these share the x86_64 audit arch but not its table.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// System calls refused with `EPERM` whatever their arguments.
fn denied_syscalls() -> Vec<(&'static str, i64)> {
    let mut list = vec![
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("bpf", libc::SYS_bpf),
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("reboot", libc::SYS_reboot),
        ("setns", libc::SYS_setns),
        ("unshare", libc::SYS_unshare),
        ("acct", libc::SYS_acct),
        ("quotactl", libc::SYS_quotactl),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("settimeofday", libc::SYS_settimeofday),
        ("clock_settime", libc::SYS_clock_settime),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("adjtimex", libc::SYS_adjtimex),
        ("syslog", libc::SYS_syslog),
        ("vhangup", libc::SYS_vhangup),
        ("mbind", libc::SYS_mbind),
        ("move_pages", libc::SYS_move_pages),
        ("fsopen", libc::SYS_fsopen),
        ("fsmount", libc::SYS_fsmount),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("fanotify_init", libc::SYS_fanotify_init),
        // operations submitted through a ring are system calls this filter never sees
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([
        ("iopl", libc::SYS_iopl),
        ("ioperm", libc::SYS_ioperm),
        ("uselib", libc::SYS_uselib),
    ]);
    list
}

/// The compiled filter plus what the report says about it.
#[derive(Debug, Clone)]
pub struct GearFilter {
    /// The BPF program.
    pub program: BpfProgram,
    /// Number of rules (system calls with their conditions).
    pub rules: usize,
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompRule {
    // Conditions built from constants here are always valid (argument index below 6).
    #[allow(clippy::expect_used)]
    let c = SeccompCondition::new(arg, len, op, value).expect("valid seccomp condition");
    #[allow(clippy::expect_used)]
    SeccompRule::new(vec![c]).expect("valid seccomp rule")
}

/// Builds the gear's filter.
pub fn build() -> Result<GearFilter, seccompiler::Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut count = 0;
    for (_, nr) in denied_syscalls() {
        rules.insert(nr, Vec::new());
        count += 1;
    }
    // clone with any namespace flag (a new user namespace above all).
    let clone_rules = CLONE_NS_FLAGS
        .iter()
        .map(|&flag| {
            cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
        })
        .collect::<Vec<_>>();
    count += clone_rules.len();
    rules.insert(libc::SYS_clone, clone_rules);
    // ioctl TIOCSTI / TIOCLINUX (terminal input injection), and the btrfs subvolume makers
    // (a way out of the gear's disk quota).
    let ioctls: Vec<SeccompRule> = [TIOCSTI, TIOCLINUX]
        .into_iter()
        .chain(BTRFS_SUBVOLUME_IOCTLS)
        .map(|request| cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request))
        .collect();
    count += ioctls.len();
    rules.insert(libc::SYS_ioctl, ioctls);
    // personality other than the allowed values: all "not equal" conditions in one rule.
    let persona_conditions = ALLOWED_PERSONAS
        .iter()
        .map(|&p| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, p))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(persona_conditions)?],
    );
    count += 1;

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )?;
    let program: BpfProgram = filter.try_into()?;
    // clone3 is answered with ENOSYS, and so is every x32 call number.
    count += 1;
    Ok(GearFilter {
        program: patch_prologue(program),
        rules: count,
    })
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const BPF_JMP_JA: u16 = 0x05;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Adjusts the program seccompiler generated: a foreign architecture (e.g. the 32-bit compat
/// entry on x86_64) gets `ENOSYS` instead of a silent kill, and right after the architecture
/// check clone3 and x32 numbers are answered with `ENOSYS`.
///
/// seccompiler starts every program with exactly three instructions: load arch, jump over the
/// next one when it matches, return KILL_PROCESS. The unit tests pin that shape.
fn patch_prologue(mut program: BpfProgram) -> BpfProgram {
    let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    if program.len() > 3 && program[2].code == BPF_RET_K && program[2].k == SECCOMP_RET_KILL_PROCESS
    {
        program[2].k = enosys;
    }
    let mut extra = vec![stmt(BPF_LD_W_ABS, 0)]; // seccomp_data.nr
    #[cfg(target_arch = "x86_64")]
    extra.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 2, 0));
    extra.push(jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 1, 0));
    extra.push(stmt(BPF_JMP_JA, 1)); // skip the return below
    extra.push(stmt(BPF_RET_K, enosys));
    // The arch check's "matches" branch skips exactly one instruction and lands on index 3,
    // which is where `extra` goes; everything after keeps its relative jumps.
    program.splice(3..3, extra);
    program
}

/// Installs `filter` on the calling thread. Needs `no_new_privs` (or CAP_SYS_ADMIN).
pub fn apply(filter: &GearFilter) -> Result<(), seccompiler::Error> {
    seccompiler::apply_filter(&filter.program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_builds_and_counts_rules() {
        let f = build().expect("filter builds");
        assert!(f.rules > 40, "{} rules", f.rules);
        assert!(f.program.len() > f.rules);
    }

    #[test]
    fn prologue_shape_is_the_one_patched() {
        let f = build().expect("filter builds");
        let p = &f.program;
        // load arch, jump-if-native, return ENOSYS (was KILL_PROCESS)
        assert_eq!(p[0].code, BPF_LD_W_ABS);
        assert_eq!(p[0].k, 4);
        assert_eq!(p[1].jt, 1);
        assert_eq!(p[2].code, BPF_RET_K);
        assert_eq!(p[2].k, SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        // then our block: load nr, checks, return ENOSYS
        assert_eq!(p[3].code, BPF_LD_W_ABS);
        assert_eq!(p[3].k, 0);
        let ret = p
            .iter()
            .skip(3)
            .position(|i| i.code == BPF_RET_K)
            .expect("a return")
            + 3;
        assert_eq!(p[ret].k, SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert!(
            p.iter()
                .all(|i| !(i.code == BPF_RET_K && i.k == SECCOMP_RET_KILL_PROCESS)),
            "no kill action left"
        );
    }

    #[test]
    fn denied_list_has_the_dangerous_calls() {
        let names: Vec<&str> = denied_syscalls().into_iter().map(|(n, _)| n).collect();
        for needed in [
            "mount",
            "ptrace",
            "bpf",
            "keyctl",
            "unshare",
            "setns",
            "kexec_load",
            "init_module",
            "userfaultfd",
            "perf_event_open",
        ] {
            assert!(names.contains(&needed), "{needed} missing");
        }
    }
}
