//! The plan: staging × dest × filter → actions.

use std::collections::{HashMap, HashSet};
use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};

use super::*;
use crate::error::IoContext;
use crate::filter::Filter;
use crate::{Error, Result};

use super::tree::*;
/// Computes what [`apply`] must do to make `dest` a mirror of `src` under `filter`.
/// Reads both trees, changes nothing.
pub fn plan(src: &Path, dest: &Path, filter: &Filter) -> Result<Plan> {
    plan_kept(src, dest, filter, &KeptFiles::new(), true)
}

/// [`plan`], for a source that lacks the `kept` files (they are in dest already), and
/// listing up-to-date entries as `Keep` actions only when `list_uptodate` (for `-vv`).
/// A kept file that dest no longer holds as it was (a `pre` command changed it) is
/// `Error::Stale`: its content is in neither tree.
pub fn plan_kept(
    src: &Path,
    dest: &Path,
    filter: &Filter,
    kept: &KeptFiles,
    list_uptodate: bool,
) -> Result<Plan> {
    let src_root = fs::metadata(src).ctx("stat", src)?;
    if !src_root.is_dir() {
        return Err(Error::Sync {
            path: src.to_path_buf(),
            msg: "source is not a directory".into(),
        });
    }
    let src_root = Meta::from_std(&src_root);
    let dest_root = match fs::metadata(dest) {
        Ok(m) if m.is_dir() => Some(Meta::from_std(&m)),
        Ok(_) => {
            return Err(Error::Sync {
                path: dest.to_path_buf(),
                msg: "destination exists and is not a directory".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("stat", dest, e)),
    };

    let (src_entries, src_excluded) = walk(src, Path::new(""), filter)?;
    // Source directories that cannot be moved whole: something below is excluded (it
    // must not reach dest), is a hard link (rsync -a makes separate files) or special.
    let mut not_whole: HashSet<PathBuf> = HashSet::new();
    let odd = src_entries
        .iter()
        .filter(|e| match e.meta.kind {
            Kind::File => e.meta.nlink > 1,
            Kind::Special => true,
            Kind::Dir | Kind::Symlink => false,
        })
        .map(|e| e.rel.as_path());
    for rel in src_excluded.keys().map(PathBuf::as_path).chain(odd) {
        let mut p = rel.parent();
        while let Some(dir) = p {
            if !not_whole.insert(dir.to_path_buf()) {
                break;
            }
            p = dir.parent();
        }
    }
    let (dest_entries, dest_excluded) = match dest_root {
        Some(_) => walk(dest, Path::new(""), filter)?,
        None => (Vec::new(), HashMap::new()),
    };
    // Directories in dest that hold an excluded entry somewhere below: never removable.
    let mut protected: HashSet<PathBuf> = HashSet::new();
    for rel in dest_excluded.keys() {
        let mut p = rel.parent();
        while let Some(dir) = p {
            if dir.as_os_str().is_empty() || !protected.insert(dir.to_path_buf()) {
                break;
            }
            p = dir.parent();
        }
    }

    let mut deletes = Vec::new();
    let mut updates = Vec::new();
    let mut after: Vec<After> = Vec::new();
    let mut uptodate = 0u64;
    let mut kept_seen = 0usize;
    // An up-to-date entry is an action only when something about it needs fixing.
    let mut keep = |updates: &mut Vec<Action>, rel: PathBuf, src: Meta, dest: Meta| {
        let attrs_differ = src.perms() != dest.perms()
            || (src.uid, src.gid) != (dest.uid, dest.gid)
            || (src.kind == Kind::Symlink && src.mtime != dest.mtime);
        if attrs_differ || list_uptodate {
            updates.push(Action {
                rel,
                op: Op::Keep { src, dest },
            });
        } else {
            uptodate += 1;
        }
    };
    let mut dirs: Vec<(PathBuf, Meta, Option<Meta>)> = vec![(PathBuf::new(), src_root, dest_root)];
    let mut dirty: HashSet<PathBuf> = HashSet::new();
    if dest_root.is_none() {
        updates.push(Action {
            rel: PathBuf::new(),
            op: Op::MakeDir {
                existing: None,
                whole: !not_whole.contains(Path::new("")),
            },
        });
    }

    let mut s = src_entries.into_iter().peekable();
    let mut d = dest_entries.into_iter().peekable();
    loop {
        let order = match (s.peek(), d.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.rel.cmp(&b.rel),
        };
        match order {
            std::cmp::Ordering::Greater => {
                // Only in dest (or excluded in src): delete, judged by its dest type.
                let Some(de) = d.next() else { break };
                if let Some(k) = kept.get(&de.rel) {
                    kept_seen += 1;
                    if de.meta.kind != Kind::File
                        || de.meta.size != k.size
                        || de.meta.mtime != k.mtime
                    {
                        return Err(stale(dest, &de.rel));
                    }
                    let (uid, gid) = k.owner.unwrap_or((de.meta.uid, de.meta.gid));
                    let src_meta = Meta {
                        mode: (de.meta.mode & !0o7777) | k.mode,
                        uid,
                        gid,
                        ..de.meta
                    };
                    after.push(After {
                        rel: de.rel.clone(),
                        src: src_meta,
                        dest: Some(de.meta),
                        target: None,
                        fate: Fate::Same,
                    });
                    keep(&mut updates, de.rel, src_meta, de.meta);
                    continue;
                }
                dirty.insert(parent_of(&de.rel));
                let op = if de.meta.kind == Kind::Dir && protected.contains(&de.rel) {
                    after.push(After {
                        rel: de.rel.clone(),
                        src: de.meta,
                        dest: Some(de.meta),
                        target: None,
                        fate: Fate::Left,
                    });
                    Op::KeepNonEmpty { dest: de.meta }
                } else {
                    Op::Delete { dest: de.meta }
                };
                deletes.push(Action { rel: de.rel, op });
            }
            std::cmp::Ordering::Less => {
                let Some(se) = s.next() else { break };
                let mut existing = None;
                if let Some(&kind) = dest_excluded.get(&se.rel) {
                    // Excluded in dest as another type (e.g. `foo/` while the source has a
                    // file `foo`): rsync makes room for it all the same, deleting what the
                    // rules allow inside a directory and failing if anything remains.
                    existing = Some(kind);
                    if kind == Kind::Dir {
                        let (inner, inner_excluded) = walk(dest, &se.rel, filter)?;
                        if !inner_excluded.is_empty() {
                            return Err(cannot_replace(dest, &se));
                        }
                        deletes.extend(inner.into_iter().map(|de| Action {
                            rel: de.rel,
                            op: Op::Delete { dest: de.meta },
                        }));
                    }
                }
                dirty.insert(parent_of(&se.rel));
                add_src(
                    src,
                    &se,
                    existing,
                    &not_whole,
                    &mut updates,
                    &mut dirs,
                    &mut after,
                )?;
            }
            std::cmp::Ordering::Equal => {
                let (Some(se), Some(de)) = (s.next(), d.next()) else {
                    break;
                };
                if se.meta.kind != de.meta.kind {
                    if de.meta.kind == Kind::Dir && protected.contains(&de.rel) {
                        return Err(cannot_replace(dest, &se));
                    }
                    dirty.insert(parent_of(&se.rel));
                    add_src(
                        src,
                        &se,
                        Some(de.meta.kind),
                        &not_whole,
                        &mut updates,
                        &mut dirs,
                        &mut after,
                    )?;
                    continue;
                }
                if se.meta.kind == Kind::Dir {
                    dirs.push((se.rel, se.meta, Some(de.meta)));
                    continue;
                }
                let mut target = None;
                let same = match se.meta.kind {
                    // rsync's quick check: size and mtime seconds
                    Kind::File => se.meta.size == de.meta.size && se.meta.mtime == de.meta.mtime,
                    Kind::Symlink => {
                        let a = src.join(&se.rel);
                        let b = dest.join(&de.rel);
                        let t = fs::read_link(&a).ctx("readlink", &a)?;
                        let same = t == fs::read_link(&b).ctx("readlink", &b)?;
                        target = Some(t);
                        same
                    }
                    _ => {
                        se.meta.mode & 0o170000 == de.meta.mode & 0o170000
                            && se.meta.rdev == de.meta.rdev
                    }
                };
                if same {
                    after.push(After {
                        rel: se.rel.clone(),
                        src: se.meta,
                        dest: Some(de.meta),
                        target,
                        fate: Fate::Same,
                    });
                    keep(&mut updates, se.rel, se.meta, de.meta);
                } else {
                    dirty.insert(parent_of(&se.rel));
                    let kind = Some(se.meta.kind);
                    add_src(
                        src,
                        &se,
                        kind,
                        &not_whole,
                        &mut updates,
                        &mut dirs,
                        &mut after,
                    )?;
                }
            }
        }
    }

    // Deletions run children first: reverse of the walk's pre-order.
    deletes.reverse();
    let mut actions = deletes;
    actions.extend(updates);
    for (rel, src_meta, dest_meta) in dirs.into_iter().rev() {
        let dirty = dest_meta.is_none() || dirty.contains(&rel);
        after.push(After {
            rel: rel.clone(),
            src: src_meta,
            dest: dest_meta,
            target: None,
            fate: Fate::Dir { dirty },
        });
        actions.push(Action {
            rel,
            op: Op::DirAttrs {
                src: src_meta,
                dest: dest_meta,
                dirty,
            },
        });
    }
    if kept_seen < kept.len() {
        // Some kept file was not in dest's walk: fine only when the rules exclude it
        // (then it would be neither copied nor deleted anyway).
        for rel in kept.keys() {
            if !excluded_here_or_above(filter, rel) && fs::symlink_metadata(dest.join(rel)).is_err()
            {
                return Err(stale(dest, rel));
            }
        }
    }
    Ok(Plan {
        src: src.to_path_buf(),
        dest: dest.to_path_buf(),
        actions,
        uptodate,
        after,
    })
}

fn stale(dest: &Path, rel: &Path) -> Error {
    Error::Stale {
        path: dest.join(rel),
    }
}

/// Whether `rel` (a file) or one of its directories is excluded.
fn excluded_here_or_above(filter: &Filter, rel: &Path) -> bool {
    let mut dir = PathBuf::new();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        dir.push(c);
        let is_dir = i + 1 < comps.len();
        if filter.is_excluded(&dir, is_dir) {
            return true;
        }
    }
    false
}

/// rsync exits 23 here ("could not make way for new regular file"); we refuse before
/// changing anything.
fn cannot_replace(dest: &Path, se: &Entry) -> Error {
    Error::Sync {
        path: dest.join(&se.rel),
        msg: format!(
            "cannot replace this directory by a {:?}: it holds excluded entries",
            se.meta.kind
        ),
    }
}

/// Plans the creation of a source entry at a path where dest holds `existing` (or nothing).
fn add_src(
    src: &Path,
    se: &Entry,
    existing: Option<Kind>,
    not_whole: &HashSet<PathBuf>,
    updates: &mut Vec<Action>,
    dirs: &mut Vec<(PathBuf, Meta, Option<Meta>)>,
    after: &mut Vec<After>,
) -> Result<()> {
    let op = match se.meta.kind {
        Kind::Dir => {
            dirs.push((se.rel.clone(), se.meta, None));
            Op::MakeDir {
                existing,
                whole: !not_whole.contains(&se.rel),
            }
        }
        Kind::File => {
            after.push(After {
                rel: se.rel.clone(),
                src: se.meta,
                dest: None,
                target: None,
                fate: Fate::New,
            });
            Op::CopyFile {
                src: se.meta,
                existing,
            }
        }
        Kind::Symlink => {
            let p = src.join(&se.rel);
            let target = fs::read_link(&p).ctx("readlink", &p)?;
            after.push(After {
                rel: se.rel.clone(),
                src: se.meta,
                dest: None,
                target: Some(target.clone()),
                fate: Fate::New,
            });
            Op::MakeSymlink {
                target,
                src: se.meta,
                existing,
            }
        }
        Kind::Special => {
            after.push(After {
                rel: se.rel.clone(),
                src: se.meta,
                dest: None,
                target: None,
                fate: Fate::New,
            });
            Op::MakeSpecial {
                src: se.meta,
                existing,
            }
        }
    };
    updates.push(Action {
        rel: se.rel.clone(),
        op,
    });
    Ok(())
}
