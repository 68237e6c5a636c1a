//! Carries a plan out.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::error::IoContext;
use crate::{Error, Result};

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
