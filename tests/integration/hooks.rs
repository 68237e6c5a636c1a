//! Hook commands through the real binary: output into the log, the log on the
//! stdin of success/failure commands, failure reports, no EPIPE noise.

use crate::util::*;

#[test]
fn command_output_reaches_the_log() {
    let s = Scratch::new();
    let m = s.manifest(
        "m.yml",
        "commands:\n  pre:\n    - date +%Y%m%d\n    - date +%Y\n    - echo to-stderr >&2\n",
    );
    let r = s.stretcher().arg(&m).run();
    r.assert_ok();
    let year = chrono::Local::now().format("%Y").to_string();
    let ymd = chrono::Local::now().format("%Y%m%d").to_string();
    // each output line is its own timestamped log line
    assert!(
        r.stderr
            .lines()
            .any(|l| l.len() == 20 + 8 && l.ends_with(&ymd)),
        "{}",
        r.stderr
    );
    r.assert_log(&format!(" {year}\n"))
        .assert_log(" to-stderr\n");
}

#[test]
fn log_piped_to_success_arrives_byte_for_byte() {
    let s = Scratch::new();
    let m = s.manifest(
        "m.yml",
        "commands:\n  pre:\n    - for i in 0 1 2 3 4 5 6 7 8 9; do echo foo$i; done\n  success:\n    - cat > cmdoutput\n    - cat\n    - echo ok\n",
    );
    let r = s.stretcher().arg(&m).run();
    r.assert_ok();
    let piped = std::fs::read(s.work().join("cmdoutput")).unwrap();
    assert!(!piped.is_empty());
    // what the hook got is exactly what had been logged on stderr up to then
    assert_eq!(
        &r.stderr.as_bytes()[..piped.len()],
        &piped[..],
        "piped log differs from stderr"
    );
    for i in 0..10 {
        assert!(String::from_utf8_lossy(&piped).contains(&format!(" foo{i}\n")));
    }
}

#[test]
fn failing_command_is_reported_with_its_output() {
    let s = Scratch::new();
    let m = s.manifest(
        "m.yml",
        "commands:\n  pre:\n    - echo 'FOO'; echo 'BAR' >&2; false\n",
    );
    s.stretcher()
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("failed: echo 'FOO'; echo 'BAR' >&2; false exit status 1\n")
        .assert_log(" FOO\n")
        .assert_log(" BAR\n");
}

#[test]
fn unread_log_gives_no_broken_pipe() {
    let s = Scratch::new();
    // 1025 lines of 64 bytes: more than a pipe buffer of log for a hook that reads nothing
    let m = s.manifest(
        "m.yml",
        "commands:\n  pre:\n    - i=0; while [ $i -lt 1025 ]; do echo 0123456789012345678901234567890123456789012345678901234567890123; i=$((i+1)); done\n  success:\n    - echo ok\n",
    );
    let r = s.stretcher().arg(&m).run();
    r.assert_ok().assert_log(" ok\n");
    assert!(r.stderr.len() > 64 * 1024);
    assert!(
        !r.stderr.to_lowercase().contains("broken pipe"),
        "{}",
        r.stderr
    );
}

#[test]
fn hooks_get_stretcher_environment() {
    let s = Scratch::new();
    let text = manifest_for(
        &archive("test.tar"),
        &s.dest(),
        "commands:\n  post:\n    - echo \"d=$STRETCHER_DEST s=$STRETCHER_SRC\"\n    - echo \"m=$STRETCHER_MANIFEST_URL\"\n",
    );
    let m = s.manifest("m.yml", &text);
    s.stretcher()
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log(&format!(
            " d={} s=file://{}\n",
            s.dest().display(),
            archive("test.tar").display()
        ))
        .assert_log(&format!(" m=file://{}\n", m.display()));
    redeploy(&s, &m);
}

/// `commands.env` (SPEC §4): exported to the command of every phase, templates
/// expanded in values, scalars as YAML spells them.
#[test]
fn commands_env_reaches_every_phase() {
    let s = Scratch::new();
    let show = "echo \"$PHASE app=$APP_ENV n=$WORKERS b=$DEBUG v=$FROM_ENV\"";
    let text = manifest_for(
        &archive("test.tar"),
        &s.dest(),
        &format!(
            "commands:\n  env:\n    APP_ENV: production\n    WORKERS: 007\n    DEBUG: false\n    FROM_ENV: '{{{{ env \"DEPLOY_COLOR\" }}}}'\n  pre:\n    - PHASE=pre; {show}\n  post:\n    - PHASE=post; {show}\n  success:\n    - PHASE=success; {show}\n"
        ),
    );
    let m = s.manifest("m.yml", &text);
    let r = s.stretcher().arg(&m).env("DEPLOY_COLOR", "blue").run();
    r.assert_ok();
    for phase in ["pre", "post", "success"] {
        r.assert_log(&format!(" {phase} app=production n=007 b=false v=blue\n"));
    }
    assert!(!r.stderr.contains("unknown key"), "{}", r.stderr);
    redeploy_unchanged(&s, &m, |r| r.env("DEPLOY_COLOR", "blue"));

    // failure commands too
    let bad = s.manifest(
        "bad.yml",
        "commands:\n  env:\n    APP_ENV: staging\n  pre:\n    - \"false\"\n  failure:\n    - echo \"failure app=$APP_ENV\"\n",
    );
    s.stretcher()
        .arg(&bad)
        .run()
        .assert_fail()
        .assert_log(" failure app=staging\n");
}

/// A list or map value, or a STRETCHER_ name, is refused before anything is fetched
/// or run.
#[test]
fn commands_env_errors_come_before_anything_runs() {
    for (env, needle) in [
        ("    LIST: [a, b]\n", "the value of LIST must be"),
        ("    MAP:\n      a: b\n", "the value of MAP must be"),
        ("    STRETCHER_DEST: /x\n", "STRETCHER_DEST is reserved"),
    ] {
        let s = Scratch::new();
        let text = format!(
            "src: file://{}/never.tar\nchecksum: {}\ndest: {}\ncommands:\n  env:\n{env}  pre:\n    - touch pre.ran\n  failure:\n    - touch failure.ran\n",
            s.path().display(),
            "0".repeat(40),
            s.dest().display()
        );
        let m = s.manifest("m.yml", &text);
        let r = s.stretcher().arg(&m).run();
        r.assert_fail().assert_log(needle);
        assert!(!r.stderr.contains("Loading URL"), "{}", r.stderr);
        assert!(!s.work().join("pre.ran").exists());
        assert!(!s.work().join("failure.ran").exists());
        assert!(!s.dest().exists());
    }
}
