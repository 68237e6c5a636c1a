//! Processes as `/proc` shows them: one line of `/proc/PID/stat` (`Proc`), and
//! whether the process a record names (`Identity`: pid, start time, boot) is still
//! the one running (SPEC §13: a `running` record whose process is gone, a zombie, or
//! whose pid now belongs to another process is `interrupted`).
//!
//! A leaf: it reads `/proc` and sends signal 0, never changes anything.

use serde::{Deserialize, Serialize};

/// One line of the process table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proc {
    pub pid: i32,
    pub ppid: i32,
    /// Clock ticks since boot.
    pub start: u64,
    pub zombie: bool,
}

/// `/proc/PID/stat`: `pid (comm) state ppid ... starttime ...`; the command name
/// may hold spaces and parentheses, so the fields are counted from its last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Proc> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let fields: Vec<&str> = tail.split_whitespace().collect();
    Some(Proc {
        pid,
        // `X` (dead) is only ever seen for an instant; it is gone all the same.
        zombie: matches!(*fields.first()?, "Z" | "X"),
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The process `pid` now, from `/proc` (`None`: gone, or no `/proc`).
pub(crate) fn stat(pid: i32) -> Option<Proc> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Which process ran something, so that a later reader can tell whether it still
/// runs: its pid, its start (clock ticks since boot) and the boot it ran in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The process id.
    pub pid: u32,
    /// When it started, in clock ticks since boot (`/proc/PID/stat`); null when
    /// `/proc` could not be read.
    pub start_ticks: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id` of the boot it ran in; null when unknown.
    pub boot_id: Option<String>,
}

/// This boot's id (`None` without `/proc`).
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl Identity {
    /// The running process's own identity.
    pub(crate) fn me() -> Identity {
        let pid = std::process::id();
        Identity {
            pid,
            start_ticks: i32::try_from(pid).ok().and_then(stat).map(|p| p.start),
            boot_id: boot_id(),
        }
    }

    /// Whether the process is still running: not after a reboot, not a zombie, not
    /// a pid reused by a process that started at another time. Without `/proc` (or
    /// when it hides other users' processes), signal 0 decides: a process that
    /// exists but cannot be signalled counts as running.
    pub(crate) fn alive(&self) -> bool {
        if let (Some(then), Some(now)) = (&self.boot_id, boot_id()) {
            if *then != now {
                return false;
            }
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        if let Some(p) = stat(pid) {
            return !p.zombie && self.start_ticks.is_none_or(|s| s == p.start);
        }
        use nix::errno::Errno;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            Ok(()) | Err(Errno::EPERM) => {
                // /proc is readable for our own processes: a pid we can see in
                // neither way is gone; one /proc hides is believed alive.
                !std::path::Path::new("/proc/self/stat").exists()
                    || !std::path::Path::new(&format!("/proc/{pid}")).exists()
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_from_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 90 0 0 0 0 0 0 0 20 0 1 0 123456 2260992 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Proc {
                pid: 4242,
                ppid: 17,
                start: 123456,
                zombie: false
            })
        );
        let zombie = "7 (sleep) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0";
        assert!(parse_stat(zombie).unwrap().zombie);
        assert_eq!(parse_stat("7 (x) S 1"), None);
        assert!(stat(i32::try_from(std::process::id()).unwrap()).is_some());
    }

    #[test]
    fn this_process_is_alive_and_others_by_its_identity_are_not() {
        let me = Identity::me();
        assert!(me.start_ticks.is_some() && me.boot_id.is_some(), "{me:?}");
        assert!(me.alive());
        // the same pid, started at another time: a reused pid
        let reused = Identity {
            start_ticks: me.start_ticks.map(|s| s + 1),
            ..me.clone()
        };
        assert!(!reused.alive());
        // another boot
        let rebooted = Identity {
            boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
            ..me.clone()
        };
        assert!(!rebooted.alive());
        // a process that ended (and was reaped)
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = Identity {
            pid,
            start_ticks: None,
            boot_id: None,
        };
        assert!(!gone.alive());
    }

    #[test]
    fn a_zombie_is_not_alive() {
        use std::io::BufRead;
        // `sleep 0.3` ends after the shell became `sleep 30`, which never reaps it: a
        // zombie, and not a child of this process, which other tests' reaping could take.
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3 & echo $!; exec sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(parent.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid: i32 = line.trim().parse().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !stat(pid).is_some_and(|p| p.zombie) {
            assert!(std::time::Instant::now() < deadline, "never a zombie");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let id = Identity {
            pid: pid as u32,
            start_ticks: stat(pid).map(|p| p.start),
            boot_id: None,
        };
        let alive = id.alive();
        parent.kill().unwrap();
        parent.wait().unwrap();
        assert!(!alive);
    }
}
