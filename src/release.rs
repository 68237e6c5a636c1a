//! The `release` strategy (SPEC §14): every deploy unpacks into a new directory of
//! `RELEASES_DIR`, and `dest` is a symbolic link switched to it by one `rename(2)`.
//!
//! Its one job is the releases layout: naming a release, unpacking into
//! `RELEASES_DIR/.ID.partial` with unchanged files hard-linked from the live release
//! (the unpack's quick check, `UnpackOptions::link_unchanged`), the atomic switch and
//! the switch back when `post` fails, the cleanup, and the offline `releases` and
//! `rollback` subcommands.
//!
//! The deploy index of a release (SPEC §11) is written in the same pass as the unpack:
//! it is the unpack's listing of what it wrote (`Staged::written`), with the excludes
//! applied to that listing (their files removed from the partial release, nothing
//! walked) and the release directory itself read once after its rename.
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
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::entry::Kind;
use crate::error::{Error, IoContext, Result};
use crate::fetch::{self, FetchOptions};
use crate::filter::Filter;
use crate::hooks::HookEnv;
use crate::logln;
use crate::manifest::Manifest;
use crate::record::{self, Step};
use crate::redeploy;
use crate::unpack::{self, UnpackOptions};
use crate::verify::Checksum;

/// The default mode of a release directory when neither the manifest nor the archive says.
const DEFAULT_MODE: u32 = 0o755;
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

fn meta_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}{META_EXT}"))
}

fn read_meta(dir: &Path, id: &str) -> Option<Meta> {
    let text = fs::read(meta_path(dir, id)).ok()?;
    serde_json::from_slice::<Meta>(&text)
        .ok()
        .filter(|m| m.id == id)
}

/// Writes `dir/ID.json` atomically (temp file, then rename).
fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
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

fn now_rfc3339() -> String {
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
fn remove_release(dir: &Path, id: &str) -> Result<()> {
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
fn mark(dir: &Path, id: &str, bad: bool, reason: Option<String>) -> Result<()> {
    let Some(mut meta) = read_meta(dir, id) else {
        logln!("warning: release {id} has no metadata in {}", dir.display());
        return Ok(());
    };
    meta.bad = bad;
    meta.reason = reason;
    write_meta(dir, &meta)
}

/// The partial release being unpacked: removed on drop unless it got its name.
struct Partial {
    path: PathBuf,
    armed: bool,
}

impl Partial {
    fn create(path: &Path) -> Result<Partial> {
        if path.symlink_metadata().is_ok() {
            crate::staging::make_writable_and_remove(path).ctx("remove", path)?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .ctx("create directory", path)?;
        Ok(Partial {
            path: path.to_path_buf(),
            armed: true,
        })
    }
}

use std::os::unix::fs::DirBuilderExt;

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = crate::staging::make_writable_and_remove(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                logln!("warning: could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Removes the excluded entries of a freshly unpacked tree (an excluded directory with
/// its subtree) and drops them from `listed`, the unpack's listing of that tree (sorted
/// by path): the filter is applied to the listing, as the sync's walk would apply it,
/// not to a second walk. The mtimes of the directories they were in are restored, and
/// those directories listed again as they are now. Answers how many were removed.
fn remove_excluded(root: &Path, filter: &Filter, listed: &mut Vec<Entry>) -> Result<usize> {
    if filter.is_empty() {
        return Ok(0);
    }
    // Sorted by path, a directory comes before everything below it.
    let mut pruned: HashSet<Vec<u8>> = HashSet::new();
    let mut doomed: Vec<(Vec<u8>, bool)> = Vec::new();
    listed.retain(|e| {
        let is_dir = e.kind() == Kind::Dir;
        let parent = e
            .path
            .iter()
            .rposition(|&b| b == b'/')
            .map(|i| &e.path[..i]);
        let gone = parent.is_some_and(|p| pruned.contains(p))
            || filter.is_excluded(Path::new(OsStr::from_bytes(&e.path)), is_dir);
        if gone {
            if is_dir {
                pruned.insert(e.path.to_vec());
            }
            if !parent.is_some_and(|p| pruned.contains(p)) {
                doomed.push((e.path.to_vec(), is_dir));
            }
        }
        !gone
    });
    let mut parents: Vec<PathBuf> = Vec::new();
    for (rel, is_dir) in &doomed {
        let path = root.join(OsStr::from_bytes(rel));
        let parent = path.parent().unwrap_or(root).to_path_buf();
        let mtime = fs::symlink_metadata(&parent)
            .ok()
            .map(|m| filetime::FileTime::from_last_modification_time(&m));
        if *is_dir {
            crate::staging::make_writable_and_remove(&path).ctx("remove excluded", &path)?;
        } else {
            fs::remove_file(&path).ctx("remove excluded", &path)?;
        }
        if let Some(t) = mtime {
            let _ = filetime::set_file_mtime(&parent, t);
        }
        if parent != root && !parents.contains(&parent) {
            parents.push(parent);
        }
    }
    // The directories they were in, as they are now (the root is read after the rename).
    for parent in parents {
        let rel = parent.strip_prefix(root).unwrap_or(&parent);
        let rel = rel.as_os_str().as_bytes();
        if let Ok(i) = listed.binary_search_by(|e| e.path[..].cmp(rel)) {
            let m = fs::symlink_metadata(&parent).ctx("stat", &parent)?;
            listed[i].meta = crate::entry::Meta::from(&m);
        }
    }
    Ok(doomed.len())
}

/// The index of a release from the unpack's listing of it (sorted, excluded entries
/// dropped): the release directory itself, read once now that it has its name and mode,
/// and everything below it. Equal to what `index::scan` of the release answers.
fn release_entries(release: &Path, mut listed: Vec<Entry>) -> Result<Vec<Entry>> {
    let m = fs::metadata(release).ctx("stat", release)?;
    let meta = crate::entry::Meta::from(&m);
    listed.insert(0, Entry::new(Path::new(""), meta, None));
    Ok(listed)
}

/// What a release deploy did, for the log and the deploy record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deployed {
    /// The new release's ID (marked bad when `post` failed).
    pub id: String,
    /// The release dest pointed at before, if any.
    pub previous: Option<String>,
}

/// What a release deploy shares with the generic deploy: the record in the making,
/// the state directory (for the index), the settings the index is written with, and
/// whether `pre` already ran (a skipped redeploy that found dest changed after it).
pub(crate) struct Context<'a, 'w> {
    pub draft: &'a mut record::Draft,
    pub state: Option<&'a Path>,
    pub wanted: &'a redeploy::Wanted<'w>,
    pub pre_done: bool,
}

/// A release deploy, from the verified download to the cleanup (SPEC §14). The caller
/// holds dest's lock; a dry run is handled by the generic path (not here).
pub(crate) fn deploy(
    manifest: &Manifest,
    fetch_opts: &FetchOptions,
    hook_env: &HookEnv,
    (src, checksum, dest): (&str, &Checksum, &Path),
    ctx: Context,
) -> Result<Deployed> {
    let Context {
        draft,
        state,
        wanted,
        pre_done,
    } = ctx;
    let slot = Slot::take(manifest, dest, checksum)?;
    let (mut partial, mut staged) = slot.download(src, checksum, fetch_opts, draft)?;
    draft.step = Step::Unpack;
    let unpacked = slot.finish_partial(manifest, &mut staged)?;

    if !pre_done {
        draft.step = Step::Pre;
        draft.run_hooks("pre", &manifest.commands.pre, hook_env)?;
    }

    // `pre` may have changed dest: check again, right before the switch.
    draft.step = Step::Sync;
    let before = dest_state(dest, &slot.dir)?;
    let previous = match before {
        DestState::Live(id) => Some(id),
        _ => None,
    };
    let meta = slot.meta(dest, checksum, wanted, unpacked.exclude_text);
    let release = slot.complete(&meta, &mut partial)?;
    slot.go_live(dest, &release, previous.as_deref())?;
    draft.release = Some(slot.id.clone());
    // What changed against the previous release (read before a cleanup can take it).
    let entries = release_entries(&release, unpacked.listed);
    if let Ok(new) = &entries {
        let old = slot.previous_entries(state, dest, previous.as_deref(), &unpacked.filter);
        draft.changes = Some(changes(&old, new));
    }

    draft.step = Step::Post;
    slot.post(draft, manifest, hook_env, dest, previous.as_deref())?;
    slot.confirm(meta, state, dest, entries, manifest.keep_releases)?;
    Ok(Deployed {
        id: slot.id,
        previous,
    })
}

/// Where a release deploy puts its new release, decided before anything is downloaded.
struct Slot {
    /// The releases directory.
    dir: PathBuf,
    /// The release dest pointed at when the deploy began (the unpack's probe).
    live: Option<String>,
    /// The new release's sequence number and ID.
    seq: u64,
    id: String,
    /// `RELEASES_DIR/.ID.partial`, where the unpack writes.
    partial_path: PathBuf,
}

/// The partial release once unpacked: its filter, the rule file's text (for the
/// index) and the listing of what is in it, excludes left out.
struct Unpacked {
    filter: Filter,
    exclude_text: Option<String>,
    listed: Vec<Entry>,
}

impl Slot {
    /// The releases directory made (a killed run's leftovers removed), and the new
    /// release's ID and sequence number.
    fn take(manifest: &Manifest, dest: &Path, checksum: &Checksum) -> Result<Slot> {
        let dir = releases_dir(manifest, dest)?;
        let before = dest_state(dest, &dir)?;
        fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        remove_leftovers(&dir, dest);
        let live = match &before {
            DestState::Live(id) => Some(id.clone()),
            _ => None,
        };
        let existing = list(&dir)?;
        let seq = existing.iter().map(|r| r.meta.seq).max().unwrap_or(0) + 1;
        let id = next_id(&dir, checksum.hex(), chrono::Utc::now());
        let partial_path = dir.join(format!(".{id}{PARTIAL}"));
        Ok(Slot {
            dir,
            live,
            seq,
            id,
            partial_path,
        })
    }

    /// Downloads and unpacks into the partial release, unchanged files hard-linked
    /// from the live release; the record's `downloaded_bytes` whatever the outcome.
    fn download(
        &self,
        src: &str,
        checksum: &Checksum,
        fetch_opts: &FetchOptions,
        draft: &mut record::Draft,
    ) -> Result<(Partial, unpack::Staged)> {
        logln!("Loading URL {src}");
        let same_owner = nix::unistd::geteuid().is_root();
        draft.step = Step::Download;
        let downloaded = std::sync::atomic::AtomicU64::new(0);
        let verified = fetch::stream(src, checksum, fetch_opts, |reader| {
            downloaded.store(0, std::sync::atomic::Ordering::Relaxed);
            let reader = &mut fetch::Counting {
                inner: reader,
                count: &downloaded,
            };
            let partial = Partial::create(&self.partial_path)?;
            let unpack_opts = UnpackOptions {
                same_owner,
                label: src.to_string(),
                link_unchanged: true,
            };
            let mut probe =
                (self.live.as_ref()).map(|l| crate::sync::DestProbe::new(self.dir.join(l)));
            let probe = probe.as_mut().map(|p| p as &mut dyn unpack::Unchanged);
            logln!("Extract archive: {src} to {}", self.partial_path.display());
            let staged = unpack::unpack(reader, &self.partial_path, &unpack_opts, probe)?;
            Ok((partial, staged))
        });
        draft.downloaded_bytes = Some(downloaded.load(std::sync::atomic::Ordering::Relaxed));
        Ok(verified?.into_inner())
    }

    /// The unpacked partial release: logged, its excludes removed (and left out of its
    /// listing), its mode set.
    fn finish_partial(&self, manifest: &Manifest, staged: &mut unpack::Staged) -> Result<Unpacked> {
        let (id, partial_path) = (&self.id, &self.partial_path);
        logln!(
            "Unpacked {} entries into release {id} ({} unchanged files linked from {})",
            staged.entries,
            staged.reused.len(),
            self.live.as_deref().unwrap_or("no live release")
        );
        // Unchanged files are hard links in the partial release: every rule file is there.
        let (filter, exclude_text) =
            crate::staging::load_filter(manifest, partial_path, &staged.reused, partial_path)?;
        // What the unpack wrote is the release's listing (SPEC §11: no second walk).
        let mut listed = std::mem::take(&mut staged.written);
        let excluded = remove_excluded(partial_path, &filter, &mut listed)?;
        if excluded > 0 {
            logln!("Left {excluded} excluded entries out of release {id}");
        }
        let mode = manifest
            .dest_mode
            .or(staged.root_mode)
            .unwrap_or(DEFAULT_MODE);
        logln!("Set release mode {mode:04o}");
        fs::set_permissions(partial_path, fs::Permissions::from_mode(mode))
            .ctx("chmod", partial_path)?;
        Ok(Unpacked {
            filter,
            exclude_text,
            listed,
        })
    }

    /// The new release's metadata (not yet deployed), with the settings its index is
    /// written with.
    fn meta(
        &self,
        dest: &Path,
        checksum: &Checksum,
        wanted: &redeploy::Wanted<'_>,
        exclude_text: Option<String>,
    ) -> Meta {
        Meta {
            schema: 1,
            id: self.id.clone(),
            dest: dest.to_path_buf(),
            checksum: checksum.hex().to_ascii_lowercase(),
            seq: self.seq,
            created: now_rfc3339(),
            deployed: None,
            bad: false,
            reason: None,
            index: Some(crate::index::Header {
                checksum: wanted.checksum.to_string(),
                strategy: wanted.strategy.to_string(),
                dest_mode: wanted.dest_mode,
                excludes: wanted.excludes.to_vec(),
                exclude_from: wanted.exclude_from.map(str::to_string),
                exclude_from_text: exclude_text,
                euid: wanted.euid,
                written: String::new(),
                entries: 0,
            }),
        }
    }

    /// The metadata written, then the partial release renamed to its ID: complete.
    fn complete(&self, meta: &Meta, partial: &mut Partial) -> Result<PathBuf> {
        write_meta(&self.dir, meta)?;
        let release = self.dir.join(&self.id);
        fs::rename(&self.partial_path, &release).ctx("rename onto", &release)?;
        partial.armed = false;
        logln!("Release {} is complete in {}", self.id, self.dir.display());
        Ok(release)
    }

    /// The atomic switch of dest to the complete release; on a failure the release is
    /// taken away again (it was never live).
    fn go_live(&self, dest: &Path, release: &Path, previous: Option<&str>) -> Result<()> {
        if let Err(e) = switch(dest, release) {
            // Not live: take the new release away again.
            let _ = remove_release(&self.dir, &self.id);
            return Err(e);
        }
        logln!(
            "Switched {} to release {}{}",
            dest.display(),
            self.id,
            previous.map(|p| format!(" (was {p})")).unwrap_or_default()
        );
        Ok(())
    }

    /// The listing of the previous release: its index when the state directory has it
    /// (cheaper than a walk), else a walk of it; none on a first deploy.
    fn previous_entries(
        &self,
        state: Option<&Path>,
        dest: &Path,
        previous: Option<&str>,
        filter: &Filter,
    ) -> Vec<Entry> {
        let dir = &self.dir;
        let indexed = |p: &str| {
            let sum = read_meta(dir, p)?.checksum;
            let (h, e) = crate::index::read(state?, &record::key_for_dest(dest)).ok()??;
            (h.checksum == sum && h.strategy == "release").then_some(e)
        };
        previous
            .and_then(|p| indexed(p).or_else(|| crate::index::scan(&dir.join(p), filter).ok()))
            .unwrap_or_default()
    }

    /// `post`; when it fails, dest flipped back and the new release marked bad.
    fn post(
        &self,
        draft: &mut record::Draft,
        manifest: &Manifest,
        hook_env: &HookEnv,
        dest: &Path,
        previous: Option<&str>,
    ) -> Result<()> {
        let id = &self.id;
        if let Err(e) = draft.run_hooks("post", &manifest.commands.post, hook_env) {
            switch_back(dest, &self.dir, previous);
            if let Err(m) = mark(&self.dir, id, true, Some(format!("post failed: {e}"))) {
                logln!("warning: could not mark release {id} bad: {m}");
            }
            logln!(
                "Marked release {id} bad (kept for inspection until the next successful deploy)"
            );
            return Err(e);
        }
        Ok(())
    }

    /// The release confirmed (its deployed time), dest's index written, old releases
    /// cleaned up.
    fn confirm(
        &self,
        meta: Meta,
        state: Option<&Path>,
        dest: &Path,
        entries: Result<Vec<Entry>>,
        keep: u32,
    ) -> Result<()> {
        let confirmed = Meta {
            deployed: Some(now_rfc3339()),
            ..meta
        };
        write_meta(&self.dir, &confirmed)?;
        match (state, entries) {
            (Some(state), Ok(entries)) => write_index(state, dest, &confirmed, &entries),
            (Some(_), Err(e)) => logln!("warning: cannot index release {}: {e}", self.id),
            (None, _) => {}
        }
        cleanup(&self.dir, &self.id, keep)
    }
}

/// The record's `changes` of a release against the one before it (SPEC §11).
fn changes(old: &[Entry], new: &[Entry]) -> record::Changes {
    let mut c = record::Changes::default();
    for d in crate::index::diff(old, new) {
        match d.kind {
            "added" => c.created += 1,
            "deleted" => c.deleted += 1,
            _ => c.updated += 1,
        }
    }
    c.unchanged = (new.len() as u64).saturating_sub(c.created + c.updated);
    c
}

/// Writes the deploy index of dest (= the live release) for the redeploy that
/// downloads nothing and `verify`; a failure is a warning.
fn write_index(state: &Path, dest: &Path, meta: &Meta, entries: &[Entry]) {
    let Some(header) = &meta.index else {
        logln!("warning: release {} has no index settings", meta.id);
        return;
    };
    let header = crate::index::Header {
        checksum: meta.checksum.clone(),
        written: record::timestamp(chrono::Utc::now()),
        entries: entries.len() as u64,
        ..header.clone()
    };
    let key = record::key_for_dest(dest);
    if let Err(e) = crate::index::write(state, &key, &header, entries) {
        logln!("warning: cannot write the deploy index: {e}");
    }
}

/// After a failed `post`: dest back to the release it pointed at, or removed on a
/// first deploy. Logged; a failure here is logged too (the deploy fails anyway).
fn switch_back(dest: &Path, dir: &Path, previous: Option<&str>) {
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
fn releases_dir(manifest: &Manifest, dest: &Path) -> Result<PathBuf> {
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
/// `ID  CHECKSUM(12)  DEPLOYED  [live] [bad]` (DEPLOYED `-` while unconfirmed).
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
        let mut line = format!(
            "{}  {:12}  {}",
            r.id,
            &r.meta.checksum[..r.meta.checksum.len().min(12)],
            r.meta.deployed.as_deref().unwrap_or("-")
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

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RolledBack {
    pub dir: PathBuf,
    /// The release left (now marked bad).
    pub from: String,
    /// The release dest now points at.
    pub to: Release,
}

/// `stretcher rollback DEST [--to ID]` (SPEC §14): switches dest to release `to`, or to
/// the newest good release older than the live one, and marks the one left bad. No
/// hook, no network; holds dest's lock. Removes nothing but a killed run's leftovers.
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
    logln!(
        "Rolled back {} from release {live} to {}",
        dest.display(),
        pick.id
    );
    mark(&dir, &live, true, Some("left by a rollback".into()))?;
    let mut to = pick.clone();
    if to.meta.bad {
        // Chosen by ID: the operator vouches for it again.
        logln!(
            "release {} was marked bad; it is live again as asked",
            to.id
        );
        mark(&dir, &to.id, false, None)?;
        to.meta.bad = false;
        to.meta.reason = None;
    }
    Ok(RolledBack {
        dir,
        from: live,
        to,
    })
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
    let from = made.or(history.last());
    let finished = chrono::Utc::now();
    let rec = record::Record {
        schema: record::SCHEMA,
        host: record::hostname(),
        stretcher_version: crate::VERSION.to_string(),
        dest: Some(dest.display().to_string()),
        strategy: Some("release".into()),
        release: Some(r.to.id.clone()),
        manifest_url: from.map(|h| h.manifest_url.clone()).unwrap_or_default(),
        manifest_sha256: made.and_then(|h| h.manifest_sha256.clone()),
        serial: made.and_then(|h| h.serial),
        src: made.and_then(|h| h.src.clone()),
        checksum: Some(r.to.meta.checksum.clone()),
        event: record::EventInfo {
            origin: "rollback".into(),
            name: None,
            id: None,
            ltime: None,
        },
        result: record::Outcome::Success,
        failed_step: None,
        error: None,
        started: record::timestamp(started),
        finished: record::timestamp(finished),
        duration_s: ((finished - started).num_milliseconds() as f64) / 1000.0,
        downloaded_bytes: None,
        download_skipped: true,
        changes: None,
        hooks: Vec::new(),
    };
    if let Err(e) = record::write(state, &key, &rec) {
        logln!("warning: cannot write the deploy record: {e}");
    }
    let filter = match r.to.meta.index.as_ref().map(|h| h.filter()) {
        Some(Ok(f)) => f,
        _ => Filter::empty(),
    };
    match crate::index::scan(&r.dir.join(&r.to.id), &filter) {
        Ok(entries) => write_index(state, dest, &r.to.meta, &entries),
        Err(e) => logln!("warning: cannot index release {}: {e}", r.to.id),
    }
}

// Arguments of `stretcher releases`.
#[derive(argh::FromArgs, Debug)]
/// List the releases of DEST (sync_strategy release), newest first:
/// ID, checksum (12 digits), when deployed, and whether live or bad.
struct ReleasesArgs {
    /// the dest of a release manifest
    #[argh(positional)]
    dest: String,
}

// Arguments of `stretcher rollback`.
#[derive(argh::FromArgs, Debug)]
/// Switch DEST back to the newest good release older than the live one (or to
/// --to ID) and mark the one left bad. Runs no hook and needs no network.
struct RollbackArgs {
    /// the dest of a release manifest
    #[argh(positional)]
    dest: String,
    /// the release ID to switch to (see `stretcher releases DEST`)
    #[argh(option)]
    to: Option<String>,
    /// where deploy records live (as for a deploy)
    #[argh(option)]
    state_dir: Option<String>,
}

/// Runs `stretcher releases ...` or `stretcher rollback ...` when `args[0]` names one;
/// returns its exit status. `None` for anything else.
pub fn subcommand(args: &[OsString]) -> Option<i32> {
    let name = args.first()?.to_str()?;
    if name != "releases" && name != "rollback" {
        return None;
    }
    let rest: Vec<String> = args[1..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .map(|a| {
            // Go-style single-dash long flags, as for a deploy.
            match a.strip_prefix('-') {
                Some(r) if !r.starts_with('-') && r.len() > 1 => format!("-{a}"),
                _ => a,
            }
        })
        .collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let absolute = |d: &str| crate::drift::normalize_dest(Path::new(d));
    let cmd = ["stretcher", name];
    let early = |e: argh::EarlyExit| {
        if e.status.is_ok() {
            print!("{}", e.output);
            0
        } else {
            eprintln!("stretcher {name}: {}", e.output.trim_end());
            2
        }
    };
    Some(if name == "releases" {
        match <ReleasesArgs as argh::FromArgs>::from_args(&cmd, &rest) {
            Err(e) => early(e),
            Ok(a) => match releases_text(&absolute(&a.dest)) {
                Ok(text) => {
                    print!("{text}");
                    0
                }
                Err(e) => {
                    eprintln!("stretcher releases: {e}");
                    1
                }
            },
        }
    } else {
        match <RollbackArgs as argh::FromArgs>::from_args(&cmd, &rest) {
            Err(e) => early(e),
            Ok(a) => {
                let started = chrono::Utc::now();
                let dest = absolute(&a.dest);
                let env = |k: &str| std::env::var(k).ok();
                match rollback(&dest, a.to.as_deref(), &env) {
                    Ok(r) => {
                        let explicit = a.state_dir.as_deref().map(Path::new);
                        match crate::state::state_dir(explicit, &env) {
                            Ok(state) => record_rollback(&state, &dest, &r, started),
                            Err(e) => logln!(
                                "warning: no state directory ({e}): no deploy record is kept"
                            ),
                        }
                        println!("{}: {} -> {}", dest.display(), r.from, r.to.id);
                        0
                    }
                    Err(e) => {
                        eprintln!("stretcher rollback: {e}");
                        1
                    }
                }
            }
        }
    })
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
