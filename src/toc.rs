//! The table of contents of a packed archive (SPEC §18; the format is
//! `docs/packed-archive.md`): the footer that locates it, the table itself (every tar
//! entry in archive order, and for a regular file where its data lies and its sha256),
//! its encoding, its compressed member, and the validation that refuses a table that
//! could point a reader anywhere it should not.
//!
//! Pure: no filesystem, no network. `pack` writes what this module encodes; a deploy
//! that fetches single files reads the footer and the table through it.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The table format's version, in the footer and at the head of the table.
pub const VERSION: u16 = 1;

/// The footer payload's first bytes.
pub const MAGIC: [u8; 8] = *b"STRETCHR";

/// Bytes of a gzip archive's footer: an empty gzip member whose extra field holds the
/// payload.
pub const FOOTER_LEN_GZIP: usize = 10 + 2 + 4 + PAYLOAD_LEN + 2 + 8;

/// Bytes of a zstd archive's footer: a skippable frame holding the payload.
pub const FOOTER_LEN_ZSTD: usize = 8 + PAYLOAD_LEN;

/// The most bytes any footer takes: read this many from the archive's end (or the
/// whole archive when it is shorter) and hand them to [`Footer::parse`].
pub const FOOTER_MAX: usize = FOOTER_LEN_GZIP;

/// The largest table member (compressed) a reader accepts.
pub const MAX_TABLE_LEN: u64 = 64 << 20;

/// The largest decoded table a reader accepts (a bound on what a small, hostile member
/// can inflate to).
pub const MAX_TABLE_DECODED: u64 = 256 << 20;

/// magic(8) version(2) codec(1) reserved(1) table offset(8) table length(8).
const PAYLOAD_LEN: usize = 28;
/// The fewest bytes an encoded entry takes: a one-byte path and its length, the
/// type, then one byte each for mode, ids, name lengths, mtime (two) and size.
const MIN_ENTRY_ENCODED: usize = 11;

/// The gzip extra subfield id of the footer (`S`, `T`).
const GZIP_SUBFIELD: [u8; 2] = *b"ST";

/// The zstd skippable frame magic of the footer (one of 0x184D2A50..=0x184D2A5F).
const ZSTD_SKIPPABLE: u32 = 0x184D_2A5E;

/// The fixed gzip level of members and the table (gzip's default, as `tar czf`).
pub const GZIP_LEVEL: u32 = 6;

/// The fixed zstd level of frames and the table (the zstd tool's default).
pub const ZSTD_LEVEL: i32 = 3;

/// Why a footer or a table is refused; the entry it is about is named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TocError {
    /// The archive's last bytes are not a footer of this format.
    #[error("no table of contents footer at the end of the archive ({0})")]
    NoFooter(String),
    /// A footer or table of a version this build does not read.
    #[error("table of contents version {0} is not supported (this build reads {VERSION})")]
    Version(u16),
    /// The footer's table offset and length do not fit the archive.
    #[error("the footer's table (offset {offset}, {len} bytes) does not fit an archive of {archive_len} bytes")]
    TableBounds {
        /// The table's offset, as the footer gives it.
        offset: u64,
        /// The table's length, as the footer gives it.
        len: u64,
        /// The archive's length.
        archive_len: u64,
    },
    /// The table member does not decompress or decode.
    #[error("the table does not decode: {0}")]
    Decode(String),
    /// An entry of the table is refused.
    #[error("table entry \"{entry}\": {msg}")]
    Entry {
        /// The entry's path, shown with non-UTF-8 bytes escaped.
        entry: String,
        /// What is wrong with it, in words.
        msg: String,
    },
}

fn entry_error(path: &[u8], msg: impl Into<String>) -> TocError {
    TocError::Entry {
        entry: show(path),
        msg: msg.into(),
    }
}

/// A path as an error shows it: UTF-8 as is, other bytes escaped.
pub fn show(path: &[u8]) -> String {
    path.escape_ascii().to_string()
}

/// The compression of the archive, its members and its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// gzip members (RFC 1952).
    Gzip,
    /// zstd frames.
    Zstd,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Gzip => 1,
            Codec::Zstd => 2,
        }
    }

    /// The footer's length for this codec.
    pub fn footer_len(self) -> usize {
        match self {
            Codec::Gzip => FOOTER_LEN_GZIP,
            Codec::Zstd => FOOTER_LEN_ZSTD,
        }
    }

    /// `data` compressed as one member (see [`Codec::encoder`]).
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        let mut enc = self.encoder(data.len() as u64);
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(data);
        enc.finish().unwrap_or_default()
    }

    /// A one-member compressor of `raw_len` bytes into memory, at the fixed level,
    /// reproducible: a gzip member with no name, mtime 0, OS 255 and the extra
    /// subfield `SL` giving its own compressed and decompressed lengths; a zstd frame
    /// with its content size and content checksum. Either can then be cut from a stream without being
    /// inflated, and decompressed apart from the others.
    pub fn encoder(self, raw_len: u64) -> MemberEncoder {
        let cap = (raw_len / 3 + 64).min(64 << 20) as usize;
        self.encoder_into(Vec::with_capacity(cap), raw_len)
    }

    /// The compressor of [`Codec::encoder`] writing into `out` as it goes: the same
    /// writes give the same bytes (deflate's output also depends on how the input is
    /// cut into writes, so a reproducible member is fed in the same pieces). A gzip member's first 32 bytes are written with its
    /// lengths zeroed: [`MemberEncoder::finish_into`] hands back the 16 bytes that
    /// belong at its byte 16 (the lengths are known only at its end).
    pub fn encoder_into<W: Write>(self, mut out: W, raw_len: u64) -> MemberEncoder<W> {
        match self {
            Codec::Gzip => {
                let mut head = [0u8; 32];
                head[..16].copy_from_slice(&GZIP_MEMBER_HEAD);
                let head = out.write_all(&head).map_err(|e| e.to_string());
                MemberEncoder::Gzip {
                    deflate: flate2::write::DeflateEncoder::new(
                        out,
                        flate2::Compression::new(GZIP_LEVEL),
                    ),
                    crc: flate2::Crc::new(),
                    raw: 0,
                    head,
                }
            }
            Codec::Zstd => MemberEncoder::Zstd(
                zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)
                    .and_then(|mut e| {
                        e.include_contentsize(true)?;
                        e.include_checksum(true)?;
                        e.set_pledged_src_size(Some(raw_len))?;
                        Ok(e)
                    })
                    .map_err(|e| e.to_string()),
            ),
        }
    }

    /// The most bytes a member of `raw_len` decompressed bytes can take compressed, by
    /// either codec (incompressible data costs a few bytes a block more than itself).
    pub fn member_bound(raw_len: u64) -> u64 {
        raw_len + raw_len / 64 + 4096
    }

    /// One member's bytes (exactly one gzip member or zstd frame, nothing after it)
    /// decompressed, refused past `limit` bytes of output.
    pub fn decompress_member(self, member: &[u8], limit: u64) -> Result<Vec<u8>, String> {
        self.read_member(member, limit, |r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out)
                .map_err(|e| TocError::Decode(e.to_string()))?;
            Ok(out)
        })
        .map_err(|e| match e {
            TocError::Decode(m) => m,
            e => e.to_string(),
        })
    }

    /// `read` given one member's decompressed bytes as a reader (exactly one gzip
    /// member or zstd frame, nothing after it; refused past `limit` bytes of output).
    /// `read` is to read to the end, where the member's check (CRC-32 and length, or
    /// the frame's checksum) is made.
    pub fn read_member<T>(
        self,
        member: &[u8],
        limit: u64,
        read: impl FnOnce(&mut dyn Read) -> Result<T, TocError>,
    ) -> Result<T, TocError> {
        let failed = |e: io::Error| TocError::Decode(e.to_string());
        let over = || TocError::Decode(format!("it decompresses to more than {limit} bytes"));
        // `read` over the decoder, cut one byte past the limit.
        let capped = |dec: &mut dyn Read| {
            let mut capped = dec.take(limit + 1);
            let out = read(&mut capped);
            if capped.limit() == 0 {
                return Err(over());
            }
            out
        };
        let (out, rest): (T, &[u8]) = match self {
            Codec::Gzip => {
                let mut dec = flate2::bufread::GzDecoder::new(member);
                (capped(&mut dec)?, dec.into_inner())
            }
            Codec::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(member)
                    .map_err(failed)?
                    .single_frame();
                (capped(&mut dec)?, dec.finish())
            }
        };
        if !rest.is_empty() {
            return Err(TocError::Decode(
                "bytes follow the member's end".to_string(),
            ));
        }
        Ok(out)
    }

    /// What a member says of its decompressed length, when it says it: a gzip
    /// member's `SL` subfield, a zstd frame's content size. A hint only.
    fn stated_raw_len(self, member: &[u8]) -> Option<u64> {
        match self {
            Codec::Gzip => gzip_member_lengths(member).map(|(_, raw)| raw),
            Codec::Zstd => zstd::zstd_safe::get_frame_content_size(member)
                .ok()
                .flatten(),
        }
    }
}

/// A gzip member's first bytes as [`Codec::encoder`] writes them: ID1 ID2 CM=deflate
/// FLG=FEXTRA MTIME=0 XFL=0 OS=255, XLEN=20, subfield `S` `L` of 16 bytes; then the
/// member's compressed length (all of it, header to trailer) and decompressed length,
/// u64 LE each.
pub const GZIP_MEMBER_HEAD: [u8; 16] = [
    0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, 20, 0, b'S', b'L', 16, 0,
];

/// The lengths a member of [`Codec::encoder`] states in its first bytes: `(compressed,
/// decompressed)`. For gzip, from the `SL` subfield (`head` ≥ 32 bytes); `None` when
/// the member does not have it.
pub fn gzip_member_lengths(head: &[u8]) -> Option<(u64, u64)> {
    if head.get(..16)? != GZIP_MEMBER_HEAD {
        return None;
    }
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(head.get(i..i + 8)?.try_into().ok()?))
    };
    Some((u64_at(16)?, u64_at(24)?))
}

/// A one-member compressor, into memory by default (see [`Codec::encoder`] and
/// [`Codec::encoder_into`]).
pub enum MemberEncoder<W: Write = Vec<u8>> {
    /// A gzip member: the deflate stream after the header, and the CRC of the input.
    Gzip {
        /// The deflate stream, into the member's bytes.
        deflate: flate2::write::DeflateEncoder<W>,
        /// CRC-32 of what was written.
        crc: flate2::Crc,
        /// Bytes written.
        raw: u64,
        /// Whether the header could be written (a write reports why not).
        head: Result<(), String>,
    },
    /// A zstd frame (or why the encoder could not be made, which a write reports).
    Zstd(Result<zstd::stream::write::Encoder<'static, W>, String>),
}

impl<W: Write> Write for MemberEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            MemberEncoder::Gzip { head: Err(e), .. } => Err(std::io::Error::other(e.clone())),
            MemberEncoder::Gzip {
                deflate, crc, raw, ..
            } => {
                let n = deflate.write(buf)?;
                crc.update(&buf[..n]);
                *raw += n as u64;
                Ok(n)
            }
            MemberEncoder::Zstd(Ok(e)) => e.write(buf),
            MemberEncoder::Zstd(Err(e)) => Err(std::io::Error::other(e.clone())),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            MemberEncoder::Gzip { deflate, .. } => deflate.flush(),
            MemberEncoder::Zstd(Ok(e)) => e.flush(),
            MemberEncoder::Zstd(Err(_)) => Ok(()),
        }
    }
}

impl MemberEncoder {
    /// Ends the member and hands its bytes back.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        let (mut out, lengths) = self.finish_into()?;
        if let Some(lengths) = lengths {
            out[16..32].copy_from_slice(&lengths);
        }
        Ok(out)
    }
}

impl<W: Write> MemberEncoder<W> {
    /// Ends the member and hands the writer back, with, for a gzip member, the 16
    /// bytes (compressed and decompressed lengths, u64 LE each) that belong at the
    /// member's byte 16 in place of the zeros written there.
    pub fn finish_into(self) -> std::io::Result<(W, Option<[u8; 16]>)> {
        match self {
            MemberEncoder::Gzip { head: Err(e), .. } => Err(std::io::Error::other(e)),
            MemberEncoder::Gzip {
                mut deflate,
                crc,
                raw,
                ..
            } => {
                deflate.try_finish()?;
                // The header, the deflate stream (all of it written out now), the trailer.
                let len = 32 + deflate.total_out() + 8;
                let mut out = deflate.finish()?;
                out.write_all(&crc.sum().to_le_bytes())?;
                out.write_all(&crc.amount().to_le_bytes())?;
                let mut lengths = [0u8; 16];
                lengths[..8].copy_from_slice(&len.to_le_bytes());
                lengths[8..].copy_from_slice(&raw.to_le_bytes());
                Ok((out, Some(lengths)))
            }
            MemberEncoder::Zstd(Ok(e)) => Ok((e.finish()?, None)),
            MemberEncoder::Zstd(Err(e)) => Err(std::io::Error::other(e)),
        }
    }
}

/// The archive's last bytes: where the table member lies, and how it is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// The compression of the archive and of the table member.
    pub codec: Codec,
    /// Byte offset of the table member in the archive (= the end of the tar's members).
    pub table_offset: u64,
    /// Byte length of the table member (compressed, as it lies in the archive).
    pub table_len: u64,
}

impl Footer {
    /// The footer's bytes (`codec.footer_len()` of them).
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(PAYLOAD_LEN);
        payload.extend_from_slice(&MAGIC);
        payload.extend_from_slice(&VERSION.to_le_bytes());
        payload.push(self.codec.id());
        payload.push(0);
        payload.extend_from_slice(&self.table_offset.to_le_bytes());
        payload.extend_from_slice(&self.table_len.to_le_bytes());
        let mut out = Vec::with_capacity(self.codec.footer_len());
        match self.codec {
            Codec::Gzip => {
                // ID1 ID2 CM=deflate FLG=FEXTRA MTIME=0 XFL=0 OS=255
                out.extend_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255]);
                out.extend_from_slice(&((4 + PAYLOAD_LEN) as u16).to_le_bytes());
                out.extend_from_slice(&GZIP_SUBFIELD);
                out.extend_from_slice(&(PAYLOAD_LEN as u16).to_le_bytes());
                out.extend_from_slice(&payload);
                // An empty final fixed-Huffman block, CRC32 0, ISIZE 0.
                out.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
            Codec::Zstd => {
                out.extend_from_slice(&ZSTD_SKIPPABLE.to_le_bytes());
                out.extend_from_slice(&(PAYLOAD_LEN as u32).to_le_bytes());
                out.extend_from_slice(&payload);
            }
        }
        out
    }

    /// Reads the footer from `tail`, the archive's last `min(FOOTER_MAX, archive_len)`
    /// bytes (more is fine: only its end is read), and checks that the table it names
    /// lies inside the archive, right before the footer.
    pub fn parse(tail: &[u8], archive_len: u64) -> Result<Footer, TocError> {
        let (codec, payload) = if let Some(p) = zstd_payload(tail) {
            (Codec::Zstd, p)
        } else if let Some(p) = gzip_payload(tail) {
            (Codec::Gzip, p)
        } else {
            return Err(TocError::NoFooter(
                "neither a gzip member nor a zstd skippable frame with stretcher's mark"
                    .to_string(),
            ));
        };
        let version = u16::from_le_bytes([payload[8], payload[9]]);
        if version != VERSION {
            return Err(TocError::Version(version));
        }
        if payload[10] != codec.id() {
            return Err(TocError::NoFooter(format!(
                "the footer names codec {} in a {codec:?} frame",
                payload[10]
            )));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let footer = Footer {
            codec,
            table_offset: u64_at(12),
            table_len: u64_at(20),
        };
        let end = footer.table_offset.checked_add(footer.table_len);
        let want = archive_len.checked_sub(codec.footer_len() as u64);
        if footer.table_len == 0 || footer.table_len > MAX_TABLE_LEN || end.is_none() || end != want
        {
            return Err(TocError::TableBounds {
                offset: footer.table_offset,
                len: footer.table_len,
                archive_len,
            });
        }
        Ok(footer)
    }
}

fn zstd_payload(tail: &[u8]) -> Option<&[u8]> {
    let f = tail.get(tail.len().checked_sub(FOOTER_LEN_ZSTD)?..)?;
    let ok = f[..4] == ZSTD_SKIPPABLE.to_le_bytes()
        && f[4..8] == (PAYLOAD_LEN as u32).to_le_bytes()
        && f[8..16] == MAGIC;
    ok.then(|| &f[8..])
}

fn gzip_payload(tail: &[u8]) -> Option<&[u8]> {
    let f = tail.get(tail.len().checked_sub(FOOTER_LEN_GZIP)?..)?;
    let mut head = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255];
    head.extend_from_slice(&((4 + PAYLOAD_LEN) as u16).to_le_bytes());
    head.extend_from_slice(&GZIP_SUBFIELD);
    head.extend_from_slice(&(PAYLOAD_LEN as u16).to_le_bytes());
    let body = 16;
    let ok = f[..body] == head[..]
        && f[body..body + 8] == MAGIC
        && f[body + PAYLOAD_LEN..] == [3, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    ok.then(|| &f[body..body + PAYLOAD_LEN])
}

/// A tar entry's modification time as its header holds it: seconds since the epoch
/// (negative before 1970) and the sub-second part a pax `mtime` record gives (0 when
/// the header has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mtime {
    /// Whole seconds.
    pub secs: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nanos: u32,
}

/// Where a regular file's data lies: the compressed member that holds it, and where in
/// that member's decompressed output (its tar bytes) the data starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's first byte in the archive.
    pub offset: u64,
    /// The member's compressed length.
    pub len: u64,
    /// The member's decompressed length (its tar bytes).
    pub raw_len: u64,
    /// The file's first data byte in the member's decompressed output.
    pub data_offset: u64,
}

/// What an entry is, with what only that type has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file: its member and the sha256 of its content.
    File {
        /// Where its data lies.
        member: Member,
        /// sha256 of its content.
        sha256: [u8; 32],
    },
    /// A directory.
    Dir,
    /// A symbolic link and its target, as written.
    Symlink {
        /// The target bytes.
        target: Vec<u8>,
    },
    /// A hard link to an earlier regular file of the table (its path there).
    HardLink {
        /// The earlier entry's path.
        target: Vec<u8>,
    },
}

/// An owner or group name: up to 16 bytes held in place, longer ones on the heap. A
/// table holds one of each per entry, nearly always the same few short names (`root`):
/// as `Vec<u8>`s they were two allocations an entry (6.4 MB at 100,000 entries). It is
/// written and read as the byte sequence a `Vec<u8>` is, so the table's format is the
/// same.
pub type Name = smallvec::SmallVec<[u8; 16]>;

/// One tar entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The path relative to the archive's root, without `./` and without a trailing
    /// `/`; the root itself is `.`.
    pub path: Vec<u8>,
    /// The type, and what comes with it.
    pub kind: Kind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Owner id.
    pub uid: u64,
    /// Group id.
    pub gid: u64,
    /// Owner name (may be empty).
    pub uname: Name,
    /// Group name (may be empty).
    pub gname: Name,
    /// Modification time, as the tar header (and its pax record) holds it.
    pub mtime: Mtime,
    /// Content size: a regular file's data length, 0 for every other type.
    pub size: u64,
}

/// The table: every entry in archive order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// The entries, in the order of the tar stream.
    pub entries: Vec<Entry>,
}

/// The bytes [`Feed`] reads at a time, at least.
const FEED_CHUNK: usize = 64 * 1024;

/// Postcard values read from a stream: a window of its bytes, refilled when a value
/// runs past its end.
struct Feed<'r> {
    from: &'r mut dyn Read,
    buf: Vec<u8>,
    /// Where the next value starts in `buf`.
    at: usize,
    ended: bool,
}

impl Feed<'_> {
    /// The next value.
    fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, TocError> {
        loop {
            match postcard::take_from_bytes::<T>(&self.buf[self.at..]) {
                Ok((v, rest)) => {
                    self.at = self.buf.len() - rest.len();
                    return Ok(v);
                }
                Err(postcard::Error::DeserializeUnexpectedEnd) if !self.ended => self.fill()?,
                Err(e) => return Err(TocError::Decode(e.to_string())),
            }
        }
    }

    /// More bytes after those not yet used: as many again as are held (a value is
    /// parsed again from its start after each refill, so the window doubles: a long
    /// value costs linear time), at least [`FEED_CHUNK`].
    fn fill(&mut self) -> Result<(), TocError> {
        self.buf.drain(..self.at);
        self.at = 0;
        let held = self.buf.len();
        self.buf.resize(held + held.max(FEED_CHUNK), 0);
        let mut got = 0;
        while held + got < self.buf.len() {
            match self.from.read(&mut self.buf[held + got..]) {
                Ok(0) => {
                    self.ended = true;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TocError::Decode(e.to_string())),
            }
        }
        self.buf.truncate(held + got);
        Ok(())
    }
}

/// The encoded table: its version first, so a table read alone says what it is.
#[derive(Serialize, Deserialize)]
struct Wire<E> {
    version: u16,
    entries: E,
}

impl Table {
    /// The table's raw (uncompressed) bytes: postcard 1.0 of `{version, entries}`.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs into a Vec has no failure case.
        postcard::to_allocvec(&Wire {
            version: VERSION,
            entries: &self.entries,
        })
        .unwrap_or_default()
    }

    /// Decodes raw table bytes; the version must be this build's and nothing may
    /// follow the entries. Says nothing of the entries' sense: see [`Table::validate`].
    pub fn decode(raw: &[u8]) -> Result<Table, TocError> {
        Table::decode_from(&mut &raw[..], Some(raw.len() as u64))
    }

    /// [`Table::decode`] of the raw bytes `raw` yields, read to its end and never
    /// held whole (a table of 100,000 entries is 14 MB raw beside its 28 MB
    /// decoded); `raw_len`, when known, is how many there are (a hint).
    pub fn decode_from(raw: &mut dyn Read, raw_len: Option<u64>) -> Result<Table, TocError> {
        let mut entries = Vec::new();
        Table::decode_each(raw, &mut |count, e| {
            if entries.capacity() == 0 {
                // The count is the table's word: no more is reserved than the bytes
                // could hold (grown by doubling, a vector would hold up to twice its
                // entries, and three times while it moves).
                let room = raw_len.unwrap_or(1 << 20) / MIN_ENTRY_ENCODED as u64;
                entries.reserve_exact(usize::try_from(count.min(room)).unwrap_or(0));
            }
            entries.push(e);
            Ok(())
        })?;
        Ok(Table { entries })
    }

    /// The entries of the raw table bytes `raw` yields, each handed to `each` as it is
    /// decoded with the number of entries the table states, none kept (what a reader
    /// that needs a few fields of each wants: the table of 100,000 entries is 28 MB
    /// decoded). The same checks as [`Table::decode`]; `raw` is read to its end.
    pub fn decode_each(
        raw: &mut dyn Read,
        each: &mut dyn FnMut(u64, Entry) -> Result<(), TocError>,
    ) -> Result<(), TocError> {
        let mut feed = Feed {
            from: raw,
            buf: Vec::with_capacity(FEED_CHUNK),
            at: 0,
            ended: false,
        };
        let version: u16 = feed.next()?;
        if version != VERSION {
            return Err(TocError::Version(version));
        }
        let n: u64 = feed.next()?;
        for _ in 0..n {
            each(n, feed.next::<Entry>()?)?;
        }
        let left = (feed.buf.len() - feed.at) as u64
            + io::copy(feed.from, &mut io::sink()).map_err(|e| TocError::Decode(e.to_string()))?;
        if left > 0 {
            return Err(TocError::Decode(format!(
                "{left} bytes follow the last entry"
            )));
        }
        Ok(())
    }

    /// The table member as it lies in the archive: the raw bytes as one gzip member or
    /// zstd frame.
    pub fn to_member(&self, codec: Codec) -> Vec<u8> {
        codec.compress(&self.encode())
    }

    /// Reads and validates the table member of an archive whose footer is `footer`:
    /// decompressed (at most [`MAX_TABLE_DECODED`] bytes), decoded, and checked
    /// against the footer's bounds ([`Table::validate`]). The caller has already
    /// checked the member's digest against the manifest's `toc`.
    pub fn from_member(member: &[u8], footer: &Footer) -> Result<Table, TocError> {
        if member.len() as u64 != footer.table_len {
            return Err(TocError::Decode(format!(
                "the member has {} bytes, the footer says {}",
                member.len(),
                footer.table_len
            )));
        }
        let stated = footer.codec.stated_raw_len(member);
        let table = footer.codec.read_member(member, MAX_TABLE_DECODED, |raw| {
            Table::decode_from(raw, stated.map(|n| n.min(MAX_TABLE_DECODED)))
        })?;
        table.validate(footer.table_offset)?;
        Ok(table)
    }

    /// Refuses a table a reader could be misled by, naming the first entry at fault:
    /// an unsafe path (empty, NUL, leading `/`, an empty, `.` or `..` component, but
    /// the root `.`), a repeated path, a mode beyond `0o7777`, nanoseconds ≥ 10⁹, a
    /// non-file with a size, a hard link whose target is not an earlier regular file,
    /// a symlink with an empty target or a NUL; for regular files: a member that
    /// reaches past `members_end` (the table's offset) or is empty, members out of
    /// archive order or overlapping, entries of one member that disagree on its
    /// bounds, data that does not lie inside its member's output or overlaps the
    /// previous file's data in the same member.
    pub fn validate(&self, members_end: u64) -> Result<(), TocError> {
        let mut v = Validator::new(members_end, self.entries.len());
        for e in &self.entries {
            v.entry(&e.path, e)?;
        }
        Ok(())
    }
}

/// The table's raw bytes, as [`Table::encode`] gives them for these entries, made one
/// entry at a time: the entries need not be held together.
pub fn encode_entries<I: ExactSizeIterator<Item = Entry>>(entries: I) -> Vec<u8> {
    /// A sequence serialised as its iterator yields it (its length known ahead, as
    /// postcard needs).
    struct Lazy<I>(std::cell::RefCell<Option<I>>);
    impl<I: ExactSizeIterator<Item = Entry>> Serialize for Lazy<I> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0.borrow_mut().take() {
                Some(it) => s.collect_seq(it),
                None => Err(serde::ser::Error::custom("the entries were already taken")),
            }
        }
    }
    // Serialising plain structs into a Vec has no failure case.
    postcard::to_allocvec(&Wire {
        version: VERSION,
        entries: Lazy(std::cell::RefCell::new(Some(entries))),
    })
    .unwrap_or_default()
}

/// The checks of [`Table::validate`], one entry at a time in archive order, for a
/// table whose entries are not held together. It keeps each path (borrowed) to find
/// repeated ones and hard links' targets.
pub struct Validator<'a> {
    members_end: u64,
    seen: HashSet<&'a [u8]>,
    files: HashSet<&'a [u8]>,
    /// The current member, and the end of the last file's data inside it.
    current: Option<(Member, u64)>,
}

impl<'a> Validator<'a> {
    /// A validator of a table of about `entries` entries whose members end (and
    /// whose table member starts) at `members_end`.
    pub fn new(members_end: u64, entries: usize) -> Validator<'a> {
        Validator {
            members_end,
            seen: HashSet::with_capacity(entries),
            files: HashSet::new(),
            current: None,
        }
    }

    /// Checks the next entry, `e`, whose path is `path` (the same bytes as `e.path`,
    /// in storage that outlives the validator; `e.path` itself is not read).
    pub fn entry(&mut self, path: &'a [u8], e: &Entry) -> Result<(), TocError> {
        let p = path;
        check_path(p).map_err(|m| entry_error(p, m))?;
        if !self.seen.insert(p) {
            return Err(entry_error(p, "the path appears twice"));
        }
        if e.mode > 0o7777 {
            return Err(entry_error(p, format!("mode {:o} is beyond 7777", e.mode)));
        }
        if e.mtime.nanos >= 1_000_000_000 {
            return Err(entry_error(p, "mtime nanoseconds are 10^9 or more"));
        }
        match &e.kind {
            Kind::File { member, .. } => {
                check_member(member, e.size, self.members_end, &mut self.current)
                    .map_err(|m| entry_error(p, m))?;
                self.files.insert(p);
            }
            Kind::Dir => {}
            Kind::Symlink { target } => {
                if target.is_empty() || target.contains(&0) {
                    return Err(entry_error(p, "the symlink target is empty or holds NUL"));
                }
            }
            Kind::HardLink { target } => {
                if !self.files.contains(&target[..]) {
                    return Err(entry_error(
                        p,
                        format!(
                            "the hard link's target \"{}\" is not an earlier regular file",
                            show(target)
                        ),
                    ));
                }
            }
        }
        if !matches!(e.kind, Kind::File { .. }) && e.size != 0 {
            return Err(entry_error(
                p,
                "a size on an entry that is not a regular file",
            ));
        }
        Ok(())
    }
}

/// The path rules of SPEC §7 and §18 for a table path.
fn check_path(p: &[u8]) -> Result<(), &'static str> {
    if p == b"." {
        return Ok(());
    }
    if p.is_empty() {
        return Err("the path is empty");
    }
    if p.contains(&0) {
        return Err("the path holds a NUL byte");
    }
    if p.starts_with(b"/") {
        return Err("the path starts with /");
    }
    for c in p.split(|&b| b == b'/') {
        match c {
            b".." => return Err("the path has a .. component"),
            b"." => return Err("the path has a . component"),
            b"" => return Err("the path has an empty component (// or a trailing /)"),
            _ => {}
        }
    }
    Ok(())
}

/// One regular file's member against the previous file's (`current`), which it
/// replaces.
fn check_member(
    m: &Member,
    size: u64,
    members_end: u64,
    current: &mut Option<(Member, u64)>,
) -> Result<(), String> {
    if m.offset
        .checked_add(m.len)
        .is_none_or(|end| end > members_end)
    {
        return Err(format!(
            "its member (offset {}, {} bytes) reaches past the members' end {members_end}",
            m.offset, m.len
        ));
    }
    if m.len == 0 {
        return Err("its member is empty".to_string());
    }
    let data_end = m
        .data_offset
        .checked_add(size)
        .filter(|&d| d <= m.raw_len)
        .ok_or_else(|| {
            format!(
                "its data ({size} bytes at {}) lies outside its member's {} bytes of output",
                m.data_offset, m.raw_len
            )
        })?;
    match current {
        Some((prev, prev_data_end)) if prev.offset == m.offset => {
            let same = Member {
                data_offset: prev.data_offset,
                ..*m
            };
            if *prev != same {
                return Err(format!(
                    "its member at offset {} disagrees with the previous file's on its bounds",
                    m.offset
                ));
            }
            if m.data_offset < *prev_data_end {
                return Err(format!(
                    "its data at {} overlaps the previous file's, which ends at {prev_data_end}",
                    m.data_offset
                ));
            }
        }
        Some((prev, _)) => {
            let prev_end = prev.offset + prev.len; // checked when prev was read
            if m.offset < prev_end {
                return Err(format!(
                    "its member at offset {} overlaps or precedes the previous member ({}..{prev_end})",
                    m.offset, prev.offset
                ));
            }
        }
        None => {}
    }
    *current = Some((*m, data_end));
    Ok(())
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, offset: u64, len: u64, raw_len: u64, data_offset: u64, size: u64) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: Kind::File {
                member: Member {
                    offset,
                    len,
                    raw_len,
                    data_offset,
                },
                sha256: [7; 32],
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            uname: Name::from_slice(b"root"),
            gname: Name::from_slice(b"root"),
            mtime: Mtime {
                secs: 1_700_000_000,
                nanos: 123_456_789,
            },
            size,
        }
    }

    fn other(path: &str, kind: Kind) -> Entry {
        Entry {
            kind,
            size: 0,
            mode: 0o755,
            ..file(path, 0, 1, 1, 0, 0)
        }
    }

    fn good() -> Table {
        Table {
            entries: vec![
                other(".", Kind::Dir),
                other("a", Kind::Dir),
                file("a/x", 0, 100, 2048, 512, 10),
                file("a/y", 0, 100, 2048, 1536, 5),
                file("b", 100, 50, 1024, 512, 300),
                other(
                    "c",
                    Kind::HardLink {
                        target: b"a/x".to_vec(),
                    },
                ),
                other(
                    "d",
                    Kind::Symlink {
                        target: b"../up".to_vec(),
                    },
                ),
            ],
        }
    }

    #[test]
    fn round_trip_and_validate() {
        let t = good();
        t.validate(150).unwrap();
        let raw = t.encode();
        assert_eq!(Table::decode(&raw).unwrap(), t);
        for codec in [Codec::Gzip, Codec::Zstd] {
            let member = t.to_member(codec);
            let footer = Footer {
                codec,
                table_offset: 150,
                table_len: member.len() as u64,
            };
            let f = footer.encode();
            assert_eq!(f.len(), codec.footer_len());
            let archive_len = 150 + member.len() as u64 + f.len() as u64;
            let mut tail = vec![9u8; 100];
            tail.extend_from_slice(&f);
            assert_eq!(Footer::parse(&tail, archive_len).unwrap(), footer);
            assert_eq!(Table::from_member(&member, &footer).unwrap(), t);
            // Reproducible.
            assert_eq!(t.to_member(codec), member);
        }
    }

    /// Owner names are written as the `Vec<u8>` they were (the table's format did not
    /// change) and read back whatever their length: empty, held in place, on the heap.
    #[test]
    fn owner_names_keep_the_bytes_of_a_vec() {
        for name in [&b""[..], b"root", b"sixteen_bytes_16", &[b'n'; 40][..]] {
            let as_vec = postcard::to_allocvec(&name.to_vec()).unwrap();
            let as_name = postcard::to_allocvec(&Name::from_slice(name)).unwrap();
            assert_eq!(as_name, as_vec);
            let back: Name = postcard::from_bytes(&as_vec).unwrap();
            assert_eq!(&back[..], name);
            let mut t = good();
            t.entries[2].uname = Name::from_slice(name);
            t.entries[3].gname = Name::from_slice(name);
            assert_eq!(Table::decode(&t.encode()).unwrap(), t);
        }
    }

    #[test]
    fn entries_encoded_one_at_a_time_are_the_tables_bytes() {
        let t = good();
        assert_eq!(encode_entries(t.entries.clone().into_iter()), t.encode());
        assert_eq!(
            encode_entries(Vec::new().into_iter()),
            Table::default().encode()
        );
    }

    #[test]
    fn a_member_written_out_as_it_goes_is_the_member_made_in_memory() {
        // Compressible and incompressible stretches, written in uneven pieces (the
        // same pieces both ways: deflate's output depends on how its input is cut).
        let mut seed = 1u64;
        let data: Vec<u8> = (0..400_000)
            .map(|i| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                if i % 100_000 < 50_000 {
                    b"abc\n"[i % 4]
                } else {
                    (seed >> 56) as u8
                }
            })
            .collect();
        for codec in [Codec::Gzip, Codec::Zstd] {
            let mut mem = codec.encoder(data.len() as u64);
            let mut enc = codec.encoder_into(Vec::new(), data.len() as u64);
            for piece in data.chunks(7919) {
                mem.write_all(piece).unwrap();
                enc.write_all(piece).unwrap();
            }
            let whole = mem.finish().unwrap();
            let (mut out, lengths) = enc.finish_into().unwrap();
            assert_eq!(lengths.is_some(), codec == Codec::Gzip);
            if let Some(l) = lengths {
                assert_eq!(out[16..32], [0; 16]);
                out[16..32].copy_from_slice(&l);
                assert_eq!(gzip_member_lengths(&out), Some((out.len() as u64, 400_000)));
            }
            assert!(out == whole, "{codec}");
            assert!(whole.len() as u64 <= Codec::member_bound(data.len() as u64));
            let back = codec.decompress_member(&whole, 400_000).unwrap();
            assert!(back == data, "{codec}");
        }
    }

    #[test]
    fn members_state_their_lengths() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let g = Codec::Gzip.compress(&data);
        assert_eq!(
            gzip_member_lengths(&g),
            Some((g.len() as u64, data.len() as u64))
        );
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&g[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        assert_eq!(
            Codec::Gzip
                .decompress_member(&g, data.len() as u64)
                .unwrap(),
            data
        );
        assert_eq!(gzip_member_lengths(&g[..31]), None);
        assert_eq!(
            gzip_member_lengths(&Codec::Gzip.compress(b"")[..]),
            Some((42, 0))
        );
        let z = Codec::Zstd.compress(&data);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&z).ok(),
            Some(Some(data.len() as u64))
        );
        assert_eq!(zstd::zstd_safe::find_frame_compressed_size(&z), Ok(z.len()));
    }

    #[test]
    fn the_gzip_footer_is_an_empty_gzip_member() {
        let f = Footer {
            codec: Codec::Gzip,
            table_offset: 1,
            table_len: 2,
        }
        .encode();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn footers_that_do_not_fit_are_refused() {
        let f = |offset, len| {
            Footer {
                codec: Codec::Zstd,
                table_offset: offset,
                table_len: len,
            }
            .encode()
        };
        let n = FOOTER_LEN_ZSTD as u64;
        assert!(Footer::parse(&f(10, 5), 15 + n).is_ok());
        for (o, l) in [
            (10, 6),
            (10, 4),
            (u64::MAX, 5),
            (0, 0),
            (0, MAX_TABLE_LEN + 1),
        ] {
            let err = Footer::parse(&f(o, l), 15 + n).unwrap_err();
            assert!(
                matches!(err, TocError::TableBounds { .. }),
                "{o} {l}: {err}"
            );
        }
        assert!(matches!(
            Footer::parse(b"no footer here at all, no, not at all..............", 60),
            Err(TocError::NoFooter(_))
        ));
        let mut v2 = f(10, 5);
        v2[16] = 2;
        assert_eq!(Footer::parse(&v2, 15 + n), Err(TocError::Version(2)));
    }

    fn refused(t: &Table, entry: &str, says: &str) {
        let err = t.validate(150).unwrap_err();
        match &err {
            TocError::Entry { entry: e, msg } => {
                assert_eq!(e, entry, "{err}");
                assert!(msg.contains(says), "{err}");
            }
            _ => panic!("{err}"),
        }
    }

    #[test]
    fn unsafe_paths_are_refused_naming_the_entry() {
        for (path, says) in [
            ("../etc", ".."),
            ("a/../../x", ".."),
            ("/etc/passwd", "starts with /"),
            ("a\0b", "NUL"),
            ("", "empty"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("./a", ". component"),
        ] {
            let mut t = good();
            t.entries[6].path = path.as_bytes().to_vec();
            refused(&t, &show(path.as_bytes()), says);
        }
    }

    #[test]
    fn duplicates_overlaps_and_bounds_are_refused() {
        let mut t = good();
        t.entries[4].path = b"a/x".to_vec();
        refused(&t, "a/x", "twice");

        // A member past the table.
        let mut t = good();
        t.entries[4] = file("b", 100, 51, 1024, 512, 300);
        refused(&t, "b", "past the members' end");
        let mut t = good();
        t.entries[4] = file("b", u64::MAX, 2, 1024, 512, 300);
        refused(&t, "b", "past the members' end");
        // Overlapping members.
        let mut t = good();
        t.entries[4] = file("b", 99, 50, 1024, 512, 300);
        refused(&t, "b", "overlaps or precedes");
        // Data outside the member's output.
        let mut t = good();
        t.entries[4] = file("b", 100, 50, 1024, 800, 300);
        refused(&t, "b", "outside its member");
        // Two files of one member whose data overlap, or which disagree on it.
        let mut t = good();
        t.entries[3] = file("a/y", 0, 100, 2048, 515, 5);
        refused(&t, "a/y", "overlaps the previous file's");
        let mut t = good();
        t.entries[3] = file("a/y", 0, 101, 2048, 1536, 5);
        refused(&t, "a/y", "disagrees");
        // An empty member.
        let mut t = good();
        t.entries[4] = file("b", 100, 0, 1024, 512, 300);
        refused(&t, "b", "empty");
    }

    #[test]
    fn links_modes_sizes_and_times_are_checked() {
        let mut t = good();
        t.entries[5].kind = Kind::HardLink {
            target: b"b2".to_vec(),
        };
        refused(&t, "c", "not an earlier regular file");
        let mut t = good();
        t.entries[5].kind = Kind::HardLink {
            target: b"a".to_vec(),
        };
        refused(&t, "c", "not an earlier regular file");
        let mut t = good();
        t.entries[6].kind = Kind::Symlink { target: Vec::new() };
        refused(&t, "d", "symlink target");
        let mut t = good();
        t.entries[1].mode = 0o10755;
        refused(&t, "a", "mode");
        let mut t = good();
        t.entries[1].size = 3;
        refused(&t, "a", "size");
        let mut t = good();
        t.entries[2].mtime.nanos = 1_000_000_000;
        refused(&t, "a/x", "nanoseconds");
    }

    /// A reader that yields one byte a read.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(out)) => {
                    *out = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn decoding_from_a_stream_reads_values_across_refills() {
        let mut t = good();
        // An entry longer than the feed's first window.
        t.entries.push(other(&"l/".repeat(70_000), Kind::Dir));
        let raw = t.encode();
        assert_eq!(Table::decode_from(&mut Trickle(&raw), None).unwrap(), t);
        assert_eq!(Table::decode_from(&mut &raw[..], Some(3)).unwrap(), t);
        let mut extra = raw.clone();
        extra.extend_from_slice(&[0; 70_000]);
        assert_eq!(
            Table::decode_from(&mut Trickle(&extra), None),
            Err(TocError::Decode("70000 bytes follow the last entry".into()))
        );
        let cut = &raw[..raw.len() - 1];
        assert!(matches!(
            Table::decode_from(&mut Trickle(cut), None),
            Err(TocError::Decode(_))
        ));
        // Through a member: the same table, and a member cut short refused.
        for codec in [Codec::Gzip, Codec::Zstd] {
            let member = codec.compress(&raw);
            let back = codec
                .read_member(&member, raw.len() as u64, |r| Table::decode_from(r, None))
                .unwrap();
            assert_eq!(back, t);
            assert!(codec
                .read_member(&member, raw.len() as u64 - 1, |r| Table::decode_from(
                    r, None
                ))
                .is_err());
            assert!(codec
                .read_member(&member[..member.len() - 4], raw.len() as u64, |r| {
                    Table::decode_from(r, None)
                })
                .is_err());
        }
    }

    #[test]
    fn decode_refuses_garbage_versions_trailing_bytes_and_bombs() {
        let t = good();
        let mut raw = t.encode();
        raw.push(0);
        assert!(matches!(Table::decode(&raw), Err(TocError::Decode(_))));
        assert!(matches!(
            Table::decode(&raw[..raw.len() - 5]),
            Err(TocError::Decode(_))
        ));
        let other = postcard::to_allocvec(&Wire {
            version: 9u16,
            entries: &t.entries,
        })
        .unwrap();
        assert_eq!(Table::decode(&other), Err(TocError::Version(9)));
        // A member that inflates past the limit, and one followed by bytes.
        let big = Codec::Gzip.compress(&vec![0u8; 10_000]);
        assert!(Codec::Gzip.decompress_member(&big, 9_999).is_err());
        assert_eq!(
            Codec::Gzip.decompress_member(&big, 10_000).unwrap().len(),
            10_000
        );
        let mut two = big.clone();
        two.extend_from_slice(&big);
        assert!(Codec::Gzip.decompress_member(&two, 1 << 20).is_err());
        let z = Codec::Zstd.compress(b"abc");
        let mut z2 = z.clone();
        z2.extend_from_slice(&z);
        assert!(Codec::Zstd.decompress_member(&z2, 1 << 20).is_err());
        assert_eq!(Codec::Zstd.decompress_member(&z, 3).unwrap(), b"abc");
    }

    #[test]
    fn about_fifty_bytes_an_entry() {
        // 1,000 files in 10 directories, names like a real tree's.
        let mut t = Table::default();
        for d in 0..10u64 {
            t.entries.push(other(&format!("src/module{d}"), Kind::Dir));
            for f in 0..100u64 {
                let i = d * 100 + f;
                let mut e = file(
                    &format!("src/module{d}/file_{f:03}.rs"),
                    i * 700,
                    700,
                    2048,
                    512,
                    1000 + i,
                );
                if let Kind::File { sha256, .. } = &mut e.kind {
                    *sha256 = sha2::Digest::finalize(
                        <sha2::Sha256 as sha2::Digest>::new_with_prefix(i.to_le_bytes()),
                    )
                    .into();
                }
                t.entries.push(e);
            }
        }
        let per = t.to_member(Codec::Gzip).len() / t.entries.len();
        eprintln!("{per} bytes an entry");
        assert!(per <= 60, "{per} bytes an entry");
    }
}
