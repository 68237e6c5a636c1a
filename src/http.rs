//! The HTTP(S) client of the sources (SPEC §8): ureq with rustls (ring), the system's
//! CA store or `SSL_CERT_FILE`, bundled roots as fallback; proxies from
//! `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` as Go reads them; connect and read-silence
//! timeouts inside the caller's deadline; a body shorter than its `Content-Length` is an
//! error; S3's XML error codes in the message. Also the small direct requests `s3` makes
//! to credential endpoints (ECS, EC2 IMDS).
//!
//! Only `fetch` (the GET of a source) and `s3` (credential endpoints) call it. It never
//! names a presigned URL or a secret in an error: callers pass the URL as the user wrote
//! it as the label.

use std::io::{self, Read};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::fetch::Source;
use crate::logln;

/// Longest wait for a TCP connection (and TLS handshake), capped by the deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading a response before the attempt fails (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

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
pub(crate) fn http_get(
    label: &str,
    url: &str,
    deadline: Option<(Instant, Duration)>,
) -> Result<Source> {
    http_get_with(label, url, &[], deadline)
}

/// `http_get` with request headers (`gcs`: `Authorization: Bearer ...`, a secret
/// never shown: errors describe the failure, never the request).
pub(crate) fn http_get_with(
    label: &str,
    url: &str,
    headers: &[(&str, &str)],
    deadline: Option<(Instant, Duration)>,
) -> Result<Source> {
    let left = remaining(label, deadline)?;
    let env = |k: &str| std::env::var(k).ok();
    let fail = |msg: String| Error::Fetch {
        url: label.to_string(),
        msg,
    };
    let agent = agent(proxy_for(url, &env)).map_err(fail)?;
    let connect = left.map_or(CONNECT_TIMEOUT, |l| l.min(CONNECT_TIMEOUT));
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
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
        } else if let Some(m) = json_error_message(&text) {
            // GCS's JSON API: `{"error": {"code": 403, "message": "..."}}`.
            detail.push_str(&format!(" ({m})"));
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
    // Headers and timeouts are the same for both methods; only the send differs.
    fn prepare<B>(
        mut r: ureq::RequestBuilder<B>,
        headers: &[(&str, &str)],
        connect: Duration,
        total: Duration,
    ) -> ureq::RequestBuilder<B> {
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.config()
            .timeout_connect(Some(connect))
            .timeout_global(Some(total))
            .build()
    }
    let resp = match method {
        Method::Get => prepare(agent.get(url), headers, connect, total).call(),
        Method::Put => prepare(agent.put(url), headers, connect, total).send_empty(),
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

/// A POST of a form to a token endpoint for `gcs` (through the proxy its URL calls
/// for, like a source), body up to 64 KiB. The form holds secrets: errors never show
/// the request.
pub(crate) fn form_post(
    url: &str,
    form: &str,
    total: Duration,
) -> std::result::Result<(u16, String), String> {
    let env = |k: &str| std::env::var(k).ok();
    let agent = agent(proxy_for(url, &env))?;
    let resp = agent
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .config()
        .timeout_connect(Some(CONNECT_TIMEOUT.min(total)))
        .timeout_global(Some(total))
        .build()
        .send(form)
        .map_err(|e| describe(&e))?;
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
