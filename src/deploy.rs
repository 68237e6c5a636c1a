//! One run, in the order of SPEC §5, and the only module that knows that order —
//! once, for every strategy. Read top-down, each step is one function:
//!
//! 1. the random delay (`sleep_random_delay`);
//! 2. the event and its replay claim (`claim_event`, then `record_handled`);
//! 3. the manifest, its signature and freshness (`load_manifest`); for a manifest
//!    with an archive, under dest's lock (`deploy`), the redeploy decision of SPEC
//!    §11 (`Job::redeploy`);
//! 4. the download, unpacked as it arrives into the place the strategy gives
//!    (`Job::download`), and the exclude rules read out of it (`load_filter`);
//! 5. `pre` (`pre`);
//! 6. the strategy lands the verified tree in dest with the one dest-mode rule
//!    (`Job::land`: the sync, the rename of mv, or the release switch);
//! 7. `post` (`post`); when it fails the strategy undoes what it can (a release flips
//!    back), else it confirms (a release is confirmed, old ones cleaned up); then the
//!    index of dest (`index::save`);
//! 8. `success` / `failure` with the log on stdin (`final_hooks`);
//! 9. the deploy record (`write_record`).
//!
//! What differs between rsync, mv and release is behind `land::Land`; this module
//! never matches on the strategy. It guarantees that nothing touches `dest` before the
//! landing step. A `--dry-run` prints what the run would do instead of running `pre`.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cli::Options;
use crate::delta;
use crate::error::{Error, Result};
use crate::event;
use crate::fetch::{self, FetchOptions};
use crate::filter::Filter;
use crate::hooks::{self, HookEnv};
use crate::interrupt;
use crate::land::{self, Land, Landed, Stage};
use crate::log;
use crate::logln;
use crate::manifest::{self, Manifest};
use crate::record;
use crate::redeploy;
use crate::signature;
use crate::staging::{load_filter, Staging, Workspace};
use crate::state;
use crate::sync;
use crate::unpack::{self, Staged, UnpackOptions};
use crate::urls::redact;
use crate::verify::{Checksum, Verified};
use crate::Env;

/// Runs one deploy with the process's environment and stdin; returns the exit
/// status (SPEC §3: under `consul watch` a failed deploy still exits 0).
pub fn main(opts: &Options) -> i32 {
    let env = |k: &str| std::env::var(k).ok();
    let consul = env("CONSUL_INDEX").is_some();
    let result = match &opts.detach {
        // `--detach` (SPEC §13): the same run, in a process of its own.
        Some(args) => crate::detach::run(opts, args, &env, &mut std::io::stdin().lock())
            .map(drop)
            .inspect_err(|e| logln!("{e}")),
        None => run(opts, &env, &mut std::io::stdin().lock()),
    };
    match result {
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
    if event.replay_key().is_some() {
        logln!("Received {}: {}", event.describe(), redact(&event.url));
    }
    for warning in opts.allow_url.warnings() {
        logln!("{warning}");
    }
    let Handling::Run(claim) = claim_event(&event, opts, env)? else {
        return Ok(());
    };
    let result = match in_wave(&event, opts, env) {
        Ok(true) => run_event(&event, opts, env, logged),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    record_handled(claim, &event, opts, &result);
    result
}

/// Step 2, a rollout's wave (SPEC §19): whether this host deploys the event. A plain
/// payload always does. A wave's does when this host's rank (from `SERF_SELF_NAME`
/// and its `SERF_TAG_*` variables, never from the payload) is at most the wave's
/// `upto`, and its last deploy of the manifest is not already a success of the same
/// rollout. Either way the event counts as handled; nothing is fetched or run when
/// the host is out of the wave or done.
fn in_wave(event: &event::Event, opts: &Options, env: Env) -> Result<bool> {
    let Some(wave) = &event.wave else {
        return Ok(true);
    };
    let id = &wave.rollout;
    let (node, rank) = wave.rank_here(env).ok_or_else(|| {
        Error::event(format!(
            "rollout {id}: SERF_SELF_NAME is not set, so this host has no rank (a wave is for a serf agent's handler)"
        ))
    })?;
    let node = log::shown_text(node.as_bytes());
    if !wave.includes(&rank) {
        logln!(
            "Not in this wave of rollout {id}: node {node} has rank {rank}, after {}: nothing to do",
            wave.upto
        );
        return Ok(false);
    }
    logln!(
        "In this wave of rollout {id}: node {node} has rank {rank}, up to {}",
        wave.upto
    );
    let dir = state::state_dir(opts.state_dir.as_deref(), env)?;
    if let Some((_, done)) = record::done_in_rollout(&dir, &event.url, id) {
        let dest = done.dest.as_deref().unwrap_or("(commands only)");
        logln!(
            "{} already deployed {} in rollout {id} (finished {}): nothing to do for this wave",
            log::shown_text(dest.as_bytes()),
            redact(&event.url),
            done.finished.as_deref().unwrap_or("-")
        );
        return Ok(false);
    }
    Ok(true)
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
    Run(Option<Box<state::EventClaim>>),
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
        state::Claim::Skip(state::Skip::Replay(why)) => {
            logln!("Skipping {}: already handled: {why}", event.describe());
            Ok(Handling::Replay)
        }
        state::Claim::Skip(state::Skip::Superseded(why)) => {
            logln!("Skipping {}: superseded: {why}", event.describe());
            Ok(Handling::Replay)
        }
        state::Claim::Fresh(claim) => Ok(Handling::Run(Some(claim))),
    }
}

/// Records the event as handled once its deploy ran to an end, success or failure (a
/// refused or unreadable manifest included); not when a signal cut it short, so that
/// a redelivery finishes the job.
fn record_handled(
    claim: Option<Box<state::EventClaim>>,
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
        // Another user could write it (SPEC §17): nothing is read from it or run.
        Err(e @ Error::Unsafe { .. }) => return Err(e),
        Err(e) => {
            logln!("warning: no state directory ({e}): no deploy record is kept");
            None
        }
    };
    if let (Some(dir), false) = (&state, opts.dry_run) {
        // Under the manifest URL's key until dest is known (SPEC §13).
        draft.mark_running(dir);
    }
    let result = run_manifest(event, opts, env, &mut draft, state.as_deref(), logged);
    if let (Some(dir), false) = (&state, opts.dry_run) {
        write_record(dir, draft, result.as_ref().err(), opts, event);
    }
    result
}

/// Step 9: the deploy record (with the serial floor of a success) and the textfile
/// metrics. A failure to write them is a warning: the deploy's result stands.
fn write_record(
    dir: &Path,
    draft: record::Draft,
    error: Option<&Error>,
    opts: &Options,
    event: &event::Event,
) {
    let (key, rec) = record::commit(dir, draft, error);
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
        stall: opts.stall_timeout,
        max_bandwidth: opts.max_bandwidth,
        allow: &opts.allow_url,
        env,
    };
    let manifest = load_manifest(event, opts, env, &fetch_opts, draft, state)?;
    // The hooks see the URLs as every log line shows them (SPEC §17).
    let hook_env = HookEnv {
        dest: manifest
            .dest
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        src: manifest.src.as_deref().map(redact).unwrap_or_default(),
        manifest_url: redact(&event.url),
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
    logln!("Loading manifest: {}", redact(&event.url));
    let bytes = fetch::fetch_bytes(&event.url, fetch_opts, fetch::MAX_MANIFEST_BYTES)?;
    draft.manifest_read(&bytes);
    let mut signer = None;
    if !opts.trusted_keys.is_empty() {
        // Before templates and before anything of the manifest is used (SPEC §15).
        draft.step = record::Step::Signature;
        signer = Some(check_signature(
            &event.url,
            &bytes,
            &opts.trusted_keys,
            fetch_opts,
        )?);
        draft.step = record::Step::Manifest;
    }
    // The wave's rollout id names these very bytes (SPEC §19), checked once the
    // manifest's dest is known so that the failure is recorded under it.
    let fetched_id = crate::rollout::rollout_id(&bytes);
    let text = fetch::into_text(&event.url, bytes)?;
    let manifest = manifest::parse(&text, &event.url, env).inspect_err(|_| {
        // Recorded under dest's key when the manifest names a usable dest.
        if let Some(dest) = manifest::dest_of(&text, env) {
            draft.dest_known(dest);
        }
    })?;
    draft.manifest_valid(&manifest);
    draft.serial = manifest.serial;
    if let Some(wave) = event.wave.as_ref().filter(|w| w.rollout != fetched_id) {
        return Err(Error::Manifest {
            url: event.url.clone(),
            msg: format!(
                "not the manifest of rollout {} (its bytes are rollout {fetched_id}): it changed since the rollout began",
                wave.rollout
            ),
            source: None,
        });
    }
    let floor = record::Floor::of(
        manifest.src.as_ref().and(manifest.dest.as_deref()),
        signer.as_deref(),
        &event.url,
    );
    check_fresh(&manifest, &event.url, &floor, state)?;
    draft.floor = Some(floor.key);
    for key in &manifest.unknown_keys {
        logln!(
            "warning: manifest {}: unknown key {key:?} is ignored",
            redact(&event.url)
        );
    }
    if let Some(src) = &manifest.src {
        // Before anything is fetched or run: a refused src runs no hook at all.
        opts.allow_url.check("src", src)?;
    }
    Ok(manifest)
}

/// Fetches `MANIFEST_URL.minisig` the way the manifest was fetched and checks it
/// against the raw manifest bytes; logs the trusted comment of a good signature and
/// answers the id of the key that made it.
pub(crate) fn check_signature(
    url: &str,
    bytes: &[u8],
    keys: &[signature::TrustedKey],
    fetch_opts: &FetchOptions,
) -> Result<String> {
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
        "Signature ok: {} by key {}, trusted comment: {}",
        redact(&sig_url),
        good.key_id,
        good.trusted_comment
    );
    Ok(good.key_id)
}

/// `expires` and `serial` (SPEC §15, §17): a manifest past its `expires` is refused,
/// and so is one whose `serial` is lower than its `floor` (the serial of the last
/// successful deploy there), or that has no `serial` once the floor exists.
fn check_fresh(
    manifest: &Manifest,
    url: &str,
    floor: &record::Floor,
    state: Option<&Path>,
) -> Result<()> {
    let stale = |msg: String| Error::Freshness {
        url: url.to_string(),
        msg,
    };
    match (state, manifest.serial) {
        (Some(dir), serial) => match (serial, record::last_success_serial(dir, &floor.key)) {
            (Some(serial), Some(last)) if serial < last => {
                return Err(stale(format!(
                    "serial {serial} is lower than {last}, the serial of the last successful deploy {}",
                    floor.whose
                )))
            }
            (None, Some(last)) => {
                return Err(stale(format!(
                    "no serial, but the last successful deploy {} had serial {last} (leaving it out cannot reset the floor)",
                    floor.whose
                )))
            }
            _ => {}
        },
        (None, Some(serial)) => {
            logln!(
                "warning: no state directory: serial {serial} of {} cannot be compared",
                redact(url)
            )
        }
        (None, None) => {}
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
            finish(&manifest.commands.success, hook_env, "success", draft);
            Ok(())
        }
        Err(e) => {
            logln!("Deploy manifest failed: {e}");
            *logged = true;
            finish(&manifest.commands.failure, hook_env, "failure", draft);
            Err(e)
        }
    }
}

/// Runs the `success` or `failure` commands with the whole log on stdin. Their
/// failure is logged but does not change the outcome of the deploy.
fn finish(commands: &[String], env: &HookEnv, which: &str, draft: &mut record::Draft) {
    if commands.is_empty() {
        return;
    }
    // A signal that stopped the deploy must not also stop the failure hooks.
    interrupt::clear();
    let phase = hooks::run_with_input(commands, env, &log::saved());
    draft.hooks_ran(which, phase.ran);
    if let Err(e) = phase.result {
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
        return commands_only(manifest, opts, hook_env, draft, state);
    };

    let _lock = state::lock_dest(dest, fetch_opts.env)?;
    if let (Some(dir), false) = (state, opts.dry_run) {
        // dest's record shows this run from now on: under the lock, so a deploy
        // waiting for it never shows over the one that holds it.
        draft.mark_running(dir);
    }
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
    let ctx = land::Ctx {
        manifest,
        dest,
        state,
        work: &work,
        same_owner: job.same_owner,
        verbosity: opts.rsync_verbose,
    };
    let mut strategy = land::for_deploy(ctx, opts.dry_run)?;
    let strategy = strategy.as_mut();

    if opts.dry_run {
        job.dry_run_delta(strategy)?;
    }
    let (staging, staged) = job.download(draft, strategy, true)?;
    // Read before `pre`, which cannot have touched the staged tree yet.
    draft.step = record::Step::Unpack;
    let (filter, exclude_rules) = load_filter(manifest, &staging)?;
    if opts.dry_run {
        let changes = strategy.dry_run(&staged, &filter)?;
        return sync::dry_run::print(manifest, Some((dest, changes)));
    }
    if !pre_done {
        pre(draft, manifest, hook_env)?;
    }
    let settings = wanted.settings(exclude_rules);
    let Landed {
        changes,
        entries,
        digests,
        release,
        // Staging may still be going: waited for when this returns.
        removal: _removal,
    } = job.land(draft, strategy, (staging, staged), &filter, &settings)?;
    draft.changes = Some(changes);
    draft.release = release;
    if let Err(e) = post(draft, manifest, hook_env) {
        strategy.undo(&e);
        return Err(e);
    }
    strategy.confirm()?;
    if let Some(dir) = state {
        match entries {
            Ok(entries) => crate::index::save(dir, dest, &settings, &entries, &digests),
            Err(e) => logln!("warning: no deploy index for {}: {e}", dest.display()),
        }
    }
    Ok(())
}

/// A manifest without `src`: `pre` and `post` only (a dry run prints them).
fn commands_only(
    manifest: &Manifest,
    opts: &Options,
    hook_env: &HookEnv,
    draft: &mut record::Draft,
    state: Option<&Path>,
) -> Result<()> {
    if opts.dry_run {
        return sync::dry_run::print(manifest, None);
    }
    if let Some(dir) = state {
        draft.mark_running(dir);
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
    redeploy::Wanted {
        checksum: checksum_hex,
        strategy: manifest.sync_strategy,
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
    /// Where scratch files go (beside dest).
    work: &'a Workspace,
    /// Running as root: the archive's owners are kept (by the unpack and the landing).
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

    /// Step 4: download, hash and unpack in one pass into the place the strategy
    /// gives (staging beside dest, or a partial release); dest is only read. `reuse`:
    /// files the strategy's probe finds unchanged are left out (or linked). Answers
    /// the staging directory and the verified tree.
    fn download(
        &self,
        draft: &mut record::Draft,
        strategy: &mut dyn Land,
        reuse: bool,
    ) -> Result<(Staging, Verified<Staged>)> {
        logln!("Loading URL {}", redact(self.src));
        draft.step = record::Step::Download;
        let staged = self.fetch_and_unpack(strategy, reuse);
        draft.downloaded_bytes = Some(self.downloaded.load(Ordering::Relaxed));
        let (stage, staged) = staged?.split();
        // What comes next reaches the staged tree by its name: it must still name the
        // directory the unpack wrote through (SPEC §17), not one swapped in since.
        let root = &staged.get().root;
        if let Err(e) = crate::at::Tree::open_same(root, staged.get().root_id) {
            logln!("{e}");
            return Err(Error::Unsafe {
                what: "staging directory",
                path: root.clone(),
                msg: "replaced while the deploy ran (not the directory unpacked into)".into(),
            });
        }
        // Verified: from here on the staged tree is the archive's.
        logln!(
            "Unpacked {} entries ({} unchanged files {})",
            staged.get().entries,
            staged.get().reused.len(),
            stage.reused_how
        );
        Ok((stage.staging, staged))
    }

    /// The delta of a packed archive (SPEC §18), when the manifest has `toc`:
    /// only the changed files' members fetched, into a fresh place of the
    /// strategy's; `None` (why logged): the full download is needed.
    fn delta(&self, strategy: &mut dyn Land) -> Result<Option<Verified<(Stage, Staged)>>> {
        let Some(d) = self.delta_job() else {
            return Ok(None);
        };
        let stage = strategy.stage(true)?;
        let shown = redact(self.src);
        match delta::unpack(&d, stage, || self.work.scratch_file(), &shown)? {
            delta::Outcome::Staged(staged) => Ok(Some(*staged)),
            delta::Outcome::Full(why) => {
                logln!("{shown}: downloading the whole archive: {why}");
                Ok(None)
            }
        }
    }

    /// What a delta of this deploy reads, when the manifest has `toc`.
    fn delta_job(&self) -> Option<delta::Delta<'_>> {
        Some(delta::Delta {
            src: self.src,
            toc: self.manifest.toc?,
            size: self.manifest.size,
            fetch_opts: self.fetch_opts,
            same_owner: self.same_owner,
            downloaded: &self.downloaded,
        })
    }

    /// `--dry-run` of a packed archive: which path a deploy would take and how many
    /// bytes it would fetch (the dry run itself goes on with the whole archive).
    fn dry_run_delta(&self, strategy: &dyn Land) -> Result<()> {
        let Some(d) = self.delta_job() else {
            return Ok(());
        };
        logln!(
            "dry run: {}",
            delta::dry_run(&d, strategy.dry_run_probe()?)?
        );
        self.downloaded.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// One download of `src` into a fresh place of the strategy's, counted in
    /// `downloaded` (every attempt starts afresh, after what a delta fetched); a
    /// packed archive onto a tree is first tried as a delta (SPEC §18).
    fn fetch_and_unpack(
        &self,
        strategy: &mut dyn Land,
        reuse: bool,
    ) -> Result<Verified<(Stage, Staged)>> {
        if reuse && !self.opts.dry_run {
            if let Some(staged) = self.delta(strategy)? {
                return Ok(staged);
            }
        }
        let before = self.downloaded.load(Ordering::Relaxed);
        let Job {
            src,
            checksum,
            fetch_opts,
            same_owner,
            ..
        } = *self;
        let toc = self.manifest.toc;
        let downloaded = &self.downloaded;
        let shown = redact(src);
        fetch::stream(src, checksum, self.manifest.size, fetch_opts, |reader| {
            downloaded.store(before, Ordering::Relaxed);
            let reader = &mut fetch::Counting {
                inner: reader,
                count: downloaded,
            };
            let mut stage = strategy.stage(reuse)?;
            let unpack_opts = UnpackOptions {
                same_owner,
                label: shown.clone(),
                link_unchanged: stage.link_unchanged,
                list_written: stage.list_written,
                // `checksum` verifies the whole archive, its table included (SPEC §18).
                digests_from_table: toc.is_some(),
            };
            let into = stage.staging.tree();
            let probe = stage
                .probe
                .as_mut()
                .map(|p| p as &mut dyn unpack::Unchanged);
            logln!("Extract archive: {shown} to {}", into.path().display());
            let staged = unpack::unpack_in(reader, into, &unpack_opts, probe)?;
            Ok((stage, staged))
        })
    }

    /// Step 6: the verified tree lands in dest by the strategy, with the one dest-mode
    /// rule. When `pre` changed a file the unpack had left in dest as unchanged, its
    /// content is in neither tree: the archive is fetched and unpacked again in full.
    fn land(
        &self,
        draft: &mut record::Draft,
        strategy: &mut dyn Land,
        (staging, staged): (Staging, Verified<Staged>),
        filter: &Filter,
        settings: &crate::index::Header,
    ) -> Result<Landed> {
        draft.step = record::Step::Sync;
        let mode = land::dest_mode(self.manifest, staged.get());
        logln!("Set dest mode {mode:04o}");
        match strategy.land(staging, staged, filter, mode, settings) {
            Err(Error::Stale { path }) => {
                logln!(
                    "{} changed after the archive was unpacked (by a pre command?): unpacking the archive again in full",
                    path.display()
                );
                let (staging, staged) = self.download(draft, strategy, false)?;
                draft.step = record::Step::Sync;
                let mode = land::dest_mode(self.manifest, staged.get());
                strategy.land(staging, staged, filter, mode, settings)
            }
            landed => landed,
        }
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
