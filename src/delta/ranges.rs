//! The fetched members' ranges (SPEC §18): read by range into the scratch file at
//! their archive offsets, a few requests in flight, while the stream that reads them
//! runs; a span is handed out only once every byte of it is written. Each thread then
//! decompresses its span's small members ahead of the stream (as much of each as the
//! stream reads, within `AHEAD_BUDGET` bytes held), so that the stream, one thread,
//! mostly copies; a member not decompressed ahead (too large, no room yet, or a
//! failure, which the stream then meets itself) the stream decompresses.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::Scope;
use std::time::Instant;

use super::{member_reader, Delta};
use crate::error::{Error, Result};
use crate::fetch::{self, Span};
use crate::toc::Codec;

/// Range requests in flight at once.
const IN_FLIGHT: usize = 4;
/// Members whose output the stream reads more of than this are never decompressed
/// ahead (the stream decompresses them, streaming).
const AHEAD_MAX: u64 = 512 << 10;
/// Output decompressed ahead and not yet taken by the stream: at most this much (or
/// one member), besides the members being decompressed.
const AHEAD_BUDGET: u64 = 1 << 20;

/// A member to fetch: where it is, and how much of its output the stream reads (the
/// end of the last fetched file's data in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    pub offset: u64,
    pub len: u64,
    pub need: u64,
}

/// A member's output, ahead of the stream.
enum Ahead {
    /// Not started: the stream decompresses it itself if it comes first.
    Waiting,
    /// A request thread is decompressing it.
    Decoding,
    /// Decompressed, not yet taken.
    Ready(Vec<u8>),
    /// Taken, or left to the stream.
    Gone,
}

/// The spans to fetch (merged members: `(offset, length)` in archive order) and how
/// far their fetching is.
pub(super) struct Ranges<'a> {
    spans: &'a [(u64, u64)],
    members: &'a [Member],
    codec: Codec,
    /// The next span a request is to be sent for.
    next: AtomicUsize,
    /// Set when a request failed or the reader gave up: no further request is sent,
    /// and those under way end at their next chunk.
    stop: AtomicBool,
    state: Mutex<State>,
    /// Told of every span written, every request thread's end.
    changed: Condvar,
}

struct State {
    written: Vec<bool>,
    /// Spans `0..ready` are all written.
    ready: usize,
    /// Request threads started, and ended (however).
    threads: usize,
    ended: usize,
    /// The reader gave up (its own error stands): what fails after is not recorded.
    abandoned: bool,
    /// The first failure of a request.
    failed: Option<Error>,
    /// Each member's output ahead of the stream, and the bytes of it held.
    ahead: Vec<Ahead>,
    held: u64,
}

impl<'a> Ranges<'a> {
    pub(super) fn new(spans: &'a [(u64, u64)], members: &'a [Member], codec: Codec) -> Ranges<'a> {
        Ranges {
            spans,
            members,
            codec,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                written: vec![false; spans.len()],
                ready: 0,
                threads: 0,
                ended: 0,
                abandoned: false,
                failed: None,
                ahead: members.iter().map(|_| Ahead::Waiting).collect(),
                held: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned state is still a valid state: every change is one assignment.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the requests in `scope`, `IN_FLIGHT` at once (the bandwidth cap shared
    /// between them), each written into `scratch` at its archive offset.
    pub(super) fn start<'scope>(
        &'scope self,
        scope: &'scope Scope<'scope, '_>,
        d: &'scope Delta<'scope>,
        scratch: &'scope File,
        start: Instant,
    ) {
        let threads = IN_FLIGHT.min(self.spans.len());
        self.state().threads = threads;
        let share = d
            .fetch_opts
            .max_bandwidth
            .map(|b| (b / threads.max(1) as u64).max(1));
        for _ in 0..threads {
            scope.spawn(move || {
                // Counted as ended however the thread ends (a panic too): a reader
                // waiting on a span that will never come is woken.
                let _end = Ended(self);
                self.requests(d, scratch, start, share);
            });
        }
    }

    /// One request thread: span after span until none is left or one failed.
    fn requests(&self, d: &Delta, scratch: &File, start: Instant, share: Option<u64>) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.spans.len() || self.stop.load(Ordering::Relaxed) {
                return;
            }
            let (off, len) = self.spans[i];
            let mut got = 0u64;
            let r = fetch::read_range(
                d.src,
                Span::At { start: off, len },
                d.fetch_opts,
                start,
                share,
                &mut |at, b| {
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(Error::Interrupted("another range failed"));
                    }
                    if at == off {
                        got = 0;
                    }
                    scratch
                        .write_all_at(b, at)
                        .map_err(|e| Error::io("write", "the scratch file of the ranges", e))?;
                    got += b.len() as u64;
                    Ok(())
                },
            );
            d.downloaded.fetch_add(got, Ordering::Relaxed);
            let mut s = self.state();
            match r {
                Ok(_) => {
                    s.written[i] = true;
                    while s.ready < s.written.len() && s.written[s.ready] {
                        s.ready += 1;
                    }
                    self.changed.notify_all();
                    drop(s);
                    self.decode_ahead(off, len, scratch);
                }
                Err(e) => {
                    self.stop.store(true, Ordering::Relaxed);
                    if !s.abandoned && s.failed.is_none() {
                        s.failed = Some(e);
                    }
                    self.changed.notify_all();
                    return;
                }
            }
        }
    }

    /// Decompresses the small members of the span `[off, off + len)` (written) ahead
    /// of the stream, as room allows; stops when the stream has passed them.
    fn decode_ahead(&self, off: u64, len: u64, scratch: &File) {
        let first = self.members.partition_point(|m| m.offset < off);
        let last = self
            .members
            .partition_point(|m| m.offset < off.saturating_add(len));
        for (i, m) in self.members[first..last].iter().enumerate() {
            let i = first + i;
            if m.need > AHEAD_MAX {
                continue;
            }
            let mut s = self.state();
            loop {
                if self.stop.load(Ordering::Relaxed) || !matches!(s.ahead[i], Ahead::Waiting) {
                    break;
                }
                if s.held == 0 || s.held + m.need <= AHEAD_BUDGET {
                    s.ahead[i] = Ahead::Decoding;
                    s.held += m.need;
                    break;
                }
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if !matches!(s.ahead[i], Ahead::Decoding) {
                continue;
            }
            drop(s);
            let out = self.decode(m, scratch);
            let mut s = self.state();
            s.ahead[i] = match out {
                Ok(out) => Ahead::Ready(out),
                Err(_) => {
                    // The stream decompresses it again and meets the failure itself.
                    s.held -= m.need;
                    Ahead::Gone
                }
            };
            self.changed.notify_all();
        }
    }

    /// The first `need` bytes of the member's output.
    fn decode(&self, m: &Member, scratch: &File) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(m.need).unwrap_or(0));
        member_reader(self.codec, scratch, m.offset, m.len)?
            .take(m.need)
            .read_to_end(&mut out)?;
        if (out.len() as u64) < m.need {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(out)
    }

    /// Once the span holding the member at `offset` is written: the member's output
    /// decompressed ahead (its first `need` bytes), or `None` when the stream is to
    /// decompress it (it was not, or was taken already).
    pub(super) fn take(&self, offset: u64) -> io::Result<Option<Vec<u8>>> {
        self.wait_for(offset)?;
        let Ok(i) = self.members.binary_search_by(|m| m.offset.cmp(&offset)) else {
            return Ok(None);
        };
        let mut s = self.state();
        loop {
            match std::mem::replace(&mut s.ahead[i], Ahead::Gone) {
                Ahead::Ready(out) => {
                    s.held -= self.members[i].need;
                    self.changed.notify_all();
                    return Ok(Some(out));
                }
                Ahead::Decoding => {
                    s.ahead[i] = Ahead::Decoding;
                    s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                // Gone now: a request thread that comes to it leaves it.
                Ahead::Waiting | Ahead::Gone => return Ok(None),
            }
        }
    }

    /// Waits until the span holding `offset` is written: an error when it never
    /// will be (a request failed; the failure itself is [`Ranges::finish`]'s).
    pub(super) fn wait_for(&self, offset: u64) -> io::Result<()> {
        let i = self
            .spans
            .partition_point(|&(o, l)| o.saturating_add(l) <= offset);
        if i >= self.spans.len() || self.spans[i].0 > offset {
            return Err(io::Error::other(format!(
                "no range fetched holds offset {offset}"
            )));
        }
        let mut s = self.state();
        loop {
            if s.ready > i {
                return Ok(());
            }
            if s.failed.is_some() || s.abandoned || s.ended >= s.threads {
                return Err(io::Error::other("a range cannot be read"));
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The reader has given up: the requests stop, and their failures are not
    /// recorded (the reader's own error is the deploy's).
    pub(super) fn abandon(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state().abandoned = true;
        self.changed.notify_all();
    }

    /// After every request thread has ended: the first failure of a request, if any
    /// (none once abandoned), or an error when a span was never written.
    pub(super) fn finish(self) -> Result<()> {
        let s = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        match s.failed {
            Some(e) => Err(e),
            None if !s.abandoned && s.ready < s.written.len() => Err(Error::Interrupted(
                "a range request ended without its bytes",
            )),
            None => Ok(()),
        }
    }
}

/// Counts a request thread as ended when dropped.
struct Ended<'r, 'a>(&'r Ranges<'a>);

impl Drop for Ended<'_, '_> {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.ended += 1;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_found_by_any_offset_inside_it() {
        let spans = [(10, 5), (20, 10)];
        let r = Ranges::new(&spans, &[], Codec::Gzip);
        {
            let mut s = r.state();
            s.threads = 1;
            s.written[0] = true;
            s.ready = 1;
        }
        assert!(r.wait_for(10).is_ok());
        assert!(r.wait_for(14).is_ok());
        // Outside every span: refused, never waited on.
        assert!(r.wait_for(15).is_err());
        assert!(r.wait_for(30).is_err());
        // Not written and no request left to write it: an error, not a hang.
        r.state().ended = 1;
        assert!(r.wait_for(25).is_err());
    }

    #[test]
    fn a_waiting_reader_wakes_when_its_span_is_written() {
        let spans = [(0, 4), (4, 4)];
        let r = Ranges::new(&spans, &[], Codec::Gzip);
        r.state().threads = 1;
        std::thread::scope(|s| {
            let waiter = s.spawn(|| r.wait_for(5));
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut st = r.state();
            st.written[1] = true;
            st.written[0] = true;
            st.ready = 2;
            r.changed.notify_all();
            drop(st);
            assert!(waiter.join().is_ok_and(|w| w.is_ok()));
        });
    }

    #[test]
    fn an_abandoned_fetch_reports_no_failure() {
        let spans = [(0, 4)];
        let r = Ranges::new(&spans, &[], Codec::Gzip);
        r.abandon();
        assert!(r.wait_for(0).is_err());
        assert!(r.finish().is_ok());
    }

    /// A scratch file holding gzip members of `outputs` back to back: the members.
    fn members_of(outputs: &[Vec<u8>], scratch: &File) -> Vec<Member> {
        use std::io::Write;
        let mut at = 0u64;
        let mut members = Vec::new();
        for out in outputs {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(out).unwrap();
            let bytes = enc.finish().unwrap();
            scratch.write_all_at(&bytes, at).unwrap();
            members.push(Member {
                offset: at,
                len: bytes.len() as u64,
                need: out.len() as u64,
            });
            at += bytes.len() as u64;
        }
        members
    }

    #[test]
    fn members_decompressed_ahead_are_taken_in_order_within_the_budget() {
        let scratch = tempfile::tempfile().unwrap();
        // Five members of 400 KiB: at most two are held ahead at once.
        let outputs: Vec<Vec<u8>> = (0..5u8)
            .map(|i| (0..400 * 1024).map(|j| (j as u8) ^ i).collect())
            .collect();
        let members = members_of(&outputs, &scratch);
        let end = members.last().map(|m| m.offset + m.len).unwrap();
        let spans = [(0, end)];
        let r = Ranges::new(&spans, &members, Codec::Gzip);
        {
            let mut s = r.state();
            s.threads = 1;
            s.written[0] = true;
            s.ready = 1;
        }
        std::thread::scope(|sc| {
            let ahead = sc.spawn(|| r.decode_ahead(0, end, &scratch));
            for (m, want) in members.iter().zip(&outputs) {
                std::thread::sleep(std::time::Duration::from_millis(5));
                assert!(r.state().held <= AHEAD_BUDGET);
                // Taken whole when decompressed ahead; else the stream's to do.
                if let Some(got) = r.take(m.offset).unwrap() {
                    assert_eq!(&got, want);
                }
                // Taken once only.
                assert!(r.take(m.offset).unwrap().is_none());
            }
            ahead.join().unwrap();
        });
        assert_eq!(r.state().held, 0);
    }

    #[test]
    fn a_corrupt_member_is_left_to_the_stream() {
        let scratch = tempfile::tempfile().unwrap();
        let outputs = vec![vec![7u8; 5000], vec![9u8; 5000]];
        let members = members_of(&outputs, &scratch);
        // The first member's deflate data damaged.
        scratch
            .write_all_at(&[0xff; 8], members[0].offset + 12)
            .unwrap();
        let end = members[1].offset + members[1].len;
        let spans = [(0, end)];
        let r = Ranges::new(&spans, &members, Codec::Gzip);
        {
            let mut s = r.state();
            s.threads = 1;
            s.written[0] = true;
            s.ready = 1;
        }
        r.decode_ahead(0, end, &scratch);
        assert!(r.take(members[0].offset).unwrap().is_none());
        assert_eq!(r.take(members[1].offset).unwrap(), Some(outputs[1].clone()));
        assert_eq!(r.state().held, 0);
    }
}
