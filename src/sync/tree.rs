//! Disk → [`Listing`]: the only disk reads of planning.
//!
//! A walk lists a tree below its root in sorted pre-order (the component order of
//! `Path`) as [`Entry`]s, by `lstat` relative to directory descriptors
//! ([`crate::at::Tree::walk`]), never following a symlink below the root (also one
//! swapped in for a directory while it walks), with each symlink's target read here;
//! excluded entries are not descended into and are kept apart with their kind, regular
//! files with more than one link are noted apart. It must never write anything.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::at::Tree;
use crate::entry::{Entry, Kind, Meta};
use crate::filter::Filter;
use crate::{Error, Result};

/// Entries in sorted pre-order, with the excluded ones apart (see [`Listing::excluded`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Walked {
    /// Entries not excluded (paths relative to the listing's root, never empty),
    /// parents before children, siblings by name.
    pub entries: Vec<Entry>,
    /// Excluded entries (not descended into) by relative path, with their kind.
    pub excluded: HashMap<PathBuf, Kind>,
    /// Regular files among `entries` with more than one hard link (`rsync -a` makes
    /// separate files of them: never renamed into place, nor with their directory).
    pub linked: HashSet<PathBuf>,
    /// Source only: directories among `entries` that are not in the tree but listed
    /// for it (`Staged::listed_dirs`): never renamed into place (made and fixed
    /// instead), nor any directory above them.
    pub listed: HashSet<PathBuf>,
}

/// A tree as [`super::plan`] sees it: plain data, made by [`source`] or [`dest`] (or
/// by hand, in tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Where the tree is (the plan names paths with it; it is never read by it).
    pub root: PathBuf,
    /// The root directory's device and inode when it was listed (`None`: absent, or a
    /// listing made by hand): apply reopens this very directory, or refuses.
    pub id: Option<(u64, u64)>,
    /// The root's attributes (a symlink followed: rsync's `DEST/`); `None` when the
    /// root does not exist (a dest not made yet).
    pub root_meta: Option<Meta>,
    /// The walk below the root.
    pub walked: Walked,
    /// Dest only: the walk inside an excluded directory at a path where the source has
    /// an entry that is not excluded (a `foo/` rule and a file `foo`), which the plan
    /// must empty to make room.
    pub inside_excluded: HashMap<PathBuf, Walked>,
}

/// Lists the source tree (an open directory).
pub(crate) fn source(root: &Tree, filter: &Filter) -> Result<Listing> {
    let st = root
        .lstat(Path::new(""))
        .map_err(|e| Error::io("stat", root.path(), e))?;
    let id = (st.st_dev, st.st_ino);
    Ok(Listing {
        root: root.path().to_path_buf(),
        id: Some(id),
        root_meta: Some(Meta::from(&st)),
        walked: walk_whole(root, filter)?,
        inside_excluded: HashMap::new(),
    })
}

/// [`source`], from what the unpack says it wrote below `root` (`Staged::written`: a
/// listing that equals a walk of it, in any order) instead of a walk: sorted as a walk
/// lists, the excluded entries put apart and what is below them left out as a walk
/// leaves it. No file in it has a second link (the unpack lists none when it made one).
pub(crate) fn source_listed(
    root: &Tree,
    mut written: Vec<Entry>,
    filter: &Filter,
) -> Result<Listing> {
    let st = root
        .lstat(Path::new(""))
        .map_err(|e| Error::io("stat", root.path(), e))?;
    written.sort_unstable_by(|a, b| walk_order(&a.path, &b.path));
    let mut entries = Vec::with_capacity(written.len());
    let mut excluded = HashMap::new();
    // The excluded directory whose entries are being passed over.
    let mut skipping: Option<Box<[u8]>> = None;
    for e in written {
        if let Some(dir) = &skipping {
            if e.path.starts_with(dir) && e.path.get(dir.len()) == Some(&b'/') {
                continue;
            }
            skipping = None;
        }
        let kind = e.meta.kind();
        if filter.is_excluded(e.rel(), kind == Kind::Dir) {
            excluded.insert(e.rel().to_path_buf(), kind);
            if kind == Kind::Dir {
                skipping = Some(e.path);
            }
            continue;
        }
        entries.push(e);
    }
    entries.shrink_to_fit();
    Ok(Listing {
        root: root.path().to_path_buf(),
        id: Some((st.st_dev, st.st_ino)),
        root_meta: Some(Meta::from(&st)),
        walked: Walked {
            entries,
            excluded,
            linked: HashSet::new(),
            listed: HashSet::new(),
        },
        inside_excluded: HashMap::new(),
    })
}

/// The order of a walk (`Path`'s, component by component) of two relative paths'
/// bytes: a `/` sorts before every byte a name can hold.
fn walk_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let rank = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => rank(a[i]).cmp(&rank(b[i])),
        None => a.len().cmp(&b.len()),
    }
}

/// Opens the destination `root` as a tree: a symlink at `root` itself is followed
/// (rsync's `DEST/`; the path up to dest is trusted, SPEC §17), nothing below it.
/// `None` when it does not exist (a dest not made yet).
pub(crate) fn open_dest(root: &Path) -> Result<Option<Tree>> {
    match Tree::open(root, true) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Err(Error::Sync {
            path: root.to_path_buf(),
            msg: "destination exists and is not a directory".into(),
        }),
        Err(e) => Err(Error::io("open", root, e)),
    }
}

/// Lists the destination `root` (opened by [`open_dest`]: `None` when absent) for a
/// sync from `src`; `path` names it.
pub(crate) fn dest(
    path: &Path,
    root: Option<&Tree>,
    filter: &Filter,
    src: &Listing,
) -> Result<Listing> {
    let Some(root) = root else {
        return Ok(Listing {
            root: path.to_path_buf(),
            ..Listing::default()
        });
    };
    let st = root
        .lstat(Path::new(""))
        .map_err(|e| Error::io("stat", path, e))?;
    let walked = walk_whole(root, filter)?;
    let mut inside_excluded = HashMap::new();
    for (rel, kind) in &walked.excluded {
        let in_src = || {
            src.walked
                .entries
                .binary_search_by(|e| e.rel().cmp(rel))
                .is_ok()
        };
        if *kind == Kind::Dir && in_src() {
            inside_excluded.insert(rel.clone(), walk(root, rel, filter)?);
        }
    }
    Ok(Listing {
        root: path.to_path_buf(),
        id: Some((st.st_dev, st.st_ino)),
        root_meta: Some(Meta::from(&st)),
        walked,
        inside_excluded,
    })
}

/// Walks `sub` of the tree `root` (never following a symlink) in sorted pre-order,
/// paths relative to `root`. Excluded entries are not descended into; they are listed
/// apart.
pub(crate) fn walk(root: &Tree, sub: &Path, filter: &Filter) -> Result<Walked> {
    walk_to(root, sub, filter, true)
}

/// [`walk`] of the whole tree, on two threads: the root's entries are listed first,
/// then its directories are walked from the first on by this thread and from the
/// last back by a second one (each with its own descriptor of the root) until they
/// meet, and the parts are put together in walk order. The listing is the one
/// [`walk`] makes; the two threads share the time of the `lstat`s a large tree costs.
fn walk_whole(root: &Tree, filter: &Filter) -> Result<Walked> {
    let mut top = walk_to(root, Path::new(""), filter, false)?;
    let dirs: Vec<usize> = (0..top.entries.len())
        .filter(|i| top.entries[*i].meta.kind() == Kind::Dir)
        .collect();
    // One directory to walk, or no second descriptor: this thread walks them all.
    let second = if dirs.len() >= 2 {
        root.try_clone().ok()
    } else {
        None
    };
    // The directories not yet taken: `dirs[front..back]`.
    let left = std::sync::Mutex::new((0usize, dirs.len()));
    let take = |from_front: bool| {
        // A poisoned pair is still a valid pair.
        let mut l = left.lock().unwrap_or_else(|p| p.into_inner());
        (l.0 < l.1).then(|| {
            if from_front {
                l.0 += 1;
                l.0 - 1
            } else {
                l.1 -= 1;
                l.1
            }
        })
    };
    let entries = &top.entries;
    let walk_dirs = |tree: &Tree, from_front: bool| {
        let mut parts = Vec::new();
        while let Some(d) = take(from_front) {
            parts.push((d, walk(tree, entries[dirs[d]].rel(), filter)));
        }
        parts
    };
    let mut parts: Vec<Option<Result<Walked>>> = (0..dirs.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let walk_dirs = &walk_dirs;
        let later = second.map(|t| s.spawn(move || walk_dirs(&t, false)));
        for (d, w) in walk_dirs(root, true) {
            parts[d] = Some(w);
        }
        let theirs = later.map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        for (d, w) in theirs.into_iter().flatten() {
            parts[d] = Some(w);
        }
    });
    // Put together in walk order: each directory followed by what is below it.
    let mut below = Vec::with_capacity(dirs.len());
    for part in parts {
        // Every directory was taken by one thread or the other.
        below.push(part.unwrap_or_else(|| Ok(Walked::default()))?);
    }
    let total = top.entries.len() + below.iter().map(|w| w.entries.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    let mut below = below.into_iter();
    for e in std::mem::take(&mut top.entries) {
        let is_dir = e.meta.kind() == Kind::Dir;
        out.push(e);
        if let Some(w) = is_dir.then(|| below.next()).flatten() {
            out.extend(w.entries);
            top.excluded.extend(w.excluded);
            top.linked.extend(w.linked);
        }
    }
    top.entries = out;
    Ok(top)
}

/// [`walk`], descending into directories or (`descend` false) listing `sub`'s own
/// entries only.
fn walk_to(root: &Tree, sub: &Path, filter: &Filter, descend: bool) -> Result<Walked> {
    let mut entries = Vec::new();
    let mut excluded = HashMap::new();
    let mut linked = HashSet::new();
    let mut failed: Option<Error> = None;
    let walked = root.walk(sub, &mut |rel, st, walking| {
        let meta = Meta::from(st);
        let kind = meta.kind();
        if filter.is_excluded(rel, kind == Kind::Dir) {
            excluded.insert(rel.to_path_buf(), kind);
            return Ok(false);
        }
        let target = match kind {
            Kind::Symlink => match walking.read_link() {
                Ok(t) => Some(t),
                Err(e) => {
                    failed = Some(Error::io("readlink", root.shown(rel), e));
                    return Err(io::Error::other("stopped"));
                }
            },
            _ => None,
        };
        entries.push(Entry::new(rel, meta, target.as_deref()));
        if kind == Kind::File && st.st_nlink > 1 {
            linked.insert(rel.to_path_buf());
        }
        Ok(descend)
    });
    walked.map_err(|e| match failed.take() {
        Some(f) => f,
        None => Error::io("walk", root.shown(sub), e),
    })?;
    // Held through the plan: no room to spare (a listing grows by doubling).
    entries.shrink_to_fit();
    Ok(Walked {
        entries,
        excluded,
        linked,
        listed: HashSet::new(),
    })
}

/// Adds to a source walk the directories `listed` for its tree without being in it
/// (`Staged::listed_dirs`, sorted as a walk lists), as the walk would have listed
/// them: one below an excluded directory is left out, an excluded one is listed
/// apart as excluded; the entries stay in walk order.
pub(crate) fn add_listed(walked: &mut Walked, listed: &[Entry], filter: &Filter) {
    if listed.is_empty() {
        return;
    }
    let mut add = Vec::with_capacity(listed.len());
    for e in listed {
        let rel = e.rel();
        let below_excluded = rel
            .ancestors()
            .skip(1)
            .any(|a| walked.excluded.get(a) == Some(&Kind::Dir));
        if below_excluded {
            continue;
        }
        if filter.is_excluded(rel, true) {
            walked.excluded.insert(rel.to_path_buf(), Kind::Dir);
            continue;
        }
        walked.listed.insert(rel.to_path_buf());
        add.push(e.clone());
    }
    // Both in walk order: merged.
    let walked_entries = std::mem::take(&mut walked.entries);
    let mut out = Vec::with_capacity(walked_entries.len() + add.len());
    let mut a = walked_entries.into_iter().peekable();
    let mut b = add.into_iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.rel().cmp(y.rel()),
        };
        match order {
            std::cmp::Ordering::Less => out.extend(a.next()),
            std::cmp::Ordering::Greater => out.extend(b.next()),
            // Never both (the tree holds none of them); the tree's own wins.
            std::cmp::Ordering::Equal => {
                out.extend(a.next());
                if let Some(e) = b.next() {
                    walked.listed.remove(e.rel());
                }
            }
        }
    }
    walked.entries = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(rel: &str) -> Entry {
        let meta = Meta {
            mode: Kind::Dir.type_bits() | 0o755,
            uid: 0,
            gid: 0,
            mtime_nsec: 0,
            size: 0,
            mtime: 1,
        };
        Entry::new(Path::new(rel), meta, None)
    }

    #[test]
    fn listed_dirs_join_the_walk_in_its_order_and_under_its_rules() {
        let mut walked = Walked {
            entries: vec![dir("a"), dir("a/b"), dir("c")],
            ..Walked::default()
        };
        walked.excluded.insert("x".into(), Kind::Dir);
        let listed = [dir("a/a"), dir("a-z"), dir("c/cache"), dir("x/y")];
        let filter = Filter::new(None, &["cache/".into()]).unwrap();
        add_listed(&mut walked, &listed, &filter);
        let rels: Vec<_> = walked.entries.iter().map(|e| e.rel()).collect();
        // Path order ("a/…" before "a-z"); below an excluded directory: left out;
        // excluded by the rules: listed apart.
        assert_eq!(
            rels,
            ["a", "a/a", "a/b", "a-z", "c"].map(Path::new).to_vec()
        );
        assert_eq!(walked.excluded.get(Path::new("c/cache")), Some(&Kind::Dir));
        assert!(walked.listed.contains(Path::new("a/a")));
        assert!(!walked.listed.contains(Path::new("x/y")));
    }

    /// GNU tar's archive of `dir`'s entries `what` (appended to `archive` when it
    /// exists; `--no-recursion`: the names given, their parents left implicit).
    fn gnu_tar(archive: &Path, dir: &Path, what: &[&str], no_recursion: bool) {
        let mut tar = std::process::Command::new("tar");
        tar.arg(if archive.exists() { "-rf" } else { "-cf" })
            .arg(archive)
            .arg("-C")
            .arg(dir);
        if no_recursion {
            tar.arg("--no-recursion");
        }
        assert!(tar.args(what).status().unwrap().success());
    }

    /// The unpack of `archive` into a new `name` below `d`, listing what it writes.
    fn unpack_listing(d: &Path, name: &str, archive: &Path) -> (Tree, Option<Vec<Entry>>) {
        let into = d.join(name);
        std::fs::create_dir(&into).unwrap();
        let opts = crate::unpack::UnpackOptions {
            label: "file:///t.tar".into(),
            list_written: true,
            // as root the fifo is made (and owners set), as a deploy as root does
            same_owner: nix::unistd::geteuid().is_root(),
            ..Default::default()
        };
        let bytes = std::fs::read(archive).unwrap();
        let staged = crate::unpack::unpack(&bytes[..], &into, &opts, None).unwrap();
        (Tree::open(&into, false).unwrap(), staged.written)
    }

    #[test]
    fn what_the_unpack_lists_is_what_a_walk_lists_under_every_rule() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (src, later) = (d.path().join("src"), d.path().join("later"));
        for dir in ["a/c", "a.b", "cache/k", "logs", "ro", "later"] {
            std::fs::create_dir_all(src.join(dir)).unwrap();
        }
        for f in [
            "a/b.txt",
            "a/c/d.txt",
            "a-b.txt",
            "a.b/x",
            "a0",
            "cache/k/j",
            "logs/app.log",
            "logs/keep.txt",
            "ro/f",
            "z",
        ] {
            std::fs::write(src.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("a/b.txt", src.join("link")).unwrap();
        std::os::unix::fs::symlink("a", src.join("dlink")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::set_permissions(src.join("a/c"), PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::set_permissions(src.join("ro"), PermissionsExt::from_mode(0o555)).unwrap();
        // later members: a file again, a directory where a file was, a file whose
        // parents the archive never lists, a symlink where a directory was
        for dir in ["a0", "deep/er"] {
            std::fs::create_dir_all(later.join(dir)).unwrap();
        }
        for f in ["a/b.txt", "a0/inner", "deep/er/f"] {
            std::fs::create_dir_all(later.join(f).parent().unwrap()).unwrap();
            std::fs::write(later.join(f), format!("later {f}")).unwrap();
        }
        std::os::unix::fs::symlink("z", later.join("a.b")).unwrap();
        let archive = d.path().join("t.tar");
        gnu_tar(&archive, &src, &["."], false);
        gnu_tar(&archive, &later, &["./a/b.txt", "./a0", "./a0/inner"], true);
        gnu_tar(&archive, &later, &["./deep/er/f", "./a.b"], true);

        let (tree, written) = unpack_listing(d.path(), "staged", &archive);
        let written = written.expect("no hard link: listed");
        assert!(written.iter().any(|e| e.rel() == Path::new("deep/er")));
        if nix::unistd::geteuid().is_root() {
            assert!(written.iter().any(|e| e.meta.kind() == Kind::Special));
        }
        let rules: [&[&str]; 4] = [
            &[],
            &["cache/", "*.log", "a/c"],
            &["a", "a0"],
            &["k/", "/ro", "fifo", "a.b"],
        ];
        for excludes in rules {
            let excludes: Vec<String> = excludes.iter().map(|e| e.to_string()).collect();
            let filter = Filter::new(None, &excludes).unwrap();
            let listed = source_listed(&tree, written.clone(), &filter).unwrap();
            let walked = source(&tree, &filter).unwrap();
            assert_eq!(listed, walked, "excludes {excludes:?}");
            // in any order
            let backwards = written.iter().rev().cloned().collect();
            let listed = source_listed(&tree, backwards, &filter).unwrap();
            assert_eq!(listed, walked, "excludes {excludes:?}, listed backwards");
        }
        std::fs::set_permissions(tree.path().join("ro"), PermissionsExt::from_mode(0o755)).unwrap();

        // a hard link: the unpack lists nothing (a walk notes the files' links)
        std::fs::hard_link(src.join("z"), src.join("z2")).unwrap();
        let linked = d.path().join("linked.tar");
        gnu_tar(&linked, &src, &["."], false);
        let (tree, written) = unpack_listing(d.path(), "linked", &linked);
        assert!(written.is_none());
        assert!(source(&tree, &Filter::default())
            .unwrap()
            .walked
            .linked
            .contains(Path::new("z")));
        std::fs::set_permissions(tree.path().join("ro"), PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::set_permissions(src.join("ro"), PermissionsExt::from_mode(0o755)).unwrap();
    }

    #[test]
    fn walk_order_is_the_order_of_paths() {
        let mut names = [
            "a/b", "a-c", "a", "a/b/c", "a.b", "ab", "a0/x", "a/b-c", "b",
        ];
        names.sort_by(|a, b| walk_order(a.as_bytes(), b.as_bytes()));
        let mut paths = names.map(Path::new);
        paths.sort();
        assert_eq!(names.map(Path::new), paths);
    }

    #[test]
    fn the_whole_walk_on_two_threads_lists_what_one_thread_lists() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for dir in [
            "a/x/y",
            "b",
            "b-c/deep/er",
            "cache/k",
            "d/cache",
            "e",
            "z/1/2/3",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for (i, f) in [
            "0",
            "a/x/f",
            "a/x/y/g",
            "a-file",
            "b/h",
            "b-c/deep/er/i",
            "cache/k/j",
            "d/cache/n",
            "d/m",
            "e/o",
            "z/1/2/3/p",
            "zz",
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(root.join(f), vec![b'x'; i]).unwrap();
        }
        std::os::unix::fs::symlink("a/x", root.join("b/link")).unwrap();
        std::fs::hard_link(root.join("e/o"), root.join("e/o2")).unwrap();
        let tree = Tree::open(root, false).unwrap();
        for rules in [vec![], vec!["cache/".to_string(), "*.tmp".to_string()]] {
            let filter = Filter::new(None, &rules).unwrap();
            let one = walk(&tree, Path::new(""), &filter).unwrap();
            let two = walk_whole(&tree, &filter).unwrap();
            assert_eq!(two, one);
            assert!(two.entries.len() > 20);
        }
        // A tree with one directory, or none: the same too.
        let small = tempfile::tempdir().unwrap();
        std::fs::create_dir(small.path().join("only")).unwrap();
        std::fs::write(small.path().join("only/f"), b"f").unwrap();
        let tree = Tree::open(small.path(), false).unwrap();
        let filter = Filter::new(None, &[]).unwrap();
        assert_eq!(
            walk_whole(&tree, &filter).unwrap(),
            walk(&tree, Path::new(""), &filter).unwrap()
        );
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_before_its_part_is_walked_is_never_followed() {
        // What the two-thread walk relies on: a part walked after the root was
        // listed opens its directory beneath the root, never through a symlink
        // another user put there meanwhile.
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("sub")).unwrap();
        let tree = Tree::open(d.path(), false).unwrap();
        let filter = Filter::new(None, &[]).unwrap();
        let got = walk(&tree, Path::new("sub"), &filter);
        assert!(got.is_err(), "{got:?}");
        // The whole walk lists the symlink as a symlink, nothing below it.
        let whole = walk_whole(&tree, &filter).unwrap();
        let rels: Vec<_> = whole
            .entries
            .iter()
            .map(|e| e.rel().to_path_buf())
            .collect();
        assert_eq!(rels, [PathBuf::from("sub")]);
        assert_eq!(whole.entries[0].meta.kind(), Kind::Symlink);
    }
}
