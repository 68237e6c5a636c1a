//! Running under a fleet's event systems (SPEC §2, §3, §10): `consul watch` JSON
//! lists and their replays (start, `consul reload`, two handlers at once), serf
//! LTimes, the replay state file, the per-dest lock, and `--allow-url`.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::util::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// One element of the list `consul watch -type event` writes, as the docs show it.
fn consul_event(id: &str, ltime: u64, url: &str) -> String {
    format!(
        r#"{{"ID": "{id}", "Name": "deploy", "Payload": "{}", "NodeFilter": "",
  "ServiceFilter": "", "TagFilter": "", "Version": 1, "LTime": {ltime}}}"#,
        b64(url)
    )
}

fn consul_list(events: &[&str]) -> String {
    format!("[\n{}\n]\n", events.join(",\n"))
}

/// A commands-only manifest whose `pre` appends a line to `<name>.count` in the
/// cwd of the run; returns its file:// URL.
fn counting_manifest(s: &Scratch, name: &str) -> String {
    let m = s.manifest(
        &format!("{name}.yml"),
        &format!("commands:\n  pre:\n    - echo ran >> {name}.count\n"),
    );
    format!("file://{}", m.display())
}

/// How many times the manifest `name` ran.
fn runs(s: &Scratch, name: &str) -> usize {
    std::fs::read_to_string(s.work().join(format!("{name}.count")))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn consul_run(s: &Scratch, index: &str, list: &str) -> Run {
    s.stretcher()
        .env("CONSUL_INDEX", index)
        .stdin(list.to_string())
        .run()
}

#[test]
fn consul_replays_are_skipped() {
    let s = Scratch::new();
    let (a, b) = (counting_manifest(&s, "a"), counting_manifest(&s, "b"));
    let e1 = consul_event("1d6731a8-833c-1aff-94e5-aa5e5a77da9f", 2, &a);
    let e2 = consul_event("b5ef1588-1bcd-d93f-5d9c-67cb6e8c4587", 3, &b);

    // the first event runs
    consul_run(&s, "10", &consul_list(&[&e1])).assert_ok();
    assert_eq!((runs(&s, "a"), runs(&s, "b")), (1, 0));
    // the watch hands over the same list again (agent restart of the watch)
    consul_run(&s, "10", &consul_list(&[&e1]))
        .assert_ok()
        .assert_log("already handled")
        .assert_log("ID 1d6731a8-833c-1aff-94e5-aa5e5a77da9f was handled already");
    assert_eq!(runs(&s, "a"), 1);
    // a new event: the last of the list runs, the older one is not re-run
    consul_run(&s, "11", &consul_list(&[&e1, &e2])).assert_ok();
    assert_eq!((runs(&s, "a"), runs(&s, "b")), (1, 1));
    // `consul reload`: the new watch plan re-runs the handler with the same list
    // (and a new index) — hashicorp/consul#571 — and nothing runs again
    for index in ["11", "12", "1"] {
        let r = consul_run(&s, index, &consul_list(&[&e1, &e2]));
        r.assert_ok().assert_log("Skipping consul event \"deploy\"");
        assert!(!r.stderr.contains("Loading manifest"), "{}", r.stderr);
    }
    assert_eq!((runs(&s, "a"), runs(&s, "b")), (1, 1));
    // an event with a new ID but an LTime below the last handled one is old; at the
    // same LTime, a smaller payload than the handled one's is superseded (SPEC §10)
    let stale = consul_event("00000000-0000-0000-0000-000000000000", 2, &b);
    consul_run(&s, "13", &consul_list(&[&stale]))
        .assert_ok()
        .assert_log("LTime 2 is not newer than the last handled LTime 3");
    let smaller = consul_event("00000000-0000-0000-0000-000000000000", 3, &a);
    consul_run(&s, "13", &consul_list(&[&smaller]))
        .assert_ok()
        .assert_log("superseded: an event of the same LTime 3 with a greater payload was handled");
    assert_eq!((runs(&s, "a"), runs(&s, "b")), (1, 1));
    // the state file names the last handled event
    let state = std::fs::read_to_string(s.state_dir().join("event-deploy.json")).unwrap();
    assert!(
        state.contains("b5ef1588-1bcd-d93f-5d9c-67cb6e8c4587") && state.contains("\"ltime\":3"),
        "{state}"
    );
}

#[test]
fn consul_null_payload_and_empty_list_run_nothing() {
    let s = Scratch::new();
    let null = r#"[{"ID":"x","Name":"deploy","Payload":null,"LTime":1}]"#;
    // under consul watch every failure exits 0 so that the watch keeps running
    consul_run(&s, "3", null)
        .assert_ok()
        .assert_log("null payload")
        .assert_log("exiting 0 so that consul watch keeps running");
    s.stretcher().stdin(null).run().assert_fail();
    consul_run(&s, "1", "[]\n")
        .assert_ok()
        .assert_log("no consul events");
    s.stretcher().stdin("[]").run().assert_fail();
    // neither left replay state behind, so a real event afterwards runs
    let a = counting_manifest(&s, "a");
    consul_run(&s, "4", &consul_list(&[&consul_event("y", 1, &a)])).assert_ok();
    assert_eq!(runs(&s, "a"), 1);
}

#[test]
fn a_failed_deploy_is_handled_too() {
    let s = Scratch::new();
    let m = s.manifest(
        "f.yml",
        "commands:\n  pre:\n    - echo ran >> f.count\n    - exit 3\n  failure:\n    - echo failed >> failure.count\n",
    );
    let list = consul_list(&[&consul_event("f1", 7, &format!("file://{}", m.display()))]);
    consul_run(&s, "5", &list)
        .assert_ok()
        .assert_log("failed: exit 3 exit status 3");
    consul_run(&s, "6", &list)
        .assert_ok()
        .assert_log("already handled");
    assert_eq!((runs(&s, "f"), runs(&s, "failure")), (1, 1));
    // a manifest that cannot be fetched also counts (a retry is a new event)
    let missing = s.path().join("missing.yml");
    let list = consul_list(&[&consul_event(
        "f2",
        8,
        &format!("file://{}", missing.display()),
    )]);
    consul_run(&s, "7", &list)
        .assert_ok()
        .assert_log("missing.yml");
    std::fs::write(
        &missing,
        "commands:\n  pre:\n    - echo ran >> late.count\n",
    )
    .unwrap();
    consul_run(&s, "7", &list)
        .assert_ok()
        .assert_log("already handled");
    assert_eq!(runs(&s, "late"), 0);
}

#[test]
fn two_handlers_of_one_event_run_it_once() {
    // `consul reload` while the handler still runs: the new watch plan starts a
    // second handler with the same list. It waits for the first, then skips.
    let s = Scratch::new();
    let m = s.manifest(
        "slow.yml",
        "commands:\n  pre:\n    - echo ran >> slow.count\n    - sleep 1\n",
    );
    let list = consul_list(&[&consul_event("s1", 4, &format!("file://{}", m.display()))]);
    let first = s
        .stretcher()
        .env("CONSUL_INDEX", "20")
        .stdin(list.clone())
        .spawn();
    wait_for(&s.work().join("slow.count"), Duration::from_secs(20));
    let second = consul_run(&s, "21", &list);
    let first = first.wait();
    first.assert_ok();
    second
        .assert_ok()
        .assert_log("another stretcher is handling event \"deploy\"")
        .assert_log("already handled");
    assert_eq!(runs(&s, "slow"), 1);
}

#[test]
fn serf_ltimes() {
    let s = Scratch::new();
    let a = counting_manifest(&s, "a");
    let serf = |ltime: &str| {
        s.stretcher()
            .env("SERF_EVENT", "user")
            .env("SERF_USER_EVENT", "deploy")
            .env("SERF_USER_LTIME", ltime)
            .stdin(a.clone())
            .run()
    };
    // 0 is serf's first LTime: it runs, and a redelivery of it is skipped as superseded
    serf("0").assert_ok();
    serf("0").assert_ok().assert_log("superseded");
    serf("5").assert_ok();
    serf("5").assert_ok().assert_log("superseded");
    serf("4").assert_ok().assert_log("not newer");
    serf("6").assert_ok();
    assert_eq!(runs(&s, "a"), 3);
    // another event name has its own memory
    s.stretcher()
        .env("SERF_EVENT", "user")
        .env("SERF_USER_EVENT", "deploy-web")
        .env("SERF_USER_LTIME", "1")
        .stdin(a.clone())
        .run()
        .assert_ok();
    assert_eq!(runs(&s, "a"), 4);
}

#[test]
fn lines_and_positionals_are_never_skipped() {
    let s = Scratch::new();
    let a = counting_manifest(&s, "a");
    for _ in 0..2 {
        s.stretcher().stdin(format!("{a}\n")).run().assert_ok();
        s.stretcher().arg(&a).run().assert_ok();
        // a positional wins over event variables and is not checked for replays
        s.stretcher()
            .env("SERF_EVENT", "user")
            .env("SERF_USER_EVENT", "deploy")
            .env("SERF_USER_LTIME", "1")
            .arg(&a)
            .run()
            .assert_ok();
    }
    assert_eq!(runs(&s, "a"), 6);
    // Only deploy records (SPEC §11): no replay state is kept for these runs.
    let names: Vec<String> = std::fs::read_dir(s.state_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        names.iter().all(|n| n == "deploys"),
        "no replay state is kept for these runs: {names:?}"
    );
}

#[test]
fn corrupt_state_is_reported_and_treated_as_empty() {
    let s = Scratch::new();
    let a = counting_manifest(&s, "a");
    std::fs::create_dir_all(s.state_dir()).unwrap();
    let file = s.state_dir().join("event-deploy.json");
    let list = consul_list(&[&consul_event("c1", 9, &a)]);
    for junk in [
        &b"{\"name\": \"deploy\", \"ltime\": "[..],
        b"\0\0\0\xff",
        b"[]",
    ] {
        std::fs::write(&file, junk).unwrap();
        consul_run(&s, "1", &list)
            .assert_ok()
            .assert_log("is corrupt")
            .assert_log("treating it as empty");
    }
    assert_eq!(runs(&s, "a"), 3);
    // the run rewrote it: the next delivery is a replay
    consul_run(&s, "1", &list)
        .assert_ok()
        .assert_log("already handled");
    assert_eq!(runs(&s, "a"), 3);
}

#[test]
fn an_unusable_state_dir_fails_the_run() {
    let s = Scratch::new();
    let a = counting_manifest(&s, "a");
    let not_a_dir = s.file("plain-file", b"x");
    let r = stretcher()
        .cwd(&s.work())
        .args(["--state-dir".as_ref(), not_a_dir.as_os_str()])
        .env("SERF_EVENT", "user")
        .env("SERF_USER_LTIME", "1")
        .stdin(a)
        .run();
    r.assert_fail().assert_log("plain-file");
    assert_eq!(runs(&s, "a"), 0);
}

/// Waits (bounded) until `path` exists.
fn wait_for(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_deploys_on_one_dest_take_turns() {
    let s = Scratch::new();
    let dest = s.dest();
    let one = s.file(
        "one.tar",
        &raw_tar(&[
            Raw::File(b"common.txt", b"one\n"),
            Raw::File(b"only-one.txt", b"1\n"),
        ]),
    );
    let two = s.file(
        "two.tar",
        &raw_tar(&[
            Raw::Dir(b"sub/"),
            Raw::File(b"sub/only-two.txt", b"2\n"),
            // another size: raw_tar gives every entry the same mtime, and rsync's
            // quick check would keep a same-size file
            Raw::File(b"common.txt", b"two two\n"),
        ]),
    );
    // `pre` holds each deploy inside the lock for a while, so the two overlap
    let hooks = "commands:\n  pre:\n    - sleep 1\n";
    let m1 = s.manifest("one.yml", &manifest_for(&one, &dest, hooks));
    let m2 = s.manifest("two.yml", &manifest_for(&two, &dest, hooks));
    let r1 = s.stretcher().arg(&m1).spawn();
    let r2 = s.stretcher().arg(&m2).spawn();
    let (r1, r2) = (r1.wait(), r2.wait());
    r1.assert_ok();
    r2.assert_ok();
    let waited = |r: &Run| r.stderr.contains("another stretcher is deploying to");
    assert!(
        waited(&r1) ^ waited(&r2),
        "exactly one must wait:\n--- one:\n{}\n--- two:\n{}",
        r1.stderr,
        r2.stderr
    );
    // the one that waited finished last: dest mirrors exactly its archive
    let (last, tree) = if waited(&r1) {
        (&r1, vec!["common.txt", "only-one.txt"])
    } else {
        (&r2, vec!["common.txt", "sub", "sub/only-two.txt"])
    };
    last.assert_log("got the lock");
    let got: Vec<String> = snapshot(&dest)
        .keys()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(got, tree);
    let common = std::fs::read_to_string(dest.join("common.txt")).unwrap();
    assert_eq!(common, if waited(&r1) { "one\n" } else { "two two\n" });
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

/// A manifest in `dir` deploying `archive`, whose hooks leave markers; returns its path.
fn marked_manifest(s: &Scratch, dir: &str, archive_url: &str, sha1: &str) -> std::path::PathBuf {
    let d = s.path().join(dir);
    std::fs::create_dir_all(&d).unwrap();
    let m = d.join("m.yml");
    std::fs::write(
        &m,
        format!(
            "src: {archive_url}\nchecksum: {sha1}\ndest: {}\ncommands:\n  pre:\n    - touch pre.ran\n  failure:\n    - touch failure.ran\n",
            s.dest().display()
        ),
    )
    .unwrap();
    m
}

#[test]
fn allow_url_refuses_before_anything_is_fetched_or_run() {
    let s = Scratch::new();
    let tar = raw_tar(&[Raw::File(b"a.txt", b"a\n")]);
    let sha1 = sha1_bytes(&tar);
    for dir in ["allowed", "allowed-evil", "elsewhere"] {
        std::fs::create_dir_all(s.path().join(dir)).unwrap();
        std::fs::write(s.path().join(dir).join("app.tar"), &tar).unwrap();
    }
    let root = s.path().display().to_string();
    let allow = format!("file://{root}/allowed/");
    let nothing_ran = |r: &Run| {
        assert!(!s.work().join("pre.ran").exists(), "{}", r.stderr);
        assert!(!s.work().join("failure.ran").exists(), "{}", r.stderr);
        assert!(!s.dest().exists(), "{}", r.stderr);
        assert_eq!(s.leftovers(), Vec::<String>::new());
    };

    // a manifest outside the prefix (also a sibling that shares its name start,
    // and a `..` walk out of it) is not even read
    let evil = marked_manifest(&s, "allowed-evil", "app.tar", &sha1);
    let outside = marked_manifest(&s, "elsewhere", "app.tar", &sha1);
    for url in [
        format!("file://{}", evil.display()),
        format!("file://{}", outside.display()),
        format!("file://{root}/allowed/../elsewhere/m.yml"),
    ] {
        let r = s.stretcher().args(["--allow-url", &allow]).arg(&url).run();
        r.assert_fail()
            .assert_log("manifest URL refused by --allow-url");
        assert!(!r.stderr.contains("Loading manifest"), "{}", r.stderr);
        nothing_ran(&r);
    }

    // an allowed manifest whose src is outside: refused before the download and
    // before any hook (failure hooks included)
    for (dir, src) in [
        ("a1", format!("file://{root}/elsewhere/app.tar")),
        ("a2", "../../elsewhere/app.tar".to_string()),
        ("a3", format!("file://{root}/allowed-evil/app.tar")),
    ] {
        let m = marked_manifest(&s, &format!("allowed/{dir}"), &src, &sha1);
        let r = s
            .stretcher()
            .args(["-allow-url", &allow])
            .arg(format!("file://{}", m.display()))
            .run();
        r.assert_fail().assert_log("src URL refused by --allow-url");
        assert!(!r.stderr.contains("Loading URL"), "{}", r.stderr);
        nothing_ran(&r);
    }

    // under consul watch a refusal exits 0, and the refused event is handled
    let list = consul_list(&[&consul_event(
        "r1",
        1,
        &format!("file://{}", outside.display()),
    )]);
    for want in ["refused by --allow-url", "already handled"] {
        s.stretcher()
            .env("CONSUL_INDEX", "1")
            .args(["--allow-url", &allow])
            .stdin(list.clone())
            .run()
            .assert_ok()
            .assert_log(want);
    }

    // inside the prefix: it deploys (any of several prefixes will do)
    let good = marked_manifest(&s, "allowed/ok", "../app.tar", &sha1);
    s.stretcher()
        .args(["--allow-url", "https://example.com/"])
        .args(["--allow-url", &allow])
        .arg(format!("file://{}", good.display()))
        .run()
        .assert_ok();
    assert!(s.work().join("pre.ran").exists());
    assert_eq!(std::fs::read(s.dest().join("a.txt")).unwrap(), b"a\n");
}

#[test]
fn allow_url_prefix_without_slash_is_warned_about() {
    let s = Scratch::new();
    let a = counting_manifest(&s, "a");
    let prefix = format!("file://{}", s.path().display());
    s.stretcher()
        .args(["--allow-url", &prefix])
        .arg(&a)
        .run()
        .assert_ok()
        .assert_log("does not end with \"/\"");
    let r = s
        .stretcher()
        .args(["--allow-url", "/no/scheme/"])
        .arg(&a)
        .run();
    assert_eq!(r.code(), 2, "{}", r.stderr);
    assert_eq!(runs(&s, "a"), 1);
}
