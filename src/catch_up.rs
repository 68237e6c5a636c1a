//! `stretcher catch-up` (SPEC §20): a host that was down during a deploy, or is
//! new, deploys what its peers run — with no server of ours.
//!
//! One job: ask the other Serf members the `stretcher-status` query through the
//! local agent's RPC (`serf_rpc`), choose per dest the manifest a quorum of them
//! reports (`choose`, a pure function), and hand each chosen URL to an ordinary
//! deploy (`deploy::run`): the signature (`--trusted-key`), the allow-list and the
//! serial floor apply as to any deploy, so a lying peer can point this host only
//! at a manifest the fleet's key signed, never at an older one than it holds.
//!
//! Who is asked: the agent's own node name and tags come from its `stats`; the
//! peers are the alive members matching `--tag` (default: this host's `role` tag,
//! when it has one), this node left out by name, and only they are asked.
//!
//! Answers are data (SPEC §17): an answer counts only when `fleet::parse_answer`
//! takes it (one line of the brief's JSON, fields of the right type and size) and
//! every field catch-up uses has its form (`parse_peer`: an absolute dest, each
//! once, an RFC 3339 finish, a manifest URL with a scheme and no control
//! character); else that peer is named (through `log::shown_text`) and ignored.
//! Never a panic.
//!
//! A dest whose last deploy here succeeded with the chosen URL and checksum is
//! current and left alone (nothing is fetched, no hook runs); one whose last
//! success here has a higher serial than the peers claim is ahead, and left alone
//! too. Exit 0 when every dest is current, 1 when a deploy failed or a dest was
//! skipped, 3 when no peer answered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::cli::{CatchUpOptions, Options, Output};
use crate::error::{Error, Result};
use crate::fleet;
use crate::interrupt;
use crate::log::shown_text;
use crate::logln;
use crate::record::{self, Outcome, Record, Step};
use crate::serf_rpc::{Client, MemberFilter, Poll, QueryEvent, QueryParams};
use crate::state;
use crate::urls;
use crate::Env;

/// The agent's RPC address when neither `--rpc-addr` nor `SERF_RPC_ADDR` gives one
/// (the `serf` command's default).
const DEFAULT_RPC_ADDR: &str = "127.0.0.1:7373";

/// How long connecting to the agent and each call may take (Serf's own client's
/// `DefaultTimeout`).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the query collects answers without `--query-timeout`: longer than
/// Serf's default (under 2 s in a small cluster with the `local` profile, when a
/// member can take that long to receive a query), as the round ends anyway as soon
/// as every peer has answered.
const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The tag whose value the peers share by default.
const ROLE_TAG: &str = "role";

/// Exit status when no peer answered (SPEC §20).
const NO_PEER: i32 = 3;

/// Runs `catch-up` with the process's environment: it logs as a deploy does, and
/// hands back only its exit status.
pub fn main(opts: &CatchUpOptions) -> Output {
    let env = |k: &str| std::env::var(k).ok();
    Output::code(run(opts, &env))
}

/// The whole run: ask, choose, deploy. Every error is logged here.
pub(crate) fn run(opts: &CatchUpOptions, env: Env) -> i32 {
    logln!("Starting stretcher catch-up {}", crate::VERSION);
    if let Err(e) = random_delay(&opts.deploy) {
        logln!("{e}");
        return e.exit_code();
    }
    let answers = match ask_peers(opts, env) {
        Ok(Asked::Answers(a)) => a,
        Ok(Asked::NoPeer(why)) => {
            logln!("catch-up: {why}: nothing to catch up with");
            return NO_PEER;
        }
        Err(e) => {
            logln!("catch-up: {e}");
            return e.exit_code();
        }
    };
    let plan = choose(&answers, opts.quorum);
    if plan.is_empty() {
        logln!("catch-up: the peers report no dest: nothing to do");
        return 0;
    }
    let state_dir = state::state_dir(opts.deploy.state_dir.as_deref(), env).ok();
    let deploy = Options {
        // slept once, above
        random_delay: None,
        ..opts.deploy.clone()
    };
    let mut code = 0;
    for (dest, choice) in &plan {
        let shown = shown_text(dest);
        let c = match choice {
            Choice::Skip(why) => {
                logln!("warning: catch-up: dest {shown} skipped: {why}");
                code = 1;
                continue;
            }
            Choice::Deploy(c) => c,
        };
        let serial = c.serial.map_or("none".into(), |s| s.to_string());
        if !deploy.force {
            if let Some(why) = state_dir.as_deref().and_then(|d| left_alone(d, dest, c)) {
                logln!("catch-up: dest {shown} {why}");
                continue;
            }
        }
        logln!(
            "catch-up: dest {shown}: deploying {} (serial {serial}, reported by {} of {} \
             peers: {})",
            shown_text(&c.url),
            c.voters.len(),
            answers.len(),
            shown_text(c.voters.iter().cloned().collect::<Vec<_>>().join(", "))
        );
        let opts = Options {
            target: Some(c.url.clone()),
            ..deploy.clone()
        };
        match crate::deploy::run(&opts, env, &mut std::io::empty()) {
            Ok(()) => {}
            Err(Error::Interrupted(sig)) => {
                logln!("catch-up: {sig}: the dests left are not caught up");
                return 1;
            }
            Err(_) => code = 1,
        }
    }
    code
}

/// The deploy flags' `--random-delay`, slept once before anything else (it spreads
/// a fleet's timers).
fn random_delay(opts: &Options) -> Result<()> {
    let Some(max) = opts.random_delay.filter(|d| !d.is_zero()) else {
        return Ok(());
    };
    interrupt::install()?;
    let d = max.mul_f64(fastrand::f64());
    logln!(
        "Sleeping {:.3}s (random delay up to {:.3}s)",
        d.as_secs_f64(),
        max.as_secs_f64()
    );
    interrupt::sleep(d)
}

/// Why `dest` needs no deploy of `c`, when it does not: the last deploy here
/// that can have changed it succeeded with the same URL and checksum (current),
/// or with a higher serial than the peers claim for `c` (ahead).
fn left_alone(state_dir: &Path, dest: &str, c: &Candidate) -> Option<String> {
    let rec = holding(state_dir, Path::new(dest))?;
    let same_checksum = match (&rec.checksum, &c.checksum) {
        (Some(have), Some(want)) => have.to_ascii_lowercase().starts_with(want.as_str()),
        _ => false,
    };
    if urls::redact(&rec.manifest_url) == c.url && same_checksum {
        return Some(format!(
            "is current: its last deploy succeeded with {} ({})",
            shown_text(&c.url),
            shown_text(c.checksum.as_deref().unwrap_or_default())
        ));
    }
    match (rec.serial, c.serial) {
        (Some(have), Some(claimed)) if have > claimed => Some(format!(
            "is ahead of its peers: its last deploy succeeded with serial {have}, \
             newer than {claimed} ({}): left alone",
            shown_text(&c.url)
        )),
        _ => None,
    }
}

/// The successful deploy `dest` still holds: the newest record of its history
/// that can have changed it, when that one is a success. A refusal, and a failure
/// or interruption before the sync step, leave dest as it was (SPEC §5) and are
/// passed over.
fn holding(state_dir: &Path, dest: &Path) -> Option<Record> {
    let key = record::key_for_dest(dest);
    let mut history = record::history(state_dir, &key);
    if history.is_empty() {
        history.extend(record::last(state_dir, dest));
    }
    let untouched = |r: &Record| {
        r.result == Outcome::Refused
            || (r.result != Outcome::Success
                && matches!(
                    r.failed_step,
                    Some(
                        Step::Manifest
                            | Step::Signature
                            | Step::Download
                            | Step::Unpack
                            | Step::Pre
                    )
                ))
    };
    history
        .into_iter()
        .rev()
        .find(|r| !untouched(r))
        .filter(|r| r.result == Outcome::Success)
}

/// What asking the peers gave.
enum Asked {
    /// Each answering peer's valid answer (node → its deploys).
    Answers(BTreeMap<String, Vec<PeerDeploy>>),
    /// Nobody to ask, or nobody answered: why.
    NoPeer(String),
}

/// Connects to the agent, finds this node and its peers, and asks them.
fn ask_peers(opts: &CatchUpOptions, env: Env) -> Result<Asked> {
    let addr = opts
        .rpc_addr
        .clone()
        .or_else(|| env("SERF_RPC_ADDR").filter(|a| !a.is_empty()))
        .unwrap_or_else(|| DEFAULT_RPC_ADDR.to_string());
    let auth = env("SERF_RPC_AUTH");
    let mut client = Client::connect(&addr, auth.as_deref(), RPC_TIMEOUT)?;
    let me = client.local_member()?;
    let tags: BTreeMap<String, String> = if opts.tags.is_empty() {
        me.tags
            .get(ROLE_TAG)
            .map(|role| (ROLE_TAG.to_string(), quote_meta(role)))
            .into_iter()
            .collect()
    } else {
        opts.tags.iter().cloned().collect()
    };
    let filter = MemberFilter {
        tags: tags.clone(),
        status: "alive".into(),
        name: String::new(),
    };
    let peers: BTreeSet<String> = client
        .members_filtered(&filter)?
        .into_iter()
        .filter(|m| m.status == "alive" && m.name != me.name)
        .map(|m| m.name)
        .collect();
    let which = if tags.is_empty() {
        String::new()
    } else {
        let t: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(" with tags {}", shown_text(t.join(",")))
    };
    logln!(
        "catch-up: this host is serf node {}; {} alive peer(s){which}",
        shown_text(&me.name),
        peers.len()
    );
    if peers.is_empty() {
        return Ok(Asked::NoPeer(format!("no alive peer{which}")));
    }
    let params = QueryParams {
        nodes: peers.iter().cloned().collect(),
        tags,
        timeout: Some(opts.query_timeout.unwrap_or(DEFAULT_QUERY_TIMEOUT)),
    };
    let raw = query(&mut client, &params, &peers)?;
    if raw.is_empty() {
        return Ok(Asked::NoPeer(format!(
            "none of the {} peer(s) answered query {} (is \"query:{}=stretcher status \
             --brief --json\" among their agents' -event-handler?)",
            peers.len(),
            fleet::QUERY,
            fleet::QUERY
        )));
    }
    let mut answers = BTreeMap::new();
    for (node, payload) in raw {
        match parse_peer(&payload) {
            Ok(deploys) => {
                answers.insert(node, deploys);
            }
            Err(why) => logln!(
                "warning: catch-up: peer {}: invalid answer ({}): ignored",
                shown_text(&node),
                shown_text(why)
            ),
        }
    }
    logln!(
        "catch-up: {} of {} peer(s) answered{}",
        answers.len(),
        peers.len(),
        if answers.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                shown_text(answers.keys().cloned().collect::<Vec<_>>().join(", "))
            )
        }
    );
    if answers.is_empty() {
        return Ok(Asked::NoPeer("no peer gave a valid answer".into()));
    }
    Ok(Asked::Answers(answers))
}

/// Each peer's first answer: one query round, until every peer has answered or
/// the agent ends the query; then, when some are still silent, one more round
/// asked of them alone (Serf delivers a query and its answers by gossip over UDP:
/// in a busy or small cluster a member can miss one). Answers from any other
/// node are not counted.
fn query(
    client: &mut Client,
    params: &QueryParams,
    peers: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for round in 0..QUERY_ROUNDS {
        let silent: Vec<String> = peers
            .iter()
            .filter(|p| !out.contains_key(*p))
            .cloned()
            .collect();
        if silent.is_empty() {
            break;
        }
        if round > 0 {
            logln!(
                "catch-up: asking the {} silent peer(s) again: {}",
                silent.len(),
                shown_text(silent.join(", "))
            );
        }
        let params = QueryParams {
            nodes: silent,
            ..params.clone()
        };
        let mut q = client.query(fleet::QUERY, b"", &params)?;
        while out.len() < peers.len() {
            // the stream's own deadline bounds the wait
            match q.poll(Instant::now() + Duration::from_secs(3600))? {
                Poll::Event(QueryEvent::Response { from, payload }) if peers.contains(&from) => {
                    out.entry(from).or_insert(payload);
                }
                Poll::Event(_) | Poll::Idle => {}
                Poll::Done => break,
            }
        }
        q.stop();
    }
    Ok(out)
}

/// How many times the silent peers are asked.
const QUERY_ROUNDS: usize = 2;

/// Go's `regexp.QuoteMeta`: a tag value as a literal inside serf's regexp.
fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One dest's last deploy as a peer reports it: the fields catch-up reads of the
/// brief answer (SPEC §13, §20).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct PeerDeploy {
    /// The dest's absolute path; null for a commands-only manifest.
    pub dest: Option<String>,
    /// `success`, `failure`, ...
    pub result: String,
    /// The first hex digits of the checksum (lower-cased once read).
    #[serde(default)]
    pub checksum: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default)]
    pub finished: Option<String>,
    /// The manifest URL, redacted (SPEC §17).
    #[serde(default)]
    pub manifest_url: Option<String>,
    /// The manifest's `serial`.
    #[serde(default)]
    pub serial: Option<u64>,
}

#[derive(Deserialize)]
struct PeerAnswer {
    deploys: Vec<PeerDeploy>,
}

/// A peer's answer, as the brief status writes it: `fleet::parse_answer`'s checks
/// (one line within Serf's limit, fields of the right type), then those of the
/// fields catch-up uses. `Err` says why the peer is ignored; never a panic.
pub(crate) fn parse_peer(payload: &[u8]) -> std::result::Result<Vec<PeerDeploy>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_string())?;
    fleet::parse_answer(text).map(|_| ())?;
    let answer: PeerAnswer = serde_json::from_str(text.trim())
        .map_err(|e| format!("not a brief status with manifest URLs: {e}"))?;
    let mut dests = BTreeSet::new();
    let mut deploys = answer.deploys;
    for d in &mut deploys {
        if let Some(dest) = &d.dest {
            if !dest.starts_with('/') || dest.chars().any(char::is_control) {
                return Err("a dest that is not an absolute path".into());
            }
            if !dests.insert(dest.clone()) {
                return Err("a dest listed twice".into());
            }
        }
        if let Some(url) = &d.manifest_url {
            if !urls::has_scheme(url) || url.chars().any(char::is_control) {
                return Err("a manifest_url that is not a URL".into());
            }
        }
        if let Some(t) = &d.finished {
            if DateTime::parse_from_rfc3339(t).is_err() {
                return Err("a finished time that is not RFC 3339".into());
            }
        } else if d.result == "success" {
            return Err("a success without its finished time".into());
        }
        d.checksum = d.checksum.as_ref().map(|c| c.to_ascii_lowercase());
    }
    Ok(deploys)
}

/// One manifest the peers report for a dest: its URL, checksum and serial as they
/// report them, and who does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The manifest URL (redacted by the peers).
    pub url: String,
    /// The first hex digits of the checksum.
    pub checksum: Option<String>,
    /// The serial the peers claim.
    pub serial: Option<u64>,
    /// The latest finish any of them reports.
    pub finished: DateTime<Utc>,
    /// The peers reporting it as their last successful deploy.
    pub voters: BTreeSet<String>,
}

/// What to do for one dest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Deploy this manifest.
    Deploy(Candidate),
    /// Skip the dest, for this reason.
    Skip(String),
}

/// Per dest the peers report (commands-only manifests have none and are not
/// caught up): the newest manifest (highest serial, a manifest without one
/// lowest; then the latest finish) that at least `quorum` peers report as their
/// last successful deploy of it, counted by exact URL, checksum and serial;
/// when fewer than `quorum` peers answered, all of them must. A chosen URL that
/// the peers had to redact, or no manifest with a quorum, is a `Skip`.
pub(crate) fn choose(
    answers: &BTreeMap<String, Vec<PeerDeploy>>,
    quorum: usize,
) -> BTreeMap<String, Choice> {
    let quorum = quorum.min(answers.len()).max(1);
    type Key = (String, Option<String>, Option<u64>);
    let mut by_dest: BTreeMap<String, BTreeMap<Key, Candidate>> = BTreeMap::new();
    for (node, deploys) in answers {
        for d in deploys {
            let Some(dest) = &d.dest else { continue };
            let cands = by_dest.entry(dest.clone()).or_default();
            let (Some(url), "success") = (&d.manifest_url, d.result.as_str()) else {
                continue;
            };
            let Some(finished) = d
                .finished
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
            else {
                continue;
            };
            let key = (url.clone(), d.checksum.clone(), d.serial);
            let c = cands.entry(key).or_insert_with(|| Candidate {
                url: url.clone(),
                checksum: d.checksum.clone(),
                serial: d.serial,
                finished,
                voters: BTreeSet::new(),
            });
            c.finished = c.finished.max(finished);
            c.voters.insert(node.clone());
        }
    }
    by_dest
        .into_iter()
        .map(|(dest, cands)| {
            let mut cands: Vec<Candidate> = cands.into_values().collect();
            // newest first: serial (none lowest), then finish, then URL (stable)
            cands.sort_by(|a, b| {
                b.serial
                    .cmp(&a.serial)
                    .then(b.finished.cmp(&a.finished))
                    .then(a.url.cmp(&b.url))
            });
            let choice = match cands.iter().find(|c| c.voters.len() >= quorum) {
                Some(c) if urls::is_redacted(&c.url) => Choice::Skip(format!(
                    "its newest manifest URL {} is redacted (a password or a query \
                     string): it cannot be fetched from what the peers report",
                    shown_text(&c.url)
                )),
                Some(c) => Choice::Deploy(c.clone()),
                None if cands.is_empty() => Choice::Skip(
                    "no peer reports a successful deploy of it with its manifest URL".into(),
                ),
                None => {
                    let newest = &cands[0];
                    Choice::Skip(format!(
                        "no manifest reaches the quorum of {quorum} peer(s) (the newest, {}, \
                         is reported by {})",
                        shown_text(&newest.url),
                        newest.voters.len()
                    ))
                }
            };
            (dest, choice)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(dest: &str, url: &str, serial: Option<u64>, sec: u32) -> PeerDeploy {
        PeerDeploy {
            dest: Some(dest.into()),
            result: "success".into(),
            checksum: Some(format!("{:012x}", serial.unwrap_or(0))),
            finished: Some(format!("2026-12-01T10:00:{sec:02}.000Z")),
            manifest_url: Some(url.into()),
            serial,
        }
    }

    fn answers(list: &[(&str, Vec<PeerDeploy>)]) -> BTreeMap<String, Vec<PeerDeploy>> {
        list.iter()
            .map(|(n, d)| (n.to_string(), d.clone()))
            .collect()
    }

    fn chosen(plan: &BTreeMap<String, Choice>, dest: &str) -> Option<String> {
        match plan.get(dest)? {
            Choice::Deploy(c) => Some(c.url.clone()),
            Choice::Skip(_) => None,
        }
    }

    const V1: &str = "https://r.example.com/app/v1.yml";
    const V2: &str = "https://r.example.com/app/v2.yml";
    const V3: &str = "https://r.example.com/app/v3.yml";

    #[test]
    fn the_newest_with_a_quorum_wins() {
        let a = answers(&[
            ("n1", vec![ok("/srv/app", V2, Some(2), 5)]),
            ("n2", vec![ok("/srv/app", V2, Some(2), 6)]),
            ("n3", vec![ok("/srv/app", V1, Some(1), 9)]),
        ]);
        let plan = choose(&a, 2);
        assert_eq!(chosen(&plan, "/srv/app").as_deref(), Some(V2));
        let Some(Choice::Deploy(c)) = plan.get("/srv/app") else {
            panic!()
        };
        assert_eq!(c.voters.len(), 2);
        assert_eq!(c.finished.to_rfc3339(), "2026-12-01T10:00:06+00:00");
        // a newer manifest only one peer has (a rollout under way) does not win...
        let a = answers(&[
            ("n1", vec![ok("/srv/app", V3, Some(3), 1)]),
            ("n2", vec![ok("/srv/app", V2, Some(2), 6)]),
            ("n3", vec![ok("/srv/app", V2, Some(2), 7)]),
        ]);
        assert_eq!(chosen(&choose(&a, 2), "/srv/app").as_deref(), Some(V2));
        // ... but does with --quorum 1
        assert_eq!(chosen(&choose(&a, 1), "/srv/app").as_deref(), Some(V3));
    }

    #[test]
    fn a_lying_minority_is_outvoted() {
        // n3 claims an old URL with a huge serial and a finish in the future
        let mut lie = ok("/srv/app", V1, Some(u64::MAX), 0);
        lie.finished = Some("2999-01-01T00:00:00Z".into());
        let a = answers(&[
            ("n1", vec![ok("/srv/app", V2, Some(2), 5)]),
            ("n2", vec![ok("/srv/app", V2, Some(2), 6)]),
            ("n3", vec![lie.clone()]),
        ]);
        assert_eq!(chosen(&choose(&a, 2), "/srv/app").as_deref(), Some(V2));
        // the same URL with another serial or checksum is another candidate
        let mut other = ok("/srv/app", V2, Some(9), 6);
        other.checksum = Some("ffffffffffff".into());
        let a = answers(&[
            ("n1", vec![ok("/srv/app", V2, Some(2), 5)]),
            ("n2", vec![other]),
        ]);
        assert!(matches!(
            choose(&a, 2).get("/srv/app"),
            Some(Choice::Skip(why)) if why.contains("quorum of 2")
        ));
    }

    #[test]
    fn serial_then_finish_orders_the_candidates() {
        // same serial: the later finish is newer
        let a = answers(&[
            ("n1", vec![ok("/srv/app", V1, Some(5), 1)]),
            ("n2", vec![ok("/srv/app", V1, Some(5), 2)]),
            ("n3", vec![ok("/srv/app", V2, Some(5), 8)]),
            ("n4", vec![ok("/srv/app", V2, Some(5), 9)]),
        ]);
        assert_eq!(chosen(&choose(&a, 2), "/srv/app").as_deref(), Some(V2));
        // a manifest without serial is older than any with one, however late
        let a = answers(&[
            ("n1", vec![ok("/srv/app", V1, Some(0), 1)]),
            ("n2", vec![ok("/srv/app", V1, Some(0), 2)]),
            ("n3", vec![ok("/srv/app", V2, None, 8)]),
            ("n4", vec![ok("/srv/app", V2, None, 9)]),
        ]);
        assert_eq!(chosen(&choose(&a, 2), "/srv/app").as_deref(), Some(V1));
        // without serials, the finish decides
        let a = answers(&[
            ("n1", vec![ok("/srv/app", V1, None, 1)]),
            ("n2", vec![ok("/srv/app", V1, None, 2)]),
            ("n3", vec![ok("/srv/app", V2, None, 8)]),
            ("n4", vec![ok("/srv/app", V2, None, 9)]),
        ]);
        assert_eq!(chosen(&choose(&a, 2), "/srv/app").as_deref(), Some(V2));
    }

    #[test]
    fn fewer_peers_than_the_quorum_must_all_agree() {
        let one = answers(&[("n1", vec![ok("/srv/app", V2, Some(2), 5)])]);
        assert_eq!(chosen(&choose(&one, 2), "/srv/app").as_deref(), Some(V2));
        assert_eq!(chosen(&choose(&one, 5), "/srv/app").as_deref(), Some(V2));
        let two = answers(&[
            ("n1", vec![ok("/srv/app", V2, Some(2), 5)]),
            ("n2", vec![ok("/srv/app", V1, Some(1), 5)]),
        ]);
        assert!(matches!(
            choose(&two, 3).get("/srv/app"),
            Some(Choice::Skip(_))
        ));
    }

    #[test]
    fn failures_redacted_urls_and_other_dests() {
        let mut failed = ok("/srv/app", V3, Some(3), 9);
        failed.result = "failure".into();
        let presigned = "https://b.s3.amazonaws.com/app.yml?REDACTED";
        let a = answers(&[
            (
                "n1",
                vec![
                    failed.clone(),
                    ok("/srv/api", presigned, Some(7), 1),
                    PeerDeploy {
                        dest: None,
                        ..ok("/x", V1, None, 1)
                    },
                ],
            ),
            (
                "n2",
                vec![
                    ok("/srv/app", V2, Some(2), 5),
                    ok("/srv/api", presigned, Some(7), 2),
                    ok("/srv/old", V1, None, 3),
                ],
            ),
            ("n3", vec![ok("/srv/app", V2, Some(2), 6), failed]),
        ]);
        let plan = choose(&a, 2);
        // the failures do not count; commands-only manifests are not caught up
        assert_eq!(plan.len(), 3, "{plan:?}");
        assert_eq!(chosen(&plan, "/srv/app").as_deref(), Some(V2));
        assert!(matches!(
            plan.get("/srv/api"),
            Some(Choice::Skip(why)) if why.contains("redacted")
        ));
        assert!(matches!(
            plan.get("/srv/old"),
            Some(Choice::Skip(why)) if why.contains("quorum")
        ));
        // a dest that only failed, or whose URL an older version does not report
        let mut old = ok("/srv/app", V2, Some(2), 5);
        old.manifest_url = None;
        let mut bad = ok("/srv/web", V2, Some(2), 5);
        bad.result = "failure".into();
        let plan = choose(&answers(&[("n1", vec![old, bad])]), 2);
        for dest in ["/srv/app", "/srv/web"] {
            assert!(
                matches!(plan.get(dest), Some(Choice::Skip(why)) if why.contains("no peer reports")),
                "{plan:?}"
            );
        }
    }

    #[test]
    fn answers_of_the_wrong_shape_are_refused() {
        let good = r#"{"host":"h","deploys":[{"dest":"/srv/app","result":"success","checksum":"ABCDEF012345","finished":"2026-12-01T10:00:00.000Z","failed_step":null,"error":null,"manifest_url":"https://r.example.com/v2.yml","serial":2}]}"#;
        let d = parse_peer(good.as_bytes()).unwrap();
        assert_eq!(d[0].checksum.as_deref(), Some("abcdef012345"));
        assert_eq!(d[0].serial, Some(2));
        // an answer of an older version: no URL, no serial
        let older = r#"{"host":"h","deploys":[{"dest":"/srv/app","result":"success","checksum":"abc","finished":"2026-12-01T10:00:00Z","failed_step":null,"error":null}]}"#;
        assert_eq!(parse_peer(older.as_bytes()).unwrap()[0].manifest_url, None);
        let swap = |from: &str, to: &str| good.replace(from, to);
        for bad in [
            swap("\"serial\":2", "\"serial\":-1"),
            swap("\"serial\":2", "\"serial\":2.5"),
            swap("\"serial\":2", "\"serial\":\"2\""),
            swap("\"serial\":2", "\"serial\":99999999999999999999999"),
            swap("https://r.example.com/v2.yml", "/srv/v2.yml"),
            swap(
                "https://r.example.com/v2.yml",
                "https://r.example.com/\\u001b[2J",
            ),
            swap(
                "\"manifest_url\":\"https://r.example.com/v2.yml\"",
                "\"manifest_url\":7",
            ),
            swap("2026-12-01T10:00:00.000Z", "yesterday"),
            swap(
                "\"finished\":\"2026-12-01T10:00:00.000Z\"",
                "\"finished\":null",
            ),
            swap("\"dest\":\"/srv/app\"", "\"dest\":\"srv/app\""),
            swap("ABCDEF012345", "not hex"),
            swap("]}", ",{\"dest\":\"/srv/app\",\"result\":\"failure\"}]}"),
            format!("{good}\n{good}"),
            "[]".to_string(),
            String::new(),
            "x".repeat(5000),
        ] {
            assert!(parse_peer(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse_peer(b"{\"host\":\"\xff\",\"deploys\":[]}").is_err());
    }

    #[test]
    fn role_values_are_literals() {
        assert_eq!(quote_meta("web.eu"), "web\\.eu");
        assert_eq!(quote_meta("a|b(c)*"), "a\\|b\\(c\\)\\*");
    }
}
