//! Fuzzes the manifest parser: template expansion, YAML, validation (SPEC §4).
//!
//! Input: the manifest text (invalid UTF-8 is replaced, as a fetched manifest that is
//! not UTF-8 never reaches the parser). The environment is a fixed table so that
//! `{{ env }}` / `{{ must_env }}` take both their set and unset paths, including
//! values that are themselves YAML syntax. Must never panic; errors must format.
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

fuzz_target!(|data: &[u8]| {
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
