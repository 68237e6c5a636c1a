//! End to end against a real Serf cluster (issue 4; cargo feature `e2e`, needs
//! `serf` on PATH: `apt-get install -y serf`). Three `serf agent`s on 127.0.0.1,
//! each with `-event-handler "user:deploy=stretcher --state-dir ..."` and its own
//! `dest` (the manifest says `dest: {{ must_env "DEST" }}` and every agent has its
//! own `DEST`), one `serf event deploy file:///…/manifest.yml` deploys all three,
//! a second one updates all three. Every agent is killed by pid at the end, also
//! when the test fails (a Drop guard).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::serf::{self, serf, Cluster, Host, Spec};
use crate::util::*;

/// How long the cluster may take to join, and each event to reach every node.
const LIMIT: Duration = Duration::from_secs(60);

/// One agent's private area: its dest, hook marks, state and logs.
struct Agent {
    node: Host,
}

impl Agent {
    fn dest(&self) -> PathBuf {
        self.node.dir.join("parent").join("dest")
    }
    fn marks(&self) -> PathBuf {
        self.node.dir.join("hooks.log")
    }
    fn log(&self) -> PathBuf {
        self.node.dir.join("stretcher.log")
    }
    fn rpc_addr(&self) -> String {
        self.node.rpc_flag()
    }
    fn hook_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.marks())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    fn report(&self) -> String {
        format!(
            "--- {} stretcher log:\n{}\n--- {} agent log:\n{}",
            self.node.name,
            std::fs::read_to_string(self.log()).unwrap_or_default(),
            self.node.name,
            std::fs::read_to_string(self.node.agent_log()).unwrap_or_default(),
        )
    }
}

fn start_agent(cluster: &mut Cluster, agent: &Agent, join: Option<u16>) {
    std::fs::create_dir_all(agent.node.dir.join("parent")).unwrap();
    let handler = format!(
        "user:deploy={} --state-dir {} >> {} 2>&1",
        bin(),
        agent.node.dir.join("state").display(),
        agent.log().display()
    );
    let spec = Spec {
        handlers: vec![handler],
        env: vec![
            ("DEST".into(), agent.dest().into()),
            ("MARKS".into(), agent.marks().into()),
        ],
        profile: Some("local"),
        join,
        ..Spec::default()
    };
    cluster.start(&agent.node, &spec);
}

/// Polls `done` until it holds or LIMIT passes; then panics with `report()`.
fn wait_until(what: &str, done: impl FnMut() -> bool, report: impl Fn() -> String) {
    serf::wait_until(what, LIMIT, done, report)
}

/// Relative path → file contents (directories as `None`), dest's root excluded.
fn files(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| !p.as_os_str().is_empty())
        .map(|(p, n)| {
            let data = match n {
                Node::File { data, .. } => Some(data),
                _ => None,
            };
            (p.display().to_string(), data)
        })
        .collect()
}

/// A release: an archive plus a manifest for it, both under `dir`.
fn release(dir: &Path, name: &str, entries: &[Raw]) -> (String, BTreeMap<String, Option<Vec<u8>>>) {
    let tar = raw_tar(entries);
    let archive = dir.join(format!("{name}.tar"));
    std::fs::write(&archive, &tar).unwrap();
    // unpack once locally to know what a mirror of it looks like
    let expect = dir.join(format!("{name}.expected"));
    tar::Archive::new(&tar[..]).unpack(&expect).unwrap();
    let manifest = dir.join(format!("{name}.yml"));
    std::fs::write(
        &manifest,
        format!(
            "src: {name}.tar\nchecksum: {}\ndest: {{{{ must_env \"DEST\" }}}}\ncommands:\n  pre:\n    - echo pre {name} >> \"$MARKS\"\n  post:\n    - echo post {name} >> \"$MARKS\"\n  success:\n    - echo success {name} >> \"$MARKS\"\n",
            sha1_bytes(&tar)
        ),
    )
    .unwrap();
    (format!("file://{}", manifest.display()), files(&expect))
}

#[test]
fn three_serf_agents_deploy_and_update() {
    let root = tempfile::Builder::new()
        .prefix("stretcher-serf-")
        .tempdir()
        .unwrap();
    let nodes: Vec<Agent> = (0..3)
        .map(|i| Agent {
            node: Host::new(root.path(), &format!("node{i}")),
        })
        .collect();
    let report = || {
        nodes
            .iter()
            .map(Agent::report)
            .collect::<Vec<_>>()
            .join("\n")
    };

    // node0 first; the others join it once its RPC port answers
    let mut cluster = Cluster::default();
    start_agent(&mut cluster, &nodes[0], None);
    serf::wait_rpc(&nodes[0].node, LIMIT);
    for node in &nodes[1..] {
        start_agent(&mut cluster, node, Some(nodes[0].node.bind));
    }
    let all: Vec<&Host> = nodes.iter().map(|n| &n.node).collect();
    serf::wait_alive(&nodes[0].node, &all, LIMIT, report);

    let releases = root.path().join("releases");
    std::fs::create_dir(&releases).unwrap();
    let (url1, tree1) = release(
        &releases,
        "v1",
        &[
            Raw::File(b"index.html", b"<h1>v1</h1>\n"),
            Raw::Dir(b"bin/"),
            Raw::File(b"bin/app", b"#!/bin/sh\necho v1\n"),
            Raw::File(b"old.txt", b"only in v1\n"),
        ],
    );
    let (url2, tree2) = release(
        &releases,
        "v2",
        &[
            // other sizes: raw_tar gives every entry the same mtime, and rsync's
            // quick check keeps a file of the same size and mtime
            Raw::File(b"index.html", b"<h1>version 2</h1>\n"),
            Raw::Dir(b"bin/"),
            Raw::File(b"bin/app", b"#!/bin/sh\necho version 2\n"),
            Raw::Dir(b"assets/"),
            Raw::File(b"assets/app.css", b"body{}\n"),
        ],
    );
    assert!(url1.len() < 400, "serf payloads are small: {url1}");

    // one event, fired at one node, deploys every node
    let out = serf(&["event", &nodes[1].rpc_addr(), "deploy", &url1]);
    assert!(out.status.success(), "serf event: {out:?}");
    let hooks1 = ["pre v1", "post v1", "success v1"];
    wait_until(
        "v1 on every node",
        || {
            nodes
                .iter()
                .all(|n| n.hook_lines() == hooks1 && files(&n.dest()) == tree1)
        },
        report,
    );

    // the second release updates every node (old.txt goes, assets/ arrives)
    let out = serf(&["event", &nodes[2].rpc_addr(), "deploy", &url2]);
    assert!(out.status.success(), "serf event: {out:?}");
    let hooks2 = [
        "pre v1",
        "post v1",
        "success v1",
        "pre v2",
        "post v2",
        "success v2",
    ];
    wait_until(
        "v2 on every node",
        || {
            nodes
                .iter()
                .all(|n| n.hook_lines() == hooks2 && files(&n.dest()) == tree2)
        },
        report,
    );

    // no event ran twice, even a little later; each node remembers the last one
    std::thread::sleep(Duration::from_secs(3));
    for n in &nodes {
        assert_eq!(n.hook_lines(), hooks2, "{}", report());
        let state = std::fs::read_to_string(n.node.dir.join("state").join("event-deploy.json"))
            .unwrap_or_else(|e| panic!("{}: no state file: {e}\n{}", n.node.name, report()));
        assert!(state.contains("\"ltime\":"), "{state}");
        let log = std::fs::read_to_string(n.log()).unwrap();
        assert_eq!(
            log.matches("Deploy manifest succeeded.").count(),
            2,
            "{log}"
        );
        // nothing but dest and its lock beside dest
        let mut beside: Vec<String> = std::fs::read_dir(n.node.dir.join("parent"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        beside.sort();
        assert_eq!(beside, [".dest.stretcher.lock", "dest"], "{}", n.node.name);
    }

    // these agents have no query handler: fleet status says so in one line
    let run = stretcher()
        .args(["fleet", "status", "--timeout", "2s", "--rpc-addr"])
        .arg(nodes[0].node.rpc_addr())
        .run();
    // (who answered, if anyone did: the table on stdout, and each agent's log)
    let who = || format!("{run:?}\n{}", report());
    assert_eq!(run.code(), 1, "{}", who());
    assert_eq!(run.stderr.lines().count(), 1, "{}", who());
    assert!(
        run.stderr
            .contains("no member answered serf query stretcher-status"),
        "{}",
        run.stderr
    );
    drop(cluster);
}
