//! What persists between runs (SPEC §2, §10): the exclusive lock that keeps two
//! deploys of one `dest` from interleaving — `.<dest name>.stretcher.lock` in dest's
//! parent, held with flock(2) so a lock of a dead process never blocks.
//!
//! Never removes the lock file (removing it would let a third run lock a different
//! inode while the second still holds the old one).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::interrupt;
use crate::logln;

/// An exclusive lock on one `dest`, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DestLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl DestLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file for `dest`: `.<name>.stretcher.lock` beside it.
pub fn lock_path(dest: &Path) -> Result<PathBuf> {
    let (parent, name) = parent_and_name(dest)?;
    let mut file = std::ffi::OsString::from(".");
    file.push(name);
    file.push(".stretcher.lock");
    Ok(parent.join(file))
}

/// `dest`'s parent directory and its own name.
pub fn parent_and_name(dest: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    match (dest.parent(), dest.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(Error::Sync {
            path: dest.to_path_buf(),
            msg: "dest has no parent directory".into(),
        }),
    }
}

/// Takes the exclusive lock for `dest`, creating its parent if needed; waits (and
/// says so in the log) while another stretcher holds it. A signal ends the wait.
pub fn lock_dest(dest: &Path) -> Result<DestLock> {
    let path = lock_path(dest)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    let mut said = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if said {
                    logln!("got the lock {}", path.display());
                }
                return Ok(DestLock { _lock: lock, path });
            }
            Err((f, Errno::EWOULDBLOCK)) => {
                if !said {
                    logln!(
                        "waiting for the lock {}: another stretcher is deploying to {}",
                        path.display(),
                        dest.display()
                    );
                    said = true;
                }
                file = f;
                interrupt::sleep(Duration::from_millis(100))?;
            }
            Err((_, errno)) => {
                return Err(Error::io("lock", &path, std::io::Error::from(errno)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_sits_beside_dest() {
        assert_eq!(
            lock_path(Path::new("/srv/app")).unwrap(),
            Path::new("/srv/.app.stretcher.lock")
        );
        assert!(lock_path(Path::new("/")).is_err());
    }

    #[test]
    fn second_lock_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("app");
        let first = lock_dest(&dest).unwrap();
        let d2 = dest.clone();
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let _second = lock_dest(&d2).unwrap();
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let waited = t.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
    }
}
