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

/// SPEC §10: two events of one name stamped with the same LTime (two agents' clocks):
/// the byte-wise greater payload runs whatever the order; the other is superseded.
#[test]
fn serf_same_ltime_the_greater_payload_wins_in_either_order() {
    for greater_first in [false, true] {
        let s = Scratch::new();
        let (a, b) = two_manifests(&s);
        assert!(b > a);
        let serf = |payload: &str| {
            s.stretcher()
                .env("SERF_EVENT", "user")
                .env("SERF_USER_EVENT", "deploy")
                .env("SERF_USER_LTIME", "9")
                .stdin(payload)
                .run()
        };
        let (first, second) = if greater_first { (&b, &a) } else { (&a, &b) };
        serf(first).assert_ok();
        let r = serf(second);
        r.assert_ok();
        if greater_first {
            r.assert_log(
                "superseded: an event of the same LTime 9 with a greater payload was handled",
            );
            assert!(!s.work().join("a.ran").exists());
        } else {
            assert!(s.work().join("a.ran").exists());
        }
        assert!(s.work().join("b.ran").exists());
        // both are remembered as handled: neither runs again at that LTime
        std::fs::remove_file(s.work().join("b.ran")).unwrap();
        serf(&a).assert_ok().assert_log("superseded");
        serf(&b).assert_ok().assert_log(
            "superseded: an event of the same LTime 9 with the same payload was handled already",
        );
        assert!(!s.work().join("b.ran").exists());
    }
}

#[test]
fn consul_same_ltime_another_id_is_ordered_by_payload() {
    let s = Scratch::new();
    let (a, b) = two_manifests(&s);
    let event = |id: &str, payload: &str| {
        format!(
            r#"[{{"ID":"{id}","Name":"deploy","Payload":"{}","LTime":4}}]"#,
            b64(payload)
        )
    };
    let consul = |json: String| s.stretcher().env("CONSUL_INDEX", "1").stdin(json).run();
    consul(event("id-b", &b)).assert_ok();
    consul(event("id-a", &a))
        .assert_ok()
        .assert_log("superseded");
    assert!(!s.work().join("a.ran").exists());
    consul(event("id-b", &b))
        .assert_ok()
        .assert_log("already handled: ID id-b was handled already");
}
