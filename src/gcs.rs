//! Google Cloud Storage sources (SPEC §8): `gs://bucket/object` → a GET of the JSON API
//! media URL (`/storage/v1/b/BUCKET/o/OBJECT?alt=media`, served alike by Google and by
//! emulators) with `Authorization: Bearer TOKEN`, which `fetch` makes with its one HTTP
//! client. This file owns the URL, the endpoint (`STORAGE_EMULATOR_HOST`) and the
//! Application Default Credentials chain, first found:
//!
//! 1. `GOOGLE_OAUTH_ACCESS_TOKEN` (a token as is);
//! 2. the file named by `GOOGLE_APPLICATION_CREDENTIALS`;
//! 3. gcloud's `application_default_credentials.json` (in `$CLOUDSDK_CONFIG`, else
//!    `~/.config/gcloud`);
//! 4. the metadata server (`GCE_METADATA_HOST`, else 169.254.169.254; 1 s connect timeout).
//!
//! A credentials file is a `service_account` (an RS256-signed JWT assertion, signed by
//! ring, exchanged at the file's `token_uri`) or an `authorized_user` (a refresh-token
//! grant). Tokens are kept for the run and fetched again when less than five minutes
//! of their life is left.
//!
//! The object name is the text after `bucket/`, byte for byte: nothing is decoded
//! (`gs://b/a%20b` names `a%20b`, `+` stays `+`); on the wire every byte but the
//! unreserved ones is percent-encoded, `/` included, as the JSON API requires.
//!
//! Never puts a token, a key, an assertion or a refresh token in a log line or an error:
//! errors name the `gs://` URL as the user wrote it. No network I/O of its own: token
//! endpoints and the metadata server are asked through `http`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::error::{CredError, Error, Result};
use crate::http;
use crate::logln;
use crate::urls::redact;
use crate::Env;

/// Google's public endpoint for object requests.
const STORAGE_API: &str = "https://storage.googleapis.com";
/// Where a credentials file without `token_uri` exchanges its grant.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Read-only access to objects: all a deploy needs.
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
/// The GCE metadata server (`GCE_METADATA_HOST` moves it).
const METADATA_HOST: &str = "169.254.169.254";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Short, so that a host that is not on Google Cloud is not slowed down.
const METADATA_CONNECT: Duration = Duration::from_secs(1);
const METADATA_TOTAL: Duration = Duration::from_secs(5);
/// A token endpoint's whole exchange.
const TOKEN_TOTAL: Duration = Duration::from_secs(30);
/// Lifetime asked for in a service-account assertion (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;
/// A cached token is used again only while it has this much life left.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub bucket: String,
    pub object: String,
}

/// Splits `gs://bucket/object`. The object name is kept verbatim (see the module doc).
pub(crate) fn parse_url(url: &str) -> std::result::Result<Location, String> {
    let (bucket, object) = crate::bucket_url::split(
        url,
        &crate::bucket_url::Form {
            scheme: "gs",
            other_scheme: "not a gs:// URL",
            name: "object name",
            shape: "gs://bucket/object",
        },
    )?;
    if object.contains(['\r', '\n']) {
        return Err("object names cannot contain line breaks".into());
    }
    Ok(Location {
        bucket: bucket.to_string(),
        object: object.to_string(),
    })
}

/// RFC 3986's unreserved characters: every other byte is percent-encoded (`/` too).
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes every byte but RFC 3986's unreserved ones (`/` too).
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The base of object requests: `STORAGE_EMULATOR_HOST` (`host:port`, or a URL;
/// plain http when it has no scheme), else Google's endpoint. `true` for an emulator.
pub(crate) fn endpoint(env: Env) -> std::result::Result<(String, bool), String> {
    let Some(host) = nonempty(env("STORAGE_EMULATOR_HOST")) else {
        return Ok((STORAGE_API.to_string(), false));
    };
    let base = if host.contains("://") {
        host.clone()
    } else {
        format!("http://{host}")
    };
    let u = url::Url::parse(&base)
        .map_err(|e| format!("STORAGE_EMULATOR_HOST={host:?} is not a host:port: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!(
            "STORAGE_EMULATOR_HOST={host:?} is not a host:port or an http(s) URL"
        ));
    }
    Ok((base.trim_end_matches('/').to_string(), true))
}

/// The JSON API media URL of an object under `base`.
pub(crate) fn object_url(base: &str, loc: &Location) -> String {
    format!(
        "{base}/storage/v1/b/{}/o/{}?alt=media",
        encode(&loc.bucket),
        encode(&loc.object)
    )
}

/// An OAuth2 access token. `Debug` does not show it.
#[derive(Clone)]
pub(crate) struct Token {
    secret: String,
    expires: Option<Instant>,
}

impl Token {
    /// The `Authorization` header value. A secret: never log it.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret)
    }

    fn fresh(&self) -> bool {
        self.expires
            .is_none_or(|e| e > Instant::now() + REFRESH_BEFORE_EXPIRY)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// A service-account key file's fields (the key is a secret).
#[derive(Clone, serde::Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

/// An authorized-user file's fields (gcloud's ADC after `gcloud auth
/// application-default login`); the secret and the refresh token are secrets.
#[derive(Clone, serde::Deserialize)]
struct AuthorizedUser {
    client_id: String,
    client_secret: String,
    refresh_token: String,
    token_uri: Option<String>,
}

/// Where the token comes from, found without any network request.
#[derive(Clone)]
pub(crate) enum Source {
    /// `GOOGLE_OAUTH_ACCESS_TOKEN`.
    AccessToken(Token),
    /// A `service_account` credentials file.
    ServiceAccount {
        path: PathBuf,
        key: ServiceAccountKey,
    },
    /// An `authorized_user` credentials file.
    AuthorizedUser {
        path: PathBuf,
        user: AuthorizedUserKey,
    },
    /// The metadata server at this `host[:port]`.
    Metadata { host: String },
}

/// A service account's key, opaque outside this module.
#[derive(Clone)]
pub(crate) struct ServiceAccountKey(ServiceAccount);
/// An authorized user's grant, opaque outside this module.
#[derive(Clone)]
pub(crate) struct AuthorizedUserKey(AuthorizedUser);

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Source {
    /// For the log: where the token comes from (no secret).
    pub fn describe(&self) -> String {
        match self {
            Source::AccessToken(_) => "GOOGLE_OAUTH_ACCESS_TOKEN".into(),
            Source::ServiceAccount { path, key } => format!(
                "service account {} in {}",
                key.0.client_email,
                path.display()
            ),
            Source::AuthorizedUser { path, .. } => {
                format!("authorized user in {}", path.display())
            }
            Source::Metadata { host } => format!("the metadata server {host}"),
        }
    }

    /// The key under which its tokens are cached.
    fn cache_key(&self) -> String {
        match self {
            Source::AccessToken(_) => String::new(),
            Source::ServiceAccount { path, key } => {
                format!("sa {} {}", path.display(), key.0.client_email)
            }
            Source::AuthorizedUser { path, .. } => format!("user {}", path.display()),
            Source::Metadata { host } => format!("metadata {host}"),
        }
    }
}

/// Reads a credentials file: its `type` decides; other types are named as unsupported.
fn read_credentials_file(path: PathBuf) -> std::result::Result<Source, CredError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CredError::config(format!("credentials file {shown}: {e}")).because(e))?;
    // serde_json's messages name a position, never the text: safe to show.
    let bad = |e: serde_json::Error| {
        CredError::config(format!("credentials file {shown}: {e}")).because(e)
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
    let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
    match kind {
        "service_account" => {
            let key: ServiceAccount = serde_json::from_value(v).map_err(bad)?;
            check_token_uri(key.token_uri.as_deref(), &shown)?;
            Ok(Source::ServiceAccount {
                path,
                key: ServiceAccountKey(key),
            })
        }
        "authorized_user" => {
            let user: AuthorizedUser = serde_json::from_value(v).map_err(bad)?;
            check_token_uri(user.token_uri.as_deref(), &shown)?;
            Ok(Source::AuthorizedUser {
                path,
                user: AuthorizedUserKey(user),
            })
        }
        "" => Err(CredError::config(format!(
            "credentials file {shown} has no \"type\""
        ))),
        other => Err(CredError::config(format!(
            "credentials file {shown}: type {other:?} is not supported (service_account and authorized_user are)"
        ))),
    }
}

/// A grant is sent only over https, or plain http to a loopback address.
fn check_token_uri(uri: Option<&str>, file: &str) -> std::result::Result<(), CredError> {
    let Some(uri) = uri else { return Ok(()) };
    let u = url::Url::parse(uri).map_err(|e| {
        CredError::config(format!("credentials file {file}: token_uri: {e}")).because(e)
    })?;
    let ok = match (u.scheme(), u.host()) {
        ("https", Some(_)) => true,
        ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case("localhost"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(CredError::config(format!(
            "credentials file {file}: token_uri {uri:?} must be https (or http to a loopback address)"
        )))
    }
}

/// gcloud's ADC file: `$CLOUDSDK_CONFIG/application_default_credentials.json`, else
/// under `~/.config/gcloud`.
fn gcloud_adc_path(env: Env) -> Option<PathBuf> {
    let dir = match nonempty(env("CLOUDSDK_CONFIG")) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(nonempty(env("HOME"))?).join(".config/gcloud"),
    };
    Some(dir.join("application_default_credentials.json"))
}

/// The first source found without network: the variable, the named file, gcloud's
/// file; else the metadata server (asked only when a token is wanted).
pub(crate) fn find(env: Env) -> std::result::Result<Source, CredError> {
    if let Some(t) = nonempty(env("GOOGLE_OAUTH_ACCESS_TOKEN")) {
        return Ok(Source::AccessToken(Token {
            secret: t,
            expires: None,
        }));
    }
    if let Some(p) = nonempty(env("GOOGLE_APPLICATION_CREDENTIALS")) {
        return read_credentials_file(PathBuf::from(p)).map_err(|e| CredError {
            msg: format!("GOOGLE_APPLICATION_CREDENTIALS: {}", e.msg),
            ..e
        });
    }
    if let Some(p) = gcloud_adc_path(env) {
        if p.exists() {
            return read_credentials_file(p);
        }
    }
    let host = nonempty(env("GCE_METADATA_HOST")).unwrap_or_else(|| METADATA_HOST.into());
    Ok(Source::Metadata { host })
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// The RS256-signed JWT assertion of a service account for `aud` (its token URI).
/// A secret: never log it.
fn assertion(key: &ServiceAccount, aud: &str, now: u64) -> std::result::Result<String, String> {
    use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let der = PrivateKeyDer::from_pem_slice(key.private_key.as_bytes())
        .map_err(|_| "private_key is not a PEM private key".to_string())?;
    let pair = match &der {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err("private_key is not an RSA key".into()),
    }
    .map_err(|e| format!("private_key is not a usable RSA key: {e}"))?;
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = &key.private_key_id {
        header["kid"] = serde_json::Value::String(kid.clone());
    }
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": SCOPE,
        "aud": aud,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "signing the assertion failed".to_string())?;
    Ok(format!("{input}.{}", b64(&sig)))
}

/// A token endpoint's (and the metadata server's) answer.
#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
    token_type: Option<String>,
    error: Option<String>,
}

fn parse_token(what: &str, status: u16, body: &str) -> std::result::Result<Token, CredError> {
    let parsed: Option<TokenResponse> = serde_json::from_str(body).ok();
    if !(200..300).contains(&status) {
        // The OAuth error code (`invalid_grant`, ...) is no secret.
        let code = parsed
            .and_then(|r| r.error)
            .map(|c| format!(" ({})", c.chars().take(100).collect::<String>()))
            .unwrap_or_default();
        let msg = format!("{what}: HTTP {status}{code}");
        return Err(if status >= 500 || status == 429 {
            CredError::transient(msg)
        } else {
            CredError::config(msg)
        });
    }
    let r = parsed.ok_or_else(|| CredError::config(format!("{what}: unexpected answer")))?;
    if let Some(t) = &r.token_type {
        if !t.eq_ignore_ascii_case("bearer") {
            return Err(CredError::config(format!(
                "{what}: token type {t:?} is not Bearer"
            )));
        }
    }
    let secret = nonempty(r.access_token)
        .ok_or_else(|| CredError::config(format!("{what}: no access_token in the answer")))?;
    let expires = r
        .expires_in
        .map(|s| Instant::now() + Duration::from_secs(s));
    Ok(Token { secret, expires })
}

/// Exchanges a grant (a form) at a token endpoint.
fn exchange(
    what: &str,
    uri: &str,
    form: &str,
    cap: Duration,
    env: Env,
) -> std::result::Result<Token, CredError> {
    let (status, body) = http::form_post(uri, form, TOKEN_TOTAL.min(cap), env)
        .map_err(|e| CredError::transient(format!("{what}: {e}")).because(e))?;
    parse_token(what, status, &body)
}

/// A new token from `source` (network), within `cap`.
fn fetch_token(source: &Source, cap: Duration, env: Env) -> std::result::Result<Token, CredError> {
    match source {
        Source::AccessToken(t) => Ok(t.clone()),
        Source::ServiceAccount { key, .. } => {
            let uri = key.0.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI);
            let what = format!("{} token endpoint {}", source.describe(), redact(uri));
            let jwt = assertion(&key.0, uri, now_secs())
                .map_err(|e| CredError::config(format!("{}: {e}", source.describe())))?;
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                .append_pair("assertion", &jwt)
                .finish();
            exchange(&what, uri, &form, cap, env)
        }
        Source::AuthorizedUser { user, .. } => {
            let u = &user.0;
            let uri = u.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI);
            let what = format!("{} token endpoint {}", source.describe(), redact(uri));
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "refresh_token")
                .append_pair("client_id", &u.client_id)
                .append_pair("client_secret", &u.client_secret)
                .append_pair("refresh_token", &u.refresh_token)
                .finish();
            exchange(&what, uri, &form, cap, env)
        }
        Source::Metadata { host } => {
            let url = format!("http://{host}{METADATA_TOKEN_PATH}");
            let what = format!("the metadata server {host}");
            let (status, body) = http::metadata_request(
                http::Method::Get,
                &url,
                &[("Metadata-Flavor", "Google")],
                METADATA_CONNECT.min(cap),
                METADATA_TOTAL.min(cap),
            )
            // Most often: not on Google Cloud. Reported as "no credentials found".
            .map_err(|e| CredError::config(format!("{what}: {e}")).because(e))?;
            parse_token(&what, status, &body)
        }
    }
}

/// Tokens of this run, by source.
static CACHE: Mutex<Vec<(String, Token)>> = Mutex::new(Vec::new());

/// Drops the cached tokens: the store refused one (HTTP 401), so the next attempt
/// asks for a new one.
pub(crate) fn forget_tokens() {
    CACHE.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// A token from `source`: the cached one while it is fresh, else a new one (cached),
/// asked for within `cap`.
fn token(
    source: &Source,
    cache: &Mutex<Vec<(String, Token)>>,
    cap: Duration,
    env: Env,
) -> std::result::Result<Token, CredError> {
    if let Source::AccessToken(t) = source {
        return Ok(t.clone());
    }
    let key = source.cache_key();
    {
        // A poisoned cache only ever holds whole entries, so it is still usable.
        let c = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, t)) = c.iter().find(|(k, t)| *k == key && t.fresh()) {
            return Ok(t.clone());
        }
    }
    let t = fetch_token(source, cap, env)?;
    if t.expires.is_some_and(|e| e <= Instant::now()) {
        return Err(CredError::transient(format!(
            "{}: the token has already expired",
            source.describe()
        )));
    }
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    c.retain(|(k, _)| *k != key);
    c.push((key, t.clone()));
    Ok(t)
}

/// An object request: the URL and the `Authorization` header value, if any. The
/// header is a secret (`Debug` hides it); the URL is not.
pub(crate) struct Request {
    pub url: String,
    pub authorization: Option<String>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The GET for `url` (`gs://bucket/object`) with a bearer token, fetched within the
/// download's deadline. With an emulator and no credentials found at all, the request
/// goes without one.
pub(crate) fn request(
    url: &str,
    env: Env,
    deadline: Option<(Instant, Duration)>,
) -> Result<Request> {
    let timeout = |secs: f64| Error::Timeout {
        url: url.to_string(),
        secs,
    };
    let cap = match deadline {
        None => Duration::MAX,
        Some((end, d)) => {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout(d.as_secs_f64()));
            }
            left
        }
    };
    let passed = || deadline.filter(|(end, _)| Instant::now() >= *end);
    let fail = |msg: String| Error::Gcs {
        url: url.to_string(),
        msg,
        source: None,
    };
    // Whether a failed token endpoint is worth another attempt is
    // `Error::is_retryable`'s call, not this variant's.
    let to_error = |e: CredError| Error::Gcs {
        url: url.to_string(),
        msg: e.msg,
        source: e.source,
    };
    let loc = parse_url(url).map_err(fail)?;
    let (base, emulator) = endpoint(env).map_err(fail)?;
    let object = object_url(&base, &loc);
    let host = url::Url::parse(&base)
        .ok()
        .map(|u| u.authority().to_string())
        .unwrap_or_default();
    let source = find(env).map_err(to_error)?;
    let got = token(&source, &CACHE, cap, env);
    if let Some((_, d)) = passed() {
        return Err(timeout(d.as_secs_f64()));
    }
    let authorization = match got {
        Ok(t) => {
            logln!(
                "GCS {}: endpoint {host}, credentials from {}",
                redact(url),
                source.describe()
            );
            Some(t.bearer())
        }
        Err(e) if matches!(source, Source::Metadata { .. }) && !e.retryable => {
            if !emulator {
                return Err(fail(format!(
                    "no Google credentials found (tried: GOOGLE_OAUTH_ACCESS_TOKEN; \
                     GOOGLE_APPLICATION_CREDENTIALS; {}; {})",
                    gcloud_adc_path(env)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "gcloud's file (no HOME)".into()),
                    e.msg
                )));
            }
            logln!(
                "GCS {}: emulator {host}, no credentials found: sending none",
                redact(url)
            );
            None
        }
        Err(e) => return Err(to_error(e)),
    };
    Ok(Request {
        url: object,
        authorization,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn urls_split_into_bucket_and_verbatim_object() {
        let l = parse_url("gs://bucket/dir/app.tar.gz").unwrap();
        assert_eq!(l.bucket, "bucket");
        assert_eq!(l.object, "dir/app.tar.gz");
        let l = parse_url("GS://b/my app+v1 ü%20/../x.tgz").unwrap();
        assert_eq!(l.object, "my app+v1 ü%20/../x.tgz");
        for bad in [
            "gs://bucket",
            "gs://bucket/",
            "gs:///obj",
            "gs://bu cket/o",
            "gs://b/a\nb",
            "s3://b/o",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_names_are_fully_percent_encoded() {
        let loc = parse_url("gs://my-bucket/dir/my app+1 ü%?#.tgz").unwrap();
        assert_eq!(
            object_url(STORAGE_API, &loc),
            "https://storage.googleapis.com/storage/v1/b/my-bucket/o/dir%2Fmy%20app%2B1%20%C3%BC%25%3F%23.tgz?alt=media"
        );
    }

    #[test]
    fn emulator_host_forms() {
        assert_eq!(
            endpoint(&env_of(&[])).unwrap(),
            (STORAGE_API.to_string(), false)
        );
        let e = |v: &str| endpoint(&env_of(&[("STORAGE_EMULATOR_HOST", v)]));
        assert_eq!(
            e("127.0.0.1:9023").unwrap(),
            ("http://127.0.0.1:9023".into(), true)
        );
        assert_eq!(
            e("http://localhost:9023/").unwrap(),
            ("http://localhost:9023".into(), true)
        );
        assert!(e("ftp://x").is_err());
    }

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const USER: &str = r#"{"type":"authorized_user","client_id":"cid","client_secret":"csecret","refresh_token":"rtoken"}"#;

    #[test]
    fn chain_order_and_file_types() {
        let dir = tempfile::tempdir().unwrap();
        let user = write(dir.path(), "user.json", USER);
        let home = dir.path().display().to_string();
        let user_s = user.display().to_string();
        // The variable wins over everything.
        let s = find(&env_of(&[
            ("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.tok"),
            ("GOOGLE_APPLICATION_CREDENTIALS", &user_s),
        ]))
        .unwrap();
        assert!(matches!(&s, Source::AccessToken(t) if t.bearer() == "Bearer ya29.tok"));
        // Then the named file.
        let s = find(&env_of(&[("GOOGLE_APPLICATION_CREDENTIALS", &user_s)])).unwrap();
        assert!(matches!(s, Source::AuthorizedUser { .. }), "{s:?}");
        // Then gcloud's file under HOME (or CLOUDSDK_CONFIG).
        std::fs::create_dir_all(dir.path().join(".config/gcloud")).unwrap();
        write(
            &dir.path().join(".config/gcloud"),
            "application_default_credentials.json",
            USER,
        );
        let s = find(&env_of(&[("HOME", &home)])).unwrap();
        assert!(s.describe().contains(".config/gcloud"), "{s:?}");
        let s = find(&env_of(&[
            ("HOME", "/nonexistent"),
            ("CLOUDSDK_CONFIG", &format!("{home}/.config/gcloud")),
        ]))
        .unwrap();
        assert!(matches!(s, Source::AuthorizedUser { .. }), "{s:?}");
        // Then the metadata server, moved by GCE_METADATA_HOST.
        let s = find(&env_of(&[("HOME", "/nonexistent")])).unwrap();
        assert_eq!(s.describe(), "the metadata server 169.254.169.254");
        let s = find(&env_of(&[("GCE_METADATA_HOST", "127.0.0.1:8")])).unwrap();
        assert_eq!(s.describe(), "the metadata server 127.0.0.1:8");
    }

    #[test]
    fn bad_credentials_files_are_clear_and_show_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let err = |text: &str| {
            let p = write(dir.path(), "c.json", text);
            let e = find(&env_of(&[(
                "GOOGLE_APPLICATION_CREDENTIALS",
                &p.display().to_string(),
            )]))
            .unwrap_err();
            assert!(!e.retryable);
            e.msg
        };
        let m = err(r#"{"type":"external_account","secret":"s3cr3t"}"#);
        assert!(m.contains("\"external_account\" is not supported"), "{m}");
        assert!(!m.contains("s3cr3t"));
        let m = err("{\"type\":\"authorized_user\",\"client_secret\":\"s3cr3t\"}");
        assert!(m.contains("missing field"), "{m}");
        assert!(!m.contains("s3cr3t"), "{m}");
        let m = err("not json s3cr3t");
        assert!(!m.contains("s3cr3t"), "{m}");
        let m = err(
            r#"{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r","token_uri":"http://example.com/token"}"#,
        );
        assert!(m.contains("must be https"), "{m}");
        let e = find(&env_of(&[(
            "GOOGLE_APPLICATION_CREDENTIALS",
            "/nonexistent.json",
        )]))
        .unwrap_err();
        assert!(e.msg.contains("/nonexistent.json"), "{}", e.msg);
    }

    #[test]
    fn tokens_are_cached_until_near_expiry_and_never_shown() {
        let cache = Mutex::new(Vec::new());
        // A metadata server that cannot be reached: only the cache can answer.
        let source = Source::Metadata {
            host: "127.0.0.1:1".into(),
        };
        let cached = |secs| Token {
            secret: "cached-secret".into(),
            expires: Some(Instant::now() + Duration::from_secs(secs)),
        };
        cache
            .lock()
            .unwrap()
            .push((source.cache_key(), cached(3600)));
        assert_eq!(
            token(&source, &cache, Duration::MAX, &|_| None)
                .unwrap()
                .bearer(),
            "Bearer cached-secret"
        );
        // Within five minutes of expiry it is not used again.
        *cache.lock().unwrap() = vec![(source.cache_key(), cached(60))];
        assert!(token(&source, &cache, Duration::MAX, &|_| None).is_err());
        let dbg = format!("{:?} {:?}", cached(1), source);
        assert!(!dbg.contains("cached-secret"), "{dbg}");
    }

    #[test]
    fn token_answers() {
        let t = parse_token(
            "x",
            200,
            r#"{"access_token":"ya29.a","expires_in":3599,"token_type":"Bearer"}"#,
        )
        .unwrap();
        assert_eq!(t.bearer(), "Bearer ya29.a");
        assert!(t.fresh());
        let e = parse_token(
            "ep",
            400,
            r#"{"error":"invalid_grant","error_description":"Bad"}"#,
        )
        .unwrap_err();
        assert_eq!(e.msg, "ep: HTTP 400 (invalid_grant)");
        assert!(!e.retryable);
        assert!(parse_token("ep", 503, "").unwrap_err().retryable);
        assert!(parse_token("ep", 200, r#"{"token_type":"Bearer"}"#).is_err());
        assert!(parse_token("ep", 200, r#"{"access_token":"a","token_type":"MAC"}"#).is_err());
    }

    #[test]
    fn a_bad_private_key_is_a_clear_error() {
        let key = ServiceAccount {
            client_email: "a@b".into(),
            private_key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            private_key_id: None,
            token_uri: None,
        };
        let e = assertion(&key, DEFAULT_TOKEN_URI, 0).unwrap_err();
        assert!(e.contains("RSA key"), "{e}");
        assert!(!e.contains("AAAA"));
    }
}
