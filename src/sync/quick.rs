//! rsync's quick check and the unpack-time probe that uses it.

use std::collections::HashMap;
use std::fs::{self};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::*;

/// The unpack-time quick check against an existing tree (`dest`, or the live release):
/// a regular file equal to the entry by size, mtime seconds, mode (and owner) is not
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
    fn find(&mut self, rel: &Path, want: &Kept) -> Option<PathBuf> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !self.real_dir(parent) {
            return None;
        }
        let path = self.root.join(rel);
        let m = fs::symlink_metadata(&path).ok()?;
        let same = m.file_type().is_file()
            && m.size() == want.size
            && m.mtime() == want.mtime
            && m.mode() & 0o7777 == want.mode
            && want.owner.is_none_or(|(u, g)| (m.uid(), m.gid()) == (u, g));
        same.then_some(path)
    }
}
