//! The `stretcher` binary: parse the command line, run the one command it asks for,
//! print what that command hands back once, exit with its status. Everything else
//! lives in the library.

use std::io::Write;
use std::process::ExitCode;

use stretcher::cli::{self, Output};
use stretcher::commands;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let output = match cli::parse(&args) {
        Ok(command) => commands::run(command),
        Err(e) => Output::usage(&e),
    };
    ExitCode::from(u8::try_from(print(&output)).unwrap_or(1))
}

/// Writes `output` (its stderr, then its stdout) and returns the exit status:
/// `code_if_unwritten` when stdout cannot be written. A stderr that cannot be
/// written is no error of the command's.
fn print(output: &Output) -> i32 {
    if !output.stderr.is_empty() {
        let _ = std::io::stderr().lock().write_all(output.stderr.as_bytes());
    }
    if output.stdout.is_empty() {
        return output.code;
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(output.stdout.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => output.code,
        Err(_) => output.code_if_unwritten,
    }
}
