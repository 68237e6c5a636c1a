//! Archives as real tools write them (issue 12, SPEC §7): a corpus built at test time
//! by `make_corpus.py` from GNU tar, bsdtar, gzip, zstd / pzstd, xz, bzip2, git and
//! Python's tarfile. Each archive is extracted by GNU tar 1.34 (the judge) and deployed
//! by the stretcher binary into an empty dest, then `--dry-run` and a second deploy run
//! on the result: the trees must be equal entry by entry (type, bytes, mode, mtime,
//! owners as root, link target; sparse files no more blocks than GNU tar's), the dry run
//! and the redeploy must change nothing (no file rewritten: same inodes), and what SPEC
//! §7 refuses must be refused with its words, once, leaving no dest behind.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::{manifest_for, Scratch};

/// Sparse files may take this many 512-byte blocks more than GNU tar's extraction.
const SPARSE_MARGIN_BLOCKS: u64 = 64;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The decompressor GNU tar is given the archive through (by content, as stretcher
/// sniffs it; GNU tar's own detection does not know pzstd's skippable frames).
fn decompressor(archive: &Path) -> Option<&'static str> {
    let head: Vec<u8> = fs::read(archive).unwrap().into_iter().take(6).collect();
    match head.as_slice() {
        [0x1f, 0x8b, ..] => Some("gzip -dc"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd -dc"),
        [b, 0x2a, 0x4d, 0x18, ..] if b & 0xf0 == 0x50 => Some("zstd -dc"),
        [0xfd, b'7', b'z', b'X', b'Z', 0] => Some("xz -dc"),
        [b'B', b'Z', b'h', ..] => Some("bzip2 -dc"),
        _ => None,
    }
}

/// GNU tar extracts `archive` into `into`; its exit status.
fn gnu_tar(archive: &Path, into: &Path) -> i32 {
    fs::create_dir_all(into).unwrap();
    let script = match decompressor(archive) {
        Some(d) => format!("set -o pipefail; {d} < \"$1\" | tar -xf - -C \"$2\""),
        None => "tar -xf \"$1\" -C \"$2\"".to_string(),
    };
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .arg(archive)
        .arg(into)
        .output()
        .expect("run GNU tar");
    out.status.code().unwrap_or(-1)
}

/// One node of a tree, as compared.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    mtime: (i64, i64),
    owner: Option<(u32, u32)>,
    size: u64,
    target: Option<PathBuf>,
    ino: u64,
    blocks: u64,
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut map = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        map.insert(
            rel,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                mtime: (m.mtime(), m.mtime_nsec()),
                owner: is_root().then(|| (m.uid(), m.gid())),
                size: m.size(),
                target: ft.is_symlink().then(|| fs::read_link(e.path()).unwrap()),
                ino: m.ino(),
                blocks: m.blocks(),
            },
        );
    }
    map
}

/// Differences between GNU tar's tree and stretcher's, one line each.
fn compare(oracle: &Path, got: &Path, since: i64) -> Vec<String> {
    let (want, have) = (tree(oracle), tree(got));
    let mut diffs = Vec::new();
    for (rel, w) in &want {
        let Some(h) = have.get(rel) else {
            diffs.push(format!("{rel:?}: missing"));
            continue;
        };
        let mut d = |what: &str, a: String, b: String| {
            if a != b {
                diffs.push(format!("{rel:?}: {what}: GNU tar {a}, stretcher {b}"));
            }
        };
        d("type", w.kind.into(), h.kind.into());
        d("owner", format!("{:?}", w.owner), format!("{:?}", h.owner));
        d(
            "target",
            format!("{:?}", w.target),
            format!("{:?}", h.target),
        );
        if w.kind != "symlink" {
            d("mode", format!("{:o}", w.mode), format!("{:o}", h.mode));
            // A directory GNU tar left with the time of its extraction: it had no
            // member, or GNU tar set its time before writing a later member into it
            // (bsdtar lists a directory's files after other entries). stretcher gives
            // it the archive's time, or for an implicit one, the time of creation.
            if !(w.kind == "dir" && w.mtime.0 >= since) {
                d("mtime", format!("{:?}", w.mtime), format!("{:?}", h.mtime));
            }
        }
        if w.kind == "file" && h.kind == "file" {
            d("size", w.size.to_string(), h.size.to_string());
            if fs::read(oracle.join(rel)).unwrap() != fs::read(got.join(rel)).unwrap() {
                diffs.push(format!("{rel:?}: bytes differ"));
            }
            if w.blocks * 512 < w.size && h.blocks > w.blocks + SPARSE_MARGIN_BLOCKS {
                diffs.push(format!(
                    "{rel:?}: sparse file takes {} blocks, GNU tar's {}",
                    h.blocks, w.blocks
                ));
            }
        }
    }
    for rel in have.keys().filter(|r| !want.contains_key(*r)) {
        diffs.push(format!("{rel:?}: not in GNU tar's tree"));
    }
    diffs
}

fn deploy(s: &Scratch, manifest: &Path, dry_run: bool) -> crate::util::Run {
    let mut cmd = s.stretcher().limit(Duration::from_secs(120));
    if dry_run {
        cmd = cmd.arg("--dry-run");
    }
    cmd.arg(manifest).run()
}

/// Everything that is wrong with stretcher on one archive (empty: all good).
fn check(dir: &Path, name: &str, expect: &str) -> Vec<String> {
    let archive = dir.join("corpus").join(name);
    let oracle = dir.join("oracle").join(name);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let rc = gnu_tar(&archive, &oracle);
    let s = Scratch::new();
    let dest = s.dest();
    let manifest = s.manifest("manifest.yml", &manifest_for(&archive, &dest, ""));
    let mut problems = Vec::new();
    if let Some(words) = expect.strip_prefix("refuse:") {
        if rc == 0 {
            problems.push("GNU tar extracts it: the corpus is wrong".into());
        }
        let run = deploy(&s, &manifest, false);
        if run.code() != 1 {
            problems.push(format!(
                "deployed (exit {}), expected a refusal",
                run.code()
            ));
        }
        let lines = run.stderr.lines().filter(|l| l.contains(words)).count();
        if lines != 1 {
            problems.push(format!(
                "{lines} log lines say {words:?} (want 1):\n{}",
                run.stderr
            ));
        }
        if dest.exists() {
            problems.push("a refused deploy created dest".into());
        }
        return problems;
    }
    if expect == "ok" && rc != 0 {
        problems.push(format!("GNU tar exits {rc}: the corpus is wrong"));
    }
    let first = deploy(&s, &manifest, false);
    if first.code() != 0 {
        problems.push(format!("first deploy failed:\n{}", first.stderr));
        return problems;
    }
    problems.extend(compare(&oracle, &dest, since));
    let before = tree(&dest);
    let dry = deploy(&s, &manifest, true);
    if !dry
        .stderr
        .contains("Dry run: 0 to add, 0 to update, 0 to delete")
    {
        problems.push(format!(
            "dry run on the result predicts changes:\n{}",
            dry.stderr
        ));
    }
    let second = deploy(&s, &manifest, false);
    if second.code() != 0 {
        problems.push(format!("redeploy failed:\n{}", second.stderr));
        return problems;
    }
    if !second.stderr.contains(": 0 created, 0 updated, 0 deleted,") {
        problems.push(format!("redeploy changed something:\n{}", second.stderr));
    }
    let after = tree(&dest);
    if before != after {
        for (rel, b) in &before {
            if after.get(rel) != Some(b) {
                problems.push(format!(
                    "{rel:?} changed on redeploy: {b:?} -> {:?}",
                    after.get(rel)
                ));
            }
        }
    }
    problems.extend(compare(&oracle, &dest, since));
    problems
}

#[test]
fn real_tools_archives_deploy_as_gnu_tar_extracts_them() {
    let dir = tempfile::Builder::new()
        .prefix("stretcher-corpus-")
        .tempdir()
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/make_corpus.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.path().join("corpus"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "make_corpus.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = fs::read_to_string(dir.path().join("corpus/index.tsv")).unwrap();
    let rows: Vec<(&str, &str)> = index
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    assert!(rows.len() >= 40, "only {} archives", rows.len());
    let mut failures = Vec::new();
    for (name, expect) in &rows {
        let problems = check(dir.path(), name, expect);
        eprintln!(
            "{name}: {}",
            if problems.is_empty() { "ok" } else { "FAILED" }
        );
        for p in problems {
            failures.push(format!("{name}: {p}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The corpus is not empty of what it claims to test.
    let names: Vec<&[u8]> = rows.iter().map(|(n, _)| n.as_bytes()).collect();
    for needle in [
        &b"sparse-pax-1.0"[..],
        b"pzstd",
        b"tar.xz",
        b"tar.bz2",
        b"append-r",
    ] {
        assert!(
            names
                .iter()
                .any(|n| n.windows(needle.len()).any(|w| w == needle)),
            "{:?}",
            std::ffi::OsStr::from_bytes(needle)
        );
    }
}
