//! The staging workspace beside `dest`: where one deploy unpacks the archive before
//! the sync step.
//!
//! It owns the workspace's lifecycle, all of it through directory descriptors (SPEC
//! §17): the work directory (dest's parent, or `$TMPDIR` when dest's parent is not
//! writable, see `state::work_dir`) is opened once as an [`at::Tree`] — the path up to
//! it is trusted; the private staging directory `.stretcher-<dest name>.XXXXXX.staging`
//! is made there by `mkdirat` 0700 (6 random alphanumerics, another name on `EEXIST`),
//! opened `O_NOFOLLOW` and `fchmod`-ed through its descriptor, and handed to the unpack
//! as an open tree ([`Staging::tree`], with its [`Staging::id`] for whoever reopens it
//! by name); what a killed run for the same `dest` left there is recognised by exact
//! name and removed only when the running user owns it ([`at::remove_tree`], two
//! descriptors whatever the depth, never following a symlink); the staging directory
//! is removed on drop only while its name still holds the very directory it made. It
//! also reads the `exclude_from` rule file out of the staged tree (`load_filter`): the
//! file is part of the archive, so it is in staging (the unpack always writes it there).
//!
//! It must never write `dest`, nor anything inside the staged tree (the unpack fills
//! it); it creates, hands over and removes the directory, never by a joined path below
//! the work directory, and removes only names that are exactly its own and its user's.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::at::{self, Owner, Tree};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::logln;
use crate::manifest::Manifest;
use crate::state;
use crate::Env;

/// Where a deploy keeps its temporary files: beside `dest` (same filesystem, so
/// renames are atomic), named `.stretcher-<dest name>.XXXXXX.staging`.
pub(crate) struct Workspace {
    /// The work directory, opened once.
    tree: Tree,
    prefix: OsString,
}

const RAND_LEN: usize = 6;
const STAGING_SUFFIX: &str = ".staging";
/// Names tried before `staging_dir` gives up (each clash is another run's directory).
const ATTEMPTS: usize = 100;

/// The running user's id (a leftover is removed only when it owns it).
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

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
        // The path up to dest is trusted (SPEC §17): a symlink there is followed.
        let tree = Tree::open(&dir, true).map_err(|e| Error::io("open directory", &dir, e))?;
        let mut prefix = OsString::from(".stretcher-");
        prefix.push(tag);
        prefix.push(".");
        Ok(Workspace { tree, prefix })
    }

    /// Removes what a killed run for the same dest left behind: names of exactly its
    /// pattern, owned by the running user (another owner's is left alone, with a
    /// warning). Safe because the caller holds the dest lock, and the names carry the
    /// dest's own name.
    pub(crate) fn remove_leftovers(&self) {
        let Ok(names) = self.tree.names(Path::new("")) else {
            return;
        };
        let me = euid();
        for name in names {
            if !self.is_ours(&name) {
                continue;
            }
            let path = self.tree.shown(Path::new(&name));
            let Ok(st) = self.tree.lstat(Path::new(&name)) else {
                continue;
            };
            if st.st_uid != me {
                logln!(
                    "warning: {}: owned by uid {}, not by uid {me}: left alone",
                    path.display(),
                    st.st_uid
                );
                continue;
            }
            logln!("removing leftover of an earlier run: {}", path.display());
            let result = if is_dir(&st) {
                at::remove_tree(self.tree.fd(), &name, Owner::Is(me))
            } else {
                self.tree.unlink(Path::new(&name))
            };
            if let Err(e) = result {
                logln!("warning: could not remove {}: {e}", path.display());
            }
        }
    }

    fn is_ours(&self, name: &OsStr) -> bool {
        let (n, p) = (name.as_bytes(), self.prefix.as_bytes());
        let Some(rest) = n.strip_prefix(p) else {
            return false;
        };
        let middle = rest.strip_suffix(STAGING_SUFFIX.as_bytes());
        matches!(middle, Some(m) if m.len() == RAND_LEN && m.iter().all(u8::is_ascii_alphanumeric))
    }

    /// An unnamed scratch file in the work directory (SPEC §18: the members a delta
    /// deploy fetches by range), made through the directory's descriptor with
    /// `O_TMPFILE`, 0600: it has no name to follow, to leave behind or to clean up.
    /// On a filesystem without `O_TMPFILE`, an unnamed file of `tempfile` in
    /// `$TMPDIR`.
    pub(crate) fn scratch_file(&self) -> Result<std::fs::File> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        match rustix::fs::openat(self.tree.fd(), ".", flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => Ok(std::fs::File::from(fd)),
            Err(_) => tempfile::tempfile()
                .map_err(|e| Error::io("create a scratch file in", std::env::temp_dir(), e)),
        }
    }

    /// A private, empty staging directory: `mkdirat` 0700 relative to the work
    /// directory under a fresh name, opened `O_NOFOLLOW`, `fchmod` 0700.
    pub(crate) fn staging_dir(&self) -> Result<Staging> {
        let dir = self.tree.path();
        for _ in 0..ATTEMPTS {
            let mut name = self.prefix.clone();
            let random: String = (0..RAND_LEN).map(|_| fastrand::alphanumeric()).collect();
            name.push(random);
            name.push(STAGING_SUFFIX);
            match self.tree.mkdir(Path::new(&name), 0o700) {
                Ok(()) => return Staging::opened(&self.tree, name),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create staging directory in", dir, e)),
            }
        }
        let e = io::Error::new(io::ErrorKind::AlreadyExists, "every name tried exists");
        Err(Error::io("create staging directory in", dir, e))
    }
}

/// Whether an `lstat` is a directory's.
fn is_dir(st: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
}

/// The staging directory, open; removed on drop unless `keep` handed it over.
pub(crate) struct Staging {
    /// Its path (for messages, and for a strategy that renames it whole).
    path: PathBuf,
    /// The directory it is in, and its name there.
    parent: OwnedFd,
    name: OsString,
    /// The directory itself, open: the unpack writes through it.
    tree: Tree,
    id: (u64, u64),
    kept: bool,
}

impl Staging {
    /// The directory `name` just made in `parent`, opened (a symlink refused) and
    /// checked to be the running user's, its mode set to 0700 through its descriptor.
    fn opened(parent: &Tree, name: OsString) -> Result<Staging> {
        let path = parent.shown(Path::new(&name));
        let tree = parent
            .sub(Path::new(&name))
            .map_err(|e| Error::io("open staging directory", &path, e))?;
        let st = rustix::fs::fstat(tree.fd()).map_err(|e| Error::io("stat", &path, e.into()))?;
        if st.st_uid != euid() {
            let e = io::Error::other(format!(
                "owned by uid {}, not by the running user: refused",
                st.st_uid
            ));
            return Err(Error::io("open staging directory", &path, e));
        }
        at::chmod_fd(tree.fd(), 0o700).map_err(|e| Error::io("chmod", &path, e))?;
        let parent_fd = parent
            .fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("open directory", parent.path(), e))?;
        Ok(Staging {
            path,
            parent: parent_fd,
            name,
            id: (st.st_dev, st.st_ino),
            tree,
            kept: false,
        })
    }

    /// A new private (0700) directory at exactly `path` (a release's `.ID.partial`),
    /// made by `mkdirat` in its parent (opened once; the path up to it is trusted);
    /// what a killed attempt of the running user left there is removed first, anything
    /// else there is refused.
    pub(crate) fn create_at(path: &Path) -> Result<Staging> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "no parent directory");
            return Err(Error::io("create directory", path, e));
        };
        let parent = Tree::open(dir, true).map_err(|e| Error::io("open directory", dir, e))?;
        let rel = Path::new(name);
        if let Ok(st) = parent.lstat(rel) {
            let me = euid();
            if !is_dir(&st) || st.st_uid != me {
                let e = io::Error::other(format!(
                    "exists, not a directory of uid {me} (owner uid {}): refused",
                    st.st_uid
                ));
                return Err(Error::io("create directory", path, e));
            }
            parent
                .remove_tree(rel, Owner::Is(me))
                .map_err(|e| Error::io("remove", path, e))?;
        }
        parent
            .mkdir(rel, 0o700)
            .map_err(|e| Error::io("create directory", path, e))?;
        Staging::opened(&parent, name.to_os_string())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory, open: every write of the unpack goes through it.
    pub(crate) fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Hands the directory over (the `mv` strategy renames it onto dest).
    pub(crate) fn keep(mut self) -> PathBuf {
        self.kept = true;
        std::mem::take(&mut self.path)
    }
}

impl Staging {
    /// Removes the staging directory on a thread of its own (what is left of it after
    /// a sync: the directories the unpack made), while the deploy goes on; the
    /// returned guard waits for the removal when it is dropped, so the deploy never
    /// ends before it. Where no thread can be started, removed here and now.
    pub(crate) fn remove_behind(self) -> Removal {
        let spawned = std::thread::Builder::new()
            .name("stretcher-rm".into())
            // A failed spawn drops the closure, and with it `self`: removed here.
            .spawn(move || drop(self));
        Removal(spawned.ok())
    }
}

/// A staging directory being removed ([`Staging::remove_behind`]); dropped, waits
/// until it is.
pub(crate) struct Removal(Option<std::thread::JoinHandle<()>>);

impl Drop for Removal {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            // The removal logs its own failure; a panic in it has nothing more to say.
            let _ = h.join();
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        match at::remove_same_tree(self.parent.as_fd(), &self.name, self.id) {
            // The sync moved the whole staged tree onto a new dest.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Ok(()) => {}
            Err(e) => logln!(
                "warning: could not remove staging {}: {e}",
                self.path.display()
            ),
        }
    }
}

/// The `exclude_from` rule file's path in the archive (`.` components dropped: the
/// unpack names its entries without them), when the manifest names one. The unpack's
/// probe never leaves this file in dest: it is always written to staging.
pub(crate) fn exclude_from_rel(manifest: &Manifest) -> Option<PathBuf> {
    // manifest validation keeps the name relative and free of `..`.
    manifest.exclude_from.as_ref().map(|name| {
        Path::new(name)
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    })
}

/// The manifest's `excludes` after the rules of its `exclude_from` file, and that
/// file's bytes (for the index). The file is part of the archive: it is read through
/// the staging tree, never following a symlink below it — never from dest, whose copy
/// may be stale at the same size and mtime (SPEC §21): the unpack always writes it to
/// staging (see [`exclude_from_rel`]), hard-linked from the live release only when its
/// content is known equal.
pub(crate) fn load_filter(
    manifest: &Manifest,
    staging: &Staging,
) -> Result<(Filter, Option<Vec<u8>>)> {
    match (&manifest.exclude_from, exclude_from_rel(manifest)) {
        (Some(name), Some(rel)) => {
            let failed = |source| Error::ExcludeFrom {
                name: PathBuf::from(name),
                source,
            };
            let file = staging.tree().open_file(&rel);
            let mut rules = Vec::new();
            io::Read::read_to_end(&mut file.map_err(failed)?, &mut rules).map_err(failed)?;
            let filter = Filter::from_bytes(Some(&rules), &manifest.excludes)?;
            Ok((filter, Some(rules)))
        }
        _ => Ok((Filter::new(None, &manifest.excludes)?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn workspace(parent: &tempfile::TempDir) -> Workspace {
        Workspace::new(&parent.path().join("app"), &|_| None).unwrap()
    }

    #[test]
    fn leftovers_are_recognised_by_exact_name() {
        let parent = tempfile::tempdir().unwrap();
        let w = workspace(&parent);
        assert!(w.is_ours(OsStr::new(".stretcher-app.Ab12Cd.staging")));
        // another dest's leftovers, and look-alikes, are not ours
        assert!(!w.is_ours(OsStr::new(".stretcher-app.x.Ab12Cd.staging")));
        assert!(!w.is_ours(OsStr::new(".stretcher-app.Ab12C.staging")));
        assert!(!w.is_ours(OsStr::new(".stretcher-app.Ab12Cd.other")));
        assert!(!w.is_ours(OsStr::new("app")));
    }

    #[test]
    fn staging_is_named_as_ours_private_and_removed_on_drop_read_only_tree_included() {
        let parent = tempfile::tempdir().unwrap();
        let w = workspace(&parent);
        let staging = w.staging_dir().unwrap();
        let path = staging.path().to_path_buf();
        assert_eq!(path.parent(), Some(parent.path()));
        assert!(w.is_ours(path.file_name().unwrap()), "{path:?}");
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700);
        assert_eq!((m.dev(), m.ino()), staging.tree().id().unwrap());
        std::fs::create_dir_all(path.join("ro/sub")).unwrap();
        std::fs::write(path.join("ro/sub/f"), b"x").unwrap();
        for d in ["ro/sub", "ro"] {
            std::fs::set_permissions(path.join(d), std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        drop(staging);
        assert!(!path.exists());
    }

    /// Removed on a thread of its own: gone once the guard has been dropped, and not
    /// before the guard says so (it waits), deep directories and files included.
    #[test]
    fn staging_removed_behind_is_gone_when_its_guard_is_dropped() {
        let parent = tempfile::tempdir().unwrap();
        let w = workspace(&parent);
        let staging = w.staging_dir().unwrap();
        let path = staging.path().to_path_buf();
        for i in 0..50 {
            let d = path.join(format!("d{i}/e/f"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("x"), b"x").unwrap();
        }
        let removal = staging.remove_behind();
        drop(removal);
        assert!(!path.exists(), "{path:?}");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn two_staging_dirs_get_two_names() {
        let parent = tempfile::tempdir().unwrap();
        let w = workspace(&parent);
        let (a, b) = (w.staging_dir().unwrap(), w.staging_dir().unwrap());
        assert_ne!(a.path(), b.path());
    }

    #[test]
    fn staging_swapped_for_a_symlink_is_written_and_removed_through_its_descriptor() {
        let parent = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let w = workspace(&parent);
        let staging = w.staging_dir().unwrap();
        let path = staging.path().to_path_buf();
        let moved = parent.path().join("moved");
        std::fs::rename(&path, &moved).unwrap();
        symlink(outside.path(), &path).unwrap();
        staging.tree().create_new(Path::new("f"), 0o644).unwrap();
        assert!(moved.join("f").exists());
        drop(staging);
        // The symlink is not the directory it made: left, and nothing followed.
        assert!(path.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(moved.join("f").exists());
    }

    #[test]
    fn staging_replaced_by_another_directory_is_left_alone_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let w = workspace(&parent);
        let staging = w.staging_dir().unwrap();
        let path = staging.path().to_path_buf();
        std::fs::rename(&path, parent.path().join("moved")).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("theirs"), b"x").unwrap();
        drop(staging);
        assert!(path.join("theirs").exists());
    }

    #[test]
    fn kept_staging_is_not_removed() {
        let parent = tempfile::tempdir().unwrap();
        let w = workspace(&parent);
        let path = w.staging_dir().unwrap().keep();
        assert!(path.is_dir());
    }

    #[test]
    fn leftovers_of_this_dest_only_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let w = workspace(&parent);
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

    #[test]
    fn a_leftover_symlink_is_removed_itself_its_target_untouched() {
        let parent = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let link = parent.path().join(".stretcher-app.Ab12Cd.staging");
        symlink(outside.path(), &link).unwrap();
        workspace(&parent).remove_leftovers();
        assert!(link.symlink_metadata().is_err());
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn a_leftover_of_another_owner_is_left_alone() {
        if !rustix::process::geteuid().is_root() {
            return; // only root can give a directory away
        }
        let parent = tempfile::tempdir().unwrap();
        let theirs = parent.path().join(".stretcher-app.Ab12Cd.staging");
        std::fs::create_dir_all(theirs.join("sub")).unwrap();
        std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).unwrap();
        workspace(&parent).remove_leftovers();
        assert!(theirs.join("sub").is_dir());
        assert_eq!(std::fs::symlink_metadata(&theirs).unwrap().uid(), 65534);
    }

    #[test]
    fn create_at_replaces_its_own_leftover_and_refuses_a_symlink() {
        let parent = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let partial = parent.path().join(".r1.partial");
        std::fs::create_dir_all(partial.join("old")).unwrap();
        let staging = Staging::create_at(&partial).unwrap();
        assert!(!partial.join("old").exists());
        assert_eq!(mode_of(&partial), 0o700);
        staging.tree().create_new(Path::new("f"), 0o644).unwrap();
        drop(staging);
        assert!(!partial.exists());

        symlink(outside.path(), &partial).unwrap();
        let e = Staging::create_at(&partial).err().unwrap().to_string();
        assert!(e.contains("refused"), "{e}");
        assert!(partial.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn manifest(extra: &str) -> Manifest {
        let text = format!(
            "src: http://127.0.0.1/a.tar\nchecksum: {}\ndest: /srv/app\nexcludes: [\"*.log\"]\n{extra}",
            "0".repeat(64)
        );
        crate::manifest::parse(&text, "http://127.0.0.1/m.yml", &|_| None).unwrap()
    }

    #[test]
    fn filter_rules_are_read_from_staging_never_from_dest() {
        let root = tempfile::tempdir().unwrap();
        let w = workspace(&root);
        let staging = w.staging_dir().unwrap();
        let dest = root.path().join("dest");
        std::fs::create_dir_all(staging.path().join("conf")).unwrap();
        std::fs::create_dir_all(dest.join("conf")).unwrap();
        std::fs::write(staging.path().join("conf/rules"), b"/cache\n- /l\xe9\n").unwrap();
        std::fs::write(dest.join("conf/rules"), b"/tmp\n").unwrap();
        let m = manifest("exclude_from: ./conf/rules\n");
        assert_eq!(exclude_from_rel(&m), Some(PathBuf::from("conf/rules")));

        let (filter, rules) = load_filter(&m, &staging).unwrap();
        // byte for byte, a Latin-1 byte included
        assert_eq!(rules.as_deref(), Some(&b"/cache\n- /l\xe9\n"[..]));
        assert!(filter.is_excluded(Path::new("cache"), true));
        assert!(filter.is_excluded(Path::new(OsStr::from_bytes(b"l\xe9")), false));
        assert!(!filter.is_excluded(Path::new("tmp"), true));
        assert!(filter.is_excluded(Path::new("x.log"), false));
    }

    #[test]
    fn a_rule_file_behind_a_symlink_is_not_read() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("rules"), b"/secret\n").unwrap();
        let staging = workspace(&root).staging_dir().unwrap();
        symlink(outside.path(), staging.path().join("conf")).unwrap();
        symlink(outside.path().join("rules"), staging.path().join("rules")).unwrap();
        for name in ["conf/rules", "rules"] {
            let m = manifest(&format!("exclude_from: {name}\n"));
            let e = load_filter(&m, &staging).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn a_missing_rule_file_is_an_error_and_no_rule_file_reads_nothing() {
        let root = tempfile::tempdir().unwrap();
        let staging = workspace(&root).staging_dir().unwrap();
        let m = manifest("exclude_from: rules\n");
        let err = load_filter(&m, &staging).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("the file is not in the archive"), "{err}");
        assert!(err.contains("rules"), "{err}");

        let (filter, text) = load_filter(&manifest(""), &staging).unwrap();
        assert_eq!(text, None);
        assert!(filter.is_excluded(Path::new("a.log"), false));
    }
}
