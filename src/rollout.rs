//! Rollouts in waves (SPEC §19): the ranks, and the wave's event payload, shared by
//! the host side (a deploy handed a wave) and `stretcher rollout` (which fires them).
//!
//! # API
//!
//! - [`rollout_id`]`(manifest_bytes) -> String`: `ROLLOUT_ID`, the first 16 lower-case
//!   hex digits of the sha256 of the manifest's raw bytes.
//! - [`rank`]`(rollout_id, node, is_canary) -> String`: a host's 65-character rank,
//!   `0` (canary) or `1`, then the 64 lower-case hex digits of
//!   sha256(`rollout_id` + `node`). Ranks compare as strings: canaries first.
//! - [`Wave`] `{ rollout, upto, canary }`: what a wave's payload carries beyond the
//!   URL; [`Wave::includes`]`(rank)` is `rank <= upto`; [`Wave::rank_here`]`(env)`
//!   is this host's rank from `SERF_SELF_NAME` and its `SERF_TAG_*` variables.
//! - [`Canary`] `{ key, value }`: `--canary-tag KEY=VALUE` ([`Canary::parse`]);
//!   [`Canary::env_var`] is the variable Serf gives a handler for that tag
//!   (`SERF_TAG_` + the name upper-cased, every character outside `[A-Z0-9_]` made
//!   `_`, as Serf's agent names it), [`Canary::matches_env`] compares its value.
//! - [`parse_payload`]`(text) -> Result<Option<(url, Wave)>, PayloadError>`: `None`
//!   for a plain payload (no word after the first starts with `rollout=`, `upto=` or
//!   `canary=`), else the URL (the first word) and the wave, every word checked.
//! - [`format_payload`]`(url, &wave) -> Result<String, PayloadError>`: the payload
//!   `URL rollout=ID upto=RANK [canary=KEY=VALUE]`, which [`parse_payload`] reads
//!   back to the same URL and wave.
//!
//! Pure: no I/O, no logging; the environment only through the [`Env`] handed in.
//! What a payload claims only narrows what a host does (skip when not in the wave,
//! or done in the same rollout); the node name and tags are the host's own.

use sha2::{Digest, Sha256};

use crate::Env;

/// The length of a rank: the canary digit and 64 hex digits.
pub const RANK_LEN: usize = 65;
/// The length of a rollout id: 16 hex digits.
pub const ROLLOUT_ID_LEN: usize = 16;

/// A wave payload that cannot be read (or a wave that cannot be written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload has rollout words but no URL before them.
    #[error("rollout payload: no manifest URL before {0:?}")]
    NoUrl(String),
    /// A word that is not `rollout=`, `upto=` or `canary=`.
    #[error(
        "rollout payload: unknown word {0:?} (expected rollout=ID upto=RANK [canary=KEY=VALUE])"
    )]
    Unknown(String),
    /// A key given twice.
    #[error("rollout payload: {0}= is given twice")]
    Twice(&'static str),
    /// A key that must be there is not.
    #[error("rollout payload: {0}= is missing")]
    Missing(&'static str),
    /// `rollout=` is not 16 lower-case hex digits.
    #[error("rollout payload: rollout={0:?} is not 16 lower-case hex digits")]
    BadId(String),
    /// `upto=` is not a 65-character rank.
    #[error("rollout payload: upto={0:?} is not a rank (0 or 1, then 64 lower-case hex digits)")]
    BadRank(String),
    /// `canary=` is not `KEY=VALUE` of printable ASCII.
    #[error("rollout payload: canary={0:?} is not KEY=VALUE (printable ASCII, no space)")]
    BadCanary(String),
    /// A URL that cannot be the first word of a payload.
    #[error("rollout payload: the manifest URL {0:?} is empty or holds white space")]
    BadUrl(String),
}

/// `ROLLOUT_ID`: the first 16 lower-case hex digits of the sha256 of the manifest's
/// raw bytes.
pub fn rollout_id(manifest: &[u8]) -> String {
    let mut hex = hex::encode(Sha256::digest(manifest));
    hex.truncate(ROLLOUT_ID_LEN);
    hex
}

/// A host's rank in a rollout: `0` for a canary, else `1`, followed by the 64
/// lower-case hex digits of sha256(`rollout_id` + `node`).
pub fn rank(rollout_id: &str, node: &str, is_canary: bool) -> String {
    let mut h = Sha256::new();
    h.update(rollout_id.as_bytes());
    h.update(node.as_bytes());
    let mut out = String::with_capacity(RANK_LEN);
    out.push(if is_canary { '0' } else { '1' });
    out.push_str(&hex::encode(h.finalize()));
    out
}

/// The canary tag of a rollout (`--canary-tag KEY=VALUE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    /// The Serf tag's name.
    pub key: String,
    /// The value a canary has for it.
    pub value: String,
}

impl Canary {
    /// Reads `KEY=VALUE`: both non-empty, printable ASCII without spaces (the key
    /// without `=`; the value may hold one).
    pub fn parse(text: &str) -> Result<Canary, PayloadError> {
        let bad = || PayloadError::BadCanary(text.to_string());
        let (key, value) = text.split_once('=').ok_or_else(bad)?;
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !printable(key) || !printable(value) {
            return Err(bad());
        }
        Ok(Canary {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// The variable Serf sets for this tag in a handler's environment: `SERF_TAG_`
    /// and the name upper-cased, every character outside `[A-Z0-9_]` made `_`.
    pub fn env_var(&self) -> String {
        let name: String = self
            .key
            .chars()
            .map(|c| match c.to_ascii_uppercase() {
                u @ ('A'..='Z' | '0'..='9' | '_') => u,
                _ => '_',
            })
            .collect();
        format!("SERF_TAG_{name}")
    }

    /// Whether this host has the tag with the canary's value (by its variable).
    pub fn matches_env(&self, env: Env) -> bool {
        env(&self.env_var()).is_some_and(|v| v == self.value)
    }
}

/// What a wave's payload carries beyond the manifest URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// `ROLLOUT_ID` (16 lower-case hex digits).
    pub rollout: String,
    /// The rank of the wave's last host: hosts ranked at most this are in it.
    pub upto: String,
    /// Hosts with this tag rank first.
    pub canary: Option<Canary>,
}

impl Wave {
    /// Whether a host of rank `rank` is in this wave (`rank <= upto`, as strings).
    pub fn includes(&self, rank: &str) -> bool {
        rank <= self.upto.as_str()
    }

    /// This host's node name (`SERF_SELF_NAME`) and rank in the wave's rollout, or
    /// `None` when the variable is unset or empty (not run by a Serf agent).
    pub fn rank_here(&self, env: Env) -> Option<(String, String)> {
        let node = env("SERF_SELF_NAME").filter(|n| !n.is_empty())?;
        let canary = self.canary.as_ref().is_some_and(|c| c.matches_env(env));
        let rank = rank(&self.rollout, &node, canary);
        Some((node, rank))
    }
}

/// The keys a wave payload's words start with.
const KEYS: [&str; 3] = ["rollout=", "upto=", "canary="];

/// Reads an event payload: `None` when it is a plain one (no word after the first
/// starts with `rollout=`, `upto=` or `canary=`; it is then used as before), else
/// the URL (the first word) and the wave, every word checked: exactly one
/// `rollout=` and one `upto=`, at most one `canary=`, nothing else.
pub fn parse_payload(text: &str) -> Result<Option<(String, Wave)>, PayloadError> {
    let mut words = text.split_ascii_whitespace();
    let Some(url) = words.next() else {
        return Ok(None);
    };
    let rest: Vec<&str> = words.collect();
    let is_key = |w: &str| KEYS.iter().any(|k| w.starts_with(k));
    if !rest.iter().any(|w| is_key(w)) {
        if is_key(url) {
            return Err(PayloadError::NoUrl(url.to_string()));
        }
        return Ok(None);
    }
    if is_key(url) {
        return Err(PayloadError::NoUrl(url.to_string()));
    }
    let (mut rollout, mut upto, mut canary) = (None, None, None);
    for word in rest {
        let (slot, value, key): (&mut Option<&str>, &str, &'static str) =
            if let Some(v) = word.strip_prefix("rollout=") {
                (&mut rollout, v, "rollout")
            } else if let Some(v) = word.strip_prefix("upto=") {
                (&mut upto, v, "upto")
            } else if let Some(v) = word.strip_prefix("canary=") {
                (&mut canary, v, "canary")
            } else {
                return Err(PayloadError::Unknown(word.to_string()));
            };
        if slot.replace(value).is_some() {
            return Err(PayloadError::Twice(key));
        }
    }
    let rollout = rollout.ok_or(PayloadError::Missing("rollout"))?;
    let upto = upto.ok_or(PayloadError::Missing("upto"))?;
    let wave = Wave {
        rollout: rollout.to_string(),
        upto: upto.to_string(),
        canary: canary.map(Canary::parse).transpose()?,
    };
    check(&wave)?;
    Ok(Some((url.to_string(), wave)))
}

/// The payload of a wave: `URL rollout=ID upto=RANK [canary=KEY=VALUE]`.
pub fn format_payload(url: &str, wave: &Wave) -> Result<String, PayloadError> {
    if url.is_empty() || url.chars().any(char::is_whitespace) {
        return Err(PayloadError::BadUrl(url.to_string()));
    }
    check(wave)?;
    let mut out = format!("{url} rollout={} upto={}", wave.rollout, wave.upto);
    if let Some(c) = &wave.canary {
        Canary::parse(&format!("{}={}", c.key, c.value))?;
        out.push_str(&format!(" canary={}={}", c.key, c.value));
    }
    Ok(out)
}

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The rollout id's and the rank's form.
fn check(wave: &Wave) -> Result<(), PayloadError> {
    let id = &wave.rollout;
    if id.len() != ROLLOUT_ID_LEN || !lower_hex(id) {
        return Err(PayloadError::BadId(id.clone()));
    }
    let r = &wave.upto;
    let ok = r.len() == RANK_LEN && matches!(r.as_bytes()[0], b'0' | b'1') && lower_hex(&r[1..]);
    if !ok {
        return Err(PayloadError::BadRank(r.clone()));
    }
    Ok(())
}

/// `--wave-timeout`'s default.
pub const DEFAULT_WAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A wave's size or the `--max-failed` limit: a count, or a percentage of the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// So many hosts.
    Count(usize),
    /// So many percent of the hosts (0 to 100).
    Percent(u32),
}

impl Size {
    /// A wave's size: a count ≥ 1 or a percentage in 1..=100 (`10%`).
    pub fn parse(text: &str) -> std::result::Result<Size, String> {
        match Size::parse_limit(text)? {
            Size::Count(0) | Size::Percent(0) => Err("a wave must have at least one host".into()),
            s => Ok(s),
        }
    }

    /// `--max-failed`: a count ≥ 0 or a percentage in 0..=100.
    pub fn parse_limit(text: &str) -> std::result::Result<Size, String> {
        let t = text.trim();
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if let Some(p) = t.strip_suffix('%') {
            let p = p.trim_end();
            return match p.parse::<u32>() {
                Ok(n) if digits(p) && n <= 100 => Ok(Size::Percent(n)),
                _ => Err("expected a count (5) or a percentage from 0% to 100% (10%)".into()),
            };
        }
        match t.parse::<usize>() {
            Ok(n) if digits(t) => Ok(Size::Count(n)),
            _ => Err("expected a count (5) or a percentage (10%)".into()),
        }
    }

    /// A wave of `total` hosts: the count (at most `total`), or the percentage
    /// rounded up; at least 1 when there is a host.
    pub fn hosts_of(self, total: usize) -> usize {
        let n = match self {
            Size::Count(n) => n,
            Size::Percent(p) => (total * p as usize).div_ceil(100),
        };
        n.clamp(total.min(1), total)
    }

    /// A limit over `total` hosts: the count, or the percentage rounded down.
    pub fn limit_of(self, total: usize) -> usize {
        match self {
            Size::Count(n) => n,
            Size::Percent(p) => total * p as usize / 100,
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Count(n) => write!(f, "{n}"),
            Size::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// `--waves LIST`: comma-separated sizes (`1,10%,50%,100%`).
pub fn parse_waves(text: &str) -> std::result::Result<Vec<Size>, String> {
    let sizes: Vec<Size> = text
        .split(',')
        .map(|w| Size::parse(w).map_err(|m| format!("wave {:?}: {m}", w.trim())))
        .collect::<std::result::Result<_, _>>()?;
    if sizes.is_empty() {
        return Err("expected at least one wave".into());
    }
    Ok(sizes)
}

/// The default waves: `1,10%,50%,100%`.
pub fn default_waves() -> Vec<Size> {
    vec![
        Size::Count(1),
        Size::Percent(10),
        Size::Percent(50),
        Size::Percent(100),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef";

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn ids_and_ranks() {
        // sha256("") = e3b0c442 98fc1c14 ...
        assert_eq!(rollout_id(b""), "e3b0c44298fc1c14");
        // sha256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 b00361a3 96177a9c b410ff61 f20015ad
        let r = rank("a", "bc", false);
        assert_eq!(
            r,
            "1ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(r.len(), RANK_LEN);
        let c = rank("a", "bc", true);
        assert_eq!(&c[1..], &r[1..]);
        assert!(c.starts_with('0') && c < r, "canaries first");
        // every canary before every other host
        let hosts: Vec<String> = (0..50).map(|i| format!("node{i}")).collect();
        let worst_canary = hosts.iter().map(|h| rank(ID, h, true)).max().unwrap();
        let best_other = hosts.iter().map(|h| rank(ID, h, false)).min().unwrap();
        assert!(worst_canary < best_other);
    }

    #[test]
    fn payloads_round_trip() {
        let upto = rank(ID, "web-3", false);
        let plain = Wave {
            rollout: ID.into(),
            upto: upto.clone(),
            canary: None,
        };
        let with = Wave {
            canary: Some(Canary::parse("role=canary").unwrap()),
            ..plain.clone()
        };
        for wave in [plain, with] {
            let text = format_payload("https://h/m.yml?x=1", &wave).unwrap();
            assert!(text.len() < 512, "{text}");
            let (url, back) = parse_payload(&text).unwrap().unwrap();
            assert_eq!((url.as_str(), &back), ("https://h/m.yml?x=1", &wave));
            // order of the words and white space do not matter
            let words: Vec<&str> = text.split(' ').collect();
            let mut shuffled = vec![words[0]];
            shuffled.extend(words[1..].iter().rev());
            let again = format!("  {}\n", shuffled.join(" \t "));
            assert_eq!(parse_payload(&again).unwrap().unwrap().1, wave);
        }
        assert_eq!(
            format_payload(
                "a b",
                &parse_payload(&format!("u rollout={ID} upto={upto}"))
                    .unwrap()
                    .unwrap()
                    .1
            ),
            Err(PayloadError::BadUrl("a b".into()))
        );
    }

    #[test]
    fn plain_payloads_stay_plain() {
        for text in [
            "",
            "  ",
            "s3://b/m.yml",
            "http://h/m.yml\n",
            "/srv/my dir/m 1.yml",
            "/srv/x rollout.yml",
            "/srv/a uptoX=1",
        ] {
            assert_eq!(parse_payload(text), Ok(None), "{text:?}");
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let r = rank(ID, "n", false);
        let cases: &[(String, PayloadError)] = &[
            (
                format!("rollout={ID} upto={r}"),
                PayloadError::NoUrl(format!("rollout={ID}")),
            ),
            (format!("u upto={r}"), PayloadError::Missing("rollout")),
            (format!("u rollout={ID}"), PayloadError::Missing("upto")),
            (
                format!("u rollout={ID} upto={r} extra"),
                PayloadError::Unknown("extra".into()),
            ),
            (
                format!("u rollout={ID} upto={r} upto={r}"),
                PayloadError::Twice("upto"),
            ),
            (
                format!("u rollout={} upto={r}", &ID[..15]),
                PayloadError::BadId(ID[..15].into()),
            ),
            (
                format!("u rollout=0123456789ABCDEF upto={r}"),
                PayloadError::BadId("0123456789ABCDEF".into()),
            ),
            (
                format!("u rollout={ID} upto={}", &r[..64]),
                PayloadError::BadRank(r[..64].into()),
            ),
            (
                format!("u rollout={ID} upto={r}0"),
                PayloadError::BadRank(format!("{r}0")),
            ),
            (
                format!("u rollout={ID} upto=2{}", &r[1..]),
                PayloadError::BadRank(format!("2{}", &r[1..])),
            ),
            (
                format!("u rollout={ID} upto=1{}g", &r[1..64]),
                PayloadError::BadRank(format!("1{}g", &r[1..64])),
            ),
            (
                format!("u rollout={ID} upto={r} canary=role"),
                PayloadError::BadCanary("role".into()),
            ),
            (
                format!("u rollout={ID} upto={r} canary==x"),
                PayloadError::BadCanary("=x".into()),
            ),
            (
                format!("u rollout={ID} upto={r} canary=k=\u{7f}"),
                PayloadError::BadCanary("k=\u{7f}".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_payload(text).as_ref(), Err(want), "{text:?}");
            assert!(want.to_string().starts_with("rollout payload: "));
        }
    }

    #[test]
    fn the_wave_and_the_host() {
        let wave = Wave {
            rollout: ID.into(),
            upto: rank(ID, "b", false),
            canary: Some(Canary::parse("my-role.x=canary").unwrap()),
        };
        assert_eq!(
            wave.canary.as_ref().unwrap().env_var(),
            "SERF_TAG_MY_ROLE_X"
        );
        assert!(wave.includes(&wave.upto));
        assert!(wave.includes(&rank(ID, "a", true)));
        assert!(!wave.includes(&format!("{}0", wave.upto)));
        // the node name and the tag come from the environment Serf gives a handler
        assert_eq!(wave.rank_here(&env_of(&[])), None);
        assert_eq!(wave.rank_here(&env_of(&[("SERF_SELF_NAME", "")])), None);
        let plain = env_of(&[("SERF_SELF_NAME", "b")]);
        assert_eq!(
            wave.rank_here(&plain),
            Some(("b".into(), rank(ID, "b", false)))
        );
        let canary = env_of(&[("SERF_SELF_NAME", "b"), ("SERF_TAG_MY_ROLE_X", "canary")]);
        assert_eq!(
            wave.rank_here(&canary),
            Some(("b".into(), rank(ID, "b", true)))
        );
        let other = env_of(&[("SERF_SELF_NAME", "b"), ("SERF_TAG_MY_ROLE_X", "web")]);
        assert_eq!(wave.rank_here(&other).unwrap().1, rank(ID, "b", false));
    }
}
