//! `sync_strategy: release` through the real binary (SPEC §14): the atomic switch under
//! a concurrent reader process, SIGKILL at seeded points of a release deploy, the disk
//! cost of hard-linked releases, the switch back when `post` fails, `releases` and
//! `rollback`, `keep_releases`, and the rules for what dest may be.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::util::*;

const T0: u64 = 1_600_000_000;
/// Written last into every test archive: a release that has it is complete.
const MARKER: &str = "zz-complete";

/// A tar of `files` (path, content, mtime) in order, parents created as needed, the
/// marker last.
fn tar_of(files: &[(String, Vec<u8>, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar_header(tar::EntryType::Directory, 0o755, T0, 0);
    b.append_data(&mut h, "./", std::io::empty()).unwrap();
    let mut dirs = BTreeSet::new();
    for (path, data, mtime) in files {
        let p = Path::new(path);
        let mut acc = PathBuf::new();
        for c in p.parent().into_iter().flat_map(|d| d.components()) {
            acc.push(c);
            if dirs.insert(acc.clone()) {
                let mut h = tar_header(tar::EntryType::Directory, 0o755, T0, 0);
                b.append_data(&mut h, &acc, std::io::empty()).unwrap();
            }
        }
        let mut h = tar_header(tar::EntryType::Regular, 0o644, *mtime, data.len() as u64);
        b.append_data(&mut h, p, &data[..]).unwrap();
    }
    let mut h = tar_header(tar::EntryType::Regular, 0o644, T0, 3);
    b.append_data(&mut h, MARKER, &b"ok\n"[..]).unwrap();
    b.into_inner().unwrap()
}

fn release_manifest(archive: &Path, dest: &Path, extra: &str) -> String {
    manifest_for(archive, dest, &format!("sync_strategy: release\n{extra}"))
}

fn releases_dir(dest: &Path) -> PathBuf {
    PathBuf::from(format!("{}.releases", dest.display()))
}

/// The release dest links to (asserting that it is a link to a complete release).
#[track_caller]
fn live(dest: &Path) -> PathBuf {
    let target = std::fs::read_link(dest).expect("dest is a symlink");
    assert!(
        target.join(MARKER).is_file(),
        "dest links to an incomplete release {}",
        target.display()
    );
    target
}

/// The release IDs in the releases directory (complete ones only).
fn ids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.ends_with(".json"))
        .collect();
    v.sort();
    v
}

/// Names in the releases directory that are neither a release nor its metadata.
fn junk(dir: &Path) -> Vec<String> {
    let ids = ids(dir);
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !ids.contains(n)
                && !n
                    .strip_suffix(".json")
                    .is_some_and(|i| ids.iter().any(|x| x == i))
        })
        .collect();
    v.sort();
    v
}

/// Names beside dest other than dest, its releases directory and its lock.
fn beside(s: &Scratch) -> Vec<String> {
    s.leftovers()
        .into_iter()
        .filter(|n| n != "dest.releases")
        .collect()
}

/// Path → (inode, content) below a release, never following links.
fn inodes(root: &Path) -> BTreeMap<PathBuf, u64> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            (rel, e.metadata().unwrap().ino())
        })
        .collect()
}

/// `stretcher releases DEST` lines, split into words.
fn releases(s: &Scratch, dest: &Path) -> Vec<Vec<String>> {
    let r = stretcher().cwd(&s.work()).arg("releases").arg(dest).run();
    r.assert_ok();
    r.stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// VERSION and a/b/file say `tag` (with an mtime of the tag's own), `n` files are the
/// same in every version.
/// `stretcher rollback` with the scratch's state directory.
fn rollback(s: &Scratch) -> Stretcher {
    stretcher()
        .cwd(&s.work())
        .arg("rollback")
        .arg("--state-dir")
        .arg(s.state_dir())
}

fn small_version(tag: &str, n: usize) -> Vec<(String, Vec<u8>, u64)> {
    let t = T0 + 1 + tag.bytes().map(u64::from).sum::<u64>();
    let mut files = vec![
        ("VERSION".to_string(), format!("{tag}\n").into_bytes(), t),
        (
            "a/b/file".to_string(),
            format!("file of {tag}\n").into_bytes(),
            t,
        ),
    ];
    for i in 0..n {
        files.push((
            format!("d{}/f{i:03}", i % 7),
            format!("same {i}\n").into_bytes(),
            T0,
        ));
    }
    files
}

/// Atomicity: a reader process stats and opens dest/VERSION and dest/a/b/file in a
/// loop while 200 deploys alternate between two archives; it never sees ENOENT, and
/// every readlink(dest) taken meanwhile names a release holding the marker (written
/// last in the archives).
#[test]
fn the_switch_is_atomic_for_a_reader() {
    let s = Scratch::new();
    let dest = s.dest();
    let a = s.file("a.tar", &tar_of(&small_version("A", 40)));
    let b = s.file("b.tar", &tar_of(&small_version("B", 40)));
    let ma = s.manifest("a.yml", &release_manifest(&a, &dest, ""));
    let mb = s.manifest("b.yml", &release_manifest(&b, &dest, ""));
    s.stretcher().arg(&ma).run().assert_ok();
    live(&dest);

    let stop = s.path().join("stop");
    // The reader: shell builtins only (`[ -e ]` stats, `read <` opens), no fork per
    // iteration; any failed open prints an error line.
    let script = r#"
        d=$1; n=0; bad=0
        while [ ! -e "$2" ]; do
            [ -e "$d/VERSION" ] || { echo "stat VERSION failed"; bad=$((bad+1)); }
            read v < "$d/VERSION" || { echo "open VERSION failed"; bad=$((bad+1)); }
            read f < "$d/a/b/file" || { echo "open a/b/file failed"; bad=$((bad+1)); }
            [ -e "$d/a/b/file" ] || { echo "stat a/b/file failed"; bad=$((bad+1)); }
            n=$((n+1))
        done
        echo "reads $n bad $bad"
    "#;
    let reader = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&dest)
        .arg(&stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // readlink(dest) in a loop, in this process.
    let done = Arc::new(AtomicBool::new(false));
    let looker = {
        let (dest, done) = (dest.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut seen, mut gone) = (0u64, 0u64);
            while !done.load(Ordering::Relaxed) {
                let target = std::fs::read_link(&dest).expect("dest is always a symlink");
                if !target.join(MARKER).is_file() {
                    // Only acceptable when the whole release was removed since (a
                    // cleanup renames it away first, so it is complete or absent).
                    assert!(
                        !target.exists(),
                        "dest links to the incomplete release {}",
                        target.display()
                    );
                    gone += 1;
                }
                seen += 1;
            }
            (seen, gone)
        })
    };
    for i in 0..200 {
        let m = if i % 2 == 0 { &mb } else { &ma };
        s.stretcher()
            .arg("--rsync-verbose=")
            .arg(m)
            .run()
            .assert_ok();
    }
    std::fs::write(&stop, "").unwrap();
    done.store(true, Ordering::Relaxed);
    let (seen, gone) = looker.join().unwrap();
    let out = reader.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "reader: {}; readlinks: {seen} ({gone} of a release removed since)",
        stdout.trim()
    );
    assert!(
        stdout.contains(" bad 0"),
        "reader saw failures:\n{stdout}\n{stderr}"
    );
    assert!(stderr.is_empty(), "reader stderr: {stderr}");
    let reads: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(reads > 200, "the reader ran only {reads} rounds");
    assert!(
        seen > 200 && gone * 10 < seen,
        "{seen} readlinks, {gone} gone"
    );
    // The last deploy was of A: dest holds A, five releases kept, no leftovers.
    assert_eq!(std::fs::read(dest.join("VERSION")).unwrap(), b"A\n");
    assert_eq!(ids(&releases_dir(&dest)).len(), 5);
    assert!(junk(&releases_dir(&dest)).is_empty());
    assert!(beside(&s).is_empty(), "{:?}", beside(&s));
}

// ---- SIGKILL at seeded points ----

const KILL_POINTS: u64 = 24;
const MIN_KILL_POINTS: u64 = 20;
const SEED: u64 = 0x5eed_0015;

/// v1 / v2 of a 1,500-file tree; v2 rewrites every third file.
fn kill_versions() -> [Vec<(String, Vec<u8>, u64)>; 2] {
    let mut rng = fastrand::Rng::with_seed(15);
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for i in 0..1500 {
        let p = format!("d{:02}/f{i:04}", i % 30);
        let pad: String = (0..rng.usize(50..400))
            .map(|_| rng.alphanumeric())
            .collect();
        v1.push((p.clone(), format!("v1 {p} {pad}\n").into_bytes(), T0));
        if i % 3 == 0 {
            v2.push((p.clone(), format!("v2 {p} {pad}\n").into_bytes(), T0 + 100));
        } else {
            v2.push((p, v1[i].1.clone(), T0));
        }
    }
    v1.push(("VERSION".into(), b"v1\n".to_vec(), T0));
    v2.push(("VERSION".into(), b"v2\n".to_vec(), T0 + 100));
    [v1, v2]
}

/// The tree below a release: path → content.
fn contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(root).unwrap().to_path_buf(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn expected(files: &[(String, Vec<u8>, u64)]) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m: BTreeMap<PathBuf, Vec<u8>> = files
        .iter()
        .map(|(p, d, _)| (PathBuf::from(p), d.clone()))
        .collect();
    m.insert(PathBuf::from(MARKER), b"ok\n".to_vec());
    m
}

/// Where a kill is aimed: after the n-th stderr line containing `after`, plus `delay`.
struct Aim {
    after: &'static str,
    delay: Duration,
}

/// Runs a deploy and SIGKILLs it (by pid) as `aim` says; returns the log lines read.
fn deploy_and_kill(s: &Scratch, manifest: &Path, aim: &Aim) -> Vec<String> {
    let mut child = Command::new(bin())
        .arg("--state-dir")
        .arg(s.state_dir())
        .arg(manifest)
        .current_dir(s.work())
        .env_remove("CONSUL_INDEX")
        .env_remove("SERF_EVENT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let needle = aim.after;
    let lines = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if line.contains(needle) {
                let _ = tx.send(());
            }
            all.push(line);
        }
        all
    });
    let _ = rx.recv_timeout(Duration::from_secs(30));
    std::thread::sleep(aim.delay);
    let _ = child.kill(); // SIGKILL, this pid only
    let _ = child.wait();
    assert!(start.elapsed() < Duration::from_secs(60));
    lines.join().unwrap()
}

/// SIGKILL at 24 seeded points of a release deploy of 1,500 files: during the unpack,
/// right after the rename of `.ID.partial`, right after the switch (while `post` runs),
/// during the cleanup, and at random times. After each kill dest links to a complete
/// release (old or new, exactly its archive's tree); the next run removes the leftovers
/// and deploys correctly, and so does a second run onto its result.
#[test]
fn sigkill_at_seeded_points_leaves_dest_on_a_complete_release() {
    let began = Instant::now();
    let s = fast_scratch();
    let dest = s.dest();
    let dir = releases_dir(&dest);
    let versions = kill_versions();
    let trees = [expected(&versions[0]), expected(&versions[1])];
    let archives = [
        s.file("v1.tar", &tar_of(&versions[0])),
        s.file("v2.tar", &tar_of(&versions[1])),
    ];
    // keep 1: every successful deploy has an older release to remove (the cleanup).
    let extra = "keep_releases: 1\ncommands:\n  post: [\"true\"]\n";
    let manifests = [
        s.manifest("m1.yml", &release_manifest(&archives[0], &dest, extra)),
        s.manifest("m2.yml", &release_manifest(&archives[1], &dest, extra)),
    ];
    for m in [&manifests[0], &manifests[1], &manifests[0]] {
        s.stretcher().arg(m).run().assert_ok();
    }
    // Calibration: one whole deploy.
    let t = Instant::now();
    s.stretcher().arg(&manifests[1]).run().assert_ok();
    let total = t.elapsed();
    let mut holds = 1; // dest holds v2
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    let mut done = 0;
    for i in 0..KILL_POINTS {
        if began.elapsed() > Duration::from_secs(240) {
            assert!(i >= MIN_KILL_POINTS, "out of time after {i} kill points");
            break;
        }
        let mut rng = fastrand::Rng::with_seed(SEED + i);
        let next = 1 - holds;
        let aim = match i % 5 {
            0 => Aim {
                after: "Extract archive",
                delay: total.mul_f64(rng.f64() * 0.5),
            },
            1 => Aim {
                after: "is complete in",
                delay: Duration::ZERO,
            },
            2 => Aim {
                after: "Switched",
                delay: Duration::ZERO,
            },
            3 => Aim {
                after: "Removing release",
                delay: Duration::from_micros(rng.u64(0..3000)),
            },
            _ => Aim {
                after: "Starting up",
                delay: total.mul_f64(rng.f64()),
            },
        };
        let log = deploy_and_kill(&s, &manifests[next], &aim);
        let what = format!("kill point {i} (after {:?} + {:?})", aim.after, aim.delay);
        let target = live(&dest);
        let now = contents(&target);
        let phase = if now == trees[holds] {
            let new_complete = ids(&dir).len() > 2;
            if new_complete {
                "new release complete, not switched"
            } else {
                "before the new release was complete"
            }
        } else if now == trees[next] {
            if log.iter().any(|l| l.contains("Removing release")) {
                "during or after the cleanup"
            } else {
                "after the switch"
            }
        } else {
            panic!(
                "{what}: dest links to {} holding neither tree",
                target.display()
            );
        };
        *phases.entry(phase).or_default() += 1;
        if now == trees[next] {
            holds = next;
        }
        // The next run: deploys the other version, removes every leftover.
        for _ in 0..2 {
            let next = 1 - holds;
            s.stretcher()
                .arg("--rsync-verbose=")
                .arg(&manifests[next])
                .run()
                .assert_ok();
            holds = next;
            let now = contents(&live(&dest));
            assert!(
                now == trees[holds],
                "{what}: the rerun did not give its tree"
            );
            assert!(junk(&dir).is_empty(), "{what}: left {:?}", junk(&dir));
            assert!(
                beside(&s).is_empty(),
                "{what}: beside dest {:?}",
                beside(&s)
            );
            assert!(ids(&dir).len() <= 2, "{what}: {:?}", ids(&dir));
        }
        done += 1;
    }
    eprintln!("{done} kill points: {phases:?} in {:?}", began.elapsed());
    assert!(
        phases.len() >= 3,
        "kills landed in too few phases: {phases:?}"
    );
}

/// A scratch area on tmpfs (`/dev/shm`) when there is one, as in faults.rs: what a
/// SIGKILL leaves depends on the order of renames, not on the disk.
fn fast_scratch() -> Scratch {
    let tmp = tempfile::Builder::new()
        .prefix("stretcher-it-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::Builder::new().prefix("stretcher-it-").tempdir())
        .unwrap();
    std::fs::create_dir(tmp.path().join("work")).unwrap();
    std::fs::create_dir(tmp.path().join("parent")).unwrap();
    Scratch { tmp }
}

// ---- disk cost ----

/// 10 releases of a 20,000-file tree, 1% of the files changed in each: all of them
/// take at most 1.2 × one tree plus the changed bytes (`du`), and unchanged files
/// share their inode across releases.
#[test]
fn releases_share_unchanged_files() {
    let s = Scratch::new();
    let dest = s.dest();
    let dir = releases_dir(&dest);
    let mut rng = fastrand::Rng::with_seed(1520);
    let mut files: Vec<(String, Vec<u8>, u64)> = (0..20_000)
        .map(|i| {
            let len = rng.usize(500..6000);
            let data: Vec<u8> = (0..len).map(|_| rng.alphanumeric() as u8).collect();
            (format!("d{:03}/f{i:05}", i % 200), data, T0)
        })
        .collect();
    let mut changed_bytes = 0u64;
    let extra = "keep_releases: 10\n";
    for round in 0..10u64 {
        if round > 0 {
            for k in 0..200 {
                let idx = rng.usize(0..files.len());
                let len = rng.usize(500..6000);
                files[idx].1 = (0..len).map(|_| rng.alphanumeric() as u8).collect();
                files[idx].2 = T0 + round * 10 + k % 2;
                changed_bytes += (len as u64).div_ceil(4096) * 4096;
            }
        }
        let a = s.file("app.tar", &tar_of(&files));
        let m = s.manifest("m.yml", &release_manifest(&a, &dest, extra));
        s.stretcher()
            .arg("--rsync-verbose=")
            .arg(&m)
            .limit(Duration::from_secs(120))
            .run()
            .assert_ok();
    }
    // Every deploy test deploys a second time onto its own result.
    let m = s.path().join("m.yml");
    s.stretcher()
        .arg("--rsync-verbose=")
        .arg(&m)
        .limit(Duration::from_secs(120))
        .run()
        .assert_ok();
    let all = ids(&dir);
    assert_eq!(all.len(), 10, "{all:?}");
    assert_eq!(contents(&live(&dest)), expected(&files));
    let du = |p: &Path| -> u64 {
        let out = Command::new("du")
            .arg("-s")
            .arg("-B1")
            .arg(p)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let one = du(&live(&dest));
    let total = du(&dir);
    eprintln!(
        "one tree {one} bytes; 10 releases {total} bytes; changed {changed_bytes} bytes; ratio {:.3}",
        total as f64 / (one + changed_bytes) as f64
    );
    assert!(
        (total as f64) <= 1.2 * one as f64 + changed_bytes as f64,
        "10 releases take {total} bytes, one tree {one}, changed {changed_bytes}"
    );
    // stat: an unchanged file is one inode in the oldest and the newest release.
    let (oldest, newest) = (inodes(&dir.join(&all[0])), inodes(&dir.join(&all[9])));
    let shared = oldest
        .iter()
        .filter(|(p, ino)| newest.get(*p) == Some(ino))
        .count();
    assert!(shared > 15_000, "only {shared} files share their inode");
    assert!(shared < 20_000, "changed files must not share: {shared}");
    let m = std::fs::metadata(dir.join(&all[9]).join("d000/f00000")).unwrap();
    assert!(m.nlink() >= 2 || m.mtime() > T0 as i64);
}

// ---- post failure, releases, rollback ----

/// A failing `post` puts dest back on the old release (same inodes), runs `failure`,
/// and leaves the new release listed as bad; `rollback` never picks a bad release,
/// `rollback --to` an unknown ID fails with one line, and nothing to roll back to too.
#[test]
fn failed_post_switches_back_and_rollback_skips_bad_releases() {
    let s = Scratch::new();
    let dest = s.dest();
    let dir = releases_dir(&dest);
    let fail_flag = s.path().join("fail-post");
    let failure_ran = s.path().join("failure-ran");
    let hooks = format!(
        "commands:\n  post: [\"test ! -e {}\"]\n  failure: [\"touch {}\"]\n",
        fail_flag.display(),
        failure_ran.display()
    );
    let archive = |tag: &str| s.file(&format!("{tag}.tar"), &tar_of(&small_version(tag, 5)));
    let m = |tag: &str| {
        let a = archive(tag);
        s.manifest(&format!("{tag}.yml"), &release_manifest(&a, &dest, &hooks))
    };
    let (ma, mb, mc) = (m("A"), m("B"), m("C"));

    // First deploy whose post fails: dest is removed again.
    std::fs::write(&fail_flag, "").unwrap();
    s.stretcher().arg(&ma).run().assert_fail();
    assert!(
        std::fs::symlink_metadata(&dest).is_err(),
        "dest must be gone again"
    );
    assert!(failure_ran.exists());
    let l = releases(&s, &dest);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].last().unwrap(), "bad", "{l:?}");
    std::fs::remove_file(&fail_flag).unwrap();
    std::fs::remove_file(&failure_ran).unwrap();

    s.stretcher().arg(&ma).run().assert_ok();
    // A second time onto its own result: the live release holds it (SPEC §11).
    s.stretcher()
        .arg(&ma)
        .run()
        .assert_ok()
        .assert_log("nothing to download");
    let a_release = live(&dest);
    assert_eq!(
        ids(&dir).len(),
        1,
        "the bad one went at the cleanup: {:?}",
        ids(&dir)
    );
    let before = inodes(&a_release);

    // post fails on B: back to A, same inode set, failure ran, B bad.
    std::fs::write(&fail_flag, "").unwrap();
    let r = s.stretcher().arg(&mb).run();
    r.assert_fail().assert_log("switched");
    std::fs::remove_file(&fail_flag).unwrap();
    assert_eq!(live(&dest), a_release);
    assert_eq!(inodes(&live(&dest)), before);
    assert_eq!(std::fs::read(dest.join("VERSION")).unwrap(), b"A\n");
    assert!(failure_ran.exists(), "failure did not run");
    let l = releases(&s, &dest);
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(
        l[0][3..],
        ["bad"],
        "newest first, the failed B is bad: {l:?}"
    );
    assert_eq!(l[1][3..], ["live"], "{l:?}");
    assert_eq!(l[0][1], sha1_file(&s.path().join("B.tar"))[..12]);

    // Deploy B and C, then roll back: a bad release is never picked.
    s.stretcher().arg(&mb).run().assert_ok();
    s.stretcher().arg(&mc).run().assert_ok();
    let c_release = live(&dest);
    let c_id = c_release.file_name().unwrap().to_str().unwrap().to_string();
    rollback(&s).arg(&dest).run().assert_ok(); // C -> B, C bad
    assert_eq!(std::fs::read(dest.join("VERSION")).unwrap(), b"B\n");
    // --to C by name: C live again, B (left) bad
    rollback(&s)
        .args(["--to", &c_id])
        .arg(&dest)
        .run()
        .assert_ok();
    assert_eq!(live(&dest), c_release);
    // from C, the newest older release is the bad B: skipped for A
    rollback(&s).arg(&dest).run().assert_ok();
    assert_eq!(live(&dest), a_release, "rollback picked a bad release");
    let l = releases(&s, &dest);
    let flags: Vec<&[String]> = l.iter().map(|w| &w[3..]).collect();
    assert_eq!(flags, [&["bad"][..], &["bad"], &["live"]], "{l:?}");
    // Nothing good older than A: one line, exit 1, nothing changed.
    let r = rollback(&s).arg(&dest).run();
    r.assert_fail();
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("nothing to roll back to"), "{}", r.stderr);
    assert_eq!(live(&dest), a_release);
    // --to an unknown ID: one line, exit 1.
    let r = rollback(&s)
        .args(["--to", "20200101T000000Z-00000000"])
        .arg(&dest)
        .run();
    r.assert_fail();
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("unknown release"), "{}", r.stderr);
    assert_eq!(live(&dest), a_release);
    assert!(beside(&s).is_empty(), "{:?}", beside(&s));
}

/// `releases` and `rollback` take their flags as every command does (SPEC §3): before
/// or after DEST, `-flag` or `--flag`, `=value` or the next word; `releases` accepts
/// `--state-dir` like every subcommand. The rollback tells what it did: the switch on
/// stdout, its log line on stderr.
#[test]
fn releases_and_rollback_take_flags_as_every_command() {
    let s = Scratch::new();
    let dest = s.dest();
    let a = s.file("a.tar", &tar_of(&small_version("A", 2)));
    let b = s.file("b.tar", &tar_of(&small_version("B", 2)));
    s.stretcher()
        .arg(s.manifest("a.yml", &release_manifest(&a, &dest, "")))
        .run()
        .assert_ok();
    let a_id = live(&dest)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    s.stretcher()
        .arg(s.manifest("b.yml", &release_manifest(&b, &dest, "")))
        .run()
        .assert_ok();
    let b_id = live(&dest)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let listed = stretcher().arg("releases").arg(&dest).run();
    listed.assert_ok();
    assert_eq!(listed.stdout.lines().count(), 2, "{}", listed.stdout);
    let state = s.state_dir();
    let state_eq = format!("-state-dir={}", state.display());
    for flags in [
        vec!["--state-dir".as_ref(), state.as_os_str()],
        vec!["-state-dir".as_ref(), state.as_os_str()],
        vec![state_eq.as_ref()],
    ] {
        let r = stretcher().arg("releases").arg(&dest).args(&flags).run();
        assert_eq!(r.code(), 0, "{flags:?}: {}", r.stderr);
        assert_eq!(r.stdout, listed.stdout, "{flags:?}");
        assert_eq!(r.stderr, "", "{flags:?}");
    }
    // rollback with its flags after DEST, Go style
    let r = stretcher()
        .arg("rollback")
        .arg(&dest)
        .arg(format!("-to={a_id}"))
        .arg(&state_eq)
        .run();
    r.assert_ok();
    assert_eq!(r.stdout, format!("{}: {b_id} -> {a_id}\n", dest.display()));
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.ends_with(&format!(
            " Rolled back {} from release {b_id} to {a_id}\n",
            dest.display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(id_of_live(&dest), a_id);
    // and back to B by ID: B was left bad, it is good again
    let r = rollback(&s).arg(&dest).args(["--to", &b_id]).run();
    r.assert_ok();
    assert_eq!(r.stdout, format!("{}: {a_id} -> {b_id}\n", dest.display()));
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    assert!(
        lines[1].ends_with(&format!(
            " release {b_id} was marked bad; it is live again as asked"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(id_of_live(&dest), b_id);
}

fn id_of_live(dest: &Path) -> String {
    live(dest)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// `keep_releases: 3` over 6 deploys keeps exactly the live, the previous good and the
/// next newest one; another dest's releases beside it are untouched.
#[test]
fn keep_releases_leaves_exactly_the_newest_and_other_dests_alone() {
    let s = Scratch::new();
    let dest = s.dest();
    let dir = releases_dir(&dest);
    let other = s.path().join("parent").join("other");
    let oa = s.file("o.tar", &tar_of(&small_version("O", 3)));
    for _ in 0..2 {
        let m = s.manifest(
            "o.yml",
            &release_manifest(&oa, &other, "keep_releases: 1\n"),
        );
        s.stretcher().arg(&m).run().assert_ok();
    }
    let other_dir = releases_dir(&other);
    let other_before = (ids(&other_dir), snapshot(&other_dir));

    let mut made = Vec::new();
    for i in 0..6 {
        let a = s.file(
            &format!("v{i}.tar"),
            &tar_of(&small_version(&format!("v{i}"), 3)),
        );
        let m = s.manifest("m.yml", &release_manifest(&a, &dest, "keep_releases: 3\n"));
        s.stretcher().arg(&m).run().assert_ok();
        made.push(
            live(&dest)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    assert_eq!(ids(&dir), sorted(&made[3..]));
    let l = releases(&s, &dest);
    let listed: Vec<&str> = l.iter().map(|w| w[0].as_str()).collect();
    assert_eq!(listed, [&made[5], &made[4], &made[3]]);
    assert_eq!(l[0][3..], ["live"]);
    assert_eq!((ids(&other_dir), snapshot(&other_dir)), other_before);
    assert!(junk(&dir).is_empty());
    // A second time onto its own result: a new release (an archive an older one
    // holds makes a new one), and still three.
    let m = s.path().join("m.yml");
    s.stretcher().arg(&m).run().assert_ok();
    let now = ids(&dir);
    assert_eq!(now.len(), 3);
    assert!(made[4..].iter().all(|m| now.contains(m)), "{now:?}");
}

/// What dest may be: absent or an empty directory becomes the link; a non-empty
/// directory or a file fails the deploy, naming it, with nothing changed (and nothing
/// fetched: the check comes first). Excludes stay out of the release, dest_mode is the
/// release directory's mode, --dry-run prints the changes and the switch.
#[test]
fn dest_rules_excludes_mode_and_dry_run() {
    let s = Scratch::new();
    let dest = s.dest();
    let dir = releases_dir(&dest);
    let mut files = small_version("A", 3);
    files.push(("app.pid".into(), b"1\n".to_vec(), T0));
    files.push(("cache/x".into(), b"x\n".to_vec(), T0));
    let a = s.file("a.tar", &tar_of(&files));
    let extra = "dest_mode: 0750\nexcludes: [\"*.pid\", \"/cache/\"]\n";
    let m = s.manifest("a.yml", &release_manifest(&a, &dest, extra));

    // a non-empty directory, then a file: refused, unchanged
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), "mine").unwrap();
    let r = s.stretcher().arg(&m).run();
    r.assert_fail().assert_log(&format!(
        "{}: dest is a non-empty directory",
        dest.display()
    ));
    assert_eq!(std::fs::read(dest.join("keep")).unwrap(), b"mine");
    assert!(!dir.exists(), "nothing may be made for a refused dest");
    std::fs::remove_dir_all(&dest).unwrap();
    std::fs::write(&dest, "a file").unwrap();
    s.stretcher()
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("dest is a file");
    assert_eq!(std::fs::read(&dest).unwrap(), b"a file");
    std::fs::remove_file(&dest).unwrap();

    // an empty directory: dry run first (changes nothing), then the deploy
    std::fs::create_dir(&dest).unwrap();
    let r = s.stretcher().arg("--dry-run").arg(&m).run();
    r.assert_ok();
    assert!(r.stdout.contains("add VERSION\n"), "{}", r.stdout);
    assert!(!r.stdout.contains("app.pid"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&format!("switch {} -> {}/", dest.display(), dir.display())),
        "{}",
        r.stdout
    );
    assert!(std::fs::metadata(&dest).unwrap().is_dir() && !dir.exists());
    s.stretcher().arg(&m).run().assert_ok();
    let rel = live(&dest);
    assert_eq!(mode_of(&rel), 0o750);
    assert!(!rel.join("app.pid").exists() && !rel.join("cache").exists());
    assert!(rel.join("a/b/file").is_file());

    // dry run of an update: the changes against the live release and the switch
    let mut b = small_version("B", 3);
    b.push(("new".into(), b"n\n".to_vec(), T0));
    let b = s.file("b.tar", &tar_of(&b));
    let mb = s.manifest("b.yml", &release_manifest(&b, &dest, extra));
    let r = s.stretcher().arg("--dry-run").arg(&mb).run();
    r.assert_ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines.contains(&"update VERSION"), "{}", r.stdout);
    assert!(lines.contains(&"update a/b/file"), "{}", r.stdout);
    assert!(lines.contains(&"add new"), "{}", r.stdout);
    assert!(!lines.iter().any(|l| l.contains("d0/f000")), "{}", r.stdout);
    assert!(lines
        .last()
        .unwrap()
        .starts_with(&format!("switch {} -> ", dest.display())));
    assert_eq!(live(&dest), rel, "a dry run switches nothing");
    s.stretcher().arg(&mb).run().assert_ok();
    s.stretcher().arg(&mb).run().assert_ok(); // a second time onto its own result
    assert_eq!(std::fs::read(dest.join("new")).unwrap(), b"n\n");
    // unchanged files are links into the previous release
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&dest.join("d0/f000")), ino(&rel.join("d0/f000")));
    assert_ne!(ino(&dest.join("VERSION")), ino(&rel.join("VERSION")));
}

/// The deploy record carries the release (SPEC §11); the redeploy of what the live
/// release holds downloads nothing; `verify` checks the live release; a rollback
/// writes a record with origin `rollback` and makes the rolled-to release the one
/// `verify` and the skip compare with.
#[test]
fn record_skip_and_verify_follow_the_live_release() {
    let s = Scratch::new();
    let dest = s.dest();
    let a = s.file("a.tar", &tar_of(&small_version("A", 5)));
    let b = s.file("b.tar", &tar_of(&small_version("B", 5)));
    let ma = s.manifest("a.yml", &release_manifest(&a, &dest, ""));
    let mb = s.manifest("b.yml", &release_manifest(&b, &dest, ""));
    let last_record = || -> serde_json::Value {
        let dir = s.state_dir().join("deploys");
        let json = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .expect("a deploy record");
        serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
    };
    let id_of = |p: PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    s.stretcher().arg(&ma).run().assert_ok();
    let a_id = id_of(live(&dest));
    let rec = last_record();
    assert_eq!(rec["strategy"], "release");
    assert_eq!(rec["release"], a_id.as_str());
    assert_eq!(rec["result"], "success");
    s.stretcher().arg(&mb).run().assert_ok();
    let b_id = id_of(live(&dest));
    assert_eq!(last_record()["release"], b_id.as_str());
    // a second time onto its own result: nothing downloaded, no new release
    let r = s.stretcher().arg(&mb).run();
    r.assert_ok().assert_log("nothing to download");
    assert_eq!(id_of(live(&dest)), b_id);
    assert_eq!(last_record()["download_skipped"], true);
    // verify: clean, then a change in the live release is drift
    let verify = || {
        stretcher()
            .arg("verify")
            .arg("--state-dir")
            .arg(s.state_dir())
            .arg(&dest)
            .run()
    };
    assert_eq!(verify().code(), 0, "{}", verify().stdout);
    std::fs::write(dest.join("a/b/file"), "changed in place!\n").unwrap();
    let v = verify();
    assert_eq!(v.code(), 1, "{}", v.stderr);
    assert!(v.stdout.contains("changed a/b/file"), "{}", v.stdout);
    // rollback: record with origin rollback, and the skip now compares with A
    rollback(&s).arg(&dest).run().assert_ok();
    let rec = last_record();
    assert_eq!(rec["event"]["origin"], "rollback");
    assert_eq!(rec["release"], a_id.as_str());
    assert_eq!(rec["checksum"], sha1_file(&a).as_str());
    assert_eq!(verify().code(), 0, "{}", verify().stdout);
    let r = s.stretcher().arg(&ma).run();
    r.assert_ok().assert_log("nothing to download");
    assert_eq!(id_of(live(&dest)), a_id);
    // --force deploys anyway: a new release, all hard links
    s.stretcher().arg("--force").arg(&ma).run().assert_ok();
    assert_ne!(id_of(live(&dest)), a_id);
}

/// A tree for the index test: nested directories of several modes (one read-only),
/// files of several modes (setuid included), a hard link, symlinks (to a file, to a
/// directory, dangling), a sparse file, excluded files and an excluded directory, and
/// with `owner`, files of another owner. `tag` changes some contents, `ns` gives the
/// mtimes nanoseconds (kept by a pax archive).
fn index_tree(root: &Path, tag: &str, ns: u32, owner: Option<(u32, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    let t = |s: i64| filetime::FileTime::from_unix_time(s, ns);
    let files: [(&str, u32, String); 8] = [
        ("a/b/c/file.txt", 0o644, "same in every version\n".into()),
        ("a/exec", 0o755, format!("#!/bin/sh\necho {tag}\n")),
        ("a/private", 0o600, "private\n".into()),
        ("a/suid", 0o4755, "suid\n".into()),
        ("a/debug.log", 0o644, "excluded\n".into()),
        ("secret/key", 0o640, format!("key {tag}\n")),
        ("ro/inside", 0o444, "in a read-only dir\n".into()),
        ("tmp/x/y", 0o644, "excluded dir\n".into()),
    ];
    for (i, (rel, mode, data)) in files.iter().enumerate() {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        filetime::set_file_mtime(&p, t(T0 as i64 + i as i64)).unwrap();
    }
    std::fs::hard_link(root.join("a/b/c/file.txt"), root.join("a/hard")).unwrap();
    std::fs::write(root.join(MARKER), "ok\n").unwrap();
    let sparse = std::fs::File::create(root.join("big.sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, tag.as_bytes(), 4 << 20).unwrap();
    drop(sparse);
    filetime::set_file_mtime(root.join("big.sparse"), t(T0 as i64 + 20)).unwrap();
    std::os::unix::fs::symlink("a/exec", root.join("l-file")).unwrap();
    std::os::unix::fs::symlink("a/b", root.join("l-dir")).unwrap();
    std::os::unix::fs::symlink(format!("nowhere-{tag}"), root.join("l-dangling")).unwrap();
    if let Some((uid, gid)) = owner {
        for rel in ["a/private", "secret", "secret/key", "l-file"] {
            std::os::unix::fs::lchown(root.join(rel), Some(uid), Some(gid)).unwrap();
        }
    }
    for (rel, mode) in [("secret", 0o750), ("ro", 0o555), ("a", 0o711)] {
        std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for (i, rel) in ["a/b/c", "a/b", "a", "secret", "ro", "tmp/x", "tmp", ""]
        .iter()
        .enumerate()
    {
        filetime::set_file_mtime(root.join(rel), t(T0 as i64 - 100 - i as i64)).unwrap();
    }
}

/// Runs GNU tar (`tar ARGS...` in `cwd`), asserting it succeeds.
fn gnu_tar(cwd: &Path, args: &[&str]) {
    let out = Command::new("tar")
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The deploy index of `dest` equals `index::scan` of the live release, entry for
/// entry (the index is built from what the unpack wrote, not by a walk).
#[track_caller]
fn assert_index_is_a_walk(state: &Path, dest: &Path, what: &str) {
    let key = stretcher::record::key_for_dest(dest);
    let (header, indexed) = stretcher::index::read(state, &key)
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: no deploy index"));
    let walked = stretcher::index::scan(dest, &header.filter().unwrap()).unwrap();
    let drift: Vec<String> = stretcher::index::diff(&walked, &indexed)
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert!(drift.is_empty(), "{what}: index against a walk: {drift:?}");
    assert_eq!(indexed, walked, "{what}");
    assert!(indexed.len() > 15, "{what}: {} entries", indexed.len());
    let paths: Vec<String> = indexed.iter().map(|e| e.display_path()).collect();
    for gone in ["a/debug.log", "tmp/", "tmp/x/y"] {
        assert!(!paths.iter().any(|p| p == gone), "{what}: {gone} indexed");
        let on_disk = dest.join(gone.trim_end_matches('/')).symlink_metadata();
        assert!(on_disk.is_err(), "{what}: {gone} left in the release");
    }
    for kept in [
        "./",
        "a/hard",
        "big.sparse",
        "l-dir",
        "ro/inside",
        "zz-complete",
    ] {
        assert!(
            paths.iter().any(|p| p == kept),
            "{what}: {kept} not indexed"
        );
    }
}

/// SPEC §11 for releases: the index written in the same pass as the unpack equals a
/// walk of the release, on GNU tar archives (gnu and pax formats, sparse members, hard
/// links, symlinks, excludes, a dest_mode, with and without a `./` member, a
/// duplicate member), for a first release, one sharing unchanged files with the live
/// one, and one made of hard links only; as root (owners kept) and as nobody.
#[test]
fn release_index_from_the_unpack_equals_a_walk() {
    let root = nix::unistd::geteuid().is_root();
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let mut runs: Vec<Option<&str>> = vec![None];
    match (root, setpriv) {
        (true, Some(p)) => runs.push(Some(p)),
        (true, None) => eprintln!("no setpriv: the run as nobody is skipped"),
        _ => {}
    }
    for as_nobody in runs {
        index_equals_walk(as_nobody, root && as_nobody.is_none());
    }
}

fn index_equals_walk(setpriv: Option<&str>, owners: bool) {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let who = if setpriv.is_some() { "nobody" } else { "self" };
    let nobody = setpriv.map(|_| nix::unistd::User::from_name("nobody").unwrap().unwrap());
    let owner = owners.then_some((1234, 2345));
    for (v, tag, ns) in [("v1", "one", 0), ("v2", "two", 123_456_789)] {
        let tree = s.path().join(v);
        index_tree(&tree, tag, ns, owner);
        if v == "v2" {
            std::fs::remove_file(tree.join("a/private")).unwrap();
            std::fs::create_dir(tree.join("new")).unwrap();
            std::fs::write(tree.join("new/added"), "added\n").unwrap();
        }
    }
    // v1: GNU format with its `./` member; v2: pax (nanosecond mtimes), no `./`
    // member, and a second member for a/exec appended (the last one wins).
    gnu_tar(
        s.path(),
        &["--format=gnu", "--sparse", "-C", "v1", "-cf", "v1.tar", "."],
    );
    let names = [
        "a",
        "secret",
        "ro",
        "tmp",
        "big.sparse",
        "l-file",
        "l-dir",
        "l-dangling",
        "new",
        MARKER,
    ];
    let mut args = vec!["--format=posix", "--sparse", "-C", "v2", "-cf", "v2.tar"];
    args.extend(names);
    gnu_tar(s.path(), &args);
    std::fs::write(s.path().join("v2/a/exec"), "#!/bin/sh\necho appended\n").unwrap();
    // A member whose directories have none of their own (made as implicit parents).
    std::fs::create_dir_all(s.path().join("v2/implicit/dir")).unwrap();
    std::fs::write(s.path().join("v2/implicit/dir/file"), "implicit\n").unwrap();
    gnu_tar(
        s.path(),
        &[
            "--format=posix",
            "-C",
            "v2",
            "-rf",
            "v2.tar",
            "a/exec",
            "implicit/dir/file",
        ],
    );
    let state = s.path().join(format!("state-{who}"));
    std::fs::create_dir(&state).unwrap();
    if let Some(n) = &nobody {
        std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for p in [s.path().join("parent"), s.work(), state.clone()] {
            nix::unistd::chown(&p, Some(n.uid), Some(n.gid)).unwrap();
        }
    }
    let dest = s.dest();
    let excludes = "excludes:\n  - \"*.log\"\n  - tmp/\n";
    let m1 = s.manifest(
        "v1.yml",
        &release_manifest(&s.path().join("v1.tar"), &dest, excludes),
    );
    let with_mode = format!("{excludes}dest_mode: 0750\n");
    let m2 = s.manifest(
        "v2.yml",
        &release_manifest(&s.path().join("v2.tar"), &dest, &with_mode),
    );
    let run = |m: &Path, force: bool| {
        let args: Vec<String> = nobody
            .iter()
            .flat_map(|n| {
                [
                    format!("--reuid={}", n.uid),
                    format!("--regid={}", n.gid),
                    "--clear-groups".to_string(),
                ]
            })
            .collect();
        let mut cmd = stretcher_via(setpriv.map(|p| (p, &args[..])))
            .cwd(&s.work())
            .arg("--state-dir")
            .arg(&state);
        if force {
            cmd = cmd.arg("--force");
        }
        cmd.arg(m).run()
    };
    run(&m1, false).assert_ok();
    assert_index_is_a_walk(&state, &dest, &format!("{who}: first release"));
    let first = live(&dest);
    let r = run(&m2, false);
    r.assert_ok();
    assert_index_is_a_walk(&state, &dest, &format!("{who}: second release"));
    let second = live(&dest);
    assert_ne!(first, second);
    let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(first.join("a/b/c/file.txt")),
        ino(second.join("a/b/c/file.txt")),
        "{who}: unchanged file not shared"
    );
    assert_eq!(mode_of(&second) & 0o7777, 0o750);
    assert_eq!(
        std::fs::read_to_string(dest.join("a/exec")).unwrap(),
        "#!/bin/sh\necho appended\n"
    );
    let r = run(&m2, true);
    r.assert_ok();
    assert_index_is_a_walk(&state, &dest, &format!("{who}: release of links only"));
    assert_ne!(live(&dest), second);
    run(&m2, false)
        .assert_ok()
        .assert_log("nothing to download");
}

/// A release's metadata is data, not text (SPEC §17): a checksum that is not ASCII
/// (its 12th byte inside a character), with control characters, and a `deployed` with
/// an escape sequence are listed escaped, one line per release, and nothing panics.
#[test]
fn releases_show_the_metadata_escaped() {
    let s = Scratch::new();
    let dest = s.dest();
    let dir = releases_dir(&dest);
    let (odd, plain) = ("20261201T220000Z-0123abcd", "20261130T220000Z-89abcdef");
    for (seq, id, checksum, deployed) in [
        (
            2,
            odd,
            "012345678\n\x1bé\nforged-release  0123456789ab  live",
            "2026-12-01T22:00:00.000Z\x1b[2K\r",
        ),
        (1, plain, "89abcdef0123456789ab", "2026-11-30T22:00:00.000Z"),
    ] {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        let meta = serde_json::json!({
            "schema": 1, "id": id, "dest": dest, "checksum": checksum, "seq": seq,
            "created": deployed, "deployed": deployed, "bad": false, "reason": null,
        });
        std::fs::write(dir.join(format!("{id}.json")), meta.to_string()).unwrap();
    }
    std::os::unix::fs::symlink(dir.join(odd), &dest).unwrap();
    let r = stretcher().arg("releases").arg(&dest).run();
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(r.stderr, "");
    assert_eq!(
        r.stdout,
        format!(
            "{odd}  012345678\\x0a\\x1bé  2026-12-01T22:00:00.000Z\\x1b[2K\\x0d  live\n\
             {plain}  89abcdef0123  2026-11-30T22:00:00.000Z\n"
        )
    );
}
