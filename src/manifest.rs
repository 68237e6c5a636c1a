//! Manifest text → validated `Manifest` (SPEC §4, §10).
//!
//! One job: expand the `{{ env }}` / `{{ must_env }}` templates, read the YAML,
//! and refuse anything wrong — missing `dest` / `checksum`, a bad checksum, an
//! unknown strategy, a dangerous `dest`, a non-octal `dest_mode` — before a single
//! byte of `src` is fetched or a command runs. A relative `src` is resolved against
//! the manifest's own URL.
//!
//! It must never fetch, touch the filesystem, read the process environment
//! directly (the caller passes a lookup), or log: unknown keys are returned for the
//! caller to warn about.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_norway::Value;

use crate::error::{Error, Result};
use crate::strategy::Strategy;
use crate::urls::has_scheme;
use crate::verify::Checksum;
use crate::Env;

/// `keep_releases` when the manifest does not say (SPEC §14).
pub(crate) const DEFAULT_KEEP_RELEASES: u32 = 5;

/// Hook command lines, each run with `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Commands {
    /// `pre`: run before `dest` is synced.
    pub pre: Vec<String>,
    /// `post`: run after `dest` is synced.
    pub post: Vec<String>,
    /// `success`: run after everything succeeded, the whole log on stdin.
    pub success: Vec<String>,
    /// `failure`: run after any failure, the whole log on stdin.
    pub failure: Vec<String>,
    /// `commands.env`: NAME, value pairs exported to every hook, sorted by name.
    pub env: Vec<(String, String)>,
}

/// A manifest that passed every check of SPEC §4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Absolute URL of the archive; `None` for a commands-only manifest.
    pub src: Option<String>,
    /// Present whenever `src` is.
    pub checksum: Option<Checksum>,
    /// Absolute, normalised (no `//`, `/./`, trailing `/`); present whenever `src` is.
    pub dest: Option<PathBuf>,
    /// Permission bits for `dest` (≤ 0o7777), when the manifest sets them.
    pub dest_mode: Option<u32>,
    /// `sync_strategy`: how the unpacked tree reaches `dest`.
    pub sync_strategy: Strategy,
    /// `excludes`: rsync exclude rules, in order.
    pub excludes: Vec<String>,
    /// `exclude_from`: a rule file inside the archive (rsync `--exclude-from` syntax).
    pub exclude_from: Option<String>,
    /// Hook command lines, by phase.
    pub commands: Commands,
    /// `keep_releases` (release strategy): at least 1, default 5.
    pub keep_releases: u32,
    /// `releases_dir` (release strategy): absolute, normalised, never inside `dest`;
    /// `DEST.releases` beside dest when not set. `None` for the other strategies.
    pub releases_dir: Option<PathBuf>,
    /// Keys the manifest has but stretcher does not know (`exclude`, `commands.pree`).
    pub unknown_keys: Vec<String>,
    /// `expires` (RFC 3339): the manifest is refused after this instant (SPEC §15).
    pub expires: Option<DateTime<Utc>>,
    /// `serial` (an integer ≥ 0): refused when lower than the last successful
    /// deploy's to the same dest (SPEC §15).
    pub serial: Option<u64>,
    /// `size` (an integer ≥ 0): the bytes of `src`; a body longer or shorter fails
    /// the download (SPEC §17).
    pub size: Option<u64>,
    /// `toc` (`sha256:` + 64 hex digits): `src` is a packed archive whose table member
    /// has this sha256 (SPEC §18); lower-case hex. Deployed as any archive until a
    /// deploy reads the table.
    pub toc: Option<[u8; 32]>,
}

const TOP_KEYS: &[&str] = &[
    "src",
    "checksum",
    "dest",
    "dest_mode",
    "sync_strategy",
    "excludes",
    "exclude_from",
    "commands",
    "expires",
    "serial",
    "size",
    "toc",
    "keep_releases",
    "releases_dir",
];
const COMMAND_KEYS: &[&str] = &["pre", "post", "success", "failure", "env"];

/// Top-level directories a deploy must never mirror onto (SPEC §10).
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt", "opt",
    "proc", "root", "run", "sbin", "srv", "sys", "tmp", "usr", "var",
];

/// The YAML as read. Every scalar is a `String`: serde_norway hands a plain scalar
/// to a string field as written, so `0711` stays `"0711"` and a numeric checksum
/// keeps its leading zeros — no YAML 1.1 / 1.2 number rules involved.
#[derive(Debug, Deserialize)]
struct RawManifest {
    src: Option<String>,
    checksum: Option<String>,
    dest: Option<String>,
    dest_mode: Option<String>,
    sync_strategy: Option<String>,
    excludes: Option<Vec<String>>,
    exclude_from: Option<String>,
    commands: Option<RawCommands>,
    expires: Option<String>,
    serial: Option<String>,
    size: Option<String>,
    toc: Option<String>,
    keep_releases: Option<String>,
    releases_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawCommands {
    pre: Option<Vec<String>>,
    post: Option<Vec<String>>,
    success: Option<Vec<String>>,
    failure: Option<Vec<String>>,
    /// Scalars as written (`007`, `true`); null is the empty string.
    env: Option<std::collections::BTreeMap<String, Option<String>>>,
}

/// Parses and validates a manifest. `text`: the manifest as fetched; `url`: where
/// it came from (for errors, and to resolve a relative `src`); `env`: an
/// environment lookup for the templates.
pub fn parse(text: &str, url: &str, env: Env) -> Result<Manifest> {
    parse_in(text, url, env, false)
}

/// The placeholder a `{{ must_env "NAME" }}` becomes in [`parse_unhosted`]: an
/// absolute path, so that a `dest` or `src` made of it passes their checks.
pub const MUST_ENV_PLACEHOLDER: &str = "/must_env";

/// Parses and validates a manifest as no host in particular would (SPEC §19, the
/// checks of `stretcher rollout`): `{{ env ... }}` is its default or empty, and
/// `{{ must_env "NAME" }}` is the placeholder `/must_env/NAME`.
pub fn parse_unhosted(text: &str, url: &str) -> Result<Manifest> {
    parse_in(text, url, &|_| None, true)
}

fn parse_in(text: &str, url: &str, env: Env, unhosted: bool) -> Result<Manifest> {
    let fail = |msg: String| Error::Manifest {
        url: url.to_string(),
        msg,
        source: None,
    };
    let yaml = |e: serde_norway::Error| Error::Manifest {
        url: url.to_string(),
        msg: format!("YAML: {e}"),
        source: Some(e.into()),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let expanded = expand(text, env, unhosted).map_err(|m| fail(format!("template: {m}")))?;

    // Pass 1: the shape, and the keys we do not know.
    let doc: Value = serde_norway::from_str(&expanded).map_err(yaml)?;
    let unknown_keys = unknown_keys(&doc).map_err(fail)?;

    // Pass 2: the typed read.
    let raw: RawManifest = serde_norway::from_str(&expanded).map_err(yaml)?;
    validate(raw, url, unknown_keys).map_err(fail)
}

/// The `dest` a manifest names when it names a usable one, even though another of its
/// keys failed validation: where the record of that failure belongs (SPEC §11), so
/// that `stretcher status DEST` shows it. `None` when the text is no YAML mapping or
/// its `dest` is missing or not acceptable.
pub fn dest_of(text: &str, env: Env) -> Option<PathBuf> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let expanded = expand_templates(text, env).ok()?;
    let doc: Value = serde_norway::from_str(&expanded).ok()?;
    let dest = doc.get("dest")?.as_str()?;
    check_dest(dest).ok()
}

/// Pass 1 of `parse`: the document must be a mapping; the keys we do not know (for a
/// warning), with `commands.env` checked on the way.
fn unknown_keys(doc: &Value) -> Result<Vec<String>, String> {
    let top = match doc {
        Value::Null => return Err("the manifest is empty".into()),
        Value::Mapping(m) => m,
        other => {
            return Err(format!(
                "the manifest must be a YAML mapping (src:, dest:, ...), not {}",
                kind(other)
            ))
        }
    };
    let mut unknown_keys = Vec::new();
    for (k, v) in top {
        let name = key_name(k);
        if !TOP_KEYS.contains(&name.as_str()) {
            unknown_keys.push(name);
        } else if name == "commands" {
            if let Value::Mapping(cmds) = v {
                for (ck, cv) in cmds {
                    let cname = key_name(ck);
                    if !COMMAND_KEYS.contains(&cname.as_str()) {
                        unknown_keys.push(format!("commands.{cname}"));
                    } else if cname == "env" {
                        check_env(cv)?;
                    }
                }
            }
        }
    }
    Ok(unknown_keys)
}

/// Pass 2 of `parse`: every key of the typed read checked; the first error is the one.
fn validate(raw: RawManifest, url: &str, unknown_keys: Vec<String>) -> Result<Manifest, String> {
    let src = non_empty(raw.src);
    let dest = non_empty(raw.dest);
    let checksum = non_empty(raw.checksum);
    if src.is_some() && dest.is_none() {
        return Err("dest is required".into());
    }
    if src.is_some() && checksum.is_none() {
        return Err("checksum is required".into());
    }
    let checksum = checksum.map(|c| Checksum::parse(&c)).transpose()?;
    let sync_strategy = match non_empty(raw.sync_strategy) {
        None => Strategy::default(),
        Some(name) => Strategy::parse(&name).ok_or_else(|| {
            format!("invalid strategy name: {name} (expected rsync, mv or release)")
        })?,
    };
    let dest = dest.map(|d| check_dest(&d)).transpose()?;
    let keep_releases = non_empty(raw.keep_releases)
        .map(|k| parse_keep(&k))
        .transpose()?
        .unwrap_or(DEFAULT_KEEP_RELEASES);
    let releases_dir = match (sync_strategy, &dest) {
        (Strategy::Release, Some(dest)) => {
            Some(releases_dir(non_empty(raw.releases_dir).as_deref(), dest)?)
        }
        _ => None,
    };
    let dest_mode = non_empty(raw.dest_mode)
        .map(|m| parse_mode(&m))
        .transpose()?;
    let src = src.map(|s| resolve_src(&s, url)).transpose()?;
    let commands = raw.commands.map(Commands::from).unwrap_or_default();
    Ok(Manifest {
        src,
        checksum,
        dest,
        dest_mode,
        sync_strategy,
        excludes: raw.excludes.unwrap_or_default(),
        exclude_from: non_empty(raw.exclude_from)
            .map(|f| check_exclude_from(&f))
            .transpose()?,
        commands,
        keep_releases,
        releases_dir,
        unknown_keys,
        expires: non_empty(raw.expires)
            .map(|e| parse_expires(&e))
            .transpose()?,
        serial: non_empty(raw.serial)
            .map(|n| parse_serial(&n))
            .transpose()?,
        size: non_empty(raw.size).map(|n| parse_size(&n)).transpose()?,
        toc: non_empty(raw.toc).map(|t| parse_toc(&t)).transpose()?,
    })
}

impl From<RawCommands> for Commands {
    fn from(c: RawCommands) -> Commands {
        Commands {
            pre: c.pre.unwrap_or_default(),
            post: c.post.unwrap_or_default(),
            success: c.success.unwrap_or_default(),
            failure: c.failure.unwrap_or_default(),
            env: c
                .env
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect(),
        }
    }
}

/// `expires`: an RFC 3339 date-time with an offset (`2026-12-31T23:59:59Z`).
fn parse_expires(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("expires {text:?} is not an RFC 3339 time like 2026-12-31T23:59:59Z: {e}")
        })
}

/// `serial`: decimal digits, an integer ≥ 0.
fn parse_serial(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("serial {text:?} is not an integer >= 0"));
    }
    t.parse::<u64>()
        .map_err(|e| format!("serial {text:?} is not an integer >= 0: {e}"))
}

/// `toc`: `sha256:` and 64 hex digits (either case), the table member's digest.
fn parse_toc(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let bad = || format!("toc {text:?} is not sha256: followed by 64 hex digits");
    let hex_part = t.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex_part.len() != 64 {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut digest).map_err(|_| bad())?;
    Ok(digest)
}

/// `size`: decimal digits, bytes, an integer ≥ 0.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "size {text:?} is not a number of bytes (an integer >= 0)"
        ));
    }
    t.parse::<u64>()
        .map_err(|e| format!("size {text:?} is not a number of bytes (an integer >= 0): {e}"))
}

/// `keep_releases`: a whole number, at least 1.
fn parse_keep(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "keep_releases {text:?} must be a whole number of at least 1"
        )),
    }
}

/// `releases_dir`, or `DEST.releases` beside dest: absolute, normalised, and neither
/// dest itself nor inside it (nor a system directory, as for dest).
fn releases_dir(given: Option<&str>, dest: &std::path::Path) -> Result<PathBuf, String> {
    let dir = match given {
        None => {
            let mut d = dest.as_os_str().to_os_string();
            d.push(".releases");
            PathBuf::from(d)
        }
        Some(g) => check_dest(g).map_err(|m| m.replacen("dest", "releases_dir", 1))?,
    };
    if dir.starts_with(dest) {
        return Err(format!(
            "releases_dir {} must not be dest or inside it",
            dir.display()
        ));
    }
    Ok(dir)
}

/// `exclude_from` names a file inside the archive: a relative path that stays
/// below the archive root (a leading `./` is fine).
fn check_exclude_from(name: &str) -> Result<String, String> {
    let p = std::path::Path::new(name);
    let escapes = p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes {
        return Err(format!(
            "exclude_from {name:?} must be a relative path inside the archive"
        ));
    }
    Ok(name.to_string())
}

/// `commands.env` must map names to scalars (SPEC §4): a list or mapping value, a
/// name or value a process environment cannot hold (empty, `=` in the name, a NUL
/// anywhere: SPEC §17), or a name in stretcher's own `STRETCHER_` namespace is an
/// error.
fn check_env(v: &Value) -> std::result::Result<(), String> {
    let map = match v {
        Value::Null => return Ok(()),
        Value::Mapping(m) => m,
        other => {
            return Err(format!(
                "commands.env must be a mapping of NAME: value, not {}",
                kind(other)
            ))
        }
    };
    for (k, val) in map {
        let name = match k {
            Value::String(s) => s.clone(),
            other => {
                return Err(format!(
                    "commands.env: the name {} must be a string, not {}",
                    key_name(other),
                    kind(other)
                ))
            }
        };
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!(
                "commands.env: {name:?} is not a valid environment variable name"
            ));
        }
        if name.starts_with("STRETCHER_") {
            return Err(format!(
                "commands.env: {name} is reserved (stretcher sets the STRETCHER_ variables)"
            ));
        }
        match val {
            Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => {
                return Err(format!(
                    "commands.env: the value of {name} must be a string, number or boolean, not {}",
                    kind(val)
                ))
            }
            // An environment string ends at its first NUL: no hook could start.
            Value::String(v) if v.contains('\0') => {
                return Err(format!(
                    "commands.env: the value of {name} contains a NUL byte, which no environment can hold"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "~".to_string(),
        other => format!("<{}>", kind(other)),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// `dest_mode` digits, always octal: `711`, `0711`, `0o711` → 0o711.
fn parse_mode(text: &str) -> std::result::Result<u32, String> {
    let t = text.trim();
    let digits = t
        .strip_prefix("0o")
        .or_else(|| t.strip_prefix("0O"))
        .unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!(
            "dest_mode {text:?} is not an octal mode (digits 0-7, like 0755)"
        ));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("dest_mode {text:?} is larger than 07777")),
    }
}

/// `dest` must be absolute, free of `..`, and not `/` or a top-level system
/// directory. Returns it normalised.
fn check_dest(dest: &str) -> std::result::Result<PathBuf, String> {
    if !dest.starts_with('/') {
        return Err(format!("dest {dest:?} must be an absolute path"));
    }
    let parts: Vec<&str> = dest
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("dest {dest:?} must not contain \"..\""));
    }
    match parts.as_slice() {
        [] => Err(format!("refusing dest {dest:?}: it is the root directory")),
        [top] if SYSTEM_DIRS.contains(top) => Err(format!(
            "refusing dest {dest:?}: /{top} is a system directory (use a directory below it)"
        )),
        _ => Ok(PathBuf::from(format!("/{}", parts.join("/")))),
    }
}

/// Resolves `src` against the manifest URL (RFC 3986 style): a URL with a scheme
/// is kept; `//host/p` takes the scheme; `/p` takes scheme and host; anything else
/// is relative to the manifest's directory. Dot segments are removed.
///
/// Hand-written, not `url::Url::join`: the result is used byte for byte (a `file://`
/// path opened as written, an S3 key signed as written, a GCS object name encoded
/// once on the wire), and `Url` would percent-encode it (`my app.tgz` →
/// `my%20app.tgz`, a different key: see the `gs://` case of `relative_src_resolution`),
/// lower-case an `https://` host, and rewrite `file://localhost/`.
fn resolve_src(src: &str, base: &str) -> std::result::Result<String, String> {
    if has_scheme(src) {
        return Ok(src.to_string());
    }
    let Some((scheme, rest)) = base.split_once("://").filter(|_| has_scheme(base)) else {
        return Err(format!(
            "relative src {src:?} cannot be resolved: the manifest URL {base:?} has no scheme"
        ));
    };
    if src.starts_with("//") {
        return Ok(format!("{scheme}:{src}"));
    }
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(auth_end);
    let base_path = &after[..after.find(['?', '#']).unwrap_or(after.len())];
    let (src_path, suffix) = src.split_at(src.find(['?', '#']).unwrap_or(src.len()));
    let merged = if src_path.starts_with('/') {
        src_path.to_string()
    } else if src_path.is_empty() {
        base_path.to_string()
    } else {
        let dir = match base_path.rfind('/') {
            Some(i) => &base_path[..=i],
            None => "/",
        };
        format!("{dir}{src_path}")
    };
    Ok(format!(
        "{scheme}://{authority}{}{suffix}",
        remove_dot_segments(&merged)
    ))
}

/// RFC 3986 §5.2.4 for an absolute path: `.` dropped, `..` pops (never above `/`).
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        if last && matches!(*seg, "." | "..") {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// Expands `{{ env "NAME" }}`, `{{ env "NAME" "default" }}` and
/// `{{ must_env "NAME" }}` (arguments in `"..."` or `` `...` ``; Go's `{{-`/`-}}`
/// trim markers and `{{/* comments */}}` honoured). Any other action is an error.
///
/// `env "A" "B" ... "default"`: the first of A, B, ... that is set and non-empty,
/// else the last argument; `env "NAME"` alone gives `""` when NAME is unset.
/// `must_env` of an unset variable is an error naming it (set but empty is fine).
pub fn expand_templates(text: &str, env: Env) -> std::result::Result<String, String> {
    expand(text, env, false)
}

/// `expand_templates`; with `unhosted`, `must_env "NAME"` is `MUST_ENV_PLACEHOLDER/NAME`.
fn expand(text: &str, env: Env, unhosted: bool) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let line = text[..text.len() - rest.len() + open].matches('\n').count() + 1;
        let at = |m: String| format!("line {line}: {m}");
        out.push_str(&rest[..open]);
        let mut inner = &rest[open + 2..];
        if inner.starts_with('-') && inner[1..].starts_with(is_space) {
            out.truncate(out.trim_end_matches(is_space).len());
            inner = &inner[1..];
        }
        let (action, after, trim_right) = split_action(inner).map_err(at)?;
        if let Some(action) = action {
            out.push_str(&eval_action(action, env, unhosted).map_err(at)?);
        }
        rest = if trim_right {
            after.trim_start_matches(is_space)
        } else {
            after
        };
    }
    out.push_str(rest);
    Ok(out)
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits `inner` (the text after `{{` and a left trim marker) into the action,
/// the text after `}}`, and whether a `-}}` right trim marker was present. A
/// comment has no action.
fn split_action(inner: &str) -> std::result::Result<(Option<&str>, &str, bool), String> {
    let trimmed = inner.trim_start_matches(is_space);
    if let Some(comment) = trimmed.strip_prefix("/*") {
        let end = comment
            .find("*/")
            .ok_or_else(|| "unclosed comment".to_string())?;
        let after = &comment[end + 2..];
        if let Some(rest) = after.strip_prefix("}}") {
            return Ok((None, rest, false));
        }
        let spaced = after.trim_start_matches(is_space);
        if spaced.len() < after.len() {
            if let Some(rest) = spaced.strip_prefix("-}}") {
                return Ok((None, rest, true));
            }
        }
        return Err("comment ends before closing delimiter".into());
    }
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'\n' => return Err("unterminated quoted string".into()),
                        _ => i += 1,
                    }
                }
                if i >= bytes.len() {
                    return Err("unterminated quoted string".into());
                }
                i += 1;
            }
            b'`' => {
                let end = inner[i + 1..]
                    .find('`')
                    .ok_or_else(|| "unterminated raw quoted string".to_string())?;
                i += end + 2;
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => {
                let action = &inner[..i];
                let after = &inner[i + 2..];
                if let Some(body) = action.strip_suffix('-') {
                    if body.ends_with(is_space) {
                        return Ok((Some(body), after, true));
                    }
                }
                return Ok((Some(action), after, false));
            }
            _ => i += 1,
        }
    }
    Err("unclosed action: \"{{\" without \"}}\"".into())
}

fn eval_action(action: &str, env: Env, unhosted: bool) -> std::result::Result<String, String> {
    let shown = || format!("{{{{{}}}}}", action);
    if action.trim().is_empty() {
        return Err(format!("missing value for command in {}", shown()));
    }
    let tokens = tokenize(action).map_err(|m| {
        format!(
            "unsupported template action {} ({m}): only env and must_env are supported",
            shown()
        )
    })?;
    let (name, args) = match tokens.split_first() {
        Some((Token::Ident(name), args)) => (name.as_str(), args),
        _ => {
            return Err(format!(
                "unsupported template action {}: only env and must_env are supported",
                shown()
            ))
        }
    };
    let args: Vec<&str> = args
        .iter()
        .map(|t| match t {
            Token::Str(s) => Ok(s.as_str()),
            Token::Ident(i) => Err(format!(
                "unsupported argument {i:?} in {}: arguments must be quoted strings",
                shown()
            )),
        })
        .collect::<std::result::Result<_, _>>()?;
    match (name, args.as_slice()) {
        ("env", [key]) => Ok(env(key).unwrap_or_default()),
        ("env", [keys @ .., default]) if !keys.is_empty() => Ok(keys
            .iter()
            .find_map(|k| env(k).filter(|v| !v.is_empty()))
            .unwrap_or_else(|| default.to_string())),
        ("must_env", [key]) if unhosted => Ok(format!("{MUST_ENV_PLACEHOLDER}/{key}")),
        ("must_env", [key]) => {
            env(key).ok_or_else(|| format!("environment variable {key} is not defined"))
        }
        ("env", _) | ("must_env", _) => Err(format!("wrong number of arguments in {}", shown())),
        _ => Err(format!(
            "unknown template function {name:?} in {}: only env and must_env are supported",
            shown()
        )),
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
}

fn tokenize(action: &str) -> std::result::Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = action.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if is_space(c) {
            chars.next();
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut end = start;
            while let Some(&(i, c)) = chars.peek() {
                if !(c.is_ascii_alphanumeric() || c == '_') {
                    break;
                }
                end = i + c.len_utf8();
                chars.next();
            }
            tokens.push(Token::Ident(action[start..end].to_string()));
        } else if c == '`' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some((_, '`')) => break,
                    Some((_, c)) => s.push(c),
                    None => return Err("unterminated raw quoted string".into()),
                }
            }
            tokens.push(Token::Str(s));
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => s.push(unescape(&mut chars)?),
                    Some((_, c)) => s.push(c),
                    None => return Err("unterminated quoted string".into()),
                }
            }
            tokens.push(Token::Str(s));
        } else {
            return Err(format!("unexpected {c:?}"));
        }
    }
    Ok(tokens)
}

/// One Go string escape, the backslash already consumed.
fn unescape(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> std::result::Result<char, String> {
    let bad = || "bad escape in quoted string".to_string();
    let digits = match chars.next().map(|(_, c)| c) {
        Some('n') => return Ok('\n'),
        Some('t') => return Ok('\t'),
        Some('r') => return Ok('\r'),
        Some('a') => return Ok('\x07'),
        Some('b') => return Ok('\x08'),
        Some('f') => return Ok('\x0c'),
        Some('v') => return Ok('\x0b'),
        Some(c @ ('\\' | '"' | '\'')) => return Ok(c),
        Some('x') => 2,
        Some('u') => 4,
        Some('U') => 8,
        _ => return Err(bad()),
    };
    let mut v = 0u32;
    for _ in 0..digits {
        let d = chars
            .next()
            .and_then(|(_, c)| c.to_digit(16))
            .ok_or_else(bad)?;
        v = v * 16 + d;
    }
    char::from_u32(v).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const URL: &str = "s3://example.com/path/to/manifest.yml";
    const SHA1: &str = "e0840daaa97cd2cf2175f9e5d133ffb3324a2b93";

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn ok(yml: &str) -> Manifest {
        parse(yml, URL, &env_of(&[])).unwrap_or_else(|e| panic!("{yml}\n=> {e}"))
    }

    fn err(yml: &str) -> String {
        match parse(yml, URL, &env_of(&[])) {
            Err(e @ Error::Manifest { .. }) => e.to_string(),
            other => panic!("{yml}\n=> expected a manifest error, got {other:?}"),
        }
    }

    fn with_src(extra: &str) -> String {
        format!("src: s3://example.com/app.tar.gz\nchecksum: {SHA1}\ndest: /home/stretcher/app\n{extra}")
    }

    #[test]
    fn go_parse_manifest() {
        let m = ok(&format!(
            "\nsrc: s3://example.com/path/to/archive.tar.gz\nchecksum: {SHA1}\ndest: /home/stretcher/app\ncommands:\n  pre:\n    - echo 'staring deploy'\n    - echo 'xxx'\n  post:\n    - echo 'deploy done'\n"
        ));
        assert_eq!(
            m.src.as_deref(),
            Some("s3://example.com/path/to/archive.tar.gz")
        );
        assert_eq!(m.checksum.as_ref().map(Checksum::hex), Some(SHA1));
        assert_eq!(m.dest, Some(PathBuf::from("/home/stretcher/app")));
        assert_eq!(m.commands.pre, ["echo 'staring deploy'", "echo 'xxx'"]);
        assert_eq!(m.commands.post, ["echo 'deploy done'"]);
        assert!(m.commands.success.is_empty() && m.commands.failure.is_empty());
        assert_eq!(m.sync_strategy, Strategy::Rsync);
        assert_eq!(m.dest_mode, None);
        assert!(m.unknown_keys.is_empty());
    }

    #[test]
    fn readme_manifest() {
        let m = ok(&format!(
            "src: s3://example.com/app.tar.gz\nchecksum: {SHA1}\ndest: /home/stretcher/app\ndest_mode: 0711\nsync_strategy: rsync\nexcludes:\n  - \"*.pid\"\n  - \"*.socket\"\nexclude_from: exclude.list\ncommands:\n  pre:\n    - echo 'staring deploy'\n  post:\n    - echo 'deploy done'\n  success:\n    - echo 'deploy success'\n  failure:\n    - echo 'deploy failed!!'\n    - cat >> /path/to/failure.log\n"
        ));
        assert_eq!(m.excludes, ["*.pid", "*.socket"]);
        assert_eq!(m.exclude_from.as_deref(), Some("exclude.list"));
        assert_eq!(m.dest_mode, Some(0o711));
        assert_eq!(m.commands.success, ["echo 'deploy success'"]);
        assert_eq!(
            m.commands.failure,
            ["echo 'deploy failed!!'", "cat >> /path/to/failure.log"]
        );
    }

    #[test]
    fn sync_strategy() {
        assert_eq!(
            ok(&with_src("sync_strategy: mv\n")).sync_strategy,
            Strategy::Mv
        );
        assert_eq!(
            ok(&with_src("sync_strategy: rsync\n")).sync_strategy,
            Strategy::Rsync
        );
        assert_eq!(
            ok(&with_src("sync_strategy: \"\"\n")).sync_strategy,
            Strategy::Rsync
        );
        let e = err(&with_src("sync_strategy: dummy\n"));
        assert!(e.contains("invalid strategy"), "{e}");
    }

    #[test]
    fn colon_in_commands() {
        // Go's TestParseManifestWithColonInvalid.
        let e = err(&with_src(
            "commands:\n  success:\n    - some-commend-with-argument-includes-colon \":foo: bar\"\n",
        ));
        assert!(e.contains("YAML"), "{e}");
        // Go's TestParseManifestWithColonValid.
        let m = ok(&with_src(
            "commands:\n  success:\n    - 'some-commend-with-argument-includes-colon \":foo: bar\"'\n",
        ));
        assert_eq!(
            m.commands.success,
            [r#"some-commend-with-argument-includes-colon ":foo: bar""#]
        );
    }

    #[test]
    fn templates_in_manifest() {
        let yml = format!(
            "src: {{{{ must_env \"SRC\" }}}}\nchecksum: {SHA1}\ndest: {{{{ env \"DEST\" \"/srv/default\" }}}}\ncommands:\n  pre:\n    - echo {{{{env `GREETING`}}}}\n"
        );
        let env = env_of(&[("SRC", "http://h/app.tgz"), ("GREETING", "hi")]);
        let m = parse(&yml, URL, &env).unwrap();
        assert_eq!(m.src.as_deref(), Some("http://h/app.tgz"));
        assert_eq!(m.dest, Some(PathBuf::from("/srv/default")));
        assert_eq!(m.commands.pre, ["echo hi"]);
        let e = parse(&yml, URL, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("SRC is not defined"), "{e}");
        assert!(e.contains(URL), "{e}");
    }

    #[test]
    fn templates_table() {
        let env = env_of(&[("A", "alpha"), ("EMPTY", ""), ("Q", "x\"y")]);
        let cases: &[(&str, &str)] = &[
            ("plain text", "plain text"),
            ("{{ env \"A\" }}", "alpha"),
            ("{{env \"A\"}}", "alpha"),
            ("{{  env   `A`  }}", "alpha"),
            ("{{ env \"UNSET\" }}", ""),
            ("{{ env \"UNSET\" \"dflt\" }}", "dflt"),
            ("{{ env \"EMPTY\" \"dflt\" }}", "dflt"),
            ("{{ env \"A\" \"dflt\" }}", "alpha"),
            ("{{ env \"UNSET\" \"A\" \"last\" }}", "alpha"),
            ("{{ env \"UNSET\" `a \"b\"` }}", "a \"b\""),
            ("{{ env \"UNSET\" \"a\\tb\\u00e9\" }}", "a\tb\u{e9}"),
            ("{{ env \"UNSET\" \"}}\" }}", "}}"),
            ("{{ must_env \"A\" }}", "alpha"),
            ("{{ must_env \"EMPTY\" }}", ""),
            ("{{ env \"Q\" }}", "x\"y"),
            ("a {{- env \"A\" -}} b", "aalphab"),
            ("a\n  {{- env \"A\" }}\n", "aalpha\n"),
            ("x: {{/* a comment */}}1", "x: 1"),
            ("x: 1  {{- /* c */ -}}  \n y", "x: 1y"),
            ("no {single} braces }}", "no {single} braces }}"),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand_templates(input, &env).as_deref(),
                Ok(*want),
                "{input:?}"
            );
        }
    }

    #[test]
    fn unhosted_templates() {
        let text = "src: archive.tar.gz\nchecksum: {{ env \"SUM\" \"5a0eae8ba5a8b0fbd6f2b2a4a8a7d1e3e6e1b7c9\" }}\n\
                    dest: {{ must_env \"DEST\" }}\ncommands:\n  pre:\n    - echo {{ env \"X\" }}\n";
        let m = parse_unhosted(text, "https://h/m.yml").unwrap();
        assert_eq!(m.dest, Some(PathBuf::from("/must_env/DEST")));
        assert_eq!(
            m.checksum.unwrap().hex(),
            "5a0eae8ba5a8b0fbd6f2b2a4a8a7d1e3e6e1b7c9"
        );
        assert_eq!(m.commands.pre, vec!["echo".to_string()]);
        // a host without DEST fails; what does not depend on the host fails the same
        assert!(parse(text, "https://h/m.yml", &|_| None).is_err());
        assert!(parse_unhosted("src: a\nchecksum: xyz\ndest: /srv/a\n", "https://h/m").is_err());
        assert!(parse_unhosted("{{ nope }}", "https://h/m").is_err());
    }

    #[test]
    fn template_errors() {
        let env = env_of(&[]);
        let cases: &[(&str, &str)] = &[
            (
                "{{ must_env \"NOPE\" }}",
                "environment variable NOPE is not defined",
            ),
            ("{{ .Foo }}", "unsupported"),
            (
                "{{ printf \"%s\" \"x\" }}",
                "unknown template function \"printf\"",
            ),
            ("{{ env }}", "wrong number of arguments"),
            ("{{ must_env \"A\" \"B\" }}", "wrong number of arguments"),
            ("{{ env A }}", "must be quoted"),
            ("{{ env \"A\" | lower }}", "unexpected '|'"),
            ("{{ }}", "missing value"),
            ("{{}}", "missing value"),
            ("{{-3}}", "unexpected '-'"),
            ("src: {{ env \"A\"", "unclosed action"),
            ("{{ env \"A }}", "unterminated quoted string"),
            ("{{ env `A }}", "unterminated raw"),
            ("{{/* x }}", "unclosed comment"),
            ("a\nb\n{{ nope }}", "line 3"),
        ];
        for (input, want) in cases {
            let e = expand_templates(input, &env).expect_err(input);
            assert!(e.contains(want), "{input:?}: {e}");
        }
        let e = err("src: {{ nope }}\n");
        assert!(e.contains("template"), "{e}");
    }

    #[test]
    fn exclude_from_stays_inside_the_archive() {
        for ok in ["exclude.txt", "./conf/exclude.list", "a/b"] {
            assert_eq!(check_exclude_from(ok).unwrap(), ok);
        }
        for bad in ["/etc/passwd", "../x", "a/../../x"] {
            assert!(check_exclude_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dest_mode_table() {
        let cases: &[(&str, u32)] = &[
            ("0711", 0o711),
            ("711", 0o711),
            ("0o711", 0o711),
            ("\"0711\"", 0o711),
            ("'711'", 0o711),
            ("0755", 0o755),
            ("0", 0),
            ("02775", 0o2775),
        ];
        for (v, want) in cases {
            let m = ok(&with_src(&format!("dest_mode: {v}\n")));
            assert_eq!(m.dest_mode, Some(*want), "dest_mode: {v}");
        }
        for bad in ["0789", "8", "0o9", "rwx", "0x1ed", "-0711", "17777", "1.5"] {
            let e = err(&with_src(&format!("dest_mode: {bad}\n")));
            assert!(e.contains("dest_mode"), "{bad}: {e}");
        }
        assert_eq!(ok(&with_src("dest_mode:\n")).dest_mode, None);
    }

    #[test]
    fn checksum_read_as_string() {
        // 32 digits, all numeric, with leading zeros: a number to YAML, an md5 to us.
        let digits = "00123456789012345678901234567890";
        let m = ok(&format!(
            "src: s3://b/a.tgz\nchecksum: {digits}\ndest: /srv/app\n"
        ));
        assert_eq!(m.checksum.as_ref().map(Checksum::hex), Some(digits));
        // Upper case is accepted and normalised.
        let m = ok(&format!(
            "src: s3://b/a.tgz\nchecksum: {}\ndest: /srv/app\n",
            SHA1.to_uppercase()
        ));
        assert_eq!(m.checksum.as_ref().map(Checksum::hex), Some(SHA1));
        for bad in ["abc", "1e5", "zz40daaa97cd2cf2175f9e5d133ffb3324a2b93"] {
            let e = err(&format!(
                "src: s3://b/a.tgz\nchecksum: {bad}\ndest: /srv/app\n"
            ));
            assert!(e.contains("checksum"), "{bad}: {e}");
        }
    }

    #[test]
    fn required_fields() {
        let e = err(&format!("src: s3://b/a.tgz\nchecksum: {SHA1}\n"));
        assert!(e.ends_with("dest is required"), "{e}");
        let e = err("src: s3://b/a.tgz\ndest: /srv/app\n");
        assert!(e.ends_with("checksum is required"), "{e}");
        // Commands only: valid without dest or checksum.
        let m = ok("commands:\n  pre:\n    - echo hi\n");
        assert_eq!(m.src, None);
        assert_eq!(m.dest, None);
        assert_eq!(m.commands.pre, ["echo hi"]);
        // An empty src is no src.
        assert_eq!(ok("src: \"\"\ncommands:\n  post: [\"true\"]\n").src, None);
    }

    #[test]
    fn dest_table() {
        let allowed: &[(&str, &str)] = &[
            ("/srv/app", "/srv/app"),
            ("/app", "/app"),
            ("/home/stretcher/app", "/home/stretcher/app"),
            ("/srv//app/", "/srv/app"),
            ("/srv/./app/.", "/srv/app"),
            ("/usr/local/app", "/usr/local/app"),
            ("/variable", "/variable"),
        ];
        for (dest, want) in allowed {
            let m = ok(&format!(
                "src: s3://b/a.tgz\nchecksum: {SHA1}\ndest: {dest}\n"
            ));
            assert_eq!(m.dest, Some(PathBuf::from(want)), "{dest}");
        }
        let mut refused: Vec<String> = [
            "/",
            "//",
            "/.",
            "/./",
            "relative/app",
            "app",
            "./app",
            "/srv/../etc/x",
            "/a/..",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for dir in SYSTEM_DIRS {
            refused.push(format!("/{dir}"));
            refused.push(format!("/{dir}/"));
            refused.push(format!("//{dir}"));
            refused.push(format!("/./{dir}/."));
        }
        for dest in refused {
            let e = err(&format!(
                "src: s3://b/a.tgz\nchecksum: {SHA1}\ndest: \"{dest}\"\n"
            ));
            assert!(e.contains("dest"), "{dest}: {e}");
        }
    }

    #[test]
    fn relative_src_resolution() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "file:///a/b/manifest.yml",
                "app.tar.gz",
                "file:///a/b/app.tar.gz",
            ),
            (
                "file:///a/b/manifest.yml",
                "./app.tar.gz",
                "file:///a/b/app.tar.gz",
            ),
            (
                "file:///a/b/manifest.yml",
                "../c/app.tgz",
                "file:///a/c/app.tgz",
            ),
            (
                "file:///a/b/manifest.yml",
                "/abs/path.tgz",
                "file:///abs/path.tgz",
            ),
            ("http://h/x/m.yml", "../y.tgz", "http://h/y.tgz"),
            ("http://h/x/m.yml", "../../../y.tgz", "http://h/y.tgz"),
            (
                "http://h:8080/x/m.yml?sig=1#f",
                "y.tgz?v=2",
                "http://h:8080/x/y.tgz?v=2",
            ),
            ("https://h/x/m.yml", "/abs/path", "https://h/abs/path"),
            ("https://h/x/m.yml", "//cdn/y.tgz", "https://cdn/y.tgz"),
            ("https://h", "y.tgz", "https://h/y.tgz"),
            (
                "s3://bucket/dir/m.yml",
                "app.tgz",
                "s3://bucket/dir/app.tgz",
            ),
            (
                "s3://bucket/m.yml",
                "sub/app.tgz",
                "s3://bucket/sub/app.tgz",
            ),
            (
                "s3://bucket/dir/m.yml",
                "http://other/a.tgz",
                "http://other/a.tgz",
            ),
            ("file:///a/m.yml", "s3://bucket/a.tgz", "s3://bucket/a.tgz"),
            (
                "gs://bucket/dir/m.yml",
                "my app+1.tgz",
                "gs://bucket/dir/my app+1.tgz",
            ),
            ("gs://bucket/m.yml", "../a.tgz", "gs://bucket/a.tgz"),
        ];
        for (base, src, want) in cases {
            let yml = format!("src: {src}\nchecksum: {SHA1}\ndest: /srv/app\n");
            let m = parse(&yml, base, &env_of(&[])).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(m.src.as_deref(), Some(*want), "{base} + {src}");
        }
        let e = parse(
            &format!("src: app.tgz\nchecksum: {SHA1}\ndest: /srv/app\n"),
            "manifest.yml",
            &env_of(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot be resolved"), "{e}");
    }

    #[test]
    fn unknown_keys_collected() {
        let m = ok(&with_src(
            "exclude:\n  - \"*.pid\"\nsrcs: x\ncommands:\n  pree: [\"x\"]\n  post: [\"y\"]\n",
        ));
        assert_eq!(m.unknown_keys, ["exclude", "srcs", "commands.pree"]);
        assert!(m.excludes.is_empty());
        assert_eq!(m.commands.post, ["y"]);
    }

    #[test]
    fn shape_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("# only a comment\n", "empty"),
            ("---\n", "empty"),
            ("- a\n- b\n", "must be a YAML mapping"),
            ("just a string\n", "must be a YAML mapping"),
            ("src: [\n", "YAML"),
            ("src: a\nsrc: b\n", "YAML"),
            ("excludes: \"*.pid\"\n", "YAML"),
            ("commands: [echo]\n", "YAML"),
            ("commands:\n  pre: echo\n", "YAML"),
        ];
        for (yml, want) in cases {
            let e = err(yml);
            assert!(e.contains(want), "{yml:?}: {e}");
            assert!(e.starts_with(&format!("manifest {URL}: ")), "{e}");
        }
    }

    #[test]
    fn scalars_in_lists_stay_as_written() {
        let m = ok(&with_src(
            "excludes: [007, true, 1.50]\ncommands:\n  pre:\n    - 0755\n    - \"echo a: b\"\n",
        ));
        assert_eq!(m.excludes, ["007", "true", "1.50"]);
        assert_eq!(m.commands.pre, ["0755", "echo a: b"]);
    }

    #[test]
    fn commands_env_as_yaml_spells_scalars() {
        let m = ok(&with_src(
            "commands:\n  env:\n    B: 007\n    A: \"x y\"\n    C: true\n    D: 1.50\n    E:\n  pre: [\"true\"]\n",
        ));
        let want: Vec<(String, String)> = [
            ("A", "x y"),
            ("B", "007"),
            ("C", "true"),
            ("D", "1.50"),
            ("E", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(m.commands.env, want);
        assert!(m.unknown_keys.is_empty(), "{:?}", m.unknown_keys);
    }

    #[test]
    fn commands_env_errors() {
        for (yml, needle) in [
            (
                "commands:\n  env:\n    A: [1, 2]\n",
                "value of A must be a string",
            ),
            ("commands:\n  env:\n    A:\n      b: c\n", "not a mapping"),
            ("commands:\n  env:\n    STRETCHER_DEST: x\n", "reserved"),
            ("commands:\n  env: [A]\n", "must be a mapping"),
            ("commands:\n  env:\n    \"A=B\": x\n", "not a valid"),
            ("commands:\n  env:\n    \"A\\0B\": x\n", "not a valid"),
            (
                "commands:\n  env:\n    A: \"x\\0y\"\n",
                "value of A contains a NUL byte",
            ),
        ] {
            let e = err(&with_src(yml));
            assert!(e.contains(needle), "{yml}: {e}");
        }
    }

    #[test]
    fn expires_and_serial() {
        let m = ok(&with_src(""));
        assert_eq!((m.expires, m.serial), (None, None));
        let m = ok(&with_src("expires: 2030-01-02T03:04:05+01:00\nserial: 7\n"));
        assert_eq!(
            m.expires.map(|t| t.to_rfc3339()).as_deref(),
            Some("2030-01-02T02:04:05+00:00")
        );
        assert_eq!(m.serial, Some(7));
        assert!(m.unknown_keys.is_empty());
        assert_eq!(ok(&with_src("serial: 0\n")).serial, Some(0));
        assert_eq!(ok("serial: '12'\n").serial, Some(12));
        for bad in ["-1", "7.5", "0x10", "seven", "99999999999999999999999"] {
            let e = err(&with_src(&format!("serial: {bad}\n")));
            assert!(e.contains("serial"), "{bad}: {e}");
        }
        for bad in ["2030-01-02", "tomorrow", "2030-01-02T03:04:05", "[1]"] {
            let e = err(&with_src(&format!("expires: {bad}\n")));
            assert!(e.contains("expires") || e.contains("YAML"), "{bad}: {e}");
        }
    }

    #[test]
    fn size_is_a_number_of_bytes() {
        assert_eq!(ok(&with_src("")).size, None);
        let m = ok(&with_src("size: 163045120\n"));
        assert_eq!(m.size, Some(163_045_120));
        assert!(m.unknown_keys.is_empty());
        assert_eq!(ok(&with_src("size: 0\n")).size, Some(0));
        assert_eq!(ok(&with_src("size: '0012'\n")).size, Some(12));
        // Empty is unset, as for every key.
        assert_eq!(ok(&with_src("size: ''\n")).size, None);
        for bad in ["-1", "1.5", "1e6", "10M", "0x10", "99999999999999999999999"] {
            let e = err(&with_src(&format!("size: {bad}\n")));
            assert!(e.contains("size"), "{bad}: {e}");
        }
        let e = err(&with_src("size: [1]\n"));
        assert!(e.contains("size") || e.contains("YAML"), "{e}");
    }

    #[test]
    fn toc_is_a_sha256_digest() {
        assert_eq!(ok(&with_src("")).toc, None);
        let hex64 = "9f2c".repeat(16);
        let m = ok(&with_src(&format!("toc: sha256:{hex64}\n")));
        assert!(m.unknown_keys.is_empty());
        let want: Vec<u8> = hex::decode(&hex64).unwrap();
        assert_eq!(m.toc.map(|d| d.to_vec()), Some(want.clone()));
        let upper = ok(&with_src(&format!(
            "toc: sha256:{}\n",
            hex64.to_uppercase()
        )));
        assert_eq!(upper.toc.map(|d| d.to_vec()), Some(want));
        assert_eq!(ok(&with_src("toc: ''\n")).toc, None);
        for bad in [
            hex64.clone(),
            format!("sha1:{hex64}"),
            format!("sha256:{}", &hex64[1..]),
            format!("sha256:{hex64}0"),
            format!("sha256:{}g", &hex64[1..]),
            "sha256:".to_string(),
        ] {
            let e = err(&with_src(&format!("toc: '{bad}'\n")));
            assert!(e.contains("toc") && e.contains("64 hex"), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod release_tests {
    use super::*;

    const URL: &str = "file:///m.yml";

    fn parse_ok(extra: &str) -> Manifest {
        let yml = format!(
            "src: app.tar\nchecksum: {}\ndest: /srv/app\n{extra}",
            "a".repeat(40)
        );
        parse(&yml, URL, &|_| None).unwrap_or_else(|e| panic!("{extra}\n=> {e}"))
    }

    fn parse_err(extra: &str) -> String {
        let yml = format!(
            "src: app.tar\nchecksum: {}\ndest: /srv/app\n{extra}",
            "a".repeat(40)
        );
        match parse(&yml, URL, &|_| None) {
            Err(e) => e.to_string(),
            Ok(m) => panic!("{extra}\n=> accepted: {m:?}"),
        }
    }

    #[test]
    fn release_strategy_and_its_keys() {
        let m = parse_ok("sync_strategy: release\n");
        assert_eq!(m.sync_strategy, Strategy::Release);
        assert_eq!(m.keep_releases, DEFAULT_KEEP_RELEASES);
        assert_eq!(m.releases_dir, Some(PathBuf::from("/srv/app.releases")));
        assert!(m.unknown_keys.is_empty());
        let m = parse_ok("sync_strategy: release\nkeep_releases: 3\nreleases_dir: /data//rel/\n");
        assert_eq!(m.keep_releases, 3);
        assert_eq!(m.releases_dir, Some(PathBuf::from("/data/rel")));
        // the keys mean nothing to the other strategies
        assert_eq!(parse_ok("keep_releases: 2\n").releases_dir, None);
    }

    #[test]
    fn release_keys_are_validated() {
        for (extra, needle) in [
            ("keep_releases: 0", "at least 1"),
            ("keep_releases: -1", "at least 1"),
            ("keep_releases: two", "at least 1"),
            ("releases_dir: rel", "absolute"),
            ("releases_dir: /srv/app", "inside"),
            ("releases_dir: /srv/app/releases", "inside"),
            ("releases_dir: /srv/app/./x/", "inside"),
            ("releases_dir: /", "root"),
            ("releases_dir: /var", "system"),
        ] {
            let e = parse_err(&format!("sync_strategy: release\n{extra}\n"));
            assert!(e.contains(needle), "{extra}: {e}");
        }
        assert!(parse_err("sync_strategy: releases\n").contains("invalid strategy"));
    }
}
