//! Disk → sorted listing: the walks of the plan.

use std::collections::HashMap;
use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use super::*;
use crate::filter::Filter;
use crate::{Error, Result};

/// One entry found by a walk.
pub(super) struct Entry {
    pub(super) rel: PathBuf,
    pub(super) meta: Meta,
}

/// Walks `root` (not following symlinks below it) in sorted pre-order, which is the
/// component order of `Path`. Excluded entries are not descended into; they are returned
/// apart, with their kind.
/// `sub` (relative) restricts the walk to the entries below `root/sub`.
pub(super) fn walk(
    root: &Path,
    sub: &Path,
    filter: &Filter,
) -> Result<(Vec<Entry>, HashMap<PathBuf, Kind>)> {
    let mut entries = Vec::new();
    let mut excluded = HashMap::new();
    let rel_of = |p: &Path| p.strip_prefix(root).map(Path::to_path_buf);
    let it = WalkDir::new(root.join(sub))
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let Ok(rel) = rel_of(e.path()) else {
                return true;
            };
            let is_dir = e.file_type().is_dir();
            if filter.is_excluded(&rel, is_dir) {
                let kind = if is_dir {
                    Kind::Dir
                } else {
                    kind_of(e.file_type())
                };
                excluded.insert(rel, kind);
                false
            } else {
                true
            }
        });
    for item in it {
        let e = item.map_err(|err| {
            let path = err.path().unwrap_or(root).to_path_buf();
            Error::io("walk", path, err.into())
        })?;
        // Invariant: walkdir only yields paths below the root it was given.
        let rel = rel_of(e.path()).map_err(|_| Error::Sync {
            path: e.path().to_path_buf(),
            msg: "walked outside its root".into(),
        })?;
        let m = e.metadata().map_err(|err| {
            let err: io::Error = err.into();
            Error::io("stat", e.path(), err)
        })?;
        entries.push(Entry {
            rel,
            meta: Meta::from_std(&m),
        });
    }
    Ok((entries, excluded))
}

pub(super) fn kind_of(ft: fs::FileType) -> Kind {
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Special
    }
}

pub(super) fn parent_of(rel: &Path) -> PathBuf {
    rel.parent().map(Path::to_path_buf).unwrap_or_default()
}
