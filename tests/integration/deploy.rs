//! Whole deploys through the real binary: the original project's suite, one test
//! per case, plus bad input that must fail cleanly and leave `dest` as it was.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::util::*;

/// The Go suite's fixture deploy: a dest holding test.pid, pre/post markers.
#[test]
fn deploy_mirrors_archive_and_runs_pre_post() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("test.pid"), "123").unwrap();
    let m = s.manifest(
        "m.yml",
        &manifest_for(
            &archive("test.tar"),
            &s.dest(),
            "commands:\n  pre:\n    - pwd\n    - echo \"pre\" > pre.touch\n  post:\n    - pwd\n    - echo \"post\" > post.touch\n",
        ),
    );
    let r = s.stretcher().arg(&m).run();
    r.assert_ok();
    assert_eq!(
        std::fs::read_to_string(s.dest().join("foo/baz")).unwrap(),
        "baz\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.dest().join("bar")).unwrap(),
        "bar\n"
    );
    assert!(
        !s.dest().join("test.pid").exists(),
        "test.pid must be removed"
    );
    assert_eq!(
        std::fs::read_to_string(s.work().join("pre.touch")).unwrap(),
        "pre\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.work().join("post.touch")).unwrap(),
        "post\n"
    );
    // hooks run in stretcher's own cwd
    r.assert_log(&format!(" {}\n", s.work().display()));
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

/// TestParseManifest: src, checksum, dest, two pre, one post.
#[test]
fn manifest_with_two_pre_and_one_post() {
    let s = Scratch::new();
    let m = s.manifest(
        "m.yml",
        &manifest_for(
            &archive("test.tar"),
            &s.dest(),
            "commands:\n  pre:\n    - echo 'staring deploy'\n    - echo 'xxx'\n  post:\n    - echo 'deploy done'\n",
        ),
    );
    let r = s.stretcher().arg(&m).run();
    r.assert_ok()
        .assert_log(" staring deploy\n")
        .assert_log(" xxx\n")
        .assert_log(" deploy done\n");
    let pre = r.stderr.find(" xxx\n").unwrap();
    let post = r.stderr.find(" deploy done\n").unwrap();
    assert!(pre < post);
}

#[test]
fn env_and_must_env_templates() {
    let s = Scratch::new();
    let tar = archive("test.tar");
    let text = format!(
        "src: file://{{{{ must_env `ARCHIVE` }}}}\nchecksum: {}\ndest: {{{{ must_env \"DEST\" }}}}\ncommands:\n  pre:\n    - echo 'greeting={{{{ env \"GREETING\" \"hi\" }}}} who={{{{ env \"WHO\" }}}}'\n",
        sha1_file(&tar)
    );
    let m = s.manifest("m.yml", &text);
    s.stretcher()
        .arg(&m)
        .env("ARCHIVE", &tar)
        .env("DEST", s.dest())
        .env("WHO", "ops")
        .env_remove("GREETING")
        .run()
        .assert_ok()
        .assert_log(" greeting=hi who=ops\n");
    assert!(s.dest().join("foo/baz").is_file());

    // must_env of an unset variable fails naming it, before anything runs.
    let r = s.stretcher().arg(&m).env("ARCHIVE", &tar).run();
    r.assert_fail().assert_log("DEST");
}

#[test]
fn mv_strategy_into_absent_dest() {
    let s = Scratch::new();
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), "sync_strategy: mv\n"),
    );
    s.stretcher().arg(&m).run().assert_ok();
    assert!(s.dest().join("foo/baz").is_file());
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

/// mv with dest_mode after a pre command removed dest.
#[test]
fn mv_strategy_with_dest_mode_after_pre_removed_dest() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest().join("old")).unwrap();
    let extra = format!(
        "sync_strategy: mv\ndest_mode: 0751\ncommands:\n  pre:\n    - rm -rf {}\n",
        s.dest().display()
    );
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), &extra),
    );
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(mode_of(&s.dest()), 0o751);
    assert!(s.dest().join("bar").is_file());
    assert!(!s.dest().join("old").exists());
}

#[test]
fn mv_strategy_refuses_non_empty_dest() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("keep"), "x").unwrap();
    let before = snapshot(&s.dest());
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), "sync_strategy: mv\n"),
    );
    s.stretcher().arg(&m).run().assert_fail();
    assert_eq!(snapshot(&s.dest()), before);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn unknown_strategy_is_refused() {
    let s = Scratch::new();
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), "sync_strategy: dummy\n"),
    );
    s.stretcher()
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("invalid strategy");
    assert!(!s.dest().exists());
}

/// Deploys test.tar with `rules` into a dest holding test.pid: `foo/baz` must be
/// left out and test.pid kept (the original's exclude tests).
fn assert_excludes_baz_and_pid(rules: &str) {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("test.pid"), "123").unwrap();
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), rules),
    );
    s.stretcher().arg(&m).run().assert_ok();
    assert!(
        !s.dest().join("foo/baz").exists(),
        "/foo/baz must be excluded"
    );
    assert!(s.dest().join("bar").is_file());
    assert!(s.dest().join("test.pid").is_file());
}

#[test]
fn excludes_keep_and_skip() {
    assert_excludes_baz_and_pid("excludes:\n  - \"*.pid\"\n  - baz\n");
}

#[test]
fn exclude_from_file_in_archive() {
    assert_excludes_baz_and_pid("exclude_from: exclude.txt\n");
}

#[test]
fn missing_exclude_from_fails_with_dest_unchanged() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("old"), "1").unwrap();
    let before = snapshot(&s.dest());
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), "exclude_from: nope.txt\n"),
    );
    s.stretcher()
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("nope.txt");
    assert_eq!(snapshot(&s.dest()), before);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn dest_mode_without_top_dir_entry() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest()).unwrap();
    let m = s.manifest(
        "m.yml",
        &manifest_for(
            &archive("test_no_top_dir.tar"),
            &s.dest(),
            "dest_mode: 0711\n",
        ),
    );
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(mode_of(&s.dest()), 0o711);
    assert!(s.dest().join("foo/baz").is_file());
}

#[test]
fn dest_mode_defaults_to_archive_root_then_0755() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::set_permissions(s.dest(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test_no_top_dir.tar"), &s.dest(), ""),
    );
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(mode_of(&s.dest()), 0o755);

    // an archive whose ./ entry is 0750 gives a 0750 dest
    let tar = raw_tar_with_root_mode(b"0000750\0");
    let a = s.file("root750.tar", &tar);
    let m = s.manifest("m2.yml", &manifest_for(&a, &s.dest(), ""));
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(mode_of(&s.dest()), 0o750);
}

fn raw_tar_with_root_mode(mode: &[u8; 8]) -> Vec<u8> {
    let mut t = raw_tar(&[Raw::Dir(b"./"), Raw::File(b"./a", b"a\n")]);
    t[100..108].copy_from_slice(mode);
    t[148..156].copy_from_slice(b"        ");
    let sum: u32 = t[..512].iter().map(|&b| b as u32).sum();
    t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    t
}

#[test]
fn colon_in_command_needs_quotes() {
    let s = Scratch::new();
    let bad = s.manifest(
        "bad.yml",
        "commands:\n  success:\n    - echo some-commend-with-argument-includes-colon \":foo: bar\"\n",
    );
    let r = s.stretcher().arg(&bad).run();
    r.assert_fail();
    assert!(!r
        .stderr
        .contains("some-commend-with-argument-includes-colon :foo: bar"));

    let good = s.manifest(
        "good.yml",
        "commands:\n  success:\n    - 'echo some-commend-with-argument-includes-colon \":foo: bar\"'\n",
    );
    s.stretcher()
        .arg(&good)
        .run()
        .assert_ok()
        .assert_log(
            "Invoking command: echo some-commend-with-argument-includes-colon \":foo: bar\"\n",
        )
        .assert_log(" some-commend-with-argument-includes-colon :foo: bar\n");
}

#[test]
fn retry_on_missing_file_then_fail() {
    let s = Scratch::new();
    let missing = s.path().join("missing.tar");
    let text = format!(
        "src: file://{}\nchecksum: {}\ndest: {}\n",
        missing.display(),
        "0".repeat(40),
        s.dest().display()
    );
    let m = s.manifest("m.yml", &text);
    let r = s
        .stretcher()
        .args(["--retry", "3", "--retry-wait", "3"])
        .arg(&m)
        .run();
    r.assert_fail().assert_log("missing.tar");
    assert_eq!(
        r.stderr.matches("retrying in 3s").count(),
        3,
        "{}",
        r.stderr
    );
    assert!(!s.dest().exists());
}

#[test]
fn timeout_with_slow_download() {
    let s = Scratch::new();
    let tar = archive("test.tar");
    let size = std::fs::metadata(&tar).unwrap().len();
    let m = s.manifest("m.yml", &manifest_for(&tar, &s.dest(), ""));
    let r = s
        .stretcher()
        .arg(format!("-max-bandwidth={}", size / 5))
        .args(["-timeout", "2"])
        .arg(&m)
        .run();
    r.assert_fail().assert_log("timeout");
    assert!(!s.dest().exists());
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

/// The original's bandwidth test: size/2 per second takes about two seconds.
#[test]
fn max_bandwidth_paces_download() {
    let s = Scratch::new();
    let tar = archive("test.tar");
    let size = std::fs::metadata(&tar).unwrap().len();
    let m = s.manifest("m.yml", &manifest_for(&tar, &s.dest(), ""));
    let r = s
        .stretcher()
        .args(["--max-bandwidth", &(size / 2).to_string()])
        .arg(&m)
        .run();
    r.assert_ok();
    let secs = r.elapsed.as_secs_f64();
    assert!((1.0..=4.0).contains(&secs), "took {secs}s");
}

#[test]
fn commands_only_manifest() {
    let s = Scratch::new();
    let ok = s.manifest(
        "ok.yml",
        "commands:\n  pre:\n    - echo pre-ran\n  post:\n    - echo post-ran\n  success:\n    - cat > success.log\n  failure:\n    - touch failure.ran\n",
    );
    s.stretcher()
        .arg(&ok)
        .run()
        .assert_ok()
        .assert_log(" pre-ran\n")
        .assert_log(" post-ran\n");
    assert!(std::fs::read_to_string(s.work().join("success.log"))
        .unwrap()
        .contains(" post-ran\n"));
    assert!(!s.work().join("failure.ran").exists());

    let bad = s.manifest(
        "bad.yml",
        "commands:\n  pre:\n    - exit 3\n  post:\n    - touch post.ran\n  failure:\n    - cat > failure.log\n",
    );
    let r = s.stretcher().arg(&bad).run();
    r.assert_fail().assert_log("failed: exit 3 exit status 3");
    assert!(!s.work().join("post.ran").exists());
    assert!(std::fs::read_to_string(s.work().join("failure.log"))
        .unwrap()
        .contains("failed: exit 3 exit status 3"));
}

#[test]
fn sigterm_stops_the_deploy_and_runs_failure_hooks() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("old"), "1").unwrap();
    let before = snapshot(&s.dest());
    let m = s.manifest(
        "m.yml",
        &manifest_for(
            &archive("test.tar"),
            &s.dest(),
            "commands:\n  pre:\n    - echo started > started; sleep 30\n  failure:\n    - cat > failure.log\n",
        ),
    );
    let running = s.stretcher().arg(&m).limit(Duration::from_secs(20)).spawn();
    let t = std::time::Instant::now();
    while !s.work().join("started").exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "pre never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    running.signal(nix::sys::signal::Signal::SIGTERM);
    let r = running.wait();
    r.assert_fail().assert_log("interrupted by SIGTERM");
    assert!(r.elapsed < Duration::from_secs(15));
    assert_eq!(snapshot(&s.dest()), before);
    assert!(std::fs::read_to_string(s.work().join("failure.log"))
        .unwrap()
        .contains("interrupted by SIGTERM"));
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

/// A relative src is read from beside the manifest.
#[test]
fn relative_src_beside_manifest() {
    let s = Scratch::new();
    std::fs::copy(archive("test.tar"), s.path().join("app.tar")).unwrap();
    let text = format!(
        "src: app.tar\nchecksum: {}\ndest: {}\n",
        sha1_file(&archive("test.tar")),
        s.dest().display()
    );
    let m = s.manifest("m.yml", &text);
    s.stretcher().arg(&m).run().assert_ok();
    assert!(s.dest().join("foo/baz").is_file());
}

#[test]
fn tar_gz_and_checksum_algorithms() {
    let s = Scratch::new();
    let gz = gzip(&std::fs::read(archive("test.tar")).unwrap());
    let a = s.file("test.tar.gz", &gz);
    let sha256 = {
        let c = stretcher::verify::Checksum::parse(&"0".repeat(64)).unwrap();
        let mut h = c.hasher();
        h.update(&gz);
        h.finish_hex()
    };
    let text = format!(
        "src: file://{}\nchecksum: {}\ndest: {}\n",
        a.display(),
        sha256.to_uppercase(),
        s.dest().display()
    );
    let m = s.manifest("m.yml", &text);
    s.stretcher().arg(&m).run().assert_ok();
    assert!(s.dest().join("foo/baz").is_file());
}

/// Redeploying the same archive changes nothing and rewrites nothing.
#[test]
fn redeploy_is_a_no_op() {
    let s = Scratch::new();
    let m = s.manifest("m.yml", &manifest_for(&archive("test.tar"), &s.dest(), ""));
    s.stretcher().arg(&m).run().assert_ok();
    let ino =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = (snapshot(&s.dest()), ino(&s.dest().join("foo/baz")));
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(
        (snapshot(&s.dest()), ino(&s.dest().join("foo/baz"))),
        before
    );
}

// ---- bad input: one clear line, dest unchanged, nothing left beside it ----

/// Runs `manifest_text` against a dest holding one file and checks the failure.
fn assert_clean_failure(s: &Scratch, manifest_text: &str, needle: &str) -> Run {
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::write(s.dest().join("precious"), "keep me").unwrap();
    let before = snapshot(&s.dest());
    let m = s.manifest("m.yml", manifest_text);
    let r = s.stretcher().arg(&m).run();
    r.assert_fail();
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", r.stderr));
    assert!(!line.contains("panicked"), "{line}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(snapshot(&s.dest()), before, "dest changed");
    assert!(
        s.leftovers().is_empty(),
        "left beside dest: {:?}",
        s.leftovers()
    );
    r
}

#[test]
fn unreadable_manifest() {
    let s = Scratch::new();
    let r = s.stretcher().arg(s.path().join("nope.yml")).run();
    r.assert_fail().assert_log("nope.yml");
    assert!(!r.stderr.contains("panicked"));
}

#[test]
fn invalid_yaml() {
    let s = Scratch::new();
    let text = format!("src: [unclosed\ndest: {}\n", s.dest().display());
    assert_clean_failure(&s, &text, "m.yml");
}

#[test]
fn must_env_missing() {
    let s = Scratch::new();
    let text = format!(
        "src: file:///x.tar\nchecksum: {}\ndest: {}\ncommands:\n  pre:\n    - echo {{{{ must_env \"STRETCHER_TEST_SURELY_UNSET\" }}}}\n",
        "0".repeat(40),
        s.dest().display()
    );
    assert_clean_failure(&s, &text, "STRETCHER_TEST_SURELY_UNSET");
}

#[test]
fn bad_checksum_length() {
    let s = Scratch::new();
    let text = format!(
        "src: file://{}\nchecksum: abc123\ndest: {}\n",
        archive("test.tar").display(),
        s.dest().display()
    );
    assert_clean_failure(&s, &text, "abc123");
}

#[test]
fn checksum_mismatch_before_any_hook() {
    let s = Scratch::new();
    let text = format!(
        "src: file://{}\nchecksum: {}\ndest: {}\ncommands:\n  pre:\n    - touch pre.ran\n  failure:\n    - cat > failure.log\n",
        archive("test.tar").display(),
        "a".repeat(40),
        s.dest().display()
    );
    let r = assert_clean_failure(
        &s,
        &text,
        &format!(
            "checksum mismatch. expected:{} got:{}",
            "a".repeat(40),
            sha1_file(&archive("test.tar"))
        ),
    );
    drop(r);
    assert!(
        !s.work().join("pre.ran").exists(),
        "pre ran before checksum"
    );
    assert!(std::fs::read_to_string(s.work().join("failure.log"))
        .unwrap()
        .contains("checksum mismatch"));
}

fn archive_manifest(s: &Scratch, name: &str, data: &[u8], extra: &str) -> String {
    let a = s.file(name, data);
    manifest_for(&a, &s.dest(), extra)
}

#[test]
fn truncated_gzip() {
    let s = Scratch::new();
    let gz = gzip(&std::fs::read(archive("test.tar")).unwrap());
    let text = archive_manifest(&s, "cut.tar.gz", &gz[..gz.len() / 2], "");
    assert_clean_failure(&s, &text, "cut.tar.gz");
}

#[test]
fn corrupt_gzip_crc() {
    let s = Scratch::new();
    let mut gz = gzip(&std::fs::read(archive("test.tar")).unwrap());
    let n = gz.len();
    gz[n - 8] ^= 0xff; // CRC32 of the trailer
    let text = archive_manifest(&s, "crc.tar.gz", &gz, "");
    assert_clean_failure(&s, &text, "crc.tar.gz");
}

#[test]
fn dotdot_entry_is_refused() {
    let s = Scratch::new();
    let tar = raw_tar(&[Raw::File(b"ok", b"1"), Raw::File(b"../escape", b"x")]);
    let text = archive_manifest(&s, "dotdot.tar", &tar, "");
    assert_clean_failure(&s, &text, "../escape");
    assert!(!s.path().join("parent/escape").exists());
}

#[test]
fn symlink_escape_is_refused() {
    let s = Scratch::new();
    let outside = s.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = outside.to_str().unwrap().as_bytes().to_vec();
    let tar = raw_tar(&[Raw::Symlink(b"lnk", &target), Raw::File(b"lnk/evil", b"x")]);
    let text = archive_manifest(&s, "escape.tar", &tar, "");
    assert_clean_failure(&s, &text, "lnk/evil");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn failing_pre_runs_failure_hooks_with_log() {
    let s = Scratch::new();
    let text = manifest_for(
        &archive("test.tar"),
        &s.dest(),
        "commands:\n  pre:\n    - echo about-to-fail; false\n  post:\n    - touch post.ran\n  success:\n    - touch success.ran\n  failure:\n    - cat > failure.log\n",
    );
    assert_clean_failure(&s, &text, "failed: echo about-to-fail; false exit status 1");
    let log = std::fs::read_to_string(s.work().join("failure.log")).unwrap();
    assert!(log.contains(" about-to-fail\n"), "{log}");
    assert!(
        log.contains("failed: echo about-to-fail; false exit status 1"),
        "{log}"
    );
    assert!(!s.work().join("post.ran").exists());
    assert!(!s.work().join("success.ran").exists());
}

#[test]
fn refused_dest() {
    let s = Scratch::new();
    for dest in ["/", "/usr", "/etc/", "//var", "relative/dir"] {
        let text = format!(
            "src: file://{}\nchecksum: {}\ndest: {dest}\n",
            archive("test.tar").display(),
            sha1_file(&archive("test.tar"))
        );
        let m = s.manifest("m.yml", &text);
        s.stretcher().arg(&m).run().assert_fail().assert_log("dest");
    }
}

// ---- the one-pass deploy: unchanged files kept, changed ones renamed in ----

fn ino(p: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(p).unwrap())
}

/// A tar of `files` (name, content, mtime) with a `./` entry.
fn tar_of(files: &[(&str, &str, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar_header(tar::EntryType::Directory, 0o755, 1_600_000_000, 0);
    b.append_data(&mut h, "./", std::io::empty()).unwrap();
    for (name, data, mtime) in files {
        let mut h = tar_header(tar::EntryType::Regular, 0o644, *mtime, data.len() as u64);
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn update_keeps_unchanged_files_and_replaces_changed_ones() {
    let s = Scratch::new();
    let v1 = s.file(
        "v1.tar",
        &tar_of(&[
            ("keep.txt", "same", 1_600_000_000),
            ("dir/change.txt", "old", 1_600_000_000),
            ("gone.txt", "x", 1_600_000_000),
        ]),
    );
    let v2 = s.file(
        "v2.tar.gz",
        &gzip(&tar_of(&[
            ("keep.txt", "same", 1_600_000_000),
            ("dir/change.txt", "new!", 1_600_000_100),
            ("dir/added.txt", "a", 1_600_000_000),
        ])),
    );
    let m1 = s.manifest("m1.yml", &manifest_for(&v1, &s.dest(), ""));
    let m2 = s.manifest("m2.yml", &manifest_for(&v2, &s.dest(), ""));
    s.stretcher().arg(&m1).run().assert_ok();
    let (keep, change) = (
        ino(&s.dest().join("keep.txt")),
        ino(&s.dest().join("dir/change.txt")),
    );
    s.stretcher()
        .arg(&m2)
        .run()
        .assert_ok()
        .assert_log("(1 unchanged files left in place in");
    assert_eq!(
        ino(&s.dest().join("keep.txt")),
        keep,
        "unchanged file rewritten"
    );
    assert_ne!(ino(&s.dest().join("dir/change.txt")), change);
    assert_eq!(
        std::fs::read_to_string(s.dest().join("dir/change.txt")).unwrap(),
        "new!"
    );
    assert_eq!(
        std::fs::read_to_string(s.dest().join("dir/added.txt")).unwrap(),
        "a"
    );
    assert!(!s.dest().join("gone.txt").exists());
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(
            &std::fs::metadata(s.dest().join("keep.txt")).unwrap()
        ),
        1
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn pre_removing_dest_still_gives_a_full_mirror() {
    let s = Scratch::new();
    let m = s.manifest("m.yml", &manifest_for(&archive("test.tar"), &s.dest(), ""));
    s.stretcher().arg(&m).run().assert_ok();
    let extra = format!("commands:\n  pre:\n    - rm -rf {}\n", s.dest().display());
    let m = s.manifest(
        "m2.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), &extra),
    );
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(
        std::fs::read_to_string(s.dest().join("foo/baz")).unwrap(),
        "baz\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.dest().join("bar")).unwrap(),
        "bar\n"
    );
}

#[test]
fn pre_changing_a_kept_file_unpacks_again() {
    let s = Scratch::new();
    let m = s.manifest("m.yml", &manifest_for(&archive("test.tar"), &s.dest(), ""));
    s.stretcher().arg(&m).run().assert_ok();
    // `bar` is left in place by the unpack (unchanged), then `pre` rewrites it
    let extra = format!(
        "commands:\n  pre:\n    - echo more >> {}/bar\n",
        s.dest().display()
    );
    let m = s.manifest(
        "m2.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), &extra),
    );
    // --force: the redeploy check would see the change `pre` made and skip the
    // reuse of dest's files; this is about the unpack that reused them.
    s.stretcher()
        .arg("--force")
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("unpacking the archive again in full");
    assert_eq!(
        std::fs::read_to_string(s.dest().join("bar")).unwrap(),
        "bar\n"
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn tar_zst_deploys() {
    let s = Scratch::new();
    let zst =
        zstd::stream::encode_all(&std::fs::read(archive("test.tar")).unwrap()[..], 3).unwrap();
    let a = s.file("test.tar.zst", &zst);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), ""));
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(
        std::fs::read_to_string(s.dest().join("foo/baz")).unwrap(),
        "baz\n"
    );
}

#[test]
fn hard_links_in_the_archive_become_separate_files() {
    let s = Scratch::new();
    let tar = raw_tar(&[
        Raw::Dir(b"d/"),
        Raw::File(b"d/a", b"shared\n"),
        Raw::HardLink(b"d/b", b"d/a"),
    ]);
    let a = s.file("links.tar", &tar);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), ""));
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(
        std::fs::read_to_string(s.dest().join("d/b")).unwrap(),
        "shared\n"
    );
    assert_ne!(ino(&s.dest().join("d/a")), ino(&s.dest().join("d/b")));
}

/// dest's parent is not writable by the runner (dest itself is): the lock and the
/// staging directory go to $TMPDIR, the changes are copied in, nothing is left over.
#[test]
fn unwritable_parent_stages_in_tmpdir() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let tmpdir = s.path().join("tmpdir");
    std::fs::create_dir_all(s.dest()).unwrap();
    std::fs::create_dir_all(&tmpdir).unwrap();
    std::fs::write(s.dest().join("stale"), "x").unwrap();
    let m = s.manifest("m.yml", &manifest_for(&archive("test.tar"), &s.dest(), ""));
    let root = nix::unistd::geteuid().is_root();
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let run = if root {
        let Some(setpriv) = setpriv else {
            eprintln!("skipped: running as root and no setpriv to drop to nobody");
            return;
        };
        // nobody owns dest, the work dir and TMPDIR, not dest's parent (root's, 0755)
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            s.path().join("parent"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        for p in [s.dest(), s.dest().join("stale"), s.work(), tmpdir.clone()] {
            nix::unistd::chown(&p, Some(nobody.uid), Some(nobody.gid)).unwrap();
        }
        let args = [
            format!("--reuid={}", nobody.uid),
            format!("--regid={}", nobody.gid),
            "--clear-groups".to_string(),
        ];
        stretcher_via(Some((setpriv, &args[..])))
            .cwd(&s.work())
            .arg("--state-dir")
            .arg(tmpdir.join("state"))
    } else {
        std::fs::set_permissions(
            s.path().join("parent"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        s.stretcher()
    };
    let r = run.env("TMPDIR", &tmpdir).arg(&m).run();
    if !root {
        std::fs::set_permissions(
            s.path().join("parent"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    r.assert_ok().assert_log("cannot write beside");
    assert_eq!(
        std::fs::read_to_string(s.dest().join("foo/baz")).unwrap(),
        "baz\n"
    );
    assert!(!s.dest().join("stale").exists());
    let left: Vec<_> = std::fs::read_dir(&tmpdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".stretcher-"))
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}
