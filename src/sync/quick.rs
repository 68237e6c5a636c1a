//! rsync's quick check, written once: [`quick_check`] decides "same content" for the
//! plan (staging × dest) and for [`DestProbe`], the unpack-time probe against `dest`
//! (or the live release) that spares writing unchanged files to staging.
//!
//! It must never write anything; the probe only reads the tree it was given.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Kept;
use crate::at::Tree;
use crate::entry::{Kind, Meta};
use rustix::fs::Stat;

/// What the quick check compares: the size, and the mtime in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quick {
    /// Size in bytes (a sparse file's logical size).
    pub size: u64,
    /// Modification time, whole seconds.
    pub mtime: i64,
}

impl From<&Meta> for Quick {
    fn from(m: &Meta) -> Quick {
        Quick {
            size: m.size,
            mtime: m.mtime,
        }
    }
}

impl From<&Kept> for Quick {
    fn from(k: &Kept) -> Quick {
        Quick {
            size: k.size,
            mtime: k.mtime,
        }
    }
}

impl From<&fs::Metadata> for Quick {
    fn from(m: &fs::Metadata) -> Quick {
        Quick {
            size: m.size(),
            mtime: m.mtime(),
        }
    }
}

/// rsync's quick check: two regular files have the same content when their sizes and
/// mtime *seconds* are equal (rsync's default `--modify-window=0` ignores nanoseconds).
pub fn quick_check(a: impl Into<Quick>, b: impl Into<Quick>) -> bool {
    a.into() == b.into()
}

/// The unpack-time quick check against an existing tree (`dest`, or the live release):
/// a regular file equal to the entry by [`quick_check`], mode (and owner) is not
/// written. Only reads the tree, through its descriptor ([`Tree`]): a file is found
/// only through real directories, never through a symlink (which the sync would
/// replace), also one swapped in while the unpack runs.
pub struct DestProbe {
    /// `None` when the tree could not be opened (absent): nothing is found.
    tree: Option<Tree>,
}

impl DestProbe {
    /// A probe of the tree at `root`; `follow`: a symlink at `root` itself is followed
    /// (rsync's `DEST/`), else refused. A root that cannot be opened finds nothing.
    pub fn new(root: &Path, follow: bool) -> DestProbe {
        DestProbe {
            tree: Tree::open(root, follow).ok(),
        }
    }
}

impl crate::unpack::Unchanged for DestProbe {
    fn find(&mut self, rel: &Path, want: &Kept) -> Option<(PathBuf, Stat)> {
        let st = self.tree.as_ref()?.lstat(rel).ok()?;
        let m = Meta::from(&st);
        let same = m.kind() == Kind::File
            && quick_check(&m, want)
            && m.perms() == want.mode
            && want.owner.is_none_or(|(u, g)| (m.uid, m.gid) == (u, g));
        same.then(|| (rel.to_path_buf(), st))
    }

    fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_ignores_nanoseconds_and_bytes() {
        let meta = |size, mtime, mtime_nsec| Meta {
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_nsec,
            size,
            mtime,
        };
        assert!(quick_check(&meta(3, 10, 0), &meta(3, 10, 999)));
        assert!(!quick_check(&meta(3, 10, 0), &meta(4, 10, 0)));
        assert!(!quick_check(&meta(3, 10, 0), &meta(3, 11, 0)));
        let kept = Kept {
            size: 3,
            mtime: 10,
            mode: 0o600,
            owner: None,
        };
        assert!(quick_check(&kept, &meta(3, 10, 5)));
    }

    #[test]
    fn the_probe_never_looks_through_a_symlink() {
        use crate::unpack::Unchanged;
        let dest = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir(dest.path().join("d")).unwrap();
        for dir in [dest.path().join("d"), other.path().to_path_buf()] {
            std::fs::write(dir.join("f"), b"abc").unwrap();
            let t = filetime::FileTime::from_unix_time(10, 0);
            filetime::set_file_mtime(dir.join("f"), t).unwrap();
        }
        std::os::unix::fs::symlink(other.path(), dest.path().join("l")).unwrap();
        let mode = std::fs::metadata(dest.path().join("d/f")).unwrap().mode() & 0o7777;
        let want = Kept {
            size: 3,
            mtime: 10,
            mode,
            owner: None,
        };
        let mut probe = DestProbe::new(dest.path(), true);
        let (rel, _) = probe.find(Path::new("d/f"), &want).unwrap();
        assert_eq!(rel, Path::new("d/f"));
        assert!(probe.find(Path::new("l/f"), &want).is_none());
        assert!(probe.tree().is_some());
        // An absent dest finds nothing.
        let mut none = DestProbe::new(&dest.path().join("absent"), true);
        assert!(none.find(Path::new("d/f"), &want).is_none());
    }
}
