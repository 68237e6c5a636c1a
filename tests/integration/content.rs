//! Content-exact updates (SPEC §21), through the binary, with archives made as
//! reproducible builds make them: GNU tar with `--mtime=@1600000000` and bsdtar of a
//! tree whose mtimes are all set to that second. Files change content at equal size
//! and mtime; after each deploy dest must equal `rsync -a --checksum --delete` of the
//! new tree (the oracle), and a redeploy must change nothing — with the deploy index
//! kept, and with it deleted between deploys (then dest's bytes are read).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// The second every file of every release has.
const EPOCH: &str = "1600000000";

/// How an archive is packed.
#[derive(Clone, Copy, Debug)]
enum Packer {
    Gnu,
    Bsd,
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `files` (path → bytes) below `root`, every mtime (directories' too) set to
/// `EPOCH`, modes 0644 / 0755.
fn make(root: &Path, files: &[(&str, &[u8])]) {
    std::fs::create_dir_all(root).unwrap();
    for (name, data) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    run_ok(Command::new("chmod").args(["-R", "u=rwX,go=rX"]).arg(root));
    run_ok(Command::new("find").arg(root).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        &format!("@{EPOCH}"),
        "{}",
        "+",
    ]));
}

/// Packs `root` into `out` as a reproducible build does.
fn pack(packer: Packer, root: &Path, out: &Path) {
    match packer {
        Packer::Gnu => run_ok(
            Command::new("tar")
                .args([
                    "--sort=name",
                    "--owner=0",
                    "--group=0",
                    "--numeric-owner",
                    &format!("--mtime=@{EPOCH}"),
                    "-cf",
                ])
                .arg(out)
                .arg("-C")
                .arg(root)
                .arg("."),
        ),
        Packer::Bsd => run_ok(
            Command::new("bsdtar")
                .arg("-cf")
                .arg(out)
                .arg("-C")
                .arg(root)
                .arg("."),
        ),
    }
}

/// `rsync -a --checksum --delete from/ to/`: the archive's exact content.
fn oracle(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let mut src = from.as_os_str().to_owned();
    src.push("/");
    let mut dst = to.as_os_str().to_owned();
    dst.push("/");
    run_ok(
        Command::new("rsync")
            .args(["-a", "--checksum", "--delete"])
            .arg(src)
            .arg(dst),
    );
}

/// dest as a snapshot (a release's symlink followed), its root left out for a
/// release (the release directory's own time is the deploy's).
fn view(dest: &Path, release: bool) -> BTreeMap<PathBuf, Node> {
    let root = std::fs::canonicalize(dest).unwrap();
    let mut snap = snapshot(&root);
    if release {
        snap.remove(Path::new(""));
    }
    snap
}

/// A big file's bytes (past the 8 MiB the unpack holds in memory to judge a file).
fn big(flip: bool) -> Vec<u8> {
    let mut v: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    if flip {
        v[5 << 20] ^= 0xff;
    }
    v
}

/// A tree's files: path → bytes.
type Files = Vec<(&'static str, Vec<u8>)>;

/// Release 1 and release 2: the same names, sizes and (all) mtimes; content changed
/// at several depths, a big file changed, a new directory, one file unchanged.
fn releases() -> (Files, Files) {
    let v1 = vec![
        ("VERSION", b"1.0.0\n".to_vec()),
        ("same.txt", b"unchanged\n".to_vec()),
        ("a/b/c/config.yml", b"port: 8080\n".to_vec()),
        ("a/lib.js", b"var v = 1;\n".to_vec()),
        ("big.bin", big(false)),
    ];
    let v2 = vec![
        ("VERSION", b"1.0.1\n".to_vec()),
        ("same.txt", b"unchanged\n".to_vec()),
        ("a/b/c/config.yml", b"port: 9090\n".to_vec()),
        ("a/lib.js", b"var v = 2;\n".to_vec()),
        ("big.bin", big(true)),
        ("fresh/dir/inner.txt", b"inner 2\n".to_vec()),
    ];
    (v1, v2)
}

fn slices<'a>(v: &'a [(&'a str, Vec<u8>)]) -> Vec<(&'a str, &'a [u8])> {
    v.iter().map(|(n, d)| (*n, &d[..])).collect()
}

/// `stretcher verify DEST FLAGS` with the scratch's state directory.
fn verify(s: &Scratch, flags: &[&str]) -> Run {
    stretcher()
        .cwd(&s.work())
        .arg("verify")
        .args(flags)
        .arg("--state-dir")
        .arg(s.state_dir())
        .arg(s.dest())
        .run()
}

/// The deploy index of dest.
fn index_file(s: &Scratch) -> PathBuf {
    let key = stretcher::record::key_for_dest(&s.dest());
    s.state_dir().join("deploys").join(format!("{key}.index"))
}

/// v1 → v2 with `strategy`, archives packed by `packer`; `drop_index`: the deploy
/// index is deleted between the deploys (dest's bytes are then read).
fn v1_to_v2(packer: Packer, strategy: &str, drop_index: bool) {
    let s = Scratch::new();
    let (v1, v2) = releases();
    let (t1, t2) = (s.path().join("v1"), s.path().join("v2"));
    make(&t1, &slices(&v1));
    make(&t2, &slices(&v2));
    let (a1, a2) = (s.path().join("v1.tar"), s.path().join("v2.tar"));
    pack(packer, &t1, &a1);
    pack(packer, &t2, &a2);
    let extra = format!("sync_strategy: {strategy}\n");
    let m1 = s.manifest("m1.yml", &manifest_for(&a1, &s.dest(), &extra));
    let m2 = s.manifest("m2.yml", &manifest_for(&a2, &s.dest(), &extra));
    let release = strategy == "release";
    let ctx = format!("{packer:?} {strategy} drop_index={drop_index}");

    s.stretcher().arg(&m1).run().assert_ok();
    let expected1 = s.path().join("oracle1");
    oracle(&t1, &expected1);
    assert_eq!(
        view(&s.dest(), release),
        view(&expected1, release),
        "{ctx}: v1"
    );
    if drop_index {
        std::fs::remove_file(index_file(&s)).unwrap();
    }

    let run = s.stretcher().arg(&m2).run();
    run.assert_ok();
    let expected = s.path().join("oracle");
    oracle(&t1, &expected);
    oracle(&t2, &expected);
    assert_eq!(
        view(&s.dest(), release),
        view(&expected, release),
        "{ctx}: dest is not v2's content; log:\n{}",
        run.stderr
    );
    // The index keeps the archive's digests: verify --content finds nothing.
    let v = verify(&s, &["--content"]);
    assert_eq!(v.code(), 0, "{ctx}: {}{}", v.stdout, v.stderr);

    // A redeploy of the same manifest downloads nothing and changes nothing; forced,
    // it takes the whole path and changes nothing either.
    let again = s.stretcher().arg(&m2).run();
    again.assert_ok().assert_log("nothing to download");
    assert_eq!(view(&s.dest(), release), view(&expected, release), "{ctx}");
    if !release {
        redeploy(&s, &m2);
    } else {
        s.stretcher().arg("--force").arg(&m2).run().assert_ok();
        assert_eq!(view(&s.dest(), release), view(&expected, release), "{ctx}");
    }
}

#[test]
fn gnu_tar_v1_to_v2_is_exact_with_and_without_the_index() {
    for strategy in ["rsync", "release"] {
        for drop_index in [false, true] {
            v1_to_v2(Packer::Gnu, strategy, drop_index);
        }
    }
}

#[test]
fn bsdtar_v1_to_v2_is_exact_with_and_without_the_index() {
    for strategy in ["rsync", "release"] {
        for drop_index in [false, true] {
            v1_to_v2(Packer::Bsd, strategy, drop_index);
        }
    }
}

/// mv replaces dest whole: its first deploy is exact, and its index has the digests.
#[test]
fn mv_deploys_whole_and_indexes_the_digests() {
    let s = Scratch::new();
    let (_, v2) = releases();
    let t2 = s.path().join("v2");
    make(&t2, &slices(&v2));
    let a2 = s.path().join("v2.tar");
    pack(Packer::Gnu, &t2, &a2);
    let m = s.manifest(
        "m.yml",
        &manifest_for(&a2, &s.dest(), "sync_strategy: mv\n"),
    );
    s.stretcher().arg(&m).run().assert_ok();
    let expected = s.path().join("oracle");
    oracle(&t2, &expected);
    assert_eq!(view(&s.dest(), false), view(&expected, false));
    let v = verify(&s, &["--content"]);
    assert_eq!(v.code(), 0, "{}{}", v.stdout, v.stderr);
    assert!(!v.stderr.contains("no digest"), "{}", v.stderr);
    redeploy_mv_refused(&s, &m);
}

/// A first deploy onto a populated dest (no index): files with v2's size and mtime but
/// other bytes — one inside a directory the archive has and dest already holds — are
/// read and replaced.
#[test]
fn a_first_deploy_onto_a_populated_dest_compares_bytes() {
    for packer in [Packer::Gnu, Packer::Bsd] {
        let s = Scratch::new();
        let (_, v2) = releases();
        let t2 = s.path().join("v2");
        make(&t2, &slices(&v2));
        let stale: Vec<(&str, Vec<u8>)> = v2
            .iter()
            .map(|(n, d)| {
                let mut d = d.clone();
                if *n != "same.txt" {
                    let i = d.len() / 2;
                    d[i] ^= 0x01;
                }
                (*n, d)
            })
            .collect();
        make(&s.dest(), &slices(&stale));
        let a2 = s.path().join("v2.tar");
        pack(packer, &t2, &a2);
        let m = s.manifest("m.yml", &manifest_for(&a2, &s.dest(), ""));
        let run = s.stretcher().arg(&m).run();
        run.assert_ok();
        let expected = s.path().join("oracle");
        oracle(&t2, &expected);
        assert_eq!(
            view(&s.dest(), false),
            view(&expected, false),
            "{packer:?}: {}",
            run.stderr
        );
        redeploy(&s, &m);
    }
}

/// The `--dry-run` lists a content-only change as an update.
#[test]
fn a_dry_run_lists_content_only_changes() {
    let s = Scratch::new();
    let (v1, v2) = releases();
    let (t1, t2) = (s.path().join("v1"), s.path().join("v2"));
    make(&t1, &slices(&v1));
    make(&t2, &slices(&v2));
    let (a1, a2) = (s.path().join("v1.tar"), s.path().join("v2.tar"));
    pack(Packer::Gnu, &t1, &a1);
    pack(Packer::Gnu, &t2, &a2);
    let m1 = s.manifest("m1.yml", &manifest_for(&a1, &s.dest(), ""));
    let m2 = s.manifest("m2.yml", &manifest_for(&a2, &s.dest(), ""));
    s.stretcher().arg(&m1).run().assert_ok();
    let dry = s.stretcher().arg("--dry-run").arg(&m2).run();
    dry.assert_ok();
    for line in [
        "update VERSION",
        "update a/b/c/config.yml",
        "update a/lib.js",
        "update big.bin",
    ] {
        assert!(
            dry.stdout.lines().any(|l| l == line),
            "{line:?} missing:\n{}",
            dry.stdout
        );
    }
    assert!(!dry.stdout.contains("same.txt"), "{}", dry.stdout);
}

/// The archive has `b` and a hard link `a` to it; dest has `b` with other bytes at
/// the same size and mtime: both get the archive's bytes (rsync -a makes `a` so).
#[test]
fn a_hard_link_to_a_stale_file_gets_the_archives_bytes() {
    for strategy in ["rsync", "release"] {
        let s = Scratch::new();
        let t = s.path().join("tree");
        make(&t, &[("b", b"new!")]);
        std::fs::hard_link(t.join("b"), t.join("a")).unwrap();
        let old = s.path().join("old");
        make(&old, &[("b", b"old!")]);
        let (a_old, a_new) = (s.path().join("old.tar"), s.path().join("new.tar"));
        pack(Packer::Gnu, &old, &a_old);
        pack(Packer::Gnu, &t, &a_new);
        let extra = format!("sync_strategy: {strategy}\n");
        let m1 = s.manifest("m1.yml", &manifest_for(&a_old, &s.dest(), &extra));
        let m2 = s.manifest("m2.yml", &manifest_for(&a_new, &s.dest(), &extra));
        s.stretcher().arg(&m1).run().assert_ok();
        s.stretcher().arg(&m2).run().assert_ok();
        for name in ["a", "b"] {
            assert_eq!(
                std::fs::read(s.dest().join(name)).unwrap(),
                b"new!",
                "{strategy}: {name}"
            );
        }
    }
}

/// dest holds the rule file with the archive's size and mtime but other (stale)
/// rules: the deploy uses the archive's rules, as its dry run does.
#[test]
fn a_stale_rule_file_in_dest_is_not_used() {
    let s = Scratch::new();
    let t1 = s.path().join("v1");
    make(&t1, &[("rules", b"- /aaa\n"), ("app", b"x")]);
    let t2 = s.path().join("v2");
    make(&t2, &[("rules", b"- /bbb\n"), ("app", b"x"), ("aaa", b"a")]);
    let (a1, a2) = (s.path().join("v1.tar"), s.path().join("v2.tar"));
    pack(Packer::Gnu, &t1, &a1);
    pack(Packer::Gnu, &t2, &a2);
    let extra = "exclude_from: rules\n";
    let m1 = s.manifest("m1.yml", &manifest_for(&a1, &s.dest(), extra));
    let m2 = s.manifest("m2.yml", &manifest_for(&a2, &s.dest(), extra));
    s.stretcher().arg(&m1).run().assert_ok();
    // Something of dest's own that v2's rules protect, and v1's would delete.
    std::fs::write(s.dest().join("bbb"), b"kept").unwrap();
    let dry = s.stretcher().arg("--dry-run").arg(&m2).run();
    dry.assert_ok();
    assert!(!dry.stdout.contains("delete bbb"), "{}", dry.stdout);
    s.stretcher().arg(&m2).run().assert_ok();
    assert_eq!(std::fs::read(s.dest().join("rules")).unwrap(), b"- /bbb\n");
    // v2's rules: bbb is protected, aaa is copied.
    assert_eq!(std::fs::read(s.dest().join("bbb")).unwrap(), b"kept");
    assert_eq!(std::fs::read(s.dest().join("aaa")).unwrap(), b"a");
}

/// A rule with a Latin-1 byte survives in the index: a redeploy downloads nothing
/// and `verify` reports no drift for the path it excludes.
#[test]
fn a_non_utf8_rule_survives_in_the_index() {
    let s = Scratch::new();
    let t = s.path().join("tree");
    make(&t, &[("rules", b"- /caf\xe9\n"), ("app", b"x")]);
    let a = s.path().join("a.tar");
    pack(Packer::Gnu, &t, &a);
    let m = s.manifest(
        "m.yml",
        &manifest_for(&a, &s.dest(), "exclude_from: rules\n"),
    );
    s.stretcher().arg(&m).run().assert_ok();
    // The excluded path, made in dest after the deploy.
    let excluded = s.dest().join(OsStr::from_bytes(b"caf\xe9"));
    let md = std::fs::metadata(s.dest()).unwrap();
    std::fs::write(&excluded, b"local").unwrap();
    let mtime = filetime::FileTime::from_last_modification_time(&md);
    filetime::set_file_mtime(s.dest(), mtime).unwrap();
    let v = verify(&s, &[]);
    assert_eq!(v.code(), 0, "{}{}", v.stdout, v.stderr);
    let again = s.stretcher().arg(&m).run();
    again.assert_ok().assert_log("nothing to download");
    assert_eq!(std::fs::read(&excluded).unwrap(), b"local");
}

/// `verify --content` finds a byte changed in place with the size and mtime put
/// back; `verify` alone (a stat walk) does not.
#[test]
fn verify_content_finds_a_byte_changed_in_place() {
    let s = Scratch::new();
    let t = s.path().join("tree");
    make(&t, &[("a/conf", b"port: 8080\n"), ("b", b"same")]);
    let a = s.path().join("a.tar");
    pack(Packer::Gnu, &t, &a);
    let m = s.manifest("m.yml", &manifest_for(&a, &s.dest(), ""));
    s.stretcher().arg(&m).run().assert_ok();
    let conf = s.dest().join("a/conf");
    let md = std::fs::metadata(&conf).unwrap();
    let mtime = filetime::FileTime::from_last_modification_time(&md);
    std::fs::write(&conf, b"port: 9090\n").unwrap();
    filetime::set_file_mtime(&conf, mtime).unwrap();

    let plain = verify(&s, &[]);
    assert_eq!(plain.code(), 0, "{}{}", plain.stdout, plain.stderr);
    assert_eq!(plain.stdout, "");
    let content = verify(&s, &["--content"]);
    assert_eq!(content.code(), 1, "{}{}", content.stdout, content.stderr);
    assert_eq!(content.stdout, "changed a/conf (content)\n");
    let json = verify(&s, &["--content", "--json"]);
    assert_eq!(json.code(), 1);
    assert!(
        json.stdout
            .contains(r#"{"path":"a/conf","kind":"changed","what":["content"]}"#),
        "{}",
        json.stdout
    );
    // A deploy trusts the index's digest of a file with its indexed size and mtime
    // (SPEC §11, §21); without the index, dest's bytes are read and the archive's put
    // back.
    std::fs::remove_file(index_file(&s)).unwrap();
    s.stretcher().arg(&m).run().assert_ok();
    assert_eq!(std::fs::read(&conf).unwrap(), b"port: 8080\n");
}
