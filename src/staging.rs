//! The staging workspace beside `dest`: where one deploy unpacks the archive before
//! the sync step.
//!
//! It owns the workspace's lifecycle: the private staging directory, created by
//! `tempfile::Builder` as `.stretcher-<dest name>.XXXXXX.staging` beside `dest` (same
//! filesystem, so the sync renames out of it; in `$TMPDIR` when dest's parent is not
//! writable, see `state::work_dir`), the recognition by exact name and the
//! removal of what a killed run for the same `dest` left there, and the removal of the
//! staging directory on drop, read-only directories included. It also reads the
//! `exclude_from` rule file out of a staged tree (`load_filter`): the file is part of
//! the archive, so it is in staging (or left in dest as unchanged).
//!
//! It must never write `dest`, nor anything inside the staged tree (the unpack fills
//! it; `Staging::set_mode` sets the root's mode, the one exception); it creates, hands
//! over and removes the directory, and removes only names that are exactly its own.
//! `make_writable_and_remove` is also how `release` removes a release's tree.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::logln;
use crate::manifest::Manifest;
use crate::state;
use crate::sync;
use crate::Env;

/// Where a deploy keeps its temporary files: beside `dest` (same filesystem, so
/// renames are atomic), named `.stretcher-<dest name>.XXXXXX.staging`.
pub(crate) struct Workspace {
    dir: PathBuf,
    prefix: OsString,
}

const RAND_LEN: usize = 6;
const STAGING_SUFFIX: &str = ".staging";

impl Workspace {
    pub(crate) fn new(dest: &Path, env: Env) -> Result<Workspace> {
        let (dir, tag) = state::work_dir(dest, env)?;
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
    /// A new private (0700) directory at exactly `path` (a release's `.ID.partial`);
    /// what a killed attempt left there is removed first.
    pub(crate) fn create_at(path: &Path) -> Result<Staging> {
        use std::os::unix::fs::DirBuilderExt;
        if path.symlink_metadata().is_ok() {
            make_writable_and_remove(path).map_err(|e| Error::io("remove", path, e))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io("create directory", path, e))?;
        Ok(Staging {
            path: path.to_path_buf(),
            kept: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
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

/// The manifest's `excludes` after the rules of its `exclude_from` file, and that
/// file's text (for the index). The file is part of the archive: it is read from
/// staging, or from `dest` when the unpack left dest's identical copy in place
/// (`reused`) instead of writing it to staging.
pub(crate) fn load_filter(
    manifest: &Manifest,
    staging: &Path,
    reused: &sync::KeptFiles,
    dest: &Path,
) -> Result<(Filter, Option<String>)> {
    match &manifest.exclude_from {
        Some(name) => {
            // manifest validation keeps the name relative and free of `..`; the
            // unpack names its entries without `.` components.
            let rel: PathBuf = Path::new(name)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
            let path = if reused.contains_key(&rel) {
                dest.join(&rel)
            } else {
                staging.join(&rel)
            };
            let rules = std::fs::read(&path).map_err(|source| Error::ExcludeFrom {
                name: PathBuf::from(name),
                source,
            })?;
            let filter = Filter::from_bytes(Some(&rules), &manifest.excludes)?;
            Ok((filter, Some(String::from_utf8_lossy(&rules).into_owned())))
        }
        None => Ok((Filter::new(None, &manifest.excludes)?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_recognised_by_exact_name() {
        let w = Workspace::new(Path::new("/srv/app"), &|_| None).unwrap();
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
        let w = Workspace::new(&parent.path().join("app"), &|_| None).unwrap();
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
        let w = Workspace::new(&parent.path().join("app"), &|_| None).unwrap();
        let path = w.staging_dir().unwrap().keep();
        assert!(path.is_dir());
    }

    #[test]
    fn leftovers_of_this_dest_only_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let w = Workspace::new(&p.join("app"), &|_| None).unwrap();
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

    fn manifest(extra: &str) -> Manifest {
        let text = format!(
            "src: http://127.0.0.1/a.tar\nchecksum: {}\ndest: /srv/app\nexcludes: [\"*.log\"]\n{extra}",
            "0".repeat(64)
        );
        crate::manifest::parse(&text, "http://127.0.0.1/m.yml", &|_| None).unwrap()
    }

    #[test]
    fn filter_rules_are_read_from_staging_or_from_the_dest_copy_left_in_place() {
        let root = tempfile::tempdir().unwrap();
        let (staging, dest) = (root.path().join("staging"), root.path().join("dest"));
        std::fs::create_dir_all(staging.join("conf")).unwrap();
        std::fs::create_dir_all(dest.join("conf")).unwrap();
        std::fs::write(staging.join("conf/rules"), b"/cache\n").unwrap();
        std::fs::write(dest.join("conf/rules"), b"/tmp\n").unwrap();
        let m = manifest("exclude_from: ./conf/rules\n");

        let none = sync::KeptFiles::default();
        let (filter, text) = load_filter(&m, &staging, &none, &dest).unwrap();
        assert_eq!(text.as_deref(), Some("/cache\n"));
        assert!(filter.is_excluded(Path::new("cache"), true));
        assert!(!filter.is_excluded(Path::new("tmp"), true));
        assert!(filter.is_excluded(Path::new("x.log"), false));

        // the unpack left dest's identical copy in place instead of writing staging
        let mut reused = sync::KeptFiles::default();
        let attrs = crate::unpack::FileAttrs {
            size: 5,
            mtime: 0,
            mode: 0o644,
            owner: None,
        };
        reused.insert(PathBuf::from("conf/rules"), attrs);
        let (filter, text) = load_filter(&m, &staging, &reused, &dest).unwrap();
        assert_eq!(text.as_deref(), Some("/tmp\n"));
        assert!(filter.is_excluded(Path::new("tmp"), true));
        assert!(!filter.is_excluded(Path::new("cache"), true));
    }

    #[test]
    fn a_missing_rule_file_is_an_error_and_no_rule_file_reads_nothing() {
        let root = tempfile::tempdir().unwrap();
        let none = sync::KeptFiles::default();
        let m = manifest("exclude_from: rules\n");
        let err = load_filter(&m, root.path(), &none, root.path()).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("the file is not in the archive"), "{err}");
        assert!(err.contains("rules"), "{err}");

        let (filter, text) = load_filter(&manifest(""), root.path(), &none, root.path()).unwrap();
        assert_eq!(text, None);
        assert!(filter.is_excluded(Path::new("a.log"), false));
    }
}
