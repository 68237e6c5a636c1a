//! Sources (SPEC §8): a URL → a byte stream, with retries, a whole-download deadline
//! and a bandwidth cap, all on one code path whatever the scheme: `open` has one arm
//! per scheme (`file://`, `http(s)://`, `s3://` = a presigned https GET through the
//! same HTTP client, `gs://` = a GET with a bearer token from `gcs`); `with_retries`, `Limited`, `stream` and `fetch_bytes` are shared.
//! `stream` hashes the bytes as they arrive on their way to the consumer (the
//! unpacker) and hands back only a `Verified` result.
//!
//! Never writes anything; never logs a secret or a presigned URL: errors and log lines
//! name the URL as the user wrote it, through `urls::redact`. The network is reached only through `http` (the
//! client), `s3` (signing and credentials) and `gcs` (tokens).

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gcs;
use crate::http::{self, http_get};
use crate::interrupt;
use crate::logln;
use crate::s3;
use crate::urls::redact;
use crate::verify::{Checksum, HashingReader, Verified};
use crate::Env;

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
    /// Bytes per second; `None` is unlimited.
    pub max_bandwidth: Option<u64>,
    /// The environment (`HTTPS_PROXY`, `AWS_*`, `GOOGLE_*`, ...), read by no one else.
    pub env: Env<'e>,
}

impl std::fmt::Debug for FetchOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("retry", &self.retry)
            .field("retry_wait", &self.retry_wait)
            .field("timeout", &self.timeout)
            .field("max_bandwidth", &self.max_bandwidth)
            .finish_non_exhaustive()
    }
}

/// An open source: its bytes and, when the server said, how many there are.
pub(crate) struct Source {
    pub(crate) reader: Box<dyn Read + Send>,
    pub(crate) len: Option<u64>,
}

impl From<http::Body> for Source {
    fn from(b: http::Body) -> Source {
        Source {
            reader: b.reader,
            len: b.len,
        }
    }
}

/// Opens a URL for reading. One arm per scheme; everything above is shared.
fn open(url: &str, deadline: Option<(Instant, Duration)>, env: Env) -> Result<Source> {
    let (scheme, rest) = url.split_once("://").unwrap_or_default();
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            let path = file_path(rest);
            let f = File::open(&path).map_err(|e| Error::fetch_from(url, e))?;
            let md = f.metadata().ok();
            if md.as_ref().is_some_and(|m| m.is_dir()) {
                return Err(Error::fetch(url, "is a directory"));
            }
            Ok(Source {
                reader: Box::new(f),
                len: md.map(|m| m.len()),
            })
        }
        "http" | "https" => http_get(url, url, deadline, env).map(Source::from),
        "s3" => {
            let lifetime = deadline
                .map(|(_, d)| d + PRESIGN_SLACK)
                .unwrap_or(PRESIGN_MIN)
                .max(PRESIGN_MIN);
            let signed = s3::presign(url, env, lifetime)?;
            http_get(url, &signed, deadline, env).map(Source::from)
        }
        "gs" => {
            let req = gcs::request(url, env, deadline)?;
            let auth = req.authorization.as_deref().map(|a| ("Authorization", a));
            let got = http::http_get_with(url, &req.url, auth.as_slice(), deadline, env);
            if let Err(Error::HttpStatus { status: 401, .. }) = &got {
                gcs::forget_tokens();
            }
            got.map(Source::from)
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

/// The local path of a `file://` URL: `file:///abs` or `file://localhost/abs`.
/// The path is taken byte for byte (no `%XX` decoding), the way a positional path
/// becomes a `file://` URL.
fn file_path(rest: &str) -> std::path::PathBuf {
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    std::path::PathBuf::from(rest)
}

/// A reader that enforces the deadline and the bandwidth cap, and notices signals.
struct Limited<R> {
    inner: R,
    url: String,
    start: Instant,
    deadline: Option<(Instant, Duration)>,
    bandwidth: Option<u64>,
    bytes: u64,
}

impl<R: Read> Limited<R> {
    fn timeout_error(&self) -> io::Error {
        let secs = self.deadline.map(|(_, d)| d.as_secs_f64()).unwrap_or(0.0);
        io::Error::new(io::ErrorKind::TimedOut, TimedOut(secs))
    }

    fn check_deadline(&self) -> io::Result<()> {
        if let Some((end, _)) = self.deadline {
            if Instant::now() >= end {
                return Err(self.timeout_error());
            }
        }
        if let Some(sig) = interrupt::pending() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, Signal(sig)));
        }
        Ok(())
    }
}

/// Marker carried inside an `io::Error` when the deadline passed.
#[derive(Debug)]
struct TimedOut(f64);
impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timeout after {:.1}s", self.0)
    }
}
impl std::error::Error for TimedOut {}

/// Marker carried inside an `io::Error` when a signal arrived.
#[derive(Debug)]
struct Signal(&'static str);
impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.0)
    }
}
impl std::error::Error for Signal {}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check_deadline()?;
        let mut want = buf.len();
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
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            // A read cut short by the HTTP client's own deadline is the deadline.
            Err(e) => {
                self.check_deadline()?;
                return Err(e);
            }
        };
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Maps an `io::Error` from a `Limited` read to the crate error for `url`.
fn read_error(url: &str, e: io::Error) -> Error {
    if let Some(inner) = e.get_ref() {
        if let Some(t) = inner.downcast_ref::<TimedOut>() {
            return Error::Timeout {
                url: url.to_string(),
                secs: t.0,
            };
        }
        if let Some(s) = inner.downcast_ref::<Signal>() {
            return Error::Interrupted(s.0);
        }
    }
    Error::fetch_from(url, e)
}

/// Runs `attempt` with retries, waits and the deadline of `opts`. Every error that
/// `Error::is_retryable` (SPEC §8: all but the deadline, a signal and a checksum
/// mismatch, which `stream` decides after the attempts) is tried again, up to
/// `opts.retry` times, each retry logged with its reason.
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

fn limited(
    url: &str,
    deadline: Option<(Instant, Duration)>,
    bw: Option<u64>,
    env: Env,
) -> Result<Opened> {
    let src = open(url, deadline, env)?;
    let l = Limited {
        inner: src.reader,
        url: url.to_string(),
        start: Instant::now(),
        deadline,
        bandwidth: bw.filter(|b| *b > 0),
        bytes: 0,
    };
    l.check_deadline().map_err(|e| read_error(&l.url, e))?;
    Ok((l, src.len))
}

/// Fetches a small document's raw bytes (the manifest and its signature), with
/// retries and the deadline; more than `max` bytes is an error.
pub(crate) fn fetch_bytes(url: &str, opts: &FetchOptions, max: u64) -> Result<Vec<u8>> {
    let start = Instant::now();
    with_retries(url, opts, start, |deadline| {
        let (r, _) = limited(url, deadline, None, opts.env)?;
        let mut buf = Vec::new();
        r.take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| read_error(url, e))?;
        if buf.len() as u64 > max {
            return Err(Error::fetch(url, format!("larger than {max} bytes")));
        }
        Ok(buf)
    })
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
/// with the retries, deadline and bandwidth cap of `opts`; each attempt starts
/// `consume` afresh, so it must not keep state across calls. Only a matching digest
/// gives its result back, `Verified`.
///
/// A source error (connection, deadline, signal) is reported as such even when the
/// consumer saw it first as a broken stream. When the consumer fails on its own (a
/// corrupt archive), the rest of the source is still read: if the digest does not
/// match, the mismatch is the error reported, the likelier story.
pub(crate) fn stream<T>(
    url: &str,
    checksum: &Checksum,
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
    // Outer error: the source failed (retried when retryable); inner: the consumer's
    // own verdict on good bytes (never retried).
    let (outcome, count, hashed) = with_retries(url, opts, start, |deadline| {
        let (src, len) = limited(url, deadline, opts.max_bandwidth, opts.env)?;
        let mut tap = Tap {
            inner: HashingReader::new(src, checksum),
            progress: Progress::new(len),
            failure: None,
        };
        let outcome = consume(&mut tap);
        if tap.failure.is_none() {
            // The digest needs every byte (normally the consumer read them all).
            let _ = io::copy(&mut tap, &mut io::sink());
        }
        if let Some(e) = tap.failure.take() {
            return Err(read_error(url, e));
        }
        let count = tap.inner.count();
        Ok((outcome, count, tap.inner.finish()))
    })?;
    let secs = start.elapsed().as_secs_f64();
    logln!(
        "Read {count} bytes from {} (in {secs:.3}s, {:.0} bytes/s)",
        redact(url),
        count as f64 / secs.max(1e-9)
    );
    match outcome {
        Ok(value) => {
            let verified = hashed.verify(value)?;
            logln!("Checksum ok: {}", checksum.hex());
            Ok(verified)
        }
        Err(e) => {
            hashed.verify(())?;
            Err(e)
        }
    }
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
        let opts = FetchOptions {
            retry: 0,
            retry_wait: Duration::ZERO,
            timeout: None,
            max_bandwidth: None,
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
            url: "mem".into(),
            start: Instant::now(),
            deadline: None,
            bandwidth: Some(10_000),
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

    #[test]
    fn deadline_stops_a_slow_read() {
        let data = vec![7u8; 100_000];
        let mut l = Limited {
            inner: &data[..],
            url: "mem".into(),
            start: Instant::now(),
            deadline: Some((
                Instant::now() + Duration::from_millis(200),
                Duration::from_millis(200),
            )),
            bandwidth: Some(10_000),
            bytes: 0,
        };
        let e = l.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(read_error("mem", e).to_string().contains("timeout"));
    }
}
