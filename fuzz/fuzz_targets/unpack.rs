//! Fuzzes the unpacker (SPEC §7, §10): whatever the archive bytes, nothing is created,
//! changed or linked outside the staging directory, and nothing panics.
//!
//! Input: a tar, tar.gz, tar.zst, tar.xz or tar.bz2 stream, exactly as `unpack` sniffs
//! it. For a plain tar (no gzip / zstd / xz / bzip2 magic), the header checksums are
//! recomputed first, walking the headers as tar does, so that mutated header fields
//! (names, types, link targets, sizes) reach the extractor instead of all failing the checksum test; the checksum
//! check itself is covered by unit tests.
//!
//! Layout per run, under a fresh temp dir `outer/`:
//!   outer/stage/    the `into` directory (empty, as deploy gives it)
//!   outer/outside/  a sentinel directory: must stay empty
//!   outer/victim    a sentinel file: content, mode and link count must not change
//!   /tmp/stretcher-fuzz-outside/  a fixed absolute sentinel directory (absolute
//!                   symlink targets in the seeds point at it): must stay empty
//! Afterwards every path below `outer` must be one of those or below `outer/stage`.
//!
//! Files are capped at 16 MiB by RLIMIT_FSIZE (SIGXFSZ ignored, so a write beyond it
//! fails with EFBIG and unpack reports an error): a few bytes of zstd can declare a
//! gigabyte entry, which is the size guard's business, not this target's.
#![no_main]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use stretcher::unpack::{unpack, UnpackOptions};

const ABS_SENTINEL: &str = "/tmp/stretcher-fuzz-outside";
const VICTIM: &[u8] = b"sentinel: must not change\n";
const FILE_LIMIT: u64 = 16 << 20;

fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use nix::sys::resource::{setrlimit, Resource};
        use nix::sys::signal::{signal, SigHandler, Signal};
        unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }.expect("ignore SIGXFSZ");
        setrlimit(Resource::RLIMIT_FSIZE, FILE_LIMIT, FILE_LIMIT).expect("RLIMIT_FSIZE");
        fs::create_dir_all(ABS_SENTINEL).expect("create the absolute sentinel");
    });
}

/// Parses a tar numeric field as tar-rs does: octal text, or base-256 when the
/// high bit of the first byte is set.
fn numeric(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut n: u64 = 0;
        for (i, &b) in field.iter().enumerate() {
            let b = if i == 0 { b & 0x7f } else { b };
            n = n.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(n);
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// Recomputes each header's checksum in place, following the sizes to the next header.
fn fix_checksums(buf: &mut [u8]) {
    let mut pos = 0usize;
    while pos + 512 <= buf.len() {
        let h = &mut buf[pos..pos + 512];
        if h.iter().all(|&b| b == 0) {
            return;
        }
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) })
            .sum();
        let text = format!("{sum:06o}\0 ");
        if text.len() != 8 {
            return;
        }
        h[148..156].copy_from_slice(text.as_bytes());
        let Some(mut size) = numeric(&h[124..136]) else {
            return;
        };
        // A directory's size is not followed by data (GNU tar, vendor/tar PATCHES.md).
        if h[156] == b'5' {
            size = 0;
        }
        let blocks = size.div_ceil(512);
        let Some(next) = blocks
            .checked_mul(512)
            .and_then(|b| usize::try_from(b).ok())
            .and_then(|b| b.checked_add(pos + 512))
        else {
            return;
        };
        pos = next;
    }
}

/// Every path below `dir`, without following symlinks; directories are made
/// searchable first (an archive may give them mode 0, and we are not always root).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(m) = fs::symlink_metadata(dir) else { return };
    if !m.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
    for e in entries {
        let path = e.expect("read_dir entry").path();
        out.push(path.clone());
        walk(&path, out);
    }
}

fn assert_empty(dir: &Path) {
    let found: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("sentinel {dir:?} is gone: {e}"))
        .map(|e| e.map(|e| e.path()))
        .collect();
    assert!(found.is_empty(), "written outside staging: {found:?}");
}

fuzz_target!(|data: &[u8]| {
    init();
    let mut input = data.to_vec();
    let compressed = input.starts_with(&[0x1f, 0x8b])
        || input.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (input.len() >= 4 && input[0] & 0xf0 == 0x50 && input[1..4] == [0x2a, 0x4d, 0x18])
        || input.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || input.starts_with(b"BZh");
    if !compressed {
        fix_checksums(&mut input);
    }

    let outer = tempfile::Builder::new()
        .prefix("stretcher-fuzz-")
        .tempdir()
        .expect("tempdir");
    let outer_path = outer.path().to_path_buf();
    let stage = outer_path.join("stage");
    let outside = outer_path.join("outside");
    let victim = outer_path.join("victim");
    fs::create_dir(&stage).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(&victim, VICTIM).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();

    let opts = UnpackOptions {
        same_owner: false,
        label: "fuzz.tar".to_string(),
        link_unchanged: false,
        list_written: false,
        digests_from_table: false,
    };
    match unpack(&input[..], &stage, &opts, None) {
        Ok(staged) => assert_eq!(staged.root, stage),
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // Nothing outside `stage` changed.
    assert_empty(&outside);
    assert_empty(Path::new(ABS_SENTINEL));
    let vm = fs::symlink_metadata(&victim).expect("victim is gone");
    assert!(vm.is_file(), "victim replaced");
    assert_eq!(vm.nlink(), 1, "victim hard-linked from staging");
    assert_eq!(vm.mode() & 0o7777, 0o600, "victim chmodded");
    assert_eq!(fs::read(&victim).unwrap(), VICTIM, "victim written");
    let om = fs::symlink_metadata(&outer_path).unwrap();
    assert!(om.is_dir(), "outer replaced");
    let mut all = Vec::new();
    walk(&outer_path, &mut all);
    for p in &all {
        assert!(
            p.starts_with(&stage) || *p == outside || *p == victim,
            "created outside staging: {p:?}"
        );
    }
    let sm = fs::symlink_metadata(&stage).expect("stage is gone");
    assert!(sm.is_dir(), "stage replaced by a non-directory");

    drop(outer);
    stretcher::log::reset();
});
