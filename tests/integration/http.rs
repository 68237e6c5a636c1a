//! HTTP and HTTPS sources (SPEC §8) against small servers started here on 127.0.0.1:
//! status errors, retries, a connection dropped mid-body, the deadline, the bandwidth
//! cap, and TLS with a CA written by the test and trusted through `SSL_CERT_FILE`.
//!
//! Every server binds 127.0.0.1 only, bounds its own work in time, and is stopped
//! (its threads joined) when the test drops it. `TestServer` is shared with `s3.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::util::*;

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a handler gets: the connection, to write the answer (and read more if it
/// plays a proxy).
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

type Handler = dyn Fn(&Req, &mut dyn Conn) + Send + Sync;

/// A tiny HTTP/1.1 server (optionally TLS): one thread per connection, one request
/// per connection, `Connection: close`. The handler writes the raw response.
pub struct TestServer {
    addr: SocketAddr,
    tls: bool,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pub requests: Arc<Mutex<Vec<Req>>>,
}

impl TestServer {
    pub fn start(handler: impl Fn(&Req, &mut dyn Conn) + Send + Sync + 'static) -> TestServer {
        Self::start_with(None, Arc::new(handler))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>, handler: Arc<Handler>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let requests: Arc<Mutex<Vec<Req>>> = Arc::default();
        let is_tls = tls.is_some();
        let accept = {
            let (stop, conns, requests) = (stop.clone(), conns.clone(), requests.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (handler, requests, tls) = (handler.clone(), requests.clone(), tls.clone());
                    let h = std::thread::spawn(move || serve(stream, tls, &*handler, &requests));
                    conns.lock().unwrap().push(h);
                }
            })
        };
        TestServer {
            addr,
            tls: is_tls,
            stop,
            accept: Some(accept),
            conns,
            requests,
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests for `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    pub fn all(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for h in std::mem::take(&mut *self.conns.lock().unwrap()) {
            let _ = h.join();
        }
    }
}

fn serve(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: &Handler,
    requests: &Mutex<Vec<Req>>,
) {
    // Bounds every blocking step of a connection thread.
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(10)));
    let mut stream: Box<dyn Conn> = match tls {
        Some(cfg) => {
            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
        None => Box::new(tcp),
    };
    let Some(req) = read_head(&mut stream) else {
        return;
    };
    requests.lock().unwrap().push(req.clone());
    handler(&req, &mut stream);
    let _ = stream.flush();
}

pub fn read_head(r: &mut dyn Read) -> Option<Req> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match r.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Req {
        method,
        path,
        headers,
    })
}

/// Writes a whole response with a Content-Length.
pub fn respond(w: &mut dyn Write, status: &str, body: &[u8]) {
    let _ = write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = w.write_all(body);
}

/// A small tar archive and its sha1.
fn small_archive() -> (Vec<u8>, String) {
    let tar = gzip(&raw_tar(&[
        Raw::Dir(b"./"),
        Raw::File(b"./hello.txt", b"hello over http\n"),
    ]));
    let sum = sha1_bytes(&tar);
    (tar, sum)
}

/// Pseudo-random bytes (incompressible, deterministic).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn manifest(src: &str, sum: &str, dest: &std::path::Path) -> String {
    format!("src: {src}\nchecksum: {sum}\ndest: {}\n", dest.display())
}

/// A run with no proxy or AWS settings leaking in from the environment.
fn clean(s: Stretcher) -> Stretcher {
    PROXY_VARS
        .iter()
        .chain(&["SSL_CERT_FILE", "SSL_CERT_DIR"])
        .fold(s, |s, k| s.env_remove(k))
}

#[test]
fn manifest_and_src_over_http_with_user_agent() {
    let (tar, sum) = small_archive();
    let sc = Scratch::new();
    // The manifest names its src relative to itself.
    let text = manifest("app.tgz", &sum, &sc.dest());
    let srv = TestServer::start(move |req, w| match req.path.as_str() {
        "/deploy/m.yml" => respond(w, "200 OK", text.as_bytes()),
        "/deploy/app.tgz" => respond(w, "200 OK", &tar),
        _ => respond(w, "404 Not Found", b""),
    });
    let run = clean(sc.stretcher()).arg(srv.url("/deploy/m.yml")).run();
    run.assert_ok()
        .assert_log(&format!("Loading URL {}", srv.url("/deploy/app.tgz")))
        .assert_log("Read ")
        .assert_log("bytes/s");
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"hello over http\n"
    );
    let ua = format!("stretcher/{}", env!("CARGO_PKG_VERSION"));
    let reqs = srv.all();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    for r in &reqs {
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("user-agent"), Some(ua.as_str()), "{r:?}");
    }
    assert!(sc.leftovers().is_empty(), "{:?}", sc.leftovers());
}

#[test]
fn not_found_without_retry_fails_at_once_and_names_the_url() {
    let sc = Scratch::new();
    make_tree(&sc.dest(), &[("keep.txt", "old")]);
    let before = snapshot(&sc.dest());
    let srv = TestServer::start(|_, w| respond(w, "404 Not Found", b"<html>nope</html>"));
    let url = srv.url("/missing.tgz");
    let m = sc.manifest("m.yml", &manifest(&url, &"a".repeat(40), &sc.dest()));
    let run = clean(sc.stretcher()).arg(&m).run();
    let error = format!("fetch {url}: HTTP 404 Not Found");
    run.assert_fail().assert_log(&error);
    assert_eq!(srv.hits("/missing.tgz"), 1, "no --retry: one attempt");
    // An error is logged once (SPEC §9).
    assert_eq!(
        run.stderr.lines().filter(|l| l.contains(&error)).count(),
        1,
        "{}",
        run.stderr
    );
    assert_eq!(snapshot(&sc.dest()), before);
    assert!(sc.leftovers().is_empty(), "{:?}", sc.leftovers());
}

/// The race `--retry` is for: the event fires before the archive is uploaded.
#[test]
fn not_found_twice_then_found_deploys_with_retry() {
    let (tar, sum) = small_archive();
    let sc = Scratch::new();
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    let srv = TestServer::start(move |_, w| {
        let mut n = c.lock().unwrap();
        *n += 1;
        if *n <= 2 {
            respond(w, "404 Not Found", b"not yet");
        } else {
            respond(w, "200 OK", &tar);
        }
    });
    let url = srv.url("/late.tgz");
    let m = sc.manifest("m.yml", &manifest(&url, &sum, &sc.dest()));
    let run = clean(sc.stretcher())
        .args(["--retry", "3", "--retry-wait", "1"])
        .arg(&m)
        .run();
    run.assert_ok()
        .assert_log(&format!(
            "attempt 1 failed: fetch {url}: HTTP 404 Not Found; retrying in 1s (1/3)"
        ))
        .assert_log(&format!(
            "attempt 2 failed: fetch {url}: HTTP 404 Not Found; retrying in 1s (2/3)"
        ));
    assert!(!run.stderr.contains("(3/3)"), "{}", run.stderr);
    assert_eq!(srv.hits("/late.tgz"), 3);
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"hello over http\n"
    );
    redeploy_unchanged(&sc, &m, |s| clean(s).args(["--retry", "3"]));
}

/// A checksum mismatch is the archive's verdict, not the network's: never retried.
#[test]
fn checksum_mismatch_is_not_retried() {
    let (tar, _) = small_archive();
    let sc = Scratch::new();
    let srv = TestServer::start(move |_, w| respond(w, "200 OK", &tar));
    let url = srv.url("/a.tgz");
    let m = sc.manifest("m.yml", &manifest(&url, &"c".repeat(40), &sc.dest()));
    let run = clean(sc.stretcher())
        .args(["--retry", "3", "--retry-wait", "10ms"])
        .arg(&m)
        .run();
    run.assert_fail().assert_log("checksum mismatch");
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    assert_eq!(srv.hits("/a.tgz"), 1);
    assert!(!sc.dest().exists());
}

#[test]
fn server_error_then_success_is_retried() {
    let (tar, sum) = small_archive();
    let sc = Scratch::new();
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    let srv = TestServer::start(move |_, w| {
        let mut n = c.lock().unwrap();
        *n += 1;
        if *n == 1 {
            respond(w, "500 Internal Server Error", b"busy");
        } else {
            respond(w, "200 OK", &tar);
        }
    });
    let m = sc.manifest("m.yml", &manifest(&srv.url("/a.tgz"), &sum, &sc.dest()));
    let run = clean(sc.stretcher())
        .args(["--retry", "1", "--retry-wait", "50ms"])
        .arg(&m)
        .run();
    run.assert_ok()
        .assert_log("attempt 1 failed: ")
        .assert_log("HTTP 500 Internal Server Error; retrying in 50ms (1/1)");
    assert_eq!(srv.hits("/a.tgz"), 2);
    assert!(sc.dest().join("hello.txt").exists());
    // Without --retry the 500 is the end.
    *count.lock().unwrap() = 0;
    let sc2 = Scratch::new();
    let m = sc2.manifest("m.yml", &manifest(&srv.url("/a.tgz"), &sum, &sc2.dest()));
    clean(sc2.stretcher())
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("HTTP 500");
    assert!(!sc2.dest().exists());
}

#[test]
fn connection_dropped_mid_body_never_deploys() {
    // A plain tar: a short read could otherwise look like a complete smaller archive.
    let tar = raw_tar(&[Raw::File(b"big.bin", &noise(200_000))]);
    let sum = sha1_bytes(&tar);
    let full = tar.clone();
    let attempts = Arc::new(Mutex::new(0));
    let a = attempts.clone();
    let srv = TestServer::start(move |req, w| {
        let mut n = a.lock().unwrap();
        *n += 1;
        if req.path == "/chunked.tar" {
            // Chunked, with no terminating chunk.
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            );
            let _ = write!(w, "{:x}\r\n", 50_000);
            let _ = w.write_all(&full[..50_000]);
            let _ = w.write_all(b"\r\n");
            return;
        }
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            full.len()
        );
        // The first attempt of /flaky.tar and every /short.tar stop half way.
        let cut = req.path == "/short.tar" || *n == 1;
        let end = if cut { full.len() / 2 } else { full.len() };
        let _ = w.write_all(&full[..end]);
    });

    for path in ["/short.tar", "/chunked.tar"] {
        let sc = Scratch::new();
        make_tree(&sc.dest(), &[("keep.txt", "old")]);
        let before = snapshot(&sc.dest());
        let m = sc.manifest("m.yml", &manifest(&srv.url(path), &sum, &sc.dest()));
        let run = clean(sc.stretcher()).arg(&m).run();
        run.assert_fail();
        assert!(
            !run.stderr.contains("checksum mismatch"),
            "the short body must be caught as a fetch error: {}",
            run.stderr
        );
        assert_eq!(snapshot(&sc.dest()), before, "{path}");
        assert!(sc.leftovers().is_empty(), "{:?}", sc.leftovers());
    }
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest(&srv.url("/short.tar"), &sum, &sc.dest()));
    let run = clean(sc.stretcher()).arg(&m).run();
    // ureq notices the early close itself; the error says how far it got.
    run.assert_fail().assert_log(&format!(
        "fetch {}: Peer disconnected after {} of {} bytes",
        srv.url("/short.tar"),
        tar.len() / 2,
        tar.len()
    ));

    // With a retry, the second (whole) answer is deployed.
    *attempts.lock().unwrap() = 0;
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest(&srv.url("/flaky.tar"), &sum, &sc.dest()));
    let run = clean(sc.stretcher())
        .args(["--retry", "1", "--retry-wait", "10ms"])
        .arg(&m)
        .run();
    run.assert_ok().assert_log("retrying");
    assert_eq!(
        std::fs::read(sc.dest().join("big.bin")).unwrap().len(),
        200_000
    );
}

#[test]
fn timeout_stops_a_slow_server() {
    let tar = raw_tar(&[Raw::File(b"big.bin", &noise(100_000))]);
    let sum = sha1_bytes(&tar);
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let srv = TestServer::start(move |req, w| {
        if req.path == "/silent.tar" {
            // Headers never come; bounded so that the thread ends.
            for _ in 0..60 {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            tar.len()
        );
        // 1 KB every 100 ms: 10 s for the whole archive, unless the client goes.
        for chunk in tar.chunks(1000) {
            if st.load(Ordering::SeqCst) || w.write_all(chunk).and_then(|_| w.flush()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    for path in ["/slow.tar", "/silent.tar"] {
        let sc = Scratch::new();
        let m = sc.manifest("m.yml", &manifest(&srv.url(path), &sum, &sc.dest()));
        let run = clean(sc.stretcher())
            .args(["--timeout", "1s", "--retry", "5", "--retry-wait", "10ms"])
            .arg(&m)
            .limit(Duration::from_secs(20))
            .run();
        run.assert_fail().assert_log("timeout after 1.0s");
        assert!(
            run.elapsed < Duration::from_secs(5),
            "{path}: {:?}",
            run.elapsed
        );
        assert!(!sc.dest().exists());
        assert!(sc.leftovers().is_empty(), "{:?}", sc.leftovers());
    }
    stop.store(true, Ordering::SeqCst);
}

#[test]
fn max_bandwidth_paces_the_download() {
    let tar = raw_tar(&[Raw::File(b"big.bin", &noise(100_000))]);
    let sum = sha1_bytes(&tar);
    let len = tar.len();
    let srv = TestServer::start(move |_, w| respond(w, "200 OK", &tar));
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest(&srv.url("/a.tar"), &sum, &sc.dest()));
    let t = std::time::Instant::now();
    let run = clean(sc.stretcher())
        .args(["--max-bandwidth", "50KB"])
        .arg(&m)
        .run();
    let took = t.elapsed();
    run.assert_ok()
        .assert_log("Set max bandwidth 50000 bytes/sec");
    // ~101 KB at 50 KB/s: at least 1.5 s (generous), and not absurdly long.
    assert!(
        took >= Duration::from_millis(1500),
        "{len} bytes took only {took:?}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// A CA and a server certificate for 127.0.0.1 / localhost, made here.
fn test_pki(dir: &std::path::Path) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "stretcher test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let pem = dir.join("ca.pem");
    std::fs::write(&pem, ca_cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (pem, Arc::new(cfg))
}

#[test]
fn https_with_a_ca_from_ssl_cert_file() {
    let (tar, sum) = small_archive();
    let sc = Scratch::new();
    let (ca_pem, cfg) = test_pki(sc.path());
    let srv = TestServer::start_with(
        Some(cfg),
        Arc::new(move |req: &Req, w: &mut dyn Conn| match req.path.as_str() {
            "/app.tgz" => respond(w, "200 OK", &tar),
            _ => respond(w, "404 Not Found", b""),
        }),
    );
    let url = srv.url("/app.tgz");
    assert!(url.starts_with("https://127.0.0.1:"));
    let m = sc.manifest("m.yml", &manifest(&url, &sum, &sc.dest()));

    // Not trusted by the system store: a TLS error naming the URL, nothing deployed.
    let run = clean(sc.stretcher()).arg(&m).run();
    run.assert_fail().assert_log(&format!("fetch {url}: "));
    assert!(!sc.dest().exists());

    let run = clean(sc.stretcher())
        .env("SSL_CERT_FILE", &ca_pem)
        .arg(&m)
        .run();
    run.assert_ok();
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"hello over http\n"
    );
    // `localhost` is in the certificate too (resolves to 127.0.0.1 or ::1).
    let url2 = format!("https://localhost:{}/app.tgz", srv.addr().port());
    let sc2 = Scratch::new();
    let m2 = sc2.manifest("m.yml", &manifest(&url2, &sum, &sc2.dest()));
    clean(sc2.stretcher())
        .env("SSL_CERT_FILE", &ca_pem)
        .arg(&m2)
        .run()
        .assert_ok();
}

#[test]
fn proxy_from_the_environment_is_used_and_no_proxy_honoured() {
    let (tar, sum) = small_archive();
    // The "proxy": answers CONNECT, then serves the tunnelled request itself.
    let tunnelled: Arc<Mutex<Vec<Req>>> = Arc::default();
    let seen = tunnelled.clone();
    let proxy = TestServer::start(move |req, conn| {
        if req.method != "CONNECT" {
            return respond(conn, "405 Method Not Allowed", b"");
        }
        let _ = conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        let _ = conn.flush();
        if let Some(inner) = read_head(conn) {
            seen.lock().unwrap().push(inner);
            respond(conn, "200 OK", &tar);
        }
    });
    let origin = "http://origin.invalid:8080/app.tgz";
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest(origin, &sum, &sc.dest()));
    let run = clean(sc.stretcher())
        .env("http_proxy", proxy.url(""))
        .arg(&m)
        .run();
    run.assert_ok();
    assert_eq!(proxy.hits("origin.invalid:8080"), 1, "{:?}", proxy.all());
    assert_eq!(tunnelled.lock().unwrap()[0].path, "/app.tgz");

    // NO_PROXY (a leading-dot parent domain) bypasses it: the origin does not
    // exist, so the fetch fails without a word to the proxy.
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest(origin, &sum, &sc.dest()));
    let run = clean(sc.stretcher())
        .env("HTTP_PROXY", proxy.url(""))
        .env("NO_PROXY", "example.com, .invalid")
        .arg(&m)
        .run();
    run.assert_fail().assert_log(&format!("fetch {origin}: "));
    assert_eq!(proxy.hits("origin.invalid:8080"), 1);
    // An https_proxy is not used for http:// URLs.
    let run = clean(sc.stretcher())
        .env("HTTPS_PROXY", proxy.url(""))
        .arg(&m)
        .run();
    run.assert_fail();
    assert_eq!(proxy.hits("origin.invalid:8080"), 1);
}

#[test]
fn redirects_are_followed() {
    let (tar, sum) = small_archive();
    let srv = TestServer::start(move |req, w| match req.path.as_str() {
        "/old.tgz" => {
            let _ = write!(
                w,
                "HTTP/1.1 302 Found\r\nLocation: /new.tgz\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        "/new.tgz" => respond(w, "200 OK", &tar),
        _ => respond(w, "404 Not Found", b""),
    });
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest(&srv.url("/old.tgz"), &sum, &sc.dest()));
    clean(sc.stretcher()).arg(&m).run().assert_ok();
    assert_eq!(srv.hits("/new.tgz"), 1);
}

#[test]
fn progress_only_on_a_terminal_and_never_in_the_log() {
    let tar = raw_tar(&[Raw::File(b"big.bin", &noise(60_000))]);
    let sum = sha1_bytes(&tar);
    let srv = TestServer::start(move |_, w| respond(w, "200 OK", &tar));
    let sc = Scratch::new();
    let hook_log = sc.path().join("hook.log");
    let m = sc.manifest(
        "m.yml",
        &format!(
            "{}commands:\n  success: [\"cat > {}\"]\n",
            manifest(&srv.url("/a.tar"), &sum, &sc.dest()),
            hook_log.display()
        ),
    );
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg(&m)
        .current_dir(sc.work())
        .args(["--max-bandwidth", "100KB"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(pty.slave));
    for k in ["CONSUL_INDEX", "SERF_EVENT", "HTTP_PROXY", "http_proxy"] {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // closes our copy of the slave, so the master sees EOF at exit
    let master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut m = master;
        let _ = m.read_to_end(&mut out); // ends with EIO once the child is gone
        out
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stretcher ran too long");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let tty = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(status.success(), "{tty}");
    assert!(
        tty.contains("\r\x1b[K"),
        "no progress line on the terminal: {tty:?}"
    );
    assert!(tty.contains(" bytes of "), "{tty:?}");
    let log = std::fs::read_to_string(&hook_log).unwrap();
    assert!(log.contains("Read "), "{log}");
    assert!(
        !log.contains('\r') && !log.contains(" bytes of "),
        "{log:?}"
    );

    // Not a terminal (the usual handler case): no progress line at all.
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest(&srv.url("/a.tar"), &sum, &sc.dest()));
    let run = clean(sc.stretcher()).arg(&m).run();
    run.assert_ok();
    assert!(!run.stderr.contains('\r'), "{:?}", run.stderr);
}
