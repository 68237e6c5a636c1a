//! Sources (SPEC §8): a URL → a byte stream, with retries, a whole-download deadline
//! and a bandwidth cap, all on one code path whatever the scheme. `download` hashes
//! the bytes as they arrive into a private temp file and hands back only a
//! `Verified` file.
//!
//! Never writes anywhere but the temp file it is given; never logs a secret.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::interrupt;
use crate::logln;
use crate::verify::{Checksum, HashingReader, Verified};

/// How sources are fetched (from the command line).
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Extra attempts after a failed one.
    pub retry: u32,
    /// Pause between attempts.
    pub retry_wait: Duration,
    /// Deadline for the whole download, retries included.
    pub timeout: Option<Duration>,
    /// Bytes per second; `None` is unlimited.
    pub max_bandwidth: Option<u64>,
}

/// Opens a URL for reading. One arm per scheme; everything above is shared.
fn open(url: &str) -> Result<Box<dyn Read + Send>> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = file_path(path);
        let f = File::open(&path).map_err(|e| Error::Fetch {
            url: url.to_string(),
            msg: e.to_string(),
        })?;
        if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Error::Fetch {
                url: url.to_string(),
                msg: "is a directory".into(),
            });
        }
        return Ok(Box::new(f));
    }
    let scheme = url.split("://").next().unwrap_or(url);
    Err(Error::Fetch {
        url: url.to_string(),
        msg: format!("unsupported URL scheme {scheme:?} (file:// is supported)"),
    })
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
        let n = self.inner.read(&mut buf[..want])?;
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
    Error::Fetch {
        url: url.to_string(),
        msg: e.to_string(),
    }
}

/// Runs `attempt` with retries, waits and the deadline of `opts`. Timeouts and
/// signals are final; other errors are retried.
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
            Err(e @ (Error::Timeout { .. } | Error::Interrupted(_))) => return Err(e),
            Err(e) if tries < opts.retry => {
                tries += 1;
                logln!("{e}");
                logln!(
                    "retrying in {} ({tries}/{})",
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

fn limited(
    url: &str,
    deadline: Option<(Instant, Duration)>,
    bw: Option<u64>,
) -> Result<Limited<Box<dyn Read + Send>>> {
    let l = Limited {
        inner: open(url)?,
        url: url.to_string(),
        start: Instant::now(),
        deadline,
        bandwidth: bw.filter(|b| *b > 0),
        bytes: 0,
    };
    l.check_deadline().map_err(|e| read_error(&l.url, e))?;
    Ok(l)
}

/// Fetches a small text document (the manifest), with retries and the deadline.
pub fn fetch_text(url: &str, opts: &FetchOptions) -> Result<String> {
    let start = Instant::now();
    let bytes = with_retries(url, opts, start, |deadline| {
        let mut r = limited(url, deadline, None)?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).map_err(|e| read_error(url, e))?;
        Ok(buf)
    })?;
    String::from_utf8(bytes).map_err(|_| Error::Fetch {
        url: url.to_string(),
        msg: "not UTF-8 text".into(),
    })
}

/// Downloads `url` into `file` (truncated first, rewound after), hashing as the
/// bytes arrive; only a matching digest gives the file back, `Verified`.
pub fn download(
    url: &str,
    checksum: &Checksum,
    mut file: File,
    file_path: &Path,
    opts: &FetchOptions,
) -> Result<Verified<File>> {
    let start = Instant::now();
    if let Some(bw) = opts.max_bandwidth.filter(|b| *b > 0) {
        logln!("Set max bandwidth {bw} bytes/sec");
    }
    if let Some(t) = opts.timeout {
        logln!("Set timeout {}", humantime::format_duration(t));
    }
    let (written, hasher) = with_retries(url, opts, start, |deadline| {
        file.set_len(0)
            .map_err(|e| Error::io("truncate", file_path, e))?;
        file.rewind().map_err(|e| Error::io("seek", file_path, e))?;
        let src = limited(url, deadline, opts.max_bandwidth)?;
        let mut hashing = HashingReader::new(src, checksum.hasher());
        let mut out = io::BufWriter::with_capacity(256 * 1024, &mut file);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match hashing.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted && e.get_ref().is_none() => {
                    continue
                }
                Err(e) => return Err(read_error(url, e)),
            };
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("write", file_path, e))?;
        }
        out.flush().map_err(|e| Error::io("write", file_path, e))?;
        let count = hashing.count();
        let (_, hasher) = hashing.into_parts();
        Ok((count, hasher))
    })?;
    let secs = start.elapsed().as_secs_f64();
    logln!(
        "Wrote {written} bytes to {} (in {secs:.3}s, {:.0} bytes/s)",
        file_path.display(),
        written as f64 / secs.max(1e-9)
    );
    let verified = checksum.verify(hasher, ())?;
    logln!("Checksum ok: {}", checksum.hex());
    file.rewind().map_err(|e| Error::io("seek", file_path, e))?;
    Ok(verified.map(|()| file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_map_to_paths() {
        assert_eq!(file_path("/a/b c"), Path::new("/a/b c"));
        assert_eq!(file_path("localhost/a/b"), Path::new("/a/b"));
        assert_eq!(file_path("/a/b%20c"), Path::new("/a/b%20c"));
    }

    #[test]
    fn unsupported_scheme_is_named() {
        let e = fetch_text("gopher://x/y", &FetchOptions::default()).unwrap_err();
        assert!(
            e.to_string().contains("unsupported URL scheme \"gopher\""),
            "{e}"
        );
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
