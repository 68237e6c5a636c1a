//! The `Extractor`: writes one entry at a time below `into` (files, sparse files,
//! directories, symlinks, hard links, fifos and devices), asks the [`Unchanged`] probe
//! before a regular file is written, guards the staging filesystem's free space, and
//! applies directory modes and mtimes last, deepest first.
//!
//! Never creates, changes or follows anything outside `into`, and never writes
//! through a symlink.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use tar::EntryType;

use crate::error::Error;
use crate::log::shown;
use crate::Result;

use super::errors::{archive_error, corrupt, fail, refused};
use super::gnu::{header_mtime, read_sparse_map_1_0, PaxInfo, Sparse};
use super::path::{entry_path, link_target};
use super::{FileAttrs, Staged, Unchanged, UnpackOptions};

/// Buffer for copying file contents (one per unpack, reused for every file).
const COPY_BUF: usize = 256 * 1024;
/// Mode of directories created because an entry needs them as parents.
const IMPLICIT_DIR_MODE: u32 = 0o755;
/// Free space the size guard leaves on the staging filesystem (directories, metadata,
/// and whatever else runs there).
const SPACE_RESERVE: u64 = 1 << 20;

/// Metadata an entry carries for the node it creates.
struct Meta {
    mode: u32,
    mtime: FileTime,
    owner: Option<(u32, u32)>,
}

/// What is still to be done to a directory once all entries are written.
struct DirFix {
    mode: u32,
    mtime: Option<FileTime>,
    owner: Option<(u32, u32)>,
}

pub(super) struct Extractor<'a, 'u> {
    into: &'a Path,
    opts: &'a UnpackOptions,
    unchanged: Option<&'u mut dyn Unchanged>,
    buf: Vec<u8>,
    /// Relative paths known to be real directories (never symlinks) below `into`:
    /// created or checked by us, so parents need no syscall to be trusted.
    dirs: HashSet<PathBuf>,
    /// Directory modes / mtimes / owners applied at the end, deepest first; keyed by
    /// relative path (empty = `into` itself), a later duplicate entry wins.
    fixes: HashMap<PathBuf, DirFix>,
    /// The process umask if known; `None` means "always chmod explicitly".
    umask: Option<u32>,
    users: HashMap<Vec<u8>, Option<u32>>,
    groups: HashMap<Vec<u8>, Option<u32>>,
    warned_absolute: bool,
    root_mode: Option<u32>,
    entries: u64,
    reused: HashMap<PathBuf, FileAttrs>,
    /// Where each reused file is (the probe's answer), for hard links to it.
    kept_at: HashMap<PathBuf, PathBuf>,
    /// The size guard: (bytes available to unprivileged users, fragment size) of the
    /// staging filesystem when the unpack started, and the bytes of file content
    /// written so far, each file rounded up to whole fragments.
    space: Option<(u64, u64)>,
    to_write: u64,
}

impl<'a, 'u> Extractor<'a, 'u> {
    pub(super) fn new(
        into: &'a Path,
        opts: &'a UnpackOptions,
        unchanged: Option<&'u mut dyn Unchanged>,
    ) -> Self {
        Extractor {
            into,
            opts,
            unchanged,
            buf: vec![0; COPY_BUF],
            dirs: HashSet::new(),
            fixes: HashMap::new(),
            umask: current_umask(),
            users: HashMap::new(),
            groups: HashMap::new(),
            warned_absolute: false,
            root_mode: None,
            entries: 0,
            reused: HashMap::new(),
            kept_at: HashMap::new(),
            space: free_space(into),
            to_write: 0,
        }
    }

    /// The size guard: refuses a file whose content would take the bytes written so
    /// far past the free space of the staging filesystem (less `SPACE_RESERVE`), before
    /// it is created — a decompression bomb or a full disk fails here, cleanly.
    fn claim_space(&mut self, size: u64) -> Result<()> {
        let Some((free, frsize)) = self.space else {
            return Ok(());
        };
        self.to_write = self
            .to_write
            .saturating_add(size.div_ceil(frsize).saturating_mul(frsize));
        if self.to_write > free.saturating_sub(SPACE_RESERVE) {
            let fs = self.into.parent().unwrap_or(self.into);
            return Err(archive_error(
                self.opts,
                format!(
                    "not enough space on the filesystem of {}: the archive needs more than \
                     {} bytes, {free} free ({SPACE_RESERVE} kept in reserve)",
                    fs.display(),
                    self.to_write
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let mut kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // pax global header (git archive puts the commit id there): nothing to write.
            return Ok(());
        }
        let pax = PaxInfo::read(entry, self.opts)?;
        // Sparse pax 0.1 / 1.0 members are stored under `GNUSparseFile.N/NAME`; the
        // real name is a pax record.
        let raw = match &pax.sparse_name {
            Some(name) => name.clone(),
            None => entry.path_bytes().into_owned(),
        };
        let path = entry_path(&raw).map_err(|r| refused(&raw, r))?;
        if path.absolute {
            self.warn_absolute(&raw);
        }
        // Old (V7 / BSD) archives mark directories by a trailing slash only. A GNU
        // dump directory ('D') is a directory whose data (the names it held when
        // dumped, for incremental restores) tar-rs skips.
        if (matches!(kind, EntryType::Regular | EntryType::Continuous) && raw.ends_with(b"/"))
            || kind.as_byte() == b'D'
        {
            kind = EntryType::Directory;
        }
        let rel = path.rel;
        if !self.reused.is_empty() {
            // A later entry for the same path replaces the one found unchanged.
            self.reused.remove(&rel);
            self.kept_at.remove(&rel);
        }
        if rel.as_os_str().is_empty() {
            if kind != EntryType::Directory {
                return Err(fail(&raw, "the archive root must be a directory"));
            }
            let meta = self.meta(entry, &pax, &raw)?;
            self.root_mode = Some(meta.mode);
            self.fixes.insert(rel, meta.into());
            return Ok(());
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let meta = self.meta(entry, &pax, &raw)?;
                self.file(entry, &pax, &rel, &raw, &meta)?;
            }
            EntryType::Directory => {
                let meta = self.meta(entry, &pax, &raw)?;
                self.dir(&rel, &raw, meta)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail(&raw, "symlink without a target"))?
                    .into_owned();
                let meta = self.meta(entry, &pax, &raw)?;
                self.symlink(&rel, &raw, &target, &meta)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail(&raw, "hard link without a target"))?
                    .into_owned();
                self.hard_link(&rel, &raw, &target)?;
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                if !self.opts.same_owner {
                    crate::logln!(
                        "archive {}: skipping {} \"{}\": device nodes and fifos are created only when running as root",
                        self.opts.label,
                        type_name(kind),
                        shown(&raw)
                    );
                    return Ok(());
                }
                let meta = self.meta(entry, &pax, &raw)?;
                self.special(entry.header(), kind, &rel, &raw, &meta)?;
            }
            other => {
                // GNU volume labels ('V'), multi-volume continuations ('M'), vendor
                // metadata records: nothing a deploy tree should contain.
                crate::logln!(
                    "archive {}: skipping \"{}\": unsupported entry type {:?}",
                    self.opts.label,
                    shown(&raw),
                    char::from(other.as_byte())
                );
            }
        }
        Ok(())
    }

    /// Warns once per archive that leading `/`s are stripped (names and hard links).
    fn warn_absolute(&mut self, raw: &[u8]) {
        if !self.warned_absolute {
            self.warned_absolute = true;
            crate::logln!(
                "archive {}: removing leading '/' from member names (first: \"{}\")",
                self.opts.label,
                shown(raw)
            );
        }
    }

    /// Mode, mtime (sub-second from pax) and, when `same_owner`, the owner to set.
    fn meta<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        pax: &PaxInfo,
        raw: &[u8],
    ) -> Result<Meta> {
        let (pax_mtime, uname, gname) = (pax.mtime, pax.uname.clone(), pax.gname.clone());
        let h = entry.header();
        let mode = h
            .mode()
            .map_err(|e| fail(raw, format!("mode field: {e}")))?
            & 0o7777;
        let mtime = match pax_mtime {
            Some(t) => t,
            None => FileTime::from_unix_time(header_mtime(h).map_err(|e| fail(raw, e))?, 0),
        };
        let owner = if self.opts.same_owner {
            let uid = h.uid().map_err(|e| fail(raw, format!("uid field: {e}")))?;
            let gid = h.gid().map_err(|e| fail(raw, format!("gid field: {e}")))?;
            let uname = uname.as_deref().or(h.username_bytes());
            let gname = gname.as_deref().or(h.groupname_bytes());
            let uid = match uname.and_then(|n| cached(&mut self.users, n, user_by_name)) {
                Some(id) => id,
                None => u32::try_from(uid).map_err(|_| fail(raw, "uid out of range"))?,
            };
            let gid = match gname.and_then(|n| cached(&mut self.groups, n, group_by_name)) {
                Some(id) => id,
                None => u32::try_from(gid).map_err(|_| fail(raw, "gid out of range"))?,
            };
            Some((uid, gid))
        } else {
            None
        };
        Ok(Meta { mode, mtime, owner })
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pax: &PaxInfo,
        rel: &Path,
        raw: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        self.parents(rel, raw)?;
        let sparse = self.sparse_layout(entry, pax, raw)?;
        // The file's size as tar extracts it: a sparse member's logical size.
        let size = sparse.as_ref().map_or(entry.size(), |s| s.size);
        let abs = self.into.join(rel);
        if self.reuse(rel, size, meta) {
            // An earlier member of the same name may have been written: the later one
            // wins, so staging must not keep it.
            if fs::symlink_metadata(&abs).is_ok() {
                self.remove_existing(rel, &abs, raw)?;
            }
            // The entry's data is skipped by the parser (still read, so a cut stream
            // is still noticed).
            if !self.opts.link_unchanged || self.link_reused(rel, raw)? {
                self.entries += 1;
                return Ok(());
            }
            self.reused.remove(rel);
            self.kept_at.remove(rel);
        }
        // The size guard counts what is really written: a sparse file's data chunks.
        match &sparse {
            Some(s) => {
                let (frsize, mut total) = (self.space.map_or(1, |(_, f)| f), 0u64);
                for &(_, len) in &s.chunks {
                    total = total.saturating_add(len.div_ceil(frsize).saturating_mul(frsize));
                }
                self.claim_space(total)?;
            }
            None => self.claim_space(size)?,
        }
        let create = |abs: &Path| {
            OpenOptions::new()
                .write(true)
                .create_new(true) // O_EXCL: never opens through an existing symlink
                .mode(meta.mode)
                .open(abs)
        };
        let mut file = match create(&abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                create(&abs)
            }
            other => other,
        }
        .map_err(|e| fail(raw, format!("create: {e}")))?;
        match &sparse {
            None => self.copy_data(entry, &mut file, size, raw)?,
            Some(s) => {
                // Holes are seeked over, never written; the length is set at the end.
                for &(offset, len) in &s.chunks {
                    file.seek(SeekFrom::Start(offset))
                        .map_err(|e| fail(raw, format!("seek: {e}")))?;
                    self.copy_data(entry, &mut file, len, raw)?;
                }
                file.set_len(s.size)
                    .map_err(|e| fail(raw, format!("set length: {e}")))?;
            }
        }
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| fail(raw, format!("chown: {e}")))?;
        }
        if self.needs_chmod(meta.mode) {
            file.set_permissions(Permissions::from_mode(meta.mode))
                .map_err(|e| fail(raw, format!("chmod: {e}")))?;
        }
        filetime::set_file_handle_times(&file, None, Some(meta.mtime))
            .map_err(|e| fail(raw, format!("set mtime: {e}")))?;
        self.entries += 1;
        Ok(())
    }

    /// Copies exactly `len` bytes of the entry's data into `file`.
    fn copy_data(
        &mut self,
        entry: &mut impl Read,
        file: &mut fs::File,
        len: u64,
        raw: &[u8],
    ) -> Result<()> {
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match entry.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(self.opts, &e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| fail(raw, format!("write: {e}")))?;
            left -= n as u64;
        }
        if left > 0 {
            return Err(archive_error(
                self.opts,
                format!(
                    "truncated in member \"{}\": the stream ends {left} bytes before the end of its data",
                    shown(raw)
                ),
            ));
        }
        Ok(())
    }

    /// The sparse layout of a member, if it is sparse: old-GNU (`S`, map parsed by
    /// tar-rs), pax 0.0 / 0.1 (map in pax records) or pax 1.0 (map at the start of the
    /// data, read here). `None` for a plain file.
    fn sparse_layout<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pax: &PaxInfo,
        raw: &[u8],
    ) -> Result<Option<Sparse>> {
        let bad = |msg: String| fail(raw, format!("sparse map: {msg}"));
        let (size, chunks, stored) = if let Some(map) = entry.sparse_map() {
            let stored = map.iter().map(|&(_, l)| l).sum();
            (entry.size(), map.to_vec(), stored)
        } else if let Some(size) = pax.sparse_size {
            let stored = entry.size();
            if pax.sparse_major == Some(1) {
                let (chunks, map_len) = read_sparse_map_1_0(entry, stored).map_err(bad)?;
                (size, chunks, stored - map_len)
            } else {
                (size, pax.sparse_map.clone(), stored)
            }
        } else {
            return Ok(None);
        };
        let mut end = 0u64;
        let mut data = 0u64;
        for &(offset, len) in &chunks {
            if offset < end {
                return Err(bad("chunks overlap or are out of order".into()));
            }
            end = offset
                .checked_add(len)
                .filter(|&e| e <= size)
                .ok_or_else(|| bad(format!("a chunk ends past the file's size {size}")))?;
            data += len;
        }
        if data != stored {
            return Err(bad(format!(
                "the map describes {data} bytes of data, the member holds {stored}"
            )));
        }
        Ok(Some(Sparse { size, chunks }))
    }

    /// Lists `rel` as kept (not written) when the [`Unchanged`] probe finds it as the
    /// entry has it.
    fn reuse(&mut self, rel: &Path, size: u64, meta: &Meta) -> bool {
        let Some(probe) = self.unchanged.as_deref_mut() else {
            return false;
        };
        let attrs = FileAttrs {
            size,
            mtime: meta.mtime.unix_seconds(),
            mode: meta.mode,
            owner: meta.owner,
        };
        let Some(at) = probe.find(rel, &attrs) else {
            return false;
        };
        self.reused.insert(rel.to_path_buf(), attrs);
        self.kept_at.insert(rel.to_path_buf(), at);
        true
    }

    /// `link_unchanged`: hard-links the reused file to `into/rel`. False when the link
    /// cannot be made (EXDEV, EMLINK, ...): then the entry is written instead.
    fn link_reused(&mut self, rel: &Path, raw: &[u8]) -> Result<bool> {
        let Some(src) = self.kept_at.get(rel).cloned() else {
            return Ok(false);
        };
        let abs = self.into.join(rel);
        // linkat without AT_SYMLINK_FOLLOW: the probe saw a regular file, never a symlink.
        let link = |abs: &Path| {
            nix::unistd::linkat(None, src.as_path(), None, abs, nix::fcntl::AtFlags::empty())
        };
        let linked = match link(&abs) {
            Err(nix::errno::Errno::EEXIST) => {
                self.remove_existing(rel, &abs, raw)?;
                link(&abs)
            }
            other => other,
        };
        Ok(linked.is_ok())
    }

    fn dir(&mut self, rel: &Path, raw: &[u8], meta: Meta) -> Result<()> {
        self.parents(rel, raw)?;
        if !self.dirs.contains(rel) {
            let abs = self.into.join(rel);
            match mkdir(&abs) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let is_dir = fs::symlink_metadata(&abs)
                        .map_err(|e| fail(raw, format!("stat: {e}")))?
                        .is_dir();
                    if !is_dir {
                        self.remove_existing(rel, &abs, raw)?;
                        mkdir(&abs)
                    } else {
                        Ok(())
                    }
                }
                other => other,
            }
            .map_err(|e| fail(raw, format!("mkdir: {e}")))?;
            self.dirs.insert(rel.to_path_buf());
        }
        self.fixes.insert(rel.to_path_buf(), meta.into());
        self.entries += 1;
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, raw: &[u8], target: &[u8], meta: &Meta) -> Result<()> {
        self.parents(rel, raw)?;
        let abs = self.into.join(rel);
        let target = OsStr::from_bytes(target);
        match std::os::unix::fs::symlink(target, &abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                std::os::unix::fs::symlink(target, &abs)
            }
            other => other,
        }
        .map_err(|e| fail(raw, format!("symlink: {e}")))?;
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::lchown(&abs, Some(uid), Some(gid))
                .map_err(|e| fail(raw, format!("chown: {e}")))?;
        }
        filetime::set_symlink_file_times(&abs, meta.mtime, meta.mtime)
            .map_err(|e| fail(raw, format!("set mtime: {e}")))?;
        self.entries += 1;
        Ok(())
    }

    fn hard_link(&mut self, rel: &Path, raw: &[u8], target: &[u8]) -> Result<()> {
        let (target, absolute) = link_target(target).map_err(|r| refused(raw, r))?;
        if absolute {
            self.warn_absolute(raw);
        }
        if target == rel {
            // A link to itself: the file is already there.
            return Ok(());
        }
        self.check_parents(&target, raw)?;
        self.parents(rel, raw)?;
        // A link to a file kept in dest (not staged) is made to dest's copy: the sync
        // writes it as a file of its own (rsync -a has no -H).
        let src = match self.kept_at.get(&target) {
            Some(kept) if !self.opts.link_unchanged => kept.clone(),
            _ => self.into.join(&target),
        };
        let abs = self.into.join(rel);
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never its target.
        let link = |src: &Path, abs: &Path| {
            nix::unistd::linkat(None, src, None, abs, nix::fcntl::AtFlags::empty())
                .map_err(io::Error::from)
        };
        match link(&src, &abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                link(&src, &abs)
            }
            other => other,
        }
        .map_err(|e| fail(raw, format!("hard link to {:?}: {e}", target)))?;
        self.entries += 1;
        Ok(())
    }

    /// A fifo or device node (only called when running as root).
    fn special(
        &mut self,
        h: &tar::Header,
        kind: EntryType,
        rel: &Path,
        raw: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        self.parents(rel, raw)?;
        let abs = self.into.join(rel);
        let sflag = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let dev = if sflag == SFlag::S_IFIFO {
            0
        } else {
            let major = h.device_major().map_err(|e| fail(raw, format!("{e}")))?;
            let minor = h.device_minor().map_err(|e| fail(raw, format!("{e}")))?;
            makedev(major.unwrap_or(0).into(), minor.unwrap_or(0).into())
        };
        let perm = Mode::from_bits_truncate(meta.mode & 0o777);
        let make = |abs: &Path| mknod(abs, sflag, perm, dev).map_err(io::Error::from);
        match make(&abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(rel, &abs, raw)?;
                make(&abs)
            }
            other => other,
        }
        .map_err(|e| fail(raw, format!("mknod: {e}")))?;
        if let Some((uid, gid)) = meta.owner {
            std::os::unix::fs::lchown(&abs, Some(uid), Some(gid))
                .map_err(|e| fail(raw, format!("chown: {e}")))?;
        }
        if self.needs_chmod(meta.mode) {
            // Just created by mknod, so not a symlink: chmod cannot be redirected.
            fs::set_permissions(&abs, Permissions::from_mode(meta.mode))
                .map_err(|e| fail(raw, format!("chmod: {e}")))?;
        }
        filetime::set_symlink_file_times(&abs, meta.mtime, meta.mtime)
            .map_err(|e| fail(raw, format!("set mtime: {e}")))?;
        self.entries += 1;
        Ok(())
    }

    /// Makes every parent of `rel` a real directory below `into`, creating missing
    /// ones; refuses a parent that is a symlink (never followed) or not a directory.
    fn parents(&mut self, rel: &Path, raw: &[u8]) -> Result<()> {
        self.real_parents(rel, raw, true)
    }

    /// Like `parents` for a hard link's target, but creates nothing.
    fn check_parents(&mut self, target: &Path, raw: &[u8]) -> Result<()> {
        self.real_parents(target, raw, false)
    }

    fn real_parents(&mut self, rel: &Path, raw: &[u8], create: bool) -> Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if parent.as_os_str().is_empty() || self.dirs.contains(parent) {
            return Ok(());
        }
        let what = if create { "" } else { "hard link target: " };
        let mut prefix = PathBuf::with_capacity(parent.as_os_str().len());
        for comp in parent.components() {
            prefix.push(comp);
            if self.dirs.contains(&prefix) {
                continue;
            }
            let abs = self.into.join(&prefix);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    let msg = if create {
                        format!("refusing to write through the symlink {prefix:?}")
                    } else {
                        format!("hard link target passes through the symlink {prefix:?}")
                    };
                    return Err(fail(raw, msg));
                }
                Ok(_) => return Err(fail(raw, format!("{what}{prefix:?} is not a directory"))),
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    mkdir(&abs).map_err(|e| fail(raw, format!("mkdir {prefix:?}: {e}")))?;
                    if self.needs_chmod(IMPLICIT_DIR_MODE) {
                        let fix = DirFix {
                            mode: IMPLICIT_DIR_MODE,
                            mtime: None,
                            owner: None,
                        };
                        self.fixes.insert(prefix.clone(), fix);
                    }
                }
                Err(e) => return Err(fail(raw, format!("{what}stat {prefix:?}: {e}"))),
            }
            self.dirs.insert(prefix.clone());
        }
        Ok(())
    }

    /// A later entry replaces what an earlier one put at `abs` (as GNU tar does).
    fn remove_existing(&mut self, rel: &Path, abs: &Path, raw: &[u8]) -> Result<()> {
        let m = fs::symlink_metadata(abs).map_err(|e| fail(raw, format!("stat: {e}")))?;
        if m.is_dir() {
            // remove_dir_all never follows symlinks inside the tree.
            fs::remove_dir_all(abs).map_err(|e| fail(raw, format!("remove: {e}")))?;
            self.dirs.retain(|d| !d.starts_with(rel));
            self.fixes.retain(|d, _| !d.starts_with(rel));
        } else {
            fs::remove_file(abs).map_err(|e| fail(raw, format!("remove: {e}")))?;
        }
        Ok(())
    }

    /// Whether creating with `mode` may have lost bits to the umask (or needs
    /// setuid/setgid/sticky set explicitly).
    fn needs_chmod(&self, mode: u32) -> bool {
        match self.umask {
            Some(umask) => mode & umask != 0 || mode & 0o7000 != 0,
            None => true,
        }
    }

    /// Applies directory owners, modes and mtimes, deepest first: writing inside a
    /// directory would bump its mtime, and a read-only or unsearchable parent would
    /// block fixing its children.
    pub(super) fn finish(self) -> Result<Staged> {
        let mut fixes: Vec<(PathBuf, DirFix)> = self.fixes.into_iter().collect();
        fixes.sort_by_key(|(rel, _)| Reverse(rel.components().count()));
        for (rel, fix) in &fixes {
            let abs = if rel.as_os_str().is_empty() {
                self.into.to_path_buf()
            } else {
                self.into.join(rel)
            };
            let name = if rel.as_os_str().is_empty() {
                ".".to_string()
            } else {
                shown(rel.as_os_str().as_bytes())
            };
            apply_dir(&abs, fix).map_err(|msg| Error::Entry { entry: name, msg })?;
        }
        Ok(Staged {
            root: self.into.to_path_buf(),
            root_mode: self.root_mode,
            entries: self.entries,
            reused: self.reused,
        })
    }
}

impl From<Meta> for DirFix {
    fn from(m: Meta) -> Self {
        DirFix {
            mode: m.mode,
            mtime: Some(m.mtime),
            owner: m.owner,
        }
    }
}

fn apply_dir(abs: &Path, fix: &DirFix) -> std::result::Result<(), String> {
    // O_NOFOLLOW: even if something replaced the directory by a symlink, never follow it.
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(abs)
        .map_err(|e| format!("open directory: {e}"))?;
    if let Some((uid, gid)) = fix.owner {
        std::os::unix::fs::fchown(&dir, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
    }
    dir.set_permissions(Permissions::from_mode(fix.mode))
        .map_err(|e| format!("chmod: {e}"))?;
    if let Some(mtime) = fix.mtime {
        filetime::set_file_handle_times(&dir, None, Some(mtime))
            .map_err(|e| format!("set mtime: {e}"))?;
    }
    Ok(())
}

fn mkdir(abs: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(IMPLICIT_DIR_MODE).create(abs)
}

/// (bytes available to unprivileged users, fragment size) of the filesystem holding
/// `dir`: `f_bavail * f_frsize`. `None` when unknown, or when the filesystem reports
/// no size at all (some FUSE ones): such a filesystem is not guarded.
fn free_space(dir: &Path) -> Option<(u64, u64)> {
    let v = nix::sys::statvfs::statvfs(dir).ok()?;
    if v.blocks() == 0 {
        return None;
    }
    let frsize = v.fragment_size().max(1);
    let free = v.blocks_available().saturating_mul(frsize);
    Some((free, frsize))
}

/// The umask, read without changing it (Linux ≥ 4.7 shows it in /proc).
fn current_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

fn cached(
    cache: &mut HashMap<Vec<u8>, Option<u32>>,
    name: &[u8],
    lookup: fn(&str) -> Option<u32>,
) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    if let Some(id) = cache.get(name) {
        return *id;
    }
    let id = std::str::from_utf8(name).ok().and_then(lookup);
    cache.insert(name.to_vec(), id);
    id
}

fn user_by_name(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

fn group_by_name(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

fn type_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Fifo => "fifo",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        _ => "special file",
    }
}
