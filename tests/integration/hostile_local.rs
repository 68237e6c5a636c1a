//! Root among other local users (SPEC §17): what another account on the host, a
//! hook, or an old signed manifest can do to a deploy that runs as root. Each attack
//! is one test. The other user is a real account the test adds (`useradd`, see
//! `util::TestUser`) and removes; its commands run through `setpriv`, and whatever
//! the test starts as that user is ended by pid before the account goes.
//!
//! - a NUL in `commands.env` is a manifest error, before any hook runs;
//! - `--command-timeout` or a signal also ends a grandchild of a hook that left its
//!   session with `setsid`;
//! - the lock beside dest: a planted symlink is refused, never followed; the lock is
//!   root's, 0600, so the user cannot `flock` it; a lock file of the user's is refused;
//! - the state directory: private whatever the umask; refused when another user
//!   can write it;
//! - the files made outside dest (release metadata, the switch link, leftovers, the
//!   textfile metrics): a symlink the user plants or swaps in is never followed;
//! - staging: a staging directory swapped for a symlink while the archive is being
//!   unpacked is never written through; a 3,000-deep tree of another owner planted
//!   under a staging name is left alone (nothing it links to is touched), root's own
//!   leftover as deep is removed;
//! - serial floors (SPEC §15, §17): an old signed manifest without `src` cannot be
//!   replayed from another URL for the same file, and leaving `serial` out cannot
//!   reset a floor;
//! - dest (SPEC §17): a directory of dest the user swaps for a symlink while the sync
//!   runs is never followed; deleting a directory removes the symlinks in it, never
//!   what they point to.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::{clean, respond, TestServer};
use crate::signing::{
    assert_refused_record, clear_markers, dest_key, hooks_yaml, key_pair, manifest_key,
    no_hook_ran, record, sign, KeyPair,
};
use crate::util::*;

#[test]
fn nul_in_commands_env_is_a_manifest_error() {
    let s = Scratch::new();
    let marker = s.path().join("pre-ran");
    for env in ["GREETING: \"a\\0b\"", "\"A\\0B\": x"] {
        let m = s.manifest(
            "m.yml",
            &format!(
                "commands:\n  env:\n    {env}\n  pre:\n    - touch {}\n",
                marker.display()
            ),
        );
        let url = format!("file://{}", m.display());
        let run = s.stretcher().arg(&m).run();
        run.assert_fail().assert_log("commands.env");
        assert!(!marker.exists(), "a hook ran");
        let rec = record(&s, &manifest_key(&url));
        assert_eq!(rec["failed_step"], "manifest", "{rec:#}");
    }
}

/// A hook that starts `sleep 1000` in a session of its own (`setsid`), writes its pid
/// to `pidfile` and then waits in the foreground.
fn setsid_hook(s: &Scratch, pidfile: &Path) -> PathBuf {
    let script = s.file(
        "hook.sh",
        format!(
            "setsid sh -c 'echo $$ > {p}.tmp && mv {p}.tmp {p} && exec sleep 1000' &\n\
             while [ ! -s {p} ]; do sleep 0.05; done\n\
             sleep 30\n",
            p = pidfile.display()
        )
        .as_bytes(),
    );
    s.manifest(
        "m.yml",
        &format!("commands:\n  pre:\n    - sh {}\n", script.display()),
    )
}

/// Whether `pid` is a live `sleep` (a zombie is dead: it only waits to be reaped).
fn sleep_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    let state = tail.trim_start().chars().next();
    head.ends_with("(sleep") && state != Some('Z')
}

/// The grandchild's pid, and a guard that kills it should the test fail.
fn grandchild(pidfile: &Path) -> (i32, impl Drop) {
    let pid: i32 = std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            if sleep_alive(self.0) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.0),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    (pid, Kill(pid))
}

#[test]
fn command_timeout_kills_a_grandchild_that_left_with_setsid() {
    let s = Scratch::new();
    let pidfile = s.path().join("sleep.pid");
    let m = setsid_hook(&s, &pidfile);
    let run = s
        .stretcher()
        .args(["--command-timeout", "2s"])
        .arg(&m)
        .run();
    let (pid, _kill) = grandchild(&pidfile);
    run.assert_fail().assert_log("killed after timeout 2s");
    assert!(!sleep_alive(pid), "the setsid grandchild {pid} survived");
}

#[test]
fn a_signal_kills_a_grandchild_that_left_with_setsid() {
    let s = Scratch::new();
    let pidfile = s.path().join("sleep.pid");
    let m = setsid_hook(&s, &pidfile);
    let running = s.stretcher().arg(&m).spawn();
    let t = Instant::now();
    while !pidfile.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the hook never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (pid, _kill) = grandchild(&pidfile);
    running.signal(nix::sys::signal::Signal::SIGTERM);
    let run = running.wait();
    run.assert_fail().assert_log("interrupted by SIGTERM");
    assert!(!sleep_alive(pid), "the setsid grandchild {pid} survived");
}

/// A process the test started, killed by its pid (and reaped) when dropped.
struct Started(Child);

impl Started {
    /// Whether it is still running.
    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `user` opens `lock` (`<` to read, `>` to create it) and holds an exclusive
/// `flock` on it for 30 s, in one process (`sh` that becomes `sleep`, the lock kept on
/// its descriptor), so that killing that pid ends the holder whole; it exits at once
/// when it cannot open or lock the file.
fn hold(user: &TestUser, lock: &Path, open: &str) -> Started {
    let script = format!("exec 9{open}\"$0\" && flock -n 9 && exec sleep 30");
    Started(
        user.command("sh")
            .args(["-c", &script])
            .arg(lock)
            .spawn()
            .unwrap(),
    )
}

/// The scratch area opened for traversal (0711) so the other user reaches dest's
/// parent, which it is given: the Capistrano-style tree of SPEC §17.
fn scratch_for(user: &TestUser) -> Scratch {
    let s = Scratch::new();
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    user.give(&s.path().join("parent"));
    s
}

fn lock_of(s: &Scratch) -> PathBuf {
    s.path().join("parent").join(".dest.stretcher.lock")
}

fn deploy_manifest(s: &Scratch) -> PathBuf {
    s.manifest("m.yml", &manifest_for(&archive("test.tar"), &s.dest(), ""))
}

#[test]
fn a_lock_symlink_planted_beside_dest_is_refused_not_followed() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    // Only root can create a file here: the user aims root's lock at it.
    let victim = s.path().join("created-by-root");
    let lock = lock_of(&s);
    assert!(user.run("ln", &["-s".as_ref(), victim.as_os_str(), lock.as_os_str()]));
    let m = deploy_manifest(&s);

    let run = s.stretcher().arg(&m).run();
    run.assert_fail()
        .assert_log(&format!("lock file {}: refused", lock.display()))
        .assert_log("symbolic link");
    assert!(
        victim.symlink_metadata().is_err(),
        "root followed the planted symlink and created {}",
        victim.display()
    );
    assert!(lock.symlink_metadata().unwrap().file_type().is_symlink());
    assert!(!s.dest().exists(), "the deploy went on");
}

#[test]
fn another_user_cannot_hold_the_dest_lock() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    let m = deploy_manifest(&s);
    s.stretcher().arg(&m).run().assert_ok();
    let lock = lock_of(&s);

    // The user tries to take the lock and keep it.
    let mut holder = hold(&user, &lock, "<");
    std::thread::sleep(Duration::from_millis(700));
    let held = holder.running();
    drop(holder);
    assert!(!held, "another user holds the lock of dest");
    let meta = lock.symlink_metadata().unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "lock file mode");
    assert_eq!(meta.uid(), 0, "lock file owner");

    let run = s.stretcher().arg(&m).limit(Duration::from_secs(30)).run();
    run.assert_ok();
    assert!(
        !run.stderr.contains("waiting for the lock"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_lock_file_of_another_owner_is_refused() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    let lock = lock_of(&s);
    // The user makes the lock file before any deploy and sits on it.
    let _holder = hold(&user, &lock, ">");
    let t = Instant::now();
    while lock.symlink_metadata().is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "flock made no file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = deploy_manifest(&s);

    let run = s.stretcher().arg(&m).limit(Duration::from_secs(15)).run();
    run.assert_fail()
        .assert_log(&format!("lock file {}: refused", lock.display()))
        .assert_log(&format!("owned by uid {}", user.uid));
    assert!(
        !run.stderr.contains("waiting for the lock"),
        "{}",
        run.stderr
    );
    assert!(!s.dest().exists(), "the deploy went on");
}

#[test]
fn the_state_directory_stays_private_under_umask_000() {
    let s = Scratch::new();
    let state = s.state_dir();
    assert!(!state.exists());
    let m = deploy_manifest(&s);
    // A serf event, so that the event's lock and replay memory are made too.
    let run = stretcher_program("sh")
        .args(["-c", "umask 000; exec \"$@\"", "sh", bin()])
        .cwd(&s.work())
        .arg("--state-dir")
        .arg(&state)
        .env("SERF_EVENT", "user")
        .env("SERF_USER_EVENT", "deploy")
        .env("SERF_USER_LTIME", "1")
        .stdin(format!("file://{}", m.display()))
        .run();
    run.assert_ok();

    let mut seen = 0;
    for e in walkdir::WalkDir::new(&state) {
        let e = e.unwrap();
        let mode = mode_of(e.path());
        let name = e.file_name().to_string_lossy().into_owned();
        let max = if name.ends_with(".lock") {
            0o600
        } else if e.file_type().is_dir() {
            0o755
        } else {
            0o644
        };
        assert_eq!(
            mode & !max,
            0,
            "{} is {mode:04o}, more than {max:04o}",
            e.path().display()
        );
        seen += 1;
    }
    assert!(state.join("event-deploy.lock").exists());
    assert!(seen >= 5, "state directory holds {seen} entries");
    assert_eq!(mode_of(&lock_of(&s)), 0o600, "dest's lock file");
}

#[test]
fn a_state_directory_another_user_can_write_is_refused() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    let markers = s.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let m = s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), &hooks_yaml(&markers)),
    );
    let refused = |state: &Path, why: &str| {
        let run = stretcher()
            .cwd(&s.work())
            .arg("--state-dir")
            .arg(state)
            .arg(&m)
            .run();
        run.assert_fail()
            .assert_log(&format!("state directory {}: refused", state.display()))
            .assert_log(why);
        no_hook_ran(&markers);
        assert!(!s.dest().exists(), "the deploy went on");
    };

    // the user's own directory
    let state = s.path().join("state");
    std::fs::create_dir(&state).unwrap();
    user.give(&state);
    refused(&state, &format!("owned by uid {}", user.uid));
    // root's, but anyone may write it
    nix::unistd::chown(&state, Some(0.into()), Some(0.into())).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&state, "writable by group or others");
    // root's and private, inside a directory of the user's (who can rename it away)
    let theirs = s.path().join("parent").join("state");
    std::fs::create_dir(&theirs).unwrap();
    refused(
        &theirs,
        &format!(
            "the directory {} above it is owned by uid {}",
            s.path().join("parent").display(),
            user.uid
        ),
    );

    // root's and private, in root's directories: the deploy runs
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    stretcher()
        .cwd(&s.work())
        .arg("--state-dir")
        .arg(&state)
        .arg(&m)
        .run()
        .assert_ok();
    assert!(markers.join("success").exists());
}

/// Files served over HTTP that the test replaces as it goes. A request's path is
/// read without its query and with repeated slashes as one, so every alias of a URL
/// gets the same file.
struct Files {
    srv: TestServer,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl Files {
    fn start() -> Files {
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let f = files.clone();
        let srv = TestServer::start(move |req, w| {
            let path = req.path.split('?').next().unwrap_or_default();
            let mut clean = String::new();
            for c in path.chars() {
                if !(c == '/' && clean.ends_with('/')) {
                    clean.push(c);
                }
            }
            match f.lock().unwrap().get(&clean) {
                Some(body) => respond(w, "200 OK", body),
                None => respond(w, "404 Not Found", b""),
            }
        });
        Files { srv, files }
    }

    fn put(&self, path: &str, body: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_string(), body);
    }
}

/// A commands-only manifest with `serial` (when given) and every hook touching its
/// marker, signed by `key` when given: its bytes and its signature's.
fn commands_manifest(
    sc: &Scratch,
    markers: &Path,
    serial: Option<u64>,
    key: Option<&KeyPair>,
) -> (Vec<u8>, Vec<u8>) {
    let serial = serial.map(|n| format!("serial: {n}\n")).unwrap_or_default();
    let m = sc.manifest("published.yml", &format!("{serial}{}", hooks_yaml(markers)));
    let sig = key.map(|k| std::fs::read(sign(k, &m, &[], "published")).unwrap());
    (std::fs::read(&m).unwrap(), sig.unwrap_or_default())
}

fn run_url(sc: &Scratch, key: Option<&KeyPair>, url: &str) -> Run {
    let mut cmd = clean(sc.stretcher());
    if let Some(k) = key {
        cmd = cmd.args(["--trusted-key", &k.line]);
    }
    cmd.arg(url).run()
}

#[test]
fn an_old_signed_manifest_without_src_is_refused_at_every_alias_of_its_url() {
    let sc = Scratch::new();
    let key = key_pair(sc.path(), "k");
    let markers = sc.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let files = Files::start();
    let old = commands_manifest(&sc, &markers, Some(3), Some(&key));
    let new = commands_manifest(&sc, &markers, Some(5), Some(&key));

    let url = files.srv.url("/m.yml");
    files.put("/m.yml", new.0);
    files.put("/m.yml.minisig", new.1);
    run_url(&sc, Some(&key), &url).assert_ok();
    assert!(markers.join("success").exists());

    // The old signed manifest (and its signature), replayed where the URL points.
    files.put("/m.yml", old.0);
    files.put("/m.yml.minisig", old.1);
    let port = files.srv.addr().port();
    let aliases = [
        url.clone(),
        files.srv.url("//m.yml"),
        files.srv.url("/m.yml?x=1"),
        format!("http://localhost:{port}/m.yml"),
    ];
    for alias in &aliases {
        clear_markers(&markers);
        let run = run_url(&sc, Some(&key), alias);
        run.assert_fail()
            .assert_log("refused: serial 3 is lower than 5");
        no_hook_ran(&markers);
    }
    let rec = record(&sc, &commands_key(&aliases[3]));
    assert_refused_record(&rec, "manifest", "serial 3 is lower than 5");
}

#[test]
fn an_unsigned_manifest_without_src_keeps_its_floor_whatever_its_query() {
    let sc = Scratch::new();
    let markers = sc.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let files = Files::start();
    files.put("/u.yml", commands_manifest(&sc, &markers, Some(5), None).0);
    run_url(&sc, None, &files.srv.url("/u.yml")).assert_ok();

    files.put("/u.yml", commands_manifest(&sc, &markers, Some(3), None).0);
    clear_markers(&markers);
    run_url(&sc, None, &files.srv.url("/u.yml?x=1"))
        .assert_fail()
        .assert_log("refused: serial 3 is lower than 5");
    no_hook_ran(&markers);
}

#[test]
fn leaving_the_serial_out_does_not_reset_a_floor() {
    let sc = Scratch::new();
    let key = key_pair(sc.path(), "k");
    let markers = sc.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let m = sc.path().join("m.yml");
    let url = format!("file://{}", m.display());
    let publish = |serial: Option<u64>| {
        let serial = serial.map(|n| format!("serial: {n}\n")).unwrap_or_default();
        let extra = format!("{serial}{}", hooks_yaml(&markers));
        std::fs::write(&m, manifest_for(&archive("test.tar"), &sc.dest(), &extra)).unwrap();
        sign(&key, &m, &[], "published");
        clear_markers(&markers);
    };

    // a dest's floor
    publish(Some(7));
    run_url(&sc, Some(&key), &url).assert_ok();
    publish(None);
    run_url(&sc, Some(&key), &url)
        .assert_fail()
        .assert_log("refused: no serial");
    no_hook_ran(&markers);
    let rec = record(&sc, &dest_key(&sc.dest()));
    assert_refused_record(&rec, "manifest", "no serial");
    publish(Some(5));
    run_url(&sc, Some(&key), &url)
        .assert_fail()
        .assert_log("refused: serial 5 is lower than 7");
    publish(Some(7));
    run_url(&sc, Some(&key), &url).assert_ok();

    // the floor of a signing key, for manifests without src
    let c = sc.path().join("c.yml");
    let c_url = format!("file://{}", c.display());
    let (with, with_sig) = commands_manifest(&sc, &markers, Some(4), Some(&key));
    std::fs::write(&c, with).unwrap();
    std::fs::write(sig_of(&c), with_sig).unwrap();
    run_url(&sc, Some(&key), &c_url).assert_ok();
    let (without, without_sig) = commands_manifest(&sc, &markers, None, Some(&key));
    std::fs::write(&c, without).unwrap();
    std::fs::write(sig_of(&c), without_sig).unwrap();
    clear_markers(&markers);
    run_url(&sc, Some(&key), &c_url)
        .assert_fail()
        .assert_log("refused: no serial");
    no_hook_ran(&markers);
}

fn sig_of(p: &Path) -> PathBuf {
    PathBuf::from(format!("{}.minisig", p.display()))
}

/// The record key of a manifest without src: `commands-` and 16 hex digits of the
/// sha256 of its URL (SPEC §11).
fn commands_key(url: &str) -> String {
    use sha2::Digest;
    format!(
        "commands-{}",
        &hex::encode(sha2::Sha256::digest(url.as_bytes()))[..16]
    )
}

// ---------------------------------------------------------------------------
// Files stretcher makes outside dest's tree: release entries, the switch link,
// leftovers, the textfile metrics (SPEC §17)
// ---------------------------------------------------------------------------

const VICTIM_TEXT: &str = "root's only\n";

/// A root-only file (0600) in a root-only directory (0700): what the user aims its
/// planted symlinks at. The user cannot read or reach it, only name it.
fn root_only_file(s: &Scratch) -> PathBuf {
    let dir = s.path().join("secret");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let f = dir.join("victim");
    std::fs::write(&f, VICTIM_TEXT).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

/// The root-only file as [`root_only_file`] made it: content, mode and owner.
#[track_caller]
fn assert_untouched(victim: &Path) {
    let meta = victim.symlink_metadata().unwrap();
    assert!(meta.is_file(), "{} was replaced", victim.display());
    assert_eq!(
        std::fs::read_to_string(victim).unwrap(),
        VICTIM_TEXT,
        "root followed a planted symlink and wrote {}",
        victim.display()
    );
    assert_eq!(
        meta.mode() & 0o7777,
        0o600,
        "root followed a planted symlink and changed the mode of {}",
        victim.display()
    );
    assert_eq!(meta.uid(), 0, "owner of {}", victim.display());
}

/// `perl -e SCRIPT ARGS…` as `user`, killed by pid when dropped.
fn as_user_perl(user: &TestUser, script: &str, args: &[&Path]) -> Started {
    Started(
        user.command("perl")
            .args(["-e", script])
            .args(args)
            .spawn()
            .unwrap(),
    )
}

/// Waits (at most `limit`) for a process the test started to end: whether it
/// succeeded (a process still running is killed by the caller's drop).
fn ended_ok(p: &mut Started, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(st) = p.0.try_wait().unwrap() {
            return st.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn release_manifest_for(s: &Scratch) -> PathBuf {
    s.manifest(
        "m.yml",
        &manifest_for(&archive("test.tar"), &s.dest(), "sync_strategy: release\n"),
    )
}

/// `parent/dest.releases`, made by the user (a releases directory of the
/// application's account, as Capistrano has it).
fn users_releases_dir(user: &TestUser, s: &Scratch) -> PathBuf {
    let dir = s.path().join("parent").join("dest.releases");
    assert!(user.run("mkdir", &[dir.as_os_str()]));
    dir
}

#[test]
fn a_symlink_planted_at_the_release_metadata_temp_is_not_followed() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    let victim = root_only_file(&s);
    let dir = users_releases_dir(&user, &s);
    // As soon as `.ID.partial` appears, the user plants `.ID.json.tmp` → victim.
    let script = r#"
        my ($dir, $victim) = @ARGV;
        my $end = time + 30;
        while (time < $end) {
            opendir(my $d, $dir) or die "opendir: $!";
            for my $n (readdir $d) {
                if ($n =~ /^\.(.+)\.partial$/) {
                    symlink($victim, "$dir/.$1.json.tmp") or die "symlink: $!";
                    exit 0;
                }
            }
            closedir $d;
            select(undef, undef, undef, 0.005);
        }
        exit 1;
    "#;
    let mut attacker = as_user_perl(&user, script, &[&dir, &victim]);
    let m = release_manifest_for(&s);
    // Throttled: the download takes seconds while `.ID.partial` exists.
    let run = s
        .stretcher()
        .args(["--max-bandwidth", "3000"])
        .arg(&m)
        .limit(Duration::from_secs(60))
        .run();
    assert!(
        ended_ok(&mut attacker, Duration::from_secs(5)),
        "the user never planted the symlink"
    );
    drop(attacker);
    assert_untouched(&victim);
    eprintln!("deploy exit code {}", run.code());
    if run.code() != 0 {
        run.assert_log(".json.tmp").assert_log("never followed");
    }
}

#[test]
fn the_textfile_temp_swapped_for_a_symlink_is_not_followed() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    let victim = root_only_file(&s);
    let textfiles = s.path().join("parent").join("textfiles");
    assert!(user.run("mkdir", &[textfiles.as_os_str()]));
    // Every temporary `.stretcher-*.tmp` the user sees is moved away and replaced by
    // a symlink to the victim; each swap is counted in `swapped`.
    let script = r#"
        my ($dir, $victim) = @ARGV;
        my $end = time + 60;
        my $n = 0;
        while (time < $end) {
            opendir(my $d, $dir) or die "opendir: $!";
            for my $f (readdir $d) {
                next unless $f =~ /^\.stretcher-.*\.tmp$/;
                $n++;
                rename("$dir/$f", "$dir/stolen-$n") or next;
                symlink($victim, "$dir/$f") or next;
                if (open(my $c, ">>", "$dir/swapped")) { print $c "$f\n"; close $c; }
            }
            closedir $d;
        }
    "#;
    let attacker = as_user_perl(&user, script, &[&textfiles, &victim]);
    let m = deploy_manifest(&s);
    let swapped = textfiles.join("swapped");
    let t = Instant::now();
    let mut runs = 0;
    while t.elapsed() < Duration::from_secs(40) && runs < 60 {
        runs += 1;
        let run = s
            .stretcher()
            .arg("--force")
            .arg("--textfile-dir")
            .arg(&textfiles)
            .arg(&m)
            .limit(Duration::from_secs(30))
            .run();
        assert!(run.code() == 0 || !run.stderr.is_empty());
        let meta = victim.symlink_metadata().unwrap();
        if meta.mode() & 0o7777 != 0o600 || swapped.exists() && runs >= 3 {
            break;
        }
    }
    drop(attacker);
    eprintln!(
        "{runs} deploys, swaps: {}",
        std::fs::read_to_string(&swapped)
            .unwrap_or_default()
            .lines()
            .count()
    );
    assert_untouched(&victim);
}

#[test]
fn a_symlink_planted_at_the_switch_name_is_not_followed() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    let victim = root_only_file(&s);
    let switch = s.path().join("parent").join(".dest.stretcher-switch");
    assert!(user.run(
        "ln",
        &["-s".as_ref(), victim.as_os_str(), switch.as_os_str()]
    ));
    let m = release_manifest_for(&s);
    let run = s.stretcher().arg(&m).limit(Duration::from_secs(60)).run();
    run.assert_fail().assert_log(&switch.display().to_string());
    assert_untouched(&victim);
    assert!(switch.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&switch).unwrap(), victim);
    assert!(s.dest().symlink_metadata().is_err(), "dest was switched");
}

#[test]
fn planted_leftovers_in_the_releases_dir_are_left_alone_not_followed() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    let victim = root_only_file(&s);
    let victim_dir = victim.parent().unwrap().to_path_buf();
    let dir = users_releases_dir(&user, &s);
    let id = "20261201T220000Z-0123abcd";
    let ln = |target: &Path, name: String| {
        let at = dir.join(name);
        assert!(user.run("ln", &["-s".as_ref(), target.as_os_str(), at.as_os_str()]));
        at
    };
    // Symlinks at every leftover name, and a leftover directory of the user's.
    let planted = [
        ln(&victim_dir, format!(".{id}.partial")),
        ln(&victim_dir, format!(".{id}-2.removing")),
        ln(&victim, format!(".{id}.json.tmp")),
        ln(&victim, format!("{id}.json")),
    ];
    let theirs = dir.join(format!(".{id}-3.partial"));
    assert!(user.run("mkdir", &[theirs.as_os_str()]));
    assert!(user.run("touch", &[theirs.join("f").as_os_str()]));

    let m = release_manifest_for(&s);
    let run = s.stretcher().arg(&m).limit(Duration::from_secs(60)).run();
    run.assert_ok().assert_log("left alone");
    assert_untouched(&victim);
    for p in &planted {
        assert!(
            p.symlink_metadata().unwrap().file_type().is_symlink(),
            "{} was removed",
            p.display()
        );
    }
    assert!(
        theirs.join("f").exists(),
        "the user's directory was removed"
    );
    assert!(
        std::fs::read_link(s.dest()).is_ok(),
        "dest is a release link"
    );
}

/// `n` bytes no compressor shrinks (xorshift), so a capped download lasts.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The names beside dest that are staging directories of dest (`.stretcher-dest.…`).
fn staging_names(s: &Scratch) -> Vec<PathBuf> {
    std::fs::read_dir(s.path().join("parent"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(".stretcher-dest.") && n.ends_with(".staging")
        })
        .collect()
}

/// Every name below `root` (not following symlinks), for "nothing changed here".
fn listing(root: &Path) -> Vec<(PathBuf, u32)> {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            (e.path().to_path_buf(), m.mode())
        })
        .collect()
}

#[test]
fn staging_swapped_for_a_symlink_mid_download_is_not_followed() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    // Root's directory, where only root could create anything.
    let victim = s.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), b"root's").unwrap();
    let before = listing(&victim);
    // ~4 MiB in 16 files, at 1 MiB/s: the unpack runs for about four seconds.
    let blobs: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| (format!("f{i:02}"), noise(256 << 10, i + 1)))
        .collect();
    let entries: Vec<Raw> = blobs
        .iter()
        .map(|(n, d)| Raw::File(n.as_bytes(), d))
        .collect();
    let tar = s.file("big.tar", &raw_tar(&entries));
    let m = s.manifest("m.yml", &manifest_for(&tar, &s.dest(), ""));

    let running = s
        .stretcher()
        .args(["--max-bandwidth", "1M"])
        .arg(&m)
        .limit(Duration::from_secs(60))
        .spawn();
    // As soon as the staging directory holds a file, the user moves it away and
    // puts a symlink to root's directory in its place.
    let t = Instant::now();
    let staging = loop {
        assert!(t.elapsed() < Duration::from_secs(20), "no staging appeared");
        if let Some(p) = staging_names(&s).pop() {
            if std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_some()) {
                break p;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let moved = s.path().join("parent").join("moved");
    assert!(user.run("mv", &[staging.as_os_str(), moved.as_os_str()]));
    assert!(user.run(
        "ln",
        &["-s".as_ref(), victim.as_os_str(), staging.as_os_str()]
    ));
    let run = running.wait();

    assert_eq!(listing(&victim), before, "root wrote through the symlink");
    if run.code() == 0 {
        for (n, d) in &blobs {
            assert_eq!(&std::fs::read(s.dest().join(n)).unwrap(), d, "{n}");
        }
    } else {
        run.assert_log("replaced while the deploy ran");
        assert!(!s.dest().join("keep").exists(), "dest mirrors the victim");
    }
    // The symlink the user planted is theirs: left as it is.
    assert!(staging.symlink_metadata().unwrap().file_type().is_symlink());
}

/// A chain of `depth` directories named `d` below `top` (made through descriptors:
/// its paths are longer than PATH_MAX), with a symlink `l` to `link_to` at the
/// bottom, every node owned by `owner`.
fn deep_tree(top: &Path, depth: usize, link_to: &Path, owner: (u32, u32)) {
    use rustix::fs::{fchown, Gid, Mode, OFlags, Uid};
    let own = |fd: &std::os::fd::OwnedFd| {
        fchown(
            fd,
            Some(Uid::from_raw(owner.0)),
            Some(Gid::from_raw(owner.1)),
        )
        .unwrap()
    };
    std::fs::create_dir(top).unwrap();
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY;
    let mut cur = rustix::fs::open(top, flags, Mode::empty()).unwrap();
    own(&cur);
    for _ in 0..depth {
        rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).unwrap();
        cur = rustix::fs::openat(&cur, "d", flags, Mode::empty()).unwrap();
        own(&cur);
    }
    rustix::fs::symlinkat(link_to, &cur, "l").unwrap();
    rustix::fs::chownat(
        &cur,
        "l",
        Some(Uid::from_raw(owner.0)),
        Some(Gid::from_raw(owner.1)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

#[test]
fn a_deep_planted_staging_leftover_is_left_alone_and_a_deep_own_one_removed() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    // Root's directory with a read-only subdirectory: nothing here may change.
    let victim = s.path().join("victim");
    std::fs::create_dir_all(victim.join("ro")).unwrap();
    std::fs::write(victim.join("ro/keep"), b"root's").unwrap();
    std::fs::set_permissions(victim.join("ro"), std::fs::Permissions::from_mode(0o500)).unwrap();
    let before = listing(&victim);
    let parent = s.path().join("parent");
    let planted = parent.join(".stretcher-dest.Ab12Cd.staging");
    let ids = (user.uid.as_raw(), user.gid.as_raw());
    deep_tree(&planted, 3000, &victim, ids);
    // A real leftover of an earlier run (root's), as deep.
    let ours = parent.join(".stretcher-dest.Zz98Yx.staging");
    deep_tree(&ours, 3000, &victim, (0, 0));
    let m = deploy_manifest(&s);

    let run = s.stretcher().arg(&m).limit(Duration::from_secs(60)).run();
    run.assert_ok()
        .assert_log(&format!("{}: owned by uid {}", planted.display(), user.uid));
    assert_eq!(listing(&victim), before, "the victim changed");
    let top = planted.symlink_metadata().unwrap();
    assert_eq!(top.uid(), user.uid.as_raw(), "the planted tree was touched");
    assert_eq!(top.mode() & 0o7777, 0o755, "the planted tree was chmod-ed");
    assert!(
        planted.join("d/d/d").is_dir(),
        "the planted tree was emptied"
    );
    assert!(
        ours.symlink_metadata().is_err(),
        "root's own leftover stayed"
    );
    assert!(s.dest().is_dir(), "the deploy did not land");
}

/// The files dest holds in `z/` that the next archive lacks: the plan deletes in
/// reverse order, children first, so these go first and the deploy is seen in its sync
/// step (the first is gone) well before it reaches `data/`.
const DOOMED: usize = 20_000;

/// dest (and its `data/`) belong to the user; while the deploy that deletes
/// `data/old.txt` and adds `data/new.txt` is in its sync step, the user swaps `data`
/// for a symlink to a root-owned directory. The deploy is held (SIGSTOP, by pid) at
/// the moment its first delete is seen, so the swap always lands between the plan
/// and the changes in `data/`: the race the user would otherwise have to win.
/// Nothing in the symlink's target may be deleted, created or chmodded.
#[test]
fn a_directory_swapped_for_a_symlink_during_the_sync_is_not_followed() {
    let Some(user) = TestUser::new() else { return };
    let s = scratch_for(&user);
    let dest = s.dest();
    let v1 = s.file(
        "v1.tar",
        &raw_tar(&[
            Raw::Dir(b"data/"),
            Raw::File(b"data/keep.txt", b"keep"),
            Raw::File(b"data/old.txt", b"old"),
        ]),
    );
    let m1 = s.manifest("v1.yml", &manifest_for(&v1, &dest, ""));
    s.stretcher().arg(&m1).run().assert_ok();
    std::fs::create_dir(dest.join("z")).unwrap();
    for i in 0..DOOMED {
        std::fs::File::create(dest.join(format!("z/f{i:05}"))).unwrap();
    }
    user.give(&dest);

    let victim = s.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(victim.join("old.txt"), b"root's").unwrap();
    let victim_before = snapshot(&victim);

    let v2 = s.file(
        "v2.tar",
        &raw_tar(&[
            Raw::Dir(b"data/"),
            Raw::File(b"data/keep.txt", b"keep"),
            Raw::File(b"data/new.txt", b"new"),
        ]),
    );
    let m2 = s.manifest("v2.yml", &manifest_for(&v2, &dest, ""));
    let running = s
        .stretcher()
        .arg(&m2)
        .limit(Duration::from_secs(120))
        .spawn();
    let first = dest.join(format!("z/f{:05}", DOOMED - 1));
    let t = Instant::now();
    while first.symlink_metadata().is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the deploy never reached its sync step"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    running.signal(nix::sys::signal::Signal::SIGSTOP);
    let swapped = user.run(
        "sh",
        &[
            "-c".as_ref(),
            "mv \"$0/data\" \"$0/data.moved\" && ln -s \"$1\" \"$0/data\"".as_ref(),
            dest.as_os_str(),
            victim.as_os_str(),
        ],
    );
    let in_time = dest.join("z/f00000").symlink_metadata().is_ok();
    running.signal(nix::sys::signal::Signal::SIGCONT);
    let run = running.wait();
    assert!(swapped, "the user could not swap data for a symlink");
    assert!(
        in_time,
        "the swap came after the deletes in data/: the test proves nothing"
    );

    assert_eq!(
        snapshot(&victim),
        victim_before,
        "root changed the symlink's target (stderr ends: {})",
        tail(&run.stderr)
    );
    eprintln!(
        "the deploy ended with {}: {}",
        run.code(),
        tail(&run.stderr)
    );
    if run.code() != 0 {
        run.assert_log("data").assert_log("symbolic link");
    }
    assert!(dest
        .join("data")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
}

/// The last lines of a long log (the deploy logs each of its deletes).
fn tail(log: &str) -> &str {
    let lines: Vec<usize> = log.match_indices('\n').map(|(i, _)| i).collect();
    let from = lines.len().saturating_sub(6);
    lines.get(from).map_or(log, |&i| &log[i..])
}

/// A directory the plan deletes (in dest, not in the archive) holds symlinks to a
/// root-owned directory, also below a subdirectory: the symlinks go, the target's
/// contents stay.
#[test]
fn deleting_a_directory_removes_its_symlinks_not_their_targets() {
    let s = Scratch::new();
    let dest = s.dest();
    let tar = s.file("v.tar", &raw_tar(&[Raw::File(b"keep.txt", b"keep")]));
    let m = s.manifest("m.yml", &manifest_for(&tar, &dest, ""));
    s.stretcher().arg(&m).run().assert_ok();

    let victim = s.path().join("victim");
    make_tree(&victim, &[("precious", "x"), ("sub/deeper", "y")]);
    let victim_before = snapshot(&victim);
    std::fs::create_dir_all(dest.join("gone/sub")).unwrap();
    std::os::unix::fs::symlink(&victim, dest.join("gone/l")).unwrap();
    std::os::unix::fs::symlink(&victim, dest.join("gone/sub/l")).unwrap();
    std::os::unix::fs::symlink(victim.join("sub"), dest.join("gone/sub/m")).unwrap();

    s.stretcher().arg(&m).run().assert_ok();
    assert!(dest.join("gone").symlink_metadata().is_err());
    assert_eq!(snapshot(&victim), victim_before);
}
