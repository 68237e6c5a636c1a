//! Faults through the real binary (issue 6): SIGKILL at seeded random points of a
//! 5,000-file update (every file in dest is its old or new version, the next run
//! completes the mirror and removes the leftovers), a full filesystem and
//! decompression bombs (the size guard), SIGINT / SIGTERM while downloading and
//! unpacking (staging removed, `failure` hooks run).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

const T0: u64 = 1_600_000_000;

/// One entry of an archive's tree, as the test models it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum N {
    File(Vec<u8>),
    Dir,
    Link(PathBuf),
}

type Tree = BTreeMap<PathBuf, N>;

/// A tar of `tree` (sorted, so parents come before children); files changed in a
/// version carry `mtime`, the others `T0`.
fn tar_of_tree(tree: &Tree, changed: &dyn Fn(&Path) -> bool, mtime: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind, mode, size, t| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(t);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let mut h = header(tar::EntryType::Directory, 0o755, 0, T0);
    b.append_data(&mut h, "./", std::io::empty()).unwrap();
    for (path, node) in tree {
        match node {
            N::Dir => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0, T0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            N::File(data) => {
                let t = if changed(path) { mtime } else { T0 };
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64, t);
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
            N::Link(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, T0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn content(rng: &mut fastrand::Rng, version: &str, path: &str) -> Vec<u8> {
    let pad: String = (0..rng.usize(10..200))
        .map(|_| rng.alphanumeric())
        .collect();
    format!("{version} {path} {pad}\n").into_bytes()
}

/// v1: 5,000 files in 50 directories, symlinks, and paths whose type v2 changes.
/// v2: about half the files rewritten, 250 removed plus a whole directory, 250
/// added plus a new directory, symlink targets changed, file ↔ directory swaps.
fn trees() -> (Tree, Tree) {
    let mut rng = fastrand::Rng::with_seed(6);
    let (mut v1, mut v2) = (Tree::new(), Tree::new());
    for d in 0..50 {
        let dir = PathBuf::from(format!("d{d:02}"));
        v1.insert(dir.clone(), N::Dir);
        if d != 49 {
            v2.insert(dir.clone(), N::Dir);
        }
        for f in 0..100 {
            let i = d * 100 + f;
            let p = format!("d{d:02}/f{f:03}");
            let old = content(&mut rng, "v1", &p);
            v1.insert(PathBuf::from(&p), N::File(old.clone()));
            if d == 49 || i % 20 == 1 {
                continue; // removed
            }
            let new = if i % 2 == 0 {
                content(&mut rng, "v2", &p)
            } else {
                old
            };
            v2.insert(PathBuf::from(&p), N::File(new));
        }
        if d != 49 {
            for n in 0..5 {
                let p = format!("d{d:02}/n{n}");
                v2.insert(PathBuf::from(&p), N::File(content(&mut rng, "v2", &p)));
            }
        }
    }
    v2.insert(PathBuf::from("new"), N::Dir);
    for n in 0..10 {
        let p = format!("new/g{n}");
        v2.insert(PathBuf::from(&p), N::File(content(&mut rng, "v2", &p)));
    }
    // l00-l09 change target, l10-l19 keep it, l20-l24 are new.
    for l in 0..25 {
        let p = PathBuf::from(format!("l{l:02}"));
        let old = PathBuf::from(format!("d00/f{l:03}"));
        if l < 20 {
            v1.insert(p.clone(), N::Link(old.clone()));
        }
        let new = if (10..20).contains(&l) {
            old
        } else {
            PathBuf::from(format!("d01/f{l:03}"))
        };
        v2.insert(p, N::Link(new));
    }
    for v in [&mut v1, &mut v2] {
        v.insert(PathBuf::from("tc"), N::Dir);
    }
    v1.insert(PathBuf::from("tc/x"), N::File(b"x was a file\n".to_vec()));
    v1.insert(PathBuf::from("tc/y"), N::Dir);
    v1.insert(PathBuf::from("tc/y/inner"), N::File(b"inner\n".to_vec()));
    v2.insert(PathBuf::from("tc/x"), N::Dir);
    v2.insert(
        PathBuf::from("tc/x/inner"),
        N::File(b"now a dir\n".to_vec()),
    );
    v2.insert(
        PathBuf::from("tc/y"),
        N::File(b"y is a file now\n".to_vec()),
    );
    (v1, v2)
}

/// What `dest` holds, below its root, never following symlinks.
fn read_tree(root: &Path) -> Tree {
    let mut t = Tree::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let ft = e.file_type();
        let node = if ft.is_symlink() {
            N::Link(std::fs::read_link(e.path()).unwrap())
        } else if ft.is_dir() {
            N::Dir
        } else if ft.is_file() {
            N::File(std::fs::read(e.path()).unwrap())
        } else {
            panic!("{}: neither file, dir nor symlink", e.path().display())
        };
        t.insert(rel, node);
    }
    t
}

/// A symlink temp name of the sync (`.NAME.XXXXXX` beside NAME) for a symlink of `v2`.
fn is_symlink_temp(rel: &Path, v2: &Tree) -> bool {
    let name = rel.file_name().unwrap().as_bytes();
    let Some(rest) = name.strip_prefix(b".") else {
        return false;
    };
    if rest.len() < 8 || rest[rest.len() - 7] != b'.' {
        return false;
    }
    let (orig, rand) = rest.split_at(rest.len() - 7);
    if !rand[1..].iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let orig = rel.with_file_name(OsStr::from_bytes(orig));
    matches!(v2.get(&orig), Some(N::Link(_)))
}

/// The invariant at any moment: every entry of dest is an entry of v1 or v2 with
/// that version's content (a file is never partly written, never under a temp name).
/// Returns the number of leftover symlink temps (allowed: a symlink is made whole by
/// symlink(2); the next run deletes it as a dest-only entry).
fn check_old_or_new(dest: &Tree, v1: &Tree, v2: &Tree, what: &str) -> usize {
    let mut temps = 0;
    for (rel, node) in dest {
        let ok = v1.get(rel) == Some(node) || v2.get(rel) == Some(node);
        if ok {
            continue;
        }
        if matches!(node, N::Link(_)) && is_symlink_temp(rel, v2) {
            temps += 1;
            continue;
        }
        let shown = match node {
            N::File(d) => format!("file {:?}", String::from_utf8_lossy(&d[..d.len().min(60)])),
            other => format!("{other:?}"),
        };
        panic!(
            "{what}: {} is neither its v1 nor its v2 version: {shown}",
            rel.display()
        );
    }
    temps
}

/// Where in the deploy a kill landed, judged by dest afterwards.
fn phase(dest: &Tree, v1: &Tree, v2: &Tree) -> &'static str {
    if dest == v1 {
        "before the sync"
    } else if dest == v2 {
        "after the sync"
    } else {
        "during the sync"
    }
}

/// A deploy started for killing. Its stderr is watched: `sync_line` reports when
/// the n-th log line after the unpack (one per change, at `-v`) was read, and
/// `lines` how many there were in all.
struct Live {
    child: std::process::Child,
    start: Instant,
    sync_line: mpsc::Receiver<Instant>,
    lines: std::thread::JoinHandle<usize>,
}

fn start(s: &Scratch, manifest: &Path, n: usize) -> Live {
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
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut after: Option<usize> = None;
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if let Some(k) = after.as_mut() {
                *k += 1;
            } else if line.contains(" Unpacked ") {
                after = Some(0);
            }
            if after == Some(n) {
                let _ = tx.send(Instant::now());
            }
        }
        after.unwrap_or(0)
    });
    Live {
        child,
        start,
        sync_line: rx,
        lines,
    }
}

/// Runs a deploy to its end (quietly) and asserts success.
fn deploy(s: &Scratch, manifest: &Path) -> Run {
    let r = s
        .stretcher()
        .arg("--rsync-verbose=")
        .arg(manifest)
        .limit(Duration::from_secs(60))
        .run();
    r.assert_ok();
    r
}

const KILL_POINTS: u64 = 24;
const MIN_KILL_POINTS: u64 = 20;
const SEED: u64 = 0x5eed_0006;

/// A scratch area on tmpfs (`/dev/shm`) when there is one: creating 5,000 files on
/// a busy disk costs seconds a run, and a SIGKILL leaves the same state on any
/// filesystem (what is at stake is the order of renames, not the disk).
fn fast_scratch() -> Scratch {
    let shm = Path::new("/dev/shm");
    let tmp = tempfile::Builder::new()
        .prefix("stretcher-it-")
        .tempdir_in(shm)
        .or_else(|_| tempfile::Builder::new().prefix("stretcher-it-").tempdir())
        .unwrap();
    std::fs::create_dir(tmp.path().join("work")).unwrap();
    std::fs::create_dir(tmp.path().join("parent")).unwrap();
    Scratch { tmp }
}

/// Puts dest back to the v1 deploy kept in `pristine` (`cp -a`: modes and mtimes).
fn reset(dest: &Path, pristine: &Path) {
    if dest.exists() {
        std::fs::remove_dir_all(dest).unwrap();
    }
    let ok = Command::new("cp")
        .arg("-a")
        .arg(pristine)
        .arg(dest)
        .status()
        .unwrap();
    assert!(ok.success(), "cp -a failed");
}

/// SIGKILL at seeded random points of a 5,000-file update: half of them at a random
/// time of the whole run (from a timed calibration run), half inside the sync
/// (right after a random one of its per-change log lines). After each kill every entry of dest is its v1 or v2 version;
/// the rerun makes dest exactly v2 and leaves nothing beside it. Between kill
/// points dest is put back to v1 by copying (faster than a deploy).
#[test]
fn sigkill_at_random_points_never_leaves_a_partial_file() {
    let began = Instant::now();
    let s = fast_scratch();
    eprintln!("scratch on {}", s.path().display());
    let (v1, v2) = trees();
    let files = v1.values().filter(|n| matches!(n, N::File(_))).count();
    assert!(files >= 5000, "{files}");
    let changed = |p: &Path| match (v1.get(p), v2.get(p)) {
        (Some(a), Some(b)) => a != b,
        _ => true,
    };
    let a1 = s.file("v1.tar", &tar_of_tree(&v1, &|_| false, T0));
    let a2 = s.file("v2.tar", &tar_of_tree(&v2, &changed, T0 + 100));
    let m1 = s.manifest("m1.yml", &manifest_for(&a1, &s.dest(), ""));
    let m2 = s.manifest("m2.yml", &manifest_for(&a2, &s.dest(), ""));

    deploy(&s, &m1);
    assert_eq!(read_tree(&s.dest()), v1);
    let pristine = s.path().join("v1-deployed");
    reset(&pristine, &s.dest());
    // Calibration: a whole v1 → v2 deploy, and its number of log lines after the unpack.
    let mut live = start(&s, &m2, 0);
    assert!(live.child.wait().unwrap().success());
    let total = live.start.elapsed();
    let sync_lines = live.lines.join().unwrap();
    assert_eq!(read_tree(&s.dest()), v2);
    assert!(sync_lines > 2500, "{sync_lines}");
    eprintln!("calibration: the v2 deploy took {total:?}, {sync_lines} lines after the unpack");

    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut temps, mut staging_left) = (0, 0);
    let mut done = 0;
    for i in 0..KILL_POINTS {
        // Bounded in time, with room for a loaded 2-core machine (every kill point
        // also redeploys and writes an index now).
        if began.elapsed() > Duration::from_secs(240) {
            assert!(
                i >= MIN_KILL_POINTS,
                "out of time after {i} kill points ({:?})",
                began.elapsed()
            );
            break;
        }
        reset(&s.dest(), &pristine);
        assert_eq!(read_tree(&s.dest()), v1, "reset to v1");
        let mut rng = fastrand::Rng::with_seed(SEED + i);
        let line = rng.usize(1..sync_lines);
        let mut live = start(&s, &m2, line);
        if i % 2 == 0 {
            let delay = total.mul_f64(rng.f64());
            std::thread::sleep((live.start + delay).saturating_duration_since(Instant::now()));
        } else {
            let _ = live.sync_line.recv_timeout(Duration::from_secs(30));
        }
        let _ = live.child.kill(); // SIGKILL, to this pid only
        let status = live.child.wait().unwrap();
        let at = live.start.elapsed();

        let what = format!("kill point {i} (seed {}, at {at:?}, {status})", SEED + i);
        let now = read_tree(&s.dest());
        temps += check_old_or_new(&now, &v1, &v2, &what);
        *phases.entry(phase(&now, &v1, &v2)).or_default() += 1;
        if !s.leftovers().is_empty() {
            staging_left += 1;
        }

        deploy(&s, &m2);
        assert_eq!(
            read_tree(&s.dest()),
            v2,
            "{what}: the rerun did not give v2"
        );
        assert!(
            s.leftovers().is_empty(),
            "{what}: left beside dest: {:?}",
            s.leftovers()
        );
        done += 1;
    }
    eprintln!(
        "{done} kill points: {phases:?}; {staging_left} left a staging dir, \
         {temps} symlink temps were left; all removed by the rerun; {:?} in all",
        began.elapsed()
    );
    assert!(
        phases.get("during the sync").copied().unwrap_or(0) > 0,
        "no kill point landed inside the sync: {phases:?}"
    );
    assert!(began.elapsed() < Duration::from_secs(120));
}

// ---- the size guard: full filesystems and decompression bombs ----

/// A tmpfs of `size` mounted on `dir` for the test's life (root only).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not running as root: cannot mount a small filesystem".into());
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process still in it): detach it so the scratch dir can go.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A tar of (name, bytes) files.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(T0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Deploys `archive` into `dest` (on a filesystem too small for it) and checks the
/// size guard's clean failure: one clear line, dest unchanged, no staging left.
#[track_caller]
fn too_big(s: &Scratch, fs_dir: &Path, dest: &Path, name: &str, archive: &[u8]) {
    let before = snapshot(dest);
    let a = s.file(name, archive);
    let m = s.manifest("big.yml", &manifest_for(&a, dest, ""));
    let r = s.stretcher().arg(&m).run();
    r.assert_fail().assert_log(&format!(
        "archive file://{}: not enough space on the filesystem of {}: the archive needs more than ",
        a.display(),
        fs_dir.display()
    ));
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(snapshot(dest), before, "dest changed");
    let beside: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.as_bytes().starts_with(b".stretcher-"))
        .collect();
    assert!(beside.is_empty(), "staging left: {beside:?}");
}

/// dest on an 8 MiB tmpfs: an archive of 12 MiB (in three files) fails cleanly, so
/// does a 64 MiB file of zeros packed into a ~64 KiB tar.gz; dest keeps its v1.
#[test]
fn full_filesystem_and_gzip_bomb_leave_dest_unchanged() {
    let s = Scratch::new();
    let mnt = s.path().join("small");
    let _fs = match Tmpfs::mount(&mnt, "8m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dest = mnt.join("app");
    let v1 = s.file("v1.tar", &tar_of(&[("a", b"v1 a"), ("b", b"v1 b")]));
    let m = s.manifest("v1.yml", &manifest_for(&v1, &dest, ""));
    s.stretcher().arg(&m).run().assert_ok();

    let chunk = noise(4 << 20, 1);
    let big = tar_of(&[("a", &chunk), ("b", &chunk), ("c", &chunk)]);
    too_big(&s, &mnt, &dest, "big.tar", &big);

    let bomb = gzip(&tar_of(&[("zeros", &vec![0u8; 64 << 20])]));
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    too_big(&s, &mnt, &dest, "bomb.tar.gz", &bomb);

    let mut names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".app.stretcher.lock", "app"]);
}

/// A header that declares more bytes than the filesystem has free (GNU base-256
/// size) fails before anything is written, whoever runs it.
#[test]
fn declared_size_bomb_is_refused_before_writing() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("precious"), "keep").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(1 << 60);
    h.set_mode(0o644);
    h.set_mtime(T0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_path("huge").unwrap();
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[0u8; 4096]); // the stream ends long before 2^60 bytes
    let bomb = gzip(&tar);
    too_big(
        &s,
        &s.path().join("parent"),
        &s.dest(),
        "declared.tar.gz",
        &bomb,
    );
    assert!(!s.dest().join("huge").exists());
}

// ---- SIGINT / SIGTERM ----

/// Waits until `cond` holds (or panics after `limit`).
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The staging directory beside dest, if one exists.
fn staging_of(s: &Scratch) -> Option<PathBuf> {
    s.leftovers()
        .into_iter()
        .find(|n| n.ends_with(".staging"))
        .map(|n| s.path().join("parent").join(n))
}

/// Sends `sig` to a deploy of `archive` once `ready` holds, and checks the cleanup:
/// exit 1, `interrupted by SIG`, `failure` hooks run, dest unchanged, staging gone.
fn interrupt_deploy(
    s: &Scratch,
    archive: &Path,
    bandwidth: u64,
    sig: Signal,
    ready: impl FnMut() -> bool,
) {
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("old"), "1").unwrap();
    let before = snapshot(&s.dest());
    let extra = "commands:\n  failure:\n    - cat > failure.log\n";
    let m = s.manifest("m.yml", &manifest_for(archive, &s.dest(), extra));
    let running = s
        .stretcher()
        .arg(format!("--max-bandwidth={bandwidth}"))
        .arg(&m)
        .limit(Duration::from_secs(60))
        .spawn();
    wait_for("the deploy to get going", Duration::from_secs(20), ready);
    let sent = Instant::now();
    running.signal(sig);
    let r = running.wait();
    let name = sig.as_str();
    r.assert_fail()
        .assert_log(&format!("interrupted by {name}"));
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{name} took {:?} to stop the deploy",
        sent.elapsed()
    );
    assert!(std::fs::read_to_string(s.work().join("failure.log"))
        .unwrap()
        .contains(&format!("interrupted by {name}")));
    assert_eq!(snapshot(&s.dest()), before, "dest changed");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn sigint_during_a_slow_download_cleans_up() {
    let s = Scratch::new();
    let a = archive("test.tar");
    // 10 KiB at 2,000 bytes/s: five seconds of download; interrupted after ~0.5s.
    let mut seen: Option<Instant> = None;
    interrupt_deploy(&s, &a, 2000, Signal::SIGINT, || {
        if staging_of(&s).is_some() {
            let t = *seen.get_or_insert_with(Instant::now);
            return t.elapsed() > Duration::from_millis(500);
        }
        false
    });
}

#[test]
fn sigterm_during_unpack_removes_staging() {
    let s = Scratch::new();
    let data = noise(1000, 7);
    let names: Vec<String> = (0..400).map(|i| format!("dir/f{i:03}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &data[..])).collect();
    let a = s.file("many.tar", &tar_of(&files));
    // ~600 KB at 150 KB/s: about four seconds of unpacking; stopped once staging
    // holds a few dozen files.
    interrupt_deploy(&s, &a, 150_000, Signal::SIGTERM, || {
        staging_of(&s)
            .and_then(|st| std::fs::read_dir(st.join("dir")).ok())
            .is_some_and(|d| d.count() >= 30)
    });
}
