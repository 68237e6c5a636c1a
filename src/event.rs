//! stdin + environment → the `Event` that names the manifest to deploy (SPEC §2, §10).
//!
//! One job: decide who started us (a positional argument, `consul watch`, a Serf
//! user-event handler, or a plain line on stdin) and pull out the manifest URL and
//! the event identity that replay detection needs.
//!
//! It must never read the process environment directly (the caller passes a lookup
//! function), never read stdin when a positional argument was given, and never
//! fetch anything.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::rollout::{self, Wave};
use crate::state::Seen;
use crate::urls::has_scheme;
use crate::Env;

/// Who handed us the manifest URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The last event of a `consul watch -type event` list.
    Consul {
        /// The event's `Name`.
        name: String,
        /// The event's `ID`.
        id: String,
        /// The event's `LTime`, when it has one.
        ltime: Option<u64>,
    },
    /// A Serf user event (`SERF_EVENT=user`); `ltime` from `SERF_USER_LTIME`.
    Serf {
        /// The user event's name (`SERF_USER_EVENT`).
        name: String,
        /// `SERF_USER_LTIME`, when set.
        ltime: Option<u64>,
    },
    /// One line on stdin (`echo URL | stretcher`, ssh, cron).
    Line,
    /// The positional command-line argument.
    Arg,
}

/// A manifest URL and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The manifest URL (a local path is made a `file://` URL).
    pub url: String,
    /// Who handed the URL over.
    pub origin: Origin,
    /// A consul or serf event's payload, as delivered (decoded from base64 for
    /// consul, not trimmed): what orders two events of one LTime (SPEC §10).
    pub payload: Option<String>,
    /// The rollout wave a serf payload names (SPEC §19), `None` for a plain one.
    pub wave: Option<Wave>,
}

/// One element of the JSON list `consul watch -type event` writes on stdin.
#[derive(Debug, Deserialize)]
struct ConsulEvent {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Payload", default)]
    payload: Option<String>,
    #[serde(rename = "LTime", default)]
    ltime: Option<u64>,
}

/// Standard base64 alphabet, padding optional (Consul pads; be lenient anyway).
const PAYLOAD_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Reads the event. `positional`: the command-line target (wins; stdin is then not
/// read). `env`: an environment lookup, e.g. `|k| std::env::var(k).ok()`.
/// `stdin`: the whole standard input.
///
/// Order of recognition: a positional argument; `CONSUL_INDEX` set → Consul;
/// `SERF_EVENT` set → Serf (only `user` events are accepted); stdin whose first
/// non-blank byte is `[` → Consul; otherwise the first non-blank line.
pub fn read(positional: Option<&str>, env: Env, stdin: &mut dyn Read) -> Result<Event> {
    if let Some(arg) = positional {
        return Ok(Event {
            url: to_url(arg)?,
            origin: Origin::Arg,
            payload: None,
            wave: None,
        });
    }
    let whole = env("CONSUL_INDEX").is_some() || env("SERF_EVENT").is_some();
    let raw = read_input(stdin, whole).map_err(|e| Error::Event {
        msg: format!("cannot read stdin: {e}"),
        source: Some(e.into()),
    })?;
    let text =
        String::from_utf8(raw).map_err(|_| Error::event("stdin is not valid UTF-8".to_string()))?;

    if env("CONSUL_INDEX").is_some() {
        return consul(&text);
    }
    if let Some(kind) = env("SERF_EVENT") {
        return serf(&kind, &text, env);
    }
    if text.trim_start().starts_with('[') {
        return consul(&text);
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| {
            Error::event(
                "no manifest URL on stdin (give it as an argument, or pipe one line)".to_string(),
            )
        })?;
    Ok(Event {
        url: to_url(line)?,
        origin: Origin::Line,
        payload: None,
        wave: None,
    })
}

/// Reads stdin: all of it for an event handler or a JSON list (first non-blank
/// byte `[`); otherwise only up to the end of the first non-blank line, so a
/// person typing a URL into a terminal is not left waiting for end-of-file.
fn read_input(stdin: &mut dyn Read, whole: bool) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    if whole {
        stdin.read_to_end(&mut raw)?;
        return Ok(raw);
    }
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stdin.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        raw.extend_from_slice(&chunk[..n]);
        let Some(first) = raw.iter().position(|b| !b.is_ascii_whitespace()) else {
            continue;
        };
        if raw[first] == b'[' {
            stdin.read_to_end(&mut raw)?;
            return Ok(raw);
        }
        if raw[first..].contains(&b'\n') {
            return Ok(raw);
        }
    }
}

fn consul(text: &str) -> Result<Event> {
    if text.trim().is_empty() {
        return Err(Error::event(
            "consul: stdin is empty, expected a JSON list of events".to_string(),
        ));
    }
    let events: Vec<ConsulEvent> = serde_json::from_str(text).map_err(|e| Error::Event {
        msg: format!("consul: cannot parse the event list: {e}"),
        source: Some(e.into()),
    })?;
    let last = events.into_iter().last().ok_or(Error::NoConsulEvents)?;
    let payload = last.payload.ok_or_else(|| {
        Error::event(format!(
            "consul event {} (ID {}) has a null payload",
            last.name, last.id
        ))
    })?;
    let decoded = PAYLOAD_B64
        .decode(payload.trim())
        .map_err(|e| Error::Event {
            msg: format!(
                "consul event {} (ID {}): payload is not base64: {e}",
                last.name, last.id
            ),
            source: Some(e.into()),
        })?;
    let payload = String::from_utf8(decoded).map_err(|_| {
        Error::event(format!(
            "consul event {} (ID {}): payload is not UTF-8",
            last.name, last.id
        ))
    })?;
    let url = payload.trim();
    if url.is_empty() {
        return Err(Error::event(format!(
            "consul event {} (ID {}) has an empty payload",
            last.name, last.id
        )));
    }
    Ok(Event {
        url: to_url(url)?,
        origin: Origin::Consul {
            name: last.name,
            id: last.id,
            ltime: last.ltime,
        },
        payload: Some(payload),
        wave: None,
    })
}

fn serf(kind: &str, text: &str, env: Env) -> Result<Event> {
    if kind != "user" {
        return Err(Error::event(format!(
            "serf event {kind:?} is not a user event; register stretcher as \"user:NAME=stretcher\""
        )));
    }
    let name = env("SERF_USER_EVENT").unwrap_or_default();
    let ltime = match env("SERF_USER_LTIME") {
        None => None,
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
            Error::event(format!(
                "serf event {name}: SERF_USER_LTIME {v:?} is not a number"
            ))
        })?),
    };
    let payload = text.trim();
    if payload.is_empty() {
        return Err(Error::event(format!(
            "serf event {name} has an empty payload"
        )));
    }
    // A rollout wave (SPEC §19): the URL, then rollout=, upto= and canary= words.
    let (url, wave) = match rollout::parse_payload(payload) {
        Ok(Some((url, wave))) => (to_url(&url)?, Some(wave)),
        Ok(None) => (to_url(payload)?, None),
        Err(e) => {
            return Err(Error::Event {
                msg: format!("serf event {name}: {e}"),
                source: Some(e.into()),
            })
        }
    };
    Ok(Event {
        url,
        origin: Origin::Serf { name, ltime },
        payload: Some(text.to_string()),
        wave,
    })
}

/// The URL for a positional argument or a stdin line: text with a scheme
/// (`xxx://`) is kept as is; anything else is a local path and becomes `file://`
/// plus its absolute form (relative to the current directory; it need not exist).
pub fn to_url(text: &str) -> Result<String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::event("empty manifest URL".to_string()));
    }
    if has_scheme(text) {
        return Ok(text.to_string());
    }
    let path = Path::new(text);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|e| Error::Event {
            msg: format!("cannot resolve {text:?}: current directory: {e}"),
            source: Some(e.into()),
        })?;
        cwd.join(path)
    };
    // Drop `.` components and doubled slashes; keep `..` (the kernel resolves it,
    // and doing it lexically would be wrong across symlinks).
    let clean: PathBuf = absolute
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    let clean = clean.to_str().ok_or_else(|| {
        Error::event(format!(
            "cannot make a URL of {:?}: the path is not valid UTF-8",
            clean.display()
        ))
    })?;
    Ok(format!("file://{clean}"))
}

impl Event {
    /// The event name and identity that replay detection keys on (SPEC §2, §10),
    /// or `None` for a stdin line or a positional argument (never skipped).
    pub fn replay_key(&self) -> Option<(&str, Seen)> {
        match &self.origin {
            Origin::Consul { name, id, ltime } => Some((
                name,
                Seen::new(
                    Some(id.clone()).filter(|i| !i.is_empty()),
                    *ltime,
                    self.payload.as_deref(),
                ),
            )),
            Origin::Serf { name, ltime } => {
                Some((name, Seen::new(None, *ltime, self.payload.as_deref())))
            }
            Origin::Line | Origin::Arg => None,
        }
    }

    /// Who sent it, for the log: `consul event "deploy" (ID x, LTime 3)`.
    pub fn describe(&self) -> String {
        match (&self.origin, self.replay_key()) {
            (Origin::Consul { name, .. }, Some((_, seen))) => {
                format!("consul event {name:?} ({seen})")
            }
            (Origin::Serf { name, .. }, Some((_, seen))) => {
                format!("serf user event {name:?} ({seen})")
            }
            (Origin::Line, _) => "a line on stdin".to_string(),
            _ => "the command line".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CONSUL_TWO: &str = r#"
[
  {
    "LTime": 2,
    "Version": 1,
    "TagFilter": "",
    "ServiceFilter": "",
    "NodeFilter": "",
    "Payload": "czM6Ly9leGFtcGxlLmNvbS9wYXRoL3RvL3Rhci5neg==",
    "Name": "deploy",
    "ID": "1d6731a8-833c-1aff-94e5-aa5e5a77da9f"
  },
  {
    "LTime": 3,
    "Version": 1,
    "TagFilter": "",
    "ServiceFilter": "",
    "NodeFilter": "",
    "Payload": "czM6Ly9leGFtcGxlLmNvbS9wYXRoL3RvL2FwcC50YXIuZ3o=",
    "Name": "deploy",
    "ID": "b5ef1588-1bcd-d93f-5d9c-67cb6e8c4587"
  }
]
"#;

    fn read_with(positional: Option<&str>, vars: &[(&str, &str)], stdin: &str) -> Result<Event> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| map.get(k).cloned();
        read(positional, &env, &mut stdin.as_bytes())
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn cwd() -> String {
        std::env::current_dir()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn consul_go_cases() {
        // Go's TestParseConsulEvents1: the empty list the watch hands over at start.
        for vars in [&[][..], &[("CONSUL_INDEX", "7")]] {
            assert!(matches!(
                read_with(None, vars, "[]"),
                Err(Error::NoConsulEvents)
            ));
        }
        // Go's TestParseConsulEvents2: the last event wins.
        let ev = read_with(None, &[], CONSUL_TWO).unwrap();
        assert_eq!(ev.url, "s3://example.com/path/to/app.tar.gz");
        assert_eq!(
            ev.origin,
            Origin::Consul {
                name: "deploy".into(),
                id: "b5ef1588-1bcd-d93f-5d9c-67cb6e8c4587".into(),
                ltime: Some(3),
            }
        );
        let ev = read_with(None, &[("CONSUL_INDEX", "12")], CONSUL_TWO).unwrap();
        assert_eq!(ev.url, "s3://example.com/path/to/app.tar.gz");
    }

    #[test]
    fn consul_payload_edge_cases() {
        // Payload decoded, then trimmed.
        let input = format!(
            r#"[{{"ID":"x","Name":"d","LTime":9,"Payload":"{}"}}]"#,
            b64("  http://h/m.yml\n")
        );
        let ev = read_with(None, &[("CONSUL_INDEX", "1")], &input).unwrap();
        assert_eq!(ev.url, "http://h/m.yml");
        // Unpadded base64 is accepted too.
        let unpadded = b64("s3://b/k.yml").trim_end_matches('=').to_string();
        let input = format!(r#"[{{"ID":"x","Name":"d","LTime":1,"Payload":"{unpadded}"}}]"#);
        assert_eq!(read_with(None, &[], &input).unwrap().url, "s3://b/k.yml");
        // A local path in the payload becomes file://.
        let input = format!(
            r#"[{{"ID":"x","Name":"d","LTime":1,"Payload":"{}"}}]"#,
            b64("/srv/m.yml")
        );
        assert_eq!(
            read_with(None, &[], &input).unwrap().url,
            "file:///srv/m.yml"
        );

        type Vars<'a> = &'a [(&'a str, &'a str)];
        let errors: &[(Vars, &str, &str)] = &[
            (
                &[],
                r#"[{"ID":"x","Name":"d","LTime":1,"Payload":null}]"#,
                "null payload",
            ),
            (&[], r#"[{"ID":"x","Name":"d","LTime":1}]"#, "null payload"),
            (
                &[],
                r#"[{"ID":"x","Name":"d","LTime":1,"Payload":""}]"#,
                "empty payload",
            ),
            (
                &[],
                r#"[{"ID":"x","Name":"d","LTime":1,"Payload":"!!!"}]"#,
                "not base64",
            ),
            (&[], "[ not json", "cannot parse"),
            (&[("CONSUL_INDEX", "1")], "", "stdin is empty"),
            (&[("CONSUL_INDEX", "1")], "s3://b/m.yml\n", "cannot parse"),
        ];
        for (vars, input, want) in errors {
            let e = read_with(None, vars, input).expect_err(input);
            assert!(matches!(e, Error::Event { .. }), "{input}: {e:?}");
            assert!(e.to_string().contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn serf() {
        let vars = [
            ("SERF_EVENT", "user"),
            ("SERF_USER_EVENT", "deploy"),
            ("SERF_USER_LTIME", "42"),
        ];
        let ev = read_with(None, &vars, "s3://b/m.yml").unwrap();
        assert_eq!(ev.url, "s3://b/m.yml");
        assert_eq!(
            ev.origin,
            Origin::Serf {
                name: "deploy".into(),
                ltime: Some(42)
            }
        );
        // Trimmed; no SERF_USER_LTIME, no LTime.
        let ev = read_with(None, &[("SERF_EVENT", "user")], "  http://h/m.yml \n").unwrap();
        assert_eq!(ev.url, "http://h/m.yml");
        assert_eq!(
            ev.origin,
            Origin::Serf {
                name: String::new(),
                ltime: None
            }
        );
        for (vars, input, want) in [
            (&[("SERF_EVENT", "user")][..], "  \n", "empty payload"),
            (
                &[("SERF_EVENT", "user"), ("SERF_USER_LTIME", "x")],
                "s3://b/m",
                "not a number",
            ),
            (
                &[("SERF_EVENT", "member-join")],
                "node1 10.0.0.1\n",
                "not a user event",
            ),
        ] {
            let e = read_with(None, vars, input).expect_err(input);
            assert!(e.to_string().contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn payloads_and_waves() {
        let vars = [("SERF_EVENT", "user"), ("SERF_USER_EVENT", "deploy")];
        // the payload is kept as delivered, for the same-LTime order
        let ev = read_with(None, &vars, " s3://b/m.yml\n").unwrap();
        assert_eq!(ev.payload.as_deref(), Some(" s3://b/m.yml\n"));
        assert_eq!(ev.wave, None);
        let rank = crate::rollout::rank("0123456789abcdef", "n1", false);
        let text = format!("s3://b/m.yml rollout=0123456789abcdef upto={rank} canary=role=c");
        let ev = read_with(None, &vars, &text).unwrap();
        assert_eq!(ev.url, "s3://b/m.yml");
        let wave = ev.wave.unwrap();
        assert_eq!(
            (wave.rollout.as_str(), wave.upto.as_str()),
            ("0123456789abcdef", rank.as_str())
        );
        assert_eq!(wave.canary.unwrap().key, "role");
        // a local path in a wave is a file:// URL like any payload
        let ev = read_with(
            None,
            &vars,
            &format!("/srv/m.yml rollout=0123456789abcdef upto={rank}"),
        )
        .unwrap();
        assert_eq!(ev.url, "file:///srv/m.yml");
        // a malformed wave is an event error, never a plain deploy
        for bad in [
            format!("s3://b/m.yml rollout=0123456789abcdef upto={}", &rank[1..]),
            format!("s3://b/m.yml rollout=0123456789abcdef upto={rank} now"),
            "s3://b/m.yml upto=1".to_string(),
        ] {
            let e = read_with(None, &vars, &bad).expect_err(&bad);
            assert!(matches!(e, Error::Event { .. }), "{e:?}");
            assert!(
                e.to_string()
                    .starts_with("event: serf event deploy: rollout payload: "),
                "{e}"
            );
        }
        // only serf payloads are waves: a line or a consul payload is as before
        let ev = read_with(None, &[], &format!("{text}\n")).unwrap();
        assert_eq!((ev.url.as_str(), ev.wave), (text.as_str(), None));
        let json = format!(
            r#"[{{"ID":"x","Name":"d","LTime":1,"Payload":"{}"}}]"#,
            b64(&text)
        );
        let ev = read_with(None, &[], &json).unwrap();
        assert_eq!(
            (ev.payload.as_deref(), ev.wave),
            (Some(text.as_str()), None)
        );
    }

    #[test]
    fn line() {
        let cases: &[(&str, String)] = &[
            ("s3://b/m.yml\n", "s3://b/m.yml".into()),
            ("s3://b/m.yml", "s3://b/m.yml".into()),
            (
                "\n\n  https://h/m.yml  \nignored\n",
                "https://h/m.yml".into(),
            ),
            ("/srv/m.yml\n", "file:///srv/m.yml".into()),
            ("m.yml\n", format!("file://{}/m.yml", cwd())),
        ];
        for (input, want) in cases {
            let ev = read_with(None, &[], input).unwrap();
            assert_eq!(&ev.url, want, "{input:?}");
            assert_eq!(ev.origin, Origin::Line);
        }
        for input in ["", " \n\t\n"] {
            let e = read_with(None, &[], input).expect_err(input);
            assert!(e.to_string().contains("no manifest URL on stdin"), "{e}");
        }
    }

    /// Hands out its chunks one `read` at a time; once they are gone it returns
    /// end-of-file, or panics when `eof` is false (reading past the first line
    /// would hang on a terminal).
    struct Chunks {
        chunks: Vec<Vec<u8>>,
        eof: bool,
    }
    impl Chunks {
        fn new(chunks: &[&str], eof: bool) -> Self {
            let chunks = chunks.iter().map(|c| c.as_bytes().to_vec()).collect();
            Chunks { chunks, eof }
        }
    }
    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.chunks.is_empty() {
                assert!(self.eof, "read past the first non-blank line");
                return Ok(0);
            }
            let c = &mut self.chunks[0];
            let n = c.len().min(buf.len());
            buf[..n].copy_from_slice(&c[..n]);
            c.drain(..n);
            if c.is_empty() {
                self.chunks.remove(0);
            }
            Ok(n)
        }
    }

    #[test]
    fn line_mode_stops_after_the_first_line() {
        let env = |_: &str| None;
        let mut input = Chunks::new(&["\n  ", "s3://b/", "m.yml\n"], false);
        let ev = read(None, &env, &mut input).unwrap();
        assert_eq!(ev.url, "s3://b/m.yml");
        // A JSON list is read to its end, across reads.
        let (a, b) = CONSUL_TWO.split_at(100);
        let ev = read(None, &env, &mut Chunks::new(&[a, b], true)).unwrap();
        assert_eq!(ev.url, "s3://example.com/path/to/app.tar.gz");
        // Under an event handler everything is read (serf: no trailing newline).
        let env = |k: &str| (k == "SERF_EVENT").then(|| "user".to_string());
        let ev = read(None, &env, &mut Chunks::new(&["s3://b/", "n.yml"], true)).unwrap();
        assert_eq!(ev.url, "s3://b/n.yml");
    }

    #[test]
    fn positional_wins_and_stdin_is_not_read() {
        struct Boom;
        impl Read for Boom {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                panic!("stdin must not be read when a positional argument is given")
            }
        }
        let env = |k: &str| (k == "CONSUL_INDEX").then(|| "1".to_string());
        let ev = read(Some("s3://b/m.yml"), &env, &mut Boom).unwrap();
        assert_eq!(
            ev,
            Event {
                url: "s3://b/m.yml".into(),
                origin: Origin::Arg,
                payload: None,
                wave: None,
            }
        );
    }

    #[test]
    fn to_url_table() {
        let cwd = cwd();
        let cases: &[(&str, String)] = &[
            ("file:///a/b.yml", "file:///a/b.yml".into()),
            ("http://h/m.yml", "http://h/m.yml".into()),
            ("https://h/m.yml?x=1", "https://h/m.yml?x=1".into()),
            ("s3://bucket/key.yml", "s3://bucket/key.yml".into()),
            ("gs://bucket/key.yml", "gs://bucket/key.yml".into()),
            ("/abs/m.yml", "file:///abs/m.yml".into()),
            ("//abs//./m.yml", "file:///abs/m.yml".into()),
            ("m.yml", format!("file://{cwd}/m.yml")),
            ("./dir/m.yml", format!("file://{cwd}/dir/m.yml")),
            ("../m.yml", format!("file://{cwd}/../m.yml")),
            ("my dir/m 1.yml", format!("file://{cwd}/my dir/m 1.yml")),
            ("1http://x", format!("file://{cwd}/1http:/x")),
        ];
        for (input, want) in cases {
            assert_eq!(&to_url(input).unwrap(), want, "{input:?}");
        }
        assert!(to_url("  ").is_err());
    }

    #[test]
    fn replay_keys() {
        let ev = read_with(None, &[], CONSUL_TWO).unwrap();
        let (name, seen) = ev.replay_key().unwrap();
        assert_eq!(name, "deploy");
        assert_eq!(
            seen.id.as_deref(),
            Some("b5ef1588-1bcd-d93f-5d9c-67cb6e8c4587")
        );
        assert_eq!(seen.ltime, Some(3));
        assert!(ev.describe().contains("LTime 3"), "{}", ev.describe());
        // an empty ID or a missing LTime is "not given"
        let input = format!(
            r#"[{{"ID":"","Name":"d","Payload":"{}"}}]"#,
            b64("s3://b/k")
        );
        let (_, seen) = read_with(None, &[], &input)
            .unwrap()
            .replay_key()
            .unwrap()
            .clone();
        assert_eq!(seen, Seen::new(None, None, Some("s3://b/k")));
        let ev = read_with(
            None,
            &[
                ("SERF_EVENT", "user"),
                ("SERF_USER_EVENT", "deploy"),
                ("SERF_USER_LTIME", "0"),
            ],
            "s3://b/k",
        )
        .unwrap();
        let (name, seen) = ev.replay_key().unwrap();
        assert_eq!((name, seen.id, seen.ltime), ("deploy", None, Some(0)));
        // lines and positionals are never replays
        assert!(read_with(None, &[], "s3://b/k\n")
            .unwrap()
            .replay_key()
            .is_none());
        assert!(read_with(Some("s3://b/k"), &[], "")
            .unwrap()
            .replay_key()
            .is_none());
    }
}
