//! What persists between runs (SPEC §2, §10):
//!
//! - the exclusive lock that keeps two deploys of one `dest` from interleaving —
//!   `.<dest name>.stretcher.lock` in dest's parent;
//! - the replay memory: per event name, the last event handled (consul: ID and
//!   LTime; serf: LTime), one small JSON file per name in the state directory,
//!   replaced atomically (temp file, fsync, rename, fsync of the directory).
//!
//! Every lock is flock(2), so a lock held by a dead process never blocks. Lock files
//! are never removed (removing one would let a third run lock a different inode
//! while the second still holds the old one). A corrupt state file is reported and
//! treated as empty, never a crash. This module never fetches or runs anything.
//!
//! Other local users (SPEC §17): a lock file is opened relative to its directory's
//! descriptor with `O_NOFOLLOW` (created `O_EXCL`, mode 0600 set through the
//! descriptor), and used only when it is a regular file of the running user with one
//! link, so a planted symlink is never followed and no other user can open it to hold
//! the lock. The state directory and its subdirectories are created 0755 whatever the
//! umask; as root, a state directory that another user could write (it, a
//! subdirectory, or a directory above it) is refused, as sshd's StrictModes refuses
//! a key file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::at::Tree;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::logln;
use crate::Env;

/// An exclusive lock on one `dest`, released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct DestLock {
    _lock: Flock<File>,
}

/// The lock file for `dest`: `.<name>.stretcher.lock` beside it.
pub(crate) fn lock_path(dest: &Path, env: Env) -> Result<PathBuf> {
    let (dir, tag) = work_dir(dest, env)?;
    let mut file = std::ffi::OsString::from(".");
    file.push(tag);
    file.push(".stretcher.lock");
    Ok(dir.join(file))
}

/// Where the lock file and the staging directory of `dest` go, and the tag their
/// names carry (SPEC §10): beside `dest`, tagged with its name — or, when dest's parent
/// exists and this user cannot write there, in `$TMPDIR`, tagged with the name and a
/// hash of the whole path (two dests of one name must not share them). A missing
/// parent counts as writable: it is created.
pub(crate) fn work_dir(dest: &Path, env: Env) -> Result<(PathBuf, std::ffi::OsString)> {
    use nix::unistd::{access, AccessFlags};
    let (parent, name) = parent_and_name(dest)?;
    let writable =
        !parent.exists() || access(parent, AccessFlags::W_OK | AccessFlags::X_OK).is_ok();
    if writable {
        return Ok((parent.to_path_buf(), name.to_os_string()));
    }
    use sha1::{Digest, Sha1};
    use std::os::unix::ffi::OsStrExt;
    let hash = hex::encode(Sha1::digest(dest.as_os_str().as_bytes()));
    let mut tag = name.to_os_string();
    tag.push("-");
    tag.push(&hash[..12]);
    Ok((temp_dir(env), tag))
}

/// `$TMPDIR`, else `/tmp`, as `std::env::temp_dir` reads it, but from `env` (whose
/// values are UTF-8: a non-UTF-8 `TMPDIR` counts as unset).
fn temp_dir(env: Env) -> PathBuf {
    env("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

/// `dest`'s parent directory and its own name.
pub(crate) fn parent_and_name(dest: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    match (dest.parent(), dest.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(Error::Dest {
            path: dest.to_path_buf(),
            msg: "no parent directory".into(),
        }),
    }
}

/// Takes the exclusive lock for `dest`, creating its parent if needed; waits (and
/// says so in the log) while another stretcher holds it. A signal ends the wait.
pub(crate) fn lock_dest(dest: &Path, env: Env) -> Result<DestLock> {
    let path = lock_path(dest, env)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
    }
    let what = format!("another stretcher is deploying to {}", dest.display());
    let lock = lock_waiting(&path, &what)?;
    Ok(DestLock { _lock: lock })
}

/// The mode of every lock file: only its owner, the running user, may open it.
const LOCK_MODE: u32 = 0o600;

/// Opens the lock file `path`, creating it, without following a symlink at its name
/// (SPEC §17): created with `O_CREAT|O_EXCL|O_NOFOLLOW` relative to its directory's
/// descriptor and set to 0600 through its own; an existing one is opened with
/// `O_NOFOLLOW` and used only when it is a regular file of the running user with one
/// link (a group or other permission left by an older version is taken away).
/// Anything else is refused, naming it.
fn open_lock(path: &Path) -> Result<File> {
    // Read-only is enough for flock(2).
    open_private(path, "lock file", rustix::fs::OFlags::RDONLY)
}

/// Opens (creating) the file `path` as [`open_lock`] does (the same checks, mode
/// 0600), with the access `access` (`RDONLY`, or `WRONLY | APPEND`); `what` names it
/// in a refusal.
fn open_private(path: &Path, what: &'static str, access: rustix::fs::OFlags) -> Result<File> {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    let refuse = |msg: String| Error::Unsafe {
        what,
        path: path.to_path_buf(),
        msg,
    };
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(refuse("not a file name".into())),
    };
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open directory", dir, e.into()))?;
    // NONBLOCK and NOCTTY keep a planted fifo or terminal from blocking or adopting
    // the process before it is refused.
    let flags = access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    // The name can come and go between the two opens (another stretcher creating
    // it): a few rounds settle it.
    for _ in 0..8 {
        let mode = Mode::from_raw_mode(LOCK_MODE);
        match rustix::fs::openat(&dir_fd, name, flags | OFlags::CREATE | OFlags::EXCL, mode) {
            Ok(fd) => {
                // The umask may have taken more; never less than the owner's rw.
                rustix::fs::fchmod(&fd, mode).map_err(|e| Error::io("chmod", path, e.into()))?;
                return Ok(File::from(fd));
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(Error::io("create", path, e.into())),
        }
        let fd = match rustix::fs::openat(&dir_fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(Errno::LOOP) => {
                return Err(refuse(
                    "it is a symbolic link (never followed; remove it)".into(),
                ))
            }
            Err(e) => return Err(Error::io("open", path, e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", path, e.into()))?;
        let me = rustix::process::geteuid().as_raw();
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(refuse("not a regular file".into()));
        }
        if st.st_uid != me {
            return Err(refuse(format!(
                "owned by uid {}, not by this user (uid {me}); remove it",
                st.st_uid
            )));
        }
        if st.st_nlink != 1 {
            return Err(refuse(format!("it has {} hard links", st.st_nlink)));
        }
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(LOCK_MODE))
                .map_err(|e| Error::io("chmod", path, e.into()))?;
        }
        return Ok(File::from(fd));
    }
    Err(refuse("it keeps appearing and disappearing".into()))
}

/// The log of detached deploys in the state directory (SPEC §13, `--detach`).
pub(crate) const DETACH_LOG: &str = "detach.log";

/// Past this size the detach log is moved to `detach.log.1` (the one before it is
/// dropped) when the next detached deploy starts.
const DETACH_LOG_MAX: u64 = 4 << 20;

/// `STATE/detach.log`, opened for appending, for the output of a detached deploy:
/// as a lock file is (SPEC §17: no symlink followed, a regular file of the running
/// user with one link, 0600), moved to `detach.log.1` first when it has grown past
/// `DETACH_LOG_MAX` (a rename relative to the state directory's descriptor).
pub(crate) fn open_detach_log(state_dir: &Path) -> Result<(File, PathBuf)> {
    use rustix::fs::OFlags;
    let path = state_dir.join(DETACH_LOG);
    let access = OFlags::WRONLY | OFlags::APPEND;
    let file = open_private(&path, "detach log", access)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size <= DETACH_LOG_MAX {
        return Ok((file, path));
    }
    let dir = Tree::open(state_dir, false).map_err(|e| Error::io("open", state_dir, e))?;
    let old = format!("{DETACH_LOG}.1");
    // Two detached deploys may both move it: the second finds it gone, and opens anew.
    match dir.rename(Path::new(DETACH_LOG), &dir, Path::new(&old)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("rename", &path, e)),
    }
    Ok((open_private(&path, "detach log", access)?, path))
}

/// Opens (creating) the lock file `path` and takes an exclusive flock on it, polling
/// so that a signal can end the wait; logs once that it waits, and once that it got it.
fn lock_waiting(path: &Path, holder: &str) -> Result<Flock<File>> {
    let mut file = open_lock(path)?;
    let mut said = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if said {
                    logln!("got the lock {}", path.display());
                }
                return Ok(lock);
            }
            Err((f, Errno::EWOULDBLOCK)) => {
                if !said {
                    logln!("waiting for the lock {}: {holder}", path.display());
                    said = true;
                }
                file = f;
                interrupt::sleep(Duration::from_millis(100))?;
            }
            Err((_, errno)) => {
                return Err(Error::io("lock", path, std::io::Error::from(errno)));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Replay memory
// ---------------------------------------------------------------------------

/// The system-wide default state directory (SPEC §2).
pub(crate) const SYSTEM_STATE_DIR: &str = "/var/lib/stretcher";

/// What identifies one delivery of an event: consul gives an ID and an LTime,
/// serf an LTime only; both a payload, which orders two events of one LTime (SPEC
/// §10). `None` means "not given", which never matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ltime: Option<u64>,
    /// The payload as kept: whole when it is at most [`PAYLOAD_KEPT`] bytes, else
    /// its longest head of at most that many bytes that ends at a character boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// For a payload longer than [`PAYLOAD_KEPT`] bytes: the sha256 of all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
}

/// The bytes of a payload the replay memory keeps (SPEC §10). Serf and Consul carry
/// far less (512 bytes by default); a longer payload is kept as its head and digest.
pub(crate) const PAYLOAD_KEPT: usize = 64 * 1024;

impl Seen {
    /// An event's identity with its payload kept as the replay memory keeps it.
    pub fn new(id: Option<String>, ltime: Option<u64>, payload: Option<&str>) -> Seen {
        let (payload, payload_sha256) = match payload {
            None => (None, None),
            Some(p) if p.len() <= PAYLOAD_KEPT => (Some(p.to_string()), None),
            Some(p) => {
                let mut end = PAYLOAD_KEPT;
                while !p.is_char_boundary(end) {
                    end -= 1;
                }
                use sha2::Digest;
                let digest = hex::encode(sha2::Sha256::digest(p.as_bytes()));
                (Some(p[..end].to_string()), Some(digest))
            }
        };
        Seen {
            id,
            ltime,
            payload,
            payload_sha256,
        }
    }

    /// How this event's payload orders against `other`'s (SPEC §10): byte-wise
    /// whenever both are at most [`PAYLOAD_KEPT`] bytes; longer ones by their kept
    /// head, then a whole payload before a longer one, then by digest — the same
    /// order on every host. `None` when either has no payload kept.
    fn payload_order(&self, other: &Seen) -> Option<std::cmp::Ordering> {
        let (a, b) = (self.payload.as_ref()?, other.payload.as_ref()?);
        Some(
            a.as_bytes()
                .cmp(b.as_bytes())
                .then_with(|| self.payload_sha256.cmp(&other.payload_sha256)),
        )
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.id, self.ltime) {
            (Some(id), Some(t)) => write!(f, "ID {id}, LTime {t}"),
            (Some(id), None) => write!(f, "ID {id}"),
            (None, Some(t)) => write!(f, "LTime {t}"),
            (None, None) => write!(f, "no ID or LTime"),
        }
    }
}

/// Why an event is not run (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Handled already: an older LTime, or the consul ID handled last.
    Replay(String),
    /// Another event of the same LTime, with a greater payload, was handled.
    Superseded(String),
}

/// Why `new` is not to run after what was handled last (`last`), or `None` when it
/// must run (SPEC §10): a consul ID equal to the last one, or an LTime below it, is a
/// replay; at an equal LTime, a payload byte-wise greater than the handled one's
/// runs and a smaller one is superseded, an equal one (the same event delivered
/// again) a replay (with no payload kept, as an older
/// version wrote the state, an equal LTime is a replay). A missing LTime or ID
/// compares with nothing.
pub(crate) fn skip_reason(last: &Seen, new: &Seen) -> Option<Skip> {
    use std::cmp::Ordering;
    if let (Some(a), Some(b)) = (&last.id, &new.id) {
        if a == b {
            return Some(Skip::Replay(format!("ID {b} was handled already")));
        }
    }
    let (Some(a), Some(b)) = (last.ltime, new.ltime) else {
        return None;
    };
    if b < a {
        return Some(Skip::Replay(format!(
            "LTime {b} is not newer than the last handled LTime {a}"
        )));
    }
    if b > a {
        return None;
    }
    match new.payload_order(last) {
        Some(Ordering::Greater) => None,
        // SPEC §10: an equal payload is superseded like a smaller one (most often the
        // very event delivered again: a serf redelivery, `join -replay`).
        Some(Ordering::Equal) => Some(Skip::Superseded(format!(
            "an event of the same LTime {b} with the same payload was handled already"
        ))),
        Some(Ordering::Less) => Some(Skip::Superseded(format!(
            "an event of the same LTime {b} with a greater payload was handled"
        ))),
        None => Some(Skip::Replay(format!(
            "LTime {b} is not newer than the last handled LTime {a}"
        ))),
    }
}

/// What is written after an event ran: the event itself, except that the LTime
/// never goes down (a handled event without an LTime keeps the old high mark, and
/// the payload of that mark).
fn merged(last: &Seen, new: &Seen) -> Seen {
    let newest = match (last.ltime, new.ltime) {
        (Some(a), Some(b)) => b >= a,
        (_, b) => b.is_some() || last.ltime.is_none(),
    };
    let at_mark = if newest { new } else { last };
    Seen {
        id: new.id.clone().or_else(|| last.id.clone()),
        ltime: at_mark.ltime.or(last.ltime),
        payload: at_mark.payload.clone(),
        payload_sha256: at_mark.payload_sha256.clone(),
    }
}

/// One state file: the event name (checked on read) and the last handled event.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    name: String,
    #[serde(flatten)]
    seen: Seen,
}

/// The state file name for an event name: `event-<name>.json`, the name reduced to
/// `[A-Za-z0-9._-]` (at most 64 of them); when anything had to change, a hash
/// of the real name is appended so that two names never share a file.
pub(crate) fn file_stem(name: &str) -> String {
    const MAX: usize = 64;
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX)
        .collect();
    if clean == name && !name.is_empty() {
        return format!("event-{clean}");
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    format!("event-{clean}-{}", &hex::encode(digest)[..16])
}

/// Where replay state lives (SPEC §2): `explicit` (`--state-dir`), else
/// `/var/lib/stretcher` when it is writable or can be created, else
/// `$XDG_STATE_HOME/stretcher`, else `~/.local/state/stretcher`. The directory
/// exists when this returns (what it had to create is 0755 at most, whatever the
/// umask); as root, one another user could write is refused ([`check_private`]).
pub(crate) fn state_dir(explicit: Option<&Path>, env: Env) -> Result<PathBuf> {
    let dir = match explicit {
        Some(dir) => {
            make_dirs(dir).map_err(|e| Error::io("create state directory", dir, e))?;
            dir.to_path_buf()
        }
        None => resolve_default(Path::new(SYSTEM_STATE_DIR), env)?,
    };
    if nix::unistd::geteuid().is_root() {
        check_private(&dir)?;
    }
    Ok(dir)
}

/// Creates `dir` and its missing parents, each 0755 at most (the umask can only take
/// more away): the state directory and its subdirectories (SPEC §17).
pub(crate) fn make_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

/// The directory below the state directory that holds records and indexes (`record`
/// names it from here: `state` imports no module that writes into it).
pub(crate) const DEPLOYS_DIR: &str = "deploys";

/// The subdirectories of the state directory checked with it.
const STATE_SUBDIRS: &[&str] = &[DEPLOYS_DIR];

/// SPEC §17, for a run as root: the state directory `dir` must be root's and
/// writable by no one else, and so must its subdirectories and every directory above
/// it (whose owner could rename it away), but for a sticky one like `/tmp` above it.
/// Otherwise it is refused, naming it and what is wrong.
pub(crate) fn check_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |msg: String| Error::Unsafe {
        what: "state directory",
        path: dir.to_path_buf(),
        msg,
    };
    // Writable by a user other than root, or by a group or others: what is wrong.
    let problem = |meta: &std::fs::Metadata, above: bool| {
        let mode = meta.mode();
        if meta.uid() != 0 {
            Some(format!("owned by uid {}, not root", meta.uid()))
        } else if mode & 0o022 != 0 && !(above && mode & 0o1000 != 0) {
            Some(format!(
                "writable by group or others (mode {:04o})",
                mode & 0o7777
            ))
        } else {
            None
        }
    };
    let real = std::fs::canonicalize(dir).map_err(|e| Error::io("resolve", dir, e))?;
    let meta = std::fs::metadata(&real).map_err(|e| Error::io("stat", &real, e))?;
    if let Some(p) = problem(&meta, false) {
        return Err(refuse(p));
    }
    for sub in STATE_SUBDIRS {
        let path = real.join(sub);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(refuse(format!("{} is a symbolic link", path.display())))
            }
            Ok(meta) => {
                if let Some(p) = problem(&meta, false) {
                    return Err(refuse(format!("{} is {p}", path.display())));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &path, e)),
        }
    }
    for above in real.ancestors().skip(1) {
        let meta = std::fs::metadata(above).map_err(|e| Error::io("stat", above, e))?;
        if let Some(p) = problem(&meta, true) {
            return Err(refuse(format!(
                "the directory {} above it is {p}",
                above.display()
            )));
        }
    }
    Ok(())
}

/// The state directory a deploy would use (see [`state_dir`]), for the read-only
/// subcommands: nothing is created; `None` when none can be chosen.
pub(crate) fn find_state_dir(explicit: Option<&Path>, env: Env) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    let system = Path::new(SYSTEM_STATE_DIR);
    if writable(system) || (!system.exists() && system.parent().is_some_and(writable)) {
        return Some(system.to_path_buf());
    }
    let xdg = env("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let home = env("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(|h| h.join(".local").join("state"));
    xdg.or(home).map(|b| b.join("stretcher"))
}

fn resolve_default(system: &Path, env: Env) -> Result<PathBuf> {
    if writable(system) {
        return Ok(system.to_path_buf());
    }
    if !system.exists() && system.parent().is_some_and(writable) && make_dir(system).is_ok() {
        return Ok(system.to_path_buf());
    }
    let xdg = env("XDG_STATE_HOME")
        .map(PathBuf::from)
        // The XDG spec: a relative value is invalid and must be ignored.
        .filter(|p| p.is_absolute());
    let home = env("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(|h| h.join(".local").join("state"));
    let base = xdg.or(home).ok_or_else(|| {
        Error::io(
            "choose a state directory",
            system,
            std::io::Error::other(
                "not writable, and neither XDG_STATE_HOME nor HOME is set; give --state-dir",
            ),
        )
    })?;
    let dir = base.join("stretcher");
    make_dirs(&dir).map_err(|e| Error::io("create state directory", &dir, e))?;
    Ok(dir)
}

fn writable(p: &Path) -> bool {
    p.is_dir() && nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn make_dir(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o755).create(p)
}

/// The outcome of `claim`.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Not to run (a replay, or superseded): the reason, naming the state file, for
    /// the log. Nothing is locked any more.
    Skip(Skip),
    /// Not handled yet: run it, then `record` it. Holds the event name's lock, so a
    /// second handler of the same name waits until this one has recorded.
    Fresh(Box<EventClaim>),
}

/// The right to handle one event: holds the lock of its name until dropped.
#[derive(Debug)]
pub(crate) struct EventClaim {
    _lock: Flock<File>,
    dir: PathBuf,
    path: PathBuf,
    name: String,
    last: Seen,
    new: Seen,
}

/// Checks `new` (an event called `name`) against the state in `dir`. Takes the
/// name's lock first (waiting, and saying so, while another stretcher handles an
/// event of that name) and keeps it in the returned claim, so that the check, the
/// deploy and the record are one step for every process that shares `dir`.
pub(crate) fn claim(dir: &Path, name: &str, new: &Seen) -> Result<Claim> {
    let stem = file_stem(name);
    let lock_path = dir.join(format!("{stem}.lock"));
    let path = dir.join(format!("{stem}.json"));
    let holder = format!("another stretcher is handling event {name:?}");
    let lock = lock_waiting(&lock_path, &holder)?;
    let last = read_record(&path, name);
    if let Some(skip) = skip_reason(&last, new) {
        let with_file = |why: String| format!("{why} (state file {})", path.display());
        return Ok(Claim::Skip(match skip {
            Skip::Replay(why) => Skip::Replay(with_file(why)),
            Skip::Superseded(why) => Skip::Superseded(with_file(why)),
        }));
    }
    Ok(Claim::Fresh(Box::new(EventClaim {
        _lock: lock,
        dir: dir.to_path_buf(),
        path,
        name: name.to_string(),
        last,
        new: new.clone(),
    })))
}

/// Reads the last handled event; a missing file is empty, an unreadable or
/// corrupt one is reported and treated as empty.
fn read_record(path: &Path, name: &str) -> Seen {
    // Never through a symlink at its name (SPEC §17); a few hundred bytes at most.
    let read = path
        .parent()
        .zip(path.file_name())
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        .and_then(|(dir, name)| Tree::open(dir, true)?.read_file(Path::new(name), 1 << 20));
    let text = match read {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Seen::default(),
        Err(e) => {
            logln!(
                "warning: cannot read state file {}: {e}; treating it as empty",
                path.display()
            );
            return Seen::default();
        }
    };
    match serde_json::from_slice::<Record>(&text) {
        Ok(r) if r.name == name => r.seen,
        Ok(r) => {
            logln!(
                "warning: state file {} is for event {:?}, not {name:?}; treating it as empty",
                path.display(),
                r.name
            );
            Seen::default()
        }
        Err(e) => {
            logln!(
                "warning: state file {} is corrupt ({e}); treating it as empty",
                path.display()
            );
            Seen::default()
        }
    }
}

impl EventClaim {
    /// Records the event as handled (atomically: temp file, fsync, rename, fsync
    /// of the directory), then releases the lock.
    pub fn record(self) -> Result<()> {
        let record = Record {
            name: self.name.clone(),
            seen: merged(&self.last, &self.new),
        };
        // Serialising a struct of strings and integers cannot fail.
        let mut text = serde_json::to_vec(&record).unwrap_or_default();
        text.push(b'\n');
        write_atomic(&self.dir, &self.path, &text)
    }
}

/// Replaces the state file `path` (in the state directory `dir`) by `data` (SPEC
/// §17): a temporary `.state-<name>.<random>.tmp` created `O_EXCL|O_NOFOLLOW`
/// relative to the directory's descriptor, mode 0600 through its own, written,
/// fsync'd, renamed onto the name, the directory fsync'd.
fn write_atomic(dir: &Path, path: &Path, data: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default();
    let tree = Tree::open(dir, true).map_err(|e| Error::io("open state directory", dir, e))?;
    let prefix = format!(".state-{}.", name.to_string_lossy());
    tree.replace(Path::new(name), &prefix, 0o600, data)
        .map_err(|e| Error::io("write state file", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: Option<&str>, ltime: Option<u64>) -> Seen {
        Seen::new(id.map(str::to_string), ltime, None)
    }

    fn with(id: Option<&str>, ltime: u64, payload: &str) -> Seen {
        Seen::new(id.map(str::to_string), Some(ltime), Some(payload))
    }

    #[test]
    fn lock_file_sits_beside_dest() {
        assert_eq!(
            lock_path(Path::new("/srv/app"), &|_| None).unwrap(),
            Path::new("/srv/.app.stretcher.lock")
        );
        assert!(lock_path(Path::new("/"), &|_| None).is_err());
    }

    #[test]
    fn second_lock_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("app");
        let first = lock_dest(&dest, &|_| None).unwrap();
        let d2 = dest.clone();
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let _second = lock_dest(&d2, &|_| None).unwrap();
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let waited = t.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
    }

    #[test]
    fn a_lock_is_never_a_symlink_a_fifo_or_a_hard_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(".app.stretcher.lock");
        let target = dir.path().join("target");
        let refused = |why: &str| {
            let e = open_lock(&lock).unwrap_err().to_string();
            let head = format!("lock file {}: refused: ", lock.display());
            assert!(e.starts_with(&head) && e.contains(why), "{e}");
        };
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        refused("symbolic link");
        assert!(!target.exists(), "the symlink was followed");
        std::fs::remove_file(&lock).unwrap();
        nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::S_IRWXU).unwrap();
        refused("not a regular file");
        std::fs::remove_file(&lock).unwrap();
        std::fs::write(&target, "").unwrap();
        std::fs::hard_link(&target, &lock).unwrap();
        refused("2 hard links");
        std::fs::remove_file(&lock).unwrap();
        // made 0600; one of ours that others could open loses their permissions
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        open_lock(&lock).unwrap();
        assert_eq!(mode(&lock), 0o600);
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_lock(&lock).unwrap();
        assert_eq!(mode(&lock), 0o600);
    }

    /// A uid no file of the tests belongs to (`nobody`'s on Debian).
    const OTHER_UID: u32 = 65534;

    #[test]
    fn a_lock_file_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: only root can give a file away");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(".app.stretcher.lock");
        std::fs::write(&lock, "").unwrap();
        std::os::unix::fs::chown(&lock, Some(OTHER_UID), None).unwrap();
        let e = open_lock(&lock).unwrap_err().to_string();
        assert!(e.contains("refused: owned by uid 65534"), "{e}");
    }

    #[test]
    fn a_state_directory_others_can_write_is_refused_as_root() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the check is for root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let refused = |why: &str| {
            let e = check_private(&state).unwrap_err().to_string();
            let head = format!("state directory {}: refused: ", state.display());
            assert!(e.starts_with(&head) && e.contains(why), "{e}");
        };
        make_dirs(&state.join(DEPLOYS_DIR)).unwrap();
        check_private(&state).unwrap();
        chmod(&state, 0o777);
        refused("writable by group or others (mode 0777)");
        chmod(&state, 0o700);
        check_private(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(OTHER_UID), None).unwrap();
        refused("owned by uid 65534, not root");
        std::os::unix::fs::chown(&state, Some(0), None).unwrap();
        chmod(&state.join(DEPLOYS_DIR), 0o775);
        refused("deploys is writable by group or others");
        chmod(&state.join(DEPLOYS_DIR), 0o755);
        std::os::unix::fs::chown(root.path(), Some(OTHER_UID), None).unwrap();
        refused("above it is owned by uid 65534");
        std::os::unix::fs::chown(root.path(), Some(0), None).unwrap();
        // a sticky directory above, like /tmp, is fine
        chmod(root.path(), 0o1777);
        check_private(&state).unwrap();
        chmod(root.path(), 0o777);
        refused("above it is writable by group or others");
        chmod(root.path(), 0o700);
    }

    #[test]
    fn replay_table() {
        let empty = Seen::default();
        let cases: &[(Seen, Seen, bool)] = &[
            // nothing handled yet
            (empty.clone(), seen(Some("a"), Some(3)), false),
            (empty.clone(), seen(None, Some(0)), false),
            // consul: same ID, or an LTime at or below
            (seen(Some("a"), Some(3)), seen(Some("a"), Some(3)), true),
            (seen(Some("a"), Some(3)), seen(Some("b"), Some(3)), true),
            (seen(Some("a"), Some(3)), seen(Some("b"), Some(2)), true),
            (seen(Some("a"), Some(3)), seen(Some("b"), Some(4)), false),
            (seen(Some("a"), Some(3)), seen(Some("a"), Some(4)), true),
            (seen(Some("a"), None), seen(Some("a"), None), true),
            (seen(Some("a"), None), seen(Some("b"), None), false),
            // serf: LTime only; 0 is a real LTime (serf's first event has it)
            (seen(None, Some(0)), seen(None, Some(0)), true),
            (seen(None, Some(0)), seen(None, Some(1)), false),
            (seen(None, Some(7)), seen(None, Some(5)), true),
            // a missing LTime compares with nothing
            (seen(None, Some(7)), seen(None, None), false),
            (seen(None, None), seen(None, Some(1)), false),
        ];
        for (last, new, want) in cases {
            assert_eq!(
                skip_reason(last, new).is_some(),
                *want,
                "last {last:?} new {new:?}"
            );
        }
    }

    #[test]
    fn same_ltime_greater_payload_wins() {
        let run = |last: &Seen, new: &Seen| skip_reason(last, new);
        let a = with(None, 5, "s3://b/a.yml");
        let b = with(None, 5, "s3://b/b.yml");
        // the greater runs, whatever came first; the smaller or equal is superseded
        assert_eq!(run(&a, &b), None);
        assert!(matches!(run(&b, &a), Some(Skip::Superseded(w)) if w.contains("greater payload")));
        assert!(matches!(run(&b, &b), Some(Skip::Superseded(w)) if w.contains("same payload")));
        // byte-wise: a prefix is smaller; bytes, not characters or case
        assert_eq!(
            run(&with(None, 5, "s3://b/a"), &with(None, 5, "s3://b/a ")),
            None
        );
        assert_eq!(run(&with(None, 5, "Z"), &with(None, 5, "a")), None);
        assert_eq!(run(&with(None, 5, "z"), &with(None, 5, "\u{e9}")), None);
        // an older LTime is a replay whatever its payload; a newer one runs
        assert!(matches!(
            run(&a, &with(None, 4, "zzz")),
            Some(Skip::Replay(_))
        ));
        assert_eq!(run(&b, &with(None, 6, "a")), None);
        // consul: the same ID stays a replay; another ID at the same LTime is ordered
        let c = with(Some("id-1"), 5, "s3://b/a.yml");
        assert!(matches!(
            run(&c, &with(Some("id-1"), 5, "zzz")),
            Some(Skip::Replay(_))
        ));
        assert_eq!(run(&c, &with(Some("id-2"), 5, "s3://b/b.yml")), None);
        assert!(matches!(
            run(&c, &with(Some("id-2"), 5, "s3://b/0.yml")),
            Some(Skip::Superseded(_))
        ));
        // a state file of an older version keeps no payload: an equal LTime is a replay
        assert!(matches!(
            run(&seen(None, Some(5)), &b),
            Some(Skip::Replay(_))
        ));
    }

    #[test]
    fn long_payloads_are_kept_bounded_and_ordered_alike() {
        let big = |tail: &str| format!("{}{tail}", "x".repeat(PAYLOAD_KEPT));
        let (p, q) = (big("a"), big("b"));
        let (sp, sq) = (with(None, 1, &p), with(None, 1, &q));
        assert_eq!(sp.payload.as_ref().unwrap().len(), PAYLOAD_KEPT);
        assert!(sp.payload_sha256.is_some());
        // the two orders agree, so every host ends on the same one
        let first = skip_reason(&sp, &sq).is_none();
        let second = skip_reason(&sq, &sp).is_none();
        assert_ne!(first, second);
        assert!(skip_reason(&sp, &sp).is_some());
        // a whole payload equal to a long one's head is smaller, as byte-wise
        let head = with(None, 1, &"x".repeat(PAYLOAD_KEPT));
        assert_eq!(skip_reason(&head, &sp), None);
        assert!(skip_reason(&sp, &head).is_some());
        // the head ends at a character boundary
        let wide = format!("{}\u{e9}\u{e9}", "x".repeat(PAYLOAD_KEPT - 1));
        let kept = with(None, 1, &wide).payload.unwrap();
        assert_eq!(kept.len(), PAYLOAD_KEPT - 1);
    }

    #[test]
    fn the_recorded_ltime_never_goes_down() {
        let m = merged(&seen(Some("a"), Some(9)), &seen(Some("b"), None));
        assert_eq!(m, seen(Some("b"), Some(9)));
        let m = merged(&seen(Some("a"), Some(9)), &seen(Some("b"), Some(4)));
        assert_eq!(m, seen(Some("b"), Some(9)));
        let m = merged(&Seen::default(), &seen(None, Some(4)));
        assert_eq!(m, seen(None, Some(4)));
        // the payload kept is the one of the high mark
        let m = merged(&with(None, 9, "a"), &with(None, 9, "b"));
        assert_eq!(m, with(None, 9, "b"));
        let m = merged(&with(None, 9, "a"), &Seen::new(None, None, Some("z")));
        assert_eq!(m, with(None, 9, "a"));
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        assert_eq!(file_stem("deploy"), "event-deploy");
        assert_eq!(file_stem("web-1.deploy_x"), "event-web-1.deploy_x");
        let odd = [
            "",
            "a/b",
            "a_b/",
            "..",
            "../x",
            "a b",
            "ü",
            &"x".repeat(200),
        ];
        let mut stems: Vec<String> = odd.iter().map(|n| file_stem(n)).collect();
        for s in &stems {
            assert!(s.starts_with("event-"), "{s}");
            assert!(!s.contains('/'), "{s}");
            assert!(s.len() <= 6 + 64 + 17, "{s}");
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
                "{s}"
            );
        }
        stems.push(file_stem("a_b"));
        let n = stems.len();
        stems.sort();
        stems.dedup();
        assert_eq!(stems.len(), n, "two names share a file");
    }

    #[test]
    fn claim_record_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let ev = seen(Some("id-1"), Some(5));
        let Claim::Fresh(c) = claim(dir.path(), "deploy", &ev).unwrap() else {
            panic!("first delivery must run");
        };
        let path = c.path.clone();
        c.record().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"id-1\"") && text.contains('5'), "{text}");
        assert!(matches!(
            claim(dir.path(), "deploy", &ev).unwrap(),
            Claim::Skip(Skip::Replay(_))
        ));
        // another name has its own memory
        assert!(matches!(
            claim(dir.path(), "other", &ev).unwrap(),
            Claim::Fresh(_)
        ));
        // a newer event runs; a dropped (unrecorded) claim leaves the state as it was
        let newer = seen(Some("id-2"), Some(6));
        let Claim::Fresh(c) = claim(dir.path(), "deploy", &newer).unwrap() else {
            panic!("newer event must run");
        };
        drop(c);
        assert!(matches!(
            claim(dir.path(), "deploy", &newer).unwrap(),
            Claim::Fresh(_)
        ));
        // only the state and lock files are left: no temp files
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["event-deploy.json", "event-deploy.lock", "event-other.lock"]
        );
    }

    #[test]
    fn the_greater_payload_of_one_ltime_ends_last_in_either_order() {
        let (a, b) = (with(None, 3, "s3://b/a.yml"), with(None, 3, "s3://b/b.yml"));
        for (first, second) in [(&a, &b), (&b, &a)] {
            let dir = tempfile::tempdir().unwrap();
            let Claim::Fresh(c) = claim(dir.path(), "deploy", first).unwrap() else {
                panic!("the first must run");
            };
            c.record().unwrap();
            let ran_second = match claim(dir.path(), "deploy", second).unwrap() {
                Claim::Fresh(c) => {
                    c.record().unwrap();
                    true
                }
                Claim::Skip(Skip::Superseded(why)) => {
                    assert!(
                        why.contains("greater payload") && why.contains("state file"),
                        "{why}"
                    );
                    false
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(ran_second, second == &b);
            // the memory now holds b: a redelivery of either is skipped
            assert!(matches!(
                claim(dir.path(), "deploy", &a).unwrap(),
                Claim::Skip(Skip::Superseded(_))
            ));
            assert!(matches!(
                claim(dir.path(), "deploy", &b).unwrap(),
                Claim::Skip(Skip::Superseded(_))
            ));
            let text = std::fs::read_to_string(dir.path().join("event-deploy.json")).unwrap();
            assert!(text.contains("\"payload\":\"s3://b/b.yml\""), "{text}");
        }
    }

    #[test]
    fn corrupt_state_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let ev = seen(Some("id-1"), Some(5));
        for junk in [
            &b"{not json"[..],
            b"",
            b"\xff\xfe",
            b"{\"name\":\"other\",\"ltime\":9}",
        ] {
            std::fs::write(dir.path().join("event-deploy.json"), junk).unwrap();
            assert!(
                matches!(claim(dir.path(), "deploy", &ev).unwrap(), Claim::Fresh(_)),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn second_claim_of_a_name_waits_and_then_sees_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let ev = seen(None, Some(1));
        let Claim::Fresh(first) = claim(dir.path(), "deploy", &ev).unwrap() else {
            panic!("must run");
        };
        let d = dir.path().to_path_buf();
        let ev2 = ev.clone();
        let t = std::thread::spawn(move || claim(&d, "deploy", &ev2).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!t.is_finished(), "the second claim must wait");
        first.record().unwrap();
        assert!(matches!(t.join().unwrap(), Claim::Skip(Skip::Replay(_))));
    }

    #[test]
    fn default_state_dir() {
        let root = tempfile::tempdir().unwrap();
        let env_none = |_: &str| None;
        // a writable system dir, existing or creatable, wins
        let system = root.path().join("varlib").join("stretcher");
        std::fs::create_dir(root.path().join("varlib")).unwrap();
        assert_eq!(resolve_default(&system, &env_none).unwrap(), system);
        assert!(system.is_dir());
        assert_eq!(resolve_default(&system, &env_none).unwrap(), system);
        // otherwise XDG_STATE_HOME, then HOME
        let missing = root.path().join("no").join("such").join("stretcher");
        let xdg = root.path().join("xdg");
        let home = root.path().join("home");
        let (x, h) = (xdg.display().to_string(), home.display().to_string());
        let both = |k: &str| match k {
            "XDG_STATE_HOME" => Some(x.clone()),
            "HOME" => Some(h.clone()),
            _ => None,
        };
        assert_eq!(
            resolve_default(&missing, &both).unwrap(),
            xdg.join("stretcher")
        );
        let home_only = |k: &str| match k {
            "XDG_STATE_HOME" => Some("relative/ignored".to_string()),
            "HOME" => Some(h.clone()),
            _ => None,
        };
        assert_eq!(
            resolve_default(&missing, &home_only).unwrap(),
            home.join(".local/state/stretcher")
        );
        assert!(home.join(".local/state/stretcher").is_dir());
        assert!(resolve_default(&missing, &env_none).is_err());
        // an explicit directory is created
        let explicit = root.path().join("explicit").join("state");
        assert_eq!(state_dir(Some(&explicit), &env_none).unwrap(), explicit);
        assert!(explicit.is_dir());
    }
}
