//! Google Cloud Storage sources (SPEC §8) against a real GCS emulator
//! (`gcp-storage-emulator` from PyPI, run as `python3 -m gcp_storage_emulator`, started
//! by each test on 127.0.0.1 and killed by its pid when the test ends), driven through the real binary: manifest and archive
//! in gs://, a relative src, object names with spaces, `+` and unicode, 404, a late
//! upload retried; and the credential chain against loopback fakes started here: a
//! token endpoint that checks a service account's RS256 JWT with the public half of a
//! key openssl made for the test, an authorized_user refresh, a metadata server, the
//! access-token variable. Object requests pass a gate that forwards them to the
//! emulator only with the bearer token the fake endpoint issued last.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::http::{respond, Conn, Req, TestServer};
use crate::util::*;

const BUCKET: &str = "deploys";
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";

/// A `gcp-storage-emulator` process on 127.0.0.1 with the bucket `deploys`, in memory.
pub struct Emulator {
    child: Child,
    addr: SocketAddr,
}

impl Emulator {
    pub fn start() -> Emulator {
        for _ in 0..5 {
            // A free port: bound and released here, then given to the emulator.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("python3")
                .args(["-m", "gcp_storage_emulator"])
                .args(["start", "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--in-memory", "--default-bucket", BUCKET, "--quiet"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 on PATH, with `pip install gcp-storage-emulator`");
            let mut emu = Emulator {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = emu.child.try_wait() {
                    break; // the port was taken after all: another one
                }
                // The emulator's own answer (its bucket), not another test's server
                // that took the port first.
                let bucket = format!("/storage/v1/b/{BUCKET}");
                if emu.call("GET", &bucket, b"").is_some_and(|(s, b)| {
                    s == 200 && String::from_utf8_lossy(&b).contains("\"storage#bucket\"")
                }) && matches!(emu.child.try_wait(), Ok(None))
                {
                    return emu;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("gcp-storage-emulator did not start");
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// One raw HTTP/1.0 request: (status, body).
    fn call(&self, method: &str, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .ok()?;
        s.write_all(body).ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        let text = String::from_utf8_lossy(&out);
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let at = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        Some((status, out[at..].to_vec()))
    }

    /// Uploads `data` as `name` (taken byte for byte) and returns its gs:// URL.
    pub fn put(&self, name: &str, data: &[u8]) -> String {
        let path = format!(
            "/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={}",
            pct(name)
        );
        let (status, body) = self.call("POST", &path, data).expect("upload");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        format!("gs://{BUCKET}/{name}")
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every byte but the unreserved ones as `%XX`.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn archive_bytes(text: &str) -> (Vec<u8>, String) {
    let tar = gzip(&raw_tar(&[
        Raw::Dir(b"./"),
        Raw::File(b"./hello.txt", text.as_bytes()),
    ]));
    let sum = sha1_bytes(&tar);
    (tar, sum)
}

fn manifest_text(src: &str, sum: &str, dest: &Path) -> String {
    format!(
        "src: \"{src}\"\nchecksum: {sum}\ndest: {}\n",
        dest.display()
    )
}

/// A run with no Google, AWS or proxy settings from outside: HOME is the scratch dir
/// (no gcloud file), the metadata server is a closed loopback port unless a test
/// sets one, object requests go to `host`.
pub fn google(sc: &Scratch, host: &str) -> Stretcher {
    let mut s = sc.stretcher();
    for k in [
        "GOOGLE_OAUTH_ACCESS_TOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "CLOUDSDK_CONFIG",
    ]
    .iter()
    .chain(&PROXY_VARS)
    {
        s = s.env_remove(k);
    }
    s.env("HOME", sc.path())
        .env("GCE_METADATA_HOST", "127.0.0.1:1")
        .env("STORAGE_EMULATOR_HOST", host)
}

fn hello(sc: &Scratch) -> Vec<u8> {
    std::fs::read(sc.dest().join("hello.txt")).unwrap()
}

/// No file under the scratch dir (dest, state, records) but `written` holds any of
/// `secrets`, and neither does the log.
#[track_caller]
fn assert_no_secrets(sc: &Scratch, run: &Run, written: &[&Path], secrets: &[&str]) {
    for s in secrets {
        assert!(!run.stderr.contains(s), "log shows {s:?}:\n{}", run.stderr);
    }
    for e in walkdir::WalkDir::new(sc.path()) {
        let e = e.unwrap();
        if !e.file_type().is_file() || written.contains(&e.path()) {
            continue;
        }
        let data = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned();
        for s in secrets {
            assert!(!data.contains(s), "{} holds {s:?}", e.path().display());
        }
    }
}

#[test]
fn manifest_and_archive_in_gs_with_a_relative_src() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("from gcs\n");
    let sc = Scratch::new();
    emu.put("releases/app.tgz", &tar);
    let m = emu.put(
        "releases/deploy.yml",
        manifest_text("app.tgz", &sum, &sc.dest()).as_bytes(),
    );
    for round in 0..2 {
        // The second deploy goes onto the first one's result, and downloads again
        // (--force: not the redeploy that downloads nothing).
        let run = google(&sc, &emu.host())
            .env("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.env-token")
            .arg("--force")
            .arg(&m)
            .run();
        run.assert_ok()
            .assert_log(&format!("Loading manifest: {m}"))
            .assert_log(&format!("Loading URL gs://{BUCKET}/releases/app.tgz"))
            .assert_log("credentials from GOOGLE_OAUTH_ACCESS_TOKEN")
            .assert_log("Checksum ok");
        assert_no_secrets(&sc, &run, &[], &["ya29.env-token"]);
        assert_eq!(hello(&sc), b"from gcs\n", "round {round}");
        assert!(sc.leftovers().is_empty(), "{:?}", sc.leftovers());
    }
    // No credentials at all: an emulator is asked without any (a third deploy).
    let run = google(&sc, &emu.host()).arg(&m).run();
    run.assert_ok()
        .assert_log("no credentials found: sending none");
    assert_eq!(hello(&sc), b"from gcs\n");
}

#[test]
fn object_names_with_spaces_plus_and_unicode() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("odd name\n");
    let src = emu.put("dir/my app+v1 ünïcødé 日本 %41.tgz", &tar);
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest_text(&src, &sum, &sc.dest()));
    for _ in 0..2 {
        google(&sc, &emu.host()).arg(&m).run().assert_ok();
        assert_eq!(hello(&sc), b"odd name\n");
    }
    // `%20` is three characters and `+` a plus, never a space: names are verbatim.
    for other in [src.replace(' ', "%20"), src.replace('+', " ")] {
        let sc = Scratch::new();
        let m = sc.manifest("m.yml", &manifest_text(&other, &sum, &sc.dest()));
        google(&sc, &emu.host())
            .arg(&m)
            .run()
            .assert_fail()
            .assert_log(&format!("fetch {other}: HTTP 404"));
    }
}

#[test]
fn missing_object_is_a_clear_404_and_dest_unchanged() {
    let emu = Emulator::start();
    let sc = Scratch::new();
    make_tree(&sc.dest(), &[("keep.txt", "old")]);
    let before = snapshot(&sc.dest());
    let src = format!("gs://{BUCKET}/nothing/app.tgz");
    let m = sc.manifest("m.yml", &manifest_text(&src, &"b".repeat(40), &sc.dest()));
    let run = google(&sc, &emu.host())
        .env("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.secret-404")
        .arg(&m)
        .run();
    run.assert_fail()
        .assert_log(&format!("fetch {src}: HTTP 404 Not Found"));
    assert_no_secrets(&sc, &run, &[], &["ya29.secret-404"]);
    assert_eq!(snapshot(&sc.dest()), before);
    assert!(sc.leftovers().is_empty(), "{:?}", sc.leftovers());
    // A missing manifest the same way.
    let m = format!("gs://{BUCKET}/nothing/deploy.yml");
    google(&sc, &emu.host())
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log(&format!("fetch {m}: HTTP 404"));
}

#[test]
fn a_late_upload_is_retried() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("late\n");
    let sc = Scratch::new();
    let src = format!("gs://{BUCKET}/late/app.tgz");
    let m = sc.manifest("m.yml", &manifest_text(&src, &sum, &sc.dest()));
    let running = google(&sc, &emu.host())
        .args(["--retry", "50", "--retry-wait", "100ms"])
        .arg(&m)
        .spawn();
    // The deploy is under way (and failing) before the object exists.
    std::thread::sleep(Duration::from_millis(1500));
    emu.put("late/app.tgz", &tar);
    let run = running.wait();
    run.assert_ok()
        .assert_log(&format!("fetch {src}: HTTP 404"))
        .assert_log("retrying in 100ms");
    assert_eq!(hello(&sc), b"late\n");
}

#[test]
fn allow_url_takes_gs_prefixes() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("allowed\n");
    let sc = Scratch::new();
    let src = emu.put("releases/app/app.tgz", &tar);
    let m = emu.put(
        "releases/app/deploy.yml",
        manifest_text("app.tgz", &sum, &sc.dest()).as_bytes(),
    );
    google(&sc, &emu.host())
        .args(["--allow-url", &format!("gs://{BUCKET}/releases/app/")])
        .arg(&m)
        .run()
        .assert_ok();
    assert_eq!(hello(&sc), b"allowed\n");
    // The src outside the prefix is refused; so is the manifest.
    let other = emu.put(
        "elsewhere/deploy.yml",
        manifest_text(&src, &sum, &sc.dest()).as_bytes(),
    );
    google(&sc, &emu.host())
        .args(["--allow-url", &format!("gs://{BUCKET}/elsewhere/")])
        .arg(&other)
        .run()
        .assert_fail()
        .assert_log("src URL refused by --allow-url");
    google(&sc, &emu.host())
        .args(["--allow-url", &format!("gs://{BUCKET}/releases/other/")])
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("manifest URL refused by --allow-url");
}

#[test]
fn no_credentials_without_an_emulator_is_a_clear_error() {
    let sc = Scratch::new();
    let src = format!("gs://{BUCKET}/x.tgz");
    let run = google(&sc, "")
        .env_remove("STORAGE_EMULATOR_HOST")
        .arg(&src)
        .run();
    run.assert_fail()
        .assert_log(&format!("fetch {src}: no Google credentials found"))
        .assert_log("metadata server 127.0.0.1:1");
    // A named credentials file that is not there is an error, not a fall-through.
    let run = google(&sc, "")
        .env(
            "GOOGLE_APPLICATION_CREDENTIALS",
            sc.path().join("none.json"),
        )
        .arg(&src)
        .run();
    run.assert_fail()
        .assert_log("GOOGLE_APPLICATION_CREDENTIALS: credentials file");
}

/// The tokens a fake endpoint issued, newest last; the gate wants the newest.
type Issued = Arc<Mutex<Vec<String>>>;

/// Object requests pass only with `Authorization: Bearer <the newest issued token>`,
/// and are then forwarded to the emulator; the bearer of every request is kept.
struct Gate {
    srv: TestServer,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl Gate {
    fn start(emu: &Emulator, issued: Issued) -> Gate {
        Gate::start_with(emu, issued, false)
    }

    /// With `revoke`, a token is refused once it has been used (as if revoked).
    fn start_with(emu: &Emulator, issued: Issued, revoke: bool) -> Gate {
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let revoked: Arc<Mutex<Vec<String>>> = Arc::default();
        let (seen2, upstream) = (seen.clone(), emu.addr);
        let srv = TestServer::start(move |req: &Req, w: &mut dyn Conn| {
            let bearer = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::to_string);
            seen2.lock().unwrap().push(bearer.clone());
            if bearer.as_deref() == Some("ya29.no-permission") {
                let body = br#"{"error":{"code":403,"message":"someone@example.com does not have storage.objects.get access to the Google Cloud Storage object."}}"#;
                return respond(w, "403 Forbidden", body);
            }
            let newest = issued.lock().unwrap().last().cloned();
            let mut revoked = revoked.lock().unwrap();
            if bearer.is_none() || bearer != newest || revoked.contains(bearer.as_ref().unwrap()) {
                let body = br#"{"error":{"code":401,"message":"Invalid Credentials"}}"#;
                return respond(w, "401 Unauthorized", body);
            }
            if revoke {
                revoked.extend(bearer);
            }
            drop(revoked);
            forward(upstream, req, w);
        });
        Gate { srv, seen }
    }

    fn host(&self) -> String {
        self.srv.addr().to_string()
    }

    fn bearers(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }
}

/// Sends a GET on to `upstream` and copies the answer back.
fn forward(upstream: SocketAddr, req: &Req, w: &mut dyn Conn) {
    let Ok(mut s) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
        return respond(w, "502 Bad Gateway", b"");
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "{} {} HTTP/1.0\r\nHost: {upstream}\r\n\r\n",
        req.method, req.path
    );
    let _ = std::io::copy(&mut s, w);
}

/// Reads a request body of `Content-Length` bytes.
fn body(req: &Req, r: &mut dyn Conn) -> String {
    let n: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut buf = vec![0u8; n];
    let _ = r.read_exact(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn form(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// Answers a grant with a new token `PREFIX-N` living `life` seconds.
fn issue(issued: &Issued, prefix: &str, life: u64, w: &mut dyn Conn) {
    let mut v = issued.lock().unwrap();
    let t = format!("{prefix}-{}", v.len() + 1);
    v.push(t.clone());
    let b = format!(r#"{{"access_token":"{t}","expires_in":{life},"token_type":"Bearer"}}"#);
    respond(w, "200 OK", b.as_bytes());
}

/// An RSA key made by openssl for this test: (PKCS#8 PEM, public key PEM path).
fn rsa_key(dir: &Path) -> (String, PathBuf) {
    let key = dir.join("sa-key.pem");
    let public = dir.join("sa-pub.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(Stdio::null())
        .status()
        .expect("openssl on PATH");
    assert!(ok.success());
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(ok.success());
    (std::fs::read_to_string(&key).unwrap(), public)
}

/// Checks a JWT's RS256 signature with openssl and the public key; returns its claims.
fn verify_jwt(jwt: &str, public: &Path, dir: &Path) -> Result<serde_json::Value, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, s] = parts[..] else {
        return Err("not three parts".into());
    };
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(h).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" || header["typ"] != "JWT" || header["kid"] != "key-1" {
        return Err(format!("header {header}"));
    }
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let tag = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let input = dir.join(format!("jwt-input-{tag}"));
    let sig = dir.join(format!("jwt-sig-{tag}"));
    std::fs::write(&input, format!("{h}.{c}")).unwrap();
    std::fs::write(&sig, b64.decode(s).map_err(|e| e.to_string())?).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(&sig)
        .arg(&input)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&sig);
    if !out.status.success() {
        return Err(format!(
            "signature: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    serde_json::from_slice(&b64.decode(c).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fake OAuth token endpoint for a service account: the JWT grant, verified.
fn sa_token_endpoint(
    public: PathBuf,
    dir: PathBuf,
    issued: Issued,
    life: u64,
) -> (TestServer, Arc<Mutex<Vec<String>>>) {
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let p2 = problems.clone();
    let srv = TestServer::start(move |req: &Req, w: &mut dyn Conn| {
        let text = body(req, w);
        let f = form(&text);
        let aud = format!("http://{}/token", req.header("host").unwrap_or(""));
        let check = || -> Result<(), String> {
            if req.method != "POST" || req.path != "/token" {
                return Err(format!("{} {}", req.method, req.path));
            }
            if req.header("content-type") != Some("application/x-www-form-urlencoded") {
                return Err(format!("content-type {:?}", req.header("content-type")));
            }
            if field(&f, "grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
                return Err(format!("grant_type {:?}", field(&f, "grant_type")));
            }
            let claims = verify_jwt(field(&f, "assertion").unwrap_or(""), &public, &dir)?;
            let (iat, exp) = (
                claims["iat"].as_u64().unwrap_or(0),
                claims["exp"].as_u64().unwrap_or(0),
            );
            let t = now();
            if claims["iss"] != "deployer@proj.iam.gserviceaccount.com"
                || claims["scope"] != SCOPE
                || claims["aud"] != aud.as_str()
                || iat > t + 60
                || iat + 120 < t
                || exp <= t
                || exp > iat + 3600
            {
                return Err(format!("claims {claims}"));
            }
            Ok(())
        };
        match check() {
            Ok(()) => issue(&issued, "sa-token", life, w),
            Err(e) => {
                p2.lock().unwrap().push(e);
                respond(w, "400 Bad Request", br#"{"error":"invalid_grant"}"#)
            }
        }
    });
    (srv, problems)
}

#[test]
fn service_account_jwt_is_verified_and_its_token_cached() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("service account\n");
    let keys = tempfile::tempdir().unwrap();
    let (pem, public) = rsa_key(keys.path());
    for (life, want_grants) in [(3600, 1), (60, 2)] {
        // 3600 s: one grant for the manifest and the archive; 60 s (within the
        // five minutes before expiry): a new token for each request.
        let issued: Issued = Arc::default();
        let (tokens, problems) =
            sa_token_endpoint(public.clone(), keys.path().into(), issued.clone(), life);
        let gate = Gate::start(&emu, issued.clone());
        let sc = Scratch::new();
        emu.put(&format!("sa{life}/app.tgz"), &tar);
        let m = emu.put(
            &format!("sa{life}/deploy.yml"),
            manifest_text("app.tgz", &sum, &sc.dest()).as_bytes(),
        );
        let creds = sc.file(
            "sa.json",
            serde_json::json!({
                "type": "service_account",
                "project_id": "proj",
                "private_key_id": "key-1",
                "private_key": pem,
                "client_email": "deployer@proj.iam.gserviceaccount.com",
                "client_id": "1234",
                "token_uri": tokens.url("/token"),
            })
            .to_string()
            .as_bytes(),
        );
        let run = google(&sc, &gate.host())
            .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
            .arg(&m)
            .run();
        run.assert_ok().assert_log(&format!(
            "credentials from service account deployer@proj.iam.gserviceaccount.com in {}",
            creds.display()
        ));
        assert!(
            problems.lock().unwrap().is_empty(),
            "{:?}",
            problems.lock().unwrap()
        );
        assert_eq!(hello(&sc), b"service account\n");
        let issued_now = issued.lock().unwrap().clone();
        assert_eq!(issued_now.len(), want_grants, "{issued_now:?}");
        let want: Vec<Option<String>> = if want_grants == 1 {
            vec![Some("sa-token-1".into()); 2]
        } else {
            vec![Some("sa-token-1".into()), Some("sa-token-2".into())]
        };
        assert_eq!(gate.bearers(), want);
        let key_body: String = pem.lines().nth(1).unwrap().to_string();
        let mut secrets: Vec<&str> = issued_now.iter().map(String::as_str).collect();
        secrets.push(&key_body);
        secrets.push("eyJhbGciOiJSUzI1NiI"); // the start of every assertion
        assert_no_secrets(&sc, &run, &[creds.as_path()], &secrets);
    }

    // A key the endpoint does not know (another one): the grant is refused, a
    // clear error naming the URL, no deploy.
    let other = tempfile::tempdir().unwrap();
    let (other_pem, _) = rsa_key(other.path());
    let issued: Issued = Arc::default();
    let (tokens, problems) = sa_token_endpoint(public, keys.path().into(), issued.clone(), 3600);
    let gate = Gate::start(&emu, issued);
    let sc = Scratch::new();
    let creds = sc.file(
        "sa.json",
        serde_json::json!({
            "type": "service_account",
            "private_key_id": "key-1",
            "private_key": other_pem,
            "client_email": "deployer@proj.iam.gserviceaccount.com",
            "token_uri": tokens.url("/token"),
        })
        .to_string()
        .as_bytes(),
    );
    let src = format!("gs://{BUCKET}/sa3600/deploy.yml");
    let run = google(&sc, &gate.host())
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .arg(&src)
        .run();
    run.assert_fail()
        .assert_log(&format!(
            "fetch {src}: service account deployer@proj.iam.gserviceaccount.com"
        ))
        .assert_log("HTTP 400 (invalid_grant)");
    assert!(
        problems.lock().unwrap()[0].contains("signature"),
        "{:?}",
        problems.lock().unwrap()
    );
    assert!(gate.bearers().is_empty());
    let key_body = other_pem.lines().nth(1).unwrap().to_string();
    assert_no_secrets(&sc, &run, &[creds.as_path()], &[&key_body]);
}

#[test]
fn a_refused_cached_token_is_replaced_on_retry() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("revoked\n");
    let keys = tempfile::tempdir().unwrap();
    let (pem, public) = rsa_key(keys.path());
    let issued: Issued = Arc::default();
    let (tokens, problems) = sa_token_endpoint(public, keys.path().into(), issued.clone(), 3600);
    let gate = Gate::start_with(&emu, issued.clone(), true);
    let sc = Scratch::new();
    emu.put("revoked/app.tgz", &tar);
    let m = emu.put(
        "revoked/deploy.yml",
        manifest_text("app.tgz", &sum, &sc.dest()).as_bytes(),
    );
    let creds = sc.file(
        "sa.json",
        serde_json::json!({
            "type": "service_account",
            "private_key_id": "key-1",
            "private_key": pem,
            "client_email": "deployer@proj.iam.gserviceaccount.com",
            "token_uri": tokens.url("/token"),
        })
        .to_string()
        .as_bytes(),
    );
    let run = google(&sc, &gate.host())
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .args(["--retry", "1", "--retry-wait", "10ms"])
        .arg(&m)
        .run();
    run.assert_ok().assert_log("HTTP 401 Unauthorized");
    assert!(problems.lock().unwrap().is_empty());
    assert_eq!(hello(&sc), b"revoked\n");
    // The manifest with token 1; the archive with token 1, refused; then token 2.
    let t = |n: u32| Some(format!("sa-token-{n}"));
    assert_eq!(gate.bearers(), vec![t(1), t(1), t(2)]);
    assert_no_secrets(&sc, &run, &[creds.as_path()], &["sa-token-1", "sa-token-2"]);
}

#[test]
fn authorized_user_from_gcloud_adc_file_refreshes() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("authorized user\n");
    let src = emu.put("user/app.tgz", &tar);
    let issued: Issued = Arc::default();
    let i2 = issued.clone();
    let tokens = TestServer::start(move |req: &Req, w: &mut dyn Conn| {
        let f = form(&body(req, w));
        let ok = req.method == "POST"
            && field(&f, "grant_type") == Some("refresh_token")
            && field(&f, "client_id") == Some("cid.apps.googleusercontent.com")
            && field(&f, "client_secret") == Some("client-secret-xyz")
            && field(&f, "refresh_token") == Some("1//refresh-token-xyz");
        if ok {
            issue(&i2, "user-token", 3600, w)
        } else {
            respond(w, "400 Bad Request", br#"{"error":"invalid_grant"}"#)
        }
    });
    let gate = Gate::start(&emu, issued.clone());
    let sc = Scratch::new();
    // gcloud's file under HOME, as `gcloud auth application-default login` leaves it.
    let dir = sc.path().join(".config/gcloud");
    std::fs::create_dir_all(&dir).unwrap();
    let adc = dir.join("application_default_credentials.json");
    let user = |secret: &str| {
        serde_json::json!({
            "type": "authorized_user",
            "client_id": "cid.apps.googleusercontent.com",
            "client_secret": secret,
            "refresh_token": "1//refresh-token-xyz",
            "token_uri": tokens.url("/token"),
        })
        .to_string()
    };
    std::fs::write(&adc, user("client-secret-xyz")).unwrap();
    let m = sc.manifest("m.yml", &manifest_text(&src, &sum, &sc.dest()));
    let run = google(&sc, &gate.host()).arg(&m).run();
    run.assert_ok().assert_log(&format!(
        "credentials from authorized user in {}",
        adc.display()
    ));
    assert_eq!(hello(&sc), b"authorized user\n");
    assert_eq!(gate.bearers(), vec![Some("user-token-1".to_string())]);
    assert_no_secrets(
        &sc,
        &run,
        &[adc.as_path()],
        &["user-token-1", "client-secret-xyz", "refresh-token-xyz"],
    );
    // A refused refresh: the error names the URL and the endpoint's answer.
    std::fs::write(&adc, user("wrong-secret")).unwrap();
    let sc2 = Scratch::new();
    let m = sc2.manifest("m.yml", &manifest_text(&src, &sum, &sc2.dest()));
    let run = google(&sc2, &gate.host())
        .env("HOME", sc.path())
        .arg(&m)
        .run();
    run.assert_fail()
        .assert_log(&format!("fetch {src}: authorized user in"))
        .assert_log("HTTP 400 (invalid_grant)");
    assert!(!run.stderr.contains("wrong-secret"));
    // GOOGLE_APPLICATION_CREDENTIALS wins over gcloud's file.
    let named = sc2.file("user.json", user("client-secret-xyz").as_bytes());
    let run = google(&sc2, &gate.host())
        .env("HOME", sc.path())
        .env("GOOGLE_APPLICATION_CREDENTIALS", &named)
        .arg(&m)
        .run();
    run.assert_ok().assert_log(&format!(
        "credentials from authorized user in {}",
        named.display()
    ));
}

#[test]
fn metadata_server_token() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("metadata\n");
    let src = emu.put("gce/app.tgz", &tar);
    let issued: Issued = Arc::default();
    let i2 = issued.clone();
    let md = TestServer::start(move |req: &Req, w: &mut dyn Conn| {
        if req.header("metadata-flavor") != Some("Google") {
            return respond(
                w,
                "403 Forbidden",
                b"Missing Metadata-Flavor:Google header.",
            );
        }
        if req.method == "GET"
            && req.path == "/computeMetadata/v1/instance/service-accounts/default/token"
        {
            let mut v = i2.lock().unwrap();
            let t = format!("gce-token-{}", v.len() + 1);
            v.push(t.clone());
            let b = format!(r#"{{"access_token":"{t}","expires_in":3599,"token_type":"Bearer"}}"#);
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            );
        } else {
            respond(w, "404 Not Found", b"");
        }
    });
    let gate = Gate::start(&emu, issued.clone());
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest_text(&src, &sum, &sc.dest()));
    let run = google(&sc, &gate.host())
        .env("GCE_METADATA_HOST", md.addr().to_string())
        .arg(&m)
        .run();
    run.assert_ok().assert_log(&format!(
        "credentials from the metadata server {}",
        md.addr()
    ));
    assert_eq!(hello(&sc), b"metadata\n");
    assert_eq!(gate.bearers(), vec![Some("gce-token-1".to_string())]);
    assert_no_secrets(&sc, &run, &[], &["gce-token-1"]);
}

#[test]
fn access_token_variable_is_sent_and_a_refusal_is_clear() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("token var\n");
    let src = emu.put("var/app.tgz", &tar);
    let issued: Issued = Arc::new(Mutex::new(vec!["ya29.from-the-variable".to_string()]));
    let gate = Gate::start(&emu, issued);
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest_text(&src, &sum, &sc.dest()));
    // The variable wins over a credentials file.
    let bogus = sc.file("bogus.json", b"{\"type\":\"external_account\"}");
    let run = google(&sc, &gate.host())
        .env("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.from-the-variable")
        .env("GOOGLE_APPLICATION_CREDENTIALS", &bogus)
        .arg(&m)
        .run();
    run.assert_ok();
    assert_eq!(hello(&sc), b"token var\n");
    assert_eq!(
        gate.bearers(),
        vec![Some("ya29.from-the-variable".to_string())]
    );
    assert_no_secrets(&sc, &run, &[], &["ya29.from-the-variable"]);
    // A token the store refuses: the URL and the status, not the token.
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest_text(&src, &sum, &sc.dest()));
    let run = google(&sc, &gate.host())
        .env("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.stale-token")
        .arg(&m)
        .run();
    run.assert_fail().assert_log(&format!(
        "fetch {src}: HTTP 401 Unauthorized (Invalid Credentials)"
    ));
    assert_no_secrets(&sc, &run, &[], &["ya29.stale-token"]);
    assert!(!sc.dest().exists());
    // A token without the permission: 403 and GCS's own reason.
    let run = google(&sc, &gate.host())
        .env("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.no-permission")
        .arg(&m)
        .run();
    run.assert_fail().assert_log(&format!(
        "fetch {src}: HTTP 403 Forbidden (someone@example.com does not have storage.objects.get access"
    ));
    assert_no_secrets(&sc, &run, &[], &["ya29.no-permission"]);
    assert!(!sc.dest().exists());
}

#[test]
fn the_one_download_path_checksum_bandwidth_and_deadline() {
    let emu = Emulator::start();
    let (tar, sum) = archive_bytes("paced\n");
    let src = emu.put("path/app.tgz", &tar);
    // The bytes are hashed on the way: a wrong checksum fails, dest untouched.
    let sc = Scratch::new();
    let m = sc.manifest("m.yml", &manifest_text(&src, &"c".repeat(40), &sc.dest()));
    google(&sc, &emu.host())
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("checksum mismatch");
    assert!(!sc.dest().exists());
    // The bandwidth cap and the byte count of every download.
    let m = sc.manifest("m.yml", &manifest_text(&src, &sum, &sc.dest()));
    google(&sc, &emu.host())
        .args(["--max-bandwidth", "100000"])
        .arg(&m)
        .run()
        .assert_ok()
        .assert_log("Set max bandwidth 100000 bytes/sec")
        .assert_log(&format!("Read {} bytes from {src}", tar.len()));
    assert_eq!(hello(&sc), b"paced\n");
    // A token endpoint that does not answer in time: the deadline ends the wait.
    let slow = TestServer::start(|req: &Req, w: &mut dyn Conn| {
        let _ = body(req, w);
        std::thread::sleep(Duration::from_secs(6));
        respond(w, "200 OK", br#"{"access_token":"late","expires_in":3600}"#);
    });
    let sc = Scratch::new();
    let creds = sc.file(
        "user.json",
        serde_json::json!({
            "type": "authorized_user",
            "client_id": "c",
            "client_secret": "s",
            "refresh_token": "r",
            "token_uri": slow.url("/token"),
        })
        .to_string()
        .as_bytes(),
    );
    let m = sc.manifest("m.yml", &manifest_text(&src, &sum, &sc.dest()));
    let run = google(&sc, &emu.host())
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .args(["--timeout", "1500ms"])
        .arg(&m)
        .run();
    run.assert_fail()
        .assert_log(&format!("fetch {src}: timeout after 1.5s"));
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    assert!(!sc.dest().exists());
}
