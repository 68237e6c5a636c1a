//! `stretcher pack` (SPEC §18): the packed archive GNU tar and bsdtar extract to the
//! source tree (exit 0, nothing on stderr), its reproducible bytes, its table read back
//! against the files (every file's member decompressed alone), `--exclude`, and the
//! manifest it writes deployed (as a full download) and redeployed; a corrupt member
//! refused by a cold deploy.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use filetime::FileTime;
use sha2::{Digest, Sha256};
use stretcher::toc::{Codec, Footer, Kind, Table, FOOTER_MAX};

use crate::util::{redeploy, stretcher, Scratch};

/// Everything an extraction must reproduce of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File {
        sha: [u8; 32],
        mode: u32,
        mtime: (i64, i64),
        /// The first path of this inode in walk order (hard links share it).
        inode_first: PathBuf,
    },
    Dir {
        mode: u32,
        mtime: (i64, i64),
    },
    Link {
        target: PathBuf,
        mtime: (i64, i64),
    },
}

/// Every path below `root` (root itself as ""), never following links.
fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut map = BTreeMap::new();
    let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let md = e.path().symlink_metadata().unwrap();
        let mtime = (md.mtime(), md.mtime_nsec());
        let node = if md.file_type().is_symlink() {
            Node::Link {
                target: fs::read_link(e.path()).unwrap(),
                mtime,
            }
        } else if md.is_dir() {
            Node::Dir {
                mode: md.permissions().mode() & 0o7777,
                mtime,
            }
        } else {
            Node::File {
                sha: Sha256::digest(fs::read(e.path()).unwrap()).into(),
                mode: md.permissions().mode() & 0o7777,
                mtime,
                inode_first: inodes.entry(md.ino()).or_insert(rel.clone()).clone(),
            }
        };
        map.insert(rel, node);
    }
    map
}

fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    filetime::set_symlink_file_times(
        p,
        FileTime::from_unix_time(secs, nanos),
        FileTime::from_unix_time(secs, nanos),
    )
    .unwrap();
}

/// A tree with what a packer can get wrong: files below, at and above 64 KiB, empty
/// files and directories, names past ustar's 100 and 255 bytes, a non-UTF-8 name,
/// sub-second mtimes, odd modes, symlinks (one dangling), hard links across
/// directories.
fn make_source(root: &Path) {
    fs::create_dir_all(root.join("app/lib/deep")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("cache")).unwrap();
    let mut seed = 7u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b"abcdefghij \n{}();"[(seed >> 59) as usize % 16]
            })
            .collect()
    };
    for i in 0..40 {
        fs::write(
            root.join(format!("app/lib/mod{i:02}.rs")),
            bytes(300 + i * 97),
        )
        .unwrap();
    }
    fs::write(root.join("app/exact64k.bin"), bytes(64 << 10)).unwrap();
    fs::write(root.join("app/big.bin"), bytes(300_000)).unwrap();
    fs::write(root.join("app/empty.txt"), b"").unwrap();
    fs::write(root.join("app/lib/deep/x.log"), b"log\n").unwrap();
    fs::write(root.join("cache/c.tmp"), b"tmp\n").unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("secret"), b"s\n").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let long_dir = root.join("d".repeat(120));
    fs::create_dir(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(90)), b"split name\n").unwrap();
    fs::write(long_dir.join("g".repeat(200)), b"pax name\n").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9 name")), b"latin-1\n").unwrap();
    fs::hard_link(root.join("app/lib/mod01.rs"), root.join("hard.rs")).unwrap();
    fs::hard_link(root.join("app/big.bin"), root.join("empty/big-again.bin")).unwrap();
    symlink("app/lib", root.join("lib")).unwrap();
    symlink("nowhere/at/all", root.join("dangling")).unwrap();
    symlink("l".repeat(150), root.join("long-target")).unwrap();
    // mtimes last, deepest first: whole seconds, sub-second ones, symlinks too.
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap().path().to_path_buf())
        .collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        let nanos = if i % 3 == 0 {
            0
        } else {
            (i as u32) * 10_000_019 % 1_000_000_000
        };
        set_mtime(p, 1_600_000_000 + i as i64 * 3600, nanos);
    }
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o711)).unwrap();
    set_mtime(root.join("empty").as_path(), 1_500_000_000, 5);
    set_mtime(root, 1_550_000_000, 123_456_789);
}

fn pack(s: &Scratch, src: &Path, out: &Path, extra: &[&str]) -> String {
    let run = stretcher()
        .arg("pack")
        .arg(src)
        .arg("-o")
        .arg(out)
        .args(extra)
        .cwd(&s.work())
        .limit(Duration::from_secs(60))
        .run();
    run.assert_ok();
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    run.stdout
}

/// `tool -xf archive -C into`: exit 0 and nothing on stderr.
fn extract(tool: &str, archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let out = Command::new(tool)
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool}: {out:?}");
    assert!(
        out.stderr.is_empty(),
        "{tool} said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gnu_tar_and_bsdtar_extract_packed_archives_to_the_source_tree() {
    let s = Scratch::new();
    let src = s.path().join("src");
    make_source(&src);
    let want = tree(&src);
    for ext in ["tar.gz", "tar.zst"] {
        let archive = s.path().join(format!("app.{ext}"));
        pack(&s, &src, &archive, &[]);
        for tool in ["tar", "bsdtar"] {
            let into = s.path().join(format!("{tool}-{ext}"));
            extract(tool, &archive, &into);
            let mut got = tree(&into);
            if tool == "bsdtar" {
                // bsdtar 3.6 sets the mode of `./` (the directory it extracts into)
                // but not its mtime: the root's mode is compared, its mtime not.
                if let Some(Node::Dir { mtime, .. }) = got.get_mut(Path::new("")) {
                    *mtime = (1_550_000_000, 123_456_789);
                }
            }
            assert_eq!(got.len(), want.len(), "{tool} {ext}: {:?}", got.keys());
            for (path, node) in &want {
                assert_eq!(
                    got.get(path),
                    Some(node),
                    "{tool} {ext}: {}",
                    path.display()
                );
            }
        }
        // Owners are 0:0 `root` without --owner (as tar --owner=0 --group=0).
        let list = Command::new("tar")
            .arg("-tvf")
            .arg(&archive)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(list.lines().all(|l| l.contains(" root/root ")), "{list}");
        assert!(list.starts_with("drwx--x--x root/root"), "{list}");
        // The first entry is ./, then GNU tar's --sort=name walk.
        let names = Command::new("tar")
            .arg("-tf")
            .arg(&archive)
            .output()
            .unwrap();
        let names: Vec<&[u8]> = names
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(names[0], b"./");
        assert_eq!(names[1], b"./app/");
        assert_eq!(names[2], b"./app/big.bin");
    }
}

#[test]
fn the_same_tree_packs_to_the_same_bytes() {
    let s = Scratch::new();
    let src = s.path().join("src");
    make_source(&src);
    for ext in ["tar.gz", "tar.zst"] {
        let a = s.path().join(format!("a.{ext}"));
        let b = s.path().join(format!("b.{ext}"));
        pack(&s, &src, &a, &[]);
        pack(&s, &src, &b, &[]);
        assert!(
            fs::read(&a).unwrap() == fs::read(&b).unwrap(),
            "{ext} differs"
        );
    }
}

#[test]
fn the_table_points_at_every_files_bytes() {
    let s = Scratch::new();
    let src = s.path().join("src");
    make_source(&src);
    for (ext, codec) in [("tar.gz", Codec::Gzip), ("tar.zst", Codec::Zstd)] {
        let archive = s.path().join(format!("t.{ext}"));
        let said = pack(&s, &src, &archive, &[]);
        let bytes = fs::read(&archive).unwrap();
        let tail = &bytes[bytes.len().saturating_sub(FOOTER_MAX)..];
        let footer = Footer::parse(tail, bytes.len() as u64).unwrap();
        assert_eq!(footer.codec, codec);
        let first = format!(
            "{}: {} bytes: members {}, table {}, footer {};",
            archive.display(),
            bytes.len(),
            footer.table_offset,
            footer.table_len,
            codec.footer_len()
        );
        assert!(said.starts_with(&first), "{said}");
        assert!(
            said.contains(&format!(
                "\nchecksum: {}\n",
                hex::encode(Sha256::digest(&bytes))
            )),
            "{said}"
        );
        let start = footer.table_offset as usize;
        let member = &bytes[start..start + footer.table_len as usize];
        let table = Table::from_member(member, &footer).unwrap();
        let want = tree(&src);
        assert_eq!(table.entries.len(), want.len());
        assert_eq!(table.entries[0].path, b".");
        assert_eq!(table.entries[0].mode, 0o711);
        assert_eq!(
            (table.entries[0].mtime.secs, table.entries[0].mtime.nanos),
            (1_550_000_000, 123_456_789)
        );
        let mut members = std::collections::BTreeSet::new();
        for e in &table.entries {
            let rel = if e.path == b"." {
                PathBuf::new()
            } else {
                PathBuf::from(OsStr::from_bytes(&e.path))
            };
            let node = &want[&rel];
            match (&e.kind, node) {
                (
                    Kind::File { member, sha256 },
                    Node::File {
                        sha, mode, mtime, ..
                    },
                ) => {
                    assert_eq!(sha256, sha, "{}", rel.display());
                    assert_eq!(e.mode, *mode);
                    assert_eq!((e.mtime.secs, i64::from(e.mtime.nanos)), *mtime);
                    // The member alone decompresses to tar bytes holding the file.
                    let m = &bytes[member.offset as usize..(member.offset + member.len) as usize];
                    let raw = codec.decompress_member(m, member.raw_len).unwrap();
                    assert_eq!(raw.len() as u64, member.raw_len);
                    let data =
                        &raw[member.data_offset as usize..(member.data_offset + e.size) as usize];
                    assert_eq!(&Sha256::digest(data)[..], &sha[..], "{}", rel.display());
                    assert_eq!(data, &fs::read(src.join(&rel)).unwrap()[..]);
                    members.insert((member.offset, member.len));
                }
                (Kind::HardLink { target }, Node::File { inode_first, .. }) => {
                    let first = if target == &e.path {
                        None
                    } else {
                        Some(PathBuf::from(OsStr::from_bytes(target)))
                    };
                    assert!(first.is_some(), "{}", rel.display());
                    assert_eq!(want[&first.unwrap()], want[inode_first]);
                }
                (Kind::Dir, Node::Dir { mode, .. }) => assert_eq!(e.mode, *mode),
                (Kind::Symlink { target }, Node::Link { target: t, .. }) => {
                    assert_eq!(target, t.as_os_str().as_bytes())
                }
                (k, n) => panic!("{}: table {k:?}, tree {n:?}", rel.display()),
            }
        }
        // Members follow each other and end at the table.
        let mut at = 0;
        for (offset, len) in &members {
            assert_eq!(*offset, at);
            at += len;
        }
        // The tar end blocks share the last file member or follow it in a member of
        // their own: either way the members end at the table's offset.
        assert!(at <= footer.table_offset);
        // Small files share members of at most 64 KiB of content; big ones are alone.
        assert!(members.len() >= 4, "{members:?}");
    }
}

#[test]
fn excludes_leave_paths_out() {
    let s = Scratch::new();
    let src = s.path().join("src");
    make_source(&src);
    let archive = s.path().join("x.tar.gz");
    pack(
        &s,
        &src,
        &archive,
        &[
            "--exclude",
            "*.log",
            "--exclude",
            "cache/",
            "--exclude",
            "/secret",
        ],
    );
    let into = s.path().join("x");
    extract("tar", &archive, &into);
    assert!(!into.join("app/lib/deep/x.log").exists());
    assert!(into.join("app/lib/deep").is_dir());
    assert!(!into.join("cache").exists());
    assert!(!into.join("secret").exists());
    assert!(into.join("run.sh").is_file());
}

#[test]
fn a_packed_manifest_deploys_as_a_full_download_and_redeploys_unchanged() {
    // Its members decompressed on every core (unpack/members.rs), for either codec.
    for ext in ["tar.gz", "tar.zst"] {
        deploy_packed(ext);
    }
}

fn deploy_packed(ext: &str) {
    let s = Scratch::new();
    let src = s.path().join("src");
    make_source(&src);
    fs::create_dir(s.path().join("out")).unwrap();
    let archive = s.path().join(format!("out/app.{ext}"));
    let manifest = s.path().join("app.yml");
    pack(
        &s,
        &src,
        &archive,
        &[
            "--manifest",
            manifest.to_str().unwrap(),
            "--dest",
            s.dest().to_str().unwrap(),
            "--dest-mode",
            "0755",
            "--serial",
            "3",
        ],
    );
    let text = fs::read_to_string(&manifest).unwrap();
    let bytes = fs::read(&archive).unwrap();
    assert!(text.contains(&format!("src: out/app.{ext}\n")), "{text}");
    assert!(
        text.contains(&format!(
            "checksum: {}\n",
            hex::encode(Sha256::digest(&bytes))
        )),
        "{text}"
    );
    assert!(text.contains(&format!("size: {}\n", bytes.len())), "{text}");
    let footer = Footer::parse(&bytes[bytes.len() - FOOTER_MAX..], bytes.len() as u64).unwrap();
    let table =
        &bytes[footer.table_offset as usize..(footer.table_offset + footer.table_len) as usize];
    assert!(
        text.contains(&format!(
            "toc: sha256:{}\n",
            hex::encode(Sha256::digest(table))
        )),
        "{text}"
    );
    let run = s.stretcher().arg(&manifest).run();
    run.assert_ok();
    let mut want = tree(&src);
    let mut got = tree(&s.dest());
    // dest's own mode is the manifest's (its mtime the deploy's, as for any archive).
    assert!(matches!(
        got.remove(Path::new("")),
        Some(Node::Dir { mode: 0o755, .. })
    ));
    want.remove(Path::new(""));
    // The sync is rsync -a (SPEC §6, no -H): hard links arrive as separate files.
    let unlinked = |t: BTreeMap<PathBuf, Node>| -> BTreeMap<PathBuf, Node> {
        t.into_iter()
            .map(|(p, n)| match n {
                Node::File {
                    sha, mode, mtime, ..
                } => {
                    let first = p.clone();
                    (
                        p,
                        Node::File {
                            sha,
                            mode,
                            mtime,
                            inode_first: first,
                        },
                    )
                }
                n => (p, n),
            })
            .collect()
    };
    let (got, want) = (unlinked(got), unlinked(want));
    assert_eq!(got.len(), want.len(), "{:?}", got.keys());
    for (path, node) in &want {
        assert_eq!(got.get(path), Some(node), "{}", path.display());
    }
    redeploy(&s, &manifest);
    // Nothing else was left beside the archive or the manifest.
    let names: Vec<_> = fs::read_dir(s.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![OsStr::new(&format!("app.{ext}")).to_os_string()]
    );
}

#[test]
fn a_corrupt_member_fails_a_cold_deploy_before_dest_is_made() {
    // The manifest vouches for the tampered bytes (its checksum is theirs), so only the
    // member's own checks can refuse them: its data, and its CRC-32 (gzip) or content
    // checksum (zstd), which a worker verifies, for a member in a batch of small files
    // and for one larger than an output chunk.
    let s = Scratch::new();
    let src = s.path().join("src");
    make_source(&src);
    let cases = [("tar.gz", 8), ("tar.zst", 4)]
        .into_iter()
        .flat_map(|(ext, sum)| {
            ["app/lib/mod05.rs", "app/big.bin"]
                .into_iter()
                .flat_map(move |file| [(ext, file, None), (ext, file, Some(sum))])
        });
    for (ext, file, from_end) in cases {
        let archive = s.path().join(format!("bad.{ext}"));
        pack(&s, &src, &archive, &[]);
        let mut bytes = fs::read(&archive).unwrap();
        let tail = &bytes[bytes.len() - FOOTER_MAX..];
        let footer = Footer::parse(tail, bytes.len() as u64).unwrap();
        let start = footer.table_offset as usize;
        let table =
            Table::from_member(&bytes[start..start + footer.table_len as usize], &footer).unwrap();
        let entry = table
            .entries
            .iter()
            .find(|e| e.path == file.as_bytes())
            .unwrap();
        let Kind::File { member, .. } = &entry.kind else {
            panic!("{file}: {:?}", entry.kind)
        };
        // A byte in the middle of the member's compressed data, or of its checksum.
        let at = match from_end {
            None => member.offset + member.len / 2,
            Some(back) => member.offset + member.len - back,
        };
        bytes[at as usize] ^= 0x20;
        fs::write(&archive, &bytes).unwrap();
        let manifest = s.manifest(
            "bad.yml",
            &format!(
                "src: file://{}\nchecksum: {}\ndest: {}\n",
                archive.display(),
                hex::encode(Sha256::digest(&bytes)),
                s.dest().display()
            ),
        );
        let run = s.stretcher().arg(&manifest).run();
        run.assert_fail().assert_log("data is corrupt");
        assert!(
            !s.dest().exists(),
            "{ext} {file} {from_end:?}: dest was made"
        );
        // Nothing was left beside dest.
        assert_eq!(
            s.leftovers(),
            Vec::<String>::new(),
            "{ext} {file} {from_end:?}"
        );
    }
}

#[test]
fn bad_outputs_and_manifests_are_refused_before_anything_is_written() {
    let s = Scratch::new();
    let src = s.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    for (args, says) in [
        (vec!["-o", "x.tar"], "must end in .tar.gz"),
        (
            vec!["-o", "x.tar.gz", "--manifest", "m.yml", "--dest", "/etc"],
            "dest",
        ),
        (
            vec![
                "-o",
                "x.tar.gz",
                "--manifest",
                "m.yml",
                "--dest",
                "/srv/app",
                "--strategy",
                "copy",
            ],
            "invalid strategy",
        ),
        (
            vec![
                "-o",
                "x.tar.gz",
                "--manifest",
                "m.yml",
                "--dest",
                "/srv/app",
                "--dest-mode",
                "999",
            ],
            "dest_mode",
        ),
    ] {
        let run = stretcher()
            .arg("pack")
            .arg(&src)
            .args(&args)
            .cwd(&s.work())
            .run();
        assert_eq!(run.code(), 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        let left: Vec<_> = fs::read_dir(s.work()).unwrap().collect();
        assert!(left.is_empty(), "{args:?}: {left:?}");
    }
    let mut buf = Vec::new();
    fs::File::open(src.join("a"))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert_eq!(buf, b"a");
}

#[test]
fn owners_are_root_unless_kept_with_owner() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: --owner needs files of other owners (root only)");
        return;
    }
    let s = Scratch::new();
    let src = s.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("theirs"), b"x").unwrap();
    std::os::unix::fs::lchown(src.join("theirs"), Some(54321), Some(54322)).unwrap();
    for (extra, want) in [
        (&[][..], " root/root "),
        (&["--owner"][..], " 54321/54322 "),
    ] {
        let archive = s.path().join("o.tar.gz");
        pack(&s, &src, &archive, extra);
        let list = Command::new("tar")
            .arg("-tvf")
            .arg(&archive)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout).into_owned();
        let line = list.lines().find(|l| l.ends_with("./theirs")).unwrap();
        assert!(line.contains(want), "{extra:?}: {list}");
    }
}
