//! Directories: the archive's own (and its root `.`), the parents an entry needs
//! (created, or checked to be real directories — never a symlink), and the deferred
//! fixes: modes, mtimes and owners applied once every entry is written, deepest first.
//!
//! Never follows a symlink: everything goes through the staging tree's descriptor,
//! parents are checked with `lstat` relative to it, each fix is applied through the
//! directory opened with no symlink followed on the way (`Tree::open_dir`).

use std::cmp::Reverse;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;
use rustix::fs::FileType;
use tar::EntryType;

use crate::at::Tree;
use crate::fsops::{Attrs, Node};
use crate::Result;

use super::super::errors::{fail, fail_io, Why};
use super::super::gnu::PaxInfo;
use super::{lstat_meta, seconds, set_attrs, Extractor, Meta};

/// Mode of directories created because an entry needs them as parents.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// What is still to be done to a directory once all entries are written.
pub(super) struct DirFix {
    mode: u32,
    mtime: Option<FileTime>,
    owner: Option<(u32, u32)>,
}

impl From<Meta> for DirFix {
    fn from(m: Meta) -> Self {
        DirFix {
            mode: m.mode,
            mtime: Some(m.mtime),
            owner: m.owner,
        }
    }
}

impl Extractor<'_, '_> {
    /// The archive root's entry (`.`, `./`): only its metadata, applied to `into`.
    pub(super) fn root<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        pax: &PaxInfo,
        kind: EntryType,
        raw: &[u8],
    ) -> Result<()> {
        if kind != EntryType::Directory {
            return Err(fail(raw, "the archive root must be a directory"));
        }
        let meta = self.meta(entry, pax, raw)?;
        self.root_mode = Some(meta.mode);
        self.fixes.insert(PathBuf::new(), meta.into());
        Ok(())
    }

    pub(super) fn dir(&mut self, rel: &Path, raw: &[u8], meta: Meta) -> Result<()> {
        self.parents(rel, raw)?;
        if !self.dirs.contains(rel) {
            match mkdir(self.tree, rel) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let st = self.tree.lstat(rel).map_err(|e| fail_io(raw, "stat", e))?;
                    if !is_dir(&st) {
                        self.remove_existing(rel, raw)?;
                        mkdir(self.tree, rel)
                    } else {
                        Ok(())
                    }
                }
                other => other,
            }
            .map_err(|e| fail_io(raw, "mkdir", e))?;
            self.dirs.insert(rel.to_path_buf());
        }
        self.fixes.insert(rel.to_path_buf(), meta.into());
        self.entries += 1;
        Ok(())
    }

    /// Makes every parent of `rel` a real directory below `into`, creating missing
    /// ones; refuses a parent that is a symlink (never followed) or not a directory.
    pub(super) fn parents(&mut self, rel: &Path, raw: &[u8]) -> Result<()> {
        self.real_parents(rel, raw, true)
    }

    /// Like `parents` for a hard link's target, but creates nothing.
    pub(super) fn check_parents(&mut self, target: &Path, raw: &[u8]) -> Result<()> {
        self.real_parents(target, raw, false)
    }

    fn real_parents(&mut self, rel: &Path, raw: &[u8], create: bool) -> Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if parent.as_os_str().is_empty() || self.dirs.contains(parent) {
            return Ok(());
        }
        let what = if create { "" } else { "hard link target: " };
        let mut prefix = PathBuf::with_capacity(parent.as_os_str().len());
        for comp in parent.components() {
            prefix.push(comp);
            if self.dirs.contains(&prefix) {
                continue;
            }
            match self.tree.lstat(&prefix) {
                Ok(st) if is_dir(&st) => {}
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    let msg = if create {
                        format!("refusing to write through the symlink {prefix:?}")
                    } else {
                        format!("hard link target passes through the symlink {prefix:?}")
                    };
                    return Err(fail(raw, msg));
                }
                Ok(_) => return Err(fail(raw, format!("{what}{prefix:?} is not a directory"))),
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    mkdir(self.tree, &prefix)
                        .map_err(|e| fail_io(raw, &format!("mkdir {prefix:?}"), e))?;
                    if self.needs_chmod(IMPLICIT_DIR_MODE) {
                        let fix = DirFix {
                            mode: IMPLICIT_DIR_MODE,
                            mtime: None,
                            owner: None,
                        };
                        self.fixes.insert(prefix.clone(), fix);
                    }
                }
                Err(e) => return Err(fail_io(raw, &format!("{what}stat {prefix:?}"), e)),
            }
            self.dirs.insert(prefix.clone());
        }
        Ok(())
    }

    /// Applies directory owners, modes and mtimes, deepest first: writing inside a
    /// directory would bump its mtime, and a read-only or unsearchable parent would
    /// block fixing its children.
    pub(super) fn fix_dirs(&mut self) -> Result<()> {
        if self.listing() {
            // A directory without a fix is final now (a fix changes its own directory
            // only); read before a fix can make its parent unsearchable.
            let tree = self.tree;
            let unfixed: Vec<PathBuf> = (self.dirs.iter())
                .filter(|d| !self.fixes.contains_key(*d))
                .cloned()
                .collect();
            for rel in unfixed {
                let stat = || lstat_meta(tree, &rel);
                self.note(&rel, rel.as_os_str().as_bytes(), stat, None)?;
            }
        }
        let mut fixes: Vec<(PathBuf, DirFix)> =
            std::mem::take(&mut self.fixes).into_iter().collect();
        fixes.sort_by_key(|(rel, _)| Reverse(rel.components().count()));
        for (rel, fix) in &fixes {
            let name: &[u8] = if rel.as_os_str().is_empty() {
                b"."
            } else {
                rel.as_os_str().as_bytes()
            };
            let dir = apply_dir(self.tree, rel, fix, self.creator).map_err(|why| why.of(name))?;
            if !rel.as_os_str().is_empty() {
                let stat = || dir.metadata().map(|m| crate::entry::Meta::from(&m));
                self.note(rel, rel.as_os_str().as_bytes(), stat, None)?;
            }
        }
        Ok(())
    }
}

/// Applies `fix` to the directory `rel` (empty: the root) through its descriptor;
/// answers the open directory (for its final `fstat`). An owner that is `creator`, the
/// ids the unpack's directories were made with, is not set again.
fn apply_dir(
    tree: &Tree,
    rel: &Path,
    fix: &DirFix,
    creator: Option<(u32, u32)>,
) -> std::result::Result<fs::File, Why> {
    // Opened with no symlink followed on the way or at the end, even one swapped in.
    let dir = fs::File::from(
        tree.open_dir(rel)
            .map_err(|e| Why::io("open directory", e))?,
    );
    let attrs = Attrs {
        owner: fix.owner.filter(|&o| Some(o) != creator),
        mode: Some(fix.mode),
        mtime: fix.mtime.map(seconds),
        atime: None,
    };
    set_attrs(Node::Open(&dir), &attrs)?;
    Ok(dir)
}

fn mkdir(tree: &Tree, rel: &Path) -> io::Result<()> {
    tree.mkdir(rel, IMPLICIT_DIR_MODE)
}

fn is_dir(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}
