//! `sync_strategy: mv` (SPEC §6): the staged tree is renamed onto `dest` whole.
//!
//! It must never replace a `dest` that holds anything (it refuses, changing nothing),
//! never copy (both trees are on one filesystem), and never reach either by a path
//! below the trusted one: dest is looked at and the staged tree renamed through the
//! descriptors of their parents, the mode set through the staged tree's own.

use std::io;
use std::path::Path;

use crate::at::Tree;
use crate::filter::Filter;
use crate::index;
use crate::logln;
use crate::record;
use crate::staging::Staging;
use crate::sync::dry_run;
use crate::unpack::Staged;
use crate::verify::Verified;
use crate::{Error, Result};

use super::{staging_beside, Ctx, Land, Landed, Stage};

/// The mv strategy of one deploy.
pub(super) struct Mv<'a> {
    ctx: Ctx<'a>,
}

impl<'a> Mv<'a> {
    pub(super) fn new(ctx: Ctx<'a>) -> Mv<'a> {
        Mv { ctx }
    }
}

impl Land for Mv<'_> {
    /// Staging beside dest; every file is written (dest is to be replaced whole).
    fn stage(&mut self, _reuse: bool) -> Result<Stage> {
        staging_beside(&self.ctx, None)
    }

    fn dry_run(&self, staged: &Verified<Staged>, _filter: &Filter) -> Result<Vec<dry_run::Change>> {
        dry_run::renamed(staged, self.ctx.dest)
    }

    /// The staged tree renamed onto dest with its mode; one walk of the result for the
    /// index (nothing else was walked).
    fn land(
        &mut self,
        staging: Staging,
        staged: Verified<Staged>,
        filter: &Filter,
        mode: u32,
        _settings: &index::Header,
    ) -> Result<Landed> {
        let dest = self.ctx.dest;
        logln!("Moving {} to {}", staging.path().display(), dest.display());
        let src = crate::sync::open_source(staged.get())?;
        // On an error, dropping `staging` removes the very directory it made.
        move_into_place(&src, dest, Some(mode))?;
        staging.keep();
        let staged = staged.into_inner();
        Ok(Landed {
            changes: record::Changes {
                created: staged.entries,
                ..Default::default()
            },
            entries: index::scan(dest, filter),
            digests: staged.digests,
            release: None,
            removal: None,
        })
    }
}

/// `path`'s parent (`.` for a bare name) and last name.
fn split(path: &Path) -> Result<(&Path, &Path)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) if p.as_os_str().is_empty() => Ok((Path::new("."), Path::new(n))),
        (Some(p), Some(n)) => Ok((p, Path::new(n))),
        _ => Err(Error::Sync {
            path: path.to_path_buf(),
            msg: "not a name to move to or from".into(),
        }),
    }
}

/// The `mv` strategy: renames the open directory `src` (the staged tree) onto `dest`.
/// Fails with `Error::Sync`, changing nothing, when `dest` exists and is not an empty
/// directory; an empty existing `dest` is replaced; missing parents of `dest` are
/// created (the path up to `dest` is trusted, SPEC §17). Both must be on one
/// filesystem (staging lives beside `dest` for that). `dest` is looked at, and `src`
/// renamed, by name in their parents' descriptors; what is renamed must be `src`
/// itself (device and inode), else it is refused.
/// `dest_mode` (see [`crate::sync::SyncOptions::dest_mode`]) is set on the tree's root
/// (through its descriptor) just before the rename, so that `dest` has it from its
/// first moment.
pub(crate) fn move_into_place(src: &Tree, dest: &Path, dest_mode: Option<u32>) -> Result<()> {
    let (dest_parent, dest_name) = split(dest)?;
    let (src_parent, src_name) = split(src.path())?;
    let to = match Tree::open(dest_parent, true) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest_parent)
                .map_err(|e| Error::io("create", dest_parent, e))?;
            Tree::open(dest_parent, true).map_err(|e| Error::io("open", dest_parent, e))?
        }
        Err(e) => return Err(Error::io("open", dest_parent, e)),
    };
    match to.lstat(dest_name) {
        Ok(st) if crate::entry::Meta::from(&st).kind() == crate::entry::Kind::Dir => {
            let names = to
                .names(dest_name)
                .map_err(|e| Error::io("read", dest, e))?;
            if !names.is_empty() {
                return Err(Error::Sync {
                    path: dest.to_path_buf(),
                    msg: "dest is not empty; the mv strategy needs it absent or empty".into(),
                });
            }
        }
        Ok(_) => {
            return Err(Error::Sync {
                path: dest.to_path_buf(),
                msg: "dest exists and is not a directory".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("stat", dest, e)),
    }
    let id = src.id().map_err(|e| Error::io("stat", src.path(), e))?;
    if let Some(mode) = dest_mode {
        src.chmod(Path::new(""), mode)
            .map_err(|e| Error::io("chmod", src.path(), e))?;
    }
    let from = Tree::open(src_parent, true).map_err(|e| Error::io("open", src_parent, e))?;
    let same = from
        .lstat(src_name)
        .is_ok_and(|st| (st.st_dev, st.st_ino) == id);
    if !same {
        return Err(Error::Sync {
            path: src.path().to_path_buf(),
            msg: "replaced while the deploy ran: refused".into(),
        });
    }
    // rename(2) replaces an empty directory atomically.
    from.rename(src_name, &to, dest_name)
        .map_err(|e| Error::io("rename onto", dest, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn tree(p: &Path) -> Tree {
        Tree::open(p, false).unwrap()
    }

    fn write(p: &Path, data: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    #[test]
    fn move_into_place_refuses_non_empty_and_replaces_empty() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("staging");
        write(&src.join("a"), "a");
        let dest = t.path().join("p/q/dest");
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join("x"), "x").unwrap();
        assert!(matches!(
            move_into_place(&tree(&src), &dest, None),
            Err(Error::Sync { .. })
        ));
        assert!(src.join("a").exists());
        fs::remove_file(dest.join("x")).unwrap();
        move_into_place(&tree(&src), &dest, None).unwrap();
        assert!(dest.join("a").exists() && !src.exists());
        let dest2 = t.path().join("new/parent/d2");
        move_into_place(&tree(&dest), &dest2, Some(0o750)).unwrap();
        assert!(dest2.join("a").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&dest2).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
    }

    #[test]
    fn a_staged_tree_swapped_by_name_or_a_symlinked_dest_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("staging");
        write(&src.join("a"), "a");
        let held = tree(&src);
        fs::rename(&src, t.path().join("moved")).unwrap();
        fs::create_dir(&src).unwrap();
        let dest = t.path().join("dest");
        let e = move_into_place(&held, &dest, None).unwrap_err();
        assert!(e.to_string().contains("replaced"), "{e}");
        assert!(!dest.exists());

        let target = t.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, &dest).unwrap();
        let e = move_into_place(&tree(&src), &dest, None).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(src.exists());
    }
}
