//! Root among other local users (SPEC §17): what another account on the host, a
//! hook, or an old signed manifest can do to a deploy that runs as root. Each attack
//! is one test. The other user is a real account the test adds (`useradd`, see
//! `util::TestUser`) and removes; its commands run through `setpriv`, and whatever
//! the test starts as that user is ended by pid before the account goes.
//!
//! - a NUL in `commands.env` is a manifest error, before any hook runs;
//! - `--command-timeout` or a signal also ends a grandchild of a hook that left its
//!   session with `setsid`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::signing::{manifest_key, record};
use crate::util::*;

#[test]
fn nul_in_commands_env_is_a_manifest_error() {
    let s = Scratch::new();
    let marker = s.path().join("pre-ran");
    for env in ["GREETING: \"a\\0b\"", "\"A\\0B\": x"] {
        let m = s.manifest(
            "m.yml",
            &format!(
                "commands:\n  env:\n    {env}\n  pre:\n    - touch {}\n",
                marker.display()
            ),
        );
        let url = format!("file://{}", m.display());
        let run = s.stretcher().arg(&m).run();
        run.assert_fail().assert_log("commands.env");
        assert!(!marker.exists(), "a hook ran");
        let rec = record(&s, &manifest_key(&url));
        assert_eq!(rec["failed_step"], "manifest", "{rec:#}");
    }
}

/// A hook that starts `sleep 1000` in a session of its own (`setsid`), writes its pid
/// to `pidfile` and then waits in the foreground.
fn setsid_hook(s: &Scratch, pidfile: &Path) -> PathBuf {
    let script = s.file(
        "hook.sh",
        format!(
            "setsid sh -c 'echo $$ > {p}.tmp && mv {p}.tmp {p} && exec sleep 1000' &\n\
             while [ ! -s {p} ]; do sleep 0.05; done\n\
             sleep 30\n",
            p = pidfile.display()
        )
        .as_bytes(),
    );
    s.manifest(
        "m.yml",
        &format!("commands:\n  pre:\n    - sh {}\n", script.display()),
    )
}

/// Whether `pid` is a live `sleep` (a zombie is dead: it only waits to be reaped).
fn sleep_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    let state = tail.trim_start().chars().next();
    head.ends_with("(sleep") && state != Some('Z')
}

/// The grandchild's pid, and a guard that kills it should the test fail.
fn grandchild(pidfile: &Path) -> (i32, impl Drop) {
    let pid: i32 = std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            if sleep_alive(self.0) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.0),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    (pid, Kill(pid))
}

#[test]
fn command_timeout_kills_a_grandchild_that_left_with_setsid() {
    let s = Scratch::new();
    let pidfile = s.path().join("sleep.pid");
    let m = setsid_hook(&s, &pidfile);
    let run = s
        .stretcher()
        .args(["--command-timeout", "2s"])
        .arg(&m)
        .run();
    let (pid, _kill) = grandchild(&pidfile);
    run.assert_fail().assert_log("killed after timeout 2s");
    assert!(!sleep_alive(pid), "the setsid grandchild {pid} survived");
}

#[test]
fn a_signal_kills_a_grandchild_that_left_with_setsid() {
    let s = Scratch::new();
    let pidfile = s.path().join("sleep.pid");
    let m = setsid_hook(&s, &pidfile);
    let running = s.stretcher().arg(&m).spawn();
    let t = Instant::now();
    while !pidfile.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the hook never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (pid, _kill) = grandchild(&pidfile);
    running.signal(nix::sys::signal::Signal::SIGTERM);
    let run = running.wait();
    run.assert_fail().assert_log("interrupted by SIGTERM");
    assert!(!sleep_alive(pid), "the setsid grandchild {pid} survived");
}
