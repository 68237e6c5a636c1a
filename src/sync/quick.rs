//! rsync's quick check, written once: [`quick_check`] decides "same content" for the
//! plan (staging × dest) and for [`DestProbe`], the unpack-time probe against `dest`
//! (or the live release) that spares writing unchanged files to staging.
//!
//! It must never write anything; the probe only reads the tree it was given.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Kept;
use crate::entry::Meta;

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
            && quick_check(&m, want)
            && m.mode() & 0o7777 == want.mode
            && want.owner.is_none_or(|(u, g)| (m.uid(), m.gid()) == (u, g));
        same.then_some((path, m))
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
}
