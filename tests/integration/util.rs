//! Shared test helpers: run the real binary (bounded in time, killed by pid),
//! fixture paths, manifests in temp dirs, tree snapshots, raw tar writers.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What tells stretcher it runs under consul watch or a serf handler: removed from
/// every run unless a test sets them.
pub const EVENT_VARS: [&str; 4] = [
    "CONSUL_INDEX",
    "SERF_EVENT",
    "SERF_USER_EVENT",
    "SERF_USER_LTIME",
];

/// Proxy settings that would send the tests' loopback requests elsewhere.
pub const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A GNU tar header with uid/gid 0, for archives built in tests.
pub fn tar_header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The built binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stretcher")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn archive(name: &str) -> PathBuf {
    fixtures().join("archives").join(name)
}

/// sha1 of a file, lower-case hex (via the library's own checksum code).
pub fn sha1_file(path: &Path) -> String {
    use stretcher::verify::Checksum;
    let c = Checksum::parse(&"0".repeat(40)).unwrap();
    let mut h = c.hasher();
    h.update(&std::fs::read(path).unwrap());
    h.finish_hex()
}

/// The tree at `root` as the sync takes a staged tree, `Verified<Staged>` (the sync
/// writes dest from nothing else). The tree is the test's own, so what is verified is
/// the empty input against its own digest; no file of it is listed as reused.
pub fn verified_tree(root: &Path) -> stretcher::verify::Verified<stretcher::unpack::Staged> {
    use stretcher::verify::{Checksum, HashingReader};
    let c = Checksum::parse(&sha1_bytes(b"")).unwrap();
    let mut empty = HashingReader::new(&b""[..], &c);
    std::io::copy(&mut empty, &mut std::io::sink()).unwrap();
    let m = std::fs::metadata(root).unwrap();
    let staged = stretcher::unpack::Staged {
        root: root.to_path_buf(),
        root_id: (
            std::os::unix::fs::MetadataExt::dev(&m),
            std::os::unix::fs::MetadataExt::ino(&m),
        ),
        root_mode: None,
        entries: 0,
        reused: Default::default(),
        written: Default::default(),
        digests: Default::default(),
        listed_dirs: Default::default(),
    };
    empty.finish().verify(staged).unwrap()
}

pub fn sha1_bytes(data: &[u8]) -> String {
    use stretcher::verify::Checksum;
    let c = Checksum::parse(&"0".repeat(40)).unwrap();
    let mut h = c.hasher();
    h.update(data);
    h.finish_hex()
}

/// What a finished run produced.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code(), 0, "expected success; stderr:\n{}", self.stderr);
        self
    }

    #[track_caller]
    pub fn assert_fail(&self) -> &Self {
        assert_eq!(self.code(), 1, "expected failure; stderr:\n{}", self.stderr);
        self
    }

    #[track_caller]
    pub fn assert_log(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "log lacks {needle:?}; stderr:\n{}",
            self.stderr
        );
        self
    }
}

/// A run of the binary being set up.
pub struct Stretcher {
    cmd: Command,
    stdin: Vec<u8>,
    limit: Duration,
}

pub fn stretcher() -> Stretcher {
    stretcher_via(None)
}

/// The binary started through a wrapper (`setpriv --reuid=... `): `Some((program, args))`.
pub fn stretcher_via(wrapper: Option<(&str, &[String])>) -> Stretcher {
    match wrapper {
        Some((program, args)) => stretcher_program(program).args(args).arg(bin()),
        None => stretcher_program(bin()),
    }
}

/// A run of `program` instead of the binary under test: another build of stretcher
/// (the static one), or a wrapper given its whole command line by the caller.
pub fn stretcher_program(program: impl AsRef<std::ffi::OsStr>) -> Stretcher {
    let mut cmd = Command::new(program);
    for k in EVENT_VARS {
        cmd.env_remove(k);
    }
    Stretcher {
        cmd,
        stdin: Vec::new(),
        limit: Duration::from_secs(60),
    }
}

impl Stretcher {
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: &str) -> Self {
        self.cmd.env_remove(k);
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = data.into();
        self
    }

    pub fn limit(mut self, d: Duration) -> Self {
        self.limit = d;
        self
    }

    /// Starts the process (stdout/stderr captured), for tests that signal it.
    pub fn spawn(mut self) -> Running {
        self.cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = self.cmd.spawn().expect("spawn stretcher");
        let mut stdin = child.stdin.take().unwrap();
        let data = std::mem::take(&mut self.stdin);
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = reader(child.stdout.take().unwrap());
        let err = reader(child.stderr.take().unwrap());
        Running {
            child,
            start,
            limit: self.limit,
            out,
            err,
        }
    }

    /// Runs to the end (killed by pid when it exceeds the limit).
    pub fn run(self) -> Run {
        self.spawn().wait()
    }
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

pub struct Running {
    child: Child,
    start: Instant,
    limit: Duration,
    out: std::thread::JoinHandle<Vec<u8>>,
    err: std::thread::JoinHandle<Vec<u8>>,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    pub fn wait(mut self) -> Run {
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if self.start.elapsed() > self.limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("stretcher ran longer than {:?}; killed", self.limit);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.start.elapsed();
        let stdout = String::from_utf8_lossy(&self.out.join().unwrap()).into_owned();
        let stderr = String::from_utf8_lossy(&self.err.join().unwrap()).into_owned();
        Run {
            status,
            stdout,
            stderr,
            elapsed,
        }
    }
}

/// A scratch area: `dir/dest` is the deploy target, `dir/work` the cwd of runs.
pub struct Scratch {
    pub tmp: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let tmp = tempfile::Builder::new()
            .prefix("stretcher-it-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(tmp.path().join("work")).unwrap();
        std::fs::create_dir(tmp.path().join("parent")).unwrap();
        Scratch { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The deploy target (inside its own parent, so leftovers beside it are visible).
    pub fn dest(&self) -> PathBuf {
        self.tmp.path().join("parent").join("dest")
    }

    pub fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    /// Writes `text` as a manifest file and returns its path.
    pub fn manifest(&self, name: &str, text: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes bytes as a file in the scratch dir.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    /// A run of the binary with `work` as its cwd and its own replay state
    /// (`--state-dir <scratch>/state`), so tests never share or keep event state.
    pub fn stretcher(&self) -> Stretcher {
        stretcher()
            .cwd(&self.work())
            .arg("--state-dir")
            .arg(self.state_dir())
    }

    /// The replay state directory of `stretcher()` runs.
    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// Names beside dest other than dest and its lock file.
    pub fn leftovers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.tmp.path().join("parent"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "dest" && n != ".dest.stretcher.lock")
            .collect();
        v.sort();
        v
    }
}

/// A manifest deploying `archive` (with its sha1) into `dest`, plus `extra` YAML.
pub fn manifest_for(archive: &Path, dest: &Path, extra: &str) -> String {
    format!(
        "src: file://{}\nchecksum: {}\ndest: {}\n{}",
        archive.display(),
        sha1_file(archive),
        dest.display(),
        extra
    )
}

/// One entry of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        data: Vec<u8>,
        mode: u32,
        mtime: i64,
    },
    Dir {
        mode: u32,
        mtime: i64,
    },
    Link {
        target: PathBuf,
    },
}

/// Everything below `root` (and root itself as ""), never following links.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut map = BTreeMap::new();
    if std::fs::symlink_metadata(root).is_err() {
        return map;
    }
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let md = e.path().symlink_metadata().unwrap();
        let node = if md.file_type().is_symlink() {
            Node::Link {
                target: std::fs::read_link(e.path()).unwrap(),
            }
        } else if md.is_dir() {
            Node::Dir {
                mode: md.permissions().mode() & 0o7777,
                mtime: md.mtime(),
            }
        } else {
            Node::File {
                data: std::fs::read(e.path()).unwrap(),
                mode: md.permissions().mode() & 0o7777,
                mtime: md.mtime(),
            }
        };
        map.insert(rel, node);
    }
    map
}

pub fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A raw tar entry for hostile archives (names as bytes, no checks at all).
pub enum Raw<'a> {
    File(&'a [u8], &'a [u8]),
    Dir(&'a [u8]),
    Symlink(&'a [u8], &'a [u8]),
    HardLink(&'a [u8], &'a [u8]),
}

/// Writes a ustar archive byte by byte (so `..` and absolute names survive).
pub fn raw_tar(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, kind, data, link): (&[u8], u8, &[u8], &[u8]) = match e {
            Raw::File(n, d) => (n, b'0', d, b""),
            Raw::Dir(n) => (n, b'5', b"", b""),
            Raw::Symlink(n, t) => (n, b'2', b"", t),
            Raw::HardLink(n, t) => (n, b'1', b"", t),
        };
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        let mode: &[u8] = if kind == b'5' {
            b"0000755\0"
        } else {
            b"0000644\0"
        };
        h[100..108].copy_from_slice(mode);
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(b"14544743105\0");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Gives the current test a fresh dir under the scratch root with `files`.
pub fn make_tree(root: &Path, files: &[(&str, &str)]) {
    for (p, content) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

pub fn metadata_mtime(p: &Path) -> i64 {
    std::fs::metadata(p).unwrap().mtime()
}

/// `snapshot` of a dest as a redeploy must leave it: everything but the root's own
/// mtime (when the archive has no `.` entry it is the unpack's time, as with rsync).
fn redeploy_view(dest: &Path) -> BTreeMap<PathBuf, Node> {
    // A directory the archive has no entry for (dest itself without `./`, `dir/` of a
    // member `dir/file`) gets the unpack's time, as GNU tar gives it, and the sync
    // copies that: its mtime moves on every deploy, as with tar + rsync. Every mtime the
    // tests' archives give is years old, so a recent one is such an implied directory.
    let recent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        - 24 * 3600;
    let mut snap = snapshot(dest);
    for node in snap.values_mut() {
        if let Node::Dir { mtime, .. } = node {
            if *mtime > recent {
                *mtime = 0;
            }
        }
    }
    snap
}

/// Every deploy test's second run (every deploy test also deploys a second time onto
/// its own result): the same manifest again, `prepare`d as the first run was
/// (environment, flags), must succeed and leave dest exactly as it was. It runs with
/// `--force`, so that it takes the whole download, unpack and sync path rather than
/// the redeploy that downloads nothing (tests/integration/redeploy.rs tests that).
#[track_caller]
pub fn redeploy_unchanged(
    s: &Scratch,
    manifest: &Path,
    prepare: impl FnOnce(Stretcher) -> Stretcher,
) -> Run {
    let before = redeploy_view(&s.dest());
    let run = prepare(s.stretcher()).arg("--force").arg(manifest).run();
    run.assert_ok();
    assert_eq!(
        redeploy_view(&s.dest()),
        before,
        "a redeploy onto its own result changed dest; log:\n{}",
        run.stderr
    );
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    run
}

/// [`redeploy_unchanged`] with the run as `Scratch::stretcher` makes it.
#[track_caller]
pub fn redeploy(s: &Scratch, manifest: &Path) -> Run {
    redeploy_unchanged(s, manifest, |r| r)
}

/// The second run of an `mv` deploy: dest is no longer empty, so it must fail and
/// change nothing (SPEC §6).
#[track_caller]
pub fn redeploy_mv_refused(s: &Scratch, manifest: &Path) -> Run {
    let before = snapshot(&s.dest());
    let run = s.stretcher().arg("--force").arg(manifest).run();
    run.assert_fail().assert_log("not empty");
    assert_eq!(snapshot(&s.dest()), before);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    run
}

/// Deploy records as the library writes them, for the `status` and `fleet status`
/// tests.
pub mod records {
    use std::path::Path;

    use stretcher::record::{self, Changes, EventInfo, Outcome, Record, Step};

    /// `dest`'s last deploy with `result`, finished at `finished` (RFC 3339).
    pub fn record(
        dest: &str,
        result: Outcome,
        checksum: &str,
        finished: &str,
        error: Option<&str>,
    ) -> Record {
        let failed = result != Outcome::Success;
        Record {
            schema: record::SCHEMA,
            host: Some("web-1".into()),
            stretcher_version: "0.1.0".into(),
            dest: Some(dest.into()),
            strategy: Some(stretcher::strategy::Strategy::Rsync),
            release: None,
            manifest_url: format!("https://releases.example.com{dest}.yml"),
            manifest_sha256: Some("ab".repeat(32)),
            serial: None,
            src: Some(format!("https://releases.example.com{dest}.tar.gz")),
            checksum: Some(checksum.into()),
            event: EventInfo {
                origin: "serf".into(),
                name: Some("deploy".into()),
                id: None,
                ltime: Some(7),
                rollout: None,
            },
            result,
            failed_step: failed.then_some(Step::Pre),
            error: error.map(str::to_string),
            started: finished.into(),
            finished: Some(finished.into()),
            duration_s: Some(if failed { 0.3 } else { 1.25 }),
            downloaded_bytes: Some(1000),
            download_skipped: false,
            changes: (!failed).then_some(Changes {
                created: 3,
                updated: 1,
                deleted: 0,
                unchanged: 10,
            }),
            hooks: Vec::new(),
            process: None,
        }
    }

    pub fn write(state: &Path, rec: &Record) {
        let key = record::key_for_dest(Path::new(rec.dest.as_deref().unwrap()));
        record::write(state, &key, rec).unwrap();
    }
}

/// Real `serf agent`s on 127.0.0.1 for the end-to-end tests (feature `e2e`): ports,
/// agents started with their handlers and environment, the `serf` command, and a
/// cluster guard that kills every agent by pid when dropped.
pub mod serf {
    use std::ffi::OsString;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// A port free for both TCP and UDP on 127.0.0.1 (serf gossips over both),
    /// chosen below Linux's ephemeral range (32768–60999): a port the kernel hands
    /// out for `:0` can be taken as the source port of one agent's outgoing
    /// connection before the agent meant to listen on it has started.
    pub fn free_port() -> u16 {
        // a port handed out before is not free, even while its agent has not
        // bound it yet (with 80 ports drawn, a repeat is otherwise likely)
        static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..200 {
            let port = fastrand::u16(20000..32000);
            if given.contains(&port) {
                continue;
            }
            let Ok(_tcp) = TcpListener::bind(("127.0.0.1", port)) else {
                continue;
            };
            if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
        panic!("no free TCP+UDP port on 127.0.0.1");
    }

    /// One agent's identity (node name, ports) and private directory.
    pub struct Host {
        pub name: String,
        pub dir: PathBuf,
        pub bind: u16,
        pub rpc: u16,
    }

    impl Host {
        /// `root/NAME`, created, with fresh ports.
        pub fn new(root: &Path, name: &str) -> Host {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            Host {
                name: name.to_string(),
                dir,
                bind: free_port(),
                rpc: free_port(),
            }
        }

        /// `-rpc-addr=127.0.0.1:PORT`, for serf commands.
        pub fn rpc_flag(&self) -> String {
            format!("-rpc-addr={}", self.rpc_addr())
        }

        pub fn rpc_addr(&self) -> String {
            format!("127.0.0.1:{}", self.rpc)
        }

        pub fn agent_log(&self) -> PathBuf {
            self.dir.join("agent.log")
        }
    }

    /// How to start one agent.
    #[derive(Default)]
    pub struct Spec {
        /// `-event-handler` values.
        pub handlers: Vec<String>,
        /// Extra environment of the agent (and so of its handlers).
        pub env: Vec<(String, OsString)>,
        pub tags: Vec<(String, String)>,
        /// `-profile`; `None` = serf's default (`lan`).
        pub profile: Option<&'static str>,
        /// The bind port of a member to join.
        pub join: Option<u16>,
        /// The key the agent's RPC wants (`rpc_auth`, in a config file).
        pub rpc_auth: Option<String>,
    }

    /// The running agents by name; each killed (SIGKILL, by pid) and reaped when
    /// dropped, also when the test fails.
    pub struct Cluster {
        agents: Vec<(String, Child)>,
        /// The gossip key of this cluster's agents (`-encrypt`), its own: agents
        /// of tests that run at once never merge into one cluster (an agent retries
        /// a failed member's address, which another test's agent may have taken
        /// since).
        key: String,
    }

    impl Default for Cluster {
        fn default() -> Cluster {
            use base64::Engine;
            let key: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
                .take(16)
                .collect();
            Cluster {
                agents: Vec::new(),
                key: base64::engine::general_purpose::STANDARD.encode(key),
            }
        }
    }

    impl Cluster {
        /// Starts `serf agent` for `node` (cwd its dir, stdout to its agent log).
        pub fn start(&mut self, node: &Host, spec: &Spec) {
            self.start_in(node, spec, None)
        }

        /// `start`, with `Some((from, onto))`: the agent (and so its handlers)
        /// runs in a mount namespace of its own where the directory `from` is
        /// bind-mounted onto `onto` (root only), so that every agent of one
        /// machine has its own directory at the same path, as hosts of a fleet
        /// have their dests (`in_mount` runs a command there too).
        pub fn start_in(&mut self, node: &Host, spec: &Spec, mount: Option<(&Path, &Path)>) {
            let mut cmd = match mount {
                Some((from, onto)) => {
                    let mut c = in_mount(from, onto);
                    c.arg("serf");
                    c
                }
                None => Command::new("serf"),
            };
            cmd.arg("agent")
                .arg(format!("-node={}", node.name))
                .arg(format!("-bind=127.0.0.1:{}", node.bind))
                .arg(node.rpc_flag())
                .arg(format!("-encrypt={}", self.key))
                .arg("-log-level=info");
            if let Some(p) = spec.profile {
                cmd.arg(format!("-profile={p}"));
            }
            for h in &spec.handlers {
                cmd.arg(format!("-event-handler={h}"));
            }
            if let Some(key) = &spec.rpc_auth {
                // no flag for it: only a config file sets it
                let config = node.dir.join("rpc-auth.json");
                std::fs::write(&config, serde_json::json!({ "rpc_auth": key }).to_string())
                    .unwrap();
                cmd.arg(format!("-config-file={}", config.display()));
            }
            for (k, v) in &spec.tags {
                cmd.arg(format!("-tag={k}={v}"));
            }
            if let Some(port) = spec.join {
                // not `-join`, after whose one failure the agent exits: retried each
                // second until it succeeds (`wait_alive` joins again later losses)
                cmd.arg(format!("-retry-join=127.0.0.1:{port}"))
                    .arg("-retry-interval=1s");
            }
            for k in super::EVENT_VARS {
                cmd.env_remove(k);
            }
            for (k, v) in &spec.env {
                cmd.env(k, v);
            }
            cmd.current_dir(&node.dir)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(node.agent_log()).unwrap())
                .stderr(Stdio::inherit());
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!("cannot start serf agent (apt-get install -y serf): {e}")
            });
            self.agents.push((node.name.clone(), child));
        }

        /// Sends SIGKILL to the agent `name` (by its pid) and reaps it.
        pub fn kill(&mut self, name: &str) {
            let (_, child) = self
                .agents
                .iter_mut()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no agent {name}"));
            child.kill().unwrap();
            child.wait().unwrap();
        }

        /// Waits (bounded) for the agent `name` to exit by itself (after `serf leave`).
        pub fn wait_exit(&mut self, name: &str, limit: Duration) {
            let (_, child) = self
                .agents
                .iter_mut()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no agent {name}"));
            let start = Instant::now();
            while child.try_wait().unwrap().is_none() {
                assert!(start.elapsed() < limit, "agent {name} did not exit");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            for (_, child) in &mut self.agents {
                let _ = child.kill();
            }
            for (_, child) in &mut self.agents {
                let _ = child.wait();
            }
        }
    }

    /// A command whose program and arguments are to be added: run in a mount
    /// namespace of its own where `from` is bind-mounted onto `onto` (`unshare`
    /// from util-linux; root only).
    pub fn in_mount(from: &Path, onto: &Path) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(from)
            .arg(onto);
        c
    }

    /// Runs the `serf` command to its end.
    pub fn serf(args: &[&str]) -> Output {
        Command::new("serf")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run serf (apt-get install -y serf): {e}"))
    }

    /// Waits until `node`'s RPC port accepts connections.
    pub fn wait_rpc(node: &Host, limit: Duration) {
        wait_until(
            &format!("{} RPC up", node.name),
            limit,
            || TcpStream::connect(("127.0.0.1", node.rpc)).is_ok(),
            || std::fs::read_to_string(node.agent_log()).unwrap_or_default(),
        );
    }

    /// The members `node`'s agent lists with `status` (alive, failed, left).
    pub fn members_with_status(node: &Host, status: &str) -> Vec<String> {
        let out = serf(&["members", &node.rpc_flag(), &format!("-status={status}")]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Waits until `via`'s agent lists every one of `hosts` alive. An agent's
    /// `-retry-join` stops at its first success, after which a member can still be
    /// lost (gossip messages missed on a loaded machine, the member declared
    /// failed): every 5 s, each host still missing is told again to join `via`
    /// (`serf join`). Panics with `report()` after `limit`.
    pub fn wait_alive(via: &Host, hosts: &[&Host], limit: Duration, report: impl Fn() -> String) {
        let start = Instant::now();
        let mut joined = Instant::now();
        loop {
            let alive = members_with_status(via, "alive");
            let missing: Vec<&&Host> = hosts.iter().filter(|h| !alive.contains(&h.name)).collect();
            if missing.is_empty() {
                return;
            }
            if start.elapsed() > limit {
                let names: Vec<&str> = missing.iter().map(|h| h.name.as_str()).collect();
                let logs: Vec<String> = missing
                    .iter()
                    .map(|h| {
                        let log = std::fs::read_to_string(h.agent_log()).unwrap_or_default();
                        let lines: Vec<&str> = log.lines().collect();
                        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
                        format!("--- {} agent log (tail):\n{tail}", h.name)
                    })
                    .collect();
                panic!(
                    "{} alive members: not done after {limit:?} (missing {names:?})\n{}\n{}",
                    hosts.len(),
                    logs.join("\n"),
                    report()
                );
            }
            if joined.elapsed() >= Duration::from_secs(5) {
                joined = Instant::now();
                for h in missing {
                    let _ = serf(&["join", &h.rpc_flag(), &format!("127.0.0.1:{}", via.bind)]);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `done` every 200 ms until it holds; panics with `report()` after `limit`.
    pub fn wait_until(
        what: &str,
        limit: Duration,
        mut done: impl FnMut() -> bool,
        report: impl Fn() -> String,
    ) {
        let start = Instant::now();
        while !done() {
            if start.elapsed() > limit {
                panic!("{what}: not done after {limit:?}\n{}", report());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A real unprivileged account on this host, made for one test by `useradd` (a
/// unique name, no home, no login shell, its own group) and removed by `userdel` when
/// dropped: the "other local user" of SPEC §17. Root only: [`TestUser::new`] answers
/// `None` (and the test says it is skipped) when the tests do not run as root.
pub struct TestUser {
    pub name: String,
    pub uid: nix::unistd::Uid,
    pub gid: nix::unistd::Gid,
}

impl TestUser {
    pub fn new() -> Option<TestUser> {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Mutex;
        // useradd locks /etc/passwd: one at a time in this process, and retried when
        // another process (another test binary) holds the lock.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: not root, so no account can be added for the test");
            return None;
        }
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let name = format!(
            "sthl{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut last = String::new();
        for _ in 0..20 {
            let out = Command::new("useradd")
                .args(["--system", "--no-create-home", "--user-group"])
                .args(["--shell", "/usr/sbin/nologin", &name])
                .output()
                .expect("useradd must be installed (passwd package)");
            if out.status.success() {
                let user = nix::unistd::User::from_name(&name)
                    .unwrap()
                    .expect("the account useradd just made");
                return Some(TestUser {
                    name,
                    uid: user.uid,
                    gid: user.gid,
                });
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("useradd {name}: {last}");
    }

    /// `program` run as this user: `setpriv` with its uid, gid and no other group.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Runs `program args` as this user to its end: whether it succeeded.
    pub fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> bool {
        self.command(program)
            .args(args)
            .status()
            .expect("setpriv must be installed (util-linux)")
            .success()
    }

    /// `path` (not following a symlink) and everything below it given to this user.
    pub fn give(&self, path: &Path) {
        for e in walkdir::WalkDir::new(path) {
            let e = e.unwrap();
            nix::unistd::fchownat(
                None,
                e.path(),
                Some(self.uid),
                Some(self.gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // The tests end what they started as this user (by pid) before it is dropped;
        // userdel refuses an account still in use, so it is retried a little.
        for _ in 0..20 {
            match Command::new("userdel").arg(&self.name).output() {
                Ok(o) if o.status.success() => return,
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
        eprintln!("warning: userdel {} failed; remove it by hand", self.name);
    }
}
