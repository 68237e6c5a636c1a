//! Sources (SPEC §8): a URL → a byte stream, with retries, a whole-download deadline
//! and a bandwidth cap, all on one code path whatever the scheme: `open` has one arm
//! per scheme (`file://`, `http(s)://`, `s3://` = a presigned https GET through the
//! same HTTP client); `with_retries`, `Limited`, `stream` and `fetch_text` are shared.
//! `stream` hashes the bytes as they arrive on their way to the consumer (the
//! unpacker) and hands back only a `Verified` result.
//!
//! Never writes anything; never logs a secret or a
//! presigned URL: errors and log lines name the URL as the user wrote it. With `s3`,
//! the only module that touches the network.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::interrupt;
use crate::logln;
use crate::s3;
use crate::verify::{Checksum, HashingReader, Verified};

/// Longest wait for a TCP connection (and TLS handshake), capped by the deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading a response before the attempt fails (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A presigned S3 URL lives at least this long, and this much longer than `--timeout`.
const PRESIGN_MIN: Duration = Duration::from_secs(15 * 60);
const PRESIGN_SLACK: Duration = Duration::from_secs(5 * 60);
/// At most this many progress updates per second on a terminal.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

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

/// An open source: its bytes and, when the server said, how many there are.
struct Source {
    reader: Box<dyn Read + Send>,
    len: Option<u64>,
}

/// Opens a URL for reading. One arm per scheme; everything above is shared.
fn open(url: &str, deadline: Option<(Instant, Duration)>) -> Result<Source> {
    let (scheme, rest) = url.split_once("://").unwrap_or_default();
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            let path = file_path(rest);
            let f = File::open(&path).map_err(|e| Error::Fetch {
                url: url.to_string(),
                msg: e.to_string(),
            })?;
            let md = f.metadata().ok();
            if md.as_ref().is_some_and(|m| m.is_dir()) {
                return Err(Error::Fetch {
                    url: url.to_string(),
                    msg: "is a directory".into(),
                });
            }
            Ok(Source {
                reader: Box::new(f),
                len: md.map(|m| m.len()),
            })
        }
        "http" | "https" => http_get(url, url, deadline),
        "s3" => {
            let env = |k: &str| std::env::var(k).ok();
            let lifetime = deadline
                .map(|(_, d)| d + PRESIGN_SLACK)
                .unwrap_or(PRESIGN_MIN)
                .max(PRESIGN_MIN);
            let signed = s3::presign(url, &env, lifetime)?;
            http_get(url, &signed, deadline)
        }
        _ => {
            let shown = url.split("://").next().unwrap_or(url);
            Err(Error::Fetch {
                url: url.to_string(),
                msg: format!(
                    "unsupported URL scheme {shown:?} (file://, http://, https:// and s3:// are supported)"
                ),
            })
        }
    }
}

/// The root certificates: the system's store (or `SSL_CERT_FILE` / `SSL_CERT_DIR`
/// when set, as rustls-native-certs and OpenSSL read them), else the bundled
/// webpki roots. Loaded once, on the first HTTP request.
fn tls_config() -> ureq::tls::TlsConfig {
    static TLS: OnceLock<ureq::tls::TlsConfig> = OnceLock::new();
    TLS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            logln!("warning: CA certificates: {e}");
        }
        let certs: Vec<ureq::tls::Certificate<'static>> = found
            .certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let roots = if certs.is_empty() {
            logln!("warning: no system CA certificates found; using the bundled roots");
            ureq::tls::RootCerts::WebPki
        } else {
            ureq::tls::RootCerts::new_with_certs(&certs)
        };
        ureq::tls::TlsConfig::builder().root_certs(roots).build()
    })
    .clone()
}

/// The HTTP agent for one proxy choice (`None` = direct), made once per run and
/// kept, so that the manifest and the archive share connections.
fn agent(proxy: Option<String>) -> std::result::Result<ureq::Agent, String> {
    static AGENTS: Mutex<Vec<(Option<String>, ureq::Agent)>> = Mutex::new(Vec::new());
    // A poisoned list of agents is still a valid list.
    let mut agents = AGENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, a)) = agents.iter().find(|(p, _)| *p == proxy) {
        return Ok(a.clone());
    }
    let p = match &proxy {
        // The proxy URL may hold a password: never shown.
        Some(url) => Some(
            ureq::Proxy::new(url).map_err(|_| "invalid proxy URL in HTTP(S)_PROXY".to_string())?,
        ),
        None => None,
    };
    let config = ureq::Agent::config_builder()
        .proxy(p)
        .tls_config(tls_config())
        .user_agent(format!("stretcher/{}", crate::cli::VERSION))
        .http_status_as_error(false)
        .build();
    let a = ureq::Agent::new_with_config(config);
    agents.push((proxy, a.clone()));
    Ok(a)
}

/// The proxy for a request, as Go's net/http reads the environment: `HTTPS_PROXY`
/// for https, `HTTP_PROXY` for http (upper case first, then lower case), none for
/// `localhost` and loopback addresses or a host matched by `NO_PROXY`.
fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = split_host_port(hostport, scheme);
    let get = |a: &str, b: &str| {
        env(a)
            .or_else(|| env(b))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let proxy = match scheme.to_ascii_lowercase().as_str() {
        "https" => get("HTTPS_PROXY", "https_proxy")?,
        "http" => get("HTTP_PROXY", "http_proxy")?,
        _ => return None,
    };
    let host = host.to_ascii_lowercase();
    if host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        return None;
    }
    if let Some(no) = get("NO_PROXY", "no_proxy") {
        if no_proxy_matches(&no, &host, port) {
            return None;
        }
    }
    Some(if proxy.contains("://") {
        proxy
    } else {
        format!("http://{proxy}")
    })
}

/// `host:port` → (host without IPv6 brackets, port or the scheme's default).
fn split_host_port<'a>(hostport: &'a str, scheme: &str) -> (&'a str, u16) {
    let default = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (h, port.unwrap_or(default));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(default)),
        _ => (hostport, default),
    }
}

/// `NO_PROXY` as Go reads it: comma-separated; `*` matches everything; an IP address or
/// CIDR block matches addresses; `example.com` matches it and its subdomains,
/// `.example.com` and `*.example.com` only subdomains; `host:port` only that port.
fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let ip = host.parse::<std::net::IpAddr>().ok();
    list.split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some((net, bits)) = entry.split_once('/') {
                return match (ip, net.parse::<std::net::IpAddr>(), bits.parse::<u32>()) {
                    (Some(ip), Ok(net), Ok(bits)) => in_cidr(ip, net, bits),
                    _ => false,
                };
            }
            let (mut pat, pport) = if entry.starts_with('[') || entry.matches(':').count() == 1 {
                let (h, p) = split_host_port(&entry, "http");
                let explicit = entry
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
                (h.to_string(), explicit.then_some(p))
            } else {
                (entry.clone(), None)
            };
            if pport.is_some_and(|p| p != port) {
                return false;
            }
            if let (Some(ip), Ok(pip)) = (ip, pat.parse::<std::net::IpAddr>()) {
                return ip == pip;
            }
            if let Some(rest) = pat.strip_prefix('*') {
                pat = rest.to_string();
            }
            if pat.starts_with('.') {
                host.ends_with(&pat)
            } else {
                host == pat || host.ends_with(&format!(".{pat}"))
            }
        })
}

fn in_cidr(ip: std::net::IpAddr, net: std::net::IpAddr, bits: u32) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (ip, net) {
        (V4(a), V4(b)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (V6(a), V6(b)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Describes a ureq error without the URL it was about (it may be presigned).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => "invalid URL".into(),
        ureq::Error::RequireHttpsOnly(_) => "https required".into(),
        ureq::Error::ConnectProxyFailed(_) => "the proxy refused the connection".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        other => other.to_string(),
    }
}

/// Time left before the deadline, or an error when it has passed.
fn remaining(label: &str, deadline: Option<(Instant, Duration)>) -> Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some((end, d)) => {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(Error::Timeout {
                    url: label.to_string(),
                    secs: d.as_secs_f64(),
                })
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// GETs `url` (which may be a presigned URL: never shown) and names `label` in every
/// error. Non-2xx is `Error::HttpStatus` with the status (and S3's error code).
fn http_get(label: &str, url: &str, deadline: Option<(Instant, Duration)>) -> Result<Source> {
    let left = remaining(label, deadline)?;
    let env = |k: &str| std::env::var(k).ok();
    let fail = |msg: String| Error::Fetch {
        url: label.to_string(),
        msg,
    };
    let agent = agent(proxy_for(url, &env)).map_err(fail)?;
    let connect = left.map_or(CONNECT_TIMEOUT, |l| l.min(CONNECT_TIMEOUT));
    let resp = agent
        .get(url)
        .config()
        .timeout_connect(Some(connect))
        .timeout_per_read(Some(READ_TIMEOUT))
        .timeout_global(left)
        .build()
        .call()
        .map_err(|e| {
            // Past the deadline, whatever ureq says, it is the deadline.
            remaining(label, deadline)
                .err()
                .unwrap_or_else(|| fail(describe(&e)))
        })?;
    let status = resp.status();
    if !status.is_success() {
        let region = resp
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body();
        let text = body
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let mut detail = status
            .canonical_reason()
            .map(|r| format!(" {r}"))
            .unwrap_or_default();
        if let Some(code) = xml_tag(&text, "Code") {
            detail.push_str(&format!(" ({code}"));
            if let Some(m) = xml_tag(&text, "Message") {
                detail.push_str(&format!(": {m}"));
            }
            detail.push(')');
        }
        if let Some(r) = region {
            detail.push_str(&format!("; the bucket is in region {r} (set AWS_REGION)"));
        }
        return Err(Error::HttpStatus {
            url: label.to_string(),
            status: status.as_u16(),
            detail,
        });
    }
    let len = resp.body().content_length();
    let reader = resp.into_body().into_reader();
    Ok(Source {
        reader: Box::new(Exact {
            inner: reader,
            expected: len,
            got: 0,
        }),
        len,
    })
}

/// The text of the first `<tag>` of a small XML document (S3's error body), cut short.
fn xml_tag(text: &str, tag: &str) -> Option<String> {
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    let v: String = text[start..end].chars().take(200).collect();
    Some(v.trim().to_string()).filter(|v| !v.is_empty())
}

/// A response body that must be as long as its Content-Length said: ending early is
/// an error, never a silently short archive.
struct Exact<R> {
    inner: R,
    expected: Option<u64>,
    got: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| {
            let of = self
                .expected
                .map(|w| format!(" of {w}"))
                .unwrap_or_default();
            io::Error::new(e.kind(), format!("{e} after {}{of} bytes", self.got))
        })?;
        self.got += n as u64;
        if n == 0 && !buf.is_empty() {
            if let Some(want) = self.expected.filter(|w| self.got < *w) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {} of {want} bytes", self.got),
                ));
            }
        }
        Ok(n)
    }
}

/// A small request to a credential endpoint (ECS, EC2 IMDS) for `s3`: direct (no
/// proxy), short timeouts, body up to 64 KiB. The URL holds no secret; headers may.
pub(crate) fn metadata_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    connect: Duration,
    total: Duration,
) -> std::result::Result<(u16, String), String> {
    let agent = agent(None)?;
    let resp = match method {
        Method::Get => {
            let mut r = agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.config()
                .timeout_connect(Some(connect))
                .timeout_global(Some(total))
                .build()
                .call()
        }
        Method::Put => {
            let mut r = agent.put(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.config()
                .timeout_connect(Some(connect))
                .timeout_global(Some(total))
                .build()
                .send_empty()
        }
    };
    let resp = resp.map_err(|e| describe(&e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .into_with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| describe(&e))?;
    Ok((status, body))
}

/// The HTTP methods `metadata_request` knows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Method {
    Get,
    Put,
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
    Error::Fetch {
        url: url.to_string(),
        msg: e.to_string(),
    }
}

/// Whether another attempt may succeed: connection errors and 5xx yes; 4xx, a
/// missing credential, the deadline and signals no.
fn retryable(e: &Error) -> bool {
    match e {
        Error::HttpStatus { status, .. } => *status >= 500,
        Error::S3 { .. } | Error::Timeout { .. } | Error::Interrupted(_) => false,
        _ => true,
    }
}

/// Runs `attempt` with retries, waits and the deadline of `opts`. Only `retryable`
/// errors are tried again.
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
            Err(e) if !retryable(&e) => return Err(e),
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

/// An open, limited source and its length when known.
type Opened = (Limited<Box<dyn Read + Send>>, Option<u64>);

fn limited(url: &str, deadline: Option<(Instant, Duration)>, bw: Option<u64>) -> Result<Opened> {
    let src = open(url, deadline)?;
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

/// Fetches a small text document (the manifest), with retries and the deadline.
pub fn fetch_text(url: &str, opts: &FetchOptions) -> Result<String> {
    let start = Instant::now();
    let bytes = with_retries(url, opts, start, |deadline| {
        let (mut r, _) = limited(url, deadline, None)?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).map_err(|e| read_error(url, e))?;
        Ok(buf)
    })?;
    String::from_utf8(bytes).map_err(|_| Error::Fetch {
        url: url.to_string(),
        msg: "not UTF-8 text".into(),
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
pub fn stream<T>(
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
    let (outcome, count, hasher) = with_retries(url, opts, start, |deadline| {
        let (src, len) = limited(url, deadline, opts.max_bandwidth)?;
        let mut tap = Tap {
            inner: HashingReader::new(src, checksum.hasher()),
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
        let (_, hasher) = tap.inner.into_parts();
        Ok((outcome, count, hasher))
    })?;
    let secs = start.elapsed().as_secs_f64();
    logln!(
        "Read {count} bytes from {url} (in {secs:.3}s, {:.0} bytes/s)",
        count as f64 / secs.max(1e-9)
    );
    match outcome {
        Ok(value) => {
            let verified = checksum.verify(hasher, value)?;
            logln!("Checksum ok: {}", checksum.hex());
            Ok(verified)
        }
        Err(e) => {
            checksum.verify(hasher, ())?;
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
        let e = fetch_text("gopher://x/y", &FetchOptions::default()).unwrap_err();
        assert!(
            e.to_string().contains("unsupported URL scheme \"gopher\""),
            "{e}"
        );
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn proxies_by_scheme_with_no_proxy() {
        let env = env_of(&[
            ("HTTP_PROXY", "http://hp:3128"),
            ("https_proxy", "sp:8443"),
            (
                "NO_PROXY",
                " internal.example, .corp, 10.0.0.0/8, host.io:8080,[::2]",
            ),
        ]);
        assert_eq!(
            proxy_for("http://a.com/x", &env).as_deref(),
            Some("http://hp:3128")
        );
        assert_eq!(
            proxy_for("https://a.com/x", &env).as_deref(),
            Some("http://sp:8443")
        );
        // Never for this host.
        assert_eq!(proxy_for("http://127.0.0.1:9/x", &env), None);
        assert_eq!(proxy_for("http://localhost/x", &env), None);
        assert_eq!(proxy_for("http://[::1]:80/x", &env), None);
        // A domain matches itself and its subdomains; `.corp` only subdomains.
        assert_eq!(proxy_for("http://internal.example/x", &env), None);
        assert_eq!(proxy_for("http://a.internal.example/x", &env), None);
        assert!(proxy_for("http://xinternal.example/x", &env).is_some());
        assert_eq!(proxy_for("http://db.corp/x", &env), None);
        assert!(proxy_for("http://corp/x", &env).is_some());
        // CIDR, a port, IPv6.
        assert_eq!(proxy_for("http://10.1.2.3/x", &env), None);
        assert!(proxy_for("http://11.1.2.3/x", &env).is_some());
        assert_eq!(proxy_for("http://host.io:8080/x", &env), None);
        assert!(proxy_for("http://host.io/x", &env).is_some());
        assert_eq!(proxy_for("http://[::2]/x", &env), None);
        // Upper case wins; `*` switches proxies off; none set, none used.
        let env = env_of(&[("HTTPS_PROXY", "http://up"), ("https_proxy", "http://low")]);
        assert_eq!(
            proxy_for("https://a.com/", &env).as_deref(),
            Some("http://up")
        );
        assert_eq!(proxy_for("http://a.com/", &env), None);
        let env = env_of(&[("HTTPS_PROXY", "http://up"), ("no_proxy", "*")]);
        assert_eq!(proxy_for("https://a.com/", &env), None);
        let env = env_of(&[("HTTPS_PROXY", "http://up"), ("NO_PROXY", "*.a.com")]);
        assert_eq!(proxy_for("https://b.a.com/", &env), None);
        assert!(proxy_for("https://a.com/", &env).is_some());
    }

    #[test]
    fn only_server_errors_and_connection_errors_are_retried() {
        let status = |s| Error::HttpStatus {
            url: "u".into(),
            status: s,
            detail: String::new(),
        };
        assert!(retryable(&status(500)));
        assert!(retryable(&status(503)));
        assert!(!retryable(&status(404)));
        assert!(!retryable(&status(403)));
        assert!(retryable(&Error::Fetch {
            url: "u".into(),
            msg: "Connection refused".into()
        }));
        assert!(!retryable(&Error::S3 {
            url: "u".into(),
            msg: "no credentials".into()
        }));
        assert!(!retryable(&Error::Timeout {
            url: "u".into(),
            secs: 1.0
        }));
    }

    #[test]
    fn a_body_shorter_than_its_length_is_an_error() {
        let data = [1u8; 10];
        let mut r = Exact {
            inner: &data[..],
            expected: Some(20),
            got: 0,
        };
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("after 10 of 20 bytes"), "{e}");
        let mut r = Exact {
            inner: &data[..],
            expected: Some(10),
            got: 0,
        };
        assert_eq!(r.read_to_end(&mut Vec::new()).unwrap(), 10);
    }

    #[test]
    fn s3_error_codes_are_read_from_xml() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>The key does not exist</Message></Error>";
        assert_eq!(xml_tag(body, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(
            xml_tag(body, "Message").as_deref(),
            Some("The key does not exist")
        );
        assert_eq!(xml_tag("<html>", "Code"), None);
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
