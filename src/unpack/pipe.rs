//! The pipe between the source and the tar parser: a thread reads the source (where
//! the caller hashes), for a compressed archive a second one runs the decoder, and the
//! calling thread parses; the bytes move in chunks of `CHUNK` over bounded channels
//! (`CHUNKS_IN_FLIGHT`), reusing the buffers the parser hands back, so an unpack's
//! memory is bounded whatever the archive's size.
//!
//! Never decodes a format itself (`format::decoder` does) and never touches the
//! filesystem.

use std::io::{self, Read};
use std::sync::mpsc;

use crate::Result;

use super::errors::{archive_error_from, chain, corrupt};
use super::format::{decoder, Format};
use super::UnpackOptions;

/// Decompressed bytes handed from the decoding thread to the tar parser at a time, and
/// how many such chunks may wait: this bounds the memory of an unpack.
const CHUNK: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 8;
/// Buffer between the source and the decoder / tar parser.
const INPUT_BUF: usize = 128 * 1024;

/// Runs `parse` on this thread over the decoded bytes of `input` (of `format`), while
/// scoped threads read and decode them; one error is told (the first cause, below).
pub(super) fn run<R: Read + Send, T>(
    input: R,
    format: Format,
    opts: &UnpackOptions,
    parse: impl FnOnce(ChunkReader) -> Result<T>,
) -> Result<T> {
    let input = io::BufReader::with_capacity(INPUT_BUF, input);
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
