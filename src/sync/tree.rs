//! Disk → [`Listing`]: the only disk reads of planning.
//!
//! A walk lists a tree below its root in sorted pre-order (the component order of
//! `Path`) as [`Entry`]s, by `lstat`, never following a symlink below the root, with
//! each symlink's target read here; excluded entries are not descended into and are
//! kept apart with their kind, regular files with more than one link are noted apart.
//! It must never write anything.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::entry::{Entry, Kind, Meta};
use crate::error::IoContext;
use crate::filter::Filter;
use crate::{Error, Result};

/// Entries in sorted pre-order, with the excluded ones apart (see [`Listing::excluded`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Walked {
    /// Entries not excluded (paths relative to the listing's root, never empty),
    /// parents before children, siblings by name.
    pub entries: Vec<Entry>,
    /// Excluded entries (not descended into) by relative path, with their kind.
    pub excluded: HashMap<PathBuf, Kind>,
    /// Regular files among `entries` with more than one hard link (`rsync -a` makes
    /// separate files of them: never renamed into place, nor with their directory).
    pub linked: HashSet<PathBuf>,
}

/// A tree as [`super::plan`] sees it: plain data, made by [`source`] or [`dest`] (or
/// by hand, in tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Where the tree is (the plan names paths with it; it is never read again).
    pub root: PathBuf,
    /// The root's attributes (a symlink followed: rsync's `DEST/`); `None` when the
    /// root does not exist (a dest not made yet).
    pub root_meta: Option<Meta>,
    /// The walk below the root.
    pub walked: Walked,
    /// Dest only: the walk inside an excluded directory at a path where the source has
    /// an entry that is not excluded (a `foo/` rule and a file `foo`), which the plan
    /// must empty to make room.
    pub inside_excluded: HashMap<PathBuf, Walked>,
}

/// Lists the source tree `root`, which must be a directory.
pub(crate) fn source(root: &Path, filter: &Filter) -> Result<Listing> {
    let m = fs::metadata(root).ctx("stat", root)?;
    if !m.is_dir() {
        return Err(Error::Sync {
            path: root.to_path_buf(),
            msg: "source is not a directory".into(),
        });
    }
    Ok(Listing {
        root: root.to_path_buf(),
        root_meta: Some(Meta::from(&m)),
        walked: walk(root, Path::new(""), filter)?,
        inside_excluded: HashMap::new(),
    })
}

/// Lists the destination `root` (absent, or a directory) for a sync from `src`.
pub(crate) fn dest(root: &Path, filter: &Filter, src: &Listing) -> Result<Listing> {
    let root_meta = match fs::metadata(root) {
        Ok(m) if m.is_dir() => Meta::from(&m),
        Ok(_) => {
            return Err(Error::Sync {
                path: root.to_path_buf(),
                msg: "destination exists and is not a directory".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Listing {
                root: root.to_path_buf(),
                ..Listing::default()
            })
        }
        Err(e) => return Err(Error::io("stat", root, e)),
    };
    let walked = walk(root, Path::new(""), filter)?;
    let mut inside_excluded = HashMap::new();
    for (rel, kind) in &walked.excluded {
        let in_src = || {
            src.walked
                .entries
                .binary_search_by(|e| e.rel().cmp(rel))
                .is_ok()
        };
        if *kind == Kind::Dir && in_src() {
            inside_excluded.insert(rel.clone(), walk(root, rel, filter)?);
        }
    }
    Ok(Listing {
        root: root.to_path_buf(),
        root_meta: Some(root_meta),
        walked,
        inside_excluded,
    })
}

/// Walks `root/sub` (not following symlinks below `root`) in sorted pre-order, paths
/// relative to `root`. Excluded entries are not descended into; they are listed apart.
pub(crate) fn walk(root: &Path, sub: &Path, filter: &Filter) -> Result<Walked> {
    let mut entries = Vec::new();
    let mut excluded = HashMap::new();
    let mut linked = HashSet::new();
    let it = WalkDir::new(root.join(sub))
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let Ok(rel) = e.path().strip_prefix(root) else {
                return true;
            };
            let is_dir = e.file_type().is_dir();
            if filter.is_excluded(rel, is_dir) {
                excluded.insert(rel.to_path_buf(), Kind::of(e.file_type()));
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
        let rel = e.path().strip_prefix(root).map_err(|_| Error::Sync {
            path: e.path().to_path_buf(),
            msg: "walked outside its root".into(),
        })?;
        let m = e.metadata().map_err(|err| {
            let err: io::Error = err.into();
            Error::io("stat", e.path(), err)
        })?;
        let meta = Meta::from(&m);
        let target = match meta.kind() {
            Kind::Symlink => Some(fs::read_link(e.path()).ctx("readlink", e.path())?),
            _ => None,
        };
        entries.push(Entry::new(rel, meta, target.as_deref()));
        if meta.kind() == Kind::File && m.nlink() > 1 {
            linked.insert(rel.to_path_buf());
        }
    }
    Ok(Walked {
        entries,
        excluded,
        linked,
    })
}
