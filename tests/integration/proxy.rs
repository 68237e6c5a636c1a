//! Proxies as Go's net/http uses them (SPEC §8), through a real Squid started here:
//! `http://` in absolute form (`GET http://host/path`), `https://` by CONNECT, the proxy
//! URL's credentials as `Proxy-Authorization: Basic` for both (Squid's
//! `basic_ncsa_auth` with an htpasswd file), `NO_PROXY` and loopback hosts direct.
//!
//! Each Squid listens on 127.0.0.1 on a free port, with its own configuration, logs and
//! `hosts_file` in a temp dir; it keeps Squid's stock rules (`http_access deny
//! !Safe_ports`, `http_access deny CONNECT !SSL_ports`) and allows loopback clients
//! only. The one change to the stock ACLs: the test's TLS port is added to `SSL_ports`
//! (stock: 443 only), as an operator does for an internal https origin on another
//! port. The origin is named `origin.test`, which only Squid resolves (to 127.0.0.1,
//! through its `hosts_file`), since stretcher, like Go, never proxies a loopback
//! host. Squid runs in the foreground (`-N`), bounded in time, and is stopped by its
//! pid when the test ends.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{clean, respond, small_archive, test_pki, TestServer};
use crate::util::*;

const SQUID: &str = "/usr/sbin/squid";
const NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";
/// The name of the origin, known to Squid only.
const ORIGIN: &str = "origin.test";
/// Longest a Squid may take to start, and to stop after SIGTERM.
const SQUID_START: Duration = Duration::from_secs(30);
const SQUID_STOP: Duration = Duration::from_secs(10);

/// A running Squid; stopped (SIGTERM, then SIGKILL) by its pid on drop.
struct Squid {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Squid {
    /// Starts Squid. `tls_port`: added to `SSL_ports`; `auth`: (user, password) that
    /// every request must bring.
    fn start(tls_port: Option<u16>, auth: Option<(&str, &str)>) -> Squid {
        assert!(
            Path::new(SQUID).exists(),
            "squid is not installed: the proxy tests need it (apt-get install squid)"
        );
        let dir = tempfile::Builder::new()
            .prefix("stretcher-squid-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join("hosts"), format!("127.0.0.1 {ORIGIN}\n")).unwrap();
        let mut auth_lines = String::new();
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd")
                .args(["-b", "-c"])
                .arg(d.join("htpasswd"))
                .args([user, pass])
                .output()
                .expect("htpasswd (apache2-utils) is installed");
            assert!(out.status.success(), "{out:?}");
            auth_lines = format!(
                "auth_param basic program {NCSA_AUTH} {}\nauth_param basic realm stretcher-test\nacl authed proxy_auth REQUIRED\nhttp_access deny !authed\n",
                d.join("htpasswd").display()
            );
        }
        let ssl_ports = match tls_port {
            Some(p) => format!("443 {p}"),
            None => "443".into(),
        };
        let port = free_port();
        let conf = format!(
            "http_port 127.0.0.1:{port}
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log stdio:{d}/access.log squid
coredump_dir {d}
hosts_file {d}/hosts
netdb_filename none
cache deny all
cache_mem 8 MB
shutdown_lifetime 0 seconds
dns_timeout 5 seconds
acl SSL_ports port {ssl_ports}
acl Safe_ports port 80 443 1025-65535
acl CONNECT method CONNECT
acl loopback src 127.0.0.1/32
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
{auth_lines}http_access allow loopback
http_access deny all
",
            d = d.display()
        );
        std::fs::write(d.join("squid.conf"), conf).unwrap();
        if nix::unistd::geteuid().is_root() {
            // Squid started as root works as its cache_effective_user (`proxy`).
            let user = nix::unistd::User::from_name("proxy")
                .unwrap()
                .expect("user proxy");
            for e in walkdir::WalkDir::new(d) {
                let e = e.unwrap();
                nix::unistd::chown(e.path(), Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        let child = Command::new(SQUID)
            .arg("-N")
            .arg("-f")
            .arg(d.join("squid.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr")).unwrap())
            .spawn()
            .expect("start squid");
        let mut squid = Squid {
            child: Some(child),
            dir,
            port,
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = squid.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("squid exited at start ({status}):\n{}", squid.logs());
            }
            assert!(
                t.elapsed() < SQUID_START,
                "squid did not listen within {SQUID_START:?}:\n{}",
                squid.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        squid
    }

    /// The proxy URL, with `user:pass@` when given.
    fn url(&self, creds: Option<(&str, &str)>) -> String {
        match creds {
            Some((u, p)) => format!("http://{u}:{p}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "stderr:\n{}\ncache.log:\n{}",
            read("stderr"),
            read("cache.log")
        )
    }

    /// Stops Squid (which writes out its access log) and returns the access log.
    fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if t.elapsed() > SQUID_STOP {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Requests in Squid's access log (native format: field 4 is the result code, 6 the
/// method, 7 the URL), without the connections that sent no request (the test's own
/// "is it listening" probe).
fn logged(access_log: &str) -> Vec<(String, String, String)> {
    access_log
        .lines()
        .filter(|l| !l.contains(" NONE_NONE/000 "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 7).then(|| (f[3].to_string(), f[5].to_string(), f[6].to_string()))
        })
        .collect()
}

/// An origin on 127.0.0.1 (plain or TLS) serving a manifest at /m.yml whose src is
/// `app.tgz` beside it, for `dest`.
fn origin(tls: Option<Arc<rustls::ServerConfig>>, dest: &Path) -> TestServer {
    let (tar, sum) = small_archive();
    let text = format!("src: app.tgz\nchecksum: {sum}\ndest: {}\n", dest.display());
    TestServer::start_with(
        tls,
        Arc::new(move |req, w| match req.path.as_str() {
            "/m.yml" => respond(w, "200 OK", text.as_bytes()),
            "/app.tgz" => respond(w, "200 OK", &tar),
            _ => respond(w, "404 Not Found", b""),
        }),
    )
}

fn deployed(sc: &Scratch) -> bool {
    std::fs::read(sc.dest().join("hello.txt")).is_ok_and(|b| b == b"hello over http\n")
}

/// `http://` manifest and archive through a stock Squid: absolute-form GETs, no CONNECT
/// (which stock Squid refuses for port 80 and every port but 443).
#[test]
fn http_goes_through_stock_squid_in_absolute_form() {
    let sc = Scratch::new();
    let srv = origin(None, &sc.dest());
    let port = srv.addr().port();
    let mut squid = Squid::start(None, None);
    let url = format!("http://{ORIGIN}:{port}/m.yml");
    let run = clean(sc.stretcher())
        .env("HTTP_PROXY", squid.url(None))
        .arg(&url)
        .run();
    run.assert_ok();
    assert!(deployed(&sc));
    redeploy_unchanged(&sc, Path::new(&url), |r| {
        clean(r).env("http_proxy", squid.url(None))
    });
    // Loopback hosts never go through a proxy.
    let sc2 = Scratch::new();
    let direct = origin(None, &sc2.dest());
    clean(sc2.stretcher())
        .env("HTTP_PROXY", squid.url(None))
        .arg(direct.url("/m.yml"))
        .run()
        .assert_ok();
    let log = squid.stop();
    let reqs = logged(&log);
    let want = |path: &str| ("GET".to_string(), format!("http://{ORIGIN}:{port}{path}"));
    for path in ["/m.yml", "/app.tgz"] {
        assert_eq!(
            reqs.iter()
                .filter(|(_, m, u)| (m.clone(), u.clone()) == want(path))
                .count(),
            2,
            "{path} twice (deploy and redeploy):\n{log}"
        );
    }
    assert!(
        reqs.iter().all(|(code, _, _)| code.ends_with("/200")),
        "{log}"
    );
    assert!(!reqs.iter().any(|(_, m, _)| m == "CONNECT"), "{log}");
    assert_eq!(reqs.len(), 4, "only the origin.test requests:\n{log}");
    assert!(direct.hits("/m.yml") == 1 && direct.hits("/app.tgz") == 1);
}

/// `https://` through Squid by CONNECT (the test's TLS port added to SSL_ports).
#[test]
fn https_goes_through_squid_by_connect() {
    let sc = Scratch::new();
    let (ca_pem, tls) = test_pki(sc.path());
    let srv = origin(Some(tls), &sc.dest());
    let port = srv.addr().port();
    let mut squid = Squid::start(Some(port), None);
    let url = format!("https://{ORIGIN}:{port}/m.yml");
    let run = clean(sc.stretcher())
        .env("HTTPS_PROXY", squid.url(None))
        .env("SSL_CERT_FILE", &ca_pem)
        .arg(&url)
        .run();
    run.assert_ok();
    assert!(deployed(&sc));
    let log = squid.stop();
    let reqs = logged(&log);
    assert!(!reqs.is_empty(), "{log}");
    for (code, method, target) in &reqs {
        assert_eq!(method, "CONNECT", "{log}");
        assert_eq!(target, &format!("{ORIGIN}:{port}"), "{log}");
        assert!(code.ends_with("/200"), "{log}");
    }
    // What Squid tunnelled reached the origin over TLS, origin-form.
    assert_eq!(srv.hits("/m.yml"), 1);
    assert_eq!(srv.hits("/app.tgz"), 1);
}

/// A proxy that wants basic auth: the credentials of the proxy URL work for http
/// (absolute form) and https (CONNECT); without them the deploy is refused with 407.
#[test]
fn proxy_credentials_from_the_url_for_both_forms() {
    let creds = ("deployer", "s3cret:pw");
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, tls) = test_pki(dir.path());
    let sc_http = Scratch::new();
    let sc_https = Scratch::new();
    let plain = origin(None, &sc_http.dest());
    let secure = origin(Some(tls), &sc_https.dest());
    let mut squid = Squid::start(Some(secure.addr().port()), Some(creds));
    // The password's `:` is written %3A in the URL.
    let with = squid.url(Some((creds.0, "s3cret%3Apw")));

    let http_url = format!("http://{ORIGIN}:{}/m.yml", plain.addr().port());
    let https_url = format!("https://{ORIGIN}:{}/m.yml", secure.addr().port());
    // Refused without credentials (and with wrong ones), nothing deployed.
    for proxy in [squid.url(None), squid.url(Some((creds.0, "wrong")))] {
        let sc = Scratch::new();
        let run = clean(sc.stretcher())
            .env("HTTP_PROXY", &proxy)
            .arg(&http_url)
            .run();
        run.assert_fail().assert_log(&format!(
            "fetch {http_url}: HTTP 407 Proxy Authentication Required"
        ));
        let run = clean(sc.stretcher())
            .env("HTTPS_PROXY", &proxy)
            .env("SSL_CERT_FILE", &ca_pem)
            .arg(&https_url)
            .run();
        run.assert_fail()
            .assert_log(&format!("fetch {https_url}: "));
        assert!(!sc.dest().exists());
    }
    let run = clean(sc_http.stretcher())
        .env("HTTP_PROXY", &with)
        .arg(&http_url)
        .run();
    run.assert_ok();
    assert!(deployed(&sc_http));
    assert!(
        !run.stderr.contains("s3cret"),
        "the proxy password is never shown"
    );
    let run = clean(sc_https.stretcher())
        .env("HTTPS_PROXY", &with)
        .env("SSL_CERT_FILE", &ca_pem)
        .arg(&https_url)
        .run();
    run.assert_ok();
    assert!(deployed(&sc_https));
    let log = squid.stop();
    let reqs = logged(&log);
    let ok: Vec<_> = reqs
        .iter()
        .filter(|(c, _, _)| c.ends_with("/200"))
        .collect();
    assert!(
        ok.iter().any(|(_, m, u)| m == "GET" && u == &http_url),
        "{log}"
    );
    assert!(
        ok.iter()
            .any(|(_, m, u)| m == "CONNECT" && u == &format!("{ORIGIN}:{}", secure.addr().port())),
        "{log}"
    );
    assert!(
        reqs.iter().any(|(c, _, _)| c.ends_with("/407")),
        "the refusals are Squid's:\n{log}"
    );
}

/// `NO_PROXY` keeps a host away from the proxy: origin.test is then looked up by the
/// host itself, which does not know it, and Squid sees nothing.
#[test]
fn no_proxy_bypasses_squid() {
    let sc = Scratch::new();
    let srv = origin(None, &sc.dest());
    let mut squid = Squid::start(None, None);
    let url = format!("http://{ORIGIN}:{}/m.yml", srv.addr().port());
    for no_proxy in [ORIGIN, ".test", "*"] {
        let run = clean(sc.stretcher())
            .env("HTTP_PROXY", squid.url(None))
            .env("NO_PROXY", no_proxy)
            .arg(&url)
            .run();
        run.assert_fail().assert_log(&format!("fetch {url}: "));
    }
    // The same with the proxy deploys (the control).
    clean(sc.stretcher())
        .env("HTTP_PROXY", squid.url(None))
        .env("NO_PROXY", "other.test")
        .arg(&url)
        .run()
        .assert_ok();
    let log = squid.stop();
    assert_eq!(logged(&log).len(), 2, "only the control's two GETs:\n{log}");
}
