//! The static musl binary (SPEC §16), built by `packaging/build-static.sh`: no shared
//! libraries, the README example, http and https from a loopback server (TLS roots from
//! `SSL_CERT_FILE`), owners by name as root (musl reads `/etc/passwd` itself), and a
//! deploy inside an empty root that holds only the binary, busybox as `/bin/sh`,
//! `/etc/passwd`, `/etc/group` and `/tmp` — no `/dev`, no `/proc`.
//!
//! Behind the `static` feature, run by `.ci/run`:
//! `cargo test --features static --test integration -- static_bin::`. The binary is
//! `$STRETCHER_STATIC_BIN`, else `target/x86_64-unknown-linux-musl/release/stretcher`
//! (under `$CARGO_TARGET_DIR` when set); a missing one fails the tests. The
//! root-only tests (chroot, chown) say why they skip when not run as root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::http::{respond, small_archive, test_pki, Conn, Req, TestServer};
use crate::util::*;

/// The static binary under test.
fn static_bin() -> PathBuf {
    let p = match std::env::var_os("STRETCHER_STATIC_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
            target.join("x86_64-unknown-linux-musl/release/stretcher")
        }
    };
    assert!(
        p.is_file(),
        "{} is missing: build it with packaging/build-static.sh",
        p.display()
    );
    p
}

/// A run of the static binary with the scratch's cwd and state dir, no proxies and
/// no TLS roots leaking in from the environment.
fn run_static(sc: &Scratch) -> Stretcher {
    PROXY_VARS
        .iter()
        .chain(&["SSL_CERT_FILE", "SSL_CERT_DIR"])
        .fold(stretcher_program(static_bin()), |s, k| s.env_remove(k))
        .cwd(&sc.work())
        .arg("--state-dir")
        .arg(sc.state_dir())
        .limit(Duration::from_secs(60))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A gzipped tar of one file per `(name, uid, uname, gid, gname)`, and its sha1.
fn owned_archive(files: &[(&str, u64, &str, u64, &str)]) -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar_header(tar::EntryType::Directory, 0o755, 1_700_000_000, 0);
    dir.set_path("./").unwrap();
    dir.set_cksum();
    b.append(&dir, &[][..]).unwrap();
    for (name, uid, uname, gid, gname) in files {
        let data = format!("owned by {uname}:{gname}\n");
        let mut h = tar_header(
            tar::EntryType::Regular,
            0o644,
            1_700_000_000,
            data.len() as u64,
        );
        h.set_path(name).unwrap();
        h.set_uid(*uid);
        h.set_gid(*gid);
        h.set_username(uname).unwrap();
        h.set_groupname(gname).unwrap();
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    let tgz = gzip(&b.into_inner().unwrap());
    let sum = sha1_bytes(&tgz);
    (tgz, sum)
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn has_no_interpreter_and_no_shared_libraries() {
    let bin = static_bin();
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    let said =
        String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd {}: {said}",
        bin.display()
    );
    let elf = Command::new("readelf")
        .args(["--program-headers", "--dynamic", "--wide"])
        .arg(&bin)
        .output()
        .unwrap();
    assert!(elf.status.success());
    let elf = String::from_utf8_lossy(&elf.stdout);
    assert!(!elf.contains("INTERP"), "{elf}");
    assert!(!elf.contains("(NEEDED)"), "{elf}");
    let v = stretcher_program(&bin).arg("--version").run();
    v.assert_ok();
    assert_eq!(
        v.stdout.trim(),
        format!("stretcher {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn readme_example_deploys_twice() {
    let sc = Scratch::new();
    let manifest = fixtures().join("demo/manifest.yml");
    for _ in 0..2 {
        run_static(&sc)
            .env("STRETCHER_DEMO_DEST", sc.dest())
            .arg(&manifest)
            .run()
            .assert_ok()
            .assert_log("deploy succeeded; the log had ");
    }
    assert_eq!(mode_of(&sc.dest().join("bin/hello")) & 0o111, 0o111);
    assert_eq!(
        std::fs::read_link(sc.dest().join("index.html")).unwrap(),
        Path::new("public/index.html")
    );
    assert!(sc.dest().join("public/css/site.css").is_file());
    assert!(sc.leftovers().is_empty(), "{:?}", sc.leftovers());
}

#[test]
fn http_and_https_from_a_loopback_server() {
    let (tar, sum) = small_archive();
    let sc = Scratch::new();
    let (ca_pem, cfg) = test_pki(sc.path());

    // http: the manifest and its src (relative to it) both from the server.
    let text = format!(
        "src: app.tgz\nchecksum: {sum}\ndest: {}\n",
        sc.dest().display()
    );
    let body = tar.clone();
    let plain = TestServer::start(move |req, w| match req.path.as_str() {
        "/m.yml" => respond(w, "200 OK", text.as_bytes()),
        "/app.tgz" => respond(w, "200 OK", &body),
        _ => respond(w, "404 Not Found", b""),
    });
    for _ in 0..2 {
        run_static(&sc).arg(plain.url("/m.yml")).run().assert_ok();
    }
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"hello over http\n"
    );
    let ua = plain
        .all()
        .iter()
        .find_map(|r| r.header("User-Agent").map(String::from));
    assert_eq!(
        ua.as_deref(),
        Some(concat!("stretcher/", env!("CARGO_PKG_VERSION")))
    );

    // https: refused until the test CA is trusted through SSL_CERT_FILE.
    let tls = TestServer::start_with(
        Some(cfg),
        Arc::new(move |req: &Req, w: &mut dyn Conn| match req.path.as_str() {
            "/app.tgz" => respond(w, "200 OK", &tar),
            _ => respond(w, "404 Not Found", b""),
        }),
    );
    let sc2 = Scratch::new();
    let url = tls.url("/app.tgz");
    let m = sc2.manifest(
        "m.yml",
        &format!(
            "src: {url}\nchecksum: {sum}\ndest: {}\n",
            sc2.dest().display()
        ),
    );
    run_static(&sc2)
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log(&format!("fetch {url}: "));
    assert!(!sc2.dest().exists());
    for _ in 0..2 {
        run_static(&sc2)
            .env("SSL_CERT_FILE", &ca_pem)
            .arg(&m)
            .run()
            .assert_ok();
    }
    assert_eq!(
        std::fs::read(sc2.dest().join("hello.txt")).unwrap(),
        b"hello over http\n"
    );
}

#[test]
fn owners_by_name_as_root() {
    if !is_root() {
        eprintln!("skipped: setting owners needs root");
        return;
    }
    // uids/gids in the archive that differ from the host's ids for those names.
    let (tgz, sum) = owned_archive(&[
        ("./by-name", 4242, "nobody", 4343, "nogroup"),
        (
            "./by-number",
            4244,
            "stretcher-no-such-user",
            4345,
            "stretcher-no-such-group",
        ),
    ]);
    let sc = Scratch::new();
    let src = sc.file("owned.tgz", &tgz);
    let m = sc.manifest(
        "m.yml",
        &format!(
            "src: {}\nchecksum: {sum}\ndest: {}\n",
            src.display(),
            sc.dest().display()
        ),
    );
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    for _ in 0..2 {
        run_static(&sc).arg(&m).run().assert_ok();
        assert_eq!(
            owner(&sc.dest().join("by-name")),
            (nobody.uid.as_raw(), nogroup.gid.as_raw())
        );
        assert_eq!(owner(&sc.dest().join("by-number")), (4244, 4345));
    }
}

/// The empty root: the binary, busybox as /bin/sh with its applets, /etc/passwd and
/// /etc/group (with a user only this root has), /tmp; the demo under /srv/demo.
fn empty_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "etc", "srv/demo"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(static_bin(), root.join("bin/stretcher")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("busybox (busybox-static) is needed for the empty-root test");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(root.join("bin/busybox"))
        .arg("--list")
        .output()
        .unwrap();
    assert!(list.status.success(), "busybox --list failed");
    let applets = String::from_utf8(list.stdout).unwrap();
    for a in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\ndeployer:x:2345:2346:deployer:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\ndeployers:x:2346:\n").unwrap();
    std::fs::copy(
        fixtures().join("demo/manifest.yml"),
        root.join("srv/demo/manifest.yml"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("demo/app.tar.gz"),
        root.join("srv/demo/app.tar.gz"),
    )
    .unwrap();
    root
}

/// `chroot ROOT /bin/stretcher ARGS...` with a minimal environment.
fn in_root(root: &Path) -> Stretcher {
    // By path: the run's own PATH is the root's /bin.
    let chroot = ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("chroot (coreutils) is needed for the empty-root test");
    stretcher_program(chroot)
        .arg(root)
        .arg("/bin/stretcher")
        .env("PATH", "/bin")
        .env("HOME", "/")
        .env_remove("TMPDIR")
        .env_remove("XDG_STATE_HOME")
        .limit(Duration::from_secs(60))
}

#[test]
fn deploys_inside_an_empty_root_without_dev_null() {
    if !is_root() {
        eprintln!("skipped: chroot needs root");
        return;
    }
    let sc = Scratch::new();
    let root = empty_root(sc.path());
    for _ in 0..2 {
        in_root(&root)
            .env("STRETCHER_DEMO_DEST", "/srv/app")
            .arg("/srv/demo/manifest.yml")
            .run()
            .assert_ok()
            .assert_log("deploying file:///srv/demo/app.tar.gz to /srv/app")
            .assert_log("deploy succeeded; the log had ");
    }
    let app = root.join("srv/app");
    assert_eq!(mode_of(&app.join("bin/hello")) & 0o111, 0o111);
    assert_eq!(
        std::fs::read_link(app.join("index.html")).unwrap(),
        Path::new("public/index.html")
    );
    assert!(!root.join("dev").exists(), "nothing created /dev");

    // Owners by name from this root's /etc/passwd and /etc/group, which the host lacks.
    let (tgz, sum) = owned_archive(&[("./mine", 1111, "deployer", 1112, "deployers")]);
    std::fs::write(root.join("srv/demo/owned.tgz"), &tgz).unwrap();
    std::fs::write(
        root.join("srv/demo/owned.yml"),
        format!("src: owned.tgz\nchecksum: {sum}\ndest: /srv/owned\ncommands:\n  post: [\"echo post ran\"]\n"),
    )
    .unwrap();
    for _ in 0..2 {
        in_root(&root)
            .arg("/srv/demo/owned.yml")
            .run()
            .assert_ok()
            .assert_log("post ran");
        assert_eq!(owner(&root.join("srv/owned/mine")), (2345, 2346));
    }
}
