//! The `stretcher` binary: parse the command line, run one deploy, exit with its
//! status. Everything else lives in the library.

use std::process::ExitCode;

use stretcher::cli::{self, Command};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if let Some(code) = stretcher::release::subcommand(&args) {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let code = match cli::parse(&args) {
        Ok(Command::Version) => {
            println!("stretcher {}", stretcher::VERSION);
            0
        }
        Ok(Command::Help) => {
            print!("{}", cli::usage());
            0
        }
        Ok(Command::Run(opts)) => stretcher::deploy::main(&opts),
        Ok(Command::SubcommandHelp(text)) => {
            print!("{text}");
            0
        }
        Ok(Command::Status(opts)) => stretcher::status::main(&opts),
        Ok(Command::FleetStatus(opts)) => stretcher::fleet::main(&opts),
        Ok(Command::Verify(opts)) => stretcher::drift::main(&opts),
        Err(e) => {
            eprintln!("stretcher: {e}");
            eprintln!("Try 'stretcher --help' for more information.");
            e.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
