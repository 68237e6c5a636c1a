//! Runs one parsed command and hands back what it prints (`cli::Output`): the
//! dispatch of the binary.
//!
//! It never prints: `main` writes the `Output` once. The process environment is
//! read only by the commands' entry points (`deploy::main`, `status::main`,
//! `drift::main`) and handed down.

use crate::cli::{self, Command, Output};

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
    }
}
