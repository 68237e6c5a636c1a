//! Regular files: the [`Unchanged`](super::super::Unchanged) probe asked first, then
//! the size guard, then the file created `O_EXCL` and written — a sparse one with
//! holes seeked over — and its owner, mode and mtime set on the open handle. Every
//! file's content digest is computed from the bytes written (a sparse file's read
//! back, holes as zeros) for `Staged::digests`. A plain file of at most
//! [`JOB_MAX`] bytes (neither sparse nor judged against the probe's) is created
//! here, its data read whole, and the rest done by the writer thread (`writer`).
//!
//! A file the probe finds (size, mtime, mode, owner equal) is reused only when its
//! content is the entry's too (SPEC §21): the entry's data (up to `CONFIRM_BUF`) is
//! read into memory and hashed first, and compared with the probe's indexed digest,
//! else with the found file's own bytes; equal, it is left out (or hard-linked with
//! `link_unchanged`), else the held bytes are written as any file. A larger (or
//! sparse) one is written as it streams and judged after: equal, the staged copy is
//! removed and dest's left in place (with `link_unchanged` the staged copy stays).
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

use super::super::errors::{archive_error, corrupt, fail, fail_io};
use super::super::gnu::{chunk_start, sparse_layout, PaxInfo, Sparse};
use super::super::{FileAttrs, Found, KnownFile, UnpackOptions};
use super::writer::{Finished, Writer, JOB_MAX};
use super::{dkey, finished, key, set_attrs, Extractor, Meta, Sum};
use crate::at::Tree;
use crate::digest::{self, Digest, Hasher};
use crate::entry;
use crate::fsops::{Attrs, Node};

/// Buffer for copying file contents (one per unpack, reused for every file).
pub(super) const COPY_BUF: usize = 256 * 1024;

/// The most of a found file's data held in memory while it is judged.
pub(super) const CONFIRM_BUF: usize = 8 << 20;

/// The largest sparse file whose digest is computed (read back, holes as zeros):
/// hashing a hole costs as much as hashing data, and a 60 GB disk image with a few
/// blocks of data must stay cheap. A larger one has no digest; it is compared with
/// dest's copy by its data only (`digest::same_bytes`).
pub(super) const SPARSE_HASHED: u64 = 256 << 20;

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
        // The data read whole into `held` (a found file judged before it is written).
        let mut held: Option<Digest> = None;
        // A found file judged once written (too large to hold, or sparse).
        let mut judge_after: Option<Stat> = None;
        if let Some(found) = self.reuse(rel, size, meta) {
            let holdable = usize::try_from(size).is_ok_and(|n| n <= CONFIRM_BUF);
            if sparse.is_none() && holdable {
                let digest = self.hold(entry, size, raw)?;
                if self.same_as_found(rel, &found, &digest)
                    && self.keep(rel, raw, Found::from(&found), true)?
                {
                    self.digests.insert(dkey(rel), Sum::Now(digest));
                    return Ok(());
                }
                self.forget_reuse(rel);
                held = Some(digest);
            } else {
                judge_after = Some(found);
            }
        }
        // The size guard counts what is really written: a sparse file's data chunks.
        match &sparse {
            Some(s) => self.space.claim_chunks(&s.chunks, self.tree, self.opts)?,
            None => self.space.claim(size, self.tree, self.opts)?,
        }
        let mut file = self.create(rel, raw, meta.mode)?;
        // A file judged once written needs its digest now; any other is not hashed
        // when the stream checks its bytes against a digest it told (`told`), or when
        // its digest is the table's, read at the stream's end (`table_digests`).
        let told = (self.told.as_ref())
            .and_then(|t| t.get(key(rel)).copied())
            .filter(|_| judge_after.is_none());
        let unhashed = judge_after.is_none() && (told.is_some() || self.opts.digests_from_table);
        if sparse.is_none() && held.is_none() && judge_after.is_none() && size <= JOB_MAX {
            if let Some(mut w) = self.writer() {
                let done =
                    self.hand_over(&mut w, entry, file, rel, raw, size, meta, told, unhashed);
                self.writer = Some(w);
                return done;
            }
        }
        let digest = match (&sparse, held) {
            (_, Some(digest)) => {
                file.write_all(&self.held)
                    .map_err(|e| fail_io(raw, "write", e))?;
                Some(digest)
            }
            (None, None) if unhashed => {
                self.copy_data(entry, &mut file, size, raw, None)?;
                told
            }
            (None, None) => {
                let mut hasher = Hasher::default();
                self.copy_data(entry, &mut file, size, raw, Some(&mut hasher))?;
                Some(hasher.finish())
            }
            (Some(s), None) => {
                self.write_sparse(entry, &mut file, s, raw)?;
                if size <= SPARSE_HASHED {
                    self.read_back(rel, &file, raw)?
                } else {
                    None
                }
            }
        };
        if let Some(found) = judge_after {
            let same = match &digest {
                Some(d) => self.same_as_found(rel, &found, d),
                None => self.same_bytes_as_found(rel, &found),
            };
            if !self.opts.link_unchanged && same {
                // dest's copy holds these very bytes: it stays, the staged one goes.
                drop(file);
                self.tree
                    .unlink(rel)
                    .map_err(|e| fail_io(raw, "remove", e))?;
                if let Some(d) = digest {
                    self.digests.insert(dkey(rel), Sum::Now(d));
                }
                self.entries += 1;
                return Ok(());
            }
            self.forget_reuse(rel);
        }
        let attrs = self.file_attrs(meta);
        set_attrs(Node::Open(&file), &attrs).map_err(|why| why.of(raw))?;
        self.note(
            rel,
            raw,
            || file.metadata().map(|m| entry::Meta::from(&m)),
            None,
        )?;
        match digest {
            Some(d) => self.digests.insert(dkey(rel), Sum::Now(d)),
            None if sparse.is_none() && self.opts.digests_from_table => {
                self.digests.insert(dkey(rel), Sum::Table(size))
            }
            None => self.digests.remove(&dkey(rel)),
        };
        self.entries += 1;
        Ok(())
    }

    /// Owner → mode → mtime of a file just created with `meta.mode`.
    fn file_attrs(&self, meta: &Meta) -> Attrs {
        let mut attrs = meta.attrs(self.needs_chmod(meta.mode), false);
        if attrs.owner.is_some() && attrs.owner == self.creator {
            // Created with these ids already.
            attrs.owner = None;
        }
        attrs
    }

    /// The writer thread (`writer`), started when first asked for; taken out of the
    /// `Extractor` while it is used. `None` when it cannot run.
    fn writer(&mut self) -> Option<Writer> {
        if let Some(w) = self.writer.take() {
            return Some(w);
        }
        if self.writer_tried {
            return None;
        }
        self.writer_tried = true;
        Writer::start(self.tree.path())
    }

    /// The just created `file` handed to the writer thread with its data (read here
    /// whole), its attributes and whether to hash and list it; its digest recorded
    /// here when it needs no hashing (see `file`).
    #[allow(clippy::too_many_arguments)]
    fn hand_over(
        &mut self,
        w: &mut Writer,
        entry: &mut impl Read,
        file: fs::File,
        rel: &Path,
        raw: &[u8],
        size: u64,
        meta: &Meta,
        told: Option<Digest>,
        unhashed: bool,
    ) -> Result<()> {
        // `size` is at most `JOB_MAX`.
        let mut data = w.buffer(usize::try_from(size).unwrap_or(0));
        let mut got = 0;
        while got < data.len() {
            match entry.read(&mut data[got..]) {
                Ok(0) => return Err(truncated(self.opts, raw, size - got as u64)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(corrupt(self.opts, e)),
            }
        }
        let attrs = self.file_attrs(meta);
        match told {
            Some(d) => self.digests.insert(dkey(rel), Sum::Now(d)),
            None if unhashed => self.digests.insert(dkey(rel), Sum::Table(size)),
            // The writer's, when it has hashed the file.
            None => None,
        };
        self.entries += 1;
        let stat = self.listing();
        let (written, digests) = (&mut self.written, &mut self.digests);
        let mut record = |f: Finished| finished(written, digests, f);
        w.send(
            rel.to_path_buf(),
            file,
            data,
            attrs,
            raw,
            !unhashed,
            stat,
            &mut record,
        )
    }

    /// Room for `n` files to [`adopt`](Self::adopt), reserved at once.
    pub(in super::super) fn reserve_adopted(&mut self, n: usize) {
        self.reused.reserve_adopted(n);
        self.adopted_digests.reserve_exact(n + self.digests.len());
    }

    /// A file whose data the stream leaves out because the caller knows the probe's
    /// tree holds it (`KnownFile`): listed as an unchanged file the probe found is
    /// (left out, or linked), its digest the known one. The probe is not asked again
    /// (the caller's judgement was its `find`): a change in its tree since is caught
    /// by the sync's plan against dest's walk, and a link is kept only when it is
    /// still the file `found` saw (else the unpack fails, naming it). Nothing of the
    /// stream has its path (the caller's table has each path once), so staging holds
    /// nothing there to replace.
    pub(in super::super) fn adopt(&mut self, known: KnownFile) -> Result<()> {
        let KnownFile {
            rel,
            attrs,
            digest,
            found,
        } = known;
        let raw = key(&rel);
        let changed = || {
            fail(
                raw,
                "changed in the tree it was found in while the deploy ran",
            )
        };
        if self.unchanged.is_none() {
            return Err(changed());
        }
        // The path's key, hashed once for both lists.
        let k = dkey(&rel);
        self.reused.adopt(&rel, k, attrs);
        // Left out, it needs no directory in staging (the caller may list its
        // directories apart: `Staged::listed_dirs`); a link does.
        if self.opts.link_unchanged {
            self.parents(&rel, raw)?;
        }
        let kept = match found {
            Some(found) => self.keep(&rel, raw, found, false)?,
            // Left out, not linked: nothing reads what the probe saw (as `keep`).
            None if !self.opts.link_unchanged => {
                self.entries += 1;
                true
            }
            None => false,
        };
        if !kept {
            return Err(changed());
        }
        self.adopted_digests.push((k, digest));
        Ok(())
    }

    /// Reads the entry's `size` bytes of data whole into `held`, and answers their
    /// digest.
    fn hold(&mut self, entry: &mut impl Read, size: u64, raw: &[u8]) -> Result<Digest> {
        // `size` fits `CONFIRM_BUF` (checked by the caller).
        let len = usize::try_from(size)
            .unwrap_or(CONFIRM_BUF)
            .min(CONFIRM_BUF);
        let mut held = std::mem::take(&mut self.held);
        held.clear();
        let read = entry.take(size).read_to_end(&mut held);
        let got = held.len();
        let digest = {
            let mut h = Hasher::default();
            h.update(&held);
            h.finish()
        };
        self.held = held;
        read.map_err(|e| corrupt(self.opts, e))?;
        if got < len {
            return Err(archive_error(
                self.opts,
                format!(
                    "truncated in member \"{}\": the stream ends {} bytes before the end of its data",
                    shown(raw),
                    len - got
                ),
            ));
        }
        Ok(digest)
    }

    /// Whether the file the probe found for `rel` (its lstat `found`) holds the bytes
    /// whose digest is `digest`: by the probe's indexed digest, else by reading the
    /// file (the very inode the probe saw, through its tree). Any doubt: false.
    fn same_as_found(&mut self, rel: &Path, found: &Stat, digest: &Digest) -> bool {
        let Some(probe) = self.unchanged.as_deref() else {
            return false;
        };
        if let Some(known) = probe.digest(rel, found) {
            return known == *digest;
        }
        let Some(at) = self.kept_path(rel) else {
            return false;
        };
        let Ok(mut f) = probe.open(&at) else {
            return false;
        };
        let same_inode = rustix::fs::fstat(&f).is_ok_and(|st| {
            (st.st_dev, st.st_ino, st.st_size) == (found.st_dev, found.st_ino, found.st_size)
        });
        same_inode && digest::of_reader(&mut f, &mut self.buf).is_ok_and(|d| d == *digest)
    }

    /// Whether the file the probe found for `rel` (its lstat `found`) holds the bytes
    /// just written to staging at `rel` (a sparse file without a digest: compared by
    /// its data, holes skipped). Any doubt: false.
    fn same_bytes_as_found(&self, rel: &Path, found: &Stat) -> bool {
        let (Some(probe), Some(at)) = (self.unchanged.as_deref(), self.kept_path(rel)) else {
            return false;
        };
        let (Ok(theirs), Ok(ours)) = (probe.open(&at), self.tree.open_file(rel)) else {
            return false;
        };
        let same_inode = rustix::fs::fstat(&theirs)
            .is_ok_and(|st| (st.st_dev, st.st_ino) == (found.st_dev, found.st_ino));
        same_inode && digest::same_bytes(&ours, &theirs).unwrap_or(false)
    }

    /// The probe's find for `rel` is not used after all: the entry is written.
    fn forget_reuse(&mut self, rel: &Path) {
        self.reused.remove(rel);
        self.kept_at.remove(rel);
    }

    /// The digest of the file just written at `rel` (`file`, its handle), read back
    /// through the tree: a sparse file's holes read as zeros.
    fn read_back(&mut self, rel: &Path, file: &fs::File, raw: &[u8]) -> Result<Option<Digest>> {
        let mut back = self
            .tree
            .open_file(rel)
            .map_err(|e| fail_io(raw, "open", e))?;
        let (a, b) = (
            rustix::fs::fstat(file).map_err(|e| fail_io(raw, "stat", e.into()))?,
            rustix::fs::fstat(&back).map_err(|e| fail_io(raw, "stat", e.into()))?,
        );
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(fail_io(
                raw,
                "read back",
                io::Error::other("replaced while it was written"),
            ));
        }
        digest::of_reader(&mut back, &mut self.buf)
            .map(Some)
            .map_err(|e| fail_io(raw, "read back", e))
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
        self.reused.insert(rel, attrs);
        // Only where the probe found it elsewhere than at `rel` (see `kept_path`).
        if at != rel {
            self.kept_at.insert(rel.to_path_buf(), at);
        }
        Some(found)
    }

    /// A file the probe found unchanged: left out of staging (or, `link_unchanged`,
    /// hard-linked there). True when that is done; false when the link could not be
    /// made and the entry is to be written after all.
    /// `found` is the probe's lstat of the unchanged file; `maybe_staged`: an earlier
    /// member of the stream may have had this path.
    fn keep(&mut self, rel: &Path, raw: &[u8], found: Found, maybe_staged: bool) -> Result<bool> {
        // An earlier member of the same name may have been written: the later one
        // wins, so staging must not keep it (a link replaces it: `link_reused`).
        if maybe_staged && !self.opts.link_unchanged && self.tree.lstat(rel).is_ok() {
            self.remove_existing(rel, raw)?;
        }
        // The entry's data is skipped by the parser (still read, so a cut stream
        // is still noticed).
        if !self.opts.link_unchanged {
            // Left out of staging: not listed.
            self.entries += 1;
            return Ok(true);
        }
        if self.link_reused(rel, raw, &found)? {
            // A link shares the inode the probe read.
            self.note(rel, raw, || Ok(found.meta), None)?;
            self.entries += 1;
            return Ok(true);
        }
        self.forget_reuse(rel);
        Ok(false)
    }

    /// `link_unchanged`: hard-links the reused file to `rel` in staging. False when
    /// the link cannot be made (EXDEV, EMLINK, ...) or is not the inode the probe saw
    /// (`found`, with the attributes it had then): then the entry is written instead.
    fn link_reused(&mut self, rel: &Path, raw: &[u8], found: &Found) -> Result<bool> {
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
        // The probe looked by name: the link must be the very file it judged, as it
        // judged it (not changed in place since).
        let st = self.tree.lstat(rel).map_err(|e| fail_io(raw, "stat", e))?;
        if Found::from(&st) != *found {
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
            self.copy_data(entry, file, len, raw, None)?;
            used = start + len;
        }
        Ok(())
    }

    /// Copies exactly `len` bytes of the entry's data into `file`, each into `hasher`
    /// too when given.
    fn copy_data(
        &mut self,
        entry: &mut impl Read,
        file: &mut fs::File,
        len: u64,
        raw: &[u8],
        mut hasher: Option<&mut Hasher>,
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
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&self.buf[..n]);
            }
            left -= n as u64;
        }
        if left > 0 {
            return Err(truncated(self.opts, raw, left));
        }
        Ok(())
    }
}

/// A member whose data the stream ends `left` bytes short of.
fn truncated(opts: &UnpackOptions, raw: &[u8], left: u64) -> crate::Error {
    archive_error(
        opts,
        format!(
            "truncated in member \"{}\": the stream ends {left} bytes before the end of its data",
            shown(raw)
        ),
    )
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
