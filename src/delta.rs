//! The update that downloads only what changed (SPEC §18): a packed archive (its
//! manifest has `toc:`) deployed onto a dest that already holds a tree.
//!
//! One attempt, in order:
//! 1. the footer and the table member are read by range (`fetch::read_range`; a
//!    `file://` source by offset), the table member's sha256 checked against `toc`,
//!    then decoded and validated (`toc::Table::from_member`): a table that matches
//!    `toc` but is malformed fails the deploy, naming the entry, before anything is
//!    written;
//! 2. each regular file of the table is judged against the probe's tree (dest, or
//!    the live release) exactly as the unpack's probe judges it (`Unchanged::find`:
//!    size, mtime seconds, mode, owner; content by the index's digest, else by the
//!    file's bytes, against the table's sha256): *kept* (nothing to do), *local*
//!    (same content, other attributes: its bytes are read from the probe's tree) or
//!    *fetched* (its member is downloaded);
//! 3. the members of the fetched files are read by range (neighbours merged, a few
//!    requests in flight) into an unlinked scratch file beside dest;
//! 4. a tar stream is made from the table (a pax header per entry: path, link
//!    target, mtime, owner names) with each fetched or local file's bytes, each
//!    checked against the table's sha256 as it ends (a mismatch fails the stream,
//!    like a checksum mismatch), and unpacked by the same unpack into the strategy's
//!    place, the kept files listed as its probe lists unchanged ones
//!    (`unpack::unpack_known`, with what the judging saw: the probe is not asked
//!    again); into a staging that is not a whole tree (not the release strategy's),
//!    directories dest holds with nothing of the stream below them are not made but
//!    listed for the sync (`Staged::listed_dirs`): the staged result a full download
//!    would give, as the sync sees it.
//!
//! A change of dest after the judging is caught by the sync's plan (every kept file
//! against dest's walk: `Stale`, and the pipeline unpacks again in full; a listed
//! directory dest lost is made) and, for a hard link into a release, by the link's
//! `lstat` against what the judging saw.
//!
//! The sync, excludes, `exclude_from`, hooks, record and index that follow are the
//! pipeline's own, unchanged. It falls back to the full download (answering why)
//! when: the server serves no ranges, the footer or table cannot be read, the table
//! does not match `toc`, nothing of the tree is in dest, or the members to fetch add
//! up to more than half of the archive.
//!
//! Never writes dest or the probe's tree: only the scratch file and the strategy's
//! staging (through the unpack).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::at::Tree;
use crate::digest::{self, Digest, Hasher};
use crate::error::{Error, Result};
use crate::fetch::{self, FetchOptions, Span};
use crate::land::Stage;
use crate::logln;
use crate::toc::{self, Codec, Entry, Footer, Kind, Table};
use crate::unpack::{self, FileAttrs, Found, KnownFile, Staged, Unchanged, UnpackOptions};
use crate::urls::redact;
use crate::verify::{Checksum, Hashed, HashingReader, Verified};

mod ranges;
use ranges::Ranges;

/// Ranges closer than this are fetched as one (a request costs more than the gap),
/// while the gaps fetched so add up to at most a tenth of the members' bytes.
const MERGE_GAP: u64 = 16 * 1024;

/// What one delta deploy reads.
pub(crate) struct Delta<'a> {
    /// `src`, as the user wrote it.
    pub src: &'a str,
    /// The manifest's `toc`: the table member's sha256.
    pub toc: [u8; 32],
    /// The manifest's `size`, when given.
    pub size: Option<u64>,
    pub fetch_opts: &'a FetchOptions<'a>,
    /// Running as root: owners are kept (by name when the host has it).
    pub same_owner: bool,
    /// The bytes fetched so far (the record's `downloaded_bytes`).
    pub downloaded: &'a AtomicU64,
}

/// How the delta went.
pub(crate) enum Outcome {
    /// The tree is staged, every byte verified.
    Staged(Box<Verified<(Stage, Staged)>>),
    /// A full download is needed, and why.
    Full(String),
}

/// What becomes of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// A regular file the probe's tree holds as the table has it: not in the stream
    /// (what the probe's `find` saw of it is in `Plan::found` when asked for).
    Kept,
    /// A regular file whose content the probe's tree holds, with other attributes:
    /// its bytes are read from there.
    Local,
    /// A regular file whose member is fetched.
    Fetched,
    /// Not a regular file: its header alone.
    Header,
    /// A directory dest holds with nothing of the stream below it: not in the
    /// stream, listed for the sync (`Staged::listed_dirs`).
    Listed,
}

/// What the table and dest say is to be done.
pub(crate) struct Plan {
    codec: Codec,
    archive_len: u64,
    table: Table,
    fates: Vec<Fate>,
    /// What the probe's `find` saw of each kept file, in table order, when the plan
    /// was asked to keep it (a release links them and checks each is still that
    /// file; 48 bytes a file otherwise not held).
    found: Vec<Found>,
    /// The members to fetch, merged: (offset, length) in archive order.
    spans: Vec<(u64, u64)>,
    /// The sealed digest of the table member (the trust of the whole result).
    hashed: Hashed,
    counts: Counts,
}

/// How many files each fate has, for the log.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    kept: u64,
    local: u64,
    fetched: u64,
}

impl Plan {
    /// The bytes the members' ranges add up to.
    pub(crate) fn fetch_bytes(&self) -> u64 {
        self.spans.iter().map(|s| s.1).sum()
    }

    /// One line: what the delta fetches.
    pub(crate) fn describe(&self, read: u64) -> String {
        format!(
            "{} files unchanged, {} fixed from dest, {} fetched: {} bytes in {} ranges (+{read} bytes of footer and table) of {} bytes",
            self.counts.kept,
            self.counts.local,
            self.counts.fetched,
            self.fetch_bytes(),
            self.spans.len(),
            self.archive_len
        )
    }
}

/// The plan, or why there is none (a full download then); an `Err` is final: a
/// signal, the deadline, a table that matches `toc` but is refused.
pub(crate) fn plan(
    d: &Delta,
    probe: &mut dyn Unchanged,
    start: Instant,
    keep_found: bool,
) -> Result<std::result::Result<Plan, String>> {
    match probe.tree().map(|t| t.names(Path::new("."))) {
        None => return Ok(Err("dest holds no tree".to_string())),
        Some(Ok(names)) if names.is_empty() => return Ok(Err("dest is empty".to_string())),
        _ => {}
    }
    let (footer, archive_len, member) = match read_table(d, start) {
        Ok(read) => read,
        Err(e @ (Error::Interrupted(_) | Error::Timeout { .. })) => return Err(e),
        Err(e) => return Ok(Err(format!("the table of contents cannot be read: {e}"))),
    };
    let checksum = Checksum::parse(&digest::to_hex(&d.toc)).map_err(|m| Error::fetch(d.src, m))?;
    let mut reader = HashingReader::new(&member[..], &checksum);
    io::copy(&mut reader, &mut io::sink()).map_err(|e| Error::fetch_from(d.src, e))?;
    let hashed = reader.finish();
    if !hashed.matches() {
        return Ok(Err(
            "the table of contents does not match the manifest's toc".to_string(),
        ));
    }
    // From here the table is the manifest's: a malformed one fails the deploy.
    let table = Table::from_member(&member, &footer).map_err(|e| Error::Archive {
        url: d.src.to_string(),
        msg: e.to_string(),
        source: None,
    })?;
    let (fates, found) = judge(&table, probe, d.same_owner, keep_found);
    let mut counts = Counts::default();
    let mut members: Vec<(u64, u64)> = Vec::new();
    for (e, fate) in table.entries.iter().zip(&fates) {
        match (fate, &e.kind) {
            (Fate::Kept, _) => counts.kept += 1,
            (Fate::Local, _) => counts.local += 1,
            (Fate::Fetched, Kind::File { member, .. }) => {
                counts.fetched += 1;
                if members.last() != Some(&(member.offset, member.len)) {
                    members.push((member.offset, member.len));
                }
            }
            _ => {}
        }
    }
    if counts.kept + counts.local == 0 && counts.fetched > 0 {
        return Ok(Err("no file of the archive is in dest".to_string()));
    }
    let spans = merge(members);
    let plan = Plan {
        codec: footer.codec,
        archive_len,
        table,
        fates,
        found,
        spans,
        hashed,
        counts,
    };
    if plan.fetch_bytes() > archive_len / 2 {
        return Ok(Err(format!(
            "the changed files' members add up to {} of the archive's {archive_len} bytes (more than half)",
            plan.fetch_bytes()
        )));
    }
    Ok(Ok(plan))
}

/// The footer and the table member, by range (two requests; one when the manifest
/// gives no `size`: the tail then says the archive's length), counted in `downloaded`.
fn read_table(d: &Delta, start: Instant) -> Result<(Footer, u64, Vec<u8>)> {
    let opts = d.fetch_opts;
    let mut tail = Vec::new();
    // A retried attempt hands the range over again from its start.
    let mut next: Option<u64> = None;
    let span = match d.size {
        Some(len) if len > toc::FOOTER_MAX as u64 => Span::At {
            start: len - toc::FOOTER_MAX as u64,
            len: toc::FOOTER_MAX as u64,
        },
        _ => Span::Tail(toc::FOOTER_MAX as u64),
    };
    let served = fetch::read_range(
        d.src,
        span,
        opts,
        start,
        opts.max_bandwidth,
        &mut |at, b| {
            if next.is_some_and(|n| at < n) {
                tail.clear();
            }
            next = Some(at + b.len() as u64);
            tail.extend_from_slice(b);
            Ok(())
        },
    )?;
    d.downloaded.fetch_add(tail.len() as u64, Ordering::Relaxed);
    let archive_len = match (served.total, d.size) {
        (Some(t), Some(s)) if t != s => {
            return Err(Error::fetch(
                d.src,
                format!("the server says {t} bytes, the manifest's size {s}"),
            ))
        }
        (Some(t), _) => t,
        (None, Some(s)) => s,
        (None, None) => {
            return Err(Error::fetch(
                d.src,
                "the server did not say the archive's size",
            ))
        }
    };
    let footer =
        Footer::parse(&tail, archive_len).map_err(|e| Error::fetch(d.src, e.to_string()))?;
    let mut member = Vec::with_capacity(usize::try_from(footer.table_len).unwrap_or(0));
    let span = Span::At {
        start: footer.table_offset,
        len: footer.table_len,
    };
    let first = footer.table_offset;
    fetch::read_range(
        d.src,
        span,
        opts,
        start,
        opts.max_bandwidth,
        &mut |at, b| {
            if at == first {
                member.clear();
            }
            member.extend_from_slice(b);
            Ok(())
        },
    )?;
    d.downloaded
        .fetch_add(member.len() as u64, Ordering::Relaxed);
    Ok((footer, archive_len, member))
}

/// Tables with fewer entries than this are judged on one thread (a second one costs
/// more than it saves).
const JUDGED_ON_TWO: usize = 4096;

/// Each entry's fate, judged as the unpack's probe judges a file (SPEC §18, §21),
/// and with `keep_found` what the probe saw of each kept file, in table order. A
/// large table is judged in two halves at once, the second by
/// [`Unchanged::another`] probe of the same tree on a thread of its own (an `lstat`
/// a file, and the index's digest: each half bound by one core).
fn judge(
    table: &Table,
    probe: &mut dyn Unchanged,
    same_owner: bool,
    keep_found: bool,
) -> (Vec<Fate>, Vec<Found>) {
    // A hard link's target must be in the stream (the link is made to it there).
    let linked: HashSet<&[u8]> = table
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::HardLink { target } => Some(&target[..]),
            _ => None,
        })
        .collect();
    let entries = &table.entries[..];
    let other = (entries.len() >= JUDGED_ON_TWO)
        .then(|| probe.another())
        .flatten();
    let Some(mut other) = other else {
        return judge_part(entries, probe, &linked, same_owner, keep_found);
    };
    let (first, second) = entries.split_at(entries.len() / 2);
    let linked = &linked;
    std::thread::scope(|s| {
        let later =
            s.spawn(move || judge_part(second, &mut *other, linked, same_owner, keep_found));
        let (mut fates, mut found) = judge_part(first, probe, linked, same_owner, keep_found);
        let (more_fates, more_found) = later
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        fates.extend(more_fates);
        found.extend(more_found);
        (fates, found)
    })
}

/// [`judge`] of consecutive entries.
fn judge_part(
    entries: &[Entry],
    probe: &mut dyn Unchanged,
    linked: &HashSet<&[u8]>,
    same_owner: bool,
    keep_found: bool,
) -> (Vec<Fate>, Vec<Found>) {
    let mut owners = Owners::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut kept_found = Vec::new();
    let fates = entries
        .iter()
        .map(|e| {
            let Kind::File { sha256, .. } = &e.kind else {
                return Fate::Header;
            };
            let rel = Path::new(std::ffi::OsStr::from_bytes(&e.path));
            let attrs = FileAttrs {
                size: e.size,
                mtime: e.mtime.secs,
                mode: e.mode,
                owner: same_owner.then(|| owners.of(e)),
            };
            if let Some((at, found)) = probe.find(rel, &attrs) {
                // Kept and local files are taken from `rel` in the probe's tree.
                if at == rel && same_content(&*probe, rel, &at, &found, sha256, &mut buf) {
                    return if linked.contains(&e.path[..]) {
                        Fate::Local
                    } else {
                        if keep_found {
                            kept_found.push(Found::from(&found));
                        }
                        Fate::Kept
                    };
                }
                return Fate::Fetched;
            }
            // Found with other attributes: the same content is still worth reading.
            let Some(tree) = probe.tree() else {
                return Fate::Fetched;
            };
            match tree.lstat(rel) {
                Ok(st)
                    if rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::RegularFile
                        && st.st_size as u64 == e.size
                        && same_content(&*probe, rel, rel, &st, sha256, &mut buf) =>
                {
                    Fate::Local
                }
                _ => Fate::Fetched,
            }
        })
        .collect();
    (fates, kept_found)
}

/// Whether the file the probe has at `at` (its lstat `found`) holds the content whose
/// sha256 is `want`: by the probe's index, else by its bytes. Any doubt: false.
fn same_content(
    probe: &dyn Unchanged,
    rel: &Path,
    at: &Path,
    found: &rustix::fs::Stat,
    want: &Digest,
    buf: &mut [u8],
) -> bool {
    if let Some(known) = probe.digest(rel, found) {
        return known == *want;
    }
    let Ok(mut f) = probe.open(at) else {
        return false;
    };
    let same_inode = rustix::fs::fstat(&f)
        .is_ok_and(|st| (st.st_dev, st.st_ino) == (found.st_dev, found.st_ino));
    same_inode && digest::of_reader(&mut f, buf).is_ok_and(|d| d == *want)
}

/// Owner names → ids on this host, as the unpack resolves them (the name when the
/// host has it, else the archive's id), cached.
#[derive(Default)]
struct Owners {
    users: std::collections::HashMap<Vec<u8>, Option<u32>>,
    groups: std::collections::HashMap<Vec<u8>, Option<u32>>,
}

impl Owners {
    fn of(&mut self, e: &Entry) -> (u32, u32) {
        let user = |n: &str| {
            nix::unistd::User::from_name(n)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        };
        let group = |n: &str| {
            nix::unistd::Group::from_name(n)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        };
        let uid = lookup(&mut self.users, &e.uname, user).unwrap_or(e.uid as u32);
        let gid = lookup(&mut self.groups, &e.gname, group).unwrap_or(e.gid as u32);
        (uid, gid)
    }
}

fn lookup(
    cache: &mut std::collections::HashMap<Vec<u8>, Option<u32>>,
    name: &[u8],
    by_name: impl Fn(&str) -> Option<u32>,
) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    *cache
        .entry(name.to_vec())
        .or_insert_with(|| std::str::from_utf8(name).ok().and_then(by_name))
}

/// Members in archive order → ranges, neighbours closer than `MERGE_GAP` merged
/// while the gaps taken in stay within a tenth of the members' bytes.
fn merge(members: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut budget = members.iter().map(|m| m.1).sum::<u64>() / 10;
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (off, len) in members {
        match spans.last_mut() {
            Some((s, l)) if off >= *s + *l && off - (*s + *l) <= MERGE_GAP.min(budget) => {
                budget -= off - (*s + *l);
                *l = off + len - *s;
            }
            Some((s, l)) if off < *s + *l => {
                // Members never overlap (validated); a repeat is already in.
                *l = (*l).max(off + len - *s);
            }
            _ => spans.push((off, len)),
        }
    }
    spans
}

/// `--dry-run`: the path a deploy would take and the bytes it would fetch, in one
/// line (the footer and table are read to know). `probe` is the tree the deploy's
/// delta would compare with, as the strategy's stage gives it (the index's digests
/// included); `None`: the strategy compares nothing (a full download).
pub(crate) fn dry_run(d: &Delta, probe: Option<crate::sync::DestProbe>) -> Result<String> {
    let start = Instant::now();
    let full = |why: String| {
        format!(
            "full download ({}): {why}",
            d.size
                .map_or("size unknown".to_string(), |s| format!("{s} bytes"))
        )
    };
    let Some(mut probe) = probe else {
        return Ok(full("nothing to compare with (dest is not read)".into()));
    };
    Ok(match plan(d, &mut probe, start, false)? {
        Ok(plan) => {
            let read = d.downloaded.load(Ordering::Relaxed);
            format!(
                "delta update ({} bytes): {}",
                read + plan.fetch_bytes(),
                plan.describe(read)
            )
        }
        Err(why) => full(why),
    })
}

/// One delta deploy into a fresh stage of the strategy's (`stage`, whose probe is
/// the tree compared with): the verified staged tree, or why a full download is
/// needed (the stage then dropped).
pub(crate) fn unpack(
    d: &Delta,
    mut stage: Stage,
    scratch: impl FnOnce() -> Result<File>,
    label: &str,
) -> Result<Outcome> {
    let start = Instant::now();
    d.downloaded.store(0, Ordering::Relaxed);
    let Some(probe) = stage.probe.as_mut() else {
        return Ok(Outcome::Full(
            "nothing to compare with (dest is not read)".into(),
        ));
    };
    let plan = match plan(d, probe, start, stage.link_unchanged)? {
        Ok(plan) => plan,
        Err(why) => return Ok(Outcome::Full(why)),
    };
    let read = d.downloaded.load(Ordering::Relaxed);
    logln!("delta {}: {}", redact(d.src), plan.describe(read));
    let scratch = scratch()?;
    let dest_tree = match probe.tree() {
        Some(t) => t.try_clone().map_err(|e| Error::io("open", t.path(), e))?,
        None => return Ok(Outcome::Full("dest holds no tree".into())),
    };
    let Plan {
        codec,
        table,
        mut fates,
        found,
        spans,
        hashed,
        counts,
        ..
    } = plan;
    let entries = &table.entries;
    let ranges = Ranges::new(&spans);
    let failed: Arc<Mutex<Option<Error>>> = Arc::default();
    // The members are fetched while the stream is unpacked: it waits for each span.
    let staged = std::thread::scope(|s| {
        ranges.start(s, d, &scratch, start);
        // The release strategy's staging becomes the release: every directory is made.
        let listed = if stage.link_unchanged {
            Vec::new()
        } else {
            list_dirs(entries, &mut fates, &dest_tree, d.same_owner)
        };
        let stream = Stream {
            items: entries.iter().zip(&fates),
            out: Vec::new(),
            pos: 0,
            data: None,
            member: None,
            scratch: &scratch,
            ranges: &ranges,
            codec,
            dest: dest_tree,
            failed: Arc::clone(&failed),
            ended: false,
        };
        // The kept files, made one at a time as the unpack adopts them (a list of
        // them all, paths and attributes, would be held beside the table).
        let mut owners = Owners::default();
        let same_owner = d.same_owner;
        let mut found = found.into_iter();
        let kept = entries.iter().zip(&fates).filter_map(move |(e, fate)| {
            let (Fate::Kept, Kind::File { sha256, .. }) = (fate, &e.kind) else {
                return None;
            };
            Some(KnownFile {
                rel: PathBuf::from(std::ffi::OsStr::from_bytes(&e.path)),
                attrs: FileAttrs {
                    size: e.size,
                    mtime: e.mtime.secs,
                    mode: e.mode,
                    owner: same_owner.then(|| owners.of(e)),
                },
                digest: *sha256,
                found: found.next(),
            })
        });
        let known = Counted {
            inner: kept,
            left: usize::try_from(counts.kept).unwrap_or(0),
        };
        // The stream checks each file it holds against these as its last byte passes.
        let told = digest::Digests::from_keyed(
            entries
                .iter()
                .zip(&fates)
                .filter_map(|(e, fate)| match (fate, &e.kind) {
                    (Fate::Fetched | Fate::Local, Kind::File { sha256, .. }) => {
                        Some((digest::path_key(&e.path), *sha256))
                    }
                    _ => None,
                })
                .collect(),
        );
        let opts = UnpackOptions {
            same_owner: d.same_owner,
            label: label.to_string(),
            link_unchanged: stage.link_unchanged,
            // Staging holds the files fetched only: its walk is short, and a listing
            // held through the unpack would add to the delta's peak (the table's).
            list_written: false,
            digests_from_table: false,
        };
        let into = stage.staging.tree();
        logln!(
            "Extract archive: {label} to {} (delta)",
            into.path().display()
        );
        // The probe is borrowed again by the unpack (the plan's borrow has ended).
        let staged = stage
            .probe
            .as_mut()
            .map(|probe| unpack::unpack_known(stream, into, &opts, probe, known, told));
        if !matches!(staged, Some(Ok(_))) {
            ranges.abandon();
        }
        staged.map(|r| {
            r.map(|mut staged| {
                staged.listed_dirs = listed;
                staged
            })
        })
    });
    // A request's failure first: the stream's is its consequence.
    if let Err(e) = ranges.finish() {
        return match e {
            Error::Interrupted(_) | Error::Timeout { .. } => Err(e),
            e => Ok(Outcome::Full(format!("a range cannot be read: {e}"))),
        };
    }
    let secs = start.elapsed().as_secs_f64();
    logln!(
        "Read {} bytes by range from {} (in {secs:.3}s)",
        d.downloaded.load(Ordering::Relaxed),
        redact(d.src)
    );
    let Some(staged) = staged else {
        return Ok(Outcome::Full("nothing to compare with".into()));
    };
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let staged = staged?;
    // Every byte staged matched the table's sha256, and the table matched `toc`.
    Ok(Outcome::Staged(Box::new(hashed.verify((stage, staged))?)))
}

/// The kept files as the unpack draws them, saying how many there are (so that
/// what lists them is sized once).
struct Counted<I> {
    inner: I,
    /// How many are left (the plan's count of kept files).
    left: usize,
}

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let next = self.inner.next()?;
        self.left = self.left.saturating_sub(1);
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, None)
    }
}

/// The directories dest holds as directories with nothing of the stream below them,
/// marked [`Fate::Listed`] (staging holds no empty skeleton of the tree) and answered
/// as the sync is to list them (`Staged::listed_dirs`): with the attributes the
/// unpack gives a directory (the table's mode, mtime and — as root — owner; else the
/// process's, as a directory staging made), sorted as a walk lists them. The root and
/// a directory with a negative mtime stay in the stream. If dest's directory is gone
/// or changed by the time the sync looks, the sync makes or fixes it (it is never
/// moved whole), and the kept files below it are stale there: the deploy fails
/// before anything changed.
fn list_dirs(
    entries: &[Entry],
    fates: &mut [Fate],
    dest: &Tree,
    same_owner: bool,
) -> Vec<crate::entry::Entry> {
    let in_stream = |f: &Fate| !matches!(f, Fate::Kept | Fate::Listed);
    // A directory the table lists (else staging's unpack makes it, when needed).
    let dirs: HashSet<&[u8]> = entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::Dir))
        .map(|e| &e.path[..])
        .collect();
    let parent_listed = |p: &[u8]| match p.iter().rposition(|b| *b == b'/') {
        Some(i) => dirs.contains(&p[..i]),
        None => true,
    };
    let listable: Vec<bool> = entries
        .iter()
        .map(|e| {
            matches!(e.kind, Kind::Dir)
                && e.path != b"."
                && parent_listed(&e.path)
                && e.mtime.secs >= 0
                && dest
                    .lstat(Path::new(std::ffi::OsStr::from_bytes(&e.path)))
                    .is_ok_and(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Directory
                    })
        })
        .collect();
    // Every directory above something of the stream is in it too.
    let mut needed: HashSet<&[u8]> = HashSet::new();
    for ((e, fate), listable) in entries.iter().zip(fates.iter()).zip(&listable) {
        if *listable || !in_stream(fate) {
            continue;
        }
        for (i, b) in e.path.iter().enumerate() {
            if *b == b'/' {
                needed.insert(&e.path[..i]);
            }
        }
    }
    let (uid, gid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let mut owners = Owners::default();
    let mut out = Vec::new();
    for ((e, fate), listable) in entries.iter().zip(fates.iter_mut()).zip(listable) {
        if !listable || needed.contains(&e.path[..]) {
            continue;
        }
        *fate = Fate::Listed;
        let (uid, gid) = if same_owner { owners.of(e) } else { (uid, gid) };
        let meta = crate::entry::Meta {
            mode: rustix::fs::FileType::Directory.as_raw_mode() | (e.mode & 0o7777),
            uid,
            gid,
            mtime_nsec: e.mtime.nanos,
            size: 0,
            mtime: e.mtime.secs,
        };
        out.push(crate::entry::Entry::new(
            Path::new(std::ffi::OsStr::from_bytes(&e.path)),
            meta,
            None,
        ));
    }
    out.sort_unstable_by(|a, b| a.rel().cmp(b.rel()));
    out
}

/// The tar stream of the entries to write (not the kept files): a pax and a GNU
/// header per entry, a file's bytes from its fetched member or from the probe's
/// tree, each file checked against the table's sha256 as its last byte passes.
struct Stream<'t> {
    /// The table's entries and their fates: those of the stream are written.
    items: std::iter::Zip<std::slice::Iter<'t, Entry>, std::slice::Iter<'t, Fate>>,
    /// Bytes to hand out before anything else (headers, padding, the end blocks).
    out: Vec<u8>,
    pos: usize,
    /// The file whose bytes are being handed out.
    data: Option<Data>,
    /// The member being decompressed: its offset, decoder, and the output read so far.
    member: Option<(u64, Box<dyn Read + Send + 't>, u64)>,
    scratch: &'t File,
    /// The fetching of the members' spans: a member is read once its span is written.
    ranges: &'t Ranges<'t>,
    codec: Codec,
    dest: Tree,
    /// The first verdict (a digest mismatch, a read error), kept whole for the caller.
    failed: Arc<Mutex<Option<Error>>>,
    ended: bool,
}

/// A file's bytes being handed out.
struct Data {
    path: Vec<u8>,
    left: u64,
    size: u64,
    hasher: Hasher,
    want: Digest,
    /// `None`: from the current member; else the probe tree's file.
    local: Option<File>,
}

impl<'t> Stream<'t> {
    /// The stream's verdict, kept for the caller and told to the unpack.
    fn fail(&self, e: Error) -> io::Error {
        let shown = io::Error::other(e.to_string());
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        shown
    }

    /// The next entry's headers into `out`, and its data source.
    fn next_entry(&mut self) -> io::Result<()> {
        let Some((e, fate)) = self
            .items
            .find(|(_, f)| !matches!(f, Fate::Kept | Fate::Listed))
        else {
            // The end-of-archive blocks.
            self.out = vec![0u8; 1024];
            self.pos = 0;
            self.ended = true;
            return Ok(());
        };
        self.out = headers(e).map_err(|m| {
            self.fail(Error::Archive {
                url: String::new(),
                msg: format!("table entry \"{}\": {m}", toc::show(&e.path)),
                source: None,
            })
        })?;
        self.pos = 0;
        let Kind::File { member, sha256 } = &e.kind else {
            return Ok(());
        };
        let local = match fate {
            Fate::Local => {
                let rel = Path::new(std::ffi::OsStr::from_bytes(&e.path));
                Some(
                    digest::open_regular(&self.dest, rel)
                        .map_err(|err| self.fail(Error::io("open", self.dest.shown(rel), err)))?,
                )
            }
            _ => {
                self.seek_member(member.offset, member.len, member.data_offset)?;
                None
            }
        };
        self.data = Some(Data {
            path: e.path.clone(),
            left: e.size,
            size: e.size,
            hasher: Hasher::default(),
            want: *sha256,
            local,
        });
        Ok(())
    }

    /// The member at `offset` positioned at `data_offset` of its output: the current
    /// one read on, or a new decoder over its bytes in the scratch file.
    fn seek_member(&mut self, offset: u64, len: u64, data_offset: u64) -> io::Result<()> {
        let reuse =
            matches!(&self.member, Some((o, _, pos)) if *o == offset && *pos <= data_offset);
        if !reuse {
            self.ranges.wait_for(offset)?;
            let dec = member_reader(self.codec, self.scratch, offset, len)?;
            self.member = Some((offset, dec, 0));
        }
        if let Some((_, dec, pos)) = self.member.as_mut() {
            let skip = data_offset - *pos;
            let skipped = io::copy(&mut dec.take(skip), &mut io::sink())?;
            *pos += skipped;
            if skipped < skip {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the member ends before the file's data",
                ));
            }
        }
        Ok(())
    }

    /// Hands out some of the current file's bytes; at its end, its digest is checked
    /// and its padding queued.
    fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(data) = self.data.as_mut() else {
            return Ok(0);
        };
        let want = usize::try_from(data.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = if want == 0 {
            0
        } else {
            match (&mut data.local, &mut self.member) {
                (Some(f), _) => f.read(&mut buf[..want])?,
                (None, Some((_, dec, pos))) => {
                    let n = dec.read(&mut buf[..want])?;
                    *pos += n as u64;
                    n
                }
                (None, None) => 0,
            }
        };
        if n == 0 && data.left > 0 {
            let e = Error::Entry {
                entry: toc::show(&data.path),
                msg: format!("its data ends {} bytes early", data.left),
                source: None,
            };
            return Err(self.fail(e));
        }
        data.hasher.update(&buf[..n]);
        data.left -= n as u64;
        if data.left == 0 {
            let data = self
                .data
                .take()
                .map(|d| (d.path, d.size, d.hasher.finish(), d.want));
            if let Some((path, size, got, want)) = data {
                if got != want {
                    return Err(self.fail(Error::EntryMismatch {
                        entry: toc::show(&path),
                        expected: digest::to_hex(&want),
                        got: digest::to_hex(&got),
                    }));
                }
                let pad = (512 - size % 512) % 512;
                self.out = vec![0u8; pad as usize];
                self.pos = 0;
            }
        }
        Ok(n)
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = (self.out.len() - self.pos).min(buf.len());
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.data.is_some() {
                return self.read_data(buf);
            }
            if self.ended {
                return Ok(0);
            }
            self.next_entry()?;
        }
    }
}

/// The output of the member `[offset, offset + len)` of the scratch file.
fn member_reader(
    codec: Codec,
    scratch: &File,
    offset: u64,
    len: u64,
) -> io::Result<Box<dyn Read + Send + '_>> {
    let part = Part {
        file: scratch,
        at: offset,
        end: offset + len,
    };
    let cap = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .clamp(512, 64 * 1024);
    let reader = BufReader::with_capacity(cap, part);
    Ok(match codec {
        Codec::Gzip => Box::new(flate2::bufread::GzDecoder::new(reader)),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?.single_frame()),
    })
}

/// A range of the scratch file, read by offset.
struct Part<'f> {
    file: &'f File,
    at: u64,
    end: u64,
}

impl Read for Part<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.end - self.at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A pax extended header (path, link target, sub-second mtime, long owner names) and
/// a GNU header for `e`, as the packed archive has them: what the unpack reads of
/// them is the table's (the header's own name fields are cut to fit; the pax records
/// win).
fn headers(e: &Entry) -> std::result::Result<Vec<u8>, String> {
    let is_dir = matches!(e.kind, Kind::Dir);
    let mut path = b"./".to_vec();
    if e.path != b"." {
        path.extend_from_slice(&e.path);
        if is_dir {
            path.push(b'/');
        }
    }
    if e.mtime.secs < 0 {
        return Err("a negative mtime".into());
    }
    let mut pax = Vec::new();
    record(&mut pax, b"path", &path);
    if let Kind::Symlink { target } | Kind::HardLink { target } = &e.kind {
        let mut t = target.clone();
        if matches!(e.kind, Kind::HardLink { .. }) {
            t = [&b"./"[..], &t].concat();
        }
        record(&mut pax, b"linkpath", &t);
    }
    if e.mtime.nanos != 0 {
        record(
            &mut pax,
            b"mtime",
            format!("{}.{:09}", e.mtime.secs, e.mtime.nanos).as_bytes(),
        );
    }
    if e.uname.len() > 31 {
        record(&mut pax, b"uname", &e.uname);
    }
    if e.gname.len() > 31 {
        record(&mut pax, b"gname", &e.gname);
    }
    let mut out = Vec::with_capacity(1536 + pax.len());
    let mut x = tar::Header::new_ustar();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_size(pax.len() as u64);
    x.set_mode(0o644);
    put(&mut x.as_old_mut().name, b"././@PaxHeader");
    x.set_cksum();
    out.extend_from_slice(x.as_bytes());
    out.extend_from_slice(&pax);
    out.resize(out.len().div_ceil(512) * 512, 0);

    let mut h = tar::Header::new_gnu();
    let (kind, size) = match &e.kind {
        Kind::File { .. } => (tar::EntryType::Regular, e.size),
        Kind::Dir => (tar::EntryType::Directory, 0),
        Kind::Symlink { .. } => (tar::EntryType::Symlink, 0),
        Kind::HardLink { .. } => (tar::EntryType::Link, 0),
    };
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime.secs as u64);
    put(&mut h.as_old_mut().name, &path);
    if let Kind::Symlink { target } | Kind::HardLink { target } = &e.kind {
        put(&mut h.as_old_mut().linkname, target);
    }
    if let Some(gnu) = h.as_gnu_mut() {
        if e.uname.len() <= 31 {
            put(&mut gnu.uname, &e.uname);
        }
        if e.gname.len() <= 31 {
            put(&mut gnu.gname, &e.gname);
        }
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    Ok(out)
}

/// `bytes` into a NUL-padded header field, cut to fit.
fn put(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
    field[n..].fill(0);
}

/// One pax record, `LEN key=value\n`, LEN counting itself.
fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for v in [&b""[..], b"a", &[b'x'; 90], &[b'y'; 995]] {
            let mut out = Vec::new();
            record(&mut out, b"path", v);
            let text = String::from_utf8_lossy(&out).to_string();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), out.len(), "{text}");
        }
    }

    #[test]
    fn near_members_merge_into_one_range() {
        let big = 10 * MERGE_GAP;
        let m = merge(vec![
            (0, big),
            (big, 50),
            (big + 50 + MERGE_GAP, 10),
            (1 << 30, 5),
        ]);
        assert_eq!(m, vec![(0, big + 60 + MERGE_GAP), (1 << 30, 5)]);
        assert_eq!(merge(vec![(10, 5), (10, 5)]), vec![(10, 5)]);
        // Gaps beyond a tenth of the members' bytes are not fetched.
        let m = merge(vec![(0, 100), (200, 100), (400, 100)]);
        assert_eq!(m, vec![(0, 100), (200, 100), (400, 100)]);
    }
}
