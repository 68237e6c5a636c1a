//! Unpacks a tar, tar.gz, tar.zst, tar.xz or tar.bz2 stream into the private staging
//! directory (SPEC §7, §6, §10).
//!
//! Its one job: turn archive bytes into a tree below `into`, applying the entry path
//! policy (leading `/` stripped with a warning, `..` refused, never written through a
//! symlink) and the archive's modes, mtimes and — as root — owners.
//!
//! It must never create, change or follow anything outside `into`, never follow a
//! symlink that an entry created, and never take a truncated or corrupt stream for a
//! shorter tree: the whole input is read to its end (the gzip CRC checked) and must end
//! at a member boundary. A stream that stops at a boundary without the end-of-archive
//! marker is accepted with a warning, as GNU tar accepts it (SPEC §7): the manifest's
//! checksum, checked before the sync, is what proves the stream whole.
//!
//! It reads archives as GNU tar 1.34 does: the format is sniffed by content and goes
//! through one decode pipeline ([`decoder`]); tar-rs parses the headers, patched in
//! `vendor/tar` where it read differently from GNU tar (vendor/tar/PATCHES.md); this
//! module adds the rest: sparse members (old-GNU `S`, pax 0.0, 0.1 and 1.0) written
//! with holes, GNU base-256 negative times, `D` dump directories, hard link targets
//! with a leading `/`, and a missing end-of-archive marker accepted with a warning.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use filetime::FileTime;
use tar::EntryType;

use crate::error::Error;
use crate::log::shown;
use crate::Result;

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
/// `sync::quick`, against `dest` or the live release).
pub trait Unchanged {
    /// The path of an existing regular file equal to the entry at `rel` by size,
    /// mtime seconds, mode (and owner when given), with the lstat that found it: the
    /// entry is then not written but listed in `Staged::reused`. Any doubt must answer
    /// `None` ("write it").
    fn find(&mut self, rel: &Path, attrs: &FileAttrs) -> Option<(PathBuf, fs::Metadata)>;
}

/// The unpacked tree, ready for the sync step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The directory the tree was unpacked into (= `into`).
    pub root: PathBuf,
    /// Mode bits (& 0o7777) of the archive's `.` / `./` entry, if it had one.
    pub root_mode: Option<u32>,
    /// Entries written (files, dirs, links), for the log.
    pub entries: u64,
    /// Files left out of staging because the [`Unchanged`] probe found them as the
    /// archive has them, with the archive's attributes.
    pub reused: HashMap<PathBuf, FileAttrs>,
    /// With `link_unchanged`: every node below `root` (not `root` itself), by relative
    /// path, as the index keeps it once the unpack returns — the listing of the whole
    /// tree without a walk of it: a written file's fstat after its last change, a
    /// linked file's lstat by the [`Unchanged`] probe, a directory's after its deferred
    /// fixes, a symlink's or special's lstat. Empty otherwise.
    pub written: HashMap<PathBuf, crate::index::Entry>,
}

/// Bytes read ahead to recognise the compression format.
const MAGIC_LEN: usize = 6;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// A zstd skippable frame (`pzstd` starts with one): 0x184D2A50..=0x184D2A5F, LE.
const ZSTD_SKIPPABLE_TAIL: [u8; 3] = [0x2a, 0x4d, 0x18];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
const BZIP2_MAGIC: [u8; 3] = *b"BZh";
/// What a stream that is none of these was tried as, for the error.
const FORMATS_TRIED: &str = "tar, gzip, zstd, xz and bzip2";
/// Sparse map entries a pax 1.0 member may declare (each costs 16 bytes of memory).
const MAX_SPARSE_CHUNKS: u64 = 1 << 20;
/// Decompressed bytes handed from the decoding thread to the tar parser at a time, and
/// how many such chunks may wait: this bounds the memory of an unpack.
const CHUNK: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 8;
/// Buffer between the source and the decoder / tar parser.
const INPUT_BUF: usize = 128 * 1024;
/// Buffer for copying file contents (one per unpack, reused for every file).
const COPY_BUF: usize = 256 * 1024;
/// Mode of directories created because an entry needs them as parents.
const IMPLICIT_DIR_MODE: u32 = 0o755;
/// Free space the size guard leaves on the staging filesystem (directories, metadata,
/// and whatever else runs there).
const SPACE_RESERVE: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Gzip,
    Zstd,
    Xz,
    Bzip2,
    Tar,
}

/// The format, by content: never by the URL's name.
fn sniff(magic: &[u8]) -> Format {
    if magic.starts_with(&GZIP_MAGIC) {
        return Format::Gzip;
    }
    if magic.starts_with(&ZSTD_MAGIC)
        || (magic.len() >= 4 && magic[0] & 0xf0 == 0x50 && magic[1..4] == ZSTD_SKIPPABLE_TAIL)
    {
        return Format::Zstd;
    }
    if magic.starts_with(&XZ_MAGIC) {
        return Format::Xz;
    }
    if magic.starts_with(&BZIP2_MAGIC) && magic.get(3).is_some_and(|b| (b'1'..=b'9').contains(b)) {
        return Format::Bzip2;
    }
    Format::Tar
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Xz => "xz",
            Format::Bzip2 => "bzip2",
            Format::Tar => "tar",
        }
    }
}

/// The one decode pipeline: the decompressed bytes of a compressed stream, read to its
/// end (every member / frame / stream, trailers and checksums checked).
fn decoder<'a, R: io::BufRead + Send + 'a>(
    format: Format,
    raw: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match format {
        Format::Tar => Box::new(raw),
        Format::Gzip => Box::new(GzMembers::new(raw)),
        // libzstd reads every frame and skips skippable ones.
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        // Concatenated streams and stream padding, as `xz -d` reads them.
        Format::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(raw)),
        Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(raw)),
    })
}

/// Every member of a gzip stream, one after the other; zero bytes after the last
/// member are padding and ignored (as `gzip -d` does, tape-style blocking). Anything
/// else after a member must be another member.
struct GzMembers<R: io::BufRead> {
    member: Option<flate2::bufread::GzDecoder<R>>,
}

impl<R: io::BufRead> GzMembers<R> {
    fn new(raw: R) -> Self {
        GzMembers {
            member: Some(flate2::bufread::GzDecoder::new(raw)),
        }
    }
}

impl<R: io::BufRead> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(member) = self.member.as_mut() else {
                return Ok(0);
            };
            let n = member.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This member ended (its CRC and length checked): what follows?
            let Some(mut raw) = self.member.take().map(|m| m.into_inner()) else {
                return Ok(0);
            };
            let next = raw.fill_buf()?;
            if next.is_empty() {
                return Ok(0);
            }
            if next[0] != 0 {
                self.member = Some(flate2::bufread::GzDecoder::new(raw));
                continue;
            }
            loop {
                let rest = raw.fill_buf()?;
                if rest.is_empty() {
                    return Ok(0);
                }
                if rest.iter().any(|&b| b != 0) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bytes after the gzip data are neither another gzip member nor zero padding",
                    ));
                }
                let n = rest.len();
                raw.consume(n);
            }
        }
    }
}

/// Unpacks the tar, tar.gz, tar.zst, tar.xz or tar.bz2 stream `reader` into `into`, which is an
/// existing, empty, private directory (the staging dir). Writes only below `into`.
///
/// Two threads share the work: one reads `reader` (where the caller hashes) and
/// decompresses, the other parses tar and creates files; at most
/// `CHUNKS_IN_FLIGHT` chunks of `CHUNK` bytes are in between, whatever the size.
///
/// `unchanged`, when given, is asked before each regular file is written (see
/// [`Unchanged`]).
pub fn unpack<R: Read + Send>(
    mut reader: R,
    into: &Path,
    opts: &UnpackOptions,
    unchanged: Option<&mut dyn Unchanged>,
) -> Result<Staged> {
    let mut magic = [0u8; MAGIC_LEN];
    let n = read_up_to(&mut reader, &mut magic).map_err(|e| corrupt(opts, &e))?;
    let input = io::BufReader::with_capacity(INPUT_BUF, (&magic[..n]).chain(reader));
    let format = sniff(&magic[..n]);
    let (tx, rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (back_tx, back_rx) = mpsc::channel();
    // For a compressed archive, reading the source (and hashing it, in the caller's
    // reader) gets a thread of its own, apart from the decoder.
    let (raw_tx, raw_rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (raw_back_tx, raw_back_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let (reader_thread, producer) = match format {
            Format::Tar => (None, s.spawn(move || pump(input, &tx, &back_rx))),
            compressed => {
                let reader = s.spawn(move || pump(input, &raw_tx, &raw_back_rx));
                let producer = s.spawn(move || {
                    let raw = ChunkReader::new(raw_rx, raw_back_tx);
                    let raw = io::BufReader::with_capacity(INPUT_BUF, raw);
                    pump(decoder(compressed, raw)?, &tx, &back_rx)
                });
                (Some(reader), producer)
            }
        };
        let extracted = extract(ChunkReader::new(rx, back_tx), into, opts, format, unchanged);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the decompression thread panicked")));
        let read = match reader_thread {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the reading thread panicked"))),
            None => Ok(()),
        };
        match (extracted, read, produced) {
            // A source error explains any decoding error, which explains any error the
            // parser then saw.
            (_, Err(e), _) => Err(corrupt(opts, &e)),
            (_, Ok(()), Err(e)) => Err(archive_error(
                opts,
                format!("{} data is corrupt: {}", format.name(), chain(&e)),
            )),
            (result, Ok(()), Ok(())) => result,
        }
    })
}

/// Moves `r`'s bytes to the parser in chunks, reusing the buffers it hands back.
/// Stops quietly when the parser has gone (it failed: its error is the one to tell).
fn pump(
    mut r: impl Read,
    tx: &mpsc::SyncSender<Vec<u8>>,
    back: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    loop {
        let mut buf = back.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        buf.resize(CHUNK, 0);
        let n = read_up_to(&mut r, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        if tx.send(buf).is_err() {
            return Ok(());
        }
    }
}

/// The parser's end of the pipe: reads the chunks in order; end of stream when the
/// decoding thread is done.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    back: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<Vec<u8>>, back: mpsc::Sender<Vec<u8>>) -> Self {
        ChunkReader {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let done = std::mem::replace(&mut self.cur, next);
                    // The decoding thread may have finished: then the buffer is dropped.
                    let _ = self.back.send(done);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fills `buf` as far as the reader allows (short only at end of stream).
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            // EINTR is retried; an `Interrupted` carrying a message (the download's
            // "interrupted by SIGINT") is final: retrying it would spin forever.
            Err(e) if e.kind() == io::ErrorKind::Interrupted && e.get_ref().is_none() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Remembers whether the stream ran dry: tar-rs ends the entry list silently at end of
/// input, so an archive that lacks its end-of-archive marker (cut between two entries,
/// or written so) is told apart, for the warning, and an empty stream for the error.
struct EofTracker<R> {
    inner: R,
    hit_eof: bool,
}

impl<R: Read> Read for EofTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

fn extract<R: Read>(
    stream: R,
    into: &Path,
    opts: &UnpackOptions,
    format: Format,
    unchanged: Option<&mut dyn Unchanged>,
) -> Result<Staged> {
    let mut archive = tar::Archive::new(EofTracker {
        inner: stream,
        hit_eof: false,
    });
    let mut x = Extractor::new(into, opts, unchanged);
    // The last member read, for errors in the header that follows it.
    let mut last: Option<Vec<u8>> = None;
    for entry in archive.entries().map_err(|e| corrupt(opts, &e))? {
        crate::interrupt::check()?;
        let mut entry = entry.map_err(|e| header_error(opts, format, last.as_deref(), &e))?;
        last = Some(entry.path_bytes().into_owned());
        x.entry(&mut entry)?;
    }
    let mut rest = archive.into_inner();
    if rest.hit_eof {
        if last.is_none() {
            return Err(archive_error(opts, empty_stream(format)));
        }
        // The manifest's checksum already proved the stream complete; GNU tar warns.
        crate::logln!(
            "archive {}: warning: no end-of-archive marker (two zero blocks) after the last member; accepted as GNU tar does",
            opts.label
        );
    }
    // Read to the very end: the padding after the end-of-archive blocks, and for gzip
    // the member trailers, whose CRC and length the decoder checks as it reaches them.
    io::copy(&mut rest, &mut io::sink()).map_err(|e| corrupt(opts, &e))?;
    // Directory modes and mtimes only once the stream is known to be good, so a failed
    // unpack leaves a staging tree the caller can always remove.
    x.finish()
}

/// What this module reads from a member's pax records (tar-rs applies `path`,
/// `linkpath`, `size`, `uid` and `gid` itself).
#[derive(Debug, Default)]
struct PaxInfo {
    mtime: Option<FileTime>,
    uname: Option<Vec<u8>>,
    gname: Option<Vec<u8>>,
    /// `GNU.sparse.name` (pax sparse 0.1, 1.0): the member's real name.
    sparse_name: Option<Vec<u8>>,
    /// `GNU.sparse.size` (0.0, 0.1) or `GNU.sparse.realsize` (1.0): the logical size;
    /// present on every pax sparse member.
    sparse_size: Option<u64>,
    sparse_major: Option<u64>,
    /// The (offset, length) map of 0.0 (`GNU.sparse.offset` / `numbytes` pairs) or
    /// 0.1 (`GNU.sparse.map`).
    sparse_map: Vec<(u64, u64)>,
}

impl PaxInfo {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>, opts: &UnpackOptions) -> Result<PaxInfo> {
        let mut info = PaxInfo::default();
        let Some(exts) = entry.pax_extensions().map_err(|e| corrupt(opts, &e))? else {
            return Ok(info);
        };
        let mut offset: Option<u64> = None;
        for ext in exts {
            // tar-rs takes a malformed record as the end of the header, as GNU tar
            // does after its warning: the member is read with what came before.
            let Ok(ext) = ext else { break };
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            match ext.key_bytes() {
                b"mtime" => info.mtime = parse_pax_time(value),
                b"uname" => info.uname = Some(value.to_vec()),
                b"gname" => info.gname = Some(value.to_vec()),
                b"GNU.sparse.name" => info.sparse_name = Some(value.to_vec()),
                b"GNU.sparse.size" | b"GNU.sparse.realsize" => info.sparse_size = number(),
                b"GNU.sparse.major" => info.sparse_major = number(),
                b"GNU.sparse.offset" => offset = number(),
                b"GNU.sparse.numbytes" => {
                    if let (Some(o), Some(n)) = (offset.take(), number()) {
                        info.sparse_map.push((o, n));
                    }
                }
                b"GNU.sparse.map" => {
                    let numbers: Vec<u64> = std::str::from_utf8(value)
                        .unwrap_or("")
                        .split(',')
                        .filter_map(|n| n.trim().parse().ok())
                        .collect();
                    info.sparse_map = numbers.chunks_exact(2).map(|p| (p[0], p[1])).collect();
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

/// A sparse member's layout: logical size and data chunks (offset, length) in order.
struct Sparse {
    size: u64,
    chunks: Vec<(u64, u64)>,
}

/// Reads a pax sparse 1.0 map from the start of the member's data: decimal numbers
/// one per line (the count, then offset / length pairs), padded with NULs to a whole
/// block. Returns the map and the bytes it took.
fn read_sparse_map_1_0(
    data: &mut impl Read,
    stored: u64,
) -> std::result::Result<(Vec<(u64, u64)>, u64), String> {
    let mut used = 0u64;
    let mut line = Vec::new();
    let mut next = |used: &mut u64| -> std::result::Result<u64, String> {
        line.clear();
        loop {
            let mut b = [0u8; 1];
            if *used >= stored || data.read(&mut b).map_err(|e| e.to_string())? == 0 {
                return Err("the map is cut short".into());
            }
            *used += 1;
            if b[0] == b'\n' {
                break;
            }
            if !b[0].is_ascii_digit() || line.len() >= 20 {
                return Err("the map holds something other than decimal numbers".into());
            }
            line.push(b[0]);
        }
        std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| "a map number is empty or too large".to_string())
    };
    let count = next(&mut used)?;
    if count > MAX_SPARSE_CHUNKS {
        return Err(format!("{count} chunks is more than {MAX_SPARSE_CHUNKS}"));
    }
    let mut map = Vec::new();
    for _ in 0..count {
        let offset = next(&mut used)?;
        let len = next(&mut used)?;
        map.push((offset, len));
    }
    let pad = used.next_multiple_of(512) - used;
    if used + pad > stored {
        return Err("the map is cut short".into());
    }
    io::copy(&mut data.take(pad), &mut io::sink()).map_err(|e| e.to_string())?;
    Ok((map, used + pad))
}

/// The header's mtime in seconds; GNU base-256 fields may be negative (1969, 1901).
fn header_mtime(h: &tar::Header) -> std::result::Result<i64, String> {
    let field = &h.as_old().mtime;
    if field[0] & 0x80 == 0 {
        let secs = h.mtime().map_err(|e| format!("mtime field: {e}"))?;
        return Ok(i64::try_from(secs).unwrap_or(i64::MAX));
    }
    // Base-256: big-endian two's complement, bit 6 of the first byte the sign.
    let negative = field[0] & 0x40 != 0;
    let mut value: i128 = if negative { -1 } else { 0 };
    for (i, &b) in field.iter().enumerate() {
        let b = if i == 0 {
            if negative {
                b | 0x80
            } else {
                b & 0x7f
            }
        } else {
            b
        };
        value = (value << 8) | i128::from(b);
        if !(i64::MIN as i128..=i64::MAX as i128).contains(&value) && i > 0 {
            return Err("mtime field: out of range".into());
        }
    }
    i64::try_from(value).map_err(|_| "mtime field: out of range".to_string())
}

/// Metadata an entry carries for the node it creates.
struct Meta {
    mode: u32,
    mtime: FileTime,
    owner: Option<(u32, u32)>,
}

/// What is still to be done to a directory once all entries are written.
struct DirFix {
    mode: u32,
    mtime: Option<FileTime>,
    owner: Option<(u32, u32)>,
}

struct Extractor<'a, 'u> {
    into: &'a Path,
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
    users: HashMap<Vec<u8>, Option<u32>>,
    groups: HashMap<Vec<u8>, Option<u32>>,
    warned_absolute: bool,
    root_mode: Option<u32>,
    entries: u64,
    reused: HashMap<PathBuf, FileAttrs>,
    /// Where each reused file is (the probe's answer), for hard links to it.
    kept_at: HashMap<PathBuf, PathBuf>,
    /// `Staged::written` (kept only with `link_unchanged`).
    written: HashMap<PathBuf, crate::index::Entry>,
    /// The size guard: (bytes available to unprivileged users, fragment size) of the
    /// staging filesystem when the unpack started, and the bytes of file content
    /// written so far, each file rounded up to whole fragments.
    space: Option<(u64, u64)>,
    to_write: u64,
}

impl<'a, 'u> Extractor<'a, 'u> {
    fn new(
        into: &'a Path,
        opts: &'a UnpackOptions,
        unchanged: Option<&'u mut dyn Unchanged>,
    ) -> Self {
        Extractor {
            into,
            opts,
            unchanged,
            buf: vec![0; COPY_BUF],
            dirs: HashSet::new(),
            fixes: HashMap::new(),
            umask: current_umask(),
            users: HashMap::new(),
            groups: HashMap::new(),
            warned_absolute: false,
            root_mode: None,
            entries: 0,
            reused: HashMap::new(),
            kept_at: HashMap::new(),
            written: HashMap::new(),
            space: free_space(into),
            to_write: 0,
        }
    }

    /// The size guard: refuses a file whose content would take the bytes written so
    /// far past the free space of the staging filesystem (less `SPACE_RESERVE`), before
    /// it is created — a decompression bomb or a full disk fails here, cleanly.
    fn claim_space(&mut self, size: u64) -> Result<()> {
        let Some((free, frsize)) = self.space else {
            return Ok(());
        };
        self.to_write = self
            .to_write
            .saturating_add(size.div_ceil(frsize).saturating_mul(frsize));
        if self.to_write > free.saturating_sub(SPACE_RESERVE) {
            let fs = self.into.parent().unwrap_or(self.into);
            return Err(archive_error(
                self.opts,
                format!(
                    "not enough space on the filesystem of {}: the archive needs more than \
                     {} bytes, {free} free ({SPACE_RESERVE} kept in reserve)",
                    fs.display(),
                    self.to_write
                ),
            ));
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let mut kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // pax global header (git archive puts the commit id there): nothing to write.
            return Ok(());
        }
        let pax = PaxInfo::read(entry, self.opts)?;
        // Sparse pax 0.1 / 1.0 members are stored under `GNUSparseFile.N/NAME`; the
        // real name is a pax record.
        let raw = match &pax.sparse_name {
            Some(name) => name.clone(),
            None => entry.path_bytes().into_owned(),
        };
        let path = entry_path(&raw).map_err(|r| refused(&raw, r))?;
        if path.absolute {
            self.warn_absolute(&raw);
        }
        // Old (V7 / BSD) archives mark directories by a trailing slash only. A GNU
        // dump directory ('D') is a directory whose data (the names it held when
        // dumped, for incremental restores) tar-rs skips.
        if (matches!(kind, EntryType::Regular | EntryType::Continuous) && raw.ends_with(b"/"))
            || kind.as_byte() == b'D'
        {
            kind = EntryType::Directory;
        }
        let rel = path.rel;
        if !self.reused.is_empty() {
            // A later entry for the same path replaces the one found unchanged.
            self.reused.remove(&rel);
            self.kept_at.remove(&rel);
        }
        if rel.as_os_str().is_empty() {
            if kind != EntryType::Directory {
                return Err(fail(&raw, "the archive root must be a directory"));
            }
            let meta = self.meta(entry, &pax, &raw)?;
            self.root_mode = Some(meta.mode);
            self.fixes.insert(rel, meta.into());
            return Ok(());
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let meta = self.meta(entry, &pax, &raw)?;
                self.file(entry, &pax, &rel, &raw, &meta)?;
            }
            EntryType::Directory => {
                let meta = self.meta(entry, &pax, &raw)?;
                self.dir(&rel, &raw, meta)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail(&raw, "symlink without a target"))?
                    .into_owned();
                let meta = self.meta(entry, &pax, &raw)?;
                self.symlink(&rel, &raw, &target, &meta)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail(&raw, "hard link without a target"))?
                    .into_owned();
                self.hard_link(&rel, &raw, &target)?;
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                if !self.opts.same_owner {
                    crate::logln!(
                        "archive {}: skipping {} \"{}\": device nodes and fifos are created only when running as root",
                        self.opts.label,
                        type_name(kind),
                        shown(&raw)
                    );
                    return Ok(());
                }
                let meta = self.meta(entry, &pax, &raw)?;
                self.special(entry.header(), kind, &rel, &raw, &meta)?;
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
            }
        }
        Ok(())
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
        let (pax_mtime, uname, gname) = (pax.mtime, pax.uname.clone(), pax.gname.clone());
        let h = entry.header();
        let mode = h
            .mode()
            .map_err(|e| fail(raw, format!("mode field: {e}")))?
            & 0o7777;
        let mtime = match pax_mtime {
            Some(t) => t,
            None => FileTime::from_unix_time(header_mtime(h).map_err(|e| fail(raw, e))?, 0),
        };
        let owner = if self.opts.same_owner {
            let uid = h.uid().map_err(|e| fail(raw, format!("uid field: {e}")))?;
            let gid = h.gid().map_err(|e| fail(raw, format!("gid field: {e}")))?;
            let uname = uname.as_deref().or(h.username_bytes());
            let gname = gname.as_deref().or(h.groupname_bytes());
            let uid = match uname.and_then(|n| cached(&mut self.users, n, user_by_name)) {
                Some(id) => id,
                None => u32::try_from(uid).map_err(|_| fail(raw, "uid out of range"))?,
            };
            let gid = match gname.and_then(|n| cached(&mut self.groups, n, group_by_name)) {
                Some(id) => id,
                None => u32::try_from(gid).map_err(|_| fail(raw, "gid out of range"))?,
            };
            Some((uid, gid))
        } else {
            None
        };
        Ok(Meta { mode, mtime, owner })
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pax: &PaxInfo,
        rel: &Path,
        raw: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        self.parents(rel, raw)?;
        let sparse = self.sparse_layout(entry, pax, raw)?;
        // The file's size as tar extracts it: a sparse member's logical size.
        let size = sparse.as_ref().map_or(entry.size(), |s| s.size);
        let abs = self.into.join(rel);
        if let Some(found) = self.reuse(rel, size, meta) {
            // An earlier member of the same name may have been written: the later one
            // wins, so staging must not keep it (a link replaces it: `link_reused`).
            if !self.opts.link_unchanged && fs::symlink_metadata(&abs).is_ok() {
                self.remove_existing(rel, &abs, raw)?;
            }
            // The entry's data is skipped by the parser (still read, so a cut stream
            // is still noticed).
            if !self.opts.link_unchanged || self.link_reused(rel, raw)? {
                // A link shares the inode the probe read.
                self.note(rel, raw, || Ok(found), None)?;
                self.entries += 1;
                return Ok(());
            }
            self.reused.remove(rel);
            self.kept_at.remove(rel);
        }
        // The size guard counts what is really written: a sparse file's data chunks.
        match &sparse {
            Some(s) => {
                let (frsize, mut total) = (self.space.map_or(1, |(_, f)| f), 0u64);
                for &(_, len) in &s.chunks {
                    total = total.saturating_add(len.div_ceil(frsize).saturating_mul(frsize));
                }
                self.claim_space(total)?;
            }
            None => self.claim_space(size)?,
        }
        let create = |abs: &Path| {
            OpenOptions::new()
                .write(true)
                .create_new(true) // O_EXCL: never opens through an existing symlink
                .mode(meta.mode)
                .open(abs)
        };
        let mut file = match create(&abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                create(&abs)
            }
            other => other,
        }
        .map_err(|e| fail(raw, format!("create: {e}")))?;
        match &sparse {
            None => self.copy_data(entry, &mut file, size, raw)?,
            Some(s) => {
                // Holes are seeked over, never written; the length is set at the end.
                for &(offset, len) in &s.chunks {
                    file.seek(SeekFrom::Start(offset))
                        .map_err(|e| fail(raw, format!("seek: {e}")))?;
                    self.copy_data(entry, &mut file, len, raw)?;
                }
                file.set_len(s.size)
                    .map_err(|e| fail(raw, format!("set length: {e}")))?;
            }
        }
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| fail(raw, format!("chown: {e}")))?;
        }
        if self.needs_chmod(meta.mode) {
            file.set_permissions(Permissions::from_mode(meta.mode))
                .map_err(|e| fail(raw, format!("chmod: {e}")))?;
        }
        filetime::set_file_handle_times(&file, None, Some(meta.mtime))
            .map_err(|e| fail(raw, format!("set mtime: {e}")))?;
        self.note(rel, raw, || file.metadata(), None)?;
        self.entries += 1;
        Ok(())
    }

    /// `link_unchanged`: lists what is now at `rel` (`stat` runs only then).
    fn note(
        &mut self,
        rel: &Path,
        raw: &[u8],
        stat: impl FnOnce() -> io::Result<fs::Metadata>,
        target: Option<&[u8]>,
    ) -> Result<()> {
        if self.opts.link_unchanged {
            let m = stat().map_err(|e| fail(raw, format!("stat: {e}")))?;
            let path = rel.as_os_str().as_bytes().to_vec();
            let e = crate::index::Entry::from_meta(path, &m, target.map(<[u8]>::to_vec));
            self.written.insert(rel.to_path_buf(), e);
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
                Err(e) => return Err(corrupt(self.opts, &e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| fail(raw, format!("write: {e}")))?;
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

    /// The sparse layout of a member, if it is sparse: old-GNU (`S`, map parsed by
    /// tar-rs), pax 0.0 / 0.1 (map in pax records) or pax 1.0 (map at the start of the
    /// data, read here). `None` for a plain file.
    fn sparse_layout<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pax: &PaxInfo,
        raw: &[u8],
    ) -> Result<Option<Sparse>> {
        let bad = |msg: String| fail(raw, format!("sparse map: {msg}"));
        let (size, chunks, stored) = if let Some(map) = entry.sparse_map() {
            let stored = map.iter().map(|&(_, l)| l).sum();
            (entry.size(), map.to_vec(), stored)
        } else if let Some(size) = pax.sparse_size {
            let stored = entry.size();
            if pax.sparse_major == Some(1) {
                let (chunks, map_len) = read_sparse_map_1_0(entry, stored).map_err(bad)?;
                (size, chunks, stored - map_len)
            } else {
                (size, pax.sparse_map.clone(), stored)
            }
        } else {
            return Ok(None);
        };
        let mut end = 0u64;
        let mut data = 0u64;
        for &(offset, len) in &chunks {
            if offset < end {
                return Err(bad("chunks overlap or are out of order".into()));
            }
            end = offset
                .checked_add(len)
                .filter(|&e| e <= size)
                .ok_or_else(|| bad(format!("a chunk ends past the file's size {size}")))?;
            data += len;
        }
        if data != stored {
            return Err(bad(format!(
                "the map describes {data} bytes of data, the member holds {stored}"
            )));
        }
        Ok(Some(Sparse { size, chunks }))
    }

    /// Lists `rel` as kept (not written) when the [`Unchanged`] probe finds it as the
    /// entry has it; answers the probe's lstat of it.
    fn reuse(&mut self, rel: &Path, size: u64, meta: &Meta) -> Option<fs::Metadata> {
        let probe = self.unchanged.as_deref_mut()?;
        let attrs = FileAttrs {
            size,
            mtime: meta.mtime.unix_seconds(),
            mode: meta.mode,
            owner: meta.owner,
        };
        let (at, found) = probe.find(rel, &attrs)?;
        self.reused.insert(rel.to_path_buf(), attrs);
        self.kept_at.insert(rel.to_path_buf(), at);
        Some(found)
    }

    /// `link_unchanged`: hard-links the reused file to `into/rel`. False when the link
    /// cannot be made (EXDEV, EMLINK, ...): then the entry is written instead.
    fn link_reused(&mut self, rel: &Path, raw: &[u8]) -> Result<bool> {
        // Taken out: only this link needs it (`hard_link` uses it without link_unchanged).
        let Some(src) = self.kept_at.remove(rel) else {
            return Ok(false);
        };
        let abs = self.into.join(rel);
        // linkat without AT_SYMLINK_FOLLOW: the probe saw a regular file, never a symlink.
        let link = |abs: &Path| {
            nix::unistd::linkat(None, src.as_path(), None, abs, nix::fcntl::AtFlags::empty())
        };
        let linked = match link(&abs) {
            Err(nix::errno::Errno::EEXIST) => {
                self.remove_existing(rel, &abs, raw)?;
                link(&abs)
            }
            other => other,
        };
        Ok(linked.is_ok())
    }

    fn dir(&mut self, rel: &Path, raw: &[u8], meta: Meta) -> Result<()> {
        self.parents(rel, raw)?;
        if !self.dirs.contains(rel) {
            let abs = self.into.join(rel);
            match mkdir(&abs) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let is_dir = fs::symlink_metadata(&abs)
                        .map_err(|e| fail(raw, format!("stat: {e}")))?
                        .is_dir();
                    if !is_dir {
                        self.remove_existing(rel, &abs, raw)?;
                        mkdir(&abs)
                    } else {
                        Ok(())
                    }
                }
                other => other,
            }
            .map_err(|e| fail(raw, format!("mkdir: {e}")))?;
            self.dirs.insert(rel.to_path_buf());
        }
        self.fixes.insert(rel.to_path_buf(), meta.into());
        self.entries += 1;
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, raw: &[u8], target: &[u8], meta: &Meta) -> Result<()> {
        self.parents(rel, raw)?;
        let abs = self.into.join(rel);
        let target = OsStr::from_bytes(target);
        match std::os::unix::fs::symlink(target, &abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                std::os::unix::fs::symlink(target, &abs)
            }
            other => other,
        }
        .map_err(|e| fail(raw, format!("symlink: {e}")))?;
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::lchown(&abs, Some(uid), Some(gid))
                .map_err(|e| fail(raw, format!("chown: {e}")))?;
        }
        filetime::set_symlink_file_times(&abs, meta.mtime, meta.mtime)
            .map_err(|e| fail(raw, format!("set mtime: {e}")))?;
        self.note(
            rel,
            raw,
            || fs::symlink_metadata(&abs),
            Some(target.as_bytes()),
        )?;
        self.entries += 1;
        Ok(())
    }

    fn hard_link(&mut self, rel: &Path, raw: &[u8], target: &[u8]) -> Result<()> {
        let (target, absolute) = link_target(target).map_err(|r| refused(raw, r))?;
        if absolute {
            self.warn_absolute(raw);
        }
        if target == rel {
            // A link to itself: the file is already there.
            return Ok(());
        }
        self.check_parents(&target, raw)?;
        self.parents(rel, raw)?;
        // A link to a file kept in dest (not staged) is made to dest's copy: the sync
        // writes it as a file of its own (rsync -a has no -H).
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
        .map_err(|e| fail(raw, format!("hard link to {:?}: {e}", target)))?;
        // The same inode as the target's (a link never changes what the index keeps).
        match self.written.get(&target).cloned() {
            Some(e) => {
                let path = rel.as_os_str().as_bytes().to_vec();
                self.written
                    .insert(rel.to_path_buf(), crate::index::Entry { path, ..e });
            }
            None => self.note(rel, raw, || fs::symlink_metadata(&abs), None)?,
        }
        self.entries += 1;
        Ok(())
    }

    /// A fifo or device node (only called when running as root).
    fn special(
        &mut self,
        h: &tar::Header,
        kind: EntryType,
        rel: &Path,
        raw: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        self.parents(rel, raw)?;
        let abs = self.into.join(rel);
        let sflag = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let dev = if sflag == SFlag::S_IFIFO {
            0
        } else {
            let major = h.device_major().map_err(|e| fail(raw, format!("{e}")))?;
            let minor = h.device_minor().map_err(|e| fail(raw, format!("{e}")))?;
            makedev(major.unwrap_or(0).into(), minor.unwrap_or(0).into())
        };
        let perm = Mode::from_bits_truncate(meta.mode & 0o777);
        let make = |abs: &Path| mknod(abs, sflag, perm, dev).map_err(io::Error::from);
        match make(&abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                make(&abs)
            }
            other => other,
        }
        .map_err(|e| fail(raw, format!("mknod: {e}")))?;
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::lchown(&abs, Some(uid), Some(gid))
                .map_err(|e| fail(raw, format!("chown: {e}")))?;
        }
        if self.needs_chmod(meta.mode) {
            // Just created by mknod, so not a symlink: chmod cannot be redirected.
            fs::set_permissions(&abs, Permissions::from_mode(meta.mode))
                .map_err(|e| fail(raw, format!("chmod: {e}")))?;
        }
        filetime::set_symlink_file_times(&abs, meta.mtime, meta.mtime)
            .map_err(|e| fail(raw, format!("set mtime: {e}")))?;
        self.note(rel, raw, || fs::symlink_metadata(&abs), None)?;
        self.entries += 1;
        Ok(())
    }

    /// Makes every parent of `rel` a real directory below `into`, creating missing
    /// ones; refuses a parent that is a symlink (never followed) or not a directory.
    fn parents(&mut self, rel: &Path, raw: &[u8]) -> Result<()> {
        self.real_parents(rel, raw, true)
    }

    /// Like `parents` for a hard link's target, but creates nothing.
    fn check_parents(&mut self, target: &Path, raw: &[u8]) -> Result<()> {
        self.real_parents(target, raw, false)
    }

    fn real_parents(&mut self, rel: &Path, raw: &[u8], create: bool) -> Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if parent.as_os_str().is_empty() || self.dirs.contains(parent) {
            return Ok(());
        }
        let what = if create { "" } else { "hard link target: " };
        let mut prefix = PathBuf::with_capacity(parent.as_os_str().len());
        for comp in parent.components() {
            prefix.push(comp);
            if self.dirs.contains(&prefix) {
                continue;
            }
            let abs = self.into.join(&prefix);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    let msg = if create {
                        format!("refusing to write through the symlink {prefix:?}")
                    } else {
                        format!("hard link target passes through the symlink {prefix:?}")
                    };
                    return Err(fail(raw, msg));
                }
                Ok(_) => return Err(fail(raw, format!("{what}{prefix:?} is not a directory"))),
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    mkdir(&abs).map_err(|e| fail(raw, format!("mkdir {prefix:?}: {e}")))?;
                    if self.needs_chmod(IMPLICIT_DIR_MODE) {
                        let fix = DirFix {
                            mode: IMPLICIT_DIR_MODE,
                            mtime: None,
                            owner: None,
                        };
                        self.fixes.insert(prefix.clone(), fix);
                    }
                }
                Err(e) => return Err(fail(raw, format!("{what}stat {prefix:?}: {e}"))),
            }
            self.dirs.insert(prefix.clone());
        }
        Ok(())
    }

    /// A later entry replaces what an earlier one put at `abs` (as GNU tar does).
    fn remove_existing(&mut self, rel: &Path, abs: &Path, raw: &[u8]) -> Result<()> {
        let m = fs::symlink_metadata(abs).map_err(|e| fail(raw, format!("stat: {e}")))?;
        if m.is_dir() {
            // remove_dir_all never follows symlinks inside the tree.
            fs::remove_dir_all(abs).map_err(|e| fail(raw, format!("remove: {e}")))?;
            self.dirs.retain(|d| !d.starts_with(rel));
            self.fixes.retain(|d, _| !d.starts_with(rel));
            self.written.retain(|d, _| !d.starts_with(rel));
        } else {
            fs::remove_file(abs).map_err(|e| fail(raw, format!("remove: {e}")))?;
            self.written.remove(rel);
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

    /// Applies directory owners, modes and mtimes, deepest first: writing inside a
    /// directory would bump its mtime, and a read-only or unsearchable parent would
    /// block fixing its children.
    fn finish(mut self) -> Result<Staged> {
        if self.opts.link_unchanged {
            // A directory without a fix is final now (a fix changes its own directory
            // only); read before a fix can make its parent unsearchable.
            let into = self.into;
            let fixes = std::mem::take(&mut self.fixes);
            let unfixed: Vec<PathBuf> = self
                .dirs
                .iter()
                .filter(|d| !fixes.contains_key(*d))
                .cloned()
                .collect();
            for rel in unfixed {
                let stat = || fs::symlink_metadata(into.join(&rel));
                self.note(&rel, rel.as_os_str().as_bytes(), stat, None)?;
            }
            self.fixes = fixes;
        }
        let mut fixes: Vec<(PathBuf, DirFix)> =
            std::mem::take(&mut self.fixes).into_iter().collect();
        fixes.sort_by_key(|(rel, _)| Reverse(rel.components().count()));
        for (rel, fix) in &fixes {
            let abs = if rel.as_os_str().is_empty() {
                self.into.to_path_buf()
            } else {
                self.into.join(rel)
            };
            let name = if rel.as_os_str().is_empty() {
                ".".to_string()
            } else {
                shown(rel.as_os_str().as_bytes())
            };
            let dir = apply_dir(&abs, fix).map_err(|msg| Error::Entry { entry: name, msg })?;
            if !rel.as_os_str().is_empty() {
                self.note(rel, rel.as_os_str().as_bytes(), || dir.metadata(), None)?;
            }
        }
        Ok(Staged {
            root: self.into.to_path_buf(),
            root_mode: self.root_mode,
            entries: self.entries,
            reused: self.reused,
            written: self.written,
        })
    }
}

impl From<Meta> for DirFix {
    fn from(m: Meta) -> Self {
        DirFix {
            mode: m.mode,
            mtime: Some(m.mtime),
            owner: m.owner,
        }
    }
}

/// Answers the open directory (for its final `fstat`).
fn apply_dir(abs: &Path, fix: &DirFix) -> std::result::Result<fs::File, String> {
    // O_NOFOLLOW: even if something replaced the directory by a symlink, never follow it.
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(abs)
        .map_err(|e| format!("open directory: {e}"))?;
    if let Some((uid, gid)) = fix.owner {
        std::os::unix::fs::fchown(&dir, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
    }
    dir.set_permissions(Permissions::from_mode(fix.mode))
        .map_err(|e| format!("chmod: {e}"))?;
    if let Some(mtime) = fix.mtime {
        filetime::set_file_handle_times(&dir, None, Some(mtime))
            .map_err(|e| format!("set mtime: {e}"))?;
    }
    Ok(dir)
}

fn mkdir(abs: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(IMPLICIT_DIR_MODE).create(abs)
}

/// (bytes available to unprivileged users, fragment size) of the filesystem holding
/// `dir`: `f_bavail * f_frsize`. `None` when unknown, or when the filesystem reports
/// no size at all (some FUSE ones): such a filesystem is not guarded.
fn free_space(dir: &Path) -> Option<(u64, u64)> {
    let v = nix::sys::statvfs::statvfs(dir).ok()?;
    if v.blocks() == 0 {
        return None;
    }
    let frsize = v.fragment_size().max(1);
    let free = v.blocks_available().saturating_mul(frsize);
    Some((free, frsize))
}

/// The umask, read without changing it (Linux ≥ 4.7 shows it in /proc).
fn current_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

fn cached(
    cache: &mut HashMap<Vec<u8>, Option<u32>>,
    name: &[u8],
    lookup: fn(&str) -> Option<u32>,
) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    if let Some(id) = cache.get(name) {
        return *id;
    }
    let id = std::str::from_utf8(name).ok().and_then(lookup);
    cache.insert(name.to_vec(), id);
    id
}

fn user_by_name(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

fn group_by_name(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// A pax `mtime` record: decimal seconds with an optional fraction (`1700000000.5`,
/// `-1.25`). `None` when malformed (the header's whole seconds are used instead).
fn parse_pax_time(value: &[u8]) -> Option<FileTime> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if !negative {
        Some(FileTime::from_unix_time(secs, nanos))
    } else if nanos == 0 {
        Some(FileTime::from_unix_time(-secs, 0))
    } else {
        Some(FileTime::from_unix_time(-secs - 1, 1_000_000_000 - nanos))
    }
}

fn type_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Fifo => "fifo",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        _ => "special file",
    }
}

// ---- the entry path policy (pure) ----

/// An entry's path after the policy: relative to the archive root (empty = the root).
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryPath {
    rel: PathBuf,
    /// The name started with `/` (stripped; worth a warning).
    absolute: bool,
}

/// Why an entry's name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    ParentDir,
    Nul,
    EmptyLink,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::ParentDir => "path has a '..' component",
            Refusal::Nul => "path contains a NUL byte",
            Refusal::EmptyLink => "hard link target is empty",
        })
    }
}

/// Raw name bytes → relative path: leading `/`s, empty and `.` components dropped,
/// `..` refused. Works on bytes: names need not be UTF-8.
fn entry_path(raw: &[u8]) -> std::result::Result<EntryPath, Refusal> {
    if raw.contains(&0) {
        return Err(Refusal::Nul);
    }
    let mut rel = PathBuf::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentDir),
            name => rel.push(OsStr::from_bytes(name)),
        }
    }
    Ok(EntryPath {
        rel,
        absolute: raw.first() == Some(&b'/'),
    })
}

/// A hard link's target: like an entry path (a leading `/` stripped, as GNU tar
/// does, flagged for the warning), but empty is refused.
fn link_target(raw: &[u8]) -> std::result::Result<(PathBuf, bool), Refusal> {
    let p = entry_path(raw)?;
    if p.rel.as_os_str().is_empty() {
        Err(Refusal::EmptyLink)
    } else {
        Ok((p.rel, p.absolute))
    }
}

// ---- errors ----

fn fail(raw: &[u8], msg: impl Into<String>) -> Error {
    Error::Entry {
        entry: shown(raw),
        msg: msg.into(),
    }
}

/// An error of tar-rs reading a header, in words, naming where it is.
fn header_error(opts: &UnpackOptions, format: Format, last: Option<&[u8]>, e: &io::Error) -> Error {
    let text = chain(e);
    let what = if text.contains("checksum mismatch") {
        "a header's checksum does not match (corrupt data, or not a tar archive)".to_string()
    } else if text.contains("numeric field") {
        "a numeric header field holds something other than an octal or base-256 number".to_string()
    } else if text.contains("failed to read entire block") || text.contains("unexpected EOF") {
        "truncated: the stream ends inside a member".to_string()
    } else if text.contains("no future member") {
        "truncated: the stream ends after a long-name or pax header, before its member".to_string()
    } else {
        text
    };
    let msg = match (last, format) {
        (Some(name), _) => format!("after member \"{}\": {what}", shown(name)),
        // Nothing readable at all: as GNU tar says, this does not look like a tar.
        (None, Format::Tar) => {
            format!("not an archive: tried {FORMATS_TRIED} by content, it is none of them")
        }
        (None, f) => format!(
            "the {} data does not start with a tar header: {what}",
            f.name()
        ),
    };
    archive_error(opts, msg)
}

/// The error for a stream that ends before its first member.
fn empty_stream(format: Format) -> String {
    match format {
        Format::Tar => format!("empty: no tar member (tried {FORMATS_TRIED} by content)"),
        f => format!("the {} data holds no tar member", f.name()),
    }
}

/// An error and its sources on one line.
fn chain(e: &io::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

fn refused(raw: &[u8], r: Refusal) -> Error {
    fail(raw, r.to_string())
}

fn archive_error(opts: &UnpackOptions, msg: String) -> Error {
    Error::Archive {
        url: opts.label.clone(),
        msg,
    }
}

/// A read error from the decoder or tar parser: the stream is corrupt or cut short.
fn corrupt(opts: &UnpackOptions, e: &io::Error) -> Error {
    archive_error(opts, chain(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(raw: &[u8]) -> PathBuf {
        entry_path(raw).unwrap().rel
    }

    #[test]
    fn plain_and_dotted_names_normalise() {
        assert_eq!(rel(b"a/b/c"), PathBuf::from("a/b/c"));
        assert_eq!(rel(b"./a/./b/"), PathBuf::from("a/b"));
        assert_eq!(rel(b"a//b"), PathBuf::from("a/b"));
        assert_eq!(rel(b"dir/"), PathBuf::from("dir"));
        assert!(!entry_path(b"./a").unwrap().absolute);
    }

    #[test]
    fn root_entry_is_empty() {
        for raw in [&b"."[..], b"./", b"", b".//.", b"/"] {
            assert_eq!(rel(raw), PathBuf::new(), "{:?}", shown(raw));
        }
    }

    #[test]
    fn leading_slashes_are_stripped_and_flagged() {
        let p = entry_path(b"///etc/x").unwrap();
        assert_eq!(p.rel, PathBuf::from("etc/x"));
        assert!(p.absolute);
        assert!(entry_path(b"/").unwrap().absolute);
    }

    #[test]
    fn parent_components_are_refused() {
        for raw in [&b".."[..], b"../x", b"a/../b", b"a/..", b"/../etc", b"./.."] {
            assert_eq!(entry_path(raw), Err(Refusal::ParentDir), "{:?}", shown(raw));
        }
        // Only a whole component is `..`.
        assert_eq!(rel(b"a/..b/c.."), PathBuf::from("a/..b/c.."));
        assert_eq!(rel(b"..."), PathBuf::from("..."));
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(entry_path(b"a\0b"), Err(Refusal::Nul));
    }

    #[test]
    fn non_utf8_names_keep_their_bytes() {
        let p = rel(b"dir/caf\xe9");
        assert_eq!(p.as_os_str().as_bytes(), b"dir/caf\xe9");
    }

    #[test]
    fn hard_link_targets() {
        assert_eq!(link_target(b"./a/b"), Ok((PathBuf::from("a/b"), false)));
        assert_eq!(
            link_target(b"/etc/passwd"),
            Ok((PathBuf::from("etc/passwd"), true))
        );
        assert_eq!(link_target(b"../x"), Err(Refusal::ParentDir));
        assert_eq!(link_target(b"a/../../x"), Err(Refusal::ParentDir));
        assert_eq!(link_target(b"./"), Err(Refusal::EmptyLink));
    }

    #[test]
    fn format_by_magic() {
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]), Format::Zstd);
        // pzstd starts with a skippable frame
        assert_eq!(sniff(&[0x50, 0x2a, 0x4d, 0x18, 4, 0]), Format::Zstd);
        assert_eq!(sniff(&[0x5f, 0x2a, 0x4d, 0x18, 4, 0]), Format::Zstd);
        assert_eq!(sniff(&[0x60, 0x2a, 0x4d, 0x18, 4, 0]), Format::Tar);
        assert_eq!(sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Format::Xz);
        assert_eq!(sniff(b"BZh91AY"), Format::Bzip2);
        assert_eq!(sniff(b"BZhx"), Format::Tar);
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Format::Gzip);
        assert_eq!(sniff(b"hello"), Format::Tar);
        assert_eq!(sniff(&[0x1f]), Format::Tar);
        assert_eq!(sniff(&[]), Format::Tar);
    }

    fn header_with_mtime(field: [u8; 12]) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().mtime = field;
        h
    }

    #[test]
    fn base256_mtimes_may_be_negative() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[8..].copy_from_slice(&1_700_000_000u32.to_be_bytes());
        assert_eq!(header_mtime(&header_with_mtime(f)), Ok(1_700_000_000));
        // -1 and -2^31 - 1 (1901) in GNU's two's complement form
        assert_eq!(header_mtime(&header_with_mtime([0xff; 12])), Ok(-1));
        let mut f = [0xff; 12];
        f[7..].copy_from_slice(&[0xff, 0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(header_mtime(&header_with_mtime(f)), Ok(-(1 << 31) - 1));
        // octal, as before
        let mut h = tar::Header::new_gnu();
        h.set_mtime(12345);
        assert_eq!(header_mtime(&h), Ok(12345));
        // beyond i64
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[2] = 0x01;
        assert!(header_mtime(&header_with_mtime(f)).is_err());
    }

    #[test]
    fn pax_1_0_sparse_maps() {
        let mut data = b"2\n0\n5\n1048576\n3\n".to_vec();
        let map_len = data.len();
        data.resize(512, 0);
        data.extend_from_slice(b"hellotail");
        let (map, used) = read_sparse_map_1_0(&mut &data[..], data.len() as u64).unwrap();
        assert_eq!(map, vec![(0, 5), (1_048_576, 3)]);
        assert_eq!(used, 512);
        assert!(map_len < 512);
        for bad in [
            &b"2\n0\n5\n"[..],
            b"1\nx\n1\n",
            b"",
            b"99999999999999999999999\n",
        ] {
            assert!(read_sparse_map_1_0(&mut &bad[..], 4096).is_err(), "{bad:?}");
        }
        let huge = format!("{}\n", MAX_SPARSE_CHUNKS + 1);
        assert!(read_sparse_map_1_0(&mut huge.as_bytes(), 4096).is_err());
        // the map may not run past the member's data
        assert!(read_sparse_map_1_0(&mut &b"1\n0\n1\n"[..], 4).is_err());
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gunzip(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzMembers::new(io::BufReader::with_capacity(7, data)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn gzip_members_and_zero_padding() {
        let mut two = gz(b"first ");
        two.extend(gz(b"second"));
        assert_eq!(gunzip(&two).unwrap(), b"first second");
        let mut padded = two.clone();
        padded.extend([0u8; 10240]);
        assert_eq!(gunzip(&padded).unwrap(), b"first second");
        let mut garbage = padded.clone();
        garbage.push(1);
        assert!(gunzip(&garbage).is_err());
        let mut not_gzip = two;
        not_gzip.extend(b"tail");
        assert!(gunzip(&not_gzip).is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some(FileTime::from_unix_time(1_700_000_000, 123_456_789))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some(FileTime::from_unix_time(1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"12"), Some(FileTime::from_unix_time(12, 0)));
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(FileTime::from_unix_time(-2, 750_000_000))
        );
        assert_eq!(
            parse_pax_time(b"1.1234567891"),
            Some(FileTime::from_unix_time(1, 123_456_789))
        );
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b".5"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }
}
