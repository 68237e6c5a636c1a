//! Fuzzes the manifest parser: template expansion, YAML, validation (SPEC §4).
//!
//! Input: the manifest text (invalid UTF-8 is replaced, as a fetched manifest that is
//! not UTF-8 never reaches the parser). The environment is a fixed table so that
//! `{{ env }}` / `{{ must_env }}` take both their set and unset paths, including
//! values that are themselves YAML syntax. Must never panic; errors must format.
//!
//! Signatures (SPEC §15): when the input holds a `0xFF` byte (never part of UTF-8
//! text), the bytes before the first one are the raw manifest and the bytes after
//! it a `.minisig` file, checked with `signature::verify` against one fixed trusted
//! key (and against none). It must never panic, never accept with no key, and never
//! accept anything but the one message that key really signed (`KNOWN_MESSAGE`,
//! prehashed or legacy; the seeds hold both signatures): an accepted signature over
//! any other bytes is a forgery. An accepted manifest then goes to the parser, as
//! in a deploy.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    let v = match name {
        "A" => "alpha",
        "EMPTY" => "",
        "SRC" => "http://h/app.tgz",
        "DEST" => "/srv/app",
        "Q" => "x\"y",
        "YAML" => "a\n b: [c, {d: e}]\n- f: 'g",
        "BRACES" => "{{ env \"A\" }}",
        "NL" => "\n\n",
        _ => return None,
    };
    Some(v.to_string())
}

/// The fuzz key (made with `minisign -G -W`; its secret key is not kept).
const TRUSTED_KEY: &str = "RWTKOxCE232ibYYNKLgoV4BFn7DsbRQOS0xOHQ1xToilceH+JfW+u9z6";
/// The only bytes that key signed (seeds `seed-signed-*`).
const KNOWN_MESSAGE: &[u8] = b"src: x\n";

fn check_signature(message: &[u8], sig: &[u8]) {
    use stretcher::signature::{verify, TrustedKey};
    static KEYS: std::sync::OnceLock<Vec<TrustedKey>> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| vec![TrustedKey::parse(TRUSTED_KEY).unwrap()]);
    assert!(verify(message, sig, &[]).is_err(), "accepted with no trusted key");
    match verify(message, sig, keys) {
        Ok(good) => {
            assert_eq!(message, KNOWN_MESSAGE, "accepted a signature over other bytes");
            let _ = format!("{good:?}");
            if let Ok(text) = std::str::from_utf8(message) {
                let _ = stretcher::manifest::parse(text, "file:///srv/m.yml", &env);
            }
        }
        Err(refusal) => {
            let _ = refusal.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let data = match data.iter().position(|&b| b == 0xff) {
        Some(i) => {
            check_signature(&data[..i], &data[i + 1..]);
            &data[..i]
        }
        None => data,
    };
    let text = String::from_utf8_lossy(data);
    for url in ["s3://bucket/path/manifest.yml", "file:///srv/m.yml", "http://h/"] {
        match stretcher::manifest::parse(&text, url, &env) {
            Ok(m) => {
                let _ = format!("{m:?}");
                // What deploy does next with a manifest: build its filter.
                let _ = stretcher::filter::Filter::new(None, &m.excludes);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let _ = stretcher::manifest::expand_templates(&text, &env);
    let _ = stretcher::manifest::expand_templates(&text, &|_| None);
    stretcher::log::reset();
});
