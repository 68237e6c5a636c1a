//! `Staged::reused`: the regular files an unpack left out of staging because its
//! [`Unchanged`](super::Unchanged) probe found them as the archive has them, each with
//! the archive's attributes.
//!
//! Compact on purpose (on an update nearly every file of the archive is here): the
//! attributes are kept by the path's key ([`digest::Keyed`], 48 bytes a file, the
//! sync's walk of dest holds the paths), and the paths themselves only front-coded, in
//! the order they were found, for the rare question of which files they were (a kept
//! file missing from dest's walk: [`Reused::paths`]). Never touches the filesystem.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::FileAttrs;
use crate::digest::{self, Keyed, PathKey};

/// The files an unpack left out of staging, found unchanged (see the module
/// documentation), by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reused {
    /// The archive's attributes of each file, by its path's key.
    attrs: Keyed<FileAttrs>,
    /// Every path listed, front-coded in the order found (a path listed again, or
    /// dropped since, may be there too: only a path whose key is in `attrs` counts).
    names: Vec<u8>,
}

impl Reused {
    /// The archive's attributes of the reused file at `rel`, if it is one.
    pub fn get(&self, rel: &Path) -> Option<&FileAttrs> {
        self.attrs.get(rel.as_os_str().as_bytes())
    }

    /// The same, by the path's key ([`digest::path_key`]).
    pub fn get_key(&self, key: &PathKey) -> Option<&FileAttrs> {
        self.attrs.get_key(key)
    }

    /// Where the reused file at `rel` stands among all of them (0 to `len() - 1`),
    /// if it is one: an index for a caller's own per-file marks.
    pub fn position(&self, rel: &Path) -> Option<usize> {
        self.attrs
            .position(&digest::path_key(rel.as_os_str().as_bytes()))
    }

    /// [`Reused::get`] and [`Reused::position`] of `rel` at once (its key computed and
    /// searched once).
    pub fn get_with_position(&self, rel: &Path) -> Option<(usize, &FileAttrs)> {
        self.attrs
            .get_with_position(&digest::path_key(rel.as_os_str().as_bytes()))
    }

    /// How many files were reused.
    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    /// Every reused file's path, sorted, each once: decoded from the front-coded
    /// names (a walk of them all; for the rare cases and for tests).
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out = Vec::with_capacity(self.len());
        let mut name = Vec::new();
        let mut at = 0;
        while let Some(next) = next_name(&self.names, at, &mut name) {
            at = next;
            if self.attrs.contains_key(&digest::path_key(&name)) {
                out.push(PathBuf::from(OsStr::from_bytes(&name)));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Reads the name starting at `at` in `names` into `name` (which holds the one
/// before it); the position after it, or `None` at the end.
fn next_name(names: &[u8], at: usize, name: &mut Vec<u8>) -> Option<usize> {
    let (shared, at) = varint(names, at)?;
    let (len, at) = varint(names, at)?;
    let end = at.checked_add(len)?;
    let tail = names.get(at..end)?;
    name.truncate(shared);
    name.extend_from_slice(tail);
    Some(end)
}

/// The varint at `at` in `bytes`, with the position after it.
fn varint(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(at)?;
        at += 1;
        v |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((v, at));
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// [`Reused`] while the unpack fills it: a hash map by key, so that a later entry of
/// the same path drops its reuse.
#[derive(Debug, Default)]
pub(super) struct Building {
    attrs: HashMap<PathKey, FileAttrs>,
    /// Files the caller knows the tree holds (`KnownFile`), listed after the stream's
    /// own: each path once and none of the stream's, so a vector (a map of 100,000
    /// takes 6.4 MB, this 4.7).
    adopted: Vec<(PathKey, FileAttrs)>,
    names: Vec<u8>,
    /// The last name added (the next one is coded against it).
    last: Vec<u8>,
}

impl Building {
    /// `rel` is reused, with the archive's attributes `attrs`.
    pub(super) fn insert(&mut self, rel: &Path, attrs: FileAttrs) {
        let path = rel.as_os_str().as_bytes();
        if self.attrs.insert(digest::path_key(path), attrs).is_some() {
            // Listed already (a duplicate member found unchanged again).
            return;
        }
        self.name(path);
    }

    /// Room for `n` adopted files (and the map's, which the listing joins).
    pub(super) fn reserve_adopted(&mut self, n: usize) {
        self.adopted.reserve_exact(n + self.attrs.len());
    }

    /// `rel` (whose `digest::path_key` is `key`), a file the caller knows (see
    /// `adopted`), is reused with `attrs`.
    pub(super) fn adopt(&mut self, rel: &Path, key: PathKey, attrs: FileAttrs) {
        let path = rel.as_os_str().as_bytes();
        self.adopted.push((key, attrs));
        self.name(path);
    }

    /// `path` added to the front-coded names.
    fn name(&mut self, path: &[u8]) {
        let shared = self
            .last
            .iter()
            .zip(path)
            .take_while(|(a, b)| a == b)
            .count();
        put_varint(&mut self.names, shared);
        put_varint(&mut self.names, path.len() - shared);
        self.names.extend_from_slice(&path[shared..]);
        self.last.truncate(shared);
        self.last.extend_from_slice(&path[shared..]);
    }

    /// `rel` is not reused (any more).
    pub(super) fn remove(&mut self, rel: &Path) {
        if self.is_empty() {
            return;
        }
        let key = digest::path_key(rel.as_os_str().as_bytes());
        self.attrs.remove(&key);
        // Adopted files are dropped only as the one just adopted fails.
        if self.adopted.last().is_some_and(|(k, _)| *k == key) {
            self.adopted.pop();
        }
    }

    /// Whether `rel` is reused (of the adopted files, the one last adopted).
    pub(super) fn contains(&self, rel: &Path) -> bool {
        if self.is_empty() {
            return false;
        }
        let key = digest::path_key(rel.as_os_str().as_bytes());
        self.attrs.contains_key(&key) || self.adopted.last().is_some_and(|(k, _)| *k == key)
    }

    /// Whether nothing is reused.
    pub(super) fn is_empty(&self) -> bool {
        self.attrs.is_empty() && self.adopted.is_empty()
    }

    /// The listing, sorted by key; the map is freed as it is read.
    pub(super) fn finish(self) -> Reused {
        let mut names = self.names;
        names.shrink_to_fit();
        // A map's keys, and adopted files' (each path once, none of the stream's):
        // distinct.
        let mut list = self.adopted;
        list.extend(self.attrs);
        Reused {
            attrs: Keyed::from_distinct(list),
            names,
        }
    }
}

/// A listing made by hand (tests, benches): `(path, attributes)`, a path given twice
/// keeps its last.
impl FromIterator<(PathBuf, FileAttrs)> for Reused {
    fn from_iter<I: IntoIterator<Item = (PathBuf, FileAttrs)>>(iter: I) -> Reused {
        let mut b = Building::default();
        for (rel, attrs) in iter {
            b.remove(&rel);
            b.insert(&rel, attrs);
        }
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(size: u64) -> FileAttrs {
        FileAttrs {
            size,
            mtime: 10,
            mode: 0o644,
            owner: None,
        }
    }

    #[test]
    fn paths_come_back_once_and_only_while_reused() {
        let mut b = Building::default();
        for (i, p) in ["a/b/c", "a/b/d", "a/x", "z", "a/b/c"].iter().enumerate() {
            b.insert(Path::new(p), attrs(i as u64));
        }
        b.remove(Path::new("a/x"));
        assert!(b.contains(Path::new("a/b/d")));
        assert!(!b.contains(Path::new("a/x")));
        let r = b.finish();
        assert_eq!(r.len(), 3);
        // a path listed twice keeps its last attributes
        assert_eq!(r.get(Path::new("a/b/c")), Some(&attrs(4)));
        assert_eq!(r.get(Path::new("a/x")), None);
        let key = digest::path_key(b"z");
        assert_eq!(r.get_key(&key), Some(&attrs(3)));
        let want: Vec<PathBuf> = ["a/b/c", "a/b/d", "z"].iter().map(PathBuf::from).collect();
        assert_eq!(r.paths(), want);
        let by_hand: Reused = [(PathBuf::from("q"), attrs(1)), ("q".into(), attrs(2))]
            .into_iter()
            .collect();
        assert_eq!(by_hand.get(Path::new("q")), Some(&attrs(2)));
        assert_eq!(by_hand.paths(), vec![PathBuf::from("q")]);
    }
}
