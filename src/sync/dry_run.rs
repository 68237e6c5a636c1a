//! `--dry-run`: the lines a deploy would act on, rendered from the [`Plan`] (rsync, and
//! the release strategy against the live release) or from the staged tree (mv), and
//! the hooks it would run, on stdout.
//!
//! It must never change anything: it plans, walks and prints.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{plan_staged, tree, Op, Plan, SyncOptions};
use crate::entry::Kind;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::logln;
use crate::manifest::{Manifest, Strategy};
use crate::unpack::Staged;
use crate::verify::Verified;

/// The unpacked tree a dry run reports on.
pub(crate) struct Tree<'a> {
    /// The verified staged tree.
    pub staged: &'a Verified<Staged>,
    /// The deploy's `dest`.
    pub dest: &'a Path,
    /// The exclude rules.
    pub filter: &'a Filter,
    /// With `sync_strategy: release`: the live release's directory (None on a first
    /// deploy) and the switch's target (`release::dry_run_target`).
    pub release: Option<(Option<PathBuf>, PathBuf)>,
}

/// One line of `--dry-run` output: `VERB PATH[TAIL]`.
struct Change {
    verb: &'static str,
    rel: PathBuf,
    /// `/` for a directory, ` -> TARGET` for a symlink, else empty.
    tail: Vec<u8>,
}

/// Prints on stdout, one line each and in the order a deploy would do them, the hooks
/// it would run (`run pre: COMMAND`) and what would change in dest: `add PATH`,
/// `update PATH` (content, link target or type differs), `delete PATH` (dest-relative,
/// as bytes), `switch DEST -> TARGET`. `tree` is None for a commands-only manifest (or
/// a redeploy that downloads nothing).
pub(crate) fn print(manifest: &Manifest, tree: Option<Tree>) -> Result<()> {
    let mut changes = Vec::new();
    if let Some(tree) = tree {
        changes = planned_changes(manifest.sync_strategy, &tree)?;
        let count = |verb: &str| changes.iter().filter(|c| c.verb == verb).count();
        logln!(
            "Dry run: {} to add, {} to update, {} to delete in {}",
            count("add"),
            count("update"),
            count("delete"),
            tree.dest.display()
        );
    }
    let mut out: Vec<u8> = Vec::new();
    let hooks = |out: &mut Vec<u8>, which: &str, commands: &[String]| {
        for c in commands {
            let line = format!("run {which}: {}\n", c.replace('\n', "\\n"));
            out.extend_from_slice(line.as_bytes());
        }
    };
    hooks(&mut out, "pre", &manifest.commands.pre);
    for c in &changes {
        let rel = if c.rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &c.rel
        };
        out.extend_from_slice(c.verb.as_bytes());
        out.push(b' ');
        out.extend_from_slice(rel.as_os_str().as_bytes());
        out.extend_from_slice(&c.tail);
        out.push(b'\n');
    }
    hooks(&mut out, "post", &manifest.commands.post);
    hooks(&mut out, "success", &manifest.commands.success);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("write", "stdout", e))
}

fn arrow(target: &Path) -> Vec<u8> {
    let mut t = b" -> ".to_vec();
    t.extend_from_slice(target.as_os_str().as_bytes());
    t
}

/// What the sync step would change in dest: the plan's changes (rsync), every entry
/// of the unpacked tree (mv, which renames it onto dest), or the new release's changes
/// against the live one and the switch (release).
fn planned_changes(strategy: Strategy, tree: &Tree) -> Result<Vec<Change>> {
    let opts = SyncOptions::default();
    match (strategy, &tree.release) {
        (Strategy::Mv, _) => mv_changes(tree),
        (Strategy::Release, None) => Ok(Vec::new()),
        (Strategy::Release, Some((live, target))) => {
            let empty = tempfile::tempdir().map_err(|e| Error::io("create temp dir", "", e))?;
            let against = live.clone().unwrap_or_else(|| empty.path().join("none"));
            let plan = plan_staged(tree.staged, &against, tree.filter, &opts)?;
            let mut changes = changes(&plan);
            changes.push(Change {
                verb: "switch",
                rel: tree.dest.to_path_buf(),
                tail: arrow(target),
            });
            Ok(changes)
        }
        (Strategy::Rsync, _) => Ok(changes(&plan_staged(
            tree.staged,
            tree.dest,
            tree.filter,
            &opts,
        )?)),
    }
}

/// mv renames the staged tree onto dest: every entry of it is added.
fn mv_changes(tree: &Tree) -> Result<Vec<Change>> {
    let dest = tree.dest;
    logln!(
        "Dry run: sync_strategy mv renames the unpacked tree onto {}",
        dest.display()
    );
    if std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
        logln!(
            "Dry run: {} is not empty: mv fails unless a pre command empties it",
            dest.display()
        );
    }
    let walked = tree::walk(&tree.staged.get().root, Path::new(""), &Filter::empty())?;
    let changes = walked.entries.into_iter().map(|e| {
        let tail = match (e.kind(), e.target_path()) {
            (Kind::Dir, _) => b"/".to_vec(),
            (_, Some(target)) => arrow(target),
            _ => Vec::new(),
        };
        Change {
            verb: "add",
            rel: e.rel().to_path_buf(),
            tail,
        }
    });
    Ok(changes.collect())
}

/// The plan's creations, replacements and deletions as lines.
fn changes(plan: &Plan) -> Vec<Change> {
    let verb = |existing: &Option<Kind>| match existing {
        Some(_) => "update",
        None => "add",
    };
    let changes = plan.changes().filter_map(|a| {
        let (verb, tail) = match &a.op {
            Op::Delete { dest } if dest.kind() == Kind::Dir => ("delete", b"/".to_vec()),
            Op::Delete { .. } => ("delete", Vec::new()),
            Op::MakeDir { existing, .. } => (verb(existing), b"/".to_vec()),
            Op::CopyFile { existing, .. } | Op::MakeSpecial { existing, .. } => {
                (verb(existing), Vec::new())
            }
            Op::MakeSymlink {
                target, existing, ..
            } => (verb(existing), arrow(target)),
            // The directory stays (it holds excluded entries; its other entries have
            // their own `delete` lines). Attribute fixes are not changes.
            Op::KeepNonEmpty { .. } | Op::Keep { .. } | Op::DirAttrs { .. } => return None,
        };
        Some(Change {
            verb,
            rel: a.rel.clone(),
            tail,
        })
    });
    changes.collect()
}
