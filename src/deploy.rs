//! One run, in the order of SPEC §5: delay → event → manifest → download and
//! verify → `pre` → unpack into staging → sync into `dest` → `post` →
//! `success` / `failure` with the log on stdin.
//!
//! The only module that knows that order. It owns the staging directory and the
//! temp download file beside `dest` (and removes them, or a killed run's leftovers),
//! and it guarantees that nothing touches `dest` before the sync step.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cli::Options;
use crate::error::{Error, Result};
use crate::event;
use crate::fetch::{self, FetchOptions};
use crate::filter::Filter;
use crate::hooks::{self, HookEnv};
use crate::interrupt;
use crate::log;
use crate::logln;
use crate::manifest::{self, Manifest, Strategy};
use crate::record;
use crate::redeploy;
use crate::release;
use crate::signature;
use crate::state;
use crate::sync::{self, SyncOptions};
use crate::unpack::{self, UnpackOptions};

/// The default mode of `dest` when neither the manifest nor the archive says.
const DEFAULT_DEST_MODE: u32 = 0o755;

/// Runs one deploy with the process's environment and stdin; returns the exit
/// status (SPEC §3: under `consul watch` a failed deploy still exits 0).
pub fn main(opts: &Options) -> i32 {
    let env = |k: &str| std::env::var(k).ok();
    let consul = env("CONSUL_INDEX").is_some();
    match run(opts, &env, &mut std::io::stdin().lock()) {
        Ok(()) => 0,
        Err(e) => {
            if consul {
                logln!("exiting 0 so that consul watch keeps running");
                0
            } else {
                e.exit_code()
            }
        }
    }
}

/// Runs one deploy. Every error is logged here, once, before it is returned.
pub fn run(
    opts: &Options,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Result<()> {
    // Set once the error is in the log (before the `failure` hooks read it), so that
    // it is not logged a second time here (SPEC §9: an error is logged once).
    let mut logged = false;
    let result = run_inner(opts, env, stdin, &mut logged);
    if let Err(e) = &result {
        if !logged {
            logln!("{e}");
        }
    }
    result
}

fn run_inner(
    opts: &Options,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    logged: &mut bool,
) -> Result<()> {
    interrupt::install()?;
    logln!("Starting up stretcher agent {}", crate::cli::VERSION);
    if let Some(d) = opts.random_delay.filter(|d| !d.is_zero()) {
        let sleep = random_delay(d);
        logln!(
            "Sleeping {:.3}s (random delay up to {:.3}s)",
            sleep.as_secs_f64(),
            d.as_secs_f64()
        );
        interrupt::sleep(sleep)?;
    }

    let event = event::read(opts.target.as_deref(), env, stdin)?;
    for warning in opts.allow_url.warnings() {
        logln!("{warning}");
    }
    // Replays (SPEC §2, §10): a consul/serf event already handled is skipped. The
    // claim holds the event name's lock until the event is recorded, so a second
    // handler of the same event waits and then skips it.
    let claim = match event.replay_key() {
        None => None,
        Some((name, seen)) => {
            let dir = state::state_dir(opts.state_dir.as_deref(), env)?;
            match state::claim(&dir, name, &seen)? {
                state::Claim::Replay(why) => {
                    logln!("Skipping {}: already handled: {why}", event.describe());
                    return Ok(());
                }
                state::Claim::Fresh(claim) => Some(claim),
            }
        }
    };
    let result = run_event(&event, opts, env, logged);
    // Handled once its deploy ran to an end, success or failure (a refused or
    // unreadable manifest included); not when a signal cut it short, so that a
    // redelivery finishes the job.
    if let Some(claim) = claim {
        // A dry run does not handle the event: the real run must still happen.
        if !opts.dry_run && !matches!(result, Err(Error::Interrupted(_))) {
            if let Err(e) = claim.record() {
                logln!(
                    "warning: cannot record {} as handled: {e}",
                    event.describe()
                );
            }
        }
    }
    result
}

/// One event that is not a replay: the run, then its deploy record (SPEC §5 step
/// 9, §11). A dry run changes nothing, so it writes no record either.
fn run_event(
    event: &event::Event,
    opts: &Options,
    env: &dyn Fn(&str) -> Option<String>,
    logged: &mut bool,
) -> Result<()> {
    let mut draft = record::Draft::new(event);
    let state = match state::state_dir(opts.state_dir.as_deref(), env) {
        Ok(dir) => Some(dir),
        Err(e) => {
            logln!("warning: no state directory ({e}): no deploy record is kept");
            None
        }
    };
    let result = run_manifest(event, opts, env, &mut draft, state.as_deref(), logged);
    if let (Some(dir), false) = (&state, opts.dry_run) {
        let (key, rec) = draft.finish(result.as_ref().err());
        if let Err(e) = record::write(dir, &key, &rec) {
            logln!("warning: cannot write the deploy record: {e}");
        }
        if rec.result == record::Outcome::Success {
            // The floor of the next manifest's serial (SPEC §15).
            if let Err(e) = record::write_success_serial(dir, &key, rec.serial) {
                logln!("warning: cannot write the serial of this deploy: {e}");
            }
        }
        if let Some(textfile_dir) = &opts.textfile_dir {
            if let Err(e) = crate::metrics::write_record(textfile_dir, &key, &rec, &event.url) {
                logln!("warning: cannot write the textfile metrics: {e}");
            }
        }
    }
    result
}

/// Allow-url check, manifest, deploy, final hooks; `draft` follows along.
fn run_manifest(
    event: &event::Event,
    opts: &Options,
    env: &dyn Fn(&str) -> Option<String>,
    draft: &mut record::Draft,
    state: Option<&Path>,
    logged: &mut bool,
) -> Result<()> {
    opts.allow_url.check("manifest", &event.url)?;
    logln!("Loading manifest: {}", event.url);
    let fetch_opts = FetchOptions {
        retry: opts.retry,
        retry_wait: opts.retry_wait,
        timeout: opts.timeout,
        max_bandwidth: opts.max_bandwidth,
    };
    let bytes = fetch::fetch_bytes(&event.url, &fetch_opts, u64::MAX)?;
    draft.manifest_read(&bytes);
    if !opts.trusted_keys.is_empty() {
        // Before templates and before anything of the manifest is used (SPEC §15).
        draft.step = record::Step::Signature;
        check_signature(&event.url, &bytes, &opts.trusted_keys, &fetch_opts)?;
        draft.step = record::Step::Manifest;
    }
    let text = fetch::into_text(&event.url, bytes)?;
    let manifest = manifest::parse(&text, &event.url, env)?;
    draft.manifest_valid(&manifest);
    draft.serial = manifest.serial;
    check_fresh(&manifest, &event.url, &draft.key(), state)?;
    for key in &manifest.unknown_keys {
        logln!(
            "warning: manifest {}: unknown key {key:?} is ignored",
            event.url
        );
    }
    if let Some(src) = &manifest.src {
        // Before anything is fetched or run: a refused src runs no hook at all.
        opts.allow_url.check("src", src)?;
    }

    let hook_env = HookEnv {
        dest: manifest
            .dest
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        src: manifest.src.clone().unwrap_or_default(),
        manifest_url: event.url.clone(),
        timeout: opts.command_timeout,
        vars: manifest.commands.env.clone(),
    };
    match deploy(&manifest, opts, &fetch_opts, &hook_env, draft, state) {
        // A dry run runs no command, `success` and `failure` included.
        Ok(()) if opts.dry_run => {
            logln!("Dry run done: nothing was changed and no command was run.");
            Ok(())
        }
        Err(e) if opts.dry_run => {
            logln!("Dry run failed: {e}");
            *logged = true;
            Err(e)
        }
        Ok(()) => {
            logln!("Deploy manifest succeeded.");
            finish(&manifest.commands.success, &hook_env, "success");
            draft.hooks_ran("success");
            Ok(())
        }
        Err(e) => {
            logln!("Deploy manifest failed: {e}");
            *logged = true;
            finish(&manifest.commands.failure, &hook_env, "failure");
            draft.hooks_ran("failure");
            Err(e)
        }
    }
}

/// Runs the hooks of `phase` and records them in `draft`.
pub(crate) fn run_hooks(
    draft: &mut record::Draft,
    phase: &'static str,
    commands: &[String],
    env: &HookEnv,
) -> Result<()> {
    let result = hooks::run(commands, env);
    draft.hooks_ran(phase);
    result
}

/// Counts the bytes read through it (the record's `downloaded_bytes`).
pub(crate) struct Counting<'a> {
    pub(crate) inner: &'a mut (dyn Read + Send),
    pub(crate) count: &'a AtomicU64,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Fetches `MANIFEST_URL.minisig` the way the manifest was fetched and checks it
/// against the raw manifest bytes; logs the trusted comment of a good signature.
fn check_signature(
    url: &str,
    bytes: &[u8],
    keys: &[signature::TrustedKey],
    fetch_opts: &FetchOptions,
) -> Result<()> {
    let sig_url = signature::signature_url(url);
    let refused = |reason: signature::Refusal| Error::Signature {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let max = signature::MAX_SIGNATURE_BYTES as u64;
    let sig = match fetch::fetch_bytes(&sig_url, fetch_opts, max) {
        Ok(sig) => sig,
        // A signal is not a verdict on the manifest.
        Err(e @ Error::Interrupted(_)) => return Err(e),
        Err(e) => return Err(refused(signature::Refusal::NoSignature(e.to_string()))),
    };
    let good = signature::verify(bytes, &sig, keys).map_err(refused)?;
    logln!(
        "Signature ok: {sig_url} by key {}, trusted comment: {}",
        good.key_id,
        good.trusted_comment
    );
    Ok(())
}

/// `expires` and `serial` (SPEC §15): a manifest past its `expires`, or whose
/// `serial` is lower than that of the last successful deploy of the same record
/// `key` (its dest), is refused.
fn check_fresh(manifest: &Manifest, url: &str, key: &str, state: Option<&Path>) -> Result<()> {
    if let Some(serial) = manifest.serial {
        match state {
            Some(dir) => {
                if let Some(last) = record::last_success_serial(dir, key) {
                    if serial < last {
                        return Err(Error::Freshness {
                            url: url.to_string(),
                            msg: format!(
                                "serial {serial} is lower than {last}, the serial of the last successful deploy"
                            ),
                        });
                    }
                }
            }
            None => {
                logln!("warning: no state directory: serial {serial} of {url} cannot be compared")
            }
        }
    }
    if let Some(expires) = manifest.expires {
        let now = chrono::Utc::now();
        if now >= expires {
            return Err(Error::Freshness {
                url: url.to_string(),
                msg: format!(
                    "expired at {} (now {})",
                    expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            });
        }
    }
    Ok(())
}

/// A uniformly random time in [0, max): spreads a fleet's downloads.
fn random_delay(max: Duration) -> Duration {
    max.mul_f64(fastrand::f64())
}

/// Runs the `success` or `failure` commands with the whole log on stdin. Their
/// failure is logged but does not change the outcome of the deploy.
fn finish(commands: &[String], env: &HookEnv, which: &str) {
    if commands.is_empty() {
        return;
    }
    // A signal that stopped the deploy must not also stop the failure hooks.
    interrupt::clear();
    if let Err(e) = hooks::run_with_input(commands, env, &log::snapshot()) {
        logln!("{which} command failed: {e}");
    }
}

/// The deploy proper: everything between a valid manifest and the final hooks.
fn deploy(
    manifest: &Manifest,
    opts: &Options,
    fetch_opts: &FetchOptions,
    hook_env: &HookEnv,
    draft: &mut record::Draft,
    state: Option<&Path>,
) -> Result<()> {
    let (Some(src), Some(checksum), Some(dest)) = (
        manifest.src.as_deref(),
        manifest.checksum.as_ref(),
        manifest.dest.as_deref(),
    ) else {
        // Commands-only manifest (validation guarantees src ⇒ checksum and dest).
        if opts.dry_run {
            return sync::dry_run::print(manifest, None);
        }
        draft.step = record::Step::Pre;
        run_hooks(draft, "pre", &manifest.commands.pre, hook_env)?;
        draft.step = record::Step::Post;
        return run_hooks(draft, "post", &manifest.commands.post, hook_env);
    };

    let _lock = state::lock_dest(dest)?;
    let work = Workspace::new(dest)?;
    work.remove_leftovers();

    // The redeploy that downloads nothing (SPEC §11).
    let euid = nix::unistd::geteuid().as_raw();
    let strategy_name = match manifest.sync_strategy {
        Strategy::Rsync => "rsync",
        Strategy::Mv => "mv",
        Strategy::Release => "release",
    };
    let checksum_hex = checksum.hex().to_ascii_lowercase();
    let wanted = redeploy::Wanted {
        checksum: &checksum_hex,
        strategy: strategy_name,
        dest_mode: manifest.dest_mode,
        excludes: &manifest.excludes,
        exclude_from: manifest.exclude_from.as_deref(),
        euid,
    };
    let mut pre_done = false;
    if let (Some(dir), false) = (state, opts.force) {
        match redeploy::check(dir, dest, &wanted) {
            redeploy::Decision::Skip { deployed, entries } => {
                logln!(
                    "dest {} already holds {checksum_hex} (deployed {deployed}): nothing to download",
                    dest.display()
                );
                if opts.dry_run {
                    return sync::dry_run::print(manifest, None);
                }
                draft.step = record::Step::Pre;
                run_hooks(draft, "pre", &manifest.commands.pre, hook_env)?;
                pre_done = true;
                // A `pre` command may change dest: then the sync would not be a no-op.
                let still = manifest.commands.pre.is_empty()
                    || matches!(
                        redeploy::check(dir, dest, &wanted),
                        redeploy::Decision::Skip { .. }
                    );
                if still {
                    draft.download_skipped = true;
                    draft.downloaded_bytes = Some(0);
                    draft.changes = Some(record::Changes {
                        unchanged: entries,
                        ..Default::default()
                    });
                    draft.step = record::Step::Post;
                    return run_hooks(draft, "post", &manifest.commands.post, hook_env);
                }
                logln!(
                    "a pre command changed {}: deploying in full",
                    dest.display()
                );
            }
            redeploy::Decision::Deploy { reason, warn } => {
                let w = if warn { "warning: " } else { "" };
                logln!("{w}{} is deployed in full: {reason}", dest.display());
            }
        }
    }

    if manifest.sync_strategy == Strategy::Release && !opts.dry_run {
        let ctx = release::Context {
            draft,
            state,
            wanted: &wanted,
            pre_done,
        };
        let deployed = release::deploy(manifest, fetch_opts, hook_env, (src, checksum, dest), ctx)?;
        logln!("Release {} is live in {}", deployed.id, dest.display());
        return Ok(());
    }

    // Download, hash and unpack in one pass into a private staging directory beside
    // dest. dest is only read: files it already has as the archive does (size, mtime,
    // mode, owner) are not written at all (rsync strategy; not in a dry run).
    logln!("Loading URL {src}");
    let same_owner = nix::unistd::geteuid().is_root();
    let reuse = manifest.sync_strategy == Strategy::Rsync && !opts.dry_run;
    draft.step = record::Step::Download;
    let downloaded = AtomicU64::new(0);
    let fetch_and_unpack = |reuse: bool| {
        fetch::stream(src, checksum, fetch_opts, |reader| {
            downloaded.store(0, Ordering::Relaxed);
            let reader = &mut Counting {
                inner: reader,
                count: &downloaded,
            };
            let staging = work.staging_dir()?;
            let unpack_opts = UnpackOptions {
                same_owner,
                label: src.to_string(),
                link_unchanged: false,
            };
            let mut probe = sync::DestProbe::new(dest);
            let probe = reuse.then_some(&mut probe as &mut dyn unpack::Unchanged);
            logln!("Extract archive: {src} to {}", staging.path().display());
            let staged = unpack::unpack(reader, staging.path(), &unpack_opts, probe)?;
            Ok((staging, staged))
        })
    };
    let staged = fetch_and_unpack(reuse);
    draft.downloaded_bytes = Some(downloaded.load(Ordering::Relaxed));
    let staged = staged?;
    // Verified: from here on the staged tree is the archive's.
    let (staging, staged) = staged.split();
    logln!(
        "Unpacked {} entries ({} unchanged files left in place in {})",
        staged.get().entries,
        staged.get().reused.len(),
        dest.display()
    );

    // Read before `pre`, which cannot have touched the staged tree yet.
    draft.step = record::Step::Unpack;
    let (filter, exclude_text) = load_filter(manifest, staging.path(), &staged.get().reused, dest)?;
    if opts.dry_run {
        let release = match manifest.sync_strategy {
            Strategy::Release => Some(release::dry_run_target(manifest, dest)?),
            _ => None,
        };
        let tree = sync::dry_run::Tree {
            staged: &staged,
            dest,
            filter: &filter,
            release,
        };
        return sync::dry_run::print(manifest, Some(tree));
    }

    if !pre_done {
        draft.step = record::Step::Pre;
        run_hooks(draft, "pre", &manifest.commands.pre, hook_env)?;
    }

    draft.step = record::Step::Sync;
    let mode = manifest
        .dest_mode
        .or(staged.get().root_mode)
        .unwrap_or(DEFAULT_DEST_MODE);
    logln!("Set dest mode {mode:04o}");

    match manifest.sync_strategy {
        Strategy::Rsync => {
            let sync_opts = SyncOptions {
                verbosity: opts.rsync_verbose,
                preserve_owner: same_owner,
                // staging is private and discarded: rename from it instead of copying
                move_source: true,
                dest_mode: Some(mode),
            };
            let plan = sync::plan_staged(&staged, dest, &filter, &sync_opts);
            let (plan, _staging) = match plan {
                Err(Error::Stale { path }) => {
                    // `pre` changed a file that was left in dest as unchanged: its
                    // content is now in neither tree. Fetch and unpack it all again.
                    logln!(
                        "{} changed after the archive was unpacked (by a pre command?): unpacking the archive again in full",
                        path.display()
                    );
                    drop(staging);
                    let (staging, staged) = fetch_and_unpack(false)?.split();
                    (
                        sync::plan_staged(&staged, dest, &filter, &sync_opts)?,
                        staging,
                    )
                }
                plan => (plan?, staging),
            };
            let stats = sync::apply(&plan, &sync_opts)?;
            draft.changes = Some(record::Changes::from(&stats));
            if let Some(dir) = state {
                let entries = crate::index::from_plan(&plan, same_owner);
                write_index(dir, dest, &wanted, exclude_text, &entries);
            }
        }
        // Handled above (a dry run never gets here either).
        Strategy::Release => {}
        Strategy::Mv => {
            logln!("Moving {} to {}", staging.path().display(), dest.display());
            let path = staging.keep();
            if let Err(e) = sync::move_into_place(&path, dest, Some(mode)) {
                let _ = make_writable_and_remove(&path);
                return Err(e);
            }
            draft.changes = Some(record::Changes {
                created: staged.get().entries,
                ..Default::default()
            });
            // Nothing was walked: the tree was renamed whole. One walk of the result.
            if let Some(dir) = state {
                match crate::index::scan(dest, &filter) {
                    Ok(entries) => write_index(dir, dest, &wanted, exclude_text, &entries),
                    Err(e) => logln!("warning: no deploy index for {}: {e}", dest.display()),
                }
            }
        }
    }

    draft.step = record::Step::Post;
    run_hooks(draft, "post", &manifest.commands.post, hook_env)
}

/// Writes the index of what dest holds after a successful sync; a failure is a
/// warning (the deploy's result stands; the next redeploy downloads in full).
fn write_index(
    state: &Path,
    dest: &Path,
    wanted: &redeploy::Wanted,
    exclude_from_text: Option<String>,
    entries: &[crate::index::Entry],
) {
    let header = crate::index::Header {
        checksum: wanted.checksum.to_string(),
        strategy: wanted.strategy.to_string(),
        dest_mode: wanted.dest_mode,
        excludes: wanted.excludes.to_vec(),
        exclude_from: wanted.exclude_from.map(str::to_string),
        exclude_from_text,
        euid: wanted.euid,
        written: record::timestamp(chrono::Utc::now()),
        entries: entries.len() as u64,
    };
    let key = record::key_for_dest(dest);
    if let Err(e) = crate::index::write(state, &key, &header, entries) {
        logln!("warning: cannot write the deploy index: {e}");
    }
}

/// The manifest's `excludes` after the rules of its `exclude_from` file, and that
/// file's text (for the index). The file is part of the archive: it is read from
/// staging, or from `dest` when the unpack left dest's identical copy in place
/// (`reused`) instead of writing it to staging.
pub(crate) fn load_filter(
    manifest: &Manifest,
    staging: &Path,
    reused: &sync::KeptFiles,
    dest: &Path,
) -> Result<(Filter, Option<String>)> {
    match &manifest.exclude_from {
        Some(name) => {
            // manifest validation keeps the name relative and free of `..`; the
            // unpack names its entries without `.` components.
            let rel: PathBuf = Path::new(name)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
            let path = if reused.contains_key(&rel) {
                dest.join(&rel)
            } else {
                staging.join(&rel)
            };
            let rules = std::fs::read(&path).map_err(|e| Error::Sync {
                path: PathBuf::from(name),
                msg: format!("exclude_from file is not in the archive: {e}"),
            })?;
            let filter = Filter::from_bytes(Some(&rules), &manifest.excludes)?;
            Ok((filter, Some(String::from_utf8_lossy(&rules).into_owned())))
        }
        None => Ok((Filter::new(None, &manifest.excludes)?, None)),
    }
}

/// Where a deploy keeps its temporary files: beside `dest` (same filesystem, so
/// renames are atomic), named `.stretcher-<dest name>.XXXXXX.staging`.
struct Workspace {
    dir: PathBuf,
    prefix: OsString,
}

const RAND_LEN: usize = 6;
const STAGING_SUFFIX: &str = ".staging";

impl Workspace {
    fn new(dest: &Path) -> Result<Workspace> {
        let (dir, tag) = state::work_dir(dest)?;
        if dest.parent() != Some(dir.as_path()) {
            logln!(
                "cannot write beside {}: staging in {} (changes are copied, not renamed)",
                dest.display(),
                dir.display()
            );
        }
        let mut prefix = OsString::from(".stretcher-");
        prefix.push(tag);
        prefix.push(".");
        Ok(Workspace { dir, prefix })
    }

    /// Removes what a killed run for the same dest left behind. Safe because the
    /// caller holds the dest lock, and the names carry the dest's own name.
    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !self.is_ours(&name) {
                continue;
            }
            let path = entry.path();
            logln!("removing leftover of an earlier run: {}", path.display());
            let result = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                make_writable_and_remove(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = result {
                logln!("warning: could not remove {}: {e}", path.display());
            }
        }
    }

    fn is_ours(&self, name: &std::ffi::OsStr) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let (n, p) = (name.as_bytes(), self.prefix.as_bytes());
        let Some(rest) = n.strip_prefix(p) else {
            return false;
        };
        let middle = rest.strip_suffix(STAGING_SUFFIX.as_bytes());
        matches!(middle, Some(m) if m.len() == RAND_LEN && m.iter().all(u8::is_ascii_alphanumeric))
    }

    fn builder<'a>(&'a self, suffix: &'a str) -> tempfile::Builder<'a, 'a> {
        let mut b = tempfile::Builder::new();
        b.prefix(&self.prefix).suffix(suffix).rand_bytes(RAND_LEN);
        b
    }

    /// A private, empty staging directory.
    fn staging_dir(&self) -> Result<Staging> {
        let dir = self
            .builder(STAGING_SUFFIX)
            .tempdir_in(&self.dir)
            .map_err(|e| Error::io("create staging directory in", &self.dir, e))?;
        Ok(Staging {
            path: dir.keep(),
            kept: false,
        })
    }
}

/// The staging directory; removed on drop unless `keep` handed it over.
struct Staging {
    path: PathBuf,
    kept: bool,
}

impl Staging {
    fn path(&self) -> &Path {
        &self.path
    }

    /// The mode the tree's root (and so dest) gets.
    /// Hands the directory over (the `mv` strategy renames it onto dest).
    fn keep(mut self) -> PathBuf {
        self.kept = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        match make_writable_and_remove(&self.path) {
            // The sync moved the whole staged tree onto a new dest.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(()) => {}
            Err(e) => logln!(
                "warning: could not remove staging {}: {e}",
                self.path.display()
            ),
        }
    }
}

/// `remove_dir_all`, after making directories writable (an archive may hold
/// read-only directories, which a non-root runner could not empty otherwise).
pub(crate) fn make_writable_and_remove(path: &Path) -> std::io::Result<()> {
    if std::fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
    std::fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original's TestRandomTime: within [0, max), averaging max/2.
    #[test]
    fn random_delay_is_uniform_below_max() {
        let max = Duration::from_secs(10);
        let mut sum = Duration::ZERO;
        for _ in 0..10_000 {
            let d = random_delay(max);
            assert!(d < max);
            sum += d;
        }
        let avg = sum / 10_000;
        assert!(
            avg > Duration::from_secs(4) && avg < Duration::from_secs(6),
            "{avg:?}"
        );
    }

    #[test]
    fn leftovers_are_recognised_by_exact_name() {
        let w = Workspace::new(Path::new("/srv/app")).unwrap();
        assert!(w.is_ours(std::ffi::OsStr::new(".stretcher-app.Ab12Cd.staging")));
        // another dest's leftovers, and look-alikes, are not ours
        assert!(!w.is_ours(std::ffi::OsStr::new(".stretcher-app.x.Ab12Cd.staging")));
        assert!(!w.is_ours(std::ffi::OsStr::new(".stretcher-app.Ab12C.staging")));
        assert!(!w.is_ours(std::ffi::OsStr::new(".stretcher-app.Ab12Cd.other")));
        assert!(!w.is_ours(std::ffi::OsStr::new("app")));
    }
}
