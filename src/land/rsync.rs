//! `sync_strategy: rsync` (the default, SPEC §6): the staged tree is planned against
//! dest and the plan applied (`sync`); unchanged files are left in dest by the unpack
//! and never written.

use std::sync::Arc;

use crate::digest::KnownLater;
use crate::error::Result;
use crate::filter::Filter;
use crate::index;
use crate::record;
use crate::staging::Staging;
use crate::sync::{self, dry_run, DestProbe, SyncOptions};
use crate::unpack::Staged;
use crate::verify::Verified;

use super::{known_later, probe, staging_beside, Ctx, Land, Landed, Stage};

/// The rsync strategy of one deploy.
pub(super) struct Rsync<'a> {
    ctx: Ctx<'a>,
    /// A dry run: dest's files are compared by the plan, not left out by the unpack.
    dry_run: bool,
    /// What dest's index says of its files' content (the probe's and the plan's),
    /// read on a thread of its own from the start of the deploy.
    known: Arc<KnownLater>,
    /// `known` was taken by a landing (see `land`): read again whole for another
    /// unpack.
    taken: bool,
}

impl<'a> Rsync<'a> {
    pub(super) fn new(ctx: Ctx<'a>, dry_run: bool) -> Rsync<'a> {
        let known = known_later(&ctx);
        Rsync {
            ctx,
            dry_run,
            known,
            taken: false,
        }
    }
}

impl Land for Rsync<'_> {
    /// Staging beside dest; dest's unchanged files (size, mtime, mode, owner) are left
    /// where they are, not written (not in a dry run).
    fn stage(&mut self, reuse: bool) -> Result<Stage> {
        if std::mem::take(&mut self.taken) {
            self.known = known_later(&self.ctx);
        }
        let probed = (reuse && !self.dry_run).then(|| (self.ctx.dest, self.known.clone()));
        let mut stage = staging_beside(&self.ctx, probed)?;
        // The plan of `land` lists staging from the unpack (a dry run's walks it).
        stage.list_written = !self.dry_run;
        Ok(stage)
    }

    fn dry_run_probe(&self) -> Result<Option<DestProbe>> {
        Ok(Some(probe(
            &self.ctx,
            self.ctx.dest,
            true,
            self.known.clone(),
        )))
    }

    fn dry_run(&self, staged: &Verified<Staged>, filter: &Filter) -> Result<Vec<dry_run::Change>> {
        dry_run::planned(
            staged,
            self.ctx.dest,
            filter,
            self.known.get().map(|k| &**k),
        )
    }

    /// The plan, applied; the index is the plan's view of the result (no walk).
    /// `Error::Stale` when a file the unpack left in dest changed since (by `pre`):
    /// the pipeline unpacks again in full.
    fn land(
        &mut self,
        staging: Staging,
        mut staged: Verified<Staged>,
        filter: &Filter,
        mode: u32,
        _settings: &index::Header,
    ) -> Result<Landed> {
        let Ctx {
            dest,
            same_owner,
            verbosity,
            ..
        } = self.ctx;
        let sync_opts = SyncOptions {
            verbosity,
            preserve_owner: same_owner,
            // staging is private and discarded: rename from it instead of copying
            move_source: true,
            dest_mode: Some(mode),
        };
        // The plan asks the index only of files in staging: those the unpack left in
        // dest are never asked about again, so their digests go before dest is listed.
        let reused = &staged.get().reused;
        // The stage's probe is gone: the digests are this landing's alone (a copy
        // only if not).
        let mut known = match Arc::get_mut(&mut self.known) {
            Some(k) => k.take(),
            None => self.known.get().cloned(),
        };
        self.taken = true;
        if let Some(k) = known.take_if(|_| !reused.is_empty()) {
            let mut k = Arc::unwrap_or_clone(k);
            k.retain_keys(|key| reused.get_key(key).is_none());
            known = Some(Arc::new(k));
        }
        let plan =
            sync::plan_staged_listed(&mut staged, dest, filter, &sync_opts, known.as_deref())?;
        // Planned: the index's digests are not asked again (a `Stale` plan above has
        // them read again whole by `stage`).
        drop(known);
        let stats = sync::apply(&plan, &sync_opts)?;
        // What is left of staging (the directories the unpack made) goes while the
        // index is built and written.
        let removal = staging.remove_behind();
        // Of the staged tree only the digests are needed any more (for the index).
        let digests = staged.into_inner().digests;
        Ok(Landed {
            changes: record::Changes::from(&stats),
            entries: Ok(index::from_plan(plan, same_owner)),
            digests,
            release: None,
            removal: Some(removal),
        })
    }
}
