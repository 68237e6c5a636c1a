//! Signed manifests and freshness (SPEC §15), driven through the real binary with
//! keys and signatures made at test time by Debian's `minisign` CLI: a signed
//! manifest deploys (file, http, s3); unsigned, tampered, another key's, truncated,
//! garbage and another file's signatures are refused with their reason, before any
//! hook and with dest unchanged; legacy and prehashed signatures; two trusted keys;
//! `expires`; and a refused consul event that is handled once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;

use crate::http::{respond, TestServer};
use crate::util::*;

/// A minisign key pair made by `minisign -G -W` (no password) in `dir`.
pub(crate) struct KeyPair {
    /// The base64 public key line (`RW...`).
    pub line: String,
    /// The `.pub` file.
    pub public: PathBuf,
    pub secret: PathBuf,
}

#[track_caller]
fn minisign(args: &[&str]) {
    let out = Command::new("minisign")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("minisign must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "minisign {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn key_pair(dir: &Path, name: &str) -> KeyPair {
    let public = dir.join(format!("{name}.pub"));
    let secret = dir.join(format!("{name}.key"));
    minisign(&[
        "-G",
        "-W",
        "-p",
        public.to_str().unwrap(),
        "-s",
        secret.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&public).unwrap();
    let line = text.lines().nth(1).unwrap().trim().to_string();
    assert!(line.starts_with("RW"), "{text}");
    KeyPair {
        line,
        public,
        secret,
    }
}

/// Signs `file` into `file.minisig` (`-S`, plus `flags`: `-l` legacy, `-H`
/// prehashed) with the trusted comment `comment`.
pub(crate) fn sign(key: &KeyPair, file: &Path, flags: &[&str], comment: &str) -> PathBuf {
    let sig = sig_path(file);
    let mut args = vec!["-S"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[
        "-s",
        key.secret.to_str().unwrap(),
        "-m",
        file.to_str().unwrap(),
        "-x",
        sig.to_str().unwrap(),
        "-t",
        comment,
    ]);
    minisign(&args);
    sig
}

fn sig_path(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.minisig", file.display()))
}

/// The two bytes of the signature's algorithm: `Ed` legacy, `ED` prehashed.
fn algorithm(sig: &[u8]) -> [u8; 2] {
    let text = String::from_utf8_lossy(sig);
    let line = text.lines().nth(1).unwrap();
    let bin = base64::engine::general_purpose::STANDARD
        .decode(line)
        .unwrap();
    [bin[0], bin[1]]
}

/// The deploy record of `key` in the scratch's state directory (SPEC §11).
pub(crate) fn record(sc: &Scratch, key: &str) -> serde_json::Value {
    let path = sc.state_dir().join("deploys").join(format!("{key}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The record key of a manifest none of which was used: `manifest-` and the first
/// 16 hex digits of the sha256 of its URL (SPEC §15).
pub(crate) fn manifest_key(url: &str) -> String {
    use sha2::Digest;
    format!(
        "manifest-{}",
        &hex::encode(sha2::Sha256::digest(url.as_bytes()))[..16]
    )
}

/// The record key of a dest: its file name, `-`, 16 hex of the sha256 of its path.
pub(crate) fn dest_key(dest: &Path) -> String {
    use sha2::Digest;
    let name = dest.file_name().unwrap().to_str().unwrap();
    let digest = hex::encode(sha2::Sha256::digest(dest.to_str().unwrap().as_bytes()));
    format!("{name}-{}", &digest[..16])
}

#[track_caller]
pub(crate) fn assert_refused_record(rec: &serde_json::Value, step: &str, reason: &str) {
    assert_eq!(rec["result"], "refused", "{rec:#}");
    assert_eq!(rec["failed_step"], step, "{rec:#}");
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(error.contains(reason), "{rec:#}");
    assert_eq!(rec["hooks"], serde_json::json!([]), "{rec:#}");
}

/// Hook markers: every hook of the test manifests touches its file in `dir`.
pub(crate) fn hooks_yaml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "commands:\n  pre: [\"touch {d}/pre\"]\n  post: [\"touch {d}/post\"]\n  success: [\"touch {d}/success\"]\n  failure: [\"touch {d}/failure\"]\n"
    )
}

#[track_caller]
pub(crate) fn no_hook_ran(dir: &Path) {
    for m in ["pre", "post", "success", "failure"] {
        assert!(!dir.join(m).exists(), "the {m} hook ran");
    }
}

pub(crate) fn clear_markers(dir: &Path) {
    for m in ["pre", "post", "success", "failure"] {
        let _ = std::fs::remove_file(dir.join(m));
    }
}

/// A scratch area with one trusted key, a dest already holding a file, the
/// markers' directory, and a manifest (deploying `test.tar`) with every hook.
struct Setup {
    sc: Scratch,
    key: KeyPair,
    markers: PathBuf,
    manifest: PathBuf,
}

fn setup() -> Setup {
    let sc = Scratch::new();
    let key = key_pair(sc.path(), "trusted");
    let markers = sc.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    make_tree(&sc.dest(), &[("keep.txt", "before")]);
    let text = manifest_for(&archive("test.tar"), &sc.dest(), &hooks_yaml(&markers));
    let manifest = sc.manifest("m.yml", &text);
    Setup {
        sc,
        key,
        markers,
        manifest,
    }
}

impl Setup {
    fn url(&self) -> String {
        format!("file://{}", self.manifest.display())
    }

    fn run(&self) -> Run {
        self.sc
            .stretcher()
            .args(["--trusted-key", &self.key.line])
            .arg(self.url())
            .run()
    }

    /// The run is refused with `reason`, naming the URL, before any hook and with
    /// dest as `before`.
    #[track_caller]
    fn assert_refused(
        &self,
        run: &Run,
        reason: &str,
        before: &std::collections::BTreeMap<PathBuf, Node>,
    ) {
        run.assert_fail()
            .assert_log(&format!("manifest {}: refused: {reason}", self.url()));
        assert!(!run.stderr.contains("Loading URL"), "{}", run.stderr);
        assert!(!run.stderr.contains("Signature ok"), "{}", run.stderr);
        no_hook_ran(&self.markers);
        assert_eq!(&snapshot(&self.sc.dest()), before, "dest changed");
        assert!(self.sc.leftovers().is_empty(), "{:?}", self.sc.leftovers());
        // Nothing of the manifest was used: the record is keyed by its URL.
        let rec = record(&self.sc, &manifest_key(&self.url()));
        assert_refused_record(&rec, "signature", reason);
        assert_eq!(rec["dest"], serde_json::Value::Null, "{rec:#}");
        assert_eq!(rec["manifest_url"], self.url(), "{rec:#}");
    }
}

#[test]
fn signed_manifest_deploys_and_bad_signatures_are_refused() {
    let s = setup();
    let before = snapshot(&s.sc.dest());

    // unsigned
    let run = s.run();
    s.assert_refused(&run, "no signature: fetch ", &before);
    run.assert_log("m.yml.minisig");

    // signed: deploys, twice (the second time onto its own result)
    let good = std::fs::read(&s.manifest).unwrap();
    sign(&s.key, &s.manifest, &[], "release 42 by the pipeline");
    for _ in 0..2 {
        clear_markers(&s.markers);
        s.run()
            .assert_ok()
            .assert_log("Signature ok: ")
            .assert_log("trusted comment: release 42 by the pipeline")
            .assert_log("Deploy manifest succeeded.");
        for m in ["pre", "post", "success"] {
            assert!(s.markers.join(m).exists(), "{m} did not run");
        }
        assert!(!s.markers.join("failure").exists());
    }
    let deployed = snapshot(&s.sc.dest());
    assert_ne!(deployed, before);
    let rec = record(&s.sc, &dest_key(&s.sc.dest()));
    assert_eq!(rec["result"], "success", "{rec:#}");
    assert!(!s.sc.dest().join("keep.txt").exists());
    clear_markers(&s.markers);

    // tampered: one byte of the manifest changed after signing
    let mut tampered = good.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 0x01;
    std::fs::write(&s.manifest, &tampered).unwrap();
    let run = s.run();
    s.assert_refused(&run, "bad signature: key ", &deployed);
    std::fs::write(&s.manifest, &good).unwrap();
    s.run().assert_ok();
    clear_markers(&s.markers);

    // a signature of another file, by the trusted key
    let other = s.sc.file("other.yml", b"commands:\n  pre: [\"true\"]\n");
    let other_sig = sign(&s.key, &other, &[], "other");
    std::fs::copy(&other_sig, sig_path(&s.manifest)).unwrap();
    let run = s.run();
    s.assert_refused(&run, "bad signature: key ", &deployed);

    // signed by a key that is not trusted
    let stranger = key_pair(s.sc.path(), "stranger");
    sign(&stranger, &s.manifest, &[], "not ours");
    let run = s.run();
    s.assert_refused(&run, "unknown key id ", &deployed);
    let stranger_id = std::fs::read_to_string(&stranger.public).unwrap();
    let stranger_id = stranger_id
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap();
    run.assert_log(&format!("unknown key id {stranger_id}"));

    // truncated and garbage signatures
    let sig = std::fs::read(sign(&s.key, &s.manifest, &[], "ok")).unwrap();
    for bad in [
        sig[..sig.len() / 2].to_vec(),
        sig[..sig.len() - 10].to_vec(),
        b"garbage\n".to_vec(),
        Vec::new(),
        vec![0xff; 300],
    ] {
        std::fs::write(sig_path(&s.manifest), &bad).unwrap();
        let run = s.run();
        s.assert_refused(&run, "malformed signature: ", &deployed);
    }

    // and the good signature still deploys
    std::fs::write(sig_path(&s.manifest), &sig).unwrap();
    s.run().assert_ok();
}

#[test]
fn signature_is_checked_before_templates() {
    let s = setup();
    // Unsigned, and its template would fail: the refusal is the signature's.
    let m = s.sc.manifest(
        "t.yml",
        "commands:\n  pre:\n    - echo {{ must_env \"STRETCHER_TEST_SURELY_UNSET\" }}\n",
    );
    let run =
        s.sc.stretcher()
            .env_remove("STRETCHER_TEST_SURELY_UNSET")
            .args(["--trusted-key", &s.key.line])
            .arg(&m)
            .run();
    run.assert_fail().assert_log("refused: no signature");
    assert!(
        !run.stderr.contains("STRETCHER_TEST_SURELY_UNSET"),
        "{}",
        run.stderr
    );
    // Without --trusted-key nothing is fetched beside the manifest: the template fails.
    s.sc.stretcher()
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("STRETCHER_TEST_SURELY_UNSET");
}

#[test]
fn prehashed_and_legacy_signatures_verify() {
    let s = setup();
    // minisign 0.11 signs prehashed by default; `-H` asks for it explicitly (older
    // versions), `-l` for the legacy format.
    for (flags, algo) in [
        (&[][..], *b"ED"),
        (&["-H"][..], *b"ED"),
        (&["-l"][..], *b"Ed"),
    ] {
        let comment = format!("signed with {flags:?}");
        let sig = sign(&s.key, &s.manifest, flags, &comment);
        assert_eq!(algorithm(&std::fs::read(&sig).unwrap()), algo, "{flags:?}");
        s.run()
            .assert_ok()
            .assert_log(&format!("trusted comment: {comment}"));
    }
}

#[test]
fn either_of_two_trusted_keys_signs() {
    let s = setup();
    let second = key_pair(s.sc.path(), "second");
    let third = key_pair(s.sc.path(), "third");
    // one key as its line, the other as its .pub file
    let run_with_both = || {
        s.sc.stretcher()
            .args(["--trusted-key", &s.key.line])
            .arg(format!("--trusted-key={}", second.public.display()))
            .arg(s.url())
            .run()
    };
    for key in [&s.key, &second] {
        sign(key, &s.manifest, &[], "rotation");
        run_with_both().assert_ok().assert_log("Signature ok");
    }
    sign(&third, &s.manifest, &[], "rotation");
    clear_markers(&s.markers);
    let before = snapshot(&s.sc.dest());
    let run = run_with_both();
    run.assert_fail().assert_log("refused: unknown key id");
    no_hook_ran(&s.markers);
    assert_eq!(snapshot(&s.sc.dest()), before);
}

#[test]
fn bad_trusted_key_is_a_usage_error() {
    let run = stretcher()
        .args(["--trusted-key", "RWnotakey", "m.yml"])
        .run();
    assert_eq!(run.code(), 2, "{}", run.stderr);
    assert!(run.stderr.contains("--trusted-key"), "{}", run.stderr);
}

#[test]
fn signed_manifest_over_http() {
    let sc = Scratch::new();
    let key = key_pair(sc.path(), "k");
    let markers = sc.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let tar = gzip(&raw_tar(&[
        Raw::Dir(b"./"),
        Raw::File(b"./hello.txt", b"signed over http\n"),
    ]));
    let text = format!(
        "src: app.tgz\nchecksum: {}\ndest: {}\n{}",
        sha1_bytes(&tar),
        sc.dest().display(),
        hooks_yaml(&markers)
    );
    let m = sc.manifest("m.yml", &text);
    let sig = std::fs::read(sign(&key, &m, &[], "over http")).unwrap();
    let serve_sig = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = serve_sig.clone();
    let srv = TestServer::start(move |req, w| match req.path.as_str() {
        "/d/m.yml" => respond(w, "200 OK", text.as_bytes()),
        "/d/m.yml.minisig" if flag.load(std::sync::atomic::Ordering::SeqCst) => {
            respond(w, "200 OK", &sig)
        }
        "/d/app.tgz" => respond(w, "200 OK", &tar),
        _ => respond(w, "404 Not Found", b""),
    });
    let run = |s: Stretcher| {
        PROXY_VARS
            .iter()
            .fold(s, |s, k| s.env_remove(k))
            .args(["--trusted-key", &key.line])
            .arg(srv.url("/d/m.yml"))
            .run()
    };
    for _ in 0..2 {
        run(sc.stretcher())
            .assert_ok()
            .assert_log("trusted comment: over http");
    }
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"signed over http\n"
    );
    assert_eq!(srv.hits("/d/m.yml.minisig"), 2);

    // without the signature: refused, the archive is not fetched, no hook runs
    clear_markers(&markers);
    serve_sig.store(false, std::sync::atomic::Ordering::SeqCst);
    let before = snapshot(&sc.dest());
    let archive_hits = srv.hits("/d/app.tgz");
    let r = run(sc.stretcher());
    r.assert_fail()
        .assert_log(&format!(
            "manifest {}: refused: no signature",
            srv.url("/d/m.yml")
        ))
        .assert_log("HTTP 404");
    no_hook_ran(&markers);
    assert_eq!(snapshot(&sc.dest()), before);
    assert_eq!(srv.hits("/d/app.tgz"), archive_hits);
}

#[test]
fn signed_manifest_in_s3() {
    use crate::s3::{archive_bytes, aws, put, unique, with_keys};
    let sc = Scratch::new();
    let key = key_pair(sc.path(), "k");
    let markers = sc.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let (tar, sum) = archive_bytes("signed in s3\n");
    let dir = unique("signed");
    put(&format!("{dir}/app.tgz"), &tar);
    let text = format!(
        "src: app.tgz\nchecksum: {sum}\ndest: {}\n{}",
        sc.dest().display(),
        hooks_yaml(&markers)
    );
    let local = sc.manifest("m.yml", &text);
    let sig = std::fs::read(sign(&key, &local, &[], "in s3")).unwrap();
    let url = put(&format!("{dir}/m.yml"), text.as_bytes());

    // no signature object yet
    let r = with_keys(aws(&sc))
        .args(["--trusted-key", &key.line])
        .arg(&url)
        .run();
    r.assert_fail()
        .assert_log(&format!("manifest {url}: refused: no signature"));
    no_hook_ran(&markers);
    assert!(!sc.dest().exists());

    put(&format!("{dir}/m.yml.minisig"), &sig);
    for _ in 0..2 {
        with_keys(aws(&sc))
            .args(["--trusted-key", &key.line])
            .arg(&url)
            .run()
            .assert_ok()
            .assert_log("trusted comment: in s3");
    }
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"signed in s3\n"
    );
}

#[test]
fn expires_past_is_refused_future_accepted() {
    let sc = Scratch::new();
    let markers = sc.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    make_tree(&sc.dest(), &[("keep.txt", "before")]);
    let before = snapshot(&sc.dest());
    let extra = |expires: &str| format!("expires: {expires}\n{}", hooks_yaml(&markers));
    let m = sc.manifest(
        "old.yml",
        &manifest_for(
            &archive("test.tar"),
            &sc.dest(),
            &extra("2020-01-01T00:00:00Z"),
        ),
    );
    let run = sc.stretcher().arg(&m).run();
    run.assert_fail().assert_log(&format!(
        "manifest file://{}: refused: expired at 2020-01-01T00:00:00Z",
        m.display()
    ));
    no_hook_ran(&markers);
    assert_eq!(snapshot(&sc.dest()), before);
    let rec = record(&sc, &dest_key(&sc.dest()));
    assert_refused_record(&rec, "manifest", "expired at 2020-01-01T00:00:00Z");

    let m = sc.manifest(
        "new.yml",
        &manifest_for(
            &archive("test.tar"),
            &sc.dest(),
            &extra("2999-12-31T23:59:59+09:00"),
        ),
    );
    for _ in 0..2 {
        sc.stretcher().arg(&m).run().assert_ok();
    }
    assert!(markers.join("success").exists());
}

#[test]
fn consul_event_with_an_unsigned_manifest_is_handled_once() {
    let s = setup();
    let url = s.url();
    let list = format!(
        r#"[{{"ID": "c0ffee00-0000-0000-0000-000000000016", "Name": "deploy", "Payload": "{}", "NodeFilter": "", "ServiceFilter": "", "TagFilter": "", "Version": 1, "LTime": 4}}]"#,
        base64::engine::general_purpose::STANDARD.encode(&url)
    );
    let before = snapshot(&s.sc.dest());
    let consul = || {
        s.sc.stretcher()
            .env("CONSUL_INDEX", "16")
            .args(["--trusted-key", &s.key.line])
            .stdin(list.clone())
            .run()
    };
    let run = consul();
    run.assert_ok()
        .assert_log(&format!("manifest {url}: refused: no signature"))
        .assert_log("exiting 0 so that consul watch keeps running");
    no_hook_ran(&s.markers);
    assert_eq!(snapshot(&s.sc.dest()), before);
    let rec = record(&s.sc, &manifest_key(&url));
    assert_refused_record(&rec, "signature", "no signature");
    assert_eq!(rec["event"]["origin"], "consul", "{rec:#}");
    assert_eq!(
        rec["event"]["id"], "c0ffee00-0000-0000-0000-000000000016",
        "{rec:#}"
    );
    // handled: the same list again is a replay, even once the manifest is signed
    sign(&s.key, &s.manifest, &[], "late");
    let run = consul();
    run.assert_ok().assert_log("already handled");
    assert!(!run.stderr.contains("Loading manifest"), "{}", run.stderr);
    no_hook_ran(&s.markers);
    assert_eq!(snapshot(&s.sc.dest()), before);
}

#[test]
fn serial_lower_than_the_last_success_is_refused() {
    let sc = Scratch::new();
    let key = key_pair(sc.path(), "k");
    let markers = sc.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let tar_a = archive("test.tar");
    let tar_b = archive("test_no_top_dir.tar");
    let m = sc.path().join("m.yml");
    let url = format!("file://{}", m.display());
    // Each serial is a signed manifest, published at the same URL.
    let publish = |serial: u64, tar: &Path| {
        let extra = format!("serial: {serial}\n{}", hooks_yaml(&markers));
        std::fs::write(&m, manifest_for(tar, &sc.dest(), &extra)).unwrap();
        sign(&key, &m, &[], &format!("serial {serial}"));
    };
    let run = || {
        clear_markers(&markers);
        sc.stretcher()
            .args(["--trusted-key", &key.line])
            .arg(&url)
            .run()
    };
    let dest_rec = || record(&sc, &dest_key(&sc.dest()));

    publish(7, &tar_a);
    run().assert_ok();
    assert_eq!(dest_rec()["serial"], 7);
    let at_7 = snapshot(&sc.dest());

    // an old signed manifest replayed: refused, nothing runs, dest as it was
    publish(5, &tar_b);
    let refused = run();
    refused.assert_fail().assert_log(&format!(
        "manifest {url}: refused: serial 5 is lower than 7, the serial of the last successful deploy"
    ));
    no_hook_ran(&markers);
    assert_eq!(snapshot(&sc.dest()), at_7);
    let rec = dest_rec();
    assert_refused_record(&rec, "manifest", "serial 5 is lower than 7");
    assert_eq!(rec["serial"], 5);

    // refused replays push records out of the history (50 kept): the floor stays
    for _ in 0..51 {
        run().assert_fail();
    }
    run().assert_fail().assert_log("serial 5 is lower than 7");
    assert_eq!(snapshot(&sc.dest()), at_7);

    // the same serial again is fine, and a higher one
    publish(7, &tar_a);
    run().assert_ok();
    assert!(markers.join("success").exists());
    publish(8, &tar_b);
    run().assert_ok();
    assert_eq!(dest_rec()["serial"], 8);
    assert_ne!(snapshot(&sc.dest()), at_7);
    publish(7, &tar_a);
    run().assert_fail().assert_log("serial 7 is lower than 8");
}
