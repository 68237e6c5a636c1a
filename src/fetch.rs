//! Sources (SPEC §8): a URL → a byte stream, with retries, a whole-download deadline,
//! a stall limit and a bandwidth cap, all on one code path whatever the scheme: `open`
//! has one arm per scheme (`file://`, only a regular file; `http(s)://`, `s3://` = a
//! presigned https GET through the same HTTP client, `gs://` = a GET with a bearer
//! token from `gcs`); `with_retries`, `Limited`, `stream` and `fetch_bytes` are shared.
//! An HTTP GET is sent and read on a thread of its own (`watch`), so that a signal,
//! the deadline and `--stall-timeout` end it within a tick, before its head as within
//! its body. `fetch_bytes` reads a small document (manifest, signature) up to a limit
//! and refuses the first byte past it (SPEC §17); `stream` hashes the bytes as they
//! arrive on their way to the consumer (the unpacker), stops at the first byte past
//! the manifest's `size`, stops at once when the consumer fails (never drained), and
//! hands back only a `Verified` result.
//!
//! Never writes anything; never logs a secret or a presigned URL: errors and log lines
//! name the URL as the user wrote it, through `urls::redact`. The network is reached
//! only through `http` (the client), `s3` (signing and credentials) and `gcs` (tokens).

use std::io::{self, IsTerminal, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::allow::AllowList;
use crate::error::{Error, Result};
use crate::gcs;
use crate::http;
use crate::interrupt;
use crate::logln;
use crate::s3;
use crate::urls::redact;
use crate::verify::{Checksum, HashingReader, Verified};
use crate::Env;

mod watch;

/// The most bytes a manifest may have (SPEC §17): the next one is refused as it
/// arrives, before anything is parsed or verified.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// A presigned S3 URL lives at least this long, and this much longer than `--timeout`.
const PRESIGN_MIN: Duration = Duration::from_secs(15 * 60);
const PRESIGN_SLACK: Duration = Duration::from_secs(5 * 60);
/// At most this many progress updates per second on a terminal.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// How sources are fetched (from the command line), and the environment lookup
/// that proxies and the S3 / GCS credential chains read.
#[derive(Clone)]
pub(crate) struct FetchOptions<'e> {
    /// Extra attempts after a failed one.
    pub retry: u32,
    /// Pause between attempts.
    pub retry_wait: Duration,
    /// Deadline for the whole download, retries included.
    pub timeout: Option<Duration>,
    /// `--stall-timeout`: an attempt that receives no byte for this long fails (and is
    /// retried); `None` is no limit.
    pub stall: Option<Duration>,
    /// Bytes per second; `None` is unlimited.
    pub max_bandwidth: Option<u64>,
    /// `--allow-url`: every redirect target is checked against it (SPEC §17).
    pub allow: &'e AllowList,
    /// The environment (`HTTPS_PROXY`, `AWS_*`, `GOOGLE_*`, ...), read by no one else.
    pub env: Env<'e>,
}

impl std::fmt::Debug for FetchOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("retry", &self.retry)
            .field("retry_wait", &self.retry_wait)
            .field("timeout", &self.timeout)
            .field("stall", &self.stall)
            .field("max_bandwidth", &self.max_bandwidth)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

/// An open source: its bytes and, when the server said, how many there are.
pub(crate) struct Source {
    pub(crate) reader: Box<dyn Read + Send>,
    pub(crate) len: Option<u64>,
    /// For a range request: the part of the source the bytes are (a `file://`
    /// source always serves the range asked); `None`: the whole source.
    pub(crate) served: Option<http::Served>,
}

/// A part of a source (SPEC §18): `len` bytes from `start`, or the last `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// `len` (> 0) bytes from `start`.
    At { start: u64, len: u64 },
    /// The last `len` (> 0) bytes.
    Tail(u64),
}

impl Span {
    /// The `Range` header asking for it (one range per request: S3 and GCS serve no
    /// more).
    fn header(self) -> String {
        match self {
            Span::At { start, len } => {
                format!("bytes={start}-{}", start.saturating_add(len.max(1) - 1))
            }
            Span::Tail(len) => format!("bytes=-{len}"),
        }
    }
}

/// Opens a URL for reading (only `span` of it, when given). One arm per scheme;
/// everything above is shared.
fn open(
    url: &str,
    deadline: Option<(Instant, Duration)>,
    opts: &FetchOptions,
    span: Option<Span>,
) -> Result<Source> {
    let env = opts.env;
    let (scheme, rest) = url.split_once("://").unwrap_or_default();
    // An HTTP GET, sent and read on a thread of its own (`watch`).
    let watched = |req: http::Request| {
        let limits = watch::Limits {
            stall: opts.stall,
            deadline,
        };
        watch::start(url, limits, move || {
            req.send().map(|b| Source {
                reader: b.reader,
                len: b.len,
                served: b.served,
            })
        })
    };
    let range = span.map(Span::header);
    let range = range.as_deref().map(|r| ("Range", r));
    match scheme.to_ascii_lowercase().as_str() {
        "file" => open_file(url, rest, span),
        "http" | "https" => watched(http::request(
            url,
            url,
            range.as_slice(),
            deadline,
            opts.allow,
            env,
        )?),
        "s3" => {
            let lifetime = deadline
                .map(|(_, d)| d + PRESIGN_SLACK)
                .unwrap_or(PRESIGN_MIN)
                .max(PRESIGN_MIN);
            // The signature covers the host only: a Range header may be added.
            let signed = s3::presign(url, env, lifetime)?;
            watched(http::request(
                url,
                &signed,
                range.as_slice(),
                deadline,
                opts.allow,
                env,
            )?)
        }
        "gs" => {
            let req = gcs::request(url, env, deadline)?;
            let auth = req.authorization.as_deref().map(|a| ("Authorization", a));
            let headers: Vec<(&str, &str)> = auth.into_iter().chain(range).collect();
            let got = watched(http::request(
                url, &req.url, &headers, deadline, opts.allow, env,
            )?);
            if let Err(Error::HttpStatus { status: 401, .. }) = &got {
                gcs::forget_tokens();
            }
            got
        }
        _ => {
            let shown = url.split("://").next().unwrap_or(url);
            Err(Error::fetch(
                url,
                format!(
                    "unsupported URL scheme {shown:?} (file://, http://, https://, s3:// and gs:// are supported)"
                ),
            ))
        }
    }
}

/// A `file://` source: a regular file only (SPEC §17). Opened without waiting (a FIFO
/// would block the open until a writer came) and checked on the open descriptor, so
/// the file read is the file checked; `O_NONBLOCK` changes nothing for a regular
/// file's reads.
fn open_file(url: &str, rest: &str, span: Option<Span>) -> Result<Source> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let path = file_path(rest);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(&path)
        .map_err(|e| Error::fetch_from(url, e))?;
    let md = f.metadata().map_err(|e| Error::fetch_from(url, e))?;
    let kind = md.file_type();
    if kind.is_dir() {
        return Err(Error::fetch(url, "is a directory"));
    }
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "of another type"
        };
        return Err(Error::Limit {
            url: url.to_string(),
            msg: format!("not a regular file ({what})"),
        });
    }
    let total = md.len();
    let Some(span) = span else {
        return Ok(Source {
            reader: Box::new(f),
            len: Some(total),
            served: None,
        });
    };
    // A range of a file: read by offset (`pread`), never past its end.
    let (start, len) = match span {
        Span::At { start, len } => (start.min(total), len.min(total.saturating_sub(start))),
        Span::Tail(len) => (total.saturating_sub(len), len.min(total)),
    };
    if len == 0 {
        return Err(Error::fetch(
            url,
            format!("range {span:?} is outside its {total} bytes"),
        ));
    }
    Ok(Source {
        reader: Box::new(Pread {
            file: f,
            at: start,
            end: start + len,
        }),
        len: Some(len),
        served: Some(http::Served {
            start,
            end: start + len - 1,
            total: Some(total),
        }),
    })
}

/// A part of a local file, read by offset (`pread`).
struct Pread {
    file: std::fs::File,
    at: u64,
    end: u64,
}

impl Read for Pread {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = usize::try_from(self.end - self.at).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The local path of a `file://` URL: `file:///abs` or `file://localhost/abs`.
/// The path is taken byte for byte (no `%XX` decoding), the way a positional path
/// becomes a `file://` URL.
fn file_path(rest: &str) -> std::path::PathBuf {
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    std::path::PathBuf::from(rest)
}

/// The most bytes a source may have: `exact`, the manifest's `size` (fewer is an
/// error too); else a limit (a manifest, a signature).
#[derive(Debug, Clone, Copy)]
struct Cap {
    max: u64,
    exact: bool,
}

impl Cap {
    /// What a source with more bytes is, in words.
    fn too_long(&self) -> String {
        if self.exact {
            format!("longer than its size, {} bytes", self.max)
        } else {
            format!("larger than {} bytes", self.max)
        }
    }
}

/// A reader that enforces the deadline, the bandwidth cap and the `Cap`, and notices
/// signals.
struct Limited<R> {
    inner: R,
    start: Instant,
    deadline: Option<(Instant, Duration)>,
    bandwidth: Option<u64>,
    cap: Option<Cap>,
    bytes: u64,
}

impl<R: Read> Limited<R> {
    fn check_deadline(&self) -> io::Result<()> {
        if let Some((end, d)) = self.deadline {
            if Instant::now() >= end {
                return Err(Halt::Deadline(d.as_secs_f64()).into());
            }
        }
        if let Some(sig) = interrupt::pending() {
            return Err(Halt::Signal(sig).into());
        }
        Ok(())
    }

    /// A read of the source; an error past the deadline is the deadline's.
    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => Ok(n),
            // A read cut short by the HTTP client's own deadline is the deadline.
            Err(e) => {
                self.check_deadline()?;
                Err(e)
            }
        }
    }
}

/// Why a read was stopped, carried inside an `io::Error` (of kind `Other`: never
/// `Interrupted`, which `read_to_end` and the unpacker retry) up to `read_error`,
/// which makes it the crate's error.
#[derive(Debug, Clone)]
enum Halt {
    /// The whole-download deadline (`--timeout`, in seconds) passed.
    Deadline(f64),
    /// SIGINT / SIGTERM arrived.
    Signal(&'static str),
    /// No byte for `--stall-timeout` (in seconds).
    Stalled(f64),
    /// One byte more than the `Cap` allows (`Cap::too_long`).
    TooLong(String),
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halt::Deadline(secs) => write!(f, "timeout after {secs:.1}s"),
            Halt::Signal(sig) => write!(f, "interrupted by {sig}"),
            Halt::Stalled(secs) => write!(f, "stalled: no data for {secs:.1}s"),
            Halt::TooLong(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Halt {}

impl From<Halt> for io::Error {
    fn from(h: Halt) -> io::Error {
        io::Error::other(h)
    }
}

impl Halt {
    /// The crate's error for a halted read of `url`.
    fn into_error(self, url: &str) -> Error {
        let url = url.to_string();
        match self {
            Halt::Deadline(secs) => Error::Timeout { url, secs },
            Halt::Signal(sig) => Error::Interrupted(sig),
            Halt::Stalled(secs) => Error::Stalled { url, secs },
            Halt::TooLong(msg) => Error::Limit { url, msg },
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check_deadline()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let mut want = buf.len();
        if let Some(cap) = self.cap {
            let left = cap.max.saturating_sub(self.bytes);
            if left == 0 {
                // Whether one more byte comes: then it is one too many.
                let mut probe = [0u8; 1];
                return match self.read_inner(&mut probe)? {
                    0 => Ok(0),
                    _ => Err(Halt::TooLong(cap.too_long()).into()),
                };
            }
            want = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        if let Some(bw) = self.bandwidth {
            // Read at most a tenth of a second's worth at a time, so the pace is even
            // and the deadline is checked often.
            want = want.min((bw / 10).max(1) as usize);
            // Sleep until the bytes already read are within budget.
            loop {
                let allowed = self.start.elapsed().as_secs_f64() * bw as f64;
                if (self.bytes as f64) < allowed + 1.0 {
                    break;
                }
                let ahead = (self.bytes as f64 - allowed) / bw as f64;
                std::thread::sleep(Duration::from_secs_f64(ahead.min(0.05)));
                self.check_deadline()?;
            }
        }
        let n = self.read_inner(&mut buf[..want])?;
        self.bytes += n as u64;
        if n == 0 {
            if let Some(cap) = self.cap.filter(|c| c.exact && self.bytes < c.max) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "shorter than its size: ended after {} of {} bytes",
                        self.bytes, cap.max
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// Maps an `io::Error` from a `Limited` read to the crate error for `url`.
fn read_error(url: &str, e: io::Error) -> Error {
    if let Some(h) = e.get_ref().and_then(|i| i.downcast_ref::<Halt>()) {
        return h.clone().into_error(url);
    }
    Error::fetch_from(url, e)
}

/// Runs `attempt` with retries, waits and the deadline of `opts`. Every error that
/// `Error::is_retryable` (SPEC §8: all but the deadline, a signal, a checksum
/// mismatch, which `stream` decides after the attempts, and a refusal) is tried again,
/// up to `opts.retry` times, each retry logged with its reason.
fn with_retries<T>(
    url: &str,
    opts: &FetchOptions,
    start: Instant,
    mut attempt: impl FnMut(Option<(Instant, Duration)>) -> Result<T>,
) -> Result<T> {
    let deadline = opts.timeout.map(|d| (start + d, d));
    let mut tries = 0;
    loop {
        match attempt(deadline) {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) if tries < opts.retry => {
                tries += 1;
                logln!(
                    "attempt {tries} failed: {e}; retrying in {} ({tries}/{})",
                    humantime::format_duration(opts.retry_wait),
                    opts.retry
                );
                if let Some((end, d)) = deadline {
                    if Instant::now() + opts.retry_wait >= end {
                        return Err(Error::Timeout {
                            url: url.to_string(),
                            secs: d.as_secs_f64(),
                        });
                    }
                }
                interrupt::sleep(opts.retry_wait)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// An open, limited source and its length when known.
type Opened = (Limited<Box<dyn Read + Send>>, Option<u64>);

/// Opens `url` behind a `Limited`. A length the server (or the file system) gives
/// beyond the `cap` is refused before a byte is read.
fn limited(
    url: &str,
    deadline: Option<(Instant, Duration)>,
    bw: Option<u64>,
    cap: Option<Cap>,
    opts: &FetchOptions,
) -> Result<Opened> {
    let src = open(url, deadline, opts, None)?;
    if let (Some(cap), Some(len)) = (cap, src.len) {
        if len > cap.max {
            return Err(Error::Limit {
                url: url.to_string(),
                msg: format!("{} ({len} bytes announced)", cap.too_long()),
            });
        }
    }
    let l = Limited {
        inner: src.reader,
        start: Instant::now(),
        deadline,
        bandwidth: bw.filter(|b| *b > 0),
        cap,
        bytes: 0,
    };
    l.check_deadline().map_err(|e| read_error(url, e))?;
    Ok((l, src.len))
}

/// Fetches a small document's raw bytes (the manifest and its signature), with
/// retries, the deadline and the stall limit; the byte after the first `max` is
/// refused as it arrives (`Error::Limit`, never retried).
pub(crate) fn fetch_bytes(url: &str, opts: &FetchOptions, max: u64) -> Result<Vec<u8>> {
    let start = Instant::now();
    let cap = Cap { max, exact: false };
    with_retries(url, opts, start, |deadline| {
        let (mut r, _) = limited(url, deadline, None, Some(cap), opts)?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).map_err(|e| read_error(url, e))?;
        Ok(buf)
    })
}

/// Reads `span` of `url` (SPEC §18: a packed archive's footer, table and members),
/// handing each chunk to `sink` with its offset in the source; answers the part that
/// was served (with the source's whole size when the server said). The same path as
/// every download: the allow-list and redirect policy, proxies, credentials, retries,
/// the deadline counted from `start` (the whole deploy's), `--stall-timeout`, the
/// bandwidth cap (`bandwidth`, this request's share). An attempt that fails starts
/// the span again (the sink must take the same offsets twice). A server that answers
/// with the whole body (a `200`: no range support) is `Error::NoRanges`, and its body
/// is never read.
pub(crate) fn read_range(
    url: &str,
    span: Span,
    opts: &FetchOptions,
    start: Instant,
    bandwidth: Option<u64>,
    sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<http::Served> {
    with_retries(url, opts, start, |deadline| {
        let src = open(url, deadline, opts, Some(span))?;
        let Some(served) = src.served else {
            // Dropped unread: the whole body is not wanted.
            return Err(Error::NoRanges {
                url: url.to_string(),
            });
        };
        check_served(url, span, served)?;
        let want = served.end - served.start + 1;
        let mut r = Limited {
            inner: src.reader,
            start: Instant::now(),
            deadline,
            bandwidth: bandwidth.filter(|b| *b > 0),
            cap: Some(Cap {
                max: want,
                exact: true,
            }),
            bytes: 0,
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = served.start;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted && e.get_ref().is_none() => {
                    continue
                }
                Err(e) => return Err(read_error(url, e)),
            };
            sink(at, &buf[..n])?;
            at += n as u64;
        }
        Ok(served)
    })
}

/// Whether the part `served` is the `span` asked for (clipped to the source's end).
/// Every sum is checked: the values are the server's (a hostile `Content-Range` must
/// not overflow into a match).
fn check_served(url: &str, span: Span, served: http::Served) -> Result<()> {
    // The part wanted: [start, end), clipped to the source's size when known.
    let wanted = match (span, served.total) {
        (Span::At { start, len }, total) => start
            .checked_add(len)
            .map(|end| (start, total.map_or(end, |t| end.min(t)))),
        (Span::Tail(len), Some(total)) => Some((total.saturating_sub(len), total)),
        (Span::Tail(_), None) => None,
    };
    let ok = wanted.is_some_and(|(start, end)| {
        start < end && served.start == start && served.end.checked_add(1) == Some(end)
    });
    if ok {
        return Ok(());
    }
    Err(Error::fetch(
        url,
        format!(
            "asked for {}, the server sent bytes {}-{}",
            span.header(),
            served.start,
            served.end
        ),
    ))
}

/// The fetched bytes of `url` as text (a manifest must be UTF-8).
pub(crate) fn into_text(url: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| Error::Fetch {
        url: url.to_string(),
        msg: "not UTF-8 text".into(),
        source: Some(e.into()),
    })
}

/// Streams `url` into `consume` (the unpacker), hashing the bytes as they arrive,
/// with the retries, deadline, stall limit and bandwidth cap of `opts`, and `size`,
/// the manifest's: a longer body fails at the byte past it, a shorter one at its end.
/// Each attempt starts `consume` afresh, so it must not keep state across calls. Only
/// a matching digest gives its result back, `Verified`.
///
/// A source error (connection, deadline, stall, signal, size) is reported as such
/// even when the consumer saw it first as a broken stream. When the consumer fails on
/// its own (a corrupt archive), the download stops there (SPEC §17: never drained)
/// and the consumer's error is the one reported.
pub(crate) fn stream<T>(
    url: &str,
    checksum: &Checksum,
    size: Option<u64>,
    opts: &FetchOptions,
    mut consume: impl FnMut(&mut (dyn Read + Send)) -> Result<T>,
) -> Result<Verified<T>> {
    let start = Instant::now();
    if let Some(bw) = opts.max_bandwidth.filter(|b| *b > 0) {
        logln!("Set max bandwidth {bw} bytes/sec");
    }
    if let Some(t) = opts.timeout {
        logln!("Set timeout {}", humantime::format_duration(t));
    }
    let cap = size.map(|max| Cap { max, exact: true });
    // Outer error: the source failed (retried when retryable); inner: the consumer's
    // own verdict on the bytes (never retried).
    let attempt = with_retries(url, opts, start, |deadline| {
        let (src, len) = limited(url, deadline, opts.max_bandwidth, cap, opts)?;
        let mut tap = Tap {
            inner: HashingReader::new(src, checksum),
            progress: Progress::new(len),
            failure: None,
        };
        let outcome = consume(&mut tap);
        if outcome.is_ok() && tap.failure.is_none() {
            // The digest needs every byte (the unpacker reads to the end: normally
            // nothing is left).
            let _ = io::copy(&mut tap, &mut io::sink());
        }
        if let Some(e) = tap.failure.take() {
            return Err(read_error(url, e));
        }
        Ok(match outcome {
            Ok(value) => Ok((value, tap.inner.count(), tap.inner.finish())),
            // Dropping the source here ends the download.
            Err(e) => Err(e),
        })
    })?;
    let (value, count, hashed) = attempt?;
    let secs = start.elapsed().as_secs_f64();
    logln!(
        "Read {count} bytes from {} (in {secs:.3}s, {:.0} bytes/s)",
        redact(url),
        count as f64 / secs.max(1e-9)
    );
    let verified = hashed.verify(value)?;
    logln!("Checksum ok: {}", checksum.hex());
    Ok(verified)
}

/// The consumer's view of a source: hashes, shows progress, and keeps the source's
/// own error (the consumer only gets a copy, which it may wrap beyond recognition).
struct Tap<R> {
    inner: HashingReader<R>,
    progress: Progress,
    failure: Option<io::Error>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failure {
            return Err(io::Error::other(e.to_string()));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.progress.update(self.inner.count());
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted && e.get_ref().is_none() => Err(e),
            Err(e) => {
                // The copy must not look like EINTR (which readers retry): a signal's
                // error has that kind.
                let kind = match e.kind() {
                    io::ErrorKind::Interrupted => io::ErrorKind::Other,
                    k => k,
                };
                let copy = io::Error::new(kind, e.to_string());
                self.failure = Some(e);
                Err(copy)
            }
        }
    }
}

/// A `\r`-rewritten line on stderr while a download runs, only when stderr is a
/// terminal; never in the in-memory log. Cleared when dropped.
struct Progress {
    enabled: bool,
    total: Option<u64>,
    start: Instant,
    last: Option<Instant>,
}

impl Progress {
    fn new(total: Option<u64>) -> Progress {
        Progress {
            enabled: io::stderr().is_terminal(),
            total,
            start: Instant::now(),
            last: None,
        }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        let rate = done as f64 / self.start.elapsed().as_secs_f64().max(1e-3);
        let pct = match self.total {
            Some(t) if t > 0 => format!(" of {t} ({:.0}%)", done as f64 * 100.0 / t as f64),
            _ => String::new(),
        };
        let _ = write!(
            io::stderr().lock(),
            "\r\x1b[K{done} bytes{pct}, {:.0} bytes/s",
            rate
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.enabled && self.last.is_some() {
            let _ = write!(io::stderr().lock(), "\r\x1b[K");
        }
    }
}

/// Counts the bytes read through it (the record's `downloaded_bytes`).
pub(crate) struct Counting<'a> {
    pub(crate) inner: &'a mut (dyn Read + Send),
    pub(crate) count: &'a AtomicU64,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn file_urls_map_to_paths() {
        assert_eq!(file_path("/a/b c"), Path::new("/a/b c"));
        assert_eq!(file_path("localhost/a/b"), Path::new("/a/b"));
        assert_eq!(file_path("/a/b%20c"), Path::new("/a/b%20c"));
    }

    #[test]
    fn unsupported_scheme_is_named() {
        let allow = AllowList::default();
        let opts = FetchOptions {
            retry: 0,
            retry_wait: Duration::ZERO,
            timeout: None,
            stall: None,
            max_bandwidth: None,
            allow: &allow,
            env: &|_| None,
        };
        let e = fetch_bytes("gopher://x/y", &opts, u64::MAX).unwrap_err();
        assert!(
            e.to_string().contains("unsupported URL scheme \"gopher\""),
            "{e}"
        );
    }

    #[test]
    fn every_failure_but_deadline_signal_and_mismatch_is_retried() {
        let status = |s| Error::HttpStatus {
            url: "u".into(),
            status: s,
            detail: String::new(),
        };
        for s in [500, 503, 404, 403, 400] {
            assert!(status(s).is_retryable(), "{s}");
        }
        assert!(Error::fetch("u", "Connection refused").is_retryable());
        assert!(Error::S3 {
            url: "u".into(),
            msg: "no credentials".into(),
            source: None,
        }
        .is_retryable());
        assert!(!Error::Timeout {
            url: "u".into(),
            secs: 1.0
        }
        .is_retryable());
        assert!(!Error::Interrupted("SIGTERM").is_retryable());
        assert!(!Error::ChecksumMismatch {
            expected: "a".into(),
            got: "b".into()
        }
        .is_retryable());
    }

    #[test]
    fn bandwidth_cap_paces_reads() {
        let data = vec![7u8; 3000];
        let mut l = Limited {
            inner: &data[..],
            start: Instant::now(),
            deadline: None,
            bandwidth: Some(10_000),
            cap: None,
            bytes: 0,
        };
        let t = Instant::now();
        let mut out = Vec::new();
        l.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 3000);
        // 3000 bytes at 10 kB/s cannot finish in much under 0.3 s.
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }

    fn served(start: u64, end: u64, total: Option<u64>) -> http::Served {
        http::Served { start, end, total }
    }

    #[test]
    fn the_part_served_must_be_the_part_asked_for() {
        let at = |start, len| Span::At { start, len };
        // Exactly the range, or the range cut at the source's end.
        assert!(check_served("u", at(10, 5), served(10, 14, Some(100))).is_ok());
        assert!(check_served("u", at(10, 5), served(10, 14, None)).is_ok());
        assert!(check_served("u", at(90, 20), served(90, 99, Some(100))).is_ok());
        assert!(check_served("u", Span::Tail(30), served(70, 99, Some(100))).is_ok());
        assert!(check_served("u", Span::Tail(300), served(0, 99, Some(100))).is_ok());
        // Another part, a shorter or longer one, a part past the source's end.
        for (span, got) in [
            (at(10, 5), served(11, 15, Some(100))),
            (at(10, 5), served(10, 13, Some(100))),
            (at(10, 5), served(10, 15, Some(100))),
            (at(10, 5), served(0, 99, Some(100))),
            (at(90, 20), served(90, 99, None)),
            (Span::Tail(30), served(70, 98, Some(100))),
            (Span::Tail(30), served(70, 99, None)),
        ] {
            let e = check_served("u", span, got).unwrap_err();
            assert!(e.to_string().contains("the server sent bytes"), "{e}");
        }
        // Sums at the edge of u64 never wrap into a match (nor panic).
        let top = u64::MAX;
        assert!(check_served("u", at(top - 1, 5), served(top - 1, top, None)).is_err());
        assert!(check_served("u", at(0, 1), served(0, top, None)).is_err());
        assert!(check_served("u", at(top, 1), served(top, top, None)).is_err());
        assert!(check_served("u", at(10, 5), served(10, 14, Some(10))).is_err());
        assert_eq!(at(top, 2).header(), format!("bytes={top}-{top}"));
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        let p = http::Served::parse;
        assert_eq!(p("bytes 0-9/100"), Some(served(0, 9, Some(100))));
        assert_eq!(p(" bytes  5-5/*"), Some(served(5, 5, None)));
        let top = u64::MAX;
        assert_eq!(p(&format!("bytes 0-{top}/*")), Some(served(0, top, None)));
        for bad in [
            "",
            "bytes",
            "bytes */100",
            "bytes 9-0/100",
            "bytes 0-100/100",
            "bytes 0-9",
            "bytes -9/100",
            "bytes 0-/100",
            "bytes 0-9/",
            "bytes 0-9/-1",
            "bytes 0-9/abc",
            "items 0-9/100",
            "bytes 0-18446744073709551616/*",
            "bytes 0-9/18446744073709551616",
            "bytes +0-9/100",
            "bytes 0-9,20-29/100",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    /// A server on 127.0.0.1 that answers one request with `head` and then `body`
    /// (`endless`: the body again and again until the client goes away); answers the
    /// URL and the thread, which ends with the bytes of body it wrote.
    fn answer_once(
        head: &'static str,
        body: &'static [u8],
        endless: bool,
    ) -> (String, std::thread::JoinHandle<u64>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/a.tar.gz", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                req.push(b[0]);
            }
            let _ = s.write_all(head.as_bytes());
            let mut sent = 0;
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                if s.write_all(body).is_err() {
                    break;
                }
                sent += body.len() as u64;
                if !endless || Instant::now() > end {
                    break;
                }
            }
            sent
        });
        (url, t)
    }

    fn range_of(url: &str, span: Span) -> (Result<http::Served>, u64) {
        let allow = AllowList::default();
        let opts = FetchOptions {
            retry: 0,
            retry_wait: Duration::ZERO,
            timeout: Some(Duration::from_secs(20)),
            stall: None,
            max_bandwidth: None,
            allow: &allow,
            env: &|_| None,
        };
        let mut got = 0u64;
        let r = read_range(url, span, &opts, Instant::now(), None, &mut |_, b| {
            got += b.len() as u64;
            Ok(())
        });
        (r, got)
    }

    #[test]
    fn range_answers_that_are_not_the_range_are_refused() {
        let span = Span::At { start: 0, len: 10 };
        // A 200: the whole body, not read.
        let (url, t) = answer_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
            &[b'x'; 100],
            false,
        );
        let (r, got) = range_of(&url, span);
        assert!(matches!(r, Err(Error::NoRanges { .. })), "{r:?}");
        assert_eq!(got, 0);
        t.join().unwrap();
        // A 206 without Content-Range, and one with another range.
        for (head, says) in [
            (
                "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
                "unreadable Content-Range",
            ),
            (
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-14/100\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
                "asked for bytes=0-9, the server sent bytes 5-14",
            ),
            (
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-18446744073709551615/*\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
                "the server sent bytes 0-18446744073709551615",
            ),
        ] {
            let (url, t) = answer_once(head, b"0123456789", false);
            let (r, got) = range_of(&url, span);
            let e = r.unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(got, 0);
            t.join().unwrap();
        }
    }

    #[test]
    fn an_endless_answer_to_a_range_is_cut_at_its_length() {
        // The right Content-Range, no length, then bytes without end.
        let (url, t) = answer_once(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9999/1000000\r\nConnection: close\r\n\r\n",
            &[b'z'; 4096],
            true,
        );
        let (r, got) = range_of(
            &url,
            Span::At {
                start: 0,
                len: 10_000,
            },
        );
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Limit { .. }), "{e:?}");
        assert!(
            e.to_string().contains("longer than its size, 10000 bytes"),
            "{e}"
        );
        // The sink saw no byte past the range; the server was cut off.
        assert_eq!(got, 10_000);
        let sent = t.join().unwrap();
        assert!(sent < 64 * 1024 * 1024, "{sent}");
    }

    #[test]
    fn deadline_stops_a_slow_read() {
        let data = vec![7u8; 100_000];
        let mut l = Limited {
            inner: &data[..],
            start: Instant::now(),
            deadline: Some((
                Instant::now() + Duration::from_millis(200),
                Duration::from_millis(200),
            )),
            bandwidth: Some(10_000),
            cap: None,
            bytes: 0,
        };
        let e = l.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(read_error("mem", e).to_string().contains("timeout"));
    }
}
