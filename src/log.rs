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
    escaped(raw, false)
}

/// Text from a fleet member or a record (a node name, a dest, an error, a checksum,
/// a URL, a release's metadata) as printed for a terminal (SPEC §17): as [`shown`]
/// writes a name, and every control character as well (C0, DEL and C1: newlines,
/// carriage returns, escape sequences) as `\xNN` of each of its bytes, so that the
/// text stays on its line and cannot move the cursor or forge a line of its own.
pub(crate) fn shown_text(raw: impl AsRef<[u8]>) -> String {
    escaped(raw.as_ref(), true)
}

/// The one escaping of [`shown`] and [`shown_text`]: each byte of an invalid UTF-8
/// sequence, and with `controls` each byte of a control character, as `\xNN`.
fn escaped(raw: &[u8], controls: bool) -> String {
    let hex = |out: &mut String, bytes: &[u8]| {
        for b in bytes {
            out.push_str(&format!("\\x{b:02x}"));
        }
    };
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        if controls {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    hex(&mut out, c.encode_utf8(&mut [0; 4]).as_bytes());
                } else {
                    out.push(c);
                }
            }
        } else {
            out.push_str(chunk.valid());
        }
        hex(&mut out, chunk.invalid());
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
        // a name keeps its control characters (SPEC §9: as it is when UTF-8)
        assert_eq!(shown(b"a\nb"), "a\nb");
    }

    #[test]
    fn text_for_a_terminal_has_no_control_character_left() {
        assert_eq!(shown_text("café ☃"), "café ☃");
        assert_eq!(shown_text("a\nb\r\tc"), "a\\x0ab\\x0d\\x09c");
        assert_eq!(shown_text("\x1b[2J\x7f"), "\\x1b[2J\\x7f");
        // C1 controls (NEL here) as the bytes of their UTF-8
        assert_eq!(shown_text("a\u{85}b"), "a\\xc2\\x85b");
        assert_eq!(shown_text(b"caf\xe9\n"), "caf\\xe9\\x0a");
        let all: Vec<u8> = (0..=255).collect();
        let s = shown_text(&all);
        assert!(!s.chars().any(char::is_control), "{s}");
    }
}
