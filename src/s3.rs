//! S3 sources (SPEC §8): `s3://bucket/key` → a SigV4-presigned `https://` URL (or one
//! on an S3-compatible endpoint) that `fetch` GETs with its one HTTP client. This file
//! owns the region, the endpoint and the AWS credential chain: environment, shared
//! `credentials` / `config` files, ECS container credentials, EC2 IMDSv2.
//!
//! It never puts a secret or a presigned URL in a log line or an error (errors name the
//! `s3://` URL as the user wrote it), and it does no network I/O of its own: the ECS
//! and EC2 metadata endpoints are asked through `http::metadata_request`.
//!
//! The key is the text after `bucket/`, byte for byte: nothing is percent-decoded
//! (`s3://b/a%20b` names the key `a%20b`, `+` stays `+`), as the AWS CLI reads it and
//! as `file://` paths are read here. rusty-s3 percent-encodes it for the request.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusty_s3::{Bucket, S3Action, UrlStyle};

use crate::error::{CredError, Error, Result};
use crate::http::{self, Method};
use crate::logln;
use crate::urls::redact;
use crate::Env;

/// Cached remote credentials are used again only while they have this much life left.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// The ECS task-role endpoint of `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
const ECS_HOST: &str = "http://169.254.170.2";
/// The EC2 instance metadata service.
const IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// Short, so that a host that is not on EC2 does not hang on the last link of the chain.
const IMDS_CONNECT: Duration = Duration::from_secs(1);
const IMDS_TOTAL: Duration = Duration::from_secs(3);
const ECS_CONNECT: Duration = Duration::from_secs(2);
const ECS_TOTAL: Duration = Duration::from_secs(5);

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub bucket: String,
    pub key: String,
}

/// Splits `s3://bucket/key`. The key is kept verbatim (see the module doc).
pub(crate) fn parse_url(url: &str) -> std::result::Result<Location, String> {
    let (bucket, key) = crate::bucket_url::split(
        url,
        &crate::bucket_url::Form {
            scheme: "s3",
            other_scheme: "not an s3:// URL",
            name: "object key",
            shape: "s3://bucket/key",
        },
    )?;
    // A presigned URL is a URL path: `.`/`..` segments would be folded away and a
    // leading `/` would replace the bucket, so such keys cannot be asked for safely.
    if key.starts_with('/') || key.split('/').any(|s| s == "." || s == "..") {
        return Err(format!(
            "object key {key:?} starts with '/' or has a '.' or '..' segment; such keys are not supported"
        ));
    }
    Ok(Location {
        bucket: bucket.to_string(),
        key: key.to_string(),
    })
}

/// AWS credentials. `Debug` shows neither the secret nor the token.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub access_key: String,
    secret: String,
    token: Option<String>,
    pub expires: Option<DateTime<Utc>>,
    /// Where they came from, for the log: "environment", "EC2 instance role web", ...
    pub source: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret", &"<redacted>")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("expires", &self.expires)
            .field("source", &self.source)
            .finish()
    }
}

/// One INI section: lower-case keys → values.
pub(crate) type Section = BTreeMap<String, String>;

/// Parses an AWS shared `credentials` / `config` file. Sections `[name]` (inner
/// whitespace collapsed, so `[ profile  x ]` is `profile x`), `key = value`, comment
/// lines starting with `#` or `;`. An indented line after a key with an empty value
/// belongs to that key's nested block (`s3 =` / `  addressing_style = path`) and is
/// skipped, so it cannot overwrite a top-level key. Later keys win.
pub(crate) fn parse_ini(text: &str) -> BTreeMap<String, Section> {
    let mut out: BTreeMap<String, Section> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_nested = false;
    for line in text.trim_start_matches('\u{feff}').lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let indented = line.starts_with([' ', '\t']);
        if let Some(inner) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            let name = inner.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
            in_nested = false;
            continue;
        }
        if indented && in_nested {
            continue;
        }
        let (Some(section), Some((k, v))) = (&current, trimmed.split_once('=')) else {
            continue;
        };
        let value = v.trim();
        in_nested = value.is_empty();
        if let Some(s) = out.get_mut(section) {
            s.insert(k.trim().to_ascii_lowercase(), value.to_string());
        }
    }
    out
}

/// The selected profile of the shared files, as read from disk.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub profile: String,
    pub credentials_path: Option<PathBuf>,
    pub config_path: Option<PathBuf>,
    /// `[profile]` of the credentials file.
    pub credentials: Option<Section>,
    /// `[profile x]` (or `[default]`) of the config file.
    pub config: Option<Section>,
    /// Problems worth telling when no credentials are found (unreadable file, ...).
    pub notes: Vec<String>,
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `~/x` → `$HOME/x`, as the AWS tools expand the file variables.
fn expand_home(path: &str, env: Env) -> Option<PathBuf> {
    match path.strip_prefix("~/") {
        Some(rest) => nonempty(env("HOME")).map(|h| PathBuf::from(h).join(rest)),
        None => Some(PathBuf::from(path)),
    }
}

impl Shared {
    /// Reads the profile named by `AWS_PROFILE` / `AWS_DEFAULT_PROFILE` (else
    /// `default`) from the files named by `AWS_SHARED_CREDENTIALS_FILE` /
    /// `AWS_CONFIG_FILE` (else `~/.aws/credentials`, `~/.aws/config`).
    pub fn load(env: Env) -> Shared {
        let profile = nonempty(env("AWS_PROFILE"))
            .or_else(|| nonempty(env("AWS_DEFAULT_PROFILE")))
            .unwrap_or_else(|| "default".into());
        let path = |var: &str, default: &str| match nonempty(env(var)) {
            Some(p) => expand_home(&p, env),
            None => expand_home(default, env),
        };
        let mut shared = Shared {
            credentials_path: path("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
            config_path: path("AWS_CONFIG_FILE", "~/.aws/config"),
            profile,
            ..Shared::default()
        };
        if let Some(p) = shared.credentials_path.clone() {
            if let Some(mut sections) = shared.read(&p) {
                shared.credentials = sections.remove(&shared.profile);
            }
        }
        if let Some(p) = shared.config_path.clone() {
            if let Some(sections) = shared.read(&p) {
                let wanted = format!("profile {}", shared.profile);
                let mut found = None;
                for (name, section) in sections {
                    // `[profile x]` is the form; `[default]` is also accepted as is.
                    if name == wanted || (name == "default" && shared.profile == "default") {
                        found.get_or_insert_with(Section::new).extend(section);
                    }
                }
                shared.config = found;
            }
        }
        shared
    }

    fn read(&mut self, path: &std::path::Path) -> Option<BTreeMap<String, Section>> {
        match std::fs::read(path) {
            Ok(bytes) => Some(parse_ini(&String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                self.notes
                    .push(format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        [&self.credentials, &self.config]
            .into_iter()
            .flatten()
            .find_map(|s| s.get(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// The region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, else us-east-1.
pub(crate) fn region(env: Env, shared: &Shared) -> String {
    nonempty(env("AWS_REGION"))
        .or_else(|| nonempty(env("AWS_DEFAULT_REGION")))
        .or_else(|| {
            shared
                .config
                .as_ref()
                .and_then(|s| nonempty(s.get("region").cloned()))
        })
        .unwrap_or_else(|| "us-east-1".into())
}

/// The endpoint and addressing style. `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` name an
/// S3-compatible store, addressed path-style; otherwise AWS, virtual-host style (path
/// style for bucket names that cannot be a DNS label, e.g. with dots).
pub(crate) fn endpoint(
    env: Env,
    region: &str,
    bucket: &str,
) -> std::result::Result<(url::Url, UrlStyle), String> {
    for var in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"] {
        if let Some(text) = nonempty(env(var)) {
            let mut u = url::Url::parse(&text)
                .map_err(|e| format!("{var}={:?} is not a URL: {e}", redact(&text)))?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(format!(
                    "{var}={:?} is not an http(s) URL with a host",
                    redact(&text)
                ));
            }
            if !u.path().ends_with('/') {
                let p = format!("{}/", u.path());
                u.set_path(&p);
            }
            return Ok((u, UrlStyle::Path));
        }
    }
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("invalid region {region:?}"));
    }
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    let u = url::Url::parse(&format!("https://s3.{region}.{domain}/"))
        .map_err(|e| format!("region {region:?}: {e}"))?;
    let dns_label = bucket.len() <= 63
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let style = if dns_label {
        UrlStyle::VirtualHost
    } else {
        UrlStyle::Path
    };
    Ok((u, style))
}

/// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`); the Go SDK's
/// older `AWS_ACCESS_KEY` / `AWS_SECRET_KEY` spellings are accepted too.
fn from_env(env: Env) -> std::result::Result<Option<Credentials>, CredError> {
    let key = nonempty(env("AWS_ACCESS_KEY_ID")).or_else(|| nonempty(env("AWS_ACCESS_KEY")));
    let secret = nonempty(env("AWS_SECRET_ACCESS_KEY")).or_else(|| nonempty(env("AWS_SECRET_KEY")));
    match (key, secret) {
        (Some(access_key), Some(secret)) => Ok(Some(Credentials {
            access_key,
            secret,
            token: nonempty(env("AWS_SESSION_TOKEN")),
            expires: None,
            source: "environment".into(),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(CredError::config(
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
        )),
        (None, Some(_)) => Err(CredError::config(
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
        )),
    }
}

/// Keys of the profile: the credentials file wins over the config file (whole
/// sections, never a key from one and the secret from the other).
fn from_shared(shared: &Shared) -> Option<Credentials> {
    let sources = [
        (&shared.credentials, &shared.credentials_path),
        (&shared.config, &shared.config_path),
    ];
    for (section, path) in sources {
        let Some(s) = section else { continue };
        let key = nonempty(s.get("aws_access_key_id").cloned());
        let secret = nonempty(s.get("aws_secret_access_key").cloned());
        if let (Some(access_key), Some(secret)) = (key, secret) {
            let file = path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Some(Credentials {
                access_key,
                secret,
                token: nonempty(s.get("aws_session_token").cloned()),
                expires: None,
                source: format!("profile {:?} in {file}", shared.profile),
            });
        }
    }
    None
}

/// The JSON both the ECS and the EC2 endpoints answer with.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MetadataCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<String>,
    code: Option<String>,
}

fn parse_metadata_credentials(
    body: &str,
    source: String,
) -> std::result::Result<Credentials, CredError> {
    let m: MetadataCredentials = serde_json::from_str(body)
        .map_err(|e| CredError::config(format!("{source}: unexpected answer: {e}")).because(e))?;
    if let Some(code) = m.code.filter(|c| c != "Success") {
        return Err(CredError::transient(format!("{source}: Code {code}")));
    }
    let expires = match m.expiration.as_deref() {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    CredError::config(format!("{source}: Expiration {t:?}: {e}")).because(e)
                })?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    Ok(Credentials {
        access_key: m.access_key_id,
        secret: m.secret_access_key,
        token: m.token.filter(|t| !t.is_empty()),
        expires,
        source,
    })
}

/// The ECS endpoint, when the environment names one. `_RELATIVE_URI` wins; a
/// `_FULL_URI` over plain http must point at this host or the ECS/EKS agent addresses
/// (as the AWS SDKs require), so that credentials are never sent elsewhere in clear.
fn ecs_uri(env: Env) -> std::result::Result<Option<String>, CredError> {
    if let Some(rel) = nonempty(env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")) {
        let sep = if rel.starts_with('/') { "" } else { "/" };
        return Ok(Some(format!("{ECS_HOST}{sep}{rel}")));
    }
    let Some(full) = nonempty(env("AWS_CONTAINER_CREDENTIALS_FULL_URI")) else {
        return Ok(None);
    };
    let u = url::Url::parse(&full).map_err(|e| {
        CredError::config(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI {:?}: {e}",
            redact(&full)
        ))
        .because(e)
    })?;
    let allowed = match (u.scheme(), u.host()) {
        ("https", Some(_)) => true,
        ("http", Some(url::Host::Ipv4(ip))) => {
            ip.is_loopback()
                || ip.octets() == [169, 254, 170, 2]
                || ip.octets() == [169, 254, 170, 23]
        }
        ("http", Some(url::Host::Ipv6(ip))) => {
            ip.is_loopback() || ip.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23]
        }
        ("http", Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case("localhost"),
        _ => false,
    };
    if !allowed {
        return Err(CredError::config(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI {full:?} must be https, or http to a loopback or ECS/EKS agent address"
        )));
    }
    Ok(Some(full))
}

fn from_ecs(env: Env, uri: &str) -> std::result::Result<Credentials, CredError> {
    let source = "ECS container credentials".to_string();
    let token = match nonempty(env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")) {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| {
                    CredError::config(format!("{source}: token file {path}: {e}")).because(e)
                })?
                .trim()
                .to_string(),
        ),
        None => nonempty(env("AWS_CONTAINER_AUTHORIZATION_TOKEN")),
    };
    let mut headers = Vec::new();
    if let Some(t) = &token {
        headers.push(("Authorization", t.as_str()));
    }
    let (status, body) = http::metadata_request(Method::Get, uri, &headers, ECS_CONNECT, ECS_TOTAL)
        .map_err(|e| CredError::transient(format!("{source} {}: {e}", redact(uri))).because(e))?;
    if status != 200 {
        return Err(status_error(&format!("{source} {}", redact(uri)), status));
    }
    parse_metadata_credentials(&body, source)
}

fn status_error(what: &str, status: u16) -> CredError {
    let msg = format!("{what}: HTTP {status}");
    if status >= 500 {
        CredError::transient(msg)
    } else {
        CredError::config(msg)
    }
}

/// EC2 instance role through IMDSv2: a session token (PUT), the role name, its keys.
fn from_imds(env: Env) -> std::result::Result<Credentials, CredError> {
    let base =
        nonempty(env("AWS_EC2_METADATA_SERVICE_ENDPOINT")).unwrap_or_else(|| IMDS_ENDPOINT.into());
    let base = base.trim_end_matches('/');
    let what = format!("EC2 instance metadata {base}");
    let call = |method, path: &str, headers: &[(&str, &str)]| {
        let url = format!("{base}{path}");
        match http::metadata_request(method, &url, headers, IMDS_CONNECT, IMDS_TOTAL) {
            Ok((200, body)) => Ok(body),
            Ok((status, _)) => Err(status_error(&format!("{what}: {path}"), status)),
            // Most often: not on EC2. Not worth another attempt.
            Err(e) => Err(CredError::config(format!("{what}: {e}")).because(e)),
        }
    };
    let token = call(
        Method::Put,
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
    )?;
    let token = token.trim();
    let auth = [("X-aws-ec2-metadata-token", token)];
    let roles = call(
        Method::Get,
        "/latest/meta-data/iam/security-credentials/",
        &auth,
    )?;
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| CredError::config(format!("{what}: the instance has no IAM role")))?
        .to_string();
    if role.contains(['/', '?', '#']) {
        return Err(CredError::config(format!("{what}: odd role name {role:?}")));
    }
    let body = call(
        Method::Get,
        &format!("/latest/meta-data/iam/security-credentials/{role}"),
        &auth,
    )?;
    parse_metadata_credentials(&body, format!("EC2 instance role {role}"))
}

fn truthy(v: Option<String>) -> bool {
    nonempty(v).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Profiles that get their keys in ways this tool does not implement: said in the
/// "no credentials" error so that the operator knows why the profile was passed over.
fn unsupported_profile_keys(shared: &Shared) -> Vec<&'static str> {
    [
        "role_arn",
        "credential_process",
        "sso_session",
        "sso_start_url",
        "web_identity_token_file",
    ]
    .into_iter()
    .filter(|k| shared.get(k).is_some())
    .collect()
}

/// The credential chain, first found wins: environment, shared files, ECS, EC2 IMDSv2.
/// `cache` keeps remote (expiring) credentials for a later attempt of the same run;
/// they are used again only while they have more than five minutes left.
pub(crate) fn resolve(
    env: Env,
    shared: &Shared,
    cache: Option<&Mutex<Option<Credentials>>>,
) -> std::result::Result<Credentials, CredError> {
    if let Some(c) = from_env(env)? {
        return Ok(c);
    }
    if let Some(c) = from_shared(shared) {
        return Ok(c);
    }
    if let Some(cache) = cache {
        // A poisoned cache only ever holds a whole `Option`, so it is still usable.
        let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(c) = cached {
            let fresh = c.expires.is_none_or(|e| {
                e - chrono::Duration::from_std(REFRESH_BEFORE_EXPIRY).unwrap_or_default()
                    > Utc::now()
            });
            if fresh {
                return Ok(c);
            }
        }
    }
    let mut tried = vec![
        "environment".to_string(),
        format!(
            "profile {:?} in {} and {}",
            shared.profile,
            shown(&shared.credentials_path),
            shown(&shared.config_path)
        ),
    ];
    let remote = if let Some(uri) = ecs_uri(env)? {
        Some(from_ecs(env, &uri)?)
    } else if truthy(env("AWS_EC2_METADATA_DISABLED")) {
        tried.push("EC2 instance metadata (disabled by AWS_EC2_METADATA_DISABLED)".into());
        None
    } else {
        match from_imds(env) {
            Ok(c) => Some(c),
            // The service is there but failing (5xx): a later attempt may do better.
            Err(e) if e.retryable => return Err(e),
            Err(e) => {
                tried.push(e.msg);
                None
            }
        }
    };
    if let Some(c) = remote {
        if c.expires.is_some_and(|e| e <= Utc::now()) {
            return Err(CredError::transient(format!(
                "{}: the credentials have already expired",
                c.source
            )));
        }
        if let Some(cache) = cache {
            *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        }
        return Ok(c);
    }
    let mut msg = format!("no AWS credentials found (tried: {})", tried.join("; "));
    let unsupported = unsupported_profile_keys(shared);
    if !unsupported.is_empty() {
        msg.push_str(&format!(
            "; profile {:?} uses {} which stretcher does not support",
            shared.profile,
            unsupported.join(", ")
        ));
    }
    for n in &shared.notes {
        msg.push_str("; ");
        msg.push_str(n);
    }
    Err(CredError::config(msg))
}

fn shown(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(no HOME)".into())
}

/// Remote credentials of this process, kept between attempts.
static CACHE: Mutex<Option<Credentials>> = Mutex::new(None);

/// A presigned GET URL for `url` (`s3://bucket/key`), valid for `expires_in`.
/// The result is a secret: callers must not log it or put it in an error.
pub(crate) fn presign(url: &str, env: Env, expires_in: Duration) -> Result<String> {
    let fail = |msg: String| Error::S3 {
        url: url.to_string(),
        msg,
        source: None,
    };
    let loc = parse_url(url).map_err(fail)?;
    let shared = Shared::load(env);
    let region = region(env, &shared);
    let (endpoint, style) = endpoint(env, &region, &loc.bucket).map_err(fail)?;
    // Whether a failed credential endpoint is worth another attempt is
    // `Error::is_retryable`'s call, not this variant's.
    let creds = resolve(env, &shared, Some(&CACHE)).map_err(|e| Error::S3 {
        url: url.to_string(),
        msg: e.msg,
        source: e.source,
    })?;
    let host = endpoint.host_str().unwrap_or_default().to_string();
    let bucket = Bucket::new(endpoint, style, loc.bucket.clone(), region.clone())
        .map_err(|e| fail(format!("bucket {:?}: {e}", loc.bucket)))?;
    let rc = match &creds.token {
        Some(t) => rusty_s3::Credentials::new_with_token(&creds.access_key, &creds.secret, t),
        None => rusty_s3::Credentials::new(&creds.access_key, &creds.secret),
    };
    let signed = bucket.get_object(Some(&rc), &loc.key).sign(expires_in);
    logln!(
        "S3 {}: region {region}, endpoint {host}, credentials from {}",
        redact(url),
        creds.source
    );
    Ok(signed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn urls_split_into_bucket_and_verbatim_key() {
        let l = parse_url("s3://bucket/dir/app.tar.gz").unwrap();
        assert_eq!(l.bucket, "bucket");
        assert_eq!(l.key, "dir/app.tar.gz");
        let l = parse_url("s3://b/my app+v1 ü%20.tgz").unwrap();
        assert_eq!(l.key, "my app+v1 ü%20.tgz");
        assert_eq!(parse_url("S3://b/k").unwrap().bucket, "b");
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://bu cket/k",
            "s3://b//k",
            "s3://b/a/../k",
            "s3://b/./k",
            "http://b/k",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ini_profiles_and_nested_blocks() {
        let text = "\u{feff}# comment\n[default]\nregion = eu-west-1\n\n[ profile  dev ]\n\
                    aws_access_key_id=AK\n; another\ns3 =\n  region = nested\n  x = y\n\
                    aws_secret_access_key = S E\n[dev]\nregion=us-west-2\n[default]\noutput = json\n";
        let ini = parse_ini(text);
        assert_eq!(ini["default"]["region"], "eu-west-1");
        assert_eq!(ini["default"]["output"], "json");
        let dev = &ini["profile dev"];
        assert_eq!(dev["aws_access_key_id"], "AK");
        assert_eq!(dev["aws_secret_access_key"], "S E");
        assert_eq!(dev["s3"], "");
        assert!(!dev.contains_key("region"), "{dev:?}");
        assert_eq!(ini["dev"]["region"], "us-west-2");
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new(credentials: &str, config: &str) -> Files {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("credentials"), credentials).unwrap();
            std::fs::write(dir.path().join("config"), config).unwrap();
            Files { dir }
        }
        fn vars(&self) -> Vec<(&'static str, String)> {
            vec![
                (
                    "AWS_SHARED_CREDENTIALS_FILE",
                    self.dir.path().join("credentials").display().to_string(),
                ),
                (
                    "AWS_CONFIG_FILE",
                    self.dir.path().join("config").display().to_string(),
                ),
                ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ]
        }
    }

    fn chain(files: &Files, extra: &[(&str, &str)]) -> std::result::Result<Credentials, CredError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        let vars = files.vars();
        for (k, v) in &vars {
            pairs.push((k, v));
        }
        pairs.extend_from_slice(extra);
        let env = env_of(&pairs);
        let shared = Shared::load(&env);
        resolve(&env, &shared, None)
    }

    const CREDS: &str = "[default]\naws_access_key_id = FILEDEFAULT\naws_secret_access_key = s1\n\
                         [prod]\naws_access_key_id = FILEPROD\naws_secret_access_key = s2\naws_session_token = tok\n";
    const CONFIG: &str = "[default]\nregion = eu-central-1\n[profile prod]\nregion = ap-northeast-1\n\
                          aws_access_key_id = CONFIGPROD\naws_secret_access_key = s3\n\
                          [profile cfgonly]\naws_access_key_id = CFGONLY\naws_secret_access_key = s4\n\
                          [profile role]\nrole_arn = arn:aws:iam::1:role/x\n";

    #[test]
    fn environment_wins_over_files() {
        let f = Files::new(CREDS, CONFIG);
        let c = chain(
            &f,
            &[
                ("AWS_ACCESS_KEY_ID", "ENVKEY"),
                ("AWS_SECRET_ACCESS_KEY", "envsecret"),
                ("AWS_SESSION_TOKEN", "envtoken"),
                ("AWS_PROFILE", "prod"),
            ],
        )
        .unwrap();
        assert_eq!(c.access_key, "ENVKEY");
        assert_eq!(c.token.as_deref(), Some("envtoken"));
        assert_eq!(c.source, "environment");
        // Go SDK v1 spellings.
        let c = chain(&f, &[("AWS_ACCESS_KEY", "OLD"), ("AWS_SECRET_KEY", "x")]).unwrap();
        assert_eq!(c.access_key, "OLD");
        // Half a pair is an error, not a silent fall-through.
        let e = chain(&f, &[("AWS_ACCESS_KEY_ID", "ONLY")]).unwrap_err();
        assert!(e.msg.contains("AWS_SECRET_ACCESS_KEY"), "{}", e.msg);
        assert!(!e.retryable);
    }

    #[test]
    fn profiles_from_files() {
        let f = Files::new(CREDS, CONFIG);
        assert_eq!(chain(&f, &[]).unwrap().access_key, "FILEDEFAULT");
        // The credentials file wins over the config file for the same profile.
        let c = chain(&f, &[("AWS_PROFILE", "prod")]).unwrap();
        assert_eq!(c.access_key, "FILEPROD");
        assert_eq!(c.token.as_deref(), Some("tok"));
        assert!(c.source.contains("\"prod\""), "{}", c.source);
        // AWS_DEFAULT_PROFILE when AWS_PROFILE is unset; AWS_PROFILE first.
        let c = chain(&f, &[("AWS_DEFAULT_PROFILE", "cfgonly")]).unwrap();
        assert_eq!(c.access_key, "CFGONLY");
        let c = chain(
            &f,
            &[("AWS_PROFILE", "prod"), ("AWS_DEFAULT_PROFILE", "cfgonly")],
        )
        .unwrap();
        assert_eq!(c.access_key, "FILEPROD");
        // `[cfgonly]` without "profile" in the config file is not a profile.
        let f2 = Files::new(
            "",
            "[cfgonly]\naws_access_key_id = X\naws_secret_access_key = y\n",
        );
        assert!(chain(&f2, &[("AWS_PROFILE", "cfgonly")]).is_err());
    }

    #[test]
    fn no_credentials_says_where_it_looked() {
        let f = Files::new(CREDS, CONFIG);
        let e = chain(&f, &[("AWS_PROFILE", "role")]).unwrap_err();
        assert!(!e.retryable);
        assert!(e.msg.contains("no AWS credentials found"), "{}", e.msg);
        assert!(e.msg.contains("AWS_EC2_METADATA_DISABLED"), "{}", e.msg);
        assert!(e.msg.contains("role_arn"), "{}", e.msg);
        assert!(!e.msg.contains("s1") && !e.msg.contains("s2"), "{}", e.msg);
    }

    #[test]
    fn home_is_the_default_location() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(home.path().join(".aws/credentials"), CREDS).unwrap();
        std::fs::write(home.path().join(".aws/config"), CONFIG).unwrap();
        let h = home.path().display().to_string();
        let env = env_of(&[("HOME", &h), ("AWS_EC2_METADATA_DISABLED", "true")]);
        let shared = Shared::load(&env);
        assert_eq!(
            resolve(&env, &shared, None).unwrap().access_key,
            "FILEDEFAULT"
        );
        assert_eq!(region(&env, &shared), "eu-central-1");
        let env = env_of(&[("HOME", &h), ("AWS_CONFIG_FILE", "~/.aws/config")]);
        assert!(Shared::load(&env).config.is_some());
    }

    #[test]
    fn region_precedence() {
        let f = Files::new(CREDS, CONFIG);
        let vars = f.vars();
        let base: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let with = |extra: &[(&str, &str)]| {
            let mut p = base.clone();
            p.extend_from_slice(extra);
            let env = env_of(&p);
            let shared = Shared::load(&env);
            region(&env, &shared)
        };
        assert_eq!(with(&[]), "eu-central-1");
        assert_eq!(with(&[("AWS_PROFILE", "prod")]), "ap-northeast-1");
        assert_eq!(with(&[("AWS_PROFILE", "cfgonly")]), "us-east-1");
        assert_eq!(
            with(&[("AWS_DEFAULT_REGION", "sa-east-1"), ("AWS_PROFILE", "prod")]),
            "sa-east-1"
        );
        assert_eq!(
            with(&[
                ("AWS_REGION", "us-west-1"),
                ("AWS_DEFAULT_REGION", "sa-east-1")
            ]),
            "us-west-1"
        );
    }

    #[test]
    fn endpoints_and_styles() {
        let none = env_of(&[]);
        let (u, s) = endpoint(&none, "eu-west-1", "mybucket").unwrap();
        assert_eq!(u.as_str(), "https://s3.eu-west-1.amazonaws.com/");
        assert!(matches!(s, UrlStyle::VirtualHost));
        let (_, s) = endpoint(&none, "eu-west-1", "my.bucket").unwrap();
        assert!(matches!(s, UrlStyle::Path));
        let (u, _) = endpoint(&none, "cn-north-1", "b").unwrap();
        assert_eq!(u.host_str(), Some("s3.cn-north-1.amazonaws.com.cn"));
        assert!(endpoint(&none, "eu west", "b").is_err());
        let env = env_of(&[
            ("AWS_ENDPOINT_URL", "http://generic:1"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000/prefix"),
        ]);
        let (u, s) = endpoint(&env, "us-east-1", "b").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9000/prefix/");
        assert!(matches!(s, UrlStyle::Path));
        let env = env_of(&[("AWS_ENDPOINT_URL", "http://generic:1")]);
        assert_eq!(
            endpoint(&env, "x", "b").unwrap().0.as_str(),
            "http://generic:1/"
        );
        let env = env_of(&[("AWS_ENDPOINT_URL", "ftp://x")]);
        assert!(endpoint(&env, "x", "b").is_err());
    }

    #[test]
    fn presigned_keys_are_encoded_and_signed() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "topsecret"),
            ("AWS_SESSION_TOKEN", "sessiontok"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9/"),
            ("AWS_CONFIG_FILE", "/nonexistent/config"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
        ]);
        let signed = presign(
            "s3://bkt/dir/my app+1 ü%.tgz",
            &env,
            Duration::from_secs(900),
        )
        .unwrap();
        assert!(
            signed.starts_with("http://127.0.0.1:9/bkt/dir/my%20app%2B1%20%C3%BC%25.tgz?"),
            "{signed}"
        );
        assert!(signed.contains("X-Amz-Expires=900"), "{signed}");
        assert!(
            signed.contains("X-Amz-Security-Token=sessiontok"),
            "{signed}"
        );
        assert!(signed.contains("X-Amz-Signature="), "{signed}");
        assert!(!signed.contains("topsecret"));
    }

    #[test]
    fn ecs_full_uri_must_be_local_or_https() {
        let ok = |v: &str| ecs_uri(&env_of(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", v)]));
        assert!(ok("http://127.0.0.1:8080/creds").unwrap().is_some());
        assert!(ok("http://localhost/creds").unwrap().is_some());
        assert!(ok("http://169.254.170.23/v1/credentials")
            .unwrap()
            .is_some());
        assert!(ok("https://example.com/creds").unwrap().is_some());
        assert!(ok("http://example.com/creds").is_err());
        let rel = ecs_uri(&env_of(&[
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/x",
            ),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/"),
        ]))
        .unwrap();
        assert_eq!(
            rel.as_deref(),
            Some("http://169.254.170.2/v2/credentials/x")
        );
    }

    #[test]
    fn metadata_json_and_debug_redaction() {
        let c = parse_metadata_credentials(
            r#"{"Code":"Success","AccessKeyId":"ASIA1","SecretAccessKey":"sec","Token":"tok","Expiration":"2030-01-01T00:00:00Z"}"#,
            "test".into(),
        )
        .unwrap();
        assert_eq!(c.access_key, "ASIA1");
        assert_eq!(c.expires.unwrap().to_rfc3339(), "2030-01-01T00:00:00+00:00");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sec\"") && !dbg.contains("tok\""), "{dbg}");
        assert!(parse_metadata_credentials(
            r#"{"Code":"Failed","AccessKeyId":"a","SecretAccessKey":"b"}"#,
            "t".into()
        )
        .is_err());
    }

    #[test]
    fn cached_remote_credentials_are_reused_until_near_expiry() {
        let f = Files::new("", "");
        let vars = f.vars();
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let env = env_of(&pairs);
        let shared = Shared::load(&env);
        let cached = |mins: i64| Credentials {
            access_key: "CACHED".into(),
            secret: "s".into(),
            token: None,
            expires: Some(Utc::now() + chrono::Duration::minutes(mins)),
            source: "cache".into(),
        };
        let cache = Mutex::new(Some(cached(60)));
        assert_eq!(
            resolve(&env, &shared, Some(&cache)).unwrap().access_key,
            "CACHED"
        );
        // Within five minutes of expiry: not used again (IMDS is disabled here, so none).
        let cache = Mutex::new(Some(cached(4)));
        assert!(resolve(&env, &shared, Some(&cache)).is_err());
    }
}
