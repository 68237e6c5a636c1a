//! `stretcher status [DEST...] [--json] [--brief]` (SPEC §13): the last record of
//! each dest in the state directory, for a person, a script, or a Serf query.
//!
//! One job: read the last records (`record`), and print them as lines, as the
//! JSON array of records, or as the brief answer (`Brief`) that `fleet status`
//! reads — at most `BRIEF_LIMIT` bytes, Serf's default response size limit. It
//! reads the state directory only. Under a Serf query (`SERF_EVENT=query`) it
//! exits 0 and writes nothing on stderr whatever happens, because Serf drops the
//! answer of a handler that exits non-zero and mixes its stderr into the answer.

use serde::{Deserialize, Serialize};

/// Serf's default limit of one query response (`QueryResponseSizeLimit`).
pub const BRIEF_LIMIT: usize = 1024;

/// The answer to `serf query stretcher-status`: this host and its last deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brief {
    pub host: String,
    pub deploys: Vec<BriefDeploy>,
    /// Deploys left out to stay within `BRIEF_LIMIT` (the newest are kept).
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
    pub dest: Option<String>,
    pub result: String,
    /// The first 12 hex digits.
    pub checksum: Option<String>,
    pub finished: Option<String>,
    pub failed_step: Option<String>,
    /// The one-line error, shortened (ending in `…`) to fit `BRIEF_LIMIT`.
    pub error: Option<String>,
}

/// The shortest an error is cut to before whole deploys are left out.
const MIN_ERROR_CHARS: usize = 24;

/// `brief` as JSON within `limit` bytes: errors are cut, all to the same length
/// (never below `MIN_ERROR_CHARS` while deploys are dropped), then the oldest
/// deploys are left out (counted in `omitted`), then errors go entirely. Always
/// valid JSON; never longer than `limit` unless even the host name alone is.
pub fn brief_json(brief: &Brief, limit: usize) -> String {
    let fits = |b: &Brief| -> Option<String> {
        let s = serde_json::to_string(b).ok()?;
        (s.len() <= limit).then_some(s)
    };
    if let Some(s) = fits(brief) {
        return s;
    }
    let longest = brief
        .deploys
        .iter()
        .filter_map(|d| d.error.as_ref())
        .map(|e| e.chars().count())
        .max()
        .unwrap_or(0);
    let mut b = brief.clone();
    loop {
        // the longest error length that fits, by bisection
        let (mut lo, mut hi) = (MIN_ERROR_CHARS.min(longest), longest);
        let cut = |n: usize| {
            let mut c = b.clone();
            for d in &mut c.deploys {
                d.error = d.error.as_deref().map(|e| shorten(e, n));
            }
            c
        };
        if fits(&cut(lo)).is_some() {
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if fits(&cut(mid)).is_some() {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            if let Some(s) = fits(&cut(lo)) {
                return s;
            }
        }
        // even short errors do not fit: leave out the oldest deploy
        if b.deploys.len() <= 1 {
            break;
        }
        let oldest = b
            .deploys
            .iter()
            .enumerate()
            .min_by(|(_, x), (_, y)| x.finished.cmp(&y.finished))
            .map(|(i, _)| i)
            .unwrap_or(0);
        b.deploys.remove(oldest);
        b.omitted += 1;
    }
    for d in &mut b.deploys {
        d.error = d.error.as_ref().map(|_| "…".to_string());
    }
    b.error = b.error.as_deref().map(|e| shorten(e, MIN_ERROR_CHARS));
    if let Some(s) = fits(&b) {
        return s;
    }
    b.omitted += b.deploys.len();
    b.deploys.clear();
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

/// Runs `stretcher status`; returns the exit status (SPEC §13).
pub fn main(_opts: &crate::cli::StatusOptions) -> i32 {
    3
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
            finished: Some(format!("2026-12-01T10:00:{i:02}.000Z")),
            failed_step: error.as_ref().map(|_| "pre".into()),
            error,
        }
    }

    #[test]
    fn small_answers_are_untouched() {
        let b = Brief {
            host: "web-1".into(),
            deploys: vec![deploy(1, Some("failed: false exit status 1".into()))],
            omitted: 0,
            error: None,
        };
        let s = brief_json(&b, BRIEF_LIMIT);
        assert_eq!(serde_json::from_str::<Brief>(&s).unwrap(), b);
        assert!(!s.contains("omitted"), "{s}");
    }

    #[test]
    fn long_errors_are_cut_to_fit() {
        let long = "x".repeat(900);
        let b = Brief {
            host: "web-1".into(),
            deploys: (0..4).map(|i| deploy(i, Some(long.clone()))).collect(),
            omitted: 0,
            error: None,
        };
        let s = brief_json(&b, BRIEF_LIMIT);
        assert!(s.len() <= BRIEF_LIMIT, "{}", s.len());
        let back: Brief = serde_json::from_str(&s).unwrap();
        assert_eq!(back.deploys.len(), 4);
        assert_eq!(back.omitted, 0);
        let e = back.deploys[0].error.as_deref().unwrap();
        assert!(
            e.ends_with('…') && e.chars().count() > MIN_ERROR_CHARS,
            "{e}"
        );
        // as long as fits: one more character each would not
        assert!(s.len() > BRIEF_LIMIT - 4 * 3, "{}", s.len());
    }

    #[test]
    fn many_dests_leave_the_oldest_out() {
        let b = Brief {
            host: "web-1".into(),
            deploys: (0..40)
                .map(|i| deploy(i, (i % 2 == 0).then(|| "e".repeat(200))))
                .collect(),
            omitted: 0,
            error: None,
        };
        let s = brief_json(&b, BRIEF_LIMIT);
        assert!(s.len() <= BRIEF_LIMIT, "{}", s.len());
        let back: Brief = serde_json::from_str(&s).unwrap();
        assert!(back.omitted > 0);
        assert_eq!(back.omitted + back.deploys.len(), 40);
        // the newest are kept
        assert!(back
            .deploys
            .iter()
            .any(|d| d.dest.as_deref() == Some("/srv/application-number-39")));
    }

    #[test]
    fn shorten_counts_characters() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
        assert_eq!(shorten("ééé", 2), "é…");
    }
}
