//! `--detach` (SPEC §13): the deploy handed to a detached process, so that the
//! agent that started the handler is free again at once.
//!
//! Serf runs a host's handlers one at a time and waits for each — for the process
//! and for its stdout and stderr to close — so a deploy in progress would leave the
//! host silent to `stretcher-status` queries. With `--detach` the handler reads the
//! event's stdin (the serf payload, the consul event list, the line), then starts
//! the same binary again without `--detach` (the normalised command line `cli`
//! kept) in a session of its own (`setsid`), with that stdin (an anonymous memory
//! file), the same environment (the serf and consul variables), and stdout and
//! stderr appended to `STATE/detach.log` (`state::open_detach_log`) — none of the
//! agent's pipes — and returns. The detached process deploys exactly as a handler
//! would: the event's replay claim, dest's lock, the running marker, the record,
//! the hooks.
//!
//! Never deploys, never waits for the process it starts.

use std::io::{Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::cli::Options;
use crate::error::{Error, Result};
use crate::logln;
use crate::state;
use crate::Env;

/// The most of stdin handed on (a consul event list is the largest; a serf payload
/// is at most 512 bytes by default).
const MAX_STDIN: u64 = 64 << 20;

/// Starts the detached deploy with `args` (the command line without `--detach`):
/// reads `stdin` first when the event comes from it (no positional target), and
/// logs which process took the deploy over, and answers its pid.
pub(crate) fn run(opts: &Options, args: &[String], env: Env, stdin: &mut dyn Read) -> Result<u32> {
    let input = match &opts.target {
        Some(_) => None,
        None => Some(read_stdin(stdin)?),
    };
    let (out, log) = match state::state_dir(opts.state_dir.as_deref(), env) {
        Ok(dir) => {
            let (file, path) = state::open_detach_log(&dir)?;
            (Some(file), Some(path))
        }
        // Another user could write it: the deploy would refuse it too.
        Err(e @ Error::Unsafe { .. }) => return Err(e),
        Err(e) => {
            logln!("warning: no state directory ({e}): the detached deploy's log is dropped");
            (None, None)
        }
    };
    let exe = std::env::current_exe().map_err(|e| Error::io("find", "/proc/self/exe", e))?;
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    cmd.stdin(match input {
        Some(bytes) => Stdio::from(memory_file(&bytes)?),
        None => Stdio::null(),
    });
    match &out {
        Some(file) => {
            let err = file
                .try_clone()
                .map_err(|e| Error::io("duplicate", log.as_deref().unwrap_or(&exe), e))?;
            cmd.stdout(Stdio::from(err));
            cmd.stderr(Stdio::from(file.try_clone().map_err(|e| {
                Error::io("duplicate", log.as_deref().unwrap_or(&exe), e)
            })?));
        }
        None => {
            cmd.stdout(Stdio::null());
            cmd.stderr(Stdio::null());
        }
    }
    // SAFETY: `setsid` is async-signal-safe and touches no memory of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().map_err(|e| Error::io("start", &exe, e))?;
    let pid = child.id();
    // Not waited for: it outlives this process (re-parented when this one exits).
    drop(child);
    match &log {
        Some(path) => logln!(
            "Deploy handed to detached process {pid} (its log: {})",
            path.display()
        ),
        None => logln!("Deploy handed to detached process {pid}"),
    }
    Ok(pid)
}

/// All of stdin, at most `MAX_STDIN` bytes; a terminal is refused (nothing could
/// end it but the person typing, and the detached process could not ask them).
fn read_stdin(stdin: &mut dyn Read) -> Result<Vec<u8>> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        return Err(Error::Usage(
            "--detach reads the event on stdin, which is a terminal: give the manifest URL as an argument or pipe it"
                .into(),
        ));
    }
    let mut bytes = Vec::new();
    stdin
        .take(MAX_STDIN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Event {
            msg: format!("cannot read stdin: {e}"),
            source: Some(e.into()),
        })?;
    if bytes.len() as u64 > MAX_STDIN {
        return Err(Error::event(format!(
            "stdin is longer than {MAX_STDIN} bytes"
        )));
    }
    Ok(bytes)
}

/// `bytes` in an anonymous memory file (`memfd_create`), read from its start: the
/// detached process's stdin, however late it reads it.
fn memory_file(bytes: &[u8]) -> Result<std::fs::File> {
    use rustix::fs::MemfdFlags;
    let io = |e: std::io::Error| Error::io("write", "the detached deploy's stdin", e);
    let fd = rustix::fs::memfd_create("stretcher-stdin", MemfdFlags::CLOEXEC)
        .map_err(|e| io(e.into()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).map_err(io)?;
    file.rewind().map_err(io)?;
    Ok(file)
}
