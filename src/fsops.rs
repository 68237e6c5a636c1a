//! Small filesystem steps shared by the writers of a tree (the sync's apply, and the
//! unpack): a new node under a temporary name beside its final path, then renamed over
//! it; a node's owner → mode → mtime, in that order (a chown clears set-id bits, so the
//! mode comes after it; the mtime last, as nothing after it may touch the node); and
//! `mknod` for fifos and device nodes.
//!
//! Its rules: never follow a symlink at the node being changed (`lchown`, `utimensat`
//! with `AT_SYMLINK_NOFOLLOW`; the mode is never set on a symlink), never open a node
//! to set its times (opening a fifo blocks; a descriptor the caller already holds is
//! used as it is), and never leave a temporary name behind on an error (the [`Temp`]
//! removes it when dropped).

use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::{Error, Result};

/// A node under a temporary name, removed when dropped unless [`Temp::rename_to`] put
/// it in place. `T` is what making it gave (the open [`File`] of a regular file).
pub type Temp<T> = NamedTempFile<T>;

/// Makes a new node named `.NAME.XXXXXX` beside `path` with `make` (which must create
/// it with `create_new` semantics: a name clash is retried with another name).
pub fn create_beside<T>(path: &Path, make: impl FnMut(&Path) -> io::Result<T>) -> Result<Temp<T>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(OsStrExt::as_bytes).unwrap_or(b"x");
    // Room for the dot, the separator and six random characters in a 255-byte name.
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(&name[..name.len().min(200)]);
    prefix.push(b'.');
    let prefix = OsString::from_vec(prefix);
    tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(6)
        .make_in(dir, make)
        .map_err(|e| Error::io("create temporary beside", path, e))
}

/// A new empty regular file (mode 0600) beside `path`, open for writing.
pub fn file_beside(path: &Path) -> Result<Temp<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    create_beside(path, |t| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(t)
    })
}

/// Renames the temporary node over `path` (atomic: `path` names the old node or the
/// new one, never neither), and hands back what making it gave.
pub fn rename_to<T>(tmp: Temp<T>, path: &Path) -> Result<T> {
    tmp.persist(path)
        .map_err(|e| Error::io("rename into", path, e.error))
}

/// What [`apply`] (and [`set_attrs`]) sets on a node; `None` leaves that attribute as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Owner and group (`lchown`).
    pub owner: Option<(u32, u32)>,
    /// Permission bits (& 0o7777); never set on a symlink.
    pub mode: Option<u32>,
    /// Modification time: seconds and nanoseconds.
    pub mtime: Option<(i64, u32)>,
    /// Access time, set in the same call as the mtime (`None`: left alone).
    pub atime: Option<(i64, u32)>,
}

/// The node [`apply`] changes.
#[derive(Debug, Clone, Copy)]
pub enum Node<'a> {
    /// By path, never following a symlink there (the mode is never asked of one).
    At(&'a Path),
    /// By path, the times following a symlink (the root of a tree, which may be a
    /// symlink to a directory); the owner still by `lchown`.
    Follow(&'a Path),
    /// Through a descriptor the caller holds open (a file just written, a directory
    /// opened `O_NOFOLLOW`): `fchown`, `fchmod`, `futimens`.
    Open(&'a File),
    /// Relative to an open tree, never following a symlink on the way or at the node
    /// ([`crate::at::Tree`]: `fchownat`, a mode through an `O_PATH` descriptor,
    /// `utimensat`, each with `AT_SYMLINK_NOFOLLOW`).
    #[allow(dead_code)] // until the unpack and the sync use it
    In(&'a crate::at::Tree, &'a Path),
}

/// The step of owner → mode → mtime that failed, for callers that word their own errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The owner (`lchown` / `fchown`).
    Owner,
    /// The mode (`chmod` / `fchmod`).
    Mode,
    /// The times (`utimensat` / `futimens`).
    Times,
}

/// The one definition of owner → mode → mtime on a node: each step only when `attrs`
/// asks for it, in that order; the first failing step and its cause.
pub fn apply(node: Node<'_>, attrs: &Attrs) -> std::result::Result<(), (Step, io::Error)> {
    if let Some((uid, gid)) = attrs.owner {
        match node {
            Node::At(path) | Node::Follow(path) => {
                std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            }
            Node::Open(file) => std::os::unix::fs::fchown(file, Some(uid), Some(gid)),
            Node::In(tree, rel) => tree.lchown(rel, uid, gid),
        }
        .map_err(|e| (Step::Owner, e))?;
    }
    if let Some(mode) = attrs.mode {
        let perms = Permissions::from_mode(mode);
        match node {
            Node::At(path) | Node::Follow(path) => fs::set_permissions(path, perms),
            Node::Open(file) => file.set_permissions(perms),
            Node::In(tree, rel) => tree.chmod(rel, mode),
        }
        .map_err(|e| (Step::Mode, e))?;
    }
    if attrs.mtime.is_some() || attrs.atime.is_some() {
        set_times(node, attrs).map_err(|e| (Step::Times, e))?;
    }
    Ok(())
}

/// Sets owner → mode → mtime on the node at `path`: the owner with `lchown`, the mode
/// with `chmod` (callers never ask it of a symlink), the mtime without following a
/// symlink unless `follow` (the root of a tree, which may be a symlink to a directory).
pub fn set_attrs(path: &Path, attrs: &Attrs, follow: bool) -> Result<()> {
    let node = if follow {
        Node::Follow(path)
    } else {
        Node::At(path)
    };
    apply(node, attrs).map_err(|(step, e)| {
        let op = match step {
            Step::Owner => "lchown",
            Step::Mode => "chmod",
            Step::Times => "set times",
        };
        Error::io(op, path, e)
    })
}

/// [`set_attrs`] on an open regular file, through its descriptor (`path` names it in
/// errors).
pub fn set_file_attrs(file: &File, path: &Path, attrs: &Attrs) -> Result<()> {
    apply(Node::Open(file), attrs).map_err(|(step, e)| {
        let op = match step {
            Step::Owner => "chown",
            Step::Mode => "chmod",
            Step::Times => "set times",
        };
        Error::io(op, path, e)
    })
}

/// Sets the times (to the nanosecond; one left out is untouched): `utimensat` by path,
/// which never opens the node, or `futimens` on an open one.
fn set_times(node: Node<'_>, attrs: &Attrs) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let (path, flag) = match node {
        Node::At(path) => (path, UtimensatFlags::NoFollowSymlink),
        Node::Follow(path) => (path, UtimensatFlags::FollowSymlink),
        Node::Open(file) => {
            let t = |(secs, nsec)| filetime::FileTime::from_unix_time(secs, nsec);
            let (atime, mtime) = (attrs.atime.map(t), attrs.mtime.map(t));
            return filetime::set_file_handle_times(file, atime, mtime);
        }
        Node::In(tree, rel) => {
            return match attrs.mtime {
                Some(mtime) => tree.set_times(rel, mtime, attrs.atime),
                None => tree.set_times_opt(rel, None, attrs.atime),
            };
        }
    };
    let spec = |t: Option<(i64, u32)>| match t {
        Some((secs, nsec)) => TimeSpec::new(secs, i64::from(nsec)),
        None => TimeSpec::UTIME_OMIT,
    };
    utimensat(None, path, &spec(attrs.atime), &spec(attrs.mtime), flag).map_err(io::Error::from)
}

/// Makes a fifo, socket or device node at `path` (mode 0600 until [`set_attrs`]):
/// `st_mode` gives the type, `rdev` the device.
pub fn mknod(path: &Path, st_mode: u32, rdev: u64) -> io::Result<()> {
    mknod_with(path, st_mode, 0o600, rdev)
}

/// [`mknod`] with the permission bits `perm` (& 0o777, less the umask) from the start,
/// for callers that skip the chmod when the umask took nothing.
pub fn mknod_with(path: &Path, st_mode: u32, perm: u32, rdev: u64) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag};
    let kind = SFlag::from_bits_truncate(st_mode & SFlag::S_IFMT.bits());
    nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(perm & 0o777), rdev)
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_dropped_temp_leaves_nothing_and_a_renamed_one_replaces() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("name");
        fs::write(&path, "old").unwrap();
        let tmp = create_beside(&path, |p| std::os::unix::fs::symlink("x", p)).unwrap();
        let name = tmp
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(".name.") && name.len() == ".name.".len() + 6,
            "{name}"
        );
        drop(tmp);
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);

        let tmp = file_beside(&path).unwrap();
        let attrs = Attrs {
            owner: None,
            mode: Some(0o640),
            mtime: Some((1_000_000, 5)),
            atime: None,
        };
        set_file_attrs(tmp.as_file(), tmp.path(), &attrs).unwrap();
        rename_to(tmp, &path).unwrap();
        let m = fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.mtime(), m.mtime_nsec()),
            (0o640, 1_000_000, 5)
        );
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn set_attrs_does_not_follow_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("f");
        fs::write(&file, "x").unwrap();
        let link = t.path().join("l");
        std::os::unix::fs::symlink("f", &link).unwrap();
        let before = fs::metadata(&file).unwrap().mtime();
        let attrs = Attrs {
            mtime: Some((42, 0)),
            ..Attrs::default()
        };
        set_attrs(&link, &attrs, false).unwrap();
        assert_eq!(fs::symlink_metadata(&link).unwrap().mtime(), 42);
        assert_eq!(fs::metadata(&file).unwrap().mtime(), before);
    }

    #[test]
    fn apply_sets_the_atime_only_when_asked_and_names_the_failed_step() {
        let t = tempfile::tempdir().unwrap();
        let link = t.path().join("l");
        std::os::unix::fs::symlink("nowhere", &link).unwrap();
        let mut attrs = Attrs {
            mtime: Some((1_000, 7)),
            ..Attrs::default()
        };
        apply(Node::At(&link), &attrs).unwrap();
        let m = fs::symlink_metadata(&link).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000, 7));
        assert_ne!(m.atime(), 1_000);
        attrs.atime = attrs.mtime;
        apply(Node::At(&link), &attrs).unwrap();
        let m = fs::symlink_metadata(&link).unwrap();
        assert_eq!((m.atime(), m.atime_nsec()), (1_000, 7));

        let gone = t.path().join("gone");
        let (step, _) = apply(Node::At(&gone), &attrs).unwrap_err();
        assert_eq!(step, Step::Times);
        attrs.mode = Some(0o600);
        let (step, _) = apply(Node::At(&gone), &attrs).unwrap_err();
        assert_eq!(step, Step::Mode);
    }
}
