//! The deploy record (SPEC §11): what one run did, written to the state directory
//! after every run that reached a manifest.
//!
//! - `deploys/<key>.json`: the last record of a key, replaced atomically (temp
//!   file, fsync, rename, fsync of the directory);
//! - `deploys/<key>.history.jsonl`: the last `HISTORY_KEEP` records of the key,
//!   oldest first, one JSON object a line (rewritten atomically too).
//!
//! The key ([`key_for_dest`], [`key_for_commands`], [`key_for_manifest`]) is
//! dest's file name and a digest of its absolute path, so two dests of one name
//! never share records. `classify` is the one place that turns the step a run
//! reached and its error into `result` and `failed_step`.
//!
//! A record never holds a secret: URLs go through `urls::redact` (a password and
//! the query string replaced by `REDACTED`, SPEC §17) and an error's line shows its
//! URL the same way (`error.rs`). A record that cannot be written is a logged warning for the
//! caller, never a change of the deploy's result. Reading is lenient: a missing
//! record is `None`, a corrupt one is a warning and `None`.

use crate::at::Tree;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::logln;
use crate::strategy::Strategy;
use crate::urls::redact;

/// The `schema` of the records this version writes.
pub const SCHEMA: u32 = 1;
/// Records kept in `<key>.history.jsonl`.
pub(crate) const HISTORY_KEEP: usize = 50;
/// The directory below the state directory that holds records and indexes.
pub(crate) const DEPLOYS_DIR: &str = crate::state::DEPLOYS_DIR;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every step that ran succeeded.
    Success,
    /// A step failed (`failed_step` says which).
    Failure,
    /// Refused before use: `--allow-url` (a redirect too), no valid signature, a
    /// stale manifest, or a limit of SPEC §17 (size, not a regular file).
    Refused,
    /// SIGINT / SIGTERM arrived during the run; or (a running record's view, never
    /// written) the process of a `running` record ended without finishing it.
    Interrupted,
    /// The run is still going (SPEC §13): only the running marker beside the record
    /// holds it (`<key>.running`), never `<key>.json` or the history.
    Running,
}

impl Outcome {
    /// The record's spelling (`success`, `failure`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Refused => "refused",
            Outcome::Interrupted => "interrupted",
            Outcome::Running => "running",
        }
    }
}

/// The steps of a deploy a failure is attributed to (SPEC §11 `failed_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Fetching, expanding and checking the manifest.
    Manifest,
    /// Verifying the manifest's signature (`--trusted-key`).
    Signature,
    /// Downloading `src`.
    Download,
    /// Unpacking the archive into staging.
    Unpack,
    /// The `pre` commands.
    Pre,
    /// Bringing the tree to `dest`: the rsync or mv sync, or the release switch.
    Sync,
    /// The `post` commands.
    Post,
}

impl Step {
    /// The record's spelling (`manifest`, `download`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Manifest => "manifest",
            Step::Signature => "signature",
            Step::Download => "download",
            Step::Unpack => "unpack",
            Step::Pre => "pre",
            Step::Sync => "sync",
            Step::Post => "post",
        }
    }
}

/// `result` and `failed_step` of a run that was at `step` when it ended with `err`
/// (`None`: it succeeded). The one mapping from errors to outcomes: a new kind of
/// refusal or a new step is one arm here.
pub(crate) fn classify(step: Step, err: Option<&Error>) -> (Outcome, Option<Step>) {
    let Some(err) = err else {
        return (Outcome::Success, None);
    };
    match err {
        Error::Interrupted(_) => (Outcome::Interrupted, Some(step)),
        // `--allow-url` (a redirect too), and the limits of SPEC §17.
        Error::Refused { .. } | Error::Limit { .. } => (Outcome::Refused, Some(step)),
        // SPEC §15: no valid signature; a stale (expired, lower serial) manifest.
        Error::Signature { .. } => (Outcome::Refused, Some(Step::Signature)),
        Error::Freshness { .. } => (Outcome::Refused, Some(Step::Manifest)),
        // The download and the unpack are one pass: the error says which failed.
        Error::Archive { .. } | Error::Entry { .. } if step == Step::Download => {
            (Outcome::Failure, Some(Step::Unpack))
        }
        _ => (Outcome::Failure, Some(step)),
    }
}

/// Who handed over the manifest URL (SPEC §11 `event`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// `consul` | `serf` | `line` | `arg` | `rollback`.
    pub origin: String,
    /// The event's name (consul, serf), when it has one.
    pub name: Option<String>,
    /// The consul event's ID, when it has one.
    pub id: Option<String>,
    /// The event's Lamport time (consul, serf), when it has one.
    pub ltime: Option<u64>,
    /// The rollout a wave's event named (`rollout=`, SPEC §19); null for a plain
    /// payload (and in records older than it).
    #[serde(default)]
    pub rollout: Option<String>,
}

impl EventInfo {
    /// The record's view of an event.
    pub fn of(event: &crate::event::Event) -> EventInfo {
        use crate::event::Origin;
        let (origin, name, id, ltime) = match &event.origin {
            Origin::Consul { name, id, ltime } => (
                "consul",
                Some(name.clone()),
                Some(id.clone()).filter(|i| !i.is_empty()),
                *ltime,
            ),
            Origin::Serf { name, ltime } => ("serf", Some(name.clone()), None, *ltime),
            Origin::Line => ("line", None, None, None),
            Origin::Arg => ("arg", None, None, None),
        };
        EventInfo {
            origin: origin.to_string(),
            name,
            id,
            ltime,
            rollout: event.wave.as_ref().map(|w| w.rollout.clone()),
        }
    }
}

/// What the sync changed in dest (SPEC §11 `changes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Entries that did not exist in dest.
    pub created: u64,
    /// Entries rewritten (content, link target, or type changed).
    pub updated: u64,
    /// Dest-only entries removed.
    pub deleted: u64,
    /// Entries whose content was already right (attributes may have been fixed).
    pub unchanged: u64,
}

impl From<&crate::sync::Stats> for Changes {
    fn from(s: &crate::sync::Stats) -> Changes {
        Changes {
            created: s.created,
            updated: s.updated,
            deleted: s.deleted,
            unchanged: s.unchanged,
        }
    }
}

/// One hook command that ran (SPEC §11 `hooks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookRecord {
    /// `pre` | `post` | `success` | `failure`.
    pub phase: String,
    /// The command line, as the manifest has it.
    pub command: String,
    /// Exit status; null when it was killed or could not start.
    pub exit: Option<i32>,
    /// The signal that ended it (`SIGTERM`), when one did.
    pub signal: Option<String>,
    /// How long it ran, in seconds (milliseconds rounded).
    pub seconds: f64,
}

/// One deploy record, exactly the fields of SPEC §11 (null where n/a).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The record format's version ([`SCHEMA`]).
    pub schema: u32,
    /// The host name, as the kernel has it; null when it cannot be read.
    pub host: Option<String>,
    /// This build's version ([`crate::VERSION`]).
    pub stretcher_version: String,
    /// The dest's absolute path; null for a commands-only manifest.
    pub dest: Option<String>,
    /// `rsync` | `mv` | `release`.
    pub strategy: Option<Strategy>,
    /// The release ID (SPEC §14).
    pub release: Option<String>,
    /// The manifest URL, secrets replaced (`urls::redact`).
    pub manifest_url: String,
    /// sha256 of the manifest's raw bytes, when it was fetched.
    pub manifest_sha256: Option<String>,
    /// The manifest's `serial` (SPEC §15).
    pub serial: Option<u64>,
    /// The resolved `src` URL.
    pub src: Option<String>,
    /// Lower-case hex.
    pub checksum: Option<String>,
    /// Who handed over the manifest URL.
    pub event: EventInfo,
    /// How the run ended.
    pub result: Outcome,
    /// The step a run that did not succeed ended at.
    pub failed_step: Option<Step>,
    /// The error's one-line message, when the run did not succeed.
    pub error: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    pub started: String,
    /// When the run ended (RFC 3339, UTC, milliseconds); null while it runs.
    pub finished: Option<String>,
    /// How long the run took, in seconds (milliseconds rounded); null while it runs.
    pub duration_s: Option<f64>,
    /// Bytes read from `src`; null when there is no `src`.
    pub downloaded_bytes: Option<u64>,
    /// Whether download and unpack were skipped (dest held the archive; a rollback).
    pub download_skipped: bool,
    /// Null when the run did not reach the sync step.
    pub changes: Option<Changes>,
    /// The hook commands that ran, in order.
    pub hooks: Vec<HookRecord>,
    /// The process of a `running` record (SPEC §13), to tell whether it still runs;
    /// absent from a finished record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<crate::process::Identity>,
}

impl Record {
    /// When the record's run ended, else (running) when it started: the time a
    /// record is ordered by.
    pub fn time(&self) -> &str {
        self.finished.as_deref().unwrap_or(&self.started)
    }
}

/// A record in the making: the deploy fills it in as it goes (`step` is where it
/// is), [`Draft::finish`] turns it into the [`Record`] and its key.
#[derive(Debug)]
pub(crate) struct Draft {
    /// The step the run is at; a failure is attributed to it (see [`classify`]).
    pub step: Step,
    started: chrono::DateTime<chrono::Utc>,
    clock: std::time::Instant,
    event: EventInfo,
    manifest_url: String,
    pub manifest_sha256: Option<String>,
    /// Set once the manifest was parsed and validated.
    pub dest: Option<PathBuf>,
    /// A valid manifest without `src` (keyed by its URL).
    pub commands_only: bool,
    pub strategy: Option<Strategy>,
    /// A success of this run sets the serial floor (SPEC §15); a rollback does not.
    sets_floor: bool,
    /// The serial floor of the manifest (its `.serial` key), once it is known.
    pub floor: Option<String>,
    pub release: Option<String>,
    pub serial: Option<u64>,
    pub src: Option<String>,
    pub checksum: Option<String>,
    pub downloaded_bytes: Option<u64>,
    pub download_skipped: bool,
    pub changes: Option<Changes>,
    pub hooks: Vec<HookRecord>,
    /// The running marker this run wrote (state directory, key), removed by `commit`.
    running: Option<(PathBuf, String)>,
}

impl Draft {
    pub fn new(event: &crate::event::Event) -> Draft {
        Draft {
            step: Step::Manifest,
            started: chrono::Utc::now(),
            clock: std::time::Instant::now(),
            event: EventInfo::of(event),
            manifest_url: event.url.clone(),
            manifest_sha256: None,
            dest: None,
            commands_only: false,
            strategy: None,
            sets_floor: true,
            floor: None,
            release: None,
            serial: None,
            src: None,
            checksum: None,
            downloaded_bytes: None,
            download_skipped: false,
            changes: None,
            hooks: Vec::new(),
            running: None,
        }
    }

    /// The manifest was read: its raw bytes (for `manifest_sha256`).
    pub(crate) fn manifest_read(&mut self, raw: &[u8]) {
        self.manifest_sha256 = Some(hex::encode(Sha256::digest(raw)));
    }

    /// The manifest is valid: what the record takes from it.
    pub(crate) fn manifest_valid(&mut self, m: &crate::manifest::Manifest) {
        self.dest = m.dest.clone();
        self.commands_only = m.src.is_none();
        self.src = m.src.as_deref().map(redact);
        self.checksum = m.checksum.as_ref().map(|c| c.hex().to_ascii_lowercase());
        if m.src.is_some() {
            self.strategy = Some(m.sync_strategy);
        }
    }

    /// The manifest did not validate, but named a usable `dest`: the failure is
    /// recorded under dest's key, where `stretcher status DEST` looks.
    pub(crate) fn dest_known(&mut self, dest: PathBuf) {
        self.dest = Some(dest);
    }

    /// The record of `stretcher rollback` (origin `rollback`, SPEC §11): dest switched
    /// to `release` (of archive `checksum`) without a download. The manifest URL, src,
    /// serial and manifest digest come from `made`, the record that deployed that
    /// release, else (URL only) from `last`, dest's last record.
    pub(crate) fn rollback(
        dest: &Path,
        release: &str,
        checksum: &str,
        started: chrono::DateTime<chrono::Utc>,
        made: Option<&Record>,
        last: Option<&Record>,
    ) -> Draft {
        let from = made.or(last);
        let ran = (chrono::Utc::now() - started).to_std().unwrap_or_default();
        let now = std::time::Instant::now();
        Draft {
            step: Step::Sync,
            started,
            clock: now.checked_sub(ran).unwrap_or(now),
            event: EventInfo {
                origin: "rollback".into(),
                ..EventInfo::default()
            },
            manifest_url: from.map(|h| h.manifest_url.clone()).unwrap_or_default(),
            manifest_sha256: made.and_then(|h| h.manifest_sha256.clone()),
            dest: Some(dest.to_path_buf()),
            commands_only: false,
            strategy: Some(Strategy::Release),
            sets_floor: false,
            floor: None,
            release: Some(release.to_string()),
            serial: made.and_then(|h| h.serial),
            src: made.and_then(|h| h.src.clone()),
            checksum: Some(checksum.to_string()),
            downloaded_bytes: None,
            download_skipped: true,
            changes: None,
            hooks: Vec::new(),
            running: None,
        }
    }

    /// Runs one phase's commands (through `hooks`, the one module that starts
    /// processes) and records them as `phase`, whatever the result.
    pub(crate) fn run_hooks(
        &mut self,
        phase: &'static str,
        commands: &[String],
        env: &crate::hooks::HookEnv,
    ) -> Result<()> {
        let ran = crate::hooks::run(commands, env);
        self.hooks_ran(phase, ran.ran);
        ran.result
    }

    /// Records the hook commands that ran, as `phase`.
    pub(crate) fn hooks_ran(&mut self, phase: &str, ran: Vec<crate::hooks::Ran>) {
        for r in ran {
            self.hooks.push(HookRecord {
                phase: phase.to_string(),
                command: r.command,
                exit: r.exit,
                signal: r.signal,
                seconds: (r.seconds * 1000.0).round() / 1000.0,
            });
        }
    }

    /// The key this run's record goes under (SPEC §11, §15).
    pub fn key(&self) -> String {
        match &self.dest {
            Some(d) => key_for_dest(d),
            None if self.commands_only => key_for_commands(&self.manifest_url),
            None => key_for_manifest(&self.manifest_url),
        }
    }

    /// The finished record and its key; `err` is how the run ended.
    pub fn finish(self, err: Option<&Error>) -> (String, Record) {
        let key = self.key();
        let (result, failed_step) = classify(self.step, err);
        let finished = chrono::Utc::now();
        let duration = self.clock.elapsed().as_secs_f64();
        let record = Record {
            schema: SCHEMA,
            host: hostname(),
            stretcher_version: crate::VERSION.to_string(),
            dest: self.dest.map(|d| d.display().to_string()),
            strategy: self.strategy,
            release: self.release,
            manifest_url: redact(&self.manifest_url),
            manifest_sha256: self.manifest_sha256,
            serial: self.serial,
            src: self.src,
            checksum: self.checksum,
            event: self.event,
            result,
            failed_step,
            error: err.map(|e| e.to_string()),
            started: timestamp(self.started),
            finished: Some(timestamp(finished)),
            duration_s: Some((duration * 1000.0).round() / 1000.0),
            downloaded_bytes: self.downloaded_bytes,
            download_skipped: self.download_skipped,
            changes: self.changes,
            hooks: self.hooks,
            process: None,
        };
        (key, record)
    }

    /// What the record of this run shows while it runs (SPEC §13): `running`, what is
    /// known so far (the checksum once the manifest is read), `started`, and this
    /// process.
    fn running_record(&self) -> Record {
        Record {
            schema: SCHEMA,
            host: hostname(),
            stretcher_version: crate::VERSION.to_string(),
            dest: self.dest.as_ref().map(|d| d.display().to_string()),
            strategy: self.strategy,
            release: None,
            manifest_url: redact(&self.manifest_url),
            manifest_sha256: self.manifest_sha256.clone(),
            serial: self.serial,
            src: self.src.clone(),
            checksum: self.checksum.clone(),
            event: self.event.clone(),
            result: Outcome::Running,
            failed_step: None,
            error: None,
            started: timestamp(self.started),
            finished: None,
            duration_s: None,
            downloaded_bytes: None,
            download_skipped: false,
            changes: None,
            hooks: self.hooks.clone(),
            process: Some(crate::process::Identity::me()),
        }
    }

    /// Marks this run as running under its key as it is now (SPEC §13): the marker
    /// `<key>.running` beside the record, replaced atomically like it; a marker this
    /// run wrote under another key before (the manifest's, until dest was known) is
    /// removed. The last *finished* record (`last`, the history, the serial floor)
    /// is untouched. A failure to write is a warning.
    pub(crate) fn mark_running(&mut self, state_dir: &Path) {
        let key = self.key();
        if let Some((dir, old)) = self.running.take() {
            if old != key {
                remove_own_marker(&dir, &old);
            }
        }
        let rec = self.running_record();
        let written = open_deploys_dir(state_dir).and_then(|dir| {
            // Serialising plain strings, numbers and options cannot fail.
            let text = serde_json::to_vec_pretty(&rec).unwrap_or_default();
            write_atomic(&dir, &running_name(&key), &text)
        });
        match written {
            Ok(()) => self.running = Some((state_dir.to_path_buf(), key)),
            Err(e) => logln!("warning: cannot mark the deploy as running: {e}"),
        }
    }
}

/// The name of the running marker of `key` in `STATE/deploys`.
fn running_name(key: &str) -> String {
    format!("{key}.running")
}

/// `STATE/deploys/<key>.running`: the marker of a run in progress (SPEC §13).
pub fn running_path(state_dir: &Path, key: &str) -> PathBuf {
    deploys_dir(state_dir).join(running_name(key))
}

/// Removes the running marker of `key` when this process wrote it (another run's
/// marker is left alone), through `deploys/`'s descriptor.
fn remove_own_marker(state_dir: &Path, key: &str) {
    let Some(marker) = read_marker(state_dir, key) else {
        return;
    };
    if marker.process.as_ref().map(|p| p.pid) != Some(std::process::id()) {
        return;
    }
    let removed = Tree::open(&deploys_dir(state_dir), false)
        .and_then(|dir| dir.unlink(Path::new(&running_name(key))));
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            logln!(
                "warning: cannot remove {}: {e}",
                running_path(state_dir, key).display()
            );
        }
    }
}

/// The running marker of `key` as written (`result: running`), if any; a corrupt
/// one is a warning and `None`.
fn read_marker(state_dir: &Path, key: &str) -> Option<Record> {
    let bytes = match read_deploys_file(state_dir, &running_name(key), RECORD_MAX) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            logln!(
                "warning: cannot read {}: {e}",
                running_path(state_dir, key).display()
            );
            return None;
        }
    };
    match serde_json::from_slice::<Record>(&bytes) {
        Ok(r) if r.result == Outcome::Running => Some(r),
        Ok(_) | Err(_) => {
            logln!(
                "warning: {} is corrupt; ignoring it",
                running_path(state_dir, key).display()
            );
            None
        }
    }
}

/// A marker as it is shown: `running` while its process runs, else `interrupted`
/// (the process is gone, a zombie, or its pid now names another process).
fn judged(mut marker: Record) -> Record {
    if marker.process.as_ref().is_some_and(|p| p.alive()) {
        return marker;
    }
    let pid = marker.process.as_ref().map_or(0, |p| p.pid);
    marker.result = Outcome::Interrupted;
    marker.error = Some(format!(
        "the deploy process (pid {pid}) ended without finishing its record"
    ));
    marker
}

/// Whether `a` is later than `b` (RFC 3339 times; by their text when one is not).
fn later(a: &str, b: &str) -> bool {
    match (
        chrono::DateTime::parse_from_rfc3339(a),
        chrono::DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => a > b,
        _ => a > b,
    }
}

/// What `status` shows for `key` (SPEC §13): its run in progress (`running`, or
/// `interrupted` when its process is gone) when a marker started after the last
/// record did, else the last record. Never what a deploy decides by: that is
/// [`last_by_key`], the last finished record.
pub fn current(state_dir: &Path, key: &str) -> Option<Record> {
    let last = last_by_key(state_dir, key);
    match read_marker(state_dir, key) {
        Some(m) if last.as_ref().is_none_or(|l| later(&m.started, &l.started)) => Some(judged(m)),
        _ => last,
    }
}

/// Step 9 of a run (SPEC §5, §11): the finished record written under its key and, for
/// a success that sets it, the serial floor of the next manifest (SPEC §15). A failure
/// to write is a warning: the run's result stands. Answers the key and the record.
pub(crate) fn commit(state_dir: &Path, mut draft: Draft, err: Option<&Error>) -> (String, Record) {
    let floor = draft.floor.take().filter(|_| draft.sets_floor);
    let running = draft.running.take();
    let (key, rec) = draft.finish(err);
    if let Err(e) = write(state_dir, &key, &rec) {
        logln!("warning: cannot write the deploy record: {e}");
    }
    // After the record: a run killed in between leaves a marker older than its
    // record, which `current` no longer shows.
    if let Some((dir, marker)) = running {
        remove_own_marker(&dir, &marker);
    }
    // A success without a serial leaves the floor as it is (SPEC §17): only a
    // manifest that had none yet can succeed without one.
    if let (Some(floor), Some(serial), Outcome::Success) = (floor, rec.serial, rec.result) {
        if let Err(e) = write_success_serial(state_dir, &floor, serial) {
            logln!("warning: cannot write the serial of this deploy: {e}");
        }
    }
    (key, rec)
}

/// An RFC 3339 UTC time with milliseconds, as records spell it.
pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The host name, as the kernel has it (null in the record when it cannot be read).
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn digest16(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// The key of a dest (SPEC §11): its file name, `-`, and the first 16 hex digits
/// of the sha256 of its absolute path. (A byte of the name that is not UTF-8
/// becomes `_`; the digest still tells such names apart.)
pub fn key_for_dest(dest: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = dest.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
    let mut name = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        name.push_str(chunk.valid());
        name.extend(chunk.invalid().iter().map(|_| '_'));
    }
    format!("{name}-{}", digest16(dest.as_os_str().as_bytes()))
}

/// The key of a commands-only manifest: `commands-` and the digest of its URL.
pub fn key_for_commands(manifest_url: &str) -> String {
    format!("commands-{}", digest16(manifest_url.as_bytes()))
}

/// The key of a manifest none of which could be used (unreadable, invalid,
/// refused, unverified): `manifest-` and the digest of its URL (SPEC §15).
pub fn key_for_manifest(manifest_url: &str) -> String {
    format!("manifest-{}", digest16(manifest_url.as_bytes()))
}

/// `STATE/deploys`.
pub(crate) fn deploys_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DEPLOYS_DIR)
}

/// `STATE/deploys` opened as a tree, made when missing (SPEC §17: `mkdirat`, then
/// 0755 through its descriptor whatever the umask; a symlink at its name refused,
/// never followed). The state directory itself is made as [`crate::state::make_dirs`]
/// makes it when missing.
pub(crate) fn open_deploys_dir(state_dir: &Path) -> Result<Tree> {
    crate::state::make_dirs(state_dir)
        .map_err(|e| Error::io("create state directory", state_dir, e))?;
    let state =
        Tree::open(state_dir, true).map_err(|e| Error::io("open state directory", state_dir, e))?;
    state
        .make_dir(Path::new(DEPLOYS_DIR), 0o755)
        .map_err(|e| Error::io("create directory", deploys_dir(state_dir), e))
}

/// The largest record or history file read (both are capped far below it).
const RECORD_MAX: u64 = 64 << 20;

/// Reads the file `name` of `STATE/deploys` (at most `max` bytes), never following
/// a symlink at `deploys` or at `name` (SPEC §17).
pub(crate) fn read_deploys_file(
    state_dir: &Path,
    name: &str,
    max: u64,
) -> std::io::Result<Vec<u8>> {
    Tree::open(&deploys_dir(state_dir), false)?.read_file(Path::new(name), max)
}

/// The file name of `path` in `STATE/deploys` (the paths of this module are all made
/// there; an empty name fails to open).
fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `STATE/deploys/<key>.json`.
pub fn record_path(state_dir: &Path, key: &str) -> PathBuf {
    deploys_dir(state_dir).join(format!("{key}.json"))
}

/// `STATE/deploys/<key>.history.jsonl`.
pub fn history_path(state_dir: &Path, key: &str) -> PathBuf {
    deploys_dir(state_dir).join(format!("{key}.history.jsonl"))
}

/// Writes `record` as the last record of `key` and appends it to the key's
/// history (the last `HISTORY_KEEP` kept). Both files are replaced atomically.
pub fn write(state_dir: &Path, key: &str, record: &Record) -> Result<()> {
    let dir = open_deploys_dir(state_dir)?;
    // Serialising plain strings, numbers and options cannot fail.
    let line = serde_json::to_string(record).unwrap_or_default();
    let mut pretty = serde_json::to_vec_pretty(record).unwrap_or_default();
    pretty.push(b'\n');

    let hist = history_path(state_dir, key);
    let old = match read_deploys_file(state_dir, &name_of(&hist), RECORD_MAX) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read", &hist, e)),
    };
    let old = String::from_utf8_lossy(&old);
    let mut lines: Vec<&str> = old.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.push(&line);
    let skip = lines.len().saturating_sub(HISTORY_KEEP);
    let mut text = String::new();
    for l in &lines[skip..] {
        text.push_str(l);
        text.push('\n');
    }
    write_atomic(&dir, &name_of(&hist), text.as_bytes())?;
    write_atomic(&dir, &format!("{key}.json"), &pretty)
}

/// Replaces the file `name` of the open directory `dir` by `data` (SPEC §17): a
/// temporary `.tmp-NAME.<random>.tmp` created `O_EXCL|O_NOFOLLOW` relative to it,
/// mode 0644 through its descriptor whatever the umask (readable by all, like the
/// rest of the state directory: `status` as any user), written, fsync'd, renamed
/// onto `name`, the directory fsync'd.
pub(crate) fn write_atomic(dir: &Tree, name: &str, data: &[u8]) -> Result<()> {
    dir.replace(Path::new(name), &format!(".tmp-{name}."), 0o644, data)
        .map_err(|e| Error::io("write", dir.shown(Path::new(name)), e))
}

/// Reads the last record of `key`: `None` when there is none; a corrupt or
/// unreadable one is a logged warning and `None`.
pub fn last_by_key(state_dir: &Path, key: &str) -> Option<Record> {
    let path = record_path(state_dir, key);
    let bytes = match read_deploys_file(state_dir, &name_of(&path), RECORD_MAX) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            logln!("warning: cannot read deploy record {}: {e}", path.display());
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            logln!(
                "warning: deploy record {} is corrupt ({e}); ignoring it",
                path.display()
            );
            None
        }
    }
}

/// The last record of `dest` (absolute, as the manifest has it).
pub fn last(state_dir: &Path, dest: &Path) -> Option<Record> {
    last_by_key(state_dir, &key_for_dest(dest))
}

/// The records of `key`'s history, oldest first; unreadable lines are skipped
/// (with a warning).
pub(crate) fn history(state_dir: &Path, key: &str) -> Vec<Record> {
    let path = history_path(state_dir, key);
    let Ok(bytes) = read_deploys_file(state_dir, &name_of(&path), RECORD_MAX) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(e) => logln!(
                "warning: {} line {}: corrupt record ({e}); skipped",
                path.display(),
                i + 1
            ),
        }
    }
    out
}

/// What `status` shows of every key in the state directory ([`current`]: the last
/// record, or the run in progress), sorted by key. Corrupt records are warnings and
/// left out.
pub(crate) fn all(state_dir: &Path) -> Vec<(String, Record)> {
    let Ok(entries) = std::fs::read_dir(deploys_dir(state_dir)) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let key = name
                .strip_suffix(".json")
                .or_else(|| name.strip_suffix(".running"))?;
            // not a temp file of `write_atomic`
            (!key.starts_with(".tmp-")).then(|| key.to_string())
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| current(state_dir, &k).map(|r| (k, r)))
        .collect()
}

/// The last record of a dest (or commands-only key) that is a success of the rollout
/// `rollout` (SPEC §19: its event's `rollout`) of the manifest `manifest_url`: a
/// host already done in that rollout does nothing for its later waves. Only each
/// key's last record counts: a later deploy of another manifest, or a failure, means
/// not done.
pub(crate) fn done_in_rollout(
    state_dir: &Path,
    manifest_url: &str,
    rollout: &str,
) -> Option<(String, Record)> {
    let shown = redact(manifest_url);
    all(state_dir).into_iter().find(|(_, r)| {
        r.result == Outcome::Success
            && r.manifest_url == shown
            && r.event.rollout.as_deref() == Some(rollout)
    })
}

/// `STATE/deploys/<key>.serial`: the `serial` of the key's last successful deploy
/// (SPEC §15), beside its records. The history keeps only the last
/// [`HISTORY_KEEP`] records, so a run of refused replays would otherwise push the
/// last success out of it, and with it the serial an old manifest must not undercut.
pub(crate) fn serial_path(state_dir: &Path, key: &str) -> PathBuf {
    deploys_dir(state_dir).join(format!("{key}.serial"))
}

/// Raises the serial floor `key` to the `serial` of a successful deploy (never
/// lowers it: two runs that share a floor may end in any order). Replaced atomically.
pub(crate) fn write_success_serial(state_dir: &Path, key: &str, serial: u64) -> Result<()> {
    let dir = open_deploys_dir(state_dir)?;
    let serial = last_success_serial(state_dir, key).map_or(serial, |last| last.max(serial));
    write_atomic(
        &dir,
        &format!("{key}.serial"),
        format!("{serial}\n").as_bytes(),
    )
}

/// The serial floor a manifest is compared with (SPEC §15, §17), and whose it is: a
/// manifest with `src`, its dest's; one without, its signing key id's (so that no
/// other URL for the same signed bytes escapes it), or, unsigned, its URL's without
/// the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Floor {
    /// The name of its `.serial` file in `STATE/deploys` (a dest's is its record key).
    pub key: String,
    /// Whose floor it is, for the refusal: `to /srv/app`, `signed by key 61F2...`.
    pub whose: String,
}

impl Floor {
    /// The floor of a manifest with `dest` (when it has `src`), signed by the key
    /// `signer` (when `--trusted-key` is given), fetched from `manifest_url`.
    pub(crate) fn of(dest: Option<&Path>, signer: Option<&str>, manifest_url: &str) -> Floor {
        match (dest, signer) {
            (Some(d), _) => Floor {
                key: key_for_dest(d),
                whose: format!("to {}", d.display()),
            },
            (None, Some(id)) => Floor {
                key: format!("signed-by-{id}"),
                whose: format!("signed by key {id}"),
            },
            (None, None) => {
                let bare = manifest_url
                    .split_once('?')
                    .map_or(manifest_url, |(u, _)| u);
                Floor {
                    key: key_for_commands(bare),
                    whose: "of this manifest URL".into(),
                }
            }
        }
    }
}

/// The `serial` of the last successful deploy of `key`: from `<key>.serial`, or,
/// when that file is missing or corrupt (a warning), from the newest success in
/// the history. `None`: no success, or it had no serial (or an older version wrote
/// `none` there).
pub(crate) fn last_success_serial(state_dir: &Path, key: &str) -> Option<u64> {
    let path = serial_path(state_dir, key);
    let read = read_deploys_file(state_dir, &name_of(&path), 4096)
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    match read {
        Ok(text) => match text.trim() {
            "none" => return None,
            t => match t.parse::<u64>() {
                Ok(n) => return Some(n),
                Err(_) => logln!(
                    "warning: {} is corrupt; using the deploy history",
                    path.display()
                ),
            },
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => logln!("warning: cannot read {}: {e}", path.display()),
    }
    history(state_dir, key)
        .into_iter()
        .rev()
        .find(|r| r.result == Outcome::Success)
        .and_then(|r| r.serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(result: Outcome) -> Record {
        Record {
            schema: SCHEMA,
            host: Some("h".into()),
            stretcher_version: crate::VERSION.into(),
            dest: Some("/srv/app".into()),
            strategy: Some(Strategy::Rsync),
            release: None,
            manifest_url: "file:///m.yml".into(),
            manifest_sha256: Some("00".into()),
            serial: None,
            src: Some("file:///a.tgz".into()),
            checksum: Some("ab".into()),
            event: EventInfo {
                origin: "arg".into(),
                ..Default::default()
            },
            result,
            failed_step: None,
            error: None,
            started: "2026-01-01T00:00:00.000Z".into(),
            finished: Some("2026-01-01T00:00:01.000Z".into()),
            duration_s: Some(1.0),
            downloaded_bytes: Some(10),
            download_skipped: false,
            changes: Some(Changes::default()),
            hooks: vec![],
            process: None,
        }
    }

    #[test]
    fn a_running_marker_shows_in_current_never_in_last() {
        let dir = tempfile::tempdir().unwrap();
        let dest = Path::new("/srv/app");
        let key = key_for_dest(dest);
        let mut done = sample(Outcome::Success);
        done.started = "2000-01-01T00:00:00.000Z".into();
        write(dir.path(), &key, &done).unwrap();
        let event = crate::event::Event {
            url: "file:///m.yml".into(),
            origin: crate::event::Origin::Arg,
            payload: None,
            wave: None,
        };
        let mut draft = Draft::new(&event);
        // before the manifest: under the manifest's key
        draft.mark_running(dir.path());
        let mkey = key_for_manifest("file:///m.yml");
        assert_eq!(current(dir.path(), &mkey).unwrap().result, Outcome::Running);
        // dest known: moved to dest's key
        draft.dest = Some(dest.to_path_buf());
        draft.checksum = Some("cd".into());
        draft.mark_running(dir.path());
        assert!(!running_path(dir.path(), &mkey).exists());
        let now = current(dir.path(), &key).unwrap();
        assert_eq!(
            (now.result, now.checksum.as_deref()),
            (Outcome::Running, Some("cd"))
        );
        assert_eq!(now.process.as_ref().unwrap().pid, std::process::id());
        assert!(now.finished.is_none());
        // what deploys decide by is untouched
        assert_eq!(last(dir.path(), dest).unwrap(), done);
        assert_eq!(history(dir.path(), &key).len(), 1);
        assert_eq!(all(dir.path()).len(), 1);
        // a marker whose process is gone: interrupted
        let mut dead: Record =
            serde_json::from_slice(&std::fs::read(running_path(dir.path(), &key)).unwrap())
                .unwrap();
        // (no such pid: above any pid_max)
        dead.process.as_mut().unwrap().pid = 0x3fff_ffff;
        std::fs::write(
            running_path(dir.path(), &key),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        let shown = current(dir.path(), &key).unwrap();
        assert_eq!(shown.result, Outcome::Interrupted);
        assert!(shown.error.unwrap().contains("ended without finishing"));
        // the run's own record: the marker is removed only when it is this process's
        let (_, rec) = commit(dir.path(), draft, None);
        assert!(running_path(dir.path(), &key).exists(), "another's marker");
        // and one older than the last record is not shown
        assert_eq!(current(dir.path(), &key).unwrap(), rec);
        assert_eq!(rec.result, Outcome::Success);
    }

    #[test]
    fn keys_follow_the_spec() {
        let k = key_for_dest(Path::new("/srv/app"));
        let d = hex::encode(Sha256::digest(b"/srv/app"));
        assert_eq!(k, format!("app-{}", &d[..16]));
        assert_ne!(k, key_for_dest(Path::new("/srv2/app")));
        assert!(key_for_dest(Path::new("/srv/a b\u{e9}")).starts_with("a b\u{e9}-"));
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/srv/x\xff"));
        assert!(key_for_dest(odd).starts_with("x_-"));
        let u = hex::encode(Sha256::digest(b"file:///m.yml"));
        assert_eq!(
            key_for_commands("file:///m.yml"),
            format!("commands-{}", &u[..16])
        );
        assert_eq!(
            key_for_manifest("file:///m.yml"),
            format!("manifest-{}", &u[..16])
        );
    }

    #[test]
    fn classify_maps_steps_and_errors() {
        assert_eq!(classify(Step::Post, None), (Outcome::Success, None));
        let hook = Error::Hook {
            command: "false".into(),
            status: "exit status 1".into(),
        };
        assert_eq!(
            classify(Step::Pre, Some(&hook)),
            (Outcome::Failure, Some(Step::Pre))
        );
        assert_eq!(
            classify(Step::Download, Some(&Error::Interrupted("SIGTERM"))),
            (Outcome::Interrupted, Some(Step::Download))
        );
        let refused = Error::Refused {
            url: "x".into(),
            msg: "no".into(),
        };
        assert_eq!(
            classify(Step::Manifest, Some(&refused)),
            (Outcome::Refused, Some(Step::Manifest))
        );
        let limit = Error::Limit {
            url: "x".into(),
            msg: "longer than its size".into(),
        };
        assert_eq!(
            classify(Step::Download, Some(&limit)),
            (Outcome::Refused, Some(Step::Download))
        );
        let bad = Error::Archive {
            url: "x".into(),
            msg: "truncated".into(),
            source: None,
        };
        assert_eq!(
            classify(Step::Download, Some(&bad)),
            (Outcome::Failure, Some(Step::Unpack))
        );
    }

    #[test]
    fn urls_lose_secrets() {
        let event = crate::event::Event {
            url: "https://u:p@h/m.yml?X-Amz-Signature=s3cr3t".into(),
            origin: crate::event::Origin::Arg,
            payload: None,
            wave: None,
        };
        let draft = Draft::new(&event);
        let err = Error::fetch(&event.url, "HTTP 500");
        let (_, rec) = draft.finish(Some(&err));
        assert_eq!(rec.manifest_url, "https://u:REDACTED@h/m.yml?REDACTED");
        let text = serde_json::to_string(&rec).unwrap();
        assert!(!text.contains("s3cr3t") && !text.contains(":p@"), "{text}");
    }

    #[test]
    fn write_read_and_history_cap() {
        let t = tempfile::tempdir().unwrap();
        let dest = Path::new("/srv/app");
        let key = key_for_dest(dest);
        assert!(last(t.path(), dest).is_none());
        for i in 0..(HISTORY_KEEP + 7) {
            let mut r = sample(if i % 2 == 0 {
                Outcome::Success
            } else {
                Outcome::Failure
            });
            r.serial = Some(i as u64);
            write(t.path(), &key, &r).unwrap();
        }
        let h = history(t.path(), &key);
        assert_eq!(h.len(), HISTORY_KEEP);
        assert_eq!(h[0].serial, Some(7));
        assert_eq!(h.last().unwrap().serial, Some((HISTORY_KEEP + 6) as u64));
        let l = last(t.path(), dest).unwrap();
        assert_eq!(l.serial, Some((HISTORY_KEEP + 6) as u64));
        assert_eq!(
            h.iter()
                .rev()
                .find(|r| r.result == Outcome::Success)
                .unwrap()
                .serial,
            Some((HISTORY_KEEP + 6) as u64)
        );
        assert_eq!(all(t.path()).len(), 1);
        std::fs::write(record_path(t.path(), &key), b"{not json").unwrap();
        assert!(last(t.path(), dest).is_none());
        // no temp files left behind
        let names: Vec<_> = std::fs::read_dir(deploys_dir(t.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn signature_and_freshness_refusals_are_classified() {
        let sig = Error::Signature {
            url: "u".into(),
            reason: "no signature".into(),
        };
        assert_eq!(
            classify(Step::Signature, Some(&sig)),
            (Outcome::Refused, Some(Step::Signature))
        );
        let stale = Error::Freshness {
            url: "u".into(),
            msg: "expired".into(),
        };
        assert_eq!(
            classify(Step::Manifest, Some(&stale)),
            (Outcome::Refused, Some(Step::Manifest))
        );
    }

    #[test]
    fn floors_are_a_dests_a_signing_keys_or_a_urls_without_its_query() {
        let dest = Path::new("/srv/app");
        let url = "https://h/m.yml";
        let f = Floor::of(Some(dest), Some("ABC"), url);
        assert_eq!(f.key, key_for_dest(dest));
        assert_eq!(f.whose, "to /srv/app");
        let f = Floor::of(None, Some("ABC"), url);
        assert_eq!(
            (f.key.as_str(), f.whose.as_str()),
            ("signed-by-ABC", "signed by key ABC")
        );
        assert_eq!(Floor::of(None, Some("ABC"), "https://other/x.yml?y"), f);
        let f = Floor::of(None, None, "https://h/m.yml?x=1");
        assert_eq!(f.key, key_for_commands(url));
        assert_eq!(f, Floor::of(None, None, url));
        assert_ne!(f, Floor::of(None, None, "https://h//m.yml"));
    }

    #[test]
    fn success_serial_survives_the_history_and_falls_back_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = "app-0123456789abcdef";
        assert_eq!(last_success_serial(dir.path(), key), None);
        // from the history when there is no .serial file
        let mut ok = sample(Outcome::Success);
        ok.serial = Some(7);
        write(dir.path(), key, &ok).unwrap();
        write(dir.path(), key, &sample(Outcome::Refused)).unwrap();
        assert_eq!(last_success_serial(dir.path(), key), Some(7));
        // the .serial file wins, also over a history that lost the success
        for _ in 0..HISTORY_KEEP {
            write(dir.path(), key, &sample(Outcome::Refused)).unwrap();
        }
        assert_eq!(last_success_serial(dir.path(), key), None);
        write_success_serial(dir.path(), key, 7).unwrap();
        assert_eq!(last_success_serial(dir.path(), key), Some(7));
        // never lowered
        write_success_serial(dir.path(), key, 3).unwrap();
        assert_eq!(last_success_serial(dir.path(), key), Some(7));
        // what an older version wrote after a success without serial
        std::fs::write(serial_path(dir.path(), key), "none\n").unwrap();
        assert_eq!(last_success_serial(dir.path(), key), None);
        // corrupt: the history decides
        std::fs::write(serial_path(dir.path(), key), "x\n").unwrap();
        write(dir.path(), key, &ok).unwrap();
        assert_eq!(last_success_serial(dir.path(), key), Some(7));
    }
}
