//! rsync's quick check, written once: [`quick_check`] decides "maybe the same
//! content" for the plan (staging × dest) and for [`DestProbe`], the unpack-time probe
//! against `dest` (or the live release) that spares writing unchanged files to
//! staging. Neither trusts it alone (SPEC §21): the plan asks the digests (see
//! `plan`), the unpack compares a found file's content with the entry's, by the
//! digest the probe's index holds ([`DestProbe::with_known`]) or by its bytes.
//!
//! It must never write anything; the probe only reads the tree it was given.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Kept;
use crate::at::Tree;
use crate::digest::{Digest, Known, KnownLater};
use crate::entry::{Kind, Meta};
use rustix::fs::Stat;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

/// What the quick check compares: the size, and the mtime in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quick {
    /// Size in bytes (a sparse file's logical size).
    pub size: u64,
    /// Modification time, whole seconds.
    pub mtime: i64,
}

impl From<&Meta> for Quick {
    fn from(m: &Meta) -> Quick {
        Quick {
            size: m.size,
            mtime: m.mtime,
        }
    }
}

impl From<&Kept> for Quick {
    fn from(k: &Kept) -> Quick {
        Quick {
            size: k.size,
            mtime: k.mtime,
        }
    }
}

impl From<&fs::Metadata> for Quick {
    fn from(m: &fs::Metadata) -> Quick {
        Quick {
            size: m.size(),
            mtime: m.mtime(),
        }
    }
}

/// rsync's quick check: two regular files have the same content when their sizes and
/// mtime *seconds* are equal (rsync's default `--modify-window=0` ignores nanoseconds).
pub fn quick_check(a: impl Into<Quick>, b: impl Into<Quick>) -> bool {
    a.into() == b.into()
}

/// The unpack-time quick check against an existing tree (`dest`, or the live release):
/// a regular file equal to the entry by [`quick_check`], mode (and owner) is not
/// written. Only reads the tree, through its descriptor ([`Tree`]): a file is found
/// only through real directories, never through a symlink (which the sync would
/// replace), also one swapped in while the unpack runs.
pub struct DestProbe {
    /// `None` when the tree could not be opened (absent): nothing is found.
    tree: Option<Tree>,
    /// What the deploy index says of the tree's files' content (perhaps still being
    /// read).
    known: Arc<KnownLater>,
    /// A file never found (the `exclude_from` rule file: always staged).
    never: Option<PathBuf>,
}

impl DestProbe {
    /// A probe of the tree at `root`; `follow`: a symlink at `root` itself is followed
    /// (rsync's `DEST/`), else refused. A root that cannot be opened, or that is empty
    /// (a first deploy: nothing to look up for each file), finds nothing.
    pub fn new(root: &Path, follow: bool) -> DestProbe {
        let tree = Tree::open(root, follow)
            .ok()
            .filter(|t| !t.is_empty().unwrap_or(true));
        DestProbe {
            tree,
            known: Arc::new(KnownLater::ready(None)),
            never: None,
        }
    }

    /// The probe, with the digests the index of the tree holds: a found file whose
    /// size and mtime are still the indexed ones is judged by its indexed digest
    /// (else by its bytes).
    pub fn with_known(self, known: Option<Arc<Known>>) -> DestProbe {
        self.with_known_later(Arc::new(KnownLater::ready(known)))
    }

    /// [`DestProbe::with_known`], the digests perhaps still being read (waited for
    /// when first asked).
    pub fn with_known_later(mut self, known: Arc<KnownLater>) -> DestProbe {
        self.known = known;
        self
    }

    /// The probe, never finding the file `rel` (it is always written to staging).
    pub fn never_reusing(mut self, rel: Option<PathBuf>) -> DestProbe {
        self.never = rel;
        self
    }
}

impl crate::unpack::Unchanged for DestProbe {
    fn find(&mut self, rel: &Path, want: &Kept) -> Option<(PathBuf, Stat)> {
        if self.never.as_deref() == Some(rel) {
            return None;
        }
        let st = self.tree.as_ref()?.lstat(rel).ok()?;
        let m = Meta::from(&st);
        let same = m.kind() == Kind::File
            && quick_check(&m, want)
            && m.perms() == want.mode
            && want.owner.is_none_or(|(u, g)| (m.uid, m.gid) == (u, g));
        same.then(|| (rel.to_path_buf(), st))
    }

    fn digest(&self, rel: &Path, found: &Stat) -> Option<Digest> {
        let known = self.known.get()?;
        known
            .get(rel.as_os_str().as_bytes(), &Meta::from(found))
            .copied()
    }

    fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }

    fn another(&self) -> Option<Box<dyn crate::unpack::Unchanged + Send>> {
        let tree = self.tree.as_ref()?.try_clone().ok()?;
        Some(Box::new(DestProbe {
            tree: Some(tree),
            known: self.known.clone(),
            never: self.never.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_ignores_nanoseconds_and_bytes() {
        let meta = |size, mtime, mtime_nsec| Meta {
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_nsec,
            size,
            mtime,
        };
        assert!(quick_check(&meta(3, 10, 0), &meta(3, 10, 999)));
        assert!(!quick_check(&meta(3, 10, 0), &meta(4, 10, 0)));
        assert!(!quick_check(&meta(3, 10, 0), &meta(3, 11, 0)));
        let kept = Kept {
            size: 3,
            mtime: 10,
            mode: 0o600,
            owner: None,
        };
        assert!(quick_check(&kept, &meta(3, 10, 5)));
    }

    #[test]
    fn the_probe_never_looks_through_a_symlink() {
        use crate::unpack::Unchanged;
        let dest = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir(dest.path().join("d")).unwrap();
        for dir in [dest.path().join("d"), other.path().to_path_buf()] {
            std::fs::write(dir.join("f"), b"abc").unwrap();
            let t = filetime::FileTime::from_unix_time(10, 0);
            filetime::set_file_mtime(dir.join("f"), t).unwrap();
        }
        std::os::unix::fs::symlink(other.path(), dest.path().join("l")).unwrap();
        let mode = std::fs::metadata(dest.path().join("d/f")).unwrap().mode() & 0o7777;
        let want = Kept {
            size: 3,
            mtime: 10,
            mode,
            owner: None,
        };
        let mut probe = DestProbe::new(dest.path(), true);
        let (rel, _) = probe.find(Path::new("d/f"), &want).unwrap();
        assert_eq!(rel, Path::new("d/f"));
        assert!(probe.find(Path::new("l/f"), &want).is_none());
        assert!(probe.tree().is_some());
        // An absent dest finds nothing, nor does an empty one (which is not looked
        // into at all).
        let mut none = DestProbe::new(&dest.path().join("absent"), true);
        assert!(none.find(Path::new("d/f"), &want).is_none());
        std::fs::create_dir(dest.path().join("empty")).unwrap();
        let empty = DestProbe::new(&dest.path().join("empty"), true);
        assert!(empty.tree().is_none() && empty.another().is_none());
        assert!(Tree::open(&dest.path().join("empty"), false)
            .unwrap()
            .is_empty()
            .unwrap());
        assert!(!Tree::open(dest.path(), false).unwrap().is_empty().unwrap());
    }

    /// A tar of regular files `(name, bytes)` (mtime 10, mode 0644) and hard links
    /// `(name, None, target)`.
    fn tar_of(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(10);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        for (name, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o644);
            h.set_mtime(10);
            h.set_entry_type(tar::EntryType::Link);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn put(dir: &Path, name: &str, data: &[u8]) {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        std::fs::set_permissions(&p, perm).unwrap();
        filetime::set_file_mtime(&p, filetime::FileTime::from_unix_time(10, 0)).unwrap();
    }

    /// The probe reuses a file only when its content is the entry's (SPEC §21): by
    /// the index's digest when dest's file is as indexed, else by its bytes; large
    /// files (past the held buffer) too; a hard link to a stale file gets the
    /// archive's bytes; the rule file is never reused.
    #[test]
    fn the_probe_reuses_only_files_of_the_same_content() {
        use crate::digest::{of_reader, Known};
        use crate::unpack::{unpack, UnpackOptions};
        let big_new: Vec<u8> = (0..9u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut big_old = big_new.clone();
        big_old[5 << 20] ^= 1;
        let files: &[(&str, &[u8])] = &[
            ("same", b"new!"),
            ("stale", b"new!"),
            ("big-same", &big_new),
            ("big-stale", &big_new),
            ("rules", b"- x\n"),
            ("indexed", b"new!"),
        ];
        let archive = tar_of(files, &[("link", "stale")]);
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        std::fs::create_dir(&dest).unwrap();
        for (name, data) in [
            ("same", &b"new!"[..]),
            ("stale", b"old!"),
            ("big-same", &big_new),
            ("big-stale", &big_old),
            ("rules", b"- x\n"),
            ("indexed", b"old!"),
        ] {
            put(&dest, name, data);
        }
        let h = |b: &[u8]| of_reader(&mut &b[..], &mut [0u8; 64]).unwrap();
        // The index (wrongly, as after tampering that kept size and mtime to the
        // nanosecond) says `indexed` holds the new bytes: it is trusted.
        let st = std::fs::symlink_metadata(dest.join("indexed")).unwrap();
        let m = Meta::from(&st);
        let known = Known::new([(&b"indexed"[..], &m, h(b"new!"))].into_iter());
        let mut probe = DestProbe::new(&dest, true)
            .with_known(Some(Arc::new(known)))
            .never_reusing(Some(PathBuf::from("rules")));
        let into = t.path().join("s");
        std::fs::create_dir(&into).unwrap();
        let staged = unpack(
            &archive[..],
            &into,
            &UnpackOptions::default(),
            Some(&mut probe),
        )
        .unwrap();
        let reused: Vec<_> = staged
            .reused
            .paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(reused, ["big-same", "indexed", "same"]);
        for name in ["big-same", "indexed", "same"] {
            assert!(!into.join(name).exists(), "{name} left in dest");
        }
        assert_eq!(std::fs::read(into.join("stale")).unwrap(), b"new!");
        assert_eq!(std::fs::read(into.join("link")).unwrap(), b"new!");
        assert_eq!(std::fs::read(into.join("big-stale")).unwrap(), big_new);
        assert_eq!(std::fs::read(into.join("rules")).unwrap(), b"- x\n");
        // every regular file's digest, written or reused, hard link included
        for (name, data) in files.iter().chain([&("link", &b"new!"[..])]) {
            assert_eq!(
                staged.digests.get(name.as_bytes()),
                Some(&h(data)),
                "{name}"
            );
        }
    }
}
