//! Unpacks a tar, tar.gz, tar.zst, tar.xz or tar.bz2 stream into the private staging
//! directory (SPEC §7, §6, §10).
//!
//! Its one job: turn archive bytes into a tree below `into`, applying the entry path
//! policy (leading `/` stripped with a warning, `..` refused, never written through a
//! symlink) and the archive's modes, mtimes and — as root — owners. `into` is an open
//! directory ([`crate::at::Tree`], SPEC §17): every node is made, changed, stat-ed and
//! removed relative to its descriptor, never by a joined path, so a staging directory
//! renamed away and replaced by a symlink while the unpack runs is still the one
//! written (and the symlink's target never is).
//!
//! It must never create, change or follow anything outside `into`, never follow a
//! symlink that an entry created or another user swapped in, and never take a truncated or corrupt stream for a
//! shorter tree: the whole input is read to its end (the gzip CRC checked) and must end
//! at a member boundary. A stream that stops at a boundary without the end-of-archive
//! marker is accepted with a warning, as GNU tar accepts it (SPEC §7): the manifest's
//! checksum, checked before the sync, is what proves the stream whole.
//!
//! It reads archives as GNU tar 1.34 does: the format is sniffed by content and goes
//! through one decode pipeline (`format::decoder`); tar-rs parses the headers, patched
//! in `vendor/tar` where it read differently from GNU tar (vendor/tar/PATCHES.md); this
//! module adds the rest: sparse members (old-GNU `S`, pax 0.0, 0.1 and 1.0) written
//! with holes, GNU base-256 negative times, `D` dump directories, hard link targets
//! with a leading `/`, and a missing end-of-archive marker accepted with a warning.
//!
//! It does not know `dest`: rsync's quick check reaches it as an [`Unchanged`] probe
//! that the caller wires.
//!
//! One file a job:
//! - `format` — the format by content, and the decoders (gzip members and padding,
//!   zstd frames incl. skippable ones, xz streams, bzip2 streams);
//! - `pipe` — the reading / decoding threads, the bounded chunk channel to the parser,
//!   and which thread's error is told;
//! - `tar_read` — the entry loop over tar-rs, the end of the archive, header errors;
//! - `gnu` — what GNU tar reads that tar-rs does not: pax times and owner names, a
//!   member's real name and type, sparse layouts (the 1.0 map read from the data),
//!   base-256 header mtimes;
//! - `path` — the entry path policy (pure): `..`, absolute names, NUL, link targets;
//! - `extract` — the `Extractor`, which writes staging, one entry at a time (split by
//!   kind of node, see its docs);
//! - `errors` — the unpack's errors, one line each with the archive or the entry;
//! - `reused` — the listing of the files left out of staging (found unchanged), by
//!   path key.

mod errors;
mod extract;
mod format;
mod gnu;
mod inflate;
mod members;
mod path;
mod pipe;
mod reused;
mod tar_read;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::at::Tree;
use crate::digest::{Digest, Digests};
use crate::entry::Entry;
use crate::Result;

pub use self::reused::Reused;

use self::errors::corrupt;
use self::format::{sniff, MAGIC_LEN};
use self::pipe::read_up_to;

/// How to unpack.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Set owners from the archive (running as root): by user/group NAME when it
    /// exists on this host, else the numeric id — as GNU tar does.
    pub same_owner: bool,
    /// The archive's URL as the user wrote it, for error messages.
    pub label: String,
    /// With an [`Unchanged`] probe: a file it finds unchanged is hard-linked from the
    /// path it answers into `into` (and still listed in `Staged::reused`) instead of
    /// left out, so `into` is a whole tree sharing unchanged inodes with that tree (the
    /// `release` strategy, SPEC §14). A link that cannot be made (another filesystem,
    /// too many links) is written. Also fills `Staged::written`.
    pub link_unchanged: bool,
    /// Fill `Staged::written` (without `link_unchanged`: only when the unpack makes no
    /// hard link, so that it lists `into` exactly as a walk of it would), so that the
    /// sync lists the staged tree without walking it.
    pub list_written: bool,
    /// The stream is a packed archive's (SPEC §18) whose every byte the manifest's
    /// `checksum` verifies: the files written are not hashed, their digests
    /// (`Staged::digests`) are the table's, read where the stream holds it, after the
    /// tar's end (a file the table does not describe as written, by path, size and a
    /// single entry, is left without a digest: compared by its bytes when next asked).
    pub digests_from_table: bool,
}

/// A regular file entry's attributes as the unpack would write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttrs {
    /// The file's size as tar extracts it (a sparse member's logical size).
    pub size: u64,
    /// Modification time, whole seconds.
    pub mtime: i64,
    /// Permission bits (& 0o7777).
    pub mode: u32,
    /// The archive's owner when owners are preserved.
    pub owner: Option<(u32, u32)>,
}

/// Asked before each regular file entry is written: rsync's quick check done while
/// unpacking, against a tree the unpack does not know (deploy wires it to
/// `sync::quick`, against `dest` or the live release), made exact by content (SPEC
/// §21): a file it finds is reused only when its content is the entry's too.
pub trait Unchanged {
    /// The path of an existing regular file equal to the entry at `rel` by size,
    /// mtime seconds, mode (and owner when given), with the lstat that found it: a
    /// candidate. The unpack reads the entry's data, hashes it and compares it with
    /// [`Unchanged::digest`], else with the found file's own bytes
    /// ([`Unchanged::open`]); only when equal is the entry not written but listed in
    /// `Staged::reused`. Any doubt must answer `None` ("write it"). With
    /// [`Unchanged::tree`], the path is relative to that tree.
    fn find(&mut self, rel: &Path, attrs: &FileAttrs) -> Option<(PathBuf, rustix::fs::Stat)>;

    /// The content digest the probe's index holds for the file `find` answered for
    /// `rel` (`found`: its lstat), when that file still has the size and mtime it was
    /// indexed with. `None`: the unpack compares with the file's bytes.
    fn digest(&self, _rel: &Path, _found: &rustix::fs::Stat) -> Option<Digest> {
        None
    }

    /// Opens the file `find` answered (`at`) for reading, never following a symlink:
    /// through [`Unchanged::tree`] when there is one. The unpack checks it is the
    /// inode `find` saw.
    fn open(&self, at: &Path) -> std::io::Result<std::fs::File> {
        match self.tree() {
            Some(t) => crate::digest::open_regular(t, at),
            None => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc_flags())
                    .open(at)
            }
        }
    }

    /// Another probe of the same tree, judging exactly as this one, for a second
    /// thread (the delta deploy judges a large table on two); `None`: one thread.
    fn another(&self) -> Option<Box<dyn Unchanged + Send>> {
        None
    }

    /// The open tree the probe looks into (dest, or the live release), when it works
    /// through one: a hard link to a file it found is then made from that tree's
    /// descriptor, never by path. Without one, the link is made from the path `find`
    /// answers (its last component not followed) and kept only when it is the very
    /// inode `find` saw.
    fn tree(&self) -> Option<&Tree> {
        None
    }
}

/// A regular file of the archive that the caller already knows the probe's tree
/// holds with the entry's attributes and content (SPEC §18: the delta deploy judged
/// it by the verified table's sha256, from the probe's own `find`), so its data is
/// not in the stream: the unpack lists it exactly as a file its probe found unchanged
/// (left out, or hard-linked with `link_unchanged`), after the stream's last entry,
/// without asking the probe again. What guards it from a change in the probe's tree
/// after it was judged: the sync's plan checks every file left out against dest's
/// own walk (`sync::plan`, a stale file fails the deploy), and a hard link is kept
/// only when its `lstat` is still the `found` one (same inode, size, mtime, mode,
/// owner).
#[derive(Debug, Clone)]
pub(crate) struct KnownFile {
    /// Its path below the tree, relative.
    pub(crate) rel: PathBuf,
    /// Its attributes as the archive gives them (what the probe is asked).
    pub(crate) attrs: FileAttrs,
    /// Its content's sha256.
    pub(crate) digest: Digest,
    /// What the probe's `find` saw of it (at `rel` in the probe's tree): needed when
    /// the file is linked (`link_unchanged`), and only then.
    pub(crate) found: Option<Found>,
}

/// A file an [`Unchanged`] probe found, as its `lstat` showed it: which inode, and the
/// attributes a later look must still see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) meta: crate::entry::Meta,
}

impl From<&rustix::fs::Stat> for Found {
    fn from(st: &rustix::fs::Stat) -> Found {
        Found {
            dev: st.st_dev,
            ino: st.st_ino,
            meta: crate::entry::Meta::from(st),
        }
    }
}

/// `O_NOFOLLOW | O_NONBLOCK`: a file the probe found, opened by path.
fn libc_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

/// The unpacked tree, ready for the sync step.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The directory the tree was unpacked into (= `into`), for messages and for
    /// reopening it: see `root_id`.
    pub root: PathBuf,
    /// The (device, inode) of `root` as the unpack held it open: whoever reopens
    /// `root` by name checks it is still this directory (`at::Tree::open_same`).
    pub root_id: (u64, u64),
    /// Mode bits (& 0o7777) of the archive's `.` / `./` entry, if it had one.
    pub root_mode: Option<u32>,
    /// Entries written (files, dirs, links), for the log.
    pub entries: u64,
    /// Files left out of staging because the [`Unchanged`] probe found them as the
    /// archive has them (content included), with the archive's attributes.
    pub reused: Reused,
    /// With `link_unchanged` or `list_written`: every node below `root` (not `root`
    /// itself), sorted by path bytes (`list_written` alone: in no order; the sync
    /// sorts it), as it is once the unpack returns — the listing of
    /// the whole tree without a walk of it: a written file's fstat after its last
    /// change, a linked file's lstat by the [`Unchanged`] probe, a directory's after its
    /// deferred fixes, a symlink's or special's lstat. `None` otherwise, and with
    /// `list_written` alone when the unpack made a hard link (a walk notes which files
    /// have more than one link; this listing does not).
    pub written: Option<Vec<Entry>>,
    /// The content digest (sha256) of every regular file the tree holds, written or
    /// reused, by path: computed from the bytes the unpack decompressed (a sparse
    /// file's holes as zeros).
    pub digests: Digests,
    /// Directories of the tree that are not made below `root` (SPEC §18: the delta
    /// update leaves out a directory dest already holds as one when nothing is
    /// unpacked below it), each with the attributes the unpack would have given it,
    /// sorted as a walk lists them (`Path` order): the sync lists them as if they were
    /// in `root`. Empty from every unpack of a stream.
    pub listed_dirs: Vec<Entry>,
}

/// Unpacks the tar, tar.gz, tar.zst, tar.xz or tar.bz2 stream `reader` into `into`, which is an
/// existing, empty, private directory (the staging dir), opened once here (`into`
/// itself trusted): see [`unpack_in`].
pub fn unpack<R: Read + Send>(
    reader: R,
    into: &Path,
    opts: &UnpackOptions,
    unchanged: Option<&mut dyn Unchanged>,
) -> Result<Staged> {
    let tree = Tree::open(into, true).map_err(|e| crate::Error::io("open directory", into, e))?;
    unpack_in(reader, &tree, opts, unchanged)
}

/// Unpacks the stream `reader` into the open directory `into` (an empty, private
/// staging directory). Writes only below `into`, through its descriptor.
///
/// Threads share the work (see `pipe`): one reads `reader` (where the caller hashes),
/// one decompresses (for a compressed archive), and the calling thread parses tar and
/// creates files; a bounded number of chunks is in between, whatever the size.
///
/// `unchanged`, when given, is asked before each regular file is written (see
/// [`Unchanged`]).
pub fn unpack_in<R: Read + Send>(
    mut reader: R,
    into: &Tree,
    opts: &UnpackOptions,
    unchanged: Option<&mut dyn Unchanged>,
) -> Result<Staged> {
    let mut magic = [0u8; MAGIC_LEN];
    let n = read_up_to(&mut reader, &mut magic).map_err(|e| corrupt(opts, e))?;
    let format = sniff(&magic[..n]);
    let packed = format::packed(format, &magic[..n]);
    let input = (&magic[..n]).chain(reader);
    pipe::run(input, format, packed, opts, |stream| {
        tar_read::read_archive(stream, into, opts, format, unchanged, Vec::new(), None)
    })
}

/// [`unpack_in`] of a tar stream that leaves out the files `known` lists (SPEC §18):
/// each is then taken from the probe's tree as an unchanged file is (a file the
/// probe no longer finds as it was judged fails the unpack, naming it). `known` is
/// drawn one file at a time, after the stream's last entry.
///
/// `told`: the digests of the files the stream holds whose bytes the stream itself
/// checks against them as they pass (failing before its end on a mismatch): such a
/// file is not hashed again.
pub(crate) fn unpack_known<R: Read + Send>(
    reader: R,
    into: &Tree,
    opts: &UnpackOptions,
    unchanged: &mut dyn Unchanged,
    known: impl IntoIterator<Item = KnownFile>,
    told: crate::digest::Digests,
) -> Result<Staged> {
    pipe::run(reader, format::Format::Tar, false, opts, |stream| {
        tar_read::read_archive(
            stream,
            into,
            opts,
            format::Format::Tar,
            Some(unchanged),
            known,
            Some(told),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A tree of files small and large, a hard link and a symlink, packed (gzip or
    /// zstd) by `stretcher pack`: the archive's bytes.
    fn packed(dir: &Path, ext: &str) -> Vec<u8> {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("d/e")).unwrap();
        for i in 0..40u32 {
            let body: Vec<u8> = (0..i * 997).map(|j| (j * 31 + i) as u8).collect();
            std::fs::write(tree.join(format!("d/f{i}")), body).unwrap();
        }
        std::fs::write(tree.join("d/e/big"), vec![7u8; 300_000]).unwrap();
        std::fs::write(tree.join("empty"), b"").unwrap();
        std::fs::hard_link(tree.join("d/f3"), tree.join("link")).unwrap();
        std::os::unix::fs::symlink("d/f1", tree.join("sym")).unwrap();
        let out = dir.join(format!("p.tar.{ext}"));
        crate::pack::run(&crate::cli::PackOptions {
            dir: tree,
            out: out.clone(),
            excludes: Vec::new(),
            owner: false,
            manifest: None,
        })
        .unwrap();
        std::fs::read(out).unwrap()
    }

    fn unpack_to(dir: &Path, name: &str, archive: &[u8], from_table: bool) -> Staged {
        let into = dir.join(name);
        std::fs::create_dir(&into).unwrap();
        let opts = UnpackOptions {
            label: "file:///p.tar".into(),
            digests_from_table: from_table,
            ..UnpackOptions::default()
        };
        unpack(archive, &into, &opts, None).unwrap()
    }

    /// Every regular file's digest in `d`, by path (absent: `None`).
    fn files(d: &crate::digest::Digests) -> Vec<Option<crate::digest::Digest>> {
        let mut paths: Vec<String> = (0..40).map(|i| format!("d/f{i}")).collect();
        paths.extend(["d/e/big", "empty", "link"].map(String::from));
        paths.iter().map(|p| d.get(p.as_bytes()).copied()).collect()
    }

    #[test]
    fn a_packed_archive_s_digests_come_from_its_table_as_hashing_gives_them() {
        for ext in ["gz", "zst"] {
            let t = tempfile::tempdir().unwrap();
            let archive = packed(t.path(), ext);
            let hashed = unpack_to(t.path(), "hashed", &archive, false);
            let told = unpack_to(t.path(), "told", &archive, true);
            // every regular file, the hard link too
            assert_eq!(hashed.digests.len(), 43, "{ext}");
            assert!(files(&hashed.digests).iter().all(Option::is_some), "{ext}");
            assert_eq!(files(&told.digests), files(&hashed.digests), "{ext}");
            assert_eq!(told.digests.len(), 43, "{ext}");
            let link = std::fs::metadata(t.path().join("told/link")).unwrap();
            assert_eq!(
                link.ino(),
                std::fs::metadata(t.path().join("told/d/f3")).unwrap().ino()
            );
            assert!(told.digests.get(b"link").is_some());
        }
    }

    #[test]
    fn without_a_table_the_files_written_have_no_digest_and_the_unpack_goes_on() {
        let t = tempfile::tempdir().unwrap();
        // a plain tar.gz of the same tree: nothing after the tar's end
        let archive = packed(t.path(), "gz");
        let told = unpack_to(t.path(), "first", &archive, true);
        // (made by GNU tar, as a user's is)
        let made = std::process::Command::new("tar")
            .arg("-czf")
            .arg(t.path().join("plain.tar.gz"))
            .arg("-C")
            .arg(t.path().join("first"))
            .arg(".")
            .status()
            .unwrap();
        assert!(made.success());
        let plain = std::fs::read(t.path().join("plain.tar.gz")).unwrap();
        let staged = unpack_to(t.path(), "plain", &plain, true);
        assert!(staged.digests.is_empty());
        assert_eq!(told.digests.len(), 43);
        // a table that does not decode (bytes after it): no digests either
        let mut tail = Vec::new();
        {
            let mut gz = flate2::write::GzEncoder::new(&mut tail, flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, b"\x01\x00junk").unwrap();
            gz.finish().unwrap();
        }
        let mut odd = plain.clone();
        odd.extend(&tail);
        let staged = unpack_to(t.path(), "odd", &odd, true);
        assert!(staged.digests.is_empty());
        // a whole table, then bytes after it: nothing of it is taken, not even the
        // entries before the fault
        let mut after = archive.clone();
        after.extend(&tail);
        let staged = unpack_to(t.path(), "after", &after, true);
        assert!(staged.digests.is_empty());
        // the stream's own damage after the tar is still an error
        let mut bad = plain.clone();
        let n = bad.len();
        bad[n - 6] ^= 0xff; // the last member's CRC
        let into = t.path().join("bad");
        std::fs::create_dir(&into).unwrap();
        let opts = UnpackOptions {
            label: "file:///p.tar".into(),
            digests_from_table: true,
            ..UnpackOptions::default()
        };
        assert!(unpack(&bad[..], &into, &opts, None).is_err());
    }
}
