//! `rsync -a --delete [--exclude-from F] [--exclude P]... SRC/ DEST/`, in-process (SPEC
//! §6): the one wing that makes `dest` a mirror of an unpacked tree.
//!
//! One file a job: `tree` lists a tree from disk (the only disk reads of planning);
//! `quick` is rsync's quick check (for the plan and for the unpack-time [`DestProbe`]);
//! `plan` merges two listings into a [`Plan`] of plain data without touching the disk;
//! `apply` carries a plan out; `dry_run` renders a plan as the `--dry-run` lines. The
//! door is [`plan_staged`] / [`sync`]:
//! they take the tree only as `Verified<Staged>`, which only a matching checksum makes.
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
//! - stricter than `rsync -a` (SPEC §21): where the quick check says "same", the file is
//!   still rewritten when its content differs — by the staged digest against the
//!   index's ([`plan_staged_with`]), else by reading dest's file (as `rsync
//!   --checksum` would);
//! - a same-target symlink still gets its mtime set (rsync has "symtimes");
//! - the transfer root is never excluded; its mode, mtime (and owner) become `src`'s
//!   (the mode: [`SyncOptions::dest_mode`] when given);
//! - `--delete` judges a dest-only entry by its *dest* type against the rules; excluded
//!   dest entries are kept, and a dest-only directory that still holds excluded entries is
//!   emptied of everything else and kept ("cannot delete non-empty directory");
//! - replacing such a directory by a file or symlink fails (rsync exits 23: "could not make
//!   way"); here `plan` refuses it up front, before anything changed;
//! - directory mtimes are set after their contents.

use std::fmt;
use std::path::{Path, PathBuf};

use std::os::unix::ffi::OsStrExt;

use crate::at::Tree;
use crate::digest::{self, Digests, Known};
use crate::entry::{Entry, Kind, Meta};
use crate::filter::Filter;
use crate::unpack::Staged;
use crate::verify::Verified;
use crate::Result;

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
    /// The permission bits `dest` itself gets (the manifest's `dest_mode`, else the
    /// archive's `.` entry, else 0755, decided by the caller); `None`: the source root's.
    pub dest_mode: Option<u32>,
}

/// One step of a plan, on the path `rel` (relative to both roots; empty = the root),
/// as [`Plan::actions`] hands it out: a view of the plan's entries, made on the way
/// (the plan keeps each step as the index of its entry, not a copy of its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action<'p> {
    /// The path, relative to both roots; empty = the root.
    pub rel: &'p Path,
    /// What to do there.
    pub op: Op,
}

/// One step as the plan keeps it: what to do and the index of the entry it is done to
/// (in [`Plan::after`], or for a deletion in the plan's list of dest's entries to
/// delete); [`Plan::actions`] makes the [`Action`] of it. 8 bytes, no path of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// `Op::Delete` of dest's entry `gone[at]`.
    Delete(u32),
    /// `Op::KeepNonEmpty` of `after[at]` (a `Left` directory).
    KeepNonEmpty(u32),
    /// `Op::MakeDir` of `after[at]`.
    MakeDir {
        at: u32,
        existing: Option<Kind>,
        whole: bool,
    },
    /// `Op::CopyFile`, `MakeSymlink` or `MakeSpecial` of `after[at]`, by its kind.
    Create {
        at: u32,
        existing: Option<Kind>,
        linked: bool,
    },
    /// `Op::Keep` of `after[at]` (fate `Same`).
    Keep(u32),
    /// `Op::DirAttrs` of `after[at]` (fate `Dir`).
    DirAttrs(u32),
}

/// What to do with one path. `existing` is what `dest` holds there now when that is
/// replaced (a type change, or an out-of-date file / symlink / special).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A dest-only entry is removed (a directory's contents come earlier in the plan).
    Delete {
        /// What `dest` holds there.
        dest: Meta,
    },
    /// A dest-only directory that still holds excluded entries: everything else in it is
    /// deleted, the directory stays (rsync: "cannot delete non-empty directory").
    KeepNonEmpty {
        /// What `dest` holds there.
        dest: Meta,
    },
    /// A directory is created (0700 at first; its attributes come with `DirAttrs`).
    /// `whole`: its source subtree holds no excluded entry, no multiply-linked file and
    /// no special file, so with [`SyncOptions::move_source`] it is renamed into place
    /// in one step instead of being rebuilt entry by entry.
    MakeDir {
        /// What `dest` holds there now, when that is replaced.
        existing: Option<Kind>,
        /// The source subtree can be renamed into place whole (see above).
        whole: bool,
    },
    /// A regular file is written from `src` (temp file + rename).
    CopyFile {
        /// The source's attributes.
        src: Meta,
        /// What `dest` holds there now, when that is replaced.
        existing: Option<Kind>,
        /// The source file has other hard links: it is copied, never renamed into
        /// place (`rsync -a` makes separate files of them).
        linked: bool,
    },
    /// A symlink to `target` is made.
    MakeSymlink {
        /// The link target.
        target: PathBuf,
        /// The source's attributes.
        src: Meta,
        /// What `dest` holds there now, when that is replaced.
        existing: Option<Kind>,
    },
    /// A fifo / socket / device node is made (only when preserving owners, i.e. root).
    MakeSpecial {
        /// The source's attributes.
        src: Meta,
        /// What `dest` holds there now, when that is replaced.
        existing: Option<Kind>,
    },
    /// Same content (quick check / same link target): only attributes are fixed.
    Keep {
        /// The source's attributes.
        src: Meta,
        /// What `dest` holds there.
        dest: Meta,
    },
    /// A directory's mode, owner and mtime are set, after its contents. `dirty`: entries
    /// in it are added, removed or replaced, so its mtime must be reset.
    DirAttrs {
        /// The source directory's attributes.
        src: Meta,
        /// `dest`'s directory there, when it already had one.
        dest: Option<Meta>,
        /// Entries in it are added, removed or replaced: its mtime must be reset.
        dirty: bool,
    },
}

/// The list of actions that makes `dest` a mirror of `src`, in the order [`apply`] runs
/// them: deletions (contents before their directory), then creations and updates (parents
/// before children), then directory attributes (children before parents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The source tree (set by the plan only: through [`plan_staged`], a verified tree).
    pub(crate) src: PathBuf,
    /// The source root's device and inode when it was listed: [`apply`] works only in
    /// that very directory.
    pub(crate) src_id: Option<(u64, u64)>,
    /// The dest root the plan is for.
    pub dest: PathBuf,
    /// Dest's device and inode when it was listed (`None`: it did not exist): [`apply`]
    /// refuses another directory put there meanwhile.
    pub(crate) dest_id: Option<(u64, u64)>,
    /// The steps, in the order [`apply`] runs them ([`Plan::actions`]).
    pub(crate) steps: Vec<Step>,
    /// Dest's entries the plan deletes (what [`Step::Delete`] points into).
    pub(crate) gone: Vec<Entry>,
    /// Entries already right in every respect, left out of `actions` (unless listed for
    /// `-vv`), so a plan's size follows the changes, not the tree.
    pub uptodate: u64,
    /// Every entry `dest` holds once the plan is applied (not excluded ones), with
    /// what decides its attributes then: the deploy index is made from it
    /// ([`After::result`]) without walking `dest` again ([`Plan::after`]). The steps
    /// point into it: only the planner pushes to it, nothing removes from it.
    pub(crate) after: Vec<After>,
}

/// How an entry of `dest` comes to be, once a plan is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Written from the source (created, or replaced).
    New,
    /// Same content (quick check / same link target): only attributes fixed.
    Same,
    /// A directory of the source; `dirty`: its mtime is set after its contents.
    Dir {
        /// Entries in it change: its mtime is set after its contents.
        dirty: bool,
    },
    /// A dest-only directory kept for the excluded entries it holds.
    Left,
}

/// One entry of `dest` after the plan (see [`Plan::after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    /// The source's entry: its path (relative to `dest`; empty = `dest` itself), its
    /// attributes (for `Left`: dest's) and a symlink's target.
    pub src: Entry,
    /// What dest held there before, when the entry is not `New`.
    pub dest: Option<Meta>,
    /// How the entry comes to be.
    pub fate: Fate,
}

impl After {
    /// The entry's attributes once [`apply`] has run with `preserve_owner`, as
    /// `apply` sets them: `None` when it will not exist (a special file, not root).
    /// An entry left untouched keeps what dest had (its mtime to the nanosecond:
    /// the quick check compares seconds).
    pub fn result(&self, preserve_owner: bool) -> Option<Meta> {
        let src = &self.src.meta;
        let owner = |d: &Meta| {
            if preserve_owner {
                (src.uid, src.gid)
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
            (Fate::New, _) if src.kind() == Kind::Special && !preserve_owner => None,
            (Fate::New, _) | (Fate::Dir { .. }, None) => Some(*src),
            (Fate::Left, _) => Some(*src),
            (Fate::Same, None) => Some(*src),
            (Fate::Same, Some(d)) => {
                let (perms, time) = match src.kind() {
                    // A symlink gets its mtime when the seconds differ; its mode is not set.
                    Kind::Symlink if src.mtime != d.mtime => (d.perms(), src),
                    Kind::Symlink => (d.perms(), d),
                    _ => (src.perms(), d),
                };
                Some(with(src, perms, owner(d), time))
            }
            (Fate::Dir { dirty }, Some(d)) => {
                let time = if dirty || d.mtime != src.mtime {
                    src
                } else {
                    d
                };
                Some(with(src, src.perms(), owner(d), time))
            }
        }
    }
}

/// A regular file that the unpack found already in dest, equal to the archive's by
/// size, mtime (and mode, owner), and so did not write to staging. The plan treats it
/// as present in the source with these attributes.
pub use crate::unpack::FileAttrs as Kept;

/// Kept files by path relative to the roots (the unpack's listing, keyed by path).
pub(crate) type KeptFiles = crate::unpack::Reused;

impl Plan {
    /// The steps, in the order [`apply`] runs them: deletions (contents before their
    /// directory), creations and updates (parents first), directory attributes
    /// (children first).
    pub fn actions(&self) -> impl DoubleEndedIterator<Item = Action<'_>> + ExactSizeIterator {
        self.steps.iter().map(|s| self.action(*s))
    }

    /// The actions that change something in `dest` beyond attributes (for `--dry-run`).
    pub fn changes(&self) -> impl Iterator<Item = Action<'_>> {
        self.actions().filter(|a| a.is_change())
    }

    /// Every entry `dest` holds once the plan is applied, with what decides its
    /// attributes then (see [`After::result`]), in no particular order.
    pub fn after(&self) -> &[After] {
        &self.after
    }

    /// The action of one step. Its index is one the planner made (`after` and `gone`
    /// only grow while it plans and are never changed afterwards): always in range.
    fn action(&self, step: Step) -> Action<'_> {
        let after = |at: u32| &self.after[at as usize];
        match step {
            Step::Delete(at) => {
                let e = &self.gone[at as usize];
                Action {
                    rel: e.rel(),
                    op: Op::Delete { dest: e.meta },
                }
            }
            Step::KeepNonEmpty(at) => {
                let a = after(at);
                Action {
                    rel: a.src.rel(),
                    op: Op::KeepNonEmpty {
                        dest: a.dest.unwrap_or(a.src.meta),
                    },
                }
            }
            Step::MakeDir {
                at,
                existing,
                whole,
            } => Action {
                rel: after(at).src.rel(),
                op: Op::MakeDir { existing, whole },
            },
            Step::Create {
                at,
                existing,
                linked,
            } => {
                let a = after(at);
                let src = a.src.meta;
                let op = match src.kind() {
                    Kind::File => Op::CopyFile {
                        src,
                        existing,
                        linked,
                    },
                    Kind::Symlink => Op::MakeSymlink {
                        target: a.src.target_path().unwrap_or(Path::new("")).to_path_buf(),
                        src,
                        existing,
                    },
                    // A directory is planned as `MakeDir`, never `Create`.
                    Kind::Special | Kind::Dir => Op::MakeSpecial { src, existing },
                };
                Action {
                    rel: a.src.rel(),
                    op,
                }
            }
            Step::Keep(at) => {
                let a = after(at);
                Action {
                    rel: a.src.rel(),
                    // A `Same` entry always has dest's attributes.
                    op: Op::Keep {
                        src: a.src.meta,
                        dest: a.dest.unwrap_or(a.src.meta),
                    },
                }
            }
            Step::DirAttrs(at) => {
                let a = after(at);
                let dirty = matches!(a.fate, Fate::Dir { dirty: true });
                Action {
                    rel: a.src.rel(),
                    op: Op::DirAttrs {
                        src: a.src.meta,
                        dest: a.dest,
                        dirty,
                    },
                }
            }
        }
    }
}

impl Action<'_> {
    /// Whether this action creates, replaces or removes an entry.
    pub(crate) fn is_change(&self) -> bool {
        !matches!(self.op, Op::Keep { .. } | Op::DirAttrs { .. })
    }
}

/// One line like `rsync -v` prints it (`dir/`, `link -> target`, `deleting x`,
/// `x is uptodate`).
impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rel = if self.rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            self.rel
        };
        let rel = crate::log::shown_path(rel);
        match &self.op {
            Op::Delete { dest } if dest.kind() == Kind::Dir => write!(f, "deleting {rel}/"),
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

mod apply;
pub mod dry_run;
mod plan;
mod quick;
mod tree;

pub use apply::apply;
pub(crate) use plan::plan_with;
pub use quick::{quick_check, DestProbe, Quick};

/// Plans the sync of the verified staged tree onto `dest` under `filter`: both trees
/// are listed, then merged by the pure `plan`. The staged tree's `reused` files (left
/// in dest by the unpack) are planned as present in it; up-to-date entries are listed
/// for `-vv` (`opts.verbosity >= 2`); `opts.dest_mode` becomes the root's mode.
/// Without an index's digests, dest's files that the quick check calls the same are
/// read (see [`plan_staged_with`]). Reads both trees, changes nothing.
pub fn plan_staged(
    staged: &Verified<Staged>,
    dest: &Path,
    filter: &Filter,
    opts: &SyncOptions,
) -> Result<Plan> {
    plan_staged_with(staged, dest, filter, opts, None)
}

/// [`plan_staged`], with what dest's index says of its files' content (`known`): a
/// file the quick check calls the same is kept only when its content is the staged
/// file's — by the staged digest against the index's while dest's file still has the
/// size and mtime it was indexed with (no read), else by reading dest's file.
pub fn plan_staged_with(
    staged: &Verified<Staged>,
    dest: &Path,
    filter: &Filter,
    opts: &SyncOptions,
    known: Option<&Known>,
) -> Result<Plan> {
    plan_from(staged.get(), None, dest, filter, opts, known)
}

/// [`plan_staged_with`], the staged tree listed by what the unpack says it wrote
/// (`Staged::written`, taken out of `staged`) instead of a walk of it, when the unpack
/// listed it.
pub fn plan_staged_listed(
    staged: &mut Verified<Staged>,
    dest: &Path,
    filter: &Filter,
    opts: &SyncOptions,
    known: Option<&Known>,
) -> Result<Plan> {
    let written = staged.take(|s| &mut s.written).into_inner();
    plan_from(staged.get(), written, dest, filter, opts, known)
}

/// The plan of the sync of `staged` (`written`: its listing by the unpack, else it is
/// walked) onto `dest`.
fn plan_from(
    staged: &Staged,
    written: Option<Vec<Entry>>,
    dest: &Path,
    filter: &Filter,
    opts: &SyncOptions,
    known: Option<&Known>,
) -> Result<Plan> {
    let src_tree = open_source(staged)?;
    let mut src = match written {
        Some(written) => tree::source_listed(&src_tree, written, filter)?,
        None => tree::source(&src_tree, filter)?,
    };
    tree::add_listed(&mut src.walked, &staged.listed_dirs, filter);
    if let (Some(mode), Some(root)) = (opts.dest_mode, src.root_meta.as_mut()) {
        root.mode = (root.mode & !0o7777) | (mode & 0o7777);
    }
    let dest_tree = tree::open_dest(dest)?;
    let dest = tree::dest(dest, dest_tree.as_ref(), filter, &src)?;
    let mut same = |rel: &Path, now: &Meta| {
        let trees = (&src_tree, dest_tree.as_ref());
        same_content(trees, &staged.digests, known, rel, now)
    };
    let uptodate = opts.verbosity >= 2;
    plan_with(src, dest, filter, &staged.reused, uptodate, &mut same)
}

/// Whether dest's file at `rel` (`now`: its listed attributes) holds the staged
/// file's content (SPEC §21): the staged digest against the index's (`known`) while
/// the file still has the size and mtime it was indexed with; else dest's file is read
/// and hashed (without a staged digest, both files' data are compared, holes
/// skipped). A file that cannot be read is not the same (it is replaced, or its error
/// told then).
fn same_content(
    (src, dest): (&Tree, Option<&Tree>),
    digests: &Digests,
    known: Option<&Known>,
    rel: &Path,
    now: &Meta,
) -> bool {
    let path = rel.as_os_str().as_bytes();
    let staged = digests.get(path).copied();
    if let (Some(s), Some(k)) = (staged, known.and_then(|k| k.get(path, now))) {
        return s == *k;
    }
    let Some(dest) = dest else {
        return false;
    };
    match staged {
        Some(s) => digest::of_file(dest, rel).is_ok_and(|d| d == s),
        // No digest (a large sparse file): the two files' data compared, holes skipped.
        None => match (
            digest::open_regular(src, rel),
            digest::open_regular(dest, rel),
        ) {
            (Ok(a), Ok(b)) => digest::same_bytes(&a, &b).unwrap_or(false),
            _ => false,
        },
    }
}

/// The staged tree opened as the sync's source: the one place it is opened by path (a
/// symlink at its name refused); [`apply`] reopens it only as this very directory.
pub(crate) fn open_source(staged: &Staged) -> Result<crate::at::Tree> {
    crate::at::Tree::open_same(&staged.root, staged.root_id)
        .map_err(|e| crate::Error::io("open", &staged.root, e))
}

/// [`plan_staged`] then [`apply`].
pub fn sync(
    staged: &Verified<Staged>,
    dest: &Path,
    filter: &Filter,
    opts: &SyncOptions,
) -> Result<Stats> {
    apply(&plan_staged(staged, dest, filter, opts)?, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use filetime::FileTime;
    use std::fs::{self, File};
    use std::os::unix::fs::symlink;
    use std::os::unix::fs::MetadataExt;

    fn write(p: &Path, data: &str, mtime: i64) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
        filetime::set_file_mtime(p, FileTime::from_unix_time(mtime, 0)).unwrap();
    }

    /// The plan of `src` onto `dest` as deploy makes it, from trees on disk (no
    /// digests known: files the quick check calls the same are read).
    fn plan_paths(src: &Path, dest: &Path, filter: &Filter) -> Result<Plan> {
        let src_tree = crate::at::Tree::open(src, false).unwrap();
        let src = tree::source(&src_tree, filter)?;
        let dest_tree = tree::open_dest(dest)?;
        let dest = tree::dest(dest, dest_tree.as_ref(), filter, &src)?;
        let none = Digests::default();
        let mut same = |rel: &Path, now: &Meta| {
            same_content((&src_tree, dest_tree.as_ref()), &none, None, rel, now)
        };
        plan_with(src, dest, filter, &KeptFiles::default(), true, &mut same)
    }

    fn sync_paths(src: &Path, dest: &Path, filter: &Filter, opts: &SyncOptions) -> Result<Stats> {
        apply(&plan_paths(src, dest, filter)?, opts)
    }

    fn ops(plan: &Plan) -> Vec<String> {
        plan.actions()
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
        let p = plan_paths(&src, &dest, &Filter::empty()).unwrap();
        assert!(ops(&p).is_empty(), "{:?}", ops(&p));
        assert_eq!(p.actions().len(), 4); // b.txt, l, a/, root
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
        let p = plan_paths(&src, &dest, &f).unwrap();
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
        let st = sync_paths(&src, &dest, &Filter::empty(), &opts).unwrap();
        assert_eq!(st.created, 5);
        // same size and mtime, other bytes: the quick check says "same", the content
        // does not (SPEC §21: stricter than rsync -a), so it is replaced.
        write(&dest.join("same"), "bbb", 200);
        fs::remove_dir(dest.join("was_file")).unwrap();
        write(&dest.join("was_file"), "file", 1);
        let st = sync_paths(&src, &dest, &Filter::empty(), &opts).unwrap();
        assert_eq!((st.updated, st.created, st.deleted), (2, 0, 0));
        assert_eq!(fs::read_to_string(dest.join("same")).unwrap(), "aaa");
        let st = sync_paths(&src, &dest, &Filter::empty(), &opts).unwrap();
        assert_eq!((st.updated, st.created, st.deleted), (0, 0, 0));
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
        sync_paths(&src, &dest, &Filter::empty(), &SyncOptions::default()).unwrap();
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
        let err = plan_paths(&src, &dest, &f).unwrap_err();
        assert!(matches!(err, Error::Sync { .. }), "{err}");
    }

    #[test]
    fn a_dest_directory_swapped_for_a_symlink_after_the_plan_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest, outside) = (t.path().join("s"), t.path().join("d"), t.path().join("o"));
        write(&src.join("data/new"), "new", 1);
        write(&dest.join("data/old"), "old", 1);
        write(&outside.join("old"), "outside", 1);
        let plan = plan_paths(&src, &dest, &Filter::empty()).unwrap();
        fs::rename(dest.join("data"), t.path().join("moved")).unwrap();
        symlink(&outside, dest.join("data")).unwrap();
        let err = apply(&plan, &SyncOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not followed"), "{err}");
        let names: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("old")]);
        assert_eq!(fs::read(outside.join("old")).unwrap(), b"outside");
    }

    #[test]
    fn a_dest_or_source_replaced_after_the_plan_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("s"), t.path().join("d"));
        write(&src.join("f"), "new", 1);
        fs::create_dir(&dest).unwrap();
        let plan = plan_paths(&src, &dest, &Filter::empty()).unwrap();
        fs::rename(&dest, t.path().join("d.old")).unwrap();
        fs::create_dir(&dest).unwrap();
        let err = apply(&plan, &SyncOptions::default()).unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");

        let plan = plan_paths(&src, &dest, &Filter::empty()).unwrap();
        fs::rename(&src, t.path().join("s.old")).unwrap();
        write(&src.join("f"), "swapped", 1);
        let err = apply(&plan, &SyncOptions::default()).unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        assert!(!dest.join("f").exists());
    }

    #[test]
    fn a_symlinked_dest_is_followed_at_its_own_name_only() {
        let t = tempfile::tempdir().unwrap();
        let (src, real, dest) = (
            t.path().join("s"),
            t.path().join("real"),
            t.path().join("d"),
        );
        write(&src.join("sub/f"), "x", 1);
        fs::create_dir(&real).unwrap();
        symlink(&real, &dest).unwrap();
        sync_paths(&src, &dest, &Filter::empty(), &SyncOptions::default()).unwrap();
        assert_eq!(fs::read(real.join("sub/f")).unwrap(), b"x");
        assert!(fs::symlink_metadata(&dest)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    /// The plan's digest rule (SPEC §21): where the quick check says "same", the
    /// staged digest against the index's while dest's file has its indexed size and
    /// mtime; else dest's bytes.
    #[test]
    fn same_content_trusts_the_index_only_for_an_untouched_file() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("s"), t.path().join("d"));
        write(&src.join("f"), "new", 100);
        write(&dest.join("f"), "old", 100);
        let (s, d) = (
            crate::at::Tree::open(&src, false).unwrap(),
            crate::at::Tree::open(&dest, false).unwrap(),
        );
        let now = Meta::from(&d.lstat(Path::new("f")).unwrap());
        let rel = Path::new("f");
        let h = |b: &[u8]| digest::of_reader(&mut &b[..], &mut [0u8; 8]).unwrap();
        let staged = Digests::from_unsorted(vec![(b"f"[..].into(), h(b"new"))]);
        // no index: dest's bytes are read
        assert!(!same_content((&s, Some(&d)), &staged, None, rel, &now));
        assert!(!same_content(
            (&s, Some(&d)),
            &Digests::default(),
            None,
            rel,
            &now
        ));
        // the index says dest holds "new" (and dest's file is as indexed): no read
        let says = |b: &[u8], m: &Meta| Known::new([(&b"f"[..], m, h(b))].into_iter());
        let k = says(b"new", &now);
        assert!(same_content((&s, Some(&d)), &staged, Some(&k), rel, &now));
        let k = says(b"old", &now);
        assert!(!same_content((&s, Some(&d)), &staged, Some(&k), rel, &now));
        // touched since it was indexed: the index's digest no longer answers
        let mut then = now;
        then.mtime_nsec = now.mtime_nsec.wrapping_add(1) % 1_000_000_000;
        let k = says(b"new", &then);
        assert!(!same_content((&s, Some(&d)), &staged, Some(&k), rel, &now));
        // equal bytes, no index
        write(&dest.join("f"), "new", 100);
        let now = Meta::from(&d.lstat(Path::new("f")).unwrap());
        assert!(same_content((&s, Some(&d)), &staged, None, rel, &now));
        assert!(same_content(
            (&s, Some(&d)),
            &Digests::default(),
            None,
            rel,
            &now
        ));
    }
}
