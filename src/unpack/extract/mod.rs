//! The `Extractor`: writes one entry at a time below `into`, and the directory fixes
//! once the stream is known to be good. This file reads an entry's type, path and
//! metadata and hands it to the job that writes it:
//! - `files` — regular and sparse files, and the [`Unchanged`] probe asked first;
//! - `space` — the size guard against the staging filesystem's free space;
//! - `dirs` — directories, the parents an entry needs, the deferred directory fixes;
//! - `links` — symlinks and hard links;
//! - `special` — fifos and device nodes;
//! - `owners` — user / group names → ids, cached per unpack;
//! - `writer` — files finished (written, hashed, their attributes set, listed) on a
//!   thread of their own, outcomes recorded in archive order.
//!
//! Never creates, changes or follows anything outside `into`, and never writes
//! through a symlink: `into` is an open [`Tree`], every node is reached relative to its
//! descriptor with no symlink followed on the way (also one swapped in while the unpack
//! runs), every parent is a directory it created or checked, every node is created new
//! (a replaced earlier member removed first).

mod dirs;
mod files;
mod links;
mod owners;
mod space;
mod special;
mod writer;

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;
use rustix::fs::FileType;
use tar::EntryType;

use crate::at::{Owner, Tree};
use crate::digest::{Digest, Digests, PathKey};
use crate::entry::Entry;
use crate::fsops::{self, Attrs, Node, Step};
use crate::log::shown;
use crate::Result;

use self::dirs::DirFix;
use self::owners::Owners;
use self::space::Space;
use super::errors::{fail_io, refused, Why};
use super::gnu::{check_global_header, header_mtime, member_kind, member_name, PaxInfo};
use super::path::entry_path;
use super::reused;
use super::{Staged, Unchanged, UnpackOptions};

/// Metadata an entry carries for the node it creates.
struct Meta {
    mode: u32,
    mtime: FileTime,
    owner: Option<(u32, u32)>,
}

impl Meta {
    /// The owner → mode → mtime of the node just made for the entry: the mode only when
    /// `chmod` (see `Extractor::needs_chmod`), the atime set to the mtime when
    /// `atime_too` (symlinks and special nodes).
    fn attrs(&self, chmod: bool, atime_too: bool) -> Attrs {
        let mtime = Some(seconds(self.mtime));
        Attrs {
            owner: self.owner,
            mode: chmod.then_some(self.mode),
            mtime,
            atime: if atime_too { mtime } else { None },
        }
    }
}

/// A `FileTime` as the seconds and nanoseconds [`Attrs`] takes.
fn seconds(t: FileTime) -> (i64, u32) {
    (t.unix_seconds(), t.nanoseconds())
}

/// A node of `Staged::written` while the unpack runs, found by its path (a later
/// member replaces it; a hard link copies it).
#[derive(Debug)]
struct Listed(Entry);

impl PartialEq for Listed {
    fn eq(&self, other: &Self) -> bool {
        self.0.path == other.0.path
    }
}

impl Eq for Listed {}

impl Hash for Listed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.path.hash(state);
    }
}

impl Borrow<[u8]> for Listed {
    fn borrow(&self) -> &[u8] {
        &self.0.path
    }
}

/// The bytes of a relative path (the key of `Extractor::written`).
fn key(rel: &Path) -> &[u8] {
    rel.as_os_str().as_bytes()
}

/// A written file's digest in `Extractor::digests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sum {
    /// Computed from the bytes written.
    Now(Digest),
    /// Not computed (`digests_from_table`): the table's, for a file of this size.
    Table(u64),
    /// The table's.
    Told(Digest),
    /// The table describes the file twice, or not as written: no digest.
    Doubt,
}

/// The key of a relative path in `Extractor::digests`.
fn dkey(rel: &Path) -> PathKey {
    crate::digest::path_key(key(rel))
}

/// Owner → mode → mtime on a node the unpack just made ([`fsops::apply`]), a failure
/// told as the step's cause (`step_name`), its io error kept.
fn set_attrs(node: Node<'_>, attrs: &Attrs) -> std::result::Result<(), Why> {
    fsops::apply(node, attrs).map_err(|(step, e)| Why::io(step_name(step), e))
}

/// The unpack's words for a failed step: `chown: …`, `chmod: …`, `set mtime: …`.
fn step_name(step: Step) -> &'static str {
    match step {
        Step::Owner => "chown",
        Step::Mode => "chmod",
        Step::Times => "set mtime",
    }
}

pub(super) struct Extractor<'a, 'u> {
    /// The staging directory, open: every path below is relative to it.
    tree: &'a Tree,
    opts: &'a UnpackOptions,
    unchanged: Option<&'u mut dyn Unchanged>,
    buf: Vec<u8>,
    /// Relative paths known to be real directories (never symlinks) below `into`:
    /// created or checked by us, so parents need no syscall to be trusted.
    dirs: HashSet<PathBuf>,
    /// Directory modes / mtimes / owners applied at the end, deepest first; keyed by
    /// relative path (empty = `into` itself), a later duplicate entry wins.
    fixes: HashMap<PathBuf, DirFix>,
    /// The process umask if known; `None` means "always chmod explicitly".
    umask: Option<u32>,
    owners: Owners,
    /// The owner and group every node this unpack creates gets (this process's
    /// effective ids: the staging root has them, so no setgid directory or `grpid`
    /// mount hands a node another group, as the unpack makes no directory setgid
    /// before `fix_dirs`); `None` when the root has others. An owner to set that is
    /// this one needs no `chown`.
    creator: Option<(u32, u32)>,
    /// The digests of files whose bytes the stream itself checks against them as
    /// they pass (`unpack_known`): such a file is not hashed again.
    pub(super) told: Option<Digests>,
    warned_absolute: bool,
    root_mode: Option<u32>,
    entries: u64,
    reused: reused::Building,
    /// Where a reused file is (the probe's answer), for hard links to it, when that
    /// is not its own path (a probe of dest or the live release answers that: then
    /// nothing is kept here, see [`Extractor::kept_path`]).
    kept_at: HashMap<PathBuf, PathBuf>,
    /// `Staged::written` (kept only with `link_unchanged` or `list_written`, see
    /// [`Extractor::listing`]), by path.
    written: HashSet<Listed>,
    /// A hard link was made: without `link_unchanged`, nothing is listed.
    hard_linked: bool,
    /// `Staged::digests`, by the path's key ([`dkey`]): every regular file written
    /// or reused (a key, not a copy of the path: 100,000 files are 6 MB less).
    digests: HashMap<PathKey, Sum>,
    /// The digests of the adopted files (`adopt`), listed after `digests`: each path
    /// once and none of the stream's, so a vector.
    adopted_digests: Vec<(PathKey, Digest)>,
    /// The data of a file the probe found, read whole before it is judged (allocated
    /// when first needed, reused for every file, at most `files::CONFIRM_BUF`).
    held: Vec<u8>,
    space: Space,
    /// Files finished on a thread of their own (`writer`), once started; out of
    /// here while it is used.
    writer: Option<writer::Writer>,
    /// Whether it was started (or could not be).
    writer_tried: bool,
    /// The journal's commit, once the stream's files are written.
    commit: Option<Commit>,
}

impl<'a, 'u> Extractor<'a, 'u> {
    pub(super) fn new(
        tree: &'a Tree,
        opts: &'a UnpackOptions,
        unchanged: Option<&'u mut dyn Unchanged>,
    ) -> Self {
        Extractor {
            tree,
            opts,
            unchanged,
            buf: vec![0; files::COPY_BUF],
            dirs: HashSet::new(),
            fixes: HashMap::new(),
            umask: current_umask(),
            owners: Owners::default(),
            creator: creator(tree),
            told: None,
            warned_absolute: false,
            root_mode: None,
            entries: 0,
            reused: reused::Building::default(),
            kept_at: HashMap::new(),
            written: HashSet::new(),
            hard_linked: false,
            digests: HashMap::new(),
            adopted_digests: Vec::new(),
            held: Vec::new(),
            space: Space::new(tree),
            writer: None,
            writer_tried: false,
            commit: None,
        }
    }

    /// Where the reused file at `rel` is (the probe's answer), if `rel` is reused.
    fn kept_path(&self, rel: &Path) -> Option<PathBuf> {
        match self.kept_at.get(rel) {
            Some(at) => Some(at.clone()),
            None => self.reused.contains(rel).then(|| rel.to_path_buf()),
        }
    }

    pub(super) fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // pax global header (git archive puts the commit id there): nothing to
            // write, but a malformed record fails as it fails GNU tar.
            return check_global_header(entry, self.opts);
        }
        let pax = PaxInfo::read(entry, self.opts)?;
        let raw = member_name(entry, &pax);
        let path = entry_path(&raw).map_err(|r| refused(&raw, r))?;
        if path.absolute {
            self.warn_absolute(&raw);
        }
        let kind = member_kind(kind, &raw);
        let rel = path.rel;
        if !self.reused.is_empty() {
            // A later entry for the same path replaces the one found unchanged.
            self.reused.remove(&rel);
            self.kept_at.remove(&rel);
        }
        if rel.as_os_str().is_empty() {
            return self.root(entry, &pax, kind, &raw);
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let meta = self.meta(entry, &pax, &raw)?;
                self.file(entry, &pax, &rel, &raw, &meta)
            }
            EntryType::Directory => {
                let meta = self.meta(entry, &pax, &raw)?;
                self.dir(&rel, &raw, meta)
            }
            EntryType::Symlink => self.symlink(entry, &pax, &rel, &raw),
            EntryType::Link => {
                // Its target may be a file still being written.
                self.settle()?;
                self.hard_link(entry, &rel, &raw)
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                self.special(entry, &pax, kind, &rel, &raw)
            }
            other => {
                // GNU volume labels ('V'), multi-volume continuations ('M'), vendor
                // metadata records: nothing a deploy tree should contain.
                crate::logln!(
                    "archive {}: skipping \"{}\": unsupported entry type {:?}",
                    self.opts.label,
                    shown(&raw),
                    char::from(other.as_byte())
                );
                Ok(())
            }
        }
    }

    /// Warns once per archive that leading `/`s are stripped (names and hard links).
    fn warn_absolute(&mut self, raw: &[u8]) {
        if !self.warned_absolute {
            self.warned_absolute = true;
            crate::logln!(
                "archive {}: removing leading '/' from member names (first: \"{}\")",
                self.opts.label,
                shown(raw)
            );
        }
    }

    /// Mode, mtime (sub-second from pax) and, when `same_owner`, the owner to set.
    fn meta<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        pax: &PaxInfo,
        raw: &[u8],
    ) -> Result<Meta> {
        let h = entry.header();
        let mode = h.mode().map_err(|e| fail_io(raw, "mode field", e))? & 0o7777;
        let mtime = match pax.mtime {
            Some(t) => t,
            None => FileTime::from_unix_time(header_mtime(h).map_err(|why| why.of(raw))?, 0),
        };
        let owner = if self.opts.same_owner {
            Some(self.owners.of(h, pax, raw)?)
        } else {
            None
        };
        Ok(Meta { mode, mtime, owner })
    }

    /// A later entry replaces what an earlier one put at `rel` (as GNU tar does).
    fn remove_existing(&mut self, rel: &Path, raw: &[u8]) -> Result<()> {
        // What it removes may be (or hold) a file still being written.
        self.settle()?;
        let st = self.tree.lstat(rel).map_err(|e| fail_io(raw, "stat", e))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            // Two descriptors whatever the depth, never following a symlink inside.
            (self.tree.remove_tree(rel, Owner::Any)).map_err(|e| fail_io(raw, "remove", e))?;
            self.dirs.retain(|d| !d.starts_with(rel));
            self.fixes.retain(|d, _| !d.starts_with(rel));
            self.written.retain(|d| !d.0.rel().starts_with(rel));
            // `digests` may keep the keys of files that were below: no path below a
            // non-directory can be in the tree the unpack leaves, and a file written
            // there again sets its own digest; every use looks a digest up by the
            // path of a node the tree holds.
        } else {
            self.tree
                .unlink(rel)
                .map_err(|e| fail_io(raw, "remove", e))?;
            self.written.remove(key(rel));
            self.digests.remove(&dkey(rel));
        }
        Ok(())
    }

    /// Whether creating with `mode` may have lost bits to the umask (or needs
    /// setuid/setgid/sticky set explicitly).
    fn needs_chmod(&self, mode: u32) -> bool {
        match self.umask {
            Some(umask) => mode & umask != 0 || mode & 0o7000 != 0,
            None => true,
        }
    }

    /// Waits for every file handed to the writer thread, recording each (see
    /// `writer`); the first failure of one is returned.
    pub(super) fn settle(&mut self) -> Result<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        if w.idle() {
            return Ok(());
        }
        let (written, digests) = (&mut self.written, &mut self.digests);
        w.settle(&mut |f| finished(written, digests, f))
    }

    /// The stream's files all written: every file handed to the writer thread
    /// recorded ([`settle`](Self::settle)), and the thread ended, its buffers freed
    /// before the kept files are adopted (the delta's peak of memory). After a
    /// stream of many entries, the filesystem journal's commit of them is started
    /// (`Commit`).
    pub(super) fn files_written(&mut self) -> Result<()> {
        self.settle()?;
        self.writer = None;
        if self.entries >= COMMIT_AFTER {
            self.commit = Commit::start(self.tree);
        }
        Ok(())
    }

    /// Whether `Staged::written` is kept.
    fn listing(&self) -> bool {
        self.opts.link_unchanged || self.opts.list_written
    }

    /// [`Extractor::listing`]: lists what is now at `rel` (`stat` runs only then).
    fn note(
        &mut self,
        rel: &Path,
        raw: &[u8],
        stat: impl FnOnce() -> io::Result<crate::entry::Meta>,
        target: Option<&[u8]>,
    ) -> Result<()> {
        if self.listing() {
            let meta = stat().map_err(|e| fail_io(raw, "stat", e))?;
            self.list(Entry {
                path: key(rel).into(),
                meta,
                target: target.map(Box::from),
            });
        }
        Ok(())
    }

    /// Lists `entry` in `Staged::written`, in place of what was listed at its path.
    fn list(&mut self, entry: Entry) {
        self.written.replace(Listed(entry));
    }

    /// The digests of the files written unhashed ([`Sum::Table`]) from the packed
    /// archive's table: `rest`, the stream after the tar's end blocks (zero padding,
    /// then the table's raw bytes), read to its very end. A table that cannot be
    /// decoded leaves them without digests (told at `finish`); an error of the stream
    /// itself is the unpack's.
    pub(super) fn table_digests(&mut self, rest: &mut dyn Read) -> Result<()> {
        let mut stream = Watched {
            inner: rest,
            error: None,
        };
        let mut r = io::BufReader::with_capacity(64 * 1024, &mut stream);
        // The zero blocks (and any zero padding) before the table, whose first byte
        // (its version) is not zero.
        let mut zeros = true;
        while zeros {
            let buf = match r.fill_buf() {
                Ok(b) => b,
                Err(e) => return Err(super::errors::corrupt(self.opts, e)),
            };
            if buf.is_empty() {
                break;
            }
            let n = buf.iter().take_while(|&&b| b == 0).count();
            zeros = n == buf.len();
            r.consume(n);
        }
        let decoded = if zeros {
            Err(crate::toc::TocError::Decode(
                "no table after the tar".into(),
            ))
        } else {
            // As the delta reads a table: at most `MAX_TABLE_DECODED` bytes of it (the
            // stream is verified only at its end, so an endless one is cut here).
            let mut table = (&mut r).take(crate::toc::MAX_TABLE_DECODED);
            let decoded = crate::toc::Table::decode_each(&mut table, &mut |_, e| {
                self.told(&e);
                Ok(())
            });
            if table.limit() == 0 {
                Err(crate::toc::TocError::Decode(format!(
                    "more than {} bytes after the tar",
                    crate::toc::MAX_TABLE_DECODED
                )))
            } else {
                decoded
            }
        };
        // Whatever the table was, the stream is read to its very end.
        io::copy(&mut r, &mut io::sink()).map_err(|e| super::errors::corrupt(self.opts, e))?;
        drop(r);
        if let Some(e) = stream.error {
            return Err(super::errors::corrupt(self.opts, e));
        }
        if let Err(e) = decoded {
            // Nothing of a table that does not decode is taken, the entries before the
            // fault included.
            for sum in self.digests.values_mut() {
                if let Sum::Told(_) = sum {
                    *sum = Sum::Doubt;
                }
            }
            crate::logln!(
                "archive {}: warning: its table of contents cannot be read ({e}): the files written have no digest",
                self.opts.label
            );
        }
        Ok(())
    }

    /// What the table's entry `e` says of a file written unhashed.
    fn told(&mut self, e: &crate::toc::Entry) {
        use crate::toc::Kind;
        let key = crate::digest::path_key(&e.path);
        let said = match &e.kind {
            Kind::File { sha256, .. } => Some(*sha256),
            Kind::HardLink { target } => match self.digests.get(&crate::digest::path_key(target)) {
                Some(Sum::Now(d) | Sum::Told(d)) => Some(*d),
                _ => None,
            },
            _ => return,
        };
        let Some(sum) = self.digests.get_mut(&key) else {
            return;
        };
        *sum = match (*sum, said) {
            (Sum::Table(size), Some(d))
                if size == e.size || matches!(e.kind, Kind::HardLink { .. }) =>
            {
                Sum::Told(d)
            }
            (Sum::Told(was), Some(d)) if was == d => Sum::Told(d),
            // Computed from the bytes: the table's word is not needed.
            (Sum::Now(d), _) => Sum::Now(d),
            _ => Sum::Doubt,
        };
    }

    /// The directory fixes (see `dirs`), then the tree.
    pub(super) fn finish(mut self) -> Result<Staged> {
        self.settle()?;
        self.fix_dirs()?;
        let listed = self.listing() && (self.opts.link_unchanged || !self.hard_linked);
        let written = listed.then(|| {
            let mut written: Vec<Entry> = self.written.into_iter().map(|l| l.0).collect();
            // The release's listing; the sync sorts its own as its walk lists.
            if self.opts.link_unchanged {
                written.sort_unstable_by(|a, b| a.path.cmp(&b.path));
            }
            written
        });
        // A map's keys, and adopted files' (each path once, none of the stream's):
        // distinct.
        let mut digests = self.adopted_digests;
        let mut unknown = 0u64;
        digests.extend(self.digests.into_iter().filter_map(|(k, sum)| match sum {
            Sum::Now(d) | Sum::Told(d) => Some((k, d)),
            Sum::Table(_) | Sum::Doubt => {
                unknown += 1;
                None
            }
        }));
        if unknown > 0 {
            crate::logln!(
                "archive {}: warning: the table of contents gives no digest of {unknown} files written (they are compared by their bytes when next deployed)",
                self.opts.label
            );
        }
        let digests = Digests::from_distinct(digests);
        let root_id = self
            .tree
            .id()
            .map_err(|e| crate::Error::io("stat", self.tree.path(), e))?;
        Ok(Staged {
            root: self.tree.path().to_path_buf(),
            root_id,
            root_mode: self.root_mode,
            entries: self.entries,
            reused: self.reused.finish(),
            written,
            digests,
            listed_dirs: Vec::new(),
        })
    }
}

/// What the writer thread finished, recorded as `Extractor::note` and `file` would
/// have: its listing (when it was `stat`ed) and its digest (when it hashed it).
fn finished(
    written: &mut HashSet<Listed>,
    digests: &mut HashMap<PathKey, Sum>,
    f: writer::Finished,
) {
    if let Some(meta) = f.meta {
        written.replace(Listed(Entry {
            path: key(&f.rel).into(),
            meta,
            target: None,
        }));
    }
    if let Some(d) = f.digest {
        digests.insert(dkey(&f.rel), Sum::Now(d));
    }
}

/// Entries of a stream after which the journal's commit is started early.
const COMMIT_AFTER: u64 = 1024;

/// An `fsync` of the staging root on a thread of its own, waited for when dropped.
/// On a journalling filesystem it commits the transaction that holds every inode and
/// directory entry the stream made (tens of milliseconds for 20,000 files), beside
/// the table's decode, the directory fixes and the sync's plan; the deploy's own
/// `fsync`s (index, record) then wait for a small commit. Only a head start: its
/// error is left to those `fsync`s to meet.
struct Commit(Option<std::thread::JoinHandle<()>>);

impl Commit {
    fn start(tree: &Tree) -> Option<Commit> {
        let tree = tree.try_clone().ok()?;
        let thread = std::thread::Builder::new()
            .name("unpack-commit".into())
            .spawn(move || {
                let _ = tree.sync();
            })
            .ok()?;
        Some(Commit(Some(thread)))
    }
}

impl Drop for Commit {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            // It cannot panic; a panic would only mean no head start.
            let _ = t.join();
        }
    }
}

/// A reader that keeps its first error: an error of the stream itself is told apart
/// from the table's own (which the table's decoder words).
struct Watched<'r> {
    inner: &'r mut dyn Read,
    error: Option<io::Error>,
}

impl Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("the stream failed"));
        }
        match self.inner.read(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                self.error = Some(e);
                Err(io::Error::other("the stream failed"))
            }
            other => other,
        }
    }
}

/// The ids a node made in `tree` gets, when the tree's root has them too (see
/// `Extractor::creator`).
fn creator(tree: &Tree) -> Option<(u32, u32)> {
    let ids = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let root = tree.lstat(Path::new("")).ok()?;
    ((root.st_uid, root.st_gid) == ids).then_some(ids)
}

/// The `lstat` of `rel` through the tree, as `Staged::written` lists it.
fn lstat_meta(tree: &Tree, rel: &Path) -> io::Result<crate::entry::Meta> {
    tree.lstat(rel).map(|st| crate::entry::Meta::from(&st))
}

/// The umask, read without changing it (Linux ≥ 4.7 shows it in /proc).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_runs_beside_and_is_waited_for_when_dropped() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        let tree = Tree::open(t.path(), false).unwrap();
        let commit = Commit::start(&tree).expect("a thread starts");
        let thread = commit.0.as_ref().map(|h| h.thread().id());
        assert!(thread.is_some_and(|id| id != std::thread::current().id()));
        drop(commit);
        // The tree is still usable, its descriptor its own.
        assert!(tree.lstat(Path::new("f")).is_ok());
    }
}
