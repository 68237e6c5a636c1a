//! The staging workspace beside `dest`: where one deploy unpacks the archive before
//! the sync step.
//!
//! It owns the workspace's lifecycle: the private staging directory, created by
//! `tempfile::Builder` as `.stretcher-<dest name>.XXXXXX.staging` beside `dest` (same
//! filesystem, so the sync renames out of it; in `$TMPDIR` when dest's parent is not
//! writable, see `state::work_dir`), the recognition by exact name and the
//! removal of what a killed run for the same `dest` left there, and the removal of the
//! staging directory on drop, read-only directories included.
//!
//! It must never write `dest`, nor anything inside the staged tree (the unpack fills
//! it); it creates, hands over and removes the directory, and removes only names that
//! are exactly its own.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::logln;
use crate::state;

/// Where a deploy keeps its temporary files: beside `dest` (same filesystem, so
/// renames are atomic), named `.stretcher-<dest name>.XXXXXX.staging`.
pub(crate) struct Workspace {
    dir: PathBuf,
    prefix: OsString,
}

const RAND_LEN: usize = 6;
const STAGING_SUFFIX: &str = ".staging";

impl Workspace {
    pub(crate) fn new(dest: &Path) -> Result<Workspace> {
        let (dir, tag) = state::work_dir(dest)?;
        if dest.parent() != Some(dir.as_path()) {
            logln!(
                "cannot write beside {}: staging in {} (changes are copied, not renamed)",
                dest.display(),
                dir.display()
            );
        }
        let mut prefix = OsString::from(".stretcher-");
        prefix.push(tag);
        prefix.push(".");
        Ok(Workspace { dir, prefix })
    }

    /// Removes what a killed run for the same dest left behind. Safe because the
    /// caller holds the dest lock, and the names carry the dest's own name.
    pub(crate) fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !self.is_ours(&name) {
                continue;
            }
            let path = entry.path();
            logln!("removing leftover of an earlier run: {}", path.display());
            let result = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                make_writable_and_remove(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = result {
                logln!("warning: could not remove {}: {e}", path.display());
            }
        }
    }

    fn is_ours(&self, name: &std::ffi::OsStr) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let (n, p) = (name.as_bytes(), self.prefix.as_bytes());
        let Some(rest) = n.strip_prefix(p) else {
            return false;
        };
        let middle = rest.strip_suffix(STAGING_SUFFIX.as_bytes());
        matches!(middle, Some(m) if m.len() == RAND_LEN && m.iter().all(u8::is_ascii_alphanumeric))
    }

    fn builder<'a>(&'a self, suffix: &'a str) -> tempfile::Builder<'a, 'a> {
        let mut b = tempfile::Builder::new();
        b.prefix(&self.prefix).suffix(suffix).rand_bytes(RAND_LEN);
        b
    }

    /// A private, empty staging directory.
    pub(crate) fn staging_dir(&self) -> Result<Staging> {
        let dir = self
            .builder(STAGING_SUFFIX)
            .tempdir_in(&self.dir)
            .map_err(|e| Error::io("create staging directory in", &self.dir, e))?;
        Ok(Staging {
            path: dir.keep(),
            kept: false,
        })
    }
}

/// The staging directory; removed on drop unless `keep` handed it over.
pub(crate) struct Staging {
    path: PathBuf,
    kept: bool,
}

impl Staging {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The mode the tree's root (and so dest) gets.
    pub(crate) fn set_mode(&self, mode: u32) -> Result<()> {
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("chmod", &self.path, e))
    }

    /// Hands the directory over (the `mv` strategy renames it onto dest).
    pub(crate) fn keep(mut self) -> PathBuf {
        self.kept = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        match make_writable_and_remove(&self.path) {
            // The sync moved the whole staged tree onto a new dest.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(()) => {}
            Err(e) => logln!(
                "warning: could not remove staging {}: {e}",
                self.path.display()
            ),
        }
    }
}

/// `remove_dir_all`, after making directories writable (an archive may hold
/// read-only directories, which a non-root runner could not empty otherwise).
pub(crate) fn make_writable_and_remove(path: &Path) -> std::io::Result<()> {
    if std::fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
    std::fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_recognised_by_exact_name() {
        let w = Workspace::new(Path::new("/srv/app")).unwrap();
        assert!(w.is_ours(std::ffi::OsStr::new(".stretcher-app.Ab12Cd.staging")));
        // another dest's leftovers, and look-alikes, are not ours
        assert!(!w.is_ours(std::ffi::OsStr::new(".stretcher-app.x.Ab12Cd.staging")));
        assert!(!w.is_ours(std::ffi::OsStr::new(".stretcher-app.Ab12C.staging")));
        assert!(!w.is_ours(std::ffi::OsStr::new(".stretcher-app.Ab12Cd.other")));
        assert!(!w.is_ours(std::ffi::OsStr::new("app")));
    }

    #[test]
    fn staging_is_named_as_ours_and_removed_on_drop_read_only_tree_included() {
        let parent = tempfile::tempdir().unwrap();
        let w = Workspace::new(&parent.path().join("app")).unwrap();
        let staging = w.staging_dir().unwrap();
        let path = staging.path().to_path_buf();
        assert_eq!(path.parent(), Some(parent.path()));
        assert!(w.is_ours(path.file_name().unwrap()), "{path:?}");
        std::fs::create_dir_all(path.join("ro/sub")).unwrap();
        std::fs::write(path.join("ro/sub/f"), b"x").unwrap();
        for d in ["ro/sub", "ro"] {
            std::fs::set_permissions(path.join(d), std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        drop(staging);
        assert!(!path.exists());
    }

    #[test]
    fn kept_staging_is_not_removed() {
        let parent = tempfile::tempdir().unwrap();
        let w = Workspace::new(&parent.path().join("app")).unwrap();
        let path = w.staging_dir().unwrap().keep();
        assert!(path.is_dir());
    }

    #[test]
    fn leftovers_of_this_dest_only_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let w = Workspace::new(&p.join("app")).unwrap();
        let ours = p.join(".stretcher-app.Ab12Cd.staging");
        std::fs::create_dir_all(ours.join("ro")).unwrap();
        std::fs::set_permissions(ours.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
        let others = [
            ".stretcher-app2.Ab12Cd.staging",
            ".stretcher-app.Ab12C.staging",
            "app",
        ];
        for name in others {
            std::fs::create_dir(p.join(name)).unwrap();
        }
        w.remove_leftovers();
        assert!(!ours.exists());
        for name in others {
            assert!(p.join(name).is_dir(), "{name}");
        }
    }
}
