//! The seccomp filter: default allow, `EPERM` for what a gear never needs, `ENOSYS` for clone3
//! (its flags live in memory a filter cannot read, so libc falls back to clone, whose flags it
//! can) and for system call numbers outside the native table. Nothing is killed silently.
//!
//! The program is built here, as a binary search over the numbers that have a rule, instead of
//! the chain of comparisons a general filter compiler emits (every number checked in turn, up to
//! 357 instructions for this list). The kernel pays for the chain twice: every system call a
//! gear makes walks it, and installing the filter runs it once for every number of the table to
//! learn which calls it may let through unchecked (its action cache), which took 0.17 ms per
//! filter here, on the start of every gear. The search takes seven comparisons to any verdict,
//! and installs in a fraction of that (docs/performance.md). The unit tests run every program
//! through a BPF interpreter against the rules as written.

use std::collections::BTreeMap;

/// Namespace flags a gear may not create with clone.
const CLONE_NS_FLAGS: &[u32] = &[
    libc::CLONE_NEWUSER as u32,
    libc::CLONE_NEWNS as u32,
    libc::CLONE_NEWPID as u32,
    libc::CLONE_NEWNET as u32,
    libc::CLONE_NEWUTS as u32,
    libc::CLONE_NEWIPC as u32,
    libc::CLONE_NEWCGROUP as u32,
];

/// `personality(2)` values a gear may set: the default, the two compatibility flags programs
/// use, and the query value.
const ALLOWED_PERSONAS: &[u32] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `TIOCSTI` and `TIOCLINUX`.
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541C;

/// The btrfs ioctls that make a subvolume or a snapshot (`BTRFS_IOC_SNAP_CREATE`,
/// `BTRFS_IOC_SUBVOL_CREATE` and their `_V2`s): any user may make one in a directory it can
/// write, and a subvolume a gear made would sit outside the qgroup that holds its disk quota.
const BTRFS_SUBVOLUME_IOCTLS: [u32; 4] = [0x5000_9401, 0x5000_940e, 0x5000_9417, 0x5000_9418];

/// The audit architecture of the native system call table (`AUDIT_ARCH_*`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// First x32 system call number: these share the x86_64 audit arch but not its table.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`: the number, the architecture, and the low 32 bits of
/// argument `i` at `ARGS + 8 * i` (little-endian; the high half follows).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARGS: u32 = 16;
#[cfg(not(target_endian = "little"))]
compile_error!(
    "the seccomp filter reads the low half of 64-bit arguments at little-endian offsets"
);

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// Ranges of at most this many numbers are searched with a chain of equality checks; above it
/// the search splits.
const LEAF: usize = 3;

/// System calls refused with `EPERM` whatever their arguments.
fn denied_syscalls() -> Vec<(&'static str, libc::c_long)> {
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
    pub program: Vec<libc::sock_filter>,
    /// Number of rules (system calls with their conditions).
    pub rules: usize,
}

/// The filter could not be assembled (a jump longer than classic BPF can encode).
#[derive(Debug, thiserror::Error)]
#[error("the seccomp program does not assemble: {0}")]
pub struct FilterError(String);

/// What the filter does with one system call number.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `EPERM` whatever the arguments.
    Deny,
    /// `ENOSYS` (libc then falls back to an older call the filter can check).
    NoSys,
    /// `EPERM` when the low word of argument `arg` has any bit of `mask`.
    DenyAnyBit { arg: u32, mask: u32 },
    /// `EPERM` when the low word of argument `arg` is one of `values`.
    DenyValues { arg: u32, values: Vec<u32> },
    /// `EPERM` unless the low word of argument `arg` is one of `values`.
    AllowOnly { arg: u32, values: Vec<u32> },
}

/// The rules, by system call number.
fn rules() -> BTreeMap<u32, Rule> {
    let mut rules = BTreeMap::new();
    let mut add = |nr: libc::c_long, rule: Rule| {
        // system call numbers are small and positive on every supported architecture
        if let Ok(nr) = u32::try_from(nr) {
            rules.insert(nr, rule);
        }
    };
    for (_, nr) in denied_syscalls() {
        add(nr, Rule::Deny);
    }
    add(libc::SYS_clone3, Rule::NoSys);
    // clone with any namespace flag (a new user namespace above all); every such flag is in
    // the low word of the flags argument
    add(
        libc::SYS_clone,
        Rule::DenyAnyBit {
            arg: 0,
            mask: CLONE_NS_FLAGS.iter().fold(0, |all, flag| all | flag),
        },
    );
    // ioctl TIOCSTI / TIOCLINUX (terminal input injection), and the btrfs subvolume makers (a
    // way out of the gear's disk quota); the kernel reads the request as 32 bits
    add(
        libc::SYS_ioctl,
        Rule::DenyValues {
            arg: 1,
            values: [TIOCSTI, TIOCLINUX]
                .into_iter()
                .chain(BTRFS_SUBVOLUME_IOCTLS)
                .collect(),
        },
    );
    // personality other than the allowed values (the kernel reads it as 32 bits)
    add(
        libc::SYS_personality,
        Rule::AllowOnly {
            arg: 0,
            values: ALLOWED_PERSONAS.to_vec(),
        },
    );
    rules
}

/// A place in the program being assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Allow,
    Eperm,
    Enosys,
    /// The right half of a split search (numbered as made).
    Split(usize),
    /// The check of the arguments of one system call number.
    Args(u32),
}

/// One instruction before jumps are resolved; `None` as a target is the next instruction.
#[derive(Debug, Clone, Copy)]
enum Op {
    Load(u32),
    Ret(u32),
    Jump {
        code: u16,
        k: u32,
        yes: Option<Label>,
        no: Option<Label>,
    },
    Always(Label),
    Mark(Label),
}

fn jump(code: u16, k: u32, yes: impl Into<Option<Label>>, no: impl Into<Option<Label>>) -> Op {
    Op::Jump {
        code,
        k,
        yes: yes.into(),
        no: no.into(),
    }
}

/// Where the search sends `nr` once found.
fn target(nr: u32, rule: &Rule) -> Label {
    match rule {
        Rule::Deny => Label::Eperm,
        Rule::NoSys => Label::Enosys,
        _ => Label::Args(nr),
    }
}

/// The search over `keys` (sorted numbers, each with where it goes), as ops; numbers not among
/// them are allowed.
fn search(keys: &[(u32, Label)], ops: &mut Vec<Op>, splits: &mut usize) {
    if keys.len() <= LEAF {
        for (nr, to) in keys {
            ops.push(jump(BPF_JMP_JEQ_K, *nr, *to, None));
        }
        ops.push(Op::Ret(SECCOMP_RET_ALLOW));
        return;
    }
    let mid = keys.len() / 2;
    let right = Label::Split(*splits);
    *splits += 1;
    ops.push(jump(BPF_JMP_JGE_K, keys[mid].0, right, None));
    search(&keys[..mid], ops, splits);
    ops.push(Op::Mark(right));
    search(&keys[mid..], ops, splits);
}

/// The check of argument `arg`'s low word against `values`: to `matched` if it is one of them,
/// else to `otherwise`.
fn compare_arg(ops: &mut Vec<Op>, arg: u32, values: &[u32], matched: Label, otherwise: Label) {
    ops.push(Op::Load(ARGS + 8 * arg));
    ops.extend(
        values
            .iter()
            .map(|v| jump(BPF_JMP_JEQ_K, *v, matched, None)),
    );
    ops.push(Op::Always(otherwise));
}

/// The whole program as ops.
fn plan(rules: &BTreeMap<u32, Rule>) -> Vec<Op> {
    let mut ops = vec![
        // a call through another architecture's table (the 32-bit entry on x86_64) is not one
        // this filter knows the numbers of
        Op::Load(ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH, None, Label::Enosys),
        Op::Load(NR),
    ];
    #[cfg(target_arch = "x86_64")]
    ops.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, Label::Enosys, None));
    let keys: Vec<(u32, Label)> = rules.iter().map(|(nr, r)| (*nr, target(*nr, r))).collect();
    search(&keys, &mut ops, &mut 0);
    for (nr, rule) in rules {
        let here = Op::Mark(Label::Args(*nr));
        match rule {
            Rule::Deny | Rule::NoSys => {}
            Rule::DenyAnyBit { arg, mask } => ops.extend([
                here,
                Op::Load(ARGS + 8 * arg),
                jump(BPF_JMP_JSET_K, *mask, Label::Eperm, Label::Allow),
            ]),
            Rule::DenyValues { arg, values } => {
                ops.push(here);
                compare_arg(&mut ops, *arg, values, Label::Eperm, Label::Allow);
            }
            Rule::AllowOnly { arg, values } => {
                ops.push(here);
                compare_arg(&mut ops, *arg, values, Label::Allow, Label::Eperm);
            }
        }
    }
    ops.extend([
        Op::Mark(Label::Allow),
        Op::Ret(SECCOMP_RET_ALLOW),
        Op::Mark(Label::Eperm),
        Op::Ret(EPERM),
        Op::Mark(Label::Enosys),
        Op::Ret(ENOSYS),
    ]);
    ops
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Resolves the labels of `ops` into jump offsets.
fn assemble(ops: &[Op]) -> Result<Vec<libc::sock_filter>, FilterError> {
    let mut at = Vec::new();
    let mut n = 0usize;
    for op in ops {
        match op {
            Op::Mark(label) => at.push((*label, n)),
            _ => n += 1,
        }
    }
    let position = |label: Label| {
        at.iter()
            .find(|(l, _)| *l == label)
            .map(|(_, p)| *p)
            .ok_or_else(|| FilterError(format!("{label:?} is never placed")))
    };
    let mut program = Vec::with_capacity(n);
    for op in ops {
        let here = program.len();
        let offset = |to: Option<Label>| -> Result<u32, FilterError> {
            let Some(label) = to else { return Ok(0) };
            let to = position(label)?;
            to.checked_sub(here + 1)
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| FilterError(format!("{label:?} lies before its jump")))
        };
        let short = |to: Option<Label>| -> Result<u8, FilterError> {
            let d = offset(to)?;
            u8::try_from(d).map_err(|_| FilterError(format!("a jump of {d} to {to:?}")))
        };
        program.push(match *op {
            Op::Mark(_) => continue,
            Op::Load(k) => insn(BPF_LD_W_ABS, 0, 0, k),
            Op::Ret(k) => insn(BPF_RET_K, 0, 0, k),
            Op::Always(label) => insn(BPF_JMP_JA, 0, 0, offset(Some(label))?),
            Op::Jump { code, k, yes, no } => insn(code, short(yes)?, short(no)?, k),
        });
    }
    if program.len() > usize::from(u16::MAX) {
        return Err(FilterError(format!("{} instructions", program.len())));
    }
    Ok(program)
}

/// Builds the gear's filter.
pub fn build() -> Result<GearFilter, FilterError> {
    let rules = rules();
    let count = rules
        .values()
        .map(|rule| match rule {
            Rule::Deny | Rule::NoSys | Rule::AllowOnly { .. } => 1,
            Rule::DenyAnyBit { mask, .. } => mask.count_ones() as usize,
            Rule::DenyValues { values, .. } => values.len(),
        })
        .sum::<usize>()
        // every x32 number
        + usize::from(cfg!(target_arch = "x86_64"));
    Ok(GearFilter {
        program: assemble(&plan(&rules))?,
        rules: count,
    })
}

/// Installs `filter` on the calling thread. Needs `no_new_privs` (or CAP_SYS_ADMIN).
pub fn apply(filter: &GearFilter) -> std::io::Result<()> {
    crate::sys::seccomp_set_filter(&filter.program)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of `struct seccomp_data` a filter reads.
    struct Call {
        arch: u32,
        nr: u32,
        args: [u64; 6],
    }

    /// Runs `program` on `call` as the kernel's classic BPF interpreter would, for the
    /// instructions this module emits (anything else fails the test): the verdict, and how
    /// many instructions it took.
    fn run(program: &[libc::sock_filter], call: &Call) -> (u32, usize) {
        let mut acc = 0u32;
        let mut pc = 0usize;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps <= program.len(), "the program loops");
            let i = program[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                BPF_LD_W_ABS => {
                    acc = match i.k {
                        NR => call.nr,
                        ARCH => call.arch,
                        k if k >= ARGS && (k - ARGS).is_multiple_of(8) => {
                            call.args[((k - ARGS) / 8) as usize] as u32
                        }
                        k if k >= ARGS && (k - ARGS) % 8 == 4 => {
                            (call.args[((k - ARGS) / 8) as usize] >> 32) as u32
                        }
                        k => panic!("a load from offset {k}"),
                    }
                }
                BPF_JMP_JA => pc += i.k as usize,
                BPF_JMP_JEQ_K => pc += jump(acc == i.k),
                BPF_JMP_JGE_K => pc += jump(acc >= i.k),
                BPF_JMP_JSET_K => pc += jump(acc & i.k != 0),
                BPF_RET_K => return (i.k, steps),
                code => panic!("instruction {code:#x}"),
            }
            assert!(pc < program.len(), "the program runs off its end");
        }
    }

    /// What the filter must answer, written out from the lists, not from the program.
    fn expected(call: &Call) -> u32 {
        if call.arch != AUDIT_ARCH {
            return ENOSYS;
        }
        #[cfg(target_arch = "x86_64")]
        if call.nr >= X32_SYSCALL_BIT {
            return ENOSYS;
        }
        let nr = libc::c_long::from(call.nr);
        if nr == libc::SYS_clone3 {
            return ENOSYS;
        }
        if denied_syscalls().iter().any(|(_, d)| *d == nr) {
            return EPERM;
        }
        let low = |i: usize| call.args[i] as u32;
        if nr == libc::SYS_clone && CLONE_NS_FLAGS.iter().any(|f| low(0) & f != 0) {
            return EPERM;
        }
        if nr == libc::SYS_ioctl
            && [TIOCSTI, TIOCLINUX]
                .iter()
                .chain(&BTRFS_SUBVOLUME_IOCTLS)
                .any(|r| low(1) == *r)
        {
            return EPERM;
        }
        if nr == libc::SYS_personality && !ALLOWED_PERSONAS.contains(&low(0)) {
            return EPERM;
        }
        SECCOMP_RET_ALLOW
    }

    /// Argument words worth trying: each special value, with and without high bits set.
    fn interesting_args() -> Vec<u64> {
        let mut words: Vec<u32> = vec![0, 1, 0x11, 0x4000, 0xdead_beef, u32::MAX];
        words.extend(CLONE_NS_FLAGS);
        words.extend(ALLOWED_PERSONAS);
        words.extend([TIOCSTI, TIOCLINUX]);
        words.extend(BTRFS_SUBVOLUME_IOCTLS);
        // clone's usual flags for a thread and for fork
        words.extend([0x003d_0f00, 0x0120_0011]);
        let mut args = Vec::new();
        for w in words {
            args.push(u64::from(w));
            args.push(u64::from(w) | 0xffff_ffff_0000_0000);
        }
        args
    }

    #[test]
    fn the_program_answers_every_call_as_the_rules_say() {
        let f = build().expect("filter builds");
        let mut checked = 0;
        let arches = [AUDIT_ARCH, 0x4000_0003 /* i386 */, 0];
        let mut numbers: Vec<u32> = (0..1024).collect();
        numbers.extend([0x4000_0000, 0x4000_0001, 0x4000_0038, u32::MAX]);
        for arch in arches {
            for &nr in &numbers {
                let mut calls = vec![Call {
                    arch,
                    nr,
                    args: [0; 6],
                }];
                // the numbers with argument rules get every interesting value in each argument
                if rules().contains_key(&nr) {
                    for value in interesting_args() {
                        for i in 0..2 {
                            let mut args = [0u64; 6];
                            args[i] = value;
                            calls.push(Call { arch, nr, args });
                        }
                    }
                }
                for call in &calls {
                    assert_eq!(
                        run(&f.program, call).0,
                        expected(call),
                        "system call {nr} (arch {arch:#x}) with arguments {:x?}",
                        call.args
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 3000, "{checked} calls checked");
    }

    #[test]
    fn every_verdict_is_a_short_search_away() {
        let f = build().expect("filter builds");
        // prologue (4), the search (about log2 of the numbers with rules, then a short chain),
        // and an argument check (at most one load and six comparisons)
        let longest = (0..1024u32)
            .flat_map(|nr| {
                interesting_args().into_iter().map(move |value| Call {
                    arch: AUDIT_ARCH,
                    nr,
                    args: [value; 6],
                })
            })
            .map(|call| run(&f.program, &call).1)
            .max()
            .unwrap_or(0);
        assert!(longest <= 24, "a verdict took {longest} instructions");
        assert!(f.program.len() < 200, "{} instructions", f.program.len());
    }

    #[test]
    fn filter_builds_and_counts_rules() {
        let f = build().expect("filter builds");
        assert!(f.rules > 40, "{} rules", f.rules);
        assert!(f.program.len() > rules().len());
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

    #[test]
    fn a_jump_too_long_for_classic_bpf_is_refused() {
        let mut ops = vec![jump(BPF_JMP_JEQ_K, 1, Label::Eperm, None)];
        ops.extend(std::iter::repeat_n(Op::Ret(SECCOMP_RET_ALLOW), 300));
        ops.extend([Op::Mark(Label::Eperm), Op::Ret(EPERM)]);
        let err = assemble(&ops).expect_err("a jump of 300");
        assert!(err.to_string().contains("a jump of 300"), "{err}");
    }
}
