//! End to end with real `serf agent`s on 127.0.0.1 (cargo feature `e2e`; `.ci/run`'s
//! `serf_e2e` filter runs it): the same-LTime race of SPEC §10 and a rollout's wave
//! on the host side (SPEC §19). Every agent runs `user:deploy=stretcher` with its own
//! state directory, dest and log; every agent is killed by pid at the end, also when
//! the test fails (the `Cluster` guard).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::serf::{self, serf, Cluster, Host, Spec};
use crate::util::*;

/// How long the cluster may take to join, and each round to reach every node.
const LIMIT: Duration = Duration::from_secs(60);

struct Agent {
    node: Host,
}

impl Agent {
    fn dest(&self) -> PathBuf {
        self.node.dir.join("parent").join("dest")
    }
    fn log(&self) -> PathBuf {
        self.node.dir.join("stretcher.log")
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
    /// What dest's `which.txt` says (the release it holds), if anything.
    fn holds(&self) -> Option<String> {
        std::fs::read_to_string(self.dest().join("which.txt")).ok()
    }
    /// Events this agent's handler finished: run to an end, or skipped.
    fn finished(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| {
                l.contains("Deploy manifest succeeded.")
                    || l.contains("Deploy manifest failed")
                    || l.contains(" Skipping serf user event")
                    || l.contains("Not in this wave")
                    || l.contains("nothing to do for this wave")
            })
            .count()
    }
}

/// Starts `n` agents (the first, then the others joining it) and waits until all
/// are alive members; `tags(i)` are agent i's Serf tags.
fn cluster(
    root: &Path,
    n: usize,
    tags: impl Fn(usize) -> Vec<(String, String)>,
) -> (Cluster, Vec<Agent>) {
    let agents: Vec<Agent> = (0..n)
        .map(|i| Agent {
            node: Host::new(root, &format!("node{i}")),
        })
        .collect();
    let mut cluster = Cluster::default();
    for (i, a) in agents.iter().enumerate() {
        std::fs::create_dir_all(a.node.dir.join("parent")).unwrap();
        let handler = format!(
            "user:deploy={} --state-dir {} >> {} 2>&1",
            bin(),
            a.node.dir.join("state").display(),
            a.log().display()
        );
        let spec = Spec {
            handlers: vec![handler],
            env: vec![("DEST".into(), a.dest().into())],
            tags: tags(i),
            profile: Some("local"),
            join: (i > 0).then(|| agents[0].node.bind),
            ..Spec::default()
        };
        cluster.start(&a.node, &spec);
        if i == 0 {
            serf::wait_rpc(&a.node, LIMIT);
        }
    }
    let first = &agents[0].node;
    let all: Vec<&Host> = agents.iter().map(|a| &a.node).collect();
    serf::wait_alive(first, &all, LIMIT, String::new);
    (cluster, agents)
}

fn report(agents: &[Agent]) -> String {
    agents
        .iter()
        .map(|a| {
            format!(
                "--- {} stretcher log:\n{}\n--- {} agent log:\n{}",
                a.node.name,
                a.log_text(),
                a.node.name,
                std::fs::read_to_string(a.node.agent_log()).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A release whose one file says `name`, and its manifest (dest from `$DEST`); the
/// manifest's file:// URL.
fn release(dir: &Path, name: &str) -> String {
    let tar = raw_tar(&[Raw::File(b"which.txt", name.as_bytes())]);
    std::fs::write(dir.join(format!("{name}.tar")), &tar).unwrap();
    let manifest = dir.join(format!("{name}.yml"));
    std::fs::write(
        &manifest,
        format!(
            "src: {name}.tar\nchecksum: {}\ndest: {{{{ must_env \"DEST\" }}}}\n",
            sha1_bytes(&tar)
        ),
    )
    .unwrap();
    format!("file://{}", manifest.display())
}

/// `serf event -coalesce=false deploy PAYLOAD` through `agent`, started now (not
/// waited for). Not coalesced: an agent that holds two `deploy` events of one round
/// at once would otherwise hand its handler only the later LTime's, and the test
/// waits for every handler to see both.
fn fire(agent: &Agent, payload: &str) -> std::process::Child {
    Command::new("serf")
        .args([
            "event",
            &agent.node.rpc_flag(),
            "-coalesce=false",
            "deploy",
            payload,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serf (apt-get install -y serf)")
}

/// The LTime every handler logged for the event with this URL (`Received serf user
/// event "deploy" (LTime N): URL`).
fn ltime_of(agents: &[Agent], url: &str) -> Option<u64> {
    let tail = format!("): {url}");
    agents.iter().find_map(|a| {
        a.log_text().lines().find_map(|l| {
            let rest = l.strip_suffix(&tail)?;
            let at = rest.rfind("(LTime ")?;
            rest[at + 7..].parse().ok()
        })
    })
}

/// SPEC §10: two deploys fired at once through two agents get the same LTime (each
/// agent stamps with its own clock, and the clocks agree after the previous round);
/// every host must end on the byte-wise greater payload whatever the arrival order.
#[test]
fn same_ltime_race_every_host_ends_on_the_greater_payload() {
    const ROUNDS: usize = 10;
    let root = tempfile::Builder::new()
        .prefix("stretcher-serf-race-")
        .tempdir()
        .unwrap();
    let (_cluster, agents) = cluster(root.path(), 3, |_| Vec::new());
    let releases = root.path().join("releases");
    std::fs::create_dir(&releases).unwrap();

    let mut same_ltime = 0;
    for round in 0..ROUNDS {
        let lo = release(&releases, &format!("r{round:02}-a"));
        let hi = release(&releases, &format!("r{round:02}-b"));
        assert!(hi > lo);
        // two different agents each round, the greater fired first or second
        let (x, y) = (&agents[round % 3], &agents[(round + 1) % 3]);
        let (px, py) = if round % 2 == 0 {
            (&hi, &lo)
        } else {
            (&lo, &hi)
        };
        let (mut cx, mut cy) = (fire(x, px), fire(y, py));
        for c in [&mut cx, &mut cy] {
            let out = c.wait().unwrap();
            assert!(out.success(), "serf event failed in round {round}");
        }
        // both events reached every handler, and each handler ended with both
        serf::wait_until(
            &format!("round {round} handled by every agent"),
            LIMIT,
            || agents.iter().all(|a| a.finished() == 2 * (round + 1)),
            || report(&agents),
        );
        let (tl, th) = (ltime_of(&agents, &lo), ltime_of(&agents, &hi));
        let (tl, th) = (
            tl.expect("LTime of lo logged"),
            th.expect("LTime of hi logged"),
        );
        // the greater (LTime, payload) wins: the payload decides at an equal LTime
        let want = if (tl, &lo) > (th, &hi) { "a" } else { "b" };
        if tl == th {
            same_ltime += 1;
            assert_eq!(want, "b");
        }
        let name = format!("r{round:02}-{want}");
        for a in &agents {
            assert_eq!(
                a.holds().as_deref(),
                Some(name.as_str()),
                "round {round} (LTimes {tl} and {th}): {} ends elsewhere\n{}",
                a.node.name,
                report(&agents)
            );
        }
    }
    // the race itself must have happened, or this test proved nothing
    assert!(
        same_ltime * 2 >= ROUNDS,
        "only {same_ltime} of {ROUNDS} rounds stamped both events with one LTime\n{}",
        report(&agents)
    );
    let superseded: usize = agents
        .iter()
        .map(|a| {
            a.log_text()
                .matches("superseded: an event of the same LTime")
                .count()
        })
        .sum();
    assert!(superseded > 0, "no host ever saw the smaller one second");
    eprintln!("{same_ltime} of {ROUNDS} rounds had one LTime; {superseded} events superseded");
}

/// SPEC §19, host side: one event with `upto=` deploys exactly the agents whose rank
/// (computed here with `sha256sum`) is at most it, the canary first; the others
/// change nothing and say so. A second, wider wave leaves the first wave's hosts
/// alone (nothing downloaded, nothing run).
#[test]
fn a_wave_through_real_agents_deploys_exactly_its_hosts() {
    const N: usize = 5;
    let root = tempfile::Builder::new()
        .prefix("stretcher-serf-wave-")
        .tempdir()
        .unwrap();
    // node4 is the canary, by its tag
    let (_cluster, agents) = cluster(root.path(), N, |i| {
        let role = if i == 4 { "canary" } else { "web" };
        vec![("role".to_string(), role.to_string())]
    });
    let releases = root.path().join("releases");
    std::fs::create_dir(&releases).unwrap();
    let url = release(&releases, "v1");
    let manifest = std::fs::read(url.strip_prefix("file://").unwrap()).unwrap();
    let rollout = crate::waves::sha256sum(&manifest)[..16].to_string();
    let mut plan: Vec<(String, usize)> = (0..N)
        .map(|i| {
            (
                crate::waves::rank_of(&rollout, &format!("node{i}"), i == 4),
                i,
            )
        })
        .collect();
    plan.sort();
    assert_eq!(plan[0].1, 4, "the canary ranks first");

    // wave k (one event each) covers the first `upto` ranks
    for (wave, upto) in [(1, 2), (2, 4)] {
        let payload = format!(
            "{url} rollout={rollout} upto={} canary=role=canary",
            plan[upto - 1].0
        );
        let out = serf(&["event", &agents[0].node.rpc_flag(), "deploy", &payload]);
        assert!(out.status.success(), "serf event: {out:?}");
        serf::wait_until(
            &format!("wave {wave} handled by every agent"),
            LIMIT,
            || agents.iter().all(|a| a.finished() == wave),
            || report(&agents),
        );
        for (pos, (rank, i)) in plan.iter().enumerate() {
            let a = &agents[*i];
            assert_eq!(
                a.holds().is_some(),
                pos < upto,
                "wave {wave}: {} (rank {rank})\n{}",
                a.node.name,
                report(&agents)
            );
            if pos >= upto {
                assert!(a.log_text().contains(&format!("has rank {rank}, after")));
            }
        }
    }
    // the first wave's hosts deployed once: the second wave found them done
    for (_, i) in &plan[..2] {
        let log = agents[*i].log_text();
        assert_eq!(
            log.matches("Deploy manifest succeeded.").count(),
            1,
            "{log}"
        );
        assert_eq!(log.matches("Loading URL").count(), 1, "{log}");
        assert!(
            log.contains(&format!("in rollout {rollout} (finished")),
            "{log}"
        );
    }
}
