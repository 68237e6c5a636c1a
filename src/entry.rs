//! The one vocabulary for a node of a tree: an [`Entry`] (its path as bytes, its
//! [`Meta`], a symlink's target), made from one `lstat` / `fstat`.
//!
//! Every listing of a tree uses it: the sync's walks of staging and `dest` and the
//! plan's picture of `dest` afterwards (`Plan::after`), the deploy index (read, written,
//! walked, compared), and the unpack's listing of what it wrote (`Staged::written`).
//! There is no other entry type to convert to or from.
//!
//! Compact on purpose (a listing of 100,000 entries is held whole): a [`Meta`] is 32
//! bytes, an [`Entry`] 64 plus its path and target on the heap. Only what some reader
//! needs is kept: a directory's or symlink's `st_size` is not (rsync ignores them), a
//! special's device number takes the size's place, the link count is not (the sync's
//! walk notes the few multiply-linked files apart). This module reads nothing itself.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The type bits of `st_mode` (`S_IFMT`).
const TYPE_BITS: u32 = 0o170_000;

/// What kind of filesystem object an entry is (never following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// fifo, socket, character or block device.
    Special,
}

impl Kind {
    /// The kind of an `st_mode`: its type bits (none at all: a special of a type not
    /// known, see [`Kind::type_bits`]).
    fn of_mode(mode: u32) -> Kind {
        match mode & TYPE_BITS {
            0o040_000 => Kind::Dir,
            0o120_000 => Kind::Symlink,
            0o100_000 => Kind::File,
            _ => Kind::Special,
        }
    }

    /// The `st_mode` type bits of this kind; 0 for a special, whose type (fifo,
    /// socket, device) the kind alone does not tell.
    pub(crate) fn type_bits(self) -> u32 {
        match self {
            Kind::File => 0o100_000,
            Kind::Dir => 0o040_000,
            Kind::Symlink => 0o120_000,
            Kind::Special => 0,
        }
    }
}

/// The attributes of one entry that stretcher reads, copies, indexes and compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// `st_mode`: the type bits (which make the [`Kind`]) and the permission bits. An
    /// entry read back from the deploy index has the permission bits and its kind's
    /// type bits only: none for a special (the index does not keep which special it is).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Nanoseconds of the modification time (0..1e9).
    pub mtime_nsec: u32,
    /// Regular files: the size in bytes; specials: the device number (`st_rdev`);
    /// directories and symlinks: 0.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

impl Meta {
    /// The entry's type, from the type bits of [`Meta::mode`].
    pub fn kind(&self) -> Kind {
        Kind::of_mode(self.mode)
    }

    /// Permission bits (`mode & 0o7777`).
    pub fn perms(&self) -> u32 {
        self.mode & 0o7777
    }

    /// A special's device number (kept in [`Meta::size`]).
    pub(crate) fn rdev(&self) -> u64 {
        self.size
    }
}

/// The one way an `lstat` / `fstat` becomes a [`Meta`].
impl From<&fs::Metadata> for Meta {
    fn from(m: &fs::Metadata) -> Meta {
        let mode = m.mode();
        let size = match Kind::of_mode(mode) {
            Kind::File => m.size(),
            Kind::Special => m.rdev(),
            Kind::Dir | Kind::Symlink => 0,
        };
        Meta {
            mode,
            uid: m.uid(),
            gid: m.gid(),
            // st_mtime_nsec is always in 0..1e9.
            mtime_nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
            size,
            mtime: m.mtime(),
        }
    }
}

/// The same for an `lstat` made relative to a directory descriptor (`crate::at`).
impl From<&rustix::fs::Stat> for Meta {
    fn from(st: &rustix::fs::Stat) -> Meta {
        let mode = st.st_mode;
        let size = match Kind::of_mode(mode) {
            Kind::File => st.st_size as u64,
            Kind::Special => st.st_rdev,
            Kind::Dir | Kind::Symlink => 0,
        };
        Meta {
            mode,
            uid: st.st_uid,
            gid: st.st_gid,
            // st_mtime_nsec is always in 0..1e9.
            mtime_nsec: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
            size,
            mtime: st.st_mtime,
        }
    }
}

/// One node of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path relative to the tree's root, as bytes; empty for the root itself.
    pub path: Box<[u8]>,
    /// Its attributes.
    pub meta: Meta,
    /// A symlink's target bytes; `None` for every other kind.
    pub target: Option<Box<[u8]>>,
}

impl Entry {
    /// The entry at the relative path `rel`.
    pub(crate) fn new(rel: &Path, meta: Meta, target: Option<&Path>) -> Entry {
        let bytes = |p: &Path| Box::from(p.as_os_str().as_bytes());
        Entry {
            path: bytes(rel),
            meta,
            target: target.map(bytes),
        }
    }

    /// The path as a `Path`, relative to the tree's root (empty for the root).
    pub fn rel(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(&self.path))
    }

    /// A symlink's target as a `Path`.
    pub fn target_path(&self) -> Option<&Path> {
        let t = self.target.as_deref()?;
        Some(Path::new(std::ffi::OsStr::from_bytes(t)))
    }

    /// The entry's type.
    pub fn kind(&self) -> Kind {
        self.meta.kind()
    }

    /// The path as a user sees it: `.` for the root, a trailing `/` on directories.
    pub fn display_path(&self) -> String {
        let mut p = if self.path.is_empty() {
            ".".to_string()
        } else {
            // A name another user chose (dest may be theirs): a control character in it
            // must not start a line of its own in `verify`'s report (SPEC §17).
            crate::log::shown_text(&self.path)
        };
        if self.kind() == Kind::Dir {
            p.push('/');
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lstat_at_a_descriptor_reads_as_a_metadata_does() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"abc").unwrap();
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        for name in ["f", "l", ""] {
            let p = t.path().join(name);
            let m = fs::symlink_metadata(&p).unwrap();
            let st = rustix::fs::lstat(&p).unwrap();
            assert_eq!(Meta::from(&st), Meta::from(&m), "{name}");
        }
    }

    #[test]
    fn compact() {
        assert_eq!(std::mem::size_of::<Meta>(), 32);
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }

    #[test]
    fn meta_of_an_lstat_keeps_what_is_read() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, "hello").unwrap();
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        let lstat = |name: &str| Meta::from(&fs::symlink_metadata(t.path().join(name)).unwrap());
        let (file, link, dir) = (lstat("f"), lstat("l"), lstat(""));
        assert_eq!((file.kind(), file.size), (Kind::File, 5));
        assert_eq!((link.kind(), link.size), (Kind::Symlink, 0));
        assert_eq!((dir.kind(), dir.size), (Kind::Dir, 0));
        for k in [Kind::File, Kind::Dir, Kind::Symlink, Kind::Special] {
            assert_eq!(Kind::of_mode(k.type_bits() | 0o644), k);
        }
        let e = Entry::new(Path::new("a/b"), file, None);
        assert_eq!(
            (e.rel(), e.display_path()),
            (Path::new("a/b"), "a/b".into())
        );
        let root = Entry::new(Path::new(""), dir, None);
        assert_eq!(root.display_path(), "./");
        // A name with a newline stays on its line; invalid UTF-8 as \xNN.
        let raw = std::ffi::OsStr::from_bytes(b"a\nchanged b\xff");
        let odd = Entry::new(Path::new(raw), file, None);
        assert_eq!(odd.display_path(), "a\\x0achanged b\\xff");
    }
}
