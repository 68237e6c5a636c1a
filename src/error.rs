//! The one error type of the library and its exit-code mapping (SPEC §3).
//!
//! Every variant prints as one line that names what it was about (the URL as the
//! user wrote it, the path, the archive entry); `source()` keeps the cause. It must
//! never carry a secret (a presigned URL, a key).

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line: exit status 2.
    #[error("{0}")]
    Usage(String),

    /// The event on stdin could not be understood.
    #[error("event: {0}")]
    Event(String),

    /// `consul watch` handed over an empty list: nothing to run.
    #[error("no consul events")]
    NoConsulEvents,

    /// The manifest could not be expanded, parsed or validated.
    #[error("manifest {url}: {msg}")]
    Manifest { url: String, msg: String },

    /// `--trusted-key` is given and the manifest has no valid signature by one of
    /// the keys (SPEC §15): refused, nothing of it is used.
    #[error("manifest {url}: refused: {reason}")]
    Signature { url: String, reason: String },

    /// The manifest is stale (SPEC §15): past its `expires`, or its `serial` is
    /// lower than that of the last successful deploy to the same dest. Refused.
    #[error("manifest {url}: refused: {msg}")]
    Freshness { url: String, msg: String },

    /// A source could not be read (after its retries).
    #[error("fetch {url}: {msg}")]
    Fetch { url: String, msg: String },

    /// A source answered with a non-2xx HTTP status: 5xx is retried, 4xx is final.
    #[error("fetch {url}: HTTP {status}{detail}")]
    HttpStatus {
        url: String,
        status: u16,
        detail: String,
    },

    /// An `s3://` source could not be signed (bad URL, no credentials, bad endpoint).
    #[error("fetch {url}: {msg}")]
    S3 { url: String, msg: String },

    /// A `gs://` source could not be asked for (bad URL, no credentials, a token
    /// endpoint that refused the grant).
    #[error("fetch {url}: {msg}")]
    Gcs { url: String, msg: String },

    /// The whole-download deadline (`--timeout`) passed.
    #[error("fetch {url}: timeout after {secs:.1}s")]
    Timeout { url: String, secs: f64 },

    /// The downloaded bytes do not hash to `checksum`.
    #[error("checksum mismatch. expected:{expected} got:{got}")]
    ChecksumMismatch { expected: String, got: String },

    /// The archive is not a readable tar / tar.gz stream.
    #[error("archive {url}: {msg}")]
    Archive { url: String, msg: String },

    /// One archive entry was refused or could not be written.
    #[error("archive entry \"{entry}\": {msg}")]
    Entry { entry: String, msg: String },

    /// A filesystem operation failed on a path.
    #[error("{op} {path}: {source}", path = .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An exclude rule could not be compiled.
    #[error("exclude pattern {pattern:?}: {msg}")]
    Pattern { pattern: String, msg: String },

    /// The sync step refused to go on (e.g. `mv` onto a non-empty dest).
    #[error("sync {path}: {msg}", path = .path.display())]
    Sync { path: PathBuf, msg: String },

    /// A file the unpack took as unchanged in dest changed before the sync (a `pre`
    /// command): its content is in neither tree.
    #[error("sync {path}: changed after the archive was unpacked (by a pre command?)", path = .path.display())]
    Stale { path: PathBuf },

    /// A release deploy, `releases` or `rollback` refused or failed (SPEC §14).
    #[error("{path}: {msg}", path = .path.display())]
    Release { path: PathBuf, msg: String },

    /// A hook command exited non-zero or was killed.
    #[error("failed: {command} {status}")]
    Hook { command: String, status: String },

    /// A hook command could not be started at all.
    #[error("failed to start {command:?}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    /// `stretcher fleet status` could not ask the fleet (serf failed or is missing,
    /// no member answered).
    #[error("fleet status: {0}")]
    Fleet(String),

    /// A URL or manifest was refused before it was used (`--allow-url`): the
    /// allow-list's own error (only `allow` makes it); the record says `refused`
    /// (SPEC §11).
    #[error("fetch {url}: {msg}")]
    Refused { url: String, msg: String },

    /// SIGINT / SIGTERM arrived during the deploy.
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
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

    /// The process exit status for this error (SPEC §3): 2 for bad usage, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Adds path context to `io::Result`s: `fs::read(p).ctx("read", p)?`.
pub trait IoContext<T> {
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
}
