//! Fifos and device nodes: made by `mknod` when running as root (owners preserved),
//! skipped with a line in the log otherwise, as GNU tar does for a user.
//!
//! Never changes a node it did not just create.

use std::fs::{self, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tar::EntryType;

use crate::log::shown;
use crate::Result;

use super::super::errors::fail;
use super::super::gnu::PaxInfo;
use super::{Extractor, Meta};

impl Extractor<'_, '_> {
    /// A fifo or device node entry (`kind`: `Fifo`, `Char` or `Block`).
    pub(super) fn special<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        pax: &PaxInfo,
        kind: EntryType,
        rel: &Path,
        raw: &[u8],
    ) -> Result<()> {
        if !self.opts.same_owner {
            crate::logln!(
                "archive {}: skipping {} \"{}\": device nodes and fifos are created only when running as root",
                self.opts.label,
                type_name(kind),
                shown(raw)
            );
            return Ok(());
        }
        let meta = self.meta(entry, pax, raw)?;
        self.mknod(entry.header(), kind, rel, raw, &meta)
    }

    /// Makes the node (only called when running as root).
    fn mknod(
        &mut self,
        h: &tar::Header,
        kind: EntryType,
        rel: &Path,
        raw: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        self.parents(rel, raw)?;
        let abs = self.into.join(rel);
        let sflag = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let dev = if sflag == SFlag::S_IFIFO {
            0
        } else {
            let major = h.device_major().map_err(|e| fail(raw, format!("{e}")))?;
            let minor = h.device_minor().map_err(|e| fail(raw, format!("{e}")))?;
            makedev(major.unwrap_or(0).into(), minor.unwrap_or(0).into())
        };
        let perm = Mode::from_bits_truncate(meta.mode & 0o777);
        let make = |abs: &Path| mknod(abs, sflag, perm, dev).map_err(io::Error::from);
        match make(&abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                make(&abs)
            }
            other => other,
        }
        .map_err(|e| fail(raw, format!("mknod: {e}")))?;
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::lchown(&abs, Some(uid), Some(gid))
                .map_err(|e| fail(raw, format!("chown: {e}")))?;
        }
        if self.needs_chmod(meta.mode) {
            // Just created by mknod, so not a symlink: chmod cannot be redirected.
            fs::set_permissions(&abs, Permissions::from_mode(meta.mode))
                .map_err(|e| fail(raw, format!("chmod: {e}")))?;
        }
        filetime::set_symlink_file_times(&abs, meta.mtime, meta.mtime)
            .map_err(|e| fail(raw, format!("set mtime: {e}")))?;
        self.note(rel, raw, || fs::symlink_metadata(&abs), None)?;
        self.entries += 1;
        Ok(())
    }
}

fn type_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Fifo => "fifo",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        _ => "special file",
    }
}
