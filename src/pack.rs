//! `stretcher pack DIR -o OUT.tar.gz|OUT.tar.zst` (SPEC §18): a directory → a packed
//! archive (`docs/packed-archive.md`), and with `--manifest` the manifest that deploys it.
//!
//! In order: the walk (GNU tar's `--sort=name` order, `--exclude` by the rsync rules of
//! `filter`, hard links found by inode), the plan (every entry's tar headers, entries cut
//! into members), the members compressed on every core and written in order to a
//! temporary file beside OUT while the whole archive is hashed, the table member and the
//! footer (`toc`), the rename onto OUT, then the manifest. Reads DIR only (a user's
//! tree, not a deploy's `dest`): never writes anywhere but beside OUT and the manifest.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Condvar, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cli::{ManifestOptions, Output, PackOptions};
use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;
use crate::toc::{self, Codec, Footer, Kind, Member, Mtime, Table};

/// Regular files whose contents add up to at most this share a member.
pub const MEMBER_CONTENT: u64 = 64 << 10;

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
    let items = walk(&opts.dir, &filter, opts.owner)?;
    let plan = plan(&items)?;
    let packed = write_archive(&opts.out, codec, &items, &plan)?;
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

/// One entry of the tree, in archive order.
#[derive(Debug)]
struct Item {
    /// The table path (`.` for the root).
    rel: Vec<u8>,
    /// The file on disk.
    disk: PathBuf,
    kind: ItemKind,
    mode: u32,
    uid: u64,
    gid: u64,
    uname: Vec<u8>,
    gname: Vec<u8>,
    mtime: Mtime,
}

#[derive(Debug)]
enum ItemKind {
    File { size: u64 },
    Dir,
    Symlink { target: Vec<u8> },
    HardLink { target: Vec<u8> },
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
        inodes: HashMap::new(),
        items: Vec::new(),
    };
    w.push(b".".to_vec(), root.to_path_buf(), &meta)?;
    w.dir(root, b"")?;
    Ok(w.items)
}

struct Walk<'a> {
    filter: &'a Filter,
    owner: bool,
    names: Names,
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
            self.push(child.clone(), path.clone(), &meta)?;
            if meta.is_dir() {
                self.dir(&path, &child)?;
            }
        }
        Ok(())
    }

    fn push(&mut self, rel: Vec<u8>, disk: PathBuf, meta: &fs::Metadata) -> Result<()> {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            ItemKind::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(&disk).ctx("read link", &disk)?;
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
                    ItemKind::File { size: meta.size() }
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
            (0, 0, b"root".to_vec(), b"root".to_vec())
        };
        let nanos = u32::try_from(meta.mtime_nsec()).unwrap_or(0);
        self.items.push(Item {
            rel,
            disk,
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
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Vec<u8> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name.into_bytes())
                    .unwrap_or_default()
            })
            .clone()
    }
    fn group(&mut self, gid: u32) -> Vec<u8> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name.into_bytes())
                    .unwrap_or_default()
            })
            .clone()
    }
}

// ---- the plan: headers and members ----

/// One piece of a member's tar bytes.
#[derive(Debug)]
enum Piece {
    /// Header blocks (pax, ustar), as written.
    Bytes(Vec<u8>),
    /// A regular file's data (items[index]), then its padding to a block.
    Data { index: usize, size: u64 },
}

/// One member: its pieces and its decompressed length.
#[derive(Debug, Default)]
struct MemberPlan {
    pieces: Vec<Piece>,
    raw_len: u64,
    /// Regular file content in it.
    content: u64,
    /// Whether it holds a regular file's data.
    has_file: bool,
}

impl MemberPlan {
    fn push_bytes(&mut self, b: Vec<u8>) {
        self.raw_len += b.len() as u64;
        match self.pieces.last_mut() {
            Some(Piece::Bytes(prev)) => prev.extend_from_slice(&b),
            _ => self.pieces.push(Piece::Bytes(b)),
        }
    }
}

/// Where each regular file's data lies: `(member index, data offset)` by item index.
struct Plan {
    members: Vec<MemberPlan>,
    data_at: HashMap<usize, (usize, u64)>,
}

/// Every entry's headers, and the entries cut into members: a regular file starts a
/// new member when the current one already holds file content and the two together
/// would pass `MEMBER_CONTENT`; a member whose content reached it is closed. The end
/// blocks go into the last member.
fn plan(items: &[Item]) -> Result<Plan> {
    let mut members = Vec::new();
    let mut data_at = HashMap::new();
    let mut cur = MemberPlan::default();
    for (index, item) in items.iter().enumerate() {
        let size = match item.kind {
            ItemKind::File { size } => size,
            _ => 0,
        };
        if matches!(item.kind, ItemKind::File { .. })
            && cur.has_file
            && cur.content + size > MEMBER_CONTENT
        {
            members.push(std::mem::take(&mut cur));
        }
        cur.push_bytes(headers(item)?);
        if let ItemKind::File { size } = item.kind {
            data_at.insert(index, (members.len(), cur.raw_len));
            cur.pieces.push(Piece::Data { index, size });
            cur.raw_len += padded(size);
            cur.content += size;
            cur.has_file = true;
            if cur.content >= MEMBER_CONTENT {
                members.push(std::mem::take(&mut cur));
            }
        }
    }
    if cur.pieces.is_empty() {
        // The walk always yields the root, so a member exists to take the end blocks.
        match members.pop() {
            Some(last) => cur = last,
            None => return Err(Error::Usage("pack: nothing to pack".into())),
        }
    }
    cur.push_bytes(vec![0; 2 * BLOCK as usize]);
    members.push(cur);
    Ok(Plan { members, data_at })
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
        ItemKind::File { size } => (tar::EntryType::Regular, *size, None),
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
            pax.push((key, value.clone()));
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

/// A member compressed: its bytes and the sha256 of each file's data in it.
struct Done {
    bytes: Vec<u8>,
    digests: Vec<(usize, [u8; 32])>,
}

fn compress_member(codec: Codec, items: &[Item], m: &MemberPlan) -> Result<Done> {
    let mut enc = codec.encoder(m.raw_len);
    let mut digests = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let wrap = |e: io::Error| Error::io("compress", "(memory)", e);
    for piece in &m.pieces {
        match piece {
            Piece::Bytes(b) => enc.write_all(b).map_err(wrap)?,
            Piece::Data { index, size } => {
                let item = &items[*index];
                let path = &item.disk;
                let mut f = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc_nofollow())
                    .open(path)
                    .ctx("open", path)?;
                let mut hasher = Sha256::new();
                let mut left = *size;
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = f.read(&mut buf[..want]).ctx("read", path)?;
                    if n == 0 {
                        return Err(changed(path));
                    }
                    hasher.update(&buf[..n]);
                    enc.write_all(&buf[..n]).map_err(wrap)?;
                    left -= n as u64;
                }
                if f.read(&mut buf[..1]).ctx("read", path)? != 0 {
                    return Err(changed(path));
                }
                let pad = (padded(*size) - size) as usize;
                enc.write_all(&vec![0u8; pad]).map_err(wrap)?;
                digests.push((*index, hasher.finalize().into()));
            }
        }
    }
    Ok(Done {
        bytes: enc.finish().map_err(wrap)?,
        digests,
    })
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

/// Compresses the members on every core and writes them in order to a temporary file
/// beside `out` (hashing the whole archive), then the table member and the footer,
/// then renames it onto `out`.
fn write_archive(out: &Path, codec: Codec, items: &[Item], plan: &Plan) -> Result<Packed> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".stretcher-pack.")
        .tempfile_in(parent)
        .ctx("create a temporary file in", parent)?;
    let mut sink = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut()),
        hasher: Sha256::new(),
        written: 0,
    };
    let n = plan.members.len();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(n.max(1));
    let window = threads * 4;
    // Member offsets and lengths, and each file's digest, as they are written.
    let mut bounds: Vec<(u64, u64)> = Vec::with_capacity(n);
    let mut digests: HashMap<usize, [u8; 32]> = HashMap::new();
    // next: the next member a worker takes; written: members written so far.
    let state = Mutex::new((0usize, 0usize, false));
    let turn = Condvar::new();
    let result: Result<()> = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(usize, Result<Done>)>();
        for _ in 0..threads {
            let tx = tx.clone();
            let (state, turn) = (&state, &turn);
            s.spawn(move || loop {
                let i = {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    while !st.2 && st.0 < n && st.0 >= st.1 + window {
                        st = turn.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    if st.2 || st.0 >= n {
                        return;
                    }
                    st.0 += 1;
                    st.0 - 1
                };
                let done = compress_member(codec, items, &plan.members[i]);
                if tx.send((i, done)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut ready: BTreeMap<usize, Done> = BTreeMap::new();
        let mut next = 0;
        let stop = |state: &Mutex<(usize, usize, bool)>| {
            state.lock().unwrap_or_else(|p| p.into_inner()).2 = true;
            turn.notify_all();
        };
        while next < n {
            let Ok((i, done)) = rx.recv() else {
                stop(&state);
                return Err(Error::WorkerPanic {
                    task: "pack",
                    path: out.to_path_buf(),
                    msg: "a compressing thread ended early".into(),
                });
            };
            match done {
                Ok(d) => {
                    ready.insert(i, d);
                }
                Err(e) => {
                    stop(&state);
                    return Err(e);
                }
            }
            while let Some(d) = ready.remove(&next) {
                let offset = sink.written;
                if let Err(e) = sink.write_all(&d.bytes) {
                    stop(&state);
                    return Err(Error::io("write", out, e));
                }
                bounds.push((offset, d.bytes.len() as u64));
                digests.extend(d.digests);
                next += 1;
                state.lock().unwrap_or_else(|p| p.into_inner()).1 = next;
                turn.notify_all();
            }
        }
        Ok(())
    });
    result?;
    let members_len = sink.written;
    let table = table(items, plan, &bounds, &digests);
    // What pack wrote must be what a reader accepts.
    table
        .validate(members_len)
        .map_err(|e| Error::Usage(format!("pack: {e}")))?;
    let member = table.to_member(codec);
    let toc_digest: [u8; 32] = Sha256::digest(&member).into();
    let footer = Footer {
        codec,
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
        entries: items.len(),
        members: n,
    })
}

/// The table of the written archive.
fn table(
    items: &[Item],
    plan: &Plan,
    bounds: &[(u64, u64)],
    digests: &HashMap<usize, [u8; 32]>,
) -> Table {
    let entries = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let (kind, size) = match &item.kind {
                ItemKind::File { size } => {
                    let (m, data_offset) = plan.data_at[&i];
                    let (offset, len) = bounds[m];
                    (
                        Kind::File {
                            member: Member {
                                offset,
                                len,
                                raw_len: plan.members[m].raw_len,
                                data_offset,
                            },
                            sha256: digests.get(&i).copied().unwrap_or_default(),
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
                uname: item.uname.clone(),
                gname: item.gname.clone(),
                mtime: item.mtime,
                size,
            }
        })
        .collect();
    Table { entries }
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
