//! `stretcher fleet status` (SPEC §13): the last deploys of every host, asked
//! through Serf's own query mechanism — no server of ours.
//!
//! One job: run the `serf` command on PATH (`serf members -format=json` and `serf
//! query -format=json stretcher-status`, with the same filters), read what it
//! prints, judge every member (`assess`, a pure function), and print a table and
//! the summary line, or one JSON object. Every host answers with `stretcher status
//! --brief --json` (`status::Brief`). When stderr is a terminal the query runs in
//! serf's text format instead (`TextQuery`), whose lines arrive answer by answer,
//! to show the hosts answered so far; when an answer's lines could pass for serf's
//! own, the query is asked again in JSON.
//!
//! Answers are data, not text (SPEC §17): `parse_answer` takes an answer only as
//! one line of the brief's JSON with fields of the right type, size and encoding
//! (else the member is `invalid`), and the table shows every field through
//! `log::shown_text`, so no answer can print a line, or a row, of its own.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::{FleetOptions, Output};
use crate::error::{Error, Result};
use crate::log::shown_text;
use crate::status::{Brief, BriefDeploy, BRIEF_LIMIT};

/// The query every host answers (the handler `query:stretcher-status=...`).
pub const QUERY: &str = "stretcher-status";

/// How long `serf members` may take (it only asks the local agent).
const MEMBERS_LIMIT: Duration = Duration::from_secs(30);

/// Serf's own default query timeout is about 3–10 s (it grows with the cluster);
/// when `--timeout` is not given, the `serf query` process may take this long.
const QUERY_LIMIT: Duration = Duration::from_secs(120);

/// Runs `fleet status`: its result and exit status (SPEC §13).
pub fn main(opts: &FleetOptions) -> Output {
    match run(opts) {
        Ok(report) => {
            let text = if opts.json {
                let mut s = serde_json::to_string_pretty(&report).unwrap_or_default();
                s.push('\n');
                s
            } else {
                report.table()
            };
            Output::stdout(text, if report.ok { 0 } else { 1 })
        }
        Err(e) => Output::stderr(format!("stretcher: {e}"), e.exit_code()),
    }
}

/// Asks serf for the members and their answers, and judges them.
pub(crate) fn run(opts: &FleetOptions) -> Result<Report> {
    let members_out = run_serf(&members_args(opts), MEMBERS_LIMIT, |_| {})?;
    let members = parse_members(&members_out)?;
    let alive = members.iter().filter(|m| m.status == "alive").count();
    if alive == 0 && members.iter().all(|m| m.status != "failed") {
        return Err(Error::fleet(
            "no alive serf member matches the --tag / --node filters",
        ));
    }
    let limit = opts.timeout.map_or(QUERY_LIMIT, |t| t + MEMBERS_LIMIT);
    let query = if std::io::stderr().is_terminal() {
        let names = members.iter().map(|m| m.name.clone()).collect();
        query_with_progress(opts, names, alive, limit)?
    } else {
        parse_query(&run_serf(&query_args(opts), limit, |_| {})?)?
    };
    if alive > 0 && query.responses.is_empty() {
        return Err(Error::fleet(format!(
            "no member answered serf query {QUERY} in time ({} of {alive} alive acknowledged \
             it): is \"query:{QUERY}=stretcher status --brief --json\" among the agents' \
             -event-handler (or are they all still deploying)?",
            query.acks.len()
        )));
    }
    Ok(assess(&members, &query, opts.checksum.as_deref()))
}

/// `serf members` with the filters of `opts`.
pub(crate) fn members_args(opts: &FleetOptions) -> Vec<String> {
    let mut args = vec!["members".to_string(), "-format=json".to_string()];
    if let Some(a) = &opts.rpc_addr {
        args.push(format!("-rpc-addr={a}"));
    }
    for (k, v) in &opts.tags {
        args.push(format!("-tag={k}={v}"));
    }
    if !opts.nodes.is_empty() {
        // serf anchors the regexp at both ends
        let names: Vec<String> = opts.nodes.iter().map(|n| quote_meta(n)).collect();
        args.push(format!("-name=(?:{})", names.join("|")));
    }
    args
}

/// `serf query -format=json stretcher-status` with the same filters as
/// `members_args`.
pub(crate) fn query_args(opts: &FleetOptions) -> Vec<String> {
    query_args_as(opts, "json")
}

fn query_args_as(opts: &FleetOptions, format: &str) -> Vec<String> {
    let mut args = vec!["query".to_string(), format!("-format={format}")];
    if let Some(a) = &opts.rpc_addr {
        args.push(format!("-rpc-addr={a}"));
    }
    for (k, v) in &opts.tags {
        args.push(format!("-tag={k}={v}"));
    }
    for n in &opts.nodes {
        args.push(format!("-node={n}"));
    }
    if let Some(t) = opts.timeout {
        args.push(format!("-timeout={}ms", t.as_millis().max(1)));
    }
    args.push(QUERY.to_string());
    args
}

/// Go's `regexp.QuoteMeta`: a node name as a literal inside serf's `-name` regexp.
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

/// The query on a terminal: serf's text output arrives line by line as the
/// answers do (its JSON only when the query ends), so the hosts answered so far are
/// shown while it waits; the result is the same as `parse_query` of the JSON. When
/// the text cannot be believed (`TextQuery::finish`: an answer held lines that pass
/// for serf's own), the query is asked again in JSON, whose answers cannot be taken
/// for one another.
fn query_with_progress(
    opts: &FleetOptions,
    names: Vec<String>,
    alive: usize,
    limit: Duration,
) -> Result<QueryOutput> {
    let start = Instant::now();
    let of = opts
        .timeout
        .map(|t| format!(" of {:.1}s", t.as_secs_f64()))
        .unwrap_or_default();
    let mut text = TextQuery::new(names);
    let result = run_serf(&query_args_as(opts, "text"), limit, |line| {
        if let Some(line) = line {
            text.line(line);
        }
        eprint!(
            "\r\x1b[K{} of {alive} alive members answered ({} acknowledged), {:.1}s{of}",
            text.out.responses.len(),
            text.out.acks.len(),
            start.elapsed().as_secs_f64()
        );
    });
    // clear the progress line
    eprint!("\r\x1b[K");
    result?;
    if let Some(out) = text.finish() {
        return Ok(out);
    }
    let again = Instant::now();
    let result = run_serf(&query_args(opts), limit, |_| {
        eprint!(
            "\r\x1b[Kan answer held lines like serf's own: asking again in JSON, {:.1}s{of}",
            again.elapsed().as_secs_f64()
        );
    });
    eprint!("\r\x1b[K");
    parse_query(&result?)
}

/// `serf query` in text format, read line by line: `Query '...' dispatched`, then
/// `Ack from 'NODE'` and `Response from 'NODE': PAYLOAD` (a payload of several
/// lines continues on the next lines), then `Total Acks: N` and `Total Responses:
/// N`. Serf writes a payload as it is, so an answer's lines can look like serf's
/// own (a forged `Response from` another node): what the lines said is believed
/// only when none of them can have been forged (`finish`).
#[derive(Debug, Default)]
pub(crate) struct TextQuery {
    /// What the lines said so far (the progress line counts it).
    pub out: QueryOutput,
    /// The names `serf members` listed: the only nodes a line may name.
    names: Vec<String>,
    /// The node whose payload a following unknown line continues.
    last: Option<String>,
    /// Where in serf's output the next line is.
    stage: TextStage,
    /// Serf's `Total Acks` and `Total Responses`.
    totals: (usize, usize),
    /// A line serf would not have written where it stands.
    doubtful: bool,
}

/// The parts of serf's text output, in order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum TextStage {
    /// Before the `Query '...' dispatched` line.
    #[default]
    Start,
    /// Acks and responses.
    Answers,
    /// After `Total Acks`, before `Total Responses`.
    Totals,
    /// After `Total Responses`: serf writes nothing more.
    Done,
}

impl TextQuery {
    /// Reads the text of a query to the members named `names`.
    pub fn new(names: Vec<String>) -> TextQuery {
        TextQuery {
            names,
            ..TextQuery::default()
        }
    }

    pub fn line(&mut self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        match self.stage {
            TextStage::Start => {
                self.stage = TextStage::Answers;
                if line.starts_with("Query '") && line.ends_with("' dispatched") {
                    return;
                }
                self.doubtful = true;
            }
            TextStage::Answers => {}
            TextStage::Totals => {
                match line
                    .strip_prefix("Total Responses: ")
                    .and_then(|n| n.parse().ok())
                {
                    Some(n) => self.totals.1 = n,
                    None => self.doubtful = true,
                }
                self.stage = TextStage::Done;
                return;
            }
            TextStage::Done => {
                self.doubtful = true;
                return;
            }
        }
        if let Some(n) = line.strip_prefix("Total Acks: ") {
            match n.parse() {
                Ok(n) => self.totals.0 = n,
                Err(_) => self.doubtful = true,
            }
            self.stage = TextStage::Totals;
            self.last = None;
        } else if let Some(rest) = line.strip_prefix("Ack from '") {
            // the whole rest is the name: exactly one member's, once
            match rest.strip_suffix('\'') {
                Some(node)
                    if self.names.iter().any(|n| n == node)
                        && !self.out.acks.iter().any(|a| a == node) =>
                {
                    self.out.acks.push(node.to_string());
                }
                _ => self.doubtful = true,
            }
            self.last = None;
        } else if let Some(rest) = line.strip_prefix("Response from '") {
            // the name ends at `': `, which a name may hold too: exactly one member's
            // name must fit, a member that acknowledged and has not answered yet
            let fits: Vec<(&String, &str)> = self
                .names
                .iter()
                .filter_map(|n| {
                    let after = rest.strip_prefix(n.as_str())?;
                    let payload = after
                        .strip_prefix("': ")
                        .or_else(|| (after == "':").then_some(""))?;
                    Some((n, payload))
                })
                .collect();
            match fits[..] {
                [(node, payload)]
                    if self.out.acks.contains(node) && !self.out.responses.contains_key(node) =>
                {
                    let node = node.clone();
                    self.out.responses.insert(node.clone(), payload.to_string());
                    self.last = Some(node);
                }
                _ => {
                    self.doubtful = true;
                    self.last = None;
                }
            }
        } else if let Some(answer) = self
            .last
            .as_ref()
            .and_then(|n| self.out.responses.get_mut(n))
        {
            answer.push('\n');
            answer.push_str(line);
        } else {
            self.doubtful = true;
        }
    }

    /// What the lines said, when serf wrote every line that looks like its own: the
    /// `dispatched` line first, the totals last and equal to the acks and responses
    /// read, each of these naming a listed member once (and a response only after
    /// its ack). `None` when an answer can have forged a line: ask serf for JSON.
    pub fn finish(self) -> Option<QueryOutput> {
        let counted = (self.out.acks.len(), self.out.responses.len());
        (!self.doubtful && self.stage == TextStage::Done && self.totals == counted)
            .then_some(self.out)
    }
}

/// Runs `serf ARGS` to its end (killed by pid after `limit`), calling `tick` with
/// each line of its stdout as it arrives and with `None` every 200 ms; returns its
/// stdout, or an error with the first line serf wrote.
fn run_serf(
    args: &[String],
    limit: Duration,
    mut tick: impl FnMut(Option<&str>),
) -> Result<Vec<u8>> {
    let what = format!("serf {}", args[0]);
    let mut child = Command::new("serf")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Fleet {
            msg: format!("cannot run serf: {e} (is serf installed and on PATH?)"),
            source: Some(e.into()),
        })?;
    let lines = lines_of(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let mut stdout = Vec::new();
    let mut shown = Instant::now();
    let status = loop {
        match lines.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => {
                tick(Some(&String::from_utf8_lossy(&line)));
                stdout.extend_from_slice(&line);
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // stdout closed: serf is done (or closed it); wait for its status
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(20))
            }
        }
        if shown.elapsed() >= Duration::from_millis(200) {
            shown = Instant::now();
            tick(None);
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                // what it wrote before exiting
                for line in lines.iter() {
                    tick(Some(&String::from_utf8_lossy(&line)));
                    stdout.extend_from_slice(&line);
                }
                break Some(status);
            }
            Ok(None) if start.elapsed() <= limit => {}
            _ => break None,
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::fleet(format!(
            "{what} did not finish within {}s; killed",
            limit.as_secs()
        )));
    };
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let text = String::from_utf8_lossy(if stderr.iter().all(u8::is_ascii_whitespace) {
            &stdout
        } else {
            &stderr
        })
        .into_owned();
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message")
            .to_string();
        return Err(Error::fleet(format!(
            "{what} failed ({status}): {}",
            shown_text(&line)
        )));
    }
    Ok(stdout)
}

/// The lines of `pipe` (each with its `\n`), as they arrive.
fn lines_of<R: Read + Send + 'static>(pipe: Option<R>) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(pipe) = pipe else { return };
        let mut reader = std::io::BufReader::new(pipe);
        loop {
            let mut line = Vec::new();
            match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut v);
        }
        v
    })
}

/// One member as `serf members -format=json` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct Member {
    pub name: String,
    /// `alive`, `leaving`, `left` or `failed`.
    pub status: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Members {
    #[serde(default, deserialize_with = "null_default")]
    members: Vec<Member>,
}

/// What `serf query -format=json` prints.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct QueryOutput {
    #[serde(rename = "Acks", default, deserialize_with = "null_default")]
    pub acks: Vec<String>,
    /// Node name → the handler's output.
    #[serde(rename = "Responses", default, deserialize_with = "null_default")]
    pub responses: BTreeMap<String, String>,
}

/// Go marshals an empty slice or map as `null`.
fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub(crate) fn parse_members(out: &[u8]) -> Result<Vec<Member>> {
    let m: Members = serde_json::from_slice(out).map_err(|e| Error::Fleet {
        msg: format!("cannot read the output of serf members: {e}"),
        source: Some(e.into()),
    })?;
    Ok(m.members)
}

pub(crate) fn parse_query(out: &[u8]) -> Result<QueryOutput> {
    serde_json::from_slice(out).map_err(|e| Error::Fleet {
        msg: format!("cannot read the output of serf query: {e}"),
        source: Some(e.into()),
    })
}

/// How one host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HostState {
    /// It answered, every last deploy succeeded (and holds `--checksum`).
    Success,
    /// It answered, and something is wrong: a failed deploy, nothing recorded,
    /// another checksum.
    Failure,
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
    pub deploys: Vec<BriefDeploy>,
    /// Deploys its answer left out to stay within serf's response limit.
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The whole judgement; `ok` is the exit status's question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Report {
    pub alive: usize,
    pub answered: usize,
    pub success: usize,
    pub failure: usize,
    pub invalid: usize,
    pub silent: usize,
    pub unreachable: usize,
    pub checksum: Option<String>,
    pub ok: bool,
    pub hosts: Vec<Host>,
}

/// Judges every member (SPEC §13, §17): `alive` ones answered (success / failure /
/// invalid) or silent, `failed` ones unreachable, `left` / `leaving` ones not
/// counted. An answer from a node the member list lacked (it joined meanwhile)
/// counts as alive.
pub(crate) fn assess(members: &[Member], query: &QueryOutput, checksum: Option<&str>) -> Report {
    let mut hosts = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for m in members {
        names.push(&m.name);
        let host = match (m.status.as_str(), query.responses.get(&m.name)) {
            (_, Some(answer)) => judge(&m.name, answer, checksum),
            ("alive", None) => Host {
                node: m.name.clone(),
                state: HostState::Silent,
                problem: Some(
                    if query.acks.contains(&m.name) {
                        "acknowledged the query but sent no answer"
                    } else {
                        "no answer"
                    }
                    .into(),
                ),
                deploys: Vec::new(),
                omitted: 0,
            },
            ("failed", None) => Host {
                node: m.name.clone(),
                state: HostState::Unreachable,
                problem: Some("serf reports the member failed".into()),
                deploys: Vec::new(),
                omitted: 0,
            },
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
    let (success, failure, invalid, silent, unreachable) = (
        count(HostState::Success),
        count(HostState::Failure),
        count(HostState::Invalid),
        count(HostState::Silent),
        count(HostState::Unreachable),
    );
    let answered = success + failure + invalid;
    let alive = answered + silent;
    Report {
        alive,
        answered,
        success,
        failure,
        invalid,
        silent,
        unreachable,
        checksum: checksum.map(str::to_string),
        ok: alive > 0 && success == alive && unreachable == 0,
        hosts,
    }
}

/// The table `fleet status` prints when one alive member, `node`, answered
/// `answer` (its handler's output; serf carries it as UTF-8, invalid bytes
/// replaced), judged against `checksum` (hex) when given. With `text`, the answer
/// is read from serf's text output as on a terminal (`TextQuery`), and asked again
/// as JSON when that text cannot be believed. What the `fleet_answer` fuzz target
/// renders: the parser and the table as `fleet status` runs them.
pub fn answer_table(node: &str, answer: &[u8], checksum: Option<&str>, text: bool) -> String {
    let answer = String::from_utf8_lossy(answer).into_owned();
    let members = [Member {
        name: node.to_string(),
        status: "alive".into(),
        tags: BTreeMap::new(),
    }];
    let mut query = None;
    if text {
        // serf's text format: the payload as it is, one newline at its end dropped
        let printed = format!(
            "Query '{QUERY}' dispatched\nAck from '{node}'\nResponse from '{node}': {}\n\
             Total Acks: 1\nTotal Responses: 1\n",
            answer.strip_suffix('\n').unwrap_or(&answer)
        );
        let mut lines = TextQuery::new(vec![node.to_string()]);
        for line in printed.split_inclusive('\n') {
            lines.line(line);
        }
        query = lines.finish();
    }
    let query = query.unwrap_or_else(|| QueryOutput {
        acks: vec![node.to_string()],
        responses: BTreeMap::from([(node.to_string(), answer)]),
    });
    assess(&members, &query, checksum).table()
}

/// The longest checksum an answer may carry: the 128 hex digits of a sha512 (the
/// brief sends the first 12).
const MAX_CHECKSUM: usize = 128;

/// The longest `result` or `failed_step` word of an answer.
const MAX_WORD: usize = 32;

/// The longest `finished` time of an answer.
const MAX_TIME: usize = 64;

/// How much of an invalid answer its row shows.
const EXCERPT_CHARS: usize = 120;

/// A member's answer, read as `stretcher status --brief --json` writes it (SPEC
/// §13, §17): one line of at most `BRIEF_LIMIT` bytes, the JSON of a `Brief`
/// (unknown keys allowed), every checksum 1 to `MAX_CHECKSUM` hex digits, every
/// `result` and `failed_step` a lower-case word, every `finished` short. Text
/// fields (host, dest, finished, error) may hold any character: they are data,
/// escaped when shown. `Err` says why the member is `invalid`; never a panic.
pub(crate) fn parse_answer(answer: &str) -> std::result::Result<Brief, String> {
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
    let brief: Brief =
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
        if d.finished.as_ref().is_some_and(|f| f.len() > MAX_TIME) {
            return Err(format!("a finished time longer than {MAX_TIME} bytes"));
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
    if host
        .deploys
        .iter()
        .any(|d| d.result != "success" || d.error.is_some())
    {
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
    /// The summary line of SPEC §13, and the invalid members by name (SPEC §17).
    pub(crate) fn summary(&self) -> String {
        let mut line = format!(
            "{} answered of {} alive members: {} success, {} failure, {} silent, {} unreachable",
            self.answered, self.alive, self.success, self.failure, self.silent, self.unreachable
        );
        if self.invalid > 0 {
            let names: Vec<String> = self
                .hosts
                .iter()
                .filter(|h| h.state == HostState::Invalid)
                .map(|h| shown_text(&h.node))
                .collect();
            line.push_str(&format!(
                ", {} invalid ({})",
                self.invalid,
                names.join(", ")
            ));
        }
        line
    }

    /// One row per host and dest (node, dest, result, checksum, finished, error),
    /// columns aligned, then the summary line. Every field is shown through
    /// `shown_text`: no control character of an answer or a node name reaches the
    /// terminal, and each row is one line.
    pub fn table(&self) -> String {
        let dash = |s: Option<&str>| s.filter(|s| !s.is_empty()).map_or("-".into(), shown_text);
        let mut rows: Vec<[String; 6]> = vec![[
            "NODE".into(),
            "DEST".into(),
            "RESULT".into(),
            "CHECKSUM".into(),
            "FINISHED".into(),
            "ERROR".into(),
        ]];
        for h in &self.hosts {
            let node = shown_text(&h.node);
            if h.deploys.is_empty() {
                rows.push([
                    node.clone(),
                    "-".into(),
                    h.state.as_str().into(),
                    "-".into(),
                    "-".into(),
                    dash(h.problem.as_deref()),
                ]);
                continue;
            }
            for d in &h.deploys {
                let error = match (&d.failed_step, &d.error) {
                    (Some(step), Some(e)) => shown_text(format!("failed at {step}: {e}")),
                    (None, Some(e)) => shown_text(e),
                    (Some(step), None) => shown_text(format!("failed at {step}")),
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
                    "left out of the answer (serf's 1024-byte limit)".into(),
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

    #[test]
    fn parses_what_serf_prints() {
        let members = br#"{"members":[{"name":"a","addr":"127.0.0.1:1","port":1,
            "tags":{"role":"web"},"status":"alive","protocol":{"max":5,"min":2,"version":5}}]}"#;
        let m = parse_members(members).unwrap();
        assert_eq!(m[0].name, "a");
        assert_eq!(m[0].tags["role"], "web");
        let q = parse_query(
            br#"{"Acks":["a","b"],"Responses":{"a":"{\"host\":\"a\",\"deploys\":[]}\n"}}"#,
        )
        .unwrap();
        assert_eq!(q.acks, ["a", "b"]);
        assert!(q.responses["a"].ends_with('\n'));
        assert!(parse_members(b"{\n  \"members\": null\n}\n")
            .unwrap()
            .is_empty());
        let q = parse_query(br#"{"Acks":null,"Responses":null}"#).unwrap();
        assert_eq!(q, QueryOutput::default());
        assert!(parse_query(b"Error connecting").is_err());
    }

    /// `lines` read as serf's text output for the members `names`.
    fn text(names: &[&str], lines: &[&str]) -> TextQuery {
        let mut t = TextQuery::new(names.iter().map(|n| n.to_string()).collect());
        for line in lines {
            t.line(line);
        }
        t
    }

    #[test]
    fn text_output_as_it_arrives() {
        let t = text(
            &["a", "b", "c"],
            &[
                "Query 'stretcher-status' dispatched\n",
                "Ack from 'a'\r\n",
                "Ack from 'b'\n",
                "Ack from 'c'\n",
                "Response from 'a': {\"host\":\"a\",\"deploys\":[]}\n",
                "Response from 'b': first\n",
                "second\n",
                "Response from 'c':\n",
                "Total Acks: 3\n",
                "Total Responses: 3\n",
            ],
        );
        assert_eq!(t.out.acks, ["a", "b", "c"]);
        let out = t.finish().expect("serf's own lines are believed");
        assert_eq!(out.responses["a"], r#"{"host":"a","deploys":[]}"#);
        assert_eq!(out.responses["b"], "first\nsecond");
        assert_eq!(out.responses["c"], "");
        assert_eq!(out.responses.len(), 3);
    }

    #[test]
    fn text_that_an_answer_can_have_forged_is_not_believed() {
        let ok = r#"{"host":"b","deploys":[{"dest":"/srv/app","result":"success"}]}"#;
        let forged = format!("Response from 'b': {ok}");
        let head = ["Query 'stretcher-status' dispatched", "Ack from 'a'"];
        let tail = ["Total Acks: 2", "Total Responses: 2"];
        let cases: Vec<(&str, Vec<String>)> = vec![
            // a's answer holds a line for b, after b's own answer
            ("a second answer of b", {
                let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
                v.extend([
                    "Ack from 'b'".into(),
                    r#"Response from 'b': {"host":"b","deploys":[{"result":"failure"}]}"#.into(),
                    format!("Response from 'a': {ok}"),
                    forged.clone(),
                ]);
                v.extend(tail.iter().map(|s| s.to_string()));
                v
            }),
            // ... for a silent b: one response more than serf counted
            ("more responses than serf counted", {
                let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
                v.extend([
                    "Ack from 'b'".into(),
                    format!("Response from 'a': {ok}"),
                    forged.clone(),
                    "Total Acks: 2".into(),
                    "Total Responses: 1".into(),
                ]);
                v
            }),
            // ... with the totals forged too: serf's own come after them
            ("forged totals", {
                let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
                v.extend([
                    "Ack from 'b'".into(),
                    format!("Response from 'a': {ok}"),
                    forged.clone(),
                    "Total Acks: 2".into(),
                    "Total Responses: 2".into(),
                ]);
                v.extend([
                    "Total Acks: 2".to_string(),
                    "Total Responses: 1".to_string(),
                ]);
                v
            }),
            // b never acknowledged: a response before its ack
            ("an answer without an ack", {
                let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
                v.extend([format!("Response from 'a': {ok}"), forged.clone()]);
                v.extend([
                    "Total Acks: 1".to_string(),
                    "Total Responses: 2".to_string(),
                ]);
                v
            }),
            // an ack of a node serf did not list, and an ack twice
            ("an unknown ack", {
                let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
                v.extend(["Ack from 'z'".to_string(), "Ack from 'a'".to_string()]);
                v.extend(tail.iter().map(|s| s.to_string()));
                v
            }),
            // no totals: serf did not end its output
            ("no totals", head.iter().map(|s| s.to_string()).collect()),
        ];
        for (what, lines) in cases {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            assert!(text(&["a", "b"], &lines).finish().is_none(), "{what}");
        }
        // a member named "b': {...": its response line fits two names
        let sly = format!("b': {ok}");
        let lines = [
            "Query 'stretcher-status' dispatched".to_string(),
            "Ack from 'b'".into(),
            format!("Ack from '{sly}'"),
            format!("Response from '{sly}': x"),
            "Total Acks: 2".into(),
            "Total Responses: 1".into(),
        ];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert!(text(&["b", &sly], &lines).finish().is_none());
        // through the table: a forged line never becomes another row
        let answer = format!("{ok}\nResponse from 'b': {ok}\n");
        let table = answer_table("a", answer.as_bytes(), None, true);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(
            table.lines().nth(1).unwrap().starts_with("a     -"),
            "{table}"
        );
        assert!(table.contains(" invalid "), "{table}");
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
        let table = r.table();
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
        let table = r.table();
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
        let table = r.table();
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
                let table = r.table();
                assert_clean(&table, 1);
                assert!(table.contains("  invalid  "), "{what}: {table}");
            }
        }
        // the row shows the start of the answer, escaped
        let r = alone("web-1", &format!("{ok}\nweb-2  /srv/app  success"), None);
        let table = r.table();
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
        q.acks = vec!["ok".into(), "quiet".into()];
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
            r.table(),
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

    #[test]
    fn serf_arguments() {
        let opts = FleetOptions {
            rpc_addr: Some("127.0.0.1:7373".into()),
            tags: vec![("role".into(), "web".into())],
            nodes: vec!["a.b".into(), "c".into()],
            timeout: Some(Duration::from_millis(2500)),
            checksum: None,
            json: false,
        };
        assert_eq!(
            members_args(&opts),
            [
                "members",
                "-format=json",
                "-rpc-addr=127.0.0.1:7373",
                "-tag=role=web",
                "-name=(?:a\\.b|c)"
            ]
        );
        assert_eq!(
            query_args(&opts),
            [
                "query",
                "-format=json",
                "-rpc-addr=127.0.0.1:7373",
                "-tag=role=web",
                "-node=a.b",
                "-node=c",
                "-timeout=2500ms",
                "stretcher-status"
            ]
        );
    }
}
