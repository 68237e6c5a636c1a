//! The unpack's errors: an entry's (`Error::Entry`, named as `log::shown` writes it)
//! and the archive's (`Error::Archive`, with the URL as the user wrote it), each one
//! line with the causes chained, the io error it says kept as its `source()`.

use std::io;

use crate::error::{Cause, Error};
use crate::log::shown;

use super::path::Refusal;
use super::UnpackOptions;

pub(super) fn fail(raw: &[u8], msg: impl Into<String>) -> Error {
    Error::Entry {
        entry: shown(raw),
        msg: msg.into(),
        source: None,
    }
}

/// An entry's error whose words say `cause`, kept as its source.
pub(super) fn fail_from(raw: &[u8], msg: impl Into<String>, cause: impl Into<Cause>) -> Error {
    Error::Entry {
        entry: shown(raw),
        msg: msg.into(),
        source: Some(cause.into()),
    }
}

/// `WHAT: <the io error>` for an entry (`stat: No such file or directory`), the io
/// error kept as the source.
pub(super) fn fail_io(raw: &[u8], what: &str, e: io::Error) -> Error {
    fail_from(raw, format!("{what}: {e}"), e)
}

/// An entry's error before the entry is named: the words, and the error they say.
#[derive(Debug)]
pub(super) struct Why {
    msg: String,
    source: Option<io::Error>,
}

impl Why {
    /// `WHAT: <the io error>`, the io error kept.
    pub(super) fn io(what: &str, e: io::Error) -> Why {
        Why {
            msg: format!("{what}: {e}"),
            source: Some(e),
        }
    }

    /// The io error's own words, the io error kept.
    pub(super) fn said(e: io::Error) -> Why {
        Why {
            msg: e.to_string(),
            source: Some(e),
        }
    }

    /// The words, prefixed with `what: `.
    pub(super) fn within(mut self, what: &str) -> Why {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The error of the entry `raw`.
    pub(super) fn of(self, raw: &[u8]) -> Error {
        Error::Entry {
            entry: shown(raw),
            msg: self.msg,
            source: self.source.map(Cause::from),
        }
    }
}

impl From<String> for Why {
    fn from(msg: String) -> Why {
        Why { msg, source: None }
    }
}

impl From<&str> for Why {
    fn from(msg: &str) -> Why {
        Why::from(msg.to_string())
    }
}

/// An error and its sources on one line.
pub(super) fn chain(e: &io::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

pub(super) fn refused(raw: &[u8], r: Refusal) -> Error {
    fail(raw, r.to_string())
}

pub(super) fn archive_error(opts: &UnpackOptions, msg: String) -> Error {
    Error::Archive {
        url: opts.label.clone(),
        msg,
        source: None,
    }
}

/// The archive's error whose words say `cause`, kept as its source.
pub(super) fn archive_error_from(opts: &UnpackOptions, msg: String, cause: io::Error) -> Error {
    Error::Archive {
        url: opts.label.clone(),
        msg,
        source: Some(cause.into()),
    }
}

/// A read error from the decoder or tar parser: the stream is corrupt or cut short.
pub(super) fn corrupt(opts: &UnpackOptions, e: io::Error) -> Error {
    archive_error_from(opts, chain(&e), e)
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn opts() -> UnpackOptions {
        UnpackOptions {
            label: "file:///a.tar".into(),
            ..UnpackOptions::default()
        }
    }

    /// The io error is the source; the line says it as before.
    #[test]
    fn io_errors_are_kept_as_sources() {
        let gone = || io::Error::new(io::ErrorKind::NotFound, "No such file or directory");
        let e = fail_io(b"caf\xe9", "stat", gone());
        assert_eq!(
            e.to_string(),
            r#"archive entry "caf\xe9": stat: No such file or directory"#
        );
        let cause = e.source().expect("kept");
        assert!(cause.downcast_ref::<io::Error>().is_some());
        assert_eq!(cause.to_string(), "No such file or directory");

        let e = Why::io("chmod", gone()).within("dir").of(b"d");
        assert_eq!(
            e.to_string(),
            r#"archive entry "d": dir: chmod: No such file or directory"#
        );
        assert!(e.source().is_some());
        let e = Why::said(gone()).of(b"d");
        assert_eq!(
            e.to_string(),
            r#"archive entry "d": No such file or directory"#
        );
        assert!(e.source().is_some());
        assert!(Why::from("no cause").of(b"d").source().is_none());
        assert!(fail(b"d", "no cause").source().is_none());

        let e = corrupt(&opts(), io::Error::other("unexpected EOF"));
        assert_eq!(e.to_string(), "archive file:///a.tar: unexpected EOF");
        assert!(e.source().unwrap().downcast_ref::<io::Error>().is_some());
        assert!(archive_error(&opts(), "empty".into()).source().is_none());
    }
}
