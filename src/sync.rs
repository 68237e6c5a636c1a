//! `rsync -a --delete [--exclude-from F] [--exclude P]... SRC/ DEST/`, in-process, and the
//! `mv` strategy (SPEC §6).
//!
//! Its one job is making `dest` a mirror of an unpacked tree: [`plan`] walks both trees
//! (sorted, lstat, excluded subtrees pruned) and merge-joins them by relative path into a
//! [`Plan`] of plain data; [`apply`] carries the plan out; [`move_into_place`] is the `mv`
//! strategy. It is the only module that writes `dest`.
//!
//! It must never write outside `dest`, never follow a symlink below either root (a symlink
//! is recreated, never written through), never leave a half-written file under its final
//! name (every file is written to `.NAME.XXXXXX` beside it, then renamed over), and never
//! run `rsync` or any other program.
//!
//! rsync behaviours reproduced here, checked against the real rsync by
//! tests/integration/rsync_oracle.rs:
//! - quick check: a file is rewritten when size or mtime *seconds* differ (rsync's default
//!   `--modify-window=0` ignores nanoseconds); an up-to-date file only gets mode/owner
//!   fixed, its mtime is left alone;
//! - a same-target symlink still gets its mtime set (rsync has "symtimes");
//! - the transfer root is never excluded; its mode, mtime (and owner) become `src`'s;
//! - `--delete` judges a dest-only entry by its *dest* type against the rules; excluded
//!   dest entries are kept, and a dest-only directory that still holds excluded entries is
//!   emptied of everything else and kept ("cannot delete non-empty directory");
//! - replacing such a directory by a file or symlink fails (rsync exits 23: "could not make
//!   way"); here `plan` refuses it up front, before anything changed;
//! - directory mtimes are set after their contents.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use walkdir::WalkDir;

use crate::error::IoContext;
use crate::filter::Filter;
use crate::{Error, Result};

/// How [`apply`] behaves.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// 0 = `""`, 1 = `-v` (one line per change), 2 = `-vv` (also up-to-date entries),
    /// 3 = `-vvv` (also attribute fixes).
    pub verbosity: u8,
    /// Set owner and group from `src` (true when running as root), and create device
    /// nodes and fifos (skipped otherwise, with a log line).
    pub preserve_owner: bool,
    /// The source is a private staging tree on dest's filesystem that is discarded
    /// afterwards: new and changed files (and whole new directories) are renamed into
    /// `dest` instead of copied. The result is the same; the source is consumed.
    pub move_source: bool,
}

/// What kind of filesystem object an entry is (never following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// fifo, socket, character or block device.
    Special,
}

/// The attributes of one entry that the sync reads and copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub rdev: u64,
    /// Hard links to the inode (a staged file with more than one is never moved).
    pub nlink: u64,
}

impl Meta {
    fn from_std(m: &fs::Metadata) -> Meta {
        Meta {
            kind: kind_of(m.file_type()),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: m.mtime(),
            // st_mtime_nsec is always in 0..1e9.
            mtime_nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
            rdev: m.rdev(),
            nlink: m.nlink(),
        }
    }

    /// Permission bits (`mode & 0o7777`).
    pub fn perms(&self) -> u32 {
        self.mode & 0o7777
    }

    fn mtime(&self) -> FileTime {
        FileTime::from_unix_time(self.mtime, self.mtime_nsec)
    }
}

/// One step of a plan, on the path `rel` (relative to both roots; empty = the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub rel: PathBuf,
    pub op: Op,
}

/// What to do with one path. `existing` is what `dest` holds there now when that is
/// replaced (a type change, or an out-of-date file / symlink / special).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A dest-only entry is removed (a directory's contents come earlier in the plan).
    Delete { dest: Meta },
    /// A dest-only directory that still holds excluded entries: everything else in it is
    /// deleted, the directory stays (rsync: "cannot delete non-empty directory").
    KeepNonEmpty { dest: Meta },
    /// A directory is created (0700 at first; its attributes come with `DirAttrs`).
    /// `whole`: its source subtree holds no excluded entry, no multiply-linked file and
    /// no special file, so with [`SyncOptions::move_source`] it is renamed into place
    /// in one step instead of being rebuilt entry by entry.
    MakeDir { existing: Option<Kind>, whole: bool },
    /// A regular file is written from `src` (temp file + rename).
    CopyFile { src: Meta, existing: Option<Kind> },
    /// A symlink to `target` is made.
    MakeSymlink {
        target: PathBuf,
        src: Meta,
        existing: Option<Kind>,
    },
    /// A fifo / socket / device node is made (only when preserving owners, i.e. root).
    MakeSpecial { src: Meta, existing: Option<Kind> },
    /// Same content (quick check / same link target): only attributes are fixed.
    Keep { src: Meta, dest: Meta },
    /// A directory's mode, owner and mtime are set, after its contents. `dirty`: entries
    /// in it are added, removed or replaced, so its mtime must be reset.
    DirAttrs {
        src: Meta,
        dest: Option<Meta>,
        dirty: bool,
    },
}

/// The list of actions that makes `dest` a mirror of `src`, in the order [`apply`] runs
/// them: deletions (contents before their directory), then creations and updates (parents
/// before children), then directory attributes (children before parents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub src: PathBuf,
    pub dest: PathBuf,
    pub actions: Vec<Action>,
    /// Entries already right in every respect, left out of `actions` (unless listed for
    /// `-vv`), so a plan's size follows the changes, not the tree.
    pub uptodate: u64,
    /// Every entry `dest` holds once the plan is applied (not excluded ones), with
    /// what decides its attributes then: the deploy index is made from it
    /// ([`After::result`]) without walking `dest` again.
    pub after: Vec<After>,
}

/// How an entry of `dest` comes to be, once a plan is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Written from the source (created, or replaced).
    New,
    /// Same content (quick check / same link target): only attributes fixed.
    Same,
    /// A directory of the source; `dirty`: its mtime is set after its contents.
    Dir { dirty: bool },
    /// A dest-only directory kept for the excluded entries it holds.
    Left,
}

/// One entry of `dest` after the plan (see [`Plan::after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub rel: PathBuf,
    /// The source's attributes (for `Left`: dest's).
    pub src: Meta,
    /// What dest held there before, when the entry is not `New`.
    pub dest: Option<Meta>,
    /// Symlinks: the target.
    pub target: Option<PathBuf>,
    pub fate: Fate,
}

impl After {
    /// The entry's attributes once [`apply`] has run with `preserve_owner`, as
    /// `apply` sets them: `None` when it will not exist (a special file, not root).
    /// An entry left untouched keeps what dest had (its mtime to the nanosecond:
    /// the quick check compares seconds).
    pub fn result(&self, preserve_owner: bool) -> Option<Meta> {
        let owner = |d: &Meta| {
            if preserve_owner {
                (self.src.uid, self.src.gid)
            } else {
                (d.uid, d.gid)
            }
        };
        let with = |base: &Meta, perms: u32, (uid, gid): (u32, u32), time: &Meta| Meta {
            mode: (base.mode & !0o7777) | perms,
            uid,
            gid,
            mtime: time.mtime,
            mtime_nsec: time.mtime_nsec,
            ..*base
        };
        match (self.fate, &self.dest) {
            (Fate::New, _) if self.src.kind == Kind::Special && !preserve_owner => None,
            (Fate::New, _) | (Fate::Dir { .. }, None) => Some(self.src),
            (Fate::Left, _) => Some(self.src),
            (Fate::Same, None) => Some(self.src),
            (Fate::Same, Some(d)) => {
                let (perms, time) = match self.src.kind {
                    // A symlink gets its mtime when the seconds differ; its mode is not set.
                    Kind::Symlink if self.src.mtime != d.mtime => (d.perms(), &self.src),
                    Kind::Symlink => (d.perms(), d),
                    _ => (self.src.perms(), d),
                };
                Some(with(&self.src, perms, owner(d), time))
            }
            (Fate::Dir { dirty }, Some(d)) => {
                let time = if dirty || d.mtime != self.src.mtime {
                    &self.src
                } else {
                    d
                };
                Some(with(&self.src, self.src.perms(), owner(d), time))
            }
        }
    }
}

/// A regular file that the unpack found already in dest, equal to the archive's by
/// size, mtime (and mode, owner), and so did not write to staging. The plan treats it
/// as present in the source with these attributes.
pub use crate::unpack::FileAttrs as Kept;

/// Kept files by path relative to the roots.
pub type KeptFiles = HashMap<PathBuf, Kept>;

/// The unpack-time quick check against an existing tree (`dest`, or the live release):
/// a regular file equal to the entry by size, mtime seconds, mode (and owner) is not
/// written. Only reads the tree.
pub struct DestProbe {
    root: PathBuf,
    /// Directories below `root` already checked: true when a real directory (reached
    /// through real directories only), so files in it may be reused.
    dirs: HashMap<PathBuf, bool>,
}

impl DestProbe {
    /// A probe of the tree at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DestProbe {
        DestProbe {
            root: root.into(),
            dirs: HashMap::new(),
        }
    }

    /// Whether `root/rel` is a real directory reached through real directories only
    /// (never through a symlink, which the sync would replace).
    fn real_dir(&mut self, rel: &Path) -> bool {
        if let Some(&ok) = self.dirs.get(rel) {
            return ok;
        }
        let ok = match rel.parent() {
            // dest itself may be a symlink to a directory (rsync's `DEST/` follows it).
            None => fs::metadata(&self.root).is_ok_and(|m| m.is_dir()),
            Some(parent) => {
                self.real_dir(parent)
                    && fs::symlink_metadata(self.root.join(rel)).is_ok_and(|m| m.is_dir())
            }
        };
        self.dirs.insert(rel.to_path_buf(), ok);
        ok
    }
}

impl crate::unpack::Unchanged for DestProbe {
    fn find(&mut self, rel: &Path, want: &Kept) -> Option<(PathBuf, fs::Metadata)> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !self.real_dir(parent) {
            return None;
        }
        let path = self.root.join(rel);
        let m = fs::symlink_metadata(&path).ok()?;
        let same = m.file_type().is_file()
            && m.size() == want.size
            && m.mtime() == want.mtime
            && m.mode() & 0o7777 == want.mode
            && want.owner.is_none_or(|(u, g)| (m.uid(), m.gid()) == (u, g));
        same.then_some((path, m))
    }
}

impl Plan {
    /// The actions that change something in `dest` beyond attributes (for `--dry-run`).
    pub fn changes(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| a.is_change())
    }
}

impl Action {
    /// Whether this action creates, replaces or removes an entry.
    pub fn is_change(&self) -> bool {
        !matches!(self.op, Op::Keep { .. } | Op::DirAttrs { .. })
    }
}

/// One line like `rsync -v` prints it (`dir/`, `link -> target`, `deleting x`,
/// `x is uptodate`).
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rel = if self.rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.rel
        };
        let rel = crate::log::shown_path(rel);
        match &self.op {
            Op::Delete { dest } if dest.kind == Kind::Dir => write!(f, "deleting {rel}/"),
            Op::Delete { .. } => write!(f, "deleting {rel}"),
            Op::KeepNonEmpty { .. } => write!(f, "cannot delete non-empty directory: {rel}"),
            Op::MakeDir { .. } => write!(f, "{rel}/"),
            Op::CopyFile { .. } | Op::MakeSpecial { .. } => write!(f, "{rel}"),
            Op::MakeSymlink { target, .. } => {
                write!(f, "{rel} -> {}", crate::log::shown_path(target))
            }
            Op::Keep { .. } => write!(f, "{rel} is uptodate"),
            Op::DirAttrs { .. } => write!(f, "{rel}/ attributes"),
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files, directories, symlinks and special files that did not exist in `dest`.
    pub created: u64,
    /// Entries rewritten (content, link target, or type changed).
    pub updated: u64,
    /// Dest-only entries removed.
    pub deleted: u64,
    /// Entries whose content was already right (attributes may have been fixed).
    pub unchanged: u64,
    /// Special files not created because owners are not preserved (not root).
    pub skipped: u64,
    /// Bytes of file content written.
    pub bytes_copied: u64,
}

/// One entry found by a walk.
struct Entry {
    rel: PathBuf,
    meta: Meta,
}

/// Walks `root` (not following symlinks below it) in sorted pre-order, which is the
/// component order of `Path`. Excluded entries are not descended into; they are returned
/// apart, with their kind.
/// `sub` (relative) restricts the walk to the entries below `root/sub`.
fn walk(root: &Path, sub: &Path, filter: &Filter) -> Result<(Vec<Entry>, HashMap<PathBuf, Kind>)> {
    let mut entries = Vec::new();
    let mut excluded = HashMap::new();
    let rel_of = |p: &Path| p.strip_prefix(root).map(Path::to_path_buf);
    let it = WalkDir::new(root.join(sub))
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let Ok(rel) = rel_of(e.path()) else {
                return true;
            };
            let is_dir = e.file_type().is_dir();
            if filter.is_excluded(&rel, is_dir) {
                let kind = if is_dir {
                    Kind::Dir
                } else {
                    kind_of(e.file_type())
                };
                excluded.insert(rel, kind);
                false
            } else {
                true
            }
        });
    for item in it {
        let e = item.map_err(|err| {
            let path = err.path().unwrap_or(root).to_path_buf();
            Error::io("walk", path, err.into())
        })?;
        // Invariant: walkdir only yields paths below the root it was given.
        let rel = rel_of(e.path()).map_err(|_| Error::Sync {
            path: e.path().to_path_buf(),
            msg: "walked outside its root".into(),
        })?;
        let m = e.metadata().map_err(|err| {
            let err: io::Error = err.into();
            Error::io("stat", e.path(), err)
        })?;
        entries.push(Entry {
            rel,
            meta: Meta::from_std(&m),
        });
    }
    Ok((entries, excluded))
}

fn kind_of(ft: fs::FileType) -> Kind {
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Special
    }
}

fn parent_of(rel: &Path) -> PathBuf {
    rel.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Computes what [`apply`] must do to make `dest` a mirror of `src` under `filter`.
/// Reads both trees, changes nothing.
pub fn plan(src: &Path, dest: &Path, filter: &Filter) -> Result<Plan> {
    plan_kept(src, dest, filter, &KeptFiles::new(), true)
}

/// [`plan`], for a source that lacks the `kept` files (they are in dest already), and
/// listing up-to-date entries as `Keep` actions only when `list_uptodate` (for `-vv`).
/// A kept file that dest no longer holds as it was (a `pre` command changed it) is
/// `Error::Stale`: its content is in neither tree.
pub fn plan_kept(
    src: &Path,
    dest: &Path,
    filter: &Filter,
    kept: &KeptFiles,
    list_uptodate: bool,
) -> Result<Plan> {
    let src_root = fs::metadata(src).ctx("stat", src)?;
    if !src_root.is_dir() {
        return Err(Error::Sync {
            path: src.to_path_buf(),
            msg: "source is not a directory".into(),
        });
    }
    let src_root = Meta::from_std(&src_root);
    let dest_root = match fs::metadata(dest) {
        Ok(m) if m.is_dir() => Some(Meta::from_std(&m)),
        Ok(_) => {
            return Err(Error::Sync {
                path: dest.to_path_buf(),
                msg: "destination exists and is not a directory".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("stat", dest, e)),
    };

    let (src_entries, src_excluded) = walk(src, Path::new(""), filter)?;
    // Source directories that cannot be moved whole: something below is excluded (it
    // must not reach dest), is a hard link (rsync -a makes separate files) or special.
    let mut not_whole: HashSet<PathBuf> = HashSet::new();
    let odd = src_entries
        .iter()
        .filter(|e| match e.meta.kind {
            Kind::File => e.meta.nlink > 1,
            Kind::Special => true,
            Kind::Dir | Kind::Symlink => false,
        })
        .map(|e| e.rel.as_path());
    for rel in src_excluded.keys().map(PathBuf::as_path).chain(odd) {
        let mut p = rel.parent();
        while let Some(dir) = p {
            if !not_whole.insert(dir.to_path_buf()) {
                break;
            }
            p = dir.parent();
        }
    }
    let (dest_entries, dest_excluded) = match dest_root {
        Some(_) => walk(dest, Path::new(""), filter)?,
        None => (Vec::new(), HashMap::new()),
    };
    // Directories in dest that hold an excluded entry somewhere below: never removable.
    let mut protected: HashSet<PathBuf> = HashSet::new();
    for rel in dest_excluded.keys() {
        let mut p = rel.parent();
        while let Some(dir) = p {
            if dir.as_os_str().is_empty() || !protected.insert(dir.to_path_buf()) {
                break;
            }
            p = dir.parent();
        }
    }

    let mut deletes = Vec::new();
    let mut updates = Vec::new();
    let mut after: Vec<After> = Vec::new();
    let mut uptodate = 0u64;
    let mut kept_seen = 0usize;
    // An up-to-date entry is an action only when something about it needs fixing.
    let mut keep = |updates: &mut Vec<Action>, rel: PathBuf, src: Meta, dest: Meta| {
        let attrs_differ = src.perms() != dest.perms()
            || (src.uid, src.gid) != (dest.uid, dest.gid)
            || (src.kind == Kind::Symlink && src.mtime != dest.mtime);
        if attrs_differ || list_uptodate {
            updates.push(Action {
                rel,
                op: Op::Keep { src, dest },
            });
        } else {
            uptodate += 1;
        }
    };
    let mut dirs: Vec<(PathBuf, Meta, Option<Meta>)> = vec![(PathBuf::new(), src_root, dest_root)];
    let mut dirty: HashSet<PathBuf> = HashSet::new();
    if dest_root.is_none() {
        updates.push(Action {
            rel: PathBuf::new(),
            op: Op::MakeDir {
                existing: None,
                whole: !not_whole.contains(Path::new("")),
            },
        });
    }

    let mut s = src_entries.into_iter().peekable();
    let mut d = dest_entries.into_iter().peekable();
    loop {
        let order = match (s.peek(), d.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.rel.cmp(&b.rel),
        };
        match order {
            std::cmp::Ordering::Greater => {
                // Only in dest (or excluded in src): delete, judged by its dest type.
                let Some(de) = d.next() else { break };
                if let Some(k) = kept.get(&de.rel) {
                    kept_seen += 1;
                    if de.meta.kind != Kind::File
                        || de.meta.size != k.size
                        || de.meta.mtime != k.mtime
                    {
                        return Err(stale(dest, &de.rel));
                    }
                    let (uid, gid) = k.owner.unwrap_or((de.meta.uid, de.meta.gid));
                    let src_meta = Meta {
                        mode: (de.meta.mode & !0o7777) | k.mode,
                        uid,
                        gid,
                        ..de.meta
                    };
                    after.push(After {
                        rel: de.rel.clone(),
                        src: src_meta,
                        dest: Some(de.meta),
                        target: None,
                        fate: Fate::Same,
                    });
                    keep(&mut updates, de.rel, src_meta, de.meta);
                    continue;
                }
                dirty.insert(parent_of(&de.rel));
                let op = if de.meta.kind == Kind::Dir && protected.contains(&de.rel) {
                    after.push(After {
                        rel: de.rel.clone(),
                        src: de.meta,
                        dest: Some(de.meta),
                        target: None,
                        fate: Fate::Left,
                    });
                    Op::KeepNonEmpty { dest: de.meta }
                } else {
                    Op::Delete { dest: de.meta }
                };
                deletes.push(Action { rel: de.rel, op });
            }
            std::cmp::Ordering::Less => {
                let Some(se) = s.next() else { break };
                let mut existing = None;
                if let Some(&kind) = dest_excluded.get(&se.rel) {
                    // Excluded in dest as another type (e.g. `foo/` while the source has a
                    // file `foo`): rsync makes room for it all the same, deleting what the
                    // rules allow inside a directory and failing if anything remains.
                    existing = Some(kind);
                    if kind == Kind::Dir {
                        let (inner, inner_excluded) = walk(dest, &se.rel, filter)?;
                        if !inner_excluded.is_empty() {
                            return Err(cannot_replace(dest, &se));
                        }
                        deletes.extend(inner.into_iter().map(|de| Action {
                            rel: de.rel,
                            op: Op::Delete { dest: de.meta },
                        }));
                    }
                }
                dirty.insert(parent_of(&se.rel));
                add_src(
                    src,
                    &se,
                    existing,
                    &not_whole,
                    &mut updates,
                    &mut dirs,
                    &mut after,
                )?;
            }
            std::cmp::Ordering::Equal => {
                let (Some(se), Some(de)) = (s.next(), d.next()) else {
                    break;
                };
                if se.meta.kind != de.meta.kind {
                    if de.meta.kind == Kind::Dir && protected.contains(&de.rel) {
                        return Err(cannot_replace(dest, &se));
                    }
                    dirty.insert(parent_of(&se.rel));
                    add_src(
                        src,
                        &se,
                        Some(de.meta.kind),
                        &not_whole,
                        &mut updates,
                        &mut dirs,
                        &mut after,
                    )?;
                    continue;
                }
                if se.meta.kind == Kind::Dir {
                    dirs.push((se.rel, se.meta, Some(de.meta)));
                    continue;
                }
                let mut target = None;
                let same = match se.meta.kind {
                    // rsync's quick check: size and mtime seconds
                    Kind::File => se.meta.size == de.meta.size && se.meta.mtime == de.meta.mtime,
                    Kind::Symlink => {
                        let a = src.join(&se.rel);
                        let b = dest.join(&de.rel);
                        let t = fs::read_link(&a).ctx("readlink", &a)?;
                        let same = t == fs::read_link(&b).ctx("readlink", &b)?;
                        target = Some(t);
                        same
                    }
                    _ => {
                        se.meta.mode & 0o170000 == de.meta.mode & 0o170000
                            && se.meta.rdev == de.meta.rdev
                    }
                };
                if same {
                    after.push(After {
                        rel: se.rel.clone(),
                        src: se.meta,
                        dest: Some(de.meta),
                        target,
                        fate: Fate::Same,
                    });
                    keep(&mut updates, se.rel, se.meta, de.meta);
                } else {
                    dirty.insert(parent_of(&se.rel));
                    let kind = Some(se.meta.kind);
                    add_src(
                        src,
                        &se,
                        kind,
                        &not_whole,
                        &mut updates,
                        &mut dirs,
                        &mut after,
                    )?;
                }
            }
        }
    }

    // Deletions run children first: reverse of the walk's pre-order.
    deletes.reverse();
    let mut actions = deletes;
    actions.extend(updates);
    for (rel, src_meta, dest_meta) in dirs.into_iter().rev() {
        let dirty = dest_meta.is_none() || dirty.contains(&rel);
        after.push(After {
            rel: rel.clone(),
            src: src_meta,
            dest: dest_meta,
            target: None,
            fate: Fate::Dir { dirty },
        });
        actions.push(Action {
            rel,
            op: Op::DirAttrs {
                src: src_meta,
                dest: dest_meta,
                dirty,
            },
        });
    }
    if kept_seen < kept.len() {
        // Some kept file was not in dest's walk: fine only when the rules exclude it
        // (then it would be neither copied nor deleted anyway).
        for rel in kept.keys() {
            if !excluded_here_or_above(filter, rel) && fs::symlink_metadata(dest.join(rel)).is_err()
            {
                return Err(stale(dest, rel));
            }
        }
    }
    Ok(Plan {
        src: src.to_path_buf(),
        dest: dest.to_path_buf(),
        actions,
        uptodate,
        after,
    })
}

fn stale(dest: &Path, rel: &Path) -> Error {
    Error::Stale {
        path: dest.join(rel),
    }
}

/// Whether `rel` (a file) or one of its directories is excluded.
fn excluded_here_or_above(filter: &Filter, rel: &Path) -> bool {
    let mut dir = PathBuf::new();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        dir.push(c);
        let is_dir = i + 1 < comps.len();
        if filter.is_excluded(&dir, is_dir) {
            return true;
        }
    }
    false
}

/// rsync exits 23 here ("could not make way for new regular file"); we refuse before
/// changing anything.
fn cannot_replace(dest: &Path, se: &Entry) -> Error {
    Error::Sync {
        path: dest.join(&se.rel),
        msg: format!(
            "cannot replace this directory by a {:?}: it holds excluded entries",
            se.meta.kind
        ),
    }
}

/// Plans the creation of a source entry at a path where dest holds `existing` (or nothing).
fn add_src(
    src: &Path,
    se: &Entry,
    existing: Option<Kind>,
    not_whole: &HashSet<PathBuf>,
    updates: &mut Vec<Action>,
    dirs: &mut Vec<(PathBuf, Meta, Option<Meta>)>,
    after: &mut Vec<After>,
) -> Result<()> {
    let op = match se.meta.kind {
        Kind::Dir => {
            dirs.push((se.rel.clone(), se.meta, None));
            Op::MakeDir {
                existing,
                whole: !not_whole.contains(&se.rel),
            }
        }
        Kind::File => {
            after.push(After {
                rel: se.rel.clone(),
                src: se.meta,
                dest: None,
                target: None,
                fate: Fate::New,
            });
            Op::CopyFile {
                src: se.meta,
                existing,
            }
        }
        Kind::Symlink => {
            let p = src.join(&se.rel);
            let target = fs::read_link(&p).ctx("readlink", &p)?;
            after.push(After {
                rel: se.rel.clone(),
                src: se.meta,
                dest: None,
                target: Some(target.clone()),
                fate: Fate::New,
            });
            Op::MakeSymlink {
                target,
                src: se.meta,
                existing,
            }
        }
        Kind::Special => {
            after.push(After {
                rel: se.rel.clone(),
                src: se.meta,
                dest: None,
                target: None,
                fate: Fate::New,
            });
            Op::MakeSpecial {
                src: se.meta,
                existing,
            }
        }
    };
    updates.push(Action {
        rel: se.rel.clone(),
        op,
    });
    Ok(())
}

/// Carries out `plan`. Stops at the first error, which names the path.
pub fn apply(plan: &Plan, opts: &SyncOptions) -> Result<Stats> {
    let mut stats = Stats {
        unchanged: plan.uptodate,
        ..Stats::default()
    };
    let dest = &plan.dest;
    // Directories we must write into (or empty) need u+rwx meanwhile when not root (rsync
    // does the same); `DirAttrs` / `KeepNonEmpty` put the final mode back.
    if !nix::unistd::geteuid().is_root() {
        // The directories whose entries change: parents of deletions (which covers
        // directories replaced by another type) and dirty source directories.
        let mut dirs: HashSet<&Path> = HashSet::new();
        for a in &plan.actions {
            match &a.op {
                Op::Delete { .. } => {
                    dirs.insert(a.rel.parent().unwrap_or(Path::new("")));
                }
                Op::DirAttrs {
                    dest: Some(_),
                    dirty: true,
                    ..
                } => {
                    dirs.insert(&a.rel);
                }
                _ => {}
            }
        }
        for rel in dirs {
            let p = dest.join(rel);
            let m = fs::symlink_metadata(&p).ctx("stat", &p)?;
            if m.is_dir() && m.mode() & 0o700 != 0o700 {
                fs::set_permissions(&p, Permissions::from_mode((m.mode() & 0o7777) | 0o700))
                    .ctx("chmod", &p)?;
            }
        }
    }
    // With `move_source`, a directory renamed whole into dest carries its subtree:
    // the actions below it are already done. Each entry that arrived with it is still
    // logged and counted as created, as `rsync -v` lists it (SPEC §9).
    let mut moved: Option<&Path> = None;
    for a in &plan.actions {
        if moved.is_some_and(|m| a.rel.starts_with(m)) {
            arrived_with_dir(a, opts, &mut stats);
            continue;
        }
        crate::interrupt::check()?;
        if apply_one(plan, a, opts, &mut stats)? == Applied::MovedWhole {
            moved = Some(&a.rel);
        }
    }
    crate::logln!(
        "sync {}/ -> {}/: {} created, {} updated, {} deleted, {} unchanged, {} skipped, {} bytes copied",
        plan.src.display(),
        plan.dest.display(),
        stats.created,
        stats.updated,
        stats.deleted,
        stats.unchanged,
        stats.skipped,
        stats.bytes_copied
    );
    Ok(stats)
}

/// The log line and count of an entry below a directory that was renamed into dest
/// whole, so already in place: what [`apply_one`] would log and count creating it.
fn arrived_with_dir(a: &Action, opts: &SyncOptions, stats: &mut Stats) {
    let created = match &a.op {
        Op::MakeDir { .. } | Op::MakeSymlink { .. } => true,
        Op::CopyFile { src, .. } => {
            stats.bytes_copied += src.size;
            true
        }
        // Not moved whole when it holds one (`whole` excludes special files).
        Op::MakeSpecial { .. } => opts.preserve_owner,
        Op::Delete { .. } | Op::KeepNonEmpty { .. } | Op::Keep { .. } | Op::DirAttrs { .. } => {
            false
        }
    };
    if created {
        if opts.verbosity >= 1 {
            crate::logln!("{a}");
        }
        stats.created += 1;
    }
}

/// What [`apply_one`] did, when the caller must know.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Done,
    /// A directory was renamed from the source with its whole subtree.
    MovedWhole,
}

fn apply_one(plan: &Plan, a: &Action, opts: &SyncOptions, stats: &mut Stats) -> Result<Applied> {
    let path = plan.dest.join(&a.rel);
    let v = opts.verbosity;
    let count_new = |stats: &mut Stats, existing: &Option<Kind>| match existing {
        None => stats.created += 1,
        Some(_) => stats.updated += 1,
    };
    match &a.op {
        Op::Delete { dest } => {
            if v >= 1 {
                crate::logln!("{a}");
            }
            let r = if dest.kind == Kind::Dir {
                fs::remove_dir(&path)
            } else {
                fs::remove_file(&path)
            };
            match r {
                Ok(()) => stats.deleted += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("delete", &path, e)),
            }
        }
        Op::KeepNonEmpty { dest } => {
            if v >= 1 {
                crate::logln!("{a}");
            }
            if dest.perms() & 0o700 != 0o700 {
                fs::set_permissions(&path, Permissions::from_mode(dest.perms()))
                    .ctx("chmod", &path)?;
            }
        }
        Op::MakeDir { existing, whole } => {
            if v >= 1 {
                crate::logln!("{a}");
            }
            if a.rel.as_os_str().is_empty() {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).ctx("create", parent)?;
                }
            } else {
                clear_for(&path, *existing)?;
            }
            if opts.move_source && *whole {
                let from = plan.src.join(&a.rel);
                match fs::rename(&from, &path) {
                    Ok(()) => {
                        count_new(stats, existing);
                        return Ok(Applied::MovedWhole);
                    }
                    // Another filesystem: build it entry by entry instead.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {}
                    Err(e) => return Err(Error::io("rename into", &path, e)),
                }
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .ctx("mkdir", &path)?;
            count_new(stats, existing);
        }
        Op::CopyFile { src, existing } => {
            if v >= 1 {
                crate::logln!("{a}");
            }
            if *existing == Some(Kind::Dir) {
                clear_for(&path, *existing)?;
            }
            let from = plan.src.join(&a.rel);
            if !(opts.move_source && src.nlink == 1 && move_file(&from, &path)?) {
                write_file(&from, &path, src, opts)?;
            }
            stats.bytes_copied += src.size;
            count_new(stats, existing);
        }
        Op::MakeSymlink {
            target,
            src,
            existing,
        } => {
            if v >= 1 {
                crate::logln!("{a}");
            }
            if *existing == Some(Kind::Dir) {
                clear_for(&path, *existing)?;
            }
            let tmp = temp_create(&path, |t| std::os::unix::fs::symlink(target, t))?;
            let guard = TempGuard(Some(tmp.clone()));
            if opts.preserve_owner {
                std::os::unix::fs::lchown(&tmp, Some(src.uid), Some(src.gid))
                    .ctx("lchown", &tmp)?;
            }
            set_mtime(&tmp, src, false)?;
            rename_into(&tmp, &path)?;
            guard.disarm();
            count_new(stats, existing);
        }
        Op::MakeSpecial { src, existing } => {
            if !opts.preserve_owner {
                crate::logln!(
                    "skipping non-regular file {:?} (not running as root)",
                    a.rel
                );
                stats.skipped += 1;
                return Ok(Applied::Done);
            }
            if v >= 1 {
                crate::logln!("{a}");
            }
            if *existing == Some(Kind::Dir) {
                clear_for(&path, *existing)?;
            }
            let tmp = temp_create(&path, |t| make_special(t, src))?;
            let guard = TempGuard(Some(tmp.clone()));
            std::os::unix::fs::lchown(&tmp, Some(src.uid), Some(src.gid)).ctx("lchown", &tmp)?;
            fs::set_permissions(&tmp, Permissions::from_mode(src.perms())).ctx("chmod", &tmp)?;
            set_mtime(&tmp, src, false)?;
            rename_into(&tmp, &path)?;
            guard.disarm();
            count_new(stats, existing);
        }
        Op::Keep { src, dest } => {
            if v >= 2 {
                crate::logln!("{a}");
            }
            let mut chowned = false;
            if opts.preserve_owner && (src.uid, src.gid) != (dest.uid, dest.gid) {
                if v >= 3 {
                    crate::logln!(
                        "{}: owner {}:{}",
                        crate::log::shown_path(&a.rel),
                        src.uid,
                        src.gid
                    );
                }
                std::os::unix::fs::lchown(&path, Some(src.uid), Some(src.gid))
                    .ctx("lchown", &path)?;
                chowned = true;
            }
            if src.kind == Kind::Symlink {
                if src.mtime != dest.mtime {
                    set_mtime(&path, src, false)?;
                }
            } else if chowned || src.perms() != dest.perms() {
                if v >= 3 {
                    crate::logln!(
                        "{}: mode {:04o}",
                        crate::log::shown_path(&a.rel),
                        src.perms()
                    );
                }
                fs::set_permissions(&path, Permissions::from_mode(src.perms()))
                    .ctx("chmod", &path)?;
            }
            stats.unchanged += 1;
        }
        Op::DirAttrs { src, dest, dirty } => {
            let chown =
                opts.preserve_owner && dest.is_none_or(|d| (d.uid, d.gid) != (src.uid, src.gid));
            if chown {
                std::os::unix::fs::lchown(&path, Some(src.uid), Some(src.gid))
                    .ctx("lchown", &path)?;
            }
            let writable_fix = *dirty && dest.is_some_and(|d| d.perms() & 0o700 != 0o700);
            if chown || writable_fix || dest.is_none_or(|d| d.perms() != src.perms()) {
                if v >= 3 {
                    crate::logln!(
                        "{}/: mode {:04o}",
                        crate::log::shown_path(&a.rel),
                        src.perms()
                    );
                }
                fs::set_permissions(&path, Permissions::from_mode(src.perms()))
                    .ctx("chmod", &path)?;
            }
            if *dirty || dest.is_none_or(|d| d.mtime != src.mtime) {
                // Only the root may be a symlink to a directory (`DEST/` follows it).
                set_mtime(&path, src, a.rel.as_os_str().is_empty())?;
            }
            if dest.is_some() {
                stats.unchanged += 1;
            }
        }
    }
    Ok(Applied::Done)
}

/// Renames a staged file over `to` (atomic). `false` when the two are on different
/// filesystems and the caller must copy. The staged file already carries the mode,
/// mtime and owner a copy would get, since a copy takes them from it.
fn move_file(from: &Path, to: &Path) -> Result<bool> {
    match fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => Ok(false),
        Err(e) => Err(Error::io("rename into", to, e)),
    }
}

/// Removes what stands in the way of a new entry of another type: an (already emptied)
/// directory, or a non-directory when a directory is to be made there.
fn clear_for(path: &Path, existing: Option<Kind>) -> Result<()> {
    let r = match existing {
        None => return Ok(()),
        Some(Kind::Dir) => fs::remove_dir(path),
        Some(_) => fs::remove_file(path),
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// Removes a temporary file when dropped, unless disarmed (the rename happened).
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Creates a fresh `.NAME.XXXXXX` beside `path` with `make`, retrying on a name clash.
fn temp_create(path: &Path, mut make: impl FnMut(&Path) -> io::Result<()>) -> Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or(OsStr::new("x")).as_bytes();
    let short = &name[..name.len().min(200)];
    let mut last = None;
    for _ in 0..100 {
        let mut t = Vec::with_capacity(short.len() + 8);
        t.push(b'.');
        t.extend_from_slice(short);
        t.push(b'.');
        t.extend((0..6).map(|_| fastrand::alphanumeric() as u8));
        let tmp = dir.join(OsString::from_vec(t));
        match make(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::io("create", &tmp, e)),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(Error::io("create temporary beside", path, e))
}

fn rename_into(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).ctx("rename into", path)
}

/// Writes `from` to a temp file beside `to` with `meta`'s mode, mtime (and owner), then
/// renames it over `to`.
fn write_file(from: &Path, to: &Path, meta: &Meta, opts: &SyncOptions) -> Result<()> {
    let mut input = File::open(from).ctx("open", from)?;
    let mut out = None;
    let tmp = temp_create(to, |t| {
        out = Some(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(t)?,
        );
        Ok(())
    })?;
    let guard = TempGuard(Some(tmp.clone()));
    let Some(mut out) = out else {
        // Invariant: temp_create returns Ok only after `make` stored the file.
        return Err(Error::Sync {
            path: tmp,
            msg: "temporary file was not opened".into(),
        });
    };
    copy_keeping_holes(&mut input, &mut out, meta.size).ctx("write", &tmp)?;
    if opts.preserve_owner {
        std::os::unix::fs::fchown(&out, Some(meta.uid), Some(meta.gid)).ctx("chown", &tmp)?;
    }
    out.set_permissions(Permissions::from_mode(meta.perms()))
        .ctx("chmod", &tmp)?;
    filetime::set_file_handle_times(&out, None, Some(meta.mtime())).ctx("set times", &tmp)?;
    drop(out);
    rename_into(&tmp, to)?;
    guard.disarm();
    Ok(())
}

/// Copies `input` (`len` bytes) to the new, empty `out` region by region, as
/// `SEEK_DATA` / `SEEK_HOLE` report them: the holes of a sparse file (an unpacked sparse
/// member) stay holes, and the length is set at the end. Where the filesystem does not
/// report holes, the whole file is one data region.
fn copy_keeping_holes(input: &mut File, out: &mut File, len: u64) -> io::Result<()> {
    use nix::unistd::{lseek, Whence};
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let size = i64::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    let mut pos = 0i64;
    while pos < size {
        let data = match lseek(input.as_raw_fd(), pos, Whence::SeekData) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(input.as_raw_fd(), data, Whence::SeekHole)?.min(size);
        if hole <= data {
            break;
        }
        input.seek(SeekFrom::Start(data as u64))?;
        out.seek(SeekFrom::Start(data as u64))?;
        let want = (hole - data) as u64;
        let copied = io::copy(&mut input.by_ref().take(want), out)?;
        if copied != want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was copied",
            ));
        }
        pos = hole;
    }
    out.set_len(len)
}

/// Sets the mtime (to the nanosecond; atime untouched) with `utimensat`, which never opens
/// the file: `filetime::set_file_mtime` opens it, and opening a fifo blocks.
fn set_mtime(path: &Path, meta: &Meta, follow: bool) -> Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let mtime = TimeSpec::new(meta.mtime, i64::from(meta.mtime_nsec));
    let flag = if follow {
        UtimensatFlags::FollowSymlink
    } else {
        UtimensatFlags::NoFollowSymlink
    };
    utimensat(None, path, &TimeSpec::UTIME_OMIT, &mtime, flag)
        .map_err(|e| Error::io("set times", path, io::Error::from(e)))
}

fn make_special(path: &Path, meta: &Meta) -> io::Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let kind = SFlag::from_bits_truncate(meta.mode & SFlag::S_IFMT.bits());
    mknod(path, kind, Mode::from_bits_truncate(0o600), meta.rdev).map_err(io::Error::from)
}

/// [`plan`] then [`apply`].
pub fn sync(src: &Path, dest: &Path, filter: &Filter, opts: &SyncOptions) -> Result<Stats> {
    let p = plan(src, dest, filter)?;
    apply(&p, opts)
}

/// The `mv` strategy: renames the directory `src` onto `dest`. Fails with `Error::Sync`,
/// changing nothing, when `dest` exists and is not an empty directory; an empty existing
/// `dest` is replaced; missing parents of `dest` are created. Both must be on one
/// filesystem (staging lives beside `dest` for that).
pub fn move_into_place(src: &Path, dest: &Path) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            let mut it = fs::read_dir(dest).ctx("read", dest)?;
            if it.next().is_some() {
                return Err(Error::Sync {
                    path: dest.to_path_buf(),
                    msg: "dest is not empty; the mv strategy needs it absent or empty".into(),
                });
            }
        }
        Ok(_) => {
            return Err(Error::Sync {
                path: dest.to_path_buf(),
                msg: "dest exists and is not a directory".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).ctx("create", parent)?;
            }
        }
        Err(e) => return Err(Error::io("stat", dest, e)),
    }
    // rename(2) replaces an empty directory atomically.
    fs::rename(src, dest).ctx("rename onto", dest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(p: &Path, data: &str, mtime: i64) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
        filetime::set_file_mtime(p, FileTime::from_unix_time(mtime, 0)).unwrap();
    }

    fn ops(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .filter(|a| a.is_change())
            .map(|a| a.to_string())
            .collect()
    }

    #[test]
    fn plan_on_identical_trees_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("s"), t.path().join("d"));
        for root in [&src, &dest] {
            write(&root.join("a/b.txt"), "hello", 1_000_000);
            symlink("a/b.txt", root.join("l")).unwrap();
        }
        let p = plan(&src, &dest, &Filter::empty()).unwrap();
        assert!(ops(&p).is_empty(), "{:?}", ops(&p));
        assert_eq!(p.actions.len(), 4); // b.txt, l, a/, root
    }

    #[test]
    fn plan_orders_deletes_children_first_and_keeps_excluded() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("s"), t.path().join("d"));
        fs::create_dir_all(&src).unwrap();
        write(&dest.join("gone/sub/x.txt"), "x", 5);
        write(&dest.join("kept/y.log"), "y", 5);
        write(&dest.join("kept/z.txt"), "z", 5);
        let f = Filter::new(None, &["*.log".into()]).unwrap();
        let p = plan(&src, &dest, &f).unwrap();
        assert_eq!(
            ops(&p),
            vec![
                "deleting kept/z.txt",
                "cannot delete non-empty directory: kept",
                "deleting gone/sub/x.txt",
                "deleting gone/sub/",
                "deleting gone/",
            ]
        );
    }

    #[test]
    fn sync_copies_replaces_and_sets_times() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("s"), t.path().join("x/d"));
        write(&src.join("f"), "new", 100);
        write(&src.join("same"), "aaa", 200);
        fs::create_dir_all(src.join("was_file")).unwrap();
        symlink("f", src.join("link")).unwrap();
        filetime::set_file_mtime(&src, FileTime::from_unix_time(300, 0)).unwrap();
        let opts = SyncOptions::default();
        let st = sync(&src, &dest, &Filter::empty(), &opts).unwrap();
        assert_eq!(st.created, 5);
        // same size and mtime, other bytes: quick check keeps it.
        write(&dest.join("same"), "bbb", 200);
        fs::remove_dir(dest.join("was_file")).unwrap();
        write(&dest.join("was_file"), "file", 1);
        let st = sync(&src, &dest, &Filter::empty(), &opts).unwrap();
        assert_eq!((st.updated, st.created, st.deleted), (1, 0, 0));
        assert_eq!(fs::read_to_string(dest.join("same")).unwrap(), "bbb");
        assert!(dest.join("was_file").is_dir());
        assert_eq!(fs::read_link(dest.join("link")).unwrap(), Path::new("f"));
        let m = fs::metadata(&dest).unwrap();
        assert_eq!(m.mtime(), 300);
    }

    #[test]
    fn copied_sparse_files_keep_their_holes() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("s"), t.path().join("d"));
        fs::create_dir(&src).unwrap();
        let f = File::create(src.join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        drop(f);
        let f = File::create(src.join("hole-at-end")).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.set_len(1 << 20).unwrap();
        drop(f);
        write(&src.join("dense"), "dense", 100);
        sync(&src, &dest, &Filter::empty(), &SyncOptions::default()).unwrap();
        for name in ["sparse", "hole-at-end", "dense"] {
            assert_eq!(
                fs::read(src.join(name)).unwrap(),
                fs::read(dest.join(name)).unwrap()
            );
        }
        let m = fs::metadata(dest.join("sparse")).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(m.blocks() * 512 <= 1 << 20, "{} blocks", m.blocks());
        assert_eq!(
            fs::metadata(dest.join("hole-at-end")).unwrap().len(),
            1 << 20
        );
    }

    #[test]
    fn replacing_a_dir_holding_excluded_entries_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("s"), t.path().join("d"));
        write(&src.join("foo"), "file", 1);
        write(&dest.join("foo/x.log"), "log", 1);
        let f = Filter::new(None, &["*.log".into()]).unwrap();
        let err = plan(&src, &dest, &f).unwrap_err();
        assert!(matches!(err, Error::Sync { .. }), "{err}");
    }

    #[test]
    fn move_into_place_refuses_non_empty_and_replaces_empty() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("staging");
        write(&src.join("a"), "a", 1);
        let dest = t.path().join("p/q/dest");
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join("x"), "x").unwrap();
        assert!(matches!(
            move_into_place(&src, &dest),
            Err(Error::Sync { .. })
        ));
        assert!(src.join("a").exists());
        fs::remove_file(dest.join("x")).unwrap();
        move_into_place(&src, &dest).unwrap();
        assert!(dest.join("a").exists() && !src.exists());
        let dest2 = t.path().join("new/parent/d2");
        move_into_place(&dest, &dest2).unwrap();
        assert!(dest2.join("a").exists());
    }
}
