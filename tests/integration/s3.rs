//! S3 sources (SPEC §8) against a real S3-compatible server that verifies SigV4
//! (s3s + s3s-fs, in-process on 127.0.0.1, one per test binary run), driven through
//! the real binary: env credentials, shared files with a named profile, a session
//! token, wrong secret, missing object, odd keys, manifest and src both in S3, and
//! the ECS and EC2 IMDSv2 credential endpoints (small servers from `http.rs`).
//!
//! The server lives for the test process (a thread with its own tokio runtime; its
//! files under `CARGO_TARGET_TMPDIR`, removed by the next run); every other server is
//! stopped by its test. Nothing binds anything but 127.0.0.1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::http::{respond, TestServer};
use crate::util::*;

const AK: &str = "AKIASTRETCHERTEST";
const SK: &str = "stretcher/test+secret";
/// Temporary (session) credentials: the server wants `SESSION_TOKEN` with them.
const SESSION_AK: &str = "ASIASTRETCHERSESSION";
const SESSION_SK: &str = "session-secret";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEBYa+session/token=";
/// A bucket, pre-filled by the tests as a directory under the server's root.
const BUCKET: &str = "deploys";

struct S3Server {
    addr: SocketAddr,
    root: PathBuf,
    /// Query strings of the requests the server saw.
    seen: Arc<Mutex<Vec<String>>>,
    /// Each answer's path and the body bytes it announced (`Content-Length`).
    sent: Sent,
}

type Sent = Arc<Mutex<Vec<(String, u64)>>>;

/// The one S3 server of this test run.
fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        // The server outlives every test, so its files cannot be a TempDir: they go
        // under cargo's per-target temp dir, one dir per test process, and the dirs
        // of processes that have ended are removed here.
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stretcher-s3");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if !std::path::Path::new("/proc").join(&pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let root = base.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let sent: Sent = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let (root2, seen2, sent2) = (root.clone(), seen.clone(), sent.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_io()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(serve(root2, seen2, sent2, tx));
        });
        let addr = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        S3Server {
            addr,
            root,
            seen,
            sent,
        }
    })
}

async fn serve(
    root: PathBuf,
    seen: Arc<Mutex<Vec<String>>>,
    sent: Sent,
    tx: std::sync::mpsc::Sender<SocketAddr>,
) {
    let fs = s3s_fs::FileSystem::new(&root).unwrap();
    let mut auth = s3s::auth::SimpleAuth::new();
    auth.register(AK.into(), SK.into());
    auth.register(SESSION_AK.into(), SESSION_SK.into());
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(auth);
    let svc = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tx.send(listener.local_addr().unwrap()).unwrap();
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let (svc, seen, sent) = (svc.clone(), seen.clone(), sent.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let query = req.uri().query().unwrap_or("").to_string();
                    let path = req.uri().path().to_string();
                    let sent = sent.clone();
                    seen.lock().unwrap().push(query.clone());
                    // s3s checks the signature (which covers the token in the query), not
                    // the token itself: play STS and refuse session keys without it.
                    let token = format!("X-Amz-Security-Token={}", url_encode(SESSION_TOKEN));
                    let refused = query.contains(&format!("X-Amz-Credential={SESSION_AK}"))
                        && !query.contains(&token);
                    let fut = hyper::service::Service::call(&svc, req);
                    async move {
                        if refused {
                            return Ok(hyper::Response::builder()
                                .status(403)
                                .body(s3s::Body::from(
                                    "<Error><Code>InvalidToken</Code></Error>".to_string(),
                                ))
                                .unwrap());
                        }
                        let resp = fut.await;
                        if let Ok(r) = &resp {
                            let len = r
                                .headers()
                                .get(hyper::header::CONTENT_LENGTH)
                                .and_then(|v| v.to_str().ok()?.parse().ok());
                            sent.lock().unwrap().push((path, len.unwrap_or(0)));
                        }
                        resp
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                .await;
        });
    }
}

/// RFC 3986 percent-encoding of a query value, as SigV4 writes it.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Puts `data` at `key` in the bucket (s3s-fs keeps objects as files).
pub fn put(key: &str, data: &[u8]) -> String {
    let path = server().root.join(BUCKET).join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    format!("s3://{BUCKET}/{key}")
}

/// The directory that holds the objects under `prefix` (s3s-fs keeps them as files):
/// what is written there is served as `s3://deploys/PREFIX/...`.
pub fn bucket_dir(prefix: &str) -> PathBuf {
    let dir = server().root.join(BUCKET).join(prefix);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The body bytes the server has announced for the object `key` (`Content-Length`
/// of each answer), and the number of answers.
pub fn sent_for(key: &str) -> (u64, usize) {
    let want = format!("/{BUCKET}/{key}");
    let sent = server().sent.lock().unwrap();
    sent.iter()
        .filter(|(p, _)| *p == want)
        .fold((0, 0), |(b, n), (_, len)| (b + len, n + 1))
}

/// A unique key prefix per test (tests share the bucket).
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn archive_bytes(text: &str) -> (Vec<u8>, String) {
    let tar = gzip(&raw_tar(&[
        Raw::Dir(b"./"),
        Raw::File(b"./hello.txt", text.as_bytes()),
    ]));
    let sum = sha1_bytes(&tar);
    (tar, sum)
}

/// A run pointed at the test server, with no AWS or proxy settings from outside:
/// HOME is the scratch dir (no ~/.aws), IMDS is off unless a test turns it on.
pub fn aws(sc: &Scratch) -> Stretcher {
    let mut s = sc.stretcher();
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY",
        "AWS_SECRET_KEY",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "AWS_ENDPOINT_URL",
    ]
    .iter()
    .chain(&PROXY_VARS)
    {
        s = s.env_remove(k);
    }
    s.env("HOME", sc.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_S3", format!("http://{}", server().addr))
}

/// `with_keys(aws(sc))` as a closure for `redeploy_unchanged` (which brings its own
/// `sc.stretcher()`: the environment of `aws` is applied to it).
fn with_keys_fn(sc: &Scratch) -> impl FnOnce(Stretcher) -> Stretcher + '_ {
    move |_| with_keys(aws(sc))
}

pub fn with_keys(s: Stretcher) -> Stretcher {
    s.env("AWS_ACCESS_KEY_ID", AK)
        .env("AWS_SECRET_ACCESS_KEY", SK)
}

fn s3_manifest(sc: &Scratch, src: &str, sum: &str) -> PathBuf {
    sc.manifest(
        "m.yml",
        &format!(
            "src: {src}\nchecksum: {sum}\ndest: {}\n",
            sc.dest().display()
        ),
    )
}

#[track_caller]
fn assert_no_secrets(run: &Run) {
    for secret in [
        SK,
        SESSION_SK,
        SESSION_TOKEN,
        "X-Amz-Signature",
        "X-Amz-Credential",
    ] {
        assert!(
            !run.stderr.contains(secret),
            "log shows {secret:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn env_credentials_deploy() {
    let (tar, sum) = archive_bytes("from s3\n");
    let src = put(&format!("{}/app.tgz", unique("env")), &tar);
    let sc = Scratch::new();
    let m = s3_manifest(&sc, &src, &sum);
    let run = with_keys(aws(&sc)).arg(&m).run();
    run.assert_ok()
        .assert_log(&format!("Loading URL {src}"))
        .assert_log("credentials from environment")
        .assert_log("region us-east-1");
    assert_no_secrets(&run);
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"from s3\n"
    );
    redeploy_unchanged(&sc, &m, with_keys_fn(&sc));
}

#[test]
fn manifest_and_src_both_in_s3() {
    let (tar, sum) = archive_bytes("both in s3\n");
    let dir = unique("both");
    let sc = Scratch::new();
    put(&format!("{dir}/app.tgz"), &tar);
    // The src is relative to the manifest's s3:// URL.
    let manifest_url = put(
        &format!("{dir}/deploy.yml"),
        format!(
            "src: app.tgz\nchecksum: {sum}\ndest: {}\n",
            sc.dest().display()
        )
        .as_bytes(),
    );
    let run = with_keys(aws(&sc))
        .env("AWS_REGION", "eu-west-3")
        .arg(&manifest_url)
        .run();
    run.assert_ok()
        .assert_log(&format!("Loading manifest: {manifest_url}"))
        .assert_log(&format!("Loading URL s3://{BUCKET}/{dir}/app.tgz"))
        .assert_log("region eu-west-3");
    assert_no_secrets(&run);
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"both in s3\n"
    );
}

#[test]
fn shared_files_with_a_named_profile() {
    let (tar, sum) = archive_bytes("profile\n");
    let src = put(&format!("{}/app.tgz", unique("profile")), &tar);
    let sc = Scratch::new();
    let creds = sc.file(
        "creds",
        format!(
            "[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n\
             [deployer]\naws_access_key_id = {AK}\naws_secret_access_key = {SK}\n"
        )
        .as_bytes(),
    );
    let config = sc.file(
        "config",
        b"[default]\nregion = us-west-2\n[profile deployer]\nregion = ap-south-1\n",
    );
    let m = s3_manifest(&sc, &src, &sum);
    let run = aws(&sc)
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_PROFILE", "deployer")
        .arg(&m)
        .run();
    run.assert_ok()
        .assert_log("credentials from profile \"deployer\"")
        .assert_log("region ap-south-1");
    assert_no_secrets(&run);

    // The default location, ~/.aws, with the profile only in the config file
    // (as `[profile x]`), chosen by AWS_DEFAULT_PROFILE.
    let sc = Scratch::new();
    std::fs::create_dir(sc.path().join(".aws")).unwrap();
    std::fs::write(
        sc.path().join(".aws/config"),
        format!("[profile cfg]\naws_access_key_id = {AK}\naws_secret_access_key = {SK}\n"),
    )
    .unwrap();
    let m = s3_manifest(&sc, &src, &sum);
    let run = aws(&sc).env("AWS_DEFAULT_PROFILE", "cfg").arg(&m).run();
    run.assert_ok()
        .assert_log("credentials from profile \"cfg\"");
}

#[test]
fn session_token_is_sent_and_required() {
    let (tar, sum) = archive_bytes("session\n");
    let src = put(&format!("{}/app.tgz", unique("session")), &tar);
    let sc = Scratch::new();
    let m = s3_manifest(&sc, &src, &sum);
    let run = aws(&sc)
        .env("AWS_ACCESS_KEY_ID", SESSION_AK)
        .env("AWS_SECRET_ACCESS_KEY", SESSION_SK)
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .arg(&m)
        .run();
    run.assert_ok();
    assert_no_secrets(&run);
    // Without the token the same keys are refused.
    let sc = Scratch::new();
    let m = s3_manifest(&sc, &src, &sum);
    let run = aws(&sc)
        .env("AWS_ACCESS_KEY_ID", SESSION_AK)
        .env("AWS_SECRET_ACCESS_KEY", SESSION_SK)
        .arg(&m)
        .run();
    run.assert_fail()
        .assert_log("HTTP 403 Forbidden (InvalidToken)");
}

#[test]
fn wrong_secret_is_a_clear_403_and_dest_unchanged() {
    let (tar, sum) = archive_bytes("never\n");
    let src = put(&format!("{}/app.tgz", unique("wrong")), &tar);
    let sc = Scratch::new();
    make_tree(&sc.dest(), &[("keep.txt", "old")]);
    let before = snapshot(&sc.dest());
    let m = s3_manifest(&sc, &src, &sum);
    let run = aws(&sc)
        .env("AWS_ACCESS_KEY_ID", AK)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["--retry", "2", "--retry-wait", "10ms"])
        .arg(&m)
        .run();
    run.assert_fail().assert_log(&format!(
        "fetch {src}: HTTP 403 Forbidden (SignatureDoesNotMatch"
    ));
    // Every failed attempt is retried (SPEC §8), each logged with its reason.
    assert_eq!(
        run.stderr
            .matches("HTTP 403 Forbidden (SignatureDoesNotMatch")
            .count(),
        3,
        "two retries and the final error:\n{}",
        run.stderr
    );
    run.assert_log("; retrying in 10ms (2/2)");
    assert!(!run.stderr.contains("not-the-secret"));
    assert_no_secrets(&run);
    assert_eq!(snapshot(&sc.dest()), before);
    assert!(sc.leftovers().is_empty(), "{:?}", sc.leftovers());
}

/// The event fired before the upload finished: the first GETs answer 404, then the
/// key appears and the deploy goes through (`--retry`).
#[test]
fn key_uploaded_after_the_deploy_started_is_retried_until_found() {
    let (tar, sum) = archive_bytes("uploaded late\n");
    let key = format!("{}/app.tgz", unique("late"));
    let src = format!("s3://{BUCKET}/{key}");
    let sc = Scratch::new();
    let m = s3_manifest(&sc, &src, &sum);
    let running = with_keys(aws(&sc))
        .args(["--retry", "10", "--retry-wait", "1"])
        .arg(&m)
        .spawn();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    put(&key, &tar);
    let run = running.wait();
    run.assert_ok().assert_log(&format!(
        "attempt 1 failed: fetch {src}: HTTP 404 Not Found (NoSuchKey"
    ));
    assert_no_secrets(&run);
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"uploaded late\n"
    );
}

#[test]
fn missing_object_is_a_clear_404() {
    let sc = Scratch::new();
    let src = format!("s3://{BUCKET}/{}/nothing.tgz", unique("missing"));
    let m = s3_manifest(&sc, &src, &"b".repeat(40));
    let run = with_keys(aws(&sc)).arg(&m).run();
    run.assert_fail()
        .assert_log(&format!("fetch {src}: HTTP 404 Not Found (NoSuchKey"));
    assert_no_secrets(&run);
    assert!(!sc.dest().exists());
    // A missing manifest the same way.
    let run = with_keys(aws(&sc)).arg(&src).run();
    run.assert_fail()
        .assert_log(&format!("fetch {src}: HTTP 404"));
}

#[test]
fn keys_with_spaces_plus_and_unicode() {
    let (tar, sum) = archive_bytes("odd key\n");
    let key = format!("{}/my app+v1 ünïcødé 日本.tgz", unique("odd"));
    let src = put(&key, &tar);
    let sc = Scratch::new();
    let m = sc.manifest(
        "m.yml",
        &format!(
            "src: \"{src}\"\nchecksum: {sum}\ndest: {}\n",
            sc.dest().display()
        ),
    );
    let run = with_keys(aws(&sc)).arg(&m).run();
    run.assert_ok();
    assert_eq!(
        std::fs::read(sc.dest().join("hello.txt")).unwrap(),
        b"odd key\n"
    );
    // `+` is a plus and `%20` is three characters, not a space: the key is verbatim.
    let sc = Scratch::new();
    let verbatim = src.replace(' ', "%20");
    let m = sc.manifest(
        "m.yml",
        &format!(
            "src: \"{verbatim}\"\nchecksum: {sum}\ndest: {}\n",
            sc.dest().display()
        ),
    );
    with_keys(aws(&sc))
        .arg(&m)
        .run()
        .assert_fail()
        .assert_log("HTTP 404");
}

#[test]
fn no_credentials_is_a_clear_error() {
    let sc = Scratch::new();
    let src = format!("s3://{BUCKET}/x.tgz");
    let m = s3_manifest(&sc, &src, &"c".repeat(40));
    let run = aws(&sc)
        .args(["--retry", "3", "--retry-wait", "10ms"])
        .arg(&m)
        .run();
    run.assert_fail()
        .assert_log(&format!("fetch {src}: no AWS credentials found"));
    // Retried like any failure (credentials may come from an endpoint that is not up
    // yet), each retry with its reason.
    run.assert_log(&format!(
        "attempt 3 failed: fetch {src}: no AWS credentials found"
    ));
}

/// A fake EC2 instance metadata service (IMDSv2) handing out `keys`.
fn imds(keys: (&'static str, &'static str, Option<&'static str>)) -> TestServer {
    TestServer::start(move |req, w| {
        let token_ok = req.header("x-aws-ec2-metadata-token") == Some("imds-token-123");
        match (req.method.as_str(), req.path.as_str()) {
            ("PUT", "/latest/api/token") => {
                if req.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() {
                    respond(w, "200 OK", b"imds-token-123")
                } else {
                    respond(w, "400 Bad Request", b"")
                }
            }
            (_, _) if !token_ok => respond(w, "401 Unauthorized", b""),
            ("GET", "/latest/meta-data/iam/security-credentials/") => {
                respond(w, "200 OK", b"deploy-role")
            }
            ("GET", "/latest/meta-data/iam/security-credentials/deploy-role") => {
                let expires = chrono::Utc::now() + chrono::Duration::hours(6);
                let token = keys
                    .2
                    .map(|t| format!(",\"Token\":\"{t}\""))
                    .unwrap_or_default();
                let body = format!(
                    "{{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"{}\",\
                     \"SecretAccessKey\":\"{}\"{token},\"Expiration\":\"{}\"}}",
                    keys.0,
                    keys.1,
                    expires.format("%Y-%m-%dT%H:%M:%SZ")
                );
                respond(w, "200 OK", body.as_bytes())
            }
            _ => respond(w, "404 Not Found", b""),
        }
    })
}

#[test]
fn ec2_instance_role_through_imdsv2() {
    let (tar, sum) = archive_bytes("imds\n");
    let src = put(&format!("{}/app.tgz", unique("imds")), &tar);
    let srv = imds((SESSION_AK, SESSION_SK, Some(SESSION_TOKEN)));
    let sc = Scratch::new();
    let m = s3_manifest(&sc, &src, &sum);
    let run = aws(&sc)
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", srv.url("/"))
        .arg(&m)
        .run();
    run.assert_ok()
        .assert_log("credentials from EC2 instance role deploy-role");
    assert_no_secrets(&run);
    let reqs = srv.all();
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(reqs[0].path, "/latest/api/token");
    assert!(reqs[1..]
        .iter()
        .all(|r| r.header("x-aws-ec2-metadata-token") == Some("imds-token-123")));
    // The token reached S3 (it is required for these keys, see the server).
    assert!(server()
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|q| q.contains(&format!("X-Amz-Credential={SESSION_AK}"))
            && q.contains("X-Amz-Security-Token=")));

    // AWS_EC2_METADATA_DISABLED=true skips it.
    let sc = Scratch::new();
    let m = s3_manifest(&sc, &src, &sum);
    let before = srv.all().len();
    let run = aws(&sc)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", srv.url("/"))
        .arg(&m)
        .run();
    run.assert_fail().assert_log("no AWS credentials found");
    assert_eq!(srv.all().len(), before);
}

#[test]
fn ecs_container_credentials_with_auth_token() {
    let (tar, sum) = archive_bytes("ecs\n");
    let src = put(&format!("{}/app.tgz", unique("ecs")), &tar);
    let srv = TestServer::start(|req, w| {
        if req.path == "/creds" && req.header("authorization") == Some("ecs-auth-token") {
            let body = format!(
                "{{\"AccessKeyId\":\"{AK}\",\"SecretAccessKey\":\"{SK}\",\
                 \"Expiration\":\"2099-01-01T00:00:00Z\"}}"
            );
            respond(w, "200 OK", body.as_bytes())
        } else {
            respond(w, "403 Forbidden", b"")
        }
    });
    let sc = Scratch::new();
    let token_file = sc.file("token", b"ecs-auth-token\n");
    let m = s3_manifest(&sc, &src, &sum);
    let run = aws(&sc)
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", srv.url("/creds"))
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file)
        .arg(&m)
        .run();
    run.assert_ok()
        .assert_log("credentials from ECS container credentials");
    assert_no_secrets(&run);
    assert!(srv.hits("/creds") >= 1);

    // The plain-variable token, and a wrong one: a clear error, no deploy.
    let sc = Scratch::new();
    let m = s3_manifest(&sc, &src, &sum);
    let run = aws(&sc)
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", srv.url("/creds"))
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong")
        .arg(&m)
        .run();
    run.assert_fail()
        .assert_log("ECS container credentials")
        .assert_log("HTTP 403");
    assert!(!sc.dest().exists());
}

/// The deploy record (SPEC §11) of an S3 deploy names `s3://…`, never the
/// presigned GET: no signature, credential, key or token in the record or history.
#[test]
fn record_of_an_s3_deploy_holds_no_secret() {
    let (tar, sum) = archive_bytes("recorded\n");
    let src = put(&format!("{}/app.tgz", unique("record")), &tar);
    let sc = Scratch::new();
    let m = s3_manifest(&sc, &src, &sum);
    let run = with_keys(aws(&sc))
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .arg(&m)
        .run();
    // the session token is not one the server knows: what matters is the record
    let _ = run;
    let run = with_keys(aws(&sc)).arg(&m).run();
    run.assert_ok();
    let key = stretcher::record::key_for_dest(&sc.dest());
    let rec =
        std::fs::read_to_string(stretcher::record::record_path(&sc.state_dir(), &key)).unwrap();
    let hist =
        std::fs::read_to_string(stretcher::record::history_path(&sc.state_dir(), &key)).unwrap();
    assert!(rec.contains(&format!("\"src\": \"{src}\"")), "{rec}");
    for text in [&rec, &hist] {
        for secret in [
            AK,
            SK,
            SESSION_TOKEN,
            "X-Amz-Signature",
            "X-Amz-Credential",
            "X-Amz-Security-Token",
            "Signature=",
            "?",
        ] {
            assert!(!text.contains(secret), "record holds {secret:?}:\n{text}");
        }
    }
}
