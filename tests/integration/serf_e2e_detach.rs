//! End to end (cargo feature `e2e`, `serf` on PATH): a real `serf agent` whose deploy
//! handler line has `--detach` answers `serf query stretcher-status` *while* the deploy
//! runs, with `running` and the checksum being deployed, then `success` (SPEC §13).
//! The source is a local HTTP server that holds half the archive back until the test
//! lets it go. The agent is killed by pid at the end, also when the test fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

    go.store(true, Ordering::SeqCst);
    serf::wait_until(
        "the host to answer success",
        LIMIT,
        || ask(&node).is_some_and(|v| v["deploys"][0]["result"] == "success"),
        report,
    );
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 64);
    // the detached deploy logged where the GUIDE says
    let log = std::fs::read_to_string(state.join("detach.log")).unwrap();
    assert!(log.contains("Deploy manifest succeeded."), "{log}");
}
