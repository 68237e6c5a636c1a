//! The fetched members' ranges (SPEC §18): read by range into the scratch file at
//! their archive offsets, a few requests in flight, while the stream that reads them
//! runs; a span is handed out only once every byte of it is written.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::Scope;
use std::time::Instant;

use super::Delta;
use crate::error::{Error, Result};
use crate::fetch::{self, Span};

/// Range requests in flight at once.
const IN_FLIGHT: usize = 4;

/// The spans to fetch (merged members: `(offset, length)` in archive order) and how
/// far their fetching is.
pub(super) struct Ranges<'a> {
    spans: &'a [(u64, u64)],
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
}

impl<'a> Ranges<'a> {
    pub(super) fn new(spans: &'a [(u64, u64)]) -> Ranges<'a> {
        Ranges {
            spans,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                written: vec![false; spans.len()],
                ready: 0,
                threads: 0,
                ended: 0,
                abandoned: false,
                failed: None,
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
        let r = Ranges::new(&spans);
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
        let r = Ranges::new(&spans);
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
        let r = Ranges::new(&spans);
        r.abandon();
        assert!(r.wait_for(0).is_err());
        assert!(r.finish().is_ok());
    }
}
