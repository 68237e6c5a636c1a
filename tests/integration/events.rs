//! How a deploy is started (SPEC §2): consul watch JSON, serf payloads, a stdin
//! line, a positional argument; and the consul-watch exit rule.

use base64::Engine;

use crate::util::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Two manifests writing distinct markers; returns their file:// URLs.
fn two_manifests(s: &Scratch) -> (String, String) {
    let a = s.manifest("a.yml", "commands:\n  pre:\n    - touch a.ran\n");
    let b = s.manifest("b.yml", "commands:\n  pre:\n    - touch b.ran\n");
    (
        format!("file://{}", a.display()),
        format!("file://{}", b.display()),
    )
}

#[test]
fn consul_empty_list_runs_nothing() {
    let s = Scratch::new();
    let r = s.stretcher().env("CONSUL_INDEX", "1").stdin("[]").run();
    // under consul watch a failure still exits 0 so the watch keeps running
    r.assert_ok().assert_log("no consul events");
    let r = s.stretcher().stdin("[]\n").run();
    r.assert_fail().assert_log("no consul events");
}

#[test]
fn consul_last_event_wins() {
    let s = Scratch::new();
    let (a, b) = two_manifests(&s);
    let json = format!(
        r#"[
  {{"LTime": 2, "Version": 1, "TagFilter": "", "ServiceFilter": "", "NodeFilter": "",
    "Payload": "{}", "Name": "deploy", "ID": "1d6731a8-833c-1aff-94e5-aa5e5a77da9f"}},
  {{"LTime": 3, "Version": 1, "TagFilter": "", "ServiceFilter": "", "NodeFilter": "",
    "Payload": "{}", "Name": "deploy", "ID": "b5ef1588-1bcd-d93f-5d9c-67cb6e8c4587"}}
]"#,
        b64(&a),
        b64(&b)
    );
    s.stretcher()
        .env("CONSUL_INDEX", "42")
        .stdin(json)
        .run()
        .assert_ok();
    assert!(s.work().join("b.ran").exists());
    assert!(!s.work().join("a.ran").exists());
}

#[test]
fn consul_null_payload_is_an_error() {
    let s = Scratch::new();
    let json = r#"[{"ID":"x","Name":"deploy","Payload":null,"LTime":1}]"#;
    s.stretcher().stdin(json).run().assert_fail();
}

#[test]
fn consul_failure_exits_zero() {
    let s = Scratch::new();
    let m = s.manifest(
        "f.yml",
        "commands:\n  pre:\n    - exit 1\n  failure:\n    - touch failure.ran\n",
    );
    let json = format!(
        r#"[{{"ID":"x","Name":"deploy","Payload":"{}","LTime":1}}]"#,
        b64(&format!("file://{}", m.display()))
    );
    s.stretcher()
        .env("CONSUL_INDEX", "7")
        .stdin(json)
        .run()
        .assert_ok()
        .assert_log("failed: exit 1 exit status 1");
    assert!(s.work().join("failure.ran").exists());
}

#[test]
fn serf_payload_without_newline() {
    let s = Scratch::new();
    let (a, _) = two_manifests(&s);
    s.stretcher()
        .env("SERF_EVENT", "user")
        .env("SERF_USER_EVENT", "deploy")
        .env("SERF_USER_LTIME", "5")
        .stdin(a)
        .run()
        .assert_ok();
    assert!(s.work().join("a.ran").exists());
}

#[test]
fn stdin_line_and_positional() {
    let s = Scratch::new();
    let (a, b) = two_manifests(&s);
    s.stretcher().stdin(format!("{a}\n")).run().assert_ok();
    assert!(s.work().join("a.ran").exists());
    // a positional path wins over stdin
    let b_path = b.strip_prefix("file://").unwrap();
    s.stretcher()
        .arg(b_path)
        .stdin(format!("{a}\n"))
        .run()
        .assert_ok();
    assert!(s.work().join("b.ran").exists());
}

#[test]
fn empty_stdin_is_an_error() {
    let s = Scratch::new();
    s.stretcher().stdin("").run().assert_fail();
}
