//! Hook commands (SPEC §4): each runs as `sh -c COMMAND` in stretcher's own working
//! directory, one after another, with `STRETCHER_*` in its environment; its stdout
//! and stderr become log lines as they arrive. `success` / `failure` commands get the
//! whole log of the run on stdin; one that does not read it is not an error.
//!
//! The only module that starts processes. A hook runs in its own process group, and
//! stretcher is the child subreaper of everything it starts, so a signal to stretcher,
//! or `--command-timeout`, stops every process of the hook: its group and those that
//! left it (`setsid`), found by [`tree`] (SIGTERM, then SIGKILL after `KILL_GRACE`).
//! Nothing of a stopped hook is left behind; what a hook that ended by itself left
//! running (`server &`) is not touched.
//!
//! A hook's stdin is always a pipe: the log for `success` / `failure` (read back from
//! the log's file, [`log::Saved`]), an empty one (closed at once) for `pre` / `post`.
//! Never `/dev/null`, which a minimal root (SPEC §16: the binary, `/bin/sh`,
//! `/etc/passwd`, `/etc/group`) may lack. A line of output longer than
//! `MAX_LINE` bytes is logged in pieces of that size, so memory stays bounded
//! whatever a hook prints.

mod tree;

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::interrupt;
use crate::log;
use crate::logln;

/// What the hooks learn about the deploy through their environment, and how long
/// each may run.
#[derive(Debug, Clone, Default)]
pub(crate) struct HookEnv {
    pub dest: String,
    pub src: String,
    pub manifest_url: String,
    /// `--command-timeout`: one command still running after this has its process
    /// group killed and fails with "killed after timeout D". Not exported to the hook.
    pub timeout: Option<Duration>,
    /// The manifest's `commands.env` (SPEC §4), exported beside the `STRETCHER_*`
    /// variables (validation keeps `STRETCHER_` names out).
    pub vars: Vec<(String, String)>,
}

impl HookEnv {
    fn vars(&self) -> [(&'static str, &str); 3] {
        [
            ("STRETCHER_DEST", &self.dest),
            ("STRETCHER_SRC", &self.src),
            ("STRETCHER_MANIFEST_URL", &self.manifest_url),
        ]
    }
}

/// What one phase's commands did: each command that ran, in order (for the deploy
/// record), and the phase's result (the first failure, which stops the phase).
#[derive(Debug)]
pub(crate) struct Phase {
    pub ran: Vec<Ran>,
    pub result: Result<()>,
}

/// Runs `commands` in order, stdin an empty pipe; stops at the first failure.
pub(crate) fn run(commands: &[String], env: &HookEnv) -> Phase {
    run_all(commands, env, None)
}

/// Runs `commands` in order, each with `input` (the log, from its start) on its stdin.
pub(crate) fn run_with_input(commands: &[String], env: &HookEnv, input: &log::Saved) -> Phase {
    run_all(commands, env, Some(input))
}

fn run_all(commands: &[String], env: &HookEnv, input: Option<&log::Saved>) -> Phase {
    let mut ran = Vec::with_capacity(commands.len());
    for c in commands {
        let (one, result) = run_one(c, env, input);
        ran.extend(one);
        if let Err(e) = result {
            return Phase {
                ran,
                result: Err(e),
            };
        }
    }
    Phase {
        ran,
        result: Ok(()),
    }
}

/// How long to wait, after a hook exited, for output still held open by something it
/// left running in the background (`server &`): then the log moves on without it.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// How long a hook's processes have to exit after SIGTERM before they get SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The longest log line made of one line of hook output; a longer one is logged in
/// pieces of this size.
const MAX_LINE: usize = 64 * 1024;

/// One command that ran, for the deploy record: its exit status or the signal that
/// ended it, and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ran {
    pub command: String,
    pub exit: Option<i32>,
    pub signal: Option<String>,
    pub seconds: f64,
}

/// Runs one command: what ran (nothing when a signal came first) and its result.
fn run_one(command: &str, env: &HookEnv, input: Option<&log::Saved>) -> (Option<Ran>, Result<()>) {
    if let Err(e) = interrupt::check() {
        return (None, Err(e));
    }
    let start = Instant::now();
    let result = spawn_and_wait(command, env, input);
    let (exit, signal) = match &result {
        Ok(status) => (status.code(), status.signal().map(signal_name)),
        // Stopped by us (timeout, interrupt): its group got SIGTERM first.
        Err(Error::Hook { .. } | Error::Interrupted(_)) => (None, Some("SIGTERM".to_string())),
        Err(_) => (None, None),
    };
    let ran = Ran {
        command: command.to_string(),
        exit,
        signal,
        seconds: start.elapsed().as_secs_f64(),
    };
    (
        Some(ran),
        result.and_then(|status| check_status(command, status)),
    )
}

fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| sig.to_string())
}

fn spawn_and_wait(command: &str, env: &HookEnv, input: Option<&log::Saved>) -> Result<ExitStatus> {
    logln!("Invoking command: {command}");
    tree::become_subreaper();
    let (reader, writer) = io::pipe().map_err(|e| spawn_error(command, e))?;
    let writer2 = writer.try_clone().map_err(|e| spawn_error(command, e))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(env.vars())
        .stdout(writer)
        .stderr(writer2)
        .stdin(Stdio::piped())
        .process_group(0);
    let (mut child, hook) = tree::spawn(&mut cmd).map_err(|e| spawn_error(command, e))?;
    // The Command still holds the write ends of the pipe; drop it so the reader sees
    // EOF once the hook (and its children) close theirs.
    drop(cmd);

    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        log_lines(BufReader::new(reader));
        let _ = done_tx.send(());
    });

    // Without input the write end is dropped here: the hook reads EOF at once.
    let stdin = child.stdin.take();
    let feeder = input.zip(stdin).map(|(saved, mut stdin)| {
        let mut log = saved.reader();
        std::thread::spawn(move || {
            // A hook that does not read its stdin closes the pipe: EPIPE is expected
            // and not an error (the process ignores SIGPIPE, as Rust programs do).
            let _ = io::copy(&mut log, &mut stdin);
        })
    });

    let status = wait(&mut child, &hook, command, env.timeout)?;
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let _ = done_rx.recv_timeout(OUTPUT_GRACE);
    Ok(status)
}

/// Logs each line a hook writes, as it arrives: one log line a line, or one a
/// `MAX_LINE` piece of a longer one (a UTF-8 character cut by the limit is carried
/// to the next piece whole).
fn log_lines(mut out: impl BufRead) {
    let mut line = Vec::new();
    loop {
        let room = MAX_LINE.saturating_sub(line.len()) as u64;
        let read = (&mut out).take(room).read_until(b'\n', &mut line);
        let end = !matches!(read, Ok(n) if n > 0);
        if line.is_empty() {
            if end {
                return;
            }
            continue;
        }
        let carry = if line.ends_with(b"\n") {
            line.pop();
            Vec::new()
        } else if end {
            Vec::new()
        } else {
            let cut = line.len() - incomplete_tail(&line);
            line.split_off(cut)
        };
        log::line(String::from_utf8_lossy(&line));
        if end {
            return;
        }
        line = carry;
    }
}

/// How many bytes at the end of `b` begin a UTF-8 character that is not complete.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=b.len().min(3) {
        let c = b[b.len() - back];
        if c & 0xC0 == 0x80 {
            // a continuation byte: its lead is further back
            continue;
        }
        let need = match c {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if need > back { back } else { 0 };
    }
    0
}

/// Waits for the hook, ending all of it ([`tree::Hook::kill`]) if a signal arrives
/// meanwhile or when it runs longer than `timeout`.
fn wait(
    child: &mut Child,
    hook: &tree::Hook,
    command: &str,
    timeout: Option<Duration>,
) -> Result<ExitStatus> {
    let deadline = timeout.map(|t| (Instant::now() + t, t));
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(spawn_error(command, e)),
        }
        if let Some(sig) = interrupt::pending() {
            hook.kill(child, KILL_GRACE);
            logln!("stopped command {command:?}: interrupted by {sig}");
            return Err(Error::Interrupted(sig));
        }
        if let Some((end, limit)) = deadline {
            if Instant::now() >= end {
                let limit = humantime::format_duration(limit);
                logln!("stopping command {command:?}: still running after {limit}");
                hook.kill(child, KILL_GRACE);
                return Err(Error::Hook {
                    command: command.to_string(),
                    status: format!("killed after timeout {limit}"),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_status(command: &str, status: ExitStatus) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| sig.to_string());
            format!("killed by signal {name}")
        }
        (None, None) => "failed".to_string(),
    };
    Err(Error::Hook {
        command: command.to_string(),
        status,
    })
}

fn spawn_error(command: &str, source: io::Error) -> Error {
    Error::Spawn {
        command: command.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            dest: "/d".into(),
            src: "file:///s".into(),
            manifest_url: "file:///m".into(),
            timeout: None,
            vars: vec![("APP_ENV".into(), "prod".into())],
        }
    }

    #[test]
    fn failure_is_reported_like_the_original() {
        let e = run(&["echo 'FOO'; echo 'BAR' 2>&1; false".to_string()], &env())
            .result
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed: echo 'FOO'; echo 'BAR' 2>&1; false exit status 1"
        );
        let log = String::from_utf8(log::snapshot()).unwrap();
        assert!(log.contains(" FOO\n") && log.contains(" BAR\n"), "{log}");
    }

    #[test]
    fn environment_and_output_reach_the_log() {
        run(
            &[
                "echo \"dest=$STRETCHER_DEST src=$STRETCHER_SRC m=$STRETCHER_MANIFEST_URL app=$APP_ENV\" >&2"
                    .to_string(),
            ],
            &env(),
        )
        .result
        .unwrap();
        let log = String::from_utf8(log::snapshot()).unwrap();
        assert!(
            log.contains(" dest=/d src=file:///s m=file:///m app=prod\n"),
            "{log}"
        );
    }

    #[test]
    fn unread_stdin_is_not_an_error() {
        let big = log::Saved::from_bytes(&vec![b'x'; 1 << 20]);
        run_with_input(&["echo ok".to_string()], &env(), &big)
            .result
            .unwrap();
        let log = String::from_utf8(log::snapshot()).unwrap();
        assert!(!log.contains("roken pipe"), "{log}");
    }

    #[test]
    fn stdin_without_input_is_an_empty_pipe() {
        // `cat` returns at once (EOF), and stdin is a pipe, not /dev/null.
        run(
            &["cat; test -p /dev/stdin && echo stdin-is-an-empty-pipe".to_string()],
            &env(),
        )
        .result
        .unwrap();
        let log = String::from_utf8(log::snapshot()).unwrap();
        assert!(log.contains(" stdin-is-an-empty-pipe\n"), "{log}");
    }

    #[test]
    fn a_phase_returns_what_ran_up_to_its_first_failure() {
        let commands = ["true", "exit 3", "echo never"].map(String::from);
        let phase = run(&commands, &env());
        assert!(phase.result.is_err());
        let ran: Vec<_> = phase
            .ran
            .iter()
            .map(|r| (r.command.as_str(), r.exit))
            .collect();
        assert_eq!(ran, [("true", Some(0)), ("exit 3", Some(3))]);
        // Nothing is kept between phases: the next one reports only its own.
        let phase = run(&["true".to_string()], &env());
        assert_eq!(phase.ran.len(), 1);
        assert!(phase.result.is_ok());
    }

    #[test]
    fn a_long_line_is_logged_in_pieces_that_keep_characters_whole() {
        // The limit falls inside the two bytes of an é: it goes whole to the next piece.
        let mut out = vec![b'a'; MAX_LINE - 1];
        out.extend_from_slice("étail\nnext\nno newline".as_bytes());
        log_lines(&out[..]);
        let log = String::from_utf8(log::snapshot()).unwrap();
        assert!(log.contains(&format!(" {}\n", "a".repeat(MAX_LINE - 1))));
        for piece in [" étail\n", " next\n", " no newline\n"] {
            assert!(log.contains(piece), "{piece:?}");
        }
        assert!(!log.contains('\u{fffd}'), "a character was cut");
    }

    #[test]
    fn signal_death_is_named() {
        let e = run(&["kill -9 $$".to_string()], &env()).result.unwrap_err();
        assert_eq!(e.to_string(), "failed: kill -9 $$ killed by signal SIGKILL");
    }

    #[test]
    fn timeout_kills_the_whole_group_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-survived");
        let env = HookEnv {
            timeout: Some(Duration::from_millis(300)),
            ..env()
        };
        // A background child that ignores SIGTERM: SIGKILL after the grace gets it.
        let cmd = format!(
            "(trap '' TERM; sleep 4; touch {}) & sleep 30",
            marker.display()
        );
        let t = Instant::now();
        let e = run(std::slice::from_ref(&cmd), &env).result.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("failed: {cmd} killed after timeout 300ms")
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(4500).saturating_sub(t.elapsed()));
        assert!(!marker.exists(), "a process of the hook's group survived");
    }

    #[test]
    fn timeout_spares_a_quick_command() {
        let env = HookEnv {
            timeout: Some(Duration::from_secs(20)),
            ..env()
        };
        run(&["true".to_string(), "echo quick".to_string()], &env)
            .result
            .unwrap();
        run_with_input(
            &["cat >/dev/null".to_string()],
            &env,
            &log::Saved::from_bytes(b"log"),
        )
        .result
        .unwrap();
    }
}
