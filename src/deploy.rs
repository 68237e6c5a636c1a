//! One run, in the order of SPEC §5: delay → event → manifest → download and
//! verify → `pre` → unpack into staging → sync into `dest` → `post` →
//! `success` / `failure` with the log on stdin.
//!
//! The only module that knows that order. It owns the staging directory and the
//! temp download file beside `dest` (and removes them, or a killed run's leftovers),
//! and it guarantees that nothing touches `dest` before the sync step.

use std::ffi::OsString;
use std::fs::File;
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

    logln!("Loading URL {src}");
    let (file, file_path) = work.download_file()?;
    let archive = fetch::download(src, checksum, file, &file_path, fetch_opts)?;

    hooks::run(&manifest.commands.pre, hook_env)?;

    let staging = work.staging_dir()?;
    logln!("Extract archive: {src} to {}", staging.path().display());
    let same_owner = nix::unistd::geteuid().is_root();
    let unpack_opts = UnpackOptions {
        same_owner,
        label: src.to_string(),
    };
    let staged = archive
        .try_map(|f| unpack::unpack(std::io::BufReader::new(f), staging.path(), &unpack_opts))?;
    // The archive is fully read; free its disk space before the sync needs some.
    let _ = std::fs::remove_file(&file_path);
    interrupt::check()?;

    let mode = manifest
        .dest_mode
        .or(staged.get().root_mode)
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

/// Where a deploy keeps its temporary files: beside `dest` (same filesystem, so
/// renames are atomic), named `.stretcher-<dest name>.XXXXXX.{download,staging}`.
struct Workspace {
    dir: PathBuf,
    prefix: OsString,
    /// Paths made by this run, removed on drop.
    made: std::cell::RefCell<Vec<PathBuf>>,
}

const RAND_LEN: usize = 6;
const DOWNLOAD_SUFFIX: &str = ".download";
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
            made: Default::default(),
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
        let middle = rest
            .strip_suffix(DOWNLOAD_SUFFIX.as_bytes())
            .or_else(|| rest.strip_suffix(STAGING_SUFFIX.as_bytes()));
        matches!(middle, Some(m) if m.len() == RAND_LEN && m.iter().all(u8::is_ascii_alphanumeric))
    }

    fn builder<'a>(&'a self, suffix: &'a str) -> tempfile::Builder<'a, 'a> {
        let mut b = tempfile::Builder::new();
        b.prefix(&self.prefix).suffix(suffix).rand_bytes(RAND_LEN);
        b
    }

    /// A private temp file for the download.
    fn download_file(&self) -> Result<(File, PathBuf)> {
        let (file, path) = self
            .builder(DOWNLOAD_SUFFIX)
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io("create temp file in", &self.dir, e))?
            .keep()
            .map_err(|e| Error::io("create temp file in", &self.dir, e.error))?;
        self.made.borrow_mut().push(path.clone());
        Ok((file, path))
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

impl Drop for Workspace {
    fn drop(&mut self) {
        for p in self.made.borrow().iter() {
            let _ = std::fs::remove_file(p);
        }
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
        assert!(w.is_ours(std::ffi::OsStr::new(".stretcher-app.Ab12Cd.download")));
        // another dest's leftovers, and look-alikes, are not ours
        assert!(!w.is_ours(std::ffi::OsStr::new(".stretcher-app.x.Ab12Cd.staging")));
        assert!(!w.is_ours(std::ffi::OsStr::new(".stretcher-app.Ab12C.staging")));
        assert!(!w.is_ours(std::ffi::OsStr::new(".stretcher-app.Ab12Cd.other")));
        assert!(!w.is_ours(std::ffi::OsStr::new("app")));
    }
}
