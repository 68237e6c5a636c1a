//! The processes of one running hook, found and ended whole (SPEC §17).
//!
//! stretcher makes itself the child subreaper of its hooks' processes
//! (`PR_SET_CHILD_SUBREAPER`): one that leaves the hook's process group or session
//! (`setsid`) and loses its parent is re-parented to stretcher, not to init, so it can
//! still be found when the hook is stopped. A process belongs to the running hook when
//! its line of parents leads to the hook's shell, or to stretcher itself through
//! processes that all started no earlier than the hook and none of which is another
//! hook's shell (tests run hooks side by side). Something an earlier hook left running
//! (`server &`) started before this hook, and so did its children's parent: it is never
//! touched — but for an orphan such a process makes while this hook runs (a daemon's
//! double fork): re-parented to stretcher after the hook started, it is taken as the
//! hook's. The table is read from `/proc`; without it (a minimal root) only the hook's
//! process group is ended, and the log says so.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::logln;
use crate::process::{stat, Proc};

/// The shells of the hooks running now (their pids): a hook's kill leaves the others'
/// processes alone. Spawning and registering is one step under this lock, and so is a
/// kill's look at the table, so no shell is ever reaped behind its `Child`'s back.
static RUNNING: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn running() -> MutexGuard<'static, Vec<i32>> {
    // A Vec of pids cannot be left half-changed by a panic.
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes stretcher the child subreaper of what it starts, once per process.
pub(super) fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            logln!(
                "warning: cannot become the child subreaper of hook commands ({e}): a process that leaves a hook's session survives its timeout"
            );
        }
    });
}

/// A hook's shell, registered as running until dropped.
#[derive(Debug)]
pub(super) struct Hook {
    pid: i32,
    /// When the shell started (clock ticks since boot, `/proc/PID/stat`); `None`
    /// without `/proc`.
    start: Option<u64>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        running().retain(|p| *p != self.pid);
    }
}

/// Starts `cmd` (in a process group of its own: the caller's setting) and registers it.
pub(super) fn spawn(cmd: &mut Command) -> io::Result<(Child, Hook)> {
    let mut running = running();
    let child = cmd.spawn()?;
    // Invariant: Linux pids fit an i32 (pid_max is at most 2^22).
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    running.push(pid);
    let start = stat(pid).map(|p| p.start);
    Ok((child, Hook { pid, start }))
}

impl Hook {
    /// Ends the hook: SIGTERM to its process group and to every other process of it,
    /// SIGKILL after `grace` (sooner when all are gone) to whatever is left; the shell
    /// and the orphans re-parented to stretcher are reaped.
    pub(super) fn kill(&self, child: &mut Child, grace: Duration) {
        let pg = Pid::from_raw(self.pid);
        let _ = killpg(pg, Signal::SIGTERM);
        if self.start.is_none() || table().is_err() {
            logln!(
                "warning: /proc cannot be read: processes of the hook outside its process group cannot be found"
            );
        }
        self.signal_rest(Some(Signal::SIGTERM));
        let end = Instant::now() + grace;
        while Instant::now() < end {
            // Reap the shell (a zombie still counts as a member of its group), then
            // ask whether any process of the hook is left.
            let _ = child.try_wait();
            let left = self.signal_rest(None);
            if killpg(pg, None).is_err() && left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pg, Signal::SIGKILL);
        // Killed processes can still fork until the signal lands: a few rounds.
        for _ in 0..50 {
            if self.signal_rest(Some(Signal::SIGKILL)) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        // Orphans of the shell's last moments.
        self.signal_rest(None);
    }

    /// Sends `sig` to every live process of the hook but its shell, and reaps those
    /// that died and are stretcher's children; answers how many are still alive.
    fn signal_rest(&self, sig: Option<Signal>) -> usize {
        let Some(since) = self.start else {
            return 0;
        };
        let running = running();
        let Ok(table) = table() else {
            return 0;
        };
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let others: Vec<i32> = running.iter().copied().filter(|p| *p != self.pid).collect();
        let mut alive = 0;
        for p in members(&table, me, (self.pid, since), &others) {
            if p.pid == self.pid {
                // The shell: its `Child` reaps it.
                alive += usize::from(!p.zombie);
                continue;
            }
            if p.zombie {
                if p.ppid == me {
                    let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
                }
                continue;
            }
            alive += 1;
            if let Some(sig) = sig {
                let _ = kill(Pid::from_raw(p.pid), sig);
            }
        }
        alive
    }
}

/// Every process `/proc` lists now (those that end while it is read are left out).
fn table() -> io::Result<Vec<Proc>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        if let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) {
            out.extend(stat(pid));
        }
    }
    Ok(out)
}

/// The processes of `table` that belong to the hook `(shell pid, its start)`, for
/// stretcher's pid `me` while the hooks `others` also run (see the module's doc).
fn members(table: &[Proc], me: i32, hook: (i32, u64), others: &[i32]) -> Vec<Proc> {
    let by_pid: HashMap<i32, &Proc> = table.iter().map(|p| (p.pid, p)).collect();
    let belongs = |p: &Proc| {
        let mut cur = p;
        // Bounded: a table read while it changes can hold a loop.
        for _ in 0..=table.len() {
            if (cur.pid, cur.start) == hook {
                return true;
            }
            if cur.start < hook.1 || others.contains(&cur.pid) || cur.pid == me {
                return false;
            }
            if cur.ppid == me {
                return true;
            }
            match by_pid.get(&cur.ppid) {
                Some(parent) => cur = parent,
                None => return false,
            }
        }
        false
    };
    table.iter().filter(|p| belongs(p)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, start: u64) -> Proc {
        Proc {
            pid,
            ppid,
            start,
            zombie: false,
        }
    }

    #[test]
    fn a_hook_owns_its_tree_and_its_orphans_and_nothing_older_or_another_hooks() {
        let me = 100;
        let table = [
            p(1, 0, 0),
            p(me, 1, 10),
            // this hook (started at 50), a child, a grandchild
            p(200, me, 50),
            p(201, 200, 51),
            p(202, 201, 52),
            // an orphan of it (setsid, its parent gone) and the orphan's child
            p(210, me, 55),
            p(211, 210, 56),
            // a server an earlier hook left running, and a worker it forked since
            p(300, me, 20),
            p(301, 300, 60),
            // another hook's shell and its child
            p(400, me, 53),
            p(401, 400, 54),
            // unrelated
            p(500, 1, 70),
        ];
        let mut got: Vec<i32> = members(&table, me, (200, 50), &[400])
            .iter()
            .map(|p| p.pid)
            .collect();
        got.sort_unstable();
        assert_eq!(got, [200, 201, 202, 210, 211]);
        // a table read while it changed can hold a loop of parents: not the hook's
        let looped = [p(me, 1, 10), p(600, 601, 60), p(601, 600, 61)];
        assert!(members(&looped, me, (200, 50), &[]).is_empty());
    }
}
