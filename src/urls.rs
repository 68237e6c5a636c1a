//! URL text as the user wrote it: whether it has a `scheme://`, and its split into
//! scheme and the rest. Shared by `event`, `allow`, `manifest` and `fetch`.
//!
//! Hand-written on purpose, not `url::Url`: the text is used byte for byte after the
//! split (a `file://` path opened as written, `%20` included; an S3 key or a GCS
//! object name signed as written), and `Url::parse` would percent-encode, lower-case
//! the host of special schemes and rewrite `file://localhost/`. Never fetches or logs.

/// `scheme://` with an RFC 3986 scheme: a letter, then letters, digits, `+ - .`.
pub(crate) fn has_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        for yes in ["file:///x", "s3://b/k", "git+ssh://h/p", "a.b-c://x"] {
            assert!(has_scheme(yes), "{yes}");
        }
        for no in [
            "/srv/x", "x", "://x", "1a://x", "a b://x", "c:\\x", "mailto:x",
        ] {
            assert!(!has_scheme(no), "{no}");
        }
    }
}
