//! `--textfile-dir` against a real node_exporter (SPEC §13; cargo feature `e2e`,
//! needs the Debian package `prometheus-node-exporter`): the exporter runs on
//! 127.0.0.1 with only the textfile collector, reading the directory stretcher
//! writes into, and is scraped over HTTP after each deploy. Killed by pid at the
//! end (a Drop guard).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::serf::free_port;
use crate::util::*;

/// Where Debian installs it.
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

struct Exporter {
    child: Child,
    port: u16,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_exporter(textfile_dir: &Path, log: &Path) -> Exporter {
    let port = free_port();
    let program = if Path::new(NODE_EXPORTER).exists() {
        NODE_EXPORTER
    } else {
        "node_exporter"
    };
    let child = Command::new(program)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!(
            "--collector.textfile.directory={}",
            textfile_dir.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start node_exporter (apt-get install -y prometheus-node-exporter): {e}")
        });
    let exporter = Exporter { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node_exporter did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    exporter
}

/// GET /metrics over plain HTTP/1.0; the body.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

fn finished_of(state: &Path, dest: &Path) -> f64 {
    let rec = stretcher::record::last(state, dest).expect("a record");
    chrono::DateTime::parse_from_rfc3339(rec.time())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0
}

#[test]
fn node_exporter_serves_the_deploy_metrics() {
    let s = Scratch::new();
    let textfiles = s.path().join("textfile");
    std::fs::create_dir(&textfiles).unwrap();
    let exporter = start_exporter(&textfiles, &s.path().join("node_exporter.log"));

    // a good deploy, twice (the second onto its own result)
    let tar = raw_tar(&[
        Raw::File(b"a.txt", b"a\n"),
        Raw::Dir(b"d/"),
        Raw::File(b"d/b.txt", b"b\n"),
    ]);
    let archive = s.file("app.tar", &tar);
    let dest = s.dest();
    let good = s.manifest("good.yml", &manifest_for(&archive, &dest, ""));
    let deploy = |manifest: &Path| {
        s.stretcher()
            .arg("--textfile-dir")
            .arg(&textfiles)
            .arg(manifest)
            .run()
    };
    deploy(&good).assert_ok();
    let body = scrape(exporter.port);
    let d = dest.display().to_string();
    assert_eq!(
        sample(
            &body,
            &format!("stretcher_last_deploy_success{{dest=\"{d}\"}}")
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            &format!(
                "stretcher_last_deploy_info{{checksum=\"{}\",dest=\"{d}\",manifest_url=\"file://{}\"}}",
                sha1_bytes(&tar),
                good.display()
            )
        ),
        Some(1.0),
        "{body}"
    );
    let t1 = finished_of(&s.state_dir(), &dest);
    assert_eq!(
        sample(
            &body,
            &format!("stretcher_last_deploy_timestamp_seconds{{dest=\"{d}\"}}")
        ),
        Some(t1),
        "{body}"
    );
    assert!(sample(
        &body,
        &format!("stretcher_last_deploy_duration_seconds{{dest=\"{d}\"}}")
    )
    .is_some());
    let rec = stretcher::record::last(&s.state_dir(), &dest).unwrap();
    let changes = rec.changes.unwrap();
    assert_eq!(
        sample(
            &body,
            &format!("stretcher_last_deploy_changes{{dest=\"{d}\",kind=\"created\"}}")
        ),
        Some(changes.created as f64),
        "{body}"
    );
    assert!(changes.created > 0);
    assert_eq!(
        sample(&body, "node_textfile_scrape_error"),
        Some(0.0),
        "{body}"
    );

    std::thread::sleep(Duration::from_millis(20));
    deploy(&good).assert_ok();
    let body = scrape(exporter.port);
    let t2 = finished_of(&s.state_dir(), &dest);
    assert!(t2 > t1);
    assert_eq!(
        sample(
            &body,
            &format!("stretcher_last_deploy_timestamp_seconds{{dest=\"{d}\"}}")
        ),
        Some(t2),
        "{body}"
    );

    // a failing deploy to a dest whose name needs escaping, beside the first
    let odd = s.path().join("parent").join("we\"ird\\dest");
    let bad = s.manifest(
        "bad.yml",
        &manifest_for(&archive, &odd, "commands:\n  pre:\n    - exit 7\n"),
    );
    deploy(&bad).assert_fail();
    let body = scrape(exporter.port);
    assert_eq!(
        sample(&body, "node_textfile_scrape_error"),
        Some(0.0),
        "{body}"
    );
    let escaped = odd
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    assert_eq!(
        sample(
            &body,
            &format!("stretcher_last_deploy_success{{dest=\"{escaped}\"}}")
        ),
        Some(0.0),
        "{body}"
    );
    // the first dest is still there; the failed one reached no sync: no changes
    assert_eq!(
        sample(
            &body,
            &format!("stretcher_last_deploy_success{{dest=\"{d}\"}}")
        ),
        Some(1.0)
    );
    assert!(!body.contains(&format!(
        "stretcher_last_deploy_changes{{dest=\"{escaped}\""
    )));
    // two files, no temp files left
    let mut names: Vec<String> = std::fs::read_dir(&textfiles)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names
        .iter()
        .all(|n| n.starts_with("stretcher-") && n.ends_with(".prom")));
    drop(exporter);
}
