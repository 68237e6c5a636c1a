//! Symlinks (the target written as the archive has it, never followed) and hard links
//! (to an earlier member below `into`, or to the unchanged file the probe found).
//!
//! Never follows a link: a symlink gets `lchown` / `lutimes`, a hard link is made by
//! `linkat` without `AT_SYMLINK_FOLLOW`, and a link target's parents must be real
//! directories.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::Result;

use super::super::errors::{fail, fail_io, refused};
use super::super::gnu::PaxInfo;
use super::super::path::link_target;
use super::{key, set_attrs, Extractor};
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
        let abs = self.into.join(rel);
        let target = OsStr::from_bytes(&target);
        match std::os::unix::fs::symlink(target, &abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                std::os::unix::fs::symlink(target, &abs)
            }
            other => other,
        }
        .map_err(|e| fail_io(raw, "symlink", e))?;
        set_attrs(Node::At(&abs), &meta.attrs(false, true)).map_err(|why| why.of(raw))?;
        let stat = || fs::symlink_metadata(&abs);
        self.note(rel, raw, stat, Some(target.as_bytes()))?;
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
        let src = match self.kept_at.get(&target) {
            Some(kept) if !self.opts.link_unchanged => kept.clone(),
            _ => self.into.join(&target),
        };
        let abs = self.into.join(rel);
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never its target.
        let link = |src: &Path, abs: &Path| {
            nix::unistd::linkat(None, src, None, abs, nix::fcntl::AtFlags::empty())
                .map_err(io::Error::from)
        };
        match link(&src, &abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                link(&src, &abs)
            }
            other => other,
        }
        .map_err(|e| fail_io(raw, &format!("hard link to {target:?}"), e))?;
        // The same inode as the target's (a link never changes what the index keeps).
        let linked = self.written.get(key(&target)).map(|l| Entry {
            path: key(rel).into(),
            meta: l.0.meta,
            target: l.0.target.clone(),
        });
        match linked {
            Some(entry) => self.list(entry),
            None => self.note(rel, raw, || fs::symlink_metadata(&abs), None)?,
        }
        self.entries += 1;
        Ok(())
    }
}
