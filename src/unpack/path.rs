//! The entry path policy (SPEC §10), pure: an entry's raw name bytes → a path relative
//! to the archive root (leading `/`s stripped and flagged for the warning, empty and
//! `.` components dropped, `..` and NUL refused); a hard link's target the same way,
//! but never empty. Names are bytes: they need not be UTF-8.
//!
//! Never touches the filesystem: that writes never pass through a symlink is the
//! extractor's part.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// An entry's path after the policy: relative to the archive root (empty = the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntryPath {
    pub(super) rel: PathBuf,
    /// The name started with `/` (stripped; worth a warning).
    pub(super) absolute: bool,
}

/// Why an entry's name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    ParentDir,
    Nul,
    EmptyLink,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::ParentDir => "path has a '..' component",
            Refusal::Nul => "path contains a NUL byte",
            Refusal::EmptyLink => "hard link target is empty",
        })
    }
}

/// Raw name bytes → relative path: leading `/`s, empty and `.` components dropped,
/// `..` refused. Works on bytes: names need not be UTF-8.
pub(super) fn entry_path(raw: &[u8]) -> std::result::Result<EntryPath, Refusal> {
    if raw.contains(&0) {
        return Err(Refusal::Nul);
    }
    let mut rel = PathBuf::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentDir),
            name => rel.push(OsStr::from_bytes(name)),
        }
    }
    Ok(EntryPath {
        rel,
        absolute: raw.first() == Some(&b'/'),
    })
}

/// A hard link's target: like an entry path (a leading `/` stripped, as GNU tar
/// does, flagged for the warning), but empty is refused.
pub(super) fn link_target(raw: &[u8]) -> std::result::Result<(PathBuf, bool), Refusal> {
    let p = entry_path(raw)?;
    if p.rel.as_os_str().is_empty() {
        Err(Refusal::EmptyLink)
    } else {
        Ok((p.rel, p.absolute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::shown;

    fn rel(raw: &[u8]) -> PathBuf {
        entry_path(raw).unwrap().rel
    }

    #[test]
    fn plain_and_dotted_names_normalise() {
        assert_eq!(rel(b"a/b/c"), PathBuf::from("a/b/c"));
        assert_eq!(rel(b"./a/./b/"), PathBuf::from("a/b"));
        assert_eq!(rel(b"a//b"), PathBuf::from("a/b"));
        assert_eq!(rel(b"dir/"), PathBuf::from("dir"));
        assert!(!entry_path(b"./a").unwrap().absolute);
    }

    #[test]
    fn root_entry_is_empty() {
        for raw in [&b"."[..], b"./", b"", b".//.", b"/"] {
            assert_eq!(rel(raw), PathBuf::new(), "{:?}", shown(raw));
        }
    }

    #[test]
    fn leading_slashes_are_stripped_and_flagged() {
        let p = entry_path(b"///etc/x").unwrap();
        assert_eq!(p.rel, PathBuf::from("etc/x"));
        assert!(p.absolute);
        assert!(entry_path(b"/").unwrap().absolute);
    }

    #[test]
    fn parent_components_are_refused() {
        for raw in [&b".."[..], b"../x", b"a/../b", b"a/..", b"/../etc", b"./.."] {
            assert_eq!(entry_path(raw), Err(Refusal::ParentDir), "{:?}", shown(raw));
        }
        // Only a whole component is `..`.
        assert_eq!(rel(b"a/..b/c.."), PathBuf::from("a/..b/c.."));
        assert_eq!(rel(b"..."), PathBuf::from("..."));
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(entry_path(b"a\0b"), Err(Refusal::Nul));
    }

    #[test]
    fn non_utf8_names_keep_their_bytes() {
        let p = rel(b"dir/caf\xe9");
        assert_eq!(p.as_os_str().as_bytes(), b"dir/caf\xe9");
    }

    #[test]
    fn hard_link_targets() {
        assert_eq!(link_target(b"./a/b"), Ok((PathBuf::from("a/b"), false)));
        assert_eq!(
            link_target(b"/etc/passwd"),
            Ok((PathBuf::from("etc/passwd"), true))
        );
        assert_eq!(link_target(b"../x"), Err(Refusal::ParentDir));
        assert_eq!(link_target(b"a/../../x"), Err(Refusal::ParentDir));
        assert_eq!(link_target(b"./"), Err(Refusal::EmptyLink));
    }
}
