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
    let result = run_inner(opts, env, stdin);
    if let Err(e) = &result {
        logln!("{e}");
    }
    result
}

fn run_inner(
    opts: &Options,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
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
    let result = run_event(&event, opts, env);
    // Handled once its deploy ran to an end, success or failure (a refused or
    // unreadable manifest included); not when a signal cut it short, so that a
    // redelivery finishes the job.
    if let Some(claim) = claim {
        if !matches!(result, Err(Error::Interrupted(_))) {
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

/// One event that is not a replay: allow-url check, manifest, deploy, final hooks.
fn run_event(
    event: &event::Event,
    opts: &Options,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    opts.allow_url.check("manifest", &event.url)?;
    logln!("Loading manifest: {}", event.url);
    let fetch_opts = FetchOptions {
        retry: opts.retry,
        retry_wait: opts.retry_wait,
        timeout: opts.timeout,
        max_bandwidth: opts.max_bandwidth,
    };
    let text = fetch::fetch_text(&event.url, &fetch_opts)?;
    let manifest = manifest::parse(&text, &event.url, env)?;
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
    };
    match deploy(&manifest, opts, &fetch_opts, &hook_env) {
        Ok(()) => {
            logln!("Deploy manifest succeeded.");
            finish(&manifest.commands.success, &hook_env, "success");
            Ok(())
        }
        Err(e) => {
            logln!("Deploy manifest failed: {e}");
            finish(&manifest.commands.failure, &hook_env, "failure");
            Err(e)
        }
    }
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
) -> Result<()> {
    let (Some(src), Some(checksum), Some(dest)) = (
        manifest.src.as_deref(),
        manifest.checksum.as_ref(),
        manifest.dest.as_deref(),
    ) else {
        // Commands-only manifest (validation guarantees src ⇒ checksum and dest).
        hooks::run(&manifest.commands.pre, hook_env)?;
        return hooks::run(&manifest.commands.post, hook_env);
    };

    let _lock = state::lock_dest(dest)?;
    let work = Workspace::new(dest)?;
    work.remove_leftovers();

    // Download, hash and unpack in one pass into a private staging directory beside
    // dest. dest is only read: files it already has (same size, mtime, mode) are
    // linked from it instead of written.
    logln!("Loading URL {src}");
    let same_owner = nix::unistd::geteuid().is_root();
    let staged = fetch::stream(src, checksum, fetch_opts, |reader| {
        let staging = work.staging_dir()?;
        let unpack_opts = UnpackOptions {
            same_owner,
            label: src.to_string(),
            reuse_from: reusable_dest(dest, staging.path()),
        };
        logln!("Extract archive: {src} to {}", staging.path().display());
        let staged = unpack::unpack(reader, staging.path(), &unpack_opts)?;
        Ok((staging, staged))
    })?;
    // Verified: from here on the staged tree is the archive's.
    let (staging, staged) = staged.into_inner();
    logln!(
        "Unpacked {} entries ({} unchanged files taken from {})",
        staged.entries,
        staged.reused.len(),
        dest.display()
    );

    hooks::run(&manifest.commands.pre, hook_env)?;
    check_reused(staging.path(), &staged)?;

    let mode = manifest
        .dest_mode
        .or(staged.root_mode)
        .unwrap_or(DEFAULT_DEST_MODE);
    logln!("Set dest mode {mode:04o}");
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", staging.path(), e))?;

    let filter = match &manifest.exclude_from {
        Some(name) => {
            // manifest validation keeps the name relative and free of `..`
            let path = staging.path().join(name);
            let rules = std::fs::read(&path).map_err(|e| Error::Sync {
                path: PathBuf::from(name),
                msg: format!("exclude_from file is not in the archive: {e}"),
            })?;
            Filter::new(Some(&String::from_utf8_lossy(&rules)), &manifest.excludes)?
        }
        None => Filter::new(None, &manifest.excludes)?,
    };

    match manifest.sync_strategy {
        Strategy::Rsync => {
            let sync_opts = SyncOptions {
                verbosity: opts.rsync_verbose,
                preserve_owner: same_owner,
                // staging is private and discarded: rename from it instead of copying
                move_source: true,
            };
            sync::sync(staging.path(), dest, &filter, &sync_opts)?;
        }
        Strategy::Mv => {
            logln!("Moving {} to {}", staging.path().display(), dest.display());
            let path = staging.keep();
            if let Err(e) = sync::move_into_place(&path, dest) {
                let _ = std::fs::remove_dir_all(&path);
                return Err(e);
            }
        }
    }

    hooks::run(&manifest.commands.post, hook_env)
}

/// `dest` when unchanged files can be taken from it by hard link: it is a directory
/// on the staging directory's filesystem.
fn reusable_dest(dest: &Path, staging: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let d = std::fs::metadata(dest).ok().filter(|m| m.is_dir())?;
    let s = std::fs::metadata(staging).ok()?;
    (d.dev() == s.dev()).then(|| dest.to_path_buf())
}

/// Files taken from dest share their inode with it: a `pre` command that rewrote one
/// in place changed the staged copy too. That copy is no longer the archive's, so the
/// deploy stops before the sync (the next run writes the file afresh).
fn check_reused(staging: &Path, staged: &unpack::Staged) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for (rel, size, mtime) in &staged.reused {
        let path = staging.join(rel);
        let m = std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        if m.size() != *size || m.mtime() != *mtime {
            return Err(Error::Sync {
                path: rel.clone(),
                msg: "a pre command changed this file in dest in place; its archive \
                      content was taken from there, so it is gone: deploy again"
                    .into(),
            });
        }
    }
    Ok(())
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
        let (parent, name) = state::parent_and_name(dest)?;
        let mut prefix = OsString::from(".stretcher-");
        prefix.push(name);
        prefix.push(".");
        Ok(Workspace {
            dir: parent.to_path_buf(),
            prefix,
        })
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
        if let Err(e) = make_writable_and_remove(&self.path) {
            logln!(
                "warning: could not remove staging {}: {e}",
                self.path.display()
            );
        }
    }
}

/// `remove_dir_all`, after making directories writable (an archive may hold
/// read-only directories, which a non-root runner could not empty otherwise).
fn make_writable_and_remove(path: &Path) -> std::io::Result<()> {
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
