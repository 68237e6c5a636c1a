//! The `mv` strategy (SPEC §6): the staged tree is renamed onto `dest` whole.
//!
//! It must never replace a `dest` that holds anything (it refuses, changing nothing),
//! and never copy: both trees are on one filesystem.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::IoContext;
use crate::{Error, Result};

/// The `mv` strategy: renames the directory `src` onto `dest`. Fails with `Error::Sync`,
/// changing nothing, when `dest` exists and is not an empty directory; an empty existing
/// `dest` is replaced; missing parents of `dest` are created. Both must be on one
/// filesystem (staging lives beside `dest` for that).
/// `dest_mode` (see [`super::SyncOptions::dest_mode`]) is set on the tree's root just
/// before the rename, so that `dest` has it from its first moment.
pub fn move_into_place(src: &Path, dest: &Path, dest_mode: Option<u32>) -> Result<()> {
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
