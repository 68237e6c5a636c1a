//! Benchmarks of the sync core on a 20,000-file tree (SPEC §6, §21): `plan` on a tree
//! that is already mirrored (without an index: dest's files read to compare content;
//! with the index's digests, as a deploy has them: no read), `plan` + `apply` for an
//! update that changes 1% of the files, the unpack-time quick check (unpacking the
//! tree's archive against a dest that already holds it, every file left in place, and
//! planning with the kept list), and the content digest itself (sha256 of 64 MiB).
//!
//! It never runs rsync and never writes outside its own temporary directory.
//!
//! Where the tree lives matters (see /work/shared/BENCHMARKING.md): the root filesystem
//! here is ext4 without a journal, where creating many files shortly after deleting many
//! is quadratic in the kernel, so a tree under /tmp measures that artefact, not the sync.
//! When /mnt/bench exists (a fresh journaled ext4 loop image or a tmpfs, made anew for
//! each run) the tree goes there; otherwise the std temp dir is used and the figures are
//! only indicative.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use filetime::FileTime;
use stretcher::digest::{self, Digests, Known};
use stretcher::entry::Meta;
use stretcher::filter::Filter;
use stretcher::sync::{self, SyncOptions};
use stretcher::unpack::{self, Staged, UnpackOptions};
use stretcher::verify::{Checksum, HashingReader, Verified};

const TOP: usize = 20;
const SUB: usize = 20;
const FILES: usize = 50; // 20 * 20 * 50 = 20,000 files

fn bench_base() -> PathBuf {
    let mnt = Path::new("/mnt/bench");
    if mnt.is_dir() {
        mnt.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn file_path(root: &Path, i: usize) -> PathBuf {
    let (t, rest) = (i / (SUB * FILES), i % (SUB * FILES));
    let (s, f) = (rest / FILES, rest % FILES);
    root.join(format!("d{t:02}/s{s:02}/f{f:03}.dat"))
}

fn write_version(path: &Path, i: usize, version: u8) {
    let len = 64 + (i * 37) % 2000;
    let data: Vec<u8> = (0..len).map(|k| (k as u8) ^ (i as u8) ^ version).collect();
    fs::write(path, data).expect("write bench file");
    let mtime = FileTime::from_unix_time(1_600_000_000 + i as i64 + i64::from(version) * 1000, 0);
    filetime::set_file_mtime(path, mtime).expect("set bench mtime");
}

fn make_tree(root: &Path) {
    for t in 0..TOP {
        for s in 0..SUB {
            fs::create_dir_all(root.join(format!("d{t:02}/s{s:02}"))).expect("mkdir");
        }
    }
    for i in 0..TOP * SUB * FILES {
        write_version(&file_path(root, i), i, 0);
    }
}

/// `staged` as the sync takes it: the bench's own tree, so what is verified is the
/// empty input against its own digest.
fn verified(staged: Staged) -> Verified<Staged> {
    let c = Checksum::parse("da39a3ee5e6b4b0d3255bfef95601890afd80709").expect("sha1 of nothing");
    let mut empty = HashingReader::new(&b""[..], &c);
    std::io::copy(&mut empty, &mut std::io::sink()).expect("reading nothing");
    empty
        .finish()
        .verify(staged)
        .expect("the empty input matches")
}

/// The tree at `root` as a staged tree with nothing reused.
fn tree(root: &Path) -> Verified<Staged> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(root).expect("the staged tree");
    verified(Staged {
        root: root.to_path_buf(),
        root_id: (m.dev(), m.ino()),
        root_mode: None,
        entries: 0,
        reused: Default::default(),
        written: Default::default(),
        digests: Default::default(),
        listed_dirs: Default::default(),
    })
}

/// Every regular file below `root`: its path relative to `root` (bytes), its lstat as a
/// [`Meta`] and its digest, as the unpack and the index have them.
fn digests_of(root: &Path) -> Vec<(Box<[u8]>, Meta, digest::Digest)> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.expect("walk the bench tree");
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e.path().strip_prefix(root).expect("below the root");
        let meta = Meta::from(&e.metadata().expect("lstat"));
        let mut f = fs::File::open(e.path()).expect("open");
        let d = digest::of_reader(&mut f, &mut buf).expect("read");
        out.push((Box::from(rel.as_os_str().as_bytes()), meta, d));
    }
    out
}

fn benches(c: &mut Criterion) {
    let tmp = tempfile::Builder::new()
        .prefix("stretcher-bench-")
        .tempdir_in(bench_base())
        .expect("bench temp dir");
    let src = tmp.path().join("src");
    let dest = tmp.path().join("dest");
    make_tree(&src);
    let filter = Filter::new(None, &["*.pid".to_string()]).expect("filter");
    let opts = SyncOptions::default();
    let src_tree = tree(&src);
    sync::sync(&src_tree, &dest, &filter, &opts).expect("initial mirror");

    let mut g = c.benchmark_group("sync_20k_files");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));

    g.bench_function("plan_no_change", |b| {
        b.iter(|| {
            // Up-to-date entries listed, as the plan did before it took options.
            let list_uptodate = SyncOptions {
                verbosity: 2,
                ..SyncOptions::default()
            };
            let p = sync::plan_staged(&src_tree, &dest, &filter, &list_uptodate).expect("plan");
            assert!(p.changes().next().is_none());
            p
        })
    });

    // As a deploy plans: the staged digests from the unpack, dest's from its index.
    let files = digests_of(&src);
    let mut with_digests = tree(&src).into_inner();
    with_digests.digests = Digests::from_unsorted(files.iter().map(|(p, _, d)| (p.clone(), *d)));
    let with_digests = verified(with_digests);
    let dest_files = digests_of(&dest);
    let known = Known::new(dest_files.iter().map(|(p, m, d)| (&p[..], m, *d)));
    g.bench_function("plan_no_change_index_digests", |b| {
        b.iter(|| {
            let p = sync::plan_staged_with(&with_digests, &dest, &filter, &opts, Some(&known))
                .expect("plan");
            assert!(p.changes().next().is_none());
            p
        })
    });

    // 1% of the files (every 100th) get new content and mtime before each timed run.
    let total = TOP * SUB * FILES;
    let mut version = 0u8;
    g.bench_function("plan_apply_1pct_update", |b| {
        b.iter_batched(
            || {
                version = version.wrapping_add(1);
                for i in (0..total).step_by(100) {
                    write_version(&file_path(&src, i), i, version);
                }
            },
            |()| sync::sync(&src_tree, &dest, &filter, &opts).expect("sync"),
            BatchSize::PerIteration,
        )
    });
    // The archive of the (current) source tree, in memory, and a dest mirroring it.
    sync::sync(&src_tree, &dest, &filter, &opts).expect("mirror before the unpack bench");
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", &src).expect("tar the tree");
    let archive = builder.into_inner().expect("tar bytes");
    let mut n = 0u32;
    g.bench_function("unpack_quick_check_no_change", |b| {
        b.iter_batched(
            || {
                n += 1;
                let staging = tmp.path().join(format!("staging{n}"));
                fs::create_dir(&staging).expect("staging");
                staging
            },
            |staging| {
                let unpack_opts = UnpackOptions {
                    same_owner: false,
                    label: "bench".into(),
                    link_unchanged: false,
                    list_written: false,
                    digests_from_table: false,
                };
                let mut probe = sync::DestProbe::new(&dest, true);
                let staged = unpack::unpack(&archive[..], &staging, &unpack_opts, Some(&mut probe))
                    .expect("unpack");
                assert_eq!(staged.reused.len(), TOP * SUB * FILES);
                let p = sync::plan_staged(&verified(staged), &dest, &filter, &opts).expect("plan");
                assert!(p.changes().next().is_none());
                staging
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let data = vec![0x5au8; 64 << 20];
    let mut d = c.benchmark_group("digest");
    d.sample_size(10)
        .throughput(criterion::Throughput::Bytes(data.len() as u64));
    d.bench_function("sha256_64MiB", |b| {
        b.iter(|| {
            let mut h = digest::Hasher::default();
            for chunk in data.chunks(1 << 20) {
                h.update(chunk);
            }
            h.finish()
        })
    });
    d.finish();
}

criterion_group!(sync_benches, benches);
criterion_main!(sync_benches);
