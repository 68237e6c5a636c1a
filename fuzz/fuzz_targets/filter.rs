//! Fuzzes the rsync exclude / include rules (`excludes`, `exclude_from`; SPEC §4, §6):
//! `Filter::new` on any rule text, then `is_excluded` on any path bytes.
//!
//! Input, split at the first two 0xFF bytes (0xFF is never in UTF-8 text):
//!   part 0   the exclude_from file's contents (lossy UTF-8); absent when empty
//!   part 1   `excludes` patterns, one per NUL-separated piece (lossy UTF-8)
//!   part 2   paths to test, NUL-separated (raw bytes, so non-UTF-8 names, 0xFF
//!            included), each tried as a file and as a directory
//! Must never panic. A trailing `!` clears all rules. The transfer root (empty path, or "/") is never excluded.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stretcher::filter::Filter;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let from = parts.next().unwrap_or_default();
    let from = (!from.is_empty()).then(|| String::from_utf8_lossy(from).into_owned());
    let excludes: Vec<String> = match parts.next() {
        Some(p) if !p.is_empty() => p
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        _ => Vec::new(),
    };
    let filter = match Filter::new(from.as_deref(), &excludes) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // A lone `!` clears every rule given before it.
    let mut cleared = excludes.clone();
    cleared.push("!".to_string());
    let cleared = Filter::new(from.as_deref(), &cleared).expect("`!` after valid rules");
    assert!(cleared.is_empty(), "rules survive `!`: {cleared:?}");
    for root in ["", "/"] {
        assert!(!filter.is_excluded(Path::new(root), true), "root {root:?} excluded");
    }
    let paths = parts.next().unwrap_or_default();
    for raw in paths.split(|&b| b == 0).take(64) {
        let path = Path::new(OsStr::from_bytes(raw));
        let _ = filter.is_excluded(path, false);
        let _ = filter.is_excluded(path, true);
    }
    stretcher::log::reset();
});
