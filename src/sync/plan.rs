//! The plan: two [`Listing`]s × the filter (× the kept files) → a [`Plan`] of plain
//! data, by a merge-join of the two sorted walks.
//!
//! Pure: it must never touch the disk (everything it needs, link targets included, is
//! in the listings), so it is tested on listings made in memory. Both listings are
//! consumed: the source's entries become the plan's [`Plan::after`] as they are, not
//! copied; dest's paths move into the plan where it needs them (a kept file, a
//! deletion) and the rest is freed as the merge goes.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::quick::quick_check;
use super::tree::{Listing, Walked};
use super::{After, Fate, KeptFiles, Plan, Step};
use crate::entry::{Entry, Kind, Meta};
use crate::filter::Filter;
use crate::{Error, Result};

/// Asked where the quick check calls a regular file of both trees the same: whether
/// dest's file at `rel` (`now`: its listed attributes) holds the source's content too
/// (SPEC §21). False: it is replaced like any changed file.
pub(crate) type SameContent<'c> = dyn FnMut(&Path, &Meta) -> bool + 'c;

/// [`plan_with`], trusting the quick check alone (rsync's own decision; tests of the
/// rest of the plan).
#[cfg(test)]
pub(crate) fn plan(
    src: Listing,
    dest: Listing,
    filter: &Filter,
    kept: &KeptFiles,
    list_uptodate: bool,
) -> Result<Plan> {
    plan_with(src, dest, filter, kept, list_uptodate, &mut |_, _| true)
}

/// Computes what [`super::apply`] must do to make `dest` a mirror of `src` under
/// `filter`. A file the quick check calls the same is kept only when `same_content`
/// says so too. `kept` are files the source lacks because the unpack found them in dest
/// already (they are planned as present in the source with their archive attributes);
/// up-to-date entries are listed as `Keep` actions only when `list_uptodate` (`-vv`).
/// A kept file that dest no longer holds as it was (a `pre` command changed it) is
/// `Error::Stale`: its content is in neither tree. A dest directory holding excluded
/// entries that the source replaces by another type is `Error::Sync` (rsync exits 23
/// there, "could not make way"): refused before anything changed.
pub(crate) fn plan_with(
    src: Listing,
    mut dest: Listing,
    filter: &Filter,
    kept: &KeptFiles,
    list_uptodate: bool,
    same_content: &mut SameContent<'_>,
) -> Result<Plan> {
    let Listing {
        root: src_root,
        id: src_id,
        root_meta,
        walked:
            Walked {
                entries,
                excluded,
                linked,
                listed,
            },
        ..
    } = src;
    let Some(root_meta) = root_meta else {
        return Err(Error::Sync {
            path: src_root,
            msg: "source is not a directory".into(),
        });
    };
    // Dest's entries are consumed by the merge; the rest of its listing (excluded
    // entries, the walks inside them) is what the planner looks things up in.
    let dest_entries = std::mem::take(&mut dest.walked.entries);
    let dest = &dest;
    // The steps name their entries by a `u32` index: more entries than that is refused.
    let inner: usize = dest.inside_excluded.values().map(|w| w.entries.len()).sum();
    let most = entries.len() + kept.len() + dest_entries.len() + inner + 1;
    if u32::try_from(most).is_err() {
        return Err(Error::Sync {
            path: src_root,
            msg: format!("{most} entries: more than a plan can hold"),
        });
    }
    // On a first deploy every source entry is an update and every directory also gets
    // its attributes: the actions' exact number, allocated once.
    let updates = if dest_entries.is_empty() {
        let dirs = entries.iter().filter(|e| e.kind() == Kind::Dir).count();
        entries.len() + dirs + 2
    } else {
        0
    };
    let mut p = Planner {
        dest,
        kept,
        same_content,
        list_uptodate,
        not_whole: not_whole(&entries, &excluded, &linked, &listed),
        linked,
        protected: protected(dest),
        deletes: Vec::new(),
        gone: Vec::new(),
        updates: Vec::with_capacity(updates),
        after: Vec::with_capacity(entries.len() + kept.len() + 1),
        dirs: Vec::new(),
        dirty: HashSet::new(),
        uptodate: 0,
        kept_seen: 0,
        kept_marks: vec![0; kept.len().div_ceil(64)],
    };
    let root = p.push_dir(Entry::new(Path::new(""), root_meta, None), dest.root_meta);
    if dest.root_meta.is_none() {
        p.updates.push(Step::MakeDir {
            at: root,
            existing: None,
            whole: !p.not_whole.contains(Path::new("")),
        });
    }
    let mut s = entries.into_iter().peekable();
    let mut d = dest_entries.into_iter().peekable();
    loop {
        let order = match (s.peek(), d.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.rel().cmp(b.rel()),
        };
        match order {
            Ordering::Greater => d.next().map_or(Ok(()), |de| p.dest_only(de))?,
            Ordering::Less => s.next().map_or(Ok(()), |se| p.src_only(se))?,
            Ordering::Equal => match (s.next(), d.next()) {
                (Some(se), Some(de)) => p.both(se, &de)?,
                _ => break,
            },
        }
    }
    // Both walks' buffers are freed before the actions are put in order.
    drop((s, d));
    p.check_kept_seen(filter)?;
    Ok(p.finish((src_root, src_id), dest))
}

/// Source directories that cannot be moved whole: something below is excluded (it
/// must not reach dest), is a hard link (rsync -a makes separate files) or special;
/// a directory listed without being in the tree (`Walked::listed`), and those above it.
fn not_whole(
    entries: &[Entry],
    excluded: &HashMap<PathBuf, Kind>,
    linked: &HashSet<PathBuf>,
    listed: &HashSet<PathBuf>,
) -> HashSet<PathBuf> {
    // Present: so is every directory above it.
    let mut not_whole = HashSet::new();
    let special = entries
        .iter()
        .filter(|e| e.kind() == Kind::Special)
        .map(Entry::rel);
    let odd = excluded.keys().chain(linked).map(PathBuf::as_path);
    for rel in odd.chain(special) {
        mark_above(&mut not_whole, rel);
    }
    for rel in listed {
        if not_whole.insert(rel.clone()) {
            mark_above(&mut not_whole, rel);
        }
    }
    not_whole
}

/// Every directory above `rel` into `set` (up to one already there).
fn mark_above(set: &mut HashSet<PathBuf>, rel: &Path) {
    let mut p = rel.parent();
    while let Some(dir) = p {
        if !set.insert(dir.to_path_buf()) {
            break;
        }
        p = dir.parent();
    }
}

/// Directories in dest that hold an excluded entry somewhere below: never removable.
fn protected(dest: &Listing) -> HashSet<PathBuf> {
    let mut protected = HashSet::new();
    for rel in dest.walked.excluded.keys() {
        let mut p = rel.parent();
        while let Some(dir) = p {
            if dir.as_os_str().is_empty() || !protected.insert(dir.to_path_buf()) {
                break;
            }
            p = dir.parent();
        }
    }
    protected
}

/// The state of one merge.
struct Planner<'a, 'c> {
    dest: &'a Listing,
    kept: &'a KeptFiles,
    /// Asked where the quick check calls a file the same.
    same_content: &'a mut SameContent<'c>,
    list_uptodate: bool,
    not_whole: HashSet<PathBuf>,
    /// The source's multiply-linked files ([`Walked::linked`]).
    linked: HashSet<PathBuf>,
    protected: HashSet<PathBuf>,
    deletes: Vec<Step>,
    /// Dest's entries deleted ([`Step::Delete`] points into it).
    gone: Vec<Entry>,
    updates: Vec<Step>,
    after: Vec<After>,
    /// Source directories (their index in `after`), in pre-order.
    dirs: Vec<u32>,
    /// Directories whose entries are added, removed or replaced.
    dirty: HashSet<PathBuf>,
    uptodate: u64,
    kept_seen: usize,
    /// Which kept files dest's walk listed, a bit each by `KeptFiles::position`
    /// (12.5 KB at 100,000 files): the others are what `check_kept_seen` looks at.
    kept_marks: Vec<u64>,
}

impl Planner<'_, '_> {
    /// `entry` pushed to `after`: its index (in range: `plan_with` checked the count).
    fn push_after(&mut self, src: Entry, dest: Option<Meta>, fate: Fate) -> u32 {
        let at = self.after.len() as u32;
        self.after.push(After { src, dest, fate });
        at
    }

    /// A source directory (dest's there: `dest`); its fate's `dirty` is known at the end.
    fn push_dir(&mut self, src: Entry, dest: Option<Meta>) -> u32 {
        let at = self.push_after(src, dest, Fate::Dir { dirty: false });
        self.dirs.push(at);
        at
    }

    /// Dest's entry `de` to delete.
    fn delete(&mut self, de: Entry) {
        let at = self.gone.len() as u32;
        self.gone.push(de);
        self.deletes.push(Step::Delete(at));
    }

    /// Only in dest (or excluded in the source): deleted, judged by its dest type; a
    /// kept file is planned as the source's.
    fn dest_only(&mut self, de: Entry) -> Result<()> {
        let rel = de.rel();
        let kept = (!self.kept.is_empty())
            .then(|| self.kept.get_with_position(rel))
            .flatten();
        if let Some((i, k)) = kept {
            self.kept_seen += 1;
            self.kept_marks[i / 64] |= 1 << (i % 64);
            if de.kind() != Kind::File || !quick_check(&de.meta, k) {
                return Err(self.stale(rel));
            }
            let (uid, gid) = k.owner.unwrap_or((de.meta.uid, de.meta.gid));
            let meta = Meta {
                mode: (de.meta.mode & !0o7777) | k.mode,
                uid,
                gid,
                ..de.meta
            };
            let dest = de.meta;
            let src = Entry {
                path: de.path,
                meta,
                target: None,
            };
            self.same(src, dest);
            return Ok(());
        }
        self.dirty.insert(parent_of(rel));
        if de.kind() == Kind::Dir && self.protected.contains(rel) {
            let dest = de.meta;
            let at = self.push_after(de, Some(dest), Fate::Left);
            self.deletes.push(Step::KeepNonEmpty(at));
        } else {
            self.delete(de);
        }
        Ok(())
    }

    /// Only in the source: created. Where dest holds it excluded as another type (e.g.
    /// `foo/` while the source has a file `foo`), rsync makes room for it all the same,
    /// deleting what the rules allow inside a directory and failing if anything remains.
    fn src_only(&mut self, se: Entry) -> Result<()> {
        let existing = self.dest.walked.excluded.get(se.rel()).copied();
        if existing == Some(Kind::Dir) {
            let inner = self.dest.inside_excluded.get(se.rel());
            let Some(inner) = inner.filter(|w| w.excluded.is_empty()) else {
                return Err(self.cannot_replace(&se));
            };
            for de in &inner.entries {
                self.delete(de.clone());
            }
        }
        self.add_src(se, existing);
        Ok(())
    }

    /// In both trees: kept when the same (type, then quick check and content / link
    /// target / device), else replaced.
    fn both(&mut self, se: Entry, de: &Entry) -> Result<()> {
        let kind = se.kind();
        if kind != de.kind() {
            if de.kind() == Kind::Dir && self.protected.contains(de.rel()) {
                return Err(self.cannot_replace(&se));
            }
            self.add_src(se, Some(de.kind()));
            return Ok(());
        }
        let same = match kind {
            Kind::Dir => {
                self.push_dir(se, Some(de.meta));
                return Ok(());
            }
            Kind::File => {
                quick_check(&se.meta, &de.meta) && (self.same_content)(de.rel(), &de.meta)
            }
            Kind::Symlink => se.target == de.target,
            Kind::Special => {
                se.meta.mode & 0o170000 == de.meta.mode & 0o170000
                    && se.meta.rdev() == de.meta.rdev()
            }
        };
        if same {
            self.same(se, de.meta);
        } else {
            self.add_src(se, Some(kind));
        }
        Ok(())
    }

    /// An up-to-date entry: an action only when something about it needs fixing (or
    /// for `-vv`).
    fn same(&mut self, src: Entry, dest: Meta) {
        let m = src.meta;
        let attrs_differ = m.perms() != dest.perms()
            || (m.uid, m.gid) != (dest.uid, dest.gid)
            || (m.kind() == Kind::Symlink && m.mtime != dest.mtime);
        let at = self.push_after(src, Some(dest), Fate::Same);
        if attrs_differ || self.list_uptodate {
            self.updates.push(Step::Keep(at));
        } else {
            self.uptodate += 1;
        }
    }

    /// Plans the creation of a source entry at a path where dest holds `existing` (or
    /// nothing).
    fn add_src(&mut self, se: Entry, existing: Option<Kind>) {
        let rel = se.rel();
        self.dirty.insert(parent_of(rel));
        if se.kind() == Kind::Dir {
            let whole = !self.not_whole.contains(rel);
            let at = self.push_dir(se, None);
            self.updates.push(Step::MakeDir {
                at,
                existing,
                whole,
            });
            return;
        }
        let linked = se.kind() == Kind::File && self.linked.contains(rel);
        let at = self.push_after(se, None, Fate::New);
        self.updates.push(Step::Create {
            at,
            existing,
            linked,
        });
    }

    /// Every kept file must be in dest's walk, unless the rules exclude it (then it
    /// would be neither copied nor deleted anyway).
    fn check_kept_seen(&self, filter: &Filter) -> Result<()> {
        if self.kept_seen == self.kept.len() {
            return Ok(());
        }
        let excluded = &self.dest.walked.excluded;
        for rel in self.kept.paths() {
            let rel = rel.as_path();
            // Listed by dest's walk (and judged there): only the others are looked at.
            let marked = self.kept.position(rel);
            if marked.is_some_and(|i| self.kept_marks[i / 64] & (1 << (i % 64)) != 0) {
                continue;
            }
            let mut walked = rel.ancestors().filter(|a| !a.as_os_str().is_empty());
            let pruned = walked.any(|a| excluded.contains_key(a));
            if !excluded_here_or_above(filter, rel) && !pruned {
                return Err(self.stale(rel));
            }
        }
        Ok(())
    }

    /// The actions in order: deletions children first (the reverse of the walk's
    /// pre-order), creations and updates, directory attributes children first.
    fn finish(mut self, (src_root, src_id): (PathBuf, Option<(u64, u64)>), dest: &Listing) -> Plan {
        // In place: the updates' buffer grows once to its final size (a copy of it
        // would hold two).
        let mut steps = self.updates;
        steps.reserve_exact(self.deletes.len() + self.dirs.len());
        steps.splice(0..0, self.deletes.into_iter().rev());
        for at in self.dirs.into_iter().rev() {
            let a = &mut self.after[at as usize];
            let dirty = a.dest.is_none() || self.dirty.contains(a.src.rel());
            a.fate = Fate::Dir { dirty };
            steps.push(Step::DirAttrs(at));
        }
        self.gone.shrink_to_fit();
        Plan {
            src: src_root,
            src_id,
            dest: dest.root.clone(),
            dest_id: dest.id,
            steps,
            gone: self.gone,
            uptodate: self.uptodate,
            after: self.after,
        }
    }

    fn stale(&self, rel: &Path) -> Error {
        Error::Stale {
            path: self.dest.root.join(rel),
        }
    }

    /// rsync exits 23 here ("could not make way for new regular file"); we refuse
    /// before changing anything.
    fn cannot_replace(&self, se: &Entry) -> Error {
        Error::Sync {
            path: self.dest.root.join(se.rel()),
            msg: format!(
                "cannot replace this directory by a {:?}: it holds excluded entries",
                se.kind()
            ),
        }
    }
}

fn parent_of(rel: &Path) -> PathBuf {
    rel.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Whether `rel` (a file) or one of its directories is excluded.
fn excluded_here_or_above(filter: &Filter, rel: &Path) -> bool {
    let mut dir = PathBuf::new();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        dir.push(c);
        let is_dir = i + 1 < comps.len();
        if filter.is_excluded(&dir, is_dir) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    //! `plan` over listings made in memory: no temp dir, no disk.
    use super::*;
    use crate::sync::{Kept, Op};

    fn meta(kind: Kind, perms: u32, size: u64, mtime: i64) -> Meta {
        let ty = match kind {
            Kind::Special => 0o010000, // a fifo
            _ => kind.type_bits(),
        };
        Meta {
            mode: ty | perms,
            uid: 1000,
            gid: 1000,
            mtime_nsec: 0,
            size,
            mtime,
        }
    }

    fn file(rel: &str, size: u64, mtime: i64) -> Entry {
        Entry::new(Path::new(rel), meta(Kind::File, 0o644, size, mtime), None)
    }

    fn dir(rel: &str) -> Entry {
        Entry::new(Path::new(rel), meta(Kind::Dir, 0o755, 0, 100), None)
    }

    fn link(rel: &str, target: &str) -> Entry {
        let meta = meta(Kind::Symlink, 0o777, 0, 100);
        Entry::new(Path::new(rel), meta, Some(Path::new(target)))
    }

    fn fifo(rel: &str) -> Entry {
        Entry::new(Path::new(rel), meta(Kind::Special, 0o644, 0, 100), None)
    }

    /// A listing at `root` (existing, a directory) of `entries` in walk order.
    fn listing(root: &str, entries: Vec<Entry>, excluded: &[(&str, Kind)]) -> Listing {
        Listing {
            root: root.into(),
            id: None,
            root_meta: Some(meta(Kind::Dir, 0o755, 4096, 100)),
            walked: Walked {
                entries,
                excluded: excluded.iter().map(|(r, k)| (r.into(), *k)).collect(),
                linked: HashSet::new(),
                listed: HashSet::new(),
            },
            inside_excluded: HashMap::new(),
        }
    }

    fn run(src: &Listing, dest: &Listing, filter: &Filter) -> Plan {
        plan(
            src.clone(),
            dest.clone(),
            filter,
            &KeptFiles::default(),
            false,
        )
        .unwrap()
    }

    /// The actions as (path, op) pairs, without the directory attributes.
    fn ops(p: &Plan) -> Vec<(String, Op)> {
        p.actions()
            .filter(|a| !matches!(a.op, Op::DirAttrs { .. }))
            .map(|a| (a.rel.display().to_string(), a.op.clone()))
            .collect()
    }

    #[test]
    fn delete_a_dest_only_file() {
        let src = listing("/s", vec![], &[]);
        let gone = file("gone", 3, 5);
        let dest = listing("/d", vec![gone.clone()], &[]);
        let p = run(&src, &dest, &Filter::empty());
        assert_eq!(
            ops(&p),
            vec![("gone".into(), Op::Delete { dest: gone.meta })]
        );
        assert!(p.after.iter().all(|a| a.src.rel() != Path::new("gone")));
    }

    #[test]
    fn deletes_run_children_first() {
        let src = listing("/s", vec![], &[]);
        let entries = vec![dir("a"), dir("a/b"), file("a/b/c", 1, 1), file("a/d", 1, 1)];
        let dest = listing("/d", entries, &[]);
        let p = run(&src, &dest, &Filter::empty());
        let order: Vec<String> = ops(&p).into_iter().map(|(rel, _)| rel).collect();
        assert_eq!(order, vec!["a/d", "a/b/c", "a/b", "a"]);
        assert!(ops(&p)
            .iter()
            .all(|(_, op)| matches!(op, Op::Delete { .. })));
    }

    #[test]
    fn keep_non_empty_for_a_dest_only_dir_holding_excluded_entries() {
        let src = listing("/s", vec![], &[]);
        let kept = dir("kept");
        let dest = listing(
            "/d",
            vec![kept.clone(), file("kept/z.txt", 1, 1)],
            &[("kept/y.log", Kind::File)],
        );
        let f = Filter::new(None, &["*.log".into()]).unwrap();
        let p = run(&src, &dest, &f);
        assert_eq!(
            ops(&p),
            vec![
                (
                    "kept/z.txt".into(),
                    Op::Delete {
                        dest: file("kept/z.txt", 1, 1).meta
                    }
                ),
                ("kept".into(), Op::KeepNonEmpty { dest: kept.meta }),
            ]
        );
        let left = p
            .after
            .iter()
            .find(|a| a.src.rel() == Path::new("kept"))
            .unwrap();
        assert_eq!(left.fate, Fate::Left);
    }

    #[test]
    fn excluded_entries_are_neither_copied_nor_deleted() {
        let f = Filter::new(None, &["*.log".into()]).unwrap();
        let src = listing("/s", vec![], &[("new.log", Kind::File)]);
        let dest = listing("/d", vec![], &[("old.log", Kind::File)]);
        let p = run(&src, &dest, &f);
        assert_eq!(ops(&p), vec![]);
        assert!(p.after.iter().all(|a| a.src.rel() != Path::new("old.log")));
    }

    #[test]
    fn make_dir_whole_unless_something_below_is_excluded() {
        let src = listing(
            "/s",
            vec![dir("a"), file("a/f", 1, 1), dir("b"), file("b/f", 1, 1)],
            &[("b/x.log", Kind::File)],
        );
        let dest = listing("/d", vec![], &[]);
        let p = run(&src, &dest, &Filter::new(None, &["*.log".into()]).unwrap());
        let dirs: Vec<_> = ops(&p)
            .into_iter()
            .filter(|(_, op)| matches!(op, Op::MakeDir { .. }))
            .collect();
        let made = |whole| Op::MakeDir {
            existing: None,
            whole,
        };
        assert_eq!(
            dirs,
            vec![("a".into(), made(true)), ("b".into(), made(false))]
        );
    }

    #[test]
    fn a_listed_dir_is_fixed_in_place_or_made_never_moved_whole() {
        // `a/b` is listed for the tree (not in it); `a` is in it, with a file.
        let mut src = listing("/s", vec![dir("a"), file("a/f", 1, 1)], &[]);
        let mut b = dir("a/b");
        b.meta.mode = Kind::Dir.type_bits() | 0o700;
        crate::sync::tree::add_listed(&mut src.walked, &[b.clone()], &Filter::empty());
        assert_eq!(src.walked.entries[1], b);
        // Dest holds `a/b` (another mode): only its attributes are set.
        let dest = listing("/d", vec![dir("a"), dir("a/b")], &[]);
        let p = run(&src, &dest, &Filter::empty());
        assert!(ops(&p).iter().all(|(rel, _)| rel == "a/f"), "{:?}", ops(&p));
        let fixed = p.actions().find(|a| a.rel == Path::new("a/b")).unwrap();
        assert!(matches!(fixed.op, Op::DirAttrs { .. }));
        // Dest lost both since: made (never renamed from the tree, which lacks them).
        let dest = listing("/d", vec![], &[]);
        let p = run(&src, &dest, &Filter::empty());
        let made = |whole| Op::MakeDir {
            existing: None,
            whole,
        };
        let dirs: Vec<_> = ops(&p)
            .into_iter()
            .filter(|(_, op)| matches!(op, Op::MakeDir { .. }))
            .collect();
        assert_eq!(
            dirs,
            vec![("a".into(), made(false)), ("a/b".into(), made(false))]
        );
    }

    #[test]
    fn make_dir_for_a_missing_dest_makes_the_root_first() {
        let src = listing("/s", vec![file("f", 1, 1)], &[]);
        let dest = Listing {
            root: "/d".into(),
            ..Listing::default()
        };
        let p = run(&src, &dest, &Filter::empty());
        let (rel, op) = &ops(&p)[0];
        assert_eq!(
            (rel.as_str(), op),
            (
                "",
                &Op::MakeDir {
                    existing: None,
                    whole: true
                }
            )
        );
        let root = p.actions().last().unwrap();
        assert!(matches!(
            root.op,
            Op::DirAttrs {
                dest: None,
                dirty: true,
                ..
            }
        ));
    }

    #[test]
    fn copy_file_when_size_or_mtime_differs_and_keep_when_they_match() {
        let src = listing(
            "/s",
            vec![file("new", 1, 1), file("older", 2, 9), file("same", 3, 5)],
            &[],
        );
        let dest = listing("/d", vec![file("older", 2, 8), file("same", 3, 5)], &[]);
        let p = run(&src, &dest, &Filter::empty());
        let src_meta = |e: Entry| e.meta;
        assert_eq!(
            ops(&p),
            vec![
                (
                    "new".into(),
                    Op::CopyFile {
                        src: src_meta(file("new", 1, 1)),
                        existing: None,
                        linked: false
                    }
                ),
                (
                    "older".into(),
                    Op::CopyFile {
                        src: src_meta(file("older", 2, 9)),
                        existing: Some(Kind::File),
                        linked: false
                    }
                ),
            ]
        );
        assert_eq!(p.uptodate, 1);
        let dir = p.actions().last().unwrap();
        assert!(
            matches!(dir.op, Op::DirAttrs { dirty: true, .. }),
            "{dir:?}"
        );
    }

    #[test]
    fn make_symlink_when_the_target_differs_or_the_type_changes() {
        let src = listing(
            "/s",
            vec![link("l", "b"), link("same", "x"), link("was_file", "t")],
            &[],
        );
        let dest = listing(
            "/d",
            vec![link("l", "a"), link("same", "x"), file("was_file", 1, 1)],
            &[],
        );
        let p = run(&src, &dest, &Filter::empty());
        let made = |e: Entry, existing| Op::MakeSymlink {
            target: e.target_path().unwrap().to_path_buf(),
            src: e.meta,
            existing,
        };
        assert_eq!(
            ops(&p),
            vec![
                ("l".into(), made(link("l", "b"), Some(Kind::Symlink))),
                (
                    "was_file".into(),
                    made(link("was_file", "t"), Some(Kind::File))
                ),
            ]
        );
        let same = p
            .after
            .iter()
            .find(|a| a.src.rel() == Path::new("same"))
            .unwrap();
        assert_eq!(
            (same.fate, same.src.target_path()),
            (Fate::Same, Some(Path::new("x")))
        );
    }

    #[test]
    fn make_special_for_a_new_fifo() {
        let src = listing("/s", vec![fifo("p")], &[]);
        let dest = listing("/d", vec![], &[]);
        let p = run(&src, &dest, &Filter::empty());
        assert_eq!(
            ops(&p),
            vec![(
                "p".into(),
                Op::MakeSpecial {
                    src: fifo("p").meta,
                    existing: None
                }
            )]
        );
        let dest = listing("/d", vec![fifo("p")], &[]);
        assert_eq!(ops(&run(&src, &dest, &Filter::empty())), vec![]);
    }

    #[test]
    fn keep_fixes_the_mode_of_an_up_to_date_file_and_lists_it_for_vv() {
        let mut changed = file("f", 3, 5);
        changed.meta.mode = 0o100600;
        let src = listing("/s", vec![changed.clone(), file("g", 1, 1)], &[]);
        let dest = listing("/d", vec![file("f", 3, 5), file("g", 1, 1)], &[]);
        let p = run(&src, &dest, &Filter::empty());
        let keep = Op::Keep {
            src: changed.meta,
            dest: file("f", 3, 5).meta,
        };
        assert_eq!(ops(&p), vec![("f".into(), keep)]);
        assert_eq!(p.uptodate, 1);
        let all = plan(
            src.clone(),
            dest.clone(),
            &Filter::empty(),
            &KeptFiles::default(),
            true,
        )
        .unwrap();
        assert_eq!(ops(&all).len(), 2);
        assert_eq!(all.uptodate, 0);
    }

    #[test]
    fn dir_attrs_children_first_and_dirty_only_where_entries_change() {
        let src = listing(
            "/s",
            vec![dir("a"), dir("a/b"), file("a/b/f", 1, 2), dir("c")],
            &[],
        );
        let dest = listing(
            "/d",
            vec![dir("a"), dir("a/b"), file("a/b/f", 1, 1), dir("c")],
            &[],
        );
        let p = run(&src, &dest, &Filter::empty());
        let attrs: Vec<(String, bool)> = p
            .actions()
            .filter_map(|a| match a.op {
                Op::DirAttrs { dirty, .. } => Some((a.rel.display().to_string(), dirty)),
                _ => None,
            })
            .collect();
        let want = [("c", false), ("a/b", true), ("a", false), ("", false)];
        let want: Vec<(String, bool)> = want.iter().map(|(r, d)| (r.to_string(), *d)).collect();
        assert_eq!(attrs, want);
    }

    #[test]
    fn a_kept_file_is_planned_as_the_source_and_a_changed_one_is_stale() {
        let src = listing("/s", vec![], &[]);
        let dest = listing("/d", vec![file("k", 3, 5)], &[]);
        let attrs = Kept {
            size: 3,
            mtime: 5,
            mode: 0o600,
            owner: None,
        };
        let kept: KeptFiles = [("k".into(), attrs)].into_iter().collect();
        let p = plan(src.clone(), dest.clone(), &Filter::empty(), &kept, false).unwrap();
        let (rel, op) = &ops(&p)[0];
        assert!(
            matches!(op, Op::Keep { src, .. } if src.perms() == 0o600),
            "{rel} {op:?}"
        );
        let changed = listing("/d", vec![file("k", 3, 6)], &[]);
        let err = plan(src.clone(), changed, &Filter::empty(), &kept, false).unwrap_err();
        assert!(
            matches!(err, Error::Stale { ref path } if path == Path::new("/d/k")),
            "{err}"
        );
        let gone = listing("/d", vec![], &[]);
        let err = plan(src.clone(), gone, &Filter::empty(), &kept, false).unwrap_err();
        assert!(matches!(err, Error::Stale { .. }), "{err}");
    }

    #[test]
    fn a_kept_file_dest_excludes_leaves_the_others_kept() {
        // `x.log` is kept (unchanged in dest) but excluded from dest's walk: the
        // other kept file, which the walk did list, is not taken for stale.
        let f = Filter::new(None, &["*.log".into()]).unwrap();
        let src = listing("/s", vec![], &[]);
        let mut dest = listing("/d", vec![file("k", 3, 5)], &[]);
        dest.walked.excluded.insert("x.log".into(), Kind::File);
        let attrs = Kept {
            size: 3,
            mtime: 5,
            mode: 0o600,
            owner: None,
        };
        let kept: KeptFiles = [("k".into(), attrs), ("x.log".into(), attrs)]
            .into_iter()
            .collect();
        let p = plan(src, dest, &f, &kept, false).unwrap();
        assert!(ops(&p)
            .iter()
            .any(|(rel, op)| rel == "k" && matches!(op, Op::Keep { .. })));
    }

    #[test]
    fn replacing_an_excluded_dir_empties_it_or_refuses() {
        let f = Filter::new(None, &["foo/".into(), "*.log".into()]).unwrap();
        let src = listing("/s", vec![file("foo", 1, 1)], &[]);
        let mut dest = listing("/d", vec![], &[("foo", Kind::Dir)]);
        let inner = Walked {
            entries: vec![file("foo/a", 1, 1)],
            ..Walked::default()
        };
        dest.inside_excluded.insert("foo".into(), inner);
        let p = run(&src, &dest, &f);
        let kinds: Vec<_> = ops(&p)
            .into_iter()
            .map(|(rel, op)| (rel, matches!(op, Op::Delete { .. })))
            .collect();
        assert_eq!(kinds, vec![("foo/a".into(), true), ("foo".into(), false)]);
        dest.inside_excluded
            .get_mut(Path::new("foo"))
            .unwrap()
            .excluded
            .insert("foo/x.log".into(), Kind::File);
        let err = plan(src.clone(), dest.clone(), &f, &KeptFiles::default(), false).unwrap_err();
        assert!(matches!(err, Error::Sync { .. }), "{err}");
    }
}
