//! The mv strategy.

use std::fs::{self};
use std::io;
use std::path::Path;

use crate::error::IoContext;
use crate::{Error, Result};

/// The `mv` strategy: renames the directory `src` onto `dest`. Fails with `Error::Sync`,
/// changing nothing, when `dest` exists and is not an empty directory; an empty existing
/// `dest` is replaced; missing parents of `dest` are created. Both must be on one
/// filesystem (staging lives beside `dest` for that).
pub fn move_into_place(src: &Path, dest: &Path) -> Result<()> {
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
    // rename(2) replaces an empty directory atomically.
    fs::rename(src, dest).ctx("rename onto", dest)?;
    Ok(())
}
