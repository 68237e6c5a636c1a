//! Runs one parsed command and hands back what it prints (`cli::Output`): the
//! dispatch of the binary, and the `releases` and `rollback` commands (SPEC §14),
//! whose work is `release`'s.
//!
//! It never prints: `main` writes the `Output` once. The process environment is
//! read only by the commands' entry points (`deploy::main`, `status::main`,
//! `drift::main`, and `rollback` here) and handed down.

use crate::cli::{self, Command, Output, ReleasesOptions, RollbackOptions};
use crate::drift::normalize_dest;
use crate::{log, release, state};

/// Runs `command`: what to print, and the exit status.
pub fn run(command: Command) -> Output {
    match command {
        Command::Version => Output::stdout(format!("stretcher {}\n", crate::VERSION), 0),
        Command::Help => Output::stdout(cli::usage(), 0),
        Command::SubcommandHelp(text) => Output::stdout(text, 0),
        Command::Run(opts) => Output::code(crate::deploy::main(&opts)),
        Command::Status(opts) => crate::status::main(&opts),
        Command::FleetStatus(opts) => crate::fleet::main(&opts),
        Command::Verify(opts) => crate::drift::main(&opts),
        Command::Releases(opts) => releases(&opts),
        Command::Rollback(opts) => rollback(&opts),
        Command::Rollout(opts) => crate::waves::main(&opts),
        Command::Pack(opts) => crate::pack::main(&opts),
        Command::CatchUp(opts) => crate::catch_up::main(&opts),
    }
}

/// `stretcher releases DEST`: one line per release, newest first (exit 0), or why
/// there is none to list (exit 1).
fn releases(opts: &ReleasesOptions) -> Output {
    match release::releases_text(&normalize_dest(&opts.dest)) {
        Ok(text) => Output::stdout(text, 0),
        Err(e) => Output::stderr(format!("stretcher releases: {e}"), 1),
    }
}

/// `stretcher rollback DEST [--to ID]`: the switch (`release::rollback`), its deploy
/// record, and what to tell: `DEST: FROM -> TO` on stdout, the log lines of the switch
/// on stderr (exit 0), or the error (exit 1).
fn rollback(opts: &RollbackOptions) -> Output {
    let env = |k: &str| std::env::var(k).ok();
    let started = chrono::Utc::now();
    let dest = normalize_dest(&opts.dest);
    let done = match release::rollback(&dest, opts.to.as_deref(), &env) {
        Ok(done) => done,
        Err(e) => return Output::stderr(format!("stretcher rollback: {e}"), 1),
    };
    let mut stderr = log::stamped(format_args!(
        "Rolled back {} from release {} to {}",
        dest.display(),
        done.from,
        done.to.id
    ));
    if done.revived {
        stderr += &log::stamped(format_args!(
            "release {} was marked bad; it is live again as asked",
            done.to.id
        ));
    }
    if let Some(e) = &done.mark_error {
        stderr += &format!("stretcher rollback: {e}\n");
        return Output {
            stderr,
            ..Output::code(1)
        };
    }
    match state::state_dir(opts.state_dir.as_deref(), &env) {
        Ok(dir) => release::record_rollback(&dir, &dest, &done, started),
        Err(e) => {
            stderr += &log::stamped(format_args!(
                "warning: no state directory ({e}): no deploy record is kept"
            ))
        }
    }
    Output {
        stderr,
        ..Output::stdout(
            format!("{}: {} -> {}\n", dest.display(), done.from, done.to.id),
            0,
        )
    }
}
