//! `stretcher fleet status` (SPEC §13): the last deploys of every host, asked
//! through Serf's own query mechanism — no server of ours, no `serf` binary.
//!
//! One job: ask the local Serf agent over its RPC (`serf_rpc`) for the members and
//! their answers to the `stretcher-status` query, with the same filters; judge
//! every member (`assess`, a pure function), and hand back a table and the summary
//! line, or one JSON object. The round ends as soon as every alive member matching
//! the filters has answered, else at the query's timeout. Every host answers with
//! `stretcher status --brief --json`. When stderr is a terminal, a progress line
//! shows the hosts answered so far while the round runs.
//!
//! Answers are data, not text (SPEC §17): `parse_answer` takes an answer only as
//! one line of the brief's JSON with fields of the right type, size and encoding
//! (else the member is `invalid`), and the table shows every field through
//! `log::shown_text`, so no answer can print a line, or a row, of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::{FleetOptions, Output};
use crate::error::{Error, Result};
use crate::log::shown_text;
use crate::serf_rpc::{Client, Member, MemberFilter, Poll, QueryEvent, QueryParams};
use crate::status::BRIEF_LIMIT;
use crate::Env;

/// The query every host answers (the handler `query:stretcher-status=...`).
pub const QUERY: &str = "stretcher-status";

/// The agent's RPC address when neither `--rpc-addr` nor `SERF_RPC_ADDR` gives one
/// (the `serf` command's default).
const DEFAULT_RPC_ADDR: &str = "127.0.0.1:7373";

/// How long connecting to the agent and each call may take (Serf's own client's
/// `DefaultTimeout`).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the progress line is redrawn while the round waits.
const TICK: Duration = Duration::from_millis(200);

/// Runs `fleet status` with the process's environment: its result and exit
/// status (SPEC §13).
pub fn main(opts: &FleetOptions) -> Output {
    let env = |k: &str| std::env::var(k).ok();
    match run(opts, &env) {
        Ok(report) => {
            let text = if opts.json {
                let mut s = serde_json::to_string_pretty(&report).unwrap_or_default();
                s.push('\n');
                s
            } else {
                report.table(opts.problems)
            };
            Output::stdout(text, if report.ok { 0 } else { 1 })
        }
        Err(e) => Output::stderr(format!("stretcher: {e}"), e.exit_code()),
    }
}

/// Asks the agent for the members and their answers, and judges them.
pub(crate) fn run(opts: &FleetOptions, env: Env) -> Result<Report> {
    let addr = opts
        .rpc_addr
        .clone()
        .or_else(|| env("SERF_RPC_ADDR").filter(|a| !a.is_empty()))
        .unwrap_or_else(|| DEFAULT_RPC_ADDR.to_string());
    let auth = env("SERF_RPC_AUTH");
    let mut client = Client::connect(&addr, auth.as_deref(), RPC_TIMEOUT)?;
    let members = client.members_filtered(&member_filter(opts))?;
    let alive: BTreeSet<&str> = members
        .iter()
        .filter(|m| m.status == "alive")
        .map(|m| m.name.as_str())
        .collect();
    if alive.is_empty() && members.iter().all(|m| m.status != "failed") {
        return Err(Error::fleet(
            "no alive serf member matches the --tag / --node filters",
        ));
    }
    let progress = std::io::stderr().is_terminal().then(|| Progress {
        start: Instant::now(),
        alive: alive.len(),
        of: opts
            .timeout
            .map(|t| format!(" of {:.1}s", t.as_secs_f64()))
            .unwrap_or_default(),
    });
    // with only failed members there is nobody to ask
    let query = if alive.is_empty() {
        Ok(QueryOutput::default())
    } else {
        ask(&mut client, &query_params(opts), &alive, progress.as_ref())
    };
    if progress.is_some() {
        // clear the progress line
        eprint!("\r\x1b[K");
    }
    let query = query?;
    if !alive.is_empty() && query.responses.is_empty() {
        return Err(Error::fleet(format!(
            "no member answered serf query {QUERY} in time ({} of {} alive acknowledged \
             it): is \"query:{QUERY}=stretcher status --brief --json\" among the agents' \
             -event-handler (or are they all still deploying)?",
            query.acks.len(),
            alive.len()
        )));
    }
    Ok(assess(&members, &query, opts.checksum.as_deref()))
}

/// The member list's filters for `opts`: its tags, and its nodes as one anchored
/// alternation of literal names.
pub(crate) fn member_filter(opts: &FleetOptions) -> MemberFilter {
    let names: Vec<String> = opts.nodes.iter().map(|n| quote_meta(n)).collect();
    MemberFilter {
        tags: opts.tags.iter().cloned().collect(),
        status: String::new(),
        name: if names.is_empty() {
            String::new()
        } else {
            // serf anchors the regexp at both ends
            format!("(?:{})", names.join("|"))
        },
    }
}

/// The query's filters for `opts`: the same tags and nodes, and its timeout.
pub(crate) fn query_params(opts: &FleetOptions) -> QueryParams {
    QueryParams {
        nodes: opts.nodes.clone(),
        tags: opts.tags.iter().cloned().collect(),
        timeout: opts.timeout,
    }
}

/// Go's `regexp.QuoteMeta`: a node name as a literal inside serf's name regexp.
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

/// The progress line on a terminal.
struct Progress {
    start: Instant,
    alive: usize,
    /// ` of 3.0s` with `--timeout`.
    of: String,
}

impl Progress {
    fn show(&self, q: &QueryOutput) {
        eprint!(
            "\r\x1b[K{} of {} alive members answered ({} acknowledged), {:.1}s{}",
            q.responses.len(),
            self.alive,
            q.acks.len(),
            self.start.elapsed().as_secs_f64(),
            self.of
        );
    }
}

/// One query round: the acks and answers until every member of `alive` has
/// answered (the rest of the stream is left unread) or the agent ends the query.
/// A node's first answer counts; its payload is read as UTF-8, invalid bytes
/// replaced.
fn ask(
    client: &mut Client,
    params: &QueryParams,
    alive: &BTreeSet<&str>,
    progress: Option<&Progress>,
) -> Result<QueryOutput> {
    let mut out = QueryOutput::default();
    let mut query = client.query(QUERY, b"", params)?;
    // the alive members that have not answered yet
    let mut waiting: BTreeSet<&str> = alive.clone();
    let mut shown: Option<Instant> = None;
    while !waiting.is_empty() {
        if let Some(p) = progress {
            // at most once a tick, however fast the records come
            if shown.is_none_or(|t| t.elapsed() >= TICK) {
                p.show(&out);
                shown = Some(Instant::now());
            }
        }
        // the wait ends at the stream's own deadline without a terminal to redraw
        let until = Instant::now() + if progress.is_some() { TICK } else { LONG_WAIT };
        match query.poll(until)? {
            Poll::Event(QueryEvent::Ack(node)) => {
                out.acks.insert(node);
            }
            Poll::Event(QueryEvent::Response { from, payload }) => {
                waiting.remove(from.as_str());
                out.acks.insert(from.clone());
                out.responses
                    .entry(from)
                    .or_insert_with(|| String::from_utf8_lossy(&payload).into_owned());
            }
            Poll::Idle => {}
            Poll::Done => break,
        }
    }
    if let Some(p) = progress {
        p.show(&out);
    }
    query.stop();
    Ok(out)
}

/// Longer than any query's stream may run (`serf_rpc` ends it sooner).
const LONG_WAIT: Duration = Duration::from_secs(3600);

/// The acks and answers of one round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct QueryOutput {
    /// The nodes that acknowledged the query.
    pub acks: BTreeSet<String>,
    /// Node name → its answer.
    pub responses: BTreeMap<String, String>,
}

/// A member's answer, as `stretcher status --brief --json` of any version writes
/// it (SPEC §13): fields this version does not know (`manifest_url`, `serial`, ...)
/// are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Answer {
    /// The host's own name for itself (required, not shown: the node name is).
    #[serde(rename = "host")]
    _host: String,
    pub deploys: Vec<AnswerDeploy>,
    /// Dests left out to fit Serf's response limit (failed ones are kept first).
    #[serde(default)]
    pub omitted: usize,
    /// Why the host could not read its records at all.
    pub error: Option<String>,
}

/// One dest's last deploy in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AnswerDeploy {
    /// The dest's path; null for a commands-only manifest.
    pub dest: Option<String>,
    /// `success`, `failure`, `refused`, `running`, `interrupted`, ...
    pub result: String,
    /// The first 12 hex digits (of the checksum deployed, or being deployed).
    pub checksum: Option<String>,
    pub finished: Option<String>,
    /// When a `running` deploy started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    pub failed_step: Option<String>,
    pub error: Option<String>,
}

/// How one host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HostState {
    /// It answered, every last deploy succeeded (and holds `--checksum`).
    Success,
    /// It answered, and something is wrong: a failed or interrupted deploy,
    /// nothing recorded, another checksum.
    Failure,
    /// It answered that a deploy is in progress, and none failed.
    Running,
    /// Its answer left dests out to fit Serf's limit and kept only successes (and
    /// no running one): what it left out cannot be confirmed.
    Partial,
    /// It answered something that is not a brief status (`parse_answer`): not one
    /// line, not the brief's JSON, or a field of the wrong type, size or encoding.
    Invalid,
    /// Alive, but no answer arrived before the query's timeout.
    Silent,
    /// Serf reports it `failed` (crashed or cut off).
    Unreachable,
}

impl HostState {
    fn as_str(self) -> &'static str {
        match self {
            HostState::Success => "success",
            HostState::Failure => "failure",
            HostState::Running => "running",
            HostState::Partial => "partial",
            HostState::Invalid => "invalid",
            HostState::Silent => "silent",
            HostState::Unreachable => "unreachable",
        }
    }
}

/// One member in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Host {
    pub node: String,
    pub state: HostState,
    /// Why it is not `success`, when no deploy row says it.
    pub problem: Option<String>,
    /// Its answer's deploys (empty unless it answered).
    pub deploys: Vec<AnswerDeploy>,
    /// Deploys its answer left out to stay within serf's response limit.
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One dest whose hosts disagree: each checksum its rows name, and on how many
/// hosts the last deploy succeeded with it (most first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Split {
    /// The dest (null: commands-only manifests).
    pub dest: Option<String>,
    pub checksums: Vec<SplitChecksum>,
}

/// One checksum of a `Split`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SplitChecksum {
    /// Its first 12 hex digits, lower case.
    pub checksum: String,
    /// The hosts whose last deploy of the dest succeeded with it.
    pub success: usize,
}

/// The whole judgement; `ok` is the exit status's question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Report {
    pub alive: usize,
    pub answered: usize,
    pub success: usize,
    pub failure: usize,
    pub running: usize,
    pub partial: usize,
    pub invalid: usize,
    pub silent: usize,
    pub unreachable: usize,
    pub checksum: Option<String>,
    pub ok: bool,
    pub hosts: Vec<Host>,
    /// The dests whose hosts name more than one checksum.
    pub splits: Vec<Split>,
}

/// Judges every member (SPEC §13, §17): `alive` ones answered (success / failure /
/// running / partial / invalid) or silent, `failed` ones unreachable, `left` /
/// `leaving` ones not counted. An answer from a node the member list lacked (it
/// joined meanwhile) counts as alive.
pub(crate) fn assess(members: &[Member], query: &QueryOutput, checksum: Option<&str>) -> Report {
    let mut hosts = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    let bare = |node: &str, state, problem: &str| Host {
        node: node.to_string(),
        state,
        problem: Some(problem.into()),
        deploys: Vec::new(),
        omitted: 0,
    };
    for m in members {
        names.push(&m.name);
        let host = match (m.status.as_str(), query.responses.get(&m.name)) {
            (_, Some(answer)) => judge(&m.name, answer, checksum),
            ("alive", None) if query.acks.contains(&m.name) => bare(
                &m.name,
                HostState::Silent,
                "acknowledged the query but sent no answer",
            ),
            ("alive", None) => bare(&m.name, HostState::Silent, "no answer"),
            ("failed", None) => bare(
                &m.name,
                HostState::Unreachable,
                "serf reports the member failed",
            ),
            // left or leaving: not counted
            _ => continue,
        };
        hosts.push(host);
    }
    for (node, answer) in &query.responses {
        if !names.contains(&node.as_str()) {
            hosts.push(judge(node, answer, checksum));
        }
    }
    hosts.sort_by(|a, b| a.node.cmp(&b.node));
    let count = |s: HostState| hosts.iter().filter(|h| h.state == s).count();
    let (success, failure, running, partial, invalid, silent, unreachable) = (
        count(HostState::Success),
        count(HostState::Failure),
        count(HostState::Running),
        count(HostState::Partial),
        count(HostState::Invalid),
        count(HostState::Silent),
        count(HostState::Unreachable),
    );
    let answered = success + failure + running + partial + invalid;
    let alive = answered + silent;
    let splits = splits(&hosts);
    Report {
        alive,
        answered,
        success,
        failure,
        running,
        partial,
        invalid,
        silent,
        unreachable,
        checksum: checksum.map(str::to_string),
        ok: alive > 0 && success == alive && unreachable == 0,
        hosts,
        splits,
    }
}

/// A checksum as the answers compare: its first 12 hex digits, lower case.
fn short(c: &str) -> String {
    c.chars().take(12).collect::<String>().to_ascii_lowercase()
}

/// Per dest, the checksums its hosts' rows name and how many hosts succeeded with
/// each; only the dests with more than one.
fn splits(hosts: &[Host]) -> Vec<Split> {
    let mut by_dest: BTreeMap<Option<&str>, BTreeMap<String, usize>> = BTreeMap::new();
    for h in hosts {
        for d in &h.deploys {
            let Some(c) = d.checksum.as_deref() else {
                continue;
            };
            let n = by_dest
                .entry(d.dest.as_deref())
                .or_default()
                .entry(short(c))
                .or_default();
            if d.result == "success" && d.error.is_none() {
                *n += 1;
            }
        }
    }
    by_dest
        .into_iter()
        .filter(|(_, sums)| sums.len() > 1)
        .map(|(dest, sums)| {
            let mut checksums: Vec<SplitChecksum> = sums
                .into_iter()
                .map(|(checksum, success)| SplitChecksum { checksum, success })
                .collect();
            checksums.sort_by(|a, b| b.success.cmp(&a.success).then(a.checksum.cmp(&b.checksum)));
            Split {
                dest: dest.map(str::to_string),
                checksums,
            }
        })
        .collect()
}

/// The checksum most hosts of `dest` last deployed with success; `None` on a tie
/// (or when none succeeded).
fn majority(hosts: &[Host], dest: Option<&str>) -> Option<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for d in hosts.iter().flat_map(|h| &h.deploys) {
        if d.dest.as_deref() == dest && d.result == "success" && d.error.is_none() {
            if let Some(c) = d.checksum.as_deref() {
                *counts.entry(short(c)).or_default() += 1;
            }
        }
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    match ranked.as_slice() {
        [(c, _)] => Some(c.clone()),
        [(c, n), (_, m), ..] if n > m => Some(c.clone()),
        _ => None,
    }
}

/// The table `fleet status` prints when one alive member, `node`, answered
/// `answer` (its handler's output, read as UTF-8 with invalid bytes replaced, as
/// `fleet status` reads it), judged against `checksum` (hex) when given. What the
/// `fleet_answer` fuzz target renders: the parser and the table as `fleet status`
/// runs them.
pub fn answer_table(node: &str, answer: &[u8], checksum: Option<&str>) -> String {
    let answer = String::from_utf8_lossy(answer).into_owned();
    let members = [Member {
        name: node.to_string(),
        status: "alive".into(),
        tags: BTreeMap::new(),
    }];
    let query = QueryOutput {
        acks: BTreeSet::from([node.to_string()]),
        responses: BTreeMap::from([(node.to_string(), answer)]),
    };
    assess(&members, &query, checksum).table(false)
}

/// The longest checksum an answer may carry: the 128 hex digits of a sha512 (the
/// brief sends the first 12).
const MAX_CHECKSUM: usize = 128;

/// The longest `result` or `failed_step` word of an answer.
const MAX_WORD: usize = 32;

/// The longest `finished` or `started` time of an answer.
const MAX_TIME: usize = 64;

/// How much of an invalid answer its row shows.
const EXCERPT_CHARS: usize = 120;

/// A member's answer, read as `stretcher status --brief --json` writes it (SPEC
/// §13, §17): one line of at most `BRIEF_LIMIT` bytes, the JSON of an `Answer`
/// (unknown keys allowed), every checksum 1 to `MAX_CHECKSUM` hex digits, every
/// `result` and `failed_step` a lower-case word, every `finished` and `started`
/// short. Text fields (host, dest, times, error) may hold any character: they are
/// data, escaped when shown. `Err` says why the member is `invalid`; never a panic.
pub(crate) fn parse_answer(answer: &str) -> std::result::Result<Answer, String> {
    if answer.len() > BRIEF_LIMIT {
        return Err(format!(
            "{} bytes, more than serf's {BRIEF_LIMIT}",
            answer.len()
        ));
    }
    let line = answer.trim_matches(|c: char| c.is_ascii_whitespace());
    if line.contains(['\n', '\r']) {
        return Err("more than one line".into());
    }
    let brief: Answer =
        serde_json::from_str(line).map_err(|e| format!("not a brief status: {e}"))?;
    let word = |w: &str| {
        !w.is_empty()
            && w.len() <= MAX_WORD
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    for d in &brief.deploys {
        if let Some(c) = &d.checksum {
            if c.is_empty() || c.len() > MAX_CHECKSUM || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "a checksum that is not 1 to {MAX_CHECKSUM} hex digits"
                ));
            }
        }
        if !word(&d.result) || !d.failed_step.as_deref().is_none_or(word) {
            return Err("a result or failed_step that is not a word".into());
        }
        if [&d.finished, &d.started]
            .iter()
            .any(|t| t.as_ref().is_some_and(|t| t.len() > MAX_TIME))
        {
            return Err(format!("a time longer than {MAX_TIME} bytes"));
        }
    }
    Ok(brief)
}

/// One answer: the host's brief status.
fn judge(node: &str, answer: &str, checksum: Option<&str>) -> Host {
    let mut host = Host {
        node: node.to_string(),
        state: HostState::Failure,
        problem: None,
        deploys: Vec::new(),
        omitted: 0,
    };
    let brief = match parse_answer(answer) {
        Ok(b) => b,
        Err(why) => {
            // kept as the member wrote it (the table escapes it, JSON quotes it)
            let excerpt: String = answer.trim().chars().take(EXCERPT_CHARS).collect();
            host.state = HostState::Invalid;
            host.problem = Some(format!("invalid answer ({why}): {excerpt}"));
            return host;
        }
    };
    host.deploys = brief.deploys;
    host.omitted = brief.omitted;
    if let Some(e) = brief.error {
        host.problem = Some(e);
        return host;
    }
    if host.deploys.is_empty() && host.omitted == 0 {
        host.problem = Some("nothing recorded".into());
        return host;
    }
    let fine = |d: &AnswerDeploy| d.error.is_none() && d.result == "success";
    let running = |d: &AnswerDeploy| d.error.is_none() && d.result == "running";
    // a failure, an interrupted deploy, a result this version does not know
    if !host.deploys.iter().all(|d| fine(d) || running(d)) {
        return host;
    }
    if host.deploys.iter().any(running) {
        host.state = HostState::Running;
        return host;
    }
    if host.omitted > 0 {
        // the "(N more)" row says why
        host.state = HostState::Partial;
        return host;
    }
    if let Some(want) = checksum {
        let holds = host.deploys.iter().any(|d| {
            d.checksum
                .as_deref()
                .is_some_and(|c| same_checksum(c, want))
        });
        if !holds {
            let want12: String = want.chars().take(12).collect();
            host.problem = Some(format!("does not hold checksum {want12}"));
            return host;
        }
    }
    host.state = HostState::Success;
    host
}

/// The answer carries the first 12 hex digits: compare on what both have (as
/// bytes: a slice of a `str` could cut a character).
fn same_checksum(answer: &str, want: &str) -> bool {
    let (answer, want) = (answer.as_bytes(), want.as_bytes());
    let n = answer.len().min(want.len());
    n > 0 && answer[..n].eq_ignore_ascii_case(&want[..n])
}

impl Report {
    /// The summary line of SPEC §13, with the running, partial and invalid members
    /// by name (SPEC §17).
    pub(crate) fn summary(&self) -> String {
        let mut line = format!(
            "{} answered of {} alive members: {} success, {} failure, {} silent, {} unreachable",
            self.answered, self.alive, self.success, self.failure, self.silent, self.unreachable
        );
        for (n, state) in [
            (self.running, HostState::Running),
            (self.partial, HostState::Partial),
            (self.invalid, HostState::Invalid),
        ] {
            if n > 0 {
                let names: Vec<String> = self
                    .hosts
                    .iter()
                    .filter(|h| h.state == state)
                    .map(|h| shown_text(&h.node))
                    .collect();
                line.push_str(&format!(", {n} {} ({})", state.as_str(), names.join(", ")));
            }
        }
        line
    }

    /// One line per dest whose hosts disagree: `checksums of DEST differ:
    /// CHECKSUM on N hosts, ...` (N: the hosts whose last deploy succeeded with it).
    pub(crate) fn split_lines(&self) -> Vec<String> {
        self.splits
            .iter()
            .map(|s| {
                let sums: Vec<String> = s
                    .checksums
                    .iter()
                    .map(|c| {
                        let hosts = if c.success == 1 { "host" } else { "hosts" };
                        format!("{} on {} {hosts}", shown_text(&c.checksum), c.success)
                    })
                    .collect();
                format!(
                    "checksums of {} differ (hosts whose last deploy succeeded with each): {}",
                    s.dest.as_deref().map_or("-".into(), shown_text),
                    sums.join(", ")
                )
            })
            .collect()
    }

    /// One row per host and dest (node, dest, result, checksum, finished, error),
    /// columns aligned, then the summary line and the split lines. With `problems`,
    /// only the rows that are not success on their dest's majority checksum (on a
    /// tie, every row of that dest), and every row of a host judged otherwise than
    /// success with no row of its own to say why. Every field is shown through
    /// `shown_text`: no control character of an answer or a node name reaches the
    /// terminal, and each row is one line.
    pub fn table(&self, problems: bool) -> String {
        let dash = |s: Option<&str>| s.filter(|s| !s.is_empty()).map_or("-".into(), shown_text);
        let mut rows: Vec<[String; 6]> = vec![[
            "NODE".into(),
            "DEST".into(),
            "RESULT".into(),
            "CHECKSUM".into(),
            "FINISHED".into(),
            "ERROR".into(),
        ]];
        let majorities: BTreeMap<Option<&str>, Option<String>> = self
            .hosts
            .iter()
            .flat_map(|h| &h.deploys)
            .map(|d| (d.dest.as_deref(), majority(&self.hosts, d.dest.as_deref())))
            .collect();
        let on_majority = |d: &AnswerDeploy| {
            let m = majorities.get(&d.dest.as_deref()).cloned().flatten();
            d.result == "success"
                && d.error.is_none()
                && m.is_some_and(|m| d.checksum.as_deref().map(short) == Some(m))
        };
        for h in &self.hosts {
            let node = shown_text(&h.node);
            if h.deploys.is_empty() {
                if !problems || h.state != HostState::Success {
                    rows.push([
                        node.clone(),
                        "-".into(),
                        h.state.as_str().into(),
                        "-".into(),
                        "-".into(),
                        dash(h.problem.as_deref()),
                    ]);
                }
                continue;
            }
            let fine: Vec<bool> = h.deploys.iter().map(on_majority).collect();
            // judged otherwise than success though every row is fine (another
            // --checksum, a partial answer): every row shows it
            let unexplained = h.state != HostState::Success && fine.iter().all(|f| *f);
            for (d, fine) in h.deploys.iter().zip(fine) {
                if problems && fine && !unexplained {
                    continue;
                }
                let error = match (&d.failed_step, &d.error) {
                    (Some(step), Some(e)) => shown_text(format!("failed at {step}: {e}")),
                    (None, Some(e)) => shown_text(e),
                    (Some(step), None) => shown_text(format!("failed at {step}")),
                    (None, None) if d.result == "running" => {
                        format!("deploying since {}", dash(d.started.as_deref()))
                    }
                    // an interrupted run: when it started
                    (None, None) if d.started.is_some() => {
                        format!("started {}", dash(d.started.as_deref()))
                    }
                    (None, None) => dash(h.problem.as_deref()),
                };
                rows.push([
                    node.clone(),
                    dash(d.dest.as_deref()),
                    shown_text(&d.result),
                    dash(d.checksum.as_deref()),
                    dash(d.finished.as_deref()),
                    error,
                ]);
            }
            if h.omitted > 0 {
                rows.push([
                    node.clone(),
                    format!("({} more)", h.omitted),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "left out of the answer (serf's 1024-byte limit): not confirmed".into(),
                ]);
            }
        }
        let mut widths = [0usize; 6];
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 < r.len() {
                    line.push_str(&format!("{c:<w$}  ", w = widths[i]));
                } else {
                    line.push_str(c);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push_str(&self.summary());
        out.push('\n');
        for line in self.split_lines() {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, status: &str) -> Member {
        Member {
            name: name.into(),
            status: status.into(),
            tags: BTreeMap::new(),
        }
    }

    fn answer(result: &str, checksum: &str, error: Option<&str>) -> String {
        let failed = error.map(|_| "pre");
        serde_json::json!({
            "host": "h",
            "deploys": [{
                "dest": "/srv/app", "result": result, "checksum": checksum,
                "finished": "2026-12-01T10:00:00.000Z", "failed_step": failed, "error": error,
            }]
        })
        .to_string()
    }

    /// The state `r` gives `node`, as its JSON spells it.
    fn state_of(r: &Report, node: &str) -> String {
        let h = r.hosts.iter().find(|h| h.node == node).unwrap();
        serde_json::to_value(h.state)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `answer` judged alone (member `node`, alive), against `checksum`.
    fn alone(node: &str, answer: &str, checksum: Option<&str>) -> Report {
        let mut q = QueryOutput::default();
        q.responses.insert(node.into(), answer.into());
        assess(&[member(node, "alive")], &q, checksum)
    }

    /// No control character, and the rows of the table are its lines.
    fn assert_clean(table: &str, rows: usize) {
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        // header, rows, summary
        assert_eq!(table.lines().count(), rows + 2, "{table}");
    }

    #[test]
    fn control_characters_of_an_answer_are_shown_escaped() {
        let answer = serde_json::json!({
            "host": "h",
            "deploys": [{
                "dest": "/srv/app\nweb-2  /srv/app  success  0123456789ab  -  -",
                "result": "failure", "checksum": "0123456789ab",
                "finished": "2026-12-01T10:00:00.000Z\x1b[2K",
                "failed_step": "pre", "error": "boom\r\x1b[31mred\x07",
            }]
        })
        .to_string();
        let r = alone("web-1", &answer, None);
        assert_eq!(state_of(&r, "web-1"), "failure");
        let table = r.table(false);
        assert_clean(&table, 1);
        assert!(
            table.contains("/srv/app\\x0aweb-2  /srv/app  success"),
            "{table}"
        );
        assert!(table.contains("000Z\\x1b[2K"), "{table}");
        assert!(
            table.contains("failed at pre: boom\\x0d\\x1b[31mred\\x07"),
            "{table}"
        );
        // the JSON output keeps the data as it came (serde escapes it)
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#"boom\r\u001b[31mred\u0007"#), "{json}");

        // a node name of several lines (serf lets a member choose it)
        let node = "evil\nweb-2  /srv/app  success\x1b[1A";
        let r = alone(node, &answer, None);
        let table = r.table(false);
        assert_clean(&table, 1);
        assert!(
            table.contains("evil\\x0aweb-2  /srv/app  success\\x1b[1A  "),
            "{table}"
        );
        // a problem of its own (the answer's `error`) and a silent member too
        let mut q = QueryOutput::default();
        q.responses.insert(
            "e\x1b]0;title\x07".into(),
            r#"{"host":"e","deploys":[],"error":"cannot read\nweb-9  -  success"}"#.into(),
        );
        let r = assess(
            &[member("e\x1b]0;title\x07", "alive"), member("q\n", "alive")],
            &q,
            None,
        );
        let table = r.table(false);
        assert_clean(&table, 2);
        assert!(
            table.contains("cannot read\\x0aweb-9  -  success"),
            "{table}"
        );
        assert!(table.contains("e\\x1b]0;title\\x07"), "{table}");
        assert!(table.contains("q\\x0a"), "{table}");
    }

    #[test]
    fn a_wrong_answer_makes_the_member_invalid() {
        let deploy = |checksum: serde_json::Value| {
            serde_json::json!({"host": "h", "deploys": [{
                "dest": "/srv/app", "result": "success", "checksum": checksum,
                "finished": "2026-12-01T10:00:00.000Z",
            }]})
            .to_string()
        };
        let ok = deploy("0123456789ab".into());
        assert!(parse_answer(&ok).is_ok());
        assert!(parse_answer(&format!("  {ok}\n")).is_ok());
        let bad = [
            // a checksum that is not ASCII: its 12th byte is inside a character
            ("non-ASCII checksum", deploy("0123456789aé".into())),
            (
                "checksum of another alphabet",
                deploy("0123456789xy".into()),
            ),
            ("over-long checksum", deploy("a".repeat(129).into())),
            ("empty checksum", deploy("".into())),
            ("checksum of the wrong type", deploy(12345.into())),
            ("deploys an object", r#"{"host":"h","deploys":{}}"#.into()),
            ("deploys missing", r#"{"host":"h"}"#.into()),
            ("host a number", r#"{"host":7,"deploys":[]}"#.into()),
            (
                "result a number",
                r#"{"host":"h","deploys":[{"result":1}]}"#.into(),
            ),
            (
                "result not a word",
                r#"{"host":"h","deploys":[{"result":"success\n"}]}"#.into(),
            ),
            (
                "failed_step not a word",
                r#"{"host":"h","deploys":[{"result":"failure","failed_step":"PRE STEP"}]}"#.into(),
            ),
            (
                "omitted negative",
                r#"{"host":"h","deploys":[],"omitted":-1}"#.into(),
            ),
            (
                "error an array",
                r#"{"host":"h","deploys":[],"error":["x"]}"#.into(),
            ),
            (
                "finished too long",
                format!(
                    r#"{{"host":"h","deploys":[{{"result":"success","finished":"{}"}}]}}"#,
                    "9".repeat(65)
                ),
            ),
            ("not JSON", "oops".into()),
            ("two lines", format!("{ok}\n{ok}")),
            ("a JSON of several lines", ok.replace(",", ",\n")),
            (
                "too long",
                format!(r#"{{"host":"{}","deploys":[]}}"#, "h".repeat(BRIEF_LIMIT)),
            ),
        ];
        for (what, answer) in &bad {
            assert!(parse_answer(answer).is_err(), "{what}: {answer}");
            for checksum in [None, Some("0123456789ab"), Some("0123456789abcdef")] {
                let r = alone("web-1", answer, checksum);
                assert_eq!(state_of(&r, "web-1"), "invalid", "{what}");
                assert!(!r.ok, "{what}");
                assert_eq!(
                    r.summary(),
                    "1 answered of 1 alive members: 0 success, 0 failure, 0 silent, \
                     0 unreachable, 1 invalid (web-1)",
                    "{what}"
                );
                let table = r.table(false);
                assert_clean(&table, 1);
                assert!(table.contains("  invalid  "), "{what}: {table}");
            }
        }
        // the row shows the start of the answer, escaped
        let r = alone("web-1", &format!("{ok}\nweb-2  /srv/app  success"), None);
        let table = r.table(false);
        assert_clean(&table, 1);
        assert!(
            table.contains("invalid answer (more than one line): {\"deploys\":[{"),
            "{table}"
        );
        // invalid members are named, escaped, and not counted as success
        let mut q = QueryOutput::default();
        q.responses.insert("a".into(), ok.clone());
        q.responses.insert("b\n".into(), "oops".into());
        q.responses.insert("c".into(), bad[0].1.clone());
        let members = [
            member("a", "alive"),
            member("b\n", "alive"),
            member("c", "alive"),
        ];
        let r = assess(&members, &q, Some("0123456789ab"));
        assert!(!r.ok);
        assert_eq!(
            r.summary(),
            "3 answered of 3 alive members: 1 success, 0 failure, 0 silent, 0 unreachable, \
             2 invalid (b\\x0a, c)"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["invalid"], 2, "{json}");
        assert_eq!(json["hosts"][1]["state"], "invalid", "{json}");
    }

    #[test]
    fn every_kind_of_member() {
        let members = [
            member("ok", "alive"),
            member("bad", "alive"),
            member("quiet", "alive"),
            member("crashed", "failed"),
            member("gone", "left"),
            member("going", "leaving"),
            member("empty", "alive"),
            member("garbled", "alive"),
            member("old", "alive"),
        ];
        let mut q = QueryOutput::default();
        let sum = "0123456789abcdef0123";
        q.responses
            .insert("ok".into(), answer("success", &sum[..12], None));
        q.responses.insert(
            "bad".into(),
            answer("failure", &sum[..12], Some("failed: false exit status 1")),
        );
        q.responses
            .insert("empty".into(), r#"{"host":"e","deploys":[]}"#.into());
        q.responses.insert("garbled".into(), "oops".into());
        q.responses
            .insert("old".into(), answer("success", "ffffffffffff", None));
        q.acks = BTreeSet::from(["ok".into(), "quiet".into()]);
        let r = assess(&members, &q, Some(sum));
        assert_eq!(
            (
                r.alive,
                r.answered,
                r.success,
                r.failure,
                r.invalid,
                r.silent,
                r.unreachable
            ),
            (6, 5, 1, 3, 1, 1, 1)
        );
        assert!(!r.ok);
        let state = |n: &str| r.hosts.iter().find(|h| h.node == n).map(|h| h.state);
        assert_eq!(state("ok"), Some(HostState::Success));
        assert_eq!(state("old"), Some(HostState::Failure));
        assert_eq!(state("garbled"), Some(HostState::Invalid));
        assert_eq!(state("crashed"), Some(HostState::Unreachable));
        assert_eq!(state("gone"), None);
        assert_eq!(state("going"), None);
        // without --checksum the old release is fine
        let r = assess(&members, &q, None);
        let old = r.hosts.iter().find(|h| h.node == "old").unwrap();
        assert_eq!(old.state, HostState::Success);
        assert_eq!(
            r.summary(),
            "5 answered of 6 alive members: 2 success, 2 failure, 1 silent, 1 unreachable, \
             1 invalid (garbled)"
        );
    }

    #[test]
    fn ok_only_when_all_alive_succeed_and_none_unreachable() {
        let members = [member("a", "alive"), member("b", "alive")];
        let mut q = QueryOutput::default();
        q.responses
            .insert("a".into(), answer("success", "abc", None));
        q.responses
            .insert("b".into(), answer("success", "abc", None));
        assert!(assess(&members, &q, None).ok);
        assert!(assess(&members, &q, Some("ABC")).ok);
        assert!(!assess(&members, &q, Some("abd")).ok);
        let mut with_failed = members.to_vec();
        with_failed.push(member("c", "failed"));
        assert!(!assess(&with_failed, &q, None).ok);
        let mut with_left = members.to_vec();
        with_left.push(member("c", "left"));
        let r = assess(&with_left, &q, None);
        assert!(r.ok);
        assert_eq!(
            r.summary(),
            "2 answered of 2 alive members: 2 success, 0 failure, 0 silent, 0 unreachable"
        );
        q.responses.remove("b");
        assert!(!assess(&members, &q, None).ok);
    }

    #[test]
    fn table_golden() {
        let members = [
            member("web-1", "alive"),
            member("web-2", "alive"),
            member("web-3", "failed"),
        ];
        let mut q = QueryOutput::default();
        q.responses
            .insert("web-1".into(), answer("success", "0123456789ab", None));
        q.responses.insert(
            "web-2".into(),
            answer(
                "failure",
                "0123456789ab",
                Some("failed: ./check exit status 1"),
            ),
        );
        let r = assess(&members, &q, Some("0123456789abcdef"));
        assert_eq!(
            r.table(false),
            "\
NODE   DEST      RESULT       CHECKSUM      FINISHED                  ERROR
web-1  /srv/app  success      0123456789ab  2026-12-01T10:00:00.000Z  -
web-2  /srv/app  failure      0123456789ab  2026-12-01T10:00:00.000Z  failed at pre: failed: ./check exit status 1
web-3  -         unreachable  -             -                         serf reports the member failed
2 answered of 2 alive members: 1 success, 1 failure, 0 silent, 1 unreachable
"
        );
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["hosts"][1]["state"], "failure");
        assert_eq!(
            json["hosts"][1]["deploys"][0]["error"],
            "failed: ./check exit status 1"
        );
    }

    /// A brief answer of `deploys` (JSON objects), with `extra` top-level fields.
    fn brief(deploys: serde_json::Value, extra: serde_json::Value) -> String {
        let mut v = serde_json::json!({"host": "h", "deploys": deploys});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v.to_string()
    }

    fn row(dest: &str, result: &str, checksum: &str) -> serde_json::Value {
        serde_json::json!({"dest": dest, "result": result, "checksum": checksum,
            "finished": "2026-12-01T10:00:00.000Z"})
    }

    /// `answers` (node, answer), every node alive.
    fn fleet_of(answers: &[(&str, String)], checksum: Option<&str>) -> Report {
        let members: Vec<Member> = answers.iter().map(|(n, _)| member(n, "alive")).collect();
        let mut q = QueryOutput::default();
        for (n, a) in answers {
            q.responses.insert(n.to_string(), a.clone());
        }
        assess(&members, &q, checksum)
    }

    /// The nodes of the table's rows.
    fn row_nodes(table: &str) -> Vec<&str> {
        let lines: Vec<&str> = table.lines().collect();
        let end = lines
            .iter()
            .position(|l| l.contains(" answered of "))
            .unwrap();
        lines[1..end]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect()
    }

    #[test]
    fn a_split_is_named_and_problems_show_only_the_odd_rows() {
        let (x, y) = ("0123456789ab", "ffffffffffff");
        let one = |result: &str, sum: &str| {
            brief(
                serde_json::json!([row("/srv/app", result, sum)]),
                serde_json::json!({}),
            )
        };
        let answers = [
            ("a", one("success", x)),
            ("b", one("success", x)),
            ("c", one("success", &x.to_uppercase())),
            ("d", one("success", y)),
            ("e", one("failure", x)),
        ];
        let r = fleet_of(&answers, None);
        assert!(!r.ok);
        let table = r.table(false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[lines.len() - 2],
            "5 answered of 5 alive members: 4 success, 1 failure, 0 silent, 0 unreachable"
        );
        assert_eq!(
            lines[lines.len() - 1],
            "checksums of /srv/app differ (hosts whose last deploy succeeded with each): \
             0123456789ab on 3 hosts, ffffffffffff on 1 host"
        );
        assert_eq!(row_nodes(&table), ["a", "b", "c", "d", "e"]);
        assert_eq!(row_nodes(&r.table(true)), ["d", "e"]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["splits"][0]["checksums"][1]["success"], 1, "{json}");
        // a tie: no majority, every row of the dest
        let tie = fleet_of(&answers[2..4], None);
        assert!(tie.ok);
        assert_eq!(row_nodes(&tie.table(true)), ["c", "d"]);
        // one checksum everywhere: no split line, no problem row
        let same = fleet_of(&answers[..3], None);
        assert!(same.splits.is_empty());
        assert!(
            same.table(true).lines().count() == 2,
            "{}",
            same.table(true)
        );
        // another --checksum: every host fails though its row is on the majority
        let other = fleet_of(&answers[..3], Some("abcdefabcdef"));
        assert_eq!(row_nodes(&other.table(true)), ["a", "b", "c"]);
        // the dests are judged apart
        let two = |a: &str, b: &str| {
            brief(
                serde_json::json!([row("/a", "success", a), row("/b", "success", b)]),
                serde_json::json!({}),
            )
        };
        let r = fleet_of(
            &[("m", two(x, x)), ("n", two(x, y)), ("o", two(x, y))],
            None,
        );
        assert_eq!(r.split_lines().len(), 1);
        assert!(r.split_lines()[0].starts_with("checksums of /b differ"));
        assert_eq!(row_nodes(&r.table(true)), ["m"]);
        let t = r.table(true);
        let m: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(m[..4], ["m", "/b", "success", x], "{t}");
    }

    #[test]
    fn running_interrupted_and_partial_hosts() {
        let x = "0123456789ab";
        let none = serde_json::json!({});
        let mut running = row("/srv/app", "running", x);
        running["started"] = "2026-12-01T10:05:00.000Z".into();
        running["finished"] = serde_json::Value::Null;
        // fields of newer answers are read past
        let mut newer = row("/srv/other", "success", x);
        newer["manifest_url"] = "https://example.com/app.yml".into();
        newer["serial"] = 42.into();
        let answers = [
            (
                "run",
                brief(
                    serde_json::json!([running.clone(), newer.clone()]),
                    none.clone(),
                ),
            ),
            (
                "int",
                brief(
                    serde_json::json!([row("/srv/app", "interrupted", x)]),
                    none.clone(),
                ),
            ),
            (
                "part",
                brief(
                    serde_json::json!([newer.clone()]),
                    serde_json::json!({"omitted": 3}),
                ),
            ),
            (
                "gone",
                brief(serde_json::json!([]), serde_json::json!({"omitted": 9})),
            ),
            (
                "kept",
                brief(
                    serde_json::json!([newer.clone(), row("/x", "failure", x)]),
                    serde_json::json!({"omitted": 2}),
                ),
            ),
            (
                "fine",
                brief(
                    serde_json::json!([newer.clone()]),
                    serde_json::json!({"future": {"a": 1}}),
                ),
            ),
        ];
        let r = fleet_of(&answers, None);
        let state = |n: &str| state_of(&r, n);
        assert_eq!(state("run"), "running");
        assert_eq!(state("int"), "failure");
        assert_eq!(state("part"), "partial");
        assert_eq!(state("gone"), "partial");
        assert_eq!(state("kept"), "failure");
        assert_eq!(state("fine"), "success");
        assert!(!r.ok);
        assert_eq!(
            r.summary(),
            "6 answered of 6 alive members: 1 success, 2 failure, 0 silent, 0 unreachable, \
             1 running (run), 2 partial (gone, part)"
        );
        let table = r.table(false);
        assert!(table.contains("running      0123456789ab  -                         deploying since 2026-12-01T10:05:00.000Z"), "{table}");
        assert!(table.contains("part  (3 more)"), "{table}");
        let mut int = row("/srv/app", "interrupted", x);
        int["started"] = "2026-12-01T10:07:00.000Z".into();
        let r2 = fleet_of(
            &[("int", brief(serde_json::json!([int]), none.clone()))],
            None,
        );
        assert!(
            r2.table(false).contains("started 2026-12-01T10:07:00.000Z"),
            "{}",
            r2.table(false)
        );
        assert!(table.contains("not confirmed"), "{table}");
        // a partial or running host is never ok, with --checksum too
        for (n, a) in &answers[..3] {
            let alone = fleet_of(&[(n, a.clone())], Some(x));
            assert!(!alone.ok, "{n}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["running"], 1, "{json}");
        assert_eq!(json["partial"], 2, "{json}");
        let run = json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["node"] == "run")
            .unwrap();
        assert_eq!(
            run["deploys"][0]["started"], "2026-12-01T10:05:00.000Z",
            "{json}"
        );
        // a started time of an absurd length makes the answer invalid
        let mut long = running.clone();
        long["started"] = "9".repeat(65).into();
        let r = fleet_of(&[("l", brief(serde_json::json!([long]), none))], None);
        assert_eq!(state_of(&r, "l"), "invalid");
    }

    #[test]
    fn filters_for_the_members_and_the_query() {
        let opts = FleetOptions {
            tags: vec![("role".into(), "web".into()), ("dc".into(), "a|b".into())],
            nodes: vec!["a.b".into(), "c".into()],
            timeout: Some(Duration::from_millis(2500)),
            ..FleetOptions::default()
        };
        let m = member_filter(&opts);
        assert_eq!(m.name, "(?:a\\.b|c)");
        assert_eq!(m.status, "");
        assert_eq!(m.tags["role"], "web");
        assert_eq!(m.tags["dc"], "a|b");
        let q = query_params(&opts);
        assert_eq!(q.nodes, ["a.b", "c"]);
        assert_eq!(q.tags, m.tags);
        assert_eq!(q.timeout, Some(Duration::from_millis(2500)));
        let none = member_filter(&FleetOptions::default());
        assert_eq!(none, MemberFilter::default());
    }

    /// What `fake` agent lists: a and b alive, c failed, d left.
    fn listed(a: &mut crate::serf_rpc::fake::Agent) {
        use serde::de::IgnoredAny;
        let (req, _): (crate::serf_rpc::fake::Req, IgnoredAny) = a.request();
        assert_eq!(req.command, "members-filtered");
        a.answer(req.seq, "");
        let m = |name: &str, status: &str| serde_json::json!({"Name": name, "Status": status});
        let members = serde_json::json!({"Members": [
            m("a", "alive"), m("b", "alive"), m("c", "failed"), m("d", "left"),
        ]});
        a.send(&members).unwrap();
    }

    #[test]
    fn a_round_ends_once_every_alive_member_answered() {
        use crate::serf_rpc::fake::{self, Req};
        use serde::de::IgnoredAny;
        let ok = answer("success", "0123456789ab", None);
        let addr = fake::agent(move |mut a| {
            a.shake();
            let (req, key): (Req, BTreeMap<String, String>) = a.request();
            assert_eq!(
                (req.command.as_str(), key["AuthKey"].as_str()),
                ("auth", "k")
            );
            a.answer(req.seq, "");
            listed(&mut a);
            let (req, _): (Req, IgnoredAny) = a.request();
            assert_eq!(req.command, "query");
            a.answer(req.seq, "");
            a.record(req.seq, "ack", "a", b"");
            a.record(req.seq, "ack", "b", b"");
            a.record(req.seq, "response", "b", ok.as_bytes());
            a.record(req.seq, "response", "a", ok.as_bytes());
            // no `done`: the query's deadline is far; fleet must not wait for it
            std::thread::sleep(Duration::from_secs(30));
        });
        let opts = FleetOptions {
            timeout: Some(Duration::from_secs(1)),
            ..FleetOptions::default()
        };
        let env = |k: &str| match k {
            "SERF_RPC_ADDR" => Some(addr.clone()),
            "SERF_RPC_AUTH" => Some("k".to_string()),
            _ => None,
        };
        let r = run(&opts, &env).unwrap();
        assert_eq!(
            r.summary(),
            "2 answered of 2 alive members: 2 success, 0 failure, 0 silent, 1 unreachable"
        );
        assert!(!r.ok);
    }

    #[test]
    fn a_silent_member_lasts_the_round_and_is_named() {
        use crate::serf_rpc::fake::{self, Req};
        use serde::de::IgnoredAny;
        let ok = answer("success", "0123456789ab", None);
        let addr = fake::agent(move |mut a| {
            a.shake();
            listed(&mut a);
            let (req, _): (Req, IgnoredAny) = a.request();
            a.answer(req.seq, "");
            a.record(req.seq, "ack", "a", b"");
            a.record(req.seq, "ack", "b", b"");
            a.record(req.seq, "response", "a", ok.as_bytes());
            a.record(req.seq, "done", "", b"");
        });
        let opts = FleetOptions {
            rpc_addr: Some(addr),
            ..FleetOptions::default()
        };
        let r = run(&opts, &|_| None).unwrap();
        assert_eq!(
            r.summary(),
            "1 answered of 2 alive members: 1 success, 0 failure, 1 silent, 1 unreachable"
        );
        let b = r.hosts.iter().find(|h| h.node == "b").unwrap();
        assert_eq!(
            b.problem.as_deref(),
            Some("acknowledged the query but sent no answer")
        );
    }

    #[test]
    fn an_agent_that_floods_the_round_ends_it_in_a_clear_error() {
        use crate::serf_rpc::fake::{self, Req};
        use serde::de::IgnoredAny;
        use std::io::Write;
        let addr = fake::agent(move |mut a| {
            a.shake();
            listed(&mut a);
            let (req, _): (Req, IgnoredAny) = a.request();
            a.answer(req.seq, "");
            // answers of nodes nobody listed, without end
            let junk = vec![b'x'; 1000];
            for i in 0.. {
                let head = rmp_serde::to_vec_named(&fake::Header {
                    seq: req.seq,
                    error: "",
                })
                .unwrap();
                let from = format!("n{i}");
                let rec = rmp_serde::to_vec_named(&fake::Rec {
                    kind: if i % 2 == 0 { "ack" } else { "response" },
                    from: &from,
                    payload: &junk,
                })
                .unwrap();
                if a.tcp
                    .write_all(&head)
                    .and_then(|()| a.tcp.write_all(&rec))
                    .is_err()
                {
                    return;
                }
            }
        });
        let opts = FleetOptions {
            rpc_addr: Some(addr),
            timeout: Some(Duration::from_secs(60)),
            ..FleetOptions::default()
        };
        let e = run(&opts, &|_| None).unwrap_err().to_string();
        assert!(e.contains("streamed more than"), "{e}");
    }
}
