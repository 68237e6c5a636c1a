//! `stretcher status` (SPEC §13): golden outputs of the real binary over records
//! written by the library's own record writer, the 1024-byte brief answer, exit
//! codes 0/1/3, and the rules under a serf query (exit 0, nothing on stderr).

use stretcher::record::{self, Outcome, Record};

use crate::util::records::{record, write};
use crate::util::*;

fn status(s: &Scratch, args: &[&str]) -> Run {
    stretcher()
        .cwd(&s.work())
        .arg("status")
        .arg("--state-dir")
        .arg(s.state_dir())
        .args(args)
        .run()
}

fn two_records(s: &Scratch) -> (Record, Record) {
    let app = record(
        "/srv/app",
        Outcome::Success,
        "0123456789abcdef0123456789abcdef01234567",
        "2026-12-01T10:00:00.000Z",
        None,
    );
    let api = record(
        "/srv/api",
        Outcome::Failure,
        "fedcba9876543210fedcba9876543210fedcba98",
        "2026-12-01T10:05:00.000Z",
        Some("failed: ./check exit status 1"),
    );
    write(&s.state_dir(), &app);
    write(&s.state_dir(), &api);
    (app, api)
}

#[test]
fn human_lines_golden() {
    let s = Scratch::new();
    two_records(&s);
    let run = status(&s, &[]);
    // api sorts first (records are listed by key: dest name, then digest)
    assert_eq!(
        run.stdout,
        "\
/srv/api  failure  fedcba987654  2026-12-01T10:05:00.000Z  0.300s  https://releases.example.com/srv/api.yml  failed at pre: failed: ./check exit status 1
/srv/app  success  0123456789ab  2026-12-01T10:00:00.000Z  1.250s  https://releases.example.com/srv/app.yml
"
    );
    assert_eq!(run.code(), 1, "{run:?}");
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    // the named dests only; the exit status is theirs
    let run = status(&s, &["/srv/app"]);
    assert_eq!(run.code(), 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 1);
    assert!(run.stdout.starts_with("/srv/app  success  0123456789ab  "));
    // trailing slash and `.` name the same dest
    assert_eq!(status(&s, &["/srv/./app/"]).code(), 0);
    assert_eq!(status(&s, &["/srv/api", "/srv/app"]).code(), 1);
    let run = status(&s, &["/srv/app", "/srv/never"]);
    assert_eq!(run.code(), 3, "{run:?}");
    assert!(run.stdout.ends_with("/srv/never  none\n"), "{}", run.stdout);
}

#[test]
fn json_is_the_array_of_records() {
    let s = Scratch::new();
    let (app, api) = two_records(&s);
    let run = status(&s, &["--json"]);
    assert_eq!(run.code(), 1);
    let got: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let want = serde_json::to_value(vec![api, app]).unwrap();
    assert_eq!(got, want);
    assert_eq!(got[0]["result"], "failure");
    assert_eq!(got[0]["failed_step"], "pre");
    assert_eq!(got[1]["changes"]["created"], 3);
}

#[test]
fn brief_json_golden() {
    let s = Scratch::new();
    two_records(&s);
    let run = status(&s, &["--brief", "--json"]);
    let host = record::hostname().unwrap_or_default();
    assert_eq!(
        run.stdout,
        format!(
            "{{\"host\":\"{host}\",\"deploys\":[\
{{\"dest\":\"/srv/api\",\"result\":\"failure\",\"checksum\":\"fedcba987654\",\"finished\":\"2026-12-01T10:05:00.000Z\",\"failed_step\":\"pre\",\"error\":\"failed: ./check exit status 1\",\"manifest_url\":\"https://releases.example.com/srv/api.yml\"}},\
{{\"dest\":\"/srv/app\",\"result\":\"success\",\"checksum\":\"0123456789ab\",\"finished\":\"2026-12-01T10:00:00.000Z\",\"failed_step\":null,\"error\":null,\"manifest_url\":\"https://releases.example.com/srv/app.yml\"}}]}}\n"
        )
    );
    assert_eq!(run.code(), 1);
}

#[test]
fn brief_json_of_many_dests_fits_in_1024_bytes() {
    let s = Scratch::new();
    let long =
        "failed: /opt/deploy/bin/check-health --url http://127.0.0.1:8080/health exit status 1; "
            .repeat(4);
    for i in 0..24 {
        let dest = format!("/srv/applications/service-{i:02}");
        let (result, error) = if i % 3 == 0 {
            (Outcome::Failure, Some(long.as_str()))
        } else {
            (Outcome::Success, None)
        };
        let finished = format!("2026-12-01T10:{i:02}:00.000Z");
        write(
            &s.state_dir(),
            &record(&dest, result, &"9".repeat(40), &finished, error),
        );
    }
    let full = status(&s, &["--json"]);
    assert!(full.stdout.len() > 10_000, "{}", full.stdout.len());
    let run = status(&s, &["--brief", "--json"]);
    assert_eq!(run.code(), 1);
    let answer = run.stdout.trim_end();
    // with its newline, and the message serf wraps it in, within 1024 bytes
    let budget = stretcher::status::brief_budget(&record::hostname().unwrap_or_default());
    assert!(
        run.stdout.len() <= budget,
        "{} bytes: {answer}",
        run.stdout.len()
    );
    assert!(
        run.stdout.len() > budget - 40,
        "{} of {budget} bytes used",
        run.stdout.len()
    );
    // under serf, the node name counts
    let long_name = "a-rather-long-serf-node-name-for-this-host.example.com";
    let run = stretcher()
        .env("SERF_EVENT", "query")
        .env("SERF_SELF_NAME", long_name)
        .args(["status", "--brief", "--json", "--state-dir"])
        .arg(s.state_dir())
        .run();
    assert_eq!((run.code(), run.stderr.as_str()), (0, ""));
    assert!(run.stdout.len() <= stretcher::status::brief_budget(long_name));
    assert!(1024 - run.stdout.len() >= long_name.len() + 41);
    serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(answer).unwrap();
    let deploys = v["deploys"].as_array().unwrap();
    let omitted = v["omitted"].as_u64().unwrap_or(0) as usize;
    assert_eq!(deploys.len() + omitted, 24, "{v}");
    assert!(!deploys.is_empty());
    // the failures are kept first, the newest of them first; errors are
    // shortened, not dropped
    assert!(deploys.iter().all(|d| d["result"] == "failure"), "{v}");
    assert!(deploys
        .iter()
        .any(|d| d["dest"] == "/srv/applications/service-21"));
    for d in deploys.iter().filter(|d| d["result"] == "failure") {
        let e = d["error"].as_str().unwrap();
        assert!(e.starts_with("failed: ") && e.ends_with('…'), "{e}");
    }
    // what fleet status reads
    let brief: stretcher::status::Brief = serde_json::from_str(answer).unwrap();
    assert_eq!(brief.deploys.len(), deploys.len());
}

#[test]
fn exit_codes_and_the_serf_query_rules() {
    let s = Scratch::new();
    // nothing recorded: 3
    let run = status(&s, &[]);
    assert_eq!(run.code(), 3, "{run:?}");
    assert!(
        run.stdout.starts_with("no deploy recorded in "),
        "{}",
        run.stdout
    );
    // nothing is created by reading
    assert!(!s.state_dir().exists());
    let run = status(&s, &["--brief", "--json"]);
    assert_eq!(run.code(), 3);
    assert!(run.stdout.contains("\"deploys\":[]"), "{}", run.stdout);

    write(
        &s.state_dir(),
        &record(
            "/srv/app",
            Outcome::Success,
            "ab",
            "2026-12-01T10:00:00.000Z",
            None,
        ),
    );
    assert_eq!(status(&s, &[]).code(), 0);
    write(
        &s.state_dir(),
        &record(
            "/srv/api",
            Outcome::Refused,
            "ab",
            "2026-12-01T10:00:00.000Z",
            Some("fetch x: refused"),
        ),
    );
    assert_eq!(status(&s, &[]).code(), 1);
    // a corrupt record is a warning on stderr...
    std::fs::write(
        s.state_dir()
            .join("deploys")
            .join("bad-0000000000000000.json"),
        "{",
    )
    .unwrap();
    let run = status(&s, &["--brief", "--json"]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("corrupt"), "{}", run.stderr);

    // ...but under a serf query: exit 0, stderr empty, the failure in the answer
    let query = |args: &[&str]| {
        stretcher()
            .cwd(&s.work())
            .env("SERF_EVENT", "query")
            .env("SERF_QUERY_NAME", "stretcher-status")
            .args(["status", "--brief", "--json", "--state-dir"])
            .arg(s.state_dir())
            .args(args)
            .run()
    };
    let run = query(&[]);
    assert_eq!(run.code(), 0, "{run:?}");
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["deploys"][0]["result"], "refused");
    assert_eq!(v["deploys"][0]["error"], "fetch x: refused");
    // nothing recorded, and a state directory that is a file: still exit 0, no stderr
    let run = query(&["/srv/never"]);
    assert_eq!((run.code(), run.stderr.as_str()), (0, ""));
    let file = s.file("not-a-dir", b"x");
    let run = stretcher()
        .env("SERF_EVENT", "query")
        .args(["status", "--brief", "--json", "--state-dir"])
        .arg(&file)
        .run();
    assert_eq!((run.code(), run.stderr.as_str()), (0, ""), "{run:?}");
    assert!(serde_json::from_str::<serde_json::Value>(&run.stdout).is_ok());
}

/// A record's fields are data, not text (SPEC §17): on a terminal every control
/// character is shown as `\xNN`, each record stays one line, a checksum that is not
/// ASCII is cut by characters; `--json` and the brief answer stay JSON.
#[test]
fn human_lines_show_control_characters_escaped() {
    let s = Scratch::new();
    let forged = "\n/srv/app  success  0123456789ab  2026-12-01T10:00:00.000Z";
    let mut rec = record(
        "/srv/ap\x1b[2Kp",
        Outcome::Failure,
        "0123456789aé\x1b[31m",
        "2026-12-01T10:05:00.000Z\r",
        Some(&format!("failed: ./check exit status 1{forged}")),
    );
    rec.manifest_url = "https://releases.example.com/\x07app.yml".into();
    write(&s.state_dir(), &rec);
    let run = status(&s, &[]);
    assert_eq!(run.code(), 1, "{run:?}");
    assert_eq!(
        run.stdout,
        "/srv/ap\\x1b[2Kp  failure  0123456789aé  2026-12-01T10:05:00.000Z\\x0d  0.300s  \
         https://releases.example.com/\\x07app.yml  failed at pre: failed: ./check exit \
         status 1\\x0a/srv/app  success  0123456789ab  2026-12-01T10:00:00.000Z\n"
    );
    // a named dest without a record, its name escaped too
    let run = status(&s, &["/srv/ne\nw"]);
    assert_eq!(run.code(), 3, "{run:?}");
    assert_eq!(run.stdout, "/srv/ne\\x0aw  none\n");
    // JSON keeps the data (escaped as JSON)
    let run = status(&s, &["--json"]);
    let got: Vec<Record> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(got, [rec.clone()]);
    let run = status(&s, &["--brief", "--json"]);
    let brief: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(brief["deploys"][0]["checksum"], "0123456789aé");
    assert_eq!(brief["deploys"][0]["dest"], "/srv/ap\x1b[2Kp");
}

/// SPEC §13, §20: every dest's `manifest_url` (redacted, whole) and `serial` in the
/// brief answer; 25 dests with long URLs still fit Serf's 1024 bytes, the URLs of
/// those kept never shortened, the others counted in `omitted`.
#[test]
fn brief_json_of_25_long_urls_fits_with_whole_urls_and_serials() {
    let s = Scratch::new();
    let long = "a-rather-long-path-segment-of-a-manifest-url/".repeat(3);
    for i in 0..25 {
        let dest = format!("/srv/service-{i:02}");
        let mut rec = record(
            &dest,
            Outcome::Success,
            &"7".repeat(40),
            &format!("2026-12-01T10:{i:02}:00.000Z"),
            None,
        );
        rec.manifest_url = format!("https://releases.example.com/{long}{i:02}.yml");
        rec.serial = Some(100 + i);
        write(&s.state_dir(), &rec);
    }
    // a record written by hand with secrets: redacted in the answer all the same
    let mut secret = record(
        "/srv/secret",
        Outcome::Success,
        "ab",
        "2026-12-01T11:00:00.000Z",
        None,
    );
    secret.manifest_url = "https://u:pw@h/m.yml?X-Amz-Signature=s3cr3t".into();
    write(&s.state_dir(), &secret);
    let run = status(&s, &["--brief", "--json"]);
    assert_eq!(run.code(), 0, "{run:?}");
    let budget = stretcher::status::brief_budget(&record::hostname().unwrap_or_default());
    assert!(
        run.stdout.len() <= budget && budget < 1024,
        "{}",
        run.stdout.len()
    );
    assert!(!run.stdout.contains("s3cr3t") && !run.stdout.contains(":pw@"));
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let deploys = v["deploys"].as_array().unwrap();
    assert_eq!(
        deploys.len() + v["omitted"].as_u64().unwrap() as usize,
        26,
        "{v}"
    );
    assert!(deploys.len() >= 2, "{v}");
    for d in deploys {
        let dest = d["dest"].as_str().unwrap();
        if dest == "/srv/secret" {
            assert_eq!(d["manifest_url"], "https://u:REDACTED@h/m.yml?REDACTED");
            continue;
        }
        let i: u64 = dest["/srv/service-".len()..].parse().unwrap();
        assert_eq!(
            d["manifest_url"],
            format!("https://releases.example.com/{long}{i:02}.yml")
        );
        assert_eq!(d["serial"], 100 + i);
    }
    // the newest are kept
    assert!(deploys.iter().any(|d| d["dest"] == "/srv/secret"), "{v}");
    assert!(
        deploys.iter().any(|d| d["dest"] == "/srv/service-24"),
        "{v}"
    );
}

/// SPEC §13: a host with 8 dests of long URLs whose *oldest* deploy failed keeps the
/// failure in its brief answer (and says how many it left out), so `fleet status`
/// cannot take it for a success.
#[test]
fn brief_json_keeps_the_oldest_failure_of_eight_long_dests() {
    let s = Scratch::new();
    let long = "x".repeat(150);
    for i in 0..8 {
        let dest = format!("/srv/long-dest-name-of-service-number-{i}");
        let (result, error) = if i == 0 {
            (Outcome::Failure, Some("failed: ./check exit status 1"))
        } else {
            (Outcome::Success, None)
        };
        let mut rec = record(
            &dest,
            result,
            &"5".repeat(40),
            &format!("2026-12-01T1{i}:00:00.000Z"),
            error,
        );
        rec.manifest_url = format!("https://releases.example.com/{long}/{i}.yml");
        write(&s.state_dir(), &rec);
    }
    let run = status(&s, &["--brief", "--json"]);
    assert_eq!(run.code(), 1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let omitted = v["omitted"].as_u64().unwrap();
    assert!(omitted > 0, "{v}");
    let deploys = v["deploys"].as_array().unwrap();
    assert_eq!(deploys.len() as u64 + omitted, 8);
    let failed: Vec<_> = deploys
        .iter()
        .filter(|d| d["result"] == "failure")
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["dest"], "/srv/long-dest-name-of-service-number-0");
    assert_eq!(failed[0]["error"], "failed: ./check exit status 1");
    // under a serf query too (exit 0, the failure in the answer)
    let q = stretcher()
        .env("SERF_EVENT", "query")
        .args(["status", "--brief", "--json", "--state-dir"])
        .arg(s.state_dir())
        .run();
    assert_eq!((q.code(), q.stderr.as_str()), (0, ""));
    assert!(q.stdout.contains("long-dest-name-of-service-number-0"));
}
