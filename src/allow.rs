//! `--allow-url` (SPEC §3): the URL prefixes a manifest or its `src` may start with,
//! normalised once from the command line and checked before anything is fetched
//! (and, through `refusal`, by `http` for every redirect target, SPEC §17).
//! A refusal is `Error::Refused`, which the record reports as `refused` (SPEC §11).
//!
//! Never fetches, logs or reads the environment.

use crate::error::{Error, Result};
use crate::urls::has_scheme;

/// `--allow-url` (SPEC §3): the URL prefixes a manifest or `src` may start with.
/// Empty means "anything". Prefixes and URLs are compared after the same
/// normalisation (scheme and host lower-cased, `file://localhost/` → `file:///`,
/// an empty path → `/`), and under an allow-list a URL with user info
/// (`https://good@evil/`) or a `.` / `..` segment (also percent-encoded, also
/// between backslashes) is refused outright. The comparison is on the string: a
/// prefix should end with `/` (`file:///srv/app` also allows `file:///srv/app-x/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    prefixes: Vec<String>,
}

impl AllowList {
    /// Normalises and checks the prefixes; the error names the bad one.
    pub fn new(prefixes: &[String]) -> std::result::Result<AllowList, String> {
        let prefixes = prefixes
            .iter()
            .map(|p| normalize_url(p.trim()).map_err(|e| format!("prefix {p:?} {e}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(AllowList { prefixes })
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// The (normalised) prefixes.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Prefixes that end inside a name and so allow its siblings too.
    pub fn warnings(&self) -> Vec<String> {
        self.prefixes
            .iter()
            .filter(|p| !p.ends_with('/'))
            .map(|p| {
                format!(
                    "warning: --allow-url {p} does not end with \"/\": it also allows {p}-other/..."
                )
            })
            .collect()
    }

    /// `Ok` when the list is empty or `url` starts with one of the prefixes;
    /// otherwise an error naming the URL and `what` it is (manifest, src).
    pub fn check(&self, what: &str, url: &str) -> Result<()> {
        match self.refusal(url) {
            None => Ok(()),
            Some(why) => Err(Error::Refused {
                url: url.to_string(),
                msg: format!("{what} URL refused by --allow-url: {why}"),
            }),
        }
    }

    /// Why `url` is refused (`None`: it is allowed), in words that do not repeat the
    /// URL: for `check`, and for `http`, which checks every redirect target.
    pub(crate) fn refusal(&self, url: &str) -> Option<String> {
        if self.prefixes.is_empty() {
            return None;
        }
        let norm = match normalize_url(url) {
            Ok(norm) => norm,
            Err(e) => return Some(format!("the URL {e}")),
        };
        if self.prefixes.iter().any(|p| norm.starts_with(p.as_str())) {
            return None;
        }
        Some(format!(
            "it starts with none of {}",
            self.prefixes.join(", ")
        ))
    }
}

/// The form `AllowList` compares: see there. `Err` says what is wrong. Split by
/// hand, not by `url::Url`, which would resolve a `..` segment (it must be refused)
/// and encode the path differently from the byte-for-byte use `fetch` makes of it.
fn normalize_url(url: &str) -> std::result::Result<String, String> {
    if !has_scheme(url) {
        return Err("has no scheme (scheme://...)".to_string());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("has no scheme (scheme://...)".to_string());
    };
    let scheme = scheme.to_ascii_lowercase();
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(auth_end);
    if authority.contains('@') {
        return Err("has user info (user@host)".to_string());
    }
    let mut authority = authority.to_ascii_lowercase();
    if scheme == "file" && authority == "localhost" {
        authority.clear();
    }
    let path_end = after.find(['?', '#']).unwrap_or(after.len());
    let (path, suffix) = after.split_at(path_end);
    // `%XX` → the byte, anything else as is (only for the `..` check).
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    if decoded
        .split(|&b| b == b'/' || b == b'\\')
        .any(|seg| seg == b".." || seg == b".")
    {
        return Err("has a \".\" or \"..\" segment".to_string());
    }
    let path = if path.is_empty() { "/" } else { path };
    Ok(format!("{scheme}://{authority}{path}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(prefixes: &[&str]) -> AllowList {
        let v: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        AllowList::new(&v).unwrap()
    }

    #[test]
    fn allow_list_table() {
        let list = allow(&[
            "file:///srv/app/",
            "HTTPS://Deploy.Example.com",
            "s3://bucket/releases/",
            "gs://bucket/releases/",
            "file:///srv/legacy",
        ]);
        let cases: &[(&str, bool)] = &[
            ("file:///srv/app/m.yml", true),
            ("file://localhost/srv/app/m.yml", true),
            ("file:///srv/app/sub/a.tar.gz", true),
            ("FILE:///srv/app/m.yml", true),
            ("file:///srv/app", false),
            ("file:///srv/app-evil/m.yml", false),
            ("file:///srv/app/../etc/m.yml", false),
            ("file:///srv/app/./m.yml", false),
            ("file:///srv/app/%2e%2e/etc/m.yml", false),
            ("file:///srv/app/..%2Fetc/m.yml", false),
            ("file:///srv/app/..\\etc/m.yml", false),
            ("file:///srv/app/..x/m.yml", true),
            ("file:///srv/app2/m.yml", false),
            ("https://deploy.example.com/m.yml", true),
            ("https://DEPLOY.example.com/m.yml?x=1", true),
            ("https://deploy.example.com", true),
            ("https://deploy.example.com.evil.net/m.yml", false),
            ("https://deploy.example.com@evil.net/m.yml", false),
            ("http://deploy.example.com/m.yml", false),
            ("s3://bucket/releases/app.tar.gz", true),
            ("s3://bucket/other/app.tar.gz", false),
            ("s3://BUCKET/releases/app.tar.gz", true),
            ("gs://bucket/releases/app.tar.gz", true),
            ("gs://bucket/releases-x/app.tar.gz", false),
            ("gs://bucket/releases/../app.tar.gz", false),
            // a prefix without a trailing slash is a plain string prefix
            ("file:///srv/legacy/m.yml", true),
            ("file:///srv/legacy-evil/m.yml", true),
            ("/srv/app/m.yml", false),
        ];
        for (url, want) in cases {
            let got = list.check("manifest", url);
            assert_eq!(got.is_ok(), *want, "{url}: {got:?}");
            if let Err(e) = got {
                let m = e.to_string();
                assert!(
                    m.contains("refused by --allow-url") && m.contains(&crate::urls::redact(url)),
                    "{m}"
                );
            }
        }
        assert_eq!(list.warnings().len(), 1);
        assert!(list.warnings()[0].contains("file:///srv/legacy"));
        // no list: anything goes
        assert!(AllowList::default().check("src", "file:///x/../y").is_ok());
    }

    #[test]
    fn bad_prefixes() {
        for bad in [
            "/srv/app/",
            "srv",
            "https://u@h/",
            "file:///srv/../app/",
            "",
        ] {
            assert!(AllowList::new(&[bad.to_string()]).is_err(), "{bad:?}");
        }
        assert_eq!(allow(&["file://"]).prefixes(), ["file:///"]);
    }
}
