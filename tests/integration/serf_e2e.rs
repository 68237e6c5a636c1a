//! End to end against a real Serf cluster (issue 4; cargo feature `e2e`, needs
//! `serf` on PATH: `apt-get install -y serf`). Three `serf agent`s on 127.0.0.1,
//! each with `-event-handler "user:deploy=stretcher --state-dir ..."` and its own
//! `dest` (the manifest says `dest: {{ must_env "DEST" }}` and every agent has its
//! own `DEST`), one `serf event deploy file:///…/manifest.yml` deploys all three,
//! a second one updates all three. Every agent is killed by pid at the end, also
//! when the test fails (a Drop guard).

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// How long the cluster may take to join, and each event to reach every node.
const LIMIT: Duration = Duration::from_secs(60);

/// A port free for both TCP and UDP on 127.0.0.1 (serf gossips over both).
fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP+UDP port on 127.0.0.1");
}

/// One agent's private area: its dest, hook marks, state and logs.
struct Agent {
    name: String,
    dir: PathBuf,
    bind: u16,
    rpc: u16,
}

impl Agent {
    fn dest(&self) -> PathBuf {
        self.dir.join("parent").join("dest")
    }
    fn marks(&self) -> PathBuf {
        self.dir.join("hooks.log")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("stretcher.log")
    }
    fn rpc_addr(&self) -> String {
        format!("-rpc-addr=127.0.0.1:{}", self.rpc)
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
            self.name,
            std::fs::read_to_string(self.log()).unwrap_or_default(),
            self.name,
            std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default(),
        )
    }
}

/// The running agents; killed (by pid) and reaped when dropped.
struct Cluster {
    agents: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.agents {
            let _ = child.kill();
        }
        for child in &mut self.agents {
            let _ = child.wait();
        }
    }
}

fn serf(args: &[&str]) -> Output {
    Command::new("serf")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run serf (apt-get install -y serf): {e}"))
}

fn start_agent(node: &Agent, join: Option<u16>) -> Child {
    std::fs::create_dir_all(node.dir.join("parent")).unwrap();
    let handler = format!(
        "user:deploy={} --state-dir {} >> {} 2>&1",
        bin(),
        node.dir.join("state").display(),
        node.log().display()
    );
    let mut cmd = Command::new("serf");
    cmd.arg("agent")
        .arg(format!("-node={}", node.name))
        .arg(format!("-bind=127.0.0.1:{}", node.bind))
        .arg(node.rpc_addr())
        .arg("-profile=local")
        .arg("-log-level=info")
        .arg(format!("-event-handler={handler}"))
        .env("DEST", node.dest())
        .env("MARKS", node.marks())
        .current_dir(&node.dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(node.dir.join("agent.log")).unwrap())
        .stderr(Stdio::inherit());
    for k in EVENT_VARS {
        cmd.env_remove(k);
    }
    if let Some(port) = join {
        cmd.arg(format!("-join=127.0.0.1:{port}"));
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start serf agent (apt-get install -y serf): {e}"))
}

/// Polls `done` until it holds or LIMIT passes; then panics with `report()`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool, report: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > LIMIT {
            panic!("{what}: not done after {LIMIT:?}\n{}", report());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
            name: format!("node{i}"),
            dir: root.path().join(format!("node{i}")),
            bind: free_port(),
            rpc: free_port(),
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
    let mut cluster = Cluster { agents: Vec::new() };
    cluster.agents.push(start_agent(&nodes[0], None));
    wait_until(
        "node0 RPC up",
        || TcpStream::connect(("127.0.0.1", nodes[0].rpc)).is_ok(),
        report,
    );
    for node in &nodes[1..] {
        cluster.agents.push(start_agent(node, Some(nodes[0].bind)));
    }
    wait_until(
        "three alive members",
        || {
            let out = serf(&["members", &nodes[0].rpc_addr(), "-status=alive"]);
            String::from_utf8_lossy(&out.stdout).lines().count() == 3
        },
        report,
    );

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
        let state = std::fs::read_to_string(n.dir.join("state").join("event-deploy.json"))
            .unwrap_or_else(|e| panic!("{}: no state file: {e}\n{}", n.name, report()));
        assert!(state.contains("\"ltime\":"), "{state}");
        let log = std::fs::read_to_string(n.log()).unwrap();
        assert_eq!(
            log.matches("Deploy manifest succeeded.").count(),
            2,
            "{log}"
        );
        // nothing but dest and its lock beside dest
        let mut beside: Vec<String> = std::fs::read_dir(n.dir.join("parent"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        beside.sort();
        assert_eq!(beside, [".dest.stretcher.lock", "dest"], "{}", n.name);
    }
    drop(cluster);
}
