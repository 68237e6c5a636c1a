//! Fifos and device nodes: made by `mknod` when running as root (owners preserved),
//! skipped with a line in the log otherwise, as GNU tar does for a user.
//!
//! Never changes a node it did not just create.

use std::io::{self, Read};
use std::path::Path;

use tar::EntryType;

use crate::fsops::Node;
use crate::log::shown;
use crate::Result;

use super::super::errors::{fail_from, fail_io};
use super::super::gnu::PaxInfo;
use super::{lstat_meta, set_attrs, Extractor, Meta};

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
        use nix::sys::stat::{makedev, SFlag};
        self.parents(rel, raw)?;
        let sflag = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let dev = if sflag == SFlag::S_IFIFO {
            0
        } else {
            let major = h
                .device_major()
                .map_err(|e| fail_from(raw, e.to_string(), e))?;
            let minor = h
                .device_minor()
                .map_err(|e| fail_from(raw, e.to_string(), e))?;
            makedev(major.unwrap_or(0).into(), minor.unwrap_or(0).into())
        };
        // The permission bits less the umask from the start (the chmod after it is
        // skipped when the umask took nothing).
        let make = |x: &Self| x.tree.mknod(rel, sflag.bits(), meta.mode & 0o777, dev);
        match make(self) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, raw)?;
                make(self)
            }
            other => other,
        }
        .map_err(|e| fail_io(raw, "mknod", e))?;
        // Just created by mknod, and changed through the tree (the mode by an `O_PATH`
        // descriptor): never another node.
        let attrs = meta.attrs(self.needs_chmod(meta.mode), true);
        set_attrs(Node::In(self.tree, rel), &attrs).map_err(|why| why.of(raw))?;
        let tree = self.tree;
        self.note(rel, raw, || lstat_meta(tree, rel), None)?;
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
