//! `stretcher verify DEST` (SPEC §12): the drift of `dest` since its last
//! successful deploy, against that deploy's index. Read-only: it writes nothing,
//! in `dest` or in the state directory. A stat walk; with `--content` (SPEC §21)
//! every regular file is also read (through dest's descriptor, no symlink followed)
//! and its sha256 compared with the index's: `changed PATH (content)`.
//!
//! Exit 0: no drift; 1: drift; 2: nothing recorded for `dest` (or bad usage), or a
//! file `--content` could not read (and no drift).

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::cli::{Output, VerifyOptions};
use crate::digest;
use crate::entry::Entry;
use crate::index::{self, Drift};
use crate::record;
use crate::state;
use crate::Env;

/// What `verify --json` prints.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub dest: String,
    pub checksum: String,
    pub deployed: String,
    pub drift: Vec<Drift>,
    /// `--content`: what could not be checked (files without a digest in the index,
    /// files that could not be read), one line each; not in the JSON.
    #[serde(skip)]
    pub notes: Vec<String>,
    /// `--content`: a file could not be read.
    #[serde(skip)]
    pub unreadable: bool,
}

/// Runs `verify` with the process's environment: the drift (exit 1 when there is
/// any, else 0), or why there is nothing to compare with (exit 2).
pub fn main(opts: &VerifyOptions) -> Output {
    let env = |k: &str| std::env::var(k).ok();
    match report(opts, &env) {
        Ok(r) => {
            let mut out = String::new();
            if opts.json {
                // A struct of strings always serialises.
                out = serde_json::to_string(&r).unwrap_or_default();
                out.push('\n');
            } else {
                for d in &r.drift {
                    out.push_str(&format!("{d}\n"));
                }
            }
            let code = match (r.drift.is_empty(), r.unreadable) {
                (false, _) => 1,
                (true, true) => 2,
                (true, false) => 0,
            };
            let mut o = Output::stdout(out, code);
            for n in &r.notes {
                o.stderr.push_str(&format!("stretcher verify: {n}\n"));
            }
            o
        }
        Err(msg) => Output::stderr(format!("stretcher verify: {msg}"), 2),
    }
}

/// `dest` as the manifest has it: absolute, without `.` components, doubled or
/// trailing slashes.
pub(crate) fn normalize_dest(dest: &Path) -> PathBuf {
    let abs = if dest.is_absolute() {
        dest.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(dest))
            .unwrap_or_else(|_| dest.to_path_buf())
    };
    abs.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The drift report, or why there is none to make (exit 2).
pub(crate) fn report(opts: &VerifyOptions, env: Env) -> Result<Report, String> {
    let dest = normalize_dest(&opts.dest);
    let dir = state::find_state_dir(opts.state_dir.as_deref(), env)
        .ok_or_else(|| "no state directory (give --state-dir)".to_string())?;
    let key = record::key_for_dest(&dest);
    let none = || {
        format!(
            "no successful deploy of {} is recorded in {}",
            dest.display(),
            dir.display()
        )
    };
    let indexed = match index::read_all(&dir, &key) {
        Ok(Some(x)) => x,
        Ok(None) => return Err(none()),
        Err(e) => return Err(format!("{e}")),
    };
    let (header, entries) = (&indexed.header, &indexed.entries);
    let filter = header.filter().map_err(|e| e.to_string())?;
    let now = match index::scan(&dest, &filter) {
        Ok(now) => now,
        // dest is gone (or not a directory): everything recorded was deleted.
        Err(_) if std::fs::symlink_metadata(&dest).is_err() => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    // When the sync that made dest so ran (the index's time).
    let deployed = header.written.clone();
    let mut notes = Vec::new();
    let mut unreadable = false;
    let drift = if opts.content {
        let tree = crate::at::Tree::open(&dest, true).ok();
        let (mut unknown, mut buf) = (0u64, vec![0u8; 256 * 1024]);
        let mut content = |i: usize, e: &Entry| {
            let Ok(k) = indexed.digests.binary_search_by(|(p, _)| p.cmp(&i)) else {
                unknown += 1;
                return false;
            };
            let read = tree
                .as_ref()
                .ok_or_else(|| std::io::Error::other("dest cannot be opened"))
                .and_then(|t| digest::open_regular(t, e.rel()))
                .and_then(|mut f| digest::of_reader(&mut f, &mut buf));
            match read {
                Ok(d) => d != indexed.digests[k].1,
                Err(err) => {
                    notes.push(format!("cannot read {}: {err}", e.display_path()));
                    unreadable = true;
                    false
                }
            }
        };
        let drift = index::diff_with(entries, &now, &mut content);
        if unknown > 0 {
            notes.push(format!(
                "{unknown} files have no digest in the index (deployed by an older stretcher, or sparse files larger than 256 MiB): their content is not checked"
            ));
        }
        drift
    } else {
        index::diff(entries, &now)
    };
    Ok(Report {
        dest: dest.display().to_string(),
        checksum: header.checksum.clone(),
        deployed,
        drift,
        notes,
        unreadable,
    })
}
