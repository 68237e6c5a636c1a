//! `stretcher fleet status` (SPEC §13): the last deploys of every host, asked
//! through Serf's own query mechanism — no server of ours.
//!
//! One job: run the `serf` command on PATH (`serf members -format=json` and `serf
//! query -format=json stretcher-status`, with the same filters), read what it
//! prints, judge every member (`assess`, a pure function), and print a table and
//! the summary line, or one JSON object. Every host answers with `stretcher status
//! --brief --json` (`status::Brief`). When stderr is a terminal the query runs in
//! serf's text format instead (`TextQuery`), whose lines arrive answer by answer,
//! to show the hosts answered so far.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::{FleetOptions, Output};
use crate::error::{Error, Result};
use crate::status::{Brief, BriefDeploy};

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
        query_with_progress(opts, alive, limit)?
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
/// shown while it waits; the result is the same as `parse_query` of the JSON.
fn query_with_progress(opts: &FleetOptions, alive: usize, limit: Duration) -> Result<QueryOutput> {
    let start = Instant::now();
    let of = opts
        .timeout
        .map(|t| format!(" of {:.1}s", t.as_secs_f64()))
        .unwrap_or_default();
    let mut text = TextQuery::default();
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
    result.map(|_| text.out)
}

/// `serf query` in text format, read line by line: `Ack from 'NODE'`, `Response
/// from 'NODE': PAYLOAD` (a payload of several lines continues on the next lines),
/// and the `Query ... dispatched` / `Total ...` lines around them.
#[derive(Debug, Default)]
pub(crate) struct TextQuery {
    pub out: QueryOutput,
    /// The node whose payload a following unknown line continues.
    last: Option<String>,
}

impl TextQuery {
    pub fn line(&mut self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(node) = line
            .strip_prefix("Ack from '")
            .and_then(|r| r.strip_suffix('\''))
        {
            self.out.acks.push(node.to_string());
            self.last = None;
        } else if let Some((node, payload)) = line.strip_prefix("Response from '").and_then(|r| {
            r.split_once("': ")
                .or_else(|| Some((r.strip_suffix("':")?, "")))
        }) {
            self.out
                .responses
                .insert(node.to_string(), payload.to_string());
            self.last = Some(node.to_string());
        } else if (line.starts_with("Query '") && line.ends_with("' dispatched"))
            || line.starts_with("Total Acks: ")
            || line.starts_with("Total Responses: ")
        {
            self.last = None;
        } else if let Some(answer) = self
            .last
            .as_ref()
            .and_then(|n| self.out.responses.get_mut(n))
        {
            answer.push('\n');
            answer.push_str(line);
        }
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
        return Err(Error::fleet(format!("{what} failed ({status}): {line}")));
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
    /// It answered, and something is wrong: a failed deploy, nothing recorded, an
    /// unreadable answer, another checksum.
    Failure,
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
    pub silent: usize,
    pub unreachable: usize,
    pub checksum: Option<String>,
    pub ok: bool,
    pub hosts: Vec<Host>,
}

/// Judges every member (SPEC §13): `alive` ones answered (success / failure) or
/// silent, `failed` ones unreachable, `left` / `leaving` ones not counted. An
/// answer from a node the member list lacked (it joined meanwhile) counts as alive.
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
    let (success, failure, silent, unreachable) = (
        count(HostState::Success),
        count(HostState::Failure),
        count(HostState::Silent),
        count(HostState::Unreachable),
    );
    let alive = success + failure + silent;
    Report {
        alive,
        answered: success + failure,
        success,
        failure,
        silent,
        unreachable,
        checksum: checksum.map(str::to_string),
        ok: alive > 0 && success == alive && unreachable == 0,
        hosts,
    }
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
    let brief: Brief = match serde_json::from_str(answer.trim()) {
        Ok(b) => b,
        Err(e) => {
            let shown: String = answer.trim().chars().take(80).collect();
            host.problem = Some(format!("unreadable answer ({e}): {shown:?}"));
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

/// The answer carries the first 12 hex digits: compare on what both have.
fn same_checksum(answer: &str, want: &str) -> bool {
    let n = answer.len().min(want.len());
    n > 0 && answer[..n].eq_ignore_ascii_case(&want[..n])
}

impl Report {
    /// The summary line of SPEC §13.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} answered of {} alive members: {} success, {} failure, {} silent, {} unreachable",
            self.answered, self.alive, self.success, self.failure, self.silent, self.unreachable
        )
    }

    /// One row per host and dest (node, dest, result, checksum, finished, error),
    /// columns aligned, then the summary line.
    pub fn table(&self) -> String {
        let dash = |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("-").to_string();
        let mut rows: Vec<[String; 6]> = vec![[
            "NODE".into(),
            "DEST".into(),
            "RESULT".into(),
            "CHECKSUM".into(),
            "FINISHED".into(),
            "ERROR".into(),
        ]];
        for h in &self.hosts {
            if h.deploys.is_empty() {
                rows.push([
                    h.node.clone(),
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
                    (Some(step), Some(e)) => format!("failed at {step}: {e}"),
                    (None, Some(e)) => e.clone(),
                    (Some(step), None) => format!("failed at {step}"),
                    (None, None) => dash(h.problem.as_deref()),
                };
                rows.push([
                    h.node.clone(),
                    dash(d.dest.as_deref()),
                    d.result.clone(),
                    dash(d.checksum.as_deref()),
                    dash(d.finished.as_deref()),
                    error,
                ]);
            }
            if h.omitted > 0 {
                rows.push([
                    h.node.clone(),
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

    #[test]
    fn text_output_as_it_arrives() {
        let mut t = TextQuery::default();
        for line in [
            "Query 'stretcher-status' dispatched\n",
            "Ack from 'a'\r\n",
            "Ack from 'b'\n",
            "Response from 'a': {\"host\":\"a\",\"deploys\":[]}\n",
            "Response from 'b': first\n",
            "second\n",
            "Response from 'c':\n",
            "Total Acks: 2\n",
            "Total Responses: 3\n",
        ] {
            t.line(line);
        }
        assert_eq!(t.out.acks, ["a", "b"]);
        assert_eq!(t.out.responses["a"], r#"{"host":"a","deploys":[]}"#);
        assert_eq!(t.out.responses["b"], "first\nsecond");
        assert_eq!(t.out.responses["c"], "");
        assert_eq!(t.out.responses.len(), 3);
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
                r.silent,
                r.unreachable
            ),
            (6, 5, 1, 4, 1, 1)
        );
        assert!(!r.ok);
        let state = |n: &str| r.hosts.iter().find(|h| h.node == n).map(|h| h.state);
        assert_eq!(state("ok"), Some(HostState::Success));
        assert_eq!(state("old"), Some(HostState::Failure));
        assert_eq!(state("crashed"), Some(HostState::Unreachable));
        assert_eq!(state("gone"), None);
        assert_eq!(state("going"), None);
        // without --checksum the old release is fine
        let r = assess(&members, &q, None);
        let old = r.hosts.iter().find(|h| h.node == "old").unwrap();
        assert_eq!(old.state, HostState::Success);
        assert_eq!(
            r.summary(),
            "5 answered of 6 alive members: 2 success, 3 failure, 1 silent, 1 unreachable"
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
