//! The deploy index (SPEC §11): what `dest` held right after the last successful
//! sync, and the settings that sync ran with — so that a redeploy of the same
//! archive can tell, with one `lstat` per entry and no download, that the sync
//! would change nothing, and `stretcher verify` can report drift (SPEC §12) — and
//! the content digest of each regular file (SPEC §21), so that a file whose size and
//! mtime match is still known to hold the archive's bytes, or not.
//!
//! File format of `STATE/deploys/<key>.index` (written atomically, like records):
//!
//! ```text
//! "STRIDX2\n"                                 magic, format version 2
//! zstd frame (with its content checksum) of:
//!   header: one JSON object, then "\n"         Header (settings, filter rules, count)
//!   entries, sorted by path bytes, each:
//!     varint  bytes shared with the previous path
//!     varint  length of the rest, then the rest
//!     u8      type: 0 file, 1 dir, 2 symlink, 3 special
//!     varint  mode & 0o7777, uid, gid
//!     varint  size (files; rdev for specials; 0 for dirs and symlinks)
//!     varint  mtime seconds (zigzag), mtime nanoseconds
//!     symlinks only: varint length, then the target bytes
//!     files only: u8 1 then the 32 bytes of the content's sha256, or u8 0 (unknown)
//! ```
//!
//! Version 1 (`"STRIDX1\n"`) is the same without the files' digest byte; it is still
//! read (its files have no digest) and never written. The header's rules are the
//! `exclude_from` file byte for byte: `exclude_from_text` when it is UTF-8, else
//! `exclude_from_hex` (version 1 kept only a lossy text).
//!
//! Entries are [`Entry`]s, the one entry type of every listing; the index keeps of a
//! [`crate::entry::Meta`] the permission bits (not which special a special is: read
//! back, its mode has no type bits). Paths are dest-relative bytes (the root is the
//! empty path). Prefix-shared paths and varints make an entry about 30–40 bytes before
//! zstd, ≈ 10–20 after (see the redeploy table in benches/README.md). Directory sizes
//! are not kept: they depend on the filesystem's history, not on what the directory
//! holds, and rsync ignores them.
//!
//! [`scan`] is the walk of `dest` the redeploy check, `verify` and `rollback` use (an
//! index written after a sync never comes from it: [`from_plan`] for rsync and mv, the
//! unpack's listing for a release): the same
//! pruning of excluded entries as the sync, and directories read in parallel by a
//! few threads. [`diff`] compares two sorted entry lists. This module writes only
//! its own index file and never changes `dest`.

use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::at::Tree;
use crate::digest::{Digest, Digests, Known, Stamp};
use crate::entry::{Entry, Kind, Meta};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::strategy::Strategy;

/// The magic of the version written (2: files carry their digest).
const MAGIC: &[u8] = b"STRIDX2\n";
/// The magic of version 1 (no digests), still read.
const MAGIC_V1: &[u8] = b"STRIDX1\n";
/// zstd level: a third of an index is digests, which do not compress. At 20,000 files
/// (1.2 MB raw) level 1 compresses at 234 MB/s to 1.05 MB, level 3 at 104 MB/s to
/// 1.00 MB: 7 ms more on every deploy's calling thread for 5 % of the file.
const ZSTD_LEVEL: i32 = 1;

/// The settings of the sync an index describes (compared before the walk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Lower-case hex checksum of the archive that was deployed.
    pub checksum: String,
    /// The strategy that made dest what it is.
    pub strategy: Strategy,
    /// The manifest's `dest_mode`, when it set one.
    pub dest_mode: Option<u32>,
    /// The manifest's `excludes` rules, in order.
    pub excludes: Vec<String>,
    /// The manifest's `exclude_from` name.
    pub exclude_from: Option<String>,
    /// The `exclude_from` file, as it was read out of the staged tree, when it is
    /// UTF-8 (else `exclude_from_hex`; an index of version 1 kept a lossy text here).
    pub exclude_from_text: Option<String>,
    /// The `exclude_from` file's bytes in hex, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_from_hex: Option<String>,
    /// The effective user id the sync ran as.
    pub euid: u32,
    /// RFC 3339 time the index was written.
    pub written: String,
    /// Number of entries that follow.
    pub entries: u64,
}

impl Header {
    /// The filter rules in force for this index: built from the `exclude_from` file's
    /// bytes as the sync built them.
    pub fn filter(&self) -> Result<Filter> {
        let rules = self.exclude_from_bytes()?;
        Filter::from_bytes(rules.as_deref(), &self.excludes)
    }

    /// The `exclude_from` file's bytes, as the deploy read them.
    pub fn exclude_from_bytes(&self) -> Result<Option<Vec<u8>>> {
        match (&self.exclude_from_hex, &self.exclude_from_text) {
            (Some(h), _) => hex::decode(h).map(Some).map_err(|e| Error::Index {
                path: PathBuf::new(),
                msg: format!("deploy index has bad exclude_from bytes: {e}"),
            }),
            (None, Some(t)) => Ok(Some(t.as_bytes().to_vec())),
            (None, None) => Ok(None),
        }
    }

    /// Keeps `rules` (the `exclude_from` file's bytes) byte for byte: as text when
    /// they are UTF-8, else in hex.
    pub(crate) fn set_exclude_from(&mut self, rules: Option<Vec<u8>>) {
        (self.exclude_from_text, self.exclude_from_hex) = match rules {
            None => (None, None),
            Some(b) => match String::from_utf8(b) {
                Ok(t) => (Some(t), None),
                Err(e) => (None, Some(hex::encode(e.as_bytes()))),
            },
        };
    }
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
        Kind::Special => 3,
    }
}

fn kind_from(c: u8) -> Option<Kind> {
    Some(match c {
        0 => Kind::File,
        1 => Kind::Dir,
        2 => Kind::Symlink,
        3 => Kind::Special,
        _ => return None,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// `STATE/deploys/<key>.index`.
pub fn index_path(state_dir: &Path, key: &str) -> PathBuf {
    crate::record::deploys_dir(state_dir).join(format!("{key}.index"))
}

/// Encodes an index; `entries` must be sorted by path (see [`sort`]); a regular file
/// gets its digest from `digests` when it is there. The entries are compressed as
/// they are encoded, a chunk at a time: the uncompressed index is never held whole.
pub(crate) fn encode(header: &Header, entries: &[Entry], digests: &Digests) -> Result<Vec<u8>> {
    let failed = |e| Error::io("compress", "index", e);
    // About what it takes: ~15 bytes an entry compressed, and a digest does not
    // compress (pages of it never written are never touched).
    let mut out = Vec::with_capacity(MAGIC.len() + 4096 + entries.len() * 16 + digests.len() * 33);
    out.extend_from_slice(MAGIC);
    let mut enc = zstd::Encoder::new(&mut out, ZSTD_LEVEL).map_err(failed)?;
    enc.include_checksum(true).map_err(failed)?;
    const CHUNK: usize = 64 * 1024;
    let mut raw = Vec::with_capacity(CHUNK + 4096);
    let mut h = header.clone();
    h.entries = entries.len() as u64;
    // A struct of strings and numbers always serialises.
    raw.extend_from_slice(&serde_json::to_vec(&h).unwrap_or_default());
    raw.push(b'\n');
    let mut prev: &[u8] = b"";
    for e in entries {
        let shared = prev.iter().zip(&e.path).take_while(|(a, b)| a == b).count();
        put_varint(&mut raw, shared as u64);
        put_varint(&mut raw, (e.path.len() - shared) as u64);
        raw.extend_from_slice(&e.path[shared..]);
        let m = &e.meta;
        raw.push(kind_code(m.kind()));
        put_varint(&mut raw, u64::from(m.perms()));
        put_varint(&mut raw, u64::from(m.uid));
        put_varint(&mut raw, u64::from(m.gid));
        put_varint(&mut raw, m.size);
        put_varint(&mut raw, zigzag(m.mtime));
        put_varint(&mut raw, u64::from(m.mtime_nsec));
        if m.kind() == Kind::Symlink {
            let t = e.target.as_deref().unwrap_or(b"");
            put_varint(&mut raw, t.len() as u64);
            raw.extend_from_slice(t);
        }
        if m.kind() == Kind::File {
            match digests.get(&e.path) {
                Some(d) => {
                    raw.push(1);
                    raw.extend_from_slice(d);
                }
                None => raw.push(0),
            }
        }
        prev = &e.path;
        if raw.len() >= CHUNK {
            enc.write_all(&raw).map_err(failed)?;
            raw.clear();
        }
    }
    enc.write_all(&raw).map_err(failed)?;
    enc.finish().map_err(failed)?;
    out.shrink_to_fit();
    Ok(out)
}

/// Why an index could not be read.
fn corrupt(path: &Path, what: &str) -> Error {
    Error::Index {
        path: path.to_path_buf(),
        msg: format!("deploy index is corrupt: {what}"),
    }
}

/// An index as it was read: the digests are those of `entries`' regular files that
/// have one, each with its entry's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// The settings and rules.
    pub header: Header,
    /// Every entry, sorted by path.
    pub entries: Vec<Entry>,
    /// `(position in entries, content digest)` of the regular files with a digest.
    pub digests: Vec<(usize, Digest)>,
}

impl Indexed {
    /// What the index says of its files' content.
    pub fn known(&self) -> Known {
        Known::new(self.digests.iter().filter_map(|&(i, d)| {
            let e = self.entries.get(i)?;
            Some((&e.path[..], &e.meta, d))
        }))
    }
}

/// Decodes an index file's bytes (`path` only names it in errors).
#[cfg(test)]
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<(Header, Vec<Entry>)> {
    decode_all(path, bytes).map(|i| (i.header, i.entries))
}

/// Decodes an index file's bytes with its files' digests (none in version 1).
pub(crate) fn decode_all(path: &Path, bytes: &[u8]) -> Result<Indexed> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut digests: Vec<(usize, Digest)> = Vec::new();
    let header = decode_each(path, bytes, &mut |n, e| {
        if entries.is_empty() {
            entries.reserve_exact(n.min(10_000_000));
        }
        if let Some(d) = e.digest {
            digests.push((entries.len(), d));
        }
        entries.push(Entry {
            path: Box::from(e.path),
            meta: e.meta,
            target: e.target.map(Box::from),
        });
    })?;
    Ok(Indexed {
        header,
        entries,
        digests,
    })
}

/// What an index says of its files' content (SPEC §21), read without keeping its
/// entries: only the files' keys, stamps and digests are held. `path` names it.
pub(crate) fn decode_known(path: &Path, bytes: &[u8]) -> Result<Known> {
    let mut files = Vec::new();
    decode_each(path, bytes, &mut |_, e| {
        if let Some(d) = e.digest {
            files.push((crate::digest::path_key(e.path), Stamp::from(&e.meta), d));
        }
    })?;
    Ok(Known::from_keyed(files))
}

/// One entry of an index as [`decode_each`] hands it on, borrowed from its buffers.
struct Decoded<'a> {
    path: &'a [u8],
    meta: Meta,
    target: Option<&'a [u8]>,
    /// A regular file's content digest (version 2, when it has one).
    digest: Option<Digest>,
}

/// Decodes an index file's bytes, handing each entry in order to `each` (with the
/// header's entry count) and answering the header; every check of the format is
/// made here (`path` only names the file in errors).
fn decode_each(
    path: &Path,
    bytes: &[u8],
    each: &mut dyn FnMut(usize, Decoded<'_>),
) -> Result<Header> {
    let (body, v2) = match (bytes.strip_prefix(MAGIC), bytes.strip_prefix(MAGIC_V1)) {
        (Some(body), _) => (body, true),
        (None, Some(body)) => (body, false),
        (None, None) => return Err(corrupt(path, "not an index (bad magic)")),
    };
    let mut raw = Vec::new();
    zstd::Decoder::new(body)
        .and_then(|mut d| d.read_to_end(&mut raw))
        .map_err(|e| corrupt(path, &e.to_string()))?;
    let nl = raw
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt(path, "no header"))?;
    let header: Header =
        serde_json::from_slice(&raw[..nl]).map_err(|e| corrupt(path, &e.to_string()))?;
    let mut r = Reader {
        data: &raw[nl + 1..],
        pos: 0,
    };
    let n = usize::try_from(header.entries).map_err(|_| corrupt(path, "entry count"))?;
    // The previous entry's path (the next one shares a prefix with it).
    let mut prev: Vec<u8> = Vec::new();
    let short = || corrupt(path, "truncated entry");
    for i in 0..n {
        let shared = r.varint().ok_or_else(short)? as usize;
        let rest = r.varint().ok_or_else(short)? as usize;
        if shared > prev.len() {
            return Err(corrupt(path, "bad path prefix"));
        }
        let tail = r.bytes(rest).ok_or_else(short)?;
        // Sorted and distinct: the new path is greater than the previous one (the
        // shared prefix is equal, so its tail decides; none at all only for the first).
        let ordered = i == 0 || prev.get(shared..).is_some_and(|old| tail > old);
        prev.truncate(shared);
        prev.extend_from_slice(tail);
        let kind = kind_from(r.byte().ok_or_else(short)?).ok_or_else(|| corrupt(path, "type"))?;
        let small = |v: u64| u32::try_from(v).map_err(|_| corrupt(path, "field out of range"));
        let mode = small(r.varint().ok_or_else(short)?)?;
        let uid = small(r.varint().ok_or_else(short)?)?;
        let gid = small(r.varint().ok_or_else(short)?)?;
        let size = r.varint().ok_or_else(short)?;
        let mtime = unzigzag(r.varint().ok_or_else(short)?);
        let mtime_nsec = small(r.varint().ok_or_else(short)?)?;
        let target = if kind == Kind::Symlink {
            let len = r.varint().ok_or_else(short)? as usize;
            Some(r.bytes(len).ok_or_else(short)?)
        } else {
            None
        };
        if !ordered {
            return Err(corrupt(path, "entries out of order"));
        }
        if mode > 0o7777 {
            return Err(corrupt(path, "mode out of range"));
        }
        let mut digest = None;
        if v2 && kind == Kind::File {
            match r.byte().ok_or_else(short)? {
                0 => {}
                1 => {
                    let d = r.bytes(32).ok_or_else(short)?;
                    let mut bytes = [0u8; 32];
                    bytes.copy_from_slice(d);
                    digest = Some(bytes);
                }
                _ => return Err(corrupt(path, "digest flag")),
            }
        }
        let meta = Meta {
            mode: kind.type_bits() | mode,
            uid,
            gid,
            mtime_nsec,
            size,
            mtime,
        };
        each(
            n,
            Decoded {
                path: &prev,
                meta,
                target,
                digest,
            },
        );
    }
    if r.pos != r.data.len() {
        return Err(corrupt(path, "trailing bytes"));
    }
    Ok(header)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

/// Sorts entries by path bytes (the order an index is stored in).
pub(crate) fn sort(entries: &mut [Entry]) {
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
}

/// Writes the index of `key` atomically.
pub(crate) fn write(
    state_dir: &Path,
    key: &str,
    header: &Header,
    entries: &[Entry],
    digests: &Digests,
) -> Result<()> {
    let dir = crate::record::open_deploys_dir(state_dir)?;
    let bytes = encode(header, entries, digests)?;
    crate::record::write_atomic(&dir, &format!("{key}.index"), &bytes)
}

/// Writes the index of what `dest` holds after a successful landing (or a rollback):
/// `settings` with its time and entry count filled in, each regular file with its
/// digest in `digests` (the archive's, from the unpack). A failure is a warning: the
/// run's result stands, and the next redeploy downloads in full.
pub(crate) fn save(
    state_dir: &Path,
    dest: &Path,
    settings: &Header,
    entries: &[Entry],
    digests: &Digests,
) {
    let header = Header {
        written: crate::record::timestamp(chrono::Utc::now()),
        entries: entries.len() as u64,
        ..settings.clone()
    };
    let key = crate::record::key_for_dest(dest);
    if let Err(e) = write(state_dir, &key, &header, entries, digests) {
        crate::logln!("warning: cannot write the deploy index: {e}");
    }
}

/// Reads the index of `key`: `Ok(None)` when there is none.
pub fn read(state_dir: &Path, key: &str) -> Result<Option<(Header, Vec<Entry>)>> {
    Ok(read_all(state_dir, key)?.map(|i| (i.header, i.entries)))
}

/// Reads the index of `key` with its files' digests: `Ok(None)` when there is none.
pub fn read_all(state_dir: &Path, key: &str) -> Result<Option<Indexed>> {
    let path = index_path(state_dir, key);
    // Never through a symlink at its name (SPEC §17); an index has no size limit.
    match crate::record::read_deploys_file(state_dir, &format!("{key}.index"), u64::MAX) {
        Ok(b) => decode_all(&path, &b).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &path, e)),
    }
}

/// What the index of `key` says of its files' content (see `decode_known`):
/// `Ok(None)` when there is none.
pub fn read_known(state_dir: &Path, key: &str) -> Result<Option<Known>> {
    let path = index_path(state_dir, key);
    match crate::record::read_deploys_file(state_dir, &format!("{key}.index"), u64::MAX) {
        Ok(b) => decode_known(&path, &b).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &path, e)),
    }
}

/// Threads that read directories in [`scan`].
fn scan_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Walks `root` as the sync does (a symlink at `root` followed, none below it:
/// every directory is read through descriptors, [`crate::at::Tree`]; excluded entries
/// neither listed nor descended into) and returns every entry, the root
/// first, sorted by path. Directories are read by a few threads in parallel; a
/// worker that panics makes the scan fail with [`Error::WorkerPanic`] (never a
/// hang, never a shorter listing).
pub fn scan(root: &Path, filter: &Filter) -> Result<Vec<Entry>> {
    scan_with(root, filter, read_one)
}

/// How [`scan`] lists one directory: [`read_one`]'s signature, so that a test can
/// hand in one that panics.
type ReadDir = fn(&Tree, &[u8], &Filter, &mut Vec<Entry>, &mut Vec<Vec<u8>>) -> Result<()>;

/// [`scan`], with `read` listing each directory.
fn scan_with(root: &Path, filter: &Filter, read: ReadDir) -> Result<Vec<Entry>> {
    // The root is followed, as the sync follows `DEST/`; nothing below it is: each
    // worker reads its directories through a descriptor of the root of its own.
    let tree = match Tree::open(root, true) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Error::Dest {
                path: root.to_path_buf(),
                msg: "not a directory".into(),
            })
        }
        Err(e) => return Err(Error::io("stat", root, e)),
    };
    let st = tree
        .lstat(Path::new(""))
        .map_err(|e| Error::io("stat", root, e))?;
    let root_entry = Entry::new(Path::new(""), Meta::from(&st), None);
    let mut trees = Vec::new();
    for _ in 1..scan_threads() {
        trees.push(tree.try_clone().map_err(|e| Error::io("open", root, e))?);
    }
    struct Queue {
        dirs: Vec<Vec<u8>>,
        /// Directories taken and not yet given back: while it is not 0 an idle
        /// worker waits, since a busy one may still push subdirectories.
        busy: usize,
        failed: Option<Error>,
    }
    let queue = Mutex::new(Queue {
        dirs: vec![Vec::new()],
        busy: 0,
        failed: None,
    });
    let wake = Condvar::new();
    let panicked = |path: PathBuf, payload: &(dyn std::any::Any + Send)| Error::WorkerPanic {
        task: "scan",
        path,
        msg: crate::error::panic_message(payload),
    };
    // Only bookkeeping runs while the lock is held (a pop, a push, a counter), never
    // `read`, so a poisoned lock still holds a consistent queue: it is used as it is,
    // and the panic that poisoned it is reported through that thread's `join`.
    let lock = || queue.lock().unwrap_or_else(PoisonError::into_inner);
    let worker = |tree: Tree| -> Vec<Entry> {
        let mut found = Vec::new();
        loop {
            let dir = {
                let mut q = lock();
                loop {
                    if q.failed.is_some() {
                        return found;
                    }
                    if let Some(d) = q.dirs.pop() {
                        q.busy += 1;
                        break d;
                    }
                    if q.busy == 0 {
                        wake.notify_all();
                        return found;
                    }
                    q = wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let mut subdirs = Vec::new();
            // A panic in `read` must still give the directory back (`busy -= 1`) and
            // wake the others, or they would wait for it forever. What `found` holds
            // after it does not matter: a failed scan returns none of it.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                read(&tree, &dir, filter, &mut found, &mut subdirs)
            }))
            .unwrap_or_else(|payload| Err(panicked(dir_path(root, &dir), payload.as_ref())));
            let mut q = lock();
            q.busy -= 1;
            if let Err(e) = result {
                q.failed.get_or_insert(e);
            }
            q.dirs.extend(subdirs);
            wake.notify_all();
        }
    };
    let mut all = vec![root_entry];
    let mut joined = Ok(());
    std::thread::scope(|s| {
        let handles: Vec<_> = trees
            .into_iter()
            .map(|t| s.spawn(move || worker(t)))
            .collect();
        all.extend(worker(tree));
        for h in handles {
            match h.join() {
                Ok(v) => all.extend(v),
                // Only outside `read` (caught above), i.e. never today: the listing
                // lacks that worker's entries all the same, so the scan fails.
                Err(payload) => joined = Err(panicked(root.to_path_buf(), payload.as_ref())),
            }
        }
    });
    let failed = queue
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .failed;
    if let Some(e) = failed {
        return Err(e);
    }
    joined?;
    sort(&mut all);
    Ok(all)
}

/// The path of the scan's directory `dir` (root-relative bytes; empty: the root).
fn dir_path(root: &Path, dir: &[u8]) -> PathBuf {
    if dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(dir))
    }
}

/// Lists one directory of the scan: its entries into `found`, its subdirectories
/// (not excluded) into `subdirs`. The directory is opened below the tree's root and
/// each entry `lstat`-ed in it, never following a symlink (one swapped in for a
/// directory meanwhile fails the scan, naming it).
fn read_one(
    tree: &Tree,
    dir: &[u8],
    filter: &Filter,
    found: &mut Vec<Entry>,
    subdirs: &mut Vec<Vec<u8>>,
) -> Result<()> {
    let dir_rel = Path::new(std::ffi::OsStr::from_bytes(dir));
    let names = tree
        .names(dir_rel)
        .map_err(|e| Error::io("read directory", tree.shown(dir_rel), e))?;
    for name in names {
        let name = name.into_vec();
        let mut rel = Vec::with_capacity(dir.len() + 1 + name.len());
        if !dir.is_empty() {
            rel.extend_from_slice(dir);
            rel.push(b'/');
        }
        rel.extend_from_slice(&name);
        let rel_path = Path::new(std::ffi::OsStr::from_bytes(&rel));
        let st = match tree.lstat(rel_path) {
            Ok(st) => st,
            // Gone since the directory was read: as if it never was.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", tree.shown(rel_path), e)),
        };
        let meta = Meta::from(&st);
        if filter.is_excluded(rel_path, meta.kind() == Kind::Dir) {
            continue;
        }
        let target = if meta.kind() == Kind::Symlink {
            let t = tree
                .read_link(rel_path)
                .map_err(|e| Error::io("readlink", tree.shown(rel_path), e))?;
            Some(t.into_os_string().into_vec().into_boxed_slice())
        } else {
            None
        };
        if meta.kind() == Kind::Dir {
            subdirs.push(rel.clone());
        }
        found.push(Entry {
            path: rel.into_boxed_slice(),
            meta,
            target,
        });
    }
    Ok(())
}

/// The index entries of what `dest` holds after `plan` was applied with
/// `preserve_owner` (see [`crate::sync::After::result`]), sorted: made from what
/// the sync already read, without walking `dest` again (only a dest-only directory
/// kept for its excluded entries is looked at again). The plan is consumed: its
/// steps (and the deleted entries) are dropped first and `Plan::after` becomes the
/// index in place (paths moved, not copied), so one listing is alive, not two.
pub fn from_plan(plan: crate::sync::Plan, preserve_owner: bool) -> Vec<Entry> {
    let crate::sync::Plan {
        dest: dest_path,
        steps,
        gone,
        after,
        ..
    } = plan;
    drop((steps, gone));
    // Opened once, only when a kept directory needs a look (dest followed, as the sync
    // follows `DEST/`; nothing below it).
    let dest = std::cell::OnceCell::new();
    let mut out: Vec<Entry> = after
        .into_iter()
        .filter_map(|a| {
            let meta = if a.fate == crate::sync::Fate::Left {
                // A dest-only directory kept for its excluded entries: the deletions
                // in it set its mtime to "now". One lstat each (they are rare).
                let tree = dest
                    .get_or_init(|| Tree::open(&dest_path, true).ok())
                    .as_ref()?;
                Meta::from(&tree.lstat(a.src.rel()).ok()?)
            } else {
                a.result(preserve_owner)?
            };
            Some(Entry { meta, ..a.src })
        })
        .collect();
    out.shrink_to_fit();
    sort(&mut out);
    out
}

/// How an entry differs (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// dest-relative, directories ending in `/` (`.` / `./` for dest itself).
    pub path: String,
    /// `added` | `deleted` | `changed`.
    pub kind: &'static str,
    /// For `changed`: among `type`, `size`, `mtime`, `mode`, `owner`, `target`,
    /// `content`.
    pub what: Vec<&'static str>,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.what.is_empty() {
            write!(f, "{} {}", self.kind, self.path)
        } else {
            write!(f, "{} {} ({})", self.kind, self.path, self.what.join(","))
        }
    }
}

/// What differs between `then` (the index) and `now` (a scan); both sorted.
pub fn diff(then: &[Entry], now: &[Entry]) -> Vec<Drift> {
    diff_with(then, now, &mut |_, _| false)
}

/// [`diff`], and `content` asked for every regular file of both (`then`'s position,
/// `now`'s entry): true adds `content` to what changed (SPEC §21).
pub fn diff_with(
    then: &[Entry],
    now: &[Entry],
    content: &mut dyn FnMut(usize, &Entry) -> bool,
) -> Vec<Drift> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < then.len() || j < now.len() {
        let order = match (then.get(i), now.get(j)) {
            (Some(a), Some(b)) => a.path.cmp(&b.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(Drift {
                    path: then[i].display_path(),
                    kind: "deleted",
                    what: Vec::new(),
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(Drift {
                    path: now[j].display_path(),
                    kind: "added",
                    what: Vec::new(),
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (a, b) = (&then[i], &now[j]);
                let mut what = changes(a, b);
                if a.kind() == Kind::File && b.kind() == Kind::File && content(i, b) {
                    what.push("content");
                }
                if !what.is_empty() {
                    out.push(Drift {
                        path: b.display_path(),
                        kind: "changed",
                        what,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// The attributes of one path that differ, in SPEC order.
fn changes(e: &Entry, f: &Entry) -> Vec<&'static str> {
    let (a, b) = (&e.meta, &f.meta);
    if a.kind() != b.kind() {
        return vec!["type"];
    }
    let mut what = Vec::new();
    if a.size != b.size {
        what.push("size");
    }
    if (a.mtime, a.mtime_nsec) != (b.mtime, b.mtime_nsec) {
        what.push("mtime");
    }
    // A symlink's own mode is not meaningful on Linux (always 0777); the index keeps
    // permission bits only.
    if a.perms() != b.perms() && a.kind() != Kind::Symlink {
        what.push("mode");
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        what.push("owner");
    }
    if e.target != f.target {
        what.push("target");
    }
    what
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            checksum: "ab".into(),
            strategy: Strategy::Rsync,
            dest_mode: Some(0o711),
            excludes: vec!["*.log".into()],
            exclude_from: Some("ex".into()),
            exclude_from_text: Some("- tmp/\n".into()),
            exclude_from_hex: None,
            euid: 0,
            written: "2026-01-01T00:00:00.000Z".into(),
            entries: 0,
        }
    }

    #[test]
    fn roundtrip_and_corruption() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("d");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::fs::write(root.join("a/g.log"), "x").unwrap();
        std::os::unix::fs::symlink("b/f", root.join("a/l")).unwrap();
        std::fs::create_dir_all(root.join("tmp/x")).unwrap();
        let h = header();
        let entries = scan(&root, &h.filter().unwrap()).unwrap();
        let paths: Vec<_> = entries.iter().map(Entry::display_path).collect();
        assert_eq!(paths, ["./", "a/", "a/b/", "a/b/f", "a/l"]);
        assert_eq!(entries[4].target.as_deref(), Some(&b"b/f"[..]));
        let digests = Digests::from_unsorted(vec![(b"a/b/f"[..].into(), [7; 32])]);
        let bytes = encode(&h, &entries, &digests).unwrap();
        assert!(bytes.starts_with(b"STRIDX2\n"));
        let p = Path::new("x.index");
        let all = decode_all(p, &bytes).unwrap();
        // the one file with a digest: a/b/f, the fourth entry
        assert_eq!(all.digests, vec![(3, [7; 32])]);
        let known = all.known();
        assert_eq!(known.get(b"a/b/f", &entries[3].meta), Some(&[7; 32]));
        let (h2, e2) = decode(p, &bytes).unwrap();
        assert_eq!(e2, entries);
        assert_eq!(h2.entries, 5);
        assert_eq!(h2.checksum, h.checksum);
        assert!(diff(&entries, &e2).is_empty());
        for cut in [0, 3, 8, bytes.len() - 1] {
            assert!(decode(p, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        assert!(decode(p, &flipped).is_err());
    }

    /// `read_one`, but a panic in the directory `a/b` (deep: other workers are busy
    /// or waiting when it happens).
    fn panic_in_a_b(
        root: &Tree,
        dir: &[u8],
        filter: &Filter,
        found: &mut Vec<Entry>,
        subdirs: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        if dir == b"a/b" {
            panic!("injected in a/b");
        }
        read_one(root, dir, filter, found, subdirs)
    }

    /// `read_one`, but a panic in the root: the one directory there is, so every
    /// other worker is waiting for it.
    fn panic_in_root(
        root: &Tree,
        dir: &[u8],
        filter: &Filter,
        found: &mut Vec<Entry>,
        subdirs: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        if dir.is_empty() {
            panic!("injected in the root");
        }
        read_one(root, dir, filter, found, subdirs)
    }

    #[test]
    fn a_worker_panic_fails_the_scan_promptly() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("d");
        for d in ["a/b/c", "a/x", "e/f", "g"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for i in 0..50 {
            std::fs::write(root.join(format!("a/b/c/f{i}")), "x").unwrap();
            std::fs::write(root.join(format!("e/f/f{i}")), "x").unwrap();
        }
        let filter = Filter::new(None, &[]).unwrap();
        let whole = scan(&root, &filter).unwrap();
        assert_eq!(whole.len(), 1 + 7 + 100);

        for (read, dir, msg) in [
            (panic_in_a_b as ReadDir, root.join("a/b"), "injected in a/b"),
            (
                panic_in_root as ReadDir,
                root.clone(),
                "injected in the root",
            ),
        ] {
            // On its own thread, so that a hang fails the test instead of stalling it.
            let (tx, rx) = std::sync::mpsc::channel();
            let (r, f) = (root.clone(), filter.clone());
            std::thread::spawn(move || tx.send(scan_with(&r, &f, read)));
            let got = rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("scan did not return after a panic in {dir:?}"));
            match got {
                Err(Error::WorkerPanic { task, path, msg: m }) => {
                    assert_eq!(task, "scan");
                    assert_eq!(path, dir);
                    assert_eq!(m, msg);
                }
                Err(e) => panic!("another error: {e}"),
                Ok(v) => panic!("a listing of {} entries (whole: {})", v.len(), whole.len()),
            }
        }
    }

    /// `fixtures/golden/index-v1.index` was written by the format's first encoder (one
    /// entry of each kind, a special's device number, negative times, a path that is
    /// not UTF-8, an empty link target): it still reads as the same entries, and
    /// encoding them again gives the same bytes (before compression).
    #[test]
    fn the_first_encoders_file_reads_and_is_written_byte_for_byte() {
        let golden = include_bytes!("../fixtures/golden/index-v1.index");
        let e = |path: &[u8], kind: Kind, perms, size, mtime, mtime_nsec, target: Option<&[u8]>| {
            let meta = Meta {
                mode: kind.type_bits() | perms,
                uid: 1000,
                gid: 100,
                mtime_nsec,
                size,
                mtime,
            };
            Entry {
                path: path.into(),
                meta,
                target: target.map(Box::from),
            }
        };
        let want = vec![
            e(b"", Kind::Dir, 0o755, 0, 1_700_000_000, 123_456_789, None),
            e(b"a", Kind::Dir, 0o2750, 0, 1_700_000_001, 0, None),
            e(
                b"a/b.txt",
                Kind::File,
                0o644,
                5,
                1_600_000_000,
                999_999_999,
                None,
            ),
            e(b"a/b\xffc", Kind::File, 0o4755, 1 << 40, -5, 1, None),
            e(b"a/link", Kind::Symlink, 0o777, 0, 42, 7, Some(b"b.txt")),
            e(b"a/nul", Kind::Special, 0o666, 0x0103, 0, 0, None),
            e(
                b"a/pipe",
                Kind::Special,
                0o600,
                0,
                -1_000_000_000_000,
                500,
                None,
            ),
            e(b"z", Kind::Symlink, 0o777, 0, 1, 0, Some(b"")),
        ];
        let h = Header {
            checksum: "da39a3ee5e6b4b0d3255bfef95601890afd80709".into(),
            strategy: Strategy::Rsync,
            entries: 8,
            ..header()
        };
        let v1 = decode_all(Path::new("v1.index"), golden).unwrap();
        assert_eq!((&v1.header, &v1.entries), (&h, &want));
        // Version 1 has no digests: its files' content is unknown.
        assert!(v1.digests.is_empty());

        // Version 2, as this encoder writes it: the same entries, one file with its
        // digest and one without, rules that are not UTF-8 kept in hex.
        let golden2 = include_bytes!("../fixtures/golden/index-v2.index");
        let mut h2 = h.clone();
        h2.set_exclude_from(Some(b"- caf\xe9/\n".to_vec()));
        assert_eq!(h2.exclude_from_text, None);
        assert_eq!(h2.exclude_from_hex.as_deref(), Some("2d20636166e92f0a"));
        let digests = Digests::from_unsorted(vec![(b"a/b.txt"[..].into(), [0xab; 32])]);
        let v2 = decode_all(Path::new("v2.index"), golden2).unwrap();
        assert_eq!((&v2.header, &v2.entries), (&h2, &want));
        assert_eq!(v2.digests, vec![(2, [0xab; 32])]);
        assert_eq!(
            v2.header.exclude_from_bytes().unwrap().as_deref(),
            Some(&b"- caf\xe9/\n"[..])
        );
        assert!(v2
            .header
            .filter()
            .unwrap()
            .is_excluded(Path::new(std::ffi::OsStr::from_bytes(b"caf\xe9")), true));
        // The same bytes before compression (the zstd level may change what they
        // compress to, never what they are).
        let raw = |index: &[u8]| {
            assert_eq!(&index[..MAGIC.len()], MAGIC);
            zstd::decode_all(&index[MAGIC.len()..]).unwrap()
        };
        assert_eq!(raw(&encode(&h2, &want, &digests).unwrap()), raw(golden2));
        // A special read from a disk has its type bits; the index does not keep them.
        let mut fifo = want.clone();
        fifo[6].meta.mode |= 0o010_000;
        assert_eq!(raw(&encode(&h2, &fifo, &digests).unwrap()), raw(golden2));
    }

    #[test]
    fn diff_names_what_changed() {
        let e = |path: &str, kind: Kind| Entry {
            path: path.as_bytes().into(),
            meta: Meta {
                mode: kind.type_bits() | 0o644,
                uid: 1,
                gid: 1,
                mtime_nsec: 5,
                size: 3,
                mtime: 10,
            },
            target: (kind == Kind::Symlink).then(|| b"t"[..].into()),
        };
        let then = vec![
            e("", Kind::Dir),
            e("a", Kind::File),
            e("b", Kind::File),
            e("d", Kind::Dir),
            e("l", Kind::Symlink),
        ];
        let mut now = then.clone();
        now[1].meta.mtime_nsec = 6;
        now[1].meta.mode = Kind::File.type_bits() | 0o600;
        now[4].target = Some(b"u"[..].into());
        now.remove(2);
        now[2].meta.uid = 0;
        now.push(e("m", Kind::File));
        let lines: Vec<String> = diff(&then, &now).iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "changed a (mtime,mode)",
                "deleted b",
                "changed d/ (owner)",
                "changed l (target)",
                "added m"
            ]
        );
        let mut t2 = then.clone();
        t2[1].meta.mode = Kind::Dir.type_bits() | 0o644;
        assert_eq!(diff(&then, &t2)[0].to_string(), "changed a/ (type)");
    }
}
