//! The update that downloads only what changed (SPEC §18), through the real binary:
//! archives made by `stretcher pack`, served by nginx from Debian (started here on
//! 127.0.0.1 with its own prefix, its access log read for the bytes it sent, stopped
//! by its pid), by the S3 server of `s3.rs` (the bytes it announced) and the GCS
//! emulator of `gcs.rs` (behind a proxy here that counts them), by the tests' own HTTP
//! server that ignores `Range` or answers a range without end, and read from
//! `file://`. A delta deploy of v2 onto v1 equals a full deploy of v2 (content, modes,
//! mtimes to the nanosecond, link targets), fetches within 1.2 × the changed and
//! added files' members plus the table, and a redeploy changes nothing; a server
//! without ranges, a wrong `toc`, a tampered member, a malformed table that matches
//! `toc` and an endless range answer behave as SPEC §18 says; another account that
//! owns dest and plants symlinks to root-only files cannot make it read or write
//! through them (SPEC §17).

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stretcher::toc::{Footer, Kind, Table, FOOTER_MAX};

use crate::http::TestServer;
use crate::util::*;

/// nginx serving `root` on 127.0.0.1, its access log in its own prefix.
struct Nginx {
    child: Child,
    port: u16,
    prefix: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path) -> Nginx {
        let prefix = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let user = if nix::unistd::geteuid().is_root() {
                "user root root;"
            } else {
                ""
            };
            let conf = format!(
                "{user}\ndaemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log {p}/access.log bytes;\n  log_format bytes '$status $bytes_sent $request_uri $http_range';\n\
                 client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fcgi;\n\
                 uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
                 server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
                p = prefix.path().display(),
                root = root.display()
            );
            // `log_format` must come before its use.
            let conf = conf.replace(
                &format!(
                    "  access_log {}/access.log bytes;\n  log_format bytes '$status $bytes_sent $request_uri $http_range';\n",
                    prefix.path().display()
                ),
                &format!(
                    "  log_format bytes '$status $bytes_sent $request_uri $http_range';\n  access_log {}/access.log bytes;\n",
                    prefix.path().display()
                ),
            );
            std::fs::write(prefix.path().join("nginx.conf"), conf).unwrap();
            let mut child = Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(prefix.path())
                .arg("-c")
                .arg(prefix.path().join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx (Debian's nginx-light) is required by the delta tests");
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx {
                        child,
                        port,
                        prefix,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "nginx did not start: {}",
            std::fs::read_to_string(prefix.path().join("error.log")).unwrap_or_default()
        );
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Bytes sent for `name` since the log was last cleared, and the requests.
    fn served(&self, name: &str) -> (u64, usize) {
        let log =
            std::fs::read_to_string(self.prefix.path().join("access.log")).unwrap_or_default();
        let want = format!("/{name}");
        log.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let (_status, bytes, uri) = (f.next()?, f.next()?, f.next()?);
                (uri == want).then(|| bytes.parse::<u64>().unwrap())
            })
            .fold((0, 0), |(b, n), x| (b + x, n + 1))
    }

    fn clear_log(&self) {
        let _ = std::fs::write(self.prefix.path().join("access.log"), "");
        // nginx keeps writing at its offset in the same file: truncation is enough
        // for an O_APPEND log.
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// Writes v1: 300 files (some small, some above 64 KiB), a subdirectory, symlinks, a
/// log file the excludes keep out.
fn make_v1(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    for i in 0..300u32 {
        let len = if i % 30 == 0 {
            200_000 + i as usize
        } else {
            500 + (i as usize * 37) % 3000
        };
        // Little repetition: sizes after compression as real files have them.
        let mut x = i.wrapping_mul(2_654_435_761) | 1;
        let data: Vec<u8> = (0..len)
            .map(|j| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if j % 4 == 0 {
                    (x % 26) as u8 + b'a'
                } else {
                    b' ' + (x % 8) as u8
                }
            })
            .collect();
        let name = if i % 3 == 0 {
            format!("sub/f{i:03}")
        } else {
            format!("f{i:03}")
        };
        std::fs::write(dir.join(name), data).unwrap();
    }
    std::fs::write(dir.join("sub/deeper/conf"), b"v = 1\n").unwrap();
    std::os::unix::fs::symlink("f001", dir.join("link")).unwrap();
    std::os::unix::fs::symlink("sub/deeper", dir.join("dirlink")).unwrap();
    let t = filetime::FileTime::from_unix_time(1_700_000_000, 123_456_789);
    for e in walkdir::WalkDir::new(dir).contents_first(true) {
        let e = e.unwrap();
        if !e.path_is_symlink() {
            filetime::set_file_mtime(e.path(), t).unwrap();
        }
    }
}

/// v2 from v1: 3 files changed (one of the same size and mtime), 2 added, 2 removed,
/// a mode change, a touched file (same content, new mtime), a retargeted symlink.
fn make_v2(v1: &Path, v2: &Path) -> Vec<&'static str> {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(v1)
        .arg(v2)
        .status()
        .unwrap();
    assert!(ok.success());
    let keep = filetime::FileTime::from_unix_time(1_700_000_000, 123_456_789);
    std::fs::write(v2.join("f002"), b"changed two").unwrap();
    let mut same = std::fs::read(v2.join("f004")).unwrap();
    same[10] ^= 0xff;
    std::fs::write(v2.join("f004"), &same).unwrap();
    filetime::set_file_mtime(v2.join("f004"), keep).unwrap();
    let mut big = std::fs::read(v2.join("sub/f030")).unwrap();
    big[100_000] ^= 1;
    std::fs::write(v2.join("sub/f030"), &big).unwrap();
    std::fs::write(v2.join("new-a"), b"added").unwrap();
    std::fs::write(v2.join("sub/deeper/new-b"), vec![9u8; 70_000]).unwrap();
    std::fs::remove_file(v2.join("f005")).unwrap();
    std::fs::remove_file(v2.join("sub/f006")).unwrap();
    std::fs::set_permissions(v2.join("f007"), std::fs::Permissions::from_mode(0o600)).unwrap();
    filetime::set_file_mtime(
        v2.join("f008"),
        filetime::FileTime::from_unix_time(1_600_000_000, 5),
    )
    .unwrap();
    std::fs::remove_file(v2.join("link")).unwrap();
    std::os::unix::fs::symlink("f010", v2.join("link")).unwrap();
    for d in [v2.to_path_buf(), v2.join("sub"), v2.join("sub/deeper")] {
        filetime::set_file_mtime(d, keep).unwrap();
    }
    // The files whose content is new: their members are what a delta fetches.
    vec!["f002", "f004", "sub/f030", "new-a", "sub/deeper/new-b"]
}

/// Packs `dir` into `out` with its manifest (`src` given), dest `dest`.
fn pack(dir: &Path, out: &Path, manifest: &Path, src: &str, dest: &Path, extra: &[&str]) {
    let run = stretcher()
        .arg("pack")
        .arg(dir)
        .arg("-o")
        .arg(out)
        .arg("--manifest")
        .arg(manifest)
        .arg("--src")
        .arg(src)
        .arg("--dest")
        .arg(dest)
        .args(extra)
        .run();
    run.assert_ok();
}

/// A manifest with `excludes` added.
fn with_excludes(manifest: &Path) {
    let mut text = std::fs::read_to_string(manifest).unwrap();
    text.push_str("excludes: [\"*.log\"]\n");
    std::fs::write(manifest, text).unwrap();
}

/// The table of a packed archive, read as a reader would.
fn table_of(archive: &Path) -> (Table, Footer) {
    let bytes = std::fs::read(archive).unwrap();
    let tail = &bytes[bytes.len().saturating_sub(FOOTER_MAX)..];
    let footer = Footer::parse(tail, bytes.len() as u64).unwrap();
    let start = footer.table_offset as usize;
    let member = &bytes[start..start + footer.table_len as usize];
    (Table::from_member(member, &footer).unwrap(), footer)
}

/// The compressed bytes of the members holding `files`, plus the table and footer.
fn delta_bound(archive: &Path, files: &[&str]) -> u64 {
    let (table, footer) = table_of(archive);
    let mut members = HashSet::new();
    for e in &table.entries {
        if let Kind::File { member, .. } = &e.kind {
            if files.iter().any(|f| f.as_bytes() == &e.path[..]) {
                members.insert((member.offset, member.len));
            }
        }
    }
    assert_eq!(!members.is_empty(), !files.is_empty());
    members.iter().map(|m| m.1).sum::<u64>() + footer.table_len + FOOTER_MAX as u64
}

/// Every node below `root`: type, content or target, mode, owner, mtime (ns).
fn tree(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, String> {
    let mut map = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        if skip.iter().any(|s| rel.to_string_lossy().ends_with(s)) {
            continue;
        }
        let md = e.path().symlink_metadata().unwrap();
        let what = if md.file_type().is_symlink() {
            format!("link {}", std::fs::read_link(e.path()).unwrap().display())
        } else if md.is_dir() {
            format!(
                "dir {:o} {}:{} {}.{}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                md.mtime(),
                md.mtime_nsec()
            )
        } else {
            let data = std::fs::read(e.path()).unwrap();
            format!(
                "file {:o} {}:{} {}.{} {}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                md.mtime(),
                md.mtime_nsec(),
                sha1_bytes(&data)
            )
        };
        map.insert(rel, what);
    }
    map
}

/// The record's `downloaded_bytes` of the last deploy to `dest`.
fn downloaded(s: &Scratch, dest: &Path) -> u64 {
    let dir = s.state_dir().join("deploys");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let rec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            if rec["dest"].as_str() == Some(dest.to_str().unwrap()) {
                return rec["downloaded_bytes"].as_u64().unwrap();
            }
        }
    }
    panic!("no record for {}", dest.display());
}

/// v1 and v2 packed into `served`, their manifests (src from `url`) beside them.
struct Release {
    v2_changed: Vec<&'static str>,
    m1: PathBuf,
    m2: PathBuf,
    archive2: PathBuf,
}

fn releases(s: &Scratch, served: &Path, url: impl Fn(&str) -> String, ext: &str) -> Release {
    let (v1, v2) = (s.path().join("v1"), s.path().join("v2"));
    make_v1(&v1);
    let changed = make_v2(&v1, &v2);
    let (a1, a2) = (
        served.join(format!("v1.{ext}")),
        served.join(format!("v2.{ext}")),
    );
    let (m1, m2) = (s.path().join("m1.yml"), s.path().join("m2.yml"));
    pack(&v1, &a1, &m1, &url(&format!("v1.{ext}")), &s.dest(), &[]);
    pack(&v2, &a2, &m2, &url(&format!("v2.{ext}")), &s.dest(), &[]);
    with_excludes(&m1);
    with_excludes(&m2);
    Release {
        v2_changed: changed,
        m1,
        m2,
        archive2: a2,
    }
}

/// [`releases`] as .tar.gz, read from `file://` URLs.
fn file_releases(s: &Scratch) -> Release {
    let served = s.path().join("www");
    std::fs::create_dir(&served).unwrap();
    releases(
        s,
        &served,
        |n| format!("file://{}", served.join(n).display()),
        "tar.gz",
    )
}

/// A full deploy of `manifest` onto a fresh dest `name` (its `dest` replaced).
fn full_deploy(s: &Scratch, manifest: &Path, name: &str) -> PathBuf {
    full_deploy_by(s, manifest, name, &|| s.stretcher())
}

/// [`full_deploy`] with runs made by `run`.
fn full_deploy_by(
    s: &Scratch,
    manifest: &Path,
    name: &str,
    run: &dyn Fn() -> crate::util::Stretcher,
) -> PathBuf {
    // Beside the scratch's own dest's parent, which must hold no leftovers.
    std::fs::create_dir_all(s.path().join("other")).unwrap();
    let dest = s.path().join("other").join(name);
    let text = std::fs::read_to_string(manifest).unwrap().replace(
        &format!("dest: {}", s.dest().display()),
        &format!("dest: {}", dest.display()),
    );
    let m = s.manifest(&format!("{name}.yml"), &text);
    let run = run().arg(&m).run();
    run.assert_ok()
        .assert_log("downloading the whole archive: dest holds no tree");
    dest
}

/// v1 deployed, then v2 by delta (runs made by `run`), equal to a full deploy of v2;
/// the record's `downloaded_bytes` and the server's count of body bytes (`sent`: since
/// the start, for v2's archive) within 1.2 × the changed and added files' members +
/// the table; a redeploy changes nothing and fetches no member.
fn delta_through(
    s: &Scratch,
    r: &Release,
    url2: &str,
    run: &dyn Fn() -> crate::util::Stretcher,
    sent: &dyn Fn() -> u64,
) {
    run().arg(&r.m1).run().assert_ok();
    std::fs::write(s.dest().join("app.log"), b"runtime").unwrap();
    let before = sent();
    let deploy = run().arg(&r.m2).run();
    deploy
        .assert_ok()
        .assert_log(&format!("delta {url2}: "))
        .assert_log("bytes by range from");
    let served = sent() - before;
    let bound = delta_bound(&r.archive2, &r.v2_changed);
    let rec = downloaded(s, &s.dest());
    eprintln!("{url2}: record {rec} bytes, server {served}; members + table {bound}");
    for (what, n) in [("record", rec), ("server", served)] {
        assert!(
            n > 0 && n as f64 <= 1.2 * bound as f64,
            "{what}: {n} bytes, bound 1.2 × {bound}\n{}",
            deploy.stderr
        );
    }
    assert_eq!(std::fs::read(s.dest().join("app.log")).unwrap(), b"runtime");
    let full = full_deploy_by(s, &r.m2, "full", run);
    assert_eq!(
        tree(&s.dest(), &["app.log"]),
        tree(&full, &[]),
        "{}",
        deploy.stderr
    );
    let before = sent();
    redeploy_unchanged(s, &r.m2, |_| run()).assert_log("0 fetched");
    let again = sent() - before;
    assert!(again < bound, "{again}");
}

#[test]
fn a_delta_over_nginx_equals_a_full_deploy_and_fetches_only_the_changed_members() {
    for ext in ["tar.gz", "tar.zst"] {
        let s = Scratch::new();
        let served = s.path().join("www");
        std::fs::create_dir(&served).unwrap();
        let nginx = Nginx::start(&served);
        let r = releases(&s, &served, |n| nginx.url(n), ext);
        s.stretcher().arg(&r.m1).run().assert_ok();
        // The full download took its digests from the table: each is the content's.
        verify_content(&s);
        // Excluded: kept in dest through every deploy.
        std::fs::write(s.dest().join("app.log"), b"runtime").unwrap();
        nginx.clear_log();
        let run = s.stretcher().arg(&r.m2).run();
        run.assert_ok().assert_log("delta http://127.0.0.1");
        let (sent, requests) = nginx.served(&format!("v2.{ext}"));
        let bound = delta_bound(&r.archive2, &r.v2_changed);
        assert!(
            sent as f64 <= 1.2 * bound as f64,
            "{ext}: nginx sent {sent} bytes in {requests} requests, bound 1.2 × {bound}\n{}",
            run.stderr
        );
        let archive_len = std::fs::metadata(&r.archive2).unwrap().len();
        eprintln!("{ext}: nginx sent {sent} bytes in {requests} requests; members + table {bound}; archive {archive_len}");
        assert!(sent < archive_len / 4, "{sent} of {archive_len}");
        // The record says what was fetched (bodies; nginx counts headers too).
        let rec = downloaded(&s, &s.dest());
        assert!(rec > 0 && rec <= sent, "record {rec}, served {sent}");
        assert_eq!(std::fs::read(s.dest().join("app.log")).unwrap(), b"runtime");

        let full = full_deploy(&s, &r.m2, "full");
        assert_eq!(
            tree(&s.dest(), &["app.log"]),
            tree(&full, &[]),
            "{ext}:\n{}",
            run.stderr
        );
        // The delta's digests (the files it streamed were not hashed twice) are the
        // content's too.
        verify_content(&s);

        // Again: nothing changes (the delta finds every file as it is).
        nginx.clear_log();
        redeploy(&s, &r.m2).assert_log("0 fetched");
        let (again, _) = nginx.served(&format!("v2.{ext}"));
        assert!(again < bound, "{again}");
    }
}

/// `verify --content` of dest: every file's bytes are the indexed digest's (exit 0,
/// no difference; a wrong digest is a `changed PATH (content)` line and exit 1).
fn verify_content(s: &Scratch) {
    let run = stretcher()
        .args(["verify", "--content", "--state-dir"])
        .arg(s.state_dir())
        .arg(s.dest())
        .run();
    assert!(run.code() == 0 && run.stdout.is_empty(), "{run:?}");
}

/// The text of the log line that starts with `prefix`, after it.
fn line_after<'a>(log: &'a str, prefix: &str) -> &'a str {
    let at = log
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{log}"));
    log[at + prefix.len()..].lines().next().unwrap()
}

#[test]
fn dry_run_says_the_path_and_the_bytes_as_the_deploy_judges_dest() {
    let s = Scratch::new();
    let served = s.path().join("www");
    std::fs::create_dir(&served).unwrap();
    let nginx = Nginx::start(&served);
    let r = releases(&s, &served, |n| nginx.url(n), "tar.gz");
    s.stretcher().arg(&r.m1).run().assert_ok();
    // A file v2 leaves as it is, changed in dest with its size and mtime kept: the
    // deploy trusts the index's digest of it (SPEC §21), and so must the dry run.
    let f = s.dest().join("f011");
    let md = std::fs::metadata(&f).unwrap();
    let mut data = std::fs::read(&f).unwrap();
    data[0] ^= 0x20;
    std::fs::write(&f, &data).unwrap();
    filetime::set_file_mtime(&f, filetime::FileTime::from_last_modification_time(&md)).unwrap();
    let before = tree(&s.dest(), &[]);
    let dry = s.stretcher().arg("--dry-run").arg(&r.m2).run();
    dry.assert_ok();
    assert_eq!(tree(&s.dest(), &[]), before);
    let said = line_after(&dry.stderr, "dry run: delta update (");
    let (bytes, plan) = said.split_once(" bytes): ").unwrap();
    let bytes: u64 = bytes.parse().unwrap();

    let run = s.stretcher().arg(&r.m2).run();
    run.assert_ok();
    let done = line_after(&run.stderr, &format!("delta {}: ", nginx.url("v2.tar.gz")));
    // The same files judged the same way, the same bytes.
    assert_eq!(
        plan, done,
        "dry run:\n{}\ndeploy:\n{}",
        dry.stderr, run.stderr
    );
    assert_eq!(bytes, downloaded(&s, &s.dest()), "{}", run.stderr);

    // Onto an empty dest it says the full download and the archive's size.
    let empty = s.path().join("empty-dest");
    let text = std::fs::read_to_string(&r.m2).unwrap().replace(
        &format!("dest: {}", s.dest().display()),
        &format!("dest: {}", empty.display()),
    );
    let m = s.manifest("empty.yml", &text);
    let len = std::fs::metadata(&r.archive2).unwrap().len();
    s.stretcher()
        .arg("--dry-run")
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log(&format!(
            "dry run: full download ({len} bytes): dest holds no tree"
        ));
}

#[test]
fn a_server_without_ranges_gets_a_full_download() {
    let s = Scratch::new();
    let served = s.path().join("www");
    std::fs::create_dir(&served).unwrap();
    let root = served.clone();
    // The tests' server ignores `Range`: a 200 with the whole body, always.
    let server = TestServer::start(move |req, w| {
        let name = req.path.trim_start_matches('/');
        match std::fs::read(root.join(name)) {
            Ok(data) => crate::http::respond(w, "200 OK", &data),
            Err(_) => crate::http::respond(w, "404 Not Found", b""),
        }
    });
    let r = releases(&s, &served, |n| server.url(&format!("/{n}")), "tar.gz");
    s.stretcher().arg(&r.m1).run().assert_ok();
    let run = s.stretcher().arg(&r.m2).run();
    run.assert_ok()
        .assert_log("downloading the whole archive")
        .assert_log("does not serve byte ranges")
        .assert_log("Checksum ok");
    let full = full_deploy(&s, &r.m2, "full");
    assert_eq!(tree(&s.dest(), &["app.log"]), tree(&full, &[]));
    redeploy(&s, &r.m2);
}

#[test]
fn a_wrong_toc_is_a_full_download_verified_by_checksum() {
    let s = Scratch::new();
    let r = file_releases(&s);
    s.stretcher().arg(&r.m1).run().assert_ok();
    let text = std::fs::read_to_string(&r.m2).unwrap();
    let toc_line = text
        .lines()
        .find(|l| l.starts_with("toc:"))
        .unwrap()
        .to_string();
    let m = s.manifest(
        "wrong.yml",
        &text.replace(&toc_line, &format!("toc: sha256:{}", "ab".repeat(32))),
    );
    let run = s.stretcher().arg(&m).run();
    run.assert_ok()
        .assert_log("does not match the manifest's toc")
        .assert_log("Checksum ok");
    let full = full_deploy(&s, &r.m2, "full");
    assert_eq!(tree(&s.dest(), &["app.log"]), tree(&full, &[]));
}

#[test]
fn a_tampered_member_fails_and_dest_is_unchanged() {
    let s = Scratch::new();
    let r = file_releases(&s);
    s.stretcher().arg(&r.m1).run().assert_ok();
    let before = tree(&s.dest(), &[]);
    // A changed file's member (one file of its own) with a byte of its compressed
    // data changed: the table (and so `toc`) still matches, the file does not.
    let (table, _) = table_of(&r.archive2);
    let e = table
        .entries
        .iter()
        .find(|e| e.path == b"sub/f030")
        .unwrap();
    let Kind::File { member, .. } = &e.kind else {
        panic!()
    };
    let mut bytes = std::fs::read(&r.archive2).unwrap();
    let i = (member.offset + member.len / 2) as usize;
    bytes[i] ^= 0x55;
    std::fs::write(&r.archive2, &bytes).unwrap();
    let run = s.stretcher().arg(&r.m2).run();
    run.assert_fail();
    assert!(
        run.stderr.contains("checksum mismatch")
            || run.stderr.contains("corrupt")
            || run.stderr.contains("f030"),
        "{}",
        run.stderr
    );
    assert_eq!(tree(&s.dest(), &[]), before);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

#[test]
fn a_delta_from_s3_equals_a_full_deploy_and_fetches_only_the_changed_members() {
    let s = Scratch::new();
    let prefix = crate::s3::unique("delta");
    let dir = crate::s3::bucket_dir(&prefix);
    let r = releases(&s, &dir, |n| format!("s3://deploys/{prefix}/{n}"), "tar.gz");
    let key2 = format!("{prefix}/v2.tar.gz");
    delta_through(
        &s,
        &r,
        &format!("s3://deploys/{key2}"),
        &|| crate::s3::with_keys(crate::s3::aws(&s)),
        &|| crate::s3::sent_for(&key2).0,
    );
}

#[test]
fn a_delta_from_gcs_equals_a_full_deploy_and_fetches_only_the_changed_members() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let emu = crate::gcs::Emulator::start();
    let s = Scratch::new();
    let dir = s.path().join("upload");
    std::fs::create_dir(&dir).unwrap();
    let r = releases(&s, &dir, |n| format!("gs://deploys/delta/{n}"), "tar.gz");
    for v in ["v1.tar.gz", "v2.tar.gz"] {
        emu.put(&format!("delta/{v}"), &std::fs::read(dir.join(v)).unwrap());
    }
    // Between stretcher and the emulator: a proxy that passes `Range` on and counts
    // the body bytes the emulator sent for v2.
    let upstream = emu.host();
    let body_bytes = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&body_bytes);
    let proxy = TestServer::start(move |req, w| {
        use std::io::{Read, Write};
        let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
            return crate::http::respond(w, "502 Bad Gateway", b"");
        };
        let _ = up.set_read_timeout(Some(Duration::from_secs(20)));
        let range = req
            .header("Range")
            .map(|r| format!("Range: {r}\r\n"))
            .unwrap_or_default();
        let _ = write!(
            up,
            "{} {} HTTP/1.0\r\nHost: {upstream}\r\n{range}\r\n",
            req.method, req.path
        );
        let mut answer = Vec::new();
        let _ = up.read_to_end(&mut answer);
        if req.path.contains("v2.tar.gz") {
            if let Some(at) = answer.windows(4).position(|x| x == b"\r\n\r\n") {
                counted.fetch_add((answer.len() - at - 4) as u64, Ordering::SeqCst);
            }
        }
        let _ = w.write_all(&answer);
    });
    let host = proxy.addr().to_string();
    delta_through(
        &s,
        &r,
        "gs://deploys/delta/v2.tar.gz",
        &|| crate::gcs::google(&s, &host).env("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.delta"),
        &|| body_bytes.load(Ordering::SeqCst),
    );
}

/// A copy of v2's archive (`name`, beside it) whose table `edit` changed, with a
/// manifest whose `toc`, `checksum`, `size` and `src` are the copy's: a table the
/// manifest vouches for, as an attacker who can sign manifests (or a broken packer)
/// would make it.
fn with_table(s: &Scratch, r: &Release, name: &str, edit: impl FnOnce(&mut Table)) -> PathBuf {
    use sha2::Digest;
    let (mut table, footer) = table_of(&r.archive2);
    edit(&mut table);
    let bytes = std::fs::read(&r.archive2).unwrap();
    let member = table.to_member(footer.codec);
    let mut out = bytes[..footer.table_offset as usize].to_vec();
    out.extend_from_slice(&member);
    let new_footer = Footer {
        table_len: member.len() as u64,
        ..footer
    };
    out.extend_from_slice(&new_footer.encode());
    let path = r.archive2.with_file_name(name);
    std::fs::write(&path, &out).unwrap();
    let text = std::fs::read_to_string(&r.m2).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.split_once(':').map(|(k, _)| k) {
            Some("src") => format!("src: file://{}", path.display()),
            Some("checksum") => format!("checksum: {}", hex::encode(sha2::Sha256::digest(&out))),
            Some("toc") => format!("toc: sha256:{}", hex::encode(sha2::Sha256::digest(&member))),
            Some("size") => format!("size: {}", out.len()),
            _ => l.to_string(),
        })
        .collect();
    s.manifest(&format!("{name}.yml"), &(lines.join("\n") + "\n"))
}

fn member_of<'a>(table: &'a mut Table, path: &[u8]) -> &'a mut stretcher::toc::Member {
    let e = table.entries.iter_mut().find(|e| e.path == path).unwrap();
    match &mut e.kind {
        Kind::File { member, .. } => member,
        _ => panic!("not a file"),
    }
}

#[test]
fn a_malformed_table_that_matches_toc_fails_naming_the_entry_and_dest_is_unchanged() {
    let s = Scratch::new();
    let r = file_releases(&s);
    s.stretcher().arg(&r.m1).run().assert_ok();
    let before = tree(&s.dest(), &[]);
    type Edit = Box<dyn FnOnce(&mut Table)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "overlap",
            "sub/f030",
            // The big file's member starts inside the member before it.
            Box::new(|t| member_of(t, b"sub/f030").offset -= 1),
        ),
        (
            "outside",
            "sub/f030",
            // Its member reaches past the table (the tar's end).
            Box::new(|t| member_of(t, b"sub/f030").len += 1 << 30),
        ),
        (
            "duplicate",
            "f002",
            Box::new(|t| {
                let i = t.entries.iter().position(|e| e.path == b"f004").unwrap();
                t.entries[i].path = b"f002".to_vec();
            }),
        ),
        (
            "dotdot",
            "../evil",
            Box::new(|t| {
                let i = t.entries.iter().position(|e| e.path == b"new-a").unwrap();
                t.entries[i].path = b"../evil".to_vec();
            }),
        ),
    ];
    for (name, entry, edit) in cases {
        let m = with_table(&s, &r, &format!("{name}.tar.gz"), edit);
        let run = s.stretcher().arg(&m).run();
        run.assert_fail()
            .assert_log(&format!("table entry \"{entry}\""));
        assert!(
            !run.stderr.contains("downloading the whole archive"),
            "{name}: a table that matches toc is not a reason to fall back\n{}",
            run.stderr
        );
        assert_eq!(tree(&s.dest(), &[]), before, "{name}");
        assert!(!s.path().join("evil").exists());
        assert!(s.leftovers().is_empty(), "{name}: {:?}", s.leftovers());
    }
    // The unedited table, put back the same way, deploys (the edits are the faults).
    let m = with_table(&s, &r, "same.tar.gz", |_| {});
    s.stretcher()
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("bytes by range from");
}

#[test]
fn an_endless_answer_to_a_range_is_cut_at_the_range_and_the_deploy_falls_back() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let s = Scratch::new();
    let served = s.path().join("www");
    std::fs::create_dir(&served).unwrap();
    let root = served.clone();
    let overrun = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&overrun);
    // Footer and table as asked; any other range: the right Content-Range, then bytes
    // without end (no length); a request without Range: the whole archive.
    let server = TestServer::start(move |req, w| {
        let name = req.path.trim_start_matches('/');
        let Ok(data) = std::fs::read(root.join(name)) else {
            return crate::http::respond(w, "404 Not Found", b"");
        };
        let Some(range) = req.header("Range") else {
            return crate::http::respond(w, "200 OK", &data);
        };
        let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
        let (start, end): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        let near_end = data.len() - end <= 64 * 1024;
        let _ = write!(
            w,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{}\r\nConnection: close\r\n\r\n",
            data.len()
        );
        if near_end {
            let _ = w.write_all(&data[start..=end]);
            return;
        }
        let _ = w.write_all(&data[start..=end]);
        let chunk = vec![0x5au8; 64 * 1024];
        let stop = Instant::now() + Duration::from_secs(20);
        while Instant::now() < stop && w.write_all(&chunk).is_ok() {
            seen.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    });
    let r = releases(&s, &served, |n| server.url(&format!("/{n}")), "tar.gz");
    s.stretcher().arg(&r.m1).run().assert_ok();
    let run = s.stretcher().arg(&r.m2).run();
    run.assert_ok()
        .assert_log("a range cannot be read")
        .assert_log("longer than its size")
        .assert_log("downloading the whole archive")
        .assert_log("Checksum ok");
    // The server's writes past the range ended when the client went away (left
    // unread, they would go on for 20 s, gigabytes over the loopback).
    let over = overrun.load(Ordering::SeqCst);
    assert!(over < 64 << 20, "{over}");
    let full = full_deploy(&s, &r.m2, "full");
    assert_eq!(tree(&s.dest(), &["app.log"]), tree(&full, &[]));
}

/// v1 and v2 (see `make_v2`) with a directory `still/` whose files are the same in
/// both (nothing of a delta's stream is below it), packed and read from `file://`.
fn releases_with_still(s: &Scratch) -> Release {
    let (v1, v2) = (s.path().join("v1"), s.path().join("v2"));
    make_v1(&v1);
    let t = filetime::FileTime::from_unix_time(1_650_000_000, 42);
    std::fs::create_dir_all(v1.join("still/inner")).unwrap();
    for (name, data) in [("still/a", &b"a"[..]), ("still/inner/b", b"bb")] {
        std::fs::write(v1.join(name), data).unwrap();
        filetime::set_file_mtime(v1.join(name), t).unwrap();
    }
    std::fs::set_permissions(v1.join("still"), std::fs::Permissions::from_mode(0o750)).unwrap();
    for d in ["still/inner", "still"] {
        filetime::set_file_mtime(v1.join(d), t).unwrap();
    }
    let changed = make_v2(&v1, &v2);
    let served = s.path().join("www");
    std::fs::create_dir_all(&served).unwrap();
    let (a1, a2) = (served.join("v1.tar.gz"), served.join("v2.tar.gz"));
    let (m1, m2) = (s.path().join("m1.yml"), s.path().join("m2.yml"));
    let url = |a: &Path| format!("file://{}", a.display());
    pack(&v1, &a1, &m1, &url(&a1), &s.dest(), &[]);
    pack(&v2, &a2, &m2, &url(&a2), &s.dest(), &[]);
    Release {
        v2_changed: changed,
        m1,
        m2,
        archive2: a2,
    }
}

/// `manifest` with a `pre` command.
fn with_pre(s: &Scratch, manifest: &Path, name: &str, command: &str) -> PathBuf {
    let text = std::fs::read_to_string(manifest).unwrap();
    s.manifest(name, &format!("{text}commands:\n  pre:\n    - {command}\n"))
}

#[test]
fn directories_dest_holds_unchanged_are_fixed_in_place_as_a_full_deploy_leaves_them() {
    let s = Scratch::new();
    let r = releases_with_still(&s);
    s.stretcher().arg(&r.m1).run().assert_ok();
    // While the deploy runs (after the delta judged dest), `still/` and `still/inner/`
    // (directories nothing is unpacked below) get another mode and mtime in dest.
    let dest = s.dest();
    let pre = format!(
        "chmod 0700 {d}/still {d}/still/inner && touch -d @1000 {d}/still {d}/still/inner",
        d = dest.display()
    );
    let m2 = with_pre(&s, &r.m2, "m2-pre.yml", &pre);
    let run = s.stretcher().arg(&m2).run();
    run.assert_ok().assert_log("bytes by range from");
    let full = full_deploy(&s, &r.m2, "full");
    assert_eq!(tree(&dest, &[]), tree(&full, &[]), "{}", run.stderr);
    let md = std::fs::metadata(dest.join("still")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.mtime(), md.mtime_nsec()),
        (0o750, 1_650_000_000, 42)
    );
}

#[test]
fn a_file_changed_in_dest_after_the_delta_judged_it_is_caught_and_the_result_is_exact() {
    let s = Scratch::new();
    let r = releases_with_still(&s);
    s.stretcher().arg(&r.m1).run().assert_ok();
    // A file the delta found unchanged (left in place) is rewritten while the deploy
    // runs, keeping its size and mtime seconds; another one loses its directory.
    let dest = s.dest();
    let pre = format!(
        "printf z > {d}/still/a && touch -d @1650000000 {d}/still/a && rm -r {d}/still/inner",
        d = dest.display()
    );
    let m2 = with_pre(&s, &r.m2, "m2-pre.yml", &pre);
    let run = s.stretcher().arg(&m2).run();
    run.assert_ok()
        .assert_log("changed after the archive was unpacked");
    let full = full_deploy(&s, &r.m2, "full");
    assert_eq!(tree(&dest, &[]), tree(&full, &[]), "{}", run.stderr);
    assert_eq!(std::fs::read(dest.join("still/a")).unwrap(), b"a");
    assert_eq!(std::fs::read(dest.join("still/inner/b")).unwrap(), b"bb");
}

/// What the root-only victim of the attack below holds.
const SECRET: &[u8] = b"root's secret, never to be read into dest";

/// Root among other users (SPEC §17) in a delta deploy: another account owns dest's
/// parent and dest (the directory). Before the deploy it swaps a file the delta would
/// keep and one whose bytes it would read from dest (same content, new mtime) for
/// symlinks to a root-only file; after the delta staged its result (from `pre`, run
/// as that account, before the sync) it swaps a kept file and another read from dest
/// (new mode) for such symlinks, and a directory the delta leaves in place (`still/`)
/// for a symlink to a root-only directory holding the same names. Root never reads or
/// writes through them: the victims are as they were, their bytes are nowhere in dest,
/// and dest is v2 exactly (the kept file found changed makes it unpack again in full).
#[test]
fn another_user_owning_dest_cannot_steer_a_delta_through_symlinks() {
    let Some(user) = TestUser::new() else { return };
    let s = Scratch::new();
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    user.give(&s.path().join("parent"));
    let r = releases_with_still(&s);
    s.stretcher().arg(&r.m1).run().assert_ok();
    let dest = s.dest();
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).unwrap();

    // The victims: a root-only file and a root-only directory with `still/`'s names.
    let secret = s.path().join("secret");
    std::fs::create_dir_all(secret.join("dir/inner")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = secret.join("victim");
    std::fs::write(&victim, SECRET).unwrap();
    std::fs::write(secret.join("dir/a"), SECRET).unwrap();
    std::fs::write(secret.join("dir/inner/b"), SECRET).unwrap();
    for f in [&victim, &secret.join("dir/a"), &secret.join("dir/inner/b")] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let before = tree(&secret, &[]);

    // Before the deploy: a file v2 keeps as it is, and one it only touches.
    for name in ["f011", "f008"] {
        assert!(user.run("rm", &[dest.join(name).as_os_str()]));
        assert!(user.run(
            "ln",
            &[
                "-s".as_ref(),
                victim.as_os_str(),
                dest.join(name).as_os_str()
            ]
        ));
    }
    // After the staging, as the user: a kept file (f010), a file read from dest
    // (f007: new mode), and `still/` (nothing of the stream below it).
    let swap = format!(
        "setpriv --reuid={uid} --regid={gid} --clear-groups -- sh -c 'cd {d} && mv still still.moved && ln -s {dir} still && rm f007 f010 && ln -s {v} f007 && ln -s {v} f010'",
        d = dest.display(),
        dir = secret.join("dir").display(),
        v = victim.display()
    );
    let m2 = with_pre(&s, &r.m2, "m2-pre.yml", &swap);
    let run = s.stretcher().arg(&m2).run();

    assert_eq!(tree(&secret, &[]), before, "a root-only victim changed");
    let meta = std::fs::symlink_metadata(&victim).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o600));
    for e in walkdir::WalkDir::new(&dest) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let data = std::fs::read(e.path()).unwrap();
            assert!(
                !data.windows(SECRET.len()).any(|w| w == SECRET),
                "{} holds the victim's bytes\n{}",
                e.path().display(),
                run.stderr
            );
        }
    }
    // The kept f010 is found changed by the sync: the archive is unpacked again in
    // full, and dest is v2 exactly.
    run.assert_ok()
        .assert_log("bytes by range from")
        .assert_log("f010 changed after the archive was unpacked");
    let full = full_deploy(&s, &r.m2, "full");
    assert_eq!(tree(&dest, &[]), tree(&full, &[]), "{}", run.stderr);
    assert!(
        !dest.join("still.moved").exists(),
        "the swap did not happen: {}",
        run.stderr
    );
}

/// A full download takes the files' digests from the table the manifest's checksum
/// covers (docs/packed-archive.md): a server that serves the archive with a table that
/// lies fails the checksum, dest untouched; a table the manifest itself vouches for is
/// the author's word, and `verify --content` shows where it lies.
#[test]
fn a_table_that_lies_in_a_full_download_fails_the_checksum_or_shows_in_verify() {
    let s = Scratch::new();
    let r = file_releases(&s);
    let lie = |t: &mut Table| {
        let e = t.entries.iter_mut().find(|e| e.path == b"f011").unwrap();
        match &mut e.kind {
            Kind::File { sha256, .. } => sha256[0] ^= 1,
            _ => panic!("not a file"),
        }
    };
    // the server's copy swapped for one whose table lies; the manifest is the true one
    let liar = with_table(&s, &r, "liar.tar.gz", lie);
    let original = std::fs::read(&r.archive2).unwrap();
    std::fs::copy(r.archive2.with_file_name("liar.tar.gz"), &r.archive2).unwrap();
    let run = s.stretcher().arg(&r.m2).run();
    // the lying table may compress to another length than the true one: then the size
    // the manifest gives refuses it before the checksum does
    run.assert_fail();
    assert!(
        ["checksum mismatch", "than its size"]
            .iter()
            .any(|why| run.stderr.contains(why)),
        "the lying archive was not refused by its checksum or size:\n{}",
        run.stderr
    );
    assert!(!s.dest().exists() || std::fs::read_dir(s.dest()).unwrap().next().is_none());
    std::fs::write(&r.archive2, original).unwrap();
    // the manifest vouches for the lying table: deployed as the author packed it, the
    // file's bytes are right, and verify --content names the file the table lies about
    s.stretcher().arg(&liar).run().assert_ok();
    let full = full_deploy(&s, &r.m2, "full");
    assert_eq!(tree(&s.dest(), &["app.log"]), tree(&full, &[]));
    let verify = stretcher()
        .args(["verify", "--content", "--state-dir"])
        .arg(s.state_dir())
        .arg(s.dest())
        .run();
    assert_eq!(verify.stdout.trim(), "changed f011 (content)", "{verify:?}");
    // the next deploy of the true archive judges the file by the true table's digest
    // against the index's: it is fetched again, and the index is right after
    s.stretcher().arg(&r.m2).run().assert_ok();
    assert_eq!(tree(&s.dest(), &["app.log"]), tree(&full, &[]));
    verify_content(&s);
}
