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

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::entry::{Entry, Kind, Meta};
use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;
use crate::index;
use crate::logln;
use crate::record;
use crate::release::{self, DestState};
use crate::staging::{make_writable_and_remove, Staging};
use crate::sync::{dry_run, DestProbe};
use crate::unpack::Staged;
use crate::verify::Verified;

use super::{staging_beside, Ctx, Land, Landed, Stage};
use crate::strategy::Strategy;

/// The release strategy of one deploy.
pub(super) struct Releaser<'a> {
    ctx: Ctx<'a>,
    /// Where the new release goes; `None` in a dry run (which makes no directory).
    slot: Option<Slot>,
    /// Set once dest points at the new release: what `undo` and `confirm` need.
    switched: Option<Switched>,
}

/// Where the new release goes, decided before anything is downloaded.
struct Slot {
    /// The releases directory.
    dir: PathBuf,
    /// The release dest pointed at when the deploy began (the unpack's probe).
    live: Option<String>,
    /// The new release's sequence number and ID.
    seq: u64,
    id: String,
    /// `RELEASES_DIR/.ID.partial`, where the unpack writes.
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
        let dir = release::releases_dir(ctx.manifest, dest)?;
        let before = release::dest_state(dest, &dir)?;
        fs::create_dir_all(&dir).ctx("create directory", &dir)?;
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
        let id = release::next_id(&dir, &checksum, chrono::Utc::now());
        let partial = release::partial_path(&dir, &id);
        Ok(Slot {
            dir,
            live,
            seq,
            id,
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
        let probe = match (&slot.live, reuse) {
            (Some(live), true) => Some(DestProbe::new(slot.dir.join(live))),
            _ => None,
        };
        Ok(Stage {
            staging: Staging::create_at(&slot.partial)?,
            probe,
            link_unchanged: true,
            // Unchanged files are hard links in the partial release itself.
            reused_in: slot.partial.clone(),
            reused_how: format!(
                "linked from {}",
                slot.live.as_deref().unwrap_or("no live release")
            ),
        })
    }

    /// The new release's changes against the live one, and the switch.
    fn dry_run(&self, staged: &Verified<Staged>, filter: &Filter) -> Result<Vec<dry_run::Change>> {
        let (live, target) = release::dry_run_target(self.ctx.manifest, self.ctx.dest)?;
        let empty = tempfile::tempdir().map_err(|e| Error::io("create temp dir", "", e))?;
        let against = live.unwrap_or_else(|| empty.path().join("none"));
        let mut changes = dry_run::planned(staged, &against, filter)?;
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
        // What the unpack wrote is the release's listing (SPEC §11: no second walk).
        let mut listed = staged.into_inner().written;
        let excluded = remove_excluded(partial, filter, &mut listed)?;
        if excluded > 0 {
            logln!("Left {excluded} excluded entries out of release {id}");
        }
        fs::set_permissions(partial, fs::Permissions::from_mode(mode)).ctx("chmod", partial)?;

        // `pre` may have changed dest: check again, right before the switch.
        let previous = match release::dest_state(dest, &slot.dir)? {
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
        fs::rename(partial, &path).ctx("rename onto", &path)?;
        // Complete: the directory is the release's now, no longer staging.
        let _ = staging.keep();
        logln!("Release {id} is complete in {}", slot.dir.display());
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
        let entries = release_entries(&path, listed);
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
            release,
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
fn remove_excluded(root: &Path, filter: &Filter, listed: &mut Vec<Entry>) -> Result<usize> {
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
    let mut parents: Vec<PathBuf> = Vec::new();
    for (rel, is_dir) in &doomed {
        let path = root.join(OsStr::from_bytes(rel));
        let parent = path.parent().unwrap_or(root).to_path_buf();
        let mtime = fs::symlink_metadata(&parent)
            .ok()
            .map(|m| filetime::FileTime::from_last_modification_time(&m));
        if *is_dir {
            make_writable_and_remove(&path).ctx("remove excluded", &path)?;
        } else {
            fs::remove_file(&path).ctx("remove excluded", &path)?;
        }
        if let Some(t) = mtime {
            let _ = filetime::set_file_mtime(&parent, t);
        }
        if parent != root && !parents.contains(&parent) {
            parents.push(parent);
        }
    }
    // The directories they were in, as they are now (the root is read after the rename).
    for parent in parents {
        let rel = parent.strip_prefix(root).unwrap_or(&parent);
        let rel = rel.as_os_str().as_bytes();
        if let Ok(i) = listed.binary_search_by(|e| e.path[..].cmp(rel)) {
            let m = fs::symlink_metadata(&parent).ctx("stat", &parent)?;
            listed[i].meta = Meta::from(&m);
        }
    }
    Ok(doomed.len())
}

/// The index of a release from the unpack's listing of it (sorted, excluded entries
/// dropped): the release directory itself, read once now that it has its name and mode,
/// and everything below it. Equal to what `index::scan` of the release answers.
fn release_entries(release: &Path, mut listed: Vec<Entry>) -> Result<Vec<Entry>> {
    let m = fs::metadata(release).ctx("stat", release)?;
    listed.insert(0, Entry::new(Path::new(""), Meta::from(&m), None));
    Ok(listed)
}

/// The listing of the previous release: dest's index when it is that release's (cheaper
/// than a walk), else a walk of it; none on a first deploy.
fn previous_entries(
    dir: &Path,
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
