//! The unpack's errors: an entry's (`Error::Entry`, named as `log::shown` writes it)
//! and the archive's (`Error::Archive`, with the URL as the user wrote it), each one
//! line with the causes chained.

use std::io;

use crate::error::Error;
use crate::log::shown;

use super::path::Refusal;
use super::UnpackOptions;

pub(super) fn fail(raw: &[u8], msg: impl Into<String>) -> Error {
    Error::Entry {
        entry: shown(raw),
        msg: msg.into(),
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
    }
}

/// A read error from the decoder or tar parser: the stream is corrupt or cut short.
pub(super) fn corrupt(opts: &UnpackOptions, e: &io::Error) -> Error {
    archive_error(opts, chain(e))
}
