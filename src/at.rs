//! Trees worked on through directory descriptors (SPEC §17): the one way stretcher
//! creates, changes, walks and removes anything in staging, `dest`, a release and the
//! directories beside them that another user may write.
//!
//! A [`Tree`] is a directory opened once; every operation names a path *relative* to
//! it, resolves that path's parent with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! (or `openat(O_NOFOLLOW)` component by component on kernels without `openat2`) and
//! acts with the `*at` call on the last name, never following a symbolic link — also
//! one swapped in for a directory while the run goes on: a symlink where a directory is
//! expected fails with [`Refused`](FOLLOW) naming it. New files are made
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, modes and owners set through the open descriptor.
//! The last parent opened is kept, so a run over a sorted tree costs one extra
//! `openat2` per directory, not per file.
//!
//! [`remove_tree`] removes a directory tree holding at most two descriptors whatever its
//! depth (it climbs back with `..`, checking each directory's inode on the way).
//!
//! It must never follow a symbolic link below a tree's root, never set a mode or owner
//! by path, and never keep more than one cached descriptor per tree.

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, Timestamps, CWD};
use rustix::io::Errno;

/// The message of the error a symlink where a directory (or a new name) was expected
/// gives: it is never followed.
pub const FOLLOW: &str = "a symbolic link where a directory was expected (not followed)";

/// A directory opened once; paths are relative to it (empty: the directory itself).
#[derive(Debug)]
pub struct Tree {
    fd: OwnedFd,
    path: PathBuf,
    /// The last parent directory resolved, by its relative path.
    last: RefCell<Option<(PathBuf, Arc<OwnedFd>)>>,
}

/// An `io::Error` from an errno, `ELOOP` told as a refused symlink.
fn err(e: Errno) -> io::Error {
    if e == Errno::LOOP {
        io::Error::other(FOLLOW)
    } else {
        e.into()
    }
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

/// Whether the kernel answered `openat2` at all (set on the first `ENOSYS`/`EPERM`
/// from a seccomp filter).
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Opens `rel` below `dir` as a directory, following no symlink on the way; a
/// symlink on the way is named in the error.
fn open_beneath(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    open_beneath_raw(dir, rel).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => explain(dir, rel, e),
        e => err(e),
    })
}

/// Why `rel` is not a directory below `dir`: the first symlink on its way (named), or
/// the plain error.
fn explain(dir: BorrowedFd<'_>, rel: &Path, e: Errno) -> io::Error {
    let mut prefix = PathBuf::new();
    for comp in rel.components() {
        prefix.push(comp);
        match rustix::fs::statat(dir, &prefix, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                return io::Error::other(format!("{}: {FOLLOW}", prefix.display()));
            }
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                return io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{}: not a directory", prefix.display()),
                );
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    err(e)
}

fn open_beneath_raw(dir: BorrowedFd<'_>, rel: &Path) -> rustix::io::Result<OwnedFd> {
    use std::sync::atomic::Ordering;
    if rel.as_os_str().is_empty() {
        return rustix::fs::openat(dir, c".", DIR_FLAGS, Mode::empty());
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(dir, rel, DIR_FLAGS, Mode::empty(), how) {
            Err(Errno::NOSYS) | Err(Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // openat2 may ask to retry when a rename raced with the lookup.
            Err(Errno::AGAIN) => {}
            other => return other,
        }
    }
    let mut cur: Option<OwnedFd> = None;
    for comp in rel.components() {
        // `..`, `/` or `.` never reach here from a checked relative path; refused.
        let Component::Normal(name) = comp else {
            return Err(Errno::XDEV);
        };
        let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
        cur = Some(rustix::fs::openat(base, name, DIR_FLAGS, Mode::empty())?);
    }
    match cur {
        Some(fd) => Ok(fd),
        None => rustix::fs::openat(dir, c".", DIR_FLAGS, Mode::empty()),
    }
}

/// The last component of `rel`, refused when `rel` has none (the root itself).
fn last_name(rel: &Path) -> io::Result<&OsStr> {
    match rel.components().next_back() {
        Some(Component::Normal(name)) => Ok(name),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a name below the tree: {:?}", rel.display()),
        )),
    }
}

impl Tree {
    /// Opens the directory `path`. `path` itself is trusted (SPEC §17: the path up to
    /// `dest` is), a symlink at its end followed only when `follow` is set.
    pub fn open(path: &Path, follow: bool) -> io::Result<Tree> {
        let mut flags = DIR_FLAGS;
        if follow {
            flags.remove(OFlags::NOFOLLOW);
        }
        let fd = rustix::fs::openat(CWD, path, flags, Mode::empty()).map_err(err)?;
        Ok(Tree::from_fd(fd, path.to_path_buf()))
    }

    /// Opens the directory `path` (a symlink at its end refused) and checks that it is
    /// the very directory [`Tree::id`] gave earlier: a directory another user swapped
    /// in under the same name is refused.
    pub fn open_same(path: &Path, id: (u64, u64)) -> io::Result<Tree> {
        let replaced = || {
            io::Error::other(format!(
                "{} was replaced while the deploy ran: refused",
                path.display()
            ))
        };
        let tree = match Tree::open(path, false) {
            Ok(tree) => tree,
            // A symlink (or another kind of node) where the directory was.
            Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
                let what = match rustix::fs::lstat(path) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                        "by a symbolic link (not followed)"
                    }
                    _ => "by something that is not a directory",
                };
                return Err(io::Error::other(format!(
                    "{} was replaced {what} while the deploy ran: refused",
                    path.display()
                )));
            }
            Err(e) if e.to_string() == FOLLOW => return Err(replaced()),
            Err(e) => return Err(e),
        };
        if tree.id()? != id {
            return Err(io::Error::other(format!(
                "{} was replaced while the deploy ran: refused",
                path.display()
            )));
        }
        Ok(tree)
    }

    /// The root's device and inode numbers: which directory this is.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstat(&self.fd).map_err(err)?;
        Ok((st.st_dev, st.st_ino))
    }

    /// The tree of an open directory descriptor, shown as `path`.
    pub fn from_fd(fd: OwnedFd, path: PathBuf) -> Tree {
        Tree {
            fd,
            path,
            last: RefCell::new(None),
        }
    }

    /// Another handle on the same directory (its descriptor duplicated, its own
    /// parent cache): for a thread of its own, as a `Tree` is not `Sync`.
    pub fn try_clone(&self) -> io::Result<Tree> {
        let fd = self.fd.try_clone()?;
        Ok(Tree::from_fd(fd, self.path.clone()))
    }

    /// The directory `rel` below this tree as a tree of its own.
    pub fn sub(&self, rel: &Path) -> io::Result<Tree> {
        Ok(Tree::from_fd(self.open_dir(rel)?, self.path.join(rel)))
    }

    /// Where the tree was opened (for messages; never used to reach it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` shown with the tree's path (for messages only).
    pub fn shown(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// The root's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory `rel` (empty: the root), opened without following any symlink.
    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        open_beneath(self.fd.as_fd(), rel)
    }

    /// Runs `f` with the directory holding `rel` and `rel`'s last name.
    pub fn at<T>(
        &self,
        rel: &Path,
        f: impl FnOnce(BorrowedFd<'_>, &OsStr) -> rustix::io::Result<T>,
    ) -> io::Result<T> {
        let name = last_name(rel)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() {
            return f(self.fd.as_fd(), name).map_err(err);
        }
        let fd = self.parent(parent)?;
        f(fd.as_fd(), name).map_err(err)
    }

    /// The open directory `parent`, from the one-entry cache when it was the last.
    fn parent(&self, parent: &Path) -> io::Result<Arc<OwnedFd>> {
        if let Some((p, fd)) = self.last.borrow().as_ref() {
            if p == parent {
                return Ok(Arc::clone(fd));
            }
        }
        let fd = Arc::new(open_beneath(self.fd.as_fd(), parent)?);
        *self.last.borrow_mut() = Some((parent.to_path_buf(), Arc::clone(&fd)));
        Ok(fd)
    }

    /// Forgets the cached parent (after a directory was removed or renamed).
    pub fn forget(&self) {
        *self.last.borrow_mut() = None;
    }

    /// `lstat` of `rel` (the root itself when empty).
    pub fn lstat(&self, rel: &Path) -> io::Result<Stat> {
        if rel.as_os_str().is_empty() {
            return rustix::fs::fstat(&self.fd).map_err(err);
        }
        self.at(rel, |d, n| {
            rustix::fs::statat(d, n, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// A new regular file at `rel` (`O_CREAT | O_EXCL | O_NOFOLLOW`), open for writing,
    /// its mode `mode` less the umask (set it exactly with `File::set_permissions`).
    pub fn create_new(&self, rel: &Path, mode: u32) -> io::Result<File> {
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC;
        let fd = self.at(rel, |d, n| {
            rustix::fs::openat(d, n, flags, Mode::from_raw_mode(mode))
        })?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `rel` for reading, not following a symlink.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = self.at(rel, |d, n| rustix::fs::openat(d, n, flags, Mode::empty()))?;
        Ok(File::from(fd))
    }

    /// `mkdirat`.
    pub fn mkdir(&self, rel: &Path, mode: u32) -> io::Result<()> {
        self.at(rel, |d, n| {
            rustix::fs::mkdirat(d, n, Mode::from_raw_mode(mode))
        })
    }

    /// `symlinkat`: a symlink at `rel` whose target is `target`.
    pub fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()> {
        self.at(rel, |d, n| rustix::fs::symlinkat(target, d, n))
    }

    /// `linkat` without following: `to` (in `to_tree`) becomes a hard link to `rel`.
    pub fn hard_link(&self, rel: &Path, to_tree: &Tree, to: &Path) -> io::Result<()> {
        let from_fd = self.parent_fd(rel)?;
        to_tree.at(to, |d, n| {
            rustix::fs::linkat(from_fd.0.as_fd(), from_fd.1, d, n, AtFlags::empty())
        })
    }

    /// `renameat`: `rel` moves to `to` in `to_tree` (the same filesystem).
    pub fn rename(&self, rel: &Path, to_tree: &Tree, to: &Path) -> io::Result<()> {
        let from_fd = self.parent_fd(rel)?;
        to_tree.at(to, |d, n| {
            rustix::fs::renameat(from_fd.0.as_fd(), from_fd.1, d, n)
        })
    }

    /// `renameat2(RENAME_NOREPLACE)`: `rel` moves to `to` in `to_tree`, which must not
    /// exist (`AlreadyExists` otherwise, whatever is there: nothing is replaced).
    pub fn rename_new(&self, rel: &Path, to_tree: &Tree, to: &Path) -> io::Result<()> {
        let from_fd = self.parent_fd(rel)?;
        to_tree.at(to, |d, n| {
            rustix::fs::renameat_with(
                from_fd.0.as_fd(),
                from_fd.1,
                d,
                n,
                rustix::fs::RenameFlags::NOREPLACE,
            )
        })
    }

    /// The open parent of `rel` and its last name, owned (for two-tree calls).
    fn parent_fd<'p>(&self, rel: &'p Path) -> io::Result<(ParentFd<'_>, &'p OsStr)> {
        let name = last_name(rel)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = if parent.as_os_str().is_empty() {
            ParentFd::Root(self.fd.as_fd())
        } else {
            ParentFd::Cached(self.parent(parent)?)
        };
        Ok((fd, name))
    }

    /// `unlinkat` of a non-directory.
    pub fn unlink(&self, rel: &Path) -> io::Result<()> {
        self.at(rel, |d, n| rustix::fs::unlinkat(d, n, AtFlags::empty()))
    }

    /// `unlinkat(AT_REMOVEDIR)` of an empty directory.
    pub fn rmdir(&self, rel: &Path) -> io::Result<()> {
        let r = self.at(rel, |d, n| rustix::fs::unlinkat(d, n, AtFlags::REMOVEDIR));
        self.forget();
        r
    }

    /// Removes the directory `rel` and everything in it ([`remove_tree`], `owner`
    /// checked on `rel` itself), and forgets the cached parent.
    pub fn remove_tree(&self, rel: &Path, owner: Owner) -> io::Result<()> {
        let (parent, name) = self.parent_fd(rel)?;
        let r = remove_tree(parent.as_fd(), name, owner);
        drop(parent);
        self.forget();
        r
    }

    /// `readlinkat`.
    pub fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        self.at(rel, |d, n| rustix::fs::readlinkat(d, n, Vec::new()))
            .map(|t| PathBuf::from(OsString::from_vec(t.into_bytes())))
    }

    /// `fchownat(AT_SYMLINK_NOFOLLOW)`; the root itself (empty `rel`) by `fchown` of
    /// its descriptor.
    pub fn lchown(&self, rel: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let (u, g) = (
            rustix::fs::Uid::from_raw(uid),
            rustix::fs::Gid::from_raw(gid),
        );
        if rel.as_os_str().is_empty() {
            return rustix::fs::fchown(&self.fd, Some(u), Some(g)).map_err(err);
        }
        self.at(rel, |d, n| {
            rustix::fs::chownat(d, n, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// `utimensat(AT_SYMLINK_NOFOLLOW)`: the mtime, and the atime when given (else
    /// left alone).
    pub fn set_times(
        &self,
        rel: &Path,
        mtime: (i64, u32),
        atime: Option<(i64, u32)>,
    ) -> io::Result<()> {
        self.set_times_opt(rel, Some(mtime), atime)
    }

    /// [`Tree::set_times`] where the mtime may be left alone too.
    pub fn set_times_opt(
        &self,
        rel: &Path,
        mtime: Option<(i64, u32)>,
        atime: Option<(i64, u32)>,
    ) -> io::Result<()> {
        let ts = times(mtime, atime);
        if rel.as_os_str().is_empty() {
            return rustix::fs::futimens(&self.fd, &ts).map_err(err);
        }
        self.at(rel, |d, n| {
            rustix::fs::utimensat(d, n, &ts, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// The mode of `rel`, which must not be a symlink: set through a descriptor opened
    /// `O_PATH | O_NOFOLLOW` (a fifo or a device is never opened for I/O).
    pub fn chmod(&self, rel: &Path, mode: u32) -> io::Result<()> {
        if rel.as_os_str().is_empty() {
            return rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode)).map_err(err);
        }
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = self.at(rel, |d, n| rustix::fs::openat(d, n, flags, Mode::empty()))?;
        chmod_fd(fd.as_fd(), mode)
    }

    /// A new regular file at `rel` holding `data`, its mode exactly `mode` (set through
    /// its descriptor, whatever the umask), written and fsync'd: [`Tree::create_new`],
    /// so an existing name (a planted symlink included) fails with `AlreadyExists` and
    /// nothing is followed. On a later error the new file is removed again.
    pub fn write_new(&self, rel: &Path, mode: u32, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = self.create_new(rel, mode)?;
        let written = chmod_fd(f.as_fd(), mode)
            .and_then(|()| f.write_all(data))
            .and_then(|()| f.sync_all());
        if written.is_err() {
            drop(f);
            let _ = self.unlink(rel);
        }
        written
    }

    /// Replaces the file `rel` by one holding `data`, mode exactly `mode`: written
    /// under a new temporary name `PREFIX<random>.tmp` beside it ([`Tree::write_new`];
    /// a name taken, by anyone, is never reused), renamed over `rel`, the directory
    /// fsync'd. The temporary is removed on error; nothing is followed.
    pub fn replace(&self, rel: &Path, prefix: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let dir = rel.parent().unwrap_or(Path::new(""));
        let mut tries = 0;
        let tmp = loop {
            let tmp = dir.join(format!("{prefix}{:016x}.tmp", fastrand::u64(..)));
            match self.write_new(&tmp, mode, data) {
                Ok(()) => break tmp,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(with_path(e, &self.shown(&tmp))),
            }
        };
        if let Err(e) = self.rename(&tmp, self, rel) {
            let _ = self.unlink(&tmp);
            return Err(with_path(e, &self.shown(rel)));
        }
        if dir.as_os_str().is_empty() {
            return self.sync();
        }
        let parent = self.open_dir(dir)?;
        rustix::fs::fsync(&parent).map_err(err)
    }

    /// Reads the regular file `rel` whole, never following a symlink at its name (nor
    /// opening a fifo or device for long: `O_NONBLOCK`, then refused as not a regular
    /// file); a file longer than `max` bytes is refused (`InvalidData`).
    pub fn read_file(&self, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = self.at(rel, |d, n| rustix::fs::openat(d, n, flags, Mode::empty()))?;
        let st = rustix::fs::fstat(&fd).map_err(err)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut data = Vec::new();
        File::from(fd)
            .take(max.saturating_add(1))
            .read_to_end(&mut data)?;
        if data.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {max} bytes"),
            ));
        }
        Ok(data)
    }

    /// The directory `rel` as a tree of its own, made with `mkdirat` when missing
    /// (its mode then set to exactly `mode` through its descriptor, whatever the
    /// umask); an existing one is opened as it is. A symlink there is refused, never
    /// followed.
    pub fn make_dir(&self, rel: &Path, mode: u32) -> io::Result<Tree> {
        let made = match self.mkdir(rel, mode) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        let sub = self.sub(rel)?;
        if made {
            chmod_fd(sub.fd(), mode)?;
        }
        Ok(sub)
    }

    /// fsync of the root directory (after a rename in it, to make it durable).
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(err)
    }

    /// `mknodat`: a fifo, socket or device node (`st_mode` gives the type).
    pub fn mknod(&self, rel: &Path, st_mode: u32, perm: u32, rdev: u64) -> io::Result<()> {
        let ft = FileType::from_raw_mode(st_mode);
        self.at(rel, |d, n| {
            rustix::fs::mknodat(d, n, ft, Mode::from_raw_mode(perm), rdev)
        })
    }

    /// The names in the directory `rel` (no `.`, `..`), as read.
    pub fn names(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let fd = self.open_dir(rel)?;
        names_of(fd.as_fd())
    }

    /// Whether the tree's root holds no entry (reads only until the first one).
    pub fn is_empty(&self) -> io::Result<bool> {
        let fd = self.open_dir(Path::new(""))?;
        let mut empty = true;
        each_name(fd.as_fd(), &mut |_| {
            empty = false;
            false
        })?;
        Ok(empty)
    }

    /// Walks the directory `sub` in sorted pre-order (names by bytes), never following
    /// a symlink: `visit(rel, stat)` is called for each entry (paths relative to the
    /// root) and answers whether to descend into a directory. One descriptor is held
    /// per level of depth.
    pub fn walk(
        &self,
        sub: &Path,
        visit: &mut dyn FnMut(&Path, &Stat, &Walking<'_>) -> io::Result<bool>,
    ) -> io::Result<()> {
        struct Level {
            fd: OwnedFd,
            names: std::vec::IntoIter<OsString>,
            len: usize,
        }
        let first = self.open_dir(sub)?;
        let mut names = names_of(first.as_fd())?;
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut rel = sub.to_path_buf();
        let mut stack = vec![Level {
            fd: first,
            names: names.into_iter(),
            len: rel.as_os_str().len(),
        }];
        while let Some(level) = stack.last_mut() {
            let Some(name) = level.names.next() else {
                stack.pop();
                if let Some(up) = stack.last() {
                    truncate(&mut rel, up.len);
                }
                continue;
            };
            truncate(&mut rel, level.len);
            rel.push(&name);
            let dir = level.fd.as_fd();
            let st = match rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Gone since the directory was read: as if it never was.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(with_path(err(e), &self.shown(&rel))),
            };
            let walking = Walking {
                dir,
                name: name.as_os_str(),
            };
            let descend = visit(&rel, &st, &walking)?;
            if descend && FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let fd = rustix::fs::openat(dir, name.as_os_str(), DIR_FLAGS, Mode::empty())
                    .map_err(|e| with_path(err(e), &self.shown(&rel)))?;
                let mut names =
                    names_of(fd.as_fd()).map_err(|e| with_path(e, &self.shown(&rel)))?;
                names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                let len = rel.as_os_str().len();
                stack.push(Level {
                    fd,
                    names: names.into_iter(),
                    len,
                });
            }
        }
        Ok(())
    }
}

/// What a walk's visitor may use of the entry being visited.
pub struct Walking<'a> {
    dir: BorrowedFd<'a>,
    name: &'a OsStr,
}

impl Walking<'_> {
    /// The symlink's target (`readlinkat` in its directory).
    pub fn read_link(&self) -> io::Result<PathBuf> {
        rustix::fs::readlinkat(self.dir, self.name, Vec::new())
            .map(|t| PathBuf::from(OsString::from_vec(t.into_bytes())))
            .map_err(err)
    }

    /// Opens the regular file for reading, not following a symlink.
    pub fn open_file(&self) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = rustix::fs::openat(self.dir, self.name, flags, Mode::empty()).map_err(err)?;
        Ok(File::from(fd))
    }
}

enum ParentFd<'a> {
    Root(BorrowedFd<'a>),
    Cached(Arc<OwnedFd>),
}

impl ParentFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ParentFd::Root(fd) => *fd,
            ParentFd::Cached(fd) => fd.as_fd(),
        }
    }
}

fn truncate(p: &mut PathBuf, len: usize) {
    let mut bytes = std::mem::take(p).into_os_string().into_vec();
    bytes.truncate(len);
    *p = PathBuf::from(OsString::from_vec(bytes));
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn times(mtime: Option<(i64, u32)>, atime: Option<(i64, u32)>) -> Timestamps {
    let spec = |t: Option<(i64, u32)>| match t {
        Some((s, ns)) => rustix::fs::Timespec {
            tv_sec: s,
            tv_nsec: ns.into(),
        },
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
    };
    Timestamps {
        last_access: spec(atime),
        last_modification: spec(mtime),
    }
}

/// `fchmod` through a descriptor, also an `O_PATH` one (by its `/proc/self/fd` name,
/// which reaches the very inode the descriptor holds, never a path lookup).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    match rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)) {
        Err(Errno::BADF) => {}
        other => return other.map_err(err),
    }
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::chmodat(
        CWD,
        proc.as_str(),
        Mode::from_raw_mode(mode),
        AtFlags::empty(),
    )
    .map_err(err)
}

/// The names of an open directory (no `.`, `..`).
fn names_of(fd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    each_name(fd, &mut |n| {
        names.push(OsString::from_vec(n.to_vec()));
        true
    })?;
    Ok(names)
}

/// Each name of an open directory (no `.`, `..`) to `go`, as read, until it answers
/// false. Reads `fd` itself from its offset (`getdents64` into one buffer, no second
/// descriptor opened on `.` as `Dir::read_from` does): every caller passes a directory
/// it has just opened and reads it once.
fn each_name(fd: BorrowedFd<'_>, go: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<()> {
    let mut buf = [const { std::mem::MaybeUninit::<u8>::uninit() }; DIR_BUF];
    let mut dir = rustix::fs::RawDir::new(fd, &mut buf);
    while let Some(e) = dir.next() {
        let e = e.map_err(err)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." && !go(n) {
            break;
        }
    }
    Ok(())
}

/// The buffer `each_name` reads a directory into: a few hundred names a call.
const DIR_BUF: usize = 16 * 1024;

/// Who may be removed by [`remove_tree`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Any owner (a tree the run made itself, in a place only it can write).
    Any,
    /// Only a top directory owned by this user id (a leftover found by name).
    Is(u32),
}

/// Removes the directory `name` in the open directory `parent` and everything in it,
/// never following a symlink, with at most two descriptors open whatever the depth:
/// it goes back up through `..`, checking that each directory reached is the one it
/// came down from (device and inode), and stops otherwise. Directories it cannot
/// write are made writable through their descriptor first (needed when not root).
pub fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr, owner: Owner) -> io::Result<()> {
    remove_checked(parent, name, |st| match owner {
        Owner::Is(uid) if st.st_uid != uid => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("owned by uid {}, not by uid {uid}: left alone", st.st_uid),
        )),
        _ => Ok(()),
    })
}

/// [`remove_tree`] of the very directory [`Tree::id`] gave (device and inode): a
/// directory another user put under the same name since is left alone (an error).
pub fn remove_same_tree(parent: BorrowedFd<'_>, name: &OsStr, id: (u64, u64)) -> io::Result<()> {
    remove_checked(parent, name, |st| {
        if (st.st_dev, st.st_ino) == id {
            Ok(())
        } else {
            Err(io::Error::other(
                "not the directory this run made (replaced since): left alone",
            ))
        }
    })
}

/// The removal of [`remove_tree`], once `check` accepted the top directory's stat.
fn remove_checked(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    check: impl FnOnce(&Stat) -> io::Result<()>,
) -> io::Result<()> {
    let top = match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory (a symbolic link is never followed): left alone",
            ))
        }
        Err(e) => return Err(err(e)),
    };
    let st = rustix::fs::fstat(&top).map_err(err)?;
    check(&st)?;
    let root = rustix::process::geteuid().is_root();
    let writable = |fd: BorrowedFd<'_>, st: &Stat| -> io::Result<()> {
        if !root && st.st_mode & 0o700 != 0o700 {
            rustix::fs::fchmod(fd, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700))
                .map_err(err)?;
        }
        Ok(())
    };
    writable(top.as_fd(), &st)?;
    // The path down: each directory's (dev, ino) and its name in its parent.
    let mut down: Vec<((u64, u64), OsString)> = vec![((st.st_dev, st.st_ino), name.to_os_string())];
    let mut cur = top;
    loop {
        let mut child = None;
        for n in names_of(cur.as_fd())? {
            match rustix::fs::unlinkat(&cur, n.as_os_str(), AtFlags::empty()) {
                Ok(()) => continue,
                Err(Errno::ISDIR) | Err(Errno::PERM) => {}
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(err(e)),
            }
            match rustix::fs::openat(&cur, n.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Ok(fd) => {
                    child = Some((fd, n));
                    break;
                }
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(err(e)),
            }
        }
        if let Some((fd, n)) = child {
            let st = rustix::fs::fstat(&fd).map_err(err)?;
            writable(fd.as_fd(), &st)?;
            down.push(((st.st_dev, st.st_ino), n));
            cur = fd;
            continue;
        }
        // `cur` is empty: remove it from its parent.
        let (_, n) = down.pop().unwrap_or_default();
        let Some((want, _)) = down.last() else {
            drop(cur);
            return rustix::fs::unlinkat(parent, n.as_os_str(), AtFlags::REMOVEDIR).map_err(err);
        };
        let up = rustix::fs::openat(&cur, c"..", DIR_FLAGS, Mode::empty()).map_err(err)?;
        let ust = rustix::fs::fstat(&up).map_err(err)?;
        if (ust.st_dev, ust.st_ino) != *want {
            return Err(io::Error::other(
                "a directory was moved while it was being removed: stopped",
            ));
        }
        drop(cur);
        rustix::fs::unlinkat(&up, n.as_os_str(), AtFlags::REMOVEDIR).map_err(err)?;
        cur = up;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(t: &tempfile::TempDir) -> Tree {
        Tree::open(t.path(), false).unwrap()
    }

    #[test]
    fn a_symlinked_directory_is_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        symlink(outside.path(), t.path().join("l")).unwrap();
        let tr = tree(&t);
        tr.create_new(Path::new("d/f"), 0o644).unwrap();
        for rel in ["l/f", "l/x/y"] {
            let e = tr.create_new(Path::new(rel), 0o644).unwrap_err();
            assert!(e.to_string().contains("not followed"), "{e}");
        }
        let e = tr.create_new(Path::new("l"), 0o644).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(tr.chmod(Path::new("l"), 0o777).is_err());
        assert!(tr.mkdir(Path::new("l/n"), 0o755).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_after_use_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let tr = tree(&t);
        tr.create_new(Path::new("d/a"), 0o644).unwrap();
        // The cached parent is the moved directory itself, never a lookup by name.
        std::fs::rename(t.path().join("d"), t.path().join("moved")).unwrap();
        symlink(outside.path(), t.path().join("d")).unwrap();
        tr.create_new(Path::new("d/b"), 0o644).unwrap();
        assert!(t.path().join("moved/b").exists());
        tr.forget();
        assert!(tr.create_new(Path::new("d/c"), 0o644).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_fallback_walks_component_by_component() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        symlink(outside.path(), t.path().join("a/l")).unwrap();
        NO_OPENAT2.store(true, std::sync::atomic::Ordering::Relaxed);
        let tr = tree(&t);
        let ok = tr.open_dir(Path::new("a/b"));
        let refused = tr.open_dir(Path::new("a/l"));
        NO_OPENAT2.store(false, std::sync::atomic::Ordering::Relaxed);
        ok.unwrap();
        assert!(refused.unwrap_err().to_string().contains("not followed"));
    }

    #[test]
    fn a_replaced_directory_is_not_the_same() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s");
        std::fs::create_dir(&p).unwrap();
        let id = Tree::open(&p, false).unwrap().id().unwrap();
        Tree::open_same(&p, id).unwrap();
        std::fs::rename(&p, t.path().join("old")).unwrap();
        std::fs::create_dir(&p).unwrap();
        let e = Tree::open_same(&p, id).unwrap_err();
        assert!(e.to_string().contains("replaced"), "{e}");
        std::fs::remove_dir(&p).unwrap();
        symlink(t.path().join("old"), &p).unwrap();
        let e = Tree::open_same(&p, id).unwrap_err().to_string();
        assert!(e.contains("replaced by a symbolic link"), "{e}");
    }

    #[test]
    fn walk_is_sorted_pre_order_and_does_not_follow() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("b/c")).unwrap();
        std::fs::write(t.path().join("b/c/f"), b"x").unwrap();
        std::fs::write(t.path().join("a"), b"x").unwrap();
        symlink("/", t.path().join("b/l")).unwrap();
        let mut seen = Vec::new();
        let tr = tree(&t);
        tr.walk(Path::new(""), &mut |rel, st, w| {
            if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                assert_eq!(w.read_link()?, Path::new("/"));
            }
            seen.push(rel.to_path_buf());
            Ok(true)
        })
        .unwrap();
        let want: Vec<PathBuf> = ["a", "b", "b/c", "b/c/f", "b/l"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn remove_tree_handles_depth_with_two_descriptors_and_read_only_dirs() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let tr = tree(&t);
        let mut rel = PathBuf::from("top");
        tr.mkdir(&rel, 0o755).unwrap();
        // Deeper than the descriptor limit a recursive removal would need.
        for i in 0..1500 {
            rel.push("d");
            tr.mkdir(&rel, 0o755).unwrap();
            if i % 500 == 0 {
                tr.symlink(outside.path(), &rel.join("l")).unwrap();
                tr.create_new(&rel.join("f"), 0o444).unwrap();
            }
        }
        std::fs::set_permissions(
            t.path().join("top/d"),
            std::os::unix::fs::PermissionsExt::from_mode(0o555),
        )
        .unwrap();
        remove_tree(tr.fd(), OsStr::new("top"), Owner::Any).unwrap();
        assert!(!t.path().join("top").exists());
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn write_new_and_replace_never_follow_and_set_the_mode_exactly() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        symlink(&victim, t.path().join("planted")).unwrap();
        let tr = tree(&t);
        let e = tr.write_new(Path::new("planted"), 0o644, b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        // Mode bits the umask would never let through are set all the same.
        tr.write_new(Path::new("new"), 0o4755, b"data").unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&t.path().join("new")), 0o4755);
        assert_eq!(std::fs::read(t.path().join("new")).unwrap(), b"data");
        // `replace` puts a new file where the symlink was, leaving its target alone.
        tr.replace(Path::new("planted"), ".tmp-", 0o644, b"new")
            .unwrap();
        assert!(std::fs::symlink_metadata(t.path().join("planted"))
            .unwrap()
            .is_file());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(mode(&victim), 0o600);
        assert_eq!(mode(&t.path().join("planted")), 0o644);
        let mut names = tr.names(Path::new("")).unwrap();
        names.sort();
        assert_eq!(names, ["new", "planted"], "a temporary was left");
    }

    #[test]
    fn read_file_refuses_symlinks_fifos_and_big_files() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"12345").unwrap();
        symlink(t.path().join("f"), t.path().join("l")).unwrap();
        rustix::fs::mknodat(
            CWD,
            t.path().join("p"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let tr = tree(&t);
        assert_eq!(tr.read_file(Path::new("f"), 5).unwrap(), b"12345");
        let e = tr.read_file(Path::new("f"), 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(tr.read_file(Path::new("l"), 100).is_err());
        let e = tr.read_file(Path::new("p"), 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn make_dir_and_rename_new() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), t.path().join("l")).unwrap();
        let tr = tree(&t);
        let d = tr.make_dir(Path::new("d"), 0o751).unwrap();
        let mode = std::fs::metadata(t.path().join("d"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o751);
        d.write_new(Path::new("f"), 0o644, b"").unwrap();
        // an existing one is opened as it is
        tr.make_dir(Path::new("d"), 0o700).unwrap();
        let e = tr.make_dir(Path::new("l"), 0o755).unwrap_err();
        assert!(e.to_string().contains("not followed"), "{e}");
        tr.mkdir(Path::new("e"), 0o755).unwrap();
        let e = tr
            .rename_new(Path::new("e"), &tr, Path::new("d"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        tr.rename_new(Path::new("e"), &tr, Path::new("g")).unwrap();
        assert!(t.path().join("d/f").exists() && t.path().join("g").is_dir());
    }

    #[test]
    fn remove_same_tree_leaves_a_replaced_directory_alone() {
        let t = tempfile::tempdir().unwrap();
        let tr = tree(&t);
        tr.mkdir(Path::new("s"), 0o700).unwrap();
        let id = tr.sub(Path::new("s")).unwrap().id().unwrap();
        std::fs::rename(t.path().join("s"), t.path().join("moved")).unwrap();
        std::fs::create_dir(t.path().join("s")).unwrap();
        let e = remove_same_tree(tr.fd(), OsStr::new("s"), id).unwrap_err();
        assert!(e.to_string().contains("left alone"), "{e}");
        assert!(t.path().join("s").is_dir());
        remove_same_tree(tr.fd(), OsStr::new("moved"), id).unwrap();
        assert!(!t.path().join("moved").exists());
    }

    #[test]
    fn tree_remove_tree_forgets_the_cached_parent() {
        let t = tempfile::tempdir().unwrap();
        let tr = tree(&t);
        tr.mkdir(Path::new("a"), 0o755).unwrap();
        tr.mkdir(Path::new("a/b"), 0o755).unwrap();
        tr.create_new(Path::new("a/b/f"), 0o644).unwrap();
        tr.remove_tree(Path::new("a/b"), Owner::Any).unwrap();
        tr.mkdir(Path::new("a/b"), 0o755).unwrap();
        tr.create_new(Path::new("a/b/g"), 0o644).unwrap();
        assert!(t.path().join("a/b/g").exists());
        assert!(!t.path().join("a/b/f").exists());
    }

    #[test]
    fn the_root_itself_takes_an_owner_a_mode_and_times() {
        let t = tempfile::tempdir().unwrap();
        let tr = tree(&t);
        let me = rustix::process::geteuid().as_raw();
        let my_gid = rustix::process::getegid().as_raw();
        tr.lchown(Path::new(""), me, my_gid).unwrap();
        tr.chmod(Path::new(""), 0o751).unwrap();
        tr.set_times(Path::new(""), (1_000, 0), None).unwrap();
        let st = tr.lstat(Path::new("")).unwrap();
        assert_eq!((st.st_mode & 0o7777, st.st_mtime), (0o751, 1_000));
    }

    #[test]
    fn a_clone_is_the_same_directory_with_a_cache_of_its_own() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let tr = tree(&t);
        tr.create_new(Path::new("d/a"), 0o644).unwrap();
        let c = tr.try_clone().unwrap();
        assert_eq!(c.id().unwrap(), tr.id().unwrap());
        assert_eq!(c.path(), tr.path());
        let other = std::thread::spawn(move || c.names(Path::new("d")).unwrap())
            .join()
            .unwrap();
        assert_eq!(other, vec![OsString::from("a")]);
    }

    #[test]
    fn remove_tree_leaves_a_foreign_owner_alone() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("x")).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let tr = tree(&t);
        let e = remove_tree(tr.fd(), OsStr::new("x"), Owner::Is(me + 1)).unwrap_err();
        assert!(e.to_string().contains("left alone"), "{e}");
        assert!(t.path().join("x").exists());
        remove_tree(tr.fd(), OsStr::new("x"), Owner::Is(me)).unwrap();
    }
}
