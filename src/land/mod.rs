//! The three sync strategies (SPEC §6, §14) as one seam — how the verified tree
//! lands in `dest` — and the one place the `Strategy` enum is matched
//! (`for_deploy`).
//!
//! The deploy pipeline (`deploy.rs`) is the same for every strategy: download and
//! unpack, `pre`, land, `post`, confirm or undo, index, record. A strategy answers only
//! what differs:
//! - where the archive is unpacked (`Land::stage`): a private staging directory
//!   beside `dest` (rsync, mv, and every dry run), or `RELEASES_DIR/.ID.partial`
//!   (release), and which tree the unpack's quick-check probe compares with (dest for
//!   rsync, the live release for release, none for mv);
//! - how the verified tree lands (`Land::land`): the sync's plan applied, a rename
//!   onto an empty dest, or the release completed and dest switched to it;
//! - what a dry run would change (`Land::dry_run`);
//! - for a release, how the switch is undone when `post` fails (`Land::undo`) and
//!   confirmed when it succeeds (`Land::confirm`).
//!
//! It never runs a hook, downloads, or writes the state directory: the pipeline does.

mod mv;
mod release;
mod rsync;

use std::path::Path;
use std::sync::Arc;

use crate::digest::{Digests, KnownLater};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::index;
use crate::manifest::Manifest;
use crate::record;
use crate::staging::{Staging, Workspace};
use crate::strategy::Strategy;
use crate::sync::{dry_run, DestProbe};
use crate::unpack::Staged;
use crate::verify::Verified;

/// The default mode of `dest` (or of a release directory) when neither the manifest
/// nor the archive says.
const DEFAULT_DEST_MODE: u32 = 0o755;

/// The one dest-mode rule (SPEC §6): the manifest's `dest_mode`, else the mode of the
/// archive's `.` entry, else 0755.
pub(crate) fn dest_mode(manifest: &Manifest, staged: &Staged) -> u32 {
    manifest
        .dest_mode
        .or(staged.root_mode)
        .unwrap_or(DEFAULT_DEST_MODE)
}

/// What every strategy of one deploy reads.
pub(crate) struct Ctx<'a> {
    pub manifest: &'a Manifest,
    pub dest: &'a Path,
    /// The state directory (for the previous release's index), if there is one.
    pub state: Option<&'a Path>,
    /// Where staging directories go (beside dest).
    pub work: &'a Workspace,
    /// Running as root: owners are kept.
    pub same_owner: bool,
    /// The sync's `-v` level.
    pub verbosity: u8,
}

/// Where one attempt unpacks the archive.
pub(crate) struct Stage {
    /// The directory the unpack fills; removed on drop unless the strategy keeps it.
    pub staging: Staging,
    /// The tree whose unchanged files the unpack leaves out (rsync: dest) or
    /// hard-links (release: the live release); `None`: every file is written.
    pub probe: Option<DestProbe>,
    /// Unchanged files are hard-linked into staging rather than left out.
    pub link_unchanged: bool,
    /// The unpack lists what it writes (`UnpackOptions::list_written`): the landing
    /// plans from that listing rather than a walk of staging.
    pub list_written: bool,
    /// How the log names what became of unchanged files (`left in place in DEST`).
    pub reused_how: String,
}

/// What landing the tree did: for the record and the index.
pub(crate) struct Landed {
    /// The record's `changes`.
    pub changes: record::Changes,
    /// The index of dest after the landing, or why there is none (a warning).
    pub entries: Result<Vec<crate::entry::Entry>>,
    /// The archive's content digests (the unpack's): those of dest's regular files
    /// after the landing, for the index.
    pub digests: Digests,
    /// The release dest now points at (release strategy).
    pub release: Option<String>,
    /// Staging, being removed while the deploy goes on (rsync strategy): held until
    /// the index is written, then waited for.
    pub removal: Option<crate::staging::Removal>,
}

/// One strategy of one deploy: see the module documentation.
pub(crate) trait Land {
    /// A fresh, empty place for one download attempt to unpack into; `reuse`: the
    /// unpack may leave out (or link) files the probe finds unchanged.
    fn stage(&mut self, reuse: bool) -> Result<Stage>;

    /// For `--dry-run` of a packed archive (SPEC §18): the tree a deploy's delta would
    /// compare the archive with, exactly as [`Land::stage`] gives it to a real deploy
    /// (dest, or the live release; the index's digests); `None`: nothing is compared.
    fn dry_run_probe(&self) -> Result<Option<DestProbe>> {
        Ok(None)
    }

    /// The `--dry-run` lines of landing `staged` (nothing is changed).
    fn dry_run(&self, staged: &Verified<Staged>, filter: &Filter) -> Result<Vec<dry_run::Change>>;

    /// Lands the verified tree in dest, with dest's mode `mode`; `settings` are what
    /// the index of the result records (a release keeps them in its metadata). A
    /// failure leaves dest as it was, but for the rsync strategy's partial sync.
    fn land(
        &mut self,
        staging: Staging,
        staged: Verified<Staged>,
        filter: &Filter,
        mode: u32,
        settings: &index::Header,
    ) -> Result<Landed>;

    /// `post` failed after [`Land::land`]: undo what can be undone (a release flips
    /// dest back and is marked bad). Logged; never fails.
    fn undo(&mut self, _why: &Error) {}

    /// `post` succeeded: make the landing final (a release is confirmed and old ones
    /// are cleaned up).
    fn confirm(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The strategy of `manifest` for one deploy onto `ctx.dest`. A dry run never makes a
/// releases directory: every strategy stages it beside dest.
pub(crate) fn for_deploy<'a>(ctx: Ctx<'a>, dry_run: bool) -> Result<Box<dyn Land + 'a>> {
    Ok(match ctx.manifest.sync_strategy {
        Strategy::Rsync => Box::new(rsync::Rsync::new(ctx, dry_run)),
        Strategy::Mv => Box::new(mv::Mv::new(ctx)),
        Strategy::Release => Box::new(release::Releaser::new(ctx, dry_run)?),
    })
}

/// What the deploy index of dest says of its files' content (SPEC §21), for the
/// unpack's probe and the plan, read on a thread of its own while the deploy goes on
/// and waited for when first asked (a delta deploy reads its table meanwhile); none
/// without a state directory, an index, or a readable one (then a found file is
/// compared with its bytes).
fn known_later(ctx: &Ctx) -> Arc<KnownLater> {
    let Some(state) = ctx.state else {
        return Arc::new(KnownLater::ready(None));
    };
    let (state, key) = (state.to_path_buf(), record::key_for_dest(ctx.dest));
    Arc::new(KnownLater::start(move || {
        index::read_known(&state, &key).ok().flatten()
    }))
}

/// The unpack's probe of `root`, exact by content: judged by `known` (the index's
/// digests), else by the found file's bytes; the `exclude_from` rule file is never
/// reused (always read from staging).
fn probe(ctx: &Ctx, root: &Path, follow: bool, known: Arc<KnownLater>) -> DestProbe {
    DestProbe::new(root, follow)
        .with_known_later(known)
        .never_reusing(crate::staging::exclude_from_rel(ctx.manifest))
}

/// A private staging directory beside dest, the probe (if any) over `probed`.
fn staging_beside(ctx: &Ctx, probed: Option<(&Path, Arc<KnownLater>)>) -> Result<Stage> {
    Ok(Stage {
        staging: ctx.work.staging_dir()?,
        probe: probed.map(|(dest, known)| probe(ctx, dest, true, known)),
        link_unchanged: false,
        list_written: false,
        reused_how: format!("left in place in {}", ctx.dest.display()),
    })
}
