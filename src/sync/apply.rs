//! Carries a [`Plan`] out in `dest`: one small function per [`Op`], in the plan's order.
//!
//! It must never write outside `dest` (and the source, when it is consumed), never
//! write through a symlink, and never leave a half-written file under its final name:
//! every new node is made under a temporary name beside it and renamed over
//! ([`crate::fsops`]).

use std::collections::HashSet;
use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{Action, Op, Plan, Stats, SyncOptions};
use crate::entry::{Kind, Meta};
use crate::error::IoContext;
use crate::fsops::{self, Attrs};
use crate::{Error, Result};

/// Carries out `plan`. Stops at the first error, which names the path.
pub fn apply(plan: &Plan, opts: &SyncOptions) -> Result<Stats> {
    let mut stats = Stats {
        unchanged: plan.uptodate,
        ..Stats::default()
    };
    if !nix::unistd::geteuid().is_root() {
        make_writable(plan)?;
    }
    // With `move_source`, a directory renamed whole into dest carries its subtree:
    // the actions below it are already done. Each entry that arrived with it is still
    // logged and counted as created, as `rsync -v` lists it (SPEC §9).
    let mut moved: Option<&Path> = None;
    for a in &plan.actions {
        // The moved directory's own attributes are still set: the plan may give it
        // another mode than the staged tree has (`dest_mode` on a new dest's root).
        let own_attrs = matches!(a.op, Op::DirAttrs { .. }) && moved == Some(a.rel.as_path());
        if moved.is_some_and(|m| a.rel.starts_with(m)) && !own_attrs {
            arrived_with_dir(a, opts, &mut stats);
            continue;
        }
        crate::interrupt::check()?;
        let step = Step {
            plan,
            a,
            path: &plan.dest.join(&a.rel),
            opts,
        };
        if step.run(&mut stats)? == Applied::MovedWhole {
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

/// Directories we must write into (or empty) need u+rwx meanwhile when not root (rsync
/// does the same); `DirAttrs` / `KeepNonEmpty` put the final mode back. They are the
/// parents of deletions (which covers directories replaced by another type) and the
/// dirty directories dest has already.
fn make_writable(plan: &Plan) -> Result<()> {
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
        let p = plan.dest.join(rel);
        let m = fs::symlink_metadata(&p).ctx("stat", &p)?;
        if m.is_dir() && m.mode() & 0o700 != 0o700 {
            fs::set_permissions(&p, Permissions::from_mode((m.mode() & 0o7777) | 0o700))
                .ctx("chmod", &p)?;
        }
    }
    Ok(())
}

/// The log line and count of an entry below a directory that was renamed into dest
/// whole, so already in place: what [`Step::run`] would log and count creating it.
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

/// What [`Step::run`] did, when the caller must know.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Done,
    /// A directory was renamed from the source with its whole subtree.
    MovedWhole,
}

/// One action of a plan, at `path` in dest.
struct Step<'a> {
    plan: &'a Plan,
    a: &'a Action,
    path: &'a Path,
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

    fn delete(&self, dest: &Meta, stats: &mut Stats) -> Result<()> {
        let r = if dest.kind() == Kind::Dir {
            fs::remove_dir(self.path)
        } else {
            fs::remove_file(self.path)
        };
        match r {
            Ok(()) => stats.deleted += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("delete", self.path, e)),
        }
        Ok(())
    }

    /// The directory stays; its mode (made u+rwx meanwhile) is put back.
    fn keep_non_empty(&self, dest: &Meta) -> Result<()> {
        if dest.perms() & 0o700 != 0o700 {
            fs::set_permissions(self.path, Permissions::from_mode(dest.perms()))
                .ctx("chmod", self.path)?;
        }
        Ok(())
    }

    fn make_dir(&self, existing: Option<Kind>, whole: bool, stats: &mut Stats) -> Result<Applied> {
        let path = self.path;
        if self.a.rel.as_os_str().is_empty() {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).ctx("create", parent)?;
            }
        } else {
            clear_for(path, existing)?;
        }
        if self.opts.move_source && whole {
            let from = self.plan.src.join(&self.a.rel);
            match fs::rename(&from, path) {
                Ok(()) => {
                    count_new(stats, existing);
                    return Ok(Applied::MovedWhole);
                }
                // Another filesystem: build it entry by entry instead.
                Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {}
                Err(e) => return Err(Error::io("rename into", path, e)),
            }
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .ctx("mkdir", path)?;
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
            clear_for(self.path, existing)?;
        }
        let from = self.plan.src.join(&self.a.rel);
        if !(self.opts.move_source && !linked && move_file(&from, self.path)?) {
            write_file(&from, self.path, src, self.opts)?;
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
            clear_for(self.path, existing)?;
        }
        let tmp = fsops::create_beside(self.path, |t| std::os::unix::fs::symlink(target, t))?;
        let attrs = Attrs {
            owner: self.opts.preserve_owner.then_some((src.uid, src.gid)),
            mode: None,
            mtime: Some((src.mtime, src.mtime_nsec)),
            atime: None,
        };
        fsops::set_attrs(tmp.path(), &attrs, false)?;
        fsops::rename_to(tmp, self.path)?;
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
            clear_for(self.path, existing)?;
        }
        let tmp = fsops::create_beside(self.path, |t| fsops::mknod(t, src.mode, src.rdev()))?;
        let attrs = Attrs {
            owner: Some((src.uid, src.gid)),
            mode: Some(src.perms()),
            mtime: Some((src.mtime, src.mtime_nsec)),
            atime: None,
        };
        fsops::set_attrs(tmp.path(), &attrs, false)?;
        fsops::rename_to(tmp, self.path)?;
        count_new(stats, existing);
        Ok(())
    }

    /// Same content: owner and mode fixed (a symlink: its mtime when the seconds differ).
    fn keep(&self, src: &Meta, dest: &Meta, stats: &mut Stats) -> Result<()> {
        let shown = crate::log::shown_path(&self.a.rel);
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
        fsops::set_attrs(self.path, &attrs, false)?;
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
                crate::log::shown_path(&self.a.rel),
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
        // Only the root may be a symlink to a directory (`DEST/` follows it).
        fsops::set_attrs(self.path, &attrs, self.a.rel.as_os_str().is_empty())?;
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

/// Writes `from` to a temp file beside `to` with `meta`'s owner, mode and mtime, then
/// renames it over `to`.
fn write_file(from: &Path, to: &Path, meta: &Meta, opts: &SyncOptions) -> Result<()> {
    let mut input = File::open(from).ctx("open", from)?;
    let mut tmp = fsops::file_beside(to)?;
    let tmp_path = tmp.path().to_path_buf();
    copy_keeping_holes(&mut input, tmp.as_file_mut(), meta.size).ctx("write", &tmp_path)?;
    let attrs = Attrs {
        owner: opts.preserve_owner.then_some((meta.uid, meta.gid)),
        mode: Some(meta.perms()),
        mtime: Some((meta.mtime, meta.mtime_nsec)),
        atime: None,
    };
    fsops::set_file_attrs(tmp.as_file(), &tmp_path, &attrs)?;
    fsops::rename_to(tmp, to)?;
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
