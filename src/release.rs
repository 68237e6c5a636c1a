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
//! Other local users (SPEC §17): the releases directory is opened once ([`Releases`],
//! an `at::Tree`, a symlink at its own name refused) and every entry of it is made,
//! read, renamed and removed relative to that descriptor, never following a symlink:
//! the metadata's temporary is created `O_CREAT|O_EXCL|O_NOFOLLOW` (a name planted
//! there fails the run, naming it), its mode set through the descriptor; the switch
//! link is made by `symlinkat` in dest's parent opened as a tree (a link there of
//! another owner fails the run, naming it). Leftovers are removed only when they
//! have one of the exact names above and belong to the running user; anything else
//! is left alone with a warning.
//!
//! It must never change the live release's files (they share inodes with the new one:
//! nothing here writes a linked file), never remove the live or the previous good
//! release, and never leave `dest` pointing at anything but a complete release.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use serde::{Deserialize, Serialize};

use crate::at::{self, Tree};
use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;
use crate::logln;
use crate::manifest::Manifest;
use crate::record;

const PARTIAL: &str = ".partial";
const REMOVING: &str = ".removing";
const META_EXT: &str = ".json";
const META_TMP: &str = ".json.tmp";
/// The largest `ID.json` read: metadata is a few hundred bytes.
const META_MAX: u64 = 1 << 20;

/// A releases directory, opened once: every entry is reached relative to it.
#[derive(Debug)]
pub(crate) struct Releases {
    path: PathBuf,
    tree: Tree,
}

impl Releases {
    /// Opens the existing releases directory `path` (a symlink at its name refused).
    pub(crate) fn open(path: &Path) -> Result<Releases> {
        let tree = Tree::open(path, false).map_err(|e| refused_or_io("open", path, e))?;
        Ok(Releases {
            path: path.to_path_buf(),
            tree,
        })
    }

    /// Opens `path`, `None` when it does not exist.
    pub(crate) fn open_existing(path: &Path) -> Result<Option<Releases>> {
        match Tree::open(path, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(refused_or_io("open", path, e)),
            Ok(tree) => Ok(Some(Releases {
                path: path.to_path_buf(),
                tree,
            })),
        }
    }

    /// Opens `path`, made (0755, `mkdirat` in its parent) when missing; its missing
    /// parents are made as `create_dir_all` makes them (the path up to it is trusted).
    pub(crate) fn create(path: &Path) -> Result<Releases> {
        let (parent, name) = crate::state::parent_and_name(path)?;
        fs::create_dir_all(parent).ctx("create directory", parent)?;
        let up = Tree::open(parent, true).ctx("open directory", parent)?;
        let tree = up
            .make_dir(Path::new(name), 0o755)
            .map_err(|e| refused_or_io("create directory", path, e))?;
        Ok(Releases {
            path: path.to_path_buf(),
            tree,
        })
    }

    /// The directory's path (for messages and the dest link's target).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory as a tree.
    pub(crate) fn tree(&self) -> &Tree {
        &self.tree
    }

    /// `RELEASES_DIR/NAME` (for messages and link targets only).
    pub(crate) fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Whether `name` exists (whatever it is, a symlink included).
    fn exists(&self, name: &str) -> bool {
        self.tree.lstat(Path::new(name)).is_ok()
    }

    /// Whether `name` is a directory (a symlink is not).
    fn is_dir(&self, name: &str) -> bool {
        self.tree
            .lstat(Path::new(name))
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
    }
}

/// The error of an `at` operation on `path`: a refused symlink as such, else io.
fn refused_or_io(op: &'static str, path: &Path, e: io::Error) -> Error {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
        || e.to_string().contains(at::FOLLOW)
    {
        return Error::Unsafe {
            what: "releases entry",
            path: path.to_path_buf(),
            msg: "a symbolic link (never followed; remove it)".into(),
        };
    }
    Error::io(op, path, e)
}

/// A name that exists already where stretcher makes a new one: refused, named.
fn planted(path: &Path) -> Error {
    Error::Unsafe {
        what: "releases entry",
        path: path.to_path_buf(),
        msg: "the name exists already (planted? never followed; remove it)".into(),
    }
}

fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

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
pub(crate) fn list(dir: &Releases) -> Result<Vec<Release>> {
    let names = dir.tree.names(Path::new("")).ctx("read", dir.path())?;
    let mut out = Vec::new();
    for name in names {
        let Some(name) = name.to_str().map(str::to_string) else {
            continue;
        };
        if !is_id(&name) || !dir.is_dir(&name) {
            continue;
        }
        if let Some(meta) = read_meta(dir, &name) {
            out.push(Release { id: name, meta });
        }
    }
    out.sort_by(|a, b| b.meta.seq.cmp(&a.meta.seq).then(b.id.cmp(&a.id)));
    Ok(out)
}

/// `.ID.partial`: the name in the releases directory where release `id` is unpacked
/// until it is complete.
pub(crate) fn partial_name(id: &str) -> String {
    format!(".{id}{PARTIAL}")
}

fn meta_name(id: &str) -> String {
    format!("{id}{META_EXT}")
}

/// The metadata of release `id`: `None` when it is missing, not a regular file (a
/// symlink is never followed), larger than 1 MiB, unreadable or not its own.
pub(crate) fn read_meta(dir: &Releases, id: &str) -> Option<Meta> {
    let text = dir
        .tree
        .read_file(Path::new(&meta_name(id)), META_MAX)
        .ok()?;
    serde_json::from_slice::<Meta>(&text)
        .ok()
        .filter(|m| m.id == id)
}

/// Writes `ID.json` atomically: `.ID.json.tmp` created `O_EXCL|O_NOFOLLOW` relative to
/// the directory (a name found there, a planted symlink included, fails naming it),
/// mode 0644 through its descriptor, written, fsync'd, renamed onto `ID.json`.
pub(crate) fn write_meta(dir: &Releases, meta: &Meta) -> Result<()> {
    let tmp = format!(".{}{META_TMP}", meta.id);
    let name = meta_name(&meta.id);
    let path = dir.join(&name);
    let mut text = serde_json::to_vec_pretty(meta)
        .map_err(|e| release_error(&path, format!("encode metadata: {e}")))?;
    text.push(b'\n');
    let tmp_path = dir.join(&tmp);
    match dir.tree.write_new(Path::new(&tmp), 0o644, &text) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(planted(&tmp_path)),
        other => other.map_err(|e| refused_or_io("write", &tmp_path, e))?,
    }
    if let Err(e) = dir
        .tree
        .rename(Path::new(&tmp), &dir.tree, Path::new(&name))
    {
        let _ = dir.tree.unlink(Path::new(&tmp));
        return Err(Error::io("rename onto", &path, e));
    }
    dir.tree.sync().ctx("sync directory", dir.path())
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The ID of a release made now from `checksum`: the first of `BASE`, `BASE-2`, … that
/// names nothing in `dir` (release, partial or metadata).
/// `None`: no directory yet, nothing is taken.
pub(crate) fn next_id(
    dir: Option<&Releases>,
    checksum: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let base = format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &checksum[..8]);
    let taken = |id: &str| {
        dir.is_some_and(|d| d.exists(id) || d.exists(&partial_name(id)) || d.exists(&meta_name(id)))
    };
    if !taken(&base) {
        return base;
    }
    (2u64..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !taken(id))
        .unwrap_or(base) // invariant: the range is unbounded, so `find` always finds one
}

/// The temporary name of the new link beside dest: `.NAME.stretcher-switch`.
fn switch_name(dest: &Path) -> Result<OsString> {
    let (_, name) = crate::state::parent_and_name(dest)?;
    let mut n = OsString::from(".");
    n.push(name);
    n.push(".stretcher-switch");
    Ok(n)
}

/// dest's parent opened as a tree (the path up to dest is trusted, SPEC §17), and
/// dest's own name.
fn dest_parent(dest: &Path) -> Result<(Tree, &OsStr)> {
    let (parent, name) = crate::state::parent_and_name(dest)?;
    let tree = Tree::open(parent, true).ctx("open directory", parent)?;
    Ok((tree, name))
}

/// Points `dest` at `target` by renaming a new symlink over it: one atomic
/// `rename(2)`. The new link is made by `symlinkat` at the switch name in dest's
/// parent, opened once; a link of our own found there (a killed run's) is replaced,
/// anything else there fails, naming it. An empty directory at dest is removed first
/// (rename cannot replace a directory by a link); a non-empty one is an error and
/// nothing changes.
pub(crate) fn switch(dest: &Path, target: &Path) -> Result<()> {
    let (parent, dest_name) = dest_parent(dest)?;
    let tmp_name = switch_name(dest)?;
    let (tmp, dest_rel) = (Path::new(&tmp_name), Path::new(dest_name));
    let tmp_path = parent.shown(tmp);
    let mut tries = 0;
    loop {
        match parent.symlink(target, tmp) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => {
                tries += 1;
                let st = parent.lstat(tmp).ctx("stat", &tmp_path)?;
                let own_link = FileType::from_raw_mode(st.st_mode) == FileType::Symlink
                    && st.st_uid == my_uid();
                if !own_link {
                    return Err(Error::Unsafe {
                        what: "release switch link",
                        path: tmp_path,
                        msg: format!(
                            "the name exists already, owned by uid {} (planted? never followed; remove it)",
                            st.st_uid
                        ),
                    });
                }
                match parent.unlink(tmp) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(Error::io("remove", &tmp_path, e))
                    }
                    _ => {}
                }
            }
            Err(e) => return Err(Error::io("create symlink", &tmp_path, e)),
        }
    }
    let is_dir = parent
        .lstat(dest_rel)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
    if is_dir {
        if let Err(e) = parent.rmdir(dest_rel) {
            let _ = parent.unlink(tmp);
            return Err(release_error(
                dest,
                format!("dest is a directory that cannot be replaced by the release link: {e}"),
            ));
        }
    }
    if let Err(e) = parent.rename(tmp, &parent, dest_rel) {
        let _ = parent.unlink(tmp);
        return Err(Error::io("rename onto", dest, e));
    }
    // Best effort: make the switch durable.
    let _ = parent.sync();
    Ok(())
}

/// Whether `name` (in the releases directory) is one of a killed run's leftovers:
/// `.ID.partial`, `.ID.removing`, `.ID.json.tmp`, or `ID.json` without its release.
fn is_leftover(dir: &Releases, name: &str) -> bool {
    let hidden_id = |suffix: &str| {
        name.strip_prefix('.')
            .and_then(|n| n.strip_suffix(suffix))
            .is_some_and(is_id)
    };
    if hidden_id(PARTIAL) || hidden_id(REMOVING) || hidden_id(META_TMP) {
        return true;
    }
    name.strip_suffix(META_EXT)
        .filter(|id| is_id(id))
        .is_some_and(|id| !dir.is_dir(id))
}

/// Removes what a killed run left: `.ID.partial` and `.ID.removing` directories,
/// metadata temp files, metadata without a release, and the switch link beside dest.
/// Only those exact names, and only when they belong to the running user: anything
/// else (another owner's) is left alone with a warning. Everything is reached
/// relative to the directories' descriptors, never through a symlink. The caller
/// holds dest's lock.
pub(crate) fn remove_leftovers(dir: &Releases, dest: &Path) {
    let me = my_uid();
    let left_alone = |path: &Path, uid: u32| {
        logln!(
            "warning: {} looks like a leftover of an earlier run but is owned by uid {uid}, not by this user: left alone",
            path.display()
        );
    };
    if let (Ok((parent, _)), Ok(name)) = (dest_parent(dest), switch_name(dest)) {
        let rel = Path::new(&name);
        if let Ok(st) = parent.lstat(rel) {
            let path = parent.shown(rel);
            if st.st_uid != me {
                left_alone(&path, st.st_uid);
            } else if FileType::from_raw_mode(st.st_mode) == FileType::Symlink
                && parent.unlink(rel).is_ok()
            {
                logln!("removed leftover of an earlier run: {}", path.display());
            }
        }
    }
    let Ok(names) = dir.tree.names(Path::new("")) else {
        return;
    };
    for name in names {
        let Some(name) = name.to_str() else {
            continue;
        };
        if !is_leftover(dir, name) {
            continue;
        }
        let (rel, path) = (Path::new(name), dir.join(name));
        let Ok(st) = dir.tree.lstat(rel) else {
            continue;
        };
        if st.st_uid != me {
            left_alone(&path, st.st_uid);
            continue;
        }
        logln!("removing leftover of an earlier run: {}", path.display());
        let result = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            at::remove_tree(dir.tree.fd(), OsStr::new(name), at::Owner::Is(me))
        } else {
            dir.tree.unlink(rel)
        };
        if let Err(e) = result {
            logln!("warning: could not remove {}: {e}", path.display());
        }
    }
}

/// Deletes one release: renamed away first (so `dir/ID` is complete or absent at any
/// moment), then its metadata, then the tree.
/// Everything relative to the directory's descriptor: the rename never replaces a
/// name, the tree is removed with `at::remove_tree` (no symlink followed).
pub(crate) fn remove_release(dir: &Releases, id: &str) -> Result<()> {
    let away = format!(".{id}{REMOVING}");
    let t = &dir.tree;
    t.rename_new(Path::new(id), t, Path::new(&away))
        .ctx("rename", dir.join(id))?;
    let meta = meta_name(id);
    match t.unlink(Path::new(&meta)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::io("remove", dir.join(&meta), e))
        }
        _ => {}
    }
    at::remove_tree(t.fd(), OsStr::new(&away), at::Owner::Any).ctx("remove", dir.join(&away))
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
pub(crate) fn cleanup(dir: &Releases, live: &str, keep: u32) -> Result<()> {
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
pub(crate) fn mark(dir: &Releases, id: &str, bad: bool, reason: Option<String>) -> Result<()> {
    let Some(mut meta) = read_meta(dir, id) else {
        logln!(
            "warning: release {id} has no metadata in {}",
            dir.path().display()
        );
        return Ok(());
    };
    meta.bad = bad;
    meta.reason = reason;
    write_meta(dir, &meta)
}

/// After a failed `post`: dest back to the release it pointed at, or removed on a
/// first deploy. Logged; a failure here is logged too (the deploy fails anyway).
pub(crate) fn switch_back(dest: &Path, dir: &Releases, previous: Option<&str>) {
    let result = match previous {
        Some(p) => switch(dest, &dir.join(p))
            .map(|()| format!("switched {} back to release {p}", dest.display())),
        None => dest_parent(dest).and_then(|(parent, name)| {
            parent
                .unlink(Path::new(name))
                .ctx("remove", dest)
                .map(|()| format!("removed {} again (first release deploy)", dest.display()))
        }),
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

/// The live release of `dest` (offline, for a dry run), if dest links to one.
pub(crate) fn live_release(manifest: &Manifest, dest: &Path) -> Result<Option<PathBuf>> {
    live_of(dest, &releases_dir(manifest, dest)?)
}

fn live_of(dest: &Path, dir: &Path) -> Result<Option<PathBuf>> {
    Ok(match dest_state(dest, dir)? {
        DestState::Live(id) => Some(dir.join(id)),
        _ => None,
    })
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
    let live = live_of(dest, &dir)?;
    let checksum = manifest
        .checksum
        .as_ref()
        .map(|c| c.hex().to_ascii_lowercase())
        .unwrap_or_default();
    let id = next_id(
        Releases::open_existing(&dir)?.as_ref(),
        &checksum,
        chrono::Utc::now(),
    );
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
    let releases = match Releases::open_existing(&dir)? {
        Some(d) => list(&d)?,
        None => Vec::new(),
    };
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
    pub dir: Releases,
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
    let dir_path = dir_of(dest);
    let live = live_id(&target, &dir_path).ok_or_else(|| {
        release_error(
            dest,
            format!("dest links to {}, which is not a release", target.display()),
        )
    })?;
    let dir = Releases::open(&dir_path)?;
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
            release_error(
                dest,
                format!("unknown release {id:?} in {}", dir.path().display()),
            )
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
            // The release's content digests are not known here: the index has none.
            Some(settings) => crate::index::save(
                state,
                dest,
                settings,
                &entries,
                &crate::digest::Digests::default(),
            ),
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
        let r = Releases::open(t.path()).unwrap();
        let a = next_id(Some(&r), &sum, now);
        assert_eq!(a, "20261201T220005Z-0123abcd");
        assert_eq!(next_id(None, &sum, now), a);
        fs::create_dir(t.path().join(&a)).unwrap();
        assert_eq!(next_id(Some(&r), &sum, now), format!("{a}-2"));
        fs::create_dir(t.path().join(format!(".{a}-2.partial"))).unwrap();
        assert_eq!(next_id(Some(&r), &sum, now), format!("{a}-3"));
    }

    fn sample_meta(id: &str) -> Meta {
        meta(id, 1, false, false).meta
    }

    #[test]
    fn write_meta_refuses_a_symlink_planted_at_its_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let id = "20261201T220000Z-0123abcd";
        let tmp = t.path().join(format!(".{id}.json.tmp"));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let r = Releases::open(t.path()).unwrap();
        let e = write_meta(&r, &sample_meta(id)).unwrap_err().to_string();
        assert!(e.contains(&tmp.display().to_string()), "{e}");
        assert!(e.contains("never followed"), "{e}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!t.path().join(format!("{id}.json")).exists());
        // Without it, the metadata is written 0644, read back, and no temporary stays.
        fs::remove_file(&tmp).unwrap();
        write_meta(&r, &sample_meta(id)).unwrap();
        let path = t.path().join(format!("{id}.json"));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
        assert_eq!(read_meta(&r, id), Some(sample_meta(id)));
        assert!(!tmp.exists());
        // A symlink at ID.json is never read through.
        fs::remove_file(&path).unwrap();
        fs::write(&victim, serde_json::to_vec(&sample_meta(id)).unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        assert_eq!(read_meta(&r, id), None);
    }

    #[test]
    fn switch_replaces_its_own_leftover_link_and_leftovers_are_exact() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("app");
        let dir = t.path().join("app.releases");
        let id = "20261201T220000Z-0123abcd";
        fs::create_dir_all(dir.join(id)).unwrap();
        // a killed run's switch link (ours) is replaced
        std::os::unix::fs::symlink("nowhere", t.path().join(".app.stretcher-switch")).unwrap();
        switch(&dest, &dir.join(id)).unwrap();
        assert_eq!(fs::read_link(&dest).unwrap(), dir.join(id));
        assert!(!t.path().join(".app.stretcher-switch").exists());
        // leftovers: exact names only, a partial release with its content
        fs::create_dir_all(dir.join(format!(".{id}-2.partial/a/b"))).unwrap();
        fs::write(dir.join(format!(".{id}-3.json.tmp")), "").unwrap();
        fs::write(dir.join(format!("{id}-4.json")), "").unwrap();
        fs::write(dir.join(format!("{id}.json")), "").unwrap();
        fs::write(dir.join(".other.partial"), "").unwrap();
        let r = Releases::open(&dir).unwrap();
        remove_leftovers(&r, &dest);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".other.partial", id, &format!("{id}.json")]);
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
