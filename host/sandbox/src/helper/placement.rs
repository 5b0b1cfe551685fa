//! Which CPU the gear's command starts on.
//!
//! A new process goes to the idlest CPU the scheduler finds. When the helper forks the
//! command, that is the CPU of whoever has been waiting longest for the start (the node, or
//! `gear sandbox run`, asleep on the report pipe for a millisecond), and after a quiet moment a
//! CPU that idle has gone to sleep: in a virtual machine its wake-up took 130-200 µs in most
//! starts measured, 10 µs when it had been busy just before. The helper's own CPU is awake and
//! warm, and the command's start is what everyone waits for, while what the helper does after
//! the fork (its own confinement, then waiting) is not. So the command is started on the
//! helper's CPU, and the helper steps aside to another one: its affinity is narrowed to the
//! current CPU across the fork (the child inherits it), then the child takes the original set
//! back before anything else, and the helper moves off the CPU and takes the set back too.
//! Neither ends up pinned. With one CPU allowed, or when the CPU cannot be read, nothing is
//! changed.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The affinity to restore on both sides of the fork, while it is narrowed.
pub(super) struct CommandPlacement {
    /// The set the helper had, and the CPU it was on, when it narrowed it.
    narrowed: Option<(CpuSet, usize)>,
}

impl CommandPlacement {
    /// Narrows this process's affinity to the CPU it runs on, for the fork that follows.
    pub(super) fn here() -> CommandPlacement {
        let narrowed = (|| {
            let me = Pid::from_raw(0);
            let all = sched_getaffinity(me).ok()?;
            let allowed = (0..CpuSet::count())
                .filter(|&c| all.is_set(c).unwrap_or(false))
                .count();
            if allowed < 2 {
                return None;
            }
            let cpu = nix::sched::sched_getcpu().ok()?;
            let mut only = CpuSet::new();
            only.set(cpu).ok()?;
            sched_setaffinity(me, &only).ok()?;
            Some((all, cpu))
        })();
        CommandPlacement { narrowed }
    }

    /// The original set back: in the command, first thing (it stays where it is until the
    /// scheduler has a reason to move it), or in the helper when the fork failed.
    pub(super) fn restore(&self) {
        if let Some((all, _)) = &self.narrowed {
            let _ = sched_setaffinity(Pid::from_raw(0), all);
        }
    }

    /// In the helper: move to another allowed CPU, leaving this one to the command, then take
    /// the original set back (the helper stays where it was moved).
    pub(super) fn step_aside(self) {
        let Some((all, cpu)) = self.narrowed else {
            return;
        };
        let me = Pid::from_raw(0);
        let mut others = all;
        if others.unset(cpu).is_ok() {
            let _ = sched_setaffinity(me, &others);
        }
        let _ = sched_setaffinity(me, &all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affinity() -> CpuSet {
        sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity")
    }

    fn cpus(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    }

    // A test thread's affinity is its own: nothing else in the test process is touched.
    #[test]
    fn the_set_is_narrowed_for_the_fork_and_comes_back_on_both_sides() {
        let before = cpus(&affinity());
        let placement = CommandPlacement::here();
        if before.len() < 2 {
            assert!(
                placement.narrowed.is_none(),
                "one CPU allowed: nothing to narrow"
            );
            return;
        }
        let (_, cpu) = placement.narrowed.expect("narrowed with two CPUs allowed");
        assert_eq!(cpus(&affinity()), vec![cpu], "narrowed to the current CPU");
        // the child's side
        placement.restore();
        assert_eq!(cpus(&affinity()), before);
        // the helper's side: moved off the CPU, then the whole set again
        let placement = CommandPlacement::here();
        let (_, cpu) = placement.narrowed.expect("narrowed again");
        placement.step_aside();
        assert_ne!(nix::sched::sched_getcpu().expect("sched_getcpu"), cpu);
        assert_eq!(cpus(&affinity()), before);
    }
}
