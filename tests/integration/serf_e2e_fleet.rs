//! The fleet view end to end (SPEC §13; cargo feature `e2e`, needs `serf` on
//! PATH): ten real `serf agent`s on 127.0.0.1 with serf's default `lan` profile,
//! each with its own dest and state directory and both handlers,
//! `user:deploy=stretcher ...` and `query:stretcher-status=stretcher status
//! --brief --json ...`. One `serf event deploy URL`; one host's environment makes
//! its `pre` fail; `stretcher fleet status` sees it, then sees the fix, a member
//! that left (not counted) and one killed with SIGKILL (unreachable). Besides: a
//! forged answer, rounds that end once every member answered (with running,
//! partial and split hosts, the RPC client itself, a killed agent), and an agent
//! whose RPC wants a key. Every agent is killed by pid at the end, also when the
//! test fails.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use stretcher::record::Outcome;

use crate::util::records;
use crate::util::serf::{self, serf, Cluster, Host, Spec};
use crate::util::*;

/// How long the cluster may take to join, a deploy to reach every node, and a
/// killed member to be declared failed.
const LIMIT: Duration = Duration::from_secs(60);

/// The agent whose `pre` fails (its PRE_BLOCK file exists).
const BLOCKED: usize = 3;

struct Agent {
    host: Host,
}

impl Agent {
    fn dest(&self) -> PathBuf {
        self.host.dir.join("parent").join("dest")
    }
    fn state(&self) -> PathBuf {
        self.host.dir.join("state")
    }
    fn marks(&self) -> PathBuf {
        self.host.dir.join("outcomes")
    }
    fn block(&self) -> PathBuf {
        self.host.dir.join("block")
    }
    fn log(&self) -> PathBuf {
        self.host.dir.join("stretcher.log")
    }
    fn outcomes(&self) -> Vec<String> {
        std::fs::read_to_string(self.marks())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    fn report(&self) -> String {
        format!(
            "--- {} stretcher log:\n{}\n--- {} agent log (tail):\n{}",
            self.host.name,
            std::fs::read_to_string(self.log()).unwrap_or_default(),
            self.host.name,
            tail(&std::fs::read_to_string(self.host.agent_log()).unwrap_or_default()),
        )
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn start(cluster: &mut Cluster, i: usize, a: &Agent, join: Option<u16>) {
    std::fs::create_dir_all(a.host.dir.join("parent")).unwrap();
    let state = a.state().display().to_string();
    let deploy = format!(
        "user:deploy={} --state-dir {state} >> {} 2>&1",
        bin(),
        a.log().display()
    );
    let status = format!(
        "query:{}={} status --brief --json --state-dir {state}",
        stretcher::fleet::QUERY,
        bin()
    );
    let role = if i.is_multiple_of(2) { "web" } else { "db" };
    let spec = Spec {
        handlers: vec![deploy, status],
        env: vec![
            ("DEST".into(), a.dest().into()),
            ("MARKS".into(), a.marks().into()),
            ("PRE_BLOCK".into(), a.block().into()),
        ],
        tags: vec![("role".into(), role.into())],
        join,
        ..Spec::default()
    };
    cluster.start(&a.host, &spec);
}

/// `stretcher fleet status ARGS` against `via`'s agent.
fn fleet(via: &Agent, args: &[&str]) -> Run {
    stretcher()
        .args(["fleet", "status", "--rpc-addr", &via.host.rpc_addr()])
        .args(args)
        .limit(Duration::from_secs(90))
        .run()
}

/// `stretcher fleet status ARGS` with stderr on a terminal (a pty): its exit
/// status, stdout, and what it showed on the terminal.
fn fleet_on_tty(via: &Agent, args: &[&str]) -> (i32, String, String) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["fleet", "status", "--rpc-addr", &via.host.rpc_addr()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(pty.slave));
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // our copy of the pty's slave end: the master sees EOF when the child exits
    let mut master = std::fs::File::from(pty.master);
    let terminal = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = master.read_to_end(&mut v); // ends with EIO once the slave is closed
        String::from_utf8_lossy(&v).into_owned()
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fleet status on a tty did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        stdout,
        terminal.join().unwrap(),
    )
}

/// The table rows of `out` that start with `node`.
fn rows<'a>(out: &'a str, node: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.split_whitespace().next() == Some(node))
        .collect()
}

#[test]
fn ten_agents_answer_fleet_status() {
    let root = tempfile::Builder::new()
        .prefix("stretcher-fleet-")
        .tempdir()
        .unwrap();
    let agents: Vec<Agent> = (0..10)
        .map(|i| Agent {
            host: Host::new(root.path(), &format!("node{i:02}")),
        })
        .collect();
    let report = || {
        agents
            .iter()
            .map(Agent::report)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let test_start = Instant::now();

    let mut cluster = Cluster::default();
    start(&mut cluster, 0, &agents[0], None);
    serf::wait_rpc(&agents[0].host, LIMIT);
    for (i, a) in agents.iter().enumerate().skip(1) {
        start(&mut cluster, i, a, Some(agents[0].host.bind));
    }
    let first = &agents[0].host;
    let all: Vec<&Host> = agents.iter().map(|a| &a.host).collect();
    serf::wait_alive(first, &all, LIMIT, report);

    // the release, and one host whose environment makes its pre fail
    let release = root.path().join("release");
    std::fs::create_dir(&release).unwrap();
    let tar = raw_tar(&[
        Raw::File(b"index.html", b"<h1>fleet</h1>\n"),
        Raw::Dir(b"bin/"),
        Raw::File(b"bin/app", b"#!/bin/sh\necho fleet\n"),
    ]);
    std::fs::write(release.join("app.tar"), &tar).unwrap();
    let checksum = sha1_bytes(&tar);
    let manifest = release.join("app.yml");
    std::fs::write(
        &manifest,
        format!(
            "src: app.tar\nchecksum: {checksum}\ndest: {{{{ must_env \"DEST\" }}}}\ncommands:\n  pre:\n    - test ! -e \"$PRE_BLOCK\"\n  success:\n    - echo success >> \"$MARKS\"\n  failure:\n    - echo failure >> \"$MARKS\"\n"
        ),
    )
    .unwrap();
    let url = format!("file://{}", manifest.display());
    std::fs::write(agents[BLOCKED].block(), "").unwrap();

    // one event deploys everywhere; the blocked host fails at pre
    let out = serf(&["event", &agents[1].host.rpc_flag(), "deploy", &url]);
    assert!(out.status.success(), "serf event: {out:?}");
    serf::wait_until(
        "the first deploy ended on every node",
        LIMIT,
        || agents.iter().all(|a| a.outcomes().len() == 1),
        report,
    );
    for (i, a) in agents.iter().enumerate() {
        let want = if i == BLOCKED { "failure" } else { "success" };
        assert_eq!(a.outcomes(), [want], "{}\n{}", a.host.name, report());
    }

    // the query round with serf's default timeout, timed
    let round = Instant::now();
    let run = fleet(&agents[0], &["--checksum", &checksum]);
    let round = round.elapsed();
    eprintln!("fleet status over 10 agents (serf's default query timeout): {round:.2?}");
    assert_eq!(run.code(), 1, "{run:?}\n{}", report());
    assert!(
        run.stdout.contains(
            "10 answered of 10 alive members: 9 success, 1 failure, 0 silent, 0 unreachable"
        ),
        "{}\n{}",
        run.stdout,
        report()
    );
    let blocked = rows(&run.stdout, "node03");
    assert_eq!(blocked.len(), 1, "{}", run.stdout);
    assert!(blocked[0].contains(" failure "), "{}", blocked[0]);
    assert!(
        blocked[0].contains("failed at pre: failed: test ! -e \"$PRE_BLOCK\" exit status 1"),
        "{}",
        blocked[0]
    );
    assert!(blocked[0].contains(&agents[BLOCKED].dest().display().to_string()));
    for a in agents.iter().filter(|a| a.host.name != "node03") {
        let r = rows(&run.stdout, &a.host.name);
        assert_eq!(r.len(), 1, "{}", run.stdout);
        assert!(
            r[0].contains(" success ") && r[0].contains(&checksum[..12]),
            "{}",
            r[0]
        );
    }
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    // fix the cause, fire again: every host succeeds
    std::fs::remove_file(agents[BLOCKED].block()).unwrap();
    let out = serf(&["event", &agents[2].host.rpc_flag(), "deploy", &url]);
    assert!(out.status.success(), "serf event: {out:?}");
    serf::wait_until(
        "the second deploy ended on every node",
        LIMIT,
        || agents.iter().all(|a| a.outcomes().len() == 2),
        report,
    );
    assert!(
        agents.iter().all(|a| a.outcomes()[1] == "success"),
        "{}",
        report()
    );
    let run = fleet(&agents[4], &["--checksum", &checksum, "--timeout", "3s"]);
    assert_eq!(run.code(), 0, "{run:?}\n{}", report());
    assert!(
        run.stdout.contains(
            "10 answered of 10 alive members: 10 success, 0 failure, 0 silent, 0 unreachable"
        ),
        "{}",
        run.stdout
    );
    // on a terminal it shows the hosts answered so far; the result is the same
    let (code, stdout, terminal) = fleet_on_tty(&agents[5], &["--timeout", "3s"]);
    assert_eq!(code, 0, "{stdout}\n{terminal}");
    assert!(
        stdout.contains("10 answered of 10 alive members: 10 success"),
        "{stdout}"
    );
    assert!(
        terminal.contains("10 of 10 alive members answered"),
        "{terminal:?}"
    );
    assert!(terminal.ends_with("\r\x1b[K"), "{terminal:?}");

    // another checksum: converged elsewhere, so the check fails
    let run = fleet(
        &agents[4],
        &["--checksum", "0123456789ab", "--timeout", "3s"],
    );
    assert_eq!(run.code(), 1, "{run:?}");
    assert!(
        run.stdout.contains("0 success, 10 failure"),
        "{}",
        run.stdout
    );

    // --tag role=web selects the even half; --json says the same
    let run = fleet(
        &agents[1],
        &["--tag", "role=web", "--timeout", "3s", "--json"],
    );
    assert_eq!(run.code(), 0, "{run:?}");
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["alive"], 5, "{json}");
    assert_eq!(json["answered"], 5, "{json}");
    assert_eq!(json["success"], 5, "{json}");
    assert_eq!(json["ok"], true, "{json}");
    let nodes: Vec<&str> = json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["node00", "node02", "node04", "node06", "node08"]);

    // --node selects members by name (serf members -name, serf query -node)
    let run = fleet(
        &agents[0],
        &["--node", "node01", "--node", "node07", "--timeout", "3s"],
    );
    assert_eq!(run.code(), 0, "{run:?}");
    assert!(
        run.stdout.contains(
            "2 answered of 2 alive members: 2 success, 0 failure, 0 silent, 0 unreachable"
        ),
        "{}",
        run.stdout
    );
    assert_eq!(rows(&run.stdout, "node01").len(), 1, "{}", run.stdout);
    assert_eq!(rows(&run.stdout, "node07").len(), 1, "{}", run.stdout);

    // a host with eight long dests whose oldest deploy alone failed: its answer
    // must leave dests out to fit serf's 1024 bytes, the failed one is kept, and
    // the host is failure, exit 1 (not success on the newest seven)
    for i in 0..8 {
        let result = if i == 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let rec = records::record(
            &format!("/srv/applications/service-{i:02}"),
            result,
            &checksum,
            &format!("2026-12-01T09:{i:02}:00.000Z"),
            (result == Outcome::Failure).then_some("exit status 1"),
        );
        records::write(&agents[9].state(), &rec);
    }
    let run = fleet(&agents[0], &["--node", "node09", "--timeout", "3s"]);
    assert_eq!(run.code(), 1, "{run:?}");
    assert!(
        run.stdout.contains(
            "1 answered of 1 alive members: 0 success, 1 failure, 0 silent, 0 unreachable"
        ),
        "{}\n{}",
        run.stdout,
        agents[9].report()
    );
    let eight = rows(&run.stdout, "node09");
    assert!(
        eight.last().is_some_and(|r| r.contains(" more)")),
        "{}",
        run.stdout
    );
    assert!(
        eight
            .iter()
            .any(|r| r.contains("/srv/applications/service-00 ") && r.contains(" failure ")),
        "{}",
        run.stdout
    );

    // a host with many dests and long errors: its shortened answer still gets
    // through serf's 1024-byte response limit (node09 leaves next, so its extra
    // records do not change the counts below)
    let long =
        "failed: /opt/deploy/bin/check-health --url http://127.0.0.1:8080/health exit status 1; "
            .repeat(4);
    for i in 0..24 {
        let result = if i % 3 == 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let rec = records::record(
            &format!("/srv/applications/service-{i:02}"),
            result,
            &checksum,
            &format!("2026-12-01T10:{i:02}:00.000Z"),
            (result == Outcome::Failure).then_some(long.as_str()),
        );
        records::write(&agents[9].state(), &rec);
    }
    let run = fleet(&agents[0], &["--node", "node09", "--timeout", "3s"]);
    assert_eq!(run.code(), 1, "{run:?}");
    assert!(
        run.stdout.contains(
            "1 answered of 1 alive members: 0 success, 1 failure, 0 silent, 0 unreachable"
        ),
        "{}\n{}",
        run.stdout,
        agents[9].report()
    );
    // the failed dests are kept first: every row kept is one, the rest counted
    let many = rows(&run.stdout, "node09");
    assert!(many.len() >= 2, "{}", run.stdout);
    let (kept, more) = many.split_at(many.len() - 1);
    assert!(more[0].contains("more)"), "{}", run.stdout);
    assert!(
        kept.iter().all(|r| r.contains(" failure ")),
        "{}",
        run.stdout
    );
    assert!(
        many.iter()
            .any(|r| r.contains("failed at pre: failed: /opt/deploy/bin/check-health")),
        "{}",
        run.stdout
    );

    // the same dests all succeeded since: what the answer left out cannot be
    // confirmed, so the host is partial (named, exit 1), never plain success
    for i in 0..24 {
        let rec = records::record(
            &format!("/srv/applications/service-{i:02}"),
            Outcome::Success,
            &checksum,
            &format!("2026-12-01T11:{i:02}:00.000Z"),
            None,
        );
        records::write(&agents[9].state(), &rec);
    }
    let run = fleet(&agents[0], &["--node", "node09", "--timeout", "3s"]);
    assert_eq!(run.code(), 1, "{run:?}");
    assert!(
        run.stdout.contains(
            "1 answered of 1 alive members: 0 success, 0 failure, 0 silent, 0 unreachable, \
             1 partial (node09)"
        ),
        "{}",
        run.stdout
    );

    // a member that left is not counted
    let out = serf(&["leave", &agents[9].host.rpc_flag()]);
    assert!(out.status.success(), "serf leave: {out:?}");
    cluster.wait_exit("node09", LIMIT);
    serf::wait_until(
        "node09 left",
        LIMIT,
        || serf::members_with_status(first, "left") == ["node09"],
        report,
    );
    let run = fleet(&agents[0], &["--timeout", "3s"]);
    assert_eq!(run.code(), 0, "{run:?}");
    assert!(
        run.stdout.contains(
            "9 answered of 9 alive members: 9 success, 0 failure, 0 silent, 0 unreachable"
        ),
        "{}",
        run.stdout
    );
    assert!(rows(&run.stdout, "node09").is_empty(), "{}", run.stdout);

    // a member killed with SIGKILL is unreachable once serf declares it failed
    cluster.kill("node08");
    serf::wait_until(
        "node08 failed",
        LIMIT,
        || serf::members_with_status(first, "failed") == ["node08"],
        report,
    );
    let run = fleet(&agents[0], &["--timeout", "3s"]);
    assert_eq!(run.code(), 1, "{run:?}");
    assert!(
        run.stdout.contains(
            "8 answered of 8 alive members: 8 success, 0 failure, 0 silent, 1 unreachable"
        ),
        "{}",
        run.stdout
    );
    let killed = rows(&run.stdout, "node08");
    assert_eq!(killed.len(), 1, "{}", run.stdout);
    assert!(killed[0].contains(" unreachable "), "{}", killed[0]);

    // serf's own errors are one clear line
    let run = fleet(&agents[0], &["--tag", "role=nothing"]);
    assert_eq!(run.code(), 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("no alive serf member matches"),
        "{}",
        run.stderr
    );
    let nobody = serf::free_port();
    let run = stretcher()
        .args([
            "fleet",
            "status",
            "--rpc-addr",
            &format!("127.0.0.1:{nobody}"),
        ])
        .run();
    assert_eq!(run.code(), 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("serf agent 127.0.0.1:{nobody}: cannot connect")),
        "{}",
        run.stderr
    );

    drop(cluster);
    eprintln!("whole fleet test: {:.1?}", test_start.elapsed());
}

/// Fleet answers are data, not text (SPEC §17): three agents, one whose last
/// deploy succeeded, one whose deploy failed, and a forger whose handler answers,
/// a second late, two lines: a brief of its own, then the line serf's text output
/// would print for the failed host answering success (a fake row for it). With and
/// without a terminal, the forger is `invalid` (named in the summary), its row
/// shows its answer escaped on one line, the failed host keeps its one row, and
/// `fleet status` exits 1.
#[test]
fn a_forged_answer_is_invalid_and_stays_on_its_row() {
    let root = tempfile::Builder::new()
        .prefix("stretcher-forged-")
        .tempdir()
        .unwrap();
    let names = ["good", "broken", "forger"];
    let hosts: Vec<Host> = names.iter().map(|n| Host::new(root.path(), n)).collect();
    let checksum = "0123456789abcdef0123456789abcdef01234567";
    let forged_line = format!(
        r#"Response from 'broken': {{"host":"broken","deploys":[{{"dest":"/srv/app","result":"success","checksum":"{}"}}]}}"#,
        &checksum[..12]
    );
    let answer = root.path().join("forged-answer");
    std::fs::write(
        &answer,
        format!(
            "{{\"host\":\"forger\",\"deploys\":[{{\"result\":\"success\"}}]}}\n{forged_line}\n"
        ),
    )
    .unwrap();
    let mut cluster = Cluster::default();
    for (i, h) in hosts.iter().enumerate() {
        let state = h.dir.join("state");
        let handler = if h.name == "forger" {
            format!(
                "query:{}=sleep 1; cat {}",
                stretcher::fleet::QUERY,
                answer.display()
            )
        } else {
            let (result, error) = if h.name == "broken" {
                (Outcome::Failure, Some("failed: ./check exit status 1"))
            } else {
                (Outcome::Success, None)
            };
            let rec = records::record(
                "/srv/app",
                result,
                checksum,
                "2026-12-01T10:00:00.000Z",
                error,
            );
            records::write(&state, &rec);
            format!(
                "query:{}={} status --brief --json --state-dir {}",
                stretcher::fleet::QUERY,
                bin(),
                state.display()
            )
        };
        let spec = Spec {
            handlers: vec![handler],
            join: (i > 0).then_some(hosts[0].bind),
            ..Spec::default()
        };
        cluster.start(h, &spec);
        if i == 0 {
            serf::wait_rpc(h, LIMIT);
        }
    }
    let report = || {
        hosts
            .iter()
            .map(|h| {
                format!(
                    "--- {} agent log:\n{}",
                    h.name,
                    tail(&std::fs::read_to_string(h.agent_log()).unwrap_or_default())
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let all: Vec<&Host> = hosts.iter().collect();
    serf::wait_alive(&hosts[0], &all, LIMIT, report);
    let via = Agent {
        host: Host {
            name: hosts[0].name.clone(),
            dir: hosts[0].dir.clone(),
            bind: hosts[0].bind,
            rpc: hosts[0].rpc,
        },
    };
    let summary = "3 answered of 3 alive members: 1 success, 1 failure, 0 silent, 0 unreachable, \
                   1 invalid (forger)";
    let check = |code: i32, stdout: &str| {
        assert_eq!(code, 1, "{stdout}\n{}", report());
        assert!(stdout.contains(summary), "{stdout}\n{}", report());
        // header, one row per host, summary: no line of the forger's own
        assert_eq!(stdout.lines().count(), 5, "{stdout}");
        let broken = rows(stdout, "broken");
        assert_eq!(broken.len(), 1, "{stdout}");
        assert!(broken[0].contains(" failure "), "{stdout}");
        assert!(
            broken[0].contains("failed at pre: failed: ./check exit status 1"),
            "{stdout}"
        );
        let forger = rows(stdout, "forger");
        assert_eq!(forger.len(), 1, "{stdout}");
        assert!(forger[0].contains(" invalid "), "{stdout}");
        assert!(
            forger[0].contains(
                "invalid answer (more than one line): \
                 {\"host\":\"forger\",\"deploys\":[{\"result\":\"success\"}]}\\x0aResponse from 'broken': "
            ),
            "{stdout}"
        );
        assert!(rows(stdout, "good")[0].contains(" success "), "{stdout}");
        assert!(
            !stdout.chars().any(|c| c.is_control() && c != '\n'),
            "{stdout:?}"
        );
    };

    // stderr not a terminal
    let run = fleet(&via, &["--timeout", "3s", "--checksum", checksum]);
    check(run.code(), &run.stdout);
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    // on a terminal, with the progress line: the same
    let (code, stdout, terminal) = fleet_on_tty(&via, &["--timeout", "3s"]);
    check(code, &stdout);
    assert!(
        terminal.contains("3 of 3 alive members answered"),
        "{terminal:?}"
    );
    assert!(terminal.ends_with("\r\x1b[K"), "{terminal:?}");

    // --json says the same, as data
    let run = fleet(&via, &["--timeout", "3s", "--json"]);
    assert_eq!(run.code(), 1, "{run:?}");
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["invalid"], 1, "{json}");
    assert_eq!(json["ok"], false, "{json}");
    let forger = json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["node"] == "forger")
        .unwrap();
    assert_eq!(forger["state"], "invalid", "{json}");
    assert!(
        forger["problem"]
            .as_str()
            .unwrap()
            .contains(&format!("\n{}", &forged_line[..40])),
        "{json}"
    );
    drop(cluster);
}

/// A query round ends as soon as every alive member has answered (SPEC §13): N
/// idle agents (12, or `STRETCHER_FLEET_AGENTS`; the round's time is printed, not
/// asserted: measure by hand), two of which answer on another checksum, one with a
/// deploy `running` and one with an answer that left dests out (`partial`). The
/// summary names them and the split of the dest; `--problems` prints only their
/// rows, with the same exit status. An agent killed with SIGKILL is silent (the
/// round then lasts its `--timeout`) until serf declares it failed, then
/// unreachable.
#[test]
fn rounds_end_when_every_member_answered() {
    let n: usize = std::env::var("STRETCHER_FLEET_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
        .max(6);
    let root = tempfile::Builder::new()
        .prefix("stretcher-rounds-")
        .tempdir()
        .unwrap();
    let hosts: Vec<Host> = (0..n)
        .map(|i| Host::new(root.path(), &format!("idle{i:02}")))
        .collect();
    let (x, y) = (
        "0123456789abcdef0123456789abcdef01234567",
        "fedcba9876543210fedcba9876543210fedcba98",
    );
    let answer = |name: &str, text: String| {
        let path = root.path().join(name);
        std::fs::write(&path, text + "\n").unwrap();
        format!("query:{}=cat {}", stretcher::fleet::QUERY, path.display())
    };
    let mut cluster = Cluster::default();
    for (i, h) in hosts.iter().enumerate() {
        let handler = match i {
            0 => answer(
                "running.json",
                format!(
                    r#"{{"host":"idle00","deploys":[{{"dest":"/srv/app","result":"running","checksum":"{}","started":"2026-12-01T10:05:00.000Z","manifest_url":"https://example.com/app.yml","serial":3}}]}}"#,
                    &y[..12]
                ),
            ),
            1 => answer(
                "partial.json",
                format!(
                    r#"{{"host":"idle01","deploys":[{{"dest":"/srv/app","result":"success","checksum":"{}","finished":"2026-12-01T10:00:00.000Z"}}],"omitted":3}}"#,
                    &x[..12]
                ),
            ),
            _ => {
                let state = h.dir.join("state");
                let sum = if i < 4 { y } else { x };
                let rec = records::record(
                    "/srv/app",
                    Outcome::Success,
                    sum,
                    "2026-12-01T10:00:00.000Z",
                    None,
                );
                records::write(&state, &rec);
                format!(
                    "query:{}={} status --brief --json --state-dir {}",
                    stretcher::fleet::QUERY,
                    bin(),
                    state.display()
                )
            }
        };
        let ping = format!("user:ping=cat >> {}", h.dir.join("pings").display());
        let spec = Spec {
            handlers: vec![handler, ping],
            tags: vec![("half".into(), (i % 2).to_string())],
            join: (i > 0).then_some(hosts[0].bind),
            ..Spec::default()
        };
        cluster.start(h, &spec);
        if i == 0 {
            serf::wait_rpc(h, LIMIT);
        }
    }
    let report = || {
        hosts
            .iter()
            .take(4)
            .map(|h| {
                format!(
                    "--- {} agent log:\n{}",
                    h.name,
                    tail(&std::fs::read_to_string(h.agent_log()).unwrap_or_default())
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let all: Vec<&Host> = hosts.iter().collect();
    // every agent asked below sees them all
    for h in [0, 2, 3] {
        serf::wait_alive(&hosts[h], &all, LIMIT, report);
    }
    let via = Agent {
        host: Host {
            name: hosts[2].name.clone(),
            dir: hosts[2].dir.clone(),
            bind: hosts[2].bind,
            rpc: hosts[2].rpc,
        },
    };

    // the RPC client itself against a real agent: filtered members, a query
    // stopped early on a connection that goes on, a user event every agent runs
    {
        use stretcher::serf_rpc::{Client, MemberFilter, QueryEvent, QueryParams};
        let mut c = Client::connect(&hosts[3].rpc_addr(), None, LIMIT).unwrap();
        let filter = MemberFilter {
            tags: [("half".to_string(), "1".to_string())].into(),
            name: "idle0[0-5]".into(),
            status: "alive".into(),
        };
        let mut odd: Vec<String> = c
            .members_filtered(&filter)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        odd.sort();
        assert_eq!(odd, ["idle01", "idle03", "idle05"]);
        let params = QueryParams {
            nodes: vec!["idle04".into()],
            timeout: Some(Duration::from_secs(5)),
            ..QueryParams::default()
        };
        let mut q = c.query(stretcher::fleet::QUERY, b"", &params).unwrap();
        let first = q.next().unwrap().unwrap();
        assert_eq!(first, QueryEvent::Ack("idle04".into()));
        q.stop();
        c.user_event("ping", b"from the rpc client", false).unwrap();
        assert_eq!(
            c.members_filtered(&MemberFilter::default()).unwrap().len(),
            n
        );
        let pinged = |h: &Host| {
            std::fs::read_to_string(h.dir.join("pings")).unwrap_or_default()
                == "from the rpc client\n" // serf adds the newline
        };
        serf::wait_until(
            "every agent ran the user event",
            LIMIT,
            || hosts.iter().all(pinged),
            || {
                let missed: Vec<String> = hosts
                    .iter()
                    .filter(|h| !pinged(h))
                    .map(|h| {
                        format!(
                            "{}: {:?}",
                            h.name,
                            std::fs::read_to_string(h.dir.join("pings"))
                        )
                    })
                    .collect();
                format!("missed by {missed:?}\n{}", report())
            },
        );
    }

    // Serf's query is gossip: on a loaded machine a member can miss it now and
    // then (no ack, no answer), which is not what this test is about; such a round
    // is asked again, twice at most
    let settled = |args: &[&str]| {
        let mut run = fleet(&via, args);
        for _ in 0..2 {
            if !run.stdout.contains(" silent ") {
                break;
            }
            eprintln!("a member missed the query, asked again:\n{}", run.stdout);
            run = fleet(&via, args);
        }
        run
    };

    // serf's default timeout (6.4 s from 10 members): the round ends before it
    for _ in 0..3 {
        let round = Instant::now();
        let run = settled(&[]);
        eprintln!(
            "fleet status over {n} idle agents (serf's default timeout): {:.2?}",
            round.elapsed()
        );
        assert_eq!(run.code(), 1, "{run:?}\n{}", report());
        let summary = format!(
            "{n} answered of {n} alive members: {} success, 0 failure, 0 silent, \
             0 unreachable, 1 running (idle00), 1 partial (idle01)",
            n - 2
        );
        assert!(
            run.stdout.contains(&summary),
            "{}\n{}",
            run.stdout,
            report()
        );
        let split = format!(
            "checksums of /srv/app differ (hosts whose last deploy succeeded with each): \
             {} on {} hosts, {} on 2 hosts\n",
            &x[..12],
            n - 3,
            &y[..12]
        );
        assert!(run.stdout.ends_with(&split), "{}", run.stdout);
        let running = rows(&run.stdout, "idle00");
        assert!(
            running[0].contains(" running ")
                && running[0].contains("deploying since 2026-12-01T10:05:00.000Z"),
            "{}",
            run.stdout
        );
        assert!(rows(&run.stdout, "idle01")
            .iter()
            .any(|r| r.contains("(3 more)")));
        assert!(run.stderr.is_empty(), "{}", run.stderr);

        // --problems: the rows off the majority, the same exit status
        let problems = settled(&["--problems"]);
        assert_eq!(problems.code(), 1, "{problems:?}");
        let nodes: BTreeSet<&str> = problems
            .stdout
            .lines()
            .skip(1)
            .filter(|l| l.starts_with("idle"))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            nodes,
            BTreeSet::from(["idle00", "idle01", "idle02", "idle03"]),
            "{}",
            problems.stdout
        );
        assert!(problems.stdout.contains(&summary), "{}", problems.stdout);
        assert!(problems.stdout.ends_with(&split), "{}", problems.stdout);
    }

    // a tie among two hosts on two checksums: both rows, exit 0 either way
    for args in [&[][..], &["--problems"]] {
        let run = fleet(
            &via,
            &[&["--node", "idle03", "--node", "idle04"][..], args].concat(),
        );
        assert_eq!(run.code(), 0, "{run:?}");
        assert_eq!(rows(&run.stdout, "idle03").len(), 1, "{}", run.stdout);
        assert_eq!(rows(&run.stdout, "idle04").len(), 1, "{}", run.stdout);
        assert!(run.stdout.contains(" on 1 host, "), "{}", run.stdout);
    }

    // an agent killed with SIGKILL: silent while serf still lists it alive (the
    // round lasts its --timeout), unreachable once serf declares it failed
    cluster.kill("idle05");
    let round = Instant::now();
    let run = fleet(
        &via,
        &["--timeout", "3s", "--node", "idle04", "--node", "idle05"],
    );
    let took = round.elapsed();
    assert_eq!(run.code(), 1, "{run:?}");
    let killed = rows(&run.stdout, "idle05");
    assert_eq!(killed.len(), 1, "{}", run.stdout);
    let seen = if killed[0].contains(" silent ") {
        assert!(
            run.stdout
                .contains("1 answered of 2 alive members: 1 success, 0 failure, 1 silent"),
            "{}",
            run.stdout
        );
        "silent"
    } else {
        assert!(killed[0].contains(" unreachable "), "{}", run.stdout);
        "unreachable"
    };
    eprintln!("fleet status --timeout 3s right after a SIGKILL: {took:.2?}, the member {seen}");
    serf::wait_until(
        "idle05 failed",
        LIMIT,
        || serf::members_with_status(&hosts[2], "failed") == ["idle05"],
        report,
    );
    let round = Instant::now();
    let run = settled(&[]);
    eprintln!(
        "fleet status over {} alive agents and one failed (serf's default timeout): {:.2?}",
        n - 1,
        round.elapsed()
    );
    assert_eq!(run.code(), 1, "{run:?}");
    assert!(
        rows(&run.stdout, "idle05")[0].contains(" unreachable "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!(
            "{m} answered of {m} alive members: {} success, 0 failure, 0 silent, 1 unreachable",
            n - 3,
            m = n - 1
        )),
        "{}",
        run.stdout
    );
    drop(cluster);
}

/// An agent whose RPC wants a key (`rpc_auth`): `fleet status` takes it from
/// `SERF_RPC_AUTH` (and the address from `SERF_RPC_ADDR`); without it, or with
/// another, one clear line and exit 1.
#[test]
fn an_rpc_key_from_the_environment() {
    let root = tempfile::Builder::new()
        .prefix("stretcher-rpc-auth-")
        .tempdir()
        .unwrap();
    let host = Host::new(root.path(), "keyed");
    let state = host.dir.join("state");
    let rec = records::record(
        "/srv/app",
        Outcome::Success,
        "0123456789abcdef0123456789abcdef01234567",
        "2026-12-01T10:00:00.000Z",
        None,
    );
    records::write(&state, &rec);
    let spec = Spec {
        handlers: vec![format!(
            "query:{}={} status --brief --json --state-dir {}",
            stretcher::fleet::QUERY,
            bin(),
            state.display()
        )],
        rpc_auth: Some("s3cret key".into()),
        ..Spec::default()
    };
    let mut cluster = Cluster::default();
    cluster.start(&host, &spec);
    serf::wait_rpc(&host, LIMIT);
    let fleet = |auth: Option<&str>| {
        let mut s = stretcher()
            .args(["fleet", "status", "--timeout", "5s"])
            .env("SERF_RPC_ADDR", host.rpc_addr())
            .limit(Duration::from_secs(60));
        s = match auth {
            Some(k) => s.env("SERF_RPC_AUTH", k),
            None => s.env_remove("SERF_RPC_AUTH"),
        };
        s.run()
    };
    let run = fleet(Some("s3cret key"));
    assert_eq!(run.code(), 0, "{run:?}");
    assert!(
        run.stdout
            .contains("1 answered of 1 alive members: 1 success, 0 failure, 0 silent"),
        "{}",
        run.stdout
    );
    for (auth, want) in [
        (None, "Authentication required (set SERF_RPC_AUTH"),
        (Some("wrong"), "auth: Invalid authentication token"),
    ] {
        let run = fleet(auth);
        assert_eq!(run.code(), 1, "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("serf agent {}: ", host.rpc_addr()))
                && run.stderr.contains(want),
            "{}",
            run.stderr
        );
    }
    drop(cluster);
}
