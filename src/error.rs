//! The one error type of the library and its exit-code mapping (SPEC §3).
//!
//! Every variant prints as one line that names what it was about (the URL as the
//! user wrote it, the path, the archive entry); `source()` keeps the cause. It must
//! never carry a secret (a presigned URL, a key), and a URL it names is printed
//! through `urls::redact` (a password and the query string replaced, SPEC §17).

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The underlying error a variant keeps as its `source()` (an io, HTTP or parser
/// error); its text is already in the variant's one line.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why an S3 or GCS credential chain gave no credentials: `retryable` when an endpoint
/// (metadata, token) failed in a way a later attempt may not (connection refused, 5xx).
#[derive(Debug)]
pub(crate) struct CredError {
    pub msg: String,
    pub retryable: bool,
    /// The io / parser error `msg` says, kept as the source of the crate error.
    pub source: Option<Cause>,
}

impl CredError {
    pub(crate) fn config(msg: impl Into<String>) -> CredError {
        CredError {
            msg: msg.into(),
            retryable: false,
            source: None,
        }
    }
    pub(crate) fn transient(msg: impl Into<String>) -> CredError {
        CredError {
            msg: msg.into(),
            retryable: true,
            source: None,
        }
    }
    /// Keeps `cause` (already said in `msg`) as the source.
    pub(crate) fn because(mut self, cause: impl Into<Cause>) -> CredError {
        self.source = Some(cause.into());
        self
    }
}

/// Everything that can go wrong in a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line: exit status 2.
    #[error("{0}")]
    Usage(String),

    /// The event on stdin could not be understood.
    #[error("event: {msg}")]
    Event {
        /// What was wrong with the event.
        msg: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// `consul watch` handed over an empty list: nothing to run.
    #[error("no consul events")]
    NoConsulEvents,

    /// The manifest could not be expanded, parsed or validated.
    #[error("manifest {url}: {msg}", url = crate::urls::redact(.url))]
    Manifest {
        /// The manifest URL.
        url: String,
        /// What went wrong, in words.
        msg: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// `--trusted-key` is given and the manifest has no valid signature by one of
    /// the keys (SPEC §15): refused, nothing of it is used.
    #[error("manifest {url}: refused: {reason}", url = crate::urls::redact(.url))]
    Signature {
        /// The manifest URL.
        url: String,
        /// Why it is refused, in words (a `signature::Refusal`).
        reason: String,
    },

    /// The manifest is stale (SPEC §15): past its `expires`, or its `serial` is
    /// lower than that of the last successful deploy to the same dest. Refused.
    #[error("manifest {url}: refused: {msg}", url = crate::urls::redact(.url))]
    Freshness {
        /// The manifest URL.
        url: String,
        /// Why it is stale (expired, or a lower serial).
        msg: String,
    },

    /// A source could not be read (after its retries).
    #[error("fetch {url}: {msg}", url = crate::urls::redact(.url))]
    Fetch {
        /// The URL, as the user wrote it.
        url: String,
        /// What went wrong, in words.
        msg: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// A source answered with a non-2xx HTTP status (retried like any failed attempt).
    #[error("fetch {url}: HTTP {status}{detail}", url = crate::urls::redact(.url))]
    HttpStatus {
        /// The URL, as the user wrote it.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// What follows the status: its reason, the server's own message, a region hint.
        detail: String,
    },

    /// An `s3://` source could not be signed (bad URL, no credentials, bad endpoint).
    #[error("fetch {url}: {msg}", url = crate::urls::redact(.url))]
    S3 {
        /// The `s3://` URL, as the user wrote it.
        url: String,
        /// What went wrong, in words.
        msg: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// A `gs://` source could not be asked for (bad URL, no credentials, a token
    /// endpoint that refused the grant).
    #[error("fetch {url}: {msg}", url = crate::urls::redact(.url))]
    Gcs {
        /// The `gs://` URL, as the user wrote it.
        url: String,
        /// What went wrong, in words.
        msg: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// The whole-download deadline (`--timeout`) passed.
    #[error("fetch {url}: timeout after {secs:.1}s", url = crate::urls::redact(.url))]
    Timeout {
        /// The URL, as the user wrote it.
        url: String,
        /// The deadline (`--timeout`), in seconds.
        secs: f64,
    },

    /// No byte of a source arrived for `--stall-timeout` (SPEC §17): a failed attempt,
    /// retried like any other.
    #[error("fetch {url}: stalled: no data for {secs:.1}s (--stall-timeout)", url = crate::urls::redact(.url))]
    Stalled {
        /// The URL, as the user wrote it.
        url: String,
        /// The stall limit (`--stall-timeout`), in seconds.
        secs: f64,
    },

    /// A source broke one of SPEC §17's limits: a manifest or signature larger than
    /// 1 MiB, a body longer than the manifest's `size`, a `file://` source that is not
    /// a regular file. Refused (the record's `refused`), never retried.
    #[error("fetch {url}: refused: {msg}", url = crate::urls::redact(.url))]
    Limit {
        /// The URL, as the user wrote it.
        url: String,
        /// Which limit, in words.
        msg: String,
    },

    /// A server answered a range request (SPEC §18) with the whole body: it serves no
    /// ranges. Never retried; the delta deploy falls back to the full download.
    #[error("fetch {url}: the server does not serve byte ranges (a range request was answered with the whole body)", url = crate::urls::redact(.url))]
    NoRanges {
        /// The URL, as the user wrote it.
        url: String,
    },

    /// A file fetched by range (SPEC §18) does not hash to the sha256 the archive's
    /// verified table of contents gives it: like a checksum mismatch, final.
    #[error("checksum mismatch in archive entry \"{entry}\". expected:{expected} got:{got}")]
    EntryMismatch {
        /// The entry's path, as the log shows it.
        entry: String,
        /// The table's sha256, lower-case hex.
        expected: String,
        /// The digest of the bytes fetched, lower-case hex.
        got: String,
    },

    /// The downloaded bytes do not hash to `checksum`.
    #[error("checksum mismatch. expected:{expected} got:{got}")]
    ChecksumMismatch {
        /// The manifest's checksum, lower-case hex.
        expected: String,
        /// The digest of the downloaded bytes, lower-case hex.
        got: String,
    },

    /// The archive is not a readable tar / tar.gz stream.
    #[error("archive {url}: {msg}", url = crate::urls::redact(.url))]
    Archive {
        /// The `src` URL, as the user wrote it.
        url: String,
        /// What went wrong, in words.
        msg: String,
        /// The underlying error (the decoder's, the parser's, a read's), when there is
        /// one.
        #[source]
        source: Option<Cause>,
    },

    /// One archive entry was refused or could not be written.
    #[error("archive entry \"{entry}\": {msg}")]
    Entry {
        /// The entry's path in the archive, as the log shows it.
        entry: String,
        /// What went wrong, in words.
        msg: String,
        /// The underlying error (a filesystem call's, a header field's), when there is
        /// one.
        #[source]
        source: Option<Cause>,
    },

    /// A filesystem operation failed on a path.
    #[error("{op} {path}: {source}", path = .path.display())]
    Io {
        /// The operation that failed (`stat`, `write`, `rename into`, ...).
        op: &'static str,
        /// The path it was about.
        path: PathBuf,
        /// The io error.
        #[source]
        source: io::Error,
    },

    /// An exclude rule could not be compiled.
    #[error("exclude pattern {pattern:?}: {msg}")]
    Pattern {
        /// The rule, as written.
        pattern: String,
        /// What is wrong with it.
        msg: String,
    },

    /// The sync step refused to go on (e.g. `mv` onto a non-empty dest).
    #[error("sync {path}: {msg}", path = .path.display())]
    Sync {
        /// The path it was about.
        path: PathBuf,
        /// What went wrong, in words.
        msg: String,
    },

    /// dest itself is not usable as one: no parent directory, not a directory.
    #[error("dest {path}: {msg}", path = .path.display())]
    Dest {
        /// dest, as the manifest names it.
        path: PathBuf,
        /// What is wrong with it, in words.
        msg: String,
    },

    /// The deploy index of a dest (SPEC §11) could not be read.
    #[error("index {path}: {msg}", path = .path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it, in words.
        msg: String,
    },

    /// The manifest's `exclude_from` file could not be read out of the staged tree.
    #[error("exclude_from {name}: the file is not in the archive: {source}", name = .name.display())]
    ExcludeFrom {
        /// The name, as the manifest gives it.
        name: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },

    /// A file the unpack took as unchanged in dest changed before the sync (a `pre`
    /// command): its content is in neither tree.
    #[error("sync {path}: changed after the archive was unpacked (by a pre command?)", path = .path.display())]
    Stale {
        /// The file in dest that changed.
        path: PathBuf,
    },

    /// A release deploy, `releases` or `rollback` refused or failed (SPEC §14).
    #[error("{path}: {msg}", path = .path.display())]
    Release {
        /// The path it was about.
        path: PathBuf,
        /// What went wrong, in words.
        msg: String,
    },

    /// A hook command exited non-zero or was killed.
    #[error("failed: {command} {status}")]
    Hook {
        /// The command line.
        command: String,
        /// How it ended (`exit status 1`, `killed by signal SIGTERM`, ...).
        status: String,
    },

    /// A hook command could not be started at all.
    #[error("failed to start {command:?}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be started.
        #[source]
        source: io::Error,
    },

    /// `stretcher fleet status` could not ask the fleet (serf failed or is missing,
    /// no member answered).
    #[error("fleet status: {msg}")]
    Fleet {
        /// What went wrong, in words.
        msg: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// `stretcher rollout` could not drive the fleet (no member to deploy to, no
    /// answer to the status query).
    #[error("rollout: {0}")]
    Rollout(String),

    /// The Serf agent's RPC (`serf_rpc`) could not be used: no connection, an
    /// error answer, or an answer that is not Serf's RPC, too large or too late.
    #[error("serf agent {addr}: {msg}")]
    SerfRpc {
        /// The agent's RPC address.
        addr: String,
        /// What went wrong, in words.
        msg: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },

    /// A URL or manifest was refused before it was used (`--allow-url`, made by
    /// `allow`), or a redirect was (`http`: outside `--allow-url`, or from https to
    /// http, SPEC §17); the record says `refused` (SPEC §11). Never retried.
    #[error("fetch {url}: {msg}", url = crate::urls::redact(.url))]
    Refused {
        /// The URL, as the user wrote it.
        url: String,
        /// Why it was refused.
        msg: String,
    },

    /// A file or directory of stretcher's own that another user could control (SPEC
    /// §17): a lock file that is a symlink or not this user's, a state directory
    /// another user can write. Refused, never used.
    #[error("{what} {path}: refused: {msg}", path = .path.display())]
    Unsafe {
        /// What it is (`lock file`, `state directory`).
        what: &'static str,
        /// The path, as stretcher names it.
        path: PathBuf,
        /// Why it is refused, in words.
        msg: String,
    },

    /// SIGINT / SIGTERM arrived during the deploy.
    #[error("interrupted by {0}")]
    Interrupted(&'static str),

    /// A worker thread of a parallel walk panicked (a bug): what the walk found is
    /// not whole, so none of it is used.
    #[error("{task} {path}: a worker thread panicked: {msg}", path = .path.display())]
    WorkerPanic {
        /// The walk (`scan`).
        task: &'static str,
        /// The directory the worker was reading (the walk's root when it was
        /// between directories).
        path: PathBuf,
        /// The panic's message.
        msg: String,
    },
}

impl Error {
    /// Wraps an `io::Error` with the operation and the path it was about.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An `Error::Event` without an underlying cause.
    pub(crate) fn event(msg: impl Into<String>) -> Error {
        Error::Event {
            msg: msg.into(),
            source: None,
        }
    }

    /// An `Error::Fleet` without an underlying cause.
    pub(crate) fn fleet(msg: impl Into<String>) -> Error {
        Error::Fleet {
            msg: msg.into(),
            source: None,
        }
    }

    /// An `Error::Fetch` of `url` without an underlying cause.
    pub(crate) fn fetch(url: &str, msg: impl Into<String>) -> Error {
        Error::Fetch {
            url: url.to_string(),
            msg: msg.into(),
            source: None,
        }
    }

    /// An `Error::Fetch` of `url` that says `cause` and keeps it as its source.
    pub(crate) fn fetch_from(url: &str, cause: impl Into<Cause>) -> Error {
        let cause = cause.into();
        Error::Fetch {
            url: url.to_string(),
            msg: cause.to_string(),
            source: Some(cause),
        }
    }

    /// Whether another attempt at a download may succeed (SPEC §8 "retry"): every
    /// failed attempt is retried, whatever failed (a 404 or S3's 403 for an archive not
    /// uploaded yet is the common case, a stall too), but for the whole-download
    /// deadline, a signal, a checksum mismatch (the bytes arrived whole and are
    /// wrong), and a refusal (a redirect refused, a limit of SPEC §17 broken), which
    /// are final. `fetch` asks this, never which variant an error is.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. }
            | Error::Interrupted(_)
            | Error::ChecksumMismatch { .. }
            | Error::EntryMismatch { .. }
            | Error::NoRanges { .. }
            | Error::Refused { .. }
            | Error::Limit { .. } => false,
            // The source failed: the network, a status, a stall, credentials, the file.
            Error::Fetch { .. }
            | Error::Stalled { .. }
            | Error::HttpStatus { .. }
            | Error::S3 { .. }
            | Error::Gcs { .. }
            | Error::Io { .. } => true,
            // Never the error of an attempt today (`stream` keeps the unpacker's verdict
            // on good bytes out of the retries; the manifest is read after its fetch):
            // a failed attempt all the same, should one ever be.
            Error::Archive { .. }
            | Error::Entry { .. }
            | Error::Manifest { .. }
            | Error::Signature { .. }
            | Error::Freshness { .. }
            | Error::Pattern { .. }
            | Error::Usage(_)
            | Error::Event { .. }
            | Error::NoConsulEvents
            | Error::Sync { .. }
            | Error::Dest { .. }
            | Error::Index { .. }
            | Error::ExcludeFrom { .. }
            | Error::Stale { .. }
            | Error::Release { .. }
            | Error::Hook { .. }
            | Error::Spawn { .. }
            | Error::Fleet { .. }
            | Error::Rollout(_)
            | Error::SerfRpc { .. }
            | Error::Unsafe { .. }
            | Error::WorkerPanic { .. } => true,
        }
    }

    /// The process exit status for this error (SPEC §3): 2 for bad usage, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// The message of a caught panic's payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Adds path context to `io::Result`s: `fs::read(p).ctx("read", p)?`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_with_context() {
        let e = Error::ChecksumMismatch {
            expected: "aa".into(),
            got: "bb".into(),
        };
        assert_eq!(e.to_string(), "checksum mismatch. expected:aa got:bb");
        let e = Error::Hook {
            command: "false".into(),
            status: "exit status 1".into(),
        };
        assert_eq!(e.to_string(), "failed: false exit status 1");
        let e = Error::io(
            "open",
            "/x/y",
            io::Error::new(io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.to_string(), "open /x/y: gone");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(Error::Usage("bad".into()).exit_code(), 2);
    }

    #[test]
    fn causes_are_kept_and_the_line_stays_the_same() {
        use std::error::Error as _;
        let io = io::Error::new(io::ErrorKind::NotFound, "No such file or directory");
        let e = Error::fetch_from("file:///x", io);
        assert_eq!(e.to_string(), "fetch file:///x: No such file or directory");
        let cause = e.source().expect("the io error is kept");
        assert_eq!(cause.to_string(), "No such file or directory");
        assert!(cause.downcast_ref::<io::Error>().is_some());
        let e = Error::fetch("file:///x", "is a directory");
        assert_eq!(e.to_string(), "fetch file:///x: is a directory");
        assert!(e.source().is_none());
        let e = Error::event("empty manifest URL");
        assert_eq!(e.to_string(), "event: empty manifest URL");
    }

    /// One error of each variant class; `true` where another attempt is made.
    fn every_variant() -> Vec<(Error, bool)> {
        let io = || io::Error::other("x");
        let s = || "x".to_string();
        vec![
            // final: the deadline, a signal, a checksum mismatch
            (
                Error::Timeout {
                    url: s(),
                    secs: 1.0,
                },
                false,
            ),
            (Error::Interrupted("SIGINT"), false),
            (
                Error::ChecksumMismatch {
                    expected: s(),
                    got: s(),
                },
                false,
            ),
            // refused: a redirect, a limit of SPEC §17
            (Error::Refused { url: s(), msg: s() }, false),
            (Error::Limit { url: s(), msg: s() }, false),
            // a stalled source
            (
                Error::Stalled {
                    url: s(),
                    secs: 1.0,
                },
                true,
            ),
            // the source failed
            (Error::fetch("u", "Connection refused"), true),
            (Error::fetch_from("u", io()), true),
            (
                Error::HttpStatus {
                    url: s(),
                    status: 404,
                    detail: s(),
                },
                true,
            ),
            (
                Error::HttpStatus {
                    url: s(),
                    status: 503,
                    detail: s(),
                },
                true,
            ),
            (
                Error::S3 {
                    url: s(),
                    msg: s(),
                    source: None,
                },
                true,
            ),
            (
                Error::Gcs {
                    url: s(),
                    msg: s(),
                    source: None,
                },
                true,
            ),
            (Error::io("read", "/x", io()), true),
            // never the error of an attempt today
            (
                Error::Archive {
                    url: s(),
                    msg: s(),
                    source: None,
                },
                true,
            ),
            (
                Error::Entry {
                    entry: s(),
                    msg: s(),
                    source: None,
                },
                true,
            ),
            (
                Error::Manifest {
                    url: s(),
                    msg: s(),
                    source: None,
                },
                true,
            ),
            (
                Error::Signature {
                    url: s(),
                    reason: s(),
                },
                true,
            ),
            (Error::Freshness { url: s(), msg: s() }, true),
            (
                Error::Pattern {
                    pattern: s(),
                    msg: s(),
                },
                true,
            ),
            (Error::Usage(s()), true),
            (Error::event("x"), true),
            (Error::NoConsulEvents, true),
            (
                Error::Sync {
                    path: "/x".into(),
                    msg: s(),
                },
                true,
            ),
            (
                Error::Dest {
                    path: "/x".into(),
                    msg: s(),
                },
                true,
            ),
            (
                Error::Index {
                    path: "/x".into(),
                    msg: s(),
                },
                true,
            ),
            (
                Error::ExcludeFrom {
                    name: "x".into(),
                    source: io(),
                },
                true,
            ),
            (Error::Stale { path: "/x".into() }, true),
            (
                Error::Release {
                    path: "/x".into(),
                    msg: s(),
                },
                true,
            ),
            (
                Error::Hook {
                    command: s(),
                    status: s(),
                },
                true,
            ),
            (
                Error::Spawn {
                    command: s(),
                    source: io(),
                },
                true,
            ),
            (Error::fleet(s()), true),
            (
                Error::Unsafe {
                    what: "lock file",
                    path: "/x".into(),
                    msg: s(),
                },
                true,
            ),
        ]
    }

    #[test]
    fn urls_are_shown_redacted() {
        let url = "https://u:pw@h/a.tgz?X-Amz-Signature=s3cr3t";
        let shown = "https://u:REDACTED@h/a.tgz?REDACTED";
        for e in [
            Error::fetch(url, "x"),
            Error::Timeout {
                url: url.into(),
                secs: 1.0,
            },
            Error::Stalled {
                url: url.into(),
                secs: 1.0,
            },
            Error::Limit {
                url: url.into(),
                msg: "x".into(),
            },
            Error::HttpStatus {
                url: url.into(),
                status: 404,
                detail: String::new(),
            },
            Error::Archive {
                url: url.into(),
                msg: "x".into(),
                source: None,
            },
            Error::Manifest {
                url: url.into(),
                msg: "x".into(),
                source: None,
            },
            Error::Refused {
                url: url.into(),
                msg: "x".into(),
            },
        ] {
            let line = e.to_string();
            assert!(line.contains(shown), "{line}");
            assert!(!line.contains("s3cr3t") && !line.contains("pw"), "{line}");
        }
    }

    #[test]
    fn only_the_deadline_a_signal_a_mismatch_and_refusals_are_final() {
        for (e, want) in every_variant() {
            assert_eq!(e.is_retryable(), want, "{e:?}");
        }
    }
}
