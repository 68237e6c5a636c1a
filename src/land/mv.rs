//! `sync_strategy: mv` (SPEC §6): the staged tree is renamed onto `dest` whole.
//!
//! It must never replace a `dest` that holds anything (it refuses, changing nothing),
//! and never copy: both trees are on one filesystem.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::IoContext;
use crate::filter::Filter;
use crate::index;
use crate::logln;
use crate::record;
use crate::staging::{make_writable_and_remove, Staging};
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
        let path = staging.keep();
        if let Err(e) = move_into_place(&path, dest, Some(mode)) {
            let _ = make_writable_and_remove(&path);
            return Err(e);
        }
        Ok(Landed {
            changes: record::Changes {
                created: staged.get().entries,
                ..Default::default()
            },
            entries: index::scan(dest, filter),
            release: None,
        })
    }
}

/// The `mv` strategy: renames the directory `src` onto `dest`. Fails with `Error::Sync`,
/// changing nothing, when `dest` exists and is not an empty directory; an empty existing
/// `dest` is replaced; missing parents of `dest` are created. Both must be on one
/// filesystem (staging lives beside `dest` for that).
/// `dest_mode` (see [`crate::sync::SyncOptions::dest_mode`]) is set on the tree's root just
/// before the rename, so that `dest` has it from its first moment.
pub(crate) fn move_into_place(src: &Path, dest: &Path, dest_mode: Option<u32>) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            let mut it = fs::read_dir(dest).ctx("read", dest)?;
            if it.next().is_some() {
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
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).ctx("create", parent)?;
            }
        }
        Err(e) => return Err(Error::io("stat", dest, e)),
    }
    if let Some(mode) = dest_mode {
        fs::set_permissions(src, Permissions::from_mode(mode)).ctx("chmod", src)?;
    }
    // rename(2) replaces an empty directory atomically.
    fs::rename(src, dest).ctx("rename onto", dest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
            move_into_place(&src, &dest, None),
            Err(Error::Sync { .. })
        ));
        assert!(src.join("a").exists());
        fs::remove_file(dest.join("x")).unwrap();
        move_into_place(&src, &dest, None).unwrap();
        assert!(dest.join("a").exists() && !src.exists());
        let dest2 = t.path().join("new/parent/d2");
        move_into_place(&dest, &dest2, None).unwrap();
        assert!(dest2.join("a").exists());
    }
}
