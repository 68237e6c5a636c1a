//! `stretcher status [DEST...] [--json] [--brief]` (SPEC §13): the last record of
//! each dest in the state directory, for a person, a script, or a Serf query.
//!
//! One job: read what each dest's record shows now (`record::current`: the last
//! record, or the run in progress — `running`, or `interrupted` when its process is
//! gone), and print them as lines, as the JSON array of records, or as the brief
//! answer (`Brief`) that `fleet status` and `catch-up` read — small enough that
//! Serf's whole response message, answer included, stays within `BRIEF_LIMIT` bytes,
//! Serf's default response size limit: errors are shortened, and when dests must be
//! left out the failed, running and interrupted ones are kept first and `omitted`
//! counts the others. It reads the state directory only. Under a Serf query (`SERF_EVENT=query`) it
//! exits 0 and writes nothing on stderr whatever happens, because Serf drops the
//! answer of a handler that exits non-zero and mixes its stderr into the answer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::{Output, StatusOptions};
use crate::error::{Error, Result};
use crate::log;
use crate::record::{self, Outcome, Record};
use crate::state;
use crate::Env;

/// Serf's default limit of one query response (`QueryResponseSizeLimit`). It
/// applies to the encoded response message, not to the answer alone: Serf drops
/// (and only logs) a response that exceeds it.
pub(crate) const BRIEF_LIMIT: usize = 1024;

/// What Serf's response message adds to the answer, besides the node name: 41
/// bytes measured with serf 0.8 (message type, field names, LTime, ID, flags,
/// length headers), and room for LTimes and IDs of full width.
pub(crate) const RESPONSE_OVERHEAD: usize = 56;

/// The longest brief answer (its newline included) that a node called `node`
/// can send within Serf's default limit.
pub fn brief_budget(node: &str) -> usize {
    BRIEF_LIMIT - RESPONSE_OVERHEAD - node.len().min(BRIEF_LIMIT / 2)
}

/// The node name Serf will send the answer as: `SERF_SELF_NAME` under a handler,
/// else the host name (Serf's default node name).
fn node_name(env: Env) -> String {
    env("SERF_SELF_NAME")
        .filter(|n| !n.is_empty())
        .or_else(record::hostname)
        .unwrap_or_default()
}

/// The answer to `serf query stretcher-status`: this host and its last deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brief {
    /// This host's name, as the kernel has it (empty when it cannot be read).
    pub host: String,
    /// The last deploy of each dest shown (every one recorded, or those named).
    pub deploys: Vec<BriefDeploy>,
    /// Deploys left out to stay within `BRIEF_LIMIT` (those not successful are kept
    /// first, then the newest).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
    /// Why the records could not be read at all (under a query that is still an
    /// answer, with exit 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One dest's last deploy, in brief.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BriefDeploy {
    /// The dest's path; null for a commands-only manifest.
    pub dest: Option<String>,
    /// The record's `result`.
    pub result: String,
    /// The first 12 hex digits.
    pub checksum: Option<String>,
    /// The rollout whose wave ran this deploy (SPEC §19: the record's
    /// `event.rollout`); absent for any other deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// The record's `finished`.
    pub finished: Option<String>,
    /// The record's `failed_step`.
    pub failed_step: Option<String>,
    /// The one-line error, shortened (ending in `…`) to fit `BRIEF_LIMIT`.
    pub error: Option<String>,
    /// The manifest URL, as the record has it (`urls::redact`: no password, no query
    /// string), never shortened: a deploy whose URL does not fit is left out.
    #[serde(default)]
    pub manifest_url: Option<String>,
    /// The manifest's `serial` (SPEC §15), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// When a run that has not finished started (`running`, `interrupted` without a
    /// record of its end); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
}

impl BriefDeploy {
    /// When it finished, else when it started.
    fn time(&self) -> Option<&str> {
        self.finished.as_deref().or(self.started.as_deref())
    }
}

/// The shortest an error is cut to before whole deploys are left out.
const MIN_ERROR_CHARS: usize = 24;

/// `brief` as JSON within `limit` bytes. When it does not fit as it is, deploys are
/// taken in order of importance — those not successful (failed, refused, running,
/// interrupted) first, then the newest — each kept when it still fits with every
/// kept error cut to `MIN_ERROR_CHARS`, else left out (a URL is never cut: a deploy
/// whose URL does not fit is left out) and counted in `omitted`; then the kept
/// errors get back all the room left, cut to one length. Always valid JSON; never
/// longer than `limit` unless even the host name alone is.
pub(crate) fn brief_json(brief: &Brief, limit: usize) -> String {
    let fits = |b: &Brief| -> Option<String> {
        let s = serde_json::to_string(b).ok()?;
        (s.len() <= limit).then_some(s)
    };
    if let Some(s) = fits(brief) {
        return s;
    }
    let all = &brief.deploys;
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by(|&x, &y| {
        let (x, y) = (&all[x], &all[y]);
        (x.result == "success")
            .cmp(&(y.result == "success"))
            .then_with(|| y.time().cmp(&x.time()))
    });
    // The kept deploys (in the answer's order) with their errors cut to `n`.
    let with = |keep: &[bool], n: usize| Brief {
        deploys: all
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(d, _)| BriefDeploy {
                error: d.error.as_deref().map(|e| shorten(e, n)),
                ..d.clone()
            })
            .collect(),
        omitted: brief.omitted + keep.iter().filter(|k| !**k).count(),
        ..brief.clone()
    };
    let mut keep = vec![false; all.len()];
    for &i in &order {
        keep[i] = true;
        if fits(&with(&keep, MIN_ERROR_CHARS)).is_none() {
            keep[i] = false;
        }
    }
    if keep.iter().any(|k| *k) {
        // The longest error length that fits, by bisection (`lo` fits).
        let longest = all
            .iter()
            .filter_map(|d| d.error.as_ref())
            .map(|e| e.chars().count())
            .max()
            .unwrap_or(0);
        let (mut lo, mut hi) = (MIN_ERROR_CHARS, longest.max(MIN_ERROR_CHARS));
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(&with(&keep, mid)).is_some() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if let Some(s) = fits(&with(&keep, lo)) {
            return s;
        }
    }
    // Not even one deploy with a short error: the most important one with its error
    // reduced to `…`, else none.
    for &i in &order {
        let mut one = vec![false; all.len()];
        one[i] = true;
        if let Some(s) = fits(&with(&one, 1)) {
            return s;
        }
    }
    let mut b = with(&vec![false; all.len()], 1);
    b.error = b.error.as_deref().map(|e| shorten(e, MIN_ERROR_CHARS));
    serde_json::to_string(&b).unwrap_or_else(|_| "{}".into())
}

/// `text` cut to at most `max` characters, the last one `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// Runs `stretcher status` with the process's environment: its output and exit
/// status (SPEC §13; always 0 under a serf query, even when stdout cannot be written).
pub fn main(opts: &StatusOptions) -> Output {
    let env = |k: &str| std::env::var(k).ok();
    let query = env("SERF_EVENT").as_deref() == Some("query");
    if query {
        // warnings about corrupt records would be mixed into the answer
        log::set_quiet(true);
    }
    let (text, code) = match run(opts, &env) {
        Ok(done) => done,
        Err(e) if opts.brief || query => {
            let brief = Brief {
                host: record::hostname().unwrap_or_default(),
                deploys: Vec::new(),
                omitted: 0,
                error: Some(e.to_string()),
            };
            (
                brief_json(&brief, brief_budget(&node_name(&env)) - 1) + "\n",
                1,
            )
        }
        Err(e) => return Output::stderr(format!("stretcher: status: {e}"), 1),
    };
    if query {
        return Output {
            code_if_unwritten: 0,
            ..Output::stdout(text, 0)
        };
    }
    Output::stdout(text, code)
}

/// The output and exit status of `stretcher status` (SPEC §13).
pub(crate) fn run(opts: &StatusOptions, env: Env) -> Result<(String, i32)> {
    let dir = state::find_state_dir(opts.state_dir.as_deref(), env).ok_or_else(|| {
        Error::io(
            "choose a state directory",
            state::SYSTEM_STATE_DIR,
            std::io::Error::other(
                "not writable, and neither XDG_STATE_HOME nor HOME is set; give --state-dir",
            ),
        )
    })?;
    let (records, missing) = select(&dir, &opts.dests)?;
    let failed = records.iter().any(|r| r.result != Outcome::Success);
    let code = if failed {
        1
    } else if records.is_empty() || !missing.is_empty() {
        3
    } else {
        0
    };
    let text = if opts.brief {
        let brief = Brief {
            host: record::hostname().unwrap_or_default(),
            deploys: records.iter().map(brief_deploy).collect(),
            omitted: 0,
            error: None,
        };
        // the newline is part of the answer serf sends
        brief_json(&brief, brief_budget(&node_name(env)) - 1) + "\n"
    } else if opts.json {
        serde_json::to_string_pretty(&records).unwrap_or_default() + "\n"
    } else if records.is_empty() && missing.is_empty() {
        format!("no deploy recorded in {}\n", log::shown_path(&dir))
    } else {
        lines(&records, &missing)
    };
    Ok((text, code))
}

/// The last records to show: of the `dests` named (and those of them that have
/// none), or of every key in `dir`. A record of a manifest that could not be used
/// (`manifest-*` key) is left out once a later record of the same manifest URL
/// exists: the manifest has been read since.
fn select(dir: &Path, dests: &[PathBuf]) -> Result<(Vec<Record>, Vec<PathBuf>)> {
    if !dests.is_empty() {
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for d in dests {
            let abs = absolute(d)?;
            match record::current(dir, &record::key_for_dest(&abs)) {
                Some(r) => found.push(r),
                None => missing.push(abs),
            }
        }
        return Ok((found, missing));
    }
    let all = record::all(dir);
    let superseded = |key: &str, r: &Record| {
        key.starts_with("manifest-")
            && all.iter().any(|(k, other)| {
                k != key && other.manifest_url == r.manifest_url && other.time() > r.time()
            })
    };
    let records = all
        .iter()
        .filter(|(k, r)| !superseded(k, r))
        .map(|(_, r)| r.clone())
        .collect();
    Ok((records, Vec::new()))
}

/// `dest` as the manifest would name it: absolute, without `.` parts or a
/// trailing `/` (the record key is a digest of that path).
fn absolute(dest: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(dest).map_err(|e| Error::io("resolve", dest, e))?;
    Ok(abs.components().collect())
}

/// A record in brief (checksum cut to 12 digits; the URL redacted once more, in
/// case a record was written by hand).
fn brief_deploy(r: &Record) -> BriefDeploy {
    BriefDeploy {
        dest: r.dest.clone(),
        result: r.result.as_str().to_string(),
        checksum: r.checksum.as_ref().map(|c| c.chars().take(12).collect()),
        rollout: r.event.rollout.clone(),
        finished: r.finished.clone(),
        failed_step: r.failed_step.map(|s| s.as_str().to_string()),
        error: r.error.clone(),
        manifest_url: Some(crate::urls::redact(&r.manifest_url)),
        serial: r.serial,
        started: r.finished.is_none().then(|| r.started.clone()),
    }
}

/// One line per record, columns aligned: `DEST  RESULT  CHECKSUM  FINISHED
/// DURATION  MANIFEST_URL`, then `failed at STEP: ERROR` for a failure; one line
/// `DEST  none` per named dest without a record. Every field of a record is shown
/// through `log::shown_text` (SPEC §17): a record cannot print a line of its own.
fn lines(records: &[Record], missing: &[PathBuf]) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in records {
        let mut row = vec![
            r.dest.as_deref().map_or("-".into(), log::shown_text),
            r.result.as_str().to_string(),
            r.checksum.as_ref().map_or("-".into(), |c| {
                log::shown_text(c.chars().take(12).collect::<String>())
            }),
            r.finished.as_deref().map_or("-".into(), log::shown_text),
            r.duration_s.map_or("-".into(), |d| format!("{d:.3}s")),
            log::shown_text(&r.manifest_url),
        ];
        let error = r.error.as_deref().unwrap_or(r.result.as_str());
        let pid = r.process.as_ref().map_or(0, |p| p.pid);
        match (r.result, r.failed_step) {
            (Outcome::Success, _) => {}
            (Outcome::Running, _) => row.push(log::shown_text(format!(
                "running since {} (pid {pid})",
                r.started
            ))),
            (_, Some(step)) => row.push(log::shown_text(format!(
                "failed at {}: {error}",
                step.as_str()
            ))),
            (result, None) => row.push(log::shown_text(format!(
                "{} (started {}): {error}",
                result.as_str(),
                r.started
            ))),
        }
        rows.push(row);
    }
    for m in missing {
        rows.push(vec![
            log::shown_text(m.as_os_str().as_bytes()),
            "none".into(),
        ]);
    }
    // align every column but the last of each row
    let mut widths = [0usize; 7];
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            } else {
                line.push_str(c);
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(i: usize, error: Option<String>) -> BriefDeploy {
        BriefDeploy {
            dest: Some(format!("/srv/application-number-{i}")),
            result: if error.is_some() {
                "failure"
            } else {
                "success"
            }
            .into(),
            checksum: Some("0123456789ab".into()),
            rollout: None,
            finished: Some(format!("2026-12-01T10:00:{i:02}.000Z")),
            failed_step: error.as_ref().map(|_| "pre".into()),
            error,
            manifest_url: Some(format!(
                "https://releases.example.com/manifests/application-number-{i}.yml"
            )),
            serial: Some(1000 + i as u64),
            started: None,
        }
    }

    fn brief(deploys: Vec<BriefDeploy>) -> Brief {
        Brief {
            host: "web-1".into(),
            deploys,
            omitted: 0,
            error: None,
        }
    }

    #[test]
    fn small_answers_are_untouched() {
        let b = brief(vec![deploy(1, Some("failed: false exit status 1".into()))]);
        let s = brief_json(&b, BRIEF_LIMIT);
        assert_eq!(serde_json::from_str::<Brief>(&s).unwrap(), b);
        assert!(!s.contains("omitted"), "{s}");
    }

    #[test]
    fn long_errors_are_cut_to_fit() {
        let long = "x".repeat(900);
        let b = brief((0..3).map(|i| deploy(i, Some(long.clone()))).collect());
        let s = brief_json(&b, BRIEF_LIMIT);
        assert!(s.len() <= BRIEF_LIMIT, "{}", s.len());
        let back: Brief = serde_json::from_str(&s).unwrap();
        assert_eq!(back.deploys.len(), 3);
        assert_eq!(back.omitted, 0);
        let e = back.deploys[0].error.as_deref().unwrap();
        assert!(
            e.ends_with('…') && e.chars().count() > MIN_ERROR_CHARS,
            "{e}"
        );
        // as long as fits: one more character each would not
        assert!(s.len() > BRIEF_LIMIT - 3 * 3, "{}", s.len());
    }

    #[test]
    fn many_dests_keep_the_failures_then_the_newest() {
        let b = brief(
            (0..40)
                .map(|i| deploy(i, (i % 5 == 0).then(|| "e".repeat(200))))
                .collect(),
        );
        let s = brief_json(&b, BRIEF_LIMIT);
        assert!(s.len() <= BRIEF_LIMIT, "{}", s.len());
        let back: Brief = serde_json::from_str(&s).unwrap();
        assert!(back.omitted > 0);
        assert_eq!(back.omitted + back.deploys.len(), 40);
        // the failures come first, the newest of them before older ones
        assert!(back.deploys.iter().all(|d| d.result == "failure"), "{s}");
        assert!(back
            .deploys
            .iter()
            .any(|d| d.dest.as_deref() == Some("/srv/application-number-35")));
        // URLs whole, serials kept
        for d in &back.deploys {
            let i: u64 = d.dest.as_deref().unwrap()[24..].parse().unwrap();
            assert_eq!(
                d.manifest_url.as_deref(),
                Some(
                    format!("https://releases.example.com/manifests/application-number-{i}.yml")
                        .as_str()
                )
            );
            assert_eq!(d.serial, Some(1000 + i));
        }
    }

    #[test]
    fn twenty_five_dests_with_long_urls_fit() {
        let mut ds: Vec<BriefDeploy> = (0..25).map(|i| deploy(i, None)).collect();
        for d in &mut ds {
            d.manifest_url = Some(format!(
                "{}/{}",
                d.manifest_url.as_ref().unwrap(),
                "x".repeat(120)
            ));
        }
        let s = brief_json(&brief(ds.clone()), BRIEF_LIMIT - 1);
        assert!(s.len() < BRIEF_LIMIT, "{}", s.len());
        let back: Brief = serde_json::from_str(&s).unwrap();
        assert_eq!(back.omitted + back.deploys.len(), 25);
        assert!(!back.deploys.is_empty());
        // the newest successes
        assert!(back.deploys.iter().any(|d| d.dest == ds[24].dest));
        for d in &back.deploys {
            assert!(ds.contains(d), "{d:?} was changed");
        }
    }

    #[test]
    fn the_oldest_failure_of_eight_long_dests_is_kept() {
        let mut ds: Vec<BriefDeploy> = (0..8).map(|i| deploy(i, None)).collect();
        ds[0] = deploy(
            0,
            Some(format!("failed: ./check {} exit status 1", "y".repeat(300))),
        );
        for d in &mut ds {
            d.manifest_url = Some(format!(
                "{}?{}",
                d.manifest_url.as_ref().unwrap(),
                "z".repeat(60)
            ));
        }
        let s = brief_json(&brief(ds), BRIEF_LIMIT);
        assert!(s.len() <= BRIEF_LIMIT);
        let back: Brief = serde_json::from_str(&s).unwrap();
        assert!(back.omitted > 0, "{s}");
        let failed = back
            .deploys
            .iter()
            .find(|d| d.result == "failure")
            .unwrap_or_else(|| panic!("the failure was left out: {s}"));
        assert_eq!(failed.dest.as_deref(), Some("/srv/application-number-0"));
        assert!(failed.error.as_deref().unwrap().ends_with('…'));
    }

    #[test]
    fn running_is_kept_and_a_url_that_cannot_fit_is_left_out() {
        let mut ds: Vec<BriefDeploy> = (0..4).map(|i| deploy(i, None)).collect();
        ds[1].result = "running".into();
        ds[1].finished = None;
        ds[1].started = Some("2026-12-01T09:00:00.000Z".into());
        // never shortened: this one cannot fit at all
        ds[2].result = "failure".into();
        ds[2].manifest_url = Some(format!("https://h/{}", "u".repeat(1100)));
        let s = brief_json(&brief(ds), BRIEF_LIMIT);
        assert!(s.len() <= BRIEF_LIMIT);
        let back: Brief = serde_json::from_str(&s).unwrap();
        assert_eq!(back.omitted, 1, "{s}");
        assert!(back.deploys.iter().any(|d| d.result == "running"));
        assert!(!back
            .deploys
            .iter()
            .any(|d| d.dest.as_deref() == Some("/srv/application-number-2")));
        assert!(
            s.contains("\"started\":\"2026-12-01T09:00:00.000Z\""),
            "{s}"
        );
    }

    #[test]
    fn shorten_counts_characters() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
        assert_eq!(shorten("ééé", 2), "é…");
    }
}
