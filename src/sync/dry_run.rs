//! `--dry-run`: the lines a deploy would act on, rendered from the [`Plan`] (rsync, and
//! the release strategy against the live release) or from the staged tree (mv), and
//! the hooks it would run, on stdout.
//!
//! It must never change anything: it plans, walks and prints.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{plan_staged_with, tree, Op, Plan, SyncOptions};
use crate::digest::Known;
use crate::entry::Kind;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::logln;
use crate::manifest::Manifest;
use crate::unpack::Staged;
use crate::verify::Verified;

/// One line of `--dry-run` output: `VERB PATH[TAIL]`.
pub(crate) struct Change {
    verb: &'static str,
    rel: PathBuf,
    /// `/` for a directory, ` -> TARGET` for a symlink, else empty.
    tail: Vec<u8>,
}

/// Prints on stdout, one line each and in the order a deploy would do them, the hooks
/// it would run (`run pre: COMMAND`) and what would change in dest: `add PATH`,
/// `update PATH` (content, link target or type differs), `delete PATH` (dest-relative,
/// as bytes), `switch DEST -> TARGET`. `changes` (what the strategy would do to
/// `dest`) is None for a commands-only manifest (or a redeploy that downloads nothing).
pub(crate) fn print(manifest: &Manifest, changes: Option<(&Path, Vec<Change>)>) -> Result<()> {
    let changes = match changes {
        Some((dest, changes)) => {
            let count = |verb: &str| changes.iter().filter(|c| c.verb == verb).count();
            logln!(
                "Dry run: {} to add, {} to update, {} to delete in {}",
                count("add"),
                count("update"),
                count("delete"),
                dest.display()
            );
            changes
        }
        None => Vec::new(),
    };
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

impl Change {
    /// `switch DEST -> TARGET`: the release switch.
    pub(crate) fn switch(dest: &Path, target: &Path) -> Change {
        Change {
            verb: "switch",
            rel: dest.to_path_buf(),
            tail: arrow(target),
        }
    }
}

/// What the rsync strategy would change in `dest` (or the release strategy in a new
/// release against `against`, the live one): the plan's changes, content-only ones
/// included (by `known`, the index's digests, else by reading `against`'s files).
pub(crate) fn planned(
    staged: &Verified<Staged>,
    against: &Path,
    filter: &Filter,
    known: Option<&Known>,
) -> Result<Vec<Change>> {
    Ok(changes(&plan_staged_with(
        staged,
        against,
        filter,
        &SyncOptions::default(),
        known,
    )?))
}

/// mv renames the staged tree onto dest: every entry of it is added.
pub(crate) fn renamed(staged: &Verified<Staged>, dest: &Path) -> Result<Vec<Change>> {
    logln!(
        "Dry run: sync_strategy mv renames the unpacked tree onto {}",
        dest.display()
    );
    let holds_something = tree::open_dest(dest)
        .ok()
        .flatten()
        .is_some_and(|t| t.names(Path::new("")).is_ok_and(|n| !n.is_empty()));
    if holds_something {
        logln!(
            "Dry run: {} is not empty: mv fails unless a pre command empties it",
            dest.display()
        );
    }
    let src = super::open_source(staged.get())?;
    let walked = tree::walk(&src, Path::new(""), &Filter::empty())?;
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
            rel: a.rel.to_path_buf(),
            tail,
        })
    });
    changes.collect()
}
