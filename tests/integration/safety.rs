//! Safety under hostile input, through the real binary (issue 6): hostile archives
//! fail naming the entry and write nothing outside staging / `dest`; a symlink in
//! `dest` is replaced, never written through; device nodes are skipped when not
//! root; non-UTF-8 names deploy; `--dry-run` changes nothing and runs nothing;
//! `--command-timeout` kills a hook's whole process group. The library-level
//! counterparts are in unpack.rs, the first binary-level ones in deploy.rs.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const T0: u64 = 1_600_000_000;

/// A tar of (name bytes, content, mtime) files, with a `./` entry.
fn files_tar(files: &[(&[u8], &[u8], u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar_header(tar::EntryType::Directory, 0o755, T0, 0);
    b.append_data(&mut h, "./", std::io::empty()).unwrap();
    for (name, data, mtime) in files {
        let mut h = tar_header(tar::EntryType::Regular, 0o644, *mtime, data.len() as u64);
        b.append_data(&mut h, Path::new(OsStr::from_bytes(name)), *data)
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// Deploys the hostile `tar` into a dest holding one precious file and checks the
/// clean failure: exit 1, an error line naming `entry`, dest unchanged, nothing left
/// beside it.
#[track_caller]
fn refused(s: &Scratch, tar: &[u8], entry: &str) -> Run {
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("precious"), "keep me").unwrap();
    let before = snapshot(&s.dest());
    let a = s.file("hostile.tar", tar);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), ""));
    let r = s.stretcher().arg(&m).run();
    r.assert_fail()
        .assert_log(&format!("archive entry {entry:?}: "));
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(snapshot(&s.dest()), before, "dest changed");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    r
}

/// Names in `dir` (sorted), to prove nothing landed there.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---- hostile archives ----

#[test]
fn absolute_paths_are_stripped_with_a_warning() {
    let s = Scratch::new();
    let top = format!("stretcher-safety-abs-{}", std::process::id());
    let name = format!("/{top}/x");
    let tar = raw_tar(&[
        Raw::File(name.as_bytes(), b"inside dest"),
        Raw::File(b"//two", b"2"),
    ]);
    let a = s.file("abs.tar", &tar);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), ""));
    s.stretcher()
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("removing leading '/' from member names");
    assert_eq!(
        std::fs::read(s.dest().join(&top).join("x")).unwrap(),
        b"inside dest"
    );
    assert_eq!(std::fs::read(s.dest().join("two")).unwrap(), b"2");
    assert!(!Path::new("/").join(&top).exists(), "wrote to /{top}");
    assert!(!Path::new("/two").exists());
    redeploy(&s, &m);
}

/// The forms of "an entry beneath a symlink the archive made" (the plain file form is
/// deploy.rs `symlink_escape_is_refused`): a directory, a deeper file, a chain of
/// symlinks, a symlink to `..`, a symlink beneath a symlink.
#[test]
fn entries_beneath_an_archive_symlink_are_refused() {
    let s = Scratch::new();
    let outside = s.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    let out = outside.to_str().unwrap().as_bytes();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            raw_tar(&[Raw::Symlink(b"lnk", out), Raw::Dir(b"lnk/newdir/")]),
            "lnk/newdir/",
        ),
        (
            raw_tar(&[Raw::Symlink(b"lnk", out), Raw::File(b"lnk/sub/evil", b"x")]),
            "lnk/sub/evil",
        ),
        (
            raw_tar(&[
                Raw::Symlink(b"a", b"b"),
                Raw::Symlink(b"b", out),
                Raw::File(b"a/evil", b"x"),
            ]),
            "a/evil",
        ),
        (
            raw_tar(&[
                Raw::Dir(b"d/"),
                Raw::Symlink(b"d/up", b"../../../outside"),
                Raw::File(b"d/up/evil", b"x"),
            ]),
            "d/up/evil",
        ),
        (
            raw_tar(&[
                Raw::Symlink(b"lnk", out),
                Raw::Symlink(b"lnk/evil", b"/etc/passwd"),
            ]),
            "lnk/evil",
        ),
    ];
    for (tar, entry) in cases {
        refused(&s, &tar, entry);
        assert_eq!(names(&outside), ["sub"], "{entry}");
        assert!(names(&outside.join("sub")).is_empty(), "{entry}");
    }
}

#[test]
fn hard_links_leaving_the_archive_are_refused() {
    let s = Scratch::new();
    for target in [&b"../x"[..], b"/etc/passwd", b"a/../../x"] {
        let tar = raw_tar(&[Raw::File(b"a/f", b"1"), Raw::HardLink(b"hl", target)]);
        refused(&s, &tar, "hl");
    }
    // through a symlink an earlier entry made
    let tar = raw_tar(&[
        Raw::Symlink(b"etc", b"/etc"),
        Raw::HardLink(b"pw", b"etc/passwd"),
    ]);
    refused(&s, &tar, "pw");
    assert!(std::fs::symlink_metadata(s.dest().join("pw")).is_err());
}

/// `dest` holds symlinks where the archive has a directory or a file: the sync
/// replaces them and never writes through them, and unpack never takes a file from
/// behind them (the outside file has the archive file's size, mtime and mode).
#[test]
fn symlinks_in_dest_are_replaced_never_written_through() {
    let s = Scratch::new();
    let outside = s.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, "untouched!").unwrap();
    filetime::set_file_mtime(&victim, filetime::FileTime::from_unix_time(T0 as i64, 0)).unwrap();
    std::fs::write(outside.join("file"), "outside file").unwrap();
    std::fs::create_dir_all(s.dest()).unwrap();
    std::os::unix::fs::symlink(&outside, s.dest().join("d")).unwrap();
    std::os::unix::fs::symlink("../../outside", s.dest().join("rel")).unwrap();
    std::os::unix::fs::symlink(outside.join("file"), s.dest().join("f")).unwrap();
    let outside_before = snapshot(&outside);

    let tar = files_tar(&[
        (b"d/victim", b"from arch!", T0),
        (b"d/new", b"new", T0),
        (b"rel/new", b"rel", T0),
        (b"f", b"a file now", T0),
    ]);
    let a = s.file("dirs.tar", &tar);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), ""));
    s.stretcher().arg(&m).run().assert_ok();

    assert_eq!(
        snapshot(&outside),
        outside_before,
        "wrote through a symlink"
    );
    for dir in ["d", "rel"] {
        let md = std::fs::symlink_metadata(s.dest().join(dir)).unwrap();
        assert!(md.is_dir(), "{dir} is still a symlink");
    }
    assert_eq!(
        std::fs::read(s.dest().join("d/victim")).unwrap(),
        b"from arch!"
    );
    assert_eq!(std::fs::read(s.dest().join("d/new")).unwrap(), b"new");
    assert_eq!(std::fs::read(s.dest().join("rel/new")).unwrap(), b"rel");
    let f = std::fs::symlink_metadata(s.dest().join("f")).unwrap();
    assert!(f.is_file());
    assert_eq!(std::fs::read(s.dest().join("f")).unwrap(), b"a file now");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    redeploy(&s, &m);
    assert_eq!(snapshot(&outside), outside_before);
}

/// A tar with a character device, a block device and a fifo between two files.
fn devices_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar_header(tar::EntryType::Regular, 0o644, T0, 6);
    b.append_data(&mut h, "before", &b"before"[..]).unwrap();
    for (kind, name) in [
        (tar::EntryType::Char, "null"),
        (tar::EntryType::Block, "disk"),
        (tar::EntryType::Fifo, "pipe"),
    ] {
        let mut h = tar_header(kind, 0o666, T0, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    }
    let mut h = tar_header(tar::EntryType::Regular, 0o644, T0, 5);
    b.append_data(&mut h, "after", &b"after"[..]).unwrap();
    b.into_inner().unwrap()
}

/// Device nodes and fifos when not root: skipped with a warning, the rest deploys.
/// As root the binary runs as `nobody` (setpriv); without setpriv the library test
/// unpack.rs `fifo_only_as_root` (same_owner = false) is what covers it.
#[test]
fn device_nodes_are_skipped_when_not_root() {
    let root = nix::unistd::geteuid().is_root();
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if root && setpriv.is_none() {
        eprintln!("skipped: running as root and no setpriv to drop to nobody");
        return;
    }
    let s = Scratch::new();
    let a = s.file("dev.tar", &devices_tar());
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), ""));
    let mut cmd = match (root, setpriv) {
        (true, Some(setpriv)) => {
            let nobody = nix::unistd::User::from_name("nobody")
                .unwrap()
                .expect("user nobody");
            // nobody must read the archive and write beside dest.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            for p in [s.path().join("parent"), s.work()] {
                nix::unistd::chown(&p, Some(nobody.uid), Some(nobody.gid)).unwrap();
            }
            let mut c = Command::new(setpriv);
            c.arg(format!("--reuid={}", nobody.uid))
                .arg(format!("--regid={}", nobody.gid))
                .arg("--clear-groups")
                .arg(bin());
            c
        }
        _ => Command::new(bin()),
    };
    cmd.arg("--state-dir")
        .arg(s.work().join("state"))
        .arg(&m)
        .current_dir(s.work())
        .env_remove("CONSUL_INDEX")
        .env_remove("SERF_EVENT");
    let out = output_within(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for (what, name) in [
        ("character device", "null"),
        ("block device", "disk"),
        ("fifo", "pipe"),
    ] {
        assert!(
            stderr.contains(&format!("skipping {what} {name:?}")),
            "no warning for {name}: {stderr}"
        );
        assert!(std::fs::symlink_metadata(s.dest().join(name)).is_err());
    }
    assert_eq!(std::fs::read(s.dest().join("before")).unwrap(), b"before");
    assert_eq!(std::fs::read(s.dest().join("after")).unwrap(), b"after");
}

/// Runs `cmd` to its end with captured output (raw bytes), killing it by pid when
/// it runs longer than `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = collect(Box::new(child.stdout.take().unwrap()));
    let err = collect(Box::new(child.stderr.take().unwrap()));
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ran longer than {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Names are bytes: non-UTF-8 file, directory and symlink names deploy, update,
/// delete and show in `--dry-run` exactly.
#[test]
fn non_utf8_names_deploy_end_to_end() {
    let s = Scratch::new();
    let v1 = raw_tar(&[
        Raw::File(b"caf\xe9.txt", b"v1"),
        Raw::Dir(b"d\xff/"),
        Raw::File(b"d\xff/inner\x80", b"inner"),
        Raw::Symlink(b"l\xfe", b"caf\xe9.txt"),
        Raw::File(b"plain", b"p"),
    ]);
    let v2 = raw_tar(&[
        Raw::File(b"caf\xe9.txt", b"v2 longer"),
        Raw::Symlink(b"l\xfe", b"n\xe8w"),
        Raw::File(b"n\xe8w", b"new"),
        Raw::File(b"plain", b"p"),
    ]);
    let (a1, a2) = (s.file("v1.tar", &v1), s.file("v2.tar", &v2));
    let m1 = s.manifest("m1.yml", &manifest_for(&a1, &s.dest(), ""));
    let m2 = s.manifest("m2.yml", &manifest_for(&a2, &s.dest(), ""));
    // The -v lines show non-UTF-8 bytes as \xNN (SPEC §9), never U+FFFD.
    let run = s.stretcher().arg(&m1).run();
    run.assert_ok()
        .assert_log("caf\\xe9.txt")
        .assert_log("d\\xff/inner\\x80")
        .assert_log("l\\xfe -> caf\\xe9.txt");
    assert!(!run.stderr.contains('\u{fffd}'), "{}", run.stderr);
    let p = |b: &[u8]| s.dest().join(OsStr::from_bytes(b));
    assert_eq!(std::fs::read(p(b"caf\xe9.txt")).unwrap(), b"v1");
    assert_eq!(std::fs::read(p(b"d\xff/inner\x80")).unwrap(), b"inner");
    assert_eq!(
        std::fs::read_link(p(b"l\xfe"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"caf\xe9.txt"
    );

    // --dry-run prints the names as their bytes
    let mut cmd = Command::new(bin());
    cmd.arg("--state-dir")
        .arg(s.state_dir())
        .arg("--dry-run")
        .arg(&m2)
        .current_dir(s.work())
        .env_remove("CONSUL_INDEX")
        .env_remove("SERF_EVENT");
    let out = output_within(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: &[u8] = b"delete d\xff/inner\x80\ndelete d\xff/\nupdate caf\xe9.txt\nupdate l\xfe -> n\xe8w\nadd n\xe8w\n";
    assert_eq!(out.stdout, want, "{}", String::from_utf8_lossy(&out.stdout));

    let run = s.stretcher().arg(&m2).run();
    run.assert_ok().assert_log("deleting d\\xff/");
    redeploy(&s, &m2);
    assert_eq!(std::fs::read(p(b"caf\xe9.txt")).unwrap(), b"v2 longer");
    assert_eq!(std::fs::read(p(b"n\xe8w")).unwrap(), b"new");
    assert!(std::fs::symlink_metadata(p(b"d\xff")).is_err());
    assert_eq!(
        std::fs::read_link(p(b"l\xfe"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"n\xe8w"
    );
    let mut got: Vec<Vec<u8>> = std::fs::read_dir(s.dest())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    got.sort();
    let want: Vec<&[u8]> = vec![b"caf\xe9.txt", b"l\xfe", b"n\xe8w", b"plain"];
    assert_eq!(got, want);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

// ---- --dry-run ----

/// Hooks that leave a marker in the work dir when they run.
const MARKER_HOOKS: &str = "commands:\n  pre:\n    - touch pre.ran\n  post:\n    - touch post.ran\n  success:\n    - touch success.ran\n  failure:\n    - touch failure.ran\n";

fn no_hook_ran(s: &Scratch) {
    for m in ["pre.ran", "post.ran", "success.ran", "failure.ran"] {
        assert!(!s.work().join(m).exists(), "{m}: a hook ran");
    }
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let s = Scratch::new();
    let v1 = s.file(
        "v1.tar",
        &files_tar(&[
            (b"keep", b"same", T0),
            (b"dir/change", b"old", T0),
            (b"gone/x", b"x", T0),
        ]),
    );
    let m1 = s.manifest("m1.yml", &manifest_for(&v1, &s.dest(), ""));
    s.stretcher().arg(&m1).run().assert_ok();
    std::fs::write(s.dest().join("extra.pid"), "1").unwrap();
    let before = snapshot(&s.dest());
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let keep_ino = ino(&s.dest().join("keep"));

    let v2 = s.file(
        "v2.tar.gz",
        &gzip(&files_tar(&[
            (b"keep", b"same", T0),
            (b"dir/change", b"new!", T0 + 5),
            (b"dir/added", b"a", T0),
            (b"extra.pid", b"kept: excluded", T0),
        ])),
    );
    let extra = format!("excludes: [\"*.pid\"]\n{MARKER_HOOKS}");
    let m2 = s.manifest("m2.yml", &manifest_for(&v2, &s.dest(), &extra));
    let r = s.stretcher().arg("--dry-run").arg(&m2).run();
    r.assert_ok()
        .assert_log("Dry run: 1 to add, 1 to update, 2 to delete in ")
        .assert_log("Dry run done: nothing was changed and no command was run.");
    assert_eq!(
        r.stdout,
        "run pre: touch pre.ran\n\
         delete gone/x\n\
         delete gone/\n\
         add dir/added\n\
         update dir/change\n\
         run post: touch post.ran\n\
         run success: touch success.ran\n"
    );
    assert_eq!(snapshot(&s.dest()), before, "dry run changed dest");
    assert_eq!(ino(&s.dest().join("keep")), keep_ino);
    no_hook_ran(&s);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    // The real run does what the dry run said.
    s.stretcher().arg(&m2).run().assert_ok();
    redeploy(&s, &m2);
    assert_eq!(std::fs::read(s.dest().join("dir/change")).unwrap(), b"new!");
    assert!(!s.dest().join("gone").exists());
    assert!(s.work().join("success.ran").exists());
}

#[test]
fn dry_run_with_mv_strategy_lists_what_would_be_moved() {
    let s = Scratch::new();
    let extra = format!("sync_strategy: mv\n{MARKER_HOOKS}");
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), &extra),
    );
    let r = s.stretcher().arg("-dry-run").arg(&m).run();
    r.assert_ok()
        .assert_log("sync_strategy mv renames the unpacked tree onto");
    assert_eq!(
        r.stdout,
        "run pre: touch pre.ran\nadd bar\nadd exclude.txt\nadd foo/\nadd foo/baz\n\
         run post: touch post.ran\nrun success: touch success.ran\n"
    );
    assert!(!s.dest().exists(), "dry run created dest");
    no_hook_ran(&s);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn dry_run_of_a_commands_only_manifest_lists_its_hooks() {
    let s = Scratch::new();
    let m = s.manifest("m.yml", MARKER_HOOKS);
    let r = s.stretcher().arg("--dry-run=true").arg(&m).run();
    r.assert_ok();
    assert_eq!(
        r.stdout,
        "run pre: touch pre.ran\nrun post: touch post.ran\nrun success: touch success.ran\n"
    );
    no_hook_ran(&s);
}

/// A dry run that fails (checksum mismatch) exits 1 and runs no `failure` hook.
#[test]
fn failed_dry_run_runs_no_failure_hook() {
    let s = Scratch::new();
    let text = format!(
        "src: file://{}\nchecksum: {}\ndest: {}\n{MARKER_HOOKS}",
        archive("test.tar").display(),
        "a".repeat(40),
        s.dest().display()
    );
    let m = s.manifest("m.yml", &text);
    s.stretcher()
        .arg("--dry-run")
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("checksum mismatch");
    no_hook_ran(&s);
    assert!(!s.dest().exists());
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

// ---- --command-timeout ----

#[test]
fn command_timeout_kills_a_hanging_pre_hook_and_its_group() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("old"), "1").unwrap();
    let before = snapshot(&s.dest());
    // A background child that ignores SIGTERM would touch `late` after 5s: the
    // SIGKILL after the grace must get it first.
    let pre = "(trap '' TERM; sleep 5; touch late) & sleep 60";
    let extra = format!(
        "commands:\n  pre:\n    - \"{pre}\"\n  post:\n    - touch post.ran\n  failure:\n    - cat > failure.log\n"
    );
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), &extra),
    );
    let r = s
        .stretcher()
        .args(["--command-timeout", "1s"])
        .arg(&m)
        .limit(Duration::from_secs(30))
        .run();
    let line = format!("failed: {pre} killed after timeout 1s");
    r.assert_fail().assert_log(&line);
    assert!(r.elapsed < Duration::from_secs(10), "{:?}", r.elapsed);
    assert!(std::fs::read_to_string(s.work().join("failure.log"))
        .unwrap()
        .contains(&line));
    assert_eq!(snapshot(&s.dest()), before);
    assert!(!s.work().join("post.ran").exists());
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    std::thread::sleep(Duration::from_secs(6).saturating_sub(r.elapsed));
    assert!(
        !s.work().join("late").exists(),
        "a process of the hook's group outlived the timeout"
    );
}

#[test]
fn command_timeout_applies_to_post_and_success_hooks() {
    let s = Scratch::new();
    let m = s.manifest(
        "post.yml",
        &manifest_for(
            &archive("test.tar"),
            &s.dest(),
            "commands:\n  post:\n    - sleep 30\n  failure:\n    - echo failure-ran\n",
        ),
    );
    s.stretcher()
        .args(["-command-timeout=500ms"])
        .arg(&m)
        .limit(Duration::from_secs(30))
        .run()
        .assert_fail()
        .assert_log("failed: sleep 30 killed after timeout 500ms")
        .assert_log(" failure-ran\n");
    // A success hook that hangs is stopped too; as for any success hook failure
    // the deploy itself still succeeded.
    let m = s.manifest(
        "success.yml",
        "commands:\n  success:\n    - sleep 30\n    - echo never\n",
    );
    let r = s
        .stretcher()
        .args(["--command-timeout", "0.5"])
        .arg(&m)
        .limit(Duration::from_secs(30))
        .run();
    r.assert_ok()
        .assert_log("success command failed: failed: sleep 30 killed after timeout 500ms");
    assert!(!r.stderr.contains(" never\n"));
    assert!(r.elapsed < Duration::from_secs(10), "{:?}", r.elapsed);
}

/// `dest` refusal (SPEC §4, §10) for every listed system directory, through the
/// binary: nothing is fetched, nothing runs. (manifest.rs `dest_table` has the
/// normalisation cases.)
#[test]
fn every_system_directory_is_refused_as_dest() {
    let s = Scratch::new();
    for dir in [
        "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
        "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp",
        "/usr", "/var", "//usr/", "/./etc/.",
    ] {
        let text = format!(
            "src: file://{}\nchecksum: {}\ndest: \"{dir}\"\ncommands:\n  pre:\n    - touch pre.ran\n",
            archive("test.tar").display(),
            sha1_file(&archive("test.tar"))
        );
        let m = s.manifest("m.yml", &text);
        s.stretcher().arg(&m).run().assert_fail().assert_log("dest");
        assert!(!s.work().join("pre.ran").exists(), "{dir}");
    }
}
