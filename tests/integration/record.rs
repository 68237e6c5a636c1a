//! The deploy record (SPEC §11): golden JSON for each way a run ends, the history
//! cap, and that a record never holds a secret.
//!
//! Golden files live in fixtures/golden/record-*.json, with the run's varying
//! parts normalised (scratch path, host, times, version, hook durations, and the
//! manifest digest once it is checked). `UPDATE_GOLDEN=1` rewrites them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use sha2::Digest;

use crate::util::*;

/// The record file of `key` in the scratch's state directory.
fn record_file(s: &Scratch, key: &str) -> PathBuf {
    stretcher::record::record_path(&s.state_dir(), key)
}

fn dest_key(s: &Scratch) -> String {
    stretcher::record::key_for_dest(&s.dest())
}

/// The record as JSON with the varying parts replaced; checks them on the way.
fn normalized(s: &Scratch, key: &str, manifest: &Path) -> Value {
    let text = std::fs::read_to_string(record_file(s, key)).unwrap();
    let scratch = s.path().display().to_string();
    let mut v: Value = serde_json::from_str(&text.replace(&scratch, "SCRATCH")).unwrap();
    let fixed = |v: &mut Value, k: &str, with: Value| {
        assert!(v.get(k).is_some(), "record lacks {k}: {text}");
        v[k] = with;
    };
    for k in ["started", "finished"] {
        let t = v[k].as_str().unwrap().to_string();
        assert!(
            chrono::DateTime::parse_from_rfc3339(&t).is_ok() && t.ends_with('Z') && t.len() == 24,
            "{k} {t:?} is not RFC 3339 UTC with milliseconds"
        );
        fixed(&mut v, k, "TIME".into());
    }
    assert!(v["duration_s"].as_f64().unwrap() >= 0.0);
    fixed(&mut v, "duration_s", 0.into());
    fixed(&mut v, "host", "HOST".into());
    fixed(&mut v, "stretcher_version", "VERSION".into());
    if !v["manifest_sha256"].is_null() {
        let want = hex::encode(sha2::Sha256::digest(std::fs::read(manifest).unwrap()));
        assert_eq!(v["manifest_sha256"], Value::from(want));
        fixed(&mut v, "manifest_sha256", "SHA256".into());
    }
    if let Some(hooks) = v["hooks"].as_array_mut() {
        for h in hooks {
            assert!(h["seconds"].as_f64().unwrap() >= 0.0);
            h["seconds"] = 0.into();
        }
    }
    v
}

/// Compares with (or, under UPDATE_GOLDEN, writes) fixtures/golden/record-NAME.json.
#[track_caller]
fn golden(name: &str, got: &Value) {
    let path = fixtures()
        .join("golden")
        .join(format!("record-{name}.json"));
    let mut text = serde_json::to_string_pretty(got).unwrap();
    text.push('\n');
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    let want: Value = serde_json::from_str(&want).unwrap();
    assert_eq!(
        *got,
        want,
        "record differs from {}:\n{text}",
        path.display()
    );
}

/// A test archive copied into the scratch (so its path normalises to SCRATCH).
fn test_tar(s: &Scratch) -> PathBuf {
    s.file("test.tar", &std::fs::read(archive("test.tar")).unwrap())
}

const HOOKS: &str = "commands:\n  pre:\n    - echo pre\n  post:\n    - echo post\n  success:\n    - cat > /dev/null\n  failure:\n    - cat > /dev/null\n";

#[test]
fn success_record_and_its_redeploy() {
    let s = Scratch::new();
    let a = test_tar(&s);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), HOOKS));
    s.stretcher().arg(&m).run().assert_ok();
    golden("success", &normalized(&s, &dest_key(&s), &m));
    // the same again: nothing downloaded, the hooks run
    s.stretcher().arg(&m).run().assert_ok();
    golden("redeploy", &normalized(&s, &dest_key(&s), &m));
}

#[test]
fn failing_pre_record() {
    let s = Scratch::new();
    let a = test_tar(&s);
    let extra =
        "commands:\n  pre:\n    - echo one\n    - exit 3\n  failure:\n    - cat > /dev/null\n";
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), extra));
    s.stretcher().arg(&m).run().assert_fail();
    golden("failing-pre", &normalized(&s, &dest_key(&s), &m));
}

#[test]
fn checksum_mismatch_record() {
    let s = Scratch::new();
    let a = test_tar(&s);
    let text = format!(
        "src: file://{}\nchecksum: {}\ndest: {}\n",
        a.display(),
        "0".repeat(40),
        s.dest().display()
    );
    let m = s.manifest("m.yml", &text);
    s.stretcher()
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("checksum mismatch");
    golden("checksum-mismatch", &normalized(&s, &dest_key(&s), &m));
}

#[test]
fn allow_list_refusal_records() {
    let s = Scratch::new();
    let a = test_tar(&s);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), HOOKS));
    // src refused: the manifest was read, so the record is dest's
    let allow = format!("--allow-url=file://{}/m", s.path().display());
    s.stretcher().arg(&allow).arg(&m).run().assert_fail();
    golden("refused-src", &normalized(&s, &dest_key(&s), &m));
    // the manifest itself refused: nothing of it is known, keyed by its URL
    let s2 = Scratch::new();
    let m2 = s2.manifest("m.yml", &manifest_for(&a, &s2.dest(), HOOKS));
    s2.stretcher()
        .arg("--allow-url=https://elsewhere/")
        .arg(&m2)
        .run()
        .assert_fail();
    let url = format!("file://{}", m2.display());
    let key = stretcher::record::key_for_manifest(&url);
    golden("refused-manifest", &normalized(&s2, &key, &m2));
    assert!(!record_file(&s2, &dest_key(&s2)).exists());
}

#[test]
fn sigterm_during_download_record() {
    let s = Scratch::new();
    let a = test_tar(&s);
    let extra = "commands:\n  failure:\n    - cat > /dev/null\n";
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), extra));
    // 10 KiB at 2,000 bytes/s: five seconds; stopped once the staging dir exists.
    let running = s
        .stretcher()
        .arg("--max-bandwidth=2000")
        .arg(&m)
        .limit(Duration::from_secs(60))
        .spawn();
    let t = Instant::now();
    while !s.leftovers().iter().any(|n| n.ends_with(".staging")) {
        assert!(t.elapsed() < Duration::from_secs(20), "no staging dir");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    running.signal(Signal::SIGTERM);
    running.wait().assert_fail();
    let mut v = normalized(&s, &dest_key(&s), &m);
    let n = v["downloaded_bytes"].as_u64().unwrap();
    assert!(n > 0 && n < 10240, "downloaded_bytes {n}");
    v["downloaded_bytes"] = "N".into();
    golden("sigterm-download", &v);
}

#[test]
fn commands_only_record() {
    let s = Scratch::new();
    let m = s.manifest(
        "m.yml",
        "commands:\n  pre:\n    - echo pre\n  post:\n    - echo post\n",
    );
    s.stretcher().arg(&m).run().assert_ok();
    let url = format!("file://{}", m.display());
    let key = stretcher::record::key_for_commands(&url);
    golden("commands-only", &normalized(&s, &key, &m));
}

#[test]
fn history_keeps_the_last_fifty() {
    let s = Scratch::new();
    let m = s.manifest("m.yml", "commands:\n  pre:\n    - echo $$\n");
    let url = format!("file://{}", m.display());
    let key = stretcher::record::key_for_commands(&url);
    // 49 runs written by the library (fast), then 3 real runs on top.
    let run = || s.stretcher().arg(&m).run().assert_ok().stderr.clone();
    run();
    let first = stretcher::record::last_by_key(&s.state_dir(), &key).unwrap();
    for i in 0..49 {
        let mut r = first.clone();
        r.started = format!("old-{i:02}");
        stretcher::record::write(&s.state_dir(), &key, &r).unwrap();
    }
    for _ in 0..3 {
        run();
    }
    let hist =
        std::fs::read_to_string(stretcher::record::history_path(&s.state_dir(), &key)).unwrap();
    let lines: Vec<Value> = hist
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    // oldest first: the first real run and two library ones fell off
    assert_eq!(lines[0]["started"], "old-02");
    assert_eq!(lines[46]["started"], "old-48");
    let last: Value =
        serde_json::from_str(&std::fs::read_to_string(record_file(&s, &key)).unwrap()).unwrap();
    assert_eq!(lines[49], last);
}

#[test]
fn unwritable_state_dir_is_a_warning() {
    let s = Scratch::new();
    let a = test_tar(&s);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), ""));
    // a file where the deploys directory should be
    std::fs::create_dir_all(s.state_dir()).unwrap();
    std::fs::write(s.state_dir().join("deploys"), "not a dir").unwrap();
    s.stretcher()
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("warning: cannot write the deploy record");
    assert_eq!(
        std::fs::read_to_string(s.dest().join("bar")).unwrap(),
        "bar\n"
    );
    // and a failing deploy stays a failure
    let bad = s.manifest(
        "bad.yml",
        &manifest_for(&a, &s.dest(), "commands:\n  pre: [\"false\"]\n"),
    );
    s.stretcher()
        .arg(&bad)
        .run()
        .assert_fail()
        .assert_log("warning: cannot write the deploy record");
}
