//! The `stretcher` binary: parse the command line, run the one command it asks for,
//! print what that command hands back once, exit with its status. Everything else
//! lives in the library.

use std::io::Write;
use std::process::ExitCode;

use stretcher::cli::{self, Output};
use stretcher::commands;

fn main() -> ExitCode {
    fix_mmap_threshold();
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let output = match cli::parse(&args) {
        Ok(command) => commands::run(command),
        Err(e) => Output::usage(&e),
    };
    ExitCode::from(u8::try_from(print(&output)).unwrap_or(1))
}

/// glibc's allocator raises its mmap threshold to the size of each large block freed
/// (up to 32 MiB). A deploy frees several (the index read back, the unpack's maps, a
/// listing the plan consumed), after which its next large listings come from the heap,
/// whose freed room stays resident: at 100,000 files a deploy onto an indexed dest
/// peaked at 62 MB instead of 45 (benches/README.md, "Memory"). Fixed at glibc's
/// default (128 KiB), each large block is a mapping of its own, given back when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_mmap_threshold() {
    // SAFETY: `mallopt` only sets a parameter of the allocator; it is called first
    // thing in `main`, before any other thread exists or anything is allocated by one.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Other C libraries (musl) have no such threshold to fix.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_mmap_threshold() {}

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
