//! `--detach` (SPEC §13): the handler hands the deploy to a detached process and
//! returns at once (its stdout and stderr closed: what an event agent waits for);
//! while the deploy runs, `status` shows dest `running` with the checksum being
//! deployed, `started` and the pid; a detached deploy killed with SIGKILL shows as
//! `interrupted` (exit 1). The source is a local HTTP server that sends half the
//! archive and then trickles until the test lets it finish.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::http::{clean, respond, TestServer};
use crate::util::*;

/// An archive of `n` files of noise (about `n` × 4 KiB) and its sha1.
pub fn archive_of(n: usize, seed: u8) -> (Vec<u8>, String) {
    let data: Vec<Vec<u8>> = (0..n)
        .map(|i| (0..4096).map(|j| (i * 31 + j * 7) as u8 ^ seed).collect())
        .collect();
    let names: Vec<String> = (0..n).map(|i| format!("./f{i:03}")).collect();
    let mut entries = vec![Raw::Dir(b"./")];
    for (name, d) in names.iter().zip(&data) {
        entries.push(Raw::File(name.as_bytes(), d));
    }
    let tar = raw_tar(&entries);
    let sum = sha1_bytes(&tar);
    (tar, sum)
}

/// Serves `/m.yml` (a manifest of `/app.tar` into `dest`) and `/app.tar`: the first
/// half at once, then 512 bytes every 100 ms (a throttled source), the rest at once
/// when `go` is set. Bounded: gives up after 60 s.
pub fn gated_server(tar: Vec<u8>, sum: &str, dest: &Path, go: Arc<AtomicBool>) -> TestServer {
    let manifest = Arc::new(std::sync::Mutex::new(String::new()));
    let m = manifest.clone();
    let srv = TestServer::start(move |req, w| match req.path.as_str() {
        "/m.yml" => respond(w, "200 OK", m.lock().unwrap().as_bytes()),
        "/app.tar" => {
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                tar.len()
            );
            let (head, mut rest) = tar.split_at(tar.len() / 2);
            if w.write_all(head).and_then(|_| w.flush()).is_err() {
                return;
            }
            let t = Instant::now();
            while !go.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
                let n = rest.len().min(512).min(rest.len().saturating_sub(1));
                if w.write_all(&rest[..n]).and_then(|_| w.flush()).is_err() {
                    return;
                }
                rest = &rest[n..];
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = w.write_all(rest);
        }
        _ => respond(w, "404 Not Found", b""),
    });
    *manifest.lock().unwrap() = format!(
        "src: {}\nchecksum: {sum}\ndest: {}\n",
        srv.url("/app.tar"),
        dest.display()
    );
    srv
}

/// Kills the detached process by pid if the test ends before it did.
struct Detached(i32);

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// The pid the handler logged: "Deploy handed to detached process PID".
fn detached_pid(run: &Run) -> Detached {
    let pid = run
        .stderr
        .split("Deploy handed to detached process ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in the log: {}", run.stderr));
    Detached(pid)
}

fn status(s: &Scratch, args: &[&str]) -> Run {
    stretcher()
        .cwd(&s.work())
        .arg("status")
        .arg("--state-dir")
        .arg(s.state_dir())
        .args(args)
        .limit(Duration::from_secs(20))
        .run()
}

/// dest's entry of `status --json`.
fn shown(s: &Scratch) -> Value {
    let run = status(s, &["--json"]);
    let v: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits (at most 30 s) until `status` shows dest with `result` (and, for
/// `running`, the checksum read from the manifest: before it is read the run is
/// shown under the manifest URL).
fn wait_result(s: &Scratch, result: &str) -> Value {
    let t = Instant::now();
    loop {
        let v = shown(s);
        if v["result"] == result && !v["checksum"].is_null() {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "status never showed {result}: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn detach_returns_at_once_and_status_shows_running_then_success() {
    let s = Scratch::new();
    let (v1, sum1) = archive_of(8, 1);
    let (v2, sum2) = archive_of(64, 2);
    // v1, in the foreground: the last finished record
    let a1 = s.file("v1.tar", &v1);
    let m1 = s.manifest("m1.yml", &manifest_for(&a1, &s.dest(), ""));
    s.stretcher().arg(&m1).run().assert_ok();

    let go = Arc::new(AtomicBool::new(false));
    let srv = gated_server(v2.clone(), &sum2, &s.dest(), go.clone());
    // as a serf handler runs it: the payload on stdin, the event in the environment
    let run = clean(s.stretcher())
        .arg("--detach")
        .env("SERF_EVENT", "user")
        .env("SERF_USER_EVENT", "deploy")
        .env("SERF_USER_LTIME", "5")
        .stdin(srv.url("/m.yml"))
        .limit(Duration::from_secs(20))
        .run();
    // returned, its pipes closed, while the source still holds half the archive back
    run.assert_ok();
    let _guard = detached_pid(&run);
    assert!(!go.load(Ordering::SeqCst));

    let v = wait_result(&s, "running");
    assert_eq!(v["checksum"], sum2, "{v}");
    assert!(v["finished"].is_null() && v["duration_s"].is_null(), "{v}");
    assert!(
        v["started"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    assert_eq!(v["event"]["origin"], "serf");
    assert_eq!(v["event"]["ltime"], 5);
    let pid = v["process"]["pid"].as_i64().unwrap();
    assert_eq!(pid as i32, _guard.0);
    // the human line and the brief answer say so too; not a success yet: exit 1
    let human = status(&s, &[]);
    assert_eq!(human.code(), 1, "{human:?}");
    assert!(
        human.stdout.contains("running since ") && human.stdout.contains(&format!("(pid {pid})")),
        "{}",
        human.stdout
    );
    let brief = status(&s, &["--brief", "--json"]);
    let b: Value = serde_json::from_str(&brief.stdout).unwrap();
    assert_eq!(b["deploys"][0]["result"], "running", "{b}");
    assert_eq!(b["deploys"][0]["checksum"], sum2[..12]);
    assert!(b["deploys"][0]["started"].is_string(), "{b}");
    // what deploys decide by is still the last finished record: v1's success
    let last = stretcher::record::last(&s.state_dir(), &s.dest()).unwrap();
    assert_eq!(
        (last.result, last.checksum.as_deref()),
        (stretcher::record::Outcome::Success, Some(sum1.as_str()))
    );

    go.store(true, Ordering::SeqCst);
    let v = wait_result(&s, "success");
    assert_eq!(v["checksum"], sum2);
    assert!(v.get("process").is_none(), "{v}");
    assert_eq!(status(&s, &[]).code(), 0);
    assert_eq!(
        std::fs::read_dir(s.dest()).unwrap().count(),
        64,
        "dest holds v2"
    );
    // no marker is left; the detached run logged to the state directory's log
    let key = stretcher::record::key_for_dest(&s.dest());
    assert!(!stretcher::record::running_path(&s.state_dir(), &key).exists());
    let log = std::fs::read_to_string(s.state_dir().join("detach.log")).unwrap();
    assert!(log.contains("Deploy manifest succeeded."), "{log}");
    // the event was claimed by the detached run: fired again, it is skipped
    let again = clean(s.stretcher())
        .arg("--detach")
        .env("SERF_EVENT", "user")
        .env("SERF_USER_EVENT", "deploy")
        .env("SERF_USER_LTIME", "5")
        .stdin(srv.url("/m.yml"))
        .run();
    again.assert_ok();
    let _g2 = detached_pid(&again);
    let t = Instant::now();
    while !std::fs::read_to_string(s.state_dir().join("detach.log"))
        .unwrap()
        .contains("superseded")
    {
        assert!(t.elapsed() < Duration::from_secs(20), "never skipped");
        std::thread::sleep(Duration::from_millis(50));
    }
    // and a redeploy onto its own result downloads nothing (the finished record decides)
    let hits = srv.hits("/app.tar");
    clean(s.stretcher())
        .arg(srv.url("/m.yml"))
        .run()
        .assert_ok()
        .assert_log("nothing to download");
    assert_eq!(srv.hits("/app.tar"), hits);
}

#[test]
fn a_killed_detached_deploy_is_interrupted() {
    let s = Scratch::new();
    let (tar, sum) = archive_of(64, 3);
    let go = Arc::new(AtomicBool::new(false));
    let srv = gated_server(tar, &sum, &s.dest(), go.clone());
    let run = clean(s.stretcher())
        .arg("--detach")
        .arg(srv.url("/m.yml"))
        .limit(Duration::from_secs(20))
        .run();
    run.assert_ok();
    let guard = detached_pid(&run);
    let v = wait_result(&s, "running");
    assert_eq!(v["checksum"], sum);

    kill(Pid::from_raw(guard.0), Signal::SIGKILL).unwrap();
    let v = wait_result(&s, "interrupted");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", guard.0)),
        "{v}"
    );
    assert!(v["finished"].is_null(), "{v}");
    let human = status(&s, &[]);
    assert_eq!(human.code(), 1, "{human:?}");
    assert!(
        human.stdout.contains("interrupted (started "),
        "{}",
        human.stdout
    );
    let brief = status(&s, &["--brief", "--json"]);
    assert_eq!(brief.code(), 1);
    let b: Value = serde_json::from_str(&brief.stdout).unwrap();
    assert_eq!(b["deploys"][0]["result"], "interrupted", "{b}");
    // under a serf query: exit 0, the answer says it
    let q = stretcher()
        .env("SERF_EVENT", "query")
        .args(["status", "--brief", "--json", "--state-dir"])
        .arg(s.state_dir())
        .run();
    assert_eq!((q.code(), q.stderr.as_str()), (0, ""), "{q:?}");
    assert!(q.stdout.contains("\"interrupted\""), "{}", q.stdout);

    // the next deploy replaces it, and cleans the killed run's staging
    go.store(true, Ordering::SeqCst);
    clean(s.stretcher())
        .arg(srv.url("/m.yml"))
        .run()
        .assert_ok();
    assert_eq!(shown(&s)["result"], "success");
    assert_eq!(status(&s, &[]).code(), 0);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    // its redeploy downloads nothing
    clean(s.stretcher())
        .arg(srv.url("/m.yml"))
        .run()
        .assert_ok()
        .assert_log("nothing to download");
}

#[test]
fn detach_with_dry_run_is_bad_usage() {
    let s = Scratch::new();
    let run = s.stretcher().args(["--detach", "--dry-run", "x.yml"]).run();
    assert_eq!(run.code(), 2, "{run:?}");
    assert!(run.stderr.contains("--detach"), "{}", run.stderr);
}

/// SPEC §17: a symlink planted at `STATE/detach.log` is refused, never followed, and
/// no deploy is started; a symlink planted at dest's running marker is replaced, not
/// written through.
#[test]
fn a_symlink_planted_at_the_detach_log_is_refused() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.state_dir().join("deploys")).unwrap();
    let victim = s.file("victim", b"untouched\n");
    std::os::unix::fs::symlink(&victim, s.state_dir().join("detach.log")).unwrap();
    let a = s.file("v.tar", &archive_of(2, 4).0);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), ""));
    let run = s.stretcher().arg("--detach").arg(&m).run();
    assert_eq!(run.code(), 1, "{run:?}");
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert!(!run.stderr.contains("Deploy handed"), "{}", run.stderr);
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched\n");
    assert!(!s.dest().exists());

    // the marker: a symlink at its name is replaced by the rename, the victim kept
    let key = stretcher::record::key_for_dest(&s.dest());
    let marker = stretcher::record::running_path(&s.state_dir(), &key);
    std::os::unix::fs::symlink(&victim, &marker).unwrap();
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched\n");
    assert!(std::fs::symlink_metadata(&marker).is_err(), "marker left");
    assert_eq!(status(&s, &[]).code(), 0);
}
