//! `sync_strategy: release` (SPEC §14) as a strategy: the archive is unpacked into
//! `RELEASES_DIR/.ID.partial` with the live release's unchanged files hard-linked
//! (the unpack's quick check, `link_unchanged`), the excludes are taken out of the
//! unpack's own listing, the release completed by one rename and dest switched to it;
//! after `post` the release is confirmed (and old ones cleaned up), or dest flipped back
//! and the release marked bad.
//!
//! The releases store itself (IDs, metadata, listing, switch, cleanup, rollback) is
//! `crate::release`; this file only drives it for one deploy. The index of a release
//! is the unpack's listing of what it wrote (`Staged::written`), with the excludes
//! applied to that listing and the release directory read once after its rename: no
//! walk of the new release (SPEC §11).
//!
//! Other local users (SPEC §17): the partial release is opened as a tree as soon as
//! it is made, and from then on reached only through that descriptor (its mode, the
//! excludes taken out, its listing's root); its rename to `ID` never replaces a name
//! and is checked to have moved that very directory.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::at::{self, Tree};
use crate::entry::{Entry, Kind, Meta};
use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;
use crate::index;
use crate::logln;
use crate::record;
use crate::release::{self, DestState, Releases};
use crate::staging::Staging;
use crate::sync::{dry_run, DestProbe};
use crate::unpack::Staged;
use crate::verify::Verified;

use super::{known_later, probe, staging_beside, Ctx, Land, Landed, Stage};
use crate::strategy::Strategy;

/// The release strategy of one deploy.
pub(super) struct Releaser<'a> {
    ctx: Ctx<'a>,
    /// Where the new release goes; `None` in a dry run (which makes no directory).
    slot: Option<Slot>,
    /// The partial release of the last `stage`, opened as soon as it was made.
    partial: Option<Tree>,
    /// Set once dest points at the new release: what `undo` and `confirm` need.
    switched: Option<Switched>,
}

/// Where the new release goes, decided before anything is downloaded.
struct Slot {
    /// The releases directory, opened once.
    dir: Releases,
    /// The release dest pointed at when the deploy began (the unpack's probe).
    live: Option<String>,
    /// The new release's sequence number and ID.
    seq: u64,
    id: String,
    /// `.ID.partial`, its name in the releases directory, and its path, where the
    /// unpack writes.
    partial_name: String,
    partial: PathBuf,
}

/// dest switched to the new release: its metadata (not yet confirmed) and the release
/// dest pointed at before.
struct Switched {
    meta: release::Meta,
    previous: Option<String>,
}

impl<'a> Releaser<'a> {
    /// The releases directory made (a killed run's leftovers removed) and the new
    /// release's ID, unless `dry_run`.
    pub(super) fn new(ctx: Ctx<'a>, dry_run: bool) -> Result<Releaser<'a>> {
        let slot = if dry_run {
            None
        } else {
            Some(Slot::take(&ctx)?)
        };
        Ok(Releaser {
            ctx,
            slot,
            partial: None,
            switched: None,
        })
    }

    fn slot(&self) -> Result<&Slot> {
        // Only a dry run has no slot, and a dry run never lands.
        self.slot.as_ref().ok_or_else(|| Error::Release {
            path: self.ctx.dest.to_path_buf(),
            msg: "a dry run does not make a release".into(),
        })
    }
}

impl Slot {
    fn take(ctx: &Ctx) -> Result<Slot> {
        let dest = ctx.dest;
        let path = release::releases_dir(ctx.manifest, dest)?;
        let before = release::dest_state(dest, &path)?;
        let dir = Releases::create(&path)?;
        release::remove_leftovers(&dir, dest);
        let live = match before {
            DestState::Live(id) => Some(id),
            _ => None,
        };
        let seq = release::list(&dir)?
            .iter()
            .map(|r| r.meta.seq)
            .max()
            .unwrap_or(0)
            + 1;
        let checksum = checksum_hex(ctx);
        let id = release::next_id(Some(&dir), &checksum, chrono::Utc::now());
        let partial_name = release::partial_name(&id);
        let partial = dir.join(&partial_name);
        Ok(Slot {
            dir,
            live,
            seq,
            id,
            partial_name,
            partial,
        })
    }
}

fn checksum_hex(ctx: &Ctx) -> String {
    (ctx.manifest.checksum.as_ref())
        .map(|c| c.hex().to_ascii_lowercase())
        .unwrap_or_default()
}

impl Land for Releaser<'_> {
    /// The partial release, the live release's unchanged files hard-linked into it; in
    /// a dry run, staging beside dest.
    fn stage(&mut self, reuse: bool) -> Result<Stage> {
        let Some(slot) = &self.slot else {
            return staging_beside(&self.ctx, None);
        };
        // Exact by content: a file is linked only when it holds the archive's bytes.
        let probe: Option<DestProbe> = match (&slot.live, reuse) {
            (Some(live), true) => Some(probe(
                &self.ctx,
                &slot.dir.join(live),
                false,
                known_later(&self.ctx),
            )),
            _ => None,
        };
        let staging = Staging::create_at(&slot.partial)?;
        // From now on the partial release is this very directory (SPEC §17).
        let tree = (slot.dir.tree().sub(Path::new(&slot.partial_name)))
            .map_err(|e| Error::io("open directory", &slot.partial, e))?;
        self.partial = Some(tree);
        Ok(Stage {
            staging,
            probe,
            // (which lists what the unpack wrote: the release's listing)
            link_unchanged: true,
            list_written: false,
            reused_how: format!(
                "linked from {}",
                slot.live.as_deref().unwrap_or("no live release")
            ),
        })
    }

    /// The live release, as a real deploy's stage compares with it.
    fn dry_run_probe(&self) -> Result<Option<DestProbe>> {
        let live = release::live_release(self.ctx.manifest, self.ctx.dest)?;
        Ok(live.map(|l| probe(&self.ctx, &l, false, known_later(&self.ctx))))
    }

    /// The new release's changes against the live one, and the switch.
    fn dry_run(&self, staged: &Verified<Staged>, filter: &Filter) -> Result<Vec<dry_run::Change>> {
        let (live, target) = release::dry_run_target(self.ctx.manifest, self.ctx.dest)?;
        let empty = tempfile::tempdir().map_err(|e| Error::io("create temp dir", "", e))?;
        let against = live.unwrap_or_else(|| empty.path().join("none"));
        let mut changes = dry_run::planned(staged, &against, filter, None)?;
        changes.push(dry_run::Change::switch(self.ctx.dest, &target));
        Ok(changes)
    }

    /// The excludes taken out, the mode set, the metadata written, the partial release
    /// renamed to its ID (complete) and dest switched to it.
    fn land(
        &mut self,
        staging: Staging,
        staged: Verified<Staged>,
        filter: &Filter,
        mode: u32,
        settings: &index::Header,
    ) -> Result<Landed> {
        let Ctx { dest, state, .. } = self.ctx;
        let slot = self.slot()?;
        let (id, partial) = (&slot.id, &slot.partial);
        let part = self.partial.as_ref().ok_or_else(|| Error::Release {
            path: partial.clone(),
            msg: "the partial release was never made".into(),
        })?;
        // What the unpack wrote is the release's listing (SPEC §11: no second walk).
        let Staged {
            written, digests, ..
        } = staged.into_inner();
        // `link_unchanged` (`stage`) always lists what the unpack wrote.
        let mut listed = written.ok_or_else(|| Error::Release {
            path: partial.clone(),
            msg: "the unpack did not list the release".into(),
        })?;
        let excluded = remove_excluded(part, filter, &mut listed)?;
        if excluded > 0 {
            logln!("Left {excluded} excluded entries out of release {id}");
        }
        at::chmod_fd(part.fd(), mode).ctx("chmod", partial)?;

        // `pre` may have changed dest: check again, right before the switch.
        let previous = match release::dest_state(dest, slot.dir.path())? {
            DestState::Live(id) => Some(id),
            _ => None,
        };
        let meta = release::Meta {
            schema: 1,
            id: id.clone(),
            dest: dest.to_path_buf(),
            checksum: settings.checksum.clone(),
            seq: slot.seq,
            created: release::now_rfc3339(),
            deployed: None,
            bad: false,
            reason: None,
            index: Some(settings.clone()),
        };
        release::write_meta(&slot.dir, &meta)?;
        let path = slot.dir.join(id);
        let t = slot.dir.tree();
        (t.rename_new(Path::new(&slot.partial_name), t, Path::new(id)))
            .ctx("rename onto", &path)?;
        // Complete: the directory is the release's now, no longer staging.
        let _ = staging.keep();
        let moved = t.lstat(Path::new(id)).ctx("stat", &path)?;
        if Some((moved.st_dev, moved.st_ino)) != part.id().ok() {
            return Err(Error::Unsafe {
                what: "release",
                path,
                msg: "it is not the directory that was unpacked (replaced while the deploy ran)"
                    .into(),
            });
        }
        logln!("Release {id} is complete in {}", slot.dir.path().display());
        if let Err(e) = release::switch(dest, &path) {
            // Never live: take the new release away again.
            let _ = release::remove_release(&slot.dir, id);
            return Err(e);
        }
        logln!(
            "Switched {} to release {id}{}",
            dest.display(),
            previous
                .as_deref()
                .map(|p| format!(" (was {p})"))
                .unwrap_or_default()
        );
        let entries = release_entries(part, &path, listed);
        // What changed against the previous release (read before a cleanup can take it).
        let changes = match &entries {
            Ok(new) => {
                let old = previous_entries(&slot.dir, state, dest, previous.as_deref(), filter);
                changes(&old, new)
            }
            Err(_) => record::Changes::default(),
        };
        let release = Some(id.clone());
        self.switched = Some(Switched { meta, previous });
        Ok(Landed {
            changes,
            entries,
            digests,
            release,
            removal: None,
        })
    }

    /// dest flipped back to the release it pointed at (or removed on a first deploy),
    /// and the new release marked bad.
    fn undo(&mut self, why: &Error) {
        let (Some(slot), Some(switched)) = (&self.slot, &self.switched) else {
            return;
        };
        let id = &slot.id;
        release::switch_back(self.ctx.dest, &slot.dir, switched.previous.as_deref());
        if let Err(m) = release::mark(&slot.dir, id, true, Some(format!("post failed: {why}"))) {
            logln!("warning: could not mark release {id} bad: {m}");
        }
        logln!("Marked release {id} bad (kept for inspection until the next successful deploy)");
    }

    /// The release confirmed (its deployed time), then old releases cleaned up.
    fn confirm(&mut self) -> Result<()> {
        let (Some(slot), Some(switched)) = (&self.slot, self.switched.take()) else {
            return Ok(());
        };
        let confirmed = release::Meta {
            deployed: Some(release::now_rfc3339()),
            ..switched.meta
        };
        release::write_meta(&slot.dir, &confirmed)?;
        logln!("Release {} is live in {}", slot.id, self.ctx.dest.display());
        release::cleanup(&slot.dir, &slot.id, self.ctx.manifest.keep_releases)
    }
}

/// Removes the excluded entries of a freshly unpacked tree (an excluded directory with
/// its subtree) and drops them from `listed`, the unpack's listing of that tree (sorted
/// by path): the filter is applied to the listing, as the sync's walk would apply it,
/// not to a second walk. The mtimes of the directories they were in are restored, and
/// those directories listed again as they are now. Answers how many were removed.
fn remove_excluded(root: &Tree, filter: &Filter, listed: &mut Vec<Entry>) -> Result<usize> {
    if filter.is_empty() {
        return Ok(0);
    }
    // Sorted by path, a directory comes before everything below it.
    let mut pruned: HashSet<Vec<u8>> = HashSet::new();
    let mut doomed: Vec<(Vec<u8>, bool)> = Vec::new();
    listed.retain(|e| {
        let is_dir = e.kind() == Kind::Dir;
        let parent = e
            .path
            .iter()
            .rposition(|&b| b == b'/')
            .map(|i| &e.path[..i]);
        let gone = parent.is_some_and(|p| pruned.contains(p))
            || filter.is_excluded(Path::new(OsStr::from_bytes(&e.path)), is_dir);
        if gone {
            if is_dir {
                pruned.insert(e.path.to_vec());
            }
            if !parent.is_some_and(|p| pruned.contains(p)) {
                doomed.push((e.path.to_vec(), is_dir));
            }
        }
        !gone
    });
    // Everything relative to the partial release's descriptor (SPEC §17).
    let mut parents: Vec<PathBuf> = Vec::new();
    for (rel, is_dir) in &doomed {
        let rel = Path::new(OsStr::from_bytes(rel));
        let shown = root.shown(rel);
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let mtime = root
            .lstat(&parent)
            .ok()
            .map(|st| (st.st_mtime, st.st_mtime_nsec as u32));
        if *is_dir {
            let fd = root.open_dir(&parent).ctx("remove excluded", &shown)?;
            let name = rel.file_name().unwrap_or_default();
            at::remove_tree(std::os::fd::AsFd::as_fd(&fd), name, at::Owner::Any)
                .ctx("remove excluded", &shown)?;
            root.forget();
        } else {
            root.unlink(rel).ctx("remove excluded", &shown)?;
        }
        if let Some(t) = mtime {
            let _ = root.set_times(&parent, t, None);
        }
        if !parent.as_os_str().is_empty() && !parents.contains(&parent) {
            parents.push(parent);
        }
    }
    // The directories they were in, as they are now (the root is read after the rename).
    for parent in parents {
        let rel = parent.as_os_str().as_bytes();
        if let Ok(i) = listed.binary_search_by(|e| e.path[..].cmp(rel)) {
            let st = root.lstat(&parent).ctx("stat", root.shown(&parent))?;
            listed[i].meta = Meta::from(&st);
        }
    }
    Ok(doomed.len())
}

/// The index of a release from the unpack's listing of it (sorted, excluded entries
/// dropped): the release directory itself, read once now that it has its name and mode,
/// and everything below it. Equal to what `index::scan` of the release answers.
fn release_entries(tree: &Tree, release: &Path, mut listed: Vec<Entry>) -> Result<Vec<Entry>> {
    let st = tree.lstat(Path::new("")).ctx("stat", release)?;
    listed.insert(0, Entry::new(Path::new(""), Meta::from(&st), None));
    Ok(listed)
}

/// The listing of the previous release: dest's index when it is that release's (cheaper
/// than a walk), else a walk of it; none on a first deploy.
fn previous_entries(
    dir: &Releases,
    state: Option<&Path>,
    dest: &Path,
    previous: Option<&str>,
    filter: &Filter,
) -> Vec<Entry> {
    let indexed = |p: &str| {
        let sum = release::read_meta(dir, p)?.checksum;
        let (h, e) = index::read(state?, &record::key_for_dest(dest)).ok()??;
        (h.checksum == sum && h.strategy == Strategy::Release).then_some(e)
    };
    previous
        .and_then(|p| indexed(p).or_else(|| index::scan(&dir.join(p), filter).ok()))
        .unwrap_or_default()
}

/// The record's `changes` of a release against the one before it (SPEC §11).
fn changes(old: &[Entry], new: &[Entry]) -> record::Changes {
    let mut c = record::Changes::default();
    for d in index::diff(old, new) {
        match d.kind {
            "added" => c.created += 1,
            "deleted" => c.deleted += 1,
            _ => c.updated += 1,
        }
    }
    c.unchanged = (new.len() as u64).saturating_sub(c.created + c.updated);
    c
}
