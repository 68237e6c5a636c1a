//! URL text as the user wrote it: whether it has a `scheme://`, its split into
//! scheme and the rest, and `redact`, the one way a URL is shown or stored (SPEC §17).
//! Shared by `event`, `allow`, `manifest`, `fetch`, `http`, `record`, `error` and
//! `deploy`.
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

/// What stands for a secret in a shown URL.
pub(crate) const REDACTED: &str = "REDACTED";

/// `url` fit for a log line, an error, the record, a metric label or a hook's
/// environment (SPEC §17): the password of its user info (`user:pass@` →
/// `user:REDACTED@`; user info without a password is taken for a token:
/// `REDACTED@`) and its whole query string (`?X-Amz-Signature=...` → `?REDACTED`:
/// presigned S3 / GCS URLs carry their signature there) replaced. Everything else
/// stays as the user wrote it (split by hand: no percent-encoding, no lower-cased
/// host). Applying it twice changes nothing more. Text without `scheme://` is
/// returned as it is (a local path).
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(auth_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    out.push_str("://");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            if let Some((user, _)) = userinfo.split_once(':') {
                out.push_str(user);
                out.push(':');
            }
            out.push_str(REDACTED);
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    // The query runs from the first `?` to the fragment (a `?` after `#` is the
    // fragment's).
    let frag_start = after.find('#').unwrap_or(after.len());
    let (before_frag, fragment) = after.split_at(frag_start);
    match before_frag.split_once('?') {
        Some((path, query)) if !query.is_empty() => {
            out.push_str(path);
            out.push('?');
            out.push_str(REDACTED);
        }
        _ => out.push_str(before_frag),
    }
    out.push_str(fragment);
    out
}

/// Whether `redact` hides a part of `url` (user info or a query string), or did
/// already: such a URL, as shown or stored, cannot be fetched.
pub(crate) fn is_redacted(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(auth_end);
    let before_frag = after.split('#').next().unwrap_or("");
    authority.contains('@')
        || before_frag
            .split_once('?')
            .is_some_and(|(_, query)| !query.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_are_known() {
        for (url, redacted) in [
            ("https://h/a.yml", false),
            ("https://h/a.yml?REDACTED", true),
            ("https://h/a.yml?v=2", true),
            ("https://h/a.yml?", false),
            ("https://REDACTED@h/a.yml", true),
            ("https://u:REDACTED@h/a.yml", true),
            ("https://h/REDACTED/a.yml#x?y", false),
            ("s3://bucket/a.yml", false),
            ("/srv/a.yml", false),
        ] {
            assert_eq!(is_redacted(url), redacted, "{url}");
            assert_eq!(is_redacted(&redact(url)), redacted, "{url}");
        }
    }

    #[test]
    fn secrets_are_redacted_and_nothing_else() {
        let cases = [
            (
                "https://u:p@h/a?X-Amz-Signature=1&X-Amz-Credential=k",
                "https://u:REDACTED@h/a?REDACTED",
            ),
            ("https://h/a?v=2", "https://h/a?REDACTED"),
            ("https://h/a?v=2#frag", "https://h/a?REDACTED#frag"),
            ("https://h/a#x?y", "https://h/a#x?y"),
            ("https://h/a?", "https://h/a?"),
            ("https://token@h/a", "https://REDACTED@h/a"),
            ("https://u:@h/a", "https://u:REDACTED@h/a"),
            ("https://u:p:q@h:8443/a", "https://u:REDACTED@h:8443/a"),
            ("https://u:p@h?q=1", "https://u:REDACTED@h?REDACTED"),
            ("HTTPS://Host/My%20App.tgz", "HTTPS://Host/My%20App.tgz"),
            ("s3://b/k.tgz", "s3://b/k.tgz"),
            ("s3://b/k.tgz?versionId=3", "s3://b/k.tgz?REDACTED"),
            ("gs://b/o?x=1", "gs://b/o?REDACTED"),
            ("file:///x", "file:///x"),
            ("/srv/m.yml", "/srv/m.yml"),
            ("", ""),
        ];
        for (url, want) in cases {
            let got = redact(url);
            assert_eq!(got, want, "{url}");
            assert_eq!(redact(&got), want, "twice: {url}");
        }
    }

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
