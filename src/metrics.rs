//! node_exporter textfile metrics (SPEC §13): `--textfile-dir DIR` makes every
//! deploy that wrote a record also write `DIR/stretcher-<key>.prom`, atomically
//! (a dot-named temp file in DIR, fsync, rename), which node_exporter's textfile
//! collector serves on its next scrape.
//!
//! One job: the exposition text of one dest's last deploy (`render`) and its
//! atomic write (`write`). Every file carries the same `# HELP` / `# TYPE`
//! lines, so node_exporter merges the files of several dests into one family.
//!
//! The textfile directory may be another user's (SPEC §17): it is opened once and the
//! temporary is created relative to its descriptor with `O_CREAT|O_EXCL|O_NOFOLLOW`,
//! its mode (0644, whatever the umask) set through the open descriptor, and renamed
//! into place by `renameat`: a symlink planted or swapped in at either name is never
//! followed.

use std::path::{Path, PathBuf};

use crate::at::Tree;
use crate::error::{Error, Result};
use crate::record::{self, Outcome, Record};
use crate::urls::redact;

/// The values of one dest's last deploy that the metrics show.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LastDeploy<'a> {
    /// The `dest` label: dest's path, or the record key of a commands-only
    /// manifest (`commands-<digest>`), so that no two files share a series.
    pub dest: &'a str,
    pub success: bool,
    /// When it finished, seconds since the Unix epoch.
    pub finished: f64,
    pub duration_s: f64,
    pub checksum: &'a str,
    pub manifest_url: &'a str,
    /// created, updated, deleted, unchanged — when the deploy reached the sync.
    pub changes: Option<[u64; 4]>,
}

const CHANGE_KINDS: [&str; 4] = ["created", "updated", "deleted", "unchanged"];

/// The file name for the record key `key`.
pub(crate) fn file_name(key: &str) -> String {
    format!("stretcher-{key}.prom")
}

/// A label value escaped as the text exposition format requires: `\` → `\\`,
/// `"` → `\"`, line feed → `\n`.
pub(crate) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: integers without a fraction, others with millisecond precision.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The exposition text (format 0.0.4) for one dest.
pub(crate) fn render(d: &LastDeploy) -> String {
    let dest = escape_label(d.dest);
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    };
    let dest_label = format!("dest=\"{dest}\"");
    family(
        "stretcher_last_deploy_success",
        "Whether the last deploy to dest succeeded (1) or not (0).",
        vec![(dest_label.clone(), (d.success as u8).to_string())],
    );
    family(
        "stretcher_last_deploy_timestamp_seconds",
        "When the last deploy to dest finished, in seconds since the epoch.",
        vec![(dest_label.clone(), number(d.finished))],
    );
    family(
        "stretcher_last_deploy_duration_seconds",
        "How long the last deploy to dest took, in seconds.",
        vec![(dest_label.clone(), number(d.duration_s))],
    );
    family(
        "stretcher_last_deploy_info",
        "The checksum and manifest URL of the last deploy to dest (always 1).",
        vec![(
            format!(
                "{dest_label},checksum=\"{}\",manifest_url=\"{}\"",
                escape_label(d.checksum),
                // As the record has it already; a label is never a secret's place.
                escape_label(&redact(d.manifest_url))
            ),
            "1".into(),
        )],
    );
    if let Some(changes) = d.changes {
        family(
            "stretcher_last_deploy_changes",
            "Entries of dest the last deploy created, updated, deleted or left unchanged.",
            CHANGE_KINDS
                .iter()
                .zip(changes)
                .map(|(kind, n)| (format!("{dest_label},kind=\"{kind}\""), n.to_string()))
                .collect(),
        );
    }
    out
}

impl<'a> LastDeploy<'a> {
    /// The values of `rec`, the record written under `key`.
    pub fn of(key: &'a str, rec: &'a Record) -> LastDeploy<'a> {
        let finished = chrono::DateTime::parse_from_rfc3339(rec.time())
            .map(|t| t.timestamp_millis() as f64 / 1000.0)
            .unwrap_or(0.0);
        LastDeploy {
            dest: rec.dest.as_deref().unwrap_or(key),
            success: rec.result == Outcome::Success,
            finished,
            duration_s: rec.duration_s.unwrap_or(0.0),
            checksum: rec.checksum.as_deref().unwrap_or(""),
            manifest_url: &rec.manifest_url,
            changes: rec
                .changes
                .as_ref()
                .map(|c| [c.created, c.updated, c.deleted, c.unchanged]),
        }
    }
}

/// After the record `rec` of `key` (SPEC §13): writes its metrics file in `dir`.
/// A record of a usable manifest also removes the file an earlier run left for the
/// same manifest URL when it could not use the manifest (`manifest-*` key), so an
/// old failure does not stay in the metrics once the manifest works.
pub(crate) fn write_record(
    dir: &Path,
    key: &str,
    rec: &Record,
    manifest_url: &str,
) -> Result<PathBuf> {
    let tree = open(dir)?;
    let path = write_in(&tree, key, &LastDeploy::of(key, rec))?;
    let unusable = record::key_for_manifest(manifest_url);
    if unusable != key {
        let name = file_name(&unusable);
        let stale = dir.join(&name);
        match tree.unlink(Path::new(&name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove", &stale, e))
            }
            _ => {}
        }
    }
    Ok(path)
}

/// Writes `render(d)` to `dir/stretcher-<key>.prom` atomically; returns its path.
/// The temp file is dot-named and does not end in `.prom`, so node_exporter never
/// reads a half-written file.
#[cfg(test)]
pub(crate) fn write(dir: &Path, key: &str, d: &LastDeploy) -> Result<PathBuf> {
    write_in(&open(dir)?, key, d)
}

/// The textfile directory, opened once (the path to it is the operator's).
fn open(dir: &Path) -> Result<Tree> {
    Tree::open(dir, true).map_err(|e| Error::io("open directory", dir, e))
}

/// [`write`] relative to the open directory: the temporary
/// `.stretcher-<key>.prom.<random>.tmp` made `O_EXCL|O_NOFOLLOW`, mode 0644 set
/// through its descriptor (node_exporter runs as its own user and must read it),
/// written, fsync'd, renamed into place.
fn write_in(dir: &Tree, key: &str, d: &LastDeploy) -> Result<PathBuf> {
    let name = file_name(key);
    let path = dir.shown(Path::new(&name));
    dir.replace(
        Path::new(&name),
        &format!(".{name}."),
        0o644,
        render(d).as_bytes(),
    )
    .map_err(|e| Error::io("write", &path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LastDeploy<'static> {
        LastDeploy {
            dest: "/srv/app",
            success: true,
            finished: 1_764_583_200.25,
            duration_s: 1.5,
            checksum: "0123abcd",
            manifest_url: "s3://bucket/app.yml",
            changes: Some([3, 1, 2, 10]),
        }
    }

    #[test]
    fn golden() {
        assert_eq!(
            render(&sample()),
            "\
# HELP stretcher_last_deploy_success Whether the last deploy to dest succeeded (1) or not (0).
# TYPE stretcher_last_deploy_success gauge
stretcher_last_deploy_success{dest=\"/srv/app\"} 1
# HELP stretcher_last_deploy_timestamp_seconds When the last deploy to dest finished, in seconds since the epoch.
# TYPE stretcher_last_deploy_timestamp_seconds gauge
stretcher_last_deploy_timestamp_seconds{dest=\"/srv/app\"} 1764583200.250
# HELP stretcher_last_deploy_duration_seconds How long the last deploy to dest took, in seconds.
# TYPE stretcher_last_deploy_duration_seconds gauge
stretcher_last_deploy_duration_seconds{dest=\"/srv/app\"} 1.500
# HELP stretcher_last_deploy_info The checksum and manifest URL of the last deploy to dest (always 1).
# TYPE stretcher_last_deploy_info gauge
stretcher_last_deploy_info{dest=\"/srv/app\",checksum=\"0123abcd\",manifest_url=\"s3://bucket/app.yml\"} 1
# HELP stretcher_last_deploy_changes Entries of dest the last deploy created, updated, deleted or left unchanged.
# TYPE stretcher_last_deploy_changes gauge
stretcher_last_deploy_changes{dest=\"/srv/app\",kind=\"created\"} 3
stretcher_last_deploy_changes{dest=\"/srv/app\",kind=\"updated\"} 1
stretcher_last_deploy_changes{dest=\"/srv/app\",kind=\"deleted\"} 2
stretcher_last_deploy_changes{dest=\"/srv/app\",kind=\"unchanged\"} 10
"
        );
    }

    #[test]
    fn failure_without_sync_has_no_changes() {
        let d = LastDeploy {
            success: false,
            changes: None,
            ..sample()
        };
        let text = render(&d);
        assert!(text.contains("stretcher_last_deploy_success{dest=\"/srv/app\"} 0\n"));
        assert!(!text.contains("changes"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("line\nnext"), "line\\nnext");
        assert_eq!(escape_label("ünïcode"), "ünïcode");
        let d = LastDeploy {
            dest: "/srv/we\"ird\\dir\n",
            ..sample()
        };
        assert!(render(&d).contains(r#"{dest="/srv/we\"ird\\dir\n"}"#));
    }

    #[test]
    fn write_is_atomic_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "app-0123456789abcdef", &sample()).unwrap();
        assert_eq!(p, dir.path().join("stretcher-app-0123456789abcdef.prom"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), render(&sample()));
        // a second write replaces it
        let d = LastDeploy {
            success: false,
            ..sample()
        };
        write(dir.path(), "app-0123456789abcdef", &d).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), render(&d));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write(&dir.path().join("missing"), "k", &d).is_err());
    }

    /// The body of the next test, run in a process of its own under umask 077 (so no
    /// other test sees that umask): `STRETCHER_TEST_TEXTFILE_DIR` names the directory.
    #[test]
    #[ignore = "run by a_planted_symlink_is_not_followed_and_the_mode_is_0644_whatever_the_umask"]
    fn textfile_written_under_umask_077() {
        let Some(dir) = std::env::var_os("STRETCHER_TEST_TEXTFILE_DIR") else {
            return;
        };
        write(Path::new(&dir), "k", &sample()).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_not_followed_and_the_mode_is_0644_whatever_the_umask() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join(file_name("k"));
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        // This test binary again, for the test above only, under umask 077.
        let exe = std::env::current_exe().unwrap();
        let st = std::process::Command::new("sh")
            .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
            .arg(&exe)
            .args([
                "--exact",
                "metrics::tests::textfile_written_under_umask_077",
            ])
            .args(["--ignored", "--test-threads=1"])
            .env("STRETCHER_TEST_TEXTFILE_DIR", dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "the symlink is still there");
        assert_eq!(meta.mode() & 0o7777, 0o644);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), render(&sample()));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        let mode = std::fs::metadata(&victim).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_record_replaces_the_unusable_manifest_file() {
        let url = "https://releases.example.com/app.yml";
        let rec: Record = serde_json::from_value(serde_json::json!({
            "schema": 1, "host": "h", "stretcher_version": "0.1.0", "dest": "/srv/app",
            "strategy": "rsync", "release": null, "manifest_url": url,
            "manifest_sha256": null, "serial": null, "src": null, "checksum": "ab12",
            "event": {"origin": "arg", "name": null, "id": null, "ltime": null},
            "result": "success", "failed_step": null, "error": null,
            "started": "2026-12-01T10:00:00.000Z", "finished": "2026-12-01T10:00:01.500Z",
            "duration_s": 1.5, "downloaded_bytes": 10, "download_skipped": false,
            "changes": {"created": 1, "updated": 2, "deleted": 3, "unchanged": 4}, "hooks": []
        }))
        .unwrap();
        let d = LastDeploy::of("app-0123456789abcdef", &rec);
        assert_eq!(d.dest, "/srv/app");
        assert!(d.success);
        assert_eq!(d.finished, 1_796_119_201.5);
        assert_eq!(d.changes, Some([1, 2, 3, 4]));
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(file_name(&record::key_for_manifest(url)));
        std::fs::write(&stale, "stretcher_last_deploy_success{dest=\"x\"} 0\n").unwrap();
        let other = dir.path().join("other.prom");
        std::fs::write(&other, "").unwrap();
        write_record(dir.path(), "app-0123456789abcdef", &rec, url).unwrap();
        assert!(!stale.exists());
        assert!(other.exists());
        assert!(dir
            .path()
            .join("stretcher-app-0123456789abcdef.prom")
            .exists());
        // a commands-only record has its key as dest
        let mut commands = rec.clone();
        commands.dest = None;
        assert_eq!(LastDeploy::of("commands-00", &commands).dest, "commands-00");
    }
}
