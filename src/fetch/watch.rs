//! A source read on a thread of its own (SPEC §17): the HTTP request is sent and its
//! body read there, in chunks over a bounded channel, while the caller waits in ticks
//! of `TICK`, so that a signal, the deadline and `--stall-timeout` are noticed within
//! a tick however long the server keeps silent, before the answer's head as within
//! the body. Dropped, it stops the download: the thread ends as soon as its next
//! chunk finds nobody to take it, and the connection with it. A thread left waiting
//! on a server that sends nothing more (a stall, a signal) cannot be woken: it stays,
//! holding only its connection, until the server answers or closes or the process
//! ends, while the caller has long gone on. A thread whose download has ended waits
//! a while (`IDLE_FOR`) for the next one (a delta's hundreds of range requests are
//! not a thread each).
//!
//! Never retries, logs or reads the environment.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Halt, Source};
use crate::error::{Error, Result};
use crate::http::Served;
use crate::interrupt;

/// How often the waiting caller looks at the signal flag, the deadline and the stall.
const TICK: Duration = Duration::from_millis(100);
/// The most bytes one read of the thread asks for, and how many such chunks may wait:
/// this bounds the memory of a download.
const CHUNK: usize = 64 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

/// How long a thread whose download has ended waits for the next.
const IDLE_FOR: Duration = Duration::from_secs(2);

/// A download's work on a thread.
type Job = Box<dyn FnOnce() + Send>;

/// The threads waiting for a download, each by a number of its own and where its next
/// job goes.
static IDLE: Mutex<Vec<(u64, SyncSender<Job>)>> = Mutex::new(Vec::new());

fn idle() -> std::sync::MutexGuard<'static, Vec<(u64, SyncSender<Job>)>> {
    // A poisoned list is still a valid list.
    IDLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `job` on a thread that waits for one, else on a new thread.
fn on_a_thread(mut job: Job) -> io::Result<()> {
    while let Some((_, next)) = idle().pop() {
        match next.send(job) {
            Ok(()) => return Ok(()),
            // That thread is gone (it cannot be: it leaves the list before it ends).
            Err(mpsc::SendError(back)) => job = back,
        }
    }
    std::thread::Builder::new()
        .name("stretcher-fetch".into())
        .spawn(move || jobs(job))
        .map(|_| ())
}

/// A thread's jobs: `first`, then each one handed to it while it waits in the idle
/// list, until it has waited `IDLE_FOR` for one.
fn jobs(first: Job) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut job = first;
    loop {
        job();
        let (tx, rx) = mpsc::sync_channel(1);
        idle().push((id, tx));
        job = match rx.recv_timeout(IDLE_FOR) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => {
                let mut list = idle();
                match list.iter().position(|(i, _)| *i == id) {
                    Some(at) => {
                        // Still listed: nobody can hand it a job any more.
                        list.remove(at);
                        return;
                    }
                    // Taken from the list meanwhile: its job is on its way.
                    None => {
                        drop(list);
                        match rx.recv() {
                            Ok(next) => next,
                            Err(_) => return,
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
    }
}

/// What ends a wait besides a signal.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `--stall-timeout`: the longest wait for the next byte.
    pub stall: Option<Duration>,
    /// The whole-download deadline and its length (`--timeout`).
    pub deadline: Option<(Instant, Duration)>,
}

/// What the thread hands over: the answer's head (its length), then the body.
enum Msg {
    Head(Result<(Option<u64>, Option<Served>)>),
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// Since when the thread has been waiting for the source (milliseconds after `base`):
/// set before each read and after it, so that time spent handing a chunk over never
/// counts as a stall.
struct Clock {
    base: Instant,
    since_ms: AtomicU64,
}

impl Clock {
    fn mark(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since_ms.store(ms, Ordering::Relaxed);
    }

    fn waiting(&self) -> Duration {
        let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(since)
    }
}

/// Runs `open` (an HTTP request: send, wait for the head) and the reads of the body
/// it answers on a thread of its own; waits for the head here, in ticks. The source
/// it answers reads the body, in ticks too: a halt (signal, deadline, stall) is an
/// `io::Error` carrying a `Halt`.
pub(super) fn start<F>(label: &str, limits: Limits, open: F) -> Result<Source>
where
    F: FnOnce() -> Result<Source> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let clock = Arc::new(Clock {
        base: Instant::now(),
        since_ms: AtomicU64::new(0),
    });
    let thread_clock = Arc::clone(&clock);
    on_a_thread(Box::new(move || pump(open, &tx, &thread_clock)))
        .map_err(|e| Error::fetch_from(label, e))?;
    let watched = Watched {
        rx,
        cur: Vec::new(),
        pos: 0,
        ended: false,
        clock,
        limits,
    };
    let (len, served) = loop {
        match watched.rx.recv_timeout(TICK) {
            Ok(Msg::Head(head)) => break head?,
            Ok(_) => return Err(Error::fetch(label, "the body came before the answer")),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(halt) = watched.overdue() {
                    return Err(halt.into_error(label));
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::fetch(label, "the download thread ended early"))
            }
        }
    };
    Ok(Source {
        reader: Box::new(watched),
        len,
        served,
    })
}

/// The thread: the head, then chunk after chunk until the end, an error, or nobody
/// takes them any more.
fn pump<F>(open: F, tx: &SyncSender<Msg>, clock: &Clock)
where
    F: FnOnce() -> Result<Source>,
{
    clock.mark();
    let Source {
        mut reader,
        len,
        served,
    } = match open() {
        Ok(opened) => opened,
        Err(e) => {
            let _ = tx.send(Msg::Head(Err(e)));
            return;
        }
    };
    if tx.send(Msg::Head(Ok((len, served)))).is_err() {
        return;
    }
    loop {
        let mut buf = vec![0; CHUNK];
        clock.mark();
        let got = reader.read(&mut buf);
        clock.mark();
        let msg = match got {
            Ok(0) => Msg::End,
            Ok(n) => {
                buf.truncate(n);
                Msg::Data(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Msg::Failed(e),
        };
        let last = !matches!(msg, Msg::Data(_));
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

/// The caller's end: the body's bytes, waited for in ticks.
struct Watched {
    rx: Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
    clock: Arc<Clock>,
    limits: Limits,
}

impl Watched {
    /// What ends the wait now, if anything: a signal, the deadline, the stall.
    fn overdue(&self) -> Option<Halt> {
        if let Some(sig) = interrupt::pending() {
            return Some(Halt::Signal(sig));
        }
        if let Some((end, d)) = self.limits.deadline {
            if Instant::now() >= end {
                return Some(Halt::Deadline(d.as_secs_f64()));
            }
        }
        match self.limits.stall {
            Some(stall) if self.clock.waiting() >= stall => {
                Some(Halt::Stalled(stall.as_secs_f64()))
            }
            _ => None,
        }
    }
}

impl Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            match self.rx.recv_timeout(TICK) {
                Ok(Msg::Data(data)) => {
                    self.cur = data;
                    self.pos = 0;
                }
                Ok(Msg::End) => self.ended = true,
                Ok(Msg::Failed(e)) => return Err(e),
                Ok(Msg::Head(_)) => return Err(io::Error::other("a second answer head")),
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(halt) = self.overdue() {
                        return Err(halt.into());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("the download thread ended early"))
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (up to 5 s) until some thread waits for a download.
    fn until_one_idles() {
        let t0 = Instant::now();
        while idle().is_empty() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn downloads_one_after_another_reuse_their_thread_and_none_is_lost() {
        let (tx, rx) = mpsc::channel();
        for _ in 0..20 {
            let tx = tx.clone();
            on_a_thread(Box::new(move || {
                let _ = tx.send(std::thread::current().id());
            }))
            .unwrap();
            until_one_idles();
        }
        let ran: Vec<_> = rx.iter().take(20).collect();
        let threads: std::collections::HashSet<_> = ran.iter().collect();
        assert!(threads.len() < 10, "{} threads for 20 jobs", threads.len());
        // a thread that waited longer than IDLE_FOR has left the list: a job after
        // that runs all the same
        std::thread::sleep(IDLE_FOR + Duration::from_millis(500));
        on_a_thread(Box::new(move || {
            let _ = tx.send(std::thread::current().id());
        }))
        .unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
    }

    /// A source that sends `chunks`, each after its pause.
    struct Slow(Vec<(Duration, Vec<u8>)>);

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let (pause, data) = self.0.remove(0);
            std::thread::sleep(pause);
            buf[..data.len()].copy_from_slice(&data);
            Ok(data.len())
        }
    }

    fn limits(stall: Option<Duration>) -> Limits {
        Limits {
            stall,
            deadline: None,
        }
    }

    #[test]
    fn bytes_arrive_whole_and_in_order() {
        let chunks = (0..5u8)
            .map(|i| (Duration::from_millis(20), vec![i; 1000]))
            .collect();
        let mut src = start("mem", limits(Some(Duration::from_secs(5))), move || {
            Ok(Source {
                reader: Box::new(Slow(chunks)),
                len: Some(5000),
                served: None,
            })
        })
        .unwrap();
        assert_eq!(src.len, Some(5000));
        let mut out = Vec::new();
        src.reader.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 5000);
        assert!(out[..1000].iter().all(|&b| b == 0) && out[4000..].iter().all(|&b| b == 4));
    }

    #[test]
    fn a_silent_source_stalls_before_and_after_its_head() {
        let t = Instant::now();
        let e = start("mem", limits(Some(Duration::from_millis(300))), || {
            std::thread::sleep(Duration::from_secs(3));
            Ok(Source {
                reader: Box::new(io::empty()),
                len: None,
                served: None,
            })
        })
        .err()
        .unwrap();
        assert!(matches!(e, Error::Stalled { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

        let chunks = vec![
            (Duration::ZERO, vec![1; 10]),
            (Duration::from_secs(3), vec![2; 10]),
        ];
        let mut src = start("mem", limits(Some(Duration::from_millis(300))), move || {
            Ok(Source {
                reader: Box::new(Slow(chunks)),
                len: None,
                served: None,
            })
        })
        .unwrap();
        let t = Instant::now();
        let e = src.reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let halt = e.get_ref().and_then(|i| i.downcast_ref::<Halt>());
        assert!(matches!(halt, Some(Halt::Stalled(_))), "{e}");
    }

    #[test]
    fn the_head_error_is_the_answer() {
        let e = start("mem", limits(None), || {
            Err::<Source, _>(Error::fetch("mem", "refused"))
        })
        .err()
        .unwrap();
        assert_eq!(e.to_string(), "fetch mem: refused");
    }
}
