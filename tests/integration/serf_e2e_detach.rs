//! End to end (cargo feature `e2e`, `serf` on PATH): a real `serf agent` whose deploy
//! handler line has `--detach` answers `serf query stretcher-status` *while* the deploy
//! runs, with `running` and the checksum being deployed; `stretcher fleet status` lists
//! it `running` in one round; the detached deploy SIGKILLed (its pid from the record)
//! shows `interrupted` (exit 1); a new event then deploys it: `success` (SPEC §13).
//! The source is a local HTTP server that holds half the archive back until the test
//! lets it go. The agent is killed by pid at the end, also when the test fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::detach::{archive_of, gated_server};
use crate::util::serf::{self, serf, Cluster, Host, Spec};
use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

/// This host's answer to one `stretcher-status` query (`None`: no answer this round).
fn ask(node: &Host) -> Option<Value> {
    let out = serf(&[
        "query",
        &node.rpc_flag(),
        "-format=json",
        "-timeout=2s",
        "stretcher-status",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let answer = v["Responses"][node.name.as_str()].as_str()?;
    serde_json::from_str(answer).ok()
}

/// `stretcher fleet status` against `node`'s agent.
fn fleet(node: &Host) -> Run {
    stretcher()
        .args(["fleet", "status", "--rpc-addr", &node.rpc_addr()])
        .limit(Duration::from_secs(30))
        .run()
}

/// The table row of web-1 in `out` (empty if none).
fn rows(out: &str) -> String {
    out.lines()
        .filter(|l| l.split_whitespace().next() == Some("web-1"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills the detached deploy by pid if the test ends before it did.
struct Detached(i32);

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

#[test]
fn a_detached_deploy_leaves_the_agent_free_to_answer_running() {
    let root = tempfile::Builder::new()
        .prefix("stretcher-serf-detach-")
        .tempdir()
        .unwrap();
    let node = Host::new(root.path(), "web-1");
    let dest = node.dir.join("parent").join("dest");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let state = node.dir.join("state");
    let (tar, sum) = archive_of(64, 9);
    let go = Arc::new(AtomicBool::new(false));
    let srv = gated_server(tar, &sum, &dest, go.clone());

    let mut cluster = Cluster::default();
    let spec = Spec {
        handlers: vec![
            format!(
                "user:deploy={} --detach --state-dir {}",
                bin(),
                state.display()
            ),
            format!(
                "query:stretcher-status={} status --brief --json --state-dir {}",
                bin(),
                state.display()
            ),
        ],
        profile: Some("local"),
        ..Spec::default()
    };
    cluster.start(&node, &spec);
    serf::wait_rpc(&node, LIMIT);
    let report = || {
        format!(
            "--- agent log:\n{}\n--- detach.log:\n{}",
            std::fs::read_to_string(node.agent_log()).unwrap_or_default(),
            std::fs::read_to_string(state.join("detach.log")).unwrap_or_default()
        )
    };
    let fired = serf(&["event", &node.rpc_flag(), "deploy", &srv.url("/m.yml")]);
    assert!(fired.status.success(), "{fired:?}");

    // answered during the deploy (the source still holds half the archive back)
    let mut running = None;
    serf::wait_until(
        "the host to answer running",
        LIMIT,
        || {
            running = ask(&node).filter(|v| {
                v["deploys"].as_array().is_some_and(|d| {
                    d.iter()
                        .any(|d| d["result"] == "running" && !d["checksum"].is_null())
                })
            });
            running.is_some()
        },
        report,
    );
    assert!(!go.load(Ordering::SeqCst));
    let v = running.unwrap();
    let d = &v["deploys"][0];
    assert_eq!(d["checksum"], sum[..12], "{v}");
    assert_eq!(d["dest"], dest.display().to_string());
    assert_eq!(d["manifest_url"], srv.url("/m.yml"));
    assert!(d["started"].is_string() && d["finished"].is_null(), "{v}");

    // `fleet status` lists it running, in one round that ends once it answered
    let round = Instant::now();
    let run = fleet(&node);
    eprintln!(
        "fleet status over 1 agent with a detached deploy running: {:.2?}",
        round.elapsed()
    );
    assert_eq!(run.code(), 1, "{run:?}\n{}", report());
    assert!(
        run.stdout.contains(
            "1 answered of 1 alive members: 0 success, 0 failure, 0 silent, 0 unreachable, \
             1 running (web-1)"
        ),
        "{}\n{}",
        run.stdout,
        report()
    );
    let row = rows(&run.stdout);
    assert!(
        row.contains(" running ") && row.contains(&sum[..12]) && row.contains("deploying since "),
        "{}",
        run.stdout
    );
    assert!(!go.load(Ordering::SeqCst));

    // the detached deploy SIGKILLed (its pid from the record): interrupted, exit 1
    let local = stretcher()
        .args(["status", "--json", "--state-dir"])
        .arg(&state)
        .limit(Duration::from_secs(20))
        .run();
    let v: Value = serde_json::from_str(&local.stdout).unwrap_or_else(|e| panic!("{e}: {local:?}"));
    let pid = v[0]["process"]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no process.pid in the record: {v}"));
    let _guard = Detached(pid as i32);
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let mut shown = None;
    serf::wait_until(
        "fleet status to show the killed deploy interrupted",
        LIMIT,
        || {
            let run = fleet(&node);
            let done = rows(&run.stdout).contains(" interrupted ");
            shown = Some(run);
            done
        },
        report,
    );
    let run = shown.unwrap();
    assert_eq!(run.code(), 1, "{run:?}");
    assert!(
        run.stdout
            .contains("1 answered of 1 alive members: 0 success, 1 failure, 0 silent"),
        "{}",
        run.stdout
    );
    assert!(
        rows(&run.stdout).contains(&format!(
            "the deploy process (pid {pid}) ended without finishing its record"
        )),
        "{}",
        run.stdout
    );

    // deployed again (a new event), the source no longer holding back: success
    go.store(true, Ordering::SeqCst);
    let fired = serf(&["event", &node.rpc_flag(), "deploy", &srv.url("/m.yml")]);
    assert!(fired.status.success(), "{fired:?}");
    serf::wait_until(
        "the host to answer success",
        LIMIT,
        || ask(&node).is_some_and(|v| v["deploys"][0]["result"] == "success"),
        report,
    );
    let run = fleet(&node);
    assert_eq!(run.code(), 0, "{run:?}");
    assert!(rows(&run.stdout).contains(" success "), "{}", run.stdout);
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 64);
    // the detached deploy logged where the GUIDE says
    let log = std::fs::read_to_string(state.join("detach.log")).unwrap();
    assert!(log.contains("Deploy manifest succeeded."), "{log}");
}
