//! Members decompressed on every core (SPEC §18): the members of a packed archive
//! state their lengths (a gzip member in its `SL` extra subfield, a zstd frame in its
//! block headers, its content size in its frame header; `docs/packed-archive.md`), so
//! they are cut from the stream as it arrives, decompressed by worker threads and handed
//! on in order. A member that does not state them (the footer, a zstd skippable frame,
//! anything appended) hands the rest of the stream to the sequential decoder; a member
//! too large to hold is decompressed here, streaming, before the next ones. A stream
//! whose first member states no lengths never comes here (`packed`).
//!
//! This runs on the thread that reads the source (`pipe`), which reads it straight into
//! the buffer members are cut from (`INPUT_CAP` bytes; a member cut by its end moves to
//! the next one, a member larger than it gets a large buffer). Consecutive members
//! travel together: the whole members that buffer holds, up to `BATCH_RAW` bytes
//! decompressed, are one job; its worker decompresses them one after the other into an
//! output buffer of `CHUNK` bytes (a member larger than that into several), and those
//! buffers are the chunks handed to the tar parser, as they are. The parser hands its
//! chunks back, so output buffers, like input buffers and each worker's decompressor,
//! are reused from job to job (a few spares kept, of fixed sizes, so the pages they hold
//! stay bounded): nothing is zero-filled, allocated or unmapped per member, and a worker
//! is woken only when it sleeps.
//!
//! Each member is checked whole (a gzip member's deflate stream ending exactly at its
//! trailer, its CRC-32 and length; a zstd frame exactly one frame, its checksum; either's
//! stated decompressed length, never written past the output buffer's capacity); the
//! whole archive's checksum is still the caller's. Never parses tar and never touches
//! the filesystem.

use std::collections::VecDeque;
use std::io::{self, BufRead, Cursor, Read};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::inflate::{self, Failure, Inflate};
use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer, ResetDirective};

use super::pipe::{read_up_to, Chunks, CHUNK};
use crate::toc::{gzip_member_lengths, Codec};

/// The largest member (compressed, and decompressed) handed to a worker: larger ones
/// are decompressed streaming.
const MEMBER_MAX: u64 = 2 << 20;
/// Compressed bytes read at a time: the members this buffer holds whole make a job.
const INPUT_CAP: usize = 128 << 10;
/// The most decompressed bytes of a job of several members: the parser's chunk. Its
/// output buffers are of `CHUNK` bytes (a member larger than that has several).
const BATCH_RAW: u64 = CHUNK as u64;
/// The input buffer of a member larger than `INPUT_CAP`: the largest member `cut`
/// takes fits.
const BIG_INPUT: usize = MEMBER_MAX as usize + 2048;
/// Jobs in flight: two a worker and two more, at most this.
const WINDOW_MAX: usize = 16;
/// Spare buffers kept for reuse: output, input and large input buffers.
const OUTPUTS_KEPT: usize = 8;
const INPUTS_KEPT: usize = 4;
const BIG_INPUTS_KEPT: usize = 2;
/// A gzip member of `Codec::encoder`: its head (`GZIP_MEMBER_HEAD` and the `SL`
/// lengths), the shortest deflate stream, its trailer (CRC-32, length).
const GZIP_HEAD: usize = 32;
const GZIP_MIN: u64 = 42;
const GZIP_TRAILER: usize = 8;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Bytes `packed` looks at.
pub(super) const HEAD_LEN: usize = GZIP_HEAD;

/// Whether a stream that begins with `head` is cut into members here: its first member
/// states its lengths and is small enough to hold (a packed archive's is).
pub(super) fn packed(codec: Codec, head: &[u8]) -> bool {
    match codec {
        Codec::Gzip => gzip_member_lengths(head).is_some_and(|(len, raw_len)| {
            (GZIP_MIN..=MEMBER_MAX).contains(&len) && raw_len <= MEMBER_MAX
        }),
        Codec::Zstd => zstd_head(head).is_some_and(|h| h.raw_len <= MEMBER_MAX),
    }
}

/// What a zstd frame header states.
struct ZstdHead {
    /// The header's length.
    len: usize,
    raw_len: u64,
    checksum: bool,
}

/// A zstd frame header that states its content size, with no dictionary and no
/// reserved bit (which only the sequential decoder reports); else `None`.
fn zstd_head(head: &[u8]) -> Option<ZstdHead> {
    if head.len() < 6 || head[..4] != ZSTD_MAGIC {
        return None;
    }
    let fhd = head[4];
    let fcs_flag = fhd >> 6;
    let single = (fhd >> 5) & 1 == 1;
    let did = [0, 1, 2, 4][(fhd & 3) as usize];
    let fcs_len = match (fcs_flag, single) {
        (0, true) => 1,
        (0, false) => 0,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let at = 5 + usize::from(!single) + did;
    if fcs_len == 0 || fhd & 0x08 != 0 || did != 0 || head.len() < at + fcs_len {
        return None;
    }
    let mut fcs = [0u8; 8];
    fcs[..fcs_len].copy_from_slice(&head[at..at + fcs_len]);
    let mut raw_len = u64::from_le_bytes(fcs);
    if fcs_len == 2 {
        raw_len += 256;
    }
    Some(ZstdHead {
        len: at + fcs_len,
        raw_len,
        checksum: (fhd >> 2) & 1 == 1,
    })
}

/// Whole members cut from the stream, decompressed by one worker.
struct Job {
    /// The members' compressed bytes, one after the other from the start.
    input: Vec<u8>,
    /// Each member's compressed and decompressed length.
    cuts: Vec<(usize, u64)>,
    /// Empty buffers of `CHUNK` bytes or more, enough for every member's decompressed
    /// bytes (one, but for a single member larger than `CHUNK`).
    outs: Vec<Vec<u8>>,
    done: mpsc::SyncSender<Done>,
}

/// A job's buffers back, the output filled.
struct Done {
    input: Vec<u8>,
    outs: io::Result<Vec<Vec<u8>>>,
}

/// What the stream holds at a position of the input buffer.
enum Cut {
    /// A whole member: its compressed and decompressed lengths.
    Member(usize, u64),
    /// A member too large to hold: its decompressed length.
    Big(u64),
    /// Something else: the sequential decoder takes over.
    Other,
    /// The end of the stream.
    End,
    /// More bytes are needed to tell, and the job in the making takes no more.
    Later,
}

type Chained<R> = io::Chain<Cursor<Vec<u8>>, R>;

/// A member decompressed here, streaming.
enum Big<R: BufRead> {
    Gzip(Box<flate2::bufread::GzDecoder<Chained<R>>>),
    Zstd(zstd::stream::read::Decoder<'static, Chained<R>>),
}

/// A member decompressed here: the decoder, its stated and its decompressed length.
struct Streaming<R: BufRead> {
    dec: Big<R>,
    raw_len: u64,
    got: u64,
}

/// The decompressed bytes of a packed gzip or zstd stream, members cut and
/// decompressed on every core while they state their lengths (see the module's
/// comment).
pub(super) struct Members<'a, R: BufRead + Send + 'a> {
    codec: Codec,
    /// The source, while members are cut from it (`big` or `rest` holds it otherwise).
    raw: Option<R>,
    /// Bytes read from `raw` and not yet handed on: `buf[..filled]`. All of `buf` is
    /// initialised, so reading into it never zero-fills (but when it grows).
    buf: Vec<u8>,
    filled: usize,
    eof: bool,
    /// Spare input, large input and output buffers.
    inputs: Vec<Vec<u8>>,
    big_inputs: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
    /// Decompressed buffers of a job, ready to be handed on in order.
    ready: VecDeque<Vec<u8>>,
    /// The sequential decoder of the rest, once a member did not state its lengths.
    rest: Option<Box<dyn Read + Send + 'a>>,
    /// Makes `rest` from what is left.
    sequential: fn(Chained<R>) -> io::Result<Box<dyn Read + Send + 'a>>,
    big: Option<Streaming<R>>,
    pending: VecDeque<mpsc::Receiver<Done>>,
    ended: bool,
    jobs: Option<Arc<Queue>>,
    /// The worker threads, once started, and how many to start.
    threads: Vec<JoinHandle<()>>,
    workers: usize,
    window: usize,
}

impl<'a, R: BufRead + Send + 'a> Members<'a, R> {
    pub(super) fn new(
        codec: Codec,
        raw: R,
        sequential: fn(Chained<R>) -> io::Result<Box<dyn Read + Send + 'a>>,
    ) -> Self {
        // A worker a core but the one the tar parser (which writes and hashes every file,
        // the longest job of a deploy) needs to itself: more workers only take turns
        // with it and make the whole slower (benches/README.md, "Packing").
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = cores.saturating_sub(1).max(1);
        Members {
            codec,
            raw: Some(raw),
            buf: Vec::new(),
            filled: 0,
            eof: false,
            inputs: Vec::new(),
            big_inputs: Vec::new(),
            outputs: Vec::new(),
            ready: VecDeque::new(),
            rest: None,
            sequential,
            big: None,
            pending: VecDeque::new(),
            ended: false,
            jobs: None,
            threads: Vec::new(),
            workers,
            window: (2 * workers + 2).min(WINDOW_MAX),
        }
    }

    /// Makes `buf[..filled]` hold at least `want` bytes: true when it does, false when
    /// the stream ends first, or — unless `may_read` — when that needs a read. A read
    /// fills the buffer up to `INPUT_CAP` (or `want`, if more) where the stream allows.
    fn fill(&mut self, want: usize, may_read: bool) -> io::Result<bool> {
        if self.filled >= want {
            return Ok(true);
        }
        if !may_read || self.eof || self.raw.is_none() {
            return Ok(false);
        }
        let target = want.max(INPUT_CAP);
        if target > self.buf.capacity() {
            // Into a spare buffer (a large one for a member larger than `INPUT_CAP`).
            let mut next = if target > INPUT_CAP {
                spare(&mut self.big_inputs, target, BIG_INPUT)
            } else {
                spare(&mut self.inputs, target, INPUT_CAP)
            };
            if next.len() < target {
                next.resize(target, 0);
            }
            next[..self.filled].copy_from_slice(&self.buf[..self.filled]);
            let old = std::mem::replace(&mut self.buf, next);
            keep(&mut self.inputs, old, INPUTS_KEPT, INPUT_CAP);
        }
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
        let Some(raw) = self.raw.as_mut() else {
            return Ok(false);
        };
        let n = read_up_to(raw, &mut self.buf[self.filled..target])?;
        self.filled += n;
        if self.filled < target {
            self.eof = true;
        }
        Ok(self.filled >= want)
    }

    /// Whether `fill` found the stream's end (else a short fill means `Later`).
    fn short(&self, may_read: bool) -> Cut {
        if may_read || self.eof {
            Cut::Other
        } else {
            Cut::Later
        }
    }

    /// What the stream holds at `buf[pos..]`; with `may_read` false, only from what
    /// is already read.
    fn cut(&mut self, pos: usize, may_read: bool) -> io::Result<Cut> {
        let have = self.fill(pos + HEAD_LEN, may_read)?;
        if let (false, Cut::Later) = (have, self.short(may_read)) {
            return Ok(Cut::Later);
        }
        if self.filled == pos {
            return Ok(Cut::End);
        }
        let head = &self.buf[pos..self.filled];
        match self.codec {
            Codec::Gzip => match gzip_member_lengths(head) {
                Some((len, raw_len))
                    if (GZIP_MIN..=MEMBER_MAX).contains(&len) && raw_len <= MEMBER_MAX =>
                {
                    let len = len as usize;
                    if self.fill(pos + len, may_read)? {
                        Ok(Cut::Member(len, raw_len))
                    } else {
                        // Cut short: the sequential decoder tells.
                        Ok(self.short(may_read))
                    }
                }
                Some((len, raw_len)) if len >= GZIP_MIN => Ok(Cut::Big(raw_len)),
                _ => Ok(Cut::Other),
            },
            Codec::Zstd => {
                let Some(h) = zstd_head(head) else {
                    return Ok(Cut::Other);
                };
                if h.raw_len > MEMBER_MAX {
                    return Ok(Cut::Big(h.raw_len));
                }
                // The frame's end, by its block headers.
                let mut end = h.len;
                loop {
                    if !self.fill(pos + end + 3, may_read)? {
                        return Ok(self.short(may_read));
                    }
                    let b = &self.buf[pos + end..pos + end + 3];
                    let b = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
                    let size = match (b >> 1) & 3 {
                        0 | 2 => (b >> 3) as usize,
                        1 => 1,
                        _ => return Ok(Cut::Other),
                    };
                    end += 3 + size;
                    if end as u64 > MEMBER_MAX + 1024 {
                        return Ok(Cut::Other);
                    }
                    if b & 1 == 1 {
                        break;
                    }
                }
                if h.checksum {
                    end += 4;
                }
                if !self.fill(pos + end, may_read)? {
                    return Ok(self.short(may_read));
                }
                Ok(Cut::Member(end, h.raw_len))
            }
        }
    }

    /// Hands `buf[..pos]` (the members `cuts`, `raw` bytes decompressed) to a worker;
    /// the bytes read past them move to the start of a spare input buffer.
    fn dispatch(&mut self, pos: usize, cuts: Vec<(usize, u64)>, raw: u64) -> io::Result<()> {
        let left = self.filled - pos;
        let mut next = spare(&mut self.inputs, left, INPUT_CAP);
        if next.len() < left {
            next.resize(left, 0);
        }
        next[..left].copy_from_slice(&self.buf[pos..self.filled]);
        let input = std::mem::replace(&mut self.buf, next);
        self.filled = left;
        // `raw` is at most `MEMBER_MAX`.
        let pieces = usize::try_from(raw.div_ceil(CHUNK as u64))
            .unwrap_or(1)
            .max(1);
        let outs = (0..pieces)
            .map(|_| {
                let mut out = spare(&mut self.outputs, CHUNK, CHUNK);
                out.clear();
                out
            })
            .collect();
        let (done, rx) = mpsc::sync_channel(1);
        let job = Job {
            input,
            cuts,
            outs,
            done,
        };
        if self.jobs.is_none() {
            let (queue, threads) = start_workers(self.codec, self.workers);
            self.jobs = Some(queue);
            self.threads = threads;
        }
        match &self.jobs {
            Some(jobs) if jobs.push(job) => {
                self.pending.push_back(rx);
                Ok(())
            }
            _ => Err(io::Error::other("the decompressing threads are gone")),
        }
    }

    /// Cuts the next members into jobs, until the window is full or something else
    /// than a member that can be held comes.
    fn refill(&mut self) -> io::Result<()> {
        while !self.ended && self.raw.is_some() && self.pending.len() < self.window {
            let mut cuts = Vec::new();
            let (mut pos, mut raw) = (0usize, 0u64);
            let stop = loop {
                match self.cut(pos, cuts.is_empty())? {
                    Cut::Member(len, raw_len) if cuts.is_empty() || raw + raw_len <= BATCH_RAW => {
                        cuts.push((len, raw_len));
                        pos += len;
                        raw += raw_len;
                    }
                    Cut::Member(..) | Cut::Later => break None,
                    other => break Some(other),
                }
            };
            if !cuts.is_empty() {
                self.dispatch(pos, cuts, raw)?;
            }
            match stop {
                None | Some(Cut::Member(..) | Cut::Later) => {}
                Some(Cut::End) => self.ended = true,
                Some(Cut::Big(raw_len)) => {
                    let chained = self.take_input()?;
                    let dec = match self.codec {
                        Codec::Gzip => {
                            Big::Gzip(Box::new(flate2::bufread::GzDecoder::new(chained)))
                        }
                        Codec::Zstd => Big::Zstd(
                            zstd::stream::read::Decoder::with_buffer(chained)?.single_frame(),
                        ),
                    };
                    self.big = Some(Streaming {
                        dec,
                        raw_len,
                        got: 0,
                    });
                }
                Some(Cut::Other) => {
                    let chained = self.take_input()?;
                    self.rest = Some((self.sequential)(chained)?);
                }
            }
        }
        Ok(())
    }

    /// The unread bytes and the source, as one reader.
    fn take_input(&mut self) -> io::Result<Chained<R>> {
        let raw = self
            .raw
            .take()
            .ok_or_else(|| io::Error::other("the input is already taken"))?;
        let mut head = std::mem::take(&mut self.buf);
        head.truncate(self.filled);
        self.filled = 0;
        Ok(Cursor::new(head).chain(raw))
    }

    /// Reads a streamed member into `buf`: `Ok` with its next bytes, `Err` with `buf`
    /// back when none came. At its end, checks its length and gives the input back for
    /// the next members.
    fn read_big(&mut self, mut buf: Vec<u8>) -> io::Result<Result<Vec<u8>, Vec<u8>>> {
        let Some(s) = self.big.as_mut() else {
            return Ok(Err(buf));
        };
        buf.resize(CHUNK, 0);
        let n = match &mut s.dec {
            Big::Gzip(d) => read_up_to(d, &mut buf)?,
            Big::Zstd(d) => read_up_to(d, &mut buf)?,
        };
        s.got += n as u64;
        if s.got > s.raw_len {
            return Err(too_long(s.got, s.raw_len));
        }
        buf.truncate(n);
        if n == CHUNK {
            return Ok(Ok(buf));
        }
        // The member ended (its trailer checked).
        if s.got != s.raw_len {
            return Err(too_long(s.got, s.raw_len));
        }
        let Some(s) = self.big.take() else {
            return Ok(Err(buf));
        };
        let chained = match s.dec {
            Big::Gzip(d) => d.into_inner(),
            Big::Zstd(d) => d.finish(),
        };
        // What the member left unread of the chain goes back before the source.
        let (head, raw) = chained.into_inner();
        let pos = usize::try_from(head.position()).unwrap_or(usize::MAX);
        let mut bytes = head.into_inner();
        bytes.drain(..pos.min(bytes.len()));
        self.filled = bytes.len();
        self.buf = bytes;
        self.raw = Some(raw);
        self.eof = false;
        Ok(if n > 0 { Ok(buf) } else { Err(buf) })
    }
}

/// Keeps `buf` as a spare when it is of the pool's size, at most `most` (a larger
/// one would keep its pages while it holds less), and the pool holds fewer than `kept`;
/// else it is freed.
fn keep(pool: &mut Vec<Vec<u8>>, buf: Vec<u8>, kept: usize, most: usize) {
    if (1..=most).contains(&buf.capacity()) && pool.len() < kept {
        pool.push(buf);
    }
}

/// The smallest spare buffer of at least `want` bytes of capacity, else a new one of
/// `want` or `least`, if more (a spare keeps its length: what it held is initialised).
fn spare(pool: &mut Vec<Vec<u8>>, want: usize, least: usize) -> Vec<u8> {
    let fits = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= want);
    match fits.min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i) {
        Some(i) => pool.swap_remove(i),
        None => Vec::with_capacity(want.max(least)),
    }
}

fn too_long(got: u64, raw_len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a member decompresses to {got} bytes or more, it states {raw_len}"),
    )
}

impl<'a, R: BufRead + Send + 'a> Chunks for Members<'a, R> {
    fn next_chunk(&mut self, spare: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut spare = spare;
        loop {
            if let Some(out) = self.ready.pop_front() {
                if out.is_empty() {
                    keep(&mut self.outputs, out, OUTPUTS_KEPT, CHUNK);
                    continue;
                }
                keep(&mut self.outputs, spare, OUTPUTS_KEPT, CHUNK);
                return Ok(out);
            }
            self.refill()?;
            if let Some(rx) = self.pending.pop_front() {
                let done = rx
                    .recv()
                    .map_err(|_| io::Error::other("a decompressing thread ended early"))?;
                if done.input.capacity() > INPUT_CAP {
                    keep(&mut self.big_inputs, done.input, BIG_INPUTS_KEPT, BIG_INPUT);
                } else {
                    keep(&mut self.inputs, done.input, INPUTS_KEPT, INPUT_CAP);
                }
                self.ready.extend(done.outs?);
                continue;
            }
            if self.big.is_some() {
                match self.read_big(spare)? {
                    Ok(out) => return Ok(out),
                    Err(buf) => {
                        spare = buf;
                        continue;
                    }
                }
            }
            if let Some(rest) = self.rest.as_mut() {
                spare.resize(CHUNK, 0);
                let n = read_up_to(rest, &mut spare)?;
                spare.truncate(n);
                return Ok(spare);
            }
            spare.clear();
            return Ok(spare);
        }
    }
}

impl<'a, R: BufRead + Send + 'a> Drop for Members<'a, R> {
    fn drop(&mut self) {
        self.pending.clear();
        if let Some(jobs) = self.jobs.take() {
            jobs.close();
        }
        for w in self.threads.drain(..) {
            let _ = w.join();
        }
    }
}

/// `workers` threads that decompress the jobs of the queue they share.
fn start_workers(codec: Codec, workers: usize) -> (Arc<Queue>, Vec<JoinHandle<()>>) {
    let queue = Arc::new(Queue::default());
    let handles = (0..workers)
        .map(|_| {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                let mut inflater = Inflater::default();
                while let Some(job) = queue.pop() {
                    let outs = inflater.job(codec, &job.input, &job.cuts, job.outs);
                    let _ = job.done.send(Done {
                        input: job.input,
                        outs,
                    });
                }
            })
        })
        .collect();
    (queue, handles)
}

/// The jobs waiting for a worker. A worker is woken only when one sleeps and a job
/// comes (a queue under a lock, and a condition variable), so a job costs one wake
/// at most, and none while the workers are busy.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Workers asleep on `ready`.
    idle: usize,
    closed: bool,
}

impl Queue {
    /// Queues `job`; false once the queue is closed.
    fn push(&self, job: Job) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if s.closed {
            return false;
        }
        s.jobs.push_back(job);
        let wake = s.idle > 0;
        drop(s);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// The next job, waiting for one; `None` once the queue is closed.
    fn pop(&self) -> Option<Job> {
        let mut s = self.state.lock().ok()?;
        loop {
            if s.closed {
                return None;
            }
            if let Some(job) = s.jobs.pop_front() {
                return Some(job);
            }
            s.idle += 1;
            s = self.ready.wait(s).ok()?;
            s.idle -= 1;
        }
    }

    /// Ends the workers' loops: the queued jobs are dropped.
    fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
            s.jobs.clear();
        }
        self.ready.notify_all();
    }
}

/// A worker's decompressors, kept from member to member.
#[derive(Default)]
struct Inflater {
    gzip: Option<Inflate>,
    /// A member larger than the room left in the output buffer is inflated here
    /// first (at most `MEMBER_MAX` bytes), then copied across the buffers.
    scratch: Vec<u8>,
    zstd: Option<DCtx<'static>>,
}

/// Where a worker writes: the buffer being filled, those filled before it, and the
/// empty ones left.
struct Outs {
    cur: Vec<u8>,
    full: Vec<Vec<u8>>,
    spare: std::vec::IntoIter<Vec<u8>>,
}

impl Outs {
    /// `cur` is full: the next buffer (an empty one of no capacity when none is left,
    /// which a member then overflows).
    fn next(&mut self) {
        let next = self.spare.next().unwrap_or_default();
        self.full.push(std::mem::replace(&mut self.cur, next));
    }
}

impl Inflater {
    /// The members `cuts` of `input`, decompressed one after the other into `outs`
    /// (empty buffers, enough for all of them), filled in order: the ones written.
    fn job(
        &mut self,
        codec: Codec,
        input: &[u8],
        cuts: &[(usize, u64)],
        outs: Vec<Vec<u8>>,
    ) -> io::Result<Vec<Vec<u8>>> {
        let mut spare = outs.into_iter();
        let mut outs = Outs {
            cur: spare.next().unwrap_or_default(),
            full: Vec::new(),
            spare,
        };
        let mut pos = 0;
        for &(len, raw_len) in cuts {
            let member = input
                .get(pos..pos + len)
                .ok_or_else(|| io::Error::other("a member lies past the bytes read"))?;
            self.member(codec, member, raw_len, &mut outs)?;
            pos += len;
        }
        outs.full.push(outs.cur);
        Ok(outs.full)
    }

    /// One member appended to the output buffers, into their spare capacity (never
    /// past it).
    fn member(
        &mut self,
        codec: Codec,
        member: &[u8],
        raw_len: u64,
        outs: &mut Outs,
    ) -> io::Result<()> {
        let mut got = 0u64;
        match codec {
            Codec::Gzip => {
                // `cut` took only members of at least `GZIP_MIN` bytes that begin
                // with the fixed head.
                let body = member
                    .get(GZIP_HEAD..member.len().saturating_sub(GZIP_TRAILER))
                    .ok_or_else(|| invalid("a gzip member is too short"))?;
                let want = usize::try_from(raw_len).map_err(|_| too_long(raw_len, MEMBER_MAX))?;
                let inflate = match &mut self.gzip {
                    Some(i) => i,
                    none => none.insert(Inflate::new()?),
                };
                let fail = |f: Failure| match f {
                    Failure::Corrupt => invalid("a member's deflate data is corrupt"),
                    Failure::TooLong => too_long(raw_len + 1, raw_len),
                    Failure::EndsEarly => {
                        invalid("a member's deflate data ends before its trailer")
                    }
                };
                let crc = if outs.cur.capacity() - outs.cur.len() >= want {
                    let start = outs.cur.len();
                    got = inflate.whole(body, &mut outs.cur, want).map_err(fail)? as u64;
                    inflate::crc32(0, &outs.cur[start..])
                } else {
                    // Inflated whole into the scratch buffer, then copied into the
                    // output buffers as they fill.
                    self.scratch.clear();
                    self.scratch.reserve(want);
                    got = inflate.whole(body, &mut self.scratch, want).map_err(fail)? as u64;
                    let mut rest = &self.scratch[..];
                    while !rest.is_empty() {
                        let room = outs.cur.capacity() - outs.cur.len();
                        if room == 0 {
                            if outs.cur.capacity() == 0 {
                                return Err(too_long(raw_len + 1, raw_len));
                            }
                            outs.next();
                            continue;
                        }
                        let n = room.min(rest.len());
                        outs.cur.extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                    }
                    inflate::crc32(0, &self.scratch)
                };
                let trailer = &member[member.len() - GZIP_TRAILER..];
                let le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if crc != le(&trailer[..4]) {
                    return Err(invalid("a member's CRC does not match its data"));
                }
                if le(&trailer[4..]) != got as u32 {
                    return Err(invalid("a member's length does not match its data"));
                }
            }
            Codec::Zstd => {
                // Exactly one frame (the decoder would go on to a next one).
                if zstd::zstd_safe::find_frame_compressed_size(member) != Ok(member.len()) {
                    return Err(invalid("a member is not exactly one zstd frame"));
                }
                let d = self.zstd.get_or_insert_with(DCtx::create);
                d.reset(ResetDirective::SessionOnly).map_err(zstd_error)?;
                let mut input = InBuffer::around(member);
                loop {
                    let (start, read) = (outs.cur.len(), input.pos());
                    let hint = d
                        .decompress_stream(
                            &mut OutBuffer::around_pos(&mut outs.cur, start),
                            &mut input,
                        )
                        .map_err(zstd_error)?;
                    got += (outs.cur.len() - start) as u64;
                    if got > raw_len {
                        return Err(too_long(got, raw_len));
                    }
                    if hint == 0 {
                        break;
                    }
                    if outs.cur.len() < outs.cur.capacity() {
                        if input.pos() == member.len()
                            || (input.pos() == read && outs.cur.len() == start)
                        {
                            return Err(invalid("a zstd member ends early"));
                        }
                        continue;
                    }
                    if outs.cur.capacity() == 0 {
                        return Err(too_long(got + 1, raw_len));
                    }
                    outs.next();
                }
                if input.pos() != member.len() {
                    return Err(invalid("bytes follow a zstd member's frame"));
                }
            }
        }
        if got != raw_len {
            return Err(invalid(format!(
                "a member decompresses to {got} bytes, it states {raw_len}"
            )));
        }
        Ok(())
    }
}

fn zstd_error(code: usize) -> io::Error {
    invalid(format!(
        "a zstd member is corrupt: {}",
        zstd::zstd_safe::get_error_name(code)
    ))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::format::{sequential, Format};

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7 + usize::from(seed)) % 251) as u8)
            .collect()
    }

    /// Bytes that do not compress.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// `stream` decoded by one worker and by three (whose jobs end out of order): the
    /// same bytes, or an error either way.
    fn decode(format: Format, stream: &[u8]) -> io::Result<Vec<u8>> {
        let one = decode_by(format, stream, 1);
        let three = decode_by(format, stream, 3);
        assert_eq!(one.as_ref().ok(), three.as_ref().ok());
        one
    }

    fn decode_by(format: Format, stream: &[u8], workers: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Reads of odd sizes, so members and reads never line up.
        let raw = io::BufReader::with_capacity(97, stream);
        let mut dec = match format {
            Format::Gzip => Members::new(Codec::Gzip, raw, |r| sequential(Format::Gzip, r)),
            _ => Members::new(Codec::Zstd, raw, |r| sequential(Format::Zstd, r)),
        };
        dec.workers = workers;
        dec.window = 2 * workers + 2;
        // Each chunk is handed back as the next spare, as the parser does, with
        // stale bytes in it.
        let mut spare = vec![0xa5; 3];
        loop {
            let chunk = dec.next_chunk(spare)?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
            spare = chunk;
        }
    }

    fn plain_gzip(d: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut e, d).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn members_of_every_size_come_out_in_order() {
        // Small, empty, big (past MEMBER_MAX: streamed here), small again, members
        // decompressed into several output buffers (two exactly filled, and more).
        let parts = [
            data(10, 1),
            data(0, 2),
            data(70_000, 3),
            data(3 << 20, 4),
            data(5, 5),
            data(100_000, 6),
            data(2 * CHUNK, 7),
            data(3, 8),
            data((MEMBER_MAX - 5) as usize, 9),
            data(CHUNK + 1, 10),
            // Members whose compressed bytes outgrow the input buffer.
            noise(700_000, 11),
            data(1000, 12),
            noise(1_500_000, 13),
            noise(200_000, 14),
        ];
        let want: Vec<u8> = parts.concat();
        for (codec, format) in [(Codec::Gzip, Format::Gzip), (Codec::Zstd, Format::Zstd)] {
            let stream: Vec<u8> = parts.iter().flat_map(|p| codec.compress(p)).collect();
            assert_eq!(decode(format, &stream).unwrap(), want, "{codec}");
        }
    }

    #[test]
    fn what_does_not_state_its_length_goes_to_the_sequential_decoder() {
        let (a, b, c) = (data(1000, 1), data(2000, 2), data(3000, 3));
        // gzip: a member with SL, a plain one, SL again, zero padding.
        let mut stream = Codec::Gzip.compress(&a);
        stream.extend(plain_gzip(&b));
        stream.extend(Codec::Gzip.compress(&c));
        stream.extend([0u8; 700]);
        assert_eq!(
            decode(Format::Gzip, &stream).unwrap(),
            [&a[..], &b, &c].concat()
        );
        // A packed archive's footer (an empty member with another subfield).
        let mut stream = Codec::Gzip.compress(&a);
        stream.extend(
            crate::toc::Footer {
                codec: Codec::Gzip,
                table_offset: 1,
                table_len: 1,
            }
            .encode(),
        );
        assert_eq!(decode(Format::Gzip, &stream).unwrap(), a);
        // zstd: frames of a few bytes (shorter than the look-ahead), a skippable frame,
        // a frame without content size.
        let mut stream = Vec::new();
        for i in 0..20u8 {
            stream.extend(Codec::Zstd.compress(&[i]));
        }
        stream.extend(
            crate::toc::Footer {
                codec: Codec::Zstd,
                table_offset: 1,
                table_len: 1,
            }
            .encode(),
        );
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        io::Write::write_all(&mut enc, &b).unwrap();
        stream.extend(enc.finish().unwrap());
        let want: Vec<u8> = (0..20u8).chain(b.iter().copied()).collect();
        assert_eq!(decode(Format::Zstd, &stream).unwrap(), want);
    }

    #[test]
    fn corrupt_or_lying_members_are_errors() {
        let a = data(5000, 1);
        for codec in [Codec::Gzip, Codec::Zstd] {
            let format = if codec == Codec::Gzip {
                Format::Gzip
            } else {
                Format::Zstd
            };
            let good = codec.compress(&a);
            // A byte of the compressed data flipped.
            let mut bad = good.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x55;
            assert!(decode(format, &bad).is_err(), "{codec} corrupt");
            // Cut short.
            assert!(
                decode(format, &good[..good.len() - 3]).is_err(),
                "{codec} cut"
            );
        }
        // A gzip member that states a wrong decompressed length (CRC intact).
        let mut lying = Codec::Gzip.compress(&a);
        lying[24..32].copy_from_slice(&4999u64.to_le_bytes());
        assert!(decode(Format::Gzip, &lying).is_err());
        let mut lying = Codec::Gzip.compress(&a);
        lying[24..32].copy_from_slice(&5001u64.to_le_bytes());
        assert!(decode(Format::Gzip, &lying).is_err());
        // A stated compressed length past the member: the next member's bytes are
        // taken into it, and the member is refused.
        let mut two = Codec::Gzip.compress(&a);
        let len = two.len() as u64;
        two[16..24].copy_from_slice(&(len + 10).to_le_bytes());
        two.extend(Codec::Gzip.compress(&a));
        let e = decode(Format::Gzip, &two).unwrap_err().to_string();
        assert!(e.contains("ends before its trailer"), "{e}");
        // A member larger than one output buffer (inflated aside, then copied
        // across the buffers) whose CRC is wrong.
        let big = data(super::CHUNK * 3 + 17, 3);
        let mut member = Codec::Gzip.compress(&big);
        let at = member.len() - 8;
        member[at] ^= 1;
        let e = decode(Format::Gzip, &member).unwrap_err().to_string();
        assert!(e.contains("CRC"), "{e}");
    }
}
