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
    redeploy(&s, &m);
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
    redeploy(&s, &m);
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
    redeploy_unchanged(&s, &m, |r| {
        r.env("ARCHIVE", &tar)
            .env("DEST", s.dest())
            .env("WHO", "ops")
    });

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
    redeploy_mv_refused(&s, &m);
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
    // its pre removes dest again: the second run is a full deploy with the same result
    redeploy(&s, &m);
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
    // dest now holds the exclude_from file unchanged: the unpack leaves it in place
    redeploy(&s, &m);
    assert!(!s.dest().join("foo/baz").exists());
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
    redeploy(&s, &m);
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
    redeploy(&s, &m);
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
    redeploy_unchanged(&s, &m, |r| {
        r.args(["--max-bandwidth", &(size / 2).to_string()])
    });
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
    redeploy(&s, &m);
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
    redeploy(&s, &m);
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
    redeploy(&s, &m2);
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
    redeploy(&s, &m);
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
    redeploy(&s, &m);
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
    redeploy(&s, &m);
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
    redeploy(&s, &m);
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

/// A tar with a `./` entry, the directories `dirs` and the files `files` (name,
/// content, mtime), every entry with an explicit mtime (so GNU tar and the unpack
/// agree on directories too).
fn tar_with_dirs(dirs: &[&str], files: &[(&str, &str, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar_header(tar::EntryType::Directory, 0o755, 1_600_000_000, 0);
    b.append_data(&mut h, "./", std::io::empty()).unwrap();
    for d in dirs {
        let mut h = tar_header(tar::EntryType::Directory, 0o750, 1_600_000_500, 0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (name, data, mtime) in files {
        let mut h = tar_header(tar::EntryType::Regular, 0o644, *mtime, data.len() as u64);
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// `rsync -a --delete --exclude-from SRC/LIST SRC/ DEST/` of the archive as GNU tar
/// extracts it: the oracle of a deploy with `exclude_from`.
fn rsync_deploy(tar_file: &std::path::Path, list: &str, dest: &std::path::Path) {
    let src = tempfile::tempdir().unwrap();
    // Directory mtimes set after all entries (the archive lists files after dirs).
    let ok = std::process::Command::new("tar")
        .args(["--delay-directory-restore", "-xf"])
        .arg(tar_file)
        .arg("-C")
        .arg(src.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let out = std::process::Command::new("rsync")
        .args(["-a", "--delete"])
        .arg(format!(
            "--exclude-from={}",
            src.path().join(list).display()
        ))
        .arg(format!("{}/", src.path().display()))
        .arg(format!("{}/", dest.display()))
        .output()
        .expect("rsync (the sync oracle) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What two dests must agree on: every entry below the root.
fn below_root(dest: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Node> {
    let mut s = snapshot(dest);
    s.remove(std::path::Path::new(""));
    s
}

/// The redeploys of a manifest with `exclude_from` (the rules file is then unchanged in
/// dest, left in place by the unpack): the same archive again, then one with a file
/// changed; each time dest equals what rsync makes of the same archive.
#[test]
fn exclude_from_redeploys_match_rsync() {
    let s = Scratch::new();
    let oracle = s.path().join("oracle");
    for d in [s.dest(), oracle.clone()] {
        make_tree(
            &d,
            &[("app.pid", "1"), ("cache/big", "cached"), ("old.txt", "x")],
        );
    }
    let list = "# rules\n- *.pid\n/cache/\n";
    let dirs = ["app/", "cache/"];
    let v1 = s.file(
        "v1.tar",
        &tar_with_dirs(
            &dirs,
            &[
                ("rules.list", list, 1_600_000_000),
                ("app/a.txt", "a", 1_600_000_000),
                ("app/b.txt", "b", 1_600_000_000),
                ("app/run.pid", "9", 1_600_000_000),
                ("cache/in-archive", "c", 1_600_000_000),
            ],
        ),
    );
    let v2 = s.file(
        "v2.tar",
        &tar_with_dirs(
            &dirs,
            &[
                ("rules.list", list, 1_600_000_000),
                ("app/a.txt", "a", 1_600_000_000),
                ("app/b.txt", "b, changed", 1_600_000_200),
                ("app/run.pid", "9", 1_600_000_000),
                ("cache/in-archive", "c", 1_600_000_000),
            ],
        ),
    );
    let m1 = s.manifest(
        "m1.yml",
        &manifest_for(&v1, &s.dest(), "exclude_from: rules.list\n"),
    );
    let m2 = s.manifest(
        "m2.yml",
        &manifest_for(&v2, &s.dest(), "exclude_from: ./rules.list\n"),
    );
    for (m, tar) in [(&m1, &v1), (&m1, &v1), (&m2, &v2), (&m2, &v2)] {
        let r = s.stretcher().arg(m).run();
        r.assert_ok();
        rsync_deploy(tar, "rules.list", &oracle);
        assert_eq!(below_root(&s.dest()), below_root(&oracle), "{}", r.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(s.dest().join("app/b.txt")).unwrap(),
        "b, changed"
    );
    assert!(s.dest().join("app.pid").exists() && s.dest().join("cache/big").exists());
    assert!(!s.dest().join("app/run.pid").exists() && !s.dest().join("old.txt").exists());
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

/// `-v` (the default) logs every path a first deploy creates, also inside the new
/// directories that are renamed into dest whole (SPEC §9); `--rsync-verbose ""` none.
#[test]
fn first_deploy_logs_every_created_path_and_keeps_the_rename() {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..5 {
        dirs.push(format!("d{i}/"));
        dirs.push(format!("d{i}/sub/"));
        for j in 0..5 {
            files.push(format!("d{i}/f{j}.txt"));
            files.push(format!("d{i}/sub/g{j}.txt"));
        }
    }
    assert_eq!(files.len(), 50);
    let dir_refs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    let file_refs: Vec<(&str, &str, u64)> = files
        .iter()
        .map(|f| (f.as_str(), "x", 1_600_000_000))
        .collect();
    let path_lines = |log: &str| {
        log.lines()
            .filter(|l| files.iter().any(|f| l.ends_with(&format!(" {f}"))))
            .count()
    };
    for verbose in ["-v", ""] {
        let s = Scratch::new();
        // dest exists (empty): d0/ ... d4/ are new directories moved in by rename.
        std::fs::create_dir_all(s.dest()).unwrap();
        let a = s.file("tree.tar", &tar_with_dirs(&dir_refs, &file_refs));
        // pre runs after the unpack: it records the inode of a staged directory.
        let extra = format!(
            "commands:\n  pre:\n    - stat -c %i {}/.stretcher-dest.*.staging/d3/sub > staged.ino\n",
            s.dest().parent().unwrap().display()
        );
        let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), &extra));
        let r = s
            .stretcher()
            .args(["--rsync-verbose", verbose])
            .arg(&m)
            .run();
        r.assert_ok();
        let want = if verbose.is_empty() { 0 } else { 50 };
        assert_eq!(path_lines(&r.stderr), want, "{verbose:?}:\n{}", r.stderr);
        if !verbose.is_empty() {
            for f in &files {
                r.assert_log(&format!(" {f}\n"));
            }
            r.assert_log(" d3/sub/\n");
        }
        r.assert_log(": 60 created, 0 updated, 0 deleted");
        let staged: u64 = std::fs::read_to_string(s.work().join("staged.ino"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            staged,
            ino(&s.dest().join("d3/sub")),
            "d3/sub was not renamed into dest"
        );
        redeploy_unchanged(&s, &m, |r| r.args(["--rsync-verbose", verbose]));
    }
}

/// A failed deploy logs its error once (SPEC §9), the `failure` hooks see it.
#[test]
fn a_failed_deploy_logs_its_error_once() {
    let s = Scratch::new();
    let m = s.manifest(
        "m.yml",
        &manifest_for(
            &archive("test.tar"),
            &s.dest(),
            "commands:\n  pre:\n    - exit 7\n  failure:\n    - cat > failure.log\n",
        ),
    );
    let r = s.stretcher().arg(&m).run();
    r.assert_fail();
    let error = "failed: exit 7 exit status 7";
    let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains(error)).collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].ends_with(&format!("Deploy manifest failed: {error}")),
        "{lines:?}"
    );
    assert!(std::fs::read_to_string(s.work().join("failure.log"))
        .unwrap()
        .contains(error));
    // no line of the log is repeated at all
    let mut seen = std::collections::HashSet::new();
    for l in r.stderr.lines() {
        let msg = l.get(20..).unwrap_or(l);
        assert!(seen.insert(msg), "repeated: {msg:?}\n{}", r.stderr);
    }
}

/// `dest_mode` on a first deploy, for every strategy and every state dest can be in
/// before it (absent, an empty directory, a populated one for rsync), with archives
/// GNU tar made with and without a `./` member (0750): dest gets `dest_mode` at once,
/// not the archive's mode or 0755 until the second deploy; the second deploy changes
/// nothing (rsync, release) or is refused (mv).
#[test]
fn dest_mode_holds_on_a_first_deploy_for_every_strategy() {
    for with_root in [true, false] {
        for strategy in ["rsync", "mv", "release"] {
            for before in ["absent", "empty", "populated"] {
                if before == "populated" && strategy != "rsync" {
                    continue; // mv and release refuse a populated dest
                }
                let s = Scratch::new();
                let tree = s.path().join("tree");
                make_tree(
                    &tree,
                    &[("bin/app", "#!/bin/sh\n"), ("etc/app.conf", "x=1\n")],
                );
                std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o750)).unwrap();
                let tar = s.path().join("a.tar.gz");
                let mut cmd = std::process::Command::new("tar");
                cmd.arg("-C").arg(&tree).arg("-czf").arg(&tar);
                if with_root {
                    cmd.arg(".");
                } else {
                    cmd.args(["bin", "etc"]);
                }
                assert!(cmd.status().unwrap().success());
                match before {
                    "empty" => std::fs::create_dir_all(s.dest()).unwrap(),
                    "populated" => make_tree(&s.dest(), &[("old", "old\n")]),
                    _ => {}
                }
                let extra = format!("dest_mode: 0711\nsync_strategy: {strategy}\n");
                let m = s.manifest("m.yml", &manifest_for(&tar, &s.dest(), &extra));
                let case = format!("{strategy}, dest {before}, ./ member: {with_root}");
                let run = s.stretcher().arg(&m).run();
                assert_eq!(run.code(), 0, "{case}: {}", run.stderr);
                let dest = std::fs::canonicalize(s.dest()).unwrap();
                assert_eq!(mode_of(&dest), 0o711, "{case}");
                assert!(dest.join("bin/app").is_file(), "{case}");
                assert!(!dest.join("old").exists(), "{case}");
                if strategy == "mv" {
                    redeploy_mv_refused(&s, &m);
                } else {
                    let run = s.stretcher().arg("--force").arg(&m).run();
                    assert_eq!(run.code(), 0, "{case}: {}", run.stderr);
                    let dest = std::fs::canonicalize(s.dest()).unwrap();
                    assert_eq!(mode_of(&dest), 0o711, "{case} (second deploy)");
                }
            }
        }
    }
}

/// A manifest that fails validation but names a usable dest records the failure under
/// dest's key: `stretcher status DEST` shows it and exits 1.
#[test]
fn an_invalid_manifest_is_recorded_under_its_dest() {
    let s = Scratch::new();
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), "sync_strategy: bogus\n"),
    );
    s.stretcher()
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("invalid strategy name: bogus");
    let status = stretcher()
        .args(["status", "--json", "--state-dir"])
        .arg(s.state_dir())
        .arg(s.dest())
        .run();
    assert_eq!(status.code(), 1, "{}{}", status.stdout, status.stderr);
    let records: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let rec = &records[0];
    assert_eq!(rec["dest"], s.dest().display().to_string());
    assert_eq!(rec["result"], "failure");
    assert_eq!(rec["failed_step"], "manifest");
    // A dest the manifest names but that is not usable is not a key: the record stays
    // under the manifest's.
    let m2 = s.manifest(
        "m2.yml",
        "src: file:///x.tar\nchecksum: abc\ndest: relative\n",
    );
    s.stretcher().arg(&m2).run().assert_fail();
    let all = stretcher()
        .args(["status", "--json", "--state-dir"])
        .arg(s.state_dir())
        .run();
    let all: serde_json::Value = serde_json::from_str(&all.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
}
