//! The pipe between the source and the tar parser: a thread reads the source (where
//! the caller hashes), for a compressed archive a second one runs the decoder (for a
//! packed archive the reading thread cuts its members, which workers decompress), and
//! the calling thread parses; the bytes move in chunks (`CHUNK`, or a packed archive's
//! decompressed members, see `members`) over bounded channels (`CHUNKS_IN_FLIGHT`),
//! reusing the buffers the parser hands back, so an unpack's memory is bounded whatever
//! the archive's size. The decoder reads the source's chunks where they lie
//! (`ChunkReader` is a `BufRead`), and hands its own buffers on when it has them
//! (`Chunks`).
//!
//! Never decodes a format itself (`format::decoder` does) and never touches the
//! filesystem.

use std::io::{self, BufRead, Read};
use std::sync::{mpsc, Mutex};

use crate::Result;

use super::errors::{archive_error_from, chain, corrupt};
use super::format::{decoder, members_decoder, Format};
use super::UnpackOptions;

/// Decompressed bytes handed from the decoding thread to the tar parser at a time, and
/// how many such chunks may wait: this bounds the memory of an unpack.
pub(super) const CHUNK: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 8;
/// Buffer between the source and the reading thread.
const INPUT_BUF: usize = 128 * 1024;
/// Buffer between the source and a packed stream's members, which reads of this
/// length or more take straight from the source.
const PACKED_BUF: usize = 64 * 1024;

/// A source of bytes handed out in owned chunks, so a decoder that makes its output in
/// buffers of its own hands them on without a copy.
pub(super) trait Chunks: Send {
    /// The next bytes: written into `spare` (a buffer the parser handed back, or a new
    /// empty one), or in a buffer of the source's own, which then keeps `spare` for
    /// reuse. Empty at the end of the stream.
    fn next_chunk(&mut self, spare: Vec<u8>) -> io::Result<Vec<u8>>;
}

/// Any reader as `Chunks` of `CHUNK` bytes (short only at its end).
pub(super) struct ReadChunks<R>(pub(super) R);

impl<R: Read + Send> Chunks for ReadChunks<R> {
    fn next_chunk(&mut self, mut spare: Vec<u8>) -> io::Result<Vec<u8>> {
        spare.resize(CHUNK, 0);
        let n = read_up_to(&mut self.0, &mut spare)?;
        spare.truncate(n);
        Ok(spare)
    }
}

impl<C: Chunks + ?Sized> Chunks for Box<C> {
    fn next_chunk(&mut self, spare: Vec<u8>) -> io::Result<Vec<u8>> {
        (**self).next_chunk(spare)
    }
}

/// Runs `parse` on this thread over the decoded bytes of `input` (of `format`), while
/// scoped threads read and decode them; one error is told (the first cause, below).
/// A `packed` stream (its members state their lengths, `members::packed`) is read by
/// the thread that cuts its members, which workers decompress; any other compressed
/// stream is read on one thread and decoded on another.
pub(super) fn run<R: Read + Send, T>(
    input: R,
    format: Format,
    packed: bool,
    opts: &UnpackOptions,
    parse: impl FnOnce(ChunkReader) -> Result<T>,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (back_tx, back_rx) = mpsc::channel();
    // For a compressed archive, reading the source (and hashing it, in the caller's
    // reader) gets a thread of its own, apart from the decoder.
    let (raw_tx, raw_rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (raw_back_tx, raw_back_rx) = mpsc::channel();
    // The source's own error, where the thread that reads it also decodes.
    let source_failed = Mutex::new(None);
    std::thread::scope(|s| {
        let (reader_thread, producer) = match format {
            Format::Tar => {
                let input = io::BufReader::with_capacity(INPUT_BUF, input);
                (
                    None,
                    s.spawn(move || pump(ReadChunks(input), &tx, &back_rx)),
                )
            }
            compressed if packed => {
                // Reads of `PACKED_BUF` bytes or more go straight into the members'
                // buffer.
                let input = Tracked {
                    inner: input,
                    failed: &source_failed,
                };
                let input = io::BufReader::with_capacity(PACKED_BUF, input);
                let producer =
                    s.spawn(move || pump(members_decoder(compressed, input), &tx, &back_rx));
                (None, producer)
            }
            compressed => {
                let input = io::BufReader::with_capacity(INPUT_BUF, input);
                let reader = s.spawn(move || pump(ReadChunks(input), &raw_tx, &raw_back_rx));
                let producer = s.spawn(move || {
                    let raw = ChunkReader::new(raw_rx, raw_back_tx);
                    pump(decoder(compressed, raw)?, &tx, &back_rx)
                });
                (Some(reader), producer)
            }
        };
        let parsed = parse(ChunkReader::new(rx, back_tx));
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the decompression thread panicked")));
        let read = match reader_thread {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the reading thread panicked"))),
            None => Ok(()),
        };
        let failed = source_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let read = match failed {
            Some(e) => Err(e),
            None => read,
        };
        match (parsed, read, produced) {
            // A source error explains any decoding error, which explains any error the
            // parser then saw.
            (_, Err(e), _) => Err(corrupt(opts, e)),
            (_, Ok(()), Err(e)) => Err(archive_error_from(
                opts,
                format!("{} data is corrupt: {}", format.name(), chain(&e)),
                e,
            )),
            (result, Ok(()), Ok(())) => result,
        }
    })
}

/// The source of a thread that reads and decodes: its first error is kept for `run`,
/// which tells it as the source's, and the decoder gets a stand-in of the same kind.
struct Tracked<'s, R> {
    inner: R,
    failed: &'s Mutex<Option<io::Error>>,
}

impl<R: Read> Read for Tracked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            // EINTR is retried by the reader (see `read_up_to`).
            Err(e) if !(e.kind() == io::ErrorKind::Interrupted && e.get_ref().is_none()) => {
                let kind = e.kind();
                let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                failed.get_or_insert(e);
                Err(io::Error::new(kind, "the source could not be read"))
            }
            r => r,
        }
    }
}

/// Moves `src`'s chunks to the parser, handing it back the buffers the parser returns.
/// Stops quietly when the parser has gone (it failed: its error is the one to tell).
fn pump(
    mut src: impl Chunks,
    tx: &mpsc::SyncSender<Vec<u8>>,
    back: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    loop {
        let spare = back.try_recv().unwrap_or_default();
        let buf = src.next_chunk(spare)?;
        if buf.is_empty() {
            return Ok(());
        }
        if tx.send(buf).is_err() {
            return Ok(());
        }
    }
}

/// The receiving end of a pipe (the parser's, or the decoder's of the source): reads
/// the chunks in order, each handed back once read; end of stream when the sending
/// thread is done.
pub(super) struct ChunkReader {
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
        let cur = self.fill_buf()?;
        let n = buf.len().min(cur.len());
        buf[..n].copy_from_slice(&cur[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let done = std::mem::replace(&mut self.cur, next);
                    // The sending thread may have finished: then the buffer is dropped.
                    let _ = self.back.send(done);
                    self.pos = 0;
                }
                Err(_) => break,
            }
        }
        Ok(&self.cur[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.cur.len());
    }
}

/// Fills `buf` as far as the reader allows (short only at end of stream).
pub(super) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
