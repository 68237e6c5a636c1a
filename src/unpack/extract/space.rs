//! The size guard: a file whose content would take the bytes written so far past the
//! free space of the staging filesystem (less `SPACE_RESERVE`) is refused before it is
//! created — a decompression bomb or a full disk fails here, cleanly.
//!
//! Never writes; reads the filesystem's size once, when the unpack starts.

use crate::at::Tree;
use crate::Result;

use super::super::errors::archive_error;
use super::super::UnpackOptions;

/// Free space the size guard leaves on the staging filesystem (directories, metadata,
/// and whatever else runs there).
const SPACE_RESERVE: u64 = 1 << 20;

pub(super) struct Space {
    /// (bytes available to unprivileged users, fragment size) of the staging
    /// filesystem when the unpack started; `None`: not guarded.
    space: Option<(u64, u64)>,
    /// The bytes of file content written so far, each file rounded up to whole
    /// fragments.
    to_write: u64,
}

impl Space {
    /// The guard of the filesystem holding `into` (`fstatvfs` of its descriptor).
    pub(super) fn new(into: &Tree) -> Self {
        Space {
            space: free_space(into),
            to_write: 0,
        }
    }

    /// Counts a file of `size` bytes, refused when it does not fit.
    pub(super) fn claim(&mut self, size: u64, into: &Tree, opts: &UnpackOptions) -> Result<()> {
        let Some((free, frsize)) = self.space else {
            return Ok(());
        };
        self.to_write = self
            .to_write
            .saturating_add(size.div_ceil(frsize).saturating_mul(frsize));
        if self.to_write > free.saturating_sub(SPACE_RESERVE) {
            let fs = into.path().parent().unwrap_or(into.path());
            return Err(archive_error(
                opts,
                format!(
                    "not enough space on the filesystem of {}: the archive needs more than \
                     {} bytes, {free} free ({SPACE_RESERVE} kept in reserve)",
                    fs.display(),
                    self.to_write
                ),
            ));
        }
        Ok(())
    }

    /// Counts a sparse file by what is really written: its data chunks
    /// (offset, length), each rounded up to whole fragments.
    pub(super) fn claim_chunks(
        &mut self,
        chunks: &[(u64, u64)],
        into: &Tree,
        opts: &UnpackOptions,
    ) -> Result<()> {
        let (frsize, mut total) = (self.space.map_or(1, |(_, f)| f), 0u64);
        for &(_, len) in chunks {
            total = total.saturating_add(len.div_ceil(frsize).saturating_mul(frsize));
        }
        self.claim(total, into, opts)
    }
}

/// (bytes available to unprivileged users, fragment size) of the filesystem holding
/// `dir`: `f_bavail * f_frsize`. `None` when unknown, or when the filesystem reports
/// no size at all (some FUSE ones): such a filesystem is not guarded.
fn free_space(dir: &Tree) -> Option<(u64, u64)> {
    let v = rustix::fs::fstatvfs(dir.fd()).ok()?;
    if v.f_blocks == 0 {
        return None;
    }
    let frsize = v.f_frsize.max(1);
    let free = v.f_bavail.saturating_mul(frsize);
    Some((free, frsize))
}
