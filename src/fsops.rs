//! Small filesystem steps shared by the writers of a tree (the sync's apply, and the
//! unpack): a new node under a temporary name beside its final path, then renamed over
//! it; a node's owner → mode → mtime, in that order (a chown clears set-id bits, so the
//! mode comes after it; the mtime last, as nothing after it may touch the node); and
//! `mknod` for fifos and device nodes.
//!
//! Its rules: never follow a symlink at the node being changed (`lchown`, `utimensat`
//! with `AT_SYMLINK_NOFOLLOW`; the mode is never set on a symlink), never open a node
//! to set its times (opening a fifo blocks), and never leave a temporary name behind on
//! an error (the [`Temp`] removes it when dropped).

use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::error::IoContext;
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

/// What [`set_attrs`] sets on a node; `None` leaves that attribute as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Owner and group (`lchown`).
    pub owner: Option<(u32, u32)>,
    /// Permission bits (& 0o7777); never set on a symlink.
    pub mode: Option<u32>,
    /// Modification time: seconds and nanoseconds (the atime is left alone).
    pub mtime: Option<(i64, u32)>,
}

/// Sets owner → mode → mtime on the node at `path`: the owner with `lchown`, the mode
/// with `chmod` (callers never ask it of a symlink), the mtime without following a
/// symlink unless `follow` (the root of a tree, which may be a symlink to a directory).
pub fn set_attrs(path: &Path, attrs: &Attrs, follow: bool) -> Result<()> {
    if let Some((uid, gid)) = attrs.owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).ctx("lchown", path)?;
    }
    if let Some(mode) = attrs.mode {
        fs::set_permissions(path, Permissions::from_mode(mode)).ctx("chmod", path)?;
    }
    if let Some((secs, nsec)) = attrs.mtime {
        set_mtime(path, secs, nsec, follow)?;
    }
    Ok(())
}

/// [`set_attrs`] on an open regular file, through its descriptor (`path` names it in
/// errors).
pub fn set_file_attrs(file: &File, path: &Path, attrs: &Attrs) -> Result<()> {
    if let Some((uid, gid)) = attrs.owner {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid)).ctx("chown", path)?;
    }
    if let Some(mode) = attrs.mode {
        file.set_permissions(Permissions::from_mode(mode))
            .ctx("chmod", path)?;
    }
    if let Some((secs, nsec)) = attrs.mtime {
        let t = filetime::FileTime::from_unix_time(secs, nsec);
        filetime::set_file_handle_times(file, None, Some(t)).ctx("set times", path)?;
    }
    Ok(())
}

/// Sets the mtime (to the nanosecond; atime untouched) with `utimensat`, which never
/// opens the node.
fn set_mtime(path: &Path, secs: i64, nsec: u32, follow: bool) -> Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let mtime = TimeSpec::new(secs, i64::from(nsec));
    let flag = if follow {
        UtimensatFlags::FollowSymlink
    } else {
        UtimensatFlags::NoFollowSymlink
    };
    utimensat(None, path, &TimeSpec::UTIME_OMIT, &mtime, flag)
        .map_err(|e| Error::io("set times", path, io::Error::from(e)))
}

/// Makes a fifo, socket or device node at `path` (mode 0600 until [`set_attrs`]):
/// `st_mode` gives the type, `rdev` the device.
pub fn mknod(path: &Path, st_mode: u32, rdev: u64) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag};
    let kind = SFlag::from_bits_truncate(st_mode & SFlag::S_IFMT.bits());
    nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(0o600), rdev)
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
}
