//! Content digests of regular files (SPEC §21): sha256, the digest the packed
//! archives' tables of SPEC §18 carry too, so a table's digest compares with the
//! index's directly and the code knows one digest (`sha2` uses the CPU's SHA
//! extensions when it has them).
//!
//! [`Digests`] is what an unpack learnt (every regular file it lists, by path);
//! [`Known`] is what the deploy index says of dest's files: a digest holds only while
//! the file still has the size and mtime (to the nanosecond) it was indexed with.
//! Both are [`Keyed`]: sorted vectors keyed by a hash of the path ([`PathKey`]), one
//! allocation each, no copy of a path, nothing per entry that is not a regular file.
//! This module reads a file only when asked ([`of_file`]).

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::at::Tree;
use crate::entry::Meta;

/// A file's content digest: sha256 of its bytes (a sparse file's holes as zeros).
pub type Digest = [u8; 32];

/// The running digest of bytes as they go by.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        self.0.finalize().into()
    }
}

/// The digest of everything `r` reads, with `buf` as the read buffer.
pub fn of_reader(r: &mut impl Read, buf: &mut [u8]) -> io::Result<Digest> {
    let mut h = Hasher::default();
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Opens the regular file `rel` of `tree` for reading: no symlink followed (below the
/// tree's root or at its name), never blocking on a fifo swapped in, and refused when
/// it is not a regular file.
pub fn open_regular(tree: &Tree, rel: &Path) -> io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = tree.at(rel, |d, n| rustix::fs::openat(d, n, flags, Mode::empty()))?;
    let file = std::fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The digest of the regular file `rel` of `tree` (see [`open_regular`]).
pub fn of_file(tree: &Tree, rel: &Path) -> io::Result<Digest> {
    let mut file = open_regular(tree, rel)?;
    let mut buf = vec![0u8; 256 * 1024];
    of_reader(&mut file, &mut buf)
}

/// Whether the files `a` and `b` hold the same bytes, both read from their start to
/// their end: holes of both are skipped (`SEEK_DATA`), so two sparse files of any size
/// compare at the cost of their data. Different sizes: false.
pub fn same_bytes(a: &std::fs::File, b: &std::fs::File) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = a.metadata()?.len();
    if b.metadata()?.len() != len {
        return Ok(false);
    }
    const CHUNK: usize = 1 << 20;
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut pos = 0u64;
    while pos < len {
        // The next offset where either file has data; before it both are holes.
        let next = next_data(a, pos, len)?.min(next_data(b, pos, len)?);
        if next >= len {
            break;
        }
        let n = usize::try_from(len - next).unwrap_or(CHUNK).min(CHUNK);
        a.read_exact_at(&mut x[..n], next)?;
        b.read_exact_at(&mut y[..n], next)?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        pos = next + n as u64;
    }
    Ok(true)
}

/// The first offset at or after `pos` where `f` has data (`len` when none); a
/// filesystem without `SEEK_DATA` answers `pos` (all data).
fn next_data(f: &std::fs::File, pos: u64, len: u64) -> io::Result<u64> {
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
        Ok(off) => Ok(off),
        Err(rustix::io::Errno::NXIO) => Ok(len),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(pos),
        Err(e) => Err(e.into()),
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// A path's key in the maps of this module ([`Keyed`]): the first 16 bytes of the
/// path's own sha256. No copy of the path is kept: the listings already hold one
/// each; two paths of one tree with the same key would take 2^64 tries to make on
/// purpose.
pub type PathKey = [u8; 16];

/// The key of `path` (dest-relative bytes).
pub fn path_key(path: &[u8]) -> PathKey {
    let mut key = [0; 16];
    key.copy_from_slice(&Sha256::digest(path)[..16]);
    key
}

/// A key as a number that sorts as its bytes do (one comparison, not a byte loop).
fn order(key: &PathKey) -> u128 {
    u128::from_be_bytes(*key)
}

/// Values by path, each path kept as its [`PathKey`] only: a sorted vector, found by
/// binary search, one allocation whatever the number of paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed<V>(Vec<(PathKey, V)>);

impl<V> Default for Keyed<V> {
    fn default() -> Keyed<V> {
        Keyed(Vec::new())
    }
}

impl<V: Copy> Keyed<V> {
    /// From `(key, value)` pairs in any order whose keys are distinct: sorted in place
    /// (no buffer beside the list, as [`Keyed::from_unsorted`]'s stable sort takes).
    /// Of a key given twice, either value stays.
    pub fn from_distinct(mut list: Vec<(PathKey, V)>) -> Keyed<V> {
        list.sort_unstable_by_key(|a| order(&a.0));
        list.dedup_by_key(|a| a.0);
        list.shrink_to_fit();
        Keyed(list)
    }

    /// From `(key, value)` pairs in any order; a key given twice keeps its last.
    pub fn from_unsorted(mut list: Vec<(PathKey, V)>) -> Keyed<V> {
        // Stable: of equal keys, the last one given stays last.
        list.sort_by_key(|a| order(&a.0));
        let mut kept = 0;
        for i in 0..list.len() {
            if kept > 0 && list[kept - 1].0 == list[i].0 {
                list[kept - 1] = list[i];
            } else {
                list[kept] = list[i];
                kept += 1;
            }
        }
        list.truncate(kept);
        list.shrink_to_fit();
        Keyed(list)
    }

    /// Where `key` stands (as `binary_search` answers). The keys are a hash's bytes,
    /// spread evenly: a few rounds of interpolation on their first 8 bytes narrow the
    /// search to a handful of entries (each probe of a plain binary search over a
    /// large list is a cache miss), then a binary search ends it; uneven keys cost at
    /// most those few rounds more.
    fn search(&self, key: &PathKey) -> std::result::Result<usize, usize> {
        let list = &self.0;
        let want = order(key);
        let (mut lo, mut hi) = (0usize, list.len());
        // Every key of `list[lo..hi]` lies in `[lo_k, hi_k]`.
        let (mut lo_k, mut hi_k) = (0u128, u128::MAX);
        for _ in 0..4 {
            if hi - lo <= 8 {
                break;
            }
            let n = (hi - lo) as u128;
            // Both under 2^64 (`lo_k <= want <= hi_k`): the product fits.
            let off = ((want - lo_k) >> 64) * n / (((hi_k - lo_k) >> 64) + 1);
            let g = lo + usize::try_from(off).unwrap_or(usize::MAX).min(hi - lo - 1);
            let at = order(&list[g].0);
            match at.cmp(&want) {
                std::cmp::Ordering::Equal => return Ok(g),
                std::cmp::Ordering::Less => (lo, lo_k) = (g + 1, at),
                std::cmp::Ordering::Greater => (hi, hi_k) = (g, at),
            }
        }
        match list[lo..hi].binary_search_by(|(k, _)| order(k).cmp(&want)) {
            Ok(i) => Ok(lo + i),
            Err(i) => Err(lo + i),
        }
    }

    /// The value of `path`, when there is one.
    pub fn get(&self, path: &[u8]) -> Option<&V> {
        self.get_key(&path_key(path))
    }

    /// The value of the path whose key is `key`.
    pub fn get_key(&self, key: &PathKey) -> Option<&V> {
        let i = self.search(key).ok()?;
        Some(&self.0[i].1)
    }

    /// The value of the path whose key is `key`, with where it stands among all (see
    /// [`Keyed::position`]): one search for both.
    pub fn get_with_position(&self, key: &PathKey) -> Option<(usize, &V)> {
        let i = self.search(key).ok()?;
        Some((i, &self.0[i].1))
    }

    /// Where the value of `key` stands among all (0 to `len() - 1`), if it has one.
    pub fn position(&self, key: &PathKey) -> Option<usize> {
        self.search(key).ok()
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &PathKey) -> bool {
        self.search(key).is_ok()
    }

    /// Keeps only the paths whose key `keep` answers true for; the room of the others
    /// is given back.
    pub fn retain_keys(&mut self, mut keep: impl FnMut(&PathKey) -> bool) {
        self.0.retain(|(k, _)| keep(k));
        self.0.shrink_to_fit();
    }

    /// Every key with its value, by key.
    pub fn iter(&self) -> impl Iterator<Item = &(PathKey, V)> {
        self.0.iter()
    }

    /// How many paths have a value.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The digest of every regular file an unpack listed, by path (dest-relative bytes),
/// each path kept as its key ([`Keyed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests(Keyed<Digest>);

impl Digests {
    /// From `(path, digest)` pairs in any order; a path given twice keeps its last.
    pub fn from_unsorted(list: impl IntoIterator<Item = (Box<[u8]>, Digest)>) -> Digests {
        let list = list.into_iter();
        let mut out: Vec<(PathKey, Digest)> = Vec::with_capacity(list.size_hint().0);
        // Each path is freed as soon as its key is made.
        out.extend(list.map(|(p, d)| (path_key(&p), d)));
        Digests(Keyed::from_unsorted(out))
    }

    /// From `(key, digest)` pairs in any order; a key given twice keeps its last.
    pub fn from_keyed(list: Vec<(PathKey, Digest)>) -> Digests {
        Digests(Keyed::from_unsorted(list))
    }

    /// From `(key, digest)` pairs of distinct keys ([`Keyed::from_distinct`]).
    pub fn from_distinct(list: Vec<(PathKey, Digest)>) -> Digests {
        Digests(Keyed::from_distinct(list))
    }

    /// The digest of the file at `path`, when one is known.
    pub fn get(&self, path: &[u8]) -> Option<&Digest> {
        self.0.get(path)
    }

    /// The digest of the file whose path has the key `key`.
    pub fn get_key(&self, key: &PathKey) -> Option<&Digest> {
        self.0.get_key(key)
    }

    /// How many digests there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// When dest's file was indexed: its size and mtime to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
}

impl From<&Meta> for Stamp {
    fn from(m: &Meta) -> Stamp {
        Stamp {
            size: m.size,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
        }
    }
}

/// What the deploy index of dest says of its regular files' content: each file's
/// digest with the size and mtime it had when indexed, by path key ([`Keyed`]). A
/// digest answers for a file only while it still has them (else the file was changed
/// since, and is read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known(Keyed<(Stamp, Digest)>);

impl Known {
    /// From an index's regular files with their digests, in any order.
    pub fn new<'a>(files: impl Iterator<Item = (&'a [u8], &'a Meta, Digest)>) -> Known {
        let list = files
            .map(|(p, m, d)| (path_key(p), (Stamp::from(m), d)))
            .collect();
        Known(Keyed::from_unsorted(list))
    }

    /// From `(key, stamp, digest)` of an index's regular files, in any order.
    pub fn from_keyed(files: Vec<(PathKey, Stamp, Digest)>) -> Known {
        // The same 72 bytes a file, rearranged in place.
        let list = files.into_iter().map(|(k, s, d)| (k, (s, d))).collect();
        Known(Keyed::from_unsorted(list))
    }

    /// The indexed digest of the file at `path`, when dest's file there (`now`, as
    /// listed or `lstat`-ed now) still has the size and mtime it was indexed with.
    pub fn get(&self, path: &[u8], now: &Meta) -> Option<&Digest> {
        let (stamp, digest) = self.0.get(path)?;
        (*stamp == Stamp::from(now)).then_some(digest)
    }

    /// Keeps only the files whose path key `keep` answers true for (the others are
    /// not asked about any more).
    pub fn retain_keys(&mut self, keep: impl FnMut(&PathKey) -> bool) {
        self.0.retain_keys(keep);
    }

    /// How many files the index has a digest of.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An index's digests ([`Known`]) read on a thread of their own while the deploy goes
/// on (a delta deploy reads its table meanwhile), waited for when first asked.
pub struct KnownLater {
    reading: std::sync::Mutex<Option<std::thread::JoinHandle<Option<Known>>>>,
    read: std::sync::OnceLock<Option<Arc<Known>>>,
}

impl KnownLater {
    /// `read` started on a thread of its own. When no thread can be started there
    /// are no digests (files are then compared by their bytes).
    pub fn start(read: impl FnOnce() -> Option<Known> + Send + 'static) -> KnownLater {
        let reading = std::thread::Builder::new()
            .name("stretcher-index".into())
            .spawn(read)
            .ok();
        KnownLater {
            reading: std::sync::Mutex::new(reading),
            read: std::sync::OnceLock::new(),
        }
    }

    /// Digests read already (or none).
    pub fn ready(known: Option<Arc<Known>>) -> KnownLater {
        KnownLater {
            reading: std::sync::Mutex::new(None),
            read: std::sync::OnceLock::from(known),
        }
    }

    /// The digests, waited for. A reader that panicked gave none (files are then
    /// compared by their bytes).
    pub fn get(&self) -> Option<&Arc<Known>> {
        self.read
            .get_or_init(|| {
                // A poisoned slot still holds the handle (or none).
                let reading = self
                    .reading
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                reading.and_then(|h| h.join().ok().flatten()).map(Arc::new)
            })
            .as_ref()
    }

    /// The digests taken out, waited for (none are left here).
    pub fn take(&mut self) -> Option<Arc<Known>> {
        self.get();
        self.read.take().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_keys_are_sorted_in_place_and_found() {
        let list: Vec<(PathKey, u32)> = (0..1000u32)
            .map(|i| (path_key(format!("p{i}").as_bytes()), i))
            .collect();
        let k = Keyed::from_distinct(list.clone());
        assert_eq!(k, Keyed::from_unsorted(list));
        for i in [0u32, 7, 999] {
            assert_eq!(k.get(format!("p{i}").as_bytes()), Some(&i));
        }
        assert_eq!(k.get(b"p1000"), None);
    }

    #[test]
    fn the_search_answers_as_a_binary_search_for_even_and_uneven_keys() {
        let even: Vec<PathKey> = (0..5000u32)
            .map(|i| path_key(format!("f{i}").as_bytes()))
            .collect();
        // Uneven: most keys crowded at the low end, a few far apart, equal first
        // 8 bytes, and the extremes.
        let mut uneven: Vec<PathKey> = (0..3000u128)
            .map(|i| (i * 7).to_be_bytes())
            .chain((0..200u128).map(|i| (u128::MAX / 200 * i).to_be_bytes()))
            .chain((0..50u128).map(|i| ((5u128 << 64) + i).to_be_bytes()))
            .chain([u128::MAX.to_be_bytes()])
            .collect();
        uneven.sort_unstable();
        uneven.dedup();
        for keys in [even, uneven] {
            let k = Keyed::from_distinct(keys.iter().map(|k| (*k, 0u8)).collect());
            let sorted: Vec<u128> = k.iter().map(|(key, _)| order(key)).collect();
            // Every key present, its neighbours absent or present, as binary search says.
            for key in &keys {
                let v = order(key);
                for probe in [v.wrapping_sub(1), v, v.wrapping_add(1)] {
                    assert_eq!(
                        k.search(&probe.to_be_bytes()),
                        sorted.binary_search(&probe),
                        "{probe:#x}"
                    );
                }
            }
        }
        assert_eq!(Keyed::<u8>::default().search(&[0; 16]), Err(0));
    }
    #[test]
    fn digests_keep_the_last_of_a_path_and_known_needs_the_same_stamp() {
        let d = Digests::from_unsorted(vec![
            (b"b".as_slice().into(), [2; 32]),
            (b"a".as_slice().into(), [1; 32]),
            (b"b".as_slice().into(), [3; 32]),
        ]);
        assert_eq!(d.len(), 2);
        assert_eq!(d.get(b"a"), Some(&[1; 32]));
        assert_eq!(d.get(b"b"), Some(&[3; 32]));
        assert_eq!(d.get(b"c"), None);

        let meta = |size, mtime, mtime_nsec| Meta {
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_nsec,
            size,
            mtime,
        };
        let m = meta(3, 10, 5);
        let k = Known::new([(&b"f"[..], &m, [9; 32])].into_iter());
        assert_eq!(k.get(b"f", &meta(3, 10, 5)), Some(&[9; 32]));
        assert_eq!(k.get(b"f", &meta(3, 10, 6)), None, "touched since");
        assert_eq!(k.get(b"f", &meta(4, 10, 5)), None);
        assert_eq!(k.get(b"g", &m), None);
    }

    #[test]
    fn sparse_files_compare_by_their_data() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().unwrap();
        let make = |name: &str, at: u64, data: &[u8]| {
            let f = std::fs::File::create(t.path().join(name)).unwrap();
            f.set_len(1 << 30).unwrap();
            f.write_all_at(data, at).unwrap();
            std::fs::File::open(t.path().join(name)).unwrap()
        };
        let a = make("a", 512 << 20, b"data");
        let b = make("b", 512 << 20, b"data");
        let c = make("c", 512 << 20, b"date");
        let d = make("d", 0, b"\0\0\0\0");
        assert!(same_bytes(&a, &b).unwrap());
        assert!(!same_bytes(&a, &c).unwrap());
        // explicit zeros and a hole are the same bytes
        let e = make("e", 0, b"");
        assert!(same_bytes(&d, &e).unwrap());
        assert!(!same_bytes(&a, &e).unwrap());
    }

    #[test]
    fn the_digest_is_sha256() {
        let mut buf = [0u8; 3];
        let d = of_reader(&mut &b"abc"[..], &mut buf).unwrap();
        assert_eq!(
            to_hex(&d),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digests_read_later_are_waited_for_once_and_taken_whole() {
        let meta = Meta {
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_nsec: 0,
            size: 1,
            mtime: 1,
        };
        let known = move || Known::new([(&b"a"[..], &meta, [1; 32])].into_iter());
        let mut later = KnownLater::start(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            Some(known())
        });
        assert_eq!(later.get().map(|k| k.len()), Some(1));
        assert!(later.get().is_some());
        assert!(later.take().is_some());
        assert!(later.get().is_none());
        // A reader that panics gives no digests, never a hang.
        let panicked = KnownLater::start(|| panic!("reader"));
        assert!(panicked.get().is_none());
        assert!(KnownLater::ready(None).get().is_none());
    }
}
