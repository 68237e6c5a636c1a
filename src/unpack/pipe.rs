//! The pipe between the source and the tar parser: the reading and decoding threads
//! move the bytes in chunks of `CHUNK` over a bounded channel (`CHUNKS_IN_FLIGHT`),
//! reusing the buffers the parser hands back, so an unpack's memory is bounded
//! whatever the archive's size.
//!
//! Never decodes a format itself and never touches the filesystem.

use std::io::{self, Read};
use std::sync::mpsc;

/// Decompressed bytes handed from the decoding thread to the tar parser at a time, and
/// how many such chunks may wait: this bounds the memory of an unpack.
pub(super) const CHUNK: usize = 256 * 1024;
pub(super) const CHUNKS_IN_FLIGHT: usize = 8;
/// Buffer between the source and the decoder / tar parser.
pub(super) const INPUT_BUF: usize = 128 * 1024;

/// Moves `r`'s bytes to the parser in chunks, reusing the buffers it hands back.
/// Stops quietly when the parser has gone (it failed: its error is the one to tell).
pub(super) fn pump(
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
    pub(super) fn new(rx: mpsc::Receiver<Vec<u8>>, back: mpsc::Sender<Vec<u8>>) -> Self {
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
