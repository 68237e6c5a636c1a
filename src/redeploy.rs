//! The redeploy that downloads nothing (SPEC §11): decides whether `dest` already
//! holds what a manifest would deploy, from the last record of `dest`, its index,
//! and one walk of `dest` — never less exact than rsync's own decision (type,
//! size, mtime to the nanosecond as stored, mode, owner, link target; excluded
//! paths ignored, with the same rules as the deploy that wrote the index).
//!
//! It only reads: the state directory and `dest`.

use std::path::Path;
use std::time::Instant;

use crate::index;
use crate::logln;
use crate::record::{self, Outcome};
use crate::strategy::Strategy;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The settings of the deploy about to run, compared with the index's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted<'a> {
    pub checksum: &'a str,
    pub strategy: Strategy,
    pub dest_mode: Option<u32>,
    pub excludes: &'a [String],
    pub exclude_from: Option<&'a str>,
    pub euid: u32,
}

impl Wanted<'_> {
    /// The settings the index of this deploy records (SPEC §11), with its
    /// `exclude_from` file's bytes kept byte for byte; the time and entry count are
    /// filled in when it is saved.
    pub(crate) fn settings(&self, exclude_from: Option<Vec<u8>>) -> index::Header {
        let mut h = index::Header {
            checksum: self.checksum.to_string(),
            strategy: self.strategy,
            dest_mode: self.dest_mode,
            excludes: self.excludes.to_vec(),
            exclude_from: self.exclude_from.map(str::to_string),
            exclude_from_text: None,
            exclude_from_hex: None,
            euid: self.euid,
            written: String::new(),
            entries: 0,
        };
        h.set_exclude_from(exclude_from);
        h
    }
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// `dest` holds it: `deployed` is when the sync that made it so ran (the
    /// index's time), `entries` how many entries the walk compared.
    Skip { deployed: String, entries: u64 },
    /// Deploy as usual, because of `reason`; `warn`: the reason is a problem
    /// (a corrupt or missing index), not just a change.
    Deploy { reason: String, warn: bool },
}

fn deploy(reason: impl Into<String>) -> Decision {
    Decision::Deploy {
        reason: reason.into(),
        warn: false,
    }
}

fn warn(reason: impl Into<String>) -> Decision {
    Decision::Deploy {
        reason: reason.into(),
        warn: true,
    }
}

/// Whether a sync of the archive `want` names onto `dest` would change nothing.
pub(crate) fn check(state_dir: &Path, dest: &Path, want: &Wanted) -> Decision {
    let key = record::key_for_dest(dest);
    let Some(last) = record::last_by_key(state_dir, &key) else {
        return deploy("no earlier deploy of it is recorded");
    };
    if last.result != Outcome::Success {
        return deploy(format!("its last deploy ended in {}", last.result.as_str()));
    }
    if last.checksum.as_deref() != Some(want.checksum) {
        return deploy("its last deploy was another archive");
    }
    if last.strategy != Some(want.strategy) {
        return deploy("the sync strategy changed");
    }
    let t_read = Instant::now();
    let (header, entries) = match index::read(state_dir, &key) {
        Ok(Some(x)) => x,
        Ok(None) => return warn("its deploy index is missing"),
        Err(e) => return warn(format!("{e}")),
    };
    if header.checksum != want.checksum {
        return deploy("its index is of another archive");
    }
    if header.strategy != want.strategy {
        return deploy("the sync strategy changed");
    }
    if header.dest_mode != want.dest_mode {
        return deploy("dest_mode changed");
    }
    if header.excludes != want.excludes {
        return deploy("excludes changed");
    }
    if header.exclude_from.as_deref() != want.exclude_from {
        return deploy("exclude_from changed");
    }
    if header.euid != want.euid {
        return deploy("it was deployed by another user");
    }
    let filter = match header.filter() {
        Ok(f) => f,
        Err(e) => return warn(format!("its index has bad rules: {e}")),
    };
    let read_ms = ms(t_read);
    let t_walk = Instant::now();
    let now = match index::scan(dest, &filter) {
        Ok(n) => n,
        Err(e) => return deploy(format!("{e}")),
    };
    let bytes = std::fs::metadata(index::index_path(state_dir, &key)).map_or(0, |m| m.len());
    logln!(
        "redeploy check: index of {} entries ({bytes} bytes) read in {read_ms:.1} ms; dest walked in {:.1} ms",
        entries.len(),
        ms(t_walk)
    );
    let drift = index::diff(&entries, &now);
    if let Some(first) = drift.first() {
        let more = if drift.len() > 1 {
            format!(" and {} more", drift.len() - 1)
        } else {
            String::new()
        };
        return deploy(format!("dest changed since: {first}{more}"));
    }
    Decision::Skip {
        deployed: header.written,
        entries: now.len() as u64,
    }
}
