//! Differential test of `stretcher::sync` against the real `rsync -a --checksum --delete`
//! (SPEC §6, §21: a file the quick check calls the same is still replaced when its
//! content differs, as `--checksum` does; the result is otherwise `rsync -a`'s).
//!
//! Each case builds a source tree and a pre-existing destination from a seed, copies the
//! destination twice, runs `rsync -a --checksum --delete [--exclude-from F] [--exclude
//! P]... SRC/ D1/`
//! and `stretcher::sync::sync(SRC, D2, ..)`, and compares D1 and D2 entry by entry (paths,
//! types, bytes, permission bits, mtime seconds, link targets, owners when root). rsync is
//! the judge; it is only ever run here, never by the product. A failing case prints its
//! seed; rerun one with `ORACLE_SEED=N cargo test --test integration rsync_oracle`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use filetime::FileTime;
use stretcher::filter::Filter;
use stretcher::sync::{self, SyncOptions};

use crate::util::verified_tree;

/// Random cases to run (seeds 1..=N).
const CASES: u64 = 60;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn rsync_bin() -> PathBuf {
    for p in ["/usr/bin/rsync", "/usr/local/bin/rsync", "/bin/rsync"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    match Command::new("rsync").arg("--version").output() {
        Ok(o) if o.status.success() => PathBuf::from("rsync"),
        _ => {
            panic!("rsync is not installed: the rsync oracle test needs it (apt-get install rsync)")
        }
    }
}

// ---------------------------------------------------------------- tree specs

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(String),
    /// A hard link to the file at this relative path (made earlier).
    HardLink(String),
    Fifo,
}

#[derive(Clone, Debug)]
struct Spec {
    node: Node,
    mode: u32,
    mtime: (i64, u32),
    owner: Option<(u32, u32)>,
}

/// rel path → spec; BTreeMap order puts every parent before its children.
type Tree = BTreeMap<String, Spec>;

fn parent(rel: &str) -> &str {
    rel.rfind('/').map_or("", |i| &rel[..i])
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "x",
    "top",
    "foo",
    "cache",
    "d1",
    "deep",
    "sub1",
    "keep",
    "[x]",
    "a.txt",
    "b.txt",
    "ab.txt",
    "x.log",
    "important.log",
    "y.tmp",
    "z.bin",
    "a.dat",
    "c.dat",
    "e~",
    "f",
    "a b",
    "lib",
    "node",
];

fn rand_name(rng: &mut fastrand::Rng) -> String {
    let n = NAMES[rng.usize(..NAMES.len())];
    if rng.u8(..10) < 3 {
        format!("{n}{}", rng.u8(..4))
    } else {
        n.to_string()
    }
}

fn rand_mtime(rng: &mut fastrand::Rng) -> (i64, u32) {
    let secs = 1_500_000_000 + rng.i64(0..5_000_000);
    let nanos = if rng.bool() {
        0
    } else {
        rng.u32(1..1_000_000_000)
    };
    (secs, nanos)
}

fn rand_owner(rng: &mut fastrand::Rng) -> Option<(u32, u32)> {
    (is_root() && rng.u8(..4) == 0).then(|| (1000 + rng.u32(..3), 1000 + rng.u32(..3)))
}

fn rand_bytes(rng: &mut fastrand::Rng, max: usize) -> Vec<u8> {
    let n = rng.usize(..=max);
    (0..n).map(|_| rng.u8(..)).collect()
}

fn file_mode(rng: &mut fastrand::Rng) -> u32 {
    [0o644, 0o600, 0o755, 0o640, 0o444, 0o700, 0o664][rng.usize(..7)]
}

fn dir_mode(rng: &mut fastrand::Rng) -> u32 {
    [0o755, 0o700, 0o750, 0o711, 0o555, 0o775][rng.usize(..6)]
}

fn rand_link_target(rng: &mut fastrand::Rng, tree: &Tree) -> String {
    match rng.u8(..5) {
        0 => "nowhere/zz".into(),
        1 => "/etc/hostname".into(),
        2 if !tree.is_empty() => {
            let k: Vec<&String> = tree.keys().collect();
            format!("../{}", k[rng.usize(..k.len())])
        }
        _ => rand_name(rng),
    }
}

fn gen_src(rng: &mut fastrand::Rng) -> Tree {
    let mut t = Tree::new();
    let target = rng.usize(20..=50);
    let mut dirs = vec![String::new()];
    let mut tries = 0;
    while t.len() < target && tries < 1000 {
        tries += 1;
        let dir = dirs[rng.usize(..dirs.len())].clone();
        if dir.matches('/').count() >= 3 {
            continue;
        }
        let rel = join(&dir, &rand_name(rng));
        if t.contains_key(&rel) {
            continue;
        }
        let r = rng.u8(..100);
        let (node, mode) = if r < 25 {
            dirs.push(rel.clone());
            (Node::Dir, dir_mode(rng))
        } else if r < 75 {
            (Node::File(rand_bytes(rng, 3000)), file_mode(rng))
        } else if r < 90 {
            (Node::Link(rand_link_target(rng, &t)), 0o777)
        } else if r < 96 {
            let files: Vec<&String> = t
                .iter()
                .filter(|(_, s)| matches!(s.node, Node::File(_)))
                .map(|(k, _)| k)
                .collect();
            if files.is_empty() {
                continue;
            }
            (Node::HardLink(files[rng.usize(..files.len())].clone()), 0)
        } else if is_root() {
            (Node::Fifo, 0o644)
        } else {
            continue;
        };
        let spec = Spec {
            node,
            mode,
            mtime: rand_mtime(rng),
            owner: rand_owner(rng),
        };
        t.insert(rel, spec);
    }
    t
}

/// A pre-existing destination made from overlaps of `src` and extra dest-only entries.
fn gen_dest(rng: &mut fastrand::Rng, src: &Tree) -> Tree {
    let mut d = Tree::new();
    for (rel, s) in src {
        let p = parent(rel);
        if !p.is_empty() && !matches!(d.get(p).map(|s| &s.node), Some(Node::Dir)) {
            continue;
        }
        let mut s = s.clone();
        if let Node::HardLink(to) = &s.node {
            // The dest copy of a hard link is an ordinary file (as rsync -a leaves it).
            let Some(orig) = src.get(to) else { continue };
            s.node = orig.node.clone();
            s.mode = orig.mode;
            s.mtime = orig.mtime;
        }
        let r = rng.u8(..100);
        match r {
            0..=34 => {}
            35..=44 => {
                // Same size and mtime seconds (other nanoseconds), other bytes: rsync's
                // quick check skips it.
                s.mtime.1 = rng.u32(..1_000_000_000);
                if let Node::File(data) = &mut s.node {
                    for b in data.iter_mut() {
                        *b = b.wrapping_add(1);
                    }
                }
            }
            45..=56 => match &mut s.node {
                Node::File(_) => {
                    s.node = Node::File(rand_bytes(rng, 3000));
                    if rng.bool() {
                        s.mtime = rand_mtime(rng);
                    }
                }
                Node::Link(_) => s.node = Node::Link(rand_link_target(rng, src)),
                Node::Dir => s.mtime = rand_mtime(rng),
                _ => {}
            },
            57..=64 => {
                s.mode = if s.node == Node::Dir {
                    dir_mode(rng)
                } else {
                    file_mode(rng)
                };
                s.owner = rand_owner(rng);
            }
            65..=74 => {
                // Type change.
                s.node = match s.node {
                    Node::Dir => {
                        s.mode = file_mode(rng);
                        Node::File(rand_bytes(rng, 100))
                    }
                    Node::File(_) if rng.bool() => Node::Link(rand_link_target(rng, src)),
                    _ => {
                        s.mode = dir_mode(rng);
                        d.insert(rel.clone(), s.clone_with(Node::Dir));
                        // Something inside the dir that has to go (never excluded-looking,
                        // so that rsync can make way for the file).
                        let child = Spec {
                            node: Node::File(b"in the way".to_vec()),
                            mode: 0o644,
                            mtime: rand_mtime(rng),
                            owner: None,
                        };
                        d.insert(join(rel, "zzz_inner"), child);
                        continue;
                    }
                };
                if matches!(s.node, Node::Link(_)) {
                    s.mode = 0o777;
                }
            }
            75..=89 => continue,
            _ => {}
        }
        d.insert(rel.clone(), s);
    }
    // Dest-only extras, some of them matching the exclude pool.
    let extras = rng.usize(0..10);
    for _ in 0..extras {
        let dirs: Vec<String> = std::iter::once(String::new())
            .chain(
                d.iter()
                    .filter(|(_, s)| s.node == Node::Dir)
                    .map(|(k, _)| k.clone()),
            )
            .collect();
        let dir = &dirs[rng.usize(..dirs.len())];
        let name = if rng.bool() {
            format!("extra{}", rng.u8(..20))
        } else {
            rand_name(rng)
        };
        let rel = join(dir, &name);
        if d.contains_key(&rel) {
            continue;
        }
        let kind = rng.u8(..10);
        let spec = Spec {
            node: match kind {
                0..=5 => Node::File(rand_bytes(rng, 500)),
                6..=7 => Node::Dir,
                _ => Node::Link(rand_link_target(rng, src)),
            },
            mode: if kind >= 8 {
                0o777
            } else if kind >= 6 {
                dir_mode(rng)
            } else {
                file_mode(rng)
            },
            mtime: rand_mtime(rng),
            owner: None,
        };
        let is_dir = spec.node == Node::Dir;
        d.insert(rel.clone(), spec);
        if is_dir {
            for _ in 0..rng.usize(0..4) {
                let child = join(&rel, &rand_name(rng));
                d.entry(child).or_insert_with(|| Spec {
                    node: Node::File(rand_bytes(rng, 200)),
                    mode: 0o644,
                    mtime: rand_mtime(rng),
                    owner: None,
                });
            }
        }
    }
    d
}

impl Spec {
    fn clone_with(&self, node: Node) -> Spec {
        Spec {
            node,
            ..self.clone()
        }
    }
}

fn materialize(root: &Path, tree: &Tree) {
    fs::create_dir_all(root).unwrap();
    for (rel, s) in tree {
        let p = root.join(rel);
        match &s.node {
            Node::Dir => fs::create_dir(&p).unwrap(),
            Node::File(data) => {
                fs::write(&p, data).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(s.mode)).unwrap();
            }
            Node::Link(t) => symlink(t, &p).unwrap(),
            Node::HardLink(_) => continue, // below, once every file exists
            Node::Fifo => {
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(s.mode)).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(s.mode)).unwrap();
            }
        }
        if let Some((u, g)) = s.owner {
            std::os::unix::fs::lchown(&p, Some(u), Some(g)).unwrap();
        }
        let mt = FileTime::from_unix_time(s.mtime.0, s.mtime.1);
        // (utimensat without following; filetime::set_file_mtime would open a fifo.)
        if !matches!(s.node, Node::Dir | Node::HardLink(_)) {
            filetime::set_symlink_file_times(&p, mt, mt).unwrap();
        }
    }
    for (rel, s) in tree {
        if let Node::HardLink(to) = &s.node {
            fs::hard_link(root.join(to), root.join(rel)).unwrap();
        }
    }
    // Directory modes and mtimes last, deepest first.
    for (rel, s) in tree.iter().rev() {
        if s.node == Node::Dir {
            let p = root.join(rel);
            fs::set_permissions(&p, fs::Permissions::from_mode(s.mode)).unwrap();
            let mt = FileTime::from_unix_time(s.mtime.0, s.mtime.1);
            filetime::set_file_mtime(&p, mt).unwrap();
        }
    }
}

// ---------------------------------------------------------------- excludes

const EXCLUDE_POOL: &[&str] = &[
    "*.log",
    "*.tmp",
    "/top",
    "top",
    "cache/",
    "a/*/c",
    "**/x",
    "d1/***",
    "?.txt",
    "[ab].dat",
    "**/deep/*.bin",
    "/d1/b",
    "foo",
    "b/",
    "*~",
    "keep/**",
    "sub*/",
    "\\[x\\]",
    "- *.dat",
    "+ important.log",
    "/lib/",
    "[!a-c]*.txt",
    "deep/a",
    "a b",
    "x*",
];

const EXCLUDE_FROM_POOL: &[&str] = &[
    "# a comment",
    "",
    "; another comment",
    "+ important.log",
    "- *.log",
    "cache/",
    "+ keep/",
    "- keep/*",
    "*.bin",
    "- /node",
    "+ a.txt",
    "?.dat",
    "/d1/***",
    "**/c",
    "sub1/",
];

struct Rules {
    exclude_from: Option<String>,
    excludes: Vec<String>,
}

fn gen_rules(rng: &mut fastrand::Rng) -> Rules {
    let excludes = (0..rng.usize(0..5))
        .map(|_| EXCLUDE_POOL[rng.usize(..EXCLUDE_POOL.len())].to_string())
        .collect();
    let exclude_from = (rng.u8(..3) > 0).then(|| {
        let mut lines: Vec<&str> = (0..rng.usize(1..7))
            .map(|_| EXCLUDE_FROM_POOL[rng.usize(..EXCLUDE_FROM_POOL.len())])
            .collect();
        lines.insert(0, "# exclude list");
        lines.join("\n") + "\n"
    });
    Rules {
        exclude_from,
        excludes,
    }
}

// ---------------------------------------------------------------- compare

#[derive(Debug, PartialEq)]
struct Seen {
    kind: &'static str,
    perms: u32,
    mtime: Option<i64>,
    content: Vec<u8>,
    owner: (u32, u32),
}

fn snapshot(root: &Path, src: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let m = fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        let (kind, content) = if ft.is_dir() {
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            let t = fs::read_link(e.path()).unwrap();
            ("symlink", t.into_os_string().into_encoded_bytes())
        } else if ft.is_file() {
            ("file", fs::read(e.path()).unwrap())
        } else {
            ("special", Vec::new())
        };
        // A dest-only directory that rsync could not delete (it holds excluded entries)
        // has "now" as mtime on both sides: not comparable to the second.
        let in_src = fs::symlink_metadata(src.join(&rel)).is_ok_and(|s| s.is_dir());
        let mtime = (!ft.is_dir() || in_src).then(|| m.mtime());
        let perms = if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        out.insert(
            rel,
            Seen {
                kind,
                perms,
                mtime,
                content,
                owner: (m.uid(), m.gid()),
            },
        );
    }
    out
}

fn diff(a: &BTreeMap<String, Seen>, b: &BTreeMap<String, Seen>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => d.push(format!("only in rsync's dest: {k:?} ({})", va.kind)),
            Some(vb) if va != vb => d.push(format!("{k:?}: rsync {va:?} / ours {vb:?}")),
            _ => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            d.push(format!("only in our dest: {k:?} ({})", vb.kind));
        }
    }
    d
}

// ---------------------------------------------------------------- one case

struct Case {
    src: Tree,
    dest: Option<Tree>,
    rules: Rules,
}

fn run_case(name: &str, case: &Case) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let src = tmp.path().join("src");
    let mut src_tree = case.src.clone();
    let list = case.rules.exclude_from.as_ref().map(|text| {
        src_tree.insert(
            "exclude.list".into(),
            Spec {
                node: Node::File(text.clone().into_bytes()),
                mode: 0o644,
                mtime: (1_600_000_000, 0),
                owner: None,
            },
        );
        src.join("exclude.list")
    });
    materialize(&src, &src_tree);
    fs::set_permissions(&src, fs::Permissions::from_mode(0o751)).unwrap();
    filetime::set_file_mtime(&src, FileTime::from_unix_time(1_234_567_890, 5)).unwrap();
    let (d1, d2) = (tmp.path().join("d1"), tmp.path().join("d2"));
    // The same case once more in move mode (the deploy's way: the staged source is
    // consumed by renames), from a second copy of the source into a third dest.
    let (src3, d3) = (tmp.path().join("src3"), tmp.path().join("d3"));
    materialize(&src3, &src_tree);
    fs::set_permissions(&src3, fs::Permissions::from_mode(0o751)).unwrap();
    filetime::set_file_mtime(&src3, FileTime::from_unix_time(1_234_567_890, 5)).unwrap();
    if let Some(dest) = &case.dest {
        materialize(&d1, dest);
        materialize(&d2, dest);
        materialize(&d3, dest);
    }

    let mut cmd = Command::new(rsync_bin());
    cmd.args(["-a", "--checksum", "--delete"]);
    if let Some(list) = &list {
        cmd.arg("--exclude-from").arg(list);
    }
    for p in &case.rules.excludes {
        cmd.arg(format!("--exclude={p}"));
    }
    cmd.arg(format!("{}/", src.display()))
        .arg(format!("{}/", d1.display()));
    let out = cmd.output().map_err(|e| format!("running rsync: {e}"))?;

    let filter = Filter::new(case.rules.exclude_from.as_deref(), &case.rules.excludes)
        .map_err(|e| format!("{name}: Filter::new: {e}"))?;
    let opts = SyncOptions {
        verbosity: 0,
        preserve_owner: is_root(),
        move_source: false,
        dest_mode: None,
    };
    let ours = sync::sync(&verified_tree(&src), &d2, &filter, &opts);
    let move_opts = SyncOptions {
        move_source: true,
        ..opts.clone()
    };
    // Move mode as the deploy runs it: plan, apply, and the deploy index made from
    // the plan, which must equal a walk of the result.
    let moved =
        sync::plan_staged(&verified_tree(&src3), &d3, &filter, &move_opts).and_then(|plan| {
            sync::apply(&plan, &move_opts)?;
            Ok(stretcher::index::from_plan(plan, move_opts.preserve_owner))
        });
    if let Ok(predicted) = &moved {
        let walked = stretcher::index::scan(&d3, &filter).map_err(|e| format!("{name}: {e}"))?;
        let drift = stretcher::index::diff(predicted, &walked);
        if !drift.is_empty() {
            let lines: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
            return Err(format!(
                "{name}: the index made from the plan differs from dest: {}",
                lines.join("; ")
            ));
        }
    }
    if ours.is_ok() != moved.is_ok() {
        return Err(format!(
            "{name}: copy mode {ours:?} but move mode {:?}",
            moved.as_ref().err()
        ));
    }
    let ctx = || {
        format!(
            "{name}: excludes {:?}, exclude_from {:?}\nrsync stderr: {}",
            case.rules.excludes,
            case.rules.exclude_from,
            String::from_utf8_lossy(&out.stderr)
        )
    };
    match (out.status.success(), &ours) {
        (true, Ok(_)) => {}
        (false, Err(_)) => return Ok(()), // both refuse (e.g. rsync's "could not make way")
        (true, Err(e)) => return Err(format!("{}\nrsync succeeded, ours failed: {e}", ctx())),
        // Not root, rsync cannot empty a read-only directory that stands in the way of a
        // new entry ("could not make way"); we make it writable first, on purpose.
        (false, Ok(_))
            if !is_root() && String::from_utf8_lossy(&out.stderr).contains("Permission denied") =>
        {
            return Ok(())
        }
        (false, Ok(_)) => return Err(format!("{}\nrsync failed, ours succeeded", ctx())),
    }
    let expected = snapshot(&d1, &src);
    let mut differences = diff(&expected, &snapshot(&d2, &src));
    differences.extend(
        diff(&expected, &snapshot(&d3, &src))
            .into_iter()
            .map(|d| format!("(move mode) {d}")),
    );
    if !differences.is_empty() {
        return Err(format!("{}\n  {}", ctx(), differences.join("\n  ")));
    }

    // The same source once more onto each result (a redeploy of the same archive):
    // rsync onto its own result, ours onto ours, in both modes (move mode from a fresh
    // copy of the source, the first was consumed).
    let out = cmd.output().map_err(|e| format!("running rsync: {e}"))?;
    let src4 = tmp.path().join("src4");
    materialize(&src4, &src_tree);
    fs::set_permissions(&src4, fs::Permissions::from_mode(0o751)).unwrap();
    filetime::set_file_mtime(&src4, FileTime::from_unix_time(1_234_567_890, 5)).unwrap();
    let again = sync::sync(&verified_tree(&src), &d2, &filter, &opts);
    let moved_again = sync::sync(
        &verified_tree(&src4),
        &d3,
        &filter,
        &SyncOptions {
            move_source: true,
            ..opts.clone()
        },
    );
    match (out.status.success(), &again, &moved_again) {
        (true, Ok(_), Ok(_)) => {}
        _ => {
            return Err(format!(
                "{}\nsecond run onto its own result: rsync {:?}, ours {again:?}, move mode {moved_again:?}\n{}",
                ctx(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
    let expected = snapshot(&d1, &src);
    let mut differences: Vec<String> = diff(&expected, &snapshot(&d2, &src))
        .into_iter()
        .map(|d| format!("(second run) {d}"))
        .collect();
    differences.extend(
        diff(&expected, &snapshot(&d3, &src))
            .into_iter()
            .map(|d| format!("(second run, move mode) {d}")),
    );
    if differences.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n  {}", ctx(), differences.join("\n  ")))
    }
}

fn random_case(seed: u64) -> Case {
    let mut rng = fastrand::Rng::with_seed(seed);
    let src = gen_src(&mut rng);
    let dest = (rng.u8(..10) > 0).then(|| gen_dest(&mut rng, &src));
    let rules = gen_rules(&mut rng);
    Case { src, dest, rules }
}

#[test]
fn random_trees_match_rsync() {
    let seeds: Vec<u64> = match std::env::var("ORACLE_SEED") {
        Ok(s) => vec![s.parse().expect("ORACLE_SEED is a number")],
        Err(_) => (1..=CASES).collect(),
    };
    let failures: Vec<String> = seeds
        .iter()
        .filter_map(|&seed| run_case(&format!("seed {seed}"), &random_case(seed)).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from rsync:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------- hand-written cases

fn file(data: &str, mtime: i64) -> Spec {
    Spec {
        node: Node::File(data.as_bytes().to_vec()),
        mode: 0o644,
        mtime: (mtime, 0),
        owner: None,
    }
}

fn dir() -> Spec {
    Spec {
        node: Node::Dir,
        mode: 0o755,
        mtime: (1_500_000_000, 0),
        owner: None,
    }
}

fn tree(entries: &[(&str, Spec)]) -> Tree {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn check(name: &str, src: Tree, dest: Tree, excludes: &[&str], exclude_from: Option<&str>) {
    let case = Case {
        src,
        dest: Some(dest),
        rules: Rules {
            exclude_from: exclude_from.map(str::to_string),
            excludes: excludes.iter().map(|s| s.to_string()).collect(),
        },
    };
    if let Err(e) = run_case(name, &case) {
        panic!("{e}");
    }
}

#[test]
fn excluded_dir_in_dest_keeps_its_excluded_content() {
    let src = tree(&[("keep", dir()), ("keep/f", file("a", 10))]);
    let dest = tree(&[
        ("gone", dir()),
        ("gone/sub", dir()),
        ("gone/sub/a.log", file("x", 1)),
        ("gone/sub/b.txt", file("y", 1)),
        ("gone/c.txt", file("z", 1)),
        ("cache", dir()),
        ("cache/big", file("cached", 1)),
        ("top.txt", file("q", 1)),
    ]);
    check("dest-only excluded", src, dest, &["*.log", "cache/"], None);
}

#[test]
fn trailing_slash_only_matches_directories() {
    let src = tree(&[
        ("foo", file("file foo", 10)),
        ("d", dir()),
        ("d/foo", dir()),
        ("d/foo/x", file("x", 3)),
    ]);
    let dest = tree(&[("bar", dir()), ("bar/foo", file("dest foo", 1))]);
    check("foo/ vs file foo", src, dest, &["foo/"], None);
    // The source dir `foo` is excluded; the dest file `foo` is judged as a file: deleted.
    let src = tree(&[("foo", dir()), ("foo/in", file("i", 1))]);
    let dest = tree(&[("foo", file("file", 2))]);
    check(
        "dest file where an excluded dir is",
        src,
        dest,
        &["foo/"],
        None,
    );
    // A dest dir excluded by `foo/` where the source has a file `foo`: rsync makes room.
    let src = tree(&[("foo", file("file", 2))]);
    let dest = tree(&[("foo", dir()), ("foo/in", file("i", 1))]);
    check(
        "excluded dest dir replaced by a file",
        src,
        dest,
        &["foo/"],
        None,
    );
}

#[test]
fn anchoring_and_double_star() {
    let src = tree(&[
        ("top", file("t", 1)),
        ("a", dir()),
        ("a/top", file("t2", 1)),
        ("a/b", dir()),
        ("a/b/c", file("c", 1)),
        ("a/b/x", file("x", 1)),
        ("x", file("x0", 1)),
        ("q", dir()),
        ("q/a", dir()),
        ("q/a/z", dir()),
        ("q/a/z/c", file("deep c", 1)),
    ]);
    check("/top", src.clone(), Tree::new(), &["/top"], None);
    check("a/*/c", src.clone(), Tree::new(), &["a/*/c"], None);
    check("**/x", src.clone(), Tree::new(), &["**/x"], None);
    check("dir/***", src.clone(), Tree::new(), &["a/***"], None);
    check("/a/**", src.clone(), Tree::new(), &["/a/**"], None);
    check(
        "exclude-from",
        src,
        tree(&[
            ("x.log", file("l", 1)),
            ("a", dir()),
            ("a/keep.log", file("k", 1)),
        ]),
        &["- *.log"],
        Some("# c\n\n; c\n+ keep.log\n- c\n/q/a/\n"),
    );
}

#[test]
fn quick_check_and_type_changes() {
    let src = tree(&[
        ("same", file("aaaa", 100)),
        ("newer", file("bbbb", 200)),
        (
            "link",
            Spec {
                node: Node::Link("target".into()),
                mode: 0o777,
                mtime: (300, 0),
                owner: None,
            },
        ),
        ("was_link", dir()),
        ("was_dir", file("now a file", 5)),
    ]);
    let dest = tree(&[
        ("same", file("zzzz", 100)),
        ("newer", file("bbbb", 150)),
        (
            "link",
            Spec {
                node: Node::Link("target".into()),
                mode: 0o777,
                mtime: (1, 0),
                owner: None,
            },
        ),
        (
            "was_link",
            Spec {
                node: Node::Link("/etc".into()),
                mode: 0o777,
                mtime: (1, 0),
                owner: None,
            },
        ),
        ("was_dir", dir()),
        ("was_dir/inner", dir()),
        ("was_dir/inner/f", file("f", 1)),
    ]);
    check("quick check", src, dest, &[], None);
}

/// `--exclude=` (an empty pattern) adds no rule in rsync; neither does `excludes: [""]`.
#[test]
fn empty_exclude_pattern_adds_no_rule() {
    let src = tree(&[("a.log", file("l", 1)), ("b", file("b", 1))]);
    let dest = tree(&[("c.log", file("c", 1)), ("d", file("d", 1))]);
    check("empty only", src.clone(), dest.clone(), &[""], None);
    check("empty among others", src, dest, &["", "*.log", ""], None);
}

/// rsync keeps each rules-file line in a C string: a NUL byte ends the rule there, and
/// a line that starts with NUL is empty (skipped).
#[test]
fn nul_in_a_rules_line_ends_the_rule() {
    let src = tree(&[
        ("a.txt", file("a", 1)),
        ("b.txt", file("b", 1)),
        ("c.txt", file("c", 1)),
    ]);
    let dest = tree(&[("a.txt.old", file("o", 1)), ("zz", file("z", 1))]);
    check(
        "NUL in exclude_from",
        src,
        dest,
        &[],
        Some("- a.txt\0and the rest is ignored\n\0- b.txt\n+ zz\0\n- z*\n"),
    );
}

/// Rules with non-UTF-8 bytes in an exclude_from file match names byte for byte, as
/// in rsync (`- \xe9*`, `- [\xe8]x`), against non-UTF-8 names in source and dest.
#[test]
fn non_utf8_rule_bytes_match_non_utf8_names() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let (src, d1, d2) = (
        tmp.path().join("src"),
        tmp.path().join("d1"),
        tmp.path().join("d2"),
    );
    let rules: &[u8] = b"# latin-1 names\n- \xe9*\n- [\xe8]x\n- sub/caf\xe9\n";
    let put = |root: &Path, name: &[u8], data: &[u8]| {
        let p = root.join(OsStr::from_bytes(name));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        filetime::set_file_mtime(&p, FileTime::from_unix_time(1_500_000_000, 0)).unwrap();
    };
    put(&src, b"rules.list", rules);
    for name in [
        &b"\xe9t\xe9"[..],
        b"caf\xe9.txt",
        b"\xe8x",
        b"\xe9x",
        b"sub/caf\xe9",
        b"sub/caf\xe9s",
        b"plain",
    ] {
        put(&src, name, name);
    }
    for d in [&d1, &d2] {
        for name in [&b"\xe9-dest-only"[..], b"y\xe9", b"\xe8x", b"sub/caf\xe9"] {
            put(d, name, b"old");
        }
    }
    let out = Command::new(rsync_bin())
        .args(["-a", "--delete"])
        .arg(format!(
            "--exclude-from={}",
            src.join("rules.list").display()
        ))
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", d1.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let filter = Filter::from_bytes(Some(rules), &[]).unwrap();
    let opts = SyncOptions {
        verbosity: 0,
        preserve_owner: is_root(),
        move_source: false,
        dest_mode: None,
    };
    sync::sync(&verified_tree(&src), &d2, &filter, &opts).unwrap();
    let expected = snapshot(&d1, &src);
    let listing = |root: &Path| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v: Vec<_> = walkdir::WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                let data = if e.file_type().is_file() {
                    fs::read(e.path()).unwrap()
                } else {
                    b"<dir>".to_vec()
                };
                (rel, data)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(listing(&d2), listing(&d1));
    assert!(diff(&expected, &snapshot(&d2, &src)).is_empty());
    // What rsync decided, spelled out: excluded names kept as they were in dest.
    assert_eq!(
        fs::read(d1.join(OsStr::from_bytes(b"\xe8x"))).unwrap(),
        b"old"
    );
    assert!(d1.join(OsStr::from_bytes(b"\xe9-dest-only")).exists());
    assert!(!d1.join(OsStr::from_bytes(b"y\xe9")).exists());
    assert!(!d1.join(OsStr::from_bytes(b"\xe9t\xe9")).exists());
}
