//! Carries a [`Plan`] out in `dest`: one small function per [`Op`], in the plan's order.
//!
//! Every change is made relative to directory descriptors ([`crate::at::Tree`]): dest
//! is reopened as the very directory the plan listed (a symlink at dest itself
//! followed, rsync's `DEST/`), the source as the very staged directory, and every path
//! below them is resolved without following a symlink, also one another user swaps in
//! for a directory while the sync runs: such a change fails naming it.
//!
//! It must never write outside `dest` (and the source, when it is consumed), never
//! write through a symlink, and never leave a half-written file under its final name:
//! every new node is made under a temporary name beside it and renamed over
//! ([`crate::fsops`]).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::Path;

use super::{tree, Action, Op, Plan, Stats, SyncOptions};
use crate::at::Tree;
use crate::entry::{Kind, Meta};
use crate::fsops::{self, Attrs};
use crate::{Error, Result};

/// The two trees a plan is carried out between.
struct Trees {
    /// The staged tree (`None`: a plan made by hand without one).
    src: Option<Tree>,
    /// Dest (`None` until made, when it did not exist).
    dest: Option<Tree>,
}

impl Trees {
    /// Reopens the plan's trees, refusing a directory that is not the one listed.
    fn open(plan: &Plan) -> Result<Trees> {
        let src = match plan.src_id {
            Some(id) => {
                Some(Tree::open_same(&plan.src, id).map_err(|e| Error::io("open", &plan.src, e))?)
            }
            None => None,
        };
        let dest = tree::open_dest(&plan.dest)?;
        let now = match &dest {
            Some(t) => Some(t.id().map_err(|e| Error::io("stat", &plan.dest, e))?),
            None => None,
        };
        if now.is_some() && now != plan.dest_id {
            return Err(Error::Sync {
                path: plan.dest.clone(),
                msg: "replaced while the deploy ran: refused".into(),
            });
        }
        Ok(Trees { src, dest })
    }

    fn src(&self, plan: &Plan) -> Result<&Tree> {
        self.src.as_ref().ok_or_else(|| Error::Sync {
            path: plan.src.clone(),
            msg: "the plan has no source tree".into(),
        })
    }

    fn dest(&self, plan: &Plan) -> Result<&Tree> {
        self.dest.as_ref().ok_or_else(|| Error::Sync {
            path: plan.dest.clone(),
            msg: "does not exist".into(),
        })
    }
}

/// Carries out `plan`. Stops at the first error, which names the path.
pub fn apply(plan: &Plan, opts: &SyncOptions) -> Result<Stats> {
    // A line for each entry: written to stderr 64 KiB at a time.
    let _burst = crate::log::burst();
    let mut stats = Stats {
        unchanged: plan.uptodate,
        ..Stats::default()
    };
    let mut trees = Trees::open(plan)?;
    if !nix::unistd::geteuid().is_root() {
        if let Some(dest) = &trees.dest {
            make_writable(plan, dest)?;
        }
    }
    // With `move_source`, a directory renamed whole into dest carries its subtree:
    // the actions below it are already done. Each entry that arrived with it is still
    // logged and counted as created, as `rsync -v` lists it (SPEC §9).
    let mut moved: Option<&Path> = None;
    for a in plan.actions() {
        // The moved directory's own attributes are still set: the plan may give it
        // another mode than the staged tree has (`dest_mode` on a new dest's root).
        let own_attrs = matches!(a.op, Op::DirAttrs { .. }) && moved == Some(a.rel);
        if moved.is_some_and(|m| a.rel.starts_with(m)) && !own_attrs {
            arrived_with_dir(&a, opts, &mut stats);
            continue;
        }
        crate::interrupt::check()?;
        if let (true, Op::MakeDir { whole, .. }) = (a.rel.as_os_str().is_empty(), &a.op) {
            if make_root(plan, &a, *whole, opts, &mut trees)? == Applied::MovedWhole {
                moved = Some(a.rel);
            }
            count_new(&mut stats, None);
            continue;
        }
        let step = Step {
            plan,
            a: &a,
            src: &trees,
            dest: trees.dest(plan)?,
            opts,
        };
        if step.run(&mut stats)? == Applied::MovedWhole {
            moved = Some(a.rel);
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

/// Makes dest itself, absent when the plan was made: its parents by path (the path up
/// to dest is trusted, SPEC §17), then dest in its parent's descriptor, renamed from
/// the source whole when it may be (the very directory listed, checked before and
/// after), else made empty; dest's tree is opened from its parent.
fn make_root(
    plan: &Plan,
    a: &Action<'_>,
    whole: bool,
    opts: &SyncOptions,
    trees: &mut Trees,
) -> Result<Applied> {
    if opts.verbosity >= 1 {
        crate::logln!("{a}");
    }
    let path = &plan.dest;
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            },
            n,
        ),
        _ => {
            return Err(Error::Sync {
                path: path.clone(),
                msg: "no name to make the destination at".into(),
            })
        }
    };
    std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
    let parent_tree = Tree::open(parent, true).map_err(|e| Error::io("open", parent, e))?;
    let name = Path::new(name);
    let mut applied = Applied::Done;
    let src_parent = plan.src.parent().filter(|p| !p.as_os_str().is_empty());
    if let (true, true, Some(src_id), Some(src_parent), Some(src_name)) = (
        opts.move_source,
        whole,
        plan.src_id,
        src_parent,
        plan.src.file_name(),
    ) {
        let from = Tree::open(src_parent, true).map_err(|e| Error::io("open", src_parent, e))?;
        let src_name = Path::new(src_name);
        let same = |t: &Tree, rel: &Path| {
            t.lstat(rel)
                .is_ok_and(|st| (st.st_dev, st.st_ino) == src_id)
        };
        if !same(&from, src_name) {
            return Err(Error::Sync {
                path: plan.src.clone(),
                msg: "replaced while the deploy ran: refused".into(),
            });
        }
        match from.rename(src_name, &parent_tree, name) {
            Ok(()) => {
                if !same(&parent_tree, name) {
                    return Err(Error::Sync {
                        path: path.clone(),
                        msg: "not the staged directory after the rename: refused".into(),
                    });
                }
                applied = Applied::MovedWhole;
            }
            // Another filesystem: build it entry by entry instead.
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {}
            Err(e) => return Err(Error::io("rename into", path, e)),
        }
    }
    if applied == Applied::Done {
        parent_tree
            .mkdir(name, 0o700)
            .map_err(|e| Error::io("mkdir", path, e))?;
    }
    let dest = parent_tree
        .sub(name)
        .map_err(|e| Error::io("open", path, e))?;
    trees.dest = Some(dest);
    Ok(applied)
}

/// Directories we must write into (or empty) need u+rwx meanwhile when not root (rsync
/// does the same); `DirAttrs` / `KeepNonEmpty` put the final mode back. They are the
/// parents of deletions (which covers directories replaced by another type) and the
/// dirty directories dest has already.
fn make_writable(plan: &Plan, dest: &Tree) -> Result<()> {
    let mut dirs: HashSet<&Path> = HashSet::new();
    for a in plan.actions() {
        match &a.op {
            Op::Delete { .. } => {
                dirs.insert(a.rel.parent().unwrap_or(Path::new("")));
            }
            Op::DirAttrs {
                dest: Some(_),
                dirty: true,
                ..
            } => {
                dirs.insert(a.rel);
            }
            _ => {}
        }
    }
    for rel in dirs {
        let st = dest
            .lstat(rel)
            .map_err(|e| Error::io("stat", dest.shown(rel), e))?;
        let is_dir = Meta::from(&st).kind() == Kind::Dir;
        if is_dir && st.st_mode & 0o700 != 0o700 {
            dest.chmod(rel, (st.st_mode & 0o7777) | 0o700)
                .map_err(|e| Error::io("chmod", dest.shown(rel), e))?;
        }
    }
    Ok(())
}

/// The log line and count of an entry below a directory that was renamed into dest
/// whole, so already in place: what [`Step::run`] would log and count creating it.
fn arrived_with_dir(a: &Action<'_>, opts: &SyncOptions, stats: &mut Stats) {
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

/// What [`Step::run`] did, when the caller must know.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Done,
    /// A directory was renamed from the source with its whole subtree.
    MovedWhole,
}

/// One action of a plan, at `a.rel` in dest.
struct Step<'a> {
    plan: &'a Plan,
    a: &'a Action<'a>,
    src: &'a Trees,
    dest: &'a Tree,
    opts: &'a SyncOptions,
}

impl Step<'_> {
    fn run(&self, stats: &mut Stats) -> Result<Applied> {
        let log_at = match &self.a.op {
            Op::Keep { .. } => 2,
            Op::DirAttrs { .. } | Op::MakeSpecial { .. } => u8::MAX,
            _ => 1,
        };
        if self.opts.verbosity >= log_at {
            crate::logln!("{}", self.a);
        }
        match &self.a.op {
            Op::Delete { dest } => self.delete(dest, stats)?,
            Op::KeepNonEmpty { dest } => self.keep_non_empty(dest)?,
            Op::MakeDir { existing, whole } => return self.make_dir(*existing, *whole, stats),
            Op::CopyFile {
                src,
                existing,
                linked,
            } => self.copy_file(src, *existing, *linked, stats)?,
            Op::MakeSymlink {
                target,
                src,
                existing,
            } => self.make_symlink(target, src, *existing, stats)?,
            Op::MakeSpecial { src, existing } => self.make_special(src, *existing, stats)?,
            Op::Keep { src, dest } => self.keep(src, dest, stats)?,
            Op::DirAttrs { src, dest, dirty } => {
                self.dir_attrs(src, dest.as_ref(), *dirty, stats)?
            }
        }
        Ok(Applied::Done)
    }

    /// `rel` in dest, for messages.
    fn shown(&self) -> std::path::PathBuf {
        self.dest.shown(self.a.rel)
    }

    fn rel(&self) -> &Path {
        self.a.rel
    }

    /// A dest entry the plan deletes; a directory is empty by then (the plan deletes
    /// its contents first, each by `unlinkat` in its own directory).
    fn delete(&self, dest: &Meta, stats: &mut Stats) -> Result<()> {
        let r = if dest.kind() == Kind::Dir {
            self.dest.rmdir(self.rel())
        } else {
            self.dest.unlink(self.rel())
        };
        match r {
            Ok(()) => stats.deleted += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("delete", self.shown(), e)),
        }
        Ok(())
    }

    /// The directory stays; its mode (made u+rwx meanwhile) is put back.
    fn keep_non_empty(&self, dest: &Meta) -> Result<()> {
        if dest.perms() & 0o700 != 0o700 {
            self.dest
                .chmod(self.rel(), dest.perms())
                .map_err(|e| Error::io("chmod", self.shown(), e))?;
        }
        Ok(())
    }

    fn make_dir(&self, existing: Option<Kind>, whole: bool, stats: &mut Stats) -> Result<Applied> {
        clear_for(self.dest, self.rel(), existing)?;
        if self.opts.move_source && whole {
            let src = self.src.src(self.plan)?;
            match src.rename(self.rel(), self.dest, self.rel()) {
                Ok(()) => {
                    src.forget();
                    self.dest.forget();
                    count_new(stats, existing);
                    return Ok(Applied::MovedWhole);
                }
                // Another filesystem: build it entry by entry instead.
                Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {}
                Err(e) => return Err(Error::io("rename into", self.shown(), e)),
            }
        }
        self.dest
            .mkdir(self.rel(), 0o700)
            .map_err(|e| Error::io("mkdir", self.shown(), e))?;
        count_new(stats, existing);
        Ok(Applied::Done)
    }

    fn copy_file(
        &self,
        src: &Meta,
        existing: Option<Kind>,
        linked: bool,
        stats: &mut Stats,
    ) -> Result<()> {
        if existing == Some(Kind::Dir) {
            clear_for(self.dest, self.rel(), existing)?;
        }
        let from = self.src.src(self.plan)?;
        if !(self.opts.move_source && !linked && move_file(from, self.dest, self.rel())?) {
            write_file(from, self.dest, self.rel(), src, self.opts)?;
        }
        stats.bytes_copied += src.size;
        count_new(stats, existing);
        Ok(())
    }

    fn make_symlink(
        &self,
        target: &Path,
        src: &Meta,
        existing: Option<Kind>,
        stats: &mut Stats,
    ) -> Result<()> {
        if existing == Some(Kind::Dir) {
            clear_for(self.dest, self.rel(), existing)?;
        }
        let tmp = fsops::create_beside(self.dest, self.rel(), |t, r| t.symlink(target, r))?;
        let attrs = Attrs {
            owner: self.opts.preserve_owner.then_some((src.uid, src.gid)),
            mode: None,
            mtime: Some((src.mtime, src.mtime_nsec)),
            atime: None,
        };
        fsops::set_attrs(self.dest, tmp.rel(), &attrs)?;
        tmp.rename_to(self.rel())?;
        count_new(stats, existing);
        Ok(())
    }

    /// Only as root (owners preserved); otherwise skipped with a log line.
    fn make_special(&self, src: &Meta, existing: Option<Kind>, stats: &mut Stats) -> Result<()> {
        if !self.opts.preserve_owner {
            crate::logln!(
                "skipping non-regular file {:?} (not running as root)",
                self.a.rel
            );
            stats.skipped += 1;
            return Ok(());
        }
        if self.opts.verbosity >= 1 {
            crate::logln!("{}", self.a);
        }
        if existing == Some(Kind::Dir) {
            clear_for(self.dest, self.rel(), existing)?;
        }
        let tmp = fsops::create_beside(self.dest, self.rel(), |t, r| {
            t.mknod(r, src.mode, 0o600, src.rdev())
        })?;
        let attrs = Attrs {
            owner: Some((src.uid, src.gid)),
            mode: Some(src.perms()),
            mtime: Some((src.mtime, src.mtime_nsec)),
            atime: None,
        };
        fsops::set_attrs(self.dest, tmp.rel(), &attrs)?;
        tmp.rename_to(self.rel())?;
        count_new(stats, existing);
        Ok(())
    }

    /// Same content: owner and mode fixed (a symlink: its mtime when the seconds differ).
    fn keep(&self, src: &Meta, dest: &Meta, stats: &mut Stats) -> Result<()> {
        let shown = crate::log::shown_path(self.a.rel);
        let chown = self.opts.preserve_owner && (src.uid, src.gid) != (dest.uid, dest.gid);
        if chown && self.opts.verbosity >= 3 {
            crate::logln!("{shown}: owner {}:{}", src.uid, src.gid);
        }
        let mut attrs = Attrs {
            owner: chown.then_some((src.uid, src.gid)),
            ..Attrs::default()
        };
        if src.kind() == Kind::Symlink {
            if src.mtime != dest.mtime {
                attrs.mtime = Some((src.mtime, src.mtime_nsec));
            }
        } else if chown || src.perms() != dest.perms() {
            if self.opts.verbosity >= 3 {
                crate::logln!("{shown}: mode {:04o}", src.perms());
            }
            attrs.mode = Some(src.perms());
        }
        fsops::set_attrs(self.dest, self.rel(), &attrs)?;
        stats.unchanged += 1;
        Ok(())
    }

    /// A directory's owner, mode and (when `dirty` or different) mtime, after its
    /// contents.
    fn dir_attrs(
        &self,
        src: &Meta,
        dest: Option<&Meta>,
        dirty: bool,
        stats: &mut Stats,
    ) -> Result<()> {
        let chown =
            self.opts.preserve_owner && dest.is_none_or(|d| (d.uid, d.gid) != (src.uid, src.gid));
        let writable_fix = dirty && dest.is_some_and(|d| d.perms() & 0o700 != 0o700);
        let chmod = chown || writable_fix || dest.is_none_or(|d| d.perms() != src.perms());
        if chmod && self.opts.verbosity >= 3 {
            crate::logln!(
                "{}/: mode {:04o}",
                crate::log::shown_path(self.a.rel),
                src.perms()
            );
        }
        let retime = dirty || dest.is_none_or(|d| d.mtime != src.mtime);
        let attrs = Attrs {
            owner: chown.then_some((src.uid, src.gid)),
            mode: chmod.then_some(src.perms()),
            mtime: retime.then_some((src.mtime, src.mtime_nsec)),
            atime: None,
        };
        // The root (empty `rel`) through the tree's own descriptor: the directory a
        // symlinked `DEST/` names, as rsync does.
        fsops::set_attrs(self.dest, self.rel(), &attrs)?;
        if dest.is_some() {
            stats.unchanged += 1;
        }
        Ok(())
    }
}

fn count_new(stats: &mut Stats, existing: Option<Kind>) {
    match existing {
        None => stats.created += 1,
        Some(_) => stats.updated += 1,
    }
}

/// Renames the staged file `rel` over the same name in dest (atomic). `false` when
/// the two are on different filesystems and the caller must copy. The staged file
/// already carries the mode, mtime and owner a copy would get, since a copy takes them
/// from it.
fn move_file(src: &Tree, dest: &Tree, rel: &Path) -> Result<bool> {
    match src.rename(rel, dest, rel) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => Ok(false),
        Err(e) => Err(Error::io("rename into", dest.shown(rel), e)),
    }
}

/// Removes what stands in the way of a new entry of another type at `rel`: an (already
/// emptied) directory, or a non-directory when a directory is to be made there.
fn clear_for(dest: &Tree, rel: &Path, existing: Option<Kind>) -> Result<()> {
    let r = match existing {
        None => return Ok(()),
        Some(Kind::Dir) => dest.rmdir(rel),
        Some(_) => dest.unlink(rel),
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io("remove", dest.shown(rel), e))
        }
        _ => Ok(()),
    }
}

/// Writes the source's `rel` (opened through the source tree, never following a
/// symlink) to a temp file beside `rel` in dest with `meta`'s owner, mode and mtime,
/// then renames it over `rel`.
fn write_file(src: &Tree, dest: &Tree, rel: &Path, meta: &Meta, opts: &SyncOptions) -> Result<()> {
    let mut input = src
        .open_file(rel)
        .map_err(|e| Error::io("open", src.shown(rel), e))?;
    let mut tmp = fsops::file_beside(dest, rel)?;
    let tmp_path = dest.shown(tmp.rel());
    copy_keeping_holes(&mut input, tmp.get_mut(), meta.size)
        .map_err(|e| Error::io("write", &tmp_path, e))?;
    let attrs = Attrs {
        owner: opts.preserve_owner.then_some((meta.uid, meta.gid)),
        mode: Some(meta.perms()),
        mtime: Some((meta.mtime, meta.mtime_nsec)),
        atime: None,
    };
    fsops::set_file_attrs(tmp.get(), &tmp_path, &attrs)?;
    tmp.rename_to(rel)?;
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
