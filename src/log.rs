//! Go-`log`-style timestamped lines on stderr, and an in-memory copy of them (SPEC §9).
//!
//! Every line is `2006/01/02 15:04:05 message` in local time. The copy is what the
//! `success` / `failure` hooks get on stdin. This module never decides what to log.

use std::fmt::Display;
use std::io::Write;
use std::sync::{Mutex, MutexGuard};

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// When set, lines are only kept in memory, never written to stderr (`status`
/// under a serf query, whose stderr would be mixed into the answer).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops (or resumes) writing log lines to stderr.
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

fn buffer() -> MutexGuard<'static, Vec<u8>> {
    // A panic while holding the lock cannot leave the Vec in a broken state, so a
    // poisoned lock is still safe to use.
    BUFFER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Logs a message: each of its lines becomes one timestamped line.
pub(crate) fn line(msg: impl Display) {
    let out = stamped(msg);
    let mut buf = buffer();
    buf.extend_from_slice(out.as_bytes());
    // stderr may be closed (a handler redirected nowhere); the in-memory copy is
    // what matters for the hooks, so a failed write is not an error.
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }
}

/// A message as the log writes it, without logging it: each of its lines stamped
/// with the time now and ended by a newline (a command's own lines for stderr).
pub(crate) fn stamped(msg: impl Display) -> String {
    let text = msg.to_string();
    let stamp = chrono::Local::now().format("%Y/%m/%d %H:%M:%S").to_string();
    let mut out = String::with_capacity(text.len() + 24);
    let body = text.strip_suffix('\n').unwrap_or(&text);
    for l in body.split('\n') {
        out.push_str(&stamp);
        out.push(' ');
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// A copy of everything logged so far in this run.
pub(crate) fn snapshot() -> Vec<u8> {
    buffer().clone()
}

/// Forgets the in-memory copy (start of a run; tests).
pub fn reset() {
    buffer().clear();
}

/// A name or path as shown to the user (SPEC §9): as it is when UTF-8, each byte of
/// an invalid sequence as `\xNN` otherwise (never `?` or U+FFFD).
pub(crate) fn shown(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// [`shown`] of a path's bytes.
pub(crate) fn shown_path(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    shown(path.as_os_str().as_bytes())
}

/// `logln!("downloaded {} bytes", n)`: format and log one message.
#[macro_export]
macro_rules! logln {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_stamped() {
        line("first\nsecond\n");
        let snap = String::from_utf8(snapshot()).unwrap();
        let tail: Vec<&str> = snap.lines().rev().take(2).collect();
        for l in &tail {
            // 2006/01/02 15:04:05 = 19 chars, then a space
            assert_eq!(l.as_bytes()[4], b'/');
            assert_eq!(l.as_bytes()[13], b':');
            assert_eq!(l.as_bytes()[19], b' ');
        }
        assert!(tail[1].ends_with(" first"));
        assert!(tail[0].ends_with(" second"));
    }

    #[test]
    fn names_are_shown_escaped_only_where_not_utf8() {
        assert_eq!(shown("café ☃".as_bytes()), "café ☃");
        assert_eq!(shown(b"caf\xe9/x"), "caf\\xe9/x");
        assert_eq!(shown(b"\xff\xfe"), "\\xff\\xfe");
        assert_eq!(shown(b"a\xe2\x98"), "a\\xe2\\x98");
    }
}
