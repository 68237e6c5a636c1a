//! One run, in the order of SPEC §5, and the only module that knows that order.
//! Read top-down, each step is one function:
//!
//! 1. the random delay (`sleep_random_delay`);
//! 2. the event and its replay claim (`claim_event`, then `record_handled`);
//! 3. the manifest, its signature and freshness (`load_manifest`); for a manifest
//!    with an archive, under dest's lock (`deploy`), the redeploy decision of SPEC
//!    §11 (`Job::redeploy`);
//! 4. the download, unpacked into staging as it arrives (`Job::download`);
//! 5. `pre` (`pre`);
//! 6. the sync or mv (`Job::sync`), or the release switch (`Job::release`);
//! 7. `post` (`post`);
//! 8. `success` / `failure` with the log on stdin (`final_hooks`);
//! 9. the deploy record (`write_record`).
//!
//! It guarantees that nothing touches `dest` before the sync step. The staging
//! directory beside `dest` is `staging`'s; a `--dry-run` prints what the run would
//! do instead of running `pre` (`print_dry_run`).

use std::io::Read;
use std::path::Path;
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
use crate::staging::{load_filter, make_writable_and_remove, Staging, Workspace};
use crate::state;
use crate::sync::{self, SyncOptions};
use crate::unpack::{self, Staged, UnpackOptions};
use crate::verify::{Checksum, Verified};
use crate::Env;

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
pub(crate) fn run(opts: &Options, env: Env, stdin: &mut dyn Read) -> Result<()> {
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

/// Steps 1 and 2 (delay, event, replay claim), then the event's run.
fn run_inner(opts: &Options, env: Env, stdin: &mut dyn Read, logged: &mut bool) -> Result<()> {
    interrupt::install()?;
    logln!("Starting up stretcher agent {}", crate::VERSION);
    sleep_random_delay(opts)?;

    let event = event::read(opts.target.as_deref(), env, stdin)?;
    for warning in opts.allow_url.warnings() {
        logln!("{warning}");
    }
    let Handling::Run(claim) = claim_event(&event, opts, env)? else {
        return Ok(());
    };
    let result = run_event(&event, opts, env, logged);
    record_handled(claim, &event, opts, &result);
    result
}

/// Step 1: sleeps the `--random-delay`, if any.
fn sleep_random_delay(opts: &Options) -> Result<()> {
    if let Some(d) = opts.random_delay.filter(|d| !d.is_zero()) {
        let sleep = random_delay(d);
        logln!(
            "Sleeping {:.3}s (random delay up to {:.3}s)",
            sleep.as_secs_f64(),
            d.as_secs_f64()
        );
        interrupt::sleep(sleep)?;
    }
    Ok(())
}

/// A uniformly random time in [0, max): spreads a fleet's downloads.
fn random_delay(max: Duration) -> Duration {
    max.mul_f64(fastrand::f64())
}

/// What the replay check decided about an event.
enum Handling {
    /// Already handled: skipped (and logged).
    Replay,
    /// Run it; a consul/serf event's claim is recorded after the run.
    Run(Option<state::EventClaim>),
}

/// Step 2, replays (SPEC §2, §10): a consul/serf event already handled is skipped.
/// The claim holds the event name's lock until the event is recorded, so a second
/// handler of the same event waits and then skips it.
fn claim_event(event: &event::Event, opts: &Options, env: Env) -> Result<Handling> {
    let Some((name, seen)) = event.replay_key() else {
        return Ok(Handling::Run(None));
    };
    let dir = state::state_dir(opts.state_dir.as_deref(), env)?;
    match state::claim(&dir, name, &seen)? {
        state::Claim::Replay(why) => {
            logln!("Skipping {}: already handled: {why}", event.describe());
            Ok(Handling::Replay)
        }
        state::Claim::Fresh(claim) => Ok(Handling::Run(Some(claim))),
    }
}

/// Records the event as handled once its deploy ran to an end, success or failure (a
/// refused or unreadable manifest included); not when a signal cut it short, so that
/// a redelivery finishes the job.
fn record_handled(
    claim: Option<state::EventClaim>,
    event: &event::Event,
    opts: &Options,
    result: &Result<()>,
) {
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
}

/// One event that is not a replay: the run, then its deploy record (SPEC §5 step
/// 9, §11). A dry run changes nothing, so it writes no record either.
fn run_event(event: &event::Event, opts: &Options, env: Env, logged: &mut bool) -> Result<()> {
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
        write_record(dir, draft, result.as_ref().err(), opts, event);
    }
    result
}

/// Step 9: the deploy record, the serial floor of a success and the textfile
/// metrics. A failure to write them is a warning: the deploy's result stands.
fn write_record(
    dir: &Path,
    draft: record::Draft,
    error: Option<&Error>,
    opts: &Options,
    event: &event::Event,
) {
    let (key, rec) = draft.finish(error);
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

/// Steps 3 to 8: the manifest, the deploy, the final hooks; `draft` follows along.
fn run_manifest(
    event: &event::Event,
    opts: &Options,
    env: Env,
    draft: &mut record::Draft,
    state: Option<&Path>,
    logged: &mut bool,
) -> Result<()> {
    let fetch_opts = FetchOptions {
        retry: opts.retry,
        retry_wait: opts.retry_wait,
        timeout: opts.timeout,
        max_bandwidth: opts.max_bandwidth,
        env,
    };
    let manifest = load_manifest(event, opts, env, &fetch_opts, draft, state)?;
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
    let result = deploy(&manifest, opts, &fetch_opts, &hook_env, draft, state);
    final_hooks(result, &manifest, opts, &hook_env, draft, logged)
}

/// Step 3: the allow-url check, the manifest (and its signature, §15), validated and
/// fresh; the `src` allow-url check, before anything is fetched or run.
fn load_manifest(
    event: &event::Event,
    opts: &Options,
    env: Env,
    fetch_opts: &FetchOptions,
    draft: &mut record::Draft,
    state: Option<&Path>,
) -> Result<Manifest> {
    opts.allow_url.check("manifest", &event.url)?;
    logln!("Loading manifest: {}", event.url);
    let bytes = fetch::fetch_bytes(&event.url, fetch_opts, u64::MAX)?;
    draft.manifest_read(&bytes);
    if !opts.trusted_keys.is_empty() {
        // Before templates and before anything of the manifest is used (SPEC §15).
        draft.step = record::Step::Signature;
        check_signature(&event.url, &bytes, &opts.trusted_keys, fetch_opts)?;
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
    Ok(manifest)
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

/// Step 8: after the deploy's `result`, the `success` or `failure` hooks (none in a
/// dry run). The error is logged here, before the `failure` hooks read the log.
fn final_hooks(
    result: Result<()>,
    manifest: &Manifest,
    opts: &Options,
    hook_env: &HookEnv,
    draft: &mut record::Draft,
    logged: &mut bool,
) -> Result<()> {
    match result {
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
            finish(&manifest.commands.success, hook_env, "success");
            draft.hooks_ran("success");
            Ok(())
        }
        Err(e) => {
            logln!("Deploy manifest failed: {e}");
            *logged = true;
            finish(&manifest.commands.failure, hook_env, "failure");
            draft.hooks_ran("failure");
            Err(e)
        }
    }
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

/// The deploy proper: everything between a valid manifest and the final hooks. It
/// holds dest's lock from before the leftover removal to the end of `post`.
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
        return commands_only(manifest, opts, hook_env, draft);
    };

    let _lock = state::lock_dest(dest, fetch_opts.env)?;
    let work = Workspace::new(dest, fetch_opts.env)?;
    work.remove_leftovers();

    let checksum_hex = checksum.hex().to_ascii_lowercase();
    let wanted = wanted(manifest, &checksum_hex);
    let job = Job {
        manifest,
        opts,
        fetch_opts,
        hook_env,
        state,
        src,
        checksum,
        dest,
        wanted: &wanted,
        work: &work,
        same_owner: nix::unistd::geteuid().is_root(),
        downloaded: AtomicU64::new(0),
    };
    let pre_done = match job.redeploy(draft)? {
        Next::Done => return Ok(()),
        Next::Deploy { pre_done } => pre_done,
    };
    if manifest.sync_strategy == Strategy::Release && !opts.dry_run {
        return job.release(draft, pre_done);
    }

    let (staging, staged) = job.download(draft)?;
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
        pre(draft, manifest, hook_env)?;
    }
    job.sync(draft, staging, staged, filter, exclude_text)?;
    post(draft, manifest, hook_env)
}

/// A manifest without `src`: `pre` and `post` only (a dry run prints them).
fn commands_only(
    manifest: &Manifest,
    opts: &Options,
    hook_env: &HookEnv,
    draft: &mut record::Draft,
) -> Result<()> {
    if opts.dry_run {
        return sync::dry_run::print(manifest, None);
    }
    pre(draft, manifest, hook_env)?;
    post(draft, manifest, hook_env)
}

/// Step 5: the `pre` hooks.
fn pre(draft: &mut record::Draft, manifest: &Manifest, hook_env: &HookEnv) -> Result<()> {
    draft.step = record::Step::Pre;
    draft.run_hooks("pre", &manifest.commands.pre, hook_env)
}

/// Step 7: the `post` hooks.
fn post(draft: &mut record::Draft, manifest: &Manifest, hook_env: &HookEnv) -> Result<()> {
    draft.step = record::Step::Post;
    draft.run_hooks("post", &manifest.commands.post, hook_env)
}

/// What a deploy of this manifest must match for the redeploy that downloads
/// nothing (SPEC §11), and what its index records.
fn wanted<'a>(manifest: &'a Manifest, checksum_hex: &'a str) -> redeploy::Wanted<'a> {
    let euid = nix::unistd::geteuid().as_raw();
    let strategy_name = match manifest.sync_strategy {
        Strategy::Rsync => "rsync",
        Strategy::Mv => "mv",
        Strategy::Release => "release",
    };
    redeploy::Wanted {
        checksum: checksum_hex,
        strategy: strategy_name,
        dest_mode: manifest.dest_mode,
        excludes: &manifest.excludes,
        exclude_from: manifest.exclude_from.as_deref(),
        euid,
    }
}

/// One deploy of an archive onto `dest`: what its steps read.
struct Job<'a> {
    manifest: &'a Manifest,
    opts: &'a Options,
    fetch_opts: &'a FetchOptions<'a>,
    hook_env: &'a HookEnv,
    state: Option<&'a Path>,
    src: &'a str,
    checksum: &'a Checksum,
    dest: &'a Path,
    wanted: &'a redeploy::Wanted<'a>,
    work: &'a Workspace,
    /// Running as root: the archive's owners are kept.
    same_owner: bool,
    /// The bytes of the last download (the record's `downloaded_bytes`).
    downloaded: AtomicU64,
}

/// What is left to do after the redeploy decision.
enum Next {
    /// The deploy ran to its end without a download (or a dry run printed it).
    Done,
    /// Download and deploy; `pre_done`: the `pre` hooks already ran.
    Deploy { pre_done: bool },
}

impl Job<'_> {
    /// The redeploy that downloads nothing (SPEC §11): skipped with `--force` or
    /// without a state directory.
    fn redeploy(&self, draft: &mut record::Draft) -> Result<Next> {
        let (Some(dir), false) = (self.state, self.opts.force) else {
            return Ok(Next::Deploy { pre_done: false });
        };
        match redeploy::check(dir, self.dest, self.wanted) {
            redeploy::Decision::Skip { deployed, entries } => {
                self.skip_download(draft, dir, &deployed, entries)
            }
            redeploy::Decision::Deploy { reason, warn } => {
                let w = if warn { "warning: " } else { "" };
                logln!("{w}{} is deployed in full: {reason}", self.dest.display());
                Ok(Next::Deploy { pre_done: false })
            }
        }
    }

    /// dest already holds the archive: `pre`, then `post` with nothing downloaded —
    /// unless a `pre` command changed dest, then the deploy goes on in full.
    fn skip_download(
        &self,
        draft: &mut record::Draft,
        dir: &Path,
        deployed: &str,
        entries: u64,
    ) -> Result<Next> {
        let Job {
            manifest,
            hook_env,
            dest,
            wanted,
            ..
        } = *self;
        logln!(
            "dest {} already holds {} (deployed {deployed}): nothing to download",
            dest.display(),
            wanted.checksum
        );
        if self.opts.dry_run {
            sync::dry_run::print(manifest, None)?;
            return Ok(Next::Done);
        }
        pre(draft, manifest, hook_env)?;
        // A `pre` command may change dest: then the sync would not be a no-op.
        let still = manifest.commands.pre.is_empty()
            || matches!(
                redeploy::check(dir, dest, wanted),
                redeploy::Decision::Skip { .. }
            );
        if still {
            draft.download_skipped = true;
            draft.downloaded_bytes = Some(0);
            draft.changes = Some(record::Changes {
                unchanged: entries,
                ..Default::default()
            });
            post(draft, manifest, hook_env)?;
            return Ok(Next::Done);
        }
        logln!(
            "a pre command changed {}: deploying in full",
            dest.display()
        );
        Ok(Next::Deploy { pre_done: true })
    }

    /// Steps 4 to 7 for `sync_strategy: release` (SPEC §14), in `release`.
    fn release(&self, draft: &mut record::Draft, pre_done: bool) -> Result<()> {
        let Job {
            manifest,
            fetch_opts,
            hook_env,
            state,
            src,
            checksum,
            dest,
            wanted,
            ..
        } = *self;
        let ctx = release::Context {
            draft,
            state,
            wanted,
            pre_done,
        };
        let deployed = release::deploy(manifest, fetch_opts, hook_env, (src, checksum, dest), ctx)?;
        logln!("Release {} is live in {}", deployed.id, dest.display());
        Ok(())
    }

    /// Step 4: download, hash and unpack in one pass into a private staging directory
    /// beside dest. dest is only read: files it already has as the archive does (size,
    /// mtime, mode, owner) are not written at all (rsync strategy; not in a dry run).
    fn download(&self, draft: &mut record::Draft) -> Result<(Staging, Verified<Staged>)> {
        let src = self.src;
        logln!("Loading URL {src}");
        let reuse = self.manifest.sync_strategy == Strategy::Rsync && !self.opts.dry_run;
        draft.step = record::Step::Download;
        let staged = self.fetch_and_unpack(reuse);
        draft.downloaded_bytes = Some(self.downloaded.load(Ordering::Relaxed));
        let staged = staged?;
        // Verified: from here on the staged tree is the archive's.
        let (staging, staged) = staged.split();
        logln!(
            "Unpacked {} entries ({} unchanged files left in place in {})",
            staged.get().entries,
            staged.get().reused.len(),
            self.dest.display()
        );
        Ok((staging, staged))
    }

    /// One download of `src` into a new staging directory, counted in `downloaded`;
    /// `reuse`: dest's unchanged files are left out of staging.
    fn fetch_and_unpack(&self, reuse: bool) -> Result<Verified<(Staging, Staged)>> {
        let Job {
            src,
            checksum,
            fetch_opts,
            dest,
            work,
            same_owner,
            ..
        } = *self;
        let downloaded = &self.downloaded;
        fetch::stream(src, checksum, fetch_opts, |reader| {
            downloaded.store(0, Ordering::Relaxed);
            let reader = &mut fetch::Counting {
                inner: reader,
                count: downloaded,
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
    }

    /// Step 6: the rsync or mv strategy, dest's mode as one of the sync's options. The
    /// staging directory is gone when this returns (renamed onto dest, or removed).
    fn sync(
        &self,
        draft: &mut record::Draft,
        staging: Staging,
        staged: Verified<Staged>,
        filter: Filter,
        exclude_text: Option<String>,
    ) -> Result<()> {
        draft.step = record::Step::Sync;
        let mode = self
            .manifest
            .dest_mode
            .or(staged.get().root_mode)
            .unwrap_or(DEFAULT_DEST_MODE);
        logln!("Set dest mode {mode:04o}");

        match self.manifest.sync_strategy {
            Strategy::Rsync => self.sync_rsync(draft, staging, staged, filter, exclude_text, mode),
            // Handled before the download (a dry run never gets here either).
            Strategy::Release => Ok(()),
            Strategy::Mv => self.sync_mv(draft, staging, staged, filter, exclude_text, mode),
        }
    }

    /// `sync_strategy: rsync`: the plan, applied; the index of the result.
    fn sync_rsync(
        &self,
        draft: &mut record::Draft,
        staging: Staging,
        staged: Verified<Staged>,
        filter: Filter,
        exclude_text: Option<String>,
        mode: u32,
    ) -> Result<()> {
        let Job {
            opts,
            state,
            dest,
            wanted,
            same_owner,
            ..
        } = *self;
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
                let (staging, staged) = self.fetch_and_unpack(false)?.split();
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
            write_index(dir, dest, wanted, exclude_text, &entries);
        }
        Ok(())
    }

    /// `sync_strategy: mv`: the staged tree renamed onto dest; one walk of the result
    /// for the index.
    fn sync_mv(
        &self,
        draft: &mut record::Draft,
        staging: Staging,
        staged: Verified<Staged>,
        filter: Filter,
        exclude_text: Option<String>,
        mode: u32,
    ) -> Result<()> {
        let Job {
            state,
            dest,
            wanted,
            ..
        } = *self;
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
                Ok(entries) => write_index(dir, dest, wanted, exclude_text, &entries),
                Err(e) => logln!("warning: no deploy index for {}: {e}", dest.display()),
            }
        }
        Ok(())
    }
}

/// Writes the index of what dest holds after a successful sync; a failure is a
/// warning (the deploy's result stands; the next redeploy downloads in full).
fn write_index(
    state: &Path,
    dest: &Path,
    wanted: &redeploy::Wanted,
    exclude_from_text: Option<String>,
    entries: &[crate::entry::Entry],
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
}
