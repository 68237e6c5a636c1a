//! The HTTP(S) client of the sources (SPEC §8): reqwest's blocking client with rustls
//! (ring), the system's CA store or `SSL_CERT_FILE`, bundled roots as fallback; proxies
//! from `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` as Go reads them (`http://` in
//! absolute form through the proxy, `https://` by CONNECT, the proxy URL's credentials
//! as `Proxy-Authorization: Basic` for both); a connect timeout, and the caller's
//! deadline; a body shorter than its `Content-Length` is an error; S3's XML error codes
//! in the message. Redirects (SPEC §17): every target is checked against
//! `--allow-url` like the first URL, one from https to anything else is refused, no
//! `Referer` is sent, and credentials (`Authorization`, from the request or the URL's
//! user info) never go to another host (the client drops them on a cross-host
//! redirect). Also the small direct requests `s3` makes to credential endpoints (ECS,
//! EC2 IMDS) and `gcs` to token endpoints.
//!
//! A source's GET is built here (`request`) and sent by `fetch` on the thread that
//! reads it, which waits for it in ticks (signals, `--stall-timeout`): this module
//! has no read timeout of its own. It never names a presigned URL or a secret in an
//! error: callers pass the URL as the user wrote it as the label, and a redirect
//! target is named through `urls::redact`.

use std::io::{self, Read};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::allow::AllowList;
use crate::error::{Cause, Error, Result};
use crate::logln;
use crate::urls::redact;
use crate::Env;

/// Longest wait for a TCP connection (and TLS handshake), capped by the deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// The root certificates: the system's store (or `SSL_CERT_FILE` / `SSL_CERT_DIR`
/// when set, as rustls-native-certs and OpenSSL read them), else the bundled
/// webpki roots. Loaded once, on the first HTTP request.
fn root_certs() -> Vec<reqwest::Certificate> {
    static ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                logln!("warning: CA certificates: {e}");
            }
            let mut certs: Vec<reqwest::Certificate> = found
                .certs
                .iter()
                .filter_map(|c| reqwest::Certificate::from_der(c.as_ref()).ok())
                .collect();
            if certs.is_empty() {
                logln!("warning: no system CA certificates found; using the bundled roots");
                certs = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .filter_map(|c| reqwest::Certificate::from_der(c.as_ref()).ok())
                    .collect();
            }
            certs
        })
        .clone()
}

/// The HTTP client for one proxy choice (`None` = direct), connect timeout and
/// `--allow-url` list (its redirect policy), made once per run and kept, so that the
/// manifest and the archive share connections.
fn agent(
    proxy: Option<String>,
    connect: Duration,
    allow: &AllowList,
) -> std::result::Result<reqwest::blocking::Client, String> {
    type Key = (Option<String>, Duration, AllowList);
    type Agents = Vec<(Key, reqwest::blocking::Client)>;
    static AGENTS: Mutex<Agents> = Mutex::new(Vec::new());
    // A poisoned list of clients is still a valid list.
    let mut agents = AGENTS.lock().unwrap_or_else(|p| p.into_inner());
    let key = (proxy, connect, allow.clone());
    if let Some((_, a)) = agents.iter().find(|(k, _)| *k == key) {
        return Ok(a.clone());
    }
    let proxy = &key.0;
    // rustls' crypto: ring, for reqwest as for everything else in the process. An
    // error only says a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::blocking::Client::builder()
        .tls_certs_only(root_certs())
        .user_agent(format!("stretcher/{}", crate::VERSION))
        .connect_timeout(connect)
        // No read timeout of the client's (its default is 30 s): a source's silence
        // is `--stall-timeout`'s, which `fetch` watches; a request with a deadline
        // has the time left (`RequestBuilder::timeout`), and the small requests have
        // their own.
        .timeout(None::<Duration>)
        // The previous URL (a presigned one's query included) is nobody's business.
        .referer(false)
        .redirect(redirect_policy(allow.clone()));
    let builder = match proxy {
        // The proxy URL may hold a password: never shown.
        Some(url) => builder.proxy(
            reqwest::Proxy::all(url.as_str())
                .map_err(|_| "invalid proxy URL in HTTP(S)_PROXY".to_string())?,
        ),
        // Never the environment's proxies: `proxy_for` has decided already.
        None => builder.no_proxy(),
    };
    let a = builder
        .build()
        .map_err(|e| format!("HTTP client: {}", describe(&e)))?;
    agents.push((key, a.clone()));
    Ok(a)
}

/// Why a redirect is not followed (SPEC §17): the source of the client's error, which
/// `Request::send` turns into the crate's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Redirect {
    /// From https to another scheme (the URL, redacted).
    Downgrade(String),
    /// A target outside `--allow-url` (the URL, redacted; why).
    NotAllowed(String, String),
    /// More than `MAX_REDIRECTS`.
    TooMany,
}

impl std::fmt::Display for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Redirect::Downgrade(to) => write!(f, "redirect from https to {to} refused"),
            Redirect::NotAllowed(to, why) => {
                write!(f, "redirect to {to} refused by --allow-url: {why}")
            }
            Redirect::TooMany => write!(f, "more than {MAX_REDIRECTS} redirects"),
        }
    }
}

impl std::error::Error for Redirect {}

/// The check of one redirect from `from` (the URL that answered it) to `to`.
fn check_redirect(from: Option<&url::Url>, to: &url::Url, allow: &AllowList) -> Option<Redirect> {
    if from.is_some_and(|f| f.scheme() == "https") && to.scheme() != "https" {
        return Some(Redirect::Downgrade(redact(to.as_str())));
    }
    allow
        .refusal(to.as_str())
        .map(|why| Redirect::NotAllowed(redact(to.as_str()), why))
}

/// The client's redirect policy: `check_redirect` for each hop, at most
/// `MAX_REDIRECTS` of them.
fn redirect_policy(allow: AllowList) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let refused = if attempt.previous().len() > MAX_REDIRECTS {
            Some(Redirect::TooMany)
        } else {
            check_redirect(attempt.previous().last(), attempt.url(), &allow)
        };
        match refused {
            Some(r) => attempt.error(r),
            None => attempt.follow(),
        }
    })
}

/// The proxy for a request, as Go's net/http reads the environment: `HTTPS_PROXY`
/// for https, `HTTP_PROXY` for http (upper case first, then lower case), none for
/// `localhost` and loopback addresses or a host matched by `NO_PROXY`.
fn proxy_for(url: &str, env: Env) -> Option<String> {
    // Host and port as the client will see them: it parses the URL with `url` too.
    let parsed = url::Url::parse(url).ok()?;
    let scheme = parsed.scheme();
    let port = parsed.port_or_known_default()?;
    let host = match parsed.host()? {
        url::Host::Domain(d) => d.to_string(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => a.to_string(),
    };
    let get = |a: &str, b: &str| {
        env(a)
            .or_else(|| env(b))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let proxy = match scheme {
        "https" => get("HTTPS_PROXY", "https_proxy")?,
        "http" => get("HTTP_PROXY", "http_proxy")?,
        _ => return None,
    };
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

/// Describes a client error without the URL it was about (it may be presigned): the
/// error and its causes, `: `-separated.
fn describe(e: &reqwest::Error) -> String {
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_redirect() {
        "redirect failed".to_string()
    } else if e.is_builder() {
        "invalid URL".to_string()
    } else {
        "request failed".to_string()
    };
    push_causes(&mut msg, std::error::Error::source(e));
    msg
}

/// Appends `: CAUSE` for `first` and each error below it (repeats left out).
fn push_causes(msg: &mut String, first: Option<&(dyn std::error::Error + 'static)>) {
    let mut source = first;
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = cause.source();
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

/// A GET of a source, built and not yet sent: `fetch` sends it (`send`) on the
/// thread that reads its body.
pub(crate) struct Request {
    label: String,
    deadline: Option<(Instant, Duration)>,
    inner: reqwest::blocking::RequestBuilder,
}

/// Builds the GET of `url` (which may be a presigned URL: never shown), with request
/// headers (`gcs`: `Authorization: Bearer ...`, a secret never shown: errors describe
/// the failure, never the request), the time left before the deadline, and the
/// redirect policy of `allow`; `label` is named in every error.
pub(crate) fn request(
    label: &str,
    url: &str,
    headers: &[(&str, &str)],
    deadline: Option<(Instant, Duration)>,
    allow: &AllowList,
    env: Env,
) -> Result<Request> {
    let left = remaining(label, deadline)?;
    let agent =
        agent(proxy_for(url, env), CONNECT_TIMEOUT, allow).map_err(|m| Error::fetch(label, m))?;
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(left) = left {
        req = req.timeout(left);
    }
    Ok(Request {
        label: label.to_string(),
        deadline,
        inner: req,
    })
}

impl Request {
    /// Sends the request and waits for the answer's head (blocking). Non-2xx is
    /// `Error::HttpStatus` with the status (and S3's error code); a redirect refused
    /// is `Error::Refused`.
    pub(crate) fn send(self) -> Result<Body> {
        let Request {
            label,
            deadline,
            inner,
        } = self;
        let label = label.as_str();
        let resp = inner.send().map_err(|e| {
            // Past the deadline, whatever the client says, it is the deadline.
            if let Err(late) = remaining(label, deadline) {
                return late;
            }
            match redirect_refusal(&e) {
                Some(Redirect::TooMany) => Error::Fetch {
                    url: label.to_string(),
                    msg: Redirect::TooMany.to_string(),
                    source: Some(e.into()),
                },
                Some(r) => Error::Refused {
                    url: label.to_string(),
                    msg: r.to_string(),
                },
                None => Error::Fetch {
                    url: label.to_string(),
                    msg: describe(&e),
                    source: Some(e.into()),
                },
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(label, resp));
        }
        let len = resp.content_length();
        // A range request's answer (206) says what it covers; a 200 is the whole body.
        let served = if status.as_u16() == 206 {
            let header = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            Some(Served::parse(header).ok_or_else(|| {
                Error::fetch(
                    label,
                    format!("206 Partial Content with an unreadable Content-Range {header:?}"),
                )
            })?)
        } else {
            None
        };
        Ok(Body {
            reader: Box::new(Exact {
                inner: resp,
                expected: len,
                got: 0,
            }),
            len,
            served,
        })
    }
}

/// The redirect refusal a client error carries, if any.
fn redirect_refusal(e: &reqwest::Error) -> Option<Redirect> {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(r) = cause.downcast_ref::<Redirect>() {
            return Some(r.clone());
        }
        source = cause.source();
    }
    None
}

/// `Error::HttpStatus` of a non-2xx answer: its reason, S3's or GCS's own message, a
/// region hint.
fn status_error(label: &str, resp: reqwest::blocking::Response) -> Error {
    let status = resp.status();
    let region = resp
        .headers()
        .get("x-amz-bucket-region")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut text = String::new();
    let _ = resp.take(64 * 1024).read_to_string(&mut text);
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
    } else if let Some(m) = json_error_message(&text) {
        // GCS's JSON API: `{"error": {"code": 403, "message": "..."}}`.
        detail.push_str(&format!(" ({m})"));
    }
    if let Some(r) = region {
        detail.push_str(&format!("; the bucket is in region {r} (set AWS_REGION)"));
    }
    Error::HttpStatus {
        url: label.to_string(),
        status: status.as_u16(),
        detail,
    }
}

/// A response body being read, and its length when the server said.
pub(crate) struct Body {
    pub(crate) reader: Box<dyn Read + Send>,
    pub(crate) len: Option<u64>,
    /// The part of the resource a `206 Partial Content` answer holds (its
    /// `Content-Range`); `None`: the whole body (a `200`).
    pub(crate) served: Option<Served>,
}

/// What a range request's answer holds: bytes `start..=end` of a resource of `total`
/// bytes (`None` when the server wrote `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) total: Option<u64>,
}

impl Served {
    /// `bytes START-END/TOTAL` (RFC 9110 §14.4), TOTAL possibly `*`.
    pub(crate) fn parse(header: &str) -> Option<Served> {
        let rest = header.trim().strip_prefix("bytes")?.trim_start();
        let (span, total) = rest.split_once('/')?;
        let (start, end) = span.trim().split_once('-')?;
        // Digits only (`u64::from_str` would take a `+`); too large is refused.
        let num = |t: &str| {
            t.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| t.parse::<u64>().ok())
                .flatten()
        };
        let (start, end) = (num(start)?, num(end)?);
        let total = match total.trim() {
            "*" => None,
            t => Some(num(t)?),
        };
        (start <= end && total.is_none_or(|t| end < t)).then_some(Served { start, end, total })
    }
}

/// The text of the first `<tag>` of a small XML document (S3's error body), cut short.
fn xml_tag(text: &str, tag: &str) -> Option<String> {
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    let v: String = text[start..end].chars().take(200).collect();
    Some(v.trim().to_string()).filter(|v| !v.is_empty())
}

/// The `error.message` of a JSON error body (GCS), cut short.
fn json_error_message(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let m: String = v["error"]["message"].as_str()?.chars().take(200).collect();
    Some(m.trim().to_string()).filter(|m| !m.is_empty())
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
            // The client's own words are generic ("response body error"): its
            // causes say what happened (the connection closed early, a timeout).
            let mut what = e.to_string();
            if let Some(inner) = e.get_ref() {
                push_causes(&mut what, inner.source());
            }
            io::Error::new(e.kind(), format!("{what} after {}{of} bytes", self.got))
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

/// A small request that failed: `describe`'s words (never the request, which may hold
/// a secret) and the client's own error, kept as the source.
#[derive(Debug)]
pub(crate) struct Failed {
    msg: String,
    source: Option<Cause>,
}

impl Failed {
    fn new(msg: String) -> Failed {
        Failed { msg, source: None }
    }
    fn from_client(e: reqwest::Error) -> Failed {
        Failed {
            msg: describe(&e),
            source: Some(e.into()),
        }
    }
    fn from_io(e: io::Error) -> Failed {
        Failed {
            msg: e.to_string(),
            source: Some(e.into()),
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
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
) -> std::result::Result<(u16, String), Failed> {
    let agent = agent(None, connect, &AllowList::default()).map_err(Failed::new)?;
    let mut req = match method {
        Method::Get => agent.get(url),
        Method::Put => agent.put(url),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    // The connection within `connect` (the client's), the whole request within `total`.
    let resp = req.timeout(total).send().map_err(Failed::from_client)?;
    let status = resp.status().as_u16();
    let mut body = String::new();
    resp.take(64 * 1024)
        .read_to_string(&mut body)
        .map_err(Failed::from_io)?;
    Ok((status, body))
}

/// A POST of a form to a token endpoint for `gcs` (through the proxy its URL calls
/// for, like a source), body up to 64 KiB. The form holds secrets: errors never show
/// the request.
pub(crate) fn form_post(
    url: &str,
    form: &str,
    total: Duration,
    env: Env,
) -> std::result::Result<(u16, String), Failed> {
    let agent = agent(
        proxy_for(url, env),
        CONNECT_TIMEOUT.min(total),
        &AllowList::default(),
    )
    .map_err(Failed::new)?;
    let resp = agent
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .timeout(total)
        .send()
        .map_err(Failed::from_client)?;
    let status = resp.status().as_u16();
    let mut body = String::new();
    resp.take(64 * 1024)
        .read_to_string(&mut body)
        .map_err(Failed::from_io)?;
    Ok((status, body))
}

/// The HTTP methods `metadata_request` knows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Method {
    Get,
    Put,
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn redirects_are_checked_hop_by_hop() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        let none = AllowList::default();
        let https = u("https://a.example/m.yml");
        // https → http is refused whatever the list; http → https, https → https not.
        assert_eq!(
            check_redirect(Some(&https), &u("http://a.example/m.yml?sig=x"), &none),
            Some(Redirect::Downgrade(
                "http://a.example/m.yml?REDACTED".to_string()
            ))
        );
        assert_eq!(
            check_redirect(Some(&u("http://a/")), &u("https://b/"), &none),
            None
        );
        assert_eq!(check_redirect(Some(&https), &u("https://b/"), &none), None);
        // Every target against --allow-url.
        let allow = AllowList::new(&["https://a.example/".to_string()]).unwrap();
        assert_eq!(
            check_redirect(Some(&https), &u("https://a.example/x"), &allow),
            None
        );
        let r = check_redirect(Some(&https), &u("https://u:p@evil.example/x"), &allow);
        let Some(Redirect::NotAllowed(to, _)) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(to, "https://u:REDACTED@evil.example/x");
        assert!(r.unwrap().to_string().contains("refused by --allow-url"));
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
        let gcs =
            r#"{"error":{"code":403,"message":"a@b does not have storage.objects.get access"}}"#;
        assert_eq!(
            json_error_message(gcs).as_deref(),
            Some("a@b does not have storage.objects.get access")
        );
        assert_eq!(json_error_message("{}"), None);
    }
}
