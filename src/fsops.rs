//! Small filesystem steps shared by the writers of a tree (the sync's apply, and the
//! unpack): a new node under a temporary name beside its final name in a
//! [`Tree`](crate::at::Tree), then renamed over it, all relative to the tree's
//! descriptors; a node's owner → mode → mtime, in that order (a chown clears set-id bits, so the
//! mode comes after it; the mtime last, as nothing after it may touch the node); and
//! `mknod` for fifos and device nodes.
//!
//! Its rules: never follow a symlink at the node being changed (`lchown`, `utimensat`
//! with `AT_SYMLINK_NOFOLLOW`; the mode is never set on a symlink), never open a node
//! to set its times (opening a fifo blocks; a descriptor the caller already holds is
//! used as it is), never reach a node of a tree through a path that could follow a
//! symlink ([`Node::In`]), and never leave a temporary name behind on an error (the
//! [`TempIn`] removes it when dropped).

use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::at::Tree;
use crate::{Error, Result};

/// A node under a temporary name beside its final name in a [`Tree`], removed (by
/// `unlinkat` relative to the tree) when dropped unless [`TempIn::rename_to`] put it in
/// place. `T` is what making it gave (the open [`File`] of a regular file).
pub struct TempIn<'t, T> {
    tree: &'t Tree,
    rel: PathBuf,
    made: Option<T>,
}

/// How many random names [`create_beside`] tries before it gives up.
const TEMP_TRIES: usize = 100;

/// The temporary name `.NAME.XXXXXX` beside `rel` (six random alphanumerics; NAME cut
/// to 200 bytes so the name stays within 255).
fn temp_name(rel: &Path) -> PathBuf {
    let name = rel.file_name().map(OsStrExt::as_bytes).unwrap_or(b"x");
    let mut t = b".".to_vec();
    t.extend_from_slice(&name[..name.len().min(200)]);
    t.push(b'.');
    t.extend((0..6).map(|_| fastrand::alphanumeric() as u8));
    let t = PathBuf::from(OsString::from_vec(t));
    match rel.parent() {
        Some(p) => p.join(t),
        None => t,
    }
}

/// Makes a new node named `.NAME.XXXXXX` beside `rel` in `tree` with `make(tree,
/// temp)`, which must create it with `O_EXCL` semantics (`Tree::create_new`,
/// `mkdirat`, `symlinkat`, `mknodat`): a name clash is retried with another name.
/// Nothing is followed on the way (the tree resolves the parent).
pub fn create_beside<'t, T>(
    tree: &'t Tree,
    rel: &Path,
    mut make: impl FnMut(&Tree, &Path) -> io::Result<T>,
) -> Result<TempIn<'t, T>> {
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let tmp = temp_name(rel);
        match make(tree, &tmp) {
            Ok(made) => {
                return Ok(TempIn {
                    tree,
                    rel: tmp,
                    made: Some(made),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::io("create temporary beside", tree.shown(rel), e)),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(Error::io("create temporary beside", tree.shown(rel), e))
}

/// A new empty regular file (mode 0600 less the umask, `O_CREAT | O_EXCL |
/// O_NOFOLLOW`) beside `rel` in `tree`, open for writing; the caller sets its mode.
pub fn file_beside<'t>(tree: &'t Tree, rel: &Path) -> Result<TempIn<'t, File>> {
    create_beside(tree, rel, |t, r| t.create_new(r, 0o600))
}

impl<T> TempIn<'_, T> {
    /// The temporary name, relative to the tree.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// What making it gave.
    pub fn get(&self) -> &T {
        // Invariant: `made` is only taken by `rename_to`, which consumes `self`.
        self.made
            .as_ref()
            .expect("a temp holds what made it until renamed")
    }

    /// What making it gave, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        // Invariant: as in `get`.
        self.made
            .as_mut()
            .expect("a temp holds what made it until renamed")
    }

    /// Renames the temporary node over `rel` in the same tree (atomic: `rel` names the
    /// old node or the new one, never neither), and hands back what making it gave.
    pub fn rename_to(mut self, rel: &Path) -> Result<T> {
        self.tree
            .rename(&self.rel, self.tree, rel)
            .map_err(|e| Error::io("rename into", self.tree.shown(rel), e))?;
        self.rel = PathBuf::new();
        // Invariant: as in `get`.
        Ok(self
            .made
            .take()
            .expect("a temp holds what made it until renamed"))
    }
}

impl<T> Drop for TempIn<'_, T> {
    fn drop(&mut self) {
        if !self.rel.as_os_str().is_empty() {
            // Closed first (a file), then removed; an error leaves nothing to do.
            drop(self.made.take());
            let _ = self.tree.unlink(&self.rel);
        }
    }
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
    /// Through a descriptor the caller holds open (a file just written, a directory
    /// opened `O_NOFOLLOW`): `fchown`, `fchmod`, `futimens`.
    Open(&'a File),
    /// Relative to an open tree, never following a symlink on the way or at the node
    /// ([`crate::at::Tree`]: `fchownat`, a mode through an `O_PATH` descriptor,
    /// `utimensat`, each with `AT_SYMLINK_NOFOLLOW`).
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
            Node::Open(file) => std::os::unix::fs::fchown(file, Some(uid), Some(gid)),
            Node::In(tree, rel) => tree.lchown(rel, uid, gid),
        }
        .map_err(|e| (Step::Owner, e))?;
    }
    if let Some(mode) = attrs.mode {
        match node {
            Node::Open(file) => file.set_permissions(Permissions::from_mode(mode)),
            Node::In(tree, rel) => tree.chmod(rel, mode),
        }
        .map_err(|e| (Step::Mode, e))?;
    }
    if attrs.mtime.is_some() || attrs.atime.is_some() {
        set_times(node, attrs).map_err(|e| (Step::Times, e))?;
    }
    Ok(())
}

/// Sets owner → mode → mtime on the node `rel` of `tree` ([`Node::In`]): nothing
/// followed on the way or at the node (callers never ask a mode of a symlink); the
/// tree's root itself when `rel` is empty. Errors name the node.
pub fn set_attrs(tree: &Tree, rel: &Path, attrs: &Attrs) -> Result<()> {
    apply(Node::In(tree, rel), attrs).map_err(|(step, e)| {
        let op = match step {
            Step::Owner => "lchown",
            Step::Mode => "chmod",
            Step::Times => "set times",
        };
        Error::io(op, tree.shown(rel), e)
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

/// Sets the times (to the nanosecond; one left out is untouched): `utimensat` relative
/// to the tree, which never opens the node, or `futimens` on an open one.
fn set_times(node: Node<'_>, attrs: &Attrs) -> io::Result<()> {
    match node {
        Node::Open(file) => {
            let t = |(secs, nsec)| filetime::FileTime::from_unix_time(secs, nsec);
            let (atime, mtime) = (attrs.atime.map(t), attrs.mtime.map(t));
            filetime::set_file_handle_times(file, atime, mtime)
        }
        Node::In(tree, rel) => tree.set_times_opt(rel, attrs.mtime, attrs.atime),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_dropped_temp_leaves_nothing_and_a_renamed_one_replaces() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let path = t.path().join("d/name");
        fs::write(&path, "old").unwrap();
        let tree = Tree::open(t.path(), false).unwrap();
        let rel = Path::new("d/name");
        let tmp = create_beside(&tree, rel, |t, r| t.symlink(Path::new("x"), r)).unwrap();
        let name = tmp
            .rel()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(".name.") && name.len() == ".name.".len() + 6,
            "{name}"
        );
        assert_eq!(tmp.rel().parent(), Some(Path::new("d")));
        drop(tmp);
        assert_eq!(fs::read_dir(t.path().join("d")).unwrap().count(), 1);

        let tmp = file_beside(&tree, rel).unwrap();
        let attrs = Attrs {
            owner: None,
            mode: Some(0o640),
            mtime: Some((1_000_000, 5)),
            atime: None,
        };
        set_file_attrs(tmp.get(), &tree.shown(tmp.rel()), &attrs).unwrap();
        tmp.rename_to(rel).unwrap();
        let m = fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.mtime(), m.mtime_nsec()),
            (0o640, 1_000_000, 5)
        );
        assert_eq!(fs::read_dir(t.path().join("d")).unwrap().count(), 1);
    }

    #[test]
    fn a_temp_is_never_made_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("l")).unwrap();
        let tree = Tree::open(t.path(), false).unwrap();
        let e = file_beside(&tree, Path::new("l/f")).err().unwrap();
        assert!(e.to_string().contains("not followed"), "{e}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_name_clash_is_retried() {
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::open(t.path(), false).unwrap();
        let mut calls = 0;
        let tmp = create_beside(&tree, Path::new("f"), |t, r| {
            calls += 1;
            if calls < 3 {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            t.create_new(r, 0o600)
        })
        .unwrap();
        assert_eq!(calls, 3);
        drop(tmp);
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
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
        let tree = Tree::open(t.path(), false).unwrap();
        set_attrs(&tree, Path::new("l"), &attrs).unwrap();
        assert_eq!(fs::symlink_metadata(&link).unwrap().mtime(), 42);
        assert_eq!(fs::metadata(&file).unwrap().mtime(), before);
        // The tree's root itself.
        set_attrs(&tree, Path::new(""), &attrs).unwrap();
        assert_eq!(fs::metadata(t.path()).unwrap().mtime(), 42);
    }

    #[test]
    fn apply_sets_the_atime_only_when_asked_and_names_the_failed_step() {
        let t = tempfile::tempdir().unwrap();
        let link = t.path().join("l");
        std::os::unix::fs::symlink("nowhere", &link).unwrap();
        let tree = Tree::open(t.path(), false).unwrap();
        let node = |rel: &'static str| Node::In(&tree, Path::new(rel));
        let mut attrs = Attrs {
            mtime: Some((1_000, 7)),
            ..Attrs::default()
        };
        apply(node("l"), &attrs).unwrap();
        let m = fs::symlink_metadata(&link).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000, 7));
        assert_ne!(m.atime(), 1_000);
        attrs.atime = attrs.mtime;
        apply(node("l"), &attrs).unwrap();
        let m = fs::symlink_metadata(&link).unwrap();
        assert_eq!((m.atime(), m.atime_nsec()), (1_000, 7));

        let (step, _) = apply(node("gone"), &attrs).unwrap_err();
        assert_eq!(step, Step::Times);
        attrs.mode = Some(0o600);
        let (step, _) = apply(node("gone"), &attrs).unwrap_err();
        assert_eq!(step, Step::Mode);
    }
}
