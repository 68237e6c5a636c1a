//! Files finished on a thread of their own. The unpack's thread creates each file (in
//! archive order, so every question of paths stays there) and reads its data into
//! memory; writing it, hashing it, its owner, mode and mtime, the `stat` that lists it
//! and the close run on one writer thread, beside the parsing and creating of the
//! next files. On two cores a cold deploy's calling thread did all of it, and that
//! thread was the deploy's time (creating a file is a third of it, writing one a
//! quarter).
//!
//! A file goes over whole, up to [`JOB_MAX`] bytes; a larger one, a sparse one and one
//! judged against dest are written by the unpack's thread as before. Files go in
//! batches of up to [`BATCH_FILES`] files or [`BATCH_BYTES`] bytes (one at a time,
//! the thread was woken for nearly each, and the wake-ups cost more CPU than the
//! thread took off the unpack's); at most [`BYTES_MAX`] bytes and [`JOBS_MAX`] files
//! are in flight. Outcomes come back in the order the files went: the listing
//! (`Staged::written`), the digest, or the error, which names the file's member. The `Extractor` waits for every file in
//! flight ([`Writer::settle`]) before anything that could touch one: a later member
//! replacing a path (`remove_existing`), a hard link, and the stream's end. So the
//! tree, its listing and its digests are those of writing in archive order.
//!
//! Used only with two cores or more; a thread that cannot be started leaves the
//! writing where it was.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::digest::{Digest, Hasher};
use crate::entry;
use crate::fsops::{Attrs, Node};
use crate::Result;

use super::super::errors::fail_io;
use super::set_attrs;

/// The largest file handed over.
pub(super) const JOB_MAX: u64 = 1 << 20;
/// The most bytes of data in flight.
const BYTES_MAX: usize = 4 << 20;
/// The most files in flight.
const JOBS_MAX: usize = 128;
/// A batch: files sent to the thread at once, at most this many or bytes.
const BATCH_FILES: usize = 32;
const BATCH_BYTES: usize = 1 << 20;
/// Data buffers kept for reuse: how many, their bytes in all, and the least a new
/// one holds. Files in flight are at most `BYTES_MAX` bytes: the spares can hold them
/// all, so a deploy allocates (and the kernel zero-fills) its buffers once.
const SPARES_KEPT: usize = JOBS_MAX;
const SPARE_BYTES: usize = BYTES_MAX;
const SPARE_MIN: usize = 32 << 10;

/// A created file, its data and what to set on it.
struct Job {
    file: File,
    data: Vec<u8>,
    attrs: Attrs,
    /// Its member's name, for errors.
    raw: Box<[u8]>,
    hash: bool,
    stat: bool,
}

/// A finished file: its data buffer back, and the outcome.
struct Done {
    data: Vec<u8>,
    outcome: Result<Finished>,
}

/// What the unpack records of a finished file.
pub(super) struct Finished {
    /// Its path, as handed over.
    pub rel: PathBuf,
    pub digest: Option<Digest>,
    /// Its `stat`, when asked.
    pub meta: Option<entry::Meta>,
}

pub(super) struct Writer {
    jobs: Option<SyncSender<Vec<(PathBuf, Job)>>>,
    done: Receiver<Vec<Done>>,
    thread: Option<JoinHandle<()>>,
    /// Files not sent yet: they go in batches, so that the thread is woken once for
    /// many (a wake-up of an idle core costs more than a small file).
    batch: Vec<(PathBuf, Job)>,
    batch_bytes: usize,
    /// Files and bytes in flight, the batch's included.
    in_flight: usize,
    bytes: usize,
    spares: Vec<Vec<u8>>,
    /// The capacity of the spares, in all.
    spare_bytes: usize,
    /// The staging root, named when the thread panicked.
    root: PathBuf,
}

impl Writer {
    /// The writer thread, when this machine has a second core and the thread starts.
    pub(super) fn start(root: &Path) -> Option<Writer> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            return None;
        }
        let (jobs, rx) = mpsc::sync_channel::<Vec<(PathBuf, Job)>>(JOBS_MAX);
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("unpack-writer".into())
            .spawn(move || {
                for batch in rx {
                    let out: Vec<Done> = (batch.into_iter())
                        .map(|(rel, job)| {
                            let (data, outcome) = finish(rel, job);
                            Done { data, outcome }
                        })
                        .collect();
                    if tx.send(out).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Writer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            batch: Vec::with_capacity(BATCH_FILES),
            batch_bytes: 0,
            in_flight: 0,
            bytes: 0,
            spares: Vec::new(),
            spare_bytes: 0,
            root: root.to_path_buf(),
        })
    }

    /// A buffer for a file's data, of `len` bytes: a spare one that has room for
    /// them, else a new one (of `SPARE_MIN` bytes at least, so that it serves again).
    /// A spare keeps the bytes it last held, so that making it `len` long again
    /// zero-fills nothing it held (the caller overwrites all `len` bytes).
    pub(super) fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = match self.spares.iter().position(|b| b.capacity() >= len) {
            Some(i) => {
                let buf = self.spares.swap_remove(i);
                self.spare_bytes -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(len.max(SPARE_MIN)),
        };
        buf.resize(len, 0);
        buf
    }

    /// `buf` kept for reuse, unless the spares hold enough.
    fn keep(&mut self, buf: Vec<u8>) {
        if self.spares.len() < SPARES_KEPT && self.spare_bytes + buf.capacity() <= SPARE_BYTES {
            self.spare_bytes += buf.capacity();
            self.spares.push(buf);
        }
    }

    /// Whether nothing is in flight.
    pub(super) fn idle(&self) -> bool {
        self.in_flight == 0
    }

    /// Hands `file` over with its `data`. Files finished meanwhile are handed to
    /// `record` (waiting for some first when the limits are reached); a failure of
    /// one of them is returned.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send(
        &mut self,
        rel: PathBuf,
        file: File,
        data: Vec<u8>,
        attrs: Attrs,
        raw: &[u8],
        hash: bool,
        stat: bool,
        record: &mut dyn FnMut(Finished),
    ) -> Result<()> {
        while self.in_flight > 0
            && (self.in_flight >= JOBS_MAX || self.bytes + data.len() > BYTES_MAX)
        {
            if self.batch.len() == self.in_flight {
                self.flush()?;
            }
            self.take(true, record)?;
        }
        self.in_flight += 1;
        self.bytes += data.len();
        self.batch_bytes += data.len();
        let job = Job {
            file,
            data,
            attrs,
            raw: raw.into(),
            hash,
            stat,
        };
        self.batch.push((rel, job));
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        while self.in_flight > self.batch.len() {
            if !self.take(false, record)? {
                break;
            }
        }
        Ok(())
    }

    /// The batch sent to the thread.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_FILES));
        self.batch_bytes = 0;
        // The thread ends only when this sender is dropped or its receiver is
        // gone: gone, it panicked.
        let sent = match &self.jobs {
            Some(j) => j.send(batch).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.gone());
        }
        Ok(())
    }

    /// Waits for every file in flight, each handed to `record`; the first failure
    /// is returned (the others still waited for).
    pub(super) fn settle(&mut self, record: &mut dyn FnMut(Finished)) -> Result<()> {
        self.flush()?;
        let mut first = Ok(());
        while self.in_flight > 0 {
            if let Err(e) = self.take(true, record) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// One batch of finished files to `record` (waiting for it when `wait`): false
    /// when none is finished yet. The first failure among them is returned, the
    /// others still recorded.
    fn take(&mut self, wait: bool, record: &mut dyn FnMut(Finished)) -> Result<bool> {
        let done = if wait {
            self.done.recv().ok()
        } else {
            match self.done.try_recv() {
                Ok(d) => Some(d),
                Err(mpsc::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::TryRecvError::Disconnected) => None,
            }
        };
        let Some(done) = done else {
            return Err(self.gone());
        };
        let mut first = Ok(true);
        for Done { data, outcome } in done {
            self.in_flight -= 1;
            self.bytes -= data.len();
            self.keep(data);
            match outcome {
                Ok(f) => record(f),
                Err(e) if first.is_ok() => first = Err(e),
                Err(_) => {}
            }
        }
        first
    }
}

impl Writer {
    /// The error for a thread that ended before its work (it panicked: a bug).
    fn gone(&mut self) -> crate::Error {
        self.in_flight = 0;
        self.batch.clear();
        self.jobs = None;
        let msg = match self.thread.take().map(JoinHandle::join) {
            Some(Err(payload)) => crate::error::panic_message(payload.as_ref()),
            _ => "it ended early".to_string(),
        };
        crate::Error::WorkerPanic {
            task: "unpack (writing files)",
            path: self.root.clone(),
            msg,
        }
    }
}

impl Drop for Writer {
    /// The files still in flight are finished (or fail) before the unpack returns:
    /// none is written once its caller has gone on (to remove staging).
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            // A panic of the thread was already an error of `take`.
            let _ = t.join();
        }
    }
}

/// Writes, hashes, sets and lists one file, then closes it.
fn finish(rel: PathBuf, job: Job) -> (Vec<u8>, Result<Finished>) {
    let Job {
        mut file,
        data,
        attrs,
        raw,
        hash,
        stat,
    } = job;
    let outcome = (|| {
        file.write_all(&data)
            .map_err(|e| fail_io(&raw, "write", e))?;
        let digest = hash.then(|| {
            let mut h = Hasher::default();
            h.update(&data);
            h.finish()
        });
        set_attrs(Node::Open(&file), &attrs).map_err(|why| why.of(&raw))?;
        let meta = if stat {
            let m = file.metadata().map_err(|e| fail_io(&raw, "stat", e))?;
            Some(entry::Meta::from(&m))
        } else {
            None
        };
        Ok(Finished { rel, digest, meta })
    })();
    drop(file);
    (data, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn attrs(mode: u32, mtime: i64) -> Attrs {
        Attrs {
            owner: None,
            mode: Some(mode),
            mtime: Some((mtime, 5)),
            atime: None,
        }
    }

    #[test]
    fn files_are_finished_in_order_and_their_buffers_reused() {
        let t = tempfile::tempdir().unwrap();
        let Some(mut w) = Writer::start(t.path()) else {
            // One core: the unpack writes on its own thread.
            return;
        };
        let mut got = Vec::new();
        let mut record = |f: Finished| got.push(f);
        for i in 0..(3 * JOBS_MAX) {
            let rel = PathBuf::from(format!("f{i}"));
            let file = File::create(t.path().join(&rel)).unwrap();
            let len = 1000 + i * 4096;
            let mut data = w.buffer(len);
            assert_eq!(data.len(), len);
            data.fill(i as u8);
            let (hash, stat) = (i % 2 == 0, i % 3 == 0);
            w.send(
                rel,
                file,
                data,
                attrs(0o600, 1_000_000 + i as i64),
                b"m",
                hash,
                stat,
                &mut record,
            )
            .unwrap();
            assert!(w.in_flight <= JOBS_MAX && w.bytes <= BYTES_MAX.max(len));
        }
        w.settle(&mut record).unwrap();
        assert!(w.idle());
        assert!(w.spare_bytes <= SPARE_BYTES && w.spares.len() <= SPARES_KEPT);
        assert_eq!(got.len(), 3 * JOBS_MAX);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.rel, PathBuf::from(format!("f{i}")), "in the order sent");
            let path = t.path().join(&f.rel);
            let data = std::fs::read(&path).unwrap();
            assert_eq!(data.len(), 1000 + i * 4096);
            assert!(data.iter().all(|&b| b == i as u8));
            let m = std::fs::metadata(&path).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o600);
            assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000 + i as i64, 5));
            let mut h = Hasher::default();
            h.update(&data);
            assert_eq!(f.digest, (i % 2 == 0).then(|| h.finish()));
            assert_eq!(f.meta, (i % 3 == 0).then(|| entry::Meta::from(&m)));
        }
    }

    #[test]
    fn a_failure_names_its_member_and_the_rest_are_still_finished() {
        let t = tempfile::tempdir().unwrap();
        let Some(mut w) = Writer::start(t.path()) else {
            return;
        };
        let mut got = Vec::new();
        let mut record = |f: Finished| got.push(f.rel);
        std::fs::write(t.path().join("ro"), b"").unwrap();
        // Opened for reading only: the write fails.
        let ro = File::open(t.path().join("ro")).unwrap();
        let data = w.buffer(10);
        let first = w.send(
            "ro".into(),
            ro,
            data,
            attrs(0o644, 1),
            b"dir/ro",
            false,
            false,
            &mut record,
        );
        let ok = File::create(t.path().join("ok")).unwrap();
        let data = w.buffer(3);
        let second = w.send(
            "ok".into(),
            ok,
            data,
            attrs(0o644, 1),
            b"ok",
            false,
            false,
            &mut record,
        );
        let settled = w.settle(&mut record);
        // The failure is told once: by whichever call finds it.
        let mut errors: Vec<_> = [first, second, settled]
            .into_iter()
            .filter_map(|r| r.err())
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let err = errors.remove(0);
        let text = err.to_string();
        assert!(text.contains("dir/ro") && text.contains("write"), "{text}");
        assert_eq!(got, vec![PathBuf::from("ok")]);
        assert_eq!(std::fs::read(t.path().join("ok")).unwrap(), [0, 0, 0]);
        drop(w);
    }
}
