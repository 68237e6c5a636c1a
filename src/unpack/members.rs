//! Members decompressed on every core (SPEC §18): the members of a packed archive
//! state their lengths (a gzip member in its `SL` extra subfield, a zstd frame in its
//! block headers, its content size in its frame header; `docs/packed-archive.md`), so
//! they are cut from the stream as it arrives, decompressed by worker threads and handed
//! on in order. A member that does not state them (any archive but a packed one, the
//! footer, a zstd skippable frame) hands the rest of the stream to the sequential
//! decoder, which reads it as before; a member too large to hold is decompressed here,
//! streaming, before the next ones.
//!
//! Each member is checked whole (a gzip member's CRC and length, exactly one member or
//! frame, its stated decompressed length); the whole archive's checksum is still the
//! caller's. Never parses tar and never touches the filesystem.

use std::collections::VecDeque;
use std::io::{self, BufRead, Cursor, Read};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::toc::{gzip_member_lengths, Codec};

/// The largest member (compressed, and decompressed) handed to a worker: larger ones
/// are decompressed streaming, so the members in flight stay within
/// `WINDOW_MAX * 2 * MEMBER_MAX` bytes.
const MEMBER_MAX: u64 = 2 << 20;
/// Members in flight: twice the workers, at most this.
const WINDOW_MAX: usize = 8;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

type Out = io::Result<Vec<u8>>;

struct Job {
    member: Vec<u8>,
    raw_len: u64,
    done: mpsc::SyncSender<Out>,
}

/// The input: bytes read ahead and put back (`carry`), then the source.
struct Input<R> {
    carry: Vec<u8>,
    raw: R,
}

impl<R: Read> Input<R> {
    /// Appends bytes to `buf` until it holds `want`; false when the stream ends first.
    fn fill(&mut self, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
        if buf.len() < want && !self.carry.is_empty() {
            let take = (want - buf.len()).min(self.carry.len());
            buf.extend(self.carry.drain(..take));
        }
        while buf.len() < want {
            let start = buf.len();
            buf.resize(want, 0);
            let n = match self.raw.read(&mut buf[start..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    buf.truncate(start);
                    return Err(e);
                }
            };
            buf.truncate(start + n);
            if n == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// What the stream holds next.
enum Next {
    /// A whole member, and its decompressed length.
    Member(Vec<u8>, u64),
    /// A member too large to hold: its first bytes, and its decompressed length.
    Big(Vec<u8>, u64),
    /// Something else (its first bytes): the sequential decoder takes over.
    Other(Vec<u8>),
    /// The end of the stream.
    End,
}

type Chained<R> = io::Chain<Cursor<Vec<u8>>, R>;

/// A member decompressed here, streaming.
enum Big<R: BufRead> {
    Gzip(Box<flate2::bufread::GzDecoder<Chained<R>>>),
    Zstd(zstd::stream::read::Decoder<'static, Chained<R>>),
}

/// The decompressed bytes of a gzip or zstd stream, members cut and decompressed on
/// every core while they state their lengths (see the module's comment).
pub(super) struct Members<'a, R: BufRead + Send + 'a> {
    codec: Codec,
    input: Option<Input<R>>,
    /// The sequential decoder of the rest, once a member did not state its lengths.
    rest: Option<Box<dyn Read + Send + 'a>>,
    /// Makes `rest` from what is left.
    sequential: fn(Chained<R>) -> io::Result<Box<dyn Read + Send + 'a>>,
    big: Option<(Big<R>, u64, u64)>,
    pending: VecDeque<mpsc::Receiver<Out>>,
    out: Vec<u8>,
    pos: usize,
    ended: bool,
    jobs: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    window: usize,
}

impl<'a, R: BufRead + Send + 'a> Members<'a, R> {
    pub(super) fn new(
        codec: Codec,
        raw: R,
        sequential: fn(Chained<R>) -> io::Result<Box<dyn Read + Send + 'a>>,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Members {
            codec,
            input: Some(Input {
                carry: Vec::new(),
                raw,
            }),
            rest: None,
            sequential,
            big: None,
            pending: VecDeque::new(),
            out: Vec::new(),
            pos: 0,
            ended: false,
            jobs: None,
            workers: Vec::new(),
            window: (2 * cores).min(WINDOW_MAX),
        }
    }

    /// The next member from the input.
    fn next(&mut self) -> io::Result<Next> {
        let Some(input) = self.input.as_mut() else {
            return Ok(Next::End);
        };
        let mut head = Vec::with_capacity(64);
        input.fill(&mut head, 32)?;
        if head.is_empty() {
            return Ok(Next::End);
        }
        match self.codec {
            Codec::Gzip => match gzip_member_lengths(&head) {
                Some((len, raw_len))
                    if (42..=MEMBER_MAX).contains(&len) && raw_len <= MEMBER_MAX =>
                {
                    if !input.fill(&mut head, len as usize)? {
                        return Ok(Next::Other(head));
                    }
                    Ok(Next::Member(head, raw_len))
                }
                Some((len, raw_len)) if len >= 42 => Ok(Next::Big(head, raw_len)),
                _ => Ok(Next::Other(head)),
            },
            Codec::Zstd => zstd_frame(input, head),
        }
    }

    fn dispatch(&mut self, member: Vec<u8>, raw_len: u64) -> io::Result<()> {
        if self.jobs.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let codec = self.codec;
            for _ in 0..self.window.div_ceil(2) {
                let rx = Arc::clone(&rx);
                self.workers.push(std::thread::spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let out = codec
                        .decompress_member(&job.member, job.raw_len)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                        .and_then(|out| {
                            if out.len() as u64 == job.raw_len {
                                Ok(out)
                            } else {
                                Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!(
                                        "a member decompresses to {} bytes, it states {}",
                                        out.len(),
                                        job.raw_len
                                    ),
                                ))
                            }
                        });
                    let _ = job.done.send(out);
                }));
            }
            self.jobs = Some(tx);
        }
        let (done, rx) = mpsc::sync_channel(1);
        let job = Job {
            member,
            raw_len,
            done,
        };
        match &self.jobs {
            Some(jobs) if jobs.send(job).is_ok() => {
                self.pending.push_back(rx);
                Ok(())
            }
            _ => Err(io::Error::other("the decompressing threads are gone")),
        }
    }

    /// Reads the next members into the window, until it is full or something else
    /// than a member that can be held comes.
    fn refill(&mut self) -> io::Result<()> {
        while !self.ended
            && self.rest.is_none()
            && self.big.is_none()
            && self.pending.len() < self.window
        {
            match self.next()? {
                Next::Member(m, raw_len) => self.dispatch(m, raw_len)?,
                Next::Big(head, raw_len) => {
                    let Some(input) = self.input.take() else {
                        return Ok(());
                    };
                    let chained = Cursor::new(head).chain(input.raw);
                    let chained = prepend(input.carry, chained);
                    let dec = match self.codec {
                        Codec::Gzip => {
                            Big::Gzip(Box::new(flate2::bufread::GzDecoder::new(chained)))
                        }
                        Codec::Zstd => Big::Zstd(
                            zstd::stream::read::Decoder::with_buffer(chained)?.single_frame(),
                        ),
                    };
                    self.big = Some((dec, raw_len, 0));
                }
                Next::Other(head) => {
                    let Some(input) = self.input.take() else {
                        return Ok(());
                    };
                    let chained = prepend(input.carry, Cursor::new(head).chain(input.raw));
                    self.rest = Some((self.sequential)(chained)?);
                }
                Next::End => self.ended = true,
            }
        }
        Ok(())
    }
}

/// `carry` (bytes read ahead past `head`) put back right after `head`.
fn prepend<R: BufRead>(carry: Vec<u8>, chained: Chained<R>) -> Chained<R> {
    if carry.is_empty() {
        return chained;
    }
    let (head, raw) = chained.into_inner();
    let mut bytes = head.into_inner();
    bytes.extend_from_slice(&carry);
    Cursor::new(bytes).chain(raw)
}

impl<'a, R: BufRead + Send + 'a> Read for Members<'a, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if buf.is_empty() {
                return Ok(0);
            }
            self.refill()?;
            if let Some(rx) = self.pending.pop_front() {
                self.out = rx
                    .recv()
                    .map_err(|_| io::Error::other("a decompressing thread ended early"))??;
                self.pos = 0;
                continue;
            }
            if let Some((dec, raw_len, got)) = self.big.as_mut() {
                let n = match dec {
                    Big::Gzip(d) => d.read(buf)?,
                    Big::Zstd(d) => d.read(buf)?,
                };
                *got += n as u64;
                if n > 0 {
                    return Ok(n);
                }
                if *got != *raw_len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a member decompresses to {got} bytes, it states {raw_len}"),
                    ));
                }
                let Some((dec, _, _)) = self.big.take() else {
                    continue;
                };
                let chained = match dec {
                    Big::Gzip(d) => d.into_inner(),
                    Big::Zstd(d) => d.finish(),
                };
                // What the member left unread of the chain goes back before the source.
                let (head, raw) = chained.into_inner();
                let pos = usize::try_from(head.position()).unwrap_or(usize::MAX);
                let mut bytes = head.into_inner();
                let carry = bytes.split_off(pos.min(bytes.len()));
                self.input = Some(Input { carry, raw });
                continue;
            }
            if let Some(rest) = self.rest.as_mut() {
                return rest.read(buf);
            }
            return Ok(0);
        }
    }
}

impl<'a, R: BufRead + Send + 'a> Drop for Members<'a, R> {
    fn drop(&mut self) {
        self.pending.clear();
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A zstd frame that states its content size, cut from the input by its block
/// headers; anything else is `Other`.
fn zstd_frame<R: Read>(input: &mut Input<R>, mut buf: Vec<u8>) -> io::Result<Next> {
    if buf.len() < 6 || buf[..4] != ZSTD_MAGIC {
        return Ok(Next::Other(buf));
    }
    let fhd = buf[4];
    let fcs_flag = fhd >> 6;
    let single = (fhd >> 5) & 1 == 1;
    let checksum = (fhd >> 2) & 1 == 1;
    let did = [0, 1, 2, 4][(fhd & 3) as usize];
    let fcs_len = match (fcs_flag, single) {
        (0, true) => 1,
        (0, false) => 0,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let at = 5 + usize::from(!single) + did;
    // No content size, a reserved bit, a dictionary (which only the sequential decoder
    // reports), or a header cut short: not a member to cut.
    if fcs_len == 0 || fhd & 0x08 != 0 || did != 0 || buf.len() < at + fcs_len {
        return Ok(Next::Other(buf));
    }
    let mut fcs = [0u8; 8];
    fcs[..fcs_len].copy_from_slice(&buf[at..at + fcs_len]);
    let mut raw_len = u64::from_le_bytes(fcs);
    if fcs_len == 2 {
        raw_len += 256;
    }
    let mut end = at + fcs_len;
    if raw_len > MEMBER_MAX {
        return Ok(Next::Big(buf, raw_len));
    }
    loop {
        if !input.fill(&mut buf, end + 3)? {
            return Ok(Next::Other(buf));
        }
        let h = u32::from(buf[end]) | u32::from(buf[end + 1]) << 8 | u32::from(buf[end + 2]) << 16;
        let last = h & 1 == 1;
        let size = match (h >> 1) & 3 {
            0 | 2 => (h >> 3) as usize,
            1 => 1,
            _ => return Ok(Next::Other(buf)),
        };
        end += 3 + size;
        if end as u64 > MEMBER_MAX + 1024 {
            return Ok(Next::Other(buf));
        }
        if last {
            break;
        }
    }
    if checksum {
        end += 4;
    }
    if !input.fill(&mut buf, end)? {
        return Ok(Next::Other(buf));
    }
    // Bytes read past the frame belong to what follows.
    let extra = buf.split_off(end);
    if !extra.is_empty() {
        let mut carry = extra;
        carry.append(&mut input.carry);
        input.carry = carry;
    }
    Ok(Next::Member(buf, raw_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::format::{decoder, Format};

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7 + usize::from(seed)) % 251) as u8)
            .collect()
    }

    fn decode(format: Format, stream: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Reads of odd sizes, so members and chunks never line up.
        let mut dec = decoder(format, io::BufReader::with_capacity(97, stream))?;
        let mut buf = [0u8; 1000];
        loop {
            let n = dec.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn plain_gzip(d: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut e, d).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn members_of_every_size_come_out_in_order() {
        // Small, empty, big (past MEMBER_MAX: streamed here), small again.
        let parts = [
            data(10, 1),
            data(0, 2),
            data(70_000, 3),
            data(3 << 20, 4),
            data(5, 5),
            data(100_000, 6),
        ];
        let want: Vec<u8> = parts.concat();
        for (codec, format) in [(Codec::Gzip, Format::Gzip), (Codec::Zstd, Format::Zstd)] {
            let stream: Vec<u8> = parts.iter().flat_map(|p| codec.compress(p)).collect();
            assert_eq!(decode(format, &stream).unwrap(), want, "{codec}");
        }
    }

    #[test]
    fn what_does_not_state_its_length_goes_to_the_sequential_decoder() {
        let (a, b, c) = (data(1000, 1), data(2000, 2), data(3000, 3));
        // gzip: a member with SL, a plain one, SL again, zero padding.
        let mut stream = Codec::Gzip.compress(&a);
        stream.extend(plain_gzip(&b));
        stream.extend(Codec::Gzip.compress(&c));
        stream.extend([0u8; 700]);
        assert_eq!(
            decode(Format::Gzip, &stream).unwrap(),
            [&a[..], &b, &c].concat()
        );
        // A packed archive's footer (an empty member with another subfield).
        let mut stream = Codec::Gzip.compress(&a);
        stream.extend(
            crate::toc::Footer {
                codec: Codec::Gzip,
                table_offset: 1,
                table_len: 1,
            }
            .encode(),
        );
        assert_eq!(decode(Format::Gzip, &stream).unwrap(), a);
        // zstd: frames of a few bytes (shorter than the look-ahead), a skippable frame,
        // a frame without content size.
        let mut stream = Vec::new();
        for i in 0..20u8 {
            stream.extend(Codec::Zstd.compress(&[i]));
        }
        stream.extend(
            crate::toc::Footer {
                codec: Codec::Zstd,
                table_offset: 1,
                table_len: 1,
            }
            .encode(),
        );
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        io::Write::write_all(&mut enc, &b).unwrap();
        stream.extend(enc.finish().unwrap());
        let want: Vec<u8> = (0..20u8).chain(b.iter().copied()).collect();
        assert_eq!(decode(Format::Zstd, &stream).unwrap(), want);
    }

    #[test]
    fn corrupt_or_lying_members_are_errors() {
        let a = data(5000, 1);
        for codec in [Codec::Gzip, Codec::Zstd] {
            let format = if codec == Codec::Gzip {
                Format::Gzip
            } else {
                Format::Zstd
            };
            let good = codec.compress(&a);
            // A byte of the compressed data flipped.
            let mut bad = good.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x55;
            assert!(decode(format, &bad).is_err(), "{codec} corrupt");
            // Cut short.
            assert!(
                decode(format, &good[..good.len() - 3]).is_err(),
                "{codec} cut"
            );
        }
        // A gzip member that states a wrong decompressed length (CRC intact).
        let mut lying = Codec::Gzip.compress(&a);
        lying[24..32].copy_from_slice(&4999u64.to_le_bytes());
        assert!(decode(Format::Gzip, &lying).is_err());
        let mut lying = Codec::Gzip.compress(&a);
        lying[24..32].copy_from_slice(&5001u64.to_le_bytes());
        assert!(decode(Format::Gzip, &lying).is_err());
        // A stated compressed length past the member: the next member's bytes are
        // taken into it, and the member is refused.
        let mut two = Codec::Gzip.compress(&a);
        let len = two.len() as u64;
        two[16..24].copy_from_slice(&(len + 10).to_le_bytes());
        two.extend(Codec::Gzip.compress(&a));
        assert!(decode(Format::Gzip, &two).is_err());
    }
}
