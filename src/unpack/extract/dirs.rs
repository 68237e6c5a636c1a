//! Directories: the archive's own (and its root `.`), the parents an entry needs
//! (created, or checked to be real directories — never a symlink), and the deferred
//! fixes: modes, mtimes and owners applied once every entry is written, deepest first.
//!
//! Never follows a symlink: parents are checked with `lstat`, fixes opened
//! `O_NOFOLLOW`.

use std::cmp::Reverse;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use tar::EntryType;

use crate::fsops::{Attrs, Node};
use crate::Result;

use super::super::errors::{fail, fail_io, Why};
use super::super::gnu::PaxInfo;
use super::{seconds, set_attrs, Extractor, Meta};

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
            let abs = self.into.join(rel);
            match mkdir(&abs) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let is_dir = fs::symlink_metadata(&abs)
                        .map_err(|e| fail_io(raw, "stat", e))?
                        .is_dir();
                    if !is_dir {
                        self.remove_existing(rel, &abs, raw)?;
                        mkdir(&abs)
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
            let abs = self.into.join(&prefix);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    let msg = if create {
                        format!("refusing to write through the symlink {prefix:?}")
                    } else {
                        format!("hard link target passes through the symlink {prefix:?}")
                    };
                    return Err(fail(raw, msg));
                }
                Ok(_) => return Err(fail(raw, format!("{what}{prefix:?} is not a directory"))),
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    mkdir(&abs).map_err(|e| fail_io(raw, &format!("mkdir {prefix:?}"), e))?;
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
        if self.opts.link_unchanged {
            // A directory without a fix is final now (a fix changes its own directory
            // only); read before a fix can make its parent unsearchable.
            let into = self.into;
            let unfixed: Vec<PathBuf> = (self.dirs.iter())
                .filter(|d| !self.fixes.contains_key(*d))
                .cloned()
                .collect();
            for rel in unfixed {
                let stat = || fs::symlink_metadata(into.join(&rel));
                self.note(&rel, rel.as_os_str().as_bytes(), stat, None)?;
            }
        }
        let mut fixes: Vec<(PathBuf, DirFix)> =
            std::mem::take(&mut self.fixes).into_iter().collect();
        fixes.sort_by_key(|(rel, _)| Reverse(rel.components().count()));
        for (rel, fix) in &fixes {
            let abs = if rel.as_os_str().is_empty() {
                self.into.to_path_buf()
            } else {
                self.into.join(rel)
            };
            let name: &[u8] = if rel.as_os_str().is_empty() {
                b"."
            } else {
                rel.as_os_str().as_bytes()
            };
            let dir = apply_dir(&abs, fix).map_err(|why| why.of(name))?;
            if !rel.as_os_str().is_empty() {
                self.note(rel, rel.as_os_str().as_bytes(), || dir.metadata(), None)?;
            }
        }
        Ok(())
    }
}

/// Answers the open directory (for its final `fstat`).
fn apply_dir(abs: &Path, fix: &DirFix) -> std::result::Result<fs::File, Why> {
    // O_NOFOLLOW: even if something replaced the directory by a symlink, never follow it.
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(abs)
        .map_err(|e| Why::io("open directory", e))?;
    let attrs = Attrs {
        owner: fix.owner,
        mode: Some(fix.mode),
        mtime: fix.mtime.map(seconds),
        atime: None,
    };
    set_attrs(Node::Open(&dir), &attrs)?;
    Ok(dir)
}

fn mkdir(abs: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(IMPLICIT_DIR_MODE).create(abs)
}
