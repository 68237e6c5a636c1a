//! The redeploy that downloads nothing (SPEC §11) and `stretcher verify` (SPEC §12).
//!
//! Each test deploys v1, deletes the archive, and deploys the same manifest again:
//! that must succeed from the record and index alone. Then one change to dest (or
//! to the manifest) must make the next deploy take the full path — which fails,
//! since the archive is gone, proving that it tried — and `verify` must name it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::*;

/// A scratch with v1 deployed from `app.tgz` (GNU tar of a small tree with a
/// symlink and an excluded `cache/`), the archive deleted, and the manifest.
struct Setup {
    s: Scratch,
    manifest: PathBuf,
    archive: PathBuf,
}

const HOOKS: &str = "excludes:\n  - cache/\ncommands:\n  pre:\n    - echo PRE-RAN\n  post:\n    - echo POST-RAN\n  success:\n    - cat > /dev/null; echo SUCCESS-RAN\n";

fn build_archive(s: &Scratch) -> PathBuf {
    let tree = s.path().join("tree");
    make_tree(
        &tree,
        &[
            ("a.txt", "hello\n"),
            ("dir/b.txt", "bee\n"),
            ("dir/sub/c.txt", "sea\n"),
            ("cache/x.bin", "cached\n"),
        ],
    );
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    let a = s.path().join("app.tgz");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(&a)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    a
}

fn setup(extra: &str) -> Setup {
    let s = Scratch::new();
    let archive = build_archive(&s);
    let manifest = s.manifest("m.yml", &manifest_for(&archive, &s.dest(), extra));
    s.stretcher().arg(&manifest).run().assert_ok();
    let st = Setup {
        s,
        manifest,
        archive,
    };
    std::fs::remove_file(&st.archive).unwrap();
    st
}

impl Setup {
    fn dest(&self) -> PathBuf {
        self.s.dest()
    }

    /// A deploy of the manifest that must skip the download.
    #[track_caller]
    fn skips(&self) {
        let r = self.s.stretcher().arg(&self.manifest).run();
        r.assert_ok()
            .assert_log(&format!(
                "dest {} already holds {}",
                self.dest().display(),
                sha1_of_manifest(&self.manifest)
            ))
            .assert_log(": nothing to download")
            .assert_log("PRE-RAN")
            .assert_log("POST-RAN")
            .assert_log("SUCCESS-RAN");
        assert!(!r.stderr.contains("Loading URL"), "{}", r.stderr);
        let rec = stretcher::record::last(&self.s.state_dir(), &self.dest()).unwrap();
        assert!(rec.download_skipped);
        assert_eq!(rec.downloaded_bytes, Some(0));
        assert_eq!(rec.result, stretcher::record::Outcome::Success);
    }

    /// A deploy of `manifest` that must try the full path (and fail: no archive).
    #[track_caller]
    fn deploys_in_full(&self, manifest: &Path) {
        let r = self.s.stretcher().arg(manifest).run();
        r.assert_fail()
            .assert_log("is deployed in full")
            .assert_log("Loading URL");
        assert!(!r.stderr.contains("nothing to download"), "{}", r.stderr);
    }

    /// `stretcher verify DEST`: exit status and lines.
    fn verify(&self) -> (i32, Vec<String>) {
        let r = stretcher()
            .args(["verify", "--state-dir"])
            .arg(self.s.state_dir())
            .arg(self.dest())
            .run();
        let lines = r.stdout.lines().map(str::to_string).collect();
        (r.code(), lines)
    }
}

fn sha1_of_manifest(m: &Path) -> String {
    let text = std::fs::read_to_string(m).unwrap();
    let line = text.lines().find(|l| l.starts_with("checksum: ")).unwrap();
    line["checksum: ".len()..].to_string()
}

#[test]
fn redeploy_of_what_dest_holds_downloads_nothing() {
    let st = setup(HOOKS);
    let before = snapshot(&st.dest());
    st.skips();
    st.skips();
    assert_eq!(snapshot(&st.dest()), before);
    assert_eq!(st.verify(), (0, vec![]));
    // --dry-run reports the same decision and runs nothing
    let r = st.s.stretcher().arg("--dry-run").arg(&st.manifest).run();
    r.assert_ok().assert_log(": nothing to download");
    assert!(!r.stderr.contains("PRE-RAN"));
    assert!(r.stdout.contains("run pre: echo PRE-RAN"), "{}", r.stdout);
    // --force always deploys
    st.deploys_in_full_forced();
}

impl Setup {
    fn deploys_in_full_forced(&self) {
        let r = self.s.stretcher().arg("--force").arg(&self.manifest).run();
        r.assert_fail().assert_log("Loading URL");
        assert!(!r.stderr.contains("nothing to download"));
    }
}

#[test]
fn changes_that_are_not_changes() {
    let st = setup(HOOKS);
    // a byte changed, size and mtime restored: rsync would not see it either
    let a = st.dest().join("a.txt");
    let m = std::fs::symlink_metadata(&a).unwrap();
    std::fs::write(&a, "HELLO\n").unwrap();
    filetime::set_file_mtime(&a, filetime::FileTime::from_last_modification_time(&m)).unwrap();
    // an excluded directory the app made at run time (making it touched dest's own
    // mtime, which a deploy since would have set back: put it back), then files
    // added inside it
    std::fs::create_dir_all(st.dest().join("cache")).unwrap();
    restore_root_mtime(&st);
    std::fs::create_dir_all(st.dest().join("cache/deep")).unwrap();
    std::fs::write(st.dest().join("cache/deep/new"), "n").unwrap();
    st.skips();
    assert_eq!(st.verify(), (0, vec![]));
}

/// Sets dest's mtime back to what the index has (an edit of dest's own entries
/// changes it; the tests that mean something else put it back).
fn restore_root_mtime(st: &Setup) {
    let key = stretcher::record::key_for_dest(&st.dest());
    let (_, entries) = stretcher::index::read(&st.s.state_dir(), &key)
        .unwrap()
        .unwrap();
    let root = &entries[0];
    assert!(root.path.is_empty());
    filetime::set_file_mtime(
        st.dest(),
        filetime::FileTime::from_unix_time(root.meta.mtime, root.meta.mtime_nsec),
    )
    .unwrap();
}

/// One change to dest: the next deploy takes the full path, verify names it.
fn change_is_seen(change: impl FnOnce(&Path), want: &[&str]) {
    let st = setup(HOOKS);
    st.skips();
    change(&st.dest());
    let (code, lines) = st.verify();
    assert_eq!(
        (code, lines.clone()),
        (1, want.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    );
    // --json parses and says the same
    let r = stretcher()
        .args(["verify", "--json", "--state-dir"])
        .arg(st.s.state_dir())
        .arg(st.dest())
        .run();
    assert_eq!(r.code(), 1);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["dest"], Value::from(st.dest().display().to_string()));
    assert_eq!(v["checksum"], Value::from(sha1_of_manifest(&st.manifest)));
    assert!(v["deployed"].as_str().unwrap().ends_with('Z'));
    let drift = v["drift"].as_array().unwrap();
    assert_eq!(drift.len(), want.len());
    for (d, line) in drift.iter().zip(&lines) {
        let kind = d["kind"].as_str().unwrap();
        let path = d["path"].as_str().unwrap();
        assert!(line.starts_with(&format!("{kind} {path}")), "{d} vs {line}");
        for w in d["what"].as_array().unwrap() {
            assert!(line.contains(w.as_str().unwrap()), "{d} vs {line}");
        }
    }
    st.deploys_in_full(&st.manifest);
}

#[test]
fn touch_is_a_change() {
    change_is_seen(
        |d| {
            filetime::set_file_mtime(d.join("a.txt"), filetime::FileTime::now()).unwrap();
        },
        &["changed a.txt (mtime)"],
    );
}

#[test]
fn chmod_is_a_change() {
    change_is_seen(
        |d| {
            std::fs::set_permissions(d.join("dir/b.txt"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        },
        &["changed dir/b.txt (mode)"],
    );
}

#[test]
fn chown_is_a_change() {
    // needs root (CI runs the tests as root)
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: chown cannot be tested");
        return;
    }
    change_is_seen(
        |d| {
            std::os::unix::fs::lchown(d.join("dir/sub/c.txt"), Some(1234), Some(1234)).unwrap();
        },
        &["changed dir/sub/c.txt (owner)"],
    );
}

#[test]
fn added_file_is_a_change() {
    change_is_seen(
        |d| {
            std::fs::write(d.join("dir/new.txt"), "new").unwrap();
        },
        &["changed dir/ (mtime)", "added dir/new.txt"],
    );
}

#[test]
fn removed_file_is_a_change() {
    change_is_seen(
        |d| {
            std::fs::remove_file(d.join("dir/sub/c.txt")).unwrap();
        },
        &["changed dir/sub/ (mtime)", "deleted dir/sub/c.txt"],
    );
}

#[test]
fn replaced_symlink_target_is_a_change() {
    change_is_seen(
        |d| {
            let m = std::fs::symlink_metadata(d.join("link")).unwrap();
            let root = std::fs::symlink_metadata(d).unwrap();
            std::fs::remove_file(d.join("link")).unwrap();
            std::os::unix::fs::symlink("dir/b.txt", d.join("link")).unwrap();
            // same mtimes as before, so that only the target differs
            let t = filetime::FileTime::from_last_modification_time(&m);
            filetime::set_symlink_file_times(d.join("link"), t, t).unwrap();
            let t = filetime::FileTime::from_last_modification_time(&root);
            filetime::set_file_mtime(d, t).unwrap();
        },
        &["changed link (target)"],
    );
}

#[test]
fn type_change_is_a_change() {
    change_is_seen(
        |d| {
            std::fs::remove_file(d.join("a.txt")).unwrap();
            std::fs::create_dir(d.join("a.txt")).unwrap();
        },
        &["changed ./ (mtime)", "changed a.txt/ (type)"],
    );
}

#[test]
fn changed_manifest_settings_deploy_in_full() {
    let st = setup(HOOKS);
    st.skips();
    let a = st.archive.clone();
    let cases = [
        (
            "excludes",
            HOOKS.replace("- cache/", "- cache/\n  - '*.log'"),
        ),
        ("dest_mode", format!("dest_mode: 0700\n{HOOKS}")),
    ];
    for (what, extra) in cases {
        let m = st.s.manifest(
            &format!("{what}.yml"),
            &manifest_for_missing(&a, &st.dest(), &extra, None),
        );
        st.deploys_in_full(&m);
    }
    let m = st.s.manifest(
        "checksum.yml",
        &manifest_for_missing(&a, &st.dest(), HOOKS, Some(&"1".repeat(40))),
    );
    st.deploys_in_full(&m);
    // the last record is a failure now: the original manifest deploys in full too
    st.deploys_in_full(&st.manifest);
}

/// `manifest_for` for an archive that no longer exists: the checksum of the
/// original manifest (or `sum`).
fn manifest_for_missing(a: &Path, dest: &Path, extra: &str, sum: Option<&str>) -> String {
    let m = dest.parent().unwrap().parent().unwrap().join("m.yml");
    let original = sha1_of_manifest(&m);
    format!(
        "src: file://{}\nchecksum: {}\ndest: {}\n{}",
        a.display(),
        sum.unwrap_or(&original),
        dest.display(),
        extra
    )
}

#[test]
fn corrupt_index_or_record_gives_a_warning_and_a_full_deploy() {
    let s = Scratch::new();
    let a = build_archive(&s);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), HOOKS));
    s.stretcher().arg(&m).run().assert_ok();
    let key = stretcher::record::key_for_dest(&s.dest());
    let index = stretcher::index::index_path(&s.state_dir(), &key);
    let good = snapshot(&s.dest());

    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() / 2]).unwrap();
    s.stretcher()
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("warning: ")
        .assert_log("deploy index is corrupt")
        .assert_log("Loading URL");
    assert_eq!(snapshot(&s.dest()), good);
    // the full deploy wrote a good index again
    s.stretcher()
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("nothing to download");

    let record = stretcher::record::record_path(&s.state_dir(), &key);
    std::fs::write(&record, "{\"schema\": 1, \"resu").unwrap();
    s.stretcher()
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("warning: deploy record")
        .assert_log("is corrupt")
        .assert_log("Loading URL");
    assert_eq!(snapshot(&s.dest()), good);
    s.stretcher()
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("nothing to download");
}

#[test]
fn pre_that_changes_dest_gets_the_full_deploy() {
    let s = Scratch::new();
    let a = build_archive(&s);
    let d = s.dest().display().to_string();
    let extra = format!(
        "excludes: [cache/]\ncommands:\n  pre:\n    - echo PRE-RAN\n    - mkdir -p {d} && echo changed > {d}/a.txt\n"
    );
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), &extra));
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(
        std::fs::read_to_string(s.dest().join("a.txt")).unwrap(),
        "hello\n"
    );
    let r = s.stretcher().arg(&m).run();
    r.assert_ok()
        .assert_log("nothing to download")
        .assert_log("a pre command changed")
        .assert_log("Loading URL");
    assert_eq!(
        std::fs::read_to_string(s.dest().join("a.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        r.stderr.matches("Invoking command: echo PRE-RAN").count(),
        1,
        "{}",
        r.stderr
    );
}

#[test]
fn verify_usage_and_no_record() {
    let s = Scratch::new();
    let r = stretcher()
        .args(["verify", "--state-dir"])
        .arg(s.state_dir())
        .arg(s.dest())
        .run();
    assert_eq!(r.code(), 2, "{}", r.stderr);
    assert!(r.stderr.contains("no successful deploy"), "{}", r.stderr);
    let r = stretcher().args(["verify", "--help"]).run();
    assert_eq!(r.code(), 0);
    assert!(r.stdout.contains("Usage: stretcher verify DEST"));
    let r = stretcher().args(["verify"]).run();
    assert_eq!(r.code(), 2);
    let r = stretcher().args(["verify", "/a", "/b"]).run();
    assert_eq!(r.code(), 2);
    let r = stretcher().args(["verify", "--bogus", "/a"]).run();
    assert_eq!(r.code(), 2);
    let r = stretcher().arg("--help").run();
    assert!(r.stdout.contains("verify DEST"), "{}", r.stdout);
    // a manifest file named verify is ./verify
    std::fs::write(
        s.work().join("verify"),
        "commands:\n  pre:\n    - echo FROM-FILE\n",
    )
    .unwrap();
    s.stretcher()
        .arg("./verify")
        .run()
        .assert_ok()
        .assert_log("FROM-FILE");
}

#[test]
fn verify_is_read_only() {
    let st = setup(HOOKS);
    std::fs::write(st.dest().join("dir/new.txt"), "new").unwrap();
    let listing = |p: &Path| {
        let mut v: Vec<_> = walkdir::WalkDir::new(p)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let m = e.path().symlink_metadata().unwrap();
                (
                    e.path().to_path_buf(),
                    m.len(),
                    filetime::FileTime::from_last_modification_time(&m),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (d0, s0) = (listing(&st.dest()), listing(&st.s.state_dir()));
    assert_eq!(st.verify().0, 1);
    assert_eq!((listing(&st.dest()), listing(&st.s.state_dir())), (d0, s0));
}

/// The exclude_from rules are kept in the index: the redeploy check and verify use
/// them without the archive (`foo/baz` matches `baz` in test.tar's exclude.txt).
#[test]
fn exclude_from_rules_come_from_the_index() {
    let s = Scratch::new();
    let a = s.file("test.tar", &std::fs::read(archive("test.tar")).unwrap());
    let m = s.manifest(
        "m.yml",
        &manifest_for(&a, &s.dest(), "exclude_from: exclude.txt\n"),
    );
    s.stretcher().arg(&m).run().assert_ok();
    assert!(!s.dest().join("foo/baz").exists());
    std::fs::remove_file(&a).unwrap();
    // a file the rules exclude appears (foo/'s own mtime, which it changes, is put
    // back: that is a change of a directory that is not excluded)
    let foo = s.dest().join("foo");
    let t = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&foo).unwrap());
    std::fs::write(foo.join("baz"), "local").unwrap();
    filetime::set_file_mtime(&foo, t).unwrap();
    s.stretcher()
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("nothing to download");
    let r = stretcher()
        .args(["verify", "--state-dir"])
        .arg(s.state_dir())
        .arg(s.dest())
        .run();
    assert_eq!((r.code(), r.stdout.as_str()), (0, ""));
    // a file they do not exclude is drift
    std::fs::write(foo.join("other"), "x").unwrap();
    filetime::set_file_mtime(&foo, t).unwrap();
    let r = stretcher()
        .args(["verify", "--state-dir"])
        .arg(s.state_dir())
        .arg(s.dest())
        .run();
    assert_eq!((r.code(), r.stdout.as_str()), (1, "added foo/other\n"));
}
