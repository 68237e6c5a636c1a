//! `unpack::unpack` against real archives built here: the tree it writes (modes,
//! mtimes, links, long and non-UTF-8 names) and the hostile or broken archives it must
//! refuse without writing outside the staging directory (SPEC §7, §10).

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use stretcher::unpack::{unpack, Staged, UnpackOptions};
use stretcher::Error;
use tar::{EntryType, Header};

const T0: u64 = 1_600_000_000;

// ---- helpers: archives built in memory ----

struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn dir(mut self, path: &str, mode: u32, mtime: u64) -> Tar {
        let mut h = crate::util::tar_header(EntryType::Directory, mode, mtime, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn file(mut self, path: &str, data: &[u8], mode: u32, mtime: u64) -> Tar {
        let mut h = crate::util::tar_header(EntryType::Regular, mode, mtime, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Tar {
        let mut h = crate::util::tar_header(kind, 0o777, T0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    fn symlink(self, path: &str, target: &str) -> Tar {
        self.link(EntryType::Symlink, path, target)
    }

    /// An entry whose name (and link name) bytes go into the header verbatim: for
    /// names `Header::set_path` refuses (`..`, absolute) or that are not UTF-8.
    fn raw(mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Tar {
        let mut h = crate::util::tar_header(kind, 0o644, T0, data.len() as u64);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn pax(mut self, records: &[(&str, &[u8])]) -> Tar {
        self.0
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }

    fn gz(self) -> Vec<u8> {
        gz(&self.bytes())
    }
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A temp dir holding the private staging dir `stage` (what the deploy step makes).
struct Stage {
    tmp: tempfile::TempDir,
    into: PathBuf,
}

impl Stage {
    fn new() -> Stage {
        let tmp = tempfile::tempdir().unwrap();
        let into = tmp.path().join("stage");
        fs::create_dir(&into).unwrap();
        fs::set_permissions(&into, fs::Permissions::from_mode(0o700)).unwrap();
        Stage { tmp, into }
    }

    fn unpack(&self, archive: &[u8]) -> stretcher::Result<Staged> {
        self.unpack_with(archive, false)
    }

    fn unpack_with(&self, archive: &[u8], same_owner: bool) -> stretcher::Result<Staged> {
        let opts = UnpackOptions {
            same_owner,
            label: "file:///test/app.tar.gz".into(),
            link_unchanged: false,
            list_written: false,
            digests_from_table: false,
        };
        unpack(archive, &self.into, &opts, None)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.into.join(rel)
    }

    /// Names directly in the temp dir beside `stage` (must stay just `stage`).
    fn beside(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn mtime(p: &Path) -> FileTime {
    FileTime::from_last_modification_time(&fs::symlink_metadata(p).unwrap())
}

fn secs(t: u64) -> FileTime {
    FileTime::from_unix_time(t as i64, 0)
}

fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p).unwrap().next().is_none()
}

#[track_caller]
fn assert_entry_error(r: stretcher::Result<Staged>, name: &str) {
    match r {
        Err(e @ Error::Entry { .. }) => {
            eprintln!("refused as expected: {e}");
            assert!(
                matches!(&e, Error::Entry { entry, .. } if entry == name),
                "{e}"
            );
        }
        other => panic!("expected an entry error naming {name:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_archive_error(r: stretcher::Result<Staged>) {
    match r {
        Err(e @ Error::Archive { .. }) => {
            eprintln!("failed as expected: {e}");
            assert!(e.to_string().contains("file:///test/app.tar.gz"), "{e}")
        }
        other => panic!("expected an archive error, got {other:?}"),
    }
}

// ---- a normal tree ----

fn normal_tree() -> Tar {
    Tar::new()
        .dir("./", 0o751, T0)
        .dir("./bin/", 0o700, T0 + 1)
        .file("./bin/run", b"#!/bin/sh\necho hi\n", 0o755, T0 + 2)
        .file("./conf/app.conf", b"secret=1\n", 0o600, T0 + 3)
        // the directory entry after its file, as some tools write it
        .dir("./conf/", 0o750, T0 + 4)
        .file("./conf/deep/er/x.txt", b"x", 0o644, T0 + 5)
        .symlink("./current", "bin/run")
        .symlink("./dangling", "nowhere/at/all")
        .link(EntryType::Link, "./bin/run2", "./bin/run")
        .file("./empty", b"", 0o444, T0 + 6)
}

#[test]
fn normal_tree_tar_gz() {
    let s = Stage::new();
    let staged = s.unpack(&normal_tree().gz()).unwrap();
    assert_eq!(staged.root, s.into);
    assert_eq!(staged.root_mode, Some(0o751));
    assert_eq!(staged.entries, 9);

    assert_eq!(mode(&s.into), 0o751);
    assert_eq!(mtime(&s.into), secs(T0));
    assert_eq!(mode(&s.path("bin")), 0o700);
    assert_eq!(mtime(&s.path("bin")), secs(T0 + 1));
    assert_eq!(
        fs::read(s.path("bin/run")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(mode(&s.path("bin/run")), 0o755);
    assert_eq!(mtime(&s.path("bin/run")), secs(T0 + 2));
    assert_eq!(mode(&s.path("conf/app.conf")), 0o600);
    assert_eq!(mtime(&s.path("conf/app.conf")), secs(T0 + 3));
    assert_eq!(mode(&s.path("conf")), 0o750);
    assert_eq!(mtime(&s.path("conf")), secs(T0 + 4));
    // parents made on the way: 0755
    assert_eq!(mode(&s.path("conf/deep")), 0o755);
    assert_eq!(fs::read(s.path("conf/deep/er/x.txt")).unwrap(), b"x");
    assert_eq!(mode(&s.path("empty")), 0o444);
    assert_eq!(fs::metadata(s.path("empty")).unwrap().len(), 0);

    assert_eq!(
        fs::read_link(s.path("current")).unwrap(),
        Path::new("bin/run")
    );
    assert_eq!(mtime(&s.path("current")), secs(T0));
    assert_eq!(
        fs::read_link(s.path("dangling")).unwrap(),
        Path::new("nowhere/at/all")
    );
    assert!(!s.path("dangling").exists());

    let a = fs::metadata(s.path("bin/run")).unwrap();
    let b = fs::metadata(s.path("bin/run2")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        fs::read(s.path("bin/run2")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(s.beside(), ["stage"]);
}

#[test]
fn plain_tar_and_no_root_entry() {
    let s = Stage::new();
    let staged = s
        .unpack(&Tar::new().file("a/b.txt", b"hello", 0o640, T0).bytes())
        .unwrap();
    assert_eq!(staged.root_mode, None);
    assert_eq!(staged.entries, 1);
    assert_eq!(mode(&s.into), 0o700, "no `.` entry: into keeps its mode");
    assert_eq!(fs::read(s.path("a/b.txt")).unwrap(), b"hello");
    assert_eq!(mode(&s.path("a/b.txt")), 0o640);
}

#[test]
fn concatenated_gzip_members() {
    let tar = normal_tree().bytes();
    let (a, b) = tar.split_at(1536);
    let mut data = gz(a);
    data.extend(gz(b));
    let s = Stage::new();
    let staged = s.unpack(&data).unwrap();
    assert_eq!(staged.entries, 9);
    assert_eq!(fs::read(s.path("conf/app.conf")).unwrap(), b"secret=1\n");
}

#[test]
fn read_only_directory_still_gets_its_files() {
    let s = Stage::new();
    let archive = Tar::new()
        .dir("ro/", 0o555, T0)
        .file("ro/inner/f", b"data", 0o400, T0)
        .dir("ro/inner/", 0o500, T0 + 7)
        .gz();
    s.unpack(&archive).unwrap();
    assert_eq!(fs::read(s.path("ro/inner/f")).unwrap(), b"data");
    assert_eq!(mode(&s.path("ro")), 0o555);
    assert_eq!(mode(&s.path("ro/inner")), 0o500);
    assert_eq!(mtime(&s.path("ro/inner")), secs(T0 + 7));
    assert_eq!(mtime(&s.path("ro")), secs(T0));
    // let TempDir clean up even when not root
    fs::set_permissions(s.path("ro/inner"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(s.path("ro"), fs::Permissions::from_mode(0o700)).unwrap();
}

// ---- long, pax and odd names ----

#[test]
fn gnu_long_name_and_long_link_target() {
    let long_dir = "d".repeat(80);
    let long_name = format!("{long_dir}/{}", "f".repeat(90));
    let long_target = format!("../{}/{}", "t".repeat(120), "u".repeat(50));
    assert!(long_name.len() > 100 && long_target.len() > 100);
    let s = Stage::new();
    let archive = Tar::new()
        .file(&long_name, b"long", 0o644, T0)
        .symlink("l", &long_target)
        .link(EntryType::Link, "hl", &long_name)
        .gz();
    s.unpack(&archive).unwrap();
    assert_eq!(fs::read(s.path(&long_name)).unwrap(), b"long");
    assert_eq!(fs::read_link(s.path("l")).unwrap(), Path::new(&long_target));
    assert_eq!(fs::read(s.path("hl")).unwrap(), b"long");
}

#[test]
fn pax_long_names_and_subsecond_mtime() {
    let long_name = format!("p/{}/{}", "q".repeat(150), "r".repeat(60));
    let long_target = "z".repeat(180);
    let s = Stage::new();
    let archive = Tar::new()
        .pax(&[("path", long_name.as_bytes()), ("mtime", b"1600000000.25")])
        .raw(EntryType::Regular, b"truncated-name", b"", b"pax!")
        .pax(&[
            ("path", b"plink".as_slice()),
            ("linkpath", long_target.as_bytes()),
        ])
        .raw(EntryType::Symlink, b"ignored", b"ignored-too", b"")
        .gz();
    let staged = s.unpack(&archive).unwrap();
    assert_eq!(staged.entries, 2);
    assert_eq!(fs::read(s.path(&long_name)).unwrap(), b"pax!");
    assert_eq!(
        mtime(&s.path(&long_name)),
        FileTime::from_unix_time(1_600_000_000, 250_000_000)
    );
    assert_eq!(
        fs::read_link(s.path("plink")).unwrap(),
        Path::new(&long_target)
    );
    assert!(!s.path("truncated-name").exists());
    assert!(!s.path("ignored").exists());
}

#[test]
fn pax_global_header_is_ignored() {
    let mut t = Tar::new();
    let mut h = Header::new_ustar();
    let rec = b"52 comment=0123456789abcdef0123456789abcdef01234567\n";
    h.set_entry_type(EntryType::XGlobalHeader);
    h.set_size(rec.len() as u64);
    h.set_path("pax_global_header").unwrap();
    h.set_cksum();
    t.0.append(&h, &rec[..]).unwrap();
    let s = Stage::new();
    let staged = s.unpack(&t.file("a", b"1", 0o644, T0).gz()).unwrap();
    assert_eq!(staged.entries, 1);
    assert!(!s.path("pax_global_header").exists());
}

/// pax records are read as GNU tar 1.34 reads them: a malformed record or value,
/// on which GNU tar fails (exit status 2), refuses the member; what GNU tar accepts
/// (blanks around the length, an mtime with trailing bytes) is read as it reads it.
#[test]
fn pax_records_as_gnu_tar_reads_them() {
    let with_x = |records: &[u8]| {
        Tar::new()
            .raw(EntryType::XHeader, b"PaxHeaders/f", b"", records)
            .file("f", b"data", 0o644, T0)
            .gz()
    };
    for bad in [
        &b"12 path=name"[..],       // no newline
        b"13 path=name\n9 mtime=5", // the second record
        b"12 pathname\n",           // no '='
        b"99 path=x\n",             // longer than the header
        b"x path=name\n",           // no length
        b"8path=x\n",               // no blank after the length
        b"11 mtime=x\n",            // GNU tar: invalid mtime=x
        b"9 uid=-1\n",              // out of range
        b"11 size=1x\n",            // invalid size
        b"22 GNU.sparse.map=0,1\n", // more chunks than numblocks
    ] {
        let r = Stage::new().unpack(&with_x(bad));
        assert!(
            matches!(&r, Err(e @ Error::Entry { .. }) if e.to_string().contains("pax header: ")),
            "{:?}: {r:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // GNU tar reads "999xxx1" as 999 and allows blanks and tabs around the length;
    // NULs after the last record end the list.
    let s = Stage::new();
    s.unpack(&with_x(b" \t20 \tmtime=999xxx1\n\0\0")).unwrap();
    assert_eq!(mtime(&s.path("f")), secs(999));

    // A malformed global header fails too, though its records are ignored.
    let mut t = Tar::new();
    let mut h = Header::new_ustar();
    let rec = b"12 comment=x";
    h.set_entry_type(EntryType::XGlobalHeader);
    h.set_size(rec.len() as u64);
    h.set_path("pax_global_header").unwrap();
    h.set_cksum();
    t.0.append(&h, &rec[..]).unwrap();
    assert_entry_error(
        Stage::new().unpack(&t.file("a", b"1", 0o644, T0).gz()),
        "pax_global_header",
    );
}

#[test]
fn non_utf8_file_name() {
    let s = Stage::new();
    let archive = Tar::new()
        .raw(EntryType::Regular, b"caf\xe9/\xff\xfe.txt", b"", b"bytes")
        .gz();
    s.unpack(&archive).unwrap();
    let p = s
        .into
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9/\xff\xfe.txt"));
    assert_eq!(fs::read(p).unwrap(), b"bytes");
}

#[test]
fn large_size_in_base256() {
    // GNU base-256 size field (what sizes ≥ 8 GiB use), here on a small file.
    let data = vec![7u8; 70_000];
    let mut h = crate::util::tar_header(EntryType::Regular, 0o644, T0, 0);
    h.set_path("big").unwrap();
    let size = &mut h.as_gnu_mut().unwrap().size;
    *size = [0; 12];
    size[0] = 0x80;
    size[8..].copy_from_slice(&(data.len() as u32).to_be_bytes());
    h.set_cksum();
    let mut t = Tar::new();
    t.0.append(&h, &data[..]).unwrap();
    let s = Stage::new();
    s.unpack(&t.gz()).unwrap();
    assert_eq!(fs::read(s.path("big")).unwrap(), data);
}

// ---- path policy ----

#[test]
fn parent_dir_entry_is_refused() {
    for name in [&b"../escape"[..], b"a/../../escape", b"./../escape"] {
        let s = Stage::new();
        let archive = Tar::new()
            .file("ok", b"1", 0o644, T0)
            .raw(EntryType::Regular, name, b"", b"evil")
            .gz();
        assert_entry_error(s.unpack(&archive), &String::from_utf8_lossy(name));
        assert_eq!(s.beside(), ["stage"]);
    }
}

#[test]
fn absolute_path_is_stripped() {
    let s = Stage::new();
    let archive = Tar::new()
        .raw(EntryType::Regular, b"/etc/x", b"", b"inside")
        .raw(EntryType::Regular, b"//abs2", b"", b"two")
        .gz();
    s.unpack(&archive).unwrap();
    assert_eq!(fs::read(s.path("etc/x")).unwrap(), b"inside");
    assert_eq!(fs::read(s.path("abs2")).unwrap(), b"two");
}

#[test]
fn write_through_symlink_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(outside.path().join("sub")).unwrap();
    let out = outside.path().to_str().unwrap();
    let cases: Vec<(Tar, &str)> = vec![
        (
            Tar::new()
                .symlink("lnk", out)
                .file("lnk/file", b"x", 0o644, T0),
            "lnk/file",
        ),
        (
            Tar::new()
                .symlink("lnk", out)
                .file("lnk/sub/file", b"x", 0o644, T0),
            "lnk/sub/file",
        ),
        (
            Tar::new()
                .symlink("a", "b")
                .symlink("b", out)
                .file("a/file", b"x", 0o644, T0),
            "a/file",
        ),
        (
            Tar::new().dir("d/", 0o755, T0).symlink("d/up", "..").file(
                "d/up/file",
                b"x",
                0o644,
                T0,
            ),
            "d/up/file",
        ),
        (
            Tar::new().symlink("lnk", out).dir("lnk/newdir", 0o755, T0),
            "lnk/newdir",
        ),
        (
            Tar::new()
                .symlink("lnk", out)
                .symlink("lnk/evil", "/etc/passwd"),
            "lnk/evil",
        ),
    ];
    for (tar, name) in cases {
        let s = Stage::new();
        assert_entry_error(s.unpack(&tar.gz()), name);
        assert_eq!(s.beside(), ["stage"]);
        assert!(!s.into.join("file").exists());
        assert_eq!(
            fs::read_dir(outside.path()).unwrap().count(),
            1,
            "only `sub` outside, for {name}"
        );
        assert!(is_empty_dir(&outside.path().join("sub")), "{name}");
    }
}

#[test]
fn hard_link_outside_is_refused() {
    for target in [&b"../x"[..], b"/etc/passwd", b"a/../../x"] {
        let s = Stage::new();
        let archive = Tar::new()
            .file("a/f", b"1", 0o644, T0)
            .raw(EntryType::Link, b"hl", target, b"")
            .gz();
        assert_entry_error(s.unpack(&archive), "hl");
        assert!(!s.path("hl").exists());
    }
    // through a symlink an earlier entry made
    let s = Stage::new();
    let archive = Tar::new()
        .symlink("etc", "/etc")
        .link(EntryType::Link, "pw", "etc/passwd")
        .gz();
    assert_entry_error(s.unpack(&archive), "pw");
    assert!(fs::symlink_metadata(s.path("pw")).is_err());
}

#[test]
fn later_duplicate_replaces_without_writing_through() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("victim");
    let s = Stage::new();
    let archive = Tar::new()
        .symlink("x", target.to_str().unwrap())
        .file("x", b"file wins", 0o644, T0)
        .file("y", b"was a file", 0o644, T0)
        .symlink("y", "x")
        .dir("z/", 0o700, T0)
        .file("z/inner", b"gone", 0o644, T0)
        .file("z", b"file over dir", 0o644, T0)
        .file("w", b"was a file", 0o644, T0)
        .dir("w/", 0o711, T0 + 9)
        .gz();
    s.unpack(&archive).unwrap();
    assert!(!target.exists(), "wrote through the symlink");
    assert!(is_empty_dir(outside.path()));
    assert!(fs::symlink_metadata(s.path("x")).unwrap().is_file());
    assert_eq!(fs::read(s.path("x")).unwrap(), b"file wins");
    assert_eq!(fs::read_link(s.path("y")).unwrap(), Path::new("x"));
    assert_eq!(fs::read(s.path("z")).unwrap(), b"file over dir");
    assert!(fs::symlink_metadata(s.path("w")).unwrap().is_dir());
    assert_eq!(mode(&s.path("w")), 0o711);
    assert_eq!(mtime(&s.path("w")), secs(T0 + 9));
}

// ---- broken streams ----

#[test]
fn truncated_tar_gz_is_an_archive_error() {
    let full = Tar::new()
        .file("big", &vec![1u8; 200_000], 0o644, T0)
        .file("small", b"x", 0o644, T0)
        .gz();
    for cut in [full.len() / 2, full.len() - 4, 5] {
        let s = Stage::new();
        assert_archive_error(s.unpack(&full[..cut]));
    }
}

#[test]
fn corrupt_gzip_crc_is_an_error() {
    let mut data = normal_tree().gz();
    let n = data.len();
    data[n - 8] ^= 0xff; // CRC32 is the trailer's first four bytes
    let s = Stage::new();
    assert_archive_error(s.unpack(&data));
    let mut data = normal_tree().gz();
    data[n - 1] ^= 0x01; // ISIZE
    assert_archive_error(Stage::new().unpack(&data));
}

#[test]
fn plain_tar_cut_mid_entry_is_an_error() {
    let full = Tar::new()
        .file("a", &vec![2u8; 10_000], 0o644, T0)
        .file("b", b"bb", 0o644, T0)
        .bytes();
    // inside a's data, inside b's header, inside b's data padding
    let after_b = 512 + 10_240 + 512 + 512;
    for cut in [4_000, 512 + 10_240 + 100, after_b - 100] {
        let s = Stage::new();
        assert_archive_error(s.unpack(&full[..cut]));
    }
    // exactly after b, no end-of-archive marker: accepted with a warning (SPEC §7),
    // as GNU tar does, also with fewer than 512 zero bytes after it (GNU tar drops a
    // short last block); with one zero block or with the marker: fine
    for cut in [after_b, after_b + 100, after_b + 512, after_b + 1024] {
        let s = Stage::new();
        s.unpack(&full[..cut]).unwrap();
        assert_eq!(fs::read(s.path("b")).unwrap(), b"bb");
    }
}

/// An unpack error keeps the io error it says as its `source()` (the stream's, a
/// header field's), the line unchanged.
#[test]
fn errors_keep_the_io_error_they_say() {
    use std::error::Error as _;
    let cut = Tar::new()
        .file("a", &[1; 2000], 0o644, T0)
        .file("b", b"b", 0o644, T0)
        .bytes();
    // inside b's header: tar-rs's read error
    let e = Stage::new().unpack(&cut[..512 * 5 + 100]).unwrap_err();
    let cause = e.source().expect("the read error is kept");
    assert!(
        cause.downcast_ref::<std::io::Error>().is_some(),
        "{cause:?}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");

    let bad_mode = Tar::new().raw(EntryType::Regular, b"m", b"", b"x").bytes();
    let mut bad_mode = bad_mode;
    bad_mode[100..108].copy_from_slice(b"zzzzzzz\0");
    let mut h = Header::from_byte_slice(&bad_mode[..512]).clone();
    h.set_cksum();
    bad_mode[..512].copy_from_slice(h.as_bytes());
    let e = Stage::new().unpack(&bad_mode).unwrap_err();
    assert!(matches!(e, Error::Entry { .. }), "{e:?}");
    let cause = e.source().expect("the header field's error is kept");
    assert!(
        e.to_string().contains(&format!("mode field: {cause}")),
        "{e}"
    );
}

#[test]
fn empty_and_garbage_input_are_errors() {
    assert_archive_error(Stage::new().unpack(b""));
    assert_archive_error(Stage::new().unpack(&[b'x'; 2048]));
}

// ---- special files and owners ----

#[test]
fn fifo_only_as_root() {
    let archive = Tar::new()
        .raw(EntryType::Fifo, b"pipe", b"", b"")
        .file("after", b"1", 0o644, T0)
        .gz();
    let s = Stage::new();
    let staged = s.unpack_with(&archive, false).unwrap();
    assert_eq!(staged.entries, 1);
    assert!(fs::symlink_metadata(s.path("pipe")).is_err());
    assert!(s.path("after").exists());

    if nix::unistd::geteuid().is_root() {
        let s = Stage::new();
        let staged = s.unpack_with(&archive, true).unwrap();
        assert_eq!(staged.entries, 2);
        let m = fs::symlink_metadata(s.path("pipe")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o7777, 0o644);
    }
}

#[test]
fn owners_by_name_then_id_when_root() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let mut t = Tar::new();
    let mut h = crate::util::tar_header(EntryType::Regular, 0o644, T0, 1);
    h.set_uid(12345);
    h.set_gid(12345);
    h.set_username("root").unwrap();
    h.set_groupname("root").unwrap();
    t.0.append_data(&mut h, "by-name", &b"1"[..]).unwrap();
    let mut h = crate::util::tar_header(EntryType::Directory, 0o755, T0, 0);
    h.set_uid(4321);
    h.set_gid(4322);
    h.set_username("no-such-user-stretcher").unwrap();
    h.set_groupname("no-such-group-stretcher").unwrap();
    t.0.append_data(&mut h, "by-id/", &b""[..]).unwrap();
    let s = Stage::new();
    s.unpack_with(&t.gz(), true).unwrap();
    let m = fs::metadata(s.path("by-name")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
    let m = fs::metadata(s.path("by-id")).unwrap();
    assert_eq!((m.uid(), m.gid()), (4321, 4322));
}

#[test]
fn gnu_sparse_file() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("sparse");
    let f = fs::File::create(&path).unwrap();
    f.set_len(3 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", (3 << 20) - 3).unwrap();
    drop(f);
    let mut t = Tar::new();
    t.0.sparse(true);
    t.0.append_path_with_name(&path, "sparse").unwrap();
    let data = t.bytes();
    eprintln!(
        "sparse archive: {} bytes (3 MiB if this filesystem has no holes)",
        data.len()
    );
    let s = Stage::new();
    s.unpack(&gz(&data)).unwrap();
    let got = fs::read(s.path("sparse")).unwrap();
    assert_eq!(got.len(), 3 << 20);
    assert_eq!(&got[1 << 20..(1 << 20) + 6], b"middle");
    assert_eq!(&got[got.len() - 3..], b"end");
    assert!(got[..1 << 20].iter().all(|&b| b == 0));
}

// ---- .tar.zst and the unpack-time quick check ----

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn small_tar(files: &[(&str, &[u8], u32, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode, mtime) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(*mtime);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn tar_zst_is_recognised_by_content() {
    let st = Stage::new();
    let tar = small_tar(&[("a/b.txt", b"zstd!", 0o644, 1_600_000_000)]);
    st.unpack(&zstd(&tar)).unwrap();
    assert_eq!(fs::read(st.path("a/b.txt")).unwrap(), b"zstd!");
    // a cut zstd stream is an error, never a shorter tree
    let z = zstd(&tar);
    let st = Stage::new();
    assert!(st.unpack(&z[..z.len() - 3]).is_err());
}

#[test]
fn unchanged_files_are_listed_not_written() {
    let st = Stage::new();
    let dest = st.tmp.path().join("dest");
    let mtime = 1_600_000_000;
    let put = |rel: &str, data: &[u8], mode: u32, mtime: i64| {
        let p = dest.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        filetime::set_file_mtime(&p, filetime::FileTime::from_unix_time(mtime, 0)).unwrap();
    };
    put("same.txt", b"same", 0o644, mtime);
    put("older.txt", b"diff", 0o644, mtime - 1);
    put("mode.txt", b"mode", 0o600, mtime);
    put("real/in.txt", b"in", 0o644, mtime);
    // a file reached through a symlinked directory in dest is never reused
    std::os::unix::fs::symlink("real", dest.join("via")).unwrap();
    let tar = small_tar(&[
        ("same.txt", b"same", 0o644, mtime as u64),
        ("older.txt", b"diff", 0o644, mtime as u64),
        ("mode.txt", b"mode", 0o644, mtime as u64),
        ("via/in.txt", b"in", 0o644, mtime as u64),
        ("new.txt", b"new", 0o644, mtime as u64),
    ]);
    let opts = UnpackOptions {
        same_owner: false,
        label: "t".into(),
        link_unchanged: false,
        list_written: false,
        digests_from_table: false,
    };
    let mut probe = stretcher::sync::DestProbe::new(&dest, true);
    let staged = unpack(&gz(&tar)[..], &st.into, &opts, Some(&mut probe)).unwrap();
    // the unchanged file is listed, not written; everything else is written
    assert!(!st.path("same.txt").exists());
    assert_eq!(staged.reused.paths(), vec![PathBuf::from("same.txt")]);
    assert_eq!(
        staged.reused.get(Path::new("same.txt")),
        Some(&stretcher::sync::Kept {
            size: 4,
            mtime,
            mode: 0o644,
            owner: None
        })
    );
    for (rel, data) in [
        ("older.txt", "diff"),
        ("mode.txt", "mode"),
        ("via/in.txt", "in"),
        ("new.txt", "new"),
    ] {
        assert_eq!(fs::read_to_string(st.path(rel)).unwrap(), data, "{rel}");
    }
    // dest itself was only read
    assert_eq!(fs::read_to_string(dest.join("older.txt")).unwrap(), "diff");
}

/// Files are finished on a writer thread beside the parser (`extract/writer.rs`): the
/// tree, its listing and its digests are still those of writing in archive order. A
/// large file still being written when a later member replaces it (by a file, a
/// directory, a symlink), or when a hard link names it, never leaves its own listing
/// or digest behind.
#[test]
fn files_finished_beside_the_parser_keep_the_archive_order() {
    use sha2::Digest as _;
    let s = Stage::new();
    let big = |seed: u8| -> Vec<u8> {
        (0..900_000u32)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    };
    let mut tar = Tar::new().dir("d/", 0o755, T0);
    for i in 0..300 {
        tar = tar.file(
            &format!("d/f{i:03}"),
            format!("file {i}\n").as_bytes(),
            0o640,
            T0 + i,
        );
    }
    let tar = tar
        .file("twice", &big(1), 0o644, T0)
        .file("twice", b"small, later", 0o600, T0 + 1)
        .file("dir-later", &big(2), 0o644, T0)
        .dir("dir-later/", 0o750, T0 + 2)
        .file("dir-later/in", b"inside", 0o644, T0)
        .file("link-later", &big(3), 0o644, T0)
        .symlink("link-later", "twice")
        .file("target", &big(4), 0o604, T0 + 3)
        .link(EntryType::Link, "hard", "target")
        .file("last", &big(5), 0o644, T0 + 4)
        .gz();
    let opts = UnpackOptions {
        same_owner: false,
        label: "file:///test/app.tar.gz".into(),
        link_unchanged: false,
        list_written: true,
        digests_from_table: false,
    };
    let staged = unpack(&tar[..], &s.into, &opts, None).unwrap();
    assert_eq!(fs::read(s.path("twice")).unwrap(), b"small, later");
    assert_eq!(mode(&s.path("twice")), 0o600);
    assert_eq!(fs::read(s.path("dir-later/in")).unwrap(), b"inside");
    assert_eq!(mode(&s.path("dir-later")), 0o750);
    assert_eq!(
        fs::read_link(s.path("link-later")).unwrap(),
        Path::new("twice")
    );
    assert_eq!(fs::read(s.path("hard")).unwrap(), big(4));
    assert_eq!(fs::read(s.path("last")).unwrap(), big(5));
    assert_eq!(mtime(&s.path("last")), secs(T0 + 4));
    for i in 0..300 {
        let p = s.path(&format!("d/f{i:03}"));
        assert_eq!(fs::read(&p).unwrap(), format!("file {i}\n").as_bytes());
        assert_eq!((mode(&p), mtime(&p)), (0o640, secs(T0 + i)));
    }
    // The hard link: listings are not kept (the sync walks staging instead).
    assert!(staged.written.is_none());
    // Every regular file's digest is its final content's; none for what is no file.
    let mut files = 0;
    for e in walkdir::WalkDir::new(&s.into).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&s.into).unwrap();
        let key = rel.as_os_str().as_bytes();
        if e.file_type().is_file() {
            let want: [u8; 32] = sha2::Sha256::digest(fs::read(e.path()).unwrap()).into();
            assert_eq!(staged.digests.get(key), Some(&want), "{rel:?}");
            files += 1;
        } else {
            assert_eq!(staged.digests.get(key), None, "{rel:?}");
        }
    }
    assert_eq!(files, 300 + 5);
    assert_eq!(staged.digests.len(), files);

    // Without a hard link the listing is kept: each path once, as it is on disk.
    let s = Stage::new();
    let tar = Tar::new()
        .file("twice", &big(1), 0o644, T0)
        .file("twice", b"small, later", 0o600, T0 + 1)
        .file("dir-later", &big(2), 0o644, T0)
        .dir("dir-later/", 0o750, T0 + 2)
        .file("dir-later/in", b"inside", 0o644, T0)
        .file("link-later", &big(3), 0o644, T0)
        .symlink("link-later", "twice")
        .file("last", &big(5), 0o644, T0 + 4)
        .gz();
    let staged = unpack(&tar[..], &s.into, &opts, None).unwrap();
    let mut listed: Vec<(String, u64, u32)> = (staged.written.unwrap().iter())
        .map(|e| {
            let p = String::from_utf8(e.path.to_vec()).unwrap();
            (p, e.meta.size, e.meta.mode & 0o7777)
        })
        .collect();
    listed.sort();
    let on_disk = |rel: &str| {
        let m = fs::symlink_metadata(s.path(rel)).unwrap();
        let size = if m.is_file() { m.len() } else { 0 };
        (rel.to_string(), size, m.mode() & 0o7777)
    };
    let want: Vec<_> = ["dir-later", "dir-later/in", "last", "link-later", "twice"]
        .iter()
        .map(|r| on_disk(r))
        .collect();
    assert_eq!(listed, want);
    assert_eq!(staged.digests.len(), 3);
}
