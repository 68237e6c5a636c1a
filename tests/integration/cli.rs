//! The command line of the real binary (SPEC §3): both flag spellings, version,
//! help, exit codes for bad usage.

use crate::util::*;

#[test]
fn version_in_every_spelling() {
    for flag in ["-v", "-version", "--version"] {
        let r = stretcher().arg(flag).run();
        r.assert_ok();
        assert_eq!(
            r.stdout.trim(),
            format!("stretcher {}", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

#[test]
fn help_lists_every_flag() {
    for flag in ["-h", "--help", "-help"] {
        let r = stretcher().arg(flag).run();
        r.assert_ok();
        for f in [
            "max-bandwidth",
            "timeout",
            "random-delay",
            "retry",
            "retry-wait",
            "rsync-verbose",
            "version",
        ] {
            assert!(
                r.stdout.contains(f),
                "{flag}: help lacks {f}:\n{}",
                r.stdout
            );
        }
    }
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    for args in [
        vec!["--no-such-flag"],
        vec!["-retry", "many"],
        vec!["--timeout=soon"],
        vec!["--max-bandwidth", "lots"],
        vec!["--rsync-verbose=-vvvv"],
        vec!["a.yml", "b.yml"],
    ] {
        let r = stretcher().args(&args).run();
        assert_eq!(r.code(), 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("stretcher: "),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"));
    }
}

#[test]
fn both_flag_spellings_reach_the_deploy() {
    // a commands-only manifest: the flags are parsed and the run succeeds
    let s = Scratch::new();
    let m = s.manifest("m.yml", "commands:\n  pre:\n    - echo hi\n");
    for args in [
        vec!["-retry", "2", "-retry-wait=1", "-timeout", "1m30s"],
        vec!["--retry=2", "--retry-wait", "500ms", "--timeout=30"],
        vec!["--max-band-width", "10M", "-rsync-verbose", "-vv"],
        vec!["-max-bandwidth=512KiB", "--rsync-verbose="],
        vec!["--random-delay", "0.01"],
    ] {
        s.stretcher()
            .args(&args)
            .arg(&m)
            .run()
            .assert_ok()
            .assert_log(" hi\n");
    }
}

#[test]
fn random_delay_sleeps_before_reading_the_event() {
    // the original's TestInitSleep: the delay comes first, then the (missing) event fails
    let r = stretcher().args(["-random-delay", "0.3"]).stdin("").run();
    r.assert_fail().assert_log("Sleeping");
}

/// Every subcommand is parsed as the deploy is: its own `--help` (exit 0, stdout), and
/// bad usage as one message and the hint on stderr, exit 2.
#[test]
fn subcommands_share_help_and_bad_usage() {
    for sub in [
        &["status"][..],
        &["verify"],
        &["releases"],
        &["rollback"],
        &["fleet", "status"],
        &["catch-up"],
    ] {
        for help in ["-h", "-help", "--help"] {
            let r = stretcher().args(sub).arg(help).run();
            r.assert_ok();
            assert!(
                r.stdout.starts_with("Usage: stretcher "),
                "{sub:?}: {}",
                r.stdout
            );
            assert_eq!(r.stderr, "", "{sub:?}");
        }
        let r = stretcher().args(sub).args(["--no-such-flag", "/d"]).run();
        assert_eq!(r.code(), 2, "{sub:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{sub:?}: {}", r.stdout);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{sub:?}: {}", r.stderr);
        assert!(
            lines[0].starts_with("stretcher: unknown flag"),
            "{sub:?}: {}",
            r.stderr
        );
        assert_eq!(lines[1], "Try 'stretcher --help' for more information.");
    }
}

/// `catch-up` without a serf agent to ask: one clear line, exit 1, nothing deployed.
#[test]
fn catch_up_without_an_agent_fails_in_one_line() {
    let s = Scratch::new();
    // a port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = stretcher()
        .args(["catch-up", "--rpc-addr", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(s.state_dir())
        .run();
    assert_eq!(r.code(), 1, "{}", r.stderr);
    r.assert_log("catch-up: serf agent 127.0.0.1:")
        .assert_log("cannot connect");
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(!s.dest().exists());
}
