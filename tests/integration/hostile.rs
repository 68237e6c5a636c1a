//! SPEC §17 against hostile sources, one test per attack, through the real binary and
//! servers on 127.0.0.1 started here: limits (an endless manifest, `file:///dev/zero`,
//! a FIFO, an endless garbage `src`, a body longer than `size`, a trickling server and
//! `--stall-timeout`), signals during the manifest and signature downloads, redirects
//! (outside `--allow-url`, https to http, credentials and `Referer` to another host),
//! and secrets (`user:pass@`, a presigned query) in every output and file a run
//! leaves.
//!
//! Every run is bounded in time (`limit`, killed by pid), every server bounds its own
//! work and ends when the client goes; a run that needs it has its address space
//! capped (`ulimit -v`), so that a regression fails the test instead of the machine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{clean, respond, small_archive, test_pki, Conn, Req, TestServer};
use crate::util::*;
use stretcher::record::{self, Outcome, Step};

/// An address-space cap for runs that must not buffer what a hostile source sends.
const MEMORY_CAP_KIB: u64 = 1024 * 1024;

/// The run of `sc.stretcher()`, under `ulimit -v MEMORY_CAP_KIB`.
fn capped(sc: &Scratch) -> Stretcher {
    let script = format!("ulimit -v {MEMORY_CAP_KIB} && exec \"$0\" \"$@\"");
    clean(stretcher_program("sh").args(["-c", &script, bin()]))
        .cwd(&sc.work())
        .arg("--state-dir")
        .arg(sc.state_dir())
}

/// The record a run left for a manifest it could not use (unreadable, refused).
fn manifest_record(sc: &Scratch, url: &str) -> record::Record {
    record::last_by_key(&sc.state_dir(), &record::key_for_manifest(url))
        .unwrap_or_else(|| panic!("no record for {url}"))
}

/// A server handler that answers 200 and then writes `chunk` again and again (no
/// Content-Length) until the client goes, `stop` is set or 30 s passed; the bytes it
/// wrote are added to `sent`.
fn endless(
    head: &'static str,
    chunk: Vec<u8>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> impl Fn(&Req, &mut dyn Conn) + Send + Sync + 'static {
    move |_, w| {
        let _ = write!(w, "HTTP/1.1 200 OK\r\n{head}Connection: close\r\n\r\n");
        let t = Instant::now();
        while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(30) {
            if w.write_all(&chunk).is_err() {
                return;
            }
            sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    }
}

#[test]
fn endless_manifest_is_refused_at_one_mebibyte() {
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let line = b"# an endless comment line of a manifest\n".repeat(1000);
    let srv = TestServer::start(endless("", line, sent.clone(), stop.clone()));
    let sc = Scratch::new();
    let url = srv.url("/m.yml");
    let run = capped(&sc).arg(&url).limit(Duration::from_secs(20)).run();
    stop.store(true, Ordering::SeqCst);
    run.assert_fail()
        .assert_log(&format!("fetch {url}: refused: larger than 1048576 bytes"));
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    // What the server wrote beyond 1 MiB is at most what the sockets buffer.
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent < 32 << 20, "{sent} bytes sent");
    let rec = manifest_record(&sc, &url);
    assert_eq!(rec.result, Outcome::Refused);
    assert_eq!(rec.failed_step, Some(Step::Manifest));

    // A length announced beyond the limit is refused before a byte is read.
    let big = TestServer::start(|_, w| {
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\nConnection: close\r\n\r\nsrc: x\n"
        );
    });
    let url = big.url("/m.yml");
    let run = capped(&sc).arg(&url).limit(Duration::from_secs(20)).run();
    run.assert_fail().assert_log(&format!(
        "fetch {url}: refused: larger than 1048576 bytes (5000000000 bytes announced)"
    ));
}

#[test]
fn dev_zero_and_a_fifo_are_refused_as_sources() {
    let sc = Scratch::new();
    let run = capped(&sc)
        .arg("file:///dev/zero")
        .limit(Duration::from_secs(20))
        .run();
    run.assert_fail()
        .assert_log("fetch file:///dev/zero: refused: not a regular file (a character device)");
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    assert_eq!(
        manifest_record(&sc, "file:///dev/zero").result,
        Outcome::Refused
    );

    // A FIFO nobody writes would block the open for ever: as the manifest, and as src.
    let fifo = sc.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo_url = format!("file://{}", fifo.display());
    let run = clean(sc.stretcher())
        .arg(&fifo_url)
        .limit(Duration::from_secs(20))
        .run();
    run.assert_fail().assert_log(&format!(
        "fetch {fifo_url}: refused: not a regular file (a FIFO)"
    ));
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    let m = sc.manifest(
        "m.yml",
        &format!(
            "src: {fifo_url}\nchecksum: {}\ndest: {}\n",
            "a".repeat(40),
            sc.dest().display()
        ),
    );
    let run = clean(sc.stretcher())
        .arg(&m)
        .limit(Duration::from_secs(20))
        .run();
    run.assert_fail().assert_log(&format!(
        "fetch {fifo_url}: refused: not a regular file (a FIFO)"
    ));
    assert!(!sc.dest().exists());
    let rec = record::last(&sc.state_dir(), &sc.dest()).unwrap();
    assert_eq!(
        (rec.result, rec.failed_step),
        (Outcome::Refused, Some(Step::Download))
    );
}

#[test]
fn endless_garbage_src_fails_promptly_and_releases_the_lock() {
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let garbage = b"this is no archive at all. ".repeat(2000);
    let srv = TestServer::start(endless("", garbage, sent.clone(), stop.clone()));
    let sc = Scratch::new();
    let url = srv.url("/app.tgz");
    let m = sc.manifest(
        "m.yml",
        &format!(
            "src: {url}\nchecksum: {}\ndest: {}\n",
            "a".repeat(40),
            sc.dest().display()
        ),
    );
    let run = capped(&sc).arg(&m).limit(Duration::from_secs(20)).run();
    stop.store(true, Ordering::SeqCst);
    // The unpack's verdict, not a checksum mismatch after the rest was drained.
    run.assert_fail().assert_log(&format!("archive {url}: "));
    assert!(!run.stderr.contains("checksum mismatch"), "{}", run.stderr);
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 << 20,
        "{sent} bytes sent: the download was drained"
    );
    let rec = record::last(&sc.state_dir(), &sc.dest()).unwrap();
    assert_eq!(
        (rec.result, rec.failed_step),
        (Outcome::Failure, Some(Step::Unpack))
    );
    assert!(sc.leftovers().is_empty(), "{:?}", sc.leftovers());

    // dest's lock is free: the next deploy of the same dest goes ahead at once.
    let (tar, sum) = small_archive();
    let a = sc.file("good.tgz", &tar);
    let good = sc.manifest(
        "good.yml",
        &format!(
            "src: file://{}\nchecksum: {sum}\ndest: {}\n",
            a.display(),
            sc.dest().display()
        ),
    );
    let run = clean(sc.stretcher())
        .arg(&good)
        .limit(Duration::from_secs(20))
        .run();
    run.assert_ok();
    assert!(
        !run.stderr.contains("waiting for the lock"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"hello over http\n"
    );
}

#[test]
fn a_trickling_server_stalls_and_is_retried() {
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    // One byte every 2 s, of a body it says has 1000.
    let srv = TestServer::start(move |_, w| {
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
        );
        for _ in 0..15 {
            if st.load(Ordering::SeqCst) || w.write_all(b"x").and_then(|_| w.flush()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let url = srv.url("/app.tgz");
    // Whether or not --timeout is set.
    for timeout in [None, Some("1m")] {
        let sc = Scratch::new();
        let m = sc.manifest(
            "m.yml",
            &format!(
                "src: {url}\nchecksum: {}\ndest: {}\n",
                "a".repeat(40),
                sc.dest().display()
            ),
        );
        let hits = srv.hits("/app.tgz");
        let mut s = clean(sc.stretcher()).args([
            "--stall-timeout",
            "1s",
            "--retry",
            "1",
            "--retry-wait",
            "10ms",
        ]);
        if let Some(t) = timeout {
            s = s.args(["--timeout", t]);
        }
        let run = s.arg(&m).limit(Duration::from_secs(30)).run();
        let stalled = format!("fetch {url}: stalled: no data for 1.0s (--stall-timeout)");
        run.assert_fail()
            .assert_log(&format!(
                "attempt 1 failed: {stalled}; retrying in 10ms (1/1)"
            ))
            .assert_log(&format!("Deploy manifest failed: {stalled}"));
        assert_eq!(srv.hits("/app.tgz") - hits, 2, "{timeout:?}: one retry");
        assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
        assert!(!sc.dest().exists());
        let rec = record::last(&sc.state_dir(), &sc.dest()).unwrap();
        assert_eq!(
            (rec.result, rec.failed_step),
            (Outcome::Failure, Some(Step::Download))
        );
    }
    stop.store(true, Ordering::SeqCst);
}

#[test]
fn a_body_longer_or_shorter_than_size_fails() {
    let (tar, sum) = small_archive();
    let len = tar.len();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let body = tar.clone();
    // The archive, then an endless tail, without a Content-Length.
    let srv = TestServer::start(move |req, w| {
        let _ = write!(w, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        if w.write_all(&body).is_err() || req.path != "/tail.tgz" {
            return;
        }
        let t = Instant::now();
        while !st.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(30) {
            if w.write_all(&[b'x'; 4096]).is_err() {
                return;
            }
        }
    });
    let deploy = |url: &str, size: usize| {
        let sc = Scratch::new();
        let m = sc.manifest(
            "m.yml",
            &format!(
                "src: {url}\nchecksum: {sum}\ndest: {}\nsize: {size}\n",
                sc.dest().display()
            ),
        );
        let run = capped(&sc).arg(&m).limit(Duration::from_secs(20)).run();
        (sc, run)
    };
    let tail = srv.url("/tail.tgz");
    let (sc, run) = deploy(&tail, len);
    run.assert_fail().assert_log(&format!(
        "fetch {tail}: refused: longer than its size, {len} bytes"
    ));
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    assert!(!sc.dest().exists());
    let rec = record::last(&sc.state_dir(), &sc.dest()).unwrap();
    assert_eq!(
        (rec.result, rec.failed_step),
        (Outcome::Refused, Some(Step::Download))
    );

    let exact = srv.url("/app.tgz");
    let (sc, run) = deploy(&exact, len - 1);
    run.assert_fail().assert_log(&format!(
        "fetch {exact}: refused: longer than its size, {} bytes",
        len - 1
    ));
    assert!(!sc.dest().exists());
    let (sc, run) = deploy(&exact, len + 1);
    run.assert_fail().assert_log(&format!(
        "fetch {exact}: shorter than its size: ended after {len} of {} bytes",
        len + 1
    ));
    assert!(!sc.dest().exists());
    let (sc, run) = deploy(&exact, len);
    run.assert_ok();
    assert!(sc.dest().join("hello.txt").exists());
    stop.store(true, Ordering::SeqCst);
}

/// A minisign public key line (any key: the signature is never checked here).
fn some_public_key() -> String {
    use base64::Engine;
    let mut raw = b"Ed".to_vec();
    raw.extend_from_slice(&[7; 8]);
    raw.extend_from_slice(&[9; 32]);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[test]
fn sigterm_during_the_manifest_or_signature_download_ends_the_run_at_once() {
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let srv = TestServer::start(move |req, w| {
        let t = Instant::now();
        let bounded = || !st.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(30);
        match req.path.as_str() {
            // A manifest whose head never comes.
            "/silent.yml" => {
                while bounded() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            "/signed.yml" => respond(w, "200 OK", b"dest: /srv/x\n"),
            // A manifest or a signature that trickles, a byte a second.
            _ => {
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
                );
                while bounded() {
                    if w.write_all(b"#").and_then(|_| w.flush()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    });
    let key = some_public_key();
    for (path, signed) in [
        ("/trickle.yml", false),
        ("/silent.yml", false),
        ("/signed.yml", true),
    ] {
        let sc = Scratch::new();
        let url = srv.url(path);
        let mut s = clean(sc.stretcher()).limit(Duration::from_secs(30));
        if signed {
            s = s.args(["--trusted-key", &key]);
        }
        let waited = if signed { "/signed.yml.minisig" } else { path };
        let before = srv.hits(waited);
        let running = s.arg(&url).spawn();
        let t = Instant::now();
        while srv.hits(waited) == before && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            srv.hits(waited) > before,
            "{path}: never asked for {waited}"
        );
        std::thread::sleep(Duration::from_millis(1500));
        running.signal(nix::sys::signal::Signal::SIGTERM);
        let signalled = Instant::now();
        let run = running.wait();
        let took = signalled.elapsed();
        assert_eq!(run.code(), 1, "{path}: {}", run.stderr);
        assert!(took < Duration::from_millis(1500), "{path}: {took:?}");
        run.assert_log("interrupted by SIGTERM");
        let rec = manifest_record(&sc, &url);
        let step = if signed {
            Step::Signature
        } else {
            Step::Manifest
        };
        assert_eq!(
            (rec.result, rec.failed_step),
            (Outcome::Interrupted, Some(step)),
            "{path}"
        );
    }
    stop.store(true, Ordering::SeqCst);
}

/// A server that answers every request with `302 Found` to `to`.
fn redirecting(tls: Option<Arc<rustls::ServerConfig>>, to: String) -> TestServer {
    TestServer::start_with(
        tls,
        Arc::new(move |_: &Req, w: &mut dyn Conn| {
            let _ = write!(
                w,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }),
    )
}

#[test]
fn a_redirect_outside_allow_url_is_refused() {
    let target = TestServer::start(|_, w| respond(w, "200 OK", b"dest: /srv/x\n"));
    let to = target.url("/m.yml");
    let srv = redirecting(None, to.clone());
    let sc = Scratch::new();
    let url = srv.url("/go");
    let run = clean(sc.stretcher())
        .args(["--allow-url", &srv.url("/")])
        .arg(&url)
        .run();
    run.assert_fail().assert_log(&format!(
        "fetch {url}: redirect to {to} refused by --allow-url: it starts with none of {}",
        srv.url("/")
    ));
    assert_eq!(target.all().len(), 0, "the target was asked");
    let rec = manifest_record(&sc, &url);
    assert_eq!(
        (rec.result, rec.failed_step),
        (Outcome::Refused, Some(Step::Manifest))
    );
    // Allowed, the same redirect is followed (a commands-only manifest: no hook).
    let run = clean(sc.stretcher())
        .args([
            "--allow-url",
            &srv.url("/"),
            "--allow-url",
            &target.url("/"),
        ])
        .arg(&url)
        .run();
    run.assert_ok();
    assert_eq!(target.hits("/m.yml"), 1);
}

#[test]
fn a_redirect_from_https_to_http_is_refused() {
    let sc = Scratch::new();
    let (ca_pem, cfg) = test_pki(sc.path());
    let target = TestServer::start(|_, w| respond(w, "200 OK", b"dest: /srv/x\n"));
    let to = target.url("/m.yml");
    let srv = redirecting(Some(cfg), to.clone());
    let url = srv.url("/go");
    assert!(url.starts_with("https://"));
    let run = clean(sc.stretcher())
        .env("SSL_CERT_FILE", &ca_pem)
        .args(["--retry", "2", "--retry-wait", "10ms"])
        .arg(&url)
        .run();
    run.assert_fail()
        .assert_log(&format!("fetch {url}: redirect from https to {to} refused"));
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    assert_eq!(target.all().len(), 0, "the target was asked");
    assert_eq!(manifest_record(&sc, &url).result, Outcome::Refused);
}

#[test]
fn credentials_and_the_query_never_go_to_another_host() {
    let target = TestServer::start(|_, w| respond(w, "200 OK", b"dest: /srv/x\n"));
    let srv = redirecting(None, target.url("/m.yml"));
    let url =
        srv.url("/go?X-Amz-Signature=topsecret")
            .replacen("http://", "http://user:hunter2@", 1);
    let sc = Scratch::new();
    clean(sc.stretcher()).arg(&url).run().assert_ok();
    // The first host got the credentials it was given; the second host nothing of them.
    let first = srv.all();
    assert!(first[0].header("authorization").is_some(), "{first:?}");
    let reqs = target.all();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    for (k, v) in &reqs[0].headers {
        for secret in ["hunter2", "topsecret", "dXNlcjpodW50ZXIy"] {
            assert!(!v.contains(secret), "{k}: {v}");
        }
        assert!(
            !k.eq_ignore_ascii_case("authorization") && !k.eq_ignore_ascii_case("referer"),
            "{k}: {v}"
        );
    }
}

/// Every file below `dir` (none when it does not exist), with its text.
fn files_below(dir: &Path) -> Vec<(PathBuf, String)> {
    if !dir.exists() {
        return Vec::new();
    }
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned();
            (e.path().to_path_buf(), text)
        })
        .collect()
}

#[test]
fn secrets_in_urls_never_leave_the_process() {
    let (tar, sum) = small_archive();
    // The archive server, and a second server for the manifests, which name it.
    let srv = TestServer::start(
        move |req, w| match req.path.split('?').next().unwrap_or("") {
            "/app.tgz" => respond(w, "200 OK", &tar),
            _ => respond(w, "404 Not Found", b""),
        },
    );
    let secrets = ["hunter2", "topsecret"];
    let sc = Scratch::new();
    let out = sc.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let textfiles = sc.path().join("textfiles");
    std::fs::create_dir(&textfiles).unwrap();
    let with_secrets = |s: &TestServer, path: &str, q: &str| {
        s.url(&format!("{path}?X-Amz-Signature={q}&X-Amz-Credential=AKIA"))
            .replacen("http://", "http://user:hunter2@", 1)
    };
    let src_ok = with_secrets(&srv, "/app.tgz", "topsecret");
    let src_missing = with_secrets(&srv, "/missing.tgz", "topsecret");
    let hooks = format!(
        "commands:\n  pre: [\"env > {o}/pre.env\"]\n  success: [\"cat > {o}/success.stdin; env > {o}/success.env\"]\n  failure: [\"cat > {o}/failure.stdin; env > {o}/failure.env\"]\n",
        o = out.display()
    );
    let good = format!(
        "src: {src_ok}\nchecksum: {sum}\ndest: {}\n{hooks}",
        sc.dest().display()
    );
    let bad = format!(
        "src: {src_missing}\nchecksum: {sum}\ndest: {}\n{hooks}",
        sc.dest().display()
    );
    let manifests =
        TestServer::start(
            move |req, w| match req.path.split('?').next().unwrap_or("") {
                "/good.yml" => respond(w, "200 OK", good.as_bytes()),
                "/bad.yml" => respond(w, "200 OK", bad.as_bytes()),
                _ => respond(w, "404 Not Found", b""),
            },
        );
    let good_url = with_secrets(&manifests, "/good.yml", "topsecret");
    let bad_url = with_secrets(&manifests, "/bad.yml", "topsecret");
    let missing_url = with_secrets(&manifests, "/none.yml", "topsecret");

    let mut outputs = Vec::new();
    let run = clean(sc.stretcher())
        .arg("--textfile-dir")
        .arg(&textfiles)
        .arg(&good_url)
        .run();
    run.assert_ok()
        .assert_log("Loading manifest: http://user:REDACTED@")
        .assert_log("/good.yml?REDACTED")
        .assert_log("/app.tgz?REDACTED");
    outputs.push(("good run", run.stdout, run.stderr));
    let run = clean(sc.stretcher())
        .args(["--retry", "1", "--retry-wait", "10ms", "--force"])
        .arg("--textfile-dir")
        .arg(&textfiles)
        .arg(&bad_url)
        .run();
    run.assert_fail()
        .assert_log("attempt 1 failed: fetch http://user:REDACTED@");
    outputs.push(("failed run", run.stdout, run.stderr));
    let run = clean(sc.stretcher())
        .arg("--textfile-dir")
        .arg(&textfiles)
        .arg(&missing_url)
        .run();
    run.assert_fail().assert_log("HTTP 404");
    outputs.push(("unusable manifest", run.stdout, run.stderr));
    for args in [&[][..], &["--json"], &["--brief", "--json"]] {
        let run = stretcher()
            .arg("status")
            .args(args)
            .arg("--state-dir")
            .arg(sc.state_dir())
            .run();
        // 1: a recorded deploy failed.
        assert_eq!(run.code(), 1, "{}", run.stderr);
        assert!(
            run.stdout.contains("REDACTED") || args.contains(&"--brief"),
            "{}",
            run.stdout
        );
        outputs.push(("status", run.stdout, run.stderr));
    }
    for (what, stdout, stderr) in &outputs {
        for secret in secrets {
            assert!(
                !stdout.contains(secret),
                "{what}: stdout has {secret}:\n{stdout}"
            );
            assert!(
                !stderr.contains(secret),
                "{what}: stderr has {secret}:\n{stderr}"
            );
        }
    }
    // The hooks' environment and stdin, the state directory, the metrics.
    let hook_files = files_below(&out);
    let names: Vec<String> = hook_files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "pre.env",
        "success.env",
        "success.stdin",
        "failure.env",
        "failure.stdin",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let env = std::fs::read_to_string(out.join("failure.env")).unwrap();
    assert!(
        env.contains("STRETCHER_SRC=http://user:REDACTED@")
            && env.contains("/missing.tgz?REDACTED"),
        "{env}"
    );
    assert!(
        env.contains("STRETCHER_MANIFEST_URL=http://user:REDACTED@"),
        "{env}"
    );
    let state = files_below(&sc.state_dir());
    assert!(
        state.iter().any(|(_, t)| t.contains("REDACTED")),
        "{state:?}"
    );
    let metrics = files_below(&textfiles);
    assert!(
        metrics.iter().any(|(_, t)| t.contains("REDACTED")),
        "{metrics:?}"
    );
    for (path, text) in hook_files.iter().chain(&state).chain(&metrics) {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{} has {secret}:\n{text}",
                path.display()
            );
        }
    }
}
