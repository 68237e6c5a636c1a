//! The host side of a rollout's waves (SPEC §19), through the binary as a serf
//! handler runs it (`SERF_EVENT=user`, `SERF_SELF_NAME`, `SERF_TAG_*`, the payload on
//! stdin): every "host" is a state directory and a dest of its own, the manifest and
//! the archive come from an HTTP server on 127.0.0.1 that counts its requests, and
//! the ranks are computed here with `sha256sum`, not by the library.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::http::{respond, small_archive, TestServer};
use crate::util::*;

/// sha256 of `text` in lower-case hex, by coreutils' `sha256sum`.
pub fn sha256sum(text: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// SPEC §19's rank, computed independently of the library.
pub fn rank_of(rollout: &str, node: &str, canary: bool) -> String {
    let digit = if canary { "0" } else { "1" };
    format!(
        "{digit}{}",
        sha256sum(format!("{rollout}{node}").as_bytes())
    )
}

/// One simulated host: its node name, dest, state directory and hook marks.
struct Host {
    node: String,
    root: PathBuf,
}

impl Host {
    fn dest(&self) -> PathBuf {
        self.root.join("parent").join("dest")
    }
    fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    fn marks(&self) -> String {
        std::fs::read_to_string(self.root.join("marks")).unwrap_or_default()
    }
    /// The serf handler's run of `payload` as event `deploy` at `ltime`.
    fn handle(&self, payload: &str, ltime: u64, tags: &[(&str, &str)]) -> Run {
        let mut s = stretcher()
            .arg("--state-dir")
            .arg(self.state())
            .env("SERF_EVENT", "user")
            .env("SERF_USER_EVENT", "deploy")
            .env("SERF_USER_LTIME", ltime.to_string())
            .env("SERF_SELF_NAME", &self.node)
            .env("DEST", self.dest())
            .env("MARKS", self.root.join("marks"));
        for (k, v) in tags {
            s = s.env(k, v);
        }
        crate::http::clean(s).stdin(payload).run()
    }
    fn records(&self) -> usize {
        std::fs::read_dir(self.state().join("deploys"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// A fleet of `n` hosts, a manifest served at `/m.yml` (dest from `$DEST`, a `pre`
/// hook that marks the host) and its archive at `/app.tgz`.
struct Fleet {
    _tmp: tempfile::TempDir,
    hosts: Vec<Host>,
    srv: TestServer,
    rollout: String,
    url: String,
}

fn fleet(n: usize) -> Fleet {
    let tmp = tempfile::Builder::new()
        .prefix("stretcher-waves-")
        .tempdir()
        .unwrap();
    let hosts: Vec<Host> = (0..n)
        .map(|i| {
            let root = tmp.path().join(format!("host{i}"));
            std::fs::create_dir_all(root.join("parent")).unwrap();
            Host {
                node: format!("web-{i}"),
                root,
            }
        })
        .collect();
    let (tar, sum) = small_archive();
    let manifest = format!(
        "src: app.tgz\nchecksum: {sum}\ndest: {{{{ must_env \"DEST\" }}}}\ncommands:\n  pre:\n    - echo pre >> \"$MARKS\"\n"
    );
    let rollout = sha256sum(manifest.as_bytes())[..16].to_string();
    let srv = TestServer::start(move |req, w| match req.path.as_str() {
        "/m.yml" => respond(w, "200 OK", manifest.as_bytes()),
        "/app.tgz" => respond(w, "200 OK", &tar),
        _ => respond(w, "404 Not Found", b""),
    });
    let url = srv.url("/m.yml");
    Fleet {
        _tmp: tmp,
        hosts,
        srv,
        rollout,
        url,
    }
}

impl Fleet {
    /// The hosts' ranks, sorted: (rank, host index).
    fn plan(&self, canary: Option<usize>) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (rank_of(&self.rollout, &h.node, Some(i) == canary), i))
            .collect();
        v.sort();
        v
    }
    fn payload(&self, upto: &str) -> String {
        format!("{} rollout={} upto={upto}", self.url, self.rollout)
    }
}

#[test]
fn a_wave_deploys_exactly_the_hosts_ranked_up_to_it_and_later_waves_skip_them() {
    let f = fleet(8);
    let plan = f.plan(None);
    let deployed = |i: usize| f.hosts[i].dest().join("hello.txt").exists();

    // wave 1: the first 3 ranks
    let payload = f.payload(&plan[2].0);
    assert!(payload.len() < 512, "{payload}");
    for (rank, i) in &plan {
        let h = &f.hosts[*i];
        let r = h.handle(&payload, 1, &[]);
        r.assert_ok();
        if *rank <= plan[2].0 {
            r.assert_log(&format!("In this wave of rollout {}", f.rollout));
        } else {
            r.assert_log(&format!(
                "Not in this wave of rollout {}: node {} has rank {rank}",
                f.rollout, h.node
            ));
            r.assert_log("nothing to do");
            // nothing fetched, nothing run, no record, dest untouched
            assert!(!h.dest().exists() && h.marks().is_empty() && h.records() == 0);
        }
        // the event counts as handled either way: a redelivery is a replay
        h.handle(&payload, 1, &[])
            .assert_ok()
            .assert_log("superseded");
    }
    let in_wave1: Vec<usize> = plan[..3].iter().map(|(_, i)| *i).collect();
    for i in 0..8 {
        assert_eq!(deployed(i), in_wave1.contains(&i), "host {i}");
    }
    assert_eq!(f.srv.hits("/app.tgz"), 3);
    assert_eq!(f.srv.hits("/m.yml"), 3);

    // wave 2 (a new event, a later LTime): the first 6; the 3 done do nothing at all
    let payload = f.payload(&plan[5].0);
    for (rank, i) in &plan {
        let h = &f.hosts[*i];
        let r = h.handle(&payload, 2, &[]);
        r.assert_ok();
        if in_wave1.contains(i) {
            r.assert_log(&format!(
                "already deployed {} in rollout {} (finished ",
                f.url, f.rollout
            ))
            .assert_log("nothing to do for this wave");
            assert!(!r.stderr.contains("Loading manifest"), "{}", r.stderr);
        } else if *rank <= plan[5].0 {
            r.assert_log("Deploy manifest succeeded.");
        } else {
            r.assert_log("Not in this wave");
        }
    }
    for i in 0..8 {
        let want = plan[..6].iter().any(|(_, j)| *j == i);
        assert_eq!(deployed(i), want, "host {i}");
        // hooks once per host that deployed, never once per wave
        assert_eq!(f.hosts[i].marks().lines().count(), usize::from(want));
    }
    assert_eq!(
        f.srv.hits("/app.tgz"),
        6,
        "the done hosts downloaded nothing"
    );
    assert_eq!(f.srv.hits("/m.yml"), 6, "nor fetched the manifest");

    // the record names the rollout in its event
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::fs::read_dir(f.hosts[plan[0].1].state().join("deploys"))
                .unwrap()
                .flatten()
                .find(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.ends_with(".json") && !n.contains("history")
                })
                .unwrap()
                .path(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rec["event"]["rollout"], f.rollout.as_str());
    assert_eq!(rec["event"]["origin"], "serf");

    // the last wave covers everyone; a plain payload after it is a plain deploy again
    let last = f.payload(&plan[7].0);
    for h in &f.hosts {
        h.handle(&last, 3, &[]).assert_ok();
    }
    assert!((0..8).all(deployed));
    assert_eq!(f.srv.hits("/app.tgz"), 8);
    let h = &f.hosts[plan[0].1];
    let r = h.handle(&f.url, 4, &[]);
    r.assert_ok()
        .assert_log("nothing to download")
        .assert_log("Deploy manifest succeeded.");
    assert!(!r.stderr.contains("rollout"), "{}", r.stderr);
    assert_eq!(
        h.marks().lines().count(),
        2,
        "a plain deploy runs its hooks"
    );
    // ... and after it the rollout no longer counts as done for that dest
    let r = h.handle(&last, 5, &[]);
    r.assert_ok().assert_log("Deploy manifest succeeded.");
}

#[test]
fn canaries_rank_first_by_their_own_tags() {
    let f = fleet(5);
    let canary = 3;
    let plan = f.plan(Some(canary));
    assert_eq!(plan[0].1, canary);
    assert!(plan[0].0.starts_with('0'));
    let payload = format!("{} canary=role=canary", f.payload(&plan[0].0));
    for (i, h) in f.hosts.iter().enumerate() {
        // every host has a role tag; only the canary's value matches
        let role = if i == canary { "canary" } else { "web" };
        h.handle(&payload, 1, &[("SERF_TAG_ROLE", role)])
            .assert_ok();
    }
    for (i, h) in f.hosts.iter().enumerate() {
        assert_eq!(h.dest().exists(), i == canary, "host {i}");
    }
    // again: the canary is done; without its tag it would rank with the others
    let h = &f.hosts[canary];
    h.handle(&payload, 2, &[("SERF_TAG_ROLE", "canary")])
        .assert_ok()
        .assert_log("already deployed");
    h.handle(&payload, 3, &[])
        .assert_ok()
        .assert_log("Not in this wave");
    let other = &f.hosts[0];
    other
        .handle(&payload, 2, &[])
        .assert_ok()
        .assert_log(&format!(
            "has rank {}",
            rank_of(&f.rollout, &other.node, false)
        ));
    assert_eq!(f.srv.hits("/app.tgz"), 1);
}

#[test]
fn malformed_or_lying_waves_do_no_more_than_a_plain_url() {
    let f = fleet(1);
    let h = &f.hosts[0];
    let rank = rank_of(&f.rollout, &h.node, false);
    let bad = [
        (
            format!("{} rollout={} upto={}", f.url, f.rollout, &rank[..64]),
            "is not a rank",
        ),
        (
            format!("{} rollout={} upto={rank}x", f.url, f.rollout),
            "is not a rank",
        ),
        (
            format!("{} rollout={} upto=1{}", f.url, f.rollout, "G".repeat(64)),
            "is not a rank",
        ),
        (
            format!("{} rollout={} upto={rank} please", f.url, f.rollout),
            "unknown word \"please\"",
        ),
        (
            format!("{} rollout=xyz upto={rank}", f.url),
            "is not 16 lower-case hex digits",
        ),
        (format!("{} upto={rank}", f.url), "rollout= is missing"),
        (
            format!("rollout={} upto={rank}", f.rollout),
            "no manifest URL",
        ),
    ];
    for (ltime, (payload, why)) in bad.iter().enumerate() {
        h.handle(payload, ltime as u64 + 1, &[])
            .assert_fail()
            .assert_log("event: serf event deploy: rollout payload: ")
            .assert_log(why);
    }
    assert_eq!(f.srv.all().len(), 0, "nothing fetched");
    assert!(!h.dest().exists());

    // a rollout id that is not the manifest's: refused before anything runs
    let payload = format!("{} rollout=0000000000000000 upto={rank}", f.url);
    h.handle(&payload, 20, &[])
        .assert_fail()
        .assert_log("not the manifest of rollout 0000000000000000");
    assert_eq!(f.srv.hits("/app.tgz"), 0);
    assert!(!h.dest().exists() && h.marks().is_empty());

    // without SERF_SELF_NAME there is no rank: an error, nothing fetched
    let payload = f.payload(&rank);
    let r = crate::http::clean(
        stretcher()
            .arg("--state-dir")
            .arg(h.state())
            .env("SERF_EVENT", "user")
            .env("SERF_USER_EVENT", "deploy")
            .env("SERF_USER_LTIME", "30")
            .env("DEST", h.dest()),
    )
    .env_remove("SERF_SELF_NAME")
    .stdin(payload.clone())
    .run();
    r.assert_fail().assert_log("SERF_SELF_NAME is not set");
    assert_eq!(f.srv.hits("/m.yml"), 1);

    // the right id deploys
    h.handle(&payload, 31, &[]).assert_ok();
    assert!(h.dest().join("hello.txt").exists());
    assert_eq!(h.marks(), "pre\n");
}
