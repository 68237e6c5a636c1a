//! The archive's format, by content (never by the URL's name), and the one decode
//! pipeline: a compressed stream is read to its end, every member / frame / stream,
//! trailers and checksums checked (a packed archive's gzip or zstd members through
//! `members`, which has them decompressed by worker threads). The formats later issues
//! add go here.
//!
//! Never parses tar and never touches the filesystem.

use std::io::{self, Read};

use super::members::{self, Members};
use super::pipe::{Chunks, ReadChunks};
use crate::toc::Codec;

/// Bytes read ahead to recognise the compression format, and a packed archive.
pub(super) const MAGIC_LEN: usize = members::HEAD_LEN;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// A zstd skippable frame (`pzstd` starts with one): 0x184D2A50..=0x184D2A5F, LE.
const ZSTD_SKIPPABLE_TAIL: [u8; 3] = [0x2a, 0x4d, 0x18];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
const BZIP2_MAGIC: [u8; 3] = *b"BZh";
/// What a stream that is none of these was tried as, for the error.
pub(super) const FORMATS_TRIED: &str = "tar, gzip, zstd, xz and bzip2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Gzip,
    Zstd,
    Xz,
    Bzip2,
    Tar,
}

/// The format, by content: never by the URL's name.
pub(super) fn sniff(magic: &[u8]) -> Format {
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
    pub(super) fn name(self) -> &'static str {
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
/// end (every member / frame / stream, trailers and checksums checked), in chunks.
pub(super) fn decoder<'a, R: io::BufRead + Send + 'a>(
    format: Format,
    raw: R,
) -> io::Result<Box<dyn Chunks + 'a>> {
    Ok(Box::new(ReadChunks(sequential(format, raw)?)))
}

/// The decoder of a packed gzip or zstd stream (`members::packed`): its members by
/// worker threads, anything after them member after member.
pub(super) fn members_decoder<'a, R: io::BufRead + Send + 'a>(
    format: Format,
    raw: R,
) -> Box<dyn Chunks + 'a> {
    match format {
        Format::Zstd => Box::new(Members::new(Codec::Zstd, raw, |rest| {
            sequential(Format::Zstd, rest)
        })),
        _ => Box::new(Members::new(Codec::Gzip, raw, |rest| {
            sequential(Format::Gzip, rest)
        })),
    }
}

/// The decoder that reads a stream of `format` on this thread.
pub(super) fn sequential<'a, R: io::BufRead + Send + 'a>(
    format: Format,
    raw: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match format {
        Format::Tar => Box::new(raw),
        // Every member, and the zero padding after the last one.
        Format::Gzip => Box::new(GzMembers::new(raw)),
        // libzstd reads every frame and skips skippable ones.
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        // Concatenated streams and stream padding, as `xz -d` reads them.
        Format::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(raw)),
        Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(raw)),
    })
}

/// Whether a stream of `format` that begins with `head` is a packed archive's, whose
/// members are cut and decompressed by worker threads.
pub(super) fn packed(format: Format, head: &[u8]) -> bool {
    match format {
        Format::Gzip => members::packed(Codec::Gzip, head),
        Format::Zstd => members::packed(Codec::Zstd, head),
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

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
}
