//! The releases store of `sync_strategy: release` (SPEC §14): every deploy unpacks into
//! a new directory of `RELEASES_DIR`, and `dest` is a symbolic link switched to it by
//! one `rename(2)`.
//!
//! Its one job is the releases layout: naming a release, its metadata, the listing,
//! the atomic switch and the switch back, marking a release bad, the cleanup, and the
//! rollback and listing behind the `releases` and `rollback` subcommands, as library
//! calls. One deploy's use of the store (unpacking into the partial release, the
//! switch around `post`) is the strategy's, `land/release.rs`.
//!
//! Layout of `RELEASES_DIR` (one per dest):
//! - `ID/`: a complete release, ID = `YYYYmmddTHHMMSSZ-` + 8 hex digits of the checksum
//!   (`-2`, `-3`… on a collision). It only ever appears by the rename of `.ID.partial`.
//! - `ID.json`: the release's metadata ([`Meta`]: checksum, sequence number, created and
//!   deployed times, the bad flag), written (temp file + rename) before the release
//!   directory gets its name, rewritten when the release is confirmed or marked bad.
//! - `.ID.partial/` (being unpacked), `.ID.removing/` (being deleted), `.ID.json.tmp`:
//!   leftovers of a killed run, removed by the next deploy or rollback.
//!
//! Beside `dest`, the new link is made as `.NAME.stretcher-switch` and renamed over
//! `dest`: a reader of `dest/...` sees the old or the new release, never neither.
//!
//! It must never change the live release's files (they share inodes with the new one:
//! nothing here writes a linked file), never remove the live or the previous good
//! release, and never leave `dest` pointing at anything but a complete release.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;
use crate::logln;
use crate::manifest::Manifest;
use crate::record;

const PARTIAL: &str = ".partial";
const REMOVING: &str = ".removing";
const META_EXT: &str = ".json";
const META_TMP: &str = ".json.tmp";

/// What is stored in `RELEASES_DIR/ID.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The format version of this file (1).
    pub schema: u32,
    /// The release ID: its directory's name in the releases directory.
    pub id: String,
    /// The dest this release was made for.
    pub dest: PathBuf,
    /// The archive's checksum (lower-case hex).
    pub checksum: String,
    /// Grows by one per release made in this directory: the order of releases.
    pub seq: u64,
    /// When it was unpacked (RFC 3339, UTC).
    pub created: String,
    /// When its deploy succeeded (`post` included); `None` while unconfirmed.
    pub deployed: Option<String>,
    /// Marked bad: its `post` failed, or a rollback left it.
    pub bad: bool,
    /// Why it is bad.
    pub reason: Option<String>,
    /// The settings it was deployed with, as the deploy index spells them (so that a
    /// rollback can write the index of the release it switches to).
    #[serde(default)]
    pub index: Option<crate::index::Header>,
}

impl Meta {
    /// Confirmed by a successful deploy and not marked bad since.
    pub(crate) fn is_good(&self) -> bool {
        self.deployed.is_some() && !self.bad
    }
}

/// One complete release of a releases directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Release {
    pub id: String,
    pub meta: Meta,
}

/// What `dest` is before a release deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DestState {
    /// Absent: the first deploy creates the link.
    Absent,
    /// An empty directory: replaced by the link.
    EmptyDir,
    /// A link to the release of this ID in the releases directory.
    Live(String),
}

/// Whether `name` has the shape of a release ID.
pub(crate) fn is_id(name: &str) -> bool {
    let b = name.as_bytes();
    if b.len() < 25 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let base = digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..25]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    match &name[25..] {
        "" => base,
        rest => {
            base && rest.len() >= 2
                && rest.starts_with('-')
                && rest[1..].bytes().all(|c| c.is_ascii_digit())
                && !rest[1..].starts_with('0')
        }
    }
}

fn release_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::Release {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads what `dest` is. A non-empty directory, a file, or a link to anything but a
/// release of `dir` is an error naming it (SPEC §14: move it away to adopt releases).
pub(crate) fn dest_state(dest: &Path, dir: &Path) -> Result<DestState> {
    let m = match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DestState::Absent),
        other => other.ctx("stat", dest)?,
    };
    if m.is_dir() {
        let mut entries = fs::read_dir(dest).ctx("read", dest)?;
        if entries.next().is_none() {
            return Ok(DestState::EmptyDir);
        }
        return Err(release_error(
            dest,
            "dest is a non-empty directory, not a release link: move it away to adopt sync_strategy release",
        ));
    }
    if !m.file_type().is_symlink() {
        return Err(release_error(
            dest,
            "dest is a file, not a release link: move it away to adopt sync_strategy release",
        ));
    }
    let target = fs::read_link(dest).ctx("readlink", dest)?;
    match live_id(&target, dir) {
        Some(id) => Ok(DestState::Live(id)),
        None => Err(release_error(
            dest,
            format!(
                "dest links to {}, which is not a release in {}",
                target.display(),
                dir.display()
            ),
        )),
    }
}

/// The ID when `target` is `dir/ID` and that release is complete.
fn live_id(target: &Path, dir: &Path) -> Option<String> {
    let id = target.file_name()?.to_str()?;
    (target.parent() == Some(dir) && is_id(id) && dir.join(id).is_dir()).then(|| id.to_string())
}

/// The releases of `dir` that have metadata, newest first (by sequence number).
/// A missing directory has none.
pub(crate) fn list(dir: &Path) -> Result<Vec<Release>> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.ctx("read", dir)?,
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.ctx("read", dir)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_id(&name) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Some(meta) = read_meta(dir, &name) {
            out.push(Release { id: name, meta });
        }
    }
    out.sort_by(|a, b| b.meta.seq.cmp(&a.meta.seq).then(b.id.cmp(&a.id)));
    Ok(out)
}

/// `RELEASES_DIR/.ID.partial`: where release `id` is unpacked until it is complete.
pub(crate) fn partial_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".{id}{PARTIAL}"))
}

fn meta_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}{META_EXT}"))
}

pub(crate) fn read_meta(dir: &Path, id: &str) -> Option<Meta> {
    let text = fs::read(meta_path(dir, id)).ok()?;
    serde_json::from_slice::<Meta>(&text)
        .ok()
        .filter(|m| m.id == id)
}

/// Writes `dir/ID.json` atomically (temp file, then rename).
pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let tmp = dir.join(format!(".{}{META_TMP}", meta.id));
    let path = meta_path(dir, &meta.id);
    let mut text = serde_json::to_vec_pretty(meta)
        .map_err(|e| release_error(&path, format!("encode metadata: {e}")))?;
    text.push(b'\n');
    let mut f = fs::File::create(&tmp).ctx("create", &tmp)?;
    f.write_all(&text).ctx("write", &tmp)?;
    drop(f);
    fs::rename(&tmp, &path).ctx("rename onto", &path)
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The ID of a release made now from `checksum`: the first of `BASE`, `BASE-2`, … that
/// names nothing in `dir` (release, partial or metadata).
pub(crate) fn next_id(dir: &Path, checksum: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let base = format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &checksum[..8]);
    let taken = |id: &str| {
        dir.join(id).symlink_metadata().is_ok()
            || dir
                .join(format!(".{id}{PARTIAL}"))
                .symlink_metadata()
                .is_ok()
            || meta_path(dir, id).symlink_metadata().is_ok()
    };
    if !taken(&base) {
        return base;
    }
    (2u64..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !taken(id))
        .unwrap_or(base) // invariant: the range is unbounded, so `find` always finds one
}

/// The temporary name of the new link beside dest.
fn switch_path(dest: &Path) -> Result<PathBuf> {
    let (parent, name) = crate::state::parent_and_name(dest)?;
    let mut n = OsString::from(".");
    n.push(name);
    n.push(".stretcher-switch");
    Ok(parent.join(n))
}

/// Points `dest` at `target` by renaming a new symlink over it: one atomic
/// `rename(2)`. An empty directory at dest is removed first (rename cannot replace a
/// directory by a link); a non-empty one is an error and nothing changes.
pub(crate) fn switch(dest: &Path, target: &Path) -> Result<()> {
    let tmp = switch_path(dest)?;
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io("remove", &tmp, e)),
        _ => {}
    }
    std::os::unix::fs::symlink(target, &tmp).ctx("create symlink", &tmp)?;
    if fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        if let Err(e) = fs::remove_dir(dest) {
            let _ = fs::remove_file(&tmp);
            return Err(release_error(
                dest,
                format!("dest is a directory that cannot be replaced by the release link: {e}"),
            ));
        }
    }
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("rename onto", dest, e));
    }
    // Best effort: make the switch durable.
    if let Some(parent) = dest.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Removes what a killed run left: `.ID.partial` and `.ID.removing` directories,
/// metadata temp files, metadata without a release, and the switch link beside dest.
/// The caller holds dest's lock.
pub(crate) fn remove_leftovers(dir: &Path, dest: &Path) {
    if let Ok(tmp) = switch_path(dest) {
        if fs::remove_file(&tmp).is_ok() {
            logln!("removed leftover of an earlier run: {}", tmp.display());
        }
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let path = entry.path();
        let hidden_id = |suffix: &str| {
            name.strip_prefix('.')
                .and_then(|n| n.strip_suffix(suffix))
                .is_some_and(is_id)
        };
        let leftover = if hidden_id(PARTIAL) || hidden_id(REMOVING) {
            entry.file_type().is_ok_and(|t| t.is_dir())
        } else if hidden_id(META_TMP) {
            true
        } else if let Some(id) = name.strip_suffix(META_EXT).filter(|id| is_id(id)) {
            !dir.join(id).is_dir()
        } else {
            false
        };
        if !leftover {
            continue;
        }
        logln!("removing leftover of an earlier run: {}", path.display());
        let result = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            crate::staging::make_writable_and_remove(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = result {
            logln!("warning: could not remove {}: {e}", path.display());
        }
    }
}

/// Deletes one release: renamed away first (so `dir/ID` is complete or absent at any
/// moment), then its metadata, then the tree.
pub(crate) fn remove_release(dir: &Path, id: &str) -> Result<()> {
    let away = dir.join(format!(".{id}{REMOVING}"));
    fs::rename(dir.join(id), &away).ctx("rename", dir.join(id))?;
    match fs::remove_file(meta_path(dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::io("remove", meta_path(dir, id), e))
        }
        _ => {}
    }
    crate::staging::make_writable_and_remove(&away).ctx("remove", &away)
}

/// The releases a cleanup keeps (SPEC §14): the live one, the previous good one (the
/// newest good release older than the live one), and the `keep` newest good ones.
/// `releases` is newest first.
pub(crate) fn to_keep(releases: &[Release], live: &str, keep: u32) -> HashSet<String> {
    let mut kept: HashSet<String> = HashSet::new();
    kept.insert(live.to_string());
    let live_seq = releases.iter().find(|r| r.id == live).map(|r| r.meta.seq);
    if let Some(seq) = live_seq {
        if let Some(prev) = releases
            .iter()
            .find(|r| r.meta.seq < seq && r.meta.is_good())
        {
            kept.insert(prev.id.clone());
        }
    }
    let newest = releases.iter().filter(|r| r.meta.is_good());
    kept.extend(newest.take(keep as usize).map(|r| r.id.clone()));
    kept
}

/// After a successful switch to `live`: removes the releases [`to_keep`] does not keep
/// (older good ones beyond `keep`, bad ones, unconfirmed ones left by a killed run).
/// A release that cannot be removed is a warning, not a failed deploy.
pub(crate) fn cleanup(dir: &Path, live: &str, keep: u32) -> Result<()> {
    let releases = list(dir)?;
    let kept = to_keep(&releases, live, keep);
    for r in releases.iter().filter(|r| !kept.contains(&r.id)) {
        let why = if r.meta.bad {
            "bad"
        } else if r.meta.deployed.is_none() {
            "never confirmed"
        } else {
            "older than the kept ones"
        };
        logln!("Removing release {} ({why})", r.id);
        if let Err(e) = remove_release(dir, &r.id) {
            logln!("warning: could not remove release {}: {e}", r.id);
        }
    }
    Ok(())
}

/// Sets or clears the bad flag of a release (no-op without metadata).
pub(crate) fn mark(dir: &Path, id: &str, bad: bool, reason: Option<String>) -> Result<()> {
    let Some(mut meta) = read_meta(dir, id) else {
        logln!("warning: release {id} has no metadata in {}", dir.display());
        return Ok(());
    };
    meta.bad = bad;
    meta.reason = reason;
    write_meta(dir, &meta)
}

/// After a failed `post`: dest back to the release it pointed at, or removed on a
/// first deploy. Logged; a failure here is logged too (the deploy fails anyway).
pub(crate) fn switch_back(dest: &Path, dir: &Path, previous: Option<&str>) {
    let result = match previous {
        Some(p) => switch(dest, &dir.join(p))
            .map(|()| format!("switched {} back to release {p}", dest.display())),
        None => fs::remove_file(dest)
            .ctx("remove", dest)
            .map(|()| format!("removed {} again (first release deploy)", dest.display())),
    };
    match result {
        Ok(msg) => logln!("post failed: {msg}"),
        Err(e) => logln!("post failed, and the switch back failed too: {e}"),
    }
}

/// The manifest's releases directory (validation sets it for the release strategy).
pub(crate) fn releases_dir(manifest: &Manifest, dest: &Path) -> Result<PathBuf> {
    manifest
        .releases_dir
        .clone()
        .ok_or_else(|| release_error(dest, "no releases_dir for the release strategy"))
}

/// `--dry-run` of a release deploy: what the new release changes against the live one
/// (dest-relative, as `deploy`'s dry run prints them), and the switch it would make,
/// as (the live release's directory, or None on a first deploy; the switch line's
/// path and target).
pub(crate) fn dry_run_target(
    manifest: &Manifest,
    dest: &Path,
) -> Result<(Option<PathBuf>, PathBuf)> {
    let dir = releases_dir(manifest, dest)?;
    let live = match dest_state(dest, &dir)? {
        DestState::Live(id) => Some(dir.join(id)),
        _ => None,
    };
    let checksum = manifest
        .checksum
        .as_ref()
        .map(|c| c.hex().to_ascii_lowercase())
        .unwrap_or_default();
    let id = next_id(&dir, &checksum, chrono::Utc::now());
    logln!(
        "Dry run: sync_strategy release would unpack into {} and switch {} to it (from {})",
        dir.join(&id).display(),
        dest.display(),
        live.as_deref()
            .map(|l| l.display().to_string())
            .unwrap_or_else(|| "nothing".into())
    );
    Ok((live, dir.join(id)))
}

/// Where `dest`'s releases are, offline: the directory of the release it links to, or
/// `DEST.releases` when dest is not a link.
fn dir_of(dest: &Path) -> PathBuf {
    if let Ok(target) = fs::read_link(dest) {
        if let Some(parent) = target.parent().filter(|p| p.is_absolute()) {
            return parent.to_path_buf();
        }
    }
    let mut d = dest.as_os_str().to_os_string();
    d.push(".releases");
    PathBuf::from(d)
}

/// `stretcher releases DEST`: one line per release, newest first:
/// `ID  CHECKSUM(12)  DEPLOYED  [live] [bad]` (DEPLOYED `-` while unconfirmed). The
/// metadata's text is shown through `log::shown_text` (SPEC §17): whatever a
/// metadata file holds, each release is one line, and nothing panics.
pub(crate) fn releases_text(dest: &Path) -> Result<String> {
    let dir = dir_of(dest);
    let releases = list(&dir)?;
    if releases.is_empty() {
        return Err(release_error(
            dest,
            format!("no releases in {}", dir.display()),
        ));
    }
    let live = fs::read_link(dest).ok().and_then(|t| live_id(&t, &dir));
    let mut out = String::new();
    for r in &releases {
        // the first 12 characters, never a byte slice (it could cut a character)
        let checksum: String = r.meta.checksum.chars().take(12).collect();
        let mut line = format!(
            "{}  {:12}  {}",
            r.id,
            crate::log::shown_text(checksum),
            r.meta
                .deployed
                .as_deref()
                .map_or("-".into(), crate::log::shown_text)
        );
        if live.as_deref() == Some(r.id.as_str()) {
            line.push_str("  live");
        }
        if r.meta.bad {
            line.push_str("  bad");
        }
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// What a rollback did: dest links to `to` now. It prints nothing; the command
/// tells the user.
#[derive(Debug)]
pub(crate) struct RolledBack {
    pub dir: PathBuf,
    /// The release left (now marked bad).
    pub from: String,
    /// The release dest now points at.
    pub to: Release,
    /// `to` was marked bad and was chosen by ID: it is good again.
    pub revived: bool,
    /// Why marking the releases failed after the switch (dest is switched all the
    /// same); `None` when the rollback is complete.
    pub mark_error: Option<Error>,
}

/// `stretcher rollback DEST [--to ID]` (SPEC §14): switches dest to release `to`, or to
/// the newest good release older than the live one, and marks the one left bad. No
/// hook, no network; holds dest's lock. Removes nothing but a killed run's leftovers.
/// Prints nothing: an error before the switch is the `Err`; after it, what was done
/// (and a failure to mark the releases, `mark_error`) is the `RolledBack`.
pub(crate) fn rollback(dest: &Path, to: Option<&str>, env: crate::Env) -> Result<RolledBack> {
    let _lock = crate::state::lock_dest(dest, env)?;
    let target = fs::read_link(dest).map_err(|_| {
        release_error(
            dest,
            "dest is not a release link: nothing to roll back (sync_strategy release)",
        )
    })?;
    let dir = dir_of(dest);
    let live = live_id(&target, &dir).ok_or_else(|| {
        release_error(
            dest,
            format!("dest links to {}, which is not a release", target.display()),
        )
    })?;
    remove_leftovers(&dir, dest);
    let releases = list(&dir)?;
    let live_seq = releases
        .iter()
        .find(|r| r.id == live)
        .map(|r| r.meta.seq)
        .unwrap_or(u64::MAX);
    let pick = match to {
        Some(id) if id == live => {
            return Err(release_error(dest, format!("release {id} is already live")))
        }
        Some(id) => releases.iter().find(|r| r.id == id).ok_or_else(|| {
            release_error(dest, format!("unknown release {id:?} in {}", dir.display()))
        })?,
        None => releases
            .iter()
            .find(|r| r.meta.seq < live_seq && r.meta.is_good())
            .ok_or_else(|| {
                release_error(
                    dest,
                    format!("nothing to roll back to: no good release older than {live}"),
                )
            })?,
    };
    switch(dest, &dir.join(&pick.id))?;
    let mut done = RolledBack {
        dir,
        from: live,
        to: pick.clone(),
        revived: false,
        mark_error: None,
    };
    if let Err(e) = mark(
        &done.dir,
        &done.from,
        true,
        Some("left by a rollback".into()),
    ) {
        done.mark_error = Some(e);
        return Ok(done);
    }
    if done.to.meta.bad {
        // Chosen by ID: the operator vouches for it again.
        done.revived = true;
        if let Err(e) = mark(&done.dir, &done.to.id, false, None) {
            done.mark_error = Some(e);
            return Ok(done);
        }
        done.to.meta.bad = false;
        done.to.meta.reason = None;
    }
    Ok(done)
}

/// After a rollback: the deploy record (origin `rollback`, SPEC §11) and the index of
/// the release now live, so that `verify` and the redeploy that downloads nothing see
/// it. The manifest URL and src come from the last record that deployed that release.
/// Failures are warnings: the switch stands.
pub(crate) fn record_rollback(
    state: &Path,
    dest: &Path,
    r: &RolledBack,
    started: chrono::DateTime<chrono::Utc>,
) {
    let key = record::key_for_dest(dest);
    let history = record::history(state, &key);
    let made = history
        .iter()
        .rev()
        .find(|h| h.release.as_deref() == Some(r.to.id.as_str()));
    let draft = record::Draft::rollback(
        dest,
        &r.to.id,
        &r.to.meta.checksum,
        started,
        made,
        history.last(),
    );
    record::commit(state, draft, None);
    let filter = match r.to.meta.index.as_ref().map(|h| h.filter()) {
        Some(Ok(f)) => f,
        _ => Filter::empty(),
    };
    match crate::index::scan(&r.dir.join(&r.to.id), &filter) {
        Ok(entries) => match &r.to.meta.index {
            Some(settings) => crate::index::save(state, dest, settings, &entries),
            None => logln!("warning: release {} has no index settings", r.to.id),
        },
        Err(e) => logln!("warning: cannot index release {}: {e}", r.to.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, seq: u64, good: bool, bad: bool) -> Release {
        Release {
            id: id.into(),
            meta: Meta {
                schema: 1,
                id: id.into(),
                dest: "/srv/app".into(),
                checksum: "ab".repeat(20),
                seq,
                created: "t".into(),
                deployed: good.then(|| "t".into()),
                bad,
                reason: None,
                index: None,
            },
        }
    }

    #[test]
    fn ids() {
        assert!(is_id("20261201T220000Z-0123abcd"));
        assert!(is_id("20261201T220000Z-0123abcd-2"));
        assert!(is_id("20261201T220000Z-0123abcd-17"));
        for bad in [
            "20261201T220000Z-0123abc",
            "20261201T220000Z-0123ABCD",
            "20261201X220000Z-0123abcd",
            "20261201T220000Z-0123abcd-",
            "20261201T220000Z-0123abcd-02",
            "20261201T220000Z-0123abcd.partial",
            "x0261201T220000Z-0123abcd",
        ] {
            assert!(!is_id(bad), "{bad}");
        }
    }

    #[test]
    fn next_id_counts_collisions() {
        let t = tempfile::tempdir().unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T22:00:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let sum = "0123abcdef".repeat(4);
        let a = next_id(t.path(), &sum, now);
        assert_eq!(a, "20261201T220005Z-0123abcd");
        fs::create_dir(t.path().join(&a)).unwrap();
        assert_eq!(next_id(t.path(), &sum, now), format!("{a}-2"));
        fs::create_dir(t.path().join(format!(".{a}-2.partial"))).unwrap();
        assert_eq!(next_id(t.path(), &sum, now), format!("{a}-3"));
    }

    #[test]
    fn keep_set() {
        // newest first: r6 live; r5 bad; r4 unconfirmed; r3, r2, r1 good
        let rs = vec![
            meta("r6", 6, true, false),
            meta("r5", 5, true, true),
            meta("r4", 4, false, false),
            meta("r3", 3, true, false),
            meta("r2", 2, true, false),
            meta("r1", 1, true, false),
        ];
        let k = |live, keep| {
            let mut v: Vec<String> = to_keep(&rs, live, keep).into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(k("r6", 1), ["r3", "r6"]);
        assert_eq!(k("r6", 3), ["r2", "r3", "r6"]);
        // a live release older than good ones (after a rollback)
        assert_eq!(k("r2", 1), ["r1", "r2", "r6"]);
    }
}
