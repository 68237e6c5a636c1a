//! `stretcher pack DIR -o OUT.tar.gz|OUT.tar.zst` (SPEC §18): a directory → a packed
//! archive (`docs/packed-archive.md`), and with `--manifest` the manifest that deploys it.
//!
//! In order: the walk (GNU tar's `--sort=name` order, `--exclude` by the rsync rules of
//! `filter`, hard links found by inode), the plan (entries cut into members, every
//! entry's tar headers measured), the members compressed on every core and written in
//! order to a temporary file beside OUT while the whole archive is hashed, the table
//! member and the footer (`toc`), the rename onto OUT, then the manifest. Reads DIR only
//! (a user's tree, not a deploy's `dest`): never writes anywhere but beside OUT and the
//! manifest.
//!
//! Memory stays bounded whatever the tree's bytes: members compressed ahead of the
//! writer hold at most `IN_FLIGHT_PER_THREAD` × threads (a member larger than that is
//! compressed by the writer straight into the archive), tar headers are made when their
//! member is compressed, and the table is encoded one entry at a time; what grows with the
//! tree is the list of entries (a path and attributes each) and the table's bytes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cli::{ManifestOptions, Output, PackOptions};
use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;
use crate::toc::{self, Codec, Footer, Kind, Member, MemberEncoder, Mtime};

/// Regular files whose contents add up to at most this share a member.
pub const MEMBER_CONTENT: u64 = 64 << 10;

/// Member bytes in flight a compressing thread: the budget of members compressed
/// ahead of the writer is this times the threads.
pub const IN_FLIGHT_PER_THREAD: u64 = 4 << 20;

const BLOCK: u64 = 512;

/// What a pack wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The archive's length in bytes.
    pub size: u64,
    /// sha256 of the whole archive.
    pub sha256: [u8; 32],
    /// sha256 of the table member as it lies in the archive (the manifest's `toc`).
    pub toc: [u8; 32],
    /// The table member's offset: the bytes of the tar members before it.
    pub members_len: u64,
    /// Entries in the archive.
    pub entries: usize,
    /// Compressed members (the table member not counted).
    pub members: usize,
}

/// `stretcher pack`: packs, writes the manifest, and says what it wrote.
pub fn main(opts: &PackOptions) -> Output {
    match run(opts) {
        Ok(p) => {
            let footer = codec_of(&opts.out).map_or(0, |c| c.footer_len() as u64);
            Output::stdout(
                format!(
                    "{}: {} bytes: members {}, table {}, footer {footer}; {} entries in {} members\nchecksum: {}\ntoc: sha256:{}\n",
                    opts.out.display(),
                    p.size,
                    p.members_len,
                    p.size - p.members_len - footer,
                    p.entries,
                    p.members,
                    hex::encode(p.sha256),
                    hex::encode(p.toc),
                ),
                0,
            )
        }
        Err(e) => Output::stderr(format!("stretcher pack: {e}"), e.exit_code()),
    }
}

/// Packs `opts.dir` into `opts.out` and writes the manifest when asked.
pub fn run(opts: &PackOptions) -> Result<Packed> {
    let codec = codec_of(&opts.out).ok_or_else(|| {
        Error::Usage(format!(
            "pack: -o {}: the name must end in .tar.gz, .tgz, .tar.zst or .tzst",
            opts.out.display()
        ))
    })?;
    let filter = Filter::new(None, &opts.excludes)?;
    // The manifest's checks (dest, mode, strategy, serial, expires) before any work.
    if let Some(m) = &opts.manifest {
        let probe = manifest_text(m, "a.tar.gz", &[0; 32], &[0; 32], 0)?;
        check_manifest(m, &probe)?;
    }
    let mut items = walk(&opts.dir, &filter, opts.owner)?;
    let plan = plan(&mut items)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let archive = Archive {
        root: &opts.dir,
        codec,
        plan: &plan,
        threads,
        budget: IN_FLIGHT_PER_THREAD * threads as u64,
    };
    let packed = archive.write(&opts.out, items)?;
    if let Some(m) = &opts.manifest {
        let src = match &m.src {
            Some(s) => s.clone(),
            None => relative_src(&opts.out, &m.path)?,
        };
        let text = manifest_text(m, &src, &packed.sha256, &packed.toc, packed.size)?;
        check_manifest(m, &text)?;
        fs::write(&m.path, text).ctx("write", &m.path)?;
    }
    Ok(packed)
}

/// The codec an output name asks for.
fn codec_of(out: &Path) -> Option<Codec> {
    let name = out.file_name()?.as_bytes();
    if name.ends_with(b".tar.gz") || name.ends_with(b".tgz") {
        Some(Codec::Gzip)
    } else if name.ends_with(b".tar.zst") || name.ends_with(b".tzst") {
        Some(Codec::Zstd)
    } else {
        None
    }
}

// ---- the walk ----

/// One entry of the tree, in archive order (its file on disk is DIR joined with
/// `rel`: not kept, as a path each would double the list).
#[derive(Debug)]
struct Item {
    /// The table path (`.` for the root).
    rel: Vec<u8>,
    kind: ItemKind,
    mode: u32,
    uid: u64,
    gid: u64,
    /// Owner and group names, one allocation per name, shared by the entries.
    uname: Arc<[u8]>,
    gname: Arc<[u8]>,
    mtime: Mtime,
}

#[derive(Debug)]
enum ItemKind {
    /// A regular file; the plan puts its data in member `member` at `data_offset` of
    /// that member's tar bytes.
    File {
        size: u64,
        member: usize,
        data_offset: u64,
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    HardLink {
        target: Vec<u8>,
    },
}

/// The tree under `root` in GNU tar's `--sort=name` order: a directory before its
/// contents, siblings by the bytes of their names; excluded paths (and everything
/// below an excluded directory) left out; a regular file met again by inode is a hard
/// link to its first path.
fn walk(root: &Path, filter: &Filter, owner: bool) -> Result<Vec<Item>> {
    // DIR itself may be a symlink to the tree (as `tar -C DIR .` follows it); nothing
    // below it is followed.
    let meta = fs::metadata(root).ctx("stat", root)?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "pack: {} is not a directory",
            root.display()
        )));
    }
    let mut w = Walk {
        filter,
        owner,
        names: Names::default(),
        root_name: Arc::from(&b"root"[..]),
        inodes: HashMap::new(),
        items: Vec::new(),
    };
    w.push(b".".to_vec(), root, &meta)?;
    w.dir(root, b"")?;
    Ok(w.items)
}

struct Walk<'a> {
    filter: &'a Filter,
    owner: bool,
    names: Names,
    /// `root`, the name of every owner and group without `--owner`.
    root_name: Arc<[u8]>,
    inodes: HashMap<(u64, u64), Vec<u8>>,
    items: Vec<Item>,
}

impl Walk<'_> {
    fn dir(&mut self, disk: &Path, rel: &[u8]) -> Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for e in fs::read_dir(disk).ctx("read directory", disk)? {
            let e = e.ctx("read directory", disk)?;
            names.push(e.file_name().as_bytes().to_vec());
        }
        names.sort();
        for name in names {
            let path = disk.join(OsStr::from_bytes(&name));
            let meta = fs::symlink_metadata(&path).ctx("stat", &path)?;
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(&name);
            if self
                .filter
                .is_excluded(Path::new(OsStr::from_bytes(&child)), meta.is_dir())
            {
                continue;
            }
            self.push(child.clone(), &path, &meta)?;
            if meta.is_dir() {
                self.dir(&path, &child)?;
            }
        }
        Ok(())
    }

    fn push(&mut self, rel: Vec<u8>, disk: &Path, meta: &fs::Metadata) -> Result<()> {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            ItemKind::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(disk).ctx("read link", disk)?;
            ItemKind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            match self.inodes.get(&key) {
                Some(first) if meta.nlink() > 1 => ItemKind::HardLink {
                    target: first.clone(),
                },
                _ => {
                    if meta.nlink() > 1 {
                        self.inodes.insert(key, rel.clone());
                    }
                    ItemKind::File {
                        size: meta.size(),
                        member: 0,
                        data_offset: 0,
                    }
                }
            }
        } else {
            return Err(Error::Usage(format!(
                "pack: {}: sockets, fifos and devices are not packed (exclude it)",
                disk.display()
            )));
        };
        let (uid, gid, uname, gname) = if self.owner {
            let (u, g) = (meta.uid(), meta.gid());
            (
                u64::from(u),
                u64::from(g),
                self.names.user(u),
                self.names.group(g),
            )
        } else {
            (0, 0, self.root_name.clone(), self.root_name.clone())
        };
        let nanos = u32::try_from(meta.mtime_nsec()).unwrap_or(0);
        self.items.push(Item {
            rel,
            kind,
            mode: meta.mode() & 0o7777,
            uid,
            gid,
            uname,
            gname,
            mtime: Mtime {
                secs: meta.mtime(),
                nanos,
            },
        });
        Ok(())
    }
}

/// Owner and group names by id, looked up once each.
#[derive(Default)]
struct Names {
    users: HashMap<u32, Arc<[u8]>>,
    groups: HashMap<u32, Arc<[u8]>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Arc<[u8]> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map_or_else(|| Arc::from(&b""[..]), |u| Arc::from(u.name.as_bytes()))
            })
            .clone()
    }
    fn group(&mut self, gid: u32) -> Arc<[u8]> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map_or_else(|| Arc::from(&b""[..]), |g| Arc::from(g.name.as_bytes()))
            })
            .clone()
    }
}

// ---- the plan: headers and members ----

/// One member: a run of consecutive entries, and its decompressed length. Its tar
/// bytes (headers, data, padding) are made when it is compressed, not kept.
#[derive(Debug)]
struct MemberPlan {
    /// Its entries: `items[first..end]`.
    first: usize,
    end: usize,
    /// Its tar bytes' length.
    raw_len: u64,
    /// Whether the tar's end-of-archive blocks close it (the last member).
    end_blocks: bool,
}

impl MemberPlan {
    fn starting_at(first: usize) -> MemberPlan {
        MemberPlan {
            first,
            end: first,
            raw_len: 0,
            end_blocks: false,
        }
    }
}

/// Every entry's headers measured, and the entries cut into members: a regular file
/// starts a new member when the current one already holds file content and the two
/// together would pass `MEMBER_CONTENT`; a member whose content reached it is closed.
/// The end blocks go into the last member. Each regular file's item gets its member
/// and data offset.
fn plan(items: &mut [Item]) -> Result<Vec<MemberPlan>> {
    let mut members = Vec::new();
    let mut cur = MemberPlan::starting_at(0);
    // Regular file content in `cur`, and whether it holds a regular file's data.
    let (mut content, mut has_file) = (0u64, false);
    for (index, item) in items.iter_mut().enumerate() {
        if let ItemKind::File { size, .. } = item.kind {
            if has_file && content + size > MEMBER_CONTENT {
                members.push(std::mem::replace(&mut cur, MemberPlan::starting_at(index)));
                (content, has_file) = (0, false);
            }
        }
        cur.raw_len += headers(item)?.len() as u64;
        cur.end = index + 1;
        if let ItemKind::File {
            size,
            member,
            data_offset,
        } = &mut item.kind
        {
            (*member, *data_offset) = (members.len(), cur.raw_len);
            cur.raw_len += padded(*size);
            content += *size;
            has_file = true;
            if content >= MEMBER_CONTENT {
                members.push(std::mem::replace(
                    &mut cur,
                    MemberPlan::starting_at(index + 1),
                ));
                (content, has_file) = (0, false);
            }
        }
    }
    if cur.first == cur.end {
        // The walk always yields the root, so a member exists to take the end blocks.
        match members.pop() {
            Some(last) => cur = last,
            None => return Err(Error::Usage("pack: nothing to pack".into())),
        }
    }
    cur.raw_len += 2 * BLOCK;
    cur.end_blocks = true;
    members.push(cur);
    Ok(members)
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// The tar name of an entry: `./` then the path, `/` after a directory's.
fn tar_name(item: &Item) -> Vec<u8> {
    let mut name = b"./".to_vec();
    if item.rel != b"." {
        name.extend_from_slice(&item.rel);
        if matches!(item.kind, ItemKind::Dir) {
            name.push(b'/');
        }
    }
    name
}

/// Largest value of an octal field of `digits` digits.
fn octal_max(digits: u32) -> u64 {
    (1u64 << (3 * digits)) - 1
}

/// An entry's header blocks: a pax extended header when something does not fit
/// ustar (sub-second or negative mtime, long path or link target, size, ids, names),
/// then the ustar header.
fn headers(item: &Item) -> Result<Vec<u8>> {
    let name = tar_name(item);
    let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut h = tar::Header::new_ustar();
    let (ty, size, link): (tar::EntryType, u64, Option<Vec<u8>>) = match &item.kind {
        ItemKind::File { size, .. } => (tar::EntryType::Regular, *size, None),
        ItemKind::Dir => (tar::EntryType::Directory, 0, None),
        ItemKind::Symlink { target } => (tar::EntryType::Symlink, 0, Some(target.clone())),
        ItemKind::HardLink { target } => {
            let mut t = b"./".to_vec();
            t.extend_from_slice(target);
            (tar::EntryType::Link, 0, Some(t))
        }
    };
    h.set_entry_type(ty);
    h.set_mode(item.mode);
    if item.mtime.nanos != 0 || item.mtime.secs < 0 || item.mtime.secs as u64 > octal_max(11) {
        pax.push(("mtime", pax_time(item.mtime).into_bytes()));
    }
    h.set_mtime(
        u64::try_from(item.mtime.secs)
            .unwrap_or(0)
            .min(octal_max(11)),
    );
    if size > octal_max(11) {
        pax.push(("size", size.to_string().into_bytes()));
        h.set_size(0);
    } else {
        h.set_size(size);
    }
    for (key, id, set) in [
        (
            "uid",
            item.uid,
            tar::Header::set_uid as fn(&mut tar::Header, u64),
        ),
        ("gid", item.gid, tar::Header::set_gid),
    ] {
        if id > octal_max(7) {
            pax.push((key, id.to_string().into_bytes()));
            set(&mut h, 0);
        } else {
            set(&mut h, id);
        }
    }
    let ustar = h
        .as_ustar_mut()
        .ok_or_else(|| Error::Usage("pack: not a ustar header".into()))?;
    for (key, value, field) in [
        ("uname", &item.uname, &mut ustar.uname[..]),
        ("gname", &item.gname, &mut ustar.gname[..]),
    ] {
        if value.len() >= field.len() || value.contains(&0) {
            pax.push((key, value.to_vec()));
        } else {
            field[..value.len()].copy_from_slice(value);
        }
    }
    if let Some(link) = link {
        if link.len() > ustar.linkname.len() {
            pax.push(("linkpath", link));
        } else {
            ustar.linkname[..link.len()].copy_from_slice(&link);
        }
    }
    match split_name(&name) {
        Some((prefix, rest)) => {
            ustar.prefix[..prefix.len()].copy_from_slice(prefix);
            ustar.name[..rest.len()].copy_from_slice(rest);
        }
        None => {
            pax.push(("path", name.clone()));
            let cut = name.len().min(ustar.name.len());
            ustar.name[..cut].copy_from_slice(&name[..cut]);
        }
    }
    h.set_cksum();
    let mut out = Vec::with_capacity(3 * BLOCK as usize);
    if !pax.is_empty() {
        out.extend_from_slice(&pax_header(&name, item, &pax)?);
    }
    out.extend_from_slice(h.as_bytes());
    Ok(out)
}

/// ustar's name split: the whole name in `name` (≤ 100 bytes), else a `/` that leaves
/// ≤ 155 bytes before it (`prefix`) and ≤ 100 after it; `None`: it needs pax.
fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    (1..name.len().min(156))
        .rev()
        .filter(|&i| name[i] == b'/')
        .map(|i| (&name[..i], &name[i + 1..]))
        .find(|(p, r)| p.len() <= 155 && !r.is_empty() && r.len() <= 100)
}

/// A pax time: `secs[.frac]`, the fraction without trailing zeros; before the epoch
/// the value is negative as a whole (-1.5 is 1.5 s before it).
fn pax_time(t: Mtime) -> String {
    let (neg, secs, nanos) = if t.secs < 0 && t.nanos > 0 {
        (true, (t.secs + 1).unsigned_abs(), 1_000_000_000 - t.nanos)
    } else {
        (t.secs < 0, t.secs.unsigned_abs(), t.nanos)
    };
    let mut s = format!("{}{secs}", if neg { "-" } else { "" });
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s
}

/// A pax extended header (`x`) with `records`, named `DIR/PaxHeaders/NAME` as GNU tar
/// names it, then its data blocks.
fn pax_header(name: &[u8], item: &Item, records: &[(&str, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    for (key, value) in records {
        // "LEN KEY=VALUE\n", LEN counting itself.
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len.to_string().len() + rest > len {
            len += 1;
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let (dir, base) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b"."[..], trimmed),
    };
    let mut pname = dir.to_vec();
    pname.extend_from_slice(b"/PaxHeaders/");
    pname.extend_from_slice(base);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(
        u64::try_from(item.mtime.secs)
            .unwrap_or(0)
            .min(octal_max(11)),
    );
    h.set_size(data.len() as u64);
    let ustar = h
        .as_ustar_mut()
        .ok_or_else(|| Error::Usage("pack: not a ustar header".into()))?;
    let cut = pname.len().min(ustar.name.len());
    ustar.name[..cut].copy_from_slice(&pname[..cut]);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    let data_len = data.len() as u64;
    out.extend_from_slice(&data);
    out.resize(out.len() + (padded(data_len) - data_len) as usize, 0);
    Ok(out)
}

// ---- compression, in order ----

/// The file of an entry: DIR joined with its table path.
fn disk_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel == b"." {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// Writes member `m`'s tar bytes into `enc` and returns the sha256 of each regular
/// file's data in it, by entry index. Whoever compresses a member (a worker into
/// memory, the writer into the archive) makes the same writes in the same pieces:
/// consecutive headers as one write (with the end blocks in the last member), then
/// each file's data as it is read, then its padding. Write errors are `op` of `into`.
fn feed<W: Write>(
    enc: &mut MemberEncoder<W>,
    root: &Path,
    items: &[Item],
    m: &MemberPlan,
    (op, into): (&'static str, &Path),
    buf: &mut [u8],
) -> Result<Vec<(usize, [u8; 32])>> {
    let mut digests = Vec::new();
    let wrap = |e: io::Error| Error::io(op, into, e);
    let mut pending: Vec<u8> = Vec::new();
    for (index, item) in items.iter().enumerate().take(m.end).skip(m.first) {
        pending.extend_from_slice(&headers(item)?);
        let ItemKind::File { size, .. } = item.kind else {
            continue;
        };
        enc.write_all(&pending).map_err(wrap)?;
        pending.clear();
        let path = disk_path(root, &item.rel);
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_nofollow())
            .open(&path)
            .ctx("open", &path)?;
        let mut hasher = Sha256::new();
        let mut left = size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want]).ctx("read", &path)?;
            if n == 0 {
                return Err(changed(&path));
            }
            hasher.update(&buf[..n]);
            enc.write_all(&buf[..n]).map_err(wrap)?;
            left -= n as u64;
        }
        if f.read(&mut buf[..1]).ctx("read", &path)? != 0 {
            return Err(changed(&path));
        }
        let pad = (padded(size) - size) as usize;
        enc.write_all(&[0u8; BLOCK as usize][..pad]).map_err(wrap)?;
        digests.push((index, hasher.finalize().into()));
    }
    if m.end_blocks {
        pending.extend_from_slice(&[0; 2 * BLOCK as usize]);
    }
    enc.write_all(&pending).map_err(wrap)?;
    Ok(digests)
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

fn changed(path: &Path) -> Error {
    Error::io(
        "read",
        path,
        io::Error::other("the file changed size while it was packed"),
    )
}

/// A member compressed by a worker: its bytes and the sha256 of each file's data in
/// it.
struct Done {
    bytes: Vec<u8>,
    digests: Vec<(usize, [u8; 32])>,
}

/// The hand-off between the compressing threads and the writer: members are taken in
/// archive order; `in_flight` is the room reserved by members taken and not yet
/// written (compressed bytes, or the most they can take while being compressed).
struct Flow {
    /// The next member a worker looks at.
    next: usize,
    /// Members written so far (the next to write).
    written: usize,
    in_flight: u64,
    /// Set on the first error: the workers stop taking members.
    stop: bool,
}

/// Sets `stop` if the worker holding it panics, so that the others stop waiting.
struct StopOnPanic<'a>(&'a Mutex<Flow>, &'a Condvar);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            self.1.notify_all();
        }
    }
}

/// What writing the archive needs besides the entries.
struct Archive<'a> {
    /// DIR.
    root: &'a Path,
    codec: Codec,
    plan: &'a [MemberPlan],
    threads: usize,
    /// The most member bytes compressed ahead of the writer, held in memory.
    budget: u64,
}

impl Archive<'_> {
    /// The room a member takes while a worker compresses it: the most its compressed
    /// bytes can be (its decompressed bytes are read 64 KiB at a time, never held).
    fn cost(&self, i: usize) -> u64 {
        Codec::member_bound(self.plan[i].raw_len)
    }

    /// Whether member `i` is the writer's: larger than the whole budget, it is
    /// compressed straight into the archive, in order, never held whole.
    fn streamed(&self, i: usize) -> bool {
        self.cost(i) > self.budget
    }

    /// Compresses the members on every core and writes them in order to a temporary
    /// file beside `out` (hashing the whole archive), then the table member and the
    /// footer, then renames it onto `out`.
    ///
    /// Memory: members compressed ahead of the writer are held until written, and a
    /// worker takes a member only while what is held and reserved stays within
    /// `budget` — except the next member in archive order, which is always taken (so
    /// the writer never waits on room held by members after it). A member larger than
    /// the budget is the writer's own ([`Archive::stream`]).
    fn write(&self, out: &Path, items: Vec<Item>) -> Result<Packed> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".stretcher-pack.")
            .tempfile_in(parent)
            .ctx("create a temporary file in", parent)?;
        let mut sink = HashingWriter {
            inner: io::BufWriter::with_capacity(1 << 20, tmp.as_file()),
            hasher: Sha256::new(),
            written: 0,
        };
        let n = self.plan.len();
        // Member offsets and lengths, and each regular file's digest by entry index,
        // as they are written.
        let mut bounds: Vec<(u64, u64)> = Vec::with_capacity(n);
        let mut digests: Vec<[u8; 32]> = vec![[0; 32]; items.len()];
        let flow = Mutex::new(Flow {
            next: 0,
            written: 0,
            in_flight: 0,
            stop: false,
        });
        let turn = Condvar::new();
        let workers = self.threads.clamp(1, n.max(1));
        let result: Result<()> = std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel::<(usize, Result<Done>)>();
            for _ in 0..workers {
                let tx = tx.clone();
                let (flow, turn, items) = (&flow, &turn, &items[..]);
                s.spawn(move || self.work(flow, turn, items, &tx));
            }
            drop(tx);
            let r = self.write_members(
                &mut sink,
                tmp.as_file(),
                &items,
                (&flow, &turn, &rx),
                out,
                (&mut bounds, &mut digests),
            );
            if r.is_err() {
                flow.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
                turn.notify_all();
            }
            r
        });
        result?;
        let members_len = sink.written;
        let entries = items.len();
        // The table, one entry at a time (the entries are not held twice): what pack
        // wrote must be what a reader accepts, then its bytes.
        let entry = |i: usize| table_entry(&items[i], self.plan, &bounds, &digests[i]);
        let mut check = toc::Validator::new(members_len, entries);
        for (i, item) in items.iter().enumerate() {
            check
                .entry(&item.rel, &entry(i))
                .map_err(|e| Error::Usage(format!("pack: {e}")))?;
        }
        drop(check);
        let raw = toc::encode_entries((0..entries).map(entry));
        drop((items, digests));
        let member = self.codec.compress(&raw);
        drop(raw);
        let toc_digest: [u8; 32] = Sha256::digest(&member).into();
        let footer = Footer {
            codec: self.codec,
            table_offset: members_len,
            table_len: member.len() as u64,
        };
        sink.write_all(&member).ctx("write", out)?;
        sink.write_all(&footer.encode()).ctx("write", out)?;
        let size = sink.written;
        let sha256: [u8; 32] = sink.hasher.finalize_reset().into();
        sink.inner.flush().ctx("write", out)?;
        drop(sink);
        tmp.as_file().sync_all().ctx("sync", out)?;
        // Readable by whoever serves it, as `tar` would leave it under umask 022.
        let perm = fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(perm).ctx("chmod", out)?;
        tmp.persist(out)
            .map_err(|e| Error::io("rename onto", out, e.error))?;
        Ok(Packed {
            size,
            sha256,
            toc: toc_digest,
            members_len,
            entries,
            members: n,
        })
    }

    /// A compressing thread: takes the next member it may (see [`Archive::write`]),
    /// compresses it into memory, hands it to the writer; until none is left or the
    /// writer stops.
    fn work(
        &self,
        flow: &Mutex<Flow>,
        turn: &Condvar,
        items: &[Item],
        tx: &mpsc::Sender<(usize, Result<Done>)>,
    ) {
        let _guard = StopOnPanic(flow, turn);
        let n = self.plan.len();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let (i, cost) = {
                let mut st = flow.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    while st.next < n && self.streamed(st.next) {
                        st.next += 1;
                    }
                    if st.stop || st.next >= n {
                        return;
                    }
                    let cost = self.cost(st.next);
                    if st.next == st.written || st.in_flight + cost <= self.budget {
                        st.in_flight += cost;
                        st.next += 1;
                        break (st.next - 1, cost);
                    }
                    st = turn.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            let done = self.compress(i, items, &mut buf);
            if let Ok(d) = &done {
                // From the most it could take to what it holds.
                let mut st = flow.lock().unwrap_or_else(|p| p.into_inner());
                st.in_flight = st.in_flight - cost + d.bytes.capacity() as u64;
                drop(st);
                turn.notify_all();
            }
            if tx.send((i, done)).is_err() {
                return;
            }
        }
    }

    /// Member `i` compressed into memory, in room for the most it can take (so it is
    /// never moved while it grows), then cut to its length.
    fn compress(&self, i: usize, items: &[Item], buf: &mut [u8]) -> Result<Done> {
        let m = &self.plan[i];
        let room = usize::try_from(Codec::member_bound(m.raw_len)).unwrap_or(usize::MAX);
        let mut enc = self.codec.encoder_into(Vec::with_capacity(room), m.raw_len);
        let memory = Path::new("(memory)");
        let digests = feed(&mut enc, self.root, items, m, ("compress", memory), buf)?;
        let mut bytes = enc.finish().map_err(|e| Error::io("compress", memory, e))?;
        bytes.shrink_to_fit();
        Ok(Done { bytes, digests })
    }

    /// The writer: the members in archive order, each taken from the workers (or
    /// compressed here when it is the writer's own) and written; its bounds and its
    /// files' digests noted; its room given back.
    #[allow(clippy::type_complexity)]
    fn write_members(
        &self,
        sink: &mut HashingWriter<io::BufWriter<&File>>,
        file: &File,
        items: &[Item],
        (flow, turn, rx): (
            &Mutex<Flow>,
            &Condvar,
            &mpsc::Receiver<(usize, Result<Done>)>,
        ),
        out: &Path,
        (bounds, digests): (&mut Vec<(u64, u64)>, &mut [[u8; 32]]),
    ) -> Result<()> {
        let mut ready: BTreeMap<usize, Done> = BTreeMap::new();
        let mut buf = vec![0u8; 64 << 10];
        for next in 0..self.plan.len() {
            let offset = sink.written;
            let (len, files, held) = if self.streamed(next) {
                let (len, files) = self.stream(next, sink, file, items, out, &mut buf)?;
                (len, files, 0)
            } else {
                let d = loop {
                    if let Some(d) = ready.remove(&next) {
                        break d;
                    }
                    match rx.recv() {
                        Ok((i, Ok(d))) => {
                            ready.insert(i, d);
                        }
                        Ok((_, Err(e))) => return Err(e),
                        Err(_) => {
                            return Err(Error::WorkerPanic {
                                task: "pack",
                                path: out.to_path_buf(),
                                msg: "a compressing thread ended early".into(),
                            })
                        }
                    }
                };
                sink.write_all(&d.bytes).ctx("write", out)?;
                (d.bytes.len() as u64, d.digests, d.bytes.capacity() as u64)
            };
            bounds.push((offset, len));
            for (i, digest) in files {
                digests[i] = digest;
            }
            let mut st = flow.lock().unwrap_or_else(|p| p.into_inner());
            st.written = next + 1;
            st.in_flight -= held;
            drop(st);
            turn.notify_all();
        }
        Ok(())
    }

    /// Member `i`, the writer's own, compressed straight into the archive as its files
    /// are read: past the archive's hash (a gzip member's lengths are put in place
    /// once known), then read back from the file into the hash. Returns its length and
    /// its files' digests.
    #[allow(clippy::type_complexity)]
    fn stream(
        &self,
        i: usize,
        sink: &mut HashingWriter<io::BufWriter<&File>>,
        file: &File,
        items: &[Item],
        out: &Path,
        buf: &mut [u8],
    ) -> Result<(u64, Vec<(usize, [u8; 32])>)> {
        let m = &self.plan[i];
        let offset = sink.written;
        let counted = Counting {
            inner: &mut sink.inner,
            n: 0,
        };
        let mut enc = self.codec.encoder_into(counted, m.raw_len);
        let files = feed(&mut enc, self.root, items, m, ("write", out), buf)?;
        let (counted, lengths) = enc.finish_into().ctx("write", out)?;
        let len = counted.n;
        sink.inner.flush().ctx("write", out)?;
        if let Some(lengths) = lengths {
            file.write_all_at(&lengths, offset + 16).ctx("write", out)?;
        }
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let want = (end - at).min(buf.len() as u64) as usize;
            let got = file.read_at(&mut buf[..want], at).ctx("read back", out)?;
            if got == 0 {
                return Err(Error::io(
                    "read back",
                    out,
                    io::Error::from(io::ErrorKind::UnexpectedEof),
                ));
            }
            sink.hasher.update(&buf[..got]);
            at += got as u64;
        }
        sink.written = end;
        Ok((len, files))
    }
}

/// A writer that counts what passes through it.
struct Counting<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An entry's row of the table of the written archive.
fn table_entry(
    item: &Item,
    plan: &[MemberPlan],
    bounds: &[(u64, u64)],
    sha256: &[u8; 32],
) -> toc::Entry {
    let (kind, size) = match &item.kind {
        ItemKind::File {
            size,
            member,
            data_offset,
        } => {
            let (offset, len) = bounds[*member];
            (
                Kind::File {
                    member: Member {
                        offset,
                        len,
                        raw_len: plan[*member].raw_len,
                        data_offset: *data_offset,
                    },
                    sha256: *sha256,
                },
                *size,
            )
        }
        ItemKind::Dir => (Kind::Dir, 0),
        ItemKind::Symlink { target } => (
            Kind::Symlink {
                target: target.clone(),
            },
            0,
        ),
        ItemKind::HardLink { target } => (
            Kind::HardLink {
                target: target.clone(),
            },
            0,
        ),
    };
    toc::Entry {
        path: item.rel.clone(),
        kind,
        mode: item.mode,
        uid: item.uid,
        gid: item.gid,
        uname: toc::Name::from_slice(&item.uname),
        gname: toc::Name::from_slice(&item.gname),
        mtime: item.mtime,
        size,
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---- the manifest ----

#[derive(Serialize)]
struct ManifestOut<'a> {
    src: &'a str,
    checksum: String,
    toc: String,
    size: u64,
    dest: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dest_mode: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_strategy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<&'a str>,
}

fn manifest_text(
    m: &ManifestOptions,
    src: &str,
    sha256: &[u8; 32],
    toc: &[u8; 32],
    size: u64,
) -> Result<String> {
    let out = ManifestOut {
        src,
        checksum: hex::encode(sha256),
        toc: format!("sha256:{}", hex::encode(toc)),
        size,
        dest: &m.dest,
        dest_mode: m.dest_mode.as_deref(),
        sync_strategy: m.strategy.as_deref(),
        serial: m.serial.as_deref(),
        expires: m.expires.as_deref(),
    };
    serde_norway::to_string(&out)
        .map_err(|e| Error::Usage(format!("pack: the manifest cannot be written: {e}")))
}

/// The manifest as a deploy would read it: a manifest that would not deploy is not
/// written (nor is the archive, when this is checked first).
fn check_manifest(m: &ManifestOptions, text: &str) -> Result<()> {
    let none = |_: &str| None;
    let url = format!("file://{}", absolute(&m.path)?.display());
    crate::manifest::parse(text, &url, &none)
        .map(|_| ())
        .map_err(|e| Error::Usage(format!("pack: --manifest: {e}")))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).ctx("resolve", p)
}

/// The archive's path relative to the manifest's directory (`src`'s default).
fn relative_src(archive: &Path, manifest: &Path) -> Result<String> {
    let a = fs::canonicalize(archive).ctx("resolve", archive)?;
    let mdir = match manifest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let d = fs::canonicalize(mdir).ctx("resolve", mdir)?;
    let a_parts: Vec<_> = a.components().collect();
    let d_parts: Vec<_> = d.components().collect();
    let common = a_parts
        .iter()
        .zip(&d_parts)
        .take_while(|(x, y)| x == y)
        .count();
    let mut rel = PathBuf::new();
    for _ in common..d_parts.len() {
        rel.push("..");
    }
    for c in &a_parts[common..] {
        rel.push(c);
    }
    rel.to_str().map(str::to_string).ok_or_else(|| {
        Error::Usage(format!(
            "pack: {} is not UTF-8: give --src",
            archive.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = |secs, nanos| pax_time(Mtime { secs, nanos });
        assert_eq!(t(1_700_000_000, 0), "1700000000");
        assert_eq!(t(1_700_000_000, 123_456_789), "1700000000.123456789");
        assert_eq!(t(1_700_000_000, 500_000_000), "1700000000.5");
        assert_eq!(t(-2, 500_000_000), "-1.5");
        assert_eq!(t(-1, 0), "-1");
        assert_eq!(t(-1, 1), "-0.999999999");
    }

    #[test]
    fn names_split_as_ustar_allows() {
        let short = b"./a/b".to_vec();
        assert_eq!(split_name(&short), Some((&b""[..], &short[..])));
        let long = [
            b"./".to_vec(),
            vec![b'd'; 120],
            b"/".to_vec(),
            vec![b'f'; 50],
        ]
        .concat();
        let (p, r) = split_name(&long).unwrap();
        assert_eq!(p.len(), 122);
        assert_eq!(r, &vec![b'f'; 50][..]);
        let too_long = [b"./".to_vec(), vec![b'd'; 200], b"/f".to_vec()].concat();
        assert_eq!(split_name(&too_long), None);
    }

    /// A tree whose members are of every kind: many small files sharing members, one
    /// of exactly 64 KiB, larger ones (some incompressible), a name that needs pax,
    /// links, and an empty directory last (its header goes with the end blocks).
    fn make_tree(root: &Path) {
        let mut seed = 3u64;
        let mut bytes = |n: usize, text: bool| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let r = (seed >> 56) as u8;
                    if text {
                        b"abcdefgh \n{}();=+"[usize::from(r) % 16]
                    } else {
                        r
                    }
                })
                .collect()
        };
        for d in 0..4 {
            let dir = root.join(format!("d{d}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..60 {
                fs::write(dir.join(format!("f{f:03}")), bytes(f * 97 + d, true)).unwrap();
            }
        }
        fs::write(root.join("d1/exact64k"), bytes(64 << 10, true)).unwrap();
        fs::write(root.join("d2/text-300k"), bytes(300_000, true)).unwrap();
        fs::write(root.join("d2/noise-1m"), bytes(1_000_000, false)).unwrap();
        fs::write(root.join("d3/noise-200k"), bytes(200_000, false)).unwrap();
        fs::write(root.join("p".repeat(150)), b"pax\n").unwrap();
        fs::hard_link(root.join("d2/text-300k"), root.join("hard")).unwrap();
        std::os::unix::fs::symlink("d1/f001", root.join("link")).unwrap();
        fs::create_dir(root.join("zz-empty")).unwrap();
    }

    /// Packs `root` into `out` with the given threads and budget, bounded in time;
    /// says how many of how many members the writer compressed itself.
    fn pack_with(
        root: &Path,
        out: &Path,
        codec: Codec,
        threads: usize,
        budget: u64,
    ) -> (usize, usize) {
        let (root, out) = (root.to_path_buf(), out.to_path_buf());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let filter = Filter::new(None, &[]).unwrap();
            let mut items = walk(&root, &filter, false).unwrap();
            let plan = plan(&mut items).unwrap();
            let archive = Archive {
                root: &root,
                codec,
                plan: &plan,
                threads,
                budget,
            };
            let streamed = (0..plan.len()).filter(|&i| archive.streamed(i)).count();
            archive.write(&out, items).unwrap();
            tx.send((streamed, plan.len())).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .expect("the pack ended in time")
    }

    #[test]
    fn members_held_or_streamed_by_the_writer_pack_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        make_tree(&root);
        for codec in [Codec::Gzip, Codec::Zstd] {
            // Every member compressed in memory by one thread: the reference.
            let reference = dir.path().join("reference");
            assert_eq!(pack_with(&root, &reference, codec, 1, u64::MAX).0, 0);
            let want = fs::read(&reference).unwrap();
            // Budgets: none (the writer compresses every member), room for one small
            // member at a time (the next in order always goes), room for a few (the
            // large files the writer's), and room for all.
            for (threads, budget, streamed) in [
                (2, 0, "all"),
                (3, Codec::member_bound(64 << 10) + (8 << 10), "some"),
                (2, 400_000, "some"),
                (3, 4 << 20, "none"),
            ] {
                let out = dir.path().join(format!("{threads}-{budget}"));
                let (n, of) = pack_with(&root, &out, codec, threads, budget);
                match streamed {
                    "all" => assert_eq!(n, of),
                    "some" => assert!(n >= 1 && n < of, "{n} of {of}"),
                    _ => assert_eq!(n, 0),
                }
                assert!(
                    fs::read(&out).unwrap() == want,
                    "{codec}, {threads} threads, budget {budget}: other bytes"
                );
            }
        }
    }

    #[test]
    fn output_names_choose_the_codec() {
        assert_eq!(codec_of(Path::new("a.tar.gz")), Some(Codec::Gzip));
        assert_eq!(codec_of(Path::new("/x/a.tgz")), Some(Codec::Gzip));
        assert_eq!(codec_of(Path::new("a.tar.zst")), Some(Codec::Zstd));
        assert_eq!(codec_of(Path::new("a.tzst")), Some(Codec::Zstd));
        assert_eq!(codec_of(Path::new("a.tar")), None);
        assert_eq!(codec_of(Path::new("a.tar.xz")), None);
    }
}
