//! Reads the tar stream with tar-rs, entry by entry, into the extractor: the end of
//! the archive (a missing end-of-archive marker accepted with a warning, an empty
//! stream refused, the stream read to its very end) and tar-rs's header errors put in
//! words.
//!
//! Never writes anything itself: the `Extractor` does.

use std::io::{self, Read};

use crate::at::Tree;
use crate::error::Error;
use crate::log::shown;
use crate::Result;

use super::errors::{archive_error, archive_error_from, chain, corrupt};
use super::extract::Extractor;
use super::format::{Format, FORMATS_TRIED};
use super::{KnownFile, Staged, Unchanged, UnpackOptions};

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

/// Every member of the tar `stream` through the `Extractor` into `into`, then the
/// stream to its very end, then the directory fixes: the tree, or the first error.
/// `told`: digests the stream checks itself (see `unpack_known`).
pub(super) fn read_archive<R: Read>(
    stream: R,
    into: &Tree,
    opts: &UnpackOptions,
    format: Format,
    unchanged: Option<&mut dyn Unchanged>,
    known: impl IntoIterator<Item = KnownFile>,
    told: Option<crate::digest::Digests>,
) -> Result<Staged> {
    let mut archive = tar::Archive::new(EofTracker {
        inner: stream,
        hit_eof: false,
    });
    let mut x = Extractor::new(into, opts, unchanged);
    x.told = told;
    // The last member read, for errors in the header that follows it.
    let mut last: Option<Vec<u8>> = None;
    for entry in archive.entries().map_err(|e| corrupt(opts, e))? {
        crate::interrupt::check()?;
        let mut entry = entry.map_err(|e| header_error(opts, format, last.as_deref(), e))?;
        last = Some(entry.path_bytes().into_owned());
        x.entry(&mut entry)?;
    }
    // Every file handed to the writer thread finished, before the stream's rest.
    x.files_written()?;
    // Every file of the stream is written: its told digests are no longer asked for
    // (freed before the kept files are adopted, the unpack's peak).
    x.told = None;
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
    // the member trailers, whose CRC and length the decoder checks as it reaches them
    // (and a packed archive's table, when the files' digests are taken from it).
    if opts.digests_from_table {
        x.table_digests(&mut rest)?;
    } else {
        io::copy(&mut rest, &mut io::sink()).map_err(|e| corrupt(opts, e))?;
    }
    let known = known.into_iter();
    x.reserve_adopted(known.size_hint().0);
    for file in known {
        x.adopt(file)?;
    }
    // Directory modes and mtimes only once the stream is known to be good, so a failed
    // unpack leaves a staging tree the caller can always remove.
    x.finish()
}

/// An error of tar-rs reading a header, in words, naming where it is; tar-rs's error
/// kept as the source.
fn header_error(opts: &UnpackOptions, format: Format, last: Option<&[u8]>, e: io::Error) -> Error {
    let text = chain(&e);
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
    archive_error_from(opts, msg, e)
}

/// The error for a stream that ends before its first member.
fn empty_stream(format: Format) -> String {
    match format {
        Format::Tar => format!("empty: no tar member (tried {FORMATS_TRIED} by content)"),
        f => format!("the {} data holds no tar member", f.name()),
    }
}
