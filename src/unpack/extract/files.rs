//! Regular files: the [`Unchanged`](super::super::Unchanged) probe asked first (a file
//! it finds is left out, or hard-linked with `link_unchanged`), then the size guard,
//! then the file created `O_EXCL` and written — a sparse one with holes seeked over —
//! and its owner, mode and mtime set on the open handle.
//!
//! Never opens through an existing path: `O_CREAT | O_EXCL | O_NOFOLLOW` relative to
//! the staging tree on create, a replaced earlier member is removed first; an unchanged
//! file is linked from the probe's tree (or checked to be the inode the probe saw).

use rustix::fs::Stat;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use rustix::fs::{AtFlags, CWD};

use crate::log::shown;
use crate::Result;

use super::super::errors::{archive_error, corrupt, fail_io};
use super::super::gnu::{chunk_start, sparse_layout, PaxInfo, Sparse};
use super::super::FileAttrs;
use super::{set_attrs, Extractor, Meta};
use crate::at::Tree;
use crate::entry;
use crate::fsops::Node;

/// Buffer for copying file contents (one per unpack, reused for every file).
pub(super) const COPY_BUF: usize = 256 * 1024;

impl Extractor<'_, '_> {
    pub(super) fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pax: &PaxInfo,
        rel: &Path,
        raw: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        self.parents(rel, raw)?;
        let sparse = sparse_layout(entry, pax, raw)?;
        // The file's size as tar extracts it: a sparse member's logical size.
        let size = sparse.as_ref().map_or(entry.size(), |s| s.size);
        if let Some(found) = self.reuse(rel, size, meta) {
            if self.keep(rel, raw, found)? {
                return Ok(());
            }
        }
        // The size guard counts what is really written: a sparse file's data chunks.
        match &sparse {
            Some(s) => self.space.claim_chunks(&s.chunks, self.tree, self.opts)?,
            None => self.space.claim(size, self.tree, self.opts)?,
        }
        let mut file = self.create(rel, raw, meta.mode)?;
        match &sparse {
            None => self.copy_data(entry, &mut file, size, raw)?,
            Some(s) => self.write_sparse(entry, &mut file, s, raw)?,
        }
        let attrs = meta.attrs(self.needs_chmod(meta.mode), false);
        set_attrs(Node::Open(&file), &attrs).map_err(|why| why.of(raw))?;
        self.note(
            rel,
            raw,
            || file.metadata().map(|m| entry::Meta::from(&m)),
            None,
        )?;
        self.entries += 1;
        Ok(())
    }

    /// Lists `rel` as kept (not written) when the [`Unchanged`](super::super::Unchanged)
    /// probe finds it as the entry has it; answers the probe's lstat of it.
    fn reuse(&mut self, rel: &Path, size: u64, meta: &Meta) -> Option<Stat> {
        let probe = self.unchanged.as_deref_mut()?;
        let attrs = FileAttrs {
            size,
            mtime: meta.mtime.unix_seconds(),
            mode: meta.mode,
            owner: meta.owner,
        };
        let (at, found) = probe.find(rel, &attrs)?;
        self.reused.insert(rel.to_path_buf(), attrs);
        // Only where the probe found it elsewhere than at `rel` (see `kept_path`).
        if at != rel {
            self.kept_at.insert(rel.to_path_buf(), at);
        }
        Some(found)
    }

    /// A file the probe found unchanged: left out of staging (or, `link_unchanged`,
    /// hard-linked there). True when that is done; false when the link could not be
    /// made and the entry is to be written after all.
    /// `found` is the probe's lstat of the unchanged file.
    fn keep(&mut self, rel: &Path, raw: &[u8], found: Stat) -> Result<bool> {
        // An earlier member of the same name may have been written: the later one
        // wins, so staging must not keep it (a link replaces it: `link_reused`).
        if !self.opts.link_unchanged && self.tree.lstat(rel).is_ok() {
            self.remove_existing(rel, raw)?;
        }
        // The entry's data is skipped by the parser (still read, so a cut stream
        // is still noticed).
        if !self.opts.link_unchanged || self.link_reused(rel, raw, &found)? {
            // A link shares the inode the probe read.
            self.note(rel, raw, || Ok(entry::Meta::from(&found)), None)?;
            self.entries += 1;
            return Ok(true);
        }
        self.reused.remove(rel);
        self.kept_at.remove(rel);
        Ok(false)
    }

    /// `link_unchanged`: hard-links the reused file to `rel` in staging. False when
    /// the link cannot be made (EXDEV, EMLINK, ...) or is not the inode the probe saw
    /// (`found`): then the entry is written instead.
    fn link_reused(&mut self, rel: &Path, raw: &[u8], found: &Stat) -> Result<bool> {
        // Taken out: only this link needs it (`hard_link` uses it without link_unchanged).
        let Some(src) = self.kept_path(rel) else {
            return Ok(false);
        };
        self.kept_at.remove(rel);
        let probe = self.unchanged.as_deref().and_then(|p| p.tree());
        let linked = match link_from(probe, &src, self.tree, rel) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, raw)?;
                let probe = self.unchanged.as_deref().and_then(|p| p.tree());
                link_from(probe, &src, self.tree, rel)
            }
            other => other,
        };
        if linked.is_err() {
            return Ok(false);
        }
        // The probe looked by name: the link must be the very file it judged.
        let st = self.tree.lstat(rel).map_err(|e| fail_io(raw, "stat", e))?;
        if (st.st_dev, st.st_ino) != (found.st_dev, found.st_ino) {
            self.tree
                .unlink(rel)
                .map_err(|e| fail_io(raw, "remove", e))?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Creates the file new (`O_EXCL | O_NOFOLLOW` through the tree), with `mode`
    /// (less the umask until the chmod).
    fn create(&mut self, rel: &Path, raw: &[u8], mode: u32) -> Result<fs::File> {
        match self.tree.create_new(rel, mode) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, raw)?;
                self.tree.create_new(rel, mode)
            }
            other => other,
        }
        .map_err(|e| fail_io(raw, "create", e))
    }

    /// A sparse member's chunks as GNU tar writes them, in map order: each chunk's data
    /// (read from the next block boundary of the member's data) at its offset, holes
    /// seeked over, never written; a chunk of length 0 truncates the file there.
    fn write_sparse(
        &mut self,
        entry: &mut impl Read,
        file: &mut fs::File,
        sparse: &Sparse,
        raw: &[u8],
    ) -> Result<()> {
        let mut used = 0u64;
        for &(offset, len) in &sparse.chunks {
            if len == 0 {
                file.set_len(offset)
                    .map_err(|e| fail_io(raw, "set length", e))?;
                continue;
            }
            // `sparse_layout` checked that every chunk's start fits the member.
            let start = chunk_start(used).unwrap_or(used);
            io::copy(&mut entry.take(start - used), &mut io::sink())
                .map_err(|e| corrupt(self.opts, e))?;
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| fail_io(raw, "seek", e))?;
            self.copy_data(entry, file, len, raw)?;
            used = start + len;
        }
        Ok(())
    }

    /// Copies exactly `len` bytes of the entry's data into `file`.
    fn copy_data(
        &mut self,
        entry: &mut impl Read,
        file: &mut fs::File,
        len: u64,
        raw: &[u8],
    ) -> Result<()> {
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match entry.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(self.opts, e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| fail_io(raw, "write", e))?;
            left -= n as u64;
        }
        if left > 0 {
            return Err(archive_error(
                self.opts,
                format!(
                    "truncated in member \"{}\": the stream ends {left} bytes before the end of its data",
                    shown(raw)
                ),
            ));
        }
        Ok(())
    }
}

/// A hard link at `rel` in `tree` to the file the [`Unchanged`](super::super::Unchanged) probe answered as
/// `src`: through the probe's own tree when it has one (no symlink followed on either
/// side), else from the path `src` (`linkat` without `AT_SYMLINK_FOLLOW`: the probe saw
/// a regular file, never a symlink) into `tree`'s descriptor.
pub(super) fn link_from(
    probe: Option<&Tree>,
    src: &Path,
    tree: &Tree,
    rel: &Path,
) -> io::Result<()> {
    match probe {
        Some(from) => from.hard_link(src, tree, rel),
        None => tree.at(rel, |d, n| {
            rustix::fs::linkat(CWD, src, d, n, AtFlags::empty())
        }),
    }
}
