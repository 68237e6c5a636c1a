//! `stretcher catch-up` end to end (SPEC §20; cargo feature `e2e`, needs `serf`,
//! `minisign` and `unshare`, and root): real `serf agent`s on 127.0.0.1, each
//! in a mount namespace of its own where its private directory is bind-mounted
//! at one shared path, so that every host has its dest at the same path, as a
//! fleet has. Three peers (tag role=web) deploy a signed v1, then v2, through
//! `serf event`; a fourth web member lies in its status answer; a new host with
//! an empty dest joins and catches up to v2 (the liar outvoted), a second run
//! downloads nothing (counted at the HTTP server), the lie wins with `--quorum
//! 1` and is refused by the serial floor, by the signature and by the
//! allow-list; with no peer, or none answering, the exit is 3. A member with 25
//! dests and long manifest URLs answers `serf query` within Serf's 1024 bytes.
//! Every agent is killed by pid at the end, also when the test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stretcher::record::Outcome;

use crate::http::{respond, TestServer};
use crate::signing::{key_pair, sign, KeyPair};
use crate::util::records;
use crate::util::serf::{self, serf, Cluster, Host, Spec};
use crate::util::*;

/// How long the cluster may take to join and each deploy to reach the peers.
const LIMIT: Duration = Duration::from_secs(60);

/// The tag every web member has.
const ROLE: (&str, &str) = ("role", "web");

/// One agent: its serf identity and private directory.
struct Agent {
    host: Host,
}

impl Agent {
    fn new(root: &Path, name: &str) -> Agent {
        let a = Agent {
            host: Host::new(root, name),
        };
        std::fs::create_dir_all(a.parent()).unwrap();
        a
    }
    /// What this host sees at the shared path.
    fn parent(&self) -> PathBuf {
        self.host.dir.join("parent")
    }
    /// Its dest, as seen from outside its namespace.
    fn dest(&self) -> PathBuf {
        self.parent().join("app")
    }
    fn state(&self) -> PathBuf {
        self.host.dir.join("state")
    }
    fn marks(&self) -> PathBuf {
        self.host.dir.join("marks")
    }
    fn log(&self) -> PathBuf {
        self.host.dir.join("stretcher.log")
    }
    fn marks_text(&self) -> String {
        std::fs::read_to_string(self.marks()).unwrap_or_default()
    }
    fn report(&self) -> String {
        let agent = std::fs::read_to_string(self.host.agent_log()).unwrap_or_default();
        let lines: Vec<&str> = agent.lines().collect();
        format!(
            "--- {} stretcher log:\n{}\n--- {} agent log (tail):\n{}",
            self.host.name,
            std::fs::read_to_string(self.log()).unwrap_or_default(),
            self.host.name,
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }
}

/// The status handler line for `state`.
fn status_handler(state: &Path) -> String {
    format!(
        "query:{}={} status --brief --json --state-dir {}",
        stretcher::fleet::QUERY,
        bin(),
        state.display()
    )
}

/// The signed release server: `vN.tar` and `vN.yml` (+ `.minisig`), every
/// manifest naming the shared dest.
struct Releases {
    dir: PathBuf,
    server: TestServer,
    key: KeyPair,
}

impl Releases {
    fn start(root: &Path) -> Releases {
        let dir = root.join("www");
        std::fs::create_dir(&dir).unwrap();
        let key = key_pair(root, "fleet");
        let files = dir.clone();
        let server = TestServer::start(move |req, w| {
            let name = req.path.trim_start_matches('/');
            match std::fs::read(files.join(name)) {
                Ok(body) if !name.contains('/') && !name.is_empty() => respond(w, "200 OK", &body),
                _ => respond(w, "404 Not Found", b"not found\n"),
            }
        });
        Releases { dir, server, key }
    }

    /// Release `name` with `serial` for `dest`: its archive and its manifest,
    /// signed when `signed`; its URL and what a mirror of it holds.
    fn make(
        &self,
        name: &str,
        serial: u64,
        dest: &Path,
        signed: bool,
        files: &[Raw],
    ) -> (String, BTreeMap<String, Vec<u8>>) {
        let tar = raw_tar(files);
        std::fs::write(self.dir.join(format!("{name}.tar")), &tar).unwrap();
        let manifest = self.dir.join(format!("{name}.yml"));
        std::fs::write(
            &manifest,
            format!(
                "src: {name}.tar\nchecksum: {}\ndest: {}\nserial: {serial}\ncommands:\n  success:\n    - echo {name} >> \"$MARKS\"\n",
                sha1_bytes(&tar),
                dest.display()
            ),
        )
        .unwrap();
        if signed {
            sign(&self.key, &manifest, &[], &format!("release {name}"));
        }
        let tree = files
            .iter()
            .filter_map(|f| match f {
                Raw::File(p, d) => Some((String::from_utf8_lossy(p).into_owned(), d.to_vec())),
                _ => None,
            })
            .collect();
        (self.server.url(&format!("/{name}.yml")), tree)
    }

    fn requests(&self) -> usize {
        self.server.all().len()
    }
}

/// The regular files under `root`, relative path → contents.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot(root)
        .into_iter()
        .filter_map(|(p, n)| match n {
            Node::File { data, .. } => Some((p.display().to_string(), data)),
            _ => None,
        })
        .collect()
}

/// `stretcher catch-up ARGS` on `host`, inside a mount namespace where its parent
/// directory is at `shared`, with the flags every run here uses.
fn catch_up(host: &Agent, shared: &Path, rel: &Releases, args: &[&str]) -> Run {
    let mut ns = vec![
        "--mount".to_string(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#.into(),
        "sh".into(),
    ];
    ns.push(host.parent().display().to_string());
    ns.push(shared.display().to_string());
    ns.push(bin().to_string());
    stretcher_program("unshare")
        .args(ns)
        .args(["catch-up", "--rpc-addr", &host.host.rpc_addr()])
        .arg("--state-dir")
        .arg(host.state())
        .arg("--trusted-key")
        .arg(&rel.key.public)
        .args(["--allow-url", &rel.server.url("/")])
        .args(args)
        .env("MARKS", host.marks())
        .limit(Duration::from_secs(90))
        .run()
}

/// The last record of the shared dest in `agent`'s state directory.
fn last_record(agent: &Agent, dest: &Path) -> Option<stretcher::record::Record> {
    stretcher::record::last(&agent.state(), dest)
}

#[test]
fn a_new_host_catches_up_with_its_peers() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the hosts' mount namespaces need root");
        return;
    }
    let root = tempfile::Builder::new()
        .prefix("stretcher-catchup-")
        .tempdir()
        .unwrap();
    // the path every host has its dest at
    let shared = root.path().join("srv");
    std::fs::create_dir(&shared).unwrap();
    let dest = shared.join("app");
    let rel = Releases::start(root.path());

    let peers: Vec<Agent> = (0..3)
        .map(|i| Agent::new(root.path(), &format!("web{i}")))
        .collect();
    let liar = Agent::new(root.path(), "liar");
    let fresh = Agent::new(root.path(), "fresh");
    let db = Agent::new(root.path(), "db0");
    let big = Agent::new(root.path(), "big");
    let all = || [&peers[0], &peers[1], &peers[2], &liar, &fresh, &db, &big];
    let report = || {
        all()
            .iter()
            .map(|a| a.report())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let logged = |run: &Run, needle: &str| {
        assert!(
            run.stderr.contains(needle),
            "log lacks {needle:?}:\n{}\n{}",
            run.stderr,
            report()
        )
    };

    let allow = rel.server.url("/");
    let mut cluster = Cluster::default();
    for (i, p) in peers.iter().enumerate() {
        let deploy = format!(
            "user:deploy={} --state-dir {} --trusted-key {} --allow-url {allow} >> {} 2>&1",
            bin(),
            p.state().display(),
            rel.key.public.display(),
            p.log().display()
        );
        let spec = Spec {
            handlers: vec![deploy, status_handler(&p.state())],
            env: vec![("MARKS".into(), p.marks().into())],
            tags: vec![(ROLE.0.into(), ROLE.1.into())],
            profile: None,
            join: (i > 0).then_some(peers[0].host.bind),
            ..Spec::default()
        };
        cluster.start_in(&p.host, &spec, Some((&p.parent(), &shared)));
        if i == 0 {
            serf::wait_rpc(&p.host, LIMIT);
        }
    }
    // the liar answers what its file says
    let lie = liar.host.dir.join("answer.json");
    let member = |handlers: Vec<String>, role: &str| Spec {
        handlers,
        tags: vec![(ROLE.0.into(), role.into())],
        profile: None,
        join: Some(peers[0].host.bind),
        ..Spec::default()
    };
    let liar_handler = format!("query:{}=cat {}", stretcher::fleet::QUERY, lie.display());
    cluster.start(&liar.host, &member(vec![liar_handler], ROLE.1));
    // a member of another role, with no status handler
    cluster.start(&db.host, &member(Vec::new(), "db"));
    cluster.start(
        &big.host,
        &member(vec![status_handler(&big.state())], "big"),
    );
    let first = &peers[0].host;
    serf::wait_until(
        "six alive members",
        LIMIT,
        || serf::members_with_status(first, "alive").len() == 6,
        report,
    );

    // the peers run v1, then v2
    let (url1, _) = rel.make(
        "v1",
        1,
        &dest,
        true,
        &[
            Raw::File(b"index.html", b"<h1>v1</h1>\n"),
            Raw::File(b"old.txt", b"only in v1\n"),
        ],
    );
    let (url2, tree2) = rel.make(
        "v2",
        2,
        &dest,
        true,
        &[
            Raw::File(b"index.html", b"<h1>version 2</h1>\n"),
            Raw::Dir(b"css/"),
            Raw::File(b"css/app.css", b"body{}\n"),
        ],
    );
    let (unsigned, _) = rel.make(
        "unsigned",
        50,
        &dest,
        false,
        &[Raw::File(b"index.html", b"<h1>not signed</h1>\n")],
    );
    for (url, name) in [(&url1, "v1"), (&url2, "v2")] {
        let out = serf(&["event", &peers[1].host.rpc_flag(), "deploy", url]);
        assert!(out.status.success(), "serf event: {out:?}");
        serf::wait_until(
            &format!("{name} on every peer"),
            LIMIT,
            || {
                peers.iter().all(|p| {
                    last_record(p, &dest)
                        .is_some_and(|r| r.result == Outcome::Success && r.manifest_url == *url)
                })
            },
            report,
        );
    }
    for p in &peers {
        assert_eq!(files(&p.dest()), tree2, "{}", report());
    }

    // the liar claims the old v1 with a huge serial and a late finish
    let lie_about = |deploys: &[(&Path, &str)]| {
        let list: Vec<serde_json::Value> = deploys
            .iter()
            .map(|(d, url)| {
                serde_json::json!({
                    "dest": d.display().to_string(), "result": "success",
                    "checksum": "0123456789ab", "finished": "2999-01-01T00:00:00.000Z",
                    "failed_step": null, "error": null, "manifest_url": url,
                    "serial": 999_999,
                })
            })
            .collect();
        let answer = serde_json::json!({"host": "liar", "deploys": list});
        std::fs::write(&lie, answer.to_string()).unwrap();
    };
    lie_about(&[(&dest, &url1)]);

    // a new host with an empty dest joins the running cluster
    cluster.start_in(
        &fresh.host,
        &Spec {
            handlers: vec![status_handler(&fresh.state())],
            tags: vec![(ROLE.0.into(), ROLE.1.into())],
            profile: None,
            join: Some(peers[0].host.bind),
            ..Spec::default()
        },
        Some((&fresh.parent(), &shared)),
    );
    serf::wait_rpc(&fresh.host, LIMIT);
    serf::wait_until(
        "seven alive members",
        LIMIT,
        || serf::members_with_status(&fresh.host, "alive").len() == 7,
        report,
    );
    assert!(!fresh.dest().exists());
    // Serf gossips queries and answers over UDP: on a busy machine a member can lag
    // for tens of seconds. Wait until the query reaches every web member and their
    // answers come back, asked from the new host as catch-up will ask it.
    serf::wait_until(
        "every web member answers the status query",
        LIMIT,
        || {
            let out = serf(&[
                "query",
                &fresh.host.rpc_flag(),
                "-tag=role=web",
                "-format=json",
                "-timeout=3s",
                stretcher::fleet::QUERY,
            ]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            ["web0", "web1", "web2", "liar"]
                .iter()
                .all(|n| v["Responses"][n].is_string())
        },
        report,
    );

    // it catches up to v2: three peers outvote the liar
    let before = rel.server.hits("/v2.tar");
    let run = catch_up(&fresh, &shared, &rel, &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stderr, report());
    assert_eq!(files(&fresh.dest()), tree2);
    assert_eq!(rel.server.hits("/v2.tar"), before + 1);
    assert_eq!(rel.server.hits("/v1.yml"), 3, "only the peers fetched v1");
    assert_eq!(fresh.marks_text(), "v2\n");
    for needle in [
        "this host is serf node fresh; 4 alive peer(s) with tags role=web",
        "4 of 4 peer(s) answered: liar, web0, web1, web2",
        "reported by 3 of 4 peers: web0, web1, web2",
    ] {
        logged(&run, needle);
    }
    let rec = last_record(&fresh, &dest).unwrap();
    assert_eq!((rec.result, rec.serial), (Outcome::Success, Some(2)));

    // a second run downloads nothing and runs no hook
    let requests = rel.requests();
    let run = catch_up(&fresh, &shared, &rel, &[]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stderr, report());
    logged(&run, "is current");
    assert_eq!(rel.requests(), requests, "{:?}", rel.server.all());
    assert_eq!(fresh.marks_text(), "v2\n");

    // with --quorum 1 the liar's old manifest wins the count, and the serial
    // floor refuses it: dest stays at v2
    let run = catch_up(&fresh, &shared, &rel, &["--quorum", "1"]);
    assert_eq!(run.code(), 1, "{}\n{}", run.stderr, report());
    logged(&run, "serial 1 is lower than 2");
    assert_eq!(files(&fresh.dest()), tree2);
    let rec = last_record(&fresh, &dest).unwrap();
    assert_eq!(rec.result, Outcome::Refused);
    assert_eq!(fresh.marks_text(), "v2\n");

    // an unsigned manifest, and one outside --allow-url, are refused
    let foreign = TestServer::start(|_, w| respond(w, "200 OK", b"dest: /\n"));
    let other = shared.join("other");
    let foreign_url = foreign.url("/evil.yml");
    lie_about(&[(&dest, &unsigned), (&other, &foreign_url)]);
    let run = catch_up(&fresh, &shared, &rel, &["--quorum", "1"]);
    assert_eq!(run.code(), 1, "{}\n{}", run.stderr, report());
    logged(&run, "signature");
    logged(&run, "--allow-url");
    assert!(foreign.all().is_empty(), "{:?}", foreign.all());
    assert_eq!(rel.server.hits("/unsigned.tar"), 0);
    assert_eq!(files(&fresh.dest()), tree2);
    assert!(!fresh.parent().join("other").exists());
    assert_eq!(fresh.marks_text(), "v2\n");
    // ... and without --quorum 1 the liar alone reaches no quorum: skipped
    let run = catch_up(&fresh, &shared, &rel, &[]);
    assert_eq!(run.code(), 1, "{}\n{}", run.stderr, report());
    logged(&run, "is current");
    logged(&run, "skipped: no manifest reaches the quorum");

    // no peer: none with that role, or none that answers
    let run = catch_up(&fresh, &shared, &rel, &["--tag", "role=nobody"]);
    assert_eq!(run.code(), 3, "{}\n{}", run.stderr, report());
    let run = catch_up(
        &fresh,
        &shared,
        &rel,
        &["--tag", "role=db", "--query-timeout", "2s"],
    );
    assert_eq!(run.code(), 3, "{}\n{}", run.stderr, report());
    logged(&run, "none of the 1 peer(s) answered");

    // 25 dests with long manifest URLs: the answer, through a real agent, fits
    // Serf's 1024-byte response limit
    for i in 0..25 {
        let d = format!("/srv/application-number-{i:02}");
        let mut r = records::record(
            &d,
            Outcome::Success,
            &"ab".repeat(20),
            &format!("2026-12-01T10:00:{i:02}.000Z"),
            None,
        );
        r.manifest_url = format!(
            "https://releases.example.com/manifests/{}/application-number-{i:02}.yml",
            "x".repeat(60)
        );
        r.serial = Some(1000 + i);
        records::write(&big.state(), &r);
    }
    let out = serf(&[
        "query",
        &big.host.rpc_flag(),
        "-node=big",
        "-format=json",
        "-timeout=5s",
        stretcher::fleet::QUERY,
    ]);
    assert!(out.status.success(), "serf query: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer = v["Responses"]["big"]
        .as_str()
        .unwrap_or_else(|| panic!("no answer from big: {v}\n{}", report()));
    assert!(answer.len() <= 1024, "{}", answer.len());
    let brief: serde_json::Value = serde_json::from_str(answer).unwrap();
    let deploys = brief["deploys"].as_array().unwrap();
    assert!(!deploys.is_empty(), "{answer}");
    assert_eq!(
        deploys.len() as u64 + brief["omitted"].as_u64().unwrap_or(0),
        25,
        "{answer}"
    );
    for d in deploys {
        let url = d["manifest_url"].as_str().unwrap();
        assert!(
            url.ends_with(".yml") && url.contains(&"x".repeat(60)),
            "{d}"
        );
        assert!(d["serial"].as_u64().unwrap() >= 1000, "{d}");
    }
    drop(cluster);
}
