//! Symlinks (the target written as the archive has it, never followed) and hard links
//! (to an earlier member below `into`, or to the unchanged file the probe found).
//!
//! Never follows a link: every node is reached through the staging tree's descriptor,
//! a symlink gets `fchownat` / `utimensat` with `AT_SYMLINK_NOFOLLOW`, a hard link is
//! made by `linkat` without `AT_SYMLINK_FOLLOW`, and a link target's parents must be
//! real directories.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::Result;

use super::super::errors::{fail, fail_io, refused};
use super::super::gnu::PaxInfo;
use super::super::path::link_target;
use super::files::link_from;
use super::{dkey, key, lstat_meta, set_attrs, Extractor};
use crate::entry::Entry;
use crate::fsops::Node;

impl Extractor<'_, '_> {
    pub(super) fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        pax: &PaxInfo,
        rel: &Path,
        raw: &[u8],
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| fail(raw, "symlink without a target"))?
            .into_owned();
        let meta = self.meta(entry, pax, raw)?;
        self.parents(rel, raw)?;
        let target = Path::new(OsStr::from_bytes(&target));
        match self.tree.symlink(target, rel) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, raw)?;
                self.tree.symlink(target, rel)
            }
            other => other,
        }
        .map_err(|e| fail_io(raw, "symlink", e))?;
        let node = Node::In(self.tree, rel);
        set_attrs(node, &meta.attrs(false, true)).map_err(|why| why.of(raw))?;
        let target = target.as_os_str().as_bytes();
        let tree = self.tree;
        self.note(rel, raw, || lstat_meta(tree, rel), Some(target))?;
        self.entries += 1;
        Ok(())
    }

    pub(super) fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        raw: &[u8],
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| fail(raw, "hard link without a target"))?;
        let (target, absolute) = link_target(&target).map_err(|r| refused(raw, r))?;
        if absolute {
            self.warn_absolute(raw);
        }
        if target == rel {
            // A link to itself: the file is already there.
            return Ok(());
        }
        self.check_parents(&target, raw)?;
        self.parents(rel, raw)?;
        // A link to a file kept where the probe found it (dest, not staged) is made to
        // that copy: the sync writes it as a file of its own (rsync -a has no -H).
        let kept = match self.kept_path(&target) {
            Some(kept) if !self.opts.link_unchanged => Some(kept),
            _ => None,
        };
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never its target.
        let link = |x: &Self| match &kept {
            Some(src) => {
                let probe = x.unchanged.as_deref().and_then(|p| p.tree());
                link_from(probe, src, x.tree, rel)
            }
            None => x.tree.hard_link(&target, x.tree, rel),
        };
        match link(self) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, raw)?;
                link(self)
            }
            other => other,
        }
        .map_err(|e| fail_io(raw, &format!("hard link to {target:?}"), e))?;
        self.hard_linked = true;
        // The same content as the target's (a regular file's digest with it).
        match self.digests.get(&dkey(&target)).copied() {
            Some(d) => self.digests.insert(dkey(rel), d),
            None => self.digests.remove(&dkey(rel)),
        };
        // The same inode as the target's (a link never changes what the index keeps).
        let linked = self.written.get(key(&target)).map(|l| Entry {
            path: key(rel).into(),
            meta: l.0.meta,
            target: l.0.target.clone(),
        });
        match linked {
            Some(entry) => self.list(entry),
            None => {
                let tree = self.tree;
                self.note(rel, raw, || lstat_meta(tree, rel), None)?
            }
        }
        self.entries += 1;
        Ok(())
    }
}
