//! `stretcher rollout MANIFEST_URL` (SPEC §19): a release deployed to the Serf
//! members in waves — canaries first, then growing waves, a bake between them — and
//! halted when more hosts failed than allowed. No server: this process drives the
//! fleet through the Serf agent's RPC (`serf_rpc`) and exits when the rollout ends.
//!
//! One job, in two parts:
//! - **the plan** (pure): `Size` and `parse_waves` (the `--waves` / `--max-failed`
//!   forms, in `rollout`, which `cli` reads too), `plan` (alive members ordered by `rollout::rank`, cumulative waves, a
//!   wave that adds nobody dropped), `Plan::payload` (`rollout::format_payload`);
//! - **the drive**: the manifest fetched and checked as no host in particular
//!   (`deploy::check_signature`, `manifest::parse_unhosted`), the member list, one
//!   baseline round of the `stretcher-status` query, then per wave one user event and
//!   query rounds every `EVERY` until each host of the wave reports a deploy of this
//!   rollout that ended (`judge`), the event fired once more at half the wave timeout
//!   for hosts that reported nothing of it, the bake (`bake_judge`), the halt; the
//!   final table is `fleet`'s, from one last round.
//!
//! A host's answer is data (SPEC §17): it is taken only once `fleet::parse_answer`
//! accepts it, and every text of it is shown through `log::shown_text`. A deploy
//! "of this rollout" is a row whose `rollout` is this rollout's id (the sha256 of the
//! manifest's very bytes) and whose checksum is the manifest's; a failure already
//! there in the baseline round (an earlier run's) is not taken for this run's.
//! It prints only the progress lines on stderr while it runs (one per wave; redrawn
//! on a terminal; a line of its own when a wave's event is fired again); the rest is handed back as an `Output`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::allow::AllowList;
use crate::cli::{Output, RolloutOptions};
use crate::error::{Error, Result};
use crate::fetch::{self, FetchOptions};
use crate::log::shown_text;
use crate::rollout::{self, Canary, Wave};
pub use crate::rollout::{default_waves, parse_waves, Size, DEFAULT_WAVE_TIMEOUT};
use crate::serf_rpc::{Client, Member, MemberFilter, Poll, QueryEvent, QueryParams};
use crate::Env;

/// The agent's RPC address when neither `--rpc-addr` nor `SERF_RPC_ADDR` gives one.
const DEFAULT_RPC_ADDR: &str = "127.0.0.1:7373";

/// How long connecting to the agent and each call may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one round of the status query collects answers (it ends sooner when
/// every host asked has answered). A host whose handler is busy deploying answers
/// in no round until its deploy ends (Serf runs handlers one at a time).
const ROUND: Duration = Duration::from_secs(3);

/// How often a wave's hosts are asked.
const EVERY: Duration = Duration::from_secs(2);

/// How many rounds the bake's question may take to reach every host.
const BAKE_ROUNDS: usize = 3;

/// How long the manifest's download may take, and may stall.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One host of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedHost {
    /// Its Serf node name.
    pub node: String,
    /// Its rank in this rollout (`rollout::rank`).
    pub rank: String,
    /// The first wave that covers it (1-based).
    pub wave: usize,
}

/// The waves of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `ROLLOUT_ID`.
    pub rollout: String,
    /// The hosts covered by a wave, by rank.
    pub hosts: Vec<PlannedHost>,
    /// How many hosts each wave covers (cumulative, strictly growing).
    pub waves: Vec<usize>,
    /// The canary tag, carried in every wave's payload.
    pub canary: Option<Canary>,
}

/// Plans a rollout over `members` (node name and Serf tags; the alive ones),
/// ordered by rank, canaries (tag `canary` equal to its value) first: wave k covers
/// the first `sizes[k]` hosts; a wave that would add no host is dropped, and hosts
/// after the last wave are not in the plan.
pub fn plan(
    rollout_id: &str,
    members: &[(String, BTreeMap<String, String>)],
    canary: Option<&Canary>,
    sizes: &[Size],
) -> Plan {
    let mut ranked: Vec<(String, String)> = members
        .iter()
        .map(|(node, tags)| {
            let is_canary = canary.is_some_and(|c| tags.get(&c.key) == Some(&c.value));
            (rollout::rank(rollout_id, node, is_canary), node.clone())
        })
        .collect();
    ranked.sort();
    ranked.dedup_by(|a, b| a.1 == b.1);
    let total = ranked.len();
    let mut waves: Vec<usize> = Vec::new();
    for s in sizes {
        let w = s.hosts_of(total);
        if w > waves.last().copied().unwrap_or(0) {
            waves.push(w);
        }
    }
    let covered = waves.last().copied().unwrap_or(0);
    let hosts = ranked
        .into_iter()
        .take(covered)
        .enumerate()
        .map(|(i, (rank, node))| PlannedHost {
            node,
            rank,
            wave: waves.iter().position(|&w| i < w).map_or(0, |k| k + 1),
        })
        .collect();
    Plan {
        rollout: rollout_id.to_string(),
        hosts,
        waves,
        canary: canary.cloned(),
    }
}

impl Plan {
    /// Wave `k`'s payload (1-based): `URL rollout=ID upto=RANK [canary=K=V]`, RANK
    /// the rank of the wave's last host.
    pub fn payload(&self, url: &str, k: usize) -> Result<String> {
        let last = self.waves[k - 1] - 1;
        let wave = Wave {
            rollout: self.rollout.clone(),
            upto: self.hosts[last].rank.clone(),
            canary: self.canary.clone(),
        };
        rollout::format_payload(url, &wave).map_err(|e| Error::Rollout(e.to_string()))
    }

    /// The `--dry-run` lines: `WAVE NODE RANK`, one per host, by rank.
    pub fn lines(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("{} {} {}\n", h.wave, shown_text(&h.node), h.rank))
            .collect()
    }

    /// The hosts wave `k` adds (1-based).
    fn added(&self, k: usize) -> impl Iterator<Item = &PlannedHost> {
        self.hosts.iter().filter(move |h| h.wave == k)
    }
}

/// One deploy of a host's brief answer, as the rollout reads it (the answer has
/// passed `fleet::parse_answer` first).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Row {
    /// The dest (null: a commands-only manifest).
    pub dest: Option<String>,
    pub result: String,
    pub checksum: Option<String>,
    /// The rollout whose wave ran it.
    #[serde(default)]
    pub rollout: Option<String>,
    pub finished: Option<String>,
    #[serde(default)]
    pub started: Option<String>,
    pub failed_step: Option<String>,
    pub error: Option<String>,
}

#[derive(Deserialize)]
struct Rows {
    deploys: Vec<Row>,
}

/// A host's answer, read: its rows, or why it is not a brief status.
pub(crate) fn rows_of(answer: &str) -> std::result::Result<Vec<Row>, String> {
    crate::fleet::parse_answer(answer)?;
    let line = answer.trim_matches(|c: char| c.is_ascii_whitespace());
    serde_json::from_str::<Rows>(line)
        .map(|r| r.deploys)
        .map_err(|e| format!("not a brief status: {e}"))
}

/// What the rollout knows of its deploy: its id, and the manifest's checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub rollout: String,
    /// The manifest's checksum (lower-case hex), when it has a `src`.
    pub checksum: Option<String>,
}

impl Target {
    /// A row of this rollout: its rollout id, and the manifest's checksum (on the
    /// digits both have).
    fn ours(&self, row: &Row) -> bool {
        row.rollout.as_deref() == Some(self.rollout.as_str())
            && match (&self.checksum, &row.checksum) {
                (None, _) => true,
                (Some(want), Some(have)) => {
                    let n = want.len().min(have.len());
                    n > 0 && want.as_bytes()[..n].eq_ignore_ascii_case(&have.as_bytes()[..n])
                }
                (Some(_), None) => false,
            }
    }
}

/// What one answer says of the rollout's deploy on that host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A deploy of this rollout ended: this row (a failure first, when several).
    Ended(Row),
    /// A deploy of this rollout is running.
    Running,
    /// Nothing of this rollout yet (or only a failure the baseline round saw).
    Nothing,
}

/// Judges one host's rows: a row of this rollout that ended — a success, or an
/// ending not among `before` (what the host reported before the wave was fired: an
/// earlier run's failure is not this run's) — else a running one.
pub(crate) fn judge(rows: &[Row], target: &Target, before: &[Row]) -> Seen {
    let ours: Vec<&Row> = rows.iter().filter(|r| target.ours(r)).collect();
    let ended = |r: &&&Row| r.result != "running" && (r.result == "success" || !before.contains(r));
    if let Some(bad) = ours
        .iter()
        .filter(ended)
        .find(|r| r.result != "success" || r.error.is_some())
    {
        return Seen::Ended((*bad).clone());
    }
    if let Some(good) = ours.iter().find(ended) {
        return Seen::Ended((*good).clone());
    }
    if ours.iter().any(|r| r.result == "running") {
        return Seen::Running;
    }
    Seen::Nothing
}

/// After the bake: `None` when the host's row for `dest` (the dest its wave
/// deployed) is still this rollout's success; else why it now counts as failed:
/// that row's step and error, or what it holds instead.
pub(crate) fn bake_judge(
    rows: &[Row],
    target: &Target,
    dest: &Option<String>,
) -> Option<(Option<String>, String)> {
    let Some(row) = rows.iter().find(|r| &r.dest == dest) else {
        return Some((
            None,
            format!(
                "after the bake it no longer reports {}",
                dest.as_deref().map_or("its deploy".into(), shown_text)
            ),
        ));
    };
    if target.ours(row) && row.result == "success" && row.error.is_none() {
        return None;
    }
    if row.result != "success" || row.error.is_some() {
        return Some((
            row.failed_step.clone(),
            format!(
                "after the bake: {}{}",
                shown_text(&row.result),
                row.error
                    .as_deref()
                    .map_or(String::new(), |e| format!(": {}", shown_text(e)))
            ),
        ));
    }
    Some((
        None,
        format!(
            "after the bake it holds another deploy ({})",
            row.checksum.as_deref().map_or("-".into(), shown_text)
        ),
    ))
}

/// How one planned host ended (its `result` in `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Its deploy of this rollout succeeded.
    Success,
    /// Its deploy of this rollout failed (or failed the bake).
    Failure,
    /// Still deploying at the wave timeout.
    Running,
    /// Answered at the wave timeout, but with no deploy of this rollout.
    Missed,
    /// No answer at the wave timeout (or after the bake).
    Silent,
    /// Serf reports the member failed.
    Unreachable,
    /// Its answer is not a brief status.
    Invalid,
    /// Its wave was never fired (the rollout halted first).
    Pending,
}

impl Outcome {
    fn failed(self) -> bool {
        !matches!(self, Outcome::Success | Outcome::Pending)
    }
}

/// One planned host in the rollout's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostResult {
    /// Its node name.
    pub node: String,
    /// Its wave (1-based).
    pub wave: usize,
    /// How it ended.
    pub result: Outcome,
    /// The step its deploy failed at.
    pub failed_step: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The dest its deploy reported (for the bake).
    #[serde(skip)]
    dest: Option<String>,
}

/// One wave in `--json`'s plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct JsonWave<'a> {
    wave: usize,
    nodes: Vec<&'a str>,
}

#[derive(Debug, Serialize)]
struct JsonOut<'a> {
    rollout: &'a str,
    plan: Vec<JsonWave<'a>>,
    hosts: &'a [HostResult],
}

/// What a rollout did.
#[derive(Debug)]
struct Done {
    plan: Plan,
    hosts: Vec<HostResult>,
    /// The waves fired.
    fired: usize,
    /// Why it stopped before its last wave.
    halted: Option<String>,
    /// The fleet table of the final round.
    table: String,
}

/// Runs `stretcher rollout` with the process's environment: its output and exit
/// status (SPEC §19).
pub fn main(opts: &RolloutOptions) -> Output {
    let env = |k: &str| std::env::var(k).ok();
    let tty = std::io::stderr().is_terminal();
    match run(opts, &env, tty) {
        Ok(done) => render(opts, &done),
        Err(e) => Output::stderr(format!("stretcher rollout: {e}"), e.exit_code()),
    }
}

fn render(opts: &RolloutOptions, done: &Done) -> Output {
    let plan = &done.plan;
    let json = || {
        let out = JsonOut {
            rollout: &plan.rollout,
            plan: (1..=plan.waves.len())
                .map(|k| JsonWave {
                    wave: k,
                    nodes: plan.added(k).map(|h| h.node.as_str()).collect(),
                })
                .collect(),
            hosts: &done.hosts,
        };
        let mut s = serde_json::to_string_pretty(&out).unwrap_or_default();
        s.push('\n');
        s
    };
    if opts.dry_run {
        let text = if opts.json { json() } else { plan.lines() };
        return Output::stdout(text, 0);
    }
    let mut stderr = String::new();
    let failed: Vec<&HostResult> = done.hosts.iter().filter(|h| h.result.failed()).collect();
    for h in &failed {
        let what = match (&h.failed_step, &h.error) {
            (Some(step), Some(e)) => format!("failed at {}: {}", shown_text(step), shown_text(e)),
            (Some(step), None) => format!("failed at {}", shown_text(step)),
            (None, Some(e)) => shown_text(e),
            (None, None) => "failed".into(),
        };
        stderr.push_str(&format!(
            "failed: {} (wave {}, {}): {what}\n",
            shown_text(&h.node),
            h.wave,
            serde_json::to_value(h.result)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ));
    }
    let all = plan.hosts.len();
    let ok = done
        .hosts
        .iter()
        .filter(|h| h.result == Outcome::Success)
        .count();
    let waves = plan.waves.len();
    let summary = match &done.halted {
        Some(why) => format!(
            "rollout {}: halted after wave {}/{waves}: {why}; {ok} of {all} hosts deployed",
            plan.rollout, done.fired
        ),
        None if ok == all => format!(
            "rollout {}: {ok} of {all} hosts deployed in {waves} waves",
            plan.rollout
        ),
        None => format!(
            "rollout {}: {ok} of {all} hosts deployed in {waves} waves, {} failed (within --max-failed {})",
            plan.rollout,
            failed.len(),
            opts.max_failed
        ),
    };
    stderr.push_str(&summary);
    stderr.push('\n');
    let stdout = if opts.json {
        json()
    } else {
        done.table.clone()
    };
    Output {
        stdout,
        stderr,
        code: if ok == all && done.halted.is_none() {
            0
        } else {
            1
        },
        code_if_unwritten: 1,
    }
}

/// The manifest, fetched and checked as no host in particular (SPEC §19): its
/// signature with `--trusted-key`, its YAML and every key's form, templates
/// expanded by `manifest::parse_unhosted`. Its rollout id and checksum.
fn check_manifest(url: &str, opts: &RolloutOptions, env: Env) -> Result<Target> {
    let allow = AllowList::default();
    let fetch_opts = FetchOptions {
        retry: 2,
        retry_wait: Duration::from_secs(1),
        timeout: Some(MANIFEST_TIMEOUT),
        stall: Some(MANIFEST_TIMEOUT),
        max_bandwidth: None,
        allow: &allow,
        env,
    };
    let bytes = fetch::fetch_bytes(url, &fetch_opts, fetch::MAX_MANIFEST_BYTES)?;
    if !opts.trusted_keys.is_empty() {
        crate::deploy::check_signature(url, &bytes, &opts.trusted_keys, &fetch_opts)?;
    }
    let rollout = rollout::rollout_id(&bytes);
    let text = fetch::into_text(url, bytes)?;
    let manifest = crate::manifest::parse_unhosted(&text, url)?;
    Ok(Target {
        rollout,
        checksum: manifest.checksum.map(|c| c.hex().to_string()),
    })
}

/// The Serf agent the rollout speaks to, reconnected after an error.
struct Agent {
    addr: String,
    auth: Option<String>,
    client: Option<Client>,
}

impl Agent {
    fn client(&mut self) -> Result<&mut Client> {
        if self.client.is_none() {
            self.client = Some(Client::connect(
                &self.addr,
                self.auth.as_deref(),
                RPC_TIMEOUT,
            )?);
        }
        // just set when it was none
        self.client
            .as_mut()
            .ok_or_else(|| Error::Rollout("no connection to the serf agent".into()))
    }

    /// Runs `f` on the connection; an error drops it (the next call reconnects).
    fn with<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let r = f(self.client()?);
        if r.is_err() {
            self.client = None;
        }
        r
    }

    fn members(&mut self, tags: &[(String, String)]) -> Result<Vec<Member>> {
        let filter = MemberFilter {
            tags: tags.iter().cloned().collect(),
            ..MemberFilter::default()
        };
        self.with(|c| c.members_filtered(&filter))
    }

    fn fire(&mut self, event: &str, payload: &str) -> Result<()> {
        self.with(|c| c.user_event(event, payload.as_bytes(), false))
    }

    /// One round of the status query to `nodes`: their answers, once every one has
    /// answered or after `timeout`. A node's first answer counts.
    fn ask(&mut self, nodes: &[&str], timeout: Duration) -> Result<BTreeMap<String, String>> {
        let params = QueryParams {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            tags: BTreeMap::new(),
            timeout: Some(timeout.max(Duration::from_millis(500))),
        };
        let want: BTreeSet<&str> = nodes.iter().copied().collect();
        self.with(|c| {
            let mut answers = BTreeMap::new();
            let mut query = c.query(crate::fleet::QUERY, b"", &params)?;
            let deadline = Instant::now() + timeout + Duration::from_secs(2);
            while !want.iter().all(|n| answers.contains_key(*n)) {
                match query.poll(deadline)? {
                    Poll::Event(QueryEvent::Response { from, payload }) => {
                        answers
                            .entry(from)
                            .or_insert_with(|| String::from_utf8_lossy(&payload).into_owned());
                    }
                    Poll::Event(QueryEvent::Ack(_)) => {}
                    Poll::Idle | Poll::Done => break,
                }
            }
            query.stop();
            Ok(answers)
        })
    }
}

/// The progress line of a wave: `wave 2/4: 10/25 done, 0 failed`, redrawn on a
/// terminal, printed once (at the wave's end) otherwise.
struct Progress {
    tty: bool,
}

impl Progress {
    /// A line of its own between progress lines (the redrawn one is cleared first).
    fn note(&self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[K{line}\n");
        } else {
            eprintln!("{line}");
        }
    }

    fn show(&self, line: &str, last: bool) {
        if self.tty {
            eprint!("\r\x1b[K{line}{}", if last { "\n" } else { "" });
        } else if last {
            eprintln!("{line}");
        }
    }
}

fn run(opts: &RolloutOptions, env: Env, tty: bool) -> Result<Done> {
    // a local path is the file:// URL of its absolute form, as for a deploy
    let url = crate::event::to_url(&opts.manifest_url)?;
    let target = check_manifest(&url, opts, env)?;
    let mut agent = Agent {
        addr: opts
            .rpc_addr
            .clone()
            .or_else(|| env("SERF_RPC_ADDR").filter(|a| !a.is_empty()))
            .unwrap_or_else(|| DEFAULT_RPC_ADDR.to_string()),
        auth: env("SERF_RPC_AUTH").filter(|a| !a.is_empty()),
        client: None,
    };
    let members = agent.members(&opts.tags)?;
    let alive: Vec<(String, BTreeMap<String, String>)> = members
        .iter()
        .filter(|m| m.status == "alive")
        .map(|m| (m.name.clone(), m.tags.clone()))
        .collect();
    if alive.is_empty() {
        return Err(Error::Rollout(
            "no alive serf member matches the --tag filters".into(),
        ));
    }
    let plan = plan(&target.rollout, &alive, opts.canary.as_ref(), &opts.waves);
    let mut hosts: Vec<HostResult> = plan
        .hosts
        .iter()
        .map(|h| HostResult {
            node: h.node.clone(),
            wave: h.wave,
            result: Outcome::Pending,
            failed_step: None,
            error: None,
            dest: None,
        })
        .collect();
    if opts.dry_run {
        return Ok(Done {
            plan,
            hosts,
            fired: 0,
            halted: None,
            table: String::new(),
        });
    }
    // Payloads are checked before anything is fired.
    let payloads: Vec<String> = (1..=plan.waves.len())
        .map(|k| plan.payload(&url, k))
        .collect::<Result<_>>()?;
    let names: Vec<&str> = plan.hosts.iter().map(|h| h.node.as_str()).collect();
    // What each host reported before any wave: an ending already there is not this
    // run's (a success of this rollout is: the host is done).
    let before: BTreeMap<String, Vec<Row>> = agent
        .ask(&names, ROUND)?
        .into_iter()
        .filter_map(|(n, a)| rows_of(&a).ok().map(|r| (n, r)))
        .collect();
    let limit = opts.max_failed.limit_of(plan.hosts.len());
    let progress = Progress { tty };
    let mut fired = 0;
    let mut halted = None;
    for k in 1..=plan.waves.len() {
        agent.fire(&opts.event, &payloads[k - 1])?;
        fired = k;
        watch_wave(
            &mut agent,
            opts,
            &plan,
            k,
            &payloads[k - 1],
            &target,
            &before,
            &mut hosts,
            &progress,
        )?;
        let failed = hosts.iter().filter(|h| h.result.failed()).count();
        if failed > limit {
            halted = Some(format!(
                "{failed} failed, more than --max-failed {} ({limit})",
                opts.max_failed
            ));
            break;
        }
        if !opts.bake.is_zero() {
            bake(&mut agent, opts, k, &target, &mut hosts)?;
            let failed = hosts.iter().filter(|h| h.result.failed()).count();
            if failed > limit {
                halted = Some(format!(
                    "{failed} failed after the bake, more than --max-failed {} ({limit})",
                    opts.max_failed
                ));
                break;
            }
        }
    }
    let table = final_table(&mut agent, &names, &members, &target)?;
    Ok(Done {
        plan,
        hosts,
        fired,
        halted,
        table,
    })
}

/// Watches wave `k` until each host it adds reports a deploy of this rollout that
/// ended, or the wave timeout; fires the event once more at half the timeout for
/// hosts that reported nothing of it.
#[allow(clippy::too_many_arguments)]
fn watch_wave(
    agent: &mut Agent,
    opts: &RolloutOptions,
    plan: &Plan,
    k: usize,
    payload: &str,
    target: &Target,
    before: &BTreeMap<String, Vec<Row>>,
    hosts: &mut [HostResult],
    progress: &Progress,
) -> Result<()> {
    let start = Instant::now();
    let deadline = start + opts.wave_timeout;
    let half = start + opts.wave_timeout / 2;
    let mut refired = false;
    let waves = plan.waves.len();
    let covered = plan.waves[k - 1];
    // what each pending host last showed: answered (its rows' verdict), or not
    let mut last: BTreeMap<String, Option<Seen>> = BTreeMap::new();
    let line = |hosts: &[HostResult]| {
        let done = hosts
            .iter()
            .filter(|h| h.wave <= k && h.result != Outcome::Pending)
            .count();
        let failed = hosts.iter().filter(|h| h.result.failed()).count();
        format!("wave {k}/{waves}: {done}/{covered} done, {failed} failed")
    };
    loop {
        let pending: Vec<&str> = hosts
            .iter()
            .filter(|h| h.wave == k && h.result == Outcome::Pending)
            .map(|h| h.node.as_str())
            .collect();
        if pending.is_empty() {
            break;
        }
        let round = Instant::now();
        let left = deadline.saturating_duration_since(round);
        let pending: Vec<String> = pending.into_iter().map(str::to_string).collect();
        let refs: Vec<&str> = pending.iter().map(String::as_str).collect();
        let answers = agent.ask(&refs, ROUND.min(left))?;
        for node in &pending {
            let Some(answer) = answers.get(node) else {
                // silent this round: keep what it showed before (a deploying host's
                // handler is busy)
                last.entry(node.clone()).or_insert(None);
                continue;
            };
            let h = hosts
                .iter_mut()
                .find(|h| &h.node == node)
                .ok_or_else(|| Error::Rollout(format!("{node} is not planned")))?;
            match rows_of(answer) {
                Err(why) => {
                    h.result = Outcome::Invalid;
                    h.error = Some(format!("invalid answer: {why}"));
                }
                Ok(rows) => {
                    let empty = Vec::new();
                    let seen = judge(&rows, target, before.get(node).unwrap_or(&empty));
                    if let Seen::Ended(row) = &seen {
                        let ok = row.result == "success" && row.error.is_none();
                        h.result = if ok {
                            Outcome::Success
                        } else {
                            Outcome::Failure
                        };
                        h.dest = row.dest.clone();
                        if !ok {
                            h.failed_step = row.failed_step.clone();
                            h.error = Some(match &row.error {
                                Some(e) => e.clone(),
                                None => format!("its deploy ended {}", row.result),
                            });
                        }
                    }
                    last.insert(node.clone(), Some(seen));
                }
            }
        }
        let now = Instant::now();
        let unfinished = hosts
            .iter()
            .any(|h| h.wave == k && h.result == Outcome::Pending);
        progress.show(&line(hosts), !unfinished);
        if !unfinished {
            break;
        }
        if now >= deadline {
            time_out(agent, opts, k, hosts, &last)?;
            progress.show(&line(hosts), true);
            break;
        }
        if !refired && now >= half {
            // Serf can miss a host for tens of seconds: once more, for the hosts
            // that reported nothing of this rollout (a running one is on it).
            let missed: Vec<&str> = hosts
                .iter()
                .filter(|h| {
                    h.wave == k
                        && h.result == Outcome::Pending
                        && !matches!(last.get(&h.node), Some(Some(Seen::Running)))
                })
                .map(|h| h.node.as_str())
                .collect();
            if !missed.is_empty() {
                agent.fire(&opts.event, payload)?;
                refired = true;
                progress.note(&format!(
                    "wave {k}/{waves}: fired again at half the wave timeout for {} host(s) \
                     that reported nothing of it: {}",
                    missed.len(),
                    missed.join(", ")
                ));
            }
        }
        let next = (round + EVERY).min(deadline);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

/// At the wave timeout: every host of wave `k` that has not reported counts as
/// failed — still running, answered without a deploy of this rollout, silent, or
/// unreachable (Serf reports the member failed).
fn time_out(
    agent: &mut Agent,
    opts: &RolloutOptions,
    k: usize,
    hosts: &mut [HostResult],
    last: &BTreeMap<String, Option<Seen>>,
) -> Result<()> {
    let failed_members: BTreeSet<String> = agent
        .members(&opts.tags)?
        .into_iter()
        .filter(|m| m.status == "failed")
        .map(|m| m.name)
        .collect();
    let t = format!("{:?}", opts.wave_timeout);
    for h in hosts
        .iter_mut()
        .filter(|h| h.wave == k && h.result == Outcome::Pending)
    {
        let (result, why) = if failed_members.contains(&h.node) {
            (
                Outcome::Unreachable,
                format!("serf reports the member failed; no report within the wave timeout {t}"),
            )
        } else {
            match last.get(&h.node) {
                Some(Some(Seen::Running)) => (
                    Outcome::Running,
                    format!("still deploying at the wave timeout {t}"),
                ),
                Some(Some(_)) => (
                    Outcome::Missed,
                    format!("answered, but reported no deploy of this rollout within the wave timeout {t}"),
                ),
                _ => (
                    Outcome::Silent,
                    format!("no answer within the wave timeout {t}"),
                ),
            }
        };
        h.result = result;
        h.error = Some(why);
    }
    Ok(())
}

/// The bake after wave `k`: waits `--bake`, then asks every host deployed so far
/// that succeeded; one that now reports a failure of its dest, holds another
/// deploy, or no longer answers counts as failed.
fn bake(
    agent: &mut Agent,
    opts: &RolloutOptions,
    k: usize,
    target: &Target,
    hosts: &mut [HostResult],
) -> Result<()> {
    std::thread::sleep(opts.bake);
    let asked: Vec<String> = hosts
        .iter()
        .filter(|h| h.wave <= k && h.result == Outcome::Success)
        .map(|h| h.node.clone())
        .collect();
    let mut answers: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..BAKE_ROUNDS {
        let missing: Vec<&str> = asked
            .iter()
            .map(String::as_str)
            .filter(|n| !answers.contains_key(*n))
            .collect();
        if missing.is_empty() {
            break;
        }
        answers.extend(agent.ask(&missing, ROUND)?);
    }
    for h in hosts.iter_mut().filter(|h| asked.contains(&h.node)) {
        let verdict = match answers.get(&h.node) {
            None => Some((
                Outcome::Silent,
                None,
                "no answer after the bake".to_string(),
            )),
            Some(a) => match rows_of(a) {
                Err(why) => Some((Outcome::Invalid, None, format!("invalid answer: {why}"))),
                Ok(rows) => bake_judge(&rows, target, &h.dest)
                    .map(|(step, why)| (Outcome::Failure, step, why)),
            },
        };
        if let Some((result, step, why)) = verdict {
            h.result = result;
            h.failed_step = step;
            h.error = Some(why);
        }
    }
    Ok(())
}

/// The table of `fleet status` for the planned hosts, from one last round, judged
/// against the manifest's checksum.
fn final_table(
    agent: &mut Agent,
    names: &[&str],
    members: &[Member],
    target: &Target,
) -> Result<String> {
    let responses = agent.ask(names, ROUND)?;
    let planned: Vec<Member> = members
        .iter()
        .filter(|m| names.contains(&m.name.as_str()))
        .cloned()
        .collect();
    let query = crate::fleet::QueryOutput {
        acks: responses.keys().cloned().collect(),
        responses,
    };
    Ok(crate::fleet::assess(&planned, &query, target.checksum.as_deref()).table(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef";

    fn members(n: usize, canaries: &[usize]) -> Vec<(String, BTreeMap<String, String>)> {
        (0..n)
            .map(|i| {
                let role = if canaries.contains(&i) {
                    "canary"
                } else {
                    "web"
                };
                (
                    format!("node{i}"),
                    BTreeMap::from([("role".to_string(), role.to_string())]),
                )
            })
            .collect()
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(Size::parse("1"), Ok(Size::Count(1)));
        assert_eq!(Size::parse(" 10% "), Ok(Size::Percent(10)));
        assert_eq!(Size::parse("100%"), Ok(Size::Percent(100)));
        for bad in ["0", "0%", "101%", "-1", "+1", "1.5", "%", "", "ten", "1e3"] {
            assert!(Size::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Size::parse_limit("0"), Ok(Size::Count(0)));
        assert_eq!(Size::parse_limit("0%"), Ok(Size::Percent(0)));
        assert!(Size::parse_limit("-2").is_err());
        assert_eq!(
            parse_waves("1,10%,50%,100%"),
            Ok(default_waves()),
            "the default"
        );
        assert_eq!(parse_waves("3"), Ok(vec![Size::Count(3)]));
        assert!(parse_waves("1,,2").is_err());
        assert!(parse_waves("").is_err());
        assert!(parse_waves("1,x").unwrap_err().contains("\"x\""));
    }

    #[test]
    fn sizes_round() {
        // a percentage rounds up, a wave has at least one host and at most all
        assert_eq!(Size::Percent(10).hosts_of(25), 3);
        assert_eq!(Size::Percent(10).hosts_of(30), 3);
        assert_eq!(Size::Percent(1).hosts_of(5), 1);
        assert_eq!(Size::Percent(100).hosts_of(7), 7);
        assert_eq!(Size::Count(50).hosts_of(7), 7);
        assert_eq!(Size::Count(1).hosts_of(0), 0);
        // a limit rounds down
        assert_eq!(Size::Percent(10).limit_of(25), 2);
        assert_eq!(Size::Percent(10).limit_of(9), 0);
        assert_eq!(Size::Count(3).limit_of(1), 3);
    }

    #[test]
    fn plans_are_ranked_cumulative_and_drop_empty_waves() {
        let m = members(30, &[]);
        let p = plan(ID, &m, None, &default_waves());
        assert_eq!(p.waves, vec![1, 3, 15, 30]);
        assert_eq!(p.hosts.len(), 30);
        let ranks: Vec<&str> = p.hosts.iter().map(|h| h.rank.as_str()).collect();
        let mut sorted = ranks.clone();
        sorted.sort();
        assert_eq!(ranks, sorted, "ordered by rank");
        for h in &p.hosts {
            assert_eq!(h.rank, rollout::rank(ID, &h.node, false));
        }
        let per_wave: Vec<usize> = (1..=4).map(|k| p.added(k).count()).collect();
        assert_eq!(per_wave, vec![1, 2, 12, 15]);
        // 5 hosts: 1, 10% = 1 (dropped), 50% = 3, 100% = 5
        let p = plan(ID, &members(5, &[]), None, &default_waves());
        assert_eq!(p.waves, vec![1, 3, 5]);
        assert_eq!(
            p.hosts.iter().map(|h| h.wave).collect::<Vec<_>>(),
            [1, 2, 2, 3, 3]
        );
        // waves that shrink add nobody; hosts after the last wave are not planned
        let p = plan(
            ID,
            &members(10, &[]),
            None,
            &[Size::Count(4), Size::Count(2), Size::Percent(50)],
        );
        assert_eq!(p.waves, vec![4, 5]);
        assert_eq!(p.hosts.len(), 5);
        // one host
        let p = plan(ID, &members(1, &[]), None, &default_waves());
        assert_eq!(p.waves, vec![1]);
    }

    #[test]
    fn canaries_come_first_and_the_payload_names_the_last_rank() {
        let canary = Canary::parse("role=canary").unwrap();
        let m = members(12, &[5, 9]);
        let p = plan(ID, &m, Some(&canary), &[Size::Count(2), Size::Percent(100)]);
        let first: BTreeSet<&str> = p.hosts[..2].iter().map(|h| h.node.as_str()).collect();
        assert_eq!(first, BTreeSet::from(["node5", "node9"]));
        assert!(p.hosts[..2]
            .iter()
            .all(|h| h.rank.starts_with('0') && h.wave == 1));
        assert!(p.hosts[2..]
            .iter()
            .all(|h| h.rank.starts_with('1') && h.wave == 2));
        let text = p.payload("https://h/m.yml", 1).unwrap();
        let (url, wave) = rollout::parse_payload(&text).unwrap().unwrap();
        assert_eq!(url, "https://h/m.yml");
        assert_eq!(wave.upto, p.hosts[1].rank);
        assert_eq!(wave.canary, Some(canary));
        assert!(p.hosts.iter().filter(|h| wave.includes(&h.rank)).count() == 2);
        let last = p.payload("https://h/m.yml", 2).unwrap();
        assert!(last.len() < 512);
        assert_eq!(
            p.lines().lines().next().unwrap(),
            format!("1 {} {}", p.hosts[0].node, p.hosts[0].rank)
        );
    }

    fn row(result: &str, rollout: Option<&str>, finished: &str) -> Row {
        Row {
            dest: Some("/srv/app".into()),
            result: result.into(),
            checksum: Some("abcdef012345".into()),
            rollout: rollout.map(str::to_string),
            finished: Some(finished.into()),
            started: None,
            failed_step: (result == "failure").then(|| "pre".to_string()),
            error: (result == "failure").then(|| "exit 1".to_string()),
        }
    }

    #[test]
    #[allow(clippy::cloned_ref_to_slice_refs)]
    fn judging_a_hosts_rows() {
        let t = Target {
            rollout: ID.into(),
            checksum: Some("abcdef0123456789abcdef0123456789abcdef01".into()),
        };
        let ok = row("success", Some(ID), "t1");
        assert_eq!(judge(&[ok.clone()], &t, &[]), Seen::Ended(ok.clone()));
        // a success of this rollout from before counts (the host is done)
        assert_eq!(
            judge(&[ok.clone()], &t, &[ok.clone()]),
            Seen::Ended(ok.clone())
        );
        // a failure from before does not; a new one does
        let bad = row("failure", Some(ID), "t1");
        assert_eq!(judge(&[bad.clone()], &t, &[bad.clone()]), Seen::Nothing);
        let bad2 = row("failure", Some(ID), "t2");
        assert_eq!(judge(&[bad2.clone()], &t, &[bad]), Seen::Ended(bad2));
        // another rollout, no rollout, another checksum: nothing of this one
        let other = row("success", Some("fedcba9876543210"), "t1");
        let plain = row("success", None, "t1");
        let mut wrong = ok.clone();
        wrong.checksum = Some("000000000000".into());
        for r in [other, plain, wrong] {
            assert_eq!(judge(&[r], &t, &[]), Seen::Nothing);
        }
        let mut running = row("running", Some(ID), "t1");
        running.finished = None;
        running.started = Some("t0".into());
        assert_eq!(judge(&[running], &t, &[]), Seen::Running);
        // a failure wins over a success of another dest
        let mut bad3 = row("failure", Some(ID), "t3");
        bad3.dest = Some("/srv/b".into());
        assert_eq!(
            judge(&[ok.clone(), bad3.clone()], &t, &[]),
            Seen::Ended(bad3)
        );
        // the bake: the dest's row still this rollout's success, or why not
        let dest = Some("/srv/app".to_string());
        assert_eq!(bake_judge(&[ok.clone()], &t, &dest), None);
        let later = row("failure", None, "t9");
        let (step, why) = bake_judge(&[later], &t, &dest).unwrap();
        assert_eq!(step.as_deref(), Some("pre"));
        assert!(why.contains("exit 1"), "{why}");
        assert!(bake_judge(&[], &t, &dest).unwrap().1.contains("no longer"));
        let mut newer = ok;
        newer.rollout = None;
        assert!(bake_judge(&[newer], &t, &dest)
            .unwrap()
            .1
            .contains("another"));
    }

    #[test]
    fn answers_are_checked_before_they_are_read() {
        let good = format!(
            r#"{{"host":"h","deploys":[{{"dest":"/srv/app","result":"success","checksum":"abcdef012345","rollout":"{ID}","finished":"t","failed_step":null,"error":null}}]}}"#
        );
        let rows = rows_of(&good).unwrap();
        assert_eq!(rows[0].rollout.as_deref(), Some(ID));
        assert!(rows_of("hello").is_err());
        assert!(rows_of(&format!("{good}\n{good}")).is_err());
        let bad_sum = good.replace("abcdef012345", "xyz");
        assert!(rows_of(&bad_sum).is_err());
    }
}
