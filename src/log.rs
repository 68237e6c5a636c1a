//! Go-`log`-style timestamped lines on stderr, and a copy of them for the final
//! hooks (SPEC §9, §17).
//!
//! Every line is `2006/01/02 15:04:05 message` in local time. The copy is what the
//! `success` / `failure` hooks get on stdin: an unlinked temporary file
//! (`tempfile::tempfile`) written as lines are logged, so memory stays bounded
//! whatever the hooks print. Where no temporary file can be made (a minimal root
//! without `/tmp`) the copy is kept in memory, and the log says so. This module never
//! decides what to log.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

/// The copy of this run's log.
enum Copy {
    /// Nothing logged yet: the file is made with the first line.
    Unmade,
    /// The unlinked temporary file, `len` bytes long; `failed` once a write to it
    /// failed (said once on stderr: the hooks get what it holds).
    /// `pending`: the newest lines, not yet written (at most `FLUSH_AT` bytes and one
    /// line), so that a run that logs every file it creates makes one write per 64 KiB
    /// rather than one per line.
    File {
        file: File,
        len: u64,
        pending: Vec<u8>,
        failed: bool,
    },
    /// No temporary file could be made.
    Memory(Vec<u8>),
}

impl Copy {
    fn append(&mut self, bytes: &[u8]) {
        if let Copy::Unmade = self {
            *self = match tempfile::tempfile() {
                Ok(file) => Copy::File {
                    file,
                    len: 0,
                    pending: Vec::with_capacity(FLUSH_AT),
                    failed: false,
                },
                Err(e) => {
                    let note = line_text(&format!(
                        "warning: no temporary file for the log ({e}): the log for the success and failure commands is kept in memory"
                    ));
                    write_stderr(note.as_bytes());
                    Copy::Memory(note.into_bytes())
                }
            };
        }
        match self {
            Copy::Unmade => {}
            Copy::Memory(v) => v.extend_from_slice(bytes),
            Copy::File { pending, .. } => {
                pending.extend_from_slice(bytes);
                if pending.len() >= FLUSH_AT {
                    self.flush();
                }
            }
        }
    }

    /// Writes the pending lines to the file (before it is read back).
    fn flush(&mut self) {
        if let Copy::File {
            file,
            len,
            pending,
            failed,
        } = self
        {
            if pending.is_empty() {
                return;
            }
            let result = file.write_all(pending);
            let written = pending.len() as u64;
            pending.clear();
            match result {
                Ok(()) => *len += written,
                Err(e) if !*failed => {
                    *failed = true;
                    // The file's end is unknown after a partial write: what it held
                    // before stays the copy.
                    let _ = file.set_len(*len);
                    let note = line_text(&format!(
                        "warning: cannot write the log for the success and failure commands ({e}): they get it only up to here"
                    ));
                    write_stderr(note.as_bytes());
                }
                Err(_) => {}
            }
        }
    }
}

/// Pending lines of the copy are written out once they reach this size.
const FLUSH_AT: usize = 64 * 1024;

static COPY: Mutex<Copy> = Mutex::new(Copy::Unmade);

/// When set, lines are only kept in the copy, never written to stderr (`status`
/// under a serf query, whose stderr would be mixed into the answer).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops (or resumes) writing log lines to stderr.
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

fn copy() -> MutexGuard<'static, Copy> {
    // A panic while holding the lock leaves at worst a line half in the copy, so a
    // poisoned lock is still safe to use.
    COPY.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_stderr(bytes: &[u8]) {
    // stderr may be closed (a handler redirected nowhere); the copy is what matters
    // for the hooks, so a failed write is not an error.
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = std::io::stderr().lock().write_all(bytes);
    }
}

/// Lines for stderr held while a [`Burst`] is alive.
struct Held {
    /// The bursts alive.
    bursts: usize,
    /// Lines not yet written (at most `FLUSH_AT` bytes and one line).
    bytes: Vec<u8>,
}

static HELD: Mutex<Held> = Mutex::new(Held {
    bursts: 0,
    bytes: Vec::new(),
});

fn held() -> MutexGuard<'static, Held> {
    // A panic while holding the lock leaves at worst a line half in the buffer.
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// While one is alive, log lines reach stderr in writes of up to 64 KiB instead of
/// one write a line (a sync that lists each of 20,000 files it creates); whatever is
/// held is written when the last one is dropped. Lines keep their order, whichever
/// thread logs them.
#[must_use = "the lines are held only while the burst is alive"]
pub(crate) struct Burst(());

/// Starts a [`Burst`].
pub(crate) fn burst() -> Burst {
    held().bursts += 1;
    Burst(())
}

impl Drop for Burst {
    fn drop(&mut self) {
        held().end_burst(&mut write_stderr);
    }
}

impl Held {
    /// One burst fewer; the last one writes what is held.
    fn end_burst(&mut self, write: &mut dyn FnMut(&[u8])) {
        self.bursts = self.bursts.saturating_sub(1);
        if self.bursts == 0 && !self.bytes.is_empty() {
            write(&self.bytes);
            self.bytes = Vec::new();
        }
    }

    /// `bytes` written now, or held during a burst (written once `FLUSH_AT` is reached).
    fn take(&mut self, bytes: &[u8], write: &mut dyn FnMut(&[u8])) {
        if self.bursts == 0 {
            write(bytes);
            return;
        }
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() >= FLUSH_AT {
            write(&self.bytes);
            self.bytes.clear();
        }
    }
}

/// `bytes` (whole lines) to stderr: now, or held during a [`Burst`].
fn to_stderr(bytes: &[u8]) {
    held().take(bytes, &mut write_stderr);
}

/// The stamp of the second `secs` (since the epoch) in local time, and that second.
type Stamp = (u64, String);

thread_local! {
    /// The last stamp made on this thread: a run that logs thousands of lines a
    /// second formats it once a second.
    static STAMP: std::cell::RefCell<Option<Stamp>> = const { std::cell::RefCell::new(None) };
}

/// `2006/01/02 15:04:05` of the time now, in local time.
fn stamp_now(out: &mut String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    STAMP.with(|cell| {
        let mut cell = cell.borrow_mut();
        match &*cell {
            Some((s, text)) if *s == secs => out.push_str(text),
            _ => {
                let text = chrono::Local::now().format("%Y/%m/%d %H:%M:%S").to_string();
                out.push_str(&text);
                *cell = Some((secs, text));
            }
        }
    });
}

/// `msg` as log lines: each of its lines stamped with the local time.
fn line_text(msg: &str) -> String {
    let mut stamp = String::with_capacity(19);
    stamp_now(&mut stamp);
    let mut out = String::with_capacity(msg.len() + 24);
    let body = msg.strip_suffix('\n').unwrap_or(msg);
    for l in body.split('\n') {
        out.push_str(&stamp);
        out.push(' ');
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// A message as the log writes it, without logging it: each of its lines stamped
/// with the time now and ended by a newline (a command's own lines for stderr).
pub(crate) fn stamped(msg: impl Display) -> String {
    line_text(&msg.to_string())
}

/// Logs a message: each of its lines becomes one timestamped line.
pub(crate) fn line(msg: impl Display) {
    let out = line_text(&msg.to_string());
    let mut copy = copy();
    copy.append(out.as_bytes());
    // Still under the copy's lock: stderr gets the lines in the copy's order.
    to_stderr(out.as_bytes());
}

/// The log of this run up to the moment [`saved`] was called, for the stdin of the
/// `success` / `failure` commands: each [`Saved::reader`] reads it from the start.
#[derive(Debug)]
pub(crate) struct Saved(Source);

#[derive(Debug)]
enum Source {
    /// The first `len` bytes of the temporary file (a descriptor of its own).
    File {
        file: Arc<File>,
        len: u64,
    },
    Memory(Arc<[u8]>),
}

impl Saved {
    /// The saved log from its first byte.
    pub(crate) fn reader(&self) -> Box<dyn Read + Send> {
        match &self.0 {
            Source::File { file, len } => Box::new(FileRange {
                file: Arc::clone(file),
                pos: 0,
                end: *len,
            }),
            Source::Memory(bytes) => Box::new(io::Cursor::new(Arc::clone(bytes))),
        }
    }

    /// `bytes` as if they had been logged (tests of the hooks).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: &[u8]) -> Saved {
        Saved(Source::Memory(bytes.into()))
    }
}

/// Reads `pos..end` of a file by offset (`pread`), never moving the offset the
/// logging writes at.
struct FileRange {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for FileRange {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Everything logged so far in this run, to be read back (by the final hooks) while
/// the log goes on. When the copy's file cannot be shared, the log says so and
/// the hooks get an empty stdin.
pub(crate) fn saved() -> Saved {
    let mut copy = copy();
    copy.flush();
    match &*copy {
        Copy::Unmade => Saved(Source::Memory(Arc::from(&[][..]))),
        Copy::Memory(v) => Saved(Source::Memory(Arc::from(&v[..]))),
        Copy::File { file, len, .. } => match file.try_clone() {
            Ok(f) => Saved(Source::File {
                file: Arc::new(f),
                len: *len,
            }),
            Err(e) => {
                drop(copy);
                line(format!(
                    "warning: cannot read back the log for the success and failure commands: {e}"
                ));
                Saved(Source::Memory(Arc::from(&[][..])))
            }
        },
    }
}

/// Everything logged so far, read back whole (tests).
#[cfg(test)]
pub(crate) fn snapshot() -> Vec<u8> {
    let mut out = Vec::new();
    saved().reader().read_to_end(&mut out).unwrap();
    out
}

/// Forgets the copy (start of a run; tests, fuzzing): its file is emptied for the
/// next lines.
pub fn reset() {
    use std::io::Seek;
    let mut copy = copy();
    match &mut *copy {
        Copy::Unmade => {}
        Copy::Memory(v) => v.clear(),
        Copy::File {
            file,
            len,
            pending,
            failed,
        } => {
            pending.clear();
            if file.set_len(0).and_then(|()| file.rewind()).is_ok() {
                *len = 0;
                *failed = false;
            } else {
                *copy = Copy::Unmade;
            }
        }
    }
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
    fn a_burst_holds_lines_until_it_ends_or_64_kib_are_held() {
        let mut written: Vec<Vec<u8>> = Vec::new();
        let mut held = Held {
            bursts: 0,
            bytes: Vec::new(),
        };
        held.take(b"now\n", &mut |b| written.push(b.to_vec()));
        assert_eq!(written, [b"now\n".to_vec()]);
        // two bursts at once: only the end of the last writes
        held.bursts += 2;
        held.take(b"a\n", &mut |b| written.push(b.to_vec()));
        held.take(b"b\n", &mut |b| written.push(b.to_vec()));
        assert_eq!(written.len(), 1);
        held.end_burst(&mut |b| written.push(b.to_vec()));
        assert_eq!(written.len(), 1);
        held.end_burst(&mut |b| written.push(b.to_vec()));
        assert_eq!(written, [b"now\n".to_vec(), b"a\nb\n".to_vec()]);
        // a long burst writes in pieces of at least FLUSH_AT, in order
        held.bursts += 1;
        let one = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..2000 {
            held.take(&one, &mut |b| written.push(b.to_vec()));
        }
        held.end_burst(&mut |b| written.push(b.to_vec()));
        assert_eq!(held.bursts, 0);
        let pieces = &written[2..];
        assert_eq!(pieces.len(), 2000 * 100 / FLUSH_AT + 1);
        assert!(pieces[..pieces.len() - 1]
            .iter()
            .all(|p| p.len() >= FLUSH_AT));
        assert_eq!(pieces.concat(), one.repeat(2000));
        // and a line logged in a burst reaches the copy at once
        let b = burst();
        line("held in a burst");
        assert!(String::from_utf8_lossy(&snapshot()).contains("held in a burst"));
        drop(b);
    }

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
    fn the_copy_is_a_file_read_back_from_its_start_while_the_log_goes_on() {
        line("saved-one");
        let saved = saved();
        line("logged-after");
        for _ in 0..2 {
            let mut text = String::new();
            saved.reader().read_to_string(&mut text).unwrap();
            assert!(text.ends_with(" saved-one\n"), "{text}");
            assert!(!text.contains("logged-after"), "{text}");
        }
        // kept on disk, not in memory
        assert!(matches!(&*copy(), Copy::File { .. }));
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
